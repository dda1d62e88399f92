-- medlua.optim: optimizers over a list of parameter tensors, PyTorch semantics and defaults.
--   local opt = optim.Adam(model:parameters(), {lr = 1e-3})
--   opt:zero_grad(); loss:backward(); opt:step()
-- state_dict()/load_state_dict() give plain tensors + numbers for safetensors checkpoints.
-- Learning-rate schedulers (StepLR, CosineAnnealingLR, OneCycleLR, ...) live in medlua.sched and are
-- re-exported here: optim.StepLR(opt, {step_size = 10}).
local medlua = require "medlua"

local optim = {}

local Optimizer = {}
Optimizer.__index = Optimizer

local function new_optimizer(cls, params, defaults, opts)
  assert(type(params) == "table" and #params > 0, cls.name .. ": expected a non-empty list of parameters")
  local self = setmetatable({params = params, state = {}, step_count = 0}, cls)
  opts = opts or {}
  for k, v in pairs(defaults) do
    if opts[k] == nil then self[k] = v else self[k] = opts[k] end
  end
  for k in pairs(opts) do
    if defaults[k] == nil then error(cls.name .. ": unknown option '" .. tostring(k) .. "'", 3) end
  end
  if self.lr < 0 then error(cls.name .. ": invalid learning rate " .. self.lr, 3) end
  return self
end

function Optimizer:zero_grad()
  for _, p in ipairs(self.params) do p.grad = nil end
end

-- Hyper-parameters a scheduler may change during training (OneCycleLR cycles momentum / beta1), saved with
-- the state so that a resumed run continues with the values it had.
local GROUP_KEYS = {"momentum", "dampening", "weight_decay", "eps", "initial_lr"}

-- State as a flat name -> tensor table (for safetensors): per-parameter buffers "state.<i>.<name>"
-- (i counts from 0 in parameter order), the per-parameter step "state.<i>.step" (int64), "step_count",
-- "lr" and the current hyper-parameters "group.<name>" (float64; "group.betas" holds beta1, beta2).
function Optimizer:state_dict()
  local sd = {}
  for i, p in ipairs(self.params) do
    local st = self.state[p]
    if st then
      for k, v in pairs(st) do
        local key = string.format("state.%d.%s", i - 1, k)
        if medlua.is_tensor(v) then
          sd[key] = v
        elseif math.type(v) == "integer" then
          sd[key] = medlua.tensor({v}, {dtype = "int64"})
        elseif type(v) == "number" then
          sd[key] = medlua.tensor({v}, {dtype = "float64"})
        end
      end
    end
  end
  sd["step_count"] = medlua.tensor({self.step_count}, {dtype = "int64"})
  sd["lr"] = medlua.tensor({self.lr}, {dtype = "float64"})
  for _, k in ipairs(GROUP_KEYS) do
    if type(self[k]) == "number" then sd["group." .. k] = medlua.tensor({self[k]}, {dtype = "float64"}) end
  end
  if type(self.betas) == "table" then
    sd["group.betas"] = medlua.tensor({self.betas[1], self.betas[2]}, {dtype = "float64"})
  end
  return sd
end

local function scalar(t, key)
  if t:numel() ~= 1 then error(string.format("load_state_dict: '%s' must hold one number, has %d", key, t:numel()), 3) end
  return t:item()
end

function Optimizer:load_state_dict(sd)
  local has_step = {}
  for i, p in ipairs(self.params) do
    local prefix = string.format("state.%d.", i - 1)
    for k, v in pairs(sd) do
      if k:sub(1, #prefix) == prefix then
        local name = k:sub(#prefix + 1)
        self.state[p] = self.state[p] or {}
        if name == "step" then
          self.state[p].step = math.tointeger(scalar(v, k)) or scalar(v, k)
          has_step[p] = true
        else
          self.state[p][name] = v:clone()
        end
      end
    end
  end
  if sd.step_count then self.step_count = math.tointeger(scalar(sd.step_count, "step_count")) end
  if sd.lr then self.lr = scalar(sd.lr, "lr") end
  for _, k in ipairs(GROUP_KEYS) do
    local t = sd["group." .. k]
    if t then self[k] = scalar(t, "group." .. k) end
  end
  if sd["group.betas"] then
    local b = sd["group.betas"]:double():tolist()
    self.betas = {b[1], b[2]}
  end
  -- checkpoints without per-parameter steps: every parameter stepped with the optimizer
  for p, st in pairs(self.state) do
    if not has_step[p] then st.step = self.step_count end
  end
end

-- ------------------------------------------------------------------ SGD
local SGD = setmetatable({name = "SGD"}, {__index = Optimizer})
SGD.__index = SGD
function optim.SGD(params, opts)
  local self = new_optimizer(SGD, params, {lr = 1e-3, momentum = 0, dampening = 0, weight_decay = 0,
    nesterov = false, maximize = false}, opts)
  if self.nesterov and (self.momentum <= 0 or self.dampening ~= 0) then
    error("SGD: nesterov momentum requires a momentum and zero dampening", 2)
  end
  return self
end
function SGD:step()
  local g <close> = medlua.no_grad()
  self.step_count = self.step_count + 1
  for _, p in ipairs(self.params) do
    local d = p.grad
    if d then
      if self.maximize then d = -d end
      if self.weight_decay ~= 0 then d = d + p * self.weight_decay end
      if self.momentum ~= 0 then
        local st = self.state[p]
        if not st then
          st = {momentum_buffer = d:clone()}
          self.state[p] = st
        else
          st.momentum_buffer:mul_(self.momentum):add_(d * (1 - self.dampening))
        end
        if self.nesterov then d = d + st.momentum_buffer * self.momentum else d = st.momentum_buffer end
      end
      p:add_(d * -self.lr)
    end
  end
end

-- ------------------------------------------------------------------ Adam / AdamW
local Adam = setmetatable({name = "Adam"}, {__index = Optimizer})
Adam.__index = Adam
local function adam_like(name, decoupled, default_wd)
  return function(params, opts)
    opts = opts or {}
    local self = new_optimizer(Adam, params, {lr = 1e-3, betas = {0.9, 0.999}, eps = 1e-8,
      weight_decay = default_wd, amsgrad = false}, opts)
    if self.amsgrad then error(name .. ": amsgrad is not supported", 2) end
    self.name, self.decoupled = name, decoupled
    return self
  end
end
optim.Adam = adam_like("Adam", false, 0)
optim.AdamW = adam_like("AdamW", true, 1e-2)

function Adam:step()
  local g <close> = medlua.no_grad()
  self.step_count = self.step_count + 1
  local b1, b2 = self.betas[1], self.betas[2]
  for _, p in ipairs(self.params) do
    local grad = p.grad
    if grad then
      local st = self.state[p]
      if not st then
        st = {exp_avg = medlua.zeros_like(p), exp_avg_sq = medlua.zeros_like(p), step = 0}
        self.state[p] = st
      end
      st.step = st.step + 1
      medlua.adam_step_(p, grad, st.exp_avg, st.exp_avg_sq, self.lr, b1, b2, self.eps, self.weight_decay,
        self.decoupled, st.step)
    end
  end
end

-- ------------------------------------------------------------------ gradient clipping
-- Scales gradients in place so their global norm is at most max_norm; returns the total norm.
function optim.clip_grad_norm_(params, max_norm, norm_type)
  norm_type = norm_type or 2
  local g <close> = medlua.no_grad()
  local total = 0
  for _, p in ipairs(params) do
    if p.grad then
      local n = p.grad:norm(norm_type):item()
      if norm_type == math.huge then total = math.max(total, n) else total = total + n ^ norm_type end
    end
  end
  if norm_type ~= math.huge then total = total ^ (1 / norm_type) end
  local coef = max_norm / (total + 1e-6)
  if coef < 1 then
    for _, p in ipairs(params) do if p.grad then p.grad:mul_(coef) end end
  end
  return total
end

-- ------------------------------------------------------------------ schedulers (medlua.sched)
for k, v in pairs(require "medlua.sched") do optim[k] = v end

return optim
