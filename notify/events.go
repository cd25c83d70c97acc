package notify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ErrConfig means notify-keyspace-events could not be read or set: CONFIG
// is renamed or refused (NOPERM, or a managed service that blocks it), or
// Redis is unreachable. EventsState.Err wraps it together with the cause.
var ErrConfig = errors.New("notify: cannot read or set notify-keyspace-events")

const eventsParam = "notify-keyspace-events"

// EventsState is what EnsureEvents found (and did).
type EventsState struct {
	// Flags is notify-keyspace-events as Redis reports it after
	// EnsureEvents, or as read if setting failed. For a Cluster, or a
	// Sentinel-managed master with its replicas, it lists "addr=flags"
	// for each node, masters first, separated by spaces.
	Flags string
	// Enabled: the flags include E (keyevent channels) and x (expired),
	// so shadow-key expiries reach a Listener. For a Cluster: on every
	// master.
	Enabled bool
	// Evicted: the flags include e (evicted), so shadow keys evicted under
	// maxmemory reach a Listener too (on every master).
	Evicted bool
	// ReplicasEnabled: every replica EnsureEvents reached has E and x
	// too, so that one promoted by a failover sends expired events at
	// once (the setting is per node and not replicated). True when it
	// reached no replica: a standalone server, or a deployment without
	// replicas.
	ReplicasEnabled bool
	// Replicas is how many replicas EnsureEvents reached.
	Replicas int
	// ReplicaErr says why a replica's flags could not be read or set. It
	// is not an outage: the masters serve.
	ReplicaErr error
	// Changed: EnsureEvents set the flags (on at least one node).
	Changed bool
	// Err says why the flags could not be read or set; it wraps ErrConfig.
	// Enabled and Evicted then describe what could be read, if anything.
	Err error
}

// configClient is the part of go-redis EnsureEvents needs from one node.
type configClient interface {
	ConfigGet(ctx context.Context, parameter string) *redis.MapStringStringCmd
	ConfigSet(ctx context.Context, parameter, value string) *redis.StatusCmd
}

// EnsureEvents reads notify-keyspace-events and, if configure is true,
// adds whichever of E, x and e are missing to what is there, then reads it
// again. It never removes a flag (others may rely on them); 'A' already
// covers x and e. On a cluster it does this on every node, replicas
// included, since the setting is per node and not replicated, and a
// promoted replica without it would send nothing. For a Sentinel-managed
// master use EnsureEventsSentinel, which reaches its replicas too.
//
// Many managed services refuse CONFIG SET (or CONFIG altogether); then Err
// is set and the caller should warn and rely on timers and scans. EnsureEvents
// never panics on such replies.
func EnsureEvents(ctx context.Context, rdb redis.UniversalClient, configure bool) EventsState {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return ensureCluster(ctx, cc, configure)
	}
	st := ensureNode(ctx, rdb, configure)
	st.ReplicasEnabled = true
	return st
}

// EnsureEventsSentinel is EnsureEvents for rdb, a client made by
// redis.NewFailoverClient with fo: it checks (and, if configure is true,
// sets) the master through rdb, then every replica the Sentinels list as
// up, connecting to each with fo's credentials for the data nodes.
// Replicas that fail are reported in ReplicaErr, not Err.
func EnsureEventsSentinel(ctx context.Context, rdb redis.UniversalClient, fo *redis.FailoverOptions, configure bool) EventsState {
	out := ensureNode(ctx, rdb, configure)
	out.ReplicasEnabled = true
	if out.Err != nil || fo == nil {
		return out
	}
	addrs, err := sentinelReplicas(ctx, fo)
	if err != nil {
		out.ReplicaErr = fmt.Errorf("%w: listing the replicas: %w", ErrConfig, err)
		return out
	}
	out.Flags = "master=" + out.Flags
	ensureReplicas(ctx, &out, addrs, configure, func(addr string) *redis.Client {
		return redis.NewClient(&redis.Options{
			Addr:        addr,
			Username:    fo.Username,
			Password:    fo.Password,
			DB:          fo.DB,
			TLSConfig:   fo.TLSConfig,
			DialTimeout: cmp.Or(fo.DialTimeout, sentinelDialTimeout),
			MaxRetries:  -1,
			Protocol:    fo.Protocol,
		})
	})
	return out
}

// ensureReplicas runs ensureNode on each replica at addrs, through a
// client from dial, and adds what it found to out.
func ensureReplicas(ctx context.Context, out *EventsState, addrs []string, configure bool, dial func(addr string) *redis.Client) {
	nodes := []string{out.Flags}
	var errs []error
	for _, addr := range addrs {
		c := dial(addr)
		st := ensureNode(ctx, c, configure)
		_ = c.Close()
		out.Replicas++
		nodes = append(nodes, addr+"="+st.Flags)
		out.ReplicasEnabled = out.ReplicasEnabled && st.Enabled
		out.Changed = out.Changed || st.Changed
		if st.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, st.Err))
		}
	}
	out.Flags = strings.Join(nodes, " ")
	out.ReplicaErr = errors.Join(append([]error{out.ReplicaErr}, errs...)...)
}

// sentinelReplicas returns the addresses of the replicas of fo.MasterName
// that the first Sentinel to answer sees up and connected.
func sentinelReplicas(ctx context.Context, fo *redis.FailoverOptions) ([]string, error) {
	var errs []error
	for _, addr := range fo.SentinelAddrs {
		sc := redis.NewSentinelClient(sentinelOptions(fo, addr))
		reps, err := sc.Replicas(ctx, fo.MasterName).Result()
		_ = sc.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		var out []string
		for _, r := range reps {
			if strings.Contains(r["flags"], "_down") || strings.Contains(r["flags"], "disconnected") || r["ip"] == "" {
				continue
			}
			out = append(out, net.JoinHostPort(r["ip"], r["port"]))
		}
		slices.Sort(out)
		return out, nil
	}
	return nil, errors.Join(errs...)
}

func ensureNode(ctx context.Context, c configClient, configure bool) EventsState {
	flags, err := readFlags(ctx, c)
	if err != nil {
		return EventsState{Err: err}
	}
	st := stateOf(flags)
	want := withEventFlags(flags)
	if !configure || want == flags {
		return st
	}
	if err := c.ConfigSet(ctx, eventsParam, want).Err(); err != nil {
		st.Err = fmt.Errorf("%w: CONFIG SET %s %q: %w", ErrConfig, eventsParam, want, err)
		return st
	}
	flags, err = readFlags(ctx, c)
	if err != nil {
		st.Err = err
		st.Changed = true
		return st
	}
	st = stateOf(flags)
	st.Changed = true
	return st
}

func ensureCluster(ctx context.Context, cc *redis.ClusterClient, configure bool) EventsState {
	var (
		mu      sync.Mutex
		masters []string
		out     = EventsState{Enabled: true, Evicted: true, ReplicasEnabled: true}
		errs    []error
	)
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		st := ensureNode(ctx, c, configure)
		addr := c.Options().Addr
		mu.Lock()
		defer mu.Unlock()
		masters = append(masters, addr+"="+st.Flags)
		out.Enabled = out.Enabled && st.Enabled
		out.Evicted = out.Evicted && st.Evicted
		out.Changed = out.Changed || st.Changed
		if st.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, st.Err))
		}
		return nil
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("%w: list cluster nodes: %w", ErrConfig, err))
	}
	slices.Sort(masters)
	out.Flags = strings.Join(masters, " ")
	out.Err = errors.Join(errs...)
	if len(masters) == 0 {
		out.Enabled, out.Evicted = false, false
		return out
	}
	// A replica about to be promoted matters as much as a master. Read
	// them from CLUSTER NODES: go-redis' slot map (CLUSTER SLOTS) leaves
	// out a replica that has not reported a replication offset yet.
	addrs, err := clusterReplicas(ctx, cc)
	if err != nil {
		out.ReplicaErr = fmt.Errorf("%w: listing the replicas: %w", ErrConfig, err)
		return out
	}
	o := cc.Options()
	ensureReplicas(ctx, &out, addrs, configure, func(addr string) *redis.Client {
		return redis.NewClient(&redis.Options{
			Addr:        addr,
			Username:    o.Username,
			Password:    o.Password,
			TLSConfig:   o.TLSConfig,
			DialTimeout: o.DialTimeout,
			MaxRetries:  -1,
			Protocol:    o.Protocol,
		})
	})
	return out
}

// clusterReplicas returns the addresses of the replicas CLUSTER NODES
// lists, except those the Cluster agrees have failed and those not yet
// joined (a "fail?" is one node's suspicion, common on a loaded host).
func clusterReplicas(ctx context.Context, cc *redis.ClusterClient) ([]string, error) {
	nodes, err := cc.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, err
	}
	var out []string
	for line := range strings.Lines(nodes) {
		// <id> <ip:port@cport[,hostname]> <flags> <master> ...
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		flags := strings.Split(f[2], ",")
		if !slices.Contains(flags, "slave") || slices.ContainsFunc(flags, func(fl string) bool {
			return fl == "fail" || fl == "handshake" || fl == "noaddr"
		}) {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		if host, port, err := net.SplitHostPort(addr); err == nil && host != "" && port != "0" {
			out = append(out, addr)
		}
	}
	slices.Sort(out)
	return out, nil
}

func readFlags(ctx context.Context, c configClient) (string, error) {
	m, err := c.ConfigGet(ctx, eventsParam).Result()
	if err != nil {
		return "", fmt.Errorf("%w: CONFIG GET %s: %w", ErrConfig, eventsParam, err)
	}
	flags, ok := m[eventsParam]
	if !ok {
		return "", fmt.Errorf("%w: CONFIG GET %s: no such parameter in the reply", ErrConfig, eventsParam)
	}
	return flags, nil
}

func stateOf(flags string) EventsState {
	return EventsState{
		Flags:   flags,
		Enabled: hasFlag(flags, 'E') && hasFlag(flags, 'x'),
		Evicted: hasFlag(flags, 'e'),
	}
}

// hasFlag reports whether flags turn on f; 'A' stands for "g$lshzxetd".
func hasFlag(flags string, f byte) bool {
	if strings.IndexByte(flags, f) >= 0 {
		return true
	}
	return strings.IndexByte("g$lshzxetd", f) >= 0 && strings.IndexByte(flags, 'A') >= 0
}

// withEventFlags returns flags plus whichever of E, x and e they lack.
func withEventFlags(flags string) string {
	out := flags
	for _, f := range []byte("Exe") {
		if !hasFlag(out, f) {
			out += string(f)
		}
	}
	return out
}
