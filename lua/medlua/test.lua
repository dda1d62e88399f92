-- medlua.test: a small test framework for the Lua suites in tests/lua.
--
--   local T = require "medlua.test"
--   T.case("addition broadcasts", function()
--     T.tensor_eq(medlua.ones(2, 3) + medlua.tensor({1, 2, 3}), {{2, 3, 4}, {2, 3, 4}})
--     T.raises(function() return medlua.ones(2) + medlua.ones(3) end, "cannot be broadcast")
--   end)
--   T.run()      -- "ok name" / "FAIL name: message" per case, then "N passed, N failed"
--
-- Asserts raise an error located at the caller's line. T.run() exits with status 1 when a case
-- failed. `medlua tests/lua/test_x.lua pattern` runs only the cases whose name contains pattern.
-- T.leak_check(true) makes every case also fail when it leaves live tensors behind (after a full
-- garbage collection).
local T = {}

local cases = {}
local leak_check = false

function T.case(name, fn)
  assert(type(name) == "string", "T.case: name must be a string")
  assert(type(fn) == "function", "T.case: expected a function for case '" .. name .. "'")
  cases[#cases + 1] = {name = name, fn = fn}
end

function T.leak_check(on) leak_check = on ~= false end

local function is_tensor(x)
  local m = package.loaded.medlua
  return m ~= nil and m.is_tensor(x)
end

local function fmt(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) == "table" and not is_tensor(v) then
    local parts, n = {}, 0
    for i = 1, #v do
      n = n + 1
      if n > 20 then parts[#parts + 1] = "..."; break end
      parts[#parts + 1] = fmt(v[i])
    end
    for k, x in pairs(v) do
      if not (math.type(k) == "integer" and k >= 1 and k <= #v) then
        n = n + 1
        if n > 20 then parts[#parts + 1] = "..."; break end
        parts[#parts + 1] = tostring(k) .. "=" .. fmt(x)
      end
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return tostring(v)
end
T.fmt = fmt

local function fail(msg, level)
  error(msg, (level or 2) + 1)
end

-- Deep equality: numbers (1 == 1.0), strings, booleans, tables (same keys, equal values),
-- tensors (same shape, dtype-independent equal values).
local function deep_eq(a, b, path, seen)
  if is_tensor(a) or is_tensor(b) then
    if not (is_tensor(a) and is_tensor(b)) then return false, path .. ": tensor vs " .. type(is_tensor(a) and b or a) end
    local sa, sb = a:size(), b:size()
    if #sa ~= #sb then return false, path .. ": shapes differ" end
    for i = 1, #sa do if sa[i] ~= sb[i] then return false, path .. ": shapes differ" end end
    if not a:equal(b:to(a.dtype)) and not a:double():equal(b:double()) then return false, path .. ": values differ" end
    return true
  end
  if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " vs " .. type(b) end
  if type(a) ~= "table" then
    if a == b or (a ~= a and b ~= b) then return true end
    return false, path .. ": " .. fmt(a) .. " vs " .. fmt(b)
  end
  seen = seen or {}
  if seen[a] == b then return true end
  seen[a] = b
  for k, v in pairs(a) do
    local ok, why = deep_eq(v, b[k], path .. "[" .. fmt(k) .. "]", seen)
    if not ok then return false, why end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "[" .. fmt(k) .. "]: missing on the left" end
  end
  return true
end

function T.eq(a, b, msg)
  local ok, why = deep_eq(a, b, "value")
  if not ok then
    fail(string.format("expected %s == %s (%s)%s", fmt(a), fmt(b), why, msg and (": " .. tostring(msg)) or ""))
  end
end

function T.ne(a, b, msg)
  if deep_eq(a, b, "value") then
    fail(string.format("expected %s ~= %s%s", fmt(a), fmt(b), msg and (": " .. tostring(msg)) or ""))
  end
end

function T.ok(cond, msg)
  if not cond then fail("assertion failed" .. (msg and (": " .. tostring(msg)) or "")) end
  return cond
end

-- Flatten a tensor or nested table of numbers/booleans to a Lua list plus its shape.
local function flatten(x)
  if is_tensor(x) then
    local shape = x:size()
    local v = x:detach():double():contiguous():view(-1):tolist()
    return v, shape
  end
  if type(x) == "number" or type(x) == "boolean" then
    return {x == true and 1 or x == false and 0 or x}, {}
  end
  assert(type(x) == "table", "expected a tensor, a number or a (nested) table, got " .. type(x))
  local out, shape = {}, {}
  local t = x
  while type(t) == "table" do
    shape[#shape + 1] = #t
    t = t[1]
  end
  local function walk(v, d)
    if d > #shape then
      if type(v) == "boolean" then v = v and 1 or 0 end
      if type(v) ~= "number" then error("non-numeric element " .. fmt(v)) end
      out[#out + 1] = v
      return
    end
    if type(v) ~= "table" or #v ~= shape[d] then error("ragged nested table") end
    for i = 1, #v do walk(v[i], d + 1) end
  end
  walk(x, 1)
  return out, shape
end
T.flatten = flatten

-- max |a - b| over elements (shapes must match); NaN equal to NaN
local function max_abs_diff(a, b)
  local va, sa = flatten(a)
  local vb, sb = flatten(b)
  if #sa ~= #sb then return nil, "shape " .. fmt(sa) .. " vs " .. fmt(sb) end
  for i = 1, #sa do
    if sa[i] ~= sb[i] then return nil, "shape " .. fmt(sa) .. " vs " .. fmt(sb) end
  end
  local m, at = 0, nil
  for i = 1, #va do
    local x, y = va[i], vb[i]
    if type(x) == "boolean" then x = x and 1 or 0 end
    if type(y) == "boolean" then y = y and 1 or 0 end
    local d
    if x ~= x and y ~= y then d = 0
    elseif x == y then d = 0
    else d = math.abs(x - y) end
    if d ~= d then d = math.huge end
    if d > m then m, at = d, i end
  end
  return m, at
end
T.max_abs_diff = max_abs_diff

-- Numbers or tensors (or nested tables): max abs difference <= tol (default 1e-6).
function T.near(a, b, tol, msg)
  tol = tol or 1e-6
  if type(a) == "number" and type(b) == "number" then
    local d = math.abs(a - b)
    if not (d <= tol or a == b or (a ~= a and b ~= b)) then
      fail(string.format("expected %.17g near %.17g (diff %.3g > tol %.3g)%s", a, b, d, tol,
        msg and (": " .. tostring(msg)) or ""))
    end
    return
  end
  local m, at = max_abs_diff(a, b)
  if m == nil then fail("T.near: " .. at .. (msg and (": " .. tostring(msg)) or "")) end
  if m > tol then
    local va, vb = flatten(a), flatten(b)
    fail(string.format("max abs diff %.6g > tol %.3g at flat element %d (%.10g vs %.10g)%s", m, tol, at - 1,
      va[at] == true and 1 or va[at], vb[at] == true and 1 or vb[at], msg and (": " .. tostring(msg)) or ""))
  end
end

-- t must be a tensor with the shape and values of `expected` (a tensor or a nested table).
function T.tensor_eq(t, expected, tol, msg)
  if not is_tensor(t) then fail("T.tensor_eq: expected a tensor, got " .. type(t)) end
  local m, at = max_abs_diff(t, expected)
  if m == nil then fail("T.tensor_eq: " .. at .. (msg and (": " .. tostring(msg)) or "")) end
  if m > (tol or 0) then
    local va, vb = flatten(t), flatten(expected)
    fail(string.format("tensor differs at flat element %d: %.10g vs %.10g (max abs diff %.6g, tol %.3g)%s", at - 1,
      va[at], vb[at] == true and 1 or vb[at] == false and 0 or vb[at], m, tol or 0, msg and (": " .. tostring(msg)) or ""))
  end
end

-- fn must raise an error whose message matches `pattern` (a Lua pattern, or a plain substring).
function T.raises(fn, pattern, msg)
  local ok, err = pcall(fn)
  if ok then fail("expected an error" .. (pattern and (" matching '" .. pattern .. "'") or "") ..
    (msg and (": " .. tostring(msg)) or "")) end
  local s = tostring(err)
  if pattern then
    local pok, found = pcall(string.find, s, pattern)
    if not ((pok and found) or s:find(pattern, 1, true)) then
      fail(string.format("error '%s' does not match '%s'%s", s, pattern, msg and (": " .. tostring(msg)) or ""))
    end
  end
  return s
end

local function live_tensors()
  local m = package.loaded.medlua
  if not m then return 0 end
  collectgarbage()
  collectgarbage()
  return m.mem().tensors
end

--- T.run_cmd(cmd) -> output (stdout and stderr), exit code: a command run as a user would (recipe smoke tests)
function T.run_cmd(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

--- T.read_file(path) -> the file's bytes (raises naming the file when it cannot be read)
function T.read_file(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

--- T.tmpdir() -> a new empty folder under the system temporary directory
function T.tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p '" .. d:gsub("'", "'\\''") .. "'"))
  return d
end

function T.run()
  local filter = arg and arg[1]
  local passed, failed = 0, 0
  for _, c in ipairs(cases) do
    if not filter or c.name:find(filter, 1, true) then
      local before = leak_check and live_tensors() or 0
      local ok, err = xpcall(c.fn, function(e)
        local s = tostring(e)
        if type(e) ~= "string" then s = fmt(e) end
        return s
      end)
      if ok and leak_check then
        local after = live_tensors()
        if after ~= before then
          ok, err = false, string.format("leaked %d live tensors", after - before)
        end
      end
      if ok then
        passed = passed + 1
        print("ok " .. c.name)
      else
        failed = failed + 1
        local lines = {}
        for l in (tostring(err) .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = l end
        print("FAIL " .. c.name .. ": " .. (lines[1] or ""))
        for i = 2, #lines do print("     " .. lines[i]) end
      end
      io.stdout:flush()
    end
  end
  print(string.format("%d passed, %d failed", passed, failed))
  io.stdout:flush()
  if failed > 0 then os.exit(1) end
  return passed, failed
end

return T
