package lease

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults for Config.
const (
	LeaseForDefault      = 30 * time.Second
	MaxDeliveriesDefault = 10
	MaxPayloadDefault    = 1 << 20
	// MaxLeaseFor bounds every lease and delay: a week.
	MaxLeaseFor = 7 * 24 * time.Hour
	// MaxBatch bounds TakeBatch, PushBatch and AckBatch.
	MaxBatch = 1000
	// SweepLimitDefault bounds the work of one Sweep call.
	SweepLimitDefault = 1000
)

// Unlimited, as a MaxDeliveries, lets a message be delivered any number of
// times: it is never dead-lettered for running out of deliveries.
const Unlimited = -1

// Config configures a Client. A nil *Config means all defaults.
type Config struct {
	// LeaseFor is the lease a consumer gets when neither the take nor the
	// message says otherwise. Defaults to 30 seconds.
	LeaseFor time.Duration
	// MaxDeliveries is how often a message may be delivered before a lease
	// that runs out, or a nack, sends it to the dead set instead. Applies
	// to messages pushed without their own maximum and to raw payloads.
	// Defaults to 10; Unlimited for no maximum.
	MaxDeliveries int
	// MaxPayload is the largest payload Push accepts, in bytes. Take
	// applies it too, to what other producers put on the queue: a larger
	// element goes to the dead set with reason "oversized" instead of
	// being leased (and copied through Redis on every delivery). Defaults
	// to 1 MiB.
	MaxPayload int
	// Logger receives the client's few log lines (malformed data found in
	// Redis; that it runs its scripts with EVALSHA because Redis refuses
	// FCALL or FUNCTION LOAD, once) and Consume's reports of handler
	// errors and panics. Defaults to discarding the former; Consume then
	// logs through slog.Default(), so that failing handlers are never
	// silent.
	Logger *slog.Logger

	// RetryWindow bounds how long a command that Redis refused without
	// running it is retried, with backoff, before its error reaches the
	// caller: a Cluster slot being migrated or resharded (TRYAGAIN, ASK,
	// MOVED), a Cluster or Sentinel failover in progress (CLUSTERDOWN,
	// READONLY, MASTERDOWN, LOADING), too few replicas for
	// min-replicas-to-write (NOREPLICAS), and, on a Cluster or Sentinel
	// client, a connection refused by a master that is failing over.
	// Other errors, which may mean the command ran, are never retried
	// here.
	// Defaults to 5 seconds; negative turns retrying off.
	RetryWindow time.Duration
	// Replicas, if positive, makes every state change (each script, and
	// the RPUSH of an immediate push) wait until that many replicas have
	// it (WAIT), and fail with ErrNotReplicated when they do not within
	// ReplicaTimeout: the change was made on the master, but a failover
	// may undo it, so the outcome is uncertain. Defaults to 0: no waiting.
	Replicas int
	// ReplicaTimeout bounds each WAIT. It must stay below the Redis
	// client's read timeout. Defaults to 1 second.
	ReplicaTimeout time.Duration
	// BlockingClient, if set, carries Take's blocking waits (BLMOVE), so
	// that consumers waiting on empty queues hold connections of its pool
	// and not of the one acks, extends and sweeps need. It must reach the
	// same deployment as the main client. Defaults to the main client,
	// whose pool must then exceed the number of concurrent blocking takes
	// (one per Take with a Wait in progress; one per Consume) plus the
	// other concurrent calls.
	BlockingClient redis.UniversalClient
}

func (c *Config) withDefaults() Config {
	var out Config
	if c != nil {
		out = *c
	}
	out.LeaseFor = cmp.Or(out.LeaseFor, LeaseForDefault)
	out.MaxDeliveries = cmp.Or(out.MaxDeliveries, MaxDeliveriesDefault)
	out.MaxPayload = cmp.Or(out.MaxPayload, MaxPayloadDefault)
	out.RetryWindow = cmp.Or(out.RetryWindow, RetryWindowDefault)
	out.ReplicaTimeout = cmp.Or(out.ReplicaTimeout, ReplicaTimeoutDefault)
	if out.Logger == nil {
		out.Logger = slog.New(slog.DiscardHandler)
	}
	return out
}

func (c *Config) validate() error {
	if err := checkDuration("Config.LeaseFor", c.LeaseFor); err != nil {
		return err
	}
	if c.MaxDeliveries < 1 && c.MaxDeliveries != Unlimited {
		return fmt.Errorf("%w: Config.MaxDeliveries %d: must be at least 1, or Unlimited", ErrInvalidArgument, c.MaxDeliveries)
	}
	if c.MaxPayload < 1 {
		return fmt.Errorf("%w: Config.MaxPayload %d: must be at least 1", ErrInvalidArgument, c.MaxPayload)
	}
	if c.Replicas < 0 {
		return fmt.Errorf("%w: Config.Replicas %d: must not be negative", ErrInvalidArgument, c.Replicas)
	}
	if c.ReplicaTimeout < time.Millisecond {
		return fmt.Errorf("%w: Config.ReplicaTimeout %v: must be at least 1ms", ErrInvalidArgument, c.ReplicaTimeout)
	}
	return nil
}

// Client is the lease API over one Redis deployment. It is safe for
// concurrent use.
type Client struct {
	rdb        *conn // the user's client, with retries and WAIT
	cfg        Config
	logSet     bool     // Config.Logger was given
	registered sync.Map // queue name -> struct{}: SADDed to the registry
	found      sync.Map // queue name -> *atomic.Int64: what its last take found (takeAsk)
	// now is the local wall clock; tests skew it.
	now func() time.Time

	mu  sync.Mutex
	rng *mrand.ChaCha8
}

// New returns a Client that uses rdb, which may be a standalone, Sentinel
// (failover) or Cluster client.
func New(rdb redis.UniversalClient, cfg *Config) (*Client, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil redis client", ErrInvalidArgument)
	}
	c := cfg.withDefaults()
	if err := c.validate(); err != nil {
		return nil, err
	}
	if err := checkReplicaTimeout(rdb, &c); err != nil {
		return nil, err
	}
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("lease: seed: %w", err)
	}
	return &Client{rdb: newConn(rdb, &c), cfg: c, logSet: cfg != nil && cfg.Logger != nil, now: time.Now, rng: mrand.NewChaCha8(seed)}, nil
}

// newTokens fills n fresh lease tokens and n fresh message ids.
func (c *Client) newTokens(n int) (tokens, ids []string) {
	tokens = make([]string, n)
	ids = make([]string, n)
	var b [8]byte
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range n {
		_, _ = c.rng.Read(b[:])
		tokens[i] = hex.EncodeToString(b[:])
		ids[i] = newID(c.rng, now)
	}
	return tokens, ids
}

// newIDs returns n message ids, UUIDv7s stamped with at: when the messages
// become ready, which Stats reports as their age.
func (c *Client) newIDs(n int, at time.Time) []string {
	ids := make([]string, n)
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range n {
		ids[i] = newID(c.rng, at)
	}
	return ids
}

// register adds queue to the registry once per Client.
func (c *Client) register(ctx context.Context, queue string) error {
	if _, ok := c.registered.Load(queue); ok {
		return nil
	}
	if err := c.rdb.SAdd(ctx, RegistryKey, queue).Err(); err != nil {
		return fmt.Errorf("lease: register queue %s: %w", queue, convertErr(err))
	}
	c.registered.Store(queue, struct{}{})
	return nil
}

// Register adds queue to the registry that ackd daemons read to find every
// queue. Push and Take register their queue by themselves.
func (c *Client) Register(ctx context.Context, queue string) error {
	if err := ValidateQueue(queue); err != nil {
		return err
	}
	return c.register(ctx, queue)
}

// Queues lists the registry, sorted.
func (c *Client) Queues(ctx context.Context) ([]string, error) {
	qs, err := c.rdb.SMembers(ctx, RegistryKey).Result()
	if err != nil {
		return nil, fmt.Errorf("lease: list queues: %w", convertErr(err))
	}
	out := qs[:0]
	for _, q := range qs {
		if ValidateQueue(q) == nil {
			out = append(out, q)
		}
	}
	slices.Sort(out)
	return out, nil
}

// RegistryPage is how many registry names ForEachQueue reads per SSCAN.
const RegistryPage = 1000

// ForEachQueue calls fn with the queues of the registry, one page of at
// most RegistryPage names at a time, read with SSCAN: a huge registry is
// never held in memory nor read by one long command. Invalid names are
// skipped, and so are names none of whose keys exist (one EXISTS per
// name, pipelined): a million names registered by mistake or by a hostile
// client then cost a scan seconds, not a sweep each. A name can come
// twice (SSCAN's guarantee); a sweep is idempotent. It stops at fn's
// first error and returns it.
func (c *Client) ForEachQueue(ctx context.Context, fn func(ctx context.Context, queues []string) error) error {
	var cursor uint64
	for {
		names, next, err := c.rdb.SScan(ctx, RegistryKey, cursor, "", RegistryPage).Result()
		if err != nil {
			return fmt.Errorf("lease: list queues: %w", convertErr(err))
		}
		valid := names[:0]
		for _, q := range names {
			if ValidateQueue(q) == nil {
				valid = append(valid, q)
			}
		}
		if len(valid) > 0 {
			cmds := make([]*redis.IntCmd, len(valid))
			_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, q := range valid {
					k := KeysFor(q)
					cmds[i] = p.Exists(ctx, k.Ready, k.Claim, k.Held, k.Due, k.Leases, k.Deadlines, k.Delayed, k.Dead, k.Paused)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("lease: list queues: %w", convertErr(err))
			}
			live := valid[:0]
			for i, q := range valid {
				if cmds[i].Val() > 0 {
					live = append(live, q)
				}
			}
			if len(live) > 0 {
				if err := fn(ctx, live); err != nil {
					return err
				}
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

func checkDuration(what string, d time.Duration) error {
	if d < time.Millisecond {
		return fmt.Errorf("%w: %s %v: must be at least 1ms", ErrInvalidArgument, what, d)
	}
	if d > MaxLeaseFor {
		return fmt.Errorf("%w: %s %v: must be at most %v", ErrInvalidArgument, what, d, MaxLeaseFor)
	}
	return nil
}

// ms converts d to whole milliseconds, rounding up.
func ms(d time.Duration) int64 { return int64((d + time.Millisecond - 1) / time.Millisecond) }

func fromMS(v int64) time.Time { return time.UnixMilli(v) }

// convertErr maps Redis errors that mean "this key is not ackd's" to
// ErrMalformed and ACL refusals to ErrNoPermission, wrapping the Redis
// error; redis.Nil never leaves the package.
func convertErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, redis.Nil):
		return ErrNotHeld
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	case redis.HasErrorPrefix(err, "NOPERM"),
		// Redis 7.0 reports a command refused inside a script as
		// "ERR The user executing the script can't run this command...".
		redis.HasErrorPrefix(err, "The user executing the script can't"):
		return fmt.Errorf("%w: %w", ErrNoPermission, err)
	}
	return err
}
