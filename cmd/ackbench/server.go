package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// serverFlags are the redis-server settings every run uses: Redis's own
// defaults (hz 10) with persistence off and the keyspace events ackd's
// daemon listens to.
var serverFlags = []string{
	"--save", "",
	"--appendonly", "no",
	"--hz", "10",
	"--notify-keyspace-events", "Exe",
}

// server is a private redis-server on a free loopback port.
type server struct {
	cmd  *exec.Cmd
	port int
	dir  string
	out  *tailBuffer
	done chan struct{}
}

var errPortBusy = errors.New("port taken")

// startServer starts redis-server with serverFlags and waits until it
// accepts connections. It retries on another port if the one it picked was
// taken meanwhile.
func startServer() (*server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not on PATH: %w", err)
	}
	dir, err := os.MkdirTemp("", "ackbench-redis-")
	if err != nil {
		return nil, err
	}
	for range 5 {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s, err := launchServer(bin, dir, port)
		if errors.Is(err, errPortBusy) {
			continue
		}
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		return s, nil
	}
	_ = os.RemoveAll(dir)
	return nil, errors.New("redis-server: every port tried was taken")
}

func launchServer(bin, dir string, port int) (*server, error) {
	args := append([]string{"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir, "--logfile", ""}, serverFlags...)
	cmd := exec.Command(bin, args...)
	setDeathSignal(cmd)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	s := &server{cmd: cmd, port: port, dir: dir, out: &tailBuffer{max: 64 << 10}, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		seen := false
		for sc.Scan() {
			s.out.Write(append(sc.Bytes(), '\n'))
			if !seen && bytes.Contains(sc.Bytes(), []byte("Ready to accept connections")) {
				seen = true
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = cmd.Wait()
		close(s.done)
	}()
	select {
	case <-ready:
		return s, nil
	case <-s.done:
		if strings.Contains(s.out.String(), "Address already in use") {
			return nil, errPortBusy
		}
		return nil, fmt.Errorf("redis-server exited before it was ready:\n%s", s.out.String())
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-s.done
		return nil, fmt.Errorf("redis-server not ready within 10s:\n%s", s.out.String())
	}
}

func (s *server) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

func (s *server) pid() int { return s.cmd.Process.Pid }

// stop kills the server and removes its directory.
func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	_ = os.RemoveAll(s.dir)
}

func freePort() (int, error) {
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if port != 6379 {
			return port, nil
		}
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// stats is a snapshot of the INFO fields the benchmarks use.
type stats struct {
	cpu      float64 // used_cpu_sys + used_cpu_user, seconds
	commands int64   // total_commands_processed (commands inside scripts included)
	memory   int64   // used_memory, bytes
	blocked  int64   // blocked_clients
	cmds     map[string]cmdStat
}

// cmdStat is one INFO commandstats line.
type cmdStat struct {
	calls int64
	usec  int64
}

// readStats reads INFO cpu, stats, memory, clients and commandstats in one
// call (one command: the INFO itself).
func readStats(ctx context.Context, rdb *redis.Client) (stats, error) {
	info, err := rdb.Info(ctx, "cpu", "stats", "memory", "clients", "commandstats").Result()
	if err != nil {
		return stats{}, fmt.Errorf("INFO: %w", err)
	}
	return parseStats(info)
}

func parseStats(info string) (stats, error) {
	s := stats{cmds: map[string]cmdStat{}}
	for line := range strings.SplitSeq(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "used_cpu_sys", "used_cpu_user":
			var f float64
			f, err = strconv.ParseFloat(v, 64)
			s.cpu += f
		case "total_commands_processed":
			s.commands, err = strconv.ParseInt(v, 10, 64)
		case "used_memory":
			s.memory, err = strconv.ParseInt(v, 10, 64)
		case "blocked_clients":
			s.blocked, err = strconv.ParseInt(v, 10, 64)
		default:
			name, found := strings.CutPrefix(k, "cmdstat_")
			if !found {
				continue
			}
			var c cmdStat
			for f := range strings.SplitSeq(v, ",") {
				fk, fv, _ := strings.Cut(f, "=")
				switch fk {
				case "calls":
					c.calls, err = strconv.ParseInt(fv, 10, 64)
				case "usec":
					c.usec, err = strconv.ParseInt(fv, 10, 64)
				}
				if err != nil {
					break
				}
			}
			s.cmds[name] = c
		}
		if err != nil {
			return s, fmt.Errorf("INFO line %q: %w", line, err)
		}
	}
	return s, nil
}

// sub returns s - o for the counters (memory and blocked stay s's).
func (s stats) sub(o stats) stats {
	d := stats{cpu: s.cpu - o.cpu, commands: s.commands - o.commands, memory: s.memory, blocked: s.blocked, cmds: map[string]cmdStat{}}
	for k, v := range s.cmds {
		p := o.cmds[k]
		if v.calls != p.calls {
			d.cmds[k] = cmdStat{calls: v.calls - p.calls, usec: v.usec - p.usec}
		}
	}
	return d
}

// calls sums the calls of every command but INFO (ackbench's own).
func (s stats) calls() int64 {
	var n int64
	for k, v := range s.cmds {
		if k != "info" {
			n += v.calls
		}
	}
	return n
}
