//go:build e2e

package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/e2e/internal/journal"
	"github.com/ackd/ackd/lease"
)

// expect is what a scenario tells the invariant checker.
type expect struct {
	// Payloads lists every message pushed (payloads are unique).
	Payloads []string
	// Crashed holds the pids of consumers that died without a clean
	// exit: each may have acked a message and died before recording it.
	Crashed map[int]bool
	// AllowDead accepts messages in the dead set at the end.
	AllowDead bool
	// Replayed lists messages that went through Replay, which resets the
	// attempt count: for them Attempt is not checked against the counters.
	Replayed map[string]bool
	// ExtraKeys accepts keys the scenario itself created beyond e2e:*.
	ExtraKeys func(key string) bool
}

// summary is what the checker found, for scenario-specific assertions.
type summary struct {
	Messages    int
	Acked       int            // gone after an ack
	Unconfirmed int            // gone, ack not recorded: its consumer died right after it, or the reply was lost
	Dead        map[string]int // in the dead set, by reason
	Handlings   int            // Handling records
	Duplicates  int            // messages handled more than once
	Redelivered int            // handlings of a delivery after the first
	Expiries    int            // leases that ran out, over all messages
	AckOK       int            // successful acks recorded
	AckRefused  map[string]int // acks refused, by result (stale, notheld, error)
}

func (s summary) String() string {
	return fmt.Sprintf("%d messages: %d acked (%d unconfirmed), dead %v; %d handlings, %d messages handled more than once, %d redeliveries handled, %d expiries; %d acks ok, refused %v",
		s.Messages, s.Acked, s.Unconfirmed, s.Dead, s.Handlings, s.Duplicates, s.Redelivered, s.Expiries, s.AckOK, s.AckRefused)
}

// checkInvariants is the suite's one definition of "no message lost". It
// reads everything left in Redis and the journal, and fails the test,
// listing each offending message and where it is, unless:
//
//   - every pushed message was handled and acked, or sits in the dead set
//     (only if exp.AllowDead);
//   - nothing is left ready, claimed, in flight or delayed, and no key
//     remains but the registry, the dead set, the journal and exp.ExtraKeys
//     (no shadow lease keys, no lease records, no deadlines);
//   - no message is in two places, and nothing unknown appeared;
//   - a message was handled twice only as two different deliveries: each
//     handling has its own token and its own count of earlier deliveries
//     that ended without an ack (expiries + nacks), and Attempt equals that
//     count + 1;
//   - at most one delivery of a message was acked, and it is the last one:
//     no message was delivered again after a successful ack;
//   - a message that is gone had its last handling acked, or that ack's
//     outcome is unknown because its consumer died or lost the reply.
//
// Call it once every process that touches the queue has stopped.
func checkInvariants(t *testing.T, e *env, exp expect) summary {
	t.Helper()
	ctx := t.Context()
	rdb := e.rdb
	k := lease.KeysFor(e.queue)
	sum := summary{Messages: len(exp.Payloads), Dead: map[string]int{}, AckRefused: map[string]int{}}
	var global []string
	fail := func(format string, args ...any) { global = append(global, fmt.Sprintf(format, args...)) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("checkInvariants: %v", err)
		}
	}

	known := make(map[string]bool, len(exp.Payloads))
	for _, p := range exp.Payloads {
		known[p] = true
	}

	// Where is each message now?
	where := map[string][]string{}
	idInRedis := map[string]string{}
	nowMS := func() int64 {
		tm, err := rdb.Time(ctx).Result()
		must(err)
		return tm.UnixMilli()
	}()
	for _, l := range []struct{ name, key string }{{"ready", k.Ready}, {"claim", k.Claim}} {
		els, err := rdb.LRange(ctx, l.key, 0, -1).Result()
		must(err)
		for _, el := range els {
			env, ok := journal.ParseElement(el)
			loc := l.name + " (raw)"
			if ok {
				loc = fmt.Sprintf("%s (attempts %d, expiries %d, nacks %d)", l.name, env.Attempts, env.Expiries, env.Failures)
				idInRedis[env.Payload] = env.ID
			}
			where[env.Payload] = append(where[env.Payload], loc)
		}
	}
	// leases of both formats: held and due by token, leases and
	// deadlines (format 1) by id
	deadlineOf := map[string]int64{}
	var recs [2]map[string]string
	for i, pair := range [][2]string{{k.Held, k.Due}, {k.Leases, k.Deadlines}} {
		var err error
		recs[i], err = rdb.HGetAll(ctx, pair[0]).Result()
		must(err)
		deadlines, err := rdb.ZRangeWithScores(ctx, pair[1], 0, -1).Result()
		must(err)
		for _, z := range deadlines {
			name := z.Member.(string)
			deadlineOf[name] = int64(z.Score)
			if _, ok := recs[i][name]; !ok {
				fail("deadline without a lease record: %s, deadline %d ms ago", name, nowMS-int64(z.Score))
			}
		}
	}
	for _, f := range journal.Flights(recs[0], recs[1]) {
		if !f.OK {
			fail("malformed lease record %s: %q", f.Name, f.Rec)
			continue
		}
		env := f.Env
		loc := fmt.Sprintf("in flight (attempt %d, token %s, no deadline)", env.Attempts, f.Token)
		if d, ok := deadlineOf[f.Name]; ok {
			loc = fmt.Sprintf("in flight (attempt %d, token %s, deadline %+d ms from now)", env.Attempts, f.Token, d-nowMS)
		}
		where[env.Payload] = append(where[env.Payload], loc)
		idInRedis[env.Payload] = env.ID
	}
	delayed, err := rdb.ZRangeWithScores(ctx, k.Delayed, 0, -1).Result()
	must(err)
	for _, z := range delayed {
		env, _ := journal.ParseElement(z.Member.(string))
		where[env.Payload] = append(where[env.Payload], fmt.Sprintf("delayed (due %+d ms from now)", int64(z.Score)-nowMS))
	}
	deadOf := map[string]lease.DeadLetter{}
	for off := 0; ; off += lease.MaxBatch {
		dls, err := e.lc.DeadLetters(ctx, e.queue, off, lease.MaxBatch)
		must(err)
		for _, d := range dls {
			p := string(d.Payload)
			if d.Raw != nil {
				p = string(d.Raw)
			}
			deadOf[p] = d
			where[p] = append(where[p], fmt.Sprintf("dead (%s after %d attempts, %d expiries, %d nacks; dead-letter id %s)", d.Reason, d.Attempts, d.Expiries, d.Failures, d.ID))
		}
		if len(dls) < lease.MaxBatch {
			break
		}
	}

	// What did the application do?
	hs, err := journal.Handlings(ctx, rdb, e.queue)
	must(err)
	ss, err := journal.Settles(ctx, rdb, e.queue)
	must(err)
	sum.Handlings = len(hs)
	settles := map[string][]journal.Settle{}
	for _, s := range ss {
		settles[s.Token] = append(settles[s.Token], s)
		if s.Op == "ack" {
			if s.Result == journal.ResultOK {
				sum.AckOK++
			} else {
				sum.AckRefused[s.Result]++
			}
		}
	}
	byPayload := map[string][]journal.Handling{}
	for _, h := range hs {
		if !known[h.Payload] {
			fail("handled a message never pushed: %+v", h)
			continue
		}
		byPayload[h.Payload] = append(byPayload[h.Payload], h)
	}
	for p, locs := range where {
		if !known[p] {
			fail("a message never pushed is in Redis: %q: %s", p, strings.Join(locs, ", "))
		}
	}

	acked := func(h journal.Handling) bool {
		for _, s := range settles[h.Token] {
			if s.Op == "ack" && s.Result == journal.ResultOK {
				return true
			}
		}
		return false
	}
	describe := func(h journal.Handling) string {
		var res []string
		for _, s := range settles[h.Token] {
			res = append(res, s.Op+":"+s.Result)
		}
		if len(res) == 0 {
			res = []string{"unsettled"}
		}
		seq := "?"
		if h.Seq() >= 0 {
			seq = fmt.Sprint(h.Seq())
		}
		return fmt.Sprintf("[attempt %d, %s earlier unacked, pid %d, token %s, %s]", h.Attempt, seq, h.PID, h.Token, strings.Join(res, " "))
	}

	var bad []string
	for _, p := range exp.Payloads {
		var problems []string
		problem := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
		locs := where[p]
		_, dead := deadOf[p]
		live := len(locs)
		if dead {
			live--
		}
		hs := byPayload[p]
		slices.SortStableFunc(hs, func(a, b journal.Handling) int { return cmp.Compare(a.Seq(), b.Seq()) })
		if len(hs) > 1 {
			sum.Duplicates++
		}

		if len(locs) > 1 {
			problem("in %d places at once", len(locs))
		}
		if live > 0 {
			problem("left over, not lost but never finished")
		}
		ids := map[string]bool{}
		if id, ok := idInRedis[p]; ok {
			ids[id] = true
		}
		tokens := map[string]bool{}
		seqs := map[int]string{}
		var ackOK []journal.Handling
		for _, h := range hs {
			ids[h.ID] = true
			if tokens[h.Token] {
				problem("one delivery (token %s) handled twice", h.Token)
			}
			tokens[h.Token] = true
			if s := h.Seq(); s >= 0 {
				if s > 0 {
					sum.Redelivered++
				}
				if other, ok := seqs[s]; ok {
					problem("delivered twice with no expiry or nack in between (tokens %s and %s, %d earlier unacked)", other, h.Token, s)
				}
				seqs[s] = h.Token
				if !exp.Replayed[p] && h.Attempt != s+1 {
					problem("attempt %d after %d expiries and %d nacks: attempt numbers inconsistent", h.Attempt, h.Expiries, h.Failures)
				}
			}
			if acked(h) {
				ackOK = append(ackOK, h)
			}
		}
		if len(ids) > 1 {
			problem("its id changed between deliveries: %v", ids)
		}
		if len(ackOK) > 1 {
			problem("acked %d times: the fencing let two deliveries succeed", len(ackOK))
		}
		var last journal.Handling
		if len(hs) > 0 {
			last = hs[len(hs)-1]
			for _, h := range ackOK {
				if h.Seq() < 0 {
					problem("acked a delivery whose lease was already lost when taken (token %s)", h.Token)
				} else if h.Token != last.Token {
					problem("acked (attempt %d) and delivered again afterwards (attempt %d)", h.Attempt, last.Attempt)
				}
			}
		}
		switch {
		case dead:
			d := deadOf[p]
			sum.Dead[d.Reason]++
			sum.Expiries += d.Expiries
			if !exp.AllowDead {
				problem("dead-lettered (%s), but this scenario expects none", d.Reason)
			}
			if len(ackOK) > 0 {
				problem("acked, yet in the dead set")
			}
		case live > 0:
			if len(ackOK) > 0 {
				problem("acked, yet still live")
			}
		case len(hs) == 0:
			problem("LOST: never handled and not in Redis")
		default:
			sum.Expiries += max(last.Expiries, 0)
			if len(ackOK) > 0 {
				sum.Acked++
				break
			}
			uncertain := len(settles[last.Token]) == 0 && exp.Crashed[last.PID]
			for _, s := range settles[last.Token] {
				uncertain = uncertain || s.Result == journal.ResultError
			}
			if !uncertain {
				problem("LOST: gone from Redis, but its last delivery was never acked")
				break
			}
			sum.Acked++
			sum.Unconfirmed++
		}
		if len(problems) == 0 {
			continue
		}
		where := "nowhere in Redis"
		if len(locs) > 0 {
			where = strings.Join(locs, "; ")
		}
		var hdesc []string
		for _, h := range hs {
			hdesc = append(hdesc, describe(h))
		}
		if len(ids) == 0 {
			ids["?"] = true
		}
		id := strings.Join(slices.Sorted(func(yield func(string) bool) {
			for id := range ids {
				if !yield(id) {
					return
				}
			}
		}), ",")
		bad = append(bad, fmt.Sprintf("%s (id %s): %s\n\twhere: %s\n\thandlings: %s",
			p, id, strings.Join(problems, "; "), where, strings.Join(hdesc, " ")))
	}

	// No orphan keys.
	keys, err := rdb.Keys(ctx, "*").Result()
	must(err)
	slices.Sort(keys)
	registered := false
	for _, key := range keys {
		switch {
		case key == lease.RegistryKey:
			registered, err = rdb.SIsMember(ctx, key, e.queue).Result()
			must(err)
		case key == k.Dead || key == k.DeadMsgs || key == k.DeadErrs || key == k.Counts:
		case strings.HasPrefix(key, journal.KeyPrefix):
		case exp.ExtraKeys != nil && exp.ExtraKeys(key):
		default:
			typ, _ := rdb.Type(ctx, key).Result()
			ttl, _ := rdb.PTTL(ctx, key).Result()
			n := ""
			switch typ {
			case "list":
				n = fmt.Sprintf(", %d elements", rdb.LLen(ctx, key).Val())
			case "zset":
				n = fmt.Sprintf(", %d members", rdb.ZCard(ctx, key).Val())
			case "hash":
				n = fmt.Sprintf(", %d fields", rdb.HLen(ctx, key).Val())
			}
			ttls := "no TTL"
			if ttl > 0 {
				ttls = "TTL " + ttl.Round(time.Millisecond).String()
			}
			fail("key left behind: %s (%s%s, %s)", key, typ, n, ttls)
		}
	}
	if !registered {
		fail("queue %s missing from the registry %s", e.queue, lease.RegistryKey)
	}

	t.Logf("invariants: %s", sum)
	if len(bad) > 0 || len(global) > 0 {
		const show = 40
		var b strings.Builder
		fmt.Fprintf(&b, "invariants violated: %d of %d messages, %d other problems\n", len(bad), len(exp.Payloads), len(global))
		for i, s := range global {
			if i == show {
				fmt.Fprintf(&b, "... and %d more\n", len(global)-show)
				break
			}
			b.WriteString(s + "\n")
		}
		for i, s := range bad {
			if i == show {
				fmt.Fprintf(&b, "... and %d more messages\n", len(bad)-show)
				break
			}
			b.WriteString(s + "\n")
		}
		t.Error(b.String())
	}
	return sum
}

// --- the ledger: what in-process callers were told, over many queues ---

// ledger is what the producers and consumers of a Cluster or Sentinel
// scenario were told by each call, keyed by payload (unique per message:
// a re-pushed message keeps its payload). It lets checkLedger tell a
// message that vanished after its caller was told so (an error) from a
// silent loss. The journal cannot be used there: its own writes are not
// waited for, and a failover could drop them.
type ledger struct {
	mu        sync.Mutex
	pushOK    map[string]int       // payload -> pushes that returned nil
	pushErr   map[string]int       // payload -> pushes that returned an error
	ackOK     map[string]int       // payload -> acks that returned nil
	ackErr    map[string]int       // payload -> acks whose outcome is unknown (an error other than ErrStale)
	abandoned map[string]time.Time // payload -> deadline of a lease left to run out
	lags      []lagSample
	errs      []callError
	okAcks    int // acks that returned nil, in all
}

// callError is one error returned to a caller.
type callError struct {
	at      time.Time
	op      string // push, take, ack
	payload string // "" for a take
	err     error
}

// lagSample is one abandoned lease taken again: its deadline, and how
// long after it a waiting consumer got the message.
type lagSample struct {
	deadline time.Time
	lag      time.Duration
}

func newLedger() *ledger {
	return &ledger{pushOK: map[string]int{}, pushErr: map[string]int{}, ackOK: map[string]int{}, ackErr: map[string]int{}, abandoned: map[string]time.Time{}}
}

func (l *ledger) pushed(payload string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.pushErr[payload]++
		l.errs = append(l.errs, callError{time.Now(), "push", payload, err})
		return
	}
	l.pushOK[payload]++
}

func (l *ledger) takeFailed(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, callError{time.Now(), "take", "", err})
}

// took records a delivery taken at now, and the requeue lag if it is a
// redelivery of an abandoned lease.
func (l *ledger) took(ls *lease.Lease, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := string(ls.Payload)
	if d, ok := l.abandoned[p]; ok && ls.Attempt > 1 {
		l.lags = append(l.lags, lagSample{d, now.Sub(d)})
		delete(l.abandoned, p)
	}
}

func (l *ledger) abandon(ls *lease.Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.abandoned[string(ls.Payload)] = ls.Deadline()
}

// acked records one ack's result. ErrStale changed nothing. ErrNotHeld
// may follow an ack that went through (go-redis resends a command whose
// reply a broken connection lost), so its outcome counts as unknown, but
// it is no error of the call.
func (l *ledger) acked(payload string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		l.ackOK[payload]++
		l.okAcks++
	case errors.Is(err, lease.ErrStale):
	case errors.Is(err, lease.ErrNotHeld):
		l.ackErr[payload]++
	default:
		l.ackErr[payload]++
		l.errs = append(l.errs, callError{time.Now(), "ack", payload, err})
	}
}

// acks returns how many acks have returned nil so far.
func (l *ledger) acks() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.okAcks
}

// errorWindow describes the errors callers saw from since on (until
// until, if not zero): how many of each kind, and the time from the first
// to the last, each counted from since.
func (l *ledger) errorWindow(since, until time.Time) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first, last time.Time
	kinds := map[string]int{}
	n := 0
	other := ""
	for _, e := range l.errs {
		if e.at.Before(since) || (!until.IsZero() && !e.at.Before(until)) {
			continue
		}
		n++
		if first.IsZero() {
			first = e.at
		}
		last = e.at
		kind := "other"
		var ne net.Error
		switch {
		case errors.Is(e.err, lease.ErrNotReplicated):
			kind = "ErrNotReplicated"
		case errors.Is(e.err, context.DeadlineExceeded):
			kind = "timeout"
		case errors.Is(e.err, io.EOF), errors.Is(e.err, io.ErrUnexpectedEOF), errors.As(e.err, &ne):
			// The connection broke after the command was sent: its
			// outcome is unknown, and lease does not retry it.
			kind = "connection lost"
		default:
			for _, code := range []string{"TRYAGAIN", "ASK", "MOVED", "CLUSTERDOWN", "READONLY", "NOREPLICAS", "LOADING", "MASTERDOWN"} {
				if strings.Contains(e.err.Error(), code+" ") {
					kind = code
				}
			}
		}
		kinds[e.op+" "+kind]++
		if kind == "other" && other == "" {
			other = e.err.Error()
		}
	}
	if n == 0 {
		return "no errors"
	}
	if other != "" {
		other = fmt.Sprintf(" (first other: %q)", other)
	}
	return fmt.Sprintf("%d errors %v from +%v to +%v%s", n, kinds, first.Sub(since).Round(time.Millisecond), last.Sub(since).Round(time.Millisecond), other)
}

// errorsSince returns the errors callers saw from since on.
func (l *ledger) errorsSince(since time.Time) []callError {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []callError
	for _, e := range l.errs {
		if !e.at.Before(since) {
			out = append(out, e)
		}
	}
	return out
}

// lagsSince describes the requeue lags of leases whose deadline fell at
// or after since (and before until, if not zero).
func (l *ledger) lagsSince(since, until time.Time) string {
	l.mu.Lock()
	var lags []time.Duration
	for _, s := range l.lags {
		if !s.deadline.Before(since) && (until.IsZero() || s.deadline.Before(until)) {
			lags = append(lags, s.lag)
		}
	}
	l.mu.Unlock()
	if len(lags) == 0 {
		return "no requeues"
	}
	slices.Sort(lags)
	pct := func(p float64) time.Duration {
		return lags[min(len(lags)-1, int(p*float64(len(lags))))].Round(time.Millisecond)
	}
	return fmt.Sprintf("%d requeues, lag p50 %v p99 %v max %v", len(lags), pct(0.5), pct(0.99), pct(1))
}

// ledgerSummary is what checkLedger found.
type ledgerSummary struct {
	Messages   int            // distinct payloads pushed (whatever the outcome)
	Acked      int            // an ack returned nil
	AckedTwice int            // more than one ack returned nil: delivered again after an ack
	Dead       map[string]int // in the dead set, by reason
	Left       int            // still ready, claimed, in flight or delayed
	Copies     int            // extra copies found in Redis (a re-push after an error that had stored it)
	Repushed   int            // messages pushed again after an error
	Uncertain  int            // gone after an ack that returned an error (ErrNotHeld included)
	NotStored  int            // gone, and every push of it returned an error
	Lost       []string       // gone, though a push returned nil and no ack of it failed or succeeded
}

func (s ledgerSummary) String() string {
	return fmt.Sprintf("%d messages: %d acked (%d acked twice), dead %v, %d left in a known place, %d extra copies, %d re-pushed after an error; gone with an error to their caller: %d (ack outcome unknown), %d (never stored); lost silently: %d",
		s.Messages, s.Acked, s.AckedTwice, s.Dead, s.Left, s.Copies, s.Repushed, s.Uncertain, s.NotStored, len(s.Lost))
}

// checkLedger is checkInvariants for scenarios with many queues on a
// Cluster or a Sentinel-managed master, whose callers run in the test
// process and record what each call returned (ledger). It reads each
// queue in one MULTI through rdb, where the queue is now, and accounts
// for every message: acked, dead with a reason, still in a known place
// (ready, claim, in flight, delayed), or gone with an error returned to
// the caller that wrote the change that removed it (lost ⊆ errored). A
// message that is gone although its push returned nil and no ack of it
// returned anything is lost silently: with durable (lease.Config.Replicas
// > 0) that fails the test; without, it is only counted. Duplicates (a
// push retried after ErrNotReplicated, a delivery after an ack the
// failover undid) are counted, never failed on: delivery is at least
// once. Lease records must match deadlines, and nothing unknown may be in
// Redis. Call it once every caller and daemon has stopped.
func checkLedger(t *testing.T, lc *lease.Client, rdb redis.UniversalClient, queues []string, led *ledger, durable bool) ledgerSummary {
	t.Helper()
	ctx := t.Context()
	where := map[string][]string{}
	dead := map[string]string{}
	var problems []string
	for _, q := range queues {
		k := lease.KeysFor(q)
		var ready, claim, delayed *redis.StringSliceCmd
		var deadlines, due *redis.StringSliceCmd
		var recs, held *redis.MapStringStringCmd
		_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			ready = p.LRange(ctx, k.Ready, 0, -1)
			claim = p.LRange(ctx, k.Claim, 0, -1)
			delayed = p.ZRange(ctx, k.Delayed, 0, -1)
			held = p.HGetAll(ctx, k.Held)
			due = p.ZRange(ctx, k.Due, 0, -1)
			recs = p.HGetAll(ctx, k.Leases)
			deadlines = p.ZRange(ctx, k.Deadlines, 0, -1)
			return nil
		})
		if err != nil {
			t.Fatalf("checkLedger: reading %s: %v", q, err)
		}
		for _, l := range []struct {
			name string
			els  []string
		}{{"ready", ready.Val()}, {"claim", claim.Val()}, {"delayed", delayed.Val()}} {
			for _, el := range l.els {
				env, _ := journal.ParseElement(el)
				where[env.Payload] = append(where[env.Payload], q+" "+l.name)
			}
		}
		inFlight := map[string]bool{}
		for _, f := range journal.Flights(held.Val(), recs.Val()) {
			if !f.OK {
				problems = append(problems, fmt.Sprintf("%s: malformed lease record %s: %q", q, f.Name, f.Rec))
				continue
			}
			inFlight[f.Name] = true
			where[f.Env.Payload] = append(where[f.Env.Payload], fmt.Sprintf("%s in flight (attempt %d)", q, f.Env.Attempts))
		}
		for _, id := range append(due.Val(), deadlines.Val()...) {
			if !inFlight[id] {
				problems = append(problems, fmt.Sprintf("%s: deadline without a lease record: %s", q, id))
			}
			delete(inFlight, id)
		}
		for id := range inFlight {
			problems = append(problems, fmt.Sprintf("%s: lease record without a deadline: %s", q, id))
		}
		for off := 0; ; off += lease.MaxBatch {
			dls, err := lc.DeadLetters(ctx, q, off, lease.MaxBatch)
			if err != nil {
				t.Fatalf("checkLedger: dead letters of %s: %v", q, err)
			}
			for _, d := range dls {
				p := string(d.Payload)
				if d.Raw != nil {
					p = string(d.Raw)
				}
				dead[p] = d.Reason
				where[p] = append(where[p], q+" dead ("+d.Reason+")")
			}
			if len(dls) < lease.MaxBatch {
				break
			}
		}
	}

	led.mu.Lock()
	defer led.mu.Unlock()
	sum := ledgerSummary{Dead: map[string]int{}}
	known := map[string]bool{}
	for p := range led.pushOK {
		known[p] = true
	}
	for p := range led.pushErr {
		known[p] = true
	}
	for p, locs := range where {
		if !known[p] {
			problems = append(problems, fmt.Sprintf("a message never pushed is in Redis: %q: %s", p, strings.Join(locs, ", ")))
		}
	}
	sum.Messages = len(known)
	for p := range known {
		locs := where[p]
		sum.Copies += max(len(locs)-1, 0)
		if led.pushErr[p] > 0 && led.pushOK[p]+led.pushErr[p] > 1 {
			sum.Repushed++
		}
		_, isDead := dead[p]
		live := len(locs)
		if isDead {
			live--
		}
		switch {
		case led.ackOK[p] > 0:
			sum.Acked++
			if led.ackOK[p] > 1 {
				sum.AckedTwice++
			}
			if live > 0 {
				sum.Left++
			}
		case isDead:
			sum.Dead[dead[p]]++
		case live > 0:
			sum.Left++
		case led.ackErr[p] > 0:
			sum.Uncertain++
		case led.pushOK[p] == 0:
			sum.NotStored++
		default:
			sum.Lost = append(sum.Lost, p)
		}
	}
	slices.Sort(sum.Lost)
	t.Logf("ledger: %s", sum)
	if len(problems) > 0 {
		t.Errorf("checkLedger: %d problems:\n%s", len(problems), strings.Join(problems[:min(len(problems), 40)], "\n"))
	}
	if durable && len(sum.Lost) > 0 {
		t.Errorf("checkLedger: %d messages lost with no error to any caller (their push returned nil, no ack of them returned, and they are nowhere in Redis), e.g. %v",
			len(sum.Lost), sum.Lost[:min(10, len(sum.Lost))])
	}
	return sum
}
