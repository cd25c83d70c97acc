package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// abandonAll takes one message of each queue with a lease of d that is
// never acked, and returns each lease's deadline by queue.
func abandonAll(t *testing.T, lc *lease.Client, queues []string, d time.Duration) map[string]time.Time {
	t.Helper()
	deadlines := make(map[string]time.Time, len(queues))
	for _, q := range queues {
		deadlines[q] = expireLease(t, lc, q, d).Deadline()
	}
	return deadlines
}

// waitAllBack waits until every queue has its message back on the ready
// list and none in flight, and returns how long after its lease's
// deadline each was first seen back (an upper bound of the requeue lag,
// give or take the clocks of Redis and the test and one polling round).
func waitAllBack(t *testing.T, lc *lease.Client, deadlines map[string]time.Time) []time.Duration {
	t.Helper()
	lags := make(map[string]time.Duration, len(deadlines))
	redistest.WaitFor(t, waitTimeout, func() bool {
		for q, dl := range deadlines {
			if _, done := lags[q]; done {
				continue
			}
			st, err := lc.Stats(t.Context(), q)
			if err != nil {
				t.Fatal(err)
			}
			if st.Ready == 1 && st.InFlight == 0 {
				lags[q] = time.Since(dl)
			}
		}
		return len(lags) == len(deadlines)
	}, "every abandoned lease back on its ready list")
	out := make([]time.Duration, 0, len(lags))
	for _, l := range lags {
		out = append(out, l)
	}
	slices.Sort(out)
	return out
}

// TestClusterURL: with either Cluster URL form, or a plain URL naming one
// node, ackd serves every master: abandoned leases on queues spread over
// all three come back.
func TestClusterURL(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, nil)
	cc := c.Client(t)
	lc, err := lease.New(cc, nil)
	if err != nil {
		t.Fatal(err)
	}
	masters := c.Masters(t)
	for _, form := range []struct{ name, url string }{
		{"addr form", c.URL()},
		{"one node", "redis://" + masters[1].Addr()},
	} {
		t.Run(form.name, func(t *testing.T) {
			// Four queues on each master.
			perMaster := map[string]int{}
			var queues []string
			for i := 0; len(queues) < 4*len(masters); i++ {
				q := fmt.Sprintf("%s-%d", strings.ReplaceAll(form.name, " ", "-"), i)
				m := c.MasterOf(t, "{"+q+"}").Addr()
				if perMaster[m] < 4 {
					perMaster[m]++
					queues = append(queues, q)
				}
			}
			if len(perMaster) != len(masters) {
				t.Fatalf("queues on %d masters, want %d", len(perMaster), len(masters))
			}
			in := startAckd(t, masters[0], map[string]string{"ACKD_REDIS_URL": form.url, "ACKD_SCAN_INTERVAL": "1h"})
			in.waitReady(t)
			if got := in.log.find("redis connected"); len(got) != 1 || got[0]["mode"] != "cluster" {
				t.Fatalf("redis connected lines: %v, want one with mode cluster", got)
			}
			lags := waitAllBack(t, lc, abandonAll(t, lc, queues, 200*time.Millisecond))
			t.Logf("%s: requeue lag over %d queues on %d masters: min %v, median %v, max %v",
				form.name, len(lags), len(masters), lags[0], lags[len(lags)/2], lags[len(lags)-1])
			for _, q := range queues {
				l, err := lc.Take(t.Context(), q, &lease.TakeOpts{LeaseFor: time.Minute})
				if err != nil {
					t.Fatal(err)
				}
				if l.Attempt != 2 {
					t.Errorf("%s: attempt %d, want 2", q, l.Attempt)
				}
				if err := l.Ack(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestSentinelURL: ackd finds the master through Sentinels that need a
// password of their own, with the data nodes' password from a file, and
// requeues an abandoned lease. Neither password is logged or served.
func TestSentinelURL(t *testing.T) {
	t.Parallel()
	const dataPass, sentinelPass = "data-secret-4e1f", "sentinel-secret-9b2c"
	s := redistest.StartSentinel(t, &redistest.SentinelOptions{Password: dataPass, SentinelPassword: sentinelPass})
	file := filepath.Join(t.TempDir(), "redis-password")
	if err := os.WriteFile(file, []byte(dataPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The URL without the data password: it comes from the file.
	u := "redis://:" + sentinelPass + "@" + s.Addrs()[0] + "?master_name=" + s.MasterName() + "&addr=" + strings.Join(s.Addrs()[1:], "&addr=")
	lc, err := lease.New(s.Client(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	in := startAckd(t, s.Data[0], map[string]string{"ACKD_REDIS_URL": u, "ACKD_REDIS_PASSWORD_FILE": file, "ACKD_SCAN_INTERVAL": "1h"})
	in.waitReady(t)
	if got := in.log.find("redis connected"); len(got) != 1 || got[0]["mode"] != "sentinel" {
		t.Fatalf("redis connected lines: %v, want one with mode sentinel", got)
	}
	id := expireOne(t, lc, "jobs", 100*time.Millisecond)
	waitBack(t, lc, "jobs", 1)
	retake(t, lc, "jobs", id)
	_, body := in.get(t, "/readyz")
	_, metrics := in.get(t, "/metrics")
	in.stop(t)
	for _, sec := range []string{dataPass, sentinelPass} {
		for what, text := range map[string]string{"log": in.log.String(), "/readyz": body, "/metrics": metrics} {
			if strings.Contains(text, sec) {
				t.Errorf("%s shows a password", what)
			}
		}
	}
}

// TestSentinelNoSuchMaster: Sentinels that monitor no master of the name
// keep ackd unready, saying why, and it writes nothing.
func TestSentinelNoSuchMaster(t *testing.T) {
	t.Parallel()
	const sentinelPass = "sentinel-secret-77aa"
	s := redistest.StartSentinel(t, &redistest.SentinelOptions{SentinelPassword: sentinelPass})
	u := "redis://:" + sentinelPass + "@" + s.Addrs()[0] + "?master_name=nosuch&addr=" + strings.Join(s.Addrs()[1:], "&addr=")
	in := startAckd(t, s.Data[0], map[string]string{"ACKD_REDIS_URL": u})
	var r readiness
	redistest.WaitFor(t, waitTimeout, func() bool {
		var code int
		code, r = in.readyz(t)
		return code == http.StatusServiceUnavailable && strings.Contains(r.RedisError, `no master named "nosuch"`)
	}, "/readyz 503 naming the missing master (last %+v)", &r)
	if !strings.Contains(r.RedisError, "ACKD_REDIS_URL") {
		t.Errorf("reason %q does not name ACKD_REDIS_URL", r.RedisError)
	}
	if n, err := s.Client(t).DBSize(t.Context()).Result(); err != nil || n != 0 {
		t.Errorf("master holds %d keys (%v), want none", n, err)
	}
	in.stop(t)
	if strings.Contains(in.log.String(), sentinelPass) {
		t.Errorf("the log shows the Sentinel password")
	}
}

// TestTLS: ackd reaches a TLS server through a private CA, by IP address
// with the certificate's name given apart, and a server that demands a
// client certificate; a CA that did not sign the server's keeps it
// unready.
func TestTLS(t *testing.T) {
	t.Parallel()
	certs := redistest.NewCerts(t)
	for _, tc := range []struct {
		name  string
		mtls  bool
		extra map[string]string
	}{
		{"tls", false, nil},
		{"mtls", true, map[string]string{"ACKD_REDIS_TLS_CERT_FILE": certs.ClientCert, "ACKD_REDIS_TLS_KEY_FILE": certs.ClientKey}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, tlsAddr := redistest.StartTLS(t, certs, tc.mtls)
			env := map[string]string{
				"ACKD_REDIS_URL":             "rediss://" + tlsAddr + "/0",
				"ACKD_REDIS_TLS_CA_FILE":     certs.CAFile,
				"ACKD_REDIS_TLS_SERVER_NAME": "localhost",
				"ACKD_SCAN_INTERVAL":         "1h",
			}
			for k, v := range tc.extra {
				env[k] = v
			}
			in := startAckd(t, srv, env)
			in.waitReady(t)
			lc := newLeaseClient(t, srv) // on the plain port
			id := expireOne(t, lc, "jobs", 100*time.Millisecond)
			waitBack(t, lc, "jobs", 1)
			retake(t, lc, "jobs", id)
		})
	}
	t.Run("wrong CA", func(t *testing.T) {
		t.Parallel()
		srv, tlsAddr := redistest.StartTLS(t, certs, false)
		in := startAckd(t, srv, map[string]string{
			"ACKD_REDIS_URL":             "rediss://" + tlsAddr + "/0",
			"ACKD_REDIS_TLS_CA_FILE":     certs.OtherCAFile,
			"ACKD_REDIS_TLS_SERVER_NAME": "localhost",
		})
		var r readiness
		redistest.WaitFor(t, waitTimeout, func() bool {
			var code int
			code, r = in.readyz(t)
			return code == http.StatusServiceUnavailable && strings.Contains(r.RedisError, "certificate")
		}, "/readyz 503 about the certificate (last %+v)", &r)
		if n, err := srv.Client(t).DBSize(t.Context()).Result(); err != nil || n != 0 {
			t.Errorf("server holds %d keys (%v), want none", n, err)
		}
	})
	t.Run("skip_verify warns", func(t *testing.T) {
		t.Parallel()
		srv, tlsAddr := redistest.StartTLS(t, certs, false)
		in := startAckd(t, srv, map[string]string{"ACKD_REDIS_URL": "rediss://" + tlsAddr + "/0?skip_verify=true"})
		in.waitReady(t)
		if len(in.log.find("TLS certificate verification is off (skip_verify=true in ACKD_REDIS_URL): anyone on the path to Redis can read and change what ackd sends")) != 1 {
			t.Errorf("no warning about skip_verify")
		}
	})
}

// TestWrongPasswordNotShown: a wrong password, in a userinfo without a
// colon (redis://PASS@host, which redis-cli reads as a password and
// go-redis as a user name) or in its own variable, keeps
// ackd unready with a reason that holds no password, nor does the log.
func TestWrongPasswordNotShown(t *testing.T) {
	t.Parallel()
	const right, wrong = "right-secret-31d0", "wrong-secret-c4f7"
	srv := redistest.Start(t, "--requirepass", right)
	for name, env := range map[string]map[string]string{
		"userinfo": {"ACKD_REDIS_URL": "redis://" + wrong + "@" + srv.Addr() + "/0"},
		"variable": {"ACKD_REDIS_URL": "redis://:" + right + "@" + srv.Addr() + "/0", "ACKD_REDIS_PASSWORD": wrong},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			in := startAckd(t, srv, env)
			var body string
			redistest.WaitFor(t, waitTimeout, func() bool {
				var code int
				code, body = in.get(t, "/readyz")
				// WRONGPASS, or NOAUTH where go-redis reads the lone
				// userinfo as a user name and sends no password.
				return code == http.StatusServiceUnavailable && (strings.Contains(body, "WRONGPASS") || strings.Contains(body, "NOAUTH"))
			}, "/readyz 503 refused by Redis (last %s)", body)
			in.stop(t)
			for _, sec := range []string{right, wrong} {
				if strings.Contains(body, sec) || strings.Contains(in.log.String(), sec) {
					t.Errorf("/readyz or the log shows a password:\n%s\n%s", body, in.log.String())
				}
			}
		})
	}
}

// TestClusterUncoveredAtRunTime: while a master and its replica are both
// down, some slots have no master: /readyz says so (503), and once they
// are back ackd is ready and serves that shard again.
func TestClusterUncoveredAtRunTime(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, nil)
	lc, err := lease.New(c.Client(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	master := c.Masters(t)[0]
	replica := c.ReplicaOf(t, master)
	in := startAckd(t, master, map[string]string{"ACKD_REDIS_URL": c.URL(), "ACKD_SCAN_INTERVAL": "1h"})
	in.waitReady(t)

	replica.Kill(t) // first, so that no failover covers the slots
	master.Kill(t)
	var r readiness
	redistest.WaitFor(t, waitTimeout, func() bool {
		var code int
		code, r = in.readyz(t)
		return code == http.StatusServiceUnavailable && strings.Contains(r.RedisError, "does not cover every hash slot")
	}, "/readyz 503 about uncovered slots (last %+v)", &r)

	master.Restart(t)
	replica.Restart(t)
	c.WaitHealthy(t, waitTimeout)
	in.waitReady(t)
	q := ""
	for i := 0; q == ""; i++ {
		if name := fmt.Sprintf("back-%d", i); c.MasterOf(t, "{"+name+"}") == master {
			q = name
		}
	}
	id := expireOne(t, lc, q, 100*time.Millisecond)
	waitBack(t, lc, q, 1)
	retake(t, lc, q, id)
}
