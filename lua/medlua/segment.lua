-- medlua.segment: the pieces recipes/train_unet.lua and recipes/infer_unet.lua share: cases (image +
-- label files checked against each other), preprocessing to the training grid, the model from its
-- config, whole-volume prediction back in the input's own geometry, and per-class evaluation.
--
--   local seg = require "medlua.segment"
--   local case = seg.load_case({image = "ct.nii.gz", label = "seg.nii.gz"}, lm)   -- Volumes, label remapped
--   local x, y = seg.preprocess(case.image, cfg), seg.preprocess(case.label, cfg, true)
--   local net = seg.build_model(cfg)
--   local pred = seg.predict(net, case.image, cfg)     -- uint8 Volume of classes, case.image's grid
--   local rows = seg.evaluate(pred, case.label, lm)     -- {{name=, dice=, hd95=, ...}, ...}
--
-- cfg (written to config.json next to the checkpoints, read back by infer_unet):
--   {spacing = {2, 2, 2}, a_min = -1000, a_max = 1500, roi = {64, 64, 64}, labels = <labelmap json>,
--    model = {channels = {...}, strides = {...}, num_res_units = 2, norm = "batch", ...},
--    sw_batch_size = 2, overlap = 0.25, blend = "gaussian"}
local medlua = require "medlua"
local nn = require "medlua.nn"
local volume = require "medlua.volume"
local labelmap = require "medlua.labelmap"
local metrics = require "medlua.metrics"
local inferers = require "medlua.inferers"
local json = require "medlua.json"
local path = require "medlua.path"
local F = medlua.F

local M = {}

local function fail(fmt, ...) error(string.format(fmt, ...), 0) end

--- seg.root(): the repository (or install) folder, found from this file's location
M.root = path.root
local exists = path.exists

--- seg.find(path): path as given when it exists, else relative to the repository root
function M.find(path)
  if path == nil or path == "" then return path end
  if exists(path) or path:sub(1, 1) == "/" then return path end
  local alt = M.root() .. "/" .. path
  if exists(alt) then return alt end
  return path
end


local basename = path.case_name
M.case_name = basename

local function max_abs_diff(a, b)
  local m = 0
  for i = 1, 4 do for j = 1, 4 do m = math.max(m, math.abs(a[i][j] - b[i][j])) end end
  return m
end

local function same_shape(a, b)
  for i = 1, 3 do if a[i] ~= b[i] then return false end end
  return true
end

local function geom_str(v)
  local sp = v.spacing
  local o = v.origin
  return string.format("shape %s, spacing (%.4g, %.4g, %.4g) mm, origin (%.4g, %.4g, %.4g), %s",
    table.concat(v.shape, "x"), sp[1], sp[2], sp[3], o[1], o[2], o[3], v.axcodes)
end

--- seg.load_image(path) -> Volume (float32), with a clear error naming the file
function M.load_image(path)
  if not exists(path) then fail("%s: no such file or folder", path) end
  local ok, v = pcall(volume.load, path)
  if not ok then fail("%s: cannot read the image: %s", path, tostring(v)) end
  if v.ndim ~= 3 then fail("%s: expected a 3-D image, got shape %s", path, table.concat(v.shape, "x")) end
  if v.dtype ~= "float32" then v = v:with_data(v.data:float()) end
  return v
end

--- seg.load_label(path, image, lm) -> uint8 class Volume on the image's voxel grid
--- The label must describe the same voxels as the image (same grid in world space, possibly stored in
--- another axis order, e.g. LAS vs LPS); anything else is an error naming both files.
function M.load_label(path, image, lm, image_path)
  if not exists(path) then fail("%s: label file not found", path) end
  local ok, v = pcall(volume.load, path)
  if not ok then fail("%s: cannot read the label: %s", path, tostring(v)) end
  if v.ndim ~= 3 then fail("%s: expected a 3-D label map, got shape %s", path, table.concat(v.shape, "x")) end
  local cls = labelmap.remap(v, lm, path)
  local ir, lr = image:to_ras(), cls:to_ras()
  local d = max_abs_diff(ir.affine:tolist(), lr.affine:tolist())
  if not same_shape(ir.shape, lr.shape) or d > 1e-2 then
    fail("%s: the label's grid (%s) does not match the image %s (%s); resample the label to the image first",
      path, geom_str(v), image_path or "", geom_str(image))
  end
  if same_shape(cls.shape, image.shape) and max_abs_diff(cls.affine:tolist(), image.affine:tolist()) < 1e-2 then
    return cls
  end
  -- the same voxels in another axis order: an exact permutation/flip
  local out = cls:resample_like(image, {mode = "nearest"})
  out.is_label = true
  return out
end

--- seg.load_case({image =, label =}, lm) -> {name, image = Volume, label = Volume|nil, image_path, label_path}
function M.load_case(item, lm)
  local ip = M.find(item.image)
  local img = M.load_image(ip)
  local c = {name = item.name or basename(ip), image = img, image_path = ip}
  if item.label then
    local lp = M.find(item.label)
    c.label = M.load_label(lp, img, lm, ip)
    c.label_path = lp
  end
  return c
end

--- seg.preprocess(vol, cfg, is_label) -> Volume in RAS at cfg.spacing (labels: nearest; images: linear,
--- then intensities scaled from [a_min, a_max] to [0, 1] and clipped, as ScaleIntensityRanged)
function M.preprocess(v, cfg, is_label)
  -- border padding, as MONAI's Spacingd: a constant 0 would be 0 HU (soft tissue) at the grid's far edge
  local r = v:to_ras():resample{spacing = cfg.spacing, mode = is_label and "nearest" or "linear", padding_mode = "border"}
  if is_label then
    r.is_label = true
    return r
  end
  local t = ((r.data - cfg.a_min) / (cfg.a_max - cfg.a_min)):clamp(0, 1)
  return r:with_data(t)
end

--- seg.model_config(opts) -> the model part of cfg (MONAI UNet options)
function M.build_model(cfg)
  local m = cfg.model
  return nn.UNet{spatial_dims = 3, in_channels = 1, out_channels = cfg.labels.num_classes or #cfg.labels.names,
    channels = m.channels, strides = m.strides, num_res_units = m.num_res_units, norm = m.norm,
    act = m.act, dropout = m.dropout}
end

--- seg.divisor(cfg): the product of the strides (spatial sizes fed to the UNet must be multiples)
function M.divisor(cfg)
  local f = 1
  for _, s in ipairs(cfg.model.strides) do f = f * s end
  return f
end

--- seg.check_roi(cfg): every ROI edge a multiple of the stride product
function M.check_roi(cfg)
  local f = M.divisor(cfg)
  for i, r in ipairs(cfg.roi) do
    if r % f ~= 0 then fail("roi[%d] = %d must be a multiple of %d (the product of the UNet strides)", i, r, f) end
  end
end

--- seg.predict_probs(net, x_ras_vol, cfg, opts) -> probabilities [K, X, Y, Z] on the preprocessed grid
function M.predict_probs(net, xv, cfg, opts)
  opts = opts or {}
  local x = xv.data:view(1, 1, table.unpack(xv.shape))
  local was_training = net.training
  net:eval()
  local p = inferers.sliding_window_inference(x, cfg.roi, cfg.sw_batch_size or 2, net, {
    overlap = cfg.overlap or 0.25, mode = cfg.blend or "gaussian", activation = "softmax",
    -- a volume thinner than the ROI (a 20-slice series) is padded with its edge slices, not with a
    -- constant: zero-padding shows the network an air slab it never saw in training
    padding_mode = cfg.padding_mode or "replicate",
    tta_flips = opts.tta and true or false, progress = opts.progress})
  if was_training then net:train() end
  return p:select(0, 0)
end

--- seg.predict(net, image (original Volume), cfg, opts) -> uint8 class Volume on the image's own grid,
--- and the probabilities Volume list (per class) on that grid when opts.keep_probs
--- The probabilities are resampled back (linear) to the input's voxels and the argmax taken there, so the
--- label map overlays the input exactly (same shape, affine and axis order as the file that was read).
function M.predict(net, image, cfg, opts)
  opts = opts or {}
  local xv = M.preprocess(image, cfg, false)
  local probs = M.predict_probs(net, xv, cfg, opts)
  local K = probs:size(0)
  local chans = {}
  for k = 0, K - 1 do
    local pv = xv:with_data(probs:select(0, k):contiguous())
    chans[k + 1] = pv:resample_like(image, {mode = "linear"}).data
  end
  local st = medlua.stack(chans, 0)
  local lab = st:argmax(0):byte()
  local out = image:with_data(lab)
  out.is_label = true
  out = M.postprocess(out, opts.postprocess == nil and cfg.postprocess or opts.postprocess)
  return out, opts.keep_probs and st or nil
end

--- seg.postprocess(pred Volume, how) -> Volume
---   "largest_foreground": keep the largest 26-connected component of all foreground classes together
---     (structures that touch, like vertebrae and the spinal cord in its canal, stay; islands elsewhere,
---     like a humerus taken for a vertebra, go); "largest_per_class": the largest component of each class
---     (MONAI's KeepLargestConnectedComponent); "none" (or nil): unchanged.
function M.postprocess(pred, how)
  if how == nil or how == "none" then return pred end
  if how == "largest_per_class" then
    local out = pred:largest_component(26)
    out.is_label = true
    return out
  end
  if how ~= "largest_foreground" then
    fail("postprocess must be none, largest_foreground or largest_per_class, got %s", tostring(how))
  end
  local fg = pred:with_data(pred.data:gt(0):byte())
  local keep = fg:largest_component(26).data
  local out = pred:with_data(pred.data * keep)
  out.is_label = true
  return out
end

--- seg.evaluate(pred Volume, gt Volume, lm, opts) -> rows {name, index, dice, hd95, gt_ml, pred_ml}
--- Dice NaN when the class is absent from the ground truth (MONAI); HD95 in mm with the gt's spacing.
function M.evaluate(pred, gt, lm, opts)
  opts = opts or {}
  local K = lm.num_classes
  local sp = gt.spacing
  local dice = metrics.dice(pred.data, gt.data, {num_classes = K})
  local hd = opts.hd95 == false and nil or metrics.hausdorff95(pred.data, gt.data, {num_classes = K, spacing = sp})
  local vox_ml = sp[1] * sp[2] * sp[3] / 1000
  local cg, cp = labelmap.count(gt, lm), labelmap.count(pred, lm)
  local rows = {}
  for k = 1, K - 1 do
    rows[k] = {name = lm.names[k + 1], index = k, dice = dice:get(0, k - 1), hd95 = hd and hd:get(0, k - 1) or nil,
      gt_ml = cg[k + 1] * vox_ml, pred_ml = cp[k + 1] * vox_ml}
  end
  return rows
end

--- seg.mean(rows, field): mean over the non-NaN values
function M.mean(rows, field)
  local s, n = 0, 0
  for _, r in ipairs(rows) do
    local v = r[field]
    if v and v == v and v ~= math.huge then s = s + v; n = n + 1 end
  end
  return n > 0 and s / n or 0 / 0
end

--- seg.print_table(rows, title)
function M.format_table(rows, title)
  local lines = {title or "per-class results", string.format("  %-16s %8s %10s %10s %10s", "class", "Dice", "HD95 mm",
    "GT mL", "pred mL")}
  for _, r in ipairs(rows) do
    lines[#lines + 1] = string.format("  %-16s %8.4f %10.2f %10.1f %10.1f", r.name, r.dice, r.hd95 or 0 / 0, r.gt_ml,
      r.pred_ml)
  end
  lines[#lines + 1] = string.format("  %-16s %8.4f %10.2f", "mean", M.mean(rows, "dice"), M.mean(rows, "hd95"))
  return table.concat(lines, "\n")
end

--- seg.save_config(path, cfg) / seg.load_config(path) (labels restored as a label map)
function M.save_config(path, cfg)
  local c = {}
  for k, v in pairs(cfg) do c[k] = v end
  c.labels = cfg.labels.to_json_table and cfg.labels:to_json_table() or cfg.labels
  json.write(path, c)
end

function M.load_config(path)
  if not exists(path) then fail("%s: model config not found (written by train_unet.lua next to its checkpoints)", path) end
  local ok, c = pcall(json.read, path)
  if not ok then fail("%s: cannot read the model config: %s", path, tostring(c)) end
  for _, k in ipairs{"spacing", "a_min", "a_max", "roi", "labels", "model"} do
    if c[k] == nil then fail("%s: model config lacks '%s'", path, k) end
  end
  local L = c.labels
  if L.spec == "identity" then
    c.labels = labelmap.identity(#L.names, L.names)
  else
    local lm = setmetatable({names = L.names, classes = {}, spec = L.spec, num_classes = #L.names}, labelmap.LabelMapClass)
    for _, cl in ipairs(L.classes) do lm.classes[#lm.classes + 1] = {name = cl.name, index = cl.index, ranges = cl.values} end
    c.labels = lm
  end
  return c
end

--- seg.load_weights(net, path): weights of a train_unet checkpoint, with a clear error when the
--- checkpoint was made for another architecture
function M.load_weights(net, path)
  if not exists(path) then fail("%s: checkpoint not found", path) end
  local ok, tensors = pcall(medlua.load, path)
  if not ok then fail("%s: cannot read the checkpoint: %s", path, tostring(tensors)) end
  local sd = {}
  for k, t in pairs(tensors) do if k:sub(1, 10) ~= "optimizer." then sd[k] = t end end
  local own = net:state_dict()
  local missing, extra, bad = {}, {}, {}
  for k, t in pairs(own) do
    local c = sd[k]
    if not c then missing[#missing + 1] = k
    else
      local a, b = table.concat(t:size(), "x"), table.concat(c:size(), "x")
      if a ~= b then bad[#bad + 1] = string.format("%s: model %s, checkpoint %s", k, a, b) end
    end
  end
  for k in pairs(sd) do if not own[k] then extra[#extra + 1] = k end end
  if #missing + #extra + #bad > 0 then
    table.sort(missing); table.sort(extra); table.sort(bad)
    local parts = {}
    if #bad > 0 then parts[#parts + 1] = "shape differs for " .. table.concat(bad, "; ", 1, math.min(#bad, 3)) end
    if #missing > 0 then parts[#parts + 1] = #missing .. " weights missing (e.g. " .. missing[1] .. ")" end
    if #extra > 0 then parts[#parts + 1] = #extra .. " unexpected weights (e.g. " .. extra[1] .. ")" end
    fail("%s: checkpoint does not fit this model (another architecture or class count?): %s", path,
      table.concat(parts, "; "))
  end
  net:load_state_dict(sd, true)
end

return M
