package ui

import (
	"fmt"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ackd/ackd/lease"
)

// at is a reading of a queue at Redis time ms: total messages (all
// ready), dead letters among them, and the running totals.
func at(ms int64, total, dead, acked, purged, replayed int64) lease.Stats {
	return lease.Stats{Ready: total - dead, Dead: dead, Acked: acked, Purged: purged, Replayed: replayed, Now: time.UnixMilli(ms)}
}

func TestRecorderRing(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_000_000, 0)
	rec := NewRecorder(time.Second, 5, []float64{0.001, 0.01, 1})
	rec.nowFunc = func() time.Time { return now }
	if s := rec.Series(""); len(s) != 5 || slices.ContainsFunc(s, func(x Sample) bool { return x != Sample{} }) {
		t.Fatalf("empty recorder: %v", s)
	}
	rec.Swept("a", "event", lease.SweepResult{Requeued: 2, Lags: []time.Duration{500 * time.Microsecond, 5 * time.Millisecond, -time.Millisecond}})
	now = now.Add(time.Second)
	rec.Swept("a", "scan", lease.SweepResult{Lags: []time.Duration{2 * time.Second}})
	rec.Swept("b", "timer", lease.SweepResult{Promoted: 3})
	rec.Swept("b", "timer", lease.SweepResult{}) // nothing: no change
	want := []Sample{{}, {}, {}, {Requeued: 2}, {Promoted: 3}}
	if got := rec.Series(""); !slices.Equal(got, want) {
		t.Errorf("total series %v, want %v", got, want)
	}
	if got := rec.Series("a"); !slices.Equal(got, []Sample{{}, {}, {}, {Requeued: 2}, {}}) {
		t.Errorf("series of a %v", got)
	}
	if got := rec.Series("unknown"); len(got) != 5 || got[4] != (Sample{}) {
		t.Errorf("series of an unknown queue %v", got)
	}
	bounds, counts := rec.Lag()
	if len(bounds) != 3 || !slices.Equal(counts, []uint64{2, 1, 0, 1}) {
		t.Errorf("lag histogram %v %v, want [2 1 0 1]", bounds, counts)
	}
	// Time moves on: old buckets fall out, skipped ones read zero.
	now = now.Add(3 * time.Second)
	if got := rec.Series("a"); !slices.Equal(got, []Sample{{Requeued: 2}, {}, {}, {}, {}}) {
		t.Errorf("series of a 3 s later %v", got)
	}
	rec.Swept("a", "event", lease.SweepResult{Requeued: 1})
	now = now.Add(time.Hour)
	rec.Swept("a", "event", lease.SweepResult{Requeued: 7})
	if got := rec.Series("a"); !slices.Equal(got, []Sample{{}, {}, {}, {}, {Requeued: 7}}) {
		t.Errorf("series of a an hour later %v", got)
	}
}

// TestRecorderReadings derives pushed, acked and dead-lettered from
// readings, whether from sweeps or from Observe.
func TestRecorderReadings(t *testing.T) {
	t.Parallel()
	now := time.Unix(3_000_000, 0)
	rec := NewRecorder(time.Second, 4, nil)
	rec.nowFunc = func() time.Time { return now }
	step := func() { now = now.Add(time.Second) }

	rec.Observe("q", at(1000, 10, 2, 100, 5, 1)) // the first reading: a baseline only
	step()
	// 7 pushed, 3 acked: 10 -> 14 messages; 1 died, 1 dead letter purged.
	rec.Swept("q", "timer", lease.SweepResult{Requeued: 4, Counts: at(2000, 14-1, 2, 103, 6, 1)})
	step()
	rec.Observe("q", at(1500, 99, 99, 0, 0, 0)) // older than the latest: ignored
	rec.Observe("q", at(2000, 99, 99, 0, 0, 0)) // as old: ignored
	// 2 dead letters replayed (dead 2 -> 0, total unchanged), 1 acked.
	rec.Observe("q", at(3000, 12, 0, 104, 6, 3))
	rec.Observe("q", at(3500, 0, 0, 116, 6, 3)) // the 12 left acked
	step()
	// Forget deleted the totals of the empty queue: they start again
	// from 0; 5 pushed.
	rec.Observe("q", at(4000, 5, 0, 0, 0, 0))
	want := []Sample{{Pushed: 7, Acked: 3, Requeued: 4, DeadLettered: 1}, {Acked: 13}, {Pushed: 5}}
	if got := rec.Series("q")[1:]; !slices.Equal(got, want) {
		t.Errorf("series %v, want %v", got, want)
	}
	if got := rec.Series("")[1:]; !slices.Equal(got, want) {
		t.Errorf("total series %v, want %v", got, want)
	}
	// Nothing can go below 0: 10 messages vanished without a trace.
	step()
	rec.Observe("q", at(5000, 0, 0, 0, 0, 0))
	if got := rec.Series("q")[3]; got != (Sample{}) {
		t.Errorf("after messages vanished: %v, want nothing", got)
	}
}

func TestRecorderRecentAndSpark(t *testing.T) {
	t.Parallel()
	now := time.Unix(2_000_000, 0)
	rec := NewRecorder(5*time.Second, 60, nil)
	rec.nowFunc = func() time.Time { return now }
	ms := int64(1)
	var total, acked int64
	rec.Observe("q", at(ms, 0, 0, 0, 0, 0))
	for range 12 {
		ms += 5000
		total, acked = total+50-20, acked+20 // 50 pushed, 20 acked per 5 s
		rec.Swept("q", "event", lease.SweepResult{Requeued: 10, Counts: at(ms, total, 0, acked, 0, 0)})
		now = now.Add(5 * time.Second)
	}
	rec.Swept("q", "event", lease.SweepResult{Requeued: 1000}) // the bucket under way: not counted
	if got, want := rec.Recent("q"), (Rates{Pushed: 10, Acked: 4, Requeued: 2}); got != want {
		t.Errorf("Recent = %+v, want %+v", got, want)
	}
	sp, width := rec.Spark("q")
	if width != 15*time.Second || len(sp.Pushed) != SparkPoints || len(sp.Acked) != SparkPoints {
		t.Fatalf("Spark: %d points of %v, want %d of 15s", len(sp.Pushed), width, SparkPoints)
	}
	// Points are 3 buckets each: the 12 readings fill the last 2 buckets
	// of one point, 3 whole points, and 2 buckets of the point under way,
	// whose third bucket holds the 1,000 requeued.
	if got, want := sp.Pushed[SparkPoints-5:], []int64{50, 150, 150, 150, 100}; !slices.Equal(got, want) {
		t.Errorf("Spark pushed tail %v, want %v", got, want)
	}
	if got := sp.Requeued[SparkPoints-1]; got != 1000+20 {
		t.Errorf("Spark requeued of the point under way %d, want 1020", got)
	}
}

func TestLoginLimiter(t *testing.T) {
	t.Parallel()
	now := time.Unix(4_000_000, 0)
	l := newLoginLimiter(3, time.Minute)
	l.nowFunc = func() time.Time { return now }
	right := func() bool { return true }
	wrong := func() bool { return false }
	blocked := func(addr string) time.Duration {
		wait, _ := l.attempt(addr, right)
		return wait
	}
	for i := range 3 {
		if wait, ok := l.attempt("1.2.3.4", wrong); wait != 0 || ok {
			t.Fatalf("attempt after %d failures: wait %v, ok %v", i, wait, ok)
		}
		now = now.Add(10 * time.Second)
	}
	// Failures at 0, 10 and 20 s; now is 30 s: the first ages out at 60 s.
	if d := blocked("1.2.3.4"); d != 30*time.Second {
		t.Errorf("blocked for %v after 3 failures, want 30s", d)
	}
	if d := blocked("5.6.7.8"); d != 0 {
		t.Errorf("another address blocked for %v", d)
	}
	now = now.Add(30 * time.Second)
	if d := blocked("1.2.3.4"); d != 0 {
		t.Errorf("still blocked for %v once the first failure is a minute old", d)
	}
	// Right tokens do not count, however many.
	for range 10 {
		if wait, ok := l.attempt("9.9.9.9", right); wait != 0 || !ok {
			t.Fatalf("a right token: wait %v, ok %v", wait, ok)
		}
	}

	// A burst of concurrent wrong tokens: only as many as the limit are
	// compared.
	var compared atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			l.attempt("6.6.6.6", func() bool { compared.Add(1); return false })
		})
	}
	wg.Wait()
	if n := compared.Load(); n != 3 {
		t.Errorf("%d of a burst of 20 wrong tokens compared, want 3", n)
	}
	if got := retryAfter(1500 * time.Millisecond); got != "2" {
		t.Errorf("retryAfter(1.5s) = %q, want 2", got)
	}
	if got := retryAfter(time.Millisecond); got != "1" {
		t.Errorf("retryAfter(1ms) = %q, want 1", got)
	}
}

func TestViews(t *testing.T) {
	t.Parallel()
	var v views
	t0 := time.Unix(5_000_000, 0)
	if ok, _ := v.since(t0.Add(-time.Minute)); ok {
		t.Fatal("viewed before any request")
	}
	v.saw(t0, "")
	v.saw(t0.Add(time.Second), "orders")
	for i := range maxViewedQueues + 5 {
		v.saw(t0.Add(2*time.Second), fmt.Sprintf("q%03d", i))
	}
	ok, qs := v.since(t0.Add(-time.Minute))
	if !ok || len(qs) != maxViewedQueues || slices.Contains(qs, "orders") {
		t.Errorf("since: %v, %d queues (orders kept: %v), want true, %d, the oldest dropped", ok, len(qs), slices.Contains(qs, "orders"), maxViewedQueues)
	}
	if ok, qs := v.since(t0.Add(time.Minute)); ok || len(qs) != 0 {
		t.Errorf("a minute later: %v, %v; want nothing", ok, qs)
	}
}

func TestPreview(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in     string
		want   string
		binary bool
	}{
		{"hello <b>", "hello <b>", false},
		{"line\nnext\ttab", "line\nnext\ttab", false},
		{"caf\xc3", "caf", false}, // cut inside a rune by the preview
		{"\x00\x01ab", "00 01 61 62", true},
		{"\xff\xfe\xfd\xfc\xfb", "ff fe fd fc fb", true},
		{"esc \x1b[31m", "65 73 63 20 1b 5b 33 31 6d", true},
	} {
		got, bin := preview([]byte(tc.in))
		if got != tc.want || bin != tc.binary {
			t.Errorf("preview(%q) = %q, %v; want %q, %v", tc.in, got, bin, tc.want, tc.binary)
		}
	}
}

func TestSameOriginAndNext(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		headers map[string]string
		want    bool
	}{
		{map[string]string{"Origin": "http://ackd:9466"}, true},
		{map[string]string{"Sec-Fetch-Site": "same-origin"}, true},
		{map[string]string{"Origin": "http://ackd:9466", "Sec-Fetch-Site": "same-site"}, false},
		{map[string]string{"Origin": "http://evil:9466"}, false},
		{map[string]string{"Origin": "null"}, false},
		{nil, false},
	} {
		r := httptest.NewRequest("POST", "http://ackd:9466/ui/login", nil)
		for k, v := range tc.headers {
			r.Header.Set(k, v)
		}
		if got := sameOrigin(r); got != tc.want {
			t.Errorf("sameOrigin with %v = %v", tc.headers, got)
		}
	}
	h := &Handler{cfg: Config{Prefix: "/ui/"}}
	for in, want := range map[string]string{
		"/ui/q/orders":        "/ui/q/orders",
		"//evil.example/ui/":  "/ui/",
		"https://evil/ui/":    "/ui/",
		"/ui/\\evil":          "/ui/",
		"/metrics":            "/ui/",
		"/ui/q/a?reason=x#dd": "/ui/q/a?reason=x#dd",
	} {
		if got := h.next(in); got != want {
			t.Errorf("next(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFlashOnlyFromActions(t *testing.T) {
	t.Parallel()
	for msg, ok := range map[string]bool{
		"replay: 3": true, "purge: 0": true, "paused": true, "resumed": true,
		"replay: 2 (some were no longer dead letters)": true,
		"Your session expired, call +1 555":            false, "replay: 3; call us": false, "": false,
	} {
		if flashRE.MatchString(msg) != ok {
			t.Errorf("flash %q allowed = %v, want %v", msg, !ok, ok)
		}
	}
}
