package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

// Defaults for Config.
const (
	PingIntervalDefault = 30 * time.Second
	// TopologyIntervalDefault is how often a Listener on a Cluster reads
	// which nodes are masters, and on a Sentinel-managed master asks the
	// Sentinels which node is: a master that took over (CLUSTER FAILOVER
	// turns a replica into a master and tells nobody) is listened to
	// within about this long. It costs one CLUSTER SLOTS, or one SENTINEL
	// GET-MASTER-ADDR-BY-NAME, per interval.
	TopologyIntervalDefault = 500 * time.Millisecond
)

// SwitchChannel is where Sentinels announce a failover:
// "<master-name> <old-ip> <old-port> <new-ip> <new-port>".
const SwitchChannel = "+switch-master"

// The keyevent patterns a Listener subscribes to, in every database.
const (
	ExpiredPattern = "__keyevent@*__:expired"
	EvictedPattern = "__keyevent@*__:evicted"
)

// Reconnect back-off: the first retry after a failure is immediate (go-redis
// has usually reconnected already), then backoffMin doubling to backoffMax,
// each with jitter.
const (
	backoffMin = 50 * time.Millisecond
	backoffMax = 5 * time.Second
	// replyMin and replyMax bound the wait for a reply Redis owes us (the
	// pong of a health-check ping, the confirmations of a subscription):
	// PingInterval, but never so short that a loaded host trips it.
	replyMin = time.Second
	replyMax = 5 * time.Second
)

// Config configures a Listener. A nil *Config means all defaults (and no
// callbacks, which is useful only for Stats).
//
// The callbacks run on the Listener's receive loop, in the order the
// messages arrive. They must be fast and must not block: hand the work to
// something else (schedule.Scheduler's At and Now, or fallback.Scanner's
// ScanNow, never block). While a callback runs, no message is read, and a
// subscriber that falls behind is disconnected by Redis
// (client-output-buffer-limit pubsub) and loses events. On a cluster or
// ring there is one receive loop per node, so callbacks may run
// concurrently and must be safe for that.
type Config struct {
	// ExpiredFunc is called when a lease's shadow key expired or was
	// evicted; token is the lease's token. The lease may have been acked,
	// extended or requeued meanwhile: the event is only a trigger.
	// Optional.
	ExpiredFunc func(ctx context.Context, queue, token string)
	// WakeFunc is called for each message on lease.WakeChannel; at is
	// already the moment to sweep queue (see ParseWake). Optional.
	WakeFunc func(ctx context.Context, queue string, at time.Time)
	// SubscribedFunc is called after every subscription is confirmed, the
	// first and each one after a reconnection; events sent while the
	// Listener was not subscribed are lost, so the caller runs a catch-up
	// scan. On a cluster it is called for each node's subscription.
	// Optional.
	SubscribedFunc func(ctx context.Context)
	// Logger receives the Listener's log lines. Defaults to discarding them.
	Logger *slog.Logger
	// PingInterval is how long the subscription may stay silent before the
	// Listener pings Redis to check the connection; one without a reply
	// within PingInterval (at least 1s, at most 5s) is replaced, and so is
	// a subscription not confirmed that long. Defaults to 30 seconds.
	PingInterval time.Duration
	// TopologyInterval is how often, on a Redis Cluster or Ring, the
	// Listener looks for masters (shards) added, removed or replaced, and,
	// with Sentinel set, asks the Sentinels which node is the master.
	// Besides, it looks at once when a node's subscription breaks.
	// Defaults to 500 milliseconds.
	TopologyInterval time.Duration
	// Sentinel, for a client made by redis.NewFailoverClient, is the
	// options it was made with. The Listener then subscribes to
	// +switch-master on every Sentinel in Sentinel.SentinelAddrs and moves
	// its subscription to the new master as soon as one announces a switch
	// of Sentinel.MasterName (go-redis moves its command pools but not a
	// subscription, which stayed on the demoted node, deaf, until that
	// node dropped it). Without it, a Sentinel-managed master is followed
	// only when its connection breaks.
	Sentinel *redis.FailoverOptions
	// TopologyFunc is called when the Listener found the masters changed:
	// on a Cluster a master added, removed or replaced by its replica,
	// with Sentinel a switch to another master; not at start. The caller
	// may re-check notify-keyspace-events on the new master. Optional.
	TopologyFunc func(ctx context.Context)
}

// ListenerStats is a snapshot of a Listener's counters.
type ListenerStats struct {
	EventsExpired uint64 // shadow keys expired
	EventsEvicted uint64 // shadow keys evicted
	WakeMessages  uint64 // well-formed messages on lease.WakeChannel
	Reconnects    uint64 // subscriptions confirmed again after the first one
	Ignored       uint64 // events for keys that are not shadow keys, and malformed wake messages
	Pings         uint64 // health-check pings sent
	Switches      uint64 // subscriptions moved to a new master (Sentinel) or masters changed (Cluster)
}

// Listener turns keyspace events and wake messages into callbacks. See the
// package documentation.
type Listener struct {
	rdb redis.UniversalClient
	cfg Config
	log *slog.Logger

	expired, evicted, wakes, reconnects, ignored, pings, switches atomic.Uint64

	// topo is signalled when a node's subscription breaks, so that
	// runNodes reads the topology at once.
	topo chan struct{}

	known atomic.Bool // the set of subscriptions is complete (cluster: topology read once)
	mu    sync.Mutex
	subs  map[*subscription]struct{}
}

// subscription is one PubSub connection the Listener keeps alive.
type subscription struct {
	name string // "redis", "wake", or a node's address
	want int    // confirmations that complete it (channels + patterns)
	open func(ctx context.Context) (*redis.PubSub, error)
	live atomic.Bool

	// moved: the master changed; the PubSub is closed and opened afresh
	// (which dials the new master) without back-off.
	moved atomic.Bool
	mu    sync.Mutex
	ps    *redis.PubSub // the open PubSub, for reopen
}

// reopen closes s's PubSub so that run opens a new one at once, on
// whatever node is master now.
func (s *subscription) reopen() {
	s.moved.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ps != nil {
		_ = s.ps.Close()
	}
}

func (s *subscription) setPubSub(ps *redis.PubSub) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ps = ps
}

// NewListener returns a Listener on rdb, which may be a standalone,
// Sentinel (failover), Cluster or Ring client. It does nothing until Run.
func NewListener(rdb redis.UniversalClient, cfg *Config) *Listener {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.PingInterval <= 0 {
		c.PingInterval = PingIntervalDefault
	}
	if c.TopologyInterval <= 0 {
		c.TopologyInterval = TopologyIntervalDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Listener{
		rdb:  rdb,
		cfg:  c,
		log:  c.Logger.With("component", "notify"),
		subs: make(map[*subscription]struct{}),
		topo: make(chan struct{}, 1),
	}
}

// Stats returns a snapshot of the Listener's counters.
func (l *Listener) Stats() ListenerStats {
	return ListenerStats{
		EventsExpired: l.expired.Load(),
		EventsEvicted: l.evicted.Load(),
		WakeMessages:  l.wakes.Load(),
		Reconnects:    l.reconnects.Load(),
		Ignored:       l.ignored.Load(),
		Pings:         l.pings.Load(),
		Switches:      l.switches.Load(),
	}
}

// Subscribed reports whether every subscription is confirmed and live
// (on a cluster: on every known master, and the wake channel).
func (l *Listener) Subscribed() bool {
	if !l.known.Load() {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.subs) == 0 {
		return false
	}
	for s := range l.subs {
		if !s.live.Load() {
			return false
		}
	}
	return true
}

// Run subscribes and delivers messages to the callbacks until ctx is done,
// then returns nil. It never gives up on Redis: after any error it
// reconnects, forever, with a capped, jittered back-off.
func (l *Listener) Run(ctx context.Context) error {
	if l.rdb == nil {
		return errors.New("notify: nil redis client")
	}
	l.log.DebugContext(ctx, "listener started")
	defer l.log.DebugContext(ctx, "listener stopped")
	defer l.known.Store(false)
	switch c := l.rdb.(type) {
	case *redis.ClusterClient:
		l.runNodes(ctx, c.ForEachMaster)
	case *redis.Ring:
		l.runNodes(ctx, c.ForEachShard)
	default:
		var w *masterWatch
		s := &subscription{name: "redis", want: 3, open: func(ctx context.Context) (*redis.PubSub, error) {
			var c redis.UniversalClient = l.rdb
			if n := w.node(); n != nil {
				c = n // where the Sentinels say the master is
			}
			return openPubSub(ctx, c, []string{lease.WakeChannel}, []string{ExpiredPattern, EvictedPattern})
		}}
		l.track(s)
		l.known.Store(true)
		if fo := l.cfg.Sentinel; fo != nil {
			w = newMasterWatch(l, fo, s)
			defer w.close()
			// Know the master before subscribing, so that the first
			// subscription is on it.
			if addr, err := w.ask(ctx); err == nil && addr != "" {
				w.named(ctx, addr, "sentinel")
			}
			var wg sync.WaitGroup
			defer wg.Wait()
			wctx, stop := context.WithCancel(ctx)
			defer stop()
			wg.Go(func() { w.follow(wctx) })
		}
		l.run(ctx, s)
	}
	return nil
}

// track adds s to the subscriptions Subscribed looks at; run removes it
// when it returns.
func (l *Listener) track(s *subscription) {
	l.mu.Lock()
	l.subs[s] = struct{}{}
	l.mu.Unlock()
}

// openPubSub creates a PubSub on c and sends its subscriptions; the
// confirmations arrive through Receive.
func openPubSub(ctx context.Context, c redis.UniversalClient, channels, patterns []string) (*redis.PubSub, error) {
	ps := c.Subscribe(ctx) // no channels: connects lazily, never fails
	if len(patterns) > 0 {
		if err := ps.PSubscribe(ctx, patterns...); err != nil {
			_ = ps.Close()
			return nil, err
		}
	}
	if len(channels) > 0 {
		if err := ps.Subscribe(ctx, channels...); err != nil {
			_ = ps.Close()
			return nil, err
		}
	}
	return ps, nil
}

// forEachNode is ClusterClient.ForEachMaster or Ring.ForEachShard.
type forEachNode func(ctx context.Context, fn func(ctx context.Context, c *redis.Client) error) error

// runNodes keeps one subscription to the keyevent patterns on each master
// (keyspace events are node-local) and one to the wake channel (PUBLISH
// reaches every node), following topology changes.
func (l *Listener) runNodes(ctx context.Context, forEach forEachNode) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wake := &subscription{name: "wake", want: 1, open: func(ctx context.Context) (*redis.PubSub, error) {
		// A cluster routes the channel to its slot's master, a Ring to its
		// shard; both need the channel up front.
		return l.rdb.Subscribe(ctx, lease.WakeChannel), nil
	}}
	l.track(wake)
	wg.Go(func() { l.run(ctx, wake) })

	nodes := map[string]context.CancelFunc{}
	defer func() {
		for _, cancel := range nodes {
			cancel()
		}
	}()
	fails := 0
	first := true
	for {
		var mu sync.Mutex
		current := map[string]*redis.Client{}
		err := forEach(ctx, func(_ context.Context, c *redis.Client) error {
			mu.Lock()
			current[c.Options().Addr] = c
			mu.Unlock()
			return nil
		})
		wait := l.cfg.TopologyInterval
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			fails++
			if fails == 1 {
				l.log.WarnContext(ctx, "cannot list redis nodes", "error", err)
			}
			wait = min(backoff(fails+1), wait)
		default:
			fails = 0
			changed := false
			for addr := range current {
				if _, ok := nodes[addr]; !ok {
					changed = true
				}
			}
			for addr := range nodes {
				if _, ok := current[addr]; !ok {
					changed = true
				}
			}
			// Counted before any subscription moves: whoever sees the
			// new master's subscription, or what it starts (a scan),
			// sees the switch counted.
			if changed && !first {
				l.switches.Add(1)
				l.log.InfoContext(ctx, "masters changed", "masters", len(current))
			}
			for addr, c := range current {
				if _, ok := nodes[addr]; ok {
					continue
				}
				nctx, cancel := context.WithCancel(ctx)
				nodes[addr] = cancel
				s := &subscription{name: addr, want: 2, open: func(ctx context.Context) (*redis.PubSub, error) {
					return openPubSub(ctx, c, nil, []string{ExpiredPattern, EvictedPattern})
				}}
				if first {
					l.log.DebugContext(ctx, "watching node", "node", addr)
				} else {
					l.log.InfoContext(ctx, "new master, subscribing", "node", addr)
				}
				l.track(s)
				wg.Go(func() { l.run(nctx, s) })
			}
			for addr, cancel := range nodes {
				if _, ok := current[addr]; !ok {
					l.log.InfoContext(ctx, "no longer a master, unsubscribing", "node", addr)
					cancel()
					delete(nodes, addr)
				}
			}
			l.known.Store(true)
			if changed && !first {
				if f := l.cfg.TopologyFunc; f != nil {
					f(ctx)
				}
			}
			first = false
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-l.topo:
			// A subscription broke: its node may have died or been
			// demoted. Read the topology now, but not in a busy loop.
			t.Stop()
			if !sleep(ctx, backoffMin) {
				return
			}
		case <-t.C:
		}
	}
}

// topologyChanged asks runNodes to read the topology now.
func (l *Listener) topologyChanged() {
	select {
	case l.topo <- struct{}{}:
	default:
	}
}

// run keeps s subscribed and reads it until ctx is done. It reads with
// ReceiveTimeout rather than PubSub.Channel, which hides reconnections and
// drops messages when its buffer stays full: every confirmation shows here.
// On a read error go-redis reconnects and resubscribes by itself (on the
// failed receive or the next one); the new confirmations then complete the
// subscription again.
func (l *Listener) run(ctx context.Context, s *subscription) {
	defer func() {
		l.mu.Lock()
		delete(l.subs, s)
		l.mu.Unlock()
	}()

	var (
		ps     *redis.PubSub
		stop   func() bool
		fails  int  // failures since the last message
		pinged bool // a health-check ping is waiting for its reply
		ever   bool // s was confirmed at least once
	)
	drop := func() {
		s.live.Store(false)
		if ps != nil {
			stop()
			_ = ps.Close()
			ps = nil
			s.setPubSub(nil)
		}
	}
	defer drop()
	for ctx.Err() == nil {
		if ps == nil {
			s.moved.Store(false)
			p, err := s.open(ctx)
			if err != nil {
				fails++
				l.failed(ctx, s, fails, err)
				if !sleep(ctx, backoff(fails)) {
					return
				}
				continue
			}
			// Receive does not watch ctx; closing the PubSub ends it.
			ps, stop, pinged = p, context.AfterFunc(ctx, func() { _ = p.Close() }), false
			s.setPubSub(p)
			if s.moved.Load() {
				_ = p.Close() // the master changed while this one opened
			}
		}
		timeout := l.cfg.PingInterval
		if pinged || !s.live.Load() {
			timeout = min(max(timeout, replyMin), replyMax)
		}
		msg, err := ps.ReceiveTimeout(ctx, timeout)
		if ctx.Err() != nil {
			return
		}
		if err != nil && s.moved.Load() {
			// reopen closed it: the master changed. Open again at once;
			// the new PubSub dials the new master.
			drop()
			l.log.InfoContext(ctx, "master switched, moving subscription", "node", s.name)
			continue
		}
		if err != nil {
			switch {
			case !isTimeout(err):
				s.live.Store(false)
			case !s.live.Load():
				// Silent, yet never confirmed on this connection: a
				// subscription got lost on the way. Start afresh.
				err = fmt.Errorf("subscription not confirmed within %v", timeout)
				drop()
			case !pinged:
				if err = ps.Ping(ctx); err == nil {
					l.pings.Add(1)
					pinged = true
					continue
				}
				s.live.Store(false)
			default:
				err = fmt.Errorf("no reply to ping within %v", timeout)
				drop()
			}
			l.topologyChanged()
			fails++
			l.failed(ctx, s, fails, err)
			if !sleep(ctx, backoff(fails)) {
				return
			}
			continue
		}
		fails, pinged = 0, false
		switch m := msg.(type) {
		case *redis.Subscription:
			if (m.Kind == "subscribe" || m.Kind == "psubscribe") && m.Count == s.want {
				if ever {
					l.reconnects.Add(1)
					l.log.InfoContext(ctx, "resubscribed", "node", s.name)
				} else {
					l.log.DebugContext(ctx, "subscribed", "node", s.name)
				}
				ever = true
				s.live.Store(true)
				if f := l.cfg.SubscribedFunc; f != nil {
					f(ctx)
				}
			}
		case *redis.Message:
			l.handle(ctx, m)
		}
	}
}

// failed logs the first failure of a run of failures at Warn, the others
// at Debug.
func (l *Listener) failed(ctx context.Context, s *subscription, fails int, err error) {
	if fails == 1 {
		l.log.WarnContext(ctx, "subscription lost, reconnecting", "node", s.name, "error", err)
		return
	}
	l.log.DebugContext(ctx, "still reconnecting", "node", s.name, "attempt", fails, "error", err)
}

// handle dispatches one message to the callbacks.
func (l *Listener) handle(ctx context.Context, m *redis.Message) {
	switch m.Pattern {
	case "":
		if m.Channel != lease.WakeChannel {
			l.ignored.Add(1)
			return
		}
		queue, at, ok := ParseWake(m.Payload)
		if !ok {
			l.ignored.Add(1)
			return
		}
		l.wakes.Add(1)
		if f := l.cfg.WakeFunc; f != nil {
			f(ctx, queue, at)
		}
	case ExpiredPattern, EvictedPattern:
		queue, token, ok := lease.ParseLeaseKey(m.Payload)
		if !ok {
			l.ignored.Add(1)
			return
		}
		if m.Pattern == ExpiredPattern {
			l.expired.Add(1)
		} else {
			l.evicted.Add(1)
		}
		if f := l.cfg.ExpiredFunc; f != nil {
			f(ctx, queue, token)
		}
	default:
		l.ignored.Add(1)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// backoff is the wait before attempt fails+1: none after the first
// failure, then backoffMin doubling to backoffMax, with ±25% jitter.
func backoff(fails int) time.Duration {
	if fails <= 1 {
		return 0
	}
	d := min(backoffMin<<min(fails-2, 16), backoffMax)
	return d*3/4 + rand.N(d/2+1)
}

// sleep waits d or until ctx is done; it reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
