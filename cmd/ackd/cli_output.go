package main

// Output of the operator commands: JSON shapes, aligned tables, payload
// previews that are safe on a terminal, and the progress display.

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ackd/ackd/internal/ui"
	"github.com/ackd/ackd/lease"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// queueJSON is one row of ackd queues: the same fields, under the same
// names, as the dashboard's JSON.
type queueJSON = ui.QueueCounts

func toQueueJSON(q string, s lease.Stats) queueJSON { return ui.CountsOf(q, s) }

// oldestCell is the table cell for the oldest ready age.
func oldestCell(r queueJSON) string {
	switch {
	case r.OldestReadyAgeSeconds != nil:
		return formatAge(time.Duration(*r.OldestReadyAgeSeconds * float64(time.Second)))
	case r.Ready > 0:
		return "?" // a raw payload at the head: no time recorded
	}
	return "-"
}

func writeQueuesTable(w io.Writer, rows []queueJSON) error {
	if len(rows) == 0 {
		fmt.Fprintln(w, "no queues (a queue appears once something pushes to or takes from it)")
		return nil
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "QUEUE\tREADY\tIN FLIGHT\tDELAYED\tDEAD\tOLDEST READY\tSTATE")
	for _, r := range rows {
		state := "running"
		if r.Paused {
			state = "paused"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\t%s\n", r.Queue, r.Ready, r.InFlight, r.Delayed, r.Dead, oldestCell(r), state)
	}
	return tw.Flush()
}

// statsJSON is one queue of ackd stats.
type statsJSON struct {
	queueJSON
	PausedAt         *time.Time       `json:"paused_at"`
	OldestReady      *time.Time       `json:"oldest_ready"`
	EarliestDeadline *time.Time       `json:"earliest_deadline"`
	NextDue          *time.Time       `json:"next_due"`
	DeadByReason     map[string]int64 `json:"dead_by_reason"`
	Now              time.Time        `json:"now"`
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func toStatsJSON(q string, s lease.Stats, reasons map[string]int64) statsJSON {
	return statsJSON{
		queueJSON:        toQueueJSON(q, s),
		PausedAt:         optTime(s.PausedAt),
		OldestReady:      optTime(s.OldestReady),
		EarliestDeadline: optTime(s.EarliestDeadline),
		NextDue:          optTime(s.NextDue),
		DeadByReason:     reasons,
		Now:              s.Now.UTC(),
	}
}

func writeStats(w io.Writer, s statsJSON) error {
	tw := newTable(w)
	state := "running"
	if s.PausedAt != nil {
		state = "paused " + relTime(*s.PausedAt, s.Now)
	}
	when := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return relTime(*t, s.Now)
	}
	reasons := "-"
	if len(s.DeadByReason) > 0 {
		var parts []string
		for _, r := range sortedKeys(s.DeadByReason) {
			parts = append(parts, fmt.Sprintf("%s %d", r, s.DeadByReason[r]))
		}
		reasons = strings.Join(parts, ", ")
	}
	for _, row := range [][2]string{
		{"queue", s.Queue},
		{"state", state},
		{"ready", strconv.FormatInt(s.Ready, 10)},
		{"in flight", strconv.FormatInt(s.InFlight, 10)},
		{"delayed", strconv.FormatInt(s.Delayed, 10)},
		{"dead", strconv.FormatInt(s.Dead, 10)},
		{"oldest ready", oldestCell(s.queueJSON)},
		{"earliest deadline", when(s.EarliestDeadline)},
		{"next delayed due", when(s.NextDue)},
		{"dead by reason", reasons},
	} {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// messageJSON is one message of ackd peek and ackd dead list.
type messageJSON struct {
	ID            string     `json:"id,omitempty"`
	Attempts      int        `json:"attempts"`
	MaxDeliveries *int       `json:"max_deliveries"` // null: unlimited or unknown
	PushedAt      *time.Time `json:"pushed_at,omitempty"`
	Deadline      *time.Time `json:"deadline,omitempty"`
	Due           *time.Time `json:"due,omitempty"`
	DiedAt        *time.Time `json:"died_at,omitempty"`
	Reason        string     `json:"reason,omitempty"`
	Size          int        `json:"size"`
	Raw           bool       `json:"raw,omitempty"`
	Malformed     bool       `json:"malformed,omitempty"`
	// Preview is the payload's first bytes as text, PreviewBase64 when
	// they are binary; PreviewTruncated when the payload is longer.
	Preview          *string `json:"preview,omitempty"`
	PreviewBase64    string  `json:"preview_base64,omitempty"`
	PreviewTruncated bool    `json:"preview_truncated,omitempty"`
}

func toMessageJSON(m lease.Message, preview bool) messageJSON {
	r := messageJSON{ID: m.ID, Attempts: m.Attempts, Reason: m.Reason, Size: m.Size, Raw: m.Raw, Malformed: m.Malformed}
	if m.MaxDeliveries > 0 {
		r.MaxDeliveries = &m.MaxDeliveries
	}
	t := optTime(m.Time)
	switch m.State {
	case lease.StateReady:
		r.PushedAt = t
	case lease.StateInFlight:
		r.Deadline = t
	case lease.StateDelayed:
		r.Due = t
	case lease.StateDead:
		r.DiedAt = t
	}
	if preview {
		if text, ok := printable(m.Preview); ok {
			r.Preview = &text
		} else {
			r.PreviewBase64 = base64.StdEncoding.EncodeToString(m.Preview)
		}
		r.PreviewTruncated = len(m.Preview) < m.Size
	}
	return r
}

func writeMessages(w io.Writer, st lease.State, p lease.Page, preview bool, now time.Time) error {
	if len(p.Messages) == 0 {
		fmt.Fprintf(w, "no %s messages\n", st)
		return nil
	}
	timeCol := map[lease.State]string{lease.StateReady: "PUSHED", lease.StateInFlight: "DEADLINE", lease.StateDelayed: "DUE", lease.StateDead: "DIED"}[st]
	tw := newTable(w)
	head := "ID\tATTEMPT\t" + timeCol
	if st == lease.StateDead {
		head += "\tREASON"
	}
	head += "\tSIZE"
	if preview {
		head += "\tPREVIEW"
	}
	fmt.Fprintln(tw, head)
	for _, m := range p.Messages {
		id := m.ID
		switch {
		case m.Raw:
			id = "(raw)"
		case id == "":
			id = "-"
		}
		attempt := strconv.Itoa(m.Attempts)
		if m.MaxDeliveries > 0 {
			attempt += "/" + strconv.Itoa(m.MaxDeliveries)
		}
		if m.Malformed {
			attempt = "malformed"
		}
		t := "-"
		if !m.Time.IsZero() {
			t = relTime(m.Time, now)
		}
		row := id + "\t" + attempt + "\t" + t
		if st == lease.StateDead {
			row += "\t" + m.Reason
		}
		row += "\t" + formatSize(m.Size)
		if preview {
			row += "\t" + previewCell(m.Preview, m.Size)
		}
		fmt.Fprintln(tw, row)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p.Next >= 0 {
		fmt.Fprintf(w, "more: --offset %d\n", p.Next)
	}
	return nil
}

// printable reports whether b is text worth showing as is: valid UTF-8
// (a rune cut off by the preview's end is dropped) with few control
// characters. It returns the text.
func printable(b []byte) (string, bool) {
	for i := 0; i < utf8.UTFMax && len(b) > 0 && !utf8.Valid(b); i++ {
		b = b[:len(b)-1]
	}
	if !utf8.Valid(b) {
		return "", false
	}
	s := string(b)
	bad, n := 0, 0
	for _, r := range s {
		n++
		if !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			bad++
		}
	}
	return s, bad*10 <= n
}

// previewCell is a payload preview safe for a terminal and a table cell:
// control characters (escape sequences included) are escaped, and binary
// data is named, not printed.
func previewCell(b []byte, size int) string {
	if len(b) == 0 {
		if size == 0 {
			return `""`
		}
		return "-"
	}
	s, ok := printable(b)
	if !ok {
		return "<binary>"
	}
	var sb strings.Builder
	for _, r := range s {
		switch {
		case r == '\n':
			sb.WriteString(`\n`)
		case r == '\t':
			sb.WriteString(`\t`)
		case r == '\r':
			sb.WriteString(`\r`)
		case r == '\\':
			sb.WriteString(`\\`)
		case !unicode.IsPrint(r) && r != ' ':
			q := strconv.QuoteRuneToASCII(r)
			sb.WriteString(q[1 : len(q)-1])
		default:
			sb.WriteRune(r)
		}
	}
	if len(b) < size {
		sb.WriteString("…")
	}
	return sb.String()
}

func formatSize(n int) string {
	switch {
	case n < 1024:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// formatAge prints d at a precision a person reads at a glance: 45s,
// 3m05s, 2h03m, 4d02h.
func formatAge(d time.Duration) string {
	d = max(d, 0)
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%02dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd%02dh", s/86400, s%86400/3600)
}

// relTime prints t relative to now: "in 25s" or "3m05s ago".
func relTime(t, now time.Time) string {
	if t.After(now) {
		return "in " + formatAge(t.Sub(now))
	}
	return formatAge(now.Sub(t)) + " ago"
}

// progress reports a long operation on stderr: a bar with rate and ETA
// on a terminal, a plain line at most every few seconds elsewhere.
type progress struct {
	w            io.Writer
	tty          bool
	verb         string
	total        int
	every        time.Duration
	start, drawn time.Time
	done         int
}

func newProgress(w io.Writer, tty bool, verb string, total int, every time.Duration) *progress {
	if every <= 0 {
		every = 100 * time.Millisecond
		if !tty {
			every = 2 * time.Second
		}
	}
	return &progress{w: w, tty: tty, verb: verb, total: total, every: every, start: time.Now()}
}

func (p *progress) update(done int) {
	p.done = done
	if time.Since(p.drawn) < p.every {
		return
	}
	p.draw()
}

func (p *progress) draw() {
	p.drawn = time.Now()
	total := max(p.total, p.done)
	pct := 100
	if total > 0 {
		pct = p.done * 100 / total
	}
	elapsed := time.Since(p.start)
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.done) / elapsed.Seconds()
	}
	eta := "-"
	if rate > 0 {
		eta = formatAge(time.Duration(float64(total-p.done) / rate * float64(time.Second)))
	}
	if !p.tty {
		fmt.Fprintf(p.w, "%s: %d of %d (%d%%), %.0f/s\n", p.verb, p.done, total, pct, rate)
		return
	}
	const width = 30
	fill := width * pct / 100
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	fmt.Fprintf(p.w, "\r%s [%s] %d/%d %3d%%  %.0f/s  ETA %s\x1b[K", p.verb, bar, p.done, total, pct, rate, eta)
}

// finish draws the final state (on a terminal, ending the line).
func (p *progress) finish(done int) {
	p.done = done
	if p.tty {
		p.draw()
		fmt.Fprintln(p.w)
	}
}
