package lease

import (
	"context"
	"fmt"
	"time"
)

// PushOpts are per-push options. A nil *PushOpts means all defaults.
type PushOpts struct {
	// LeaseFor is the lease consumers get for this message unless their
	// take says otherwise. Zero means the consumer's Config.LeaseFor.
	LeaseFor time.Duration
	// Delay keeps the message invisible for this long. Zero means ready
	// at once.
	Delay time.Duration
	// MaxDeliveries overrides Config.MaxDeliveries for this message
	// (Unlimited for no maximum). Zero means the Config's.
	MaxDeliveries int
}

// Push adds one message to the tail of queue and returns its id.
func (c *Client) Push(ctx context.Context, queue string, payload []byte, opts *PushOpts) (string, error) {
	ids, err := c.PushBatch(ctx, queue, [][]byte{payload}, opts)
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// PushBatch adds payloads, in order, to the tail of queue in one round trip
// and returns their ids. Either all are pushed or none. Identical payloads
// are distinct messages.
func (c *Client) PushBatch(ctx context.Context, queue string, payloads [][]byte, opts *PushOpts) ([]string, error) {
	if err := ValidateQueue(queue); err != nil {
		return nil, err
	}
	if len(payloads) == 0 || len(payloads) > MaxBatch {
		return nil, fmt.Errorf("%w: push of %d messages: must be 1 to %d", ErrInvalidArgument, len(payloads), MaxBatch)
	}
	var o PushOpts
	if opts != nil {
		o = *opts
	}
	if o.LeaseFor != 0 {
		if err := checkDuration("PushOpts.LeaseFor", o.LeaseFor); err != nil {
			return nil, err
		}
	}
	if o.Delay != 0 {
		if err := checkDuration("PushOpts.Delay", o.Delay); err != nil {
			return nil, err
		}
	}
	maxd := c.cfg.MaxDeliveries
	switch {
	case o.MaxDeliveries == 0:
	case o.MaxDeliveries == Unlimited || o.MaxDeliveries > 0:
		maxd = o.MaxDeliveries
	default:
		return nil, fmt.Errorf("%w: PushOpts.MaxDeliveries %d: must be at least 1, or Unlimited", ErrInvalidArgument, o.MaxDeliveries)
	}
	if maxd == Unlimited {
		maxd = 0 // unlimited, as stored
	}
	for i, p := range payloads {
		if len(p) > c.cfg.MaxPayload {
			return nil, fmt.Errorf("%w: message %d is %d bytes, at most %d", ErrPayloadTooLarge, i, len(p), c.cfg.MaxPayload)
		}
	}
	if err := c.register(ctx, queue); err != nil {
		return nil, err
	}

	ids := c.newIDs(len(payloads), time.Now().Add(o.Delay))
	envs := make([]any, len(payloads))
	for i, p := range payloads {
		e := envelope{ID: ids[i], Max: maxd, LeaseMS: ms(o.LeaseFor), Payload: p}
		envs[i] = e.appendTo(make([]byte, 0, len(envelopeMark)+len(ids[i])+16+len(p)))
	}
	k := KeysFor(queue)
	var err error
	if o.Delay == 0 {
		// An immediate push is one RPUSH: atomic without a script.
		err = c.rdb.RPush(ctx, k.Ready, envs...).Err()
	} else {
		args := append([]any{ms(o.Delay), WakeChannel, queue}, envs...)
		err = pushScript.Run(ctx, c.rdb, []string{k.Delayed}, args...).Err()
	}
	if err != nil {
		return nil, fmt.Errorf("lease: push to %s: %w", queue, convertErr(err))
	}
	return ids, nil
}
