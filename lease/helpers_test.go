package lease

import (
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

// testBundle is one test's private Redis server and clients.
type testBundle struct {
	srv *redistest.Server
	rdb *redis.Client
	c   *Client
}

// setup starts a private redis-server with serverFlags and a Client over
// it with cfg.
func setup(t *testing.T, cfg *Config, serverFlags ...string) *testBundle {
	t.Helper()
	srv := redistest.Start(t, serverFlags...)
	rdb := srv.Client(t)
	c, err := New(rdb, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &testBundle{srv: srv, rdb: rdb, c: c}
}

func (b *testBundle) push(t *testing.T, queue, payload string, opts *PushOpts) string {
	t.Helper()
	id, err := b.c.Push(t.Context(), queue, []byte(payload), opts)
	if err != nil {
		t.Fatalf("Push(%s, %q): %v", queue, payload, err)
	}
	return id
}

func (b *testBundle) take(t *testing.T, queue string, opts *TakeOpts) *Lease {
	t.Helper()
	l, err := b.c.Take(t.Context(), queue, opts)
	if err != nil {
		t.Fatalf("Take(%s): %v", queue, err)
	}
	return l
}

// noMessage fails unless queue has nothing to take right now.
func (b *testBundle) noMessage(t *testing.T, queue string) {
	t.Helper()
	l, err := b.c.Take(t.Context(), queue, nil)
	if !errors.Is(err, ErrNoMessage) {
		if l != nil {
			t.Fatalf("Take(%s): got message %s %q, want ErrNoMessage", queue, l.ID, l.Payload)
		}
		t.Fatalf("Take(%s): err %v, want ErrNoMessage", queue, err)
	}
}

// redisNow reads Redis's clock in ms, the clock every script uses.
func (b *testBundle) redisNow(t *testing.T) int64 {
	t.Helper()
	tm, err := b.rdb.Time(t.Context()).Result()
	if err != nil {
		t.Fatalf("TIME: %v", err)
	}
	return tm.UnixMilli()
}

// waitDue waits until Redis's clock is past deadline ms, so that a lease
// with that deadline is due.
func (b *testBundle) waitDue(t *testing.T, deadline int64) {
	t.Helper()
	redistest.WaitFor(t, 5*time.Second, func() bool { return b.redisNow(t) > deadline },
		"redis time past %d", deadline)
}

// expire waits until l is due and requeues it, asserting the result.
func (b *testBundle) expire(t *testing.T, l *Lease, want RequeueResult) {
	t.Helper()
	b.waitDue(t, l.Deadline().UnixMilli())
	res, lag, err := b.c.Requeue(t.Context(), l.Queue, l.ID)
	if want == DeadLettered && errors.Is(err, ErrMalformed) {
		err = nil
	}
	if err != nil || res != want {
		t.Fatalf("Requeue(%s): %v, %v, want %v", l.ID, res, err, want)
	}
	if lag <= 0 {
		t.Errorf("Requeue(%s): lag %v, want > 0", l.ID, lag)
	}
}

// waitBlocked waits until n clients are blocked in BLMOVE.
func waitBlocked(t *testing.T, rdb *redis.Client, n int) {
	t.Helper()
	redistest.WaitFor(t, 5*time.Second, func() bool {
		list, err := rdb.ClientList(t.Context()).Result()
		if err != nil {
			t.Fatalf("CLIENT LIST: %v", err)
		}
		blocked := 0
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, " cmd=blmove ") && hasFlag(line, 'b') {
				blocked++
			}
		}
		return blocked >= n
	}, "%d consumers blocked in BLMOVE", n)
}

func hasFlag(clientLine string, f byte) bool {
	for _, field := range strings.Fields(clientLine) {
		if v, ok := strings.CutPrefix(field, "flags="); ok {
			return strings.IndexByte(v, f) >= 0
		}
	}
	return false
}

// snapshot returns every key of the database with its DUMP and TTL state,
// so that two snapshots compare equal only if nothing was written.
func snapshot(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	ctx := t.Context()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatalf("KEYS: %v", err)
	}
	out := make(map[string]string, len(keys))
	for _, k := range keys {
		d, err := rdb.Dump(ctx, k).Result()
		if err != nil {
			t.Fatalf("DUMP %s: %v", k, err)
		}
		at, err := rdb.Do(ctx, "pexpiretime", k).Int64()
		if err != nil {
			t.Fatalf("PEXPIRETIME %s: %v", k, err)
		}
		out[k] = fmt.Sprintf("%q expires %d", d, at)
	}
	return out
}

// sameSnapshot fails if anything was written between two snapshots.
func sameSnapshot(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	if maps.Equal(before, after) {
		return
	}
	for _, k := range slices.Sorted(maps.Keys(after)) {
		if b, ok := before[k]; !ok {
			t.Errorf("%s: key %s was created", what, k)
		} else if b != after[k] {
			t.Errorf("%s: key %s changed", what, k)
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Errorf("%s: key %s was deleted", what, k)
		}
	}
}

// state is where every message of one queue is, as checkInvariants found it.
type state struct {
	Ready     []string         // ids on the claim list then the ready list, head first
	Raw       [][]byte         // raw payloads (no envelope) on claim and ready
	Broken    [][]byte         // elements that claim to be envelopes but are not
	InFlight  map[string]int64 // id -> deadline ms
	Tokens    map[string]string
	Delayed   map[string]int64 // id -> due ms
	Dead      map[string]DeadLetter
	readyEnvs map[string]envelope
}

func (s state) env(t *testing.T, id string) envelope {
	t.Helper()
	e, ok := s.readyEnvs[id]
	if !ok {
		t.Fatalf("message %s is not ready or delayed", id)
	}
	return e
}

// checkInvariants reads every key of queue and checks the invariants of
// the key layout:
//   - every message id is in exactly one of: the claim or ready list, in
//     flight, the delayed set (a dead letter may share an id with a live
//     message only when it is a malformed second copy);
//   - the leases HASH and the deadlines ZSET hold the same ids; each lease
//     record is "token|envelope" with the envelope's id equal to the field;
//   - each live lease's shadow key holds the id and expires exactly at the
//     ZSET deadline, or is gone because that deadline has passed; there is
//     no shadow key without its lease;
//   - the dead ZSET and the deadmsgs HASH hold the same ids, and every dead
//     record parses.
func checkInvariants(t *testing.T, rdb *redis.Client, queue string) state {
	t.Helper()
	k := KeysFor(queue)
	q := readQueue(t, rdb, queue)
	s := state{
		InFlight:  map[string]int64{},
		Tokens:    map[string]string{},
		Delayed:   map[string]int64{},
		Dead:      map[string]DeadLetter{},
		readyEnvs: map[string]envelope{},
	}
	where := map[string]string{}
	place := func(id, p string) {
		t.Helper()
		if prev, ok := where[id]; ok {
			t.Errorf("invariant: message %s is both %s and %s", id, prev, p)
		}
		where[id] = p
	}

	for _, el := range slices.Concat(q.claim, q.ready) {
		b := []byte(el)
		if !isEnvelope(b) {
			s.Raw = append(s.Raw, b)
			continue
		}
		e, err := parseEnvelope(b)
		if err != nil {
			s.Broken = append(s.Broken, b)
			continue
		}
		place(e.ID, "ready")
		s.Ready = append(s.Ready, e.ID)
		s.readyEnvs[e.ID] = e
	}

	for _, z := range q.deadlines {
		id, dl := z.member, z.score
		s.InFlight[id] = dl
		rec, ok := q.leases[id]
		if !ok {
			t.Errorf("invariant: %s is in %s but not in %s", id, k.Deadlines, k.Leases)
			continue
		}
		token, envb, ok := splitLeaseRecord([]byte(rec))
		if !ok || !validToken(token) {
			t.Errorf("invariant: lease record of %s has no valid token: %q", id, rec)
			continue
		}
		e, err := parseEnvelope(envb)
		if err != nil || e.ID != id {
			t.Errorf("invariant: lease record of %s: envelope %q: %v", id, envb, err)
			continue
		}
		place(id, "in flight")
		s.Tokens[id] = token
		sk := LeaseKey(queue, token)
		sh, ok := q.shadows[sk]
		switch {
		case !ok:
			// Redis deletes a key only once its deadline millisecond is over.
			if dl >= q.now {
				t.Errorf("invariant: shadow key %s of %s is gone before its deadline %d (now %d)", sk, id, dl, q.now)
			}
		case sh.value != id:
			t.Errorf("invariant: shadow key %s holds %q, want %s", sk, sh.value, id)
		case sh.expires != dl:
			t.Errorf("invariant: shadow key %s expires at %d, want the ZSET deadline %d", sk, sh.expires, dl)
		}
	}
	for id := range q.leases {
		if _, ok := s.InFlight[id]; !ok {
			t.Errorf("invariant: %s is in %s but not in %s", id, k.Leases, k.Deadlines)
		}
	}
	live := map[string]bool{}
	for _, tok := range s.Tokens {
		live[LeaseKey(queue, tok)] = true
	}
	for sk := range q.shadows {
		if !live[sk] {
			t.Errorf("invariant: shadow key %s has no lease", sk)
		}
	}

	for _, z := range q.delayed {
		e, err := parseEnvelope([]byte(z.member))
		if err != nil {
			t.Errorf("invariant: delayed member %q: %v", z.member, err)
			continue
		}
		place(e.ID, "delayed")
		s.Delayed[e.ID] = z.score
		s.readyEnvs[e.ID] = e
	}

	if len(q.deadIDs) != len(q.deadRecs) {
		t.Errorf("invariant: %s has %d ids, %s %d records", k.Dead, len(q.deadIDs), k.DeadMsgs, len(q.deadRecs))
	}
	for _, id := range q.deadIDs {
		rec, ok := q.deadRecs[id]
		if !ok {
			t.Errorf("invariant: dead id %s has no record", id)
			continue
		}
		if _, err := parseDeadRecord([]byte(rec)); err != nil {
			t.Errorf("invariant: dead record of %s: %v", id, err)
		}
		d := decodeDead(id, []byte(rec))
		s.Dead[id] = d
		if p, ok := where[id]; ok && d.Reason != ReasonMalformed {
			t.Errorf("invariant: message %s is both %s and dead (%s)", id, p, d.Reason)
		}
	}
	return s
}

// queueState is every key of one queue, read in one atomic script call.
type queueState struct {
	claim, ready []string
	leases       map[string]string // id -> lease record
	deadlines    []scored          // by deadline
	delayed      []scored          // by due time
	deadIDs      []string          // by time of death
	deadRecs     map[string]string // id -> dead record
	now          int64             // Redis's clock, ms
	shadows      map[string]shadowKey
}

type scored struct {
	member string
	score  int64
}

type shadowKey struct {
	value   string
	expires int64 // PEXPIRETIME
}

// snapshotScript reads every key of one queue in one atomic call: a check
// that read them in several calls would see things move between them.
// KEYS: claim, ready, leases, deadlines, delayed, dead, deadmsgs
// ARGV[1]: the pattern of the queue's shadow keys
var snapshotScript = redis.NewScript(`
local out = {}
out[1] = redis.call('LRANGE', KEYS[1], 0, -1)
out[2] = redis.call('LRANGE', KEYS[2], 0, -1)
out[3] = redis.call('HGETALL', KEYS[3])
out[4] = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
out[5] = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
out[6] = redis.call('ZRANGE', KEYS[6], 0, -1)
out[7] = redis.call('HGETALL', KEYS[7])
local t = redis.call('TIME')
out[8] = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local shadows = {}
for _, k in ipairs(redis.call('KEYS', ARGV[1])) do
  shadows[#shadows + 1] = k
  shadows[#shadows + 1] = redis.call('GET', k) or ''
  shadows[#shadows + 1] = redis.call('PEXPIRETIME', k)
end
out[9] = shadows
return out
`)

// readQueue reads queue's keys atomically. rdb's user must be allowed
// every command and key.
func readQueue(t *testing.T, rdb redis.Scripter, queue string) queueState {
	t.Helper()
	k := KeysFor(queue)
	res, err := snapshotScript.Run(t.Context(), rdb,
		[]string{k.Claim, k.Ready, k.Leases, k.Deadlines, k.Delayed, k.Dead, k.DeadMsgs},
		LeaseKey(queue, "*")).Slice()
	if err != nil {
		t.Fatalf("snapshot of %s: %v", queue, err)
	}
	strs := func(v any) []string {
		var out []string
		for _, x := range v.([]any) {
			out = append(out, fmt.Sprint(x))
		}
		return out
	}
	pairs := func(v any) map[string]string {
		l := strs(v)
		m := make(map[string]string, len(l)/2)
		for i := 0; i+1 < len(l); i += 2 {
			m[l[i]] = l[i+1]
		}
		return m
	}
	zset := func(v any) []scored {
		l := strs(v)
		out := make([]scored, 0, len(l)/2)
		for i := 0; i+1 < len(l); i += 2 {
			f, err := strconv.ParseFloat(l[i+1], 64)
			if err != nil {
				t.Fatalf("snapshot of %s: score %q: %v", queue, l[i+1], err)
			}
			out = append(out, scored{l[i], int64(f)})
		}
		return out
	}
	q := queueState{
		claim: strs(res[0]), ready: strs(res[1]), leases: pairs(res[2]),
		deadlines: zset(res[3]), delayed: zset(res[4]), deadIDs: strs(res[5]), deadRecs: pairs(res[6]),
		now: res[7].(int64), shadows: map[string]shadowKey{},
	}
	sh := res[8].([]any)
	for i := 0; i+2 < len(sh); i += 3 {
		q.shadows[sh[i].(string)] = shadowKey{value: sh[i+1].(string), expires: sh[i+2].(int64)}
	}
	return q
}

// ids returns the ids of leases.
func ids(ls []*Lease) []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.ID
	}
	return out
}

// background runs f in a goroutine and returns a func that waits for it.
func background(f func()) (wait func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	return func() { <-done }
}
