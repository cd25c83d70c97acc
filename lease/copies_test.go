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
	pushCopies(t, b, q)
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
	allHanded(t, b, q, "TakeBatch", ls)
}

// TestAckAndTakeBatchKeepsTwoCopiesOfAnID: the same through
// AckAndTakeBatch, whose second take (takeRest) must hand over the first
// run's lease of the copy at the lower attempt too.
func TestAckAndTakeBatchKeepsTwoCopiesOfAnID(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "copies2"
	b.push(t, q, "first", nil)
	done := b.take(t, q, nil)
	pushCopies(t, b, q)
	ls, err := b.c.AckAndTakeBatch(ctx, q, []*Lease{done}, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	allHanded(t, b, q, "AckAndTakeBatch", ls)
}

// pushCopies notes q as empty with an empty take, so that the next take
// asks for one slot and needs a second run for more, then pushes two
// copies of id "dup": a fresh one and one nacked twice.
func pushCopies(t *testing.T, b *testBundle, q string) {
	t.Helper()
	b.noMessage(t, q)
	fresh := (&envelope{ID: "dup", Attempts: 0, Payload: []byte("a")}).appendTo(nil)
	nacked := (&envelope{ID: "dup", Attempts: 2, Failures: 2, Payload: []byte("b")}).appendTo(nil)
	if err := b.rdb.RPush(t.Context(), KeysFor(q).Ready, fresh, nacked).Err(); err != nil {
		t.Fatal(err)
	}
}

// allHanded fails the test unless op handed over as many leases, ls, as
// q has held in Redis.
func allHanded(t *testing.T, b *testBundle, q, op string, ls []*Lease) {
	t.Helper()
	held, err := b.rdb.HLen(t.Context(), KeysFor(q).Held).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != int(held) {
		t.Errorf("%s returned %d leases (%v), but %d are held in Redis: a lease was dropped by the client", op, len(ls), ids(ls), held)
	}
}
