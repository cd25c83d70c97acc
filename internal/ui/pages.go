package ui

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ackd/ackd/lease"
)

// base is what every page's layout reads.
type base struct {
	Title    string
	Prefix   string
	Version  string
	CanAct   bool // a token is set: actions exist
	LoggedIn bool // this request carries the session cookie
	CSRF     string
}

func (h *Handler) base(r *http.Request, title string) base {
	b := base{Title: title, Prefix: h.cfg.Prefix, Version: h.cfg.Version, CanAct: h.cfg.Token != ""}
	if b.CanAct && h.hasSession(r) {
		b.LoggedIn, b.CSRF = true, h.csrf
	}
	return b
}

// render writes page with data, buffered so that a template error never
// reaches the browser half-written.
func (h *Handler) render(w http.ResponseWriter, status int, page string, data any) {
	var buf bytes.Buffer
	if err := h.tmpl[page].Execute(&buf, data); err != nil {
		h.log.Error("ui: render", "page", page, "error", err)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte("ackd could not render this page; the details are in its log.\n"))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

type messagePage struct {
	base
	Status  int
	Heading string
	Text    string
}

// fail renders an error page: a status and words for a person, never a
// Go error (those go to the log).
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, status int, heading, text string) {
	h.render(w, status, "message", messagePage{base: h.base(r, heading), Status: status, Heading: heading, Text: text})
}

// redisFailed logs err and renders a 503 page: Redis refused (ACL) or
// did not answer.
func (h *Handler) redisFailed(w http.ResponseWriter, r *http.Request, what string, err error) {
	h.log.Warn("ui: "+what, "path", r.URL.Path, "error", err)
	if errors.Is(err, lease.ErrNoPermission) {
		h.fail(w, r, http.StatusServiceUnavailable, "Redis refused",
			"ackd could not "+what+": its Redis user lacks the rights (ACL). Queue pages and actions need the operator rights of docs/SECURITY.md; the details are in ackd's log.")
		return
	}
	h.fail(w, r, http.StatusServiceUnavailable, "Redis did not answer",
		"ackd could not "+what+". The details are in ackd's log; try again in a moment.")
}

// health is the daemon's health panel.
type health struct {
	RedisUp       bool    `json:"redis_up"`
	Subscribed    bool    `json:"subscribed"`
	EventsChecked bool    `json:"events_checked"`
	EventsOn      bool    `json:"events_enabled"`
	EventsFlags   string  `json:"events_flags"`
	LastScan      string  `json:"last_scan"`
	LastScanAgo   float64 `json:"last_scan_ago_seconds"` // -1: none yet
	ScanTook      string  `json:"scan_took"`
	Scans         uint64  `json:"scans"`
	ScanErrors    uint64  `json:"scan_errors"`
}

func (h *Handler) health(now time.Time) health {
	ev := h.src.Events()
	st := h.src.Stats()
	at, took := lastScan(st.Scanner)
	hl := health{
		RedisUp: h.src.RedisUp(), Subscribed: h.src.Subscribed(),
		EventsChecked: ev.Checked, EventsOn: ev.Enabled, EventsFlags: ev.Flags,
		LastScan: "not yet", LastScanAgo: -1, Scans: st.Scanner.Scans, ScanErrors: st.Scanner.Errors,
	}
	if !at.IsZero() {
		hl.LastScan, hl.LastScanAgo, hl.ScanTook = ago(at, now), now.Sub(at).Seconds(), dur(took)
	}
	return hl
}

// QueueCounts is one queue's counts under the names every JSON of ackd
// uses: the dashboard's endpoints and `ackd queues --json` and `ackd
// stats --json`. Durations are in seconds, with the unit in the name.
type QueueCounts struct {
	Queue    string `json:"queue"`
	Ready    int64  `json:"ready"`
	InFlight int64  `json:"in_flight"`
	Delayed  int64  `json:"delayed"`
	Dead     int64  `json:"dead"`
	Paused   bool   `json:"paused"`
	// OldestReadyAgeSeconds is null when nothing is ready or the oldest
	// message is a raw payload, whose age is unknown.
	OldestReadyAgeSeconds *float64 `json:"oldest_ready_age_seconds"`
}

// CountsOf is queue's QueueCounts in s.
func CountsOf(queue string, s lease.Stats) QueueCounts {
	c := QueueCounts{Queue: queue, Ready: s.Ready, InFlight: s.InFlight, Delayed: s.Delayed, Dead: s.Dead, Paused: s.Paused}
	if !s.OldestReady.IsZero() {
		age := s.OldestReadyAge.Seconds()
		c.OldestReadyAgeSeconds = &age
	}
	return c
}

// queueRow is one line of the overview.
type queueRow struct {
	QueueCounts
	Rates
	Spark           *Spark  `json:"spark"` // null: nothing happened in the window
	SweptAgoSeconds float64 `json:"swept_ago_seconds"`
}

type lagChart struct {
	Bounds []float64 `json:"bounds"`
	Counts []uint64  `json:"counts"`
}

type overviewData struct {
	base          `json:"-"`
	Health        health     `json:"health"`
	Queues        []queueRow `json:"queues"`
	Series        []Sample   `json:"series"`
	Interval      float64    `json:"interval_seconds"`
	SparkInterval float64    `json:"spark_interval_seconds"`
	Lag           lagChart   `json:"lag"`
}

func (h *Handler) overviewData(r *http.Request) overviewData {
	now := time.Now()
	h.views.saw(now, "")
	qs := h.src.Queues()
	rows := make([]queueRow, 0, len(qs))
	var sparkWidth time.Duration
	for _, q := range qs {
		// The reaper's counts are its last sweep's; a later reading (the
		// dashboard samples queues while it is viewed) is fresher.
		if s, at, ok := h.rec.Latest(q.Queue); ok && at.After(q.At) {
			q.Stats, q.At = s, at
		}
		row := queueRow{QueueCounts: CountsOf(q.Queue, q.Stats), Rates: h.rec.Recent(q.Queue), SweptAgoSeconds: now.Sub(q.At).Seconds()}
		if age := row.OldestReadyAgeSeconds; age != nil {
			// The age as the sweep found it, plus the time since.
			*age += now.Sub(q.At).Seconds()
		}
		var sp Spark
		if sp, sparkWidth = h.rec.Spark(q.Queue); !sp.zero() {
			row.Spark = &sp
		}
		rows = append(rows, row)
	}
	bounds, counts := h.rec.Lag()
	return overviewData{
		base: h.base(r, "Queues"), Health: h.health(now), Queues: rows,
		Series: h.rec.Series(""), Interval: h.rec.Interval().Seconds(), SparkInterval: sparkWidth.Seconds(),
		Lag: lagChart{Bounds: bounds, Counts: counts},
	}
}

func (h *Handler) overview(w http.ResponseWriter, r *http.Request) {
	h.render(w, http.StatusOK, "overview", h.overviewData(r))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *Handler) overviewJSON(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.overviewData(r))
}

// known reports whether queue exists: the reaper has swept it, or it is
// in the registry.
func (h *Handler) known(ctx context.Context, queue string) (bool, error) {
	if lease.ValidateQueue(queue) != nil {
		return false, nil
	}
	for _, q := range h.src.Queues() {
		if q.Queue == queue {
			return true, nil
		}
	}
	return h.admin.Known(ctx, queue)
}

// found reports whether queue exists; if not, it has written a 404 page,
// or a 503 page if Redis did not answer.
func (h *Handler) found(ctx context.Context, w http.ResponseWriter, r *http.Request, queue string) bool {
	ok, err := h.known(ctx, queue)
	switch {
	case err != nil:
		h.redisFailed(w, r, "look up the queue", err)
	case !ok:
		h.fail(w, r, http.StatusNotFound, "No such queue", "ackd watches no queue of that name.")
	}
	return err == nil && ok
}

// msgRow is one message of a queue page.
type msgRow struct {
	ID        string
	Attempts  string
	Time      time.Time
	Left      string // in flight: time left
	Reason    string
	Size      int
	Preview   string
	Binary    bool
	Truncated bool
	Raw       bool
	Malformed bool
}

func rows(p lease.Page, now time.Time, payloads bool) []msgRow {
	out := make([]msgRow, 0, len(p.Messages))
	for _, m := range p.Messages {
		row := msgRow{ID: m.ID, Time: m.Time, Reason: m.Reason, Size: m.Size, Raw: m.Raw, Malformed: m.Malformed}
		switch {
		case m.MaxDeliveries == lease.Unlimited:
			row.Attempts = strconv.Itoa(m.Attempts)
		default:
			row.Attempts = fmt.Sprintf("%d / %d", m.Attempts, m.MaxDeliveries)
		}
		if m.State == lease.StateInFlight {
			row.Left = until(m.Time, now)
		}
		if payloads {
			row.Preview, row.Binary = preview(m.Preview)
			row.Truncated = m.Size > len(m.Preview)
		}
		out = append(out, row)
	}
	return out
}

// preview turns payload bytes into text for a page (html/template escapes
// it), or reports them as binary with a hex dump of the first bytes.
func preview(b []byte) (string, bool) {
	text := true
	if !utf8.Valid(b) {
		// A preview may end inside a rune: allow that one.
		cut := len(b)
		for i := 0; i < 4 && cut > 0 && !utf8.Valid(b[:cut]); i++ {
			cut--
		}
		text = utf8.Valid(b[:cut])
		if text {
			b = b[:cut]
		}
	}
	if text {
		text = strings.IndexFunc(string(b), func(r rune) bool {
			return unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r'
		}) < 0
	}
	if text {
		return string(b), false
	}
	n := min(len(b), 32)
	return fmt.Sprintf("% x", b[:n]), true
}

type reasonCount struct {
	Reason string
	N      int64
}

type section struct {
	Rows []msgRow
	// Offset of this page, Next of the next (-1: none), Prev of the
	// previous (-1: none).
	Offset, Next, Prev int
}

type queueData struct {
	base
	Queue    string
	Stats    lease.Stats
	Ready    section
	InFlight section
	Delayed  section
	Dead     section
	Reasons  []reasonCount
	Grouped  bool // Reasons is complete
	Reason   string
	Payloads bool
	Flash    string
	Chart    chart
	Rates    Rates // over the last minute
}

// chart is a rate chart's data, as the page's script reads it.
type chart struct {
	Series   []Sample `json:"series"`
	Interval float64  `json:"interval_seconds"`
}

// flashRE matches the messages action redirects with.
var flashRE = regexp.MustCompile(`^((replay|purge): [0-9]{1,12}( \(some were no longer dead letters\))?|paused|resumed)$`)

// offset reads a page offset from the query; bad values are a 400.
func offset(r *http.Request, name string) (int, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, true
	}
	n, err := strconv.Atoi(v)
	return n, err == nil && n >= 0 && n <= 1<<30
}

func sectionOf(rs []msgRow, off, next int) section {
	prev := -1
	if off > 0 {
		prev = max(off-PageSize, 0)
	}
	return section{Rows: rs, Offset: off, Next: next, Prev: prev}
}

func (h *Handler) queue(w http.ResponseWriter, r *http.Request) {
	q := r.PathValue("queue")
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	if !h.found(ctx, w, r, q) {
		return
	}
	h.views.saw(time.Now(), q)
	offs := map[string]int{}
	for _, name := range []string{"ready", "inflight", "delayed", "dead"} {
		n, ok := offset(r, name)
		if !ok {
			h.fail(w, r, http.StatusBadRequest, "Bad page number", "A page offset must be a whole number from 0.")
			return
		}
		offs[name] = n
	}
	reason := r.URL.Query().Get("reason")
	if reason != "" && lease.ValidateReason(reason) != nil {
		h.fail(w, r, http.StatusBadRequest, "Bad reason", "A dead-letter reason is 1 to 32 lowercase letters.")
		return
	}
	d := queueData{base: h.base(r, q), Queue: q, Reason: reason, Payloads: h.cfg.Payloads,
		Chart: chart{Series: h.rec.Series(q), Interval: h.rec.Interval().Seconds()}}
	if msg := r.URL.Query().Get("msg"); flashRE.MatchString(msg) {
		d.Flash = msg // only what action redirects with: a link cannot put words on the page
	}
	var err error
	if d.Stats, err = h.admin.Stats(ctx, q); err != nil {
		h.redisFailed(w, r, "read the queue's counts", err)
		return
	}
	h.rec.Observe(q, d.Stats)
	d.Rates = h.rec.Recent(q)
	preview := 0
	if h.cfg.Payloads {
		preview = PreviewBytes
	}
	peek := func(state lease.State, off int, reason string) (section, error) {
		p, err := h.admin.Peek(ctx, q, state, &lease.PeekOpts{Offset: off, Limit: PageSize, Preview: preview, Reason: reason})
		if err != nil {
			return section{}, err
		}
		return sectionOf(rows(p, d.Stats.Now, h.cfg.Payloads), off, p.Next), nil
	}
	for _, s := range []struct {
		sec    *section
		state  lease.State
		name   string
		reason string
	}{
		{&d.Ready, lease.StateReady, "ready", ""},
		{&d.InFlight, lease.StateInFlight, "inflight", ""},
		{&d.Delayed, lease.StateDelayed, "delayed", ""},
		{&d.Dead, lease.StateDead, "dead", reason},
	} {
		if *s.sec, err = peek(s.state, offs[s.name], s.reason); err != nil {
			break
		}
	}
	if err != nil {
		h.redisFailed(w, r, "read the queue's messages", err)
		return
	}
	if d.Stats.Dead <= maxGroupedDead {
		counts, err := h.admin.DeadReasons(ctx, q)
		if err != nil {
			h.redisFailed(w, r, "count the dead letters by reason", err)
			return
		}
		for re, n := range counts {
			d.Reasons = append(d.Reasons, reasonCount{re, n})
		}
		slices.SortFunc(d.Reasons, func(a, b reasonCount) int { return int(b.N - a.N) })
		d.Grouped = true
	}
	h.render(w, http.StatusOK, "queue", d)
}

type queueJSON struct {
	QueueCounts
	Rates
	Series   []Sample `json:"series"`
	Interval float64  `json:"interval_seconds"`
}

// queueJSON serves a queue's counts (one Stats script) and rates.
func (h *Handler) queueJSON(w http.ResponseWriter, r *http.Request) {
	q := r.PathValue("queue")
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	ok, err := h.known(ctx, q)
	if err == nil && !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such queue"})
		return
	}
	var s lease.Stats
	if err == nil {
		s, err = h.admin.Stats(ctx, q)
	}
	if err != nil {
		h.log.Warn("ui: queue counts", "queue", q, "error", err)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "Redis did not answer"})
		return
	}
	h.views.saw(time.Now(), q)
	h.rec.Observe(q, s)
	writeJSON(w, http.StatusOK, queueJSON{QueueCounts: CountsOf(q, s), Rates: h.rec.Recent(q),
		Series: h.rec.Series(q), Interval: h.rec.Interval().Seconds()})
}

// Formatting for the templates.

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return dur(now.Sub(t)) + " ago"
}

func until(t, now time.Time) string {
	if t.IsZero() {
		return "–"
	}
	d := t.Sub(now)
	if d < 0 {
		return "overdue " + dur(-d)
	}
	return dur(d)
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000Z")
}

func dur(d time.Duration) string {
	switch {
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func num(n int64) string {
	s := strconv.FormatInt(n, 10)
	if n < 0 || len(s) <= 3 {
		return s
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func rate(f float64) string {
	switch {
	case f == 0:
		return "0"
	case f < 10:
		return strconv.FormatFloat(f, 'f', 2, 64)
	}
	return strconv.FormatFloat(f, 'f', 0, 64)
}

// pagerView is the pager of one section of a queue page.
type pagerView struct {
	d    queueData
	Name string
	S    section
}

// Link is the queue page with this section at off and the others kept.
func (p pagerView) Link(off int) string {
	v := url.Values{}
	for name, s := range map[string]section{"ready": p.d.Ready, "inflight": p.d.InFlight, "delayed": p.d.Delayed, "dead": p.d.Dead} {
		o := s.Offset
		if name == p.Name {
			o = off
		}
		if o > 0 {
			v.Set(name, strconv.Itoa(o))
		}
	}
	if p.d.Reason != "" {
		v.Set("reason", p.d.Reason)
	}
	u := p.d.Prefix + "q/" + url.PathEscape(p.d.Queue)
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	return u + "#" + p.Name
}
