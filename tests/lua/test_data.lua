-- Data pipeline (lua/medlua/transforms.lua, lua/medlua/data.lua, modules/data): golden values from
-- MONAI 1.6.1 (tests/ref/transforms_ref.safetensors, made by tests/ref/gen_transforms_ref.py from the
-- crops in tests/data/data_pipeline), invariants and statistics of the random transforms, the threaded
-- loader (1 vs 3 workers give the same batches), the cache, data lists, and bad input (every error names
-- the transform or file and the reason). Run from the repository root.
local medlua = require "medlua"
local T = require "medlua.test"
local X = require "medlua.transforms"
local data = require "medlua.data"
local volume = require "medlua.volume"

T.leak_check(true) -- every case also checks that it leaves no live tensors behind
local ref = medlua.load("tests/ref/transforms_ref.safetensors")
local DP = "tests/data/data_pipeline/"
local KEYS = {"image", "label"}
local SAMPLES = "data/samples/"

local TMP = os.tmpname()
os.remove(TMP)
local created, dirs = {}, {}
local function tmp(name)
  local p = TMP .. "." .. name
  created[#created + 1] = p
  return p
end
local function write(path, bytes)
  local f = assert(io.open(path, "wb"))
  f:write(bytes)
  f:close()
end
local function readall(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end
local exists = require("medlua.path").exists

local function inp(w)
  if w == "mr" then return {image = DP .. "mr_crop.nii.gz", label = DP .. "mrseg_crop.nii.gz"} end
  return {image = DP .. "ct_crop.nii.gz", label = DP .. "seg_crop.nii.gz"}
end

local function maxdiff(a, b)
  return (a:double() - b:double()):abs():max():item()
end

local function same_shape(a, b)
  return table.concat(a:size(), "x") == table.concat(b:size(), "x")
end

local function pipeline(tfs)
  local list = {X.LoadImaged{keys = KEYS}, X.EnsureChannelFirstd{keys = KEYS}}
  for _, t in ipairs(tfs) do list[#list + 1] = t end
  return X.Compose(list)
end

-- ------------------------------------------------------------------ golden cases (MONAI 1.6.1)
local AFF = {rotate_range = {{0.3, 0.3}, {-0.2, -0.2}, {0.1, 0.1}},
  shear_range = {{0.1, 0.1}, {0, 0}, {0.05, 0.05}, {0, 0}, {0, 0}, {-0.1, -0.1}},
  translate_range = {{3, 3}, {-2, -2}, {1, 1}}, scale_range = {{0.1, 0.1}, {-0.1, -0.1}, {0, 0}}}
local function affine_opts(pm)
  local o = {keys = KEYS, prob = 1, mode = {"bilinear", "nearest"}, padding_mode = pm}
  for k, v in pairs(AFF) do o[k] = v end
  return o
end

-- name, input, transforms, keys (default both), data tolerance (absolute, relative to the range), label rule
local CASES = {
  {"load_ct", "ct", {}},
  {"load_mr", "mr", {}},
  {"orient_lps", "ct", {X.Orientationd{keys = KEYS, axcodes = "LPS"}}},
  {"orient_psr", "mr", {X.Orientationd{keys = KEYS, axcodes = "PSR"}}},
  {"orient_ras_mr", "mr", {X.Orientationd{keys = KEYS, axcodes = "RAS"}}},
  {"spacing_ct", "ct", {X.Spacingd{keys = KEYS, pixdim = {1.7, 2.3, 2.9}, mode = {"bilinear", "nearest"}}},
    nil, 1e-6, "ties"},
  {"spacing_mr", "mr", {X.Spacingd{keys = KEYS, pixdim = {2.1, 2.6, 4.0}, mode = {"bilinear", "nearest"}}},
    nil, 1e-6, "ties"},
  {"spacing_keep", "ct", {X.Spacingd{keys = KEYS, pixdim = {2.0, -1, 0}, mode = "nearest"}}},
  {"scale_clip", "ct", {X.ScaleIntensityRanged{keys = "image", a_min = -175, a_max = 250, b_min = 0, b_max = 1,
    clip = true}}, {"image"}},
  {"scale_noclip", "ct", {X.ScaleIntensityRanged{keys = "image", a_min = -1000, a_max = 1000}}, {"image"}},
  {"scale_b", "ct", {X.ScaleIntensityRanged{keys = "image", a_min = -1000, a_max = 500, b_min = -1, b_max = 1}},
    {"image"}},
  {"norm", "ct", {X.NormalizeIntensityd{keys = "image"}}, {"image"}, 1e-6},
  {"norm_nonzero", "ct", {X.NormalizeIntensityd{keys = "label", nonzero = true}}, {"label"}, 1e-6},
  {"norm_subdiv", "ct", {X.NormalizeIntensityd{keys = "image", subtrahend = 100, divisor = 50}}, {"image"}},
  {"cropfg_label", "ct", {X.CropForegroundd{keys = KEYS, source_key = "label", margin = 2}}},
  {"cropfg_k", "ct", {X.CropForegroundd{keys = KEYS, source_key = "label", margin = 1, k_divisible = 16}}},
  {"cropfg_small", "ct", {X.CropForegroundd{keys = KEYS, source_key = "label", margin = {30, 1, 40},
    allow_smaller = true}}},
  {"cropfg_thr", "ct", {X.CropForegroundd{keys = KEYS, source_key = "label", threshold = 60, margin = 1}}},
  {"pad_sym", "ct", {X.SpatialPadd{keys = KEYS, spatial_size = {40, 29, -1}}}},
  {"pad_end", "ct", {X.SpatialPadd{keys = KEYS, spatial_size = {30, 31, 17}, method = "end"}}},
  {"center_crop", "ct", {X.CenterSpatialCropd{keys = KEYS, roi_size = {19, 14, -1}}}},
  {"rsc_center", "ct", {X.RandSpatialCropd{keys = KEYS, roi_size = {15, 30, 9}, random_center = false}}},
  {"flip_02", "ct", {X.RandFlipd{keys = KEYS, prob = 1, spatial_axis = {0, 2}}}},
  {"flip_all", "mr", {X.RandFlipd{keys = KEYS, prob = 1}}},
  {"affine_reflection", "ct", {X.RandAffined(affine_opts("reflection"))}, nil, 1e-5},
  {"affine_zeros", "ct", {X.RandAffined(affine_opts("zeros"))}, nil, 1e-5},
  {"affine_border", "ct", {X.RandAffined(affine_opts("border"))}, nil, 1e-5},
  {"affine_size", "mr", {X.RandAffined{keys = KEYS, prob = 1, spatial_size = {20, 26, 10},
    mode = {"bilinear", "nearest"}, padding_mode = "zeros", rotate_range = {{0, 0}, {0, 0}, {0.4, 0.4}},
    translate_range = {{1.5, 1.5}, {0, 0}, {-2, -2}}}}, nil, 1e-5},
  {"affine_rot_only", "ct", {X.RandAffined{keys = KEYS, prob = 1, mode = "nearest", padding_mode = "border",
    rotate_range = {{0.25, 0.25}}}}},
  {"scale_int", "ct", {X.RandScaleIntensityd{keys = "image", factors = {0.2, 0.2}, prob = 1}}, {"image"}},
  {"shift_int", "ct", {X.RandShiftIntensityd{keys = "image", offsets = {0.5, 0.5}, prob = 1}}, {"image"}},
  {"pipeline_ct", "ct", {X.Orientationd{keys = KEYS, axcodes = "RAS"},
    X.Spacingd{keys = KEYS, pixdim = {1.5, 1.5, 2}, mode = {"bilinear", "nearest"}},
    X.ScaleIntensityRanged{keys = "image", a_min = -175, a_max = 250, b_min = 0, b_max = 1, clip = true},
    X.CropForegroundd{keys = KEYS, source_key = "image"}}, nil, 1e-6, "ties"},
  {"pipeline_mr", "mr", {X.Orientationd{keys = KEYS, axcodes = "RAS"},
    X.Spacingd{keys = KEYS, pixdim = {1.5, 1.5, 2}, mode = {"bilinear", "nearest"}},
    X.NormalizeIntensityd{keys = "image", nonzero = true}}, nil, 2e-3, "ties", 1e-3},
}

-- Output voxels whose sampling position (inv(A_in) * A_out * o, an axis-aligned resampling here) lies
-- exactly half-way between two input voxels: nearest-neighbour picks either side there depending on
-- the last bit of the arithmetic (MONAI: affine_grid + grid_sample; medlua: one float64 product).
local function tie_mask(in_aff, out_aff, shape)
  local M
  local A, B = in_aff:tolist(), out_aff:tolist()
  -- invert the 3x3 diagonal-ish input affine via Gaussian elimination (4x4, general)
  local function inv4(m)
    local a = {}
    for i = 1, 4 do a[i] = {} for j = 1, 4 do a[i][j] = m[i][j] end for j = 1, 4 do a[i][4 + j] = i == j and 1 or 0 end end
    for c = 1, 4 do
      local p = c
      for r = c + 1, 4 do if math.abs(a[r][c]) > math.abs(a[p][c]) then p = r end end
      a[c], a[p] = a[p], a[c]
      local d = a[c][c]
      for j = 1, 8 do a[c][j] = a[c][j] / d end
      for r = 1, 4 do
        if r ~= c then
          local f = a[r][c]
          for j = 1, 8 do a[r][j] = a[r][j] - f * a[c][j] end
        end
      end
    end
    local o = {}
    for i = 1, 4 do o[i] = {} for j = 1, 4 do o[i][j] = a[i][4 + j] end end
    return o
  end
  local Ai = inv4(A)
  M = {}
  for i = 1, 4 do
    M[i] = {}
    for j = 1, 4 do
      local s = 0
      for k = 1, 4 do s = s + Ai[i][k] * B[k][j] end
      M[i][j] = s
    end
  end
  local function is_tie(v)
    local f = v - math.floor(v)
    return math.abs(f - 0.5) < 1e-6
  end
  -- per axis: the output indices whose coordinate is a tie (axis-aligned: M[a][a] o + M[a][4])
  local ties = {}
  for a = 1, 3 do
    ties[a] = {}
    for o = 0, shape[a] - 1 do ties[a][o] = is_tie(M[a][a] * o + M[a][4]) end
  end
  return ties
end

local function check_case(c)
  local name, which, tfs, keys, tol, label_rule, frac = c[1], c[2], c[3], c[4] or KEYS, c[5] or 0, c[6], c[7]
  local p = pipeline(tfs)
  p:set_random_state(0)
  local out = p(inp(which))
  for _, k in ipairs(keys) do
    local r, ra = ref[name .. "." .. k], ref[name .. "." .. k .. "_affine"]
    assert(r and ra, "golden tensor missing: " .. name .. "." .. k)
    local o, oa = out[k], out[k .. "_meta_dict"].affine
    T.ok(same_shape(o, r), string.format("%s.%s: shape %s vs MONAI %s", name, k, table.concat(o:size(), "x"),
      table.concat(r:size(), "x")))
    T.near(oa, ra, 1e-5, name .. "." .. k .. " affine")
    local scale = math.max(1, r:double():abs():max():item())
    if k == "label" and label_rule == "ties" then
      -- nearest-neighbour labels: equal everywhere except on exact tie planes
      local ties = tie_mask(ref[(c.in_affine or ("load_" .. which)) .. ".label_affine"], oa,
        {o:size()[2], o:size()[3], o:size()[4]})
      local ne = o:ne(r:float())
      local bad, total = 0, ne:sum():item()
      if total > 0 then
        local sz = o:size()
        for i = 0, sz[2] - 1 do
          for j = 0, sz[3] - 1 do
            for q = 0, sz[4] - 1 do
              if ne:get(0, i, j, q) and not (ties[1][i] or ties[2][j] or ties[3][q]) then bad = bad + 1 end
            end
          end
        end
      end
      T.eq(bad, 0, name .. ": label voxels differing from MONAI off the tie planes (" .. total .. " differ in all)")
      T.ok(total <= 0.1 * o:numel(), name .. ": too many tie voxels differ: " .. total)
    elseif frac then
      -- all but a fraction `frac` of the voxels within tol (exact-zero status after interpolation)
      local d = (o:double() - r:double()):abs()
      local nbad = d:gt(tol * scale):sum():item()
      T.ok(nbad <= frac * o:numel(), string.format("%s.%s: %d voxels beyond tol", name, k, nbad))
    else
      local d = maxdiff(o, r)
      T.ok(d <= tol * scale, string.format("%s.%s: max diff %.3g > %.3g", name, k, d, tol * scale))
    end
  end
end

-- the Spacingd tie check needs the affine of the input before resampling: pipeline_* reorient first,
-- which for these RAS/LPS crops is a pure permutation/flip of the loaded affine
for _, c in ipairs(CASES) do
  if c[1] == "pipeline_mr" then c.in_affine = "orient_ras_mr" end
  T.case("MONAI golden: " .. c[1], function() check_case(c) end)
end

T.case("MONAI golden: pad collate equals pad_list_data_collate", function()
  local ct = pipeline({})(inp("ct"))
  local a = X.CenterSpatialCropd{keys = KEYS, roi_size = {20, 14, 12}}(ct)
  local b = X.CenterSpatialCropd{keys = KEYS, roi_size = {15, 20, 16}}(ct)
  local batch = data.collate({a, b}, "pad")
  T.eq(batch.image:size(), ref["pad_collate.image"]:size())
  T.eq(maxdiff(batch.image, ref["pad_collate.image"]), 0)
  T.near(batch.image_meta_dict.affine, ref["pad_collate.image_affine"], 1e-9)
  T.eq(batch.label:size(), {2, 1, 20, 20, 16})
  T.raises(function() data.collate({a, b}, "stack") end, "cannot stack sample 1 of shape %[1, 15, 20, 16%] with sample 0 of shape %[1, 20, 14, 12%]")
end)

-- ------------------------------------------------------------------ array versions and Compose
T.case("array transforms take and return tensors; LoadImage returns the tensor and its meta", function()
  local img, meta = X.LoadImage{}(DP .. "ct_crop.nii.gz")
  T.eq(img:size(), {28, 24, 16})
  T.eq(meta.spatial_shape, {28, 24, 16})
  T.eq(meta.filename_or_obj, DP .. "ct_crop.nii.gz")
  T.near(meta.affine, ref["load_ct.image_affine"], 0)
  local x = ref["load_ct.image"]:float()
  local f = X.RandFlip{prob = 1, spatial_axis = {0, 2}}(x)
  T.eq(maxdiff(f, ref["flip_02.image"]), 0)
  local c = X.Compose{X.ScaleIntensityRange{a_min = -175, a_max = 250, b_min = 0, b_max = 1, clip = true}}
  T.eq(maxdiff(c(x), ref["scale_clip.image"]), 0)
  local v = volume.load(DP .. "ct_crop.nii.gz")
  local e = X.EnsureChannelFirst{}(v)
  T.eq(e:size(), {1, 28, 24, 16})
end)

T.case("Compose: seeded, reproducible, Lua functions on the main thread, native transforms after them", function()
  local seen = 0
  local c = X.Compose{
    X.LoadImaged{keys = KEYS, ensure_channel_first = true},
    X.RandGaussianNoised{keys = "image", prob = 1, std = 10},
    function(d, info)
      seen = seen + 1
      T.eq(type(info.index), "number")
      d.extra = 7
      d.image = d.image + 1
      return d
    end,
    X.RandFlipd{keys = KEYS, prob = 0.5, spatial_axis = 0},
    X.Compose{X.RandShiftIntensityd{keys = "image", offsets = 5, prob = 1}},
  }
  T.eq(#c, 5)
  T.ok(tostring(c):find("<lua function>", 1, true))
  c:set_random_state(42)
  local a1, a2 = c(inp("ct")), c(inp("ct"))
  c:set_random_state(42)
  local b1, b2 = c(inp("ct")), c(inp("ct"))
  T.eq(seen, 4)
  T.eq(a1.extra, 7)
  T.ok(a1.image:equal(b1.image) and a2.image:equal(b2.image), "same seed, same calls -> same output")
  T.ok(not a1.image:equal(a2.image), "the second call draws new numbers")
  c:set_random_state(43)
  T.ok(not c(inp("ct")).image:equal(a1.image), "another seed, other numbers")
end)

T.case("transform options are checked and named in errors", function()
  T.raises(function() X.RandFlipd{keys = "image", probb = 1} end, "RandFlipd: unknown option 'probb'")
  T.raises(function() X.RandFlipd{prob = 1} end, "RandFlipd: option 'keys' is required")
  T.raises(function() X.RandFlipd{keys = "image", prob = 2} end, "RandFlipd: prob must be in %[0, 1%]")
  T.raises(function() X.Spacingd{keys = "image"} end, "Spacingd: option 'pixdim' is required")
  T.raises(function() X.Spacingd{keys = "image", pixdim = {1, 2}} end, "list of 3 numbers")
  T.raises(function() X.Spacingd{keys = "image", pixdim = 1, mode = "cubic"} end, "mode must be \"bilinear\" or \"nearest\"")
  T.raises(function() X.Orientationd{keys = "image", axcodes = "RA"} end, "axcodes must be 3 letters")
  T.raises(function() X.CropForegroundd{keys = "image", source_key = "image", select_fn = function() end} end,
    "use threshold")
  T.raises(function() X.RandAffined{keys = "image", padding_mode = "wrap"} end, "padding_mode must be")
  T.raises(function() X.RandRotate90d{keys = "image", spatial_axes = {0, 0}} end, "two different axes")
  T.raises(function() X.RandScaleIntensityd{keys = "image"} end, "'factors' is required")
  T.raises(function() X.Compose{X.RandFlipd{keys = "image"}, 3} end, "Compose: item 2 must be a transform")
  -- keys given positionally
  local t = X.LoadImaged{"image", "label"}
  T.eq(t._spec.keys, {"image", "label"})
end)

T.case("missing keys, strings where images are expected, no channel dim", function()
  T.raises(function() X.RandFlipd{keys = "nope", prob = 1}{image = ref["load_ct.image"]:float()} end,
    "RandFlipd: key 'nope' is missing %(the sample has: image%)")
  local r = X.RandFlipd{keys = {"image", "nope"}, prob = 1, allow_missing_keys = true}{image = ref["load_ct.image"]:float()}
  T.eq(maxdiff(r.image, X.RandFlip{prob = 1}(ref["load_ct.image"]:float())), 0)
  T.raises(function() X.RandFlipd{keys = "image", prob = 1}{image = "ct.nii.gz"} end,
    "RandFlipd: key 'image' is a string %(\"ct.nii.gz\"%), not an image: put LoadImaged before it")
  T.raises(function() X.Compose{X.LoadImaged{keys = "image"}, X.Spacingd{keys = "image", pixdim = 2}}(inp("ct")) end,
    "Spacingd: key 'image' has no channel dim %(shape %[28, 24, 16%]%): put EnsureChannelFirstd")
  -- intensity transforms work without a channel dim, like MONAI
  local o = X.Compose{X.LoadImaged{keys = "image"}, X.ScaleIntensityRanged{keys = "image", a_min = 0, a_max = 1}}(inp("ct"))
  T.eq(o.image:size(), {28, 24, 16})
end)

-- ------------------------------------------------------------------ random transforms
T.case("RandRotate90d: k in 1..max_k, every k occurs, each equals MONAI's Rotate90d", function()
  local x = {image = ref["load_ct.image"]:float(), label = ref["load_ct.label"]:float(),
    image_meta_dict = {affine = ref["load_ct.image_affine"]}, label_meta_dict = {affine = ref["load_ct.label_affine"]}}
  local t = X.RandRotate90d{keys = KEYS, prob = 1, max_k = 3}
  t:set_random_state(5)
  local count = {0, 0, 0}
  for _ = 1, 60 do
    local o = t(x)
    local hit
    for k = 1, 3 do
      local r = ref["rot90_k" .. k .. ".image"]
      if same_shape(o.image, r) and maxdiff(o.image, r) == 0 then
        T.near(o.image_meta_dict.affine, ref["rot90_k" .. k .. ".image_affine"], 1e-9)
        T.eq(maxdiff(o.label, ref["rot90_k" .. k .. ".label"]), 0)
        hit = k
      end
    end
    T.ok(hit, "output is not one of MONAI's rotations")
    count[hit] = count[hit] + 1
  end
  T.ok(count[1] > 5 and count[2] > 5 and count[3] > 5, "k counts " .. table.concat(count, ","))
  -- other planes
  local mr = pipeline({})(inp("mr"))
  local r12 = X.RandRotate90d{keys = KEYS, prob = 1, max_k = 1, spatial_axes = {1, 2}}(mr)
  T.eq(maxdiff(r12.image, ref["rot90_12.image"]), 0)
  T.near(r12.label_meta_dict.affine, ref["rot90_12.label_affine"], 1e-9)
  local p0 = X.RandRotate90d{keys = KEYS, prob = 0}(mr)
  T.ok(p0.image:equal(mr.image), "prob 0 leaves the image")
end)

T.case("RandFlipd: prob 0 keeps, prob 0.5 flips about half the samples", function()
  local x = {image = ref["load_ct.image"]:float()}
  T.ok(X.RandFlipd{keys = "image", prob = 0}(x).image:equal(x.image))
  local t = X.RandFlipd{keys = "image", prob = 0.5, spatial_axis = 1}
  t:set_random_state(1)
  local flipped = 0
  for _ = 1, 200 do
    if not t(x).image:equal(x.image) then flipped = flipped + 1 end
  end
  T.ok(flipped > 70 and flipped < 130, "flipped " .. flipped .. " of 200")
end)

T.case("RandGaussianNoised: mean and std of the noise, same noise on every key, sample_std", function()
  local z = medlua.zeros(1, 40, 40, 40)
  -- seeded: 64000 samples put the sample mean within 0.005 of 0.25 only ~99% of the time
  local tn = X.RandGaussianNoised{keys = {"a", "b"}, prob = 1, mean = 0.25, std = 0.5, sample_std = false}
  tn:set_random_state(5)
  local o = tn{a = z, b = z}
  local n = o.a:double()
  T.near(n:mean():item(), 0.25, 0.005)
  T.near(n:std():item(), 0.5, 0.005)
  T.ok(o.a:equal(o.b), "the same noise is added to every key")
  T.ok(z:abs():max():item() == 0, "the input tensor is not modified")
  local t = X.RandGaussianNoised{keys = "a", prob = 1, std = 0.5}
  t:set_random_state(3)
  local sds = {}
  for i = 1, 20 do sds[i] = t{a = z}.a:double():std():item() end
  table.sort(sds)
  T.ok(sds[1] >= 0 and sds[20] <= 0.5 + 1e-3 and sds[20] - sds[1] > 0.1, "std drawn in [0, std]")
  T.raises(function() X.RandGaussianNoised{keys = {"a", "b"}, prob = 1}{a = z, b = medlua.zeros(1, 4, 4, 4)} end,
    "RandGaussianNoised: key 'b' has shape %[1, 4, 4, 4%] but key 'a' has %[1, 40, 40, 40%]")
end)

T.case("RandScaleIntensityd / RandShiftIntensityd: one factor per sample in range, channel_wise", function()
  local x = medlua.rand(2, 6, 6, 6) + 1
  local t = X.RandScaleIntensityd{keys = "a", factors = 0.3, prob = 1}
  local s = X.RandShiftIntensityd{keys = "a", offsets = {-2, -1}, prob = 1}
  for _ = 1, 10 do
    local r = t{a = x}.a / x
    T.near(r:max():item(), r:min():item(), 1e-5)
    T.ok(r:min():item() >= 0.7 - 1e-5 and r:max():item() <= 1.3 + 1e-5)
    local d = s{a = x}.a - x
    T.near(d:max():item(), d:min():item(), 1e-5)
    T.ok(d:min():item() >= -2 - 1e-5 and d:max():item() <= -1 + 1e-5)
  end
  local cw = X.RandScaleIntensityd{keys = "a", factors = 0.3, prob = 1, channel_wise = true}{a = x}.a / x
  T.ok(math.abs(cw:select(0, 0):mean():item() - cw:select(0, 1):mean():item()) > 1e-6, "one factor per channel")
end)

-- the crop's offset in the input, from the affines (crop affine = input affine * translate(offset))
local function offset_of(in_aff, out_aff)
  local t = (out_aff - in_aff):tolist()
  local A = in_aff:tolist()
  -- axis-aligned input affine: offset[a] = t[a][4] / A[a][a]
  return {math.floor(t[1][4] / A[1][1] + 0.5), math.floor(t[2][4] / A[2][2] + 0.5), math.floor(t[3][4] / A[3][3] + 0.5)}
end

T.case("RandSpatialCropd: sizes, random_size range, the crop is the block its affine says", function()
  local x = medlua.rand(1, 30, 25, 20)
  local aff = {{2, 0, 0, 5}, {0, 3, 0, -7}, {0, 0, 4, 1}, {0, 0, 0, 1}}
  local d = {image = x, image_meta_dict = {affine = aff}, label = x * 2, label_meta_dict = {affine = aff}}
  local t = X.RandSpatialCropd{keys = KEYS, roi_size = {10, 12, -1}}
  local corners = {}
  for _ = 1, 20 do
    local o = t(d)
    T.eq(o.image:size(), {1, 10, 12, 20})
    local off = offset_of(medlua.tensor(aff, {dtype = "float64"}), o.image_meta_dict.affine)
    local blk = x:narrow(1, off[1], 10):narrow(2, off[2], 12)
    T.ok(o.image:equal(blk), "crop data matches its affine")
    T.ok(o.label:equal(blk * 2), "same crop for every key")
    corners[off[1] .. "," .. off[2]] = true
  end
  local nc = 0
  for _ in pairs(corners) do nc = nc + 1 end
  T.ok(nc > 10, "random corners")
  local r = X.RandSpatialCropd{keys = "image", roi_size = {5, 5, 5}, max_roi_size = {9, 7, 5}, random_size = true}
  for _ = 1, 20 do
    local s = r(d).image:size()
    T.ok(s[2] >= 5 and s[2] <= 9 and s[3] >= 5 and s[3] <= 7 and s[4] == 5, table.concat(s, ","))
  end
  -- an ROI larger than the image: MONAI crops what there is
  T.eq(X.RandSpatialCropd{keys = "image", roi_size = {50, 5, 5}}(d).image:size(), {1, 30, 5, 5})
end)

T.case("RandCropByPosNegLabeld: num_samples dicts, centres on labels / background, sizes, errors", function()
  local img = medlua.rand(1, 40, 40, 40) + 1
  local lab = medlua.zeros(1, 40, 40, 40)
  lab:set(3, 0, 20, 21, 22) -- one foreground voxel
  local d = {image = img, label = lab}
  local t = X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {8, 8, 8}, pos = 1, neg = 0,
    num_samples = 3}
  local out = t(d)
  T.eq(#out, 3)
  for _, o in ipairs(out) do
    T.eq(o.image:size(), {1, 8, 8, 8})
    T.eq(o.label:get(0, 4, 4, 4), 3, "the crop is centred on the foreground voxel")
  end
  -- negatives only: the centre is background and inside image > threshold
  img:narrow(1, 0, 20):zero_()
  local n = X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {6, 6, 6}, pos = 0, neg = 1,
    num_samples = 4, image_key = "image", image_threshold = 0.5}
  n:set_random_state(9)
  for _ = 1, 10 do
    for _, o in ipairs(n(d)) do
      T.eq(o.label:get(0, 3, 3, 3), 0)
      T.ok(o.image:get(0, 3, 3, 3) > 0.5, "background centre inside the image mask")
    end
  end
  -- pos/neg ratio: 1:1 over many samples
  local lab2 = (medlua.rand(1, 30, 30, 30):gt(0.5)):float()
  local r = X.RandCropByPosNegLabeld{keys = {"label"}, label_key = "label", spatial_size = {3, 3, 3}, num_samples = 400}
  r:set_random_state(2)
  local pos = 0
  for _, o in ipairs(r{label = lab2}) do if o.label:get(0, 1, 1, 1) ~= 0 then pos = pos + 1 end end
  T.ok(pos > 150 and pos < 250, "positives " .. pos .. " of 400")
  -- errors
  T.raises(function()
    X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {96, 8, 8}}(d)
  end, "RandCropByPosNegLabeld: spatial_size %[96, 8, 8%] is larger than the image: key 'label' has spatial shape %[40, 40, 40%]")
  local small = X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {96, 8, 8}, allow_smaller = true}(d)
  T.eq(small.image:size(), {1, 40, 8, 8})
  T.raises(function()
    X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = 4}{image = img, label = medlua.zeros(1, 40, 40, 39)}
  end, "geometry mismatch: key 'image' has spatial shape %[40, 40, 40%] but key 'label' has %[40, 40, 39%]")
  T.raises(function()
    X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = 4, image_key = "image",
      image_threshold = 100}{image = img, label = medlua.zeros(1, 40, 40, 40)}
  end, "no sampling location available")
  -- one-hot labels: the background channel is ignored
  local oh = medlua.zeros(2, 10, 10, 10)
  oh:select(0, 0):fill_(1)
  oh:set(1, 1, 5, 5, 5)
  local o = X.RandCropByPosNegLabeld{keys = {"label"}, label_key = "label", spatial_size = 3, pos = 1, neg = 0}{label = oh}
  T.eq(o.label:get(1, 1, 1, 1), 1)
end)

T.case("RandAffined: prob 0 and identity ranges keep the image; spatial_size centre-crops/pads", function()
  local x = medlua.rand(1, 12, 10, 8)
  local d = {image = x}
  T.ok(X.RandAffined{keys = "image", prob = 0, rotate_range = 1}(d).image:equal(x))
  local id = X.RandAffined{keys = "image", prob = 1, rotate_range = {{0, 0}}, scale_range = {{0, 0}}}(d).image
  T.ok(maxdiff(id, x) < 1e-6, "identity parameters resample exactly")
  local c = X.RandAffined{keys = "image", prob = 0, spatial_size = {6, 10, 8}}(d)
  T.ok(maxdiff(c.image, x:narrow(1, 3, 6)) < 1e-6, "prob 0 with spatial_size: centre crop")
  T.near(c.image_meta_dict.affine:get(0, 3), 3, 1e-9)
end)

T.case("NormalizeIntensityd channel_wise: every channel has mean 0 and std 1", function()
  local x = medlua.rand(3, 10, 10, 10) * medlua.tensor({1, 5, 20}):reshape(3, 1, 1, 1)
  local o = X.NormalizeIntensityd{keys = "image", channel_wise = true}{image = x}.image
  for c = 0, 2 do
    T.near(o:select(0, c):double():mean():item(), 0, 1e-5)
    local v = o:select(0, c):double()
    T.near(math.sqrt((v * v):mean():item() - v:mean():item() ^ 2), 1, 1e-4)
  end
end)

-- ------------------------------------------------------------------ datasets and loaders
local function random_pipeline()
  return X.Compose{
    X.LoadImaged{keys = KEYS},
    X.EnsureChannelFirstd{keys = KEYS},
    X.ScaleIntensityRanged{keys = "image", a_min = -175, a_max = 250, b_min = 0, b_max = 1, clip = true},
    X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {12, 12, 8}, pos = 1, neg = 1,
      num_samples = 2, image_key = "image"},
    X.RandFlipd{keys = KEYS, prob = 0.5, spatial_axis = 0},
    X.RandRotate90d{keys = KEYS, prob = 0.5, max_k = 3},
    X.RandAffined{keys = KEYS, prob = 0.5, rotate_range = {0.2, 0.2, 0.2}, mode = {"bilinear", "nearest"}},
    X.RandGaussianNoised{keys = "image", prob = 0.5, std = 0.05},
  }
end

local function items(n)
  local l = {}
  for i = 1, n do l[i] = i % 2 == 0 and inp("ct") or {image = DP .. "ct_crop.nii.gz", label = DP .. "seg_crop.nii.gz", id = i} end
  for i = 1, n do l[i].id = i end
  return l
end

local function epoch_batches(loader)
  local out = {}
  for b, idx in loader:iter() do out[#out + 1] = {b = b, idx = idx} end
  return out
end

local function same_batches(a, b)
  if #a ~= #b then return false, "batch counts " .. #a .. " vs " .. #b end
  for i = 1, #a do
    local x, y = a[i].b, b[i].b
    if table.concat(a[i].idx, ",") ~= table.concat(b[i].idx, ",") then return false, "indices of batch " .. i end
    for _, k in ipairs{"image", "label"} do
      if not x[k]:equal(y[k]) then return false, k .. " of batch " .. i end
      if not x[k .. "_meta_dict"].affine:equal(y[k .. "_meta_dict"].affine) then return false, "affine of batch " .. i end
    end
    if not x.id:equal(y.id) then return false, "ids of batch " .. i end
  end
  return true
end

T.case("DataLoader: 1 and 3 workers (and 0) give identical batches for one seed", function()
  local ds = data.Dataset{data = items(7), transform = random_pipeline()}
  local a = epoch_batches(data.DataLoader(ds, {batch_size = 2, shuffle = true, num_workers = 1, seed = 11}))
  local b = epoch_batches(data.DataLoader(ds, {batch_size = 2, shuffle = true, num_workers = 3, seed = 11, prefetch = 1}))
  local c = epoch_batches(data.DataLoader(ds, {batch_size = 2, shuffle = true, num_workers = 0, seed = 11}))
  T.eq(#a, 4)
  T.eq(a[1].b.image:size(), {4, 1, 12, 12, 8}, "2 items x 2 samples per batch")
  T.eq(a[4].b.image:size()[1], 2, "last batch: one item")
  local ok, why = same_batches(a, b)
  T.ok(ok, why)
  ok, why = same_batches(a, c)
  T.ok(ok, why)
  -- another seed: other batches; the next epoch: other augmentations and order
  local d = epoch_batches(data.DataLoader(ds, {batch_size = 2, shuffle = true, num_workers = 2, seed = 12}))
  T.ok(not same_batches(a, d), "seed changes the batches")
  local l = data.DataLoader(ds, {batch_size = 2, shuffle = true, num_workers = 2, seed = 11})
  local e0, e1 = epoch_batches(l), epoch_batches(l)
  T.ok(same_batches(a, e0))
  T.ok(not same_batches(e0, e1), "epoch 1 differs from epoch 0")
  l:set_epoch(0)
  T.ok(same_batches(e0, epoch_batches(l)), "set_epoch(0) replays epoch 0")
  -- every item once per epoch
  local seen = {}
  for _, bt in ipairs(e1) do for _, i in ipairs(bt.idx) do seen[i] = (seen[i] or 0) + 1 end end
  for i = 1, 7 do T.eq(seen[i], 1) end
  l:close()
end)

T.case("DataLoader: batch counts, drop_last, no shuffle order, ids collated, stats", function()
  local ds = data.Dataset{data = items(5), transform = X.Compose{X.LoadImaged{keys = KEYS, ensure_channel_first = true}}}
  T.eq(#ds, 5)
  local l = data.DataLoader(ds, {batch_size = 2, drop_last = true, num_workers = 2})
  T.eq(#l, 2)
  local bs = epoch_batches(l)
  T.eq(#bs, 2)
  T.eq(bs[1].idx, {1, 2})
  T.eq(bs[2].b.id:tolist(), {3, 4})
  T.eq(bs[1].b.image:size(), {2, 1, 28, 24, 16})
  T.eq(bs[1].b.image_meta_dict.filename_or_obj, {DP .. "ct_crop.nii.gz", DP .. "ct_crop.nii.gz"})
  local s = l:stats()
  T.eq(s.batches, 2)
  T.eq(s.samples, 4)
  T.eq(s.num_workers, 2)
  for _, k in ipairs{"wait_s", "step_s", "produce_s", "collate_s", "wait_frac", "samples_per_s"} do
    T.ok(type(s[k]) == "number" and s[k] >= 0, k)
  end
  T.ok(s.produce_s > 0)
  -- break early, then a full epoch
  for _ in l:iter() do break end
  T.eq(#epoch_batches(l), 2)
  l:close()
  T.raises(function() l:stats() end, "closed")
end)

T.case("DataLoader: Lua transforms run on the main thread after the native prefix, then collate", function()
  local calls = 0
  local tf = X.Compose{
    X.LoadImaged{keys = KEYS, ensure_channel_first = true},
    X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {8, 8, 8}, num_samples = 2},
    function(d, info)
      calls = calls + 1
      d.image = d.image * 0 + info.index
      return d
    end,
    X.RandFlipd{keys = KEYS, prob = 1, spatial_axis = 0},
  }
  local ds = data.Dataset{data = items(3), transform = tf}
  local l = data.DataLoader(ds, {batch_size = 2, num_workers = 2, seed = 1})
  local bs = epoch_batches(l)
  T.eq(calls, 6)
  T.eq(#bs, 2)
  T.eq(bs[1].b.image:size(), {4, 1, 8, 8, 8})
  T.eq(bs[1].idx, {1, 2})
  T.eq(bs[1].b.image:select(0, 3):max():item(), 1, "samples of item 2 (index 1, 0-based)")
  local one = ds[3]
  T.eq(#one, 2)
  T.eq(one[1].image:max():item(), 2)
end)

T.case("DataLoader and Dataset:get give the same samples (native, Lua, native again)", function()
  local tf = X.Compose{
    X.LoadImaged{keys = KEYS, ensure_channel_first = true},
    X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {8, 8, 8}, num_samples = 2},
    function(d) d.image = d.image + 0; return d end,
    X.RandFlipd{keys = KEYS, prob = 0.5, spatial_axis = 1},
    X.RandGaussianNoised{keys = "image", prob = 1, std = 1},
  }
  tf:set_random_state(3)
  local ds = data.Dataset{data = items(3), transform = tf}
  local bs = epoch_batches(data.DataLoader(ds, {batch_size = 3, num_workers = 2}))
  local img = bs[1].b.image
  T.eq(img:size()[1], 6)
  for i = 1, 3 do
    local got = ds:get(i, 0)
    for q = 1, 2 do
      T.ok(img:select(0, 2 * (i - 1) + q - 1):equal(got[q].image), "item " .. i .. " sample " .. q)
    end
  end
  T.ok(not img:select(0, 0):equal(img:select(0, 1)), "the two samples of an item get their own noise")
end)

T.case("CacheDataset: same output as Dataset, cache kept under max_bytes, cached tensors never modified", function()
  local tf = X.Compose{
    X.LoadImaged{keys = KEYS, ensure_channel_first = true},
    X.ScaleIntensityRanged{keys = "image", a_min = -1000, a_max = 1000},
    X.RandShiftIntensityd{keys = "image", offsets = 1, prob = 1},
    X.RandFlipd{keys = KEYS, prob = 0.5},
  }
  tf:set_random_state(4)
  local list = items(4)
  local plain = data.Dataset{data = list, transform = tf}
  local cached = data.CacheDataset{data = list, transform = tf, cache_rate = 1.0, num_workers = 2}
  local info = cached:cache_info()
  T.eq(info.items, 4)
  T.ok(info.bytes > 4 * 28 * 24 * 16 * 4 * 2, "bytes " .. info.bytes)
  for round = 1, 2 do
    local a = epoch_batches(data.DataLoader(plain, {batch_size = 2, num_workers = 2}))
    local b = epoch_batches(data.DataLoader(cached, {batch_size = 2, num_workers = 2}))
    local ok, why = same_batches(a, b)
    T.ok(ok, "round " .. round .. ": " .. tostring(why))
  end
  T.ok(cached:cache_info().hits >= 8)
  -- a budget for two items: the other two are recomputed each time
  local budget = data.CacheDataset{data = list, transform = tf, max_bytes = math.floor(info.bytes / 2) + 10, num_workers = 1}
  T.eq(budget:cache_info().items, 2)
  T.eq(budget:cache_info().skipped, 2)
  local c = epoch_batches(data.DataLoader(budget, {batch_size = 2, num_workers = 2}))
  T.ok(same_batches(epoch_batches(data.DataLoader(plain, {batch_size = 2, num_workers = 2})), c))
  -- lazy cache: filled during the first epoch; cache_rate
  local lazy = data.CacheDataset{data = list, transform = tf, cache_rate = 0.5, lazy = true}
  T.eq(lazy:cache_info().items, 0)
  epoch_batches(data.DataLoader(lazy, {batch_size = 4, num_workers = 2}))
  T.eq(lazy:cache_info().items, 2)
  T.eq(lazy:cache_info().cache_num, 2)
end)

-- ------------------------------------------------------------------ data lists
T.case("load_datalist: decathlon JSON, paths relative to the file, plain-string entries", function()
  local dir = TMP .. ".dl"
  os.execute("mkdir -p '" .. dir .. "/imagesTr'")
  dirs[#dirs + 1] = dir
  write(dir .. "/imagesTr/a.nii.gz", "x")
  write(dir .. "/dataset.json", [[{"name": "t", "training": [{"image": "./imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz",
    "other": "imagesTr/a.nii.gz", "note": "not a path", "fold": 1}], "test": ["imagesTs/b.nii.gz"]}]])
  local l = data.load_datalist(dir .. "/dataset.json", "training")
  T.eq(l, {{image = dir .. "/imagesTr/a.nii.gz", label = dir .. "/labelsTr/a.nii.gz", other = dir .. "/imagesTr/a.nii.gz",
    note = "not a path", fold = 1}})
  T.eq(data.load_datalist(dir .. "/dataset.json", "test"), {{image = dir .. "/imagesTs/b.nii.gz"}})
  T.eq(data.load_datalist(dir .. "/dataset.json", "test", "/base")[1].image, "/base/imagesTs/b.nii.gz")
  T.raises(function() data.load_datalist(dir .. "/dataset.json", "validation") end, "no key 'validation'")
  T.raises(function() data.load_datalist(dir .. "/missing.json") end, "missing.json")
  write(dir .. "/bad.json", "{")
  T.raises(function() data.load_datalist(dir .. "/bad.json") end, "bad.json: invalid JSON")
end)

T.case("pair_folder: images matched to labels by name (nnU-Net _0000 too), sorted; missing labels", function()
  local dir = TMP .. ".pf"
  os.execute("mkdir -p '" .. dir .. "/img' '" .. dir .. "/lab'")
  dirs[#dirs + 1] = dir
  for _, n in ipairs{"b.nii.gz", "a_0000.nii.gz", "c.nii", "notes.txt"} do write(dir .. "/img/" .. n, "x") end
  for _, n in ipairs{"a.nii.gz", "b.nii.gz", "c.nii"} do write(dir .. "/lab/" .. n, "x") end
  local l = data.pair_folder(dir .. "/img", dir .. "/lab")
  T.eq(l, {{image = dir .. "/img/a_0000.nii.gz", label = dir .. "/lab/a.nii.gz"},
    {image = dir .. "/img/b.nii.gz", label = dir .. "/lab/b.nii.gz"},
    {image = dir .. "/img/c.nii", label = dir .. "/lab/c.nii"}})
  os.remove(dir .. "/lab/c.nii")
  T.raises(function() data.pair_folder(dir .. "/img", dir .. "/lab") end, "img/c.nii has no label in")
  T.eq(#data.pair_folder(dir .. "/img", dir .. "/lab", {strict = false}), 2)
  T.eq(#data.pair_folder(dir .. "/img"), 3)
  T.raises(function() data.pair_folder(dir .. "/nope", dir .. "/lab") end, "nope: cannot open directory")
end)

-- ------------------------------------------------------------------ bad input
T.case("bad input: a missing file fails at the batch that needs it, naming the file and the item", function()
  local list = items(3)
  list[3].image = DP .. "does_not_exist.nii.gz"
  local ds = data.Dataset{data = list, transform = X.Compose{X.LoadImaged{keys = KEYS, ensure_channel_first = true}}}
  for _, nw in ipairs{0, 2} do
    local l = data.DataLoader(ds, {batch_size = 1, num_workers = nw})
    local it = l:iter()
    T.ok(it() ~= nil and it() ~= nil, "the first two batches are fine")
    local err = T.raises(function() it() end, "DataLoader: epoch 0, batch 3: data%[3%]: LoadImaged: key 'image': ")
    T.ok(err:find(DP .. "does_not_exist.nii.gz: No such file or directory", 1, true), err)
    l:close()
  end
  T.raises(function() return ds[3] end, "data%[3%]: LoadImaged: key 'image': .*does_not_exist.nii.gz")
end)

T.case("bad input: truncated, wrong magic, unknown format, not a file name", function()
  local full = readall(DP .. "ct_crop.nii.gz")
  local p = tmp("trunc.nii.gz")
  write(p, full:sub(1, 2000))
  local tf = X.LoadImaged{keys = "image"}
  local e = T.raises(function() tf{image = p} end, "LoadImaged: key 'image': nifti: ")
  T.ok(e:find(p, 1, true) and (e:find("truncated") or e:find("gzip") or e:find("corrupt")), e)
  local q = tmp("magic.nii")
  write(q, string.rep("\0", 400))
  T.raises(function() tf{image = q} end, q)
  local u = tmp("unknown.bin")
  write(u, "hello world, not an image at all")
  T.raises(function() tf{image = u} end, "LoadImaged: key 'image': " .. u .. ": unknown format")
  T.raises(function() tf{image = 3} end, "LoadImaged: key 'image' must be a file name, got an integer")
  T.raises(function() data.Dataset{data = {{image = {1, 2}}}} end, "data%[1%]: key 'image': unsupported value of type table")
  T.raises(function() data.Dataset{data = {{image = "x"}}, transform = 3} end, "Dataset: transform must be")
  T.raises(function() data.DataLoader({}, {}) end, "expected a data.Dataset")
  T.raises(function() data.DataLoader(data.Dataset{data = {}}, {batch_size = 0}) end, "batch_size must be an integer >= 1")
  T.raises(function() data.DataLoader(data.Dataset{data = {}}, {workers = 2}) end, "unknown option 'workers'")
end)

T.case("bad input: label / image on different grids, ROI larger than the image, no foreground", function()
  local d = {image = medlua.rand(1, 20, 20, 20), label = medlua.ones(1, 20, 21, 20)}
  T.raises(function() X.CropForegroundd{keys = KEYS, source_key = "image"}(d) end,
    "CropForegroundd: geometry mismatch: key 'label' has spatial shape %[20, 21, 20%] but key 'image' has %[20, 20, 20%]")
  T.raises(function() X.RandSpatialCropd{keys = KEYS, roi_size = 5}(d) end, "RandSpatialCropd: geometry mismatch")
  T.raises(function() X.CropForegroundd{keys = "image", source_key = "label"}{image = medlua.rand(1, 4, 4, 4), label = medlua.zeros(1, 4, 4, 4)} end,
    "CropForegroundd: no foreground in key 'label'")
  -- in a loader: stacking samples of different sizes names both shapes
  local ds = data.Dataset{data = {{image = medlua.rand(1, 4, 4, 4)}, {image = medlua.rand(1, 4, 5, 4)}}}
  T.raises(function() epoch_batches(data.DataLoader(ds, {batch_size = 2, num_workers = 1})) end,
    "DataLoader: epoch 0, batch 1: collate: key 'image': cannot stack sample 1 of shape %[1, 4, 5, 4%] with sample 0 of shape %[1, 4, 4, 4%]")
  local padded = epoch_batches(data.DataLoader(ds, {batch_size = 2, collate = "pad"}))
  T.eq(padded[1].b.image:size(), {2, 1, 4, 5, 4})
end)

-- ------------------------------------------------------------------ real data (data/samples, in the repository)
T.case("real data: DICOM series and NIfTI load like medlua.volume.load", function()
  if not exists(SAMPLES .. "example_ct.nii.gz") then print("skipped: data/samples not present") return end
  local d = X.LoadImaged{keys = {"ct", "dcm"}, ensure_channel_first = true}{ct = SAMPLES .. "example_ct.nii.gz",
    dcm = SAMPLES .. "example_ct_dicom"}
  local v = volume.load(SAMPLES .. "example_ct_dicom")
  T.eq(d.dcm:size(), {1, v.shape[1], v.shape[2], v.shape[3]})
  T.ok(d.dcm:select(0, 0):equal(v.data:float()))
  T.near(d.dcm_meta_dict.affine, v.affine, 0)
  T.eq(d.ct:size(), {1, 122, 101, 112})
end)

T.case("real data: a training pipeline on the CT in 2 workers, 96^3 crops", function()
  if not exists(SAMPLES .. "example_ct.nii.gz") then print("skipped: data/samples not present") return end
  local tf = X.Compose{
    X.LoadImaged{keys = KEYS},
    X.EnsureChannelFirstd{keys = KEYS},
    X.Orientationd{keys = KEYS, axcodes = "RAS"},
    X.Spacingd{keys = KEYS, pixdim = {1.5, 1.5, 1.5}, mode = {"bilinear", "nearest"}},
    X.ScaleIntensityRanged{keys = "image", a_min = -175, a_max = 250, b_min = 0, b_max = 1, clip = true},
    X.CropForegroundd{keys = KEYS, source_key = "image"},
    X.SpatialPadd{keys = KEYS, spatial_size = {96, 96, 96}},
    X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {96, 96, 96}, num_samples = 2,
      image_key = "image"},
    X.RandFlipd{keys = KEYS, prob = 0.5, spatial_axis = 0},
  }
  local ds = data.Dataset{data = {{image = SAMPLES .. "example_ct.nii.gz", label = SAMPLES .. "example_seg_full_fast.nii.gz"}},
    transform = tf}
  local bs = epoch_batches(data.DataLoader(ds, {batch_size = 1, num_workers = 2, seed = 3}))
  T.eq(#bs, 1)
  T.eq(bs[1].b.image:size(), {2, 1, 96, 96, 96})
  T.ok(bs[1].b.image:min():item() >= 0 and bs[1].b.image:max():item() <= 1)
  T.ok(bs[1].b.label:max():item() > 0, "label present in the crops")
  local a = bs[1].b.image_meta_dict.affine
  T.near(a:select(0, 0):narrow(0, 0, 3):narrow(1, 0, 3):abs():sum(1):max():item(), 1.5, 1e-6)
end)

T.case("cleanup of temporary files", function()
  for _, x in ipairs(created) do os.remove(x) end
  for _, d in ipairs(dirs) do os.execute("rm -rf '" .. d .. "'") end
end)

T.case("medlua.path: names, joins, folders", function()
  local path = require "medlua.path"
  T.eq(path.dirname("a/b/c.nii.gz"), "a/b")
  T.eq(path.dirname("c.nii"), ".")
  T.eq(path.dirname("/c"), "/")
  T.eq(path.dirname("a/b/"), "a")
  T.eq(path.basename("a/b/"), "b")
  T.eq(path.join(".", "x.png"), "x.png")
  T.eq(path.join("out/", "x.png"), "out/x.png")
  T.eq(path.join("out", "/abs/x"), "/abs/x")
  T.eq(path.resolve("a/b", "../c/./d"), "a/c/d")
  T.eq(path.resolve("a", "/x/../y"), "/y")
  T.eq(path.case_name("ct/s01.nii.gz"), "s01")
  T.eq(path.case_name("dicom_dir/"), "dicom_dir")
  T.eq(path.exists("tests"), true)
  T.eq(path.is_dir("tests"), true)
  T.eq(path.is_dir("Makefile"), false)
  T.eq(path.exists("no/such/file"), false)
  T.eq(path.exists(path.root() .. "/lua/medlua/path.lua"), true)
  T.raises(function() path.mkdir("Makefile/sub") end, "Makefile/sub: cannot create the folder")
end)

T.run()
