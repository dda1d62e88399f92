-- medlua.json: JSON encode/decode for configs, transforms.json and metric logs.
--   json.encode(value, {indent = 2, key_order = {"a", "b"}}) -> string
--   json.decode(string) -> value (objects -> tables, arrays -> lists, null -> json.null)
-- Tables with keys 1..n (n >= 1) encode as arrays, others as objects (keys sorted, or key_order first);
-- an empty table encodes as {} unless it is json.array{}; integers stay integers, floats keep 17 digits.
local json = {}

json.null = setmetatable({}, {__tostring = function() return "null" end})
local array_mt = {__jsontype = "array"}
function json.array(t) return setmetatable(t or {}, array_mt) end

local escapes = {['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
  ["\t"] = "\\t"}
local function esc(s)
  return '"' .. s:gsub('[%c"\\]', function(c) return escapes[c] or string.format("\\u%04x", c:byte()) end) .. '"'
end

local function is_array(t)
  if getmetatable(t) == array_mt then return true end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local function num(x)
  if math.type(x) == "integer" then return tostring(x) end
  if x ~= x or x == math.huge or x == -math.huge then error("json.encode: cannot encode " .. tostring(x), 0) end
  if x == math.floor(x) and math.abs(x) < 1e15 then return string.format("%.1f", x) end
  local s = string.format("%.15g", x)
  if tonumber(s) ~= x then s = string.format("%.17g", x) end
  return s
end

function json.encode(v, opts)
  opts = opts or {}
  local indent = opts.indent
  local order = {}
  for i, k in ipairs(opts.key_order or {}) do order[k] = i end
  local out = {}
  local function nl(depth)
    if indent then out[#out + 1] = "\n" .. string.rep(" ", indent * depth) end
  end
  local function enc(x, depth, seen)
    local t = type(x)
    if x == nil or x == json.null then out[#out + 1] = "null"
    elseif t == "boolean" then out[#out + 1] = tostring(x)
    elseif t == "number" then out[#out + 1] = num(x)
    elseif t == "string" then out[#out + 1] = esc(x)
    elseif t == "table" then
      if seen[x] then error("json.encode: table contains itself", 0) end
      seen[x] = true
      if is_array(x) then
        -- short arrays of numbers stay on one line (matrices read well)
        local flat = true
        for _, e in ipairs(x) do if type(e) == "table" then flat = false break end end
        out[#out + 1] = "["
        for i, e in ipairs(x) do
          if i > 1 then out[#out + 1] = indent and flat and ", " or "," end
          if not flat then nl(depth + 1) end
          enc(e, depth + 1, seen)
        end
        if not flat and #x > 0 then nl(depth) end
        out[#out + 1] = "]"
      else
        local keys = {}
        for k in pairs(x) do
          if type(k) ~= "string" then error("json.encode: object keys must be strings, got " .. type(k), 0) end
          keys[#keys + 1] = k
        end
        table.sort(keys, function(a, b)
          local oa, ob = order[a], order[b]
          if oa and ob then return oa < ob end
          if oa or ob then return oa ~= nil end
          return a < b
        end)
        out[#out + 1] = "{"
        for i, k in ipairs(keys) do
          if i > 1 then out[#out + 1] = "," end
          nl(depth + 1)
          out[#out + 1] = esc(k) .. (indent and ": " or ":")
          enc(x[k], depth + 1, seen)
        end
        if #keys > 0 then nl(depth) end
        out[#out + 1] = "}"
      end
      seen[x] = nil
    else
      error("json.encode: cannot encode a " .. t, 0)
    end
  end
  enc(v, 0, {})
  return table.concat(out)
end

function json.decode(s, name)
  if type(s) ~= "string" then error("json.decode: expected a string, got " .. type(s), 2) end
  name = name or "json"
  local pos = 1
  local function fail(msg)
    local line = select(2, s:sub(1, pos):gsub("\n", "")) + 1
    error(string.format("%s: line %d: %s", name, line, msg), 0)
  end
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local buf = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1 break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local map = {b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", ['"'] = '"', ["\\"] = "\\", ["/"] = "/"}
        if map[e] then buf[#buf + 1] = map[e]; pos = pos + 2
        elseif e == "u" then
          local h = s:sub(pos + 2, pos + 5)
          if not h:match("^%x%x%x%x$") then fail("bad \\u escape") end
          local cp = tonumber(h, 16)
          pos = pos + 6
          if cp >= 0xD800 and cp < 0xDC00 and s:sub(pos, pos + 1) == "\\u" then
            local lo = tonumber(s:sub(pos + 2, pos + 5), 16)
            if lo and lo >= 0xDC00 and lo < 0xE000 then
              cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
              pos = pos + 6
            end
          end
          buf[#buf + 1] = utf8.char(cp)
        else fail("bad escape \\" .. e) end
      else
        local j = s:find('["\\]', pos) or #s + 1
        buf[#buf + 1] = s:sub(pos, j - 1)
        pos = j
      end
    end
    return table.concat(buf)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local t = {}
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1 return t end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail("expected a string key") end
        local k = str()
        ws()
        if s:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        t[k] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "}" then return t end
        if d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      local t = json.array{}
      pos = pos + 1
      ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1 return t end
      while true do
        t[#t + 1] = value()
        ws()
        local d = s:sub(pos, pos)
        pos = pos + 1
        if d == "]" then return t end
        if d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4 return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5 return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4 return json.null
    else
      local n = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not n or n == "" or n == "-" then fail("unexpected " .. (c == "" and "end of input" or ("'" .. c .. "'"))) end
      pos = pos + #n
      local v = math.tointeger(tonumber(n)) or tonumber(n)
      if not v then fail("bad number '" .. n .. "'") end
      if not n:find("[.eE]") then return v end
      return tonumber(n)
    end
  end
  local v = value()
  ws()
  if pos <= #s then fail("trailing characters") end
  return v
end

function json.read(path)
  local f, err = io.open(path, "rb")
  if not f then error("json.read: " .. err, 2) end
  local s = f:read("a")
  f:close()
  return json.decode(s, path)
end

function json.write(path, v, opts)
  local s = json.encode(v, opts or {indent = 2}) .. "\n"
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "wb")
  if not f then error("json.write: " .. err, 2) end
  local ok, werr = f:write(s)
  f:close()
  if not ok then os.remove(tmp) error("json.write: " .. path .. ": " .. tostring(werr), 2) end
  local rok, rerr = os.rename(tmp, path)
  if not rok then os.remove(tmp) error("json.write: " .. tostring(rerr), 2) end
end

return json
