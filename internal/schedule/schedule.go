package schedule

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config.
const (
	ConcurrencyDefault = 4
	RetryDelayDefault  = time.Second
	MaxQueuesDefault   = 10000
)

// Triggers the Scheduler itself passes to a SweepFunc.
const (
	TriggerTimer = "timer" // a time given to At came
	TriggerRetry = "retry" // the previous sweep failed, RetryDelay ago
)

// SweepFunc sweeps one queue and returns when the queue next has work (the
// zero time: nothing in flight or delayed). trigger says why it runs:
// "timer", "retry", or whatever was passed to Now. The Scheduler never runs
// two sweeps of one queue at once.
//
// A SweepFunc should loop on lease.SweepResult.More itself and return
// lease.SweepResult.Next. A returned time
// that is not in the future is honoured at once, unless it is the very time
// whose timer started this sweep (the queue's work was not due yet by
// Redis's clock, which runs behind ours): then the Scheduler retries after
// 1 ms, doubling up to RetryDelay, so clock skew cannot make it spin.
type SweepFunc func(ctx context.Context, queue, trigger string) (next time.Time, err error)

// Config configures a Scheduler. A nil *Config means all defaults.
type Config struct {
	// Concurrency bounds how many sweeps (of different queues) run at
	// once. Defaults to 4.
	Concurrency int
	// Logger receives sweep errors (at Warn) and start/stop (at Debug).
	// Defaults to discarding them.
	Logger *slog.Logger
	// RetryDelay is how long after a failed sweep the queue is swept
	// again. It also caps the back-off for clock skew (see SweepFunc).
	// Defaults to 1 second.
	RetryDelay time.Duration
	// MaxQueues bounds the queues At and Now keep track of (a wake time,
	// a place in line), and so the Scheduler's memory, whoever publishes
	// wake messages. At the bound, At and Now for a queue not yet tracked
	// do nothing and are counted in Stats().Dropped: such a queue is swept
	// by the next periodic scan (Sweep is never dropped), so no lease is
	// lost, only late. Defaults to 10,000.
	MaxQueues int
}

// Stats is a snapshot of a Scheduler's counters.
type Stats struct {
	Sweeps  uint64 // sweeps finished, failed ones included
	Errors  uint64 // sweeps that returned an error other than a cancellation
	Early   uint64 // sweeps whose own wake time was not due yet (clock skew)
	Dropped uint64 // At and Now calls dropped because MaxQueues queues were tracked
	Pending int    // as Pending()
	Running int    // sweeps running now
}

// Scheduler runs a SweepFunc for each queue at the queue's next due time,
// or as soon as possible when told to. It is safe for concurrent use.
type Scheduler struct {
	sweep SweepFunc
	cfg   Config
	log   *slog.Logger
	kick  chan struct{} // wakes the dispatcher; capacity 1

	sweeps, errs, early, dropped atomic.Uint64

	mu      sync.Mutex
	entries map[string]*entry // queues with anything pending or running
	timers  timerHeap         // entries with a pending wake time, earliest first
	ready   []*entry          // entries waiting for a free worker, FIFO
	running int
	full    bool // MaxQueues reached: the warning was logged
}

// entry is the state of one queue. All fields are guarded by Scheduler.mu.
type entry struct {
	queue string

	at        time.Time // pending wake time; valid while index >= 0
	atTrigger string    // trigger of that wake: "timer" or "retry"
	atFor     time.Time // the due time that wake is for (at, or earlier when backing off for skew)
	index     int       // position in Scheduler.timers, -1 if no wake time

	queued  bool         // in Scheduler.ready
	trigger string       // trigger of the queued sweep
	fired   time.Time    // due time whose wake queued it, zero for other triggers
	waiters []chan error // Sweep calls waiting for the queued sweep

	running      bool
	again        string       // trigger that arrived while running: one more sweep after it
	againFired   time.Time    // as fired, for again
	againWaiters []chan error // Sweep calls waiting for that one more sweep

	skew int // consecutive sweeps that found their own wake time not due yet
}

// New returns a Scheduler that calls sweep. It does nothing until Run.
func New(sweep SweepFunc, cfg *Config) *Scheduler {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	c.Concurrency = max(cmp.Or(c.Concurrency, ConcurrencyDefault), 1)
	if c.RetryDelay <= 0 {
		c.RetryDelay = RetryDelayDefault
	}
	if c.MaxQueues <= 0 {
		c.MaxQueues = MaxQueuesDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Scheduler{
		sweep:   sweep,
		cfg:     c,
		log:     c.Logger.With("component", "schedule"),
		kick:    make(chan struct{}, 1),
		entries: make(map[string]*entry),
	}
}

// At makes sure queue is swept at t (trigger "timer"). Of several pending
// times it keeps the earliest; a zero t does nothing. It never blocks and
// may be called from any goroutine, before or while Run runs.
func (s *Scheduler) At(queue string, t time.Time) {
	if t.IsZero() {
		return
	}
	s.mu.Lock()
	e := s.tracked(queue)
	first := e != nil && s.atLocked(e, t, TriggerTimer, t)
	s.mu.Unlock()
	if first {
		s.wake()
	}
}

// Now sweeps queue as soon as a worker is free, with the given trigger
// ("event", "scan", ...). Triggers coalesce: while a sweep of queue waits
// for a worker, more triggers add nothing; a trigger that arrives while
// the queue's sweep runs causes exactly one more sweep after it. It never
// blocks.
func (s *Scheduler) Now(queue, trigger string) {
	s.mu.Lock()
	e := s.tracked(queue)
	if e != nil {
		s.fireLocked(e, trigger, time.Time{}, nil)
	}
	s.mu.Unlock()
	if e != nil {
		s.wake()
	}
}

// Sweep asks for a sweep of queue as Now does, then waits until a sweep
// that started after the call has finished, and returns its error. It
// shares the line, the coalescing and the concurrency bound of every other
// trigger, so a caller that sweeps many queues one Sweep at a time (a
// periodic scan) never overlaps a timer's sweep of the same queue and
// takes one worker at most. If ctx ends first it returns ctx's error; the
// sweep still runs.
func (s *Scheduler) Sweep(ctx context.Context, queue, trigger string) error {
	done := make(chan error, 1)
	s.mu.Lock()
	s.fireLocked(s.get(queue), trigger, time.Time{}, done)
	s.mu.Unlock()
	s.wake()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Pending returns how many queues have a sweep pending: a wake time, a
// place in line for a worker, or one more sweep after the running one.
func (s *Scheduler) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pendingLocked()
}

// Stats returns a snapshot of the Scheduler's counters.
func (s *Scheduler) Stats() Stats {
	s.mu.Lock()
	p, r := s.pendingLocked(), s.running
	s.mu.Unlock()
	return Stats{Sweeps: s.sweeps.Load(), Errors: s.errs.Load(), Early: s.early.Load(), Dropped: s.dropped.Load(), Pending: p, Running: r}
}

func (s *Scheduler) pendingLocked() int {
	n := 0
	for _, e := range s.entries {
		if e.index >= 0 || e.queued || e.again != "" {
			n++
		}
	}
	return n
}

// Run dispatches sweeps until ctx is done, then waits for the running
// sweeps (which see ctx cancelled) and returns nil. Call it once.
func (s *Scheduler) Run(ctx context.Context) error {
	s.log.DebugContext(ctx, "scheduler started", "concurrency", s.cfg.Concurrency)
	defer s.log.DebugContext(ctx, "scheduler stopped")
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := time.Now()
		for len(s.timers) > 0 && !s.timers[0].at.After(now) {
			e := heap.Pop(&s.timers).(*entry)
			s.fireLocked(e, e.atTrigger, e.atFor, nil)
		}
		for s.running < s.cfg.Concurrency && len(s.ready) > 0 {
			e := s.ready[0]
			s.ready[0] = nil
			s.ready = s.ready[1:]
			e.queued, e.running = false, true
			s.running++
			trigger, fired, waiters := e.trigger, e.fired, e.waiters
			e.trigger, e.fired, e.waiters = "", time.Time{}, nil
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.run(ctx, e, trigger, fired, waiters)
			}()
		}
		var next time.Time
		if len(s.timers) > 0 {
			next = s.timers[0].at
		}
		s.mu.Unlock()

		// Since Go 1.23, Stop and Reset discard a tick not yet received, so
		// timer.C fires only for next.
		if next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
		case <-timer.C:
		}
	}
}

// run calls the SweepFunc for e, files its outcome and tells waiters.
func (s *Scheduler) run(ctx context.Context, e *entry, trigger string, fired time.Time, waiters []chan error) {
	next, err := s.sweep(ctx, e.queue, trigger)
	s.sweeps.Add(1)
	now := time.Now()
	for _, w := range waiters {
		w <- err // buffered: never blocks
	}

	s.mu.Lock()
	e.running = false
	s.running--
	switch {
	case err != nil:
		e.skew = 0
		if ctx.Err() != nil {
			break // shutting down: nothing to retry
		}
		// A cancelled sweep (the caller is shutting down) is retried like
		// any other, but is neither logged nor counted as an error.
		if !errors.Is(err, context.Canceled) {
			s.errs.Add(1)
			s.log.WarnContext(ctx, "sweep failed", "queue", e.queue, "trigger", trigger, "error", err, "retry_in", s.cfg.RetryDelay)
		}
		s.atLocked(e, now.Add(s.cfg.RetryDelay), TriggerRetry, time.Time{})
	case next.IsZero():
		e.skew = 0
	case !next.After(now) && !fired.IsZero() && next.Equal(fired):
		// Woken for next, yet the queue still says next: by Redis's clock
		// it is not due yet. Back off, still waking for next, so that a
		// skewed clock cannot make a busy loop.
		s.early.Add(1)
		d := min(time.Millisecond<<min(e.skew, 20), s.cfg.RetryDelay)
		e.skew++
		s.atLocked(e, now.Add(d), TriggerTimer, next)
	default:
		e.skew = 0
		s.atLocked(e, next, TriggerTimer, next)
	}
	if e.again != "" {
		trigger, fired, waiters := e.again, e.againFired, e.againWaiters
		e.again, e.againFired, e.againWaiters = "", time.Time{}, nil
		s.fireLocked(e, trigger, fired, nil)
		e.waiters = append(e.waiters, waiters...)
	}
	s.forgetLocked(e)
	s.mu.Unlock()
	s.wake()
}

// get returns queue's entry, creating it.
func (s *Scheduler) get(queue string) *entry {
	e := s.entries[queue]
	if e == nil {
		e = &entry{queue: queue, index: -1}
		s.entries[queue] = e
	}
	return e
}

// tracked returns queue's entry, creating it unless MaxQueues queues are
// tracked already: then it counts the drop and returns nil. The warning is
// logged once per time the bound is reached.
func (s *Scheduler) tracked(queue string) *entry {
	if e := s.entries[queue]; e != nil {
		return e
	}
	if len(s.entries) >= s.cfg.MaxQueues {
		s.dropped.Add(1)
		if !s.full {
			s.full = true
			s.log.Warn("too many queues with pending wake times, ignoring new ones until some are swept; the periodic scan sweeps them",
				"max_queues", s.cfg.MaxQueues)
		}
		return nil
	}
	if s.full && len(s.entries) < s.cfg.MaxQueues*9/10 {
		s.full = false
	}
	return s.get(queue)
}

// forgetLocked drops e from the map when nothing about it is pending.
func (s *Scheduler) forgetLocked(e *entry) {
	if e.index < 0 && !e.queued && !e.running && e.again == "" && e.skew == 0 {
		delete(s.entries, e.queue)
	}
}

// atLocked sets e's wake time to t unless an earlier one is pending, and
// reports whether e is now the earliest of all, so that the dispatcher's
// timer must be re-armed. wakeFor is the due time the wake is for (zero
// for a retry).
func (s *Scheduler) atLocked(e *entry, t time.Time, trigger string, wakeFor time.Time) bool {
	switch {
	case e.index < 0:
		e.at, e.atTrigger, e.atFor = t, trigger, wakeFor
		heap.Push(&s.timers, e)
	case t.Before(e.at):
		e.at, e.atTrigger, e.atFor = t, trigger, wakeFor
		heap.Fix(&s.timers, e.index)
	default:
		return false
	}
	return e.index == 0
}

// fireLocked asks for a sweep of e as soon as possible; done, if not nil,
// receives the error of that sweep.
func (s *Scheduler) fireLocked(e *entry, trigger string, fired time.Time, done chan error) {
	switch {
	case e.running:
		if e.again == "" {
			e.again, e.againFired = trigger, fired
		}
		if done != nil {
			e.againWaiters = append(e.againWaiters, done)
		}
		return
	case e.queued:
		// Already in line; that sweep covers this trigger too.
	default:
		e.queued, e.trigger, e.fired = true, trigger, fired
		s.ready = append(s.ready, e)
	}
	if done != nil {
		e.waiters = append(e.waiters, done)
	}
}

func (s *Scheduler) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// timerHeap is a min-heap of entries by wake time.
type timerHeap []*entry

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *timerHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *timerHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	e.index = -1
	*h = old[:n-1]
	return e
}
