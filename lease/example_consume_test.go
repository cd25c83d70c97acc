package lease_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/lease"
)

// handlerSeconds times every handler, by queue and outcome.
func handlerSeconds(reg prometheus.Registerer) (*prometheus.HistogramVec, lease.Middleware) {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "consumer_handler_seconds",
		Help:    "Time spent in message handlers.",
		Buckets: prometheus.DefBuckets,
	}, []string{"queue", "outcome"})
	reg.MustRegister(h)
	mw := func(next lease.Handler) lease.Handler {
		return func(ctx context.Context, l *lease.Lease) error {
			start := time.Now()
			err := next(ctx, l)
			outcome := "ok"
			if err != nil {
				outcome = "error"
			}
			h.WithLabelValues(l.Queue, outcome).Observe(time.Since(start).Seconds())
			return err
		}
	}
	return h, mw
}

// A middleware that times every handler into a Prometheus histogram.
func ExampleMiddleware() {
	ctx, cancel := context.WithCancel(context.Background())
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	hist, timed := handlerSeconds(reg)

	for _, p := range []string{"a", "b", "c"} {
		if _, err := c.Push(ctx, "resize", []byte(p), nil); err != nil {
			log.Fatal(err)
		}
	}
	done := 0
	err = c.Consume(ctx, "resize", func(ctx context.Context, l *lease.Lease) error {
		if done++; done == 3 {
			cancel()
		}
		return nil
	}, &lease.ConsumeOpts{Workers: 1, Middleware: []lease.Middleware{timed}})
	if err != nil {
		log.Fatal(err)
	}
	m, err := hist.GetMetricWithLabelValues("resize", "ok")
	if err != nil {
		log.Fatal(err)
	}
	n := sampleCount(m.(prometheus.Metric))
	fmt.Println("handlers timed:", n)
	// Output:
	// handlers timed: 3
}

// sampleCount reads a histogram's sample count.
func sampleCount(m prometheus.Metric) uint64 {
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		log.Fatal(err)
	}
	return pb.GetHistogram().GetSampleCount()
}

// A handler says what should happen to a message through its error.
func ExampleSkipRetry() {
	ctx, cancel := context.WithCancel(context.Background())
	rdb := redis.NewClient(&redis.Options{Addr: exampleAddr()})
	defer rdb.Close()
	c, err := lease.New(rdb, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := c.Push(ctx, "orders", []byte("{not json"), nil); err != nil {
		log.Fatal(err)
	}
	err = c.Consume(ctx, "orders", func(ctx context.Context, l *lease.Lease) error {
		defer cancel()
		var order struct{ ID int }
		if err := json.Unmarshal(l.Payload, &order); err != nil {
			// No retry will fix this one: to the dead set now.
			return lease.SkipRetry(fmt.Errorf("decode order: %w", err))
		}
		if err := charge(ctx, order.ID); errors.Is(err, errRateLimited) {
			// The payment service said when to come back.
			return lease.RetryAfter(time.Minute, err)
		}
		return nil // ack
	}, &lease.ConsumeOpts{ErrorFunc: func(*lease.Lease, error) {}})
	if err != nil {
		log.Fatal(err)
	}
	dls, err := c.DeadLetters(context.Background(), "orders", 0, 10)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dls {
		fmt.Printf("%s after %d attempt(s): %s\n", d.Reason, d.Attempts, d.Error)
	}
	// Output:
	// failed after 1 attempt(s): decode order: invalid character 'n' looking for beginning of object key string
}

var errRateLimited = errors.New("rate limited")

func charge(context.Context, int) error { return nil }

// A consumer's main, as deployed on Kubernetes: SIGTERM starts the stop,
// running handlers get 20 seconds (keep it below
// terminationGracePeriodSeconds), a handler may take 2 minutes, every
// handler is timed for /metrics, and errors go to the JSON log.
func Example_consumerMain() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))

	opt, err := redis.ParseURL(os.Getenv("REDIS_URL"))
	if err != nil {
		logger.Error("bad REDIS_URL", "error", err)
		os.Exit(1)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close() // last: after Consume has released what it held
	c, err := lease.New(rdb, &lease.Config{Logger: logger})
	if err != nil {
		logger.Error("lease client", "error", err)
		os.Exit(1)
	}

	_, timed := handlerSeconds(prometheus.DefaultRegisterer)
	go func() {
		_ = http.ListenAndServe(":9100", promhttp.Handler())
	}()

	err = c.Consume(ctx, "emails", sendEmail, &lease.ConsumeOpts{
		Workers:     16,
		Timeout:     2 * time.Minute,
		StopTimeout: 20 * time.Second,
		Middleware:  []lease.Middleware{timed},
	})
	if err != nil { // only bad options: Redis errors are ridden out
		logger.Error("consume", "error", err)
		os.Exit(1)
	}
	logger.Info("stopped")
}

func sendEmail(ctx context.Context, l *lease.Lease) error { return nil }
