package lease

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Handler processes one leased message. Returning nil acks it; returning
// an error nacks it with backoff. Its ctx is cancelled if the lease is lost
// (it ran out and the message went to another consumer).
type Handler func(ctx context.Context, l *Lease) error

// Defaults for ConsumeOpts.
const (
	WorkersDefault     = 10
	BackoffBaseDefault = time.Second
	BackoffMaxDefault  = 5 * time.Minute
)

// ConsumeOpts configure Consume. A nil *ConsumeOpts means all defaults.
type ConsumeOpts struct {
	// Workers is how many handlers run at once. Defaults to 10.
	Workers int
	// LeaseFor overrides the lease duration of every take (see
	// TakeOpts.LeaseFor). Zero means the message's own or the Config's.
	LeaseFor time.Duration
	// BackoffFunc gives the nack delay after a handler error on the given
	// attempt (1-based). Defaults to DefaultBackoff.
	BackoffFunc func(attempt int) time.Duration
	// ErrorFunc, if set, is told of every handler error and of Redis
	// errors the loop rides out. Defaults to logging them.
	ErrorFunc func(l *Lease, err error)
}

// DefaultBackoff doubles from 1 second per attempt up to 5 minutes, with
// ±20% jitter so that failing messages do not return in lockstep.
func DefaultBackoff(attempt int) time.Duration {
	d := BackoffBaseDefault
	for i := 1; i < attempt && d < BackoffMaxDefault; i++ {
		d *= 2
	}
	d = min(d, BackoffMaxDefault)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// Consume runs h on queue's messages with opts.Workers concurrent
// handlers until ctx is cancelled. One goroutine takes messages in batches
// as workers free up; each lease is extended in the background while its
// handler runs (every third of its duration). A handler's nil acks, an
// error or a panic nacks with backoff.
//
// On cancel it stops taking, lets running handlers finish and settle their
// leases, and returns nil. Redis errors are ridden out with backoff, never
// returned. Consume keeps one connection blocked while the queue is empty.
func (c *Client) Consume(ctx context.Context, queue string, h Handler, opts *ConsumeOpts) error {
	if err := ValidateQueue(queue); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrInvalidArgument)
	}
	var o ConsumeOpts
	if opts != nil {
		o = *opts
	}
	if o.Workers == 0 {
		o.Workers = WorkersDefault
	}
	if o.Workers < 1 || o.Workers > MaxBatch {
		return fmt.Errorf("%w: ConsumeOpts.Workers %d: must be 1 to %d", ErrInvalidArgument, o.Workers, MaxBatch)
	}
	if o.LeaseFor != 0 {
		if err := checkDuration("ConsumeOpts.LeaseFor", o.LeaseFor); err != nil {
			return err
		}
	}
	if o.BackoffFunc == nil {
		o.BackoffFunc = DefaultBackoff
	}
	if o.ErrorFunc == nil {
		o.ErrorFunc = func(l *Lease, err error) {
			if l != nil {
				c.cfg.Logger.Warn("consume", "queue", queue, "message_id", l.ID, "attempt", l.Attempt, "error", err)
			} else {
				c.cfg.Logger.Warn("consume", "queue", queue, "error", err)
			}
		}
	}

	slots := make(chan struct{}, o.Workers)
	for range o.Workers {
		slots <- struct{}{}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	retry := 0
	for {
		// Wait for one free worker, then take as many as are free.
		select {
		case <-ctx.Done():
			return nil
		case <-slots:
		}
		n := 1
	more:
		for n < o.Workers {
			select {
			case <-slots:
				n++
			default:
				break more
			}
		}
		ls, err := c.TakeBatch(ctx, queue, n, &TakeOpts{Wait: blockChunk, LeaseFor: o.LeaseFor})
		for range n - len(ls) {
			slots <- struct{}{}
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			o.ErrorFunc(nil, err)
			retry++
			if !sleepCtx(ctx, retryDelay(retry)) {
				return nil
			}
			continue
		}
		retry = 0
		for _, l := range ls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { slots <- struct{}{} }()
				c.handle(context.WithoutCancel(ctx), l, h, &o)
			}()
		}
	}
}

// handle runs h on l with a heartbeat and settles the lease.
func (c *Client) handle(ctx context.Context, l *Lease, h Handler, o *ConsumeOpts) {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The lease's length, by the local clock. A client clock far ahead of
	// Redis's would make it negative: then fall back to the configured one.
	d := time.Until(l.Deadline())
	if d < time.Millisecond {
		d = cmp.Or(o.LeaseFor, c.cfg.LeaseFor)
	}
	stop := make(chan struct{})
	var lost error
	var beat sync.WaitGroup
	beat.Add(1)
	go func() {
		defer beat.Done()
		t := time.NewTicker(max(d/3, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if err := l.Extend(ctx, d); err != nil {
					if errors.Is(err, ErrNotHeld) || errors.Is(err, ErrStale) {
						lost = err
						cancel()
						return
					}
					o.ErrorFunc(l, err)
				}
			}
		}
	}()
	err := runHandler(hctx, l, h)
	close(stop)
	beat.Wait()
	if lost != nil {
		o.ErrorFunc(l, fmt.Errorf("lease lost while handling: %w", lost))
		return
	}
	if err == nil {
		if err := l.Ack(ctx); err != nil {
			o.ErrorFunc(l, err)
		}
		return
	}
	o.ErrorFunc(l, err)
	delay := max(o.BackoffFunc(l.Attempt), 0)
	if delay > 0 && delay < time.Millisecond {
		delay = time.Millisecond
	}
	if err := l.Nack(ctx, delay); err != nil {
		o.ErrorFunc(l, err)
	}
}

func runHandler(ctx context.Context, l *Lease, h Handler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("lease: handler panic: %v", r)
		}
	}()
	return h(ctx, l)
}

func retryDelay(n int) time.Duration {
	d := 50 * time.Millisecond << min(n, 7)
	return min(d, 5*time.Second)
}

// sleepCtx waits d or until ctx is done; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
