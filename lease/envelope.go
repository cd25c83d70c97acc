package lease

import (
	"bytes"
	"fmt"
	"strconv"
)

// envelopeMark starts every element ackd itself puts on a ready list. 0xFF
// never occurs in UTF-8 text, so a plain producer's text payload is never
// mistaken for an envelope.
const envelopeMark = "\xffackd1|"

// envelope is a message at rest: on the ready list, in the delayed set,
// inside a lease record or a dead record.
type envelope struct {
	ID       string
	Attempts int   // deliveries so far
	Max      int   // maximum deliveries, 0 = unlimited
	LeaseMS  int64 // producer's lease duration, 0 = consumer's default
	Expiries int   // leases of it that ran out
	Failures int   // nacks of it
	Payload  []byte
}

func (e *envelope) appendTo(b []byte) []byte {
	b = append(b, envelopeMark...)
	b = append(b, e.ID...)
	b = append(b, '|')
	b = strconv.AppendInt(b, int64(e.Attempts), 10)
	b = append(b, '|')
	b = strconv.AppendInt(b, int64(e.Max), 10)
	b = append(b, '|')
	b = strconv.AppendInt(b, e.LeaseMS, 10)
	b = append(b, '|')
	b = strconv.AppendInt(b, int64(e.Expiries), 10)
	b = append(b, '|')
	b = strconv.AppendInt(b, int64(e.Failures), 10)
	b = append(b, '|')
	return append(b, e.Payload...)
}

// isEnvelope reports whether b claims to be an envelope.
func isEnvelope(b []byte) bool { return bytes.HasPrefix(b, []byte(envelopeMark)) }

// parseEnvelope is the Go twin of parse_env in lua/lib.lua.
func parseEnvelope(b []byte) (envelope, error) {
	var e envelope
	rest, ok := bytes.CutPrefix(b, []byte(envelopeMark))
	if !ok {
		return e, fmt.Errorf("%w: envelope without its mark", ErrMalformed)
	}
	var f [6][]byte
	for i := range f {
		var field []byte
		field, rest, ok = bytes.Cut(rest, []byte{'|'})
		if !ok {
			return e, fmt.Errorf("%w: envelope has %d of 7 fields", ErrMalformed, i+1)
		}
		f[i] = field
	}
	e.ID = string(f[0])
	if !validID(e.ID) {
		return e, fmt.Errorf("%w: envelope id %q", ErrMalformed, f[0])
	}
	var n [5]int64
	for i := range n {
		v, err := parseCount(f[i+1])
		if err != nil {
			return e, fmt.Errorf("%w: envelope field %d: %v", ErrMalformed, i+2, err)
		}
		n[i] = v
	}
	e.Attempts, e.Max, e.LeaseMS, e.Expiries, e.Failures = int(n[0]), int(n[1]), n[2], int(n[3]), int(n[4])
	e.Payload = rest
	return e, nil
}

// maxDigits bounds every number in an envelope or record: Lua (and so
// every script) prints numbers of up to 14 digits exactly and larger ones
// in exponent form, which would corrupt the record when it is rewritten.
const maxDigits = 14

// parseCount accepts what num in lua/lib.lua accepts: a canonical decimal
// (no sign, no leading zero) of at most maxDigits digits. Canonical only,
// so that every record parses and prints back byte for byte.
func parseCount(b []byte) (int64, error) {
	if len(b) == 0 || len(b) > maxDigits || len(b) > 1 && b[0] == '0' {
		return 0, fmt.Errorf("bad number %q", b)
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad number %q", b)
		}
	}
	return strconv.ParseInt(string(b), 10, 64)
}

// deadRecord is what the dead set keeps of one message.
type deadRecord struct {
	Reason string
	AtMS   int64
	Body   []byte // an envelope, or the raw bytes that could not be parsed
}

func parseDeadRecord(b []byte) (deadRecord, error) {
	var r deadRecord
	reason, rest, ok := bytes.Cut(b, []byte{'|'})
	if !ok || len(reason) == 0 {
		return r, fmt.Errorf("%w: dead record without a reason", ErrMalformed)
	}
	for _, c := range reason {
		if c < 'a' || c > 'z' {
			return r, fmt.Errorf("%w: dead record reason %q", ErrMalformed, reason)
		}
	}
	at, rest, ok := bytes.Cut(rest, []byte{'|'})
	if !ok {
		return r, fmt.Errorf("%w: dead record without a time", ErrMalformed)
	}
	ms, err := parseCount(at)
	if err != nil {
		return r, fmt.Errorf("%w: dead record time: %v", ErrMalformed, err)
	}
	r.Reason, r.AtMS, r.Body = string(reason), ms, rest
	return r, nil
}

// splitLeaseRecord splits "token|envelope".
func splitLeaseRecord(b []byte) (token string, env []byte, ok bool) {
	t, rest, ok := bytes.Cut(b, []byte{'|'})
	if !ok || len(t) == 0 {
		return "", nil, false
	}
	for _, c := range t {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return "", nil, false
		}
	}
	return string(t), rest, true
}
