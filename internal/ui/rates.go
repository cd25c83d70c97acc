package ui

import (
	"sort"
	"sync"
	"time"

	"github.com/ackd/ackd/lease"
)

// Rates are sampled into buckets of SampleInterval, SampleCount of them:
// five minutes at five seconds.
const (
	SampleIntervalDefault = 5 * time.Second
	SampleCountDefault    = 60
)

// Recorder keeps what the daemon's sweeps did, in memory, for the
// dashboard's charts: per queue, a ring of buckets counting requeued,
// dead-lettered and promoted messages, and a histogram of redelivery lag.
// It is fed by the reaper's Observer calls and never reads Redis. It is
// safe for concurrent use.
type Recorder struct {
	interval time.Duration
	n        int
	nowFunc  func() time.Time

	mu     sync.Mutex
	total  *ring
	queues map[string]*ring
	bounds []float64 // upper bounds of the lag histogram, in seconds, ascending
	lag    []uint64  // len(bounds)+1, the last is +Inf
}

// Sample is what happened in one bucket.
type Sample struct {
	Requeued     int64 `json:"requeued"`
	DeadLettered int64 `json:"dead_lettered"`
	Promoted     int64 `json:"promoted"`
}

type ring struct {
	head    int64 // bucket number (unix time / interval) of buf[pos]
	pos     int
	buf     []Sample
	touched time.Time
}

// NewRecorder returns a Recorder of n buckets of interval each (zero
// values take the defaults) whose lag histogram has the upper bounds
// lagBounds, in seconds, ascending (ackd passes those of its
// ackd_redelivery_lag_seconds histogram).
func NewRecorder(interval time.Duration, n int, lagBounds []float64) *Recorder {
	if interval <= 0 {
		interval = SampleIntervalDefault
	}
	if n <= 0 {
		n = SampleCountDefault
	}
	return &Recorder{interval: interval, n: n, nowFunc: time.Now, queues: map[string]*ring{}, bounds: lagBounds, lag: make([]uint64, len(lagBounds)+1), total: &ring{buf: make([]Sample, n)}}
}

// advance moves r to bucket b, clearing the buckets skipped.
func (r *ring) advance(b int64) {
	if r.head == 0 {
		r.head = b
		return
	}
	for steps := 0; r.head < b && steps < len(r.buf); steps++ {
		r.head++
		r.pos = (r.pos + 1) % len(r.buf)
		r.buf[r.pos] = Sample{}
	}
	r.head = max(r.head, b)
}

// series returns the buckets oldest first, up to bucket b.
func (r *ring) series(b int64) []Sample {
	out := make([]Sample, len(r.buf))
	for i := range out {
		bucket := b - int64(len(out)-1-i)
		if r.head == 0 || bucket > r.head || bucket <= r.head-int64(len(r.buf)) {
			continue
		}
		out[i] = r.buf[(r.pos-int(r.head-bucket)+len(r.buf))%len(r.buf)]
	}
	return out
}

func (rec *Recorder) bucket() int64 { return rec.nowFunc().UnixNano() / int64(rec.interval) }

// Swept records one Sweep call of queue (the reaper's Observer method).
func (rec *Recorder) Swept(queue, _ string, res lease.SweepResult) {
	if res.Requeued+res.DeadLettered+res.Malformed+res.Promoted == 0 && len(res.Lags) == 0 {
		return
	}
	b := rec.bucket()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	q := rec.queues[queue]
	if q == nil {
		q = &ring{buf: make([]Sample, rec.n)}
		rec.queues[queue] = q
	}
	for _, r := range []*ring{rec.total, q} {
		r.advance(b)
		s := &r.buf[r.pos]
		s.Requeued += int64(res.Requeued)
		s.DeadLettered += int64(res.DeadLettered + res.Malformed)
		s.Promoted += int64(res.Promoted)
	}
	q.touched = rec.nowFunc()
	for _, l := range res.Lags {
		sec := max(l, 0).Seconds()
		rec.lag[sort.SearchFloat64s(rec.bounds, sec)]++
	}
	rec.forgetIdle()
}

// forgetIdle drops the rings of queues idle for longer than the window,
// so that the Recorder stays small when queues come and go.
func (rec *Recorder) forgetIdle() {
	if len(rec.queues) < 2000 {
		return
	}
	cut := rec.nowFunc().Add(-time.Duration(rec.n) * rec.interval)
	for q, r := range rec.queues {
		if r.touched.Before(cut) {
			delete(rec.queues, q)
		}
	}
}

// SweepFailed and Scanned complete the reaper's Observer.
func (rec *Recorder) SweepFailed(string, string, error) {}
func (rec *Recorder) Scanned(int, time.Duration, error) {}

// Series returns the buckets of queue ("" for all queues), oldest first,
// the last one being the bucket under way.
func (rec *Recorder) Series(queue string) []Sample {
	b := rec.bucket()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := rec.total
	if queue != "" {
		r = rec.queues[queue]
	}
	if r == nil {
		return make([]Sample, rec.n)
	}
	return r.series(b)
}

// Recent sums the last minute of queue's buckets (the one under way
// excluded) and returns the rate per second.
func (rec *Recorder) Recent(queue string) (requeued, dead float64) {
	s := rec.Series(queue)
	k := max(int(time.Minute/rec.interval), 1)
	var rq, dl int64
	for _, x := range s[max(len(s)-1-k, 0) : len(s)-1] {
		rq += x.Requeued
		dl += x.DeadLettered
	}
	secs := float64(k) * rec.interval.Seconds()
	return float64(rq) / secs, float64(dl) / secs
}

// Lag returns the redelivery-lag histogram: its upper bounds, and the
// count of each bucket followed by the count above the last bound.
func (rec *Recorder) Lag() ([]float64, []uint64) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return rec.bounds, append([]uint64(nil), rec.lag...)
}

// Interval is the width of one bucket.
func (rec *Recorder) Interval() time.Duration { return rec.interval }
