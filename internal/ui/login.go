package ui

import (
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Login rate limit: a client address that sent LoginFailuresDefault wrong
// tokens within LoginWindowDefault gets 429 Too Many Requests, with
// Retry-After, for every login until the oldest of those failures is a
// window old; its token is not even compared, so the answers say nothing
// about it meanwhile. Right tokens do not count.
const (
	LoginFailuresDefault = 5
	LoginWindowDefault   = time.Minute
	// maxLoginClients bounds the addresses remembered.
	maxLoginClients = 10000
)

// loginLimiter counts each client address's recent login failures.
type loginLimiter struct {
	max     int
	window  time.Duration
	nowFunc func() time.Time

	mu       sync.Mutex
	failures map[string][]time.Time // per address, oldest first, within the window
}

func newLoginLimiter(max int, window time.Duration) *loginLimiter {
	return &loginLimiter{max: max, window: window, nowFunc: time.Now, failures: map[string][]time.Time{}}
}

// clientAddr is the address a login is counted against: the connection's
// IP address (ackd does not trust forwarding headers).
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// recent drops addr's failures older than the window; the caller holds mu.
func (l *loginLimiter) recent(addr string, now time.Time) []time.Time {
	f := l.failures[addr]
	i := 0
	for i < len(f) && now.Sub(f[i]) >= l.window {
		i++
	}
	f = f[i:]
	if len(f) == 0 {
		delete(l.failures, addr)
		return nil
	}
	l.failures[addr] = f
	return f
}

// attempt compares a token from addr with check, unless addr must wait:
// then it returns how long, and check is not called. Check, compare and
// count are one step under the limiter's lock (a comparison is a few
// microseconds), so that concurrent attempts from one address cannot all
// pass the check before any is counted, and right tokens never wait on
// each other.
func (l *loginLimiter) attempt(addr string, check func() bool) (wait time.Duration, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.nowFunc()
	if f := l.recent(addr, now); len(f) >= l.max {
		return f[len(f)-l.max].Add(l.window).Sub(now), false
	}
	if ok = check(); !ok {
		l.addLocked(addr, now)
	}
	return 0, ok
}

// addLocked counts a failure of addr at now, unless the limiter is full
// of addresses failing right now; the caller holds mu.
func (l *loginLimiter) addLocked(addr string, now time.Time) bool {
	if _, ok := l.failures[addr]; !ok && len(l.failures) >= maxLoginClients {
		for a := range l.failures {
			l.recent(a, now)
		}
		if len(l.failures) >= maxLoginClients {
			return false // full of addresses failing right now: count no more
		}
	}
	f := append(l.recent(addr, now), now)
	if len(f) > l.max {
		f = f[len(f)-l.max:]
	}
	l.failures[addr] = f
	return true
}

// retryAfter is a Retry-After value: whole seconds, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(int(math.Ceil(d.Seconds())), 1))
}
