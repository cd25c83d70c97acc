//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/e2e/internal/journal"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// Binaries built once by TestMain.
var bins struct {
	ackd     string
	consumer string
}

// TestMain builds the daemon (with the race detector, so that a race
// inside ackd under fault fails the suite) and the consumer program once.
// E2E_ACKD_BIN runs the suite against a prebuilt daemon instead.
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ackd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	bins.consumer = filepath.Join(dir, "consumer")
	if err := goBuild(root, "-tags", "e2e", "-o", bins.consumer, "./e2e/consumer"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the consumer:", err)
		return 1
	}
	if bin := os.Getenv("E2E_ACKD_BIN"); bin != "" {
		bins.ackd = bin
	} else {
		bins.ackd = filepath.Join(dir, "ackd")
		if err := goBuild(root, "-race", "-o", bins.ackd, "./cmd/ackd"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: building ./cmd/ackd:", err)
			return 1
		}
	}
	return m.Run()
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the module")
	}
	return filepath.Dir(gomod), nil
}

func goBuild(root string, args ...string) error {
	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// syncBuffer collects a process's output.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Lines returns the complete lines written so far.
func (b *syncBuffer) Lines() []string {
	s := b.String()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		return nil
	}
	return strings.Split(s, "\n")
}

// proc is one child process of a test: ackd or a consumer.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout syncBuffer
	stderr syncBuffer
	done   chan struct{}
	state  *os.ProcessState
}

// launch starts a process; it is killed when the test ends. It does not
// fail the test, so it may run on any goroutine.
func launch(t testing.TB, name, bin string, args, env []string) (*proc, error) {
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	// The daemon refuses unknown ACKD_* variables, and the suite sets the
	// ones it wants: none is inherited from the caller's environment.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ACKD_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	p.cmd.WaitDelay = time.Second
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("%s (pid %d) reported a data race:\n%s", p.name, p.PID(), tail(p.stderr.String(), 16<<10))
		} else if t.Failed() {
			t.Logf("%s (pid %d) %s; stderr:\n%s", p.name, p.PID(), p.status(), tail(p.stderr.String(), 4<<10))
		}
	})
	return p, nil
}

func (p *proc) PID() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// crashed reports whether the process ended by a signal or a non-zero
// exit code; false while it runs.
func (p *proc) crashed() bool {
	if !p.exited() {
		return false
	}
	return !p.state.Success()
}

func (p *proc) status() string {
	if !p.exited() {
		return "running"
	}
	return p.state.String()
}

// Kill sends SIGKILL (a crash) and waits for the process to be gone.
func (p *proc) Kill(t testing.TB) {
	t.Helper()
	if err := p.signal(syscall.SIGKILL, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// Term sends SIGTERM, waits for the exit and returns the exit code.
func (p *proc) Term(t testing.TB, timeout time.Duration) int {
	t.Helper()
	if err := p.signal(syscall.SIGTERM, timeout); err != nil {
		t.Fatal(err)
	}
	return p.state.ExitCode()
}

func (p *proc) signal(sig syscall.Signal, timeout time.Duration) error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s: %v: %w", p.name, sig, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s (pid %d) did not exit within %v of %v; killed it. stderr:\n%s",
			p.name, p.PID(), timeout, sig, tail(p.stderr.String(), 8<<10))
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// --- ackd ---

// ackd is one running daemon.
type ackd struct {
	*proc
	addr string // its HTTP address
}

// ackdStartTimeout bounds how long a daemon (a race build) takes to serve
// /readyz.
const ackdStartTimeout = 20 * time.Second

// startAckd runs the daemon against srv and waits until /readyz answers
// 200. env entries (KEY=value) override the suite's defaults.
func startAckd(t testing.TB, srv *redistest.Server, env ...string) *ackd {
	t.Helper()
	a := launchAckd(t, srv, env...)
	a.waitReady(t)
	return a
}

// launchAckd starts the daemon without waiting for it to be ready.
func launchAckd(t testing.TB, srv *redistest.Server, env ...string) *ackd {
	t.Helper()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	base := []string{
		"ACKD_REDIS_URL=" + srv.URL(),
		"ACKD_HTTP_ADDR=" + addr,
		"ACKD_LOG_LEVEL=debug",
		"ACKD_LOG_FORMAT=text",
		// The periodic scan is the daemon's last safety net; an hour away,
		// it cannot hide a failure of the timers, events and catch-up
		// scans that each scenario is about.
		"ACKD_SCAN_INTERVAL=1h",
		"ACKD_SHUTDOWN_TIMEOUT=5s",
	}
	p, err := launch(t, "ackd", bins.ackd, nil, append(base, env...))
	if err != nil {
		t.Fatal(err)
	}
	return &ackd{proc: p, addr: addr}
}

func (a *ackd) url(path string) string { return "http://" + a.addr + path }

// get fetches one endpoint; code is 0 if the request failed.
func (a *ackd) get(path string) (code int, body string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(a.url(path))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (a *ackd) waitReady(t testing.TB) {
	t.Helper()
	redistest.WaitFor(t, ackdStartTimeout, throttle(10*time.Millisecond, func() bool {
		if a.exited() {
			t.Fatalf("ackd exited before it was ready: %s\nstderr:\n%s", a.status(), tail(a.stderr.String(), 8<<10))
		}
		code, _ := a.get("/readyz")
		return code == http.StatusOK
	}), "ackd /readyz 200")
}

// stop sends SIGTERM and requires a clean exit.
func (a *ackd) stop(t testing.TB) {
	t.Helper()
	if code := a.Term(t, 20*time.Second); code != 0 {
		t.Errorf("ackd exited with %s after SIGTERM, want 0; stderr:\n%s", a.status(), tail(a.stderr.String(), 8<<10))
	}
}

// metric sums every sample of a metric family on /metrics (all label
// sets). ok is false when the family is absent.
func (a *ackd) metric(t testing.TB, name string) (sum float64, ok bool) {
	t.Helper()
	code, body := a.get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	return sumMetric(body, name)
}

// metricSamples returns each sample of a family, keyed by its label set
// as written ("" when it has none).
func metricSamples(body, name string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		series, value, found := strings.Cut(line, " ")
		if !found {
			continue
		}
		metric, labels, _ := strings.Cut(series, "{")
		if metric != name {
			continue
		}
		if f := strings.Fields(value); len(f) > 0 {
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				out[strings.TrimSuffix(labels, "}")] += v
			}
		}
	}
	return out
}

func sumMetric(body, name string) (float64, bool) {
	s := metricSamples(body, name)
	var sum float64
	for _, v := range s {
		sum += v
	}
	return sum, len(s) > 0
}

func freePort(t testing.TB) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port != 6379 {
			return port
		}
	}
}

// throttle makes an expensive WaitFor condition run at most every d.
func throttle(d time.Duration, cond func() bool) func() bool {
	var last time.Time
	return func() bool {
		if time.Since(last) < d {
			return false
		}
		last = time.Now()
		return cond()
	}
}

// --- consumers ---

// fleet is a set of consumer processes on one queue. It remembers every
// process it ever started, so that the invariant checker knows which ones
// died between a handling and its ack.
type fleet struct {
	t     testing.TB
	url   string
	queue string
	flags []string

	mu   sync.Mutex
	live []*proc
	all  []*proc
}

// consumerReadyTimeout bounds a consumer's start.
const consumerReadyTimeout = 15 * time.Second

// startConsumers starts n consumer processes with the given flags (see
// e2e/consumer) and waits until each is connected.
func startConsumers(t testing.TB, srv *redistest.Server, queue string, n int, flags ...string) *fleet {
	t.Helper()
	f := &fleet{t: t, url: srv.URL(), queue: queue, flags: flags}
	for range n {
		if _, err := f.add(); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// add starts one more consumer and waits for it to be connected.
func (f *fleet) add() (*proc, error) {
	args := append([]string{"-redis", f.url, "-queue", f.queue}, f.flags...)
	p, err := launch(f.t, "consumer", bins.consumer, args, nil)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.live = append(f.live, p)
	f.all = append(f.all, p)
	f.mu.Unlock()
	deadline := time.Now().Add(consumerReadyTimeout)
	for !strings.Contains(p.stdout.String(), "ready") {
		if p.exited() {
			// A consumer told to crash may do so right after "ready".
			if strings.Contains(p.stdout.String(), "ready") {
				break
			}
			return p, fmt.Errorf("consumer exited before it was ready: %s\nstderr:\n%s", p.status(), p.stderr.String())
		}
		if time.Now().After(deadline) {
			return p, fmt.Errorf("consumer not ready within %v; stderr:\n%s", consumerReadyTimeout, p.stderr.String())
		}
		time.Sleep(2 * time.Millisecond) // polling the child's output
	}
	return p, nil
}

// running returns the consumers that have not exited.
func (f *fleet) running() []*proc {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.live[:0:0]
	for _, p := range f.live {
		if !p.exited() {
			out = append(out, p)
		}
	}
	return out
}

// killRandom SIGKILLs one running consumer and returns it.
func (f *fleet) killRandom(t testing.TB) *proc {
	t.Helper()
	r := f.running()
	if len(r) == 0 {
		return nil
	}
	p := r[rand.N(len(r))]
	p.Kill(t)
	return p
}

// supervise restarts every consumer that exits until ctx is done, keeping
// n alive. It runs on its own goroutine and reports with t.Errorf.
func (f *fleet) supervise(ctx context.Context, n int) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for len(f.running()) < n && ctx.Err() == nil {
				if _, err := f.add(); err != nil {
					f.t.Errorf("supervise: %v", err)
					return
				}
			}
		}
	})
	return wg.Wait
}

// stop sends SIGTERM to every running consumer and requires a clean exit.
func (f *fleet) stop(t testing.TB) {
	t.Helper()
	r := f.running()
	var wg sync.WaitGroup
	errs := make([]error, len(r))
	for i, p := range r {
		wg.Go(func() {
			if err := p.signal(syscall.SIGTERM, 30*time.Second); err != nil {
				errs[i] = err
				return
			}
			if p.crashed() {
				errs[i] = fmt.Errorf("consumer %d exited with %s after SIGTERM; stderr:\n%s", p.PID(), p.status(), tail(p.stderr.String(), 4<<10))
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Error(err)
	}
}

// crashed returns the pids of consumers that died without a clean exit:
// any of them may have handled a message and died before recording its
// ack.
func (f *fleet) crashed() map[int]bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[int]bool{}
	for _, p := range f.all {
		if p.crashed() {
			out[p.PID()] = true
		}
	}
	return out
}

// output returns the stdout lines of every consumer ever started.
func (f *fleet) output() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, p := range f.all {
		out = append(out, p.stdout.Lines()...)
	}
	return out
}

// --- per-test environment ---

// env is one scenario's world: a private Redis, a lease client on it and
// one queue.
type env struct {
	t     *testing.T
	srv   *redistest.Server
	rdb   *redis.Client
	lc    *lease.Client
	queue string
}

const queueName = "e2e"

// setup starts a private Redis with the given extra flags.
func setup(t *testing.T, redisFlags ...string) *env {
	t.Helper()
	srv := redistest.Start(t, redisFlags...)
	rdb := srv.Client(t)
	lc, err := lease.New(rdb, &lease.Config{MaxDeliveries: lease.Unlimited})
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, srv: srv, rdb: rdb, lc: lc, queue: queueName}
}

// push adds n messages with payloads "<prefix>-00000"... and returns the
// payloads. Messages may be delivered any number of times unless opts says
// otherwise.
func (e *env) push(n int, prefix string, opts *lease.PushOpts) []string {
	e.t.Helper()
	if opts == nil {
		opts = &lease.PushOpts{MaxDeliveries: lease.Unlimited}
	}
	payloads := make([]string, n)
	for i := range payloads {
		payloads[i] = fmt.Sprintf("%s-%05d", prefix, i)
	}
	for start := 0; start < n; start += lease.MaxBatch {
		end := min(start+lease.MaxBatch, n)
		batch := make([][]byte, 0, end-start)
		for _, p := range payloads[start:end] {
			batch = append(batch, []byte(p))
		}
		if _, err := e.lc.PushBatch(e.t.Context(), e.queue, batch, opts); err != nil {
			e.t.Fatalf("push: %v", err)
		}
	}
	return payloads
}

// stats returns the queue's counts; ok is false while Redis is unreachable.
func (e *env) stats() (lease.Stats, bool) {
	s, err := e.lc.Stats(e.t.Context(), e.queue)
	return s, err == nil
}

// waitDrained waits until nothing is ready, in flight or delayed: every
// message was acked or dead-lettered.
func (e *env) waitDrained(timeout time.Duration) {
	e.t.Helper()
	var last lease.Stats
	redistest.WaitFor(e.t, timeout, throttle(20*time.Millisecond, func() bool {
		s, ok := e.stats()
		last = s
		return ok && s.Ready == 0 && s.InFlight == 0 && s.Delayed == 0
	}), "queue drained (last stats %+v)", &last)
}

// handledCount is how many Handling records the queue has.
func (e *env) handledCount() int64 {
	n, _ := e.rdb.HLen(e.t.Context(), journal.HandledKey(e.queue)).Result()
	return n
}

// overdue returns how many leases are past their deadline by Redis's
// clock, and by how much the oldest is; ok is false if Redis did not
// answer.
func (e *env) overdue() (n int64, oldest time.Duration, ok bool) {
	ctx := e.t.Context()
	now, err := e.rdb.Time(ctx).Result()
	if err != nil {
		return 0, 0, false
	}
	k := lease.KeysFor(e.queue)
	cutoff := strconv.FormatInt(now.UnixMilli()-1, 10)
	// leases of both formats (Deadlines: format 1)
	for _, key := range []string{k.Due, k.Deadlines} {
		m, err := e.rdb.ZCount(ctx, key, "-inf", cutoff).Result()
		if err != nil {
			return 0, 0, false
		}
		n += m
		first, err := e.rdb.ZRangeWithScores(ctx, key, 0, 0).Result()
		if err != nil {
			return 0, 0, false
		}
		if len(first) == 1 {
			oldest = max(oldest, time.Duration(now.UnixMilli()-int64(first[0].Score))*time.Millisecond)
		}
	}
	return n, oldest, true
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
