package notify

import (
	"context"
	"errors"
	"fmt"
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
	// EnsureEvents, or as read if setting failed. For a cluster it lists
	// "addr=flags" for each node, separated by spaces.
	Flags string
	// Enabled: the flags include E (keyevent channels) and x (expired),
	// so shadow-key expiries reach a Listener. For a cluster: on every
	// node.
	Enabled bool
	// Evicted: the flags include e (evicted), so shadow keys evicted under
	// maxmemory reach a Listener too.
	Evicted bool
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
// promoted replica without it would send nothing.
//
// Many managed services refuse CONFIG SET (or CONFIG altogether); then Err
// is set and the caller should warn and rely on timers and scans. EnsureEvents
// never panics on such replies.
func EnsureEvents(ctx context.Context, rdb redis.UniversalClient, configure bool) EventsState {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return ensureCluster(ctx, cc, configure)
	}
	return ensureNode(ctx, rdb, configure)
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
		mu    sync.Mutex
		nodes []string
		out   = EventsState{Enabled: true, Evicted: true}
		errs  []error
	)
	err := cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
		st := ensureNode(ctx, c, configure)
		addr := c.Options().Addr
		mu.Lock()
		defer mu.Unlock()
		nodes = append(nodes, addr+"="+st.Flags)
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
	if len(nodes) == 0 {
		out.Enabled, out.Evicted = false, false
	}
	slices.Sort(nodes)
	out.Flags = strings.Join(nodes, " ")
	out.Err = errors.Join(errs...)
	return out
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
