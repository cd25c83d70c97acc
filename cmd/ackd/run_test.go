package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

// Generous bounds for conditions that normally hold within milliseconds;
// they only decide how long a failing test takes.
const (
	startTimeout = 15 * time.Second
	waitTimeout  = 15 * time.Second
)

// logLines collects ackd's JSON log lines.
type logLines struct {
	mu      sync.Mutex
	partial []byte
	lines   []map[string]any
	raw     bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.raw.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		var m map[string]any
		if err := json.Unmarshal(l.partial[:i], &m); err != nil {
			m = map[string]any{"msg": "UNPARSABLE", "line": string(l.partial[:i])}
		}
		l.lines = append(l.lines, m)
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

// find returns the lines whose msg is msg.
func (l *logLines) find(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.raw.String()
}

// instance is one ackd started in-process with run.
type instance struct {
	base   string // http://host:port
	log    *logLines
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	once   sync.Once
}

// shortIntervals makes the reaper notice an outage, its end and a failed
// sweep within tens of milliseconds instead of seconds, so that no test
// waits on production intervals.
func shortIntervals(c *reaper.Config) {
	c.CheckInterval = 100 * time.Millisecond
	c.OutageCheckInterval = 20 * time.Millisecond
	c.RetryDelay = 50 * time.Millisecond
	c.ListenerPingInterval = time.Second
}

// startAckd runs ackd against srv with env added to the test defaults and
// returns once it logged its HTTP address. It is stopped when the test
// ends, and must then return nil.
func startAckd(t *testing.T, srv *redistest.Server, env map[string]string) *instance {
	t.Helper()
	return startAckdTuned(t, srv, env, shortIntervals)
}

// startAckdTuned is startAckd with tune adjusting the reaper's intervals.
func startAckdTuned(t *testing.T, srv *redistest.Server, env map[string]string, tune func(*reaper.Config)) *instance {
	t.Helper()
	e := map[string]string{
		"ACKD_REDIS_URL":        srv.URL(),
		"ACKD_HTTP_ADDR":        "127.0.0.1:0",
		"ACKD_LOG_LEVEL":        "debug",
		"ACKD_SHUTDOWN_TIMEOUT": "5s",
	}
	maps.Copy(e, env)
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{log: &logLines{}, cancel: cancel, done: make(chan struct{})}
	cfg, err := loadConfig(e)
	if err != nil {
		t.Fatal(err)
	}
	cfg.tune = tune
	go func() {
		defer close(in.done)
		in.err = serve(ctx, cfg, newLogger(cfg, in.log))
	}()
	t.Cleanup(func() {
		in.stop(t)
		if t.Failed() {
			t.Logf("ackd log:\n%s", in.log.String())
		}
	})
	redistest.WaitFor(t, startTimeout, func() bool {
		select {
		case <-in.done:
			t.Fatalf("ackd exited at start: %v\n%s", in.err, in.log.String())
		default:
		}
		started := in.log.find("ackd started")
		if len(started) == 0 {
			return false
		}
		in.base = "http://" + started[0]["http_addr"].(string)
		return true
	}, "ackd logs that it started")
	return in
}

// stop cancels ackd and checks that it returns nil in time.
func (in *instance) stop(t *testing.T) {
	t.Helper()
	in.once.Do(func() {
		in.cancel()
		select {
		case <-in.done:
			if in.err != nil {
				t.Errorf("run returned %v", in.err)
			}
		case <-time.After(startTimeout):
			t.Errorf("run did not return within %v of its context being cancelled", startTimeout)
		}
	})
}

// get fetches path and returns its status and body.
func (in *instance) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(in.base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// readyz fetches /readyz.
func (in *instance) readyz(t *testing.T) (int, readiness) {
	t.Helper()
	code, body := in.get(t, "/readyz")
	var r readiness
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	return code, r
}

// metric sums the samples of name on /metrics whose labels include every
// "k=v" given.
func (in *instance) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	_, body := in.get(t, "/metrics")
	return sumMetric(t, body, name, labels...)
}

func sumMetric(t *testing.T, body, name string, labels ...string) float64 {
	t.Helper()
	var sum float64
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		ls := ""
		if rest[0] == '{' {
			end := strings.IndexByte(rest, '}')
			ls, rest = rest[1:end], rest[end+1:]
		}
		match := true
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if !strings.Contains(","+ls+",", ","+k+"="+strconv.Quote(v)+",") {
				match = false
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// waitReady waits until /readyz answers 200 and the first scan is done,
// so that what the test does next is not found by the start-up scan.
func (in *instance) waitReady(t *testing.T) {
	t.Helper()
	redistest.WaitFor(t, startTimeout, func() bool {
		code, _ := in.get(t, "/readyz")
		return code == http.StatusOK && in.metric(t, "ackd_scans_total") >= 1
	}, "ackd ready and scanned once")
}

func newLeaseClient(t *testing.T, srv *redistest.Server) *lease.Client {
	t.Helper()
	lc, err := lease.New(srv.Client(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	return lc
}

// expireOne pushes a message to queue and takes it with a lease of d that
// is never acked. It returns the message id.
func expireOne(t *testing.T, lc *lease.Client, queue string, d time.Duration) string {
	t.Helper()
	return expireLease(t, lc, queue, d).ID
}

func expireLease(t *testing.T, lc *lease.Client, queue string, d time.Duration) *lease.Lease {
	t.Helper()
	id, err := lc.Push(t.Context(), queue, []byte("payload"), nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := lc.Take(t.Context(), queue, &lease.TakeOpts{LeaseFor: d})
	if err != nil {
		t.Fatal(err)
	}
	if l.ID != id || l.Attempt != 1 {
		t.Fatalf("took %s attempt %d, want %s attempt 1", l.ID, l.Attempt, id)
	}
	return l
}

// waitBack waits until queue has n ready messages and none in flight.
func waitBack(t *testing.T, lc *lease.Client, queue string, n int64) {
	t.Helper()
	var st lease.Stats
	redistest.WaitFor(t, waitTimeout, func() bool {
		var err error
		st, err = lc.Stats(t.Context(), queue)
		if err != nil {
			t.Fatal(err)
		}
		return st.Ready == n && st.InFlight == 0
	}, "%d messages of %s back on the ready list (last %+v)", n, queue, &st)
}

// retake takes queue's next message and checks it is id's second delivery.
func retake(t *testing.T, lc *lease.Client, queue, id string) {
	t.Helper()
	l, err := lc.Take(t.Context(), queue, &lease.TakeOpts{LeaseFor: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if l.ID != id || l.Attempt != 2 {
		t.Errorf("retook %s attempt %d, want %s attempt 2", l.ID, l.Attempt, id)
	}
}

func TestExpiredLeaseComesBack(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "1h"})
	in.waitReady(t)
	lc := newLeaseClient(t, srv)

	// The two start-up scans (at start, and after subscribing) end
	// before the lease is taken; with a 1h interval, only a resubscription
	// starts another.
	redistest.WaitFor(t, waitTimeout, func() bool { return in.metric(t, "ackd_scans_total") >= 2 }, "the start-up scans")
	reconnects := in.metric(t, "ackd_subscription_reconnects_total")
	id := expireOne(t, lc, "jobs", 100*time.Millisecond)
	waitBack(t, lc, "jobs", 1)
	retake(t, lc, "jobs", id)

	// The requeue is counted before its lag is observed: wait for both.
	redistest.WaitFor(t, waitTimeout, func() bool {
		return in.metric(t, "ackd_requeues_total") == 1 && in.metric(t, "ackd_redelivery_lag_seconds_count") == 1
	}, "ackd_requeues_total 1 and one redelivery lag")
	if in.metric(t, "ackd_subscription_reconnects_total") == reconnects { // else a catch-up scan may have been first
		if n := in.metric(t, "ackd_requeues_total", "trigger=scan"); n != 0 {
			t.Errorf("requeued by a scan: %v; want the timer or the event", n)
		}
	}
	if n := in.metric(t, "ackd_redelivery_lag_seconds_count"); n != 1 {
		t.Errorf("ackd_redelivery_lag_seconds_count = %v, want 1", n)
	}
	if n := in.metric(t, "ackd_events_received_total", "event=wake"); n < 1 {
		t.Errorf("no wake message counted")
	}
}

func TestEventsOffTimerPath(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, "--notify-keyspace-events", "")
	in := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "1h", "ACKD_CONFIGURE_EVENTS": "false"})
	in.waitReady(t)

	code, r := in.readyz(t)
	if code != http.StatusOK || !r.Ready || !r.Redis || !r.Subscribed {
		t.Errorf("/readyz %d %+v: want 200, ready", code, r)
	}
	// No CONFIG with ACKD_CONFIGURE_EVENTS=false, and no expired event
	// arrives: ackd cannot know, and says so.
	if want := (eventsReport{State: "unknown", Source: "observed"}); r.Events != want {
		t.Errorf("/readyz events = %+v, want %+v", r.Events, want)
	}
	if got := in.metric(t, "ackd_keyspace_events_enabled"); got != -1 {
		t.Errorf("ackd_keyspace_events_enabled = %v, want -1 (unknown)", got)
	}
	if got := redistest.RedisCLI(t, srv.Addr(), "CONFIG", "GET", "notify-keyspace-events"); got != "notify-keyspace-events" {
		t.Errorf("ackd changed notify-keyspace-events with ACKD_CONFIGURE_EVENTS=false: %q", got)
	}

	lc := newLeaseClient(t, srv)
	scans := in.metric(t, "ackd_scans_total")
	id := expireOne(t, lc, "jobs", 100*time.Millisecond)
	waitBack(t, lc, "jobs", 1)
	retake(t, lc, "jobs", id)
	redistest.WaitFor(t, waitTimeout, func() bool { return in.metric(t, "ackd_requeues_total") == 1 }, "ackd_requeues_total 1")
	if in.metric(t, "ackd_scans_total") == scans { // else a late start-up scan may have been first
		if n := in.metric(t, "ackd_requeues_total", "trigger=timer"); n != 1 {
			t.Errorf("requeued by the timer: %v, want 1", n)
		}
	}
	if n := in.metric(t, "ackd_events_received_total", "event=expired"); n != 0 {
		t.Errorf("%v expired events with events off", n)
	}
}

// TestEventsObserved: with ACKD_CONFIGURE_EVENTS=false ackd sends no
// CONFIG (here it is renamed away, so any attempt would fail and be
// reported); events are unknown until an expired event arrives, then on.
func TestEventsObserved(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, "--rename-command", "CONFIG", "")
	in := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "50ms", "ACKD_CONFIGURE_EVENTS": "false"})
	in.waitReady(t)
	if _, r := in.readyz(t); r.Events.State != "unknown" || r.Events.Checked || r.Events.Error != "" {
		t.Errorf("/readyz events before any expiry = %+v, want unknown without error", r.Events)
	}
	if got := in.metric(t, "ackd_keyspace_events_enabled"); got != -1 {
		t.Errorf("ackd_keyspace_events_enabled = %v before any expiry, want -1", got)
	}
	lc := newLeaseClient(t, srv)
	id := expireOne(t, lc, "jobs", 50*time.Millisecond)
	waitBack(t, lc, "jobs", 1)
	retake(t, lc, "jobs", id)
	// The state is set before the line is logged: wait for both.
	redistest.WaitFor(t, waitTimeout, func() bool {
		return in.metric(t, "ackd_keyspace_events_enabled") == 1 && len(in.log.find("keyspace events are on: an expired event arrived")) > 0
	}, "events observed on, and logged")
	want := eventsReport{State: "on", Source: "observed", Checked: true, Enabled: true}
	if _, r := in.readyz(t); r.Events != want {
		t.Errorf("/readyz events = %+v, want %+v", r.Events, want)
	}
	if n := len(in.log.find("keyspace events are on: an expired event arrived")); n != 1 {
		t.Errorf("%d lines that events were observed, want 1", n)
	}
	if strings.Contains(in.log.String(), "notify-keyspace-events") {
		t.Errorf("ackd tried CONFIG:\n%s", in.log.String())
	}
}

// TestEventsStateLoggedOnce: the events state is checked at every scan but
// logged only when it changes.
func TestEventsStateLoggedOnce(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, "--notify-keyspace-events", "")
	// The reaper's read-only mode: CONFIG GET at every scan, never SET.
	in := startAckdTuned(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "10ms", "ACKD_CONFIGURE_EVENTS": "false"}, func(c *reaper.Config) {
		shortIntervals(c)
		c.ObserveEvents = false
	})
	scans := func(n float64) {
		t.Helper()
		from := in.metric(t, "ackd_scans_total")
		redistest.WaitFor(t, waitTimeout, func() bool { return in.metric(t, "ackd_scans_total") >= from+n }, "%v more scans", n)
	}
	scans(5)
	if n := len(in.log.find("keyspace events are off")); n != 1 {
		t.Errorf("%d warnings that events are off after several scans, want 1", n)
	}

	redistest.RedisCLI(t, srv.Addr(), "CONFIG", "SET", "notify-keyspace-events", "Ex")
	redistest.WaitFor(t, waitTimeout, func() bool { return in.metric(t, "ackd_keyspace_events_enabled") == 1 }, "events seen on")
	scans(3)
	if n := len(in.log.find("keyspace events are on")); n != 1 {
		t.Errorf("%d lines that events are on, want 1", n)
	}

	redistest.RedisCLI(t, srv.Addr(), "CONFIG", "SET", "notify-keyspace-events", "")
	redistest.WaitFor(t, waitTimeout, func() bool { return in.metric(t, "ackd_keyspace_events_enabled") == 0 }, "events seen off")
	scans(3)
	off := in.log.find("keyspace events are off")
	if len(off) != 2 {
		t.Errorf("%d warnings that events are off, want 2 (one per change)", len(off))
	}
	for _, m := range off {
		if m["level"] != "WARN" {
			t.Errorf("events-off line at %v, want WARN", m["level"])
		}
	}
}

func TestConfiguresEvents(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, "--notify-keyspace-events", "K$")
	in := startAckd(t, srv, nil)
	redistest.WaitFor(t, waitTimeout, func() bool {
		return in.metric(t, "ackd_keyspace_events_enabled") == 1 && len(in.log.find("set notify-keyspace-events")) > 0
	}, "events enabled, and logged")
	flags := redistest.RedisCLI(t, srv.Addr(), "CONFIG", "GET", "notify-keyspace-events")
	for _, f := range "K$Exe" {
		if !strings.ContainsRune(flags, f) {
			t.Errorf("notify-keyspace-events = %q, lacks %c", flags, f)
		}
	}
	if n := len(in.log.find("set notify-keyspace-events")); n != 1 {
		t.Errorf("%d lines that ackd set the events, want 1", n)
	}
	_, r := in.readyz(t)
	if !r.Events.Enabled || r.Events.Error != "" {
		t.Errorf("/readyz events = %+v", r.Events)
	}
}

func TestConfigCommandRenamed(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, "--rename-command", "CONFIG", "")
	in := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "1h"})
	in.waitReady(t)
	code, r := in.readyz(t)
	if code != http.StatusOK || !r.Ready {
		t.Errorf("/readyz %d %+v: want 200 and ready though CONFIG is refused", code, r)
	}
	if !r.Events.Checked || r.Events.Enabled || !strings.Contains(r.Events.Error, "CONFIG") {
		t.Errorf("/readyz events = %+v, want an error about CONFIG", r.Events)
	}
	warns := in.log.find("keyspace events are off or unknown: cannot read or set notify-keyspace-events")
	if len(warns) != 1 {
		t.Errorf("%d warnings about CONFIG, want 1", len(warns))
	}

	lc := newLeaseClient(t, srv)
	id := expireOne(t, lc, "jobs", 100*time.Millisecond)
	waitBack(t, lc, "jobs", 1)
	retake(t, lc, "jobs", id)
}

// TestExpiredBeforeStart: leases that expired while no ackd ran come back
// at start, found by the first scan.
func TestExpiredBeforeStart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lc := newLeaseClient(t, srv)
	var ids []string
	var shadows []string
	for _, q := range []string{"a", "b", "c"} {
		l := expireLease(t, lc, q, 20*time.Millisecond)
		ids = append(ids, l.ID)
		shadows = append(shadows, lease.LeaseKey(q, l.Token))
	}
	rdb := srv.Client(t)
	redistest.WaitFor(t, waitTimeout, func() bool {
		// Redis's clock, which decides when a lease is due.
		now, err := rdb.Time(t.Context()).Result()
		return err == nil && dueAll(t, rdb, []string{"a", "b", "c"}, now)
	}, "leases due")
	// Touch the shadow keys so that Redis deletes them and sends their
	// expired events now, while no ackd listens: only a scan can find the
	// leases.
	if n, err := srv.Client(t).Exists(t.Context(), shadows...).Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS on expired shadow keys: %d, %v", n, err)
	}

	in := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "1h"})
	for i, q := range []string{"a", "b", "c"} {
		waitBack(t, lc, q, 1)
		retake(t, lc, q, ids[i])
	}
	// Each sweep is counted before it is logged: wait for both.
	redistest.WaitFor(t, waitTimeout, func() bool {
		return in.metric(t, "ackd_requeues_total", "trigger=scan") == 3 && len(in.log.find("requeued expired leases")) >= 3
	}, "3 requeued by the start-up scan, and logged")
	if n := len(in.log.find("requeued expired leases")); n != 3 {
		t.Errorf("%d Info lines for the scan's requeues, want 3 (one per queue)", n)
	}
}

// dueAll reports whether every lease of queues has a deadline before now.
func dueAll(t *testing.T, rdb *redis.Client, queues []string, now time.Time) bool {
	t.Helper()
	for _, q := range queues {
		zs, err := rdb.ZRangeWithScores(t.Context(), lease.KeysFor(q).Due, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range zs {
			if !now.After(time.UnixMilli(int64(z.Score))) {
				return false
			}
		}
	}
	return true
}

// TestTwoInstances: two daemons over one Redis requeue every lease exactly
// once between them.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	const n = 2000
	srv := redistest.Start(t)
	a := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "200ms", "ACKD_LOG_LEVEL": "info"})
	b := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "200ms", "ACKD_LOG_LEVEL": "info"})
	a.waitReady(t)
	b.waitReady(t)
	lc := newLeaseClient(t, srv)
	ctx := t.Context()

	// A queue per batch: on a loaded machine the first batch's leases may
	// run out and come back before the second batch is taken, and must not
	// be taken again by it.
	queues := make([]string, n/lease.MaxBatch)
	for i := range queues {
		queues[i] = fmt.Sprint("jobs-", i)
	}
	pushed := map[string]bool{}
	for _, q := range queues {
		payloads := make([][]byte, lease.MaxBatch)
		for i := range payloads {
			payloads[i] = []byte("m")
		}
		ids, err := lc.PushBatch(ctx, q, payloads, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			pushed[id] = true
		}
		// Deadlines spread over the time the batches take. Each lease
		// outlasts the next batch's push and take even on a loaded
		// machine: a batch that ran out first would be back at the head
		// and taken again by the next take, a third delivery.
		ls, err := lc.TakeBatch(ctx, q, lease.MaxBatch, &lease.TakeOpts{LeaseFor: time.Second})
		if err != nil || len(ls) != lease.MaxBatch {
			t.Fatalf("TakeBatch: %d leases, %v", len(ls), err)
		}
	}
	for _, q := range queues {
		waitBack(t, lc, q, lease.MaxBatch)
	}
	total := func() float64 { return a.metric(t, "ackd_requeues_total") + b.metric(t, "ackd_requeues_total") }
	redistest.WaitFor(t, waitTimeout, func() bool { return total() >= n }, "requeues counted")
	if got := total(); got != n {
		t.Errorf("ackd_requeues_total summed over both = %v, want exactly %d", got, n)
	}
	// Reported, not asserted: how late after their deadlines the leases
	// came back.
	lag := func(le string) float64 {
		return a.metric(t, "ackd_redelivery_lag_seconds_bucket", "le="+le) + b.metric(t, "ackd_redelivery_lag_seconds_bucket", "le="+le)
	}
	t.Logf("requeues: a %v, b %v; by trigger: event %v, timer %v, scan %v; lag <= 1ms %v, <= 5ms %v, <= 10ms %v, <= 50ms %v, <= 100ms %v, <= 1s %v",
		a.metric(t, "ackd_requeues_total"), b.metric(t, "ackd_requeues_total"),
		a.metric(t, "ackd_requeues_total", "trigger=event")+b.metric(t, "ackd_requeues_total", "trigger=event"),
		a.metric(t, "ackd_requeues_total", "trigger=timer")+b.metric(t, "ackd_requeues_total", "trigger=timer"),
		a.metric(t, "ackd_requeues_total", "trigger=scan")+b.metric(t, "ackd_requeues_total", "trigger=scan"),
		lag("0.001"), lag("0.005"), lag("0.01"), lag("0.05"), lag("0.1"), lag("1"))

	seen := map[string]bool{}
	for _, q := range queues {
		ls, err := lc.TakeBatch(ctx, q, lease.MaxBatch, &lease.TakeOpts{LeaseFor: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if seen[l.ID] || !pushed[l.ID] || l.Attempt != 2 {
				t.Fatalf("retook %s attempt %d: seen before %v, pushed %v", l.ID, l.Attempt, seen[l.ID], pushed[l.ID])
			}
			seen[l.ID] = true
		}
	}
	if len(seen) != n {
		t.Errorf("retook %d distinct messages, want %d", len(seen), n)
	}
}

func TestQueuesFilter(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, map[string]string{"ACKD_QUEUES": "mine", "ACKD_SCAN_INTERVAL": "50ms"})
	in.waitReady(t)
	lc := newLeaseClient(t, srv)

	expireOne(t, lc, "other", 50*time.Millisecond) // due first
	id := expireOne(t, lc, "mine", 100*time.Millisecond)
	waitBack(t, lc, "mine", 1)
	retake(t, lc, "mine", id)
	st, err := lc.Stats(t.Context(), "other")
	if err != nil {
		t.Fatal(err)
	}
	if st.InFlight != 1 {
		t.Errorf("unwatched queue: %+v, want its lease still in flight", st)
	}
	redistest.WaitFor(t, waitTimeout, func() bool { return in.metric(t, "ackd_events_ignored_total") >= 1 },
		"the wake message of the other queue ignored")
	// The counts come from the scans' sweeps.
	var body string
	redistest.WaitFor(t, waitTimeout, func() bool {
		_, body = in.get(t, "/metrics")
		return strings.Contains(body, `ackd_queue_messages{queue="mine",state="in_flight"} 1`)
	}, "mine's retaken lease counted")
	if strings.Contains(body, `queue="other"`) {
		t.Errorf("ackd_queue_messages should list mine only:\n%s", grepLines(body, "ackd_queue_messages"))
	}
}

func grepLines(s, substr string) string {
	var out []string
	for line := range strings.Lines(s) {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}

func TestHTTP(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "50ms"})
	in.waitReady(t)

	if code, body := in.get(t, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	code, r := in.readyz(t)
	want := readiness{Ready: true, Redis: true, Subscribed: true, Events: eventsReport{State: "on", Source: "config", Checked: true, Enabled: true, Flags: r.Events.Flags}}
	if code != http.StatusOK || r != want || !strings.Contains(r.Events.Flags, "E") {
		t.Errorf("/readyz = %d %+v, want 200 %+v", code, r, want)
	}
	if code, _ := in.get(t, "/nothing"); code != http.StatusNotFound {
		t.Errorf("/nothing = %d", code)
	}

	lc := newLeaseClient(t, srv)
	expireOne(t, lc, "jobs", time.Minute)
	var body string
	redistest.WaitFor(t, waitTimeout, func() bool {
		_, body = in.get(t, "/metrics")
		return strings.Contains(body, `ackd_queue_messages{queue="jobs",state="in_flight"} 1`)
	}, "the lease counted by a scan's sweep")
	for _, name := range []string{
		"ackd_requeues_total", "ackd_dead_lettered_total", "ackd_redelivery_lag_seconds", "ackd_promoted_total",
		"ackd_reclaimed_total", "ackd_sweeps_total", "ackd_sweep_errors_total", "ackd_events_received_total",
		"ackd_events_ignored_total", "ackd_events_dropped_total", "ackd_subscription_reconnects_total", "ackd_subscribed", "ackd_scan_duration_seconds",
		"ackd_scans_total", "ackd_scan_errors_total", "ackd_keyspace_events_enabled", "ackd_redis_up", "ackd_queue_messages",
		"ackd_up", "ackd_build_info", "go_goroutines", "process_open_fds",
	} {
		if !strings.Contains(body, "\n# TYPE "+name+" ") {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	for _, line := range []string{
		`ackd_requeues_total{trigger="event"} 0`, `ackd_requeues_total{trigger="timer"} 0`, `ackd_requeues_total{trigger="scan"} 0`,
		`ackd_dead_lettered_total{reason="expired"} 0`, `ackd_dead_lettered_total{reason="malformed"} 0`,
		`ackd_events_received_total{event="expired"}`, `ackd_events_received_total{event="evicted"}`, `ackd_events_received_total{event="wake"}`,
		`ackd_queue_messages{queue="jobs",state="ready"} 0`, `ackd_queue_messages{queue="jobs",state="in_flight"} 1`,
		`ackd_queue_messages{queue="jobs",state="delayed"} 0`, `ackd_queue_messages{queue="jobs",state="dead"} 0`,
		`ackd_redelivery_lag_seconds_bucket{le="0.0005"}`, `ackd_redelivery_lag_seconds_bucket{le="60"}`,
		"ackd_up 1", "ackd_redis_up 1", "ackd_subscribed 1", "ackd_keyspace_events_enabled 1",
		fmt.Sprintf(`ackd_build_info{goversion=%q,version=%q} 1`, runtime.Version(), version),
	} {
		if !strings.Contains(body, "\n"+line) {
			t.Errorf("/metrics lacks line %s", line)
		}
	}
}

// TestRedisOutage: ackd survives Redis going away, logs the outage and the
// recovery once each, and serves again afterwards.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "1h"})
	in.waitReady(t)
	lc := newLeaseClient(t, srv)
	expireOne(t, lc, "jobs", time.Hour) // a queue with a timer pending

	srv.Kill(t)
	redistest.WaitFor(t, waitTimeout, func() bool {
		code, r := in.readyz(t)
		return code == http.StatusServiceUnavailable && !r.Redis && r.RedisError != "" && len(in.log.find("redis unavailable, retrying")) > 0
	}, "ackd sees Redis gone")
	if in.metric(t, "ackd_redis_up") != 0 {
		t.Errorf("ackd_redis_up not 0 during the outage")
	}
	// Let a few more health checks fail: still one line.
	redistest.WaitFor(t, waitTimeout, func() bool { return len(in.log.find("redis check failed")) >= 3 }, "3 failed checks")

	srv.Restart(t)
	redistest.WaitFor(t, waitTimeout, func() bool {
		code, _ := in.readyz(t)
		return code == http.StatusOK && len(in.log.find("redis recovered")) > 0
	}, "ackd ready again")
	if n := len(in.log.find("redis unavailable, retrying")); n != 1 {
		t.Errorf("%d 'redis unavailable' lines, want 1", n)
	}
	if n := len(in.log.find("redis recovered")); n != 1 {
		t.Errorf("%d 'redis recovered' lines, want 1", n)
	}

	// The restarted server lost its data (no persistence): a new lease
	// still comes back.
	id := expireOne(t, lc, "jobs", 100*time.Millisecond)
	waitBack(t, lc, "jobs", 1)
	retake(t, lc, "jobs", id)
}

// TestShutdownWhileRedisDown: run returns promptly and without error even
// when Redis is gone.
func TestShutdownWhileRedisDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, nil)
	in.waitReady(t)
	srv.Kill(t)
	redistest.WaitFor(t, waitTimeout, func() bool { return len(in.log.find("redis unavailable, retrying")) > 0 }, "outage seen")
	in.stop(t)
	if len(in.log.find("ackd stopped")) != 1 {
		t.Errorf("no 'ackd stopped' line")
	}
}

// TestStartWithoutRedis: ackd starts, reports not ready, and picks up once
// Redis is there.
func TestStartWithoutRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	srv.Kill(t)
	in := startAckd(t, srv, nil)
	redistest.WaitFor(t, waitTimeout, func() bool { return len(in.log.find("redis unavailable, retrying")) > 0 }, "outage seen")
	if code, _ := in.get(t, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d without Redis", code)
	}
	if code, _ := in.get(t, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d without Redis", code)
	}
	srv.Restart(t)
	in.waitReady(t)
	lc := newLeaseClient(t, srv)
	id := expireOne(t, lc, "jobs", 100*time.Millisecond)
	waitBack(t, lc, "jobs", 1)
	retake(t, lc, "jobs", id)
	_, r := in.readyz(t)
	if !r.Events.Checked || !r.Events.Enabled {
		t.Errorf("events not checked after Redis came: %+v", r.Events)
	}
}

func TestPasswordNotLogged(t *testing.T) {
	t.Parallel()
	const secret = "hunter2-secret"
	srv := redistest.Start(t, "--requirepass", secret)
	in := startAckd(t, srv, map[string]string{"ACKD_REDIS_URL": "redis://:" + secret + "@" + srv.Addr() + "/0"})
	in.waitReady(t)
	started := in.log.find("ackd started")
	if got, want := started[0]["redis"], "redis://redacted@"+srv.Addr()+"/0"; got != want {
		t.Errorf("started: redis = %v, want %v", got, want)
	}
	in.stop(t)
	if strings.Contains(in.log.String(), secret) {
		t.Errorf("the password appears in the log")
	}
}
