//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/e2e/internal/journal"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// pubsubClients counts the connections subscribed to anything.
func (e *env) pubsubClients() int {
	out, err := e.rdb.ClientList(e.t.Context()).Result()
	if err != nil {
		return -1
	}
	n := 0
	for _, line := range strings.Split(out, "\n") {
		for _, f := range strings.Fields(line) {
			if (strings.HasPrefix(f, "sub=") && f != "sub=0") || (strings.HasPrefix(f, "psub=") && f != "psub=0") {
				n++
				break
			}
		}
	}
	return n
}

// Scenario 3: the daemon's pub/sub connection is killed (CLIENT KILL TYPE
// pubsub) 20 times during a steady stream of expiring leases. Events and
// wake messages sent while it was away are lost; its catch-up scan after
// each resubscription must find what they would have announced. The
// periodic scan is an hour away, so it cannot be what saves the day.
func TestPubSubKilled(t *testing.T) {
	t.Parallel()
	e := setup(t)
	payloads := e.push(1500, "m", nil)
	d := startAckd(t, e.srv, "ACKD_SCAN_INTERVAL=1h")
	f := startConsumers(t, e.srv, e.queue, 2, "-lease", "150ms", "-workers", "4", "-work", "2ms", "-abandon-every", "4")

	const kills = 20
	killed := int64(0)
	for i := range kills {
		e.waitHandled(int64(40*(i+1)), drainTimeout)
		// Kill only a complete subscription: a kill between ackd's
		// PSUBSCRIBE and SUBSCRIBE cuts that resubscription short, and it
		// is never counted. A pub/sub client seen first, then
		// ackd_subscribed 1, means the new connection is confirmed.
		redistest.WaitFor(t, 15*time.Second, throttle(2*time.Millisecond, func() bool {
			if e.pubsubClients() == 0 {
				return false
			}
			sub, _ := d.metric(t, "ackd_subscribed")
			return sub == 1
		}), "ackd subscribed again before kill %d", i+1)
		n, err := e.rdb.ClientKillByFilter(t.Context(), "TYPE", "pubsub").Result()
		if err != nil {
			t.Fatalf("CLIENT KILL TYPE pubsub: %v", err)
		}
		killed += n
	}
	e.waitDrained(drainTimeout)
	f.stop(t)
	// The resubscription after the last kill may still be on its way.
	redistest.WaitFor(t, 15*time.Second, throttle(10*time.Millisecond, func() bool {
		n, _ := d.metric(t, "ackd_subscription_reconnects_total")
		return n >= kills
	}), "ackd resubscribed after each of %d kills", kills)
	reconnects, _ := d.metric(t, "ackd_subscription_reconnects_total")
	_, body := d.get("/metrics")
	d.stop(t)

	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	t.Logf("%d pub/sub connections killed; ackd_subscription_reconnects_total %v; ackd_requeues_total %v",
		killed, reconnects, metricSamples(body, "ackd_requeues_total"))
	if killed < kills {
		t.Errorf("killed %d pub/sub connections, want at least %d", killed, kills)
	}
	if s.Expiries == 0 {
		t.Error("no lease ran out: the scenario did not exercise recovery")
	}
}

// readiness is the part of ackd's /readyz body the suite reads.
type readiness struct {
	Ready      bool `json:"ready"`
	Subscribed bool `json:"subscribed"`
	Events     struct {
		Checked bool   `json:"checked"`
		Enabled bool   `json:"enabled"`
		Flags   string `json:"flags"`
		Error   string `json:"error"`
	} `json:"events"`
}

func (a *ackd) readiness(t testing.TB) (readiness, int) {
	t.Helper()
	code, body := a.get("/readyz")
	var r readiness
	if code != 0 {
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			t.Fatalf("/readyz body %q: %v", body, err)
		}
	}
	return r, code
}

// deliverWithExpiries runs a short workload with expiring leases and
// checks the invariants: proof that ackd delivers whatever it says about
// events.
func deliverWithExpiries(t *testing.T, e *env, d *ackd, n int) summary {
	t.Helper()
	payloads := e.push(n, "m", nil)
	f := startConsumers(t, e.srv, e.queue, 2, "-lease", "150ms", "-workers", "4", "-work", "2ms", "-abandon-every", "4")
	e.waitDrained(drainTimeout)
	f.stop(t)
	d.stop(t)
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	if s.Expiries == 0 {
		t.Error("no lease ran out: the scenario did not exercise recovery")
	}
	return s
}

// Scenario 4: keyspace events are unavailable. The daemon says so, on
// /readyz and in its log, and still brings every lease back (on its timers
// and scans).
func TestKeyspaceEventsOff(t *testing.T) {
	t.Parallel()

	// Off, with ackd told not to use CONFIG: it cannot know, says
	// "unknown", and brings every lease back on its timers and scans.
	t.Run("off-unobserved", func(t *testing.T) {
		t.Parallel()
		e := setup(t)
		if err := e.rdb.ConfigSet(t.Context(), "notify-keyspace-events", "").Err(); err != nil {
			t.Fatal(err)
		}
		d := startAckd(t, e.srv, "ACKD_CONFIGURE_EVENTS=false", "ACKD_SCAN_INTERVAL=200ms")
		if r, _ := d.readiness(t); r.Events.Checked || r.Events.Enabled {
			t.Errorf("/readyz events = %+v, want unknown", r.Events)
		}
		if code, body := d.get("/readyz"); code != 200 {
			t.Errorf("/readyz %d with events unknown, want 200 (ackd works on without them): %s", code, body)
		}
		if v, ok := d.metric(t, "ackd_keyspace_events_enabled"); !ok || v != -1 {
			t.Errorf("ackd_keyspace_events_enabled = %v (present %v), want -1 (unknown)", v, ok)
		}
		deliverWithExpiries(t, e, d, 600)
		if log := d.stderr.String(); !strings.Contains(log, "keyspace events unknown until an expired event arrives") {
			t.Errorf("ackd did not log that keyspace events are unknown; log:\n%s", tail(log, 4<<10))
		}
	})

	// Switched off at runtime, and ackd allowed to configure them: it
	// switches them back on.
	t.Run("switched-off-and-restored", func(t *testing.T) {
		t.Parallel()
		e := setup(t)
		d := startAckd(t, e.srv, "ACKD_CONFIGURE_EVENTS=true", "ACKD_SCAN_INTERVAL=200ms")
		if err := e.rdb.ConfigSet(t.Context(), "notify-keyspace-events", "").Err(); err != nil {
			t.Fatal(err)
		}
		redistest.WaitFor(t, 15*time.Second, throttle(20*time.Millisecond, func() bool {
			flags := e.rdb.ConfigGet(t.Context(), "notify-keyspace-events").Val()["notify-keyspace-events"]
			return strings.Contains(flags, "E") && strings.Contains(flags, "x")
		}), "ackd sets notify-keyspace-events again")
		deliverWithExpiries(t, e, d, 300)
	})

	// A Redis where CONFIG is renamed away, as on many managed services:
	// ackd cannot read the setting and says so.
	t.Run("config-renamed", func(t *testing.T) {
		t.Parallel()
		e := setup(t, "--rename-command", "CONFIG", "")
		if err := e.rdb.ConfigGet(t.Context(), "notify-keyspace-events").Err(); err == nil {
			t.Fatal("CONFIG still works; the server flags did not take")
		}
		d := startAckd(t, e.srv, "ACKD_SCAN_INTERVAL=200ms")
		var last readiness
		redistest.WaitFor(t, 15*time.Second, throttle(20*time.Millisecond, func() bool {
			last, _ = d.readiness(t)
			return last.Events.Checked && last.Events.Error != ""
		}), "/readyz reports that events cannot be checked (last %+v)", &last)
		if last.Events.Enabled {
			t.Errorf("/readyz says events are enabled though CONFIG is unavailable: %+v", last)
		}
		if code, body := d.get("/readyz"); code != 200 {
			t.Errorf("/readyz %d without CONFIG, want 200: %s", code, body)
		}
		deliverWithExpiries(t, e, d, 600)
		if log := d.stderr.String(); !strings.Contains(log, "cannot read or set notify-keyspace-events") {
			t.Errorf("ackd did not log that it cannot read the events setting; log:\n%s", tail(log, 4<<10))
		}
	})
}

// Scenario 10: under maxmemory with a volatile policy Redis evicts TTL
// keys, the shadow keys first among them. An evicted shadow key is only a
// trigger: no lease is requeued before its deadline (the holder of a long
// lease whose shadow key is gone still acks it), and no message is lost
// while short leases keep expiring around the eviction.
func TestShadowKeysEvicted(t *testing.T) {
	t.Parallel()
	e := setup(t, "--maxmemory", "12mb", "--maxmemory-policy", "volatile-lru")
	ctx := t.Context()
	d := startAckd(t, e.srv)
	held := e.push(20, "held", nil)
	payloads := e.push(600, "m", nil)

	// The test holds the first 20 messages with plenty of time left.
	var leases []*lease.Lease
	for len(leases) < len(held) {
		ls, err := e.lc.TakeBatch(ctx, e.queue, len(held)-len(leases), &lease.TakeOpts{LeaseFor: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, ls...)
	}
	for _, l := range leases {
		if !strings.HasPrefix(string(l.Payload), "held-") {
			t.Fatalf("took %q, want a held-* message first", l.Payload)
		}
		if err := journal.Record(ctx, e.rdb, e.queue, journal.NewHandling(ctx, e.rdb, l)); err != nil {
			t.Fatal(err)
		}
	}

	// volatile-lru picks the least recently used TTL keys; its clock ticks
	// in seconds, so let the held shadow keys age first.
	shadow := func(l *lease.Lease) string { return lease.LeaseKey(e.queue, l.Token) }
	redistest.WaitFor(t, 10*time.Second, throttle(50*time.Millisecond, func() bool {
		idle, err := e.rdb.ObjectIdleTime(ctx, shadow(leases[0])).Result()
		return err == nil && idle >= 2*time.Second
	}), "held shadow keys idle for 2s")

	// Consumers work through the rest with short leases, some of which
	// run out, while memory fills up.
	f := startConsumers(t, e.srv, e.queue, 2, "-lease", "200ms", "-workers", "4", "-work", "3ms", "-abandon-every", "5")

	// Fill with TTL'd keys until every held shadow key has been evicted.
	filler := strings.Repeat("x", 32<<10)
	written := 0
	evictedHeld := func() int {
		n := 0
		for _, l := range leases {
			if e.rdb.Exists(ctx, shadow(l)).Val() == 0 {
				n++
			}
		}
		return n
	}
	redistest.WaitFor(t, 60*time.Second, func() bool {
		pipe := e.rdb.Pipeline()
		for range 16 {
			pipe.Set(ctx, fmt.Sprintf("%sfiller:%d", journal.KeyPrefix, written), filler, time.Hour)
			written++
		}
		_, _ = pipe.Exec(ctx) // OOM errors are possible and harmless here
		return evictedHeld() == len(leases)
	}, "every held shadow key evicted")
	evicted := e.rdb.InfoMap(ctx, "stats").Item("Stats", "evicted_keys")
	t.Logf("wrote %d filler keys; evicted_keys %s", written, evicted)

	// Every held lease is intact, and its holder acks it.
	for _, l := range leases {
		rec, err := e.rdb.HGet(ctx, lease.KeysFor(e.queue).Held, l.Token).Result()
		if env, ok := journal.ParseElement(rec); err != nil || !ok || env.ID != l.ID {
			t.Errorf("lease of %s (deadline in %v) lost its record after its shadow key was evicted: %q, %v",
				l.Payload, time.Until(l.Deadline()).Round(time.Millisecond), rec, err)
			continue
		}
		if res, err := journal.Ack(ctx, e.rdb, l); res != journal.ResultOK {
			t.Errorf("ack of %s after its shadow key was evicted: %v", l.Payload, err)
		}
	}

	e.waitDrained(drainTimeout)
	f.stop(t)
	events, _ := d.metric(t, "ackd_events_received_total")
	_, body := d.get("/metrics")
	d.stop(t)
	s := checkInvariants(t, e, expect{Payloads: append(held, payloads...), Crashed: f.crashed()})
	t.Logf("ackd_events_received_total %v (%v)", events, metricSamples(body, "ackd_events_received_total"))
	if s.Expiries == 0 {
		t.Error("no lease ran out: the scenario did not exercise recovery")
	}
}
