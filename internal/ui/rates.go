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

// Recorder keeps, in memory, what happened to each queue for the
// dashboard's charts: per queue, a ring of buckets counting pushed, acked,
// requeued, dead-lettered and promoted messages, and a histogram of
// redelivery lag. It never reads Redis: it is fed readings of the queues
// (the reaper's Observer calls, with each sweep's counts, and Observe,
// with the Stats the dashboard samples). It is safe for concurrent use.
//
// Pushed, acked and dead-lettered come from the difference of two
// readings of a queue: each reading holds the counts by state and the
// running totals acked, purged and replayed (lease.Stats). Between two
// readings, pushed = Δ(ready + in flight + delayed + dead) + Δacked +
// Δpurged, dead-lettered = Δdead + Δpurged + Δreplayed, acked = Δacked,
// each at least 0. Requeued and promoted are what this daemon's own
// sweeps did (another daemon's sweeps are not seen).
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
	Pushed       int64 `json:"pushed"`
	Acked        int64 `json:"acked"`
	Requeued     int64 `json:"requeued"`
	DeadLettered int64 `json:"dead_lettered"`
	Promoted     int64 `json:"promoted"`
}

func (s *Sample) add(x Sample) {
	s.Pushed += x.Pushed
	s.Acked += x.Acked
	s.Requeued += x.Requeued
	s.DeadLettered += x.DeadLettered
	s.Promoted += x.Promoted
}

type ring struct {
	head    int64 // bucket number (unix time / interval) of buf[pos]
	pos     int
	buf     []Sample
	touched time.Time
	last    *reading // the latest reading of the queue; nil for the total
	stats   lease.Stats
	statsAt time.Time // when stats was recorded (local clock); zero if never
}

// reading is what a Stats reading of a queue says for rates.
type reading struct {
	at                      time.Time // Redis's clock
	total, dead             int64
	acked, purged, replayed int64
}

func readingOf(s lease.Stats) reading {
	return reading{at: s.Now, total: s.Ready + s.InFlight + s.Delayed + s.Dead, dead: s.Dead,
		acked: s.Acked, purged: s.Purged, replayed: s.Replayed}
}

// since is what happened between an earlier reading r0 and r.
func (r reading) since(r0 reading) Sample {
	// A running total that went down was deleted (Forget) and began again.
	grew := func(now, before int64) int64 {
		if now < before {
			return now
		}
		return now - before
	}
	acked, purged, replayed := grew(r.acked, r0.acked), grew(r.purged, r0.purged), grew(r.replayed, r0.replayed)
	return Sample{
		Pushed:       max(r.total-r0.total+acked+purged, 0),
		Acked:        acked,
		DeadLettered: max(r.dead-r0.dead+purged+replayed, 0),
	}
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
func (r *ring) series(b int64, n int) []Sample {
	out := make([]Sample, n)
	if r.buf == nil {
		return out
	}
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

// Swept records one Sweep call of queue (the reaper's Observer method):
// what it requeued and promoted, its lags, and the counts it read.
func (rec *Recorder) Swept(queue, _ string, res lease.SweepResult) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.record(queue, Sample{Requeued: int64(res.Requeued), Promoted: int64(res.Promoted)}, res.Counts)
	for _, l := range res.Lags {
		sec := max(l, 0).Seconds()
		rec.lag[sort.SearchFloat64s(rec.bounds, sec)]++
	}
}

// Observe records a reading of queue's Stats (the dashboard's sampler
// calls it). A reading older than the queue's latest is ignored.
func (rec *Recorder) Observe(queue string, s lease.Stats) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.record(queue, Sample{}, s)
}

// record adds x, and what happened since queue's previous reading, to the
// bucket under way.
func (rec *Recorder) record(queue string, x Sample, s lease.Stats) {
	q := rec.queues[queue]
	if q == nil {
		q = &ring{} // its buckets are made once something happens
		rec.queues[queue] = q
	}
	if !s.Now.IsZero() {
		r := readingOf(s)
		switch {
		case q.last == nil:
			q.last = &r // the first reading: what came before is unknown
		case r.at.After(q.last.at):
			x.add(r.since(*q.last))
			q.last = &r
		default:
			s = lease.Stats{} // older than the latest
		}
		if !s.Now.IsZero() {
			q.stats, q.statsAt = s, rec.nowFunc()
		}
	}
	q.touched = rec.nowFunc()
	if x != (Sample{}) {
		b := rec.bucket()
		for _, r := range []*ring{rec.total, q} {
			if r.buf == nil {
				r.buf = make([]Sample, rec.n)
			}
			r.advance(b)
			r.buf[r.pos].add(x)
		}
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
	return r.series(b, rec.n)
}

// Latest returns the latest reading of queue recorded, and when it was
// recorded; false if none.
func (rec *Recorder) Latest(queue string) (lease.Stats, time.Time, bool) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	q := rec.queues[queue]
	if q == nil || q.statsAt.IsZero() {
		return lease.Stats{}, time.Time{}, false
	}
	return q.stats, q.statsAt, true
}

// Rates are messages per second.
type Rates struct {
	Pushed       float64 `json:"pushed_per_second"`
	Acked        float64 `json:"acked_per_second"`
	Requeued     float64 `json:"requeued_per_second"`
	DeadLettered float64 `json:"dead_lettered_per_second"`
}

// Recent sums the last minute of queue's buckets (the one under way
// excluded) and returns the rates per second.
func (rec *Recorder) Recent(queue string) Rates {
	s := rec.Series(queue)
	k := max(int(time.Minute/rec.interval), 1)
	var sum Sample
	for _, x := range s[max(len(s)-1-k, 0) : len(s)-1] {
		sum.add(x)
	}
	secs := float64(k) * rec.interval.Seconds()
	return Rates{Pushed: float64(sum.Pushed) / secs, Acked: float64(sum.Acked) / secs,
		Requeued: float64(sum.Requeued) / secs, DeadLettered: float64(sum.DeadLettered) / secs}
}

// Spark is queue's series in points buckets or fewer (each the sum of
// len(series)/points buckets), one slice per rate, for the overview's
// small charts: small enough to send for a thousand queues.
type Spark struct {
	Pushed       []int64 `json:"pushed"`
	Acked        []int64 `json:"acked"`
	Requeued     []int64 `json:"requeued"`
	DeadLettered []int64 `json:"dead_lettered"`
}

func (sp Spark) zero() bool {
	for _, s := range [][]int64{sp.Pushed, sp.Acked, sp.Requeued, sp.DeadLettered} {
		for _, n := range s {
			if n != 0 {
				return false
			}
		}
	}
	return true
}

// SparkPoints is the number of points of a Spark.
const SparkPoints = 20

// Spark returns queue's Spark and the width of its points.
func (rec *Recorder) Spark(queue string) (Spark, time.Duration) {
	s := rec.Series(queue)
	per := max(len(s)/SparkPoints, 1)
	s = s[len(s)%per:] // the oldest buckets that do not fill a point are left out
	n := len(s) / per
	sp := Spark{Pushed: make([]int64, n), Acked: make([]int64, n), Requeued: make([]int64, n), DeadLettered: make([]int64, n)}
	for i, x := range s {
		sp.Pushed[i/per] += x.Pushed
		sp.Acked[i/per] += x.Acked
		sp.Requeued[i/per] += x.Requeued
		sp.DeadLettered[i/per] += x.DeadLettered
	}
	return sp, time.Duration(per) * rec.interval
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
