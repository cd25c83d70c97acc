package lease

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
)

func TestTakeBlocking(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "blocking"

	if err := b.c.Register(ctx, q); err != nil {
		t.Fatal(err)
	}
	var got *Lease
	var err error
	wait := background(func() { got, err = b.c.Take(ctx, q, &TakeOpts{Wait: 20 * time.Second}) })
	waitBlocked(t, b.rdb, 1)
	id := b.push(t, q, "wake up", nil)
	wait()
	if err != nil || got.ID != id || string(got.Payload) != "wake up" {
		t.Fatalf("blocking Take = %+v, %v", got, err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 1 || len(st.Ready) != 0 {
		t.Fatalf("state = %+v", st)
	}
}

func TestTakeBatchBlocking(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "blockingbatch"

	var got []*Lease
	var err error
	wait := background(func() { got, err = b.c.TakeBatch(ctx, q, 10, &TakeOpts{Wait: 20 * time.Second}) })
	waitBlocked(t, b.rdb, 1)
	pushed, perr := b.c.PushBatch(ctx, q, [][]byte{[]byte("a"), []byte("b"), []byte("c")}, nil)
	if perr != nil {
		t.Fatal(perr)
	}
	wait()
	// The wait returns with the first message; the rest come with it.
	if err != nil || !slices.Equal(ids(got), pushed) {
		t.Fatalf("blocking TakeBatch = %v, %v; want %v", ids(got), err, pushed)
	}
	checkInvariants(t, b.rdb, q)
}

func TestTakeBlockingRawPush(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "blockingraw"

	var got *Lease
	var err error
	wait := background(func() { got, err = b.c.Take(ctx, q, &TakeOpts{Wait: 20 * time.Second}) })
	waitBlocked(t, b.rdb, 1)
	redistest.RedisCLI(t, b.srv.Addr(), "RPUSH", KeysFor(q).Ready, "raw job")
	wait()
	if err != nil || string(got.Payload) != "raw job" || !validID(got.ID) {
		t.Fatalf("blocking Take = %+v, %v", got, err)
	}
	checkInvariants(t, b.rdb, q)
}

func TestTakeWaitTimesOut(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "timeout"

	start := time.Now()
	l, err := b.c.Take(t.Context(), q, &TakeOpts{Wait: 50 * time.Millisecond})
	if !errors.Is(err, ErrNoMessage) || l != nil {
		t.Fatalf("Take = %v, %v; want ErrNoMessage", l, err)
	}
	if time.Since(start) < 50*time.Millisecond {
		t.Errorf("Take returned after %v, before its wait", time.Since(start))
	}
	ls, err := b.c.TakeBatch(t.Context(), q, 5, &TakeOpts{Wait: 10 * time.Millisecond})
	if err != nil || len(ls) != 0 {
		t.Fatalf("TakeBatch = %v, %v; want nothing, nil", ls, err)
	}
	// The waits left nothing behind.
	st := checkInvariants(t, b.rdb, q)
	if len(st.Raw)+len(st.Ready)+len(st.InFlight) != 0 {
		t.Fatalf("state = %+v", st)
	}
}

func TestTakeBlockingDelayed(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "blockingdelayed"

	// A delayed message becomes due while Take waits: Take wakes for it
	// although nothing is pushed to the ready list.
	id := b.push(t, q, "soon", &PushOpts{Delay: 50 * time.Millisecond})
	l, err := b.c.Take(t.Context(), q, &TakeOpts{Wait: 10 * time.Second})
	if err != nil || l.ID != id {
		t.Fatalf("Take = %+v, %v", l, err)
	}
	checkInvariants(t, b.rdb, q)
}

// TestTakeDelayedClockAhead: with this machine's clock ahead of Redis's,
// a Take waiting for a delayed message finds it due by its own clock long
// before Redis does. It must not spin through 1 ms waits meanwhile, and
// still takes the message once Redis finds it due.
func TestTakeDelayedClockAhead(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "clockahead"
	const skew, delay = time.Second, 1300 * time.Millisecond
	b.c.now = func() time.Time { return time.Now().Add(skew) }
	id := b.push(t, q, "later", &PushOpts{Delay: delay})
	// A busy server: Redis times blocked commands out when its event
	// loop wakes, which on an idle server is only every 100 ms (hz 10).
	busy, idle := context.WithCancel(t.Context())
	pinged := make(chan struct{})
	go func() {
		defer close(pinged)
		for busy.Err() == nil {
			_ = b.rdb.Ping(busy).Err()
		}
	}()
	defer func() { idle(); <-pinged }()
	before := commandStats(t, b.rdb)
	began := time.Now()
	l, err := b.c.Take(t.Context(), q, &TakeOpts{Wait: 10 * time.Second})
	if err != nil || l == nil || l.ID != id {
		t.Fatalf("Take = %+v, %v", l, err)
	}
	took := time.Since(began)
	after := commandStats(t, b.rdb)
	waits := after["blmove"] - before["blmove"]
	t.Logf("taken after %v, %d waits", took, waits)
	// A second of 1 ms waits on a busy server is hundreds, even on a
	// loaded machine; backing off is a dozen.
	if waits > 50 {
		t.Errorf("%d waits for one delayed message", waits)
	}
	if took < delay-50*time.Millisecond {
		t.Errorf("taken after %v, before its delay of %v", took, delay)
	}
	checkInvariants(t, b.rdb, q)
}

func TestTakeCancelled(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	const q = "cancelled"

	ctx, cancel := context.WithCancel(t.Context())
	var err error
	wait := background(func() { _, err = b.c.Take(ctx, q, &TakeOpts{Wait: time.Minute}) })
	waitBlocked(t, b.rdb, 1)
	cancel()
	wait()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Take after cancel = %v", err)
	}
}

// TestPlainProducer: a producer that knows nothing of ackd RPUSHes raw
// payloads; consumers take them with an id, and on expiry they come back
// with the same id.
func TestPlainProducer(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: 3})
	ctx := t.Context()
	const q = "plain"
	k := KeysFor(q)

	if err := b.rdb.RPush(ctx, k.Ready, "from go-redis").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.RedisCLI(t, b.srv.Addr(), "RPUSH", k.Ready, "from redis-cli")
	if err := b.rdb.RPush(ctx, k.Ready, "bin\x00|\xff").Err(); err != nil {
		t.Fatal(err)
	}

	l1 := b.take(t, q, nil)
	if string(l1.Payload) != "from go-redis" || !validID(l1.ID) || l1.Attempt != 1 || l1.MaxDeliveries != 3 {
		t.Fatalf("raw take = %+v", l1)
	}
	if err := l1.Ack(ctx); err != nil {
		t.Fatalf("Ack raw: %v", err)
	}

	l2 := b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	if string(l2.Payload) != "from redis-cli" || l2.ID == l1.ID {
		t.Fatalf("raw take = %+v", l2)
	}
	b.expire(t, l2, requeued)
	st := checkInvariants(t, b.rdb, q)
	if len(st.Ready) != 1 || st.Ready[0] != l2.ID || len(st.Raw) != 1 {
		t.Fatalf("after expiry: ready %v raw %q", st.Ready, st.Raw)
	}
	again := b.take(t, q, nil)
	if again.ID != l2.ID || again.Attempt != 2 || string(again.Payload) != "from redis-cli" || again.MaxDeliveries != 3 {
		t.Fatalf("redelivery = %+v", again)
	}
	if err := again.Ack(ctx); err != nil {
		t.Fatal(err)
	}

	l3 := b.take(t, q, nil)
	if string(l3.Payload) != "bin\x00|\xff" {
		t.Fatalf("binary raw payload = %q", l3.Payload)
	}
	if err := l3.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	st = checkInvariants(t, b.rdb, q)
	if len(st.Raw)+len(st.Ready)+len(st.InFlight)+len(st.Dead) != 0 {
		t.Fatalf("state = %+v", st)
	}
}

// TestTakeMalformedEnvelope: an element that claims to be an envelope but
// is broken goes to the dead set, and the take goes on to the next one.
func TestTakeMalformedEnvelope(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "malformed"
	k := KeysFor(q)

	broken := []string{
		"\xffackd1|broken",
		"\xffackd1|id|01|0|0|0|0|leading zero",
		"\xffackd1|id|100000000000000|0|0|0|0|15 digits",
		"\xffackd1|bad id|0|0|0|0|0|p",
		"\xffackd1|" + strings.Repeat("x", 65) + "|0|0|0|0|0|p",
	}
	for _, s := range broken {
		if err := b.rdb.RPush(ctx, k.Ready, s).Err(); err != nil {
			t.Fatal(err)
		}
	}
	good := b.push(t, q, "good", nil)

	l := b.take(t, q, nil)
	if l.ID != good || string(l.Payload) != "good" {
		t.Fatalf("Take = %+v, want the good message", l)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Dead) != len(broken) || len(st.Ready) != 0 || len(st.Broken) != 0 {
		t.Fatalf("state = %+v", st)
	}
	dl, err := b.c.DeadLetters(ctx, q, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var raws []string
	for _, d := range dl {
		if d.Reason != ReasonMalformed || d.Payload != nil {
			t.Errorf("dead letter = %+v", d)
		}
		raws = append(raws, string(d.Raw))
	}
	slices.Sort(raws)
	slices.Sort(broken)
	if !slices.Equal(raws, broken) {
		t.Errorf("dead raws = %q, want %q", raws, broken)
	}
	if err := l.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestTakeManyMalformed: more malformed elements than one take inspects
// never wedge the queue.
func TestTakeManyMalformed(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "manymalformed"
	k := KeysFor(q)

	bad := make([]any, 250)
	for i := range bad {
		bad[i] = "\xffackd1|broken"
	}
	if err := b.rdb.RPush(ctx, k.Ready, bad...).Err(); err != nil {
		t.Fatal(err)
	}
	good := b.push(t, q, "good", nil)
	l, err := b.c.Take(ctx, q, &TakeOpts{Wait: 5 * time.Second})
	if err != nil || l.ID != good {
		t.Fatalf("Take = %+v, %v", l, err)
	}
	if s, _ := b.c.Stats(ctx, q); s.Dead != 250 {
		t.Fatalf("Stats = %+v", s)
	}
	checkInvariants(t, b.rdb, q)
}

// TestTakeDuplicateID: leases are keyed by token, so a second copy of a
// message whose id is in flight (pushed by someone else) is a second
// lease: both are held under their own tokens, and each ack ends its own.
func TestTakeDuplicateID(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "dup"
	k := KeysFor(q)

	id := b.push(t, q, "x", nil)
	l := b.take(t, q, nil)
	dup := (&envelope{ID: id, Payload: []byte("copy")}).appendTo(nil)
	if err := b.rdb.RPush(ctx, k.Ready, dup).Err(); err != nil {
		t.Fatal(err)
	}
	l2 := b.take(t, q, nil)
	if l2.ID != id || string(l2.Payload) != "copy" || l2.Attempt != 1 || l2.Token == l.Token {
		t.Fatalf("Take = %+v, want the copy of %s under a token of its own", l2, id)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Dead) != 0 || len(st.Held) != 2 || st.Held[l.Token] != id || st.Held[l2.Token] != id {
		t.Fatalf("dead %v, held %v; want two leases of %s", st.Dead, st.Held, id)
	}
	if err := l.Ack(ctx); err != nil {
		t.Fatalf("Ack of the original: %v", err)
	}
	if st := checkInvariants(t, b.rdb, q); len(st.Held) != 1 || st.Held[l2.Token] != id {
		t.Fatalf("after the original's ack: held %v, want the copy's lease", st.Held)
	}
	if err := l2.Ack(ctx); err != nil {
		t.Fatalf("Ack of the copy: %v", err)
	}
	if n := b.ackedCount(t, q); n != 2 {
		t.Errorf("counts acked = %d, want 2", n)
	}
}

func TestWrongTypeKey(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "wrongtype"
	k := KeysFor(q)

	if err := b.rdb.Set(ctx, k.Ready, "not a list", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Take(ctx, q, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("Take = %v, want ErrMalformed", err)
	}
	if _, err := b.c.Take(ctx, q, &TakeOpts{Wait: 10 * time.Millisecond}); !errors.Is(err, ErrMalformed) {
		t.Errorf("blocking Take = %v, want ErrMalformed", err)
	}
	if _, err := b.c.Push(ctx, q, []byte("x"), nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("Push = %v, want ErrMalformed", err)
	}
	if _, err := b.c.Stats(ctx, q); !errors.Is(err, ErrMalformed) {
		t.Errorf("Stats = %v, want ErrMalformed", err)
	}
	if v, _ := b.rdb.Get(ctx, k.Ready).Result(); v != "not a list" {
		t.Errorf("ready key = %q", v)
	}

	const q2 = "wrongtype2"
	k2 := KeysFor(q2)
	b.push(t, q2, "x", nil)
	l := b.take(t, q2, nil)
	if err := b.rdb.Set(ctx, k2.Held, "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func() error{
		"Ack":        func() error { return l.Ack(ctx) },
		"Nack":       func() error { return l.Nack(ctx, 0) },
		"Extend":     func() error { return l.Extend(ctx, time.Second) },
		"DeadLetter": func() error { return l.DeadLetter(ctx) },
	} {
		if err := f(); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s with a wrong-type held key = %v, want ErrMalformed", name, err)
		}
	}
	if err := b.rdb.Set(ctx, k2.Dead, "not a zset", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.DeadLetters(ctx, q2, 0, 10); !errors.Is(err, ErrMalformed) {
		t.Errorf("DeadLetters = %v, want ErrMalformed", err)
	}
	if err := b.rdb.Set(ctx, RegistryKey, "not a set", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Queues(ctx); !errors.Is(err, ErrMalformed) {
		t.Errorf("Queues = %v, want ErrMalformed", err)
	}
}

// corruptLease overwrites the lease record of l with rec.
func (b *testBundle) corruptLease(t *testing.T, l *Lease, rec string) {
	t.Helper()
	if err := b.rdb.HSet(t.Context(), KeysFor(l.Queue).Held, l.Token, rec).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptLeaseRecord(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "corrupt"

	checkDead := func(id, raw string) {
		t.Helper()
		st := checkInvariants(t, b.rdb, q)
		d, ok := st.Dead[id]
		if !ok || d.Reason != ReasonMalformed {
			t.Fatalf("dead = %+v, want %s malformed", st.Dead, id)
		}
		if raw != "" && string(d.Raw) != raw {
			t.Errorf("dead raw = %q, want %q", d.Raw, raw)
		}
		if _, ok := st.InFlight[id]; ok {
			t.Errorf("%s still in flight", id)
		}
	}

	// A record that does not parse is dead-lettered under the token (the
	// message's id is unknown then), its body the record.

	// Nack: a broken envelope.
	b.push(t, q, "n", nil)
	l := b.take(t, q, nil)
	b.corruptLease(t, l, "\xffackd1|garbage")
	if err := l.Nack(ctx, 0); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Nack on a corrupt record = %v, want ErrMalformed", err)
	}
	checkDead(l.Token, "\xffackd1|garbage")

	// DeadLetter: no envelope at all.
	b.push(t, q, "d", nil)
	l = b.take(t, q, nil)
	b.corruptLease(t, l, "garbage")
	if err := l.DeadLetter(ctx); !errors.Is(err, ErrMalformed) {
		t.Fatalf("DeadLetter on a corrupt record = %v, want ErrMalformed", err)
	}
	checkDead(l.Token, "garbage")

	// Sweep: an envelope cut short.
	b.push(t, q, "r", nil)
	l = b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	b.corruptLease(t, l, "\xffackd1|"+l.ID+"|1")
	b.waitDue(t, l.Deadline().UnixMilli())
	if r, err := b.c.Sweep(ctx, q, nil); err != nil || r.Malformed != 1 || r.Requeued+r.DeadLettered != 0 {
		t.Fatalf("Sweep on a corrupt record = %+v, %v; want 1 malformed", r, err)
	}
	checkDead(l.Token, "")

	// Sweep counts it as Malformed.
	b.push(t, q, "s", nil)
	l = b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	b.corruptLease(t, l, "|")
	b.waitDue(t, l.Deadline().UnixMilli())
	r, err := b.c.Sweep(ctx, q, nil)
	if err != nil || r.Malformed != 1 || r.Requeued != 0 || len(r.Lags) != 1 {
		t.Fatalf("Sweep = %+v, %v; want 1 malformed", r, err)
	}
	checkDead(l.Token, "|")

	// A lease from LeaseOf names its message: a corrupt record is of no
	// message, so the ack is refused and nothing changes. The token alone
	// is proof enough: the ack of the lease itself ends it unread.
	b.push(t, q, "a", nil)
	l = b.take(t, q, nil)
	b.corruptLease(t, l, "junk")
	h, err := b.c.LeaseOf(q, l.ID, l.Token)
	if err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, b.rdb)
	if err := h.Ack(ctx); !errors.Is(err, ErrStale) {
		t.Fatalf("Ack via LeaseOf = %v, want ErrStale", err)
	}
	sameSnapshot(t, "Ack via LeaseOf of a corrupt record", before, snapshot(t, b.rdb))
	if err := l.Ack(ctx); err != nil {
		t.Fatalf("Ack of a corrupt record by its token: %v", err)
	}

	dl, err := b.c.DeadLetters(ctx, q, 0, 10)
	if err != nil || len(dl) != 4 {
		t.Fatalf("DeadLetters = %v, %v", dl, err)
	}
	// A malformed dead letter can be purged.
	if n, err := b.c.Purge(ctx, q); err != nil || n != 4 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	checkInvariants(t, b.rdb, q)
}

// TestMalformedDeadIDCollision: dead-lettering an id that is already in
// the dead set keeps both records. Three copies of one id are leased
// together (leases are keyed by token) and dead-lettered one after the
// other: killed, killed, and a record that does not parse (filed under
// its token).
func TestMalformedDeadIDCollision(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "collide"
	k := KeysFor(q)

	id := b.push(t, q, "x", nil)
	for range 2 {
		dup := (&envelope{ID: id, Payload: []byte("copy")}).appendTo(nil)
		if err := b.rdb.RPush(ctx, k.Ready, dup).Err(); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := b.c.TakeBatch(ctx, q, 3, nil)
	if err != nil || len(ls) != 3 || ls[0].ID != id || ls[1].ID != id || ls[2].ID != id {
		t.Fatalf("TakeBatch = %v, %v; want three leases of %s", ids(ls), err, id)
	}
	for _, l := range ls[:2] {
		if err := l.DeadLetter(ctx); err != nil {
			t.Fatal(err)
		}
	}
	b.corruptLease(t, ls[2], "\xffackd1|"+id)
	if err := ls[2].DeadLetter(ctx); !errors.Is(err, ErrMalformed) {
		t.Fatalf("DeadLetter of a corrupt record = %v, want ErrMalformed", err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Dead) != 3 {
		t.Fatalf("dead = %v, want 3 records", st.Dead)
	}
	reasons := map[string]int{}
	for _, d := range st.Dead {
		reasons[d.Reason]++
	}
	if reasons[ReasonMalformed] != 1 || reasons[ReasonKilled] != 2 {
		t.Errorf("reasons = %v", reasons)
	}
}

// TestTakeTinyWait: a wait whose rest is under a millisecond must not
// become BLMOVE's timeout 0, which blocks forever.
func TestTakeTinyWait(t *testing.T) {
	t.Parallel()
	// Redis ends a blocking wait on its own timer (hz), not to the
	// millisecond: hz 100 keeps each of these waits near 10 ms.
	b := setup(t, nil, "--hz", "100")
	const q = "tinywait"

	done := make(chan error, 1)
	go func() {
		for d := 100 * time.Microsecond; d <= 1500*time.Microsecond; d += 50 * time.Microsecond {
			if _, err := b.c.Take(t.Context(), q, &TakeOpts{Wait: d}); !errors.Is(err, ErrNoMessage) {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Take with a tiny wait: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Take with a tiny wait blocked")
	}
}

// TestTakeResent runs one take call twice with the same arguments, as a
// client does when it resends a call whose reply was lost (go-redis
// retries by default). The second run answers with the first run's leases
// and takes nothing more: no payload is leased twice or taken for a copy.
func TestTakeResent(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "resent"
	k := KeysFor(q)
	for i := range 6 {
		if err := b.rdb.RPush(ctx, k.Ready, fmt.Sprintf("raw-%d", i)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	tokens, ids := b.c.newTokens(3)
	keys := []string{k.Ready, k.Claim, k.Held, k.Due, k.Delayed, k.Dead, k.DeadMsgs, k.Paused, k.Counts}
	args := []any{3, 0, 60000, 10, WakeChannel, q, MaxPayloadDefault, 0, 0}
	for i := range 3 {
		keys = append(keys, LeaseKey(q, tokens[i]))
		args = append(args, tokens[i], ids[i])
	}
	var runs [2][]*Lease
	for r := range runs {
		res, err := takeScript.Run(ctx, b.c.rdb, keys, args...).Slice()
		if err != nil {
			t.Fatal(err)
		}
		run, bad, err := b.c.parseRun(q, res, tokens, 0)
		ls := run.leases
		if err != nil || bad != 0 || len(ls) != 3 {
			t.Fatalf("run %d: take = %d leases, %d malformed, %v", r, len(ls), bad, err)
		}
		runs[r] = ls
	}
	for i := range 3 {
		a, r := runs[0][i], runs[1][i]
		if a.ID != ids[i] || r.ID != a.ID || r.Token != a.Token || r.Attempt != 1 ||
			r.Deadline() != a.Deadline() || string(r.Payload) != fmt.Sprintf("raw-%d", i) {
			t.Errorf("lease %d: first %+v, resent %+v", i, a, r)
		}
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Dead) != 0 || len(st.InFlight) != 3 || len(st.Raw) != 3 {
		t.Errorf("after a resent take: %d dead, %d in flight, %d ready", len(st.Dead), len(st.InFlight), len(st.Raw))
	}
	if err := b.c.AckBatch(ctx, runs[1]); err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, b.rdb, q)
}

// TestTakeBadArguments: a take whose numbers are not what it copies or
// computes with (a max deliveries that is no canonical decimal, a lease
// or size that is no number >= 0) is refused before it writes: nothing changes.
func TestTakeBadArguments(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "badargs"
	k := KeysFor(q)
	b.push(t, q, "m", nil)
	if err := b.rdb.RPush(ctx, k.Ready, "raw").Err(); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, b.rdb)
	for _, bad := range []struct {
		at  int
		val string
	}{
		{2, "x"}, {2, "nan"}, {2, "-1"}, {3, "x"}, {3, ""}, {3, "nan"}, {3, "-1"},
		{4, "1e3"}, {4, " 10"}, {4, "010"}, {4, "-1"}, {7, "x"}, {7, "nan"},
	} {
		tokens, ids := b.c.newTokens(2)
		keys := []string{k.Ready, k.Claim, k.Held, k.Due, k.Delayed, k.Dead, k.DeadMsgs, k.Paused, k.Counts,
			LeaseKey(q, tokens[0]), LeaseKey(q, tokens[1])}
		args := []any{2, 0, 60000, 10, WakeChannel, q, MaxPayloadDefault, 0, 0, tokens[0], ids[0], tokens[1], ids[1]}
		args[bad.at-1] = bad.val
		res, err := takeScript.Run(ctx, b.c.rdb, keys, args...).Result()
		if err == nil || !strings.Contains(err.Error(), "ERR take:") {
			t.Errorf("take with ARGV[%d] = %q: %v, %v; want an error", bad.at, bad.val, res, err)
		}
		sameSnapshot(t, fmt.Sprintf("take with ARGV[%d] = %q", bad.at, bad.val), before, snapshot(t, b.rdb))
	}
}

// commandCalls reads the calls of each command from INFO commandstats.
func commandCalls(t *testing.T, rdb *redis.Client) map[string]int {
	t.Helper()
	info, err := rdb.Info(t.Context(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for line := range strings.SplitSeq(info, "\n") {
		name, stats, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(stats, ",")
		out[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.Atoi(n)
	}
	return out
}

// TestTakeBlockingOneRoundTrip: after an empty take, a blocking take sends
// BLMOVE and the take script together, and Redis runs the script as soon as
// BLMOVE returns: a message pushed to a waiting consumer costs one BLMOVE
// and one script run, and no second take. Also after FUNCTION FLUSH: the
// pipelined FCALL finds no function, and the take runs again after
// loading the library, without losing the parked element.
func TestTakeBlockingOneRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "oneroundtrip"
	b.noMessage(t, q) // an empty take: the next blocking one goes straight to BLMOVE
	for _, flush := range []bool{false, true} {
		if flush {
			if err := flushScripts(ctx, b.rdb); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.rdb.ConfigResetStat(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		var got *Lease
		var err error
		wait := background(func() { got, err = b.c.Take(ctx, q, &TakeOpts{Wait: 20 * time.Second}) })
		waitBlocked(t, b.rdb, 1)
		id := b.push(t, q, "at once", nil)
		wait()
		if err != nil || got.ID != id {
			t.Fatalf("flush %v: blocking Take = %+v, %v", flush, got, err)
		}
		calls := commandCalls(t, b.rdb)
		want := map[string]int{"blmove": 1, "fcall": 1, "function|load": 0, "evalsha": 0}
		if flush {
			want = map[string]int{"blmove": 1, "fcall": 2, "function|load": 1, "evalsha": 0}
		}
		for cmd, n := range want {
			if calls[cmd] != n {
				t.Errorf("flush %v: %d %s, want %d (%v)", flush, calls[cmd], cmd, n, calls)
			}
		}
		if err := got.Ack(ctx); err != nil {
			t.Fatal(err)
		}
		b.noMessage(t, q)
		checkInvariants(t, b.rdb, q)
	}
}

// TestTakeBlockingPausedMovesAtMostOne: blocking takes of a paused queue
// leave its messages on the ready list. The pipelined wait sends BLMOVE
// before it can know of the pause, so a consumer's first blocking take
// after the pause may park one element on the claim list; its next ones
// must not park more (they used to, one per call, until the ready list was
// on the claim list).
func TestTakeBlockingPausedMovesAtMostOne(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "pausedblocking"
	b.noMessage(t, q) // an empty take: the next blocking one goes straight to BLMOVE
	for i := range 4 {
		b.push(t, q, fmt.Sprintf("m%d", i), nil)
	}
	if _, err := b.c.Pause(ctx, q); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if l, err := b.c.Take(ctx, q, &TakeOpts{Wait: 10 * time.Millisecond}); !errors.Is(err, ErrNoMessage) {
			t.Fatalf("take %d of a paused queue = %+v, %v", i, l, err)
		}
	}
	k := KeysFor(q)
	if n := b.rdb.LLen(ctx, k.Claim).Val(); n > 1 {
		t.Errorf("%d messages moved to the claim list by blocking takes of a paused queue, want at most 1", n)
	}
	if _, err := b.c.Resume(ctx, q); err != nil {
		t.Fatal(err)
	}
	ls, err := b.c.TakeBatch(ctx, q, 10, nil)
	if err != nil || len(ls) != 4 {
		t.Fatalf("after resume: %v, %v", ids(ls), err)
	}
	for i, l := range ls {
		if string(l.Payload) != fmt.Sprintf("m%d", i) {
			t.Errorf("lease %d after resume: %q, want m%d (push order)", i, l.Payload, i)
		}
	}
	checkInvariants(t, b.rdb, q)
}

// TestTakeWrongTypeKeepsMessages: a take that finds a key of the queue
// holding the wrong type (written by something else) fails with
// ErrMalformed and loses nothing: Redis keeps what a script wrote before
// a failed call, so the elements it had popped go back to the head of the
// ready list, in order, and the leases it had made keep their deadlines.
func TestTakeWrongTypeKeepsMessages(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	for _, which := range []string{"held", "dead", "deadmsgs"} {
		q := "wrongtypetake." + which
		k := KeysFor(q)
		good1 := b.push(t, q, "good1", nil)
		if err := b.rdb.RPush(ctx, k.Ready, envelopeMark+"broken").Err(); err != nil {
			t.Fatal(err)
		}
		good2 := b.push(t, q, "good2", nil)
		key := map[string]string{"held": k.Held, "dead": k.Dead, "deadmsgs": k.DeadMsgs}[which]
		if err := b.rdb.Set(ctx, key, "not mine", 0).Err(); err != nil {
			t.Fatal(err)
		}
		ls, err := b.c.TakeBatch(ctx, q, 3, nil)
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s of the wrong type: take = %v, %v; want ErrMalformed", which, ids(ls), err)
		}
		if err := b.rdb.Del(ctx, key).Err(); err != nil {
			t.Fatal(err)
		}
		st := checkInvariants(t, b.rdb, q)
		held := slices.Sorted(maps.Keys(st.InFlight))
		if which == "held" {
			if len(held) != 0 || !slices.Equal(st.Ready, []string{good1, good2}) || len(st.Broken) != 1 {
				t.Errorf("%s: in flight %v, ready %v, broken %d; want none, [good1 good2], 1", which, held, st.Ready, len(st.Broken))
			}
			continue
		}
		// good1 was leased before the broken element needed the dead set
		if !slices.Equal(held, []string{good1}) || !slices.Equal(st.Ready, []string{good2}) || len(st.Broken) != 1 {
			t.Errorf("%s: in flight %v, ready %v, broken %d; want [good1], [good2], 1", which, held, st.Ready, len(st.Broken))
		}
	}
}
