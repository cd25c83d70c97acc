package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// consumer runs Consume in the background; stop cancels it and returns
// Consume's result.
type consumer struct {
	cancel context.CancelFunc
	done   chan error
}

func startConsume(t *testing.T, c *Client, queue string, h Handler, opts *ConsumeOpts) *consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	cs := &consumer{cancel: cancel, done: make(chan error, 1)}
	go func() { cs.done <- c.Consume(ctx, queue, h, opts) }()
	t.Cleanup(func() {
		cancel()
		<-cs.done
	})
	return cs
}

func (cs *consumer) stop(t *testing.T) {
	t.Helper()
	cs.stopWithin(t, 10*time.Second)
}

// stopWithin cancels cs and fails unless Consume returns within limit.
func (cs *consumer) stopWithin(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	cs.cancel()
	select {
	case err := <-cs.done:
		if err != nil {
			t.Fatalf("Consume returned %v, want nil", err)
		}
		cs.done <- nil // for the cleanup
	case <-time.After(limit):
		t.Fatalf("Consume did not return within %v of cancel", limit)
	}
	return time.Since(start)
}

// sweeper sweeps a queue in a loop, as ackd would: a lease that runs out
// is requeued within moments.
type sweeper struct {
	stopc    chan struct{}
	wait     func()
	requeued atomic.Int32
	once     sync.Once
}

// startSweeper starts a sweeper on queue; it is stopped when the test ends
// if the test does not stop it first.
func startSweeper(t *testing.T, b *testBundle, queue string) *sweeper {
	t.Helper()
	sw := &sweeper{stopc: make(chan struct{})}
	sw.wait = background(func() {
		for {
			select {
			case <-sw.stopc:
				return
			default:
			}
			r, err := b.c.Sweep(t.Context(), queue, nil)
			if err != nil {
				t.Error(err)
				return
			}
			sw.requeued.Add(int32(r.Requeued + r.DeadLettered))
		}
	})
	t.Cleanup(func() { sw.stop() })
	return sw
}

// stop stops the sweeper and returns how many leases it ended.
func (sw *sweeper) stop() int {
	sw.once.Do(func() {
		close(sw.stopc)
		sw.wait()
	})
	return int(sw.requeued.Load())
}

// errorLog collects what ConsumeOpts.ErrorFunc is told.
type errorLog struct {
	mu   sync.Mutex
	errs []error
}

func (e *errorLog) add(_ *Lease, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.errs = append(e.errs, err)
}

func (e *errorLog) list() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.errs)
}

func (b *testBundle) waitIdle(t *testing.T, queue string) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, func() bool {
		s, err := b.c.Stats(t.Context(), queue)
		return err == nil && s.Ready == 0 && s.InFlight == 0 && s.Delayed == 0
	}, "queue %s idle", queue)
}

// stopClean stops cs, and fails on any error reported to errs, or unless
// queue then holds no lease and ready messages.
func (b *testBundle) stopClean(t *testing.T, cs *consumer, errs *errorLog, queue string, ready int) {
	t.Helper()
	cs.stop(t)
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
	st := checkInvariants(t, b.rdb, queue)
	if len(st.InFlight) != 0 || len(st.Ready) != ready {
		t.Errorf("after the run: in flight %v, ready %v; want none, %d", st.InFlight, st.Ready, ready)
	}
}

// handlerResult waits for a handler's result, failing on an error or if
// none comes within 30 s.
func handlerResult(t *testing.T, result <-chan error) {
	t.Helper()
	select {
	case err := <-result:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler did not finish")
	}
}

func TestConsumeAcks(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "consume"

	var mu sync.Mutex
	var seen []string
	var errs errorLog
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, string(l.Payload))
		return nil
	}, &ConsumeOpts{Workers: 3, ErrorFunc: errs.add})

	want := []string{"a", "b", "c", "d", "e", "f", "g"}
	for _, p := range want {
		b.push(t, q, p, nil)
	}
	redistest.WaitFor(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == len(want)
	}, "all messages handled")
	b.waitIdle(t, q)
	cs.stop(t)

	mu.Lock()
	slices.Sort(seen)
	mu.Unlock()
	if !slices.Equal(seen, want) {
		t.Errorf("handled %v, want %v", seen, want)
	}
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Dead)+len(st.Ready)+len(st.InFlight) != 0 {
		t.Errorf("state = %+v", st)
	}
}

func TestConsumeErrorNacksWithBackoff(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "consumefail"

	var mu sync.Mutex
	var attempts []int
	var ids []string
	var backoffs []int
	var errs errorLog
	boom := errors.New("boom")
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, l.Attempt)
		ids = append(ids, l.ID)
		if l.Attempt < 3 {
			return boom
		}
		return nil
	}, &ConsumeOpts{
		Workers:   2,
		ErrorFunc: errs.add,
		BackoffFunc: func(attempt int) time.Duration {
			mu.Lock()
			defer mu.Unlock()
			backoffs = append(backoffs, attempt)
			return 2 * time.Millisecond
		},
	})

	id := b.push(t, q, "x", nil)
	redistest.WaitFor(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts) == 3
	}, "three attempts")
	b.waitIdle(t, q)
	cs.stop(t)

	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(attempts, []int{1, 2, 3}) || !slices.Equal(ids, []string{id, id, id}) {
		t.Errorf("attempts %v ids %v", attempts, ids)
	}
	if !slices.Equal(backoffs, []int{1, 2}) {
		t.Errorf("BackoffFunc called with %v, want [1 2]", backoffs)
	}
	e := errs.list()
	if len(e) != 2 || !errors.Is(e[0], boom) || !errors.Is(e[1], boom) {
		t.Errorf("errors: %v", e)
	}
	if st := checkInvariants(t, b.rdb, q); len(st.Dead) != 0 {
		t.Errorf("dead: %v", st.Dead)
	}
}

func TestConsumePanicIsAnError(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "consumepanic"

	var calls atomic.Int32
	var errs errorLog
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		calls.Add(1)
		if l.Attempt == 1 {
			panic("handler bug")
		}
		return nil
	}, &ConsumeOpts{ErrorFunc: errs.add, BackoffFunc: func(int) time.Duration { return 0 }})

	b.push(t, q, "x", nil)
	redistest.WaitFor(t, 10*time.Second, func() bool { return calls.Load() == 2 }, "second attempt")
	b.waitIdle(t, q)
	cs.stop(t)
	e := errs.list()
	if len(e) != 1 || !strings.Contains(e[0].Error(), "panic") || !strings.Contains(e[0].Error(), "handler bug") {
		t.Errorf("errors: %v", e)
	}
}

func TestConsumeDeadLettersAfterMaxDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: 2})
	const q = "consumedead"

	var calls atomic.Int32
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		calls.Add(1)
		return errors.New("always")
	}, &ConsumeOpts{ErrorFunc: func(*Lease, error) {}, BackoffFunc: func(int) time.Duration { return time.Millisecond }})
	id := b.push(t, q, "x", nil)
	redistest.WaitFor(t, 10*time.Second, func() bool {
		s, _ := b.c.Stats(t.Context(), q)
		return s.Dead == 1
	}, "dead letter")
	cs.stop(t)
	st := checkInvariants(t, b.rdb, q)
	if d := st.Dead[id]; d.Reason != ReasonFailed || d.Failures != 2 || calls.Load() != 2 {
		t.Errorf("dead letter %+v after %d calls", d, calls.Load())
	}
}

// TestConsumeAutoExtend: a handler that runs for several lease lengths
// keeps its lease, because Consume extends it in the background, even
// with a sweeper requeuing every lease that runs out.
func TestConsumeAutoExtend(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "autoextend"
	// Extends come every leaseFor/3: the lease survives a heartbeat held
	// up for 2/3 of it, which a loaded 2-core machine running the race
	// detector needs (60 ms was lost about one run in eight, 150 ms under
	// a load of 20; 900 ms leaves 600 ms).
	const leaseFor = 900 * time.Millisecond
	const runFor = 2 * time.Second

	var calls atomic.Int32
	var moves atomic.Int32
	var errs errorLog
	handled := make(chan error, 1)
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		calls.Add(1)
		done := make(chan struct{})
		go func() {
			// The handler's "work": wait until its deadline has moved at
			// least twice and it has run for several lease lengths.
			defer close(done)
			start, last := time.Now(), l.Deadline()
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for ctx.Err() == nil {
				if d := l.Deadline(); !d.Equal(last) {
					moves.Add(1)
					last = d
				}
				if moves.Load() >= 2 && time.Since(start) >= runFor {
					return
				}
				<-tick.C
			}
		}()
		<-done
		handled <- ctx.Err()
		return ctx.Err()
	}, &ConsumeOpts{LeaseFor: leaseFor, ErrorFunc: errs.add})

	// A sweeper, as ackd runs it: a lease that ran out would be requeued.
	sw := startSweeper(t, b, q)

	b.push(t, q, "slow", nil)
	select {
	case err := <-handled:
		if err != nil {
			t.Fatalf("handler's context: %v (lease lost)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not finish")
	}
	b.waitIdle(t, q)
	requeued := sw.stop()
	cs.stop(t)
	if calls.Load() != 1 || requeued != 0 || moves.Load() < 2 {
		t.Errorf("calls %d, requeued %d, deadline moves %d", calls.Load(), requeued, moves.Load())
	}
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
	checkInvariants(t, b.rdb, q)
}

// TestConsumeLostLease: when the lease is lost (here: someone removed it),
// the heartbeat's Extend fails, the handler's ctx is cancelled, and the
// message is neither acked nor nacked by the loser.
func TestConsumeLostLease(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "lost"

	var errs errorLog
	started := make(chan *Lease, 1)
	result := make(chan error, 1)
	cs := startConsume(t, b.c, q, func(hctx context.Context, l *Lease) error {
		started <- l
		<-hctx.Done()
		result <- hctx.Err()
		return nil
	}, &ConsumeOpts{LeaseFor: 60 * time.Millisecond, ErrorFunc: errs.add})

	b.push(t, q, "x", nil)
	l := <-started
	// Another consumer's view: the lease ran out and was requeued.
	if err := b.rdb.HDel(ctx, KeysFor(q).Held, l.Token).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.ZRem(ctx, KeysFor(q).Due, l.Token).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-result:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler ctx: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler's ctx was not cancelled")
	}
	cs.stop(t)
	e := errs.list()
	if len(e) != 1 || !errors.Is(e[0], ErrNotHeld) {
		t.Errorf("errors: %v", e)
	}
}

// TestConsumeSettledByHandler: a handler that ends its lease itself (Ack,
// Nack, Release) and goes on working is left alone: its heartbeat stops
// instead of finding the lease gone, so the handler's ctx is not cancelled
// and nothing reports a lost lease.
func TestConsumeSettledByHandler(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		settle func(context.Context, *Lease) error
		ready  int // on the queue afterwards
	}{
		{"ack", func(ctx context.Context, l *Lease) error { return l.Ack(ctx) }, 0},
		{"nack", func(ctx context.Context, l *Lease) error { return l.Nack(ctx, time.Hour) }, 0},
		{"release", func(ctx context.Context, l *Lease) error { return l.Release(ctx) }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			q := "selfsettled" + tc.name
			// Heartbeats are due every 100 ms: the work after the settle
			// spans several, which found the lease gone and cancelled
			// the handler before.
			const leaseFor = 300 * time.Millisecond
			var errs errorLog
			var calls atomic.Int32
			result := make(chan error, 1)
			cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
				if calls.Add(1) > 1 {
					// The released message, delivered again: hold it
					// until the stop, which releases it.
					<-ctx.Done()
					return ctx.Err()
				}
				if err := tc.settle(ctx, l); err != nil {
					result <- err
					return err
				}
				select {
				case <-ctx.Done():
					result <- fmt.Errorf("handler ctx cancelled after it settled: %w", context.Cause(ctx))
				case <-time.After(2 * leaseFor): // the work after the settle
					result <- nil
				}
				return nil
			}, &ConsumeOpts{LeaseFor: leaseFor, StopTimeout: 100 * time.Millisecond, ErrorFunc: errs.add})
			b.push(t, q, "x", nil)
			handlerResult(t, result)
			b.stopClean(t, cs, &errs, q, tc.ready)
		})
	}
}

// TestConsumeUnansweredSettleKeepsLease: a handler's Ack that got no
// answer from Redis (here its context was already done, so nothing was
// sent) may have left the lease held: the heartbeat keeps it alive, even
// with a sweeper requeuing every lease that runs out, and the handler's
// next Ack succeeds.
func TestConsumeUnansweredSettleKeepsLease(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "unanswered"
	// A third of it is each heartbeat's slack on a loaded machine (see
	// TestConsumeAutoExtend).
	const leaseFor = 900 * time.Millisecond
	var errs errorLog
	result := make(chan error, 1)
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		done, cancel := context.WithCancel(ctx)
		cancel()
		if err := l.Ack(done); !errors.Is(err, context.Canceled) {
			result <- fmt.Errorf("Ack with a done context: %v", err)
			return nil
		}
		select {
		case <-ctx.Done():
			result <- fmt.Errorf("handler ctx cancelled: %w", context.Cause(ctx))
			return nil
		case <-time.After(3 * leaseFor): // work on, for several heartbeats
		}
		result <- l.Ack(ctx)
		return nil
	}, &ConsumeOpts{LeaseFor: leaseFor, ErrorFunc: errs.add})
	sw := startSweeper(t, b, q)
	b.push(t, q, "x", nil)
	handlerResult(t, result)
	if n := sw.stop(); n != 0 {
		t.Errorf("the lease ran out %d times", n)
	}
	b.stopClean(t, cs, &errs, q, 0)
}

// TestConsumeCancelWaitsForHandlers: cancelling stops taking, lets running
// handlers finish and settle, then Consume returns nil.
func TestConsumeCancelWaitsForHandlers(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "cancel"

	started := make(chan struct{}, 2)
	release := make(chan struct{})
	var handlerCtxErr atomic.Value
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		started <- struct{}{}
		<-release
		if ctx.Err() != nil {
			handlerCtxErr.Store(ctx.Err())
		}
		return nil
	}, &ConsumeOpts{Workers: 2})

	b.push(t, q, "a", nil)
	b.push(t, q, "b", nil)
	<-started
	<-started
	cs.cancel()
	b.push(t, q, "after cancel", nil)
	select {
	case err := <-cs.done:
		t.Fatalf("Consume returned %v while handlers were running", err)
	default:
	}
	close(release)
	cs.stop(t)
	if err := handlerCtxErr.Load(); err != nil {
		t.Errorf("handler ctx cancelled by Consume's cancel: %v", err)
	}
	// Both leases were settled before Consume returned; the message pushed
	// after the cancel was not taken (or, if a take was already under way,
	// it is in flight and will be requeued; it was not handled).
	s, err := b.c.Stats(t.Context(), q)
	if err != nil || s.Ready+s.InFlight != 1 || s.Dead != 0 {
		t.Errorf("Stats = %+v, %v", s, err)
	}
	if len(started) != 0 {
		t.Errorf("a handler started after the cancel")
	}
}

// TestRefusedReleaseLeavesLeaseToConsume: a ReleaseBatch refused before it
// is sent (leases of two queues) does not mark its leases settled: Consume
// still acks a lease whose handler returns nil after such a call.
func TestRefusedReleaseLeavesLeaseToConsume(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.push(t, "relother", "y", nil)
	other, err := b.c.Take(t.Context(), "relother", nil)
	if err != nil || other == nil {
		t.Fatalf("Take = %v, %v", other, err)
	}
	const q = "relrefused"
	var errs errorLog
	result := make(chan error, 1)
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		err := b.c.ReleaseBatch(ctx, []*Lease{l, other})
		if !errors.Is(err, ErrInvalidArgument) {
			err = fmt.Errorf("ReleaseBatch of two queues: %v, want ErrInvalidArgument", err)
		} else {
			err = nil
		}
		result <- err
		return nil
	}, &ConsumeOpts{ErrorFunc: errs.add})
	b.push(t, q, "x", nil)
	handlerResult(t, result)
	b.waitIdle(t, q) // acked
	b.stopClean(t, cs, &errs, q, 0)
}

// TestConsumeReleasesUnansweredSettle: a handler whose own Ack got no
// answer from Redis, and that returns, leaves a lease that may still be
// held: Consume releases it, so the message comes back at once, not when
// a long lease runs out, and uncounted.
func TestConsumeReleasesUnansweredSettle(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "unansweredreturn"
	var errs errorLog
	var calls atomic.Int32
	second := make(chan *Lease, 1)
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		if calls.Add(1) == 1 {
			done, cancel := context.WithCancel(ctx)
			cancel()
			_ = l.Ack(done) // sends nothing: no answer
			return nil
		}
		second <- l
		return nil
	}, &ConsumeOpts{LeaseFor: time.Hour, ErrorFunc: errs.add})
	id := b.push(t, q, "x", nil)
	select {
	case l := <-second:
		if l.ID != id || l.Attempt != 1 {
			t.Errorf("delivered again: %s attempt %d, want %s attempt 1", l.ID, l.Attempt, id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the message did not come back: its lease was left to run out")
	}
	b.waitIdle(t, q)
	b.stopClean(t, cs, &errs, q, 0)
}
