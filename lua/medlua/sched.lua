-- medlua.sched: learning-rate schedulers with PyTorch's (and MONAI's) names, defaults and semantics.
-- They are re-exported by medlua.optim, so `optim.StepLR(...)` and `sched.StepLR(...)` are the same.
--
--   local opt = optim.SGD(model:parameters(), {lr = 0.1, momentum = 0.9})
--   local s = optim.CosineAnnealingLR(opt, {T_max = 100})    -- or optim.CosineAnnealingLR{opt, T_max = 100}
--   for epoch = 1, 100 do train_one_epoch(); s:step() end     -- step() after opt:step(), as in PyTorch
--   s:get_last_lr()[1]                                        -- a list, one entry per parameter group
--
-- Building a scheduler sets the optimizer's lr to the schedule's value at step 0 (PyTorch's initial step).
-- ReduceLROnPlateau steps with a metric: s:step(val_loss). state_dict() returns a plain table of numbers,
-- strings, booleans and lists (everything but the optimizer, as PyTorch does); load_state_dict(t) restores
-- it. Like PyTorch, a scheduler drives one optimizer with one parameter group (medlua's optimizers have
-- one), and the optimizer's own lr/momentum are restored by Optimizer:load_state_dict.
--
-- Schedulers (options and defaults):
--   StepLR{step_size, gamma = 0.1}
--   MultiStepLR{milestones, gamma = 0.1}
--   CosineAnnealingLR{T_max, eta_min = 0}                       PyTorch's recursive form (periodic past T_max)
--   WarmupCosineSchedule{warmup_steps, t_total, warmup_multiplier = 0, end_lr = 0, cycles = 0.5}    (MONAI)
--   PolyLR{total_iters, power = 0.9}         nnU-Net poly: lr0 * (1 - min(t, T) / T) ^ power
--   PolynomialLR{total_iters = 5, power = 1}  PyTorch's recursive form of the same schedule
--   LambdaLR{lr_lambda = function(step) return factor end}
--   ReduceLROnPlateau{mode = "min", factor = 0.1, patience = 10, threshold = 1e-4, threshold_mode = "rel",
--                     cooldown = 0, min_lr = 0, eps = 1e-8}
--   OneCycleLR{max_lr, total_steps | epochs + steps_per_epoch, pct_start = 0.3, anneal_strategy = "cos",
--              cycle_momentum = true, base_momentum = 0.85, max_momentum = 0.95, div_factor = 25,
--              final_div_factor = 1e4, three_phase = false}   cycles SGD's momentum or Adam's beta1
local sched = {}

local Scheduler = {}
Scheduler.__index = Scheduler
sched.Scheduler = Scheduler

local function is_optimizer(o)
  return type(o) == "table" and type(o.lr) == "number" and type(o.step) == "function" and type(o.params) == "table"
end

-- Accepts (optimizer, opts), {optimizer, opt = v, ...} or {optimizer = optimizer, opt = v, ...}.
local function parse_args(name, a, b)
  local opt, opts
  if is_optimizer(a) then
    opt, opts = a, b or {}
  elseif type(a) == "table" then
    opts = a
    opt = a.optimizer or a[1]
  end
  if not is_optimizer(opt) then
    error(name .. ": expected an optimizer (optim.SGD/Adam/AdamW) as first argument or as 'optimizer'", 3)
  end
  if type(opts) ~= "table" then error(name .. ": options must be a table", 3) end
  return opt, opts
end

-- Copies known options (spec: name -> default, sched.REQUIRED for none) into self; unknown ones raise.
local REQUIRED = setmetatable({}, {__tostring = function() return "required" end})
local function take_opts(self, name, opts, spec)
  for k, v in pairs(opts) do
    if k ~= "optimizer" and k ~= 1 and spec[k] == nil then
      error(name .. ": unknown option '" .. tostring(k) .. "'", 4)
    end
  end
  for k, def in pairs(spec) do
    local v = opts[k]
    if v == nil then
      if def == REQUIRED then error(name .. ": option '" .. k .. "' is required", 4) end
      v = def
    end
    self[k] = v
  end
end

local function check(cond, name, msg)
  if not cond then error(name .. ": " .. msg, 3) end
end

local function new(cls, name, a, b, spec)
  local opt, opts = parse_args(name, a, b)
  local self = setmetatable({optimizer = opt, type = name}, cls)
  take_opts(self, name, opts, spec)
  return self, opt
end

-- PyTorch LRScheduler.__init__ + _initial_step: base lr from the optimizer, one step to last_epoch 0.
function Scheduler:_init_base()
  local opt = self.optimizer
  if opt.initial_lr == nil then opt.initial_lr = opt.lr end
  self.base_lr = opt.initial_lr
  self.last_epoch = -1
  self._step_count = 0
  self._is_initial = true
  self:step()
  self._is_initial = false
end

function Scheduler:step()
  self._step_count = self._step_count + 1
  self.last_epoch = self.last_epoch + 1
  local lr = self:get_lr()
  self.optimizer.lr = lr
  self.last_lr = lr
end

-- The learning rates the last step() set, one per parameter group (medlua optimizers have one group).
function Scheduler:get_last_lr() return {self.last_lr} end

-- Non-finite numbers travel as strings so that a state dict is always JSON-encodable.
local function to_json_number(v)
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" end
  if v == -math.huge then return "-inf" end
  return v
end
local nonfinite = {nan = 0 / 0, inf = math.huge, ["-inf"] = -math.huge}

-- Everything but the optimizer (and functions), like PyTorch's state_dict; JSON-encodable (infinities
-- and NaN become the strings "inf", "-inf", "nan" and come back as numbers in load_state_dict).
function Scheduler:state_dict()
  local sd = {}
  for k, v in pairs(self) do
    local t = type(v)
    if k ~= "optimizer" and t == "number" then
      sd[k] = to_json_number(v)
    elseif k ~= "optimizer" and (t == "string" or t == "boolean") then
      sd[k] = v
    elseif k ~= "optimizer" and t == "table" then
      local copy = {}
      for i, x in pairs(v) do
        if type(x) == "table" then
          local inner = {}
          for j, y in pairs(x) do inner[j] = y end
          copy[i] = inner
        else
          copy[i] = x
        end
      end
      sd[k] = copy
    end
  end
  return sd
end

function Scheduler:load_state_dict(sd)
  assert(type(sd) == "table", self.type .. ":load_state_dict: expected a table")
  if sd.type ~= nil and sd.type ~= self.type then
    error(string.format("%s:load_state_dict: the state is from a %s", self.type, tostring(sd.type)), 2)
  end
  for k, v in pairs(sd) do
    if k ~= "optimizer" then
      if type(v) == "table" then
        local copy = {}
        for i, x in pairs(v) do copy[i] = x end
        v = copy
      end
      if type(v) == "string" and nonfinite[v] and k ~= "type" then v = nonfinite[v] end
      -- JSON round trips may turn integral floats into integers and back; keep counters integers
      if (k == "last_epoch" or k == "_step_count") and type(v) == "number" then v = math.tointeger(v) or v end
      self[k] = v
    end
  end
end

function Scheduler:__tostring()
  return string.format("%s(last_epoch=%d, lr=%.6g)", self.type, self.last_epoch or 0, self.last_lr or 0)
end

local function class(name)
  local C = setmetatable({}, {__index = Scheduler})
  C.__index = C
  C.__tostring = Scheduler.__tostring
  C.name = name
  return C
end

-- ------------------------------------------------------------------ StepLR
local StepLR = class("StepLR")
function sched.StepLR(a, b)
  local self = new(StepLR, "StepLR", a, b, {step_size = REQUIRED, gamma = 0.1})
  check(math.type(self.step_size) == "integer" and self.step_size > 0, "StepLR",
    "step_size must be a positive integer, got " .. tostring(self.step_size))
  self:_init_base()
  return self
end
function StepLR:get_lr()
  local lr = self.optimizer.lr
  if self.last_epoch == 0 or self.last_epoch % self.step_size ~= 0 then return lr end
  return lr * self.gamma
end

-- ------------------------------------------------------------------ MultiStepLR
local MultiStepLR = class("MultiStepLR")
function sched.MultiStepLR(a, b)
  local self = new(MultiStepLR, "MultiStepLR", a, b, {milestones = REQUIRED, gamma = 0.1})
  check(type(self.milestones) == "table", "MultiStepLR", "milestones must be a list of integers")
  local ms = {}
  for i, m in ipairs(self.milestones) do
    check(math.type(m) == "integer", "MultiStepLR", "milestone " .. i .. " is not an integer: " .. tostring(m))
    ms[#ms + 1] = m
  end
  table.sort(ms)
  self.milestones = ms
  self:_init_base()
  return self
end
function MultiStepLR:get_lr()
  local n = 0
  for _, m in ipairs(self.milestones) do if m == self.last_epoch then n = n + 1 end end
  local lr = self.optimizer.lr
  if n == 0 then return lr end
  return lr * self.gamma ^ n
end

-- ------------------------------------------------------------------ CosineAnnealingLR
local Cosine = class("CosineAnnealingLR")
function sched.CosineAnnealingLR(a, b)
  local self = new(Cosine, "CosineAnnealingLR", a, b, {T_max = REQUIRED, eta_min = 0})
  check(type(self.T_max) == "number" and self.T_max > 0, "CosineAnnealingLR",
    "T_max must be positive, got " .. tostring(self.T_max))
  self:_init_base()
  return self
end
function Cosine:get_lr()
  local lr, e, T, emin = self.optimizer.lr, self.last_epoch, self.T_max, self.eta_min
  if self._is_initial then return lr end
  if (e - 1 - T) % (2 * T) == 0 then
    return lr + (self.base_lr - emin) * (1 - math.cos(math.pi / T)) / 2
  end
  return (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - emin) + emin
end

-- ------------------------------------------------------------------ PolynomialLR (PyTorch) / PolyLR (nnU-Net)
local PolynomialLR = class("PolynomialLR")
function sched.PolynomialLR(a, b)
  local self = new(PolynomialLR, "PolynomialLR", a, b, {total_iters = 5, power = 1.0})
  check(type(self.total_iters) == "number" and self.total_iters > 0, "PolynomialLR", "total_iters must be positive")
  self:_init_base()
  return self
end
function PolynomialLR:get_lr()
  local lr, e, T = self.optimizer.lr, self.last_epoch, self.total_iters
  if self._is_initial or e > T then return lr end
  return lr * ((1.0 - e / T) / (1.0 - (e - 1) / T)) ^ self.power
end

local PolyLR = class("PolyLR")
function sched.PolyLR(a, b)
  local self = new(PolyLR, "PolyLR", a, b, {total_iters = REQUIRED, power = 0.9})
  check(type(self.total_iters) == "number" and self.total_iters > 0, "PolyLR",
    "total_iters must be positive, got " .. tostring(self.total_iters))
  self:_init_base()
  return self
end
function PolyLR:get_lr()
  local t = math.min(self.last_epoch, self.total_iters)
  return self.base_lr * (1.0 - t / self.total_iters) ^ self.power
end

-- ------------------------------------------------------------------ LambdaLR / WarmupCosineSchedule
local LambdaLR = class("LambdaLR")
function sched.LambdaLR(a, b)
  local self = new(LambdaLR, "LambdaLR", a, b, {lr_lambda = REQUIRED})
  check(type(self.lr_lambda) == "function", "LambdaLR", "lr_lambda must be a function of the step")
  self:_init_base()
  return self
end
function LambdaLR:get_lr() return self.base_lr * self.lr_lambda(self.last_epoch) end

local WarmupCosine = class("WarmupCosineSchedule")
function sched.WarmupCosineSchedule(a, b)
  local self = new(WarmupCosine, "WarmupCosineSchedule", a, b, {warmup_steps = REQUIRED, t_total = REQUIRED,
    end_lr = 0.0, cycles = 0.5, warmup_multiplier = 0})
  check(type(self.t_total) == "number" and self.t_total >= 0, "WarmupCosineSchedule", "t_total must be >= 0")
  check(self.warmup_multiplier >= 0 and self.warmup_multiplier <= 1, "WarmupCosineSchedule",
    "warmup_multiplier must be in 0..1 range")
  self.warmup_steps = math.min(math.max(self.warmup_steps, 0), self.t_total)
  self:_init_base()
  return self
end
function WarmupCosine:lr_lambda(step)
  if step < self.warmup_steps then
    local f = step / math.max(1.0, self.warmup_steps)
    return self.warmup_multiplier + (1 - self.warmup_multiplier) * f
  end
  local progress = (step - self.warmup_steps) / math.max(1, self.t_total - self.warmup_steps)
  return math.max(0.0, 0.5 * (1.0 + math.cos(math.pi * self.cycles * 2.0 * progress)))
end
function WarmupCosine:get_lr()
  local lr = self.base_lr * self:lr_lambda(self.last_epoch)
  if self.last_epoch < self.warmup_steps then return lr end
  return math.max(self.end_lr, lr)
end

-- ------------------------------------------------------------------ ReduceLROnPlateau
local Plateau = class("ReduceLROnPlateau")
function sched.ReduceLROnPlateau(a, b)
  local self, opt = new(Plateau, "ReduceLROnPlateau", a, b, {mode = "min", factor = 0.1, patience = 10,
    threshold = 1e-4, threshold_mode = "rel", cooldown = 0, min_lr = 0, eps = 1e-8})
  check(self.factor < 1.0, "ReduceLROnPlateau", "factor should be < 1.0, got " .. tostring(self.factor))
  check(self.mode == "min" or self.mode == "max", "ReduceLROnPlateau", "mode " .. tostring(self.mode) .. " is unknown")
  check(self.threshold_mode == "rel" or self.threshold_mode == "abs", "ReduceLROnPlateau",
    "threshold mode " .. tostring(self.threshold_mode) .. " is unknown")
  self.last_epoch = 0
  self.last_lr = opt.lr
  self.mode_worse = self.mode == "min" and math.huge or -math.huge
  self.best, self.cooldown_counter, self.num_bad_epochs = self.mode_worse, 0, 0
  return self
end
function Plateau:is_better(a, best)
  if self.mode == "min" and self.threshold_mode == "rel" then return a < best * (1.0 - self.threshold) end
  if self.mode == "min" then return a < best - self.threshold end
  if self.threshold_mode == "rel" then return a > best * (self.threshold + 1.0) end
  return a > best + self.threshold
end
function Plateau:step(metric)
  if type(metric) ~= "number" then
    local m = package.loaded.medlua
    if m and m.is_tensor(metric) then metric = metric:item() end
  end
  if type(metric) ~= "number" then
    error("ReduceLROnPlateau:step: expected the monitored metric (a number), got " .. type(metric), 2)
  end
  self.last_epoch = self.last_epoch + 1
  if self:is_better(metric, self.best) then
    self.best, self.num_bad_epochs = metric, 0
  else
    self.num_bad_epochs = self.num_bad_epochs + 1
  end
  if self.cooldown_counter > 0 then
    self.cooldown_counter = self.cooldown_counter - 1
    self.num_bad_epochs = 0
  end
  if self.num_bad_epochs > self.patience then
    local old = self.optimizer.lr
    local new_lr = math.max(old * self.factor, self.min_lr)
    if old - new_lr > self.eps then self.optimizer.lr = new_lr end
    self.cooldown_counter = self.cooldown
    self.num_bad_epochs = 0
  end
  self.last_lr = self.optimizer.lr
end
function Plateau:in_cooldown() return self.cooldown_counter > 0 end

-- ------------------------------------------------------------------ OneCycleLR
local OneCycle = class("OneCycleLR")
function sched.OneCycleLR(a, b)
  local self, opt = new(OneCycle, "OneCycleLR", a, b, {max_lr = REQUIRED, total_steps = false, epochs = false,
    steps_per_epoch = false, pct_start = 0.3, anneal_strategy = "cos", cycle_momentum = true, base_momentum = 0.85,
    max_momentum = 0.95, div_factor = 25.0, final_div_factor = 1e4, three_phase = false})
  local N = "OneCycleLR"
  if self.total_steps then
    check(math.type(self.total_steps) == "integer" and self.total_steps > 0, N,
      "expected positive integer total_steps, but got " .. tostring(self.total_steps))
  elseif self.epochs and self.steps_per_epoch then
    check(math.type(self.epochs) == "integer" and self.epochs > 0, N,
      "expected positive integer epochs, but got " .. tostring(self.epochs))
    check(math.type(self.steps_per_epoch) == "integer" and self.steps_per_epoch > 0, N,
      "expected positive integer steps_per_epoch, but got " .. tostring(self.steps_per_epoch))
    self.total_steps = self.epochs * self.steps_per_epoch
  else
    error("OneCycleLR: you must define either total_steps OR (epochs AND steps_per_epoch)", 2)
  end
  local pct, T = self.pct_start, self.total_steps
  check(type(pct) == "number" and pct >= 0 and pct <= 1, N, "expected pct_start between 0 and 1, got " .. tostring(pct))
  check(self.anneal_strategy == "cos" or self.anneal_strategy == "linear", N,
    "anneal_strategy must be one of 'cos' or 'linear', instead got " .. tostring(self.anneal_strategy))
  if self.three_phase then
    self.phases = {
      {end_step = (pct * T) - 1, start_lr = "initial_lr", end_lr = "max_lr", start_m = "max_momentum", end_m = "base_momentum"},
      {end_step = (2 * pct * T) - 2, start_lr = "max_lr", end_lr = "initial_lr", start_m = "base_momentum", end_m = "max_momentum"},
      {end_step = T - 1, start_lr = "initial_lr", end_lr = "min_lr", start_m = "max_momentum", end_m = "max_momentum"},
    }
  else
    self.phases = {
      {end_step = (pct * T) - 1, start_lr = "initial_lr", end_lr = "max_lr", start_m = "max_momentum", end_m = "base_momentum"},
      {end_step = T - 1, start_lr = "max_lr", end_lr = "min_lr", start_m = "base_momentum", end_m = "max_momentum"},
    }
  end
  self.initial_lr = self.max_lr / self.div_factor
  self.min_lr = self.initial_lr / self.final_div_factor
  opt.initial_lr = self.initial_lr
  if self.cycle_momentum then
    if type(opt.betas) == "table" then
      self.use_beta1 = true
      opt.betas = {self.max_momentum, opt.betas[2]}
    elseif type(opt.momentum) == "number" then
      self.use_beta1 = false
      opt.momentum = self.max_momentum
    else
      error("OneCycleLR: optimizer must support momentum or beta1 with `cycle_momentum` option enabled", 2)
    end
  end
  for k, v in pairs(self) do if v == false and (k == "epochs" or k == "steps_per_epoch") then self[k] = nil end end
  self:_init_base()
  return self
end
function OneCycle:anneal(s, e, pct)
  if self.anneal_strategy == "cos" then return e + (s - e) / 2.0 * (math.cos(math.pi * pct) + 1) end
  return (e - s) * pct + s
end
function OneCycle:get_lr()
  local n = self.last_epoch
  if n > self.total_steps then
    error(string.format("OneCycleLR: tried to step %d times; the specified number of total steps is %d", n,
      self.total_steps), 3)
  end
  local start, lr, mom = 0.0, nil, nil
  for i, ph in ipairs(self.phases) do
    if n <= ph.end_step or i == #self.phases then
      local pct = (n - start) / (ph.end_step - start)
      lr = self:anneal(self[ph.start_lr], self[ph.end_lr], pct)
      if self.cycle_momentum then mom = self:anneal(self[ph.start_m], self[ph.end_m], pct) end
      break
    end
    start = ph.end_step
  end
  if self.cycle_momentum then
    local opt = self.optimizer
    if self.use_beta1 then opt.betas = {mom, opt.betas[2]} else opt.momentum = mom end
    self.last_momentum = mom
  end
  return lr
end

return sched
