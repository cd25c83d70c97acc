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

// masterWatch remembers which node the Sentinels last named as master,
// and moves the subscription when that changes.
type masterWatch struct {
	l    *Listener
	s    *subscription
	name string

	mu     sync.Mutex
	master string // "" until first named
}

// followSentinels keeps sub on the node the Sentinels name as master of
// fo.MasterName: it subscribes to SwitchChannel on every Sentinel of
// fo.SentinelAddrs, and every TopologyInterval asks one of them which
// node is master, in case a switch was announced while it was not
// listening. Either way, a change reopens sub at once (see
// subscription.reopen); the failover client dials the new master.
func (l *Listener) followSentinels(ctx context.Context, fo *redis.FailoverOptions, sub *subscription) {
	w := &masterWatch{l: l, s: sub, name: fo.MasterName}
	clients := make([]*redis.SentinelClient, 0, len(fo.SentinelAddrs))
	for _, addr := range fo.SentinelAddrs {
		clients = append(clients, redis.NewSentinelClient(&redis.Options{
			Addr:        addr,
			Username:    fo.SentinelUsername,
			Password:    fo.SentinelPassword,
			TLSConfig:   fo.TLSConfig,
			DialTimeout: cmp.Or(fo.DialTimeout, sentinelDialTimeout),
			ReadTimeout: fo.ReadTimeout,
		}))
	}
	defer func() {
		for _, c := range clients {
			_ = c.Close()
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, c := range clients {
		wg.Go(func() { w.listen(ctx, c) })
	}
	fails := 0
	for {
		if addr, err := w.ask(ctx, clients); err != nil {
			fails++
			if fails == 1 && ctx.Err() == nil {
				l.log.WarnContext(ctx, "cannot ask the Sentinels for the master", "master_name", w.name, "error", err)
			}
		} else {
			fails = 0
			w.named(ctx, addr, "sentinel")
		}
		if !sleep(ctx, l.cfg.TopologyInterval) {
			return
		}
	}
}

// ask returns the master's address from the first Sentinel that knows it.
func (w *masterWatch) ask(ctx context.Context, clients []*redis.SentinelClient) (string, error) {
	var errs []error
	for _, c := range clients {
		cctx, cancel := context.WithTimeout(ctx, replyMax)
		a, err := c.GetMasterAddrByName(cctx, w.name).Result()
		cancel()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1]), nil
		}
		if err == nil {
			err = errors.New("unexpected reply")
		}
		if errors.Is(err, redis.Nil) {
			err = fmt.Errorf("%s monitors no master named %q", c.String(), w.name)
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		errs = append(errs, err)
	}
	return "", errors.Join(errs...)
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
		if len(f) == 5 && f[0] == w.name {
			w.named(ctx, net.JoinHostPort(f[3], f[4]), SwitchChannel)
		}
	}
}

// named records that a Sentinel names addr as master; if it was another
// node before, the subscription moves.
func (w *masterWatch) named(ctx context.Context, addr, source string) {
	w.mu.Lock()
	before := w.master
	w.master = addr
	w.mu.Unlock()
	if before == "" || before == addr {
		return
	}
	w.l.switches.Add(1)
	w.l.log.InfoContext(ctx, "master switched", "master_name", w.name, "from", before, "to", addr, "source", source)
	w.s.reopen()
	if f := w.l.cfg.TopologyFunc; f != nil {
		f(ctx)
	}
}
