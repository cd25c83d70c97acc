package redisconn_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redisconn"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/notify"
)

const secret = "Zm9v/YmFy#s3cr3t"

func open(t *testing.T, o redisconn.Options) (*redisconn.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	c, err := redisconn.Open(ctx, o)
	if err == nil {
		t.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

func mustOpen(t *testing.T, o redisconn.Options) *redisconn.Conn {
	t.Helper()
	c, err := open(t, o)
	if err != nil {
		t.Fatalf("Open(%s): %v", redisconn.Redact(o.URL), err)
	}
	return c
}

// TestBadURLs needs no server: every URL is refused before any dial, with
// an error that names the variable and never holds the password.
func TestBadURLs(t *testing.T) {
	t.Parallel()
	enc := url.QueryEscape(secret)
	cases := []struct {
		name, url, want string
	}{
		{"empty", "", "is empty"},
		{"blank", "  ", "is empty"},
		{"slash in password", "redis://user:" + secret + "@127.0.0.1:1/0", "not a valid URL"},
		{"password only, bad port", "redis://" + secret + "@127.0.0.1:x", "percent-encode"},
		{"slash in password only", "redis://Zm9v/YmFy@127.0.0.1:1", "percent-encode"},
		{"fragment", "redis://127.0.0.1:1/0#frag", "fragment"},
		{"bad escape", "redis://:Zm9v%ZZYmFy@127.0.0.1:1", "not a valid URL"},
		{"password param, unknown option", "redis://127.0.0.1:1?password=" + enc + "&bogus=1", "bogus"},
		{"cluster with db", "redis://127.0.0.1:1/2?addr=127.0.0.1:2", "only database 0"},
		{"cluster with db param", "redis://127.0.0.1:1?addr=127.0.0.1:2&db=3", "only database 0"},
		{"unix with addr", "unix:///tmp/redis.sock?addr=127.0.0.1:2", "unix://"},
		{"unix with master", "unix:///tmp/redis.sock?master_name=m", "unix://"},
		{"empty master name", "redis://127.0.0.1:1?master_name=", "master_name is empty"},
		{"sentinel with cluster option", "redis://:" + enc + "@127.0.0.1:1?master_name=m&max_redirects=3", "mixes URL forms: max_redirects is a parameter of the Cluster form"},
		{"sentinel with read_only", "redis://:" + enc + "@127.0.0.1:1?master_name=m&addr=127.0.0.1:2&read_only=true", "mixes URL forms: read_only"},
		{"cluster with sentinel option", "redis://:" + enc + "@127.0.0.1:1?addr=127.0.0.1:2&replica_only=true", "replica_only is a parameter of the Sentinel form"},
		{"one server with cluster option", "redis://:" + enc + "@127.0.0.1:1?route_randomly=true", "not of the one-server form"},
		{"sentinel on replicas", "redis://:" + enc + "@127.0.0.1:1?master_name=m&replica_only=true", "talks to the master only"},
		{"sentinel routed by latency", "redis://:" + enc + "@127.0.0.1:1?master_name=m&route_by_latency=true", "talks to the master only"},
		{"sentinel password parameter", "redis://127.0.0.1:1?master_name=m&sentinel_password=" + enc, "userinfo"},
		{"redis+sentinel scheme", "redis+sentinel://:" + enc + "@127.0.0.1:26379?master_name=m", `scheme "redis+sentinel" is not one go-redis knows`},
		{"sentinel scheme", "sentinel://:" + enc + "@127.0.0.1:26379/mymaster", "master_name=NAME"},
		{"no scheme", "//127.0.0.1:1", "has no scheme"},
		{"cluster bad addr", "redis://:" + enc + "@127.0.0.1:1?addr=nohostport", "addr"},
		{"bad scheme", "http://:" + enc + "@127.0.0.1:1", "scheme"},
		{"tls options on redis://", "redis://127.0.0.1:1", "rediss://"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := redisconn.Options{URL: tc.url, Var: "ACKD_REDIS_URL"}
			if tc.name == "tls options on redis://" {
				o.TLSServerName = "x"
			}
			if err := redisconn.Check(o); err == nil {
				t.Fatalf("Check(%q) succeeded", tc.url)
			}
			_, err := open(t, o)
			if err == nil {
				t.Fatalf("Open(%q) succeeded", tc.url)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "ACKD_REDIS_URL: ") || !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q: want the variable name and %q", msg, tc.want)
			}
			for _, part := range []string{secret, enc, "Zm9v", "YmFy", "s3cr3t"} {
				if strings.Contains(msg, part) {
					t.Fatalf("error %q contains the password part %q", msg, part)
				}
			}
			var e *redisconn.Error
			if !errors.As(err, &e) || e.Var != "ACKD_REDIS_URL" {
				t.Fatalf("error %v is not a *redisconn.Error naming the variable", err)
			}
		})
	}
}

func TestCheckAcceptsEveryForm(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"redis://127.0.0.1:1/0",
		"rediss://user:pw@127.0.0.1:1/3?dial_timeout=2s",
		"unix:///tmp/redis.sock?db=2",
		"redis://127.0.0.1:1?addr=127.0.0.1:2&addr=127.0.0.1:3",
		"redis://:spw@127.0.0.1:26379?master_name=m&addr=127.0.0.1:26380&password=pw",
	} {
		if err := redisconn.Check(redisconn.Options{URL: u}); err != nil {
			t.Errorf("Check(%s): %v", redisconn.Redact(u), err)
		}
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"redis://user:" + url.QueryEscape(secret) + "@h:1/0",
		"redis://" + url.QueryEscape(secret) + "@h:1",
		"redis://h:1?master_name=m&password=" + url.QueryEscape(secret),
		"redis://user:" + secret + "@h:1",
	} {
		r := redisconn.Redact(u)
		if strings.Contains(r, "Zm9v") || strings.Contains(r, "s3cr3t") {
			t.Errorf("Redact(%q) = %q", u, r)
		}
	}
}

func TestStandaloneAndPassword(t *testing.T) {
	t.Parallel()
	s := redistest.Start(t, "--requirepass", secret)
	u := "redis://:" + url.QueryEscape(secret) + "@" + s.Addr() + "/0"
	c := mustOpen(t, redisconn.Options{URL: u, BlockingPoolSize: 4})
	if c.Mode != redisconn.Standalone || c.Blocking == nil || c.Failover != nil {
		t.Fatalf("mode %s, blocking %v", c.Mode, c.Blocking)
	}
	if err := c.Client.Set(t.Context(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got := c.Blocking.(*redis.Client).Options().PoolSize; got != 4 {
		t.Fatalf("blocking pool size %d, want 4", got)
	}

	// The password from a file, not the URL.
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, redisconn.Options{URL: s.URL(), PasswordFile: file})
	// And from a separate value.
	mustOpen(t, redisconn.Options{URL: s.URL(), Password: secret})

	_, err := open(t, redisconn.Options{URL: s.URL(), Password: secret, PasswordFile: file, PasswordVar: "ACKD_REDIS_PASSWORD", PasswordFileVar: "ACKD_REDIS_PASSWORD_FILE"})
	if err == nil || !strings.Contains(err.Error(), "ACKD_REDIS_PASSWORD_FILE") || strings.Contains(err.Error(), "Zm9v") {
		t.Fatalf("password and password file together: %v", err)
	}
	wrong := "wrong-" + secret
	_, err = open(t, redisconn.Options{URL: s.URL(), Password: wrong})
	if err == nil || !strings.Contains(err.Error(), "WRONGPASS") || strings.Contains(err.Error(), "Zm9v") {
		t.Fatalf("wrong password: %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	_ = os.WriteFile(empty, []byte("\n"), 0o600)
	if _, err := open(t, redisconn.Options{URL: s.URL(), PasswordFile: empty, PasswordFileVar: "ACKD_REDIS_PASSWORD_FILE"}); err == nil || !strings.Contains(err.Error(), "ACKD_REDIS_PASSWORD_FILE") {
		t.Fatalf("empty password file: %v", err)
	}
}

func TestTLS(t *testing.T) {
	t.Parallel()
	certs := redistest.NewCerts(t)
	_, addr := redistest.StartTLS(t, certs, false)
	_, mtlsAddr := redistest.StartTLS(t, certs, true)
	u := "rediss://" + addr
	ping := func(c *redisconn.Conn) error { return c.Client.Ping(t.Context()).Err() }

	c := mustOpen(t, redisconn.Options{URL: u, TLSCAFile: certs.CAFile})
	if err := ping(c); err != nil || c.InsecureSkipVerify {
		t.Fatalf("TLS with the private CA: %v (skip verify %v)", err, c.InsecureSkipVerify)
	}
	if _, err := open(t, redisconn.Options{URL: u}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("TLS without the CA: %v, want a certificate error", err)
	}
	if _, err := open(t, redisconn.Options{URL: u, TLSCAFile: certs.OtherCAFile}); err == nil {
		t.Fatal("TLS trusting only an unrelated CA succeeded")
	}
	if _, err := open(t, redisconn.Options{URL: u, TLSCAFile: certs.CAFile, TLSServerName: "elsewhere.example"}); err == nil {
		t.Fatal("TLS with a server name the certificate lacks succeeded")
	}
	mustOpen(t, redisconn.Options{URL: "rediss://localhost:" + strings.Split(addr, ":")[1], TLSCAFile: certs.CAFile})
	c = mustOpen(t, redisconn.Options{URL: u + "?skip_verify=true"})
	if !c.InsecureSkipVerify {
		t.Fatal("skip_verify=true not reported")
	}

	// mTLS: the server demands a client certificate.
	mu := "rediss://" + mtlsAddr
	if _, err := open(t, redisconn.Options{URL: mu, TLSCAFile: certs.CAFile}); err == nil {
		t.Fatal("mTLS without a client certificate succeeded")
	}
	c = mustOpen(t, redisconn.Options{URL: mu, TLSCAFile: certs.CAFile, TLSCertFile: certs.ClientCert, TLSKeyFile: certs.ClientKey})
	if err := ping(c); err != nil {
		t.Fatalf("mTLS: %v", err)
	}
	if _, err := open(t, redisconn.Options{URL: mu, TLSCAFile: certs.CAFile, TLSCertFile: certs.ClientCert}); err == nil || !strings.Contains(err.Error(), "together") {
		t.Fatalf("certificate without key: %v", err)
	}
	if _, err := open(t, redisconn.Options{URL: mu, TLSCAFile: certs.ServerKey}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("CA file without a certificate: %v", err)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, &redistest.ClusterOptions{AllowPartialCoverage: true})
	ctx := t.Context()

	// The Cluster form, and a plain URL naming any one node.
	for _, u := range []string{cl.URL(), "redis://" + cl.Nodes()[4].Addr()} {
		c := mustOpen(t, redisconn.Options{URL: u, BlockingPoolSize: 3})
		if c.Mode != redisconn.Cluster {
			t.Fatalf("Open(%s): mode %s, want cluster", u, c.Mode)
		}
		if _, ok := c.Blocking.(*redis.ClusterClient); !ok {
			t.Fatalf("blocking client %T", c.Blocking)
		}
		masters := map[string]bool{}
		for i := range 60 {
			k := fmt.Sprintf("key-%d", i)
			if err := c.Client.Set(ctx, k, "v", 0).Err(); err != nil {
				t.Fatalf("SET %s through %s: %v", k, u, err)
			}
			masters[cl.MasterOf(t, k).Addr()] = true
		}
		if len(masters) != 3 {
			t.Fatalf("keys reached %d masters", len(masters))
		}
	}
	if _, err := open(t, redisconn.Options{URL: "redis://" + cl.Nodes()[0].Addr() + "/1"}); err == nil || !strings.Contains(err.Error(), "only database 0") {
		t.Fatalf("a Cluster node with database 1: %v", err)
	}

	errorWindow(t, cl)

	// A master and its replica gone: its slots are uncovered. (The master
	// promoted above has no replica left; pick one that has.)
	var m, r *redistest.Server
	for _, mm := range cl.Masters(t) {
		if rr := cl.ReplicaOf(t, mm); rr != nil && rr.Running() {
			m, r = mm, rr
			break
		}
	}
	r.Kill(t)
	m.Kill(t)
	// Open asks whichever node its client picks: wait until every running
	// node has marked the slots failed.
	var live *redistest.Server
	var clients []*redis.Client
	for _, n := range cl.Nodes() {
		if n.Running() {
			live = n
			clients = append(clients, n.Client(t))
		}
	}
	redistest.WaitFor(t, 20*time.Second, func() bool {
		for _, c := range clients {
			info := c.ClusterInfo(ctx).Val()
			if !strings.Contains(info, "cluster_slots_ok:") || strings.Contains(info, "cluster_slots_ok:16384") {
				return false
			}
		}
		return true
	}, "the dead master's slots are marked failed on every node")
	_, err := open(t, redisconn.Options{URL: "redis://" + live.Addr()})
	if err == nil || !errors.Is(err, redisconn.ErrUncovered) || !strings.HasPrefix(err.Error(), "ACKD_REDIS_URL: ") {
		t.Fatalf("a Cluster with uncovered slots: %v", err)
	}
}

func TestSentinel(t *testing.T) {
	t.Parallel()
	s := redistest.StartSentinel(t, &redistest.SentinelOptions{Password: secret, SentinelPassword: "sentinel-" + secret})
	c := mustOpen(t, redisconn.Options{URL: s.URL(), BlockingPoolSize: 2})
	if c.Mode != redisconn.Sentinel || c.Blocking == nil {
		t.Fatalf("mode %s", c.Mode)
	}
	if err := c.Client.Set(t.Context(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Failover carries what reaches the Sentinels and the replicas: with
	// it, the events check sets the password-protected replica too.
	if fo := c.Failover; fo == nil || fo.MasterName != s.MasterName() || len(fo.SentinelAddrs) != 3 || fo.Password != secret || fo.SentinelPassword != "sentinel-"+secret {
		t.Fatalf("Conn.Failover = %+v", c.Failover)
	}
	if st := notify.EnsureEventsSentinel(t.Context(), c.Client, c.Failover, true); st.Err != nil || st.ReplicaErr != nil || !st.Enabled || !st.ReplicasEnabled || st.Replicas != 1 {
		t.Fatalf("EnsureEventsSentinel through Conn.Failover = %+v", st)
	}
	// The data password from a separate value instead of the URL.
	noPW := strings.Replace(s.URL(), "password="+url.QueryEscape(secret), "", 1)
	mustOpen(t, redisconn.Options{URL: noPW, Password: secret})

	bad := strings.Replace(s.URL(), "master_name="+s.MasterName(), "master_name=nosuch", 1)
	_, err := open(t, redisconn.Options{URL: bad})
	if err == nil || !strings.Contains(err.Error(), `no master named "nosuch"`) || strings.Contains(err.Error(), "Zm9v") {
		t.Fatalf("no such master: %v", err)
	}
	wrongSentinelPW := strings.Replace(s.URL(), url.QueryEscape("sentinel-"+secret), "nope", 1)
	wrongSentinelPW = strings.Replace(wrongSentinelPW, url.PathEscape("sentinel-"+secret), "nope", 1)
	_, err = open(t, redisconn.Options{URL: wrongSentinelPW})
	if err == nil || strings.Contains(err.Error(), "Zm9v") {
		t.Fatalf("wrong Sentinel password: %v", err)
	}
}

// errorWindow kills the master of a key under a write loop and measures
// how long writes fail: it must end within 2 s of the Cluster's own
// failover.
func errorWindow(t *testing.T, cl *redistest.Cluster) {
	c := mustOpen(t, redisconn.Options{URL: cl.URL()})
	ctx := t.Context()
	const key = "window"
	m := cl.MasterOf(t, key)

	var firstErr, lastErr atomic.Int64
	var errs atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			err := c.Client.Incr(cctx, key).Err()
			cancel()
			if err != nil {
				now := time.Now().UnixNano()
				firstErr.CompareAndSwap(0, now)
				lastErr.Store(now)
				errs.Add(1)
			}
		}
	}()
	killed := time.Now()
	cl.KillMaster(t, m)
	failedOver := time.Now()
	// Writes must succeed again within 2 s of the failover.
	redistest.WaitFor(t, 10*time.Second, func() bool {
		return lastErr.Load() != 0 && time.Since(time.Unix(0, lastErr.Load())) > 500*time.Millisecond
	}, "writes recover")
	close(stop)
	<-done
	last := time.Unix(0, lastErr.Load())
	t.Logf("killed master: Cluster failed over after %v; clients saw errors for %v after the kill (%d errors), ending %v after the failover",
		failedOver.Sub(killed).Round(time.Millisecond), last.Sub(killed).Round(time.Millisecond), errs.Load(), last.Sub(failedOver).Round(time.Millisecond))
	if d := last.Sub(failedOver); d > 2*time.Second {
		t.Fatalf("errors went on %v after the Cluster failed over; want at most 2 s", d)
	}
}
