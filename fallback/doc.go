// Package fallback is ackd's safety net: a periodic scan that has every
// queue swept, so that no lease stays out past its deadline for longer
// than one scan interval, whatever happened to the faster triggers.
//
// # What a scan does
//
// For each queue (Config.Queues, or every queue the Registry lists: the
// SET ackd:queues, re-read at each scan) it calls Config.SweepFunc and
// waits for it, one queue after the other. The Scanner itself touches no
// key and sweeps nothing: package reaper passes its scheduler's Sweep,
// which puts the queue in the same line as its timers and keyspace events
// and returns when that sweep is done. So a scan never overlaps another
// sweep of the same queue, obeys the reaper's concurrency bound and
// occupies at most one of its workers, and the sweep it asks for (requeue
// what is due, promote delayed messages, reclaim the claim list, report
// the queue's counts, set the queue's timer) is written once, in the
// reaper.
//
//	s, err := fallback.NewScanner(lc, &fallback.Config{
//		SweepFunc: func(ctx context.Context, q string) error { return sched.Sweep(ctx, q, "scan") },
//	})
//	go s.Run(ctx) // scans now, then every Interval
//	s.ScanNow()   // e.g. after the notify.Listener (re)subscribed
//
// # Why every five minutes
//
// The punctual work is done elsewhere: the scripts publish each queue's
// new earliest deadline on the wake channel, the reaper keeps a timer per
// queue, and the shadow keys' expired events are a second trigger. The
// scan is only for what both of those miss: messages published while the
// reaper was disconnected or down, keys lost in a restart, a node whose
// events are off. Those gaps are themselves covered sooner, because the
// reaper scans at every start and after every (re)subscription.
//
// A scan of N queues costs N+1 commands (one SMEMBERS, one Sweep per
// queue, more only for queues with over the sweep limit due). With the
// default ScanIntervalDefault of 5 minutes an idle ackd that watches 100
// queues sends 101 commands per 300 s, about 0.34 per second, within the
// budget of one command per second for an idle daemon. A shorter interval
// buys nothing while events and timers work, and costs commands on every
// idle queue when they do not.
//
// # How it fails
//
// An error on one queue (a WRONGTYPE key, a timeout) is wrapped with the
// queue's name, counted in Stats().Errors and joined into the scan's error;
// the scan goes on with the next queue, and the next scan tries again. A
// registry that cannot be read fails the scan at once. While Redis is down
// each scan fails fast and Run keeps its interval; Run logs a failed scan
// at Warn and its start and stop at Debug.
package fallback
