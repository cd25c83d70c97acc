package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// testVersion is stamped into the test binary with -ldflags.
const testVersion = "v0.0.0-test"

// buildAckd builds the binary, stamping its version as the Dockerfile
// does. It builds with -race, like the test itself and e2e, so that the
// build cache is shared (the Dockerfile's -trimpath and CGO_ENABLED=0
// would recompile everything, the standard library included) and the
// process runs under the race detector.
func buildAckd(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go not on PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "ackd")
	cmd := exec.Command(gobin, "build", "-race", "-ldflags", "-X main.version="+testVersion, "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// ackdCmd runs bin with exactly env (nothing inherited).
func ackdCmd(ctx context.Context, bin string, env map[string]string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = []string{}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestBinary builds ackd once and runs it as a process.
func TestBinary(t *testing.T) {
	t.Parallel()
	bin := buildAckd(t)

	t.Run("version", func(t *testing.T) {
		t.Parallel()
		out, err := ackdCmd(t.Context(), bin, nil, "-version").Output()
		if err != nil || string(out) != "ackd "+testVersion+"\n" {
			t.Errorf("ackd -version = %q, %v", out, err)
		}
	})

	t.Run("help", func(t *testing.T) {
		t.Parallel()
		for _, arg := range []string{"-h", "--help"} {
			out, err := ackdCmd(t.Context(), bin, nil, arg).Output()
			if err != nil {
				t.Errorf("ackd %s: %v", arg, err)
			}
			for _, v := range configVars() {
				if !bytes.Contains(out, []byte(v.Name)) {
					t.Errorf("ackd %s lacks %s", arg, v.Name)
				}
			}
		}
	})

	t.Run("bad env", func(t *testing.T) {
		t.Parallel()
		// A listener standing in for Redis: ackd must not connect to it.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var accepted atomic.Int32
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted.Add(1)
				c.Close()
			}
		}()
		url := "redis://" + ln.Addr().String() + "/0"
		for _, tc := range []struct {
			env  map[string]string
			name string
		}{
			{map[string]string{"ACKD_SCAN_INTERVAL": "-1s"}, "ACKD_SCAN_INTERVAL"},
			{map[string]string{"ACKD_REDIS_ULR": url}, "ACKD_REDIS_ULR"},
			{map[string]string{"ACKD_LOG_FORMAT": "yaml"}, "ACKD_LOG_FORMAT"},
			{map[string]string{"ACKD_QUEUES": "a b"}, "ACKD_QUEUES"},
			{map[string]string{"ACKD_REDIS_PASSWORD": "x", "ACKD_REDIS_PASSWORD_FILE": "/etc/hostname"}, "ACKD_REDIS_PASSWORD_FILE"},
			{map[string]string{"ACKD_REDIS_PASSWORD_FILE": "/nonexistent/secret"}, "ACKD_REDIS_PASSWORD_FILE"},
			{map[string]string{"ACKD_REDIS_TLS_CA_FILE": "/etc/hostname"}, "ACKD_REDIS_URL"}, // TLS file without rediss://
		} {
			tc.env["ACKD_REDIS_URL"] = url
			tc.env["ACKD_HTTP_ADDR"] = "127.0.0.1:0"
			var stderr bytes.Buffer
			cmd := ackdCmd(t.Context(), bin, tc.env)
			cmd.Stderr = &stderr
			err := cmd.Run()
			if code := exitCode(err); code != 1 {
				t.Errorf("%v: exit code %d (%v), want 1", tc.env, code, err)
			}
			if !strings.Contains(stderr.String(), tc.name) || !strings.HasPrefix(stderr.String(), "ackd: ") {
				t.Errorf("%v: stderr %q does not name %s", tc.env, stderr.String(), tc.name)
			}
		}
		ln.Close()
		if n := accepted.Load(); n != 0 {
			t.Errorf("ackd connected %d times to Redis despite a bad configuration", n)
		}
	})

	t.Run("healthcheck without ackd", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		var stderr bytes.Buffer
		cmd := ackdCmd(t.Context(), bin, map[string]string{"ACKD_HTTP_ADDR": addr}, "-healthcheck")
		cmd.Stderr = &stderr
		if code := exitCode(cmd.Run()); code != 1 {
			t.Errorf("-healthcheck with nothing listening: exit %d, want 1; stderr %q", code, stderr.String())
		}
	})

	t.Run("sigterm", func(t *testing.T) {
		t.Parallel()
		srv := redistest.Start(t)
		const shutdown = 5 * time.Second
		cmd := ackdCmd(context.Background(), bin, map[string]string{
			"ACKD_REDIS_URL":        srv.URL(),
			"ACKD_HTTP_ADDR":        "127.0.0.1:0",
			"ACKD_SHUTDOWN_TIMEOUT": shutdown.String(),
		})
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() })

		// Read the log lines; the first one gives the HTTP address.
		var (
			mu    sync.Mutex
			lines []string
		)
		addrc := make(chan string, 1)
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				mu.Lock()
				lines = append(lines, sc.Text())
				mu.Unlock()
				var m struct {
					Msg      string `json:"msg"`
					HTTPAddr string `json:"http_addr"`
				}
				if json.Unmarshal(sc.Bytes(), &m) == nil && m.Msg == "ackd started" {
					addrc <- m.HTTPAddr
				}
			}
		}()
		var addr string
		select {
		case addr = <-addrc:
		case <-time.After(startTimeout):
			t.Fatalf("no 'ackd started' line within %v", startTimeout)
		}
		redistest.WaitFor(t, startTimeout, func() bool {
			resp, err := http.Get("http://" + addr + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}, "ready")

		hc := ackdCmd(t.Context(), bin, map[string]string{"ACKD_HTTP_ADDR": addr}, "-healthcheck")
		if out, err := hc.CombinedOutput(); err != nil {
			t.Errorf("-healthcheck against a running ackd: %v %s", err, out)
		}

		start := time.Now()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-readDone:
		case <-time.After(shutdown + 5*time.Second):
			t.Fatalf("ackd still running %v after SIGTERM", time.Since(start))
		}
		err = cmd.Wait()
		if code := exitCode(err); code != 0 {
			t.Errorf("exit code %d (%v) after SIGTERM, want 0", code, err)
		}
		if took := time.Since(start); took > shutdown {
			t.Errorf("took %v to exit, more than ACKD_SHUTDOWN_TIMEOUT %v", took, shutdown)
		}
		mu.Lock()
		log := strings.Join(lines, "\n")
		mu.Unlock()
		for _, want := range []string{`"msg":"ackd stopping"`, `"msg":"ackd stopped"`} {
			if !strings.Contains(log, want) {
				t.Errorf("log lacks %s:\n%s", want, log)
			}
		}
	})
}
