//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// places is where each message id of a queue is, read in one MULTI.
type places struct {
	ready    []string // ids of envelopes on the claim and ready lists
	dead     []string // members of the dead ZSET
	deadMsgs []string // fields of the deadmsgs HASH
	inFlight int
	delayed  int
}

// readPlaces reads a queue's lists and sets atomically, so that a message
// moving while it reads cannot be seen twice or not at all.
func readPlaces(t *testing.T, rdb *redis.Client, queue string) places {
	t.Helper()
	pl, err := tryReadPlaces(t, rdb, queue)
	if err != nil {
		t.Fatal(err)
	}
	return pl
}

func tryReadPlaces(t *testing.T, rdb *redis.Client, queue string) (places, error) {
	ctx := t.Context()
	k := lease.KeysFor(queue)
	var claim, ready, dead, deadMsgs *redis.StringSliceCmd
	var held, leases, delayed *redis.IntCmd
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		claim = p.LRange(ctx, k.Claim, 0, -1)
		ready = p.LRange(ctx, k.Ready, 0, -1)
		dead = p.ZRange(ctx, k.Dead, 0, -1)
		deadMsgs = p.HKeys(ctx, k.DeadMsgs)
		held = p.HLen(ctx, k.Held)
		leases = p.HLen(ctx, k.Leases) // format 1
		delayed = p.ZCard(ctx, k.Delayed)
		return nil
	})
	var pl places
	if err != nil {
		return pl, fmt.Errorf("MULTI: %w", err)
	}
	for _, el := range append(claim.Val(), ready.Val()...) {
		rest, ok := strings.CutPrefix(el, "\xffackd1|")
		id, _, ok2 := strings.Cut(rest, "|")
		if !ok || !ok2 {
			return pl, fmt.Errorf("not an envelope on the ready list: %q", el)
		}
		pl.ready = append(pl.ready, id)
	}
	pl.dead, pl.deadMsgs = dead.Val(), deadMsgs.Val()
	pl.inFlight, pl.delayed = int(held.Val()+leases.Val()), int(delayed.Val())
	return pl, nil
}

// check fails unless every id of all is in exactly one place, ready or
// dead, and the dead ZSET and HASH agree. It returns how many are ready.
func (pl places) check(t *testing.T, all []string) int {
	t.Helper()
	where := map[string]string{}
	put := func(id, p string) {
		if prev, ok := where[id]; ok {
			t.Errorf("message %s is both %s and %s", id, prev, p)
		}
		where[id] = p
	}
	for _, id := range pl.ready {
		put(id, "ready")
	}
	for _, id := range pl.dead {
		put(id, "dead")
	}
	inHash := map[string]bool{}
	for _, id := range pl.deadMsgs {
		inHash[id] = true
	}
	if len(inHash) != len(pl.dead) {
		t.Errorf("dead ZSET has %d ids, deadmsgs HASH %d", len(pl.dead), len(inHash))
	}
	for _, id := range pl.dead {
		if !inHash[id] {
			t.Errorf("dead letter %s has no record", id)
		}
	}
	for _, id := range all {
		if _, ok := where[id]; !ok {
			t.Errorf("message %s is nowhere", id)
		}
	}
	if len(where) != len(all) || pl.inFlight != 0 || pl.delayed != 0 {
		t.Errorf("%d ids found for %d messages, %d in flight, %d delayed", len(where), len(all), pl.inFlight, pl.delayed)
	}
	return len(pl.ready)
}

// TestCLIReplayInterrupted: Ctrl-C in the middle of ackd dead replay --all
// stops it after the batch under way (one message per batch here, so
// that it runs long enough to be caught). At every moment, read atomically
// while it runs and after it stopped, each message is either back on the
// queue or still dead, never both, and the count it reports is exact.
func TestCLIReplayInterrupted(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := t.Context()
	lc, err := lease.New(e.rdb, &lease.Config{MaxDeliveries: 1})
	if err != nil {
		t.Fatal(err)
	}
	const n = 10000
	var all []string
	for i := 0; i < n; i += lease.MaxBatch {
		ps := make([][]byte, lease.MaxBatch)
		for j := range ps {
			ps[j] = []byte(fmt.Sprintf("m-%05d", i+j))
		}
		ids, err := lc.PushBatch(ctx, e.queue, ps, nil)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, ids...)
		ls, err := lc.TakeBatch(ctx, e.queue, lease.MaxBatch, &lease.TakeOpts{LeaseFor: time.Millisecond})
		if err != nil || len(ls) != lease.MaxBatch {
			t.Fatalf("TakeBatch = %d, %v", len(ls), err)
		}
		deadline := ls[len(ls)-1].Deadline()
		redistest.WaitFor(t, 5*time.Second, func() bool {
			now, err := e.rdb.Time(ctx).Result()
			// Sweep counts whole milliseconds: a lease is due once Redis's
			// millisecond is past its deadline's.
			return err == nil && now.UnixMilli() > deadline.UnixMilli()
		}, "the leases to be due")
		if r, err := lc.Sweep(ctx, e.queue, &lease.SweepOpts{Limit: lease.MaxBatch}); err != nil || r.DeadLettered != lease.MaxBatch {
			t.Fatalf("Sweep = %+v, %v", r, err)
		}
	}
	if got := readPlaces(t, e.rdb, e.queue).check(t, all); got != 0 {
		t.Fatalf("%d ready before the replay", got)
	}

	p, err := launch(t, "ackd dead replay", bins.ackd, []string{"dead", "replay", e.queue, "--all", "--batch", "1"},
		[]string{"ACKD_REDIS_URL=" + e.srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	// Check atomic snapshots over and over while it runs.
	var snapshots atomic.Int64
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		for !p.exited() {
			pl, err := tryReadPlaces(t, e.rdb, e.queue)
			if err != nil {
				t.Error(err)
				return
			}
			pl.check(t, all)
			snapshots.Add(1)
		}
	}()
	// Once the first batch is reported, let three snapshots see messages
	// moving, or half of them replayed (snapshots, race-built, may be far
	// slower than the replay on a loaded host), then hold the replay
	// with CLIENT PAUSE WRITE so that Ctrl-C surely comes before its end.
	// The batch under way finishes when writes resume.
	redistest.WaitFor(t, 30*time.Second, func() bool {
		return strings.Contains(p.stderr.String(), "replaying: ") || p.exited()
	}, "the replay to start")
	started := snapshots.Load()
	ready := lease.KeysFor(e.queue).Ready
	redistest.WaitFor(t, 30*time.Second, func() bool {
		return snapshots.Load() >= started+3 || e.rdb.LLen(ctx, ready).Val() >= n/2 || p.exited()
	}, "three snapshots while it runs")
	// Held only for the moment it takes to send Ctrl-C: the CLI's call
	// under way waits meanwhile, within its read timeout.
	if err := e.rdb.Do(ctx, "CLIENT", "PAUSE", 60000, "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	err = p.cmd.Process.Signal(syscall.SIGINT) // if it has exited, the checks below say so
	if uerr := e.rdb.Do(ctx, "CLIENT", "UNPAUSE").Err(); uerr != nil {
		t.Fatal(uerr)
	}
	if err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the replay did not stop within 30 s of Ctrl-C")
	}
	<-checked
	if t.Failed() {
		t.FailNow()
	}
	// Snapshots taken while it was running found nothing wrong; now the
	// final state.
	replayed := readPlaces(t, e.rdb, e.queue).check(t, all)
	code := p.state.ExitCode()
	stdout, stderr := p.stdout.String(), p.stderr.String()
	t.Logf("%d snapshots while running (%d after the first batch); interrupted after %d of %d; stderr %q", snapshots.Load(), snapshots.Load()-started, replayed, n, stderr)
	m := regexp.MustCompile(`^replayed (\d+) dead letters of e2e\n$`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("stdout %q", stdout)
	}
	reported, _ := strconv.Atoi(m[1])
	if reported != replayed {
		t.Errorf("reported %d replayed, %d are on the queue", reported, replayed)
	}
	if replayed == n {
		t.Fatalf("the replay finished before Ctrl-C reached it (exit %d); nothing was interrupted", code)
	}
	if code != 1 || !strings.Contains(stderr, fmt.Sprintf("ackd: interrupted after %d replayed; the others are still dead letters", replayed)) {
		t.Errorf("exit %d, stderr %q", code, stderr)
	}
	// The rest can still be replayed, exactly.
	if got, err := lc.ReplayAll(ctx, e.queue, nil); err != nil || got != n-replayed {
		t.Fatalf("ReplayAll of the rest = %d, %v; want %d", got, err, n-replayed)
	}
	if got := readPlaces(t, e.rdb, e.queue).check(t, all); got != n {
		t.Fatalf("%d replayed at the end, want %d", got, n)
	}
}
