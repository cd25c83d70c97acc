package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/redistest"
)

// TestHealthzUnderIdleFlood: 1,100 idle connections (half sent nothing,
// half are idle keep-alive connections after a request) do not stop
// /healthz from answering: the oldest idle ones are closed to make room.
func TestHealthzUnderIdleFlood(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, nil)
	addr := strings.TrimPrefix(in.base, "http://")

	const flood = 1100
	conns := make([]net.Conn, flood)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
	})
	// Open them in order, so that conns[0] is the oldest.
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns[i] = c
	}
	// Every other one sends a keep-alive request and reads the answer (or
	// finds itself closed already), then stays idle.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 1; i < flood; i += 2 {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			c := conns[i]
			_ = c.SetDeadline(time.Now().Add(waitTimeout))
			if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				return // closed to make room
			}
			if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
			}
			_ = c.SetDeadline(time.Time{})
		})
	}
	wg.Wait()

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var worst time.Duration
	for range 5 {
		start := time.Now()
		resp, err := client.Get(in.base + "/healthz")
		if err != nil {
			t.Fatalf("/healthz under %d idle connections: %v", flood, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/healthz under %d idle connections: %s", flood, resp.Status)
		}
		worst = max(worst, time.Since(start))
	}
	t.Logf("/healthz under %d idle connections: slowest of 5 took %v", flood, worst)

	// The oldest connection was closed by ackd to make room.
	_ = conns[0].SetReadDeadline(time.Now().Add(waitTimeout))
	if n, err := conns[0].Read(make([]byte, 1)); err == nil {
		t.Errorf("the oldest idle connection is still open (read %d bytes)", n)
	}
}

// TestConnLimitKeepsBusyConnections: at the cap, a connection with a
// request under way is never closed; the new one is, when all are busy.
func TestConnLimitKeepsBusyConnections(t *testing.T) {
	t.Parallel()
	l := newConnLimit(2)
	a, b, c := pipeConn(t), pipeConn(t), pipeConn(t)
	for _, x := range []net.Conn{a, b} {
		if !l.admit(x) {
			t.Fatal("admit under the cap refused")
		}
		l.connState(x, http.StateActive)
	}
	if l.admit(c) {
		t.Fatal("admitted over the cap while every connection is busy")
	}
	l.connState(a, http.StateIdle)
	if !l.admit(c) {
		t.Fatal("an idle connection was not closed to make room")
	}
	if _, err := a.Write([]byte{1}); err == nil {
		t.Error("the idle connection was not closed")
	}
	if got := l.open(); got != 2 {
		t.Errorf("open = %d, want 2", got)
	}
}

func pipeConn(t *testing.T) net.Conn {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a
}
