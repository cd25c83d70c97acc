//go:build e2e

// Package journal is the e2e suite's record of what the application did.
//
// Every consumer in the suite (the consumer program and the tests
// themselves) writes one Handling to Redis after it has processed a
// message and before it settles the lease, then one Settle per ack or
// nack it tried. The invariant checker compares these records with what
// was pushed and with what is left in Redis.
//
// The records live under e2e:{<queue>}:*, beside the queue, so that a
// Redis restart with AOF keeps them together with the queue's state.
package journal

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

// KeyPrefix starts every key the suite writes for its own bookkeeping.
const KeyPrefix = "e2e:"

// HandledKey is the HASH of Handling records of queue, keyed by token:
// writing one twice (a retry after a lost reply) changes nothing.
func HandledKey(queue string) string { return KeyPrefix + "{" + queue + "}:handled" }

// SettledKey is the LIST of Settle records of queue.
func SettledKey(queue string) string { return KeyPrefix + "{" + queue + "}:settled" }

// Handling says that the application processed one delivery.
type Handling struct {
	Payload string `json:"p"`
	ID      string `json:"id"`
	Token   string `json:"tok"`
	Attempt int    `json:"a"`
	// Expiries and Failures are the message's counters when it was taken
	// (leases of it that ran out, nacks of it), read from its lease
	// record; -1 when the lease was already lost when they were read.
	Expiries int `json:"x"`
	Failures int `json:"f"`
	PID      int `json:"pid"`
}

// Seq is the number of earlier deliveries that ended without an ack
// (-1 if unknown). Replay resets Attempt but not Seq.
func (h Handling) Seq() int {
	if h.Expiries < 0 {
		return -1
	}
	return h.Expiries + h.Failures
}

// Settle results.
const (
	ResultOK      = "ok"
	ResultStale   = "stale"
	ResultNotHeld = "notheld"
	// ResultError is any other error: the call may or may not have taken
	// effect (a connection lost after the script ran).
	ResultError = "error"
)

// Settle is one attempt to end a delivery's lease.
type Settle struct {
	Token  string `json:"tok"`
	Op     string `json:"op"` // "ack" or "nack"
	Result string `json:"res"`
	Err    string `json:"err,omitempty"`
	PID    int    `json:"pid"`
}

// ResultOf classifies an error from Ack or Nack.
func ResultOf(err error) string {
	switch {
	case err == nil:
		return ResultOK
	case errors.Is(err, lease.ErrStale):
		return ResultStale
	case errors.Is(err, lease.ErrNotHeld):
		return ResultNotHeld
	}
	return ResultError
}

// envelopeMark starts every envelope (see lease/lua/lib.lua).
const envelopeMark = "\xffackd1|"

// Envelope is a message at rest, as lease/lua/lib.lua describes it.
type Envelope struct {
	ID                                string
	Attempts, Max, Expiries, Failures int
	Payload                           string
}

// ParseElement decodes one element of a ready, claim or delayed key: an
// envelope, or a raw payload pushed by a plain producer (ok false).
func ParseElement(s string) (e Envelope, ok bool) {
	rest, found := strings.CutPrefix(s, envelopeMark)
	if !found {
		return Envelope{Payload: s}, false
	}
	f := strings.SplitN(rest, "|", 7)
	if len(f) != 7 {
		return Envelope{Payload: s}, false
	}
	n := make([]int, 5)
	for i := range n {
		v, err := strconv.Atoi(f[i+1])
		if err != nil {
			return Envelope{Payload: s}, false
		}
		n[i] = v
	}
	return Envelope{ID: f[0], Attempts: n[0], Max: n[1], Expiries: n[3], Failures: n[4], Payload: f[6]}, true
}

// ParseLeaseRecord decodes "token|envelope", a field of ackd:{q}:leases
// (format 1, written by older versions).
func ParseLeaseRecord(s string) (token string, e Envelope, ok bool) {
	token, env, found := strings.Cut(s, "|")
	if !found {
		return "", Envelope{}, false
	}
	e, ok = ParseElement(env)
	return token, e, ok
}

// Flight is one lease in flight, of either format.
type Flight struct {
	Name  string // its field: the token (format 2) or the message id (format 1)
	Token string
	Rec   string   // the record as found
	Env   Envelope // the envelope in it; Attempts counts this delivery
	OK    bool     // the record parsed
}

// Flights lists the leases of held (token -> the envelope as taken,
// format 2) and of leases (id -> "token|envelope", format 1).
func Flights(held, leases map[string]string) []Flight {
	var out []Flight
	for tok, rec := range held {
		e, ok := ParseElement(rec)
		e.Attempts++ // the record's attempts do not count this delivery
		out = append(out, Flight{Name: tok, Token: tok, Rec: rec, Env: e, OK: ok})
	}
	for id, rec := range leases {
		tok, e, ok := ParseLeaseRecord(rec)
		out = append(out, Flight{Name: id, Token: tok, Rec: rec, Env: e, OK: ok})
	}
	return out
}

// Counters reads the expiries and failures of l's message from its lease
// record. ok is false if l's token holds no lease any more.
func Counters(ctx context.Context, rdb redis.Cmdable, l *lease.Lease) (expiries, failures int, ok bool) {
	key := lease.KeysFor(l.Queue).Held
	deadline := time.Now().Add(retryWindow)
	backoff := 10 * time.Millisecond
	rec, err := rdb.HGet(ctx, key, l.Token).Result()
	for err != nil && !errors.Is(err, redis.Nil) && ctx.Err() == nil && time.Now().Before(deadline) {
		// Redis is unreachable (restarting): the answer is still there.
		wait(ctx, backoff)
		backoff = min(2*backoff, 200*time.Millisecond)
		rec, err = rdb.HGet(ctx, key, l.Token).Result()
	}
	if err != nil {
		return -1, -1, false
	}
	e, parsed := ParseElement(rec)
	if !parsed {
		return -1, -1, false
	}
	return e.Expiries, e.Failures, true
}

// NewHandling describes the handling of l by this process. Call it right
// after the take, while the lease is surely held.
func NewHandling(ctx context.Context, rdb redis.Cmdable, l *lease.Lease) Handling {
	x, f, ok := Counters(ctx, rdb, l)
	if !ok {
		x, f = -1, -1
	}
	return Handling{
		Payload: string(l.Payload), ID: l.ID, Token: l.Token, Attempt: l.Attempt,
		Expiries: x, Failures: f, PID: os.Getpid(),
	}
}

// retryWindow bounds how long a record write keeps retrying while Redis is
// unreachable (a restart in the middle of a test).
const retryWindow = 30 * time.Second

// Record stores h, retrying while Redis is down.
func Record(ctx context.Context, rdb redis.Cmdable, queue string, h Handling) error {
	return write(ctx, HandledKey(queue), h, func(b []byte) error {
		return rdb.HSet(ctx, HandledKey(queue), h.Token, b).Err()
	})
}

// RecordSettle appends s to the settled list, retrying while Redis is down
// (a retry may record it twice; readers count distinct records).
func RecordSettle(ctx context.Context, rdb redis.Cmdable, queue string, s Settle) error {
	if s.PID == 0 {
		s.PID = os.Getpid()
	}
	return write(ctx, SettledKey(queue), s, func(b []byte) error {
		return rdb.RPush(ctx, SettledKey(queue), b).Err()
	})
}

func write(ctx context.Context, key string, v any, do func([]byte) error) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(retryWindow)
	backoff := 10 * time.Millisecond
	for {
		err = do(b)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("journal: rpush %s: %w", key, err)
			}
			return nil
		}
		wait(ctx, backoff)
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// Ack acks l and records every try; a try that failed with a transport
// error is repeated (it may have taken effect: the next try then says
// "not held"). It returns the last result.
func Ack(ctx context.Context, rdb redis.Cmdable, l *lease.Lease) (string, error) {
	return settle(ctx, rdb, l, "ack", func() error { return l.Ack(ctx) })
}

// Nack nacks l with the given delay and records every try, like Ack.
func Nack(ctx context.Context, rdb redis.Cmdable, l *lease.Lease, delay time.Duration) (string, error) {
	return settle(ctx, rdb, l, "nack", func() error { return l.Nack(ctx, delay) })
}

func settle(ctx context.Context, rdb redis.Cmdable, l *lease.Lease, op string, call func() error) (string, error) {
	deadline := time.Now().Add(retryWindow)
	backoff := 10 * time.Millisecond
	for {
		err := call()
		res := ResultOf(err)
		s := Settle{Token: l.Token, Op: op, Result: res}
		if err != nil {
			s.Err = err.Error()
		}
		if rerr := RecordSettle(ctx, rdb, l.Queue, s); rerr != nil {
			return res, errors.Join(err, rerr)
		}
		if res != ResultError || ctx.Err() != nil || time.Now().After(deadline) {
			return res, err
		}
		wait(ctx, backoff)
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// Handlings reads every Handling of queue.
func Handlings(ctx context.Context, rdb redis.Cmdable, queue string) ([]Handling, error) {
	raw, err := rdb.HVals(ctx, HandledKey(queue)).Result()
	if err != nil {
		return nil, fmt.Errorf("journal: read %s: %w", HandledKey(queue), err)
	}
	return decodeAll[Handling](HandledKey(queue), raw)
}

// Settles reads every distinct Settle of queue.
func Settles(ctx context.Context, rdb redis.Cmdable, queue string) ([]Settle, error) {
	raw, err := rdb.LRange(ctx, SettledKey(queue), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("journal: read %s: %w", SettledKey(queue), err)
	}
	seen := make(map[string]bool, len(raw))
	distinct := raw[:0]
	for _, s := range raw {
		if !seen[s] {
			seen[s] = true
			distinct = append(distinct, s)
		}
	}
	return decodeAll[Settle](SettledKey(queue), distinct)
}

func decodeAll[T any](key string, raw []string) ([]T, error) {
	out := make([]T, 0, len(raw))
	for i, s := range raw {
		var v T
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			return nil, fmt.Errorf("journal: %s[%d] %q: %w", key, i, s, err)
		}
		out = append(out, v)
	}
	return out, nil
}

func wait(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
