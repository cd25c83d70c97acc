package lease

import (
	"context"
	"fmt"
	"strconv"
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

// TestAdaptPrefetch: the rule of an adapting prefetch buffer.
func TestAdaptPrefetch(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		pf           int
		dry, starved bool
		remaining    int64
		want         int
	}{
		{8, false, true, 1, 16},     // more waiting, workers waited: double
		{32, false, true, 500, 64},  // ... up to the most
		{64, false, true, 500, 64},  // ... never past it
		{16, false, false, 500, 16}, // workers busy: the buffer hides the round trip
		{16, false, true, 0, 16},    // nothing left waiting
		{16, false, true, -1, 16},   // not reported
		{64, true, true, 0, 32},     // dry: halve
		{8, true, false, 0, 8},      // ... never below the base
	} {
		if got := adaptPrefetch(c.pf, PrefetchDefault, PrefetchGrowMax, c.dry, c.starved, c.remaining); got != c.want {
			t.Errorf("adaptPrefetch(%d, dry %v, starved %v, remaining %d) = %d, want %d", c.pf, c.dry, c.starved, c.remaining, got, c.want)
		}
	}
}

// adaptRun is a Consume with one worker on a queue of n messages, with
// the prefetch buffer adapting (Prefetch left unset), whose handlers wait
// for gate: a send lets one return, closing it all. sizes gets the
// buffer's size after each take, each wait for messages and each reset.
type adaptRun struct {
	gate    chan struct{}
	sizes   chan int
	handled atomic.Int64
	all     chan struct{} // closed when n messages were handled
}

func startAdapt(t *testing.T, b *testBundle, q string, n int, opts ConsumeOpts) *adaptRun {
	t.Helper()
	payloads := make([][]byte, n)
	for i := range payloads {
		payloads[i] = []byte("m" + strconv.Itoa(i))
	}
	if _, err := b.c.PushBatch(t.Context(), q, payloads, nil); err != nil {
		t.Fatal(err)
	}
	a := &adaptRun{gate: make(chan struct{}), sizes: make(chan int, 10000), all: make(chan struct{})}
	opts.Workers, opts.LeaseFor = 1, time.Hour
	opts.prefetchSized = func(k int) { a.sizes <- k }
	startConsume(t, b.c, q, func(context.Context, *Lease) error {
		<-a.gate
		if a.handled.Add(1) == int64(n) {
			close(a.all)
		}
		return nil
	}, &opts)
	return a
}

// nextSize is the buffer's size after the next take or reset.
func (a *adaptRun) nextSize(t *testing.T) int {
	t.Helper()
	select {
	case k := <-a.sizes:
		if k < PrefetchDefault || k > PrefetchGrowMax {
			t.Fatalf("prefetch buffer of %d, want %d to %d", k, PrefetchDefault, PrefetchGrowMax)
		}
		return k
	case <-time.After(30 * time.Second):
		t.Fatal("no take changes the prefetch buffer")
		return 0
	}
}

// started checks the first two takes of a: the first comes back to an
// idle worker (Consume's start) with more waiting, and doubles the buffer;
// the second fills it while the worker is busy, and leaves it so. Nothing
// is taken after it until the gate opens: Consume holds 17 leases, one
// running and 16 buffered.
func (a *adaptRun) started(t *testing.T, b *testBundle, q string) {
	t.Helper()
	for i, want := range []int{2 * PrefetchDefault, 2 * PrefetchDefault} {
		if got := a.nextSize(t); got != want {
			t.Fatalf("prefetch buffer of %d after take %d, want %d", got, i+1, want)
		}
	}
	if n, err := b.rdb.HLen(t.Context(), KeysFor(q).Held).Result(); err != nil || n != 1+2*PrefetchDefault {
		t.Fatalf("Consume holds %d leases (%v), want %d", n, err, 1+2*PrefetchDefault)
	}
	select {
	case k := <-a.sizes:
		t.Fatalf("a take with the worker busy and the buffer full: buffer of %d", k)
	default:
	}
}

// handledAll waits until every message of a was handled.
func (a *adaptRun) handledAll(t *testing.T, n int) {
	t.Helper()
	select {
	case <-a.all:
	case <-time.After(30 * time.Second):
		t.Fatalf("%d of %d handled", a.handled.Load(), n)
	}
}

// TestConsumePrefetchAdapts: with Prefetch left unset, the buffer doubles
// after a take that its idle workers waited for while more messages were
// waiting, not after one that came back to busy workers, never grows past
// PrefetchGrowMax, and comes back to PrefetchDefault once takes find the
// queue dry.
func TestConsumePrefetchAdapts(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "prefetchadapt"
	a := startAdapt(t, b, q, 300, ConsumeOpts{idleWait: 10 * time.Millisecond})
	a.started(t, b, q)

	close(a.gate)
	a.handledAll(t, 300)
	// The queue is empty from now on: takes and waits find it dry, and
	// halve the buffer back to 8, where it stays. (nextSize checks that
	// each size is within bounds.)
	for a.nextSize(t) != PrefetchDefault {
	}
	for range 3 {
		if k := a.nextSize(t); k != PrefetchDefault {
			t.Fatalf("the queue empty: buffer of %d, want %d", k, PrefetchDefault)
		}
	}
	redistest.WaitFor(t, 30*time.Second, func() bool {
		st := checkInvariants(t, b.rdb, q)
		return len(st.InFlight) == 0 && len(st.Ready) == 0
	}, "every message acked")
}

// TestConsumePrefetchAdaptResets: buffered leases released for waiting a
// third of their lease (the handlers are too slow for a buffer) take an
// adapting buffer back to PrefetchDefault at once, and it does not grow
// while prefetch is off, though each take then comes back to an idle
// worker with more messages waiting.
func TestConsumePrefetchAdaptResets(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "prefetchreset"
	var skew atomic.Int64
	check := make(chan time.Time)
	a := startAdapt(t, b, q, 100, ConsumeOpts{
		now:         func() time.Time { return time.Now().Add(time.Duration(skew.Load())) },
		bufferCheck: check,
	})
	a.started(t, b, q)

	skew.Store(int64(time.Hour / 3))
	sendCheck(t, check)
	if k := a.nextSize(t); k != PrefetchDefault {
		t.Fatalf("after buffered leases aged out: buffer of %d, want %d", k, PrefetchDefault)
	}
	// one running, the 16 buffered back on the queue
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 1 || len(st.Ready) != 99 {
		t.Fatalf("after buffered leases aged out: %d in flight, %d ready; want 1 and 99", len(st.InFlight), len(st.Ready))
	}
	// One handler returns at a time: each time the worker is free, one
	// take of one message, no more.
	for i := range 3 {
		a.gate <- struct{}{}
		if k := a.nextSize(t); k != PrefetchDefault {
			t.Fatalf("take %d with prefetch off: buffer of %d, want %d", i+1, k, PrefetchDefault)
		}
	}
	if n, err := b.rdb.HLen(t.Context(), KeysFor(q).Held).Result(); err != nil || n != 1 {
		t.Fatalf("with prefetch off: %d leases held (%v), want 1", n, err)
	}
	close(a.gate)
}

// TestConsumePrefetchPastAnEstimate: a take that asks fewer than Consume
// wants, because the client last saw the queue nearly empty, and leaves
// more waiting, is not a dry take: the buffer grows as after any other.
func TestConsumePrefetchPastAnEstimate(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "prefetchestimate"
	for i := range 3 {
		b.push(t, q, "early"+strconv.Itoa(i), nil)
	}
	ls, err := b.c.TakeBatch(ctx, q, 5, nil)
	if err != nil || len(ls) != 3 {
		t.Fatalf("TakeBatch: %d, %v", len(ls), err)
	}
	if err := b.c.AckBatch(ctx, ls); err != nil {
		t.Fatal(err)
	}
	a := startAdapt(t, b, q, 300, ConsumeOpts{})
	a.started(t, b, q)
	close(a.gate)
}

// TestConsumePrefetchSetIsFixed: a Prefetch that is set is the buffer's
// size: it neither grows nor shrinks.
func TestConsumePrefetchSetIsFixed(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "prefetchfixed"
	a := startAdapt(t, b, q, 300, ConsumeOpts{Prefetch: PrefetchDefault, idleWait: 10 * time.Millisecond})
	held := KeysFor(q).Held
	var n int64
	redistest.WaitFor(t, 30*time.Second, func() bool {
		var err error
		n, err = b.rdb.HLen(t.Context(), held).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1+PrefetchDefault
	}, "Consume to hold %d leases (last: %d)", 1+PrefetchDefault, &n)
	close(a.gate)
	a.handledAll(t, 300)
	select {
	case k := <-a.sizes:
		t.Fatalf("a Prefetch set changed size to %d", k)
	default:
	}
}
