package lease

import (
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"fmt"
	"maps"
	"regexp"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Each state transition is one Lua script, run atomically by Redis. lib.lua
// holds the helpers they share; each script is loaded with those it uses
// (see assemble).
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

// scriptLib is lib.lua cut into its top-level definitions.
var scriptLib = splitLib(libLua)

// A script's text is lib.lua's header comment, the definitions of lib.lua
// that the script uses (directly, or through another definition it uses),
// in lib.lua's order, a newline, then the script. Redis runs a script's
// whole text on every call, so each definition it carries costs every
// call (a closure for each local function), used or not.
//
// Every top-level line of lib.lua that starts a statement is a definition
// at column 0: `local function name(` or `local name = ` (several names
// allowed). A definition's part of the text runs from the comment lines
// right above it to the next definition's comment lines; what comes
// before the first one is the header, comments only. A definition is used
// when one of its names appears as a Lua name in the code (comments and
// strings do not count) of the script or of a definition used. Lua
// resolves a local only after its definition, so a definition can use only
// the ones above it, which keeps the order valid. With every definition
// used the text is lib.lua, a newline, then the script.

// libDef is one top-level definition of lib.lua.
type libDef struct {
	names []string        // the locals it defines
	uses  map[string]bool // the Lua names in its code
	text  string          // its lines, the comments above it first
}

// luaLib is lib.lua cut into its header and definitions, in order.
type luaLib struct {
	header string
	defs   []libDef
}

var (
	libFuncLine  = regexp.MustCompile(`^local function ([A-Za-z_][A-Za-z0-9_]*)\s*\(`)
	libLocalLine = regexp.MustCompile(`^local ([A-Za-z_][A-Za-z0-9_]*(?:\s*,\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*=`)
)

// splitLib cuts src into its header and definitions. It panics on a
// top-level line it cannot place: lib.lua is embedded, so that fails
// every test and every program at start, never later.
func splitLib(src string) luaLib {
	lines := strings.SplitAfter(src, "\n")
	var l luaLib
	start := 0         // first line of the part being read
	comments := -1     // first of the comment lines right above, or -1
	var names []string // the names the part being read defines; nil in the header
	flush := func(to int) {
		text := strings.Join(lines[start:to], "")
		if names == nil {
			l.header = text
		} else {
			l.defs = append(l.defs, libDef{names: names, uses: luaNames(text), text: text})
		}
		start = to
	}
	for i, line := range lines {
		var defined []string
		if m := libFuncLine.FindStringSubmatch(line); m != nil {
			defined = []string{m[1]}
		} else if m := libLocalLine.FindStringSubmatch(line); m != nil {
			for n := range strings.SplitSeq(m[1], ",") {
				defined = append(defined, strings.TrimSpace(n))
			}
		}
		switch {
		case defined != nil:
			first := i
			if comments >= 0 {
				first = comments
			}
			flush(first)
			names = defined
			comments = -1
		case strings.HasPrefix(line, "--"):
			if comments < 0 {
				comments = i
			}
		case strings.TrimSpace(line) == "":
			comments = -1
		case names != nil && (line == "end\n" || line == "end" || line[0] == ' ' || line[0] == '\t' || line[0] == '}' || line[0] == ')'):
			comments = -1 // inside or closing the definition above
		default:
			panic(fmt.Sprintf("lease: lua/lib.lua line %d is no definition (local function name( or local name =): %q", i+1, line))
		}
	}
	flush(len(lines))
	return l
}

// assemble returns the text of the script body: the header, the
// definitions it uses, a newline, then body.
func (l luaLib) assemble(body string) string {
	want := luaNames(body)
	use := make([]bool, len(l.defs))
	for i := len(l.defs) - 1; i >= 0; i-- {
		for _, n := range l.defs[i].names {
			if want[n] {
				use[i] = true
			}
		}
		if use[i] {
			for n := range l.defs[i].uses {
				want[n] = true
			}
		}
	}
	var b strings.Builder
	b.WriteString(l.header)
	for i, d := range l.defs {
		if use[i] {
			b.WriteString(d.text)
		}
	}
	b.WriteString("\n")
	b.WriteString(body)
	return b.String()
}

// luaNames returns the names in the code of Lua source src: every word
// outside comments and string literals. Keywords and field names (m.total)
// count too: a name too many only costs a definition too many, one too few
// would leave a script calling a helper it does not have.
func luaNames(src string) map[string]bool {
	names := map[string]bool{}
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case strings.HasPrefix(src[i:], "--"):
			i += 2
			if n := longBracket(src[i:]); n > 0 {
				i = skipLong(src, i, n)
			} else if j := strings.IndexByte(src[i:], '\n'); j >= 0 {
				i += j + 1
			} else {
				i = len(src)
			}
		case c == '[' && longBracket(src[i:]) > 0:
			i = skipLong(src, i, longBracket(src[i:]))
		case c == '\'' || c == '"':
			for i++; i < len(src) && src[i] != c; i++ {
				if src[i] == '\\' {
					i++
				}
			}
			i++
		case isLuaNameByte(c) && (c < '0' || c > '9'):
			j := i + 1
			for j < len(src) && isLuaNameByte(src[j]) {
				j++
			}
			names[src[i:j]] = true
			i = j
		case c >= '0' && c <= '9':
			// a number: digits, letters (1e15, 0xff) and its point
			for i++; i < len(src) && (isLuaNameByte(src[i]) || src[i] == '.'); i++ {
			}
		default:
			i++
		}
	}
	return names
}

func isLuaNameByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// longBracket returns the length of the opening long bracket ([[, [=[,
// [==[, ...) at the start of s, or 0.
func longBracket(s string) int {
	if !strings.HasPrefix(s, "[") {
		return 0
	}
	n := 1
	for n < len(s) && s[n] == '=' {
		n++
	}
	if n < len(s) && s[n] == '[' {
		return n + 1
	}
	return 0
}

// skipLong returns the position after the long string or comment whose
// opening bracket of length n starts at src[i].
func skipLong(src string, i, n int) int {
	end := "]" + strings.Repeat("=", n-2) + "]"
	if j := strings.Index(src[i+n:], end); j >= 0 {
		return i + n + j + len(end)
	}
	return len(src)
}

// scriptDefs lists the scripts in the library's order. readOnly ones
// write nothing: their functions carry the no-writes flag, so Redis runs
// them also when it is out of memory, as it runs read-only EVALSHA calls.
var scriptDefs = []struct {
	name, body string
	readOnly   bool
}{
	{"take", takeLua, false},
	{"ack", ackLua, false},
	{"extend", extendLua, false},
	{"nack", nackLua, false},
	{"deadletter", deadletterLua, false},
	{"sweep", sweepLua, false},
	{"push", pushLua, false},
	{"replay", replayLua, false},
	{"purge", purgeLua, false},
	{"release", releaseLua, false},
	{"fail", failLua, false},
	{"pause", pauseLua, false},
	{"stats", statsLua, true},
	{"peek", peekLua, true},
}

// library holds every script, both as a function of one Redis function
// library and as its own text for EVALSHA.
var library = newFuncLib()

var (
	takeScript       = library.scripts["take"]
	ackScript        = library.scripts["ack"]
	extendScript     = library.scripts["extend"]
	nackScript       = library.scripts["nack"]
	deadletterScript = library.scripts["deadletter"]
	sweepScript      = library.scripts["sweep"]
	pushScript       = library.scripts["push"]
	replayScript     = library.scripts["replay"]
	purgeScript      = library.scripts["purge"]
	releaseScript    = library.scripts["release"]
	failScript       = library.scripts["fail"]
	pauseScript      = library.scripts["pause"]
	statsScript      = library.scripts["stats"]
	peekScript       = library.scripts["peek"]
)

// script is one of ackd's scripts. Run calls it as a function of the
// library (FCALL) where the server allows, else by its own text
// (EVALSHA, then EVAL on NOSCRIPT: the embedded redis.Script).
type script struct {
	*redis.Script
	name string
	fn   string // its function's name in the library
}

// funcLib is ackd's function library: every script, built once.
type funcLib struct {
	name    string             // ackd_ and 12 hex digits of the code's hash
	code    string             // FUNCTION LOAD's argument
	sources map[string]string  // each script's own text (Scripts)
	scripts map[string]*script // by name
}

// The library's code is
//
//	#!lua name=<name>
//	local KEYS, ARGV
//	<lib.lua, whole>
//	redis.register_function{function_name='<name>_<op>', callback=function(k, a) KEYS, ARGV = k, a
//	<op>.lua
//	end, flags={...}}
//
// for each script in scriptDefs' order, flags {'no-writes'} for the
// read-only ones and {} for the others. Redis runs lib.lua once, when it
// loads the library; each call then runs only its script's body, with
// KEYS and ARGV set as EVALSHA sets them. The name is "ackd_" and the
// first 12 hex digits of the SHA1 of the code built with the name "ackd":
// a library and its function names differ with every change to a script,
// so clients of two ackd versions can share one Redis, each with its own.
func newFuncLib() *funcLib {
	sum := sha1.Sum([]byte(libraryCode("ackd")))
	l := &funcLib{
		name:    "ackd_" + hex.EncodeToString(sum[:6]),
		sources: map[string]string{},
		scripts: map[string]*script{},
	}
	l.code = libraryCode(l.name)
	for _, d := range scriptDefs {
		l.sources[d.name] = scriptLib.assemble(d.body)
		l.scripts[d.name] = &script{Script: redis.NewScript(l.sources[d.name]), name: d.name, fn: l.name + "_" + d.name}
	}
	return l
}

// libraryCode is the library's code under name.
func libraryCode(name string) string {
	var b strings.Builder
	b.WriteString("#!lua name=" + name + "\n")
	b.WriteString("local KEYS, ARGV\n")
	b.WriteString(libLua)
	for _, d := range scriptDefs {
		flags := "{}"
		if d.readOnly {
			flags = "{'no-writes'}"
		}
		fmt.Fprintf(&b, "\nredis.register_function{function_name='%s_%s', callback=function(k, a) KEYS, ARGV = k, a\n", name, d.name)
		b.WriteString(d.body)
		if !strings.HasSuffix(d.body, "\n") {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "end, flags=%s}\n", flags)
	}
	return b.String()
}

// Scripts returns the source of every script by name ("take", "ack", ...),
// exactly as ackd sends it to EVALSHA and EVAL where it cannot call its
// function library (see Library): lib.lua's header and the parts of
// lib.lua the script uses, a newline, then the script (see
// docs/PROTOCOL.md). Clients in other languages can SCRIPT LOAD these.
func Scripts() map[string]string {
	return maps.Clone(library.sources)
}

// FunctionLibrary is ackd's scripts as one Redis 7 function library, as
// ackd loads it (see docs/PROTOCOL.md, "Loading the scripts").
type FunctionLibrary struct {
	// Name is the library's name: "ackd_" and 12 hex digits that change
	// with the code.
	Name string
	// Code is the argument of FUNCTION LOAD.
	Code string
	// Functions maps each script's name ("take", as in Scripts) to its
	// function's name, the first argument of FCALL.
	Functions map[string]string
}

// Library returns ackd's function library.
func Library() FunctionLibrary {
	fl := FunctionLibrary{Name: library.name, Code: library.code, Functions: map[string]string{}}
	for name, s := range library.scripts {
		fl.Functions[name] = s.fn
	}
	return fl
}
