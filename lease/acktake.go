package lease

import (
	"context"
	"fmt"
	"time"
)

// ackTake acks done (leases of queue; may be empty) and then takes up to n
// (0..MaxBatch) new leases of queue, in one script run and one round trip.
// ackErrs[i] is nil, or wraps ErrNotHeld or ErrStale exactly as Ack would
// return for done[i]. A paused queue returns no leases but still acks. It
// never blocks.
func (c *Client) ackTake(ctx context.Context, queue string, done []*Lease, n int, leaseFor time.Duration) (taken []*Lease, ackErrs []error, err error) {
	r, ackErrs, err := c.ackTakeRun(ctx, queue, done, n, leaseFor)
	return r.leases, ackErrs, err
}

// ackTakeRun is ackTake, with all the take's reply: whether the queue is
// paused and when its next delayed message is due, for a wait that
// follows.
func (c *Client) ackTakeRun(ctx context.Context, queue string, done []*Lease, n int, leaseFor time.Duration) (r takeResult, ackErrs []error, err error) {
	return c.ackTakeReport(ctx, queue, done, n, leaseFor, false)
}

// ackTakeReport is ackTakeRun; with report, a run that fills every slot
// also says how many remain, so that the estimate of the queue (takeAsk)
// is a count even when it asks for all n.
func (c *Client) ackTakeReport(ctx context.Context, queue string, done []*Lease, n int, leaseFor time.Duration, report bool) (r takeResult, ackErrs []error, err error) {
	if err := c.startAckTake(ctx, queue, done, n, leaseFor); err != nil || len(done) == 0 && n == 0 {
		return r, nil, err
	}
	// One run: ask for what the queue is likely to hold (takeAsk), and let
	// the script say what it holds, for the next call.
	est := c.estimate(queue)
	ask := n
	if n > 0 {
		ask = takeAsk(est, n)
	}
	r, err = c.runTake(ctx, queue, KeysFor(queue), ask, leaseFor, done, report || ask < n)
	if err != nil {
		return r, nil, err
	}
	if ask > 0 {
		note(est, r, ask)
	}
	return r, ackStatuses(done, r.acks), nil
}

// startAckTake checks the arguments of an ack-and-take, registers queue
// when it takes, and marks the leases to ack settled.
func (c *Client) startAckTake(ctx context.Context, queue string, done []*Lease, n int, leaseFor time.Duration) error {
	if err := ValidateQueue(queue); err != nil {
		return err
	}
	if n < 0 || n > MaxBatch {
		return fmt.Errorf("%w: take of %d messages: must be 0 to %d", ErrInvalidArgument, n, MaxBatch)
	}
	if len(done) > MaxBatch {
		return fmt.Errorf("%w: ack of %d leases: at most %d", ErrInvalidArgument, len(done), MaxBatch)
	}
	if err := sameQueue("ack", queue, done); err != nil {
		return err
	}
	if leaseFor != 0 {
		if err := checkDuration("lease duration", leaseFor); err != nil {
			return err
		}
	}
	if n > 0 {
		if err := c.register(ctx, queue); err != nil {
			return err
		}
	}
	for _, l := range done {
		l.settled.Store(true)
	}
	return nil
}

// ackStatuses turns the ack statuses of a take run into one error (or
// nil) per lease of done.
func ackStatuses(done []*Lease, codes []int64) []error {
	markEnded(done)
	errs := make([]error, len(done))
	for i, code := range codes {
		if code != 1 {
			errs[i] = done[i].statusErr("ack", code)
		}
	}
	return errs
}
