package lease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
)

// commandStats reads INFO commandstats: calls per command name.
func commandStats(t *testing.T, rdb *redis.Client) map[string]int64 {
	t.Helper()
	info, err := rdb.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		n, _ := strconv.ParseInt(calls, 10, 64)
		out[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return out
}

// callsInScripts is how many Redis commands ran between two snapshots,
// not counting the script calls themselves (FCALL, EVALSHA, EVAL) and the snapshots' INFO.
func callsInScripts(before, after map[string]int64) (n int64, by map[string]int64) {
	by = map[string]int64{}
	for name, c := range after {
		switch name {
		case "fcall", "function|load", "evalsha", "eval", "info", "script|load":
			continue
		}
		if d := c - before[name]; d > 0 {
			by[name] = d
			n += d
		}
	}
	return n, by
}

// TestRelease: released leases go back to the head of the ready list, in
// the order given, with their attempts as before the take; a second
// release, an earlier delivery's token, a token named with another
// message's id and a duplicate in one batch change nothing.
func TestRelease(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "release"

	for _, p := range []string{"a", "b", "c", "d"} {
		b.push(t, q, p, nil)
	}
	// A raw payload from a plain producer gets its id at the take and
	// keeps it through the release.
	if err := b.rdb.RPush(ctx, KeysFor(q).Ready, "raw").Err(); err != nil {
		t.Fatal(err)
	}
	ls, err := b.c.TakeBatch(ctx, q, 3, nil)
	if err != nil || len(ls) != 3 {
		t.Fatalf("TakeBatch: %d, %v", len(ls), err)
	}
	before := commandStats(t, b.rdb)
	if err := b.c.ReleaseBatch(ctx, ls); err != nil {
		t.Fatalf("ReleaseBatch: %v", err)
	}
	n, by := callsInScripts(before, commandStats(t, b.rdb))
	t.Logf("release of 3 leases: %d Redis calls in the script (%v)", n, by)
	if n > 4+3 {
		t.Errorf("release of 3 leases made %d calls, want at most 7 (HMGET, LPUSH each, HDEL, ZREM, DEL)", n)
	}

	st := checkInvariants(t, b.rdb, q)
	want := append(ids(ls), st.Ready[3:]...)
	if len(st.Ready) != 4 || fmt.Sprint(st.Ready) != fmt.Sprint(want) || len(st.Raw) != 1 {
		t.Fatalf("ready = %v raw %q, want %v first", st.Ready, st.Raw, ids(ls))
	}
	for _, id := range ids(ls) {
		if e := st.env(t, id); e.Attempts != 0 || e.Expiries != 0 || e.Failures != 0 {
			t.Errorf("%s after release: %+v, want no attempt counted", id, e)
		}
	}
	for _, l := range ls {
		if err := l.Release(ctx); !errors.Is(err, ErrNotHeld) {
			t.Errorf("second Release: %v, want ErrNotHeld", err)
		}
	}

	// The next take delivers them again, first, as attempt 1.
	again, err := b.c.TakeBatch(ctx, q, 5, nil)
	if err != nil || len(again) != 5 {
		t.Fatalf("TakeBatch: %d, %v", len(again), err)
	}
	for i, l := range again[:3] {
		if l.ID != ls[i].ID || l.Attempt != 1 {
			t.Errorf("take %d after release: %s attempt %d, want %s attempt 1", i, l.ID, l.Attempt, ls[i].ID)
		}
	}
	// An earlier delivery's token, a token named with another message's
	// id, and a lease given twice in one batch.
	if err := ls[0].Release(ctx); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Release with an earlier delivery's token: %v, want ErrNotHeld", err)
	}
	mixed, err := b.c.LeaseOf(q, again[2].ID, again[1].Token)
	if err != nil {
		t.Fatal(err)
	}
	if err := mixed.Release(ctx); !errors.Is(err, ErrStale) {
		t.Errorf("Release of a token with another message's id: %v, want ErrStale", err)
	}
	if err := b.c.ReleaseBatch(ctx, []*Lease{again[0], again[0]}); !errors.Is(err, ErrNotHeld) {
		t.Errorf("ReleaseBatch of one lease twice: %v, want ErrNotHeld for the second", err)
	}
	st = checkInvariants(t, b.rdb, q)
	if len(st.Ready) != 1 || st.Ready[0] != again[0].ID || len(st.InFlight) != 4 {
		t.Errorf("after the duplicate release: ready %v, in flight %v", st.Ready, st.InFlight)
	}
	if e := st.env(t, again[0].ID); e.Attempts != 0 {
		t.Errorf("released once, attempts %d, want 0", e.Attempts)
	}
}

// TestFail: Fail dead-letters at once with reason "failed" and the error's
// text; a stale lease changes nothing.
func TestFail(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "fail"

	id := b.push(t, q, "x", nil)
	l := b.take(t, q, nil)
	cause := fmt.Errorf("decode: %w", errors.New("unexpected EOF"))
	before := commandStats(t, b.rdb)
	if err := l.Fail(ctx, cause); err != nil {
		t.Fatalf("Fail: %v", err)
	}
	n, by := callsInScripts(before, commandStats(t, b.rdb))
	t.Logf("fail: %d Redis calls in the script (%v)", n, by)
	if err := l.Fail(ctx, cause); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second Fail: %v, want ErrNotHeld", err)
	}
	st := checkInvariants(t, b.rdb, q)
	if d := st.Dead[id]; d.Reason != ReasonFailed || d.Attempts != 1 || d.Failures != 1 {
		t.Errorf("dead letter %+v", d)
	}
	dls, err := b.c.DeadLetters(ctx, q, 0, 10)
	if err != nil || len(dls) != 1 || dls[0].Error != "decode: unexpected EOF" {
		t.Fatalf("DeadLetters = %+v, %v", dls, err)
	}
	// Replayed, then dead again without an error: the old text is not
	// shown for the new dead letter.
	if _, err := b.c.Replay(ctx, q, id); err != nil {
		t.Fatal(err)
	}
	l = b.take(t, q, nil)
	if err := l.DeadLetter(ctx); err != nil {
		t.Fatal(err)
	}
	dls, err = b.c.DeadLetters(ctx, q, 0, 10)
	if err != nil || len(dls) != 1 || dls[0].Reason != ReasonKilled || dls[0].Error != "" {
		t.Fatalf("DeadLetters after replay = %+v, %v", dls, err)
	}
}

// busyHandlers is a handler that signals each start and then blocks:
// until its ctx is done, or (ignoreCtx) until unblock is closed.
type busyHandlers struct {
	started   chan *Lease
	unblock   chan struct{}
	ignoreCtx bool
	returned  atomic.Int32
	ctxErrs   atomic.Int32
}

func newBusy(n int, ignoreCtx bool) *busyHandlers {
	return &busyHandlers{started: make(chan *Lease, n), unblock: make(chan struct{}), ignoreCtx: ignoreCtx}
}

func (bh *busyHandlers) handle(ctx context.Context, l *Lease) error {
	defer bh.returned.Add(1)
	bh.started <- l
	if bh.ignoreCtx {
		<-bh.unblock
		return nil
	}
	<-ctx.Done()
	bh.ctxErrs.Add(1)
	return ctx.Err()
}

func (bh *busyHandlers) waitStarted(t *testing.T, n int) []*Lease {
	t.Helper()
	var ls []*Lease
	for range n {
		select {
		case l := <-bh.started:
			ls = append(ls, l)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d of %d handlers started", len(ls), n)
		}
	}
	return ls
}

// TestConsumeStopReleasesBusyHandlers: a stop during 64 busy handlers
// waits StopTimeout, cancels them, puts all 64 messages back at the head
// of the queue at once with their attempts unchanged, and returns.
func TestConsumeStopReleasesBusyHandlers(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "stop64"
	const n = 64
	const stopTimeout = 200 * time.Millisecond

	var errs errorLog
	bh := newBusy(n, false)
	cs := startConsume(t, b.c, q, bh.handle, &ConsumeOpts{Workers: n, StopTimeout: stopTimeout, ErrorFunc: errs.add})
	for i := range n {
		b.push(t, q, fmt.Sprint("m", i), nil)
	}
	ls := bh.waitStarted(t, n)
	// One more, which no worker is free to take: it stays behind them.
	last := b.push(t, q, "last", nil)

	took := cs.stopWithin(t, stopTimeout+10*time.Second)
	if took < stopTimeout {
		t.Errorf("Consume returned %v after cancel, before StopTimeout %v", took, stopTimeout)
	}
	if bh.ctxErrs.Load() == 0 {
		// At least the handlers' contexts were cancelled; they may still
		// be returning.
		redistest.WaitFor(t, 5*time.Second, func() bool { return bh.ctxErrs.Load() == n }, "handler contexts cancelled")
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || len(st.Dead) != 0 || len(st.Delayed) != 0 || len(st.Ready) != n+1 {
		t.Fatalf("after stop: ready %d, in flight %d, delayed %d, dead %d", len(st.Ready), len(st.InFlight), len(st.Delayed), len(st.Dead))
	}
	if st.Ready[n] != last {
		t.Errorf("released messages are not at the head: the untaken one is at %v", st.Ready)
	}
	for _, l := range ls {
		if e := st.env(t, l.ID); e.Attempts != 0 || e.Expiries != 0 || e.Failures != 0 {
			t.Errorf("%s after stop: attempts %d expiries %d failures %d, want all 0", l.ID, e.Attempts, e.Expiries, e.Failures)
		}
	}
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
}

// TestConsumeStopBoundsHandlerIgnoringContext: a handler that ignores its
// ctx cannot hold up the stop beyond StopTimeout; its lease is released
// and its heartbeat stops, and what it returns later changes nothing.
func TestConsumeStopBoundsHandlerIgnoringContext(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "stopignore"
	const stopTimeout = 100 * time.Millisecond
	const leaseFor = 150 * time.Millisecond

	var errs errorLog
	bh := newBusy(1, true)
	cs := startConsume(t, b.c, q, bh.handle, &ConsumeOpts{Workers: 2, LeaseFor: leaseFor, StopTimeout: stopTimeout, ErrorFunc: errs.add})
	id := b.push(t, q, "x", nil)
	bh.waitStarted(t, 1)
	cs.stopWithin(t, stopTimeout+10*time.Second)
	if bh.returned.Load() != 0 {
		t.Fatal("the handler returned, the test proves nothing")
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Ready) != 1 || st.Ready[0] != id || len(st.InFlight) != 0 {
		t.Fatalf("after stop: ready %v, in flight %v", st.Ready, st.InFlight)
	}
	// Someone else takes it; the old heartbeat must not touch the new
	// lease, and the old handler's return must not ack it.
	l := b.take(t, q, &TakeOpts{LeaseFor: leaseFor})
	before := commandStats(t, b.rdb)
	close(bh.unblock)
	redistest.WaitFor(t, 5*time.Second, func() bool { return bh.returned.Load() == 1 }, "handler returned")
	// Wait past two of the old heartbeat's periods by Redis's clock.
	b.waitDue(t, b.redisNow(t)+int64(leaseFor/time.Millisecond))
	if _, by := callsInScripts(before, commandStats(t, b.rdb)); by["zadd"] != 0 || by["hdel"] != 0 {
		t.Errorf("after the stop, the old handler's lease was still extended or settled: %v", by)
	}
	if err := l.Ack(ctx); err != nil {
		t.Errorf("the new holder's ack: %v", err)
	}
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
}

// TestConsumeStopLetsHandlersFinish: handlers that finish within
// StopTimeout settle normally; only the others are released.
func TestConsumeStopLetsHandlersFinish(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "stopfinish"

	fast := make(chan struct{})
	started := make(chan string, 4)
	cs := startConsume(t, b.c, q, func(ctx context.Context, l *Lease) error {
		started <- string(l.Payload)
		if strings.HasPrefix(string(l.Payload), "fast") {
			<-fast
			return nil
		}
		<-ctx.Done()
		return ctx.Err()
	}, &ConsumeOpts{Workers: 4, StopTimeout: 2 * time.Second})
	ids := map[string]string{}
	for _, p := range []string{"fast1", "fast2", "slow1", "slow2"} {
		ids[p] = b.push(t, q, p, nil)
	}
	for range 4 {
		<-started
	}
	cs.cancel()
	close(fast) // they finish after the cancel, within StopTimeout
	cs.stopWithin(t, 10*time.Second)
	st := checkInvariants(t, b.rdb, q)
	if len(st.Ready) != 2 || len(st.InFlight) != 0 {
		t.Fatalf("ready %v, in flight %v", st.Ready, st.InFlight)
	}
	for _, p := range []string{"slow1", "slow2"} {
		if e := st.env(t, ids[p]); e.Attempts != 0 {
			t.Errorf("%s: attempts %d", p, e.Attempts)
		}
	}
}

// TestConsumeStopReleasesPrefetched: on cancel, leases waiting in the
// prefetch buffer go back to the head of the queue at once, in order and
// uncounted, without waiting for StopTimeout; the busy handler finishes
// and is acked; nothing is left held. Consume never holds more than
// Workers + Prefetch leases.
func TestConsumeStopReleasesPrefetched(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "stopprefetch"

	var ids []string
	for i := range 6 {
		ids = append(ids, b.push(t, q, fmt.Sprint("m", i), nil))
	}
	var errs errorLog
	bh := newBusy(1, true)
	cs := startConsume(t, b.c, q, bh.handle, &ConsumeOpts{Workers: 1, Prefetch: 4, LeaseFor: time.Hour, StopTimeout: time.Minute, ErrorFunc: errs.add})
	if l := bh.waitStarted(t, 1)[0]; l.ID != ids[0] {
		t.Fatalf("first handler got %s, want %s", l.ID, ids[0])
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 5 || fmt.Sprint(st.Ready) != fmt.Sprint(ids[5:]) {
		t.Fatalf("in flight %d, ready %v: want 1 running and 4 prefetched, the last one left", len(st.InFlight), st.Ready)
	}
	cs.cancel()
	// Long before StopTimeout, the 4 prefetched are back.
	waitReady(t, b, q, 5)
	st := checkInvariants(t, b.rdb, q)
	if fmt.Sprint(st.Ready) != fmt.Sprint(ids[1:]) || len(st.InFlight) != 1 {
		t.Fatalf("after cancel: ready %v, in flight %v; want %v ready", st.Ready, st.InFlight, ids[1:])
	}
	for _, id := range ids[1:5] {
		if e := st.env(t, id); e.Attempts != 0 || e.Expiries != 0 {
			t.Errorf("%s after stop: attempts %d expiries %d, want 0", id, e.Attempts, e.Expiries)
		}
	}
	close(bh.unblock)
	cs.stopWithin(t, 10*time.Second)
	st = checkInvariants(t, b.rdb, q)
	if fmt.Sprint(st.Ready) != fmt.Sprint(ids[1:]) || len(st.InFlight) != 0 || len(st.Dead) != 0 {
		t.Fatalf("after stop: ready %v, in flight %v, dead %d; want m0 acked, %v ready", st.Ready, st.InFlight, len(st.Dead), ids[1:])
	}
	if e := errs.list(); len(e) != 0 {
		t.Errorf("errors: %v", e)
	}
}
