package fallback

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

const waitLong = 15 * time.Second

// sweeps is a SweepFunc that records the queues it is given and fails
// for those in fail.
type sweeps struct {
	mu     sync.Mutex
	queues []string
	fail   map[string]error
}

func (s *sweeps) fn(_ context.Context, queue string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queues = append(s.queues, queue)
	return s.fail[queue]
}

func (s *sweeps) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.queues)
}

// fixed is a Registry with a fixed answer.
type fixed struct {
	queues []string
	err    error
}

func (f fixed) Queues(context.Context) ([]string, error) { return f.queues, f.err }

// TestScanRegistry: a scan sweeps every queue of the registry in Redis
// that has any key, read again at each scan; registered names with no
// queue behind them (a mistake, or a hostile flood) are skipped.
func TestScanRegistry(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	push := func(q string) {
		t.Helper()
		if _, err := lc.Push(t.Context(), q, []byte("x"), nil); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{"c", "a", "b"} {
		push(q)
	}
	// 2,500 bogus names (more than two SSCAN pages), one invalid.
	bogus := []any{"bad{name}"}
	for i := range 2500 {
		bogus = append(bogus, fmt.Sprint("bogus-", i))
	}
	if err := rdb.SAdd(t.Context(), lease.RegistryKey, bogus...).Err(); err != nil {
		t.Fatal(err)
	}
	sw := &sweeps{}
	s, err := NewScanner(lc, &Config{SweepFunc: sw.fn})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.scan(t.Context()); err != nil || n != 3 {
		t.Fatalf("Scan = %d, %v; want 3 queues", n, err)
	}
	push("d")
	if n, err := s.scan(t.Context()); err != nil || n != 4 {
		t.Fatalf("second Scan = %d, %v; want 4 queues", n, err)
	}
	got := sw.get()
	slices.Sort(got[:3])
	slices.Sort(got[3:])
	if want := []string{"a", "b", "c", "a", "b", "c", "d"}; !slices.Equal(got, want) {
		t.Fatalf("swept %v, want %v", got, want)
	}
}

// TestScanFixedQueues: with Config.Queues the registry is never read.
func TestScanFixedQueues(t *testing.T) {
	t.Parallel()
	sw := &sweeps{}
	s, err := NewScanner(fixed{err: errors.New("registry read")}, &Config{SweepFunc: sw.fn, Queues: []string{"watched", "unknown"}})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.scan(t.Context()); err != nil || n != 2 {
		t.Fatalf("Scan = %d, %v; want 2 queues", n, err)
	}
	if got := sw.get(); !slices.Equal(got, []string{"watched", "unknown"}) {
		t.Fatalf("swept %v", got)
	}
}

// An error on one queue does not stop the scan of the others; the errors
// are joined and can be inspected.
func TestScanErrors(t *testing.T) {
	t.Parallel()
	sw := &sweeps{fail: map[string]error{"broken": lease.ErrMalformed, "bad{name": lease.ErrInvalidQueue}}
	var scanErr error
	var scanned int
	s, err := NewScanner(nil, &Config{
		SweepFunc: sw.fn,
		Queues:    []string{"broken", "bad{name", "good"},
		ScanFunc:  func(n int, _ time.Duration, err error) { scanned, scanErr = n, err },
	})
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.scan(t.Context())
	if !errors.Is(err, lease.ErrMalformed) || !errors.Is(err, lease.ErrInvalidQueue) || n != 3 {
		t.Fatalf("Scan = %d, %v; want 3 queues, ErrMalformed and ErrInvalidQueue", n, err)
	}
	if got := sw.get(); !slices.Equal(got, []string{"broken", "bad{name", "good"}) {
		t.Fatalf("swept %v: good not swept after broken failed", got)
	}
	if scanned != 3 || scanErr == nil {
		t.Fatalf("ScanFunc got %d, %v", scanned, scanErr)
	}
	if st := s.Stats(); st.Errors != 1 || st.Scans != 1 {
		t.Fatalf("Stats() = %+v, want 1 scan, 1 error", st)
	}

	// A registry that cannot be read fails the scan, which sweeps nothing.
	s, err = NewScanner(fixed{err: errors.New("connection refused")}, &Config{SweepFunc: sw.fn})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.scan(t.Context()); err == nil || n != 0 {
		t.Fatalf("Scan with an unreadable registry = %d, %v", n, err)
	}
}

func TestNewScannerRejects(t *testing.T) {
	t.Parallel()
	sw := &sweeps{}
	for name, tt := range map[string]struct {
		reg Registry
		cfg *Config
	}{
		"nil config":        {fixed{}, nil},
		"no SweepFunc":      {fixed{}, &Config{}},
		"no registry":       {nil, &Config{SweepFunc: sw.fn}},
		"negative Interval": {fixed{}, &Config{SweepFunc: sw.fn, Interval: -time.Second}},
	} {
		if _, err := NewScanner(tt.reg, tt.cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: NewScanner = %v, want ErrConfig", name, err)
		}
	}
}

func TestRun(t *testing.T) {
	t.Parallel()
	sw := &sweeps{}
	var mu sync.Mutex
	var scans []int
	s, err := NewScanner(fixed{queues: []string{"q"}}, &Config{
		SweepFunc: sw.fn,
		Interval:  time.Hour,
		ScanFunc: func(n int, _ time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			scans = append(scans, n)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(scans)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	redistest.WaitFor(t, waitLong, func() bool { return count() == 1 }, "scan at start")
	s.ScanNow()
	redistest.WaitFor(t, waitLong, func() bool { return count() == 2 }, "scan on ScanNow")
	if got := sw.get(); !slices.Equal(got, []string{"q", "q"}) {
		t.Fatalf("swept %v", got)
	}
	if st := s.Stats(); st.Scans != 2 || st.LastScan.IsZero() {
		t.Fatalf("Stats() = %+v", st)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Run did not return after cancel")
	}
}

// The interval is measured from the end of a scan.
func TestRunInterval(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var ends []time.Time
	s, err := NewScanner(fixed{}, &Config{
		SweepFunc: (&sweeps{}).fn,
		Interval:  20 * time.Millisecond,
		ScanFunc: func(int, time.Duration, error) {
			mu.Lock()
			defer mu.Unlock()
			ends = append(ends, time.Now())
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	redistest.WaitFor(t, waitLong, func() bool { return s.Stats().Scans >= 3 }, "3 scans")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(ends); i++ {
		if gap := ends[i].Sub(ends[i-1]); gap < 20*time.Millisecond {
			t.Fatalf("scans %d and %d ended %v apart, less than the interval", i-1, i, gap)
		}
	}
}
