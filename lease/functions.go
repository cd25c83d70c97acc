package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// How a Client runs its scripts. It calls each as a function of ackd's
// library (FCALL). A server without the library (never loaded, FUNCTION
// FLUSH, a restart without persistence, a new Cluster master) answers
// "Function not found" without running anything: the Client then loads
// the library on the master of the call's first key (the server itself
// unless on a Cluster) and calls again, once. Where FCALL itself is refused (ACL, Redis before 7,
// a command renamed away), it runs the script's own text with EVALSHA for
// good; where the library is missing and it may not load it, it uses
// EVALSHA for missingRecheck before calling the library again (another
// client, the daemon, may have loaded it by then). Both cases are logged
// once per Client. The two ways run the same code on the same keys: a
// call runs one way or the other, never both.

// missingRecheck is how long a Client that found the library missing,
// and may not load it, runs its scripts with EVALSHA before it tries
// FCALL again.
const missingRecheck = 30 * time.Second

// funcState is a Client's knowledge of the library on its server.
type funcState struct {
	log *slog.Logger
	// recheck is missingRecheck; tests shorten it.
	recheck time.Duration
	// off: FCALL was refused; EVALSHA for good.
	off atomic.Bool
	// noLoad: FUNCTION LOAD was refused; not tried again.
	noLoad atomic.Bool
	// missingUntil: the library was missing and could not be loaded:
	// EVALSHA until then (unix ns).
	missingUntil atomic.Int64
	offOnce      sync.Once
	noLoadOnce   sync.Once
}

// fcalls reports whether the next script call is an FCALL.
func (f *funcState) fcalls() bool {
	u := f.missingUntil.Load()
	return !f.off.Load() && (u == 0 || time.Now().UnixNano() >= u)
}

// turnOff makes every later call EVALSHA, after FCALL was refused.
func (f *funcState) turnOff(err error) {
	f.off.Store(true)
	f.offOnce.Do(func() {
		f.log.Warn("lease: Redis refuses FCALL: scripts run with EVALSHA (see docs/SECURITY.md)", "error", err.Error())
	})
}

// fcallRefused reports whether FCALL itself was refused (not allowed to
// the user, or unknown to the server), so that nothing ran.
func fcallRefused(err error) bool {
	if err == nil {
		return false
	}
	msg := strings.ToLower(err.Error())
	return redis.HasErrorPrefix(err, "NOPERM") && strings.Contains(msg, "'fcall'") ||
		strings.Contains(msg, "unknown command 'fcall'")
}

// functionMissing reports whether the server lacks the called function,
// so that nothing ran.
func functionMissing(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && strings.HasPrefix(re.Error(), "ERR Function not found")
}

// notRun reports whether a script call's error says that the server ran
// nothing because it lacks the script or refuses FCALL: the call can be
// made again, the way Run chooses.
func notRun(err error) bool {
	return functionMissing(err) || fcallRefused(err) || redis.HasErrorPrefix(err, "NOSCRIPT")
}

// Run runs the script with keys and args on c, as FCALL of its function
// or with EVALSHA (see funcState). Either way it goes through c: retried
// while refused, followed by WAIT when replicas are asked for.
func (s *script) Run(ctx context.Context, c *conn, keys []string, args ...any) *redis.Cmd {
	if !c.fn.fcalls() {
		return s.Script.Run(ctx, c, keys, args...)
	}
	cmd := c.fcall(ctx, s, keys, args)
	if functionMissing(cmd.Err()) && c.load(ctx, keys) {
		cmd = c.fcall(ctx, s, keys, args)
	}
	switch err := cmd.Err(); {
	case fcallRefused(err):
		c.fn.turnOff(err)
	case functionMissing(err):
	default:
		return cmd
	}
	return s.Script.Run(ctx, c, keys, args...)
}

// fcall sends one FCALL of s through write.
func (c *conn) fcall(ctx context.Context, s *script, keys []string, args []any) *redis.Cmd {
	return write(ctx, c, firstKey(keys), func(p redis.Cmdable) *redis.Cmd { return p.FCall(ctx, s.fn, keys, args...) })
}

// queue adds a call of s to pipe, as FCALL or EVALSHA (see funcState). A
// notRun error on it means the call can be made again with Run.
func (s *script) queue(ctx context.Context, c *conn, pipe redis.Cmdable, keys []string, args ...any) *redis.Cmd {
	if c.fn.fcalls() {
		return pipe.FCall(ctx, s.fn, keys, args...)
	}
	return pipe.EvalSha(ctx, s.Hash(), keys, args...)
}

// queuedReply is the reply of cmd, a call of s queued with queue and sent
// at *sent. When Redis refused it without running it (notRun, or refused:
// a Cluster redirect, a failover), it runs again with Run, after
// prepareRerun, and *sent moves to then; rerun reports that it did.
func (s *script) queuedReply(ctx context.Context, c *conn, cmd *redis.Cmd, sent *time.Time, keys []string, args ...any) (res []any, rerun bool, err error) {
	err = cmd.Err()
	if err != nil && (notRun(err) || refused(err, c.redialable)) {
		c.prepareRerun(ctx, err, keys)
		*sent = time.Now()
		res, err = s.Run(ctx, c, keys, args...).Slice()
		return res, true, err
	}
	if err != nil {
		return nil, false, err
	}
	res, err = cmd.Slice()
	return res, false, err
}

// prepareRerun acts on a notRun error of a queued call (see queue)
// before the call runs again with Run: FCALL refused turns FCALL off, a
// missing function loads the library, so that Run does not find either
// again.
func (c *conn) prepareRerun(ctx context.Context, err error, keys []string) {
	switch {
	case fcallRefused(err):
		c.fn.turnOff(err)
	case functionMissing(err):
		c.load(ctx, keys)
	}
}

// load loads the library on the masters of the first keys of calls
// (each a script call's keys) and reports whether it is there now. It
// does not try when a load was refused before; a refusal now is
// remembered, and either way the calls use EVALSHA for missingRecheck.
func (c *conn) load(ctx context.Context, calls ...[]string) bool {
	if c.fn.noLoad.Load() {
		c.fn.missingUntil.Store(time.Now().Add(c.fn.recheck).UnixNano())
		return false
	}
	nodes := []redis.Cmdable{c.UniversalClient}
	if cc, ok := c.UniversalClient.(*redis.ClusterClient); ok {
		nodes = nodes[:0]
		seen := map[string]bool{}
		for _, keys := range calls {
			n, err := cc.MasterForKey(ctx, firstKey(keys))
			if err != nil {
				return false
			}
			if addr := n.Options().Addr; !seen[addr] {
				seen[addr] = true
				nodes = append(nodes, n)
			}
		}
	}
	for _, n := range nodes {
		if err := loadOn(ctx, c, n); err != nil {
			if loadRefused(err) {
				c.fn.noLoad.Store(true)
				c.fn.missingUntil.Store(time.Now().Add(c.fn.recheck).UnixNano())
				c.fn.noLoadOnce.Do(func() {
					c.fn.log.Warn("lease: Redis lacks ackd's function library and refuses FUNCTION LOAD: scripts run with EVALSHA until the library is loaded (see docs/SECURITY.md)",
						"library", library.name, "error", err.Error())
				})
			}
			return false
		}
	}
	return true
}

// loadOn loads the library on node, retried while refused; a library of
// that name already there (the same code, by its name) is success.
func loadOn(ctx context.Context, c *conn, node redis.Cmdable) error {
	err := retry(ctx, c, func() *redis.StringCmd { return node.FunctionLoad(ctx, library.code) }).Err()
	if err != nil && strings.Contains(err.Error(), "already exists") {
		return nil
	}
	return err
}

// loadRefused reports whether err is Redis refusing FUNCTION LOAD for
// good (ACL, a command renamed away or blocked, Redis before 7): an error
// reply that is no refusal retry waits out. A connection error is not.
func loadRefused(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !refused(err, false)
}

// LoadFunctions loads ackd's function library (see Library) on the
// server, or on every master of a Cluster, unless it is there already.
// Clients load it themselves when they first need it on a node, if their
// Redis user may (FUNCTION LOAD); the daemon calls LoadFunctions at start
// so that clients whose users may not find it there. An error says that
// the library could not be loaded on some node; clients then run their
// scripts there with EVALSHA, as before Redis 7.
func (c *Client) LoadFunctions(ctx context.Context) error {
	var err error
	if cc, ok := c.rdb.UniversalClient.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			if e := loadOn(ctx, c.rdb, n); e != nil {
				return fmt.Errorf("%s: %w", n.Options().Addr, e)
			}
			return nil
		})
	} else {
		err = loadOn(ctx, c.rdb, c.rdb.UniversalClient)
	}
	if err != nil {
		return fmt.Errorf("lease: load function library %s: %w", library.name, convertErr(err))
	}
	return nil
}

// scriptCall is one script call of a pipeline.
type scriptCall struct {
	s    *script
	keys []string
	args []any
}

// How a call of runPipelined is sent.
const (
	byFcall = iota
	byEvalSha
	byEval
)

// runPipelined sends calls in one pipeline (go-redis splits it per
// Cluster node), as FCALL or EVALSHA like Run, and recovers as Run does,
// for all calls at once, in one more pipeline per step: calls that found
// the library missing go again once it is loaded (on each node they
// need), those refused FCALL or not loaded go with EVALSHA, those that
// found no script with EVAL. It neither retries refusals nor WAITs: it is
// for scripts that write nothing.
func (c *conn) runPipelined(ctx context.Context, calls []scriptCall) []*redis.Cmd {
	cmds := make([]*redis.Cmd, len(calls))
	by := make([]int, len(calls))
	todo := make([]int, len(calls))
	first := byFcall
	if !c.fn.fcalls() {
		first = byEvalSha
	}
	for i := range calls {
		by[i], todo[i] = first, i
	}
	loaded := false
	for len(todo) > 0 {
		_, _ = c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range todo {
				k := calls[i]
				switch by[i] {
				case byFcall:
					cmds[i] = p.FCall(ctx, k.s.fn, k.keys, k.args...)
				case byEvalSha:
					cmds[i] = k.s.EvalSha(ctx, p, k.keys, k.args...)
				default:
					cmds[i] = k.s.Eval(ctx, p, k.keys, k.args...)
				}
			}
			return nil
		})
		var again, missing []int
		for _, i := range todo {
			switch err := cmds[i].Err(); {
			case by[i] == byFcall && fcallRefused(err):
				c.fn.turnOff(err)
				by[i] = byEvalSha
				again = append(again, i)
			case by[i] == byFcall && functionMissing(err):
				missing = append(missing, i)
			case by[i] == byEvalSha && redis.HasErrorPrefix(err, "NOSCRIPT"):
				by[i] = byEval
				again = append(again, i)
			}
		}
		if len(missing) > 0 {
			keys := make([][]string, len(missing))
			for j, i := range missing {
				keys[j] = calls[i].keys
			}
			ok := !loaded && c.load(ctx, keys...)
			loaded = true
			for _, i := range missing {
				if !ok {
					by[i] = byEvalSha
				}
				again = append(again, i)
			}
		}
		todo = again
	}
	return cmds
}
