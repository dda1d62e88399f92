-- medlua.inferers: sliding-window inference over whole volumes, as MONAI's sliding_window_inference.
--
--   local inferers = require "medlua.inferers"
--   local logits = inferers.sliding_window_inference(x, {96, 96, 96}, 4, net, {overlap = 0.25, mode = "gaussian"})
--   -- x: [B, C, X, Y, Z] (or [B, C, H, W]); the result has the predictor's channels and x's spatial size
--   local probs = inferers.sliding_window_inference(x, roi, 4, net, {tta_flips = true, activation = "softmax"})
--
-- Semantics (MONAI 1.x): an image smaller than the ROI is padded symmetrically (padding_mode "constant"
-- with cval, or "replicate"/"reflect") and the result cropped back; windows start every
-- int(roi * (1 - overlap)) voxels (the ROI itself where it equals the image), the last window of each
-- axis is shifted back to end at the border; windows are batched sw_batch_size at a time; each window's
-- output is weighted by an importance map -- "constant" (ones) or "gaussian" (a separable Gaussian
-- centred on the window with sigma = sigma_scale * roi, clamped below at max(min, 1e-3)) -- and the sum
-- is divided by the summed weights. The windows of all batch items form one list (item-major) cut into
-- predictor batches, so one batch may hold windows of two items (as MONAI). The result is float64 for a
-- float64 input, else float32 (MONAI keeps the input's dtype). A roi_size value <= 0 takes the image's
-- size on that dim (MONAI's fall_back_tuple). The predictor must keep the ROI's spatial size (MONAI's
-- zoomed outputs and tuple/dict outputs are not supported).
-- Checked against MONAI 1.6.1 by tests/lua/test_inferers.lua (golden file tests/ref/inferers_ref.safetensors).
--
-- Options: overlap (0.25; or one per spatial dim), mode ("constant"), sigma_scale (0.125; or one per spatial
-- dim), padding_mode ("constant"), cval (0),
-- activation (nil | "softmax" | "sigmoid": applied to each window's output before blending, which is what
-- test-time augmentation averages), tta_flips (false | true = flip every spatial axis | a list of lists of
-- spatial axes (0-based), e.g. {{0}, {1}, {0, 1}}): the prediction is the mean over the identity and the
-- flipped inputs (flipped back), progress (false | true | a medlua.progress-style callback(done, total)).
-- Runs without autograd. The predictor is any callable: a medlua.nn Module or a function(x) -> y.
local medlua = require "medlua"
local F = medlua.F

local M = {}

-- raise an error located at the first caller outside this file
local function fail(fmt, ...)
  local here, level = debug.getinfo(1, "S").source, 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info or info.source ~= here then break end
    level = level + 1
  end
  error("sliding_window_inference: " .. string.format(fmt, ...), level)
end

local function shape_str(s) return "[" .. table.concat(s, ", ") .. "]" end

-- flip a tensor along dims (0-based, absolute)
function M.flip(x, dims)
  local y = x
  for _, d in ipairs(dims) do
    local n = y:size(d)
    if n > 1 then y = y:index_select(d, medlua.arange(n - 1, -1, -1):long()) end
  end
  return y
end

-- MONAI's scan interval per spatial dim (overlap: a number or one per spatial dim)
local function scan_interval(img, roi, overlap)
  local out = {}
  for i = 1, #img do
    if roi[i] == img[i] then
      out[i] = roi[i]
    else
      local ov = type(overlap) == "table" and overlap[i] or overlap
      local iv = math.floor(roi[i] * (1 - ov))
      out[i] = iv > 0 and iv or 1
    end
  end
  return out
end

--- inferers.window_starts(image_size, roi, overlap) -> {{s1, s2, ...}, ...}: the 0-based start of every
--- window (MONAI's _get_scan_interval + dense_patch_slices on an image at least as large as the ROI),
--- the last spatial dim varying fastest ("ij" order)
function M.window_starts(img, roi, overlap)
  local iv = scan_interval(img, roi, overlap)
  local per_dim = {}
  for i = 1, #img do
    local n = 1
    local num = math.ceil(img[i] / iv[i])
    for d = 0, num - 1 do
      if d * iv[i] + roi[i] >= img[i] then n = d + 1; break end
    end
    local starts = {}
    for k = 0, n - 1 do
      local s = k * iv[i]
      s = s - math.max(s + roi[i] - img[i], 0)
      starts[#starts + 1] = s
    end
    per_dim[i] = starts
  end
  local out = {}
  local function rec(d, cur)
    if d > #img then
      local c = {}
      for i = 1, #cur do c[i] = cur[i] end
      out[#out + 1] = c
      return
    end
    for _, s in ipairs(per_dim[d]) do
      cur[d] = s
      rec(d + 1, cur)
    end
    cur[d] = nil
  end
  rec(1, {})
  return out
end

--- inferers.importance_map(roi, mode, sigma_scale) -> float32 tensor of shape roi
function M.importance_map(roi, mode, sigma_scale)
  mode = mode or "constant"
  if mode == "constant" then return medlua.ones(roi) end
  if mode ~= "gaussian" then fail("mode must be \"constant\" or \"gaussian\", got %s", tostring(mode)) end
  local ss = sigma_scale or 0.125
  local w
  for i, n in ipairs(roi) do
    local s = (type(ss) == "table" and ss[i] or ss) * n
    local x = medlua.arange(n):double() - (n - 1) / 2
    local g = (x * x / (-2 * s * s)):exp()
    local shape = {}
    for j = 1, #roi do shape[j] = (j == i) and n or 1 end
    g = g:view(shape)
    w = w and (w * g) or g
  end
  local mn = math.max(w:amin():item(), 1e-3)
  return w:clamp(mn, nil):float()
end

-- roi_size: an integer or a list of one integer per spatial dim; as MONAI's fall_back_tuple, a value
-- <= 0 takes the image's size on that dim
local function as_roi(roi, x)
  local nsp = x:dim() - 2
  if math.type(roi) == "integer" then
    local r = {}
    for i = 1, nsp do r[i] = roi end
    roi = r
  end
  if type(roi) ~= "table" or #roi ~= nsp then
    local got = type(roi) == "table" and string.format("%d values", #roi) or tostring(roi)
    fail("roi_size must be an integer or a list of %d integers for input %s (%d spatial dims), got %s", nsp,
      shape_str(x:size()), nsp, got)
  end
  local r = {}
  for i = 1, nsp do
    local v = roi[i]
    if math.type(v) ~= "integer" then fail("roi_size[%d] must be an integer, got %s", i, tostring(v)) end
    r[i] = v > 0 and v or x:size(i + 1)
  end
  return r
end

local function call(pred, x)
  if type(pred) == "function" then return pred(x) end
  if pred.forward then return pred:forward(x) end
  return pred(x)
end

local function activate(y, act)
  if act == nil then return y end
  if act == "softmax" then return F.softmax(y, 1) end
  if act == "sigmoid" then return y:sigmoid() end
  fail("activation must be nil, \"softmax\" or \"sigmoid\", got %s", tostring(act))
end

-- divide out by the summed window weights (the same for every batch item), a slab of the first spatial
-- dim at a time: the sums live in one slab-sized buffer instead of a volume-sized map (MONAI's count
-- map), which saves that memory and its first-touch cost; each voxel's weights are added in window
-- order, so the sums are the same numbers
local function normalize(out, starts, roi, wexp, psz, dtype)
  local nsp = #psz
  local C = math.min(psz[1], roi[1])
  local bsz = {1, 1, C}
  for i = 2, nsp do bsz[i + 2] = psz[i] end
  local buf = medlua.empty(bsz, {dtype = dtype})
  for a = 0, psz[1] - 1, C do
    local len = math.min(C, psz[1] - a)
    local cb = buf:narrow(2, 0, len)
    cb:zero_()
    for _, st in ipairs(starts) do
      local lo, hi = math.max(st[1], a), math.min(st[1] + roi[1], a + len)
      if lo < hi then
        local cv = cb:narrow(2, lo - a, hi - lo)
        for i = 2, nsp do cv = cv:narrow(i + 1, st[i], roi[i]) end
        cv:add_(wexp:narrow(2, lo - st[1], hi - lo))
      end
    end
    out:narrow(2, a, len):div_(cb)
  end
end

-- one pass (no TTA): blend the windows of x. As MONAI, the windows of all batch items form one list
-- (item-major) that is cut into predictor batches of sw_batch_size, so a batch may hold windows of two
-- items; the output and the summed weights are in the compute dtype (float64 for float64 input, else
-- float32; MONAI keeps the input's dtype).
local function one_pass(x, roi, sw, pred, o, wmap, report)
  local sp = x:size()
  local nsp = #sp - 2
  local B = sp[1]
  local img = {}
  for i = 1, nsp do img[i] = sp[i + 2] end
  -- pad to at least the ROI (symmetric, MONAI)
  local pads, padded = {}, false
  for i = nsp, 1, -1 do
    local diff = math.max(roi[i] - img[i], 0)
    local half = diff // 2
    pads[#pads + 1] = half
    pads[#pads + 1] = diff - half
    if diff > 0 then padded = true end
  end
  local xp = x
  if padded then
    local pm = o.padding_mode or "constant"
    xp = F.pad(x, pads, {mode = pm, value = o.cval or 0})
  end
  local psz = {}
  for i = 1, nsp do psz[i] = xp:size(i + 1) end
  local starts = M.window_starts(psz, roi, o.overlap or 0.25)
  local dtype = (x.dtype == "float64") and "float64" or "float32"
  local wexp = wmap:view(1, 1, table.unpack(roi)):to(dtype)
  local nwin = #starts
  local total = nwin * B
  -- window g (0-based, item-major) -> batch item, start
  local function window(g) return g // nwin, starts[g % nwin + 1] end
  local out
  local g = 0
  while g < total do
    local n = math.min(sw, total - g)
    local parts = {}
    for j = 0, n - 1 do
      local b, st = window(g + j)
      local v = xp:narrow(0, b, 1)
      for i = 1, nsp do v = v:narrow(i + 1, st[i], roi[i]) end
      parts[#parts + 1] = v
    end
    local batch = (n == 1) and parts[1]:contiguous() or medlua.cat(parts, 0)
    parts = nil
    local y = call(pred, batch)
    if not medlua.is_tensor(y) then fail("the predictor must return a tensor, got %s", type(y)) end
    local ys = y:size()
    if #ys ~= nsp + 2 or ys[1] ~= n then
      fail("the predictor returned %s for a window batch %s (expected [%d, C, %s])", shape_str(ys),
        shape_str(batch:size()), n, table.concat(roi, ", "))
    end
    for i = 1, nsp do
      if ys[i + 2] ~= roi[i] then
        fail("the predictor returned %s for windows %s: its spatial size must equal the ROI", shape_str(ys),
          shape_str(batch:size()))
      end
    end
    batch = nil
    -- own: y is a tensor made here (activation, cast), not the predictor's, so it may be scaled in place
    local own = o.activation ~= nil
    y = activate(y, o.activation)
    if not out then
      local osz = {B, ys[2]}
      for i = 1, nsp do osz[i + 2] = psz[i] end
      out = medlua.zeros(osz, {dtype = dtype})
    elseif ys[2] ~= out:size(1) then
      fail("the predictor returned %d channels for one window batch and %d for another", ys[2], out:size(1))
    end
    if y.dtype ~= dtype then y, own = y:to(dtype), true end
    if own then y:mul_(wexp) else y = y * wexp end
    for j = 0, n - 1 do
      local b, st = window(g + j)
      local ov = out:narrow(0, b, 1)
      for i = 1, nsp do ov = ov:narrow(i + 1, st[i], roi[i]) end
      ov:add_(y:narrow(0, j, 1))
    end
    y = nil
    g = g + n
    if report then report(n) end
  end
  normalize(out, starts, roi, wexp, psz, dtype)
  if padded then
    for i = 1, nsp do
      local lo = pads[2 * (nsp - i) + 1]
      out = out:narrow(i + 1, lo, img[i])
    end
    out = out:contiguous()
  end
  return out, total
end

--- inferers.sliding_window_inference(inputs, roi_size, sw_batch_size, predictor, opts) -> tensor
function M.sliding_window_inference(x, roi_size, sw_batch_size, predictor, opts)
  local o = opts or {}
  if type(o) ~= "table" then fail("options must be a table") end
  local allowed = {overlap = 1, mode = 1, sigma_scale = 1, padding_mode = 1, cval = 1, activation = 1, tta_flips = 1,
    progress = 1}
  for k in pairs(o) do if not allowed[k] then fail("unknown option '%s'", tostring(k)) end end
  if not medlua.is_tensor(x) then fail("inputs must be a tensor [B, C, spatial...], got %s", type(x)) end
  local nd = x:dim()
  if nd < 3 or nd > 5 then
    fail("inputs must be [B, C, spatial...] with 1-3 spatial dims, got %s", shape_str(x:size()))
  end
  local nsp = nd - 2
  local roi = as_roi(roi_size, x)
  sw_batch_size = sw_batch_size or 1
  if math.type(sw_batch_size) ~= "integer" or sw_batch_size < 1 then fail("sw_batch_size must be an integer >= 1") end
  local ov = o.overlap or 0.25
  if type(ov) == "table" then
    if #ov ~= nsp then fail("overlap must be a number or a list of %d numbers, got %d values", nsp, #ov) end
    for i = 1, nsp do
      local v = ov[i]
      if type(v) ~= "number" or v < 0 or v >= 1 then fail("overlap[%d] must be in [0, 1), got %s", i, tostring(v)) end
    end
  elseif type(ov) ~= "number" or ov < 0 or ov >= 1 then
    fail("overlap must be in [0, 1), got %s", tostring(ov))
  end
  if predictor == nil then fail("a predictor is required") end
  local ss = o.sigma_scale
  if ss ~= nil then
    local list = type(ss) == "table" and ss or nil
    if (list and #list ~= nsp) or (not list and type(ss) ~= "number") then
      fail("sigma_scale must be a number or a list of %d numbers, got %s", nsp,
        list and (#list .. " values") or tostring(ss))
    end
    for i = 1, list and nsp or 1 do
      local v = list and list[i] or ss
      if type(v) ~= "number" or not (v > 0) then
        fail("sigma_scale values must be positive numbers, got %s", tostring(v))
      end
    end
  end
  local wmap = M.importance_map(roi, o.mode or "constant", ss)
  local flips = {{}}
  if o.tta_flips == true then
    for i = 0, nsp - 1 do flips[#flips + 1] = {i} end
  elseif type(o.tta_flips) == "table" then
    for _, f in ipairs(o.tta_flips) do
      for _, a in ipairs(f) do
        if math.type(a) ~= "integer" or a < 0 or a >= nsp then
          fail("tta_flips: axis %s is not a spatial axis 0..%d", tostring(a), nsp - 1)
        end
      end
      flips[#flips + 1] = f
    end
  end
  local guard <close> = medlua.no_grad()
  -- progress over all windows of all passes
  local report
  if o.progress then
    local psz = {}
    for i = 1, nsp do psz[i] = math.max(x:size(i + 1), roi[i]) end
    local total = #M.window_starts(psz, roi, ov) * x:size(0) * #flips
    local done = 0
    if type(o.progress) == "function" then
      report = function(n) done = done + n; o.progress(done, total) end
    else
      local progress = require "medlua.progress"
      local bar = progress.new(total, {desc = "sliding window", unit = "win"})
      report = function(n)
        done = done + n
        bar:update(n)
        if done >= total then bar:close() end
      end
    end
  end
  local acc
  for _, f in ipairs(flips) do
    local dims = {}
    for i, a in ipairs(f) do dims[i] = a + 2 end
    local xi = (#dims > 0) and M.flip(x, dims):contiguous() or x
    local y = one_pass(xi, roi, sw_batch_size, predictor, o, wmap, report)
    if #dims > 0 then y = M.flip(y, dims) end
    if acc then acc:add_(y) else acc = (#flips > 1) and y:contiguous() or y end
  end
  if #flips > 1 then acc:div_(#flips) end
  return acc
end

return M
