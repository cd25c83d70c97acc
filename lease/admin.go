package lease

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/uuid"
)

// The operations in this file are for operators and their tools (the ackd
// command, dashboards): counts, pages of messages in each state, dead
// letters by reason, replay and purge in bounded batches, pause and
// resume. None of them blocks Redis for long: each script reads or moves
// a bounded number of elements.

// Stats is one queue's state, read in one atomic step.
type Stats struct {
	Ready    int64 // waiting on the ready list (and the claim list)
	InFlight int64 // leased
	Delayed  int64 // waiting for their delay or nack backoff
	Dead     int64 // in the dead set
	// Paused reports whether takes lease nothing (see Pause), and
	// PausedAt since when; zero if not paused.
	Paused   bool
	PausedAt time.Time
	// OldestReady is when the message at the head of the ready list was
	// pushed: the time in its id (ackd's ids are UUIDv7). Zero when nothing
	// is ready, or when the head is a raw payload from a plain RPUSH (no
	// time was recorded for it) or carries a foreign id without a time.
	OldestReady time.Time
	// OldestReadyAge is Now - OldestReady, at least 0; 0 when OldestReady
	// is zero. It counts from the push, so a message that went back to
	// the queue after its lease ran out keeps its age (like SQS's
	// ApproximateAgeOfOldestMessage); a delayed message counts from when
	// it became due.
	OldestReadyAge time.Duration
	// EarliestDeadline is the first lease deadline; zero if none in flight.
	EarliestDeadline time.Time
	// NextDue is when the first delayed message becomes ready; zero if none.
	NextDue time.Time
	// Now is Redis's clock at the moment of the reading.
	Now time.Time
	// Acked, Purged and Replayed are the queue's running totals (the
	// Keys.Counts hash): messages acked, dead letters purged and dead
	// letters replayed since the queue began, or since Forget. Two
	// readings give rates: see Rates.
	Acked, Purged, Replayed int64
}

// Empty reports whether the queue holds no message in any state.
func (s Stats) Empty() bool {
	return s.Ready == 0 && s.InFlight == 0 && s.Delayed == 0 && s.Dead == 0
}

// headBytes is enough of an element for its mark and id.
const headBytes = len(envelopeMark) + 64 + 1

// Stats reads queue's counts and times in one atomic script.
func (c *Client) Stats(ctx context.Context, queue string) (Stats, error) {
	var s Stats
	if err := ValidateQueue(queue); err != nil {
		return s, err
	}
	v, err := statsScript.Run(ctx, c.rdb, statsKeys(queue), headBytes).Slice()
	if err != nil {
		return s, fmt.Errorf("lease: stats of %s: %w", queue, convertErr(err))
	}
	return parseStats(queue, v)
}

// StatsMany reads the Stats of each queue, one stats script per queue,
// sent in one pipelined round trip (on a Cluster, one per node). Each
// reading is atomic for its queue; the queues are not read at one
// instant. errs[i] is the error of queues[i], nil if it was read.
func (c *Client) StatsMany(ctx context.Context, queues []string) (stats []Stats, errs []error) {
	stats, errs = make([]Stats, len(queues)), make([]error, len(queues))
	todo := make([]int, 0, len(queues))
	for i, q := range queues {
		if errs[i] = ValidateQueue(q); errs[i] == nil {
			todo = append(todo, i)
		}
	}
	calls := make([]scriptCall, len(todo))
	for j, i := range todo {
		calls[j] = scriptCall{statsScript, statsKeys(queues[i]), []any{headBytes}}
	}
	for j, cmd := range c.rdb.runPipelined(ctx, calls) {
		i := todo[j]
		v, err := cmd.Slice()
		if err != nil {
			errs[i] = fmt.Errorf("lease: stats of %s: %w", queues[i], convertErr(err))
			continue
		}
		stats[i], errs[i] = parseStats(queues[i], v)
	}
	return stats, errs
}

func statsKeys(queue string) []string {
	k := KeysFor(queue)
	return []string{k.Ready, k.Claim, k.Due, k.Delayed, k.Dead, k.Paused, k.Counts, k.Deadlines}
}

// parseStats reads stats.lua's reply.
func parseStats(queue string, v []any) (Stats, error) {
	var s Stats
	if len(v) != 13 {
		return s, fmt.Errorf("lease: stats of %s: %w: reply %v", queue, ErrMalformed, v)
	}
	var n [12]int64
	for i := range n {
		j := i
		if i >= 9 {
			j++ // the head prefix sits between now and the totals
		}
		x, ok := v[j].(int64)
		if !ok {
			return s, fmt.Errorf("lease: stats of %s: %w: reply %v", queue, ErrMalformed, v)
		}
		n[i] = x
	}
	head, _ := v[9].(string)
	s.Acked, s.Purged, s.Replayed = n[9], n[10], n[11]
	s.Ready = n[0] + n[1]
	s.InFlight, s.Delayed, s.Dead = n[2], n[3], n[4]
	s.Paused, s.PausedAt = n[5] >= 0, msTime(n[5])
	s.EarliestDeadline, s.NextDue, s.Now = msTime(n[6]), msTime(n[7]), fromMS(n[8])
	if s.Ready > 0 {
		if t, ok := pushTime(head); ok {
			s.OldestReady = t
			s.OldestReadyAge = max(s.Now.Sub(t), 0)
		}
	}
	return s, nil
}

// msTime is fromMS for optional times: negative means none.
func msTime(v int64) time.Time {
	if v < 0 {
		return time.Time{}
	}
	return fromMS(v)
}

// pushTime reads the time in the id of an envelope (or its first bytes).
func pushTime(el string) (time.Time, bool) {
	rest, ok := strings.CutPrefix(el, envelopeMark)
	if !ok {
		return time.Time{}, false
	}
	id, _, _ := strings.Cut(rest, "|")
	return idTime(id)
}

// idTime is the time in a UUIDv7 id; false for any other id.
func idTime(id string) (time.Time, bool) {
	u, err := uuid.Parse(id)
	if err != nil || u.Version() != 7 || len(id) != 36 {
		return time.Time{}, false
	}
	sec, nsec := u.Time().UnixTime()
	return time.Unix(sec, nsec).Truncate(time.Millisecond), true
}

// newID returns a UUIDv7 id stamped with t (ms), random otherwise.
func newID(r io.Reader, t time.Time) string {
	var u uuid.UUID
	_, _ = r.Read(u[:])
	ms := uint64(t.UnixMilli())
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	u[6] = 0x70 | u[6]&0x0f
	u[8] = 0x80 | u[8]&0x3f
	return u.String()
}

// Pause stops queue's takes: they lease nothing, and blocking takes (and
// Consume) keep waiting without moving any message, until Resume. Pushes,
// plain RPUSH producers, acks, extends and the requeue of expired leases go
// on as usual. It reports whether the queue was running before; pausing a
// paused queue keeps the first PausedAt. The queue is registered.
func (c *Client) Pause(ctx context.Context, queue string) (bool, error) {
	if err := ValidateQueue(queue); err != nil {
		return false, err
	}
	if err := c.register(ctx, queue); err != nil {
		return false, err
	}
	n, err := pauseScript.Run(ctx, c.rdb, []string{KeysFor(queue).Paused}).Int()
	if err != nil {
		return false, fmt.Errorf("lease: pause %s: %w", queue, convertErr(err))
	}
	return n == 1, nil
}

// Resume lets queue's takes lease again; takes waiting on it get messages
// within a quarter of a second. It reports whether the queue was paused.
func (c *Client) Resume(ctx context.Context, queue string) (bool, error) {
	if err := ValidateQueue(queue); err != nil {
		return false, err
	}
	n, err := c.rdb.Del(ctx, KeysFor(queue).Paused).Result()
	if err != nil {
		return false, fmt.Errorf("lease: resume %s: %w", queue, convertErr(err))
	}
	return n == 1, nil
}

// Known reports whether queue is in the registry (see Queues).
func (c *Client) Known(ctx context.Context, queue string) (bool, error) {
	if err := ValidateQueue(queue); err != nil {
		return false, err
	}
	ok, err := c.rdb.SIsMember(ctx, RegistryKey, queue).Result()
	if err != nil {
		return false, fmt.Errorf("lease: look up queue %s: %w", queue, convertErr(err))
	}
	return ok, nil
}

// ErrNotEmpty: Forget was asked to drop a queue that still holds messages
// or is paused. Nothing changed.
var ErrNotEmpty = errors.New("lease: queue not empty")

// Forget removes an empty, running queue from the registry, so daemons
// stop watching it; its keys are all gone already, but for its running
// totals (Keys.Counts), which it deletes. A queue with messages
// in any state, or paused, is refused with an error wrapping ErrNotEmpty
// and the counts. A producer that pushes while Forget runs wins: the
// queue is registered again and Forget reports ErrNotEmpty. A Client
// registers a queue once, so one that pushes to it again after Forget
// does not register it again until it is restarted: forget a queue once
// its producers are gone.
func (c *Client) Forget(ctx context.Context, queue string) error {
	s, err := c.Stats(ctx, queue)
	if err != nil {
		return err
	}
	if err := notEmpty(queue, s); err != nil {
		return err
	}
	if err := c.rdb.SRem(ctx, RegistryKey, queue).Err(); err != nil {
		return fmt.Errorf("lease: forget %s: %w", queue, convertErr(err))
	}
	c.registered.Delete(queue)
	// The registry is outside the queue's slot, so the check and the
	// removal cannot be one script: look again, and put it back if
	// something arrived in between.
	s, err = c.Stats(ctx, queue)
	if err == nil {
		err = notEmpty(queue, s)
	}
	if err != nil {
		if rerr := c.rdb.SAdd(ctx, RegistryKey, queue).Err(); rerr != nil {
			return fmt.Errorf("lease: forget %s: register it again: %w (after %w)", queue, convertErr(rerr), err)
		}
		return err
	}
	// The running totals go with the queue (a queue of the same name
	// starts again from 0).
	if err := c.rdb.Del(ctx, KeysFor(queue).Counts).Err(); err != nil {
		return fmt.Errorf("lease: forget %s: delete its running totals: %w", queue, convertErr(err))
	}
	return nil
}

func notEmpty(queue string, s Stats) error {
	if s.Ready+s.InFlight+s.Delayed+s.Dead == 0 && !s.Paused {
		return nil
	}
	paused := ""
	if s.Paused {
		paused = ", paused"
	}
	return fmt.Errorf("%w: %s has %d ready, %d in flight, %d delayed, %d dead%s", ErrNotEmpty, queue, s.Ready, s.InFlight, s.Delayed, s.Dead, paused)
}

// State is where a message is.
type State string

// The states Peek reads.
const (
	StateReady    State = "ready"
	StateInFlight State = "inflight"
	StateDelayed  State = "delayed"
	StateDead     State = "dead"
)

// ParseState accepts "ready", "inflight" (or "in_flight"), "delayed" and "dead".
func ParseState(s string) (State, error) {
	switch s {
	case "ready", "delayed", "dead", "inflight":
		return State(s), nil
	case "in_flight", "in-flight":
		return StateInFlight, nil
	}
	return "", fmt.Errorf("%w: state %q: want ready, inflight, delayed or dead", ErrInvalidArgument, s)
}

// PeekOpts select a page for Peek. A nil *PeekOpts means the first 10.
type PeekOpts struct {
	// Offset is where the page starts (Page.Next of the previous page).
	Offset int
	// Limit is the most messages returned, 1 to MaxBatch. Defaults to 10.
	Limit int
	// Reason keeps only dead letters with this reason (StateDead only).
	Reason string
	// Preview is how many bytes of each payload to return, 0 to
	// MaxPreview. Defaults to none: payloads may hold personal data.
	Preview int
}

// MaxPreview bounds PeekOpts.Preview.
const MaxPreview = 64 << 10

// PeekDefault is the page size of a Peek without a Limit.
const PeekDefault = 10

// Message is what Peek shows of one message.
type Message struct {
	ID    string // "" for a raw payload on the ready list (it gets one when taken)
	State State
	// Attempts is its deliveries so far, MaxDeliveries its maximum
	// (Unlimited for none).
	Attempts      int
	MaxDeliveries int
	// Time is, by state: ready, when it was pushed (zero if unknown);
	// in flight, its lease deadline; delayed, when it becomes ready; dead,
	// when it died.
	Time   time.Time
	Reason string // dead letters: why
	Size   int    // payload bytes (the stored element's, if unparsable)
	// Preview is the first PeekOpts.Preview bytes of the payload.
	Preview []byte
	// Raw marks a payload pushed with a plain RPUSH (no envelope), and
	// Malformed data that ackd could not parse (shown as stored).
	Raw       bool
	Malformed bool
}

// Page is one page of Peek.
type Page struct {
	Messages []Message
	// Next is the Offset of the next page, -1 if this one is the last.
	Next int
}

// peekHeader is room for every header before a payload: dead record,
// lease token, envelope mark, id and counts.
const peekHeader = 256

// deadScanFactor bounds how many dead letters one script of a filtered
// Peek examines: this many times its Limit, at least MaxBatch.
const deadScanFactor = 4

// Peek reads a page of queue's messages in state, oldest first (ready:
// in the order takes get them). Payloads stay in Redis but for the first
// opts.Preview bytes. A page filtered by Reason is read in several bounded
// scripts until it is full or the dead set ends.
func (c *Client) Peek(ctx context.Context, queue string, state State, opts *PeekOpts) (Page, error) {
	var o PeekOpts
	if opts != nil {
		o = *opts
	}
	if o.Limit == 0 {
		o.Limit = PeekDefault
	}
	if err := ValidateQueue(queue); err != nil {
		return Page{}, err
	}
	if _, err := ParseState(string(state)); err != nil {
		return Page{}, err
	}
	if o.Offset < 0 || o.Limit < 1 || o.Limit > MaxBatch || o.Preview < 0 || o.Preview > MaxPreview {
		return Page{}, fmt.Errorf("%w: peek offset %d limit %d preview %d: need offset >= 0, limit 1 to %d, preview 0 to %d",
			ErrInvalidArgument, o.Offset, o.Limit, o.Preview, MaxBatch, MaxPreview)
	}
	if o.Reason != "" {
		if state != StateDead {
			return Page{}, fmt.Errorf("%w: reason %q: only for dead letters", ErrInvalidArgument, o.Reason)
		}
		if err := ValidateReason(o.Reason); err != nil {
			return Page{}, err
		}
	}
	k := KeysFor(queue)
	p := Page{Next: o.Offset}
	// A page filtered by reason may take several bounded scans.
	for p.Next >= 0 && len(p.Messages) < o.Limit {
		v, err := peekScript.Run(ctx, c.rdb, []string{k.Claim, k.Ready, k.Held, k.Due, k.Delayed, k.Dead, k.DeadMsgs, k.Leases, k.Deadlines},
			string(state), p.Next, o.Limit-len(p.Messages), peekHeader+o.Preview, o.Reason, max(o.Limit*deadScanFactor, MaxBatch)).Slice()
		if err != nil {
			return Page{}, fmt.Errorf("lease: peek %s of %s: %w", state, queue, convertErr(err))
		}
		next, ok := v[0].(int64)
		if !ok || (len(v)-1)%4 != 0 {
			return Page{}, fmt.Errorf("lease: peek %s of %s: %w: reply header", state, queue, ErrMalformed)
		}
		p.Next = int(next)
		for i := 1; i < len(v); i += 4 {
			id, _ := v[i].(string)
			score, _ := v[i+1].(int64)
			size, _ := v[i+2].(int64)
			prefix, _ := v[i+3].(string)
			p.Messages = append(p.Messages, decodePeek(state, id, score, int(size), []byte(prefix), o.Preview))
		}
	}
	return p, nil
}

// ValidateReason reports whether r can be a dead-letter reason: 1 to 32
// lowercase ASCII letters (ackd writes "expired", "failed", "malformed"
// and "killed").
func ValidateReason(r string) error {
	if r == "" || len(r) > 32 || strings.IndexFunc(r, func(c rune) bool { return c < 'a' || c > 'z' }) >= 0 {
		return fmt.Errorf("%w: reason %q: want 1 to 32 lowercase letters", ErrInvalidArgument, r)
	}
	return nil
}

// decodePeek turns the first bytes of a stored element into a Message.
// prefix is at most peekHeader+preview bytes of an element of size bytes.
func decodePeek(state State, id string, score int64, size int, prefix []byte, preview int) Message {
	m := Message{ID: id, State: state, Size: size}
	if state != StateReady {
		m.Time = fromMS(score)
	}
	body := prefix
	taken := 0 // added to the attempts the element holds: its lease's delivery
	switch state {
	case StateDead:
		d := decodeDead(id, prefix)
		m.Reason = d.Reason
		if d.Payload == nil {
			m.Malformed = true
			m.Size = size - (len(prefix) - len(d.Raw))
			m.Preview = d.Raw
			break
		}
		m.Attempts = d.Attempts
		m.Size = size - (len(prefix) - len(d.Payload))
		m.Preview = d.Payload
		if e, ok := envelopeIn(prefix); ok {
			m.MaxDeliveries = maxOf(e.Max)
		}
	case StateInFlight:
		// a lease keyed by token holds the envelope as it was before the
		// take; one of format 1 token "|" envelope, counting the delivery
		if isEnvelope(prefix) {
			taken = 1
		} else if _, env, ok := splitLeaseRecord(prefix); ok {
			body = env
		} else {
			m.Malformed, m.Preview = true, prefix
			break
		}
		fallthrough
	default:
		if !isEnvelope(body) {
			if state == StateReady {
				m.Raw = true
			} else {
				m.Malformed = true
			}
			m.Preview = body
			break
		}
		e, err := parseEnvelope(body)
		if err != nil {
			m.Malformed, m.Preview = true, body
			break
		}
		m.ID, m.Attempts, m.MaxDeliveries = e.ID, e.Attempts+taken, maxOf(e.Max)
		m.Size = size - (len(prefix) - len(e.Payload))
		m.Preview = e.Payload
		if state == StateReady {
			m.Time, _ = idTime(e.ID)
		}
	}
	m.Preview = m.Preview[:min(len(m.Preview), preview)]
	if len(m.Preview) == 0 {
		m.Preview = nil
	}
	return m
}

// envelopeIn finds the envelope in a dead record's body.
func envelopeIn(rec []byte) (envelope, bool) {
	r, err := parseDeadRecord(rec)
	if err != nil {
		return envelope{}, false
	}
	body := r.Body
	if !isEnvelope(body) {
		if _, inner, ok := splitLeaseRecord(body); ok {
			body = inner
		}
	}
	e, err := parseEnvelope(body)
	return e, err == nil
}

func maxOf(stored int) int {
	if stored == 0 {
		return Unlimited
	}
	return stored
}

// DeadReasons counts queue's dead letters by reason, reading the dead set
// in bounded pages; under concurrent changes the counts are approximate.
func (c *Client) DeadReasons(ctx context.Context, queue string) (map[string]int64, error) {
	out := map[string]int64{}
	for off := 0; off >= 0; {
		p, err := c.Peek(ctx, queue, StateDead, &PeekOpts{Offset: off, Limit: MaxBatch})
		if err != nil {
			return nil, err
		}
		for _, m := range p.Messages {
			out[m.Reason]++
		}
		off = p.Next
	}
	return out, nil
}

// DeadOpts select the dead letters of ReplayAll and PurgeAll. A nil
// *DeadOpts means every dead letter, in batches of DeadBatchDefault.
type DeadOpts struct {
	// Reason keeps only dead letters with this reason ("expired",
	// "failed", "malformed", "killed"). Empty means all.
	Reason string
	// BatchSize is how many dead letters one script moves or deletes, 1 to
	// MaxBatch. Defaults to DeadBatchDefault.
	BatchSize int
	// ProgressFunc, if set, is called after each batch with the running
	// total.
	ProgressFunc func(done int)
}

// DeadBatchDefault is the batch size of ReplayAll and PurgeAll.
const DeadBatchDefault = 500

// ReplayAll replays queue's dead letters (see Replay), all of them or
// those with opts.Reason, in bounded batches, each one atomic script. It
// handles at most as many as the dead set held when it started, so that
// messages that die again meanwhile are not replayed in a loop. When ctx
// is cancelled it finishes the batch under way, then returns the count so
// far with ctx's error: every message is then either still dead or back on
// the ready list, never both.
func (c *Client) ReplayAll(ctx context.Context, queue string, opts *DeadOpts) (int, error) {
	return c.deadAll(ctx, queue, "replay", opts)
}

// PurgeAll deletes queue's dead letters (see Purge), all of them or those
// with opts.Reason, in bounded batches, and stops like ReplayAll.
func (c *Client) PurgeAll(ctx context.Context, queue string, opts *DeadOpts) (int, error) {
	return c.deadAll(ctx, queue, "purge", opts)
}

func (c *Client) deadAll(ctx context.Context, queue, op string, opts *DeadOpts) (int, error) {
	var o DeadOpts
	if opts != nil {
		o = *opts
	}
	if o.BatchSize == 0 {
		o.BatchSize = DeadBatchDefault
	}
	if err := ValidateQueue(queue); err != nil {
		return 0, err
	}
	if o.BatchSize < 1 || o.BatchSize > MaxBatch {
		return 0, fmt.Errorf("%w: %s: batch size %d: must be 1 to %d", ErrInvalidArgument, op, o.BatchSize, MaxBatch)
	}
	if o.Reason != "" {
		if err := ValidateReason(o.Reason); err != nil {
			return 0, fmt.Errorf("lease: %s: %w", op, err)
		}
	}
	k := KeysFor(queue)
	start, err := c.rdb.ZCard(ctx, k.Dead).Result()
	if err != nil {
		return 0, fmt.Errorf("lease: %s dead letters of %s: %w", op, queue, convertErr(err))
	}
	// Each batch runs to its end even if ctx is cancelled meanwhile, so
	// that its count is known.
	bctx := context.WithoutCancel(ctx)
	run := func(args []any) (int, error) {
		n, _, err := c.deadBatch(bctx, op, k, args)
		return n, err
	}
	done, examined := 0, 0
	for off := 0; examined < int(start); {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		var n int
		if o.Reason == "" {
			n, err = run([]any{min(o.BatchSize, int(start)-examined)})
			examined += n
			if err == nil && n == 0 {
				examined = int(start) // the set emptied under us
			}
		} else {
			var p Page
			p, err = c.Peek(bctx, queue, StateDead, &PeekOpts{Offset: off, Limit: o.BatchSize, Reason: o.Reason})
			if err != nil {
				return done, err
			}
			args := make([]any, 1, len(p.Messages)+1)
			args[0] = len(p.Messages)
			for _, m := range p.Messages {
				args = append(args, m.ID)
			}
			if len(p.Messages) > 0 {
				n, err = run(args)
			}
			if p.Next < 0 {
				examined = int(start)
			} else {
				examined += p.Next - off
				off = p.Next - n
			}
		}
		done += n
		if err != nil {
			return done, fmt.Errorf("lease: %s dead letters of %s: %w", op, queue, convertErr(err))
		}
		if o.ProgressFunc != nil {
			o.ProgressFunc(done)
		}
	}
	return done, nil
}
