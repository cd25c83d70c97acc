package notify

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redistest"
)

func TestEnsureEvents(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		flags     string // server's notify-keyspace-events
		configure bool
		want      EventsState // Flags checked separately
		keep      string      // flags that must survive
	}{
		{"off, read only", "", false, EventsState{}, ""},
		{"off, configure", "", true, EventsState{Enabled: true, Evicted: true, Changed: true}, ""},
		{"Kg kept", "Kg", true, EventsState{Enabled: true, Evicted: true, Changed: true}, "Kg"},
		{"Ex, read only", "Ex", false, EventsState{Enabled: true}, ""},
		{"Ex, adds e", "Ex", true, EventsState{Enabled: true, Evicted: true, Changed: true}, ""},
		{"AKE untouched", "AKE", true, EventsState{Enabled: true, Evicted: true}, "AKE"},
		{"Exe untouched", "Exe", true, EventsState{Enabled: true, Evicted: true}, ""},
		{"x without E", "Kx", false, EventsState{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t, "--notify-keyspace-events", tt.flags)
			rdb := srv.Client(t)
			got := EnsureEvents(t.Context(), rdb, tt.configure)
			if got.Err != nil {
				t.Fatalf("EnsureEvents: %v", got.Err)
			}
			if got.Enabled != tt.want.Enabled || got.Evicted != tt.want.Evicted || got.Changed != tt.want.Changed {
				t.Fatalf("EnsureEvents = %+v, want %+v", got, tt.want)
			}
			now, err := rdb.ConfigGet(t.Context(), eventsParam).Result()
			if err != nil {
				t.Fatal(err)
			}
			if now[eventsParam] != got.Flags {
				t.Fatalf("Flags = %q, server has %q", got.Flags, now[eventsParam])
			}
			for _, f := range tt.keep {
				if !strings.ContainsRune(got.Flags, f) {
					t.Fatalf("flag %c lost: %q", f, got.Flags)
				}
			}
			if !tt.configure && got.Flags != normalised(t, tt.flags) {
				t.Fatalf("read-only EnsureEvents changed the flags to %q", got.Flags)
			}
		})
	}
}

// normalised is how the server reports flags.
func normalised(t *testing.T, flags string) string {
	t.Helper()
	srv := redistest.Start(t, "--notify-keyspace-events", flags)
	m, err := srv.Client(t).ConfigGet(t.Context(), eventsParam).Result()
	if err != nil {
		t.Fatal(err)
	}
	return m[eventsParam]
}

func TestEnsureEventsRefused(t *testing.T) {
	t.Parallel()
	t.Run("CONFIG renamed", func(t *testing.T) {
		t.Parallel()
		srv := redistest.Start(t, "--notify-keyspace-events", "", "--rename-command", "CONFIG", "")
		for _, configure := range []bool{false, true} {
			got := EnsureEvents(t.Context(), srv.Client(t), configure)
			if got.Err == nil || !errors.Is(got.Err, ErrConfig) || got.Enabled || got.Changed {
				t.Fatalf("EnsureEvents(configure=%v) = %+v, want ErrConfig and not enabled", configure, got)
			}
		}
	})
	t.Run("CONFIG SET denied", func(t *testing.T) {
		t.Parallel()
		srv := redistest.Start(t, "--notify-keyspace-events", "Ex")
		admin := srv.Client(t)
		ctx := t.Context()
		if err := admin.Do(ctx, "ACL", "SETUSER", "ackd", "on", ">secret", "~*", "&*", "+@all", "-config|set").Err(); err != nil {
			t.Fatal(err)
		}
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "ackd", Password: "secret"})
		t.Cleanup(func() { _ = rdb.Close() })
		got := EnsureEvents(ctx, rdb, true)
		if !errors.Is(got.Err, ErrConfig) || !strings.Contains(got.Err.Error(), "NOPERM") {
			t.Fatalf("Err = %v, want ErrConfig with NOPERM", got.Err)
		}
		// What could be read is still reported.
		if !got.Enabled || got.Evicted || got.Changed {
			t.Fatalf("EnsureEvents = %+v, want enabled (read), not changed", got)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		t.Parallel()
		srv := redistest.Start(t)
		rdb := srv.Client(t)
		srv.Kill(t)
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		if got := EnsureEvents(ctx, rdb, true); !errors.Is(got.Err, ErrConfig) || got.Enabled {
			t.Fatalf("EnsureEvents = %+v, want ErrConfig", got)
		}
	})
}

func TestWithEventFlags(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"":     "Exe",
		"Kg":   "KgExe",
		"xE":   "xEe",
		"AKE":  "AKE",
		"KA":   "KAE",
		"Exe":  "Exe",
		"Kmnt": "KmntExe",
	} {
		if got := withEventFlags(in); got != want {
			t.Errorf("withEventFlags(%q) = %q, want %q", in, got, want)
		}
	}
}
