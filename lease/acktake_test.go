package lease

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"
)

// ackedCount reads the field "acked" of the queue's counts hash.
func (b *testBundle) ackedCount(t *testing.T, queue string) int {
	t.Helper()
	v, err := b.rdb.HGet(t.Context(), KeysFor(queue).Counts, "acked").Result()
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("counts acked = %q", v)
	}
	return n
}

// TestAckTake acks and takes in one call, in order, and counts the acks.
func TestAckTake(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktake"
	var pushed []string
	for i := range 5 {
		pushed = append(pushed, b.push(t, q, fmt.Sprintf("m%d", i), nil))
	}

	first, errs, err := b.c.ackTake(ctx, q, nil, 3, time.Minute)
	if err != nil || len(errs) != 0 || !slices.Equal(ids(first), pushed[:3]) {
		t.Fatalf("ackTake(none, 3) = %v, %v, %v; want %v", ids(first), errs, err, pushed[:3])
	}
	if d := first[0].Deadline().Sub(time.Now()); d < 50*time.Second || d > 70*time.Second {
		t.Errorf("deadline in %v, want about 1m", d)
	}
	second, errs, err := b.c.ackTake(ctx, q, first, 5, 0)
	if err != nil || len(errs) != 3 || errs[0] != nil || errs[1] != nil || errs[2] != nil {
		t.Fatalf("ackTake(3 held, 5) = %v, %v", errs, err)
	}
	if !slices.Equal(ids(second), pushed[3:]) {
		t.Fatalf("ackTake took %v, want %v", ids(second), pushed[3:])
	}
	if n := b.ackedCount(t, q); n != 3 {
		t.Errorf("counts acked = %d, want 3", n)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 2 || len(st.Ready) != 0 {
		t.Fatalf("state = %+v", st)
	}

	// Acks only; the same lease twice counts once; an ack of an acked
	// lease is not held.
	none, errs, err := b.c.ackTake(ctx, q, []*Lease{second[0], second[1], second[0], first[0]}, 0, 0)
	if err != nil || len(none) != 0 || errs[0] != nil || errs[1] != nil || errs[2] != nil || !errors.Is(errs[3], ErrNotHeld) {
		t.Fatalf("ackTake(acks only) = %v, %v, %v", none, errs, err)
	}
	if n := b.ackedCount(t, q); n != 5 {
		t.Errorf("counts acked = %d, want 5", n)
	}
	// Nothing to do: no call at all.
	if ls, errs, err := b.c.ackTake(ctx, q, nil, 0, 0); ls != nil || errs != nil || err != nil {
		t.Errorf("ackTake(nothing) = %v, %v, %v", ls, errs, err)
	}
	// An empty queue: acks nothing, takes nothing.
	if ls, errs, err := b.c.ackTake(ctx, q, nil, 10, 0); len(ls) != 0 || len(errs) != 0 || err != nil {
		t.Errorf("ackTake on an empty queue = %v, %v, %v", ls, errs, err)
	}
	checkInvariants(t, b.rdb, q)
}

// TestAckTakeStale: an ack with a token of an earlier delivery fails with
// ErrNotHeld, as Ack does, and changes nothing of the current lease; the
// take goes on. A lease from LeaseOf whose token holds another message's
// lease fails with ErrStale and changes nothing.
func TestAckTakeStale(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktakestale"
	id := b.push(t, q, "x", nil)
	old := b.take(t, q, &TakeOpts{LeaseFor: time.Millisecond})
	b.expire(t, old, requeued)
	cur := b.take(t, q, nil)
	next := b.push(t, q, "y", nil)

	ls, errs, err := b.c.ackTake(ctx, q, []*Lease{old}, 1, 0)
	if err != nil || len(errs) != 1 || !errors.Is(errs[0], ErrNotHeld) || errors.Is(errs[0], ErrStale) {
		t.Fatalf("ackTake(stale) = %v, %v", errs, err)
	}
	if len(ls) != 1 || ls[0].ID != next {
		t.Fatalf("ackTake took %v, want %s", ids(ls), next)
	}
	if n := b.ackedCount(t, q); n != 0 {
		t.Errorf("counts acked = %d after a stale ack", n)
	}
	st := checkInvariants(t, b.rdb, q)
	if st.Tokens[id] != cur.Token {
		t.Fatalf("current lease's token %q, want %q", st.Tokens[id], cur.Token)
	}
	// The same lease handed with another message's id is refused too.
	forged, err := b.c.LeaseOf(q, next, cur.Token)
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, b.rdb)
	if _, errs, err := b.c.ackTake(ctx, q, []*Lease{forged}, 0, 0); err != nil || !errors.Is(errs[0], ErrStale) {
		t.Fatalf("ackTake(id of one lease, token of another) = %v, %v", errs, err)
	}
	sameSnapshot(t, "ackTake(id of one lease, token of another)", before, snapshot(t, b.rdb))
	if _, errs, err := b.c.ackTake(ctx, q, []*Lease{cur, ls[0]}, 0, 0); err != nil || errs[0] != nil || errs[1] != nil {
		t.Fatalf("ackTake(current) = %v, %v", errs, err)
	}
	checkInvariants(t, b.rdb, q)
}

// TestAckTakePaused: a paused queue leases nothing, moves nothing, and
// still acks.
func TestAckTakePaused(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktakepaused"
	b.push(t, q, "held", nil)
	held := b.take(t, q, nil)
	waiting := b.push(t, q, "waiting", nil)
	if _, err := b.c.Pause(ctx, q); err != nil {
		t.Fatal(err)
	}
	ls, errs, err := b.c.ackTake(ctx, q, []*Lease{held}, 10, 0)
	if err != nil || len(ls) != 0 || len(errs) != 1 || errs[0] != nil {
		t.Fatalf("ackTake on a paused queue = %v, %v, %v", ids(ls), errs, err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || !slices.Equal(st.Ready, []string{waiting}) {
		t.Fatalf("state = %+v", st)
	}
	if _, err := b.c.Resume(ctx, q); err != nil {
		t.Fatal(err)
	}
	ls, _, err = b.c.ackTake(ctx, q, nil, 10, 0)
	if err != nil || !slices.Equal(ids(ls), []string{waiting}) {
		t.Fatalf("ackTake after resume = %v, %v", ids(ls), err)
	}
}

// TestAckTakeResent runs one ack-and-take call twice with the same
// arguments, as go-redis does when a reply is lost: the second run
// answers with the first run's leases, takes nothing more, and its acks
// (already done) report not held and count nothing.
func TestAckTakeResent(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktakeresent"
	b.push(t, q, "done", nil)
	done := b.take(t, q, nil)
	for i := range 4 {
		b.push(t, q, fmt.Sprintf("m%d", i), nil)
	}
	k := KeysFor(q)
	tokens, rawIDs := b.c.newTokens(2)
	keys := []string{k.Ready, k.Claim, k.Held, k.Due, k.Delayed, k.Dead, k.DeadMsgs, k.Paused, k.Counts,
		LeaseKey(q, tokens[0]), LeaseKey(q, tokens[1]), LeaseKey(q, done.Token)}
	args := []any{2, 0, 60000, 10, WakeChannel, q, MaxPayloadDefault, 1, 0, tokens[0], rawIDs[0], tokens[1], rawIDs[1], done.Token}
	var runs [2]takeResult
	for r := range runs {
		res, err := takeScript.Run(ctx, b.c.rdb, keys, args...).Slice()
		if err != nil {
			t.Fatal(err)
		}
		runs[r], _, err = b.c.parseRun(q, res, tokens, 1)
		if err != nil || len(runs[r].leases) != 2 {
			t.Fatalf("run %d: %+v, %v", r, runs[r], err)
		}
	}
	if runs[0].acks[0] != 1 || runs[1].acks[0] != 0 {
		t.Errorf("ack statuses %v then %v, want 1 then 0", runs[0].acks, runs[1].acks)
	}
	for i := range 2 {
		a, r := runs[0].leases[i], runs[1].leases[i]
		if r.ID != a.ID || r.Token != tokens[i] || r.Deadline() != a.Deadline() || string(r.Payload) != fmt.Sprintf("m%d", i) {
			t.Errorf("lease %d: first %+v, resent %+v", i, a, r)
		}
	}
	if n := b.ackedCount(t, q); n != 1 {
		t.Errorf("counts acked = %d, want 1", n)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 2 || len(st.Ready) != 2 {
		t.Errorf("after a resent ack-and-take: %d in flight, %d ready", len(st.InFlight), len(st.Ready))
	}
}

// TestAckTakeBadInput: bad arguments are refused before anything is sent.
func TestAckTakeBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktakebad"
	b.push(t, q, "x", nil)
	l := b.take(t, q, nil)
	other := &Lease{Queue: "other", ID: "id", Token: "0123456789abcdef", c: b.c}
	before := snapshot(t, b.rdb)
	for name, call := range map[string]func() error{
		"n -1":          func() error { _, _, err := b.c.ackTake(ctx, q, nil, -1, 0); return err },
		"n MaxBatch+1":  func() error { _, _, err := b.c.ackTake(ctx, q, nil, MaxBatch+1, 0); return err },
		"mixed queues":  func() error { _, _, err := b.c.ackTake(ctx, q, []*Lease{l, other}, 1, 0); return err },
		"nil lease":     func() error { _, _, err := b.c.ackTake(ctx, q, []*Lease{nil}, 1, 0); return err },
		"lease too big": func() error { _, _, err := b.c.ackTake(ctx, q, nil, 1, MaxLeaseFor+time.Hour); return err },
		"too many acks": func() error { _, _, err := b.c.ackTake(ctx, q, make([]*Lease, MaxBatch+1), 1, 0); return err },
	} {
		if err := call(); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, _, err := b.c.ackTake(ctx, "bad queue", nil, 1, 0); !errors.Is(err, ErrInvalidQueue) {
		t.Errorf("bad queue: %v", err)
	}
	sameSnapshot(t, "refused ackTake", before, snapshot(t, b.rdb))
}

// TestAckWrongTypeCounts: a counts key of the wrong type (overwritten by
// something else) loses the count, never the ack: an ack alone or with a
// take succeeds and leaves the key as it was; once the key is fixed, acks
// count again.
func TestAckWrongTypeCounts(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "ackwrongcounts"
	k := KeysFor(q)
	for _, p := range []string{"x", "y", "z"} {
		b.push(t, q, p, nil)
	}
	l := b.take(t, q, nil)
	if err := b.rdb.Set(ctx, k.Counts, "not mine", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := l.Ack(ctx); err != nil {
		t.Errorf("Ack with a wrong-type counts key = %v, want nil", err)
	}
	l2 := b.take(t, q, nil)
	ls, errs, err := b.c.ackTake(ctx, q, []*Lease{l2}, 1, 0)
	if err != nil || len(ls) != 1 || errs[0] != nil {
		t.Fatalf("ackTake with a wrong-type counts key = %v, %v, %v; want the ack and a lease", ids(ls), errs, err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 1 || st.Tokens[ls[0].ID] != ls[0].Token || len(st.Ready) != 0 {
		t.Fatalf("after acks with a wrong-type counts key: in flight %v, ready %v; want only %s", st.InFlight, st.Ready, ls[0].ID)
	}
	if v, err := b.rdb.Get(ctx, k.Counts).Result(); err != nil || v != "not mine" {
		t.Errorf("counts key = %q, %v; want it untouched", v, err)
	}
	if err := b.rdb.Del(ctx, k.Counts).Err(); err != nil {
		t.Fatal(err)
	}
	if err := ls[0].Ack(ctx); err != nil {
		t.Fatalf("Ack once the key is fixed: %v", err)
	}
	if n := b.ackedCount(t, q); n != 1 {
		t.Errorf("counts acked = %d, want 1", n)
	}
}
