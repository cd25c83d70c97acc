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

// A consumer loop without Consume: each AckAndTake acks the message just
// handled and leases the next one, in one round trip. Look at the lease
// it returns before its error: a lease is returned even when the ack
// failed, and must be handled.
func ExampleLease_AckAndTake() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range []string{"a", "b", "c"} {
		if _, err := c.Push(ctx, "thumbnails", []byte(p), nil); err != nil {
			log.Fatal(err)
		}
	}

	opts := &lease.TakeOpts{Wait: 100 * time.Millisecond}
	l, err := c.Take(ctx, "thumbnails", opts)
	for l != nil {
		fmt.Printf("made thumbnail %s\n", l.Payload)
		var next *lease.Lease
		next, err = l.AckAndTake(ctx, opts)
		switch {
		case errors.Is(err, lease.ErrAckUnconfirmed):
			// Not known to be acked (a network error, say): ack again.
			// ErrNotHeld then means the first ack held.
			if aerr := l.Ack(ctx); aerr != nil && !errors.Is(aerr, lease.ErrNotHeld) {
				log.Print(aerr)
			}
		case errors.Is(err, lease.ErrNotHeld):
			// The lease ran out before the ack: the message is, or will
			// be, delivered again. next, if any, is still ours.
			log.Print(err)
		}
		l = next
	}
	if !errors.Is(err, lease.ErrNoMessage) {
		log.Fatal(err) // a take, or a whole call, that failed
	}
	s, err := c.Stats(ctx, "thumbnails")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("ready %d, in flight %d\n", s.Ready, s.InFlight)
	// Output:
	// made thumbnail a
	// made thumbnail b
	// made thumbnail c
	// ready 0, in flight 0
}
