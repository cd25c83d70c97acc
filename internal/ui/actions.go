package ui

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ackd/ackd/lease"
)

// cookieName holds the session of a browser that logged in with the token.
const cookieName = "ackd_ui_session"

// hasSession reports whether r carries the session cookie.
func (h *Handler) hasSession(r *http.Request) bool {
	c, err := r.Cookie(cookieName)
	return err == nil && h.session != "" && equal(c.Value, h.session)
}

// sameOrigin reports whether a browser says r comes from a page of this
// origin: Sec-Fetch-Site, where sent, must be same-origin, and Origin,
// where sent, must be this host. Browsers send at least one on a POST.
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return r.Header.Get("Sec-Fetch-Site") == "same-origin"
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host && (u.Scheme == "http" || u.Scheme == "https")
}

// authorize says who may act: "bearer" for an Authorization header with
// the token, "session" for a browser session whose form carries the CSRF
// token from a page of this origin. "" means refused.
func (h *Handler) authorize(r *http.Request) string {
	if h.cfg.Token == "" {
		return ""
	}
	if a := r.Header.Get("Authorization"); a != "" {
		tok, ok := strings.CutPrefix(a, "Bearer ")
		if ok && equal(tok, h.cfg.Token) {
			return "bearer"
		}
		return ""
	}
	if h.hasSession(r) && sameOrigin(r) && equal(r.PostFormValue("csrf"), h.csrf) {
		return "session"
	}
	return ""
}

// parseForm reads a bounded urlencoded form; false after writing a 400.
func (h *Handler) parseForm(w http.ResponseWriter, r *http.Request) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		h.fail(w, r, http.StatusBadRequest, "Bad request", "Actions take a URL-encoded form.")
		return false
	}
	if err := r.ParseForm(); err != nil {
		h.fail(w, r, http.StatusBadRequest, "Bad request", "The form was too large or malformed.")
		return false
	}
	return true
}

// act is one validated action.
type act struct {
	Action string // replay, purge, pause, resume
	Scope  string // replay and purge: selected, reason or all
	Reason string
	IDs    []string
}

func (a act) String() string {
	switch {
	case a.Action == "pause" || a.Action == "resume":
		return a.Action
	case a.Scope == "selected":
		return fmt.Sprintf("%s %d selected dead letters", a.Action, len(a.IDs))
	case a.Scope == "reason":
		return fmt.Sprintf("%s every dead letter with reason %q", a.Action, a.Reason)
	}
	return a.Action + " every dead letter"
}

// parseAct validates an action's form; the error is shown to the user.
func parseAct(action string, f url.Values) (act, error) {
	a := act{Action: action, Scope: f.Get("scope"), Reason: f.Get("reason"), IDs: f["id"]}
	switch action {
	case "pause", "resume":
		return act{Action: action}, nil
	case "replay", "purge":
	default:
		return a, errors.New("unknown action")
	}
	switch a.Scope {
	case "selected":
		if len(a.IDs) == 0 {
			return a, errors.New("select at least one dead letter")
		}
		if len(a.IDs) > lease.MaxBatch {
			return a, fmt.Errorf("at most %d dead letters at once", lease.MaxBatch)
		}
		for _, id := range a.IDs {
			if lease.ValidateDeadLetterID(id) != nil {
				return a, errors.New("a selected id is not a dead-letter id")
			}
		}
		a.Reason = ""
	case "reason":
		if lease.ValidateReason(a.Reason) != nil {
			return a, errors.New("a reason is 1 to 32 lowercase letters")
		}
		a.IDs = nil
	case "all":
		a.Reason, a.IDs = "", nil
	default:
		return a, errors.New("scope must be selected, reason or all")
	}
	return a, nil
}

type confirmData struct {
	base
	Queue string
	Act   act
	What  string
	Count string
}

// action runs replay, purge, pause or resume on a queue. Without
// confirmed=1 it shows a confirmation page first.
func (h *Handler) action(w http.ResponseWriter, r *http.Request) {
	if !h.parseForm(w, r) {
		return
	}
	// A bearer header is a token guess like a login: the same limit per
	// address applies, before the token is even compared.
	bearer := r.Header.Get("Authorization") != "" && h.cfg.Token != ""
	addr := clientAddr(r)
	var who string
	if !bearer {
		who = h.authorize(r)
	} else if wait, _ := h.logins.attempt(addr, func() bool { who = h.authorize(r); return who != "" }); wait > 0 {
		h.log.Warn("ui: action refused: too many wrong tokens", "path", r.URL.Path, "remote", r.RemoteAddr)
		w.Header().Set("Retry-After", retryAfter(wait))
		h.fail(w, r, http.StatusTooManyRequests, "Too many wrong tokens",
			"Too many wrong tokens from your address: try again in "+dur(wait.Round(time.Second))+".")
		return
	}
	if who == "" {
		h.log.Warn("ui: action refused", "path", r.URL.Path, "remote", r.RemoteAddr, "read_only", h.cfg.Token == "")
		text := "Log in with ackd's UI token to act on queues."
		if h.cfg.Token == "" {
			text = "This dashboard is read-only: set ACKD_UI_TOKEN to allow actions."
		}
		h.fail(w, r, http.StatusForbidden, "Not allowed", text)
		return
	}
	q := r.PathValue("queue")
	a, err := parseAct(r.PathValue("action"), r.PostForm)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, "Bad request", "Cannot do that: "+err.Error()+".")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), actionTimeout)
	defer cancel()
	if !h.found(ctx, w, r, q) {
		return
	}
	if r.PostForm.Get("confirmed") != "1" {
		h.confirm(ctx, w, r, q, a)
		return
	}
	start := time.Now()
	n, err := h.run(ctx, q, a)
	log := h.log.With("action", a.Action, "queue", q, "scope", a.Scope, "reason", a.Reason,
		"by", who, "remote", r.RemoteAddr, "num", n, "took", time.Since(start).String())
	if err != nil && !errors.Is(err, lease.ErrNotHeld) {
		log.Error("ui: action failed", "error", err)
		h.redisFailed(w, r, a.Action+" (done so far: "+fmt.Sprint(n)+")", err)
		return
	}
	log.Info("ui: action")
	msg := fmt.Sprintf("%s: %d", a.Action, n)
	switch {
	case a.Action == "pause" || a.Action == "resume":
		msg = a.Action + "d" // paused, resumed
	case errors.Is(err, lease.ErrNotHeld):
		msg += " (some were no longer dead letters)"
	}
	http.Redirect(w, r, h.cfg.Prefix+"q/"+url.PathEscape(q)+"?msg="+url.QueryEscape(msg), http.StatusSeeOther)
}

// run does a on queue q and returns how many messages it moved.
func (h *Handler) run(ctx context.Context, q string, a act) (int, error) {
	switch {
	case a.Action == "pause":
		_, err := h.admin.Pause(ctx, q)
		return 0, err
	case a.Action == "resume":
		_, err := h.admin.Resume(ctx, q)
		return 0, err
	case a.Scope == "selected" && a.Action == "replay":
		return h.admin.Replay(ctx, q, a.IDs...)
	case a.Scope == "selected":
		return h.admin.Purge(ctx, q, a.IDs...)
	case a.Action == "replay":
		return h.admin.ReplayAll(ctx, q, &lease.DeadOpts{Reason: a.Reason})
	}
	return h.admin.PurgeAll(ctx, q, &lease.DeadOpts{Reason: a.Reason})
}

func (h *Handler) confirm(ctx context.Context, w http.ResponseWriter, r *http.Request, q string, a act) {
	d := confirmData{base: h.base(r, "Confirm"), Queue: q, Act: a, What: a.String()}
	if d.CSRF == "" && h.hasSession(r) {
		d.CSRF = h.csrf
	}
	switch {
	case a.Scope == "selected":
		d.Count = fmt.Sprint(len(a.IDs))
	case a.Scope == "all":
		if s, err := h.admin.Stats(ctx, q); err == nil {
			d.Count = fmt.Sprint(s.Dead)
		}
	case a.Scope == "reason":
		if s, err := h.admin.Stats(ctx, q); err == nil && s.Dead <= maxGroupedDead {
			if m, err := h.admin.DeadReasons(ctx, q); err == nil {
				d.Count = fmt.Sprint(m[a.Reason])
			}
		}
	}
	h.render(w, http.StatusOK, "confirm", d)
}

type loginData struct {
	base
	Next  string
	Error string
}

// next is where a login returns to: a page of the dashboard only.
func (h *Handler) next(v string) string {
	if !strings.HasPrefix(v, h.cfg.Prefix) || strings.HasPrefix(v, "//") || strings.ContainsAny(v, "\\\r\n") {
		return h.cfg.Prefix
	}
	return v
}

func (h *Handler) loginForm(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Token == "" {
		h.fail(w, r, http.StatusNotFound, "Read-only dashboard", "No ACKD_UI_TOKEN is set, so there is nothing to log in to.")
		return
	}
	h.render(w, http.StatusOK, "login", loginData{base: h.base(r, "Log in"), Next: h.next(r.URL.Query().Get("next"))})
}

func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	if h.cfg.Token == "" {
		h.fail(w, r, http.StatusNotFound, "Read-only dashboard", "No ACKD_UI_TOKEN is set, so there is nothing to log in to.")
		return
	}
	if !h.parseForm(w, r) {
		return
	}
	next := h.next(r.PostForm.Get("next"))
	addr := clientAddr(r)
	wait, ok := h.logins.attempt(addr, func() bool {
		return sameOrigin(r) && equal(r.PostForm.Get("token"), h.cfg.Token)
	})
	if wait > 0 {
		h.log.Warn("ui: login refused: too many wrong tokens", "remote", r.RemoteAddr)
		w.Header().Set("Retry-After", retryAfter(wait))
		h.render(w, http.StatusTooManyRequests, "login", loginData{base: h.base(r, "Log in"), Next: next,
			Error: "Too many wrong tokens from your address: try again in " + dur(wait.Round(time.Second)) + "."})
		return
	}
	if !ok {
		h.log.Warn("ui: login refused", "remote", r.RemoteAddr)
		h.render(w, http.StatusForbidden, "login", loginData{base: h.base(r, "Log in"), Next: next, Error: "That token is not ackd's UI token."})
		return
	}
	h.log.Info("ui: login", "remote", r.RemoteAddr)
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: h.session, Path: h.cfg.Prefix,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: 12 * 3600})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	if !h.parseForm(w, r) {
		return
	}
	if !sameOrigin(r) {
		h.fail(w, r, http.StatusForbidden, "Not allowed", "Log out from the dashboard's own page.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Path: h.cfg.Prefix, HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, h.cfg.Prefix, http.StatusSeeOther)
}
