package lease

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// sendCheck has the loop look at its prefetch buffer
// (ConsumeOpts.bufferCheck) and returns once it is done: the loop takes
// the second send only after it has acted on the first.
func sendCheck(t *testing.T, check chan<- time.Time) {
	t.Helper()
	for range 2 {
		select {
		case check <- time.Now():
		case <-time.After(30 * time.Second):
			t.Fatal("the loop does not look at its buffer")
		}
	}
}

// TestConsumePrefetchAgesOut: a prefetched lease that has waited a third
// of its lease in the buffer, its worker still busy, is released (back at
// the head of the queue, the attempt not counted) long before the lease
// runs out, and Consume does not take it again at once. The clock of the
// buffer is the test's: the lease is an hour long, and nothing else would
// free the message within the test.
func TestConsumePrefetchAgesOut(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "prefetchage"
	const leaseFor = time.Hour

	id1 := b.push(t, q, "m1", nil)
	id2 := b.push(t, q, "m2", nil)
	var skew atomic.Int64
	check := make(chan time.Time)
	var errs errorLog
	bh := newBusy(2, true)
	cs := startConsume(t, b.c, q, bh.handle, &ConsumeOpts{
		Workers: 1, Prefetch: 1, LeaseFor: leaseFor, ErrorFunc: errs.add,
		now:         func() time.Time { return time.Now().Add(time.Duration(skew.Load())) },
		bufferCheck: check,
	})
	if l := bh.waitStarted(t, 1)[0]; l.ID != id1 {
		t.Fatalf("first handler got %s, want %s", l.ID, id1)
	}
	// One take leased both: m2 waits for the busy worker.
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 2 || len(st.Ready) != 0 {
		t.Fatalf("with m1 running: in flight %v, ready %v; want m2 prefetched", st.InFlight, st.Ready)
	}
	// A look before its time changes nothing.
	skew.Store(int64(leaseFor/3 - time.Minute))
	sendCheck(t, check)
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 2 {
		t.Fatalf("released before a third of the lease: in flight %v, ready %v", st.InFlight, st.Ready)
	}
	skew.Store(int64(leaseFor / 3))
	sendCheck(t, check)
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 1 || fmt.Sprint(st.Ready) != fmt.Sprint([]string{id2}) {
		t.Fatalf("a third of the lease gone: in flight %v, ready %v; want %s released", st.InFlight, st.Ready, id2)
	}
	if e := st.env(t, id2); e.Attempts != 0 || e.Expiries != 0 {
		t.Errorf("%s released: attempts %d, expiries %d; want 0", id2, e.Attempts, e.Expiries)
	}
	// Consume does not take it again (no prefetch for a lease length).
	sendCheck(t, check)
	l := b.take(t, q, nil)
	if l.ID != id2 || l.Attempt != 1 {
		t.Fatalf("took %s attempt %d, want %s attempt 1", l.ID, l.Attempt, id2)
	}
	if err := l.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	close(bh.unblock)
	cs.stop(t)
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 0 || len(st.Ready) != 0 {
		t.Fatalf("after stop: in flight %v, ready %v", st.InFlight, st.Ready)
	}
	if bh.returned.Load() != 1 {
		t.Errorf("%d handlers ran, want 1 (m2 went to the other taker)", bh.returned.Load())
	}
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
}

// TestConsumePrefetchPaused: a take that finds the queue paused releases
// what the buffer holds, untouched, instead of starting it.
func TestConsumePrefetchPaused(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "prefetchpause"

	var ids []string
	for i := range 5 {
		ids = append(ids, b.push(t, q, fmt.Sprint("m", i+1), nil))
	}
	first := make(chan struct{})
	started := make(chan string, 5)
	var errs errorLog
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		started <- l.ID
		if string(l.Payload) == "m1" {
			<-first
			return nil
		}
		<-ctx.Done()
		return ctx.Err()
	}, &ConsumeOpts{Workers: 1, Prefetch: 4, LeaseFor: time.Hour, StopTimeout: -1, ErrorFunc: errs.add})
	if got := <-started; got != ids[0] {
		t.Fatalf("first handler got %s, want %s", got, ids[0])
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 5 {
		t.Fatalf("in flight %d, want 5: 1 running, 4 prefetched", len(st.InFlight))
	}
	if _, err := b.c.Pause(ctx, q); err != nil {
		t.Fatal(err)
	}
	// m1 ends: m2 starts from the buffer; the take carrying m1's ack
	// finds the queue paused and gives back m3..m5.
	close(first)
	select {
	case got := <-started:
		if got != ids[1] {
			t.Fatalf("second handler got %s, want %s", got, ids[1])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("m2 did not start")
	}
	waitReady(t, b, q, 3)
	st := checkInvariants(t, b.rdb, q)
	if fmt.Sprint(st.Ready) != fmt.Sprint(ids[2:]) || len(st.InFlight) != 1 {
		t.Fatalf("paused: ready %v, in flight %v; want %v ready, m2 in flight", st.Ready, st.InFlight, ids[2:])
	}
	for _, id := range ids[2:] {
		if e := st.env(t, id); e.Attempts != 0 {
			t.Errorf("%s: attempts %d, want 0", id, e.Attempts)
		}
	}
	select {
	case got := <-started:
		t.Fatalf("%s started on a paused queue", got)
	default:
	}
	// The stop gives m2 back too, at the head.
	cs.stop(t)
	st = checkInvariants(t, b.rdb, q)
	if fmt.Sprint(st.Ready) != fmt.Sprint(ids[1:]) || len(st.InFlight) != 0 {
		t.Fatalf("after stop: ready %v, in flight %v; want %v", st.Ready, st.InFlight, ids[1:])
	}
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
}

// waitReady waits until queue's ready list holds n messages.
func waitReady(t *testing.T, b *testBundle, queue string, n int64) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, func() bool {
		got, err := b.rdb.LLen(t.Context(), KeysFor(queue).Ready).Result()
		return err == nil && got == n
	}, fmt.Sprintf("ready list of %d", n))
}
