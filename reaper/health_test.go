package reaper

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestOutageHandlerDemotes(t *testing.T) {
	t.Parallel()
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		var buf bytes.Buffer
		var down bool
		log := slog.New(&outageHandler{Handler: slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: level}), down: func() bool { return down }}).With("component", "x")
		log.Warn("before")
		down = true
		log.Warn("during")
		log.Info("info during")
		down = false
		log.Error("after")
		out := buf.String()
		for _, want := range []string{`"level":"WARN","msg":"before"`, `"msg":"info during"`, `"level":"ERROR","msg":"after"`} {
			if !strings.Contains(out, want) {
				t.Errorf("level %v: log lacks %s:\n%s", level, want, out)
			}
		}
		if during := strings.Contains(out, `"msg":"during"`); during != (level == slog.LevelDebug) {
			t.Errorf("level %v: warning during the outage shown %v:\n%s", level, during, out)
		}
		if strings.Contains(out, `"level":"WARN","msg":"during"`) {
			t.Errorf("warning during the outage not demoted:\n%s", out)
		}
	}
}

// TestHealthIgnoresStaleCalls: Redis calls end out of order. A call sent
// before the one that changed the state (a sweep Redis answered just
// before an outage, reporting after the monitor's failed PING) neither
// ends the outage nor starts another: one line each way.
func TestHealthIgnoresStaleCalls(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	h := &health{log: slog.New(slog.NewJSONHandler(&buf, nil))}
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	down := errors.New("dial tcp: connection refused")

	h.ok(at(0))
	h.failed(down, at(20)) // the monitor's PING, sent at 20 ms
	h.ok(at(10))           // a sweep sent at 10 ms, answered before the outage
	if !h.isDown() {
		t.Fatal("a call sent before the failure ended the outage")
	}
	h.ok(at(30)) // a call sent after it: recovered
	h.failed(down, at(25))
	if h.isDown() {
		t.Fatal("a failure sent before the recovery started another outage")
	}
	out := buf.String()
	if n := strings.Count(out, "redis unavailable"); n != 1 {
		t.Errorf("%d outage lines, want 1:\n%s", n, out)
	}
	if n := strings.Count(out, "redis recovered"); n != 1 {
		t.Errorf("%d recovery lines, want 1:\n%s", n, out)
	}
}
