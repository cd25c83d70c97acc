// Command ackbench measures ackd beside what a user would pick instead:
// the plain Redis list (no reliability), the reliable-list pattern
// (BLMOVE + LREM) and Redis Streams consumer groups. It starts its own
// redis-server on a free loopback port, runs every system against that one
// server in the same run, and prints a markdown report with ratios.
//
//	go run ./cmd/ackbench              # full run, a few minutes
//	go run ./cmd/ackbench -quick       # small sizes, a smoke run
//	go run ./cmd/ackbench -only throughput,memory -n 50000
//
// Sections: concurrent (producers and consumers at once), throughput
// (from a pre-filled queue), latency, memory, redelivery, idle. The last
// two build and run the real daemon (./cmd/ackd) against the server. Only
// the public lease API is used, so the same program measures any version
// of the lease package.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

var sectionNames = []string{"concurrent", "throughput", "latency", "memory", "redelivery", "idle"}

type options struct {
	n          int
	quick      bool
	producers  int
	consumers  []int // consumer counts of the throughput sections
	backlog    int   // the concurrent section's hold on pushed, not yet received messages
	only       map[string]bool
	variants   map[string]bool
	extra      []tputVariant // Consume variants of -prefetch
	ackdBin    string
	out        string
	cpuProfile string
	args       []string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ackbench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("ackbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := options{args: args}
	fs.IntVar(&o.n, "n", 0, "scale of the run: in-flight messages of the memory section; per system and table, the pre-filled throughput moves n/4 (n/16 with 10 KB payloads) and the concurrent one n/4 (n/20) (default 100000; -quick 10000)")
	fs.BoolVar(&o.quick, "quick", false, "small sizes, for a smoke run")
	fs.IntVar(&o.producers, "producers", 4, "concurrent: producers pushing while the consumers run")
	consumers := fs.String("consumers", "1,8,64", "throughput and concurrent: consumer counts, comma-separated")
	fs.IntVar(&o.backlog, "backlog", 1000, "concurrent: producers hold while this many messages are pushed and not yet received")
	only := fs.String("only", "", "comma-separated sections to run: "+strings.Join(sectionNames, ", ")+" (default all)")
	fs.StringVar(&o.ackdBin, "ackd", "", "ackd binary for the redelivery and idle sections (default: go build ./cmd/ackd)")
	fs.StringVar(&o.out, "o", "", "write the report to this file instead of standard output")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of ackbench itself (the client side) to this file")
	variants := fs.String("variants", "", "throughput and concurrent: only these systems, comma-separated keys (list, reliable, streams, ackd, ackd-ackandtake, ackd-consume, streams-batch, ackd-batch, ackd-daemon, ackd-floor, ackd-floor2, ackd-floor3), for investigations")
	prefetch := fs.String("prefetch", "", "throughput and concurrent: ConsumeOpts.Prefetch values, comma-separated (negative: off); each adds a Consume variant ackd-consume-pN beside ackd-consume (the default)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.n == 0 {
		o.n = 100_000
		if o.quick {
			o.n = 10_000
		}
	}
	if o.n < 1000 {
		return o, fmt.Errorf("-n %d: at least 1000", o.n)
	}
	if o.producers < 1 || o.producers > 64 {
		return o, fmt.Errorf("-producers %d: must be 1 to 64", o.producers)
	}
	if o.backlog < 1 {
		return o, fmt.Errorf("-backlog %d: must be at least 1", o.backlog)
	}
	for c := range strings.SplitSeq(*consumers, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || k < 1 || k > 128 {
			return o, fmt.Errorf("-consumers %q: want counts of 1 to 128, comma-separated", *consumers)
		}
		o.consumers = append(o.consumers, k)
	}
	if *prefetch != "" {
		for p := range strings.SplitSeq(*prefetch, ",") {
			k, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || k > lease.MaxBatch {
				return o, fmt.Errorf("-prefetch %q: want values up to %d, comma-separated", *prefetch, lease.MaxBatch)
			}
			o.extra = append(o.extra, consumeVariant(k))
		}
	}
	o.variants = map[string]bool{}
	if *variants != "" {
		for v := range strings.SplitSeq(*variants, ",") {
			v = strings.TrimSpace(v)
			if !slices.ContainsFunc(tputVariants, func(t tputVariant) bool { return t.key == v }) {
				return o, fmt.Errorf("-variants: unknown system %q", v)
			}
			o.variants[v] = true
		}
		for _, v := range o.extra {
			o.variants[v.key] = true
		}
	}
	o.only = map[string]bool{}
	if *only != "" {
		for s := range strings.SplitSeq(*only, ",") {
			s = strings.TrimSpace(s)
			if !slices.Contains(sectionNames, s) {
				return o, fmt.Errorf("-only: unknown section %q (have %s)", s, strings.Join(sectionNames, ", "))
			}
			o.only[s] = true
		}
	}
	return o, nil
}

func (o options) runs(section string) bool { return len(o.only) == 0 || o.only[section] }

func (o options) variant(key string) bool { return len(o.variants) == 0 || o.variants[key] }

// allVariants are the systems of the throughput sections: tputVariants,
// then the Consume variants of -prefetch.
func (o options) allVariants() []tputVariant { return append(slices.Clip(tputVariants), o.extra...) }

// daemonMissing reports, once, that the daemon is not available.
func (b *bench) daemonMissing(ctx context.Context) bool {
	_, err := b.ackdBinary(ctx)
	return err != nil
}

// bench is one run: the server, its clients and the report being built.
type bench struct {
	opt options
	srv *server
	ctl *redis.Client // INFO, FLUSHALL and setup; not counted
	rdb *redis.Client // the measured traffic; every round trip counted
	rt  *rtCounter
	log io.Writer

	sections []string // rendered markdown, in order
	targets  []target

	ackdPath string // built on first use
	ackdErr  error
	ackdDir  string
}

// target is one goal of the suite and whether this run met it.
type target struct {
	name, goal, figure string
	met                bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	opt, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if opt.cpuProfile != "" {
		f, err := os.Create(opt.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	srv, err := startServer()
	if err != nil {
		return err
	}
	defer srv.stop()
	rt := &rtCounter{}
	b := &bench{
		opt: opt,
		srv: srv,
		ctl: redis.NewClient(&redis.Options{Addr: srv.addr(), PoolSize: 4, ReadTimeout: time.Minute}),
		rdb: redis.NewClient(&redis.Options{Addr: srv.addr(), PoolSize: 256, MinIdleConns: 70}),
		rt:  rt,
		log: stderr,
	}
	b.rdb.AddHook(rt)
	defer b.ctl.Close()
	defer b.rdb.Close()
	defer b.cleanupAckd()

	start := time.Now()
	facts, err := b.machineFacts(ctx)
	if err != nil {
		return err
	}
	sections := []struct {
		name string
		run  func(context.Context) error
	}{
		{"concurrent", b.concurrent},
		{"throughput", b.throughput},
		{"latency", b.latency},
		{"memory", b.memory},
		{"redelivery", b.redelivery},
		{"idle", b.idle},
	}
	// A section that fails is reported as failed and the others still
	// run: the figures of a long run are not lost to one section.
	var failed error
	for _, s := range sections {
		if !opt.runs(s.name) {
			continue
		}
		t0 := time.Now()
		b.logf("== %s", s.name)
		if err := s.run(ctx); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			b.logf("== %s failed: %v", s.name, err)
			b.sections = append(b.sections, fmt.Sprintf("## %s: failed\n\n%s\n", s.name, err))
			failed = errors.Join(failed, fmt.Errorf("%s: %w", s.name, err))
			continue
		}
		b.logf("== %s done in %v", s.name, time.Since(t0).Round(time.Second))
	}

	var doc strings.Builder
	doc.WriteString("# ackd benchmark report\n\n")
	fmt.Fprintf(&doc, "Command: `%s`\n\n", b.commandLine())
	doc.WriteString(facts)
	fmt.Fprintf(&doc, "- Load average after the run: %s\n- Wall time of the run: %v\n\n", loadAvg(), time.Since(start).Round(time.Second))
	if len(b.targets) > 0 {
		doc.WriteString("## Targets\n\n")
		rows := make([][]string, 0, len(b.targets))
		for _, t := range b.targets {
			met := "missed"
			if t.met {
				met = "met"
			}
			rows = append(rows, []string{t.name, t.goal, t.figure, met})
		}
		doc.WriteString(table([]string{"target", "goal", "this run", "met?"}, rows))
		doc.WriteString("\n")
	}
	for _, s := range b.sections {
		doc.WriteString(s)
		doc.WriteString("\n")
	}
	w := stdout
	if opt.out != "" {
		f, err := os.Create(opt.out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	if _, err := io.WriteString(w, doc.String()); err != nil {
		return err
	}
	return failed
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (b *bench) commandLine() string {
	parts := []string{"go run ./cmd/ackbench"}
	for _, a := range b.opt.args {
		if a == "" || strings.ContainsAny(a, " \t'\"$") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func (b *bench) addTarget(name, goal, figure string, met bool) {
	b.targets = append(b.targets, target{name: name, goal: goal, figure: figure, met: met})
}

// reset empties the server and returns a fresh lease client over the
// measured connection pool.
func (b *bench) reset(ctx context.Context) (*lease.Client, error) {
	if err := b.ctl.FlushAll(ctx).Err(); err != nil {
		return nil, fmt.Errorf("FLUSHALL: %w", err)
	}
	return lease.New(b.rdb, &lease.Config{LeaseFor: time.Hour, MaxDeliveries: lease.Unlimited})
}

func (b *bench) stats(ctx context.Context) (stats, error) { return readStats(ctx, b.ctl) }

// rtCounter counts round trips of the measured client: each command is one,
// each pipeline is one.
type rtCounter struct{ n atomic.Int64 }

func (c *rtCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *rtCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *rtCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}
