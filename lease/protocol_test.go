package lease

import (
	"crypto/rand"
	"crypto/sha1"
	"encoding/hex"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ackd/ackd/internal/redistest"
)

// TestScriptsLoad: every embedded script is lines of lib.lua, in order,
// then "\n" + <op>.lua; it loads with SCRIPT LOAD under the SHA1 of that
// text, and is the script ackd runs where it falls back to EVALSHA (the
// library's functions are checked by TestLibraryFormat).
func TestScriptsLoad(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()

	src := Scripts()
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range src {
			if !yield(k) {
				return
			}
		}
	})
	want := []string{"ack", "deadletter", "extend", "fail", "nack", "pause", "peek", "purge", "push", "release", "replay", "stats", "sweep", "take"}
	if !slices.Equal(names, want) {
		t.Fatalf("Scripts() has %v, want %v", names, want)
	}
	lib, err := os.ReadFile("lua/lib.lua")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		body, err := os.ReadFile("lua/" + name + ".lua")
		if err != nil {
			t.Fatal(err)
		}
		part, ok := strings.CutSuffix(src[name], "\n"+string(body))
		if !ok || !linesOf(part, string(lib)) {
			t.Errorf("Scripts()[%s] is not lines of lib.lua + \\n + %s.lua", name, name)
		}
		sum := sha1.Sum([]byte(src[name]))
		sha, err := b.rdb.ScriptLoad(ctx, src[name]).Result()
		if err != nil {
			t.Errorf("SCRIPT LOAD %s: %v", name, err)
			continue
		}
		if sha != hex.EncodeToString(sum[:]) {
			t.Errorf("SCRIPT LOAD %s = %s, want %x", name, sha, sum)
		}
	}
	scripts := map[string]string{
		"take": takeScript.Hash(), "ack": ackScript.Hash(), "extend": extendScript.Hash(), "nack": nackScript.Hash(),
		"deadletter": deadletterScript.Hash(), "sweep": sweepScript.Hash(),
		"push": pushScript.Hash(), "replay": replayScript.Hash(), "purge": purgeScript.Hash(),
		"release": releaseScript.Hash(), "fail": failScript.Hash(),
		"pause": pauseScript.Hash(), "stats": statsScript.Hash(), "peek": peekScript.Hash(),
	}
	for name, hash := range scripts {
		sum := sha1.Sum([]byte(src[name]))
		if hash != hex.EncodeToString(sum[:]) {
			t.Errorf("the %s script ackd runs with EVALSHA is not Scripts()[%s]", name, name)
		}
	}
	// Scripts returns a copy.
	src["take"] = "changed"
	if Scripts()["take"] == "changed" {
		t.Error("Scripts() returned the package's own map")
	}
}

// linesOf reports whether the lines of part are lines of whole, in the
// same order.
func linesOf(part, whole string) bool {
	lines := strings.SplitAfter(whole, "\n")
	for l := range strings.SplitAfterSeq(part, "\n") {
		i := slices.Index(lines, l)
		if i < 0 {
			return false
		}
		lines = lines[i+1:]
	}
	return true
}

// cli is a client that speaks to Redis only through redis-cli, following
// docs/PROTOCOL.md.
type cli struct {
	t     *testing.T
	addr  string
	queue string
	sha   map[string]string
	text  map[string]string
}

func (c *cli) run(args ...string) string {
	c.t.Helper()
	return redistest.RedisCLI(c.t, c.addr, args...)
}

func (c *cli) lines(args ...string) []string {
	c.t.Helper()
	out := c.run(args...)
	for _, p := range []string{"ERR", "NOSCRIPT", "WRONGTYPE"} {
		if strings.HasPrefix(out, p) {
			c.t.Fatalf("redis-cli %s: %s", args[0], out)
		}
	}
	return strings.Split(out, "\n")
}

// load loads a script in one of the two ways the document gives: the
// whole of lib.lua, "\n", <op>.lua (whole), or the text ackd runs, which
// lease.Scripts() exports.
func (c *cli) load(op string, whole bool) {
	c.t.Helper()
	if whole {
		lib, err := os.ReadFile("lua/lib.lua")
		if err != nil {
			c.t.Fatal(err)
		}
		body, err := os.ReadFile("lua/" + op + ".lua")
		if err != nil {
			c.t.Fatal(err)
		}
		c.text[op] = string(lib) + "\n" + string(body)
	} else {
		c.text[op] = Scripts()[op]
	}
	sha := c.run("SCRIPT", "LOAD", c.text[op])
	if len(sha) != 40 {
		c.t.Fatalf("SCRIPT LOAD %s: %q", op, sha)
	}
	c.sha[op] = sha
}

func (c *cli) key(name string) string { return "ackd:{" + c.queue + "}:" + name }

func (c *cli) evalsha(op string, keys []string, args ...string) []string {
	c.t.Helper()
	cmd := append([]string{"EVALSHA", c.sha[op], strconv.Itoa(len(keys))}, keys...)
	return c.lines(append(cmd, args...)...)
}

type cliLease struct {
	id, token, payload string
	attempt, max       int
	deadline           int64
}

func newToken(t *testing.T) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// takeKeys are take.lua's keys for one lease of token.
func (c *cli) takeKeys(token string) []string {
	return []string{c.key("ready"), c.key("claim"), c.key("held"), c.key("due"), c.key("delayed"),
		c.key("dead"), c.key("deadmsgs"), c.key("paused"), c.key("counts"), c.key("lease:" + token)}
}

// take runs take.lua for one lease, with a fresh token and id.
func (c *cli) take(leaseMS, defaultMax int) (*cliLease, []string) {
	c.t.Helper()
	token, id := newToken(c.t), "cli-"+newToken(c.t)
	out := c.evalsha("take", c.takeKeys(token),
		"1", "0", strconv.Itoa(leaseMS), strconv.Itoa(defaultMax), "ackd:wake", c.queue, "1048576", "0", "0", token, id)
	if len(out) < 4 {
		c.t.Fatalf("take: %q", out)
	}
	if out[0] == "0" {
		return nil, out
	}
	if out[0] != "1" || out[1] != "-1" || len(out) != 6 {
		c.t.Fatalf("take: %q", out)
	}
	return c.leaseOf(token, out[4], out[5]), out
}

// leaseOf reads the lease of token from its deadline and record (the
// envelope as it was taken: its attempt is the record's attempts + 1).
func (c *cli) leaseOf(token, deadline, rec string) *cliLease {
	c.t.Helper()
	f := strings.SplitN(rec, "|", 8)
	if len(f) != 8 || f[0] != "\xffackd1" {
		c.t.Fatalf("lease record %q", rec)
	}
	l := &cliLease{id: f[1], token: token, payload: f[7]}
	attempts, err1 := strconv.Atoi(f[2])
	l.attempt = attempts + 1
	var err2, err3 error
	l.max, err2 = strconv.Atoi(f[3])
	l.deadline, err3 = strconv.ParseInt(deadline, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		c.t.Fatalf("lease %s: deadline %q, record %q", token, deadline, rec)
	}
	return l
}

// ackKeys are ack.lua's keys for the lease of token.
func (c *cli) ackKeys(token string) []string {
	return []string{c.key("held"), c.key("due"), c.key("counts"), c.key("lease:" + token)}
}

func (c *cli) now() int64 {
	c.t.Helper()
	out := c.lines("TIME")
	sec, _ := strconv.ParseInt(out[0], 10, 64)
	usec, _ := strconv.ParseInt(out[1], 10, 64)
	return sec*1000 + usec/1000
}

// TestProtocolRedisCLI takes, extends, acks, nacks and dead-letters
// messages with redis-cli alone, exactly as docs/PROTOCOL.md says.
func TestProtocolRedisCLI(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := &cli{t: t, addr: srv.Addr(), queue: "proto", sha: map[string]string{}, text: map[string]string{}}
	// take and nack as the shell recipe makes them (all of lib.lua), the
	// others as ackd runs them (only the helpers each uses): both work.
	for _, op := range []string{"take", "ack", "extend", "nack", "deadletter"} {
		c.load(op, op == "take" || op == "nack")
	}

	// Push: a raw payload and an envelope, both with RPUSH; register.
	c.lines("RPUSH", c.key("ready"), "hello")
	c.lines("RPUSH", c.key("ready"), "\xffackd1|id-1|0|10|5000|0|0|env|payload")
	c.lines("SADD", "ackd:queues", c.queue)

	// Take the raw payload, extend, ack.
	t0 := c.now()
	l, _ := c.take(30000, 10)
	if l.payload != "hello" || l.attempt != 1 || l.max != 10 || l.deadline < t0+30000 || !strings.HasPrefix(l.id, "cli-") {
		t.Fatalf("take = %+v", l)
	}
	if got := c.lines("GET", c.key("lease:"+l.token)); got[0] != "1" {
		t.Errorf("shadow key holds %q, want 1", got)
	}
	if got := c.lines("HGET", c.key("held"), l.token); got[0] != "\xffackd1|"+l.id+"|0|10|0|0|0|hello" {
		t.Errorf("lease record %q", got)
	}
	extendKeys := []string{c.key("held"), c.key("due"), c.key("lease:" + l.token)}
	out := c.evalsha("extend", extendKeys, l.token, "60000", "ackd:wake", c.queue)
	if dl, err := strconv.ParseInt(out[0], 10, 64); err != nil || dl <= l.deadline {
		t.Fatalf("extend = %q, want a later deadline than %d", out, l.deadline)
	}
	if out := c.evalsha("extend", extendKeys, l.token+"|other-id", "60000", "ackd:wake", c.queue); out[0] != "-1" {
		t.Errorf("extend naming another message = %q, want -1", out)
	}
	if out := c.evalsha("ack", c.ackKeys("ffffffffffffffff"), "ffffffffffffffff"); out[0] != "0" {
		t.Errorf("ack with a token that holds nothing = %q, want 0", out)
	}
	if out := c.evalsha("ack", c.ackKeys(l.token), l.token+"|other-id"); out[0] != "-1" {
		t.Errorf("ack naming another message = %q, want -1", out)
	}
	if out := c.evalsha("ack", c.ackKeys(l.token), l.token+"|"+l.id); out[0] != "1" {
		t.Fatalf("ack = %q, want 1", out)
	}
	if out := c.evalsha("ack", c.ackKeys(l.token), l.token); out[0] != "0" {
		t.Errorf("second ack = %q, want 0", out)
	}
	for _, k := range []string{c.key("held"), c.key("due"), c.key("lease:" + l.token)} {
		if got := c.lines("EXISTS", k); got[0] != "0" {
			t.Errorf("%s still exists after ack", k)
		}
	}
	if got := c.lines("HGET", c.key("counts"), "acked"); got[0] != "1" {
		t.Errorf("counts acked = %q after one ack, want 1", got)
	}

	// Take the envelope: its own lease of 5 s and max 10; the record is
	// the element as it was pushed.
	t0 = c.now()
	l, out = c.take(30000, 3)
	if l.id != "id-1" || l.payload != "env|payload" || l.attempt != 1 || l.max != 10 || l.deadline < t0+5000 || l.deadline > c.now()+5000 ||
		out[5] != "\xffackd1|id-1|0|10|5000|0|0|env|payload" {
		t.Fatalf("take envelope = %+v, %q", l, out)
	}
	// Nack now: back at the tail with failures 1.
	nackKeys := func(l *cliLease) []string {
		return []string{c.key("ready"), c.key("held"), c.key("due"), c.key("delayed"), c.key("dead"),
			c.key("deadmsgs"), c.key("lease:" + l.token)}
	}
	if out := c.evalsha("nack", nackKeys(l), l.token+"|other-id", "0", "ackd:wake", c.queue); out[0] != "-1" {
		t.Fatalf("nack naming another message = %q, want -1", out)
	}
	if out := c.evalsha("nack", nackKeys(l), l.token+"|"+l.id, "0", "ackd:wake", c.queue); out[0] != "1" {
		t.Fatalf("nack = %q", out)
	}
	if got := c.lines("LRANGE", c.key("ready"), "0", "-1"); !slices.Equal(got, []string{"\xffackd1|id-1|1|10|5000|0|1|env|payload"}) {
		t.Fatalf("ready after nack = %q", got)
	}
	// Take again (attempt 2) and dead-letter it.
	l, _ = c.take(0, 3)
	if l.id != "id-1" || l.attempt != 2 {
		t.Fatalf("retake = %+v", l)
	}
	if out := c.evalsha("deadletter", []string{c.key("held"), c.key("due"), c.key("dead"), c.key("deadmsgs"), c.key("lease:" + l.token)},
		l.token); out[0] != "1" {
		t.Fatalf("deadletter = %q", out)
	}
	rec := c.lines("HGET", c.key("deadmsgs"), "id-1")[0]
	reason, rest, _ := strings.Cut(rec, "|")
	at, body, _ := strings.Cut(rest, "|")
	if reason != "killed" || body != "\xffackd1|id-1|2|10|5000|0|1|env|payload" {
		t.Errorf("dead record = %q", rec)
	}
	if ms, err := strconv.ParseInt(at, 10, 64); err != nil || ms < t0 {
		t.Errorf("dead record time %q", at)
	}
	if got := c.lines("ZRANGE", c.key("dead"), "0", "-1"); !slices.Equal(got, []string{"id-1"}) {
		t.Errorf("dead = %q", got)
	}

	// Blocking take: BLMOVE parks the element on the claim list, take
	// takes it from there.
	if l, out := c.take(30000, 10); l != nil || out[1] != "-1" {
		t.Fatalf("take on an empty queue = %q", out)
	}
	c.lines("RPUSH", c.key("ready"), "waited for")
	if got := c.lines("BLMOVE", c.key("ready"), c.key("claim"), "LEFT", "RIGHT", "5"); got[0] != "waited for" {
		t.Fatalf("BLMOVE = %q", got)
	}
	c.lines("RPUSH", c.key("ready"), "second")
	l, _ = c.take(30000, 10)
	if l.payload != "waited for" {
		t.Fatalf("take after BLMOVE = %+v", l)
	}
	// NOSCRIPT: fall back to EVAL with the text.
	c.run("SCRIPT", "FLUSH")
	args := append(append([]string{"4"}, c.ackKeys(l.token)...), l.token)
	if out := c.run(append([]string{"EVALSHA", c.sha["ack"]}, args...)...); !strings.HasPrefix(out, "NOSCRIPT") {
		t.Fatalf("EVALSHA after SCRIPT FLUSH = %q, want NOSCRIPT", out)
	}
	if out := c.lines(append([]string{"EVAL", c.text["ack"]}, args...)...); out[0] != "1" {
		t.Fatalf("EVAL ack = %q", out)
	}

	// Only the dead letter and the second message are left; ackd agrees.
	for _, k := range []string{"claim", "held", "due", "leases", "deadlines", "delayed"} {
		if got := c.lines("EXISTS", c.key(k)); got[0] != "0" {
			t.Errorf("%s still exists", c.key(k))
		}
	}
	rdb := srv.Client(t)
	st := checkInvariants(t, rdb, c.queue)
	if len(st.Raw) != 1 || string(st.Raw[0]) != "second" || len(st.Dead) != 1 || len(st.InFlight) != 0 {
		t.Fatalf("state = %+v", st)
	}
	lc, err := New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if qs, err := lc.Queues(t.Context()); err != nil || !slices.Equal(qs, []string{c.queue}) {
		t.Errorf("Queues = %v, %v", qs, err)
	}
	if d, err := lc.DeadLetters(t.Context(), c.queue, 0, 10); err != nil || len(d) != 1 || d[0].Reason != ReasonKilled || string(d[0].Payload) != "env|payload" || d[0].Failures != 1 {
		t.Errorf("DeadLetters = %+v, %v", d, err)
	}
}

// TestProtocolFunctions loads the scripts as a function library, built
// as docs/PROTOCOL.md says under a name of the client's own, and as
// lease.Library() exports it, with redis-cli alone, and takes, reads and
// acks a message with FCALL of either.
func TestProtocolFunctions(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	c := &cli{t: t, addr: srv.Addr(), queue: "protofn"}
	lib, err := os.ReadFile("lua/lib.lua")
	if err != nil {
		t.Fatal(err)
	}
	const name = "myackd"
	code := "#!lua name=" + name + "\nlocal KEYS, ARGV\n" + string(lib)
	for _, op := range []string{"take", "ack", "extend", "nack", "deadletter", "fail", "release", "push", "sweep", "replay", "purge", "pause", "stats", "peek"} {
		body, err := os.ReadFile("lua/" + op + ".lua")
		if err != nil {
			t.Fatal(err)
		}
		flags := "{}"
		if op == "stats" || op == "peek" {
			flags = "{'no-writes'}"
		}
		code += "\nredis.register_function{function_name='" + name + "_" + op + "', callback=function(k, a) KEYS, ARGV = k, a\n" +
			string(body) + "end, flags=" + flags + "}\n"
	}
	if out := c.run("FUNCTION", "LOAD", code); out != name {
		t.Fatalf("FUNCTION LOAD of the document's library = %q", out)
	}
	ackd := Library()
	if out := c.run("FUNCTION", "LOAD", ackd.Code); out != ackd.Name {
		t.Fatalf("FUNCTION LOAD of lease.Library() = %q", out)
	}
	if out := c.run("FUNCTION", "LOAD", ackd.Code); !strings.Contains(out, "already exists") {
		t.Fatalf("FUNCTION LOAD again = %q, want already exists", out)
	}

	c.lines("RPUSH", c.key("ready"), "hello")
	token, id := newToken(t), "cli-"+newToken(t)
	out := c.lines(append(append([]string{"FCALL", name + "_take", "10"}, c.takeKeys(token)...),
		"1", "0", "30000", "10", "ackd:wake", c.queue, "1048576", "0", "0", token, id)...)
	if len(out) != 6 || out[0] != "1" || out[5] != "\xffackd1|"+id+"|0|10|0|0|0|hello" {
		t.Fatalf("FCALL take = %q", out)
	}
	stats := c.lines("FCALL", ackd.Functions["stats"], "8", c.key("ready"), c.key("claim"), c.key("due"),
		c.key("delayed"), c.key("dead"), c.key("paused"), c.key("counts"), c.key("deadlines"), strconv.Itoa(headBytes))
	if len(stats) != 13 || stats[2] != "1" {
		t.Fatalf("FCALL stats = %q", stats)
	}
	if out := c.lines(append(append([]string{"FCALL", ackd.Functions["ack"], "4"}, c.ackKeys(token)...), token)...); out[0] != "1" {
		t.Fatalf("FCALL ack = %q, want 1", out)
	}
	st := checkInvariants(t, srv.Client(t), c.queue)
	if len(st.InFlight)+len(st.Ready)+len(st.Dead)+len(st.Delayed) != 0 {
		t.Errorf("after take and ack: %+v", st)
	}
}
