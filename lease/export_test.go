package lease

import (
	"context"
	"time"
)

// AckTake exposes ackTake to the package's external tests and benchmarks.
func (c *Client) AckTake(ctx context.Context, queue string, done []*Lease, n int, leaseFor time.Duration) ([]*Lease, []error, error) {
	return c.ackTake(ctx, queue, done, n, leaseFor)
}
