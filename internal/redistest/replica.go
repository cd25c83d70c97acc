package redistest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// StartReplicated starts a master and one replica of it, and returns once
// the replica has synced and acknowledged a write (WAIT 1): a loaded
// machine may take a while the first time, and a test of WAIT's timeout
// must not measure that.
func StartReplicated(t testing.TB) (master, replica *Server) {
	t.Helper()
	master = Start(t, "--repl-diskless-sync-delay", "0")
	replica = Start(t, "--replicaof", "127.0.0.1", fmt.Sprint(master.Port()))
	ctx := context.Background()
	rc := replica.Client(t)
	WaitFor(t, 10*time.Second, func() bool {
		info := rc.Info(ctx, "replication").Val()
		return strings.Contains(info, "master_link_status:up") && strings.Contains(info, "master_sync_in_progress:0")
	}, "the replica syncs")
	mc := master.Client(t)
	if err := mc.Set(ctx, "redistest:probe", 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := mc.Wait(ctx, 1, 10*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("redistest: WAIT 1 for the probe = %d, %v", n, err)
	}
	return master, replica
}
