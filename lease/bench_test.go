package lease_test

// Benchmarks of the lease engine beside what a user would pick instead,
// each against the same private redis-server in the same run:
//
//	go test -run '^$' -bench . -benchtime 20000x ./lease/
//
// One op is one message (a batch of 100 is 100 ops), so ns/op and msgs/s
// compare directly across single and batched variants. Besides them every
// benchmark reports redis-cpu-us/msg: the server's used_cpu_user +
// used_cpu_sys delta (INFO cpu) over the timed part, per message. Compare
// variants by their ratio within one run; absolute figures move with
// whatever else the machine is doing. cmd/ackbench has the full suite.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

const (
	benchPayloadSize = 100
	benchBatch       = 100
	benchFillChunk   = 1000
)

var benchConcurrency = []int{1, 8}

// benchEnv is one redis-server shared by the sub-benchmarks of one
// top-level benchmark.
type benchEnv struct {
	rdb     *redis.Client
	payload []byte
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	srv := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 32})
	b.Cleanup(func() { _ = rdb.Close() })
	return &benchEnv{rdb: rdb, payload: bytes.Repeat([]byte("p"), benchPayloadSize)}
}

// reset empties the server and returns a fresh lease client.
func (e *benchEnv) reset(b *testing.B) *lease.Client {
	b.Helper()
	if err := e.rdb.FlushAll(b.Context()).Err(); err != nil {
		b.Fatal(err)
	}
	c, err := lease.New(e.rdb, &lease.Config{LeaseFor: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// info returns the fields of one INFO section.
func (e *benchEnv) info(b *testing.B, section string) map[string]string {
	b.Helper()
	info, err := e.rdb.Info(context.Background(), section).Result()
	if err != nil {
		b.Fatal(err)
	}
	out := map[string]string{}
	for line := range strings.SplitSeq(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out
}

// cpu returns the server's CPU time so far (INFO cpu), in seconds.
func (e *benchEnv) cpu(b *testing.B) float64 {
	b.Helper()
	var total float64
	for k, v := range e.info(b, "cpu") {
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("INFO cpu %s: %v", k, err)
			}
			total += f
		}
	}
	return total
}

// commands returns how many commands the server has run (INFO
// commandstats), those called by scripts included, INFO itself excluded.
func (e *benchEnv) commands(b *testing.B) int64 {
	b.Helper()
	var total int64
	for name, stats := range e.info(b, "commandstats") {
		if !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" {
			continue
		}
		total += statCalls(b, name, stats)
	}
	return total
}

// statCalls reads calls= of one INFO commandstats line.
func statCalls(b *testing.B, name, stats string) int64 {
	b.Helper()
	calls, _, _ := strings.Cut(strings.TrimPrefix(stats, "calls="), ",")
	n, err := strconv.ParseInt(calls, 10, 64)
	if err != nil {
		b.Fatalf("INFO commandstats %s: %v", name, err)
	}
	return n
}

// measure times total messages' worth of op on conc goroutines. Each
// goroutine claims up to batch messages at a time from a shared count and
// calls op(ctx, worker, n) for them. The timer runs only around the work.
func (e *benchEnv) measure(b *testing.B, conc, batch int, op func(ctx context.Context, worker, n int) error) {
	b.Helper()
	total := b.N
	ctx := context.Background()
	var left atomic.Int64
	left.Store(int64(total))
	claim := func() int {
		for {
			l := left.Load()
			if l <= 0 {
				return 0
			}
			n := min(l, int64(batch))
			if left.CompareAndSwap(l, l-n) {
				return int(n)
			}
		}
	}
	var (
		wg   sync.WaitGroup
		once sync.Once
		fail error
	)
	cpu0, cmds0 := e.cpu(b), e.commands(b)
	b.ResetTimer()
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := claim(); n > 0; n = claim() {
				if err := op(ctx, w, n); err != nil {
					once.Do(func() { fail = err })
					left.Store(0)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if fail != nil {
		b.Fatal(fail)
	}
	cpu1, cmds1 := e.cpu(b), e.commands(b)
	b.ReportMetric((cpu1-cpu0)*1e6/float64(total), "redis-cpu-us/msg")
	b.ReportMetric(float64(cmds1-cmds0)/float64(total), "redis-cmds/msg")
	b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "msgs/s")
}

// fillList RPUSHes n raw payloads onto key.
func (e *benchEnv) fillList(b *testing.B, key string, n int) {
	b.Helper()
	for n > 0 {
		k := min(n, benchFillChunk)
		vals := make([]any, k)
		for i := range vals {
			vals[i] = e.payload
		}
		if err := e.rdb.RPush(b.Context(), key, vals...).Err(); err != nil {
			b.Fatal(err)
		}
		n -= k
	}
}

// fillLease pushes n messages with lease.PushBatch.
func (e *benchEnv) fillLease(b *testing.B, c *lease.Client, queue string, n int) {
	b.Helper()
	for n > 0 {
		k := min(n, benchFillChunk)
		ps := make([][]byte, k)
		for i := range ps {
			ps[i] = e.payload
		}
		if _, err := c.PushBatch(b.Context(), queue, ps, nil); err != nil {
			b.Fatal(err)
		}
		n -= k
	}
}

// fillStream XADDs n entries and creates consumer group "g" at the start.
func (e *benchEnv) fillStream(b *testing.B, stream string, n int) {
	b.Helper()
	ctx := b.Context()
	for n > 0 {
		k := min(n, benchFillChunk)
		pipe := e.rdb.Pipeline()
		for range k {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"p", e.payload}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		n -= k
	}
	if err := e.rdb.XGroupCreateMkStream(ctx, stream, "g", "0").Err(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPush: ackd Push (one RPUSH of an envelope) vs a plain RPUSH.
func BenchmarkPush(b *testing.B) {
	e := newBenchEnv(b)
	for _, conc := range benchConcurrency {
		b.Run(fmt.Sprintf("rpush/c=%d", conc), func(b *testing.B) {
			e.reset(b)
			e.measure(b, conc, 1, func(ctx context.Context, _, _ int) error {
				return e.rdb.RPush(ctx, "q", e.payload).Err()
			})
		})
		b.Run(fmt.Sprintf("ackd/c=%d", conc), func(b *testing.B) {
			c := e.reset(b)
			e.measure(b, conc, 1, func(ctx context.Context, _, _ int) error {
				_, err := c.Push(ctx, "q", e.payload, nil)
				return err
			})
		})
	}
}

// BenchmarkTakeAck takes and acks messages of a pre-filled queue one at a
// time: ackd Take+Ack and AckAndTake (each call acks the message the one
// before took) beside a plain LPOP (no reliability), the reliable
// list pattern (BLMOVE to a per-consumer processing list, then LREM) and
// Streams (XREADGROUP COUNT 1, then XACK).
func BenchmarkTakeAck(b *testing.B) {
	e := newBenchEnv(b)
	for _, conc := range benchConcurrency {
		b.Run(fmt.Sprintf("lpop/c=%d", conc), func(b *testing.B) {
			e.reset(b)
			e.fillList(b, "q", b.N)
			e.measure(b, conc, 1, func(ctx context.Context, _, _ int) error {
				return e.rdb.LPop(ctx, "q").Err()
			})
		})
		b.Run(fmt.Sprintf("blmove-lrem/c=%d", conc), func(b *testing.B) {
			e.reset(b)
			e.fillList(b, "q", b.N)
			e.measure(b, conc, 1, func(ctx context.Context, w, _ int) error {
				proc := "q:processing:" + strconv.Itoa(w)
				v, err := e.rdb.BLMove(ctx, "q", proc, "LEFT", "RIGHT", time.Second).Result()
				if err != nil {
					return err
				}
				return e.rdb.LRem(ctx, proc, 1, v).Err()
			})
		})
		b.Run(fmt.Sprintf("streams/c=%d", conc), func(b *testing.B) {
			e.reset(b)
			e.fillStream(b, "s", b.N)
			e.measure(b, conc, 1, func(ctx context.Context, w, _ int) error {
				return benchStreamTakeAck(ctx, e.rdb, w, 1)
			})
		})
		b.Run(fmt.Sprintf("ackd/c=%d", conc), func(b *testing.B) {
			c := e.reset(b)
			e.fillLease(b, c, "q", b.N)
			e.measure(b, conc, 1, func(ctx context.Context, _, _ int) error {
				l, err := c.Take(ctx, "q", nil)
				if err != nil {
					return err
				}
				return l.Ack(ctx)
			})
		})
		b.Run(fmt.Sprintf("ackd-ackandtake/c=%d", conc), func(b *testing.B) {
			c := e.reset(b)
			e.fillLease(b, c, "q", b.N)
			held := make([]*lease.Lease, conc)
			e.measure(b, conc, 1, func(ctx context.Context, w, _ int) error {
				if held[w] == nil {
					l, err := c.Take(ctx, "q", nil)
					held[w] = l
					return err
				}
				l, err := held[w].AckAndTake(ctx, nil)
				if l == nil {
					return fmt.Errorf("AckAndTake took nothing: %w", err)
				}
				held[w] = l
				return err
			})
		})
	}
}

// BenchmarkTakeSparse is a shared queue that is rarely full: each op
// pushes one message, then takes what there is (ackd asking for up to 100
// at a time, or one) and acks it. A batch take must cost no more per
// message than Take here: what it returns, not what it asks for.
func BenchmarkTakeSparse(b *testing.B) {
	e := newBenchEnv(b)
	for _, conc := range benchConcurrency {
		for _, n := range []int{1, benchBatch} {
			b.Run(fmt.Sprintf("ackd-take%d/c=%d", n, conc), func(b *testing.B) {
				c := e.reset(b)
				k := lease.KeysFor("q")
				e.measure(b, conc, 1, func(ctx context.Context, _, _ int) error {
					if err := e.rdb.RPush(ctx, k.Ready, e.payload).Err(); err != nil {
						return err
					}
					ls, err := c.TakeBatch(ctx, "q", n, nil)
					if err != nil {
						return err
					}
					return c.AckBatch(ctx, ls)
				})
			})
		}
	}
}

// BenchmarkTakeAckBatch takes and acks 100 messages per round trip: ackd
// TakeBatch+AckBatch beside Streams XREADGROUP COUNT 100 + XACK of 100.
func BenchmarkTakeAckBatch(b *testing.B) {
	e := newBenchEnv(b)
	for _, conc := range benchConcurrency {
		b.Run(fmt.Sprintf("streams/c=%d", conc), func(b *testing.B) {
			e.reset(b)
			e.fillStream(b, "s", b.N)
			e.measure(b, conc, benchBatch, func(ctx context.Context, w, n int) error {
				return benchStreamTakeAck(ctx, e.rdb, w, n)
			})
		})
		b.Run(fmt.Sprintf("ackd/c=%d", conc), func(b *testing.B) {
			c := e.reset(b)
			e.fillLease(b, c, "q", b.N)
			e.measure(b, conc, benchBatch, func(ctx context.Context, _, n int) error {
				ls, err := c.TakeBatch(ctx, "q", n, nil)
				if err != nil {
					return err
				}
				if len(ls) != n {
					return fmt.Errorf("took %d of %d", len(ls), n)
				}
				return c.AckBatch(ctx, ls)
			})
		})
	}
}

// benchStreamTakeAck reads n new entries of stream "s" for consumer w of
// group "g" without blocking, then acks them in one XACK.
func benchStreamTakeAck(ctx context.Context, rdb *redis.Client, w, n int) error {
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: "g", Consumer: "c" + strconv.Itoa(w), Streams: []string{"s", ">"}, Count: int64(n), Block: -1,
	}).Result()
	if err != nil {
		return err
	}
	if len(res) != 1 || len(res[0].Messages) != n {
		return errors.New("stream: short read")
	}
	ids := make([]string, n)
	for i, m := range res[0].Messages {
		ids[i] = m.ID
	}
	return rdb.XAck(ctx, "s", "g", ids...).Err()
}
