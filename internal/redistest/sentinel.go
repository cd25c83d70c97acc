package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults for SentinelOptions.
const (
	// MasterNameDefault is the name the Sentinels monitor the master by.
	MasterNameDefault = "mymaster"
	// DownAfterDefault is down-after-milliseconds: how long the master
	// may be unreachable before a Sentinel considers it down.
	DownAfterDefault = time.Second
	// FailoverTimeoutDefault is the Sentinels' failover-timeout.
	FailoverTimeoutDefault = 5 * time.Second
	// sentinelReadyTimeout bounds StartSentinel and each failover.
	sentinelReadyTimeout = 30 * time.Second
)

// SentinelOptions configures StartSentinel. A nil *SentinelOptions means
// all defaults.
type SentinelOptions struct {
	// MasterName is the name the master is monitored by. Defaults to
	// "mymaster".
	MasterName string
	// DownAfter is down-after-milliseconds. Defaults to 1 second.
	DownAfter time.Duration
	// FailoverTimeout is failover-timeout. Defaults to 5 seconds.
	FailoverTimeout time.Duration
	// Password, if set, is the requirepass (and masterauth) of the master
	// and the replica; the Sentinels use it to reach them. Defaults to
	// none.
	Password string
	// SentinelPassword, if set, is the requirepass of the Sentinels
	// themselves. Defaults to none.
	SentinelPassword string
	// Flags are extra redis-server flags for the master and the replica.
	// Defaults to none.
	Flags []string
}

// Sentinel is a private Sentinel deployment: a master, one replica and
// three Sentinels that monitor them with a quorum of two, on loopback.
type Sentinel struct {
	// Data holds the master (first, at start) and the replica.
	Data      []*Server
	Sentinels []*Server
	opts      SentinelOptions

	mu      sync.Mutex
	clients map[string]*redis.Client
}

// StartSentinel starts a master, a replica of it and three Sentinels
// (`redis-server CONFIG --sentinel`), and returns once every Sentinel names
// the master, sees the replica up and linked, and knows the two other
// Sentinels (which it learns from their hello messages, within about 2 s).
// Everything is killed when the test ends. It fails the test after 30 s.
func StartSentinel(t testing.TB, opts *SentinelOptions) *Sentinel {
	t.Helper()
	var o SentinelOptions
	if opts != nil {
		o = *opts
	}
	if o.MasterName == "" {
		o.MasterName = MasterNameDefault
	}
	if o.DownAfter == 0 {
		o.DownAfter = DownAfterDefault
	}
	if o.FailoverTimeout == 0 {
		o.FailoverTimeout = FailoverTimeoutDefault
	}
	s := &Sentinel{opts: o, clients: map[string]*redis.Client{}}
	t.Cleanup(s.closeClients)

	data := []string{"--repl-diskless-sync-delay", "0"}
	if o.Password != "" {
		data = append(data, "--requirepass", o.Password, "--masterauth", o.Password)
	}
	data = append(data, o.Flags...)
	master := start(t, "redistest.StartSentinel", "", data, nil)
	replica := start(t, "redistest.StartSentinel", "", append(data, "--replicaof", "127.0.0.1", fmt.Sprint(master.Port())), nil)
	s.Data = []*Server{master, replica}
	pollUntil(t, sentinelReadyTimeout, "the replica syncs", func() (bool, string) {
		return s.linked(replica, master)
	})

	for range 3 {
		conf := filepath.Join(t.TempDir(), "sentinel.conf")
		if err := os.WriteFile(conf, []byte(s.config(master)), 0o600); err != nil {
			t.Fatalf("redistest.StartSentinel: %v", err)
		}
		var flags []string
		if o.SentinelPassword != "" {
			flags = []string{"--requirepass", o.SentinelPassword}
		}
		s.Sentinels = append(s.Sentinels, start(t, "redistest.StartSentinel", conf, flags, nil))
	}
	s.WaitHealthy(t, sentinelReadyTimeout)
	return s
}

// config is one Sentinel's configuration file. It names the replica up
// front so the Sentinel need not wait for the master's INFO to find it.
func (s *Sentinel) config(master *Server) string {
	name := s.opts.MasterName
	var b strings.Builder
	id := make([]byte, 20)
	_, _ = rand.Read(id)
	fmt.Fprintf(&b, "sentinel myid %s\n", hex.EncodeToString(id))
	fmt.Fprintf(&b, "sentinel monitor %s 127.0.0.1 %d 2\n", name, master.Port())
	fmt.Fprintf(&b, "sentinel down-after-milliseconds %s %d\n", name, s.opts.DownAfter.Milliseconds())
	fmt.Fprintf(&b, "sentinel failover-timeout %s %d\n", name, s.opts.FailoverTimeout.Milliseconds())
	fmt.Fprintf(&b, "sentinel known-replica %s 127.0.0.1 %d\n", name, s.Data[1].Port())
	if s.opts.Password != "" {
		fmt.Fprintf(&b, "sentinel auth-pass %s %s\n", name, s.opts.Password)
	}
	if s.opts.SentinelPassword != "" {
		fmt.Fprintf(&b, "sentinel sentinel-pass %s\n", s.opts.SentinelPassword)
	}
	return b.String()
}

// MasterName returns the name the Sentinels monitor the master by.
func (s *Sentinel) MasterName() string { return s.opts.MasterName }

// Addrs returns the Sentinels' addresses.
func (s *Sentinel) Addrs() []string { return addrsOf(s.Sentinels) }

// URL returns the deployment in redis.ParseFailoverURL's form:
// redis://[:sentinel-password@]first-sentinel?master_name=NAME&addr=...
// [&password=PASSWORD].
func (s *Sentinel) URL() string {
	u := url.URL{Scheme: "redis", Host: s.Sentinels[0].Addr()}
	if s.opts.SentinelPassword != "" {
		u.User = url.UserPassword("", s.opts.SentinelPassword)
	}
	q := url.Values{"master_name": {s.opts.MasterName}, "addr": s.Addrs()[1:]}
	if s.opts.Password != "" {
		q.Set("password", s.opts.Password)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// Client returns a go-redis failover client for the master, closed when
// the test ends.
func (s *Sentinel) Client(t testing.TB) *redis.Client {
	t.Helper()
	rc := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:       s.opts.MasterName,
		SentinelAddrs:    s.Addrs(),
		SentinelPassword: s.opts.SentinelPassword,
		Password:         s.opts.Password,
	})
	t.Cleanup(func() { _ = rc.Close() })
	return rc
}

// Master returns the data node every running Sentinel names as master.
func (s *Sentinel) Master(t testing.TB) *Server {
	t.Helper()
	var m *Server
	pollUntil(t, sentinelReadyTimeout, "the Sentinels agree on the master", func() (bool, string) {
		var why string
		m, why = s.agreedMaster()
		return m != nil, why
	})
	return m
}

// Replica returns the data node that is not the master.
func (s *Sentinel) Replica(t testing.TB) *Server {
	t.Helper()
	if m := s.Master(t); m == s.Data[0] {
		return s.Data[1]
	}
	return s.Data[0]
}

// Failover runs SENTINEL FAILOVER on the first running Sentinel: the
// replica is promoted without the master's agreement, as an operator's
// failover does. It returns the new master once +switch-master has been
// published and every running Sentinel names it.
func (s *Sentinel) Failover(t testing.TB) *Server {
	t.Helper()
	old := s.Master(t)
	w := s.WatchSwitch(t)
	sen := s.running()[0]
	if err := s.client(sen, s.opts.SentinelPassword).Do(context.Background(), "SENTINEL", "FAILOVER", s.opts.MasterName).Err(); err != nil {
		t.Fatalf("redistest: SENTINEL FAILOVER on %s: %v", sen.Addr(), err)
	}
	return s.awaitSwitch(t, w, old)
}

// KillMaster kills the master with SIGKILL and returns the new master
// once +switch-master has been published and every running Sentinel names
// it. The killed node can be Restarted; the Sentinels then make it a
// replica of the new master (see WaitHealthy).
func (s *Sentinel) KillMaster(t testing.TB) *Server {
	t.Helper()
	old := s.Master(t)
	w := s.WatchSwitch(t)
	old.Kill(t)
	return s.awaitSwitch(t, w, old)
}

func (s *Sentinel) awaitSwitch(t testing.TB, w *SwitchWatch, old *Server) *Server {
	t.Helper()
	addr := w.Wait(t, sentinelReadyTimeout)
	var m *Server
	pollUntil(t, sentinelReadyTimeout, "every Sentinel names the new master", func() (bool, string) {
		var why string
		m, why = s.agreedMaster()
		if m == old {
			return false, "a Sentinel still names " + old.Addr()
		}
		return m != nil, why
	})
	if m.Addr() != addr {
		t.Fatalf("redistest: +switch-master named %s, the Sentinels now name %s", addr, m.Addr())
	}
	return m
}

// SwitchWatch receives +switch-master from every Sentinel.
type SwitchWatch struct {
	ch chan string
}

// WatchSwitch subscribes to +switch-master on every running Sentinel and
// returns once every subscription is confirmed, so no switch after the
// call is missed. The subscriptions end with the test.
func (s *Sentinel) WatchSwitch(t testing.TB) *SwitchWatch {
	t.Helper()
	w := &SwitchWatch{ch: make(chan string, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, sen := range s.running() {
		ps := s.client(sen, s.opts.SentinelPassword).Subscribe(ctx, "+switch-master")
		if _, err := ps.Receive(ctx); err != nil {
			t.Fatalf("redistest: subscribing to +switch-master on %s: %v", sen.Addr(), err)
		}
		t.Cleanup(func() { _ = ps.Close() })
		go func() {
			for {
				msg, err := ps.ReceiveMessage(ctx)
				if err != nil {
					return
				}
				// "<name> <old-ip> <old-port> <new-ip> <new-port>"
				f := strings.Fields(msg.Payload)
				if len(f) == 5 && f[0] == s.opts.MasterName {
					select {
					case w.ch <- f[3] + ":" + f[4]:
					default:
					}
				}
			}
		}()
	}
	return w
}

// Wait returns the new master's address from the first +switch-master
// received, failing the test after timeout.
func (w *SwitchWatch) Wait(t testing.TB, timeout time.Duration) string {
	t.Helper()
	select {
	case addr := <-w.ch:
		return addr
	case <-time.After(timeout):
		t.Fatalf("redistest: no +switch-master within %v", timeout)
		return ""
	}
}

// WaitHealthy waits until every running Sentinel names the same running
// master, sees every running data node as its replica, linked, and knows
// every other running Sentinel; and every running replica has synced.
func (s *Sentinel) WaitHealthy(t testing.TB, timeout time.Duration) {
	t.Helper()
	pollUntil(t, timeout, "the Sentinel deployment is healthy", s.healthy)
}

func (s *Sentinel) healthy() (bool, string) {
	ctx := context.Background()
	m, why := s.agreedMaster()
	if m == nil {
		return false, why
	}
	sentinels := s.running()
	for _, sen := range sentinels {
		c := s.client(sen, s.opts.SentinelPassword)
		reps, err := c.Do(ctx, "SENTINEL", "REPLICAS", s.opts.MasterName).Slice()
		if err != nil {
			return false, err.Error()
		}
		up := 0
		for _, r := range reps {
			f := fields(r)
			if !strings.Contains(f["flags"], "_down") && !strings.Contains(f["flags"], "disconnected") && f["master-link-status"] == "ok" {
				up++
			}
		}
		others, err := c.Do(ctx, "SENTINEL", "SENTINELS", s.opts.MasterName).Slice()
		if err != nil {
			return false, err.Error()
		}
		known := 0
		for _, o := range others {
			if !strings.Contains(fields(o)["flags"], "_down") {
				known++
			}
		}
		if want := len(s.runningData()) - 1; up != want {
			return false, fmt.Sprintf("%s sees %d replicas up, want %d", sen.Addr(), up, want)
		}
		if known != len(sentinels)-1 {
			return false, fmt.Sprintf("%s knows %d other Sentinels, want %d", sen.Addr(), known, len(sentinels)-1)
		}
	}
	for _, d := range s.runningData() {
		if d != m {
			if ok, why := s.linked(d, m); !ok {
				return false, why
			}
		}
	}
	return true, ""
}

// agreedMaster returns the running data node every running Sentinel names.
func (s *Sentinel) agreedMaster() (*Server, string) {
	var addr string
	for _, sen := range s.running() {
		a, err := s.client(sen, s.opts.SentinelPassword).Do(context.Background(), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.opts.MasterName).StringSlice()
		if err != nil {
			return nil, err.Error()
		}
		if len(a) != 2 {
			return nil, fmt.Sprintf("%s: GET-MASTER-ADDR-BY-NAME returned %v", sen.Addr(), a)
		}
		got := a[0] + ":" + a[1]
		if addr != "" && got != addr {
			return nil, fmt.Sprintf("Sentinels name %s and %s", addr, got)
		}
		addr = got
	}
	for _, d := range s.Data {
		if d.Addr() == addr {
			if !d.Running() {
				return nil, "the named master " + addr + " is not running"
			}
			return d, ""
		}
	}
	return nil, "no running Sentinel names a known master (" + addr + ")"
}

// linked reports whether replica is a synced replica of master.
func (s *Sentinel) linked(replica, master *Server) (bool, string) {
	info, err := s.client(replica, s.opts.Password).Info(context.Background(), "replication").Result()
	if err != nil {
		return false, err.Error()
	}
	if !strings.Contains(info, "role:slave") || !strings.Contains(info, fmt.Sprintf("master_port:%d", master.Port())) ||
		!strings.Contains(info, "master_link_status:up") || !strings.Contains(info, "master_sync_in_progress:0") {
		return false, replica.Addr() + " is not a synced replica of " + master.Addr()
	}
	return true, ""
}

func (s *Sentinel) running() []*Server { return runningOf(s.Sentinels) }

func (s *Sentinel) runningData() []*Server { return runningOf(s.Data) }

func runningOf(servers []*Server) []*Server {
	var out []*Server
	for _, n := range servers {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

func (s *Sentinel) client(n *Server, password string) *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return adminClient(s.clients, n.Addr(), password)
}

func (s *Sentinel) closeClients() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rc := range s.clients {
		_ = rc.Close()
	}
}

// fields turns a Sentinel reply of alternating names and values into a map.
func fields(v any) map[string]string {
	out := map[string]string{}
	switch r := v.(type) {
	case []any:
		for i := 0; i+1 < len(r); i += 2 {
			out[fmt.Sprint(r[i])] = fmt.Sprint(r[i+1])
		}
	case map[any]any:
		for k, val := range r {
			out[fmt.Sprint(k)] = fmt.Sprint(val)
		}
	}
	return out
}
