package lease_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// The examples run against one private redis-server, started by the first
// example that needs it and stopped when the test binary exits.
var example redistest.Shared

// exampleAddr returns the address of the examples' redis-server.
func exampleAddr() string { return example.Addr() }

func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m, &example, "lease")) }

func Example_pushTakeAck() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}

	if _, err := c.Push(ctx, "emails", []byte("welcome alice"), nil); err != nil {
		log.Fatal(err)
	}
	l, err := c.Take(ctx, "emails", &lease.TakeOpts{Wait: time.Second})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (attempt %d)\n", l.Payload, l.Attempt)
	if err := l.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	s, err := c.Stats(ctx, "emails")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("ready %d, in flight %d\n", s.Ready, s.InFlight)
	// Output:
	// welcome alice (attempt 1)
	// ready 0, in flight 0
}

func Example_nack() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}

	if _, err := c.Push(ctx, "resize", []byte("cat.jpg"), nil); err != nil {
		log.Fatal(err)
	}
	l, err := c.Take(ctx, "resize", nil)
	if err != nil {
		log.Fatal(err)
	}
	// Processing failed: give it back at once (or pass a delay).
	if err := l.Nack(ctx, 0); err != nil {
		log.Fatal(err)
	}
	again, err := c.Take(ctx, "resize", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: attempt %d, same id: %v\n", again.Payload, again.Attempt, again.ID == l.ID)
	// The first delivery's token holds nothing now.
	fmt.Println(errors.Is(l.Ack(ctx), lease.ErrNotHeld))
	if err := again.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// cat.jpg: attempt 2, same id: true
	// true
}

func Example_plainProducer() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}

	// A producer that knows nothing of ackd: RPUSH onto the ready list.
	if err := rdb.RPush(ctx, lease.KeysFor("legacy").Ready, "raw job").Err(); err != nil {
		log.Fatal(err)
	}
	l, err := c.Take(ctx, "legacy", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s, with an id: %v\n", l.Payload, l.ID != "")
	if err := l.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// raw job, with an id: true
}

func Example_deadLetters() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}

	if _, err := c.Push(ctx, "payments", []byte("charge 42"), &lease.PushOpts{MaxDeliveries: 1}); err != nil {
		log.Fatal(err)
	}
	l, err := c.Take(ctx, "payments", nil)
	if err != nil {
		log.Fatal(err)
	}
	// Its only delivery failed: it goes to the dead set.
	if err := l.Nack(ctx, time.Second); err != nil {
		log.Fatal(err)
	}
	dead, err := c.DeadLetters(ctx, "payments", 0, 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dead {
		fmt.Printf("%s: %s after %d attempt(s)\n", d.Payload, d.Reason, d.Attempts)
	}
	// Fixed the bug? Put it back with fresh attempts.
	n, err := c.Replay(ctx, "payments")
	if err != nil {
		log.Fatal(err)
	}
	l, err = c.Take(ctx, "payments", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("replayed %d: %s (attempt %d)\n", n, l.Payload, l.Attempt)
	if err := l.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// charge 42: failed after 1 attempt(s)
	// replayed 1: charge 42 (attempt 1)
}

func ExampleClient_Consume() {
	ctx, cancel := context.WithCancel(context.Background())
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}

	if _, err := c.Push(ctx, "thumbnails", []byte("dog.png"), nil); err != nil {
		log.Fatal(err)
	}
	err = c.Consume(ctx, "thumbnails", func(ctx context.Context, l *lease.Lease) error {
		fmt.Printf("handling %s\n", l.Payload)
		cancel() // stop after this one; it is still acked
		return nil
	}, &lease.ConsumeOpts{Workers: 4})
	fmt.Println("Consume returned", err)
	s, err := c.Stats(context.Background(), "thumbnails")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("in flight %d\n", s.InFlight)
	// Output:
	// handling dog.png
	// Consume returned <nil>
	// in flight 0
}

func ExampleParseLeaseKey() {
	queue, token, ok := lease.ParseLeaseKey("ackd:{emails}:lease:9f86d081884c7d65")
	fmt.Println(queue, token, ok)
	_, _, ok = lease.ParseLeaseKey("ackd:{emails}:ready")
	fmt.Println(ok)
	// Output:
	// emails 9f86d081884c7d65 true
	// false
}
