-- Volume ops (modules/volume/ml_volume_ops.h, medlua._volume.* / vol:method):
-- golden values from nibabel, MONAI, SimpleITK and scipy (tests/ref/volume_ops_ref.safetensors, made
-- by tests/ref/gen_volume_ops_ref.py), real-data crops (tests/data/volume_ops), invariants (world
-- positions kept, constant in -> constant out, identity exact), memory order, 4-D volumes, and every
-- kind of bad argument (the message names the method and the reason). Run from the repository root.
local medlua = require "medlua"
local T = require "medlua.test"
local V = medlua._volume

local ref, refmeta = medlua.load("tests/ref/volume_ops_ref.safetensors")
local function R(name)
  local t = ref[name]
  assert(t, "golden tensor missing: " .. name)
  return t
end

local function maxdiff(a, b)
  local sa, sb = a:size(), b:size()
  T.eq(sa, sb, "shapes")
  if a:numel() == 0 then return 0 end
  return (a:double() - b:double()):abs():max():item()
end

local function near(a, b, tol, msg)
  local d = maxdiff(a, b)
  if not (d <= tol) then error(string.format("max abs diff %.6g > tol %.3g%s", d, tol, msg and (": " .. msg) or ""), 2) end
end

local function amax(t) return t:double():abs():max():item() end
local function ilist(t) return t:long():tolist() end

local function vol(data, affine) return V.new(data, affine) end

-- world position of voxel (i, j, k) of v
local function world(v, i, j, k) return {v:world(i, j, k)} end

local function near3(a, b, tol, msg)
  for q = 1, 3 do T.near(a[q], b[q], tol, msg) end
end

local function sub(t, step) -- t[::s0, ::s1, ::s2]
  for d = 0, 2 do t = t:slice(d, 0, t:size(d), step[d + 1]) end
  return t
end

-- ========================================================== reorientation
T.case("reorient matches nibabel (as_closest_canonical and ornt transforms) on a sheared oblique affine", function()
  local v = vol(R("reorient.in"), R("reorient.affine"))
  T.eq(v.axcodes, refmeta.reorient)
  for _, codes in ipairs({"RAS", "LPS", "SAR", "IPL", "LAI"}) do
    local o = v:reorient(codes)
    T.eq(o.axcodes, codes)
    near(o.data, R("reorient." .. codes .. ".data"), 0, codes .. " data")
    near(o.affine, R("reorient." .. codes .. ".affine"), 1e-12, codes .. " affine")
  end
  local c = v:to_ras()
  near(c.data, R("reorient.RAS.data"), 0)
  near(c.affine, R("reorient.RAS.affine"), 1e-12)
  -- lower-case codes are accepted
  T.eq(v:reorient("lps").axcodes, "LPS")
end)

T.case("reorient keeps every voxel's world position and round-trips", function()
  local v = vol(R("reorient.in"), R("reorient.affine"))
  local o = v:reorient("IPL")
  local back = o:reorient(v.axcodes)
  near(back.data, v.data, 0)
  near(back.affine, v.affine, 1e-12)
  -- a voxel's value is found at the same world point in both volumes
  for _, ijk in ipairs({{0, 0, 0}, {4, 5, 6}, {2, 1, 3}}) do
    local w = world(v, ijk[1], ijk[2], ijk[3])
    local i, j, k = o:voxel(w[1], w[2], w[3])
    i, j, k = math.floor(i + 0.5), math.floor(j + 0.5), math.floor(k + 0.5)
    T.near(o.data:get(i, j, k), v.data:get(ijk[1], ijk[2], ijk[3]), 0)
    near3(world(o, i, j, k), w, 1e-9)
  end
end)

T.case("reorient on a real LPS MR crop equals nibabel's as_closest_canonical", function()
  local d = medlua.load("tests/data/volume_ops/mr_lps_crop.safetensors")
  local v = vol(d.mr, d.affine)
  T.eq(v.axcodes, "LPS")
  local c = v:to_ras()
  T.eq(c.axcodes, "RAS")
  near(c.affine, R("real_mr.ras_affine"), 1e-9)
  near(sub(c.data, {4, 4, 2}), R("real_mr.ras_sub"), 0)
end)

-- ============================================================== resampling
T.case("resample{spacing} builds MONAI Spacing's grid and values (sheared oblique input, border padding)", function()
  local v = vol(R("spacing.in"), R("spacing.affine"))
  for k = 0, 2 do
    local pix = R("spacing." .. k .. ".pixdim"):tolist()
    local o = v:resample{spacing = pix, mode = "linear", padding_mode = "border"}
    T.eq(o.shape, ilist(R("spacing." .. k .. ".shape")), "shape for pixdim " .. k)
    near(o.affine, R("spacing." .. k .. ".affine"), 1e-9, "affine " .. k)
    T.eq(o.dtype, "float64")
    near(o.data, R("spacing." .. k .. ".out"), 1e-9, "values " .. k)
    near3(o.spacing, pix, 1e-12)
  end
end)

T.case("resample_to on an oblique grid: linear, bspline, nearest match SimpleITK (and scipy)", function()
  local v = vol(R("interp.in"), R("interp.affine"))
  local shape, A = ilist(R("interp.out_shape")), R("interp.out_affine")
  local lin = v:resample_to{shape = shape, affine = A, mode = "linear", padding_value = -7}
  near(lin.data, R("interp.linear"), 1e-9, "linear")
  near(lin.affine, A, 0)
  local bs = v:resample_to{shape = shape, affine = A, mode = "bspline", padding_value = -7}
  near(bs.data, R("interp.bspline"), 1e-9 * amax(R("interp.in")) + 1e-9, "bspline")
  local lab = vol(R("interp.labels"), R("interp.affine"))
  local nn = lab:resample_to{shape = shape, affine = A} -- integer dtype: nearest by default
  T.eq(nn.dtype, "int32")
  near(nn.data, R("interp.nearest"), 0, "nearest")
  -- float32 input: float32 output, same values to float precision
  local v32 = vol(R("interp.in"):float(), R("interp.affine"))
  local l32 = v32:resample_like(lin, {mode = "linear", padding_value = -7})
  T.eq(l32.dtype, "float32")
  near(l32.data, R("interp.linear"), 2e-4, "linear f32")
end)

T.case("axis-aligned spacing change (table path) matches SimpleITK, down- and up-sampling", function()
  local v = vol(R("aligned.in"), R("aligned.affine"))
  local scale = amax(R("aligned.in"))
  for k = 0, 1 do
    local pix = R("aligned." .. k .. ".pixdim"):tolist()
    local lin = v:resample{spacing = pix}
    T.eq(lin.shape, ilist(R("aligned." .. k .. ".shape")))
    near(lin.affine, R("aligned." .. k .. ".affine"), 1e-9)
    near(lin.data, R("aligned." .. k .. ".linear"), 1e-5 * scale, "linear " .. k)
    local bs = v:resample{spacing = pix, mode = "bspline"}
    near(bs.data, R("aligned." .. k .. ".bspline"), 1e-5 * scale, "bspline " .. k)
    -- float32 data through the same tables
    local l32 = vol(R("aligned.in"):float(), R("aligned.affine")):resample{spacing = pix}
    near(l32.data, R("aligned." .. k .. ".linear"), 1e-5 * scale, "linear f32 " .. k)
  end
end)

T.case("transform(M) moves the object by M (SimpleITK takes the inverse); ref grid and own grid", function()
  local v = vol(R("transform.in"), R("transform.affine"))
  local M = R("transform.M")
  local refv = vol(medlua.zeros(ilist(R("transform.ref_shape"))), R("transform.ref_affine"))
  local o = v:transform(M, refv, {mode = "linear"})
  T.eq(o.shape, ilist(R("transform.ref_shape")))
  near(o.affine, R("transform.ref_affine"), 0)
  near(o.data, R("transform.linear_ref"), 1e-9, "onto ref")
  near(v:transform(M, nil, {mode = "linear"}).data, R("transform.linear_own"), 1e-9, "own grid")
  near(v:transform(M, {mode = "bspline"}).data, R("transform.bspline_own"), 1e-6 * amax(R("transform.in")), "opts third")
  near(v:transform(M):resample_like(v).data, R("transform.linear_own"), 1e-9, "defaults")
  near(v:transform(M, nil, {mode = "bspline"}).data, R("transform.bspline_own"), 1e-6 * amax(R("transform.in")), "bspline")
  -- inverse=true takes the fixed->moving map that SimpleITK's Resample uses
  local Minv = {}
  local inv = M:double()
  -- invert the rigid M: [R t] -> [R^T, -R^T t]
  for r = 0, 2 do
    Minv[r + 1] = {}
    for c = 0, 2 do Minv[r + 1][c + 1] = inv:get(c, r) end
    local s = 0
    for c = 0, 2 do s = s - inv:get(c, r) * inv:get(c, 3) end
    Minv[r + 1][4] = s
  end
  Minv[4] = {0, 0, 0, 1}
  near(v:transform(Minv, refv, {mode = "linear", inverse = true}).data, R("transform.linear_ref"), 1e-9, "inverse")
  -- a pure translation moves a bright voxel by the same world offset
  local z = medlua.zeros(9, 9, 9, {dtype = "float64"})
  z:set(1, 4, 4, 4)
  local bv = vol(z, {{2, 0, 0, 0}, {0, 2, 0, 0}, {0, 0, 2, 0}, {0, 0, 0, 1}})
  local moved = bv:transform({{1, 0, 0, 2}, {0, 1, 0, -4}, {0, 0, 1, 0}, {0, 0, 0, 1}})
  T.near(moved.data:get(5, 2, 4), 1, 1e-12)
  T.near(moved.data:sum():item(), 1, 1e-12)
end)

T.case("resampling invariants: identity is exact, constant stays constant, nearest keeps dtype", function()
  local A = {{0.7, 0.1, 0, 3}, {-0.1, 0.7, 0, -2}, {0, 0, 1.25, 8}, {0, 0, 0, 1}}
  medlua.manual_seed(3)
  local x = medlua.randn(13, 11, 7)
  local v = vol(x, A)
  for _, mode in ipairs({"nearest", "linear", "bspline"}) do
    near(v:resample_to{shape = v.shape, affine = v.affine, mode = mode}.data, x, mode == "bspline" and 1e-5 or 0, mode)
    near(v:transform({{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}}, nil, {mode = mode}).data, x,
      mode == "bspline" and 1e-5 or 0, "identity transform " .. mode)
  end
  near(v:resample{spacing = v.spacing}.data, x, 1e-6, "own spacing")
  -- constant volume -> constant output (inside the input), for every mode and a rotation
  local c = vol(medlua.full({10, 9, 8}, 42.5), A)
  local rot = {{0.96, -0.28, 0, 1}, {0.28, 0.96, 0, 0.5}, {0, 0, 1, 0}, {0, 0, 0, 1}}
  for _, mode in ipairs({"nearest", "linear", "bspline"}) do
    local o = c:resample{spacing = {1.1, 0.9, 2}, mode = mode, padding_mode = "border"}
    T.near(o.data:min():item(), 42.5, 1e-4, mode)
    T.near(o.data:max():item(), 42.5, 1e-4, mode)
    local r = c:transform(rot, nil, {mode = mode, padding_value = 42.5})
    T.near(r.data:min():item(), 42.5, 1e-4, "rotated " .. mode)
    T.near(r.data:max():item(), 42.5, 1e-4, "rotated " .. mode)
  end
  -- nearest keeps integer dtypes; linear of integers gives float32
  local lab = vol(medlua.randint(0, 5, {8, 8, 8}):to("uint8"), A)
  T.eq(lab:resample{spacing = 2}.dtype, "uint8")
  T.eq(lab:resample{spacing = 2, mode = "linear"}.dtype, "float32")
  -- is_label volumes default to nearest even when stored as float
  local fl = vol(medlua.randint(0, 5, {8, 8, 8}):float(), A)
  fl.is_label = true
  local o = fl:resample{spacing = 0.5}
  T.near((o.data - o.data:round()):abs():max():item(), 0, 0, "labels stay integral")
  T.ok(o.is_label, "metadata carried")
  -- padding value outside the input
  local far = v:resample_to{shape = {2, 2, 2}, affine = {{1, 0, 0, 1000}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}},
    padding_value = -3}
  T.near(far.data:max():item(), -3, 0)
end)

T.case("resample keeps the input's memory order (i fastest stays i fastest) and gives the same values", function()
  medlua.manual_seed(5)
  local c = medlua.randn(20, 18, 16)                  -- C order: k fastest
  local f = c:permute(2, 1, 0):contiguous():permute(2, 1, 0) -- same values, i fastest (NIfTI order)
  T.eq(f:stride(), {1, 20, 360})
  local A = {{0.8, 0, 0, 0}, {0, 0.8, 0, 0}, {0, 0, 1.5, 0}, {0, 0, 0, 1}}
  local rot = {{0.99, -0.14, 0, 0}, {0.14, 0.99, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}}
  for _, mode in ipairs({"nearest", "linear", "bspline"}) do
    local a = vol(c, A):resample{spacing = 1.1, mode = mode}
    local b = vol(f, A):resample{spacing = 1.1, mode = mode}
    T.eq(b.data:stride()[1], 1, "i fastest kept")
    near(a.data, b.data, 1e-5, mode)
    local ra = vol(c, A):transform(rot, nil, {mode = mode})
    local rb = vol(f, A):transform(rot, nil, {mode = mode})
    near(ra.data, rb.data, 1e-5, "rotation " .. mode)
  end
  T.eq(vol(f, A):reorient("LPI").data:stride()[1], 1)
  T.eq(vol(f, A):crop({1, 1, 1}, {10, 10, 10}).data:stride()[1], 1)
end)

T.case("4-D volumes: every op applies to each frame", function()
  medlua.manual_seed(7)
  local x = medlua.randn(6, 5, 4, 3)
  local A = {{-1.5, 0, 0, 10}, {0, 1.5, 0, 0}, {0, 0, 2, 0}, {0, 0, 0, 1}}
  local v = vol(x, A)
  local function frame(vv, t) return vol(vv.data:select(3, t), vv.affine) end
  local ops = {
    function(u) return u:reorient("RAS") end,
    function(u) return u:resample{spacing = {1, 1.2, 1.7}} end,
    function(u) return u:resample{spacing = 1, mode = "bspline"} end,
    function(u) return u:transform({{0.96, -0.28, 0, 1}, {0.28, 0.96, 0, 0.5}, {0, 0, 1, 0}, {0, 0, 0, 1}}) end,
    function(u) return u:crop({1, 0, 1}, {5, 4, 3}) end,
    function(u) return u:pad({1, 2, 0}, {0, 1, 1}, 9) end,
    function(u) return u:flip(1) end,
  }
  for n, op in ipairs(ops) do
    local o = op(v)
    T.eq(#o.shape, 4, "op " .. n)
    T.eq(o.shape[4], 3)
    for t = 0, 2 do
      local f = op(frame(v, t))
      near(o.data:select(3, t), f.data, 1e-6, "op " .. n .. " frame " .. t)
      near(o.affine, f.affine, 0)
    end
  end
  T.near(v:window(0, 2).data:max():item(), 1, 0)
  T.raises(function() return v:largest_component() end, "Volume:largest_component: needs a 3%-D")
end)

T.case("real CT crop: 4 mm linear / bspline / label nearest and a rigid move match SimpleITK", function()
  local d = medlua.load("tests/data/volume_ops/ct_seg_crop.safetensors")
  local ct, seg = vol(d.ct, d.affine), vol(d.seg, d.affine)
  T.eq(ct.shape, {48, 48, 30})
  local lin = ct:resample{spacing = 4}
  T.eq(lin.shape, ilist(R("real_ct.shape4")))
  near(lin.affine, R("real_ct.affine4"), 1e-9)
  near(lin.data, R("real_ct.linear4"), 2e-3, "linear (HU)")
  near(ct:resample{spacing = 4, mode = "bspline"}.data, R("real_ct.bspline4"), 2e-3, "bspline (HU)")
  local s4 = seg:resample{spacing = 4}
  T.eq(s4.dtype, "uint8")
  near(s4.data, R("real_ct.seg_nearest4"), 0, "labels")
  local moved = ct:transform(R("real_ct.M"), nil, {padding_value = -1024})
  near(sub(moved.data, {2, 2, 2}), R("real_ct.moved_sub2"), 2e-3, "rigid move")
end)

-- ======================================================= crop / pad / flip
T.case("crop and pad keep world positions; pad fills the value; hi is exclusive", function()
  medlua.manual_seed(11)
  local x = medlua.randn(7, 6, 5)
  local A = {{0.9, 0.2, 0, 5}, {-0.2, 0.9, 0, 1}, {0, 0, 2.5, -3}, {0, 0, 0, 1}}
  local v = vol(x, A)
  local c = v:crop({1, 2, 0}, {6, 5, 5})
  T.eq(c.shape, {5, 3, 5})
  near(c.data, x:slice(0, 1, 6):slice(1, 2, 5), 0)
  near3(world(c, 0, 0, 0), world(v, 1, 2, 0), 1e-12)
  near3(world(c, 4, 2, 4), world(v, 5, 4, 4), 1e-12)
  local p = v:pad({1, 0, 2}, {0, 3, 1}, -5)
  T.eq(p.shape, {8, 9, 8})
  near3(world(p, 1, 0, 2), world(v, 0, 0, 0), 1e-12)
  near(p.data:slice(0, 1, 8):slice(1, 0, 6):slice(2, 2, 7), x, 0)
  T.eq(p.data:eq(-5):sum():item(), 8 * 9 * 8 - 7 * 6 * 5)
  near(v:pad(2).data:slice(0, 2, 9):slice(1, 2, 8):slice(2, 2, 7), x, 0, "pad(n) on every side")
  -- a crop of a pad is the original
  local back = p:crop({1, 0, 2}, {8, 6, 7})
  near(back.data, x, 0)
  near(back.affine, v.affine, 1e-12)
  -- crop is a copy, not a view
  c.data:fill_(0)
  T.ok(v.data:abs():sum():item() > 0)
end)

T.case("flip keeps the anatomy in place (MONAI Flip); mirror_lr mirrors it (affine unchanged)", function()
  medlua.manual_seed(13)
  local x = medlua.randn(5, 4, 3)
  local A = {{0, 0, -2, 4}, {1.5, 0, 0, -1}, {0, 1, 0, 2}, {0, 0, 0, 1}} -- axes point A, S, L
  local v = vol(x, A)
  T.eq(v.axcodes, "ASL")
  for axis = 0, 2 do
    local f = v:flip(axis)
    local n = v.shape[axis + 1]
    local ijk = {1, 2, 1}
    local src = {ijk[1], ijk[2], ijk[3]}
    src[axis + 1] = n - 1 - ijk[axis + 1]
    T.near(f.data:get(ijk[1], ijk[2], ijk[3]), x:get(src[1], src[2], src[3]), 0)
    near3(world(f, ijk[1], ijk[2], ijk[3]), world(v, src[1], src[2], src[3]), 1e-12, "world kept")
    near(f:flip(axis).data, x, 0)
  end
  near(v:flip(-1).data, v:flip(2).data, 0)
  -- mirror_lr flips the L-R voxel axis (axis 2 here) and keeps the affine
  local m = v:mirror_lr()
  near(m.affine, v.affine, 0)
  near(m.data, v:flip(2).data, 0)
  T.near(m.data:get(0, 0, 0), x:get(0, 0, 2), 0)
end)

T.case("center() moves the volume's centre to world (0,0,0) and shares the voxels", function()
  local A = {{0.8, 0.3, 0, 50}, {-0.3, 0.8, 0, -20}, {0, 0, 3, 100}, {0, 0, 0, 1}}
  local v = vol(medlua.randn(9, 8, 7), A)
  local c = v:center()
  near3(world(c, 4, 3.5, 3), {0, 0, 0}, 1e-12)
  near(c.affine:slice(0, 0, 3):slice(1, 0, 3), v.affine:slice(0, 0, 3):slice(1, 0, 3), 0)
  near(c.data, v.data, 0)
end)

T.case("crop_to_bbox: the bbox of a label grown by padding_mm per axis, clipped to the volume", function()
  local lab = medlua.zeros({20, 16, 12}, {dtype = "int32"})
  lab:slice(0, 5, 9):slice(1, 3, 6):slice(2, 4, 8):fill_(2)
  lab:set(7, 15, 15, 11)
  local A = {{0.5, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 2.5, 0}, {0, 0, 0, 1}}
  local L = vol(lab, A)
  local img = vol(medlua.arange(20 * 16 * 12):reshape(20, 16, 12), A)
  local c = img:crop_to_bbox(L, 1.0, {label = 2})
  -- padding 1 mm = 2, 1, 1 voxels (ceil(1 / spacing))
  T.eq(c.shape, {4 + 4, 3 + 2, 4 + 2})
  near3(world(c, 0, 0, 0), world(img, 3, 2, 3), 1e-12)
  local all = img:crop_to_bbox(L, {0, 0, 0})
  T.eq(all.shape, {11, 13, 8}) -- labels 2 and 7: [5,16) x [3,16) x [4,12)
  local big = img:crop_to_bbox(L, 100)
  T.eq(big.shape, {20, 16, 12})
  T.eq(img:crop_to_bbox(L, {label = 2}).shape, {4, 3, 4}, "no padding, options third")
  local lo, hi = L:bbox(2)
  T.eq(lo, {5, 3, 4})
  T.eq(hi, {9, 6, 8})
  lo, hi = L:bbox()
  T.eq(lo, {5, 3, 4})
  T.eq(hi, {16, 16, 12})
  T.eq(L:bbox(3), nil)
  T.raises(function() return img:crop_to_bbox(L, 1, {label = 3}) end, "Volume:crop_to_bbox: the labels volume has no voxel with label 3")
end)

-- =============================================================== intensity
T.case("window / minmax / zscore match MONAI; normalize_percentile matches numpy (nnU-Net CT)", function()
  local v = vol(R("intensity.in"), nil)
  local mask = R("intensity.mask")
  local w = v:window(40, 400)
  T.eq(w.dtype, "float32")
  near(w.data, R("intensity.window_40_400"), 1e-6, "window")
  near(v:minmax().data, R("intensity.minmax"), 1e-6, "minmax")
  near(v:zscore().data, R("intensity.zscore"), 1e-5, "zscore")
  near(v:normalize_percentile().data, R("intensity.pct_default"), 1e-5, "percentile default")
  near(v:normalize_percentile{lower = 5, upper = 95, mask = mask}.data, R("intensity.pct_5_95_mask"), 1e-5, "percentile mask")
  near(v:zscore{mask = vol(mask, nil)}.data, R("intensity.zscore_mask"), 1e-5, "zscore with a mask volume")
  -- metadata window
  v.window_center, v.window_width = 40, 400
  near(v:window().data, R("intensity.window_40_400"), 1e-6, "window from metadata")
  -- constant volume: minmax gives zeros, zscore zeros
  local c = vol(medlua.full({3, 3, 3}, 7), nil)
  T.eq(c:minmax().data:abs():max():item(), 0)
  T.eq(c:zscore().data:abs():max():item(), 0)
end)

T.case("real CT crop: percentile normalisation (with and without mask), window", function()
  local d = medlua.load("tests/data/volume_ops/ct_seg_crop.safetensors")
  local ct = vol(d.ct, d.affine)
  near(sub(ct:normalize_percentile().data, {2, 2, 2}), R("real_ct.pct_sub2"), 1e-4)
  near(sub(ct:normalize_percentile{mask = vol(d.seg, d.affine)}.data, {2, 2, 2}), R("real_ct.pct_mask_sub2"), 1e-4)
  near(sub(ct:window(50, 400).data, {2, 2, 2}), R("real_ct.window_sub2"), 1e-6)
end)

-- ================================================================== labels
T.case("largest_component matches scipy.ndimage.label for 6, 18, 26 connectivity and a label subset", function()
  local v = vol(R("lcc.in"), nil)
  for _, c in ipairs({6, 18, 26}) do
    local o = v:largest_component(c)
    T.eq(o.dtype, "int32")
    near(o.data, R("lcc.c" .. c), 0, "connectivity " .. c)
  end
  near(v:largest_component().data, R("lcc.c26"), 0, "default 26")
  near(v:largest_component(6, {labels = {1, 3}}).data, R("lcc.c6_only13"), 0, "labels {1, 3}")
  -- float label maps and strided storage give the same answer
  local f = R("lcc.in"):float():permute(2, 1, 0):contiguous():permute(2, 1, 0)
  near(vol(f, nil):largest_component(18).data, R("lcc.c18"), 0, "float, i fastest")
end)

T.case("real label map: largest component (26) matches scipy", function()
  local d = medlua.load("tests/data/volume_ops/ct_seg_crop.safetensors")
  local o = vol(d.seg, d.affine):largest_component(26)
  T.eq(o.dtype, "uint8")
  near(o.data, R("real_ct.lcc26"), 0)
end)

local function check_stats(st, rows, tol)
  local n = 0
  for _ in pairs(st) do n = n + 1 end
  T.eq(n, #rows, "number of labels")
  for _, r in ipairs(rows) do
    local s = st[math.tointeger(r[1])]
    T.ok(s, "label " .. r[1])
    T.eq(s.voxels, math.tointeger(r[2]))
    T.near(s.volume_ml, r[3], 1e-9)
    near3(s.centroid_mm, {r[4], r[5], r[6]}, tol)
    T.eq(s.bbox_lo, {math.tointeger(r[7]), math.tointeger(r[8]), math.tointeger(r[9])})
    T.eq(s.bbox_hi, {math.tointeger(r[10]), math.tointeger(r[11]), math.tointeger(r[12])})
  end
end

T.case("label_stats: voxels, volume_ml, world centroid and bbox per label (numpy)", function()
  local v = vol(R("lcc.in"), R("stats.affine"))
  check_stats(v:label_stats(), R("stats.table"):tolist(), 1e-9)
  local d = medlua.load("tests/data/volume_ops/ct_seg_crop.safetensors")
  check_stats(vol(d.seg, d.affine):label_stats(), R("real_ct.stats"):tolist(), 1e-9)
  T.eq(next(vol(medlua.zeros(3, 3, 3), nil):label_stats()), nil)
end)

-- ============================================================ bad arguments
T.case("bad arguments raise errors naming the method and the reason", function()
  local v = vol(medlua.randn(6, 5, 4), {{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 2, 0}, {0, 0, 0, 1}})
  T.raises(function() return v:resample{spacing = {1, -1, 1}} end, "Volume:resample: spacing[1] must be a finite number > 0")
  T.raises(function() return v:resample{spacing = 0} end, "Volume:resample: spacing[0] must be a finite number > 0")
  T.raises(function() return v:resample{spacing = {1, 1}} end, "Volume:resample: spacing must be a number or a table of 3 numbers")
  T.raises(function() return v:resample{mode = "linear"} end, "Volume:resample: option 'spacing' is required")
  T.raises(function() return v:resample{spacing = 1, mode = "cubicx"} end, "Volume:resample: unknown mode 'cubicx'")
  T.raises(function() return v:resample{spacing = 1, sapcing = 2} end, "Volume:resample: unknown option 'sapcing'")
  T.raises(function() return v:resample{spacing = 1e-5} end, "Volume:resample: output of %d+ voxels is absurd")
  T.raises(function() return v:resample_to{shape = {0, 2, 2}, affine = v.affine} end, "Volume:resample_to: output shape")
  T.raises(function() return v:resample_to{shape = {2, 2, 2}, affine = {{1, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}}} end,
    "Volume:resample_to: the target affine is singular")
  T.raises(function() return v:transform({{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 1}}) end,
    "Volume:transform: the transform is singular")
  T.raises(function() return v:transform({{1, 0, 0, 0}, {0, 1, 0, 0}, {0, 0, 1, 0}, {0, 0, 1, 1}}) end, "last row")
  T.raises(function() return v:reorient("XYZ") end, "Volume:reorient: unknown axis code 'X' in \"XYZ\"")
  T.raises(function() return v:reorient("RRA") end, "Volume:reorient: axis codes \"RRA\" name the R%-L axis twice")
  T.raises(function() return v:reorient("RA") end, "Volume:reorient: axis codes must be 3 letters")
  T.raises(function() return v:crop({0, 0, 0}, {7, 5, 4}) end, "Volume:crop: axis 0: range [0, 7) is out of range for size 6")
  T.raises(function() return v:crop({-1, 0, 0}, {3, 5, 4}) end, "Volume:crop: axis 0")
  T.raises(function() return v:crop({2, 0, 0}, {2, 5, 4}) end, "Volume:crop: axis 0: range [2, 2)")
  T.raises(function() return v:crop({0, 0}, {2, 5, 4}) end, "Volume:crop: lo must be an integer or a table of 3 integers")
  T.raises(function() return v:pad({-1, 0, 0}, 0) end, "Volume:pad: axis 0: padding must be >= 0")
  T.raises(function() return v:flip(3) end, "Volume:flip: axis 3 is out of range")
  T.raises(function() return v:window(0, 0) end, "Volume:window: width must be a finite number > 0")
  T.raises(function() return v:window() end, "Volume:window: give center and width")
  T.raises(function() return v:normalize_percentile{lower = 90, upper = 10} end, "Volume:normalize_percentile: percentiles must satisfy")
  T.raises(function() return v:normalize_percentile{mask = medlua.ones(6, 5, 3)} end,
    "Volume:normalize_percentile: mask shape [6, 5, 3] does not match the volume's spatial shape [6, 5, 4]")
  T.raises(function() return v:zscore{mask = medlua.zeros(6, 5, 4)} end, "Volume:zscore: the mask selects no voxel")
  T.raises(function() return v:zscore{mask = vol(medlua.ones(6, 5, 4), nil)} end, "Volume:zscore: the mask volume has a different grid")
  local lab = vol(medlua.ones({6, 5, 4}, {dtype = "int32"}), v.affine)
  T.raises(function() return lab:largest_component(5) end, "Volume:largest_component: connectivity must be 6, 18 or 26, got 5")
  T.raises(function() return lab:largest_component(6, {labels = {}}) end, "empty list")
  T.raises(function() return vol(medlua.full({3, 3, 3}, 1.5), nil):largest_component() end,
    "Volume:largest_component: label values must be integers")
  T.raises(function() return vol(medlua.full({3, 3, 3}, 1.5), nil):label_stats() end, "Volume:label_stats: label values must be integers")
  local other = vol(medlua.ones({6, 5, 4}, {dtype = "int32"}), {{1, 0, 0, 5}, {0, 1, 0, 0}, {0, 0, 2, 0}, {0, 0, 0, 1}})
  T.raises(function() return v:crop_to_bbox(other, 1) end, "Volume:crop_to_bbox: the labels volume has a different grid")
  T.raises(function() return v:crop_to_bbox(vol(medlua.ones({6, 5, 3}), v.affine), 1) end,
    "Volume:crop_to_bbox: the labels volume has shape [6, 5, 3]")
  T.raises(function() return v:crop_to_bbox(lab, -1) end, "Volume:crop_to_bbox: padding_mm[0] must be a finite number >= 0")
  T.raises(function() return v:crop_to_bbox(vol(medlua.zeros(6, 5, 4), v.affine)) end, "no non-zero voxel")
  T.raises(function() return V.resample(42, {spacing = 1}) end, "Volume:resample: argument #1: expected a volume, got number")
  local sing = vol(medlua.ones(2, 2, 2), {{1, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 1, 0}, {0, 0, 0, 1}})
  T.raises(function() return sing:resample{spacing = 1} end, "Volume:resample: the volume's affine is singular")
  T.raises(function() return sing:to_ras() end, "Volume:reorient: the volume's affine is degenerate")
end)

-- ======================================== larger real data (../shared/data), when present
T.case("the 48 orientations of one NIfTI brain all give the same RAS volume (needs ../shared/data and the reader)", function()
  local dir = "../shared/data/nifti_geometry/nifti_space/"
  local f = io.open(dir .. "RAS.nii.gz", "rb")
  if not f then print("skipped: ../shared/data/nifti_geometry not present") return end
  f:close()
  local read = V.read_nifti
  if not read then print("skipped: no NIfTI reader (medlua._volume.read_nifti) in this build") return end
  local refv = read(dir .. "RAS.nii.gz"):to_ras()
  local n = 0
  for _, a in ipairs({"R", "L"}) do
    for _, b in ipairs({"A", "P"}) do
      for _, c in ipairs({"S", "I"}) do
        for _, perm in ipairs({{a, b, c}, {a, c, b}, {b, a, c}, {b, c, a}, {c, a, b}, {c, b, a}}) do
          local name = table.concat(perm)
          local g = io.open(dir .. name .. ".nii.gz", "rb")
          if g then
            g:close()
            local v = read(dir .. name .. ".nii.gz")
            T.eq(v.axcodes, name)
            local r = v:to_ras()
            near(r.data, refv.data, 0, name)
            near(r.affine, refv.affine, 1e-4, name)
            n = n + 1
          end
        end
      end
    end
  end
  T.eq(n, 48)
end)

T.case("16-bit PNG: write and read back exactly (gray and RGB, 0..65535); out-of-range values refused", function()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local g = (medlua.arange(33 * 47):reshape(33, 47) * 41):fmod(65536):int()
  g:set(65535, 0, 0)
  g:set(0, 0, 1)
  V.write_png(dir .. "/g.png", g, {bits = 16})
  local back = V.read_png(dir .. "/g.png")
  T.eq(back.dtype, "int32")
  T.eq(back.shape, {33, 47})
  T.ok(back:equal(g), "gray 16-bit round trip")
  local rgb = (medlua.arange(9 * 11 * 3):reshape(9, 11, 3) * 2017 + 3):fmod(65536):float()
  V.write_png(dir .. "/rgb.png", rgb, {bits = 16})
  T.ok(V.read_png(dir .. "/rgb.png"):equal(rgb:int()), "RGB 16-bit round trip")
  local bad = medlua.zeros(4, 4)
  bad:set(65536, 1, 2)
  T.raises(function() V.write_png(dir .. "/bad.png", bad, {bits = 16}) end, "bad.png: value 65536 outside [0, 65535]")
  os.execute("rm -rf '" .. dir .. "'")
end)

T.run()
