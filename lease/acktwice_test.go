package lease

import "testing"

// TestAckBatchSameLeaseOfTwiceCountsOnce: the same lease given twice in
// one ack counts once and reports 1 both times (docs/PROTOCOL.md, Ack),
// also when it is named token "|" id (LeaseOf), whose second mention
// finds the record gone: AckBatch must not report ErrNotHeld for a lease
// it has just acked.
func TestAckBatchSameLeaseOfTwiceCountsOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktwice"
	b.push(t, q, "x", nil)
	l := b.take(t, q, nil)
	l1, err := b.c.LeaseOf(q, l.ID, l.Token)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := b.c.LeaseOf(q, l.ID, l.Token)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.c.AckBatch(ctx, []*Lease{l1, l2}); err != nil {
		t.Errorf("AckBatch of one lease named twice (token|id): %v; want nil (status 1 both times)", err)
	}
	// the same with the token alone reports 1 both times
	b.push(t, q, "y", nil)
	m := b.take(t, q, nil)
	if err := b.c.AckBatch(ctx, []*Lease{m, m}); err != nil {
		t.Errorf("AckBatch of one lease given twice (token): %v", err)
	}
}
