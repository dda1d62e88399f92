-- medlua.metrics: segmentation metrics with MONAI 1.6's definitions (DiceMetric / compute_dice,
-- MeanIoU / compute_iou, HausdorffDistanceMetric, SurfaceDiceMetric, SurfaceDistanceMetric) and an
-- exact Euclidean distance transform. The surface metrics run natively (modules/nn/ml_metrics.c).
--
--   local metrics = require "medlua.metrics"
--   metrics.dice(pred, gt, {num_classes = 4})                    -- [N, 3] (classes 1..3), NaN where gt is empty
--   metrics.hausdorff95(pred, gt, {spacing = {0.8, 0.8, 2.5}})   -- [N, K] in mm
--   metrics.surface_dice(pred, gt, {tolerance_mm = 2, spacing = vol.spacing})
--   local dm = metrics.DiceMetric{num_classes = 4}
--   for _, b in ipairs(batches) do dm:update(b.pred, b.gt) end
--   print(dm:aggregate():item())                                 -- mean over the non-NaN values
--
-- INPUT LAYOUT (pred and gt, each on its own; the rule is by rank, with spatial_dims = sd):
--   rank sd       [X, Y, Z]        one label map (batch of 1)
--   rank sd + 1   [N, X, Y, Z]     a batch of label maps
--   rank sd + 2   [N, C, X, Y, Z]  MONAI's layout: C == 1 a label map, C > 1 one-hot (channel k = class k)
-- sd = opts.spatial_dims, else the length of a flat opts.spacing list, else 3. So 2-D data needs
-- spatial_dims = 2 (or a 2-entry spacing); a 4-D tensor is otherwise read as [N, X, Y, Z] label maps.
-- Label maps may have any dtype; a voxel belongs to class k when its value equals k. One-hot channels
-- count their non-zero voxels (inputs are expected to be binary, as MONAI expects). A Volume may be
-- passed instead of a tensor: its data is used, and its spacing when opts.spacing is not given.
--
-- CLASSES: num_classes counts the background. Without it: the channel count of a one-hot input, else
-- (two label maps) max label + 1, at least 2. Results are float64 tensors [N, K], one column per
-- class from include_background and 0 or 1 up to num_classes - 1.
--   MONAI difference: with two label maps and no num_classes MONAI scores class 1 only; here every
--   class up to the largest label is scored (for binary masks both give the single foreground column).
--   include_background defaults to false for every metric here (MONAI: true for DiceMetric/MeanIoU).
--
-- EMPTY MASKS (exactly MONAI's values):
--   dice, iou:       gt empty -> NaN (ignore_empty=true); with ignore_empty=false: 1 if pred is also
--                    empty, else 0.
--   hausdorff95:     both empty -> NaN; one empty -> NaN (MONAI's torch.quantile of +inf distances).
--   hausdorff_distance (max, percentile=nil): both empty -> NaN; one empty -> +inf.
--   surface_dice:    both empty -> NaN; one empty -> 0.
--   average_surface_distance: both empty -> NaN; one empty -> +inf.
-- Aggregation (reduce / Metric:aggregate) skips NaN values, as MONAI's do_metric_reduction (inf counts).
local medlua = require "medlua"
local C = medlua._metrics

local M = {}
local NAN = 0 / 0

local function fail(op, fmt, ...)
  error(op .. ": " .. string.format(fmt, ...), 0)
end

local function check_opts(opts, op, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail(op, "options must be a table, got %s", type(opts)) end
  local ok = {}
  for _, k in ipairs(allowed) do ok[k] = true end
  for k in pairs(opts) do
    if not ok[k] then
      fail(op, "unknown option '%s' (expected one of: %s)", tostring(k), table.concat(allowed, ", "))
    end
  end
  return opts
end

local function is_volume(x)
  if type(x) ~= "userdata" or medlua.is_tensor(x) then return false end
  local mt = getmetatable(x)
  return type(mt) == "table" and (mt.__name == "Volume" or mt.__name == "medlua.Volume")
end

-- tensor (and the volume's spacing) of a tensor or Volume argument
local function unwrap(x, op, what)
  if medlua.is_tensor(x) then return x, nil end
  if is_volume(x) then return x.data, x.spacing end
  fail(op, "%s must be a tensor or a Volume, got %s", what, type(x))
end

local function shape_str(t) return "[" .. table.concat(t:size(), ", ") .. "]" end

local function spatial_dims(opts, op)
  local sd = opts.spatial_dims
  if sd ~= nil then
    if math.type(sd) ~= "integer" or sd < 1 or sd > 3 then fail(op, "spatial_dims must be 1, 2 or 3, got %s", tostring(sd)) end
    return sd
  end
  local sp = opts.spacing
  if type(sp) == "table" and #sp >= 1 and #sp <= 3 and type(sp[1]) == "number" then return #sp end
  return 3
end

-- [N, C, spatial...] view of a label map / batch / MONAI-layout tensor
local function layout(t, sd, op, what)
  local nd = t:dim()
  if nd == sd then return t:unsqueeze(0):unsqueeze(0) end
  if nd == sd + 1 then return t:unsqueeze(1) end
  if nd == sd + 2 then return t end
  local ex = ({"[X]", "[X, Y]", "[X, Y, Z]"})[sd]
  fail(op, "%s has shape %s; with spatial_dims=%d expected %s, [N, %s] label maps or [N, C, %s] (set spatial_dims "
    .. "or give a spacing with one value per spatial dim)", what, shape_str(t), sd, ex, ex:sub(2, -2), ex:sub(2, -2))
end

local function max_label(t, op)
  if t:numel() == 0 then return 0 end
  return C.max_label(t, op)
end

local function int_opt(v, op, name, lo)
  if math.type(v) ~= "integer" and not (type(v) == "number" and v == math.floor(v)) then
    fail(op, "%s must be an integer, got %s", name, tostring(v))
  end
  v = math.tointeger(v)
  if v < lo then fail(op, "%s must be >= %d, got %d", name, lo, v) end
  return v
end

-- pred, gt -> [N, C, ...] tensors, num_classes, first_class, spatial dims, volume spacing
local function prepare(pred, gt, opts, op)
  local pt, psp = unwrap(pred, op, "pred")
  local gtt, gsp = unwrap(gt, op, "gt")
  local sd = spatial_dims(opts, op)
  local p, g = layout(pt, sd, op, "pred"), layout(gtt, sd, op, "gt")
  local ps, gs = p:size(), g:size()
  local same = ps[1] == gs[1]
  for d = 3, #ps do same = same and ps[d] == gs[d] end
  if not same then
    fail(op, "pred of shape %s and gt of shape %s do not match (same batch size and spatial shape needed)",
      shape_str(pt), shape_str(gtt))
  end
  local cp, cg = ps[2], gs[2]
  local nc = opts.num_classes
  if nc ~= nil then
    nc = int_opt(nc, op, "num_classes", 1)
    if cp > 1 and cp ~= nc then fail(op, "pred is one-hot with %d channels but num_classes is %d", cp, nc) end
    if cg > 1 and cg ~= nc then fail(op, "gt is one-hot with %d channels but num_classes is %d", cg, nc) end
  elseif cp > 1 or cg > 1 then
    if cp > 1 and cg > 1 and cp ~= cg then
      fail(op, "pred has %d channels and gt has %d (one-hot inputs need the same number of classes)", cp, cg)
    end
    nc = cp > 1 and cp or cg
  else
    local mp, mg = max_label(p, op), max_label(g, op)
    local mx = (mp ~= mp or mg ~= mg) and mp + mg or math.max(mp, mg, 1)
    if mx ~= mx or mx > 65535 then
      fail(op, "cannot infer the number of classes from labels up to %s; pass num_classes", tostring(mx))
    end
    nc = math.floor(mx) + 1
  end
  local first = (opts.include_background == true) and 0 or 1
  if nc - first < 1 then fail(op, "no class to score: num_classes is %d and include_background is false", nc) end
  return p, g, nc, first, sd, gsp or psp
end

local function is_num(x) return type(x) == "number" and x == x end

-- spacing option -> flat list and per-item flag (nil: 1 mm)
local function resolve_spacing(sp, N, sd, op)
  if sp == nil then return nil, false end
  local function check(v, where)
    if not is_num(v) or v <= 0 or v == math.huge then
      fail(op, "spacing%s must be a positive finite number, got %s", where, tostring(v))
    end
    return v
  end
  if type(sp) == "number" then
    check(sp, "")
    local t = {}
    for i = 1, sd do t[i] = sp end
    return t, false
  end
  if type(sp) ~= "table" then
    fail(op, "spacing must be a number, a list of %d numbers or a list of %d such lists, got %s", sd, N, type(sp))
  end
  if type(sp[1]) == "table" then
    if #sp ~= N then fail(op, "spacing has %d lists for a batch of %d", #sp, N) end
    local flat = {}
    for b = 1, N do
      local s = sp[b]
      if type(s) ~= "table" then fail(op, "spacing[%d] must be a list, got %s", b, type(s)) end
      if #s == 1 then
        for _ = 1, sd do flat[#flat + 1] = check(s[1], string.format("[%d][1]", b)) end
      elseif #s == sd then
        for i = 1, sd do flat[#flat + 1] = check(s[i], string.format("[%d][%d]", b, i)) end
      else
        fail(op, "spacing[%d] has %d values, expected %d (one per spatial dim)", b, #s, sd)
      end
    end
    return flat, true
  end
  if #sp ~= sd then fail(op, "spacing has %d values, expected %d (one per spatial dim)", #sp, sd) end
  local t = {}
  for i = 1, sd do t[i] = check(sp[i], string.format("[%d]", i)) end
  return t, false
end

local function to_tensor(rows)
  return medlua.tensor(rows, {dtype = "float64"})
end

-- ------------------------------------------------------------------------ overlap metrics
local OVERLAP_OPTS = {"include_background", "num_classes", "ignore_empty", "spatial_dims"}

local function overlap(pred, gt, opts, op, score)
  opts = check_opts(opts, op, OVERLAP_OPTS)
  local p, g, nc, first = prepare(pred, gt, opts, op)
  local ignore_empty = opts.ignore_empty ~= false
  local c = C.counts(p, g, nc, first, op):tolist()
  local rows = {}
  for b = 1, #c do
    local r = {}
    for j = 1, #c[b] do
      local I, P, G = c[b][j][1], c[b][j][2], c[b][j][3]
      r[j] = score(I, P, G, ignore_empty)
    end
    rows[b] = r
  end
  return to_tensor(rows)
end

-- Dice per batch item and class (MONAI compute_dice): 2|P n G| / (|P| + |G|).
function M.dice(pred, gt, opts)
  return overlap(pred, gt, opts, "metrics.dice", function(I, P, G, ignore_empty)
    if G > 0 then return 2 * I / (G + P) end
    if ignore_empty then return NAN end
    return (G + P <= 0) and 1 or 0
  end)
end

-- IoU per batch item and class (MONAI compute_iou / MeanIoU): |P n G| / |P u G|.
function M.iou(pred, gt, opts)
  return overlap(pred, gt, opts, "metrics.iou", function(I, P, G, ignore_empty)
    local union = G + P - I
    if ignore_empty then
      if G > 0 then return I / union end
      return NAN
    end
    if union > 0 then return I / union end
    return 1
  end)
end

-- ------------------------------------------------------------------------ surface metrics
local function surface(pred, gt, opts, op, kind, extra)
  local p, g, nc, first, sd, vsp = prepare(pred, gt, opts, op)
  local sp = opts.spacing
  if sp == nil and vsp ~= nil and sd == 3 then sp = vsp end
  local flat, per_item = resolve_spacing(sp, p:size(0), sd, op)
  local o = {kind = kind, spacing = flat, spacing_per_item = per_item}
  for k, v in pairs(extra or {}) do o[k] = v end
  if kind == "surface_dice" then
    local tol, K = o.tolerance, nc - first
    if type(tol) == "number" then
      local t = {}
      for j = 1, K do t[j] = tol end
      tol = t
    elseif type(tol) ~= "table" then
      fail(op, "tolerance_mm is required: a number or a list of %d numbers (one per class), got %s", K, type(tol))
    end
    if #tol ~= K then
      fail(op, "tolerance_mm has %d values for %d classes (classes %d..%d)", #tol, K, first, nc - 1)
    end
    for j = 1, K do
      local v = tol[j]
      if not is_num(v) or v < 0 or v == math.huge then
        fail(op, "tolerance_mm[%d] must be a finite number >= 0, got %s", j, tostring(v))
      end
    end
    o.tolerance = tol
  end
  return C.surface(p, g, nc, first, o, op)
end

local HD_OPTS = {"include_background", "num_classes", "spacing", "percentile", "directed", "spatial_dims"}

local function check_percentile(v, op)
  if v == nil then return 0 end
  if not is_num(v) or v < 0 or v > 100 then fail(op, "percentile must be between 0 and 100, got %s", tostring(v)) end
  return v
end

-- Hausdorff distance in mm (MONAI compute_hausdorff_distance, euclidean): the max (or the percentile
-- when opts.percentile is given) of the surface distances in each direction, then the larger of the two
-- (directed=true: pred -> gt only). percentile 0 or nil = the maximum, as in MONAI.
function M.hausdorff_distance(pred, gt, opts)
  local op = "metrics.hausdorff_distance"
  opts = check_opts(opts, op, HD_OPTS)
  return surface(pred, gt, opts, op, "hausdorff",
    {percentile = check_percentile(opts.percentile, op), directed = opts.directed == true})
end

-- 95th percentile Hausdorff distance in mm (MONAI HausdorffDistanceMetric(percentile=95)).
function M.hausdorff95(pred, gt, opts)
  local op = "metrics.hausdorff95"
  opts = check_opts(opts, op, HD_OPTS)
  local pct = opts.percentile
  if pct == nil then pct = 95 end
  return surface(pred, gt, opts, op, "hausdorff", {percentile = check_percentile(pct, op), directed = opts.directed == true})
end

-- Normalized surface Dice (MONAI compute_surface_dice, use_subvoxels=false): the fraction of surface
-- voxels of both masks within tolerance_mm (per class: a number or one per scored class) of the other
-- surface. class_thresholds is accepted as MONAI's name for tolerance_mm.
function M.surface_dice(pred, gt, opts)
  local op = "metrics.surface_dice"
  opts = check_opts(opts, op, {"include_background", "num_classes", "spacing", "tolerance_mm", "class_thresholds",
    "spatial_dims"})
  local tol = opts.tolerance_mm
  if tol == nil then tol = opts.class_thresholds end
  return surface(pred, gt, opts, op, "surface_dice", {tolerance = tol})
end

-- Average surface distance in mm (MONAI compute_average_surface_distance): the mean of the pred -> gt
-- surface distances (symmetric=true: of both directions together).
function M.average_surface_distance(pred, gt, opts)
  local op = "metrics.average_surface_distance"
  opts = check_opts(opts, op, {"include_background", "num_classes", "spacing", "symmetric", "spatial_dims"})
  return surface(pred, gt, opts, op, "mean", {directed = opts.symmetric ~= true})
end

-- ------------------------------------------------------------------------ distance transform
-- scipy.ndimage.distance_transform_edt(mask, sampling=spacing): the exact Euclidean distance (mm) of
-- every non-zero voxel to the nearest zero voxel, 0 on zero voxels; float64. No zero voxel at all: +inf.
function M.distance_transform_edt(mask, opts)
  local op = "metrics.distance_transform_edt"
  opts = check_opts(opts, op, {"spacing"})
  local t, vsp = unwrap(mask, op, "mask")
  local sp = opts.spacing
  if sp == nil and vsp ~= nil and t:dim() == 3 then sp = vsp end
  if type(sp) == "number" then
    local s = {}
    for i = 1, t:dim() do s[i] = sp end
    sp = s
  elseif sp ~= nil and type(sp) ~= "table" then
    fail(op, "spacing must be a number or a list of %d numbers, got %s", t:dim(), type(sp))
  end
  if sp then
    for i = 1, #sp do
      if not is_num(sp[i]) or sp[i] <= 0 or sp[i] == math.huge then
        fail(op, "spacing[%d] must be a positive finite number, got %s", i, tostring(sp[i]))
      end
    end
  end
  return C.edt(t, sp, op)
end

-- Surface voxels of a mask (MONAI get_mask_edges without spacing): foreground voxels with a background
-- or out-of-image face neighbour; a bool tensor of the mask's shape.
function M.surface_voxels(mask)
  local op = "metrics.surface_voxels"
  local t = unwrap(mask, op, "mask")
  return C.edges(t, op)
end

-- ------------------------------------------------------------------------ reduction
local REDUCTIONS = {none = true, mean = true, sum = true, mean_batch = true, sum_batch = true, mean_channel = true,
  sum_channel = true}

-- MONAI do_metric_reduction over a [N, K] tensor of scores, skipping NaN: returns the reduced tensor
-- (float64; 0-d for "mean"/"sum") and the count of non-NaN values behind each entry.
--   mean: mean over classes per item, then over items that had any value; sum: total;
--   mean_batch / sum_batch: per class over items ([K]); mean_channel / sum_channel: per item ([N]);
--   none: f itself and the 0/1 not-NaN mask.
function M.reduce(f, reduction)
  local op = "metrics.reduce"
  reduction = reduction or "mean"
  if not REDUCTIONS[reduction] then
    fail(op, "unsupported reduction '%s' (none, mean, sum, mean_batch, sum_batch, mean_channel, sum_channel)",
      tostring(reduction))
  end
  if not medlua.is_tensor(f) or f:dim() ~= 2 then
    fail(op, "expected a [N, K] tensor of scores, got %s", medlua.is_tensor(f) and shape_str(f) or type(f))
  end
  local v = f:double():tolist()
  local N, K = f:size(0), f:size(1)
  local function nn(x) return x == x end
  if reduction == "none" then
    local m = {}
    for b = 1, N do
      m[b] = {}
      for j = 1, K do m[b][j] = nn(v[b][j]) and 1 or 0 end
    end
    return f:double(), medlua.tensor(m, {dtype = "float64"}):reshape(N, K)
  end
  if reduction == "mean" then
    local tot, items = 0, 0
    for b = 1, N do
      local s, n = 0, 0
      for j = 1, K do if nn(v[b][j]) then s, n = s + v[b][j], n + 1 end end
      if n > 0 then tot, items = tot + s / n, items + 1 end
    end
    return medlua.tensor(items > 0 and tot / items or 0, {dtype = "float64"}), medlua.tensor(items, {dtype = "float64"})
  end
  if reduction == "sum" then
    local s, n = 0, 0
    for b = 1, N do for j = 1, K do if nn(v[b][j]) then s, n = s + v[b][j], n + 1 end end end
    return medlua.tensor(s, {dtype = "float64"}), medlua.tensor(n, {dtype = "float64"})
  end
  local over_batch = reduction == "mean_batch" or reduction == "sum_batch"
  local mean = reduction == "mean_batch" or reduction == "mean_channel"
  local out, cnt = {}, {}
  local n_out, n_in = over_batch and K or N, over_batch and N or K
  for i = 1, n_out do
    local s, n = 0, 0
    for j = 1, n_in do
      local x = over_batch and v[j][i] or v[i][j]
      if nn(x) then s, n = s + x, n + 1 end
    end
    out[i] = mean and (n > 0 and s / n or 0) or s
    cnt[i] = n
  end
  local function t1(x) return n_out > 0 and medlua.tensor(x, {dtype = "float64"}) or medlua.zeros(0, {dtype = "float64"}) end
  return t1(out), t1(cnt)
end

-- ------------------------------------------------------------------------ cumulative metrics
-- Objects that accumulate per-item scores over batches (MONAI Cumulative*Metric):
--   m:update(pred, gt[, call_opts]) -> this batch's [N, K] scores (also m(pred, gt))
--   m:aggregate([reduction]) -> reduced tensor (and not-NaN counts when get_not_nans=true)
--   m:get_buffer() -> all scores so far [total N, K];  m:reset()
-- Constructor options: the metric's options plus reduction (default "mean") and get_not_nans.
local Metric = {}
Metric.__index = Metric
Metric.__call = function(self, ...) return self:update(...) end
Metric.__tostring = function(self) return self.name .. "(" .. #self.rows .. " items)" end

local function make_metric(name, fn, allowed)
  return function(opts)
    local op = "metrics." .. name
    opts = check_opts(opts, op, allowed)
    local mopts = {}
    for k, v in pairs(opts) do if k ~= "reduction" and k ~= "get_not_nans" then mopts[k] = v end end
    local reduction = opts.reduction or "mean"
    if not REDUCTIONS[reduction] then fail(op, "unsupported reduction '%s'", tostring(reduction)) end
    return setmetatable({name = name, fn = fn, opts = mopts, reduction = reduction,
      get_not_nans = opts.get_not_nans == true, rows = {}, ncols = nil}, Metric)
  end
end

function Metric:update(pred, gt, call_opts)
  local o = self.opts
  if call_opts ~= nil then
    if type(call_opts) ~= "table" then
      fail("metrics." .. self.name .. ":update", "third argument must be an options table, got %s", type(call_opts))
    end
    o = {}
    for k, v in pairs(self.opts) do o[k] = v end
    for k, v in pairs(call_opts) do o[k] = v end
  end
  local f = self.fn(pred, gt, o)
  local K = f:size(1)
  if self.ncols and K ~= self.ncols then
    fail("metrics." .. self.name .. ":update", "this batch has %d classes but earlier ones had %d (pass num_classes)",
      K, self.ncols)
  end
  self.ncols = K
  for _, r in ipairs(f:tolist()) do self.rows[#self.rows + 1] = r end
  return f
end

function Metric:get_buffer()
  if #self.rows == 0 then return medlua.zeros({0, self.ncols or 0}, {dtype = "float64"}) end
  return medlua.tensor(self.rows, {dtype = "float64"})
end

function Metric:aggregate(reduction)
  if #self.rows == 0 then fail("metrics." .. self.name .. ":aggregate", "no data: call update() first") end
  local f, n = M.reduce(self:get_buffer(), reduction or self.reduction)
  if self.get_not_nans then return f, n end
  return f
end

function Metric:reset()
  self.rows, self.ncols = {}, nil
  return self
end

M.DiceMetric = make_metric("DiceMetric", M.dice, {"include_background", "num_classes", "ignore_empty", "spatial_dims",
  "reduction", "get_not_nans"})
M.MeanIoU = make_metric("MeanIoU", M.iou, {"include_background", "num_classes", "ignore_empty", "spatial_dims",
  "reduction", "get_not_nans"})
M.HausdorffDistanceMetric = make_metric("HausdorffDistanceMetric", M.hausdorff_distance, {"include_background",
  "num_classes", "spacing", "percentile", "directed", "spatial_dims", "reduction", "get_not_nans"})
M.SurfaceDiceMetric = make_metric("SurfaceDiceMetric", M.surface_dice, {"include_background", "num_classes", "spacing",
  "tolerance_mm", "class_thresholds", "spatial_dims", "reduction", "get_not_nans"})
M.SurfaceDistanceMetric = make_metric("SurfaceDistanceMetric", M.average_surface_distance, {"include_background",
  "num_classes", "spacing", "symmetric", "spatial_dims", "reduction", "get_not_nans"})

return M
