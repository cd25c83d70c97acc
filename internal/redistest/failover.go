package redistest

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Rejoin brings the data node n back as a replica of the current master,
// as an operator does after a crash: it restarts n if it is not running,
// sends it REPLICAOF the master every Sentinel names, and returns once n
// has synced. The Sentinels would demote a restarted old master by
// themselves only when they next look at it (about 20 s); a test that
// needs a replica again (lease.Config.Replicas) gets one in about a
// second. It fails the test after timeout.
func (s *Sentinel) Rejoin(t testing.TB, n *Server, timeout time.Duration) {
	t.Helper()
	if !n.Running() {
		n.Restart(t)
	}
	m := s.Master(t)
	if m == n {
		t.Fatalf("redistest: Rejoin: %s is the master", n.Addr())
	}
	err := s.client(n, s.opts.Password).Do(context.Background(), "REPLICAOF", "127.0.0.1", fmt.Sprint(m.Port())).Err()
	if err != nil {
		t.Fatalf("redistest: REPLICAOF on %s: %v", n.Addr(), err)
	}
	s.WaitReplica(t, n, timeout)
}

// WaitReplica waits until the data node n is a synced replica of the
// master every Sentinel names: after SENTINEL FAILOVER, until the
// Sentinels have demoted the old master and it has resynced.
func (s *Sentinel) WaitReplica(t testing.TB, n *Server, timeout time.Duration) {
	t.Helper()
	pollUntil(t, timeout, n.Addr()+" replicates the master", func() (bool, string) {
		m, why := s.agreedMaster()
		if m == nil {
			return false, why
		}
		return s.linked(n, m)
	})
}
