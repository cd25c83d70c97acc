package lease

import (
	"context"
	"fmt"
	"time"
)

// Dead-letter reasons.
const (
	ReasonExpired   = "expired"   // its last lease ran out
	ReasonFailed    = "failed"    // its last delivery was nacked
	ReasonMalformed = "malformed" // not something ackd wrote, or a second copy of an id in flight
	ReasonKilled    = "killed"    // a consumer called DeadLetter
	ReasonOversized = "oversized" // over the taking client's Config.MaxPayload
)

// DeadLetter is a message in a queue's dead set.
type DeadLetter struct {
	ID       string
	Reason   string
	At       time.Time // when it was dead-lettered, by Redis's clock
	Attempts int       // deliveries it had
	Expiries int       // leases of it that ran out
	Failures int       // nacks of it
	Payload  []byte
	// Raw holds the bytes found in Redis when Reason is "malformed" and
	// they could not be parsed as a message; Payload is nil then.
	Raw []byte
}

// DeadLetters lists up to count dead letters of queue, oldest first,
// starting at offset.
func (c *Client) DeadLetters(ctx context.Context, queue string, offset, count int) ([]DeadLetter, error) {
	if err := ValidateQueue(queue); err != nil {
		return nil, err
	}
	if offset < 0 || count < 1 || count > MaxBatch {
		return nil, fmt.Errorf("%w: dead letters offset %d count %d: need offset >= 0, count 1 to %d", ErrInvalidArgument, offset, count, MaxBatch)
	}
	k := KeysFor(queue)
	ids, err := c.rdb.ZRange(ctx, k.Dead, int64(offset), int64(offset+count-1)).Result()
	if err != nil {
		return nil, fmt.Errorf("lease: dead letters of %s: %w", queue, convertErr(err))
	}
	if len(ids) == 0 {
		return nil, nil
	}
	recs, err := c.rdb.HMGet(ctx, k.DeadMsgs, ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("lease: dead letters of %s: %w", queue, convertErr(err))
	}
	out := make([]DeadLetter, 0, len(ids))
	for i, id := range ids {
		s, ok := recs[i].(string)
		if !ok {
			continue // removed between the two reads
		}
		out = append(out, decodeDead(id, []byte(s)))
	}
	return out, nil
}

// decodeDead never fails: what cannot be parsed is reported as Raw.
func decodeDead(id string, rec []byte) DeadLetter {
	d := DeadLetter{ID: id, Reason: ReasonMalformed, Raw: rec}
	r, err := parseDeadRecord(rec)
	if err != nil {
		return d
	}
	d.Reason, d.At, d.Raw = r.Reason, fromMS(r.AtMS), r.Body
	body := r.Body
	if r.Reason == ReasonOversized && !isEnvelope(body) {
		// a raw payload, kept as it was found
		d.Payload, d.Raw = body, nil
		return d
	}
	if !isEnvelope(body) {
		if _, inner, ok := splitLeaseRecord(body); ok && isEnvelope(inner) {
			body = inner
		}
	}
	if e, err := parseEnvelope(body); err == nil {
		d.Attempts, d.Expiries, d.Failures, d.Payload, d.Raw = e.Attempts, e.Expiries, e.Failures, e.Payload, nil
	}
	return d
}

// Replay puts dead letters back at the tail of queue's ready list with
// their delivery count reset, keeping their ids. With no ids it replays
// every dead letter, in bounded batches. It returns how many it replayed;
// ids that were not in the dead set are reported in an error wrapping
// ErrNotHeld, after the others were replayed.
func (c *Client) Replay(ctx context.Context, queue string, ids ...string) (int, error) {
	return c.deadOp(ctx, queue, "replay", ids, func(k Keys, args []any) (int, []string, error) {
		return deadOpReply(replayScript.Run(ctx, c.rdb, []string{k.Ready, k.Dead, k.DeadMsgs}, args...).Slice())
	})
}

// Purge deletes dead letters of queue for good: the given ids, or with
// none, all of them. It returns how many it deleted; ids that were not in
// the dead set are reported in an error wrapping ErrNotHeld, after the
// others were deleted.
func (c *Client) Purge(ctx context.Context, queue string, ids ...string) (int, error) {
	return c.deadOp(ctx, queue, "purge", ids, func(k Keys, args []any) (int, []string, error) {
		return deadOpReply(purgeScript.Run(ctx, c.rdb, []string{k.Dead, k.DeadMsgs}, args...).Slice())
	})
}

// deadOpReply decodes {count, then each id not in the dead set}.
func deadOpReply(v []any, err error) (int, []string, error) {
	if err != nil {
		return 0, nil, err
	}
	n, ok := v[0].(int64)
	if len(v) == 0 || !ok {
		return 0, nil, fmt.Errorf("%w: reply %v", ErrMalformed, v)
	}
	var missing []string
	for _, m := range v[1:] {
		s, _ := m.(string)
		missing = append(missing, s)
	}
	return int(n), missing, nil
}

func (c *Client) deadOp(ctx context.Context, queue, op string, ids []string, run func(Keys, []any) (int, []string, error)) (int, error) {
	if err := ValidateQueue(queue); err != nil {
		return 0, err
	}
	for _, id := range ids {
		if id == "" || len(id) > 128 {
			return 0, fmt.Errorf("%w: %s: dead letter id %q", ErrInvalidArgument, op, id)
		}
	}
	k := KeysFor(queue)
	total := 0
	var missing []string
	if len(ids) > 0 {
		for len(ids) > 0 {
			batch := ids[:min(len(ids), MaxBatch)]
			ids = ids[len(batch):]
			args := []any{len(batch)}
			for _, id := range batch {
				args = append(args, id)
			}
			n, miss, err := run(k, args)
			total += n
			missing = append(missing, miss...)
			if err != nil {
				return total, fmt.Errorf("lease: %s dead letters of %s: %w", op, queue, convertErr(err))
			}
		}
	} else {
		for {
			n, _, err := run(k, []any{MaxBatch})
			total += n
			if err != nil {
				return total, fmt.Errorf("lease: %s dead letters of %s: %w", op, queue, convertErr(err))
			}
			if n < MaxBatch {
				break
			}
			if err := ctx.Err(); err != nil {
				return total, err
			}
		}
	}
	if len(missing) > 0 {
		return total, fmt.Errorf("lease: %s dead letters of %s: %w: %d ids not in the dead set: %v", op, queue, ErrNotHeld, len(missing), missing)
	}
	return total, nil
}

// Stats counts one queue's messages by state.
type Stats struct {
	Ready    int64 // waiting on the ready list (and the claim list)
	InFlight int64 // leased
	Delayed  int64 // waiting for their delay or nack backoff
	Dead     int64 // in the dead set
}

// Stats reads queue's counts in one round trip.
func (c *Client) Stats(ctx context.Context, queue string) (Stats, error) {
	var s Stats
	if err := ValidateQueue(queue); err != nil {
		return s, err
	}
	k := KeysFor(queue)
	pipe := c.rdb.Pipeline()
	ready := pipe.LLen(ctx, k.Ready)
	claim := pipe.LLen(ctx, k.Claim)
	inflight := pipe.ZCard(ctx, k.Deadlines)
	delayed := pipe.ZCard(ctx, k.Delayed)
	dead := pipe.ZCard(ctx, k.Dead)
	if _, err := pipe.Exec(ctx); err != nil {
		return s, fmt.Errorf("lease: stats of %s: %w", queue, convertErr(err))
	}
	s.Ready = ready.Val() + claim.Val()
	s.InFlight, s.Delayed, s.Dead = inflight.Val(), delayed.Val(), dead.Val()
	return s, nil
}
