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

// sweepOutcome is what expire expects a sweep to do with one lease.
type sweepOutcome int

const (
	requeued     sweepOutcome = iota // back on the ready list
	deadLettered                     // into the dead set (expired or malformed)
)

// expire waits until l is due and sweeps its queue, asserting that the
// sweep ended exactly that lease with the outcome want.
func (b *testBundle) expire(t *testing.T, l *Lease, want sweepOutcome) {
	t.Helper()
	b.waitDue(t, l.Deadline().UnixMilli())
	r, err := b.c.Sweep(t.Context(), l.Queue, nil)
	if want == deadLettered && errors.Is(err, ErrMalformed) {
		err = nil
	}
	got := []int{r.Requeued, r.DeadLettered + r.Malformed}
	wantN := []int{0, 0}
	wantN[want] = 1
	if err != nil || !slices.Equal(got, wantN) {
		t.Fatalf("Sweep after %s ran out = %+v, %v; want %v requeued, %v dead-lettered", l.ID, r, err, wantN[0], wantN[1])
	}
	if len(r.Lags) != 1 || r.Lags[0] <= 0 {
		t.Errorf("Sweep after %s ran out: lags %v, want one > 0", l.ID, r.Lags)
	}
}

// sweepNothing sweeps queue and fails if the sweep ended any lease or
// moved any message.
func (b *testBundle) sweepNothing(t *testing.T, queue string) {
	t.Helper()
	r, err := b.c.Sweep(t.Context(), queue, nil)
	if err != nil || r.Requeued+r.DeadLettered+r.Malformed+r.Promoted+r.Reclaimed != 0 || len(r.Lags) != 0 {
		t.Fatalf("Sweep(%s) = %+v, %v; want nothing done", queue, r, err)
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
	InFlight  map[string]int64 // id -> deadline ms, leases of both formats
	Tokens    map[string]string
	Held      map[string]string // token -> id of each lease of format 2 (keyed by token)
	Delayed   map[string]int64  // id -> due ms
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
//     message only when it is a malformed second copy; two leases in
//     flight may share an id: two copies of a message);
//   - the held HASH and the due ZSET hold the same tokens, each record an
//     envelope; its shadow key holds 1 and expires exactly at the ZSET
//     deadline, or is gone because that deadline has passed;
//   - format 1 (written by older versions): the leases HASH and the
//     deadlines ZSET hold the same ids; each lease record is
//     "token|envelope" with the envelope's id equal to the field; its
//     shadow key holds the id, with the same expiry rule;
//   - there is no shadow key without its lease;
//   - the dead ZSET and the deadmsgs HASH hold the same ids, and every dead
//     record parses.
func checkInvariants(t *testing.T, rdb *redis.Client, queue string) state {
	t.Helper()
	k := KeysFor(queue)
	snap := readQueue(t, rdb, queue)
	s := state{
		InFlight:  map[string]int64{},
		Tokens:    map[string]string{},
		Held:      map[string]string{},
		Delayed:   map[string]int64{},
		Dead:      map[string]DeadLetter{},
		readyEnvs: map[string]envelope{},
	}
	where := map[string]string{}
	place := func(id, p string) {
		t.Helper()
		if prev, ok := where[id]; ok && !(prev == "in flight" && p == prev) {
			t.Errorf("invariant: message %s is both %s and %s", id, prev, p)
		}
		where[id] = p
	}

	for _, el := range slices.Concat(snap.claim, snap.ready) {
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

	now := snap.now
	// checkShadow checks the shadow key of the lease of token, deadline dl,
	// read as sh: it holds value.
	checkShadow := func(what, token, value string, dl int64, sh shadowKey, ok bool) {
		t.Helper()
		sk := LeaseKey(queue, token)
		switch {
		case !ok:
			t.Fatalf("the snapshot script did not read the shadow key of %s", what)
		case sh.key != sk:
			t.Errorf("invariant: the snapshot script read shadow key %s for %s, want %s", sh.key, what, sk)
		case !sh.exists:
			if dl >= now {
				t.Errorf("invariant: shadow key %s of %s is gone before its deadline %d (now %d)", sk, what, dl, now)
			}
		default:
			if sh.value != value {
				t.Errorf("invariant: shadow key %s holds %q, want %s", sk, sh.value, value)
			}
			if sh.expiresAt != dl {
				t.Errorf("invariant: shadow key %s expires at %d, want the ZSET deadline %d", sk, sh.expiresAt, dl)
			}
		}
	}
	for _, z := range snap.due {
		token := z.Member.(string)
		dl := int64(z.Score)
		rec, ok := snap.held[token]
		if !ok {
			t.Errorf("invariant: %s is in %s but not in %s", token, k.Due, k.Held)
			continue
		}
		e, err := parseEnvelope([]byte(rec))
		if err != nil || !validToken(token) {
			t.Errorf("invariant: lease record of token %q: %q: %v", token, rec, err)
			continue
		}
		place(e.ID, "in flight")
		s.InFlight[e.ID] = dl
		s.Tokens[e.ID] = token
		s.Held[token] = e.ID
		sh, ok := snap.heldShadows[token]
		checkShadow(token, token, "1", dl, sh, ok)
	}
	for token := range snap.held {
		if !slices.ContainsFunc(snap.due, func(z redis.Z) bool { return z.Member == token }) {
			t.Errorf("invariant: %s is in %s but not in %s", token, k.Held, k.Due)
		}
	}
	recs := snap.leases
	for _, z := range snap.deadlines {
		id := z.Member.(string)
		dl := int64(z.Score)
		rec, ok := recs[id]
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
		s.InFlight[id] = dl
		s.Tokens[id] = token
		sh, ok := snap.shadows[id]
		checkShadow(id, token, id, dl, sh, ok)
	}
	for id := range recs {
		if !slices.ContainsFunc(snap.deadlines, func(z redis.Z) bool { return z.Member == id }) {
			t.Errorf("invariant: %s is in %s but not in %s", id, k.Leases, k.Deadlines)
		}
	}
	live := map[string]bool{}
	for token := range snap.held {
		live[LeaseKey(queue, token)] = true
	}
	for _, sh := range snap.shadows {
		live[sh.key] = true
	}
	for _, sk := range snap.shadowKeys {
		if !live[sk] {
			t.Errorf("invariant: shadow key %s has no lease", sk)
		}
	}

	for _, z := range snap.delayed {
		e, err := parseEnvelope([]byte(z.Member.(string)))
		if err != nil {
			t.Errorf("invariant: delayed member %q: %v", z.Member, err)
			continue
		}
		place(e.ID, "delayed")
		s.Delayed[e.ID] = int64(z.Score)
		s.readyEnvs[e.ID] = e
	}

	deadIDs, deadRecs := snap.deadIDs, snap.deadRecs
	if len(deadIDs) != len(deadRecs) {
		t.Errorf("invariant: %s has %d ids, %s %d records", k.Dead, len(deadIDs), k.DeadMsgs, len(deadRecs))
	}
	for _, id := range deadIDs {
		rec, ok := deadRecs[id]
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

// queueSnapshot is every key of one queue and Redis's clock, read at one
// instant by readQueueScript.
type queueSnapshot struct {
	now                int64 // Redis's clock, ms
	claim, ready       []string
	held               map[string]string // token -> lease record
	due                []redis.Z
	heldShadows        map[string]shadowKey // by token, for each lease record of held
	leases             map[string]string    // format 1
	deadlines, delayed []redis.Z
	shadows            map[string]shadowKey // by message id, for each lease record of format 1
	shadowKeys         []string             // every key that looks like a shadow key of the queue
	deadIDs            []string
	deadRecs           map[string]string
}

// shadowKey is what readQueueScript found at a lease's shadow key.
type shadowKey struct {
	key       string
	exists    bool
	value     string
	expiresAt int64 // PEXPIRETIME
}

// readQueueScript reads every key of a queue and Redis's clock in one
// atomic call, so that nothing can move between the reads: a 3 ms lease
// cannot expire between reading TIME and reading its shadow key. Inside a
// script Redis checks expiry against the script's start, which TIME (read
// first) cannot precede: a shadow key found gone expired before now.
// KEYS: claim, ready, leases, deadlines, delayed, dead, deadmsgs, held, due.
// ARGV[1] shadow key prefix, ARGV[2] the KEYS pattern of shadow keys.
var readQueueScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function shadow(out, field, token)
  local key = ARGV[1] .. token
  local v = redis.call('GET', key)
  out[#out + 1] = field
  out[#out + 1] = key
  out[#out + 1] = v or ''
  out[#out + 1] = v and 1 or 0
  out[#out + 1] = redis.call('PEXPIRETIME', key)
end
local leases = redis.call('HGETALL', KEYS[3])
local shadows = {}
for i = 1, #leases, 2 do
  shadow(shadows, leases[i], string.match(leases[i + 1], '^([^|]*)|') or '')
end
local held = redis.call('HGETALL', KEYS[8])
local heldShadows = {}
for i = 1, #held, 2 do shadow(heldShadows, held[i], held[i]) end
return {now,
  redis.call('LRANGE', KEYS[1], 0, -1), redis.call('LRANGE', KEYS[2], 0, -1), leases,
  redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES'), shadows, redis.call('KEYS', ARGV[2]),
  redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES'),
  redis.call('ZRANGE', KEYS[6], 0, -1), redis.call('HGETALL', KEYS[7]),
  held, redis.call('ZRANGE', KEYS[9], 0, -1, 'WITHSCORES'), heldShadows}
`)

// readQueue runs readQueueScript on queue.
func readQueue(t *testing.T, rdb redis.Scripter, queue string) queueSnapshot {
	t.Helper()
	k := KeysFor(queue)
	v, err := readQueueScript.Run(t.Context(), rdb,
		[]string{k.Claim, k.Ready, k.Leases, k.Deadlines, k.Delayed, k.Dead, k.DeadMsgs, k.Held, k.Due},
		LeaseKey(queue, ""), LeaseKey(queue, "*")).Slice()
	if err != nil || len(v) != 13 {
		t.Fatalf("reading queue %s: %d values, %v", queue, len(v), err)
	}
	strs := func(x any) []string {
		var out []string
		for _, e := range x.([]any) {
			out = append(out, e.(string))
		}
		return out
	}
	hash := func(x any) map[string]string {
		f := strs(x)
		m := make(map[string]string, len(f)/2)
		for i := 0; i+1 < len(f); i += 2 {
			m[f[i]] = f[i+1]
		}
		return m
	}
	zset := func(x any) []redis.Z {
		f := strs(x)
		var out []redis.Z
		for i := 0; i+1 < len(f); i += 2 {
			score, err := strconv.ParseFloat(f[i+1], 64)
			if err != nil {
				t.Fatalf("score %q: %v", f[i+1], err)
			}
			out = append(out, redis.Z{Member: f[i], Score: score})
		}
		return out
	}
	shadows := func(x any) map[string]shadowKey {
		sh := x.([]any)
		m := map[string]shadowKey{}
		for i := 0; i+4 < len(sh); i += 5 {
			m[sh[i].(string)] = shadowKey{
				key: sh[i+1].(string), value: sh[i+2].(string), exists: sh[i+3].(int64) == 1, expiresAt: sh[i+4].(int64),
			}
		}
		return m
	}
	return queueSnapshot{
		now: v[0].(int64), claim: strs(v[1]), ready: strs(v[2]), leases: hash(v[3]), deadlines: zset(v[4]),
		shadows: shadows(v[5]), shadowKeys: strs(v[6]), delayed: zset(v[7]), deadIDs: strs(v[8]), deadRecs: hash(v[9]),
		held: hash(v[10]), due: zset(v[11]), heldShadows: shadows(v[12]),
	}
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

// flushScripts makes the server forget ackd's scripts and its function
// library (SCRIPT FLUSH, FUNCTION FLUSH), as a restart without
// persistence does.
func flushScripts(ctx context.Context, rdb redis.Cmdable) error {
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		return err
	}
	return rdb.FunctionFlush(ctx).Err()
}
