-- medlua.losses and medlua.metrics against MONAI 1.6.1 (tests/ref/losses_metrics_ref.json, made by
-- tests/ref/gen_losses_metrics_ref.py): loss values and input gradients, finite-difference gradient
-- checks in float64, Dice / IoU / Hausdorff / surface Dice / average surface distance on synthetic
-- shapes with anisotropic spacing and empty masks, the real TotalSegmentator label maps of
-- data/samples, input layouts, cumulative metrics, the EDT against brute force, and bad input.
-- Run from the repository root.
local medlua = require "medlua"
local T = require "medlua.test"
local json = require "medlua.json"
local losses = require "medlua.losses"
local metrics = require "medlua.metrics"
local gradcheck = require "medlua.gradcheck"

local REF_PATH = "tests/ref/losses_metrics_ref.json"
local ref
do
  local f = assert(io.open(REF_PATH, "rb"), "cannot open " .. REF_PATH .. " (run from the repository root)")
  ref = json.decode(f:read("a"))
  f:close()
end

-- "nan" / "inf" strings back to numbers, recursively
local function num(x)
  if type(x) == "table" then
    local t = {}
    for i, v in ipairs(x) do t[i] = num(v) end
    return t
  end
  if x == "nan" then return 0 / 0 end
  if x == "inf" then return math.huge end
  if x == "-inf" then return -math.huge end
  return x
end

-- relative-or-absolute closeness with NaN == NaN and inf == inf
local function close_lists(got, want, rtol, atol, what)
  local g, w = T.flatten(got), T.flatten(want)
  T.eq(#g, #w, what .. ": element count")
  for i = 1, #w do
    local a, b = g[i], w[i]
    local ok
    if b ~= b then ok = a ~= a
    elseif b == math.huge or b == -math.huge then ok = a == b
    else ok = math.abs(a - b) <= atol + rtol * math.abs(b) end
    if not ok then
      error(string.format("%s: element %d: got %.10g, MONAI %.10g", what, i, a, b), 2)
    end
  end
end

-- ================================================================================ losses
local function weight_opts(o)
  local r = {}
  for k, v in pairs(o) do r[k] = v end
  return r
end

T.case("losses match MONAI (values and input gradients)", function()
  T.ok(#ref.losses >= 20, "reference has loss cases")
  for _, c in ipairs(ref.losses) do
    local x = medlua.tensor(num(c.input), {dtype = "float64", requires_grad = true})
    local t = medlua.tensor(num(c.target), {dtype = c.target_dtype})
    local fn = losses[c.loss](weight_opts(c.opts))
    local out = fn(x, t)
    local want = num(c.out)
    -- FocalLoss runs in float32 in MONAI; squared_pred / soft_label go through torch.linalg.vector_norm of
    -- MONAI's float32 one-hot target (a float32 sqrt, then squared): float32 rounding in the reference
    local f32 = c.float32 or ((c.opts.squared_pred or c.opts.soft_label) and c.opts.to_onehot_y)
    local rtol = f32 and 2e-5 or 1e-9
    local atol = f32 and 1e-6 or 1e-11
    T.eq(out:size(), c.out_shape, c.name .. ": output shape")
    close_lists(out, want, rtol, atol, c.name .. ": value")
    local flat = out:reshape(-1)
    local n = flat:numel()
    local r = n > 1 and (medlua.arange(n, {dtype = "float64"}) * 0.1):cos() or medlua.ones(1, {dtype = "float64"})
    ;(flat * r):sum():backward()
    T.ok(x.grad ~= nil, c.name .. ": input got a gradient")
    close_lists(x.grad, num(c.grad), f32 and 1e-4 or 1e-8, f32 and 1e-6 or 1e-10, c.name .. ": gradient")
  end
end)

local function small_case(cls, opts, shape, kind, seed)
  medlua.manual_seed(seed)
  local x = medlua.randn(shape, {dtype = "float64"}) * 1.5
  local n, c = shape[1], shape[2]
  local sp = {}
  for i = 3, #shape do sp[#sp + 1] = shape[i] end
  local target
  if kind == "index" then
    local s = {n, 1}
    for _, v in ipairs(sp) do s[#s + 1] = v end
    target = medlua.randint(0, c, s)
  elseif kind == "binary" then
    target = medlua.rand(shape, {dtype = "float64"}):gt(0.5):double()
  else
    target = medlua.rand(shape, {dtype = "float64"})
  end
  x.requires_grad = true
  return losses[cls](opts), x, target
end

T.case("gradcheck: finite differences in float64", function()
  local cases = {
    {"DiceLoss", {softmax = true, to_onehot_y = true}, {2, 3, 3, 4}, "index"},
    {"DiceLoss", {sigmoid = true, squared_pred = true, batch = true}, {2, 2, 2, 3, 2}, "binary"},
    {"DiceLoss", {softmax = true, to_onehot_y = true, jaccard = true, include_background = false,
      weight = {1, 2}}, {1, 3, 3, 3, 2}, "index"},
    {"DiceLoss", {sigmoid = true, soft_label = true}, {2, 2, 3, 3}, "soft"},
    {"DiceCELoss", {softmax = true, to_onehot_y = true, lambda_dice = 0.6}, {2, 3, 2, 3, 2}, "index"},
    {"DiceCELoss", {sigmoid = true, weight = {2.0}}, {2, 1, 3, 4}, "binary"},
    {"FocalLoss", {}, {2, 2, 3, 3}, "binary"},
    {"FocalLoss", {use_softmax = true, to_onehot_y = true, alpha = 0.3}, {2, 3, 2, 3, 2}, "index"},
    {"FocalLoss", {alpha = {0.2, 0.8}, weight = {1.0, 3.0}, reduction = "sum", gamma = 1.5}, {2, 2, 3, 2}, "binary"},
    {"BCEWithLogitsLoss", {pos_weight = {1.5, 0.5}}, {2, 3, 2}, "soft"},
  }
  for i, c in ipairs(cases) do
    local fn, x, t = small_case(c[1], c[2], c[3], c[4], 100 + i)
    local ok, err = gradcheck(function(a) return fn(a, t) end, {x}, {eps = 1e-6, atol = 1e-7, rtol = 1e-5,
      raise_exception = false, seed = i})
    T.ok(ok, c[1] .. " case " .. i .. ": " .. tostring(err))
  end
end)

T.case("losses: defaults, options and module behaviour", function()
  local d = losses.DiceLoss()
  T.eq(d.include_background, true)
  T.eq(d.reduction, "mean")
  T.near(d.smooth_nr, 1e-5, 0)
  local f = losses.FocalLoss()
  T.eq(f.gamma, 2.0)
  T.ok(tostring(d):find("DiceLoss", 1, true), "repr names the class")
  -- a perfect prediction gives a ~0 Dice loss, the opposite one ~1
  local t = medlua.tensor({{{{1, 0}, {0, 1}}, {{0, 1}, {1, 0}}}}, {dtype = "float64"}) -- [1, 2, 2, 2] one-hot
  T.near(losses.DiceLoss()(t, t):item(), 0, 1e-5)
  T.near(losses.DiceLoss()(1 - t, t):item(), 1, 1e-5)
  -- float32 in, float32 out; float64 in, float64 out
  local x32 = medlua.randn(2, 3, 4, 4)
  local y = medlua.randint(0, 3, {2, 1, 4, 4})
  T.eq(losses.DiceCELoss{softmax = true, to_onehot_y = true}(x32, y).dtype, "float32")
  T.eq(losses.FocalLoss{use_softmax = true, to_onehot_y = true}(x32:double(), y).dtype, "float64")
  -- class indices as float work with to_onehot_y (MONAI casts with .long())
  T.near(losses.DiceLoss{softmax = true, to_onehot_y = true}(x32, y:float()):item(),
    losses.DiceLoss{softmax = true, to_onehot_y = true}(x32, y):item(), 1e-6)
  -- DiceCELoss with a one-hot target equals the class-index form (cross entropy with probabilities)
  local oh = y:squeeze(1):one_hot(3):permute(0, 3, 1, 2):float()
  T.near(losses.DiceCELoss{softmax = true}(x32, oh):item(), losses.DiceCELoss{softmax = true, to_onehot_y = true}(x32, y):item(), 1e-5)
  -- ce_weight (old MONAI name) weights the cross entropy only
  local a = losses.DiceCELoss{softmax = true, to_onehot_y = true, ce_weight = {1, 1, 1}}(x32, y):item()
  local b = losses.DiceCELoss{softmax = true, to_onehot_y = true}(x32, y):item()
  T.near(a, b, 1e-6)
end)

T.case("losses: bad input names the loss and the reason", function()
  local x = medlua.randn(2, 3, 4, 4, {dtype = "float64"})
  T.raises(function() return losses.DiceLoss{softmax = true}(x, medlua.zeros(2, 2, 4, 4)) end,
    "DiceLoss: ground truth has different shape ([2, 2, 4, 4]) from input ([2, 3, 4, 4])")
  T.raises(function() return losses.DiceLoss{softmax = true, sigmoid = true} end, "DiceLoss: incompatible values")
  T.raises(function() return losses.DiceLoss{reduction = "avg"} end, "DiceLoss: unsupported reduction 'avg'")
  T.raises(function() return losses.DiceLoss{smooth = 1} end, "DiceLoss: unknown option 'smooth'")
  T.raises(function() return losses.DiceLoss{softmax = true, to_onehot_y = true}(x, medlua.zeros(2, 3, 4, 4)) end,
    "DiceLoss: to_onehot_y needs a target of shape [N, 1, spatial...]")
  T.raises(function() return losses.DiceLoss{softmax = true, to_onehot_y = true, weight = {1, 2}}(x,
    medlua.randint(0, 3, {2, 1, 4, 4})) end, "DiceLoss: the length of weight (2) should be the number of classes (3)")
  T.raises(function() return losses.DiceLoss{softmax = true, to_onehot_y = true, weight = {1, -2, 1}}(x,
    medlua.randint(0, 3, {2, 1, 4, 4})) end, "DiceLoss: weight values must be >= 0")
  T.raises(function() return losses.DiceLoss()(x, "y") end, "DiceLoss: target must be a tensor, got string")
  T.raises(function() return losses.DiceCELoss{reduction = "none"} end, "DiceCELoss: unsupported reduction 'none'")
  T.raises(function() return losses.DiceCELoss{lambda_ce = -1} end, "DiceCELoss: lambda_ce should be no less than 0.0")
  T.raises(function() return losses.DiceCELoss()(x, medlua.zeros(2, 4, 4)) end,
    "DiceCELoss: the number of dimensions for input and target should be the same")
  T.raises(function() return losses.DiceCELoss()(x, medlua.zeros(2, 2, 4, 4)) end,
    "DiceCELoss: number of channels for target is neither 1")
  T.raises(function() return losses.FocalLoss{use_softmax = true, to_onehot_y = true, alpha = {0.5, 0.5}}(x,
    medlua.randint(0, 3, {2, 1, 4, 4})) end, "FocalLoss: the length of alpha (2) must match the number of classes (3)")
  T.raises(function() return losses.FocalLoss{weight = {1, 2}}(x, medlua.zeros(2, 3, 4, 4, {dtype = "float64"})) end,
    "FocalLoss: the number of class_weight (2) must match the number of output channels (3)")
  T.raises(function() return losses.FocalLoss()(x, medlua.zeros(2, 3, 4, 5)) end, "FocalLoss: ground truth has different shape")
  T.raises(function() return losses.BCEWithLogitsLoss()(x, medlua.zeros(2, 3, 4, 5)) end, "binary_cross_entropy_with_logits")
end)

-- ================================================================================ metrics
-- label map of a shape recipe (see gen_losses_metrics_ref.py), as a flat Lua list
local function render(rec)
  local shape = rec.shape
  local nd = #shape
  local n = 1
  for _, s in ipairs(shape) do n = n * s end
  local lab = {}
  for i = 1, n do lab[i] = 0 end
  local strides = {}
  local s = 1
  for d = nd, 1, -1 do strides[d] = s; s = s * shape[d] end
  for _, o in ipairs(rec.objects) do
    for i = 0, n - 1 do
      local rem, inside, q = i, true, 0
      for d = 1, nd do
        local c = rem // strides[d]
        rem = rem % strides[d]
        if o.kind == "ellipsoid" then
          q = q + o.w[d] * (c - o.c[d]) * (c - o.c[d])
        elseif c < o.lo[d] or c > o.hi[d] then
          inside = false
        end
      end
      if o.kind == "ellipsoid" then inside = q <= o.r2 end
      if inside then lab[i + 1] = o.label end
    end
  end
  return lab
end

-- batch of recipes -> int64 [N, spatial...]
local function batch(recs)
  local flat, shape = {}, nil
  for _, r in ipairs(recs) do
    shape = r.shape
    for _, v in ipairs(render(r)) do flat[#flat + 1] = v end
  end
  local s = {#recs}
  for _, v in ipairs(shape) do s[#s + 1] = v end
  return medlua.tensor(flat, {dtype = "int64"}):reshape(table.unpack(s))
end

local function call_metric(c, pred, gt, extra)
  local o = {}
  for k, v in pairs(c.opts) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return metrics[c.fn](pred, gt, o)
end

T.case("metrics match MONAI on synthetic shapes (label maps)", function()
  T.ok(#ref.metrics >= 30, "reference has metric cases")
  for _, c in ipairs(ref.metrics) do
    local got = call_metric(c, batch(c.pred), batch(c.gt))
    T.eq(got.dtype, "float64", c.name)
    close_lists(got, num(c.expect), 2e-6, 1e-6, c.name)
  end
end)

T.case("metrics: one-hot, MONAI [N, 1, ...] and float label maps give the same numbers", function()
  for _, c in ipairs(ref.metrics) do
    local nc = c.opts.num_classes
    local p, g = batch(c.pred), batch(c.gt)
    local nd = p:dim()
    local function oh(t) -- [N, spatial..., C] -> [N, C, spatial...]
      local o = t:one_hot(nc)
      local perm = {0, nd}
      for d = 1, nd - 1 do perm[#perm + 1] = d end
      return o:permute(table.unpack(perm)):contiguous()
    end
    local want = num(c.expect)
    close_lists(call_metric(c, oh(p), oh(g)), want, 2e-6, 1e-6, c.name .. " (one-hot)")
    close_lists(call_metric(c, p:unsqueeze(1):float(), oh(g):byte()), want, 2e-6, 1e-6, c.name .. " ([N,1] float pred)")
  end
end)

T.case("metrics: a single label map [X, Y, Z] is a batch of one; Volumes bring their spacing", function()
  local c
  for _, x in ipairs(ref.metrics) do if x.name == "hd95 anisotropic batch" then c = x end end
  local p, g = batch(c.pred), batch(c.gt)
  local want = num(c.expect)
  local got = metrics.hausdorff95(p:select(0, 0), g:select(0, 0), {spacing = c.opts.spacing, num_classes = 4})
  T.eq(got:size(), {1, 3})
  close_lists(got, {want[1]}, 2e-6, 1e-6, "single map")
  -- no num_classes: max label + 1 (both items have labels up to 3)
  close_lists(metrics.hausdorff95(p, g, {spacing = c.opts.spacing}), want, 2e-6, 1e-6, "inferred classes")
  -- binary masks: one column, the foreground
  local d = metrics.dice(p:eq(1), g:eq(1))
  T.eq(d:size(), {2, 1})
  local dall = metrics.dice(p, g, {num_classes = 4})
  T.near(d:get(0, 0), dall:get(0, 0), 1e-12)
  local ok, volume = pcall(require, "medlua.volume")
  if ok and volume.new then
    local s = c.opts.spacing
    local aff = {{s[1], 0, 0, 0}, {0, s[2], 0, 0}, {0, 0, s[3], 0}, {0, 0, 0, 1}}
    local vp = volume.new(p:select(0, 0):float(), aff)
    local vg = volume.new(g:select(0, 0):float(), aff)
    close_lists(metrics.hausdorff95(vp, vg, {num_classes = 4}), {want[1]}, 2e-6, 1e-6, "volumes")
  else
    print("skipped: Volume inputs (medlua.volume is not available)")
  end
end)

T.case("metrics: real TotalSegmentator labels shifted by one voxel (data/samples)", function()
  local okv, volume = pcall(require, "medlua.volume")
  if not okv then print("skipped: medlua.volume is not available"); return end
  for _, r in ipairs(ref.real) do
    local f = io.open(r.file, "rb")
    if not f then print("skipped: " .. r.file .. " not found"); goto continue end
    f:close()
    do
      local vol = volume.load(r.file)
      local lab = vol.data:round():long()
      local n = lab:size(r.shift_axis)
      local shifted = medlua.zeros_like(lab)
      shifted:narrow(r.shift_axis, 1, n - 1):copy_(lab:narrow(r.shift_axis, 0, n - 1))
      T.near(vol.spacing[1], r.spacing[1], 1e-5, "spacing from the file")
      local opts = {num_classes = r.num_classes, spacing = vol.spacing}
      local t0 = os.clock()
      local dice = metrics.dice(shifted, lab, {num_classes = r.num_classes})
      local hd = metrics.hausdorff95(shifted, lab, opts)
      local sd = metrics.surface_dice(shifted, lab, {num_classes = r.num_classes, spacing = vol.spacing,
        tolerance_mm = r.tolerance_mm})
      local secs = os.clock() - t0
      local function pick(t)
        local out = {}
        for i, c in ipairs(r.classes) do out[i] = t:get(0, c - 1) end
        return out
      end
      close_lists(pick(dice), num(r.dice), 1e-6, 1e-7, r.file .. " dice") -- MONAI: float32
      close_lists(pick(hd), num(r.hausdorff95), 2e-6, 1e-5, r.file .. " hausdorff95")
      close_lists(pick(sd), num(r.surface_dice), 2e-6, 1e-6, r.file .. " surface dice")
      print(string.format("  %s: %d classes, dice+hd95+surface dice in %.2f s CPU", r.file, #r.classes, secs))
    end
    ::continue::
  end
end)

T.case("cumulative metrics and reductions (MONAI do_metric_reduction)", function()
  local nan = 0 / 0
  local f = medlua.tensor({{0.5, nan, 1.0}, {nan, nan, nan}, {0.2, 0.4, nan}}, {dtype = "float64"})
  local m, n = metrics.reduce(f, "mean")
  T.near(m:item(), (0.75 + 0.3) / 2, 1e-12)
  T.eq(n:item(), 2)
  m, n = metrics.reduce(f, "sum")
  T.near(m:item(), 2.1, 1e-12)
  T.eq(n:item(), 4)
  m, n = metrics.reduce(f, "mean_batch")
  close_lists(m, {0.35, 0.4, 1.0}, 0, 1e-12, "mean_batch")
  close_lists(n, {2, 1, 1}, 0, 0, "mean_batch counts")
  m = metrics.reduce(f, "mean_channel")
  close_lists(m, {0.75, 0, 0.3}, 0, 1e-12, "mean_channel")
  m = metrics.reduce(f, "sum_batch")
  close_lists(m, {0.7, 0.4, 1.0}, 0, 1e-12, "sum_batch")
  m, n = metrics.reduce(f, "none")
  close_lists(n, {{1, 0, 1}, {0, 0, 0}, {1, 1, 0}}, 0, 0, "none mask")
  T.raises(function() return metrics.reduce(f, "median") end, "metrics.reduce: unsupported reduction 'median'")

  local c
  for _, x in ipairs(ref.metrics) do if x.name == "dice label maps batch" then c = x end end
  local p, g = batch(c.pred), batch(c.gt)
  local dm = metrics.DiceMetric{num_classes = 4, get_not_nans = true}
  dm:update(p:narrow(0, 0, 1), g:narrow(0, 0, 1))
  dm(p:narrow(0, 1, 1), g:narrow(0, 1, 1))
  T.eq(dm:get_buffer():size(), {2, 3})
  local agg, nn = dm:aggregate()
  local want = metrics.reduce(medlua.tensor(num(c.expect), {dtype = "float64"}), "mean")
  T.near(agg:item(), want:item(), 1e-6)
  T.eq(nn:item(), 2)
  close_lists(dm:aggregate("mean_batch"), metrics.reduce(medlua.tensor(num(c.expect), {dtype = "float64"}), "mean_batch"),
    0, 1e-6, "mean_batch aggregate")
  dm:reset()
  T.raises(function() return dm:aggregate() end, "metrics.DiceMetric:aggregate: no data")
  dm:update(p, g)
  T.raises(function() return dm:update(p:eq(1), g:eq(1), {num_classes = 2}) end,
    "this batch has 1 classes but earlier ones had 3")

  local hm = metrics.HausdorffDistanceMetric{percentile = 95, num_classes = 4}
  for _, x in ipairs(ref.metrics) do if x.name == "hd95 anisotropic batch" then c = x end end
  hm:update(batch(c.pred), batch(c.gt), {spacing = c.opts.spacing})
  close_lists(hm:aggregate("none"), num(c.expect), 2e-6, 1e-6, "HausdorffDistanceMetric buffer")
  local sm = metrics.SurfaceDiceMetric{tolerance_mm = 1.0, num_classes = 4, spacing = c.opts.spacing}
  sm:update(batch(c.pred), batch(c.gt))
  T.ok(sm:aggregate():item() > 0)
end)

-- brute-force scipy distance_transform_edt
local function brute_edt(mask, shape, sp)
  local n = #mask
  local coords = {}
  local function coord(i)
    local c, rem = {}, i - 1
    for d = #shape, 1, -1 do c[d] = rem % shape[d]; rem = rem // shape[d] end
    return c
  end
  for i = 1, n do coords[i] = coord(i) end
  local out = {}
  for i = 1, n do
    if mask[i] == 0 then out[i] = 0
    else
      local best = math.huge
      for j = 1, n do
        if mask[j] == 0 then
          local s = 0
          for d = 1, #shape do local dd = (coords[i][d] - coords[j][d]) * sp[d]; s = s + dd * dd end
          if s < best then best = s end
        end
      end
      out[i] = math.sqrt(best)
    end
  end
  return out
end

T.case("distance_transform_edt: exact against brute force, anisotropic, 1-D to 3-D", function()
  medlua.manual_seed(7)
  for _, case in ipairs({{{17}, {0.7}}, {{9, 13}, {1.0, 2.5}}, {{6, 7, 8}, {0.6, 1.3, 2.1}}, {{5, 1, 9}, {1, 1, 1}}}) do
    local shape, sp = case[1], case[2]
    for _, p in ipairs({0.2, 0.7, 0.97}) do
      local m = medlua.rand(shape):gt(p)
      local flat = m:long():reshape(-1):tolist()
      local want = brute_edt(flat, shape, sp)
      local got = metrics.distance_transform_edt(m, {spacing = sp})
      T.eq(got:size(), shape)
      close_lists(got:reshape(-1), want, 1e-12, 1e-12, "edt " .. table.concat(shape, "x") .. " p=" .. p)
    end
  end
  -- no zero voxel: +inf everywhere (scipy's values there are meaningless)
  local inf = metrics.distance_transform_edt(medlua.ones(3, 4))
  T.eq(inf:amin():item(), math.huge)
  T.eq(metrics.distance_transform_edt(medlua.zeros(3, 4)):amax():item(), 0)
  -- surface voxels of a 3x3x3 cube inside 5^3: 26 (all but the centre)
  local cube = medlua.zeros(5, 5, 5)
  cube:narrow(0, 1, 3):narrow(1, 1, 3):narrow(2, 1, 3):fill_(1)
  local e = metrics.surface_voxels(cube)
  T.eq(e.dtype, "bool")
  T.eq(e:long():sum():item(), 26)
  T.eq(e:get(2, 2, 2), false)
  -- touching the border: every voxel of a full volume is on the surface only at the image faces
  T.eq(metrics.surface_voxels(medlua.ones(4, 4, 4)):long():sum():item(), 64 - 8)
end)

T.case("metrics: bad input names the metric and the reason", function()
  local a = medlua.zeros(8, 8, 8, {dtype = "int64"})
  local b = medlua.zeros(8, 8, 7, {dtype = "int64"})
  T.raises(function() return metrics.dice(a, b) end,
    "metrics.dice: pred of shape [8, 8, 8] and gt of shape [8, 8, 7] do not match")
  T.raises(function() return metrics.hausdorff95(a, b) end, "metrics.hausdorff95: pred of shape")
  local a5 = a:view(1, 1, 8, 8, 8)
  T.raises(function() return metrics.hausdorff95(a5, a5, {spacing = {1, 1}}) end,
    "metrics.hausdorff95: pred has shape [1, 1, 8, 8, 8]; with spatial_dims=2")
  T.raises(function() return metrics.hausdorff95(a, a, {spacing = {1, 1, 1, 1}}) end,
    "metrics.hausdorff95: spacing has 4 values, expected 3")
  T.raises(function() return metrics.hausdorff95(a, a, {spacing = {1, -1, 1}}) end,
    "metrics.hausdorff95: spacing[2] must be a positive finite number, got -1")
  T.raises(function() return metrics.hausdorff95(a:unsqueeze(0), a:unsqueeze(0), {spacing = {{1, 1, 1}, {1, 1, 1}}}) end,
    "metrics.hausdorff95: spacing has 2 lists for a batch of 1")
  T.raises(function() return metrics.hausdorff95(a, a, {percentile = 101}) end,
    "metrics.hausdorff95: percentile must be between 0 and 100, got 101")
  T.raises(function() return metrics.surface_dice(a, a, {tolerance_mm = -1}) end,
    "metrics.surface_dice: tolerance_mm[1] must be a finite number >= 0, got -1")
  T.raises(function() return metrics.surface_dice(a, a, {tolerance_mm = {1, 2}}) end,
    "metrics.surface_dice: tolerance_mm has 2 values for 1 classes")
  T.raises(function() return metrics.surface_dice(a, a) end, "metrics.surface_dice: tolerance_mm is required")
  T.raises(function() return metrics.dice(a, a, {bg = true}) end, "metrics.dice: unknown option 'bg'")
  T.raises(function() return metrics.dice(a, "x") end, "metrics.dice: gt must be a tensor or a Volume, got string")
  T.raises(function() return metrics.iou(medlua.zeros(1, 3, 4, 4, 4), medlua.zeros(1, 3, 4, 4, 4), {num_classes = 4}) end,
    "metrics.iou: pred is one-hot with 3 channels but num_classes is 4")
  T.raises(function() return metrics.dice(medlua.zeros(1, 3, 4, 4, 4), medlua.zeros(1, 2, 4, 4, 4)) end,
    "metrics.dice: pred has 3 channels and gt has 2")
  T.raises(function() return metrics.dice(a, a, {num_classes = 1}) end,
    "metrics.dice: no class to score")
  T.raises(function() return metrics.dice(medlua.zeros(4), medlua.zeros(4)) end,
    "metrics.dice: pred has shape [4]; with spatial_dims=3")
  T.raises(function() return metrics.distance_transform_edt(a, {spacing = {1, 1}}) end,
    "metrics.distance_transform_edt: spacing has 2 values for a 3-d mask")
  T.raises(function() return metrics.distance_transform_edt(a, {spacing = {1, 0, 1}}) end,
    "metrics.distance_transform_edt: spacing[2] must be a positive finite number")
  T.raises(function() return metrics.dice(a, a, {num_classes = 1e9}) end, "num_classes must be between 1 and 65536")
  -- the native layer checks too, naming the caller
  T.raises(function() return medlua._metrics.surface(a:view(1, 1, 8, 8, 8), a:view(1, 1, 8, 8, 8), 2, 1,
    {kind = "surface_dice", tolerance = {-2}}, "my.metric") end, "my.metric: tolerance for class 1 must be a finite number >= 0")
  T.raises(function() return medlua._metrics.surface(a:view(1, 1, 8, 8, 8), b:view(1, 1, 8, 8, 7), 2, 1,
    {kind = "hausdorff"}, "my.metric") end, "my.metric: pred of shape [1, 1, 8, 8, 8] and gt of shape [1, 1, 8, 8, 7]")
end)

T.leak_check(true) -- every case must also free what it made
T.run()
