//go:build e2e

package e2e

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/acldoc"
	"github.com/ackd/ackd/lease"
)

// Scenario: least privilege. The producer, the consumers and the daemon
// each log in as the Redis user docs/SECURITY.md defines for their role,
// and the daemon runs with ACKD_CONFIGURE_EVENTS=false, as the document
// says. Leases run out and are requeued by the daemon; every message is
// handled; Redis refuses nothing, not even CONFIG: with
// ACKD_CONFIGURE_EVENTS=false the daemon never sends it (the document
// leaves it out on purpose) and learns of events from what arrives.
func TestLeastPrivilege(t *testing.T) {
	t.Parallel()
	e := setup(t)
	users, err := acldoc.Read("../docs/SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	userURL := func(name string, extra ...string) string {
		u := users[name]
		e.srv.SetUser(t, u.Name, u.Password, append(u.Rules, extra...)...)
		return (&url.URL{Scheme: "redis", User: url.UserPassword(u.Name, u.Password), Host: e.srv.Addr(), Path: "/0"}).String()
	}
	producer := userURL("ackd-producer")
	// The test consumer also journals what it handled (keys e2e:*) and
	// pings Redis when it starts.
	consumer := userURL("ackd-consumer", "~"+"e2e:*", "+ping")
	daemon := userURL("ackd-daemon")
	_ = e.srv.ACLLog(t) // start from an empty log

	d := startAckd(t, e.srv, "ACKD_REDIS_URL="+daemon, "ACKD_CONFIGURE_EVENTS=false")
	f := &fleet{t: t, url: consumer, queue: e.queue, flags: []string{"-lease", "150ms", "-workers", "4", "-work", "2ms", "-abandon-every", "4"}}
	for range 2 {
		if _, err := f.add(); err != nil {
			t.Fatal(err)
		}
	}

	opt, err := redis.ParseURL(producer)
	if err != nil {
		t.Fatal(err)
	}
	prdb := redis.NewClient(opt)
	t.Cleanup(func() { _ = prdb.Close() })
	plc, err := lease.New(prdb, &lease.Config{MaxDeliveries: lease.Unlimited})
	if err != nil {
		t.Fatal(err)
	}
	var payloads []string
	for _, batch := range []struct {
		prefix string
		n      int
		opts   *lease.PushOpts
	}{
		{"now", 400, &lease.PushOpts{MaxDeliveries: lease.Unlimited}},
		{"later", 50, &lease.PushOpts{MaxDeliveries: lease.Unlimited, Delay: 100 * time.Millisecond}},
	} {
		msgs := make([][]byte, batch.n)
		for i := range msgs {
			p := fmt.Sprintf("%s-%05d", batch.prefix, i)
			payloads = append(payloads, p)
			msgs[i] = []byte(p)
		}
		if _, err := plc.PushBatch(t.Context(), e.queue, msgs, batch.opts); err != nil {
			t.Fatalf("push as ackd-producer: %v", err)
		}
	}

	e.waitDrained(drainTimeout)
	f.stop(t)
	requeued, _ := d.metric(t, "ackd_requeues_total")
	d.stop(t)
	s := checkInvariants(t, e, expect{Payloads: payloads, Crashed: f.crashed()})
	if s.Expiries == 0 || requeued == 0 {
		t.Errorf("%d leases ran out, the daemon requeued %v: the scenario did not exercise the daemon", s.Expiries, requeued)
	}
	for _, entry := range e.srv.ACLLog(t) {
		t.Errorf("Redis refused a role what it needed: %s", entry)
	}
}
