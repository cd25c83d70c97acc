package fallback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ackd/ackd/lease"
)

// ScanIntervalDefault is the default Config.Interval. See the package
// documentation for why it is this long.
const ScanIntervalDefault = 5 * time.Minute

// maxCallsPerQueue bounds the Sweep calls one scan makes on one queue, so
// that a queue refilled as fast as it is swept cannot hold the scan
// forever; the next scan (or the queue's timer) goes on from there.
const maxCallsPerQueue = 1000

// Config configures a Scanner. A nil *Config means all defaults.
type Config struct {
	// Interval is the time from the end of one scan to the start of the
	// next. Defaults to ScanIntervalDefault (5 minutes).
	Interval time.Duration
	// Queues is the fixed set of queues to scan. Empty: every queue in the
	// registry (lease.Client.Queues), read again at each scan.
	Queues []string
	// Limit bounds the work of each Sweep call (see lease.SweepOpts).
	// Defaults to lease.SweepLimitDefault.
	Limit int
	// SweptFunc, if set, is called after every successful Sweep call with
	// its result (for metrics, and to schedule the queue's next wake). It
	// runs on the scanning goroutine and should be fast.
	SweptFunc func(queue string, r lease.SweepResult)
	// ScanFunc, if set, is called after every full scan with the number
	// of queues scanned, how long it took and its error, if any.
	ScanFunc func(queues int, took time.Duration, err error)
	// Logger receives "requeued expired leases" at Info when a scan found
	// work, errors at Warn, and start/stop at Debug. Defaults to
	// discarding them.
	Logger *slog.Logger
}

// ScannerStats is a snapshot of a Scanner's counters.
type ScannerStats struct {
	Scans        uint64        // scans finished, failed ones included
	Errors       uint64        // scans that ended with an error (on any queue)
	LastScan     time.Time     // when the last scan finished; zero before the first
	LastDuration time.Duration // how long the last scan took
}

// Scanner sweeps every queue periodically: the safety net under keyspace
// events and wake timers. It is safe for concurrent use.
type Scanner struct {
	lc   *lease.Client
	cfg  Config
	log  *slog.Logger
	kick chan struct{}

	scans, errs atomic.Uint64
	last        atomic.Int64 // unix ns
	lastDur     atomic.Int64
}

// NewScanner returns a Scanner over lc. It does nothing until Run or Scan.
func NewScanner(lc *lease.Client, cfg *Config) *Scanner {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.Interval <= 0 {
		c.Interval = ScanIntervalDefault
	}
	if c.Limit <= 0 {
		c.Limit = lease.SweepLimitDefault
	}
	c.Queues = slices.Clone(c.Queues)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Scanner{
		lc:   lc,
		cfg:  c,
		log:  c.Logger.With("component", "fallback"),
		kick: make(chan struct{}, 1),
	}
}

// Run scans at once, then Interval after each scan ends and whenever
// ScanNow is called, until ctx is done; it then returns nil. Errors are
// logged and counted, never returned: the next scan tries again.
func (s *Scanner) Run(ctx context.Context) error {
	s.log.DebugContext(ctx, "scanner started", "interval", s.cfg.Interval)
	defer s.log.DebugContext(ctx, "scanner stopped")
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-s.kick:
		}
		if _, err := s.Scan(ctx); err != nil && ctx.Err() == nil {
			s.log.WarnContext(ctx, "scan failed", "error", err)
		}
		if ctx.Err() != nil {
			return nil
		}
		// A ScanNow that came during the scan stays in s.kick and causes
		// one more: the scan may have passed its queue before it came.
		timer.Reset(s.cfg.Interval)
	}
}

// ScanNow asks Run for a scan as soon as the current one, if any, ends.
// Requests coalesce: any number of them while a scan runs cause one more.
// It never blocks.
func (s *Scanner) ScanNow() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Scan makes one full scan: for each queue, Sweep with Reclaim, repeated
// while the result says More. An error on one queue does not stop the
// others; the errors are joined. It returns how many queues it scanned.
func (s *Scanner) Scan(ctx context.Context) (queues int, err error) {
	start := time.Now()
	defer func() {
		took := time.Since(start)
		s.scans.Add(1)
		if err != nil && ctx.Err() == nil {
			s.errs.Add(1)
		}
		s.last.Store(time.Now().UnixNano())
		s.lastDur.Store(int64(took))
		if s.cfg.ScanFunc != nil {
			s.cfg.ScanFunc(queues, took, err)
		}
	}()
	qs := s.cfg.Queues
	if len(qs) == 0 {
		qs, err = s.lc.Queues(ctx)
		if err != nil {
			return 0, fmt.Errorf("fallback: scan: %w", err)
		}
	}
	var errs []error
	for _, q := range qs {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		if err := s.sweep(ctx, q); err != nil {
			errs = append(errs, err)
		}
		queues++
	}
	return queues, errors.Join(errs...)
}

// sweep sweeps one queue until it has nothing more due.
func (s *Scanner) sweep(ctx context.Context, q string) error {
	var requeued, dead, promoted, reclaimed int
	defer func() {
		if requeued+dead > 0 {
			s.log.InfoContext(ctx, "requeued expired leases", "queue", q, "num_requeued", requeued, "num_dead_lettered", dead)
		}
		if promoted+reclaimed > 0 {
			s.log.DebugContext(ctx, "moved messages to ready", "queue", q, "num_promoted", promoted, "num_reclaimed", reclaimed)
		}
	}()
	opts := &lease.SweepOpts{Limit: s.cfg.Limit, Reclaim: true}
	for range maxCallsPerQueue {
		r, err := s.lc.Sweep(ctx, q, opts)
		if err != nil {
			return fmt.Errorf("fallback: scan %s: %w", q, err)
		}
		requeued += r.Requeued
		dead += r.DeadLettered
		promoted += r.Promoted
		reclaimed += r.Reclaimed
		if s.cfg.SweptFunc != nil {
			s.cfg.SweptFunc(q, r)
		}
		if !r.More {
			return nil
		}
	}
	return nil
}

// Stats returns a snapshot of the Scanner's counters.
func (s *Scanner) Stats() ScannerStats {
	st := ScannerStats{
		Scans:        s.scans.Load(),
		Errors:       s.errs.Load(),
		LastDuration: time.Duration(s.lastDur.Load()),
	}
	if ns := s.last.Load(); ns != 0 {
		st.LastScan = time.Unix(0, ns)
	}
	return st
}
