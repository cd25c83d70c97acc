package main

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// HTTP server limits: a client that opens connections and sends nothing,
// or keeps them open idle, must not take the file descriptors /healthz
// needs (a container's health check would then fail and restart ackd).
const (
	// httpMaxConns caps the open HTTP connections. Far above what a
	// scraper and a health checker use, far below a container's usual
	// 1024 file descriptors.
	httpMaxConns = 256
	// httpReadHeaderTimeout bounds the wait for a request's headers,
	// httpReadTimeout the read of a whole request (ackd takes no body).
	httpReadHeaderTimeout = 5 * time.Second
	httpReadTimeout       = 10 * time.Second
	// httpWriteTimeout bounds a response: /readyz waits at most
	// readyPingTimeout for Redis, /metrics reads only memory.
	httpWriteTimeout = 30 * time.Second
	// httpIdleTimeout closes a keep-alive connection with no request.
	httpIdleTimeout = 60 * time.Second
	// httpMaxHeaderBytes bounds a request's headers.
	httpMaxHeaderBytes = 16 << 10
)

// connLimit caps the connections of an http.Server. When a new connection
// would go over the cap, it closes the connection that has waited longest
// without a request under way (one that sent nothing yet, or an idle
// keep-alive one), so that a new client, such as a health check, is always
// served. Only when every connection is busy with a request is the new
// one closed instead.
type connLimit struct {
	max   int
	mu    sync.Mutex
	conns map[net.Conn]connInfo
}

type connInfo struct {
	state http.ConnState
	since time.Time
}

func newConnLimit(max int) *connLimit {
	return &connLimit{max: max, conns: make(map[net.Conn]connInfo)}
}

// listener wraps ln so that its Accept applies the cap.
func (l *connLimit) listener(ln net.Listener) net.Listener {
	return &limitedListener{Listener: ln, l: l}
}

// connState is the server's ConnState hook.
func (l *connLimit) connState(c net.Conn, s http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch s {
	case http.StateClosed, http.StateHijacked:
		delete(l.conns, c)
	default:
		if _, ok := l.conns[c]; ok {
			l.conns[c] = connInfo{state: s, since: time.Now()}
		}
	}
}

// admit records c, making room for it if needed; false means c must be
// closed.
func (l *connLimit) admit(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.conns) >= l.max {
		var victim net.Conn
		var oldest time.Time
		for vc, info := range l.conns {
			if info.state == http.StateActive {
				continue
			}
			if victim == nil || info.since.Before(oldest) {
				victim, oldest = vc, info.since
			}
		}
		if victim == nil {
			return false
		}
		delete(l.conns, victim)
		_ = victim.Close() // the server sees a read error and forgets it
	}
	l.conns[c] = connInfo{state: http.StateNew, since: time.Now()}
	return true
}

// open returns how many connections are counted.
func (l *connLimit) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

type limitedListener struct {
	net.Listener
	l *connLimit
}

func (ll *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ll.l.admit(c) {
			return c, nil
		}
		_ = c.Close()
	}
}
