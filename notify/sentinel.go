package notify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// sentinelDialTimeout bounds a dial to a Sentinel when the options set
// none.
const sentinelDialTimeout = 5 * time.Second

// sentinelOptions are the options of a client of the Sentinel at addr,
// with the Sentinels' own credentials from fo, and no retries: the
// callers ask the next Sentinel instead.
func sentinelOptions(fo *redis.FailoverOptions, addr string) *redis.Options {
	return &redis.Options{
		Addr:        addr,
		Username:    fo.SentinelUsername,
		Password:    fo.SentinelPassword,
		TLSConfig:   fo.TLSConfig,
		DialTimeout: cmp.Or(fo.DialTimeout, sentinelDialTimeout),
		MaxRetries:  -1,
	}
}

// masterWatch remembers which node the Sentinels name as master, moves
// the subscription when that changes, and gives the subscription a
// client of that very node: the failover client's own dialer asks one
// Sentinel, which may not have heard of the switch yet, and would put
// the subscription back on the demoted node.
type masterWatch struct {
	l       *Listener
	fo      *redis.FailoverOptions
	s       *subscription
	clients []*redis.SentinelClient

	mu       sync.Mutex
	master   string        // "" until first named
	gen      uint64        // counts the changes of master
	nodeAddr string        // address of nodeC
	nodeC    *redis.Client // a client of master, for the subscription
}

func newMasterWatch(l *Listener, fo *redis.FailoverOptions, s *subscription) *masterWatch {
	w := &masterWatch{l: l, fo: fo, s: s}
	for _, addr := range fo.SentinelAddrs {
		o := sentinelOptions(fo, addr)
		o.ReadTimeout = fo.ReadTimeout
		w.clients = append(w.clients, redis.NewSentinelClient(o))
	}
	return w
}

// close closes the Sentinel clients and the node client.
func (w *masterWatch) close() {
	for _, c := range w.clients {
		_ = c.Close()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.nodeC != nil {
		_ = w.nodeC.Close()
		w.nodeC = nil
	}
}

// node returns a client of the node last named master, nil before one
// was named (or on a nil watch).
func (w *masterWatch) node() *redis.Client {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.master == "" {
		return nil
	}
	if w.nodeC != nil && w.nodeAddr == w.master {
		return w.nodeC
	}
	if w.nodeC != nil {
		_ = w.nodeC.Close() // its PubSub was closed before this open
	}
	fo := w.fo
	w.nodeAddr = w.master
	w.nodeC = redis.NewClient(&redis.Options{
		Addr:                w.master,
		Dialer:              fo.Dialer,
		Protocol:            fo.Protocol,
		Username:            fo.Username,
		Password:            fo.Password,
		CredentialsProvider: fo.CredentialsProvider,
		DB:                  fo.DB,
		TLSConfig:           fo.TLSConfig,
		DialTimeout:         fo.DialTimeout,
		ReadTimeout:         fo.ReadTimeout,
		WriteTimeout:        fo.WriteTimeout,
		MaxRetries:          -1,
	})
	return w.nodeC
}

// follow keeps the subscription on the node the Sentinels name as master
// of fo.MasterName: it subscribes to SwitchChannel on every Sentinel, and
// every TopologyInterval asks them which node is master, in case a switch
// was announced while it was not listening. Either way, a change reopens
// the subscription at once (see subscription.reopen).
func (w *masterWatch) follow(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, c := range w.clients {
		wg.Go(func() { w.listen(ctx, c) })
	}
	fails := 0
	for sleep(ctx, w.l.cfg.TopologyInterval) {
		// A poll asks the Sentinels one after the other, each for up to
		// replyMax: a switch announced meanwhile is newer than answers
		// given before it.
		gen := w.generation()
		addr, err := w.ask(ctx)
		switch {
		case err != nil:
			fails++
			if fails == 1 && ctx.Err() == nil {
				w.l.log.WarnContext(ctx, "cannot ask the Sentinels for the master", "master_name", w.fo.MasterName, "error", err)
			}
		case addr != "":
			fails = 0
			w.polled(ctx, addr, gen)
		}
	}
}

// ask returns the master's address if every Sentinel that answers names
// the same; "" (and no error) while they disagree, as they do for a
// moment after a switch, until each has heard of it.
func (w *masterWatch) ask(ctx context.Context) (string, error) {
	var (
		errs  []error
		named string
	)
	for _, c := range w.clients {
		cctx, cancel := context.WithTimeout(ctx, replyMax)
		a, err := c.GetMasterAddrByName(cctx, w.fo.MasterName).Result()
		cancel()
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		switch {
		case errors.Is(err, redis.Nil):
			err = fmt.Errorf("%s monitors no master named %q", c.String(), w.fo.MasterName)
		case err == nil && len(a) != 2:
			err = fmt.Errorf("%s: unexpected reply %q", c.String(), a)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		addr := net.JoinHostPort(a[0], a[1])
		if named != "" && addr != named {
			return "", nil
		}
		named = addr
	}
	if named == "" {
		return "", errors.Join(errs...)
	}
	return named, nil
}

// listen reads SwitchChannel on one Sentinel until ctx is done,
// resubscribing after errors with the Listener's back-off.
func (w *masterWatch) listen(ctx context.Context, c *redis.SentinelClient) {
	ps := c.Subscribe(ctx, SwitchChannel)
	defer ps.Close()
	context.AfterFunc(ctx, func() { _ = ps.Close() })
	fails := 0
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, w.l.cfg.PingInterval)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if isTimeout(err) {
				// Quiet: check the connection (a reply is a message too).
				err = ps.Ping(ctx)
			}
			if err != nil {
				fails++
				w.l.log.DebugContext(ctx, "sentinel subscription lost, reconnecting", "sentinel", c.String(), "error", err)
				if !sleep(ctx, backoff(fails)) {
					return
				}
			}
			continue
		}
		fails = 0
		m, ok := msg.(*redis.Message)
		if !ok || m.Channel != SwitchChannel {
			continue
		}
		// "<name> <old-ip> <old-port> <new-ip> <new-port>"
		f := strings.Fields(m.Payload)
		if len(f) == 5 && f[0] == w.fo.MasterName {
			w.named(ctx, net.JoinHostPort(f[3], f[4]), SwitchChannel)
		}
	}
}

// generation counts the changes of master so far.
func (w *masterWatch) generation() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gen
}

// named records that the Sentinels name addr as master; if it was another
// node before, the subscription moves there.
func (w *masterWatch) named(ctx context.Context, addr, source string) {
	w.set(ctx, addr, source, func() bool { return true })
}

// polled records a poll's answer, addr, from a poll that began at
// generation gen. If the master changed since (a switch was announced
// while the poll waited for a slow Sentinel), the answer may predate the
// switch and is dropped: the next poll asks again.
func (w *masterWatch) polled(ctx context.Context, addr string, gen uint64) {
	w.set(ctx, addr, "sentinel", func() bool { return w.gen == gen })
}

// set makes addr the master if current (called under w.mu) allows it.
func (w *masterWatch) set(ctx context.Context, addr, source string, current func() bool) {
	w.mu.Lock()
	before := w.master
	if !current() {
		w.mu.Unlock()
		if before != addr {
			w.l.log.DebugContext(ctx, "dropped a Sentinel poll older than the last switch", "master_name", w.fo.MasterName,
				"polled", addr, "master", before)
		}
		return
	}
	if before != addr {
		w.master = addr
		w.gen++
	}
	w.mu.Unlock()
	if before == "" || before == addr {
		return
	}
	w.l.switches.Add(1)
	w.l.log.InfoContext(ctx, "master switched", "master_name", w.fo.MasterName, "from", before, "to", addr, "source", source)
	w.s.reopen()
	if f := w.l.cfg.TopologyFunc; f != nil {
		f(ctx)
	}
}
