package lease

import (
	"cmp"
	"context"
	"slices"
	"time"
)

// Consume's run loop. One goroutine owns the state below; its calls to
// Redis run in other goroutines (one for takes, one for flushes, one per
// idle wait) that report back on channels, so the loop never waits for
// Redis and at most one call of each kind is in flight:
//
//   - a take: ackTake of the acks waiting (the handlers that returned nil)
//     and of as many new messages as there are free workers plus room in
//     the prefetch buffer (ConsumeOpts.Prefetch; left unset, its size
//     adapts to the queue), in one round trip. With
//     every worker busy, a take refills the buffer once half of it is
//     gone, or carries acks that have waited ackDelay; a worker that
//     finishes takes the next lease from the buffer, without a round
//     trip. While a take is in flight, workers that finish add their acks
//     and slots to the next one: the busier the consumer, the bigger the
//     batches.
//   - a flush: ackTake of acks alone, for acks that cannot ride a take
//     or a wait: at once when takes fail or Consume is stopping; after
//     ackDelay when they have waited that long for the take in flight,
//     the buffer's refill, or messages on an empty queue (the loop waits
//     for them).
//   - an idle wait: after a take that left workers free (the queue ran
//     dry), a blocking take (waitAndTake: BLMOVE and the take script in
//     one round trip) of as many messages as there are free workers
//     (plus the buffer's room), that waits until a message comes, a
//     delayed message is due (as the take before said), or idleWait has
//     passed; or, when the take before found the queue paused, a pause
//     of pausedPoll. Workers that free up after a take that found the
//     queue dry wait at once the same way, with no take first. The acks
//     waiting go ahead of BLMOVE in the wait's pipeline (ackWaitRun),
//     which Redis runs before it blocks: those of workers that freed up
//     so, and, when a wait that left workers free is followed by another
//     at once, those that have waited half of ackDelay (younger ones
//     gather for a later wait or a flush). Acks that come while a wait
//     is in flight go out as flushes after ackDelay, a batch at a time,
//     never held up longer by the wait.
//
// The loop itself waits for Redis only to release leases no handler has
// started (ReleaseBatch): those of a take that returned while stopping,
// and buffered ones that have waited a third of their lease, of a paused
// queue, or all of them on stop.

// ackDelayMax bounds how long an ack waits for a take in flight before it
// is flushed on its own; a tenth of the lease if that is shorter.
var ackDelayMax = 5 * time.Millisecond

// endEvent is what a job tells the loop when it is over: its worker is
// free, and, if ack is set, its lease is to be acked.
type endEvent struct {
	j   *job
	ack bool
}

type loopTake struct {
	done    []*Lease // the acks that rode along
	taken   []*Lease
	asked   int
	ackErrs []error
	err     error
	synced  bool // asked: sync the clock first; answered: synced
	// room is how many of asked were for the prefetch buffer, not for
	// free workers.
	room int
	// remaining is what the take said was left on the ready list after
	// it filled every slot (0 when it did not, -1 when not asked).
	remaining int64
	// What the take said of the queue, for the wait that may follow.
	paused      bool
	nextDelayed time.Time
}

type flushResult struct {
	done    []*Lease
	ackErrs []error
	err     error
}

func (r *consumeRun) run(ctx context.Context) error {
	// Handlers run under a context of their own: Consume's cancel starts
	// the stop sequence, it does not interrupt them.
	base, cancelAll := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelAll(errStopping)
	bg := context.WithoutCancel(ctx)
	defer close(r.work)
	for range r.o.Workers {
		go r.worker(bg)
	}

	leaseLen := cmp.Or(r.o.LeaseFor, r.c.cfg.LeaseFor)
	ackDelay := min(ackDelayMax, leaseLen/10)

	var (
		free      = r.o.Workers
		pending   []*Lease  // acks not sent yet
		oldest    time.Time // when the first of pending came
		taking    bool
		takeDone  = make(chan loopTake, 1)
		idling    bool
		idleDone  = make(chan loopTake, 1)
		flushing  bool
		flushDone = make(chan flushResult, 1)
		retry     int
		pause     <-chan time.Time // set after a failure: no take until it fires
		ackDue    *time.Timer      // fires when pending acks stop waiting for a take
		stopping  bool
		stopBy    <-chan time.Time
		lastSync  time.Time // zero: measure before the first take
		cancelled = ctx.Done()
		// waitNext: the last take found the queue dry, not paused, and
		// the blocking client pipelines: a worker that frees up waits
		// for messages at once, as waitPrev (that take) says, with the
		// acks waiting ahead of the wait; no take looks first.
		waitNext bool
		waitPrev loopTake

		// The prefetch buffer: leases taken ahead of a free worker, in
		// the order taken. Whenever a worker is free, it is empty. It
		// holds up to pf: Prefetch, or, when it adapts (prefetchMax),
		// between Prefetch and prefetchMax (see took).
		buf       []buffered
		pf        = r.o.Prefetch
		dry       bool        // the last take found fewer than it asked for
		slowUntil time.Time   // no prefetch until then (r.o.now's clock)
		ageTimer  *time.Timer // fires when the first buffered lease comes of age
		ageAt     time.Time
		ageC      <-chan time.Time
	)
	stopAckDue := func() {
		if ackDue != nil {
			ackDue.Stop()
			ackDue = nil
		}
	}
	defer stopAckDue()
	stopAge := func() {
		if ageTimer != nil {
			ageTimer.Stop()
			ageTimer = nil
		}
		ageC = nil
	}
	defer stopAge()
	// sized tells the tests the adapting buffer's size after each take
	// and reset.
	sized := func() {
		if r.o.prefetchMax > 0 && r.o.prefetchSized != nil {
			r.o.prefetchSized(pf)
		}
	}
	// syncDue: Redis's clock is to be read again before the next take, a
	// minute after the last reading or once the local clocks parted.
	syncDue := func() bool { return time.Since(lastSync) > time.Minute || r.clockStale() }
	// slow is true while prefetch is off for handlers too slow for it.
	slow := func() bool { return r.o.now().Before(slowUntil) }
	// room is how many more leases the buffer may take.
	room := func() int {
		if pf == 0 || slow() {
			return 0
		}
		return max(pf-len(buf), 0)
	}
	// dropBuffer releases what the buffer holds, if keep is nil, or the
	// leases keep does not keep.
	dropBuffer := func(what string, keep func(buffered) bool) (n int) {
		var gone []*Lease
		buf = slices.DeleteFunc(buf, func(b buffered) bool {
			if keep != nil && keep(b) {
				return false
			}
			gone = append(gone, b.l)
			return true
		})
		r.release(bg, gone, what)
		return len(gone)
	}
	// stopped begins the stop if ctx is done and the loop has not seen it
	// yet: no take, no new handler; buffered leases go back at once;
	// handlers have StopTimeout to finish. The select picks at random
	// among ready cases: a handler's return, or a take's, that comes with
	// or after the cancellation must not start what is buffered or taken,
	// so those cases call it too.
	var stopTimer *time.Timer
	defer func() {
		if stopTimer != nil {
			stopTimer.Stop()
		}
	}()
	stopped := func() {
		if stopping || ctx.Err() == nil {
			return
		}
		stopping, cancelled = true, nil
		pause = nil
		// Buffered leases were never started: they go back at once.
		dropBuffer("prefetched leases on stop", nil)
		stopAge()
		stopTimer = time.NewTimer(r.o.StopTimeout)
		stopBy = stopTimer.C
	}
	// startWait starts an idle wait for messages, after a take (prev) that
	// found the queue dry. With acks, the acks waiting (up to a batch) go
	// ahead of it, in its pipeline, unless the queue was paused (the wait
	// does not touch the lists then) or the blocking client does not
	// pipeline (Config.Replicas); acks left waiting are flushed after
	// ackDelay as ever.
	startWait := func(prev loopTake, acks bool) {
		var done []*Lease
		if acks && !prev.paused && r.c.rdb.pipelineBlock > 0 {
			done = cut(&pending, MaxBatch)
			stopAckDue()
		}
		idling, waitNext = true, false
		go r.idleTo(ctx, bg, idleDone, min(free+room(), MaxBatch), prev, done)
	}
	// took handles what a take or an idle wait brought back: it starts the
	// leases, buffers those no worker is free for, or releases them when
	// Consume is stopping (a take Redis ran never strands a lease), or
	// reports the error and pauses takes for a retry delay. When the
	// queue ran dry, leaving workers free, the loop waits for messages
	// (idle) instead of taking again at once, and so do workers that
	// free up later; after a pause (asked 0) or an error, a take looks
	// at the queue again.
	took := func(res loopTake) {
		waitNext = false
		if stopping {
			// Stopped while taking: these were never started.
			r.release(bg, res.taken, "leases taken while stopping")
			return
		}
		if res.err != nil {
			r.report(nil, res.err)
			retry++
			pause = time.After(retryDelay(retry))
			return
		}
		retry = 0
		// Workers idle when a take that asked for buffer room comes
		// back waited for it: the buffer did not hide the round trip.
		starved := free > 0 && res.room > 0
		k := min(free, len(res.taken))
		for _, l := range res.taken[:k] {
			r.start(base, bg, l)
		}
		free -= k
		if rest := res.taken[k:]; len(rest) > 0 {
			now := r.o.now()
			for _, l := range rest {
				b := buffered{l: l, by: now.Add(r.leaseLen(l)/3 - time.Since(l.sent))}
				buf = append(buf, b)
				if ageTimer != nil && b.by.Before(ageAt) {
					stopAge() // armed again for the earlier one
				}
			}
		}
		if res.paused && len(buf) > 0 {
			// A paused queue delivers nothing more: not even what was
			// taken before.
			dropBuffer("prefetched leases of a paused queue", nil)
		}
		// Dry: the take found fewer than asked, and did not say more
		// were waiting (a take that asked fewer than asked, as the
		// client's estimate of the queue suggested, may have left some).
		dry = len(res.taken) < res.asked && res.remaining <= 0
		if r.o.prefetchMax > 0 && res.asked > 0 {
			// Not while prefetch is off for slow handlers: the buffer
			// starts again from Prefetch when that is over.
			if !slow() {
				pf = adaptPrefetch(pf, r.o.Prefetch, r.o.prefetchMax, dry, starved, res.remaining)
			}
			sized()
		}
		if dry && !res.paused && r.c.rdb.pipelineBlock > 0 {
			waitNext, waitPrev = true, loopTake{nextDelayed: res.nextDelayed}
		}
		if free > 0 && dry && !syncDue() {
			// The acks waiting ride this wait once they have waited
			// half of ackDelay; younger ones gather a little longer (a
			// later wait or a flush carries them), so that a busy
			// consumer, whose waits end every few messages, runs one
			// ack script per batch of acks, not one per wait.
			startWait(res, len(pending) > 0 && time.Since(oldest) >= ackDelay/2)
		}
	}
	// One goroutine makes the takes, another the flushes: each keeps its
	// stack from one call to the next.
	takeReq := make(chan loopTake)
	defer close(takeReq)
	go func() {
		for res := range takeReq {
			if res.synced {
				res.synced = r.syncClock(ctx)
			}
			var t takeResult
			// An adapting buffer needs to know whether a take that
			// filled every slot left more waiting.
			t, res.ackErrs, res.err = r.c.ackTakeReport(bg, r.queue, res.done, res.asked, r.o.LeaseFor, r.o.prefetchMax > 0)
			res.taken, res.paused, res.nextDelayed, res.remaining = t.leases, t.paused, t.nextDelayed, t.remaining
			takeDone <- res
		}
	}()
	flushReq := make(chan []*Lease)
	defer close(flushReq)
	go func() {
		for done := range flushReq {
			_, errs, err := r.c.ackTake(bg, r.queue, done, 0, 0)
			flushDone <- flushResult{done: done, ackErrs: errs, err: err}
		}
	}()
	for {
		stopped() // no take once ctx is done, seen or not
		overdue := len(pending) > 0 && time.Since(oldest) >= ackDelay
		if !stopping && !taking && !idling && pause == nil {
			// A take fills the free workers and the buffer; with every
			// worker busy, it refills the buffer once half of it is
			// gone (unless the last take found the queue dry), so that
			// the run carries that many acks and messages, or it
			// carries acks that have waited long enough.
			n := 0
			switch rm := room(); {
			case free > 0:
				n = free + rm
			case rm > 0 && (rm >= max(pf/2, 1) && !dry || overdue):
				n = rm
			}
			sync := syncDue()
			if n > 0 && free > 0 && waitNext && !sync {
				// The queue was dry: wait for messages at once, the acks
				// ahead of the wait in one round trip.
				startWait(waitPrev, true)
			} else if n > 0 {
				done := cut(&pending, MaxBatch)
				stopAckDue()
				taking = true
				asked := min(n, MaxBatch)
				takeReq <- loopTake{done: done, asked: asked, room: max(asked-free, 0), synced: sync}
			}
		}
		if len(pending) > 0 && !flushing {
			// Acks wait for a take in flight, or for the refill that
			// workers draining the buffer will soon call for.
			soon := taking || idling || !dry && room() > 0 && pause == nil
			if stopping || !soon || overdue {
				done := cut(&pending, MaxBatch)
				stopAckDue()
				flushing = true
				flushReq <- done
			} else if ackDue == nil {
				ackDue = time.NewTimer(ackDelay - time.Since(oldest))
			}
		}
		if ageC == nil {
			if r.o.bufferCheck != nil {
				ageC = r.o.bufferCheck
			} else if len(buf) > 0 {
				ageAt = buf[0].by
				for _, b := range buf[1:] {
					if b.by.Before(ageAt) {
						ageAt = b.by
					}
				}
				ageTimer = time.NewTimer(ageAt.Sub(r.o.now()))
				ageC = ageTimer.C
			}
		}
		if stopping && len(r.jobs) == 0 && !taking && !idling && !flushing && len(pending) == 0 {
			return nil
		}
		var ackDueC <-chan time.Time
		if ackDue != nil {
			ackDueC = ackDue.C
		}
		select {
		case ev := <-r.events:
			stopped()
			if !r.jobs[ev.j] {
				// Abandoned on stop: its lease was released, its slot
				// is no one's now.
				continue
			}
			delete(r.jobs, ev.j)
			if ev.ack {
				if len(pending) == 0 {
					oldest = time.Now()
				}
				pending = append(pending, ev.j.l)
			}
			if len(buf) > 0 {
				r.start(base, bg, buf[0].l)
				buf = slices.Delete(buf, 0, 1)
			} else {
				free++
			}
		case res := <-takeDone:
			stopped()
			taking = false
			if res.synced {
				lastSync = time.Now()
			}
			r.ackResults(res.done, res.ackErrs, res.err)
			took(res)
		case res := <-idleDone:
			stopped()
			idling = false
			r.ackResults(res.done, res.ackErrs, res.err)
			took(res)
		case res := <-flushDone:
			flushing = false
			r.ackResults(res.done, res.ackErrs, res.err)
		case <-pause:
			pause = nil
		case <-ackDueC:
			ackDue = nil
		case <-ageC:
			ageTimer, ageC = nil, nil
			now := r.o.now()
			var first *Lease
			n := dropBuffer("prefetched leases that waited a third of their lease", func(b buffered) bool {
				if now.Before(b.by) {
					return true
				}
				if first == nil {
					first = b.l
				}
				return false
			})
			if n > 0 {
				// The handlers are too slow for a buffer to help:
				// prefetch nothing for a lease length, and start again
				// from the smallest buffer.
				slowUntil = now.Add(r.leaseLen(first))
				pf = r.o.Prefetch
				sized()
			}
		case <-cancelled:
			stopped()
		case <-stopBy:
			stopBy = nil
			r.abandon(bg, cancelAll)
		}
	}
}

// adaptPrefetch is the size of an adapting prefetch buffer of size pf
// (from base to most) after a take. It doubles while takes leave messages
// waiting (remaining, the ready list's length after a take that filled
// every slot) and idle workers wait for takes that asked for buffer room
// (starved): handlers slower than a round trip gain nothing from a bigger
// buffer. It halves while takes (and waits) find fewer than they asked
// for (dry).
func adaptPrefetch(pf, base, most int, dry, starved bool, remaining int64) int {
	switch {
	case dry:
		return max(pf/2, base)
	case remaining > 0 && starved:
		return min(2*pf, most)
	}
	return pf
}

// buffered is a lease taken ahead of a free worker (ConsumeOpts.Prefetch).
type buffered struct {
	l  *Lease
	by time.Time // when it has waited a third of its lease (r.o.now)
}

// cut removes up to n leases from the head of *ls and returns them.
func cut(ls *[]*Lease, n int) []*Lease {
	k := min(len(*ls), n)
	out := (*ls)[:k:k]
	*ls = (*ls)[k:]
	if len(*ls) == 0 {
		*ls = nil
	}
	return out
}

// ackResults reports the acks that failed: ackErrs[i] for done[i], or err
// for all of them when ackErrs is nil.
func (r *consumeRun) ackResults(done []*Lease, ackErrs []error, err error) {
	for i, l := range done {
		e := err
		if ackErrs != nil {
			e = ackErrs[i]
		}
		if e != nil {
			r.report(l, e)
		}
	}
}

// idleTo sends idle's result to out.
func (r *consumeRun) idleTo(ctx, bg context.Context, out chan<- loopTake, n int, prev loopTake, done []*Lease) {
	out <- r.idle(ctx, bg, n, prev, done)
}

// idle waits for messages for n free workers, after a take (or an idle
// wait) that left them free: prev says whether the queue was paused and
// when its next delayed message is due. While the queue is paused it
// waits pausedPoll without touching the lists, and asks nothing. Else it
// is one blocking take (waitAndTake) of up to n messages, waiting up to
// idleWait, until the delayed message is due (+1ms, Redis time is at ms
// resolution; the take promotes it) or what the blocking client allows.
// The take runs under bg: one that Redis ran always comes back, to be
// started or, if Consume is stopping, released.
//
// done, if any, are acks that go ahead of BLMOVE in the wait's pipeline
// (ackWaitRun): Redis runs them before it blocks, so they are never held
// up by the wait; their outcome comes back with the wait's. The loop
// passes none when prev.paused.
func (r *consumeRun) idle(ctx, bg context.Context, n int, prev loopTake, done []*Lease) loopTake {
	if prev.paused {
		sleepCtx(ctx, pausedPoll)
		return loopTake{}
	}
	wait := cmp.Or(r.o.idleWait, idleWait)
	if !prev.nextDelayed.IsZero() {
		wait = min(wait, prev.nextDelayed.Sub(r.redisNow())+time.Millisecond)
	}
	if pb := r.c.rdb.pipelineBlock; pb > 0 {
		wait = min(wait, pb)
	}
	// BLMOVE's timeout is in seconds with ms resolution, and 0 would mean
	// forever.
	wait = max(wait, time.Millisecond)
	res := loopTake{asked: n, done: done}
	if len(done) > 0 {
		var t takeResult
		t, res.ackErrs, res.err = r.c.ackWaitRun(bg, r.queue, done, n, r.o.LeaseFor, wait)
		if res.err == nil {
			res.taken = r.c.takeRest(bg, r.queue, t, n, r.o.LeaseFor)
			res.nextDelayed, res.paused = t.nextDelayed, t.paused
		}
	} else {
		res.taken, res.nextDelayed, res.paused, res.err = r.c.waitAndTake(bg, r.queue, KeysFor(r.queue), n, r.o.LeaseFor, wait)
	}
	// The take ran when BLMOVE returned, anywhere within the wait after it
	// was sent: time the leases from the reply, or a lease's length read
	// from its deadline (startHeartbeat) would include the wait. Later
	// than the run by less than a round trip, so the heartbeat comes a
	// little early, never late.
	now := time.Now()
	for _, l := range res.taken {
		l.sent = now
	}
	return res
}
