-- The CUDA device path against the CPU oracle: transfers, elementwise ops (forward and the gradient
-- table), in-place ops, reductions, matmul, autograd on the device, the gate for ops without a device
-- path, and device mixing errors. Runs on a real GPU (build/medlua where medlua.cuda.available()) and,
-- in CI, on the host-emulated device (build/medlua-fakecuda), whose "device" pointers crash any CPU
-- kernel that touches them. Tolerances are those of a GPU against the CPU (cudnn.torch's: 1e-4
-- forward; f64 much tighter).
local medlua = require "medlua"
local T = require "medlua.test"
local F = medlua.F

if not medlua.cuda.available() then
  print("gpu tests: skipped (" .. medlua.cuda.status() .. ")")
  print("0 passed, 0 failed")
  return
end
print("device: " .. medlua.cuda.device_name(0) .. " (" .. medlua.cuda.status() .. ")")

local function close(got, want, rtol, atol, what)
  T.eq(got.device, "cpu", "compare on the host")
  T.eq(got.shape, want.shape, what)
  local d = (got:double() - want:double()):abs()
  local lim = want:double():abs() * rtol + atol
  local bad = (d - lim):amax():item()
  T.ok(bad <= 0, string.format("%s: max excess %.3g over tolerance", what or "values", bad))
end

local TOL = {float32 = {1e-5, 1e-6}, float64 = {1e-12, 1e-13}}

-- fn(inputs...) on the CPU and on the device (float inputs require grad), backward with one seeded random
-- cotangent: the device's output and input gradients equal the CPU's within rt (forward) / rtg (gradients)
local function both(fn, inputs, what, rt, rtg)
  local outs = {}
  for k, dev in ipairs({"cpu", "cuda"}) do
    local xs = {}
    for i, t in ipairs(inputs) do
      xs[i] = t:clone():to(dev)
      if t.dtype == "float64" or t.dtype == "float32" then xs[i].requires_grad = true end
    end
    local y = fn(table.unpack(xs))
    medlua.manual_seed(10)
    local g = medlua.randn(y.shape, {dtype = y.dtype})
    y:backward(g:to(dev))
    outs[k] = {y = y, g = {}}
    for i, t in ipairs(xs) do outs[k].g[i] = t.grad end
  end
  close(outs[2].y:cpu(), outs[1].y, rt, rt, what .. " forward")
  for i = 1, #inputs do
    if outs[1].g[i] then close(outs[2].g[i]:cpu(), outs[1].g[i], rtg, rtg, what .. " grad " .. i) end
  end
end

T.case("transfers keep values, dtype and shape; device names", function()
  local x = medlua.randn({3, 4, 5})
  local d = x:cuda()
  T.eq(d.device, "cuda:0")
  T.eq(d.dtype, "float32")
  T.eq(d.shape, {3, 4, 5})
  T.ok(d:cpu():equal(x))
  T.ok(x:to("cuda"):to("cpu"):equal(x))
  T.ok(x:to({device = "cuda", dtype = "float64"}):cpu():equal(x:double()))
  T.eq(x:cuda():cuda().device, "cuda:0")
  T.ok(x:permute(2, 0, 1):cuda():cpu():equal(x:permute(2, 0, 1)), "a strided view moves as its values")
  T.ok(x:narrow(1, 1, 2):cuda():cpu():equal(x:narrow(1, 1, 2)))
  local z = medlua.zeros({2, 3}, {device = "cuda", dtype = "float64"})
  T.eq(z.device, "cuda:0")
  T.eq(z.dtype, "float64")
  T.eq(medlua.ones_like(z).device, "cuda:0")
  T.eq(medlua.zeros_like(z, {device = "cpu"}).device, "cpu")
  medlua.manual_seed(3)
  local r1 = medlua.randn({4}, {device = "cuda"})
  medlua.manual_seed(3)
  T.ok(r1:cpu():equal(medlua.randn({4})), "same seed, same numbers on the device")
  T.ok(tostring(d):find("device='cuda:0'", 1, true) ~= nil, tostring(d))
  T.eq(d:sum().device, "cuda:0")
  T.ok(math.abs(d:sum():item() - x:sum():item()) < 1e-4)
  local m = medlua.mem()
  T.ok((m.cuda or 0) > 0, "live device bytes are reported")
  T.eq(medlua.cuda.benchmark(true), false)
  T.eq(medlua.cuda.benchmark(false), true)
  local st = medlua.cuda.memory_stats(0)
  T.ok(st.live > 0 and st.peak >= st.live)
end)

T.case("elementwise: binary ops with broadcasting and scalars, f32 and f64", function()
  medlua.manual_seed(1)
  for _, dt in ipairs({"float32", "float64"}) do
    local a = medlua.randn({4, 1, 6}, {dtype = dt})
    local b = medlua.randn({5, 1}, {dtype = dt}):abs() + 0.5
    local da, db = a:cuda(), b:cuda()
    for _, op in ipairs({"add", "sub", "mul", "div", "maximum", "minimum", "atan2", "fmod"}) do
      close(da[op](da, db):cpu(), a[op](a, b), TOL[dt][1], TOL[dt][2], op .. " " .. dt)
    end
    close((da:abs() + 0.1):pow(db):cpu(), (a:abs() + 0.1):pow(b), 1e-5, 1e-6, "pow " .. dt)
    close((da * 2.5 - 1):cpu(), a * 2.5 - 1, TOL[dt][1], TOL[dt][2], "scalars " .. dt)
    close((3 / (db + 1)):cpu(), 3 / (b + 1), TOL[dt][1], TOL[dt][2], "reverse scalar " .. dt)
    for _, op in ipairs({"eq", "ne", "lt", "le", "gt", "ge"}) do
      T.ok(da[op](da, 0.1):cpu():equal(a[op](a, 0.1)), op)
    end
  end
end)

T.case("elementwise: unary ops and activations", function()
  medlua.manual_seed(2)
  local x = medlua.randn({7, 9}, {dtype = "float32"})
  local pos = x:abs() + 0.05
  local dx, dpos = x:cuda(), pos:cuda()
  for _, op in ipairs({"neg", "exp", "abs", "sign", "floor", "ceil", "round", "trunc", "sin", "cos", "tanh",
                       "sigmoid", "relu", "silu", "softplus", "erf", "expm1", "square"}) do
    close(dx[op](dx):cpu(), x[op](x), 1e-5, 1e-6, op)
  end
  for _, op in ipairs({"log", "sqrt", "rsqrt", "reciprocal", "log1p"}) do
    close(dpos[op](dpos):cpu(), pos[op](pos), 1e-5, 1e-6, op)
  end
  close(dx:gelu():cpu(), x:gelu(), 1e-5, 1e-6, "gelu")
  close(dx:gelu("tanh"):cpu(), x:gelu("tanh"), 1e-5, 1e-6, "gelu tanh")
  close(dx:clamp(-0.5, 0.25):cpu(), x:clamp(-0.5, 0.25), 0, 0, "clamp")
  close(dx:leaky_relu(0.1):cpu(), x:leaky_relu(0.1), 1e-6, 0, "leaky_relu")
  close(dx:elu(1.0):cpu(), x:elu(1.0), 1e-5, 1e-6, "elu")
  T.ok(dx:isnan():cpu():equal(x:isnan()))
end)

T.case("in-place ops on the device", function()
  local x = medlua.randn({3, 8})
  local d = x:cuda()
  d:mul_(2):add_(1):relu_():clamp_(0, 2)
  close(d:cpu(), (x * 2 + 1):relu():clamp(0, 2), 1e-6, 1e-7, "chain")
  d:fill_(3)
  T.ok(d:cpu():equal(medlua.full({3, 8}, 3)))
  d:zero_()
  T.eq(d:sum():item(), 0)
  d:copy_(x)
  T.ok(d:cpu():equal(x))
  d:copy_(x:cuda():narrow(0, 0, 1))
  T.ok(d:cpu():equal(x:narrow(0, 0, 1):expand(3, 8)), "copy_ broadcasts")
end)

T.case("reductions: sum, mean, amax, amin, prod over dims", function()
  medlua.manual_seed(4)
  for _, dt in ipairs({"float32", "float64"}) do
    local x = medlua.randn({4, 5, 6}, {dtype = dt})
    local d = x:cuda()
    local rt = dt == "float32" and 1e-5 or 1e-12
    close(d:sum():cpu(), x:sum(), rt, rt, "sum all " .. dt)
    close(d:sum(1):cpu(), x:sum(1), rt, rt, "sum 1")
    close(d:sum({0, 2}, true):cpu(), x:sum({0, 2}, true), rt, rt, "sum 0,2 keepdim")
    close(d:mean(2):cpu(), x:mean(2), rt, rt, "mean")
    close(d:amax(0):cpu(), x:amax(0), 0, 0, "amax")
    close(d:amin({1, 2}):cpu(), x:amin({1, 2}), 0, 0, "amin")
    close((d * 0.5 + 1):prod(2):cpu(), (x * 0.5 + 1):prod(2), rt * 10, rt, "prod")
    close(d:permute(2, 0, 1):sum(0):cpu(), x:permute(2, 0, 1):sum(0), rt, rt, "sum of a strided view")
  end
end)

T.case("var, std, norm, logsumexp on the device, values and gradients", function()
  medlua.manual_seed(17)
  local x0 = medlua.randn({4, 5, 6}, {dtype = "float64"})
  local fns = {
    {"var all", function(t) return t:var() end}, {"std dim", function(t) return t:std(1) end},
    {"var keepdim c0", function(t) return t:var({0, 2}, {correction = 0, keepdim = true}) end},
    {"norm 2", function(t) return t:norm() end}, {"norm 1 dim", function(t) return t:norm(1, 2) end},
    {"norm 3", function(t) return t:norm(3, {0, 1}) end}, {"norm inf", function(t) return t:norm(math.huge, 1) end},
    {"logsumexp", function(t) return t:logsumexp(1) end},
    {"logsumexp keepdim", function(t) return t:logsumexp({0, 2}, true) end},
  }
  for _, f in ipairs(fns) do both(f[2], {x0}, f[1], 1e-10, 1e-8) end
  local ninf = medlua.full({2, 3}, -math.huge, {dtype = "float64"})
  T.ok(ninf:cuda():logsumexp(1):cpu():equal(ninf:logsumexp(1)), "all -inf rows give -inf as on the CPU")
end)

T.case("pad on the device: constant, replicate, reflect, negative pads; gradients", function()
  medlua.manual_seed(18)
  local x0 = medlua.randn({2, 3, 5, 6}, {dtype = "float64"})
  local cases = {{{1, 2}, {mode = "constant", value = 1.5}}, {{2, 1, 0, 3}, {mode = "replicate"}},
                 {{2, 3, 1, 1}, {mode = "reflect"}}, {{-1, 2, 1, -2}, {mode = "constant"}},
                 {{1, 1, 1, 1, 1, 1}, {mode = "constant"}}}
  for _, c in ipairs(cases) do
    both(function(x) return F.pad(x, c[1], c[2]) end, {x0}, "pad " .. c[2].mode .. " [" .. table.concat(c[1], ",") .. "]",
         0, 1e-12)
  end
end)

T.case("argmax/argmin and max/min with indices on the device: first index of ties, NaN, flat", function()
  medlua.manual_seed(20)
  local x = medlua.randn({4, 5, 6})
  x:set(0, 1, 2, 3); x:set(0, 1, 3, 3) -- ties along dim 1 after rounding below
  local r = (x * 2):round()
  local d = r:cuda()
  T.ok(d:argmax(1):cpu():equal(r:argmax(1)), "argmax dim")
  T.ok(d:argmin(2, true):cpu():equal(r:argmin(2, true)), "argmin keepdim")
  T.ok(d:argmax():cpu():equal(r:argmax()), "argmax flat")
  local vd, id = d:max(0)
  local vc, ic = r:max(0)
  T.ok(vd:cpu():equal(vc) and id:cpu():equal(ic), "max with indices")
  local n = medlua.tensor({{1, 0 / 0, 3}, {2, 5, 1}})
  T.ok(n:cuda():argmax(1):cpu():equal(n:argmax(1)), "NaN wins, as on the CPU")
  local g = medlua.randn({3, 4}):cuda(); g.requires_grad = true
  T.raises(function() g:max(1) end, "not differentiable on cuda")
end)

T.case("one_hot on the device: classes given or inferred, any dim, out-of-range labels refused", function()
  local lab = medlua.tensor({{0, 2, 1}, {3, 0, 2}}, {dtype = "int64"})
  local d = lab:cuda()
  T.ok(d:one_hot(5):cpu():equal(lab:one_hot(5)), "classes given")
  T.ok(d:one_hot():cpu():equal(lab:one_hot()), "classes inferred")
  T.eq(d:one_hot(4).dtype, "int64")
  T.raises(function() d:one_hot(3) end, "class value 3 is out of range for num_classes 3")
  T.raises(function() medlua.tensor({0, -1}, {dtype = "int64"}):cuda():one_hot(3) end, "must be non%-negative, found %-1")
end)

T.case("matmul, mm, bmm on the device (cuBLAS)", function()
  medlua.manual_seed(5)
  local cases = {{{5, 7}, {7, 3}}, {{2, 5, 7}, {7, 4}}, {{2, 5, 7}, {2, 7, 4}}, {{3, 1, 4, 6}, {2, 6, 5}},
                 {{7}, {7, 3}}, {{4, 7}, {7}}, {{6}, {6}}}
  for _, c in ipairs(cases) do
    local a, b = medlua.randn(c[1]), medlua.randn(c[2])
    close(a:cuda():matmul(b:cuda()):cpu(), a:matmul(b), 1e-4, 1e-5,
          "matmul [" .. table.concat(c[1], ",") .. "] x [" .. table.concat(c[2], ",") .. "]")
  end
  local a, b = medlua.randn({3, 4}, {dtype = "float64"}), medlua.randn({4, 2}, {dtype = "float64"})
  close(a:cuda():mm(b:cuda()):cpu(), a:mm(b), 1e-12, 1e-12, "mm f64")
  local p, q = medlua.randn({2, 3, 4}), medlua.randn({2, 4, 5})
  close(p:cuda():bmm(q:cuda()):cpu(), p:bmm(q), 1e-4, 1e-5, "bmm")
  close(a:cuda():t():matmul(a:cuda()):cpu(), a:t():matmul(a), 1e-12, 1e-12, "transposed operand")
end)

T.case("autograd on the device gives the CPU's gradients", function()
  medlua.manual_seed(6)
  local x0, w0 = medlua.randn({4, 6}, {dtype = "float64"}), medlua.randn({6, 3}, {dtype = "float64"})
  local function run(dev)
    local x = x0:clone():to(dev); x.requires_grad = true
    local w = w0:clone():to(dev); w.requires_grad = true
    local h = x:matmul(w)
    h:relu_()
    local y = (h:sigmoid() * h + h:exp():mean(1, true)):sum()
    y:backward()
    return y:item(), x.grad, w.grad
  end
  local yc, gxc, gwc = run("cpu")
  local yd, gxd, gwd = run("cuda")
  T.ok(math.abs(yc - yd) < 1e-10)
  T.eq(gxd.device, "cuda:0")
  close(gxd:cpu(), gxc, 1e-10, 1e-12, "x.grad")
  close(gwd:cpu(), gwc, 1e-10, 1e-12, "w.grad")
  -- a leaf on the host, moved: its gradient comes back to the host
  local a = medlua.randn({5}, {dtype = "float64", requires_grad = true})
  local s = (a:cuda() * 3):sum()
  s:backward()
  T.eq(a.grad.device, "cpu")
  T.ok(a.grad:equal(medlua.full({5}, 3, {dtype = "float64"})))
end)

T.case("convolutions (cuDNN): 1-3-D, transposed, stride, padding, dilation, groups, bias; gradients", function()
  medlua.manual_seed(7)
  local cases = {
    {fn = "conv1d", x = {2, 4, 11}, w = {6, 2, 3}, o = {stride = 2, padding = 1, groups = 2}},
    {fn = "conv2d", x = {2, 3, 9, 8}, w = {5, 3, 3, 3}, o = {padding = 2, dilation = 2}},
    {fn = "conv3d", x = {1, 2, 6, 7, 5}, w = {4, 2, 3, 3, 3}, o = {stride = {1, 2, 1}, padding = 1}},
    {fn = "conv_transpose2d", x = {2, 4, 5, 6}, w = {4, 3, 3, 3}, o = {stride = 2, padding = 1, output_padding = 1}},
    {fn = "conv_transpose3d", x = {1, 4, 3, 4, 3}, w = {4, 2, 2, 2, 2}, o = {stride = 2, groups = 2}},
  }
  for _, c in ipairs(cases) do
    for _, dt in ipairs({"float32", "float64"}) do
      local x0, w0 = medlua.randn(c.x, {dtype = dt}), medlua.randn(c.w, {dtype = dt})
      local nb = c.fn:find("transpose") and c.w[2] * (c.o.groups or 1) or c.w[1]
      local b0 = medlua.randn({nb}, {dtype = dt})
      local function run(dev)
        local x, w, b = x0:clone():to(dev), w0:clone():to(dev), b0:clone():to(dev)
        x.requires_grad, w.requires_grad, b.requires_grad = true, true, true
        local y = F[c.fn](x, w, b, c.o)
        medlua.manual_seed(8)
        local g = medlua.randn(y.shape, {dtype = dt})
        y:backward(g:to(dev))
        return y, x.grad, w.grad, b.grad
      end
      local rt = dt == "float32" and 1e-4 or 1e-10
      local yc, gxc, gwc, gbc = run("cpu")
      local yd, gxd, gwd, gbd = run("cuda")
      T.eq(yd.device, "cuda:0")
      close(yd:cpu(), yc, rt, rt, c.fn .. " y " .. dt)
      close(gxd:cpu(), gxc, rt * 20, rt * 20, c.fn .. " dx " .. dt)
      close(gwd:cpu(), gwc, rt * 20, rt * 20, c.fn .. " dw " .. dt)
      close(gbd:cpu(), gbc, rt * 20, rt * 20, c.fn .. " db " .. dt)
    end
  end
end)

T.case("softmax, log_softmax, norms (+PReLU), layer norm, dropout, cat: values, gradients, running stats", function()
  medlua.manual_seed(9)
  local x = medlua.randn({3, 5, 4, 6}, {dtype = "float64"})
  local w, b = medlua.randn({5}, {dtype = "float64"}), medlua.randn({5}, {dtype = "float64"})
  both(function(t) return F.softmax(t, 1) end, {x}, "softmax", 1e-10, 10 * 1e-10)
  both(function(t) return F.log_softmax(t, -1) end, {x}, "log_softmax", 1e-10, 10 * 1e-10)
  both(function(t, ww, bb) return F.instance_norm(t, {weight = ww, bias = bb}) end, {x, w, b}, "instance_norm", 1e-9, 1e-9 * 10)
  both(function(t, ww, bb) return F.group_norm(t, 5, {weight = ww, bias = bb}) end, {x, w, b}, "group_norm", 1e-9, 1e-9 * 10)
  both(function(t, ww, bb) return F.layer_norm(t, {4, 6}) end, {x, w, b}, "layer_norm", 1e-9, 1e-9 * 10)
  both(function(t, u) return medlua.cat({t, u}, 1) end, {x, x * 2}, "cat", 1e-12, 10 * 1e-12)
  -- batch norm in training updates the running statistics like the CPU
  local rm_c, rv_c = medlua.zeros({5}, {dtype = "float64"}), medlua.ones({5}, {dtype = "float64"})
  local rm_d, rv_d = rm_c:cuda(), rv_c:cuda()
  local yc = F.batch_norm(x, rm_c, rv_c, {weight = w, bias = b, training = true, momentum = 0.1})
  local yd = F.batch_norm(x:cuda(), rm_d, rv_d, {weight = w:cuda(), bias = b:cuda(), training = true, momentum = 0.1})
  close(yd:cpu(), yc, 1e-9, 1e-9, "batch_norm train")
  close(rm_d:cpu(), rm_c, 1e-9, 1e-12, "running_mean")
  close(rv_d:cpu(), rv_c, 1e-9, 1e-12, "running_var")
  local ye = F.batch_norm(x:cuda(), rm_d, rv_d, {weight = w:cuda(), bias = b:cuda(), training = false})
  close(ye:cpu(), F.batch_norm(x, rm_c, rv_c, {weight = w, bias = b, training = false}), 1e-9, 1e-9, "batch_norm eval")
  -- dropout: a different mask source than the CPU kernel; check its statistics and scaling
  local ones = medlua.ones({200, 100}):cuda()
  local dr = F.dropout(ones, {p = 0.3, training = true}):cpu()
  local kept = dr:gt(0):float():mean():item()
  T.ok(math.abs(kept - 0.7) < 0.02, "dropout keeps ~70%: " .. kept)
  T.ok(math.abs(dr:amax():item() - 1 / 0.7) < 1e-5, "kept values are scaled by 1/(1-p)")
end)

T.case("a small conv net trains on the device as on the CPU (module:cuda(), Adam, mse)", function()
  local nn, optim = require "medlua.nn", require "medlua.optim"
  local function run(dev)
    medlua.manual_seed(11)
    -- no bias before the batch norm: its gradient is 0 up to rounding, and Adam turns rounding into +-lr steps
    local model = nn.Sequential(nn.Conv2d(2, 4, 3, {padding = 1, bias = false}), nn.BatchNorm2d(4), nn.ReLU(),
                                nn.Conv2d(4, 1, 3, {padding = 1}))
    for _, p in ipairs(model:parameters()) do
      medlua.no_grad(function() p:copy_(p:double()) end)
    end
    model:to(dev)
    local opt = optim.Adam(model:parameters(), {lr = 1e-2})
    local x = medlua.randn({2, 2, 8, 8}):to(dev)
    local target = medlua.randn({2, 1, 8, 8}):to(dev)
    local losses = {}
    for i = 1, 4 do
      opt:zero_grad()
      local loss = F.mse_loss(model:forward(x), target)
      loss:backward()
      opt:step()
      losses[i] = loss:item()
    end
    return losses, model
  end
  local lc, mc = run("cpu")
  local ld, md = run("cuda")
  for i = 1, #lc do T.ok(math.abs(lc[i] - ld[i]) <= 1e-4 * math.abs(lc[i]) + 1e-6, ("step %d: %g vs %g"):format(i, lc[i], ld[i])) end
  T.ok(ld[4] < ld[1], "the loss falls on the device")
  local pc, pd = mc:parameters(), md:parameters()
  for i = 1, #pc do
    T.eq(pd[i].device, "cuda:0")
    close(pd[i]:cpu(), pc[i], 1e-3, 1e-5, "parameter " .. i)
  end
end)

T.case("cross_entropy on the device: indices, ignore_index, class weights, label smoothing, probabilities", function()
  medlua.manual_seed(12)
  local x0 = medlua.randn({3, 4, 5, 2}, {dtype = "float64"})
  local t = medlua.randint(0, 4, {3, 5, 2})
  t:set(-100, 1, 2, 1) -- ignored
  local w = medlua.tensor({0.5, 1, 2, 1.5}, {dtype = "float64"})
  local q = F.softmax(medlua.randn({3, 4, 5, 2}, {dtype = "float64"}), 1)
  local configs = {{}, {weight = true}, {label_smoothing = 0.1}, {weight = true, label_smoothing = 0.2},
                   {reduction = "sum"}, {reduction = "none", weight = true}, {prob = true}, {prob = true, label_smoothing = 0.1}}
  for _, c in ipairs(configs) do
    local function run(dev)
      local x = x0:clone():to(dev); x.requires_grad = true
      local opts = {weight = c.weight and w:to(dev) or nil, label_smoothing = c.label_smoothing, reduction = c.reduction}
      local y = F.cross_entropy(x, c.prob and q:to(dev) or t:to(dev), opts)
      y:sum():backward()
      return y, x.grad
    end
    local yc, gc = run("cpu")
    local yd, gd = run("cuda")
    local what = "cross_entropy " .. (c.weight and "w " or "") .. (c.label_smoothing and "ls " or "") ..
                 (c.reduction or "mean") .. (c.prob and " prob" or "")
    close(yd:cpu(), yc, 1e-10, 1e-12, what)
    close(gd:cpu(), gc, 1e-9, 1e-12, what .. " grad")
  end
end)

T.case("a MONAI-shaped U-Net train step (DiceCE, Adam) on the device gives the CPU's loss and weights", function()
  local nn, optim, losses = require "medlua.nn", require "medlua.optim", require "medlua.losses"
  local function run(dev)
    medlua.manual_seed(13)
    local net = nn.UNet{spatial_dims = 3, in_channels = 1, out_channels = 3, channels = {4, 8, 16},
                        strides = {2, 2}, num_res_units = 1, norm = "batch"}
    net:to(dev)
    net:train()
    local lossf = losses.DiceCELoss{to_onehot_y = true, softmax = true}
    local opt = optim.Adam(net:parameters(), {lr = 1e-3})
    medlua.manual_seed(14)
    local x = medlua.randn({2, 1, 16, 16, 16}):to(dev)
    local y = medlua.randint(0, 3, {2, 1, 16, 16, 16}):to(dev)
    local out = {}
    for i = 1, 2 do
      opt:zero_grad()
      local loss = lossf(net:forward(x), y)
      loss:backward()
      opt:step()
      out[i] = loss:item()
    end
    return out, net
  end
  local lc, nc = run("cpu")
  local ld, nd = run("cuda")
  for i = 1, 2 do T.ok(math.abs(lc[i] - ld[i]) < 1e-4, ("step %d loss %.6f (cpu) vs %.6f (device)"):format(i, lc[i], ld[i])) end
  local pc, pd = nc:parameters(), nd:parameters()
  T.eq(#pc, #pd)
  local worst = 0
  for i = 1, #pc do worst = math.max(worst, (pd[i]:cpu() - pc[i]):abs():amax():item()) end
  T.ok(worst < 5e-3, "largest weight difference after 2 Adam steps (lr 1e-3): " .. worst)
end)

T.case("pooling (cuDNN): max/avg 1-3-D, stride, padding, count_include_pad, adaptive; gradients", function()
  medlua.manual_seed(15)
  local cases = {
    {fn = "max_pool2d", x = {2, 3, 9, 8}, a = {3, {stride = 2, padding = 1}}},
    {fn = "max_pool3d", x = {1, 2, 6, 6, 4}, a = {2}},
    {fn = "avg_pool1d", x = {2, 3, 10}, a = {3, {stride = 2, padding = 1}}},
    {fn = "avg_pool2d", x = {2, 3, 8, 8}, a = {3, {stride = 1, padding = 1, count_include_pad = false}}},
    {fn = "avg_pool3d", x = {1, 2, 4, 6, 8}, a = {2}},
    {fn = "adaptive_avg_pool2d", x = {2, 3, 8, 12}, a = {{4, 3}}},
  }
  for _, c in ipairs(cases) do
    both(function(x) return F[c.fn](x, table.unpack(c.a)) end, {medlua.randn(c.x, {dtype = "float64"})}, c.fn,
         1e-12, 1e-12)
  end
  T.raises(function() F.adaptive_avg_pool2d(medlua.randn({1, 1, 7, 7}):cuda(), {3, 3}) end, "evenly tiling")
end)

T.case("ops without a device path are refused by name; devices do not mix", function()
  local d = medlua.randn({2, 3, 8, 8}):cuda()
  T.raises(function() F.interpolate(d, {scale_factor = 2}) end, "not implemented for cuda:0 tensors yet")
  T.raises(function() d:index_select(0, medlua.tensor({0}, {dtype = "int64"})) end, "not implemented for cuda")
  T.raises(function() d:cumsum(1) end, "not implemented for cuda")
  T.raises(function() d:index_select(1, medlua.tensor({0}, {dtype = "int64"})) end, "not implemented for cuda")
  T.raises(function() local _ = d + medlua.randn({2, 3, 8, 8}) end, "one device")
  T.raises(function() d:matmul(medlua.randn({8, 2})) end, "cuda:0")
  T.raises(function() medlua.save("/tmp/medlua_gpu_test.safetensors", {x = d}) end, "move it with :cpu")
  T.raises(function() medlua.ones(2):to("cuda:7") end, "does not exist")
  T.raises(function() medlua.ones(2):cuda("gpu") end, "bad device")
end)

T.run()
