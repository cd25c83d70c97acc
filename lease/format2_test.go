package lease

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// Tests of the layout of leases in flight (format 2, docs/PROTOCOL.md
// "Lease record"): keyed by token, the record the envelope as it was
// taken, the shadow key holding 1.

// TestTakeLayout: what a take leaves in Redis. The record of an envelope
// is the element popped, byte for byte (a 10 KB payload too, which the
// lease returns intact); a raw payload's is the envelope it becomes, with
// attempts 0. held's field is the token, due scores the token with the
// deadline, the shadow key holds "1" and expires at it, and the keys of
// format 1 are not written.
func TestTakeLayout(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: 7})
	ctx := t.Context()
	const q = "layout"
	k := KeysFor(q)
	big := bytes.Repeat([]byte("0123456789"), 1024)
	big[5000] = '|'
	big[6000] = 0
	b.push(t, q, "small", &PushOpts{MaxDeliveries: 3})
	b.push(t, q, string(big), nil)
	if err := b.rdb.RPush(ctx, k.Ready, "raw|payload").Err(); err != nil {
		t.Fatal(err)
	}
	popped, err := b.rdb.LRange(ctx, k.Ready, 0, -1).Result()
	if err != nil || len(popped) != 3 {
		t.Fatal(popped, err)
	}
	ls, err := b.c.TakeBatch(ctx, q, 3, nil)
	if err != nil || len(ls) != 3 {
		t.Fatalf("TakeBatch = %v, %v", ids(ls), err)
	}
	if string(ls[0].Payload) != "small" || ls[0].Attempt != 1 || ls[0].MaxDeliveries != 3 {
		t.Errorf("lease of an envelope = %+v", ls[0])
	}
	if !bytes.Equal(ls[1].Payload, big) || ls[1].Attempt != 1 {
		t.Errorf("lease of a 10 KB envelope: %d bytes, attempt %d; want the %d pushed", len(ls[1].Payload), ls[1].Attempt, len(big))
	}
	if string(ls[2].Payload) != "raw|payload" || ls[2].Attempt != 1 || ls[2].MaxDeliveries != 7 || !validID(ls[2].ID) {
		t.Errorf("lease of a raw payload = %+v", ls[2])
	}
	raw := (&envelope{ID: ls[2].ID, Max: 7, Payload: []byte("raw|payload")}).appendTo(nil)
	for i, want := range []string{popped[0], popped[1], string(raw)} {
		l := ls[i]
		rec, err := b.rdb.HGet(ctx, k.Held, l.Token).Result()
		if err != nil || rec != want {
			t.Errorf("lease %d: record %.40q (%d bytes), %v; want %.40q (%d bytes)", i, rec, len(rec), err, want, len(want))
		}
		dl, err := b.rdb.ZScore(ctx, k.Due, l.Token).Result()
		if err != nil || int64(dl) != l.Deadline().UnixMilli() {
			t.Errorf("lease %d: due score %v, %v; want %d", i, dl, err, l.Deadline().UnixMilli())
		}
		sk := LeaseKey(q, l.Token)
		if v, err := b.rdb.Get(ctx, sk).Result(); err != nil || v != "1" {
			t.Errorf("lease %d: shadow key holds %q, %v; want 1", i, v, err)
		}
		if at, err := b.rdb.Do(ctx, "pexpiretime", sk).Int64(); err != nil || at != l.Deadline().UnixMilli() {
			t.Errorf("lease %d: shadow key expires at %d, %v; want %d", i, at, err, l.Deadline().UnixMilli())
		}
	}
	if n, err := b.rdb.Exists(ctx, k.Leases, k.Deadlines).Result(); err != nil || n != 0 {
		t.Errorf("format 1 keys: %d exist, %v", n, err)
	}
	checkInvariants(t, b.rdb, q)
	if err := b.c.AckBatch(ctx, ls); err != nil {
		t.Fatal(err)
	}
	if n, err := b.rdb.Exists(ctx, k.Held, k.Due, LeaseKey(q, ls[0].Token)).Result(); err != nil || n != 0 {
		t.Errorf("after the acks: %d lease keys left, %v", n, err)
	}
}

// TestAckFencesWithoutReadingRecord: ack ends a lease by deleting its
// token's field, without reading the record (no HGET), and that still
// fences: after the message was delivered again, the earlier delivery's
// ack and extend get ErrNotHeld and change nothing, and the new holder's
// ack works.
func TestAckFencesWithoutReadingRecord(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "fenceunread"
	id := b.push(t, q, "x", nil)
	old := b.take(t, q, nil)
	if err := old.Release(ctx); err != nil {
		t.Fatal(err)
	}
	cur := b.take(t, q, nil)
	if cur.ID != id || cur.Token == old.Token {
		t.Fatalf("second delivery = %+v", cur)
	}
	before := snapshot(t, b.rdb)
	calls := commandCalls(t, b.rdb)
	for name, f := range map[string]func() error{
		"Ack":      func() error { return old.Ack(ctx) },
		"AckBatch": func() error { return b.c.AckBatch(ctx, []*Lease{old}) },
		"ackTake": func() error {
			_, errs, err := b.c.ackTake(ctx, q, []*Lease{old}, 0, 0)
			return errors.Join(append(errs, err)...)
		},
		"Extend": func() error { return old.Extend(ctx, time.Hour) },
	} {
		if err := f(); !errors.Is(err, ErrNotHeld) || errors.Is(err, ErrStale) {
			t.Errorf("%s with an earlier delivery's token = %v, want ErrNotHeld", name, err)
		}
		sameSnapshot(t, name+" with an earlier delivery's token", before, snapshot(t, b.rdb))
	}
	if n := commandCalls(t, b.rdb)["hget"] - calls["hget"]; n != 0 {
		t.Errorf("acks and extend by token ran HGET %d times, want none", n)
	}
	if err := b.c.AckBatch(ctx, []*Lease{old, cur}); !errors.Is(err, ErrNotHeld) || strings.Count(err.Error(), "not held") != 1 {
		t.Fatalf("AckBatch(earlier, current) = %v, want ErrNotHeld for the earlier only", err)
	}
	b.allAcked(t, q, 1)
}

// allAcked fails unless queue holds nothing in flight or ready and n
// acks were counted.
func (b *testBundle) allAcked(t *testing.T, queue string, n int) {
	t.Helper()
	st := checkInvariants(t, b.rdb, queue)
	if len(st.InFlight)+len(st.Ready) != 0 || b.ackedCount(t, queue) != n {
		t.Fatalf("after the acks: %+v, %d acked; want nothing left, %d acked", st, b.ackedCount(t, queue), n)
	}
}

// TestLeaseOfOtherMessage: a lease rebuilt with LeaseOf names its message
// (token|id): when its token holds a lease of another message, every
// call fails with ErrStale and changes nothing. With the right id they
// work.
func TestLeaseOfOtherMessage(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "leaseofother"
	b.push(t, q, "a", nil)
	b.push(t, q, "b", nil)
	ls, err := b.c.TakeBatch(ctx, q, 2, nil)
	if err != nil || len(ls) != 2 {
		t.Fatalf("TakeBatch = %v, %v", ids(ls), err)
	}
	forged, err := b.c.LeaseOf(q, ls[1].ID, ls[0].Token)
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, b.rdb)
	for name, f := range map[string]func() error{
		"Ack":      func() error { return forged.Ack(ctx) },
		"AckBatch": func() error { return b.c.AckBatch(ctx, []*Lease{forged, forged}) },
		"ackTake": func() error {
			_, errs, err := b.c.ackTake(ctx, q, []*Lease{forged}, 0, 0)
			return errors.Join(append(errs, err)...)
		},
		"Extend":     func() error { return forged.Extend(ctx, time.Hour) },
		"Nack":       func() error { return forged.Nack(ctx, 0) },
		"DeadLetter": func() error { return forged.DeadLetter(ctx) },
		"Fail":       func() error { return forged.Fail(ctx, errors.New("no")) },
		"Release":    func() error { return forged.Release(ctx) },
	} {
		if err := f(); !errors.Is(err, ErrStale) || errors.Is(err, ErrNotHeld) {
			t.Errorf("%s with another message's id = %v, want ErrStale", name, err)
		}
		sameSnapshot(t, name+" with another message's id", before, snapshot(t, b.rdb))
	}
	right, err := b.c.LeaseOf(q, ls[0].ID, ls[0].Token)
	if err != nil {
		t.Fatal(err)
	}
	if err := right.Extend(ctx, time.Minute); err != nil {
		t.Fatalf("Extend with the right id: %v", err)
	}
	if err := b.c.AckBatch(ctx, []*Lease{right, ls[1]}); err != nil {
		t.Fatalf("AckBatch with the right id: %v", err)
	}
	b.allAcked(t, q, 2)
}

// TestTakeResentAfterFirstLeaseEnded: a take resent after the first
// lease of its first run ended (acked) runs as a new take with the same
// tokens. Its second token still holds the first run's lease, so HSETNX
// refuses it: that element and the rest popped go back to the head of
// the ready list in order, and the call returns what it leased, without
// an error and with nothing dead-lettered.
func TestTakeResentAfterFirstLeaseEnded(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "resentended"
	k := KeysFor(q)
	for _, p := range []string{"a", "b", "c"} {
		b.push(t, q, p, nil)
	}
	keys, args, tokens := b.c.takeArgs(q, k, 3, 0, nil, false)
	run := func() takeResult {
		t.Helper()
		res, err := takeScript.Run(ctx, b.c.rdb, keys, args...).Slice()
		if err != nil {
			t.Fatal(err)
		}
		r, bad, err := b.c.parseRun(q, res, tokens, 0)
		if err != nil || bad != 0 {
			t.Fatalf("take = %+v, %d bad, %v", r, bad, err)
		}
		return r
	}
	first := run()
	if len(first.leases) != 3 {
		t.Fatalf("first run leased %v", ids(first.leases))
	}
	if err := first.leases[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	pushed := []string{b.push(t, q, "d", nil), b.push(t, q, "e", nil), b.push(t, q, "f", nil)}
	again := run()
	if len(again.leases) != 1 || again.leases[0].ID != pushed[0] || again.leases[0].Token != tokens[0] {
		t.Fatalf("resent run leased %v, want %s under the first token", ids(again.leases), pushed[0])
	}
	st := checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, pushed[1:]) || len(st.Dead) != 0 {
		t.Fatalf("ready %v, dead %v; want %v, none", st.Ready, st.Dead, pushed[1:])
	}
	if len(st.Held) != 3 || st.Held[tokens[0]] != pushed[0] || st.Held[tokens[1]] != first.leases[1].ID ||
		st.Held[tokens[2]] != first.leases[2].ID {
		t.Fatalf("held %v; want d and the first run's b and c", st.Held)
	}
	if err := b.c.AckBatch(ctx, slices.Concat(again.leases, first.leases[1:])); err != nil {
		t.Fatal(err)
	}
}
