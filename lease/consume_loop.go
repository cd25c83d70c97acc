package lease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Consume's run loop. One goroutine owns the state below; its calls to
// Redis run in other goroutines (one for takes, one for flushes, one per
// idle wait) that report back on channels, so the loop never waits for
// Redis and at most one call of each kind is in flight:
//
//   - a take: ackTake of the acks waiting (the handlers that returned nil)
//     and of as many new messages as there are free workers, in one round
//     trip. While it is in flight, workers that finish add their acks and
//     slots to the next one: the busier the consumer, the bigger the
//     batches.
//   - a flush: ackTake of acks alone, for acks that cannot ride a take
//     soon: the queue is empty (the loop waits for messages), takes fail,
//     Consume is stopping, or the take in flight has already held them up
//     for ackDelay.
//   - an idle wait: after a take that left workers free (the queue ran
//     dry), a blocking BLMOVE until a message comes, or until a delayed
//     message is due, or a pause of pausedPoll while the queue is paused.

// ackDelayMax bounds how long an ack waits for a take in flight before it
// is flushed on its own; a tenth of the lease if that is shorter.
var ackDelayMax = 5 * time.Millisecond

// endEvent is what a job tells the loop when it is over: its worker is
// free, and, if ack is set, its lease is to be acked.
type endEvent struct {
	j   *job
	ack bool
}

type takeResult struct {
	done    []*Lease // the acks that rode along
	taken   []*Lease
	asked   int
	ackErrs []error
	err     error
	synced  bool // asked: sync the clock first; answered: synced
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

	leaseLen := cmpOr(r.o.LeaseFor, r.c.cfg.LeaseFor)
	ackDelay := min(ackDelayMax, leaseLen/10)

	var (
		free      = r.o.Workers
		pending   []*Lease  // acks not sent yet
		oldest    time.Time // when the first of pending came
		taking    bool
		takeDone  = make(chan takeResult, 1)
		idling    bool
		idleDone  = make(chan error, 1)
		flushing  bool
		flushDone = make(chan flushResult, 1)
		retry     int
		pause     <-chan time.Time // set after a failure: no take until it fires
		ackDue    *time.Timer      // fires when pending acks stop waiting for a take
		stopping  bool
		stopBy    <-chan time.Time
		lastSync  time.Time // zero: measure before the first take
		cancelled = ctx.Done()
	)
	stopAckDue := func() {
		if ackDue != nil {
			ackDue.Stop()
			ackDue = nil
		}
	}
	defer stopAckDue()
	// One goroutine makes the takes, another the flushes: each keeps its
	// stack from one call to the next.
	takeReq := make(chan takeResult)
	defer close(takeReq)
	go func() {
		for res := range takeReq {
			if res.synced {
				res.synced = r.syncClock(ctx)
			}
			res.taken, res.ackErrs, res.err = r.c.ackTake(bg, r.queue, res.done, res.asked, r.o.LeaseFor)
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
		if !stopping && free > 0 && !taking && !idling && pause == nil {
			done := cut(&pending, MaxBatch)
			stopAckDue()
			n := free
			sync := time.Since(lastSync) > time.Minute
			taking = true
			takeReq <- takeResult{done: done, asked: n, synced: sync}
		}
		if len(pending) > 0 && !flushing {
			if stopping || !taking || time.Since(oldest) >= ackDelay {
				done := cut(&pending, MaxBatch)
				stopAckDue()
				flushing = true
				flushReq <- done
			} else if ackDue == nil {
				ackDue = time.NewTimer(ackDelay - time.Since(oldest))
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
			if !r.jobs[ev.j] {
				// Abandoned on stop: its lease was released, its slot
				// is no one's now.
				continue
			}
			delete(r.jobs, ev.j)
			free++
			if ev.ack {
				if len(pending) == 0 {
					oldest = time.Now()
				}
				pending = append(pending, ev.j.l)
			}
		case res := <-takeDone:
			taking = false
			if res.synced {
				lastSync = time.Now()
			}
			r.ackResults(res.done, res.ackErrs, res.err)
			if stopping {
				// Stopped while taking: these were never started.
				if len(res.taken) > 0 {
					if err := r.c.ReleaseBatch(bg, res.taken); err != nil {
						r.report(nil, fmt.Errorf("release leases taken while stopping: %w", err))
					}
				}
				continue
			}
			if res.err != nil {
				r.report(nil, res.err)
				retry++
				pause = time.After(retryDelay(retry))
				continue
			}
			retry = 0
			for _, l := range res.taken {
				r.start(base, bg, l)
			}
			free -= len(res.taken)
			if len(res.taken) < res.asked {
				// The queue ran dry: wait for more instead of asking
				// again at once.
				idling = true
				go func() { idleDone <- r.idle(ctx, bg) }()
			}
		case err := <-idleDone:
			idling = false
			if err != nil && !stopping {
				r.report(nil, err)
				retry++
				pause = time.After(retryDelay(retry))
			}
		case res := <-flushDone:
			flushing = false
			r.ackResults(res.done, res.ackErrs, res.err)
		case <-pause:
			pause = nil
		case <-ackDueC:
			ackDue = nil
		case <-cancelled:
			stopping, cancelled = true, nil
			pause = nil
			t := time.NewTimer(r.o.StopTimeout)
			defer t.Stop()
			stopBy = t.C
		case <-stopBy:
			stopBy = nil
			r.abandon(bg, cancelAll)
		}
	}
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

func cmpOr(a, b time.Duration) time.Duration {
	if a != 0 {
		return a
	}
	return b
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

// idle waits for the queue to have a message for the next take: until a
// producer pushes (BLMOVE parks the element on the claim list, which the
// next take drains first, so nothing is lost if this consumer dies right
// then), a delayed message is due, or idleWait has passed; while the queue
// is paused it waits pausedPoll without touching the lists.
func (r *consumeRun) idle(ctx, bg context.Context) error {
	k := KeysFor(r.queue)
	var paused *redis.IntCmd
	var next *redis.ZSliceCmd
	_, err := r.c.rdb.Pipelined(bg, func(p redis.Pipeliner) error {
		paused = p.Exists(bg, k.Paused)
		next = p.ZRangeWithScores(bg, k.Delayed, 0, 0)
		return nil
	})
	if err != nil {
		return fmt.Errorf("lease: take from %s: wait: %w", r.queue, convertErr(err))
	}
	if paused.Val() > 0 {
		sleepCtx(ctx, pausedPoll)
		return nil
	}
	wait := cmpOr(r.o.idleWait, idleWait)
	if z := next.Val(); len(z) > 0 {
		// Look again when it is due (+1ms, Redis time is at ms
		// resolution); the take promotes it.
		due := fromMS(int64(z[0].Score))
		wait = min(wait, due.Sub(r.redisNow())+time.Millisecond)
	}
	// BLMOVE's timeout is in seconds with ms resolution, and 0 would mean
	// forever.
	wait = max(wait, time.Millisecond)
	err = r.c.rdb.block(bg, "blmove", k.Ready, k.Claim, "LEFT", "RIGHT", strconv.FormatFloat(wait.Seconds(), 'f', 3, 64)).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("lease: take from %s: wait: %w", r.queue, convertErr(err))
	}
	return nil
}
