package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

const fillChunk = 1000

// memory measures used_memory per message held by each system, 100 B
// payloads, from an empty server.
func (b *bench) memory(ctx context.Context) error {
	n := b.opt.n
	payload := bytes.Repeat([]byte("p"), 100)
	type row struct {
		name  string
		bytes float64
		note  string
	}
	var rows []row

	// Plain list holding the messages.
	base, err := b.emptyMemory(ctx)
	if err != nil {
		return err
	}
	vals := repeated[any](payload, fillChunk)
	for left := n; left > 0; left -= fillChunk {
		if err := b.ctl.RPush(ctx, "q", vals[:min(left, fillChunk)]...).Err(); err != nil {
			return err
		}
	}
	list, err := b.usedMemory(ctx)
	if err != nil {
		return err
	}
	listBytes := float64(list-base) / float64(n)
	rows = append(rows, row{"plain list (RPUSH, nothing in flight)", listBytes, "the bare payloads"})

	// Streams: entries, then all of them pending (read, never acked).
	if base, err = b.emptyMemory(ctx); err != nil {
		return err
	}
	for left := n; left > 0; left -= fillChunk {
		_, err := b.ctl.Pipelined(ctx, func(p redis.Pipeliner) error {
			for range min(left, fillChunk) {
				p.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []any{"p", payload}})
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := b.ctl.XGroupCreate(ctx, "s", "g", "0").Err(); err != nil {
		return err
	}
	stream, err := b.usedMemory(ctx)
	if err != nil {
		return err
	}
	for read := 0; read < n; {
		res, err := b.ctl.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{"s", ">"}, Count: fillChunk, Block: -1}).Result()
		if err != nil {
			return fmt.Errorf("XREADGROUP: %w", err)
		}
		read += len(res[0].Messages)
	}
	pending, err := b.usedMemory(ctx)
	if err != nil {
		return err
	}
	rows = append(rows,
		row{"Streams entries (XADD, not yet read)", float64(stream-base) / float64(n), ""},
		row{"Streams pending entries (XREADGROUP, never acked)", float64(pending-base) / float64(n), "entry + PEL + consumer PEL"})

	// ackd: pushed, then all in flight.
	if base, err = b.emptyMemory(ctx); err != nil {
		return err
	}
	lc, err := lease.New(b.ctl, &lease.Config{LeaseFor: time.Hour})
	if err != nil {
		return err
	}
	ps := repeated(payload, fillChunk)
	for left := n; left > 0; left -= fillChunk {
		if _, err := lc.PushBatch(ctx, "q", ps[:min(left, fillChunk)], nil); err != nil {
			return err
		}
	}
	ready, err := b.usedMemory(ctx)
	if err != nil {
		return err
	}
	for taken := 0; taken < n; {
		ls, err := lc.TakeBatch(ctx, "q", fillChunk, nil)
		if err != nil {
			return err
		}
		taken += len(ls)
	}
	inflight, err := b.usedMemory(ctx)
	if err != nil {
		return err
	}
	k := lease.KeysFor("q")
	var parts []string
	var keyed int64
	for _, key := range []string{k.Held, k.Due} {
		u, err := b.ctl.MemoryUsage(ctx, key, 0).Result()
		if err != nil {
			return fmt.Errorf("MEMORY USAGE %s: %w", key, err)
		}
		keyed += u
		parts = append(parts, fmt.Sprintf("%s %s", key[strings.LastIndexByte(key, ':')+1:], fmtBytes(float64(u)/float64(n))))
	}
	parts = append(parts, "shadow keys and the rest "+fmtBytes(float64(inflight-base-keyed)/float64(n)))
	rows = append(rows,
		row{"ackd ready (PushBatch, nothing in flight)", float64(ready-base) / float64(n), "envelope: id and counters + payload"},
		row{"ackd in flight (TakeBatch, never acked)", float64(inflight-base) / float64(n), strings.Join(parts, "; ")})

	// The same leases rewritten in the layout of format 1, to compare.
	sims, err := b.layouts(ctx, "q", n)
	if err != nil {
		return err
	}
	for _, sm := range sims {
		rows = append(rows, row{sm.name, sm.bytes, sm.note})
	}

	streamPending := float64(pending-base) / float64(n)
	ackdInflight := float64(inflight-base) / float64(n)
	var s strings.Builder
	s.WriteString("## 4. Memory per message\n\n")
	fmt.Fprintf(&s, "INFO memory used_memory after filling, minus used_memory of the empty server, divided by %s messages of 100 B. "+
		"In flight means taken and never acked (ackd leases of 1 h; Streams entries read by one consumer and left pending). "+
		"The ackd breakdown uses MEMORY USAGE ... SAMPLES 0 on the held hash and the due set; the rest is mostly the "+
		"shadow keys (one string key with a TTL per lease).\n\n", fmtNum(float64(n)))
	var trows [][]string
	for _, r := range rows {
		trows = append(trows, []string{r.name, fmtBytes(r.bytes), ratio(r.bytes, streamPending), ratio(r.bytes, listBytes), r.note})
	}
	s.WriteString(table([]string{"what is held", "bytes/msg", "×Streams pending", "×list", "notes"}, trows))
	b.sections = append(b.sections, s.String())
	b.addTarget("memory per in-flight message", "ackd ≤ 2.5x a Streams pending entry",
		fmt.Sprintf("%s vs %s: %s", fmtBytes(ackdInflight), fmtBytes(streamPending), ratio(ackdInflight, streamPending)),
		ackdInflight <= 2.5*streamPending)
	return b.ctl.FlushAll(ctx).Err()
}

// simRow is one layout measured by layouts.
type simRow struct {
	name, note string
	bytes      float64
}

// layouts reads the n leases of queue (taken, never acked), then writes
// the same messages, deadlines and tokens in the layout of format 1 on an
// empty server (leases keyed by message id, the record "token|envelope",
// the shadow key holding the id) and measures it as the in-flight row is
// measured: what keying leases by token saved.
//
// Nothing of ackd reads this layout any more but sweep, stats and peek.
func (b *bench) layouts(ctx context.Context, queue string, n int) ([]simRow, error) {
	k := lease.KeysFor(queue)
	type held struct {
		id, token, env string
		deadline       float64
	}
	var ls []held
	recs, err := b.ctl.HGetAll(ctx, k.Held).Result()
	if err != nil {
		return nil, err
	}
	dls, err := b.ctl.ZRangeWithScores(ctx, k.Due, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	mark := "\xffackd1|"
	for _, z := range dls {
		tok := z.Member.(string)
		id, _, ok := strings.Cut(strings.TrimPrefix(recs[tok], mark), "|")
		if !ok {
			return nil, fmt.Errorf("lease record of %s: no envelope", tok)
		}
		ls = append(ls, held{id: id, token: tok, env: recs[tok], deadline: z.Score})
	}
	if len(ls) != n {
		return nil, fmt.Errorf("layouts: %d leases with deadlines, want %d", len(ls), n)
	}
	base, err := b.emptyMemory(ctx)
	if err != nil {
		return nil, err
	}
	for i := 0; i < len(ls); i += fillChunk {
		_, err := b.ctl.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, l := range ls[i:min(i+fillChunk, len(ls))] {
				p.HSet(ctx, k.Leases, l.id, l.token+"|"+l.env)
				p.ZAdd(ctx, k.Deadlines, redis.Z{Score: l.deadline, Member: l.id})
				p.Do(ctx, "SET", lease.LeaseKey(queue, l.token), l.id, "PXAT", int64(l.deadline))
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	used, err := b.usedMemory(ctx)
	if err != nil {
		return nil, err
	}
	return []simRow{
		{name: "format 1: the same leases keyed by message id", bytes: float64(used-base) / float64(n), note: "same leases rewritten as versions before this one stored them"},
	}, nil
}

// emptyMemory flushes the server and returns used_memory.
func (b *bench) emptyMemory(ctx context.Context) (int64, error) {
	if err := b.ctl.FlushAll(ctx).Err(); err != nil {
		return 0, err
	}
	return b.usedMemory(ctx)
}

func (b *bench) usedMemory(ctx context.Context) (int64, error) {
	st, err := b.stats(ctx)
	return st.memory, err
}
