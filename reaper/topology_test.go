package reaper_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/reaper"
)

// TestEventsAfterClusterFailover: a replica lost the
// notify-keyspace-events the Reaper set on it (as a restart without
// CONFIG REWRITE does). When CLUSTER FAILOVER promotes it, the Reaper
// notices the new master and sets the flags there at once (on the
// listener's TopologyFunc, and again after the catch-up scan its new
// subscription starts), not at the next periodic scan an hour later.
func TestEventsAfterClusterFailover(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a Cluster failover takes seconds")
	}
	c := redistest.StartCluster(t, nil)
	rp := start(t, c.Client(t), &reaper.Config{ConfigureEvents: true, ScanInterval: time.Hour})
	redistest.WaitFor(t, waitLong, func() bool {
		ev := rp.Events()
		return rp.Subscribed() && ev.Enabled && ev.ReplicasEnabled && ev.Replicas == 3
	}, "events on 3 masters and 3 replicas (%+v)", rp.Events())

	master := c.Masters(t)[0]
	replica := c.ReplicaOf(t, master)
	if err := replica.Client(t).ConfigSet(t.Context(), "notify-keyspace-events", "").Err(); err != nil {
		t.Fatal(err)
	}
	flags := func() string {
		return replica.Client(t).ConfigGet(t.Context(), "notify-keyspace-events").Val()["notify-keyspace-events"]
	}
	c.Failover(t, replica)
	// The new master's subscription, and the scan it starts, may set the
	// flags before the listener counts the switch: wait for both.
	var last string
	redistest.WaitFor(t, waitLong, func() bool {
		f, switches := flags(), rp.Stats().Listener.Switches
		last = fmt.Sprintf("flags %q, Stats().Listener.Switches %d", f, switches)
		return strings.Contains(f, "E") && strings.Contains(f, "x") && switches >= 1
	}, "events set on the promoted node and the switch counted (last: %s)", &last)
}
