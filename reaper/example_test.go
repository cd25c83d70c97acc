package reaper_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

// The example runs against a private redis-server, started when it needs
// it and stopped when the test binary exits.
var example redistest.Shared

func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m, &example, "reaper")) }

// A consumer process that runs its own reaper beside its workers: a lease
// a worker loses comes back as soon as it runs out, with no ackd daemon
// deployed. Any number of such processes (and daemons) may share a Redis;
// each lease is still requeued once.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: example.Addr()})
	defer rdb.Close()

	rp, err := reaper.New(rdb, &reaper.Config{Queues: []string{"emails"}})
	if err != nil {
		log.Fatal(err)
	}
	reaped := make(chan error, 1)
	go func() { reaped <- rp.Run(ctx) }()

	lc, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := lc.Push(ctx, "emails", []byte("welcome alice"), nil); err != nil {
		log.Fatal(err)
	}
	l, err := lc.Take(ctx, "emails", &lease.TakeOpts{LeaseFor: 50 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("attempt %d: %s (the worker hangs, never acks)\n", l.Attempt, l.Payload)

	// The lease runs out and the reaper puts the message back.
	l, err = lc.Take(ctx, "emails", &lease.TakeOpts{Wait: 10 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("attempt %d: %s\n", l.Attempt, l.Payload)
	if err := l.Ack(ctx); err != nil {
		log.Fatal(err)
	}

	cancel() // the process shuts down: Run returns once running sweeps end
	if err := <-reaped; err != nil {
		log.Fatal(err)
	}
	// Output:
	// attempt 1: welcome alice (the worker hangs, never acks)
	// attempt 2: welcome alice
}
