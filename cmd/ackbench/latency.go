package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

const (
	latencyConsumers = 8
	latencyInterval  = time.Millisecond // 1,000 msgs/s
)

// latencyImpl pushes one message carrying its send time and receives one.
type latencyImpl struct {
	name    string
	setup   func(ctx context.Context) error
	push    func(ctx context.Context, payload []byte) error
	receive func(ctx context.Context, w int) ([]byte, func(context.Context) error, error) // nil payload after a timed-out wait
}

func (b *bench) latencyImpls(lc *lease.Client) []latencyImpl {
	return []latencyImpl{
		{
			name: "plain list RPUSH/BLPOP",
			push: func(ctx context.Context, p []byte) error { return b.rdb.RPush(ctx, "q", p).Err() },
			receive: func(ctx context.Context, _ int) ([]byte, func(context.Context) error, error) {
				v, err := b.rdb.Do(ctx, "blpop", "q", "1").StringSlice()
				if errors.Is(err, redis.Nil) {
					return nil, nil, nil
				}
				if err != nil || len(v) != 2 {
					return nil, nil, fmt.Errorf("blpop: %v %v", v, err)
				}
				return []byte(v[1]), nil, nil
			},
		},
		{
			name:  "Streams XADD/XREADGROUP BLOCK",
			setup: func(ctx context.Context) error { return b.ctl.XGroupCreateMkStream(ctx, "s", "g", "$").Err() },
			push: func(ctx context.Context, p []byte) error {
				return b.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []any{"p", p}}).Err()
			},
			receive: func(ctx context.Context, w int) ([]byte, func(context.Context) error, error) {
				res, err := b.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
					Group: "g", Consumer: fmt.Sprint("c", w), Streams: []string{"s", ">"}, Count: 1, Block: time.Second,
				}).Result()
				if errors.Is(err, redis.Nil) {
					return nil, nil, nil
				}
				if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
					return nil, nil, fmt.Errorf("xreadgroup: %v %v", res, err)
				}
				m := res[0].Messages[0]
				p, _ := m.Values["p"].(string)
				return []byte(p), func(ctx context.Context) error { return b.rdb.XAck(ctx, "s", "g", m.ID).Err() }, nil
			},
		},
		{
			name:  "ackd Push/Take (Wait)",
			setup: func(ctx context.Context) error { return lc.Register(ctx, "q") },
			push: func(ctx context.Context, p []byte) error {
				_, err := lc.Push(ctx, "q", p, nil)
				return err
			},
			receive: func(ctx context.Context, _ int) ([]byte, func(context.Context) error, error) {
				l, err := lc.Take(ctx, "q", &lease.TakeOpts{Wait: time.Second})
				if errors.Is(err, lease.ErrNoMessage) {
					return nil, nil, nil
				}
				if err != nil {
					return nil, nil, err
				}
				return l.Payload, l.Ack, nil
			},
		},
	}
}

// latency paces single pushes at 1,000 msgs/s while consumers wait in
// their blocking take, and measures push start to take return.
func (b *bench) latency(ctx context.Context) error {
	samples := 5000
	if b.opt.quick {
		samples = 500
	}
	lc, err := b.reset(ctx)
	if err != nil {
		return err
	}
	type res struct {
		name string
		d    dist
	}
	var results []res
	for _, impl := range b.latencyImpls(lc) {
		b.logf("latency %s", impl.name)
		ds, err := b.runLatency(ctx, impl, samples)
		if err != nil {
			return fmt.Errorf("%s: %w", impl.name, err)
		}
		d := distOf(ds)
		b.logf("  p50 %v p99 %v max %v", d.p50, d.p99, d.max)
		results = append(results, res{impl.name, d})
	}
	var s strings.Builder
	s.WriteString("## 3. Push-to-take latency\n\n")
	fmt.Fprintf(&s, "%d messages of 100 B pushed one at a time (one round trip each), paced at 1,000 msgs/s, while %d consumers "+
		"already wait in a blocking take (BLPOP; XREADGROUP BLOCK; ackd Take with Wait, which blocks in BLMOVE and then runs "+
		"its take script). Latency is from just before the push is sent to the return of the take, on the client's clock; "+
		"consumers ack after the clock stops.\n\n", samples, latencyConsumers)
	var rows [][]string
	list, streams := results[0].d, results[1].d
	for _, r := range results {
		rows = append(rows, []string{r.name, fmtDur(r.d.p50), fmtDur(r.d.p99), fmtDur(r.d.max),
			ratio(float64(r.d.p50), float64(streams.p50)), ratio(float64(r.d.p99), float64(streams.p99)),
			ratio(float64(r.d.p50), float64(list.p50))})
	}
	s.WriteString(table([]string{"system", "p50", "p99", "max", "p50 ×Streams", "p99 ×Streams", "p50 ×list"}, rows))
	b.sections = append(b.sections, s.String())
	ackd := results[len(results)-1].d
	b.addTarget("push-to-take latency, consumer waiting", "ackd p50 ≤ 1.5x Streams XREADGROUP BLOCK p50",
		fmt.Sprintf("%s vs %s: %s", fmtDur(ackd.p50), fmtDur(streams.p50), ratio(float64(ackd.p50), float64(streams.p50))),
		float64(ackd.p50) <= 1.5*float64(streams.p50))
	return nil
}

func (b *bench) runLatency(ctx context.Context, impl latencyImpl, samples int) ([]time.Duration, error) {
	if err := b.ctl.FlushAll(ctx).Err(); err != nil {
		return nil, err
	}
	if impl.setup != nil {
		if err := impl.setup(ctx); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu   sync.Mutex
		ds   = make([]time.Duration, 0, samples)
		got  = make(chan struct{}, samples)
		errc = make(chan error, latencyConsumers)
		wg   sync.WaitGroup
	)
	for w := range latencyConsumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				p, ack, err := impl.receive(ctx, w)
				now := time.Now()
				if err != nil {
					if ctx.Err() == nil {
						errc <- err
					}
					return
				}
				if len(p) < 8 {
					continue
				}
				sent := time.Unix(0, int64(binary.BigEndian.Uint64(p)))
				mu.Lock()
				ds = append(ds, now.Sub(sent))
				mu.Unlock()
				if ack != nil {
					if err := ack(ctx); err != nil && ctx.Err() == nil {
						errc <- err
						return
					}
				}
				got <- struct{}{}
			}
		}()
	}
	defer wg.Wait()
	defer cancel()
	// Start pushing once every consumer is blocked in Redis.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := b.stats(ctx)
		if err != nil {
			return nil, err
		}
		if st.blocked >= latencyConsumers {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("only %d of %d consumers blocked after 10s", st.blocked, latencyConsumers)
		}
		time.Sleep(5 * time.Millisecond)
	}
	payload := make([]byte, 100)
	start := time.Now()
	for i := range samples {
		if d := time.Until(start.Add(time.Duration(i) * latencyInterval)); d > 0 {
			time.Sleep(d)
		}
		binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
		if err := impl.push(ctx, payload); err != nil {
			return nil, err
		}
	}
	timeout := time.After(30 * time.Second)
	for range samples {
		select {
		case <-got:
		case err := <-errc:
			return nil, err
		case <-timeout:
			return nil, errors.New("not every message arrived within 30s")
		}
	}
	cancel()
	mu.Lock()
	defer mu.Unlock()
	return ds, nil
}
