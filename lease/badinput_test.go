package lease

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

var badQueues = map[string]string{
	"empty":       "",
	"129 bytes":   strings.Repeat("q", 129),
	"open brace":  "a{b",
	"close brace": "a}b",
	"space":       "a b",
	"newline":     "a\nb",
	"unicode":     "café",
}

// TestBadInputWritesNothing calls every entry point with bad input on a
// server holding some state, and checks that each call fails with the
// right error and that no key changed.
func TestBadInputWritesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxPayload: 10})
	ctx := t.Context()
	const q = "good"

	// Some state of every kind, so that a stray write shows.
	b.push(t, q, "ready", nil)
	b.push(t, q, "later", &PushOpts{Delay: time.Hour})
	b.push(t, q, "held", nil)
	b.push(t, q, "dead", nil)
	ls, err := b.c.TakeBatch(ctx, q, 3, &TakeOpts{LeaseFor: time.Hour})
	if err != nil || len(ls) != 3 {
		t.Fatal(ls, err)
	}
	if err := ls[2].DeadLetter(ctx); err != nil {
		t.Fatal(err)
	}
	held := ls[1]
	// a token that holds no lease, and held's token with another id
	unheld, err := b.c.LeaseOf(q, held.ID, "0123456789abcdef")
	if err != nil {
		t.Fatal(err)
	}
	otherID, err := b.c.LeaseOf(q, "no-such-id", held.Token)
	if err != nil {
		t.Fatal(err)
	}
	otherQueue, err := b.c.LeaseOf("elsewhere", held.ID, held.Token)
	if err != nil {
		t.Fatal(err)
	}
	nop := func(context.Context, *Lease) error { return nil }
	big := make([]byte, 11)
	tooMany := make([][]byte, MaxBatch+1)
	for i := range tooMany {
		tooMany[i] = []byte("x")
	}
	tooManyLeases := make([]*Lease, MaxBatch+1)
	for i := range tooManyLeases {
		tooManyLeases[i] = held
	}

	type call struct {
		name string
		want error
		f    func() error
	}
	var calls []call
	for qn, bq := range badQueues {
		calls = append(calls,
			call{"Push queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.Push(ctx, bq, []byte("x"), nil); return err }},
			call{"PushBatch queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.PushBatch(ctx, bq, [][]byte{[]byte("x")}, nil); return err }},
			call{"Take queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.Take(ctx, bq, nil); return err }},
			call{"TakeBatch queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.TakeBatch(ctx, bq, 2, nil); return err }},
			call{"Sweep queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.Sweep(ctx, bq, nil); return err }},
			call{"Stats queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.Stats(ctx, bq); return err }},
			call{"Register queue " + qn, ErrInvalidQueue, func() error { return b.c.Register(ctx, bq) }},
			call{"DeadLetters queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.DeadLetters(ctx, bq, 0, 10); return err }},
			call{"Replay queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.Replay(ctx, bq); return err }},
			call{"Purge queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.Purge(ctx, bq); return err }},
			call{"Consume queue " + qn, ErrInvalidQueue, func() error { return b.c.Consume(ctx, bq, nop, nil) }},
			call{"LeaseOf queue " + qn, ErrInvalidQueue, func() error { _, err := b.c.LeaseOf(bq, held.ID, held.Token); return err }},
		)
	}
	for _, d := range []time.Duration{-time.Second, -1, time.Nanosecond, time.Millisecond - 1, MaxLeaseFor + time.Millisecond, 1<<63 - 1} {
		calls = append(calls,
			call{"PushOpts.LeaseFor " + d.String(), ErrInvalidArgument, func() error { _, err := b.c.Push(ctx, q, []byte("x"), &PushOpts{LeaseFor: d}); return err }},
			call{"PushOpts.Delay " + d.String(), ErrInvalidArgument, func() error { _, err := b.c.Push(ctx, q, []byte("x"), &PushOpts{Delay: d}); return err }},
			call{"TakeOpts.LeaseFor " + d.String(), ErrInvalidArgument, func() error { _, err := b.c.Take(ctx, q, &TakeOpts{LeaseFor: d}); return err }},
			call{"Nack delay " + d.String(), ErrInvalidArgument, func() error { return held.Nack(ctx, d) }},
			call{"Extend " + d.String(), ErrInvalidArgument, func() error { return held.Extend(ctx, d) }},
			call{"ConsumeOpts.LeaseFor " + d.String(), ErrInvalidArgument, func() error {
				return b.c.Consume(ctx, q, nop, &ConsumeOpts{LeaseFor: d})
			}},
		)
	}
	calls = append(calls,
		call{"Extend 0", ErrInvalidArgument, func() error { return held.Extend(ctx, 0) }},
		call{"TakeOpts.Wait negative", ErrInvalidArgument, func() error { _, err := b.c.Take(ctx, q, &TakeOpts{Wait: -1}); return err }},
		call{"PushOpts.MaxDeliveries -2", ErrInvalidArgument, func() error { _, err := b.c.Push(ctx, q, []byte("x"), &PushOpts{MaxDeliveries: -2}); return err }},
		call{"payload over MaxPayload", ErrPayloadTooLarge, func() error { _, err := b.c.Push(ctx, q, big, nil); return err }},
		call{"one payload of a batch over MaxPayload", ErrPayloadTooLarge, func() error {
			_, err := b.c.PushBatch(ctx, q, [][]byte{[]byte("ok"), big}, nil)
			return err
		}},
		call{"delayed payload over MaxPayload", ErrPayloadTooLarge, func() error { _, err := b.c.Push(ctx, q, big, &PushOpts{Delay: time.Second}); return err }},
		call{"PushBatch 0", ErrInvalidArgument, func() error { _, err := b.c.PushBatch(ctx, q, nil, nil); return err }},
		call{"PushBatch MaxBatch+1", ErrInvalidArgument, func() error { _, err := b.c.PushBatch(ctx, q, tooMany, nil); return err }},
		call{"TakeBatch 0", ErrInvalidArgument, func() error { _, err := b.c.TakeBatch(ctx, q, 0, nil); return err }},
		call{"TakeBatch -1", ErrInvalidArgument, func() error { _, err := b.c.TakeBatch(ctx, q, -1, nil); return err }},
		call{"TakeBatch MaxBatch+1", ErrInvalidArgument, func() error { _, err := b.c.TakeBatch(ctx, q, MaxBatch+1, nil); return err }},
		call{"AckBatch MaxBatch+1", ErrInvalidArgument, func() error { return b.c.AckBatch(ctx, tooManyLeases) }},
		call{"AckBatch mixed queues", ErrInvalidArgument, func() error { return b.c.AckBatch(ctx, []*Lease{held, otherQueue}) }},
		call{"AckBatch nil lease", ErrInvalidArgument, func() error { return b.c.AckBatch(ctx, []*Lease{nil, held}) }},
		call{"Ack of a zero Lease", ErrInvalidArgument, func() error { return (&Lease{Queue: q, ID: held.ID, Token: held.Token}).Ack(ctx) }},
		call{"Nack of a nil Lease", ErrInvalidArgument, func() error { return (*Lease)(nil).Nack(ctx, 0) }},
		call{"Extend of a nil Lease", ErrInvalidArgument, func() error { return (*Lease)(nil).Extend(ctx, time.Second) }},
		call{"DeadLetter of a nil Lease", ErrInvalidArgument, func() error { return (*Lease)(nil).DeadLetter(ctx) }},
		call{"Sweep limit -1", ErrInvalidArgument, func() error { _, err := b.c.Sweep(ctx, q, &SweepOpts{Limit: -1}); return err }},
		call{"Sweep limit too large", ErrInvalidArgument, func() error { _, err := b.c.Sweep(ctx, q, &SweepOpts{Limit: 10*SweepLimitDefault + 1}); return err }},
		call{"DeadLetters offset -1", ErrInvalidArgument, func() error { _, err := b.c.DeadLetters(ctx, q, -1, 10); return err }},
		call{"DeadLetters count 0", ErrInvalidArgument, func() error { _, err := b.c.DeadLetters(ctx, q, 0, 0); return err }},
		call{"DeadLetters count MaxBatch+1", ErrInvalidArgument, func() error { _, err := b.c.DeadLetters(ctx, q, 0, MaxBatch+1); return err }},
		call{"Replay empty id", ErrInvalidArgument, func() error { _, err := b.c.Replay(ctx, q, ""); return err }},
		call{"Purge long id", ErrInvalidArgument, func() error { _, err := b.c.Purge(ctx, q, strings.Repeat("x", 129)); return err }},
		call{"Consume nil handler", ErrInvalidArgument, func() error { return b.c.Consume(ctx, q, nil, nil) }},
		call{"Consume workers -1", ErrInvalidArgument, func() error { return b.c.Consume(ctx, q, nop, &ConsumeOpts{Workers: -1}) }},
		call{"Consume workers MaxBatch+1", ErrInvalidArgument, func() error {
			return b.c.Consume(ctx, q, nop, &ConsumeOpts{Workers: MaxBatch + 1})
		}},
		call{"Consume prefetch MaxBatch+1", ErrInvalidArgument, func() error {
			return b.c.Consume(ctx, q, nop, &ConsumeOpts{Prefetch: MaxBatch + 1})
		}},
		call{"LeaseOf bad id", ErrInvalidArgument, func() error { _, err := b.c.LeaseOf(q, "", held.Token); return err }},
		call{"LeaseOf bad token", ErrInvalidArgument, func() error { _, err := b.c.LeaseOf(q, held.ID, "xyz"); return err }},

		// Tokens that hold no lease, and a token given with another
		// message's id, are refused by the scripts, which then write
		// nothing.
		call{"Ack unknown token", ErrNotHeld, func() error { return unheld.Ack(ctx) }},
		call{"Nack unknown token", ErrNotHeld, func() error { return unheld.Nack(ctx, 0) }},
		call{"Nack delay unknown token", ErrNotHeld, func() error { return unheld.Nack(ctx, time.Second) }},
		call{"Extend unknown token", ErrNotHeld, func() error { return unheld.Extend(ctx, time.Second) }},
		call{"DeadLetter unknown token", ErrNotHeld, func() error { return unheld.DeadLetter(ctx) }},
		call{"Fail unknown token", ErrNotHeld, func() error { return unheld.Fail(ctx, errors.New("no")) }},
		call{"Release unknown token", ErrNotHeld, func() error { return unheld.Release(ctx) }},
		call{"Replay unknown id", ErrNotHeld, func() error { _, err := b.c.Replay(ctx, q, "no-such-id"); return err }},
		call{"Ack another message's id", ErrStale, func() error { return otherID.Ack(ctx) }},
		call{"Nack another message's id", ErrStale, func() error { return otherID.Nack(ctx, 0) }},
		call{"Extend another message's id", ErrStale, func() error { return otherID.Extend(ctx, time.Second) }},
		call{"DeadLetter another message's id", ErrStale, func() error { return otherID.DeadLetter(ctx) }},
		call{"Fail another message's id", ErrStale, func() error { return otherID.Fail(ctx, errors.New("no")) }},
		call{"Release another message's id", ErrStale, func() error { return otherID.Release(ctx) }},
		call{"Sweep not due", nil, func() error {
			r, err := b.c.Sweep(ctx, q, nil)
			if err == nil && r.Requeued+r.DeadLettered+r.Malformed+r.Promoted+r.Reclaimed != 0 {
				return fmt.Errorf("sweep did work: %+v", r)
			}
			return err
		}},
		call{"Purge unknown id", ErrNotHeld, func() error {
			n, err := b.c.Purge(ctx, q, "no-such-id")
			if n != 0 {
				return errors.New("purged something")
			}
			return err
		}},
		call{"Replay unknown id", ErrNotHeld, func() error {
			n, err := b.c.Replay(ctx, q, "no-such-id")
			if n != 0 {
				return errors.New("replayed something")
			}
			return err
		}},
	)

	before := snapshot(t, b.rdb)
	if len(before) < 6 {
		t.Fatalf("snapshot has only %d keys", len(before))
	}
	for _, c := range calls {
		err := c.f()
		switch {
		case c.want == nil && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("%s: error %v, want %v", c.name, err, c.want)
		}
		if err != nil && errors.Is(err, redis.Nil) {
			t.Errorf("%s: redis.Nil escaped: %v", c.name, err)
		}
		sameSnapshot(t, c.name, before, snapshot(t, b.rdb))
	}
	checkInvariants(t, b.rdb, q)
}

func TestNewBadConfig(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	t.Cleanup(func() { _ = rdb.Close() })
	for name, cfg := range map[string]*Config{
		"LeaseFor negative":      {LeaseFor: -time.Second},
		"LeaseFor under 1ms":     {LeaseFor: time.Microsecond},
		"LeaseFor over a week":   {LeaseFor: MaxLeaseFor + time.Millisecond},
		"MaxDeliveries negative": {MaxDeliveries: -2},
		"MaxPayload negative":    {MaxPayload: -1},
	} {
		if c, err := New(rdb, cfg); c != nil || !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("New(%s) = %v, %v; want ErrInvalidArgument", name, c, err)
		} else if !strings.Contains(err.Error(), "Config.") {
			t.Errorf("New(%s): error %q does not name the field", name, err)
		}
	}
	if c, err := New(nil, nil); c != nil || !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("New(nil) = %v, %v", c, err)
	}
	for name, cfg := range map[string]*Config{
		"nil":       nil,
		"zero":      {},
		"unlimited": {MaxDeliveries: Unlimited},
		"minimal":   {LeaseFor: time.Millisecond, MaxDeliveries: 1, MaxPayload: 1},
		"maximal":   {LeaseFor: MaxLeaseFor},
	} {
		if _, err := New(rdb, cfg); err != nil {
			t.Errorf("New(%s) = %v", name, err)
		}
	}
}

// TestBadInputOnEmptyServer: bad calls on an empty server create no key,
// not even the registry.
func TestBadInputOnEmptyServer(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	for qn, bq := range badQueues {
		_, err1 := b.c.Push(ctx, bq, []byte("x"), nil)
		_, err2 := b.c.Take(ctx, bq, &TakeOpts{Wait: time.Second})
		if !errors.Is(err1, ErrInvalidQueue) || !errors.Is(err2, ErrInvalidQueue) {
			t.Errorf("queue %s: Push %v, Take %v", qn, err1, err2)
		}
	}
	if _, err := b.c.Push(ctx, "q", make([]byte, MaxPayloadDefault+1), nil); !errors.Is(err, ErrPayloadTooLarge) {
		t.Errorf("Push over MaxPayloadDefault = %v", err)
	}
	if s := snapshot(t, b.rdb); len(s) != 0 {
		t.Errorf("keys written: %v", s)
	}
}
