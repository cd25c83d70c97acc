package lease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redisconn"
	"github.com/ackd/ackd/internal/redistest"
)

// clusterClient returns a lease Client over cl, through the same
// connection code the daemon uses.
func clusterClient(t *testing.T, cl *redistest.Cluster, cfg *Config) (*Client, *redis.ClusterClient) {
	t.Helper()
	rc := redisconn.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), ClusterStateReloadInterval: redisconn.ClusterReloadIntervalDefault})
	t.Cleanup(func() { _ = rc.Close() })
	c, err := New(rc, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, rc
}

// queuesOnEveryMaster returns n queue names per master of cl.
func queuesOnEveryMaster(t *testing.T, cl *redistest.Cluster, n int) []string {
	t.Helper()
	per := map[string]int{}
	var out []string
	for i := 0; len(out) < 3*n; i++ {
		q := fmt.Sprintf("q%d", i)
		m := cl.MasterOf(t, KeysFor(q).Ready).Addr()
		if per[m] < n {
			per[m]++
			out = append(out, q)
		}
		if i > 1000 {
			t.Fatal("could not place queues on every master")
		}
	}
	return out
}

// nodeOf returns a client of the master that holds queue.
func nodeOf(t *testing.T, cl *redistest.Cluster, queue string) *redis.Client {
	t.Helper()
	return cl.MasterOf(t, KeysFor(queue).Ready).Client(t)
}

func TestClusterEveryOperationOnEveryMaster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, nil)
	c, _ := clusterClient(t, cl, &Config{Replicas: 1})
	ctx := t.Context()
	queues := queuesOnEveryMaster(t, cl, 2)
	for _, q := range queues {
		a, err := c.Push(ctx, q, []byte("a"), nil)
		if err != nil {
			t.Fatalf("push to %s: %v", q, err)
		}
		if _, err := c.Push(ctx, q, []byte("b"), &PushOpts{Delay: time.Millisecond}); err != nil {
			t.Fatalf("delayed push to %s: %v", q, err)
		}
		l, err := c.Take(ctx, q, &TakeOpts{Wait: time.Second})
		if err != nil || l.ID != a {
			t.Fatalf("take from %s: %v, %v", q, l, err)
		}
		if err := l.Extend(ctx, time.Minute); err != nil {
			t.Fatalf("extend in %s: %v", q, err)
		}
		if err := l.Nack(ctx, 0); err != nil {
			t.Fatalf("nack in %s: %v", q, err)
		}
		ls, err := c.TakeBatch(ctx, q, 2, &TakeOpts{Wait: time.Second, LeaseFor: time.Millisecond})
		if err != nil || len(ls) == 0 {
			t.Fatalf("take batch from %s: %v, %v", q, ls, err)
		}
		if err := ls[0].Ack(ctx); err != nil {
			t.Fatalf("ack in %s: %v", q, err)
		}
		redistest.WaitFor(t, 5*time.Second, func() bool {
			r, err := c.Sweep(ctx, q, nil)
			if err != nil {
				t.Fatalf("sweep %s: %v", q, err)
			}
			st, _ := c.Stats(ctx, q)
			return r.Requeued+int(st.Ready) > 0 || st.InFlight == 0
		}, "sweep of %s", q)
		checkInvariants(t, nodeOf(t, cl, q), q)
	}
	got, err := c.Queues(ctx)
	if err != nil || len(got) != len(queues) {
		t.Fatalf("Queues: %v, %v", got, err)
	}
}

// TestClusterMigrationRetried holds a queue's slot in mid-migration: take
// and ack meet TRYAGAIN there, are retried, and succeed once the slot has
// moved; held past Config.RetryWindow, the caller gets the refusal.
func TestClusterMigrationRetried(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, nil)
	c, _ := clusterClient(t, cl, &Config{RetryWindow: 20 * time.Second})
	short, _ := clusterClient(t, cl, &Config{RetryWindow: 300 * time.Millisecond})
	ctx := t.Context()
	const q = "migrating"
	for _, p := range []string{"1", "2", "3", "4"} {
		if _, err := c.Push(ctx, q, []byte(p), nil); err != nil {
			t.Fatal(err)
		}
	}
	held, err := c.Take(ctx, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	// A lease that runs out at once, for a sweep during the migration.
	if _, err := c.Take(ctx, q, &TakeOpts{LeaseFor: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	slot := cl.Slot(t, KeysFor(q).Ready)
	from := cl.SlotMaster(t, slot)
	to := cl.OtherMaster(t, from)
	fromClient := from.Client(t)
	tryagains := func() int {
		info := fromClient.Info(ctx, "errorstats").Val()
		_, rest, ok := strings.Cut(info, "errorstat_TRYAGAIN:count=")
		if !ok {
			return 0
		}
		var n int
		fmt.Sscanf(rest, "%d", &n)
		return n
	}

	mig := cl.BeginMigration(t, slot, to)
	// A take declares new shadow keys, which exist on neither node:
	// TRYAGAIN for as long as the slot is migrating.
	_, err = short.Take(ctx, q, nil)
	if !redis.IsTryAgainError(err) || !strings.HasPrefix(err.Error(), "lease: take from migrating") {
		t.Fatalf("take held past the retry window: %v, want TRYAGAIN", err)
	}
	before := tryagains()
	var took *Lease
	var takeErr error
	waitTake := background(func() { took, takeErr = c.Take(ctx, q, nil) })
	redistest.WaitFor(t, 10*time.Second, func() bool { return tryagains() >= before+2 }, "the take is refused and retried")
	// Move one key: the ack's keys are now split between the nodes.
	mig.MoveKeys(t, 1)
	var ackErr, sweepErr error
	var swept SweepResult
	waitAck := background(func() { ackErr = held.Ack(ctx) })
	waitSweep := background(func() { swept, sweepErr = c.Sweep(ctx, q, nil) })
	redistest.WaitFor(t, 10*time.Second, func() bool { return tryagains() >= before+6 }, "the ack and the sweep are refused and retried")
	mig.Finish(t)
	waitTake()
	waitAck()
	waitSweep()
	if sweepErr != nil || swept.Requeued != 1 {
		t.Fatalf("sweep across the migration: %+v, %v; want 1 requeued", swept, sweepErr)
	}
	if takeErr != nil || took == nil {
		t.Fatalf("take across the migration: %v", takeErr)
	}
	if ackErr != nil {
		t.Fatalf("ack across the migration: %v", ackErr)
	}
	if err := took.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	st := checkInvariants(t, to.Client(t), q)
	if len(st.Ready) != 2 || len(st.InFlight) != 0 {
		t.Fatalf("after the migration: ready %v, in flight %v; want two ready", st.Ready, st.InFlight)
	}

	// Reshard the slots of busy queues, and some more, to another master
	// while they are used.
	queues := queuesOnEveryMaster(t, cl, 2)
	src := cl.MasterOf(t, KeysFor(queues[0]).Ready)
	var dst *redistest.Server
	var slots []int
	for _, q := range queues {
		if m := cl.MasterOf(t, KeysFor(q).Ready); m == src {
			slots = append(slots, cl.Slot(t, KeysFor(q).Ready))
		} else {
			dst = m
		}
	}
	led, stop := startWorkload(t, c, queues)
	began := time.Now()
	cl.MoveSlots(t, slots, dst)
	moved := cl.Reshard(t, 20, src, dst)
	t.Logf("resharded %d busy and %d other slots under load in %v", len(slots), len(moved), time.Since(began).Round(time.Millisecond))
	stop()
	led.check(t, func(q string) *redis.Client { return nodeOf(t, cl, q) }, queues)
	if n := led.errs.Load(); n != 0 {
		t.Fatalf("%d errors reached callers during the reshard: %v", n, led.lastErr())
	}
}

// ledger accounts for every message a workload pushed.
type ledger struct {
	mu       sync.Mutex
	pushed   map[string]string // id -> queue, for pushes that returned nil
	acked    map[string]bool   // ids whose ack returned nil
	ackErr   map[string]bool   // ids whose ack returned an error
	errs     atomic.Int64
	notRepl  atomic.Int64
	last     error
	firstAt  time.Time
	lastAt   time.Time
	okAfter  atomic.Int64 // successful acks after mark
	markedAt atomic.Int64
	maxLat   atomic.Int64 // longest call, ns
}

// took records how long one call took.
func (l *ledger) took(since time.Time) {
	d := int64(time.Since(since))
	for {
		m := l.maxLat.Load()
		if d <= m || l.maxLat.CompareAndSwap(m, d) {
			return
		}
	}
}

func newLedger() *ledger {
	return &ledger{pushed: map[string]string{}, acked: map[string]bool{}, ackErr: map[string]bool{}}
}

func (l *ledger) fail(err error) {
	l.errs.Add(1)
	if errors.Is(err, ErrNotReplicated) {
		l.notRepl.Add(1)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.firstAt.IsZero() {
		l.firstAt = now
	}
	l.lastAt, l.last = now, err
}

func (l *ledger) lastErr() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

func (l *ledger) window() (first, last time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.firstAt, l.lastAt
}

// mark starts counting successful acks.
func (l *ledger) mark() { l.markedAt.Store(time.Now().UnixNano()) }

// startWorkload runs runWorkload until the returned stop is called, and
// returns once it has acked 100 messages.
func startWorkload(t *testing.T, c *Client, queues []string) (led *ledger, stop func()) {
	t.Helper()
	led = newLedger()
	done := make(chan struct{})
	wait := runWorkload(t.Context(), c, queues, led, done)
	t.Cleanup(func() {
		select {
		case <-done:
		default:
			close(done)
			wait()
		}
	})
	redistest.WaitFor(t, 10*time.Second, func() bool {
		led.mu.Lock()
		defer led.mu.Unlock()
		return len(led.acked) > 100
	}, "the workload runs")
	return led, func() {
		close(done)
		wait()
	}
}

// runWorkload pushes to and consumes every queue until stop is closed:
// one producer and one consumer per queue.
func runWorkload(ctx context.Context, c *Client, queues []string, led *ledger, stop <-chan struct{}) (wait func()) {
	var wg sync.WaitGroup
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	for _, q := range queues {
		wg.Go(func() {
			// Paced, so that the load leaves the machine's other tests
			// their share: at most one push per 2 ms per queue.
			pace := time.NewTicker(2 * time.Millisecond)
			defer pace.Stop()
			for i := 0; !stopped(); i++ {
				<-pace.C
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				began := time.Now()
				id, err := c.Push(cctx, q, fmt.Appendf(nil, "%s-%d", q, i), nil)
				led.took(began)
				cancel()
				if err != nil {
					led.fail(err)
					continue
				}
				led.mu.Lock()
				led.pushed[id] = q
				led.mu.Unlock()
			}
		})
		wg.Go(func() {
			for !stopped() {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				l, err := c.Take(cctx, q, &TakeOpts{Wait: 50 * time.Millisecond})
				if err == nil {
					began := time.Now()
					err = l.Ack(cctx)
					led.took(began)
					led.mu.Lock()
					if err == nil {
						led.acked[l.ID] = true
					} else {
						led.ackErr[l.ID] = true
					}
					led.mu.Unlock()
					if err == nil && led.markedAt.Load() != 0 {
						led.okAfter.Add(1)
					}
				}
				cancel()
				if err != nil && !errors.Is(err, ErrNoMessage) {
					led.fail(err)
				}
			}
		})
	}
	return wg.Wait
}

// check reads every queue from the master that holds it now and fails the
// test for each message lost without an error to anyone: its push returned
// nil, no ack of it returned anything (nil or an error), and it is nowhere
// in Redis.
func (l *ledger) check(t *testing.T, master func(queue string) *redis.Client, queues []string) {
	t.Helper()
	for i, id := range l.vanished(t, master, queues) {
		if i < 5 {
			t.Errorf("message %s: its push returned nil, no ack of it returned, and it is nowhere in Redis", id)
		}
	}
}

func (l *ledger) vanished(t *testing.T, master func(queue string) *redis.Client, queues []string) []string {
	t.Helper()
	present := map[string]bool{}
	dups := 0
	for _, q := range queues {
		for id, n := range placesOf(t, master(q), q) {
			present[id] = true
			dups += n - 1
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id := range l.pushed {
		if !present[id] && !l.acked[id] && !l.ackErr[id] {
			out = append(out, id)
		}
	}
	if len(l.pushed) == 0 || len(l.acked) == 0 {
		t.Fatalf("the workload pushed %d and acked %d messages", len(l.pushed), len(l.acked))
	}
	t.Logf("pushed %d, acked %d, %d errors to callers (%d ErrNotReplicated), %d vanished without an error, %d second copies",
		len(l.pushed), len(l.acked), l.errs.Load(), l.notRepl.Load(), len(out), dups)
	return out
}

// placesOf reads, in one MULTI, every message id of queue and how many
// places hold it. More than one is a second copy: go-redis resends an
// RPUSH whose reply a dropped connection lost, and after a failover the
// first one may have reached the replica.
func placesOf(t *testing.T, rdb *redis.Client, queue string) map[string]int {
	t.Helper()
	ctx := t.Context()
	k := KeysFor(queue)
	var claim, ready *redis.StringSliceCmd
	var held, delayed, dead *redis.StringSliceCmd
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		claim = p.LRange(ctx, k.Claim, 0, -1)
		ready = p.LRange(ctx, k.Ready, 0, -1)
		held = p.HVals(ctx, k.Held)
		delayed = p.ZRange(ctx, k.Delayed, 0, -1)
		dead = p.ZRange(ctx, k.Dead, 0, -1)
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", queue, err)
	}
	out := map[string]int{}
	// lease records are envelopes too
	for _, el := range slices.Concat(claim.Val(), ready.Val(), delayed.Val(), held.Val()) {
		e, err := parseEnvelope([]byte(el))
		if err != nil {
			t.Errorf("queue %s holds a malformed element %q: %v", queue, el, err)
			continue
		}
		out[e.ID]++
	}
	for _, id := range dead.Val() {
		out[id]++
	}
	return out
}

// TestClusterKillMaster runs CLUSTER FAILOVER, then kills the master of
// busy queues: callers see errors for no longer than the Cluster's own
// failover plus 2 s (with the default RetryWindow, none: they wait).
func TestClusterKillMaster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, nil)
	c, _ := clusterClient(t, cl, nil)
	queues := queuesOnEveryMaster(t, cl, 2)
	led, stop := startWorkload(t, c, queues)
	phase := func(name string, do func()) {
		t.Helper()
		errs0 := led.errs.Load()
		led.maxLat.Store(0)
		led.okAfter.Store(0)
		led.markedAt.Store(0)
		began := time.Now()
		do()
		done := time.Now()
		led.mark()
		redistest.WaitFor(t, 10*time.Second, func() bool { return led.okAfter.Load() > 100 }, "the workload recovers after %s", name)
		_, last := led.window()
		t.Logf("%s: Cluster done in %v; %d errors reached callers, the last %v after it was done; longest push or ack %v",
			name, done.Sub(began).Round(time.Millisecond), led.errs.Load()-errs0, sub(last, done),
			time.Duration(led.maxLat.Load()).Round(time.Millisecond))
		if last.After(began) && last.Sub(done) > 2*time.Second {
			t.Errorf("%s: callers saw errors %v after the Cluster was done; want at most 2 s", name, last.Sub(done))
		}
	}
	m := cl.MasterOf(t, KeysFor(queues[0]).Ready)
	r := cl.ReplicaOf(t, m)
	phase("CLUSTER FAILOVER", func() { cl.Failover(t, r) })
	phase("SIGKILL of a master", func() { cl.KillMaster(t, r) })
	stop()
	// Without WAIT a killed master may take acknowledged writes with it;
	// count them, do not require none.
	led.vanished(t, func(q string) *redis.Client { return nodeOf(t, cl, q) }, queues)
}

func sub(a, b time.Time) time.Duration {
	if a.IsZero() {
		return 0
	}
	return a.Sub(b).Round(time.Millisecond)
}

// TestClusterFailoverDurable runs CLUSTER FAILOVER and then a SIGKILL of
// the new master under load with Config.Replicas 1: every message whose
// push returned nil is acked or still in Redis.
func TestClusterFailoverDurable(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, nil)
	c, _ := clusterClient(t, cl, &Config{Replicas: 1, ReplicaTimeout: 500 * time.Millisecond})
	queues := queuesOnEveryMaster(t, cl, 2)
	led, stop := startWorkload(t, c, queues)
	m := cl.MasterOf(t, KeysFor(queues[0]).Ready)
	r := cl.ReplicaOf(t, m)
	began := time.Now()
	cl.Failover(t, r)
	t.Logf("CLUSTER FAILOVER: %v until healthy", time.Since(began).Round(time.Millisecond))
	began = time.Now()
	cl.KillMaster(t, r)
	t.Logf("SIGKILL: %v until failed over", time.Since(began).Round(time.Millisecond))
	// The promoted node has no replica until the killed one is back:
	// every change on its queues fails with ErrNotReplicated meanwhile.
	r.Restart(t)
	cl.WaitHealthy(t, 30*time.Second)
	led.mark()
	redistest.WaitFor(t, 10*time.Second, func() bool { return led.okAfter.Load() > 100 }, "the workload recovers")
	stop()
	led.check(t, func(q string) *redis.Client { return nodeOf(t, cl, q) }, queues)
}

// TestSentinelFailoverDurable runs SENTINEL FAILOVER, which go-redis does
// not follow at once and whose old master keeps accepting writes that the
// resync later discards, and a SIGKILL of the master, under load with
// Config.Replicas 1: no message whose push returned nil vanishes.
func TestSentinelFailoverDurable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		kill     bool
		replicas int
	}{
		{"SENTINEL FAILOVER", false, 1},
		{"SIGKILL", true, 1},
		// Without WAIT: the losses Replicas prevents, counted, not failed on.
		{"SENTINEL FAILOVER without WAIT", false, 0},
	} {
		name, kill := tc.name, tc.kill
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := redistest.StartSentinel(t, nil)
			rc := s.Client(t)
			c, err := New(rc, &Config{Replicas: tc.replicas, ReplicaTimeout: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			queues := []string{"a", "b", "c", "d"}
			led, stop := startWorkload(t, c, queues)
			began := time.Now()
			var m *redistest.Server
			if kill {
				m = s.KillMaster(t)
			} else {
				m = s.Failover(t)
			}
			switched := time.Now()
			// Keep going for a while: go-redis follows the switch within
			// about a second, writes to the old master meanwhile fail WAIT.
			led.mark()
			redistest.WaitFor(t, 10*time.Second, func() bool { return time.Since(switched) > 2*time.Second }, "load after the switch")
			stop()
			first, last := led.window()
			t.Logf("%s: +switch-master after %v; %d errors to callers (%d ErrNotReplicated) from %v to %v after it began; %d acks after the switch",
				name, switched.Sub(began).Round(time.Millisecond), led.errs.Load(), led.notRepl.Load(), sub(first, began), sub(last, began), led.okAfter.Load())
			mc := m.Client(t)
			if tc.replicas == 0 {
				led.vanished(t, func(string) *redis.Client { return mc }, queues)
				return
			}
			led.check(t, func(string) *redis.Client { return mc }, queues)
		})
	}
}

// redisErr is a Redis error reply, as go-redis returns it.
type redisErr string

func (e redisErr) Error() string { return string(e) }
func (redisErr) RedisError()     {}

func TestRefused(t *testing.T) {
	t.Parallel()
	dial := &net.OpError{Op: "dial", Err: errors.New("connection refused")}
	read := &net.OpError{Op: "read", Err: errors.New("connection reset")}
	for _, tc := range []struct {
		err    error
		redial bool
		want   bool
	}{
		{nil, true, false},
		{redisErr("TRYAGAIN Multiple keys request during rehashing of slot"), false, true},
		{redisErr("ASK 3999 127.0.0.1:6381"), false, true},
		{redisErr("MOVED 3999 127.0.0.1:6381"), false, true},
		{redisErr("CLUSTERDOWN The cluster is down"), false, true},
		{redisErr("READONLY You can't write against a read only replica."), false, true},
		{redisErr("NOREPLICAS Not enough good replicas to write."), false, true},
		{redisErr("LOADING Redis is loading the dataset in memory"), false, true},
		{redisErr("MASTERDOWN Link with MASTER is down"), false, true},
		{fmt.Errorf("lease: take: %w", redisErr("TRYAGAIN x")), false, true},
		{redisErr("WRONGTYPE Operation against a key holding the wrong kind of value"), true, false},
		{redisErr("ERR Error running script"), true, false},
		{dial, true, true},
		{dial, false, false},
		{read, true, false}, // the command may have run
		{context.DeadlineExceeded, true, false},
		{redis.Nil, true, false},
	} {
		if got := refused(tc.err, tc.redial); got != tc.want {
			t.Errorf("refused(%v, %v) = %v, want %v", tc.err, tc.redial, got, tc.want)
		}
	}
}

// TestBlockingClientKeepsPoolFree parks more blocked takes than the main
// pool has connections: with Config.BlockingClient they hold its
// connections, and pushes and acks on the main pool go through at once.
func TestBlockingClientKeepsPoolFree(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	main := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 2, PoolTimeout: 2 * time.Second})
	blocking := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 20})
	t.Cleanup(func() { _ = main.Close(); _ = blocking.Close() })
	c, err := New(main, &Config{BlockingClient: blocking})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const waiters = 10
	var wg sync.WaitGroup
	for i := range waiters {
		wg.Go(func() {
			// Far longer than the loop below: a take that held a main
			// pool connection would hold it past the loop's bound. The
			// pushes after the loop wake them.
			l, err := c.Take(ctx, fmt.Sprintf("idle%d", i), &TakeOpts{Wait: 30 * time.Second})
			if err == nil {
				_ = l.Ack(ctx)
			} else if !errors.Is(err, ErrNoMessage) {
				t.Errorf("blocked take: %v", err)
			}
		})
	}
	waitBlocked(t, srv.Client(t), waiters)
	for i := range 20 {
		began := time.Now()
		if _, err := c.Push(ctx, "busy", []byte("x"), nil); err != nil {
			t.Fatalf("push %d with %d takes blocked: %v", i, waiters, err)
		}
		l, err := c.Take(ctx, "busy", nil)
		if err != nil {
			t.Fatalf("take %d: %v", i, err)
		}
		if err := l.Ack(ctx); err != nil {
			t.Fatalf("ack %d: %v", i, err)
		}
		if d := time.Since(began); d > 5*time.Second {
			t.Fatalf("push, take and ack took %v with %d takes blocked", d, waiters)
		}
	}
	// Wake the waiters so the test ends without waiting them out.
	for i := range waiters {
		if _, err := c.Push(ctx, fmt.Sprintf("idle%d", i), []byte("wake"), nil); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

func TestTopologyConfig(t *testing.T) {
	t.Parallel()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", ReadTimeout: 2 * time.Second})
	t.Cleanup(func() { _ = rdb.Close() })
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Replicas: -1}, "Config.Replicas"},
		{Config{Replicas: 1, ReplicaTimeout: 2 * time.Second}, "read timeout"},
		{Config{Replicas: 1, ReplicaTimeout: time.Microsecond}, "Config.ReplicaTimeout"},
	} {
		_, err := New(rdb, &tc.cfg)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want ErrInvalidArgument naming %s", tc.cfg, err, tc.want)
		}
	}
	if _, err := New(rdb, &Config{Replicas: 1, ReplicaTimeout: time.Second, RetryWindow: -1}); err != nil {
		t.Errorf("a valid topology Config: %v", err)
	}
}
