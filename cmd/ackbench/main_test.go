package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTinyRun runs both throughput sections, latency and memory at tiny
// sizes against a real redis-server and checks that the report has a row
// for every system in every table and a verdict for every target. It
// checks the shape of the report, never a figure.
func TestTinyRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := filepath.Join(t.TempDir(), "report.md")
	var stderr bytes.Buffer
	args := []string{"-quick", "-n", "1000", "-consumers", "1,8", "-only", "concurrent,throughput,latency,memory",
		"-variants", strings.Join(concKeys, ","), "-o", out}
	if err := run(ctx, args, os.Stdout, &stderr); err != nil {
		t.Fatalf("ackbench %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	report := string(b)

	conc := section(t, report, "## 1. ")
	tables := subsections(conc)
	// the last subsection is where Redis's time goes at 8 consumers: a
	// total row for each system it lists
	if n := len(tables); n > 0 && strings.HasPrefix(tables[n-1], "Where Redis's time goes") {
		for _, k := range []string{"streams", "ackd", "ackd-batch", "ackd-consume", "ackd-floor"} {
			if !strings.Contains(tables[n-1], "| "+variantByKey(k).name+" | **Redis CPU total** |") {
				t.Errorf("concurrent breakdown: no total for %s:\n%s", k, tables[n-1])
			}
		}
		tables = tables[:n-1]
	} else {
		t.Errorf("concurrent section: no breakdown of Redis's time last:\n%s", conc)
	}
	if len(tables) != 4 {
		t.Fatalf("concurrent section: %d tables, want 4 (2 payloads × 2 consumer counts):\n%s", len(tables), conc)
	}
	for _, tb := range tables {
		for _, k := range concKeys {
			row := rowOf(t, tb, variantByKey(k).name)
			// system, msgs/s, 3 ratios, CPU, CPU ratio, commands, round
			// trips, client CPU, msgs/take, p50, p99, backlog, at cap
			if cells := strings.Count(row, "|") - 1; cells != 15 {
				t.Errorf("row %q: %d cells, want 15", row, cells)
			}
		}
	}
	pre := section(t, report, "## 2. ")
	for _, tb := range subsections(pre)[:4] {
		for _, k := range concKeys {
			rowOf(t, tb, variantByKey(k).name)
		}
	}
	lat := section(t, report, "## 3. ")
	for _, name := range []string{"Streams XADD/XREADGROUP BLOCK", "ackd Push/Take (Wait)"} {
		rowOf(t, lat, name)
	}
	rowOf(t, section(t, report, "## 4. "), "ackd in flight (TakeBatch, never acked)")

	targets := section(t, report, "## Targets")
	for _, name := range []string{
		"Consume throughput, 8+ workers (concurrent)",
		"Consume throughput, 8+ workers vs batched Streams (concurrent)",
		"Consume throughput, 1 worker (concurrent)",
		"Take+Ack throughput (concurrent)",
		"AckAndTake throughput (concurrent)",
		"Redis CPU per message, AckAndTake, 100 B (concurrent)",
		"TakeBatch never slower than Take (concurrent)",
		"Redis CPU per message, Take+Ack, 100 B (concurrent)",
		"Redis CPU per message, Consume, 100 B (concurrent)",
		"Redis CPU per message, Take+Ack, 10 KB (concurrent)",
		"Redis CPU per message, Consume, 10 KB (concurrent)",
		"push-to-take latency, consumer waiting",
		"memory per in-flight message",
	} {
		row := rowOf(t, targets, name)
		if !strings.HasSuffix(row, "| met |") && !strings.HasSuffix(row, "| missed |") {
			t.Errorf("target row without a verdict: %q", row)
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-consumers", "0"},
		{"-consumers", "1,x"},
		{"-producers", "0"},
		{"-backlog", "0"},
		{"-variants", "ackd,nosuch"},
		{"-only", "nosuch"},
		{"-n", "10"},
		{"-prefetch", "x"},
		{"-prefetch", "1001"},
	} {
		var stderr bytes.Buffer
		if _, err := parseFlags(args, &stderr); err == nil {
			t.Errorf("%q: accepted", args)
		}
	}
}

// TestPrefetchVariants: -prefetch adds one Consume variant per value,
// run even when -variants names others.
func TestPrefetchVariants(t *testing.T) {
	o, err := parseFlags([]string{"-prefetch", "-1,32", "-variants", "streams,ackd-consume"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, v := range o.allVariants() {
		if o.variant(v.key) {
			keys = append(keys, v.key)
		}
	}
	if got := strings.Join(keys, ","); got != "streams,ackd-consume,ackd-consume-p-1,ackd-consume-p32" {
		t.Errorf("variants %s", got)
	}
}

// section is the part of report from the line starting with heading to
// the next level-2 heading.
func section(t *testing.T, report, heading string) string {
	t.Helper()
	i := strings.Index(report, "\n"+heading)
	if i < 0 {
		t.Fatalf("no section %q in the report:\n%s", heading, report)
	}
	s := report[i+1:]
	if j := strings.Index(s, "\n## "); j >= 0 {
		s = s[:j]
	}
	return s
}

// subsections splits a section at its level-3 headings.
func subsections(s string) []string {
	parts := strings.Split(s, "\n### ")
	return parts[1:]
}

// rowOf returns the table row of s whose first cell is name.
func rowOf(t *testing.T, s, name string) string {
	t.Helper()
	for line := range strings.SplitSeq(s, "\n") {
		if strings.HasPrefix(line, "| "+name+" |") {
			return line
		}
	}
	t.Errorf("no row %q in:\n%s", name, s)
	return ""
}
