package ui

import (
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/ackd/ackd/lease"
)

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
	rec.Swept("a", "scan", lease.SweepResult{DeadLettered: 1, Malformed: 1, Lags: []time.Duration{2 * time.Second}})
	rec.Swept("b", "timer", lease.SweepResult{Promoted: 3})
	rec.Swept("b", "timer", lease.SweepResult{}) // nothing: no change
	want := []Sample{{}, {}, {}, {Requeued: 2}, {DeadLettered: 2, Promoted: 3}}
	if got := rec.Series(""); !slices.Equal(got, want) {
		t.Errorf("total series %v, want %v", got, want)
	}
	if got := rec.Series("a"); !slices.Equal(got, []Sample{{}, {}, {}, {Requeued: 2}, {DeadLettered: 2}}) {
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
	if got := rec.Series("a"); !slices.Equal(got, []Sample{{Requeued: 2}, {DeadLettered: 2}, {}, {}, {}}) {
		t.Errorf("series of a 3 s later %v", got)
	}
	rec.Swept("a", "event", lease.SweepResult{Requeued: 1})
	now = now.Add(time.Hour)
	rec.Swept("a", "event", lease.SweepResult{Requeued: 7})
	if got := rec.Series("a"); !slices.Equal(got, []Sample{{}, {}, {}, {}, {Requeued: 7}}) {
		t.Errorf("series of a an hour later %v", got)
	}
}

func TestRecorderRecent(t *testing.T) {
	t.Parallel()
	now := time.Unix(2_000_000, 0)
	rec := NewRecorder(5*time.Second, 60, nil)
	rec.nowFunc = func() time.Time { return now }
	for range 12 {
		rec.Swept("q", "event", lease.SweepResult{Requeued: 10, DeadLettered: 5})
		now = now.Add(5 * time.Second)
	}
	rec.Swept("q", "event", lease.SweepResult{Requeued: 1000}) // the bucket under way: not counted
	rq, dl := rec.Recent("q")
	if rq != 2 || dl != 1 {
		t.Errorf("Recent = %v, %v, want 2, 1 per second", rq, dl)
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
