package fallback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

const waitLong = 15 * time.Second

type testBundle struct {
	rdb *redis.Client
	lc  *lease.Client
}

func setup(t *testing.T) *testBundle {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &testBundle{rdb: rdb, lc: lc}
}

// expired pushes n messages to queue, leases them for 1 ms and waits until
// Redis's clock says every lease is due. Nothing sweeps them meanwhile.
func (b *testBundle) expired(t *testing.T, queue string, n int) {
	t.Helper()
	ctx := t.Context()
	payloads := make([][]byte, n)
	for i := range payloads {
		payloads[i] = fmt.Appendf(nil, "m%d", i)
	}
	if _, err := b.lc.PushBatch(ctx, queue, payloads, nil); err != nil {
		t.Fatal(err)
	}
	ls, err := b.lc.TakeBatch(ctx, queue, n, &lease.TakeOpts{LeaseFor: time.Millisecond})
	if err != nil || len(ls) != n {
		t.Fatalf("TakeBatch = %d, %v", len(ls), err)
	}
	last := ls[len(ls)-1].Deadline()
	redistest.WaitFor(t, waitLong, func() bool {
		now, err := b.rdb.Time(ctx).Result()
		return err == nil && now.Truncate(time.Millisecond).After(last)
	}, "leases due by Redis's clock")
}

// inFlight returns how many leases of queue are in flight.
func (b *testBundle) inFlight(t *testing.T, queue string) int64 {
	t.Helper()
	n, err := b.rdb.ZCard(t.Context(), lease.KeysFor(queue).Deadlines).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (b *testBundle) ready(t *testing.T, queue string) int64 {
	t.Helper()
	n, err := b.rdb.LLen(t.Context(), lease.KeysFor(queue).Ready).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// swept records SweptFunc calls.
type swept struct {
	mu      sync.Mutex
	results map[string][]lease.SweepResult
}

func (s *swept) fn(queue string, r lease.SweepResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.results == nil {
		s.results = map[string][]lease.SweepResult{}
	}
	s.results[queue] = append(s.results[queue], r)
}

func (s *swept) get(queue string) []lease.SweepResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.results[queue])
}

func requeuedIn(rs []lease.SweepResult) int {
	n := 0
	for _, r := range rs {
		n += r.Requeued
	}
	return n
}

func TestScanRequeuesExpired(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.expired(t, "orders", 3)
	sw := &swept{}
	logs := &logSink{}
	s := NewScanner(b.lc, &Config{SweptFunc: sw.fn, Logger: slog.New(logs)})
	n, err := s.Scan(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("Scan = %d, %v; want 1 queue", n, err)
	}
	rs := sw.get("orders")
	if len(rs) != 1 || rs[0].Requeued != 3 || len(rs[0].Lags) != 3 || rs[0].More {
		t.Fatalf("SweptFunc saw %+v, want one result with 3 requeued", rs)
	}
	if b.inFlight(t, "orders") != 0 || b.ready(t, "orders") != 3 {
		t.Fatalf("after Scan: %d in flight, %d ready; want 0, 3", b.inFlight(t, "orders"), b.ready(t, "orders"))
	}
	if got := logs.find("requeued expired leases"); len(got) != 1 || got[0]["queue"] != "orders" || got[0]["num_requeued"] != int64(3) {
		t.Fatalf("logged %v, want one Info line for orders with 3", got)
	}

	// Nothing due: a second scan requeues and logs nothing.
	if _, err := s.Scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := logs.find("requeued expired leases"); len(got) != 1 {
		t.Fatalf("logged %d times, want still 1", len(got))
	}
	if st := s.Stats(); st.Scans != 2 || st.Errors != 0 || st.LastScan.IsZero() {
		t.Fatalf("Stats() = %+v", st)
	}
}

func TestScanRegistry(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, q := range []string{"a", "b", "c"} {
		b.expired(t, q, 2)
	}
	// A queue in the registry with nothing in it costs one Sweep.
	if err := b.lc.Register(t.Context(), "empty"); err != nil {
		t.Fatal(err)
	}
	sw := &swept{}
	n, err := NewScanner(b.lc, &Config{SweptFunc: sw.fn}).Scan(t.Context())
	if err != nil || n != 4 {
		t.Fatalf("Scan = %d, %v; want 4 queues", n, err)
	}
	for _, q := range []string{"a", "b", "c"} {
		if got := requeuedIn(sw.get(q)); got != 2 || b.inFlight(t, q) != 0 {
			t.Fatalf("%s: requeued %d, %d in flight; want 2, 0", q, got, b.inFlight(t, q))
		}
	}
	if rs := sw.get("empty"); len(rs) != 1 || !rs[0].Next().IsZero() {
		t.Fatalf("empty: %+v", rs)
	}
}

func TestScanFixedQueues(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.expired(t, "watched", 2)
	b.expired(t, "other", 2)
	n, err := NewScanner(b.lc, &Config{Queues: []string{"watched", "unknown"}}).Scan(t.Context())
	if err != nil || n != 2 {
		t.Fatalf("Scan = %d, %v; want 2 queues", n, err)
	}
	if b.inFlight(t, "watched") != 0 || b.inFlight(t, "other") != 2 {
		t.Fatalf("in flight: watched %d, other %d; want 0, 2", b.inFlight(t, "watched"), b.inFlight(t, "other"))
	}
}

func TestScanMore(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.expired(t, "many", 95)
	sw := &swept{}
	if _, err := NewScanner(b.lc, &Config{Limit: 10, SweptFunc: sw.fn}).Scan(t.Context()); err != nil {
		t.Fatal(err)
	}
	rs := sw.get("many")
	if len(rs) != 10 {
		t.Fatalf("%d Sweep calls, want 10", len(rs))
	}
	for i, r := range rs {
		wantMore, wantN := i < 9, 10
		if i == 9 {
			wantN = 5
		}
		if r.More != wantMore || r.Requeued != wantN {
			t.Fatalf("call %d: %+v, want %d requeued, More %v", i, r, wantN, wantMore)
		}
	}
	if b.inFlight(t, "many") != 0 || b.ready(t, "many") != 95 {
		t.Fatalf("%d in flight, %d ready", b.inFlight(t, "many"), b.ready(t, "many"))
	}
}

func TestScanReclaims(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	// A consumer that died between its blocking wait and its take leaves
	// its element on the claim list.
	if err := b.lc.Register(ctx, "claimed"); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.RPush(ctx, lease.KeysFor("claimed").Claim, "raw").Err(); err != nil {
		t.Fatal(err)
	}
	sw := &swept{}
	if _, err := NewScanner(b.lc, &Config{SweptFunc: sw.fn}).Scan(ctx); err != nil {
		t.Fatal(err)
	}
	if rs := sw.get("claimed"); len(rs) != 1 || rs[0].Reclaimed != 1 || b.ready(t, "claimed") != 1 {
		t.Fatalf("SweptFunc saw %+v, %d ready; want 1 reclaimed", rs, b.ready(t, "claimed"))
	}
}

// An error on one queue does not stop the scan of the others.
func TestScanErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	b.expired(t, "good", 1)
	// A queue whose deadlines key is not a ZSET: its Sweep fails.
	if err := b.lc.Register(ctx, "broken"); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.Set(ctx, lease.KeysFor("broken").Deadlines, "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	var scanErr error
	var scanned int
	s := NewScanner(b.lc, &Config{
		Queues:   []string{"broken", "bad{name", "good"},
		ScanFunc: func(n int, _ time.Duration, err error) { scanned, scanErr = n, err },
	})
	n, err := s.Scan(ctx)
	if !errors.Is(err, lease.ErrMalformed) || !errors.Is(err, lease.ErrInvalidQueue) || n != 3 {
		t.Fatalf("Scan = %d, %v; want 3 queues, ErrMalformed and ErrInvalidQueue", n, err)
	}
	if b.inFlight(t, "good") != 0 {
		t.Fatal("good was not swept after broken failed")
	}
	if scanned != 3 || scanErr == nil {
		t.Fatalf("ScanFunc got %d, %v", scanned, scanErr)
	}
	if st := s.Stats(); st.Errors != 1 || st.Scans != 1 {
		t.Fatalf("Stats() = %+v, want 1 scan, 1 error", st)
	}
}

func TestRun(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var mu sync.Mutex
	var scans []int
	s := NewScanner(b.lc, &Config{
		Interval: time.Hour,
		ScanFunc: func(n int, _ time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			scans = append(scans, n)
		},
	})
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(scans)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	redistest.WaitFor(t, waitLong, func() bool { return count() == 1 }, "scan at start")
	b.expired(t, "late", 4)
	s.ScanNow()
	redistest.WaitFor(t, waitLong, func() bool { return count() == 2 }, "scan on ScanNow")
	if b.inFlight(t, "late") != 0 {
		t.Fatal("ScanNow's scan did not requeue")
	}
	if st := s.Stats(); st.Scans != 2 {
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
	b := setup(t)
	var mu sync.Mutex
	var ends []time.Time
	s := NewScanner(b.lc, &Config{
		Interval: 20 * time.Millisecond,
		ScanFunc: func(int, time.Duration, error) {
			mu.Lock()
			defer mu.Unlock()
			ends = append(ends, time.Now())
		},
	})
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

// logSink is a slog.Handler that keeps each record's message and attrs.
type logSink struct {
	mu   sync.Mutex
	recs []logRec
}

type logRec struct {
	msg   string
	attrs map[string]any
}

func (h *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (h *logSink) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logSink) WithGroup(string) slog.Handler            { return h }
func (h *logSink) Handle(_ context.Context, r slog.Record) error {
	attrs := map[string]any{}
	r.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.Any()
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, logRec{r.Message, attrs})
	return nil
}

func (h *logSink) find(msg string) []map[string]any {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]any
	for _, r := range h.recs {
		if r.msg == msg {
			out = append(out, r.attrs)
		}
	}
	return out
}
