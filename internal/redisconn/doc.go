// Package redisconn opens a go-redis client for any Redis deployment named
// by one URL, as ackd's ACKD_REDIS_URL does.
//
// # URL forms
//
// The forms are go-redis' own:
//
//	redis://[[user]:password@]host:port[/db]       one server (redis.ParseURL)
//	rediss://...                                   the same over TLS
//	unix://[[user]:password@]/path/to/socket[?db=N]
//	redis://host:port?addr=host2:port2&addr=...    a Cluster (redis.ParseClusterURL)
//	redis://[user:password@]sentinel:26379?master_name=NAME&addr=sentinel2:26379[&password=P]
//	                                               a Sentinel deployment (redis.ParseFailoverURL)
//
// In the Sentinel form the userinfo holds the Sentinels' own credentials
// and the username/password parameters the data nodes'. A URL of the
// first form that names a Cluster node is detected and
// gets a Cluster client seeded with that node, so a Cluster never looks
// like a single shard (HELLO tells, or INFO where HELLO is missing; a
// user refused both is taken to name one server).
//
// # Checks at start
//
// [Check] validates the settings without connecting; [Open] connects and
// refuses what cannot work, with an [*Error] naming
// the setting: a URL that mixes forms (a Cluster has only database 0; a
// unix socket has no master_name or addr; a parameter that only another
// form knows, such as read_only beside master_name), a scheme go-redis
// does not know (redis+sentinel://), Sentinel parameters that would take
// the client off the master (replica_only, route_by_latency, which
// go-redis answers with a panic), a Sentinel set that knows no
// master of that name, a Cluster whose slots are not all served by a live
// master ([ErrUncovered]), a wrong password, a certificate that does not
// verify. No error ever holds a password: net/url and go-redis quote
// pieces of a malformed URL (`invalid port ":Zm9v" after host` for an
// unencoded '/' in a password), so quoted text is dropped from parse
// errors and every known secret is removed from every message. Use
// [Redact] to log a URL.
//
// # TLS and secrets
//
// A rediss:// URL uses TLS; [Options] adds a CA file (a private CA
// without touching the system's store), a client certificate and key for
// servers that demand one (tls-auth-clients yes), and the server name to
// expect. skip_verify=true in the URL is honoured but reported in
// [Conn.InsecureSkipVerify] so the caller can warn. The password can come
// from the URL, from Options.Password or from Options.PasswordFile (a
// mounted secret; one trailing newline is dropped), never from two.
//
// # Failover
//
// go-redis' ClusterClient re-reads the slot map every 60 s by default and
// otherwise only on MOVED/ASK, so after a master dies it dials the dead
// address long after the Cluster has promoted a replica (48.7 s of errors
// measured against a 13.4 s failover). [NewClusterClient] re-reads it
// every Options.ClusterReloadInterval (1 s) and at once after a network
// error, CLUSTERDOWN, MOVED, ASK, TRYAGAIN, READONLY or MASTERDOWN. With
// a 1 s node timeout, a killed master's keys failed for 3.0 s after the
// kill, ending 0.5 s after the Cluster had failed over.
//
// # Blocking calls
//
// A blocking call (BLMOVE) holds one pooled connection while it waits.
// With Options.BlockingPoolSize set, [Conn.Blocking] is a second client on
// the same deployment whose pool serves only blocking calls, so that
// waiting consumers cannot starve the acks, extends and sweeps on
// [Conn.Client]; give it one connection per concurrent blocking take
// (for lease: one per queue a process consumes, times its concurrency)
// and pass it as lease.Config.BlockingClient.
//
// # Sentinel
//
// [Conn.Failover] holds the options of a Sentinel deployment's client,
// for what must reach the Sentinels or the replicas themselves: package
// notify follows +switch-master with it (notify.Config.Sentinel) and sets
// the replicas' keyspace events (notify.EnsureEventsSentinel).
package redisconn
