package lease

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateQueue(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		queue string
		ok    bool
	}{
		{"empty", "", false},
		{"one byte", "a", true},
		{"128 bytes", strings.Repeat("q", 128), true},
		{"129 bytes", strings.Repeat("q", 129), false},
		{"allowed punctuation", "a.b_c:d/e-f", true},
		{"only punctuation", "._:/-", true},
		{"letters and digits", "Orders2024", true},
		{"open brace", "a{b", false},
		{"close brace", "a}b", false},
		{"space", "a b", false},
		{"leading space", " a", false},
		{"newline", "a\nb", false},
		{"tab", "a\tb", false},
		{"NUL", "a\x00b", false},
		{"DEL", "a\x7fb", false},
		{"unicode", "café", false},
		{"emoji", "q🙂", false},
		{"0xff byte", "q\xff", false},
		{"pipe", "a|b", false},
		{"star", "a*", false},
		{"brackets", "a[1]", false},
		{"comma", "a,b", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateQueue(tt.queue)
			if tt.ok && err != nil {
				t.Fatalf("ValidateQueue(%q) = %v, want nil", tt.queue, err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidQueue) {
				t.Fatalf("ValidateQueue(%q) = %v, want ErrInvalidQueue", tt.queue, err)
			}
		})
	}
}

func TestLeaseKeyRoundTrip(t *testing.T) {
	t.Parallel()
	for _, q := range []string{"a", "orders", "a.b_c:d/e-f", strings.Repeat("z", 128)} {
		for _, tok := range []string{"0123456789abcdef", "ffffffffffffffff", "0000000000000000"} {
			key := LeaseKey(q, tok)
			gq, gt, ok := ParseLeaseKey(key)
			if !ok || gq != q || gt != tok {
				t.Errorf("ParseLeaseKey(%q) = %q, %q, %v; want %q, %q, true", key, gq, gt, ok, q, tok)
			}
		}
	}
	if got, want := LeaseKey("q", "0123456789abcdef"), "ackd:{q}:lease:0123456789abcdef"; got != want {
		t.Errorf("LeaseKey = %q, want %q", got, want)
	}
}

func TestParseLeaseKeyRejects(t *testing.T) {
	t.Parallel()
	const tok = "0123456789abcdef"
	for _, key := range []string{
		"",
		"ackd:{q}:lease:",
		"ackd:{q}:lease:" + tok[:15],      // short token
		"ackd:{q}:lease:" + tok + "0",     // long token
		"ackd:{q}:lease:0123456789ABCDEF", // upper case
		"ackd:{q}:lease:0123456789abcdeg", // not hex
		"ackd:{}:lease:" + tok,            // empty queue
		"ackd:{a b}:lease:" + tok,         // bad queue byte
		"ackd:{a{b}:lease:" + tok,         // brace in queue
		"ackd:{" + strings.Repeat("q", 129) + "}:lease:" + tok, // long queue
		"ackd:q:lease:" + tok, // no hash tag
		"ackd:{q}:leases",     // another key of the queue
		"ackd:{q}:ready",
		"ackd:{q}:lease:" + tok + ":x",
		"xackd:{q}:lease:" + tok,
		"ackd:{q}:lease:" + tok + "\n",
		"ackd:{q}:deadlines",
		"ackd:queues",
		"ackd:wake",
	} {
		if q, tk, ok := ParseLeaseKey(key); ok {
			t.Errorf("ParseLeaseKey(%q) = %q, %q, true; want false", key, q, tk)
		}
	}
}

func TestKeysFor(t *testing.T) {
	t.Parallel()
	k := KeysFor("q")
	want := Keys{
		Ready:     "ackd:{q}:ready",
		Claim:     "ackd:{q}:claim",
		Held:      "ackd:{q}:held",
		Due:       "ackd:{q}:due",
		Leases:    "ackd:{q}:leases",
		Deadlines: "ackd:{q}:deadlines",
		Delayed:   "ackd:{q}:delayed",
		Dead:      "ackd:{q}:dead",
		DeadMsgs:  "ackd:{q}:deadmsgs",
		DeadErrs:  "ackd:{q}:deaderrs",
		Paused:    "ackd:{q}:paused",
		Counts:    "ackd:{q}:counts",
	}
	if k != want {
		t.Errorf("KeysFor(q) = %+v, want %+v", k, want)
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	t.Parallel()
	for _, e := range []envelope{
		{ID: "a"},
		{ID: "6ba7b810-9dad-11d1-80b4-00c04fd430c8", Attempts: 3, Max: 10, LeaseMS: 30000, Expiries: 2, Failures: 1, Payload: []byte("hello")},
		{ID: strings.Repeat("x", 64), Payload: []byte("a|b||c|")},
		{ID: "bin", Payload: []byte("\x00\xff|\x00ackd1|\n\r")},
		{ID: "nested", Payload: []byte(envelopeMark + "other|1|2|3|4|5|inner")},
		{ID: "max", Attempts: 99999999999999, Max: 99999999999999, LeaseMS: 99999999999999, Expiries: 99999999999999, Failures: 99999999999999},
		{ID: "A.b-9", Payload: []byte{}},
	} {
		b := e.appendTo(nil)
		if !bytes.HasPrefix(b, []byte("\xffackd1|")) {
			t.Fatalf("appendTo: %q does not start with the mark", b)
		}
		if !isEnvelope(b) {
			t.Fatalf("isEnvelope(%q) = false", b)
		}
		got, err := parseEnvelope(b)
		if err != nil {
			t.Fatalf("parseEnvelope(%q): %v", b, err)
		}
		if got.ID != e.ID || got.Attempts != e.Attempts || got.Max != e.Max || got.LeaseMS != e.LeaseMS ||
			got.Expiries != e.Expiries || got.Failures != e.Failures || !bytes.Equal(got.Payload, e.Payload) {
			t.Errorf("parseEnvelope(appendTo(%+v)) = %+v", e, got)
		}
		if again := got.appendTo(nil); !bytes.Equal(again, b) {
			t.Errorf("appendTo(parse(%q)) = %q", b, again)
		}
	}
	// The exact bytes, as docs/PROTOCOL.md gives them.
	e := envelope{ID: "id-1", Attempts: 1, Max: 10, LeaseMS: 5000, Expiries: 0, Failures: 2, Payload: []byte("p|q")}
	if got, want := string(e.appendTo(nil)), "\xffackd1|id-1|1|10|5000|0|2|p|q"; got != want {
		t.Errorf("appendTo = %q, want %q", got, want)
	}
}

func TestParseEnvelopeRejects(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"",
		"hello",
		"ackd1|id|0|0|0|0|0|p",      // no 0xFF
		"\xffackd1|",                // nothing after the mark
		"\xffackd2|id|0|0|0|0|0|p",  // other version
		"\xffackd1|id|0|0|0|0|0",    // 6 of 7 fields
		"\xffackd1||0|0|0|0|0|p",    // empty id
		"\xffackd1|a b|0|0|0|0|0|p", // bad id byte
		"\xffackd1|a_b|0|0|0|0|0|p", // underscore not allowed in ids
		"\xffackd1|" + strings.Repeat("x", 65) + "|0|0|0|0|0|p", // id too long
		"\xffackd1|id|-1|0|0|0|0|p",                             // sign
		"\xffackd1|id|+1|0|0|0|0|p",
		"\xffackd1|id||0|0|0|0|p", // empty number
		"\xffackd1|id|1x|0|0|0|0|p",
		"\xffackd1|id|01|0|0|0|0|p", // leading zero: not canonical
		"\xffackd1|id|0|0|00|0|0|p",
		"\xffackd1|id|100000000000000|0|0|0|0|p", // 15 digits
		"\xffackd1|id|1.5|0|0|0|0|p",
		"\xffackd1|id| 1|0|0|0|0|p",
	} {
		if e, err := parseEnvelope([]byte(s)); !errors.Is(err, ErrMalformed) {
			t.Errorf("parseEnvelope(%q) = %+v, %v; want ErrMalformed", s, e, err)
		}
	}
}

func TestParseDeadRecord(t *testing.T) {
	t.Parallel()
	good := []struct {
		in     string
		reason string
		at     int64
		body   string
	}{
		{"expired|1700000000000|" + envelopeMark + "id|1|1|0|1|0|p", "expired", 1700000000000, envelopeMark + "id|1|1|0|1|0|p"},
		{"killed|0|", "killed", 0, ""},
		{"malformed|12|a|b|c", "malformed", 12, "a|b|c"},
		{"failed|5|\x00\xff", "failed", 5, "\x00\xff"},
	}
	for _, tt := range good {
		r, err := parseDeadRecord([]byte(tt.in))
		if err != nil || r.Reason != tt.reason || r.AtMS != tt.at || string(r.Body) != tt.body {
			t.Errorf("parseDeadRecord(%q) = %+v, %v", tt.in, r, err)
		}
	}
	for _, s := range []string{
		"", "expired", "expired|", "|1|x", "Expired|1|x", "exp1red|1|x", "expired|x|y", "expired|-1|x",
		"expired||x", "expired|01|x", "ex pired|1|x", "expired|123456789012345|x",
	} {
		if r, err := parseDeadRecord([]byte(s)); !errors.Is(err, ErrMalformed) {
			t.Errorf("parseDeadRecord(%q) = %+v, %v; want ErrMalformed", s, r, err)
		}
	}
}

func TestDecodeDead(t *testing.T) {
	t.Parallel()
	env := (&envelope{ID: "m1", Attempts: 3, Max: 3, Expiries: 2, Failures: 1, Payload: []byte("pay|load")}).appendTo(nil)
	tests := []struct {
		name string
		rec  string
		want DeadLetter
	}{
		{"envelope", "failed|1000|" + string(env),
			DeadLetter{ID: "m1", Reason: "failed", At: time.UnixMilli(1000), Attempts: 3, Expiries: 2, Failures: 1, Payload: []byte("pay|load")}},
		{"lease record", "malformed|1000|0123456789abcdef|" + string(env),
			DeadLetter{ID: "m1", Reason: "malformed", At: time.UnixMilli(1000), Attempts: 3, Expiries: 2, Failures: 1, Payload: []byte("pay|load")}},
		{"raw body", "malformed|1000|\xffackd1|broken",
			DeadLetter{ID: "m1", Reason: "malformed", At: time.UnixMilli(1000), Raw: []byte("\xffackd1|broken")}},
		{"unparsable record", "garbage",
			DeadLetter{ID: "m1", Reason: "malformed", Raw: []byte("garbage")}},
	}
	for _, tt := range tests {
		got := decodeDead("m1", []byte(tt.rec))
		if got.ID != tt.want.ID || got.Reason != tt.want.Reason || !got.At.Equal(tt.want.At) ||
			got.Attempts != tt.want.Attempts || got.Expiries != tt.want.Expiries || got.Failures != tt.want.Failures ||
			!bytes.Equal(got.Payload, tt.want.Payload) || !bytes.Equal(got.Raw, tt.want.Raw) {
			t.Errorf("%s: decodeDead = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestSplitLeaseRecord(t *testing.T) {
	t.Parallel()
	tok, env, ok := splitLeaseRecord([]byte("0123456789abcdef|\xffackd1|id|1|0|0|0|0|a|b"))
	if !ok || tok != "0123456789abcdef" || string(env) != "\xffackd1|id|1|0|0|0|0|a|b" {
		t.Errorf("splitLeaseRecord = %q, %q, %v", tok, env, ok)
	}
	if tok, env, ok := splitLeaseRecord([]byte("Tok9|")); !ok || tok != "Tok9" || len(env) != 0 {
		t.Errorf("splitLeaseRecord(Tok9|) = %q, %q, %v", tok, env, ok)
	}
	for _, s := range []string{"", "|x", "notoken", "to ken|x", "tok-en|x", "\xff|x", "tok\n|x"} {
		if tok, env, ok := splitLeaseRecord([]byte(s)); ok {
			t.Errorf("splitLeaseRecord(%q) = %q, %q, true; want false", s, tok, env)
		}
	}
}

func TestValidTokenAndID(t *testing.T) {
	t.Parallel()
	for tok, want := range map[string]bool{
		"0123456789abcdef": true, "0123456789ABCDEF": false, "0123456789abcde": false,
		"0123456789abcdef0": false, "": false, "0123456789abcdeg": false,
	} {
		if validToken(tok) != want {
			t.Errorf("validToken(%q) = %v", tok, !want)
		}
	}
	for id, want := range map[string]bool{
		"a": true, "6ba7b810-9dad-11d1-80b4-00c04fd430c8": true, "a.b-C": true,
		strings.Repeat("x", 64): true, strings.Repeat("x", 65): false,
		"": false, "a b": false, "a|b": false, "a_b": false, "é": false,
	} {
		if validID(id) != want {
			t.Errorf("validID(%q) = %v", id, !want)
		}
	}
}

func TestDefaultBackoff(t *testing.T) {
	t.Parallel()
	for attempt := -1; attempt <= 40; attempt++ {
		base := BackoffBaseDefault
		for i := 1; i < attempt; i++ {
			base *= 2
			if base >= BackoffMaxDefault {
				break
			}
		}
		base = min(base, BackoffMaxDefault)
		lo, hi := time.Duration(float64(base)*0.8), time.Duration(float64(base)*1.2)
		for range 50 {
			d := DefaultBackoff(attempt)
			if d < lo || d > hi {
				t.Fatalf("DefaultBackoff(%d) = %v, want within [%v, %v]", attempt, d, lo, hi)
			}
		}
	}
	if d := DefaultBackoff(1); d < 800*time.Millisecond || d > 1200*time.Millisecond {
		t.Errorf("DefaultBackoff(1) = %v, want about 1s", d)
	}
	if d := DefaultBackoff(1000); d > 6*time.Minute {
		t.Errorf("DefaultBackoff(1000) = %v, want at most 5m+20%%", d)
	}
}

func TestMS(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]int64{
		0:                                  0,
		time.Nanosecond:                    1,
		999 * time.Microsecond:             1,
		time.Millisecond:                   1,
		time.Millisecond + time.Nanosecond: 2,
		1500 * time.Microsecond:            2,
		2 * time.Millisecond:               2,
		30 * time.Second:                   30000,
		MaxLeaseFor:                        604800000,
	} {
		if got := ms(d); got != want {
			t.Errorf("ms(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestCheckDuration(t *testing.T) {
	t.Parallel()
	for d, ok := range map[time.Duration]bool{
		-time.Second: false, 0: false, time.Microsecond: false, time.Millisecond - 1: false,
		time.Millisecond: true, time.Hour: true, MaxLeaseFor: true, MaxLeaseFor + 1: false,
	} {
		err := checkDuration("x", d)
		if ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidArgument)) {
			t.Errorf("checkDuration(%v) = %v", d, err)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	var nilCfg *Config
	c := nilCfg.withDefaults()
	if c.LeaseFor != LeaseForDefault || c.MaxDeliveries != MaxDeliveriesDefault || c.MaxPayload != MaxPayloadDefault || c.Logger == nil {
		t.Errorf("defaults = %+v", c)
	}
	if err := c.validate(); err != nil {
		t.Errorf("validate(defaults) = %v", err)
	}
}

func TestSweepResultNext(t *testing.T) {
	t.Parallel()
	// A lease is due 1 ms after its deadline, a delayed message at its
	// due time.
	a, b := time.UnixMilli(1000), time.UnixMilli(2000)
	a1 := time.UnixMilli(1001)
	for _, tt := range []struct {
		r    SweepResult
		want time.Time
	}{
		{SweepResult{}, time.Time{}},
		{SweepResult{NextDeadline: a}, a1},
		{SweepResult{NextDelayed: b}, b},
		{SweepResult{NextDeadline: a, NextDelayed: b}, a1},
		{SweepResult{NextDeadline: b, NextDelayed: a}, a},
		{SweepResult{NextDeadline: a, NextDelayed: a}, a},
		{SweepResult{NextDeadline: a, NextDelayed: a1}, a1},
		{SweepResult{NextDeadline: a, NextDelayed: time.UnixMilli(1002)}, a1},
	} {
		if got := tt.r.Next(); !got.Equal(tt.want) {
			t.Errorf("%+v.Next() = %v, want %v", tt.r, got, tt.want)
		}
	}
}

func TestParseTakeReply(t *testing.T) {
	t.Parallel()
	c := &Client{}
	tokens := []string{"0123456789abcdef", "fedcba9876543210", "00000000000000ff"}
	ls, next, bad, err := c.parseTakeReply("q", []any{
		int64(2), int64(-1), int64(1),
		int64(5000), "\xffackd1|id1|0|0|0|0|0|p1",
		int64(6000), "\xffackd1|id2|2|7|100|1|0|",
	}, tokens)
	if err != nil || len(ls) != 2 || !next.IsZero() || bad != 1 {
		t.Fatalf("parseTakeReply = %v, %v, %d, %v", ls, next, bad, err)
	}
	if l := ls[0]; l.ID != "id1" || l.Token != tokens[0] || l.Attempt != 1 || l.Deadline().UnixMilli() != 5000 ||
		l.MaxDeliveries != Unlimited || string(l.Payload) != "p1" || l.Queue != "q" {
		t.Errorf("lease 0 = %+v", l)
	}
	if l := ls[1]; l.ID != "id2" || l.Token != tokens[1] || l.Attempt != 3 || l.MaxDeliveries != 7 || len(l.Payload) != 0 {
		t.Errorf("lease 1 = %+v", l)
	}
	_, next, _, err = c.parseTakeReply("q", []any{int64(0), int64(1234), int64(0)}, nil)
	if err != nil || next.UnixMilli() != 1234 {
		t.Errorf("empty reply: next %v, %v", next, err)
	}
	for _, res := range parseTakeReplyBad {
		if ls, _, _, err := c.parseTakeReply("q", res, tokens); !errors.Is(err, ErrMalformed) {
			t.Errorf("parseTakeReply(%v) = %v, %v; want ErrMalformed", res, ls, err)
		}
	}
}

// halfOverflow leases would be 3+2*halfOverflow fields, which overflows
// int64 to 5: the count is compared with the reply's length, never doubled.
const halfOverflow = 1<<63/2 + 1

var parseTakeReplyBad = [][]any{
	nil,
	{},
	{int64(0), int64(0)},
	{"0", int64(0), int64(0)},
	{int64(0), "x", int64(0)},
	{int64(0), int64(0), nil},
	{int64(-1), int64(0), int64(0)},
	{int64(1), int64(0), int64(0)},
	{int64(0), int64(0), int64(0), "extra"},
	{int64(1), int64(0), int64(0), int64(1)},
	{int64(1), int64(0), int64(0), "1", "\xffackd1|id|0|0|0|0|0|p"},
	{int64(1), int64(0), int64(0), int64(1), []byte("\xffackd1|id|0|0|0|0|0|p")},
	{int64(1), int64(0), int64(0), int64(1), "not an envelope"},
	{int64(1), int64(0), int64(0), int64(1), "\xffackd1|id|01|0|0|0|0|p"},
	{int64(1), int64(0), int64(0), int64(1), "\xffackd1|bad id|0|0|0|0|0|p"},
	// more leases than slots
	{int64(4), int64(0), int64(0), int64(1), "\xffackd1|a|0|0|0|0|0|", int64(1), "\xffackd1|b|0|0|0|0|0|",
		int64(1), "\xffackd1|c|0|0|0|0|0|", int64(1), "\xffackd1|d|0|0|0|0|0|"},
	{int64(halfOverflow), int64(0), int64(0), int64(1), "\xffackd1|a|0|0|0|0|0|"},
}
