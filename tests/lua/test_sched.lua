-- Learning-rate schedulers and optimizers against PyTorch / MONAI (tests/ref/sched_ref.json, written by
-- tests/ref/gen_sched_ref.py): every learning rate of every case to 1e-12, OneCycleLR's momentum / beta1,
-- SGD (momentum, dampening, Nesterov, weight decay, maximize), Adam and AdamW trajectories in float64,
-- scheduler state round trips, and argument errors.
local medlua = require "medlua"
local optim = require "medlua.optim"
local sched = require "medlua.sched"
local json = require "medlua.json"
local T = require "medlua.test"

local ref = json.read("tests/ref/sched_ref.json")

local function make_opt(kind, lr, opts, params)
  params = params or {medlua.zeros(1, {dtype = "float64", requires_grad = true})}
  local o = {lr = lr}
  for k, v in pairs(opts or {}) do o[k] = v end
  if kind == "sgd" or kind == "SGD" then return optim.SGD(params, o) end
  if kind == "adam" or kind == "Adam" then return optim.Adam(params, o) end
  if kind == "AdamW" then return optim.AdamW(params, o) end
  error("unknown optimizer " .. kind)
end

local function sched_name(case_name) return case_name:match("^(%S+)") end

local function build(case, opt)
  local args = {}
  for k, v in pairs(case.args) do args[k] = v end
  return optim[sched_name(case.name)](opt, args)
end

for _, case in ipairs(ref.schedulers) do
  T.case("golden " .. case.name, function()
    local opt = make_opt(case.optimizer, case.lr, case.optimizer_opts)
    local s = build(case, opt)
    T.near(opt.lr, case.lrs[1], 1e-12, "lr after construction")
    if case.momentum then
      local m = opt.betas and opt.betas[1] or opt.momentum
      T.near(m, case.momentum[1], 1e-12, "momentum after construction")
    end
    for i = 1, case.steps do
      opt:step()
      if case.metrics then s:step(case.metrics[i]) else s:step() end
      T.near(opt.lr, case.lrs[i + 1], 1e-12, "lr after step " .. i)
      T.eq(s:get_last_lr()[1], opt.lr)
      if case.momentum then
        local m = opt.betas and opt.betas[1] or opt.momentum
        T.near(m, case.momentum[i + 1], 1e-12, "momentum after step " .. i)
      end
      if case.lrs_closed then T.near(opt.lr, case.lrs_closed[i + 1], 1e-12, "closed form at step " .. i) end
    end
  end)
end

T.case("PyTorch's PolynomialLR (recursive) matches the same golden as PolyLR", function()
  for _, case in ipairs(ref.schedulers) do
    if sched_name(case.name) == "PolyLR" then
      local opt = make_opt("sgd", case.lr)
      local s = optim.PolynomialLR(opt, {total_iters = case.args.total_iters, power = case.args.power})
      for i = 1, case.steps do
        s:step()
        T.near(opt.lr, case.lrs[i + 1], 1e-15, case.name .. " step " .. i)
      end
    end
  end
end)

-- loss = sum(w * p^2 + 0.1 * p^3 - p)
local W = medlua.tensor({1.0, 2.0, 0.5, 3.0}, {dtype = "float64"})
local function loss_fn(p) return (W * p * p + p * p * p * 0.1 - p):sum() end

for _, case in ipairs(ref.optimizers) do
  T.case("golden optimizer " .. case.name, function()
    local p = medlua.tensor(case.p0, {dtype = "float64", requires_grad = true})
    local opts = {}
    for k, v in pairs(case.opts) do if k ~= "lr" then opts[k] = v end end
    local opt = make_opt(case.optimizer, case.opts.lr, opts, {p})
    local s
    if case.scheduler then
      local a = {}
      for k, v in pairs(case.scheduler) do if k ~= "type" then a[k] = v end end
      s = optim[case.scheduler.type](opt, a)
    end
    for i = 1, case.steps do
      opt:zero_grad()
      loss_fn(p):backward()
      opt:step()
      if s then s:step() end
      T.near(p, medlua.tensor(case.params[i], {dtype = "float64"}), 1e-12, "params after step " .. i)
    end
  end)
end

T.case("schedulers are re-exported by medlua.optim and accept three call forms", function()
  T.eq(optim.StepLR, sched.StepLR)
  local o1, o2, o3 = make_opt("sgd", 0.1), make_opt("sgd", 0.1), make_opt("sgd", 0.1)
  local a = optim.StepLR(o1, {step_size = 2, gamma = 0.5})
  local b = optim.StepLR{o2, step_size = 2, gamma = 0.5}
  local c = optim.StepLR{optimizer = o3, step_size = 2, gamma = 0.5}
  for _ = 1, 5 do a:step(); b:step(); c:step() end
  T.eq(o1.lr, 0.025); T.eq(o2.lr, 0.025); T.eq(o3.lr, 0.025)
  T.ok(tostring(a):find("StepLR", 1, true))
end)

T.case("scheduler argument errors", function()
  local o = make_opt("sgd", 0.1)
  T.raises(function() optim.StepLR(o, {}) end, "StepLR: option 'step_size' is required")
  T.raises(function() optim.StepLR(o, {step_size = 0}) end, "step_size must be a positive integer")
  T.raises(function() optim.StepLR(o, {step_size = 2, gama = 0.5}) end, "unknown option 'gama'")
  T.raises(function() optim.StepLR({step_size = 2}) end, "expected an optimizer")
  T.raises(function() optim.MultiStepLR(o, {milestones = {1.5}}) end, "milestone 1 is not an integer")
  T.raises(function() optim.ReduceLROnPlateau(o, {factor = 1.5}) end, "factor should be < 1.0")
  T.raises(function() optim.ReduceLROnPlateau(o, {mode = "up"}) end, "mode up is unknown")
  T.raises(function() optim.ReduceLROnPlateau(o):step() end, "expected the monitored metric")
  T.raises(function() optim.OneCycleLR(o, {max_lr = 1}) end, "either total_steps OR")
  T.raises(function() optim.OneCycleLR(o, {max_lr = 1, total_steps = 10, anneal_strategy = "exp"}) end,
    "anneal_strategy must be one of")
  T.raises(function() optim.WarmupCosineSchedule(o, {warmup_steps = 1, t_total = 5, warmup_multiplier = 2}) end,
    "warmup_multiplier must be in 0..1")
  local oc = optim.OneCycleLR(make_opt("sgd", 0.1), {max_lr = 1, total_steps = 3})
  oc:step(); oc:step(); oc:step()
  T.raises(function() oc:step() end, "tried to step 4 times; the specified number of total steps is 3")
  local plain = {lr = 0.1, params = {}, step = function() end}
  T.raises(function() optim.OneCycleLR(plain, {max_lr = 1, total_steps = 3}) end, "must support momentum or beta1")
end)

T.case("ReduceLROnPlateau accepts a 1-element tensor metric", function()
  local o = make_opt("sgd", 1.0)
  local s = optim.ReduceLROnPlateau(o, {patience = 0, factor = 0.5})
  s:step(medlua.tensor({1.0}))
  s:step(medlua.tensor({2.0}))
  T.eq(o.lr, 0.5)
end)

-- A scheduler + optimizer stopped half way and restored from state dicts (through JSON and a safetensors
-- file, as train.fit's checkpoints do) continue exactly like the uninterrupted run.
local function check_resume(make_sched, total, with_metric)
  local function fresh()
    local p = medlua.tensor({0.5, -1.0, 2.0, 0.25}, {dtype = "float64", requires_grad = true})
    local opt = optim.Adam({p}, {lr = 0.05})
    return p, opt, make_sched(opt)
  end
  local function run(p, opt, s, from, to)
    for i = from, to do
      opt:zero_grad(); loss_fn(p):backward(); opt:step()
      if with_metric then s:step(1.0 / i + (i % 3) * 0.2) else s:step() end
    end
  end
  local pa, oa, sa = fresh()
  run(pa, oa, sa, 1, total)
  local pb, ob, sb = fresh()
  local half = total // 2
  run(pb, ob, sb, 1, half)
  local path = os.tmpname() .. ".safetensors"
  medlua.save(path, ob:state_dict(), {sched = json.encode(sb:state_dict())})
  local pc, oc, sc = fresh()
  do
    local g <close> = medlua.no_grad()
    pc:copy_(pb)
  end
  local tensors, meta = medlua.load(path)
  os.remove(path)
  oc:load_state_dict(tensors)
  sc:load_state_dict(json.decode(meta.sched))
  run(pc, oc, sc, half + 1, total)
  T.near(pc, pa, 0, "parameters")
  T.eq(oc.lr, oa.lr)
  T.eq(oc.betas, oa.betas)
  T.eq(sc:get_last_lr(), sa:get_last_lr())
end

T.case("resume: StepLR", function() check_resume(function(o) return optim.StepLR(o, {step_size = 3}) end, 10) end)
T.case("resume: CosineAnnealingLR", function()
  check_resume(function(o) return optim.CosineAnnealingLR(o, {T_max = 7, eta_min = 1e-3}) end, 12)
end)
T.case("resume: OneCycleLR restores beta1", function()
  check_resume(function(o) return optim.OneCycleLR(o, {max_lr = 0.1, total_steps = 12}) end, 12)
end)
T.case("resume: WarmupCosineSchedule", function()
  check_resume(function(o) return optim.WarmupCosineSchedule(o, {warmup_steps = 3, t_total = 12}) end, 12)
end)
T.case("resume: ReduceLROnPlateau", function()
  check_resume(function(o) return optim.ReduceLROnPlateau(o, {patience = 1, factor = 0.5}) end, 12, true)
end)
T.case("resume: MultiStepLR and PolyLR", function()
  check_resume(function(o) return optim.MultiStepLR(o, {milestones = {2, 7}}) end, 10)
  check_resume(function(o) return optim.PolyLR(o, {total_iters = 10}) end, 10)
end)

T.case("scheduler state_dict rejects a different scheduler's state", function()
  local a = optim.StepLR(make_opt("sgd", 0.1), {step_size = 2})
  local b = optim.PolyLR(make_opt("sgd", 0.1), {total_iters = 5})
  T.raises(function() b:load_state_dict(a:state_dict()) end, "PolyLR:load_state_dict: the state is from a StepLR")
end)

T.case("optimizer state_dict holds per-parameter steps and hyper-parameters", function()
  local p = medlua.randn(3, {requires_grad = true})
  local q = medlua.randn(2, {requires_grad = true})
  local opt = optim.Adam({p, q}, {lr = 0.01, betas = {0.8, 0.9}})
  for i = 1, 3 do
    opt:zero_grad()
    local l = (p * p):sum()
    if i == 1 then l = l + (q * q):sum() end -- q gets a gradient only on the first step
    l:backward()
    opt:step()
  end
  local sd = opt:state_dict()
  T.eq(sd["state.0.step"]:item(), 3)
  T.eq(sd["state.1.step"]:item(), 1)
  T.eq(sd["group.betas"]:tolist(), {0.8, 0.9})
  T.ok(sd["state.1.exp_avg"] ~= nil)
  local opt2 = optim.Adam({p:detach():clone(), q:detach():clone()}, {lr = 0.5})
  opt2:load_state_dict(sd)
  T.eq(opt2.state[opt2.params[1]].step, 3)
  T.eq(opt2.state[opt2.params[2]].step, 1)
  T.eq(math.type(opt2.state[opt2.params[2]].step), "integer")
  T.eq(opt2.lr, 0.01)
  T.eq(opt2.betas, {0.8, 0.9})
  local sgd = optim.SGD({p}, {lr = 0.1, momentum = 0.9})
  sgd:zero_grad(); (p * p):sum():backward(); sgd:step()
  local s2 = sgd:state_dict()
  T.eq(s2["group.momentum"]:item(), 0.9)
  T.ok(s2["state.0.momentum_buffer"] ~= nil)
  T.raises(function() sgd:load_state_dict({lr = medlua.tensor({1.0, 2.0})}) end, "'lr' must hold one number")
end)

T.run()
