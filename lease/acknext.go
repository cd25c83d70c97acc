package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// AckAndTake acks l and leases the next message of l's queue, in one
// script run and one round trip: the loop of a consumer that takes one
// message at a time without Consume costs one round trip per message
// instead of two (Take, then Ack).
//
//	l, err := c.Take(ctx, queue, opts)
//	for l != nil {
//		work(l)
//		l, err = l.AckAndTake(ctx, opts)
//		// look at l before err: see below
//	}
//
// It reports the ack's outcome and the take's together, and never drops a
// lease the take made:
//
//   - next != nil: the take leased next, which is returned whatever err
//     says. err is nil when l was acked, else what Ack would have
//     returned for it: it wraps ErrNotHeld (or ErrStale, for a lease from
//     LeaseOf), and never ErrAckUnconfirmed.
//   - next == nil and errors.Is(err, ErrAckUnconfirmed): the ack is not
//     confirmed and l may still be held; err wraps the cause. Bad input
//     (ErrInvalidArgument, ErrInvalidQueue) and ACL refusals
//     (ErrNoPermission) changed nothing. A network error, a timeout or a
//     cancelled context during the call, or a script error, leave
//     unknown whether the ack and the take ran: a lease the take made
//     then runs out and its message is delivered again, as after Take.
//     ErrNotReplicated: both ran on the master, but too few replicas
//     confirmed them (see Config.Replicas). Ack l again: ErrNotHeld then
//     means the first ack held.
//   - next == nil otherwise: the ack ran (and, with Config.Replicas, its
//     replicas confirmed it), and err says why nothing was taken:
//     ErrNoMessage (nothing was ready, or the queue is paused, within
//     opts.Wait), ctx's error (cancelled or past its deadline during the
//     wait), or the error of a take made while waiting (the ack is done
//     all the same). If the ack failed too, err joins its error: errors.Is
//     finds ErrNotHeld (or ErrStale) in it.
//
// With opts.Wait > 0 and nothing ready, the ack is done at once and only
// then does the call wait like Take (BLMOVE and the take script): an ack
// is never held up by an empty queue, and a wait cut short by ctx leaves
// it done. When this client's last look at the queue found at most one
// message there, the ack goes ahead of BLMOVE and the take in one
// pipeline, which Redis runs before BLMOVE blocks: on a queue its
// consumers keep about empty, a message that comes within the wait costs
// one round trip, ack included. (After a SCRIPT FLUSH or a failover, the ack
// Redis refused in that pipeline is done right after it, once the wait
// is over.) Otherwise the ack and a take go first, and the wait follows
// in a second round trip.
//
// A call that go-redis resends because its reply was lost is idempotent:
// the resent run answers with the lease the first run made, and reports
// the ack ErrNotHeld, exactly as a resent Ack does (the first run acked).
//
// l and the lease taken are of the same queue, so on Redis Cluster the
// call runs on one slot like any other. To ack leases of several queues,
// or of another queue than the one to take from, use AckBatch per queue:
// AckAndTakeBatch refuses a mix.
func (l *Lease) AckAndTake(ctx context.Context, opts *TakeOpts) (next *Lease, err error) {
	if err := l.check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrAckUnconfirmed, err)
	}
	taken, ackErr, err := l.c.ackAndTake(ctx, l.Queue, []*Lease{l}, 1, opts)
	if len(taken) > 0 {
		return taken[0], ackErr
	}
	if err == nil {
		err = ErrNoMessage
	}
	return nil, joinErrs(err, ackErr)
}

// AckAndTakeBatch acks done, leases of queue (none at all is fine), and
// then leases up to n (1 to MaxBatch) messages of queue, waiting up to
// opts.Wait for the first when none is ready: AckBatch then TakeBatch, in
// one script run and one round trip. Like TakeBatch it asks for about
// what the queue held at this client's last take; when that proves short
// and more are ready, a second take fills the batch.
//
// The outcome follows AckAndTake's rules. Leases taken are always
// returned, whatever err says; err then joins one error per lease of
// done that could not be acked, as AckBatch's does. With none taken,
// errors.Is(err, ErrAckUnconfirmed) says that the acks are not
// confirmed (see AckAndTake); otherwise they ran, err joins their
// failures and the wait's error, and a nil err means nothing came within
// opts.Wait (TakeBatch's empty result). A lease of done that is of
// another queue is bad input: nothing is acked nor taken.
func (c *Client) AckAndTakeBatch(ctx context.Context, queue string, done []*Lease, n int, opts *TakeOpts) ([]*Lease, error) {
	if n < 1 || n > MaxBatch {
		return nil, fmt.Errorf("%w: %w: take of %d messages: must be 1 to %d", ErrAckUnconfirmed, ErrInvalidArgument, n, MaxBatch)
	}
	taken, ackErr, err := c.ackAndTake(ctx, queue, done, n, opts)
	if len(taken) > 0 {
		return taken, ackErr
	}
	return nil, joinErrs(err, ackErr)
}

// ackAndTake acks done and takes up to n messages of queue, waiting up to
// opts.Wait once the acks are done. ackErr joins the acks that failed;
// err is the take's, and wraps ErrAckUnconfirmed when the acks are not
// confirmed (ackErr is nil then). taken is every lease taken, even with an
// error.
func (c *Client) ackAndTake(ctx context.Context, queue string, done []*Lease, n int, opts *TakeOpts) (taken []*Lease, ackErr, err error) {
	var o TakeOpts
	if opts != nil {
		o = *opts
	}
	if err := ValidateQueue(queue); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrAckUnconfirmed, err)
	}
	if o.Wait < 0 {
		return nil, nil, fmt.Errorf("%w: %w: TakeOpts.Wait %v: must not be negative", ErrAckUnconfirmed, ErrInvalidArgument, o.Wait)
	}
	start := time.Now()
	var r takeResult
	var ackErrs []error
	est := c.estimate(queue)
	if o.Wait > 0 && len(done) > 0 && c.rdb.pipelineBlock > 0 && est.Load() <= 1 {
		// The queue held at most one message at the last look, and was
		// not paused: ack and wait in one round trip. (A queue paused
		// since, or noted 1 by a take that found it paused, has one
		// message moved onto the claim list, which takes drain first.)
		r, ackErrs, err = c.ackWaitRun(ctx, queue, done, n, o.LeaseFor, c.blockFor(o.Wait, time.Time{}, 0))
	} else {
		// With a wait to come and the queue about empty at the last look,
		// have the take say what it leaves (one LLEN), so that the next
		// call knows whether to wait at once.
		r, ackErrs, err = c.ackTakeReport(ctx, queue, done, n, o.LeaseFor, o.Wait > 0 && est.Load() <= 2)
	}
	if r.paused {
		// The next call looks again before it waits: BLMOVE would move
		// a message of the paused queue onto the claim list.
		est.Store(max(est.Load(), 2))
	}
	if err != nil {
		if ackErrs == nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrAckUnconfirmed, err)
		}
		// The acks ran; the wait that followed failed.
		return nil, errors.Join(ackErrs...), err
	}
	ackErr = errors.Join(ackErrs...)
	taken = c.takeRest(ctx, queue, r, n, o.LeaseFor)
	if len(taken) > 0 || o.Wait == 0 {
		return taken, ackErr, nil
	}
	// Nothing was ready and the acks are done: wait like TakeBatch for
	// what is left of the wait. (After an empty take it goes straight to
	// BLMOVE and the take script, in one round trip.)
	wait := o.Wait - time.Since(start)
	if wait <= 0 {
		return nil, ackErr, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, ackErr, err
	}
	taken, err = c.TakeBatch(ctx, queue, n, &TakeOpts{Wait: wait, LeaseFor: o.LeaseFor})
	if len(taken) == 1 && n == 1 {
		// A wait brought it: the queue is about empty, whatever the take
		// of one (which does not count the rest) noted.
		est.Store(min(est.Load(), 1))
	}
	return taken, ackErr, err
}

// ackWaitRun acks done and waits up to block for a message, then takes up
// to n, in one round trip: the ack (take.lua acking only), BLMOVE ready ->
// claim and the take, in one pipeline on the blocking client
// (blockAndTake). Redis runs the ack before BLMOVE blocks, so the ack is
// never held up by the wait. The ack is take.lua's, not ack.lua's: the
// look that made the estimate ran take.lua on the queue's node, so it is
// there (as a function of the library, or a cached script). An ack Redis
// refused without running it all the same (the library or script gone
// after a FUNCTION FLUSH or a failover, FCALL refused, a Cluster
// redirect) runs again the usual way once the pipeline returns: late by
// the wait, never lost. ackErrs is nil when the acks are not confirmed; with ackErrs
// set, err is the wait's or the take's.
func (c *Client) ackWaitRun(ctx context.Context, queue string, done []*Lease, n int, leaseFor, block time.Duration) (r takeResult, ackErrs []error, err error) {
	if err := c.startAckTake(ctx, queue, done, n, leaseFor); err != nil {
		return r, nil, err
	}
	k := KeysFor(queue)
	ackKeys, ackArgs, _ := c.takeArgs(queue, k, 0, 0, done, false)
	var ack *redis.Cmd
	est := c.estimate(queue)
	ask := takeAsk(est, n)
	sent := time.Now()
	r, err = c.blockAndTake(ctx, queue, k, ask, leaseFor, block, true, func(p redis.Pipeliner) {
		ack = takeScript.queue(ctx, c.rdb, p, ackKeys, ackArgs...)
	})
	res, _, aerr := takeScript.queuedReply(ctx, c.rdb, ack, &sent, ackKeys, ackArgs...)
	a, aerr := c.takeReply(ctx, queue, res, aerr, sent, nil, len(done), false)
	if aerr != nil {
		if len(r.leases) > 0 {
			// Only when both ran again (refused unrun) and the ack's run
			// failed: give the leases back rather than strand them
			// until their deadline behind an unconfirmed ack.
			if err := c.ReleaseBatch(context.WithoutCancel(ctx), r.leases); err != nil {
				c.cfg.Logger.WarnContext(ctx, "could not release leases taken behind an unconfirmed ack", "queue", queue, "error", err)
			}
		}
		return takeResult{}, nil, aerr
	}
	ackErrs = ackStatuses(done, a.acks)
	if err != nil {
		return takeResult{}, ackErrs, err
	}
	note(est, r, ask)
	return r, ackErrs, nil
}

// takeRest is r's leases, and up to n in all when r filled every slot it
// sent and reported more ready: those are taken too, as TakeBatch does.
// Should that take fail, r's leases are returned alone; the error comes
// back on the next call if it persists.
func (c *Client) takeRest(ctx context.Context, queue string, r takeResult, n int, leaseFor time.Duration) []*Lease {
	taken := r.leases
	if len(taken) == 0 || len(taken) >= n || r.remaining <= 0 {
		return taken
	}
	more, _, _, err := c.takeOnce(ctx, queue, KeysFor(queue), min(n-len(taken), int(r.remaining)), leaseFor, 0)
	if err != nil {
		return taken
	}
	// every lease made is handed over (see takeOnce)
	return append(taken, more...)
}

// joinErrs is err, with ackErr joined to it when there is one.
func joinErrs(err, ackErr error) error {
	if ackErr == nil {
		return err
	}
	if err == nil {
		return ackErr
	}
	return errors.Join(err, ackErr)
}
