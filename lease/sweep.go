package lease

import (
	"context"
	"fmt"
	"time"
)

// SweepOpts are options of Sweep. A nil *SweepOpts means all defaults.
type SweepOpts struct {
	// Limit bounds each kind of work one call does (leases requeued,
	// delayed messages promoted, claimed elements returned). Defaults to
	// SweepLimitDefault.
	Limit int
	// Reclaim also moves elements left on the claim list (by a consumer
	// that died between its blocking wait and its take) back to the head
	// of the ready list. Harmless while consumers run (a consumer's take
	// finds the element on the ready list instead); the reaper sets it on
	// every sweep.
	Reclaim bool
}

// SweepResult says what one Sweep call did and what is due next.
type SweepResult struct {
	Requeued     int             // leases that ran out, back on the ready list
	DeadLettered int             // leases that ran out with no deliveries left
	Malformed    int             // lease records that were not ackd's, now dead letters
	Promoted     int             // delayed messages that became ready
	Reclaimed    int             // claim-list elements returned to the ready list
	NextDeadline time.Time       // earliest deadline of a lease still in flight; zero if none
	NextDelayed  time.Time       // earliest due time of a delayed message; zero if none
	More         bool            // a limit was reached: call again
	Counts       Stats           // the queue's counts right after the call, as Stats would read them
	Lags         []time.Duration // per requeued or dead-lettered lease: how late after its deadline
}

// Next is the earliest moment at which the queue has work for a sweeper,
// or the zero time if nothing is in flight or delayed. A lease is due only
// once Redis's clock has passed its deadline millisecond (as Redis itself
// expires keys: now > deadline), so its work begins at NextDeadline + 1 ms;
// a delayed message is due at NextDelayed itself.
func (r SweepResult) Next() time.Time {
	var dl time.Time
	if !r.NextDeadline.IsZero() {
		dl = r.NextDeadline.Add(time.Millisecond)
	}
	switch {
	case dl.IsZero():
		return r.NextDelayed
	case r.NextDelayed.IsZero(), dl.Before(r.NextDelayed):
		return dl
	}
	return r.NextDelayed
}

// sweepHead is the index of the one string in sweep.lua's reply: the
// first bytes of the ready list's head element.
const sweepHead = 14

// sweepTotals is the number of running totals (acked, purged, replayed)
// that end sweep.lua's reply, after the lags.
const sweepTotals = 3

// Sweep requeues every due lease of queue and promotes every due delayed
// message, each bounded by opts.Limit, in one atomic script call. It is
// idempotent: the lease deadlines (Keys.Due) decide, so any number of
// callers racing on one queue (reapers, events, scans) requeue each lease
// once, and an acked or extended lease is left alone. It is what the
// reaper calls. Leases of format 1 (Keys.Leases, left by an older
// version) are requeued too, within the same limit.
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
	reply, err := sweepScript.Run(ctx, c.rdb,
		[]string{k.Ready, k.Held, k.Due, k.Dead, k.DeadMsgs, k.Delayed, k.Claim, k.Paused, k.Counts, k.Leases, k.Deadlines},
		o.Limit, reclaim, headBytes).Slice()
	if err != nil {
		return r, fmt.Errorf("lease: sweep %s: %w", queue, convertErr(err))
	}
	v := make([]int64, 0, len(reply))
	var head string
	for i, x := range reply {
		if i == sweepHead {
			s, ok := x.(string)
			if !ok {
				return r, fmt.Errorf("lease: sweep %s: %w: reply %v", queue, ErrMalformed, reply)
			}
			head = s
			v = append(v, 0)
			continue
		}
		n, ok := x.(int64)
		if !ok {
			return r, fmt.Errorf("lease: sweep %s: %w: reply %v", queue, ErrMalformed, reply)
		}
		v = append(v, n)
	}
	if len(v) < sweepHead+1+sweepTotals {
		return r, fmt.Errorf("lease: sweep %s: %w: reply %v", queue, ErrMalformed, reply)
	}
	totals := v[len(v)-sweepTotals:]
	v = v[:len(v)-sweepTotals]
	r.Requeued, r.DeadLettered, r.Malformed, r.Promoted, r.Reclaimed = int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4])
	if v[5] >= 0 {
		r.NextDeadline = fromMS(v[5])
	}
	if v[6] >= 0 {
		r.NextDelayed = fromMS(v[6])
	}
	r.More = v[7] == 1
	r.Counts = Stats{
		Ready: v[8], InFlight: v[9], Delayed: v[10], Dead: v[11],
		Paused: v[12] >= 0, PausedAt: msTime(v[12]),
		EarliestDeadline: r.NextDeadline, NextDue: r.NextDelayed, Now: fromMS(v[13]),
		Acked: totals[0], Purged: totals[1], Replayed: totals[2],
	}
	if r.Counts.Ready > 0 {
		if t, ok := pushTime(head); ok {
			r.Counts.OldestReady = t
			r.Counts.OldestReadyAge = max(r.Counts.Now.Sub(t), 0)
		}
	}
	if lags := v[sweepHead+1:]; len(lags) > 0 {
		r.Lags = make([]time.Duration, len(lags))
		for i, l := range lags {
			r.Lags[i] = time.Duration(l) * time.Millisecond
		}
	}
	if r.Malformed > 0 {
		c.cfg.Logger.WarnContext(ctx, "dead-lettered malformed lease records", "queue", queue, "num_malformed", r.Malformed)
	}
	return r, nil
}
