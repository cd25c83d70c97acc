package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/ackd/ackd/internal/redisconn"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

// envPrefix starts the name of every variable ackd reads.
const envPrefix = "ACKD_"

// Bounds of the numeric settings: the reaper's, and a replica count no
// real deployment reaches.
const (
	maxSweepConcurrency = reaper.MaxConcurrency
	maxSweepLimit       = reaper.MaxSweepLimit
	maxRedisReplicas    = 64
)

// errConfig is wrapped by every configuration error.
var errConfig = errors.New("invalid configuration")

// config is everything ackd reads from its environment. Each field's env tag
// names its variable (after ACKD_), envDefault its default, and help says
// what it means; `ackd -h` and the tests are generated from these tags.
type config struct {
	RedisURL         string        `env:"REDIS_URL" envDefault:"redis://127.0.0.1:6379/0" help:"Redis to serve, in one of go-redis' URL forms. One server: redis://[user:password@]host:port[/db], rediss://... for TLS, or unix://[user:password@]/path/redis.sock[?db=N]; a URL naming a Cluster node is detected and the whole Cluster served. Cluster: redis://[user:password@]host:port?addr=host2:port2&addr=host3:port3 (database 0 only). Sentinel: redis://[sentinel-user:sentinel-password@]sentinel1:26379?master_name=mymaster&addr=sentinel2:26379&addr=sentinel3:26379[&username=U][&password=P], where the userinfo is the Sentinels' own credentials and username/password the data nodes'. go-redis query parameters (dial_timeout, pool_size, skip_verify, ...) are accepted; skip_verify=true is logged as a warning. Checked at start; the password is never logged."`
	HTTPAddr         string        `env:"HTTP_ADDR" envDefault:":9466" help:"Address of the HTTP server for /healthz, /readyz and /metrics (host:port; port 0 picks a free one)."`
	ScanInterval     time.Duration `env:"SCAN_INTERVAL" envDefault:"5m" help:"How often every watched queue is swept in full, the safety net for lost events and timers. Also re-checks the keyspace-events setting. A Go duration (30s, 5m, 1h)."`
	ConfigureEvents  bool          `env:"CONFIGURE_EVENTS" envDefault:"true" help:"Turn on the keyspace events ackd listens to (CONFIG SET notify-keyspace-events, adding E, x and e to what is there) on every node that may become master (Cluster and Sentinel replicas included, so that a promoted replica sends events at once), at start, at every scan and after each failover. false: send no CONFIG at all (for a least-privilege user); events are reported unknown until an expired event arrives, then on. ackd works without events, on its timers and scans, and says so in its log, /readyz and metrics."`
	Queues           []string      `env:"QUEUES" help:"Comma-separated queues to watch. Unset: every queue in the registry (ackd:queues), found again at every scan (read with SSCAN 1,000 names at a time; names with none of their keys in Redis are skipped, so a million bogus names cost a scan about 10 s, not a sweep each). Events and wake messages of other queues are ignored. Set it where others can write to the registry."`
	LogLevel         string        `env:"LOG_LEVEL" envDefault:"info" help:"Lowest level logged: debug, info, warn or error."`
	LogFormat        string        `env:"LOG_FORMAT" envDefault:"json" help:"Log format on stderr: json or text (logfmt), one event per line."`
	ShutdownTimeout  time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"10s" help:"On SIGTERM or SIGINT, how long running sweeps and HTTP requests may take to finish before ackd exits anyway. A second signal exits at once."`
	SweepConcurrency int           `env:"SWEEP_CONCURRENCY" envDefault:"4" help:"How many queues are swept at the same time (1 to 256)."`
	SweepLimit       int           `env:"SWEEP_LIMIT" envDefault:"1000" help:"Most leases requeued (and delayed messages promoted) by one Sweep script call; a sweep repeats until its queue is done (1 to 10000). Bounds how long one call blocks Redis."`
	UI               bool          `env:"UI" envDefault:"true" help:"Serve the web dashboard at /ui/ on ACKD_HTTP_ADDR. false: no /ui/."`
	UIToken          string        `env:"UI_TOKEN" help:"Token that allows the dashboard's actions (replay, purge, pause, resume): typed into its login form, or sent as Authorization: Bearer. At least 16 characters, no spaces. Empty: the dashboard is read-only. Never logged."`
	UIPayloads       bool          `env:"UI_PAYLOADS" envDefault:"false" help:"Show the first bytes of payloads on the dashboard's queue pages (escaped; binary shown as hex). Off by default: payloads may hold personal data."`

	// Redis credentials and TLS, besides ACKD_REDIS_URL. Read by the
	// daemon and the operator commands alike (see redisSettings).
	RedisPassword      string `env:"REDIS_PASSWORD" help:"Password of the Redis data nodes, instead of the one in ACKD_REDIS_URL (which it replaces). Not with ACKD_REDIS_PASSWORD_FILE."`
	RedisPasswordFile  string `env:"REDIS_PASSWORD_FILE" help:"File holding the Redis password, e.g. a Docker or Kubernetes secret mounted at /run/secrets/redis-password; one trailing newline is dropped. Read once at start; an unreadable or empty file is an error. Not with ACKD_REDIS_PASSWORD."`
	RedisTLSCAFile     string `env:"REDIS_TLS_CA_FILE" help:"PEM file of the CA certificates that Redis' certificate must chain to, instead of the system's (a private CA). Needs a rediss:// URL."`
	RedisTLSCertFile   string `env:"REDIS_TLS_CERT_FILE" help:"PEM client certificate presented to Redis, for servers that require one (tls-auth-clients yes). With ACKD_REDIS_TLS_KEY_FILE; needs a rediss:// URL."`
	RedisTLSKeyFile    string `env:"REDIS_TLS_KEY_FILE" help:"PEM private key of ACKD_REDIS_TLS_CERT_FILE."`
	RedisTLSServerName string `env:"REDIS_TLS_SERVER_NAME" help:"Name Redis' certificate must carry, when it is not the host in ACKD_REDIS_URL (e.g. connecting by IP address). Needs a rediss:// URL."`

	// Durability of ackd's own writes (lease.Config.Replicas).
	RedisReplicas       int           `env:"REDIS_REPLICAS" envDefault:"0" help:"How many replicas must confirm each of ackd's own writes (the sweeps that requeue, dead-letter and promote, and the dashboard's actions) before ackd counts it done: after each write ackd sends WAIT. A write not confirmed within ACKD_REDIS_REPLICA_TIMEOUT was made on the master but a failover may undo it; ackd counts it in ackd_not_replicated_total, logs it and sweeps that queue again a second later (a sweep is idempotent). It is not an outage. 0: no waiting (replication is asynchronous, and a failover may lose ackd's last writes, which the next sweep redoes). 0 to 64; set it no higher than the replicas every master has."`
	RedisReplicaTimeout time.Duration `env:"REDIS_REPLICA_TIMEOUT" envDefault:"1s" help:"How long ackd waits for ACKD_REDIS_REPLICAS replicas to confirm one write (WAIT's timeout). Used only with ACKD_REDIS_REPLICAS above 0. Must be below the Redis client's read timeout (go-redis' default 3s, or read_timeout in ACKD_REDIS_URL)."`

	// Derived by loadConfig.
	redisConn  redisconn.Options
	skipVerify bool // the URL turns certificate verification off
	logLevel   slog.Level
	// tune, if set, adjusts the reaper's configuration: tests use it to
	// shorten intervals that no variable sets.
	tune func(*reaper.Config)
}

// configVar describes one variable for help output, docs and tests.
type configVar struct {
	Name    string // ACKD_...
	Default string
	Help    string
	field   reflect.StructField
}

// configVars lists the variables in the order of the struct.
func configVars() []configVar {
	t := reflect.TypeFor[config]()
	var vars []configVar
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if key == "" {
			continue
		}
		vars = append(vars, configVar{Name: envPrefix + key, Default: f.Tag.Get("envDefault"), Help: f.Tag.Get("help"), field: f})
	}
	return vars
}

// loadConfig reads and validates the configuration from environ. Every
// problem found is reported, each naming its variable. It touches nothing
// outside the process.
func loadConfig(environ map[string]string) (config, error) {
	vars := configVars()
	var problems []string
	known := make(map[string]bool, len(vars))
	for _, v := range vars {
		known[v.Name] = true
	}
	var unknown []string
	for k := range environ {
		if strings.HasPrefix(k, envPrefix) && !known[k] {
			unknown = append(unknown, k)
		}
	}
	slices.Sort(unknown)
	for _, k := range unknown {
		msg := k + ": unknown variable"
		if s := closest(k, vars); s != "" {
			msg += " (did you mean " + s + "?)"
		}
		problems = append(problems, msg+"; ackd -h lists the variables it reads")
	}

	// A variable set to "" (or blanks) is a mistake (a template or a
	// secret that rendered to nothing), not a wish for the default: say so
	// rather than guess.
	var empty []string
	for k, v := range environ {
		if known[k] && strings.TrimSpace(v) == "" {
			empty = append(empty, k)
		}
	}
	if len(empty) > 0 {
		slices.Sort(empty)
		for _, k := range empty {
			problems = append(problems, k+": set but empty; unset it to use the default")
		}
		return config{}, configError(problems)
	}

	cfg, err := env.ParseAsWithOptions[config](env.Options{Prefix: envPrefix, Environment: environ})
	if err != nil {
		var agg env.AggregateError
		if !errors.As(err, &agg) {
			return config{}, fmt.Errorf("%w: %v", errConfig, err)
		}
		for _, e := range agg.Errors {
			problems = append(problems, describeParseError(e, vars, environ))
		}
		return config{}, configError(problems)
	}
	problems = append(problems, cfg.validate()...)
	if len(problems) > 0 {
		return config{}, configError(problems)
	}
	return cfg, nil
}

func configError(problems []string) error {
	return fmt.Errorf("%w: %s", errConfig, strings.Join(problems, "; "))
}

// describeParseError turns an env parse error into a message that names
// the variable, not the Go field.
func describeParseError(err error, vars []configVar, environ map[string]string) string {
	var pe env.ParseError
	if !errors.As(err, &pe) {
		return err.Error()
	}
	for _, v := range vars {
		if v.field.Name != pe.Name {
			continue
		}
		val := strconv.Quote(environ[v.Name])
		if v.Name == envPrefix+"REDIS_URL" {
			val = "(value not shown)"
		}
		switch v.field.Type {
		case reflect.TypeFor[time.Duration]():
			return fmt.Sprintf("%s: %s is not a duration (write e.g. 500ms, 30s, 5m, 1h)", v.Name, val)
		case reflect.TypeFor[bool]():
			return fmt.Sprintf("%s: %s is not a boolean (write true or false)", v.Name, val)
		case reflect.TypeFor[int]():
			return fmt.Sprintf("%s: %s is not an integer", v.Name, val)
		}
		return fmt.Sprintf("%s: %s: %v", v.Name, val, pe.Err)
	}
	return err.Error()
}

// validate checks every setting and fills the derived fields. It returns
// one message per problem.
func (c *config) validate() []string {
	var p []string
	bad := func(name, format string, args ...any) {
		p = append(p, envPrefix+name+": "+fmt.Sprintf(format, args...))
	}

	c.redisConn, c.skipVerify = c.redisSettings()
	if err := redisconn.Check(c.redisConn); err != nil {
		p = append(p, err.Error()) // names its variable; holds no secret
	} else if n, ok := urlPoolSize(c.RedisURL); ok && n < c.SweepConcurrency+poolSpare {
		bad("REDIS_URL", "pool_size=%d leaves too few connections for ACKD_SWEEP_CONCURRENCY=%d: sweeps would wait for each other; set pool_size to at least %d or leave it out", n, c.SweepConcurrency, c.SweepConcurrency+poolSpare)
	}

	if host, port, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		bad("HTTP_ADDR", "%q is not host:port (e.g. :9466 or 127.0.0.1:9466)", c.HTTPAddr)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		bad("HTTP_ADDR", "port %q of %q must be a number from 0 to 65535", port, c.HTTPAddr)
	} else if strings.ContainsAny(host, "/ ") {
		bad("HTTP_ADDR", "host %q of %q is not a host name or IP address", host, c.HTTPAddr)
	}

	if c.ScanInterval <= 0 {
		bad("SCAN_INTERVAL", "must be a positive duration, got %v", c.ScanInterval)
	}
	if c.ShutdownTimeout <= 0 {
		bad("SHUTDOWN_TIMEOUT", "must be a positive duration, got %v", c.ShutdownTimeout)
	}
	if c.SweepConcurrency < 1 || c.SweepConcurrency > maxSweepConcurrency {
		bad("SWEEP_CONCURRENCY", "must be 1 to %d, got %d", maxSweepConcurrency, c.SweepConcurrency)
	}
	if c.SweepLimit < 1 || c.SweepLimit > maxSweepLimit {
		bad("SWEEP_LIMIT", "must be 1 to %d, got %d", maxSweepLimit, c.SweepLimit)
	}
	if c.RedisReplicas < 0 || c.RedisReplicas > maxRedisReplicas {
		bad("REDIS_REPLICAS", "must be 0 to %d, got %d", maxRedisReplicas, c.RedisReplicas)
	}
	if c.RedisReplicaTimeout < time.Millisecond {
		bad("REDIS_REPLICA_TIMEOUT", "must be at least 1ms, got %v", c.RedisReplicaTimeout)
	} else if rt, ok := urlReadTimeout(c.RedisURL); c.RedisReplicas > 0 && ok && rt > 0 && c.RedisReplicaTimeout >= rt {
		bad("REDIS_REPLICA_TIMEOUT", "%v must be below the Redis client's read timeout %v (read_timeout in ACKD_REDIS_URL, 3s by default), or WAIT would be cut short", c.RedisReplicaTimeout, rt)
	}

	switch strings.ToLower(c.LogLevel) {
	case "debug":
		c.logLevel = slog.LevelDebug
	case "info":
		c.logLevel = slog.LevelInfo
	case "warn", "warning":
		c.logLevel = slog.LevelWarn
	case "error":
		c.logLevel = slog.LevelError
	default:
		bad("LOG_LEVEL", "%q is not one of debug, info, warn, error", c.LogLevel)
	}
	c.LogFormat = strings.ToLower(c.LogFormat)
	if c.LogFormat != "json" && c.LogFormat != "text" {
		bad("LOG_FORMAT", "%q is not one of json, text", c.LogFormat)
	}

	var queues []string
	for _, q := range c.Queues {
		q = strings.TrimSpace(q)
		if q == "" {
			continue
		}
		if err := lease.ValidateQueue(q); err != nil {
			bad("QUEUES", "%v", err)
			continue
		}
		if !slices.Contains(queues, q) {
			queues = append(queues, q)
		}
	}
	c.Queues = queues
	p = append(p, c.validateUI()...)
	return p
}

// closest returns the known variable nearest to name by edit distance, if
// it is near enough to be a typo.
func closest(name string, vars []configVar) string {
	best, bestD := "", 4
	for _, v := range vars {
		if d := editDistance(name, v.Name); d < bestD {
			best, bestD = v.Name, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// writeHelp prints the usage, the flags and every variable with its
// default and meaning.
func writeHelp(w io.Writer) {
	fmt.Fprint(w, `ackd returns the expired leases of ackd queues in Redis to their ready lists
and promotes delayed messages when they are due. It listens to keyspace
events and wake messages, keeps a timer per queue, and sweeps every queue
in full at ACKD_SCAN_INTERVAL as a safety net.

Usage:
  ackd                run the daemon (configured by the environment)
  ackd -healthcheck   GET /healthz of the ackd at ACKD_HTTP_ADDR; exit 0 if it answers 200
  ackd -version       print the version and exit
  ackd -h, --help     print this help and exit
  ackd help           the operator commands: queues, stats, peek, dead, pause, push, ...

HTTP: /healthz (liveness), /readyz (Redis answers and the subscription is
live; JSON), /metrics (Prometheus).

Environment:
`)
	for _, v := range configVars() {
		def := v.Default
		if def == "" {
			def = `""`
		}
		fmt.Fprintf(w, "  %s (default %s)\n", v.Name, def)
		for _, line := range wrap(v.Help, 72) {
			fmt.Fprintf(w, "      %s\n", line)
		}
	}
	fmt.Fprintf(w, "\nUnknown %s* variables are an error, so that a typo does not pass silently.\n", envPrefix)
}

// wrap splits s into lines of at most width bytes, at spaces.
func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		if line != "" && len(line)+1+len(word) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
