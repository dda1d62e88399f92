-- nn modules, optimizers and checkpoints.
local medlua = require "medlua"
local nn = require "medlua.nn"
local optim = require "medlua.optim"
local T = require "medlua.test"
local F = medlua.F

T.case("MONAI UNet parameter counts", function()
  local cfg = {spatial_dims = 3, in_channels = 1, out_channels = 3, channels = {16, 32, 64, 128, 256},
    strides = {2, 2, 2, 2}, num_res_units = 2, norm = "batch"}
  T.eq(nn.UNet(cfg):num_parameters(), 4809920)
  cfg.out_channels = 2
  T.eq(nn.UNet(cfg):num_parameters(), 4808917)
  cfg.out_channels, cfg.norm = 3, "instance"
  T.eq(nn.UNet(cfg):num_parameters(), 4807482)
end)

T.case("UNet state_dict keys follow MONAI's names", function()
  local net = nn.UNet{spatial_dims = 2, in_channels = 1, out_channels = 2, channels = {4, 8, 16},
    strides = {2, 2}, num_res_units = 2, norm = "batch"}
  local sd = net:state_dict()
  for _, k in ipairs{"model.0.conv.unit0.conv.weight", "model.0.conv.unit0.adn.N.weight",
    "model.0.conv.unit0.adn.N.running_var", "model.0.conv.unit0.adn.A.weight", "model.0.conv.unit1.conv.bias",
    "model.0.residual.weight", "model.1.submodule.0.conv.unit0.conv.weight",
    "model.1.submodule.1.submodule.conv.unit0.conv.weight", "model.1.submodule.2.0.conv.weight",
    "model.2.0.conv.weight", "model.2.0.adn.N.bias", "model.2.1.conv.unit0.conv.weight"} do
    T.ok(sd[k] ~= nil, "missing key " .. k)
  end
  -- the top up-layer ends conv-only: no norm/act after its last conv
  T.ok(sd["model.2.1.conv.unit0.adn.N.weight"] == nil, "top layer must end conv-only")
  -- transposed conv weight layout [in, out, k, k]; the top up-layer sees the skip concat: 2 * 4 channels
  local w = sd["model.2.0.conv.weight"]
  T.eq(table.concat(w:size(), ","), "8,2,3,3")
end)

T.case("UNet forward shapes and divisibility error", function()
  local net = nn.UNet{spatial_dims = 3, in_channels = 1, out_channels = 3, channels = {4, 8, 16},
    strides = {2, 2}, num_res_units = 1, norm = "batch"}
  local y = net:forward(medlua.randn(2, 1, 8, 8, 8))
  T.eq(table.concat(y:size(), ","), "2,3,8,8,8")
  T.raises(function() net:forward(medlua.randn(1, 1, 8, 8, 6)) end, "divisible by 4")
end)

T.case("Sequential error names the failing module", function()
  local m = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))
  T.raises(function() m:forward(medlua.randn(2, 3)) end, "In 1 module of Sequential")
end)

T.case("train/eval switches batch norm statistics", function()
  local bn = nn.BatchNorm1d(3)
  local x = medlua.randn(16, 3) * 2 + 5
  bn:forward(x)
  T.ok(math.abs(bn.running_mean:mean():item() - 0.5) < 0.3, "running mean moved by momentum 0.1")
  T.eq(bn.num_batches_tracked:item(), 1)
  bn:eval()
  local y = bn:forward(x)
  T.ok(y:mean():item() > 1, "eval uses running statistics")
end)

T.case("state_dict round trip through safetensors", function()
  local dir = os.tmpname()
  os.remove(dir)
  local path = dir .. ".safetensors"
  local a = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.PReLU())
  a:save(path, {note = "test"})
  local b = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.PReLU())
  b:load(path)
  local x = medlua.randn(2, 1, 6, 6)
  a:eval(); b:eval()
  T.near(a:forward(x), b:forward(x), 0)
  local c = nn.Sequential(nn.Conv2d(1, 5, 3), nn.BatchNorm2d(5), nn.PReLU())
  T.raises(function() c:load(path) end, "shape mismatch")
  os.remove(path)
end)

T.case("SGD with momentum minimizes the Rosenbrock function", function()
  local p = medlua.tensor({-1.5, 2.0}, {dtype = "float64", requires_grad = true})
  local opt = optim.SGD({p}, {lr = 1e-3, momentum = 0.9})
  for _ = 1, 3000 do
    opt:zero_grad()
    local x, y = p:select(0, 0), p:select(0, 1)
    local f = (1 - x) ^ 2 + (y - x * x) ^ 2 * 100
    f:backward()
    opt:step()
  end
  T.near(p, medlua.tensor({1, 1}, {dtype = "float64"}), 0.05)
end)

T.case("Adam matches the PyTorch update rule", function()
  local p = medlua.tensor({0.5, -1.0, 2.0}, {dtype = "float64", requires_grad = true})
  local opt = optim.Adam({p}, {lr = 0.1, betas = {0.9, 0.99}, eps = 1e-8, weight_decay = 0.01})
  local ref = {0.5, -1.0, 2.0}
  local m, v = {0, 0, 0}, {0, 0, 0}
  for step = 1, 3 do
    opt:zero_grad()
    local loss = (p * p * p):sum()
    loss:backward()
    opt:step()
    for i = 1, 3 do
      local g = 3 * ref[i] * ref[i] + 0.01 * ref[i]
      m[i] = 0.9 * m[i] + 0.1 * g
      v[i] = 0.99 * v[i] + 0.01 * g * g
      local mh, vh = m[i] / (1 - 0.9 ^ step), v[i] / (1 - 0.99 ^ step)
      ref[i] = ref[i] - 0.1 * mh / (math.sqrt(vh) + 1e-8)
    end
  end
  T.near(p, medlua.tensor(ref, {dtype = "float64"}), 1e-12)
end)

T.case("AdamW decouples weight decay", function()
  local p = medlua.tensor({1.0}, {dtype = "float64", requires_grad = true})
  local opt = optim.AdamW({p}, {lr = 0.1, weight_decay = 0.5})
  opt:zero_grad()
  local loss = p:sum() * 0
  loss:backward()
  opt:step()
  -- zero gradient: only the decoupled decay acts: p = 1 * (1 - 0.1*0.5)
  T.near(p:item(), 0.95, 1e-12)
end)

T.case("optimizer state round trip", function()
  local p = medlua.randn(3, {requires_grad = true})
  local opt = optim.Adam({p}, {lr = 0.01})
  for _ = 1, 2 do opt:zero_grad(); (p * p):sum():backward(); opt:step() end
  local sd = opt:state_dict()
  local q = p:detach():clone()
  q.requires_grad = true
  local opt2 = optim.Adam({q}, {lr = 0.01})
  opt2:load_state_dict(sd)
  opt:zero_grad(); (p * p):sum():backward(); opt:step()
  opt2:zero_grad(); (q * q):sum():backward(); opt2:step()
  T.near(p, q, 1e-7)
  T.raises(function() optim.Adam({p}, {lr = 0.1, momentum = 0.9}) end, "unknown option 'momentum'")
end)

T.case("clip_grad_norm_", function()
  local p = medlua.tensor({3.0, 4.0}, {requires_grad = true})
  p:sum():backward()
  p.grad = medlua.tensor({3.0, 4.0})
  local n = optim.clip_grad_norm_({p}, 1.0)
  T.near(n, 5, 1e-6)
  T.near(p.grad:norm():item(), 1, 1e-5)
end)

T.case("100 training steps leave no live tensors behind", function()
  local net = nn.Sequential(nn.Conv2d(1, 4, 3, {padding = 1}), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))
  local opt = optim.Adam(net:parameters(), {lr = 1e-3})
  local x, y = medlua.randn(2, 1, 8, 8), medlua.randn(2, 1, 8, 8)
  local function step()
    opt:zero_grad()
    local loss = F.mse_loss(net:forward(x), y)
    loss:backward()
    opt:step()
  end
  step() -- optimizer state is created on the first step
  opt:zero_grad()
  collectgarbage(); collectgarbage()
  local m0 = medlua.mem()
  for _ = 1, 100 do step() end
  opt:zero_grad()
  collectgarbage(); collectgarbage()
  local m1 = medlua.mem()
  T.eq(m1.tensors, m0.tensors)
  T.eq(m1.cpu, m0.cpu)
end)

T.case("fused norm + PReLU: gradcheck in float64 and equal to norm then PReLU", function()
  local gradcheck = require "medlua.gradcheck"
  local F = medlua.F
  medlua.manual_seed(7)
  local function d(...) return medlua.randn(...):double() end
  for _, npw in ipairs{1, 3} do
    local x = d(2, 3, 4, 3):requires_grad_()
    local w, b = (d(3) * 0.5 + 1):requires_grad_(), d(3):requires_grad_()
    local pw = (medlua.rand(npw):double() * 0.5):requires_grad_()
    local rm, rv = medlua.zeros(3):double(), medlua.ones(3):double()
    T.ok(gradcheck(function(x_, w_, b_, p_)
      return F.batch_norm(x_, rm:clone(), rv:clone(), {weight = w_, bias = b_, training = true, prelu = p_})
    end, {x, w, b, pw}))
    T.ok(gradcheck(function(x_, w_, b_, p_)
      return F.instance_norm(x_, {weight = w_, bias = b_, prelu = p_})
    end, {x, w, b, pw}))
    T.ok(gradcheck(function(x_, p_) return F.group_norm(x_, 3, {prelu = p_}) end, {x, pw}))
    -- eval mode (constant statistics)
    T.ok(gradcheck(function(x_, p_)
      return F.batch_norm(x_, rm, rv, {weight = w, bias = b, training = false, prelu = p_})
    end, {x, pw}))
    -- same values as the two ops in sequence
    local y1 = F.batch_norm(x, rm:clone(), rv:clone(), {weight = w, bias = b, training = true, prelu = pw})
    local y2 = F.prelu(F.batch_norm(x, rm:clone(), rv:clone(), {weight = w, bias = b, training = true}), pw)
    T.near((y1 - y2):abs():max():item(), 0, 1e-12)
  end
  T.raises(function() F.batch_norm(medlua.randn(2, 3, 4), nil, nil, {training = true, prelu = medlua.ones(2)}) end,
    "prelu weight has shape [2], expected [1] or [3]")
end)

T.case("nn.ADN fuses a norm followed by PReLU (same output and gradients as unfused)", function()
  medlua.manual_seed(3)
  for _, norm in ipairs{"batch", "instance", {"group", {num_groups = 2}}} do
    local adn = nn.ADN{ordering = "NDA", norm = norm, act = "prelu", dims = 3, channels = 4}
    adn:train()
    medlua.no_grad(function() for _, p in ipairs(adn:parameters()) do p:uniform_(-1, 1) end end)
    local x = medlua.randn(2, 4, 3, 4, 5):requires_grad_()
    local g = medlua.randn(2, 4, 3, 4, 5)
    local calls = 0
    local saved = medlua.F.prelu
    medlua.F.prelu = function(...) calls = calls + 1 return saved(...) end
    local y1 = adn(x)
    T.eq(calls, 0, "fused path must not call F.prelu")
    y1:backward(g)
    local gx1 = x.grad:clone()
    local gp1 = {}
    for i, p in ipairs(adn:parameters()) do gp1[i] = p.grad:clone() p.grad = nil end
    x.grad = nil
    nn.ADN.fuse = false
    local y2 = adn(x)
    nn.ADN.fuse = nil
    medlua.F.prelu = saved
    T.eq(calls, 1, "unfused path calls F.prelu")
    y2:backward(g)
    T.near((y1 - y2):abs():max():item(), 0, 1e-6)
    T.near((gx1 - x.grad):abs():max():item(), 0, 1e-5)
    for i, p in ipairs(adn:parameters()) do T.near((gp1[i] - p.grad):abs():max():item(), 0, 1e-4) end
  end
end)

T.run()
