// Package browsertest starts a headless Chromium for tests, driven with
// chromedp, and records every URL the pages it loads ask for.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// Names under which Chromium may be installed, Debian's first.
var names = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// Browser is a headless Chromium with one tab.
type Browser struct {
	ctx context.Context

	mu   sync.Mutex
	urls []string
}

// New starts Chromium for t and returns its tab; it is closed when t ends.
// Without Chromium the test is skipped, or fails when CI is set.
func New(t testing.TB) *Browser {
	t.Helper()
	bin := requireChromium(t, os.Getenv, exec.LookPath)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Headless,
		chromedp.NoSandbox, // tests run as root in containers
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	b := &Browser{}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithListener(func(ev any) {
		if e, ok := ev.(*network.EventRequestWillBeSent); ok {
			b.mu.Lock()
			b.urls = append(b.urls, e.Request.URL)
			b.mu.Unlock()
		}
	}))
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
	})
	b.ctx = ctx
	// The first Run starts the browser and lives as long as ctx: no
	// timeout on it (chromedp.Run's rules); a watchdog cancels instead.
	watchdog := time.AfterFunc(StartTimeout, cancelTab)
	err := chromedp.Do(ctx, chromedp.Func(func(context.Context, *chromedp.Target) error { return nil }))
	if !watchdog.Stop() {
		err = fmt.Errorf("no answer within %v", StartTimeout)
	}
	if err != nil {
		t.Fatalf("browsertest: start %s: %v", bin, err)
	}
	return b
}

// StartTimeout bounds Chromium's start.
const StartTimeout = time.Minute

// Do runs steps in the tab, failing t if one fails or they do not finish
// within timeout.
func (b *Browser) Do(t testing.TB, timeout time.Duration, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("browsertest: %v", err)
	}
}

// Get runs one action that returns a value, failing t if it fails.
func Get[T any](t testing.TB, b *Browser, timeout time.Duration, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browsertest: %v", err)
	}
	return v
}

// Eval evaluates a JavaScript expression in the page and returns its value.
func Eval[T any](t testing.TB, b *Browser, expr string) T {
	t.Helper()
	return Get(t, b, 10*time.Second, chromedp.Evaluate[T](expr))
}

// WaitFor polls a JavaScript expression until it is true, failing t with
// what after timeout.
func (b *Browser) WaitFor(t testing.TB, timeout time.Duration, expr, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
			page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + "\n" + (document.querySelector("main") || document.documentElement).innerText.slice(0, 3000)`))
			cancel()
			t.Fatalf("browsertest: waited %v for %s (last error %v); the page:\n%s", timeout, what, err, page)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// URLs returns every URL requested so far, in order.
func (b *Browser) URLs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.urls...)
}

// requireChromium returns the path of Chromium, or skips the test if it
// is not on PATH; when CI is set it fails the test instead.
func requireChromium(t testing.TB, getenv func(string) string, lookPath func(string) (string, error)) string {
	t.Helper()
	var err error
	for _, n := range names {
		var p string
		if p, err = lookPath(n); err == nil {
			return p
		}
	}
	if getenv("CI") != "" {
		t.Fatalf("browsertest: chromium not found on PATH (%v); it is required when CI is set (apt-get install chromium)", err)
	}
	t.Skipf("browsertest: chromium not found on PATH (%v); skipping. Install chromium to run this test", err)
	return ""
}
