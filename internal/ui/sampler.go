package ui

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// Sampling: the rate charts need a reading of each queue on screen every
// few seconds, and the daemon's sweeps come at the queues' own pace (a
// quiet queue is swept once a scan interval). So while someone looks at
// the dashboard, Sample reads the Stats of the queues it shows, all in
// one pipelined round per Recorder interval, and hands them to the
// Recorder. Nobody looking: no reading, so /metrics scrapes and an idle
// dashboard cost Redis nothing.
const (
	// ViewedWindowDefault is how long after a page or JSON request of the
	// dashboard sampling goes on (the pages refresh every few seconds).
	ViewedWindowDefault = time.Minute
	// sampleChunk bounds the scripts of one pipeline.
	sampleChunk = 500
	// maxViewedQueues bounds the queue pages remembered for sampling
	// besides the overview's queues.
	maxViewedQueues = 100
)

// views remembers when the dashboard was last viewed, and which queue
// pages.
type views struct {
	mu     sync.Mutex
	last   time.Time
	queues map[string]time.Time
}

func (v *views) saw(now time.Time, queue string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.last = now
	if queue == "" {
		return
	}
	if v.queues == nil {
		v.queues = map[string]time.Time{}
	}
	if _, ok := v.queues[queue]; !ok && len(v.queues) >= maxViewedQueues {
		oldest := ""
		for q, t := range v.queues {
			if oldest == "" || t.Before(v.queues[oldest]) {
				oldest = q
			}
		}
		delete(v.queues, oldest)
	}
	v.queues[queue] = now
}

// since reports whether the dashboard was viewed after t, and the queue
// pages viewed after t.
func (v *views) since(t time.Time) (bool, []string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var qs []string
	for q, at := range v.queues {
		if at.After(t) {
			qs = append(qs, q)
		} else {
			delete(v.queues, q)
		}
	}
	return v.last.After(t), qs
}

// Sample reads, every Recorder interval while the dashboard was viewed in
// the last cfg.ViewedWindow, the Stats of the overview's queues and of the
// queue pages viewed, and records them. It returns when ctx ends.
func (h *Handler) Sample(ctx context.Context) {
	t := time.NewTicker(h.rec.Interval())
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := h.SampleOnce(ctx)
		switch {
		case err != nil && !failing && ctx.Err() == nil:
			h.log.Warn("ui: sampling queues for the rate charts failed", "num_queues", n, "error", err)
			failing = true
		case err == nil && failing:
			h.log.Info("ui: sampling queues for the rate charts works again", "num_queues", n)
			failing = false
		}
	}
}

// SampleOnce is one round of Sample: if the dashboard was viewed lately,
// it reads and records the queues' Stats. It returns the number of queues
// read and the first error.
func (h *Handler) SampleOnce(ctx context.Context) (int, error) {
	viewed, pages := h.views.since(time.Now().Add(-h.cfg.ViewedWindow))
	if !viewed {
		return 0, nil
	}
	set := map[string]bool{}
	for _, q := range h.src.Queues() {
		set[q.Queue] = true
	}
	for _, q := range pages {
		set[q] = true
	}
	queues := slices.Sorted(maps.Keys(set))
	var first error
	for len(queues) > 0 {
		chunk := queues[:min(len(queues), sampleChunk)]
		queues = queues[len(chunk):]
		stats, errs := h.admin.StatsMany(ctx, chunk)
		for i, q := range chunk {
			if errs[i] != nil {
				first = cmpErr(first, errs[i])
				continue
			}
			h.rec.Observe(q, stats[i])
		}
	}
	return len(set), first
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
