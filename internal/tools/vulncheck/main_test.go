package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// osvStd affects the standard library from go1.26.0 up to go1.26.9 and go1.27.0 up to go1.27.2.
const osvStd = `{"id":"GO-2026-0001","modified":"2026-03-01T00:00:00Z","summary":"std bug",
 "affected":[{"package":{"name":"stdlib","ecosystem":"Go"},"ranges":[{"type":"SEMVER","events":[
  {"introduced":"0"},{"fixed":"1.25.9"},{"introduced":"1.26.0-0"},{"fixed":"1.26.9"},{"introduced":"1.27.0-rc.1"},{"fixed":"1.27.2"}]}]}]}`

// osvMod affects two packages of one third-party module, so the module appears twice.
const osvMod = `{"id":"GO-2026-0002","modified":"2026-05-01T00:00:00Z","summary":"module bug",
 "affected":[{"package":{"name":"example.com/m","ecosystem":"Go"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"},{"fixed":"1.2.0"}]}]},
  {"package":{"name":"example.com/m","ecosystem":"Go"},"ranges":[{"type":"SEMVER","events":[{"introduced":"0"}]}]}]}`

// osvOpen affects go1.26.9 and later with no fix yet.
const osvOpen = `{"id":"GO-2026-0003","modified":"2026-04-01T00:00:00Z","summary":"open bug",
 "affected":[{"package":{"name":"toolchain","ecosystem":"Go"},"ranges":[{"type":"SEMVER","events":[{"introduced":"1.26.9"}]}]}]}`

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func testDB(t *testing.T, files map[string]string) string {
	t.Helper()
	osvDir := t.TempDir()
	writeFiles(t, osvDir, files)
	out := filepath.Join(t.TempDir(), "db")
	if _, err := buildDB(osvDir, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestBuildDB(t *testing.T) {
	t.Parallel()
	osvDir := t.TempDir()
	writeFiles(t, osvDir, map[string]string{
		"GO-2026-0001.json": osvStd,
		"GO-2026-0002.json": osvMod,
		"README.md":         "not an entry",
	})
	out := filepath.Join(t.TempDir(), "db")
	n, err := buildDB(osvDir, out)
	if err != nil || n != 2 {
		t.Fatalf("buildDB = %d, %v; want 2 entries", n, err)
	}

	var meta struct{ Modified time.Time }
	readJSON(t, filepath.Join(out, "index", "db.json"), &meta)
	if want := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC); !meta.Modified.Equal(want) {
		t.Errorf("db.json modified = %v, want the newest entry's %v", meta.Modified, want)
	}
	var modules []moduleMeta
	readJSON(t, filepath.Join(out, "index", "modules.json"), &modules)
	var got []string
	for _, m := range modules {
		for _, v := range m.Vulns {
			got = append(got, m.Path+" "+v.ID)
		}
	}
	if want := []string{"example.com/m GO-2026-0002", "stdlib GO-2026-0001"}; !slices.Equal(got, want) {
		t.Errorf("modules.json = %q, want %q", got, want)
	}
	b, err := os.ReadFile(filepath.Join(out, "ID", "GO-2026-0002.json"))
	if err != nil || string(b) != osvMod {
		t.Errorf("ID/GO-2026-0002.json = %q, %v; want the OSV file unchanged", b, err)
	}

	if _, err := buildDB(osvDir, out); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("buildDB into a used directory: err = %v, want a refusal", err)
	}
	if _, err := buildDB(t.TempDir(), filepath.Join(t.TempDir(), "db")); err == nil {
		t.Error("buildDB of an empty directory succeeded")
	}
	misnamed := t.TempDir()
	writeFiles(t, misnamed, map[string]string{"GO-2026-9999.json": osvStd})
	if _, err := buildDB(misnamed, filepath.Join(t.TempDir(), "db")); err == nil || !strings.Contains(err.Error(), "GO-2026-0001") {
		t.Errorf("buildDB of a misnamed entry: err = %v, want one naming the entry", err)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestSemverToGo(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"1.26.10":      "go1.26.10",
		"1.26.0":       "go1.26.0",
		"1.27.0-rc.3":  "go1.27rc3",
		"1.21.0-beta1": "go1.21beta1",
		"1.21.0-0":     "go1.21",
	} {
		if got := semverToGo(in); got != want {
			t.Errorf("semverToGo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestStdVulns(t *testing.T) {
	t.Parallel()
	var entries []entry
	for _, s := range []string{osvStd, osvMod, osvOpen} {
		var e entry
		if err := json.Unmarshal([]byte(s), &e); err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	for _, tc := range []struct {
		goVersion     string
		fixable, open []string // "id fixed"
	}{
		{goVersion: "go1.25.8", fixable: []string{"GO-2026-0001 go1.25.9"}},
		{goVersion: "go1.25.9"},
		{goVersion: "go1.26.0", fixable: []string{"GO-2026-0001 go1.26.9"}},
		{goVersion: "go1.26.8", fixable: []string{"GO-2026-0001 go1.26.9"}},
		{goVersion: "go1.26.9", open: []string{"GO-2026-0003 "}},
		{goVersion: "go1.27rc1", fixable: []string{"GO-2026-0001 go1.27.2"}, open: []string{"GO-2026-0003 "}},
		{goVersion: "go1.27.2", open: []string{"GO-2026-0003 "}},
	} {
		fixable, open := stdVulns(entries, tc.goVersion)
		ids := func(vs []vuln) []string {
			var out []string
			for _, v := range vs {
				out = append(out, v.id+" "+v.fixed)
			}
			return out
		}
		if got := ids(fixable); !slices.Equal(got, tc.fixable) {
			t.Errorf("%s: fixable = %q, want %q", tc.goVersion, got, tc.fixable)
		}
		if got := ids(open); !slices.Equal(got, tc.open) {
			t.Errorf("%s: open = %q, want %q", tc.goVersion, got, tc.open)
		}
	}
}

func TestDockerfileGo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for body, want := range map[string]string{
		"FROM golang:1.26.11 AS build\n":                                    "go1.26.11",
		"# x\nFROM --platform=$BUILDPLATFORM golang:1.26.9-bookworm AS b\n": "go1.26.9",
		"from golang:1.27.1@sha256:abc\n":                                   "go1.27.1",
		"FROM golang:1.26 AS build\n":                                       "",
		"FROM golang:latest\n":                                              "",
		"FROM alpine\n":                                                     "",
	} {
		path := filepath.Join(dir, "Dockerfile")
		writeFiles(t, dir, map[string]string{"Dockerfile": body})
		got, err := dockerfileGo(path)
		if got != want || (want == "") != (err != nil) {
			t.Errorf("dockerfileGo(%q) = %q, %v; want %q", body, got, err, want)
		}
	}
}

// TestRepoDockerfile checks that the project's own Dockerfile names the Go it builds with.
func TestRepoDockerfile(t *testing.T) {
	t.Parallel()
	if _, err := dockerfileGo(filepath.Join("..", "..", "..", "Dockerfile")); err != nil {
		t.Fatal(err)
	}
}

// stream is govulncheck -format json output with a stdlib finding the code calls, a
// third-party one it only imports, and, when calledMod, one it calls.
func stream(calledMod bool) string {
	s := `{"config":{"protocol_version":"v1.0.0","scanner_name":"govulncheck","go_version":"go1.26.8","scan_level":"symbol","scan_mode":"source"}}
{"progress":{"message":"Scanning your code"}}
{"osv":` + osvStd + `}
{"osv":` + osvMod + `}
{"finding":{"osv":"GO-2026-0001","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8"}]}}
{"finding":{"osv":"GO-2026-0001","fixed_version":"v1.26.9","trace":[{"module":"stdlib","version":"v1.26.8","package":"net/http","function":"Get"},{"module":"github.com/ackd/ackd","package":"main","function":"main"}]}}
{"finding":{"osv":"GO-2026-0002","fixed_version":"v1.2.0","trace":[{"module":"example.com/m","version":"v1.1.0","package":"example.com/m/p"}]}}
`
	if calledMod {
		s += `{"finding":{"osv":"GO-2026-0002","fixed_version":"v1.2.0","trace":[{"module":"example.com/m","version":"v1.1.0","package":"example.com/m/p","function":"F"}]}}` + "\n"
	}
	return s
}

func TestJudge(t *testing.T) {
	t.Parallel()
	db := testDB(t, map[string]string{"GO-2026-0001.json": osvStd, "GO-2026-0003.json": osvOpen})
	dir := t.TempDir()
	dockerfile := func(v string) string {
		path := filepath.Join(dir, "Dockerfile."+v)
		writeFiles(t, dir, map[string]string{"Dockerfile." + v: "FROM golang:" + v + " AS build\n"})
		return path
	}
	for _, tc := range []struct {
		name, input, dockerGo string
		wantErr               error
		wantOut               []string
	}{
		{name: "clean", input: stream(false), dockerGo: "1.26.9",
			wantOut: []string{
				"the code calls (these fail the build): none",
				"does not call (reported only): 1\n    GO-2026-0002 example.com/m/p@v1.1.0, fixed in v1.2.0: module bug",
				"of go1.26.8 that the code calls (reported only: the Go in the Dockerfile is checked below): 1\n    GO-2026-0001 net/http@v1.26.8, fixed in v1.26.9: std bug",
				"no go1.26 patch released yet (reported only): 1\n    GO-2026-0003 toolchain@go1.26.9, no fix released: open bug",
			}},
		{name: "third-party called", input: stream(true), dockerGo: "1.26.9", wantErr: errFindings,
			wantOut: []string{"the code calls (these fail the build): 1\n    GO-2026-0002 example.com/m/p@v1.1.0"}},
		{name: "Dockerfile behind a patch", input: stream(false), dockerGo: "1.26.8", wantErr: errFindings,
			wantOut: []string{"move the Dockerfile to that patch): 1\n    GO-2026-0001 stdlib@go1.26.8, fixed in go1.26.9"}},
		{name: "not govulncheck output", input: `{"progress":{}}`, dockerGo: "1.26.9", wantErr: errors.New("no config")},
		{name: "module-level scan", input: strings.Replace(stream(false), `"symbol"`, `"module"`, 1), dockerGo: "1.26.9", wantErr: errors.New("symbol level")},
	} {
		var out bytes.Buffer
		err := judge(strings.NewReader(tc.input), &out, db, dockerfile(tc.dockerGo))
		switch {
		case tc.wantErr == nil && err != nil,
			tc.wantErr == errFindings && !errors.Is(err, errFindings),
			tc.wantErr != nil && tc.wantErr != errFindings && (err == nil || !strings.Contains(err.Error(), tc.wantErr.Error())):
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.wantErr)
		}
		for _, w := range tc.wantOut {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%s: output lacks %q:\n%s", tc.name, w, out.String())
			}
		}
	}
}

func TestRunUsage(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	for _, args := range [][]string{nil, {"nope"}, {"db"}, {"judge", "-db", "x"}} {
		if code := run(args, strings.NewReader(""), &stdout, &stderr); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
