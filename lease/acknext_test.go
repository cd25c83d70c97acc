package lease

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
)

// Tests of the public ack-and-take: Lease.AckAndTake and
// Client.AckAndTakeBatch.

// TestAckAndTakeLoop runs the loop AckAndTake is for: each call acks the
// lease it is called on exactly once and returns the next message's
// lease, valid like any other, in one round trip; the call that finds the
// queue empty still acks, and reports ErrNoMessage alone.
func TestAckAndTakeLoop(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknext"
	var pushed []string
	for i := range 5 {
		pushed = append(pushed, b.push(t, q, fmt.Sprintf("m%d", i), nil))
	}
	calls := b.countCalls()
	l := b.take(t, q, nil)
	var got []string
	for i := 0; l != nil; i++ {
		got = append(got, l.ID)
		if string(l.Payload) != fmt.Sprintf("m%d", i) || l.Attempt != 1 || l.MaxDeliveries != MaxDeliveriesDefault || l.Queue != q {
			t.Fatalf("lease %d = %+v", i, l)
		}
		before := calls.n.Load()
		next, err := l.AckAndTake(ctx, nil)
		if n := calls.n.Load() - before; n != 1 {
			t.Errorf("AckAndTake %d made %d round trips, want 1", i, n)
		}
		if !l.settled.Load() {
			t.Errorf("acked lease %s not marked settled", l.ID)
		}
		if n := b.ackedCount(t, q); n != i+1 {
			t.Fatalf("after AckAndTake %d: %d acked, want %d", i, n, i+1)
		}
		st := checkInvariants(t, b.rdb, q)
		if _, held := st.InFlight[l.ID]; held {
			t.Fatalf("AckAndTake %d: %s still in flight", i, l.ID)
		}
		if i < len(pushed)-1 {
			if err != nil || next == nil {
				t.Fatalf("AckAndTake %d = %v, %v", i, next, err)
			}
			// The next lease is in flight under its token, and works.
			if len(st.InFlight) != 1 || st.Tokens[next.ID] != next.Token || st.InFlight[next.ID] != next.Deadline().UnixMilli() {
				t.Fatalf("AckAndTake %d: in flight %v, tokens %v; next %+v", i, st.InFlight, st.Tokens, next)
			}
			if err := next.Extend(ctx, time.Hour); err != nil {
				t.Fatalf("Extend of the lease AckAndTake made: %v", err)
			}
		} else {
			if next != nil || !errors.Is(err, ErrNoMessage) || errors.Is(err, ErrAckUnconfirmed) || errors.Is(err, ErrNotHeld) {
				t.Fatalf("AckAndTake on an empty queue = %v, %v; want nil, ErrNoMessage alone", next, err)
			}
			if len(st.InFlight) != 0 {
				t.Fatalf("AckAndTake on an empty queue left %v in flight", st.InFlight)
			}
		}
		l = next
	}
	if !slices.Equal(got, pushed) {
		t.Fatalf("took %v, want %v", got, pushed)
	}
}

// TestAckAndTakeAckFails: an ack that fails (the lease ran out and its
// message went to another consumer, or it was acked already: ErrNotHeld)
// changes nothing of the message, and the take still leases the next
// one, which is returned with the ack's error. With nothing to take the
// error says both.
func TestAckAndTakeAckFails(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknextfail"
	first := b.push(t, q, "first", nil)
	old := b.take(t, q, &TakeOpts{LeaseFor: 20 * time.Millisecond})
	b.expire(t, old, requeued)
	cur := b.take(t, q, nil)
	if cur.ID != first {
		t.Fatalf("took %s again, want %s", cur.ID, first)
	}
	second := b.push(t, q, "second", nil)

	next, err := old.AckAndTake(ctx, nil)
	if next == nil || next.ID != second || !errors.Is(err, ErrNotHeld) || errors.Is(err, ErrAckUnconfirmed) {
		t.Fatalf("AckAndTake(stale) = %v, %v; want %s, ErrNotHeld", next, err, second)
	}
	st := checkInvariants(t, b.rdb, q)
	if st.Tokens[first] != cur.Token || st.Tokens[second] != next.Token || b.ackedCount(t, q) != 0 {
		t.Fatalf("after a stale AckAndTake: tokens %v, %d acked", st.Tokens, b.ackedCount(t, q))
	}

	// Not held: acked already.
	if err := next.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	third := b.push(t, q, "third", nil)
	again, err := next.AckAndTake(ctx, nil)
	if again == nil || again.ID != third || !errors.Is(err, ErrNotHeld) || errors.Is(err, ErrAckUnconfirmed) {
		t.Fatalf("AckAndTake(acked) = %v, %v; want %s, ErrNotHeld", again, err, third)
	}
	if n := b.ackedCount(t, q); n != 1 {
		t.Fatalf("%d acked, want 1", n)
	}

	// Stale and nothing to take, with and without a wait.
	for _, o := range []*TakeOpts{nil, {Wait: 20 * time.Millisecond}} {
		none, err := old.AckAndTake(ctx, o)
		if none != nil || !errors.Is(err, ErrNotHeld) || !errors.Is(err, ErrNoMessage) || errors.Is(err, ErrAckUnconfirmed) {
			t.Fatalf("AckAndTake(stale, %+v) on an empty queue = %v, %v; want ErrNotHeld and ErrNoMessage", o, none, err)
		}
	}
	st = checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 2 || st.Tokens[first] != cur.Token || st.Tokens[third] != again.Token {
		t.Fatalf("in flight %v, tokens %v", st.InFlight, st.Tokens)
	}
}

// TestAckAndTakeBatch acks several leases and takes several messages in
// one round trip; it fills a batch the client under-estimated with a
// second take; each failed ack gets its own error, joined; a paused queue
// still acks and takes nothing.
func TestAckAndTakeBatch(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknextbatch"
	var pushed []string
	for i := range 10 {
		pushed = append(pushed, b.push(t, q, fmt.Sprintf("m%d", i), nil))
	}
	calls := b.countCalls()
	held, err := b.c.AckAndTakeBatch(ctx, q, nil, 3, nil)
	if err != nil || !slices.Equal(ids(held), pushed[:3]) {
		t.Fatalf("AckAndTakeBatch(none, 3) = %v, %v", ids(held), err)
	}
	before := calls.n.Load()
	next, err := b.c.AckAndTakeBatch(ctx, q, held, 3, nil)
	if err != nil || !slices.Equal(ids(next), pushed[3:6]) {
		t.Fatalf("AckAndTakeBatch(3, 3) = %v, %v", ids(next), err)
	}
	if n := calls.n.Load() - before; n != 1 {
		t.Errorf("AckAndTakeBatch made %d round trips, want 1", n)
	}
	if n := b.ackedCount(t, q); n != 3 {
		t.Fatalf("%d acked, want 3", n)
	}

	// An under-estimate (the last take found 3): the batch is filled all
	// the same. One of the leases is acked already.
	b.c.estimate(q).Store(0)
	done := []*Lease{next[0], held[0], next[1]}
	more, err := b.c.AckAndTakeBatch(ctx, q, done, 4, nil)
	if !slices.Equal(ids(more), pushed[6:10]) || !errors.Is(err, ErrNotHeld) || errors.Is(err, ErrAckUnconfirmed) ||
		strings.Count(err.Error(), "not held") != 1 || !strings.Contains(err.Error(), held[0].ID) {
		t.Fatalf("AckAndTakeBatch(under-estimated) = %v, %v; want %v and ErrNotHeld for %s", ids(more), err, pushed[6:10], held[0].ID)
	}
	if n := b.ackedCount(t, q); n != 5 {
		t.Fatalf("%d acked, want 5", n)
	}

	// Paused: acks, takes nothing, moves nothing; TakeBatch's empty result.
	if _, err := b.c.Pause(ctx, q); err != nil {
		t.Fatal(err)
	}
	b.push(t, q, "while paused", nil)
	none, err := b.c.AckAndTakeBatch(ctx, q, more, 10, nil)
	if none != nil || err != nil {
		t.Fatalf("AckAndTakeBatch on a paused queue = %v, %v; want nothing, nil", ids(none), err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 1 || len(st.Ready) != 1 || b.ackedCount(t, q) != 9 {
		t.Fatalf("paused: in flight %v, ready %v, %d acked", st.InFlight, st.Ready, b.ackedCount(t, q))
	}
	// The single form, waiting on the paused queue: the ack is done, the
	// wait ends with ErrNoMessage and nothing is leased, even when the
	// client expected about nothing there (the ack then goes ahead of a
	// BLMOVE, which may park the message on the claim list).
	b.c.estimate(q).Store(1)
	l, err := next[2].AckAndTake(ctx, &TakeOpts{Wait: 300 * time.Millisecond})
	if l != nil || !errors.Is(err, ErrNoMessage) || errors.Is(err, ErrAckUnconfirmed) {
		t.Fatalf("AckAndTake on a paused queue = %v, %v", l, err)
	}
	st = checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || len(st.Ready) != 1 || b.ackedCount(t, q) != 10 {
		t.Fatalf("paused, waited: in flight %v, ready %v, %d acked", st.InFlight, st.Ready, b.ackedCount(t, q))
	}
	if e := b.c.estimate(q).Load(); e < 2 {
		t.Errorf("after a paused take the estimate is %d: the next wait would not look first", e)
	}
	// Resumed: the message is taken as usual.
	if _, err := b.c.Resume(ctx, q); err != nil {
		t.Fatal(err)
	}
	if l := b.take(t, q, nil); string(l.Payload) != "while paused" {
		t.Fatalf("after Resume took %q", l.Payload)
	}
}

// TestAckAndTakeWait: on an empty queue with a wait, the ack is done at
// once, before the call blocks, and a message pushed meanwhile is
// leased; without a wait the call returns at once.
func TestAckAndTakeWait(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknextwait"
	b.push(t, q, "a", nil)
	b.push(t, q, "b", nil)
	a := b.take(t, q, nil)
	bl := b.take(t, q, nil)

	start := time.Now()
	if l, err := a.AckAndTake(ctx, nil); l != nil || !errors.Is(err, ErrNoMessage) {
		t.Fatalf("AckAndTake without a wait = %v, %v", l, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("AckAndTake without a wait took %v", d)
	}

	var next *Lease
	var err error
	pipes := &pipeRecorder{}
	b.rdb.AddHook(pipes)
	wait := background(func() { next, err = bl.AckAndTake(ctx, &TakeOpts{Wait: time.Minute}) })
	waitBlocked(t, b.rdb, 1)
	// Blocked, and b is acked already: after a take that found the queue
	// empty, the ack goes ahead of the wait in its pipeline.
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 0 || b.ackedCount(t, q) != 2 {
		t.Fatalf("while AckAndTake waits: in flight %v, %d acked; want the ack done", st.InFlight, b.ackedCount(t, q))
	}
	if sent := pipes.sent(); !slices.ContainsFunc(sent, func(p []string) bool { return slices.Equal(p, []string{"fcall", "blmove", "fcall"}) }) {
		t.Errorf("AckAndTake(Wait) after an empty take sent the pipelines %v, want the ack, BLMOVE and the take in one", sent)
	}
	c := b.push(t, q, "c", nil)
	wait()
	if err != nil || next == nil || next.ID != c || string(next.Payload) != "c" {
		t.Fatalf("AckAndTake(Wait) = %v, %v; want %s", next, err, c)
	}
	if st := checkInvariants(t, b.rdb, q); st.Tokens[c] != next.Token {
		t.Fatalf("in flight %v, tokens %v", st.InFlight, st.Tokens)
	}

	// After a take that found the queue empty, the ack, the wait and the
	// take go in one round trip: here the message is there already.
	b.c.estimate(q).Store(0)
	d := b.push(t, q, "d", nil)
	calls := b.countCalls()
	last, err := next.AckAndTake(ctx, &TakeOpts{Wait: time.Minute})
	if err != nil || last == nil || last.ID != d {
		t.Fatalf("AckAndTake(Wait) after an empty take = %v, %v; want %s", last, err, d)
	}
	if n := calls.n.Load(); n != 1 {
		t.Errorf("AckAndTake(Wait) after an empty take made %d round trips, want 1", n)
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 1 || st.Tokens[d] != last.Token || b.ackedCount(t, q) != 3 {
		t.Fatalf("in flight %v, tokens %v, %d acked", st.InFlight, st.Tokens, b.ackedCount(t, q))
	}
}

// TestAckAndTakeWaitNoScript: with Redis's script cache and function
// library flushed, the ack sent ahead of a wait is refused (the function
// is missing) and done right after: the call acks and takes all the same.
func TestAckAndTakeWaitNoScript(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknextnoscript"
	b.push(t, q, "a", nil)
	a := b.take(t, q, nil)
	b.c.estimate(q).Store(0)
	bid := b.push(t, q, "b", nil)
	if err := flushScripts(ctx, b.rdb); err != nil {
		t.Fatal(err)
	}
	next, err := a.AckAndTake(ctx, &TakeOpts{Wait: time.Minute})
	if err != nil || next == nil || next.ID != bid {
		t.Fatalf("AckAndTake(Wait) after FUNCTION FLUSH = %v, %v; want %s", next, err, bid)
	}
	if st := checkInvariants(t, b.rdb, q); len(st.InFlight) != 1 || st.Tokens[bid] != next.Token || b.ackedCount(t, q) != 1 {
		t.Fatalf("in flight %v, tokens %v, %d acked", st.InFlight, st.Tokens, b.ackedCount(t, q))
	}
}

// TestAckAndTakeCancelWait: a wait cut short by ctx returns ctx's error,
// promptly, and leaves the ack done (no ErrAckUnconfirmed), whether the
// ack went alone first or ahead of the wait in one round trip (after a
// take that found the queue empty); a ctx cancelled before the call
// leaves the ack unconfirmed.
func TestAckAndTakeCancelWait(t *testing.T) {
	t.Parallel()
	for _, est := range []int64{MaxBatch, 0} {
		t.Run(fmt.Sprintf("estimate %d", est), func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			const q = "acknextcancel"
			b.push(t, q, "a", nil)
			b.push(t, q, "b", nil)
			a := b.take(t, q, nil)
			bl := b.take(t, q, nil)
			b.c.estimate(q).Store(est)

			ctx, cancel := context.WithCancel(t.Context())
			var next *Lease
			var err error
			wait := background(func() { next, err = a.AckAndTake(ctx, &TakeOpts{Wait: time.Minute}) })
			waitBlocked(t, b.rdb, 1)
			cancelled := time.Now()
			cancel()
			wait()
			took := time.Since(cancelled)
			if next != nil || !errors.Is(err, context.Canceled) || errors.Is(err, ErrAckUnconfirmed) || errors.Is(err, ErrNoMessage) {
				t.Fatalf("AckAndTake cancelled while waiting = %v, %v; want nil, context.Canceled", next, err)
			}
			if took > 30*time.Second {
				t.Errorf("AckAndTake returned %v after the cancel", took)
			}
			st := checkInvariants(t, b.rdb, q)
			if _, held := st.InFlight[a.ID]; held || b.ackedCount(t, q) != 1 {
				t.Fatalf("after a cancelled wait: in flight %v, %d acked; want a acked", st.InFlight, b.ackedCount(t, q))
			}

			// Cancelled before it was sent: nothing happened, and the
			// error says the ack is unconfirmed.
			if l, err := bl.AckAndTake(ctx, &TakeOpts{Wait: time.Minute}); l != nil || !errors.Is(err, ErrAckUnconfirmed) || !errors.Is(err, context.Canceled) {
				t.Fatalf("AckAndTake with a cancelled ctx = %v, %v; want ErrAckUnconfirmed", l, err)
			}
			if _, held := checkInvariants(t, b.rdb, q).InFlight[bl.ID]; !held {
				t.Fatalf("a cancelled AckAndTake acked %s", bl.ID)
			}
			// Acking again, as the error says, works.
			if err := bl.Ack(t.Context()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestAckAndTakeBadInput: bad arguments change nothing and say that the
// ack is unconfirmed; leases of another queue are refused.
func TestAckAndTakeBadInput(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknextbad"
	b.push(t, q, "a", nil)
	b.push(t, q, "b", nil)
	b.push(t, "other", "o", nil)
	l := b.take(t, q, nil)
	other := b.take(t, "other", nil)
	before := snapshot(t, b.rdb)
	for name, call := range map[string]func() error{
		"nil lease":       func() error { _, err := (*Lease)(nil).AckAndTake(ctx, nil); return err },
		"zero lease":      func() error { _, err := (&Lease{Queue: q}).AckAndTake(ctx, nil); return err },
		"negative wait":   func() error { _, err := l.AckAndTake(ctx, &TakeOpts{Wait: -time.Second}); return err },
		"lease too long":  func() error { _, err := l.AckAndTake(ctx, &TakeOpts{LeaseFor: MaxLeaseFor + time.Hour}); return err },
		"lease too short": func() error { _, err := l.AckAndTake(ctx, &TakeOpts{LeaseFor: time.Microsecond}); return err },
		"other queue":     func() error { _, err := b.c.AckAndTakeBatch(ctx, q, []*Lease{l, other}, 1, nil); return err },
		"only other":      func() error { _, err := b.c.AckAndTakeBatch(ctx, q, []*Lease{other}, 1, nil); return err },
		"n 0":             func() error { _, err := b.c.AckAndTakeBatch(ctx, q, []*Lease{l}, 0, nil); return err },
		"n MaxBatch+1":    func() error { _, err := b.c.AckAndTakeBatch(ctx, q, []*Lease{l}, MaxBatch+1, nil); return err },
		"too many acks": func() error {
			_, err := b.c.AckAndTakeBatch(ctx, q, slices.Repeat([]*Lease{l}, MaxBatch+1), 1, nil)
			return err
		},
	} {
		err := call()
		if !errors.Is(err, ErrInvalidArgument) || !errors.Is(err, ErrAckUnconfirmed) {
			t.Errorf("%s: %v; want ErrInvalidArgument and ErrAckUnconfirmed", name, err)
		}
	}
	if _, err := b.c.AckAndTakeBatch(ctx, "bad queue", nil, 1, &TakeOpts{Wait: time.Second}); !errors.Is(err, ErrInvalidQueue) || !errors.Is(err, ErrAckUnconfirmed) {
		t.Errorf("bad queue: %v", err)
	}
	if _, ok := b.c.found.Load("bad queue"); ok {
		t.Error("a refused AckAndTakeBatch keeps an estimate for its bad queue name")
	}
	sameSnapshot(t, "refused AckAndTake", before, snapshot(t, b.rdb))
	if l.settled.Load() || other.settled.Load() {
		t.Error("a refused AckAndTake marked its leases settled")
	}
}

// TestAckAndTakeMaxDeliveries: what AckAndTake leases counts as a
// delivery like any other: its attempt and maximum come back, and a lease
// of the last delivery that runs out sends the message to the dead set.
func TestAckAndTakeMaxDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknextmax"
	m := b.push(t, q, "m", &PushOpts{MaxDeliveries: 2})
	first := b.take(t, q, &TakeOpts{LeaseFor: 20 * time.Millisecond})
	b.expire(t, first, requeued)
	b.push(t, q, "x", nil)
	// Ready is now m (attempt 1 done), then x.
	x, err := first.AckAndTake(ctx, &TakeOpts{LeaseFor: 20 * time.Millisecond})
	if x == nil || x.ID != m || x.Attempt != 2 || x.MaxDeliveries != 2 || !errors.Is(err, ErrNotHeld) {
		t.Fatalf("AckAndTake = %+v, %v; want %s at attempt 2 of 2, the ack not held", x, err, m)
	}
	b.expire(t, x, deadLettered)
	st := checkInvariants(t, b.rdb, q)
	if d, ok := st.Dead[m]; !ok || d.Reason != ReasonExpired || len(st.Ready) != 1 {
		t.Fatalf("after the last delivery ran out: dead %v, ready %v", st.Dead, st.Ready)
	}
}

// pipeRecorder is a go-redis hook that records the commands of each
// pipeline.
type pipeRecorder struct {
	mu    sync.Mutex
	pipes [][]string
}

func (h *pipeRecorder) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *pipeRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h *pipeRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		names := make([]string, len(cmds))
		for i, c := range cmds {
			names[i] = c.Name()
		}
		h.mu.Lock()
		h.pipes = append(h.pipes, names)
		h.mu.Unlock()
		return next(ctx, cmds)
	}
}

// sent is the commands of each pipeline recorded so far.
func (h *pipeRecorder) sent() [][]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.pipes)
}

// resendHook runs every script twice with the same arguments, the second
// reply being the one the caller sees: what happens when go-redis resends
// a call whose reply was lost.
type resendHook struct{ on atomic.Bool }

func (h *resendHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *resendHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.on.Load() && (cmd.Name() == "fcall" || cmd.Name() == "evalsha" || cmd.Name() == "eval") {
			if err := next(ctx, cmd); err != nil {
				return err
			}
		}
		return next(ctx, cmd)
	}
}

func (h *resendHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestAckAndTakeResent: a resent AckAndTake takes nothing more; it
// returns the lease of the first run, which works, and reports the ack
// not held, although it held.
func TestAckAndTakeResent(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknextresent"
	for i := range 4 {
		b.push(t, q, fmt.Sprintf("m%d", i), nil)
	}
	l := b.take(t, q, nil)
	h := &resendHook{}
	b.rdb.AddHook(h)
	h.on.Store(true)
	next, err := l.AckAndTake(ctx, nil)
	h.on.Store(false)
	if next == nil || string(next.Payload) != "m1" || !errors.Is(err, ErrNotHeld) {
		t.Fatalf("resent AckAndTake = %v, %v; want m1, ErrNotHeld", next, err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 1 || st.Tokens[next.ID] != next.Token || len(st.Ready) != 2 || b.ackedCount(t, q) != 1 {
		t.Fatalf("after a resent AckAndTake: in flight %v, ready %v, %d acked", st.InFlight, st.Ready, b.ackedCount(t, q))
	}
	if err := next.Ack(ctx); err != nil {
		t.Fatalf("Ack of the resent call's lease: %v", err)
	}
}

// TestAckAndTakeReplicas: with Config.Replicas, the ack a successful
// AckAndTake reports is on the replica, as an Ack's is, including when
// the call then waited; without the replicas it asked for, the call
// reports ErrNotReplicated with ErrAckUnconfirmed, as Ack and Take report
// it, and does not return the lease it made.
func TestAckAndTakeReplicas(t *testing.T) {
	t.Parallel()
	master, replica := redistest.StartReplicated(t)
	rc := replica.Client(t)
	rdb := master.Client(t)
	c, err := New(rdb, &Config{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const q = "acknextrepl"
	k := KeysFor(q)
	if _, err := c.PushBatch(ctx, q, [][]byte{[]byte("a"), []byte("b")}, nil); err != nil {
		t.Fatal(err)
	}
	a, err := c.Take(ctx, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	onReplica := func(l *Lease) bool {
		ok, err := rc.HExists(ctx, k.Held, l.Token).Result()
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	bl, err := a.AckAndTake(ctx, nil)
	if err != nil || bl == nil {
		t.Fatalf("AckAndTake = %v, %v", bl, err)
	}
	// WAIT returned: the replica has the ack and the new lease.
	if onReplica(a) || !onReplica(bl) {
		t.Fatalf("replica: %s in flight %v, %s in flight %v", a.ID, onReplica(a), bl.ID, onReplica(bl))
	}
	// Empty queue, with a wait (BLMOVE, then a take, as Take waits when
	// writes wait for replicas): the ack is on the replica while the call
	// still waits.
	var next *Lease
	wait := background(func() { next, err = bl.AckAndTake(ctx, &TakeOpts{Wait: time.Minute}) })
	waitBlocked(t, rdb, 1)
	if onReplica(bl) {
		t.Fatalf("while AckAndTake waits, the replica still holds %s in flight", bl.ID)
	}
	if _, err := c.Push(ctx, q, []byte("c"), nil); err != nil {
		t.Fatal(err)
	}
	wait()
	if err != nil || next == nil || string(next.Payload) != "c" {
		t.Fatalf("AckAndTake(Wait) = %v, %v", next, err)
	}

	// The replica gone: too few replicas for every write.
	replica.Stop(t)
	short, err := New(rdb, &Config{Replicas: 1, ReplicaTimeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Push(ctx, q, []byte("d"), nil); !errors.Is(err, ErrNotReplicated) {
		t.Fatalf("Push without the replica: %v", err)
	}
	held, err := short.LeaseOf(q, next.ID, next.Token)
	if err != nil {
		t.Fatal(err)
	}
	l, err := held.AckAndTake(ctx, nil)
	if l != nil || !errors.Is(err, ErrNotReplicated) || !errors.Is(err, ErrAckUnconfirmed) {
		t.Fatalf("AckAndTake without the replica = %v, %v; want ErrNotReplicated, ErrAckUnconfirmed", l, err)
	}
	// It ran on the master: acked, and d leased but not returned.
	st := checkInvariants(t, rdb, q)
	if _, ok := st.InFlight[next.ID]; ok || len(st.InFlight) != 1 || len(st.Ready) != 0 {
		t.Fatalf("on the master: in flight %v, ready %v", st.InFlight, st.Ready)
	}
}

// TestAckAndTakeRace: consumers run the AckAndTake loop on one queue
// while producers push, with leases of a few milliseconds and a sweeper
// requeueing those that run out. Every message is acked exactly once:
// each ack AckAndTake reports as done is the only one of its message, no
// other ack of it succeeds, and in the end nothing is left.
func TestAckAndTakeRace(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: Unlimited})
	ctx := t.Context()
	const q = "acknextrace"
	const producers, consumers, per = 2, 6, 100
	const total = producers * per

	var mu sync.Mutex
	acked := map[string]int{}
	var ackedN atomic.Int64
	record := func(l *Lease) {
		mu.Lock()
		acked[l.ID]++
		mu.Unlock()
		ackedN.Add(1)
	}
	stop := make(chan struct{})
	var sweeper sync.WaitGroup
	sweeper.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := b.c.Sweep(ctx, q, nil); err != nil {
				t.Error(err)
				return
			}
		}
	})
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for i := range per {
				if _, err := b.c.Push(ctx, q, fmt.Appendf(nil, "%d-%d", p, i), nil); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	deadline := time.Now().Add(60 * time.Second)
	for w := range consumers {
		// Lease lengths from 2 to 7 ms: some run out before their ack.
		o := &TakeOpts{Wait: 20 * time.Millisecond, LeaseFor: time.Duration(2+w) * time.Millisecond}
		wg.Go(func() {
			var l *Lease
			for ackedN.Load() < total && time.Now().Before(deadline) {
				if l == nil {
					var err error
					l, err = b.c.Take(ctx, q, o)
					if err != nil && !errors.Is(err, ErrNoMessage) {
						t.Error(err)
						return
					}
					continue
				}
				next, err := l.AckAndTake(ctx, o)
				switch {
				case errors.Is(err, ErrAckUnconfirmed):
					t.Errorf("AckAndTake: %v", err)
					return
				case err == nil, next == nil && errors.Is(err, ErrNoMessage) && !errors.Is(err, ErrStale) && !errors.Is(err, ErrNotHeld):
					record(l)
				case errors.Is(err, ErrStale), errors.Is(err, ErrNotHeld):
				default:
					t.Errorf("AckAndTake: %v", err)
					return
				}
				l = next
			}
		})
	}
	wg.Wait()
	close(stop)
	sweeper.Wait()
	if n := ackedN.Load(); n != total {
		t.Fatalf("%d acks succeeded, want %d", n, total)
	}
	for id, n := range acked {
		if n != 1 {
			t.Errorf("%s acked %d times", id, n)
		}
	}
	st := checkInvariants(t, b.rdb, q)
	if len(acked) != total || len(st.InFlight)+len(st.Ready)+len(st.Dead) != 0 || b.ackedCount(t, q) != total {
		t.Fatalf("%d messages acked, %d counted; left: in flight %v, ready %v, dead %v",
			len(acked), b.ackedCount(t, q), st.InFlight, st.Ready, st.Dead)
	}
}

// TestAckAndTakeSameLease: two AckAndTake calls on one lease at once:
// exactly one ack holds, and each call gets a message of its own.
func TestAckAndTakeSameLease(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "acknextsame"
	for i := range 3 {
		b.push(t, q, fmt.Sprintf("m%d", i), nil)
	}
	l := b.take(t, q, nil)
	var (
		nexts [2]*Lease
		errs  [2]error
		start = make(chan struct{})
		wg    sync.WaitGroup
	)
	for i := range 2 {
		wg.Go(func() {
			<-start
			nexts[i], errs[i] = l.AckAndTake(ctx, nil)
		})
	}
	close(start)
	wg.Wait()
	failed := 0
	for i := range 2 {
		if nexts[i] == nil {
			t.Fatalf("call %d: %v, %v", i, nexts[i], errs[i])
		}
		if errs[i] != nil {
			if !errors.Is(errs[i], ErrNotHeld) {
				t.Fatalf("call %d: %v", i, errs[i])
			}
			failed++
		}
	}
	if failed != 1 || nexts[0].ID == nexts[1].ID || b.ackedCount(t, q) != 1 {
		t.Fatalf("%d acks failed, took %s and %s, %d acked", failed, nexts[0].ID, nexts[1].ID, b.ackedCount(t, q))
	}
}

// TestAckAndTakeCluster: on Redis Cluster every queue's ack-and-take runs
// on its own slot's master, the one-round-trip wait included; a lease of
// a queue on another master is refused and nothing changes.
func TestAckAndTakeCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, nil)
	c, _ := clusterClient(t, cl, nil)
	ctx := t.Context()
	queues := queuesOnEveryMaster(t, cl, 1)
	held := map[string]*Lease{}
	for _, q := range queues {
		if _, err := c.Push(ctx, q, []byte("a"), nil); err != nil {
			t.Fatal(err)
		}
		l, err := c.Take(ctx, q, nil)
		if err != nil {
			t.Fatal(err)
		}
		held[q] = l
	}
	for i, q := range queues {
		node := nodeOf(t, cl, q)
		other := held[queues[(i+1)%len(queues)]]
		if _, err := c.AckAndTakeBatch(ctx, q, []*Lease{held[q], other}, 1, nil); !errors.Is(err, ErrInvalidArgument) || !errors.Is(err, ErrAckUnconfirmed) {
			t.Fatalf("%s: AckAndTakeBatch with a lease of %s: %v", q, other.Queue, err)
		}
		if st := checkInvariants(t, node, q); len(st.InFlight) != 1 {
			t.Fatalf("%s: a refused AckAndTakeBatch changed %v", q, st.InFlight)
		}
		c.estimate(q).Store(0)
		var next *Lease
		var err error
		wait := background(func() { next, err = held[q].AckAndTake(ctx, &TakeOpts{Wait: time.Minute}) })
		waitBlocked(t, node, 1)
		if st := checkInvariants(t, node, q); len(st.InFlight) != 0 {
			t.Fatalf("%s: while AckAndTake waits, in flight %v", q, st.InFlight)
		}
		id, perr := c.Push(ctx, q, []byte("b"), nil)
		if perr != nil {
			t.Fatal(perr)
		}
		wait()
		if err != nil || next == nil || next.ID != id {
			t.Fatalf("%s: AckAndTake(Wait) = %v, %v; want %s", q, next, err, id)
		}
		if l, err := next.AckAndTake(ctx, nil); l != nil || !errors.Is(err, ErrNoMessage) || errors.Is(err, ErrNotHeld) {
			t.Fatalf("%s: last AckAndTake = %v, %v", q, l, err)
		}
		if st := checkInvariants(t, node, q); len(st.InFlight)+len(st.Ready) != 0 {
			t.Fatalf("%s: left %+v", q, st)
		}
	}
}
