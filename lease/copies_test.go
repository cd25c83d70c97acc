package lease

import (
	"testing"
)

// TestTakeBatchKeepsTwoCopiesOfAnID: two copies of one id in flight are
// two leases (format 2). A TakeBatch that takes them in two runs of the
// script (the queue's estimate is low after an empty take) must return
// both: each is held in Redis. A copy at a lower attempt is not a lease
// that ran out; dropping it would leave a lease no one was handed, which
// runs out and counts an expiry (and may be dead-lettered as expired
// without a handler ever seeing it). The second run is not asked to
// report what remains: the loop must end there, not ask for -1 slots.
func TestTakeBatchKeepsTwoCopiesOfAnID(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "copies"
	k := KeysFor(q)
	// an empty take notes the queue as empty: the next asks for 1 slot
	b.noMessage(t, q)
	fresh := (&envelope{ID: "dup", Attempts: 0, Payload: []byte("a")}).appendTo(nil)
	nacked := (&envelope{ID: "dup", Attempts: 2, Failures: 2, Payload: []byte("b")}).appendTo(nil)
	if err := b.rdb.RPush(ctx, k.Ready, fresh, nacked).Err(); err != nil {
		t.Fatal(err)
	}
	var ls []*Lease
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Errorf("TakeBatch panicked: %v", p)
			}
		}()
		ls, err = b.c.TakeBatch(ctx, q, 2, nil)
	}()
	if err != nil {
		t.Fatal(err)
	}
	held, err := b.rdb.HLen(ctx, k.Held).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != int(held) {
		t.Errorf("TakeBatch returned %d leases (%v), but %d are held in Redis: a lease was dropped by the client", len(ls), ids(ls), held)
	}
}

// TestAckAndTakeBatchKeepsTwoCopiesOfAnID: the same through
// AckAndTakeBatch, whose second take (takeRest) must hand over the first
// run's lease of the copy at the lower attempt too.
func TestAckAndTakeBatchKeepsTwoCopiesOfAnID(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "copies2"
	k := KeysFor(q)
	b.push(t, q, "first", nil)
	done := b.take(t, q, nil)
	b.noMessage(t, q)
	fresh := (&envelope{ID: "dup", Attempts: 0, Payload: []byte("a")}).appendTo(nil)
	nacked := (&envelope{ID: "dup", Attempts: 2, Failures: 2, Payload: []byte("b")}).appendTo(nil)
	if err := b.rdb.RPush(ctx, k.Ready, fresh, nacked).Err(); err != nil {
		t.Fatal(err)
	}
	ls, err := b.c.AckAndTakeBatch(ctx, q, []*Lease{done}, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	held, err := b.rdb.HLen(ctx, k.Held).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != int(held) {
		t.Errorf("AckAndTakeBatch returned %d leases (%v), but %d are held in Redis: a lease was dropped by the client", len(ls), ids(ls), held)
	}
}
