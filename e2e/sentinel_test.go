//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// TestSentinelFailoverFollowed runs the ackd binary with a Sentinel URL
// on a deployment where nobody configured keyspace events: ackd turns
// them on on the master and on the replica. After SENTINEL FAILOVER (the
// old master is demoted, not killed, so nothing breaks ackd's
// subscription on it) leases abandoned on the new master come back, and
// their requeue lag is reported (before ackd followed +switch-master it
// was p99 8.2 s: the listener stayed on the demoted node until it dropped
// the connection). With ACKD_REDIS_REPLICAS=1 the same is reported: until
// the Sentinels attach the demoted node to the new master, each sweep
// waits ACKD_REDIS_REPLICA_TIMEOUT for a replica that is not there.
func TestSentinelFailoverFollowed(t *testing.T) {
	t.Parallel()
	for _, replicas := range []string{"0", "1"} {
		t.Run("ACKD_REDIS_REPLICAS="+replicas, func(t *testing.T) {
			t.Parallel()
			sentinelFailover(t, "ACKD_REDIS_REPLICAS="+replicas)
		})
	}
}

func sentinelFailover(t *testing.T, env ...string) {
	s := redistest.StartSentinel(t, nil)
	rdb := s.Client(t)
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	a := startAckd(t, s.Data[0], append([]string{"ACKD_REDIS_URL=" + s.URL()}, env...)...)
	defer a.stop(t)

	// Events on the replica too, and /readyz says so.
	replica := s.Replica(t)
	redistest.WaitFor(t, 10*time.Second, func() bool {
		flags := replica.Client(t).ConfigGet(t.Context(), "notify-keyspace-events").Val()["notify-keyspace-events"]
		return strings.ContainsAny(flags, "EA") && strings.ContainsAny(flags, "xA")
	}, "keyspace events on the replica %s", replica.Addr())
	var rd struct {
		Events struct {
			State    string `json:"state"`
			Replicas *struct {
				Count   int  `json:"count"`
				Enabled bool `json:"enabled"`
			} `json:"replicas"`
		} `json:"events"`
	}
	code, body := a.get("/readyz")
	if err := json.Unmarshal([]byte(body), &rd); code != http.StatusOK || err != nil || rd.Events.State != "on" ||
		rd.Events.Replicas == nil || rd.Events.Replicas.Count != 1 || !rd.Events.Replicas.Enabled {
		t.Fatalf("/readyz %d %s: want events on, on 1 replica too", code, body)
	}

	const nQueues = 20
	abandonAll := func(round string) []time.Duration {
		t.Helper()
		var mu sync.Mutex
		var lags []time.Duration
		var wg sync.WaitGroup
		for i := range nQueues {
			q := fmt.Sprintf("%s-%d", round, i)
			wg.Go(func() {
				id, err := lc.Push(t.Context(), q, []byte("m"), nil)
				if err != nil {
					t.Errorf("push %s: %v", q, err)
					return
				}
				l, err := lc.Take(t.Context(), q, &lease.TakeOpts{LeaseFor: 200 * time.Millisecond})
				if err != nil || l.ID != id {
					t.Errorf("take %s: %v", q, err)
					return
				}
				back, err := lc.Take(t.Context(), q, &lease.TakeOpts{LeaseFor: time.Minute, Wait: 20 * time.Second})
				if err != nil {
					t.Errorf("%s: abandoned lease not back: %v", q, err)
					return
				}
				lag := time.Since(l.Deadline())
				if back.ID != id || back.Attempt != 2 {
					t.Errorf("%s: took %s attempt %d, want %s attempt 2", q, back.ID, back.Attempt, id)
				}
				if err := back.Ack(t.Context()); err != nil {
					t.Errorf("ack %s: %v", q, err)
				}
				mu.Lock()
				lags = append(lags, lag)
				mu.Unlock()
			})
		}
		wg.Wait()
		if t.Failed() {
			t.Fatalf("ackd stderr:\n%s", tail(a.stderr.String(), 8<<10))
		}
		slices.Sort(lags)
		return lags
	}
	pct := func(lags []time.Duration, p float64) time.Duration {
		return lags[min(len(lags)-1, int(p*float64(len(lags))))]
	}

	lags := abandonAll("before")
	t.Logf("before the failover: requeue lag p50 %v, p99 %v", pct(lags, 0.5), pct(lags, 0.99))

	start := time.Now()
	promoted := s.Failover(t)
	t.Logf("SENTINEL FAILOVER to %s took %v", promoted.Addr(), time.Since(start))
	// The lease client follows the switch too; until it does, its writes
	// reach the demoted node (READONLY, retried).
	redistest.WaitFor(t, 20*time.Second, func() bool {
		role, err := rdb.Do(t.Context(), "ROLE").Slice()
		return err == nil && len(role) > 0 && role[0] == "master"
	}, "lease client on the new master")
	switched := time.Since(start)
	lags = abandonAll("after")
	t.Logf("after the failover (leases abandoned %v after SENTINEL FAILOVER was sent): requeue lag p50 %v, p99 %v, max %v",
		switched, pct(lags, 0.5), pct(lags, 0.99), lags[len(lags)-1])

	if n, ok := a.metric(t, "ackd_master_switches_total"); !ok || n < 1 {
		t.Errorf("ackd_master_switches_total = %v (present %v), want at least 1", n, ok)
	}
	if len(a.stderr.Lines()) == 0 || !strings.Contains(a.stderr.String(), "master switched") {
		t.Errorf("no log line about the switch")
	}
	if up, ok := a.metric(t, "ackd_redis_up"); !ok || up != 1 {
		t.Errorf("ackd_redis_up = %v after the failover, want 1", up)
	}
	n, _ := a.metric(t, "ackd_not_replicated_total")
	t.Logf("ackd_not_replicated_total %v", n)
	a.waitReady(t)
}

// TestSentinelURLMixedForms: an ACKD_REDIS_URL that mixes URL forms or
// uses a scheme go-redis does not know stops ackd at start, with exit
// status 1 and a message naming the variable, without the password, and
// nothing is written.
func TestSentinelURLMixedForms(t *testing.T) {
	t.Parallel()
	const secret = "mixed-forms-secret-4a1c"
	s := redistest.StartSentinel(t, nil)
	host := s.Addrs()[0]
	for name, u := range map[string]string{
		"cluster option with master_name": "redis://:" + secret + "@" + host + "?master_name=" + s.MasterName() + "&read_only=true",
		"redis+sentinel scheme":           "redis+sentinel://:" + secret + "@" + host + "?master_name=" + s.MasterName(),
		"replica_only":                    "redis://:" + secret + "@" + host + "?master_name=" + s.MasterName() + "&replica_only=true",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			a := launchAckd(t, s.Data[0], "ACKD_REDIS_URL="+u)
			redistest.WaitFor(t, ackdStartTimeout, a.exited, "ackd exits")
			if a.state.ExitCode() != 1 {
				t.Errorf("exit %s, want status 1", a.status())
			}
			stderr := a.stderr.String()
			if !strings.Contains(stderr, "ACKD_REDIS_URL") || strings.Contains(stderr, secret) {
				t.Errorf("stderr does not name ACKD_REDIS_URL, or shows the password:\n%s", stderr)
			}
		})
	}
	m := redis.NewClient(&redis.Options{Addr: s.Master(t).Addr()})
	t.Cleanup(func() { _ = m.Close() })
	if n, err := m.DBSize(t.Context()).Result(); err != nil || n != 0 {
		t.Errorf("master holds %d keys (%v), want none", n, err)
	}
}
