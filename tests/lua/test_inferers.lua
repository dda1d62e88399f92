-- medlua.inferers (lua/medlua/inferers.lua) against MONAI 1.6.1: sliding_window_inference on 2-D and 3-D
-- inputs (padding, overlap 0/0.25/0.5, constant/gaussian blending, sw_batch_size 1 and 3, batch 2, a
-- position-dependent predictor), compute_importance_map and dense_patch_slices, all from
-- tests/ref/inferers_ref.safetensors (made by tests/ref/gen_inferers_ref.py); plus invariants (identity,
-- flip TTA with a flip-equivariant predictor) and bad input. Run from the repository root:
--   build/medlua tests/lua/test_inferers.lua
local medlua = require "medlua"
local T = require "medlua.test"
local json = require "medlua.json"
local inferers = require "medlua.inferers"
local F = medlua.F

local swi = inferers.sliding_window_inference
local ref, meta = medlua.load("tests/ref/inferers_ref.safetensors")
local swi_cases = json.decode(meta.swi)
local imap_cases = json.decode(meta.imap)
local starts_cases = json.decode(meta.starts)

local function R(name)
  local t = ref[name]
  assert(t, "golden tensor missing: " .. name)
  return t
end

local function sorted_keys(t)
  local k = {}
  for n in pairs(t) do k[#k + 1] = n end
  table.sort(k)
  return k
end

-- |a - b| <= rtol * (|b| + floor * max|b|) everywhere: relative, with a floor for values near zero
-- (1e-3 of the largest value; 1e-2 for float32 results, where both sides round intermediate values of
-- the output's magnitude to float32, so an output near zero carries an error of ~1e-7 * max|b|)
local RTOL = 1e-5
local function rel_near(a, b, rtol, msg)
  T.eq(a:size(), b:size(), "shape" .. (msg and (": " .. msg) or ""))
  local ad, bd = a:double(), b:double()
  local scale = bd:abs():max():item()
  local floor = (a.dtype == "float32" or b.dtype == "float32") and 1e-2 or 1e-3
  local err = (ad - bd):abs() / (bd:abs() + floor * scale + 1e-300)
  local worst = err:max():item()
  if not (worst <= rtol) then
    error(string.format("max relative error %.3g > %.3g (max abs diff %.3g, scale %.3g)%s", worst, rtol,
      (ad - bd):abs():max():item(), scale, msg and (": " .. msg) or ""), 2)
  end
  return worst
end

-- the generator's predictor: conv(avg_pool(x, 3, 1, 1) + 0.5 x^2, w, b) in 2-D or 3-D
local function poolsq(w, b)
  return function(x)
    local nsp = x:dim() - 2
    local pool = nsp == 3 and F.avg_pool3d or F.avg_pool2d
    local conv = nsp == 3 and F.conv3d or F.conv2d
    local h = pool(x, {kernel_size = 3, stride = 1, padding = 1, count_include_pad = true}) + x * x * 0.5
    return conv(h, w:to(x.dtype), b:to(x.dtype))
  end
end

-- ------------------------------------------------------------------ golden: sliding_window_inference
for _, name in ipairs(sorted_keys(swi_cases)) do
  local c = swi_cases[name]
  T.case("MONAI sliding_window_inference " .. name, function()
    local p = "swi." .. name .. "."
    local x, want = R(p .. "x"), R(p .. "out")
    local act = (c.predictor ~= "poolsq") and c.predictor or nil
    local got = swi(x, c.roi, c.sw_batch_size, poolsq(R(p .. "w"), R(p .. "b")), {
      overlap = c.overlap, mode = c.mode, sigma_scale = c.sigma_scale, padding_mode = c.padding_mode,
      cval = c.cval, activation = act})
    T.eq(got.dtype, c.dtype, "dtype follows the input (MONAI)")
    T.eq(want.dtype, c.dtype)
    rel_near(got, want, RTOL, name)
  end)
end

-- a medlua.nn Module predictor (called through :forward) gives the same as the same function
T.case("predictor may be a medlua.nn Module", function()
  local nn = require "medlua.nn"
  medlua.manual_seed(11)
  local conv = nn.Conv3d(2, 3, 3, {padding = 1})
  local x = medlua.randn(2, 2, 9, 8, 10)
  local o = {overlap = 0.5, mode = "gaussian"}
  local a = swi(x, {4, 5, 6}, 3, conv, o)
  local b = swi(x, {4, 5, 6}, 3, function(t) return F.conv3d(t, conv.weight, conv.bias, {padding = 1}) end, o)
  T.eq(a:size(), {2, 3, 9, 8, 10})
  T.near(a, b, 0)
end)

-- ------------------------------------------------------------------ golden: importance map, window starts
for _, name in ipairs(sorted_keys(imap_cases)) do
  local c = imap_cases[name]
  T.case("MONAI compute_importance_map " .. name, function()
    local got = inferers.importance_map(c.roi, c.mode, c.sigma_scale)
    local want = R("imap." .. name)
    T.eq(got.dtype, "float32")
    rel_near(got, want, 1e-6, name)
  end)
end

T.case("MONAI dense_patch_slices: window_starts", function()
  for _, c in ipairs(starts_cases) do
    local got = inferers.window_starts(c.image, c.roi, c.overlap)
    T.eq(got, c.starts, string.format("image %s roi %s overlap %s", T.fmt(c.image), T.fmt(c.roi), c.overlap))
  end
  -- the benchmark's volume: 7 x 7 x 4 windows of 96^3 at overlap 0.25
  T.eq(#inferers.window_starts({512, 512, 300}, {96, 96, 96}, 0.25), 196)
end)

-- ------------------------------------------------------------------ invariants
T.case("identity predictor reproduces the input (2-D, 3-D, padding, gaussian/constant, batch 2)", function()
  local id = function(t) return t end
  medlua.manual_seed(3)
  for _, s in ipairs({
    {shape = {2, 3, 13, 11, 9}, roi = {6, 5, 4}, mode = "gaussian", ov = 0.5, sw = 3},
    {shape = {1, 1, 7, 12, 5}, roi = {9, 5, 8}, mode = "constant", ov = 0.25, sw = 1},
    {shape = {2, 2, 17, 14}, roi = {8, 20}, mode = "gaussian", ov = 0.0, sw = 4, pm = "replicate"},
    {shape = {1, 1, 30}, roi = {7}, mode = "gaussian", ov = 0.25, sw = 2},
  }) do
    local x = medlua.randn(s.shape, {dtype = "float64"})
    local y = swi(x, s.roi, s.sw, id, {mode = s.mode, overlap = s.ov, padding_mode = s.pm})
    T.eq(y:size(), x:size())
    T.near(y, x, 1e-12, T.fmt(s.shape))
    local x32 = x:float()
    local y32 = swi(x32, s.roi, s.sw, id, {mode = s.mode, overlap = s.ov})
    T.eq(y32.dtype, "float32")
    T.near(y32, x32, 1e-5, T.fmt(s.shape) .. " float32")
    -- a float32 predictor on a float64 input: the result is float64 (the input's dtype, as MONAI)
    local yc = swi(x, s.roi, s.sw, function(t) return t:float() end, {mode = s.mode, overlap = s.ov})
    T.eq(yc.dtype, "float64")
    T.near(yc, x, 1e-5, T.fmt(s.shape) .. " float32 predictor")
  end
  -- the predictor's output is not modified (the weights are applied to a copy)
  local x = medlua.randn({1, 1, 9, 9}, {dtype = "float64"})
  local seen = {}
  swi(x, {4, 4}, 2, function(t) local y = t * 1; seen[#seen + 1] = {y, y:clone()}; return y end, {mode = "gaussian"})
  for _, p in ipairs(seen) do T.near(p[1], p[2], 0) end
end)

T.case("tta_flips with a flip-equivariant predictor equals no TTA", function()
  medlua.manual_seed(5)
  -- symmetric average pool + pointwise square: commutes with flips; the window grid below is mirror
  -- symmetric ((image - roi) divisible by the scan interval on every axis), so even the window-border
  -- effects of the pool's zero padding flip with the input
  local pred = function(t)
    local h = F.avg_pool3d(t, {kernel_size = 3, stride = 1, padding = 1})
    return medlua.cat({h * 2 + t * t, (t * 0.5):sigmoid()}, 1)
  end
  local x = medlua.randn({2, 1, 10, 15, 8}, {dtype = "float64"})
  local roi, o = {4, 6, 4}, {overlap = 0.5, mode = "gaussian"}
  local base = swi(x, roi, 3, pred, o)
  for _, flips in ipairs({true, {{0}, {1, 2}, {0, 1, 2}}, {{2}}}) do
    local y = swi(x, roi, 3, pred, {overlap = 0.5, mode = "gaussian", tta_flips = flips})
    T.near(y, base, 1e-12, "tta_flips " .. T.fmt(flips))
  end
  -- with softmax activation too (activation per window, before blending and averaging)
  local ya = swi(x, roi, 2, pred, {overlap = 0.5, mode = "gaussian", activation = "softmax", tta_flips = true})
  local yb = swi(x, roi, 2, pred, {overlap = 0.5, mode = "gaussian", activation = "softmax"})
  T.near(ya, yb, 1e-12, "softmax")
  -- a predictor that is not flip-equivariant gives a different result with TTA (the flips do happen)
  local w = medlua.tensor({{{{{1.0, 2.0, -1.0}}}}}, {dtype = "float64"})
  local skew = function(t) return F.conv3d(t, w, nil, {padding = {0, 0, 1}}) end
  local s0 = swi(x, roi, 3, skew, o)
  local s1 = swi(x, roi, 3, skew, {overlap = 0.5, mode = "gaussian", tta_flips = {{2}}})
  T.ok((s0 - s1):abs():max():item() > 1e-3, "an asymmetric kernel must change under flip TTA")
  -- and the flip-TTA result of that predictor is the mean of the plain and the flipped-back pass
  local flipped = inferers.flip(swi(inferers.flip(x, {4}):contiguous(), roi, 3, skew, o), {4})
  T.near(s1, (s0 + flipped) * 0.5, 1e-12, "mean of the passes")
end)

T.case("roi_size <= 0 takes the image size; integer roi; per-dim overlap", function()
  medlua.manual_seed(7)
  local x = medlua.randn({1, 1, 9, 12, 7}, {dtype = "float64"})
  local pred = poolsq(medlua.randn({2, 1, 1, 1, 1}, {dtype = "float64"}), medlua.randn({2}, {dtype = "float64"}))
  T.near(swi(x, {0, 5, -1}, 2, pred, {mode = "gaussian"}), swi(x, {9, 5, 7}, 2, pred, {mode = "gaussian"}), 0)
  T.near(swi(x, 5, 2, pred), swi(x, {5, 5, 5}, 2, pred), 0)
  T.near(swi(x, {4, 5, 3}, 2, pred, {overlap = {0.5, 0.5, 0.5}}), swi(x, {4, 5, 3}, 2, pred, {overlap = 0.5}), 0)
  -- different overlaps per dim: windows as MONAI's per-dim scan interval
  local st = inferers.window_starts({9, 12, 7}, {4, 5, 3}, {0.5, 0.0, 0.25})
  T.eq(#st, 4 * 3 * 3)
end)

T.case("sw_batch_size: windows of several batch items share predictor batches (MONAI order)", function()
  medlua.manual_seed(9)
  local x = medlua.randn({2, 1, 10, 9}, {dtype = "float64"})
  local sizes, items = {}, {}
  local pred = function(t)
    sizes[#sizes + 1] = t:size(0)
    for j = 0, t:size(0) - 1 do items[#items + 1] = t:select(0, j) end
    return t * 3
  end
  local nwin = #inferers.window_starts({10, 9}, {4, 4}, 0.25)   -- 3 x 3
  T.eq(nwin, 9)
  local y = swi(x, {4, 4}, 4, pred, {overlap = 0.25})
  T.eq(sizes, {4, 4, 4, 4, 2})
  T.near(y, x * 3, 1e-12)
  -- window 9 (0-based: the first of the second batch) comes from item 1 at start (0, 0)
  T.near(items[10], x:narrow(0, 1, 1):narrow(2, 0, 4):narrow(3, 0, 4):select(0, 0), 0)
  T.near(items[9], x:narrow(0, 0, 1):narrow(2, 6, 4):narrow(3, 5, 4):select(0, 0), 0)
end)

T.case("progress callback counts every window of every pass; no autograd", function()
  local x = medlua.randn(2, 1, 8, 8, 8)
  local calls, last, tot = 0, 0, 0
  local w = medlua.ones(1, 1, 1, 1, 1, {requires_grad = true})
  local y = swi(x, {4, 4, 4}, 3, function(t) return F.conv3d(t, w) end, {overlap = 0.5, tta_flips = {{0}},
    progress = function(done, total) calls = calls + 1; last, tot = done, total end})
  local nwin = 3 * 3 * 3
  T.eq(tot, nwin * 2 * 2)
  T.eq(last, tot)
  T.eq(calls, 2 * math.ceil(nwin * 2 / 3))
  T.eq(y.requires_grad, false)
  T.near(y, x, 1e-5)
end)

-- ------------------------------------------------------------------ bad input
T.case("bad input: clear errors naming sliding_window_inference", function()
  local x = medlua.randn(1, 1, 8, 8, 8)
  local id = function(t) return t end
  local function bad(fn, pat)
    local msg = T.raises(fn, pat)
    T.ok(msg:find("sliding_window_inference:", 1, true), "message names sliding_window_inference: " .. msg)
  end
  bad(function() return swi(x, {4, 4}, 1, id) end, "roi_size must be an integer or a list of 3 integers")
  bad(function() return swi(x, {4, 4, 4, 4}, 1, id) end, "got 4 values")
  bad(function() return swi(x, {4, 4.5, 4}, 1, id) end, "roi_size[2] must be an integer")
  bad(function() return swi(x, "4", 1, id) end, "roi_size must be")
  bad(function() return swi(x, 4, 1, id, {overlap = 1.0}) end, "overlap must be in [0, 1), got 1.0")
  bad(function() return swi(x, 4, 1, id, {overlap = -0.1}) end, "overlap must be in [0, 1)")
  bad(function() return swi(x, 4, 1, id, {overlap = {0.5, 1.0, 0.5}}) end, "overlap[2] must be in [0, 1)")
  bad(function() return swi(x, 4, 1, id, {overlap = {0.5, 0.5}}) end, "list of 3 numbers")
  bad(function() return swi(x, 4, 1, function(t) return t:narrow(2, 0, 3) end) end,
    "its spatial size must equal the ROI")
  bad(function() return swi(x, 4, 2, function(t) return t:narrow(0, 0, 1) end) end,
    "the predictor returned [1, 1, 4, 4, 4] for a window batch [2, 1, 4, 4, 4]")
  bad(function() return swi(x, 4, 1, function(t) return t:view(1, 64) end) end, "the predictor returned [1, 64]")
  bad(function() return swi(x, 4, 1, function() return 3 end) end, "the predictor must return a tensor, got number")
  bad(function() return swi({1, 2, 3}, 4, 1, id) end, "inputs must be a tensor [B, C, spatial...], got table")
  bad(function() return swi(nil, 4, 1, id) end, "inputs must be a tensor")
  bad(function() return swi(medlua.randn(8, 8), 4, 1, id) end, "got [8, 8]")
  bad(function() return swi(x, 4, 0, id) end, "sw_batch_size must be an integer >= 1")
  bad(function() return swi(x, 4, 1, nil) end, "a predictor is required")
  bad(function() return swi(x, 4, 1, id, {mode = "gauss"}) end, "mode must be \"constant\" or \"gaussian\"")
  bad(function() return swi(x, 4, 1, id, {activation = "relu"}) end, "activation must be")
  bad(function() return swi(x, 4, 1, id, {mode = "gaussian", sigma_scale = {0.1, 0.2}}) end,
    "sigma_scale must be a number or a list of 3 numbers, got 2 values")
  bad(function() return swi(x, 4, 1, id, {mode = "gaussian", sigma_scale = 0}) end,
    "sigma_scale values must be positive")
  bad(function() return swi(x, 4, 1, id, {tta_flips = {{3}}}) end, "tta_flips: axis 3 is not a spatial axis")
  bad(function() return swi(x, 4, 1, id, {overlapp = 0.5}) end, "unknown option 'overlapp'")
  bad(function() return swi(x, 4, 1, id, 0.5) end, "options must be a table")
end)

T.run()
