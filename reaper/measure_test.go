//go:build measure

// Measurements, not tests: go test -tags measure -run Measure -v ./reaper/
// They run a Reaper and print figures; they assert only correctness.
package reaper_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

// daemon is a Reaper with an Observer that keeps what the measurements
// print.
type daemon struct {
	rp      *reaper.Reaper
	mu      sync.Mutex
	lags    []time.Duration
	swept   int
	trigger map[string]int
}

func (d *daemon) Swept(_, trigger string, r lease.SweepResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.swept++
	d.lags = append(d.lags, r.Lags...)
	d.trigger[trigger] += r.Requeued
}
func (d *daemon) SweepFailed(string, string, error) {}
func (d *daemon) Scanned(int, time.Duration, error) {}

func wire(t *testing.T, rdb redis.UniversalClient) *daemon {
	d := &daemon{trigger: map[string]int{}}
	rp, err := reaper.New(rdb, &reaper.Config{Observer: d})
	if err != nil {
		t.Fatal(err)
	}
	d.rp = rp
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rp.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	redistest.WaitFor(t, 10*time.Second, rp.Subscribed, "subscribed")
	return d
}

// clientCommands counts, from INFO commandstats, the commands clients sent
// (total_commands_processed also counts the commands scripts run), leaving
// out this INFO itself and the CONFIG RESETSTAT that started the window.
func clientCommands(t *testing.T, rdb *redis.Client) int64 {
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	var seen []string
	for _, line := range strings.Split(info, "\r\n") {
		name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
		if !ok || line == name {
			continue
		}
		calls, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
		seen = append(seen, fmt.Sprintf("%s=%d", name, calls))
		switch name {
		case "info", "config|resetstat",
			"time", "zrange", "zrangebyscore", "lmove", "lpush", "rpush", "zrem", "hget", "hdel", "zadd", "publish", "lpop", "hset", "set", "hexists":
			// ours, or run inside scripts
		default:
			n += calls
		}
	}
	t.Logf("commandstats in the window: %v", seen)
	return n
}

// An idle daemon watching 100 queues, each with a lease due in an hour.
func TestMeasureIdle(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	lc, _ := lease.New(rdb, nil)
	for i := range 100 {
		q := fmt.Sprint("idle-", i)
		if _, err := lc.Push(ctx, q, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := lc.Take(ctx, q, &lease.TakeOpts{LeaseFor: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	d := wire(t, rdb)
	// The scan at start and the one after the first subscription.
	redistest.WaitFor(t, 10*time.Second, func() bool { return d.rp.Stats().Scanner.Scans >= 2 }, "start-up scans")
	window := 65 * time.Second
	if testing.Short() {
		window = 10 * time.Second
	}
	_ = rdb.ConfigResetStat(ctx).Err()
	time.Sleep(window) // the measurement window itself, not synchronisation
	n := clientCommands(t, rdb)
	t.Logf("idle, 100 queues with leases due in 1h: %d commands in %v = %.3f/s without scans; "+
		"a scan every %v adds 101/%v = %.3f/s; scans %d",
		n, window, float64(n)/window.Seconds(), reaper.ScanIntervalDefault, reaper.ScanIntervalDefault,
		101/reaper.ScanIntervalDefault.Seconds(), d.rp.Stats().Scanner.Scans)
}

// 1,000 short leases among 100,000 keys with a 1 h TTL, where Redis's
// expired events come minutes late.
func TestMeasureLagUnderTTLLoad(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	for i := 0; i < 100_000; i += 1000 {
		p := rdb.Pipeline()
		for j := i; j < i+1000; j++ {
			p.Set(ctx, fmt.Sprint("ttl:", j), "v", time.Hour)
		}
		if _, err := p.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	lc, _ := lease.New(rdb, nil)
	d := wire(t, rdb)
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 1000
	for i := range n {
		q := fmt.Sprint("load-", i%10)
		if _, err := lc.Push(ctx, q, []byte("x"), &lease.PushOpts{LeaseFor: time.Duration(50+rng.IntN(451)) * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if ls, err := lc.TakeBatch(ctx, fmt.Sprint("load-", i), 100, nil); err != nil || len(ls) != 100 {
			t.Fatalf("take: %d, %v", len(ls), err)
		}
	}
	redistest.WaitFor(t, 30*time.Second, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.lags) >= n
	}, "all requeued")
	d.mu.Lock()
	defer d.mu.Unlock()
	lags := slices.Clone(d.lags)
	slices.Sort(lags)
	q := func(p float64) time.Duration { return lags[int(p*float64(len(lags)-1))] }
	t.Logf("1000 leases of 50-500 ms among 100k TTL keys: lag p50 %v, p99 %v, max %v; requeued by trigger %v; "+
		"sweep calls %d; expired events heard so far %d",
		q(0.5), q(0.99), lags[len(lags)-1], d.trigger, d.swept, d.rp.Stats().Listener.EventsExpired)
}
