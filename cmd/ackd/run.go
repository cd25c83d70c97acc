package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redisconn"
	"github.com/ackd/ackd/internal/ui"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
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

// reaperConfig converts the environment's settings into the reaper's.
func (c config) reaperConfig(log *slog.Logger, obs reaper.Observer) *reaper.Config {
	rc := &reaper.Config{
		Queues:          c.Queues,
		ScanInterval:    c.ScanInterval,
		Concurrency:     c.SweepConcurrency,
		SweepLimit:      c.SweepLimit,
		ConfigureEvents: c.ConfigureEvents,
		ObserveEvents:   !c.ConfigureEvents,
		ShutdownTimeout: c.ShutdownTimeout,
		Replicas:        c.RedisReplicas,
		ReplicaTimeout:  c.RedisReplicaTimeout,
		RedisName:       redisconn.Redact(c.RedisURL),
		Observer:        obs,
		Logger:          log,
	}
	rc.RedisUser = redisUser(c.RedisURL) // named in logs; the password never is
	if c.tune != nil {
		c.tune(rc)
	}
	return rc
}

// serve runs ackd until ctx is cancelled, then shuts down in order: the
// reaper (it stops listening and scanning, and lets running sweeps
// finish), HTTP, Redis.
func serve(ctx context.Context, cfg config, log *slog.Logger) error {
	redis.SetLogger(redisLogger{log.With("component", "go-redis")})

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("ACKD_HTTP_ADDR: %w", err)
	}
	defer ln.Close()

	m := newMetrics()
	rec := ui.NewRecorder(0, 0, lagBuckets)
	d := &daemon{metrics: m, uiOn: cfg.UI, observeEvents: !cfg.ConfigureEvents}
	d.setConnectError("connecting")
	limit := newConnLimit(httpMaxConns)
	srv := &http.Server{
		Handler:           d.handler(),
		ReadHeaderTimeout: httpReadHeaderTimeout,
		ReadTimeout:       httpReadTimeout,
		WriteTimeout:      httpWriteTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    httpMaxHeaderBytes,
		ConnState:         limit.connState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	httpDone := make(chan error, 1)
	go func() { httpDone <- srv.Serve(limit.listener(ln)) }()
	defer srv.Close() // if we return before the ordered shutdown below

	queues := "all"
	if len(cfg.Queues) > 0 {
		queues = strings.Join(cfg.Queues, ",")
	}
	log.Info("ackd started", "version", version, "http_addr", ln.Addr().String(),
		"redis", redisconn.Redact(cfg.RedisURL), "queues", queues, "scan_interval", cfg.ScanInterval.String(),
		"configure_events", cfg.ConfigureEvents, "sweep_concurrency", cfg.SweepConcurrency, "redis_replicas", cfg.RedisReplicas,
		"ui", cfg.UI, "ui_actions", cfg.UIToken != "", "ui_payloads", cfg.UIPayloads)
	if cfg.skipVerify {
		log.Warn("TLS certificate verification is off (skip_verify=true in ACKD_REDIS_URL): anyone on the path to Redis can read and change what ackd sends")
	}

	rc := cfg.reaperConfig(log, observers{m, rec})
	conn, err := connect(ctx, cfg, cmp.Or(rc.RetryDelay, reaper.RetryDelayDefault), log, func(reason string) {
		m.connectErrs.Inc()
		d.setConnectError(reason)
	})
	if err != nil {
		log.Info("ackd stopped", "reason", "signal before Redis answered")
		return nil
	}
	defer conn.Close() // last
	rdb := conn.Client
	rc.Sentinel = conn.Failover
	rp, err := reaper.New(rdb, rc)
	if err != nil {
		return err
	}
	m.watch(rp)
	// The dashboard's actions are ackd's own writes too.
	lc, err := lease.New(rdb, &lease.Config{Replicas: cfg.RedisReplicas, ReplicaTimeout: cfg.RedisReplicaTimeout})
	if err != nil {
		return err
	}
	dash, err := newUI(cfg, rp, lc, rec, log)
	if err != nil {
		return err
	}
	if dash != nil {
		d.ui.Store(dash)
	}
	d.conn.Store(&connected{rdb: rdb, rp: rp})
	log.Info("redis connected", "mode", string(conn.Mode), "addrs", strings.Join(conn.Addrs, ","))

	rctx, stopReaper := context.WithCancel(ctx)
	defer stopReaper()
	reaperDone := make(chan error, 1)
	go func() { reaperDone <- rp.Run(rctx) }()
	if dash != nil {
		go dash.Sample(rctx) // reads queues for the rate charts while the dashboard is viewed
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("ackd stopping", "reason", "signal", "shutdown_timeout", cfg.ShutdownTimeout.String())
	case runErr = <-reaperDone:
		reaperDone <- runErr
		log.Error("ackd stopping", "error", runErr)
	case err := <-httpDone:
		runErr = fmt.Errorf("http server: %w", err)
		log.Error("ackd stopping", "error", runErr)
	}
	d.stopping.Store(true)
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	// 1. The reaper: running sweeps get ShutdownTimeout to finish.
	stopReaper()
	<-reaperDone
	// 2. HTTP.
	if err := srv.Shutdown(shutCtx); err != nil {
		_ = srv.Close()
	}
	// 3. Redis, last (deferred above).
	log.Info("ackd stopped")
	return runErr
}

// daemon is what the HTTP handlers read.
type daemon struct {
	metrics  *metrics
	uiOn     bool                       // ACKD_UI
	ui       atomic.Pointer[ui.Handler] // the dashboard, once Redis answered
	stopping atomic.Bool
	// conn is set once Redis answered at start; until then connectErr
	// says why not.
	conn       atomic.Pointer[connected]
	connectErr atomic.Pointer[string]
	// observeEvents: ACKD_CONFIGURE_EVENTS=false, ackd sends no CONFIG and
	// learns of keyspace events from what arrives.
	observeEvents bool
}

// connected is the client and the reaper, once Redis answered.
type connected struct {
	rdb redis.UniversalClient
	rp  *reaper.Reaper
}

func (d *daemon) setConnectError(reason string) { d.connectErr.Store(&reason) }
