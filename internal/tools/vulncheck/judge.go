package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"go/version"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
)

// message is one object of govulncheck's -format json stream; only the kinds judge reads.
type message struct {
	Config *struct {
		GoVersion      string `json:"go_version"`
		ScannerVersion string `json:"scanner_version"`
		ScanLevel      string `json:"scan_level"`
	} `json:"config"`
	OSV     *entry   `json:"osv"`
	Finding *finding `json:"finding"`
}

type finding struct {
	OSV          string  `json:"osv"`
	FixedVersion string  `json:"fixed_version"`
	Trace        []frame `json:"trace"`
}

type frame struct {
	Module   string `json:"module"`
	Version  string `json:"version"`
	Package  string `json:"package"`
	Function string `json:"function"`
}

// Levels of a finding, from govulncheck's trace: the vulnerable module is required, one of
// its vulnerable packages is imported, or a vulnerable function is reachable from the code.
const (
	levelModule = iota
	levelPackage
	levelCalled
)

// stdModules are the database's names for Go itself: the standard library and the go
// command and its tools.
var stdModules = []string{"stdlib", "toolchain"}

// vuln is one vulnerability found by govulncheck, at the deepest level any of its findings
// reached.
type vuln struct {
	id, module, version, pkg, fixed, summary string
	level                                    int
}

func judge(in io.Reader, out io.Writer, db, dockerfile string) error {
	goVersion, vulns, err := readFindings(in)
	if err != nil {
		return err
	}
	var called, notCalled, std []vuln
	for _, v := range vulns {
		switch {
		case slices.Contains(stdModules, v.module):
			if v.level == levelCalled {
				std = append(std, v)
			}
		case v.level == levelCalled:
			called = append(called, v)
		default:
			notCalled = append(notCalled, v)
		}
	}
	w := bufio.NewWriter(out)
	fmt.Fprintf(w, "govulncheck, scanned with %s:\n", goVersion)
	printVulns(w, "third-party vulnerabilities the code calls (these fail the build)", called)
	printVulns(w, "third-party vulnerabilities in required modules or imported packages that the code does not call (reported only)", notCalled)
	printVulns(w, fmt.Sprintf("standard-library vulnerabilities of %s that the code calls (reported only: the Go in the Dockerfile is checked below)", goVersion), std)

	dockerGo, err := dockerfileGo(dockerfile)
	if err != nil {
		w.Flush()
		return err
	}
	entries, err := readEntries(db)
	if err != nil {
		w.Flush()
		return err
	}
	fixable, open := stdVulns(entries, dockerGo)
	printVulns(w, fmt.Sprintf("known vulnerabilities of %s, which the Dockerfile builds with, fixed by a later %s patch (these fail the build: move the Dockerfile to that patch)", dockerGo, version.Lang(dockerGo)), fixable)
	printVulns(w, fmt.Sprintf("known vulnerabilities of %s with no %s patch released yet (reported only)", dockerGo, version.Lang(dockerGo)), open)
	if err := w.Flush(); err != nil {
		return err
	}
	if len(called) > 0 || len(fixable) > 0 {
		return errFindings
	}
	return nil
}

func printVulns(w io.Writer, title string, vs []vuln) {
	if len(vs) == 0 {
		fmt.Fprintf(w, "- %s: none\n", title)
		return
	}
	fmt.Fprintf(w, "- %s: %d\n", title, len(vs))
	for _, v := range vs {
		where := v.module
		if v.pkg != "" {
			where = v.pkg
		}
		if v.version != "" {
			where += "@" + v.version
		}
		fixed := "no fix released"
		if v.fixed != "" {
			fixed = "fixed in " + v.fixed
		}
		fmt.Fprintf(w, "    %s %s, %s: %s\n", v.id, where, fixed, v.summary)
	}
}

// readFindings reads govulncheck's JSON stream and returns the Go version it scanned with
// and one vuln per OSV entry found, sorted by ID.
func readFindings(in io.Reader) (string, []vuln, error) {
	dec := json.NewDecoder(in)
	var goVersion string
	summaries := map[string]string{}
	byID := map[string]*vuln{}
	for {
		var m message
		err := dec.Decode(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", nil, fmt.Errorf("vulncheck judge: reading govulncheck's JSON output: %w", err)
		}
		switch {
		case m.Config != nil:
			goVersion = m.Config.GoVersion
			if m.Config.ScanLevel != "" && m.Config.ScanLevel != "symbol" {
				return "", nil, fmt.Errorf("vulncheck judge: govulncheck scanned at level %q; run it at the default symbol level so reachability is known", m.Config.ScanLevel)
			}
		case m.OSV != nil:
			summaries[m.OSV.ID] = m.OSV.Summary
		case m.Finding != nil:
			f := m.Finding
			if len(f.Trace) == 0 {
				return "", nil, fmt.Errorf("vulncheck judge: finding %s has no trace", f.OSV)
			}
			top := f.Trace[0]
			level := levelModule
			switch {
			case top.Function != "":
				level = levelCalled
			case top.Package != "":
				level = levelPackage
			}
			v := byID[f.OSV]
			if v == nil {
				v = &vuln{id: f.OSV, module: top.Module, version: top.Version, fixed: f.FixedVersion, level: -1}
				byID[f.OSV] = v
			}
			if level > v.level {
				v.level = level
				v.pkg = top.Package
			}
		}
	}
	if goVersion == "" {
		return "", nil, errors.New("vulncheck judge: no config message in the input; is it `govulncheck -format json` output?")
	}
	out := make([]vuln, 0, len(byID))
	for _, v := range byID {
		v.summary = summaries[v.id]
		out = append(out, *v)
	}
	slices.SortFunc(out, func(a, b vuln) int { return strings.Compare(a.id, b.id) })
	return goVersion, out, nil
}

var fromGolang = regexp.MustCompile(`(?im)^FROM\s+(?:--\S+\s+)*golang:(\S+)`)
var goTag = regexp.MustCompile(`^(\d+\.\d+(?:\.\d+|rc\d+)?)(?:[-@].*)?$`)

// dockerfileGo returns the Go release ("go1.26.11") of the first golang image the
// Dockerfile builds FROM. The tag must name a patch release: with a floating tag such as
// golang:1.26 nobody can say which Go the image was built with.
func dockerfileGo(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("vulncheck judge: %w", err)
	}
	m := fromGolang.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("vulncheck judge: %s has no `FROM golang:<version>` line", path)
	}
	tag := goTag.FindStringSubmatch(string(m[1]))
	if tag == nil || strings.Count(tag[1], ".") != 2 {
		return "", fmt.Errorf("vulncheck judge: %s builds FROM golang:%s; pin a patch release (golang:1.N.P) so the Go it builds with is known", path, m[1])
	}
	return "go" + tag[1], nil
}

// stdVulns returns the standard-library and toolchain entries that affect Go release v
// (e.g. "go1.26.11"), split into those a later patch of the same Go line fixes and those
// without such a patch. Each vuln's fixed field names the lowest fixing release of v's line.
func stdVulns(entries []entry, v string) (fixable, open []vuln) {
	for _, e := range entries {
		var hit bool
		var module string
		var fixes []string
		for _, a := range e.Affected {
			if !slices.Contains(stdModules, a.Package.Name) {
				continue
			}
			for _, r := range a.Ranges {
				if r.Type != "SEMVER" {
					continue
				}
				if in, fx := inRange(r.Events, v); in {
					hit = true
					module = a.Package.Name
					fixes = append(fixes, fx...)
				}
			}
		}
		if !hit {
			continue
		}
		vu := vuln{id: e.ID, module: module, version: v, summary: e.Summary, level: levelCalled}
		for _, f := range fixes {
			if version.Lang(f) == version.Lang(v) && (vu.fixed == "" || version.Compare(f, vu.fixed) < 0) {
				vu.fixed = f
			}
		}
		if vu.fixed != "" {
			fixable = append(fixable, vu)
		} else {
			open = append(open, vu)
		}
	}
	return fixable, open
}

// inRange reports whether Go release v lies in an OSV SEMVER range, and the fixed versions
// of the range above v.
func inRange(events []event, v string) (bool, []string) {
	type point struct {
		v     string // Go version; "" is the "0" that opens a range at the beginning
		fixed bool
	}
	var ps []point
	for _, e := range events {
		switch {
		case e.Introduced == "0":
			ps = append(ps, point{})
		case e.Introduced != "":
			ps = append(ps, point{v: semverToGo(e.Introduced)})
		case e.Fixed != "":
			ps = append(ps, point{v: semverToGo(e.Fixed), fixed: true})
		}
	}
	slices.SortStableFunc(ps, func(a, b point) int { return version.Compare(a.v, b.v) })
	in := false
	var fixes []string
	for _, p := range ps {
		if p.v != "" && version.Compare(p.v, v) > 0 {
			if p.fixed {
				fixes = append(fixes, p.v)
			}
			continue
		}
		in = !p.fixed
	}
	if !in {
		return false, nil
	}
	return true, fixes
}

// semverToGo turns the database's semver for a Go release into Go's own spelling:
// 1.26.10 -> go1.26.10, 1.27.0-rc.3 -> go1.27rc3, 1.21.0-0 (before any 1.21 release) -> go1.21.
func semverToGo(s string) string {
	base, pre, _ := strings.Cut(s, "-")
	if pre == "" {
		return "go" + base
	}
	lang := "go" + strings.TrimSuffix(base, ".0")
	for _, p := range []string{"rc.", "beta.", "rc", "beta"} {
		if n, ok := strings.CutPrefix(pre, p); ok {
			return lang + strings.TrimSuffix(p, ".") + n
		}
	}
	return lang
}
