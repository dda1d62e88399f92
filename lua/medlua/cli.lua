-- medlua.cli: recipe arguments with defaults and --help.
--   local args = cli.parse(arg, {
--     description = "Train a tiny model",
--     {"--epochs", 5, "number of epochs"},            -- type from the default (number/string/boolean)
--     {"--out", "out/demo", "output folder"},
--     {"--verbose", false, "print more"},              -- boolean: a flag, --no-verbose turns it off
--     {"input", nil, "input file", positional = true},
--   })
-- Keys are the option names without dashes, '-' replaced by '_' (args.learning_rate).
local cli = {}

local function key_of(name) return (name:gsub("^%-%-", ""):gsub("%-", "_")) end

function cli.usage(spec, prog)
  local lines = {}
  local pos = {}
  for _, o in ipairs(spec) do if o.positional then pos[#pos + 1] = o[1]:upper() end end
  lines[#lines + 1] = string.format("usage: medlua %s [options]%s", prog or "script.lua",
    #pos > 0 and (" " .. table.concat(pos, " ")) or "")
  if spec.description then lines[#lines + 1] = "\n" .. spec.description end
  lines[#lines + 1] = "\noptions:"
  lines[#lines + 1] = string.format("  %-28s %s", "-h, --help", "show this help and exit")
  for _, o in ipairs(spec) do
    local name, def, help = o[1], o[2], o[3] or ""
    local shown = o.positional and name:upper() or (type(def) == "boolean" and name or (name .. " " .. (o.metavar or
      (type(def) == "number" and "N" or "VALUE"))))
    local d = def == nil and "" or string.format(" (default: %s)", tostring(def))
    lines[#lines + 1] = string.format("  %-28s %s%s", shown, help, d)
  end
  return table.concat(lines, "\n")
end

function cli.parse(argv, spec)
  local prog = argv and argv[0] or "script.lua"
  local args, byname, positional = {}, {}, {}
  for _, o in ipairs(spec) do
    local k = key_of(o[1])
    args[k] = o[2]
    if o.positional then positional[#positional + 1] = o else byname[o[1]] = o end
  end
  local i, npos = 1, 0
  local n = argv and #argv or 0
  local function fail(msg)
    io.stderr:write(msg, "\n", cli.usage(spec, prog), "\n")
    os.exit(2)
  end
  while i <= n do
    local a = argv[i]
    if a == "-h" or a == "--help" then
      print(cli.usage(spec, prog))
      os.exit(0)
    end
    local name, val = a:match("^(%-%-[%w%-_]+)=(.*)$")
    name = name or a
    local o = byname[name]
    local neg = false
    if not o and name:match("^%-%-no%-") then
      o = byname["--" .. name:sub(6)]
      neg = o ~= nil and type(o[2]) == "boolean"
      if not neg then o = nil end
    end
    if o then
      local k = key_of(o[1])
      if type(o[2]) == "boolean" then
        args[k] = not neg
      else
        if val == nil then
          i = i + 1
          val = argv[i]
          if val == nil then fail("error: option " .. name .. " needs a value") end
        end
        if type(o[2]) == "number" or o.type == "number" then
          local v = tonumber(val)
          if not v then fail(string.format("error: option %s expects a number, got '%s'", name, val)) end
          args[k] = v
        else
          args[k] = val
        end
      end
    elseif a:sub(1, 2) == "--" then
      fail("error: unknown option " .. a)
    else
      npos = npos + 1
      local p = positional[npos]
      if not p then fail("error: unexpected argument '" .. a .. "'") end
      args[key_of(p[1])] = p.type == "number" and tonumber(a) or a
    end
    i = i + 1
  end
  for _, p in ipairs(positional) do
    if args[key_of(p[1])] == nil and p.required then fail("error: missing argument " .. p[1]:upper()) end
  end
  return args
end

--- cli.clean(msg, first_line): an error message without its Lua "file.lua:N: " prefix (and only its first
--- line when first_line is true: a traceback or a long report stays out of a one-line message)
function cli.clean(msg, first_line)
  local m = tostring(msg):gsub("^[^:\n]*%.lua:%d+: ", "")
  if first_line then m = m:match("^[^\n]*") end
  return m
end

--- cli.die(prog, msg, first_line): print "prog: msg" (cleaned as cli.clean does) to stderr and exit 1
function cli.die(prog, msg, first_line)
  io.stderr:write(prog, ": ", cli.clean(msg, first_line), "\n")
  os.exit(1)
end

--- cli.split("a, b,,c") -> {"a", "b", "c"}   (comma-separated option values, blanks dropped)
function cli.split(s)
  local out = {}
  for p in tostring(s):gmatch("[^,]+") do
    p = p:gsub("^%s+", ""):gsub("%s+$", "")
    if p ~= "" then out[#out + 1] = p end
  end
  return out
end

--- cli.numbers(s, n, what, prog, {broadcast = true}) -> list of numbers from "1.5,2,2" (exits through
--- cli.die naming --what on a non-number or, with n, on a count other than n; broadcast: one value -> n)
function cli.numbers(s, n, what, prog, o)
  local v = {}
  for _, p in ipairs(cli.split(s)) do
    local x = tonumber(p)
    if not x then cli.die(prog, string.format("--%s: '%s' is not a number", what, p)) end
    v[#v + 1] = x
  end
  if o and o.broadcast and n and #v == 1 then
    for i = 2, n do v[i] = v[1] end
  end
  if n and #v ~= n then cli.die(prog, string.format("--%s: expected %d numbers, got '%s'", what, n, s)) end
  return v
end

return cli
