package notify

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

const waitLong = 15 * time.Second

type expiry struct{ queue, token string }

type wake struct {
	queue string
	at    time.Time
}

// recorder collects what the callbacks were given.
type recorder struct {
	mu         sync.Mutex
	expired    []expiry
	wakes      []wake
	subscribed int
}

func (r *recorder) config() *Config {
	return &Config{
		ExpiredFunc: func(_ context.Context, queue, token string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.expired = append(r.expired, expiry{queue, token})
		},
		WakeFunc: func(_ context.Context, queue string, at time.Time) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.wakes = append(r.wakes, wake{queue, at})
		},
		SubscribedFunc: func(context.Context) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.subscribed++
		},
	}
}

func (r *recorder) subs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.subscribed
}

func (r *recorder) hasExpired(e expiry) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Contains(r.expired, e)
}

func (r *recorder) wakesOf(queue string) []wake {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []wake
	for _, w := range r.wakes {
		if w.queue == queue {
			out = append(out, w)
		}
	}
	return out
}

type testBundle struct {
	srv *redistest.Server
	rdb *redis.Client
	lc  *lease.Client
	l   *Listener
	rec *recorder
}

// setup starts a server with flags, a Listener on it (cfg, if given, may
// adjust the recorder's Config), and waits for the first subscription.
func setup(t *testing.T, adjust func(*Config), flags ...string) *testBundle {
	t.Helper()
	srv := redistest.Start(t, flags...)
	rdb := srv.Client(t)
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	cfg := rec.config()
	if adjust != nil {
		adjust(cfg)
	}
	l := NewListener(rdb, cfg)
	start(t, l)
	redistest.WaitFor(t, waitLong, func() bool { return rec.subs() == 1 && l.Subscribed() }, "first subscription")
	return &testBundle{srv: srv, rdb: rdb, lc: lc, l: l, rec: rec}
}

// start runs l until the test ends, then checks that Run returns nil.
func start(t *testing.T, l *Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run = %v, want nil", err)
			}
		case <-time.After(waitLong):
			t.Errorf("Run did not return within %v of cancel", waitLong)
		}
		if l.Subscribed() {
			t.Error("Subscribed() after Run returned")
		}
	})
}

// take pushes one message to queue and leases it for d.
func (b *testBundle) take(t *testing.T, queue string, d time.Duration) *lease.Lease {
	t.Helper()
	ctx := t.Context()
	if _, err := b.lc.Push(ctx, queue, []byte("payload"), nil); err != nil {
		t.Fatal(err)
	}
	l, err := b.lc.Take(ctx, queue, &lease.TakeOpts{LeaseFor: d})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func (b *testBundle) waitExpired(t *testing.T, l *lease.Lease) {
	t.Helper()
	redistest.WaitFor(t, waitLong, func() bool { return b.rec.hasExpired(expiry{l.Queue, l.Token}) },
		"expired event for %s/%s", l.Queue, l.Token)
}

func TestExpired(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	l := b.take(t, "orders", 50*time.Millisecond)
	b.waitExpired(t, l)
	if st := b.l.Stats(); st.EventsExpired != 1 || st.Reconnects != 0 {
		t.Fatalf("Stats() = %+v, want 1 expired, 0 reconnects", st)
	}
}

func TestWake(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()

	// A delayed push announces its due time.
	const delay = time.Hour
	if _, err := b.lc.Push(ctx, "later", []byte("x"), &lease.PushOpts{Delay: delay}); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, waitLong, func() bool { return len(b.rec.wakesOf("later")) == 1 }, "wake for the delayed push")
	zs, err := b.rdb.ZRangeWithScores(ctx, lease.KeysFor("later").Delayed, 0, 0).Result()
	if err != nil || len(zs) != 1 {
		t.Fatalf("delayed set = %v, %v", zs, err)
	}
	if got, want := b.rec.wakesOf("later")[0].at, time.UnixMilli(int64(zs[0].Score)); !got.Equal(want) {
		t.Fatalf("wake at %v, want the due time %v", got, want)
	}

	// A take announces its lease deadline: wake 1 ms after it.
	l := b.take(t, "now", time.Hour)
	redistest.WaitFor(t, waitLong, func() bool { return len(b.rec.wakesOf("now")) == 1 }, "wake for the take")
	if got, want := b.rec.wakesOf("now")[0].at, l.Deadline().Add(time.Millisecond); !got.Equal(want) {
		t.Fatalf("wake at %v, want deadline + 1ms %v", got, want)
	}
	if st := b.l.Stats(); st.WakeMessages != 2 {
		t.Fatalf("Stats() = %+v, want 2 wake messages", st)
	}
}

func TestIgnored(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	for _, key := range []string{"foreign", "ackd:{q}:lease:nothex", "ackd:{q}:ready"} {
		if err := b.rdb.Set(ctx, key, "1", time.Millisecond).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, msg := range []string{"hello", "lease|x|q", "lease|5|bad queue"} {
		if err := b.rdb.Publish(ctx, lease.WakeChannel, msg).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Touch the keys until they are gone: a lookup after the deadline
	// deletes the key and sends its event at once.
	redistest.WaitFor(t, waitLong, func() bool {
		n, err := b.rdb.Exists(ctx, "foreign", "ackd:{q}:lease:nothex", "ackd:{q}:ready").Result()
		return err == nil && n == 0 && b.l.Stats().Ignored == 6
	}, "6 ignored")
	if st := b.l.Stats(); st.EventsExpired != 0 || st.WakeMessages != 0 {
		t.Fatalf("Stats() = %+v", st)
	}
}

func TestEvicted(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, "--notify-keyspace-events", "Exe", "--maxmemory-policy", "volatile-ttl")
	ctx := t.Context()
	l := b.take(t, "big", time.Hour)
	// The shadow key is the only key with a TTL: shrinking maxmemory makes
	// the next write evict it.
	if err := b.rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	_ = b.rdb.Set(ctx, "trigger", "x", 0).Err() // refused with OOM after evicting
	b.waitExpired(t, l)
	if st := b.l.Stats(); st.EventsEvicted != 1 || st.EventsExpired != 0 {
		t.Fatalf("Stats() = %+v, want 1 evicted", st)
	}
}

func TestClientKill(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	for round := 1; round <= 3; round++ {
		if n, err := b.rdb.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil || n != 1 {
			t.Fatalf("CLIENT KILL TYPE pubsub = %d, %v; want 1 killed", n, err)
		}
		redistest.WaitFor(t, waitLong, func() bool { return b.rec.subs() == round+1 && b.l.Subscribed() }, "resubscription %d", round)
		l := b.take(t, fmt.Sprint("after-kill-", round), 20*time.Millisecond)
		b.waitExpired(t, l)
	}
	if st := b.l.Stats(); st.Reconnects != 3 {
		t.Fatalf("Stats() = %+v, want 3 reconnects", st)
	}
}

func TestServerRestart(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.srv.Kill(t)
	redistest.WaitFor(t, waitLong, func() bool { return !b.l.Subscribed() }, "subscription lost")
	b.srv.Restart(t)
	redistest.WaitFor(t, waitLong, func() bool { return b.rec.subs() == 2 && b.l.Subscribed() }, "resubscribed after restart")
	l := b.take(t, "after-restart", 20*time.Millisecond)
	b.waitExpired(t, l)
	if st := b.l.Stats(); st.Reconnects != 1 {
		t.Fatalf("Stats() = %+v, want 1 reconnect", st)
	}
}

// Health-check pings on a silent subscription neither break nor replace it.
func TestPing(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) { c.PingInterval = 100 * time.Millisecond })
	redistest.WaitFor(t, waitLong, func() bool { return b.l.Stats().Pings >= 5 }, "5 pings")
	l := b.take(t, "pinged", 20*time.Millisecond)
	b.waitExpired(t, l)
	if st := b.l.Stats(); st.Reconnects != 0 || b.rec.subs() != 1 {
		t.Fatalf("Stats() = %+v, %d subscriptions; want no reconnects", st, b.rec.subs())
	}
}

// A Listener started while Redis is down keeps trying and subscribes once
// it is up.
func TestStartWhileDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	srv.Kill(t)
	rec := &recorder{}
	cfg := rec.config()
	logs := &logSink{}
	cfg.Logger = slog.New(logs)
	l := NewListener(rdb, cfg)
	start(t, l)
	redistest.WaitFor(t, waitLong, func() bool { return logs.has("subscription lost, reconnecting") }, "a failed attempt")
	if l.Subscribed() {
		t.Fatal("Subscribed() while Redis is down")
	}
	srv.Restart(t)
	redistest.WaitFor(t, waitLong, func() bool { return rec.subs() == 1 && l.Subscribed() }, "subscribed once up")
	if st := l.Stats(); st.Reconnects != 0 {
		t.Fatalf("Stats() = %+v: the first subscription is not a reconnect", st)
	}
}

func TestNilCallbacks(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	l := NewListener(rdb, nil)
	start(t, l)
	redistest.WaitFor(t, waitLong, l.Subscribed, "subscribed")
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Push(t.Context(), "q", []byte("x"), &lease.PushOpts{Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, waitLong, func() bool { return l.Stats().WakeMessages == 1 }, "wake counted")
}

// logSink is a slog.Handler that keeps the messages it is given.
type logSink struct {
	mu   sync.Mutex
	msgs []string
}

func (h *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (h *logSink) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logSink) WithGroup(string) slog.Handler            { return h }
func (h *logSink) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}

func (h *logSink) has(msg string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Contains(h.msgs, msg)
}

// go-redis speaks RESP3 by default, where pub/sub messages are push
// replies; RESP2 must work the same.
func TestRESP2(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), Protocol: 2})
	t.Cleanup(func() { _ = rdb.Close() })
	lc, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	l := NewListener(rdb, rec.config())
	start(t, l)
	redistest.WaitFor(t, waitLong, func() bool { return rec.subs() == 1 && l.Subscribed() }, "subscribed")
	if err := rdb.ClientKillByFilter(t.Context(), "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, waitLong, func() bool { return rec.subs() == 2 && l.Subscribed() }, "resubscribed")
	b := &testBundle{srv: srv, rdb: rdb, lc: lc, l: l, rec: rec}
	ls := b.take(t, "resp2", 20*time.Millisecond)
	b.waitExpired(t, ls)
	if got := len(rec.wakesOf("resp2")); got != 1 {
		t.Fatalf("%d wake messages, want 1", got)
	}
}
