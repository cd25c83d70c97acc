package lease_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

// An operator pauses a queue while a downstream system is down: producers
// go on pushing, consumers get nothing until Resume.
func ExampleClient_Pause() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}

	if _, err := c.Pause(ctx, "invoices"); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Push(ctx, "invoices", []byte("invoice 7"), nil); err != nil {
		log.Fatal(err)
	}
	_, err = c.Take(ctx, "invoices", &lease.TakeOpts{Wait: 300 * time.Millisecond})
	fmt.Println("while paused:", errors.Is(err, lease.ErrNoMessage))
	s, err := c.Stats(ctx, "invoices")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("paused %v, ready %d\n", s.Paused, s.Ready)

	if _, err := c.Resume(ctx, "invoices"); err != nil {
		log.Fatal(err)
	}
	l, err := c.Take(ctx, "invoices", &lease.TakeOpts{Wait: time.Second})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("after resume: %s\n", l.Payload)
	if err := l.Ack(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// while paused: true
	// paused true, ready 1
	// after resume: invoice 7
}

// Find out why messages die, replay one kind and purge the rest, in
// bounded batches.
func ExampleClient_ReplayAll() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, &lease.Config{MaxDeliveries: 1})
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range []string{"ship 1", "ship 2", "ship 3"} {
		if _, err := c.Push(ctx, "shipments", []byte(p), nil); err != nil {
			log.Fatal(err)
		}
		l, err := c.Take(ctx, "shipments", nil)
		if err != nil {
			log.Fatal(err)
		}
		if p == "ship 3" {
			err = l.DeadLetter(ctx) // poison
		} else {
			err = l.Nack(ctx, 0) // its only delivery failed
		}
		if err != nil {
			log.Fatal(err)
		}
	}

	reasons, err := c.DeadReasons(ctx, "shipments")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("dead:", reasons)
	page, err := c.Peek(ctx, "shipments", lease.StateDead, &lease.PeekOpts{Reason: lease.ReasonFailed, Preview: 20})
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range page.Messages {
		fmt.Printf("%s: %s, %d bytes\n", m.Preview, m.Reason, m.Size)
	}

	n, err := c.ReplayAll(ctx, "shipments", &lease.DeadOpts{Reason: lease.ReasonFailed})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("replayed", n)
	n, err = c.PurgeAll(ctx, "shipments", nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("purged", n)
	// Output:
	// dead: map[failed:2 killed:1]
	// ship 1: failed, 6 bytes
	// ship 2: failed, 6 bytes
	// replayed 2
	// purged 1
}
