-- The medlua program itself, run as a subprocess: options, script arguments, exit codes, errors
-- with tracebacks, stdin, package.path, Ctrl-C, and the REPL (through a pseudo-terminal).
local T = require "medlua.test"
local exe = arg[-1]
T.ok(exe ~= nil, "arg[-1] must hold the medlua binary")

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- run a shell command; returns stdout, stderr, exit code
local function run(cmd, input)
  local out, err = os.tmpname(), os.tmpname()
  local full = "(" .. cmd .. ") >" .. out .. " 2>" .. err
  if input then
    local inf = os.tmpname()
    local f = assert(io.open(inf, "w"))
    f:write(input)
    f:close()
    full = full .. " <" .. inf
    local ok, how, code = os.execute(full)
    os.remove(inf)
    code = ok and 0 or code
    local so, se = io.open(out):read("a"), io.open(err):read("a")
    os.remove(out); os.remove(err)
    return so, se, code, how
  end
  local ok, how, code = os.execute(full .. " </dev/null")
  code = ok and 0 or code
  local so, se = io.open(out):read("a"), io.open(err):read("a")
  os.remove(out); os.remove(err)
  return so, se, code, how
end

local function write_file(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

T.case("--version and -v", function()
  for _, opt in ipairs({"--version", "-v"}) do
    local out, err, code = run(q(exe) .. " " .. opt)
    T.eq(code, 0, err)
    T.ok(out:match("^medlua %d+%.%d+%.%d+ %(Lua 5%.4%.%d+, oneDNN %d+%.%d+%.%d+%)\n$"), out)
  end
end)

T.case("--help and -h print usage and exit 0", function()
  for _, opt in ipairs({"--help", "-h"}) do
    local out, _, code = run(q(exe) .. " " .. opt)
    T.eq(code, 0)
    T.ok(out:find("usage: ", 1, true) and out:find("-e stat", 1, true) and out:find("-i", 1, true), out)
  end
end)

T.case("bad options exit 1 with usage on stderr", function()
  local _, err, code = run(q(exe) .. " -z")
  T.eq(code, 1)
  T.ok(err:find("unrecognized option '-z'", 1, true) and err:find("usage:", 1, true), err)
  _, err, code = run(q(exe) .. " -e")
  T.eq(code, 1)
  T.ok(err:find("'-e' needs argument", 1, true), err)
  _, err, code = run(q(exe) .. " --bogus")
  T.eq(code, 1)
end)

T.case("-e runs statements with medlua preloaded", function()
  local out, err, code = run(q(exe) .. " -e " .. q("print(1 + 1)") .. " -e " .. q("print(medlua.ones(3):sum():item())"))
  T.eq(code, 0, err)
  T.eq(out, "2\n3.0\n")
  out = run(q(exe) .. " -e " .. q("print(require('medlua') == medlua, medlua.F ~= nil, type(medlua.save))"))
  T.eq(out, "true\ttrue\tfunction\n")
end)

T.case("script arguments: arg table and ... like the lua program", function()
  local path = os.tmpname() .. ".lua"
  write_file(path, [[
print(arg[0], arg[1], arg[2], #arg, select('#', ...), ...)
print(arg[-1], arg[-2], arg[-3] ~= nil, arg[-4])
]])
  local out, err, code = run(q(exe) .. " -e " .. q("x=1") .. " " .. q(path) .. " --epochs 50")
  T.eq(code, 0, err)
  local l1, l2 = out:match("^(.-)\n(.-)\n$")
  T.eq(l1, path .. "\t--epochs\t50\t2\t2\t--epochs\t50")
  T.eq(l2, "x=1\t-e\ttrue\tnil")
  -- arg[-1] is the interpreter when nothing precedes the script
  out = run(q(exe) .. " " .. q(path))
  T.eq(out:match("\n(.-)\n$"), exe .. "\tnil\tfalse\tnil")
  -- '--' ends the options
  out, err, code = run(q(exe) .. " -- " .. q(path) .. " -x")
  T.eq(code, 0, err)
  T.ok(out:find("\t-x\tnil\t1\t1\t-x\n", 1, true), out)
  os.remove(path)
end)

T.case("errors print a traceback to stderr and exit 1", function()
  local path = os.tmpname() .. ".lua"
  write_file(path, [[
local function inner() local r = medlua.ones(2) + medlua.ones(3); return r end
local function outer() local r = inner(); return r end
print("before")
outer()
print("not reached")
]])
  local out, err, code = run(q(exe) .. " " .. q(path))
  T.eq(code, 1)
  T.eq(out, "before\n")
  T.ok(err:find("add: shapes [2] and [3] cannot be broadcast", 1, true), err)
  T.ok(err:find("stack traceback:", 1, true), err)
  T.ok(err:find("'inner'", 1, true) and err:find("'outer'", 1, true), err)
  T.ok(err:find(":1:", 1, true), "the error names the script line: " .. err)
  os.remove(path)
  _, err, code = run(q(exe) .. " -e " .. q("error('boom')"))
  T.eq(code, 1)
  T.ok(err:find("boom", 1, true) and err:find("stack traceback", 1, true), err)
  _, err, code = run(q(exe) .. " /nonexistent/script.lua")
  T.eq(code, 1)
  T.ok(err:find("cannot open", 1, true), err)
  _, err, code = run(q(exe) .. " -e " .. q("x = = 1"))
  T.eq(code, 1)
  T.ok(err:find("unexpected symbol", 1, true), err)
  _, _, code = run(q(exe) .. " -e " .. q("os.exit(3)"))
  T.eq(code, 3)
  _, _, code = run(q(exe) .. " -e " .. q("error({code = 1})"))
  T.eq(code, 1)
end)

T.case("'-' and a non-terminal stdin run the chunk from stdin", function()
  local out, err, code = run(q(exe) .. " -", "print(40 + 2)\n")
  T.eq(code, 0, err)
  T.eq(out, "42\n")
  out, err, code = run(q(exe) .. " - a b", "print(...)\n")
  T.eq(code, 0, err)
  T.eq(out, "a\tb\n")
  out, err, code = run(q(exe), "print(medlua.zeros(2, 2).shape[1])\n")
  T.eq(code, 0, err)
  T.eq(out, "2\n")
  _, err, code = run(q(exe) .. " -", "error('from stdin')\n")
  T.eq(code, 1)
  T.ok(err:find("from stdin", 1, true), err)
end)

T.case("-l requires a module into a global", function()
  local out, err, code = run(q(exe) .. " -l medlua.test -e " .. q("print(type(test.run))"))
  T.eq(code, 0, err)
  T.eq(out, "function\n")
  out, err, code = run(q(exe) .. " -l tt=medlua.test -e " .. q("print(type(tt.case))"))
  T.eq(code, 0, err)
  T.eq(out, "function\n")
  local _, err2, code2 = run(q(exe) .. " -l no.such.module")
  T.eq(code2, 1)
  T.ok(err2:find("module 'no.such.module' not found", 1, true), err2)
end)

T.case("package.path: library next to the binary, MEDLUA_PATH first, -E ignores it", function()
  local out = run(q(exe) .. " -e " .. q("print(package.path)"))
  T.ok(out:find("/../lua/?.lua;", 1, true), out)
  T.ok(out:find("/../share/medlua/lua/?.lua", 1, true), out)
  T.ok(out:find("./?.lua", 1, true), out)
  local dir = os.tmpname()
  os.remove(dir)
  os.execute("mkdir -p " .. q(dir .. "/medlua"))
  write_file(dir .. "/mymod.lua", "return {answer = 42}\n")
  write_file(dir .. "/medlua/core_ext.lua", "local m = require 'medlua'\nm.ext_loaded = true\n")
  local env = "MEDLUA_PATH=" .. q(dir .. "/?.lua") .. " "
  out = run(env .. q(exe) .. " -e " .. q("print(package.path:sub(1, #'" .. dir .. "')  == '" .. dir .. "', require('mymod').answer)"))
  T.eq(out, "true\t42\n")
  out = run(env .. q(exe) .. " -e " .. q("print(medlua.ext_loaded)"))
  T.eq(out, "true\n", "medlua.core_ext is loaded when present")
  local _, _, code = run(env .. q(exe) .. " -E -e " .. q("require('mymod')"))
  T.eq(code, 1)
  out = run("MEDLUA_INIT=" .. q("x = 41") .. " " .. q(exe) .. " -e " .. q("print(x + 1)"))
  T.eq(out, "42\n")
  os.execute("rm -rf " .. q(dir))
end)

T.case("Ctrl-C interrupts a running script with a traceback", function()
  local out, err, code = run("timeout --preserve-status -s INT 1 " .. q(exe) .. " -e " ..
    q("io.write('started\\n') io.flush() local a = medlua.ones(1) while true do a = a + 0 end"))
  T.eq(out, "started\n")
  T.eq(code, 1, err)
  T.ok(err:find("interrupted!", 1, true) and err:find("stack traceback", 1, true), err)
end)

T.case("a failed allocation runs a full GC and retries; real exhaustion is a clean error", function()
  if os.getenv("SAN") == "1" then return end -- ASan reserves more address space than the limit allows
  local limit = "ulimit -v 900000; "
  -- garbage tensors with the collector stopped: only the out-of-memory handler can free them
  local out, err, code = run(limit .. q(exe) .. " -e " ..
    q("collectgarbage('stop') for i = 1, 40 do local t = medlua.empty(25000000) end print('done')"))
  T.eq(code, 0, err)
  T.eq(out, "done\n")
  out, err, code = run(limit .. q(exe) .. " -e " ..
    q("local keep = {} for i = 1, 40 do keep[i] = medlua.empty(25000000) end"))
  T.eq(code, 1)
  T.ok(err:find("empty: out of memory allocating 100000000 bytes", 1, true), err)
  T.ok(err:find("stack traceback", 1, true), err)
end)

T.case("-i runs the REPL after the script (stdin not a terminal)", function()
  local input = table.concat({
    "x + 1",                 -- expression: printed
    "=x * 10",               -- '=expr' form
    "y = 3",                 -- statement: nothing printed
    "for i = 1, 2 do",       -- multi-line chunk
    "  print('line', i)",
    "end",
    "error('oops')",         -- an error does not end the session
    "medlua.ones(2) + medlua.ones(3)",
    "print('still here', y)",
    "medlua.tensor({1, 2})", -- values print via tostring
    "1, 'two', nil",
    "",
  }, "\n")
  local out, err, code = run(q(exe) .. " -i -e " .. q("x = 1"), input)
  T.eq(code, 0, err)
  T.ok(out:find("^medlua %d"), out)
  T.ok(out:find("\n?> 2\n") or out:find("2\n", 1, true), out)
  T.ok(out:find("> 10\n", 1, true), out)
  T.ok(out:find("line\t1\n", 1, true) and out:find("line\t2\n", 1, true), out)
  T.ok(out:find(">> ", 1, true), "continuation prompt: " .. out)
  T.ok(out:find("still here\t3\n", 1, true), out)
  T.ok(out:find("tensor([1., 2.])", 1, true), out)
  T.ok(out:find("1\ttwo\tnil\n", 1, true), out)
  T.ok(err:find("oops", 1, true) and err:find("add: shapes [2] and [3]", 1, true), err)
end)

T.case("REPL in a terminal: completion, multi-line, Ctrl-C, history", function()
  if not os.execute("command -v script >/dev/null 2>&1") then return end -- util-linux 'script' not installed
  local home = os.tmpname()
  os.remove(home)
  os.execute("mkdir -p " .. q(home))
  local steps = {
    {"t = medlua.zeros(2, 3)\n", 0.3},
    {"print(t:nu\t())\n", 0.5},           -- t:nu<TAB> completes the method numel
    {"print(medlua.ver\t)\n", 0.5},       -- medlua.ver<TAB> -> version
    {"for i = 1, 2 do\n", 0.3},
    {"print(i * 7)\nend\n", 0.5},
    {"while true do end\n", 1.0},         -- Ctrl-C interrupts the loop...
    {"\003", 0.7},
    {"print('alive')\n", 0.4},
    {"half typed", 0.3},                  -- ...and at the prompt clears the line
    {"\003", 0.4},
    {"print('cleared')\n", 0.4},
    {"\004", 0.3},
  }
  local parts = {}
  for _, s in ipairs(steps) do
    local bytes = s[1]:gsub(".", function(c) return string.format("\\%03o", c:byte()) end)
    parts[#parts + 1] = string.format("printf '%s'; sleep %.1f", bytes, s[2])
  end
  -- 'exec': script runs the command through $SHELL -c; a shell that stays in between (dash, the
  -- default when SHELL is unset) is killed by the first Ctrl-C and script then reports 130
  local cmd = "(" .. table.concat(parts, "; ") .. ") | HOME=" .. q(home) ..
    " timeout 30 script -qfec " .. q("exec " .. q(exe)) .. " /dev/null"
  local out, _, code = run(cmd)
  out = out:gsub("\27%[%?2004[hl]", ""):gsub("\r", "")
  T.eq(code, 0, out)
  T.ok(out:find("\n6\n", 1, true), "t:nu<TAB> -> numel: " .. out)
  T.ok(out:find("\n0.1.0\n", 1, true) or out:find("\n%d+%.%d+%.%d+\n"), "medlua.ver<TAB> -> version: " .. out)
  T.ok(out:find("\n7\n14\n", 1, true), "multi-line chunk: " .. out)
  T.ok(out:find("interrupted!", 1, true), "Ctrl-C in a loop: " .. out)
  T.ok(out:find("\nalive\n", 1, true), out)
  T.ok(out:find("\ncleared\n", 1, true), out)
  T.ok(not out:find("half typed\n.-half typed"), out)
  local h = io.open(home .. "/.medlua_history")
  T.ok(h ~= nil, "history file written")
  if h then
    local hist = h:read("a")
    h:close()
    T.ok(hist:find("t = medlua.zeros(2, 3)", 1, true) and hist:find("print(t:numel())", 1, true), hist)
    T.ok(hist:find("for i = 1, 2 do\nprint(i * 7)\nend", 1, true), "multi-line chunk kept whole: " .. hist)
  end
  os.execute("rm -rf " .. q(home))
end)

T.run()
