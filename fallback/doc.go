// Package fallback is ackd's safety net: a periodic scan that sweeps every
// queue, so that no lease stays out past its deadline for longer than one
// scan interval, whatever happened to the faster triggers.
//
// # What a scan does
//
// For each queue (Config.Queues, or every queue in the registry SET
// ackd:queues, re-read at each scan) it calls lease.Sweep with Reclaim, and
// again while the result says More. A sweep requeues every lease whose
// deadline has passed (or dead-letters it once it has used its deliveries),
// promotes delayed messages that are due, and returns elements a dead
// consumer left on the queue's claim list. Sweep is idempotent and atomic,
// so a scan may race with timers, events and other daemons: each lease is
// requeued once.
//
//	s := fallback.NewScanner(lc, &fallback.Config{
//		SweptFunc: func(q string, r lease.SweepResult) { sched.At(q, schedule.NextWake(r)) },
//	})
//	go s.Run(ctx)   // scans now, then every Interval
//	s.ScanNow()     // e.g. after the notify.Listener (re)subscribed
//
// SweptFunc passes each queue's next due time on, so a scan also primes
// the per-queue timers that do the punctual work.
//
// # Why every five minutes
//
// The punctual work is done elsewhere: the scripts publish each queue's
// new earliest deadline on the wake channel, ackd keeps a timer per queue
// (package schedule), and the shadow keys' expired events are a second
// trigger. The scan is only for what both of those miss: messages
// published while ackd was disconnected or down, keys lost in a restart,
// a node whose events are off. Those gaps are themselves covered sooner,
// because ackd scans at every start and after every (re)subscription.
//
// A scan of N queues costs N+1 commands (one SMEMBERS, one Sweep per
// queue, more only for queues with over Limit items due). With the
// default ScanIntervalDefault of 5 minutes an idle ackd that watches 100
// queues sends 101 commands per 300 s, about 0.34 per second, within the
// budget of one command per second for an idle daemon. A shorter interval
// buys nothing while events and timers work, and costs commands on every
// idle queue when they do not.
//
// # How it fails
//
// An error on one queue (a WRONGTYPE key, a timeout) is logged, counted in
// Stats().Errors and joined into Scan's error; the scan goes on with the
// next queue, and the next scan tries again. While Redis is down each scan
// fails fast and Run keeps its interval. A queue refilled as fast as it is
// swept is left after 1000 calls in one scan, so the scan always ends.
//
// Scan logs at Info only when it requeued or dead-lettered something
// ("requeued expired leases" with queue and num_requeued); Run logs its
// start and stop at Debug.
package fallback
