package fallback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"
)

// ScanIntervalDefault is the default Config.Interval. See the package
// documentation for why it is this long.
const ScanIntervalDefault = 5 * time.Minute

// ErrConfig is wrapped by NewScanner's errors.
var ErrConfig = errors.New("fallback: invalid configuration")

// Registry lists the queues to scan when Config.Queues is empty. A
// *lease.Client is one: its Queues reads the registry SET ackd:queues.
type Registry interface {
	Queues(ctx context.Context) ([]string, error)
}

// pager is a Registry that can list itself in pages, skipping names with
// no queue behind them (*lease.Client's ForEachQueue). The Scanner uses
// it when it can: a registry of a million bogus names then neither fills
// memory nor makes a scan sweep each of them.
type pager interface {
	ForEachQueue(ctx context.Context, fn func(ctx context.Context, queues []string) error) error
}

// Config configures a Scanner.
type Config struct {
	// SweepFunc sweeps one queue and returns when the sweep is done, with
	// its error. The reaper passes its scheduler's Sweep, so that scans
	// share the line, the coalescing and the concurrency bound of every
	// other trigger. Required.
	SweepFunc func(ctx context.Context, queue string) error
	// Interval is the time from the end of one scan to the start of the
	// next. Defaults to ScanIntervalDefault (5 minutes).
	Interval time.Duration
	// Queues is the fixed set of queues to scan. Empty: every queue the
	// Registry lists, read again at each scan.
	Queues []string
	// ScanFunc, if set, is called after every full scan with the number
	// of queues scanned, how long it took and its error, if any.
	ScanFunc func(queues int, took time.Duration, err error)
	// Logger receives failed scans at Warn and start/stop at Debug.
	// Defaults to discarding them.
	Logger *slog.Logger
}

// ScannerStats is a snapshot of a Scanner's counters.
type ScannerStats struct {
	Scans        uint64        // scans finished, failed ones included
	Errors       uint64        // scans that ended with an error (on any queue)
	LastScan     time.Time     // when the last scan finished; zero before the first
	LastDuration time.Duration // how long the last scan took
}

// Scanner asks for a sweep of every queue periodically: the safety net
// under keyspace events and wake timers. It is safe for concurrent use.
type Scanner struct {
	reg  Registry
	cfg  Config
	log  *slog.Logger
	kick chan struct{}

	scans, errs atomic.Uint64
	last        atomic.Int64 // unix ns
	lastDur     atomic.Int64
}

// NewScanner returns a Scanner that lists queues with reg (unused if
// Config.Queues is set) and sweeps each with Config.SweepFunc. It does
// nothing until Run.
func NewScanner(reg Registry, cfg *Config) (*Scanner, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	if c.SweepFunc == nil {
		return nil, fmt.Errorf("%w: Config.SweepFunc is required", ErrConfig)
	}
	if reg == nil && len(c.Queues) == 0 {
		return nil, fmt.Errorf("%w: nil Registry and no Config.Queues", ErrConfig)
	}
	if c.Interval < 0 {
		return nil, fmt.Errorf("%w: Config.Interval %v: must not be negative", ErrConfig, c.Interval)
	}
	if c.Interval == 0 {
		c.Interval = ScanIntervalDefault
	}
	c.Queues = slices.Clone(c.Queues)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return &Scanner{
		reg:  reg,
		cfg:  c,
		log:  c.Logger.With("component", "fallback"),
		kick: make(chan struct{}, 1),
	}, nil
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
		if _, err := s.scan(ctx); err != nil && ctx.Err() == nil {
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

// scan makes one full scan: SweepFunc for each queue, one after the
// other. An error on one queue does not stop the others; the errors are
// joined. It returns how many queues it scanned.
func (s *Scanner) scan(ctx context.Context) (queues int, err error) {
	start := time.Now()
	defer func() {
		took := time.Since(start)
		if err != nil && ctx.Err() == nil {
			s.errs.Add(1)
		}
		s.last.Store(time.Now().UnixNano())
		s.lastDur.Store(int64(took))
		// Last: a reader that sees the count sees the rest of this scan.
		s.scans.Add(1)
		if s.cfg.ScanFunc != nil {
			s.cfg.ScanFunc(queues, took, err)
		}
	}()
	var errs []error
	sweep := func(ctx context.Context, qs []string) error {
		for _, q := range qs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := s.cfg.SweepFunc(ctx, q); err != nil {
				errs = append(errs, fmt.Errorf("fallback: scan %s: %w", q, err))
			}
			queues++
		}
		return nil
	}
	qs := s.cfg.Queues
	if len(qs) == 0 {
		if p, ok := s.reg.(pager); ok {
			if err := p.ForEachQueue(ctx, sweep); err != nil {
				errs = append(errs, fmt.Errorf("fallback: scan: %w", err))
			}
			return queues, errors.Join(errs...)
		}
		qs, err = s.reg.Queues(ctx)
		if err != nil {
			return 0, fmt.Errorf("fallback: scan: %w", err)
		}
	}
	if err := sweep(ctx, qs); err != nil {
		errs = append(errs, err)
	}
	return queues, errors.Join(errs...)
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
