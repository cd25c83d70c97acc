package lease

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

func TestPushTakeAck(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "orders"

	id := b.push(t, q, "hello", nil)
	if !validID(id) {
		t.Fatalf("Push returned id %q", id)
	}
	st := checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, []string{id}) {
		t.Fatalf("ready = %v, want [%s]", st.Ready, id)
	}

	t0 := b.redisNow(t)
	l := b.take(t, q, nil)
	t1 := b.redisNow(t)
	if l.Queue != q || l.ID != id || string(l.Payload) != "hello" || l.Attempt != 1 || l.MaxDeliveries != MaxDeliveriesDefault || !validToken(l.Token) {
		t.Fatalf("Take = %+v", l)
	}
	dl := l.Deadline().UnixMilli()
	if lo, hi := t0+LeaseForDefault.Milliseconds(), t1+LeaseForDefault.Milliseconds(); dl < lo || dl > hi {
		t.Errorf("deadline %d, want within [%d, %d]", dl, lo, hi)
	}
	st = checkInvariants(t, b.rdb, q)
	if st.InFlight[id] != dl || st.Tokens[id] != l.Token || len(st.Ready) != 0 {
		t.Fatalf("after take: %+v", st)
	}
	b.noMessage(t, q)

	if err := l.Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	st = checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || len(st.Ready) != 0 || len(st.Dead) != 0 {
		t.Fatalf("after ack: %+v", st)
	}
	if n, _ := b.rdb.Exists(ctx, LeaseKey(q, l.Token)).Result(); n != 0 {
		t.Errorf("shadow key still exists after ack")
	}
	if err := l.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second Ack = %v, want ErrNotHeld", err)
	}
	s, err := b.c.Stats(ctx, q)
	if err != nil || counts(s) != (Stats{}) {
		t.Errorf("Stats = %+v, %v; want all zero", s, err)
	}
}

func TestPushBatchTakeBatchFIFO(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "batch"

	payloads := [][]byte{[]byte("a"), []byte("b"), []byte("b"), []byte(""), []byte("e")}
	pushed, err := b.c.PushBatch(ctx, q, payloads, nil)
	if err != nil || len(pushed) != 5 {
		t.Fatalf("PushBatch = %v, %v", pushed, err)
	}
	if pushed[1] == pushed[2] {
		t.Errorf("identical payloads got one id %s", pushed[1])
	}
	ls, err := b.c.TakeBatch(ctx, q, 3, nil)
	if err != nil || !slices.Equal(ids(ls), pushed[:3]) {
		t.Fatalf("TakeBatch(3) = %v, %v; want %v", ids(ls), err, pushed[:3])
	}
	for i, l := range ls {
		if string(l.Payload) != string(payloads[i]) {
			t.Errorf("lease %d payload %q, want %q", i, l.Payload, payloads[i])
		}
		for _, o := range ls[:i] {
			if o.Token == l.Token {
				t.Errorf("two leases share token %s", l.Token)
			}
		}
	}
	rest, err := b.c.TakeBatch(ctx, q, 10, nil)
	if err != nil || !slices.Equal(ids(rest), pushed[3:]) {
		t.Fatalf("TakeBatch(10) = %v, %v; want %v", ids(rest), err, pushed[3:])
	}
	if len(rest[0].Payload) != 0 {
		t.Errorf("empty payload came back as %q", rest[0].Payload)
	}
	none, err := b.c.TakeBatch(ctx, q, 10, nil)
	if err != nil || len(none) != 0 {
		t.Fatalf("TakeBatch on empty queue = %v, %v; want nothing, nil", none, err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 5 {
		t.Fatalf("in flight %d, want 5", len(st.InFlight))
	}
	if err := b.c.AckBatch(ctx, append(ls, rest...)); err != nil {
		t.Fatalf("AckBatch: %v", err)
	}
	if err := b.c.AckBatch(ctx, ls); !errors.Is(err, ErrNotHeld) {
		t.Errorf("AckBatch again = %v, want ErrNotHeld", err)
	}
	st = checkInvariants(t, b.rdb, q)
	if len(st.InFlight) != 0 || len(st.Ready) != 0 {
		t.Fatalf("after AckBatch: %+v", st)
	}
}

func TestPushDelayed(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "delayed"

	const delay = 300 * time.Millisecond
	t0 := b.redisNow(t)
	id := b.push(t, q, "later", &PushOpts{Delay: delay})
	st := checkInvariants(t, b.rdb, q)
	due, ok := st.Delayed[id]
	if !ok || due < t0+delay.Milliseconds() {
		t.Fatalf("delayed = %v, want %s due at or after %d", st.Delayed, id, t0+delay.Milliseconds())
	}
	if s, _ := b.c.Stats(ctx, q); s.Delayed != 1 || s.Ready != 0 {
		t.Errorf("Stats = %+v", s)
	}
	if l, err := b.c.Take(ctx, q, nil); err == nil && b.redisNow(t) < due {
		t.Fatalf("took %s before it was due", l.ID)
	}
	var l *Lease
	redistest.WaitFor(t, 5*time.Second, func() bool {
		var err error
		l, err = b.c.Take(ctx, q, nil)
		return err == nil
	}, "delayed message becomes ready")
	if l.ID != id || string(l.Payload) != "later" || l.Attempt != 1 {
		t.Fatalf("Take = %+v", l)
	}
	if now := b.redisNow(t); now < due {
		t.Errorf("taken at %d, before due %d", now, due)
	}
	checkInvariants(t, b.rdb, q)
}

func TestPushLeaseForAndMaxDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{LeaseFor: 10 * time.Second, MaxDeliveries: 4})
	ctx := t.Context()
	const q = "opts"

	b.push(t, q, "own lease", &PushOpts{LeaseFor: 5 * time.Second})
	b.push(t, q, "default", nil)
	b.push(t, q, "unlimited", &PushOpts{MaxDeliveries: Unlimited})
	b.push(t, q, "two", &PushOpts{MaxDeliveries: 2, LeaseFor: 5 * time.Second})

	check := func(l *Lease, t0, t1 int64, leaseMS int64, maxd int, payload string) {
		t.Helper()
		if string(l.Payload) != payload || l.MaxDeliveries != maxd {
			t.Errorf("%s: payload %q max %d, want %q %d", payload, l.Payload, l.MaxDeliveries, payload, maxd)
		}
		if dl := l.Deadline().UnixMilli(); dl < t0+leaseMS || dl > t1+leaseMS {
			t.Errorf("%s: deadline %d, want now + %d ms, within [%d, %d]", payload, dl, leaseMS, t0+leaseMS, t1+leaseMS)
		}
	}
	t0 := b.redisNow(t)
	l := b.take(t, q, nil)
	check(l, t0, b.redisNow(t), 5000, 4, "own lease")

	t0 = b.redisNow(t)
	l = b.take(t, q, nil)
	check(l, t0, b.redisNow(t), 10000, 4, "default")

	// A take's LeaseFor overrides both the message's and the Config's.
	t0 = b.redisNow(t)
	l = b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Second})
	check(l, t0, b.redisNow(t), 2000, Unlimited, "unlimited")

	t0 = b.redisNow(t)
	l = b.take(t, q, &TakeOpts{LeaseFor: 3 * time.Second})
	check(l, t0, b.redisNow(t), 3000, 2, "two")
	checkInvariants(t, b.rdb, q)

	// The message keeps its own lease on redelivery.
	if err := l.Nack(ctx, 0); err != nil {
		t.Fatalf("Nack: %v", err)
	}
	t0 = b.redisNow(t)
	l = b.take(t, q, nil)
	check(l, t0, b.redisNow(t), 5000, 2, "two")
	if l.Attempt != 2 {
		t.Errorf("attempt %d, want 2", l.Attempt)
	}
}

func TestNackNowGoesToTail(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "nack"

	a := b.push(t, q, "a", nil)
	bb := b.push(t, q, "b", nil)
	la := b.take(t, q, nil)
	if err := la.Nack(ctx, 0); err != nil {
		t.Fatalf("Nack: %v", err)
	}
	st := checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, []string{bb, a}) {
		t.Fatalf("ready = %v, want [%s %s] (nacked message at the tail)", st.Ready, bb, a)
	}
	if e := st.env(t, a); e.Failures != 1 || e.Attempts != 1 || e.Expiries != 0 {
		t.Errorf("envelope after nack = %+v", e)
	}
	if n, _ := b.rdb.Exists(ctx, LeaseKey(q, la.Token)).Result(); n != 0 {
		t.Errorf("shadow key still exists after nack")
	}
	if err := la.Nack(ctx, 0); !errors.Is(err, ErrNotHeld) {
		t.Errorf("second Nack = %v, want ErrNotHeld", err)
	}
	if l := b.take(t, q, nil); l.ID != bb || l.Attempt != 1 {
		t.Fatalf("first take = %s attempt %d, want %s attempt 1", l.ID, l.Attempt, bb)
	}
	if l := b.take(t, q, nil); l.ID != a || l.Attempt != 2 || string(l.Payload) != "a" {
		t.Fatalf("second take = %s attempt %d, want %s attempt 2", l.ID, l.Attempt, a)
	}
	checkInvariants(t, b.rdb, q)
}

func TestNackDelay(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "nackdelay"

	id := b.push(t, q, "x", nil)
	l := b.take(t, q, nil)
	const delay = 300 * time.Millisecond
	t0 := b.redisNow(t)
	if err := l.Nack(ctx, delay); err != nil {
		t.Fatalf("Nack: %v", err)
	}
	st := checkInvariants(t, b.rdb, q)
	due, ok := st.Delayed[id]
	if !ok || due < t0+delay.Milliseconds() || len(st.InFlight) != 0 {
		t.Fatalf("after Nack(%v): %+v", delay, st)
	}
	if l, err := b.c.Take(ctx, q, nil); err == nil && b.redisNow(t) < due {
		t.Fatalf("took %s before its nack delay was over", l.ID)
	}
	var l2 *Lease
	redistest.WaitFor(t, 5*time.Second, func() bool {
		var err error
		l2, err = b.c.Take(ctx, q, nil)
		return err == nil
	}, "nacked message comes back")
	if l2.ID != id || l2.Attempt != 2 {
		t.Fatalf("Take = %s attempt %d, want %s attempt 2", l2.ID, l2.Attempt, id)
	}
	checkInvariants(t, b.rdb, q)
}

func TestExtend(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "extend"

	b.push(t, q, "x", nil)
	l := b.take(t, q, &TakeOpts{LeaseFor: time.Second})
	before := l.Deadline().UnixMilli()
	pttl0, _ := b.rdb.PTTL(ctx, LeaseKey(q, l.Token)).Result()

	t0 := b.redisNow(t)
	if err := l.Extend(ctx, time.Minute); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	t1 := b.redisNow(t)
	after := l.Deadline().UnixMilli()
	if after < t0+60000 || after > t1+60000 || after <= before {
		t.Fatalf("deadline %d -> %d, want within [%d, %d]", before, after, t0+60000, t1+60000)
	}
	score, err := b.rdb.ZScore(ctx, KeysFor(q).Due, l.Token).Result()
	if err != nil || int64(score) != after {
		t.Errorf("ZSET score %v (%v), want %d", score, err, after)
	}
	pttl1, _ := b.rdb.PTTL(ctx, LeaseKey(q, l.Token)).Result()
	if pttl1 <= pttl0 || pttl1 < 50*time.Second {
		t.Errorf("shadow key PTTL %v -> %v, want about 1m", pttl0, pttl1)
	}
	checkInvariants(t, b.rdb, q)

	// Extending shortens too: the deadline is now + d.
	if err := l.Extend(ctx, 2*time.Second); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if l.Deadline().UnixMilli() >= after {
		t.Errorf("Extend(2s) kept deadline %v", l.Deadline())
	}
	checkInvariants(t, b.rdb, q)
	if err := l.Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if err := l.Extend(ctx, time.Second); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Extend after Ack = %v, want ErrNotHeld", err)
	}
}

func TestExtendAfterDeadline(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "extendlate"

	b.push(t, q, "x", nil)
	l := b.take(t, q, &TakeOpts{LeaseFor: 5 * time.Millisecond})
	b.waitDue(t, l.Deadline().UnixMilli())
	if err := l.Extend(ctx, time.Minute); err != nil {
		t.Fatalf("Extend after the deadline, before any requeue: %v", err)
	}
	b.sweepNothing(t, q)
	checkInvariants(t, b.rdb, q)
}

func TestDeadLetterKilled(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "kill"

	id := b.push(t, q, "poison", nil)
	l := b.take(t, q, nil)
	t0 := b.redisNow(t)
	if err := l.DeadLetter(ctx); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	st := checkInvariants(t, b.rdb, q)
	d, ok := st.Dead[id]
	if !ok || d.Reason != ReasonKilled || d.Attempts != 1 || string(d.Payload) != "poison" || d.At.UnixMilli() < t0 {
		t.Fatalf("dead = %+v", st.Dead)
	}
	if len(st.InFlight) != 0 {
		t.Errorf("still in flight: %v", st.InFlight)
	}
	if n, _ := b.rdb.Exists(ctx, LeaseKey(q, l.Token)).Result(); n != 0 {
		t.Errorf("shadow key still exists after DeadLetter")
	}
	for name, f := range map[string]func() error{
		"Ack":        func() error { return l.Ack(ctx) },
		"Nack":       func() error { return l.Nack(ctx, 0) },
		"Extend":     func() error { return l.Extend(ctx, time.Second) },
		"DeadLetter": func() error { return l.DeadLetter(ctx) },
	} {
		if err := f(); !errors.Is(err, ErrNotHeld) {
			t.Errorf("%s after DeadLetter = %v, want ErrNotHeld", name, err)
		}
	}
	if s, _ := b.c.Stats(ctx, q); counts(s) != (Stats{Dead: 1}) {
		t.Errorf("Stats = %+v", s)
	}
}

func TestDeadLettersReplayPurge(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "dlq"

	var dead []string
	for _, p := range []string{"d0", "d1", "d2", "d3"} {
		dead = append(dead, b.push(t, q, p, nil))
		l := b.take(t, q, nil)
		if err := l.Nack(ctx, 0); err != nil { // attempt 1 failed
			t.Fatal(err)
		}
		l = b.take(t, q, nil)
		if l.Attempt != 2 {
			t.Fatalf("attempt %d", l.Attempt)
		}
		if err := l.DeadLetter(ctx); err != nil {
			t.Fatal(err)
		}
	}
	all, err := b.c.DeadLetters(ctx, q, 0, 100)
	if err != nil || len(all) != 4 {
		t.Fatalf("DeadLetters = %v, %v", all, err)
	}
	// Oldest first by the millisecond they died; within one millisecond
	// the ZSET orders by id.
	for i, d := range all {
		j := slices.Index(dead, d.ID)
		if j < 0 || d.Reason != ReasonKilled || d.Attempts != 2 || d.Failures != 1 || string(d.Payload) != "d"+string(rune('0'+j)) {
			t.Errorf("dead letter %d = %+v", i, d)
		}
		if i > 0 && (d.At.Before(all[i-1].At) || d.At.Equal(all[i-1].At) && d.ID < all[i-1].ID) {
			t.Errorf("dead letters out of order at %d: %+v after %+v", i, d, all[i-1])
		}
	}
	page, err := b.c.DeadLetters(ctx, q, 1, 2)
	if err != nil || len(page) != 2 || page[0].ID != all[1].ID || page[1].ID != all[2].ID {
		t.Errorf("DeadLetters(1, 2) = %v, %v", page, err)
	}
	if none, err := b.c.DeadLetters(ctx, q, 10, 2); err != nil || len(none) != 0 {
		t.Errorf("DeadLetters past the end = %v, %v", none, err)
	}

	// Replay by id: back at the tail with its attempts reset.
	n, err := b.c.Replay(ctx, q, dead[1])
	if err != nil || n != 1 {
		t.Fatalf("Replay(%s) = %d, %v", dead[1], n, err)
	}
	st := checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, []string{dead[1]}) || len(st.Dead) != 3 {
		t.Fatalf("after replay: %+v", st)
	}
	if e := st.env(t, dead[1]); e.Attempts != 0 || e.Failures != 1 {
		t.Errorf("replayed envelope = %+v, want attempts 0", e)
	}
	l := b.take(t, q, nil)
	if l.ID != dead[1] || l.Attempt != 1 || string(l.Payload) != "d1" {
		t.Fatalf("take after replay = %+v", l)
	}
	if err := l.Ack(ctx); err != nil {
		t.Fatal(err)
	}

	// Unknown ids are reported; the known ones are replayed anyway.
	n, err = b.c.Replay(ctx, q, dead[0], "no-such-id")
	if n != 1 || !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Replay(known, unknown) = %d, %v; want 1, ErrNotHeld", n, err)
	}

	// Purge by id, then replay all, then purge all. Unknown ids are
	// reported as Replay does; the known ones are purged anyway.
	if n, err := b.c.Purge(ctx, q, dead[2], "no-such-id"); !errors.Is(err, ErrNotHeld) || n != 1 || !strings.Contains(err.Error(), "no-such-id") {
		t.Fatalf("Purge(%s, no-such-id) = %d, %v; want 1, ErrNotHeld naming no-such-id", dead[2], n, err)
	}
	if n, err := b.c.Purge(ctx, q, dead[2]); !errors.Is(err, ErrNotHeld) || n != 0 {
		t.Errorf("Purge again = %d, %v; want 0, ErrNotHeld", n, err)
	}
	st = checkInvariants(t, b.rdb, q)
	if len(st.Dead) != 1 || st.Dead[dead[3]].ID == "" {
		t.Fatalf("dead after purge = %v", st.Dead)
	}
	if n, err := b.c.Replay(ctx, q); err != nil || n != 1 {
		t.Fatalf("Replay(all) = %d, %v", n, err)
	}
	st = checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, []string{dead[0], dead[3]}) || len(st.Dead) != 0 {
		t.Fatalf("after replay all: %+v", st)
	}
	for _, l := range []*Lease{b.take(t, q, nil), b.take(t, q, nil)} {
		if l.Attempt != 1 {
			t.Errorf("%s attempt %d after replay, want 1", l.ID, l.Attempt)
		}
		if err := l.DeadLetter(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b.c.Purge(ctx, q); err != nil || n != 2 {
		t.Fatalf("Purge(all) = %d, %v", n, err)
	}
	st = checkInvariants(t, b.rdb, q)
	if len(st.Dead) != 0 || len(st.Ready) != 0 || len(st.InFlight) != 0 {
		t.Fatalf("after purge all: %+v", st)
	}
}

func TestReplayAndPurgeManyBatches(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: 1})
	ctx := t.Context()
	const q = "manydead"
	const n = MaxBatch + 5

	payloads := make([][]byte, n)
	for i := range payloads {
		payloads[i] = []byte{byte(i)}
	}
	for i := 0; i < n; i += MaxBatch {
		if _, err := b.c.PushBatch(ctx, q, payloads[i:min(i+MaxBatch, n)], nil); err != nil {
			t.Fatal(err)
		}
		ls, err := b.c.TakeBatch(ctx, q, MaxBatch, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			if err := l.Nack(ctx, 0); err != nil { // max 1: dead, reason failed
				t.Fatal(err)
			}
		}
	}
	if s, _ := b.c.Stats(ctx, q); s.Dead != n {
		t.Fatalf("Stats = %+v, want %d dead", s, n)
	}
	if got, err := b.c.Replay(ctx, q); err != nil || got != n {
		t.Fatalf("Replay(all) = %d, %v; want %d", got, err, n)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Ready) != n {
		t.Fatalf("ready %d, want %d", len(st.Ready), n)
	}
	if err := b.rdb.Del(ctx, KeysFor(q).Ready).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestStatsQueuesRegister(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()

	if qs, err := b.c.Queues(ctx); err != nil || len(qs) != 0 {
		t.Fatalf("Queues on an empty server = %v, %v", qs, err)
	}
	if err := b.c.Register(ctx, "zeta"); err != nil {
		t.Fatal(err)
	}
	b.push(t, "alpha", "x", nil)
	if _, err := b.c.Take(ctx, "mid", nil); !errors.Is(err, ErrNoMessage) {
		t.Fatalf("Take on empty queue = %v", err)
	}
	// A name that is not a valid queue, written by someone else, is skipped.
	if err := b.rdb.SAdd(ctx, RegistryKey, "bad name").Err(); err != nil {
		t.Fatal(err)
	}
	qs, err := b.c.Queues(ctx)
	if err != nil || !slices.Equal(qs, []string{"alpha", "mid", "zeta"}) {
		t.Fatalf("Queues = %v, %v", qs, err)
	}
	if typ, _ := b.rdb.Type(ctx, RegistryKey).Result(); typ != "set" {
		t.Errorf("%s is a %s, want set", RegistryKey, typ)
	}

	const q = "stats"
	for range 5 {
		b.push(t, q, "x", nil)
	}
	b.push(t, q, "later", &PushOpts{Delay: time.Hour})
	if err := b.rdb.RPush(ctx, KeysFor(q).Claim, "raw on claim").Err(); err != nil {
		t.Fatal(err)
	}
	ls, err := b.c.TakeBatch(ctx, q, 2, nil)
	if err != nil || len(ls) != 2 {
		t.Fatal(ls, err)
	}
	if err := ls[0].DeadLetter(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := b.c.Stats(ctx, q)
	if want := (Stats{Ready: 4, InFlight: 1, Delayed: 1, Dead: 1}); err != nil || counts(s) != want {
		t.Fatalf("Stats = %+v, %v; want %+v", s, err, want)
	}
}

// TestRequeue: a sweep requeues a lease that ran out, once, at the head.
func TestRequeue(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "requeue"

	b.sweepNothing(t, q)
	first := b.push(t, q, "first", nil)
	second := b.push(t, q, "second", nil)
	long := b.take(t, q, &TakeOpts{LeaseFor: time.Minute})
	b.sweepNothing(t, q)
	if long.ID != first {
		t.Fatalf("took %s, want %s", long.ID, first)
	}

	short := b.take(t, q, &TakeOpts{LeaseFor: 5 * time.Millisecond})
	b.expire(t, short, requeued)
	b.sweepNothing(t, q) // idempotent
	st := checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, []string{second}) {
		t.Fatalf("ready = %v", st.Ready)
	}
	if e := st.env(t, second); e.Expiries != 1 || e.Attempts != 1 || e.Failures != 0 {
		t.Errorf("envelope after expiry = %+v", e)
	}
	// A requeued message goes to the head, before anything pushed since.
	third := b.push(t, q, "third", nil)
	st = checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, []string{second, third}) {
		t.Fatalf("ready = %v", st.Ready)
	}
	again := b.take(t, q, nil)
	if again.ID != second || again.Attempt != 2 {
		t.Fatalf("retake = %s attempt %d", again.ID, again.Attempt)
	}
	if err := short.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		t.Errorf("old lease Ack = %v, want ErrNotHeld", err)
	}
	if err := again.Ack(ctx); err != nil {
		t.Errorf("new lease Ack: %v", err)
	}
	if err := long.Ack(ctx); err != nil {
		t.Errorf("long lease Ack: %v", err)
	}
	checkInvariants(t, b.rdb, q)
}

func TestExpiredAfterMaxDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "maxexpired"

	id := b.push(t, q, "x", &PushOpts{MaxDeliveries: 2})
	l := b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	b.expire(t, l, requeued)
	l = b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	if l.Attempt != 2 {
		t.Fatalf("attempt %d", l.Attempt)
	}
	b.expire(t, l, deadLettered)
	st := checkInvariants(t, b.rdb, q)
	d, ok := st.Dead[id]
	if !ok || d.Reason != ReasonExpired || d.Attempts != 2 || d.Expiries != 2 || d.Failures != 0 || string(d.Payload) != "x" {
		t.Fatalf("dead = %+v", st.Dead)
	}
	if len(st.Ready) != 0 || len(st.InFlight) != 0 {
		t.Fatalf("state = %+v", st)
	}
	if err := l.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		t.Errorf("Ack after dead-lettering = %v, want ErrNotHeld", err)
	}
}

func TestNackAfterMaxDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "maxfailed"

	// One expiry, then one failure: the reason is the last one, and both
	// are counted apart.
	id := b.push(t, q, "x", &PushOpts{MaxDeliveries: 2})
	l := b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	b.expire(t, l, requeued)
	l = b.take(t, q, nil)
	if err := l.Nack(ctx, time.Second); err != nil {
		t.Fatalf("Nack: %v", err)
	}
	st := checkInvariants(t, b.rdb, q)
	d, ok := st.Dead[id]
	if !ok || d.Reason != ReasonFailed || d.Attempts != 2 || d.Expiries != 1 || d.Failures != 1 {
		t.Fatalf("dead = %+v", st.Dead)
	}
	if len(st.Delayed) != 0 || len(st.Ready) != 0 {
		t.Fatalf("state = %+v", st)
	}

	// Unlimited deliveries: never dead-lettered.
	id = b.push(t, q, "y", &PushOpts{MaxDeliveries: Unlimited})
	for i := 1; i <= 12; i++ {
		l := b.take(t, q, nil)
		if l.ID != id || l.Attempt != i {
			t.Fatalf("take %d = %s attempt %d", i, l.ID, l.Attempt)
		}
		if err := l.Nack(ctx, 0); err != nil {
			t.Fatal(err)
		}
	}
	st = checkInvariants(t, b.rdb, q)
	if e := st.env(t, id); e.Failures != 12 || e.Max != 0 {
		t.Errorf("envelope = %+v", e)
	}
}

func TestSweep(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{MaxDeliveries: 1})
	ctx := t.Context()
	const q = "sweep"

	if r, err := b.c.Sweep(ctx, q, nil); err != nil || r.Requeued+r.DeadLettered+r.Promoted+r.Reclaimed != 0 || !r.Next().IsZero() || r.More {
		t.Fatalf("Sweep on an empty queue = %+v, %v", r, err)
	}
	// 3 leases due (2 requeued, 1 dead: max 1), 1 not due, 2 delayed due,
	// 1 delayed not due.
	for range 2 {
		b.push(t, q, "requeue", &PushOpts{MaxDeliveries: 5})
	}
	b.push(t, q, "dead", nil)
	b.push(t, q, "long", nil)
	short, err := b.c.TakeBatch(ctx, q, 3, &TakeOpts{LeaseFor: 3 * time.Millisecond})
	if err != nil || len(short) != 3 {
		t.Fatal(short, err)
	}
	long := b.take(t, q, &TakeOpts{LeaseFor: time.Hour})
	if _, err := b.c.PushBatch(ctx, q, [][]byte{[]byte("d1"), []byte("d2")}, &PushOpts{Delay: 2 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	late := b.push(t, q, "later", &PushOpts{Delay: time.Hour})
	lastDue := short[0].Deadline().UnixMilli()
	for _, l := range short {
		lastDue = max(lastDue, l.Deadline().UnixMilli())
	}
	st := checkInvariants(t, b.rdb, q)
	for _, due := range st.Delayed {
		if due < time.Now().Add(time.Minute).UnixMilli() {
			lastDue = max(lastDue, due)
		}
	}
	b.waitDue(t, lastDue)

	r, err := b.c.Sweep(ctx, q, nil)
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if r.Requeued != 2 || r.DeadLettered != 1 || r.Malformed != 0 || r.Promoted != 2 || r.Reclaimed != 0 || r.More {
		t.Fatalf("Sweep = %+v", r)
	}
	if len(r.Lags) != 3 {
		t.Errorf("Lags = %v, want 3", r.Lags)
	}
	for _, lag := range r.Lags {
		if lag <= 0 {
			t.Errorf("lag %v, want > 0", lag)
		}
	}
	st = checkInvariants(t, b.rdb, q)
	// The lease is due 1 ms after its deadline; the delayed message, due
	// in the same hour, may come first.
	next := long.Deadline().Add(time.Millisecond)
	if r.NextDelayed.Before(next) {
		next = r.NextDelayed
	}
	if !r.NextDeadline.Equal(long.Deadline()) || r.NextDelayed.UnixMilli() != st.Delayed[late] || !r.Next().Equal(next) {
		t.Errorf("Next deadline %v delayed %v; want %v and %d", r.NextDeadline, r.NextDelayed, long.Deadline(), st.Delayed[late])
	}
	if len(st.Ready) != 4 || len(st.InFlight) != 1 || len(st.Dead) != 1 || len(st.Delayed) != 1 {
		t.Fatalf("state = %+v", st)
	}
	if got, want := [4]int64{r.Counts.Ready, r.Counts.InFlight, r.Counts.Delayed, r.Counts.Dead}, [4]int64{4, 1, 1, 1}; got != want || r.Counts.Paused || r.Counts.OldestReady.IsZero() {
		t.Errorf("Sweep counts = %+v, want %+v", r.Counts, want)
	}
	for _, d := range st.Dead {
		if d.Reason != ReasonExpired || string(d.Payload) != "dead" {
			t.Errorf("dead letter = %+v", d)
		}
	}
	// Idempotent: a second sweep finds nothing to do.
	if r, err := b.c.Sweep(ctx, q, nil); err != nil || r.Requeued+r.DeadLettered+r.Promoted != 0 {
		t.Errorf("second Sweep = %+v, %v", r, err)
	}
}

func TestSweepLimitAndReclaim(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "sweeplimit"

	payloads := make([][]byte, 5)
	for i := range payloads {
		payloads[i] = []byte("x")
	}
	if _, err := b.c.PushBatch(ctx, q, payloads, nil); err != nil {
		t.Fatal(err)
	}
	ls, err := b.c.TakeBatch(ctx, q, 5, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	if err != nil || len(ls) != 5 {
		t.Fatal(ls, err)
	}
	b.waitDue(t, ls[0].Deadline().UnixMilli())
	total := 0
	for i := 0; ; i++ {
		r, err := b.c.Sweep(ctx, q, &SweepOpts{Limit: 2})
		if err != nil {
			t.Fatal(err)
		}
		total += r.Requeued
		if !r.More {
			break
		}
		if r.Requeued != 2 {
			t.Fatalf("sweep %d requeued %d with More set", i, r.Requeued)
		}
	}
	if total != 5 {
		t.Fatalf("requeued %d in all, want 5", total)
	}

	// Elements left on the claim list go back to the head of ready.
	k := KeysFor(q)
	if err := b.rdb.RPush(ctx, k.Claim, "c1", "c2").Err(); err != nil {
		t.Fatal(err)
	}
	if r, err := b.c.Sweep(ctx, q, nil); err != nil || r.Reclaimed != 0 {
		t.Fatalf("Sweep without Reclaim = %+v, %v", r, err)
	}
	r, err := b.c.Sweep(ctx, q, &SweepOpts{Reclaim: true})
	if err != nil || r.Reclaimed != 2 {
		t.Fatalf("Sweep with Reclaim = %+v, %v", r, err)
	}
	head, _ := b.rdb.LRange(ctx, k.Ready, 0, 1).Result()
	if !slices.Equal(head, []string{"c1", "c2"}) {
		t.Errorf("ready head = %q, want c1 c2 in order", head)
	}
	if n, _ := b.rdb.LLen(ctx, k.Claim).Result(); n != 0 {
		t.Errorf("claim list has %d left", n)
	}
	checkInvariants(t, b.rdb, q)
}

// TestSweepManyDelayed promotes more delayed messages in one call than Lua's
// unpack() can take (about 8000); a script error halfway would have left
// copies on both the ready list and the delayed set.
func TestSweepManyDelayed(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "manydelayed"
	const n = 8500

	payloads := make([][]byte, MaxBatch)
	for i := range payloads {
		payloads[i] = []byte("d")
	}
	for pushed := 0; pushed < n; pushed += MaxBatch {
		if _, err := b.c.PushBatch(ctx, q, payloads[:min(MaxBatch, n-pushed)], &PushOpts{Delay: time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	last, err := b.rdb.ZRangeWithScores(ctx, KeysFor(q).Delayed, -1, -1).Result()
	if err != nil || len(last) != 1 {
		t.Fatal(last, err)
	}
	b.waitDue(t, int64(last[0].Score))
	r, err := b.c.Sweep(ctx, q, &SweepOpts{Limit: 10 * SweepLimitDefault})
	if err != nil || r.Promoted != n {
		t.Fatalf("Sweep = %+v, %v; want %d promoted", r, err, n)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.Ready) != n || len(st.Delayed) != 0 {
		t.Fatalf("ready %d delayed %d", len(st.Ready), len(st.Delayed))
	}
}

func TestLeaseOf(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "leaseof"

	b.push(t, q, "x", nil)
	l := b.take(t, q, nil)
	for _, tt := range []struct{ queue, id, token string }{
		{"", l.ID, l.Token},
		{"a b", l.ID, l.Token},
		{q, "", l.Token},
		{q, "a|b", l.Token},
		{q, l.ID, ""},
		{q, l.ID, "0123"},
		{q, l.ID, "0123456789ABCDEF"},
		{q, l.ID, l.Token + "0"},
	} {
		got, err := b.c.LeaseOf(tt.queue, tt.id, tt.token)
		if got != nil || !(errors.Is(err, ErrInvalidArgument) || errors.Is(err, ErrInvalidQueue)) {
			t.Errorf("LeaseOf(%q, %q, %q) = %v, %v", tt.queue, tt.id, tt.token, got, err)
		}
	}
	if _, err := b.c.LeaseOf(q, "bad id", l.Token); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("LeaseOf(bad id) = %v, want ErrInvalidArgument", err)
	}
	if _, err := b.c.LeaseOf(q, l.ID, "nothex!!nothex!!"); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("LeaseOf(bad token) = %v, want ErrInvalidArgument", err)
	}
	h, err := b.c.LeaseOf(q, l.ID, l.Token)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Extend(ctx, time.Minute); err != nil {
		t.Fatalf("Extend via LeaseOf: %v", err)
	}
	if err := h.Ack(ctx); err != nil {
		t.Fatalf("Ack via LeaseOf: %v", err)
	}
	checkInvariants(t, b.rdb, q)
}

func TestFencingStaleToken(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "fence"

	b.push(t, q, "x", nil)
	old := b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	b.expire(t, old, requeued)
	cur := b.take(t, q, &TakeOpts{LeaseFor: time.Minute})
	if cur.ID != old.ID || cur.Token == old.Token || cur.Attempt != 2 {
		t.Fatalf("redelivery = %+v", cur)
	}
	before := snapshot(t, b.rdb)
	for name, f := range map[string]func() error{
		"Ack":        func() error { return old.Ack(ctx) },
		"AckBatch":   func() error { return b.c.AckBatch(ctx, []*Lease{old}) },
		"Nack":       func() error { return old.Nack(ctx, 0) },
		"Nack delay": func() error { return old.Nack(ctx, time.Second) },
		"Extend":     func() error { return old.Extend(ctx, time.Hour) },
		"DeadLetter": func() error { return old.DeadLetter(ctx) },
	} {
		if err := f(); !errors.Is(err, ErrNotHeld) {
			t.Errorf("%s with a stale token = %v, want ErrNotHeld", name, err)
		}
		sameSnapshot(t, name+" with a stale token", before, snapshot(t, b.rdb))
	}
	// A batch with one stale and one current lease acks the current one.
	err := b.c.AckBatch(ctx, []*Lease{old, cur})
	if !errors.Is(err, ErrNotHeld) || errors.Is(err, ErrStale) || strings.Count(err.Error(), "not held") != 1 {
		t.Fatalf("AckBatch(stale, current) = %v, want ErrNotHeld for the stale one only", err)
	}
	if n := b.ackedCount(t, q); n != 1 {
		t.Errorf("counts acked = %d, want 1", n)
	}
	if err := cur.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		t.Errorf("current lease after its batch ack = %v, want ErrNotHeld", err)
	}
	st := checkInvariants(t, b.rdb, q)
	if len(st.InFlight)+len(st.Ready) != 0 {
		t.Fatalf("state = %+v", st)
	}
}

func TestFencingCurrentHolderAcks(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "fence2"

	b.push(t, q, "x", nil)
	old := b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	b.expire(t, old, requeued)
	cur := b.take(t, q, nil)
	if err := old.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("stale Ack = %v", err)
	}
	if err := cur.Extend(ctx, time.Minute); err != nil {
		t.Fatalf("current Extend: %v", err)
	}
	if err := cur.Ack(ctx); err != nil {
		t.Fatalf("current Ack: %v", err)
	}
	checkInvariants(t, b.rdb, q)
}

func TestLateAck(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "lateack"

	// After the deadline but before anyone requeued it: the ack wins (the
	// documented choice; the shadow key may already be gone).
	b.push(t, q, "x", nil)
	l := b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	b.waitDue(t, l.Deadline().UnixMilli())
	if err := l.Ack(ctx); err != nil {
		t.Fatalf("late Ack before requeue: %v", err)
	}
	b.sweepNothing(t, q)

	// After the requeue: not held, and the message is on the ready list.
	b.push(t, q, "y", nil)
	l = b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Millisecond})
	b.expire(t, l, requeued)
	before := snapshot(t, b.rdb)
	if err := l.Ack(ctx); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Ack after requeue = %v, want ErrNotHeld", err)
	}
	sameSnapshot(t, "Ack after requeue", before, snapshot(t, b.rdb))
	st := checkInvariants(t, b.rdb, q)
	if !slices.Equal(st.Ready, []string{l.ID}) {
		t.Fatalf("ready = %v", st.Ready)
	}
}

func TestWakeChannel(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const q = "wake"

	ps := b.rdb.Subscribe(ctx, WakeChannel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	next := func() string {
		t.Helper()
		m, err := ps.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m.Payload
	}
	b.push(t, q, "x", nil)
	b.push(t, q, "y", nil)
	l := b.take(t, q, &TakeOpts{LeaseFor: time.Hour})
	if got, want := next(), "lease|"+itoaMS(l.Deadline())+"|"+q; got != want {
		t.Errorf("wake after take = %q, want %q", got, want)
	}
	// A later deadline is not a new earliest one: no message. An earlier
	// one is.
	b.take(t, q, &TakeOpts{LeaseFor: 2 * time.Hour})
	if err := l.Extend(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got, want := next(), "lease|"+itoaMS(l.Deadline())+"|"+q; got != want {
		t.Errorf("wake after extend = %q, want %q", got, want)
	}
	id := b.push(t, q, "z", &PushOpts{Delay: time.Hour})
	due := checkInvariants(t, b.rdb, q).Delayed[id]
	if got, want := next(), "delayed|"+itoaMS(time.UnixMilli(due))+"|"+q; got != want {
		t.Errorf("wake after delayed push = %q, want %q", got, want)
	}
	if err := l.Nack(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	due = checkInvariants(t, b.rdb, q).Delayed[l.ID]
	if got, want := next(), "delayed|"+itoaMS(time.UnixMilli(due))+"|"+q; got != want {
		t.Errorf("wake after nack = %q, want %q", got, want)
	}
}

// TestWakeOnEarliestTake covers each way a take decides whether its
// earliest new deadline comes before every deadline in the set: leases of
// the client's default length, of the take's, and of the message's own,
// shorter and longer than the default, with a deadline already in the set
// before, between or after them. A take that must not wake is followed by
// one that must, whose message has to be the next one on the channel.
func TestWakeOnEarliestTake(t *testing.T) {
	t.Parallel()
	b := setup(t, &Config{LeaseFor: 2 * time.Hour})
	ctx := t.Context()

	ps := b.rdb.Subscribe(ctx, WakeChannel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	expectWake := func(q string, l *Lease) {
		t.Helper()
		// bounded, so that a wake that never comes fails the test
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		m, err := ps.ReceiveMessage(rctx)
		if err != nil {
			t.Fatalf("no wake for the lease of %s with deadline %s: %v", q, itoaMS(l.Deadline()), err)
		}
		if want := "lease|" + itoaMS(l.Deadline()) + "|" + q; m.Payload != want {
			t.Fatalf("wake = %q, want %q", m.Payload, want)
		}
	}
	// take leases one message pushed with its own lease (0: none) for
	// LeaseFor (0: no override).
	take := func(q string, own, leaseFor time.Duration) *Lease {
		t.Helper()
		b.push(t, q, "m", &PushOpts{LeaseFor: own})
		return b.take(t, q, &TakeOpts{LeaseFor: leaseFor})
	}

	// The default length: the first lease wakes, a second of the same
	// length does not, a shorter one by the take does.
	q := "wake-default"
	expectWake(q, take(q, 0, 0))
	take(q, 0, 0)
	expectWake(q, take(q, 0, time.Hour))

	// A message's own lease shorter than the default, with the set's
	// earliest deadline between the two: it wakes.
	q = "wake-own-shorter"
	expectWake(q, take(q, 0, time.Hour))
	expectWake(q, take(q, time.Minute, 0))
	// ... and not when the set's earliest comes before it.
	take(q, 30*time.Minute, 0)
	expectWake(q, take(q, 0, time.Second))

	// A message's own lease longer than the default, with the set's
	// earliest deadline between the two: no wake. With none in the set
	// at or before it: a wake.
	q = "wake-own-longer"
	expectWake(q, take(q, 0, 150*time.Minute))
	take(q, 3*time.Hour, 0)
	expectWake(q, take(q, 0, time.Minute))
	q = "wake-own-longer-first"
	expectWake(q, take(q, 3*time.Hour, 0))
	take(q, 4*time.Hour, 0)
	expectWake(q, take(q, 0, time.Minute))
}

func itoaMS(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }
