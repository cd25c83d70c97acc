package redisconn

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults for Options.
const (
	// VarDefault names the setting in error messages.
	VarDefault = "ACKD_REDIS_URL"
	// ClusterReloadIntervalDefault is how often a Cluster client re-reads
	// the slot map even when nothing went wrong. go-redis' own default is
	// 60 s, which kept callers failing for most of a minute after a
	// master died.
	ClusterReloadIntervalDefault = time.Second
)

// Mode is the kind of deployment a URL names.
type Mode string

// The deployments Open connects to.
const (
	Standalone Mode = "standalone"
	Cluster    Mode = "cluster"
	Sentinel   Mode = "sentinel"
)

// Options say how to reach Redis. Only URL is required.
type Options struct {
	// URL is the deployment, in one of go-redis' URL forms (see the
	// package documentation).
	URL string
	// Var names where URL came from, in every error. Defaults to
	// "ACKD_REDIS_URL".
	Var string
	// Password, if set, replaces the password in URL (for a Sentinel URL:
	// the data nodes' password; the Sentinels' own stays in URL's
	// userinfo). PasswordVar names it in errors. Defaults to the URL's.
	Password    string
	PasswordVar string
	// PasswordFile, if set, is a file holding the password, as Docker and
	// Kubernetes mount secrets; one trailing newline is dropped. It may
	// not be combined with Password. PasswordFileVar names it in errors.
	PasswordFile    string
	PasswordFileVar string
	// TLSCAFile is a PEM file of CA certificates that server certificates
	// are checked against instead of the system's. Needs a rediss:// URL.
	TLSCAFile string
	// TLSCAFileVar names TLSCAFile in errors. Defaults to "TLS CA file".
	TLSCAFileVar string
	// TLSCertFile and TLSKeyFile are the PEM client certificate and key
	// presented to servers that require one (tls-auth-clients yes). Both
	// or neither. Need a rediss:// URL.
	TLSCertFile, TLSKeyFile string
	// TLSCertVar names the certificate and key in errors. Defaults to
	// "TLS client certificate".
	TLSCertVar string
	// TLSServerName is the name the server certificates must carry.
	// Defaults to the URL's host.
	TLSServerName string
	// BlockingPoolSize, if positive, makes Open build a second client on
	// the same deployment with a pool of this size, for blocking calls
	// (see Conn.Blocking). Defaults to none.
	BlockingPoolSize int
	// PoolSize, if positive, is the size of Client's pool (per node for a
	// Cluster) unless the URL sets pool_size itself. Defaults to go-redis'
	// 10 per GOMAXPROCS.
	PoolSize int
	// ClusterReloadInterval is how often a Cluster client re-reads the
	// slot map regardless of errors. Defaults to 1 second.
	ClusterReloadInterval time.Duration
}

// Conn is an open connection to a deployment.
type Conn struct {
	// Client serves every command. It is a *redis.Client for a standalone
	// server or a Sentinel-managed master, a *redis.ClusterClient for a
	// Cluster.
	Client redis.UniversalClient
	// Blocking is a second client with its own pool, for calls that block
	// (BLMOVE); nil unless Options.BlockingPoolSize was set.
	Blocking redis.UniversalClient
	// Mode is the kind of deployment found.
	Mode Mode
	// Addrs are the addresses the client was seeded with (the Sentinels'
	// for a Sentinel deployment).
	Addrs []string
	// InsecureSkipVerify reports that the URL turned TLS certificate
	// verification off (skip_verify=true); the caller should warn.
	InsecureSkipVerify bool
	// Failover, for a Sentinel deployment, is the options Client was made
	// with (Sentinels, master name, credentials), for whatever else must
	// reach the Sentinels or the replicas: notify.Config.Sentinel and
	// notify.EnsureEventsSentinel. Nil otherwise.
	Failover *redis.FailoverOptions
}

// Close closes both clients.
func (c *Conn) Close() error {
	err := c.Client.Close()
	if c.Blocking != nil {
		err = errors.Join(err, c.Blocking.Close())
	}
	return err
}

// Error is a connection setting that does not work. Its message names
// the setting and never contains a password.
type Error struct {
	// Var is the setting at fault, e.g. "ACKD_REDIS_URL".
	Var string
	msg string
	err error
}

func (e *Error) Error() string {
	if e.err == nil {
		return e.Var + ": " + e.msg
	}
	return e.Var + ": " + e.msg + ": " + e.err.Error()
}

// Unwrap returns the underlying error, if any (a Redis or network error).
func (e *Error) Unwrap() error { return e.err }

// Open parses the settings, connects, finds out what kind of deployment
// it reached and checks it can serve: a standalone server answers PING; a
// Cluster has every slot covered and cluster_state:ok; the Sentinels know
// the master and it answers. A URL of the standalone form that names a
// Cluster node gets a Cluster client seeded with that node. Every error
// is an *Error naming the setting, with passwords removed.
func Open(ctx context.Context, o Options) (*Conn, error) {
	if o.Var == "" {
		o.Var = VarDefault
	}
	if o.ClusterReloadInterval == 0 {
		o.ClusterReloadInterval = ClusterReloadIntervalDefault
	}
	s, err := parse(o)
	if err != nil {
		return nil, s.scrub(err)
	}
	conn, err := s.open(ctx)
	if err != nil {
		return nil, s.scrub(err)
	}
	return conn, nil
}

// Check validates o without connecting: the URL's form and parameters,
// the password sources and the TLS files. Open does the same first; a
// daemon calls Check at start to exit on bad settings at once, and Open
// (perhaps repeatedly) to connect. Errors are as Open's.
func Check(o Options) error {
	if o.Var == "" {
		o.Var = VarDefault
	}
	if s, err := parse(o); err != nil {
		return s.scrub(err)
	}
	return nil
}

// settings is a parsed Options.
type settings struct {
	o       Options
	mode    Mode
	std     *redis.Options
	cluster *redis.ClusterOptions
	fail    *redis.FailoverOptions
	secrets []string
}

func parse(o Options) (*settings, error) {
	s := &settings{o: o}
	s.collectSecrets()
	if strings.TrimSpace(o.URL) == "" {
		return s, &Error{Var: o.Var, msg: "is empty; set it to a redis://, rediss:// or unix:// URL"}
	}
	const encode = "; percent-encode any '/', '?', '#', '@' or ':' in the password"
	u, err := url.Parse(o.URL)
	if err != nil {
		return s, &Error{Var: o.Var, msg: "is not a valid URL (" + s.redactParseError(err) + ")" + encode}
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return s, &Error{Var: o.Var, msg: "port is not 1 to 65535"}
		}
	}
	if u.Fragment != "" || strings.Contains(o.URL, "#") {
		return s, &Error{Var: o.Var, msg: "has a '#' fragment, which a Redis URL never has" + encode}
	}
	switch u.Scheme {
	case "redis", "rediss", "unix":
	case "":
		return s, &Error{Var: o.Var, msg: "has no scheme; " + formsHint}
	default:
		return s, &Error{Var: o.Var, msg: s.redact(fmt.Sprintf("scheme %q is not one go-redis knows (redis, rediss, unix); ", u.Scheme)) + formsHint}
	}
	q := u.Query()
	_, hasMaster := q["master_name"]
	_, hasAddr := q["addr"]
	if err := s.checkParams(q, hasMaster, hasAddr); err != nil {
		return s, err
	}
	switch {
	case u.Scheme == "unix" && (hasMaster || hasAddr):
		return s, &Error{Var: o.Var, msg: "a unix:// URL names one server and takes no master_name or addr parameter"}
	case hasMaster:
		if q.Get("master_name") == "" {
			return s, &Error{Var: o.Var, msg: "master_name is empty"}
		}
		s.mode = Sentinel
		s.fail, err = redis.ParseFailoverURL(o.URL)
	case hasAddr:
		if f := strings.Trim(u.Path, "/"); f != "" && f != "0" {
			return s, &Error{Var: o.Var, msg: "mixes the Cluster form (addr) with a database number; a Cluster has only database 0"}
		}
		if q.Has("db") {
			return s, &Error{Var: o.Var, msg: "mixes the Cluster form (addr) with db; a Cluster has only database 0"}
		}
		s.mode = Cluster
		u.Path = ""
		s.cluster, err = redis.ParseClusterURL(u.String())
	default:
		s.mode = Standalone
		s.std, err = redis.ParseURL(o.URL)
	}
	if err != nil {
		// go-redis quotes what it could not read, which may be a piece of
		// an unencoded password.
		msg := s.redact(quoted.ReplaceAllString(err.Error(), "(redacted)"))
		if !strings.Contains(msg, "unexpected option") {
			msg += encode
		}
		return s, &Error{Var: o.Var, msg: msg}
	}
	if err := s.applyPassword(); err != nil {
		return s, err
	}
	if err := s.applyTLS(u.Scheme); err != nil {
		return s, err
	}
	if n := o.PoolSize; n > 0 && !q.Has("pool_size") {
		switch s.mode {
		case Standalone:
			s.std.PoolSize = n
		case Cluster:
			s.cluster.PoolSize = n
		case Sentinel:
			s.fail.PoolSize = n
		}
	}
	return s, nil
}

// formsHint says how each deployment is written.
const formsHint = "write one server as redis://host:6379/0, a Cluster as redis://node1:6379?addr=node2:6379&addr=node3:6379, a Sentinel deployment as redis://sentinel1:26379?master_name=NAME&addr=sentinel2:26379 (rediss:// for TLS)"

// params are the query parameters go-redis reads in each URL form
// (ParseURL, ParseClusterURL, ParseFailoverURL; go-redis v9.23).
var params = map[Mode][]string{
	Standalone: {"client_name", "conn_max_idle_time", "conn_max_lifetime", "conn_max_lifetime_jitter", "db", "dial_timeout",
		"idle_timeout", "max_active_conns", "max_concurrent_dials", "max_conn_age", "max_idle_conns", "max_retries",
		"max_retry_backoff", "min_idle_conns", "min_retry_backoff", "pipeline_pool_size", "pipeline_read_buffer_size",
		"pipeline_write_buffer_size", "pool_fifo", "pool_size", "pool_timeout", "protocol", "read_timeout", "skip_verify", "write_timeout"},
	Cluster: {"addr", "client_name", "conn_max_idle_time", "conn_max_lifetime", "conn_max_lifetime_jitter", "dial_timeout",
		"dialer_retries", "dialer_retry_timeout", "failing_timeout_seconds", "max_active_conns", "max_concurrent_dials",
		"max_idle_conns", "max_redirects", "max_retries", "max_retry_backoff", "min_idle_conns", "min_retry_backoff",
		"pipeline_pool_size", "pipeline_read_buffer_size", "pipeline_write_buffer_size", "pool_fifo", "pool_size",
		"pool_timeout", "protocol", "read_only", "read_timeout", "route_by_latency", "route_by_latency_tolerance",
		"route_randomly", "write_timeout"},
	Sentinel: {"addr", "client_name", "conn_max_idle_time", "conn_max_lifetime", "conn_max_lifetime_jitter",
		"context_timeout_enabled", "db", "dial_timeout", "dialer_retries", "dialer_retry_timeout", "disableIdentity",
		"identitySuffix", "master_name", "max_active_conns", "max_concurrent_dials", "max_idle_conns", "max_retries",
		"max_retry_backoff", "min_idle_conns", "min_retry_backoff", "password", "pipeline_pool_size",
		"pipeline_read_buffer_size", "pipeline_write_buffer_size", "pool_fifo", "pool_size", "pool_timeout", "protocol",
		"read_timeout", "replica_only", "route_by_latency", "route_by_latency_tolerance", "route_randomly", "skip_verify",
		"use_disconnected_replicas", "username", "write_timeout"},
}

// formNames names each form in messages, with what marks it.
var formNames = map[Mode]string{
	Standalone: "the one-server form",
	Cluster:    "the Cluster form (addr= without master_name)",
	Sentinel:   "the Sentinel form (master_name=)",
}

// notOnMaster are Sentinel-form parameters that would send ackd's writes
// to replicas (replica_only, use_disconnected_replicas) or that
// redis.NewFailoverClient refuses by panicking (route_*).
var notOnMaster = []string{"replica_only", "use_disconnected_replicas", "route_by_latency", "route_randomly"}

// checkParams refuses a parameter of another URL form than the one the
// URL is in (master_name with a Cluster-only option, a Sentinel-only
// option in a Cluster URL, ...), naming both forms, and Sentinel
// parameters that would take ackd off the master. Parameters no form
// knows are left to go-redis, which names them.
func (s *settings) checkParams(q url.Values, hasMaster, hasAddr bool) error {
	mode := Standalone
	switch {
	case hasMaster:
		mode = Sentinel
	case hasAddr:
		mode = Cluster
	}
	keys := slices.Sorted(maps.Keys(q))
	for _, k := range keys {
		if k == "sentinel_username" || k == "sentinel_password" {
			return &Error{Var: s.o.Var, msg: k + " is not a parameter: the Sentinels' credentials go in the userinfo (redis://user:password@sentinel1:26379?master_name=NAME), the data nodes' in username= and password="}
		}
		if !slices.Contains(params[Standalone], k) && !slices.Contains(params[Cluster], k) && !slices.Contains(params[Sentinel], k) {
			return nil // unknown to every form: go-redis names it
		}
	}
	for _, k := range keys {
		if mode == Cluster && k == "db" {
			continue // parse says a Cluster has only database 0
		}
		if mode == Sentinel && slices.Contains(notOnMaster, k) {
			return &Error{Var: s.o.Var, msg: s.redact(k) + " is not supported: ackd writes, so its Sentinel client talks to the master only"}
		}
		if slices.Contains(params[mode], k) {
			continue
		}
		var others []string
		for _, m := range []Mode{Standalone, Cluster, Sentinel} {
			if m != mode && slices.Contains(params[m], k) {
				others = append(others, formNames[m])
			}
		}
		if len(others) > 0 {
			return &Error{Var: s.o.Var, msg: fmt.Sprintf("mixes URL forms: %s is a parameter of %s, not of %s",
				s.redact(k), strings.Join(others, " and "), formNames[mode])}
		}
	}
	return nil
}

// collectSecrets gathers every string that may be a password, so that no
// error can carry one.
func (s *settings) collectSecrets() {
	add := func(v string) {
		if v != "" {
			s.secrets = append(s.secrets, v)
		}
	}
	add(s.o.Password)
	// The user part may itself be a password (redis://PASS@host, as
	// redis-cli reads it), and a malformed URL cannot be trusted to split
	// where we think: take the raw userinfo apart by hand.
	if rest, ok := strings.CutPrefix(s.o.URL, "//"); ok {
		s.addUserinfo(rest, add)
	} else if _, rest, ok := strings.Cut(s.o.URL, "://"); ok {
		s.addUserinfo(rest, add)
	}
	if _, query, ok := strings.Cut(s.o.URL, "?"); ok {
		for _, kv := range strings.Split(query, "&") {
			k, v, _ := strings.Cut(kv, "=")
			if strings.Contains(strings.ToLower(k), "password") || strings.Contains(strings.ToLower(k), "pass") {
				add(v)
				if dv, err := url.QueryUnescape(v); err == nil {
					add(dv)
				}
			}
		}
	}
	// Longest first, so a secret containing another is removed whole.
	slices.SortFunc(s.secrets, func(a, b string) int { return len(b) - len(a) })
}

func (s *settings) addUserinfo(rest string, add func(string)) {
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return
	}
	info := rest[:at]
	add(info)
	user, pass, hasPass := strings.Cut(info, ":")
	add(user)
	if hasPass {
		add(pass)
		if dp, err := url.PathUnescape(pass); err == nil {
			add(dp)
		}
	}
	if du, err := url.PathUnescape(user); err == nil {
		add(du)
	}
}

var quoted = regexp.MustCompile(`"[^"]*"|'[^']*'`)

// redactParseError describes a url.Parse failure without quoting the
// input: net/url quotes the offending part, which may be a piece of the
// password (`invalid port ":Zm9v" after host`).
func (s *settings) redactParseError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return s.redact(quoted.ReplaceAllString(err.Error(), "(redacted)"))
}

// redact removes every known secret from msg.
func (s *settings) redact(msg string) string {
	for _, sec := range s.secrets {
		if len(sec) < 3 && sec != s.o.Password {
			continue // too short to matter, and would shred the message
		}
		msg = strings.ReplaceAll(msg, sec, "(redacted)")
	}
	return msg
}

// scrub makes err an *Error naming the setting, with secrets removed from
// its message.
func (s *settings) scrub(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Var: s.o.Var, msg: "connecting", err: err}
	}
	return &redactedError{e: e, msg: s.redact(e.Error())}
}

// redactedError is an *Error whose text has had the secrets removed.
type redactedError struct {
	e   *Error
	msg string
}

func (r *redactedError) Error() string { return r.msg }
func (r *redactedError) Unwrap() error { return r.e }

func (s *settings) applyPassword() error {
	pw := s.o.Password
	if s.o.PasswordFile != "" {
		fileVar := cmp.Or(s.o.PasswordFileVar, "PasswordFile")
		if pw != "" {
			return &Error{Var: fileVar, msg: "may not be set together with " + cmp.Or(s.o.PasswordVar, "Password")}
		}
		b, err := os.ReadFile(s.o.PasswordFile)
		if err != nil {
			return &Error{Var: fileVar, msg: "reading the password file", err: err}
		}
		pw = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if pw == "" {
			return &Error{Var: fileVar, msg: "the password file is empty"}
		}
		s.secrets = append([]string{pw}, s.secrets...)
	}
	if pw == "" {
		return nil
	}
	switch s.mode {
	case Standalone:
		s.std.Password = pw
	case Cluster:
		s.cluster.Password = pw
	case Sentinel:
		s.fail.Password = pw
	}
	return nil
}

func (s *settings) tlsConfig() **tls.Config {
	switch s.mode {
	case Cluster:
		return &s.cluster.TLSConfig
	case Sentinel:
		return &s.fail.TLSConfig
	default:
		return &s.std.TLSConfig
	}
}

func (s *settings) applyTLS(scheme string) error {
	o := s.o
	cfgp := s.tlsConfig()
	if o.TLSCAFile == "" && o.TLSCertFile == "" && o.TLSKeyFile == "" && o.TLSServerName == "" {
		return nil
	}
	if scheme != "rediss" {
		return &Error{Var: o.Var, msg: "TLS settings (CA file, client certificate, server name) need a rediss:// URL"}
	}
	cfg := cloneTLS(*cfgp)
	caVar := cmp.Or(o.TLSCAFileVar, "TLS CA file")
	certVar := cmp.Or(o.TLSCertVar, "TLS client certificate")
	if o.TLSCAFile != "" {
		pem, err := os.ReadFile(o.TLSCAFile)
		if err != nil {
			return &Error{Var: caVar, msg: "reading", err: err}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return &Error{Var: caVar, msg: o.TLSCAFile + " holds no PEM certificate"}
		}
		cfg.RootCAs = pool
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return &Error{Var: certVar, msg: "the certificate file and the key file must be set together"}
	}
	if o.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile)
		if err != nil {
			return &Error{Var: certVar, msg: "loading", err: err}
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if o.TLSServerName != "" {
		cfg.ServerName = o.TLSServerName
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	*cfgp = cfg
	return nil
}

func cloneTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return &tls.Config{}
	}
	return c.Clone()
}

// isClusterNode asks the server it reaches whether it is a Cluster node:
// HELLO's mode, which needs no ACL permission, or, from a server without
// HELLO (Redis 5), INFO cluster. A user refused INFO (NOPERM) is taken to
// name one server.
func isClusterNode(ctx context.Context, c *redis.Client) (bool, error) {
	hello, err := c.Do(ctx, "HELLO", "3").Result()
	if err == nil {
		if m, ok := hello.(map[any]any); ok {
			if mode, ok := m["mode"].(string); ok {
				return mode == "cluster", nil
			}
		}
	}
	info, err := c.Info(ctx, "cluster").Result()
	if redis.HasErrorPrefix(err, "NOPERM") {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return strings.Contains(info, "cluster_enabled:1"), nil
}

func (s *settings) open(ctx context.Context) (*Conn, error) {
	switch s.mode {
	case Sentinel:
		return s.openSentinel(ctx)
	case Cluster:
		return s.openCluster(ctx, s.cluster)
	}
	// Ask in database 0: a Cluster node refuses SELECT of any other.
	probeOpts := *s.std
	probeOpts.DB = 0
	probe := redis.NewClient(&probeOpts)
	cluster, err := isClusterNode(ctx, probe)
	_ = probe.Close()
	if err != nil {
		return nil, &Error{Var: s.o.Var, msg: "connecting to " + s.std.Addr, err: err}
	}
	if cluster {
		if s.std.DB != 0 {
			return nil, &Error{Var: s.o.Var, msg: "names a Cluster node with database " + strconv.Itoa(s.std.DB) + "; a Cluster has only database 0"}
		}
		s.mode = Cluster
		return s.openCluster(ctx, clusterOptions(s.std))
	}
	rc := redis.NewClient(s.std)
	if err := rc.Ping(ctx).Err(); err != nil {
		_ = rc.Close()
		return nil, &Error{Var: s.o.Var, msg: "connecting to " + s.std.Addr, err: err}
	}
	conn := &Conn{Client: rc, Mode: Standalone, Addrs: []string{s.std.Addr}, InsecureSkipVerify: skipVerify(s.std.TLSConfig)}
	if n := s.o.BlockingPoolSize; n > 0 {
		b := *s.std
		b.PoolSize = n
		conn.Blocking = redis.NewClient(&b)
	}
	return conn, nil
}

// clusterOptions carries a standalone URL's settings over to a Cluster
// client seeded with that one node.
func clusterOptions(o *redis.Options) *redis.ClusterOptions {
	return &redis.ClusterOptions{
		Addrs:           []string{o.Addr},
		ClientName:      o.ClientName,
		Protocol:        o.Protocol,
		Username:        o.Username,
		Password:        o.Password,
		MaxRetries:      o.MaxRetries,
		MinRetryBackoff: o.MinRetryBackoff,
		MaxRetryBackoff: o.MaxRetryBackoff,
		DialTimeout:     o.DialTimeout,
		ReadTimeout:     o.ReadTimeout,
		WriteTimeout:    o.WriteTimeout,
		PoolFIFO:        o.PoolFIFO,
		PoolSize:        o.PoolSize,
		PoolTimeout:     o.PoolTimeout,
		MinIdleConns:    o.MinIdleConns,
		MaxIdleConns:    o.MaxIdleConns,
		MaxActiveConns:  o.MaxActiveConns,
		ConnMaxIdleTime: o.ConnMaxIdleTime,
		ConnMaxLifetime: o.ConnMaxLifetime,
		TLSConfig:       o.TLSConfig,
	}
}

func (s *settings) openCluster(ctx context.Context, co *redis.ClusterOptions) (*Conn, error) {
	co.ClusterStateReloadInterval = s.o.ClusterReloadInterval
	cc := NewClusterClient(co)
	if err := CheckCluster(ctx, cc); err != nil {
		_ = cc.Close()
		return nil, &Error{Var: s.o.Var, msg: "Cluster at " + strings.Join(co.Addrs, ","), err: err}
	}
	conn := &Conn{Client: cc, Mode: Cluster, Addrs: co.Addrs, InsecureSkipVerify: skipVerify(co.TLSConfig)}
	if n := s.o.BlockingPoolSize; n > 0 {
		b := *co
		b.PoolSize = n
		conn.Blocking = NewClusterClient(&b)
	}
	return conn, nil
}

// ErrUncovered reports a Cluster in which some hash slots have no master.
var ErrUncovered = errors.New("redisconn: Cluster does not cover every hash slot")

// CheckCluster returns an error unless the node cc reaches reports
// cluster_state:ok with all 16384 slots served by a live master.
func CheckCluster(ctx context.Context, cc *redis.ClusterClient) error {
	info, err := cc.ClusterInfo(ctx).Result()
	if err != nil {
		return err
	}
	ok, state := "", ""
	for line := range strings.Lines(info) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch k {
		case "cluster_slots_ok":
			ok = v
		case "cluster_state":
			state = v
		}
	}
	// With cluster-require-full-coverage no, the state stays ok while
	// slots have no live master: count the slots served.
	if ok != "16384" {
		return fmt.Errorf("%w: %s of 16384 slots served", ErrUncovered, ok)
	}
	if state != "ok" {
		return fmt.Errorf("%w: cluster_state:%s", ErrUncovered, state)
	}
	return nil
}

// NewClusterClient returns a ClusterClient that re-reads the slot map as
// soon as a command fails with a network error, CLUSTERDOWN, MOVED or
// TRYAGAIN, besides every co.ClusterStateReloadInterval: after a master
// dies, callers see errors only until the Cluster has promoted its
// replica (plus at most one reload), not until go-redis' periodic reload.
func NewClusterClient(co *redis.ClusterOptions) *redis.ClusterClient {
	cc := redis.NewClusterClient(co)
	cc.AddHook(reloadHook{cc: cc})
	return cc
}

// reloadHook asks the ClusterClient to reload its state after an error
// that means the slot map it holds may be stale. ReloadState is lazy:
// reloads run in the background and coalesce.
type reloadHook struct{ cc *redis.ClusterClient }

func (h reloadHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			h.cc.ReloadState(ctx)
		}
		return c, err
	}
}

func (h reloadHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if StaleTopology(err) {
			h.cc.ReloadState(ctx)
		}
		return err
	}
}

func (h reloadHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		stale := StaleTopology(err)
		for _, c := range cmds {
			stale = stale || StaleTopology(c.Err())
		}
		if stale {
			h.cc.ReloadState(ctx)
		}
		return err
	}
}

// StaleTopology reports whether err suggests the client's idea of which
// node serves what is out of date: a network error, or a CLUSTERDOWN,
// MOVED, ASK, TRYAGAIN, READONLY or MASTERDOWN reply.
func StaleTopology(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, net.ErrClosed) {
		return true
	}
	for _, p := range []string{"CLUSTERDOWN", "MOVED", "ASK", "TRYAGAIN", "READONLY", "MASTERDOWN"} {
		if redis.HasErrorPrefix(err, p) {
			return true
		}
	}
	return false
}

func (s *settings) openSentinel(ctx context.Context) (*Conn, error) {
	fo := s.fail
	if err := s.checkSentinels(ctx); err != nil {
		return nil, err
	}
	rc := redis.NewFailoverClient(fo)
	if err := rc.Ping(ctx).Err(); err != nil {
		_ = rc.Close()
		return nil, &Error{Var: s.o.Var, msg: "master " + strconv.Quote(fo.MasterName), err: err}
	}
	conn := &Conn{Client: rc, Mode: Sentinel, Addrs: fo.SentinelAddrs, InsecureSkipVerify: skipVerify(fo.TLSConfig), Failover: fo}
	if n := s.o.BlockingPoolSize; n > 0 {
		b := *fo
		b.PoolSize = n
		conn.Blocking = redis.NewFailoverClient(&b)
	}
	return conn, nil
}

// checkSentinels asks each Sentinel for the master, so that a wrong
// master name reads as such and not as go-redis' "all sentinels are
// unreachable".
func (s *settings) checkSentinels(ctx context.Context) error {
	fo := s.fail
	var errs []error
	for _, addr := range fo.SentinelAddrs {
		sc := redis.NewSentinelClient(&redis.Options{
			Addr:        addr,
			Username:    fo.SentinelUsername,
			Password:    fo.SentinelPassword,
			TLSConfig:   fo.TLSConfig,
			DialTimeout: cmp.Or(fo.DialTimeout, 5*time.Second),
			MaxRetries:  -1,
		})
		_, err := sc.GetMasterAddrByName(ctx, fo.MasterName).Result()
		_ = sc.Close()
		if err == nil {
			return nil
		}
		if errors.Is(err, redis.Nil) {
			return &Error{Var: s.o.Var, msg: fmt.Sprintf("the Sentinel at %s monitors no master named %q", addr, fo.MasterName)}
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
	}
	return &Error{Var: s.o.Var, msg: "no Sentinel answered", err: errors.Join(errs...)}
}

func skipVerify(c *tls.Config) bool { return c != nil && c.InsecureSkipVerify }

// Redact returns rawURL with its userinfo and every password parameter
// replaced, fit for a log line. A URL that does not parse is replaced
// whole.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparsable URL, redacted)"
	}
	if u.User != nil {
		u.User = url.User("redacted")
	}
	q := u.Query()
	for k := range q {
		if strings.Contains(strings.ToLower(k), "pass") {
			q.Set(k, "redacted")
		}
	}
	u.RawQuery = q.Encode()
	return u.String()
}
