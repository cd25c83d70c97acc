package lease

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// An older version of ackd keyed leases by message id (format 1, see
// docs/PROTOCOL.md, lease format 1): during a rolling deploy its
// consumers may leave such leases behind, which this version's sweep,
// stats and peek must still see and end.

// format1Lease writes a format-1 lease by hand, exactly as the document
// describes it: HSET leases id token "|" envelope (attempts counting the
// delivery), ZADD deadlines, SET shadow id PXAT deadline.
func format1Lease(t *testing.T, rdb *redis.Client, queue, token string, e envelope, deadline int64) {
	t.Helper()
	ctx := t.Context()
	k := KeysFor(queue)
	cmds, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, k.Leases, e.ID, token+"|"+string(e.appendTo(nil)))
		p.ZAdd(ctx, k.Deadlines, redis.Z{Score: float64(deadline), Member: e.ID})
		p.Do(ctx, "SET", LeaseKey(queue, token), e.ID, "PXAT", deadline)
		return nil
	})
	if err != nil {
		t.Fatalf("writing format-1 lease %s: %v (%v)", e.ID, err, cmds)
	}
}

// TestFormat1LeasesBeside: format-1 leases written by hand beside leases
// this version took, in one queue: stats counts both, peek lists both
// (format 2 first) with each delivery's id and attempt, and sweep, one
// limit over both, requeues both when due and dead-letters those on their
// last delivery.
func TestFormat1LeasesBeside(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "upgrade"
	k := KeysFor(q)

	// Format 2: two leases this version takes, the second on its last
	// delivery.
	idNew := b.push(t, q, "new", &PushOpts{MaxDeliveries: 3})
	idNewLast := b.push(t, q, "new-last", &PushOpts{MaxDeliveries: 1})
	l1 := b.take(t, q, &TakeOpts{LeaseFor: time.Millisecond})
	l2 := b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	if l1.ID != idNew || l2.ID != idNewLast || l1.Attempt != 1 || l2.Attempt != 1 {
		t.Fatalf("took %s (attempt %d), %s (attempt %d)", l1.ID, l1.Attempt, l2.ID, l2.Attempt)
	}
	// Format 1: one on its second of three deliveries, one on its last.
	now := b.redisNow(t)
	old := envelope{ID: "old-1", Attempts: 2, Max: 3, Failures: 1, Payload: []byte("old")}
	oldLast := envelope{ID: "old-last", Attempts: 2, Max: 2, Payload: []byte("old-last")}
	format1Lease(t, b.rdb, q, "00000000000000a1", old, now+1)
	format1Lease(t, b.rdb, q, "00000000000000a2", oldLast, now+2)

	s, err := b.c.Stats(ctx, q)
	if err != nil || s.InFlight != 4 || s.Ready != 0 {
		t.Fatalf("Stats = %+v, %v; want 4 in flight", s, err)
	}
	if want := min(l1.Deadline().UnixMilli(), now+1); s.EarliestDeadline.UnixMilli() != want {
		t.Errorf("Stats.EarliestDeadline = %d, want %d", s.EarliestDeadline.UnixMilli(), want)
	}

	// Peek: format 2 by deadline, then format 1, one offset over both.
	type seen struct {
		id            string
		attempts, max int
		preview       string
	}
	var got []seen
	for off := 0; off >= 0; {
		p, err := b.c.Peek(ctx, q, StateInFlight, &PeekOpts{Offset: off, Limit: 3, Preview: 16})
		if err != nil {
			t.Fatalf("Peek at %d: %v", off, err)
		}
		for _, m := range p.Messages {
			if m.Malformed || m.State != StateInFlight {
				t.Errorf("Peek: %+v", m)
			}
			got = append(got, seen{m.ID, m.Attempts, m.MaxDeliveries, string(m.Preview)})
		}
		off = p.Next
	}
	want := []seen{{idNew, 1, 3, "new"}, {idNewLast, 1, 1, "new-last"}, {"old-1", 2, 3, "old"}, {"old-last", 2, 2, "old-last"}}
	if !slices.Equal(got, want) {
		t.Errorf("Peek in flight = %+v, want %+v", got, want)
	}

	// Sweep: a limit of 3 ends both format-2 leases and the first of
	// format 1, the next call the other.
	b.waitDue(t, max(l2.Deadline().UnixMilli(), now+2))
	r, err := b.c.Sweep(ctx, q, &SweepOpts{Limit: 3})
	if err != nil || r.Requeued != 2 || r.DeadLettered != 1 || r.Malformed != 0 || !r.More || len(r.Lags) != 3 {
		t.Fatalf("first Sweep = %+v, %v; want 2 requeued, 1 dead-lettered, more", r, err)
	}
	if r.Counts.InFlight != 1 || r.NextDeadline.UnixMilli() != now+2 {
		t.Errorf("first Sweep: %d in flight, next deadline %v; want 1, %d", r.Counts.InFlight, r.NextDeadline, now+2)
	}
	r, err = b.c.Sweep(ctx, q, &SweepOpts{Limit: 3})
	if err != nil || r.Requeued != 0 || r.DeadLettered != 1 || r.More || r.Counts.InFlight != 0 || !r.NextDeadline.IsZero() {
		t.Fatalf("second Sweep = %+v, %v; want 1 dead-lettered, nothing in flight", r, err)
	}
	b.sweepNothing(t, q)
	for _, key := range []string{k.Held, k.Due, k.Leases, k.Deadlines} {
		if n, err := b.rdb.Exists(ctx, key).Result(); err != nil || n != 0 {
			t.Errorf("%s still exists (%v)", key, err)
		}
	}

	// Requeued at the head with expiries counted; the last deliveries dead.
	st := checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, []string{"old-1", idNew}) {
		t.Fatalf("ready = %v, want old-1 then %s", st.Ready, idNew)
	}
	if e := st.env(t, idNew); e.Attempts != 1 || e.Expiries != 1 || e.Max != 3 || string(e.Payload) != "new" {
		t.Errorf("requeued format-2 lease = %+v", e)
	}
	if e := st.env(t, "old-1"); e.Attempts != 2 || e.Expiries != 1 || e.Failures != 1 || string(e.Payload) != "old" {
		t.Errorf("requeued format-1 lease = %+v", e)
	}
	for id, wantAttempts := range map[string]int{idNewLast: 1, "old-last": 2} {
		d, ok := st.Dead[id]
		if !ok || d.Reason != ReasonExpired || d.Attempts != wantAttempts || d.Expiries != 1 {
			t.Errorf("dead letter %s = %+v (found %v), want expired after %d deliveries", id, d, ok, wantAttempts)
		}
	}
	// The format-1 message's next delivery is its third, as a format-2 lease.
	l := b.take(t, q, nil)
	if l.ID != "old-1" || l.Attempt != 3 || l.MaxDeliveries != 3 || string(l.Payload) != "old" {
		t.Errorf("retake = %s attempt %d of %d %q", l.ID, l.Attempt, l.MaxDeliveries, l.Payload)
	}
}

// TestFormat2MalformedRecord: a lease record keyed by token that is not an
// envelope is dead-lettered under the token (its id is unknown), by sweep
// and by the calls that end a lease; peek shows it under the token.
func TestFormat2MalformedRecord(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "hostile"
	k := KeysFor(q)
	bad := func(token, rec string, deadline int64) {
		t.Helper()
		if err := b.rdb.HSet(ctx, k.Held, token, rec).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.rdb.ZAdd(ctx, k.Due, redis.Z{Score: float64(deadline), Member: token}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	now := b.redisNow(t)
	bad("00000000000000b1", "not an envelope", now-1)
	bad("00000000000000b2", envelopeMark+"id-2|x|0|0|0|0|p", now+time.Hour.Milliseconds())

	p, err := b.c.Peek(ctx, q, StateInFlight, nil)
	if err != nil || len(p.Messages) != 2 || p.Next != -1 {
		t.Fatalf("Peek = %+v, %v", p, err)
	}
	for i, tok := range []string{"00000000000000b1", "00000000000000b2"} {
		if m := p.Messages[i]; m.ID != tok || !m.Malformed {
			t.Errorf("Peek[%d] = %+v, want malformed under %s", i, m, tok)
		}
	}

	r, err := b.c.Sweep(ctx, q, nil)
	if err != nil || r.Malformed != 1 || r.Requeued+r.DeadLettered != 0 || r.Counts.InFlight != 1 {
		t.Fatalf("Sweep = %+v, %v; want 1 malformed, 1 left in flight", r, err)
	}
	l, err := b.c.LeaseOf(q, "id-2", "00000000000000b2")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Nack(ctx, 0); !errors.Is(err, ErrMalformed) {
		t.Errorf("Nack of a malformed record: %v, want ErrMalformed", err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || len(st.Ready) != 0 || len(st.Dead) != 2 {
		t.Fatalf("state = %+v", st)
	}
	for tok, rec := range map[string]string{"00000000000000b1": "not an envelope", "00000000000000b2": envelopeMark + "id-2|x|0|0|0|0|p"} {
		d := st.Dead[tok]
		if d.Reason != ReasonMalformed || string(d.Raw) != rec {
			t.Errorf("dead letter %s = %+v, want malformed %q", tok, d, rec)
		}
	}
	// Under a token already dead, the usual suffix.
	bad("00000000000000b1", "again", now-1)
	if r, err := b.c.Sweep(ctx, q, nil); err != nil || r.Malformed != 1 {
		t.Fatalf("Sweep = %+v, %v", r, err)
	}
	ids, err := b.rdb.ZRange(ctx, k.Dead, 0, -1).Result()
	suffixed := slices.IndexFunc(ids, func(id string) bool { return strings.HasPrefix(id, "00000000000000b1.") })
	if err != nil || len(ids) != 3 || suffixed < 0 {
		t.Errorf("dead ids = %v, %v; want a third, 00000000000000b1 with a suffix", ids, err)
	}
}
