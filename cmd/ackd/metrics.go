package main

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

// maxQueueMetrics bounds the queues reported by ackd_queue_messages.
const maxQueueMetrics = 1000

// lagBuckets span 0.5 ms to 60 s: a timer-driven redelivery lands in the
// first few, one found by a scan in the last few.
var lagBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// metrics are ackd's Prometheus metrics, on a registry of their own.
type metrics struct {
	reg *prometheus.Registry

	requeues     *prometheus.CounterVec // trigger
	deadLettered *prometheus.CounterVec // reason
	lag          prometheus.Histogram
	promoted     prometheus.Counter
	reclaimed    prometheus.Counter
	sweeps       *prometheus.CounterVec // trigger
	sweepErrors  *prometheus.CounterVec // trigger
	scanDuration prometheus.Histogram
	scans        prometheus.Counter
	scanErrors   prometheus.Counter
	connectErrs  prometheus.Counter
}

// newMetrics registers the metrics the reaper's Observer methods update;
// watch adds those read from the reaper at scrape time.
func newMetrics() *metrics {
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
		connectErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ackd_redis_connect_errors_total",
			Help: "Failed attempts to reach Redis at start (unreachable, login refused, no such Sentinel master, ...); ackd retries until one works.",
		}),
		scanErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ackd_scan_errors_total",
			Help: "Scans that failed.",
		}),
	}
	for _, tr := range []string{reaper.TriggerEvent, reaper.TriggerTimer, reaper.TriggerScan} {
		m.requeues.WithLabelValues(tr)
		m.sweeps.WithLabelValues(tr)
		m.sweepErrors.WithLabelValues(tr)
	}
	for _, r := range []string{lease.ReasonExpired, lease.ReasonMalformed} {
		m.deadLettered.WithLabelValues(r)
	}

	reg.MustRegister(
		m.requeues, m.deadLettered, m.lag, m.promoted, m.reclaimed, m.sweeps, m.sweepErrors,
		m.scanDuration, m.scans, m.scanErrors, m.connectErrs,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// watch registers the metrics read from rp at scrape time. None of them
// sends a command to Redis.
func (m *metrics) watch(rp *reaper.Reaper) {
	counter := func(name, help string, labels prometheus.Labels, f func(reaper.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(f(rp.Stats())) })
	}
	gauge := func(name, help string, labels prometheus.Labels, f func() bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels},
			func() float64 { return b2f(f()) })
	}
	always := func() bool { return true }
	const receivedHelp = "Messages received by the listener: expired and evicted shadow-key events, and wake messages announcing a queue's next deadline."
	m.reg.MustRegister(
		counter("ackd_events_received_total", receivedHelp, prometheus.Labels{"event": "expired"},
			func(s reaper.Stats) uint64 { return s.Listener.EventsExpired }),
		counter("ackd_events_received_total", receivedHelp, prometheus.Labels{"event": "evicted"},
			func(s reaper.Stats) uint64 { return s.Listener.EventsEvicted }),
		counter("ackd_events_received_total", receivedHelp, prometheus.Labels{"event": "wake"},
			func(s reaper.Stats) uint64 { return s.Listener.WakeMessages }),
		counter("ackd_events_ignored_total", "Events and wake messages ignored: not about an ackd lease, malformed, of a queue outside ACKD_QUEUES, or a wake beyond the longest lease (a week).", nil,
			func(s reaper.Stats) uint64 { return s.Listener.Ignored + s.Ignored }),
		counter("ackd_events_dropped_total", "Events and wake messages dropped because 10,000 queues already had a sweep pending; those queues are swept by the next scan.", nil,
			func(s reaper.Stats) uint64 { return s.Dropped }),
		counter("ackd_not_replicated_total", "Sweep script calls that fewer than ACKD_REDIS_REPLICAS replicas confirmed within ACKD_REDIS_REPLICA_TIMEOUT: made on the master, undone if it fails over; the queue is swept again a second later. Not an outage.", nil,
			func(s reaper.Stats) uint64 { return s.NotReplicated }),
		counter("ackd_master_switches_total", "Times the listener found the masters changed and moved its subscriptions: a Sentinel +switch-master, or a Cluster master added, removed or replaced by its replica.", nil,
			func(s reaper.Stats) uint64 { return s.Listener.Switches }),
		counter("ackd_subscription_reconnects_total", "Times the listener subscribed again after losing its connection (each followed by a catch-up scan).", nil,
			func(s reaper.Stats) uint64 { return s.Listener.Reconnects }),
		gauge("ackd_subscribed", "1 while the listener's subscription to events and wake messages is live.", nil, rp.Subscribed),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ackd_keyspace_events_enabled", Help: "1 if Redis sends the keyspace events ackd listens to (notify-keyspace-events has E and x, or, with ACKD_CONFIGURE_EVENTS=false, an expired event arrived), 0 if not, -1 while unknown; without them leases come back on timers and scans only."},
			func() float64 {
				switch ev := rp.Events(); {
				case ev.Enabled:
					return 1
				case ev.Checked && ev.Error == "":
					return 0
				}
				return -1
			}),
		gauge("ackd_redis_up", "1 if Redis answers ackd, 0 during an outage: no answer, loading, or ackd's login refused. An error reply (WRONGTYPE) is not an outage.", nil, rp.RedisUp),
		gauge("ackd_up", "1 while ackd runs.", nil, always),
		gauge("ackd_build_info", "Always 1; labels give ackd's version and the Go version that built it.",
			prometheus.Labels{"version": version, "goversion": runtime.Version()}, always),
		&queueCollector{
			desc: prometheus.NewDesc("ackd_queue_messages",
				"Messages of each watched queue by state (ready includes the claim list), as the queue's last sweep found them (at most ACKD_SCAN_INTERVAL ago); at most 1000 queues. A queue of the registry drops out after two scans in a row found it empty, or once it left the registry.",
				[]string{"queue", "state"}, nil),
			paused: prometheus.NewDesc("ackd_queue_paused",
				"1 while the queue is paused (takes lease nothing), 0 otherwise, as the queue's last sweep found it.",
				[]string{"queue"}, nil),
			oldestAge: prometheus.NewDesc("ackd_queue_oldest_ready_age_seconds",
				"Age of the oldest ready message, from its push (or the end of its delay), as the queue's last sweep found it; 0 when none is ready. Absent while the oldest is a raw RPUSH payload, whose push time is unknown.",
				[]string{"queue"}, nil),
			rp: rp,
		},
	)
}

// Swept, SweepFailed and Scanned make metrics the reaper's Observer.

// Swept counts what one Sweep call did.
func (m *metrics) Swept(_, trigger string, r lease.SweepResult) { m.recordSweep(trigger, r) }

// SweepFailed counts a failed sweep.
func (m *metrics) SweepFailed(_, trigger string, _ error) {
	m.sweepErrors.WithLabelValues(trigger).Inc()
}

// Scanned counts a scan of every watched queue.
func (m *metrics) Scanned(_ int, took time.Duration, err error) {
	m.scans.Inc()
	m.scanDuration.Observe(took.Seconds())
	if err != nil {
		m.scanErrors.Inc()
	}
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

// queueCollector reports the counts the reaper's sweeps found.
type queueCollector struct {
	desc      *prometheus.Desc
	paused    *prometheus.Desc
	oldestAge *prometheus.Desc
	rp        *reaper.Reaper
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.paused
	ch <- c.oldestAge
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	qs := c.rp.Queues()
	for _, q := range qs[:min(len(qs), maxQueueMetrics)] {
		for _, s := range []struct {
			state string
			n     int64
		}{{"ready", q.Ready}, {"in_flight", q.InFlight}, {"delayed", q.Delayed}, {"dead", q.Dead}} {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(s.n), q.Queue, s.state)
		}
		ch <- prometheus.MustNewConstMetric(c.paused, prometheus.GaugeValue, b2f(q.Paused), q.Queue)
		if q.Ready == 0 || !q.OldestReady.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.oldestAge, prometheus.GaugeValue, q.OldestReadyAge.Seconds(), q.Queue)
		}
	}
}
