package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ackdBinary returns the ackd binary: -ackd, or ./cmd/ackd built once into
// a temporary directory.
func (b *bench) ackdBinary(ctx context.Context) (string, error) {
	if b.opt.ackdBin != "" {
		return b.opt.ackdBin, nil
	}
	if b.ackdPath != "" || b.ackdErr != nil {
		return b.ackdPath, b.ackdErr
	}
	dir, err := os.MkdirTemp("", "ackbench-ackd-")
	if err != nil {
		return "", err
	}
	b.ackdDir = dir
	path := filepath.Join(dir, "ackd")
	b.logf("building ./cmd/ackd")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", path, "github.com/ackd/ackd/cmd/ackd")
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.ackdErr = fmt.Errorf("go build ./cmd/ackd: %v\n%s", err, out)
		return "", b.ackdErr
	}
	b.ackdPath = path
	return path, nil
}

func (b *bench) cleanupAckd() {
	if b.ackdDir != "" {
		_ = os.RemoveAll(b.ackdDir)
	}
}

// daemon is a running ackd process.
type daemon struct {
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
	err  error
	http string
}

// startDaemon runs ackd against the server, with its defaults except the
// Redis URL, a free HTTP port and warn-level logs, and waits for /readyz.
func (b *bench) startDaemon(ctx context.Context, extraEnv ...string) (*daemon, error) {
	bin, err := b.ackdBinary(ctx)
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	d := &daemon{out: &tailBuffer{max: 64 << 10}, done: make(chan struct{}), http: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	d.cmd = exec.Command(bin)
	setDeathSignal(d.cmd)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ACKD_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"ACKD_REDIS_URL=redis://"+b.srv.addr()+"/0",
		"ACKD_HTTP_ADDR="+d.http,
		"ACKD_LOG_LEVEL=warn",
		"ACKD_LOG_FORMAT=text",
	)
	d.cmd.Env = append(env, extraEnv...)
	d.cmd.Stdout = d.out
	d.cmd.Stderr = d.out
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting ackd: %w", err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	deadline := time.Now().Add(15 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-d.done:
			return nil, fmt.Errorf("ackd exited at start (%v):\n%s", d.err, d.out.String())
		default:
		}
		resp, err := client.Get("http://" + d.http + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d, nil
			}
		}
		if time.Now().After(deadline) {
			d.kill()
			return nil, fmt.Errorf("ackd not ready within 15s (last: %v):\n%s", err, d.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stop sends SIGTERM and waits; an exit other than a clean one is an error.
func (d *daemon) stop() error {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		d.kill()
		return fmt.Errorf("ackd did not exit within 20s of SIGTERM:\n%s", d.out.String())
	}
	if d.err != nil {
		return fmt.Errorf("ackd exited with %v:\n%s", d.err, d.out.String())
	}
	return nil
}

func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// logTail is the daemon's last log lines, for the report when it warned.
func (d *daemon) logTail(n int) string {
	lines := strings.Split(strings.TrimSpace(d.out.String()), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// lagHistogram reads the daemon's ackd_redelivery_lag_seconds histogram
// from /metrics and returns the share of requeues per bucket up to 50 ms.
func (d *daemon) lagHistogram() string {
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + d.http + "/metrics")
	if err != nil {
		return "unavailable"
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "unavailable"
	}
	buckets := map[string]float64{}
	var order []string
	for line := range strings.SplitSeq(string(body), "\n") {
		if !strings.HasPrefix(line, "ackd_redelivery_lag_seconds_bucket{") {
			continue
		}
		i := strings.Index(line, `le="`)
		j := strings.LastIndexByte(line, ' ')
		if i < 0 || j < 0 {
			continue
		}
		le, _, _ := strings.Cut(line[i+4:], `"`)
		v, err := strconv.ParseFloat(line[j+1:], 64)
		if err != nil {
			continue
		}
		if _, ok := buckets[le]; !ok {
			order = append(order, le)
		}
		buckets[le] += v // summed over any other labels
	}
	total := buckets["+Inf"]
	if total == 0 {
		return "no requeues recorded"
	}
	var parts []string
	for _, le := range order {
		f, err := strconv.ParseFloat(le, 64)
		if err != nil || f > 0.05 {
			continue
		}
		parts = append(parts, fmt.Sprintf("≤%gms %.1f%%", f*1000, 100*buckets[le]/total))
	}
	return strings.Join(parts, ", ")
}
