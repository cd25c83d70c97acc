package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

// floorLib holds the least a pair of scripts can do to lease and ack one
// message, in two layouts:
//
//   - floor_take and floor_ack use ackd's: the take pops one element and
//     writes its record (held), its deadline (due) and its shadow key; the
//     ack deletes the three.
//   - floor2_take and floor2_ack keep no hash: the due set's member is the
//     token followed by the element, so a take writes two places and an
//     ack, which sends the record back, deletes two.
//   - floor_take with an ack that is no script at all: HDEL, ZREM and DEL
//     of the lease in one MULTI/EXEC, the cheapest atomic ack Redis has
//     (ackd's rule of one script per state change set aside).
//
// No checks (ACL, types, sizes, fencing by message id, resent calls), no
// envelope, no counts, no wake, the deadline from the client's clock:
// these are lower bounds for what any take and ack built on such a layout
// cost, measured beside ackd and Streams. Not something to run in
// production.
const floorLib = `#!lua name=ackdfloor
redis.register_function('floor_take', function(KEYS, ARGV)
  local p = redis.call('LMPOP', '2', KEYS[2], KEYS[1], 'LEFT')
  if not p then return false end
  local e = p[2][1]
  redis.call('HSET', KEYS[3], ARGV[1], e)
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
  redis.call('SET', KEYS[5], '1', 'PXAT', ARGV[2])
  return e
end)
redis.register_function('floor_ack', function(KEYS, ARGV)
  if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
  return 1
end)
redis.register_function('floor2_take', function(KEYS, ARGV)
  local p = redis.call('LMPOP', '2', KEYS[2], KEYS[1], 'LEFT')
  if not p then return false end
  local e = p[2][1]
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1] .. e)
  redis.call('SET', KEYS[4], '1', 'PXAT', ARGV[2])
  return e
end)
redis.register_function('floor2_ack', function(KEYS, ARGV)
  if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
  redis.call('DEL', KEYS[2])
  return 1
end)
`

// floorKind is one of the floors of floorLib.
type floorKind int

const (
	floorHash     floorKind = iota // floor_take and floor_ack: ackd's layout
	floorNoHash                    // floor2_take and floor2_ack: the record in the due set
	floorMultiAck                  // floor_take and the MULTI ack
)

// buildFloor measures the floor of kind. It waits as ackd's Take does
// with a pipelining client: after a take found the queue empty, the next
// take is BLMOVE onto the claim list and the take in one pipeline, so an
// idle consumer costs one round trip per wait.
func buildFloor(kind floorKind) func(*bench, *lease.Client) tputImpl {
	return func(b *bench, _ *lease.Client) tputImpl { return floorImpl(b, kind) }
}

func floorImpl(b *bench, kind floorKind) tputImpl {
	k := lease.KeysFor("q")
	noHash := kind == floorNoHash
	takeFn, ackFn := "floor_take", "floor_ack"
	if noHash {
		takeFn, ackFn = "floor2_take", "floor2_ack"
	}
	var seq atomic.Int64
	var empty atomic.Bool
	take := func(ctx context.Context) (elem, tok string, err error) {
		tok = fmt.Sprintf("%016x", seq.Add(1))
		dl := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
		keys := []string{k.Ready, k.Claim, k.Held, k.Due, lease.LeaseKey("q", tok)}
		if noHash {
			keys = []string{k.Ready, k.Claim, k.Due, lease.LeaseKey("q", tok)}
		}
		var c *redis.Cmd
		if empty.Load() {
			_, err = b.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				p.Do(ctx, "blmove", k.Ready, k.Claim, "LEFT", "RIGHT", tputBlockSec)
				c = p.FCall(ctx, takeFn, keys, tok, dl)
				return nil
			})
			if err != nil && !errors.Is(err, redis.Nil) {
				return "", "", err
			}
		} else {
			c = b.rdb.FCall(ctx, takeFn, keys, tok, dl)
		}
		elem, err = c.Text()
		empty.Store(errors.Is(err, redis.Nil))
		return elem, tok, err
	}
	return tputImpl{
		setup: func(ctx context.Context) error {
			return b.ctl.FunctionLoadReplace(ctx, floorLib).Err()
		},
		push:    listPush(b, k.Ready),
		backlog: listBacklog(b, k.Ready),
		check:   noneHeld(func(ctx context.Context) (int64, error) { return b.ctl.ZCard(ctx, k.Due).Result() }),
		consume: func(ctx context.Context, _ int, got func([]byte)) (int, error) {
			elem, tok, err := take(ctx)
			if errors.Is(err, redis.Nil) {
				return 0, nil
			}
			if err != nil {
				return 0, err
			}
			if got != nil {
				got(head(elem))
			}
			switch kind {
			case floorMultiAck:
				_, err := b.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
					p.HDel(ctx, k.Held, tok)
					p.ZRem(ctx, k.Due, tok)
					p.Del(ctx, lease.LeaseKey("q", tok))
					return nil
				})
				return 1, err
			case floorNoHash:
				return 1, b.rdb.FCall(ctx, ackFn, []string{k.Due, lease.LeaseKey("q", tok)}, tok+elem).Err()
			}
			return 1, b.rdb.FCall(ctx, ackFn, []string{k.Held, k.Due, lease.LeaseKey("q", tok)}, tok).Err()
		},
	}
}
