package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redisconn"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(map[string]string{"HOME": "/home/ackd", "LANG": "C"})
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"RedisURL", cfg.RedisURL, "redis://127.0.0.1:6379/0"},
		{"redis URL passed on", cfg.redisConn.URL, "redis://127.0.0.1:6379/0"},
		{"redis pool", cfg.redisConn.PoolSize, max(10*runtime.GOMAXPROCS(0), 4+poolSpare)},
		{"HTTPAddr", cfg.HTTPAddr, ":9466"},
		{"ScanInterval", cfg.ScanInterval, reaper.ScanIntervalDefault},
		{"ConfigureEvents", cfg.ConfigureEvents, true},
		{"Queues", len(cfg.Queues), 0},
		{"LogLevel", cfg.logLevel, slog.LevelInfo},
		{"LogFormat", cfg.LogFormat, "json"},
		{"ShutdownTimeout", cfg.ShutdownTimeout, 10 * time.Second},
		{"SweepConcurrency", cfg.SweepConcurrency, 4},
		{"SweepLimit", cfg.SweepLimit, lease.SweepLimitDefault},
		{"RedisReplicas", cfg.RedisReplicas, 0},
		{"RedisReplicaTimeout", cfg.RedisReplicaTimeout, lease.ReplicaTimeoutDefault},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestConfigValues(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(map[string]string{
		"ACKD_REDIS_URL":         "rediss://ackd:s3cret@redis.internal:6380/3?dial_timeout=2s",
		"ACKD_HTTP_ADDR":         "127.0.0.1:0",
		"ACKD_SCAN_INTERVAL":     "30s",
		"ACKD_CONFIGURE_EVENTS":  "false",
		"ACKD_QUEUES":            " emails, jobs:high ,emails,",
		"ACKD_LOG_LEVEL":         "DEBUG",
		"ACKD_LOG_FORMAT":        "text",
		"ACKD_SHUTDOWN_TIMEOUT":  "2s",
		"ACKD_SWEEP_CONCURRENCY": "16",
		"ACKD_SWEEP_LIMIT":       "500",
	})
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	if o := cfg.redisConn; o.URL != "rediss://ackd:s3cret@redis.internal:6380/3?dial_timeout=2s" || o.Var != "ACKD_REDIS_URL" || o.PoolSize != max(10*runtime.GOMAXPROCS(0), 16+poolSpare) {
		t.Errorf("redis options: URL %q var %q pool %d", o.URL, o.Var, o.PoolSize)
	}
	if got := strings.Join(cfg.Queues, "|"); got != "emails|jobs:high" {
		t.Errorf("Queues = %q, want emails|jobs:high (trimmed, deduplicated, empties dropped)", got)
	}
	if cfg.ScanInterval != 30*time.Second || cfg.ConfigureEvents || cfg.logLevel != slog.LevelDebug || cfg.LogFormat != "text" ||
		cfg.ShutdownTimeout != 2*time.Second || cfg.SweepConcurrency != 16 || cfg.SweepLimit != 500 || cfg.HTTPAddr != "127.0.0.1:0" {
		t.Errorf("config = %+v", cfg)
	}
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
		want []string // each must appear in the error
	}{
		{"scheme http", map[string]string{"ACKD_REDIS_URL": "http://127.0.0.1:6379"}, []string{"ACKD_REDIS_URL", "scheme"}},
		{"scheme missing", map[string]string{"ACKD_REDIS_URL": "127.0.0.1:6379"}, []string{"ACKD_REDIS_URL"}},
		{"unix with master_name", map[string]string{"ACKD_REDIS_URL": "unix:///run/redis.sock?master_name=m"}, []string{"ACKD_REDIS_URL", "unix"}},
		{"empty url", map[string]string{"ACKD_REDIS_URL": ""}, []string{"ACKD_REDIS_URL", "empty"}},
		{"blank http addr", map[string]string{"ACKD_HTTP_ADDR": " "}, []string{"ACKD_HTTP_ADDR", "empty"}},
		{"cluster with db", map[string]string{"ACKD_REDIS_URL": "redis://h:1/2?addr=h:2"}, []string{"ACKD_REDIS_URL", "database"}},
		{"empty master_name", map[string]string{"ACKD_REDIS_URL": "redis://h:26379?master_name="}, []string{"ACKD_REDIS_URL", "master_name"}},
		{"fragment", map[string]string{"ACKD_REDIS_URL": "redis://h:1/0#x"}, []string{"ACKD_REDIS_URL", "fragment"}},
		{"pool too small", map[string]string{"ACKD_REDIS_URL": "redis://h:1/0?pool_size=3", "ACKD_SWEEP_CONCURRENCY": "8"}, []string{"ACKD_REDIS_URL", "pool_size=3", "ACKD_SWEEP_CONCURRENCY"}},
		{"password twice", map[string]string{"ACKD_REDIS_PASSWORD": "a", "ACKD_REDIS_PASSWORD_FILE": "/etc/hostname"}, []string{"ACKD_REDIS_PASSWORD_FILE", "ACKD_REDIS_PASSWORD"}},
		{"password file missing", map[string]string{"ACKD_REDIS_PASSWORD_FILE": "/nonexistent/redis-password"}, []string{"ACKD_REDIS_PASSWORD_FILE", "no such file"}},
		{"password file empty", map[string]string{"ACKD_REDIS_PASSWORD_FILE": os.DevNull}, []string{"ACKD_REDIS_PASSWORD_FILE", "empty"}},
		{"tls without rediss", map[string]string{"ACKD_REDIS_TLS_CA_FILE": "/etc/hostname"}, []string{"ACKD_REDIS_URL", "rediss://"}},
		{"ca file missing", map[string]string{"ACKD_REDIS_URL": "rediss://h:1/0", "ACKD_REDIS_TLS_CA_FILE": "/nonexistent/ca.pem"}, []string{"ACKD_REDIS_TLS_CA_FILE", "no such file"}},
		{"ca file not pem", map[string]string{"ACKD_REDIS_URL": "rediss://h:1/0", "ACKD_REDIS_TLS_CA_FILE": os.DevNull}, []string{"ACKD_REDIS_TLS_CA_FILE", "no PEM"}},
		{"cert without key", map[string]string{"ACKD_REDIS_URL": "rediss://h:1/0", "ACKD_REDIS_TLS_CERT_FILE": "/etc/hostname"}, []string{"ACKD_REDIS_TLS_CERT_FILE", "together"}},
		{"server name without rediss", map[string]string{"ACKD_REDIS_TLS_SERVER_NAME": "redis.internal"}, []string{"ACKD_REDIS_URL", "rediss://"}},
		{"bad db", map[string]string{"ACKD_REDIS_URL": "redis://localhost:6379/x"}, []string{"ACKD_REDIS_URL", "database"}},
		{"bad url", map[string]string{"ACKD_REDIS_URL": "redis://h:99999999999/0%"}, []string{"ACKD_REDIS_URL", "not a valid URL"}},
		{"bad query", map[string]string{"ACKD_REDIS_URL": "redis://h:1/0?dial_timeout=soon"}, []string{"ACKD_REDIS_URL"}},
		{"http addr no port", map[string]string{"ACKD_HTTP_ADDR": "9466"}, []string{"ACKD_HTTP_ADDR", "host:port"}},
		{"http addr bad port", map[string]string{"ACKD_HTTP_ADDR": ":http-alt"}, []string{"ACKD_HTTP_ADDR", "port"}},
		{"http addr port range", map[string]string{"ACKD_HTTP_ADDR": ":70000"}, []string{"ACKD_HTTP_ADDR", "0 to 65535"}},
		{"scan zero", map[string]string{"ACKD_SCAN_INTERVAL": "0s"}, []string{"ACKD_SCAN_INTERVAL", "positive"}},
		{"scan negative", map[string]string{"ACKD_SCAN_INTERVAL": "-1m"}, []string{"ACKD_SCAN_INTERVAL", "positive"}},
		{"scan not a duration", map[string]string{"ACKD_SCAN_INTERVAL": "5"}, []string{"ACKD_SCAN_INTERVAL", "not a duration"}},
		{"shutdown zero", map[string]string{"ACKD_SHUTDOWN_TIMEOUT": "0"}, []string{"ACKD_SHUTDOWN_TIMEOUT", "positive"}},
		{"shutdown negative", map[string]string{"ACKD_SHUTDOWN_TIMEOUT": "-10s"}, []string{"ACKD_SHUTDOWN_TIMEOUT", "positive"}},
		{"configure events not bool", map[string]string{"ACKD_CONFIGURE_EVENTS": "maybe"}, []string{"ACKD_CONFIGURE_EVENTS", "not a boolean"}},
		{"concurrency zero", map[string]string{"ACKD_SWEEP_CONCURRENCY": "0"}, []string{"ACKD_SWEEP_CONCURRENCY", "1 to 256"}},
		{"concurrency too big", map[string]string{"ACKD_SWEEP_CONCURRENCY": "100000"}, []string{"ACKD_SWEEP_CONCURRENCY", "1 to 256"}},
		{"concurrency not int", map[string]string{"ACKD_SWEEP_CONCURRENCY": "four"}, []string{"ACKD_SWEEP_CONCURRENCY", "not an integer"}},
		{"limit zero", map[string]string{"ACKD_SWEEP_LIMIT": "0"}, []string{"ACKD_SWEEP_LIMIT", "1 to 10000"}},
		{"replicas negative", map[string]string{"ACKD_REDIS_REPLICAS": "-1"}, []string{"ACKD_REDIS_REPLICAS", "0 to 64"}},
		{"replicas too many", map[string]string{"ACKD_REDIS_REPLICAS": "65"}, []string{"ACKD_REDIS_REPLICAS", "0 to 64"}},
		{"replicas not int", map[string]string{"ACKD_REDIS_REPLICAS": "one"}, []string{"ACKD_REDIS_REPLICAS", "not an integer"}},
		{"replica timeout zero", map[string]string{"ACKD_REDIS_REPLICA_TIMEOUT": "0s"}, []string{"ACKD_REDIS_REPLICA_TIMEOUT", "at least 1ms"}},
		{"replica timeout not duration", map[string]string{"ACKD_REDIS_REPLICA_TIMEOUT": "1"}, []string{"ACKD_REDIS_REPLICA_TIMEOUT", "not a duration"}},
		{"replica timeout above read timeout", map[string]string{"ACKD_REDIS_REPLICAS": "1", "ACKD_REDIS_REPLICA_TIMEOUT": "3s"}, []string{"ACKD_REDIS_REPLICA_TIMEOUT", "read timeout 3s"}},
		{"replica timeout above URL read timeout", map[string]string{"ACKD_REDIS_URL": "redis://h:1/0?read_timeout=500ms", "ACKD_REDIS_REPLICAS": "1"}, []string{"ACKD_REDIS_REPLICA_TIMEOUT", "read timeout 500ms"}},
		{"sentinel with cluster option", map[string]string{"ACKD_REDIS_URL": "redis://:pw-secret-1@h:26379?master_name=m&read_only=true"}, []string{"ACKD_REDIS_URL", "mixes URL forms"}},
		{"sentinel scheme", map[string]string{"ACKD_REDIS_URL": "redis+sentinel://:pw-secret-1@h:26379?master_name=m"}, []string{"ACKD_REDIS_URL", "redis+sentinel"}},
		{"limit too big", map[string]string{"ACKD_SWEEP_LIMIT": "10001"}, []string{"ACKD_SWEEP_LIMIT", "1 to 10000"}},
		{"limit negative", map[string]string{"ACKD_SWEEP_LIMIT": "-1"}, []string{"ACKD_SWEEP_LIMIT"}},
		{"log level", map[string]string{"ACKD_LOG_LEVEL": "verbose"}, []string{"ACKD_LOG_LEVEL", "debug, info, warn, error"}},
		{"log format", map[string]string{"ACKD_LOG_FORMAT": "xml"}, []string{"ACKD_LOG_FORMAT", "json, text"}},
		{"queue with brace", map[string]string{"ACKD_QUEUES": "ok,bad{name}"}, []string{"ACKD_QUEUES", "bad{name}"}},
		{"queue with space", map[string]string{"ACKD_QUEUES": "two words"}, []string{"ACKD_QUEUES", "two words"}},
		{"queue too long", map[string]string{"ACKD_QUEUES": strings.Repeat("q", 129)}, []string{"ACKD_QUEUES", "129 bytes"}},
		{"unknown variable", map[string]string{"ACKD_REDIS_ULR": "redis://x"}, []string{"ACKD_REDIS_ULR", "unknown variable", "did you mean ACKD_REDIS_URL?"}},
		{"unknown far from any", map[string]string{"ACKD_FROBNICATE": "1"}, []string{"ACKD_FROBNICATE", "unknown variable"}},
		{"several at once", map[string]string{"ACKD_SCAN_INTERVAL": "-1s", "ACKD_LOG_FORMAT": "xml", "ACKD_TYPO": "1"},
			[]string{"ACKD_SCAN_INTERVAL", "ACKD_LOG_FORMAT", "ACKD_TYPO"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(tt.env)
			if err == nil {
				t.Fatalf("loadConfig(%v) = nil error, want one naming %v", tt.env, tt.want)
			}
			if !errors.Is(err, errConfig) {
				t.Errorf("error %v does not wrap errConfig", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestConfigNeverShowsPassword(t *testing.T) {
	t.Parallel()
	const secret = "pa55w0rd-not-for-logs"
	for _, u := range []string{
		"http://user:" + secret + "@host:6379/0",
		"redis://user:" + secret + "@host:6379/x",
		"redis://user:" + secret + "@host:99999999999999/0",
		"redis://user:" + secret + "@host:1/0?dial_timeout=soon",
		"redis://:" + secret + "@host:6379/0%zz",
		"rediss://user:" + secret + "@host:6379/0/1",
		"redis://" + secret + "/x@host:6379/0",             // unencoded '/' in a password-only userinfo
		"redis://:" + secret + ":/@host:6379/0",            // unencoded ':' and '/'
		"redis://host:6379/0?password=" + secret + "&db=x", // password parameter, bad db
		"redis://h:1/3?addr=h:2&password=" + secret,        // Cluster form with a database
		"redis://:" + secret + "@h:26379?master_name=",     // Sentinel form, empty master
		"redis://:" + secret + "@h:26379?master_name=m&addr=h:2&dial_timeout=x",
		"unix://:" + secret + "@/run/redis.sock?addr=h:1",
		"redis://:" + secret + "@h:1/0#frag",
		"redis://:" + secret + "@h:1/0?pool_size=1",
	} {
		_, err := loadConfig(map[string]string{"ACKD_REDIS_URL": u})
		if err == nil {
			t.Errorf("%s: no error", redisconn.Redact(u))
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows the password: %v", err)
		}
	}
	// The password from its own variable, in errors about other settings.
	_, err := loadConfig(map[string]string{"ACKD_REDIS_URL": "redis://h:1/0?pool_size=1", "ACKD_REDIS_PASSWORD": secret})
	if err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("pool_size error with ACKD_REDIS_PASSWORD: %v", err)
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, nil, &out, &out); err != nil {
		t.Fatalf("run -h: %v", err)
	}
	help := out.String()
	vars := configVars()
	if len(vars) != 21 {
		t.Errorf("%d variables, want 21", len(vars))
	}
	for _, v := range vars {
		if v.Help == "" {
			t.Errorf("%s has no help tag", v.Name)
		}
		def := v.Default
		if def == "" {
			def = `""`
		}
		if !strings.Contains(help, v.Name+" (default "+def+")") {
			t.Errorf("help lacks %s with default %s:\n%s", v.Name, def, help)
		}
	}
	for _, flag := range []string{"-healthcheck", "-version", "--help"} {
		if !strings.Contains(help, flag) {
			t.Errorf("help lacks %s", flag)
		}
	}
	var out2 bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, nil, &out2, &out2); err != nil || out2.String() != help {
		t.Errorf("--help: err %v, same output %v", err, out2.String() == help)
	}
}

// TestReadmeListsEveryVariable keeps README.md in step with the
// struct tags.
func TestReadmeListsEveryVariable(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range configVars() {
		def := "`" + v.Default + "`"
		if v.Default == "" {
			def = "(empty)"
		}
		if !strings.Contains(string(doc), "| `"+v.Name+"` | "+def+" |") {
			t.Errorf("README.md has no row | `%s` | %s |", v.Name, def)
		}
	}
}

func TestRunFlags(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, nil, &out, &errOut); err != nil {
		t.Fatalf("-version: %v", err)
	}
	if got := out.String(); got != "ackd "+version+"\n" {
		t.Errorf("-version printed %q", got)
	}
	for _, args := range [][]string{{"-nope"}, {"serve"}} {
		err := run(context.Background(), args, nil, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), "ackd -h") {
			t.Errorf("run %v: error %v, want one pointing at ackd -h", args, err)
		}
	}
	// A bad variable fails before anything else, -healthcheck included.
	err := run(context.Background(), []string{"-healthcheck"}, map[string]string{"ACKD_SWEEP_LIMIT": "0"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "ACKD_SWEEP_LIMIT") {
		t.Errorf("-healthcheck with bad env: %v", err)
	}
}

func TestHealthcheckURL(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]string{
		":9466":          "http://127.0.0.1:9466/healthz",
		"0.0.0.0:9466":   "http://127.0.0.1:9466/healthz",
		"[::]:9466":      "http://127.0.0.1:9466/healthz",
		"10.1.2.3:8080":  "http://10.1.2.3:8080/healthz",
		"localhost:9466": "http://localhost:9466/healthz",
		"[::1]:9466":     "http://[::1]:9466/healthz",
	} {
		got, err := healthcheckURL(addr)
		if err != nil || got != want {
			t.Errorf("healthcheckURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
	if _, err := healthcheckURL("127.0.0.1:0"); err == nil {
		t.Error("port 0: no error")
	}
}

// TestConfigEmptyVariable: every variable set to "" is an error naming
// it, rather than silently meaning its default.
func TestConfigEmptyVariable(t *testing.T) {
	t.Parallel()
	for _, v := range configVars() {
		_, err := loadConfig(map[string]string{v.Name: ""})
		if err == nil || !errors.Is(err, errConfig) || !strings.Contains(err.Error(), v.Name+": set but empty") {
			t.Errorf("%s=\"\": error %v, want one naming it as empty", v.Name, err)
		}
	}
}
