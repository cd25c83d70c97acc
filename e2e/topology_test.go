//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// TestClusterRequeueLag runs the ackd binary with a Cluster URL and
// abandons leases on queues spread over all three masters: every one
// comes back, and the lag from each lease's deadline to its message being
// taken again (a waiting Take) is reported.
func TestClusterRequeueLag(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, nil)
	const nQueues, rounds = 30, 5
	// Blocking takes get their own pool, as README says a consumer of
	// many queues should.
	blocking := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), PoolSize: 2 * nQueues})
	t.Cleanup(func() { _ = blocking.Close() })
	lc, err := lease.New(c.Client(t), &lease.Config{BlockingClient: blocking})
	if err != nil {
		t.Fatal(err)
	}
	queues := make([]string, nQueues)
	masters := map[string]bool{}
	for i := range queues {
		queues[i] = fmt.Sprintf("lag-%d", i)
		masters[c.MasterOf(t, "{"+queues[i]+"}").Addr()] = true
	}
	if len(masters) != 3 {
		t.Fatalf("queues on %d masters, want 3", len(masters))
	}
	a := startAckd(t, c.Nodes()[0], "ACKD_REDIS_URL="+c.URL())
	defer a.stop(t)

	var lags []time.Duration
	for range rounds {
		deadlines := make([]time.Time, nQueues)
		ids := make([]string, nQueues)
		for i, q := range queues {
			id, err := lc.Push(t.Context(), q, []byte("m"), nil)
			if err != nil {
				t.Fatal(err)
			}
			l, err := lc.Take(t.Context(), q, &lease.TakeOpts{LeaseFor: 200 * time.Millisecond})
			if err != nil || l.ID != id {
				t.Fatalf("take %s: %v (got %v, want %s)", q, err, l, id)
			}
			deadlines[i], ids[i] = l.Deadline(), id
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i, q := range queues {
			wg.Go(func() {
				l, err := lc.Take(t.Context(), q, &lease.TakeOpts{LeaseFor: time.Minute, Wait: 10 * time.Second})
				took := time.Now()
				if err != nil {
					t.Errorf("%s: not back: %v", q, err)
					return
				}
				if l.ID != ids[i] || l.Attempt != 2 {
					t.Errorf("%s: took %s attempt %d, want %s attempt 2", q, l.ID, l.Attempt, ids[i])
				}
				if err := l.Ack(t.Context()); err != nil {
					t.Errorf("%s: ack: %v", q, err)
				}
				mu.Lock()
				lags = append(lags, took.Sub(deadlines[i]))
				mu.Unlock()
			})
		}
		wg.Wait()
		if t.Failed() {
			t.Fatalf("ackd stderr:\n%s", tail(a.stderr.String(), 8<<10))
		}
	}
	slices.Sort(lags)
	pct := func(p float64) time.Duration { return lags[min(len(lags)-1, int(p*float64(len(lags))))] }
	t.Logf("requeue lag with a Cluster URL, %d leases over %d queues on 3 masters: p50 %v, p99 %v, max %v",
		len(lags), nQueues, pct(0.50), pct(0.99), lags[len(lags)-1])
}

// TestSentinelMasterKilled runs the ackd binary with a Sentinel URL: an
// abandoned lease comes back; after SIGKILL of the master and the
// Sentinels' failover, ackd follows the new master, where an abandoned
// lease comes back too. The time from the switch to ackd's first requeue
// on the new master is reported.
func TestSentinelMasterKilled(t *testing.T) {
	t.Parallel()
	const sentinelPass = "sentinel-e2e-secret"
	s := redistest.StartSentinel(t, &redistest.SentinelOptions{SentinelPassword: sentinelPass})
	rdb := s.Client(t)
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := startAckd(t, s.Data[0], "ACKD_REDIS_URL="+s.URL())
	defer a.stop(t)

	abandonAndRetake := func(queue string) time.Duration {
		t.Helper()
		id, err := lc.Push(t.Context(), queue, []byte("m"), nil)
		if err != nil {
			t.Fatal(err)
		}
		l, err := lc.Take(t.Context(), queue, &lease.TakeOpts{LeaseFor: 200 * time.Millisecond})
		if err != nil || l.ID != id {
			t.Fatalf("take %s: %v", queue, err)
		}
		back, err := lc.Take(t.Context(), queue, &lease.TakeOpts{LeaseFor: time.Minute, Wait: 20 * time.Second})
		if err != nil {
			t.Fatalf("%s: abandoned lease not back: %v\nackd stderr:\n%s", queue, err, tail(a.stderr.String(), 8<<10))
		}
		lag := time.Since(l.Deadline())
		if back.ID != id || back.Attempt != 2 {
			t.Errorf("%s: took %s attempt %d, want %s attempt 2", queue, back.ID, back.Attempt, id)
		}
		if err := back.Ack(t.Context()); err != nil {
			t.Fatal(err)
		}
		return lag
	}
	t.Logf("before the failover: requeue lag %v", abandonAndRetake("before"))

	switched := time.Now()
	s.KillMaster(t)
	t.Logf("failover took %v", time.Since(switched))
	switched = time.Now()
	// The client follows the switch too; its first writes may fail while
	// it does.
	redistest.WaitFor(t, 20*time.Second, func() bool { return rdb.Ping(t.Context()).Err() == nil }, "lease client on the new master")
	t.Logf("after the failover: requeue lag %v; from the switch to that requeue: %v", abandonAndRetake("after"), time.Since(switched))
	a.waitReady(t)
	if strings.Contains(a.stderr.String(), sentinelPass) {
		t.Errorf("ackd's log shows the Sentinel password")
	}
}
