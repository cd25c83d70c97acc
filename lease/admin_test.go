package lease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// makeDead fills queue's dead set with n dead letters of reason "expired"
// (leases that ran out on their last delivery), through the real paths.
func (b *testBundle) makeDead(t *testing.T, queue string, n int, payload func(i int) string) {
	t.Helper()
	ctx := t.Context()
	for i := 0; i < n; i += MaxBatch {
		m := min(MaxBatch, n-i)
		ps := make([][]byte, m)
		for j := range ps {
			ps[j] = []byte(payload(i + j))
		}
		if _, err := b.c.PushBatch(ctx, queue, ps, &PushOpts{MaxDeliveries: 1}); err != nil {
			t.Fatal(err)
		}
		ls, err := b.c.TakeBatch(ctx, queue, m, &TakeOpts{LeaseFor: time.Millisecond})
		if err != nil || len(ls) != m {
			t.Fatalf("TakeBatch = %d, %v", len(ls), err)
		}
		b.waitDue(t, ls[len(ls)-1].Deadline().UnixMilli())
		if r, err := b.c.Sweep(ctx, queue, &SweepOpts{Limit: MaxBatch}); err != nil || r.DeadLettered != m {
			t.Fatalf("Sweep = %+v, %v; want %d dead-lettered", r, err, m)
		}
	}
}

// counts keeps only the counts of s.
func counts(s Stats) Stats {
	return Stats{Ready: s.Ready, InFlight: s.InFlight, Delayed: s.Delayed, Dead: s.Dead}
}

// evalCalls reads how many scripts the server has run.
func (b *testBundle) evalCalls(t *testing.T) int {
	t.Helper()
	info, err := b.rdb.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, line := range strings.Split(info, "\n") {
		if strings.HasPrefix(line, "cmdstat_evalsha:") || strings.HasPrefix(line, "cmdstat_eval:") || strings.HasPrefix(line, "cmdstat_fcall:") {
			f := strings.TrimPrefix(strings.Split(line, ",")[0], strings.Split(line, ":")[0]+":calls=")
			n, _ := strconv.Atoi(f)
			total += n
		}
	}
	return total
}

// TestPauseBlockedConsumerWaits proves pause with a consumer blocked on an
// empty queue: while paused, pushes (ackd's and plain RPUSH) are accepted
// and it receives nothing through several looks at the queue; after Resume
// it gets the first message.
func TestPauseBlockedConsumerWaits(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "paused"
	k := KeysFor(q)
	got := make(chan *Lease, 1)
	wait := background(func() {
		l, err := b.c.Take(ctx, q, &TakeOpts{Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("blocked Take: %v", err)
		}
		got <- l
	})
	waitBlocked(t, b.rdb, 1)
	if was, err := b.c.Pause(ctx, q); err != nil || !was {
		t.Fatalf("Pause = %v, %v", was, err)
	}
	if was, err := b.c.Pause(ctx, q); err != nil || was {
		t.Fatalf("second Pause = %v, %v; want false (already paused)", was, err)
	}
	first := b.push(t, q, "first", nil)
	if err := b.rdb.RPush(ctx, k.Ready, "plain").Err(); err != nil {
		t.Fatal(err)
	}
	b.push(t, q, "third", nil)
	// The consumer was blocked when the pause began: BLMOVE may have moved
	// "first" to the claim list. From then on it only looks: let it look
	// several times.
	calls := b.evalCalls(t)
	redistestWaitFor(t, func() bool { return b.evalCalls(t) >= calls+4 }, "4 more takes of the paused queue")
	select {
	case l := <-got:
		t.Fatalf("paused queue delivered %+v", l)
	default:
	}
	b.noMessage(t, q)
	s, err := b.c.Stats(ctx, q)
	if err != nil || s.Ready != 3 || s.InFlight != 0 || !s.Paused || s.PausedAt.IsZero() {
		t.Fatalf("Stats while paused = %+v, %v; want 3 ready, paused", s, err)
	}
	if was, err := b.c.Resume(ctx, q); err != nil || !was {
		t.Fatalf("Resume = %v, %v", was, err)
	}
	wait()
	l := <-got
	if l == nil || l.ID != first {
		t.Fatalf("after Resume got %+v, want %s", l, first)
	}
	if s, _ := b.c.Stats(ctx, q); s.Paused || s.Ready != 2 || s.InFlight != 1 {
		t.Fatalf("Stats after resume = %+v", s)
	}
	checkInvariants(t, b.rdb, q)
}

func redistestWaitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	redistest.WaitFor(t, 10*time.Second, cond, what)
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithCancel(t.Context())
}

// TestPauseRequeuesAndConsumeIdles: expired leases of a paused queue go
// back to the ready list, and Consume runs no handler until Resume.
func TestPauseRequeuesAndConsumeIdles(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "pausedconsume"
	b.push(t, q, "held", nil)
	l := b.take(t, q, &TakeOpts{LeaseFor: 5 * time.Millisecond})
	if _, err := b.c.Pause(ctx, q); err != nil {
		t.Fatal(err)
	}
	b.expire(t, l, requeued)
	handled := make(chan string, 4)
	cctx, cancel := contextWithCancel(t)
	wait := background(func() {
		err := b.c.Consume(cctx, q, func(_ context.Context, l *Lease) error {
			handled <- string(l.Payload)
			return nil
		}, &ConsumeOpts{Workers: 2})
		if err != nil {
			t.Errorf("Consume: %v", err)
		}
	})
	defer wait()
	defer cancel()
	calls := b.evalCalls(t)
	redistestWaitFor(t, func() bool { return b.evalCalls(t) >= calls+4 }, "Consume looking at the paused queue")
	select {
	case p := <-handled:
		t.Fatalf("paused queue handled %q", p)
	default:
	}
	if _, err := b.c.Resume(ctx, q); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-handled:
		if p != "held" {
			t.Fatalf("handled %q", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing handled after Resume")
	}
}

func TestStatsTimes(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "times"
	if s, err := b.c.Stats(ctx, q); err != nil || s != (Stats{Now: s.Now}) || s.Now.IsZero() {
		t.Fatalf("Stats of an empty queue = %+v, %v", s, err)
	}
	before := b.redisNow(t)
	b.push(t, q, "a", nil)
	b.push(t, q, "b", &PushOpts{Delay: time.Hour})
	b.push(t, q, "c", nil)
	l := b.take(t, q, &TakeOpts{LeaseFor: time.Minute})
	s, err := b.c.Stats(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if s.Ready != 1 || s.InFlight != 1 || s.Delayed != 1 || s.Dead != 0 || s.Paused {
		t.Fatalf("Stats = %+v", s)
	}
	if !s.EarliestDeadline.Equal(l.Deadline()) {
		t.Errorf("EarliestDeadline %v, want %v", s.EarliestDeadline, l.Deadline())
	}
	if d := s.NextDue.Sub(fromMS(before)); d < time.Hour-time.Second || d > time.Hour+5*time.Second {
		t.Errorf("NextDue %v is %v after the push", s.NextDue, d)
	}
	// The local and Redis clocks are the same machine's: the age is small
	// and not negative.
	if s.OldestReady.IsZero() || s.OldestReadyAge < 0 || s.OldestReadyAge > 10*time.Second {
		t.Errorf("OldestReady %v age %v", s.OldestReady, s.OldestReadyAge)
	}
	// A raw payload at the head has no known time.
	if err := b.rdb.LPush(ctx, KeysFor(q).Ready, "raw").Err(); err != nil {
		t.Fatal(err)
	}
	if s, _ := b.c.Stats(ctx, q); !s.OldestReady.IsZero() || s.OldestReadyAge != 0 || s.Ready != 2 {
		t.Errorf("with a raw head: %+v", s)
	}
}

func TestOldestReadyAgeFromID(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "aged"
	// An envelope whose id says it was pushed 90 s ago (by Redis's clock).
	at := fromMS(b.redisNow(t)).Add(-90 * time.Second)
	e := envelope{ID: newID(b.c.rng, at), Payload: []byte("old")}
	if err := b.rdb.RPush(ctx, KeysFor(q).Ready, e.appendTo(nil)).Err(); err != nil {
		t.Fatal(err)
	}
	s, err := b.c.Stats(ctx, q)
	if err != nil || !s.OldestReady.Equal(at) || s.OldestReadyAge < 90*time.Second || s.OldestReadyAge > 100*time.Second {
		t.Fatalf("Stats = %+v, %v; want pushed at %v", s, err, at)
	}
}

func TestPeekStates(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "peek"
	k := KeysFor(q)
	big := strings.Repeat("x", 5000)
	id1 := b.push(t, q, "hello", nil)
	b.push(t, q, big, nil)
	if err := b.rdb.RPush(ctx, k.Ready, "\x00\x01binary").Err(); err != nil {
		t.Fatal(err)
	}
	idd := b.push(t, q, "later", &PushOpts{Delay: time.Hour, MaxDeliveries: 3})

	p, err := b.c.Peek(ctx, q, StateReady, &PeekOpts{Limit: 2, Preview: 4})
	if err != nil || len(p.Messages) != 2 || p.Next != 2 {
		t.Fatalf("Peek ready = %+v, %v", p, err)
	}
	m := p.Messages[0]
	if m.ID != id1 || m.Size != 5 || string(m.Preview) != "hell" || m.Raw || m.Time.IsZero() || m.MaxDeliveries != MaxDeliveriesDefault {
		t.Errorf("first ready = %+v", m)
	}
	if m := p.Messages[1]; m.Size != 5000 || len(m.Preview) != 4 {
		t.Errorf("big ready = %+v", m)
	}
	p, err = b.c.Peek(ctx, q, StateReady, &PeekOpts{Offset: 2, Limit: 2})
	if err != nil || len(p.Messages) != 1 || p.Next != -1 || !p.Messages[0].Raw || p.Messages[0].Size != 8 || p.Messages[0].Preview != nil {
		t.Fatalf("Peek ready page 2 = %+v, %v", p, err)
	}
	p, err = b.c.Peek(ctx, q, StateDelayed, nil)
	if err != nil || len(p.Messages) != 1 || p.Messages[0].ID != idd || p.Messages[0].MaxDeliveries != 3 || p.Messages[0].Time.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("Peek delayed = %+v, %v", p, err)
	}
	l := b.take(t, q, nil)
	p, err = b.c.Peek(ctx, q, StateInFlight, &PeekOpts{Preview: 100})
	if err != nil || len(p.Messages) != 1 || p.Messages[0].ID != l.ID || p.Messages[0].Attempts != 1 || !p.Messages[0].Time.Equal(l.Deadline()) || string(p.Messages[0].Preview) != "hello" {
		t.Fatalf("Peek inflight = %+v, %v", p, err)
	}
	if err := l.Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []*PeekOpts{{Limit: -1}, {Limit: MaxBatch + 1}, {Offset: -1}, {Preview: MaxPreview + 1}, {Reason: "expired"}} {
		if _, err := b.c.Peek(ctx, q, StateReady, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("Peek(%+v) = %v, want ErrInvalidArgument", bad, err)
		}
	}
	if _, err := b.c.Peek(ctx, q, "parked", nil); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("Peek(parked) = %v", err)
	}
}

// TestDeadByReason replays one reason and purges another, in small
// batches, counting exactly, and lists reasons in between.
func TestDeadByReason(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: 1})
	ctx := t.Context()
	const q = "reasons"
	b.makeDead(t, q, 25, func(i int) string { return fmt.Sprintf("expired-%d", i) })
	// 10 failed, interleaved in time after the expired ones.
	for i := range 10 {
		b.push(t, q, fmt.Sprintf("failed-%d", i), nil)
		if err := b.take(t, q, nil).Nack(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	b.makeDead(t, q, 5, func(i int) string { return fmt.Sprintf("expired-late-%d", i) })
	reasons, err := b.c.DeadReasons(ctx, q)
	if err != nil || len(reasons) != 2 || reasons[ReasonExpired] != 30 || reasons[ReasonFailed] != 10 {
		t.Fatalf("DeadReasons = %v, %v", reasons, err)
	}
	p, err := b.c.Peek(ctx, q, StateDead, &PeekOpts{Reason: ReasonFailed, Limit: 3, Preview: 20})
	if err != nil || len(p.Messages) != 3 || p.Messages[0].Reason != ReasonFailed || string(p.Messages[0].Preview) != "failed-0" || p.Messages[0].Attempts != 1 {
		t.Fatalf("Peek dead failed = %+v, %v", p, err)
	}
	var progress []int
	n, err := b.c.ReplayAll(ctx, q, &DeadOpts{Reason: ReasonFailed, BatchSize: 3, ProgressFunc: func(d int) { progress = append(progress, d) }})
	if err != nil || n != 10 {
		t.Fatalf("ReplayAll(failed) = %d, %v", n, err)
	}
	if len(progress) < 4 || progress[len(progress)-1] != 10 {
		t.Errorf("progress %v", progress)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Ready) != 10 || len(st.Dead) != 30 {
		t.Fatalf("after replay: %d ready, %d dead", len(st.Ready), len(st.Dead))
	}
	for _, d := range st.Dead {
		if d.Reason != ReasonExpired {
			t.Errorf("left dead: %+v", d)
		}
	}
	if n, err := b.c.PurgeAll(ctx, q, &DeadOpts{Reason: ReasonExpired, BatchSize: 7}); err != nil || n != 30 {
		t.Fatalf("PurgeAll(expired) = %d, %v", n, err)
	}
	if s, _ := b.c.Stats(ctx, q); s.Dead != 0 || s.Ready != 10 {
		t.Fatalf("Stats = %+v", s)
	}
	if n, err := b.c.ReplayAll(ctx, q, &DeadOpts{Reason: "Bad"}); !errors.Is(err, ErrInvalidArgument) || n != 0 {
		t.Errorf("bad reason: %d, %v", n, err)
	}
}

// TestReplayAllStopsBetweenBatches: a cancelled ReplayAll finishes its
// batch, reports it exactly, and leaves every message in one place.
func TestReplayAllStopsBetweenBatches(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "cancelled"
	b.makeDead(t, q, 50, func(i int) string { return fmt.Sprint(i) })
	ctx, cancel := contextWithCancel(t)
	n, err := b.c.ReplayAll(ctx, q, &DeadOpts{BatchSize: 10, ProgressFunc: func(d int) {
		if d >= 20 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) || n != 20 {
		t.Fatalf("ReplayAll = %d, %v; want 20, canceled", n, err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Ready) != 20 || len(st.Dead) != 30 {
		t.Fatalf("%d ready, %d dead", len(st.Ready), len(st.Dead))
	}
}

func TestForget(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "forgotten"
	b.push(t, q, "x", nil)
	before := snapshot(t, b.rdb)
	if err := b.c.Forget(ctx, q); !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), "1 ready") {
		t.Fatalf("Forget of a queue with a message = %v", err)
	}
	sameSnapshot(t, "refused Forget", before, snapshot(t, b.rdb))
	if err := b.take(t, q, nil).Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Pause(ctx, q); err != nil {
		t.Fatal(err)
	}
	if err := b.c.Forget(ctx, q); !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), "paused") {
		t.Fatalf("Forget of a paused queue = %v", err)
	}
	if _, err := b.c.Resume(ctx, q); err != nil {
		t.Fatal(err)
	}
	if err := b.c.Forget(ctx, q); err != nil {
		t.Fatal(err)
	}
	if known, err := b.c.Known(ctx, q); err != nil || known {
		t.Fatalf("Known after Forget = %v, %v", known, err)
	}
	if n, _ := b.rdb.DBSize(ctx).Result(); n != 0 {
		t.Errorf("%d keys left", n)
	}
	// Pushing again registers it again, although this client saw it once.
	b.push(t, q, "y", nil)
	if known, _ := b.c.Known(ctx, q); !known {
		t.Error("not registered again after a push")
	}
}

// FuzzDecodePeek: whatever peek.lua returns from Redis, decoding it never
// panics, never reports a negative size or more preview than asked.
func FuzzDecodePeek(f *testing.F) {
	e := envelope{ID: "01a22f72-6419-7f8e-9a41-4b60b0fc9381", Attempts: 1, Max: 3, Payload: []byte("hello")}
	env := e.appendTo(nil)
	f.Add("ready", env, 0, 3)
	f.Add("inflight", append([]byte("0123456789abcdef|"), env...), 10, 0)
	f.Add("inflight", env, 10, 0)
	f.Add("delayed", env, 5, 100)
	f.Add("dead", append([]byte("failed|1767225630000|"), env...), 0, 2)
	f.Add("dead", []byte("malformed|1|\x00\x01"), 7, 1)
	f.Add("ready", []byte("\xffackd1|x|99999999999999999|"), 0, 4)
	f.Fuzz(func(t *testing.T, state string, prefix []byte, extra, preview int) {
		st, err := ParseState(state)
		if err != nil || extra < 0 || preview < 0 || preview > MaxPreview {
			return
		}
		m := decodePeek(st, "id", 1, len(prefix)+extra, prefix, preview)
		if m.Size < 0 || len(m.Preview) > preview || m.State != st {
			t.Fatalf("decodePeek(%s, %q, +%d, %d) = %+v", st, prefix, extra, preview, m)
		}
		_, _ = pushTime(string(prefix))
	})
}

// TestRunningTotals: acks, replays and purges add to the queue's counts
// hash, and Stats, StatsMany and Sweep read the totals back.
func TestRunningTotals(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "totals"
	for i := range 6 {
		b.push(t, q, fmt.Sprint(i), nil)
	}
	ls, err := b.c.TakeBatch(ctx, q, 4, nil)
	if err != nil || len(ls) != 4 {
		t.Fatalf("TakeBatch = %d, %v", len(ls), err)
	}
	if err := b.c.AckBatch(ctx, ls[:2]); err != nil {
		t.Fatal(err)
	}
	if err := ls[1].Ack(ctx); !errors.Is(err, ErrNotHeld) { // acked already: adds nothing
		t.Fatalf("second ack = %v", err)
	}
	for _, l := range ls[2:] {
		if err := l.DeadLetter(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b.c.ReplayAll(ctx, q, nil); n != 2 || err != nil {
		t.Fatalf("ReplayAll = %d, %v", n, err)
	}
	for _, l := range b.takeN(t, q, 3) {
		if err := l.DeadLetter(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b.c.PurgeAll(ctx, q, nil); n != 3 || err != nil {
		t.Fatalf("PurgeAll = %d, %v", n, err)
	}
	want := [3]int64{2, 3, 2} // acked, purged, replayed
	totals := func(s Stats) [3]int64 { return [3]int64{s.Acked, s.Purged, s.Replayed} }

	s, err := b.c.Stats(ctx, q)
	if err != nil || totals(s) != want || s.Ready != 1 {
		t.Fatalf("Stats = %+v, %v; want totals %v and 1 ready", s, err, want)
	}
	r, err := b.c.Sweep(ctx, q, nil)
	if err != nil || totals(r.Counts) != want {
		t.Errorf("Sweep counts = %+v, %v; want totals %v", r.Counts, err, want)
	}
	// StatsMany, also when the server lost its scripts (EVAL then).
	for _, flush := range []bool{false, true} {
		if flush {
			if err := flushScripts(ctx, b.rdb); err != nil {
				t.Fatal(err)
			}
		}
		ss, errs := b.c.StatsMany(ctx, []string{q, "nothing-here", "not a queue name!"})
		if errs[0] != nil || totals(ss[0]) != want || ss[0].Ready != 1 {
			t.Errorf("StatsMany (flushed %v) of %s = %+v, %v", flush, q, ss[0], errs[0])
		}
		if errs[1] != nil || !ss[1].Empty() || ss[1].Now.IsZero() {
			t.Errorf("StatsMany (flushed %v) of an unknown queue = %+v, %v", flush, ss[1], errs[1])
		}
		if !errors.Is(errs[2], ErrInvalidQueue) {
			t.Errorf("StatsMany (flushed %v) of a bad name: %v, want ErrInvalidQueue", flush, errs[2])
		}
	}
	// Foreign data in the hash reads as 0.
	if err := b.rdb.HSet(ctx, KeysFor(q).Counts, "acked", "lots", "purged", "nan", "replayed", "-5").Err(); err != nil {
		t.Fatal(err)
	}
	if s, err := b.c.Stats(ctx, q); err != nil || totals(s) != [3]int64{} {
		t.Errorf("Stats over foreign totals = %+v, %v; want 0, 0, 0", s, err)
	}
}

// takeN takes n leases of queue, one call.
func (b *testBundle) takeN(t *testing.T, queue string, n int) []*Lease {
	t.Helper()
	ls, err := b.c.TakeBatch(t.Context(), queue, n, nil)
	if err != nil || len(ls) != n {
		t.Fatalf("TakeBatch(%d) = %d, %v", n, len(ls), err)
	}
	return ls
}
