package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// TestQueuePausedAndAgeMetrics: /metrics shows which queues are paused and
// how old each one's oldest ready message is, as the sweeps of the start
// scan found them (a scrape sends Redis nothing).
func TestQueuePausedAndAgeMetrics(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := t.Context()
	lc := newLeaseClient(t, srv)
	rdb := srv.Client(t)

	// An envelope pushed (by its id) two minutes ago, on a paused queue.
	u := uuid.Must(uuid.NewV7())
	ms := uint64(time.Now().Add(-2 * time.Minute).UnixMilli())
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	env := fmt.Sprintf("\xffackd1|%s|0|10|0|0|0|old", u)
	if err := rdb.RPush(ctx, lease.KeysFor("aged").Ready, env).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Pause(ctx, "aged"); err != nil {
		t.Fatal(err)
	}
	// A queue with nothing ready, and one whose head is a raw payload.
	if err := lc.Register(ctx, "empty"); err != nil {
		t.Fatal(err)
	}
	if err := rdb.RPush(ctx, lease.KeysFor("raw").Ready, "plain").Err(); err != nil {
		t.Fatal(err)
	}
	if err := lc.Register(ctx, "raw"); err != nil {
		t.Fatal(err)
	}

	// Queues of ACKD_QUEUES stay in the metrics even while empty.
	in := startAckd(t, srv, map[string]string{"ACKD_QUEUES": "aged,empty,raw"})
	in.waitReady(t)
	redistest.WaitFor(t, waitTimeout, func() bool {
		_, body := in.get(t, "/metrics")
		return strings.Contains(body, `ackd_queue_paused{queue="raw"} 0`)
	}, "the queues in /metrics")
	_, body := in.get(t, "/metrics")
	for _, line := range []string{
		`ackd_queue_paused{queue="aged"} 1`, `ackd_queue_paused{queue="empty"} 0`,
		`ackd_queue_oldest_ready_age_seconds{queue="empty"} 0`,
	} {
		if !strings.Contains(body, "\n"+line+"\n") {
			t.Errorf("/metrics lacks %s", line)
		}
	}
	if strings.Contains(body, `ackd_queue_oldest_ready_age_seconds{queue="raw"}`) {
		t.Error("/metrics has an age for a raw payload, whose push time is unknown")
	}
	if age := in.metric(t, "ackd_queue_oldest_ready_age_seconds", "queue=aged"); age < 119 || age > 200 {
		t.Errorf("oldest ready age of aged = %v, want about 120", age)
	}
}
