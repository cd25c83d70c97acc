package lease

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults for the topology fields of Config.
const (
	// RetryWindowDefault bounds the retries of a command Redis refused
	// without running it (see Config.RetryWindow).
	RetryWindowDefault = 5 * time.Second
	// ReplicaTimeoutDefault bounds each WAIT (see Config.Replicas).
	ReplicaTimeoutDefault = time.Second

	retryBackoffMin = 10 * time.Millisecond
	retryBackoffMax = 250 * time.Millisecond
)

// conn is the Client's Redis connection. Every script (FCALL, or EVALSHA
// and EVAL: see functions.go) and every RPUSH goes through it: it retries
// what Redis refused without running (a Cluster slot in migration, a
// failover in progress) and, when Config.Replicas is set, waits for
// replicas after each write. Everything else passes straight to the
// user's client.
type conn struct {
	redis.UniversalClient
	// blocking carries BLMOVE; the user's client unless
	// Config.BlockingClient is set.
	blocking       redis.UniversalClient
	retryWindow    time.Duration
	replicas       int
	replicaTimeout time.Duration
	// redialable: a refused connection may be a master that is failing
	// over (Cluster, Sentinel), not a server that is simply down.
	redialable bool
	// pipelineBlock, if positive, lets a blocking take send BLMOVE and the
	// take script in one pipeline on the blocking client, each BLMOVE at
	// most this long: half the client's read timeout (with which go-redis
	// reads a pipeline's replies), at most blockChunk. Zero when the
	// blocking client is of another kind, or when writes must wait for
	// replicas (the take would need its WAIT).
	pipelineBlock time.Duration
	// fn is what the Client knows of ackd's function library on the
	// server: whether scripts run as FCALL or EVALSHA (functions.go).
	fn funcState
}

func newConn(rdb redis.UniversalClient, cfg *Config) *conn {
	c := &conn{
		UniversalClient: rdb,
		blocking:        rdb,
		retryWindow:     cfg.RetryWindow,
		replicas:        cfg.Replicas,
		replicaTimeout:  cfg.ReplicaTimeout,
	}
	c.fn.log, c.fn.recheck = cfg.Logger, missingRecheck
	if cfg.BlockingClient != nil {
		c.blocking = cfg.BlockingClient
	}
	switch r := rdb.(type) {
	case *redis.ClusterClient:
		c.redialable = true
	case *redis.Client:
		// go-redis names a Sentinel-managed client's address so.
		c.redialable = r.Options().Addr == "FailoverClient"
	}
	if c.replicas <= 0 {
		rt := time.Duration(-1)
		switch b := c.blocking.(type) {
		case *redis.Client:
			rt = b.Options().ReadTimeout
		case *redis.ClusterClient:
			rt = b.Options().ReadTimeout
		}
		switch {
		case rt == 0 || rt == -1: // no read timeout
			c.pipelineBlock = blockChunk
		case rt > 0:
			c.pipelineBlock = min(blockChunk, rt/2)
		}
	}
	return c
}

// EvalSha runs a script (redis.Script.Run calls it first).
func (c *conn) EvalSha(ctx context.Context, sha string, keys []string, args ...any) *redis.Cmd {
	return write(ctx, c, firstKey(keys), func(p redis.Cmdable) *redis.Cmd { return p.EvalSha(ctx, sha, keys, args...) })
}

// Eval runs a script (redis.Script.Run falls back to it on NOSCRIPT).
func (c *conn) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return write(ctx, c, firstKey(keys), func(p redis.Cmdable) *redis.Cmd { return p.Eval(ctx, script, keys, args...) })
}

// RPush is Push's one write that is not a script.
func (c *conn) RPush(ctx context.Context, key string, values ...any) *redis.IntCmd {
	return write(ctx, c, key, func(p redis.Cmdable) *redis.IntCmd { return p.RPush(ctx, key, values...) })
}

// block runs a blocking command on the blocking client, retrying refusals
// like any other command. It does not WAIT: BLMOVE only parks a message on
// the claim list, and a failover that undoes it leaves it on ready.
func (c *conn) block(ctx context.Context, args ...any) *redis.Cmd {
	return retry(ctx, c, func() *redis.Cmd { return c.blocking.Do(ctx, args...) })
}

// checkReplicaTimeout refuses a ReplicaTimeout the client would cut short:
// WAIT is read with the client's read timeout, and a WAIT that times out
// on the client side leaves the outcome unknown for no reason.
func checkReplicaTimeout(rdb redis.UniversalClient, cfg *Config) error {
	if cfg.Replicas == 0 {
		return nil
	}
	var rt time.Duration
	switch r := rdb.(type) {
	case *redis.Client:
		rt = r.Options().ReadTimeout
	case *redis.ClusterClient:
		rt = r.Options().ReadTimeout
	}
	if rt > 0 && cfg.ReplicaTimeout >= rt {
		return fmt.Errorf("%w: Config.ReplicaTimeout %v: must be below the Redis client's read timeout %v", ErrInvalidArgument, cfg.ReplicaTimeout, rt)
	}
	return nil
}

func firstKey(keys []string) string {
	if len(keys) == 0 {
		return ""
	}
	return keys[0]
}

// write sends one command through retry, followed by WAIT when replicas
// are asked for.
func write[C redis.Cmder](ctx context.Context, c *conn, key string, send func(redis.Cmdable) C) C {
	return retry(ctx, c, func() C {
		if c.replicas <= 0 {
			return send(c.UniversalClient)
		}
		return writeAndWait(ctx, c, key, send)
	})
}

// writeAndWait sends the command and WAIT in one pipeline, so both use one
// connection: WAIT counts the replicas that have the writes of its own
// connection. On a Cluster the pipeline goes to the master of key's slot
// (all of a queue's keys share it). An ASK reply there (the slot is
// migrating and the keys are already on the importing node) is followed
// at once: the pipeline goes again to that node, after ASKING. A MOVED
// reply, or an ASK to a node the client does not know, is a refusal that
// retry handles after reloading the slot map.
func writeAndWait[C redis.Cmder](ctx context.Context, c *conn, key string, send func(redis.Cmdable) C) C {
	var node redis.Cmdable = c.UniversalClient
	if cc, ok := c.UniversalClient.(*redis.ClusterClient); ok {
		n, err := cc.MasterForKey(ctx, key)
		if err != nil {
			cmd := send(c.UniversalClient.Pipeline()) // queued, never sent
			cmd.SetErr(err)
			return cmd
		}
		node = n
	}
	cmd, wait := sendAndWait(ctx, c, node, false, send)
	if addr, ok := askTarget(cmd.Err()); ok {
		// The slot is migrating and the keys are already on addr: run
		// the command there after ASKING, as go-redis does for a single
		// command, instead of waiting out the whole migration.
		if n := clusterMaster(ctx, c.UniversalClient, addr); n != nil {
			cmd, wait = sendAndWait(ctx, c, n, true, send)
		}
	}
	if cmd.Err() != nil && !errors.Is(cmd.Err(), redis.Nil) {
		return cmd
	}
	if err := wait.Err(); err != nil {
		cmd.SetErr(fmt.Errorf("%w: WAIT %d: %w", ErrNotReplicated, c.replicas, err))
	} else if n, err := wait.Int64(); err != nil || n < int64(c.replicas) {
		cmd.SetErr(fmt.Errorf("%w: %d of %d replicas acknowledged within %v", ErrNotReplicated, n, c.replicas, c.replicaTimeout))
	}
	return cmd
}

// sendAndWait sends the command and WAIT in one pipeline to node,
// preceded by ASKING if asking.
func sendAndWait[C redis.Cmder](ctx context.Context, c *conn, node redis.Cmdable, asking bool, send func(redis.Cmdable) C) (C, *redis.Cmd) {
	pipe := node.Pipeline()
	if asking {
		pipe.Do(ctx, "asking")
	}
	cmd := send(pipe)
	// Wait is not part of redis.Pipeliner: send it as a plain command.
	wait := pipe.Do(ctx, "wait", c.replicas, c.replicaTimeout.Milliseconds())
	_, _ = pipe.Exec(ctx) // errors are on the commands
	return cmd, wait
}

// askTarget returns the address of an ASK redirect ("ASK <slot>
// <host:port>").
func askTarget(err error) (string, bool) {
	if err == nil || !redis.HasErrorPrefix(err, "ASK") {
		return "", false
	}
	f := strings.Fields(err.Error())
	if len(f) != 3 || f[0] != "ASK" {
		return "", false
	}
	return f[2], true
}

// clusterMaster returns the client of the Cluster master at addr, or nil
// if rdb is no Cluster client or knows no master there.
func clusterMaster(ctx context.Context, rdb redis.UniversalClient, addr string) *redis.Client {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return nil
	}
	var mu sync.Mutex
	var found *redis.Client
	_ = cc.ForEachMaster(ctx, func(_ context.Context, n *redis.Client) error {
		if n.Options().Addr == addr {
			mu.Lock()
			found = n
			mu.Unlock()
		}
		return nil
	})
	return found
}

// retry runs do until it succeeds, fails with an error other than a
// refusal, or Config.RetryWindow has passed; between attempts it backs off
// (10 ms doubling to 250 ms) and, on a Cluster, asks for a fresh slot map.
func retry[C redis.Cmder](ctx context.Context, c *conn, do func() C) C {
	deadline := time.Now().Add(c.retryWindow)
	backoff := retryBackoffMin
	for {
		cmd := do()
		if c.retryWindow <= 0 || !refused(cmd.Err(), c.redialable) || time.Now().Add(backoff).After(deadline) {
			return cmd
		}
		if cc, ok := c.UniversalClient.(*redis.ClusterClient); ok {
			cc.ReloadState(ctx)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return cmd
		case <-t.C:
		}
		backoff = min(2*backoff, retryBackoffMax)
	}
}

// refused reports whether err proves that Redis did not run the command,
// so running it again cannot apply it twice: a Cluster redirect or slot
// migration (MOVED, ASK, TRYAGAIN), a Cluster or master that is down or
// loading (CLUSTERDOWN, MASTERDOWN, LOADING), a write sent to a replica
// or refused for lack of replicas (READONLY, NOREPLICAS; a script stops at
// its first write then, so it wrote nothing), or, with redial, a
// connection that could not be made. A standalone server that refuses
// connections is down, and waiting here would only delay the error.
func refused(err error, redial bool) bool {
	if err == nil {
		return false
	}
	for _, p := range []string{"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "READONLY", "NOREPLICAS"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	var oe *net.OpError
	return redial && errors.As(err, &oe) && oe.Op == "dial"
}
