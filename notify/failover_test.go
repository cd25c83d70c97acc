package notify

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// followTimeout bounds how long a test waits for the Listener to follow a
// switch. Before the Listener followed +switch-master and re-read the
// Cluster topology at once, it stayed on the demoted node about 10 s
// (until that node dropped it, or until TopologyInterval): the bound lies
// between, generous for a loaded host; the measured time is logged.
const followTimeout = 5 * time.Second

// patterns returns how many pattern subscriptions node has (PUBSUB
// NUMPAT): the Listener's two once it listens there.
func patterns(t *testing.T, node *redis.Client) int64 {
	t.Helper()
	n, err := node.Do(t.Context(), "PUBSUB", "NUMPAT").Int64()
	if err != nil {
		return -1
	}
	return n
}

// expireOn leases a message of queue through a client of node itself, for
// d, so that its shadow key expires there.
func expireOn(t *testing.T, node *redis.Client, queue string, d time.Duration) *lease.Lease {
	t.Helper()
	lc, err := lease.New(node, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Push(t.Context(), queue, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	ls, err := lc.Take(t.Context(), queue, &lease.TakeOpts{LeaseFor: d})
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// TestSentinelFailover: after SENTINEL FAILOVER the Listener moves its
// subscription to the new master as soon as a Sentinel announces
// +switch-master, and hears the new master's expired events at once:
// EnsureEventsSentinel had turned events on on the replica too. Logged:
// the time from +switch-master to the subscription on the new master,
// and to the first expired event heard from it.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a Sentinel failover takes seconds")
	}
	s := redistest.StartSentinel(t, nil) // no events configured anywhere
	rdb := s.Client(t)
	fo := &redis.FailoverOptions{MasterName: s.MasterName(), SentinelAddrs: s.Addrs()}
	ctx := t.Context()

	st := EnsureEventsSentinel(ctx, rdb, fo, true)
	if st.Err != nil || st.ReplicaErr != nil || !st.Enabled || !st.ReplicasEnabled || st.Replicas != 1 || !st.Changed {
		t.Fatalf("EnsureEventsSentinel = %+v", st)
	}
	replica := s.Replica(t)
	if flags := replica.Client(t).ConfigGet(ctx, eventsParam).Val()[eventsParam]; !hasFlag(flags, 'E') || !hasFlag(flags, 'x') {
		t.Fatalf("replica %s has notify-keyspace-events %q", replica.Addr(), flags)
	}
	if !strings.Contains(st.Flags, replica.Addr()+"=") {
		t.Fatalf("Flags %q do not name the replica %s", st.Flags, replica.Addr())
	}

	rec := &recorder{}
	cfg := rec.config()
	cfg.Sentinel = fo
	topo := make(chan struct{}, 4)
	cfg.TopologyFunc = func(context.Context) { topo <- struct{}{} }
	l := NewListener(rdb, cfg)
	start(t, l)
	old := s.Master(t)
	redistest.WaitFor(t, waitLong, func() bool { return l.Subscribed() && patterns(t, old.Client(t)) == 2 }, "subscribed on the master")
	before := expireOn(t, old.Client(t), "before", 20*time.Millisecond)
	redistest.WaitFor(t, waitLong, func() bool { return rec.hasExpired(expiry{before.Queue, before.Token}) }, "expiry on the first master")

	w := s.WatchSwitch(t)
	sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addrs()[0]})
	t.Cleanup(func() { _ = sc.Close() })
	if err := sc.Failover(ctx, s.MasterName()).Err(); err != nil {
		t.Fatal(err)
	}
	addr := w.Wait(t, 30*time.Second)
	switched := time.Now()
	if addr != replica.Addr() {
		t.Fatalf("+switch-master names %s, want the replica %s", addr, replica.Addr())
	}
	promoted := replica.Client(t)
	redistest.WaitFor(t, followTimeout, func() bool { return patterns(t, promoted) == 2 }, "subscribed on the new master %s", addr)
	followed := time.Since(switched)

	after := expireOn(t, promoted, "after", 10*time.Millisecond)
	redistest.WaitFor(t, followTimeout, func() bool { return rec.hasExpired(expiry{after.Queue, after.Token}) }, "expiry on the new master")
	heard := time.Since(switched)
	t.Logf("SENTINEL FAILOVER: from +switch-master to the subscription on the new master %v, to its first expired event heard %v", followed, heard)

	select {
	case <-topo:
	case <-time.After(waitLong):
		t.Fatal("TopologyFunc not called after the switch")
	}
	if st := l.Stats(); st.Switches != 1 {
		t.Errorf("Stats().Switches = %d, want 1", st.Switches)
	}
	redistest.WaitFor(t, waitLong, l.Subscribed, "Subscribed() after the switch")
}

// TestClusterFailoverFollowed: after CLUSTER FAILOVER turns a replica into
// a master (and nobody drops the Listener's subscription on the demoted
// one), the Listener subscribes on the promoted node, which sends expired
// events at once (EnsureEvents had configured the replicas too), and
// leaves the demoted one. Logged: the time from the replica's role change
// to the subscription on it, and to its first expired event heard.
func TestClusterFailoverFollowed(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a Cluster failover takes seconds")
	}
	c := redistest.StartCluster(t, nil)
	cc := c.Client(t)
	ctx := t.Context()
	st := EnsureEvents(ctx, cc, true)
	if st.Err != nil || st.ReplicaErr != nil || !st.Enabled || !st.ReplicasEnabled || st.Replicas != 3 {
		t.Fatalf("EnsureEvents = %+v, want events on 3 masters and 3 replicas\n%s", st, cc.ClusterNodes(ctx).Val())
	}

	rec := &recorder{}
	cfg := rec.config()
	topo := make(chan struct{}, 4)
	cfg.TopologyFunc = func(context.Context) {
		select {
		case topo <- struct{}{}:
		default:
		}
	}
	l := NewListener(cc, cfg)
	start(t, l)
	master := c.Masters(t)[0]
	replica := c.ReplicaOf(t, master)
	redistest.WaitFor(t, waitLong, func() bool { return l.Subscribed() && rec.subs() == 4 }, "subscribed on 3 masters and the wake channel")

	if err := replica.Client(t).Do(ctx, "CLUSTER", "FAILOVER").Err(); err != nil {
		t.Fatal(err)
	}
	promoted := replica.Client(t)
	redistest.WaitFor(t, 30*time.Second, func() bool {
		role, err := promoted.Do(ctx, "ROLE").Slice()
		return err == nil && len(role) > 0 && role[0] == "master"
	}, "replica %s promoted", replica.Addr())
	changed := time.Now()
	redistest.WaitFor(t, followTimeout, func() bool { return patterns(t, promoted) == 2 }, "subscribed on the promoted node")
	followed := time.Since(changed)

	queue := ""
	for i := 0; queue == ""; i++ {
		q := fmt.Sprint("promoted-", i)
		if c.Slot(t, lease.KeysFor(q).Ready) < 16384/3 { // the first master's third
			queue = q
		}
	}
	redistest.WaitFor(t, waitLong, func() bool { return c.MasterOf(t, lease.KeysFor(queue).Ready) == replica }, "the promoted node owns %s", queue)
	ls := expireOn(t, promoted, queue, 10*time.Millisecond)
	redistest.WaitFor(t, followTimeout, func() bool { return rec.hasExpired(expiry{ls.Queue, ls.Token}) }, "expiry on the promoted node")
	heard := time.Since(changed)
	t.Logf("CLUSTER FAILOVER: from the role change to the subscription on the promoted node %v, to its first expired event heard %v", followed, heard)

	redistest.WaitFor(t, waitLong, func() bool { return patterns(t, master.Client(t)) == 0 }, "unsubscribed from the demoted node")
	select {
	case <-topo:
	case <-time.After(waitLong):
		t.Fatal("TopologyFunc not called after the failover")
	}
	redistest.WaitFor(t, waitLong, l.Subscribed, "Subscribed() after the failover")
}

// TestSentinelPollOlderThanSwitch: a poll of the Sentinels that began
// before a switch was announced (it waited for a slow Sentinel after the
// others had named the old master) does not move the subscription back to
// the demoted master; a poll that began after the switch counts.
func TestSentinelPollOlderThanSwitch(t *testing.T) {
	t.Parallel()
	// Nothing here dials: the watch only records names and counts.
	l := NewListener(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), nil)
	w := &masterWatch{l: l, fo: &redis.FailoverOptions{MasterName: "m"}, s: &subscription{name: "redis"}}
	ctx := t.Context()
	w.named(ctx, "10.0.0.1:6379", "sentinel")

	gen := w.generation() // a poll begins; the Sentinels it asks name .1
	w.named(ctx, "10.0.0.2:6379", SwitchChannel)
	w.polled(ctx, "10.0.0.1:6379", gen) // its answer comes after the switch
	if m := w.master; m != "10.0.0.2:6379" {
		t.Errorf("master after a poll older than the switch: %s, want 10.0.0.2:6379", m)
	}
	if n := l.switches.Load(); n != 1 {
		t.Errorf("%d switches, want 1", n)
	}

	gen = w.generation()
	w.polled(ctx, "10.0.0.3:6379", gen) // a switch the poll found first
	if m := w.master; m != "10.0.0.3:6379" {
		t.Errorf("master after a newer poll: %s, want 10.0.0.3:6379", m)
	}
	if n := l.switches.Load(); n != 2 {
		t.Errorf("%d switches, want 2", n)
	}
}
