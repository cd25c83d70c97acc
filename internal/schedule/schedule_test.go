package schedule

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

const waitLong = 10 * time.Second

// call is one invocation of the fake SweepFunc.
type call struct {
	queue, trigger string
}

// recorder is a fake SweepFunc that records its calls and answers with
// what next returns (nil next: zero time, no error).
type recorder struct {
	mu    sync.Mutex
	calls []call
	next  func(c call, n int) (time.Time, error) // n: calls of this queue so far, this one included
}

func (r *recorder) sweep(ctx context.Context, queue, trigger string) (time.Time, error) {
	r.mu.Lock()
	r.calls = append(r.calls, call{queue, trigger})
	n := 0
	for _, c := range r.calls {
		if c.queue == queue {
			n++
		}
	}
	r.mu.Unlock()
	if r.next == nil {
		return time.Time{}, nil
	}
	return r.next(call{queue, trigger}, n)
}

func (r *recorder) get() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

type testBundle struct {
	s      *Scheduler
	rec    *recorder
	cancel context.CancelFunc
	done   chan error
}

// setup starts a Scheduler over rec and stops it when the test ends.
func setup(t *testing.T, rec *recorder, cfg *Config) *testBundle {
	t.Helper()
	s := New(rec.sweep, cfg)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	b := &testBundle{s: s, rec: rec, cancel: cancel, done: done}
	t.Cleanup(func() { b.stop(t) })
	return b
}

// stop cancels Run and waits for it to return.
func (b *testBundle) stop(t *testing.T) {
	t.Helper()
	b.cancel()
	select {
	case err, ok := <-b.done:
		if ok && err != nil {
			t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(waitLong):
		t.Fatalf("Run did not return within %v of cancel", waitLong)
	}
}

// idle waits until the scheduler has nothing pending or running, so that
// the recorded calls are final.
func (b *testBundle) idle(t *testing.T) {
	t.Helper()
	redistest.WaitFor(t, waitLong, func() bool {
		st := b.s.Stats()
		return st.Pending == 0 && st.Running == 0
	}, "scheduler idle")
}

func TestOrdering(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	b := setup(t, rec, &Config{Concurrency: 1})
	base := time.Now()
	b.s.At("q30", base.Add(30*time.Millisecond))
	b.s.At("q10", base.Add(10*time.Millisecond))
	b.s.At("q20", base.Add(20*time.Millisecond))
	b.s.At("q40", base.Add(40*time.Millisecond))
	redistest.WaitFor(t, waitLong, func() bool { return rec.count() == 4 }, "4 sweeps")
	b.idle(t)
	want := []call{{"q10", "timer"}, {"q20", "timer"}, {"q30", "timer"}, {"q40", "timer"}}
	if got := rec.get(); !slices.Equal(got, want) {
		t.Fatalf("sweeps = %v, want %v", got, want)
	}
}

func TestAtDue(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	b := setup(t, rec, nil)
	start := time.Now()
	at := start.Add(25 * time.Millisecond)
	var swept atomic.Int64
	rec.next = func(call, int) (time.Time, error) {
		swept.Store(time.Now().UnixNano())
		return time.Time{}, nil
	}
	b.s.At("q", at)
	redistest.WaitFor(t, waitLong, func() bool { return swept.Load() != 0 }, "sweep")
	if got := time.Unix(0, swept.Load()); got.Before(at) {
		t.Fatalf("swept at %v, before its time %v", got.Sub(start), at.Sub(start))
	}
}

func TestEarliestWins(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		times []time.Duration // At calls, in order, from now
	}{
		{"earlier after later", []time.Duration{time.Hour, 10 * time.Millisecond}},
		{"later after earlier", []time.Duration{10 * time.Millisecond, time.Hour}},
		{"past", []time.Duration{time.Hour, -time.Second, 30 * time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := &recorder{}
			b := setup(t, rec, nil)
			now := time.Now()
			for _, d := range tt.times {
				b.s.At("q", now.Add(d))
			}
			redistest.WaitFor(t, waitLong, func() bool { return rec.count() == 1 }, "the early sweep")
			b.idle(t) // the later times were absorbed by the earliest
			if got := rec.count(); got != 1 {
				t.Fatalf("%d sweeps, want 1", got)
			}
		})
	}
}

// An earlier time for another queue must re-arm the timer that waits for
// a far one.
func TestAtRearmsTimer(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	b := setup(t, rec, nil)
	b.s.At("far", time.Now().Add(time.Hour))
	redistest.WaitFor(t, waitLong, func() bool { return b.s.Pending() == 1 }, "far pending")
	b.s.At("near", time.Now().Add(5*time.Millisecond))
	redistest.WaitFor(t, waitLong, func() bool { return rec.count() == 1 }, "near swept")
	if got := rec.get()[0]; got != (call{"near", "timer"}) {
		t.Fatalf("swept %v, want near", got)
	}
	if got := b.s.Pending(); got != 1 {
		t.Fatalf("Pending() = %d, want 1 (far)", got)
	}
}

func TestZeroTimeIgnored(t *testing.T) {
	t.Parallel()
	s := New(func(context.Context, string, string) (time.Time, error) { return time.Time{}, nil }, nil)
	s.At("q", time.Time{})
	if got := s.Pending(); got != 0 {
		t.Fatalf("Pending() = %d after At(zero), want 0", got)
	}
}

// block is a SweepFunc step that waits for release, counting how many
// sweeps wait at once.
type block struct {
	release chan struct{}
	in, max atomic.Int64
}

func newBlock() *block { return &block{release: make(chan struct{})} }

func (b *block) wait(ctx context.Context) error {
	n := b.in.Add(1)
	defer b.in.Add(-1)
	for {
		m := b.max.Load()
		if n <= m || b.max.CompareAndSwap(m, n) {
			break
		}
	}
	select {
	case <-b.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestCoalesceWhileRunning(t *testing.T) {
	t.Parallel()
	blk := newBlock()
	rec := &recorder{}
	rec.next = func(c call, n int) (time.Time, error) {
		if n == 1 {
			return time.Time{}, blk.wait(context.Background())
		}
		return time.Time{}, nil
	}
	b := setup(t, rec, nil)
	b.s.Now("q", "event")
	redistest.WaitFor(t, waitLong, func() bool { return blk.in.Load() == 1 }, "first sweep running")
	b.s.Now("q", "scan")
	b.s.Now("q", "event")
	b.s.At("q", time.Now().Add(-time.Second))
	b.s.Now("q", "event")
	if got := b.s.Pending(); got != 1 {
		t.Fatalf("Pending() = %d while running with triggers queued, want 1", got)
	}
	close(blk.release)
	b.idle(t)
	want := []call{{"q", "event"}, {"q", "scan"}}
	if got := rec.get(); !slices.Equal(got, want) {
		t.Fatalf("sweeps = %v, want %v", got, want)
	}
}

func TestCoalesceWhileQueued(t *testing.T) {
	t.Parallel()
	blk := newBlock()
	rec := &recorder{}
	rec.next = func(c call, n int) (time.Time, error) {
		if c.queue == "busy" {
			return time.Time{}, blk.wait(context.Background())
		}
		return time.Time{}, nil
	}
	b := setup(t, rec, &Config{Concurrency: 1})
	b.s.Now("busy", "event")
	redistest.WaitFor(t, waitLong, func() bool { return blk.in.Load() == 1 }, "busy sweep running")
	for range 5 {
		b.s.Now("q", "event")
	}
	b.s.At("q", time.Now().Add(-time.Millisecond))
	redistest.WaitFor(t, waitLong, func() bool { return b.s.Stats().Pending == 1 }, "q waiting")
	close(blk.release)
	b.idle(t)
	want := []call{{"busy", "event"}, {"q", "event"}}
	if got := rec.get(); !slices.Equal(got, want) {
		t.Fatalf("sweeps = %v, want %v", got, want)
	}
}

func TestConcurrencyBound(t *testing.T) {
	t.Parallel()
	for _, conc := range []int{1, 3} {
		t.Run(fmt.Sprint(conc), func(t *testing.T) {
			t.Parallel()
			blk := newBlock()
			rec := &recorder{next: func(call, int) (time.Time, error) { return time.Time{}, blk.wait(context.Background()) }}
			b := setup(t, rec, &Config{Concurrency: conc})
			for i := range 10 {
				b.s.Now(fmt.Sprint("q", i), "scan")
			}
			redistest.WaitFor(t, waitLong, func() bool { return blk.in.Load() == int64(conc) }, "%d sweeps running", conc)
			if st := b.s.Stats(); st.Running != conc || st.Pending != 10-conc {
				t.Fatalf("Stats() = %+v, want %d running, %d pending", st, conc, 10-conc)
			}
			close(blk.release)
			b.idle(t)
			if got := rec.count(); got != 10 {
				t.Fatalf("%d sweeps, want 10", got)
			}
			if got := blk.max.Load(); got != int64(conc) {
				t.Fatalf("at most %d sweeps ran at once, want %d", got, conc)
			}
		})
	}
}

func TestNextFromSweep(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	rec.next = func(c call, n int) (time.Time, error) {
		if n < 3 {
			return time.Now().Add(5 * time.Millisecond), nil
		}
		return time.Time{}, nil
	}
	b := setup(t, rec, nil)
	b.s.Now("q", "scan")
	redistest.WaitFor(t, waitLong, func() bool { return rec.count() == 3 }, "3 sweeps")
	b.idle(t)
	want := []call{{"q", "scan"}, {"q", "timer"}, {"q", "timer"}}
	if got := rec.get(); !slices.Equal(got, want) {
		t.Fatalf("sweeps = %v, want %v", got, want)
	}
}

func TestErrorRetry(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	boom := errors.New("boom")
	rec.next = func(c call, n int) (time.Time, error) {
		if n <= 2 {
			return time.Time{}, boom
		}
		return time.Time{}, nil
	}
	b := setup(t, rec, &Config{RetryDelay: 5 * time.Millisecond})
	b.s.Now("q", "event")
	redistest.WaitFor(t, waitLong, func() bool { return rec.count() == 3 }, "two retries")
	b.idle(t)
	want := []call{{"q", "event"}, {"q", "retry"}, {"q", "retry"}}
	if got := rec.get(); !slices.Equal(got, want) {
		t.Fatalf("sweeps = %v, want %v", got, want)
	}
	if st := b.s.Stats(); st.Errors != 2 || st.Sweeps != 3 {
		t.Fatalf("Stats() = %+v, want 2 errors, 3 sweeps", st)
	}
}

// A sweep the caller cancelled (its own shutdown) is retried but is not
// an error.
func TestCanceledSweep(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	rec.next = func(c call, n int) (time.Time, error) {
		if n == 1 {
			return time.Time{}, fmt.Errorf("sweeping: %w", context.Canceled)
		}
		return time.Time{}, nil
	}
	b := setup(t, rec, &Config{RetryDelay: 5 * time.Millisecond})
	b.s.Now("q", "event")
	redistest.WaitFor(t, waitLong, func() bool { return rec.count() == 2 }, "retry")
	b.idle(t)
	if st := b.s.Stats(); st.Errors != 0 {
		t.Fatalf("Stats() = %+v, want no errors", st)
	}
	if got := rec.get()[1]; got != (call{"q", "retry"}) {
		t.Fatalf("second sweep %v, want a retry", got)
	}
}

// A queue whose own wake time is not due yet by Redis's clock (the sweep
// returns the time it was woken for) is retried with a growing delay, not
// in a busy loop.
func TestSkewBackoff(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	at := time.Now().Add(2 * time.Millisecond)
	rec.next = func(c call, n int) (time.Time, error) {
		if n <= 5 {
			return at, nil // "still due at at", which has passed
		}
		return time.Time{}, nil
	}
	b := setup(t, rec, &Config{RetryDelay: 4 * time.Millisecond})
	b.s.At("q", at)
	redistest.WaitFor(t, waitLong, func() bool { return rec.count() == 6 }, "6 sweeps")
	b.idle(t)
	// Every back-off wake is still for at, so each of the five answers
	// "at" counts as early and the delay grows (1, 2, 4, 4, 4 ms).
	if st := b.s.Stats(); st.Early != 5 || st.Sweeps != 6 {
		t.Fatalf("Stats() = %+v, want 5 early sweeps of 6", st)
	}
	want := []call{{"q", "timer"}, {"q", "timer"}, {"q", "timer"}, {"q", "timer"}, {"q", "timer"}, {"q", "timer"}}
	if got := rec.get(); !slices.Equal(got, want) {
		t.Fatalf("sweeps = %v, want %v", got, want)
	}
}

func TestCleanStop(t *testing.T) {
	t.Parallel()
	var started, finished atomic.Bool
	s := New(func(ctx context.Context, queue, trigger string) (time.Time, error) {
		started.Store(true)
		<-ctx.Done()
		finished.Store(true)
		return time.Time{}, ctx.Err()
	}, nil)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	s.Now("q", "scan")
	s.At("later", time.Now().Add(time.Hour))
	redistest.WaitFor(t, waitLong, started.Load, "sweep started")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Run did not return after cancel")
	}
	if !finished.Load() {
		t.Fatal("Run returned before the running sweep finished")
	}
	if st := s.Stats(); st.Errors != 0 || st.Running != 0 {
		t.Fatalf("Stats() = %+v: a cancelled sweep is not an error", st)
	}
}

// At and Now may be called before Run; nothing is lost.
func TestBeforeRun(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	s := New(rec.sweep, nil)
	s.Now("a", "scan")
	s.At("b", time.Now())
	if got := s.Pending(); got != 2 {
		t.Fatalf("Pending() = %d, want 2", got)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	redistest.WaitFor(t, waitLong, func() bool { return rec.count() == 2 }, "both swept")
	cancel()
	<-done
}

// TestSweepWaits: Sweep returns the error of a sweep that started after
// it was called, waiting behind a running sweep of the same queue rather
// than overlapping it.
func TestSweepWaits(t *testing.T) {
	t.Parallel()
	blk := newBlock()
	boom := errors.New("boom")
	rec := &recorder{}
	rec.next = func(c call, n int) (time.Time, error) {
		switch {
		case c.queue == "bad":
			return time.Time{}, boom
		case n == 1:
			return time.Time{}, blk.wait(context.Background())
		}
		return time.Time{}, nil
	}
	b := setup(t, rec, &Config{RetryDelay: time.Hour})
	if err := b.s.Sweep(t.Context(), "bad", "scan"); !errors.Is(err, boom) {
		t.Errorf("Sweep of a failing queue = %v, want %v", err, boom)
	}

	b.s.Now("q", "event")
	redistest.WaitFor(t, waitLong, func() bool { return blk.in.Load() == 1 }, "first sweep running")
	done := make(chan error, 2)
	go func() { done <- b.s.Sweep(t.Context(), "q", "scan") }()
	go func() { done <- b.s.Sweep(t.Context(), "q", "scan") }()
	redistest.WaitFor(t, waitLong, func() bool {
		b.s.mu.Lock()
		defer b.s.mu.Unlock()
		return len(b.s.entries["q"].againWaiters) == 2
	}, "two Sweep calls waiting behind the running sweep")
	select {
	case err := <-done:
		t.Fatalf("Sweep returned %v while the sweep before it still ran", err)
	default:
	}
	close(blk.release)
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("Sweep = %v", err)
		}
	}
	want := []call{{"bad", "scan"}, {"q", "event"}, {"q", "scan"}} // "bad" waits an hour for its retry
	if got := rec.get(); !slices.Equal(got, want) {
		t.Fatalf("sweeps = %v, want %v", got, want)
	}

	// Without Run nothing sweeps: Sweep ends with its context.
	idle := New(rec.sweep, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	if err := idle.Sweep(ctx, "q", "scan"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Sweep without Run = %v, want the context's error", err)
	}
}

// TestMaxQueues: At and Now for new queues are dropped once MaxQueues
// queues are tracked, Sweep never is, and room comes back as queues are
// swept.
func TestMaxQueues(t *testing.T) {
	t.Parallel()
	rec := &recorder{}
	s := New(rec.sweep, &Config{MaxQueues: 3})
	far := time.Now().Add(time.Hour)
	for i := range 5 {
		s.At(fmt.Sprint("q", i), far)
	}
	s.Now("q9", "event")
	if st := s.Stats(); st.Pending != 3 || st.Dropped != 3 {
		t.Fatalf("stats = %+v, want 3 pending, 3 dropped", st)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	// Sweep of an untracked queue runs even at the bound.
	if err := s.Sweep(ctx, "q4", "scan"); err != nil {
		t.Fatal(err)
	}
	if got := rec.get(); !slices.Contains(got, call{"q4", "scan"}) {
		t.Fatalf("calls = %v, want the scan of q4", got)
	}
	// An existing queue still takes an earlier time.
	s.At("q0", time.Now())
	redistest.WaitFor(t, waitLong, func() bool { return slices.Contains(rec.get(), call{"q0", TriggerTimer}) }, "q0 swept on its earlier time")
	// q0 is forgotten after its sweep (nothing next): room for one more.
	redistest.WaitFor(t, waitLong, func() bool {
		s.Now("q8", "event")
		return slices.Contains(rec.get(), call{"q8", "event"})
	}, "a new queue admitted once q0 left")
}
