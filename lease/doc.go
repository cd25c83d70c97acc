// Package lease gives plain Redis list queues acknowledgement: a consumer
// that takes a message holds a lease on it, acks when done, and if it
// crashes or hangs the lease runs out and the message goes back on the
// queue.
//
// # Producers
//
// Push adds a message to the tail of a queue and returns its id (a UUID;
// identical payloads are distinct messages). PushBatch adds many in one
// round trip. A producer may give a message its own lease duration, a
// delay, and a maximum number of deliveries:
//
//	id, err := c.Push(ctx, "emails", payload, &lease.PushOpts{LeaseFor: 5 * time.Second})
//
// Producers that know nothing of ackd keep working: a payload pushed with
// RPUSH onto the queue's ready list, ackd:{<queue>}:ready, from redis-cli
// or any client, is taken with full ack semantics. It gets an id the first
// time it is taken.
//
// # Consumers
//
// Take leases one message, waiting up to TakeOpts.Wait for one; TakeBatch
// leases up to n. A waiting consumer blocks in Redis (BLMOVE), so a push
// reaches it at once, without polling:
//
//	l, err := c.Take(ctx, "emails", &lease.TakeOpts{Wait: 5 * time.Second})
//	if errors.Is(err, lease.ErrNoMessage) { ... }
//	...
//	err = l.Ack(ctx)             // done, gone for good
//	err = l.Nack(ctx, time.Minute) // failed: back on the queue in a minute
//	err = l.Extend(ctx, 30*time.Second) // heartbeat: still working
//	err = l.DeadLetter(ctx)      // poison: straight to the dead set
//
// Consume runs a handler on N workers with all of that done for it: ack on
// success, nack with backoff on error, leases extended while the handler
// runs, clean stop on cancel.
//
// # Fencing
//
// Every delivery carries its own token. Once a lease has run out and the
// message was delivered again, Ack, Nack, Extend and DeadLetter with the
// old token fail with ErrStale and change nothing; the new holder's lease
// is untouched. An ack after the deadline still succeeds while nobody has
// requeued the message: fewer duplicates, and still exactly one outcome.
//
// # Retries and dead letters
//
// Each delivery counts as an attempt. A message whose lease runs out, or
// that is nacked, after its last allowed delivery goes to the queue's dead
// set with a reason: "expired", "failed", "killed" (DeadLetter),
// "malformed" (data in the queue that ackd did not write and cannot parse)
// or "oversized" (an element longer than the taking client's MaxPayload,
// pushed by a plain producer: never parsed nor delivered). DeadLetters
// lists them, Replay puts them back with fresh attempts, Purge deletes
// them; both name the ids that were not dead letters in an ErrNotHeld.
//
// # Permissions
//
// Give each role its own Redis ACL user with the lines of docs/SECURITY.md.
// Every script checks, before it writes anything, that its user may run
// each command it needs; if not, the call fails with ErrNoPermission and
// nothing changed.
//
// # Requeue
//
// Requeue and Sweep are what the ackd daemon calls when a lease may have
// run out. They act only if Redis's clock (TIME) is past the deadline, and
// any number of callers racing on one lease requeue it exactly once.
// Without a daemon, expired leases stay in flight until someone calls
// Sweep; the daemon makes that happen within milliseconds of the deadline.
//
// # Guarantees
//
// Delivery is at least once. A message is delivered more than once only
// when a lease of it ran out (the consumer died, hung, or did not extend
// in time) and someone requeued it before the consumer acked; every such
// redelivery has a higher Attempt. Nothing is lost while Redis keeps its
// data: every change of state is one atomic Lua script, and a message is
// in exactly one place at a time (the ready or claim list, in flight,
// delayed, or dead). If Redis itself loses writes (no persistence, a
// failover to a replica that lagged), ackd cannot bring them back.
//
// # Key layout
//
// Every key of a queue carries the queue name as a cluster hash tag, so a
// queue lives in one slot and every script runs unchanged on Redis Cluster.
// Only this package writes them:
//
//	ackd:{q}:ready        LIST  envelopes and raw payloads, pushed right, taken left
//	ackd:{q}:claim        LIST  elements a blocked consumer moved off ready; taken first
//	ackd:{q}:leases       HASH  id -> "token|envelope" for each message in flight
//	ackd:{q}:deadlines    ZSET  id scored by lease deadline (ms): the source of truth
//	ackd:{q}:lease:<tok>  STRING shadow key whose TTL ends at the deadline (a trigger only)
//	ackd:{q}:delayed      ZSET  envelopes scored by the time they become ready
//	ackd:{q}:dead         ZSET  dead-letter ids scored by when they died
//	ackd:{q}:deadmsgs     HASH  id -> "reason|ms|envelope"
//	ackd:queues           SET   every queue name (the registry)
//
// docs/PROTOCOL.md gives every format and every script's contract, for
// clients in other languages.
package lease
