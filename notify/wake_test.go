package notify

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/lease"
)

func TestParseWake(t *testing.T) {
	t.Parallel()
	tests := []struct {
		payload string
		queue   string
		atMS    int64
		ok      bool
	}{
		{"lease|1700000000000|orders", "orders", 1700000000001, true},
		{"delayed|1700000000000|orders", "orders", 1700000000000, true},
		{"lease|0|q", "q", 1, true},
		{"delayed|5|a.b:c/d-e_f", "a.b:c/d-e_f", 5, true},
		{"delayed|5|a{b}", "", 0, false}, // braces would break the hash tag
		{"lease|1|q|r", "", 0, false},    // '|' is not allowed in a queue name
		{"lease|1|", "", 0, false},
		{"lease||q", "", 0, false},
		{"lease|01|q", "", 0, false},
		{"lease|-1|q", "", 0, false},
		{"lease|+1|q", "", 0, false},
		{"lease|1.5|q", "", 0, false},
		{"lease|1e3|q", "", 0, false},
		{"lease|9999999999999999|q", "", 0, false},
		{"lease|999999999999999|q", "q", 1000000000000000, true},
		{"other|1|q", "", 0, false},
		{"LEASE|1|q", "", 0, false},
		{"lease 1 q", "", 0, false},
		{"", "", 0, false},
		{"lease|1|" + strings.Repeat("q", 129), "", 0, false},
	}
	for _, tt := range tests {
		queue, at, ok := ParseWake(tt.payload)
		if ok != tt.ok || queue != tt.queue || (ok && at.UnixMilli() != tt.atMS) || (!ok && !at.IsZero()) {
			t.Errorf("ParseWake(%q) = %q, %v, %v; want %q, %d ms, %v", tt.payload, queue, at.UnixMilli(), ok, tt.queue, tt.atMS, tt.ok)
		}
	}
}

func FuzzParseWake(f *testing.F) {
	for _, s := range []string{"lease|1700000000000|orders", "delayed|0|q", "lease|01|q", "lease|1|q|r", "", "|||"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		queue, at, ok := ParseWake(payload)
		if !ok {
			if queue != "" || !at.IsZero() {
				t.Fatalf("ParseWake(%q) = %q, %v, false: want zero values", payload, queue, at)
			}
			return
		}
		if err := lease.ValidateQueue(queue); err != nil {
			t.Fatalf("ParseWake(%q) gave invalid queue %q: %v", payload, queue, err)
		}
		// A parsed message prints back to itself.
		kind, ms := "delayed", at.UnixMilli()
		if strings.HasPrefix(payload, "lease|") {
			kind, ms = "lease", ms-1
		}
		if back := kind + "|" + strconv.FormatInt(ms, 10) + "|" + queue; back != payload {
			t.Fatalf("ParseWake(%q) = %q, %v: prints back as %q", payload, queue, at, back)
		}
		if at.Before(time.UnixMilli(0)) {
			t.Fatalf("ParseWake(%q): at %v before the epoch", payload, at)
		}
	})
}
