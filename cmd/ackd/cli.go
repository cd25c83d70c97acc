package main

// The operator commands: ackd with a subcommand is a tool for people and
// scripts, configured by the daemon's ACKD_REDIS_* variables alone. Each command is one small
// function over the lease admin API; output goes through cli_output.go.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redisconn"
	"github.com/ackd/ackd/lease"
)

// Exit codes of the operator commands.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// usageError is bad input: exit 2, nothing written.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// cliEnv is what a command runs with.
type cliEnv struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	environ        map[string]string
	// stdinTTY: confirmations may be asked; stderrTTY: progress is drawn
	// as a bar instead of plain lines.
	stdinTTY, stderrTTY bool
	// progressEvery is the least time between two progress updates.
	progressEvery time.Duration

	c *lease.Client
}

// command is one operator command.
type command struct {
	name     string
	args     string // usage after the name
	summary  string
	help     string // more lines for `ackd CMD -h`
	examples []string
	flags    func(fs *flag.FlagSet) any // declares flags, returns the struct they fill
	run      func(ctx context.Context, e *cliEnv, fl any, args []string) error
}

// isCommand reports whether args name an operator command, so that main
// runs the CLI instead of the daemon. The daemon takes flags only, so any
// other first word is a command (maybe a mistyped one).
func isCommand(args []string) bool {
	return len(args) > 0 && !strings.HasPrefix(args[0], "-")
}

// cliMain runs an operator command as the process: on the real stdin,
// stdout and stderr, with go-redis's own log lines off (errors are
// reported once, by the command).
func cliMain(ctx context.Context, args []string) int {
	redis.SetLogger(quietLogger{})
	return runCLI(ctx, args, &cliEnv{
		stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, environ: env.ToMap(os.Environ()),
		stdinTTY: isTerminal(os.Stdin), stderrTTY: isTerminal(os.Stderr),
	})
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// runCLI runs one operator command and returns the process's exit code.
func runCLI(ctx context.Context, args []string, e *cliEnv) int {
	err := dispatch(ctx, args, e)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	// One line, whatever the error holds.
	fmt.Fprintf(e.stderr, "ackd: %s\n", strings.Join(strings.Fields(err.Error()), " "))
	var ue *usageError
	if errors.As(err, &ue) || errors.Is(err, lease.ErrInvalidQueue) || errors.Is(err, lease.ErrInvalidArgument) {
		return exitUsage
	}
	return exitError
}

func dispatch(ctx context.Context, args []string, e *cliEnv) error {
	if args[0] == "help" {
		if len(args) > 1 {
			if cmd, ok := commandsByName()[strings.Join(args[1:], " ")]; ok {
				writeCommandHelp(e.stdout, cmd, nil)
				return nil
			}
			return usagef("help: unknown command %q (ackd help lists them)", strings.Join(args[1:], " "))
		}
		writeCLIHelp(e.stdout)
		return nil
	}
	name := args[0]
	args = args[1:]
	if name == "dead" {
		if len(args) == 0 || strings.HasPrefix(args[0], "-") {
			if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
				writeCLIHelp(e.stdout)
				return nil
			}
			return usagef("dead: want a subcommand: list, replay or purge (ackd help)")
		}
		name, args = "dead "+args[0], args[1:]
	}
	cmd, ok := commandsByName()[name]
	if !ok {
		return usagef("unknown command %q (ackd help lists them)", name)
	}
	fs := flag.NewFlagSet("ackd "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var fl any
	if cmd.flags != nil {
		fl = cmd.flags(fs)
	}
	jsonOut := fs.Bool("json", false, "print JSON for scripts instead of a table")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeCommandHelp(e.stdout, cmd, fs)
			return flag.ErrHelp
		}
		return usagef("%s: %v (ackd %s -h for help)", cmd.name, err, cmd.name)
	}
	if fl == nil {
		fl = jsonOut
	} else if j, ok := fl.(interface{ setJSON(bool) }); ok {
		j.setJSON(*jsonOut)
	}
	conn, err := cliRedis(ctx, e.environ)
	if err != nil {
		return err
	}
	defer conn.Close()
	c, err := lease.New(conn.Client, nil)
	if err != nil {
		return err
	}
	e.c = c
	return cmd.run(ctx, e, fl, pos)
}

// cliRedis connects to the Redis the daemon's ACKD_REDIS_* variables
// name, in any of its forms. A bad variable is a usage error naming it;
// the other ACKD_* variables, the daemon's, are not read.
func cliRedis(ctx context.Context, environ map[string]string) (*redisconn.Conn, error) {
	redisEnv := make(map[string]string)
	for k, v := range environ {
		if strings.HasPrefix(k, envPrefix+"REDIS_") {
			redisEnv[k] = v
		}
	}
	cfg, err := loadConfig(redisEnv)
	if err != nil {
		return nil, usagef("%s", strings.TrimPrefix(err.Error(), errConfig.Error()+": "))
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	return redisconn.Open(ctx, cfg.redisConn)
}

// parseInterspersed parses flags anywhere among the arguments (ackd peek
// orders --limit 5 as well as ackd peek --limit 5 orders). A lone "-" is
// an argument; after "--" everything is.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		// fs.Parse stopped at a non-flag argument, or just after "--".
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// jsonFlag is embedded in every command's flag struct.
type jsonFlag struct{ json bool }

func (j *jsonFlag) setJSON(v bool) { j.json = v }

func commandsByName() map[string]*command {
	m := map[string]*command{}
	for _, c := range commands() {
		m[c.name] = c
	}
	return m
}

// oneQueue checks the arguments of a command about one known queue.
func oneQueue(ctx context.Context, e *cliEnv, cmd string, args []string) (string, error) {
	if len(args) == 0 {
		return "", usagef("%s: missing QUEUE (ackd %s -h for help)", cmd, cmd)
	}
	if len(args) > 1 {
		return "", usagef("%s: unexpected argument %q after the queue (ackd %s -h for help)", cmd, args[1], cmd)
	}
	return args[0], knownQueue(ctx, e, args[0])
}

// knownQueue refuses an invalid name (exit 2) or a queue not in the
// registry (exit 1).
func knownQueue(ctx context.Context, e *cliEnv, q string) error {
	if err := lease.ValidateQueue(q); err != nil {
		return usagef("%v", err)
	}
	ok, err := e.c.Known(ctx, q)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("unknown queue %q (ackd queues lists them)", q)
	}
	return nil
}

// --- queues

func runQueues(ctx context.Context, e *cliEnv, fl any, args []string) error {
	if len(args) > 0 {
		return usagef("queues: unexpected argument %q (ackd queues -h for help)", args[0])
	}
	qs, err := e.c.Queues(ctx)
	if err != nil {
		return err
	}
	rows := make([]queueJSON, 0, len(qs))
	for _, q := range qs {
		s, err := e.c.Stats(ctx, q)
		if err != nil {
			return err
		}
		rows = append(rows, toQueueJSON(q, s))
	}
	if *fl.(*bool) {
		return writeJSON(e.stdout, map[string]any{"queues": rows})
	}
	return writeQueuesTable(e.stdout, rows)
}

// --- stats

func runStats(ctx context.Context, e *cliEnv, fl any, args []string) error {
	if len(args) == 0 {
		return usagef("stats: missing QUEUE (ackd stats -h for help)")
	}
	for _, q := range args {
		if err := knownQueue(ctx, e, q); err != nil {
			return err
		}
	}
	out := make([]statsJSON, 0, len(args))
	for _, q := range args {
		s, err := e.c.Stats(ctx, q)
		if err != nil {
			return err
		}
		reasons, err := e.c.DeadReasons(ctx, q)
		if err != nil {
			return err
		}
		out = append(out, toStatsJSON(q, s, reasons))
	}
	if *fl.(*bool) {
		return writeJSON(e.stdout, map[string]any{"queues": out})
	}
	for i, s := range out {
		if i > 0 {
			fmt.Fprintln(e.stdout)
		}
		if err := writeStats(e.stdout, s); err != nil {
			return err
		}
	}
	return nil
}

// --- peek and dead list

type peekFlags struct {
	jsonFlag
	cmd     string
	state   string
	reason  string
	limit   int
	offset  int
	preview int
}

func peekFlagSet(defPreview int, withState bool) func(fs *flag.FlagSet) any {
	return func(fs *flag.FlagSet) any {
		f := &peekFlags{cmd: "peek", state: "ready"}
		if withState {
			fs.StringVar(&f.state, "state", "ready", "`state` to show: ready, inflight, delayed or dead")
		} else {
			f.cmd, f.state = "dead list", "dead"
		}
		fs.StringVar(&f.reason, "reason", "", "only dead letters with reason `R` (expired, failed, malformed, killed)")
		fs.IntVar(&f.limit, "limit", 20, "show at most `N` messages (1 to 1000)")
		fs.IntVar(&f.offset, "offset", 0, "skip the first `N` messages (paging)")
		fs.IntVar(&f.preview, "preview", defPreview, fmt.Sprintf("show the first `BYTES` of each payload (0 for none, at most %d)", lease.MaxPreview))
		return f
	}
}

func runPeek(ctx context.Context, e *cliEnv, fl any, args []string) error {
	f := fl.(*peekFlags)
	cmd := f.cmd
	st, err := lease.ParseState(f.state)
	if err != nil {
		return usagef("%s: --state %q: want ready, inflight, delayed or dead", cmd, f.state)
	}
	if f.limit < 1 || f.limit > lease.MaxBatch {
		return usagef("%s: --limit %d: want 1 to %d", cmd, f.limit, lease.MaxBatch)
	}
	if f.offset < 0 {
		return usagef("%s: --offset %d: must not be negative", cmd, f.offset)
	}
	if f.preview < 0 || f.preview > lease.MaxPreview {
		return usagef("%s: --preview %d: want 0 to %d", cmd, f.preview, lease.MaxPreview)
	}
	if f.reason != "" && st != lease.StateDead {
		return usagef("%s: --reason only applies to --state dead", cmd)
	}
	q, err := oneQueue(ctx, e, cmd, args)
	if err != nil {
		return err
	}
	p, err := e.c.Peek(ctx, q, st, &lease.PeekOpts{Offset: f.offset, Limit: f.limit, Reason: f.reason, Preview: f.preview})
	if err != nil {
		return err
	}
	if f.json {
		msgs := make([]messageJSON, len(p.Messages))
		for i, m := range p.Messages {
			msgs[i] = toMessageJSON(m, f.preview > 0)
		}
		var next *int
		if p.Next >= 0 {
			next = &p.Next
		}
		return writeJSON(e.stdout, map[string]any{"queue": q, "state": st, "messages": msgs, "next_offset": next})
	}
	return writeMessages(e.stdout, st, p, f.preview > 0, time.Now())
}

// --- dead replay and purge

type deadFlags struct {
	jsonFlag
	all    bool
	reason string
	yes    bool
	batch  int
}

func deadFlagSet(purge bool) func(fs *flag.FlagSet) any {
	return func(fs *flag.FlagSet) any {
		f := &deadFlags{}
		fs.BoolVar(&f.all, "all", false, "every dead letter of the queue")
		fs.StringVar(&f.reason, "reason", "", "every dead letter with reason `R` (expired, failed, malformed, killed)")
		fs.IntVar(&f.batch, "batch", lease.DeadBatchDefault, "dead letters per Redis script (1 to 1000); smaller blocks Redis for less time")
		if purge {
			fs.BoolVar(&f.yes, "yes", false, "do not ask for confirmation")
		}
		return f
	}
}

func runReplay(ctx context.Context, e *cliEnv, fl any, args []string) error {
	return runDeadOp(ctx, e, fl.(*deadFlags), args, "replay")
}

func runPurge(ctx context.Context, e *cliEnv, fl any, args []string) error {
	return runDeadOp(ctx, e, fl.(*deadFlags), args, "purge")
}

func runDeadOp(ctx context.Context, e *cliEnv, f *deadFlags, args []string, op string) error {
	cmd := "dead " + op
	if len(args) == 0 {
		return usagef("%s: missing QUEUE (ackd %s -h for help)", cmd, cmd)
	}
	q, ids := args[0], args[1:]
	modes := 0
	for _, set := range []bool{len(ids) > 0, f.all, f.reason != ""} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		return usagef("%s: give exactly one of: dead letter ids, --all, --reason R", cmd)
	}
	if f.batch < 1 || f.batch > lease.MaxBatch {
		return usagef("%s: --batch %d: want 1 to %d", cmd, f.batch, lease.MaxBatch)
	}
	if f.reason != "" && lease.ValidateReason(f.reason) != nil {
		return usagef("%s: --reason %q: a reason is lowercase letters (expired, failed, malformed, killed)", cmd, f.reason)
	}
	for _, id := range ids {
		if lease.ValidateDeadLetterID(id) != nil {
			return usagef("%s: malformed dead letter id %q (letters, digits, '-' and '.', at most 128 bytes)", cmd, id)
		}
	}
	if slices.Contains(ids, "-") {
		return usagef("%s: ids are arguments, not stdin", cmd)
	}
	if err := knownQueue(ctx, e, q); err != nil {
		return err
	}

	// How many to expect, for the confirmation and the progress bar.
	total := len(ids)
	what := fmt.Sprintf("%d dead letters", total)
	if len(ids) == 0 {
		s, err := e.c.Stats(ctx, q)
		if err != nil {
			return err
		}
		total = int(s.Dead)
		what = fmt.Sprintf("all %d dead letters", total)
		if f.reason != "" {
			reasons, err := e.c.DeadReasons(ctx, q)
			if err != nil {
				return err
			}
			total = int(reasons[f.reason])
			what = fmt.Sprintf("%d dead letters with reason %q", total, f.reason)
		}
	}
	if op == "purge" && !f.yes && total > 0 {
		if !e.stdinTTY {
			return usagef("dead purge: refusing to delete %s of %s without --yes (stdin is not a terminal to confirm on)", what, q)
		}
		fmt.Fprintf(e.stderr, "Delete %s of %s for good? This cannot be undone. Type yes to go on: ", what, q)
		line, _ := bufio.NewReader(e.stdin).ReadString('\n')
		if strings.TrimSpace(line) != "yes" {
			return errors.New("dead purge: not confirmed, nothing deleted")
		}
	}

	verb := map[string]string{"replay": "replayed", "purge": "purged"}[op]
	var n int
	var err error
	if len(ids) > 0 {
		if op == "replay" {
			n, err = e.c.Replay(ctx, q, ids...)
		} else {
			n, err = e.c.Purge(ctx, q, ids...)
		}
	} else {
		bar := newProgress(e.stderr, e.stderrTTY, map[string]string{"replay": "replaying", "purge": "purging"}[op], total, e.progressEvery)
		opts := &lease.DeadOpts{Reason: f.reason, BatchSize: f.batch, ProgressFunc: bar.update}
		if op == "replay" {
			n, err = e.c.ReplayAll(ctx, q, opts)
		} else {
			n, err = e.c.PurgeAll(ctx, q, opts)
		}
		bar.finish(n)
	}
	interrupted := errors.Is(err, context.Canceled)
	if f.json {
		res := map[string]any{"queue": q, verb: n, "interrupted": interrupted}
		if err != nil && !interrupted {
			res["error"] = err.Error()
		}
		if werr := writeJSON(e.stdout, res); werr != nil {
			return werr
		}
	} else {
		fmt.Fprintf(e.stdout, "%s %d dead letters of %s\n", verb, n, q)
	}
	switch {
	case interrupted:
		rest := "still dead letters"
		if op == "purge" {
			rest = "still there"
		}
		return fmt.Errorf("interrupted after %d %s; the others are %s", n, verb, rest)
	case err != nil:
		return err
	}
	return nil
}

// pauseCmd is ackd pause (pause true) and ackd resume.
func pauseCmd(pause bool) func(ctx context.Context, e *cliEnv, fl any, args []string) error {
	name, do := "resume", (*lease.Client).Resume
	if pause {
		name, do = "pause", (*lease.Client).Pause
	}
	return func(ctx context.Context, e *cliEnv, fl any, args []string) error {
		q, err := oneQueue(ctx, e, name, args)
		if err != nil {
			return err
		}
		changed, err := do(e.c, ctx, q)
		if err != nil {
			return err
		}
		return writeState(e, fl, q, pause, changed)
	}
}

func writeState(e *cliEnv, fl any, q string, paused, changed bool) error {
	if *fl.(*bool) {
		return writeJSON(e.stdout, map[string]any{"queue": q, "paused": paused, "changed": changed})
	}
	word := map[bool]string{true: "paused", false: "resumed"}[paused]
	if !changed {
		word = map[bool]string{true: "was already paused", false: "was not paused"}[paused]
	}
	fmt.Fprintf(e.stdout, "%s %s\n", q, word)
	return nil
}

func runForget(ctx context.Context, e *cliEnv, fl any, args []string) error {
	q, err := oneQueue(ctx, e, "forget", args)
	if err != nil {
		return err
	}
	if err := e.c.Forget(ctx, q); err != nil {
		if errors.Is(err, lease.ErrNotEmpty) {
			return fmt.Errorf("forget: refused, %s", strings.TrimPrefix(err.Error(), "lease: "))
		}
		return err
	}
	if *fl.(*bool) {
		return writeJSON(e.stdout, map[string]any{"queue": q, "forgotten": true})
	}
	fmt.Fprintf(e.stdout, "forgot %s\n", q)
	return nil
}

// --- push

type pushFlags struct {
	jsonFlag
	lines bool
	delay time.Duration
}

func runPush(ctx context.Context, e *cliEnv, fl any, args []string) error {
	f := fl.(*pushFlags)
	if len(args) == 0 {
		return usagef("push: missing QUEUE (ackd push -h for help)")
	}
	if len(args) > 2 {
		return usagef("push: unexpected argument %q: one payload per call (quote it), or - with --lines", args[2])
	}
	q := args[0]
	if err := lease.ValidateQueue(q); err != nil {
		return usagef("%v", err)
	}
	fromStdin := len(args) == 1 || args[1] == "-"
	if f.lines && !fromStdin {
		return usagef("push: --lines reads stdin: give - or no payload, not both")
	}
	if f.delay < 0 || f.delay > lease.MaxLeaseFor {
		return usagef("push: --delay %v: want 0 to %v", f.delay, lease.MaxLeaseFor)
	}
	var opts *lease.PushOpts
	if f.delay > 0 {
		opts = &lease.PushOpts{Delay: max(f.delay, time.Millisecond)}
	}
	var payloads [][]byte
	switch {
	case !fromStdin:
		payloads = [][]byte{[]byte(args[1])}
	case f.lines:
		sc := bufio.NewScanner(e.stdin)
		sc.Buffer(make([]byte, 64<<10), 2*lease.MaxPayloadDefault)
		for sc.Scan() {
			payloads = append(payloads, slices.Clone(sc.Bytes()))
		}
		if errors.Is(sc.Err(), bufio.ErrTooLong) {
			return usagef("push: line %d of stdin is over %d bytes; nothing pushed", len(payloads)+1, lease.MaxPayloadDefault)
		}
		if err := sc.Err(); err != nil {
			return fmt.Errorf("push: reading stdin: %w", err)
		}
		if len(payloads) == 0 {
			return usagef("push: --lines: stdin had no lines, nothing pushed")
		}
	default:
		b, err := io.ReadAll(io.LimitReader(e.stdin, int64(lease.MaxPayloadDefault)+1))
		if err != nil {
			return fmt.Errorf("push: reading stdin: %w", err)
		}
		payloads = [][]byte{b}
	}
	// Check every payload before the first batch, so that a bad line
	// pushes nothing.
	for i, p := range payloads {
		if len(p) > lease.MaxPayloadDefault {
			return usagef("push: message %d is over %d bytes; nothing pushed", i+1, lease.MaxPayloadDefault)
		}
	}
	var ids []string
	for i := 0; i < len(payloads); i += lease.MaxBatch {
		got, err := e.c.PushBatch(ctx, q, payloads[i:min(i+lease.MaxBatch, len(payloads))], opts)
		ids = append(ids, got...)
		if err != nil {
			return fmt.Errorf("push: %d of %d pushed: %w", len(ids), len(payloads), err)
		}
	}
	if f.json {
		return writeJSON(e.stdout, map[string]any{"queue": q, "pushed": len(ids), "ids": ids})
	}
	if len(ids) == 1 {
		fmt.Fprintf(e.stdout, "pushed %s to %s\n", ids[0], q)
	} else {
		fmt.Fprintf(e.stdout, "pushed %d messages to %s\n", len(ids), q)
	}
	return nil
}

// --- the command table and help

func commands() []*command {
	return []*command{
		{name: "queues", summary: "every queue with its counts, oldest ready age and state",
			help:     "Lists every queue in the registry (ackd:queues) with ready, in-flight, delayed and dead counts, the age of its oldest ready message and whether it is paused.",
			examples: []string{"ackd queues", "ackd queues --json | jq '.queues[] | select(.dead > 0) | .queue'"},
			run:      runQueues},
		{name: "stats", args: "QUEUE...", summary: "queues in detail: counts, times, dead letters by reason",
			help:     "Shows each queue's counts, oldest ready age, earliest lease deadline, next delayed message, dead letters by reason, and whether it is paused.",
			examples: []string{"ackd stats orders", "ackd stats orders emails --json"},
			run:      runStats},
		{name: "peek", args: "QUEUE", summary: "the first messages of one state, with a safe preview",
			help: "Shows the first messages of a state, oldest first (ready: in the order consumers get them): id, attempt, deadline or due time, reason, payload size and a preview of the payload.\n" +
				"The preview shows printable text, truncated, and binary data as <binary>; it is 40 bytes unless --preview says otherwise (0 for none). Payloads are never printed in full unless --preview asks for enough bytes.",
			examples: []string{"ackd peek orders", "ackd peek orders --state inflight --limit 50", "ackd peek orders --state dead --reason failed --preview 200", "ackd peek orders --offset 20 --limit 20   # the next page"},
			flags:    peekFlagSet(40, true), run: runPeek},
		{name: "dead list", args: "QUEUE", summary: "dead letters with reason, time and attempts",
			help:     "Lists dead letters, oldest first, with reason, when they died, attempts and payload size. Payloads are not shown unless --preview asks for them.",
			examples: []string{"ackd dead list orders", "ackd dead list orders --reason failed --limit 100", "ackd dead list orders --preview 80"},
			flags:    peekFlagSet(0, false), run: runPeek},
		{name: "dead replay", args: "QUEUE (ID... | --all | --reason R)", summary: "put dead letters back on the queue with fresh attempts",
			help: "Puts dead letters back at the tail of the ready list with their delivery count reset; they keep their ids.\n" +
				"--all and --reason work in batches (--batch) so Redis is never blocked for long, show progress on stderr, and stop cleanly at Ctrl-C after the batch under way: every message is then either back on the queue or still dead, never both.",
			examples: []string{"ackd dead replay orders 0193a5c2-7d1e-7b7a-9c1f-2a4b6c8d0e1f", "ackd dead replay orders --reason expired", "ackd dead replay orders --all --json"},
			flags:    deadFlagSet(false), run: runReplay},
		{name: "dead purge", args: "QUEUE (ID... | --all | --reason R)", summary: "delete dead letters for good",
			help: "Deletes dead letters. Asks for confirmation on a terminal; elsewhere (scripts, pipes) it refuses without --yes.\n" +
				"--all and --reason work in batches like dead replay and stop the same way at Ctrl-C.",
			examples: []string{"ackd dead purge orders --reason malformed", "ackd dead purge orders --all --yes"},
			flags:    deadFlagSet(true), run: runPurge},
		{name: "pause", args: "QUEUE", summary: "stop deliveries; pushes are still accepted",
			help:     "Pauses a queue: takes return nothing and blocking takes keep waiting (Consume idles) until resume. Pushes, plain RPUSH producers, acks and the requeue of expired leases go on.",
			examples: []string{"ackd pause orders"},
			run:      pauseCmd(true)},
		{name: "resume", args: "QUEUE", summary: "deliver again after pause",
			help:     "Resumes a paused queue; waiting consumers get messages within a quarter of a second.",
			examples: []string{"ackd resume orders"},
			run:      pauseCmd(false)},
		{name: "push", args: "QUEUE [PAYLOAD | -]", summary: "push one message, or one per line of stdin",
			help: "Pushes PAYLOAD, or stdin as one message (- or no payload), or with --lines one message per line of stdin (in batches of 1000; an over-long line pushes nothing).\n" +
				"The queue is created if it is new. Prints the new message's id.",
			examples: []string{"ackd push orders '{\"id\": 42}'", "ackd push orders - < message.json", "ackd push orders --lines < messages.txt", "ackd push orders --delay 10m 'later'"},
			flags: func(fs *flag.FlagSet) any {
				f := &pushFlags{}
				fs.BoolVar(&f.lines, "lines", false, "push one message per line of stdin")
				fs.DurationVar(&f.delay, "delay", 0, "make the messages ready after this `duration` (e.g. 30s, 10m)")
				return f
			},
			run: runPush},
		{name: "forget", args: "QUEUE", summary: "remove an empty queue from the registry",
			help:     "Removes an empty, running queue from the registry so that daemons stop watching it. A queue with messages in any state, or paused, is refused with its counts.",
			examples: []string{"ackd forget old-orders"},
			run:      runForget},
	}
}

func writeCLIHelp(w io.Writer) {
	fmt.Fprint(w, `ackd is the lease daemon for Redis list queues, and the operator tool for them.

Usage:
  ackd                       run the daemon (ackd -h lists its configuration)
  ackd COMMAND [flags] ARGS  run an operator command against ACKD_REDIS_URL

Commands:
`)
	cmds := commands()
	width := 0
	for _, c := range cmds {
		width = max(width, len(c.name))
	}
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.name, c.summary)
	}
	fmt.Fprint(w, `
Every command takes --json (output for scripts) and -h (its flags and
examples). The only configuration is the daemon's ACKD_REDIS_URL (default
redis://127.0.0.1:6379/0; one server, a Cluster or Sentinels, in any form
ackd -h lists) with ACKD_REDIS_PASSWORD, ACKD_REDIS_PASSWORD_FILE and
ACKD_REDIS_TLS_*; other ACKD_* variables are not read.

Exit codes: 0 done, 1 error (Redis, unknown queue, interrupted), 2 usage
(bad flags, names or ids; nothing was written).

Examples:
  ackd queues
  ackd stats orders
  ackd dead list orders --reason failed
  ackd dead replay orders --reason expired
  ackd dead purge orders --all --yes
  docker exec <container> ackd queues
`)
}

func writeCommandHelp(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: ackd %s [flags] %s\n\n", c.name, c.args)
	fmt.Fprintf(w, "%s\n", strings.ToUpper(c.summary[:1])+c.summary[1:]+".")
	for _, para := range strings.Split(c.help, "\n") {
		fmt.Fprintln(w)
		for _, line := range wrap(para, 76) {
			fmt.Fprintln(w, line)
		}
	}
	if fs == nil {
		fs = flag.NewFlagSet(c.name, flag.ContinueOnError)
		if c.flags != nil {
			c.flags(fs)
		}
		fs.Bool("json", false, "print JSON for scripts instead of a table")
	}
	fmt.Fprint(w, "\nFlags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fmt.Fprint(w, "\nExamples:\n")
	for _, ex := range c.examples {
		fmt.Fprintf(w, "  %s\n", ex)
	}
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
