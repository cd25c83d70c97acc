package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

const (
	redeliveryConsumers = 4
	redeliveryLease     = 2 * time.Second // shortest lease; the others spread above it
	streamsPollInterval = time.Second
	streamsMinIdle      = time.Second
)

// setting is the state of the database around the measured leases.
type setting struct {
	name    string
	streams string // the same setting for the Streams side, "" to skip
	prepare func(ctx context.Context, b *bench, streams bool) error
}

func (b *bench) settings() []setting {
	bg := 100_000
	ttlKeys := 1_000_000
	if b.opt.quick {
		bg, ttlKeys = 10_000, 100_000
	}
	return []setting{
		{name: "empty Redis", streams: "empty Redis", prepare: func(context.Context, *bench, bool) error { return nil }},
		{
			name:    fmt.Sprintf("%s other leases in flight (1 h leases, another queue)", fmtNum(float64(bg))),
			streams: fmt.Sprintf("%s other pending entries (another stream)", fmtNum(float64(bg))),
			prepare: func(ctx context.Context, b *bench, streams bool) error {
				if streams {
					return b.fillPendingStream(ctx, "bg", bg)
				}
				return b.fillLeases(ctx, "bg", bg)
			},
		},
		{
			name:    fmt.Sprintf("%s unrelated keys with 1 h TTLs, same database", fmtNum(float64(ttlKeys))),
			streams: fmt.Sprintf("%s unrelated keys with 1 h TTLs, same database", fmtNum(float64(ttlKeys))),
			prepare: func(ctx context.Context, b *bench, _ bool) error { return b.fillTTLKeys(ctx, ttlKeys) },
		},
	}
}

func (b *bench) fillLeases(ctx context.Context, queue string, n int) error {
	lc, err := lease.New(b.ctl, &lease.Config{LeaseFor: time.Hour})
	if err != nil {
		return err
	}
	ps := repeated(bytes.Repeat([]byte("b"), 100), fillChunk)
	for left := n; left > 0; left -= fillChunk {
		k := min(left, fillChunk)
		if _, err := lc.PushBatch(ctx, queue, ps[:k], nil); err != nil {
			return err
		}
		if _, err := lc.TakeBatch(ctx, queue, k, nil); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) fillPendingStream(ctx context.Context, stream string, n int) error {
	payload := bytes.Repeat([]byte("b"), 100)
	for left := n; left > 0; left -= fillChunk {
		_, err := b.ctl.Pipelined(ctx, func(p redis.Pipeliner) error {
			for range min(left, fillChunk) {
				p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"p", payload}})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := b.ctl.XGroupCreate(ctx, stream, "g", "0").Err(); err != nil {
		return err
	}
	for read := 0; read < n; {
		res, err := b.ctl.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "busy", Streams: []string{stream, ">"}, Count: fillChunk, Block: -1}).Result()
		if err != nil {
			return err
		}
		read += len(res[0].Messages)
	}
	return nil
}

func (b *bench) fillTTLKeys(ctx context.Context, n int) error {
	const chunk = 10_000
	for i := 0; i < n; i += chunk {
		_, err := b.ctl.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < min(i+chunk, n); j++ {
				p.Set(ctx, fmt.Sprintf("unrelated:%d", j), "v", time.Hour)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

type redeliveryResult struct {
	setting string
	d       dist
	missing int
	note    string
	probe   dist   // how late ackbench's own timers fired meanwhile
	hist    string // the daemon's ackd_redelivery_lag_seconds, summarised
}

// redelivery measures how long after its deadline an unacked lease is
// back with a consumer, with the real daemon, beside Streams with an
// XAUTOCLAIM poller; then the bulk requeue of leases that all expire at
// once.
func (b *bench) redelivery(ctx context.Context) error {
	var s strings.Builder
	s.WriteString("## 5. Redelivery after the deadline\n\n")
	if _, err := b.ackdBinary(ctx); err != nil {
		b.logf("redelivery skipped: %v", err)
		fmt.Fprintf(&s, "Skipped: the daemon did not build (%s).\n", firstLine(err.Error()))
		b.sections = append(b.sections, s.String())
		return nil
	}
	leases, spread := 1000, 3*time.Second
	bulk := 100_000
	if b.opt.quick {
		leases, bulk = 200, 10_000
	}
	var ackdRes, streamsRes []redeliveryResult
	for _, st := range b.settings() {
		b.logf("redelivery ackd: %s", st.name)
		r, err := b.ackdRedelivery(ctx, st, leases, spread)
		if err != nil {
			return fmt.Errorf("ackd, %s: %w", st.name, err)
		}
		b.logf("  p50 %v p99 %v max %v missing %d", r.d.p50, r.d.p99, r.d.max, r.missing)
		ackdRes = append(ackdRes, r)
	}
	for _, st := range b.settings() {
		if st.streams == "" {
			continue
		}
		b.logf("redelivery streams: %s", st.streams)
		r, err := b.streamsRedelivery(ctx, st, leases, spread)
		if err != nil {
			return fmt.Errorf("streams, %s: %w", st.streams, err)
		}
		b.logf("  p50 %v p99 %v max %v missing %d", r.d.p50, r.d.p99, r.d.max, r.missing)
		streamsRes = append(streamsRes, r)
	}

	fmt.Fprintf(&s, "%s leases of 100 B messages with deadlines spread evenly over %v (leases of %v to %v), never acked. "+
		"The real daemon (./cmd/ackd, default settings) runs against the server. %d consumers wait in Take with Wait; "+
		"each re-take (attempt 2) records lag = take return − the lease's old Deadline() (ackd and Redis share the machine's "+
		"clock; a lease is due when Redis's millisecond clock is past its deadline, so 1 ms is the floor). "+
		"Streams: the same number of entries delivered one at a time over the same spread, never acked, and a poller that runs "+
		"XAUTOCLAIM (min-idle-time %v = the lease, COUNT 1000) every %v; lag = claim return − (delivery + min-idle-time). "+
		"The daemon is started after the setting is prepared and stopped after each measurement. Targets: p99 ≤ 10 ms, max ≤ 50 ms.\n\n",
		fmtNum(float64(leases)), spread, redeliveryLease, redeliveryLease+spread, redeliveryConsumers, streamsMinIdle, streamsPollInterval)
	var rows [][]string
	for i, r := range ackdRes {
		rows = append(rows, []string{"ackd daemon", r.setting, fmtDur(r.d.p50), fmtDur(r.d.p99), fmtDur(r.d.max), fmt.Sprint(r.missing),
			metMissed(r.missing == 0 && r.d.p99 <= 10*time.Millisecond && r.d.max <= 50*time.Millisecond),
			r.hist, fmtDur(r.probe.p99) + " / " + fmtDur(r.probe.max), r.note})
		if i < len(streamsRes) {
			sr := streamsRes[i]
			rows = append(rows, []string{"Streams + XAUTOCLAIM every 1 s", sr.setting, fmtDur(sr.d.p50), fmtDur(sr.d.p99), fmtDur(sr.d.max),
				fmt.Sprint(sr.missing), "", "", "", sr.note})
		}
	}
	s.WriteString(table([]string{"system", "setting", "p50", "p99", "max", "not back", "target",
		"daemon's own lag histogram", "ackbench timer lateness p99 / max", "notes"}, rows))
	s.WriteString("\nThe daemon's own lag histogram is its ackd_redelivery_lag_seconds metric (Redis time at the requeue minus the deadline, " +
		"read from /metrics before it stops): the share of requeues in each bucket up to 50 ms. The timer lateness column is a " +
		"calibration for the machine: a goroutine in ackbench sleeping to targets 3 ms apart during the same measurement, and how " +
		"late it woke. When it is late by tens of ms, so is any process's timer on this machine, the daemon's included.\n\n")
	var worstP99, worstMax time.Duration
	missing := 0
	var figs []string
	for _, r := range ackdRes {
		worstP99, worstMax = max(worstP99, r.d.p99), max(worstMax, r.d.max)
		missing += r.missing
		figs = append(figs, fmt.Sprintf("%s: p99 %s, max %s", r.setting, fmtDur(r.d.p99), fmtDur(r.d.max)))
	}
	b.addTarget("redelivery lag", "ackd p99 ≤ 10 ms, max ≤ 50 ms (every setting)", strings.Join(figs, "; "),
		missing == 0 && worstP99 <= 10*time.Millisecond && worstMax <= 50*time.Millisecond)

	b.logf("bulk requeue of %d leases", bulk)
	br, err := b.bulkRequeue(ctx, bulk)
	if err != nil {
		return fmt.Errorf("bulk requeue: %w", err)
	}
	fmt.Fprintf(&s, "### Bulk: %s leases expiring at the same moment\n\n", fmtNum(float64(bulk)))
	fmt.Fprintf(&s, "Taken in batches of 1,000, each with the lease that ends at one common instant (deadlines ended up within %s "+
		"of each other), never acked, daemon running, no consumers. LLEN of the ready list polled every 1 ms.\n\n", fmtDur(br.spread))
	s.WriteString(table([]string{"first back after the earliest deadline", "all back after the earliest deadline", "all back after the latest deadline", "target (all within 2 s)"},
		[][]string{{fmtDur(br.first), fmtDur(br.allFromEarliest), fmtDur(br.allFromLatest), metMissed(br.done && br.allFromEarliest <= 2*time.Second)}}))
	if !br.done {
		fmt.Fprintf(&s, "\nOnly %s of %s were back when the measurement gave up.\n", fmtNum(float64(br.back)), fmtNum(float64(bulk)))
	}
	b.addTarget("bulk requeue", fmt.Sprintf("%s leases expiring together all back within 2 s", fmtNum(float64(bulk))),
		fmt.Sprintf("%s after the earliest deadline", fmtDur(br.allFromEarliest)), br.done && br.allFromEarliest <= 2*time.Second)
	b.sections = append(b.sections, s.String())
	return b.ctl.FlushAll(ctx).Err()
}

func metMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "missed"
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func (b *bench) ackdRedelivery(ctx context.Context, st setting, leases int, spread time.Duration) (redeliveryResult, error) {
	r := redeliveryResult{setting: st.name}
	if err := b.ctl.FlushAll(ctx).Err(); err != nil {
		return r, err
	}
	if err := st.prepare(ctx, b, false); err != nil {
		return r, fmt.Errorf("prepare: %w", err)
	}
	d, err := b.startDaemon(ctx)
	if err != nil {
		return r, err
	}
	defer d.kill()
	lc, err := lease.New(b.rdb, &lease.Config{MaxDeliveries: lease.Unlimited})
	if err != nil {
		return r, err
	}
	const queue = "rd"
	ps := repeated(bytes.Repeat([]byte("r"), 100), leases)
	if _, err := lc.PushBatch(ctx, queue, ps, nil); err != nil {
		return r, err
	}
	deadlines := make(map[string]time.Time, leases)
	var last time.Time
	for i := range leases {
		l, err := lc.Take(ctx, queue, &lease.TakeOpts{LeaseFor: redeliveryLease + time.Duration(i)*spread/time.Duration(leases)})
		if err != nil {
			return r, err
		}
		deadlines[l.ID] = l.Deadline()
		last = l.Deadline()
	}
	if time.Until(last.Add(-spread)) < 0 {
		r.note = "taking the leases took longer than the shortest lease"
	}
	stopProbe := timerProbe()
	lags, err := b.retake(ctx, lc, queue, deadlines, time.Until(last)+30*time.Second)
	r.probe = stopProbe()
	if err != nil {
		return r, err
	}
	r.d = distOf(lags)
	r.missing = leases - len(lags)
	r.hist = d.lagHistogram()
	if err := d.stop(); err != nil {
		return r, err
	}
	if strings.Contains(d.out.String(), "level=WARN") || strings.Contains(d.out.String(), "level=ERROR") {
		b.logf("ackd logged:\n%s", d.logTail(10))
	}
	return r, nil
}

// retake runs consumers that take the redelivered leases and returns each
// one's lag past its old deadline.
func (b *bench) retake(ctx context.Context, lc *lease.Client, queue string, deadlines map[string]time.Time, timeout time.Duration) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		mu   sync.Mutex
		lags []time.Duration
		seen = map[string]bool{}
		wg   sync.WaitGroup
		errc = make(chan error, redeliveryConsumers)
	)
	for range redeliveryConsumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				l, err := lc.Take(ctx, queue, &lease.TakeOpts{Wait: time.Second, LeaseFor: time.Hour})
				now := time.Now()
				if errors.Is(err, lease.ErrNoMessage) || ctx.Err() != nil {
					continue
				}
				if err != nil {
					errc <- err
					cancel()
					return
				}
				mu.Lock()
				dl, ok := deadlines[l.ID]
				if ok && l.Attempt >= 2 && !seen[l.ID] {
					seen[l.ID] = true
					lags = append(lags, now.Sub(dl))
				}
				done := len(seen) == len(deadlines)
				mu.Unlock()
				if err := l.Ack(ctx); err != nil && ctx.Err() == nil {
					errc <- err
					cancel()
					return
				}
				if done {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return nil, err
	default:
	}
	return lags, nil
}

func (b *bench) streamsRedelivery(ctx context.Context, st setting, leases int, spread time.Duration) (redeliveryResult, error) {
	r := redeliveryResult{setting: st.streams}
	if err := b.ctl.FlushAll(ctx).Err(); err != nil {
		return r, err
	}
	if err := st.prepare(ctx, b, true); err != nil {
		return r, fmt.Errorf("prepare: %w", err)
	}
	const stream = "rs"
	payload := bytes.Repeat([]byte("r"), 100)
	_, err := b.ctl.Pipelined(ctx, func(p redis.Pipeliner) error {
		for range leases {
			p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"p", payload}})
		}
		return nil
	})
	if err != nil {
		return r, err
	}
	if err := b.ctl.XGroupCreate(ctx, stream, "g", "0").Err(); err != nil {
		return r, err
	}
	var (
		mu        sync.Mutex
		delivered = make(map[string]time.Time, leases)
		lags      []time.Duration
	)
	ctx, cancel := context.WithTimeout(ctx, spread+streamsMinIdle+30*time.Second)
	defer cancel()
	pollErr := make(chan error, 1)
	go func() {
		t := time.NewTicker(streamsPollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				pollErr <- nil
				return
			case <-t.C:
			}
			for start := "0-0"; ; {
				msgs, next, err := b.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
					Stream: stream, Group: "g", MinIdle: streamsMinIdle, Start: start, Count: 1000, Consumer: "reclaimer",
				}).Result()
				now := time.Now()
				if err != nil {
					if ctx.Err() != nil {
						pollErr <- nil
					} else {
						pollErr <- fmt.Errorf("XAUTOCLAIM: %w", err)
					}
					return
				}
				mu.Lock()
				var ids []string
				for _, m := range msgs {
					ids = append(ids, m.ID)
					if at, ok := delivered[m.ID]; ok {
						lags = append(lags, now.Sub(at.Add(streamsMinIdle)))
						delete(delivered, m.ID)
					}
				}
				done := len(lags) == leases
				mu.Unlock()
				// The reclaiming consumer processes and acks what it got,
				// or the next poll would claim it again.
				if len(ids) > 0 {
					if err := b.rdb.XAck(ctx, stream, "g", ids...).Err(); err != nil && ctx.Err() == nil {
						pollErr <- fmt.Errorf("XACK: %w", err)
						return
					}
				}
				if done {
					cancel()
				}
				if next == "0-0" || next == "" {
					break
				}
				start = next
			}
		}
	}()
	start := time.Now()
	for i := range leases {
		if d := time.Until(start.Add(time.Duration(i) * spread / time.Duration(leases))); d > 0 {
			time.Sleep(d)
		}
		res, err := b.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "dies", Streams: []string{stream, ">"}, Count: 1, Block: -1}).Result()
		now := time.Now()
		if err != nil {
			return r, fmt.Errorf("XREADGROUP: %w", err)
		}
		mu.Lock()
		delivered[res[0].Messages[0].ID] = now
		mu.Unlock()
	}
	<-ctx.Done()
	if err := <-pollErr; err != nil {
		return r, err
	}
	mu.Lock()
	defer mu.Unlock()
	r.d = distOf(lags)
	r.missing = leases - len(lags)
	return r, nil
}

type bulkResult struct {
	spread, first, allFromEarliest, allFromLatest time.Duration
	back                                          int64
	done                                          bool
}

// errBulkSlow is bulkRequeueBy's when taking the leases took too long for
// the instant chosen.
var errBulkSlow = errors.New("taking the leases took too long")

// bulkRequeue takes n leases that all end at one instant and watches the
// ready list fill up again. The instant is 6 s ahead, or 30 s on a machine
// too busy to take the leases in time.
func (b *bench) bulkRequeue(ctx context.Context, n int) (bulkResult, error) {
	r, err := b.bulkRequeueBy(ctx, n, 6*time.Second)
	if errors.Is(err, errBulkSlow) {
		b.logf("  %v; again with 30 s", err)
		r, err = b.bulkRequeueBy(ctx, n, 30*time.Second)
	}
	return r, err
}

func (b *bench) bulkRequeueBy(ctx context.Context, n int, ahead time.Duration) (bulkResult, error) {
	var r bulkResult
	if err := b.ctl.FlushAll(ctx).Err(); err != nil {
		return r, err
	}
	d, err := b.startDaemon(ctx)
	if err != nil {
		return r, err
	}
	defer d.kill()
	lc, err := lease.New(b.ctl, &lease.Config{MaxDeliveries: lease.Unlimited})
	if err != nil {
		return r, err
	}
	const queue = "bulk"
	ps := repeated(bytes.Repeat([]byte("u"), 100), fillChunk)
	for left := n; left > 0; left -= fillChunk {
		if _, err := lc.PushBatch(ctx, queue, ps[:min(left, fillChunk)], nil); err != nil {
			return r, err
		}
	}
	at := time.Now().Add(ahead).Truncate(time.Millisecond)
	var earliest, latest time.Time
	for taken := 0; taken < n; {
		leaseFor := time.Until(at).Round(time.Millisecond)
		if leaseFor < 500*time.Millisecond {
			return r, fmt.Errorf("%w: more than %v", errBulkSlow, ahead-500*time.Millisecond)
		}
		ls, err := lc.TakeBatch(ctx, queue, min(fillChunk, n-taken), &lease.TakeOpts{LeaseFor: leaseFor})
		if err != nil {
			return r, err
		}
		for _, l := range ls {
			if earliest.IsZero() || l.Deadline().Before(earliest) {
				earliest = l.Deadline()
			}
			if l.Deadline().After(latest) {
				latest = l.Deadline()
			}
		}
		taken += len(ls)
	}
	r.spread = latest.Sub(earliest)
	k := lease.KeysFor(queue)
	var first time.Time
	giveUp := latest.Add(60 * time.Second)
	for {
		n64, err := b.ctl.LLen(ctx, k.Ready).Result()
		now := time.Now()
		if err != nil {
			return r, err
		}
		if n64 > 0 && first.IsZero() {
			first = now
		}
		r.back = n64
		if n64 >= int64(n) || now.After(giveUp) {
			r.done = n64 >= int64(n)
			if !first.IsZero() {
				r.first = first.Sub(earliest)
			}
			r.allFromEarliest = now.Sub(earliest)
			r.allFromLatest = now.Sub(latest)
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := d.stop(); err != nil {
		return r, err
	}
	return r, nil
}

// timerProbe sleeps to targets 3 ms apart until stopped and returns how
// late each wake-up was: the scheduling noise of the machine.
func timerProbe() (stop func() dist) {
	done := make(chan struct{})
	res := make(chan dist, 1)
	go func() {
		var late []time.Duration
		next := time.Now()
		for {
			next = next.Add(3 * time.Millisecond)
			select {
			case <-done:
				res <- distOf(late)
				return
			case <-time.After(time.Until(next)):
				late = append(late, time.Since(next))
			}
		}
	}()
	return func() dist {
		close(done)
		return <-res
	}
}
