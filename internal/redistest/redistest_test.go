package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestStartPing(t *testing.T) {
	t.Parallel()
	s := Start(t)
	ctx := context.Background()

	if got, err := s.Client(t).Ping(ctx).Result(); err != nil || got != "PONG" {
		t.Fatalf("PING = %q, %v; want PONG", got, err)
	}
	if s.Port() == 6379 || s.Port() == 0 {
		t.Fatalf("Port() = %d", s.Port())
	}
	if want := fmt.Sprintf("127.0.0.1:%d", s.Port()); s.Addr() != want {
		t.Fatalf("Addr() = %q, want %q", s.Addr(), want)
	}
	if want := fmt.Sprintf("redis://127.0.0.1:%d/0", s.Port()); s.URL() != want {
		t.Fatalf("URL() = %q, want %q", s.URL(), want)
	}
	opt, err := redis.ParseURL(s.URL())
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", s.URL(), err)
	}
	if opt.Addr != s.Addr() || opt.DB != 0 {
		t.Fatalf("ParseURL(%q) = addr %q db %d", s.URL(), opt.Addr, opt.DB)
	}
	if !s.Running() || s.PID() <= 0 {
		t.Fatalf("Running() = %v, PID() = %d", s.Running(), s.PID())
	}
	if !strings.Contains(s.Output(), "Ready to accept connections") {
		t.Fatalf("Output() lacks the ready line:\n%s", s.Output())
	}

	// The base flags are in effect.
	c := s.Client(t)
	for param, want := range map[string]string{
		"bind":       "127.0.0.1",
		"save":       "",
		"appendonly": "no",
		"dir":        s.Dir(),
	} {
		got, err := c.ConfigGet(ctx, param).Result()
		if err != nil {
			t.Fatalf("CONFIG GET %s: %v", param, err)
		}
		if got[param] != want {
			t.Errorf("CONFIG GET %s = %q, want %q", param, got[param], want)
		}
	}
}

func TestParallelServersGetDifferentPorts(t *testing.T) {
	t.Parallel()
	var (
		wg      sync.WaitGroup
		servers [2]*Server
	)
	for i := range servers {
		wg.Go(func() { servers[i] = Start(t) })
	}
	wg.Wait()
	a, b := servers[0], servers[1]
	if a == nil || b == nil {
		t.FailNow() // Start already reported why
	}
	if a.Port() == b.Port() {
		t.Fatalf("both servers on port %d", a.Port())
	}
	if a.Dir() == b.Dir() {
		t.Fatalf("both servers use dir %s", a.Dir())
	}

	ctx := context.Background()
	if err := a.Client(t).Set(ctx, "k", "a", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.Client(t).Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k on the second server: err = %v, want redis.Nil", err)
	}
}

func TestKeyspaceEvents(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("default", func(t *testing.T) {
		t.Parallel()
		s := Start(t)
		c := s.Client(t)
		got, err := c.ConfigGet(ctx, "notify-keyspace-events").Result()
		if err != nil {
			t.Fatal(err)
		}
		// Redis normalises "Ex" to "xE".
		if v := got["notify-keyspace-events"]; !strings.Contains(v, "E") || !strings.Contains(v, "x") {
			t.Fatalf("notify-keyspace-events = %q, want E and x", v)
		}

		// And expiry events are really delivered.
		sub := c.Subscribe(ctx, "__keyevent@0__:expired")
		defer sub.Close()
		if _, err := sub.Receive(ctx); err != nil { // subscription confirmation
			t.Fatal(err)
		}
		if err := c.Set(ctx, "ephemeral", "v", 10*time.Millisecond).Err(); err != nil {
			t.Fatal(err)
		}
		select {
		case msg := <-sub.Channel():
			if msg.Payload != "ephemeral" {
				t.Fatalf("expired event for %q, want ephemeral", msg.Payload)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no expired event within 10s")
		}
	})

	t.Run("override", func(t *testing.T) {
		t.Parallel()
		s := Start(t, "--notify-keyspace-events", "")
		got, err := s.Client(t).ConfigGet(ctx, "notify-keyspace-events").Result()
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := got["notify-keyspace-events"]; !ok || v != "" {
			t.Fatalf("notify-keyspace-events = %q (present %v), want empty", v, ok)
		}
	})
}

func TestKillRestartKeepsAOFData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t, "--appendonly", "yes", "--appendfsync", "always")
	c := s.Client(t)
	if got := c.ConfigGet(ctx, "appendonly").Val()["appendonly"]; got != "yes" {
		t.Fatalf("appendonly = %q, want yes", got)
	}
	if err := c.Set(ctx, "durable", "value", 0).Err(); err != nil {
		t.Fatal(err)
	}
	port, pid := s.Port(), s.PID()

	s.Kill(t)
	if s.Running() {
		t.Fatal("Running() after Kill")
	}
	assertRefused(t, s.Addr())
	s.Kill(t) // killing a dead server is a no-op

	s.Restart(t)
	if !s.Running() {
		t.Fatal("not Running() after Restart")
	}
	if s.Port() != port {
		t.Fatalf("port changed across restart: %d -> %d", port, s.Port())
	}
	if s.PID() == pid {
		t.Fatalf("PID unchanged across restart: %d", pid)
	}
	// The old client reconnects to the same address.
	got, err := c.Get(ctx, "durable").Result()
	if err != nil || got != "value" {
		t.Fatalf("GET durable after restart = %q, %v; want value", got, err)
	}
	if strings.Count(s.Output(), "Ready to accept connections") != 2 {
		t.Fatalf("Output() should cover both runs:\n%s", s.Output())
	}
}

func TestKillRestartWithoutPersistenceLosesData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t)
	c := s.Client(t)
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.Kill(t)
	s.Restart(t)
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after restart without persistence: err = %v, want redis.Nil", err)
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := Start(t)
	c := s.Client(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	s.Stop(t)
	if s.Running() {
		t.Fatal("Running() after Stop")
	}
	if !strings.Contains(s.Output(), "ready to exit") {
		t.Fatalf("no graceful shutdown in output:\n%s", s.Output())
	}
	assertRefused(t, s.Addr())
	s.Stop(t) // stopping a stopped server is a no-op

	s.Restart(t)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
}

func TestRestartWhileRunning(t *testing.T) {
	t.Parallel()
	s := Start(t)
	pid := s.PID()
	s.Restart(t)
	if !s.Running() || s.PID() == pid {
		t.Fatalf("Running() = %v, PID %d -> %d", s.Running(), pid, s.PID())
	}
	if got := RedisCLI(t, s.Addr(), "PING"); got != "PONG" {
		t.Fatalf("PING = %q", got)
	}
}

func TestLaunchDetectsBusyPort(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := &Server{
		bin:  requireBinary(t, "redis-server", os.Getenv, exec.LookPath),
		port: l.Addr().(*net.TCPAddr).Port,
		dir:  t.TempDir(),
		log:  &logBuffer{},
	}
	err = s.launch()
	var le *launchError
	if !errors.As(err, &le) || !le.portBusy {
		t.Fatalf("launch on a busy port: %v; want a port-busy launchError", err)
	}
	if s.Running() || s.PID() != 0 {
		t.Fatalf("after a failed launch: Running() = %v, PID() = %d", s.Running(), s.PID())
	}
}

func TestRestartWaitsForBusyPort(t *testing.T) {
	t.Parallel()
	s := Start(t)
	s.Kill(t)
	// Take the server's port, and give it back only once Restart has failed
	// to bind it at least once.
	l, err := net.Listen("tcp", s.Addr())
	if err != nil {
		t.Fatalf("taking the port: %v", err)
	}
	released := make(chan struct{})
	go func() {
		defer close(released)
		defer l.Close()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(s.Output(), "Address already in use") && time.Now().Before(deadline) {
			time.Sleep(pollInterval) // polling period, as in WaitFor
		}
	}()
	s.Restart(t)
	<-released
	if !strings.Contains(s.Output(), "Address already in use") {
		t.Fatalf("Restart never hit the busy port:\n%s", s.Output())
	}
	if got := RedisCLI(t, s.Addr(), "PING"); got != "PONG" {
		t.Fatalf("PING after Restart = %q", got)
	}
}

func TestRedisCLI(t *testing.T) {
	t.Parallel()
	s := Start(t)
	if got := RedisCLI(t, s.Addr(), "PING"); got != "PONG" {
		t.Fatalf("redis-cli PING = %q, want PONG", got)
	}
	if got := RedisCLI(t, s.Addr(), "SET", "greeting", "hello world"); got != "OK" {
		t.Fatalf("redis-cli SET = %q, want OK", got)
	}
	if got := RedisCLI(t, s.Addr(), "GET", "greeting"); got != "hello world" {
		t.Fatalf("redis-cli GET = %q, want %q", got, "hello world")
	}
}

func TestWaitFor(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	WaitFor(t, 5*time.Second, func() bool { return n.Add(1) >= 5 }, "counter reaches %d", 5)
	if n.Load() < 5 {
		t.Fatalf("WaitFor returned early, n = %d", n.Load())
	}

	ft := runFake(func(tb testing.TB) {
		WaitFor(tb, 20*time.Millisecond, func() bool { return false }, "never %s", "true")
	})
	if !ft.fatal || !strings.Contains(ft.msg, "never true") {
		t.Fatalf("WaitFor on a false condition: fatal = %v, msg = %q", ft.fatal, ft.msg)
	}

	// A *string argument shows what the condition saw last.
	ft = runFake(func(tb testing.TB) {
		var last string
		i := 0
		WaitFor(tb, 20*time.Millisecond, func() bool {
			i++
			last = "look " + strconv.Itoa(i)
			return false
		}, "never (last: %s)", &last)
	})
	if !ft.fatal || !regexp.MustCompile(`never \(last: look [0-9]+\)$`).MatchString(ft.msg) {
		t.Fatalf("WaitFor with a *string argument: fatal = %v, msg = %q", ft.fatal, ft.msg)
	}
}

func TestMissingBinarySkipsOrFailsInCI(t *testing.T) {
	t.Parallel()
	notFound := func(name string) (string, error) { return "", exec.ErrNotFound }
	env := func(ci string) func(string) string {
		return func(k string) string {
			if k == "CI" {
				return ci
			}
			return ""
		}
	}

	local := runFake(func(tb testing.TB) { requireBinary(tb, "redis-server", env(""), notFound) })
	if !local.skipped || local.fatal {
		t.Fatalf("without CI: skipped = %v, fatal = %v; want a skip", local.skipped, local.fatal)
	}
	ci := runFake(func(tb testing.TB) { requireBinary(tb, "redis-server", env("true"), notFound) })
	if ci.skipped || !ci.fatal {
		t.Fatalf("with CI set: skipped = %v, fatal = %v; want a failure", ci.skipped, ci.fatal)
	}
	if !strings.Contains(ci.msg, "redis-server") {
		t.Fatalf("message does not name the program: %q", ci.msg)
	}
}

func TestReservedFlagsRejected(t *testing.T) {
	t.Parallel()
	for _, flags := range [][]string{
		{"--port", "6379"},
		{"--appendonly", "yes", "--dir", "/tmp"},
		{"--LOGFILE", "x.log"},
		{"--bind 0.0.0.0"},
		{"yes"},
	} {
		if err := checkFlags(flags); err == nil {
			t.Errorf("checkFlags(%q) = nil, want an error", flags)
		}
	}
	for _, flags := range [][]string{
		nil,
		{"--notify-keyspace-events", ""},
		{"--appendonly", "yes", "--appendfsync", "always"},
	} {
		if err := checkFlags(flags); err != nil {
			t.Errorf("checkFlags(%q) = %v, want nil", flags, err)
		}
	}
}

// assertRefused checks that nothing listens on addr any more. (A go-redis
// PING would also fail, but only after ~2 s of dial retries.)
func assertRefused(t *testing.T, addr string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: %v, want connection refused", addr, err)
	}
}

// fakeTB records Skip and Fatal calls. Only the methods used by the code
// under test are implemented; any other call panics on the nil embedded TB.
type fakeTB struct {
	testing.TB
	skipped, fatal bool
	msg            string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// runFake runs fn with a fakeTB on its own goroutine (so that Fatalf and
// Skipf can end it) and returns the fake once fn has finished.
func runFake(fn func(testing.TB)) *fakeTB {
	f := &fakeTB{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f
}

func TestSetUserAndACLLog(t *testing.T) {
	t.Parallel()
	s := Start(t)
	ctx := t.Context()
	u := s.SetUser(t, "reader", "pw", "reset", "on", ">pw", "~k:*", "+get")
	if err := u.Set(ctx, "k:1", "v", 0).Err(); err == nil || !strings.HasPrefix(err.Error(), "NOPERM") {
		t.Fatalf("SET as reader: %v, want NOPERM", err)
	}
	if err := u.Get(ctx, "k:1").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET as reader: %v, want redis.Nil", err)
	}
	if err := u.Get(ctx, "other").Err(); err == nil {
		t.Fatal("GET of a key outside ~k:* succeeded")
	}
	log := s.ACLLog(t)
	if len(log) != 2 || log[0] != "reader key toplevel other" || log[1] != "reader command toplevel set" {
		t.Fatalf("ACLLog = %q", log)
	}
	if log := s.ACLLog(t); len(log) != 0 {
		t.Fatalf("ACLLog after reset = %q", log)
	}
	// Redefining the user replaces its rules.
	u = s.SetUser(t, "reader", "pw", "reset", "on", ">pw", "~k:*", "+get", "+set")
	if err := u.Set(ctx, "k:1", "v", 0).Err(); err != nil {
		t.Fatalf("SET after +set: %v", err)
	}
}
