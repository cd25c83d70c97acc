package lease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// TakeOpts are per-take options. A nil *TakeOpts means all defaults.
type TakeOpts struct {
	// Wait is how long Take blocks for a message when the queue is empty.
	// Zero means do not block. A delayed message that becomes due during
	// the wait is taken (times are Redis's; if this machine's clock runs
	// ahead, the wait checks back at most every 100 ms until Redis finds
	// it due, unless a push or ackd's promotion of it wakes it first).
	Wait time.Duration
	// LeaseFor overrides both the message's own lease duration and
	// Config.LeaseFor for the leases of this take. Zero means no override.
	LeaseFor time.Duration
}

// blockChunk bounds one blocking BLMOVE, so that a cancelled context is
// noticed within it and the client's read timeout (3s by default) is never
// reached.
const blockChunk = time.Second

// pausedPoll is how often a blocking take looks again at a paused queue.
// It never blocks on the ready list while paused: BLMOVE would move
// messages onto the claim list, and return at once on a non-empty list.
var pausedPoll = 250 * time.Millisecond

// Take leases one message of queue. When the queue is empty it waits up to
// opts.Wait for one, and returns ErrNoMessage if none came.
func (c *Client) Take(ctx context.Context, queue string, opts *TakeOpts) (*Lease, error) {
	ls, err := c.TakeBatch(ctx, queue, 1, opts)
	if err != nil {
		return nil, err
	}
	if len(ls) == 0 {
		return nil, ErrNoMessage
	}
	return ls[0], nil
}

// TakeBatch leases up to n messages of queue. When the queue is empty it
// waits up to opts.Wait for the first message, then returns what is there;
// an empty result with a nil error means none came. Usually one script
// call: each call sends a token, an id and a key per message it may lease,
// so a call asks for about twice what the queue held at its last take, and
// TakeBatch calls again when that filled up and more are ready. Every
// lease a call makes is returned: two leases of one id are two copies of
// a message a producer pushed twice, or, with a lease shorter than the
// time between two of those calls, a lease that ran out and was taken
// again, whose Ack then reports ErrNotHeld.
func (c *Client) TakeBatch(ctx context.Context, queue string, n int, opts *TakeOpts) ([]*Lease, error) {
	if err := ValidateQueue(queue); err != nil {
		return nil, err
	}
	if n < 1 || n > MaxBatch {
		return nil, fmt.Errorf("%w: take of %d messages: must be 1 to %d", ErrInvalidArgument, n, MaxBatch)
	}
	var o TakeOpts
	if opts != nil {
		o = *opts
	}
	if o.Wait < 0 {
		return nil, fmt.Errorf("%w: TakeOpts.Wait %v: must not be negative", ErrInvalidArgument, o.Wait)
	}
	if o.LeaseFor != 0 {
		if err := checkDuration("TakeOpts.LeaseFor", o.LeaseFor); err != nil {
			return nil, err
		}
	}
	if err := c.register(ctx, queue); err != nil {
		return nil, err
	}
	k := KeysFor(queue)
	var deadline time.Time
	if o.Wait > 0 {
		deadline = time.Now().Add(o.Wait)
	}
	// block is how long the next take first waits in BLMOVE (see
	// waitAndTake); 0 for a plain take. After an empty take of the queue,
	// a pipelining blocking take goes straight to the wait.
	var block time.Duration
	if o.Wait > 0 && c.rdb.pipelineBlock > 0 && c.estimate(queue).Load() == 0 {
		block = c.blockFor(o.Wait, time.Time{}, 0)
	}
	// A wait for a delayed message ends when it is due by this machine's
	// clock. If that is ahead of Redis's, the take still finds it not due
	// (the same nextDelayed again): early, the shortest wait for it, then
	// doubles, so that the skew does not make a loop of 1 ms waits.
	var early time.Duration
	var waitedFor time.Time // the nextDelayed the last wait was bounded by
	for {
		var ls []*Lease
		var nextDelayed time.Time
		var paused bool
		var err error
		if block > 0 {
			ls, nextDelayed, paused, err = c.waitAndTake(ctx, queue, k, n, o.LeaseFor, block)
		} else {
			ls, nextDelayed, paused, err = c.takeOnce(ctx, queue, k, n, o.LeaseFor, 0)
		}
		if err != nil || len(ls) > 0 || o.Wait == 0 {
			return ls, err
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		block = 0
		wait := time.Until(deadline)
		if wait <= 0 {
			return nil, nil
		}
		if paused {
			// Keep waiting without touching the lists until the queue is
			// resumed or the wait is over.
			if !sleepCtx(ctx, min(wait, pausedPoll)) {
				return nil, ctx.Err()
			}
			continue
		}
		switch {
		case nextDelayed.IsZero() || c.now().Before(nextDelayed):
			early = 0 // the clocks agree so far
		case nextDelayed.Equal(waitedFor):
			// Waited for it, due here, not due by Redis: ahead.
			early = min(max(2*early, 2*time.Millisecond), maxEarly)
		}
		// (Another message due here and not by Redis keeps early: with
		// delayed messages coming one after the other, each would
		// otherwise start from 1 ms again.)
		waitedFor = nextDelayed
		block = c.blockFor(wait, nextDelayed, early)
	}
}

// maxEarly bounds the shortest wait for a delayed message that this
// machine's clock says is due and Redis's does not (see Take's loop): the
// daemon's promotion of the message, a push, wakes the wait before that.
const maxEarly = 100 * time.Millisecond

// waitAndTake waits up to block (bounded by blockFor) for a message on
// queue's ready list, then leases up to n messages (see takeOnce). With a
// pipelining blocking client it is one round trip (blockAndTake);
// otherwise (Config.Replicas) BLMOVE, then a take. Either way BLMOVE parks
// the element on the claim list, which the next take (ours or anyone's)
// drains first, so nothing is lost if this consumer dies in between.
func (c *Client) waitAndTake(ctx context.Context, queue string, k Keys, n int, leaseFor, block time.Duration) (ls []*Lease, nextDelayed time.Time, paused bool, err error) {
	if c.rdb.pipelineBlock > 0 {
		return c.takeOnce(ctx, queue, k, n, leaseFor, block)
	}
	err = c.rdb.block(ctx, "blmove", k.Ready, k.Claim, "LEFT", "RIGHT", blockSeconds(block)).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, time.Time{}, false, fmt.Errorf("lease: take from %s: wait: %w", queue, convertErr(err))
	}
	if ctx.Err() != nil {
		return nil, time.Time{}, false, ctx.Err()
	}
	return c.takeOnce(ctx, queue, k, n, leaseFor, 0)
}

// blockFor bounds one BLMOVE of a wait of up to wait: blockChunk (and,
// pipelined, half the blocking client's read timeout), and no later than
// just after nextDelayed, when a delayed message becomes due (Redis time
// is at ms resolution), but no earlier than early.
func (c *Client) blockFor(wait time.Duration, nextDelayed time.Time, early time.Duration) time.Duration {
	wait = min(wait, blockChunk)
	if c.rdb.pipelineBlock > 0 {
		wait = min(wait, c.rdb.pipelineBlock)
	}
	if !nextDelayed.IsZero() {
		wait = min(wait, max(nextDelayed.Sub(c.now())+time.Millisecond, early, time.Millisecond))
	}
	// BLMOVE's timeout is in seconds with ms resolution, and 0 would mean
	// forever.
	return max(wait, time.Millisecond)
}

// takeOnce leases up to n messages of queue, in one script call or, when
// the queue seems to hold fewer than n, in a few that each ask only about
// as many as they are likely to find (see takeAsk).
//
// With block > 0 the first call waits in BLMOVE for up to block first, in
// the same round trip (blockAndTake).
func (c *Client) takeOnce(ctx context.Context, queue string, k Keys, n int, leaseFor, block time.Duration) (ls []*Lease, nextDelayed time.Time, paused bool, err error) {
	est := c.estimate(queue)
	ask := takeAsk(est, n)
	for {
		var r takeResult
		if block > 0 {
			r, err = c.blockAndTake(ctx, queue, k, ask, leaseFor, block, ask < n, nil)
			block = 0
		} else {
			r, err = c.runTake(ctx, queue, k, ask, leaseFor, nil, ask < n-len(ls))
		}
		if err != nil {
			if len(ls) > 0 {
				// Hand over what the first calls leased; the error comes
				// back on the next call if it persists.
				return ls, time.Time{}, false, nil
			}
			return nil, time.Time{}, false, err
		}
		// Every lease a run made is handed over, even one of an id an
		// earlier run returned too: two copies of a message are two
		// leases, and a lease of the first run that ran out before a
		// later run took its message again holds nothing (its ack
		// reports ErrNotHeld), which the client cannot tell apart from a
		// copy without asking Redis.
		ls = append(ls, r.leases...)
		// (remaining is -1 when the run was not asked to report: it then
		// had a slot for everything left to take)
		if len(r.leases) < ask || r.remaining <= 0 || len(ls) >= n {
			note(est, r, ask)
			return ls, r.nextDelayed, r.paused, nil
		}
		ask = int(min(int64(n-len(ls)), r.remaining))
	}
}

// takeAsk is how many slots (tokens, ids and shadow keys) a take of up to n
// sends: about twice what the last take of the queue found, so that a
// large batch asked of a queue that holds a few messages costs what it
// returns, not what it asks for. When all slots are filled the script
// reports how many remain, and takeOnce asks again for those.
func takeAsk(est *atomic.Int64, n int) int {
	return int(min(int64(n), 2*est.Load()+1))
}

// note records in est what a take run that asked for ask found. A paused
// queue is never noted as 0: the next blocking take must look before it
// waits, since its BLMOVE would move a message of the paused queue onto
// the claim list.
func note(est *atomic.Int64, r takeResult, ask int) {
	if r.paused {
		est.CompareAndSwap(0, 1)
		return
	}
	est.Store(int64(noteFound(r, ask)))
}

// noteFound is what a take run found on the queue: what it leased, plus
// what it reported remaining when it filled every slot (or all of what
// it asked when it did not ask for a report).
func noteFound(r takeResult, ask int) int {
	if len(r.leases) < ask {
		return len(r.leases)
	}
	if r.remaining < 0 {
		return MaxBatch
	}
	return min(len(r.leases)+int(r.remaining), MaxBatch)
}

// estimate is the per-queue count that takeAsk reads.
func (c *Client) estimate(queue string) *atomic.Int64 {
	if v, ok := c.found.Load(queue); ok {
		return v.(*atomic.Int64)
	}
	// Until a take has looked, expect a full batch.
	est := new(atomic.Int64)
	est.Store(MaxBatch)
	v, _ := c.found.LoadOrStore(queue, est)
	return v.(*atomic.Int64)
}

// takeResult is one run of take.lua.
type takeResult struct {
	leases      []*Lease
	nextDelayed time.Time
	paused      bool
	// remaining is the ready list's length after a run that filled every
	// slot and was asked to report it; -1 when not asked, 0 when a slot
	// stayed empty.
	remaining int64
	acks      []int64 // one status per lease acked first
}

// runTake runs take.lua once: it acks acks (leases of queue), then leases
// up to n messages; with report, a run that fills every slot also says how
// many remain.
func (c *Client) runTake(ctx context.Context, queue string, k Keys, n int, leaseFor time.Duration, acks []*Lease, report bool) (takeResult, error) {
	keys, args, tokens := c.takeArgs(queue, k, n, leaseFor, acks, report)
	sent := time.Now()
	res, err := takeScript.Run(ctx, c.rdb, keys, args...).Slice()
	return c.takeReply(ctx, queue, res, err, sent, tokens, len(acks), report)
}

// blockAndTake sends BLMOVE ready -> claim (waiting up to block) and a
// take of up to n in one pipeline on the blocking client: Redis holds the
// take until BLMOVE returns, then runs it at once, so a pushed message
// reaches a waiting consumer in one round trip. go-redis reads a
// pipeline's replies with the client's read timeout, which blockFor keeps
// block well below. A take Redis refused without running it (a missing
// function or script, FCALL refused, a Cluster redirect, a failover) runs
// again the usual way, which loads the library or falls back to EVALSHA;
// the element BLMOVE parked is on the claim list, which takes drain first.
//
// before, if not nil, queues commands ahead of BLMOVE in the same pipeline
// (AckAndTake's ack), which Redis runs before BLMOVE blocks.
func (c *Client) blockAndTake(ctx context.Context, queue string, k Keys, n int, leaseFor, block time.Duration, report bool, before func(redis.Pipeliner)) (takeResult, error) {
	keys, args, tokens := c.takeArgs(queue, k, n, leaseFor, nil, report)
	pipe := c.rdb.blocking.Pipeline()
	if before != nil {
		before(pipe)
	}
	mv := pipe.Do(ctx, "blmove", k.Ready, k.Claim, "LEFT", "RIGHT", blockSeconds(block))
	run := takeScript.queue(ctx, c.rdb, pipe, keys, args...)
	sent := time.Now()
	_, _ = pipe.Exec(ctx) // errors are on the commands
	// Run again if refused unrun, with the same tokens: should the first
	// run have happened after all, this one answers with its leases.
	res, rerun, err := takeScript.queuedReply(ctx, c.rdb, run, &sent, keys, args...)
	r, err := c.takeReply(ctx, queue, res, err, sent, tokens, 0, report)
	if !rerun && err == nil && len(r.leases) == 0 {
		// A wait Redis refused (ACL) would otherwise return at once, every
		// time: report it, as the two-step wait does.
		if merr := mv.Err(); merr != nil && !errors.Is(merr, redis.Nil) {
			return takeResult{}, fmt.Errorf("lease: take from %s: wait: %w", queue, convertErr(merr))
		}
	}
	return r, err
}

// blockSeconds is BLMOVE's timeout for d, in seconds with ms resolution
// (go-redis' own helper rounds up to whole seconds).
func blockSeconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) }

// takeArgs builds take.lua's keys and arguments, with fresh tokens and ids
// for n slots; tokens are the slots' tokens, which the reply's leases fill
// in order.
func (c *Client) takeArgs(queue string, k Keys, n int, leaseFor time.Duration, acks []*Lease, report bool) (keys []string, args []any, tokens []string) {
	tokens, ids := c.newTokens(n)
	keys = make([]string, 0, 9+n+len(acks))
	keys = append(keys, k.Ready, k.Claim, k.Held, k.Due, k.Delayed, k.Dead, k.DeadMsgs, k.Paused, k.Counts)
	rep := 0
	if report {
		rep = 1
	}
	args = make([]any, 0, 9+2*n+len(acks))
	args = append(args, n, ms(leaseFor), ms(c.cfg.LeaseFor), max(c.cfg.MaxDeliveries, 0), WakeChannel, queue, c.cfg.MaxPayload, len(acks), rep)
	for i := range n {
		keys = append(keys, LeaseKey(queue, tokens[i]))
		args = append(args, tokens[i], ids[i])
	}
	for _, l := range acks {
		keys = append(keys, LeaseKey(queue, l.Token))
		args = append(args, l.arg())
	}
	return keys, args, tokens
}

// takeReply decodes the reply (or error) of a take.lua run sent at sent
// with the slots' tokens.
func (c *Client) takeReply(ctx context.Context, queue string, res []any, err error, sent time.Time, tokens []string, acks int, report bool) (takeResult, error) {
	if err != nil {
		return takeResult{}, fmt.Errorf("lease: take from %s: %w", queue, convertErr(err))
	}
	r, bad, err := c.parseRun(queue, res, tokens, acks)
	if err != nil {
		return takeResult{}, fmt.Errorf("lease: take from %s: %w", queue, err)
	}
	for _, l := range r.leases {
		l.sent = sent
	}
	if bad > 0 {
		c.cfg.Logger.WarnContext(ctx, "dead-lettered malformed or oversized messages", "queue", queue, "num_malformed", bad)
	}
	if !report {
		r.remaining = -1
	}
	return r, nil
}

// parseRun decodes take.lua's reply for a run with the slots' tokens that
// acked a leases: a header of four integers (count, next delayed,
// malformed, remaining), a ack statuses, then the leases.
func (c *Client) parseRun(queue string, res []any, tokens []string, a int) (r takeResult, bad int, err error) {
	if len(res) < 4+a {
		return r, 0, fmt.Errorf("%w: take reply has %d fields", ErrMalformed, len(res))
	}
	rem, ok := res[3].(int64)
	if !ok || rem < 0 {
		return r, 0, fmt.Errorf("%w: take reply remaining %v", ErrMalformed, res[3])
	}
	r.remaining = rem
	r.acks = make([]int64, a)
	for i := range a {
		st, ok := res[4+i].(int64)
		if !ok || st < -1 || st > 1 {
			return r, 0, fmt.Errorf("%w: take reply ack status %v", ErrMalformed, res[4+i])
		}
		r.acks[i] = st
	}
	body := append(res[:3:3], res[4+a:]...)
	r.leases, r.nextDelayed, bad, err = c.parseTakeReply(queue, body, tokens)
	r.paused = err == nil && body[1] == int64(-2)
	return r, bad, err
}

// parseTakeReply decodes take.lua's reply: a header of three integers
// (count, next delayed, malformed), then per lease its deadline and its
// record, the envelope as it was taken. The i-th lease is tokens[i]'s; its
// id, attempt (the record's attempts + 1), maximum and payload (a slice of
// the record) come from the record.
func (c *Client) parseTakeReply(queue string, res []any, tokens []string) (ls []*Lease, nextDelayed time.Time, bad int, err error) {
	if len(res) < 3 {
		return nil, time.Time{}, 0, fmt.Errorf("%w: take reply has %d fields", ErrMalformed, len(res))
	}
	count, ok1 := res[0].(int64)
	next, ok2 := res[1].(int64)
	nbad, ok3 := res[2].(int64)
	// Compare without multiplying count: a huge count would overflow
	// 3+2*count into a matching length and then into make's capacity.
	if !ok1 || !ok2 || !ok3 || (len(res)-3)%2 != 0 || count != int64((len(res)-3)/2) || count > int64(len(tokens)) {
		return nil, time.Time{}, 0, fmt.Errorf("%w: take reply header %v for %d slots", ErrMalformed, res[:3], len(tokens))
	}
	if next > 0 {
		nextDelayed = fromMS(next)
	}
	ls = make([]*Lease, 0, count)
	for i := 3; i < len(res); i += 2 {
		dl, ok1 := res[i].(int64)
		rec, ok2 := res[i+1].(string)
		if !ok1 || !ok2 {
			return nil, time.Time{}, 0, fmt.Errorf("%w: take reply lease %d", ErrMalformed, (i-3)/2)
		}
		env, err := parseEnvelope([]byte(rec))
		if err != nil {
			return nil, time.Time{}, 0, fmt.Errorf("%w: take reply lease %d: record: %w", ErrMalformed, (i-3)/2, err)
		}
		l := &Lease{Queue: queue, ID: env.ID, Token: tokens[(i-3)/2], Attempt: env.Attempts + 1, MaxDeliveries: env.Max, Payload: env.Payload, c: c}
		if env.Max == 0 {
			l.MaxDeliveries = Unlimited
		}
		l.deadline.Store(dl)
		ls = append(ls, l)
	}
	return ls, nextDelayed, int(nbad), nil
}
