package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// entry is the part of an OSV record that the index and the Dockerfile check read.
type entry struct {
	ID       string     `json:"id"`
	Modified time.Time  `json:"modified"`
	Summary  string     `json:"summary"`
	Affected []affected `json:"affected"`
}

type affected struct {
	Package struct {
		Name string `json:"name"`
	} `json:"package"`
	Ranges []struct {
		Type   string  `json:"type"`
		Events []event `json:"events"`
	} `json:"ranges"`
}

type event struct {
	Introduced string `json:"introduced,omitempty"`
	Fixed      string `json:"fixed,omitempty"`
}

// moduleMeta and moduleVuln are govulncheck's index/modules.json records. The optional
// "fixed" field is left out: it only lets govulncheck skip fetching entries that cannot
// affect the required version, and without it govulncheck reads every entry of a module
// and evaluates the ranges itself, which gives the same result.
type moduleMeta struct {
	Path  string       `json:"path"`
	Vulns []moduleVuln `json:"vulns"`
}

type moduleVuln struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
}

// buildDB writes the database for the OSV files in osvDir to out and returns the number of
// entries. It refuses a non-empty out, so a stale database is never mixed in.
func buildDB(osvDir, out string) (int, error) {
	names, err := filepath.Glob(filepath.Join(osvDir, "*.json"))
	if err != nil {
		return 0, fmt.Errorf("vulncheck db: list %s: %w", osvDir, err)
	}
	if len(names) == 0 {
		return 0, fmt.Errorf("vulncheck db: no OSV files (*.json) in %s", osvDir)
	}
	if ents, err := os.ReadDir(out); err == nil && len(ents) > 0 {
		return 0, fmt.Errorf("vulncheck db: %s is not empty", out)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("vulncheck db: %w", err)
	}
	for _, d := range []string{"index", "ID"} {
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			return 0, fmt.Errorf("vulncheck db: %w", err)
		}
	}

	var modified time.Time
	modules := map[string]*moduleMeta{}
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			return 0, fmt.Errorf("vulncheck db: %w", err)
		}
		var e entry
		if err := json.Unmarshal(b, &e); err != nil {
			return 0, fmt.Errorf("vulncheck db: %s: %w", name, err)
		}
		if e.ID == "" || filepath.Base(name) != e.ID+".json" {
			return 0, fmt.Errorf("vulncheck db: %s holds entry %q; the file must be named <id>.json", name, e.ID)
		}
		if e.Modified.After(modified) {
			modified = e.Modified
		}
		for _, a := range e.Affected {
			m := modules[a.Package.Name]
			if m == nil {
				m = &moduleMeta{Path: a.Package.Name}
				modules[a.Package.Name] = m
			}
			// An entry may list a module more than once (one block per package).
			if !slices.ContainsFunc(m.Vulns, func(v moduleVuln) bool { return v.ID == e.ID }) {
				m.Vulns = append(m.Vulns, moduleVuln{ID: e.ID, Modified: e.Modified})
			}
		}
		if err := os.WriteFile(filepath.Join(out, "ID", e.ID+".json"), b, 0o644); err != nil {
			return 0, fmt.Errorf("vulncheck db: %w", err)
		}
	}

	index := make([]*moduleMeta, 0, len(modules))
	for _, m := range modules {
		slices.SortFunc(m.Vulns, func(a, b moduleVuln) int { return strings.Compare(a.ID, b.ID) })
		index = append(index, m)
	}
	slices.SortFunc(index, func(a, b *moduleMeta) int { return strings.Compare(a.Path, b.Path) })
	if err := writeJSON(filepath.Join(out, "index", "modules.json"), index); err != nil {
		return 0, err
	}
	if err := writeJSON(filepath.Join(out, "index", "db.json"), map[string]time.Time{"modified": modified}); err != nil {
		return 0, err
	}
	return len(names), nil
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("vulncheck db: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("vulncheck db: %w", err)
	}
	return nil
}

// readEntries reads every entry of a database written by buildDB.
func readEntries(db string) ([]entry, error) {
	names, err := filepath.Glob(filepath.Join(db, "ID", "*.json"))
	if err != nil {
		return nil, fmt.Errorf("vulncheck: %w", err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("vulncheck: no entries in %s", filepath.Join(db, "ID"))
	}
	out := make([]entry, 0, len(names))
	for _, name := range names {
		b, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("vulncheck: %w", err)
		}
		var e entry
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("vulncheck: %s: %w", name, err)
		}
		out = append(out, e)
	}
	return out, nil
}
