-- NIfTI from Lua: medlua._volume.read_nifti / write_nifti / nifti_header (the functions behind
-- volume.load / vol:save). Round trips, options (validated: unknown keys raise), metadata, the files
-- in tests/data/nifti, and bad input: every error names the file and the reason, and a failed write
-- leaves no temporary file. Run from the repository root.
-- With MEDLUA_NIFTI_INTEROP_OUT=<dir> set, it also writes files + manifest.json there for
-- `bench/venv/bin/python tests/ref/gen_nifti_ref.py --check-written <dir>` (nibabel reads them).
local medlua = require "medlua"
local T = require "medlua.test"
local V = medlua._volume
local json = require "medlua.json"

local DATA = "tests/data/nifti/"
local TMPDIR = os.tmpname()
os.remove(TMPDIR)
assert(os.execute("mkdir -p '" .. TMPDIR .. "'"))
local function tmp(name) return TMPDIR .. "/" .. name end

local exists = require("medlua.path").exists

local function read_all(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write_all(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end

local function tmp_leftovers()
  local h = io.popen("ls -a '" .. TMPDIR .. "'")
  local n = 0
  for line in h:lines() do if line:find(".tmp.", 1, true) then n = n + 1 end end
  h:close()
  return n
end

local A = {{-1.5, 0.1, 0.0, 30.0}, {0.05, 1.2, -0.2, -20.0}, {0.0, 0.25, 2.5, 10.0}, {0, 0, 0, 1}}

local function affine_diff(a, b)
  local at = medlua.is_tensor(a) and a or medlua.tensor(a, {dtype = "float64"})
  local bt = medlua.is_tensor(b) and b or medlua.tensor(b, {dtype = "float64"})
  return (at:double() - bt:double()):abs():max():item()
end

local function pattern(dtype, shape)
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  local vals = {}
  for i = 0, n - 1 do
    local x = (i * 7) % 200 - 50
    if dtype == "uint8" then x = x + 50 elseif dtype:find("float") then x = x * 0.25 end
    vals[#vals + 1] = x
  end
  return medlua.tensor(vals, {dtype = dtype}):reshape(table.unpack(shape))
end

T.case("reads the repository's files: shape, dtype, affine = header's best affine, metadata", function()
  local v = V.read_nifti(DATA .. "nibabel_anatomical_bigendian.nii")
  T.eq(v.shape, {33, 41, 25})
  T.eq(v.dtype, "float32")
  local h = V.nifti_header(DATA .. "nibabel_anatomical_bigendian.nii")
  T.eq(h.version, 1)
  T.ok(h.big_endian, "big-endian file")
  T.eq(h.datatype_name, "int16")
  T.ok(affine_diff(v.affine, h.affine) == 0)
  T.ok(affine_diff(v.affine, h.sform) == 0, "sform_code > 0: the sform")
  T.eq(v.axcodes, "LAS")
  T.ok(v.is_label, "int16 without scaling counts as a label map")
  -- NIfTI-2, 4-D
  local v2 = V.read_nifti(DATA .. "nibabel_example_nifti2.nii.gz", {dtype = "native"})
  T.eq(v2.shape, {32, 20, 12, 2})
  T.eq(v2.dtype, "int32")
  T.eq(V.nifti_header(DATA .. "nibabel_example_nifti2.nii.gz").version, 2)
  -- scaled uint8: float32 by default, float32 for native too; slope recorded
  local s = V.read_nifti(DATA .. "niivue_nifti_space_LPI.nii.gz", {dtype = "native"})
  T.eq(s.dtype, "float32")
  T.near(s.rescale_slope, 0.3629564046859741, 1e-12)
  T.ok(not s.is_label)
  T.eq(s.qform_code, 0)
  T.eq(s.sform_code, 1)
  -- no xform at all: nibabel's base affine (x flipped, centred)
  local m = V.read_nifti(DATA .. "niivue_minimal.nii.gz")
  T.ok(affine_diff(m.affine, {{-3, 0, 0, 94.5}, {0, 3, 0, -94.5}, {0, 0, 3, -13.5}, {0, 0, 0, 1}}) < 1e-12)
  -- the data is the file's order: strides [1, X, X*Y]
  T.eq(v.data:stride(), {1, 33, 33 * 41})
  -- float64 and float32 agree
  local d = V.read_nifti(DATA .. "made/f64_be.nii.gz", {dtype = "float64"})
  T.eq(d.dtype, "float64")
  T.ok((d.data:float() - V.read_nifti(DATA .. "made/f64_be.nii.gz").data):abs():max():item() == 0)
  -- pairs, compressed pairs, given by either name
  local p1 = V.read_nifti(DATA .. "made/pair_i16.hdr")
  local p2 = V.read_nifti(DATA .. "made/pair_i16.img")
  T.ok(p1.data:equal(p2.data))
  T.eq(V.read_nifti(DATA .. "made/pair_gz_u8.img.gz", {dtype = "native"}).dtype, "uint8")
  -- window from cal_min / cal_max, description
  local w = V.read_nifti(DATA .. "made/extension_window.nii")
  T.eq(w.window_center, 240)
  T.eq(w.window_width, 400)
  T.eq(w.description, "medlua ext + window")
end)

T.case("round trip from Lua: formats, dtypes, 4-D, options", function()
  for _, dt in ipairs({"uint8", "int32", "int64", "float32", "float64"}) do
    for _, ext in ipairs({".nii", ".nii.gz", ".hdr"}) do
      local vol = V.new(pattern(dt, {5, 4, 3}), A)
      local p = tmp("rt_" .. dt .. ext)
      V.write_nifti(vol, p)
      local back = V.read_nifti(p, {dtype = "native"})
      T.eq(back.dtype, dt)
      T.ok(back.data:equal(vol.data), dt .. ext .. " values")
      T.ok(affine_diff(back.affine, A) < 1e-5, dt .. ext .. " affine")
      T.eq(back.qform_code, 1)
      T.eq(back.sform_code, 1)
    end
  end
  -- 4-D, NIfTI-2, compression level, method call
  local vol4 = V.new(pattern("float32", {4, 3, 2, 5}), A)
  vol4:write_nifti(tmp("four.nii.gz"), {nifti2 = true, compression_level = 1})
  local h = V.nifti_header(tmp("four.nii.gz"))
  T.eq(h.version, 2)
  T.eq(h.dim, {4, 4, 3, 2, 5, 1, 1, 1})
  T.eq(h.xyzt_units, 10)
  local b4 = V.read_nifti(tmp("four.nii.gz"))
  T.eq(b4.shape, {4, 3, 2, 5})
  T.ok(b4.data:equal(vol4.data))
  T.ok(affine_diff(b4.affine, A) < 1e-12, "NIfTI-2 keeps the affine in float64")
  -- dtype on write: rounding to int16, range checked
  local f = V.new(medlua.tensor({{{0.4, 1.6}, {-2.5, 3.5}}, {{100.2, -100.7}, {7, 8}}}, {dtype = "float32"}), A)
  V.write_nifti(f, tmp("i16.nii"), {dtype = "int16"})
  T.eq(V.nifti_header(tmp("i16.nii")).datatype_name, "int16")
  local r = V.read_nifti(tmp("i16.nii"), {dtype = "native"})
  T.eq(r.dtype, "int32")
  T.eq(r.data:tolist(), {{{0, 2}, {-2, 4}}, {{100, -101}, {7, 8}}})
  T.raises(function() V.write_nifti(f, tmp("u8.nii"), {dtype = "uint8"}) end, "u8.nii.*does not fit uint8")
  T.ok(not exists(tmp("u8.nii")))
  -- metadata goes into the header
  local m = V.new(pattern("int32", {3, 3, 3}), A)
  m.description = "from lua"
  m.window_center, m.window_width = 50, 100
  V.write_nifti(m, tmp("meta.nii"))
  local mh = V.nifti_header(tmp("meta.nii"))
  T.eq(mh.descrip, "from lua")
  T.eq(mh.cal_min, 0)
  T.eq(mh.cal_max, 100)
  T.eq(tmp_leftovers(), 0)
end)

T.case("options are validated", function()
  local p = DATA .. "niivue_low_res.nii.gz"
  T.raises(function() V.read_nifti(p, {dtpye = "native"}) end, "unknown option 'dtpye'")
  T.raises(function() V.read_nifti(p, {dtype = "int16"}) end, "dtype must be")
  T.raises(function() V.read_nifti(p, "native") end, "options must be a table")
  T.raises(function() V.read_nifti() end, "string expected")
  local vol = V.read_nifti(p)
  T.raises(function() V.write_nifti(vol, tmp("x.nii"), {level = 3}) end, "unknown option 'level'")
  T.raises(function() V.write_nifti(vol, tmp("x.nii"), {dtype = "int12"}) end, "unknown dtype \"int12\"")
  T.raises(function() V.write_nifti(vol, tmp("x.nii.gz"), {compression_level = 20}) end, "compression_level")
  T.raises(function() V.write_nifti(vol, tmp("x.nii"), {nifti2 = "yes"}) end, "nifti2")
  T.raises(function() V.write_nifti(medlua.zeros(2, 2, 2), tmp("x.nii")) end, "expected a volume")
  T.raises(function() V.write_nifti(vol, tmp("x.jpg")) end, "x.jpg: unknown NIfTI extension")
  T.ok(not exists(tmp("x.nii")))
end)

T.case("bad files: each error names the file and the reason", function()
  local good = read_all(DATA .. "made/i8.nii")
  local cases = {
    {"trunc_hdr.nii", good:sub(1, 100), "truncated header"},
    {"trunc_data.nii", good:sub(1, #good - 7), "truncated"},
    {"magic.nii", good:sub(1, 344) .. "xyz\0" .. good:sub(349), "wrong magic"},
    {"sizeof.nii", string.pack("<i4", 300) .. good:sub(5), "sizeof_hdr is 300"},
    {"negdim.nii", good:sub(1, 42) .. string.pack("<i2", -3) .. good:sub(45), "dim%[1%] = %-3"},
    {"dtype.nii", good:sub(1, 70) .. string.pack("<i2", 77) .. good:sub(73), "unknown datatype 77"},
    {"complex.nii", good:sub(1, 70) .. string.pack("<i2", 1792) .. good:sub(73), "complex128"},
    {"huge.nii", good:sub(1, 40) .. string.pack("<i2i2i2i2", 4, 32767, 32767, 1024) .. good:sub(49), "truncated"},
    {"notgzip.nii.gz", "\31\139\8\0garbage-garbage-garbage", "corrupt"},
  }
  for _, c in ipairs(cases) do
    local p = tmp(c[1])
    write_all(p, c[2])
    local ok, err = pcall(V.read_nifti, p)
    T.ok(not ok, c[1] .. " should fail")
    T.ok(tostring(err):find(p, 1, true), c[1] .. ": message names the file: " .. tostring(err))
    T.ok(tostring(err):find(c[3]), c[1] .. ": message gives the reason '" .. c[3] .. "': " .. tostring(err))
  end
  T.raises(function() V.read_nifti(tmp("missing.nii.gz")) end, "missing.nii.gz: cannot open: No such file")
  T.raises(function() V.read_nifti(TMPDIR) end, "is a directory")
  T.raises(function() V.nifti_header(tmp("missing.nii")) end, "missing.nii: cannot open")
  local vol = V.read_nifti(DATA .. "niivue_low_res.nii.gz")
  T.raises(function() V.write_nifti(vol, tmp("trunc_hdr.nii/out.nii")) end, "cannot create temporary file")
  T.raises(function() V.write_nifti(vol, "/nonexistent_medlua_dir/out.nii.gz") end,
    "/nonexistent_medlua_dir/out.nii.gz: cannot create")
  T.eq(tmp_leftovers(), 0)
end)

-- files for nibabel to read (tests/ref/gen_nifti_ref.py --check-written DIR)
local interop = os.getenv("MEDLUA_NIFTI_INTEROP_OUT")
if interop and interop ~= "" then
  T.case("interop files for nibabel", function()
    assert(os.execute("mkdir -p '" .. interop .. "'"))
    local S = {{-1.5, 0.1, 0.6, 30.0}, {0.05, 1.2, -0.2, -20.0}, {0.0, 0.25, 2.5, 10.0}, {0, 0, 0, 1}}
    local L = {{0, 0, -2, 40}, {-1.5, 0, 0, 10}, {0, -1.2, 0, -5}, {0, 0, 0, 1}}
    local items = {
      {"u8.nii.gz", V.new(pattern("uint8", {7, 6, 5}), A), {}, "uint8"},
      {"i32.nii", V.new(pattern("int32", {7, 6, 5}), A), {}, "int32"},
      {"i64.nii.gz", V.new(pattern("int64", {7, 6, 5}), A), {}, "int64"},
      {"f32_4d.nii.gz", V.new(pattern("float32", {7, 6, 5, 3}), A), {}, "float32"},
      {"f64_n2.nii", V.new(pattern("float64", {7, 6, 5}), A), {nifti2 = true}, "float64"},
      {"i16_from_f32.nii.gz", V.new(pattern("float32", {7, 6, 5}), A), {dtype = "int16"}, "int16"},
      {"u16.nii", V.new(pattern("uint8", {7, 6, 5}), A), {dtype = "uint16"}, "uint16"},
      {"pair_f32.hdr", V.new(pattern("float32", {7, 6, 5}), A), {}, "float32"},
      {"shear.nii.gz", V.new(pattern("float32", {7, 6, 5}), S), {}, "float32"},
      {"lefthanded.nii", V.new(pattern("int32", {7, 6, 5}), L), {}, "int32"},
      {"ct_resaved.nii.gz", V.read_nifti(DATA .. "dipy_aniso_vox_oblique.nii.gz", {dtype = "native"}), {dtype = "int16"},
        "int16"},
    }
    local man = {files = {}}
    for _, it in ipairs(items) do
      local name, vol, opts, dt = it[1], it[2], it[3], it[4]
      V.write_nifti(vol, interop .. "/" .. name, opts)
      local back = V.read_nifti(interop .. "/" .. name, {dtype = "float64"})
      local h = V.nifti_header(interop .. "/" .. name)
      man.files[#man.files + 1] = {
        file = name, shape = vol.shape, dtype = dt, affine = vol.affine:tolist(), sum = back.data:sum():item(),
        qform_affine = h.qform:tolist(), qform_code = 1, sform_code = 1,
      }
    end
    write_all(interop .. "/manifest.json", json.encode(man, {indent = 1}))
    print("  wrote " .. #items .. " files + manifest.json to " .. interop)
  end)
end

T.run()
os.execute("rm -rf '" .. TMPDIR .. "'")
