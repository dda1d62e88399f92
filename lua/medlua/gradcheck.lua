-- medlua.gradcheck: compare autograd gradients with central finite differences (in float64).
--
--   local gradcheck = require "medlua.gradcheck"
--   local x = medlua.randn(3, 4, {dtype = "float64", requires_grad = true})
--   gradcheck(function(a) return (a * a):sum(1) end, {x})              -- true, or raises
--   gradcheck(fn, {x, w}, {eps = 1e-6, atol = 1e-5, rtol = 1e-4, raise_exception = false})
--
-- fn receives the inputs (tensors or any other values) and returns one or more tensors. Every
-- input tensor with requires_grad must be float64 and contiguous. The check:
--   1. draws a random cotangent v_k for every floating output k and forms s = sum_k <out_k, v_k>;
--   2. runs backward twice and requires bit-identical gradients (determinism);
--   3. for every element j of every differentiable input x, compares the analytic ds/dx_j with
--      (s(x_j + eps) - s(x_j - eps)) / (2 eps), requiring |num - ana| <= atol + rtol * |num|.
-- Options: eps, atol, rtol, raise_exception (default true), max_elements (check at most this many
-- elements per input, spread evenly; default all), seed (for the cotangents; default: current RNG).
local medlua = require "medlua"

local function fail(raise, msg)
  if raise then error("gradcheck: " .. msg, 3) end
  return false, "gradcheck: " .. msg
end

local function float_outputs(res)
  local outs = {}
  for i = 1, res.n do
    local o = res[i]
    if medlua.is_tensor(o) and (o.dtype == "float64" or o.dtype == "float32") then outs[#outs + 1] = o end
  end
  return outs
end

local function gradcheck(fn, inputs, opts)
  opts = opts or {}
  local eps, atol, rtol = opts.eps or 1e-6, opts.atol or 1e-5, opts.rtol or 1e-4
  local raise = opts.raise_exception ~= false
  local n_in = inputs.n or #inputs
  local diff = {}
  for i = 1, n_in do
    local x = inputs[i]
    if medlua.is_tensor(x) and x.requires_grad then
      if x.dtype ~= "float64" then
        return fail(raise, string.format("input %d has dtype %s; use float64 inputs", i, x.dtype))
      end
      if not x:is_contiguous() then return fail(raise, string.format("input %d is not contiguous", i)) end
      if not x.is_leaf then return fail(raise, string.format("input %d is not a leaf tensor", i)) end
      diff[#diff + 1] = {index = i, x = x}
    end
  end
  if #diff == 0 then return fail(raise, "no input requires grad") end

  local function call() return table.pack(fn(table.unpack(inputs, 1, n_in))) end

  -- cotangents
  local outs0 = medlua.no_grad(function() return float_outputs(call()) end)
  if #outs0 == 0 then return fail(raise, "fn returned no floating point tensor") end
  if opts.seed then medlua.manual_seed(opts.seed) end
  local vs = {}
  for k, o in ipairs(outs0) do vs[k] = medlua.randn(o:size(), {dtype = "float64"}) end

  local function scalar(outs)
    local s
    for k, o in ipairs(outs) do
      local t = (o:double() * vs[k]):sum()
      s = s and (s + t) or t
    end
    return s
  end

  local function analytic()
    for _, d in ipairs(diff) do d.x.grad = nil end
    local outs = float_outputs(call())
    if #outs ~= #vs then error("gradcheck: fn returned a different number of outputs on a second call", 0) end
    local s = scalar(outs)
    if not s.requires_grad then return nil end
    s:backward()
    local gs = {}
    for k, d in ipairs(diff) do
      local g = d.x.grad
      gs[k] = g and g:detach():clone() or medlua.zeros_like(d.x)
      d.x.grad = nil
    end
    return gs
  end

  local ok, g1 = pcall(analytic)
  if not ok then return fail(raise, "backward failed: " .. tostring(g1)) end
  if g1 == nil then return fail(raise, "the outputs do not depend on any input that requires grad") end
  local ok2, g2 = pcall(analytic)
  if not ok2 then return fail(raise, "second backward failed: " .. tostring(g2)) end
  for k, d in ipairs(diff) do
    if not g1[k]:equal(g2[k]) then
      return fail(raise, string.format("backward is not deterministic for input %d: two runs gave different gradients",
        d.index))
    end
  end

  -- finite differences
  local function value() return scalar(float_outputs(call())):item() end
  for k, d in ipairs(diff) do
    local flat = d.x:detach():view(-1)
    local ga = g1[k]:contiguous():view(-1)
    local n = flat:numel()
    local step = 1
    if opts.max_elements and n > opts.max_elements then step = n / opts.max_elements end
    local msg
    medlua.no_grad(function()
      local pos = 0
      while pos < n do
        local j = math.floor(pos)
        local orig = flat:get(j)
        flat:set(orig + eps, j)
        local fp = value()
        flat:set(orig - eps, j)
        local fm = value()
        flat:set(orig, j)
        local num = (fp - fm) / (2 * eps)
        local ana = ga:get(j)
        if not (math.abs(num - ana) <= atol + rtol * math.abs(num)) then
          msg = string.format("gradient mismatch for input %d (shape %s) at flat element %d: numerical %.10g, "
            .. "analytical %.10g (diff %.3g > atol %.3g + rtol %.3g * |numerical|)", d.index,
            table.concat(d.x:size(), "x"), j, num, ana, math.abs(num - ana), atol, rtol)
          return
        end
        pos = pos + step
      end
    end)
    if msg then return fail(raise, msg) end
  end
  return true
end

return gradcheck
