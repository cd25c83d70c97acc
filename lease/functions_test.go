package lease

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
)

// libraries returns the names of the function libraries on rdb's server.
func libraries(t *testing.T, rdb redis.Cmdable) []string {
	t.Helper()
	libs, err := rdb.FunctionList(t.Context(), redis.FunctionListQuery{}).Result()
	if err != nil {
		t.Fatalf("FUNCTION LIST: %v", err)
	}
	var out []string
	for _, l := range libs {
		out = append(out, l.Name)
	}
	slices.Sort(out)
	return out
}

// scriptCalls are the calls of the commands that run or load scripts
// since the last reset of rdb's server's statistics.
type scriptCalls struct{ fcall, load, evalsha, eval int }

func scriptCallsOf(t *testing.T, rdb *redis.Client) scriptCalls {
	t.Helper()
	c := commandCalls(t, rdb)
	return scriptCalls{c["fcall"], c["function|load"], c["evalsha"], c["eval"]}
}

// roundTrip pushes a message (a delayed push, then the sweep that
// promotes it: two scripts), takes and acks it (two more), and reads the
// queue's stats: every kind of script call fails the test if it fails.
func roundTrip(t *testing.T, c *Client, queue string) {
	t.Helper()
	ctx := t.Context()
	if _, err := c.Push(ctx, queue, []byte("m"), &PushOpts{Delay: time.Millisecond}); err != nil {
		t.Fatalf("delayed push: %v", err)
	}
	l, err := c.Take(ctx, queue, &TakeOpts{Wait: 10 * time.Second})
	if err != nil || l == nil {
		t.Fatalf("take: %v, %v", l, err)
	}
	if err := l.Ack(ctx); err != nil {
		t.Fatalf("ack: %v", err)
	}
	if _, errs := c.StatsMany(ctx, []string{queue}); errs[0] != nil {
		t.Fatalf("stats: %v", errs[0])
	}
}

// TestFunctionsLoadedWhenMissing: a server without the library gets it on
// the first script call, which runs as FCALL; FUNCTION FLUSH between
// calls, also before a pipelined call, costs one more load and no error.
func TestFunctionsLoadedWhenMissing(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	if libs := libraries(t, b.rdb); len(libs) != 0 {
		t.Fatalf("a fresh server has libraries %v", libs)
	}
	roundTrip(t, b.c, "first")
	if libs := libraries(t, b.rdb); !slices.Equal(libs, []string{library.name}) {
		t.Fatalf("libraries after the first calls: %v, want %s", libs, library.name)
	}
	got := scriptCallsOf(t, b.rdb)
	if got.load != 1 || got.evalsha+got.eval != 0 || got.fcall < 4 {
		t.Errorf("first calls: %+v, want one load and FCALL alone", got)
	}

	// Flushed before a plain call, before a pipelined StatsMany, before a
	// blocking take (pipelined with BLMOVE).
	for i, call := range []func() error{
		func() error { _, err := b.c.Push(ctx, "flushed", []byte("x"), &PushOpts{Delay: time.Hour}); return err },
		func() error { _, errs := b.c.StatsMany(ctx, []string{"flushed", "other"}); return errs[0] },
		func() error {
			b.push(t, "flushed", "y", nil)
			l, err := b.c.Take(ctx, "flushed", &TakeOpts{Wait: time.Second})
			if err == nil {
				err = l.Ack(ctx)
			}
			return err
		},
	} {
		if err := flushScripts(ctx, b.rdb); err != nil {
			t.Fatal(err)
		}
		before := scriptCallsOf(t, b.rdb)
		if err := call(); err != nil {
			t.Fatalf("call %d after FUNCTION FLUSH: %v", i, err)
		}
		after := scriptCallsOf(t, b.rdb)
		if after.load != before.load+1 || after.evalsha+after.eval != 0 {
			t.Errorf("call %d after FUNCTION FLUSH: %+v, then %+v; want one more load and no EVALSHA", i, before, after)
		}
	}
	if st := checkInvariants(t, b.rdb, "flushed"); len(st.Delayed) != 1 || len(st.InFlight)+len(st.Ready) != 0 {
		t.Errorf("after the flushed calls: %+v", st)
	}
}

// TestFunctionsPreloadedWithoutLoadRight: a user who may not FUNCTION LOAD
// calls the library another loaded (the daemon, at start), refused
// nothing. When the library goes missing it runs its scripts with
// EVALSHA, logs that once, and calls the library again once it is back.
func TestFunctionsPreloadedWithoutLoadRight(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ac, err := New(admin, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ac.LoadFunctions(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := admin.ConfigResetStat(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	user := srv.SetUser(t, "noload", "pw", "reset", "on", ">pw", "~*", "&*", "+@all", "-function|load")
	log := &logLines{}
	c, err := New(user, &Config{Logger: slog.New(log)})
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "q")
	if got := scriptCallsOf(t, admin); got.fcall < 4 || got.evalsha+got.eval+got.load != 0 {
		t.Errorf("with the library loaded: %+v, want FCALL alone", got)
	}
	if l := srv.ACLLog(t); len(l) != 0 {
		t.Errorf("Redis refused %v", l)
	}

	if err := flushScripts(t.Context(), admin); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		roundTrip(t, c, "q")
	}
	if got := scriptCallsOf(t, admin); got.evalsha == 0 {
		t.Errorf("without the library: %+v, want EVALSHA", got)
	}
	if l := srv.ACLLog(t); len(l) != 1 || !strings.Contains(l[0], "function|load") {
		t.Errorf("ACL LOG %v, want one refused FUNCTION LOAD", l)
	}
	if lines := log.matching("FUNCTION LOAD"); len(lines) != 1 {
		t.Errorf("logged %q, want one line about FUNCTION LOAD", lines)
	}

	// Loaded again: the client calls it once it looks again.
	if err := ac.LoadFunctions(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.rdb.fn.recheck = 0
	c.rdb.fn.missingUntil.Store(0)
	if err := admin.ConfigResetStat(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, "q")
	if got := scriptCallsOf(t, admin); got.fcall < 4 || got.evalsha+got.eval+got.load != 0 {
		t.Errorf("with the library back: %+v, want FCALL alone", got)
	}
}

// TestFunctionsRefused: where FCALL or FUNCTION cannot be used (a user
// without +fcall, a server with either renamed away), every script runs
// with EVALSHA, and the client logs it once.
func TestFunctionsRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		flags []string
		rules []string // a user with these rules, if any
		log   string
	}{
		{"user without +fcall", nil, []string{"reset", "on", ">pw", "~*", "&*", "+@all", "-fcall"}, "refuses FCALL"},
		{"FCALL renamed", []string{"--rename-command", "FCALL", ""}, nil, "refuses FCALL"},
		{"FUNCTION renamed", []string{"--rename-command", "FUNCTION", ""}, nil, "FUNCTION LOAD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t, tc.flags...)
			admin := srv.Client(t)
			rdb := admin
			if tc.rules != nil {
				rdb = srv.SetUser(t, "nofcall", "pw", tc.rules...)
			}
			log := &logLines{}
			c, err := New(rdb, &Config{Logger: slog.New(log)})
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				roundTrip(t, c, "q")
			}
			if got := scriptCallsOf(t, admin); got.evalsha < 3*4 || got.load != 0 {
				t.Errorf("calls %+v, want EVALSHA", got)
			}
			if lines := log.matching(tc.log); len(lines) != 1 || len(log.matching("EVALSHA")) != 1 {
				t.Errorf("logged %q, want one line that says %q", log.matching(), tc.log)
			}
			if st := checkInvariants(t, admin, "q"); len(st.InFlight)+len(st.Ready)+len(st.Delayed)+len(st.Dead) != 0 {
				t.Errorf("after the calls: %+v", st)
			}
		})
	}
}

// TestFunctionsTwoVersions: the library of another ackd version (another
// name, other function names) stays as it is while this version loads its
// own beside it; each version calls its own functions.
func TestFunctionsTwoVersions(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ctx := t.Context()
	const other = "ackd_000000000000"
	otherCode := strings.Replace(libraryCode(other), "-- lib.lua:", "-- another version of lib.lua:", 1)
	if err := b.rdb.FunctionLoad(ctx, otherCode).Err(); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, b.c, "q")
	if libs := libraries(t, b.rdb); !slices.Equal(libs, slices.Sorted(slices.Values([]string{other, library.name}))) {
		t.Fatalf("libraries %v, want %s and %s", libs, other, library.name)
	}
	libs, err := b.rdb.FunctionList(ctx, redis.FunctionListQuery{LibraryNamePattern: other, WithCode: true}).Result()
	if err != nil || len(libs) != 1 || libs[0].Code != otherCode {
		t.Errorf("the other version's library changed: %v", err)
	}
	if _, err := b.rdb.FCall(ctx, other+"_stats", statsKeys("q"), headBytes).Slice(); err != nil {
		t.Errorf("the other version's stats: %v", err)
	}
	// Loading again (another client of this version, the daemon) is no
	// error and changes nothing.
	if err := b.c.LoadFunctions(ctx); err != nil {
		t.Errorf("LoadFunctions with the library there: %v", err)
	}
}

// TestFunctionsCluster: on a Cluster each master gets the library when a
// call first needs it there, and a master that loses it (FUNCTION FLUSH)
// gets it again, for plain and pipelined calls; LoadFunctions loads it on
// every master.
func TestFunctionsCluster(t *testing.T) {
	t.Parallel()
	cl := redistest.StartCluster(t, nil)
	c, _ := clusterClient(t, cl, nil)
	ctx := t.Context()
	queues := queuesOnEveryMaster(t, cl, 1)
	has := func(q string) bool {
		return slices.Contains(libraries(t, nodeOf(t, cl, q)), library.name)
	}
	for i, q := range queues {
		if has(q) {
			t.Fatalf("the master of %s has the library before any call", q)
		}
		roundTrip(t, c, q)
		for j, o := range queues {
			if has(o) != (j <= i) {
				t.Errorf("after calls on %s: the master of %s has the library: %v", q, o, has(o))
			}
		}
	}
	for _, q := range queues {
		if err := nodeOf(t, cl, q).FunctionFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if _, errs := c.StatsMany(ctx, queues); slices.ContainsFunc(errs, func(err error) bool { return err != nil }) {
		t.Errorf("StatsMany after FUNCTION FLUSH on every master: %v", errs)
	}
	for _, q := range queues {
		if !has(q) {
			t.Errorf("the master of %s has no library after StatsMany", q)
		}
		if err := nodeOf(t, cl, q).FunctionFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	roundTrip(t, c, queues[0])
	if err := c.LoadFunctions(ctx); err != nil {
		t.Fatal(err)
	}
	for _, q := range queues {
		if !has(q) {
			t.Errorf("the master of %s has no library after LoadFunctions", q)
		}
		if calls := commandCalls(t, nodeOf(t, cl, q)); calls["evalsha"]+calls["eval"] != 0 {
			t.Errorf("the master of %s ran EVALSHA or EVAL: %v", q, calls)
		}
	}
}

// TestFunctionsOutOfMemory: out of memory, Redis refuses a function that
// writes before it runs (nothing changes), and runs the read-only ones.
func TestFunctionsOutOfMemory(t *testing.T) {
	t.Parallel()
	b := setup(t, nil, "--maxmemory-policy", "noeviction")
	ctx := t.Context()
	b.push(t, "oom", "a", nil)
	l := b.take(t, "oom", nil)
	if err := b.rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	err := l.Ack(ctx)
	if err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Errorf("ack out of memory: %v, want OOM", err)
	}
	s, serr := b.c.Stats(ctx, "oom")
	if err := b.rdb.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatal(err)
	}
	if serr != nil || s.InFlight != 1 {
		t.Errorf("stats out of memory: %+v, %v; want 1 in flight", s, serr)
	}
	if st := checkInvariants(t, b.rdb, "oom"); len(st.InFlight) != 1 {
		t.Errorf("after the refused ack: %+v", st)
	}
	if err := l.Ack(ctx); err != nil {
		t.Errorf("ack with memory: %v", err)
	}
}
