package schedule

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// TestRequeueOnTime drives lease.Sweep from the Scheduler alone (no
// keyspace events, no scan): 200 leases of 30 to 80 ms over 4 queues must
// each come back exactly once. The lag of each requeue is logged, not
// asserted.
func TestRequeueOnTime(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	srv := redistest.Start(t, "--notify-keyspace-events", "")
	rdb := srv.Client(t)
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}

	const nQueues, perQueue = 4, 50
	var (
		mu       sync.Mutex
		requeued = map[string]int{}
		lags     []time.Duration
	)
	sweep := func(ctx context.Context, queue, trigger string) (time.Time, error) {
		for {
			r, err := lc.Sweep(ctx, queue, nil)
			if err != nil {
				return time.Time{}, err
			}
			mu.Lock()
			requeued[queue] += r.Requeued + r.DeadLettered
			lags = append(lags, r.Lags...)
			mu.Unlock()
			if !r.More {
				return NextWake(r), nil
			}
		}
	}
	s := New(sweep, nil)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})

	rng := rand.New(rand.NewPCG(1, 2))
	ids := map[string]bool{}
	var queues []string
	for q := range nQueues {
		queue := fmt.Sprint("ontime-", q)
		queues = append(queues, queue)
		for range perQueue {
			d := time.Duration(30+rng.IntN(51)) * time.Millisecond
			if _, err := lc.Push(ctx, queue, []byte("x"), &lease.PushOpts{LeaseFor: d}); err != nil {
				t.Fatal(err)
			}
		}
		ls, err := lc.TakeBatch(ctx, queue, perQueue, nil)
		if err != nil || len(ls) != perQueue {
			t.Fatalf("TakeBatch = %d leases, %v", len(ls), err)
		}
		for _, l := range ls {
			ids[l.ID] = true
		}
		// What a daemon does at start (and on each wake message): sweep
		// once, which schedules the queue's next wake.
		s.Now(queue, "start")
	}

	total := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, v := range requeued {
			n += v
		}
		return n
	}
	redistest.WaitFor(t, 20*time.Second, func() bool { return total() >= nQueues*perQueue }, "all leases requeued")
	redistest.WaitFor(t, 10*time.Second, func() bool { return s.Pending() == 0 && s.Stats().Running == 0 }, "scheduler idle")

	if got := total(); got != nQueues*perQueue {
		t.Fatalf("requeued %d, want %d", got, nQueues*perQueue)
	}
	// Every message is back exactly once: take them all again.
	seen := map[string]bool{}
	for _, queue := range queues {
		if n, err := rdb.ZCard(ctx, lease.KeysFor(queue).Deadlines).Result(); err != nil || n != 0 {
			t.Fatalf("%s: %d leases still in flight, %v", queue, n, err)
		}
		ls, err := lc.TakeBatch(ctx, queue, lease.MaxBatch, &lease.TakeOpts{LeaseFor: time.Hour})
		if err != nil || len(ls) != perQueue {
			t.Fatalf("%s: retake = %d leases, %v; want %d", queue, len(ls), err, perQueue)
		}
		for _, l := range ls {
			if seen[l.ID] || !ids[l.ID] || l.Attempt != 2 {
				t.Fatalf("%s: retook %s (attempt %d, seen %v, ours %v)", queue, l.ID, l.Attempt, seen[l.ID], ids[l.ID])
			}
			seen[l.ID] = true
		}
	}

	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lags)
	if len(lags) != nQueues*perQueue {
		t.Fatalf("%d lags recorded, want %d", len(lags), nQueues*perQueue)
	}
	q := func(p float64) time.Duration { return lags[int(p*float64(len(lags)-1))] }
	t.Logf("requeue lag over %d leases: p50 %v, p99 %v, max %v; sweeps %d, early %d",
		len(lags), q(0.50), q(0.99), lags[len(lags)-1], s.Stats().Sweeps, s.Stats().Early)
}
