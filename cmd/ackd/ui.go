package main

import (
	"log/slog"
	"strings"
	"time"
	"unicode"

	"github.com/ackd/ackd/internal/ui"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

// minUITokenLen is the shortest ACKD_UI_TOKEN accepted.
const minUITokenLen = 16

// validateUI checks the dashboard's variables.
func (c *config) validateUI() []string {
	if c.UIToken == "" {
		return nil
	}
	var p []string
	if len(c.UIToken) < minUITokenLen {
		p = append(p, envPrefix+"UI_TOKEN: too short (value not shown): use at least 16 characters, e.g. openssl rand -hex 16")
	}
	if strings.IndexFunc(c.UIToken, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
		p = append(p, envPrefix+"UI_TOKEN: contains spaces or control characters (value not shown)")
	}
	if !c.UI {
		p = append(p, envPrefix+"UI_TOKEN: set while ACKD_UI is false: unset it, or turn the dashboard on")
	}
	return p
}

// observers calls each of its Observers in turn.
type observers []reaper.Observer

func (o observers) Swept(queue, trigger string, r lease.SweepResult) {
	for _, x := range o {
		x.Swept(queue, trigger, r)
	}
}

func (o observers) SweepFailed(queue, trigger string, err error) {
	for _, x := range o {
		x.SweepFailed(queue, trigger, err)
	}
}

func (o observers) Scanned(queues int, took time.Duration, err error) {
	for _, x := range o {
		x.Scanned(queues, took, err)
	}
}

// newUI returns the dashboard of rp, or nil if ACKD_UI is false.
func newUI(cfg config, rp *reaper.Reaper, lc *lease.Client, rec *ui.Recorder, log *slog.Logger) (*ui.Handler, error) {
	if !cfg.UI {
		return nil, nil
	}
	return ui.New(rp, lc, &ui.Config{
		Token:    cfg.UIToken,
		Payloads: cfg.UIPayloads,
		Recorder: rec,
		Logger:   log,
		Version:  version,
	})
}
