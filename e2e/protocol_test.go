//go:build e2e

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/e2e/internal/journal"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// cliConsumer is a consumer that speaks to Redis only through redis-cli,
// as a client in another language would, following the scripts' contracts
// (docs/PROTOCOL.md, and the header of each lease/lua/*.lua).
type cliConsumer struct {
	t       *testing.T
	addr    string
	queue   string
	takeSHA string
	ackSHA  string
}

func newCLIConsumer(t *testing.T, e *env) *cliConsumer {
	t.Helper()
	src := lease.Scripts()
	c := &cliConsumer{t: t, addr: e.srv.Addr(), queue: e.queue}
	c.takeSHA = c.cli("SCRIPT", "LOAD", src["take"])
	c.ackSHA = c.cli("SCRIPT", "LOAD", src["ack"])
	for _, sha := range []string{c.takeSHA, c.ackSHA} {
		if len(sha) != 40 {
			t.Fatalf("SCRIPT LOAD returned %q", sha)
		}
	}
	// Make the queue known to the daemon, as Push and Take do.
	if got := c.cli("SADD", lease.RegistryKey, e.queue); got != "0" && got != "1" {
		t.Fatalf("SADD %s: %s", lease.RegistryKey, got)
	}
	return c
}

func (c *cliConsumer) cli(args ...string) string {
	c.t.Helper()
	out := redistest.RedisCLI(c.t, c.addr, args...)
	if strings.HasPrefix(out, "ERR") || strings.HasPrefix(out, "NOSCRIPT") || strings.HasPrefix(out, "WRONGTYPE") {
		c.t.Fatalf("redis-cli %s: %s", args[0], out)
	}
	return out
}

// cliLease is what take.lua returns for one lease.
type cliLease struct {
	id, token, payload string
	attempt            int
	deadlineMS         int64
}

func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// take runs take.lua for up to n messages with the given lease.
func (c *cliConsumer) take(n int, leaseFor time.Duration) []cliLease {
	c.t.Helper()
	k := lease.KeysFor(c.queue)
	tokens := make([]string, n)
	keys := []string{k.Ready, k.Claim, k.Held, k.Due, k.Delayed, k.Dead, k.DeadMsgs, k.Paused, k.Counts}
	args := []string{strconv.Itoa(n), strconv.FormatInt(leaseFor.Milliseconds(), 10), "30000", "0", lease.WakeChannel, c.queue,
		"1048576", "0", "0"} // max payload, no acks, no report of what remains
	for i := range tokens {
		tokens[i] = newToken()
		keys = append(keys, lease.LeaseKey(c.queue, tokens[i]))
		args = append(args, tokens[i], "cli-"+newToken()) // token, and the id a raw payload gets
	}
	cmd := append([]string{"EVALSHA", c.takeSHA, strconv.Itoa(len(keys))}, keys...)
	out := c.cli(append(cmd, args...)...)
	f := strings.Split(out, "\n")
	if len(f) < 4 {
		c.t.Fatalf("take reply %q", out)
	}
	count, err := strconv.Atoi(f[0])
	if err != nil || len(f) != 4+2*count || count > n {
		c.t.Fatalf("take reply %q", out)
	}
	// per lease its deadline and its record, the envelope as it was taken
	// (its attempts not counting this delivery); the i-th is token i's
	var ls []cliLease
	for i := 4; i < len(f); i += 2 {
		deadline, err := strconv.ParseInt(f[i], 10, 64)
		env, ok := journal.ParseElement(f[i+1])
		if err != nil || !ok {
			c.t.Fatalf("take reply %q", out)
		}
		ls = append(ls, cliLease{id: env.ID, token: tokens[len(ls)], attempt: env.Attempts + 1, deadlineMS: deadline, payload: env.Payload})
	}
	return ls
}

// ack runs ack.lua for the lease of token and returns its status: 1
// acked, 0 not held.
func (c *cliConsumer) ack(token string) string {
	c.t.Helper()
	k := lease.KeysFor(c.queue)
	return c.cli("EVALSHA", c.ackSHA, "4", k.Held, k.Due, k.Counts, lease.LeaseKey(c.queue, token), token)
}

// Scenario 9: clients that know nothing of Go. A producer pushes plain
// payloads with redis-cli RPUSH onto the ready list; a consumer made of
// redis-cli calls loads the scripts and takes (blocking with BLMOVE when
// the queue is empty) and acks with EVALSHA, per docs/PROTOCOL.md. Some
// of its leases run out: the daemon requeues them, the consumer gets them
// back with attempt 2, its ack with the old token finds nothing (not held).
// Go consumers then drain the rest.
func TestPlainRedisClients(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	d := startAckd(t, e.srv)

	var payloads []string
	produce := func(n int) { // a producer that knows only RPUSH
		args := []string{"RPUSH", lease.KeysFor(e.queue).Ready}
		for range n {
			p := fmt.Sprintf("raw-%05d", len(payloads))
			payloads = append(payloads, p)
			args = append(args, p)
		}
		got := redistest.RedisCLI(t, e.srv.Addr(), args...)
		if l, err := strconv.Atoi(got); err != nil || l < n {
			t.Fatalf("RPUSH of %d: %s", n, got)
		}
	}
	const abandon, first = 10, 50
	produce(first)

	c := newCLIConsumer(t, e)
	// Take 10 with a short lease and abandon them: ackd requeues them.
	abandoned := map[string]cliLease{} // id -> the lease given up, until it is back
	for _, l := range c.take(abandon, 300*time.Millisecond) {
		if l.attempt != 1 {
			t.Fatalf("%s: attempt %d on its first take", l.payload, l.attempt)
		}
		abandoned[l.id] = l
	}
	if len(abandoned) != abandon {
		t.Fatalf("took %d, want %d", len(abandoned), abandon)
	}
	// Then take one at a time with a long lease and ack, until all 50
	// were acked, the abandoned ones among them: the queue runs dry while
	// they are out, and the consumer blocks.
	acked := 0
	redistest.WaitFor(t, 60*time.Second, func() bool {
		ls := c.take(1, 10*time.Second)
		if len(ls) == 0 {
			// The protocol's blocking take: park the next element on the
			// claim list, then take again (take drains the claim list first).
			k := lease.KeysFor(e.queue)
			c.cli("BLMOVE", k.Ready, k.Claim, "LEFT", "RIGHT", "0.5")
			return false
		}
		l := ls[0]
		lh, err := e.lc.LeaseOf(e.queue, l.id, l.token)
		if err != nil {
			t.Fatalf("take gave id %q token %q: %v", l.id, l.token, err)
		}
		lh.Payload, lh.Attempt = []byte(l.payload), l.attempt
		h := journal.NewHandling(ctx, e.rdb, lh)
		if old, ok := abandoned[l.id]; ok {
			if l.attempt != 2 {
				t.Errorf("%s came back with attempt %d, want 2", l.payload, l.attempt)
			}
			if got := c.ack(old.token); got != "0" {
				t.Errorf("ack of %s with the token of its expired lease: %s, want 0 (not held)", l.payload, got)
			}
			delete(abandoned, l.id)
		}
		if err := journal.Record(ctx, e.rdb, e.queue, h); err != nil {
			t.Fatal(err)
		}
		got := c.ack(l.token)
		res := map[string]string{"1": journal.ResultOK, "0": journal.ResultNotHeld, "-1": journal.ResultStale}[got]
		if err := journal.RecordSettle(ctx, e.rdb, e.queue, journal.Settle{Token: l.token, Op: "ack", Result: res}); err != nil {
			t.Fatal(err)
		}
		if got != "1" {
			t.Errorf("ack of %s: %s, want 1", l.payload, got)
		}
		acked++
		return acked == first
	}, "redis-cli consumer acked all %d messages", first)
	if len(abandoned) != 0 {
		t.Errorf("%d abandoned messages never came back", len(abandoned))
	}

	// More plain pushes, drained by Go consumers.
	produce(250)

	f := startConsumers(t, e.srv, e.queue, 2, "-lease", "300ms", "-workers", "4")
	e.waitDrained(drainTimeout)
	f.stop(t)
	d.stop(t)
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	if s.Expiries < abandon {
		t.Errorf("%d expiries, want at least the %d abandoned leases", s.Expiries, abandon)
	}
}
