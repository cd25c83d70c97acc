package lease

import (
	"bytes"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Data in Redis that ackd did not write, written to hurt: the scripts
// bound what it costs and nothing wedges.

// TestTakeOversized: elements over the taking client's MaxPayload, raw or
// enveloped, go to the dead set as "oversized", whole, instead of being
// leased; elements at the limit are leased.
func TestTakeOversized(t *testing.T) {
	t.Parallel()
	const limit = 100
	b := setup(t, &Config{MaxPayload: limit})
	ctx := t.Context()
	const q = "oversized"
	k := KeysFor(q)
	env := func(id string, n int) string {
		e := envelope{ID: id, Max: 10, Payload: bytes.Repeat([]byte("e"), n)}
		return string(e.appendTo(nil))
	}
	elems := []string{
		strings.Repeat("r", limit+1),                 // raw, one byte over
		strings.Repeat("s", limit),                   // raw, at the limit
		env("env-over", limit+1),                     // envelope, payload one byte over
		env("env-at", limit),                         // envelope, payload at the limit
		env("env-far", 10*limit),                     // envelope, over before parsing
		envelopeMark + strings.Repeat("x", 10*limit), // over, and no id to parse
	}
	for _, e := range elems {
		if err := b.rdb.RPush(ctx, k.Ready, e).Err(); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := b.c.TakeBatch(ctx, q, 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, l := range ls {
		got[string(l.Payload)] = true
	}
	if len(ls) != 2 || !got[strings.Repeat("s", limit)] || !got[strings.Repeat("e", limit)] {
		t.Fatalf("leased %d: %v; want the two payloads at the limit", len(ls), slices.Collect(maps.Keys(got)))
	}
	st := checkInvariants(t, b.rdb, q)
	byPayload := map[string]DeadLetter{}
	for _, d := range st.Dead {
		if d.Reason != ReasonOversized {
			t.Errorf("dead letter %s: reason %s, want %s", d.ID, d.Reason, ReasonOversized)
		}
		p := d.Payload
		if p == nil {
			p = d.Raw
		}
		byPayload[string(p)] = d
	}
	if d, ok := byPayload[strings.Repeat("r", limit+1)]; !ok || d.Raw != nil {
		t.Errorf("raw oversized payload: %+v, want it whole as Payload", d)
	}
	for _, id := range []string{"env-over", "env-far"} {
		if _, ok := st.Dead[id]; !ok {
			t.Errorf("oversized envelope %s not dead under its own id: %v", id, slices.Collect(maps.Keys(st.Dead)))
		}
	}
	if d := byPayload[strings.Repeat("e", 10*limit)]; d.Attempts != 0 {
		t.Errorf("oversized envelope: %d attempts, want 0: it was never delivered", d.Attempts)
	}
	if len(st.Dead) != 4 {
		t.Errorf("%d dead letters, want 4", len(st.Dead))
	}

	// A client allowed larger payloads can take them once replayed.
	if n, err := b.c.Replay(ctx, q); err != nil || n != 4 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	big, err := New(b.rdb, &Config{MaxPayload: 10 * limit})
	if err != nil {
		t.Fatal(err)
	}
	ls, err = big.TakeBatch(ctx, q, 10, nil)
	if err != nil || len(ls) != 3 {
		t.Fatalf("TakeBatch with MaxPayload %d: %d leases, %v; want 3 (the one without an id is malformed)", 10*limit, len(ls), err)
	}
	checkInvariants(t, b.rdb, q)
}

// TestAbsurdDeadlines: infinite, huge and negative scores written into the
// due and delayed sets by someone else neither wedge Sweep and
// Requeue nor overflow their replies. Far ones are pulled in to a week
// from now; past ones are due now.
func TestAbsurdDeadlines(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "absurd"
	k := KeysFor(q)
	scores := []float64{math.Inf(1), 1e300, 4e15, math.Inf(-1), -1e300, -5}
	var held []*Lease
	for i, s := range scores {
		b.push(t, q, fmt.Sprintf("m%d", i), nil)
		l := b.take(t, q, nil)
		held = append(held, l)
		if err := b.rdb.ZAdd(ctx, k.Due, redis.Z{Score: s, Member: l.Token}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	b.push(t, q, "later", &PushOpts{Delay: time.Hour})
	delayed, err := b.rdb.ZRange(ctx, k.Delayed, 0, 0).Result()
	if err != nil || len(delayed) != 1 {
		t.Fatal(delayed, err)
	}
	if err := b.rdb.ZAdd(ctx, k.Delayed, redis.Z{Score: math.Inf(1), Member: delayed[0]}).Err(); err != nil {
		t.Fatal(err)
	}

	now := b.redisNow(t)
	r, err := b.c.Sweep(ctx, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requeued != 3 || r.More {
		t.Fatalf("Sweep = %+v; want the 3 past deadlines requeued", r)
	}
	for _, l := range r.Lags {
		if l < 0 || l > time.Duration(now+1000)*time.Millisecond {
			t.Errorf("lag %v out of range", l)
		}
	}
	week := MaxLeaseFor.Milliseconds()
	if next := r.NextDeadline.UnixMilli(); next < now+week || next > now+week+60000 {
		t.Errorf("NextDeadline %v, want a week from now", r.NextDeadline)
	}
	if next := r.NextDelayed.UnixMilli(); next < now+week || next > now+week+60000 {
		t.Errorf("NextDelayed %v, want a week from now", r.NextDelayed)
	}
	// The shadow keys keep the deadlines take gave them (a foreign score
	// does not move them): an early expiry event finds the lease not due.
	// So check places, not shadow keys.
	qs := readQueue(t, b.rdb, q)
	for _, z := range qs.due {
		if int64(z.Score) > now+week+60000 {
			t.Errorf("deadline of %s still %v", z.Member, z.Score)
		}
	}
	p := place(t, b.rdb, q)
	for i := range scores {
		if where := p.places[fmt.Sprintf("m%d", i)]; len(where) != 1 {
			t.Errorf("m%d is in %v", i, where)
		}
	}
	if len(qs.ready) != 3 || len(qs.due) != 3 || len(qs.held) != 3 || len(qs.delayed) != 1 {
		t.Errorf("ready %d, in flight %d/%d, delayed %d; want 3, 3, 1", len(qs.ready), len(qs.due), len(qs.held), len(qs.delayed))
	}
	// The leases still work.
	for _, l := range held[:3] {
		if err := l.Ack(ctx); err != nil {
			t.Errorf("Ack %s: %v", l.ID, err)
		}
	}
	if r, err := b.c.Sweep(ctx, q, nil); err != nil || r.Requeued != 0 {
		t.Errorf("second Sweep = %+v, %v", r, err)
	}
}

// TestRegistryBogusNames: a registry stuffed with names that are not
// queues (invalid, huge, binary, or never used) changes nothing for a real
// queue, and Queues lists only valid names.
func TestRegistryBogusNames(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const bogus = 100000
	names := make([]any, 0, 1000)
	flush := func() {
		if err := b.rdb.SAdd(ctx, RegistryKey, names...).Err(); err != nil {
			t.Fatal(err)
		}
		names = names[:0]
	}
	for i := range bogus {
		switch i % 4 {
		case 0:
			names = append(names, fmt.Sprintf("bogus.%d", i))
		case 1:
			names = append(names, fmt.Sprintf("{evil}%d", i))
		case 2:
			names = append(names, strings.Repeat("n", 200)+fmt.Sprint(i))
		default:
			names = append(names, fmt.Sprintf("\xff\x00%d", i))
		}
		if len(names) == cap(names) {
			flush()
		}
	}
	const q = "real"
	id := b.push(t, q, "payload", nil)
	l := b.take(t, q, &TakeOpts{LeaseFor: time.Millisecond})
	b.expire(t, l, requeued)
	l = b.take(t, q, nil)
	if l.ID != id {
		t.Fatalf("took %s, want %s", l.ID, id)
	}
	if err := l.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Sweep(ctx, q, nil); err != nil {
		t.Fatal(err)
	}
	qs, err := b.c.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != bogus/4+1 || !slices.Contains(qs, q) {
		t.Fatalf("Queues: %d names, want %d valid ones with %s", len(qs), bogus/4+1, q)
	}
	for _, name := range qs {
		if ValidateQueue(name) != nil {
			t.Fatalf("Queues lists invalid name %q", name)
		}
	}
	checkInvariants(t, b.rdb, q)
}
