package lease_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// BenchmarkReplicas measures what Config.Replicas costs: one message
// pushed, taken and acked (three state changes, each followed by WAIT 1
// when on) against a master with one replica, both on loopback:
//
//	go test -run '^$' -bench Replicas -benchtime 5000x ./lease/
func BenchmarkReplicas(b *testing.B) {
	master, _ := redistest.StartReplicated(b)
	rdb := redis.NewClient(&redis.Options{Addr: master.Addr(), PoolSize: 32})
	b.Cleanup(func() { _ = rdb.Close() })
	e := &benchEnv{rdb: rdb, payload: []byte(strings.Repeat("p", benchPayloadSize))}
	for _, conc := range benchConcurrency {
		for _, replicas := range []int{0, 1} {
			b.Run(fmt.Sprintf("replicas=%d/c=%d", replicas, conc), func(b *testing.B) {
				e.reset(b)
				c, err := lease.New(rdb, &lease.Config{LeaseFor: time.Hour, Replicas: replicas})
				if err != nil {
					b.Fatal(err)
				}
				e.measure(b, conc, 1, func(ctx context.Context, w, _ int) error {
					q := fmt.Sprintf("q%d", w)
					if _, err := c.Push(ctx, q, e.payload, nil); err != nil {
						return err
					}
					l, err := c.Take(ctx, q, nil)
					if err != nil {
						return err
					}
					return l.Ack(ctx)
				})
			})
		}
	}
}
