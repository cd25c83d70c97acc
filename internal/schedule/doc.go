// Package schedule decides when ackd sweeps each queue.
//
// # Why a timer per queue
//
// Redis announces a lease's end through the expiry of its shadow key, but
// that event comes when Redis gets round to deleting the key: tens of
// milliseconds late on an idle server, minutes late when many keys carry a
// TTL (see the project's design notes). Yet the deadline of every lease sits
// in its queue's due ZSET, and lease.Sweep returns the earliest one.
// So the reaper keeps one wake time per queue, the earliest it knows of, and
// sweeps the queue then. The times come from two places:
//
//   - the wake channel: scripts publish a queue's new earliest deadline or
//     due time (notify.Listener, WakeFunc), which the caller passes to At;
//   - every sweep: its SweepFunc returns the queue's next due time
//     (lease.SweepResult.Next), and the Scheduler calls At itself.
//
// Keyspace events call Now, which sweeps at once. The periodic scan
// (fallback.Scanner) calls Sweep for one queue after another: Sweep is Now
// plus waiting for that sweep's outcome, so a scan shares the line and the
// concurrency bound with every other trigger.
//
//	s := schedule.New(func(ctx context.Context, queue, trigger string) (time.Time, error) {
//		for {
//			r, err := lc.Sweep(ctx, queue, nil)
//			if err != nil || !r.More {
//				return r.Next(), err
//			}
//		}
//	}, &schedule.Config{Logger: logger})
//	go s.Run(ctx)
//	s.At(queue, at)                      // from a wake message
//	s.Now(queue, "event")                // from an expired shadow key
//	err := s.Sweep(ctx, queue, "scan")   // from a scan, which waits
//
// The SweepFunc above is a sketch: package reaper holds the one real one.
// A lease is due once Redis's clock has passed its deadline millisecond, so
// Next wakes at deadline + 1 ms; a delayed message is due at its due time.
// On one host the requeue then lands 1 to a few ms after the deadline.
//
// # How it works
//
// One goroutine owns a min-heap of wake times (one entry per queue, the
// earliest wins) and a single time.Timer armed for the top of the heap. When
// nothing is due it sleeps: an idle Scheduler issues no Redis commands and
// uses no CPU. Due queues and queues passed to Now join a FIFO line, from
// which at most Config.Concurrency sweeps run at once, each in its own
// goroutine. One queue is never swept twice at once: triggers that arrive
// while a queue waits in line add nothing, and any number of triggers that
// arrive while its sweep runs cause exactly one more sweep after it. Every
// trigger, scans included, goes through this line: nothing else calls the
// SweepFunc.
//
// # How it fails
//
// A sweep that fails is logged at Warn (context.Canceled is not) and
// retried after Config.RetryDelay with trigger "retry"; a queue that
// keeps failing costs one command per RetryDelay. If Redis's clock runs
// behind this host's, a wake can come before the deadline is due by Redis's
// clock; the sweep then returns the very time it was woken for, and the
// Scheduler retries after 1 ms, doubling up to RetryDelay, instead of
// spinning. Lost wake times cost nothing but punctuality: the keyspace event
// and the periodic scan still trigger a sweep, and every sweep is idempotent.
//
// Anyone allowed to publish on the wake channel can send wake times for
// made-up queues. The Scheduler tracks at most Config.MaxQueues queues
// (10,000 by default, a few MB): beyond that, At and Now for a new queue
// are dropped, counted (Stats.Dropped) and logged once. The scan's Sweep is
// never dropped, so a real queue whose wake was dropped is swept at the
// next scan at the latest: late, never lost. The reaper also ignores wake
// times beyond the longest lease or delay (lease.MaxLeaseFor), and, when
// it watches a fixed set of queues, wakes for any other queue.
//
// Run returns nil once its context is done and the running sweeps, which
// see the same context, have returned. At and Now may be called before Run;
// what they record waits for it.
package schedule
