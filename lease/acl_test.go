package lease

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/acldoc"
	"github.com/ackd/ackd/internal/redistest"
)

// The ACL lines of docs/SECURITY.md are the one definition of each role's
// rights: these tests parse them, so the document cannot drift from what
// the code needs.

// aclSetup reads the users of docs/SECURITY.md and starts a server with a
// client of the default user (allowed everything) for seeding and audits.
// That client runs its scripts with EVALSHA: it never loads the function
// library, so that each test decides whether the library is there when a
// role's operation runs.
func aclSetup(t *testing.T) (map[string]acldoc.User, *redistest.Server, *Client) {
	t.Helper()
	users, err := acldoc.Read("../docs/SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t)
	admin, err := New(srv.Client(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	admin.rdb.fn.off.Store(true)
	return users, srv, admin
}

// withLibrary loads the function library (as the daemon does at start)
// or, if !loaded, removes it (as FUNCTION FLUSH or a restart does).
func withLibrary(t *testing.T, admin *Client, loaded bool) {
	t.Helper()
	var err error
	if loaded {
		err = admin.LoadFunctions(t.Context())
	} else {
		err = admin.rdb.FunctionFlush(t.Context()).Err()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// placement is where every message of one queue is, read atomically:
// payload -> the places it was found in.
type placement struct {
	places    map[string][]string
	anomalies []string // broken structures: half a lease, half a dead letter, a stray shadow key
}

// place reads queue's state in one script call (as rdb's user, which must
// be allowed everything) and files every message by payload.
func place(t *testing.T, rdb redis.Scripter, queue string) placement {
	t.Helper()
	q := readQueue(t, rdb, queue)
	p := placement{places: map[string][]string{}}
	add := func(payload []byte, where string) {
		p.places[string(payload)] = append(p.places[string(payload)], where)
	}
	bad := func(format string, args ...any) { p.anomalies = append(p.anomalies, fmt.Sprintf(format, args...)) }

	for list, elems := range map[string][]string{"claim": q.claim, "ready": q.ready} {
		for _, el := range elems {
			if e, err := parseEnvelope([]byte(el)); err == nil {
				add(e.Payload, list)
			} else {
				add([]byte(el), list+" (raw)")
			}
		}
	}
	liveShadows := map[string]bool{}
	// leases files the leases of one format: records by field, deadlines
	// by member, shadow keys by field; parse reads the token and envelope
	// of a record and its field.
	leases := func(recs map[string]string, zs []redis.Z, shadows map[string]shadowKey, parse func(field string, rec []byte) (string, envelope, error)) {
		deadline := map[string]int64{}
		for _, z := range zs {
			deadline[z.Member.(string)] = int64(z.Score)
		}
		for field, rec := range recs {
			tok, e, err := parse(field, []byte(rec))
			if err != nil {
				add([]byte(rec), "in flight (malformed record)")
				continue
			}
			dl, has := deadline[field]
			if !has {
				add(e.Payload, "in flight without a deadline")
				bad("lease record %s has no deadline: never requeued", field)
				continue
			}
			add(e.Payload, "in flight")
			liveShadows[LeaseKey(queue, tok)] = true
			if sh := shadows[field]; !sh.exists && dl >= q.now {
				bad("lease %s has no shadow key before its deadline", field)
			} else if sh.exists && sh.expiresAt != dl {
				bad("shadow key of %s expires at %d, deadline %d", field, sh.expiresAt, dl)
			}
		}
		for field := range deadline {
			if _, ok := recs[field]; !ok {
				bad("deadline of %s without a lease record", field)
			}
		}
	}
	leases(q.held, q.due, q.heldShadows, func(token string, rec []byte) (string, envelope, error) {
		e, err := parseEnvelope(rec)
		return token, e, err
	})
	leases(q.leases, q.deadlines, q.shadows, func(_ string, rec []byte) (string, envelope, error) {
		tok, envb, ok := splitLeaseRecord(rec)
		e, err := parseEnvelope(envb)
		if !ok && err == nil {
			err = errors.New("no token")
		}
		return tok, e, err
	})
	for _, sk := range q.shadowKeys {
		if !liveShadows[sk] {
			bad("shadow key %s without a lease", sk)
		}
	}
	for _, z := range q.delayed {
		if e, err := parseEnvelope([]byte(z.Member.(string))); err == nil {
			add(e.Payload, "delayed")
		} else {
			add([]byte(z.Member.(string)), "delayed (malformed)")
		}
	}
	for _, id := range q.deadIDs {
		if _, ok := q.deadRecs[id]; !ok {
			bad("dead id %s without a record", id)
		}
	}
	for id, rec := range q.deadRecs {
		d := decodeDead(id, []byte(rec))
		payload := d.Payload
		if d.Raw != nil {
			payload = d.Raw
		}
		where := "dead (" + d.Reason + ")"
		if !slices.Contains(q.deadIDs, id) {
			where = "dead, unlisted"
			bad("dead record %s not in the dead set", id)
		}
		add(payload, where)
	}
	return p
}

// aclCounts is one cell of the leave-one-out table.
type aclCounts struct{ lost, duplicated, misplaced int }

// aclEnv is one operation's run: a fresh queue, seeded by admin (the
// default user) and acted on by user (the role under test).
type aclEnv struct {
	t       *testing.T
	queue   string
	admin   *Client
	adminDB *redis.Client
	user    *Client
	// tracked payloads; vanish marks those the operation may remove for
	// good (acked, purged, or never accepted because the push failed)
	payloads []string
	vanish   map[string]bool
	// c, when set, is the context of every call (default: the test's)
	c context.Context
}

func (e *aclEnv) ctx() context.Context {
	if e.c != nil {
		return e.c
	}
	return e.t.Context()
}

func (e *aclEnv) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("seeding %s: %v", e.queue, err)
	}
}

// push adds a message as admin and tracks its payload.
func (e *aclEnv) push(payload string, opts *PushOpts) string {
	e.t.Helper()
	id, err := e.admin.Push(e.ctx(), e.queue, []byte(payload), opts)
	e.must(err)
	e.payloads = append(e.payloads, payload)
	return id
}

// raw RPUSHes bytes no ackd client wrote, and tracks them.
func (e *aclEnv) raw(payload string) { e.rawAs(payload, payload) }

// rawAs RPUSHes elem and tracks it as payload.
func (e *aclEnv) rawAs(elem, payload string) {
	e.t.Helper()
	e.must(e.adminDB.RPush(e.ctx(), KeysFor(e.queue).Ready, elem).Err())
	e.payloads = append(e.payloads, payload)
}

// lease pushes and takes a message as admin and returns the lease as a
// handle of the user under test.
func (e *aclEnv) lease(payload string, popts *PushOpts, leaseFor time.Duration) *Lease {
	e.t.Helper()
	e.push(payload, popts)
	l, err := e.admin.Take(e.ctx(), e.queue, &TakeOpts{LeaseFor: leaseFor})
	e.must(err)
	ul, err := e.user.LeaseOf(e.queue, l.ID, l.Token)
	e.must(err)
	ul.deadline.Store(l.deadline.Load())
	return ul
}

// due waits until Redis's clock is past every deadline so far.
func (e *aclEnv) due(ls ...*Lease) {
	e.t.Helper()
	for _, l := range ls {
		dl := l.deadline.Load()
		redistest.WaitFor(e.t, 5*time.Second, func() bool {
			tm, err := e.adminDB.Time(e.ctx()).Result()
			return err == nil && tm.UnixMilli() > dl
		}, "redis time past %d", dl)
	}
}

// delayedDue waits until n delayed messages are due by Redis's clock.
func (e *aclEnv) delayedDue(n int64) {
	e.t.Helper()
	redistest.WaitFor(e.t, 5*time.Second, func() bool {
		tm, err := e.adminDB.Time(e.ctx()).Result()
		if err != nil {
			return false
		}
		c, err := e.adminDB.ZCount(e.ctx(), KeysFor(e.queue).Delayed, "-inf", fmt.Sprint(tm.UnixMilli()-1)).Result()
		return err == nil && c == n
	}, "%d delayed messages due", n)
}

// dead puts a message in the dead set (reason killed) and returns its id.
func (e *aclEnv) dead(payload string) string {
	e.t.Helper()
	l := e.lease(payload, nil, 0)
	al, err := e.admin.LeaseOf(e.queue, l.ID, l.Token)
	e.must(err)
	e.must(al.DeadLetter(e.ctx()))
	return l.ID
}

// malformedLease writes a lease record ackd cannot parse, with a deadline,
// and returns a handle of the user under test for it.
func (e *aclEnv) malformedLease(rec string) *Lease {
	e.t.Helper()
	k := KeysFor(e.queue)
	token := fmt.Sprintf("%016x", 0xbad0+len(e.payloads))
	e.must(e.adminDB.HSet(e.ctx(), k.Held, token, rec).Err())
	e.must(e.adminDB.ZAdd(e.ctx(), k.Due, redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: token}).Err())
	e.payloads = append(e.payloads, rec)
	l, err := e.user.LeaseOf(e.queue, "bad", token)
	e.must(err)
	// the token alone: the lease's id is unknown
	l.byID = false
	return l
}

// want reports a result the operation must have with every right it needs.
func want(cond bool, format string, args ...any) error {
	if cond {
		return nil
	}
	return fmt.Errorf(format, args...)
}

// audit counts what the leave-one-out table reports for one run.
func (e *aclEnv) audit() (aclCounts, []string) {
	e.t.Helper()
	p := place(e.t, e.adminDB, e.queue)
	var c aclCounts
	var why []string
	tracked := map[string]bool{}
	for _, pl := range e.payloads {
		tracked[pl] = true
		switch n := len(p.places[pl]); {
		case n == 0 && !e.vanish[pl]:
			c.lost++
			why = append(why, fmt.Sprintf("LOST %q", pl))
		case n > 1:
			c.duplicated++
			why = append(why, fmt.Sprintf("DUPLICATED %q: %v", pl, p.places[pl]))
		}
	}
	for pl, where := range p.places {
		if !tracked[pl] {
			c.misplaced++
			why = append(why, fmt.Sprintf("UNKNOWN %q: %v", pl, where))
		}
	}
	c.misplaced += len(p.anomalies)
	for _, a := range p.anomalies {
		why = append(why, "MISPLACED "+a)
	}
	return c, why
}

// aclOp is one operation of one role. run seeds the queue as e.admin, then
// acts as e.user and returns the error of that act, or of a result that
// is wrong although the act succeeded.
type aclOp struct {
	role, name string
	run        func(e *aclEnv) error
}

// aclOps lists every operation of every role. A new operation is one line.
var aclOps = []aclOp{
	{"producer", "push", func(e *aclEnv) error { return e.userPush([]string{"p1"}, nil) }},
	{"producer", "push batch", func(e *aclEnv) error { return e.userPush([]string{"p1", "p2", "p3"}, nil) }},
	{"producer", "delayed push", func(e *aclEnv) error { return e.userPush([]string{"p1", "p2"}, &PushOpts{Delay: time.Hour}) }},

	{"consumer", "take", func(e *aclEnv) error {
		e.push("m1", nil)
		return e.userTake(1, 1, nil)
	}},
	{"consumer", "take batch", func(e *aclEnv) error {
		e.push("m1", nil)
		e.raw("raw1")
		e.push("m2", nil)
		return e.userTake(3, 3, nil)
	}},
	{"consumer", "take malformed", func(e *aclEnv) error {
		e.raw(envelopeMark + "broken")
		e.push("m1", nil)
		return e.userTake(2, 1, nil)
	}},
	{"consumer", "take second copy", func(e *aclEnv) error {
		// a second copy of an id in flight is a second lease
		l := e.lease("m1", nil, 0)
		copy := envelope{ID: l.ID, Payload: []byte("copy of m1")}
		e.rawAs(string(copy.appendTo(nil)), "copy of m1")
		e.push("m2", nil)
		return e.userTake(2, 2, nil)
	}},
	{"consumer", "take oversized", func(e *aclEnv) error {
		e.raw(strings.Repeat("o", 2000)) // the user's MaxPayload is 1024
		e.push("m1", nil)
		return e.userTake(2, 1, nil)
	}},
	{"consumer", "take claimed", func(e *aclEnv) error {
		e.push("m1", nil)
		k := KeysFor(e.queue)
		e.must(e.adminDB.LMove(e.ctx(), k.Ready, k.Claim, "LEFT", "RIGHT").Err())
		e.push("m2", nil)
		return e.userTake(2, 2, nil)
	}},
	{"consumer", "take due delayed", func(e *aclEnv) error {
		e.push("m1", &PushOpts{Delay: time.Millisecond})
		e.push("m2", &PushOpts{Delay: time.Millisecond})
		e.delayedDue(2)
		return e.userTake(2, 2, nil)
	}},
	{"consumer", "take waiting", func(e *aclEnv) error {
		e.push("m1", &PushOpts{Delay: 20 * time.Millisecond})
		return e.userTake(1, 1, &TakeOpts{Wait: 10 * time.Second})
	}},
	{"consumer", "ack", func(e *aclEnv) error {
		l := e.lease("m1", nil, 0)
		err := l.Ack(e.ctx())
		if err == nil {
			e.vanish["m1"] = true
		}
		return err
	}},
	{"consumer", "ack batch", func(e *aclEnv) error {
		ls := []*Lease{e.lease("m1", nil, 0), e.lease("m2", nil, 0)}
		err := e.user.AckBatch(e.ctx(), ls)
		if err == nil {
			e.vanish["m1"], e.vanish["m2"] = true, true
		}
		return err
	}},
	{"consumer", "ack and take", func(e *aclEnv) error {
		l := e.lease("m1", nil, 0)
		e.push("m2", nil)
		e.raw("raw3")
		ls, errs, err := e.user.ackTake(e.ctx(), e.queue, []*Lease{l}, 3, 0)
		if err != nil {
			return err
		}
		e.vanish["m1"] = errs[0] == nil
		return want(errs[0] == nil && len(ls) == 2, "ack and take: %v, %d taken", errs, len(ls))
	}},
	{"consumer", "ack and take, delayed due", func(e *aclEnv) error {
		ls := []*Lease{e.lease("m1", nil, 0), e.lease("m2", nil, 0)}
		e.push("m3", &PushOpts{Delay: time.Millisecond})
		e.delayedDue(1)
		taken, errs, err := e.user.ackTake(e.ctx(), e.queue, ls, 2, 0)
		if err != nil {
			return err
		}
		e.vanish["m1"], e.vanish["m2"] = errs[0] == nil, errs[1] == nil
		return want(errs[0] == nil && errs[1] == nil && len(taken) == 1, "ack and take: %v, %d taken", errs, len(taken))
	}},
	{"consumer", "ack and take, paused", func(e *aclEnv) error {
		l := e.lease("m1", nil, 0)
		e.push("m2", nil)
		_, err := e.admin.Pause(e.ctx(), e.queue)
		e.must(err)
		taken, errs, err := e.user.ackTake(e.ctx(), e.queue, []*Lease{l}, 2, 0)
		if err != nil {
			return err
		}
		e.vanish["m1"] = errs[0] == nil
		return want(errs[0] == nil && len(taken) == 0, "ack and take, paused: %v, %d taken", errs, len(taken))
	}},
	{"consumer", "ack and take, oversized", func(e *aclEnv) error {
		l := e.lease("m1", nil, 0)
		e.raw(strings.Repeat("o", 2000)) // the user's MaxPayload is 1024
		e.push("m2", nil)
		taken, errs, err := e.user.ackTake(e.ctx(), e.queue, []*Lease{l}, 2, 0)
		if err != nil {
			return err
		}
		e.vanish["m1"] = errs[0] == nil
		return want(errs[0] == nil && len(taken) == 1, "ack and take, oversized: %v, %d taken", errs, len(taken))
	}},
	{"consumer", "ack and take, reporting what remains", func(e *aclEnv) error {
		// After an empty take the next asks for one slot and, filling it,
		// for the ready list's length (LLEN, after the writes).
		l := e.lease("m1", nil, 0)
		if _, _, err := e.user.ackTake(e.ctx(), e.queue, nil, 1, 0); err != nil {
			return err
		}
		e.push("m2", nil)
		e.push("m3", nil)
		taken, errs, err := e.user.ackTake(e.ctx(), e.queue, []*Lease{l}, 2, 0)
		if err != nil {
			return err
		}
		e.vanish["m1"] = errs[0] == nil
		return want(errs[0] == nil && len(taken) == 1, "ack and take, reporting: %v, %d taken", errs, len(taken))
	}},
	{"consumer", "AckAndTake waiting", func(e *aclEnv) error {
		// After a take that found the queue empty: the ack, BLMOVE and the
		// take in one pipeline. The error says whether the ack happened.
		l := e.lease("m1", nil, 0)
		e.user.estimate(e.queue).Store(0)
		e.push("m2", nil)
		next, err := l.AckAndTake(e.ctx(), &TakeOpts{Wait: 10 * time.Second})
		e.vanish["m1"] = !errors.Is(err, ErrAckUnconfirmed) && !errors.Is(err, ErrNotHeld) && !errors.Is(err, ErrStale)
		if next == nil {
			return err
		}
		return want(err == nil, "AckAndTake waiting: %v", err)
	}},
	{"consumer", "nack", func(e *aclEnv) error { return e.lease("m1", nil, 0).Nack(e.ctx(), 0) }},
	{"consumer", "nack with delay", func(e *aclEnv) error { return e.lease("m1", nil, 0).Nack(e.ctx(), time.Hour) }},
	{"consumer", "nack last delivery", func(e *aclEnv) error {
		return e.lease("m1", &PushOpts{MaxDeliveries: 1}, 0).Nack(e.ctx(), 0)
	}},
	{"consumer", "extend", func(e *aclEnv) error { return e.lease("m1", nil, 0).Extend(e.ctx(), time.Hour) }},
	{"consumer", "dead-letter", func(e *aclEnv) error { return e.lease("m1", nil, 0).DeadLetter(e.ctx()) }},
	{"consumer", "fail", func(e *aclEnv) error { return e.lease("m1", nil, 0).Fail(e.ctx(), errors.New("no retry helps")) }},
	{"consumer", "release", func(e *aclEnv) error { return e.lease("m1", nil, 0).Release(e.ctx()) }},
	{"consumer", "release batch, malformed record", func(e *aclEnv) error {
		ls := []*Lease{e.lease("m1", nil, 0), e.malformedLease("not a lease record"), e.lease("m2", nil, 0)}
		err := e.user.ReleaseBatch(e.ctx(), ls)
		if err != nil && err.Error() == ls[1].statusErr("release", 3).Error() {
			return nil // what it must say of the malformed record, and only that
		}
		return err
	}},

	{"daemon", "sweep due leases", func(e *aclEnv) error {
		l1 := e.lease("m1", nil, time.Millisecond)
		l2 := e.lease("m2", &PushOpts{MaxDeliveries: 1}, time.Millisecond)
		e.due(l1, l2)
		r, err := e.user.Sweep(e.ctx(), e.queue, nil)
		if err != nil {
			return err
		}
		return want(r.Requeued == 1 && r.DeadLettered == 1, "sweep: %+v", r)
	}},
	{"daemon", "sweep malformed record", func(e *aclEnv) error {
		k := KeysFor(e.queue)
		e.must(e.adminDB.HSet(e.ctx(), k.Held, "0000000000000bad", "not a lease record").Err())
		e.must(e.adminDB.ZAdd(e.ctx(), k.Due, redis.Z{Score: 1, Member: "0000000000000bad"}).Err())
		e.payloads = append(e.payloads, "not a lease record")
		r, err := e.user.Sweep(e.ctx(), e.queue, nil)
		if err != nil {
			return err
		}
		return want(r.Malformed == 1, "sweep: %+v", r)
	}},
	{"daemon", "sweep format-1 leases", func(e *aclEnv) error {
		// left by an older version: one to requeue, one on its last delivery
		format1Lease(e.t, e.adminDB, e.queue, "00000000000000f1", envelope{ID: "old-1", Attempts: 1, Payload: []byte("m1")}, 1)
		format1Lease(e.t, e.adminDB, e.queue, "00000000000000f2", envelope{ID: "old-2", Attempts: 1, Max: 1, Payload: []byte("m2")}, 2)
		e.payloads = append(e.payloads, "m1", "m2")
		r, err := e.user.Sweep(e.ctx(), e.queue, nil)
		if err != nil {
			return err
		}
		return want(r.Requeued == 1 && r.DeadLettered == 1, "sweep: %+v", r)
	}},
	{"daemon", "sweep pulls in far due times", func(e *aclEnv) error {
		// (A foreign deadline would also leave ackd's shadow key at its
		// old expiry, which this audit counts; TestAbsurdDeadlines covers it.)
		e.push("m1", &PushOpts{Delay: time.Hour})
		k := KeysFor(e.queue)
		elem := e.adminDB.ZRange(e.ctx(), k.Delayed, 0, 0).Val()[0]
		e.must(e.adminDB.ZAdd(e.ctx(), k.Delayed, redis.Z{Score: math.Inf(1), Member: elem}).Err())
		r, err := e.user.Sweep(e.ctx(), e.queue, nil)
		if err != nil {
			return err
		}
		return want(r.NextDelayed.Before(time.Now().Add(MaxLeaseFor+time.Minute)), "sweep: %+v", r)
	}},
	{"daemon", "sweep promotes", func(e *aclEnv) error {
		e.push("m1", &PushOpts{Delay: time.Millisecond})
		e.delayedDue(1)
		r, err := e.user.Sweep(e.ctx(), e.queue, nil)
		if err != nil {
			return err
		}
		return want(r.Promoted == 1, "sweep: %+v", r)
	}},
	{"daemon", "sweep reclaims", func(e *aclEnv) error {
		e.push("m1", nil)
		k := KeysFor(e.queue)
		e.must(e.adminDB.LMove(e.ctx(), k.Ready, k.Claim, "LEFT", "RIGHT").Err())
		r, err := e.user.Sweep(e.ctx(), e.queue, &SweepOpts{Reclaim: true})
		if err != nil {
			return err
		}
		return want(r.Reclaimed == 1, "sweep: %+v", r)
	}},
	{"daemon", "registry scan and stats", func(e *aclEnv) error { return e.userScanStats() }},

	{"admin", "dead letters", func(e *aclEnv) error {
		e.dead("m1")
		d, err := e.user.DeadLetters(e.ctx(), e.queue, 0, 10)
		if err != nil {
			return err
		}
		return want(len(d) == 1, "dead letters: %d", len(d))
	}},
	{"admin", "replay", func(e *aclEnv) error { return e.userDeadOp(false, true) }},
	{"admin", "replay all", func(e *aclEnv) error { return e.userDeadOp(false, false) }},
	{"admin", "purge", func(e *aclEnv) error { return e.userDeadOp(true, true) }},
	{"admin", "purge all", func(e *aclEnv) error { return e.userDeadOp(true, false) }},
	{"admin", "queues and stats", func(e *aclEnv) error { return e.userStats() }},
}

// userPush pushes payloads as the user; payloads of a failed push may be
// missing, but never in two places.
func (e *aclEnv) userPush(payloads []string, opts *PushOpts) error {
	bs := make([][]byte, len(payloads))
	for i, p := range payloads {
		bs[i] = []byte(p)
		e.payloads = append(e.payloads, p)
	}
	_, err := e.user.PushBatch(e.ctx(), e.queue, bs, opts)
	if err != nil {
		for _, p := range payloads {
			e.vanish[p] = true
		}
	}
	return err
}

// userDeadOp makes two dead letters, then replays or purges the first
// (byID) or all of them as the user.
func (e *aclEnv) userDeadOp(purge, byID bool) error {
	ids := []string{e.dead("m1")}
	e.dead("m2")
	if !byID {
		ids = nil
	}
	op := e.user.Replay
	if purge {
		op = e.user.Purge
		e.vanish["m1"], e.vanish["m2"] = true, !byID
	}
	n, err := op(e.ctx(), e.queue, ids...)
	if err != nil {
		return err
	}
	return want(n == 2-len(ids), "purge %v: %d done", purge, n)
}

func (e *aclEnv) userTake(n, leased int, opts *TakeOpts) error {
	ls, err := e.user.TakeBatch(e.ctx(), e.queue, n, opts)
	if err != nil {
		return err
	}
	return want(len(ls) == leased, "took %d, want %d", len(ls), leased)
}

func (e *aclEnv) userStats() error {
	e.push("m1", nil)
	qs, err := e.user.Queues(e.ctx())
	if err != nil {
		return err
	}
	s, err := e.user.Stats(e.ctx(), e.queue)
	if err != nil {
		return err
	}
	return want(slices.Contains(qs, e.queue) && s.Ready == 1, "queues %v, stats %+v", qs, s)
}

// userScanStats is userStats the daemon's way: the registry read with
// ForEachQueue (SSCAN, EXISTS). A daemon for one queue runs with
// ACKD_QUEUES and never reads the registry.
func (e *aclEnv) userScanStats() error {
	e.push("m1", nil)
	if e.queue == "orders" {
		s, err := e.user.Stats(e.ctx(), e.queue)
		if err != nil {
			return err
		}
		return want(s.Ready == 1, "stats %+v", s)
	}
	var qs []string
	if err := e.user.ForEachQueue(e.ctx(), func(_ context.Context, page []string) error {
		qs = append(qs, page...)
		return nil
	}); err != nil {
		return err
	}
	s, err := e.user.Stats(e.ctx(), e.queue)
	if err != nil {
		return err
	}
	return want(slices.Contains(qs, e.queue) && s.Ready == 1, "queues %v, stats %+v", qs, s)
}

// runACLOp runs op on a fresh queue with user as the role's client, and
// reports whether that client ended up running its scripts with EVALSHA.
func runACLOp(t *testing.T, admin *Client, user *redis.Client, queue string, op aclOp) (c aclCounts, why []string, evalsha bool, opErr error) {
	t.Helper()
	uc, err := New(user, &Config{MaxPayload: 1024})
	if err != nil {
		t.Fatal(err)
	}
	e := &aclEnv{t: t, queue: queue, admin: admin, adminDB: admin.rdb.UniversalClient.(*redis.Client), user: uc, vanish: map[string]bool{}}
	opErr = op.run(e)
	c, why = e.audit()
	return c, why, !uc.rdb.fn.fcalls(), opErr
}

// TestACLRoles runs every operation of each role as the user that
// docs/SECURITY.md defines for it, for every queue and for one queue: each
// succeeds, leaves every message in exactly one place, runs its scripts
// as functions (FCALL), and Redis refuses nothing (its ACL LOG stays
// empty). The function library is there, as the daemon loads it at
// start, except for the daemon's own operations, which load it.
func TestACLRoles(t *testing.T) {
	t.Parallel()
	roles, srv, admin := aclSetup(t)
	for _, name := range slices.Sorted(maps.Keys(roles)) {
		r := roles[name]
		user := srv.SetUser(t, r.Name, r.Password, r.Rules...)
		for i, op := range aclOps {
			if op.role != r.Role {
				continue
			}
			queue := fmt.Sprintf("%s.%d", r.Name, i)
			if strings.HasSuffix(r.Name, "-orders") {
				queue = "orders"
			}
			withLibrary(t, admin, r.Role != "daemon")
			c, why, evalsha, err := runACLOp(t, admin, user, queue, op)
			if err != nil {
				t.Errorf("%s: %s: %v", r.Name, op.name, err)
			}
			if evalsha {
				t.Errorf("%s: %s: fell back to EVALSHA", r.Name, op.name)
			}
			if c != (aclCounts{}) {
				t.Errorf("%s: %s: %+v: %v", r.Name, op.name, c, why)
			}
			if log := srv.ACLLog(t); len(log) > 0 {
				t.Errorf("%s: %s: Redis refused %v", r.Name, op.name, log)
			}
			if queue == "orders" {
				clearQueue(t, admin.rdb.UniversalClient.(*redis.Client), queue)
			}
		}
	}
}

// TestACLLeaveOneOut runs every operation of each role with each of its
// rights removed in turn. An operation may fail then, but every message
// must still be in exactly one place: Redis keeps the writes a script made
// before a refused command, so a script that removed a message before
// writing its new place would lose it. The function library is missing
// before each operation: a role that may load it does, the others (and
// any without FCALL) fall back to EVALSHA; the table counts the
// operations whose client ran its scripts with EVALSHA in the end.
func TestACLLeaveOneOut(t *testing.T) {
	t.Parallel()
	roles, srv, admin := aclSetup(t)
	var table strings.Builder
	fmt.Fprintf(&table, "%-9s %-26s %5s %5s %5s %6s %7s\n", "role", "removed", "lost", "dup", "misp", "failed", "evalsha")
	n := 0
	for _, role := range acldoc.Roles {
		r := roles["ackd-"+role]
		for _, v := range leaveOneOut(r) {
			grant := v.removed
			user := srv.SetUser(t, r.Name, r.Password, v.rules...)
			var sum aclCounts
			failed, fallbacks := 0, 0
			for _, op := range aclOps {
				if op.role != role {
					continue
				}
				n++
				withLibrary(t, admin, false)
				c, why, evalsha, err := runACLOp(t, admin, user, fmt.Sprintf("loo.%d", n), op)
				if evalsha {
					fallbacks++
				}
				if err != nil {
					failed++
					if !errors.Is(err, ErrNoPermission) {
						t.Errorf("%s without %s: %s: error %v does not wrap ErrNoPermission", role, grant, op.name, err)
					}
				}
				sum.lost += c.lost
				sum.duplicated += c.duplicated
				sum.misplaced += c.misplaced
				if len(why) > 0 {
					t.Errorf("%s without %s: %s (err %v): %s", role, grant, op.name, err, strings.Join(why, "; "))
				}
			}
			fmt.Fprintf(&table, "%-9s %-26s %5d %5d %5d %6d %7d\n", role, grant, sum.lost, sum.duplicated, sum.misplaced, failed, fallbacks)
			_ = srv.ACLLog(t)
		}
	}
	t.Logf("leave-one-out, %d runs (per role and removed right: messages lost, duplicated, misplaced; operations that failed):\n%s", n, table.String())
}

// aclVariant is a role's rules with one right removed.
type aclVariant struct {
	removed string
	rules   []string
}

// queueKeys are the key patterns of one queue, one per key.
var queueKeys = []string{"ready", "claim", "held", "due", "leases", "deadlines", "delayed", "dead", "deadmsgs", "paused", "counts", "lease:*"}

// leaveOneOut lists u's rules with each grant removed in turn; where u has
// every key of every queue (~ackd:{*}:*), also with each single key of a
// queue removed, so that a script writing one key it may not is caught.
func leaveOneOut(u acldoc.User) []aclVariant {
	var out []aclVariant
	for _, g := range u.Grants() {
		out = append(out, aclVariant{g, u.Without(g)})
		if g != "~ackd:{*}:*" {
			continue
		}
		for _, skip := range queueKeys {
			rules := u.Without(g)
			for _, k := range queueKeys {
				if k != skip {
					rules = append(rules, "~ackd:{*}:"+k)
				}
			}
			out = append(out, aclVariant{"key ackd:{*}:" + skip, rules})
		}
	}
	return out
}

// clearQueue deletes every key of queue.
func clearQueue(t *testing.T, rdb *redis.Client, queue string) {
	t.Helper()
	keys, err := rdb.Keys(t.Context(), "ackd:{"+queue+"}:*").Result()
	if err == nil && len(keys) > 0 {
		err = rdb.Del(t.Context(), keys...).Err()
	}
	if err != nil {
		t.Fatalf("clear %s: %v", queue, err)
	}
}
