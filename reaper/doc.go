// Package reaper returns expired leases to their queues: it is the ackd
// daemon as a part any Go program can run. cmd/ackd is a Reaper plus
// environment parsing, HTTP and Prometheus; a consumer process can run one
// beside its workers instead of deploying the daemon.
//
//	rp, err := reaper.New(rdb, &reaper.Config{Queues: []string{"emails"}})
//	if err != nil {
//		return err // a bad Config: the error names the field
//	}
//	go rp.Run(ctx) // until ctx ends
//
// rdb is a redis.UniversalClient: a standalone, Sentinel (failover) or
// Cluster client. On a cluster the listener subscribes to every master
// and follows master changes within Config.TopologyInterval; for a
// Sentinel client set Config.Sentinel to the options the client was made
// with, and it follows +switch-master at once. Config.Replicas makes the
// sweeps wait for replicas (WAIT); a sweep they do not confirm is counted
// in Stats().NotReplicated and repeated, and is not an outage.
//
// # What triggers a sweep
//
// A sweep of a queue (lease.Client.Sweep, with Reclaim) requeues every
// lease whose deadline has passed by Redis's clock, dead-letters those out
// of deliveries, promotes delayed messages that are due and returns
// elements a dead consumer left on the claim list. Four things ask for one:
//
//   - a wake message: the lease scripts publish a queue's new earliest
//     deadline or due time, and the Reaper sets the queue's timer to it
//     (trigger "timer");
//   - a shadow key's expired or evicted event (trigger "event"), which on
//     a busy Redis can come seconds late: the timer usually comes first;
//   - the scan of every watched queue (trigger "scan") at start, after
//     every (re)subscription, since pub/sub loses what is sent while
//     disconnected, and every Config.ScanInterval;
//   - a failed sweep, again after Config.RetryDelay (trigger "retry").
//
// Every sweep also says when its queue next has work
// (lease.SweepResult.Next: a deadline + 1 ms, or a due time), and the
// queue's timer is set to that.
//
// # One path to a sweep
//
// Every trigger goes through one scheduler (package internal/schedule), and
// the scheduler calls one function, which loops on Sweep until the queue
// has nothing more due (at most 1,000 calls, then the queue goes to the
// back of the line). So one queue is never swept twice at once, at most
// Config.Concurrency queues are swept at once whatever asked, and triggers
// that arrive while a queue waits or is swept coalesce into one more
// sweep. The scan (package fallback) only lists queues and waits for each
// queue's sweep in that line; the listener (package notify) only calls the
// scheduler. Neither touches a key.
//
// # Several reapers
//
// Any number of reapers, in one process or many, and ackd daemons may
// watch the same Redis without electing a leader. Sweep is one atomic
// script in which the lease deadlines (the due ZSET) decide: whichever
// sweep runs first requeues a lease, every later one finds nothing to do.
// Each lease is requeued exactly once; the cost of more reapers is
// duplicate script calls that do nothing.
//
// # What it reports
//
// An Observer is told of every Sweep call (with its lease.SweepResult), of
// every failed sweep and every scan; cmd/ackd turns those into Prometheus
// metrics. Queues returns each queue's counts as its last sweep found them:
// the sweep script returns them, so reading them costs Redis nothing and
// they are at most a ScanInterval old. A queue of the registry that two
// scans in a row found empty, or that a scan no longer finds in the
// registry, drops out of Queues until a sweep finds something in it
// again; queues of Config.Queues never drop out. (A reaper never prunes
// the registry SET itself: a producer that registered a queue once does
// not register it again, so the scans would stop covering it. Removing a
// queue from the registry is an operator's decision.)
//
// Stats, Subscribed, RedisUp and Events report the listener's counters,
// the subscription, Redis's health and the keyspace-events setting.
//
// # How it fails
//
// A failed sweep is retried after RetryDelay. The first failed Redis call
// of an outage is logged at Warn ("redis unavailable, retrying") and the
// first success after it at Info ("redis recovered"); in between the
// parts' warnings are demoted to Debug, so an outage is two log lines, not
// one per retry. Outside sweeps, a PING every CheckInterval (every
// OutageCheckInterval during an outage) notices an outage and its end.
// An outage is Redis not answering, loading, or refusing the login
// (NOAUTH, WRONGPASS: logged at Error, naming Config.RedisUser); an error
// reply such as WRONGTYPE from a hostile key is not: that sweep fails and
// is retried, and RedisUp stays true.
//
// Keyspace events need notify-keyspace-events to include E and x. Run
// checks the setting at start and at every scan and logs each change of
// state once; with ConfigureEvents it also adds the missing flags. Many
// managed services refuse CONFIG: the Reaper then says so (Events) and
// works on its timers and scans, which need no events. With ObserveEvents
// it sends no CONFIG at all (a least-privilege user's ACL LOG stays
// empty): Events reports unknown until an expired event arrives, then on.
//
// When Run's context ends the Reaper stops listening and scanning and
// starts no new sweep; a Sweep call already running finishes, for at most
// ShutdownTimeout, and Run returns nil. An abandoned call is harmless:
// every sweep is atomic and the next reaper's start-up scan finds what is
// left.
package reaper
