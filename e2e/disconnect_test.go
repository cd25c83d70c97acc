//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/e2e/internal/journal"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// replyCutter is a TCP proxy in front of Redis that can lose one reply: once
// armed with a marker, the next command containing it reaches Redis and
// runs, and then the client's connection is cut instead of the reply being
// forwarded. That is a network failure at the worst moment: the client
// cannot know whether its command ran, and go-redis retries it.
type replyCutter struct {
	ln     net.Listener
	target string
	marker atomic.Pointer[[]byte]
	cuts   atomic.Int64
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn // closed at cleanup
}

func startReplyCutter(t *testing.T, target string) *replyCutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &replyCutter{ln: ln, target: target}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *replyCutter) addr() string { return p.ln.Addr().String() }

// arm makes the proxy lose the reply to the next command containing marker.
func (p *replyCutter) arm(marker []byte) { p.marker.Store(&marker) }

func (p *replyCutter) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.pipe(c) })
	}
}

func (p *replyCutter) pipe(client net.Conn) {
	defer client.Close()
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer server.Close()
	p.mu.Lock()
	p.conns = append(p.conns, client, server)
	p.mu.Unlock()
	var cut atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := client.Read(buf)
			if n > 0 {
				if m := p.marker.Load(); m != nil && bytes.Contains(buf[:n], *m) && p.marker.CompareAndSwap(m, nil) {
					cut.Store(true)
				}
				if _, werr := server.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := server.Read(buf)
		if n > 0 && cut.Load() {
			// The command ran; its reply is dropped with the connection.
			p.cuts.Add(1)
			_ = client.Close()
			_ = server.Close()
			<-done
			return
		}
		if n > 0 {
			if _, werr := client.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	_ = client.Close()
	<-done
}

// Scenario 12: a consumer's connection drops right after its take ran in
// Redis, before the reply arrived; go-redis retries the take on a new
// connection (its default). Take is idempotent: the resent call must hand
// back the very lease the first run made (no orphaned lease, no message
// leased twice, none dead-lettered), and the retry must not harm any other
// message. Run for messages pushed by the Go client (envelopes) and by a
// plain producer (raw payloads, which get their id from the take).
func TestTakeReplyLost(t *testing.T) {
	t.Parallel()
	// The take runs as FCALL of the library's take function.
	marker := []byte(lease.Library().Functions["take"])

	run := func(t *testing.T, push func(e *env) []string) {
		e := setup(t)
		ctx := t.Context()
		d := startAckd(t, e.srv)
		payloads := push(e)

		proxy := startReplyCutter(t, e.srv.Addr())
		rdb := redis.NewClient(&redis.Options{Addr: proxy.addr()}) // go-redis defaults: 3 retries
		defer rdb.Close()
		lc, err := lease.New(rdb, &lease.Config{MaxDeliveries: lease.Unlimited})
		if err != nil {
			t.Fatal(err)
		}
		// Load the library first (the daemon has, at start): otherwise the
		// reply cut could be that of an FCALL of a missing function, which
		// ran nothing.
		if err := lc.LoadFunctions(ctx); err != nil {
			t.Fatal(err)
		}
		proxy.arm(marker)
		// Leases far longer than the steps between a take and its ack,
		// which a loaded host may stall for a few hundred ms: a lease that
		// runs out here is an orphan of the resent take. It still runs out
		// well within the drain below.
		l, err := lc.Take(ctx, e.queue, &lease.TakeOpts{LeaseFor: 5 * time.Second})
		if proxy.cuts.Load() != 1 {
			t.Fatalf("the proxy cut %d replies, want 1", proxy.cuts.Load())
		}
		switch {
		case err != nil:
			t.Fatalf("take after the lost reply: %v", err)
		case l.Attempt != 1 || string(l.Payload) != payloads[0]:
			t.Errorf("the resent take leased %s (attempt %d), want the first run's lease of %s", l.Payload, l.Attempt, payloads[0])
		default:
			if st, ok := e.stats(); !ok || st.InFlight != 1 {
				t.Errorf("after the resent take: %+v (read ok: %v); want exactly one lease in flight", st, ok)
			}
			if err := journal.Record(ctx, e.rdb, e.queue, journal.NewHandling(ctx, e.rdb, l)); err != nil {
				t.Fatal(err)
			}
			if res, err := journal.Ack(ctx, e.rdb, l); res != journal.ResultOK {
				t.Errorf("ack of the retried take's lease: %v", err)
			}
		}

		f := startConsumers(t, e.srv, e.queue, 1, "-lease", "5s", "-workers", "4")
		var st lease.Stats
		redistest.WaitFor(t, drainTimeout, throttle(20*time.Millisecond, func() bool {
			st, _ = e.stats()
			return st.Ready == 0 && st.InFlight == 0 && st.Delayed == 0
		}), "queue drained (last %+v)", &st)
		f.stop(t)
		d.stop(t)
		s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
		if s.Expiries != 0 {
			t.Errorf("%d leases ran out: the resent take left an orphan", s.Expiries)
		}
	}

	t.Run("envelopes", func(t *testing.T) {
		t.Parallel()
		run(t, func(e *env) []string { return e.push(50, "m", nil) })
	})
	t.Run("raw", func(t *testing.T) {
		t.Parallel()
		run(t, func(e *env) []string {
			var payloads []string
			var elems []any
			for i := range 50 {
				p := fmt.Sprintf("raw-%05d", i)
				payloads = append(payloads, p)
				elems = append(elems, p)
			}
			if err := e.rdb.RPush(e.t.Context(), lease.KeysFor(e.queue).Ready, elems...).Err(); err != nil {
				e.t.Fatal(err)
			}
			if err := e.rdb.SAdd(e.t.Context(), lease.RegistryKey, e.queue).Err(); err != nil {
				e.t.Fatal(err)
			}
			return payloads
		})
	})
}
