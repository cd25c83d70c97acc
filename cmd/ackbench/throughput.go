package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

const (
	tputBatch = 100
	// tputBlock is how long an idle consumer blocks per call. Short, so
	// that consumers notice the end of a run quickly.
	tputBlock    = 100 * time.Millisecond
	tputBlockSec = "0.1"
)

// tputVariant is one way to push, take and acknowledge messages.
type tputVariant struct {
	key   string // short name used in tables' ratio columns
	name  string
	mode  string // "none" (no ack), "single", "batch" or "consume"
	batch int    // messages per take
	// daemon runs the real ackd against the server during the run (100 B
	// payloads only), as a deployment would.
	daemon bool
	build  func(b *bench, lc *lease.Client) tputImpl
}

// tputImpl is one system's producer and consumer. A consumer calls got,
// if not nil, with (at least the first 8 bytes of) each message's payload
// as it receives it, before acking it.
type tputImpl struct {
	setup func(ctx context.Context) error
	push  func(ctx context.Context, ps [][]byte) error // these messages, one round trip
	// consume takes and acks up to batch messages for consumer w; 0 after
	// a timed-out wait.
	consume func(ctx context.Context, w int, got func([]byte)) (int, error)
	// consumeAll, instead of consume, runs all consumers until ctx is
	// cancelled, calling done after each message's handler.
	consumeAll func(ctx context.Context, consumers int, got func([]byte), done func()) error
	// backlog is how many messages wait to be delivered, read with ctl in
	// one command.
	backlog func(ctx context.Context) (int64, error)
	// check, if set, verifies after a run that nothing is left in flight.
	check func(ctx context.Context) error
	// expect, if set, is given the number of messages the run moves (the
	// concurrent section may lower it while the consumers run) and the
	// number of consumers, before they start.
	expect func(target *atomic.Int64, consumers int)
}

var tputVariants = []tputVariant{
	{key: "list", name: "plain list RPUSH/BLPOP (no ack)", mode: "none", batch: 1, build: buildList},
	{key: "reliable", name: "reliable list BLMOVE+LREM", mode: "single", batch: 1, build: buildReliable},
	{key: "streams", name: "Streams XREADGROUP+XACK", mode: "single", batch: 1, build: buildStreams(1)},
	{key: "ackd", name: "ackd Take+Ack", mode: "single", batch: 1, build: buildAckd(1)},
	{key: "ackd-ackandtake", name: "ackd AckAndTake", mode: "single", batch: 1, build: buildAckAndTake},
	{key: "ackd-consume", name: "ackd Consume (Workers = consumers)", mode: "consume", batch: 1, build: buildConsume(0)},
	{key: "streams-batch", name: "Streams batched (COUNT 100, XACK 100)", mode: "batch", batch: tputBatch, build: buildStreams(tputBatch)},
	{key: "ackd-batch", name: "ackd batched (TakeBatch 100 + AckBatch)", mode: "batch", batch: tputBatch, build: buildAckd(tputBatch)},
	{key: "ackd-floor", name: "floor: least scripts on ackd's layout", mode: "single", batch: 1, build: buildFloor(floorHash)},
	{key: "ackd-floor2", name: "floor: least scripts, record in the due set", mode: "single", batch: 1, build: buildFloor(floorNoHash)},
	{key: "ackd-floor3", name: "floor: least take script, ack by MULTI", mode: "single", batch: 1, build: buildFloor(floorMultiAck)},
	{key: "ackd-daemon", name: "ackd Take+Ack, daemon running", mode: "single", batch: 1, build: buildAckd(1), daemon: true},
}

func variantByKey(key string) tputVariant {
	for _, v := range tputVariants {
		if v.key == key {
			return v
		}
	}
	panic("no throughput variant " + key)
}

func repeated[T any](v T, n int) []T {
	s := make([]T, n)
	for i := range s {
		s[i] = v
	}
	return s
}

func listPush(b *bench, key string) func(context.Context, [][]byte) error {
	return func(ctx context.Context, ps [][]byte) error {
		vals := make([]any, len(ps))
		for i, p := range ps {
			vals[i] = p
		}
		return b.rdb.RPush(ctx, key, vals...).Err()
	}
}

func listBacklog(b *bench, key string) func(context.Context) (int64, error) {
	return func(ctx context.Context) (int64, error) { return b.ctl.LLen(ctx, key).Result() }
}

// head is at most the first 8 bytes of s, as a slice.
func head(s string) []byte { return []byte(s[:min(len(s), 8)]) }

func buildList(b *bench, _ *lease.Client) tputImpl {
	return tputImpl{
		push:    listPush(b, "q"),
		backlog: listBacklog(b, "q"),
		consume: func(ctx context.Context, _ int, got func([]byte)) (int, error) {
			v, err := b.rdb.Do(ctx, "blpop", "q", tputBlockSec).StringSlice()
			if errors.Is(err, redis.Nil) {
				return 0, nil
			}
			if err != nil {
				return 0, err
			}
			if got != nil && len(v) == 2 {
				got(head(v[1]))
			}
			return 1, nil
		},
	}
}

func buildReliable(b *bench, _ *lease.Client) tputImpl {
	return tputImpl{
		push:    listPush(b, "q"),
		backlog: listBacklog(b, "q"),
		consume: func(ctx context.Context, w int, got func([]byte)) (int, error) {
			// One processing list per consumer, as rmq and most
			// hand-rolled reliable queues do, so LREM scans one element.
			proc := "q:processing:" + strconv.Itoa(w)
			v, err := b.rdb.Do(ctx, "blmove", "q", proc, "LEFT", "RIGHT", tputBlockSec).Text()
			if errors.Is(err, redis.Nil) {
				return 0, nil
			}
			if err != nil {
				return 0, err
			}
			if got != nil {
				got(head(v))
			}
			return 1, b.rdb.LRem(ctx, proc, 1, v).Err()
		},
	}
}

func buildStreams(count int) func(*bench, *lease.Client) tputImpl {
	return func(b *bench, _ *lease.Client) tputImpl {
		return tputImpl{
			setup: func(ctx context.Context) error {
				return b.ctl.XGroupCreateMkStream(ctx, "s", "g", "0").Err()
			},
			push: func(ctx context.Context, ps [][]byte) error {
				if len(ps) == 1 {
					return b.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []any{"p", ps[0]}}).Err()
				}
				// No multi-entry XADD exists: a pipeline of k is one
				// round trip.
				_, err := b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
					for _, v := range ps {
						p.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []any{"p", v}})
					}
					return nil
				})
				return err
			},
			backlog: func(ctx context.Context) (int64, error) {
				// Entries stay in the stream after XACK: what waits is
				// the group's lag (Redis 7).
				gs, err := b.ctl.XInfoGroups(ctx, "s").Result()
				if err != nil || len(gs) != 1 {
					return 0, fmt.Errorf("XINFO GROUPS: %v %w", gs, err)
				}
				return max(gs[0].Lag, 0), nil
			},
			consume: func(ctx context.Context, w int, got func([]byte)) (int, error) {
				res, err := b.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
					Group: "g", Consumer: "c" + strconv.Itoa(w), Streams: []string{"s", ">"},
					Count: int64(count), Block: tputBlock,
				}).Result()
				if errors.Is(err, redis.Nil) {
					return 0, nil
				}
				if err != nil {
					return 0, err
				}
				var ids []string
				for _, st := range res {
					for _, m := range st.Messages {
						ids = append(ids, m.ID)
						if got != nil {
							p, _ := m.Values["p"].(string)
							got(head(p))
						}
					}
				}
				if len(ids) == 0 {
					return 0, nil
				}
				return len(ids), b.rdb.XAck(ctx, "s", "g", ids...).Err()
			},
		}
	}
}

func buildAckd(count int) func(*bench, *lease.Client) tputImpl {
	return func(b *bench, lc *lease.Client) tputImpl {
		opts := &lease.TakeOpts{Wait: tputBlock}
		k := lease.KeysFor("q")
		return tputImpl{
			setup: func(ctx context.Context) error { return lc.Register(ctx, "q") },
			push: func(ctx context.Context, ps [][]byte) error {
				if len(ps) == 1 {
					_, err := lc.Push(ctx, "q", ps[0], nil)
					return err
				}
				_, err := lc.PushBatch(ctx, "q", ps, nil)
				return err
			},
			backlog: listBacklog(b, k.Ready),
			check:   noneHeld(func(ctx context.Context) (int64, error) { return b.ctl.HLen(ctx, k.Held).Result() }),
			consume: func(ctx context.Context, _ int, got func([]byte)) (int, error) {
				if count == 1 {
					l, err := lc.Take(ctx, "q", opts)
					if errors.Is(err, lease.ErrNoMessage) {
						return 0, nil
					}
					if err != nil {
						return 0, err
					}
					if got != nil {
						got(l.Payload)
					}
					return 1, l.Ack(ctx)
				}
				ls, err := lc.TakeBatch(ctx, "q", count, opts)
				if err != nil || len(ls) == 0 {
					return 0, err
				}
				if got != nil {
					for _, l := range ls {
						got(l.Payload)
					}
				}
				return len(ls), lc.AckBatch(ctx, ls)
			},
		}
	}
}

// noneHeld is a check that held, which counts the leases in flight, finds
// none.
func noneHeld(held func(context.Context) (int64, error)) func(context.Context) error {
	return func(ctx context.Context) error {
		n, err := held(ctx)
		if err == nil && n != 0 {
			err = fmt.Errorf("%d leases still held after the run", n)
		}
		return err
	}
}

// consumeVariant is Consume with ConsumeOpts.Prefetch p (-prefetch).
func consumeVariant(p int) tputVariant {
	name := fmt.Sprintf("ackd Consume, Prefetch %d", p)
	if p < 0 {
		name = "ackd Consume, Prefetch off"
	}
	return tputVariant{key: fmt.Sprintf("ackd-consume-p%d", p), name: name, mode: "consume", batch: 1, build: buildConsume(p)}
}

// buildAckAndTake is the loop of a consumer that takes one message at a
// time without Consume: each AckAndTake acks the message the call before
// took and takes the next, waiting up to tputBlock, in one round trip
// (when the queue was empty at the last take: the ack, BLMOVE and the
// take in one pipeline). A consumer that holds no lease (at the start,
// or after a wait that brought nothing) takes with Take. A waiting
// AckAndTake reports its ack only when the wait ends, which at the end of
// a run would hold up the last acks by a wait that no steady stream has:
// once fewer than twice as many messages as consumers are left to
// receive, the consumers ask without a wait (and wait in Take when they
// hold nothing), so that each wait still under way has a message coming.
func buildAckAndTake(b *bench, lc *lease.Client) tputImpl {
	impl := buildAckd(1)(b, lc)
	wait := &lease.TakeOpts{Wait: tputBlock}
	var (
		held     sync.Map // consumer -> the *lease.Lease it holds
		received atomic.Int64
		target   atomic.Pointer[atomic.Int64]
		margin   atomic.Int64
	)
	impl.expect = func(t *atomic.Int64, consumers int) {
		target.Store(t)
		margin.Store(2 * int64(consumers))
	}
	impl.consume = func(ctx context.Context, w int, got func([]byte)) (int, error) {
		v, ok := held.Load(w)
		if !ok {
			l, err := lc.Take(ctx, "q", wait)
			if errors.Is(err, lease.ErrNoMessage) {
				return 0, nil
			}
			if err != nil {
				return 0, err
			}
			received.Add(1)
			if got != nil {
				got(l.Payload)
			}
			held.Store(w, l)
			return 0, nil
		}
		o := wait
		if t := target.Load(); t != nil && received.Load()+margin.Load() > t.Load() {
			o = nil
		}
		next, err := v.(*lease.Lease).AckAndTake(ctx, o)
		if next == nil {
			held.Delete(w)
			if err == lease.ErrNoMessage { // exactly: no ack error joined to it
				return 1, nil
			}
			return 0, err
		}
		received.Add(1)
		if got != nil {
			got(next.Payload)
		}
		held.Store(w, next)
		return 1, err
	}
	return impl
}

// buildConsume runs the library's own consumer loop, Consume, with one
// worker per consumer, ConsumeOpts.Prefetch prefetch and a handler that
// returns nil at once (Consume acks it).
func buildConsume(prefetch int) func(b *bench, lc *lease.Client) tputImpl {
	return func(b *bench, lc *lease.Client) tputImpl { return consumeImpl(b, lc, prefetch) }
}

func consumeImpl(b *bench, lc *lease.Client, prefetch int) tputImpl {
	impl := buildAckd(1)(b, lc)
	impl.consume = nil
	impl.consumeAll = func(ctx context.Context, workers int, got func([]byte), done func()) error {
		var (
			mu    sync.Mutex
			first error
		)
		h := func(_ context.Context, l *lease.Lease) error {
			if got != nil {
				got(l.Payload)
			}
			done()
			return nil
		}
		err := lc.Consume(ctx, "q", h, &lease.ConsumeOpts{
			Workers:  workers,
			Prefetch: prefetch,
			ErrorFunc: func(_ *lease.Lease, err error) {
				mu.Lock()
				defer mu.Unlock()
				if first == nil {
					first = err
				}
			},
		})
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		return first
	}
	return impl
}

type tputResult struct {
	v                  tputVariant
	size, consumers, n int
	elapsed            time.Duration
	rate               float64 // msgs/s
	redisCPU           float64 // µs per message
	clientCPU          float64 // µs per message, all of ackbench
	roundTrips         float64 // per message, producer included
	redisCmds          float64 // per message, commands inside scripts included
	delta              stats

	pushCPU float64 // Redis µs per message of the pre-fill
	perTake float64 // messages per successful take

	// Sums the figures above derive from, so that rounds add up.
	clientSec  float64
	pushCPUSec float64
	rts        int64
	takes      int64 // -1 when the consumer does not tell (Consume)
	ownCalls   int64 // commands of ackbench's own sampling, not counted
}

// add merges another round of the same variant into r.
func (r *tputResult) add(o tputResult) {
	if r.n == 0 {
		*r = o
		return
	}
	r.n += o.n
	r.elapsed += o.elapsed
	r.clientSec += o.clientSec
	r.pushCPUSec += o.pushCPUSec
	r.rts += o.rts
	if r.takes >= 0 && o.takes >= 0 {
		r.takes += o.takes
	} else {
		r.takes = -1
	}
	r.ownCalls += o.ownCalls
	r.delta.cpu += o.delta.cpu
	r.delta.commands += o.delta.commands
	for k, v := range o.delta.cmds {
		c := r.delta.cmds[k]
		r.delta.cmds[k] = cmdStat{calls: c.calls + v.calls, usec: c.usec + v.usec}
	}
	r.finish()
}

func (r *tputResult) finish() {
	fn := float64(r.n)
	r.rate = fn / r.elapsed.Seconds()
	r.redisCPU = r.delta.cpu * 1e6 / fn
	r.clientCPU = r.clientSec * 1e6 / fn
	r.roundTrips = float64(r.rts) / fn
	r.redisCmds = float64(r.delta.calls()-r.ownCalls) / fn
	r.pushCPU = r.pushCPUSec * 1e6 / fn
	r.perTake = math.NaN()
	if r.takes > 0 {
		r.perTake = fn / float64(r.takes)
	}
}

// runTput pre-fills the queue with n messages, pushed in batches of 100
// with one round trip each, then lets the consumers take and ack all of
// them. Push and take+ack are measured apart; the queue never runs dry
// while the consumers are timed, so the figures are the consumers' own.
func (b *bench) runTput(ctx context.Context, v tputVariant, size, consumers, n int) (tputResult, error) {
	r := tputResult{v: v, size: size, consumers: consumers, n: n}
	lc, err := b.reset(ctx)
	if err != nil {
		return r, err
	}
	impl := v.build(b, lc)
	if impl.setup != nil {
		if err := impl.setup(ctx); err != nil {
			return r, err
		}
	}
	if v.daemon {
		d, err := b.startDaemon(ctx)
		if err != nil {
			return r, err
		}
		defer func() {
			if err := d.stop(); err != nil {
				b.logf("ackd: %v", err)
			}
		}()
	}
	sp, err := b.stats(ctx)
	if err != nil {
		return r, err
	}
	ps := repeated(bytes.Repeat([]byte("p"), size), tputBatch)
	for p := 0; p < n; p += tputBatch {
		if err := impl.push(ctx, ps[:min(tputBatch, n-p)]); err != nil {
			return r, fmt.Errorf("%s push: %w", v.name, err)
		}
	}
	m, err := b.startMeter(ctx)
	if err != nil {
		return r, err
	}
	end, takes, err := consumeN(ctx, impl, v.name, consumers, n, nil)
	if err != nil {
		return r, err
	}
	if err := b.stopMeter(ctx, m, impl, v.name, end, takes, &r); err != nil {
		return r, err
	}
	r.pushCPUSec = m.s0.sub(sp).cpu
	r.finish()
	return r, nil
}

// meter holds where a timed part of a run started: Redis's counters,
// ackbench's own CPU and round trips, and the time.
type meter struct {
	s0    stats
	cpu0  float64
	rt0   int64
	start time.Time
}

func (b *bench) startMeter(ctx context.Context) (meter, error) {
	s0, err := b.stats(ctx)
	if err != nil {
		return meter{}, err
	}
	return meter{s0: s0, rt0: b.rt.n.Load(), cpu0: selfCPU(), start: time.Now()}, nil
}

// stopMeter fills r with what the timed part that started at m cost, up to
// end (when its last message was done), once impl's own check passes.
func (b *bench) stopMeter(ctx context.Context, m meter, impl tputImpl, name string, end time.Time, takes int64, r *tputResult) error {
	cpu1, rt1 := selfCPU(), b.rt.n.Load()
	s1, err := b.stats(ctx)
	if err != nil {
		return err
	}
	if impl.check != nil {
		if err := impl.check(ctx); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	r.elapsed = end.Sub(m.start)
	r.delta = s1.sub(m.s0)
	r.takes = takes
	r.clientSec = cpu1 - m.cpu0
	r.rts = rt1 - m.rt0
	return nil
}

// consumeN runs c consumers of impl until n messages are taken and acked,
// and returns when they have stopped: with the time the n-th message was
// acked (for Consume: its handler returned) and the number of successful
// takes (-1 for Consume). got, if not nil, sees every message as it is
// received.
func consumeN(ctx context.Context, impl tputImpl, name string, c, n int, got func([]byte)) (time.Time, int64, error) {
	var target atomic.Int64
	target.Store(int64(n))
	return consumeUntil(ctx, impl, name, c, &target, nil, got)
}

// consumeUntil is consumeN with a target that may be lowered while the
// consumers run: whoever lowers it closes lowered afterwards.
func consumeUntil(ctx context.Context, impl tputImpl, name string, c int, target *atomic.Int64, lowered <-chan struct{}, got func([]byte)) (time.Time, int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		consumed atomic.Int64
		takes    atomic.Int64
		endNanos atomic.Int64
		endOnce  sync.Once
		wg       sync.WaitGroup
		errOnce  sync.Once
		runErr   error
	)
	fail := func(err error) {
		errOnce.Do(func() { runErr = err })
		cancel()
	}
	// reached stops the clock once the target is reached; Consume is
	// stopped then, the loops stop by themselves.
	reached := func() {
		if consumed.Load() >= target.Load() {
			endOnce.Do(func() {
				endNanos.Store(time.Now().UnixNano())
				if impl.consumeAll != nil {
					cancel()
				}
			})
		}
	}
	acked := func(k int) {
		consumed.Add(int64(k))
		reached()
	}
	if lowered != nil {
		go func() {
			select {
			case <-lowered:
				reached()
			case <-ctx.Done():
			}
		}()
	}
	if impl.expect != nil {
		impl.expect(target, c)
	}
	if impl.consumeAll != nil {
		err := impl.consumeAll(ctx, c, got, func() { acked(1) })
		if err != nil {
			fail(fmt.Errorf("%s: %w", name, err))
		}
		takes.Store(-1)
	} else {
		for w := range c {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for consumed.Load() < target.Load() && ctx.Err() == nil {
					k, err := impl.consume(ctx, w, got)
					if err != nil {
						if ctx.Err() == nil {
							fail(fmt.Errorf("%s consumer %d: %w", name, w, err))
						}
						return
					}
					if k > 0 {
						takes.Add(1)
						acked(k)
					}
				}
			}()
		}
		wg.Wait()
	}
	if runErr != nil {
		return time.Time{}, 0, runErr
	}
	if got, want := consumed.Load(), target.Load(); got != want {
		if err := context.Cause(ctx); err != nil && got < want {
			return time.Time{}, 0, fmt.Errorf("%s: consumed %d of %d: %w", name, got, want, err)
		}
		return time.Time{}, 0, fmt.Errorf("%s: consumed %d of %d", name, got, want)
	}
	return time.Unix(0, endNanos.Load()), takes.Load(), nil
}

// tputRounds splits each run into rounds, interleaved across the systems
// of one table, so that the machine's noise falls on all of them alike.
const tputRounds = 3

func (b *bench) throughput(ctx context.Context) error {
	sizes := []int{100, 10 << 10}
	consumerCounts := b.opt.consumers
	rounds := tputRounds
	if b.opt.quick {
		rounds = 1
	}
	var s strings.Builder
	s.WriteString("## 2. Throughput from a pre-filled queue\n\n")
	fmt.Fprintf(&s, "%s messages per system and table with 100 B payloads, %s with 10 KB (a quarter of that, to keep the run short), "+
		"split into %d rounds: each round runs every system of the table once, in a rotating order, and the figures add the rounds up. "+
		"Each round first pre-fills the queue from one producer, in batches of 100 with one round trip each "+
		"(RPUSH of 100 values, a pipeline of 100 XADDs, one PushBatch of 100), then starts the consumers and times them from "+
		"their start to the last ack, so the queue never runs dry while they are timed. "+
		"Redis CPU is the server's INFO cpu delta (user + sys) over the take+ack phase; \"push CPU\" is the same over the "+
		"pre-fill. Round trips (a pipeline is one) are counted by the client, Redis commands come from INFO commandstats and "+
		"include the commands ackd's scripts call, both for take+ack. Client CPU is all of ackbench during take+ack. "+
		"\"msgs/take\" is the mean number of messages a successful take returned. Every round starts from FLUSHALL. "+
		"Streams entries stay in the stream after XACK (until trimmed or deleted); ackd and the lists delete on ack/pop. "+
		"\"daemon running\" runs the real ackd against the server meanwhile (subscribed to the wake channel and keyspace "+
		"events, as deployed). The three floors are described in section 1.\n\n",
		fmtNum(float64(tputMessages(b.opt.n, 100))), fmtNum(float64(tputMessages(b.opt.n, 10<<10))), rounds)
	s.WriteString("Ratios compare msgs/s (higher is better) and Redis CPU per message (lower is better) within one table, " +
		"so within one run against one server. ×Streams compares like with like: single with Streams single, batched " +
		"with Streams batched; \"per round\" is the lowest and highest of that ratio over the rounds, a measure of the noise.\n\n")
	all := map[string]tputResult{}
	for _, size := range sizes {
		n := tputMessages(b.opt.n, size)
		for _, c := range consumerCounts {
			var variants []tputVariant
			for _, v := range b.opt.allVariants() {
				if !b.opt.variant(v.key) || v.daemon && (size != 100 || b.daemonMissing(ctx)) {
					continue
				}
				variants = append(variants, v)
			}
			rs := map[string]tputResult{}
			lo, hi := map[string]float64{}, map[string]float64{}
			for round := range rounds {
				per := map[string]tputResult{}
				for i := range variants {
					v := variants[(i+round)%len(variants)]
					b.logf("throughput %s payload %d consumers %d round %d", v.key, size, c, round+1)
					r, err := b.runTput(ctx, v, size, c, n/rounds)
					if err != nil {
						return err
					}
					b.logf("  %.0f msgs/s, redis %.1f µs/msg, client %.1f µs/msg, %.2f round trips/msg", r.rate, r.redisCPU, r.clientCPU, r.roundTrips)
					per[v.key] = r
					acc := rs[v.key]
					acc.add(r)
					rs[v.key] = acc
				}
				for _, v := range variants {
					like, ok := per[likeKey(v)]
					if !ok {
						continue
					}
					x := per[v.key].rate / like.rate
					if round == 0 || x < lo[v.key] {
						lo[v.key] = x
					}
					if round == 0 || x > hi[v.key] {
						hi[v.key] = x
					}
				}
			}
			fmt.Fprintf(&s, "### %s payload, %d consumer%s\n\n", sizeName(size), c, plural(c))
			var rows [][]string
			for _, v := range variants {
				r := rs[v.key]
				all[fmt.Sprintf("%s/%d/%d", v.key, size, c)] = r
				like := rs[likeKey(v)]
				spread := "–"
				if _, ok := lo[v.key]; ok && rounds > 1 {
					spread = fmt.Sprintf("%.2f–%.2f", lo[v.key], hi[v.key])
				}
				rows = append(rows, []string{
					v.name, fmtNum(r.rate),
					ratio(r.rate, like.rate), spread, ratio(r.rate, rs["streams"].rate), ratio(r.rate, rs["list"].rate),
					fmtF(r.redisCPU), ratio(r.redisCPU, like.redisCPU), fmtF(r.pushCPU),
					fmtF(r.roundTrips), fmtF(r.redisCmds), fmtF(r.clientCPU), fmtF(r.perTake),
				})
			}
			s.WriteString(table([]string{"system", "take+ack msgs/s", "×Streams", "per round", "×Streams single", "×list",
				"Redis CPU µs/msg", "CPU ×Streams", "push CPU µs/msg", "round trips/msg", "Redis cmds/msg", "client CPU µs/msg", "msgs/take"}, rows))
			s.WriteString("\n")
		}
	}
	s.WriteString(tputBreakdown(all, "### Where Redis's time goes (100 B payload)", []int{1, 8},
		[]string{"streams", "ackd", "ackd-ackandtake", "ackd-daemon", "ackd-consume", "streams-batch", "ackd-batch"}))
	b.sections = append(b.sections, s.String())
	b.tputTargets(all, sizes, consumerCounts)
	return nil
}

// tputMessages is how many messages one system pushes, takes and acks per
// table of the pre-filled section: a quarter of n with small payloads, a
// sixteenth with 10 KB ones.
func tputMessages(n, size int) int {
	if size > 1000 {
		return n / 16
	}
	return n / 4
}

// likeKey is the Streams variant a variant compares with.
func likeKey(v tputVariant) string {
	if v.mode == "batch" {
		return "streams-batch"
	}
	return "streams"
}

func sizeName(size int) string {
	if size >= 1024 {
		return fmt.Sprintf("%d KB", size>>10)
	}
	return fmt.Sprintf("%d B", size)
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// tputTargets states the throughput targets for every configuration.
func (b *bench) tputTargets(all map[string]tputResult, sizes, consumerCounts []int) {
	type check struct {
		name, goal string
		num, den   string // variant keys
		field      func(tputResult) float64
		ok         func(float64) bool
	}
	rate := func(r tputResult) float64 { return r.rate }
	cpu := func(r tputResult) float64 { return r.redisCPU }
	checks := []check{
		{"take+ack throughput (pre-filled)", "ackd Take+Ack ≥ 1.0x Streams single", "ackd", "streams", rate, func(x float64) bool { return x >= 1.0 }},
		{"AckAndTake throughput (pre-filled)", "ackd AckAndTake ≥ 1.0x Streams single", "ackd-ackandtake", "streams", rate, func(x float64) bool { return x >= 1.0 }},
		{"batched throughput (pre-filled)", "ackd batched ≥ 2x Streams single", "ackd-batch", "streams", rate, func(x float64) bool { return x >= 2.0 }},
		{"Redis CPU per message (pre-filled)", "ackd Take+Ack ≤ 1.2x Streams single", "ackd", "streams", cpu, func(x float64) bool { return x <= 1.2 }},
	}
	for _, c := range checks {
		var figs []string
		met := 0
		total := 0
		for _, size := range sizes {
			for _, n := range consumerCounts {
				num, ok1 := all[fmt.Sprintf("%s/%d/%d", c.num, size, n)]
				den, ok2 := all[fmt.Sprintf("%s/%d/%d", c.den, size, n)]
				if !ok1 || !ok2 {
					continue
				}
				x := c.field(num) / c.field(den)
				total++
				if c.ok(x) {
					met++
				}
				figs = append(figs, fmt.Sprintf("%s c=%d: %.2fx", sizeName(size), n, x))
			}
		}
		if total == 0 {
			continue
		}
		b.addTarget(c.name, c.goal, fmt.Sprintf("%s (met in %d of %d)", strings.Join(figs, "; "), met, total), met == total)
	}
}

// tputBreakdown shows where Redis spends its time per message, from INFO
// commandstats, for the systems keys at 100 B with each number of
// consumers, under the heading title.
func tputBreakdown(all map[string]tputResult, title string, consumers []int, keys []string) string {
	var s strings.Builder
	s.WriteString(title + "\n\n")
	s.WriteString("Per message, from the INFO commandstats delta of each run. `usec` of FCALL (EVALSHA where functions are refused) includes the commands the script " +
		"calls, which are also listed on their own (marked *in script*). \"Outside commands\" is Redis CPU minus the time inside " +
		"top-level commands: reading, parsing and replying, the event loop and the system calls of each round trip.\n\n")
	for _, c := range consumers {
		var rows [][]string
		for _, key := range keys {
			r, ok := all[fmt.Sprintf("%s/%d/%d", key, 100, c)]
			if !ok {
				continue
			}
			fn := float64(r.n)
			names := make([]string, 0, len(r.delta.cmds))
			for k := range r.delta.cmds {
				if k != "info" && k != "flushall" && k != "xinfo|groups" { // ackbench's own
					names = append(names, k)
				}
			}
			slices.SortFunc(names, func(a, b string) int { return int(r.delta.cmds[b].usec - r.delta.cmds[a].usec) })
			var inside float64
			for _, k := range names {
				st := r.delta.cmds[k]
				nested := strings.HasPrefix(key, "ackd") && !topLevelAckd[k]
				label := k
				if nested {
					label += " *in script*"
				} else {
					inside += float64(st.usec)
				}
				rows = append(rows, []string{r.v.name, label, fmtF(float64(st.calls) / fn), fmtF(float64(st.usec) / fn),
					fmtF(float64(st.usec) / float64(max(st.calls, 1)))})
			}
			rows = append(rows, []string{r.v.name, "**outside commands**", "", fmtF(r.redisCPU - inside/fn), ""})
			rows = append(rows, []string{r.v.name, "**Redis CPU total**", fmtF(r.redisCmds), fmtF(r.redisCPU), ""})
		}
		fmt.Fprintf(&s, "%d consumer%s:\n\n", c, plural(c))
		s.WriteString(table([]string{"system", "command", "calls/msg", "µs/msg", "µs/call"}, rows))
		s.WriteString("\n")
	}
	return s.String()
}

// topLevelAckd are the commands the lease client sends itself; everything
// else in an ackd run is called by a script.
var topLevelAckd = map[string]bool{"fcall": true, "function|load": true, "evalsha": true, "eval": true, "rpush": true, "blmove": true, "sadd": true, "script|load": true}
