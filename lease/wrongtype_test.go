package lease

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
)

// Another team writing to the same Redis may overwrite a key of a queue
// with a value of another type. Redis then refuses every command on it
// with WRONGTYPE, possibly after a script has already written elsewhere:
// a script is not rolled back. These tests run every operation of the ACL
// table (aclOps) with each key of its queue overwritten so, just before the
// operation's first call, and check that no message is lost, duplicated
// or misplaced by ackd.

// firstCallHook runs fire once, before the first command (or pipeline) of
// the client it is added to: the setup of an aclOp seeds as the admin,
// then acts as the user, so the user's first call is the operation.
type firstCallHook struct {
	once sync.Once
	fire func(ctx context.Context)
}

func (h *firstCallHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *firstCallHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.once.Do(func() { h.fire(ctx) })
		return next(ctx, cmd)
	}
}

func (h *firstCallHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.once.Do(func() { h.fire(ctx) })
		return next(ctx, cmds)
	}
}

// hostileValue is what the other team writes over a key: a string over a
// list, hash or zset, a hash over a string (paused, shadow keys).
const hostileValue = "written by another team"

// hostileKeys returns the keys of queue that pattern (one of queueKeys)
// names, as they are now.
func hostileKeys(ctx context.Context, rdb *redis.Client, queue, pattern string) ([]string, error) {
	if pattern != "lease:*" {
		return []string{"ackd:{" + queue + "}:" + pattern}, nil
	}
	return rdb.Keys(ctx, LeaseKey(queue, "*")).Result()
}

// overwrite replaces keys with a value of the wrong type.
func overwrite(ctx context.Context, rdb *redis.Client, pattern string, keys []string) error {
	for _, k := range keys {
		var err error
		if pattern == "paused" || pattern == "lease:*" {
			err = rdb.Del(ctx, k).Err()
			if err == nil {
				err = rdb.HSet(ctx, k, "by", hostileValue).Err()
			}
		} else {
			err = rdb.Set(ctx, k, hostileValue, 0).Err()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unhostile deletes those of keys that still hold the other team's value,
// so that the state can be read (ackd writes over a shadow key or a pause
// flag of the wrong type: those hold ackd's value now).
func unhostile(ctx context.Context, rdb *redis.Client, keys []string) error {
	for _, k := range keys {
		typ, err := rdb.Type(ctx, k).Result()
		if err != nil {
			return err
		}
		var v string
		switch typ {
		case "string":
			v, err = rdb.Get(ctx, k).Result()
		case "hash":
			v, err = rdb.HGet(ctx, k, "by").Result()
			if err == redis.Nil {
				err = nil
			}
		}
		if err != nil {
			return err
		}
		if v == hostileValue {
			if err := rdb.Del(ctx, k).Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// runWrongType runs op on a fresh queue with the keys pattern names
// overwritten before the operation's first call. It returns the audit:
// messages lost, duplicated or misplaced, apart from those that were in
// the overwritten key (the other team's write lost them, not ackd) and the
// broken structures that write left (a lease without its deadline).
func runWrongType(t *testing.T, srv *redistest.Server, admin *Client, queue, pattern string, op aclOp) (aclCounts, []string, error, bool) {
	t.Helper()
	rdb := srv.Client(t)
	uc, err := New(rdb, &Config{MaxPayload: 1024})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	adminDB := admin.rdb.UniversalClient.(*redis.Client)
	e := &aclEnv{t: t, queue: queue, admin: admin, adminDB: adminDB, user: uc, vanish: map[string]bool{}, c: ctx}

	var keys []string
	var baseline placement
	fired := false
	rdb.AddHook(&firstCallHook{fire: func(context.Context) {
		fired = true
		var err error
		keys, err = hostileKeys(ctx, adminDB, queue, pattern)
		if err == nil && len(keys) > 0 {
			// the state as the other team's write leaves it, the key
			// aside: what ackd must keep
			err = adminDB.Del(ctx, keys...).Err()
		}
		if err != nil {
			t.Errorf("overwriting %s: %v", pattern, err)
			return
		}
		baseline = place(t, adminDB, queue)
		if err := overwrite(ctx, adminDB, pattern, keys); err != nil {
			t.Errorf("overwriting %s: %v", pattern, err)
		}
	}})
	opErr := op.run(e)
	if ctx.Err() != nil {
		t.Errorf("%s with %s of the wrong type: hung (%v)", op.name, pattern, opErr)
	}
	if !fired {
		return aclCounts{}, nil, opErr, false
	}
	if err := unhostile(t.Context(), adminDB, keys); err != nil {
		t.Fatal(err)
	}
	for _, pl := range e.payloads {
		if len(baseline.places[pl]) == 0 {
			e.vanish[pl] = true // it was in the overwritten key
		}
	}
	c, why := e.audit()
	var kept []string
	for _, w := range why {
		if a, ok := strings.CutPrefix(w, "MISPLACED "); ok && slices.Contains(baseline.anomalies, a) {
			c.misplaced--
			continue
		}
		kept = append(kept, w)
	}
	return c, kept, opErr, true
}

// wrongTypeSkip are operations whose setup writes after the user's first
// call, which the overwritten key would refuse.
var wrongTypeSkip = map[string]bool{"ack and take, reporting what remains": true}

// wrongTypeAcks are operations that ack (these payloads): an ack done
// before a later command of the same script met the wrong-type key is
// done, although the call returns that command's error.
var wrongTypeAcks = map[string][]string{
	"ack and take":              {"m1"},
	"ack and take, delayed due": {"m1", "m2"},
	"ack and take, paused":      {"m1"},
	"ack and take, oversized":   {"m1"},
}

// TestWrongTypeLeaveOneOut runs every operation of the ACL table with each
// key of its queue overwritten with a value of the wrong type just before
// the operation. The operation may fail (with an error: never a panic or a
// hang), but every message is still in exactly one place, except those the
// overwritten key held.
func TestWrongTypeLeaveOneOut(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	admin, err := New(srv.Client(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	fmt.Fprintf(&table, "%-10s %5s %5s %5s %6s %4s\n", "key", "lost", "dup", "misp", "failed", "runs")
	n := 0
	for _, pattern := range append(queueKeys, "deaderrs") {
		var sum aclCounts
		failed, runs := 0, 0
		for _, op := range aclOps {
			if wrongTypeSkip[op.name] {
				continue
			}
			n++
			queue := fmt.Sprintf("wt.%d", n)
			c, why, err, fired := runWrongType(t, srv, admin, queue, pattern, op)
			if !fired {
				if err != nil {
					t.Errorf("%s (no call as the user): %v", op.name, err)
				}
				continue
			}
			runs++
			if err != nil {
				failed++
				var left []string
				for _, w := range why {
					acked := false
					for _, pl := range wrongTypeAcks[op.name] {
						acked = acked || w == fmt.Sprintf("LOST %q", pl)
					}
					if acked {
						c.lost--
					} else {
						left = append(left, w)
					}
				}
				why = left
			}
			sum.lost += c.lost
			sum.duplicated += c.duplicated
			sum.misplaced += c.misplaced
			if len(why) > 0 {
				t.Errorf("%s with %s of the wrong type (err %v): %s", op.name, pattern, err, strings.Join(why, "; "))
			}
		}
		fmt.Fprintf(&table, "%-10s %5d %5d %5d %6d %4d\n", pattern, sum.lost, sum.duplicated, sum.misplaced, failed, runs)
	}
	t.Logf("wrong-type keys, %d runs (per key overwritten: messages lost, duplicated, misplaced by ackd; operations that failed; operations run):\n%s", n, table.String())
}
