-- medlua.save / medlua.load: round trips from Lua, the file written by PyTorch's
-- safetensors.torch.save_file (tests/ref/interop_torch.safetensors), argument errors and bad files
-- (every error names the file). Run from the repository root.
-- With MEDLUA_INTEROP_OUT=<path> set, it also writes medlua_interop_tensors() to <path> for
-- tests/ref/check_medlua_file.py (which loads it with safetensors.torch.load_file).
local medlua = require "medlua"
local T = require "medlua.test"

local TMP = os.tmpname() -- a fresh file name: our files are TMP .. ".<name>.safetensors"
os.remove(TMP)
local created = {}
local function tmp(name)
  local p = TMP .. "." .. name .. ".safetensors"
  created[#created + 1] = p
  return p
end

local exists = require("medlua.path").exists

local function deep_eq(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b and math.type(a) == math.type(b) end
  if #a ~= #b then return false end
  for i = 1, #a do if not deep_eq(a[i], b[i]) then return false end end
  return true
end

local function same_tensor(a, b)
  return a.dtype == b.dtype and table.concat(a:size(), ",") == table.concat(b:size(), ",")
    and deep_eq(a:tolist(), b:tolist())
end

-- The tensors check_medlua_file.py expects (keep the two in step).
local function medlua_interop_tensors()
  return {
    f64 = (medlua.arange(24, {dtype = "float64"}) * 0.5 - 3):reshape(2, 3, 4),
    f32_t = (medlua.arange(12, {dtype = "float32"}) * 0.25 - 1):reshape(4, 3):transpose(0, 1), -- not contiguous
    f16 = (medlua.arange(8, {dtype = "float32"}) * 0.5 - 2):to("float16"),
    bf16 = (medlua.arange(8, {dtype = "float32"}) * 0.25 - 1):to("bfloat16"),
    i64 = medlua.tensor({-1099511627783, 0, 1, 1099511627783}, {dtype = "int64"}),
    i32 = medlua.tensor({-2147483648, -1, 0, 2147483647}, {dtype = "int32"}),
    u8 = medlua.tensor({0, 1, 127, 128, 255}, {dtype = "uint8"}),
    bool = medlua.tensor({true, false, true, true, false}),
    scalar = medlua.tensor(3.25, {dtype = "float64"}),
    empty = medlua.zeros({0, 3}),
    expanded = medlua.arange(3, {dtype = "float64"}):reshape(3, 1):expand(3, 4), -- stride 0
    grad_leaf = medlua.linspace(-1, 1, 5, {dtype = "float64", requires_grad = true}),
  }
end
local INTEROP_META = {format = "pt", source = "medlua", unicode = "h\u{e9}llo \"q\" \\ end", epoch = 7}

T.case("round trip of every dtype, views, 0-d and empty tensors", function()
  local ts = medlua_interop_tensors()
  T.ok(not ts.f32_t:is_contiguous(), "the transposed tensor is a strided view")
  local p = tmp("roundtrip")
  medlua.save(p, ts, INTEROP_META)
  local back, meta = medlua.load(p)
  local n = 0
  for k, v in pairs(ts) do
    n = n + 1
    T.ok(back[k] ~= nil, "missing " .. k)
    T.ok(same_tensor(back[k], v), k .. " differs after the round trip")
    T.ok(back[k]:is_contiguous(), k .. " loads contiguous")
  end
  local m = 0
  for _ in pairs(back) do m = m + 1 end
  T.eq(m, n)
  T.eq(back.scalar:dim(), 0)
  T.eq(back.scalar:item(), 3.25)
  T.eq(table.concat(back.empty:size(), ","), "0,3")
  T.eq(back.i64:tolist()[1], -1099511627783)
  T.eq(math.type(back.i64:tolist()[1]), "integer")
  T.ok(not back.grad_leaf.requires_grad, "loaded tensors are plain leaves")
  T.eq(meta.format, "pt")
  T.eq(meta.unicode, "h\u{e9}llo \"q\" \\ end")
  T.eq(meta.epoch, "7") -- numbers are stored as their Lua tostring
end)

T.case("metadata is optional and load always returns a table", function()
  local p = tmp("nometa")
  medlua.save(p, {w = medlua.ones(2)})
  local ts, meta = medlua.load(p)
  T.eq(type(meta), "table")
  T.eq(next(meta), nil)
  T.eq(ts.w:sum():item(), 2)
  medlua.save(p, {}, {only = "meta"})
  ts, meta = medlua.load(p)
  T.eq(next(ts), nil)
  T.eq(meta.only, "meta")
end)

T.case("loaded tensors own their memory", function()
  local p = tmp("own")
  local w = medlua.arange(6, {dtype = "float64"})
  medlua.save(p, {w = w})
  local a = medlua.load(p).w
  a:fill_(-1)
  T.eq(medlua.load(p).w:sum():item(), 15)
  T.eq(w:sum():item(), 15)
end)

T.case("saving over an existing file replaces it", function()
  local p = tmp("replace")
  medlua.save(p, {a = medlua.ones(3)})
  medlua.save(p, {b = medlua.zeros(2, {dtype = "int32"})}, {v = "2"})
  local ts, meta = medlua.load(p)
  T.eq(ts.a, nil)
  T.eq(ts.b.dtype, "int32")
  T.eq(meta.v, "2")
end)

T.case("reads the file written by safetensors.torch.save_file", function()
  local ts, meta = medlua.load("tests/ref/interop_torch.safetensors")
  T.eq(meta.format, "pt")
  T.eq(meta.source, "safetensors.torch.save_file")
  T.eq(meta.unicode, "h\u{e9}llo \"q\" \\ end")
  local f64 = {}
  for i = 0, 23 do f64[#f64 + 1] = i * 0.5 - 3 end
  T.eq(ts.f64.dtype, "float64")
  T.eq(table.concat(ts.f64:size(), ","), "2,3,4")
  T.ok(deep_eq(ts.f64:reshape(24):tolist(), f64), "f64 values")
  T.eq(ts.f32.dtype, "float32")
  T.eq(table.concat(ts.f32:size(), ","), "3,4")
  T.eq(ts.f32:get(2, 3), 11 * 0.25 - 1)
  T.eq(ts.f16.dtype, "float16")
  T.eq(ts.bf16.dtype, "bfloat16")
  for i = 0, 7 do
    T.eq(ts.f16:get(i), i * 0.5 - 2)
    T.eq(ts.bf16:get(i), i * 0.25 - 1)
  end
  T.ok(deep_eq(ts.i64:tolist(), {-1099511627783, 0, 1, 1099511627783, 9007199254740993}), "i64 values (exact)")
  T.ok(deep_eq(ts.i32:tolist(), {-2147483648, -1, 0, 2147483647}), "i32 values")
  T.eq(ts.u8.dtype, "uint8")
  T.ok(deep_eq(ts.u8:tolist(), {0, 1, 127, 128, 255}), "u8 values")
  T.eq(ts.bool.dtype, "bool")
  T.ok(deep_eq(ts.bool:tolist(), {true, false, true, true, false}), "bool values")
  T.eq(ts.scalar:dim(), 0)
  T.eq(ts.scalar:item(), 3.25)
  T.eq(table.concat(ts.empty:size(), ","), "0,3")
end)

-- ---------------------------------------------------------------- errors
local function write_raw(p, header, data_len, hlen)
  local f = assert(io.open(p, "wb"))
  f:write(string.pack("<I8", hlen or #header), header, string.rep("\0", data_len or 0))
  f:close()
end

T.case("bad files raise errors that name the file and the reason", function()
  local p = tmp("bad")
  local function bad(why)
    local ok, err = pcall(medlua.load, p)
    T.ok(not ok, "load should fail: " .. why)
    T.ok(tostring(err):find(p, 1, true), "message names the file: " .. tostring(err))
    T.ok(tostring(err):find(why, 1, true), "message says '" .. why .. "': " .. tostring(err))
  end
  local f = assert(io.open(p, "wb")); f:write("abc"); f:close()
  bad("too short")
  write_raw(p, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8, 1 << 40)
  bad("100 MB")
  write_raw(p, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8, 4000)
  bad("exceeds the file size")
  write_raw(p, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}', 8)
  bad("not valid JSON")
  write_raw(p, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 4)
  bad("out of range")
  write_raw(p, '{"conv.weight":{"dtype":"F32","shape":[4,3,3],"data_offsets":[0,96]}}', 96)
  bad("tensor 'conv.weight' data_offsets [0, 96] do not match shape [4, 3, 3] float32 (144 bytes)")
  write_raw(p, '{"a":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}}', 8)
  bad("unknown dtype 'F31'")
  write_raw(p, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', 16)
  bad("duplicate tensor name 'a'")
  write_raw(p, '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', 8)
  bad("overlap")
  p = tmp("missing")
  bad("cannot open")
end)

T.case("save argument errors", function()
  local p = tmp("args")
  T.raises(function() medlua.save(p, {medlua.ones(2)}) end, "tensor names must be strings")
  T.raises(function() medlua.save(p, {w = 3}) end, "'w' is not a tensor")
  T.raises(function() medlua.save(p, {w = medlua.ones(2)}, {k = true}) end, "metadata value for 'k'")
  T.raises(function() medlua.save(p, {w = medlua.ones(2)}, {[1] = "x"}) end, "metadata keys must be strings")
  T.raises(function() medlua.save(p, {__metadata__ = medlua.ones(2)}) end, "reserved")
  T.raises(function() medlua.save(p, "w") end, "table expected")
  T.ok(not exists(p), "no file after failed saves")
  local q = TMP .. ".no/such/dir/x.safetensors"
  T.raises(function() medlua.save(q, {w = medlua.ones(2)}) end, q)
  T.ok(not exists(q), "no file in a missing directory")
end)

T.case("a closed tensor cannot be saved", function()
  local p = tmp("closed")
  local keep
  do
    local t <close> = medlua.ones(2)
    keep = t
  end
  T.raises(function() medlua.save(p, {w = keep}) end, "closed")
  T.ok(not exists(p), "no file written")
end)

if os.getenv("MEDLUA_INTEROP_OUT") then
  T.case("write the interop file for check_medlua_file.py", function()
    local out = os.getenv("MEDLUA_INTEROP_OUT")
    medlua.save(out, medlua_interop_tensors(), INTEROP_META)
    T.ok(exists(out), "written " .. out)
  end)
end

T.case("clean up", function()
  for _, p in ipairs(created) do os.remove(p) end
  for _, p in ipairs(created) do T.ok(not exists(p), "removed " .. p) end
end)

T.run()
