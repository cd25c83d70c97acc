package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ackd/ackd/lease"
)

const idleQueues = 100

// idle measures what the daemon costs while its queues are empty: Redis
// commands per second it issues, and its resident memory.
func (b *bench) idle(ctx context.Context) error {
	var s strings.Builder
	s.WriteString("## 6. Idle daemon\n\n")
	if _, err := b.ackdBinary(ctx); err != nil {
		b.logf("idle skipped: %v", err)
		fmt.Fprintf(&s, "Skipped: the daemon did not build (%s).\n", firstLine(err.Error()))
		b.sections = append(b.sections, s.String())
		return nil
	}
	window, settle := 60*time.Second, 3*time.Second
	if b.opt.quick {
		window = 15 * time.Second
	}
	if err := b.ctl.FlushAll(ctx).Err(); err != nil {
		return err
	}
	lc, err := lease.New(b.ctl, nil)
	if err != nil {
		return err
	}
	for i := range idleQueues {
		if err := lc.Register(ctx, fmt.Sprintf("idle-%03d", i)); err != nil {
			return err
		}
	}
	sPre, err := b.stats(ctx)
	if err != nil {
		return err
	}
	d, err := b.startDaemon(ctx)
	if err != nil {
		return err
	}
	defer d.kill()
	b.logf("idle: daemon up, settling %v, then measuring %v", settle, window)
	time.Sleep(settle)
	s0, err := b.stats(ctx)
	if err != nil {
		return err
	}
	t0 := time.Now()
	time.Sleep(window)
	s1, err := b.stats(ctx)
	if err != nil {
		return err
	}
	elapsed := time.Since(t0)
	rss, err := rssKB(d.pid())
	if err != nil {
		return err
	}
	if err := d.stop(); err != nil {
		return err
	}
	delta := s1.sub(s0)
	// Start-up (the first full scan included): everything between the INFO
	// before the start and the first INFO of the window, minus that INFO.
	startup := s0.commands - sPre.commands - 1
	// total_commands_processed counts the first INFO (ours) and, like
	// commandstats, every command a script calls.
	cmds := float64(delta.commands-1) / elapsed.Seconds()
	names := make([]string, 0, len(delta.cmds))
	for k := range delta.cmds {
		if k != "info" {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	var parts []string
	for _, k := range names {
		parts = append(parts, fmt.Sprintf("%s %d", strings.ToUpper(k), delta.cmds[k].calls))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	fmt.Fprintf(&s, "%d registered, empty queues; the daemon with default settings (ACKD_SCAN_INTERVAL 5m, events on). After %v "+
		"to settle, INFO stats total_commands_processed is read twice, %v apart; the difference minus ackbench's own INFO "+
		"is what the daemon issued (commands a script calls would count too).\n\n", idleQueues, settle, window.Round(time.Second))
	s.WriteString(table([]string{"Redis commands/s", "commands in the window", "start-up commands (first scan included)", "daemon RSS", "target (≤ 1 command/s)"},
		[][]string{{fmtF(cmds), strings.Join(parts, ", "), fmtNum(float64(startup)), fmt.Sprintf("%.1f MiB", float64(rss)/1024), metMissed(cmds <= 1)}}))
	b.sections = append(b.sections, s.String())
	b.addTarget("idle daemon", fmt.Sprintf("≤ 1 Redis command/s with %d idle queues", idleQueues),
		fmt.Sprintf("%s commands/s, RSS %.1f MiB", fmtF(cmds), float64(rss)/1024), cmds <= 1)
	return nil
}
