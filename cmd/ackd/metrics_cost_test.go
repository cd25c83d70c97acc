package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/reaper"
)

// TestMetricsCostRedisNothing: 100 scrapes of /metrics send no command
// to Redis (INFO commandstats, reset before the scrapes). The daemon's own
// background commands are made rare; a window in which one still ran is
// tried again, so only a scrape that costs commands fails the test.
func TestMetricsCostRedisNothing(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	lc := newLeaseClient(t, srv)
	for _, q := range []string{"a", "b", "c"} {
		expireOne(t, lc, q, time.Hour)
	}
	in := startAckdTuned(t, srv, map[string]string{"ACKD_SCAN_INTERVAL": "1h"}, func(c *reaper.Config) {
		shortIntervals(c)
		c.CheckInterval = time.Hour
		c.ListenerPingInterval = time.Hour
	})
	in.waitReady(t)
	redistest.WaitFor(t, waitTimeout, func() bool {
		return in.metric(t, "ackd_queue_messages", "queue=c", "state=in_flight") == 1
	}, "the first scan counted the queues")

	const scrapes = 100
	var calls map[string]int64
	redistest.WaitFor(t, waitTimeout, func() bool {
		if err := rdb.ConfigResetStat(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		for range scrapes {
			if code, _ := in.get(t, "/metrics"); code != 200 {
				t.Fatalf("/metrics: %d", code)
			}
		}
		info, err := rdb.Info(t.Context(), "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		calls = map[string]int64{}
		for _, line := range strings.Split(info, "\r\n") {
			name, rest, ok := strings.Cut(strings.TrimPrefix(line, "cmdstat_"), ":calls=")
			if !ok || name == "info" || name == "config|resetstat" {
				continue
			}
			n, _ := strconv.ParseInt(rest[:strings.IndexByte(rest, ',')], 10, 64)
			calls[name] = n
		}
		return len(calls) == 0
	}, "a window of 100 scrapes with no Redis command")
	t.Logf("%d scrapes of /metrics: 0 Redis commands (last window's commandstats: %v)", scrapes, calls)
}
