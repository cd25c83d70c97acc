package lease

import (
	_ "embed"
	"maps"

	"github.com/redis/go-redis/v9"
)

// Each state transition is one Lua script, run atomically by Redis. lib.lua
// holds the helpers they share and is prepended to each of them.
var (
	//go:embed lua/lib.lua
	libLua string
	//go:embed lua/take.lua
	takeLua string
	//go:embed lua/ack.lua
	ackLua string
	//go:embed lua/extend.lua
	extendLua string
	//go:embed lua/nack.lua
	nackLua string
	//go:embed lua/deadletter.lua
	deadletterLua string
	//go:embed lua/sweep.lua
	sweepLua string
	//go:embed lua/push.lua
	pushLua string
	//go:embed lua/replay.lua
	replayLua string
	//go:embed lua/purge.lua
	purgeLua string
	//go:embed lua/release.lua
	releaseLua string
	//go:embed lua/fail.lua
	failLua string
	//go:embed lua/pause.lua
	pauseLua string
	//go:embed lua/stats.lua
	statsLua string
	//go:embed lua/peek.lua
	peekLua string
)

// sources holds each script's full text, as loaded: lib.lua, a newline,
// then the script itself.
var sources = map[string]string{}

func newScript(name, body string) *redis.Script {
	sources[name] = libLua + "\n" + body
	return redis.NewScript(sources[name])
}

var (
	takeScript       = newScript("take", takeLua)
	ackScript        = newScript("ack", ackLua)
	extendScript     = newScript("extend", extendLua)
	nackScript       = newScript("nack", nackLua)
	deadletterScript = newScript("deadletter", deadletterLua)
	sweepScript      = newScript("sweep", sweepLua)
	pushScript       = newScript("push", pushLua)
	replayScript     = newScript("replay", replayLua)
	purgeScript      = newScript("purge", purgeLua)
	releaseScript    = newScript("release", releaseLua)
	failScript       = newScript("fail", failLua)
	pauseScript      = newScript("pause", pauseLua)
	statsScript      = newScript("stats", statsLua)
	peekScript       = newScript("peek", peekLua)
)

// Scripts returns the source of every script by name ("take", "ack", ...),
// exactly as ackd loads it: lib.lua, a newline, then the script. Clients
// in other languages can SCRIPT LOAD these (see docs/PROTOCOL.md).
func Scripts() map[string]string {
	return maps.Clone(sources)
}
