//go:build e2e

package e2e

import (
	"maps"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Scenario: rolling deploys of consumers that use lease.Consume. Consumer
// processes are stopped with SIGTERM in the middle of their work, again and
// again, and replaced: each finishes what it can within its stop timeout,
// releases the rest (slow messages that cannot finish in time) back to the
// head of the queue without counting the attempt, and exits 0 within the
// bound. Then some are stopped with SIGTERM and SIGKILLed before their stop
// could finish, as an impatient orchestrator does: their leases run out and
// the daemon brings the messages back. No message is lost, and a message is
// handled twice only after one of its leases really ran out (the checker
// requires an expiry or a nack between any two handlings of a message, and
// attempt numbers that count only those).
func TestConsumeStoppedMidWork(t *testing.T) {
	t.Parallel()
	e := setup(t)
	d := startAckd(t, e.srv)
	const stopTimeout = 300 * time.Millisecond
	var payloads []string
	payloads = append(payloads, e.push(1200, "m", nil)...)
	payloads = append(payloads, e.push(40, "slow", nil)...)
	flags := []string{"-consume", "-lease", "2s", "-workers", "4", "-work", "8ms",
		"-slow-prefix", "slow", "-slow", "1500ms", "-stop-timeout", stopTimeout.String()}
	f := startConsumers(t, e.srv, e.queue, 4, flags...)

	interrupted := 0
	const terms = 8
	for i := range terms {
		e.waitHandled(int64(100*(i+1)), drainTimeout)
		r := f.running()
		p := r[i%len(r)]
		start := time.Now()
		if code := p.Term(t, stopTimeout+15*time.Second); code != 0 {
			t.Fatalf("consumer %d exited %d after SIGTERM; stderr:\n%s", p.PID(), code, tail(p.stderr.String(), 4<<10))
		}
		took := time.Since(start)
		n := byeInterrupted(t, p)
		interrupted += n
		t.Logf("SIGTERM %d: consumer %d exited 0 after %v, %d handlers interrupted and released", i, p.PID(), took.Round(time.Millisecond), n)
		if _, err := f.add(); err != nil {
			t.Fatal(err)
		}
	}
	requeuesAfterTerms, _ := d.metric(t, "ackd_requeues_total")

	const kills = 3
	for i := range kills {
		e.waitHandled(int64(100*(terms+i+1)), drainTimeout)
		p := f.running()[0]
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		p.Kill(t)
		if _, err := f.add(); err != nil {
			t.Fatal(err)
		}
	}
	e.waitDrained(drainTimeout)
	f.stop(t)
	requeues, _ := d.metric(t, "ackd_requeues_total")
	d.stop(t)

	crashed := maps.Clone(f.crashed())
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: crashed})
	t.Logf("%d SIGTERMs released %d leases; ackd_requeues_total %v after them, %v after %d SIGKILLs; %d crashed", terms, interrupted, requeuesAfterTerms, requeues, kills, len(crashed))
	if requeuesAfterTerms != 0 {
		t.Errorf("ackd requeued %v leases during the SIGTERM phase: a graceful stop left leases to run out", requeuesAfterTerms)
	}
	if interrupted == 0 {
		t.Error("no SIGTERM interrupted a handler: the scenario did not exercise the release")
	}
	// A consumer whose handlers were all on quick messages may finish its
	// stop between the SIGTERM and the SIGKILL (a stalled test process
	// gives it time): it exits 0, not crashed. All three doing so would
	// leave the SIGKILLs untested.
	if len(crashed) == 0 || len(crashed) > kills {
		t.Errorf("%d consumers crashed, want 1 to the %d SIGKILLed", len(crashed), kills)
	}
	if s.Duplicates > 0 && s.Expiries == 0 {
		t.Errorf("%d messages handled twice with no lease run out", s.Duplicates)
	}
}

// byeInterrupted reads the consumer's "bye interrupted=N" line.
func byeInterrupted(t *testing.T, p *proc) int {
	t.Helper()
	for _, line := range p.stdout.Lines() {
		if v, ok := strings.CutPrefix(line, "bye interrupted="); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("consumer %d: %q", p.PID(), line)
			}
			return n
		}
	}
	t.Fatalf("consumer %d exited without its bye line; stdout:\n%s", p.PID(), p.stdout.String())
	return 0
}
