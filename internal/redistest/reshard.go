package redistest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// migrateBatchDefault is how many keys one MIGRATE moves unless
// MigrateOptions says otherwise.
const migrateBatchDefault = 100

// Migration is a slot being moved between masters, held at any point
// between BeginMigration and Finish so a test can watch commands meet
// ASK and TRYAGAIN.
type Migration struct {
	c        *Cluster
	Slot     int
	From, To *Server
	began    time.Time
}

// BeginMigration marks slot IMPORTING on to and MIGRATING on its current
// owner, and moves no key yet: commands on keys of the slot that exist
// only on the source still run there, keys that do not exist get ASK, and
// a command on several keys of which some are missing gets TRYAGAIN.
func (c *Cluster) BeginMigration(t testing.TB, slot int, to *Server) *Migration {
	t.Helper()
	from := c.SlotMaster(t, slot)
	if from == to {
		t.Fatalf("redistest: BeginMigration: %s already owns slot %d", to.Addr(), slot)
	}
	m, err := c.beginMigration(context.Background(), slot, from, to)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return m
}

func (c *Cluster) beginMigration(ctx context.Context, slot int, from, to *Server) (*Migration, error) {
	if err := c.client(to).Do(ctx, "CLUSTER", "SETSLOT", slot, "IMPORTING", c.ID(from)).Err(); err != nil {
		return nil, fmt.Errorf("SETSLOT %d IMPORTING on %s: %w", slot, to.Addr(), err)
	}
	began := time.Now()
	if err := c.client(from).Do(ctx, "CLUSTER", "SETSLOT", slot, "MIGRATING", c.ID(to)).Err(); err != nil {
		return nil, fmt.Errorf("SETSLOT %d MIGRATING on %s: %w", slot, from.Addr(), err)
	}
	return &Migration{c: c, Slot: slot, From: from, To: to, began: began}, nil
}

// MoveKeys migrates up to n keys of the slot (every key if n <= 0) from
// the source to the target with MIGRATE and returns how many it moved.
func (m *Migration) MoveKeys(t testing.TB, n int) int {
	t.Helper()
	moved, _, err := m.moveKeys(context.Background(), n, migrateBatchDefault)
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return moved
}

// moveKeys migrates up to n keys (every key if n <= 0), batch at a time,
// and returns how many keys and how many MIGRATE calls that took.
func (m *Migration) moveKeys(ctx context.Context, n, batch int) (moved, calls int, err error) {
	src := m.c.client(m.From)
	for n <= 0 || moved < n {
		size := batch
		if n > 0 {
			size = min(size, n-moved)
		}
		keys, err := src.ClusterGetKeysInSlot(ctx, m.Slot, size).Result()
		if err != nil {
			return moved, calls, fmt.Errorf("CLUSTER GETKEYSINSLOT %d on %s: %w", m.Slot, m.From.Addr(), err)
		}
		if len(keys) == 0 {
			break
		}
		// A key deleted since GETKEYSINSLOT is skipped; MIGRATE answers
		// NOKEY (not an error) only if none of them is left.
		args := []any{"MIGRATE", "127.0.0.1", m.To.Port(), "", 0, 10000, "REPLACE", "KEYS"}
		for _, k := range keys {
			args = append(args, k)
		}
		if err := src.Do(ctx, args...).Err(); err != nil {
			return moved, calls, fmt.Errorf("MIGRATE %d keys of slot %d to %s: %w", len(keys), m.Slot, m.To.Addr(), err)
		}
		moved += len(keys)
		calls++
	}
	return moved, calls, nil
}

// Finish moves every remaining key, assigns the slot to the target on the
// target, the source and every other master (in that order, as Redis'
// docs require), and returns once every running node agrees.
func (m *Migration) Finish(t testing.TB) {
	t.Helper()
	if _, err := m.assign(context.Background()); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	m.c.poll(t, clusterReadyTimeout, fmt.Sprintf("slot %d moves to %s", m.Slot, m.To.Addr()), m.c.owns([]int{m.Slot}, m.To))
}

// assign moves the remaining keys and gives the slot to the target, without
// waiting for the other nodes to hear of it. It returns the keys it moved.
func (m *Migration) assign(ctx context.Context) (int, error) {
	moved, _, err := m.moveKeys(ctx, 0, migrateBatchDefault)
	if err != nil {
		return moved, err
	}
	toID := m.c.ID(m.To)
	order := []*Server{m.To, m.From}
	for _, n := range m.c.running() {
		if n != m.To && n != m.From {
			order = append(order, n)
		}
	}
	for _, n := range order {
		if err := m.c.client(n).Do(ctx, "CLUSTER", "SETSLOT", m.Slot, "NODE", toID).Err(); err != nil {
			// A replica refuses SETSLOT, and any other node learns the
			// new owner from gossip anyway; only the two parties must.
			if n != m.To && n != m.From {
				continue
			}
			return moved, fmt.Errorf("SETSLOT %d NODE on %s: %w", m.Slot, n.Addr(), err)
		}
	}
	return moved, nil
}

// owns is a poll condition: every running node agrees that to owns slots.
func (c *Cluster) owns(slots []int, to *Server) func() (bool, string) {
	toID := c.ID(to)
	return func() (bool, string) {
		v, err := c.agreedView()
		if err != nil {
			return false, err.Error()
		}
		for _, s := range slots {
			if v.owner[s] != toID {
				return false, fmt.Sprintf("slot %d owned by %s", s, v.owner[s])
			}
		}
		return true, ""
	}
}

// MigrateSlot moves slot, with its keys, to the master to.
func (c *Cluster) MigrateSlot(t testing.TB, slot int, to *Server) {
	t.Helper()
	c.BeginMigration(t, slot, to).Finish(t)
}

// Reshard moves n of the slots that from owns, with their keys, to the
// master to, one slot at a time (the last n of its slots), as redis-cli
// --cluster reshard does, and returns the slots moved once every running
// node agrees on the new owners.
func (c *Cluster) Reshard(t testing.TB, n int, from, to *Server) []int {
	t.Helper()
	v := c.agreed(t)
	id := c.ID(from)
	var slots []int
	for s := numSlots - 1; s >= 0 && len(slots) < n; s-- {
		if v.owner[s] == id {
			slots = append(slots, s)
		}
	}
	if len(slots) < n {
		t.Fatalf("redistest: Reshard: %s owns %d slots, fewer than %d", from.Addr(), len(slots), n)
	}
	c.MoveSlots(t, slots, to)
	return slots
}

// MoveSlots migrates each of slots, with its keys, to the master to, one
// after the other, and returns once every running node agrees.
func (c *Cluster) MoveSlots(t testing.TB, slots []int, to *Server) {
	t.Helper()
	for _, s := range slots {
		if c.SlotMaster(t, s) != to {
			if _, err := c.BeginMigration(t, s, to).assign(context.Background()); err != nil {
				t.Fatalf("redistest: %v", err)
			}
		}
	}
	c.poll(t, clusterReadyTimeout, fmt.Sprintf("%d slots move to %s", len(slots), to.Addr()), c.owns(slots, to))
}

// SlotsOf returns the slots master owns, in order, as the running nodes
// agree.
func (c *Cluster) SlotsOf(t testing.TB, master *Server) []int {
	t.Helper()
	v := c.agreed(t)
	id := c.ID(master)
	var out []int
	for s, owner := range v.owner {
		if owner == id {
			out = append(out, s)
		}
	}
	return out
}

// MigrateOptions configures Migrate. A nil *MigrateOptions means all
// defaults.
type MigrateOptions struct {
	// Batch is how many keys one MIGRATE moves. Defaults to 100.
	Batch int
	// Between, if set, is called while the slot is marked migrating:
	// once before the first MIGRATE (moved 0), then after each batch with
	// the number of keys moved so far. A test holds the migration there,
	// for instance until its workload has met TRYAGAIN or ASK. An error
	// from it stops the migration and is returned; the slot stays
	// migrating.
	Between func(ctx context.Context, moved int) error
}

// MigrationStats is what one Migrate did.
type MigrationStats struct {
	Slot    int
	Keys    int // keys moved
	Batches int // MIGRATE calls
	// Held is the time from SETSLOT IMPORTING on the target to SETSLOT
	// NODE on it: how long commands on the slot's keys could meet
	// TRYAGAIN or ASK.
	Held time.Duration
	// Agreed is the time until every running node names the new owner.
	Agreed time.Duration
}

// Migrate moves slot, with its keys, from the master from to the master
// to, the way redis-cli --cluster reshard does: CLUSTER SETSLOT IMPORTING
// on to and MIGRATING on from, MIGRATE of the slot's keys in batches
// (CLUSTER GETKEYSINSLOT), then SETSLOT NODE on to, from and the other
// masters. It returns once every running node names to as the owner.
//
// Unlike the helpers that take a testing.TB it returns its errors, so it
// may run on any goroutine, beside a workload. from must own slot.
func (c *Cluster) Migrate(ctx context.Context, slot int, from, to *Server, opts *MigrateOptions) (MigrationStats, error) {
	var o MigrateOptions
	if opts != nil {
		o = *opts
	}
	if o.Batch <= 0 {
		o.Batch = migrateBatchDefault
	}
	st := MigrationStats{Slot: slot}
	if from == to {
		return st, fmt.Errorf("migrate slot %d: source and target are both %s", slot, to.Addr())
	}
	if v, err := c.agreedView(); err != nil {
		return st, fmt.Errorf("migrate slot %d: %w", slot, err)
	} else if v.owner[slot] != c.ID(from) {
		return st, fmt.Errorf("migrate slot %d: owned by %s, not by %s", slot, v.owner[slot], from.Addr())
	}
	m, err := c.beginMigration(ctx, slot, from, to)
	if err != nil {
		return st, err
	}
	for {
		if o.Between != nil {
			if err := o.Between(ctx, st.Keys); err != nil {
				return st, fmt.Errorf("migrate slot %d: held after %d keys: %w", slot, st.Keys, err)
			}
		}
		moved, calls, err := m.moveKeys(ctx, o.Batch, o.Batch)
		st.Keys += moved
		st.Batches += calls
		if err != nil {
			return st, err
		}
		if moved < o.Batch {
			break
		}
	}
	// Keys created meanwhile (a command on keys that all still existed on
	// the source) go with the rest; then the slot changes hands.
	moved, err := m.assign(ctx)
	st.Keys += moved
	if err != nil {
		return st, err
	}
	st.Held = time.Since(m.began)
	err = pollCtx(ctx, clusterReadyTimeout, fmt.Sprintf("slot %d moves to %s", slot, to.Addr()), c.owns([]int{slot}, to))
	st.Agreed = time.Since(m.began)
	return st, err
}

// Refusals sums INFO errorstats over every running node: the count of
// each error code its clients were sent (TRYAGAIN, ASK, MOVED,
// CLUSTERDOWN...) since the node started. Comparing two readings tells
// whether a workload met a migration or a failover.
func (c *Cluster) Refusals(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	for _, n := range c.running() {
		info, err := c.client(n).Info(ctx, "errorstats").Result()
		if err != nil {
			return nil, fmt.Errorf("INFO errorstats on %s: %w", n.Addr(), err)
		}
		for line := range strings.Lines(info) {
			// errorstat_TRYAGAIN:count=12
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":count=")
			code, isStat := strings.CutPrefix(name, "errorstat_")
			if !ok || !isStat {
				continue
			}
			v, err := strconv.ParseInt(rest, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("INFO errorstats on %s: bad line %q", n.Addr(), line)
			}
			out[code] += v
		}
	}
	return out, nil
}

// pollCtx calls cond every 10 ms until it reports true, and returns an
// error with cond's last explanation after timeout or when ctx ends.
func pollCtx(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v: %s", what, timeout, why)
		}
		t := time.NewTimer(10 * time.Millisecond) // polling period, not synchronisation
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: %w (%s)", what, ctx.Err(), why)
		case <-t.C:
		}
	}
}
