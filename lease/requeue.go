package lease

import (
	"context"
	"fmt"
	"time"
)

// RequeueResult says what Requeue did.
type RequeueResult int

const (
	// NotInFlight: no lease of that id is in flight (acked, already
	// requeued, or never taken). Nothing changed.
	NotInFlight RequeueResult = iota
	// Requeued: the lease had run out; the message is at the head of the
	// ready list again.
	Requeued
	// DeadLettered: the lease had run out and the message had used its
	// deliveries; it is in the dead set with reason "expired".
	DeadLettered
	// NotDue: the lease has not run out (it may have been extended).
	// Nothing changed.
	NotDue
)

func (r RequeueResult) String() string {
	switch r {
	case Requeued:
		return "requeued"
	case DeadLettered:
		return "dead-lettered"
	case NotDue:
		return "not due"
	}
	return "not in flight"
}

// Requeue ends the lease of message id in queue if, and only if, its
// deadline has passed by Redis's clock. It is idempotent: any number of
// callers racing on one lease (daemons, events, scans) requeue it once. lag
// is how long after the deadline it ran (for NotDue, minus the time left).
func (c *Client) Requeue(ctx context.Context, queue, id string) (res RequeueResult, lag time.Duration, err error) {
	if err := ValidateQueue(queue); err != nil {
		return NotInFlight, 0, err
	}
	if !validID(id) {
		return NotInFlight, 0, fmt.Errorf("%w: message id %q", ErrInvalidArgument, id)
	}
	k := KeysFor(queue)
	v, err := requeueScript.Run(ctx, c.rdb, []string{k.Ready, k.Leases, k.Deadlines, k.Dead, k.DeadMsgs}, id).Int64Slice()
	if err != nil {
		return NotInFlight, 0, fmt.Errorf("lease: requeue %s/%s: %w", queue, id, convertErr(err))
	}
	if len(v) != 2 {
		return NotInFlight, 0, fmt.Errorf("lease: requeue %s/%s: %w: reply %v", queue, id, ErrMalformed, v)
	}
	lag = time.Duration(v[1]) * time.Millisecond
	switch v[0] {
	case 1:
		return Requeued, lag, nil
	case 2:
		return DeadLettered, lag, nil
	case 3:
		return DeadLettered, lag, fmt.Errorf("lease: requeue %s/%s: lease record moved to the dead set: %w", queue, id, ErrMalformed)
	case -1:
		return NotDue, -lag, nil
	}
	return NotInFlight, 0, nil
}

// SweepOpts are options of Sweep. A nil *SweepOpts means all defaults.
type SweepOpts struct {
	// Limit bounds each kind of work one call does (leases requeued,
	// delayed messages promoted, claimed elements returned). Defaults to
	// SweepLimitDefault.
	Limit int
	// Reclaim also moves elements left on the claim list (by a consumer
	// that died between its blocking wait and its take) back to the head
	// of the ready list. Harmless while consumers run; the periodic scan
	// sets it.
	Reclaim bool
}

// SweepResult says what one Sweep call did and what is due next.
type SweepResult struct {
	Requeued     int // leases that ran out, back on the ready list
	DeadLettered int // leases that ran out with no deliveries left
	Malformed    int // lease records that were not ackd's, now dead letters
	Promoted     int // delayed messages that became ready
	Reclaimed    int // claim-list elements returned to the ready list
	NextDeadline time.Time
	NextDelayed  time.Time
	More         bool            // a limit was reached: call again
	Lags         []time.Duration // per requeued or dead-lettered lease: how late after its deadline
}

// Next is the earliest moment at which the queue has work for a sweeper,
// or the zero time if nothing is in flight or delayed.
func (r SweepResult) Next() time.Time {
	switch {
	case r.NextDeadline.IsZero():
		return r.NextDelayed
	case r.NextDelayed.IsZero(), r.NextDeadline.Before(r.NextDelayed):
		return r.NextDeadline
	}
	return r.NextDelayed
}

// Sweep requeues every due lease of queue and promotes every due delayed
// message, each bounded by opts.Limit, in one atomic script call. It is
// idempotent like Requeue and is what ackd's timers and scans call.
func (c *Client) Sweep(ctx context.Context, queue string, opts *SweepOpts) (SweepResult, error) {
	var r SweepResult
	if err := ValidateQueue(queue); err != nil {
		return r, err
	}
	var o SweepOpts
	if opts != nil {
		o = *opts
	}
	if o.Limit == 0 {
		o.Limit = SweepLimitDefault
	}
	if o.Limit < 1 || o.Limit > 10*SweepLimitDefault {
		return r, fmt.Errorf("%w: SweepOpts.Limit %d: must be 1 to %d", ErrInvalidArgument, o.Limit, 10*SweepLimitDefault)
	}
	reclaim := 0
	if o.Reclaim {
		reclaim = 1
	}
	k := KeysFor(queue)
	v, err := sweepScript.Run(ctx, c.rdb,
		[]string{k.Ready, k.Leases, k.Deadlines, k.Dead, k.DeadMsgs, k.Delayed, k.Claim},
		o.Limit, reclaim).Int64Slice()
	if err != nil {
		return r, fmt.Errorf("lease: sweep %s: %w", queue, convertErr(err))
	}
	if len(v) < 8 {
		return r, fmt.Errorf("lease: sweep %s: %w: reply %v", queue, ErrMalformed, v)
	}
	r.Requeued, r.DeadLettered, r.Malformed, r.Promoted, r.Reclaimed = int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4])
	if v[5] >= 0 {
		r.NextDeadline = fromMS(v[5])
	}
	if v[6] >= 0 {
		r.NextDelayed = fromMS(v[6])
	}
	r.More = v[7] == 1
	if len(v) > 8 {
		r.Lags = make([]time.Duration, len(v)-8)
		for i, l := range v[8:] {
			r.Lags[i] = time.Duration(l) * time.Millisecond
		}
	}
	if r.Malformed > 0 {
		c.cfg.Logger.WarnContext(ctx, "dead-lettered malformed lease records", "queue", queue, "num_malformed", r.Malformed)
	}
	return r, nil
}
