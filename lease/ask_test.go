package lease

import (
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// TestClusterAskFollowedWithReplicas holds a queue's slot mid-migration
// with every key already on the target. With Config.Replicas set, each
// change and its WAIT go to the slot's master in one pipeline, which
// answers ASK; lease must follow it (ASKING on the target) within a retry
// window much shorter than the migration, as go-redis does for a single
// command, instead of waiting for the slot to change hands.
func TestClusterAskFollowedWithReplicas(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, nil)
	// The migration is held until the calls below are done: a call that
	// waited for it instead of following ASK would fail after the retry
	// window, however long. 2 s, and 2 s for WAIT, survive a loaded host.
	c, _ := clusterClient(t, cl, &Config{Replicas: 1, ReplicaTimeout: 2 * time.Second, RetryWindow: 2 * time.Second})
	ctx := t.Context()
	const q = "asked"
	for _, p := range []string{"0", "1", "2"} {
		if _, err := c.Push(ctx, q, []byte(p), nil); err != nil {
			t.Fatal(err)
		}
	}
	// One ack first: it creates the queue's counts hash, which every ack
	// declares. A command on several keys of a migrating slot, some of
	// them missing, gets TRYAGAIN on either node, ASK or not.
	first, err := c.Take(ctx, q, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	held, err := c.Take(ctx, q, &TakeOpts{LeaseFor: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	slot := cl.Slot(t, KeysFor(q).Ready)
	from := cl.SlotMaster(t, slot)
	to := cl.OtherMaster(t, from)
	mig := cl.BeginMigration(t, slot, to)
	if n := mig.MoveKeys(t, 0); n == 0 {
		t.Fatal("no key moved")
	}
	// Every key of the queue is on the target; the source answers ASK.
	if _, err := c.Push(ctx, q, []byte("3"), nil); err != nil {
		t.Fatalf("push while the slot's keys are on the importing node: %v", err)
	}
	if err := held.Ack(ctx); err != nil {
		t.Fatalf("ack while the slot's keys are on the importing node: %v", err)
	}
	mig.Finish(t)
	st := checkInvariants(t, to.Client(t), q)
	if len(st.Ready) != 2 || len(st.InFlight) != 0 {
		t.Fatalf("after the migration: ready %v, in flight %v; want two ready", st.Ready, st.InFlight)
	}
}
