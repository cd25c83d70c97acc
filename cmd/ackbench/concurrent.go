package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// concKeys are the systems of the concurrent section, in table order.
var concKeys = []string{"list", "streams", "streams-batch", "ackd", "ackd-ackandtake", "ackd-batch", "ackd-consume", "ackd-floor", "ackd-floor2", "ackd-floor3"}

const (
	concRounds = 2
	// concSample is how often the backlog is sampled during a run.
	concSample = 20 * time.Millisecond
)

// concResult is one system's concurrent run, or the sum of its rounds.
type concResult struct {
	tputResult
	lat        []time.Duration // push to receipt, one per message
	backlogSum float64
	samples    int64
	atCap      int64 // samples with the backlog at 90% of the cap or more
	maxBacklog int64
	limited    bool // the producers stopped at the time limit
}

func (r *concResult) add(o concResult) {
	r.tputResult.add(o.tputResult)
	r.lat = append(r.lat, o.lat...)
	r.backlogSum += o.backlogSum
	r.samples += o.samples
	r.atCap += o.atCap
	r.maxBacklog = max(r.maxBacklog, o.maxBacklog)
	r.limited = r.limited || o.limited
}

func dagger(b bool) string {
	if b {
		return " †"
	}
	return ""
}

// concLimit bounds the producers of one concurrent run, so that a slow
// system cannot stretch the whole run.
func (b *bench) concLimit() time.Duration {
	if b.opt.quick {
		return 5 * time.Second
	}
	return 15 * time.Second
}

func (r concResult) meanBacklog() float64 { return r.backlogSum / float64(max(r.samples, 1)) }

// concMessages is how many messages one system moves per table in the
// concurrent section: a quarter of n with 100 B payloads, a twentieth with
// 10 KB.
func concMessages(n, size int) int {
	if size > 1000 {
		return n / 20
	}
	return n / 4
}

// runConc runs p producers and c consumers of one system at once until n
// messages are pushed, taken and acked. Producers push one message per
// round trip, as fast as they can, but hold while the backlog (pushed and
// not yet received, counted by the client) is at the cap, so that a
// slower consumer side meets a bounded queue rather than a pre-filled one.
func (b *bench) runConc(ctx context.Context, v tputVariant, size, producers, consumers, n int) (concResult, error) {
	r := concResult{tputResult: tputResult{v: v, size: size, consumers: consumers, n: n}}
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
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	capacity := b.opt.backlog
	slots := make(chan struct{}, capacity)
	lat := make([]time.Duration, n)
	var li atomic.Int64
	got := func(p []byte) {
		now := time.Now()
		select {
		case <-slots:
		default: // cannot happen: a slot is taken before each push
		}
		if len(p) >= 8 {
			if i := li.Add(1) - 1; i < int64(n) {
				lat[i] = now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(p))))
			}
		}
	}

	m, err := b.startMeter(ctx)
	if err != nil {
		return r, err
	}

	// The backlog as Redis sees it, sampled on the control connection.
	var samplerWG sync.WaitGroup
	samplerCtx, stopSampler := context.WithCancel(ctx)
	samplerWG.Add(1)
	go func() {
		defer samplerWG.Done()
		t := time.NewTicker(concSample)
		defer t.Stop()
		for {
			select {
			case <-samplerCtx.Done():
				return
			case <-t.C:
			}
			k, err := impl.backlog(samplerCtx)
			if err != nil {
				if samplerCtx.Err() == nil {
					cancel(fmt.Errorf("backlog: %w", err))
				}
				return
			}
			r.samples++
			r.backlogSum += float64(k)
			r.maxBacklog = max(r.maxBacklog, k)
			if k*10 >= int64(capacity)*9 {
				r.atCap++
			}
		}
	}()

	// Producers stop at n messages or at the time limit, whichever comes
	// first; the consumers then take what was pushed.
	var (
		next, pushed atomic.Int64
		target       atomic.Int64
		prods        sync.WaitGroup
		lowered      = make(chan struct{})
	)
	target.Store(int64(n))
	stopBy := m.start.Add(b.concLimit())
	for range producers {
		prods.Add(1)
		go func() {
			defer prods.Done()
			buf := bytes.Repeat([]byte("p"), size)
			one := [][]byte{buf}
			for next.Add(1) <= int64(n) && time.Now().Before(stopBy) {
				select {
				case slots <- struct{}{}:
				case <-ctx.Done():
					return
				}
				binary.BigEndian.PutUint64(buf, uint64(time.Now().UnixNano()))
				if err := impl.push(ctx, one); err != nil {
					if ctx.Err() == nil {
						cancel(fmt.Errorf("%s push: %w", v.name, err))
					}
					return
				}
				pushed.Add(1)
			}
		}()
	}
	var limited atomic.Bool
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		prods.Wait()
		if k := pushed.Load(); k < int64(n) && ctx.Err() == nil {
			limited.Store(true)
			target.Store(k)
			close(lowered)
		}
	}()
	end, takes, cerr := consumeUntil(ctx, impl, v.name, consumers, &target, lowered, got)
	if cerr != nil {
		cancel(cerr)
	}
	prods.Wait()
	<-watched
	moved := target.Load() // n, or what was pushed within the limit
	r.n = int(moved)
	r.limited = limited.Load()
	stopSampler()
	samplerWG.Wait()
	if err := context.Cause(ctx); err != nil {
		return r, err
	}
	if err := b.stopMeter(ctx, m, impl, v.name, end, takes, &r.tputResult); err != nil {
		return r, err
	}
	r.ownCalls = r.samples
	r.lat = lat[:min(li.Load(), moved)]
	r.finish()
	return r, nil
}

// concurrent measures each system with producers and consumers running at
// once, the case a deployment sees.
func (b *bench) concurrent(ctx context.Context) error {
	sizes := []int{100, 10 << 10}
	rounds := concRounds
	if b.opt.quick {
		rounds = 1
	}
	var s strings.Builder
	s.WriteString("## 1. Throughput: producers and consumers at once\n\n")
	fmt.Fprintf(&s, "%d producers push while C consumers take and ack, all started together: %s messages per system and table "+
		"with 100 B payloads, %s with 10 KB, split into %d round%s that run every system of the table once each, in a rotating order; "+
		"the figures add the rounds up. Producers push one message per round trip (RPUSH; XADD; ackd `Push`, which is one RPUSH "+
		"of an envelope: a plain RPUSH of a bare payload onto the ready list is taken too) as fast as they can, but hold while "+
		"%s messages are pushed and not yet received, so a consumer side slower than the producers meets a bounded queue, not a "+
		"pre-filled one. \"Mean backlog\" is what Redis held waiting to be delivered (LLEN of the list or of ackd's ready list; "+
		"the Streams group's lag from XINFO GROUPS), sampled every %v; \"at cap\" is the share of samples at 90%% of the hold "+
		"or more: when it is low, the queue was rarely full and consumers took what had just arrived. "+
		"Consumers: BLPOP (no ack); XREADGROUP BLOCK COUNT 1 or 100 + XACK; ackd `Take` + `Ack`; `AckAndTake` with a wait (each call "+
		"acks the message the call before took and takes the next in one round trip; a consumer that holds none takes with `Take`); "+
		"`TakeBatch(100)` + `AckBatch`; "+
		"`Consume` with Workers = C and a handler that returns at once (Consume acks it); and three floors, the least a take and an ack "+
		"can do to lease and ack a message, with no checks at all: one on ackd's layout (record in a hash, deadline in a "+
		"ZSET, shadow key), one with the record in the ZSET member and no hash, and one on ackd's layout whose ack is a MULTI/EXEC of HDEL, ZREM and DEL "+
		"in place of a script (see cmd/ackbench/floor.go). msgs/s is from the start of the "+
		"producers to the last ack (for Consume: the last handler's return). A system whose producers have not pushed "+
		"their share of a round within %v stop there; the consumers take what was pushed and the figures are over those "+
		"messages (marked † after msgs/s). Redis CPU (INFO cpu, user + sys), Redis commands "+
		"(the sum of INFO commandstats calls, which counts the commands ackd's scripts call; ackbench's own INFO and backlog "+
		"samples left out) and round trips (counted by the client, a pipeline is one) cover producers and consumers together. "+
		"End-to-end latency runs from just before the push is sent to the consumer receiving the message (for Consume: the "+
		"handler starting), on one clock; it includes the time in the backlog. ×Streams compares with Streams COUNT 1 in the "+
		"same table.\n\n",
		b.opt.producers, fmtNum(float64(concMessages(b.opt.n, 100))), fmtNum(float64(concMessages(b.opt.n, 10<<10))),
		rounds, plural(rounds), fmtNum(float64(b.opt.backlog)), concSample,
		b.concLimit())
	all := map[string]concResult{}
	for _, size := range sizes {
		n := concMessages(b.opt.n, size)
		for _, c := range b.opt.consumers {
			var variants []tputVariant
			for _, k := range concKeys {
				if b.opt.variant(k) {
					variants = append(variants, variantByKey(k))
				}
			}
			for _, v := range b.opt.extra {
				if b.opt.variant(v.key) {
					variants = append(variants, v)
				}
			}
			rs := map[string]concResult{}
			for round := range rounds {
				for i := range variants {
					v := variants[(i+round)%len(variants)]
					b.logf("concurrent %s payload %d producers %d consumers %d round %d", v.key, size, b.opt.producers, c, round+1)
					r, err := b.runConc(ctx, v, size, b.opt.producers, c, n/rounds)
					if err != nil {
						return err
					}
					b.logf("  %.0f msgs/s, redis %.1f µs/msg, %.1f cmds/msg, mean backlog %.0f", r.rate, r.redisCPU, r.redisCmds, r.meanBacklog())
					acc := rs[v.key]
					acc.add(r)
					rs[v.key] = acc
				}
			}
			fmt.Fprintf(&s, "### %s payload, %d producers, %d consumer%s\n\n", sizeName(size), b.opt.producers, c, plural(c))
			var rows [][]string
			streams, batch, list := rs["streams"], rs["streams-batch"], rs["list"]
			for _, v := range variants {
				r := rs[v.key]
				all[fmt.Sprintf("%s/%d/%d", v.key, size, c)] = r
				d := distOf(r.lat)
				rows = append(rows, []string{
					v.name, fmtNum(r.rate) + dagger(r.limited),
					ratio(r.rate, streams.rate), ratio(r.rate, batch.rate), ratio(r.rate, list.rate),
					fmtF(r.redisCPU), ratio(r.redisCPU, streams.redisCPU), fmtF(r.redisCmds),
					fmtF(r.roundTrips), fmtF(r.clientCPU), fmtF(r.perTake),
					fmtDur(d.p50), fmtDur(d.p99),
					fmtF(r.meanBacklog()), fmt.Sprintf("%.0f%%", 100*float64(r.atCap)/float64(max(r.samples, 1))),
				})
			}
			s.WriteString(table([]string{"system", "msgs/s", "×Streams single", "×Streams COUNT 100", "×list",
				"Redis CPU µs/msg", "CPU ×Streams single", "Redis cmds/msg", "round trips/msg", "client CPU µs/msg", "msgs/take",
				"end-to-end p50", "end-to-end p99", "mean backlog", "at cap"}, rows))
			s.WriteString("\n")
		}
	}
	byKey := map[string]tputResult{}
	for k, r := range all {
		byKey[k] = r.tputResult
	}
	s.WriteString(tputBreakdown(byKey, "### Where Redis's time goes, 8 consumers (100 B payload)", []int{8},
		[]string{"streams", "ackd", "ackd-batch", "ackd-consume", "ackd-floor"}))
	s.WriteString("A consumer side that keeps up with the producers (mean backlog near 0) waits for each message: a blocked " +
		"take (BLMOVE, then the take) per wake, where one that falls behind finds the next message waiting. Compare per-message " +
		"costs of systems in the same regime.\n\n")
	b.sections = append(b.sections, s.String())
	b.concTargets(all, sizes)
	return nil
}

// concTargets states the targets the concurrent case is held to.
func (b *bench) concTargets(all map[string]concResult, sizes []int) {
	rate := func(r concResult) float64 { return r.rate }
	cpu := func(r concResult) float64 { return r.redisCPU }
	type check struct {
		name, goal string
		num, den   string // system keys
		field      func(concResult) float64
		limit      float64
		atLeast    bool // the ratio must be ≥ limit, else ≤
		sizes      []int
		consumers  func(c int) bool
	}
	every := func(int) bool { return true }
	many := func(c int) bool { return c > 1 }
	one := func(c int) bool { return c == 1 }
	small, large := []int{100}, []int{10 << 10}
	checks := []check{
		{"Consume throughput, 8+ workers (concurrent)", "ackd Consume ≥ 1.5x Streams COUNT 1", "ackd-consume", "streams", rate, 1.5, true, sizes, many},
		{"Consume throughput, 8+ workers vs batched Streams (concurrent)", "ackd Consume ≥ 1.0x Streams COUNT 100", "ackd-consume", "streams-batch", rate, 1.0, true, sizes, many},
		{"Consume throughput, 1 worker (concurrent)", "ackd Consume ≥ 1.0x Streams COUNT 1", "ackd-consume", "streams", rate, 1.0, true, sizes, one},
		{"Take+Ack throughput (concurrent)", "ackd Take+Ack ≥ 1.0x Streams COUNT 1", "ackd", "streams", rate, 1.0, true, sizes, every},
		{"AckAndTake throughput (concurrent)", "ackd AckAndTake ≥ 1.0x Streams COUNT 1", "ackd-ackandtake", "streams", rate, 1.0, true, sizes, every},
		{"Redis CPU per message, AckAndTake, 100 B (concurrent)", "ackd AckAndTake ≤ 1.2x Streams COUNT 1", "ackd-ackandtake", "streams", cpu, 1.2, false, small, every},
		{"TakeBatch never slower than Take (concurrent)", "ackd TakeBatch(100)+AckBatch ≥ 1.0x ackd Take+Ack", "ackd-batch", "ackd", rate, 1.0, true, sizes, every},
		{"Redis CPU per message, Take+Ack, 100 B (concurrent)", "ackd Take+Ack ≤ 1.2x Streams COUNT 1", "ackd", "streams", cpu, 1.2, false, small, every},
		{"Redis CPU per message, Consume, 100 B (concurrent)", "ackd Consume ≤ 1.0x Streams COUNT 1", "ackd-consume", "streams", cpu, 1.0, false, small, every},
		{"Redis CPU per message, Take+Ack, 10 KB (concurrent)", "ackd Take+Ack ≤ 1.5x Streams COUNT 1", "ackd", "streams", cpu, 1.5, false, large, every},
		{"Redis CPU per message, Consume, 10 KB (concurrent)", "ackd Consume ≤ 1.5x Streams COUNT 1", "ackd-consume", "streams", cpu, 1.5, false, large, every},
	}
	for _, c := range checks {
		var figs []string
		met, total := 0, 0
		for _, size := range c.sizes {
			for _, n := range b.opt.consumers {
				if !c.consumers(n) {
					continue
				}
				num, ok1 := all[fmt.Sprintf("%s/%d/%d", c.num, size, n)]
				den, ok2 := all[fmt.Sprintf("%s/%d/%d", c.den, size, n)]
				if !ok1 || !ok2 {
					continue
				}
				x := c.field(num) / c.field(den)
				total++
				if c.atLeast && x >= c.limit || !c.atLeast && x <= c.limit {
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
