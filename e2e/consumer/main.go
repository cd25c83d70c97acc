//go:build e2e

// Command consumer is the application the e2e suite runs, kills and
// restarts. It takes messages from one queue with the lease library,
// records each handling in Redis (see e2e/internal/journal) before it acks,
// and can misbehave on purpose:
//
//	-crash-after N     SIGKILL itself right after recording its N-th take, before acking
//	-crash-prefix P    SIGKILL itself on a message whose payload starts with P
//	-nack-prefix P     nack (no delay) every message whose payload starts with P
//	-abandon-every N   drop every N-th take without settling it (its lease runs out)
//	-stall             every worker takes one message and hangs without acking
//	-stale-ack         every worker takes one message, waits until another
//	                   consumer holds it, then acks it and prints the result
//	-consume           run lease.Consume, the library's worker loop, instead
//	                   of its own take loop (with -work, -slow-prefix, -slow,
//	                   -stop-timeout, -nack-prefix, -crash-prefix)
//
// It prints "ready" on stdout once connected, and exits 0 on SIGTERM after
// settling what it holds. With -consume, SIGTERM starts Consume's stop:
// handlers get -stop-timeout to finish, then the leases of the others are
// released; it prints "bye interrupted=N" (N handlers whose lease was
// released).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/e2e/internal/journal"
	"github.com/ackd/ackd/lease"
)

type options struct {
	redisURL     string
	queue        string
	leaseFor     time.Duration
	workers      int
	work         time.Duration
	crashAfter   int64
	crashPrefix  string
	nackPrefix   string
	abandonEvery int64
	stall        bool
	staleAck     bool
	consume      bool
	slowPrefix   string
	slow         time.Duration
	stopTimeout  time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.redisURL, "redis", "", "Redis URL (required)")
	flag.StringVar(&o.queue, "queue", "e2e", "queue to consume")
	flag.DurationVar(&o.leaseFor, "lease", 300*time.Millisecond, "lease of every take")
	flag.IntVar(&o.workers, "workers", 4, "concurrent workers")
	flag.DurationVar(&o.work, "work", 0, "each message takes a random time up to this to process")
	flag.Int64Var(&o.crashAfter, "crash-after", 0, "SIGKILL self after the N-th take, before acking (0: never)")
	flag.StringVar(&o.crashPrefix, "crash-prefix", "", "SIGKILL self on payloads with this prefix")
	flag.StringVar(&o.nackPrefix, "nack-prefix", "", "nack payloads with this prefix")
	flag.Int64Var(&o.abandonEvery, "abandon-every", 0, "drop every N-th take without settling it (0: never)")
	flag.BoolVar(&o.stall, "stall", false, "take one message per worker and never settle it")
	flag.BoolVar(&o.staleAck, "stale-ack", false, "take one message per worker, ack it after it was redelivered")
	flag.BoolVar(&o.consume, "consume", false, "use lease.Consume")
	flag.StringVar(&o.slowPrefix, "slow-prefix", "", "with -consume: payloads with this prefix take -slow to process")
	flag.DurationVar(&o.slow, "slow", 2*time.Second, "processing time of -slow-prefix payloads")
	flag.DurationVar(&o.stopTimeout, "stop-timeout", time.Second, "with -consume: ConsumeOpts.StopTimeout")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	if o.redisURL == "" {
		return errors.New("-redis is required")
	}
	opt, err := redis.ParseURL(o.redisURL)
	if err != nil {
		return err
	}
	opt.PoolSize = o.workers + 4
	// No silent retries: a command whose reply was lost must surface as
	// an error, so that the journal records the uncertainty (a retried ack
	// that already went through would answer "not held").
	opt.MaxRetries = -1
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	lc, err := lease.New(rdb, &lease.Config{MaxDeliveries: lease.Unlimited})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	c := &consumer{o: o, rdb: rdb, lc: lc}
	fmt.Printf("ready pid=%d\n", os.Getpid())

	if o.consume {
		return c.consume(ctx)
	}
	if o.staleAck {
		return c.staleAcks(ctx)
	}
	var wg sync.WaitGroup
	for range o.workers {
		wg.Go(func() { c.worker(ctx) })
	}
	wg.Wait()
	fmt.Println("bye")
	return nil
}

// staleAcks takes one message per worker in calls that follow each other,
// before any lease can run out (a worker that started late would take a
// message another had let expire), then has each worker wait for its
// message's redelivery and ack with the old lease.
func (c *consumer) staleAcks(ctx context.Context) error {
	sctx := context.WithoutCancel(ctx)
	var ls []*lease.Lease
	for len(ls) < c.o.workers {
		got, err := c.lc.TakeBatch(ctx, c.o.queue, c.o.workers-len(ls), &lease.TakeOpts{Wait: time.Second, LeaseFor: c.o.leaseFor})
		if errors.Is(err, lease.ErrNoMessage) {
			continue
		}
		if err != nil {
			return fmt.Errorf("take: %w", err)
		}
		ls = append(ls, got...)
	}
	var wg sync.WaitGroup
	for _, l := range ls {
		h := journal.NewHandling(sctx, c.rdb, l)
		wg.Go(func() { c.staleAck(sctx, l, h) })
	}
	wg.Wait()
	fmt.Println("bye")
	return nil
}

// consume runs lease.Consume until SIGTERM, as a production consumer
// would. Each handler records its handling in the journal and settles the
// lease itself (so that the journal holds the result); Consume leaves a
// lease its handler settled alone.
func (c *consumer) consume(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		c.stopping.Store(true)
	}()
	err := c.lc.Consume(ctx, c.o.queue, c.handle, &lease.ConsumeOpts{
		Workers:     c.o.workers,
		LeaseFor:    c.o.leaseFor,
		StopTimeout: c.o.stopTimeout,
		ErrorFunc: func(l *lease.Lease, err error) {
			if !errors.Is(err, context.Canceled) {
				fmt.Fprintln(os.Stderr, "consumer: consume:", err)
			}
		},
	})
	if err != nil {
		return err
	}
	fmt.Printf("bye interrupted=%d\n", c.interrupted.Load())
	return nil
}

// handle processes one delivery under Consume. Once the process is told
// to stop, it commits nothing more: a handler that has not recorded its
// handling by then waits until Consume cancels it and releases its lease,
// so that a released delivery was never handled.
func (c *consumer) handle(ctx context.Context, l *lease.Lease) error {
	sctx := context.WithoutCancel(ctx)
	h := journal.NewHandling(sctx, c.rdb, l)
	work := time.Duration(0)
	if c.o.work > 0 {
		work = rand.N(c.o.work)
	}
	if c.o.slowPrefix != "" && strings.HasPrefix(h.Payload, c.o.slowPrefix) {
		work = c.o.slow
	}
	t := time.NewTimer(work)
	defer t.Stop()
	select {
	case <-ctx.Done():
		c.interrupted.Add(1)
		return ctx.Err()
	case <-t.C:
	}
	if c.stopping.Load() {
		<-ctx.Done()
		c.interrupted.Add(1)
		return ctx.Err()
	}
	if err := journal.Record(sctx, c.rdb, c.o.queue, h); err != nil {
		return err
	}
	if c.o.crashPrefix != "" && strings.HasPrefix(h.Payload, c.o.crashPrefix) {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is on its way
	}
	if c.o.nackPrefix != "" && strings.HasPrefix(h.Payload, c.o.nackPrefix) {
		_, err := journal.Nack(sctx, c.rdb, l, 0)
		return err
	}
	_, err := journal.Ack(sctx, c.rdb, l)
	return err
}

type consumer struct {
	o     options
	rdb   *redis.Client
	lc    *lease.Client
	takes atomic.Int64
	out   sync.Mutex
	// stopping is set on SIGTERM; interrupted counts handlers Consume
	// cancelled (their leases were released).
	stopping    atomic.Bool
	interrupted atomic.Int64
}

func (c *consumer) printf(format string, args ...any) {
	c.out.Lock()
	defer c.out.Unlock()
	fmt.Printf(format, args...)
}

func (c *consumer) worker(ctx context.Context) {
	// Settling uses a context that outlives SIGTERM: a worker finishes
	// what it holds before the process exits.
	sctx := context.WithoutCancel(ctx)
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		l, err := c.lc.Take(ctx, c.o.queue, &lease.TakeOpts{Wait: time.Second, LeaseFor: c.o.leaseFor})
		if errors.Is(err, lease.ErrNoMessage) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fmt.Fprintln(os.Stderr, "consumer: take:", err)
			sleep(ctx, backoff)
			backoff = min(2*backoff, 200*time.Millisecond)
			continue
		}
		backoff = 10 * time.Millisecond
		n := c.takes.Add(1)
		h := journal.NewHandling(sctx, c.rdb, l)

		switch {
		case c.o.stall:
			<-ctx.Done()
			return
		case c.o.abandonEvery > 0 && n%c.o.abandonEvery == 0:
			continue
		}

		if c.o.work > 0 {
			sleep(sctx, rand.N(c.o.work))
		}
		if err := journal.Record(sctx, c.rdb, c.o.queue, h); err != nil {
			fmt.Fprintln(os.Stderr, "consumer:", err)
			continue
		}
		if (c.o.crashAfter > 0 && n >= c.o.crashAfter) ||
			(c.o.crashPrefix != "" && strings.HasPrefix(h.Payload, c.o.crashPrefix)) {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // SIGKILL is on its way
		}
		if c.o.nackPrefix != "" && strings.HasPrefix(h.Payload, c.o.nackPrefix) {
			if _, err := journal.Nack(sctx, c.rdb, l, 0); err != nil {
				fmt.Fprintln(os.Stderr, "consumer: nack:", err)
			}
			continue
		}
		if _, err := journal.Ack(sctx, c.rdb, l); err != nil {
			fmt.Fprintln(os.Stderr, "consumer: ack:", err)
		}
	}
}

// staleAck waits until l's message has been delivered again (another
// token holds a lease of it), then acks with the old lease.
func (c *consumer) staleAck(ctx context.Context, l *lease.Lease, h journal.Handling) {
	c.printf("took %s %s attempt=%d\n", l.ID, l.Token, l.Attempt)
	key := lease.KeysFor(l.Queue).Held
	deadline := time.Now().Add(time.Minute)
	redelivered := func() bool {
		held, err := c.rdb.HGetAll(ctx, key).Result()
		if err != nil {
			return false
		}
		return slices.ContainsFunc(journal.Flights(held, nil), func(f journal.Flight) bool {
			return f.Token != l.Token && f.Env.ID == l.ID
		})
	}
	for {
		if redelivered() {
			break
		}
		if time.Now().After(deadline) {
			c.printf("stale-ack %s timeout\n", l.ID)
			return
		}
		sleep(ctx, 5*time.Millisecond) // polling Redis for the redelivery
	}
	if err := journal.Record(ctx, c.rdb, c.o.queue, h); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		return
	}
	res, err := journal.Ack(ctx, c.rdb, l)
	c.printf("stale-ack %s %s %v\n", l.ID, res, err)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
