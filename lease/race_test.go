package lease

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestAckRacesExpiry acks leases of 1 to 5 ms while other goroutines
// requeue due leases as fast as they can, so that acks and expiries meet in
// the same millisecond. Every message must end exactly once: acked, or
// requeued to the ready list; never both, never lost.
func TestAckRacesExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const rounds, n, ackers = 3, 40, 4

	var totalAcked, totalRequeued int
	for round := range rounds {
		for ms := 1; ms <= 5; ms++ {
			// A queue per lease length: a requeued message must not be
			// taken again by the next batch.
			q := fmt.Sprintf("race-%d-%d", round, ms)
			acked, requeued := ackRacesExpiry(t, b, q, n, ackers, time.Duration(ms)*time.Millisecond)
			totalAcked += acked
			totalRequeued += requeued
		}
	}
	t.Logf("%d acked, %d requeued", totalAcked, totalRequeued)
}

func ackRacesExpiry(t *testing.T, b *testBundle, q string, n, ackers int, leaseFor time.Duration) (int, int) {
	t.Helper()
	ctx := t.Context()
	payloads := make([][]byte, n)
	for i := range payloads {
		payloads[i] = []byte{byte(i)}
	}
	if _, err := b.c.PushBatch(ctx, q, payloads, nil); err != nil {
		t.Fatal(err)
	}

	var requeued atomic.Int64
	var leases atomic.Pointer[[]*Lease]
	stop := make(chan struct{})
	var sweepers sync.WaitGroup
	sweepers.Go(func() { // sweeps the whole queue, as a timer would
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := b.c.Sweep(ctx, q, &SweepOpts{Limit: 7})
			if err != nil {
				t.Error(err)
				return
			}
			requeued.Add(int64(r.Requeued))
			if r.DeadLettered+r.Malformed != 0 {
				t.Errorf("Sweep = %+v", r)
			}
		}
	})
	sweepers.Go(func() { // requeues lease by lease, as a second reaper woken by events would
		for {
			select {
			case <-stop:
				return
			default:
			}
			r, err := b.c.Sweep(ctx, q, &SweepOpts{Limit: 1, Reclaim: true})
			if err != nil {
				t.Error(err)
				return
			}
			requeued.Add(int64(r.Requeued))
			if r.DeadLettered+r.Malformed != 0 {
				t.Errorf("Sweep = %+v", r)
			}
		}
	})

	ls, err := b.c.TakeBatch(ctx, q, n, &TakeOpts{LeaseFor: leaseFor})
	if err != nil || len(ls) != n {
		close(stop)
		sweepers.Wait()
		t.Fatal(len(ls), err)
	}
	leases.Store(&ls)
	var mu sync.Mutex
	acked := map[string]bool{}
	notHeld := map[string]bool{}
	var wg sync.WaitGroup
	for a := range ackers {
		wg.Go(func() {
			for i := a; i < len(ls); i += ackers {
				l := ls[i]
				err := l.Ack(ctx)
				mu.Lock()
				switch {
				case err == nil:
					acked[l.ID] = true
				case errors.Is(err, ErrNotHeld):
					notHeld[l.ID] = true
				default:
					t.Errorf("Ack %s: %v", l.ID, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(stop)
	sweepers.Wait()

	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || len(st.Dead) != 0 || len(st.Raw) != 0 {
		t.Fatalf("%s: in flight %d dead %d", q, len(st.InFlight), len(st.Dead))
	}
	for _, id := range st.Ready {
		if acked[id] {
			t.Errorf("%s: %s both acked and requeued", q, id)
		}
		if !notHeld[id] {
			t.Errorf("%s: %s requeued but its ack did not fail", q, id)
		}
	}
	if len(acked)+len(st.Ready) != n || len(notHeld) != len(st.Ready) || int(requeued.Load()) != len(st.Ready) {
		t.Fatalf("%s: %d messages, %d acked, %d ready, %d acks not held, %d requeued",
			q, n, len(acked), len(st.Ready), len(notHeld), requeued.Load())
	}
	return len(acked), len(st.Ready)
}

// TestRequeueRace: 8 goroutines sweep one due lease at once; exactly one
// of them requeues it.
func TestRequeueRace(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "requeuerace"
	const racers = 8

	for round := range 10 {
		id := b.push(t, q, "x", nil)
		l := b.take(t, q, &TakeOpts{LeaseFor: time.Millisecond})
		if l.ID != id {
			t.Fatalf("round %d: took %s", round, l.ID)
		}
		b.waitDue(t, l.Deadline().UnixMilli())
		start := make(chan struct{})
		results := make([]int, racers)
		var wg sync.WaitGroup
		for i := range racers {
			wg.Go(func() {
				<-start
				r, err := b.c.Sweep(ctx, q, nil)
				if err != nil {
					t.Error(err)
				}
				results[i] = r.Requeued*10 + r.DeadLettered + r.Malformed
			})
		}
		close(start)
		wg.Wait()
		counts := map[int]int{}
		for _, r := range results {
			counts[r]++
		}
		if counts[10] != 1 || counts[0] != racers-1 {
			t.Fatalf("round %d: sweeps that requeued it %d, that found nothing %d, want 1 and %d", round, counts[10], counts[0], racers-1)
		}
		st := checkInvariants(t, b.rdb, q)
		if !slices.Equal(st.Ready, []string{id}) {
			t.Fatalf("round %d: ready = %v", round, st.Ready)
		}
		if err := b.take(t, q, nil).Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSweepRace: two sweepers race over 1,000 due leases; each is
// requeued once.
func TestSweepRace(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "sweeprace"
	const n = 1000

	payloads := make([][]byte, n)
	for i := range payloads {
		payloads[i] = []byte("x")
	}
	pushed, err := b.c.PushBatch(ctx, q, payloads, nil)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := b.c.TakeBatch(ctx, q, n, &TakeOpts{LeaseFor: time.Millisecond})
	if err != nil || len(ls) != n {
		t.Fatal(len(ls), err)
	}
	last := int64(0)
	for _, l := range ls {
		last = max(last, l.Deadline().UnixMilli())
	}
	b.waitDue(t, last)

	var total atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			<-start
			for {
				r, err := b.c.Sweep(ctx, q, &SweepOpts{Limit: 100})
				if err != nil {
					t.Error(err)
					return
				}
				total.Add(int64(r.Requeued))
				if r.Requeued == 0 && !r.More {
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if total.Load() != n {
		t.Fatalf("requeued %d, want %d", total.Load(), n)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Ready) != n || len(st.InFlight) != 0 {
		t.Fatalf("ready %d in flight %d", len(st.Ready), len(st.InFlight))
	}
	got := slices.Clone(st.Ready)
	slices.Sort(got)
	slices.Sort(pushed)
	if !slices.Equal(got, pushed) {
		t.Fatalf("ready ids differ from pushed ids")
	}
}
