package redistest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestClusterFailoverAndKill(t *testing.T) {
	t.Parallel()
	c := StartCluster(t, nil)
	ctx := t.Context()
	rc := c.Client(t)
	const key = "failover-key"
	if err := rc.Set(ctx, key, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	m := c.MasterOf(t, key)
	// On a loaded machine a replica may still be flagged by a peer.
	var r *Server
	WaitFor(t, 30*time.Second, func() bool { r = c.ReplicaOf(t, m); return r != nil }, "a replica of %s", m.Addr())
	began := time.Now()
	c.Failover(t, r)
	t.Logf("CLUSTER FAILOVER took %v", time.Since(began))
	if got := c.MasterOf(t, key); got != r {
		t.Fatalf("after CLUSTER FAILOVER the master of %s is %s, want %s", key, got.Addr(), r.Addr())
	}
	began = time.Now()
	nm := c.KillMaster(t, r)
	t.Logf("failover after SIGKILL took %v", time.Since(began))
	if nm == r || nm == nil || !nm.Running() {
		t.Fatalf("new master %v", nm)
	}
	WaitFor(t, 10*time.Second, func() bool { return rc.Get(ctx, key).Val() == "v" }, "the key is readable on the new master")
	// The killed node rejoins as a replica of the new master.
	r.Restart(t)
	c.WaitHealthy(t, 30*time.Second)
	// Other nodes clear its fail flag only once they have talked to it
	// again, which may come after the Cluster is healthy.
	WaitFor(t, 30*time.Second, func() bool { return c.ReplicaOf(t, nm) == r },
		"restarted node %s is seen as the replica of %s", r.Addr(), nm.Addr())
}

func TestClusterMigration(t *testing.T) {
	t.Parallel()
	began := time.Now()
	c := StartCluster(t, nil)
	t.Logf("cluster ready in %v", time.Since(began))
	ctx := t.Context()
	rc := c.Client(t)
	checkStarted(t, c)
	const a, b = "{mig}a", "{mig}b"
	if err := rc.Set(ctx, a, "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Set(ctx, b, "2", 0).Err(); err != nil {
		t.Fatal(err)
	}
	slot := c.Slot(t, a)
	from := c.SlotMaster(t, slot)
	to := c.OtherMaster(t, from)
	mig := c.BeginMigration(t, slot, to)
	// Half the keys moved: a command on both gets TRYAGAIN, one on a moved
	// key alone gets ASK.
	if n := mig.MoveKeys(t, 1); n != 1 {
		t.Fatalf("moved %d keys, want 1", n)
	}
	src := redis.NewClient(&redis.Options{Addr: from.Addr(), MaxRetries: -1})
	defer src.Close()
	err := src.MGet(ctx, a, b).Err()
	if !redis.IsTryAgainError(err) {
		t.Fatalf("MGET across a split slot: %v, want TRYAGAIN", err)
	}
	var askSeen bool
	for _, k := range []string{a, b} {
		if err := src.Get(ctx, k).Err(); err != nil && strings.HasPrefix(err.Error(), "ASK ") {
			askSeen = true
		}
	}
	if !askSeen {
		t.Fatalf("no ASK for the moved key on the source")
	}
	mig.Finish(t)
	if got := c.SlotMaster(t, slot); got != to {
		t.Fatalf("slot %d owned by %s after Finish, want %s", slot, got.Addr(), to.Addr())
	}
	if v, err := rc.MGet(ctx, a, b).Result(); err != nil || v[0] != "1" || v[1] != "2" {
		t.Fatalf("MGET after migration: %v, %v", v, err)
	}
	// Migrate, held between batches: a command on a moved key meets ASK,
	// which Refusals counts.
	before, err := c.Refusals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	back := redis.NewClient(&redis.Options{Addr: to.Addr(), MaxRetries: -1})
	defer back.Close()
	var held []int
	st, err := c.Migrate(ctx, slot, to, from, &MigrateOptions{Batch: 1, Between: func(ctx context.Context, moved int) error {
		held = append(held, moved)
		if moved == 1 {
			_ = back.Get(ctx, a).Err() // whichever key moved first answers ASK
			_ = back.Get(ctx, b).Err()
		}
		return nil
	}})
	if err != nil || st.Keys != 2 || st.Batches != 2 || len(held) != 3 {
		t.Fatalf("Migrate back: %+v, %v, held after %v keys; want 2 keys in 2 batches, held 3 times", st, err, held)
	}
	if c.SlotMaster(t, slot) != from {
		t.Fatalf("slot %d not back on %s", slot, from.Addr())
	}
	after, err := c.Refusals(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after["ASK"] <= before["ASK"] {
		t.Errorf("Refusals: ASK %d before, %d after a GET of a moved key", before["ASK"], after["ASK"])
	}
	if _, err := c.Migrate(ctx, slot, to, from, nil); err == nil {
		t.Errorf("Migrate of a slot the source does not own: no error")
	}
	slots := c.Reshard(t, 50, to, from)
	if len(slots) != 50 {
		t.Fatalf("resharded %d slots", len(slots))
	}
	for _, s := range slots {
		if c.SlotMaster(t, s) != from {
			t.Fatalf("slot %d not moved", s)
		}
	}
	c.WaitHealthy(t, 10*time.Second)
}

func TestStartSentinel(t *testing.T) {
	t.Parallel()
	began := time.Now()
	s := StartSentinel(t, &SentinelOptions{Password: "data-secret", SentinelPassword: "sentinel-secret"})
	t.Logf("sentinel set ready in %v", time.Since(began))
	ctx := t.Context()
	opt, err := redis.ParseFailoverURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	rc := redis.NewFailoverClient(opt)
	defer rc.Close()
	if err := rc.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET through the URL's failover client: %v", err)
	}
	first := s.Master(t)
	began = time.Now()
	second := s.Failover(t)
	t.Logf("SENTINEL FAILOVER switched in %v", time.Since(began))
	if second == first || second != s.Data[1] {
		t.Fatalf("the master did not change")
	}
	WaitFor(t, 10*time.Second, func() bool { return rc.Get(ctx, "k").Val() == "v" }, "the key is readable on the new master")
}

func TestSentinelKillMaster(t *testing.T) {
	t.Parallel()
	s := StartSentinel(t, nil)
	ctx := t.Context()
	rc := s.Client(t)
	if err := rc.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	first := s.Master(t)
	began := time.Now()
	second := s.KillMaster(t)
	t.Logf("killed master switched in %v", time.Since(began))
	if second == first {
		t.Fatalf("the master did not change")
	}
	WaitFor(t, 10*time.Second, func() bool { return rc.Get(ctx, "k").Val() == "v" }, "the key is readable on the new master")
	// The Sentinels would demote the restarted old master only when they
	// next look at it (about 20 s); Rejoin does it at once.
	s.Rejoin(t, first, 10*time.Second)
	if got, err := first.Client(t).Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k on the rejoined replica: %q, %v", got, err)
	}
	if s.Master(t) != second {
		t.Fatalf("the master changed when the old one rejoined")
	}
}

// checkStarted checks what StartCluster promises: three masters with a
// replica each, keys spread over all three, the URL in go-redis' form.
func checkStarted(t *testing.T, c *Cluster) {
	t.Helper()
	ctx := t.Context()
	masters := c.Masters(t)
	if len(masters) != 3 {
		t.Fatalf("masters = %d, want 3", len(masters))
	}
	rc := c.Client(t)
	// Keys spread over every master, each readable through the Cluster.
	seen := map[*Server]bool{}
	for i := 0; len(seen) < 3 && i < 100; i++ {
		k := "k" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		if err := rc.Set(ctx, k, "v", 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", k, err)
		}
		m := c.MasterOf(t, k)
		got, err := m.Client(t).Get(ctx, k).Result()
		if err != nil || got != "v" {
			t.Fatalf("GET %s on its master %s: %q, %v", k, m.Addr(), got, err)
		}
		seen[m] = true
	}
	if len(seen) != 3 {
		t.Fatalf("keys landed on %d masters, want 3", len(seen))
	}
	for _, m := range masters {
		if c.ReplicaOf(t, m) == nil {
			t.Fatalf("master %s has no replica", m.Addr())
		}
	}
	opt, err := redis.ParseClusterURL(c.URL())
	if err != nil || len(opt.Addrs) != 6 {
		t.Fatalf("ParseClusterURL(%q) = %v, %v; want 6 addresses", c.URL(), opt, err)
	}
}
