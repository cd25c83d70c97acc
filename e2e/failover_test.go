//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// Workload settings of the failover scenarios.
const (
	// loadPace is the time between two pushes of one producer: about
	// 100 messages a second per queue, which leaves a loaded 2-core
	// machine room for the daemon and the other tests.
	loadPace = 10 * time.Millisecond
	// loadLease is every take's lease; loadAbandon-th first deliveries
	// are left to run out, for the daemon to requeue.
	loadLease   = 400 * time.Millisecond
	loadAbandon = 5
	// loadRetryFor bounds how long a producer re-pushes a message, and a
	// consumer repeats an ack, after an error.
	loadRetryFor = 20 * time.Second
)

// durableAckd makes the daemon wait for one replica after each of its own
// writes, as the durable scenarios' callers do (lease.Config.Replicas 1).
var durableAckd = []string{"ACKD_REDIS_REPLICAS=1", "ACKD_REDIS_REPLICA_TIMEOUT=500ms"}

// load is one producer and one consumer per queue, in the test process,
// recording what every call returned in a ledger. Producers re-push a
// message whose push failed (at least once: the failed push may have
// stored it); consumers abandon every loadAbandon-th first delivery and
// repeat an ack that failed until it succeeds or answers ErrNotHeld or
// ErrStale.
type load struct {
	led       *ledger
	producing chan struct{} // closed: producers stop
	consuming chan struct{} // closed: consumers stop
	producers sync.WaitGroup
	consumers sync.WaitGroup
}

// startLoad starts the workload on queues, each through clientFor(queue),
// and returns once it has acked 100 messages.
func startLoad(t *testing.T, clientFor func(queue string) *lease.Client, queues []string) *load {
	t.Helper()
	w := &load{led: newLedger(), producing: make(chan struct{}), consuming: make(chan struct{})}
	t.Cleanup(w.stop)
	for _, q := range queues {
		lc := clientFor(q)
		w.producers.Go(func() { w.produce(t.Context(), lc, q) })
		w.consumers.Go(func() { w.consume(t.Context(), lc, q) })
	}
	w.waitAcks(t, 100, 20*time.Second, "the workload runs")
	return w
}

func closed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// pause waits d unless ctx ends first: a retry's backoff.
func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func (w *load) produce(ctx context.Context, lc *lease.Client, q string) {
	pace := time.NewTicker(loadPace)
	defer pace.Stop()
	for i := 0; ; i++ {
		select {
		case <-w.producing:
			return
		case <-ctx.Done():
			return
		case <-pace.C:
		}
		p := fmt.Sprintf("%s-%06d", q, i)
		giveUp := time.Now().Add(loadRetryFor)
		for ctx.Err() == nil {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := lc.Push(cctx, q, []byte(p), nil)
			cancel()
			w.led.pushed(p, err)
			if err == nil || time.Now().After(giveUp) {
				break
			}
			pause(ctx, 50*time.Millisecond)
		}
	}
}

func (w *load) consume(ctx context.Context, lc *lease.Client, q string) {
	firsts := 0
	for !closed(w.consuming) && ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		l, err := lc.Take(cctx, q, &lease.TakeOpts{Wait: 200 * time.Millisecond, LeaseFor: loadLease})
		now := time.Now()
		cancel()
		if errors.Is(err, lease.ErrNoMessage) {
			continue
		}
		if err != nil {
			if ctx.Err() == nil {
				w.led.takeFailed(err)
			}
			pause(ctx, 20*time.Millisecond)
			continue
		}
		w.led.took(l, now)
		if l.Attempt == 1 {
			firsts++
			if firsts%loadAbandon == 0 {
				w.led.abandon(l)
				continue
			}
		}
		giveUp := time.Now().Add(loadRetryFor)
		for ctx.Err() == nil {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := l.Ack(cctx)
			cancel()
			w.led.acked(string(l.Payload), err)
			if err == nil || errors.Is(err, lease.ErrNotHeld) || errors.Is(err, lease.ErrStale) || time.Now().After(giveUp) {
				break
			}
			pause(ctx, 20*time.Millisecond)
		}
	}
}

// waitAcks waits until n more acks than now have returned nil.
func (w *load) waitAcks(t *testing.T, n int, timeout time.Duration, what string) {
	t.Helper()
	target := w.led.acks() + n
	redistest.WaitFor(t, timeout, func() bool { return w.led.acks() >= target }, "%s: %d acks", what, n)
}

// finish stops the producers, waits until every queue is empty (every
// message acked or dead: abandoned leases requeued by the daemon and
// consumed), and stops the consumers.
func (w *load) finish(t *testing.T, lc *lease.Client, queues []string) {
	t.Helper()
	close(w.producing)
	w.producers.Wait()
	var last string
	redistest.WaitFor(t, 30*time.Second, throttle(50*time.Millisecond, func() bool {
		for _, q := range queues {
			st, err := lc.Stats(t.Context(), q)
			if err != nil {
				last = q + ": " + err.Error()
				return false
			}
			if st.Ready != 0 || st.InFlight != 0 || st.Delayed != 0 {
				last = fmt.Sprintf("%s: %+v", q, st)
				return false
			}
		}
		return true
	}), "every queue drained (last: %s)", &last)
	close(w.consuming)
	w.consumers.Wait()
}

// stop ends whatever still runs (a test that failed early).
func (w *load) stop() {
	if !closed(w.producing) {
		close(w.producing)
	}
	if !closed(w.consuming) {
		close(w.consuming)
	}
	w.producers.Wait()
	w.consumers.Wait()
}

// TestSentinelFailoverUnderLoad runs producers, consumers (abandoning
// some leases) and the ackd binary with a Sentinel URL on four queues of
// a 1+1+3 Sentinel deployment, while SENTINEL FAILOVER switches masters
// (go-redis and the old master keep going for a while: writes there are
// discarded at resync) or the master is SIGKILLed. With
// lease.Config.Replicas 1, checkLedger must find that every message that
// vanished had an error returned to the caller that wrote it; without, it
// counts the messages lost silently. The error window, the requeue lag
// after the fault and the test's time are logged.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		kill     bool
		replicas int
	}{
		{"SENTINEL FAILOVER", false, 1},
		{"SIGKILL of the master", true, 1},
		// The losses Replicas prevents: counted, not failed on.
		{"SENTINEL FAILOVER without WAIT", false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			began := time.Now()
			s := redistest.StartSentinel(t, nil)
			rdb := s.Client(t)
			lc, err := lease.New(rdb, &lease.Config{Replicas: tc.replicas, ReplicaTimeout: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			queues := []string{"s0", "s1", "s2", "s3"}
			env := []string{"ACKD_REDIS_URL=" + s.URL()}
			if tc.replicas > 0 {
				env = append(env, durableAckd...)
			}
			a := startAckd(t, s.Data[0], env...)
			w := startLoad(t, func(string) *lease.Client { return lc }, queues)

			fault := time.Now()
			old := s.Master(t)
			if tc.kill {
				s.KillMaster(t)
			} else {
				s.Failover(t)
			}
			switched := time.Now()
			// A master with no replica fails every change with
			// ErrNotReplicated: wait until the old one replicates the new
			// master (restarted by hand after a SIGKILL; demoted by the
			// Sentinels after SENTINEL FAILOVER).
			if tc.kill {
				s.Rejoin(t, old, 30*time.Second)
			} else {
				s.WaitReplica(t, old, 30*time.Second)
			}
			replicated := time.Now()
			w.waitAcks(t, 200, 30*time.Second, "the workload recovers")
			w.finish(t, lc, queues)
			notRepl, _ := a.metric(t, "ackd_not_replicated_total")
			a.stop(t)
			sum := checkLedger(t, lc, rdb, queues, w.led, tc.replicas > 0)
			t.Logf("%s, Replicas %d: +switch-master after %v, old master replicating after %v; callers: %s; %s; %d silently lost; ackd: %v sweeps not replicated in time (swept again); test took %v",
				tc.name, tc.replicas, switched.Sub(fault).Round(time.Millisecond), replicated.Sub(fault).Round(time.Millisecond),
				w.led.errorWindow(fault, time.Time{}), w.led.lagsSince(fault, time.Time{}), len(sum.Lost), notRepl, time.Since(began).Round(time.Millisecond))
		})
	}
}
