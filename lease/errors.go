package lease

import "errors"

var (
	// ErrInvalidQueue: the queue name is empty, too long or has a byte
	// that would break the key layout. Nothing was written.
	ErrInvalidQueue = errors.New("lease: invalid queue name")
	// ErrInvalidArgument: a duration, count, id or token is out of range
	// or malformed. Nothing was written.
	ErrInvalidArgument = errors.New("lease: invalid argument")
	// ErrPayloadTooLarge: a payload is over Config.MaxPayload. Nothing was
	// written.
	ErrPayloadTooLarge = errors.New("lease: payload too large")
	// ErrNoMessage: Take found no message within its wait.
	ErrNoMessage = errors.New("lease: no message")
	// ErrNotHeld: the lease's token holds no lease: it was acked, released,
	// dead-lettered, or its lease ran out and the message went back to the
	// queue (it will be, or has been, delivered again, under another
	// token: a later delivery's holder is untouched). Nothing changed. A
	// client that resends an ack whose reply was lost (go-redis retries by
	// default) gets this too, although its first ack succeeded: delivery
	// is at least once, and an ErrNotHeld ack never means the message was
	// lost.
	ErrNotHeld = errors.New("lease: not held")
	// ErrStale: the token holds a lease of another message than the one
	// named (a lease from LeaseOf whose id and token do not belong
	// together). Nothing changed; that lease is untouched.
	ErrStale = errors.New("lease: token holds a lease of another message")
	// ErrMalformed: data found in Redis is not what ackd wrote (a foreign
	// value, a wrong key type). Malformed messages are moved to the dead
	// set with reason "malformed"; this error reports that it happened.
	ErrMalformed = errors.New("lease: malformed data in redis")
	// ErrNotReplicated: the change was made on the master, but fewer than
	// Config.Replicas replicas confirmed it within Config.ReplicaTimeout,
	// so a failover may still undo it. The outcome is uncertain: retry a
	// push (a duplicate is possible, a loss is not); a take's leases are
	// not returned and its messages come back when their leases run out;
	// an ack may have to be repeated (ErrNotHeld then means it held).
	ErrNotReplicated = errors.New("lease: not replicated")
	// ErrAckUnconfirmed: an AckAndTake or AckAndTakeBatch call failed
	// before its ack was confirmed: it was refused before anything was
	// sent (bad input, ACL), or it is not known whether Redis ran it (a
	// network error, a timeout, a cancelled context, a script error), or
	// Redis ran it but fewer than Config.Replicas replicas confirmed it
	// (ErrNotReplicated). The cause is wrapped with it. The leases to ack
	// may still be held: ack them again (Ack, AckBatch, or another
	// AckAndTake); ErrNotHeld then means the first ack held.
	ErrAckUnconfirmed = errors.New("lease: ack not confirmed")
	// ErrNoPermission: the Redis user lacks an ACL permission the call
	// needs (a command, a key or the wake channel; docs/SECURITY.md lists
	// each role's). The Redis error is wrapped with it. Every script
	// checks its permissions before it writes, so nothing was written.
	ErrNoPermission = errors.New("lease: redis refused a command to this user (ACL)")
)
