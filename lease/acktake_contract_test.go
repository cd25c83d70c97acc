package lease

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Tests of ackTake's contract, whatever its implementation.

// callCounter is a go-redis hook that counts round trips: each command
// sent on its own and each pipeline is one.
type callCounter struct{ n atomic.Int64 }

func (h *callCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *callCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h *callCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// countCalls adds a callCounter to b's client.
func (b *testBundle) countCalls() *callCounter {
	h := &callCounter{}
	b.rdb.AddHook(h)
	return h
}

// TestAckTakeAcksThenTakes: one call, one round trip, acks the leases
// given and leases new messages, like AckBatch then TakeBatch.
func TestAckTakeAcksThenTakes(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktake"
	calls := b.countCalls()
	var pushed []string
	for _, p := range []string{"a", "b", "c", "d", "e", "f", "g"} {
		pushed = append(pushed, b.push(t, q, p, nil))
	}
	// The first call loads the scripts.
	first, errs, err := b.c.ackTake(ctx, q, nil, 2, 0)
	if err != nil || len(errs) != 0 || !slices.Equal(ids(first), pushed[:2]) {
		t.Fatalf("ackTake(none, 2) = %v, %v, %v; want %v", ids(first), errs, err, pushed[:2])
	}
	second, errs, err := b.c.ackTake(ctx, q, first[:1], 1, 0)
	if err != nil || len(errs) != 1 || errs[0] != nil || !slices.Equal(ids(second), pushed[2:3]) {
		t.Fatalf("ackTake(a, 1) = %v, %v, %v; want %v", ids(second), errs, err, pushed[2:3])
	}

	before := calls.n.Load()
	sent := time.Now()
	done := []*Lease{first[1], second[0]}
	taken, errs, err := b.c.ackTake(ctx, q, done, 3, time.Minute)
	if err != nil || len(errs) != 2 || errs[0] != nil || errs[1] != nil {
		t.Fatalf("ackTake(b c, 3) errors %v, %v", errs, err)
	}
	if n := calls.n.Load() - before; n != 1 {
		t.Errorf("ackTake made %d round trips, want 1", n)
	}
	if !slices.Equal(ids(taken), pushed[3:6]) {
		t.Fatalf("ackTake(b c, 3) took %v, want %v", ids(taken), pushed[3:6])
	}
	for i, l := range taken {
		if l.Queue != q || string(l.Payload) != string("defg"[i]) || l.Attempt != 1 || l.MaxDeliveries != MaxDeliveriesDefault || l.Token == "" {
			t.Errorf("taken[%d] = %+v", i, l)
		}
		// The lease runs a minute from when Redis ran the take.
		if d := time.Until(l.Deadline()); d < 50*time.Second || d > time.Minute+time.Since(sent)+time.Second {
			t.Errorf("taken[%d] deadline in %v, want about a minute", i, d)
		}
	}
	for _, l := range done {
		if !l.settled.Load() {
			t.Errorf("acked lease %s not marked settled", l.ID)
		}
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 3 || !slices.Equal(st.Ready, pushed[6:]) {
		t.Fatalf("after ackTake: in flight %v, ready %v", st.InFlight, st.Ready)
	}
	// What it took are leases like any other.
	if err := taken[0].Extend(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.c.ackTake(ctx, q, taken, 0, 0); err != nil {
		t.Fatal(err)
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 0 || len(st.Ready) != 1 {
		t.Fatalf("after acking all: in flight %v, ready %v", st.InFlight, st.Ready)
	}
}

// TestAckTakeAckErrors: each lease that cannot be acked gets the error Ack
// would return for it; the others are acked, and the take goes on.
func TestAckTakeAckErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktakeerrs"
	for _, p := range []string{"a", "b", "c", "d"} {
		b.push(t, q, p, nil)
	}
	ls, err := b.c.TakeBatch(ctx, q, 3, nil)
	if err != nil || len(ls) != 3 {
		t.Fatalf("TakeBatch: %d, %v", len(ls), err)
	}
	gone, stale, good := ls[0], ls[1], ls[2]
	if err := gone.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	// Another delivery of b holds it now.
	if err := b.c.ReleaseBatch(ctx, []*Lease{stale}); err != nil {
		t.Fatal(err)
	}
	again := b.take(t, q, nil)
	if again.ID != stale.ID {
		t.Fatalf("took %s after the release, want %s", again.ID, stale.ID)
	}
	// A lease rebuilt with another message's id and again's token.
	forged, err := b.c.LeaseOf(q, good.ID, again.Token)
	if err != nil {
		t.Fatal(err)
	}
	// Copies, so that the calls of Ack below start unsettled too.
	done := []*Lease{copyLease(gone), copyLease(stale), copyLease(forged), good}
	taken, errs, err := b.c.ackTake(ctx, q, done, 2, 0)
	if err != nil || len(taken) != 1 || string(taken[0].Payload) != "d" {
		t.Fatalf("ackTake = %v, %v; want d taken", ids(taken), err)
	}
	if len(errs) != 4 || !errors.Is(errs[0], ErrNotHeld) || !errors.Is(errs[1], ErrNotHeld) || !errors.Is(errs[2], ErrStale) || errs[3] != nil {
		t.Fatalf("ackTake errors %v; want not held, not held, stale, nil", errs)
	}
	for i, l := range []*Lease{gone, stale, forged} {
		if want := l.Ack(ctx); want == nil || errs[i].Error() != want.Error() {
			t.Errorf("ackTake error %q, Ack's %q", errs[i], want)
		}
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 2 || st.Tokens[stale.ID] != again.Token || len(st.Ready) != 0 {
		t.Fatalf("after ackTake: in flight %v (tokens %v), ready %v", st.InFlight, st.Tokens, st.Ready)
	}
}

func copyLease(l *Lease) *Lease {
	return &Lease{Queue: l.Queue, ID: l.ID, Token: l.Token, Payload: l.Payload, Attempt: l.Attempt, MaxDeliveries: l.MaxDeliveries, byID: l.byID, c: l.c}
}

// TestAckTakePausedEmptyAndScriptFlush: a paused queue leases nothing but
// the acks go through; an empty queue returns at once with nothing (no
// BLMOVE); scripts that Redis lost (SCRIPT FLUSH, a restart) are loaded
// again.
func TestAckTakePausedEmptyAndScriptFlush(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acktakepaused"
	b.push(t, q, "a", nil)
	b.push(t, q, "b", nil)
	l := b.take(t, q, nil)
	if _, err := b.c.Pause(ctx, q); err != nil {
		t.Fatal(err)
	}
	taken, errs, err := b.c.ackTake(ctx, q, []*Lease{l}, 5, 0)
	if err != nil || len(taken) != 0 || len(errs) != 1 || errs[0] != nil {
		t.Fatalf("ackTake on a paused queue = %v, %v, %v; want the ack only", ids(taken), errs, err)
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 0 || len(st.Ready) != 1 {
		t.Fatalf("paused: in flight %v, ready %v", st.InFlight, st.Ready)
	}
	if _, err := b.c.Resume(ctx, q); err != nil {
		t.Fatal(err)
	}
	if err := flushScripts(ctx, b.rdb); err != nil {
		t.Fatal(err)
	}
	taken, errs, err = b.c.ackTake(ctx, q, nil, 5, 0)
	if err != nil || len(errs) != 0 || len(taken) != 1 || string(taken[0].Payload) != "b" {
		t.Fatalf("ackTake after SCRIPT FLUSH = %v, %v, %v; want b", ids(taken), errs, err)
	}
	if err := flushScripts(ctx, b.rdb); err != nil {
		t.Fatal(err)
	}
	blmoves := commandStats(t, b.rdb)["blmove"]
	taken, errs, err = b.c.ackTake(ctx, q, taken, 5, 0)
	if err != nil || len(taken) != 0 || len(errs) != 1 || errs[0] != nil {
		t.Fatalf("ackTake on an empty queue = %v, %v, %v; want the ack only", ids(taken), errs, err)
	}
	if n := commandStats(t, b.rdb)["blmove"]; n != blmoves {
		t.Errorf("ackTake on an empty queue blocked (%d BLMOVE)", n-blmoves)
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 0 || len(st.Ready) != 0 {
		t.Fatalf("at the end: in flight %v, ready %v", st.InFlight, st.Ready)
	}
}

// The consumer role runs Consume with its waits, with the
// rights docs/SECURITY.md gives it (TestACLRoles), and leaves every
// message in one place without any one of them (TestACLLeaveOneOut).
func init() {
	aclOps = append(aclOps,
		aclOp{"consumer", "consume", func(e *aclEnv) error {
			e.push("m1", nil)
			e.push("m2", &PushOpts{Delay: 20 * time.Millisecond})
			return e.userConsume([]string{"m1", "m2"})
		}},
	)
}

// userConsume runs Consume as the user until the messages with these
// payloads were handled, and stops it; it fails on the first error
// Consume reports.
func (e *aclEnv) userConsume(payloads []string) error {
	ctx, cancel := context.WithCancel(e.ctx())
	handled := make(chan string, len(payloads))
	var reported atomic.Pointer[error]
	done := make(chan error, 1)
	go func() {
		done <- e.user.Consume(ctx, e.queue, func(_ context.Context, l *Lease) error {
			handled <- string(l.Payload)
			return nil
		}, &ConsumeOpts{Workers: 4, ErrorFunc: func(_ *Lease, err error) { reported.Store(&err) }})
	}()
	var got []string
	timeout := time.After(10 * time.Second)
	for len(got) < len(payloads) && reported.Load() == nil {
		select {
		case p := <-handled:
			got = append(got, p)
		case <-timeout:
			cancel()
			<-done
			return errors.New("consume: not all handled within 10s")
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	err := <-done
	// A handled message is acked, or in flight if the ack was refused.
	for _, p := range got {
		e.vanish[p] = true
	}
	if p := reported.Load(); p != nil && err == nil {
		err = *p
	}
	return err
}
