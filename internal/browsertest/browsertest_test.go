package browsertest

import (
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"testing"
)

// fakeTB records Skipf and Fatalf; any other call panics on the nil TB.
type fakeTB struct {
	testing.TB
	skipped, fatal bool
	msg            string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestMissingChromiumSkipsOrFailsInCI(t *testing.T) {
	t.Parallel()
	notFound := func(string) (string, error) { return "", exec.ErrNotFound }
	run := func(ci string) *fakeTB {
		f := &fakeTB{}
		done := make(chan struct{})
		go func() {
			defer close(done)
			requireChromium(f, func(k string) string {
				if k == "CI" {
					return ci
				}
				return ""
			}, notFound)
		}()
		<-done
		return f
	}
	if f := run(""); !f.skipped || f.fatal {
		t.Errorf("without CI: skipped %v, fatal %v; want a skip", f.skipped, f.fatal)
	}
	if f := run("true"); f.skipped || !f.fatal || !strings.Contains(f.msg, "chromium") {
		t.Errorf("with CI: skipped %v, fatal %v, %q; want a failure naming chromium", f.skipped, f.fatal, f.msg)
	}
	found := func(name string) (string, error) {
		if name == "chromium-browser" {
			return "/usr/bin/chromium-browser", nil
		}
		return "", exec.ErrNotFound
	}
	if got := requireChromium(t, func(string) string { return "true" }, found); got != "/usr/bin/chromium-browser" {
		t.Errorf("requireChromium = %q", got)
	}
}
