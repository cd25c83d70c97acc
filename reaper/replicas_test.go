package reaper_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/reaper"
)

// lockedBuffer is a bytes.Buffer safe for a logger and a test at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestNotReplicated: with Config.Replicas above what the server has (a
// master with no replica), every Sweep call returns
// lease.ErrNotReplicated. The change is made nonetheless, so the
// abandoned lease comes back; the Reaper counts the calls, logs the run
// once, sweeps again, and does not take it for an outage.
func TestNotReplicated(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	var logs lockedBuffer
	obs := newObserver()
	rp := start(t, rdb, &reaper.Config{
		Replicas: 1, ReplicaTimeout: 10 * time.Millisecond, RetryDelay: 50 * time.Millisecond,
		Observer: obs, Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	redistest.WaitFor(t, waitLong, rp.Subscribed, "subscribed")

	requeuedOnce(t, rdb, "retake")
	// The queue is swept again after each unreplicated call.
	redistest.WaitFor(t, waitLong, func() bool { return rp.Stats().NotReplicated >= 3 }, "sweeps retried (%d so far)", rp.Stats().NotReplicated)
	if !rp.RedisUp() {
		t.Error("RedisUp() = false: an unreplicated sweep is not an outage")
	}
	out := logs.String()
	if n := strings.Count(out, "sweep not confirmed by enough replicas"); n != 1 {
		t.Errorf("%d log lines about unreplicated sweeps, want 1:\n%s", n, out)
	}
	if strings.Contains(out, "redis unavailable") || strings.Contains(out, "sweep failed") {
		t.Errorf("an unreplicated sweep was logged as a failure:\n%s", out)
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.failures != 0 {
		t.Errorf("%d sweeps reported failed", obs.failures)
	}
}
