package lease

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
)

// Fuzz tests for every parser of data read from Redis. None may panic;
// each that can print its input back must print it byte for byte.

func FuzzParseLeaseKey(f *testing.F) {
	f.Add("ackd:{q}:lease:0123456789abcdef")
	f.Add("ackd:{a.b_c:d/e-f}:lease:ffffffffffffffff")
	f.Add("ackd:{q}:lease:0123456789ABCDEF")
	f.Add("ackd:{q}:lease:}:lease:0123456789abcdef")
	f.Add("ackd:{{q}}:lease:0123456789abcdef")
	f.Add("ackd:{}:lease:")
	f.Add("ackd:{q}:ready")
	f.Add("ackd:{" + strings.Repeat("q", 129) + "}:lease:0123456789abcdef")
	f.Add("")
	f.Fuzz(func(t *testing.T, key string) {
		q, tok, ok := ParseLeaseKey(key)
		if !ok {
			if q != "" || tok != "" {
				t.Fatalf("ParseLeaseKey(%q) = %q, %q, false: want empty results", key, q, tok)
			}
			return
		}
		if ValidateQueue(q) != nil || !validToken(tok) {
			t.Fatalf("ParseLeaseKey(%q) accepted queue %q token %q", key, q, tok)
		}
		if back := LeaseKey(q, tok); back != key {
			t.Fatalf("LeaseKey(ParseLeaseKey(%q)) = %q", key, back)
		}
	})
}

func FuzzParseEnvelope(f *testing.F) {
	f.Add([]byte("\xffackd1|id|1|10|5000|0|2|p|q"))
	f.Add([]byte("\xffackd1|6ba7b810-9dad-11d1-80b4-00c04fd430c8|0|0|0|0|0|"))
	f.Add([]byte("\xffackd1|id|0|0|0|0|0|\x00|\xff\x00"))
	f.Add([]byte("\xffackd1|id|01|0|0|0|0|p"))
	f.Add([]byte("\xffackd1|id|99999999999999|0|0|0|0|p"))
	f.Add([]byte("\xffackd1|id|100000000000000|0|0|0|0|p"))
	f.Add([]byte("\xffackd1|id|1|2|3|4|5"))
	f.Add([]byte("\xffackd1|"))
	f.Add([]byte("hello"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseEnvelope(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("parseEnvelope(%q): %v does not wrap ErrMalformed", b, err)
			}
			return
		}
		if !isEnvelope(b) || !validID(e.ID) {
			t.Fatalf("parseEnvelope(%q) accepted %+v", b, e)
		}
		if back := e.appendTo(nil); !bytes.Equal(back, b) {
			t.Fatalf("appendTo(parseEnvelope(%q)) = %q", b, back)
		}
	})
}

func FuzzParseDeadRecord(f *testing.F) {
	f.Add([]byte("expired|1700000000000|\xffackd1|id|1|1|0|1|0|p"))
	f.Add([]byte("malformed|1|0123456789abcdef|garbage"))
	f.Add([]byte("killed|0|"))
	f.Add([]byte("killed|00|"))
	f.Add([]byte("|1|x"))
	f.Add([]byte("x"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseDeadRecord(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("parseDeadRecord(%q): %v does not wrap ErrMalformed", b, err)
			}
			return
		}
		var back []byte
		back = append(back, r.Reason...)
		back = append(back, '|')
		back = append(back, strconv.FormatInt(r.AtMS, 10)...)
		back = append(back, '|')
		back = append(back, r.Body...)
		if !bytes.Equal(back, b) {
			t.Fatalf("parseDeadRecord(%q) = %+v, which prints back as %q", b, r, back)
		}
	})
}

func FuzzDecodeDead(f *testing.F) {
	env := (&envelope{ID: "m1", Attempts: 2, Max: 2, Expiries: 1, Failures: 1, Payload: []byte("p")}).appendTo(nil)
	f.Add("m1", []byte("failed|1|"+string(env)))
	f.Add("m1", []byte("malformed|1|0123456789abcdef|"+string(env)))
	f.Add("m1.m1", []byte("malformed|1|\xffackd1|broken"))
	f.Add("x", []byte("nonsense"))
	f.Add("", []byte{})
	f.Fuzz(func(t *testing.T, id string, rec []byte) {
		d := decodeDead(id, rec)
		if d.ID != id || d.Reason == "" {
			t.Fatalf("decodeDead(%q, %q) = %+v", id, rec, d)
		}
		if (d.Payload != nil || d.Attempts != 0) && d.Raw != nil {
			t.Fatalf("decodeDead(%q, %q) = %+v: both a message and raw bytes", id, rec, d)
		}
	})
}

// FuzzParseTakeReply feeds parseTakeReply arbitrary reply shapes, built from
// the fuzzer's bytes: it must never panic, and must report ErrMalformed for
// any shape take.lua does not return.
func FuzzParseTakeReply(f *testing.F) {
	f.Add(encodeReply([]any{int64(0), int64(-1), int64(0)}))
	f.Add(encodeReply([]any{int64(1), int64(-1), int64(0), int64(5), "\xffackd1|id|0|0|0|0|0|p"}))
	for _, bad := range parseTakeReplyBad {
		f.Add(encodeReply(bad))
	}
	c := &Client{}
	f.Fuzz(func(t *testing.T, b []byte) {
		res := decodeReply(b)
		ls, _, _, err := c.parseTakeReply("q", res, fuzzTokens)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("parseTakeReply(%v): %v does not wrap ErrMalformed", res, err)
			}
			return
		}
		if wellFormed := wellFormedTakeReply(res); !wellFormed {
			t.Fatalf("parseTakeReply(%v) accepted a malformed reply", res)
		}
		if int64(len(ls)) != res[0].(int64) {
			t.Fatalf("parseTakeReply(%v): %d leases", res, len(ls))
		}
	})
}

// fuzzTokens are the slots' tokens of the replies FuzzParseTakeReply makes.
var fuzzTokens = []string{"0123456789abcdef", "fedcba9876543210", "00000000000000ff"}

// wellFormedTakeReply is the spec of take.lua's reply shape for
// fuzzTokens' slots.
func wellFormedTakeReply(res []any) bool {
	if len(res) < 3 || (len(res)-3)%2 != 0 {
		return false
	}
	for i := range 3 {
		if _, ok := res[i].(int64); !ok {
			return false
		}
	}
	if res[0].(int64) != int64((len(res)-3)/2) || res[0].(int64) > int64(len(fuzzTokens)) {
		return false
	}
	for i := 3; i < len(res); i += 2 {
		if _, ok := res[i].(int64); !ok {
			return false
		}
		rec, ok := res[i+1].(string)
		if !ok {
			return false
		}
		if _, err := parseEnvelope([]byte(rec)); err != nil {
			return false
		}
	}
	return true
}

// Reply encoding for the fuzzer: a sequence of tagged values.
// 'i' + 8 bytes: int64; 's' + 1 length byte + bytes: string; 'n': nil;
// 'b' + 1 length byte + bytes: []byte; 'f' + 8 bytes: float64;
// 'a' + 1 count byte: a nested []any of that many following values.
func encodeReply(vs []any) []byte {
	var b []byte
	for _, v := range vs {
		b = encodeValue(b, v)
	}
	return b
}

func encodeValue(b []byte, v any) []byte {
	switch v := v.(type) {
	case int64:
		b = append(b, 'i')
		return binary.BigEndian.AppendUint64(b, uint64(v))
	case string:
		b = append(b, 's', byte(len(v)))
		return append(b, v[:min(len(v), 255)]...)
	case []byte:
		b = append(b, 'b', byte(len(v)))
		return append(b, v[:min(len(v), 255)]...)
	case float64:
		b = append(b, 'f')
		return binary.BigEndian.AppendUint64(b, math.Float64bits(v))
	case []any:
		b = append(b, 'a', byte(len(v)))
		for _, e := range v {
			b = encodeValue(b, e)
		}
		return b
	}
	return append(b, 'n')
}

func decodeReply(b []byte) []any {
	var out []any
	for len(b) > 0 {
		var v any
		v, b = decodeValue(b, 0)
		out = append(out, v)
	}
	return out
}

func decodeValue(b []byte, depth int) (any, []byte) {
	tag, b := b[0], b[1:]
	switch tag {
	case 'i', 'f':
		var buf [8]byte
		n := copy(buf[:], b)
		u := binary.BigEndian.Uint64(buf[:])
		if tag == 'f' {
			return math.Float64frombits(u), b[n:]
		}
		return int64(u), b[n:]
	case 's', 'b':
		if len(b) == 0 {
			return "", b
		}
		n := min(int(b[0]), len(b)-1)
		s := b[1 : 1+n]
		if tag == 'b' {
			return append([]byte(nil), s...), b[1+n:]
		}
		return string(s), b[1+n:]
	case 'a':
		if len(b) == 0 || depth > 3 {
			return []any{}, nil
		}
		n := int(b[0])
		b = b[1:]
		var vs []any
		for i := 0; i < n && len(b) > 0; i++ {
			var v any
			v, b = decodeValue(b, depth+1)
			vs = append(vs, v)
		}
		return vs, b
	}
	return nil, b
}
