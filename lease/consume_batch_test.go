package lease

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// Tests of how Consume batches acks with takes.

// TestConsumeCoalescesAcks: the acks of 8 workers ride the takes, so N
// messages cost far fewer round trips and script runs than the 2N of a
// take and an ack each (or the N + N/8 of one ack each and batched takes).
func TestConsumeCoalescesAcks(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q, n = "coalesce", 400
	payloads := make([][]byte, n)
	for i := range payloads {
		payloads[i] = fmt.Appendf(nil, "m%d", i)
	}
	if _, err := b.c.PushBatch(t.Context(), q, payloads, nil); err != nil {
		t.Fatal(err)
	}
	calls := b.countCalls()
	before := commandStats(t, b.rdb)
	var mu sync.Mutex
	seen := map[string]bool{}
	all := make(chan struct{})
	cs := startConsume(t, b.c, q, func(_ context.Context, l *Lease) error {
		mu.Lock()
		defer mu.Unlock()
		if seen[l.ID] {
			t.Errorf("message %s handled twice", l.ID)
		}
		seen[l.ID] = true
		if len(seen) == n {
			close(all)
		}
		return nil
	}, &ConsumeOpts{Workers: 8, ErrorFunc: func(_ *Lease, err error) { t.Error(err) }})
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		t.Fatal("not all handled within 30s")
	}
	cs.stop(t)
	rt := calls.n.Load()
	after := commandStats(t, b.rdb)
	scripts := after["fcall"] + after["evalsha"] + after["eval"] - before["fcall"] - before["evalsha"] - before["eval"]
	t.Logf("%d messages: %d round trips, %d script runs", n, rt, scripts)
	if rt >= n/2 || scripts >= n {
		t.Errorf("%d messages took %d round trips and %d script runs; want under %d and %d", n, rt, scripts, n/2, n)
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight)+len(st.Ready)+len(st.Dead)+len(st.Delayed) != 0 {
		t.Fatalf("after the run: %+v", st)
	}
}

// TestConsumeFlushesAcksOnStop: handlers that return nil after Consume's
// ctx was cancelled have their acks sent before Consume returns; their
// messages are never delivered again. The rest go back to the queue.
func TestConsumeFlushesAcksOnStop(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q, workers = "flushonstop", 8
	for i := range 20 {
		b.push(t, q, fmt.Sprint("m", i), nil)
	}
	started := make(chan string, workers)
	release := make(chan struct{})
	cs := startConsume(t, b.c, q, func(_ context.Context, l *Lease) error {
		started <- l.ID
		<-release
		return nil
	}, &ConsumeOpts{Workers: workers, StopTimeout: time.Minute, ErrorFunc: func(_ *Lease, err error) { t.Error(err) }})
	var handled []string
	for range workers {
		handled = append(handled, <-started)
	}
	cs.cancel()
	close(release)
	cs.stop(t)
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || len(st.Ready) != 20-workers {
		t.Fatalf("after stop: in flight %v, ready %d; want none, %d", st.InFlight, len(st.Ready), 20-workers)
	}
	for _, id := range handled {
		if slices.Contains(st.Ready, id) {
			t.Errorf("handled message %s is back on the queue", id)
		}
	}
}

// TestConsumeReportsAckErrors: an ack that fails because the lease went
// elsewhere (here another delivery holds the message) is reported to
// ErrorFunc with its lease, and leaves the new holder alone.
func TestConsumeReportsAckErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "ackerrs"
	other, err := New(b.srv.Client(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := b.push(t, q, "m", nil)
	took := make(chan *Lease, 1)
	type report struct {
		l   *Lease
		err error
	}
	reports := make(chan report, 4)
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		// Give the message away behind Consume's back: its lease is
		// stale when Consume acks it.
		h, err := other.LeaseOf(q, l.ID, l.Token)
		if err == nil {
			err = h.Release(ctx)
		}
		if err != nil {
			return err
		}
		l2, err := other.Take(ctx, q, nil)
		if err != nil {
			return err
		}
		took <- l2
		return nil
		// One worker: Consume takes nothing while its handler runs.
	}, &ConsumeOpts{Workers: 1, ErrorFunc: func(l *Lease, err error) { reports <- report{l, err} }})
	var r report
	select {
	case r = <-reports:
	case <-time.After(10 * time.Second):
		t.Fatal("no ack error reported")
	}
	if r.l == nil || r.l.ID != id || !errors.Is(r.err, ErrNotHeld) {
		t.Fatalf("reported %v (lease %+v); want the lease of %s and ErrNotHeld", r.err, r.l, id)
	}
	cs.stop(t)
	l2 := <-took
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 1 || st.Tokens[id] != l2.Token {
		t.Fatalf("after stop: in flight %v, tokens %v; want %s held by the other delivery", st.InFlight, st.Tokens, id)
	}
	if err := l2.Ack(ctx); err != nil {
		t.Fatalf("the other delivery's ack: %v", err)
	}
	select {
	case r := <-reports:
		t.Fatalf("another report: %+v", r)
	default:
	}
}

// TestConsumeAcksWhileWaiting: with the queue empty, Consume waits for
// messages; the acks of handlers that finish meanwhile go out at once, not
// when the wait ends (here it would last a minute).
func TestConsumeAcksWhileWaiting(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "ackwhilewaiting"
	handled := make(chan string, 2)
	release := make(chan struct{})
	cs := startConsume(t, b.c, q, func(_ context.Context, l *Lease) error {
		<-release
		handled <- l.ID
		return nil
	}, &ConsumeOpts{Workers: 2, idleWait: time.Minute, ErrorFunc: func(_ *Lease, err error) { t.Error(err) }})
	waitBlocked(t, b.rdb, 1)
	id := b.push(t, q, "m", nil)
	// The take after the wake-up leases it, and waits again.
	redistest.WaitFor(t, 10*time.Second, func() bool {
		s, err := b.c.Stats(t.Context(), q)
		return err == nil && s.InFlight == 1
	}, "message taken")
	close(release)
	if got := <-handled; got != id {
		t.Fatalf("handled %s, want %s", got, id)
	}
	// Well within the minute of the wait.
	redistest.WaitFor(t, 10*time.Second, func() bool {
		s, err := b.c.Stats(t.Context(), q)
		return err == nil && s.InFlight == 0
	}, "message acked")
	// Wake the wait, so that the stop need not wait for it.
	b.push(t, q, "wake", nil)
	if got := <-handled; got == id {
		t.Fatalf("handled %s again", id)
	}
	waitBlocked(t, b.rdb, 1)
	cs.cancel()
	b.push(t, q, "wake", nil)
	cs.stop(t)
}

// TestConsumeWaitsInOneRoundTrip: an idle Consume waits with one round
// trip per wait (BLMOVE and the take in one pipeline, no probe of the
// queue first, no take after), and a message pushed meanwhile reaches the
// handler with no further call: the take that leases it is already in
// Redis, held by the BLMOVE.
func TestConsumeWaitsInOneRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "onewait"
	stats := b.srv.Client(t) // uncounted
	calls := b.countCalls()
	var atHandler atomic.Int64
	handled := make(chan string, 1)
	startConsume(t, b.c, q, func(_ context.Context, l *Lease) error {
		atHandler.Store(calls.n.Load())
		handled <- l.ID
		return nil
	}, &ConsumeOpts{Workers: 1, idleWait: 20 * time.Millisecond, ErrorFunc: func(_ *Lease, err error) { t.Error(err) }})
	waitBlocked(t, b.rdb, 1)

	// Idle: one round trip per BLMOVE (a wait that has started but not
	// reached Redis yet may be counted at either end).
	rt0, mv0 := calls.n.Load(), commandStats(t, stats)["blmove"]
	var rt, mv int64
	redistest.WaitFor(t, 10*time.Second, func() bool {
		rt, mv = calls.n.Load()-rt0, commandStats(t, stats)["blmove"]-mv0
		return mv >= 10
	}, "10 waits")
	if rt > mv+2 {
		t.Errorf("%d waits took %d round trips, want one each", mv, rt)
	}

	// A push to a waiting Consume: its own round trip, and none other
	// before the handler runs. A wait may end just then and start again
	// (one more call), so look at the best of several messages.
	best := int64(-1)
	for range 8 {
		waitBlocked(t, b.rdb, 1)
		before := calls.n.Load()
		id := b.push(t, q, "m", nil)
		if got := <-handled; got != id {
			t.Fatalf("handled %s, want %s", got, id)
		}
		if n := atHandler.Load() - before; best < 0 || n < best {
			best = n
		}
	}
	if best != 1 {
		t.Errorf("push to handler took %d round trips besides the push, want 0", best-1)
	}
}

// TestConsumeAckRidesWait: with one worker and an empty queue, the
// handler's ack goes out ahead of the next wait for messages, in its
// pipeline (the ack, BLMOVE and the take): a message costs one round trip
// besides its push, and its ack is done while Consume waits for the next.
func TestConsumeAckRidesWait(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "ackrideswait"
	stats := b.srv.Client(t) // uncounted
	acked := func() string { return stats.HGet(t.Context(), KeysFor(q).Counts, "acked").Val() }
	calls := b.countCalls()
	pipes := &pipeRecorder{}
	b.rdb.AddHook(pipes)
	handled := make(chan string, 1)
	startConsume(t, b.c, q, func(_ context.Context, l *Lease) error {
		handled <- l.ID
		return nil
	}, &ConsumeOpts{Workers: 1, idleWait: time.Minute, ErrorFunc: func(_ *Lease, err error) { t.Error(err) }})
	waitBlocked(t, b.rdb, 1)
	// A wait may end just then and start again (one more call), so look
	// at the best of several messages.
	best := int64(-1)
	for i := range 8 {
		before := calls.n.Load()
		id := b.push(t, q, "m", nil)
		if got := <-handled; got != id {
			t.Fatalf("handled %s, want %s", got, id)
		}
		redistest.WaitFor(t, 10*time.Second, func() bool { return acked() == strconv.Itoa(i+1) }, "message %d acked", i)
		waitBlocked(t, stats, 1)
		if n := calls.n.Load() - before; best < 0 || n < best {
			best = n
		}
	}
	if best != 2 {
		t.Errorf("a message took %d round trips from its push to the next wait, want 2 (the push; the ack and the wait)", best)
	}
	if !slices.ContainsFunc(pipes.sent(), func(p []string) bool { return slices.Equal(p, []string{"fcall", "blmove", "fcall"}) }) {
		t.Errorf("Consume sent the pipelines %v, want the ack, BLMOVE and the take in one", pipes.sent())
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight)+len(st.Ready) != 0 {
		t.Fatalf("in flight %v, ready %v; want none", st.InFlight, st.Ready)
	}
}

// TestConsumeAckRidesWaitNoFunction: with the function library and the
// script cache flushed while a handler runs, the ack sent ahead of the
// wait is refused unrun; Consume runs it again once the wait is over, and
// nothing is reported or lost.
func TestConsumeAckRidesWaitNoFunction(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "ackrideswaitnofn"
	pipes := &pipeRecorder{}
	b.rdb.AddHook(pipes)
	handled := make(chan string, 1)
	startConsume(t, b.c, q, func(_ context.Context, l *Lease) error {
		if string(l.Payload) == "flush" {
			for _, cmd := range [][]any{{"function", "flush"}, {"script", "flush"}} {
				if err := b.rdb.Do(ctx, cmd...).Err(); err != nil {
					return err
				}
			}
		}
		handled <- l.ID
		return nil
	}, &ConsumeOpts{Workers: 1, idleWait: 20 * time.Millisecond, ErrorFunc: func(_ *Lease, err error) { t.Error(err) }})
	waitBlocked(t, b.rdb, 1)
	id := b.push(t, q, "flush", nil)
	if got := <-handled; got != id {
		t.Fatalf("handled %s, want %s", got, id)
	}
	redistest.WaitFor(t, 10*time.Second, func() bool { return b.ackedCount(t, q) == 1 }, "message acked")
	if !slices.ContainsFunc(pipes.sent(), func(p []string) bool { return slices.Equal(p, []string{"fcall", "blmove", "fcall"}) }) {
		t.Errorf("Consume sent the pipelines %v, want the ack, BLMOVE and the take in one", pipes.sent())
	}
	// And Consume goes on.
	id = b.push(t, q, "m", nil)
	if got := <-handled; got != id {
		t.Fatalf("handled %s, want %s", got, id)
	}
	redistest.WaitFor(t, 10*time.Second, func() bool { return b.ackedCount(t, q) == 2 }, "second message acked")
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight)+len(st.Ready) != 0 {
		t.Fatalf("in flight %v, ready %v; want none", st.InFlight, st.Ready)
	}
}

// TestConsumeWaitsWithReplicas: when writes wait for replicas, the
// blocking take is two calls (BLMOVE, then the take and its WAIT); an idle
// Consume still gets what is pushed while it waits, and a delayed message
// once it is due, as the take before said.
func TestConsumeWaitsWithReplicas(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, nil)
	c, _ := clusterClient(t, cl, &Config{Replicas: 1})
	const q = "replicawait"
	node := nodeOf(t, cl, q)
	handled := make(chan string, 2)
	cs := startConsume(t, c, q, func(_ context.Context, l *Lease) error {
		handled <- l.ID
		return nil
	}, &ConsumeOpts{Workers: 2, ErrorFunc: func(_ *Lease, err error) { t.Error(err) }})
	next := func(want string) {
		t.Helper()
		select {
		case got := <-handled:
			if got != want {
				t.Fatalf("handled %s, want %s", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s not handled within 10s", want)
		}
	}
	waitBlocked(t, node, 1)
	id, err := c.Push(t.Context(), q, []byte("now"), nil)
	if err != nil {
		t.Fatal(err)
	}
	next(id)
	waitBlocked(t, node, 1)
	id, err = c.Push(t.Context(), q, []byte("later"), &PushOpts{Delay: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	next(id)
	cs.stop(t)
	if st := checkInvariants(t, node, q); len(st.InFlight)+len(st.Ready)+len(st.Delayed) != 0 {
		t.Fatalf("after the run: %+v", st)
	}
}

// TestConsumeWorkerAfterGoexit: runtime.Goexit ends the goroutine that ran
// the handler; another takes its place, so a single worker goes on.
func TestConsumeWorkerAfterGoexit(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: 1})
	const q = "goexitworker"
	b.push(t, q, "exit", nil)
	b.push(t, q, "exit", nil)
	ok := b.push(t, q, "ok", nil)
	handled := make(chan string, 1)
	var errs errorLog
	cs := startConsume(t, b.c, q, func(_ context.Context, l *Lease) error {
		if string(l.Payload) == "exit" {
			runtime.Goexit()
		}
		handled <- l.ID
		return nil
	}, &ConsumeOpts{Workers: 1, ErrorFunc: errs.add})
	select {
	case id := <-handled:
		if id != ok {
			t.Fatalf("handled %s, want %s", id, ok)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the message after two Goexits was not handled")
	}
	cs.stop(t)
	st := checkInvariants(t, b.rdb, q)
	if len(st.Dead) != 2 || len(st.InFlight)+len(st.Ready) != 0 || len(errs.list()) != 2 {
		t.Fatalf("after stop: dead %v, in flight %v, ready %v, errors %v", st.Dead, st.InFlight, st.Ready, errs.list())
	}
}

// TestConsumeReleasesTakeAnsweredAfterStop: a take (carrying an ack) that
// Redis answers only after Consume was cancelled has its lease released,
// not left in flight until it runs out, and its ack done. CLIENT PAUSE
// holds the take from before it is sent until after the cancel. The take
// found the queue dry, so it is a wait for messages, the ack ahead of it
// in its pipeline.
func TestConsumeReleasesTakeAnsweredAfterStop(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "takeafterstop"
	first := b.push(t, q, "first", nil)
	var handled atomic.Int32
	release := make(chan struct{})
	cs := startConsume(t, b.c, q, func(_ context.Context, l *Lease) error {
		handled.Add(1)
		<-release
		return nil
	}, &ConsumeOpts{Workers: 1, ErrorFunc: func(l *Lease, err error) { t.Errorf("reported %v: %v", l, err) }})
	redistest.WaitFor(t, 10*time.Second, func() bool { return handled.Load() == 1 }, "first handler started")
	second := b.push(t, q, "second", nil)
	inUse := func() int {
		s := b.rdb.PoolStats()
		return int(s.TotalConns) - int(s.IdleConns)
	}
	if n := inUse(); n != 0 {
		t.Fatalf("%d connections in use before the take", n)
	}
	// Until the pause ends, Redis runs nothing any client sends.
	if err := b.srv.Client(t).Do(ctx, "client", "pause", 1500, "all").Err(); err != nil {
		t.Fatal(err)
	}
	pipes := &pipeRecorder{}
	b.rdb.AddHook(pipes)
	close(release) // the ack and a wait for more go out together, and wait
	redistest.WaitFor(t, 10*time.Second, func() bool {
		return slices.ContainsFunc(pipes.sent(), func(p []string) bool { return slices.Equal(p, []string{"fcall", "blmove", "fcall"}) })
	}, "the ack and the wait sent")
	cs.stop(t)
	if n := handled.Load(); n != 1 {
		t.Errorf("%d handlers ran, want 1", n)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || !slices.Equal(st.Ready, []string{second}) {
		t.Errorf("after stop: in flight %v, ready %v; want none, [%s]", st.InFlight, st.Ready, second)
	}
	if n := b.ackedCount(t, q); n != 1 {
		t.Errorf("counts acked = %d, want 1 (%s)", n, first)
	}
}

// Consume releases what a take brings back after it was cancelled; the
// consumer role must do that with every right it needs checked first
// (TestACLLeaveOneOut), or a release refused halfway would leave a
// duplicate.
func init() {
	aclOps = append(aclOps,
		aclOp{"consumer", "release batch", func(e *aclEnv) error {
			ls := []*Lease{e.lease("m1", nil, 0), e.lease("m2", nil, 0)}
			ls = append(ls, e.lease("m3", nil, 0))
			return e.user.ReleaseBatch(e.ctx(), ls)
		}},
	)
}
