package notify

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// startCluster starts three masters, joins them into a cluster and
// returns a client for it.
func startCluster(t *testing.T) (*redis.ClusterClient, []*redistest.Server) {
	t.Helper()
	var srvs []*redistest.Server
	var addrs []string
	for range 3 {
		s := redistest.Start(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
		srvs = append(srvs, s)
		addrs = append(addrs, s.Addr())
	}
	out := redistest.RedisCLI(t, addrs[0], append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "0", "--cluster-yes")...)
	if !strings.Contains(out, "All 16384 slots covered") {
		t.Fatalf("redis-cli --cluster create:\n%s", out)
	}
	for _, s := range srvs {
		redistest.WaitFor(t, waitLong, func() bool {
			info, err := s.Client(t).ClusterInfo(t.Context()).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:3")
		}, "cluster ok on %s", s.Addr())
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { _ = cc.Close() })
	return cc, srvs
}

// On a cluster, events are node-local: the Listener must hear expiries on
// every master, and wake messages once.
func TestCluster(t *testing.T) {
	t.Parallel()
	cc, _ := startCluster(t)
	ctx := t.Context()
	lc, err := lease.New(cc, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	l := NewListener(cc, rec.config())
	start(t, l)
	// One subscription per master and one for the wake channel.
	redistest.WaitFor(t, waitLong, func() bool { return rec.subs() == 4 && l.Subscribed() }, "subscribed on every master")

	// Queues whose slots are spread over the three masters.
	masters := map[string]string{} // node address -> queue
	for i := 0; len(masters) < 3 && i < 1000; i++ {
		q := fmt.Sprint("c", i)
		addr, err := masterOf(ctx, cc, lease.KeysFor(q).Ready)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := masters[addr]; !ok {
			masters[addr] = q
		}
	}
	if len(masters) != 3 {
		t.Fatalf("queues found on %d masters, want 3", len(masters))
	}
	var leases []*lease.Lease
	for _, q := range masters {
		if _, err := lc.Push(ctx, q, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
		ls, err := lc.Take(ctx, q, &lease.TakeOpts{LeaseFor: 30 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, ls)
	}
	for _, ls := range leases {
		// The wake and the expiry come on different connections (the
		// wake subscription, the master's): either may come first.
		redistest.WaitFor(t, waitLong, func() bool {
			return rec.hasExpired(expiry{ls.Queue, ls.Token}) && len(rec.wakesOf(ls.Queue)) >= 1
		}, "expiry and wake of %s", ls.Queue)
		if got := len(rec.wakesOf(ls.Queue)); got != 1 {
			t.Fatalf("%d wake messages for %s, want 1", got, ls.Queue)
		}
	}
	if st := l.Stats(); st.EventsExpired != 3 || st.WakeMessages != 3 {
		t.Fatalf("Stats() = %+v, want 3 expiries and 3 wake messages", st)
	}

	st := EnsureEvents(ctx, cc, true)
	if st.Err != nil || !st.Enabled || !st.Changed || !st.Evicted || strings.Count(st.Flags, "=") != 3 {
		t.Fatalf("EnsureEvents on the cluster = %+v", st)
	}
}

func masterOf(ctx context.Context, cc *redis.ClusterClient, key string) (string, error) {
	c, err := cc.MasterForKey(ctx, key)
	if err != nil {
		return "", err
	}
	return c.Options().Addr, nil
}

// A master added to the cluster is noticed and subscribed to, and keys
// that moved to it are heard.
func TestClusterNewMaster(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("resharding takes seconds")
	}
	cc, srvs := startCluster(t)
	ctx := t.Context()
	rec := &recorder{}
	cfg := rec.config()
	cfg.TopologyInterval = 20 * time.Millisecond
	l := NewListener(cc, cfg)
	start(t, l)
	redistest.WaitFor(t, waitLong, func() bool { return rec.subs() == 4 && l.Subscribed() }, "subscribed on 3 masters")

	extra := redistest.Start(t, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
	redistest.RedisCLI(t, srvs[0].Addr(), "--cluster", "add-node", extra.Addr(), srvs[0].Addr())
	id, err := extra.Client(t).ClusterMyID(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	all := append(slices.Clone(srvs), extra)
	redistest.WaitFor(t, waitLong, func() bool {
		var first string
		for i, s := range all {
			sig, ok := clusterSignature(ctx, s.Client(t))
			if !ok || (i > 0 && sig != first) {
				return false
			}
			first = sig
		}
		return true
	}, "all nodes agree on 4 masters")
	out := redistest.RedisCLI(t, srvs[0].Addr(), "--cluster", "reshard", srvs[0].Addr(),
		"--cluster-from", "all", "--cluster-to", id, "--cluster-slots", "300", "--cluster-yes")
	if strings.Contains(out, "ERR") {
		t.Fatalf("reshard:\n%s", out)
	}
	for _, s := range all {
		redistest.WaitFor(t, waitLong, func() bool {
			info, err := s.Client(t).ClusterInfo(ctx).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok")
		}, "cluster ok on %s after resharding", s.Addr())
	}
	redistest.WaitFor(t, waitLong, func() bool { return rec.subs() == 5 && l.Subscribed() }, "subscribed on the new master")

	lc, err := lease.New(cc, nil)
	if err != nil {
		t.Fatal(err)
	}
	var queue string
	for i := 0; queue == "" && i < 10000; i++ {
		q := fmt.Sprint("moved", i)
		if addr, err := masterOf(ctx, cc, lease.KeysFor(q).Ready); err == nil && addr == extra.Addr() {
			queue = q
		}
	}
	if queue == "" {
		t.Fatal("no queue found on the new master")
	}
	if _, err := lc.Push(ctx, queue, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	ls, err := lc.Take(ctx, queue, &lease.TakeOpts{LeaseFor: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, waitLong, func() bool { return rec.hasExpired(expiry{queue, ls.Token}) }, "expiry on the new master")
}

// clusterSignature is one node's view of the cluster as redis-cli compares
// it: each node's id and slots, sorted. ok is false until the node sees
// four masters and no handshake.
func clusterSignature(ctx context.Context, c *redis.Client) (sig string, ok bool) {
	out, err := c.ClusterNodes(ctx).Result()
	if err != nil || strings.Contains(out, "handshake") || strings.Count(out, "master") != 4 {
		return "", false
	}
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return "", false
		}
		lines = append(lines, f[0]+" "+strings.Join(f[8:], " "))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), true
}
