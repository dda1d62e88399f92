-- Autograd from Lua: backward, accumulation, gradients of non-scalars, detach, retain_graph,
-- version checks, grad mode, gradcheck of common ops, and no leaks over training steps.
local medlua = require "medlua"
local T = require "medlua.test"
local gradcheck = require "medlua.gradcheck"
local F = medlua.F
T.leak_check(true)

local function f64(t) return medlua.tensor(t, {dtype = "float64", requires_grad = true}) end

T.case("backward of a scalar fills .grad of leaves", function()
  local x = f64({1, 2, 3})
  local y = (x * x):sum()
  T.eq(y.grad_fn ~= nil, true)
  T.eq(y.is_leaf, false)
  T.eq(x.is_leaf, true)
  T.eq(x.grad, nil)
  y:backward()
  T.tensor_eq(x.grad, {2, 4, 6})
  T.eq(x.grad.requires_grad, false)
  T.eq(x.grad.dtype, "float64")
end)

T.case("gradients accumulate until reset", function()
  local x = f64({1, 2})
  ;(x * 3):sum():backward()
  ;(x * 3):sum():backward()
  T.tensor_eq(x.grad, {6, 6})
  x.grad = nil
  T.eq(x.grad, nil)
  ;(x * x):sum():backward()
  T.tensor_eq(x.grad, {2, 4})
  x.grad = medlua.zeros(2, {dtype = "float64"})
  ;(x * 1):sum():backward()
  T.tensor_eq(x.grad, {1, 1})
end)

T.case("non-scalar backward needs a gradient argument", function()
  local x = f64({{1, 2}, {3, 4}})
  local y = x * 2
  T.raises(function() y:backward() end, "implicitly created only for")
  y:backward(medlua.tensor({{1, 0}, {0, 1}}, {dtype = "float64"}))
  T.tensor_eq(x.grad, {{2, 0}, {0, 2}})
  local z = x * 5
  T.raises(function() z:backward(medlua.ones(3, {dtype = "float64"})) end, "gradient has shape %[3%]")
end)

T.case("broadcasting un-broadcasts gradients", function()
  local a = f64({{1, 2, 3}, {4, 5, 6}})
  local b = f64({10, 20, 30})
  local c = f64({{1}, {2}})
  local s = ((a + b) * c):sum()
  s:backward()
  T.tensor_eq(b.grad, {3, 3, 3})
  T.tensor_eq(c.grad, {{66}, {75}})
  T.tensor_eq(a.grad, {{1, 1, 1}, {2, 2, 2}})
end)

T.case("gradients flow through views", function()
  local x = f64({{1, 2, 3}, {4, 5, 6}})
  local y = x:narrow(1, 1, 2):permute(1, 0):reshape(4) * medlua.tensor({1, 2, 3, 4}, {dtype = "float64"})
  y:sum():backward()
  T.tensor_eq(x.grad, {{0, 1, 3}, {0, 2, 4}})
  local z = f64({1, 2})
  z:unsqueeze(0):expand(3, 2):sum():backward()
  T.tensor_eq(z.grad, {3, 3})
  local w = f64({{1, 2}, {3, 4}})
  w:select(0, 1):sum():backward()
  T.tensor_eq(w.grad, {{0, 0}, {1, 1}})
  local v = f64({1, 2, 3, 4})
  v:slice(0, 0, 4, 2):sum():backward()
  T.tensor_eq(v.grad, {1, 0, 1, 0})
end)

T.case("detach stops gradients and shares storage", function()
  local x = f64({1, 2})
  local d = x:detach()
  T.eq(d.requires_grad, false)
  T.eq(d.grad_fn, nil)
  local y = (x * d):sum()
  y:backward()
  T.tensor_eq(x.grad, {1, 2})
  medlua.no_grad(function() d:set(10, 0) end)
  T.eq(x:get(0), 10)
  T.eq(x.data.requires_grad, false)
end)

T.case("retain_graph allows a second backward; without it the graph is freed", function()
  local x = f64({1, 2})
  local y = (x * x):sum()
  y:backward({retain_graph = true})
  y:backward()
  T.tensor_eq(x.grad, {4, 8})
  T.raises(function() y:backward() end, "already freed")
  local z = (x * x):sum()
  z:backward(nil, {retain_graph = true})
  z:backward(nil, {retain_graph = false})
  T.raises(function() z:backward() end, "retain_graph")
end)

T.case("in-place change of a saved tensor is detected", function()
  local x = f64({1, 2, 3})
  local h = x * 2
  local y = (h * h):sum() -- saves h
  medlua.no_grad(function() h:add_(1) end)
  T.raises(function() y:backward() end, "modified in place")
  local a = f64({1, 2})
  local e = a:exp() -- saves its output
  local s = e:sum()
  e:mul_(2)
  T.raises(function() s:backward() end, "modified in place")
end)

T.case("gradcheck: in-place ops on tensors in a graph, followed by ops that save their input", function()
  medlua.manual_seed(11)
  local x = medlua.randn({1, 2, 5, 5}, {dtype = "float64", requires_grad = true})
  local w = medlua.randn({3, 2, 3, 3}, {dtype = "float64", requires_grad = true})
  local b = medlua.randn({1, 2, 5, 5}, {dtype = "float64", requires_grad = true})
  -- relu_ then conv2d (the conv saves the relu's output): the case that once gave wrong gradients
  T.ok(gradcheck(function(xx, ww)
    local h = xx * 2
    h:relu_()
    return F.conv2d(h, ww, nil, {padding = 1})
  end, {x, w}))
  -- unary, clamp_ and binary in-place ops, each feeding an op that saves its input
  T.ok(gradcheck(function(xx, bb)
    local h = xx + 0.1
    h:sigmoid_()            -- saves its output
    h:mul_(bb)              -- operand that requires grad
    local g = xx * 1.5
    g:clamp_(-0.5, 0.7)
    g:add_(bb, nil)         -- tensor operand
    g:exp_()
    local k = xx * 1
    k:masked_fill_(xx:gt(0.3), 2.0)
    return (h * h):sum(1), g * xx, k * bb
  end, {x, b}))
  -- an operand aliasing the target, and a scalar operand
  T.ok(gradcheck(function(xx)
    local h = xx * 3
    h:add_(h)
    h:div_(0.7)
    h:pow_(2)
    return h
  end, {x}))
  -- copy_ of a source that requires grad into a plain buffer: the buffer takes the source's history
  T.ok(gradcheck(function(xx)
    local buf = medlua.zeros({1, 2, 5, 5}, {dtype = "float64"})
    buf:copy_(xx:tanh())
    return buf * buf
  end, {x}))
  -- f32 against f64: the same in-place chain gives the same gradients
  local function grads(dt)
    local xx = x:detach():to(dt); xx.requires_grad = true
    local h = xx * 2
    h:relu_()
    F.conv2d(h, w:detach():to(dt), nil, {padding = 1}):sum():backward()
    return xx.grad:to("float64")
  end
  T.ok((grads("float32") - grads("float64")):abs():max():item() < 1e-4)
end)

T.case("an in-place op keeps earlier consumers of the target on its old history", function()
  local x = f64({-1, 2, 3})
  local h = x * 2
  local z = h * 3           -- recorded before relu_
  h:relu_()
  ;(z + h):sum():backward()
  T.tensor_eq(x.grad, {6, 8, 8})
  -- an operand that requires grad makes a plain target join the graph
  local y = f64({1, 2, 3})
  local buf = medlua.ones(3, {dtype = "float64"})
  buf:mul_(y)
  T.eq(buf.requires_grad, true)
  ;(buf * y):sum():backward()
  T.tensor_eq(y.grad, {2, 4, 6})
end)

T.case("fill_, zero_ and random fills cut the history of a tensor in a graph", function()
  local x = f64({1, 2})
  local h = x * 2
  h:zero_()
  T.eq(h.requires_grad, false)
  ;(h + x):sum():backward()
  T.tensor_eq(x.grad, {1, 1})
  local g = x * 2
  g:normal_()
  T.eq(g.grad_fn, nil)
end)

T.case("an in-place op through another view is an error where its history is used, never a wrong gradient", function()
  local x = f64({-1, 2, 3, -4})
  local y = x * 2
  local v = y:view(2, 2)
  v:relu_()
  T.raises(function() y:sum():backward() end, "sharing its memory")
  T.raises(function() local _ = y * 2 end, "sharing its memory")
  -- a view taken after the in-place op is fine
  local y2 = x * 2
  y2:relu_()
  y2:view(2, 2):sum():backward()
  T.tensor_eq(x.grad, {0, 2, 2, 0})
  -- an in-place op that a saved tensor sees is still the version error
  local h = x * 2
  local z = (h * h):sum()
  h:relu_()
  T.raises(function() z:backward() end, "modified in place")
end)

T.case("in-place ops autograd does not record are refused on tensors in a graph", function()
  local x = f64({1, 2, 3})
  local h = x * 2
  T.raises(function() h:set(5, 1) end, "part of an autograd graph")
  local c = medlua.zeros(3, {dtype = "float64"})
  T.raises(function() c:scatter_add_(0, medlua.tensor({0, 1, 2}, {dtype = "int64"}), h) end, "does not record")
  -- under no_grad nothing is recorded and nothing is refused (PyTorch's rule)
  medlua.no_grad(function() h:relu_(); h:set(5, 1); c:scatter_add_(0, medlua.tensor({0, 1, 2}, {dtype = "int64"}), h) end)
end)

T.case("an op without a backward rule joins the graph and backward through it is an error", function()
  local x = f64({3, 1, 2, 5})
  x.requires_grad = true
  local q = x:quantile(0.5)
  T.ok(q.requires_grad, "quantile of a tensor that requires grad must require grad")
  T.eq(q.grad_fn ~= nil, true)
  T.raises(function() (q * 2):backward() end, "quantile has no backward rule")
  -- without grad nothing is recorded
  medlua.no_grad(function() T.eq(x:quantile(0.5).requires_grad, false) end)
end)

T.case("in-place on a leaf that requires grad is refused while grad mode is on", function()
  local w = f64({1, 2})
  T.raises(function() w:add_(1) end, "leaf")
  T.raises(function() w:fill_(0) end, "leaf")
  T.raises(function() w:set(1, 0) end, "leaf")
  medlua.no_grad(function() w:add_(1) end)
  T.tensor_eq(w, {2, 3})
end)

T.case("requires_grad property, requires_grad_, retain_grad, grad_fn names", function()
  local x = medlua.ones(3)
  T.eq(x.requires_grad, false)
  x.requires_grad = true
  T.eq(x.requires_grad, true)
  T.ok(x:requires_grad_(false) == x)
  T.eq(x.requires_grad, false)
  x:requires_grad_()
  T.eq(x.requires_grad, true)
  T.raises(function() medlua.ones(2, {dtype = "int64"}).requires_grad = true end, "floating point")
  local h = x * 2
  T.eq(type(h.grad_fn), "string")
  T.raises(function() h.requires_grad = false end, "non%-leaf")
  h:retain_grad()
  local y = (h * h):sum()
  y:backward()
  T.tensor_eq(h.grad, {4, 4, 4})
  T.tensor_eq(x.grad, {8, 8, 8})
  T.raises(function() medlua.ones(2):retain_grad() end, "does not require grad")
  T.eq(medlua.ones(2).grad_fn, nil)
end)

T.case("grad can be assigned a tensor of the same shape and dtype, or nil", function()
  local x = medlua.ones(2, 2, {requires_grad = true})
  x.grad = medlua.full({2, 2}, 3)
  T.tensor_eq(x.grad, {{3, 3}, {3, 3}})
  T.raises(function() x.grad = medlua.ones(3) end, "grad: assigned gradient has shape %[3%]")
  T.raises(function() x.grad = medlua.ones(2, 2, {dtype = "float64"}) end, "dtype float64")
  T.raises(function() x.grad = 5 end, "expected a tensor or nil")
  x.grad = nil
  T.eq(x.grad, nil)
  T.raises(function() x.shape = {1} end, "cannot set field 'shape'")
end)

T.case("no_grad: nothing is recorded, values are the same", function()
  local x = f64({1, 2})
  local y
  do
    local g <close> = medlua.no_grad()
    y = x * x + 1
  end
  T.eq(y.requires_grad, false)
  T.tensor_eq(y, {2, 5})
  T.raises(function() y:sum():backward() end, "does not require grad")
end)

T.case("backward on a leaf accumulates into its own grad", function()
  local x = medlua.tensor(2.0, {requires_grad = true})
  x:backward()
  T.eq(x.grad:item(), 1)
end)

T.case("gradcheck: elementwise, broadcasting and reductions", function()
  medlua.manual_seed(1)
  local a = medlua.randn(3, 4, {dtype = "float64", requires_grad = true})
  local b = medlua.randn(4, {dtype = "float64", requires_grad = true})
  T.ok(gradcheck(function(x, y) return x * y + x / (y * y + 1) - y end, {a, b}))
  T.ok(gradcheck(function(x) return x:exp(), x:tanh(), x:sigmoid(), x:sin() end, {a}))
  local pos = (medlua.rand(3, 4, {dtype = "float64"}) + 0.5):requires_grad_()
  T.ok(gradcheck(function(x) return x:log(), x:sqrt(), x:reciprocal(), x ^ 1.5 end, {pos}))
  T.ok(gradcheck(function(x) return x:sum(1), x:mean(0, true), x:sum() end, {a}))
  T.ok(gradcheck(function(x) return x:amax(1), x:logsumexp(0), x:var(1), x:std(0) end, {a}))
  T.ok(gradcheck(function(x) return x:norm(), x:cumsum(1), x:prod(1) end, {a}))
end)

T.case("gradcheck: matmul, softmax, losses, conv, pooling, norms", function()
  medlua.manual_seed(2)
  local x = medlua.randn(2, 3, {dtype = "float64", requires_grad = true})
  local w = medlua.randn(4, 3, {dtype = "float64", requires_grad = true})
  local bias = medlua.randn(4, {dtype = "float64", requires_grad = true})
  T.ok(gradcheck(function(a, b, c) return F.linear(a, b, c) end, {x, w, bias}))
  T.ok(gradcheck(function(a, b) return a:matmul(b:t()) end, {x, w}))
  T.ok(gradcheck(function(a) return F.softmax(a, 1), F.log_softmax(a, 0) end, {x}))
  local y = medlua.randn(2, 3, {dtype = "float64"})
  T.ok(gradcheck(function(a) return F.mse_loss(a, y), F.smooth_l1_loss(a, y), F.l1_loss(a, y * 10) end, {x}))
  local labels = medlua.tensor({2, 0}, {dtype = "int64"})
  T.ok(gradcheck(function(a) return F.cross_entropy(a, labels) end, {x}))
  local img = medlua.randn(1, 2, 5, 5, {dtype = "float64", requires_grad = true})
  local k = medlua.randn(3, 2, 3, 3, {dtype = "float64", requires_grad = true})
  T.ok(gradcheck(function(a, b) return F.conv2d(a, b, nil, {padding = 1}) end, {img, k}))
  T.ok(gradcheck(function(a) return F.avg_pool2d(a, {kernel_size = 2}), F.max_pool2d(a, 2) end, {img}))
  T.ok(gradcheck(function(a) return F.group_norm(a, 2), F.layer_norm(a, {5}) end, {img}))
end)

T.case("gradcheck reports a wrong gradient", function()
  local x = medlua.randn(3, {dtype = "float64", requires_grad = true})
  -- detach in the middle: the numerical derivative sees the dependence, autograd does not
  local ok, msg = gradcheck(function(a) return a * a:detach() end, {x}, {raise_exception = false})
  T.eq(ok, false)
  T.ok(msg:find("gradient mismatch"), msg)
  T.raises(function() gradcheck(function(a) return a * 2 end, {medlua.randn(2, {requires_grad = true})}) end, "float64")
end)

T.case("100 small training steps return live tensors and memory to baseline", function()
  medlua.manual_seed(0)
  local w = medlua.randn(8, 4, {requires_grad = true})
  local b = medlua.zeros(4, {requires_grad = true})
  local x = medlua.randn(16, 8)
  local y = medlua.randn(16, 4)
  local function step()
    local out = F.linear(x, w:t(), b):relu()
    local loss = F.mse_loss(out, y) + (w * w):mean() * 0.01
    loss:backward()
    medlua.no_grad(function()
      w:sub_(w.grad * 0.1)
      b:sub_(b.grad * 0.1)
    end)
    w.grad = nil
    b.grad = nil
    return loss:item()
  end
  collectgarbage(); collectgarbage()
  local m0 = medlua.mem()
  local first, last
  for i = 1, 100 do
    local l = step()
    if i == 1 then first = l end
    last = l
  end
  collectgarbage(); collectgarbage()
  local m1 = medlua.mem()
  T.eq(m1.tensors, m0.tensors, "live tensors")
  T.eq(m1.cpu, m0.cpu, "live bytes")
  T.ok(last < first, "loss fell")
end)

T.run()
