//go:build e2e

package e2e

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// drainTimeout bounds how long a scenario waits for its queue to empty.
const drainTimeout = 90 * time.Second

// waitHandled waits until the journal holds at least n handlings.
func (e *env) waitHandled(n int64, timeout time.Duration) {
	e.t.Helper()
	redistest.WaitFor(e.t, timeout, throttle(5*time.Millisecond, func() bool {
		return e.handledCount() >= n
	}), "%d handlings", n)
}

// Scenario 1: consumers die with SIGKILL mid-lease, again and again, while
// the others keep working: a killer SIGKILLs a random consumer 16 times
// and starts a new one each time; another consumer crashes itself after
// every 40th take, between handling a message and acking it, and is
// restarted; a third hangs forever on the leases it took. Every message a
// dead or hung consumer held comes back after its lease and is handled by
// someone else.
func TestConsumersKilledMidLease(t *testing.T) {
	t.Parallel()
	e := setup(t)
	d := startAckd(t, e.srv)
	payloads := e.push(2000, "m", nil)
	hung := startConsumers(t, e.srv, e.queue, 1, "-lease", "300ms", "-workers", "4", "-stall")
	f := startConsumers(t, e.srv, e.queue, 4, "-lease", "300ms", "-workers", "4", "-work", "4ms")
	crasher := startConsumers(t, e.srv, e.queue, 0, "-lease", "300ms", "-workers", "2", "-work", "4ms", "-crash-after", "40")
	sctx, stopSupervisor := context.WithCancel(t.Context())
	waitSupervisor := crasher.supervise(sctx, 1)

	const kills = 16
	for i := range kills {
		// Kill at steady progress points rather than on a clock, so the
		// kills land mid-run however fast the machine is.
		e.waitHandled(int64(100*(i+1)), drainTimeout)
		f.killRandom(t)
		if _, err := f.add(); err != nil {
			t.Fatal(err)
		}
	}
	e.waitDrained(drainTimeout)
	stopSupervisor()
	waitSupervisor()
	for _, fl := range []*fleet{f, crasher, hung} {
		fl.stop(t)
	}
	_, body := d.get("/metrics")
	d.stop(t)

	crashed := f.crashed()
	maps.Copy(crashed, crasher.crashed())
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: crashed})
	t.Logf("%d consumers killed, %d crashed themselves; ackd_requeues_total %v",
		kills, len(crasher.crashed()), metricSamples(body, "ackd_requeues_total"))
	if len(crasher.crashed()) == 0 {
		t.Error("the crashing consumer never crashed")
	}
	if s.Expiries == 0 {
		t.Errorf("no lease ran out in %d kills: the scenario did not exercise recovery", kills)
	}
}

// Scenario 2: the daemon dies. First SIGKILL while leases are running out,
// then a clean stop (SIGTERM, exit 0) for longer than the leases last.
// Each time, the next daemon brings back every lease that ran out while
// none was running.
func TestAckdKilledAndStopped(t *testing.T) {
	t.Parallel()
	e := setup(t)
	payloads := e.push(1500, "m", nil)
	d := startAckd(t, e.srv)
	// Every 3rd take is dropped without an ack: a steady stream of
	// expiring leases.
	f := startConsumers(t, e.srv, e.queue, 2, "-lease", "200ms", "-workers", "4", "-work", "2ms", "-abandon-every", "3")

	// SIGKILL while it is requeuing, and wait until leases are overdue
	// with no daemon to see them.
	e.waitHandled(200, drainTimeout)
	d.Kill(t)
	redistest.WaitFor(t, 30*time.Second, throttle(5*time.Millisecond, func() bool {
		n, _, _ := e.overdue()
		return n >= 10
	}), "leases overdue while ackd is dead")
	d = startAckd(t, e.srv)

	// SIGTERM for longer than a lease lasts: the oldest overdue lease ran
	// out more than twice its length ago.
	e.waitHandled(600, drainTimeout)
	d.stop(t)
	redistest.WaitFor(t, 30*time.Second, throttle(5*time.Millisecond, func() bool {
		n, oldest, _ := e.overdue()
		return n >= 10 && oldest > 400*time.Millisecond
	}), "leases overdue for longer than a lease while ackd is stopped")
	n, oldest, _ := e.overdue()
	t.Logf("with ackd stopped: %d leases overdue, the oldest by %v", n, oldest)
	d = startAckd(t, e.srv)

	e.waitDrained(drainTimeout)
	f.stop(t)
	d.stop(t)
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	if s.Expiries == 0 {
		t.Error("no lease ran out: the scenario did not exercise recovery")
	}
}

// Scenario 7: Redis itself crashes (SIGKILL) and restarts from its AOF
// (appendfsync always) twice mid-run. ackd and the consumers reconnect by
// themselves, and nothing acknowledged by Redis is lost.
func TestRedisRestart(t *testing.T) {
	t.Parallel()
	e := setup(t, "--appendonly", "yes", "--appendfsync", "always")
	payloads := e.push(1500, "m", nil)
	d := startAckd(t, e.srv)
	f := startConsumers(t, e.srv, e.queue, 3, "-lease", "300ms", "-workers", "4", "-work", "3ms", "-abandon-every", "10")

	for _, at := range []int64{300, 800} {
		e.waitHandled(at, drainTimeout)
		e.srv.Kill(t)
		e.srv.Restart(t)
	}
	e.waitDrained(drainTimeout)
	f.stop(t)
	if code, body := d.get("/readyz"); code != 200 {
		t.Errorf("ackd not ready after the restarts: %d %s", code, body)
	}
	d.stop(t)
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	if s.Expiries == 0 {
		t.Error("no lease ran out: the scenario did not exercise recovery")
	}
}
