package lease

import (
	"errors"
	"fmt"
	"time"
)

// ErrSkipRetry, found in a handler's error with errors.Is, tells Consume
// that no retry can succeed: the message goes to the dead set at once with
// reason "failed" and the error's text. Wrap it, or use SkipRetry:
//
//	return fmt.Errorf("decode order %s: %w", l.ID, lease.ErrSkipRetry)
var ErrSkipRetry = errors.New("lease: skip retry")

// SkipRetry returns an error that makes Consume dead-letter the message at
// once (reason "failed", with err's text) instead of retrying it.
// errors.Is finds both ErrSkipRetry and err in it.
func SkipRetry(err error) error {
	if err == nil {
		return ErrSkipRetry
	}
	return &skipRetryError{err: err}
}

type skipRetryError struct{ err error }

func (e *skipRetryError) Error() string   { return e.err.Error() }
func (e *skipRetryError) Unwrap() []error { return []error{e.err, ErrSkipRetry} }

// RetryAfterError, found in a handler's error with errors.As, tells
// Consume to nack the message with exactly Delay instead of the backoff:
// for a rate limit or a dependency that said when to come back. The
// message still counts a failed attempt, and goes to the dead set if it
// has no deliveries left. Build it with RetryAfter.
type RetryAfterError struct {
	Delay time.Duration
	Err   error
}

// RetryAfter returns an error that makes Consume nack the message with
// delay d (at most MaxLeaseFor; zero or less means back on the queue at
// once). errors.Is finds err in it; errors.As finds the *RetryAfterError.
func RetryAfter(d time.Duration, err error) error {
	return &RetryAfterError{Delay: d, Err: err}
}

func (e *RetryAfterError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("retry after %v", e.Delay)
	}
	return fmt.Sprintf("retry after %v: %v", e.Delay, e.Err)
}

func (e *RetryAfterError) Unwrap() error { return e.Err }

// PanicError is what a handler's panic, or its call of runtime.Goexit,
// becomes: ConsumeOpts.ErrorFunc receives it, and the default log shows
// the stack. It counts as a failed attempt; on the message's last allowed
// delivery it goes to the dead set with reason "panic".
type PanicError struct {
	// Value is what the handler panicked with; nil after runtime.Goexit.
	Value  any
	Goexit bool   // the handler called runtime.Goexit (t.FailNow, say)
	Stack  []byte // the handler goroutine's stack at the panic
}

func (e *PanicError) Error() string {
	if e.Goexit {
		return "lease: handler called runtime.Goexit"
	}
	return fmt.Sprintf("lease: handler panic: %v", e.Value)
}

// Unwrap returns the panic value if it is an error (panic(err)).
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
