//go:build e2e

package e2e

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/e2e/internal/journal"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// Scenario 5: three daemons serve one Redis at once. Each expiry is
// requeued exactly once: the sum of ackd_requeues_total over the three
// equals the number of leases that ran out, and every redelivery's attempt
// number matches its counters.
func TestThreeReplicas(t *testing.T) {
	t.Parallel()
	e := setup(t)
	payloads := e.push(1500, "m", nil)
	ds := []*ackd{startAckd(t, e.srv), startAckd(t, e.srv), startAckd(t, e.srv)}
	f := startConsumers(t, e.srv, e.queue, 2, "-lease", "150ms", "-workers", "4", "-work", "2ms", "-abandon-every", "3")
	e.waitDrained(drainTimeout)
	f.stop(t)

	var requeues float64
	var per []string
	for i, d := range ds {
		_, body := d.get("/metrics")
		v, ok := sumMetric(body, "ackd_requeues_total")
		if !ok {
			t.Fatalf("replica %d has no ackd_requeues_total", i)
		}
		requeues += v
		per = append(per, fmt.Sprintf("%v %v", v, metricSamples(body, "ackd_requeues_total")))
		if dead, _ := sumMetric(body, "ackd_dead_lettered_total"); dead != 0 {
			t.Errorf("replica %d dead-lettered %v messages; none may die here", i, dead)
		}
	}
	for _, d := range ds {
		d.stop(t)
	}
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	t.Logf("ackd_requeues_total per replica: %s", strings.Join(per, "; "))
	if int(requeues) != s.Expiries {
		t.Errorf("the replicas requeued %v leases in all, but %d leases ran out: some expiry was requeued twice or not counted",
			requeues, s.Expiries)
	}
	if s.Expiries == 0 {
		t.Error("no lease ran out: the scenario did not exercise recovery")
	}
}

// Scenario 6: an ack storm at the deadline. The test takes 3,000 leases
// and acks each one within a millisecond of its deadline, racing the
// daemon's requeue. Every ack has exactly one outcome: acked messages are
// gone, refused ones were requeued (and nothing else), and all are
// handled later.
//
// It does not run in parallel with the other scenarios: acking thousands
// of leases each within a millisecond needs a machine that is not busy
// with another scenario, or every ack is late and the race never happens.
func TestAckStormAtDeadline(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	d := startAckd(t, e.srv)
	const n = 3000
	payloads := e.push(n, "m", nil)

	// A client of its own with enough connections for the storm.
	opt, _ := redis.ParseURL(e.srv.URL())
	opt.PoolSize = 64
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}

	// Take in batches of 10 whose deadlines are 5 ms apart, starting 10 s
	// from now: 2,000 acks a second at the deadline, 1.5 s of storm. Every
	// batch must be taken well before the first deadline: a lease that ran
	// out and was requeued during the takes would be taken again. The
	// takes, well under a second on an idle machine, have 7 s before the
	// 3 s of slack: enough for the stalls of a loaded one.
	var leases []*lease.Lease
	takeStart := time.Now()
	first := takeStart.Add(10 * time.Second)
	for k := 0; len(leases) < n; k++ {
		leaseFor := time.Until(first.Add(time.Duration(k) * 5 * time.Millisecond)).Round(time.Millisecond)
		if time.Until(first) < 3*time.Second {
			t.Fatalf("taking is too slow: batch %d starts %v before the first deadline", k, time.Until(first))
		}
		ls, err := lc.TakeBatch(ctx, e.queue, 10, &lease.TakeOpts{LeaseFor: leaseFor})
		if err != nil {
			t.Fatal(err)
		}
		if len(ls) == 0 {
			t.Fatalf("queue empty after %d takes", len(leases))
		}
		pipe := rdb.Pipeline()
		for _, l := range ls {
			if l.Attempt != 1 {
				t.Fatalf("%s: attempt %d on its first take (took %v after the first deadline)", l.Payload, l.Attempt, time.Since(first))
			}
			// First delivery of a fresh message: no expiries, no nacks.
			h := journal.Handling{Payload: string(l.Payload), ID: l.ID, Token: l.Token, Attempt: 1, PID: os.Getpid()}
			pipe.HSet(ctx, journal.HandledKey(e.queue), h.Token, mustJSON(t, h))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		leases = append(leases, ls...)
	}

	t.Logf("took %d leases in %v", len(leases), time.Since(takeStart))
	// Ack each at its deadline -1, 0 or +1 ms, in deadline order.
	type job struct {
		l  *lease.Lease
		at time.Time
	}
	jobs := make([]job, len(leases))
	for i, l := range leases {
		jobs[i] = job{l, l.Deadline().Add(time.Duration(rand.N(3)-1) * time.Millisecond)}
	}
	slices.SortFunc(jobs, func(a, b job) int { return a.at.Compare(b.at) })
	results := make([]string, len(jobs))
	errs := make([]error, len(jobs))
	done := make([]time.Time, len(jobs))
	var lateness []time.Duration
	var mu sync.Mutex
	ch := make(chan int)
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for i := range ch {
				j := jobs[i]
				time.Sleep(time.Until(j.at)) // the workload: ack at this instant
				mu.Lock()
				lateness = append(lateness, time.Since(j.at))
				mu.Unlock()
				// One round trip in the storm; the journal is written after.
				err := j.l.Ack(context.WithoutCancel(ctx))
				done[i] = time.Now()
				if res := journal.ResultOf(err); res == journal.ResultError {
					t.Errorf("ack %s: %v", j.l.Payload, err)
				}
				errs[i] = err
			}
		})
	}
	for i := range jobs {
		ch <- i
	}
	close(ch)
	wg.Wait()
	for i, j := range jobs {
		results[i] = journal.ResultOf(errs[i])
		s := journal.Settle{Token: j.l.Token, Op: "ack", Result: results[i]}
		if errs[i] != nil {
			s.Err = errs[i].Error()
		}
		if err := journal.RecordSettle(ctx, e.rdb, e.queue, s); err != nil {
			t.Fatal(err)
		}
	}

	// Right after the storm, with no consumer running: every refused ack's
	// message is back on the ready list (once, expired once), every acked
	// one is nowhere, nothing is in flight.
	redistest.WaitFor(t, 10*time.Second, throttle(10*time.Millisecond, func() bool {
		return e.rdb.ZCard(ctx, lease.KeysFor(e.queue).Due).Val() == 0
	}), "no lease in flight after the storm")
	ready, err := e.rdb.LRange(ctx, lease.KeysFor(e.queue).Ready, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	onReady := map[string]int{}
	for _, el := range ready {
		env, ok := journal.ParseElement(el)
		if !ok || env.Expiries != 1 || env.Attempts != 1 {
			t.Errorf("ready list holds %+v (envelope %v), want a message that expired once", env, ok)
		}
		onReady[env.Payload]++
	}
	tally := map[string]int{}
	for i, j := range jobs {
		p := string(j.l.Payload)
		tally[results[i]]++
		switch results[i] {
		case journal.ResultOK:
			if onReady[p] != 0 {
				t.Errorf("%s: acked, yet back on the ready list", p)
			}
		case journal.ResultNotHeld:
			if onReady[p] != 1 {
				t.Errorf("%s: ack refused (not held), yet %d copies on the ready list, want 1", p, onReady[p])
			}
			// Redis and this process read the same clock: an ack answered
			// before the deadline ran before it, so the lease it found
			// gone was requeued early.
			if done[i].Before(j.l.Deadline()) {
				t.Errorf("%s: ack refused %v before the deadline: the lease was requeued early", p, j.l.Deadline().Sub(done[i]))
			}
		default:
			t.Errorf("%s: ack result %s", p, results[i])
		}
	}
	if tally[journal.ResultOK] == 0 || tally[journal.ResultNotHeld] == 0 {
		t.Logf("note: every ack had the same outcome; the machine was too busy for the acks to land on their deadlines, so this run did not race them with the requeue")
	}
	slices.SortFunc(lateness, cmp.Compare)
	t.Logf("storm: %v; ack issued late by p50 %v, p99 %v", tally,
		lateness[len(lateness)/2].Round(10*time.Microsecond), lateness[len(lateness)*99/100].Round(10*time.Microsecond))

	// The requeued ones are handled later.
	f := startConsumers(t, e.srv, e.queue, 2, "-lease", "5s", "-workers", "4")
	e.waitDrained(drainTimeout)
	f.stop(t)
	d.stop(t)
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	if s.Duplicates != tally[journal.ResultNotHeld] {
		t.Errorf("%d messages handled twice, want the %d whose storm ack was refused", s.Duplicates, tally[journal.ResultNotHeld])
	}
}

// Scenario 8: a stale consumer. It holds leases past their deadline; the
// messages are requeued and taken by a new holder; then the stale consumer
// acks. Its acks find nothing under their tokens (ErrNotHeld), the new
// holder's leases are untouched, and the new holder acks them.
func TestStaleAckRefused(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	d := startAckd(t, e.srv)
	const n = 20
	payloads := e.push(n, "m", nil)
	stale := startConsumers(t, e.srv, e.queue, 1, "-stale-ack", "-workers", fmt.Sprint(n), "-lease", "200ms")
	redistest.WaitFor(t, 30*time.Second, throttle(5*time.Millisecond, func() bool {
		return countPrefix(stale.output(), "took ") == n
	}), "the stale consumer took every message")

	// The new holder: the test itself, with long leases.
	var leases []*lease.Lease
	redistest.WaitFor(t, 30*time.Second, func() bool {
		l, err := e.lc.Take(ctx, e.queue, &lease.TakeOpts{Wait: 100 * time.Millisecond, LeaseFor: time.Minute})
		if err == nil {
			if l.Attempt != 2 {
				t.Errorf("%s redelivered with attempt %d, want 2", l.Payload, l.Attempt)
			}
			if err := journal.Record(ctx, e.rdb, e.queue, journal.NewHandling(ctx, e.rdb, l)); err != nil {
				t.Fatal(err)
			}
			leases = append(leases, l)
		}
		return len(leases) == n
	}, "every message redelivered to the new holder")

	redistest.WaitFor(t, 30*time.Second, throttle(5*time.Millisecond, func() bool {
		return countPrefix(stale.output(), "stale-ack ") == n
	}), "the stale consumer acked every message")
	for _, line := range stale.output() {
		if strings.HasPrefix(line, "stale-ack ") && !strings.Contains(line, " "+journal.ResultNotHeld+" ") {
			t.Errorf("stale consumer: %q, want its ack refused as not held", line)
		}
	}

	k := lease.KeysFor(e.queue)
	for _, l := range leases {
		rec, err := e.rdb.HGet(ctx, k.Held, l.Token).Result()
		if env, ok := journal.ParseElement(rec); err != nil || !ok || env.ID != l.ID {
			t.Errorf("%s: new holder's lease record after the stale ack: %q, %v", l.Payload, rec, err)
		}
		score, err := e.rdb.ZScore(ctx, k.Due, l.Token).Result()
		if err != nil || int64(score) != l.Deadline().UnixMilli() {
			t.Errorf("%s: deadline after the stale ack: %v, %v; want %v", l.Payload, int64(score), err, l.Deadline().UnixMilli())
		}
		if ttl := e.rdb.PTTL(ctx, lease.LeaseKey(e.queue, l.Token)).Val(); ttl < 30*time.Second {
			t.Errorf("%s: new holder's shadow key TTL %v after the stale ack", l.Payload, ttl)
		}
		if res, err := journal.Ack(ctx, e.rdb, l); res != journal.ResultOK {
			t.Errorf("%s: new holder's ack: %v", l.Payload, err)
		}
	}
	stale.stop(t)
	d.stop(t)
	s := checkInvariants(t, e, expect{Payloads: payloads})
	if s.AckRefused[journal.ResultNotHeld] != n {
		t.Errorf("%d acks refused as not held, want %d", s.AckRefused[journal.ResultNotHeld], n)
	}
}

func countPrefix(lines []string, prefix string) int {
	n := 0
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}
