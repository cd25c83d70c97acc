package lease_test

// BenchmarkConsume compares Consume, the consumer ackd recommends, with the
// Streams consumers a user would write instead, while a producer pushes:
//
//	go test -run '^$' -bench Consume -benchtime 20000x ./lease/
//
// Every variant runs w workers against the same private redis-server in
// the same run, and one producer goroutine pushes batches of 100 as they
// go, never more than benchBacklog messages ahead of them: the queue is
// neither pre-filled nor empty for long, as in a system that keeps up.
// One op is one message. The timer runs from the start of the workers
// until the last message's handler (or read) is done; Redis CPU and
// commands are counted from then until everything is acked, and include
// the producer's pushes (PushBatch for ackd, a pipeline of XADDs for
// Streams).
//
//   - streams-single: each worker loops XREADGROUP COUNT 1 BLOCK, XACK.
//   - streams-batch: each worker loops XREADGROUP COUNT 100 BLOCK, then
//     XACK of what it read.
//   - consume: Consume with Workers w and a handler that returns nil.
//   - consume-noprefetch: the same with ConsumeOpts.Prefetch off.
//
// Besides msgs/s, Redis CPU and commands per message, scripts/msg counts
// the script runs (EVALSHA, FCALL) per message: how many messages one run
// carries.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

const benchBacklog = 1000

var benchConsumeWorkers = []int{1, 8, 64}

func BenchmarkConsume(b *testing.B) {
	e := newBenchEnv(b)
	// A pool for 64 workers blocked at once, and the producer.
	rdb := redis.NewClient(&redis.Options{Addr: e.rdb.Options().Addr, PoolSize: 2*slices.Max(benchConsumeWorkers) + 8})
	b.Cleanup(func() { _ = rdb.Close() })
	e = &benchEnv{rdb: rdb, payload: e.payload}
	for _, w := range benchConsumeWorkers {
		b.Run(fmt.Sprintf("streams-single/w=%d", w), func(b *testing.B) {
			e.reset(b)
			e.streamConsume(b, w, 1)
		})
		b.Run(fmt.Sprintf("streams-batch/w=%d", w), func(b *testing.B) {
			e.reset(b)
			e.streamConsume(b, w, benchBatch)
		})
		b.Run(fmt.Sprintf("consume/w=%d", w), func(b *testing.B) {
			e.consume(b, e.reset(b), w, 0)
		})
		b.Run(fmt.Sprintf("consume-noprefetch/w=%d", w), func(b *testing.B) {
			e.consume(b, e.reset(b), w, -1)
		})
	}
}

// flow is one variant's producer and its count of finished messages.
type flow struct {
	total    int
	done     atomic.Int64 // messages handled
	finished chan struct{}
	once     sync.Once
	end      time.Time
}

func newFlow(total int) *flow { return &flow{total: total, finished: make(chan struct{})} }

// handled counts n messages done; the one that completes the total stops
// the clock.
func (f *flow) handled(n int) {
	if f.done.Add(int64(n)) >= int64(f.total) {
		f.once.Do(func() {
			f.end = time.Now()
			close(f.finished)
		})
	}
}

// produce calls push with batches of up to benchBatch until total were
// pushed, keeping at most benchBacklog ahead of done.
func (f *flow) produce(ctx context.Context, push func(ctx context.Context, n int) error) error {
	for pushed := 0; pushed < f.total; {
		if int64(pushed)-f.done.Load() > benchBacklog-benchBatch {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Microsecond):
			}
			continue
		}
		n := min(benchBatch, f.total-pushed)
		if err := push(ctx, n); err != nil {
			return err
		}
		pushed += n
	}
	return nil
}

// run times work: it starts the producer and work, stops the clock when
// the flow has finished, then calls settle (which must return once
// everything is acked) and reports the figures.
func (e *benchEnv) run(b *testing.B, f *flow, push func(ctx context.Context, n int) error, work func(ctx context.Context) error, settle func()) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cpu0, cmds0, scripts0 := e.cpu(b), e.commands(b), e.scripts(b)
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	start := time.Now()
	b.ResetTimer()
	go func() {
		defer wg.Done()
		if err := f.produce(ctx, push); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("producer: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := work(ctx); err != nil && ctx.Err() == nil {
			errc <- err
		}
	}()
	select {
	case <-f.finished:
	case err := <-errc:
		cancel()
		wg.Wait()
		b.Fatal(err)
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	settle()
	cpu1, cmds1, scripts1 := e.cpu(b), e.commands(b), e.scripts(b)
	elapsed := f.end.Sub(start)
	b.ReportMetric(float64(scripts1-scripts0)/float64(f.total), "scripts/msg")
	b.ReportMetric((cpu1-cpu0)*1e6/float64(f.total), "redis-cpu-us/msg")
	b.ReportMetric(float64(cmds1-cmds0)/float64(f.total), "redis-cmds/msg")
	b.ReportMetric(float64(f.total)/elapsed.Seconds(), "msgs/s")
}

// streamConsume runs w Streams workers reading count entries at a time.
func (e *benchEnv) streamConsume(b *testing.B, w, count int) {
	ctx := b.Context()
	if err := e.rdb.XGroupCreateMkStream(ctx, "s", "g", "$").Err(); err != nil {
		b.Fatal(err)
	}
	f := newFlow(b.N)
	push := func(ctx context.Context, n int) error {
		pipe := e.rdb.Pipeline()
		for range n {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []any{"p", e.payload}})
		}
		_, err := pipe.Exec(ctx)
		return err
	}
	work := func(ctx context.Context) error {
		return eachWorker(w, func(i int) error { return benchStreamWorker(ctx, e.rdb, "c"+strconv.Itoa(i), count, f) })
	}
	e.run(b, f, push, work, func() {
		n, err := e.rdb.XPending(context.Background(), "s", "g").Result()
		if err != nil || n.Count != 0 {
			b.Fatalf("XPENDING after the run: %+v, %v", n, err)
		}
	})
}

// benchStreamWorker reads and acks entries of stream "s" in group "g" as
// consumer name until the flow has finished or ctx is cancelled.
func benchStreamWorker(ctx context.Context, rdb *redis.Client, name string, count int, f *flow) error {
	for f.done.Load() < int64(f.total) {
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: "g", Consumer: name, Streams: []string{"s", ">"}, Count: int64(count), Block: 100 * time.Millisecond,
		}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		ids := make([]string, 0, count)
		for _, m := range res[0].Messages {
			ids = append(ids, m.ID)
		}
		if err := rdb.XAck(context.WithoutCancel(ctx), "s", "g", ids...).Err(); err != nil {
			return err
		}
		f.handled(len(ids))
	}
	return nil
}

// scripts counts the script runs Redis has served (INFO commandstats).
func (e *benchEnv) scripts(b *testing.B) int64 {
	b.Helper()
	var total int64
	for _, name := range []string{"cmdstat_evalsha", "cmdstat_eval", "cmdstat_fcall", "cmdstat_fcall_ro"} {
		stats, ok := e.info(b, "commandstats")[name]
		if !ok {
			continue
		}
		total += statCalls(b, name, stats)
	}
	return total
}

// consume runs Consume with w workers and ConsumeOpts.Prefetch prefetch.
func (e *benchEnv) consume(b *testing.B, c *lease.Client, w, prefetch int) {
	f := newFlow(b.N)
	payloads := make([][]byte, benchBatch)
	for i := range payloads {
		payloads[i] = e.payload
	}
	push := func(ctx context.Context, n int) error {
		_, err := c.PushBatch(ctx, "q", payloads[:n], nil)
		return err
	}
	work := func(ctx context.Context) error {
		return c.Consume(ctx, "q", func(context.Context, *lease.Lease) error {
			f.handled(1)
			return nil
		}, &lease.ConsumeOpts{Workers: w, Prefetch: prefetch, ErrorFunc: func(_ *lease.Lease, err error) { b.Error(err) }})
	}
	e.run(b, f, push, work, func() {
		s, err := c.Stats(context.Background(), "q")
		if err != nil || s.Ready != 0 || s.InFlight != 0 {
			b.Fatalf("Stats after the run: %+v, %v", s, err)
		}
	})
}

// BenchmarkPushToHandler measures push-to-handler latency while the
// consumer is idle, waiting for messages:
//
//	go test -run '^$' -bench PushToHandler -benchtime 2000x ./lease/
//
// One op is one message, pushed alone (one round trip) once the one
// before was received, at most one per millisecond, so that the consumer
// is waiting again when it comes. Latency runs from just before the push
// is sent to the handler starting (Consume) or XREADGROUP returning
// (Streams), on one clock; p50-us and p99-us are reported.
//
//   - streams-block: w consumers loop XREADGROUP COUNT 1 BLOCK, XACK.
//   - take: w consumers loop Take with a Wait (the blocking take in one
//     round trip), Ack: the engine's floor for Consume.
//   - consume: Consume with Workers w.
func BenchmarkPushToHandler(b *testing.B) {
	e := newBenchEnv(b)
	for _, w := range []int{1, 8} {
		b.Run(fmt.Sprintf("streams-block/w=%d", w), func(b *testing.B) {
			e.reset(b)
			ctx := b.Context()
			if err := e.rdb.XGroupCreateMkStream(ctx, "s", "g", "$").Err(); err != nil {
				b.Fatal(err)
			}
			e.latency(b, w, func(ctx context.Context, p []byte) error {
				return e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []any{"p", p}}).Err()
			}, func(ctx context.Context, got func([]byte)) error {
				return eachWorker(w, func(i int) error { return benchStreamReceiver(ctx, e.rdb, "c"+strconv.Itoa(i), got) })
			})
		})
		b.Run(fmt.Sprintf("take/w=%d", w), func(b *testing.B) {
			c := e.reset(b)
			e.latency(b, w, func(ctx context.Context, p []byte) error {
				_, err := c.Push(ctx, "q", p, nil)
				return err
			}, func(ctx context.Context, got func([]byte)) error {
				return eachWorker(w, func(int) error { return benchTakeReceiver(ctx, c, got) })
			})
		})
		b.Run(fmt.Sprintf("consume/w=%d", w), func(b *testing.B) {
			c := e.reset(b)
			// Consume waits on one connection, whatever w.
			e.latency(b, 1, func(ctx context.Context, p []byte) error {
				_, err := c.Push(ctx, "q", p, nil)
				return err
			}, func(ctx context.Context, got func([]byte)) error {
				return c.Consume(ctx, "q", func(_ context.Context, l *lease.Lease) error {
					got(l.Payload)
					return nil
				}, &lease.ConsumeOpts{Workers: w, ErrorFunc: func(_ *lease.Lease, err error) { b.Error(err) }})
			})
		})
	}
}

// benchStreamReceiver reads entries of stream "s" in group "g" one at a
// time as consumer name, hands their payload to got and acks them, until
// ctx is cancelled.
func benchStreamReceiver(ctx context.Context, rdb *redis.Client, name string, got func([]byte)) error {
	for ctx.Err() == nil {
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: "g", Consumer: name, Streams: []string{"s", ">"}, Count: 1, Block: time.Second,
		}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		m := res[0].Messages[0]
		p, _ := m.Values["p"].(string)
		got([]byte(p))
		if err := rdb.XAck(context.WithoutCancel(ctx), "s", "g", m.ID).Err(); err != nil {
			return err
		}
	}
	return nil
}

// benchTakeReceiver takes messages of queue "q" one at a time with a
// wait, hands their payload to got and acks them, until ctx is cancelled.
func benchTakeReceiver(ctx context.Context, c *lease.Client, got func([]byte)) error {
	for ctx.Err() == nil {
		l, err := c.Take(ctx, "q", &lease.TakeOpts{Wait: time.Second})
		if errors.Is(err, lease.ErrNoMessage) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		got(l.Payload)
		if err := l.Ack(context.WithoutCancel(ctx)); err != nil {
			return err
		}
	}
	return nil
}

// latency runs consume (which calls got with each payload it receives)
// and, once waiting connections are blocked in Redis, pushes b.N
// timestamped payloads one at a time.
func (e *benchEnv) latency(b *testing.B, waiting int, push func(ctx context.Context, p []byte) error, consume func(ctx context.Context, got func([]byte)) error) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ds := make([]time.Duration, 0, b.N)
	var mu sync.Mutex
	recv := make(chan struct{}, 1)
	got := func(p []byte) {
		now := time.Now()
		sent, err := strconv.ParseInt(string(p), 10, 64)
		if err != nil {
			b.Errorf("payload %q: %v", p, err)
		}
		mu.Lock()
		ds = append(ds, now.Sub(time.Unix(0, sent)))
		mu.Unlock()
		recv <- struct{}{}
	}
	errc := make(chan error, 1)
	go func() { errc <- consume(ctx, got) }()
	defer func() {
		cancel()
		if err := <-errc; err != nil {
			b.Error(err)
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, _ := strconv.Atoi(e.info(b, "clients")["blocked_clients"])
		if n >= waiting {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d connections waiting after 10s", n, waiting)
		}
		time.Sleep(time.Millisecond)
	}
	b.ResetTimer()
	next := time.Now()
	for range b.N {
		time.Sleep(time.Until(next))
		next = time.Now().Add(time.Millisecond)
		if err := push(ctx, strconv.AppendInt(nil, time.Now().UnixNano(), 10)); err != nil {
			b.Fatal(err)
		}
		select {
		case <-recv:
		case <-time.After(10 * time.Second):
			b.Fatal("a message not received within 10s")
		}
	}
	b.StopTimer()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(ds)
	b.ReportMetric(float64(ds[len(ds)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(ds[len(ds)*99/100].Microseconds()), "p99-us")
}

// eachWorker runs fn(0) .. fn(w-1) at once and returns the first error
// any of them returned, after all have.
func eachWorker(w int, fn func(i int) error) error {
	var wg sync.WaitGroup
	errc := make(chan error, w)
	for i := range w {
		wg.Go(func() {
			if err := fn(i); err != nil {
				errc <- err
			}
		})
	}
	wg.Wait()
	close(errc)
	return <-errc
}
