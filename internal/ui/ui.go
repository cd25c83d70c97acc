// Package ui is ackd's web dashboard: an overview of every watched queue
// and the daemon's health, a page per queue with its leases, delayed
// messages and dead letters, and the operator actions of package lease
// (replay, purge, pause, resume) behind a token. Everything it serves is
// embedded in the binary; the pages fetch nothing but their own origin.
package ui

import (
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/ackd/ackd/fallback"
	"github.com/ackd/ackd/lease"
	"github.com/ackd/ackd/reaper"
)

//go:embed assets
var assets embed.FS

// Source is what the dashboard reads of the daemon; *reaper.Reaper is one.
type Source interface {
	Queues() []reaper.QueueStats
	Subscribed() bool
	RedisUp() bool
	Events() reaper.EventsStatus
	Stats() reaper.Stats
}

// Admin is the part of *lease.Client the dashboard uses.
type Admin interface {
	Stats(ctx context.Context, queue string) (lease.Stats, error)
	StatsMany(ctx context.Context, queues []string) ([]lease.Stats, []error)
	Known(ctx context.Context, queue string) (bool, error)
	Peek(ctx context.Context, queue string, state lease.State, opts *lease.PeekOpts) (lease.Page, error)
	DeadReasons(ctx context.Context, queue string) (map[string]int64, error)
	Replay(ctx context.Context, queue string, ids ...string) (int, error)
	Purge(ctx context.Context, queue string, ids ...string) (int, error)
	ReplayAll(ctx context.Context, queue string, opts *lease.DeadOpts) (int, error)
	PurgeAll(ctx context.Context, queue string, opts *lease.DeadOpts) (int, error)
	Pause(ctx context.Context, queue string) (bool, error)
	Resume(ctx context.Context, queue string) (bool, error)
}

// Config configures the dashboard.
type Config struct {
	// Token, if set, allows actions to whoever presents it; empty keeps
	// the dashboard read-only.
	Token string
	// Payloads shows the first PreviewBytes of payloads.
	Payloads bool
	// Recorder holds the rates and the lag histogram; nil: a new one,
	// which the caller must then feed (see Handler.Recorder).
	Recorder *Recorder
	Logger   *slog.Logger
	// Version is shown in the footer.
	Version string
	// Prefix is where the dashboard is mounted. Defaults to "/ui/".
	Prefix string
	// ViewedWindow is how long Sample goes on reading queues after the
	// dashboard was last viewed. Defaults to ViewedWindowDefault.
	ViewedWindow time.Duration
	// LoginFailures is how many wrong tokens one client address may send
	// per LoginWindow before the login form answers 429. Defaults to
	// LoginFailuresDefault and LoginWindowDefault.
	LoginFailures int
	LoginWindow   time.Duration
}

// Bounds of what the pages show and accept.
const (
	PreviewBytes   = 256 // payload bytes shown per message
	PageSize       = 50  // messages per page
	maxFormBytes   = 64 << 10
	maxGroupedDead = 50000 // dead sets larger than this are not grouped by reason
	actionTimeout  = 30 * time.Second
	pageTimeout    = 5 * time.Second
)

// Handler serves the dashboard.
type Handler struct {
	src   Source
	admin Admin
	cfg   Config
	log   *slog.Logger
	rec   *Recorder
	tmpl  map[string]*template.Template
	mux   *http.ServeMux
	// session and csrf are derived from the token: a session cookie
	// holds session, forms carry csrf.
	session, csrf string
	views         views
	logins        *loginLimiter
}

// New returns the dashboard over src and admin.
func New(src Source, admin Admin, cfg *Config) (*Handler, error) {
	var c Config
	if cfg != nil {
		c = *cfg
	}
	c.Prefix = cmp.Or(c.Prefix, "/ui/")
	c.ViewedWindow = cmp.Or(c.ViewedWindow, ViewedWindowDefault)
	c.LoginFailures = cmp.Or(c.LoginFailures, LoginFailuresDefault)
	c.LoginWindow = cmp.Or(c.LoginWindow, LoginWindowDefault)
	if c.ViewedWindow < 0 || c.LoginFailures < 0 || c.LoginWindow < 0 {
		return nil, errors.New("ui: negative ViewedWindow, LoginFailures or LoginWindow")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Recorder == nil {
		c.Recorder = NewRecorder(0, 0, nil)
	}
	if src == nil || admin == nil {
		return nil, errors.New("ui: nil source or admin")
	}
	h := &Handler{src: src, admin: admin, cfg: c, log: c.Logger.With("component", "ui"), rec: c.Recorder,
		logins: newLoginLimiter(c.LoginFailures, c.LoginWindow)}
	if c.Token != "" {
		h.session = derive(c.Token, "session")
		h.csrf = derive(c.Token, "csrf")
	}
	var err error
	if h.tmpl, err = parseTemplates(); err != nil {
		return nil, err
	}
	h.routes()
	return h, nil
}

// Recorder returns the Recorder the dashboard draws from.
func (h *Handler) Recorder() *Recorder { return h.rec }

func derive(token, what string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("ackd-ui-" + what))
	return hex.EncodeToString(m.Sum(nil))
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func parseTemplates() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"ago":   ago,
		"until": until,
		"stamp": stamp,
		"dur":   dur,
		"num":   num,
		"rate":  rate,
		"add":   func(a, b int) int { return a + b },
		"pager": func(d queueData, name string, s section) pagerView { return pagerView{d: d, Name: name, S: s} },
	}
	out := map[string]*template.Template{}
	for _, page := range []string{"overview", "queue", "confirm", "message", "login"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(assets, "assets/templates/layout.html", "assets/templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("ui: templates: %w", err)
		}
		out[page] = t
	}
	return out, nil
}

func (h *Handler) routes() {
	static, _ := fs.Sub(assets, "assets/static")
	p := h.cfg.Prefix
	mux := http.NewServeMux()
	mux.Handle("GET "+p+"static/", http.StripPrefix(p+"static/", cacheStatic(http.FileServerFS(static))))
	mux.HandleFunc("GET "+p+"{$}", h.overview)
	mux.HandleFunc("GET "+p+"api/overview", h.overviewJSON)
	mux.HandleFunc("GET "+p+"q/{queue}", h.queue)
	mux.HandleFunc("GET "+p+"api/q/{queue}", h.queueJSON)
	mux.HandleFunc("POST "+p+"q/{queue}/{action}", h.action)
	mux.HandleFunc("GET "+p+"login", h.loginForm)
	mux.HandleFunc("POST "+p+"login", h.login)
	mux.HandleFunc("POST "+p+"logout", h.logout)
	mux.HandleFunc(p, func(w http.ResponseWriter, r *http.Request) {
		h.fail(w, r, http.StatusNotFound, "Not found", "There is no page at this address.")
	})
	h.mux = mux
}

func cacheStatic(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		next.ServeHTTP(w, r)
	})
}

// ServeHTTP serves the dashboard with headers that keep the pages to
// their own origin: a Content-Security-Policy allowing nothing from
// elsewhere, no framing, no sniffing.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "same-origin")
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			h.log.Error("ui: handler panicked", "path", r.URL.Path, "panic", fmt.Sprint(v))
			h.fail(w, r, http.StatusInternalServerError, "Something went wrong", "ackd logged the details.")
		}
	}()
	h.mux.ServeHTTP(w, r)
}

// lastScan is the scanner's last scan, for the health panel.
func lastScan(s fallback.ScannerStats) (time.Time, time.Duration) { return s.LastScan, s.LastDuration }

// SessionValue is the session cookie's value for token (for tests and
// tools that log in without the form).
func SessionValue(token string) string { return derive(token, "session") }
