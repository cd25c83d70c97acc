package lease

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Dead-letter reasons.
const (
	ReasonExpired   = "expired"   // its last lease ran out
	ReasonFailed    = "failed"    // its last delivery was nacked, or a consumer called Fail
	ReasonMalformed = "malformed" // not something ackd wrote
	ReasonKilled    = "killed"    // a consumer called DeadLetter
	ReasonPanic     = "panic"     // its handler panicked on its last allowed delivery
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
	// Error is the text of the handler's error (reason "failed" after
	// Fail or SkipRetry) or panic (reason "panic"), if one was kept.
	Error string
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
	pipe := c.rdb.Pipeline()
	recsCmd := pipe.HMGet(ctx, k.DeadMsgs, ids...)
	errsCmd := pipe.HMGet(ctx, k.DeadErrs, ids...)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("lease: dead letters of %s: %w", queue, convertErr(err))
	}
	recs, texts := recsCmd.Val(), errsCmd.Val()
	out := make([]DeadLetter, 0, len(ids))
	for i, id := range ids {
		s, ok := recs[i].(string)
		if !ok {
			continue // removed between the two reads
		}
		d := decodeDead(id, []byte(s))
		// An error text belongs to this dead letter only if it was written
		// at the same millisecond: one left over from an earlier dead
		// letter of the same id (replayed or purged since) is not shown.
		if t, ok := texts[i].(string); ok {
			if at, text, ok := strings.Cut(t, "|"); ok && at == strconv.FormatInt(d.At.UnixMilli(), 10) {
				d.Error = text
			}
		}
		out = append(out, d)
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
// every dead letter, in bounded batches (see ReplayAll). It returns how many it replayed;
// ids that were not in the dead set are reported in an error wrapping
// ErrNotHeld, after the others were replayed.
func (c *Client) Replay(ctx context.Context, queue string, ids ...string) (int, error) {
	return c.deadOp(ctx, queue, "replay", ids)
}

// Purge deletes dead letters of queue for good: the given ids, or with
// none, all of them. It returns how many it deleted; ids that were not in
// the dead set are reported in an error wrapping ErrNotHeld, after the
// others were deleted.
func (c *Client) Purge(ctx context.Context, queue string, ids ...string) (int, error) {
	return c.deadOp(ctx, queue, "purge", ids)
}

// deadBatch runs replay.lua or purge.lua once; args are its ARGV. It
// returns how many it handled and the ids it did not find.
func (c *Client) deadBatch(ctx context.Context, op string, k Keys, args []any) (int, []string, error) {
	if op == "purge" {
		n, missing, err := deadOpReply(purgeScript.Run(ctx, c.rdb, []string{k.Dead, k.DeadMsgs, k.Counts}, args...).Slice())
		if err == nil && len(args) > 1 {
			// Their error texts too. Best effort: a text left behind is
			// never shown for a later dead letter of the same id (its
			// time would have to match).
			batch := make([]string, 0, len(args)-1)
			for _, a := range args[1:] {
				if id, ok := a.(string); ok {
					batch = append(batch, id)
				}
			}
			_ = c.rdb.HDel(ctx, k.DeadErrs, batch...).Err()
		}
		return n, missing, err
	}
	return deadOpReply(replayScript.Run(ctx, c.rdb, []string{k.Ready, k.Dead, k.DeadMsgs, k.Counts}, args...).Slice())
}

// deadOpReply decodes {count, then each id not in the dead set}.
func deadOpReply(v []any, err error) (int, []string, error) {
	if err != nil {
		return 0, nil, err
	}
	if len(v) == 0 {
		return 0, nil, fmt.Errorf("%w: reply %v", ErrMalformed, v)
	}
	n, ok := v[0].(int64)
	if !ok {
		return 0, nil, fmt.Errorf("%w: reply %v", ErrMalformed, v)
	}
	var missing []string
	for _, m := range v[1:] {
		s, _ := m.(string)
		missing = append(missing, s)
	}
	return int(n), missing, nil
}

func (c *Client) deadOp(ctx context.Context, queue, op string, ids []string) (int, error) {
	if err := ValidateQueue(queue); err != nil {
		return 0, err
	}
	for _, id := range ids {
		if err := ValidateDeadLetterID(id); err != nil {
			return 0, fmt.Errorf("lease: %s: %w", op, err)
		}
	}
	if len(ids) == 0 {
		return c.deadAll(ctx, queue, op, nil)
	}
	k := KeysFor(queue)
	total := 0
	var missing []string
	// Like ReplayAll: a batch under way finishes even if ctx is
	// cancelled, so that the count returned is exact.
	bctx := context.WithoutCancel(ctx)
	for len(ids) > 0 {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		batch := ids[:min(len(ids), MaxBatch)]
		ids = ids[len(batch):]
		args := []any{len(batch)}
		for _, id := range batch {
			args = append(args, id)
		}
		n, miss, err := c.deadBatch(bctx, op, k, args)
		total += n
		missing = append(missing, miss...)
		if err != nil {
			return total, fmt.Errorf("lease: %s dead letters of %s: %w", op, queue, convertErr(err))
		}
	}
	if len(missing) > 0 {
		return total, fmt.Errorf("lease: %s dead letters of %s: %w: %d ids not in the dead set: %v", op, queue, ErrNotHeld, len(missing), missing)
	}
	return total, nil
}
