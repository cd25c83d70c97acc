package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ackd/ackd/reaper"
)

const (
	// readyPingTimeout bounds the PING of one /readyz request.
	readyPingTimeout = time.Second
	// healthcheckTimeout bounds ackd -healthcheck.
	healthcheckTimeout = 3 * time.Second
)

// handler serves /healthz, /readyz, /metrics and the dashboard (/ui/).
func (d *daemon) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", d.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      d.metrics.reg,
	}))
	if d.uiOn {
		mux.Handle("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if h := d.ui.Load(); h != nil {
				h.ServeHTTP(w, r)
				return
			}
			// Until Redis first answers there is nothing to show; /readyz
			// says why.
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "ackd is connecting to Redis; see /readyz\n")
		}))
		mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	}
	return mux
}

// readiness is the JSON body of /readyz.
type readiness struct {
	Ready      bool         `json:"ready"`
	Redis      bool         `json:"redis"`
	RedisError string       `json:"redis_error,omitempty"`
	Subscribed bool         `json:"subscribed"`
	Stopping   bool         `json:"stopping,omitempty"`
	Events     eventsReport `json:"events"`
}

// eventsReport is what /readyz says about keyspace events.
type eventsReport struct {
	State   string `json:"state"`   // "on", "off" or "unknown"
	Source  string `json:"source"`  // "config" (read with CONFIG GET) or "observed" (an expired event arrived)
	Checked bool   `json:"checked"` // false while unknown
	Enabled bool   `json:"enabled"`
	Flags   string `json:"flags"`
	Error   string `json:"error,omitempty"`
	// Replicas: what ackd found on the replicas (Cluster replicas, or
	// those the Sentinels list), which send events only once promoted;
	// absent when it reached none or did not look (CONFIG not used).
	Replicas *replicasReport `json:"replicas,omitempty"`
}

// replicasReport is what /readyz says about the replicas' events setting.
type replicasReport struct {
	Count   int    `json:"count"`
	Enabled bool   `json:"enabled"` // every one has E and x: a promoted replica sends expired events at once
	Error   string `json:"error,omitempty"`
}

// eventsReportOf converts the reaper's events status for /readyz.
func eventsReportOf(ev reaper.EventsStatus, observe bool) eventsReport {
	r := eventsReport{State: "unknown", Source: "config", Checked: ev.Checked, Enabled: ev.Enabled, Flags: ev.Flags, Error: ev.Error}
	if observe {
		r.Source = "observed"
	}
	if ev.Replicas > 0 || ev.ReplicaError != "" {
		r.Replicas = &replicasReport{Count: ev.Replicas, Enabled: ev.ReplicasEnabled && ev.ReplicaError == "", Error: ev.ReplicaError}
	}
	switch {
	case ev.Enabled:
		r.State = "on"
	case ev.Checked && ev.Error == "":
		r.State = "off"
	}
	return r
}

// readyz answers 200 when Redis answers PING (for a Cluster: and every
// slot is served) and the listener's subscription is live, 503 otherwise
// with the reason. Keyspace events being off is
// reported in the body but does not make ackd unready: it works on.
func (d *daemon) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readyPingTimeout)
	defer cancel()
	var rd readiness
	c := d.conn.Load()
	if c == nil {
		// Not connected yet: say why (redisconn's errors hold no secret).
		rd.RedisError = *d.connectErr.Load()
	} else {
		err := c.rdb.Ping(ctx).Err()
		if err == nil {
			err = clusterCoverage(ctx, c.rdb)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			rd.RedisError = fmt.Sprintf("no answer within %v", readyPingTimeout)
		} else if err != nil {
			rd.RedisError = err.Error()
		} else {
			rd.Redis = true
		}
		// Read after the PING, which may take up to readyPingTimeout:
		// what the answer says is as of its end.
		rd.Subscribed = c.rp.Subscribed()
		rd.Events = eventsReportOf(c.rp.Events(), d.observeEvents)
	}
	rd.Stopping = d.stopping.Load()
	rd.Ready = rd.Redis && rd.Subscribed && !rd.Stopping
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !rd.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(rd)
}

// healthcheckURL is the /healthz URL of an ackd listening on addr: its
// host, or 127.0.0.1 if it listens on every interface.
func healthcheckURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port == "0" {
		return "", fmt.Errorf("ACKD_HTTP_ADDR %q has port 0: no fixed port to check", addr)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}

// healthcheck GETs /healthz of the ackd at addr, for a container's
// HEALTHCHECK (the image has no curl). nil means it answered 200.
func healthcheck(ctx context.Context, addr string) error {
	u, err := healthcheckURL(addr)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, healthcheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: GET %s: %s", u, resp.Status)
	}
	return nil
}
