package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// logLines is a slog handler that keeps every record as text.
type logLines struct {
	mu    sync.Mutex
	lines []string
	attrs []slog.Attr
}

func (h *logLines) Enabled(context.Context, slog.Level) bool { return true }

func (h *logLines) Handle(_ context.Context, r slog.Record) error {
	var b bytes.Buffer
	th := slog.NewTextHandler(&b, nil).WithAttrs(h.attrs)
	if err := th.Handle(context.Background(), r); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lines = append(h.lines, b.String())
	return nil
}

func (h *logLines) WithAttrs(as []slog.Attr) slog.Handler {
	h.mu.Lock()
	defer h.mu.Unlock()
	return &sharedLines{h, append(h.attrs[:len(h.attrs):len(h.attrs)], as...)}
}

func (h *logLines) WithGroup(string) slog.Handler { return h }

// matching returns the lines that contain every one of subs.
func (h *logLines) matching(subs ...string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
next:
	for _, l := range h.lines {
		for _, s := range subs {
			if !strings.Contains(l, s) {
				continue next
			}
		}
		out = append(out, l)
	}
	return out
}

// sharedLines writes to its parent's lines with attributes of its own.
type sharedLines struct {
	p     *logLines
	attrs []slog.Attr
}

func (s *sharedLines) Enabled(context.Context, slog.Level) bool { return true }
func (s *sharedLines) Handle(ctx context.Context, r slog.Record) error {
	var b bytes.Buffer
	if err := slog.NewTextHandler(&b, nil).WithAttrs(s.attrs).Handle(ctx, r); err != nil {
		return err
	}
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	s.p.lines = append(s.p.lines, b.String())
	return nil
}
func (s *sharedLines) WithAttrs(as []slog.Attr) slog.Handler {
	return &sharedLines{s.p, append(s.attrs[:len(s.attrs):len(s.attrs)], as...)}
}
func (s *sharedLines) WithGroup(string) slog.Handler { return s }

// TestConsumeOutcomes: what a handler returns decides the message's fate,
// through sentinels and helpers that survive wrapping; a handler that
// settles its lease itself is left alone, with no warning.
func TestConsumeOutcomes(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "outcomes"
	const retryIn = 3 * time.Second

	var errs errorLog
	handled := make(chan string, 10)
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		defer func() { handled <- string(l.Payload) }()
		switch string(l.Payload) {
		case "skip":
			return SkipRetry(errors.New("bad json"))
		case "skip-wrapped":
			return fmt.Errorf("order 7: %w", ErrSkipRetry)
		case "retry":
			return fmt.Errorf("upstream: %w", RetryAfter(retryIn, errors.New("429")))
		case "self-nack":
			if err := l.Nack(ctx, time.Hour); err != nil {
				t.Error(err)
			}
			return nil
		case "self-dead":
			if err := l.DeadLetter(ctx); err != nil {
				t.Error(err)
			}
			return errors.New("gave up") // reported, but Consume does not settle
		case "self-ack":
			return l.Ack(ctx)
		}
		return nil
	}, &ConsumeOpts{ErrorFunc: errs.add, BackoffFunc: func(int) time.Duration { return time.Hour }})

	ids := map[string]string{}
	t0 := b.redisNow(t)
	for _, p := range []string{"skip", "skip-wrapped", "retry", "self-nack", "self-dead", "self-ack"} {
		ids[p] = b.push(t, q, p, nil)
	}
	for range ids {
		<-handled
	}
	redistest.WaitFor(t, 10*time.Second, func() bool {
		s, err := b.c.Stats(ctx, q)
		return err == nil && s.InFlight == 0 && s.Dead == 3
	}, "every message settled")
	t1 := b.redisNow(t)
	cs.stop(t)

	st := checkInvariants(t, b.rdb, q)
	for _, p := range []string{"skip", "skip-wrapped"} {
		if d := st.Dead[ids[p]]; d.Reason != ReasonFailed || d.Attempts != 1 {
			t.Errorf("%s: dead letter %+v, want reason failed after one attempt", p, d)
		}
	}
	if d := st.Dead[ids["self-dead"]]; d.Reason != ReasonKilled {
		t.Errorf("self-dead: %+v", d)
	}
	dls, err := b.c.DeadLetters(ctx, q, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	texts := map[string]string{}
	for _, d := range dls {
		texts[d.ID] = d.Error
	}
	if texts[ids["skip"]] != "bad json" || texts[ids["skip-wrapped"]] != "order 7: lease: skip retry" {
		t.Errorf("dead letter errors: %q", texts)
	}
	due, ok := st.Delayed[ids["retry"]]
	if !ok || due < t0+retryIn.Milliseconds() || due > t1+retryIn.Milliseconds() {
		t.Errorf("retry: due at %d, want %v after the nack (between %d and %d)", due, retryIn, t0+retryIn.Milliseconds(), t1+retryIn.Milliseconds())
	}
	if _, ok := st.Delayed[ids["self-nack"]]; !ok {
		t.Errorf("self-nack: not delayed: %+v", st)
	}
	// Reported: the three handler errors; nothing about the leases the
	// handlers ended themselves.
	var got []string
	for _, e := range errs.list() {
		got = append(got, e.Error())
	}
	if len(got) != 4 || strings.Contains(strings.Join(got, ";"), "not held") {
		t.Errorf("errors reported: %q", got)
	}
}

// TestConsumeGoexit: a handler that calls runtime.Goexit (t.FailNow in a
// test handler) is handled like a panic: its lease is settled and no
// heartbeat outlives it.
func TestConsumeGoexit(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: 2})
	const q = "goexit"

	var errs errorLog
	var calls atomic.Int32
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		calls.Add(1)
		runtime.Goexit()
		return nil
	}, &ConsumeOpts{LeaseFor: 60 * time.Millisecond, ErrorFunc: errs.add, BackoffFunc: func(int) time.Duration { return 0 }})
	id := b.push(t, q, "x", nil)
	redistest.WaitFor(t, 10*time.Second, func() bool {
		s, err := b.c.Stats(t.Context(), q)
		return err == nil && s.Dead == 1
	}, "dead letter")
	cs.stop(t)

	st := checkInvariants(t, b.rdb, q)
	if d := st.Dead[id]; d.Reason != ReasonPanic || d.Attempts != 2 || calls.Load() != 2 {
		t.Errorf("dead letter %+v after %d calls, want reason panic after 2", d, calls.Load())
	}
	e := errs.list()
	var pe *PanicError
	if len(e) != 2 || !errors.As(e[0], &pe) || !pe.Goexit || !strings.Contains(string(pe.Stack), "runtime.Goexit") {
		t.Errorf("errors: %v", e)
	}
	if len(st.InFlight) != 0 {
		t.Errorf("in flight after Goexit: %v", st.InFlight)
	}
}

// TestConsumePanicStorm: every handler panics, on many workers at once.
// The process survives, every message goes through its attempts and
// ends dead with reason "panic" and the panic's text and stack, and the
// default log (slog.Default() here, no logger configured) is rate-limited.
// Not parallel: it replaces slog.Default().
func TestConsumePanicStorm(t *testing.T) {
	lines := &logLines{}
	prev := slog.Default()
	slog.SetDefault(slog.New(lines))
	t.Cleanup(func() { slog.SetDefault(prev) })

	b := setup(t, &Config{MaxDeliveries: 2})
	const q = "panicstorm"
	const n = 100
	start := time.Now()
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		var m map[string]int
		m[string(l.Payload)]++ // a nil map write: a runtime panic
		return nil
	}, &ConsumeOpts{Workers: 16, BackoffFunc: func(int) time.Duration { return 0 }})
	for i := range n {
		b.push(t, q, fmt.Sprint("m", i), nil)
	}
	redistest.WaitFor(t, 30*time.Second, func() bool {
		s, err := b.c.Stats(t.Context(), q)
		return err == nil && s.Dead == n
	}, "all dead")
	elapsed := time.Since(start)
	cs.stop(t)

	st := checkInvariants(t, b.rdb, q)
	for id, d := range st.Dead {
		if d.Reason != ReasonPanic || d.Attempts != 2 {
			t.Errorf("%s: %+v", id, d)
		}
	}
	dls, err := b.c.DeadLetters(t.Context(), q, 0, 5)
	if err != nil || len(dls) == 0 || !strings.Contains(dls[0].Error, "assignment to entry in nil map") || !strings.Contains(dls[0].Error, "goroutine") {
		t.Errorf("dead letters %+v, %v: want the panic and its stack", dls, err)
	}
	logged := lines.matching("handler panicked", "queue="+q)
	limit := logBurst + int(elapsed/time.Second) + 1
	if len(logged) == 0 || len(logged) > limit {
		t.Errorf("%d panic lines logged for %d panics in %v, want 1 to %d", len(logged), 2*n, elapsed, limit)
	}
	if len(logged) > 0 && !strings.Contains(logged[0], "stack=") || !strings.Contains(logged[0], "consume_outcome_test.go") {
		t.Errorf("panic line without the handler's stack: %s", logged[0])
	}
}

// TestConsumeErrorsLoggedByDefault: with no logger and no ErrorFunc,
// handler errors reach slog.Default(). Not parallel: it replaces
// slog.Default().
func TestConsumeErrorsLoggedByDefault(t *testing.T) {
	lines := &logLines{}
	prev := slog.Default()
	slog.SetDefault(slog.New(lines))
	t.Cleanup(func() { slog.SetDefault(prev) })

	b := setup(t, nil)
	const q = "defaultlog"
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		return errors.New("smtp refused")
	}, &ConsumeOpts{BackoffFunc: func(int) time.Duration { return time.Hour }})
	id := b.push(t, q, "x", nil)
	redistest.WaitFor(t, 10*time.Second, func() bool {
		return len(lines.matching("handler failed", "smtp refused", "message_id="+id)) == 1
	}, "error logged")
	cs.stop(t)
}

// TestConsumeTimeout: Timeout cancels the handler's ctx; the handler's
// error nacks with backoff. A handler that ignores it loses its lease a
// third of a lease after the timeout, and the message is delivered again
// (and acked) while it still runs; stopping then does not disturb the new
// delivery.
func TestConsumeTimeout(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "timeout"
	// Leases long enough that a heartbeat a few hundred ms late on a
	// loaded machine still lands in time: the lease must end only because
	// the handler outlived Timeout.
	const timeout = 1200 * time.Millisecond
	const leaseFor = 900 * time.Millisecond

	var errs errorLog
	type call struct {
		attempt int
		ctxErr  error
		took    time.Duration
	}
	calls := make(chan call, 10)
	stuck := make(chan struct{})
	defer close(stuck)
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		start := time.Now()
		switch {
		case string(l.Payload) == "honest":
			<-ctx.Done()
		case l.Attempt == 1: // "stuck", first delivery: ignores ctx
			select {
			case <-stuck:
			case <-time.After(time.Minute):
			}
		}
		calls <- call{l.Attempt, ctx.Err(), time.Since(start)}
		return ctx.Err()
	}, &ConsumeOpts{Timeout: timeout, LeaseFor: leaseFor, StopTimeout: 50 * time.Millisecond, ErrorFunc: errs.add, BackoffFunc: func(int) time.Duration { return time.Hour }})

	sw := startSweeper(t, b, q)
	honest := b.push(t, q, "honest", nil)
	c := <-calls
	if !errors.Is(c.ctxErr, context.DeadlineExceeded) || c.took < timeout*9/10 {
		t.Errorf("honest handler: ctx %v after %v, want DeadlineExceeded after %v", c.ctxErr, c.took, timeout)
	}
	waitStats(t, b, q, Stats{Delayed: 1}, "honest message nacked")

	b.push(t, q, "stuck", nil)
	// The second delivery comes while the first handler still runs.
	c = <-calls
	if c.attempt != 2 {
		t.Fatalf("first call to return is attempt %d, want the redelivery", c.attempt)
	}
	waitStats(t, b, q, Stats{Delayed: 1}, "redelivered stuck message acked")
	cs.stop(t)
	sw.stop()
	st := checkInvariants(t, b.rdb, q)
	if len(st.Delayed) != 1 || st.env(t, honest).Failures != 1 || len(st.InFlight)+len(st.Ready) != 0 {
		t.Errorf("state %+v", st)
	}
	if e := errs.list(); len(e) != 1 || !errors.Is(e[0], context.DeadlineExceeded) {
		t.Errorf("errors %v, want the honest handler's deadline", e)
	}
}

// waitStats waits until queue's counts are want.
func waitStats(t *testing.T, b *testBundle, queue string, want Stats, what string) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, func() bool {
		s, err := b.c.Stats(t.Context(), queue)
		return err == nil && counts(s) == want
	}, "%s: stats %+v", what, want)
}

// TestConsumeClockSkew: the heartbeat keeps a lease alive whatever the
// local clock says, because it measures against Redis's deadline and
// clock. The lease length is the message's own, so Consume must learn it
// from Redis. The local wall clock is off by an hour from the start, or
// steps by an hour after Consume read Redis's clock (as NTP may step it).
func TestConsumeClockSkew(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		skew, step time.Duration
	}{{time.Hour, 0}, {-time.Hour, 0}, {0, time.Hour}, {0, -time.Hour}} {
		t.Run(fmt.Sprintf("skew %v step %v", tc.skew, tc.step), func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			var off atomic.Int64
			off.Store(int64(tc.skew))
			b.c.now = func() time.Time { return time.Now().Add(time.Duration(off.Load())) }
			const q = "skew"
			// A third of this lease is the slack each heartbeat has on
			// a loaded machine.
			const leaseFor = 900 * time.Millisecond

			var errs errorLog
			var moves, syncs atomic.Int32
			done := make(chan error, 1)
			cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
				start := time.Now()
				last := l.Deadline()
				tick := time.NewTicker(time.Millisecond)
				defer tick.Stop()
				for moves.Load() < 4 && ctx.Err() == nil {
					if d := l.Deadline(); !d.Equal(last) {
						moves.Add(1)
						last = d
						// Each extension is by the lease Redis granted,
						// not by what a skewed clock makes of it (an hour
						// off). Plus up to a round trip of the take, which
						// Consume cannot tell apart from the lease: 60 ms
						// and more under the race detector on a loaded
						// machine, so a quarter of the lease is allowed.
						if ahead := d.UnixMilli() - b.redisNow(t); ahead > (leaseFor + leaseFor/4).Milliseconds() {
							t.Errorf("extended to %d ms ahead, want about the lease, %v", ahead, leaseFor)
						}
					}
					<-tick.C
				}
				// Four beats, about a third of a lease apart: not a flood.
				if took := time.Since(start); took < leaseFor/2 {
					t.Errorf("4 heartbeats in %v: a flood, not one per third of a lease", took)
				}
				done <- ctx.Err()
				return ctx.Err()
			}, &ConsumeOpts{ErrorFunc: errs.add, clockSynced: func() { syncs.Add(1) }})
			if tc.step != 0 {
				// Consume reads Redis's clock before its first take;
				// then the local clock steps.
				redistest.WaitFor(t, 10*time.Second, func() bool { return syncs.Load() >= 1 }, "Consume to read Redis's clock")
				off.Add(int64(tc.step))
			}

			sw := startSweeper(t, b, q)
			b.push(t, q, "x", &PushOpts{LeaseFor: leaseFor})
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("handler ctx: %v (lease lost)", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("handler did not finish")
			}
			requeued := sw.stop()
			b.waitIdle(t, q)
			if tc.step != 0 {
				// The wall clock left the monotonic one: Consume reads
				// Redis's clock again at its next take.
				redistest.WaitFor(t, 10*time.Second, func() bool { return syncs.Load() >= 2 }, "Consume to read Redis's clock again")
			}
			cs.stop(t)
			if requeued != 0 {
				t.Errorf("lease ran out %d times with the local clock off by %v", requeued, tc.skew+tc.step)
			}
			if e := errs.list(); len(e) != 0 {
				t.Errorf("errors: %v", e)
			}
		})
	}
}

// TestConsumeMiddleware: middleware wraps every handler, the first one
// outermost, and sees (and may change) the handler's error.
func TestConsumeMiddleware(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "middleware"

	var mu sync.Mutex
	var trace []string
	mw := func(name string) Middleware {
		return func(next Handler) Handler {
			return func(ctx context.Context, l *Lease) error {
				mu.Lock()
				trace = append(trace, name+">")
				mu.Unlock()
				err := next(ctx, l)
				mu.Lock()
				trace = append(trace, "<"+name)
				mu.Unlock()
				if name == "outer" && errors.Is(err, errFlaky) {
					return nil // the middleware decides the flaky error is fine
				}
				return err
			}
		}
	}
	var errs errorLog
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		mu.Lock()
		trace = append(trace, "handler")
		mu.Unlock()
		return errFlaky
	}, &ConsumeOpts{Middleware: []Middleware{mw("outer"), mw("inner")}, ErrorFunc: errs.add})
	b.push(t, q, "x", nil)
	b.waitIdle(t, q)
	cs.stop(t)
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(trace, " "); got != "outer> inner> handler <inner <outer" {
		t.Errorf("trace %q", got)
	}
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
	if err := b.c.Consume(t.Context(), q, func(context.Context, *Lease) error { return nil }, &ConsumeOpts{Middleware: []Middleware{nil}}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("nil middleware: %v", err)
	}
}

var errFlaky = errors.New("flaky")
