package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// TestHostileKeyIsNotOutage: a queue key of the wrong type (written by
// someone else) makes that queue's sweeps fail with WRONGTYPE, but Redis
// answered: ackd_redis_up stays 1, no outage is logged, the failure is
// logged for that queue, and the other queues are still swept.
func TestHostileKeyIsNotOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	if err := rdb.Set(ctx, lease.KeysFor("hostile").Deadlines, "not a zset", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.SAdd(ctx, lease.RegistryKey, "hostile").Err(); err != nil {
		t.Fatal(err)
	}
	// a healthy queue with a lease that runs out while ackd runs
	c, err := lease.New(rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Push(ctx, "healthy", []byte("m1"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Take(ctx, "healthy", &lease.TakeOpts{LeaseFor: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	in := startAckd(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "50ms"})
	redistest.WaitFor(t, waitTimeout, func() bool { return in.metric(t, "ackd_sweep_errors_total") >= 2 }, "the hostile queue's sweeps failed")
	redistest.WaitFor(t, waitTimeout, func() bool {
		s, err := c.Stats(ctx, "healthy")
		return err == nil && s.Ready == 1 && s.InFlight == 0
	}, "the healthy queue's lease requeued")
	failed := in.log.find("sweep failed")
	if len(failed) == 0 || failed[0]["queue"] != "hostile" || !strings.Contains(fmt.Sprint(failed[0]["error"]), "WRONGTYPE") {
		t.Errorf("sweep failures logged as %v, want queue hostile and the WRONGTYPE error", failed)
	}
	for _, l := range failed {
		if l["queue"] != "hostile" {
			t.Errorf("a sweep of %v failed: %v", l["queue"], l)
		}
	}
	if up := in.metric(t, "ackd_redis_up"); up != 1 {
		t.Errorf("ackd_redis_up = %v after a WRONGTYPE reply, want 1", up)
	}
	if n := len(in.log.find("redis unavailable, retrying")); n != 0 {
		t.Errorf("a WRONGTYPE reply logged as an outage %d times", n)
	}
	if code, r := in.readyz(t); code != 200 || !r.Redis {
		t.Errorf("/readyz = %d %+v", code, r)
	}
}

// TestWrongPassword: a refused login is an outage (ackd_redis_up 0),
// logged once as such with the user's name and never the password.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	const wrong = "wr0ng-Pa55word"
	srv := redistest.Start(t)
	srv.SetUser(t, "reaper", "right-one", "on", ">right-one", "~*", "&*", "+@all")
	in := startAckd(t, srv, map[string]string{"ACKD_REDIS_URL": "redis://reaper:" + wrong + "@" + srv.Addr() + "/0", "ACKD_SCAN_INTERVAL": "50ms"})
	redistest.WaitFor(t, waitTimeout, func() bool { return len(in.log.find("redis refused ackd's credentials, retrying")) > 0 }, "the refused login logged")
	if up := in.metric(t, "ackd_redis_up"); up != 0 {
		t.Errorf("ackd_redis_up = %v with a wrong password, want 0", up)
	}
	lines := in.log.find("redis refused ackd's credentials, retrying")
	if lines[0]["user"] != "reaper" || lines[0]["level"] != "ERROR" {
		t.Errorf("log line %v, want level ERROR and user reaper", lines[0])
	}
	// A few more refused attempts, still one line.
	n := in.metric(t, "ackd_redis_connect_errors_total")
	redistest.WaitFor(t, waitTimeout, func() bool {
		return in.metric(t, "ackd_redis_connect_errors_total") > n+1
	}, "more refused attempts")
	in.stop(t)
	if got := len(in.log.find("redis refused ackd's credentials, retrying")); got != 1 {
		t.Errorf("refused login logged %d times, want once", got)
	}
	if strings.Contains(in.log.String(), wrong) {
		t.Error("the password appears in the log")
	}
}
