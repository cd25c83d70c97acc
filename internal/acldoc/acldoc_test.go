package acldoc

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	t.Parallel()
	var lines []string
	for _, r := range Roles {
		lines = append(lines,
			"ACL SETUSER ackd-"+r+" reset on >s3cret ~ackd:{*}:* &ackd:wake +evalsha",
			"ACL SETUSER ackd-"+r+"-orders reset on >s3cret ~ackd:{orders}:* +evalsha")
	}
	good := "# doc\n\n```\n" + strings.Join(lines, "\n") + "\n```\nACL SETUSER other reset on >x +get\n"
	for _, tc := range []struct {
		name, doc, err string
	}{
		{"good", good, ""},
		{"missing role", strings.Replace(good, "ackd-daemon-orders", "ackd-daemon-other", 1), "no ACL SETUSER line for ackd-daemon-orders"},
		{"no reset", strings.Replace(good, "ackd-admin reset on", "ackd-admin on", 1), "want reset first"},
		{"no password", strings.Replace(good, "ackd-producer reset on >s3cret", "ackd-producer reset on nopass", 1), "want reset first and a >password"},
		{"twice", good + lines[0] + "\n", "defined twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "SECURITY.md")
			if err := os.WriteFile(path, []byte(tc.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			users, err := Read(path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Read: %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			u := users["ackd-consumer"]
			if len(users) != 8 || u.Role != "consumer" || u.Password != "s3cret" {
				t.Fatalf("users %d, consumer %+v", len(users), u)
			}
			if g := u.Grants(); !slices.Equal(g, []string{"~ackd:{*}:*", "&ackd:wake", "+evalsha"}) {
				t.Errorf("Grants = %v", g)
			}
			if w := u.Without("&ackd:wake"); slices.Contains(w, "&ackd:wake") || len(w) != len(u.Rules)-1 {
				t.Errorf("Without = %v", w)
			}
		})
	}
	if _, err := Read(filepath.Join(t.TempDir(), "none.md")); err == nil {
		t.Error("Read of a missing file: no error")
	}
}

// TestSecurityDoc: the project's own document parses.
func TestSecurityDoc(t *testing.T) {
	t.Parallel()
	if _, err := Read("../../docs/SECURITY.md"); err != nil {
		t.Fatal(err)
	}
}
