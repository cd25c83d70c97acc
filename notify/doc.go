// Package notify listens to Redis for the two push signals ackd acts on:
// shadow keys that expire or are evicted, and messages on the wake channel.
//
// # What it hears
//
// Every lease has a shadow key, ackd:{queue}:lease:<token>, whose TTL ends
// at the lease deadline. A Listener PSUBSCRIBEs to
//
//	__keyevent@*__:expired
//	__keyevent@*__:evicted
//
// and turns each event for a shadow key into ExpiredFunc(queue, token);
// events for any other key only count as Ignored. It also SUBSCRIBEs to
// lease.WakeChannel, on which ackd's scripts announce a queue's new earliest
// lease deadline or delayed due time, and turns each message into
// WakeFunc(queue, at) with at the moment to sweep (see ParseWake).
//
//	l := notify.NewListener(rdb, &notify.Config{ // as package reaper wires it
//		ExpiredFunc:    func(ctx context.Context, q, _ string) { sched.Now(q, "event") },
//		WakeFunc:       func(ctx context.Context, q string, at time.Time) { sched.At(q, at) },
//		SubscribedFunc: func(ctx context.Context) { scanner.ScanNow() },
//	})
//	go l.Run(ctx)
//
// The callbacks run on the receive loop and must not block.
//
// # Why events are only a trigger
//
// Redis sends expired when it deletes a key, not when its TTL runs out: on
// a busy server that can be seconds or minutes late. Pub/sub is also
// fire-and-forget: whatever is published while the Listener is
// disconnected is lost, and keys that expired while a server was down
// vanish without an event. So the wake channel feeds per-queue timers, the
// expired event is the second trigger, and the periodic scan (package
// fallback) the third. Package reaper sends all three through one
// scheduler to one idempotent lease.Sweep, so duplicates cost at most one
// command.
//
// # Reconnection
//
// The Listener reads its PubSub with ReceiveTimeout, never PubSub.Channel,
// which hides reconnections and, when its buffer stays full, drops
// messages. After a read error go-redis closes the connection, dials again
// and resubscribes by itself; the Listener backs off (jittered, capped at 5
// s) while Redis is unreachable and never gives up. Each time all of its
// subscriptions are confirmed again it calls SubscribedFunc, whose caller
// runs a catch-up scan. This covers a killed connection (CLIENT KILL TYPE
// pubsub, client-output-buffer-limit), a restarted server and a network
// error. After PingInterval of silence it pings; with no reply within
// PingInterval (clamped to 1-5 s), or a subscription still unconfirmed
// after that long, it drops the connection and subscribes afresh.
//
// # Configuration
//
// Events flow only if notify-keyspace-events includes E and x (and e for
// evictions); the setting is per node and not replicated. EnsureEvents
// reads it and, if asked, adds the missing flags without removing any.
// Many managed services refuse CONFIG: EnsureEvents then reports ErrConfig
// and the daemon keeps working on timers and scans, only less promptly for
// leases whose wake message it missed.
//
// # Cluster, Sentinel, replicas
//
// Keyspace events are node-local. On a *redis.ClusterClient the Listener
// subscribes to the event patterns on every master (ForEachMaster) and
// re-reads the topology every TopologyInterval (500 ms) and at once when
// a node's subscription breaks, subscribing to new masters and dropping
// departed or demoted ones: CLUSTER FAILOVER turns a replica into a master
// and tells no client, so reading is the only way to notice. The wake
// channel, which PUBLISH spreads to every node, is one more subscription.
// A *redis.Ring is treated the same, shard by shard. Until a new master is
// noticed its events are missed; the subscription that follows triggers
// SubscribedFunc and so a scan. Reading the topology costs one CLUSTER
// SLOTS per TopologyInterval.
//
// Only a master expires keys. A Sentinel (failover) client is one
// subscription. go-redis moves its command pools to a new master but not
// a subscription, which stays on the demoted node and hears nothing until
// that node drops it (about 10 s after SENTINEL FAILOVER). With
// Config.Sentinel set, the Listener subscribes to SwitchChannel
// (+switch-master) on every Sentinel and, when one announces a switch,
// closes its subscription and opens it again, which dials the new master;
// every TopologyInterval it also asks a Sentinel for the master, in case
// it missed an announcement. A switch, on a Cluster or a Sentinel, calls
// TopologyFunc.
//
// notify-keyspace-events is per node and not replicated, so a replica
// promoted by a failover sends only what it was configured with.
// EnsureEvents on a Cluster and EnsureEventsSentinel reach the replicas
// too, and report them apart (ReplicasEnabled, ReplicaErr).
package notify
