package reaper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/notify"
)

const (
	// checkTimeout bounds one health-check PING.
	checkTimeout = 900 * time.Millisecond
	// eventsCheckTimeout bounds one check of notify-keyspace-events.
	eventsCheckTimeout = 5 * time.Second
)

// EventsStatus is the last check of notify-keyspace-events.
type EventsStatus struct {
	Checked bool   // false until Redis first answered the check
	Enabled bool   // the flags include E and x: expired shadow keys are heard
	Flags   string // the setting as read (per node on a cluster)
	Error   string // why it could not be read or set, if so
	// Observed: Enabled was inferred from an expired event arriving
	// (Config.ObserveEvents), not read with CONFIG; Flags is then empty.
	Observed bool
	// ReplicasEnabled: every replica reached (Cluster replicas, or those
	// the Sentinels list) has E and x too, so one promoted by a failover
	// sends expired events at once. True when none was reached.
	ReplicasEnabled bool
	Replicas        int    // replicas reached
	ReplicaError    string // why a replica's setting could not be read or set, if so
}

// health tracks whether Redis answers, and the keyspace-events setting.
type health struct {
	log  *slog.Logger // not demoted: it reports the outage itself
	name string
	user string // the ACL user ackd logs in as, for the auth-failure line

	mu      sync.Mutex
	down    bool
	since   time.Time
	changed time.Time // when the call that last changed down was sent

	checkMu  sync.Mutex // one events check at a time, so a change is made and logged once
	eventsMu sync.Mutex
	events   EventsStatus
}

// failed records a failed Redis call, sent at sent; the first one of an
// outage is logged. Error replies (WRONGTYPE from a hostile key, NOPERM,
// ...) are not an outage: Redis answered, and the caller logs them.
// LOADING is one, and so is a refused login (NOAUTH, WRONGPASS): ackd
// cannot work. A call sent before the one that last changed the state
// says nothing newer (see ok).
func (h *health) failed(err error, sent time.Time) {
	if !isOutage(err) {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down || sent.Before(h.changed) {
		return
	}
	h.down, h.since, h.changed = true, time.Now(), sent
	if redis.IsAuthError(err) {
		// The reply names no password; the user is named so that an
		// operator knows which credentials to fix.
		h.log.Error("redis refused ackd's credentials, retrying", h.redisAttr(), "user", h.user, "error", err)
		return
	}
	h.log.Warn("redis unavailable, retrying", h.redisAttr(), "error", err)
}

// isOutage reports whether err means ackd cannot use Redis: Redis did not
// answer, is loading its data, or refused ackd's login.
func isOutage(err error) bool {
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, lease.ErrNotReplicated):
		// The master answered and made the change; its replicas lag.
		return false
	case redis.IsAuthError(err), redis.IsLoadingError(err):
		return true
	}
	return !isReplyError(err)
}

// ok records a successful Redis call, sent at sent; the first one after
// an outage is logged. Calls end out of order: a sweep that Redis answered
// before an outage may report after the monitor's failed PING, which it
// must not undo (nor a stale failure a recovery), so a call sent before
// the one that last changed the state is ignored.
func (h *health) ok(sent time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.down || sent.Before(h.changed) {
		return
	}
	h.down, h.changed = false, sent
	h.log.Info("redis recovered", h.redisAttr(), "outage", time.Since(h.since).Round(time.Millisecond).String())
}

func (h *health) redisAttr() slog.Attr {
	if h.name == "" {
		return slog.Attr{}
	}
	return slog.String("redis", h.name)
}

func (h *health) isDown() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.down
}

// isReplyError reports whether err is an error reply from Redis (such as
// WRONGTYPE, or a refused CONFIG) rather than a failure to reach it.
func isReplyError(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// monitor PINGs Redis so that an outage and its end are logged even when
// nothing is swept: every CheckInterval, every OutageCheckInterval while
// Redis is down.
func (r *Reaper) monitor(ctx context.Context) error {
	t := time.NewTimer(r.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, checkTimeout)
		sent := time.Now()
		err := r.rdb.Ping(pctx).Err()
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("no answer to PING within %v", checkTimeout)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			r.log.Debug("redis check failed", "error", err)
			r.health.failed(err, sent)
		default:
			r.health.ok(sent)
		}
		if r.health.isDown() {
			t.Reset(r.cfg.OutageCheckInterval)
		} else {
			t.Reset(r.cfg.CheckInterval)
		}
	}
}

// checkEvents reads (and, if configured, sets) notify-keyspace-events and
// logs a change of state once.
func (r *Reaper) checkEvents(ctx context.Context) {
	if r.cfg.ObserveEvents {
		return // no CONFIG: observeEvents reports what arrives
	}
	h := &r.health
	h.checkMu.Lock()
	defer h.checkMu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, eventsCheckTimeout)
	defer cancel()
	var st notify.EventsState
	sent := time.Now()
	if r.cfg.Sentinel != nil {
		st = notify.EnsureEventsSentinel(cctx, r.rdb, r.cfg.Sentinel, r.cfg.ConfigureEvents)
	} else {
		st = notify.EnsureEvents(cctx, r.rdb, r.cfg.ConfigureEvents)
	}
	if ctx.Err() != nil {
		return
	}
	if isOutage(st.Err) {
		h.failed(st.Err, sent) // Redis did not answer: the events state is unchanged
		return
	}
	h.ok(sent)
	now := EventsStatus{Checked: true, Enabled: st.Enabled, Flags: st.Flags, ReplicasEnabled: st.ReplicasEnabled, Replicas: st.Replicas}
	if st.Err != nil {
		now.Error = st.Err.Error()
	}
	if st.ReplicaErr != nil {
		now.ReplicaError = st.ReplicaErr.Error()
	}
	h.eventsMu.Lock()
	before := h.events
	h.events = now
	h.eventsMu.Unlock()

	if st.Changed {
		r.log.Info("set notify-keyspace-events", "flags", now.Flags)
	}
	if now == before {
		return
	}
	const hint = "leases come back on timers and scans only; set notify-keyspace-events to include E and x (e.g. Exe)"
	switch {
	case !now.Enabled && now.Error != "":
		r.log.Warn("keyspace events are off or unknown: cannot read or set notify-keyspace-events", "flags", now.Flags, "error", now.Error, "hint", hint)
	case !now.Enabled:
		r.log.Warn("keyspace events are off", "flags", now.Flags, "configure_events", r.cfg.ConfigureEvents, "hint", hint)
	case now.Error != "":
		r.log.Warn("keyspace events are on, but checking them failed", "flags", now.Flags, "error", now.Error)
	case !st.Changed:
		r.log.Info("keyspace events are on", "flags", now.Flags)
	}
	if now.Enabled && (!now.ReplicasEnabled || now.ReplicaError != "") && (before.ReplicasEnabled != now.ReplicasEnabled || before.ReplicaError != now.ReplicaError) {
		r.log.Warn("keyspace events are off or unknown on a replica: a failover to it would send no expired events until ackd's next check",
			"flags", now.Flags, "error", now.ReplicaError, "hint", "set notify-keyspace-events on every replica too (e.g. Exe)")
	}
}

// observeEvents, with Config.ObserveEvents, marks events on once an
// expired event has arrived, and logs it once. It is called for every
// expired or evicted event; after the first expired one it costs one
// atomic load.
func (r *Reaper) observeEvents() {
	if !r.cfg.ObserveEvents || r.eventsSeen.Load() || r.lis.Stats().EventsExpired == 0 {
		return
	}
	if !r.eventsSeen.CompareAndSwap(false, true) {
		return
	}
	h := &r.health
	h.eventsMu.Lock()
	h.events = EventsStatus{Checked: true, Enabled: true, Observed: true}
	h.eventsMu.Unlock()
	r.log.Info("keyspace events are on: an expired event arrived")
}

// outageHandler demotes the parts' Warn and Error records to Debug while
// Redis is known to be down: the Reaper logs the outage and the recovery
// once itself, instead of a line per retry.
type outageHandler struct {
	slog.Handler
	down func() bool
}

func (h *outageHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn && h.down() {
		if !h.Handler.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = slog.LevelDebug
	}
	return h.Handler.Handle(ctx, r)
}

func (h *outageHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &outageHandler{Handler: h.Handler.WithAttrs(as), down: h.down}
}

func (h *outageHandler) WithGroup(name string) slog.Handler {
	return &outageHandler{Handler: h.Handler.WithGroup(name), down: h.down}
}
