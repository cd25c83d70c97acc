package redistest

import (
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// Shared is one server for a whole test binary, started on first use
// outside any test: examples, which get no *testing.T, use it. If the
// server cannot start, the process exits.
//
//	var example redistest.Shared
//
//	func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m, &example, "lease")) }
type Shared struct {
	once sync.Once
	tb   *mainTB
	addr string
}

// RunMain is the TestMain of a package whose examples use s: it runs m,
// stops s and returns the exit code. Examples cannot skip, so where
// redis-server is not on PATH it skips the whole package (exit code 0),
// as Start would skip each test, except under CI, where the tests run and
// fail.
func RunMain(m *testing.M, s *Shared, pkg string) int {
	if _, err := exec.LookPath("redis-server"); err != nil && os.Getenv("CI") == "" {
		fmt.Fprintf(os.Stderr, "%s: redis-server not on PATH; skipping the package's tests\n", pkg)
		return 0
	}
	code := m.Run()
	s.Stop()
	return code
}

// Addr starts the server if it is not running yet and returns its
// address.
func (s *Shared) Addr() string {
	s.once.Do(func() {
		s.tb = &mainTB{}
		s.addr = Start(s.tb).Addr()
	})
	return s.addr
}

// Stop stops the server, if Addr started one.
func (s *Shared) Stop() {
	if s.tb != nil {
		s.tb.cleanup()
	}
}

// mainTB is the testing.TB that Start needs, outside any test. Only the
// methods Start calls are implemented.
type mainTB struct {
	testing.TB
	mu       sync.Mutex
	cleanups []func()
	failed   bool
}

func (tb *mainTB) Helper()                    {}
func (tb *mainTB) Logf(f string, args ...any) { fmt.Fprintf(os.Stderr, f+"\n", args...) }
func (tb *mainTB) Failed() bool {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.failed
}

func (tb *mainTB) Errorf(f string, args ...any) {
	tb.mu.Lock()
	tb.failed = true
	tb.mu.Unlock()
	tb.Logf(f, args...)
}

func (tb *mainTB) Fatalf(f string, args ...any) {
	tb.Errorf(f, args...)
	tb.cleanup()
	os.Exit(1)
}

func (tb *mainTB) Skipf(f string, args ...any) { tb.Fatalf(f, args...) }

func (tb *mainTB) Cleanup(f func()) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.cleanups = append(tb.cleanups, f)
}

func (tb *mainTB) TempDir() string {
	dir, err := os.MkdirTemp("", "ackd-example-")
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (tb *mainTB) cleanup() {
	tb.mu.Lock()
	fs := tb.cleanups
	tb.cleanups = nil
	tb.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
