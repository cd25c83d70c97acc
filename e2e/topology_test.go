//go:build e2e

package e2e

import (
	"errors"
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

// TestClusterMasterKilledUnderLoad: producers and consumers (a third of
// first deliveries abandoned, for ackd to requeue) run over queues on all
// three masters while one master is SIGKILLed and its replica promoted.
// With lease.Config.Replicas set, the ledger must then account for every
// message: each one a producer was told is stored was delivered and
// acked; every other outcome was an error returned to its caller. The
// queues end empty: nothing stays in flight on the promoted master.
func TestClusterMasterKilledUnderLoad(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, nil)
	const nQueues, nMessages, consumers = 12, 1200, 4
	blocking := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), PoolSize: 4 * consumers})
	t.Cleanup(func() { _ = blocking.Close() })
	lc, err := lease.New(c.Client(t), &lease.Config{Replicas: 1, BlockingClient: blocking})
	if err != nil {
		t.Fatal(err)
	}
	queues := make([]string, nQueues)
	for i := range queues {
		queues[i] = fmt.Sprintf("load-%d", i)
	}
	victim := c.MasterOf(t, "{"+queues[0]+"}")
	a := startAckd(t, c.Nodes()[0], "ACKD_REDIS_URL="+c.URL())
	defer a.stop(t)

	// The ledger.
	var mu sync.Mutex
	stored := map[string]bool{}    // Push returned nil
	pushErrs := 0                  // Push returned an error: outcome unknown to the producer
	acked := map[string]int{}      // Ack returned nil (count: duplicates are allowed)
	ackErred := map[string]bool{}  // Ack returned an error: the consumer was told
	abandoned := map[string]bool{} // first deliveries left to expire
	firsts := 0                    // first deliveries seen
	var errs []string
	note := func(what string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if len(errs) < 20 {
			errs = append(errs, what+": "+err.Error())
		}
	}

	producing := make(chan struct{})
	go func() {
		defer close(producing)
		for i := range nMessages {
			q := queues[i%nQueues]
			id, err := lc.Push(t.Context(), q, []byte("m"), nil)
			mu.Lock()
			if err != nil {
				pushErrs++
			} else {
				stored[id] = true
			}
			mu.Unlock()
			if err != nil {
				note("push", err)
			}
			if i == nMessages/3 {
				start := time.Now()
				c.KillMaster(t, victim)
				t.Logf("master %s killed; failover done after %v", victim.Addr(), time.Since(start))
				// Back as a replica of the promoted node, so that WAIT
				// can succeed on that shard again.
				victim.Restart(t)
				c.WaitHealthy(t, 30*time.Second)
				t.Logf("killed master back as a replica after %v", time.Since(start))
			}
		}
	}()

	done := func() bool {
		select {
		case <-producing:
		default:
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		for id := range stored {
			if acked[id] == 0 && !ackErred[id] {
				return false
			}
		}
		return true
	}
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	for w := range consumers {
		wg.Go(func() {
			for i := w; !done() && time.Now().Before(deadline); i++ {
				q := queues[i%nQueues]
				l, err := lc.Take(t.Context(), q, &lease.TakeOpts{LeaseFor: 300 * time.Millisecond, Wait: 50 * time.Millisecond})
				if errors.Is(err, lease.ErrNoMessage) {
					continue
				}
				if err != nil {
					note("take", err)
					continue
				}
				mu.Lock()
				if l.Attempt == 1 {
					firsts++
				}
				abandon := l.Attempt == 1 && firsts%3 == 0
				if abandon {
					abandoned[l.ID] = true
				}
				mu.Unlock()
				if abandon {
					continue
				}
				err = l.Ack(t.Context())
				mu.Lock()
				if err == nil {
					acked[l.ID]++
				} else {
					ackErred[l.ID] = true
				}
				mu.Unlock()
				if err != nil {
					note("ack", err)
				}
			}
		})
	}
	wg.Wait()
	<-producing

	mu.Lock()
	defer mu.Unlock()
	var lost []string
	dup := 0
	for id := range stored {
		if acked[id] == 0 && !ackErred[id] {
			lost = append(lost, id)
		}
		if acked[id] > 1 {
			dup++
		}
	}
	t.Logf("%d pushed and stored, %d pushes failed; %d abandoned first deliveries; %d acked twice; %d acks failed; first errors: %q",
		len(stored), pushErrs, len(abandoned), dup, len(ackErred), errs)
	if len(lost) > 0 {
		t.Errorf("%d stored messages never delivered and acked, with no error to anyone, e.g. %v", len(lost), lost[:min(5, len(lost))])
	}
	// Nothing stays in flight or ready: every abandoned lease, on the
	// promoted master too, came back and was acked.
	redistest.WaitFor(t, 30*time.Second, func() bool {
		for _, q := range queues {
			st, err := lc.Stats(t.Context(), q)
			if err != nil || st.InFlight != 0 || st.Ready != 0 {
				return false
			}
		}
		return true
	}, "every queue empty")
}
