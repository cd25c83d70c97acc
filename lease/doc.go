// Package lease gives plain Redis list queues acknowledgement: a consumer
// that takes a message holds a lease on it, acks when done, and if it
// crashes or hangs the lease runs out and the message goes back on the
// queue.
//
// # Producers
//
// Push adds a message to the tail of a queue and returns its id (a UUIDv7
// stamped with the time the message becomes ready; identical payloads are
// distinct messages). PushBatch adds many in one
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
// leases up to n. A waiting consumer blocks in Redis (BLMOVE, sent with
// the take script in one pipeline), so a push reaches it at once, in one
// round trip, without polling:
//
//	l, err := c.Take(ctx, "emails", &lease.TakeOpts{Wait: 5 * time.Second})
//	if errors.Is(err, lease.ErrNoMessage) { ... }
//	...
//	err = l.Ack(ctx)             // done, gone for good
//	err = l.Nack(ctx, time.Minute) // failed: back on the queue in a minute
//	err = l.Extend(ctx, 30*time.Second) // heartbeat: still working
//	err = l.DeadLetter(ctx)      // poison: straight to the dead set
//
// A consumer that handles one message at a time without Consume acks and
// takes in one call: AckAndTake acks its lease and leases the next
// message of the queue in one script run and one round trip, where Ack
// then Take cost two (AckAndTakeBatch does the same for batches):
//
//	l, err := c.Take(ctx, "emails", opts)
//	for l != nil {
//		work(l)
//		l, err = l.AckAndTake(ctx, opts) // look at l first: see below
//	}
//
// One error covers both halves, and a lease the take made is never
// dropped. When a lease comes back, err is nil or the ack's failure
// (ErrNotHeld, or ErrStale for a lease from LeaseOf), as Ack would
// report it. When none comes back,
// ErrAckUnconfirmed in err means the ack may not have happened (bad
// input, ACL, a call lost in flight, ErrNotReplicated): ack again.
// Otherwise the ack is done and err is why nothing was taken
// (ErrNoMessage, ctx's error while waiting), joined with the ack's
// failure if any. On an empty queue the ack is done at once, before the
// call waits like Take.
//
// Consume runs a handler on N workers with all of that done for it: ack on
// success, nack with backoff on error, leases extended while the handler
// runs, a bounded stop on cancel. Its acks are batched: those of handlers
// that return while a take (or, on an empty queue, a wait for messages)
// is due ride it, in one round trip, and the others go out together
// within 5ms; an ack that had not reached Redis
// when the process died means the message is delivered again. It
// prefetches: up to ConsumeOpts.Prefetch leases (by default 8, doubling
// up to 64 while the queue has a backlog and the workers outrun the
// takes, halving back once takes find it dry; negative turns it off) wait
// beyond the busy workers, so that a
// worker that finishes starts the next message without a round trip and
// one script run takes and acks several messages. A buffered message is released
// (back to the head of the queue, not counted) if it waits a third of its
// lease, when the queue is found paused, and at once on stop. A consumer
// that gives up on a message can also call Fail (dead set now, with the
// error's text) or Release (back to the head of the queue, the delivery
// not counted).
//
// # Handler outcomes
//
// What a Consume handler returns decides the message's fate:
//
//	return nil                                  // ack
//	return err                                  // nack with backoff; dead ("failed") when out of deliveries
//	return lease.SkipRetry(err)                 // dead now, reason "failed", err's text kept
//	return fmt.Errorf("bad: %w", lease.ErrSkipRetry) // the same, by wrapping
//	return lease.RetryAfter(10*time.Minute, err) // nack with exactly that delay
//	panic(...)                                  // logged with its stack; like an error, dead ("panic") when out of deliveries
//
// Both helpers survive wrapping with %w. A handler that settles its lease
// itself (Ack, Nack, DeadLetter, Fail) is left alone. Handler errors and
// panics go to ConsumeOpts.ErrorFunc, or else to Config.Logger, or else to
// slog.Default(): never silently dropped, rate-limited so a failing queue
// cannot flood the log. ConsumeOpts.Timeout bounds each handler;
// ConsumeOpts.Middleware wraps them all (see ExampleMiddleware, which
// times handlers into a Prometheus histogram).
//
// # Stopping Consume
//
// Cancel Consume's ctx (on SIGTERM, say) and it stops taking at once,
// releases the leases prefetched for no handler yet, lets running
// handlers finish for up to ConsumeOpts.StopTimeout, then cancels
// their contexts, releases every lease whose handler has not returned
// (back to the head of the queue, the attempt not counted, so a deploy
// never pushes a message toward the dead set), sends every ack still
// waiting and returns. Nothing is left held, nothing lost, nothing acked
// delivered again. Example_consumerMain shows a consumer's main.
//
// # Fencing
//
// Every delivery carries its own token, and in-flight leases are keyed by
// it. Once a lease has run out and the message was delivered again, Ack,
// Nack, Extend and DeadLetter with the old token fail with ErrNotHeld and
// change nothing; the new holder's lease is untouched. A lease rebuilt
// with LeaseOf also names its message: a token that holds a lease of
// another message fails with ErrStale. An ack after the deadline still succeeds while nobody has
// requeued the message: fewer duplicates, and still exactly one outcome.
//
// # Retries and dead letters
//
// Each delivery counts as an attempt, except one given back with Release.
// A message whose lease runs out, or that is nacked, after its last
// allowed delivery goes to the queue's dead set with a reason: "expired",
// "failed" (also Fail and SkipRetry, with the error's text), "panic" (its
// Consume handler panicked on its last delivery), "killed" (DeadLetter),
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
// # Operating queues
//
// The operations behind the ackd command (ackd help) are here for any
// tool to use, a dashboard for one. Each reads or moves a bounded number
// of elements per script, so Redis is never blocked for long:
//
//	s, err := c.Stats(ctx, "emails")    // counts, paused, oldest ready age, next deadline, in one script
//	p, err := c.Peek(ctx, "emails", lease.StateDead, &lease.PeekOpts{Reason: "failed", Limit: 50})
//	byReason, err := c.DeadReasons(ctx, "emails")
//	n, err := c.ReplayAll(ctx, "emails", &lease.DeadOpts{Reason: "expired", ProgressFunc: report})
//	n, err = c.PurgeAll(ctx, "emails", nil)
//	_, err = c.Pause(ctx, "emails")     // takes lease nothing until Resume
//	err = c.Forget(ctx, "old")          // drop an empty queue from the registry
//
// Peek returns each payload's size and, only if PeekOpts.Preview asks,
// its first bytes: payloads may hold personal data. ReplayAll and PurgeAll
// finish the batch under way when ctx is cancelled and report an exact
// count; a message is then either back on the queue or still dead.
//
// While a queue is paused, pushes (plain RPUSH too), acks, extends, nacks
// and the requeue of expired leases go on; takes lease nothing, a blocking
// take keeps waiting without moving messages (it looks again every 250 ms
// instead of blocking in Redis) and Consume idles. Stats.OldestReadyAge
// counts from the time in the head message's id, so it is unknown (zero)
// when the head is a raw payload pushed with a plain RPUSH.
//
// # Sweep
//
// Sweep is what a reaper (package reaper, or the ackd daemon built on it)
// calls when a lease may have run out. It acts only on leases whose
// deadline Redis's clock (TIME) has passed, and any number of callers
// racing on one lease requeue it exactly once. Without a reaper, expired
// leases stay in flight until someone calls Sweep; a reaper makes that
// happen within milliseconds of the deadline.
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
// failover to a replica that lagged), ackd cannot bring them back; see
// below for how a caller learns of it.
//
// # Cluster, Sentinel and failover
//
// Any redis.UniversalClient works: standalone, Sentinel (failover) or
// Cluster. Commands that Redis refused without running them, as during a
// slot migration (TRYAGAIN, ASK, MOVED) or a failover (CLUSTERDOWN,
// READONLY, a refused connection on a Cluster or Sentinel client), are
// retried with backoff for up to Config.RetryWindow before the caller sees
// the error.
//
// Replication is asynchronous, so a failover can drop changes the old
// master acknowledged. With Config.Replicas set, every change waits
// (WAIT, on the same connection, on the master of the queue's slot) until
// that many replicas have it, and returns ErrNotReplicated when they do
// not: the outcome is uncertain, the caller retries, and no message
// vanishes without an error to the caller that wrote it.
//
//	c, err := lease.New(rdb, &lease.Config{Replicas: 1, ReplicaTimeout: time.Second})
//	...
//	if _, err := c.Push(ctx, "emails", payload, nil); errors.Is(err, lease.ErrNotReplicated) {
//		// pushed to the master, maybe not to its replica: push again
//	}
//
// A blocking take holds a pooled connection while it waits. Give blocking
// takes their own client with Config.BlockingClient, or size the pool for
// them and everything else. docs/TOPOLOGY.md has the measured error
// windows, the cost of WAIT and what min-replicas-to-write, AOF and
// cluster-require-full-coverage trade.
//
// # Key layout
//
// Every key of a queue carries the queue name as a cluster hash tag, so a
// queue lives in one slot and every script runs unchanged on Redis Cluster.
// Only this package writes them:
//
//	ackd:{q}:ready        LIST  envelopes and raw payloads, pushed right, taken left
//	ackd:{q}:claim        LIST  elements a blocked consumer moved off ready; taken first
//	ackd:{q}:held         HASH  token -> the envelope as taken, for each lease in flight
//	ackd:{q}:due          ZSET  token scored by lease deadline (ms): the source of truth
//	ackd:{q}:lease:<tok>  STRING 1, expiring at the deadline (a trigger only)
//	ackd:{q}:leases       HASH  format 1 (older versions): id -> "token|envelope"
//	ackd:{q}:deadlines    ZSET  format 1: id scored by lease deadline (ms)
//	ackd:{q}:delayed      ZSET  envelopes scored by the time they become ready
//	ackd:{q}:dead         ZSET  dead-letter ids scored by when they died
//	ackd:{q}:deadmsgs     HASH  id -> "reason|ms|envelope"
//	ackd:{q}:deaderrs     HASH  id -> "ms|error text" of a dead letter from Fail
//	ackd:{q}:paused       STRING exists while the queue is paused (value: since when, ms)
//	ackd:queues           SET   every queue name (the registry)
//
// # Scripts
//
// The scripts run as functions of one Redis function library (FCALL),
// which a Client loads on a node that lacks it, if its Redis user may
// (FUNCTION LOAD); the daemon loads it on every master at start
// (LoadFunctions). Where Redis refuses FCALL or the library cannot be
// loaded, a Client runs the same scripts with EVALSHA, and logs that once.
// Library and Scripts export both forms.
//
// docs/PROTOCOL.md gives every format and every script's contract, for
// clients in other languages.
package lease
