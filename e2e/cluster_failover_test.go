//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redisconn"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// clusterQueues returns perMaster queue names named prefix-N on each of
// the three masters of c.
func clusterQueues(t *testing.T, c *redistest.Cluster, prefix string, perMaster int) []string {
	t.Helper()
	per := map[*redistest.Server]int{}
	var out []string
	for i := 0; len(out) < 3*perMaster; i++ {
		if i > 1000 {
			t.Fatalf("could not place %d queues on each master", perMaster)
		}
		q := fmt.Sprintf("%s-%d", prefix, i)
		if m := c.MasterOf(t, lease.KeysFor(q).Ready); per[m] < perMaster {
			per[m]++
			out = append(out, q)
		}
	}
	return out
}

// clusterLease returns a lease client on c through the connection code the
// daemon uses (slot map reloaded every second and on errors), with its
// own pool for blocking takes, and that main client.
func clusterLease(t *testing.T, c *redistest.Cluster, cfg lease.Config) (*lease.Client, *redis.ClusterClient) {
	t.Helper()
	main := redisconn.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: redisconn.ClusterReloadIntervalDefault})
	blocking := redisconn.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: redisconn.ClusterReloadIntervalDefault, PoolSize: 32})
	t.Cleanup(func() { _ = main.Close(); _ = blocking.Close() })
	cfg.BlockingClient = blocking
	lc, err := lease.New(main, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	return lc, main
}

// otherMaster returns a master of c other than m.
func otherMaster(t *testing.T, c *redistest.Cluster, m *redistest.Server) *redistest.Server {
	t.Helper()
	for _, o := range c.Masters(t) {
		if o != m {
			return o
		}
	}
	t.Fatal("no other master")
	return nil
}

// TestClusterFailoverUnderLoad runs producers, consumers (abandoning some
// leases) and the ackd binary with a Cluster URL on six queues, two per
// master, with lease.Config.Replicas 1, while CLUSTER FAILOVER promotes
// the replica of one master, then while another master is SIGKILLed (and
// restarted, to be the new master's replica again). The ledger must then
// account for every message: acked, or gone with an error to the caller
// that wrote the change. The error window callers saw and the requeue lag
// after each fault are logged.
func TestClusterFailoverUnderLoad(t *testing.T) {
	t.Parallel()
	began := time.Now()
	c := redistest.StartCluster(t, nil)
	lc, rdb := clusterLease(t, c, lease.Config{Replicas: 1, ReplicaTimeout: 500 * time.Millisecond})
	queues := clusterQueues(t, c, "fo", 2)
	a := startAckd(t, c.Nodes()[0], append([]string{"ACKD_REDIS_URL=" + c.URL()}, durableAckd...)...)
	w := startLoad(t, func(string) *lease.Client { return lc }, queues)

	m := c.MasterOf(t, lease.KeysFor(queues[0]).Ready)
	r := c.ReplicaOf(t, m)
	failover := time.Now()
	c.Failover(t, r)
	healthy := time.Now()
	w.waitAcks(t, 200, 30*time.Second, "the workload recovers after CLUSTER FAILOVER")

	victim := otherMaster(t, c, r)
	kill := time.Now()
	c.KillMaster(t, victim)
	promoted := time.Now()
	// Back as a replica of the promoted node, so that WAIT can succeed on
	// that shard again.
	victim.Restart(t)
	c.WaitHealthy(t, 30*time.Second)
	rejoined := time.Now()
	w.waitAcks(t, 200, 30*time.Second, "the workload recovers after the SIGKILL")
	w.finish(t, lc, queues)
	notRepl, _ := a.metric(t, "ackd_not_replicated_total")
	a.stop(t)
	checkLedger(t, lc, rdb, queues, w.led, true)
	t.Logf("ackd: %v sweeps not replicated in time (swept again)", notRepl)
	t.Logf("CLUSTER FAILOVER of %s to %s: healthy after %v; callers: %s; %s",
		m.Addr(), r.Addr(), healthy.Sub(failover).Round(time.Millisecond), w.led.errorWindow(failover, kill), w.led.lagsSince(failover, kill))
	t.Logf("SIGKILL of master %s: replica promoted after %v, killed node replicating after %v; callers: %s; %s",
		victim.Addr(), promoted.Sub(kill).Round(time.Millisecond), rejoined.Sub(kill).Round(time.Millisecond),
		w.led.errorWindow(kill, time.Time{}), w.led.lagsSince(kill, time.Time{}))
	t.Logf("test took %v", time.Since(began).Round(time.Millisecond))
}

// TestClusterMigrationUnderLoad moves the slot of a busy queue to another
// master with MIGRATE while producers, consumers and the daemon work on
// it, holding the slot mid-migration until the workload has met TRYAGAIN
// or ASK; then reshards the slots of the busy queues of one master and 20
// of its idle slots to another, one slot after the other. Half the queues use lease.Config.Replicas 1 (each change and its
// WAIT go to the slot's master in one pipeline, so lease follows the
// redirects itself), half go through go-redis' own redirects. Every
// refusal must be retried within lease.Config.RetryWindow: no call may
// fail to its caller, and the ledger must account for every message.
func TestClusterMigrationUnderLoad(t *testing.T) {
	t.Parallel()
	began := time.Now()
	c := redistest.StartCluster(t, nil)
	// A replica stalled by a loaded host must not fail a call with
	// ErrNotReplicated: this test is about refusals reaching callers.
	durable, rdb := clusterLease(t, c, lease.Config{Replicas: 1, ReplicaTimeout: 2 * time.Second})
	plain, _ := clusterLease(t, c, lease.Config{})
	queues := clusterQueues(t, c, "mig", 2)
	clientFor := func(q string) *lease.Client {
		for i, o := range queues {
			if o == q && i%2 == 1 {
				return plain
			}
		}
		return durable
	}
	a := startAckd(t, c.Nodes()[0], append([]string{"ACKD_REDIS_URL=" + c.URL()}, durableAckd...)...)
	w := startLoad(t, clientFor, queues)
	ctx := t.Context()
	refusals := func() map[string]int64 {
		r, err := c.Refusals(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	met := func(before map[string]int64) int64 {
		now := refusals()
		return now["TRYAGAIN"] - before["TRYAGAIN"] + now["ASK"] - before["ASK"]
	}
	metEach := func(before map[string]int64) string {
		now := refusals()
		return fmt.Sprintf("TRYAGAIN %d, ASK %d, MOVED %d", now["TRYAGAIN"]-before["TRYAGAIN"], now["ASK"]-before["ASK"], now["MOVED"]-before["MOVED"])
	}

	// One busy queue's slot, held mid-migration after SETSLOT and after
	// the first batch of keys until the workload has been refused there.
	slot := c.Slot(t, lease.KeysFor(queues[0]).Ready)
	from := c.SlotMaster(t, slot)
	to := otherMaster(t, c, from)
	fault := time.Now()
	before := refusals()
	// Two keys per MIGRATE: after the first batch the queue's keys are
	// split between the nodes (a script on them gets TRYAGAIN, a command
	// on a moved key ASK). Each of the two holds lasts until 20 more
	// refusals or 1 s, so the slot stays migrating well inside the
	// default RetryWindow (5 s).
	holds := 0
	hold := func(ctx context.Context, moved int) error {
		if holds++; holds > 2 {
			return nil
		}
		target := met(before) + 20
		return pollUntil(ctx, time.Second, func() bool { return met(before) >= target })
	}
	st, err := c.Migrate(ctx, slot, from, to, &redistest.MigrateOptions{Batch: 2, Between: hold})
	if err != nil {
		t.Fatalf("migrating slot %d under load: %v", slot, err)
	}
	metDuring, during := met(before), metEach(before)
	w.waitAcks(t, 100, 30*time.Second, "the workload goes on after the migration")
	errs := w.led.errorsSince(fault)
	t.Logf("slot %d of %s migrated from %s to %s: %d keys in %d batches, held %v, agreed after %v; Redis refused %s; callers: %s; %s",
		slot, queues[0], from.Addr(), to.Addr(), st.Keys, st.Batches, st.Held.Round(time.Millisecond), st.Agreed.Round(time.Millisecond),
		during, w.led.errorWindow(fault, time.Time{}), w.led.lagsSince(fault, time.Time{}))
	if metDuring == 0 {
		t.Errorf("no TRYAGAIN or ASK while the slot was held: the workload never met the migration")
	}
	if len(errs) > 0 {
		t.Errorf("%d calls failed to their callers during the migration, e.g. %s %q: %v", len(errs), errs[0].op, errs[0].payload, errs[0].err)
	}

	// A reshard: the slots of the busy queues on queues[1]'s master and 20
	// of its idle slots, to another master, one after the other as
	// redis-cli --cluster reshard moves them.
	src := c.MasterOf(t, lease.KeysFor(queues[1]).Ready)
	dst := otherMaster(t, c, src)
	var slots []int
	for _, q := range queues[1:] {
		if c.MasterOf(t, lease.KeysFor(q).Ready) == src {
			slots = append(slots, c.Slot(t, lease.KeysFor(q).Ready))
		}
	}
	busy := len(slots)
	for _, s := range c.SlotsOf(t, src) {
		if len(slots) == busy+20 {
			break
		}
		if !slices.Contains(slots, s) {
			slots = append(slots, s)
		}
	}
	reshard := time.Now()
	before = refusals()
	keys := 0
	for _, s := range slots {
		st, err := c.Migrate(ctx, s, src, dst, nil)
		if err != nil {
			t.Fatalf("resharding slot %d under load: %v", s, err)
		}
		keys += st.Keys
	}
	took := time.Since(reshard)
	w.waitAcks(t, 100, 30*time.Second, "the workload goes on after the reshard")
	errs = w.led.errorsSince(reshard)
	t.Logf("reshard of %d busy and %d idle slots (%d keys) from %s to %s in %v; Redis refused %s; callers: %s; %s",
		busy, len(slots)-busy, keys, src.Addr(), dst.Addr(), took.Round(time.Millisecond), metEach(before), w.led.errorWindow(reshard, time.Time{}), w.led.lagsSince(reshard, time.Time{}))
	if len(errs) > 0 {
		t.Errorf("%d calls failed to their callers during the reshard, e.g. %s %q: %v", len(errs), errs[0].op, errs[0].payload, errs[0].err)
	}

	w.finish(t, durable, queues)
	a.stop(t)
	checkLedger(t, durable, rdb, queues, w.led, true)
	t.Logf("test took %v", time.Since(began).Round(time.Millisecond))
}

// pollUntil calls cond every 10 ms until it reports true; after timeout
// it returns nil anyway (the caller measures what happened), and ctx's
// error if ctx ends first.
func pollUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() && time.Now().Before(deadline) {
		pause(ctx, 10*time.Millisecond) // polling period
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return nil
}
