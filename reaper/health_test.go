package reaper

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
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
