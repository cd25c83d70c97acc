//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// Scenario 11: poison messages. One makes every consumer nack it, one
// makes every consumer that takes it crash. After their maximum of 3
// deliveries both sit in the dead set, with reasons "failed" and
// "expired"; Replay brings them back, and a fixed consumer acks them.
func TestPoisonDeadLetterReplay(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	d := startAckd(t, e.srv)
	payloads := e.push(300, "m", nil)
	poison := map[string]string{"poison-nack-00000": lease.ReasonFailed, "poison-crash-00000": lease.ReasonExpired}
	for p := range poison {
		payloads = append(payloads, e.push(1, p[:len(p)-6], &lease.PushOpts{MaxDeliveries: 3})...)
	}

	// One worker per process, so that a crash takes no other lease with
	// it, and leases long enough that a nack is never late on a busy
	// machine: the nacked message must die of its nacks, not of expiry.
	f := startConsumers(t, e.srv, e.queue, 3, "-lease", "1s", "-workers", "1",
		"-nack-prefix", "poison-nack", "-crash-prefix", "poison-crash")
	sctx, stop := context.WithCancel(ctx)
	waitSupervisor := f.supervise(sctx, 3) // crashed consumers are replaced
	var st lease.Stats
	redistest.WaitFor(t, drainTimeout, throttle(20*time.Millisecond, func() bool {
		st, _ = e.stats()
		return st.Dead == 2 && st.Ready == 0 && st.InFlight == 0 && st.Delayed == 0
	}), "both poison messages dead and the rest done (last %+v)", &st)
	stop()
	waitSupervisor()
	f.stop(t)

	dead, err := e.lc.DeadLetters(ctx, e.queue, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, dl := range dead {
		want, ok := poison[string(dl.Payload)]
		switch {
		case !ok:
			t.Errorf("unexpected dead letter %s (%s)", dl.Payload, dl.Reason)
		case dl.Reason != want || dl.Attempts != 3:
			t.Errorf("dead letter %s: reason %s after %d attempts, want %s after 3", dl.Payload, dl.Reason, dl.Attempts, want)
		}
	}

	n, err := e.lc.Replay(ctx, e.queue)
	if err != nil || n != 2 {
		t.Fatalf("Replay = %d, %v; want 2", n, err)
	}
	fixed := startConsumers(t, e.srv, e.queue, 1, "-lease", "200ms", "-workers", "2")
	e.waitDrained(drainTimeout)
	fixed.stop(t)
	d.stop(t)

	crashed := f.crashed()
	s := checkInvariants(t, e, expect{
		Payloads: payloads,
		Crashed:  crashed,
		Replayed: map[string]bool{"poison-nack-00000": true, "poison-crash-00000": true},
	})
	if len(crashed) != 3 {
		t.Errorf("%d consumers crashed on the poison message, want 3 (one per delivery)", len(crashed))
	}
	if len(s.Dead) != 0 {
		t.Errorf("dead set after replay: %v, want empty", s.Dead)
	}
}
