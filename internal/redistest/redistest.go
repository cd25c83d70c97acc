// Package redistest runs private, real redis-server processes for tests.
//
// Every test in the project that needs Redis calls [Start], which launches a
// fresh redis-server on a free loopback port with persistence off, its data
// directory under t.TempDir(), logs captured in memory and keyspace expiry
// events enabled. The server is killed when the test ends. [Server] can also
// stop, kill and restart the process (on the same port and data directory) to
// test crashes and reconnection, define ACL users ([Server.SetUser]) and read
// what Redis refused them ([Server.ACLLog]).
//
// If redis-server (or redis-cli, for [RedisCLI]) is not on PATH the test is
// skipped, unless the environment variable CI is non-empty, in which case the
// test fails: a skipped suite must never read as green in CI.
//
// Tests must not sleep to synchronise; use [WaitFor] to poll a condition.
package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// readyTimeout bounds how long a start or restart may take.
	readyTimeout = 10 * time.Second
	// exitTimeout bounds how long Stop, Kill and cleanup wait for the process.
	exitTimeout = 15 * time.Second
	// startAttempts is how many free ports Start tries when a port turns out
	// to be taken between picking it and redis-server binding it.
	startAttempts = 5
	// restartBusyTimeout is how long Restart keeps retrying while its port is
	// momentarily taken by another process.
	restartBusyTimeout = 5 * time.Second
	// pollInterval is the WaitFor polling period.
	pollInterval = 2 * time.Millisecond
)

var (
	readyMarker = []byte("Ready to accept connections")
	// A Sentinel never logs readyMarker; it logs its id once it serves.
	sentinelReadyMarker = []byte("Sentinel ID is")
)

// reservedFlags are set by Start and must not be overridden by callers,
// because the helper depends on them (address, data dir, log capture).
var reservedFlags = map[string]bool{
	"port":           true,
	"bind":           true,
	"dir":            true,
	"logfile":        true,
	"daemonize":      true,
	"syslog-enabled": true,
}

// Server is a redis-server process private to one test.
type Server struct {
	bin   string
	port  int
	dir   string
	flags []string // caller's extra flags, appended after the base flags
	log   *logBuffer
	// sentinelConf, if set, makes this a Sentinel: the process runs
	// `redis-server sentinelConf --sentinel <flags>`.
	sentinelConf string

	// life serialises lifecycle operations (Stop, Kill, Restart, cleanup).
	life sync.Mutex

	mu      sync.Mutex // guards the fields below
	proc    *process   // most recent process; nil only before the first start
	stopped bool       // whether the test asked for the current process to end
}

// process is one run of redis-server.
type process struct {
	cmd  *exec.Cmd
	pid  int
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // exit error from cmd.Wait; valid after done is closed
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Start launches a private redis-server for the test and registers a cleanup
// that kills it. The server listens on 127.0.0.1 on a free port (never 6379),
// with the flags
//
//	--bind 127.0.0.1 --port N --save "" --appendonly no --dir DIR
//	--notify-keyspace-events Ex --logfile ""
//
// followed by flags, so later flags win: for example
// Start(t, "--notify-keyspace-events", "") disables keyspace events and
// Start(t, "--appendonly", "yes", "--appendfsync", "always") enables AOF.
// --port, --bind, --dir, --logfile, --daemonize and --syslog-enabled are
// managed by Start and may not be passed.
//
// Start returns once the server has logged "Ready to accept connections", or
// fails the test after 10 s, including the server's output in the message.
func Start(t testing.TB, flags ...string) *Server {
	t.Helper()
	return start(t, "redistest.Start", "", flags, nil)
}

// start launches a redis-server (or, with sentinelConf set, a Sentinel
// reading that file) on a free port, retrying with another port when the
// one picked was taken meanwhile. perAttempt, if not nil, returns flags
// appended for one attempt only (a Cluster node's bus port, picked afresh
// each time); they stay with the server for its restarts.
func start(t testing.TB, what, sentinelConf string, flags []string, perAttempt func() ([]string, error)) *Server {
	t.Helper()
	bin := requireBinary(t, "redis-server", os.Getenv, exec.LookPath)
	if err := checkFlags(flags); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	dir := filepath.Join(t.TempDir(), "redis")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	var failures []string
	for attempt := 1; attempt <= startAttempts; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatalf("%s: picking a free port: %v", what, err)
		}
		all := append([]string(nil), flags...)
		if perAttempt != nil {
			more, err := perAttempt()
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			all = append(all, more...)
		}
		s := &Server{
			bin:          bin,
			port:         port,
			dir:          dir,
			flags:        all,
			log:          &logBuffer{},
			sentinelConf: sentinelConf,
		}
		err = s.launch()
		if err == nil {
			t.Cleanup(func() { s.cleanup(t) })
			return s
		}
		var le *launchError
		if errors.As(err, &le) && le.portBusy {
			failures = append(failures, fmt.Sprintf("attempt %d: %v", attempt, err))
			continue
		}
		t.Fatalf("%s: %v", what, err)
	}
	t.Fatalf("%s: giving up after %d attempts, every port was taken:\n%s",
		what, startAttempts, strings.Join(failures, "\n"))
	return nil
}

// Addr returns the server's address, "127.0.0.1:port".
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Port returns the server's TCP port. It does not change across restarts.
func (s *Server) Port() int { return s.port }

// Dir returns the server's data directory (where AOF and RDB files live).
// It does not change across restarts and is removed when the test ends.
func (s *Server) Dir() string { return s.dir }

// URL returns a redis:// URL for database 0 of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Client returns a go-redis client connected to the server, closed when the
// test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Running reports whether the server process is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil && !s.proc.exited()
}

// PID returns the process id of the most recently started server process,
// whether or not it is still running (see Running).
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.pid
}

// Output returns everything the server has written to stdout and stderr so
// far, across restarts.
func (s *Server) Output() string { return s.log.String() }

// Stop shuts the server down gracefully (SIGTERM, as SHUTDOWN would: AOF is
// flushed and, if save points are configured, an RDB is written) and waits
// for the process to exit. Stopping a server that is not running does nothing.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.life.Lock()
	defer s.life.Unlock()
	if err := s.terminate(syscall.SIGTERM); err != nil {
		t.Fatalf("redistest: Stop: %v", err)
	}
}

// Kill kills the server with SIGKILL, simulating a crash, and waits for the
// process to exit. Killing a server that is not running does nothing.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	s.life.Lock()
	defer s.life.Unlock()
	if err := s.terminate(syscall.SIGKILL); err != nil {
		t.Fatalf("redistest: Kill: %v", err)
	}
}

// Restart starts the server again on the same port, with the same flags and
// the same data directory, so data persisted by AOF or RDB is loaded again.
// If the server is still running it is first stopped gracefully. Restart
// returns once the server is ready; if the port is momentarily taken by
// another process it retries for a few seconds.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.life.Lock()
	defer s.life.Unlock()
	if err := s.terminate(syscall.SIGTERM); err != nil {
		t.Fatalf("redistest: Restart: %v", err)
	}
	deadline := time.Now().Add(restartBusyTimeout)
	backoff := 10 * time.Millisecond
	for {
		err := s.launch()
		if err == nil {
			return
		}
		var le *launchError
		if !errors.As(err, &le) || !le.portBusy || time.Now().After(deadline) {
			t.Fatalf("redistest: Restart on port %d: %v", s.port, err)
		}
		time.Sleep(backoff) // back-off between bind attempts, not synchronisation
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// args returns the full redis-server command line (without the binary).
func (s *Server) args() []string {
	var args []string
	if s.sentinelConf != "" {
		args = []string{s.sentinelConf, "--sentinel"}
	}
	args = append(args,
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--notify-keyspace-events", "Ex",
		"--logfile", "",
	)
	return append(args, s.flags...)
}

// launchError is a failed start; portBusy means the port was already taken.
type launchError struct {
	portBusy bool
	msg      string
	output   string
}

func (e *launchError) Error() string {
	return fmt.Sprintf("%s\n--- redis-server output ---\n%s--- end of output ---", e.msg, e.output)
}

// launch starts a new process and waits until it is ready. On success it
// becomes s.proc; on failure the process is gone and s.proc is unchanged.
// The caller holds s.life (or owns s exclusively).
func (s *Server) launch() error {
	marker := readyMarker
	if s.sentinelConf != "" {
		marker = sentinelReadyMarker
	}
	ready, from := s.log.watch(marker)
	cmdline := s.args()
	cmd := exec.Command(s.bin, cmdline...)
	cmd.Stdout = s.log
	cmd.Stderr = s.log
	// A forked child (BGSAVE, AOF rewrite) inherits the output pipe; don't
	// let it keep Wait from returning after redis-server itself has exited.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()

	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-ready:
		s.mu.Lock()
		s.proc = p
		s.stopped = false
		s.mu.Unlock()
		return nil
	case <-p.done:
		out := s.log.since(from)
		return &launchError{
			portBusy: strings.Contains(out, "Address already in use"),
			msg:      fmt.Sprintf("redis-server on port %d exited before it was ready (%v); command line: %s", s.port, p.err, quoteArgs(s.bin, cmdline)),
			output:   out,
		}
	case <-timer.C:
		_ = cmd.Process.Kill()
		<-p.done // bounded by WaitDelay once the process is gone
		return &launchError{
			msg:    fmt.Sprintf("redis-server on port %d not ready within %v; command line: %s", s.port, readyTimeout, quoteArgs(s.bin, cmdline)),
			output: s.log.since(from),
		}
	}
}

// terminate sends sig to the current process, if it is running, and waits
// for it to exit. The caller holds s.life.
func (s *Server) terminate(sig syscall.Signal) error {
	s.mu.Lock()
	p := s.proc
	if p != nil {
		s.stopped = true
	}
	s.mu.Unlock()
	if p == nil || p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending %v to redis-server (pid %d): %w", sig, p.pid, err)
	}
	timer := time.NewTimer(exitTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("redis-server (pid %d) did not exit within %v of %v; killed it\n--- redis-server output ---\n%s--- end of output ---",
			p.pid, exitTimeout, sig, s.log.String())
	}
}

// cleanup kills the server at the end of the test.
func (s *Server) cleanup(t testing.TB) {
	s.life.Lock()
	defer s.life.Unlock()
	s.mu.Lock()
	p, stopped := s.proc, s.stopped
	s.mu.Unlock()
	if p != nil && p.exited() && !stopped {
		t.Logf("redistest: redis-server on port %d (pid %d) exited on its own: %v", s.port, p.pid, p.err)
	}
	if err := s.terminate(syscall.SIGKILL); err != nil {
		t.Errorf("redistest: cleanup: %v", err)
	}
	if t.Failed() {
		t.Logf("redistest: output of redis-server on port %d:\n%s", s.port, tail(s.log.String(), 8<<10))
	}
}

// WaitFor polls cond every ~2 ms until it returns true, and fails the test if
// it has not by the time timeout has passed. msgAndArgs, if given, describe
// the condition: a format string and its arguments, formatted when the test
// fails, so that a pointer shows what cond saw last (a *string is printed
// as the string it points to).
func WaitFor(t testing.TB, timeout time.Duration, cond func() bool, msgAndArgs ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		<-ticker.C
	}
	if cond() { // one last look, in case the deadline passed during the wait
		return
	}
	t.Fatalf("redistest.WaitFor: condition not met within %v%s", timeout, describe(msgAndArgs))
}

func describe(msgAndArgs []any) string {
	if len(msgAndArgs) == 0 {
		return ""
	}
	if format, ok := msgAndArgs[0].(string); ok {
		args := slices.Clone(msgAndArgs[1:])
		for i, a := range args {
			if p, ok := a.(*string); ok && p != nil {
				args[i] = *p
			}
		}
		return ": " + fmt.Sprintf(format, args...)
	}
	return ": " + fmt.Sprint(msgAndArgs...)
}

// RedisCLI runs `redis-cli -h host -p port args...` against addr
// ("host:port") and returns its standard output with surrounding white space
// trimmed. The test fails if redis-cli exits with a non-zero status (for
// example when it cannot connect) or runs for more than 30 s. Note that
// redis-cli exits 0 on an error reply and prints it to stdout, so an error
// comes back as text such as "ERR unknown command ...".
func RedisCLI(t testing.TB, addr string, args ...string) string {
	t.Helper()
	bin := requireBinary(t, "redis-cli", os.Getenv, exec.LookPath)
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("redistest.RedisCLI: bad address %q: %v", addr, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmdline := append([]string{"-h", host, "-p", port}, args...)
	cmd := exec.CommandContext(ctx, bin, cmdline...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("redistest.RedisCLI: %s: %v\nstdout: %s\nstderr: %s",
			quoteArgs(bin, cmdline), err, stdout.String(), stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

// requireBinary returns the path of the named program, or skips the test if
// it is not on PATH; when CI is set it fails the test instead.
func requireBinary(t testing.TB, name string, getenv func(string) string, lookPath func(string) (string, error)) string {
	t.Helper()
	path, err := lookPath(name)
	if err == nil {
		return path
	}
	if getenv("CI") != "" {
		t.Fatalf("redistest: %s not found on PATH (%v); it is required when CI is set (install redis-server and redis-tools)", name, err)
	}
	t.Skipf("redistest: %s not found on PATH (%v); skipping. Install redis-server and redis-tools to run this test", name, err)
	return ""
}

// checkFlags rejects flags that would break the helper.
func checkFlags(flags []string) error {
	for _, f := range flags {
		if !strings.HasPrefix(f, "--") {
			continue
		}
		fields := strings.Fields(f[2:])
		if len(fields) > 0 && reservedFlags[strings.ToLower(fields[0])] {
			return fmt.Errorf("flag %q is managed by redistest and may not be passed", f)
		}
	}
	if len(flags) > 0 && !strings.HasPrefix(flags[0], "--") {
		return fmt.Errorf("flags must start with an option name such as --appendonly, got %q", flags[0])
	}
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago; never 6379.
func freePort() (int, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		if err := l.Close(); err != nil {
			return 0, err
		}
		if port != 6379 {
			return port, nil
		}
	}
}

func quoteArgs(bin string, args []string) string {
	q := make([]string, 0, len(args)+1)
	q = append(q, bin)
	for _, a := range args {
		q = append(q, strconv.Quote(a))
	}
	return strings.Join(q, " ")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// logBuffer collects a server's output and signals when the ready marker
// appears after a given point.
type logBuffer struct {
	mu      sync.Mutex
	buf     []byte
	from    int           // where to look for the marker next
	readyCh chan struct{} // closed when the marker appears; nil if not watching
	marker  []byte        // the line watched for
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if b.readyCh != nil {
		if bytes.Contains(b.buf[b.from:], b.marker) {
			close(b.readyCh)
			b.readyCh = nil
		} else if n := len(b.buf) - len(b.marker) + 1; n > b.from {
			b.from = n // the marker may still straddle the next write
		}
	}
	return len(p), nil
}

// watch starts looking for marker in output written from now on. It
// returns a channel closed when the marker is seen and the current offset.
func (b *logBuffer) watch(marker []byte) (<-chan struct{}, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.marker = marker
	b.from = len(b.buf)
	b.readyCh = make(chan struct{})
	return b.readyCh, b.from
}

func (b *logBuffer) since(off int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf[off:])
}

func (b *logBuffer) String() string { return b.since(0) }

// SetUser defines (or redefines) the ACL user name with ACL SETUSER name
// rules..., run as the default user, and returns a client logged in as that
// user with password, closed when the test ends. Rules are ACL SETUSER
// arguments such as "reset", "on", ">"+password, "~ackd:*", "+get".
func (s *Server) SetUser(t testing.TB, name, password string, rules ...string) *redis.Client {
	t.Helper()
	args := append([]any{"acl", "setuser", name}, anySlice(rules)...)
	admin := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer func() { _ = admin.Close() }()
	if err := admin.Do(context.Background(), args...).Err(); err != nil {
		t.Fatalf("redistest: ACL SETUSER %s %s: %v", name, strings.Join(rules, " "), err)
	}
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Username: name, Password: password})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ACLLog returns the server's ACL LOG (the commands, keys and channels
// refused to users, newest first), one "user reason context object" line
// per entry, and resets it.
func (s *Server) ACLLog(t testing.TB) []string {
	t.Helper()
	admin := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer func() { _ = admin.Close() }()
	ctx := context.Background()
	entries, err := admin.Do(ctx, "acl", "log").Slice()
	if err != nil {
		t.Fatalf("redistest: ACL LOG: %v", err)
	}
	var out []string
	for _, e := range entries {
		f := map[string]string{}
		switch e := e.(type) {
		case []any: // RESP2: field, value, ...
			for i := 0; i+1 < len(e); i += 2 {
				f[fmt.Sprint(e[i])] = fmt.Sprint(e[i+1])
			}
		case map[any]any: // RESP3
			for k, v := range e {
				f[fmt.Sprint(k)] = fmt.Sprint(v)
			}
		}
		out = append(out, fmt.Sprintf("%s %s %s %s", f["username"], f["reason"], f["context"], f["object"]))
	}
	if err := admin.Do(ctx, "acl", "log", "reset").Err(); err != nil {
		t.Fatalf("redistest: ACL LOG RESET: %v", err)
	}
	return out
}

func anySlice(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
