package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/ackd/ackd/internal/browsertest"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/lease"
)

// screenshots, if set, is the directory TestUIBrowser saves its
// screenshots to: go test ./cmd/ackd -run TestUIBrowser -ui.screenshots ../../docs
var screenshots = flag.String("ui.screenshots", "", "directory to save dashboard screenshots to")

const browserTimeout = 20 * time.Second

// scanTimeout bounds waits on ackd's first scan, which on a loaded
// machine with the race detector takes seconds for 1,000 queues.
const scanTimeout = time.Minute

// TestUIBrowser drives the dashboard in headless Chromium against ackd and
// a real redis-server.
func TestUIBrowser(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lc := newLeaseClient(t, srv)
	seed := seedUI(t, lc)
	in := startAckd(t, srv, map[string]string{"ACKD_UI_TOKEN": uiToken, "ACKD_UI_PAYLOADS": "true"})
	in.waitUI(t)
	b := browsertest.New(t)
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }

	// Overview: the seeded queues with their counts, as the scan found them.
	b.Do(t, browserTimeout, chromedp.Navigate(in.base+"/ui/"))
	b.WaitFor(t, scanTimeout, `document.querySelectorAll('#queues tbody tr[data-name]').length === 3`, "three queues listed")
	row := func(name string) []string {
		t.Helper()
		return browsertest.Eval[[]string](t, b, `[...document.querySelector('#queues tr[data-name="`+name+`"]').cells].map(c => c.textContent.trim())`)
	}
	// name, ready, in flight, delayed, dead, oldest, pushed/s, acked/s,
	// requeued/s, dead/s, state
	if r := row("orders"); r[1] != "6" || r[2] != "2" || r[3] != "3" || r[4] != "4" || r[10] != "running" {
		t.Errorf("orders row %q, want 6 ready, 2 in flight, 3 delayed, 4 dead, running", r)
	}
	if r := row("billing"); r[1] != "2" || r[10] != "paused" {
		t.Errorf("billing row %q, want 2 ready, paused", r)
	}
	if r := row("emails"); r[1] != "1" || r[4] != "0" {
		t.Errorf("emails row %q, want 1 ready, 0 dead", r)
	}
	health := browsertest.Eval[string](t, b, `document.getElementById('health').textContent`)
	for _, want := range []string{"Redis up", "Subscription live", "Keyspace events on", "Last scan"} {
		if !strings.Contains(health, want) {
			t.Errorf("health panel %q lacks %q", health, want)
		}
	}

	// The charts draw what the daemon did: a lease that runs out is
	// requeued, and both the rate line and the lag histogram rise.
	expireOne(t, lc, "signups", time.Millisecond)
	b.WaitFor(t, waitTimeout, `(() => {
		const line = document.querySelector('#rates svg polyline.s3');
		const bars = [...document.querySelectorAll('#lag svg rect.bar')];
		const ys = line ? line.getAttribute('points').split(' ').map(p => parseFloat(p.split(',')[1])) : [];
		return ys.length === 60 && ys.some(y => y < Math.max(...ys))
			&& bars.length === 17 && bars.some(r => parseFloat(r.getAttribute('height')) > 0);
	})()`, "the rate and lag charts to show the requeue")

	// Traffic: pushes to orders and emails, acks on emails. The page
	// being open, ackd reads the queues every few seconds, and the
	// overview's chart and the rows' small charts rise.
	traffic(t, lc)
	b.WaitFor(t, scanTimeout, risen(`#rates svg polyline.s1`, 60)+` && `+risen(`#rates svg polyline.s2`, 60)+` && `+
		risen(`tr[data-name="emails"] td[data-rate="pushed"] polyline`, 20)+` && `+
		risen(`tr[data-name="emails"] td[data-rate="acked"] polyline`, 20)+` && `+
		risen(`tr[data-name="orders"] td[data-rate="pushed"] polyline`, 20),
		"the rate charts to show the pushes and acks")

	// Sort and filter by name.
	b.Do(t, browserTimeout, chromedp.Click(css(`th[data-sort="ready"]`)))
	if first := browsertest.Eval[string](t, b, `document.querySelector('#queues tbody tr').dataset.name`); first != "orders" {
		t.Errorf("sorted by ready (most first), first row %q, want orders", first)
	}
	b.Do(t, browserTimeout, chromedp.SendKeys(css("#filter"), "bill"))
	b.WaitFor(t, waitTimeout, `[...document.querySelectorAll('#queues tbody tr[data-name]')].map(r => r.dataset.name).join() === 'billing'`, "filter to keep billing only")
	browsertest.Eval[bool](t, b, `(f => { f.value = ''; f.dispatchEvent(new Event('input')); return true })(document.getElementById('filter'))`)
	if *screenshots != "" {
		shoot(t, b, in.base+"/ui/", "dashboard-overview.png", false)
	}

	// The queue page draws a small chart per rate.
	b.Do(t, browserTimeout, chromedp.Navigate(in.base+"/ui/q/emails"), chromedp.WaitVisible(css("#rates")))
	b.WaitFor(t, waitTimeout, risen(`#rate-pushed svg polyline.s1`, 60)+` && `+risen(`#rate-acked svg polyline.s2`, 60)+
		` && !!document.querySelector('#rate-requeued svg polyline.s3') && !!document.querySelector('#rate-dead_lettered svg polyline.s4')`,
		"the queue page's small charts to show the pushes and acks")
	// The figure is over the last minute, whole buckets only.
	b.WaitFor(t, waitTimeout, `document.querySelector('[data-r="acked_per_second"]').textContent !== '0/s'`, "acked per second above 0")

	// Actions without logging in are refused, and change nothing.
	status := browsertest.Get(t, b, browserTimeout, chromedp.Evaluate[int](`fetch('/ui/q/orders/replay', {method: 'POST', body: new URLSearchParams({scope: 'all', confirmed: '1'})}).then(r => r.status)`, chromedp.EvalAwaitPromise))
	if status != 403 {
		t.Errorf("replay without the token: %d, want 403", status)
	}
	if n := deadCount(t, lc, "orders"); n != 4 {
		t.Fatalf("dead letters after a refused replay: %d, want 4", n)
	}
	if got := browsertest.Eval[int](t, b, `document.querySelectorAll('button').length`); got != 0 {
		t.Errorf("%d buttons shown before logging in", got)
	}

	// Log in, then replay one selected dead letter from the queue page.
	b.Do(t, browserTimeout,
		chromedp.Navigate(in.base+"/ui/login"),
		chromedp.SendKeys(css("#token"), uiToken),
		chromedp.Click(css("#login")),
		chromedp.WaitVisible(css("#queues")),
		chromedp.Navigate(in.base+"/ui/q/orders"),
		chromedp.WaitVisible(css("#dead")),
	)
	page := browsertest.Eval[string](t, b, `document.querySelector('main').textContent`)
	for _, want := range []string{"failed 3", "killed 1", seed.inFlight[0], "<b>bold</b>", "binary"} {
		if !strings.Contains(page, want) {
			t.Errorf("queue page lacks %q", want)
		}
	}
	if *screenshots != "" {
		shoot(t, b, in.base+"/ui/q/orders", "dashboard-queue.png", false)
		shoot(t, b, in.base+"/ui/q/orders", "dashboard-queue-phone-dark.png", true)
		b.Do(t, browserTimeout, chromedp.Navigate(in.base+"/ui/q/orders"), chromedp.WaitVisible(css("#dead")))
	}
	b.Do(t, browserTimeout,
		chromedp.Click(css(`input[name="id"][value="`+seed.failed[0]+`"]`)),
		chromedp.Click(css("#replay-selected")),
		chromedp.WaitVisible(css("#confirm")),
	)
	if n := deadCount(t, lc, "orders"); n != 4 {
		t.Fatalf("the confirmation page changed something: %d dead, want 4", n)
	}
	b.Do(t, browserTimeout, chromedp.Click(css("#confirm")), chromedp.WaitVisible(css("#flash")))
	if flash := browsertest.Eval[string](t, b, `document.getElementById('flash').textContent`); flash != "replay: 1" {
		t.Errorf("flash after replaying one: %q", flash)
	}
	if n := deadCount(t, lc, "orders"); n != 3 {
		t.Errorf("dead letters after replaying one: %d, want 3", n)
	}
	if !readyHolds(t, lc, "orders", seed.failed[0]) {
		t.Errorf("replayed %s is not on the ready list", seed.failed[0])
	}

	// Replay by reason: the two other failed ones come back, the killed
	// one stays.
	b.Do(t, browserTimeout,
		chromedp.Navigate(in.base+"/ui/q/orders?reason=failed"),
		chromedp.Click(css("#replay-reason")),
		chromedp.WaitVisible(css("#confirm")),
		chromedp.Click(css("#confirm")),
		chromedp.WaitVisible(css("#flash")),
	)
	reasons, err := lc.DeadReasons(t.Context(), "orders")
	if err != nil {
		t.Fatal(err)
	}
	if len(reasons) != 1 || reasons[lease.ReasonKilled] != 1 {
		t.Errorf("dead letters by reason after replaying the failed ones: %v, want killed: 1", reasons)
	}
	for _, id := range seed.failed {
		if !readyHolds(t, lc, "orders", id) {
			t.Errorf("replayed %s is not on the ready list", id)
		}
	}

	// Pause from the page.
	b.Do(t, browserTimeout,
		chromedp.Click(css("#pause")),
		chromedp.WaitVisible(css("#confirm")),
		chromedp.Click(css("#confirm")),
		chromedp.WaitVisible(css("#resume")),
	)
	if s, err := lc.Stats(t.Context(), "orders"); err != nil || !s.Paused {
		t.Errorf("orders after pausing from the page: %+v, %v", s, err)
	}

	// Every request the pages made went to ackd.
	urls := b.URLs()
	if len(urls) < 10 {
		t.Errorf("only %d requests recorded: %q", len(urls), urls)
	}
	for _, u := range urls {
		if !strings.HasPrefix(u, in.base+"/") {
			t.Errorf("request to %q, outside ackd at %s", u, in.base)
		}
	}
}

// traffic pushes 4 messages to orders and 10 to emails, and takes and
// acks 6 of emails' (which keeps orders the queue with most ready).
func traffic(t *testing.T, lc *lease.Client) {
	t.Helper()
	ctx := t.Context()
	for q, n := range map[string]int{"orders": 4, "emails": 10} {
		payloads := make([][]byte, n)
		for i := range payloads {
			payloads[i] = fmt.Appendf(nil, "%s-%d", q, i)
		}
		if _, err := lc.PushBatch(ctx, q, payloads, nil); err != nil {
			t.Fatal(err)
		}
	}
	ls, err := lc.TakeBatch(ctx, "emails", 6, nil)
	if err != nil || len(ls) != 6 {
		t.Fatalf("take 6 of emails: %d, %v", len(ls), err)
	}
	if err := lc.AckBatch(ctx, ls); err != nil {
		t.Fatal(err)
	}
}

// risen is a script that is true when the polyline sel has n points and
// rises above its lowest (a chart with data, not a flat line).
func risen(sel string, n int) string {
	return fmt.Sprintf(`(() => {
		const line = document.querySelector(%q);
		const ys = line ? line.getAttribute('points').split(' ').map(p => parseFloat(p.split(',')[1])) : [];
		return ys.length === %d && ys.some(y => y < Math.max(...ys));
	})()`, sel, n)
}

// readyHolds reports whether queue's ready list holds id.
func readyHolds(t *testing.T, lc *lease.Client, queue, id string) bool {
	t.Helper()
	p, err := lc.Peek(t.Context(), queue, lease.StateReady, &lease.PeekOpts{Limit: lease.MaxBatch})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range p.Messages {
		if m.ID == id {
			return true
		}
	}
	return false
}

// shoot saves a full-page screenshot of url under *screenshots: laptop
// width in the light scheme, or phone width in the dark one.
func shoot(t *testing.T, b *browsertest.Browser, url, name string, phoneDark bool) {
	t.Helper()
	w, scheme := int64(1280), "light"
	if phoneDark {
		w, scheme = 390, "dark"
	}
	media := chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}},
		})
		return err
	})
	b.Do(t, browserTimeout, chromedp.EmulateViewport(w, 800), media, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS("main")))
	b.WaitFor(t, waitTimeout, `!!document.querySelector('.chart svg')`, "charts drawn")
	png := browsertest.Get(t, b, browserTimeout, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(*screenshots, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
	b.Do(t, browserTimeout, chromedp.EmulateViewport(1280, 900), chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{})
		return err
	}))
}

// TestUIThousandQueues checks that the overview lists, filters and sorts
// 1,000 queues, and logs what that costs.
func TestUIThousandQueues(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lc := newLeaseClient(t, srv)
	const n = 1000
	for i := range n {
		q := fmt.Sprintf("q-%04d", i)
		if _, err := lc.PushBatch(t.Context(), q, make([][]byte, i%7+1), nil); err != nil {
			t.Fatal(err)
		}
	}
	in := startAckd(t, srv, map[string]string{"ACKD_SWEEP_CONCURRENCY": "16"})
	in.waitUI(t)
	redistest.WaitFor(t, scanTimeout, func() bool {
		_, body := in.get(t, "/ui/api/overview")
		return strings.Count(body, `"queue":`) == n
	}, "ackd to have swept %d queues", n)
	start := time.Now()
	_, body := in.get(t, "/ui/api/overview")
	t.Logf("GET /ui/api/overview with %d queues: %d bytes in %v", n, len(body), time.Since(start))

	b := browsertest.New(t)
	b.Do(t, browserTimeout, chromedp.Navigate(in.base+"/ui/"))
	b.WaitFor(t, waitTimeout, `document.querySelectorAll('#queues tbody tr[data-name]').length === 1000`, "1,000 rows")
	ms := browsertest.Eval[float64](t, b, `(() => { const t0 = performance.now(); document.querySelector('th[data-sort="ready"]').click(); return performance.now() - t0; })()`)
	t.Logf("sorting %d rows in the browser took %.1f ms", n, ms)
	if first := browsertest.Eval[string](t, b, `document.querySelector('#queues tbody tr').cells[1].textContent`); first != "7" {
		t.Errorf("sorted by ready, the first row has %s ready, want 7", first)
	}
	b.Do(t, browserTimeout, chromedp.SendKeys(chromedp.CSS("#filter"), "q-0999"))
	b.WaitFor(t, waitTimeout, `[...document.querySelectorAll('#queues tbody tr[data-name]')].map(r => r.dataset.name).join() === 'q-0999'`, "the filter to keep q-0999 only")
	if got := browsertest.Eval[string](t, b, `document.getElementById('qcount').textContent`); got != "1 of 1000" {
		t.Errorf("count shown %q, want 1 of 1000", got)
	}
}
