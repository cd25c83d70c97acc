package reaper

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/fallback"
	"github.com/ackd/ackd/internal/schedule"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/notify"
)

// Triggers of a sweep, as the Observer sees them.
const (
	TriggerEvent = "event"               // a shadow key expired or was evicted
	TriggerTimer = schedule.TriggerTimer // a queue's timer: its next deadline or due time
	TriggerRetry = schedule.TriggerRetry // the queue's previous sweep failed
	TriggerScan  = "scan"                // the periodic or catch-up scan of every queue
)

// maxCallsPerSweep bounds the Sweep calls of one sweep, so that a queue
// refilled as fast as it is swept cannot hold a worker forever: the sweep
// then ends and the queue goes to the back of the line.
const maxCallsPerSweep = 1000

// maxWakeAhead bounds how far ahead a wake message may point: no lease or
// delay is longer than lease.MaxLeaseFor, plus an hour for a Redis clock
// ahead of this host's. Later wakes are forged and ignored.
const maxWakeAhead = lease.MaxLeaseFor + time.Hour

// Observer is told what the Reaper does, for metrics. Its methods are
// called from the Reaper's goroutines, possibly at once, and must be fast.
type Observer interface {
	// Swept is called after every successful Sweep script call.
	Swept(queue, trigger string, r lease.SweepResult)
	// SweepFailed is called when a sweep failed; it will be retried after
	// Config.RetryDelay.
	SweepFailed(queue, trigger string, err error)
	// Scanned is called after each scan of every watched queue (not for a
	// scan cut short because Run's context ended).
	Scanned(queues int, took time.Duration, err error)
}

type nopObserver struct{}

func (nopObserver) Swept(string, string, lease.SweepResult) {}
func (nopObserver) SweepFailed(string, string, error)       {}
func (nopObserver) Scanned(int, time.Duration, error)       {}

// Stats is a snapshot of the Reaper's counters.
type Stats struct {
	Listener notify.ListenerStats  // events and wake messages heard
	Scanner  fallback.ScannerStats // scans made
	Ignored  uint64                // events and wake messages of queues outside Config.Queues, and wakes beyond lease.MaxLeaseFor
	Dropped  uint64                // events and wakes dropped because too many queues had one pending (swept at the next scan)
	// NotReplicated counts Sweep calls whose changes fewer than
	// Config.Replicas replicas confirmed in time (lease.ErrNotReplicated);
	// their queues are swept again.
	NotReplicated uint64
}

// QueueStats is one queue's counts as its last sweep found them.
type QueueStats struct {
	Queue string
	lease.Stats
	At time.Time // when that sweep ended
}

// Reaper returns expired leases to their queues: it is the ackd daemon,
// as a part a Go program can run. See the package documentation.
type Reaper struct {
	rdb    redis.UniversalClient
	cfg    Config
	log    *slog.Logger
	lc     *lease.Client
	sched  *schedule.Scheduler
	lis    *notify.Listener
	scan   *fallback.Scanner
	health health

	watched    map[string]bool // Config.Queues; nil: every queue
	ignored    atomic.Uint64
	started    atomic.Bool
	eventsSeen atomic.Bool // an expired event arrived (Config.ObserveEvents)

	notReplicated  atomic.Uint64
	unreplicatedMu sync.Mutex
	unreplicated   bool // the last Sweep call was not replicated: logged once until one is

	// Sweep calls run under sweepCtx, not Run's context, so that a call
	// running at shutdown finishes; it ends ShutdownTimeout after Run's.
	// partsCtx is the context of the listener, scanner and monitor.
	sweepCtx, partsCtx context.Context

	countsMu sync.Mutex
	counts   map[string]*queueCounts
	// scanSwept: the queues the scan under way has swept. Scans run one
	// at a time, and the scanner calls SweepFunc and ScanFunc in turn.
	scanSwept map[string]bool
}

// queueCounts is what the last sweep of a queue found.
type queueCounts struct {
	stats      lease.Stats
	at         time.Time
	emptyScans int // scans in a row that found the queue empty
}

// New returns a Reaper over rdb, which may be a standalone, Sentinel
// (failover) or Cluster client. It checks cfg and touches nothing in
// Redis until Run.
func New(rdb redis.UniversalClient, cfg *Config) (*Reaper, error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil redis client", ErrConfig)
	}
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Reaper{
		rdb:       rdb,
		cfg:       c,
		log:       c.Logger.With("component", "reaper"),
		counts:    map[string]*queueCounts{},
		scanSwept: map[string]bool{},
	}
	r.health = health{log: r.log, name: c.RedisName, user: cmp.Or(c.RedisUser, "default")}
	if len(c.Queues) > 0 {
		r.watched = make(map[string]bool, len(c.Queues))
		for _, q := range c.Queues {
			r.watched[q] = true
		}
	}
	// The parts log through outageHandler, which keeps an outage to the
	// Reaper's own two lines.
	clog := slog.New(&outageHandler{Handler: c.Logger.Handler(), down: r.health.isDown})
	if r.lc, err = lease.New(rdb, &lease.Config{Logger: clog, Replicas: c.Replicas, ReplicaTimeout: c.ReplicaTimeout}); err != nil {
		return nil, err
	}
	r.sched = schedule.New(r.sweep, &schedule.Config{
		Concurrency: c.Concurrency,
		RetryDelay:  c.RetryDelay,
		Logger:      clog,
	})
	r.scan, err = fallback.NewScanner(r.lc, &fallback.Config{
		SweepFunc: r.scanSweep,
		Interval:  c.ScanInterval,
		Queues:    c.Queues,
		ScanFunc:  r.scanned,
		Logger:    clog,
	})
	if err != nil {
		return nil, err
	}
	r.lis = notify.NewListener(rdb, &notify.Config{
		ExpiredFunc: func(_ context.Context, queue, _ string) {
			r.observeEvents()
			if r.watches(queue) {
				r.sched.Now(queue, TriggerEvent)
			}
		},
		WakeFunc: func(_ context.Context, queue string, at time.Time) {
			if at.After(time.Now().Add(maxWakeAhead)) {
				r.ignored.Add(1)
				return
			}
			if r.watches(queue) {
				r.sched.At(queue, at)
			}
		},
		// Events sent while unsubscribed are lost: scan after every
		// (re)subscription.
		SubscribedFunc:   func(context.Context) { r.scan.ScanNow() },
		PingInterval:     c.ListenerPingInterval,
		TopologyInterval: c.TopologyInterval,
		Sentinel:         c.Sentinel,
		// A promoted node may lack the events setting (it is per node):
		// check it now rather than at the next scan.
		TopologyFunc: func(context.Context) { go r.checkEvents(r.partsCtx) },
		Logger:       clog,
	})
	return r, nil
}

// Run reaps until ctx is done. It checks the keyspace-events setting,
// then listens, scans at once and every ScanInterval, and sweeps each
// queue when its timer, an event or a scan says so. When ctx ends it stops
// listening and scanning, lets running Sweep calls finish (for at most
// ShutdownTimeout) and returns nil. It returns an error only if a part
// stopped on its own. Call it once.
func (r *Reaper) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("reaper: Run called twice")
	}
	sweepCtx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	r.sweepCtx = sweepCtx
	r.log.DebugContext(ctx, "reaper started", "queues", strings.Join(r.cfg.Queues, ","),
		"scan_interval", r.cfg.ScanInterval.String(), "concurrency", r.cfg.Concurrency)

	// Check the events setting before listening, so that Events reports
	// it once the listener is subscribed. If Redis does not answer, the
	// scans check again.
	r.checkEvents(ctx)
	if r.cfg.ObserveEvents {
		r.log.InfoContext(ctx, "keyspace events unknown until an expired event arrives: CONFIG is not used")
	}
	r.loadFunctions(ctx)

	partsCtx, stop := context.WithCancel(ctx)
	defer stop()
	r.partsCtx = partsCtx
	var (
		wg    sync.WaitGroup
		errMu sync.Mutex
		fatal error
	)
	for _, p := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"scheduler", r.sched.Run}, {"listener", r.lis.Run}, {"scanner", r.scan.Run}, {"redis monitor", r.monitor},
	} {
		wg.Go(func() {
			err := p.run(partsCtx)
			if partsCtx.Err() == nil {
				errMu.Lock()
				fatal = firstErr(fatal, fmt.Errorf("reaper: %s stopped: %w", p.name, orStopped(err)))
				errMu.Unlock()
				stop()
			}
		})
	}
	<-partsCtx.Done()
	// The scheduler's Run waits for running sweeps, whose Sweep calls see
	// sweepCtx: give them ShutdownTimeout.
	timeout := time.AfterFunc(r.cfg.ShutdownTimeout, func() {
		r.log.Warn("shutdown timeout reached, abandoning running sweeps", "shutdown_timeout", r.cfg.ShutdownTimeout.String())
		abort()
	})
	wg.Wait()
	timeout.Stop()
	r.log.DebugContext(ctx, "reaper stopped")
	return fatal
}

// loadFunctions loads ackd's function library on every master, so that
// clients whose Redis users may not load it (docs/SECURITY.md) run their
// scripts as functions. Where it cannot, they run them with EVALSHA; a
// node that lacks it later (a restart, a new master) gets it from the
// first client that may load it, the Reaper's own sweeps included.
func (r *Reaper) loadFunctions(ctx context.Context) {
	if err := r.lc.LoadFunctions(ctx); err != nil {
		r.log.WarnContext(ctx, "cannot load the function library: clients that may not load it run their scripts with EVALSHA",
			"library", lease.Library().Name, "error", err.Error())
		return
	}
	r.log.DebugContext(ctx, "function library loaded", "library", lease.Library().Name)
}

func firstErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func orStopped(err error) error {
	if err == nil {
		return errors.New("returned early")
	}
	return err
}

// watches reports whether the Reaper handles queue, and counts the
// triggers it drops.
func (r *Reaper) watches(queue string) bool {
	if r.watched == nil || r.watched[queue] {
		return true
	}
	r.ignored.Add(1)
	return false
}

// sweep is the Scheduler's SweepFunc and the one place a queue is swept:
// it calls lease.Sweep (with Reclaim) until the queue has nothing more
// due, and says when to come back (lease.SweepResult.Next).
func (r *Reaper) sweep(ctx context.Context, queue, trigger string) (time.Time, error) {
	if ctx.Err() != nil {
		return time.Time{}, context.Canceled // shutting down: start nothing
	}
	opts := &lease.SweepOpts{Limit: r.cfg.SweepLimit, Reclaim: true}
	var total, last lease.SweepResult
	var next, sent time.Time
	for calls := 1; ; calls++ {
		sent = time.Now()
		res, err := r.lc.Sweep(r.sweepCtx, queue, opts)
		if errors.Is(err, lease.ErrNotReplicated) {
			// Redis answered and made the change; whether a failover
			// keeps it is unknown. Sweep again soon: it is idempotent.
			// Not an error to the scheduler, which would log each one.
			r.notReplicatedSweep(ctx, queue, trigger, err)
			r.health.ok(sent)
			return time.Now().Add(r.cfg.RetryDelay), nil
		}
		if err != nil {
			r.cfg.Observer.SweepFailed(queue, trigger, err)
			r.health.failed(err, sent)
			r.logSwept(ctx, queue, trigger, total)
			return time.Time{}, err
		}
		r.cfg.Observer.Swept(queue, trigger, res)
		total.Requeued += res.Requeued
		total.DeadLettered += res.DeadLettered + res.Malformed
		total.Promoted += res.Promoted
		total.Reclaimed += res.Reclaimed
		last = res
		if !res.More {
			next = res.Next()
			break
		}
		if ctx.Err() != nil {
			break // shutting down: the next start's scan goes on
		}
		if calls == maxCallsPerSweep {
			next = time.Now() // more is due: back of the line
			break
		}
	}
	r.health.ok(sent)
	r.replicated(ctx)
	r.setCounts(queue, trigger, last.Counts)
	r.logSwept(ctx, queue, trigger, total)
	return next, nil
}

// notReplicatedSweep counts and logs a Sweep call whose changes too few
// replicas confirmed: at Warn the first of a run, then at Debug until a
// sweep is replicated again.
func (r *Reaper) notReplicatedSweep(ctx context.Context, queue, trigger string, err error) {
	r.notReplicated.Add(1)
	r.unreplicatedMu.Lock()
	first := !r.unreplicated
	r.unreplicated = true
	r.unreplicatedMu.Unlock()
	if first {
		r.log.WarnContext(ctx, "sweep not confirmed by enough replicas, sweeping again", "queue", queue, "trigger", trigger,
			"replicas", r.cfg.Replicas, "retry_in", r.cfg.RetryDelay.String(), "error", err)
		return
	}
	r.log.DebugContext(ctx, "sweep not confirmed by enough replicas", "queue", queue, "trigger", trigger, "error", err)
}

// replicated notes a sweep that succeeded; after a run of unreplicated
// ones it is logged.
func (r *Reaper) replicated(ctx context.Context) {
	if r.cfg.Replicas == 0 {
		return
	}
	r.unreplicatedMu.Lock()
	was := r.unreplicated
	r.unreplicated = false
	r.unreplicatedMu.Unlock()
	if was {
		r.log.InfoContext(ctx, "sweeps are confirmed by enough replicas again", "replicas", r.cfg.Replicas)
	}
}

// logSwept logs what a sweep did: at Info when a scan found expired
// leases (the faster triggers missed them), else at Debug.
func (r *Reaper) logSwept(ctx context.Context, queue, trigger string, t lease.SweepResult) {
	switch {
	case t.Requeued+t.DeadLettered > 0 && trigger == TriggerScan:
		r.log.InfoContext(ctx, "requeued expired leases", "queue", queue, "trigger", trigger,
			"num_requeued", t.Requeued, "num_dead_lettered", t.DeadLettered)
	case t.Requeued+t.DeadLettered+t.Promoted+t.Reclaimed > 0:
		r.log.DebugContext(ctx, "swept queue", "queue", queue, "trigger", trigger,
			"num_requeued", t.Requeued, "num_dead_lettered", t.DeadLettered,
			"num_promoted", t.Promoted, "num_reclaimed", t.Reclaimed)
	}
}

// scanned is the Scanner's ScanFunc, called after each scan.
func (r *Reaper) scanned(queues int, took time.Duration, err error) {
	// First, before anything that may take time: no later than the
	// scan's first call, unless this goroutine was held up in between.
	began := time.Now().Add(-took)
	// The scan swept every queue of the registry; one it did not sweep
	// has left the registry (an operator forgot it). A failed scan, or
	// one of Config.Queues, drops nothing.
	r.dropUnswept(err == nil && r.watched == nil, began)
	if err != nil && r.partsCtx.Err() != nil {
		return // cut short by the shutdown
	}
	r.cfg.Observer.Scanned(queues, took, err)
	if err != nil {
		r.health.failed(err, began)
		return
	}
	r.log.Debug("scan done", "num_queues", queues, "took", took.String())
	r.health.ok(began)
	r.checkEvents(r.partsCtx)
}

// setCounts records the counts a sweep of queue found. A queue of the
// registry that two scans in a row found empty is dropped until a sweep
// finds something in it again; queues of Config.Queues are always kept.
func (r *Reaper) setCounts(queue, trigger string, s lease.Stats) {
	r.countsMu.Lock()
	defer r.countsMu.Unlock()
	qc := r.counts[queue]
	if qc == nil {
		qc = &queueCounts{}
		r.counts[queue] = qc
	}
	qc.stats, qc.at = s, time.Now()
	switch {
	case !s.Empty() || s.Paused || r.watched != nil:
		qc.emptyScans = 0
	case trigger == TriggerScan:
		qc.emptyScans++
		if qc.emptyScans >= 2 {
			delete(r.counts, queue)
		}
	}
}

// scanSweep is the Scanner's SweepFunc: it sweeps queue as any trigger
// does, and notes that this scan swept it.
func (r *Reaper) scanSweep(ctx context.Context, queue string) error {
	err := r.sched.Sweep(ctx, queue, TriggerScan)
	if err == nil {
		r.countsMu.Lock()
		r.scanSwept[queue] = true
		r.countsMu.Unlock()
	}
	return err
}

// dropUnswept drops, if drop, the counts of queues that the scan that
// just ended did not sweep and that no other trigger swept since it began
// (a queue registered after the scan read the registry), and starts the
// next scan's list. It goes by the queues the scan swept, not by times
// alone: a sweep that ran just before the scan reported is as recent as
// the scan, however late it reports.
func (r *Reaper) dropUnswept(drop bool, began time.Time) {
	r.countsMu.Lock()
	defer r.countsMu.Unlock()
	for q, c := range r.counts {
		if drop && !r.scanSwept[q] && c.at.Before(began) {
			delete(r.counts, q)
		}
	}
	clear(r.scanSwept)
}

// Queues returns the counts of every queue the Reaper has swept, by
// queue name, as each queue's last sweep found them: they are as fresh as
// that sweep (at most a ScanInterval old) and cost Redis nothing. A queue
// of the registry drops out once two scans in a row found it empty, or
// once a scan no longer finds it in the registry.
func (r *Reaper) Queues() []QueueStats {
	r.countsMu.Lock()
	out := make([]QueueStats, 0, len(r.counts))
	for q, c := range r.counts {
		out = append(out, QueueStats{Queue: q, Stats: c.stats, At: c.at})
	}
	r.countsMu.Unlock()
	slices.SortFunc(out, func(a, b QueueStats) int { return strings.Compare(a.Queue, b.Queue) })
	return out
}

// Stats returns a snapshot of the Reaper's counters.
func (r *Reaper) Stats() Stats {
	return Stats{Listener: r.lis.Stats(), Scanner: r.scan.Stats(), Ignored: r.ignored.Load(), Dropped: r.sched.Stats().Dropped,
		NotReplicated: r.notReplicated.Load()}
}

// Subscribed reports whether the listener's subscriptions to keyspace
// events and wake messages are live.
func (r *Reaper) Subscribed() bool { return r.lis.Subscribed() }

// RedisUp reports whether the last Redis command the Reaper sent
// succeeded (false during an outage).
func (r *Reaper) RedisUp() bool { return !r.health.isDown() }

// Events returns the last check of notify-keyspace-events.
func (r *Reaper) Events() EventsStatus {
	r.health.eventsMu.Lock()
	defer r.health.eventsMu.Unlock()
	return r.health.events
}
