package notify

import (
	"strconv"
	"strings"
	"time"

	"github.com/ackd/ackd/lease"
)

// maxMSDigits bounds the time field of a wake message: 15 digits of
// milliseconds reach well past the year 30000.
const maxMSDigits = 15

// ParseWake decodes a message of lease.WakeChannel. "lease|<ms>|<queue>"
// announces a new earliest lease deadline, due once Redis's clock has
// passed that millisecond, so at is the deadline + 1 ms; "delayed|<ms>|<queue>"
// announces a new earliest due time of a delayed message, so at is that
// time. ms is a decimal number without sign or leading zeros and queue a
// valid queue name; anything else reports ok false.
func ParseWake(payload string) (queue string, at time.Time, ok bool) {
	kind, rest, found := strings.Cut(payload, "|")
	if !found {
		return "", time.Time{}, false
	}
	num, queue, found := strings.Cut(rest, "|")
	if !found || lease.ValidateQueue(queue) != nil {
		return "", time.Time{}, false
	}
	ms, ok := parseMS(num)
	if !ok {
		return "", time.Time{}, false
	}
	switch kind {
	case "lease":
		return queue, time.UnixMilli(ms + 1), true
	case "delayed":
		return queue, time.UnixMilli(ms), true
	}
	return "", time.Time{}, false
}

func parseMS(s string) (int64, bool) {
	if s == "" || len(s) > maxMSDigits || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}
