-- nn.UNet (lua/medlua/nn.lua) against monai.networks.nets.UNet (MONAI 1.6.1), from
-- tests/ref/unet_monai_ref.safetensors (made by tests/ref/gen_unet_ref.py): for each config (3-D batch
-- norm with 2 residual units; 2-D instance norm with 0 and with 1 residual unit, a stride-1 level) the
-- MONAI state_dict loads by name (strict: same keys both ways, same shapes), then the eval-mode output,
-- the train-mode output (batch statistics), the BatchNorm running statistics after that forward, and
-- the gradients of sum(out * r) w.r.t. the input and named parameters must match torch's float64
-- answer for the stored float32 weights, with ADN's fused norm+PReLU and without it.
-- (The parameter count of the default 16..256 config, 4,809,920, is checked in tests/lua/test_nn.lua.)
-- Run from the repository root:
--   build/medlua tests/lua/test_unet_golden.lua
local medlua = require "medlua"
local nn = require "medlua.nn"
local T = require "medlua.test"
local json = require "medlua.json"

local ref, meta = medlua.load("tests/ref/unet_monai_ref.safetensors")
local configs = json.decode(meta.configs)

local function R(name)
  local t = ref[name]
  assert(t, "golden tensor missing: " .. name)
  return t
end

-- |a - b| <= rtol * (|b| + floor * scale) everywhere; scale defaults to max|b|. float32 sums of terms of
-- the result's magnitude carry an error of ~1e-6 * scale (torch's own float32 UNet: up to 5e-5 with a 1e-2
-- floor), hence the floor for elements near zero.
local RTOL, FLOOR = 1e-4, 5e-2
local function rel_near(a, b, msg, scale)
  T.eq(a:size(), b:size(), "shape: " .. msg)
  local ad, bd = a:detach():double(), b:double()
  scale = scale or bd:abs():max():item()
  local err = (ad - bd):abs() / (bd:abs() + FLOOR * scale + 1e-300)
  local worst = err:max():item()
  if not (worst <= RTOL) then
    error(string.format("%s: max relative error %.3g > %.3g (max abs diff %.3g, scale %.3g)", msg, worst, RTOL,
      (ad - bd):abs():max():item(), scale), 2)
  end
  return worst
end

-- the config's state_dict: "<cfg>/<MONAI key>" -> key
local function state_dict(name)
  local sd, prefix = {}, name .. "/"
  for k, v in pairs(ref) do
    if k:sub(1, #prefix) == prefix then sd[k:sub(#prefix + 1)] = v end
  end
  return sd
end

local function build(cfg)
  local net = nn.UNet(cfg.kwargs)
  net:load_state_dict(state_dict(cfg.name), true)
  return net
end

for _, cfg in ipairs(configs) do
  local name = cfg.name

  T.case(name .. ": MONAI state_dict loads by name, same parameter count", function()
    local net = build(cfg)
    T.eq(net:num_parameters(), cfg.num_parameters)
    local own = net:state_dict()
    local sd = state_dict(name)
    for k, v in pairs(sd) do
      T.eq(own[k].dtype, v.dtype, k)
      T.ok(own[k]:equal(v), "loaded values differ: " .. k)
    end
  end)

  for _, fuse in ipairs{true, false} do
    local tag = fuse and "" or " (norm and PReLU unfused)"

    T.case(name .. ": eval and train outputs, running stats, gradients" .. tag, function()
      local saved = nn.ADN.fuse
      nn.ADN.fuse = fuse
      local ok, err = pcall(function()
        local net = build(cfg)
        local x, r = R(name .. ":x"), R(name .. ":r")

        net:eval()
        do
          local g <close> = medlua.no_grad()
          rel_near(net:forward(x), R(name .. ":out_eval"), "eval output")
        end

        net:train()
        local xg = x:clone():requires_grad_(true)
        local y = net:forward(xg)
        rel_near(y, R(name .. ":out_train"), "train output")

        local own = net:state_dict()
        local prefix, n_after = name .. ":after/", 0
        for k, v in pairs(ref) do
          if k:sub(1, #prefix) == prefix then
            local key = k:sub(#prefix + 1)
            T.ok(own[key] ~= nil, "model lacks buffer " .. key)
            if v.dtype == "int64" then T.eq(own[key], v, key)
            else rel_near(own[key], v, key) end
            n_after = n_after + 1
          end
        end
        if cfg.kwargs.norm == "batch" then T.ok(n_after > 0, "no running statistics stored") end

        (y * r):sum():backward()
        rel_near(xg.grad, R(name .. ":grad_x"), "grad x")
        -- a conv bias right before a norm has gradient 0 in exact arithmetic: measured against the
        -- largest parameter gradient of the config instead of its own (zero) scale
        local gscale = 0
        for _, k in ipairs(cfg.grad_params) do gscale = math.max(gscale, R(name .. ":grad/" .. k):abs():max():item()) end
        local params = {}
        for _, np in ipairs(net:named_parameters()) do params[np[1]] = np[2] end
        for _, k in ipairs(cfg.grad_params) do
          local p = params[k]
          T.ok(p ~= nil and p.grad ~= nil, "no gradient for " .. k)
          local want = R(name .. ":grad/" .. k)
          local s = want:abs():max():item()
          rel_near(p.grad, want, "grad " .. k, s < 1e-6 * gscale and gscale or nil)
        end
      end)
      nn.ADN.fuse = saved
      if not ok then error(err, 0) end
    end)
  end
end

T.run()
