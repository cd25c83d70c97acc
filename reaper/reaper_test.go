package reaper_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

const waitLong = 15 * time.Second

// observer records what a Reaper reports.
type observer struct {
	mu        sync.Mutex
	requeued  map[string]int // by trigger
	perQueue  map[string]int // requeued and dead-lettered, by queue
	lags      []time.Duration
	failures  int
	scans     int
	scanError error
}

func newObserver() *observer {
	return &observer{requeued: map[string]int{}, perQueue: map[string]int{}}
}

func (o *observer) Swept(queue, trigger string, r lease.SweepResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.requeued[trigger] += r.Requeued
	o.perQueue[queue] += r.Requeued + r.DeadLettered
	o.lags = append(o.lags, r.Lags...)
}

func (o *observer) SweepFailed(string, string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.failures++
}

func (o *observer) Scanned(_ int, _ time.Duration, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.scans++
	o.scanError = err
}

func (o *observer) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, v := range o.requeued {
		n += v
	}
	return n
}

// byTrigger returns a copy of the requeues by trigger.
func (o *observer) byTrigger() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return maps.Clone(o.requeued)
}

func (o *observer) scanned() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.scans
}

// start runs a Reaper over rdb until the test ends; Run must then return
// nil.
func start(t *testing.T, rdb redis.UniversalClient, cfg *reaper.Config) *reaper.Reaper {
	t.Helper()
	rp, err := reaper.New(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(waitLong):
			t.Errorf("Run did not return within %v of its context ending", waitLong)
		}
	})
	return rp
}

func newLeaseClient(t *testing.T, rdb redis.UniversalClient) *lease.Client {
	t.Helper()
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	return lc
}

func TestNewRejects(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	t.Cleanup(func() { _ = rdb.Close() })
	for _, tt := range []struct {
		cfg   reaper.Config
		field string
	}{
		{reaper.Config{Concurrency: -1}, "Config.Concurrency"},
		{reaper.Config{Concurrency: reaper.MaxConcurrency + 1}, "Config.Concurrency"},
		{reaper.Config{SweepLimit: -1}, "Config.SweepLimit"},
		{reaper.Config{SweepLimit: reaper.MaxSweepLimit + 1}, "Config.SweepLimit"},
		{reaper.Config{ScanInterval: -time.Second}, "Config.ScanInterval"},
		{reaper.Config{RetryDelay: -time.Second}, "Config.RetryDelay"},
		{reaper.Config{CheckInterval: -time.Second}, "Config.CheckInterval"},
		{reaper.Config{OutageCheckInterval: -time.Second}, "Config.OutageCheckInterval"},
		{reaper.Config{ListenerPingInterval: -time.Second}, "Config.ListenerPingInterval"},
		{reaper.Config{TopologyInterval: -time.Second}, "Config.TopologyInterval"},
		{reaper.Config{ShutdownTimeout: -time.Second}, "Config.ShutdownTimeout"},
		{reaper.Config{Replicas: -1}, "Config.Replicas"},
		{reaper.Config{ReplicaTimeout: -time.Second}, "Config.ReplicaTimeout"},
		{reaper.Config{Queues: []string{"ok", "bad{name"}}, "Config.Queues"},
	} {
		_, err := reaper.New(rdb, &tt.cfg)
		if !errors.Is(err, reaper.ErrConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("New(%+v) = %v, want ErrConfig naming %s", tt.cfg, err, tt.field)
		}
	}
	if _, err := reaper.New(nil, nil); !errors.Is(err, reaper.ErrConfig) {
		t.Errorf("New(nil client) = %v, want ErrConfig", err)
	}
	if _, err := reaper.New(rdb, nil); err != nil {
		t.Errorf("New with all defaults = %v", err)
	}
}

// TestTimersAlone: with no keyspace events and no scan after the first,
// the wake messages and the per-queue timers alone bring back 200 leases
// of 30 to 80 ms over 4 queues, each exactly once. The lags are logged,
// not asserted.
func TestTimersAlone(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, "--notify-keyspace-events", "")
	rdb := srv.Client(t)
	obs := newObserver()
	rp := start(t, rdb, &reaper.Config{ScanInterval: time.Hour, Observer: obs})
	redistest.WaitFor(t, waitLong, func() bool { return rp.Subscribed() && obs.scanned() >= 1 }, "subscribed and scanned")

	lc := newLeaseClient(t, rdb)
	const nQueues, perQueue = 4, 50
	rng := rand.New(rand.NewPCG(1, 2))
	for q := range nQueues {
		queue := fmt.Sprint("timers-", q)
		// Each message carries its own lease length, and one TakeBatch
		// takes them all: a lease that ran out and came back before the
		// last take must not be taken again.
		for range perQueue {
			opts := &lease.PushOpts{LeaseFor: time.Duration(30+rng.IntN(51)) * time.Millisecond}
			if _, err := lc.Push(t.Context(), queue, []byte("x"), opts); err != nil {
				t.Fatal(err)
			}
		}
		if ls, err := lc.TakeBatch(t.Context(), queue, perQueue, nil); err != nil || len(ls) != perQueue {
			t.Fatalf("TakeBatch(%s) = %d leases, %v", queue, len(ls), err)
		}
	}
	redistest.WaitFor(t, waitLong, func() bool { return obs.total() >= nQueues*perQueue }, "every lease requeued")
	obs.mu.Lock()
	defer obs.mu.Unlock()
	for q := range nQueues {
		if n := obs.perQueue[fmt.Sprint("timers-", q)]; n != perQueue {
			t.Errorf("timers-%d: %d requeued, want %d", q, n, perQueue)
		}
	}
	if obs.requeued[reaper.TriggerEvent] != 0 {
		t.Errorf("%d requeued by events with events off", obs.requeued[reaper.TriggerEvent])
	}
	t.Logf("requeued by trigger %v; lags %v", obs.requeued, obs.lags)
}

// TestReapersExactlyOnce: three reapers over one Redis, with events,
// timers and scans every 100 ms all racing, requeue each of 3,000 leases
// exactly once between them, without electing a leader.
func TestReapersExactlyOnce(t *testing.T) {
	t.Parallel()
	const n, queues = 3000, 3
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	var obs []*observer
	for range 3 {
		o := newObserver()
		obs = append(obs, o)
		start(t, srv.Client(t), &reaper.Config{ScanInterval: 100 * time.Millisecond, Concurrency: 2, SweepLimit: 50, Observer: o})
	}
	lc := newLeaseClient(t, rdb)
	ctx := t.Context()
	pushed := map[string]bool{}
	for q := range queues {
		queue := fmt.Sprint("jobs-", q)
		for range n / queues / lease.MaxBatch {
			payloads := make([][]byte, lease.MaxBatch)
			for i := range payloads {
				payloads[i] = []byte("m")
			}
			ids, err := lc.PushBatch(ctx, queue, payloads, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				pushed[id] = true
			}
			ls, err := lc.TakeBatch(ctx, queue, lease.MaxBatch, &lease.TakeOpts{LeaseFor: time.Duration(20+50*q) * time.Millisecond})
			if err != nil || len(ls) != lease.MaxBatch {
				t.Fatalf("TakeBatch: %d leases, %v", len(ls), err)
			}
		}
	}
	total := func() int { return obs[0].total() + obs[1].total() + obs[2].total() }
	redistest.WaitFor(t, waitLong, func() bool { return total() >= n }, "every lease requeued")

	seen := map[string]bool{}
	for q := range queues {
		queue := fmt.Sprint("jobs-", q)
		for range n / queues / lease.MaxBatch {
			ls, err := lc.TakeBatch(ctx, queue, lease.MaxBatch, &lease.TakeOpts{LeaseFor: time.Minute})
			if err != nil || len(ls) != lease.MaxBatch {
				t.Fatalf("retake %s: %d, %v", queue, len(ls), err)
			}
			for _, l := range ls {
				if seen[l.ID] || !pushed[l.ID] || l.Attempt != 2 {
					t.Fatalf("retook %s attempt %d: seen before %v, pushed %v", l.ID, l.Attempt, seen[l.ID], pushed[l.ID])
				}
				seen[l.ID] = true
			}
		}
	}
	if got := total(); got != n {
		t.Errorf("requeues reported by the three reapers = %d, want exactly %d", got, n)
	}
	t.Logf("requeued: %v, %v, %v", obs[0].byTrigger(), obs[1].byTrigger(), obs[2].byTrigger())
}

// TestQueues: the counts come from the sweeps; a registry queue that two
// scans found empty, or that left the registry, drops out; a queue of
// Config.Queues never does.
func TestQueues(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	lc := newLeaseClient(t, rdb)
	ctx := t.Context()
	rp := start(t, rdb, &reaper.Config{ScanInterval: 20 * time.Millisecond})
	fixed := start(t, rdb, &reaper.Config{ScanInterval: 20 * time.Millisecond, Queues: []string{"a"}})

	for _, p := range []string{"one", "two"} {
		if _, err := lc.Push(ctx, "a", []byte(p), nil); err != nil {
			t.Fatal(err)
		}
	}
	l, err := lc.Take(ctx, "a", &lease.TakeOpts{LeaseFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	counts := func(rp *reaper.Reaper, queue string) (lease.Stats, bool) {
		for _, q := range rp.Queues() {
			if q.Queue == queue {
				return q.Stats, true
			}
		}
		return lease.Stats{}, false
	}
	for _, r := range []*reaper.Reaper{rp, fixed} {
		redistest.WaitFor(t, waitLong, func() bool {
			s, _ := counts(r, "a")
			return s.Ready == 1 && s.InFlight == 1 && s.Delayed == 0 && s.Dead == 0
		}, "a counted: 1 ready, 1 in flight")
	}

	if err := l.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	l, err = lc.Take(ctx, "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, waitLong, func() bool { _, ok := counts(rp, "a"); return !ok }, "empty a dropped")
	redistest.WaitFor(t, waitLong, func() bool {
		s, ok := counts(fixed, "a")
		return ok && s.Empty()
	}, "a of Config.Queues counted empty")

	// A queue that leaves the registry (an operator forgot it) drops out
	// at the next scan, even with messages in it.
	if _, err := lc.Push(ctx, "b", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, waitLong, func() bool { _, ok := counts(rp, "b"); return ok }, "b counted")
	if err := rdb.SRem(ctx, lease.RegistryKey, "b").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, waitLong, func() bool { _, ok := counts(rp, "b"); return !ok }, "b dropped with the registry entry")

	// A sweep that finds it busy again lists it again.
	if _, err := lc.Push(ctx, "a", []byte("three"), nil); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, waitLong, func() bool {
		s, _ := counts(rp, "a")
		return s.Ready == 1 && s.InFlight == 0 && s.Delayed == 0 && s.Dead == 0
	}, "a counted again")
}

// lateObserver reports each scan only once the scan has been over for
// longer than it took, as a busy process may.
type lateObserver struct {
	*observer
	reported atomic.Int32
}

func (o *lateObserver) Scanned(queues int, took time.Duration, err error) {
	time.Sleep(took + 20*time.Millisecond) // the late report, not a wait for something
	o.observer.Scanned(queues, took, err)
	o.reported.Add(1)
}

// TestQueuesReportedLate: a queue a scan swept stays listed, however late
// the scan reports its end. (The scan once dropped every queue swept
// earlier than its report time minus its length.)
func TestQueuesReportedLate(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	lc := newLeaseClient(t, rdb)
	ctx := t.Context()
	if _, err := lc.Push(ctx, "late", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	obs := &lateObserver{observer: newObserver()}
	rp, err := reaper.New(rdb, &reaper.Config{ScanInterval: time.Hour, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rp.Run(runCtx) }()
	// The start's scan, and the one after the listener subscribed; no
	// other comes within the hour.
	redistest.WaitFor(t, waitLong, func() bool { return obs.reported.Load() >= 2 }, "two scans reported")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(waitLong):
		t.Fatalf("Run did not return within %v", waitLong)
	}
	// Run has returned: the scans' reports are over.
	qs := rp.Queues()
	if len(qs) != 1 || qs[0].Queue != "late" || qs[0].Stats.Ready != 1 {
		t.Fatalf("Queues() = %+v, want late with 1 ready", qs)
	}
}

// TestOutage: the reaper notices Redis gone and back within its injected
// check intervals, and a lease taken after the restart still comes back.
func TestOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	rp := start(t, rdb, &reaper.Config{CheckInterval: 20 * time.Millisecond, OutageCheckInterval: 10 * time.Millisecond, RetryDelay: 20 * time.Millisecond})
	redistest.WaitFor(t, waitLong, rp.Subscribed, "subscribed")
	srv.Kill(t)
	redistest.WaitFor(t, waitLong, func() bool { return !rp.RedisUp() }, "outage noticed")
	srv.Restart(t)
	redistest.WaitFor(t, waitLong, func() bool { return rp.RedisUp() && rp.Subscribed() }, "recovery noticed")

	requeuedOnce(t, rdb, "retake after the outage")
}

// requeuedOnce pushes a message to queue q, takes it with a 20 ms lease
// and waits for it to come back: the running reaper requeued it.
func requeuedOnce(t *testing.T, rdb redis.UniversalClient, what string) {
	t.Helper()
	lc := newLeaseClient(t, rdb)
	if _, err := lc.Push(t.Context(), "q", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Take(t.Context(), "q", &lease.TakeOpts{LeaseFor: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	l, err := lc.Take(t.Context(), "q", &lease.TakeOpts{Wait: waitLong})
	if err != nil || l.Attempt != 2 {
		t.Fatalf("%s: %+v, %v", what, l, err)
	}
}

// TestForgedWakes: wake messages more than a week ahead, or of a queue
// outside Config.Queues, are ignored and counted; a wake for a watched
// queue within the horizon is not.
func TestForgedWakes(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	rp := start(t, rdb, &reaper.Config{Queues: []string{"a"}})
	redistest.WaitFor(t, waitLong, rp.Subscribed, "subscribed")
	soon := time.Now().Add(time.Hour).UnixMilli()
	for _, msg := range []string{
		fmt.Sprintf("lease|%d|a", soon), // kept
		"lease|99999999999999|a",
		fmt.Sprintf("delayed|%d|a", time.Now().Add(lease.MaxLeaseFor+2*time.Hour).UnixMilli()),
		fmt.Sprintf("lease|%d|b", soon),
	} {
		if err := rdb.Publish(t.Context(), lease.WakeChannel, msg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Messages are handled in order: once the last is ignored, all were.
	redistest.WaitFor(t, waitLong, func() bool { return rp.Stats().Ignored >= 3 }, "3 wake messages ignored")
	if st := rp.Stats(); st.Ignored != 3 || st.Dropped != 0 || st.Listener.WakeMessages != 4 {
		t.Errorf("stats = %+v, want 4 wakes heard, 3 ignored, 0 dropped", st)
	}
}

// TestLoadsFunctions: the reaper loads ackd's function library when it
// starts, so that clients whose users may not load it find it.
func TestLoadsFunctions(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	name := lease.Library().Name
	has := func() bool {
		libs, err := rdb.FunctionList(t.Context(), redis.FunctionListQuery{LibraryNamePattern: name}).Result()
		return err == nil && len(libs) == 1
	}
	if has() {
		t.Fatal("a fresh server has the library")
	}
	rp := start(t, rdb, nil)
	redistest.WaitFor(t, waitLong, rp.Subscribed, "subscribed")
	if !has() {
		t.Errorf("no library %s after the reaper started", name)
	}
}
