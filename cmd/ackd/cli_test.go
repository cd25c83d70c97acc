package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

var update = flag.Bool("update", false, "rewrite the golden files of the CLI tests")

// cliBundle is one test's private Redis server, a lease client over it,
// and a way to run operator commands against it.
type cliBundle struct {
	srv *redistest.Server
	rdb *redis.Client
	c   *lease.Client
}

func setupCLI(t *testing.T) *cliBundle {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	c, err := lease.New(rdb, &lease.Config{MaxDeliveries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return &cliBundle{srv: srv, rdb: rdb, c: c}
}

type cliResult struct {
	code           int
	stdout, stderr string
}

// run runs one command like main does, with stdin and terminal flags.
func (b *cliBundle) run(t *testing.T, stdin string, tty bool, args ...string) cliResult {
	t.Helper()
	return b.runCtx(t.Context(), t, stdin, tty, args...)
}

func (b *cliBundle) runCtx(ctx context.Context, t *testing.T, stdin string, tty bool, args ...string) cliResult {
	t.Helper()
	var out, errb bytes.Buffer
	code := runCLI(ctx, args, &cliEnv{
		stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb,
		environ:  map[string]string{"ACKD_REDIS_URL": b.srv.URL()},
		stdinTTY: tty, stderrTTY: tty, progressEvery: time.Nanosecond,
	})
	return cliResult{code: code, stdout: out.String(), stderr: errb.String()}
}

// ok runs a command that must succeed and returns its stdout.
func (b *cliBundle) ok(t *testing.T, args ...string) string {
	t.Helper()
	r := b.run(t, "", false, args...)
	if r.code != 0 {
		t.Fatalf("ackd %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// redisMS waits until Redis's clock has moved past its current ms, so
// that what happens next gets a later score than what happened before.
func (b *cliBundle) nextMS(t *testing.T) {
	t.Helper()
	now, err := b.rdb.Time(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	redistest.WaitFor(t, 5*time.Second, func() bool {
		n, err := b.rdb.Time(t.Context()).Result()
		return err == nil && n.UnixMilli() > now.UnixMilli()
	}, "redis clock to move")
}

// makeDead dead-letters n messages of queue with reason "expired": their
// one allowed lease ran out. Payloads are payload(i).
func (b *cliBundle) makeDead(t *testing.T, queue string, n int, payload func(i int) string) []string {
	t.Helper()
	ctx := t.Context()
	var ids []string
	for i := 0; i < n; i += lease.MaxBatch {
		m := min(lease.MaxBatch, n-i)
		ps := make([][]byte, m)
		for j := range ps {
			ps[j] = []byte(payload(i + j))
		}
		got, err := b.c.PushBatch(ctx, queue, ps, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
		ls, err := b.c.TakeBatch(ctx, queue, m, &lease.TakeOpts{LeaseFor: time.Millisecond})
		if err != nil || len(ls) != m {
			t.Fatalf("TakeBatch = %d, %v", len(ls), err)
		}
		b.nextMS(t)
		b.nextMS(t)
		if r, err := b.c.Sweep(ctx, queue, &lease.SweepOpts{Limit: lease.MaxBatch}); err != nil || r.DeadLettered != m {
			t.Fatalf("Sweep = %+v, %v; want %d dead-lettered", r, err, m)
		}
	}
	return ids
}

// failOne pushes payload and nacks its only delivery: a dead letter with
// reason "failed".
func (b *cliBundle) failOne(t *testing.T, queue, payload string) string {
	t.Helper()
	ctx := t.Context()
	id, err := b.c.Push(ctx, queue, []byte(payload), nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := b.c.Take(ctx, queue, nil)
	if err != nil || l.ID != id {
		t.Fatalf("Take = %+v, %v", l, err)
	}
	if err := l.Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	return id
}

// snapshotDB returns every key with its DUMP, so that two snapshots are
// equal only if nothing was written.
func snapshotDB(t *testing.T, rdb *redis.Client) map[string]string {
	t.Helper()
	ctx := t.Context()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		d, err := rdb.Dump(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		out[k] = d
	}
	return out
}

// seedGolden builds a queue with messages in every state, one at a time
// so that every order is fixed, and a paused empty queue.
func seedGolden(t *testing.T, b *cliBundle) {
	t.Helper()
	ctx := t.Context()
	const q = "orders"
	b.makeDead(t, q, 1, func(int) string { return "order 1: card declined" })
	b.nextMS(t)
	b.failOne(t, q, "order 2:\tbad address\n")
	b.nextMS(t)
	b.makeDead(t, q, 1, func(int) string { return "\x00\x01\x02\x03 binary order" })
	for _, p := range []string{`{"order": 4, "items": ["book", "lamp"], "note": "leave at the door, please"}`, "order 5 \x1b[31mred\x1b[0m", "ünïcödé order 6"} {
		if _, err := b.c.Push(ctx, q, []byte(p), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.rdb.RPush(ctx, lease.KeysFor(q).Ready, "raw order 7").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Push(ctx, q, []byte("order 8, later"), &lease.PushOpts{Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Push(ctx, q, bytes.Repeat([]byte("x"), 3000), nil); err != nil {
		t.Fatal(err)
	}
	// Take the first ready one (order 4) for ten and a half minutes.
	if _, err := b.c.Take(ctx, q, &lease.TakeOpts{LeaseFor: 10*time.Minute + 30*time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := b.c.Register(ctx, "emails"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.c.Pause(ctx, "emails"); err != nil {
		t.Fatal(err)
	}
}

var (
	uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	// Ages and relative times: the digits move with the clock, the width
	// does not (the seeded times are chosen so).
	ageRE = regexp.MustCompile(`\b(\d+[dhm])?\d+[dhms]\b`)
)

// scrub replaces what changes from run to run by same-width placeholders,
// so that the tables' alignment is still compared.
func scrub(s string) string {
	s = uuidRE.ReplaceAllString(s, "xxxxxxxx-xxxx-7xxx-xxxx-xxxxxxxxxxxx")
	return ageRE.ReplaceAllStringFunc(s, func(m string) string {
		return regexp.MustCompile(`\d`).ReplaceAllString(m, "9")
	})
}

// TestCLIGolden runs the read commands against a seeded server and
// compares their tables with testdata/cli/*.golden (go test -update
// rewrites them).
func TestCLIGolden(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	seedGolden(t, b)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"queues", []string{"queues"}},
		{"stats", []string{"stats", "orders", "emails"}},
		{"peek", []string{"peek", "orders"}},
		{"peek_inflight", []string{"peek", "--state", "inflight", "orders"}},
		{"peek_delayed", []string{"peek", "orders", "--state", "delayed", "--preview", "0"}},
		{"peek_page", []string{"peek", "orders", "--limit", "2", "--offset", "1", "--preview", "8"}},
		{"dead_list", []string{"dead", "list", "orders"}},
		{"dead_list_reason", []string{"dead", "list", "orders", "--reason", "failed", "--preview", "30"}},
		{"dead_list_preview", []string{"dead", "list", "orders", "--preview", "10"}},
		{"peek_empty", []string{"peek", "emails"}},
	} {
		got := scrub(b.ok(t, tc.args...))
		path := filepath.Join("testdata", "cli", tc.name+".golden")
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (go test ./cmd/ackd -run TestCLIGolden -update writes it)", err)
		}
		if got != string(want) {
			t.Errorf("ackd %s:\n--- got\n%s--- want\n%s", strings.Join(tc.args, " "), got, want)
		}
	}
}

// TestCLIJSON parses every command's --json back and checks it against
// what the lease API reads.
func TestCLIJSON(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	seedGolden(t, b)
	decode := func(args ...string) map[string]any {
		t.Helper()
		var v map[string]any
		out := b.ok(t, append(args, "--json")...)
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("ackd %v --json: %v\n%s", args, err, out)
		}
		return v
	}

	var qs struct {
		Queues []queueJSON `json:"queues"`
	}
	if err := json.Unmarshal([]byte(b.ok(t, "queues", "--json")), &qs); err != nil {
		t.Fatal(err)
	}
	if len(qs.Queues) != 2 || qs.Queues[0].Queue != "emails" || !qs.Queues[0].Paused || qs.Queues[0].OldestReadyAgeSeconds != nil {
		t.Fatalf("queues --json = %+v", qs)
	}
	o := qs.Queues[1]
	if o.Queue != "orders" || o.Ready != 4 || o.InFlight != 1 || o.Delayed != 1 || o.Dead != 3 || o.Paused || o.OldestReadyAgeSeconds == nil || *o.OldestReadyAgeSeconds < 0 || *o.OldestReadyAgeSeconds > 60 {
		t.Fatalf("orders in queues --json = %+v", o)
	}

	var st struct {
		Queues []statsJSON `json:"queues"`
	}
	if err := json.Unmarshal([]byte(b.ok(t, "stats", "orders", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	s := st.Queues[0]
	if s.DeadByReason["expired"] != 2 || s.DeadByReason["failed"] != 1 || s.EarliestDeadline == nil || s.NextDue == nil || s.PausedAt != nil ||
		s.EarliestDeadline.Sub(s.Now) < 10*time.Minute || s.NextDue.Sub(s.Now) < 50*time.Minute {
		t.Fatalf("stats --json = %+v", s)
	}

	v := decode("peek", "orders", "--preview", "100")
	msgs := v["messages"].([]any)
	if len(msgs) != 4 || v["next_offset"] != nil || v["state"] != "ready" {
		t.Fatalf("peek --json = %v", v)
	}
	first := msgs[0].(map[string]any)
	if first["preview"] != "order 5 \x1b[31mred\x1b[0m" || first["size"] != float64(20) || first["attempts"] != float64(0) {
		t.Errorf("first ready = %v", first)
	}
	if raw := msgs[2].(map[string]any); raw["raw"] != true || raw["id"] != nil || raw["preview"] != "raw order 7" {
		t.Errorf("raw ready = %v", raw)
	}
	if big := msgs[3].(map[string]any); big["size"] != float64(3000) || big["preview_truncated"] != true || len(big["preview"].(string)) != 100 {
		t.Errorf("big ready = %v", big)
	}

	v = decode("dead", "list", "orders", "--preview", "4")
	dead := v["messages"].([]any)
	if len(dead) != 3 {
		t.Fatalf("dead list --json = %v", v)
	}
	reasons := []string{}
	for _, d := range dead {
		reasons = append(reasons, d.(map[string]any)["reason"].(string))
	}
	if strings.Join(reasons, ",") != "expired,failed,expired" {
		t.Errorf("reasons %v", reasons)
	}
	if bin := dead[2].(map[string]any); bin["preview_base64"] != "AAECAw==" || bin["preview"] != nil {
		t.Errorf("binary dead letter = %v", bin)
	}
	if d := dead[0].(map[string]any); d["died_at"] == nil || d["attempts"] != float64(1) || d["max_deliveries"] != float64(1) {
		t.Errorf("dead letter = %v", d)
	}
	// Without --preview, dead list shows no payload at all.
	v = decode("dead", "list", "orders")
	for _, d := range v["messages"].([]any) {
		if m := d.(map[string]any); m["preview"] != nil || m["preview_base64"] != nil {
			t.Errorf("dead list without --preview showed a payload: %v", m)
		}
	}

	if v := decode("pause", "orders"); v["paused"] != true || v["changed"] != true {
		t.Errorf("pause --json = %v", v)
	}
	if v := decode("resume", "orders"); v["paused"] != false || v["changed"] != true {
		t.Errorf("resume --json = %v", v)
	}
	v = decode("push", "orders", "hello")
	if v["pushed"] != float64(1) || len(v["ids"].([]any)) != 1 {
		t.Errorf("push --json = %v", v)
	}
	id := v["ids"].([]any)[0].(string)
	p, err := b.c.Peek(t.Context(), "orders", lease.StateReady, &lease.PeekOpts{Offset: 4, Preview: 10})
	if err != nil || len(p.Messages) != 1 || p.Messages[0].ID != id || string(p.Messages[0].Preview) != "hello" {
		t.Errorf("pushed message = %+v, %v", p, err)
	}
	if v := decode("dead", "replay", "orders", "--reason", "failed"); v["replayed"] != float64(1) || v["interrupted"] != false {
		t.Errorf("dead replay --json = %v", v)
	}
	if v := decode("dead", "purge", "orders", "--all", "--yes"); v["purged"] != float64(2) {
		t.Errorf("dead purge --json = %v", v)
	}
	b.ok(t, "resume", "emails")
	if v := decode("forget", "emails"); v["forgotten"] != true {
		t.Errorf("forget --json = %v", v)
	}
}

// TestCLIReplayPurge10000 replays and purges 10,000 dead letters in
// bounded batches and counts them exactly.
func TestCLIReplayPurge10000(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	ctx := t.Context()
	const n = 10000
	b.makeDead(t, "replayed", n, func(i int) string { return fmt.Sprint("r", i) })
	b.makeDead(t, "purged", n, func(i int) string { return fmt.Sprint("p", i) })

	r := b.run(t, "", false, "dead", "replay", "replayed", "--all")
	if r.code != 0 || r.stdout != "replayed 10000 dead letters of replayed\n" {
		t.Fatalf("replay: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// Plain progress lines, one per batch of 500 here (progressEvery is
	// tiny in tests), ending at the total.
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) != n/lease.DeadBatchDefault || !strings.HasPrefix(lines[len(lines)-1], "replaying: 10000 of 10000 (100%)") {
		t.Errorf("progress: %d lines, last %q", len(lines), lines[len(lines)-1])
	}
	s, err := b.c.Stats(ctx, "replayed")
	if err != nil || s.Ready != n || s.Dead != 0 || s.InFlight != 0 {
		t.Fatalf("after replay: %+v, %v", s, err)
	}
	if hlen, _ := b.rdb.HLen(ctx, lease.KeysFor("replayed").DeadMsgs).Result(); hlen != 0 {
		t.Fatalf("%d dead records left", hlen)
	}
	// Replayed with fresh attempts: every one can be taken once more.
	p, err := b.c.Peek(ctx, "replayed", lease.StateReady, &lease.PeekOpts{Limit: lease.MaxBatch})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range p.Messages {
		if m.Attempts != 0 {
			t.Fatalf("replayed message with %d attempts", m.Attempts)
		}
	}

	r = b.run(t, "", true, "dead", "purge", "purged", "--all", "--yes", "--batch", "1000")
	if r.code != 0 || r.stdout != "purged 10000 dead letters of purged\n" {
		t.Fatalf("purge: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// On a terminal: a bar redrawn in place, with rate and ETA.
	if !strings.Contains(r.stderr, "\rpurging [") || !strings.Contains(r.stderr, "10000/10000 100%") || !strings.Contains(r.stderr, "ETA") {
		t.Errorf("progress bar: %q", r.stderr)
	}
	if s, _ := b.c.Stats(ctx, "purged"); s.Dead != 0 || s.Ready != 0 {
		t.Fatalf("after purge: %+v", s)
	}
	if n, _ := b.rdb.Exists(ctx, lease.KeysFor("purged").DeadMsgs, lease.KeysFor("purged").Dead).Result(); n != 0 {
		t.Fatalf("%d dead keys left", n)
	}
}

// TestCLIBadInput: every bad input is one clear line on stderr, exit 2 (or
// 1 for facts about Redis), and writes nothing.
func TestCLIBadInput(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	seedGolden(t, b)
	id := b.failOne(t, "other", "x")
	for _, tc := range []struct {
		args  []string
		stdin string
		code  int
		msg   string
	}{
		{[]string{"nosuch"}, "", 2, `unknown command "nosuch"`},
		{[]string{"dead"}, "", 2, "want a subcommand"},
		{[]string{"dead", "bury", "orders"}, "", 2, `unknown command "dead bury"`},
		{[]string{"stats"}, "", 2, "missing QUEUE"},
		{[]string{"stats", "nosuch"}, "", 1, `unknown queue "nosuch"`},
		{[]string{"stats", "orders", "bad{name}"}, "", 2, "invalid queue name"},
		{[]string{"peek", "nosuch"}, "", 1, `unknown queue "nosuch"`},
		{[]string{"peek", "orders", "emails"}, "", 2, `unexpected argument "emails"`},
		{[]string{"peek", "orders", "--state", "parked"}, "", 2, `--state "parked"`},
		{[]string{"peek", "orders", "--limit", "0"}, "", 2, "--limit 0"},
		{[]string{"peek", "orders", "--limit", "many"}, "", 2, "invalid value"},
		{[]string{"peek", "orders", "--preview", "-1"}, "", 2, "--preview -1"},
		{[]string{"peek", "orders", "--reason", "failed"}, "", 2, "--reason only applies"},
		{[]string{"peek", "orders", "--bogus"}, "", 2, "flag provided but not defined: -bogus"},
		{[]string{"dead", "list", "nosuch"}, "", 1, `unknown queue "nosuch"`},
		{[]string{"dead", "replay", "orders"}, "", 2, "exactly one of"},
		{[]string{"dead", "replay", "orders", "--all", "--reason", "failed"}, "", 2, "exactly one of"},
		{[]string{"dead", "replay", "orders", id, "--all"}, "", 2, "exactly one of"},
		{[]string{"dead", "replay", "orders", "not/an/id"}, "", 2, `malformed dead letter id "not/an/id"`},
		{[]string{"dead", "replay", "orders", "--reason", "Failed"}, "", 2, `--reason "Failed"`},
		{[]string{"dead", "replay", "nosuch", "--all"}, "", 1, `unknown queue "nosuch"`},
		{[]string{"dead", "replay", "bad name", "--all"}, "", 2, "invalid queue name"},
		{[]string{"dead", "replay", "orders", "--all", "--batch", "5000"}, "", 2, "--batch 5000"},
		{[]string{"dead", "purge", "orders", "--all"}, "", 2, "without --yes"},
		{[]string{"dead", "purge", "orders", id, "--reason", "failed", "--yes"}, "", 2, "exactly one of"},
		{[]string{"pause", "nosuch"}, "", 1, `unknown queue "nosuch"`},
		{[]string{"pause"}, "", 2, "missing QUEUE"},
		{[]string{"resume", "a{b"}, "", 2, "invalid queue name"},
		{[]string{"forget", "orders"}, "", 1, "forget: refused, queue not empty: orders has 4 ready, 1 in flight, 1 delayed, 3 dead"},
		{[]string{"forget", "emails"}, "", 1, "paused"},
		{[]string{"forget", "nosuch"}, "", 1, `unknown queue "nosuch"`},
		{[]string{"push"}, "", 2, "missing QUEUE"},
		{[]string{"push", "bad{q}", "x"}, "", 2, "invalid queue name"},
		{[]string{"push", "orders", "x", "y"}, "", 2, `unexpected argument "y"`},
		{[]string{"push", "orders", "x", "--lines"}, "", 2, "--lines reads stdin"},
		{[]string{"push", "orders", "--lines"}, "", 2, "stdin had no lines"},
		{[]string{"push", "orders", "--lines"}, "ok\n" + strings.Repeat("x", lease.MaxPayloadDefault+1) + "\n", 2, "message 2 is over"},
		{[]string{"push", "orders", "--delay", "-5s", "x"}, "", 2, "--delay -5s"},
		{[]string{"queues", "extra"}, "", 2, `unexpected argument "extra"`},
	} {
		before := snapshotDB(t, b.rdb)
		r := b.run(t, tc.stdin, false, tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) || strings.Count(r.stderr, "\n") != 1 || !strings.HasPrefix(r.stderr, "ackd: ") || r.stdout != "" {
			t.Errorf("ackd %s: exit %d, stdout %q, stderr %q; want exit %d and one line with %q",
				strings.Join(tc.args, " "), r.code, r.stdout, r.stderr, tc.code, tc.msg)
		}
		if after := snapshotDB(t, b.rdb); !equalSnapshots(before, after) {
			t.Errorf("ackd %s wrote to Redis", strings.Join(tc.args, " "))
		}
	}
	// A bad ACKD_REDIS_URL is named, and nothing is dialled.
	var out, errb bytes.Buffer
	code := runCLI(t.Context(), []string{"queues"}, &cliEnv{stdout: &out, stderr: &errb, environ: map[string]string{"ACKD_REDIS_URL": "http://x:1"}})
	if code != exitUsage || !strings.Contains(errb.String(), "ACKD_REDIS_URL") {
		t.Errorf("bad URL: exit %d, %q", code, errb.String())
	}
	// Redis down: exit 1.
	code = runCLI(t.Context(), []string{"queues"}, &cliEnv{stdout: &out, stderr: &errb, environ: map[string]string{"ACKD_REDIS_URL": "redis://127.0.0.1:1/0"}})
	if code != exitError {
		t.Errorf("Redis down: exit %d", code)
	}
}

func equalSnapshots(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestCLIPurgeConfirm: on a terminal, purge asks, and only "yes" deletes.
func TestCLIPurgeConfirm(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	id := b.failOne(t, "q", "x")
	before := snapshotDB(t, b.rdb)
	r := b.run(t, "no\n", true, "dead", "purge", "q", "--all")
	if r.code != 1 || !strings.Contains(r.stderr, "Delete all 1 dead letters of q for good?") || !strings.Contains(r.stderr, "not confirmed, nothing deleted") {
		t.Fatalf("declined purge: exit %d, stderr %q", r.code, r.stderr)
	}
	if !equalSnapshots(before, snapshotDB(t, b.rdb)) {
		t.Fatal("declined purge wrote to Redis")
	}
	r = b.run(t, "yes\n", true, "dead", "purge", "q", id)
	if r.code != 0 || r.stdout != "purged 1 dead letters of q\n" {
		t.Fatalf("confirmed purge: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	// An id that is not (or no longer) a dead letter is reported.
	r = b.run(t, "", false, "dead", "replay", "q", id)
	if r.code != 1 || !strings.Contains(r.stderr, "not in the dead set") {
		t.Fatalf("replay of a purged id: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestCLIPauseResume: a consumer blocked on a queue paused by the CLI gets
// nothing until the CLI resumes it.
func TestCLIPauseResume(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	ctx := t.Context()
	if _, err := b.c.Push(ctx, "jobs", []byte("first"), nil); err != nil {
		t.Fatal(err)
	}
	if out := b.ok(t, "pause", "jobs"); out != "jobs paused\n" {
		t.Fatalf("pause: %q", out)
	}
	if out := b.ok(t, "pause", "jobs"); out != "jobs was already paused\n" {
		t.Fatalf("pause again: %q", out)
	}
	if out := b.ok(t, "push", "jobs", "second"); !strings.HasPrefix(out, "pushed ") {
		t.Fatalf("push while paused: %q", out)
	}
	got := make(chan *lease.Lease, 1)
	go func() {
		l, err := b.c.Take(ctx, "jobs", &lease.TakeOpts{Wait: 30 * time.Second})
		if err != nil {
			t.Errorf("Take: %v", err)
		}
		got <- l
	}()
	// The waiting consumer looks at the queue again and again, and gets
	// nothing while it is paused.
	looks := func() int {
		info, _ := b.rdb.Info(ctx, "commandstats").Result()
		var n int
		for _, m := range regexp.MustCompile(`cmdstat_(?:fcall|evalsha):calls=(\d+)`).FindAllStringSubmatch(info, -1) {
			var c int
			fmt.Sscan(m[1], &c)
			n += c
		}
		return n
	}
	start := looks()
	redistest.WaitFor(t, 10*time.Second, func() bool { return looks() >= start+4 }, "the consumer to look 4 times")
	select {
	case l := <-got:
		t.Fatalf("paused queue delivered %q", l.Payload)
	default:
	}
	if out := b.ok(t, "stats", "jobs"); !strings.Contains(out, "state              paused") {
		t.Errorf("stats while paused:\n%s", out)
	}
	if out := b.ok(t, "resume", "jobs"); out != "jobs resumed\n" {
		t.Fatalf("resume: %q", out)
	}
	select {
	case l := <-got:
		if l == nil || string(l.Payload) != "first" {
			t.Fatalf("after resume: %+v", l)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("nothing delivered after resume")
	}
	if out := b.ok(t, "resume", "jobs"); out != "jobs was not paused\n" {
		t.Fatalf("resume again: %q", out)
	}
}

// TestCLIPushLinesAndForget pushes from stdin and forgets a drained queue.
func TestCLIPushLinesAndForget(t *testing.T) {
	t.Parallel()
	b := setupCLI(t)
	ctx := t.Context()
	var in strings.Builder
	for i := range 2500 {
		fmt.Fprintf(&in, "line %d\n", i)
	}
	r := b.run(t, in.String(), false, "push", "lines", "--lines")
	if r.code != 0 || r.stdout != "pushed 2500 messages to lines\n" {
		t.Fatalf("push --lines: %+v", r)
	}
	r = b.run(t, "whole\nstdin\n", false, "push", "lines", "-")
	if r.code != 0 {
		t.Fatalf("push -: %+v", r)
	}
	p, err := b.c.Peek(ctx, "lines", lease.StateReady, &lease.PeekOpts{Offset: 2499, Limit: 5, Preview: 100})
	if err != nil || len(p.Messages) != 2 || string(p.Messages[0].Preview) != "line 2499" || string(p.Messages[1].Preview) != "whole\nstdin\n" {
		t.Fatalf("pushed: %+v, %v", p, err)
	}
	if err := b.rdb.Del(ctx, lease.KeysFor("lines").Ready).Err(); err != nil {
		t.Fatal(err)
	}
	if out := b.ok(t, "forget", "lines"); out != "forgot lines\n" {
		t.Fatalf("forget: %q", out)
	}
	if out := b.ok(t, "queues"); !strings.HasPrefix(out, "no queues") {
		t.Fatalf("queues after forget: %q", out)
	}
}

func TestCLIHelp(t *testing.T) {
	t.Parallel()
	run := func(args ...string) cliResult {
		var out, errb bytes.Buffer
		code := runCLI(t.Context(), args, &cliEnv{stdout: &out, stderr: &errb, environ: map[string]string{}})
		return cliResult{code, out.String(), errb.String()}
	}
	if r := run("help"); r.code != 0 || !strings.Contains(r.stdout, "dead replay") || !strings.Contains(r.stdout, "Exit codes") {
		t.Errorf("help: %+v", r)
	}
	for _, c := range commands() {
		args := append(strings.Fields(c.name), "-h")
		r := run(args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Usage: ackd "+c.name) || !strings.Contains(r.stdout, "Examples:\n  ackd "+c.name) || !strings.Contains(r.stdout, "-json") {
			t.Errorf("ackd %s -h: %+v", c.name, r)
		}
		if r := run(append([]string{"help"}, strings.Fields(c.name)...)...); r.code != 0 || !strings.Contains(r.stdout, "Usage: ackd "+c.name) {
			t.Errorf("ackd help %s: %+v", c.name, r)
		}
	}
}

// TestIsCommand: no arguments or flags run the daemon; words are commands.
func TestIsCommand(t *testing.T) {
	t.Parallel()
	for args, want := range map[string]bool{"": false, "-h": false, "-version": false, "queues": true, "help": true, "typo": true} {
		if got := isCommand(strings.Fields(args)); got != want {
			t.Errorf("isCommand(%q) = %v", args, got)
		}
	}
}
