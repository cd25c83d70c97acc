package lease

import (
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/ackd/ackd/internal/redistest"
)

// TestLibSplit: lib.lua's header and definitions are the whole file, in
// order, each definition names what it defines, no name is defined twice,
// and the header is comments only.
func TestLibSplit(t *testing.T) {
	t.Parallel()
	var whole strings.Builder
	whole.WriteString(scriptLib.header)
	seen := map[string]bool{}
	for _, d := range scriptLib.defs {
		whole.WriteString(d.text)
		if len(d.names) == 0 {
			t.Errorf("a definition without a name: %q", d.text)
		}
		for _, n := range d.names {
			if seen[n] {
				t.Errorf("lib.lua defines %s twice", n)
			}
			seen[n] = true
		}
	}
	if whole.String() != libLua {
		t.Error("lib.lua's header and definitions joined are not lib.lua")
	}
	if len(scriptLib.defs) < 20 {
		t.Errorf("lib.lua cut into %d definitions, want one per helper (20 or more)", len(scriptLib.defs))
	}
	if names := luaNames(scriptLib.header); len(names) > 0 {
		t.Errorf("lib.lua's header has code: %v", slices.Sorted(maps.Keys(names)))
	}
	// A script that names every helper gets all of lib.lua.
	var all []string
	for _, d := range scriptLib.defs {
		all = append(all, d.names...)
	}
	body := "return {" + strings.Join(all, ", ") + "}\n"
	if got := scriptLib.assemble(body); got != libLua+"\n"+body {
		t.Error("a script that uses every helper does not get lib.lua whole")
	}
}

// TestAssemble: a script gets the definitions it names in its code and
// those they name, in the library's order; names in comments and strings
// do not count.
func TestAssemble(t *testing.T) {
	t.Parallel()
	l := splitLib(`-- header

local A, B = 1, 2
-- b uses A
local function b()
  return A
end

-- c names b only in a string and a comment
local function c() return 'b()' end -- b()
local function d() return b() --[==[ c() ]==] end
local E = {
  d = 1,
}
local F = [[ c ]] .. B
`)
	if l.header != "-- header\n\n" || len(l.defs) != 6 {
		t.Fatalf("header %q, %d definitions", l.header, len(l.defs))
	}
	cases := []struct{ body, want string }{
		{"return d()", "A b d"},
		{"return c()", "c"},
		{"return F", "A F"},
		{"-- b() c()\nreturn 'd()' .. [=[ E ]=] .. \"F\\\" A\"", ""},
		{"--[[ A\n]] return E, B", "A b d E"}, // E's field d counts: one too many is harmless
		{"return 1e15, 0xd", ""},
	}
	for _, tc := range cases {
		got := l.assemble(tc.body)
		if !strings.HasPrefix(got, l.header) || !strings.HasSuffix(got, "\n"+tc.body) {
			t.Errorf("%q: not header, definitions, newline, script: %q", tc.body, got)
			continue
		}
		var want strings.Builder
		for _, d := range l.defs {
			if slices.ContainsFunc(d.names, func(n string) bool { return slices.Contains(strings.Fields(tc.want), n) }) {
				want.WriteString(d.text)
			}
		}
		if mid := got[len(l.header) : len(got)-len(tc.body)-1]; mid != want.String() {
			t.Errorf("%q gets %q, want the definitions of %s", tc.body, mid, tc.want)
		}
	}

	// A top-level statement that is no definition is refused at start.
	for _, src := range []string{"local A = 1\nredis.call('PING')\n", "redis.call('PING')\n", "local x\n"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("splitLib(%q) did not panic", src)
				}
			}()
			splitLib(src)
		}()
	}
}

// TestScriptsDeterministic: each script's text depends only on lib.lua and
// the script, the same on every build and every start (its SHA1 is what
// clients call it by).
func TestScriptsDeterministic(t *testing.T) {
	t.Parallel()
	bodies := map[string]string{
		"take": takeLua, "ack": ackLua, "extend": extendLua, "nack": nackLua, "deadletter": deadletterLua,
		"sweep": sweepLua, "push": pushLua, "replay": replayLua, "purge": purgeLua, "release": releaseLua,
		"fail": failLua, "pause": pauseLua, "stats": statsLua, "peek": peekLua,
	}
	if !slices.Equal(slices.Sorted(maps.Keys(bodies)), slices.Sorted(maps.Keys(library.sources))) {
		t.Fatalf("scripts %v, want %v", slices.Sorted(maps.Keys(library.sources)), slices.Sorted(maps.Keys(bodies)))
	}
	for range 20 {
		l := splitLib(libLua)
		for name, body := range bodies {
			if l.assemble(body) != library.sources[name] {
				t.Fatalf("%s: assembled twice, two texts", name)
			}
		}
	}
	// ack, the smallest hot-path script, leaves out what it does not use.
	if strings.Contains(library.sources["ack"], "local function parse_env(") {
		t.Error("the ack script carries parse_env, which it does not use")
	}
}

// TestScriptsHaveTheirHelpers compiles each script's text in Redis and
// reads the globals its bytecode reads or writes: a lib.lua helper among
// them is one the script calls but was not given (Redis would fail the
// call only when it reaches that line).
func TestScriptsHaveTheirHelpers(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := t.Context()
	helpers := map[string]bool{}
	for _, d := range scriptLib.defs {
		for _, n := range d.names {
			helpers[n] = true
		}
	}
	globals := func(name, text string) []string {
		t.Helper()
		dump, err := rdb.Eval(ctx, "return string.dump(assert(loadstring(ARGV[1], ARGV[2])))", nil, text, name).Text()
		if err != nil {
			t.Fatalf("%s does not compile: %v", name, err)
		}
		gs, err := luaGlobals([]byte(dump))
		if err != nil {
			t.Fatalf("%s: reading its bytecode: %v", name, err)
		}
		var missing []string
		for _, g := range gs {
			if helpers[g] {
				missing = append(missing, g)
			}
		}
		return missing
	}
	for name, text := range library.sources {
		if missing := globals(name, text); len(missing) > 0 {
			t.Errorf("the %s script uses %v from lib.lua without defining them", name, missing)
		}
	}
	// The library: every helper and KEYS and ARGV are its locals, not
	// globals (Redis runs its code, minus the shebang line, as a chunk).
	_, code, _ := strings.Cut(library.code, "\n")
	if missing := globals("library", code); len(missing) > 0 {
		t.Errorf("the library uses %v from lib.lua without defining them", missing)
	}
	helpers["KEYS"], helpers["ARGV"] = true, true
	if missing := globals("library", code); len(missing) > 0 {
		t.Errorf("the library reads or writes %v as globals", missing)
	}
	// The check sees a helper left out: take.lua alone, without lib.lua.
	if missing := globals("take.lua", takeLua); !slices.Contains(missing, "take_env") || !slices.Contains(missing, "MARK") {
		t.Errorf("take.lua alone uses %v from lib.lua, want take_env and MARK among them", missing)
	}
}

// luaGlobals returns the names of the globals that a Lua 5.1 chunk, as
// string.dump writes it, reads (GETGLOBAL) or writes (SETGLOBAL), in any of
// its functions.
func luaGlobals(dump []byte) ([]string, error) {
	r := &luaDump{b: dump}
	hdr := r.take(12)
	if r.err != nil || string(hdr[:5]) != "\x1bLua\x51" || hdr[6] != 1 || hdr[7] != 4 || hdr[8] != 8 || hdr[9] != 4 || hdr[10] != 8 {
		return nil, fmt.Errorf("not a little-endian 64-bit Lua 5.1 chunk: % x", hdr)
	}
	var out []string
	r.function(&out)
	if r.err == nil && len(r.b) > 0 {
		r.err = errors.New("bytes after the main function")
	}
	return out, r.err
}

type luaDump struct {
	b   []byte
	err error
}

func (r *luaDump) take(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b) {
		if r.err == nil {
			r.err = errors.New("truncated")
		}
		return make([]byte, max(n, 0))
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *luaDump) int() int { return int(int32(binary.LittleEndian.Uint32(r.take(4)))) }

func (r *luaDump) str() string {
	n := binary.LittleEndian.Uint64(r.take(8))
	if n > uint64(len(r.b)) {
		r.err = errors.New("string beyond the end")
		return ""
	}
	return strings.TrimSuffix(string(r.take(int(n))), "\x00")
}

// function reads one function (lundump.c LoadFunction) and appends the
// globals its code names to out.
func (r *luaDump) function(out *[]string) {
	const getGlobal, setGlobal = 5, 7 // lopcodes.h
	r.str()                           // source
	r.take(4 * 2)                     // linedefined, lastlinedefined
	r.take(4)                         // nups, numparams, is_vararg, maxstacksize
	code := r.take(4 * r.int())
	consts := make([]string, r.int())
	for i := range consts {
		switch t := r.take(1)[0]; t {
		case 0: // nil
		case 1: // boolean
			r.take(1)
		case 3: // number
			r.take(8)
		case 4:
			consts[i] = r.str()
		default:
			r.err = fmt.Errorf("constant of type %d", t)
			return
		}
	}
	for i := 0; i+4 <= len(code) && r.err == nil; i += 4 {
		ins := binary.LittleEndian.Uint32(code[i:])
		if op := ins & 0x3f; op == getGlobal || op == setGlobal {
			bx := int(ins >> 14)
			if bx >= len(consts) {
				r.err = fmt.Errorf("global constant %d of %d", bx, len(consts))
				return
			}
			if !slices.Contains(*out, consts[bx]) {
				*out = append(*out, consts[bx])
			}
		}
	}
	for n := r.int(); n > 0 && r.err == nil; n-- {
		r.function(out)
	}
	r.take(4 * r.int()) // line info
	for n := r.int(); n > 0 && r.err == nil; n-- {
		r.str()       // local's name
		r.take(4 * 2) // startpc, endpc
	}
	for n := r.int(); n > 0 && r.err == nil; n-- {
		r.str() // upvalue's name
	}
}

// TestLibraryFormat: the library's name is "ackd_" and 12 hex digits of
// the SHA1 of its code under the name "ackd", its code is that code under
// its name, and each script's function is <name>_<script>; the read-only
// scripts carry no-writes.
func TestLibraryFormat(t *testing.T) {
	t.Parallel()
	sum := sha1.Sum([]byte(libraryCode("ackd")))
	l := Library()
	if want := "ackd_" + hex.EncodeToString(sum[:])[:12]; l.Name != want {
		t.Errorf("name %s, want %s", l.Name, want)
	}
	if l.Code != libraryCode(l.Name) || !strings.HasPrefix(l.Code, "#!lua name="+l.Name+"\nlocal KEYS, ARGV\n"+libLua) {
		t.Error("the code is not libraryCode(name): shebang, KEYS and ARGV, lib.lua, the functions")
	}
	if !slices.Equal(slices.Sorted(maps.Keys(l.Functions)), slices.Sorted(maps.Keys(Scripts()))) {
		t.Errorf("functions %v, want one per script", l.Functions)
	}
	for name, fn := range l.Functions {
		flags := "{}"
		if name == "stats" || name == "peek" {
			flags = "{'no-writes'}"
		}
		body := map[string]string{}
		for _, d := range scriptDefs {
			body[d.name] = d.body
		}
		want := "\nredis.register_function{function_name='" + fn + "', callback=function(k, a) KEYS, ARGV = k, a\n" +
			body[name] + "end, flags=" + flags + "}\n"
		if fn != l.Name+"_"+name || !strings.Contains(l.Code, want) {
			t.Errorf("%s: function %s is not the wrapped %s.lua with flags %s", name, fn, name, flags)
		}
	}
	// A different library gets another name.
	if libraryCode("ackd") == libraryCode("ackd_x") {
		t.Error("the name is not in the code")
	}
	l.Functions["take"] = "changed"
	if Library().Functions["take"] == "changed" {
		t.Error("Library() returned the package's own map")
	}
}
