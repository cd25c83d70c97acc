//go:build e2e

package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// Scenario: a rolling upgrade from lease format 1 (docs/DEPLOY.md). Consumers
// of an older version took messages, leases keyed by message id in
// ackd:{q}:leases and ackd:{q}:deadlines (written here exactly as
// docs/PROTOCOL.md describes format 1, in one MULTI as the old take script
// wrote them), and died; a consumer of this version took others and died
// too. This version's status counts both kinds in flight; its daemon, started
// after them as the upgrade order says, requeues both when they run out, and
// new consumers drain the queue: every message handled, each delivery
// numbered after the one before, and nothing of format 1 left.
func TestUpgradeFromFormat1(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	const n, old, abandoned = 40, 10, 5
	payloads := e.push(n, "up", nil)
	k := lease.KeysFor(e.queue)

	now, err := e.rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	deadline := now.UnixMilli() + 300
	for range old {
		el, err := e.rdb.LPop(ctx, k.Ready).Result()
		if err != nil {
			t.Fatal(err)
		}
		// "\xffackd1|" id "|" attempts "|" rest: the record is token "|"
		// the envelope with attempts counting this delivery
		body, ok := strings.CutPrefix(el, "\xffackd1|")
		id, rest, ok1 := strings.Cut(body, "|")
		attempts, rest, ok2 := strings.Cut(rest, "|")
		a, err := strconv.Atoi(attempts)
		if !ok || !ok1 || !ok2 || err != nil {
			t.Fatalf("element %q is not an envelope", el)
		}
		token := newToken()
		rec := token + "|\xffackd1|" + id + "|" + strconv.Itoa(a+1) + "|" + rest
		_, err = e.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, k.Leases, id, rec)
			p.ZAdd(ctx, k.Deadlines, redis.Z{Score: float64(deadline), Member: id})
			p.Do(ctx, "SET", lease.LeaseKey(e.queue, token), id, "PXAT", deadline)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for range abandoned {
		if _, err := e.lc.Take(ctx, e.queue, &lease.TakeOpts{LeaseFor: 300 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	// Nothing runs yet that could move a lease: one read is the state.
	s, err := e.lc.Stats(ctx, e.queue)
	if err != nil || s.InFlight != old+abandoned || s.Ready != n-old-abandoned {
		t.Fatalf("stats before the daemon: %+v, %v; want %d in flight (%d of format 1), %d ready", s, err, old+abandoned, old, n-old-abandoned)
	}

	d := startAckd(t, e.srv)
	f := startConsumers(t, e.srv, e.queue, 2, "-workers", "4")
	e.waitDrained(drainTimeout)
	f.stop(t)
	d.stop(t)
	sum := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	if sum.Expiries < old+abandoned {
		t.Errorf("%d expiries, want at least the %d leases of both formats left to run out", sum.Expiries, old+abandoned)
	}
	if got := redistest.RedisCLI(t, e.srv.Addr(), "EXISTS", k.Leases, k.Deadlines); got != "0" {
		t.Errorf("format-1 keys left after the drain: EXISTS = %s", got)
	}
}
