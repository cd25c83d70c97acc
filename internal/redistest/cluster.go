package redistest

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults for ClusterOptions.
const (
	// ClusterNodeTimeoutDefault is the cluster-node-timeout of a test
	// Cluster: a killed master is failed over within about twice this.
	ClusterNodeTimeoutDefault = time.Second
	// clusterReadyTimeout bounds StartCluster, failovers and migrations.
	clusterReadyTimeout = 30 * time.Second
	// numSlots is the number of hash slots of every Redis Cluster.
	numSlots = 16384
)

// ClusterOptions configures StartCluster. A nil *ClusterOptions means all
// defaults.
type ClusterOptions struct {
	// NodeTimeout is cluster-node-timeout: how long a node may be
	// unreachable before it is considered failing. Defaults to 1 second.
	NodeTimeout time.Duration
	// AllowPartialCoverage sets cluster-require-full-coverage no: the
	// nodes keep serving the slots they have while some slots have no
	// master. Defaults to false, Redis' own default (every slot errs
	// with CLUSTERDOWN until all are covered again).
	AllowPartialCoverage bool
	// Flags are extra redis-server flags for every node, after the
	// helper's own. Defaults to none.
	Flags []string
}

// Cluster is a private Redis Cluster of three masters, each with one
// replica, on loopback. Its nodes are Servers: Kill, Stop and Restart work
// on them as on any other, and a restarted node rejoins the Cluster (its
// nodes.conf is kept in its data directory).
type Cluster struct {
	nodes []*Server

	mu      sync.Mutex
	ids     map[string]string        // addr -> node id; ids survive restarts
	clients map[string]*redis.Client // addr -> admin connection
}

// StartCluster starts six redis-servers in cluster mode on free loopback
// ports, gives the first three a third of the slots each, makes each of
// the other three a replica of one of them, and returns once every node
// reports cluster_state:ok, all agree on who owns every slot, and every
// replica has finished its initial sync. The nodes are killed when the
// test ends. It fails the test after 30 s.
//
// Besides the flags of Start, every node runs with --cluster-enabled yes,
// the node timeout of opts, cluster-replica-validity-factor 0 (a replica
// may always take over, however long its master has been gone) and
// repl-diskless-sync-delay 0 (replicas sync at once).
func StartCluster(t testing.TB, opts *ClusterOptions) *Cluster {
	t.Helper()
	var o ClusterOptions
	if opts != nil {
		o = *opts
	}
	if o.NodeTimeout == 0 {
		o.NodeTimeout = ClusterNodeTimeoutDefault
	}
	coverage := "yes"
	if o.AllowPartialCoverage {
		coverage = "no"
	}
	flags := append([]string{
		"--cluster-enabled", "yes",
		"--cluster-node-timeout", strconv.FormatInt(o.NodeTimeout.Milliseconds(), 10),
		"--cluster-require-full-coverage", coverage,
		"--cluster-replica-validity-factor", "0",
		"--repl-diskless-sync-delay", "0",
	}, o.Flags...)
	// The bus port is normally port+10000, which may be taken or out of
	// range: pick it like the port.
	busPort := func() ([]string, error) {
		p, err := freePort()
		if err != nil {
			return nil, fmt.Errorf("picking a free cluster bus port: %w", err)
		}
		return []string{"--cluster-port", strconv.Itoa(p)}, nil
	}

	c := &Cluster{ids: map[string]string{}, clients: map[string]*redis.Client{}}
	t.Cleanup(c.closeClients)
	for range 6 {
		c.nodes = append(c.nodes, start(t, "redistest.StartCluster", "", flags, busPort))
	}
	ctx := context.Background()
	for i, n := range c.nodes {
		id, err := c.client(n).ClusterMyID(ctx).Result()
		if err != nil {
			t.Fatalf("redistest.StartCluster: CLUSTER MYID on %s: %v", n.Addr(), err)
		}
		c.ids[n.Addr()] = id
		// Distinct epochs up front, as redis-cli --cluster create does, so
		// the nodes need not resolve collisions first.
		if err := c.client(n).Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
			t.Fatalf("redistest.StartCluster: CLUSTER SET-CONFIG-EPOCH on %s: %v", n.Addr(), err)
		}
	}
	for i := range 3 {
		lo, hi := i*numSlots/3, (i+1)*numSlots/3-1
		if err := c.client(c.nodes[i]).Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			t.Fatalf("redistest.StartCluster: CLUSTER ADDSLOTSRANGE %d %d on %s: %v", lo, hi, c.nodes[i].Addr(), err)
		}
	}
	for _, n := range c.nodes[1:] {
		if err := c.client(c.nodes[0]).Do(ctx, "CLUSTER", "MEET", "127.0.0.1", n.Port(), n.busPort()).Err(); err != nil {
			t.Fatalf("redistest.StartCluster: CLUSTER MEET %s: %v", n.Addr(), err)
		}
	}
	c.poll(t, clusterReadyTimeout, "every node knows every other", func() (bool, string) {
		for _, n := range c.nodes {
			v, err := c.view(n)
			if err != nil {
				return false, err.Error()
			}
			if len(v.nodes) != 6 {
				return false, fmt.Sprintf("%s knows %d nodes", n.Addr(), len(v.nodes))
			}
			for _, ni := range v.nodes {
				if ni.has("handshake") || ni.has("noaddr") {
					return false, fmt.Sprintf("%s sees %s as %s", n.Addr(), ni.addr, strings.Join(ni.flags, ","))
				}
			}
		}
		return true, ""
	})
	for i, n := range c.nodes[3:] {
		master := c.ids[c.nodes[i].Addr()]
		if err := c.client(n).Do(ctx, "CLUSTER", "REPLICATE", master).Err(); err != nil {
			t.Fatalf("redistest.StartCluster: CLUSTER REPLICATE on %s: %v", n.Addr(), err)
		}
	}
	c.WaitHealthy(t, clusterReadyTimeout)
	return c
}

// Nodes returns every node, running or not. The first three were the
// masters at start; use Masters for the current ones.
func (c *Cluster) Nodes() []*Server { return slices.Clone(c.nodes) }

// Addrs returns every node's address.
func (c *Cluster) Addrs() []string { return addrsOf(c.nodes) }

func addrsOf(servers []*Server) []string {
	out := make([]string, len(servers))
	for i, n := range servers {
		out[i] = n.Addr()
	}
	return out
}

// URL returns the Cluster in redis.ParseClusterURL's form:
// redis://first?addr=second&addr=... naming every node.
func (c *Cluster) URL() string {
	addrs := c.Addrs()
	return "redis://" + addrs[0] + "?addr=" + strings.Join(addrs[1:], "&addr=")
}

// Client returns a go-redis ClusterClient seeded with every node, closed
// when the test ends. It reloads its view of the Cluster every 100 ms, so
// a test using it for checks follows failovers quickly.
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	rc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                      c.Addrs(),
		ClusterStateReloadInterval: 100 * time.Millisecond,
	})
	t.Cleanup(func() { _ = rc.Close() })
	return rc
}

// Node returns the node listening on addr, or nil.
func (c *Cluster) Node(addr string) *Server {
	for _, n := range c.nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// ID returns the Cluster node id of n.
func (c *Cluster) ID(n *Server) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[n.Addr()]
}

// Masters returns the nodes that own slots, as the running nodes agree;
// the test fails if they do not agree within 30 s.
func (c *Cluster) Masters(t testing.TB) []*Server {
	t.Helper()
	v := c.agreed(t)
	var out []*Server
	for _, n := range c.nodes {
		if slices.Contains(v.owner[:], c.ID(n)) {
			out = append(out, n)
		}
	}
	return out
}

// Slot returns the hash slot of key, as the Cluster computes it.
func (c *Cluster) Slot(t testing.TB, key string) int {
	t.Helper()
	for _, n := range c.running() {
		slot, err := c.client(n).ClusterKeySlot(context.Background(), key).Result()
		if err == nil {
			return int(slot)
		}
	}
	t.Fatalf("redistest: CLUSTER KEYSLOT %q: no running node answered", key)
	return 0
}

// SlotMaster returns the master that owns slot, as the running nodes
// agree.
func (c *Cluster) SlotMaster(t testing.TB, slot int) *Server {
	t.Helper()
	v := c.agreed(t)
	return c.byID(v.owner[slot])
}

// MasterOf returns the master that owns key's slot.
func (c *Cluster) MasterOf(t testing.TB, key string) *Server {
	t.Helper()
	return c.SlotMaster(t, c.Slot(t, key))
}

// OtherMaster returns a master other than m, as the running nodes agree:
// somewhere to move m's slots.
func (c *Cluster) OtherMaster(t testing.TB, m *Server) *Server {
	t.Helper()
	for _, o := range c.Masters(t) {
		if o != m {
			return o
		}
	}
	t.Fatalf("redistest: no master other than %s", m.Addr())
	return nil
}

// ReplicaOf returns a replica of master, as the running nodes agree, or
// nil if it has none.
func (c *Cluster) ReplicaOf(t testing.TB, master *Server) *Server {
	t.Helper()
	c.agreed(t)
	v, err := c.view(c.running()[0])
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	id := c.ID(master)
	for _, ni := range v.nodes {
		if ni.masterID == id && !ni.has("fail") && !ni.has("fail?") {
			return c.byID(ni.id)
		}
	}
	return nil
}

// Failover runs CLUSTER FAILOVER on replica, a coordinated switch with its
// master that loses no acknowledged write, and returns once every running
// node agrees that replica is the master of its slots and the Cluster is
// healthy again (see WaitHealthy).
func (c *Cluster) Failover(t testing.TB, replica *Server) {
	t.Helper()
	if err := c.client(replica).Do(context.Background(), "CLUSTER", "FAILOVER").Err(); err != nil {
		t.Fatalf("redistest: CLUSTER FAILOVER on %s: %v", replica.Addr(), err)
	}
	id := c.ID(replica)
	c.poll(t, clusterReadyTimeout, "replica "+replica.Addr()+" becomes master", func() (bool, string) {
		v, err := c.agreedView()
		if err != nil {
			return false, err.Error()
		}
		return slices.Contains(v.owner[:], id), "it owns no slot yet"
	})
	c.WaitHealthy(t, clusterReadyTimeout)
}

// KillMaster kills master with SIGKILL, waits until the Cluster has
// promoted a replica in its place and is healthy again among the running
// nodes, and returns the new master. How long that takes depends on the
// node timeout: about two of them plus an election.
func (c *Cluster) KillMaster(t testing.TB, master *Server) *Server {
	t.Helper()
	v := c.agreed(t)
	oldID := c.ID(master)
	slot := slices.Index(v.owner[:], oldID)
	if slot < 0 {
		t.Fatalf("redistest: KillMaster: %s owns no slot", master.Addr())
	}
	master.Kill(t)
	return c.WaitFailover(t, slot, oldID)
}

// WaitFailover waits until slot is owned by a running master other than
// the node with id oldID, and the Cluster is healthy among the running
// nodes; it returns the new owner.
func (c *Cluster) WaitFailover(t testing.TB, slot int, oldID string) *Server {
	t.Helper()
	var owner string
	c.poll(t, clusterReadyTimeout, fmt.Sprintf("slot %d fails over from %s", slot, oldID), func() (bool, string) {
		v, err := c.agreedView()
		if err != nil {
			return false, err.Error()
		}
		owner = v.owner[slot]
		return owner != oldID, "still owned by " + owner
	})
	c.WaitHealthy(t, clusterReadyTimeout)
	return c.byID(owner)
}

// WaitHealthy waits until every running node reports cluster_state:ok, all
// agree on the owner of every slot, every owner is running, and every
// running replica is linked to its master and done syncing.
func (c *Cluster) WaitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	c.poll(t, timeout, "the Cluster is healthy", c.healthy)
}

func (c *Cluster) healthy() (bool, string) {
	ctx := context.Background()
	v, err := c.agreedView()
	if err != nil {
		return false, err.Error()
	}
	for _, id := range v.owner {
		if n := c.byID(id); n == nil || !n.Running() {
			return false, "slot owner " + id + " is not running"
		}
	}
	for _, n := range c.running() {
		info, err := c.client(n).ClusterInfo(ctx).Result()
		if err != nil {
			return false, err.Error()
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return false, n.Addr() + " is not cluster_state:ok"
		}
		if slices.Contains(v.owner[:], c.ID(n)) {
			continue
		}
		repl, err := c.client(n).Info(ctx, "replication").Result()
		if err != nil {
			return false, err.Error()
		}
		if !strings.Contains(repl, "master_link_status:up") || !strings.Contains(repl, "master_sync_in_progress:0") {
			return false, "replica " + n.Addr() + " is not in sync"
		}
	}
	return true, ""
}

// poll calls cond until it reports true, failing the test with cond's last
// explanation after timeout.
func (c *Cluster) poll(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	pollUntil(t, timeout, what, cond)
}

// pollUntil calls cond every 10 ms until it reports true, failing the test
// with cond's last explanation after timeout.
func pollUntil(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if err := pollCtx(context.Background(), timeout, what, cond); err != nil {
		t.Fatalf("redistest: %v", err)
	}
}

func (c *Cluster) running() []*Server { return runningOf(c.nodes) }

func (c *Cluster) byID(id string) *Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	for addr, nid := range c.ids {
		if nid == id {
			return c.Node(addr)
		}
	}
	return nil
}

// client returns an admin connection to n that fails fast when n is down.
func (c *Cluster) client(n *Server) *redis.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	return adminClient(c.clients, n.Addr(), "")
}

// adminClient returns the connection to addr cached in clients, or makes
// one that fails fast when the node is down. The caller holds the lock
// that guards clients.
func adminClient(clients map[string]*redis.Client, addr, password string) *redis.Client {
	if rc, ok := clients[addr]; ok {
		return rc
	}
	rc := redis.NewClient(&redis.Options{
		Addr:         addr,
		Password:     password,
		DialTimeout:  time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		MaxRetries:   -1,
		PoolSize:     2,
	})
	clients[addr] = rc
	return rc
}

func (c *Cluster) closeClients() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rc := range c.clients {
		_ = rc.Close()
	}
}

// busPort returns the --cluster-port the node was started with.
func (s *Server) busPort() int {
	for i := len(s.flags) - 2; i >= 0; i-- {
		if s.flags[i] == "--cluster-port" {
			p, _ := strconv.Atoi(s.flags[i+1])
			return p
		}
	}
	return s.port + 10000
}

// clusterView is one node's CLUSTER NODES.
type clusterView struct {
	nodes []nodeLine
	owner [numSlots]string // slot -> node id; "" if unassigned
}

type nodeLine struct {
	id, addr, masterID string
	flags              []string
}

func (n nodeLine) has(flag string) bool { return slices.Contains(n.flags, flag) }

func (c *Cluster) view(n *Server) (*clusterView, error) {
	out, err := c.client(n).ClusterNodes(context.Background()).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER NODES on %s: %w", n.Addr(), err)
	}
	return parseClusterNodes(out)
}

func parseClusterNodes(out string) (*clusterView, error) {
	v := &clusterView{}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		nl := nodeLine{id: f[0], addr: addr, flags: strings.Split(f[2], ",")}
		if f[3] != "-" {
			nl.masterID = f[3]
		}
		v.nodes = append(v.nodes, nl)
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being imported or migrated
			}
			loS, hiS, isRange := strings.Cut(r, "-")
			lo, err := strconv.Atoi(loS)
			if err != nil {
				return nil, fmt.Errorf("CLUSTER NODES: bad slot %q", r)
			}
			hi := lo
			if isRange {
				if hi, err = strconv.Atoi(hiS); err != nil {
					return nil, fmt.Errorf("CLUSTER NODES: bad slot range %q", r)
				}
			}
			if lo < 0 || hi >= numSlots || lo > hi {
				return nil, fmt.Errorf("CLUSTER NODES: slot range %q out of bounds", r)
			}
			for s := lo; s <= hi; s++ {
				v.owner[s] = f[0]
			}
		}
	}
	return v, nil
}

// agreedView returns the slot map if every running node has the same one
// and it covers every slot.
func (c *Cluster) agreedView() (*clusterView, error) {
	var first *clusterView
	var firstAddr string
	for _, n := range c.running() {
		v, err := c.view(n)
		if err != nil {
			return nil, err
		}
		if first == nil {
			first, firstAddr = v, n.Addr()
			continue
		}
		if v.owner != first.owner {
			return nil, fmt.Errorf("%s and %s disagree on the slot map", firstAddr, n.Addr())
		}
	}
	if first == nil {
		return nil, fmt.Errorf("no node is running")
	}
	if i := slices.Index(first.owner[:], ""); i >= 0 {
		return nil, fmt.Errorf("slot %d has no owner", i)
	}
	return first, nil
}

func (c *Cluster) agreed(t testing.TB) *clusterView {
	t.Helper()
	var v *clusterView
	c.poll(t, clusterReadyTimeout, "the nodes agree on the slot map", func() (bool, string) {
		var err error
		v, err = c.agreedView()
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	return v
}

// hostPort splits addr into host and numeric port.
func hostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	return h, port, err
}
