package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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

const (
	// redisCheckInterval is how often ackd PINGs Redis to notice an outage
	// even while it has nothing to sweep: rarely, since an idle ackd must
	// cost Redis next to nothing (the listener pings its own connection too).
	redisCheckInterval = 10 * time.Second
	// redisRecheckInterval is how often it PINGs during an outage, to log
	// the recovery promptly.
	redisRecheckInterval = time.Second
	// redisCheckTimeout bounds one such PING.
	redisCheckTimeout = time.Second
	// eventsCheckTimeout bounds one EnsureEvents call.
	eventsCheckTimeout = 5 * time.Second
)

// run is ackd: it parses args and the environment, then serves until ctx
// is cancelled. -h, -version and -healthcheck return at once.
func run(ctx context.Context, args []string, environ map[string]string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ackd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	showVersion := fs.Bool("version", false, "print the version and exit")
	check := fs.Bool("healthcheck", false, "GET /healthz of the ackd at ACKD_HTTP_ADDR and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeHelp(stdout)
			return nil
		}
		return fmt.Errorf("%v (ackd -h for help)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (ackd -h for help)", fs.Arg(0))
	}
	if *showVersion {
		fmt.Fprintf(stdout, "ackd %s\n", version)
		return nil
	}
	cfg, err := loadConfig(environ)
	if err != nil {
		return err
	}
	if *check {
		return healthcheck(ctx, cfg.HTTPAddr)
	}
	return serve(ctx, cfg, newLogger(cfg, stderr))
}

// newLogger logs to w at the configured level and format.
func newLogger(cfg config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// redisLogger sends go-redis's own log lines to slog at Debug: ackd
// reports outages itself, once.
type redisLogger struct{ log *slog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}

// daemon holds ackd's parts and the state they share.
type daemon struct {
	cfg     config
	log     *slog.Logger
	rdb     redis.UniversalClient
	lc      *lease.Client
	sched   *schedule.Scheduler
	lis     *notify.Listener
	scan    *fallback.Scanner
	metrics *metrics

	watched  map[string]bool // ACKD_QUEUES; nil: every queue
	ignored  atomic.Uint64   // events and wakes of unwatched queues
	stopping atomic.Bool

	// Sweeps run under sweepCtx, not the scheduler's context, so that a
	// sweep running at shutdown finishes; abortSweeps ends them when the
	// shutdown timeout runs out.
	sweepCtx    context.Context
	abortSweeps context.CancelFunc
	inflight    tracker

	// compCtx is the context of the listener and scanner; the scanner's
	// callbacks check events under it.
	compCtx context.Context

	redisMu   sync.Mutex
	redisDown bool
	downSince time.Time

	checkMu  sync.Mutex // serialises checkEvents
	eventsMu sync.Mutex
	events   eventsReport
}

// serve runs ackd until ctx is cancelled, then shuts down in order:
// listener and scanner, scheduler (running sweeps finish), HTTP, Redis.
func serve(ctx context.Context, cfg config, log *slog.Logger) error {
	redis.SetLogger(redisLogger{log.With("component", "go-redis")})

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("ACKD_HTTP_ADDR: %w", err)
	}
	defer ln.Close()

	rdb := redis.NewClient(cfg.redisOpts)
	defer rdb.Close() // last

	d := &daemon{cfg: cfg, log: log, rdb: rdb}
	clog := slog.New(&outageHandler{Handler: log.Handler(), down: d.isRedisDown})
	d.lc, err = lease.New(rdb, &lease.Config{Logger: clog})
	if err != nil {
		return err
	}
	if len(cfg.Queues) > 0 {
		d.watched = make(map[string]bool, len(cfg.Queues))
		for _, q := range cfg.Queues {
			d.watched[q] = true
		}
	}
	d.sweepCtx, d.abortSweeps = context.WithCancel(context.WithoutCancel(ctx))
	defer d.abortSweeps()

	d.sched = schedule.New(d.sweep, &schedule.Config{
		Concurrency: cfg.SweepConcurrency,
		Logger:      clog,
	})
	d.scan = fallback.NewScanner(d.lc, &fallback.Config{
		Interval:  cfg.ScanInterval,
		Queues:    cfg.Queues,
		Limit:     cfg.SweepLimit,
		SweptFunc: d.swept,
		ScanFunc:  d.scanned,
		Logger:    clog,
	})
	d.lis = notify.NewListener(rdb, &notify.Config{
		ExpiredFunc: d.expired,
		WakeFunc:    d.wake,
		SubscribedFunc: func(context.Context) {
			d.scan.ScanNow() // events sent while unsubscribed are lost
		},
		Logger: clog,
	})
	d.metrics = newMetrics(d.lis, d.ignored.Load, d.queueCounts, log)
	d.metrics.redisUp.Set(1)

	srv := &http.Server{
		Handler:           d.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Serve(ln) }()

	compCtx, stopComps := context.WithCancel(ctx)
	defer stopComps()
	d.compCtx = compCtx
	schedCtx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSched()

	queues := "all"
	if len(cfg.Queues) > 0 {
		queues = strings.Join(cfg.Queues, ",")
	}
	log.Info("ackd started", "version", version, "http_addr", ln.Addr().String(),
		"redis", redactURL(cfg.RedisURL), "queues", queues, "scan_interval", cfg.ScanInterval.String(),
		"configure_events", cfg.ConfigureEvents, "sweep_concurrency", cfg.SweepConcurrency)

	// Check the events setting before listening, so that /readyz reports
	// it as soon as ackd is ready. If Redis does not answer, the scans
	// check again.
	d.checkEvents(compCtx)

	fatal := make(chan error, 4)
	start := func(wg *sync.WaitGroup, ctx context.Context, name string, f func(context.Context) error) {
		wg.Go(func() {
			err := f(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				fatal <- fmt.Errorf("%s stopped: %w", name, err)
			case err != nil && !errors.Is(err, context.Canceled):
				log.Debug("component stopped with an error", "component", name, "error", err)
			}
		})
	}
	var comps, sched sync.WaitGroup
	start(&sched, schedCtx, "scheduler", d.sched.Run)
	start(&comps, compCtx, "listener", d.lis.Run)
	start(&comps, compCtx, "scanner", d.scan.Run)
	start(&comps, compCtx, "redis monitor", d.monitor)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("ackd stopping", "reason", "signal", "shutdown_timeout", cfg.ShutdownTimeout.String())
	case runErr = <-fatal:
		log.Error("ackd stopping", "error", runErr)
	case err := <-httpDone:
		runErr = fmt.Errorf("http server: %w", err)
		log.Error("ackd stopping", "error", runErr)
	}
	d.stopping.Store(true)
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()

	// 1. Stop subscribing and scanning.
	stopComps()
	compsDone := waitGroup(shutCtx, &comps)
	// 2. Stop the scheduler; sweeps already running finish.
	stopSched()
	schedDone := waitGroup(shutCtx, &sched)
	sweepsDone := d.inflight.close(shutCtx)
	if !compsDone || !schedDone || !sweepsDone {
		log.Warn("shutdown timeout reached, abandoning running sweeps", "shutdown_timeout", cfg.ShutdownTimeout.String())
	}
	d.abortSweeps()
	// 3. HTTP.
	if err := srv.Shutdown(shutCtx); err != nil {
		_ = srv.Close()
	}
	// 4. Redis, last (deferred above).
	log.Info("ackd stopped")
	return runErr
}

// waitGroup waits for wg until ctx is done; it reports whether wg finished.
func waitGroup(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// watches reports whether ackd handles queue.
func (d *daemon) watches(queue string) bool {
	return d.watched == nil || d.watched[queue]
}

// expired is the listener's ExpiredFunc: a shadow key expired or was
// evicted, so its queue may have a lease to requeue.
func (d *daemon) expired(_ context.Context, queue, _ string) {
	if !d.watches(queue) {
		d.ignored.Add(1)
		return
	}
	d.sched.Now(queue, triggerEvent)
}

// wake is the listener's WakeFunc: queue has a new earliest deadline or
// due time.
func (d *daemon) wake(_ context.Context, queue string, at time.Time) {
	if !d.watches(queue) {
		d.ignored.Add(1)
		return
	}
	d.sched.At(queue, at)
}

// sweep is the scheduler's SweepFunc: it sweeps queue until it is done and
// says when to come back.
func (d *daemon) sweep(ctx context.Context, queue, trigger string) (time.Time, error) {
	if !d.inflight.begin() {
		return time.Time{}, context.Canceled // shutting down
	}
	defer d.inflight.end()
	var total, last lease.SweepResult
	for {
		r, err := d.lc.Sweep(d.sweepCtx, queue, &lease.SweepOpts{Limit: d.cfg.SweepLimit})
		if err != nil {
			d.metrics.sweepErrors.WithLabelValues(trigger).Inc()
			d.redisFailed(err)
			return time.Time{}, err
		}
		d.metrics.recordSweep(trigger, r)
		add(&total, r)
		last = r
		if !r.More || ctx.Err() != nil {
			break
		}
	}
	d.redisOK()
	if total.Requeued+total.DeadLettered+total.Malformed+total.Promoted > 0 {
		d.log.Debug("swept queue", "queue", queue, "trigger", trigger,
			"num_requeued", total.Requeued, "num_dead_lettered", total.DeadLettered+total.Malformed,
			"num_promoted", total.Promoted)
	}
	return schedule.NextWake(last), nil
}

func add(sum *lease.SweepResult, r lease.SweepResult) {
	sum.Requeued += r.Requeued
	sum.DeadLettered += r.DeadLettered
	sum.Malformed += r.Malformed
	sum.Promoted += r.Promoted
	sum.Reclaimed += r.Reclaimed
}

// swept is the scanner's SweptFunc: it counts what a scan's Sweep call on
// queue did and sets the queue's timer. (The scanner logs the requeues.)
func (d *daemon) swept(queue string, r lease.SweepResult) {
	d.metrics.recordSweep(triggerScan, r)
	if !d.watches(queue) {
		return
	}
	if next := schedule.NextWake(r); !next.IsZero() {
		d.sched.At(queue, next)
	}
}

// scanned is the scanner's ScanFunc, called after each scan.
func (d *daemon) scanned(queues int, took time.Duration, err error) {
	if err != nil && d.compCtx.Err() != nil {
		return // cut short by the shutdown
	}
	d.metrics.scans.Inc()
	d.metrics.scanDuration.Observe(took.Seconds())
	if err != nil {
		d.metrics.scanErrors.Inc()
		d.redisFailed(err)
		return
	}
	d.log.Debug("scan done", "num_queues", queues, "took", took.String())
	d.redisOK()
	d.checkEvents(d.compCtx)
}

// monitor PINGs Redis so that an outage and its end are logged even when
// ackd has nothing to sweep: every redisCheckInterval, and every
// redisRecheckInterval during an outage.
func (d *daemon) monitor(ctx context.Context) error {
	t := time.NewTimer(redisCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, redisCheckTimeout)
		err := d.rdb.Ping(pctx).Err()
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer to PING within %v", redisCheckTimeout)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			d.log.Debug("redis check failed", "error", err)
			d.redisFailed(err)
		default:
			d.redisOK()
		}
		if d.isRedisDown() {
			t.Reset(redisRecheckInterval)
		} else {
			t.Reset(redisCheckInterval)
		}
	}
}

// redisFailed records a failed Redis call; the first one of an outage is
// logged. Error replies (other than LOADING) are not an outage.
func (d *daemon) redisFailed(err error) {
	if errors.Is(err, context.Canceled) || isReplyError(err) && !redis.IsLoadingError(err) {
		return // not an outage: Redis answered (the caller logs the error)
	}
	d.redisMu.Lock()
	defer d.redisMu.Unlock()
	if d.redisDown {
		return
	}
	d.redisDown, d.downSince = true, time.Now()
	d.metrics.redisUp.Set(0)
	d.log.Warn("redis unavailable, retrying", "redis", redactURL(d.cfg.RedisURL), "error", err)
}

// redisOK records a successful Redis call; the first one after an outage
// is logged.
func (d *daemon) redisOK() {
	d.redisMu.Lock()
	defer d.redisMu.Unlock()
	if !d.redisDown {
		return
	}
	d.redisDown = false
	d.metrics.redisUp.Set(1)
	d.log.Info("redis recovered", "redis", redactURL(d.cfg.RedisURL), "outage", time.Since(d.downSince).Round(time.Millisecond).String())
}

// isReplyError reports whether err is an error reply from Redis (such as
// an unknown or refused CONFIG) rather than a failure to reach it.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// checkEvents reads (and, if configured, sets) notify-keyspace-events and
// reports a change of state once.
func (d *daemon) checkEvents(ctx context.Context) {
	d.checkMu.Lock() // one check at a time, so one change is made and logged once
	defer d.checkMu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, eventsCheckTimeout)
	defer cancel()
	st := notify.EnsureEvents(cctx, d.rdb, d.cfg.ConfigureEvents)
	if ctx.Err() != nil {
		return
	}
	if st.Err != nil && !isReplyError(st.Err) {
		d.redisFailed(st.Err) // Redis did not answer: the events state is unchanged
		return
	}
	d.redisOK()
	now := eventsReport{Checked: true, Enabled: st.Enabled, Flags: st.Flags}
	if st.Err != nil {
		now.Error = st.Err.Error()
	}
	d.eventsMu.Lock()
	before := d.events
	d.events = now
	d.eventsMu.Unlock()
	d.metrics.eventsEnabled.Set(b2f(now.Enabled))

	if st.Changed {
		d.log.Info("set notify-keyspace-events", "flags", now.Flags)
	}
	if now == before {
		return
	}
	const hint = "leases come back on timers and scans only; set notify-keyspace-events to include E and x (e.g. Exe)"
	switch {
	case !now.Enabled && now.Error != "":
		d.log.Warn("keyspace events are off or unknown: cannot read or set notify-keyspace-events", "flags", now.Flags, "error", now.Error, "hint", hint)
	case !now.Enabled:
		d.log.Warn("keyspace events are off", "flags", now.Flags, "configure_events", d.cfg.ConfigureEvents, "hint", hint)
	case now.Error != "":
		d.log.Warn("keyspace events are on, but checking them failed", "flags", now.Flags, "error", now.Error)
	case !st.Changed:
		d.log.Info("keyspace events are on", "flags", now.Flags)
	}
}

// eventsState is the last events check, for /readyz.
func (d *daemon) eventsState() eventsReport {
	d.eventsMu.Lock()
	defer d.eventsMu.Unlock()
	return d.events
}

// queueCounts reads the counts of the watched queues (at most
// maxQueueMetrics) for ackd_queue_messages.
func (d *daemon) queueCounts(ctx context.Context) ([]queueCount, error) {
	queues := d.cfg.Queues
	if len(queues) == 0 {
		var err error
		if queues, err = d.lc.Queues(ctx); err != nil {
			return nil, err
		}
	}
	queues = slices.Clip(queues[:min(len(queues), maxQueueMetrics)])
	out := make([]queueCount, 0, len(queues))
	for _, q := range queues {
		st, err := d.lc.Stats(ctx, q)
		if err != nil {
			return out, err
		}
		out = append(out, queueCount{queue: q, stats: st})
	}
	return out, nil
}

// tracker counts running sweeps and, once closed, refuses new ones.
type tracker struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   chan struct{} // closed when n drops to 0 after close
}

func (t *tracker) begin() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.n++
	return true
}

func (t *tracker) end() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.n--
	if t.n == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
}

// close refuses new sweeps and waits for running ones until ctx is done;
// it reports whether they all finished.
func (t *tracker) close(ctx context.Context) bool {
	t.mu.Lock()
	t.closed = true
	if t.n == 0 {
		t.mu.Unlock()
		return true
	}
	idle := make(chan struct{})
	t.idle = idle
	t.mu.Unlock()
	select {
	case <-idle:
		return true
	case <-ctx.Done():
		return false
	}
}

// outageHandler demotes the components' Warn and Error records to Debug
// while Redis is known to be down: ackd logs the outage and the recovery
// once itself, instead of a line per retry.
type outageHandler struct {
	slog.Handler
	down func() bool
}

func (h *outageHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn && h.down() {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return h.Handler.Handle(ctx, r)
}

func (h *outageHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &outageHandler{Handler: h.Handler.WithAttrs(as), down: h.down}
}

func (h *outageHandler) WithGroup(name string) slog.Handler {
	return &outageHandler{Handler: h.Handler.WithGroup(name), down: h.down}
}

// isRedisDown reports whether ackd is in a Redis outage.
func (d *daemon) isRedisDown() bool {
	d.redisMu.Lock()
	defer d.redisMu.Unlock()
	return d.redisDown
}
