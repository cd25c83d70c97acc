package lease

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ackTake acks done (leases of queue; may be empty) and then takes up to n
// (0..MaxBatch) new leases of queue, in one script run and one round trip.
// ackErrs[i] is nil, or wraps ErrNotHeld or ErrStale exactly as Ack would
// return for done[i]. A paused queue returns no leases but still acks. It
// never blocks.
//
// When err is not nil, taken is empty and ackErrs is either nil (nothing
// is known of the acks) or, when the acks are known to have run apart
// from the take, one entry per lease as above (a refused ack: the error
// Ack would return). Bad input (n out of range, leases of another queue
// or from no Client, more than MaxBatch of them) returns an error wrapping
// ErrInvalidArgument (ErrInvalidQueue for a bad queue name) and changes
// nothing, not even the leases' settled marks.
//
// This version sends the ack and take scripts in one pipeline: one round
// trip, two script runs.
func (c *Client) ackTake(ctx context.Context, queue string, done []*Lease, n int, leaseFor time.Duration) (taken []*Lease, ackErrs []error, err error) {
	if err := c.checkAckTake(queue, done, n, leaseFor); err != nil {
		return nil, nil, err
	}
	if n > 0 {
		if err := c.register(ctx, queue); err != nil {
			return nil, nil, err
		}
	}
	k := KeysFor(queue)

	ackKeys := make([]string, 0, 2+len(done))
	ackKeys = append(ackKeys, k.Leases, k.Deadlines)
	ackArgs := make([]any, 0, 2*len(done))
	for _, l := range done {
		ackKeys = append(ackKeys, LeaseKey(queue, l.Token))
		ackArgs = append(ackArgs, l.ID, l.Token)
		l.settled.Store(true)
	}
	ackKeys = append(ackKeys, k.Counts) // ack.lua adds to the totals in its last key
	tokens, ids := c.newTokens(n)
	takeKeys := make([]string, 0, 8+n)
	takeKeys = append(takeKeys, k.Ready, k.Claim, k.Leases, k.Deadlines, k.Delayed, k.Dead, k.DeadMsgs)
	takeArgs := make([]any, 0, 7+2*n)
	takeArgs = append(takeArgs, n, ms(leaseFor), ms(c.cfg.LeaseFor), max(c.cfg.MaxDeliveries, 0), WakeChannel, queue)
	for i := range n {
		takeKeys = append(takeKeys, LeaseKey(queue, tokens[i]))
		takeArgs = append(takeArgs, tokens[i], ids[i])
	}
	takeKeys = append(takeKeys, k.Paused)
	takeArgs = append(takeArgs, c.cfg.MaxPayload)

	// One pipeline on the connection of the queue's master, WAIT last when
	// replicas are asked for: it covers both scripts.
	var node redis.Cmdable = c.rdb.UniversalClient
	if cc, ok := c.rdb.UniversalClient.(*redis.ClusterClient); ok && c.rdb.replicas > 0 {
		if node, err = cc.MasterForKey(ctx, k.Leases); err != nil {
			node = c.rdb.UniversalClient // the pipeline fails alike, and is retried below
		}
	}
	pipe := node.Pipeline()
	var ackCmd, takeCmd, waitCmd *redis.Cmd
	if len(done) > 0 {
		ackCmd = ackScript.EvalSha(ctx, pipe, ackKeys, ackArgs...)
	}
	sent := time.Now()
	if n > 0 {
		takeCmd = takeScript.EvalSha(ctx, pipe, takeKeys, takeArgs...)
	}
	if c.rdb.replicas > 0 {
		waitCmd = pipe.Do(ctx, "wait", c.rdb.replicas, c.rdb.replicaTimeout.Milliseconds())
	}
	_, _ = pipe.Exec(ctx) // errors are on the commands

	// A script Redis did not run (not loaded yet, or refused: a failover,
	// a slot moving) is run again on its own, with the usual retries.
	rerun := func(cmd *redis.Cmd, s *redis.Script, keys []string, args []any) *redis.Cmd {
		e := cmd.Err()
		if e != nil && (redis.HasErrorPrefix(e, "NOSCRIPT") || refused(e, c.rdb.redialable)) {
			if s == takeScript {
				sent = time.Now()
			}
			return s.Run(ctx, c.rdb, keys, args...)
		}
		if waitCmd != nil && e == nil {
			if werr := waitCmd.Err(); werr != nil {
				cmd.SetErr(fmt.Errorf("%w: WAIT %d: %w", ErrNotReplicated, c.rdb.replicas, werr))
			} else if got, _ := waitCmd.Int64(); got < int64(c.rdb.replicas) {
				cmd.SetErr(fmt.Errorf("%w: %d of %d replicas acknowledged within %v", ErrNotReplicated, got, c.rdb.replicas, c.rdb.replicaTimeout))
			}
		}
		return cmd
	}
	if ackCmd != nil {
		ackErrs = ackStatuses(rerun(ackCmd, ackScript, ackKeys, ackArgs), queue, done)
	}
	if takeCmd == nil {
		return nil, ackErrs, nil
	}
	res, err := rerun(takeCmd, takeScript, takeKeys, takeArgs).Slice()
	if err != nil {
		return nil, ackErrs, fmt.Errorf("lease: take from %s: %w", queue, convertErr(err))
	}
	taken, _, bad, err := c.parseTakeReply(queue, res)
	if err != nil {
		return nil, ackErrs, fmt.Errorf("lease: take from %s: %w", queue, err)
	}
	for _, l := range taken {
		l.sent = sent
	}
	if bad > 0 {
		c.cfg.Logger.WarnContext(ctx, "dead-lettered malformed or oversized messages", "queue", queue, "num_malformed", bad)
	}
	return taken, ackErrs, nil
}

// checkAckTake validates ackTake's arguments.
func (c *Client) checkAckTake(queue string, done []*Lease, n int, leaseFor time.Duration) error {
	if err := ValidateQueue(queue); err != nil {
		return err
	}
	if n < 0 || n > MaxBatch {
		return fmt.Errorf("%w: take of %d messages: must be 0 to %d", ErrInvalidArgument, n, MaxBatch)
	}
	if len(done) > MaxBatch {
		return fmt.Errorf("%w: ack of %d leases: at most %d", ErrInvalidArgument, len(done), MaxBatch)
	}
	if leaseFor != 0 {
		if err := checkDuration("lease duration", leaseFor); err != nil {
			return err
		}
	}
	for _, l := range done {
		if err := l.check(); err != nil {
			return err
		}
		if l.Queue != queue {
			return fmt.Errorf("%w: ack of a lease of %s with a take from %s", ErrInvalidArgument, l.Queue, queue)
		}
	}
	return nil
}

// ackStatuses turns the ack script's reply into one error per lease, as
// AckBatch would return them for a batch of one.
func ackStatuses(cmd *redis.Cmd, queue string, done []*Lease) []error {
	errs := make([]error, len(done))
	res, err := cmd.Int64Slice()
	if err == nil && len(res) != len(done) {
		err = fmt.Errorf("%w: %d statuses", ErrMalformed, len(res))
	}
	if err != nil {
		err = fmt.Errorf("lease: ack %d in %s: %w", len(done), queue, convertErr(err))
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for i, code := range res {
		if code != 1 {
			errs[i] = done[i].statusErr("ack", code)
		}
	}
	return errs
}
