package reaper

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/fallback"
	"github.com/ackd/ackd/internal/schedule"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/notify"
)

// Defaults for Config.
const (
	ScanIntervalDefault         = fallback.ScanIntervalDefault // 5 minutes
	ConcurrencyDefault          = schedule.ConcurrencyDefault  // 4
	SweepLimitDefault           = lease.SweepLimitDefault      // 1000
	RetryDelayDefault           = schedule.RetryDelayDefault   // 1 second
	CheckIntervalDefault        = 1100 * time.Millisecond
	OutageCheckIntervalDefault  = time.Second
	ListenerPingIntervalDefault = notify.PingIntervalDefault     // 30 seconds
	TopologyIntervalDefault     = notify.TopologyIntervalDefault // 500 milliseconds
	ShutdownTimeoutDefault      = 10 * time.Second
)

// Bounds of Config's numbers.
const (
	MaxConcurrency = 256
	MaxSweepLimit  = 10 * lease.SweepLimitDefault // what lease.Sweep accepts
)

// ErrConfig is wrapped by every error of New about its Config.
var ErrConfig = errors.New("reaper: invalid configuration")

// Config configures a Reaper. A nil *Config means all defaults. Every
// interval is a field, so that tests need not wait on production values.
type Config struct {
	// Queues is the fixed set of queues to watch. Events and wake messages
	// of other queues are ignored (and counted in Stats().Ignored). Empty:
	// every queue in the registry (ackd:queues), read again at each scan.
	Queues []string
	// ScanInterval is the time from the end of one scan of every watched
	// queue to the start of the next: the safety net for lost events and
	// timers. Each scan also re-checks the keyspace-events setting.
	// Defaults to 5 minutes.
	ScanInterval time.Duration
	// Concurrency bounds how many queues are swept at once, whatever
	// triggered the sweeps (1 to MaxConcurrency). Defaults to 4.
	Concurrency int
	// SweepLimit bounds the leases requeued (and delayed messages
	// promoted) by one Sweep script call, and so how long one call blocks
	// Redis; a sweep repeats the call until its queue is done (1 to
	// MaxSweepLimit). Defaults to 1000.
	SweepLimit int
	// RetryDelay is how long after a failed sweep its queue is swept
	// again. Defaults to 1 second.
	RetryDelay time.Duration
	// ConfigureEvents makes the Reaper turn on the keyspace events it
	// listens to (CONFIG SET notify-keyspace-events, adding E, x and e to
	// what is there) at start and at every scan. Defaults to false: only
	// read the setting and report it (Events). The Reaper works without
	// events, on its timers and scans.
	ConfigureEvents bool
	// ObserveEvents makes the Reaper never send CONFIG, for a user
	// without that right (docs/SECURITY.md) on a Redis whose operator set
	// notify-keyspace-events: Events reports unknown (Checked false) until
	// an expired event arrives, then on (Observed true). It cannot tell
	// events switched off later. Not with ConfigureEvents. Defaults to
	// false: read the setting at start and at every scan.
	ObserveEvents bool
	// CheckInterval is how often the Reaper PINGs Redis to notice an
	// outage while it has nothing to sweep. With the PING's own 0.9 s
	// timeout, an outage is logged within 2 s of its start. Defaults to
	// 1.1 s: under one command a second from an idle daemon, next to
	// nothing for Redis.
	CheckInterval time.Duration
	// OutageCheckInterval is how often it PINGs during an outage, to see
	// the recovery promptly. Defaults to 1 second.
	OutageCheckInterval time.Duration
	// ListenerPingInterval is how long the subscription may stay silent
	// before the listener checks it (notify.Config.PingInterval).
	// Defaults to 30 seconds.
	ListenerPingInterval time.Duration
	// TopologyInterval is how often, on a Redis Cluster, the listener
	// looks for masters added, removed or replaced, and with Sentinel set
	// asks the Sentinels for the master (notify.Config.TopologyInterval).
	// Defaults to 500 milliseconds.
	TopologyInterval time.Duration
	// Sentinel, when the client was made by redis.NewFailoverClient, is
	// the options it was made with: the listener follows the Sentinels'
	// +switch-master at once (notify.Config.Sentinel), and the
	// keyspace-events check reaches the replicas the Sentinels list
	// (notify.EnsureEventsSentinel). Defaults to none.
	Sentinel *redis.FailoverOptions
	// Replicas and ReplicaTimeout are the durability of the Reaper's own
	// writes (lease.Config.Replicas and ReplicaTimeout): with Replicas
	// set, each Sweep call waits until that many replicas have its
	// changes. A call they do not confirm in time is not an outage: it is
	// counted (Stats().NotReplicated), logged, and its queue swept again
	// after RetryDelay; the sweep is idempotent. Default to 0 (no
	// waiting) and lease.ReplicaTimeoutDefault.
	Replicas       int
	ReplicaTimeout time.Duration
	// ShutdownTimeout is how long sweeps running when Run's context ends
	// may take to finish before they are abandoned. Defaults to 10 seconds.
	ShutdownTimeout time.Duration
	// RedisName names Redis in the outage log lines, e.g. its URL
	// without the password. Defaults to none.
	RedisName string
	// RedisUser is the ACL user the client logs in as, named in the log
	// line of a refused login (never the password). Defaults to
	// "default", Redis's own user.
	RedisUser string
	// Observer is told about every sweep and scan, for metrics. Optional.
	Observer Observer
	// Logger receives the Reaper's log lines. While Redis is known to be
	// down, the parts' warnings are demoted to Debug: the outage and the
	// recovery are logged once each. Defaults to discarding them.
	Logger *slog.Logger
}

// withDefaults returns a copy of c with every zero field set to its
// default, then checks it. Errors name the field.
func (c *Config) withDefaults() (Config, error) {
	var out Config
	if c != nil {
		out = *c
	}
	out.ScanInterval = cmp.Or(out.ScanInterval, ScanIntervalDefault)
	out.Concurrency = cmp.Or(out.Concurrency, ConcurrencyDefault)
	out.SweepLimit = cmp.Or(out.SweepLimit, SweepLimitDefault)
	out.RetryDelay = cmp.Or(out.RetryDelay, RetryDelayDefault)
	out.CheckInterval = cmp.Or(out.CheckInterval, CheckIntervalDefault)
	out.OutageCheckInterval = cmp.Or(out.OutageCheckInterval, OutageCheckIntervalDefault)
	out.ListenerPingInterval = cmp.Or(out.ListenerPingInterval, ListenerPingIntervalDefault)
	out.TopologyInterval = cmp.Or(out.TopologyInterval, TopologyIntervalDefault)
	out.ShutdownTimeout = cmp.Or(out.ShutdownTimeout, ShutdownTimeoutDefault)
	if out.Observer == nil {
		out.Observer = nopObserver{}
	}
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}

	var errs []error
	bad := func(field string, v any, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: Config.%s %v: %s", ErrConfig, field, v, fmt.Sprintf(format, args...)))
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{
		{"ScanInterval", out.ScanInterval}, {"RetryDelay", out.RetryDelay}, {"CheckInterval", out.CheckInterval},
		{"OutageCheckInterval", out.OutageCheckInterval}, {"ListenerPingInterval", out.ListenerPingInterval},
		{"TopologyInterval", out.TopologyInterval}, {"ShutdownTimeout", out.ShutdownTimeout},
	} {
		if d.v < 0 {
			bad(d.field, d.v, "must be positive")
		}
	}
	if out.Replicas < 0 {
		bad("Replicas", out.Replicas, "must not be negative")
	}
	if out.ReplicaTimeout < 0 {
		bad("ReplicaTimeout", out.ReplicaTimeout, "must be positive")
	}
	if out.ObserveEvents && out.ConfigureEvents {
		bad("ObserveEvents", true, "excludes ConfigureEvents")
	}
	if out.Concurrency < 1 || out.Concurrency > MaxConcurrency {
		bad("Concurrency", out.Concurrency, "must be 1 to %d", MaxConcurrency)
	}
	if out.SweepLimit < 1 || out.SweepLimit > MaxSweepLimit {
		bad("SweepLimit", out.SweepLimit, "must be 1 to %d", MaxSweepLimit)
	}
	var queues []string
	for _, q := range out.Queues {
		if err := lease.ValidateQueue(q); err != nil {
			errs = append(errs, fmt.Errorf("%w: Config.Queues: %w", ErrConfig, err))
			continue
		}
		if !slices.Contains(queues, q) {
			queues = append(queues, q)
		}
	}
	out.Queues = queues
	return out, errors.Join(errs...)
}
