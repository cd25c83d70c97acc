package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ackd/ackd/internal/redisconn"
)

// poolSpare is how many connections the daemon's pool keeps beyond one
// per concurrent sweep: the registry scan, the events check, /readyz and
// the wake and timer paths.
const poolSpare = 4

// redisSettings turns the ACKD_REDIS_* variables into redisconn's
// options, each naming its variable for errors, and reports whether the
// URL turns certificate verification off. The pool gets one connection
// per concurrent sweep plus poolSpare, and never fewer than go-redis'
// default, unless the URL sets pool_size.
func (c *config) redisSettings() (redisconn.Options, bool) {
	o := redisconn.Options{
		URL:             c.RedisURL,
		Var:             envPrefix + "REDIS_URL",
		Password:        c.RedisPassword,
		PasswordVar:     envPrefix + "REDIS_PASSWORD",
		PasswordFile:    c.RedisPasswordFile,
		PasswordFileVar: envPrefix + "REDIS_PASSWORD_FILE",
		TLSCAFile:       c.RedisTLSCAFile,
		TLSCAFileVar:    envPrefix + "REDIS_TLS_CA_FILE",
		TLSCertFile:     c.RedisTLSCertFile,
		TLSKeyFile:      c.RedisTLSKeyFile,
		TLSCertVar:      envPrefix + "REDIS_TLS_CERT_FILE/" + envPrefix + "REDIS_TLS_KEY_FILE",
		TLSServerName:   c.RedisTLSServerName,
		PoolSize:        max(10*runtime.GOMAXPROCS(0), c.SweepConcurrency+poolSpare),
	}
	skip := false
	if u, err := url.Parse(c.RedisURL); err == nil {
		skip, _ = strconv.ParseBool(u.Query().Get("skip_verify"))
	}
	return o, skip
}

// urlPoolSize returns the pool_size the URL sets, if any.
func urlPoolSize(rawURL string) (int, bool) {
	u, err := url.Parse(rawURL)
	if err != nil || !u.Query().Has("pool_size") {
		return 0, false
	}
	n, err := strconv.Atoi(u.Query().Get("pool_size"))
	return n, err == nil
}

// goRedisReadTimeout is go-redis' default read timeout.
const goRedisReadTimeout = 3 * time.Second

// urlReadTimeout returns the read timeout a client of rawURL gets:
// read_timeout from the URL (an integer is seconds, as go-redis reads it;
// 0 or less turns the timeout off and is returned as 0), else go-redis'
// default. ok is false if the URL or the value does not parse (Check
// reports that).
func urlReadTimeout(rawURL string) (time.Duration, bool) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0, false
	}
	v := u.Query().Get("read_timeout")
	if v == "" {
		return goRedisReadTimeout, true
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, false
		}
		d = time.Duration(n) * time.Second
	}
	return max(d, 0), true
}

// connectTimeout bounds one attempt to reach Redis at start.
const connectTimeout = 5 * time.Second

// connect opens the deployment named by the configuration, retrying until
// it answers and can serve, or ctx is done. Each failed attempt is passed
// to failed (with the reason, which holds no password); the first, and
// every change of reason, is logged.
func connect(ctx context.Context, cfg config, retry time.Duration, log *slog.Logger, failed func(reason string)) (*redisconn.Conn, error) {
	delay := retry
	last := ""
	for {
		actx, cancel := context.WithTimeout(ctx, connectTimeout)
		conn, err := redisconn.Open(actx, cfg.redisConn)
		cancel()
		if err == nil {
			if last != "" {
				log.Info("redis available", "mode", string(conn.Mode))
			}
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		reason := err.Error()
		failed(reason)
		if reason != last {
			if redis.IsAuthError(err) {
				// The reply names no password; the user is named so that
				// an operator knows which credentials to fix.
				log.Error("redis refused ackd's credentials, retrying", "user", redisUser(cfg.RedisURL), "error", reason, "retry_in", delay.String())
			} else {
				log.Warn("redis unavailable, retrying", "error", reason, "retry_in", delay.String())
			}
			last = reason
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, max(retry, 2*time.Second))
	}
}

// redisUser is the user name in an ACKD_REDIS_URL, for log lines; "" if
// none or the URL does not parse. A userinfo without a colon
// (redis://SECRET@host) is not named: redis-cli reads it as a password.
func redisUser(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return ""
	}
	if _, hasPassword := u.User.Password(); !hasPassword {
		return ""
	}
	return u.User.Username()
}

// clusterCoverage returns an error while rdb is a Cluster some of whose
// slots no live master serves: sweeps of the queues there fail until it
// heals, so ackd is not ready.
func clusterCoverage(ctx context.Context, rdb redis.UniversalClient) error {
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		return nil
	}
	if err := redisconn.CheckCluster(ctx, cc); err != nil {
		if errors.Is(err, redisconn.ErrUncovered) {
			return err
		}
		return fmt.Errorf("CLUSTER INFO: %w", err)
	}
	return nil
}
