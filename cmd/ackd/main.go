// Command ackd is the lease daemon: it returns the expired leases of ackd
// queues in Redis to their ready lists. ackd -h lists its configuration.
// With a command (ackd help lists them) it is the operator tool instead.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/caarlos0/env/v11"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Every signal also lands here: the first one cancels ctx, a second one
	// cuts the graceful shutdown short.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		<-sigs
		fmt.Fprintln(os.Stderr, "ackd: second signal, exiting without finishing the shutdown")
		os.Exit(1)
	}()
	if isCommand(os.Args[1:]) {
		os.Exit(cliMain(ctx, os.Args[1:]))
	}
	if err := run(ctx, os.Args[1:], env.ToMap(os.Environ()), os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "ackd:", err)
		os.Exit(1)
	}
}
