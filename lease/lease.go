package lease

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Lease is one delivery of one message. Its methods end the lease (Ack,
// Nack, DeadLetter) or keep it (Extend). Every method carries the lease's
// token, which names this delivery alone: once the lease has ended (acked,
// run out and requeued, released, dead-lettered), they fail with
// ErrNotHeld and change nothing, even when the message has been delivered
// again and another consumer holds it now.
type Lease struct {
	Queue   string
	ID      string // the message's id, the same on every delivery
	Payload []byte
	// Attempt counts deliveries of this message, this one included
	// (1 on the first delivery).
	Attempt int
	// MaxDeliveries is the message's maximum, or Unlimited.
	MaxDeliveries int
	// Token identifies this delivery; it fences the methods below.
	Token string

	deadline atomic.Int64 // ms since the epoch, by Redis's clock
	// settled is set once one of the methods that end the lease was
	// called, before its script is sent: Consume then leaves the lease
	// to the handler, and a heartbeat that finds it gone knows why.
	settled atomic.Bool
	// ended is set once Redis answered such a call: the lease is over
	// (ended by it, or gone before), and a heartbeat stops. A call that
	// got no answer (a timeout) leaves it unset: the lease may still be
	// held, and the handler may try again.
	ended atomic.Bool
	// sent is when the take that made this lease was sent (monotonic):
	// its deadline was set no earlier. Zero for LeaseOf.
	sent time.Time
	// byID is set by LeaseOf: the scripts check that the token's lease is
	// of ID (the caller's parts may not match).
	byID bool
	c    *Client
}

// Deadline is when the lease runs out, by Redis's clock. Extend moves it.
func (l *Lease) Deadline() time.Time { return fromMS(l.deadline.Load()) }

// LeaseOf rebuilds a lease handle from its parts, for a consumer that
// keeps (queue, id, token) elsewhere, such as another process. Its methods
// also check that the token's lease is of message id: when it is another
// message's, they fail with ErrStale and change nothing.
func (c *Client) LeaseOf(queue, id, token string) (*Lease, error) {
	if err := ValidateQueue(queue); err != nil {
		return nil, err
	}
	if !validID(id) {
		return nil, fmt.Errorf("%w: message id %q", ErrInvalidArgument, id)
	}
	if !validToken(token) {
		return nil, fmt.Errorf("%w: token %q", ErrInvalidArgument, token)
	}
	return &Lease{Queue: queue, ID: id, Token: token, byID: true, c: c}, nil
}

// arg names the lease to a script: its token, or token "|" id when the
// message's id is to be checked too (a lease from LeaseOf).
func (l *Lease) arg() string {
	if l.byID {
		return l.Token + "|" + l.ID
	}
	return l.Token
}

func (l *Lease) check() error {
	if l == nil || l.c == nil {
		return fmt.Errorf("%w: lease not from a Client", ErrInvalidArgument)
	}
	return nil
}

// statusErr turns a script's status code into an error.
func (l *Lease) statusErr(op string, code int64) error {
	switch code {
	case 0:
		return fmt.Errorf("lease: %s %s/%s: %w", op, l.Queue, l.ID, ErrNotHeld)
	case -1:
		return fmt.Errorf("lease: %s %s/%s: %w", op, l.Queue, l.ID, ErrStale)
	case 3:
		return fmt.Errorf("lease: %s %s/%s: lease record moved to the dead set: %w", op, l.Queue, l.ID, ErrMalformed)
	}
	return nil
}

// Ack ends the lease for good: the message is done and gone.
//
// An ack after the deadline still succeeds while no one has requeued the
// message (with ackd running, a few milliseconds); after that it fails with
// ErrNotHeld and the message will be, or has been, delivered again.
func (l *Lease) Ack(ctx context.Context) error {
	if err := l.check(); err != nil {
		return err
	}
	return l.c.AckBatch(ctx, []*Lease{l})
}

// AckBatch acks leases of one queue in one script call. The result joins
// one error per lease that could not be acked (errors.Is finds ErrNotHeld,
// and for leases from LeaseOf ErrStale, in it); the others are acked.
func (c *Client) AckBatch(ctx context.Context, leases []*Lease) error {
	if len(leases) == 0 {
		return nil
	}
	if len(leases) > MaxBatch {
		return fmt.Errorf("%w: ack of %d leases: at most %d", ErrInvalidArgument, len(leases), MaxBatch)
	}
	if err := leases[0].check(); err != nil {
		return err
	}
	queue := leases[0].Queue
	if err := sameQueue("ack", queue, leases); err != nil {
		return err
	}
	k := KeysFor(queue)
	keys := make([]string, 0, 3+len(leases))
	keys = append(keys, k.Held, k.Due, k.Counts)
	args := make([]any, 0, len(leases))
	for _, l := range leases {
		keys = append(keys, LeaseKey(queue, l.Token))
		args = append(args, l.arg())
		l.settled.Store(true)
	}
	res, err := ackScript.Run(ctx, c.rdb, keys, args...).Int64Slice()
	if err != nil {
		return fmt.Errorf("lease: ack %d in %s: %w", len(leases), queue, convertErr(err))
	}
	markEnded(leases)
	if len(res) != len(leases) {
		return fmt.Errorf("lease: ack %d in %s: %w: %d statuses", len(leases), queue, ErrMalformed, len(res))
	}
	var errs []error
	for i, code := range res {
		if code != 1 {
			errs = append(errs, leases[i].statusErr("ack", code))
		}
	}
	return errors.Join(errs...)
}

// sameQueue checks that every lease of a batch is of queue (and from a
// Client).
func sameQueue(op, queue string, leases []*Lease) error {
	for _, l := range leases {
		if err := l.check(); err != nil {
			return err
		}
		if l.Queue != queue {
			return fmt.Errorf("%w: %s batch mixes queues %s and %s", ErrInvalidArgument, op, queue, l.Queue)
		}
	}
	return nil
}

// Nack gives the message back because processing failed. With delay zero
// it goes to the tail of the ready list at once; otherwise it becomes ready
// after delay. A message that has used its deliveries goes to the dead set
// with reason "failed" instead; Nack returns nil then too.
func (l *Lease) Nack(ctx context.Context, delay time.Duration) error {
	if err := l.check(); err != nil {
		return err
	}
	if delay != 0 {
		if err := checkDuration("nack delay", delay); err != nil {
			return err
		}
	}
	l.settled.Store(true)
	k := KeysFor(l.Queue)
	code, err := nackScript.Run(ctx, l.c.rdb,
		[]string{k.Ready, k.Held, k.Due, k.Delayed, k.Dead, k.DeadMsgs, LeaseKey(l.Queue, l.Token)},
		l.arg(), ms(delay), WakeChannel, l.Queue).Int64()
	if err != nil {
		return fmt.Errorf("lease: nack %s/%s: %w", l.Queue, l.ID, convertErr(err))
	}
	l.ended.Store(true)
	return l.statusErr("nack", code)
}

// Extend moves the deadline to now + d (by Redis's clock): a heartbeat for
// long work. It works after the deadline too, while no one has requeued the
// message.
func (l *Lease) Extend(ctx context.Context, d time.Duration) error {
	if err := l.check(); err != nil {
		return err
	}
	if err := checkDuration("extend", d); err != nil {
		return err
	}
	k := KeysFor(l.Queue)
	v, err := extendScript.Run(ctx, l.c.rdb,
		[]string{k.Held, k.Due, LeaseKey(l.Queue, l.Token)},
		l.arg(), ms(d), WakeChannel, l.Queue).Int64()
	if err != nil {
		return fmt.Errorf("lease: extend %s/%s: %w", l.Queue, l.ID, convertErr(err))
	}
	if v <= 0 {
		return l.statusErr("extend", v)
	}
	l.deadline.Store(v)
	return nil
}

// DeadLetter moves the message to the dead set now, with reason "killed":
// for a poison message that no retry will fix.
func (l *Lease) DeadLetter(ctx context.Context) error {
	if err := l.check(); err != nil {
		return err
	}
	l.settled.Store(true)
	k := KeysFor(l.Queue)
	code, err := deadletterScript.Run(ctx, l.c.rdb,
		[]string{k.Held, k.Due, k.Dead, k.DeadMsgs, LeaseKey(l.Queue, l.Token)}, l.arg()).Int64()
	if err != nil {
		return fmt.Errorf("lease: dead-letter %s/%s: %w", l.Queue, l.ID, convertErr(err))
	}
	l.ended.Store(true)
	return l.statusErr("dead-letter", code)
}

// Release gives the lease back unfinished, as if this delivery never
// happened: the message goes to the head of the ready list at once, as it
// was before this take (its attempt count too). It does not count as a failed
// attempt, so a consumer that stops (a deploy) never pushes a message
// toward the dead set. Consume releases the leases of handlers that did
// not finish within ConsumeOpts.StopTimeout.
func (l *Lease) Release(ctx context.Context) error {
	if err := l.check(); err != nil {
		return err
	}
	return l.c.ReleaseBatch(ctx, []*Lease{l})
}

// ReleaseBatch releases leases of one queue in one script call (see
// Release); the first lease given ends up first on the ready list. The
// result joins one error per lease that could not be released (errors.Is
// finds ErrStale and ErrNotHeld in it); the others are released.
func (c *Client) ReleaseBatch(ctx context.Context, leases []*Lease) error {
	if len(leases) == 0 {
		return nil
	}
	if len(leases) > MaxBatch {
		return fmt.Errorf("%w: release of %d leases: at most %d", ErrInvalidArgument, len(leases), MaxBatch)
	}
	queue := ""
	for _, l := range leases {
		if err := l.check(); err != nil {
			return err
		}
		if queue == "" {
			queue = l.Queue
		}
		if l.Queue != queue {
			return fmt.Errorf("%w: release batch mixes queues %s and %s", ErrInvalidArgument, queue, l.Queue)
		}
	}
	for _, l := range leases {
		l.settled.Store(true) // only once the batch is valid: it is sent
	}
	k := KeysFor(queue)
	keys := make([]string, 0, 5+len(leases))
	keys = append(keys, k.Ready, k.Held, k.Due, k.Dead, k.DeadMsgs)
	args := make([]any, 0, len(leases))
	for _, l := range leases {
		keys = append(keys, LeaseKey(queue, l.Token))
		args = append(args, l.arg())
	}
	res, err := releaseScript.Run(ctx, c.rdb, keys, args...).Int64Slice()
	if err != nil {
		return fmt.Errorf("lease: release %d in %s: %w", len(leases), queue, convertErr(err))
	}
	markEnded(leases)
	if len(res) != len(leases) {
		return fmt.Errorf("lease: release %d in %s: %w: %d statuses", len(leases), queue, ErrMalformed, len(res))
	}
	var errs []error
	for i, code := range res {
		if code != 1 {
			errs = append(errs, leases[i].statusErr("release", code))
		}
	}
	return errors.Join(errs...)
}

// maxErrorText bounds the error text Fail keeps with a dead letter.
const maxErrorText = 4096

// Fail moves the message to the dead set now, with reason "failed" and
// cause's text (DeadLetter.Error): for a message no retry will fix, such
// as one that does not decode. A handler run by Consume gets the same by
// returning SkipRetry(err).
func (l *Lease) Fail(ctx context.Context, cause error) error {
	text := "<nil>"
	if cause != nil {
		text = cause.Error()
	}
	return l.fail(ctx, ReasonFailed, text)
}

func (l *Lease) fail(ctx context.Context, reason, text string) error {
	if err := l.check(); err != nil {
		return err
	}
	l.settled.Store(true)
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	k := KeysFor(l.Queue)
	code, err := failScript.Run(ctx, l.c.rdb,
		[]string{k.Held, k.Due, k.Dead, k.DeadMsgs, k.DeadErrs, LeaseKey(l.Queue, l.Token)},
		l.arg(), reason, text).Int64()
	if err != nil {
		return fmt.Errorf("lease: fail %s/%s: %w", l.Queue, l.ID, convertErr(err))
	}
	l.ended.Store(true)
	return l.statusErr("fail", code)
}

// markEnded records that Redis answered a call ending ls.
func markEnded(ls []*Lease) {
	for _, l := range ls {
		l.ended.Store(true)
	}
}
