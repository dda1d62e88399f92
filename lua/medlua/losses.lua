-- medlua.losses: segmentation losses with MONAI 1.6's definitions and defaults, built from
-- differentiable tensor ops (so autograd, float64 gradient checks and every dtype come for free).
--
--   local losses = require "medlua.losses"
--   local loss_fn = losses.DiceCELoss{to_onehot_y = true, softmax = true}
--   local loss = loss_fn(logits, target)        -- logits [N, C, spatial...], target [N, 1, spatial...]
--   loss:backward()
--
-- Every loss is an nn.Module (callable: loss_fn(input, target) runs :forward).
--   DiceLoss{include_background=true, to_onehot_y=false, sigmoid=false, softmax=false, other_act=nil,
--            squared_pred=false, jaccard=false, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5,
--            batch=false, weight=nil, soft_label=false}
--   DiceCELoss{...DiceLoss options (no soft_label)..., lambda_dice=1, lambda_ce=1, label_smoothing=0,
--              ce_weight=nil}   reduction "mean" or "sum"
--   FocalLoss{gamma=2, alpha=nil, weight=nil, use_softmax=false, to_onehot_y=false,
--             include_background=true, reduction="mean"}
--   BCEWithLogitsLoss{weight=nil, pos_weight=nil, reduction="mean"}   (torch.nn.BCEWithLogitsLoss)
-- input: [N, C, spatial...] logits (or probabilities for DiceLoss without an activation).
-- target: [N, C, spatial...] one-hot / probabilities, or [N, 1, spatial...] class indices with
--   to_onehot_y=true (DiceLoss, FocalLoss) and always accepted by DiceCELoss (cross entropy then uses
--   the indices directly, as MONAI).
-- weight (per class; a number, a list or a tensor): DiceLoss/FocalLoss scale each class's loss (after
--   include_background removed class 0, so give one value per remaining class). DiceCELoss{weight=}
--   is MONAI 1.6's: the cross-entropy class weight (pos_weight for one channel) and, without the first
--   entry when include_background=false, the Dice class weight. ce_weight (MONAI < 1.2's name) weights
--   the cross entropy only and overrides weight there.
-- Differences from MONAI: ignore_index is not supported; FocalLoss keeps the input dtype (MONAI
-- computes in float32), so float64 inputs give float64 losses. Single-channel cases where MONAI warns
-- and ignores softmax / to_onehot_y / include_background=false behave the same here, silently.
local medlua = require "medlua"
local nn = require "medlua.nn"
local F = medlua.F

local L = {}

local function fail(op, fmt, ...)
  error(op .. ": " .. string.format(fmt, ...), 0)
end

local function class(name, allowed, defaults)
  local c = {}
  c.__index = c
  c.__name = name
  c.__tostring = function(self) return self:repr() end
  c.__call = function(self, ...) return self:forward(...) end
  setmetatable(c, {__index = nn.Module, __call = function(_, opts)
    if opts ~= nil and type(opts) ~= "table" then fail(name, "options must be a table, got %s", type(opts)) end
    opts = opts or {}
    local ok = {}
    for _, k in ipairs(allowed) do ok[k] = true end
    for k in pairs(opts) do
      if not ok[k] then fail(name, "unknown option '%s' (expected one of: %s)", tostring(k), table.concat(allowed, ", ")) end
    end
    local o = setmetatable({}, c)
    o:_init_module()
    local full = {}
    for k, v in pairs(defaults) do full[k] = v end
    for k, v in pairs(opts) do full[k] = v end
    o:init(full)
    return o
  end})
  L[name] = c
  return c
end

local function shape_str(t) return "[" .. table.concat(t:size(), ", ") .. "]" end

local function check_reduction(op, r, allowed)
  for _, a in ipairs(allowed) do if r == a then return r end end
  fail(op, "unsupported reduction '%s' (expected one of: %s)", tostring(r), table.concat(allowed, ", "))
end

local function check_tensor(op, x, what)
  if not medlua.is_tensor(x) then fail(op, "%s must be a tensor, got %s", what, type(x)) end
  return x
end

local function is_float(t)
  local d = t.dtype
  return d == "float32" or d == "float64" or d == "float16" or d == "bfloat16"
end

-- per-class weight option -> a Lua list of numbers (or nil); a number stays a number
local function weight_list(op, w, what)
  if w == nil then return nil end
  if type(w) == "number" then return w end
  if medlua.is_tensor(w) then
    if w:dim() == 0 then return w:item() end
    return w:double():contiguous():view(-1):tolist()
  end
  if type(w) ~= "table" then fail(op, "%s must be a number, a list or a tensor, got %s", what, type(w)) end
  for i = 1, #w do
    if type(w[i]) ~= "number" then fail(op, "%s[%d] must be a number, got %s", what, i, type(w[i])) end
  end
  return w
end

-- [N, 1, spatial...] class indices -> [N, n, spatial...] one-hot in dtype dt (MONAI networks.utils.one_hot)
local function one_hot(op, target, n, dt)
  if target:dim() < 2 or target:size(1) ~= 1 then
    fail(op, "to_onehot_y needs a target of shape [N, 1, spatial...] with class indices, got %s", shape_str(target))
  end
  local lab = target:squeeze(1)
  if lab.dtype ~= "int64" then lab = lab:long() end
  local oh = lab:one_hot(n) -- [N, spatial..., n]
  local nd = oh:dim()
  local perm = {0, nd - 1}
  for d = 1, nd - 2 do perm[#perm + 1] = d end
  return oh:permute(table.unpack(perm)):to(dt)
end

local function spatial_dims_list(nd, with_batch)
  local dims = {}
  if with_batch then dims[1] = 0 end
  for d = 2, nd - 1 do dims[#dims + 1] = d end
  return dims
end

-- class weight list/number -> tensor of n entries (checked as MONAI)
local function class_weight_tensor(op, w, n, dt, what)
  local vals = {}
  if type(w) == "number" then
    for i = 1, n do vals[i] = w end
  else
    if #w ~= n then
      fail(op, "the length of %s (%d) should be the number of classes (%d); without the background class when "
        .. "include_background=false", what, #w, n)
    end
    for i = 1, n do vals[i] = w[i] end
  end
  for i = 1, n do
    if vals[i] < 0 then fail(op, "%s values must be >= 0, got %s", what, tostring(vals[i])) end
  end
  return medlua.tensor(vals, {dtype = dt})
end

-- ------------------------------------------------------------------------ DiceLoss
local DICE_KEYS = {"include_background", "to_onehot_y", "sigmoid", "softmax", "other_act", "squared_pred", "jaccard",
  "reduction", "smooth_nr", "smooth_dr", "batch", "weight", "soft_label"}
local DICE_DEFAULTS = {include_background = true, to_onehot_y = false, sigmoid = false, softmax = false,
  squared_pred = false, jaccard = false, reduction = "mean", smooth_nr = 1e-5, smooth_dr = 1e-5, batch = false,
  soft_label = false}

local DiceLoss = class("DiceLoss", DICE_KEYS, DICE_DEFAULTS)

function DiceLoss:init(o)
  local op = "DiceLoss"
  for k, v in pairs(o) do self[k] = v end
  if o.other_act ~= nil and type(o.other_act) ~= "function" and not (getmetatable(o.other_act) or {}).__call then
    fail(op, "other_act must be nil or callable, got %s", type(o.other_act))
  end
  local nact = (o.sigmoid and 1 or 0) + (o.softmax and 1 or 0) + (o.other_act ~= nil and 1 or 0)
  if nact > 1 then fail(op, "incompatible values: more than 1 of sigmoid=true, softmax=true, other_act") end
  check_reduction(op, o.reduction, {"mean", "sum", "none"})
  self.smooth_nr, self.smooth_dr = tonumber(o.smooth_nr), tonumber(o.smooth_dr)
  self.class_weight = weight_list(op, o.weight, "weight")
end

function DiceLoss:extra_repr()
  return string.format("include_background=%s, to_onehot_y=%s, sigmoid=%s, softmax=%s, reduction=%s",
    tostring(self.include_background), tostring(self.to_onehot_y), tostring(self.sigmoid), tostring(self.softmax),
    self.reduction)
end

function DiceLoss:forward(input, target)
  local op = "DiceLoss"
  check_tensor(op, input, "input")
  check_tensor(op, target, "target")
  if input:dim() < 3 then fail(op, "input must be [N, C, spatial...], got %s", shape_str(input)) end
  if not is_float(input) then fail(op, "input must be a floating point tensor, got %s", input.dtype) end
  if self.sigmoid then input = input:sigmoid() end
  local n = input:size(1)
  if self.softmax and n > 1 then input = F.softmax(input, 1) end
  if self.other_act ~= nil then input = self.other_act(input) end
  if self.to_onehot_y and n > 1 then target = one_hot(op, target, n, input.dtype) end
  if not self.include_background and n > 1 then
    if target:dim() >= 2 and target:size(1) == n then target = target:narrow(1, 1, n - 1) end
    input = input:narrow(1, 1, n - 1)
  end
  local same = target:dim() == input:dim()
  for d = 0, input:dim() - 1 do same = same and target:size(d) == input:size(d) end
  if not same then
    fail(op, "ground truth has different shape (%s) from input (%s)", shape_str(target), shape_str(input))
  end
  if target.dtype ~= input.dtype then target = target:to(input.dtype) end
  local dims = spatial_dims_list(input:dim(), self.batch)
  local tp, fp, fn
  if not self.squared_pred and not self.soft_label then
    tp = (input * target):sum(dims)
    fp = input:sum(dims) - tp
    fn = target:sum(dims) - tp
  else
    local pred_o, ground_o, diff
    if self.squared_pred then
      pred_o = (input * input):sum(dims)
      ground_o = (target * target):sum(dims)
      local d = input - target
      diff = (d * d):sum(dims)
    else
      pred_o = input:abs():sum(dims)
      ground_o = target:abs():sum(dims)
      diff = (input - target):abs():sum(dims)
    end
    tp = (pred_o + ground_o - diff) * 0.5
    fp = pred_o - tp
    fn = ground_o - tp
  end
  if not self.jaccard then
    fp = fp * 0.5
    fn = fn * 0.5
  end
  local num = tp * 2 + self.smooth_nr
  local den = (tp + fp + fn) * 2 + self.smooth_dr
  local f = 1 - num / den
  local nclass = target:size(1)
  if self.class_weight ~= nil and nclass ~= 1 then
    f = f * class_weight_tensor(op, self.class_weight, nclass, f.dtype, "weight")
  end
  if self.reduction == "mean" then return f:mean() end
  if self.reduction == "sum" then return f:sum() end
  local shape = {}
  local fs = f:size()
  for i = 1, math.min(2, #fs) do shape[#shape + 1] = fs[i] end
  for _ = 1, input:dim() - 2 do shape[#shape + 1] = 1 end
  return f:reshape(table.unpack(shape))
end

-- ------------------------------------------------------------------------ DiceCELoss
local DICECE_KEYS = {"include_background", "to_onehot_y", "sigmoid", "softmax", "other_act", "squared_pred", "jaccard",
  "reduction", "smooth_nr", "smooth_dr", "batch", "weight", "lambda_dice", "lambda_ce", "label_smoothing", "ce_weight"}
local DICECE_DEFAULTS = {include_background = true, to_onehot_y = false, sigmoid = false, softmax = false,
  squared_pred = false, jaccard = false, reduction = "mean", smooth_nr = 1e-5, smooth_dr = 1e-5, batch = false,
  lambda_dice = 1.0, lambda_ce = 1.0, label_smoothing = 0.0}

local DiceCELoss = class("DiceCELoss", DICECE_KEYS, DICECE_DEFAULTS)

function DiceCELoss:init(o)
  local op = "DiceCELoss"
  check_reduction(op, o.reduction, {"mean", "sum"})
  local w = weight_list(op, o.weight, "weight")
  local dice_w = w
  if w ~= nil and not o.include_background then
    if type(w) == "number" then
      fail(op, "weight must be a list (one value per class) when include_background=false")
    end
    dice_w = {}
    for i = 2, #w do dice_w[#dice_w + 1] = w[i] end
  end
  local d = {}
  for _, k in ipairs(DICE_KEYS) do if k ~= "soft_label" then d[k] = o[k] end end
  d.weight = dice_w
  self.dice = DiceLoss(d)
  if o.lambda_dice < 0 then fail(op, "lambda_dice should be no less than 0.0, got %s", tostring(o.lambda_dice)) end
  if o.lambda_ce < 0 then fail(op, "lambda_ce should be no less than 0.0, got %s", tostring(o.lambda_ce)) end
  if not (o.label_smoothing >= 0 and o.label_smoothing <= 1) then
    fail(op, "label_smoothing must be in [0, 1], got %s", tostring(o.label_smoothing))
  end
  self.lambda_dice, self.lambda_ce, self.label_smoothing = o.lambda_dice, o.lambda_ce, o.label_smoothing
  self.reduction = o.reduction
  local cw = o.ce_weight ~= nil and weight_list(op, o.ce_weight, "ce_weight") or w
  if type(cw) == "number" then cw = {cw} end
  self.ce_weight = cw
end

function DiceCELoss:extra_repr()
  return string.format("lambda_dice=%g, lambda_ce=%g, reduction=%s", self.lambda_dice, self.lambda_ce, self.reduction)
end

function DiceCELoss:forward(input, target)
  local op = "DiceCELoss"
  check_tensor(op, input, "input")
  check_tensor(op, target, "target")
  if input:dim() ~= target:dim() then
    fail(op, "the number of dimensions for input and target should be the same, got shape %s and %s; if target is "
      .. "not one-hot encoded, please provide a tensor with shape [N, 1, spatial...]", shape_str(input), shape_str(target))
  end
  if input:dim() < 3 then fail(op, "input must be [N, C, spatial...], got %s", shape_str(input)) end
  local n, nt = input:size(1), target:size(1)
  if nt ~= 1 and nt ~= n then
    fail(op, "number of channels for target is neither 1 (without one-hot encoding) nor the same as input, got shape "
      .. "%s and %s", shape_str(input), shape_str(target))
  end
  local dice = self.dice(input, target)
  local w = self.ce_weight and medlua.tensor(self.ce_weight, {dtype = input.dtype}):to(input.device) or nil
  local ce
  if n ~= 1 then
    local t
    if nt == 1 then
      t = target:squeeze(1)
      if t.dtype ~= "int64" then t = t:long() end
    else
      t = target.dtype == input.dtype and target or target:to(input.dtype)
    end
    if w and w:numel() ~= n then
      fail(op, "the cross-entropy weight has %d values for %d classes", w:numel(), n)
    end
    ce = F.cross_entropy(input, t, {weight = w, reduction = self.reduction, label_smoothing = self.label_smoothing})
  else
    local t = target.dtype == input.dtype and target or target:to(input.dtype)
    if w then
      local shape = {w:numel()}
      for _ = 1, input:dim() - 2 do shape[#shape + 1] = 1 end
      if w:numel() == 1 then w = w:reshape(1) else w = w:reshape(table.unpack(shape)) end
    end
    ce = F.binary_cross_entropy_with_logits(input, t, {pos_weight = w, reduction = self.reduction})
  end
  return dice * self.lambda_dice + ce * self.lambda_ce
end

-- ------------------------------------------------------------------------ FocalLoss
local FOCAL_KEYS = {"include_background", "to_onehot_y", "gamma", "alpha", "weight", "reduction", "use_softmax"}
local FOCAL_DEFAULTS = {include_background = true, to_onehot_y = false, gamma = 2.0, reduction = "mean",
  use_softmax = false}

local FocalLoss = class("FocalLoss", FOCAL_KEYS, FOCAL_DEFAULTS)

function FocalLoss:init(o)
  local op = "FocalLoss"
  check_reduction(op, o.reduction, {"mean", "sum", "none"})
  if type(o.gamma) ~= "number" then fail(op, "gamma must be a number, got %s", type(o.gamma)) end
  self.include_background, self.to_onehot_y, self.gamma = o.include_background, o.to_onehot_y, o.gamma
  self.use_softmax, self.reduction = o.use_softmax, o.reduction
  self.alpha = weight_list(op, o.alpha, "alpha")
  self.class_weight = weight_list(op, o.weight, "weight")
end

function FocalLoss:extra_repr()
  return string.format("gamma=%g, use_softmax=%s, reduction=%s", self.gamma, tostring(self.use_softmax), self.reduction)
end

local function bshape(c, nd) -- [c, 1, ..., 1] with nd - 2 ones (MONAI broadcast_dims for alpha)
  local s = {c}
  for _ = 1, nd - 2 do s[#s + 1] = 1 end
  return s
end

local function softmax_focal(op, input, target, gamma, alpha)
  local ls = F.log_softmax(input, 1)
  local loss = -(ls * target)
  if gamma ~= 0 then loss = (1 - ls:exp()):pow(gamma) * loss end
  if alpha ~= nil then
    local c = target:size(1)
    local fac
    if type(alpha) == "number" then
      fac = {1 - alpha}
      for i = 2, c do fac[i] = alpha end
    else
      if #alpha ~= c then fail(op, "the length of alpha (%d) must match the number of classes (%d)", #alpha, c) end
      fac = alpha
    end
    loss = medlua.tensor(fac, {dtype = loss.dtype}):reshape(table.unpack(bshape(c, target:dim()))) * loss
  end
  return loss
end

local function logsigmoid(x) return -((-x):softplus()) end

local function sigmoid_focal(op, input, target, gamma, alpha)
  local loss = input - input * target - logsigmoid(input)
  if gamma ~= 0 then
    local invprobs = logsigmoid(-input * (target * 2 - 1))
    loss = (invprobs * gamma):exp() * loss
  end
  if alpha ~= nil then
    local fac
    if type(alpha) == "number" then
      fac = target * alpha + (1 - target) * (1 - alpha)
    else
      local c = target:size(1)
      if #alpha ~= c then fail(op, "the length of alpha (%d) must match the number of classes (%d)", #alpha, c) end
      local a = medlua.tensor(alpha, {dtype = loss.dtype}):reshape(table.unpack(bshape(c, target:dim())))
      fac = medlua.where(target:eq(1), a, medlua.ones_like(a))
    end
    loss = fac * loss
  end
  return loss
end

function FocalLoss:forward(input, target)
  local op = "FocalLoss"
  check_tensor(op, input, "input")
  check_tensor(op, target, "target")
  if input:dim() < 3 then fail(op, "input must be [N, C, spatial...], got %s", shape_str(input)) end
  if not is_float(input) then fail(op, "input must be a floating point tensor, got %s", input.dtype) end
  local n = input:size(1)
  if self.to_onehot_y and n > 1 then target = one_hot(op, target, n, input.dtype) end
  if not self.include_background and n > 1 then
    if target:dim() >= 2 and target:size(1) == n then target = target:narrow(1, 1, n - 1) end
    input = input:narrow(1, 1, n - 1)
  end
  local same = target:dim() == input:dim()
  for d = 0, input:dim() - 1 do same = same and target:size(d) == input:size(d) end
  if not same then
    fail(op, "ground truth has different shape (%s) from input (%s)", shape_str(target), shape_str(input))
  end
  if target.dtype ~= input.dtype then target = target:to(input.dtype) end
  local loss
  if self.use_softmax then
    local alpha = self.alpha
    if not self.include_background and type(alpha) == "number" then alpha = nil end -- MONAI ignores a scalar alpha here
    loss = softmax_focal(op, input, target, self.gamma, alpha)
  else
    loss = sigmoid_focal(op, input, target, self.gamma, self.alpha)
  end
  if self.class_weight ~= nil then
    local cw, c = self.class_weight, loss:size(1)
    if type(cw) == "number" then
      if cw < 0 then fail(op, "class_weight values must be non-negative, got %s", tostring(cw)) end
      loss = loss * cw
    else
      if c == 1 then fail(op, "per-class class_weight is not supported for single-channel outputs") end
      if #cw ~= c then fail(op, "the number of class_weight (%d) must match the number of output channels (%d)", #cw, c) end
      for i = 1, c do
        if cw[i] < 0 then fail(op, "class_weight values must be non-negative, got %s", tostring(cw[i])) end
      end
      local s = {1, c}
      for _ = 1, loss:dim() - 2 do s[#s + 1] = 1 end
      loss = loss * medlua.tensor(cw, {dtype = loss.dtype}):reshape(table.unpack(s))
    end
  end
  if self.reduction == "sum" then
    return loss:mean(spatial_dims_list(loss:dim(), false)):sum()
  elseif self.reduction == "mean" then
    return loss:mean()
  end
  return loss
end

-- ------------------------------------------------------------------------ BCEWithLogitsLoss
local BCE = class("BCEWithLogitsLoss", {"weight", "pos_weight", "reduction"}, {reduction = "mean"})

local function opt_tensor(op, v, what)
  if v == nil or medlua.is_tensor(v) then return v end
  if type(v) == "number" then return medlua.tensor({v}) end
  if type(v) == "table" then return medlua.tensor(v) end
  fail(op, "%s must be a tensor, a number or a list, got %s", what, type(v))
end

function BCE:init(o)
  local op = "BCEWithLogitsLoss"
  check_reduction(op, o.reduction, {"mean", "sum", "none"})
  self.weight = opt_tensor(op, o.weight, "weight")
  self.pos_weight = opt_tensor(op, o.pos_weight, "pos_weight")
  self.reduction = o.reduction
end

function BCE:forward(input, target)
  local op = "BCEWithLogitsLoss"
  check_tensor(op, input, "input")
  check_tensor(op, target, "target")
  local function cast(t) return (t and t.dtype ~= input.dtype) and t:to(input.dtype) or t end
  return F.binary_cross_entropy_with_logits(input, cast(target),
    {weight = cast(self.weight), pos_weight = cast(self.pos_weight), reduction = self.reduction})
end

return L
