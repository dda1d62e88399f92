-- Golden comparisons against PyTorch 1.13 (CPU, float64) for the medlua.F ops.
-- tests/ref/golden_*.safetensors are written by tests/ref/gen_ref.py: every case stores its
-- inputs, the forward output, a cotangent r and the gradients of sum(out * r), plus a metadata
-- entry describing the medlua.F call as JSON (op, positional args, options, which inputs get
-- gradients, which inputs are updated in place). Each case is replayed here twice:
--   float64: output, gradients and updated state within 1e-8 of PyTorch (relative to the largest
--            reference magnitude: stricter than needed for f64 arithmetic, loose enough for any
--            summation order; an f64 path computing in f32 would fail it)
--   float32: the same inputs rounded to float32, within 1e-4 of the float64 reference; the
--            output must be float32.
-- Run from the repository root: build/medlua tests/lua/test_golden.lua
local medlua = require "medlua"
local T = require "medlua.test"
local F = medlua.F

local FILES = {
  "tests/ref/golden_conv.safetensors",
  "tests/ref/golden_pool.safetensors",
  "tests/ref/golden_norm.safetensors",
  "tests/ref/golden_resample.safetensors",
  "tests/ref/golden_loss.safetensors",
}
local RTOL = {float64 = 1e-8, float32 = 1e-4}

-- ---------------------------------------------------------------- a small JSON decoder
-- (the metadata values are JSON text written by Python's json.dumps)
local JSON_NULL = setmetatable({}, {__tostring = function() return "null" end})
local JSON_ARRAY = {} -- metatable marking decoded arrays (which carry their length in .n)

local function json_decode(s)
  local pos = 1
  local function fail(what) error(string.format("JSON: %s at byte %d of %q", what, pos, s), 0) end
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1 -- opening quote
    while true do
      local c = s:sub(pos, pos)
      if c == "" then fail("unterminated string") end
      if c == '"' then pos = pos + 1; break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local map = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}
        if map[e] then
          out[#out + 1] = map[e]; pos = pos + 2
        elseif e == "u" then
          local cp = tonumber(s:sub(pos + 2, pos + 5), 16) or fail("bad \\u escape")
          pos = pos + 6
          if cp >= 0xD800 and cp <= 0xDBFF and s:sub(pos, pos + 1) == "\\u" then
            local lo = tonumber(s:sub(pos + 2, pos + 5), 16) or fail("bad \\u escape")
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            pos = pos + 6
          end
          out[#out + 1] = utf8.char(cp)
        else
          fail("bad escape")
        end
      else
        local j = s:find('[\\"]', pos) or #s + 1
        out[#out + 1] = s:sub(pos, j - 1)
        pos = j
      end
    end
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      local obj = {}
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return obj end
      while true do
        ws()
        if s:sub(pos, pos) ~= '"' then fail("expected a key") end
        local k = str(); ws()
        if s:sub(pos, pos) ~= ":" then fail("expected ':'") end
        pos = pos + 1
        obj[k] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "}" then return obj end
        if d ~= "," then fail("expected ',' or '}'") end
      end
    elseif c == "[" then
      local arr = setmetatable({n = 0}, JSON_ARRAY)
      pos = pos + 1; ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return arr end
      while true do
        arr.n = arr.n + 1
        arr[arr.n] = value(); ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "]" then return arr end
        if d ~= "," then fail("expected ',' or ']'") end
      end
    elseif c == '"' then
      return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return JSON_NULL
    else
      local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if not num then fail("unexpected character") end
      pos = pos + #num
      local x = tonumber(num) or fail("bad number " .. num)
      if num:find("[.eE]") then return x + 0.0 end
      return math.tointeger(x) or x
    end
  end
  local v = value(); ws()
  if pos <= #s then fail("trailing characters") end
  return v
end

-- decoded JSON -> plain Lua values for medlua: arrays lose their .n, null becomes nil
local function plain(v)
  if v == JSON_NULL then return nil end
  if type(v) ~= "table" then return v end
  local out = {}
  if getmetatable(v) == JSON_ARRAY then
    for i = 1, v.n do out[i] = plain(v[i]) end
  else
    for k, x in pairs(v) do out[k] = plain(x) end
  end
  return out
end

-- ---------------------------------------------------------------- comparison
local function shape_str(t) return "[" .. table.concat(t:size(), ", ") .. "]" end

-- max |got - want| relative to max |want|; raises with a readable message when above rtol
local function check(label, got, want, rtol)
  if got == nil then
    local scale = want:abs():max():item()
    if scale == 0 then return end -- PyTorch's defined-as-zero gradient; a missing one is equivalent
    error(string.format("%s: missing (reference max |value| %.3g)", label, scale), 0)
  end
  if not medlua.is_tensor(got) then error(label .. ": expected a tensor, got " .. type(got), 0) end
  if shape_str(got) ~= shape_str(want) then
    error(string.format("%s: shape %s, PyTorch %s", label, shape_str(got), shape_str(want)), 0)
  end
  if got:numel() == 0 then return end
  local diff = (got:double() - want):abs():max():item()
  local scale = want:abs():max():item()
  local rel = diff / math.max(scale, 1e-12)
  if not (rel <= rtol) then
    error(string.format("%s: max |diff| %.3g, relative %.3g > %g (reference max |value| %.3g)",
      label, diff, rel, rtol, scale), 0)
  end
end

-- ---------------------------------------------------------------- replay one case
local function run_case(ref, case, spec, dtype)
  local function stored(name)
    local t = ref[case .. "." .. name]
    if t == nil then error("golden file lacks tensor " .. case .. "." .. name, 0) end
    return t
  end
  -- fresh inputs in the run dtype (integer tensors such as class targets stay as they are)
  local inputs = {}
  local function input(name)
    if inputs[name] == nil then
      local t = stored(name)
      if t.dtype == "float64" or t.dtype == "float32" then t = t:to(dtype):clone() end
      inputs[name] = t
    end
    return inputs[name]
  end
  for _, g in ipairs(plain(spec.grads)) do input(g):requires_grad_(true) end

  local args, nargs = {}, spec.args.n
  for i = 1, nargs do
    local a = spec.args[i]
    if a.tensor then
      args[i] = input(a.tensor)
    elseif a.opts then
      local o = plain(a.opts)
      for k, name in pairs(plain(a.tensor_opts)) do o[k] = input(name) end
      args[i] = o
    else
      args[i] = plain(a.value)
    end
  end
  local fn = F[spec.op]
  if fn == nil then error("medlua.F." .. spec.op .. " does not exist", 0) end
  local out = fn(table.unpack(args, 1, nargs))
  local rtol = RTOL[dtype]
  if not medlua.is_tensor(out) then error(spec.op .. " returned " .. type(out), 0) end
  if out.dtype ~= dtype then error(string.format("output dtype %s, expected %s", out.dtype, dtype), 0) end
  check("forward", out, stored("out"), rtol)
  for k, name in pairs(plain(spec.after)) do
    check("in-place " .. k, inputs[k], stored(name), rtol)
  end
  local grads = plain(spec.grads)
  if #grads > 0 then
    -- d sum(out * r) / d input is the vector-Jacobian product backward(r) computes
    out:backward(stored("r"):to(dtype))
    for _, g in ipairs(grads) do
      check("grad " .. g, inputs[g].grad, stored("grad_" .. g), rtol)
    end
  end
end

-- ---------------------------------------------------------------- the cases
T.case("JSON decoder", function()
  local v = json_decode('{"a": [1, 2.5, -3e2, true, false, null], "b": {"c": "x\\"y\\u00e9\\n"}, "d": []}')
  T.eq(v.a.n, 6)
  T.eq(math.type(v.a[1]), "integer")
  T.eq(v.a[2], 2.5)
  T.eq(v.a[3], -300.0)
  T.ok(v.a[4] == true and v.a[5] == false and v.a[6] == JSON_NULL, "literals")
  T.eq(v.b.c, 'x"y\u{e9}\n')
  T.eq(v.d.n, 0)
  local p = plain(json_decode('{"n": 3, "list": [4, null, 6]}'))
  T.ok(p.n == 3 and p.list[1] == 4 and p.list[2] == nil and p.list[3] == 6 and p.list.n == nil, "plain()")
  T.raises(function() json_decode('{"a": 1') end, "JSON")
  T.raises(function() json_decode('[1] x') end, "trailing")
end)

local total_cases = 0
for _, path in ipairs(FILES) do
  local ok, ref, meta = pcall(medlua.load, path)
  if not ok then
    T.case("load " .. path, function() error(ref, 0) end)
  else
    T.case("load " .. path, function()
      T.ok(meta.generator and meta.generator:find("torch", 1, true), "generator metadata names torch")
    end)
    local names = {}
    for k in pairs(meta) do if k ~= "generator" then names[#names + 1] = k end end
    table.sort(names)
    for _, case in ipairs(names) do
      local spec_ok, spec = pcall(json_decode, meta[case])
      for _, dtype in ipairs({"float64", "float32"}) do
        total_cases = total_cases + 1
        T.case(case .. " [" .. dtype .. "]", function()
          if not spec_ok then error(spec, 0) end
          run_case(ref, case, spec, dtype)
        end)
      end
    end
  end
end

T.case("every golden file contributed cases", function()
  T.ok(total_cases >= 2 * 100, "expected at least 100 golden cases, found " .. total_cases / 2)
end)

T.run()
