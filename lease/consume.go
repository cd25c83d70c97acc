package lease

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Handler processes one leased message. What it returns decides what
// happens to the message (see Consume): nil acks it; an error nacks it
// with backoff; SkipRetry(err) dead-letters it; RetryAfter(d, err) nacks
// it with delay d. Its ctx is cancelled when the lease is lost, when
// ConsumeOpts.Timeout passes, and when Consume stops and
// ConsumeOpts.StopTimeout has passed.
type Handler func(ctx context.Context, l *Lease) error

// Middleware wraps every handler Consume runs: tracing, metrics, logging.
// It sees the handler's error, before Consume acts on it, and may change
// it.
type Middleware func(Handler) Handler

// Defaults for ConsumeOpts.
const (
	WorkersDefault     = 10
	BackoffBaseDefault = time.Second
	BackoffMaxDefault  = 5 * time.Minute
	StopTimeoutDefault = 10 * time.Second
	PrefetchDefault    = 8
	// PrefetchGrowMax is how far the prefetch buffer of a Consume that
	// leaves ConsumeOpts.Prefetch unset may grow while the queue holds
	// more than its takes bring.
	PrefetchGrowMax = 64
)

// ConsumeOpts configure Consume. A nil *ConsumeOpts means all defaults.
type ConsumeOpts struct {
	// Workers is how many handlers run at once. Defaults to 10.
	Workers int
	// Prefetch is how many leases Consume may hold beyond its busy
	// workers, in a buffer: a worker that finishes starts the next
	// message at once, without a round trip, and the loop refills the
	// buffer once half of it is gone, in one script run that also carries
	// the acks waiting, so a busy consumer runs fewer, bigger takes.
	//
	// Left at zero, the buffer adapts to the queue, whatever Workers is.
	// It starts at PrefetchDefault (8) and doubles, up to PrefetchGrowMax
	// (64), after each take for the buffer that filled every slot while
	// more messages were waiting and workers sat idle until it came back,
	// so a consumer whose handlers outrun its round trips catches up with
	// a busy queue in bigger takes. It halves, back toward 8, after each
	// take or wait for messages that found fewer than it asked for, and
	// goes back to 8 when buffered leases wait too long (below), not
	// growing while prefetch is off. A value set is the buffer's fixed
	// size; a negative value turns it off (Consume holds no more leases
	// than it has workers); more than MaxBatch is an error. A process
	// holds at most Workers + the buffer's size in leases (8, or up to 64
	// just after a backlog): with several processes on a queue of a few
	// messages and slow handlers, turn it down or off, so that a busy
	// process does not sit on messages an idle one could run.
	//
	// A buffered lease runs while it waits, and its attempt counts. One
	// that has waited a third of its lease (when its first extension
	// would be due) is released: back to the head of the queue, the
	// attempt not counted, long before it could run out and go to
	// another consumer; Consume then prefetches nothing for a lease
	// length, its handlers being too slow for a buffer to help. A take
	// that finds the queue paused, and Consume's stop, release the buffer
	// the same way, at once. A buffered lease that reaches a worker is
	// extended from then on as usual (at once if a third of it has
	// passed); Timeout counts from the handler's start.
	Prefetch int
	// LeaseFor overrides the lease duration of every take (see
	// TakeOpts.LeaseFor). Zero means the message's own or the Config's.
	LeaseFor time.Duration
	// Timeout bounds each handler: its ctx is cancelled when it passes,
	// and the heartbeat stops extending the lease a third of a lease
	// length after it, so a handler that ignores its ctx loses its lease
	// and the message is delivered again. Zero means no bound.
	Timeout time.Duration
	// StopTimeout is how long running handlers may go on after Consume's
	// ctx is cancelled. Then their contexts are cancelled, the leases of
	// those that have not returned are released (back to the head of the
	// queue, the attempt not counted) and Consume returns. Defaults to 10
	// seconds; a negative value stops at once.
	StopTimeout time.Duration
	// BackoffFunc gives the nack delay after a handler error on the given
	// attempt (1-based). Defaults to DefaultBackoff.
	BackoffFunc func(attempt int) time.Duration
	// Middleware wraps the handler, the first one outermost.
	Middleware []Middleware
	// ErrorFunc, if set, is told of every handler error (a *PanicError for
	// a panic) and of Redis errors the loop rides out (l is nil then),
	// instead of the log. Defaults to logging them to Config.Logger, or
	// slog.Default() if the Config has none, at most about one line a
	// second after a burst of ten.
	ErrorFunc func(l *Lease, err error)

	// idleWait, if set, replaces idleWait (tests).
	idleWait time.Duration
	// prefetchMax, when not 0, is how far the buffer may grow from
	// Prefetch (set when Prefetch is left unset).
	prefetchMax int
	// prefetchSized, if set, is told an adapting buffer's size after each
	// take and each reset, from the run loop (tests).
	prefetchSized func(int)
	// clockSynced, if set, is called after each reading of Redis's clock,
	// from the take goroutine (tests).
	clockSynced func()
	// now, if set, replaces time.Now for the age of buffered leases
	// (tests).
	now func() time.Time
	// bufferCheck, if set, replaces the timer that releases buffered
	// leases as they come of age (tests): the loop always receives from
	// it, and each receive checks the buffer.
	bufferCheck <-chan time.Time
}

// DefaultBackoff doubles from 1 second per attempt up to 5 minutes, with
// ±20% jitter so that failing messages do not return in lockstep.
func DefaultBackoff(attempt int) time.Duration {
	d := BackoffBaseDefault
	for i := 1; i < attempt && d < BackoffMaxDefault; i++ {
		d *= 2
	}
	d = min(d, BackoffMaxDefault)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// Consume runs h on queue's messages with opts.Workers concurrent
// handlers until ctx is cancelled. One goroutine takes messages in batches
// as workers free up, and up to opts.Prefetch more (8 by default) that
// wait in a buffer for the next free worker (see ConsumeOpts.Prefetch);
// each lease is extended in the background while its handler runs, a
// third of the way through each extension as timed from the call that
// set it, on the monotonic clock. A lease's length comes
// from ConsumeOpts.LeaseFor or from the deadline Redis returned, read
// against Redis's own TIME: local clock skew does not shorten leases.
//
// Acks are batched. A worker whose handler returned nil hands its lease
// to that goroutine and is free at once; the acks waiting ride the next
// take, in the same round trip and script call. On a queue Consume keeps
// empty they ride its next wait for messages instead: ahead of BLMOVE in
// the wait's pipeline, which Redis runs before it blocks, so a worker's
// ack and the wait for its next message are one round trip (not with
// Config.Replicas, whose waits are two calls); after a FUNCTION FLUSH or
// a failover, an ack Redis refused there unrun is sent again once that
// wait is over (250ms at most). Acks that no take or wait
// will carry are sent together on their own: at once when takes fail or
// Consume is stopping; after 5ms (or a tenth of the lease) when they have
// waited that long for the take in flight, for the prefetch buffer's
// next refill, or, on an empty queue, for messages; the next ones
// gather while a batch is in flight. An ack that had not reached
// Redis when the process died means the message is delivered again once
// its lease runs out, as after any crash before an ack.
//
// What the handler returns decides the message's fate:
//
//   - nil: acked (see above); an ack that fails, because the lease ran
//     out and the message went elsewhere, is reported like an error.
//   - an error: nacked with ConsumeOpts.BackoffFunc's delay; on its last
//     allowed delivery it goes to the dead set, reason "failed".
//   - an error wrapping ErrSkipRetry (SkipRetry): dead set at once, reason
//     "failed", with the error's text (DeadLetter.Error).
//   - an error wrapping a *RetryAfterError (RetryAfter): nacked with
//     exactly its delay.
//   - a panic, or runtime.Goexit: recovered and logged with its stack,
//     then like an error, except that on its last allowed delivery it goes
//     to the dead set with reason "panic". It never stops the process.
//
// A handler that ends its lease itself (Ack, Nack, DeadLetter, Fail,
// Release) is left alone; if Redis never answered that call (a timeout),
// the lease may still be held: its heartbeat goes on while the handler
// runs, and Consume releases it when the handler returns. If the lease is
// lost while the handler runs (it ran out and the message went to another
// consumer), the handler's ctx is cancelled and the message is left to its
// new holder; a loss found by the handler's own Ack (or Nack, ...) is that
// call's ErrNotHeld, not a report to ErrorFunc.
//
// On cancel, Consume at once stops taking and starts no more handlers (a
// take under way when ctx is cancelled, the wait for messages included,
// has its leases released untouched, and so has the prefetch buffer, even
// when a handler returns in the same instant), lets running handlers
// finish and settle for up to ConsumeOpts.StopTimeout, then cancels their
// contexts, releases every lease whose handler has not returned (to the
// head of the queue, not counted as an attempt), sends every ack still
// waiting, and returns nil: within StopTimeout plus a quarter of a second
// and a round trip or two. A handler that ignores its ctx goes on
// running, but its lease is gone and its heartbeat stopped. Redis errors
// are ridden out with backoff, never returned. Consume keeps one
// connection blocked while the queue is empty, and uses at most two more
// at a time besides the heartbeats' (a take, a batch of acks), and a
// third now and then to release prefetched leases.
func (c *Client) Consume(ctx context.Context, queue string, h Handler, opts *ConsumeOpts) error {
	if err := ValidateQueue(queue); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidArgument)
	}
	var o ConsumeOpts
	if opts != nil {
		o = *opts
	}
	o.Workers = cmp.Or(o.Workers, WorkersDefault)
	if o.Workers < 1 || o.Workers > MaxBatch {
		return fmt.Errorf("%w: ConsumeOpts.Workers %d: must be 1 to %d", ErrInvalidArgument, o.Workers, MaxBatch)
	}
	switch {
	case o.Prefetch == 0:
		o.Prefetch, o.prefetchMax = PrefetchDefault, PrefetchGrowMax
	case o.Prefetch < 0:
		o.Prefetch = 0
	case o.Prefetch > MaxBatch:
		return fmt.Errorf("%w: ConsumeOpts.Prefetch %d: at most %d (negative turns it off)", ErrInvalidArgument, o.Prefetch, MaxBatch)
	}
	if o.LeaseFor != 0 {
		if err := checkDuration("ConsumeOpts.LeaseFor", o.LeaseFor); err != nil {
			return err
		}
	}
	if o.Timeout != 0 {
		if err := checkDuration("ConsumeOpts.Timeout", o.Timeout); err != nil {
			return err
		}
	}
	switch {
	case o.StopTimeout == 0:
		o.StopTimeout = StopTimeoutDefault
	case o.StopTimeout < 0:
		o.StopTimeout = 0
	}
	if o.BackoffFunc == nil {
		o.BackoffFunc = DefaultBackoff
	}
	if o.now == nil {
		o.now = time.Now
	}
	for i := len(o.Middleware) - 1; i >= 0; i-- {
		if o.Middleware[i] == nil {
			return fmt.Errorf("%w: ConsumeOpts.Middleware[%d] is nil", ErrInvalidArgument, i)
		}
		if h = o.Middleware[i](h); h == nil {
			return fmt.Errorf("%w: ConsumeOpts.Middleware[%d] returned a nil handler", ErrInvalidArgument, i)
		}
	}
	r := &consumeRun{c: c, queue: queue, h: h, o: o, jobs: map[*job]bool{}, events: make(chan endEvent, o.Workers), work: make(chan *job, o.Workers)}
	if o.ErrorFunc == nil {
		logger := c.cfg.Logger
		if !c.logSet {
			logger = slog.Default()
		}
		r.log = &limitedLog{logger: logger.With("component", "consume", "queue", queue)}
	}
	return r.run(ctx)
}

// consumeRun is one Consume call.
type consumeRun struct {
	c     *Client
	queue string
	h     Handler
	o     ConsumeOpts
	log   *limitedLog // nil when ErrorFunc is set

	clock atomic.Pointer[redisClock] // the last syncClock; nil before

	// jobs are the jobs running or settling; only the run loop uses it.
	jobs map[*job]bool
	// events has room for one event per worker: a job's last act never
	// waits, not even after Consume returned.
	events chan endEvent
	// work hands jobs to the worker goroutines; closed when Consume
	// returns.
	work chan *job
}

// job states
const (
	running int32 = iota
	settling
	abandoned
)

type job struct {
	l        *Lease
	hctx     context.Context // the handler's
	state    atomic.Int32
	cancel   context.CancelCauseFunc
	cancelT  context.CancelFunc // of ConsumeOpts.Timeout
	beat     *time.Timer        // starts the heartbeat when the first extension is due
	beatStop chan struct{}      // closed by whoever moves state off running
	beatDone chan struct{}
	lost     atomic.Pointer[error]
}

// stopHeartbeat stops j's heartbeat, and waits for an extension under way.
func (j *job) stopHeartbeat() {
	close(j.beatStop)
	if j.beat.Stop() {
		return // it never started
	}
	<-j.beatDone
}

var (
	errStopping       = errors.New("lease: consumer stopping")
	errHandlerTimeout = errors.New("lease: handler timeout (ConsumeOpts.Timeout)")
)

// idleWait bounds one blocking wait for messages: Consume returns at most
// this long after StopTimeout (plus the release).
const idleWait = 250 * time.Millisecond

// redisClock is a reading of Redis's clock, and when it was true by the
// local monotonic clock: Redis's clock later is at plus the time since,
// whatever the local wall clock does meanwhile (a step of NTP, say).
type redisClock struct {
	redis time.Time // Redis's clock at at
	at    time.Time // a local reading with its monotonic part
	wall  time.Time // the local wall clock (Client.now) at at, without its monotonic part
	// stale: the local clocks parted since (see clockDrift): read Redis's
	// clock again at the next take.
	stale atomic.Bool
}

// clockDrift is how far the local wall clock may move from the monotonic
// one after a reading of Redis's clock before Consume reads it again: the
// monotonic clock stands still while the machine is suspended, and the
// wall clock steps (NTP), and the reading cannot tell which happened.
const clockDrift = time.Second

// syncClock reads Redis's clock, once a minute, so that Consume can read a
// deadline Redis returned. Of three TIME calls it keeps the one with the
// shortest round trip (the first may include a dial), taking Redis's
// reading as made halfway through it. It reports whether it could; until
// then Consume takes the local wall clock for Redis's.
func (r *consumeRun) syncClock(ctx context.Context) bool {
	var best *redisClock
	var bestRTT time.Duration
	for range 3 {
		t0 := time.Now()
		tm, err := r.c.rdb.Time(ctx).Result()
		if err != nil {
			return false // the take that follows reports the outage
		}
		t1 := time.Now()
		if rtt := t1.Sub(t0); best == nil || rtt < bestRTT {
			best, bestRTT = &redisClock{redis: tm.Add(rtt / 2), at: t1, wall: r.c.now().Round(0)}, rtt
		}
	}
	r.clock.Store(best)
	if f := r.o.clockSynced; f != nil {
		f()
	}
	return true
}

// clockStale reports whether the local clocks parted since the last
// reading of Redis's clock.
func (r *consumeRun) clockStale() bool {
	c := r.clock.Load()
	return c != nil && c.stale.Load()
}

// redisNow estimates Redis's clock.
func (r *consumeRun) redisNow() time.Time {
	if c := r.clock.Load(); c != nil {
		since := time.Since(c.at)
		// Round(0): the wall clock alone (Sub of two monotonic readings
		// would use the monotonic clock).
		if d := r.c.now().Round(0).Sub(c.wall) - since; d > clockDrift || d < -clockDrift {
			c.stale.Store(true)
		}
		return c.redis.Add(since)
	}
	return r.c.now()
}

func (r *consumeRun) start(base, bg context.Context, l *Lease) {
	hctx, cancel := context.WithCancelCause(base)
	cancelT := context.CancelFunc(func() {})
	var handlerEnd time.Time
	if r.o.Timeout > 0 {
		handlerEnd = time.Now().Add(r.o.Timeout)
		hctx, cancelT = context.WithTimeoutCause(hctx, r.o.Timeout, errHandlerTimeout)
	}
	j := &job{l: l, hctx: hctx, cancel: cancel, cancelT: cancelT, beatStop: make(chan struct{}), beatDone: make(chan struct{})}
	r.jobs[j] = true
	r.startHeartbeat(bg, j, handlerEnd)
	r.work <- j
}

// worker runs jobs until Consume has returned.
func (r *consumeRun) worker(bg context.Context) {
	for j := range r.work {
		r.runJob(bg, j)
	}
}

// runJob runs j's handler; a panic or a runtime.Goexit in it becomes a
// *PanicError, and the job ends in the deferred call either way.
func (r *consumeRun) runJob(bg context.Context, j *job) {
	var err error
	returned := false
	defer func() {
		goexit := false
		if !returned {
			v := recover()
			// Since Go 1.21 panic(nil) recovers a *runtime.PanicNilError:
			// nothing recovered means runtime.Goexit.
			goexit = v == nil
			err = &PanicError{Value: v, Goexit: goexit, Stack: debug.Stack()}
		}
		j.cancelT()
		j.cancel(nil)
		r.finish(bg, j, err)
		if goexit {
			// This goroutine ends once its deferred calls have run:
			// another takes its place.
			go r.worker(bg)
		}
	}()
	err = r.h(j.hctx, j.l)
	returned = true
}

// finish settles j after its handler returned err and tells the run loop.
func (r *consumeRun) finish(bg context.Context, j *job, err error) {
	ack := false
	if j.state.CompareAndSwap(running, settling) {
		j.stopHeartbeat()
		ack = r.settle(bg, j, err)
	}
	// else Consume gave up on this handler and released its lease.
	r.events <- endEvent{j: j, ack: ack}
}

// abandon ends the stop: it cancels every handler still running, stops
// their heartbeats and releases their leases.
func (r *consumeRun) abandon(bg context.Context, cancelAll context.CancelCauseFunc) {
	var gone []*job
	for j := range r.jobs {
		// A handler that returned first settles its lease itself.
		if j.state.CompareAndSwap(running, abandoned) {
			gone = append(gone, j)
			delete(r.jobs, j)
		}
	}
	cancelAll(errStopping)
	var release []*Lease
	for _, j := range gone {
		j.stopHeartbeat()
		// A lease the handler settled, if Redis answered, is over; one
		// whose settle got no answer may still be held.
		if j.lost.Load() == nil && !j.l.ended.Load() {
			release = append(release, j.l)
		}
	}
	r.release(bg, release, "leases on stop")
}

// release releases ls (of unstarted or abandoned handlers), in order, and
// reports the failures other than leases already gone; what says what
// they are.
func (r *consumeRun) release(bg context.Context, ls []*Lease, what string) {
	for len(ls) > 0 {
		batch := ls[:min(len(ls), MaxBatch)]
		ls = ls[len(batch):]
		if err := r.c.ReleaseBatch(bg, batch); err != nil && !onlyGone(err) {
			r.report(nil, fmt.Errorf("release %d %s: %w", len(batch), what, err))
		}
	}
}

// startHeartbeat arranges j's heartbeat: nothing runs (no goroutine, one
// timer) until the first extension is due.
func (r *consumeRun) startHeartbeat(bg context.Context, j *job, handlerEnd time.Time) {
	l := j.l
	d := r.leaseLen(l)
	j.beat = time.AfterFunc(max(d/3-time.Since(l.sent), 0), func() { r.heartbeat(bg, j, handlerEnd, d) })
}

// leaseLen is the length of l's lease, counted from l.sent: Redis set the
// deadline after the take script was sent.
func (r *consumeRun) leaseLen(l *Lease) time.Duration {
	if r.o.LeaseFor != 0 {
		return r.o.LeaseFor
	}
	// The message's own lease or the Config's: what Redis granted (at
	// most one round trip too long).
	d := l.Deadline().Sub(r.redisNow().Add(-time.Since(l.sent)))
	if d < time.Millisecond || d > MaxLeaseFor {
		d = r.c.cfg.LeaseFor
	}
	return d
}

// heartbeat extends j's lease while its handler runs, each time a third
// of the last extension has passed since it was asked for, by the
// monotonic clock: a wall clock that is off changes nothing. The lease's
// length is ConsumeOpts.LeaseFor, or else what the deadline Redis returned
// means by Redis's clock (see syncClock). With a handler
// timeout, it extends no further than a third of a lease past it. It stops
// once the handler ended the lease itself.
func (r *consumeRun) heartbeat(bg context.Context, j *job, handlerEnd time.Time, d time.Duration) {
	defer close(j.beatDone)
	l := j.l
	grace := d / 3
	last := d
	lastAt := l.sent // when the current deadline was asked for
	var failedBefore bool
	for first := true; ; first = false {
		wait := last/3 - time.Since(lastAt)
		if failedBefore {
			// Retry an outage a tenth of a lease apart, not in a spin.
			wait = max(wait, last/10)
		}
		if first {
			wait = 0 // startHeartbeat's timer has waited
		}
		t := time.NewTimer(max(wait, 0))
		select {
		case <-j.beatStop:
			t.Stop()
			return
		case <-t.C:
		}
		if l.ended.Load() {
			// The handler ended the lease itself (Ack, Nack, ...), and
			// Redis answered: nothing to extend, and its work goes on.
			// (A call that got no answer may have left the lease held:
			// it is kept alive for the handler's next try.)
			<-j.beatStop
			return
		}
		ext := d
		if !handlerEnd.IsZero() {
			left := time.Until(handlerEnd)
			if left <= 0 {
				// Past the handler's timeout: let the lease run out.
				<-j.beatStop
				return
			}
			ext = min(d, left+grace)
		}
		ext = max(ext, time.Millisecond)
		sent := time.Now()
		err := l.Extend(bg, ext)
		failedBefore = err != nil
		switch {
		case err == nil:
			last, lastAt = ext, sent
		case errors.Is(err, ErrNotHeld) || errors.Is(err, ErrStale):
			if l.settled.Load() {
				// The handler's own Ack (or Nack, ...) ran first: it
				// marks the lease settled before it is sent. Not lost;
				// if it was, that call reports it to the handler.
				<-j.beatStop
				return
			}
			j.lost.Store(&err)
			j.cancel(fmt.Errorf("lease lost: %w", err))
			<-j.beatStop
			return
		default:
			r.report(l, err)
		}
	}
}

// settle acts on what the handler returned. It reports true when the
// lease is to be acked: the run loop sends it with others.
func (r *consumeRun) settle(ctx context.Context, j *job, err error) (ack bool) {
	l := j.l
	if lost := j.lost.Load(); lost != nil {
		r.report(l, fmt.Errorf("lease lost while handling: %w", *lost))
		return false
	}
	if err != nil {
		r.report(l, err)
	}
	if l.settled.Load() {
		// The handler ended the lease itself. If Redis never answered
		// that call, the lease may still be held: release it, so that
		// the message comes back now rather than when the lease runs
		// out (a lease already gone makes this a no-op).
		if !l.ended.Load() {
			r.release(ctx, []*Lease{l}, "leases whose handler's own settle got no answer")
		}
		return false
	}
	var pe *PanicError
	var ra *RetryAfterError
	var serr error
	switch {
	case err == nil:
		l.settled.Store(true)
		return true
	case errors.As(err, &pe):
		if l.MaxDeliveries != Unlimited && l.Attempt >= l.MaxDeliveries {
			serr = l.fail(ctx, ReasonPanic, pe.Error()+"\n"+string(pe.Stack))
		} else {
			serr = l.Nack(ctx, r.backoff(l))
		}
	case errors.Is(err, ErrSkipRetry):
		serr = l.fail(ctx, ReasonFailed, err.Error())
	case errors.As(err, &ra):
		serr = l.Nack(ctx, min(max(ra.Delay, 0), MaxLeaseFor))
	default:
		serr = l.Nack(ctx, r.backoff(l))
	}
	if serr != nil {
		r.report(l, serr)
	}
	return false
}

// onlyGone reports whether err (from a batch call) only says that leases
// were no longer held: they ran out while their handler ignored its
// timeout, and someone else has the message now.
func onlyGone(err error) bool {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		if !errors.Is(e, ErrNotHeld) && !errors.Is(e, ErrStale) {
			return false
		}
	}
	return true
}

func (r *consumeRun) backoff(l *Lease) time.Duration {
	delay := min(max(r.o.BackoffFunc(l.Attempt), 0), MaxLeaseFor)
	if delay > 0 && delay < time.Millisecond {
		delay = time.Millisecond
	}
	return delay
}

// report hands err to ErrorFunc, or logs it.
func (r *consumeRun) report(l *Lease, err error) {
	if r.o.ErrorFunc != nil {
		r.o.ErrorFunc(l, err)
		return
	}
	attrs := []any{"error", err}
	if l != nil {
		attrs = append(attrs, "message_id", l.ID, "attempt", l.Attempt)
	}
	var pe *PanicError
	switch {
	case errors.As(err, &pe):
		r.log.log(slog.LevelError, "handler panicked", append(attrs, "stack", string(pe.Stack))...)
	case l != nil:
		r.log.log(slog.LevelWarn, "handler failed", attrs...)
	default:
		r.log.log(slog.LevelWarn, "redis error", attrs...)
	}
}

// limitedLog logs at most logBurst lines at once and then about one a
// second, so that a failing queue cannot flood the log; it counts what it
// drops and says so on the next line.
type limitedLog struct {
	logger *slog.Logger

	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
}

const logBurst = 10

func (g *limitedLog) log(level slog.Level, msg string, attrs ...any) {
	g.mu.Lock()
	now := time.Now()
	if g.last.IsZero() {
		g.tokens = logBurst
	} else {
		g.tokens = min(logBurst, g.tokens+now.Sub(g.last).Seconds())
	}
	g.last = now
	if g.tokens < 1 {
		g.suppressed++
		g.mu.Unlock()
		return
	}
	g.tokens--
	if g.suppressed > 0 {
		attrs = append(attrs, "num_suppressed", g.suppressed)
		g.suppressed = 0
	}
	g.mu.Unlock()
	g.logger.Log(context.Background(), level, msg, attrs...)
}

func retryDelay(n int) time.Duration {
	d := 50 * time.Millisecond << min(n, 7)
	return min(d, 5*time.Second)
}

// sleepCtx waits d or until ctx is done; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
