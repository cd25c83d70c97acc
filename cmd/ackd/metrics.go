package main

import (
	"context"
	"log/slog"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/notify"
)

// Triggers of a sweep, the values of the trigger label.
const (
	triggerEvent = "event" // an expired or evicted shadow key
	triggerTimer = "timer" // a queue's timer (deadline, due time, or retry)
	triggerScan  = "scan"  // the periodic or catch-up scan of every queue
)

const (
	// maxQueueMetrics bounds the queues reported by ackd_queue_messages.
	maxQueueMetrics = 1000
	// queueStatsTimeout bounds the Redis reads of one scrape.
	queueStatsTimeout = 5 * time.Second
)

// lagBuckets span 0.5 ms to 60 s: a timer-driven redelivery lands in the
// first few, one found by a scan in the last few.
var lagBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// metrics are ackd's Prometheus metrics, on a registry of their own.
type metrics struct {
	reg *prometheus.Registry

	requeues      *prometheus.CounterVec // trigger
	deadLettered  *prometheus.CounterVec // reason
	lag           prometheus.Histogram
	promoted      prometheus.Counter
	reclaimed     prometheus.Counter
	sweeps        *prometheus.CounterVec // trigger
	sweepErrors   *prometheus.CounterVec // trigger
	scanDuration  prometheus.Histogram
	scans         prometheus.Counter
	scanErrors    prometheus.Counter
	eventsEnabled prometheus.Gauge
	redisUp       prometheus.Gauge
}

// listenerStats is what metrics read from the listener at scrape time.
type listenerStats interface {
	Stats() notify.ListenerStats
	Subscribed() bool
}

// newMetrics registers every metric. ignored counts events and wake
// messages ackd dropped itself (queues outside ACKD_QUEUES); queueStats
// reports the watched queues' counts at scrape time.
func newMetrics(lis listenerStats, ignored func() uint64, queueStats func(ctx context.Context) ([]queueCount, error), log *slog.Logger) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		requeues: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ackd_requeues_total",
			Help: "Expired leases put back on their ready list, by what triggered the sweep (event, timer, scan).",
		}, []string{"trigger"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ackd_dead_lettered_total",
			Help: "Messages sent to the dead set by sweeps: expired (lease ran out with no deliveries left) or malformed (lease record not ackd's).",
		}, []string{"reason"}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ackd_redelivery_lag_seconds",
			Help:    "How long after its deadline (by Redis's clock) an expired lease was requeued or dead-lettered.",
			Buckets: lagBuckets,
		}),
		promoted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ackd_promoted_total",
			Help: "Delayed messages moved to their ready list when due.",
		}),
		reclaimed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ackd_reclaimed_total",
			Help: "Elements left on a claim list by a consumer that died mid-take, returned to the ready list.",
		}),
		sweeps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ackd_sweeps_total",
			Help: "Sweep script calls, by trigger.",
		}, []string{"trigger"}),
		sweepErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ackd_sweep_errors_total",
			Help: "Sweeps that failed (and will be retried), by trigger.",
		}, []string{"trigger"}),
		scanDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ackd_scan_duration_seconds",
			Help:    "How long one scan of every watched queue took.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10), // 1 ms to ~4.4 min
		}),
		scans: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ackd_scans_total",
			Help: "Scans of every watched queue (periodic, at start and after each resubscription).",
		}),
		scanErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ackd_scan_errors_total",
			Help: "Scans that failed.",
		}),
		eventsEnabled: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ackd_keyspace_events_enabled",
			Help: "1 if Redis sends the keyspace events ackd listens to (notify-keyspace-events has E and x), 0 if not or unknown; without them leases come back on timers and scans only.",
		}),
		redisUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ackd_redis_up",
			Help: "1 if the last Redis command ackd sent succeeded, 0 during an outage.",
		}),
	}
	for _, tr := range []string{triggerEvent, triggerTimer, triggerScan} {
		m.requeues.WithLabelValues(tr)
		m.sweeps.WithLabelValues(tr)
		m.sweepErrors.WithLabelValues(tr)
	}
	for _, r := range []string{lease.ReasonExpired, lease.ReasonMalformed} {
		m.deadLettered.WithLabelValues(r)
	}

	counter := func(name, help string, labels prometheus.Labels, f func(notify.ListenerStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(f(lis.Stats())) })
	}
	const receivedHelp = "Messages received by the listener: expired and evicted shadow-key events, and wake messages announcing a queue's next deadline."
	reg.MustRegister(
		m.requeues, m.deadLettered, m.lag, m.promoted, m.reclaimed, m.sweeps, m.sweepErrors,
		m.scanDuration, m.scans, m.scanErrors, m.eventsEnabled, m.redisUp,
		counter("ackd_events_received_total", receivedHelp, prometheus.Labels{"event": "expired"},
			func(s notify.ListenerStats) uint64 { return uint64(s.EventsExpired) }),
		counter("ackd_events_received_total", receivedHelp, prometheus.Labels{"event": "evicted"},
			func(s notify.ListenerStats) uint64 { return uint64(s.EventsEvicted) }),
		counter("ackd_events_received_total", receivedHelp, prometheus.Labels{"event": "wake"},
			func(s notify.ListenerStats) uint64 { return uint64(s.WakeMessages) }),
		counter("ackd_events_ignored_total", "Events and wake messages ignored: not about an ackd lease, malformed, or of a queue outside ACKD_QUEUES.", nil,
			func(s notify.ListenerStats) uint64 { return uint64(s.Ignored) + ignored() }),
		counter("ackd_subscription_reconnects_total", "Times the listener subscribed again after losing its connection (each followed by a catch-up scan).", nil,
			func(s notify.ListenerStats) uint64 { return uint64(s.Reconnects) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ackd_subscribed",
			Help: "1 while the listener's subscription to events and wake messages is live.",
		}, func() float64 { return b2f(lis.Subscribed()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ackd_up",
			Help: "1 while ackd runs.",
		}, func() float64 { return 1 }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "ackd_build_info",
			Help:        "Always 1; labels give ackd's version and the Go version that built it.",
			ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
		&queueCollector{
			desc: prometheus.NewDesc("ackd_queue_messages",
				"Messages of each watched queue by state (ready includes the claim list), read at scrape time; at most 1000 queues.",
				[]string{"queue", "state"}, nil),
			paused: prometheus.NewDesc("ackd_queue_paused",
				"1 while the queue is paused (takes lease nothing), 0 otherwise; read at scrape time.",
				[]string{"queue"}, nil),
			oldestAge: prometheus.NewDesc("ackd_queue_oldest_ready_age_seconds",
				"Age of the oldest ready message, from its push (or the end of its delay); 0 when none is ready. Absent while the oldest is a raw RPUSH payload, whose push time is unknown.",
				[]string{"queue"}, nil),
			stats: queueStats,
			log:   log,
		},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// recordSweep counts what one Sweep call did.
func (m *metrics) recordSweep(trigger string, r lease.SweepResult) {
	m.sweeps.WithLabelValues(trigger).Inc()
	if r.Requeued > 0 {
		m.requeues.WithLabelValues(trigger).Add(float64(r.Requeued))
	}
	if r.DeadLettered > 0 {
		m.deadLettered.WithLabelValues(lease.ReasonExpired).Add(float64(r.DeadLettered))
	}
	if r.Malformed > 0 {
		m.deadLettered.WithLabelValues(lease.ReasonMalformed).Add(float64(r.Malformed))
	}
	if r.Promoted > 0 {
		m.promoted.Add(float64(r.Promoted))
	}
	if r.Reclaimed > 0 {
		m.reclaimed.Add(float64(r.Reclaimed))
	}
	for _, l := range r.Lags {
		m.lag.Observe(max(l, 0).Seconds())
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// queueCount is one queue's counts for ackd_queue_messages.
type queueCount struct {
	queue string
	stats lease.Stats
}

// queueCollector reads the watched queues' counts at scrape time.
type queueCollector struct {
	desc      *prometheus.Desc
	paused    *prometheus.Desc
	oldestAge *prometheus.Desc
	stats     func(ctx context.Context) ([]queueCount, error)
	log       *slog.Logger
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.paused
	ch <- c.oldestAge
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), queueStatsTimeout)
	defer cancel()
	counts, err := c.stats(ctx)
	if err != nil {
		// The scrape goes on without these; ackd_redis_up says why.
		c.log.Debug("reading queue counts for metrics", "error", err)
	}
	for _, q := range counts {
		for _, s := range []struct {
			state string
			n     int64
		}{{"ready", q.stats.Ready}, {"in_flight", q.stats.InFlight}, {"delayed", q.stats.Delayed}, {"dead", q.stats.Dead}} {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(s.n), q.queue, s.state)
		}
		ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, b2f(q.stats.Paused), q.queue)
		if q.stats.Ready == 0 || !q.stats.OldestReady.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.oldestAge, prometheus.GaugeValue, q.stats.OldestReadyAge.Seconds(), q.queue)
		}
	}
}
