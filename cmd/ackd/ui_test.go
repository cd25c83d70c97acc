package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ackd/ackd/internal/acldoc"
	"github.com/ackd/ackd/internal/redistest"
	"github.com/ackd/ackd/internal/ui"
	"github.com/ackd/ackd/lease"
)

// uiToken is the ACKD_UI_TOKEN of the dashboard tests.
const uiToken = "test-token-0123456789abcdef"

// uiSeed is what seedUI put in Redis.
type uiSeed struct {
	failed, killed []string // ids of dead letters by reason
	inFlight       []string
}

// seedUI fills queue "orders" with 5 ready, 2 in flight, 3 delayed and
// 4 dead letters (3 failed, 1 killed), "emails" with 1 ready, and a
// paused "billing" with 2 ready.
func seedUI(t *testing.T, lc *lease.Client) uiSeed {
	t.Helper()
	ctx := t.Context()
	var s uiSeed
	push := func(q, payload string, o *lease.PushOpts) string {
		id, err := lc.Push(ctx, q, []byte(payload), o)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	take := func(q string) *lease.Lease {
		l, err := lc.Take(ctx, q, &lease.TakeOpts{LeaseFor: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	// Dead letters first: they are taken from the head.
	for i := range 4 {
		push("orders", fmt.Sprintf(`{"order":%d,"note":"<b>bold</b>"}`, i), nil)
		l := take("orders")
		var err error
		if i < 3 {
			err = l.Fail(ctx, errors.New("card declined"))
			s.failed = append(s.failed, l.ID)
		} else {
			err = l.DeadLetter(ctx)
			s.killed = append(s.killed, l.ID)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		push("orders", fmt.Sprintf("working-%d", i), nil)
		s.inFlight = append(s.inFlight, take("orders").ID)
	}
	for i := range 5 {
		push("orders", fmt.Sprintf("ready-%d", i), nil)
	}
	push("orders", "\x00\x01\x02binary", nil)
	for i := range 3 {
		push("orders", fmt.Sprintf("later-%d", i), &lease.PushOpts{Delay: time.Hour})
	}
	push("emails", "hello", nil)
	push("billing", "b1", nil)
	push("billing", "b2", nil)
	if _, err := lc.Pause(ctx, "billing"); err != nil {
		t.Fatal(err)
	}
	return s
}

// post sends a form to the dashboard of in, with headers, and returns the
// status and body.
func (in *instance) post(t *testing.T, path string, form url.Values, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, in.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// deadCount reads queue's dead letters in one script.
func deadCount(t *testing.T, lc *lease.Client, queue string) int64 {
	t.Helper()
	s, err := lc.Stats(t.Context(), queue)
	if err != nil {
		t.Fatal(err)
	}
	return s.Dead
}

// noGoErrors fails t if body looks like it shows a Go error or trace.
func noGoErrors(t *testing.T, what, body string) {
	t.Helper()
	for _, s := range []string{"goroutine ", "panic", "lease: ", "redis: ", ".go:"} {
		if strings.Contains(body, s) {
			t.Errorf("%s shows %q:\n%s", what, s, body)
		}
	}
}

func TestUIBadInput(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lc := newLeaseClient(t, srv)
	seed := seedUI(t, lc)
	in := startAckd(t, srv, map[string]string{"ACKD_UI_TOKEN": uiToken})
	in.waitUI(t)
	ro := startAckd(t, srv, nil)
	ro.waitUI(t)
	bearer := map[string]string{"Authorization": "Bearer " + uiToken}
	all := url.Values{"scope": {"all"}, "confirmed": {"1"}}

	for _, tc := range []struct {
		name, path string
		want       int
	}{
		{"unknown queue", "/ui/q/nosuchqueue", 404},
		{"bad queue name", "/ui/q/" + strings.Repeat("x", 300), 404},
		{"unknown page", "/ui/nothing/here", 404},
		{"bad offset", "/ui/q/orders?dead=-1", 400},
		{"bad reason", "/ui/q/orders?reason=NOT%20A%20REASON", 400},
		{"known queue", "/ui/q/orders", 200},
		{"overview", "/ui/", 200},
	} {
		code, body := in.get(t, tc.path)
		if code != tc.want {
			t.Errorf("%s: GET %s = %d, want %d", tc.name, tc.path, code, tc.want)
		}
		noGoErrors(t, tc.path, body)
	}

	// Refused actions change nothing.
	for _, tc := range []struct {
		name    string
		in      *instance
		headers map[string]string
	}{
		{"read-only dashboard, bearer", ro, bearer},
		{"no token", in, nil},
		{"wrong bearer", in, map[string]string{"Authorization": "Bearer wrong-token-0123456789"}},
		{"cookie without csrf", in, map[string]string{"Cookie": "ackd_ui_session=" + strings.Repeat("0", 64)}},
	} {
		code, body := tc.in.post(t, "/ui/q/orders/purge", all, tc.headers)
		if code != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403", tc.name, code)
		}
		noGoErrors(t, tc.name, body)
	}
	// A session cookie is not enough from another site, or without the
	// form's CSRF token.
	code, _ := in.post(t, "/ui/login", url.Values{"token": {uiToken}}, map[string]string{"Origin": in.base})
	if code != http.StatusSeeOther {
		t.Fatalf("login: %d", code)
	}
	session := "ackd_ui_session=" + ui.SessionValue(uiToken)
	for _, h := range []map[string]string{
		{"Cookie": session, "Origin": "http://evil.example"},
		{"Cookie": session, "Sec-Fetch-Site": "cross-site"},
		{"Cookie": session, "Origin": in.base}, // no csrf field
	} {
		if code, _ := in.post(t, "/ui/q/orders/purge", all, h); code != http.StatusForbidden {
			t.Errorf("POST with %v: %d, want 403", h, code)
		}
	}
	if code, _ := in.post(t, "/ui/login", url.Values{"token": {"wrong"}}, map[string]string{"Origin": in.base}); code != http.StatusForbidden {
		t.Errorf("login with a wrong token: %d, want 403", code)
	}
	if n := deadCount(t, lc, "orders"); n != 4 {
		t.Fatalf("dead letters after refused actions: %d, want 4", n)
	}

	// Malformed or oversized input: 400, nothing changed.
	for name, form := range map[string]url.Values{
		"bad scope":    {"scope": {"some"}, "confirmed": {"1"}},
		"bad reason":   {"scope": {"reason"}, "reason": {"Not-A-Reason"}, "confirmed": {"1"}},
		"bad id":       {"scope": {"selected"}, "id": {"../../etc"}, "confirmed": {"1"}},
		"no ids":       {"scope": {"selected"}, "confirmed": {"1"}},
		"too many ids": {"scope": {"selected"}, "id": make([]string, lease.MaxBatch+1), "confirmed": {"1"}},
		"oversized":    {"scope": {"all"}, "x": {strings.Repeat("a", 70<<10)}, "confirmed": {"1"}},
		"id with junk": {"scope": {"selected"}, "id": {seed.failed[0] + "%zz"}, "confirmed": {"1"}},
	} {
		if code, body := in.post(t, "/ui/q/orders/purge", form, bearer); code != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", name, code)
		} else {
			noGoErrors(t, name, body)
		}
	}
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, in.base+"/ui/q/orders/purge", strings.NewReader("scope=all&confirmed=1&%zz"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+uiToken)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed form: %v %v, want 400", resp, err)
	} else {
		resp.Body.Close()
	}
	if code, _ := in.post(t, "/ui/q/orders/explode", all, bearer); code != http.StatusBadRequest {
		t.Errorf("unknown action: %d, want 400", code)
	}
	if code, _ := in.post(t, "/ui/q/nosuchqueue/purge", all, bearer); code != http.StatusNotFound {
		t.Errorf("action on an unknown queue: %d, want 404", code)
	}
	if n := deadCount(t, lc, "orders"); n != 4 {
		t.Fatalf("dead letters after bad requests: %d, want 4", n)
	}

	// Without confirmed=1 an action only asks.
	if code, body := in.post(t, "/ui/q/orders/purge", url.Values{"scope": {"all"}}, bearer); code != 200 || !strings.Contains(body, "Yes, purge every dead letter") {
		t.Errorf("unconfirmed purge: %d\n%s", code, body)
	}
	// A script with the bearer token acts, and the action is logged.
	code, _ = in.post(t, "/ui/q/orders/purge", url.Values{"scope": {"selected"}, "id": {seed.killed[0]}, "confirmed": {"1"}}, bearer)
	if code != http.StatusSeeOther {
		t.Fatalf("bearer purge: %d", code)
	}
	if n := deadCount(t, lc, "orders"); n != 3 {
		t.Errorf("dead letters after purging one: %d, want 3", n)
	}
	logged := in.log.find("ui: action")
	if len(logged) != 1 || logged[0]["by"] != "bearer" || logged[0]["num"] != float64(1) || logged[0]["action"] != "purge" || logged[0]["queue"] != "orders" {
		t.Errorf("action log: %v", logged)
	}
	if strings.Contains(in.log.String(), uiToken) {
		t.Error("the log shows the token")
	}
}

func TestUIPayloadPreviews(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lc := newLeaseClient(t, srv)
	seedUI(t, lc)
	off := startAckd(t, srv, nil)
	off.waitUI(t)
	on := startAckd(t, srv, map[string]string{"ACKD_UI_PAYLOADS": "true"})
	on.waitUI(t)
	_, body := off.get(t, "/ui/q/orders")
	if strings.Contains(body, "order&#34;") || strings.Contains(body, "bold") {
		t.Errorf("payloads shown while ACKD_UI_PAYLOADS is off:\n%s", body)
	}
	_, body = on.get(t, "/ui/q/orders")
	if !strings.Contains(body, "&lt;b&gt;bold&lt;/b&gt;") || strings.Contains(body, "<b>bold") {
		t.Errorf("payload preview not shown escaped:\n%s", body)
	}
}

func TestUIOff(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, map[string]string{"ACKD_UI": "false"})
	if code, _ := in.get(t, "/ui/"); code != http.StatusNotFound {
		t.Errorf("GET /ui/ with ACKD_UI=false: %d, want 404", code)
	}
	for env, want := range map[string]string{
		"short":                "ACKD_UI_TOKEN: too short",
		"0123456789 abcdefghi": "ACKD_UI_TOKEN: contains spaces",
	} {
		_, err := loadConfig(map[string]string{"ACKD_UI_TOKEN": env})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ACKD_UI_TOKEN=%q: %v, want %q", env, err, want)
		}
	}
	if _, err := loadConfig(map[string]string{"ACKD_UI": "false", "ACKD_UI_TOKEN": uiToken}); err == nil || strings.Contains(err.Error(), uiToken) {
		t.Errorf("ACKD_UI=false with a token: %v", err)
	}
}

// TestUIAsDaemonUser runs ackd as the ackd-daemon ACL user of
// docs/SECURITY.md: the overview works, and a queue page says that
// Redis refused instead of failing obscurely.
func TestUIAsDaemonUser(t *testing.T) {
	t.Parallel()
	users, err := acldoc.Read(filepath.Join("..", "..", "docs", "SECURITY.md"))
	if err != nil {
		t.Fatal(err)
	}
	srv := redistest.Start(t)
	seedUI(t, newLeaseClient(t, srv))
	u := users["ackd-daemon"]
	srv.SetUser(t, u.Name, u.Password, u.Rules...)
	in := startAckd(t, srv, map[string]string{
		"ACKD_REDIS_URL":        "redis://" + u.Name + ":" + u.Password + "@" + srv.Addr() + "/0",
		"ACKD_CONFIGURE_EVENTS": "false",
	})
	redistest.WaitFor(t, waitTimeout, func() bool {
		_, body := in.get(t, "/ui/api/overview")
		return strings.Contains(body, `"queue":"orders"`)
	}, "the overview to list orders")
	code, body := in.get(t, "/ui/q/orders")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "lacks the rights") {
		t.Errorf("queue page as the daemon user: %d\n%s", code, body)
	}
	noGoErrors(t, "queue page as the daemon user", body)
}

// waitUI waits until the dashboard is served: ackd serves HTTP before it
// first reaches Redis, and /ui/ answers 503 until then.
func (in *instance) waitUI(t *testing.T) {
	t.Helper()
	redistest.WaitFor(t, startTimeout, func() bool {
		code, _ := in.get(t, "/ui/")
		return code != http.StatusServiceUnavailable
	}, "the dashboard served")
}

// TestUIRates: the rates the dashboard shows are what producers,
// consumers and operators did, read from the queue's counts.
func TestUIRates(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lc := newLeaseClient(t, srv)
	ctx := t.Context()
	const q = "rates"
	if _, err := lc.Push(ctx, q, []byte("before"), nil); err != nil {
		t.Fatal(err)
	}
	in := startAckd(t, srv, nil)
	in.waitUI(t)
	// The first reading (the start's scan, then this page) is the baseline.
	redistest.WaitFor(t, scanTimeout, func() bool {
		code, body := in.get(t, "/ui/api/q/"+q)
		return code == http.StatusOK && strings.Contains(body, `"ready":1,`)
	}, "the queue page to count the first message")

	// 10 pushed; 4 taken: 3 acked, 1 dead-lettered, replayed; 1 more
	// dead-lettered and purged.
	if _, err := lc.PushBatch(ctx, q, make([][]byte, 10), nil); err != nil {
		t.Fatal(err)
	}
	ls, err := lc.TakeBatch(ctx, q, 4, nil)
	if err != nil || len(ls) != 4 {
		t.Fatalf("take 4: %d, %v", len(ls), err)
	}
	for _, l := range ls[:3] {
		if err := l.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := ls[3].DeadLetter(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := lc.ReplayAll(ctx, q, nil); n != 1 || err != nil {
		t.Fatalf("replay: %d, %v", n, err)
	}
	l, err := lc.Take(ctx, q, nil)
	if err != nil || l == nil {
		t.Fatalf("take: %v, %v", l, err)
	}
	if err := l.DeadLetter(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := lc.PurgeAll(ctx, q, nil); n != 1 || err != nil {
		t.Fatalf("purge: %d, %v", n, err)
	}

	var got ui.Sample
	redistest.WaitFor(t, waitTimeout, func() bool {
		var page struct{ Series []ui.Sample }
		code, body := in.get(t, "/ui/api/q/"+q)
		if code != http.StatusOK || json.Unmarshal([]byte(body), &page) != nil {
			t.Fatalf("GET /ui/api/q/%s: %d %s", q, code, body)
		}
		got = ui.Sample{}
		for _, s := range page.Series {
			got.Pushed += s.Pushed
			got.Acked += s.Acked
			got.DeadLettered += s.DeadLettered
		}
		return got == ui.Sample{Pushed: 10, Acked: 3, DeadLettered: 2}
	}, "the queue's series to add up to 10 pushed, 3 acked, 2 dead-lettered (last: %+v)", &got)

	// The overview shows the same queue's rates and small charts.
	var ov struct {
		Queues []struct {
			ui.QueueCounts
			ui.Rates
			Spark ui.Spark `json:"spark"`
		} `json:"queues"`
		SparkInterval float64 `json:"spark_interval_seconds"`
	}
	// The overview lists the queues the reaper has swept, which it may not
	// have done yet: wait for the queue's row.
	var body string
	redistest.WaitFor(t, waitTimeout, func() bool {
		ov.Queues = nil
		_, body = in.get(t, "/ui/api/overview")
		if err := json.Unmarshal([]byte(body), &ov); err != nil || len(ov.Queues) > 1 {
			t.Fatalf("overview: %v\n%s", err, body)
		}
		return len(ov.Queues) == 1
	}, "the overview to list %s (last: %s)", q, &body)
	row := ov.Queues[0]
	var sparkPushed int64
	for _, n := range row.Spark.Pushed {
		sparkPushed += n
	}
	if row.Queue != q || sparkPushed != 10 || len(row.Spark.Acked) != ui.SparkPoints || ov.SparkInterval <= 0 {
		t.Errorf("overview row %+v (spark interval %v s): want %s with 10 pushed in its spark", row, ov.SparkInterval, q)
	}
}

// TestUIJSONNamesAsCLI: the dashboard's JSON and `ackd stats --json` name
// a queue's counts alike, with the same values.
func TestUIJSONNamesAsCLI(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lc := newLeaseClient(t, srv)
	seedUI(t, lc)
	in := startAckd(t, srv, nil)
	in.waitUI(t)
	cli := &cliBundle{srv: srv, rdb: srv.Client(t), c: lc}

	var stats struct{ Queues []map[string]any }
	if err := json.Unmarshal([]byte(cli.ok(t, "stats", "--json", "orders")), &stats); err != nil || len(stats.Queues) != 1 {
		t.Fatalf("ackd stats --json orders: %v, %v", stats, err)
	}
	fromCLI := stats.Queues[0]
	var fromUI map[string]any
	_, body := in.get(t, "/ui/api/q/orders")
	if err := json.Unmarshal([]byte(body), &fromUI); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"queue", "ready", "in_flight", "delayed", "dead", "paused", "oldest_ready_age_seconds"} {
		a, okA := fromCLI[k]
		b, okB := fromUI[k]
		if !okA || !okB {
			t.Errorf("field %q: in the CLI's JSON %v, in the dashboard's %v", k, okA, okB)
			continue
		}
		if k == "oldest_ready_age_seconds" {
			continue // read a moment apart
		}
		if a != b {
			t.Errorf("field %q: CLI %v, dashboard %v", k, a, b)
		}
	}
	for k := range fromUI {
		if strings.HasSuffix(k, "_s") || strings.HasSuffix(k, "_ps") {
			t.Errorf("dashboard field %q: units are spelt out (_seconds, _per_second)", k)
		}
	}
}

// TestUILoginRateLimit: wrong tokens from one address are limited; right
// ones do not count.
func TestUILoginRateLimit(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, map[string]string{"ACKD_UI_TOKEN": uiToken})
	in.waitUI(t)
	origin := map[string]string{"Origin": in.base}
	login := func(token string) (int, string) {
		t.Helper()
		return in.post(t, "/ui/login", url.Values{"token": {token}}, origin)
	}
	for i := range ui.LoginFailuresDefault - 1 {
		if code, _ := login("wrong"); code != http.StatusForbidden {
			t.Fatalf("wrong token %d: %d, want 403", i+1, code)
		}
	}
	if code, _ := login(uiToken); code != http.StatusSeeOther {
		t.Fatalf("right token after %d wrong ones: %d, want 303", ui.LoginFailuresDefault-1, code)
	}
	if code, _ := login("wrong"); code != http.StatusForbidden {
		t.Fatalf("wrong token %d: %d, want 403 (right tokens do not count)", ui.LoginFailuresDefault, code)
	}
	// The limit is reached: every login waits, the right token too (else
	// the answers would tell a guesser when it guessed right).
	for _, tok := range []string{"wrong", uiToken} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, in.base+"/ui/login", strings.NewReader(url.Values{"token": {tok}}.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", in.base)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != http.StatusTooManyRequests || err != nil || ra < 1 || ra > 60 {
			t.Errorf("login past the limit: %d, Retry-After %q; want 429 and 1 to 60 s", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		if !strings.Contains(string(b), "Too many wrong tokens") {
			t.Errorf("429 page lacks the reason:\n%s", b)
		}
		if resp.Header.Get("Set-Cookie") != "" {
			t.Errorf("a session cookie past the limit")
		}
	}
}

// TestUIBearerRateLimit: wrong bearer tokens on the action endpoints count
// against the same per-address limit as logins; past it even the right
// token waits (429 with Retry-After) and nothing changes.
func TestUIBearerRateLimit(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	in := startAckd(t, srv, map[string]string{"ACKD_UI_TOKEN": uiToken})
	in.waitUI(t)
	if err := srv.Client(t).RPush(t.Context(), lease.KeysFor("limited").Ready, "m").Err(); err != nil {
		t.Fatal(err)
	}
	lc, err := lease.New(srv.Client(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := lc.Register(t.Context(), "limited"); err != nil {
		t.Fatal(err)
	}
	pause := func(token string) (int, string) {
		t.Helper()
		return in.post(t, "/ui/q/limited/pause", url.Values{"confirmed": {"1"}}, map[string]string{"Authorization": "Bearer " + token})
	}
	for i := range ui.LoginFailuresDefault {
		if code, _ := pause("wrong-token-0123456789"); code != http.StatusForbidden {
			t.Fatalf("wrong bearer %d: %d, want 403", i+1, code)
		}
	}
	for _, tok := range []string{"wrong-token-0123456789", uiToken} {
		if code, body := pause(tok); code != http.StatusTooManyRequests || !strings.Contains(body, "Too many wrong tokens") {
			t.Errorf("bearer past the limit: %d, want 429 with the reason:\n%s", code, body)
		}
	}
	if n, err := srv.Client(t).Exists(t.Context(), lease.KeysFor("limited").Paused).Result(); err != nil || n != 0 {
		t.Errorf("queue paused past the limit: %d, %v", n, err)
	}
}
