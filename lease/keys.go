package lease

import (
	"fmt"
	"strings"
)

// Key layout. Every key of one queue carries the queue name as a Redis
// Cluster hash tag, so all of them live in one slot and every script runs
// unchanged on a cluster. Only this package writes these keys.
const (
	// RegistryKey is the SET of every queue name ackd has seen. It is the
	// one key outside any queue's slot.
	RegistryKey = "ackd:queues"
	// WakeChannel is the pub/sub channel on which scripts announce a new
	// earliest deadline of a queue, as "lease|<ms>|<queue>" or
	// "delayed|<ms>|<queue>".
	WakeChannel = "ackd:wake"

	keyPrefix   = "ackd:{"
	leaseInfix  = "}:lease:"
	maxQueueLen = 128
)

// Keys names every key of one queue.
type Keys struct {
	Ready string // LIST: envelopes and raw payloads waiting, taken from the left
	Claim string // LIST: elements moved off Ready by a blocked consumer, taken first
	Held  string // HASH: token -> lease record of each lease in flight
	Due   string // ZSET: token of each lease in flight, scored by deadline (ms)
	// Leases and Deadlines are the lease keys of format 1 (HASH id -> token
	// "|" envelope, ZSET id by deadline), written by ackd before leases
	// were keyed by token. This version never writes them; the daemon's
	// sweep, stats and peek read them until they are empty, so leases an
	// older consumer took during a rolling deploy still come back.
	Leases    string
	Deadlines string
	Delayed   string // ZSET: envelopes that become ready later, scored by due time (ms)
	Dead      string // ZSET: id of each dead letter, scored by when it died (ms)
	DeadMsgs  string // HASH: id -> dead record
	DeadErrs  string // HASH: dead-letter id -> "at_ms|error text" of a handler's error
	Paused    string // STRING: exists while the queue is paused (value: when, in ms)
	// Counts is a HASH of running totals that the dashboard turns into
	// rates: field "acked" (added to by every ack), "purged" and "replayed"
	// (added to by the admin scripts). Fields only grow; a missing field is 0.
	Counts string
}

// KeysFor returns the key names of queue. It does not validate the name.
func KeysFor(queue string) Keys {
	p := keyPrefix + queue + "}:"
	return Keys{
		Ready:     p + "ready",
		Claim:     p + "claim",
		Held:      p + "held",
		Due:       p + "due",
		Leases:    p + "leases",
		Deadlines: p + "deadlines",
		Delayed:   p + "delayed",
		Dead:      p + "dead",
		DeadMsgs:  p + "deadmsgs",
		DeadErrs:  p + "deaderrs",
		Paused:    p + "paused",
		Counts:    p + "counts",
	}
}

// LeaseKey is the shadow key of one lease: a string whose TTL ends at the
// lease deadline. Its expiry is only a trigger; the Due ZSET decides.
func LeaseKey(queue, token string) string {
	return keyPrefix + queue + leaseInfix + token
}

// ParseLeaseKey is the inverse of LeaseKey. It reports false for any key
// that is not a well-formed shadow key of a valid queue.
func ParseLeaseKey(key string) (queue, token string, ok bool) {
	rest, found := strings.CutPrefix(key, keyPrefix)
	if !found {
		return "", "", false
	}
	queue, token, found = strings.Cut(rest, leaseInfix)
	if !found || ValidateQueue(queue) != nil || !validToken(token) {
		return "", "", false
	}
	return queue, token, true
}

// ValidateQueue reports whether name can be used as a queue name: 1 to 128
// bytes of ASCII letters, digits and any of "._:/-". Braces, spaces and
// control characters would break the key layout and are refused.
func ValidateQueue(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalidQueue)
	}
	if len(name) > maxQueueLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidQueue, len(name), maxQueueLen)
	}
	for i := 0; i < len(name); i++ {
		if !queueByte(name[i]) {
			return fmt.Errorf("%w: %q has %q at byte %d (allowed: letters, digits and ._:/-)", ErrInvalidQueue, name, name[i], i)
		}
	}
	return nil
}

func queueByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("._:/-", b) >= 0
}

// Tokens are 16 lowercase hex digits.
const tokenLen = 16

func validToken(t string) bool {
	if len(t) != tokenLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Message ids are what an envelope may carry: 1 to 64 bytes of letters,
// digits, '-' and '.' (ackd itself uses UUIDs).
func validID(id string) bool { return idOf(id, 64) }

// ValidateDeadLetterID reports whether id can name a dead letter: 1 to 128
// bytes of letters, digits, '-' and '.' (a message id, maybe with the
// suffix ackd adds when an id is already in the dead set).
func ValidateDeadLetterID(id string) error {
	if !idOf(id, 128) {
		return fmt.Errorf("%w: dead letter id %q: want 1 to 128 letters, digits, '-' and '.'", ErrInvalidArgument, id)
	}
	return nil
}

func idOf(id string, maxLen int) bool {
	if id == "" || len(id) > maxLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
