-- medlua.nn: modules that hold parameters and compose functional ops.
-- Names, defaults and state_dict keys follow PyTorch (and MONAI for UNet), so weights exported from
-- PyTorch load by name. Dims are 0-based as in PyTorch.
local medlua = require "medlua"
local F = medlua.F

local nn = {}

-- ------------------------------------------------------------------ class helper
-- nn.define(name, parent): a module class inheriting parent (Name(...) and Name.new(...) construct);
-- nn.class(name, parent) also registers it as nn[name]
local function define(name, parent)
  local c = {}
  c.__index = c
  c.__name = name
  c.__tostring = function(self) return self:repr() end
  c.__call = function(self, ...) return self:forward(...) end
  c.new = function(...)
    local o = setmetatable({}, c)
    o:_init_module()
    o:init(...)
    return o
  end
  return setmetatable(c, {__index = parent, __call = function(_, ...) return c.new(...) end})
end
nn.define = define

local function class(name, parent)
  nn[name] = define(name, parent)
  return nn[name]
end
nn.class = class

local function tuple(v, k, what)
  if type(v) == "number" then
    local t = {}
    for i = 1, k do t[i] = v end
    return t
  end
  assert(type(v) == "table" and #v == k, (what or "argument") .. ": expected a number or a table of " .. k .. " numbers")
  return v
end
nn._tuple = tuple

-- ------------------------------------------------------------------ Module
local Module = class("Module")

function Module:_init_module()
  rawset(self, "_params", {})    -- ordered names
  rawset(self, "_buffers", {})
  rawset(self, "_children", {})
  rawset(self, "training", true)
end

function Module:init() end

function Module:register_parameter(name, t)
  if t ~= nil then t.requires_grad = true end
  self[name] = t
  table.insert(self._params, name)
  return t
end

function Module:register_buffer(name, t)
  self[name] = t
  table.insert(self._buffers, name)
  return t
end

function Module:add_module(name, m)
  self[name] = m
  table.insert(self._children, name)
  return m
end

function Module:children()
  local out = {}
  for _, n in ipairs(self._children) do out[#out + 1] = self[n] end
  return out
end

-- Visit (prefix, module) for this module and every descendant, depth first.
function Module:named_modules(prefix, out)
  out = out or {}
  prefix = prefix or ""
  out[#out + 1] = {prefix, self}
  for _, n in ipairs(self._children) do
    local c = self[n]
    if c then c:named_modules(prefix == "" and n or (prefix .. "." .. n), out) end
  end
  return out
end

function Module:named_parameters()
  local out, seen = {}, {}
  for _, pm in ipairs(self:named_modules()) do
    local prefix, m = pm[1], pm[2]
    for _, n in ipairs(m._params) do
      local t = m[n]
      if t and not seen[t] then
        seen[t] = true
        out[#out + 1] = {prefix == "" and n or (prefix .. "." .. n), t}
      end
    end
  end
  return out
end

function Module:parameters()
  local out = {}
  for _, np in ipairs(self:named_parameters()) do out[#out + 1] = np[2] end
  return out
end

--- module:to(device) / module:cuda(i) / module:cpu(): every parameter and buffer moved to the device
--- (parameters stay leaves that require grad; optimizer state made before the move stays where it was,
--- so move the model first, as in PyTorch). Returns the module.
function Module:to(device)
  local moved = {}
  for _, pm in ipairs(self:named_modules()) do
    local m = pm[2]
    for _, list in ipairs({m._params, m._buffers}) do
      for _, n in ipairs(list) do
        local t = m[n]
        -- integer buffers (counters such as num_batches_tracked) stay on the host: integer kernels are
        -- host-only so far
        if t and t.device ~= device and (t.dtype == "float32" or t.dtype == "float64" or t.dtype == "float16"
                                         or t.dtype == "bfloat16") then
          local d = moved[t]
          if not d then
            d = t:detach():to(device)
            if t.requires_grad then d.requires_grad = true end
            moved[t] = d
          end
          m[n] = d
        end
      end
    end
  end
  return self
end

function Module:cuda(i) return self:to(i and ("cuda:" .. i) or "cuda") end
function Module:cpu() return self:to("cpu") end

function Module:num_parameters()
  local n = 0
  for _, p in ipairs(self:parameters()) do n = n + p:numel() end
  return n
end

function Module:state_dict()
  local sd, order = {}, {}
  for _, pm in ipairs(self:named_modules()) do
    local prefix, m = pm[1], pm[2]
    local function add(n)
      local t = m[n]
      if t then
        local key = prefix == "" and n or (prefix .. "." .. n)
        sd[key] = t
        order[#order + 1] = key
      end
    end
    for _, n in ipairs(m._params) do add(n) end
    for _, n in ipairs(m._buffers) do add(n) end
  end
  return sd, order
end

-- Copy tensors from sd into this module's parameters/buffers (in place, no grad).
function Module:load_state_dict(sd, strict)
  if strict == nil then strict = true end
  local own, order = self:state_dict()
  local missing, bad = {}, {}
  local g <close> = medlua.no_grad()
  for _, k in ipairs(order) do
    local src = sd[k]
    if src == nil then
      missing[#missing + 1] = k
    else
      local dst = own[k]
      local ds, ss = dst:size(), src:size()
      local same = #ds == #ss
      for i = 1, #ds do same = same and ds[i] == ss[i] end
      if not same then
        bad[#bad + 1] = string.format("%s: checkpoint %s vs model %s", k, table.concat(ss, "x"), table.concat(ds, "x"))
      else
        dst:copy_(src)
      end
    end
  end
  local unexpected = {}
  for k in pairs(sd) do if own[k] == nil then unexpected[#unexpected + 1] = k end end
  table.sort(unexpected)
  if #bad > 0 or (strict and (#missing > 0 or #unexpected > 0)) then
    local msg = {"load_state_dict: checkpoint does not match the model"}
    if #bad > 0 then msg[#msg + 1] = "  shape mismatch: " .. table.concat(bad, "; ") end
    if strict and #missing > 0 then msg[#msg + 1] = "  missing: " .. table.concat(missing, ", ") end
    if strict and #unexpected > 0 then msg[#msg + 1] = "  unexpected: " .. table.concat(unexpected, ", ") end
    error(table.concat(msg, "\n"), 2)
  end
  return missing, unexpected
end

function Module:save(path, metadata)
  local sd = self:state_dict()
  medlua.save(path, sd, metadata)
end

function Module:load(path, strict)
  local sd = medlua.load(path)
  return self:load_state_dict(sd, strict)
end

function Module:train(mode)
  if mode == nil then mode = true end
  for _, pm in ipairs(self:named_modules()) do rawset(pm[2], "training", mode) end
  return self
end

function Module:eval() return self:train(false) end

function Module:zero_grad()
  for _, p in ipairs(self:parameters()) do p.grad = nil end
end

function Module:extra_repr() return "" end

function Module:repr(indent)
  indent = indent or ""
  local head = getmetatable(self).__name .. "(" .. self:extra_repr()
  if #self._children == 0 then return head .. ")" end
  local lines = {head}
  for _, n in ipairs(self._children) do
    local c = self[n]
    lines[#lines + 1] = indent .. "  (" .. n .. "): " .. (c and c:repr(indent .. "  ") or "None")
  end
  lines[#lines + 1] = indent .. ")"
  return table.concat(lines, "\n")
end

function Module:forward() error(getmetatable(self).__name .. ": forward not implemented", 2) end

-- ------------------------------------------------------------------ containers
local Sequential = class("Sequential", Module)
function Sequential:init(...)
  local mods = {...}
  if #mods == 1 and type(mods[1]) == "table" and getmetatable(mods[1]) == nil then mods = mods[1] end
  for i, m in ipairs(mods) do self:add_module(tostring(i - 1), m) end
end
function Sequential:add(m) return self:add_module(tostring(#self._children), m) end
function Sequential:forward(x)
  for i, n in ipairs(self._children) do
    local ok, y = pcall(self[n].forward, self[n], x)
    if not ok then error(string.format("In %d module of Sequential: %s", i - 1, tostring(y)), 0) end
    x = y
  end
  return x
end

local Identity = class("Identity", Module)
function Identity:forward(x) return x end

-- ------------------------------------------------------------------ init helpers
local function uniform_(t, bound) t:uniform_(-bound, bound) return t end

-- PyTorch's default: kaiming_uniform(a=sqrt(5)) -> bound 1/sqrt(fan_in) for weight and bias
local function default_init(w, b, fan_in)
  local bound = fan_in > 0 and 1 / math.sqrt(fan_in) or 0
  local g <close> = medlua.no_grad()
  uniform_(w, bound)
  if b then uniform_(b, bound) end
end
nn._default_init = default_init

-- ------------------------------------------------------------------ layers
local Linear = class("Linear", Module)
function Linear:init(in_features, out_features, opts)
  opts = opts or {}
  self.in_features, self.out_features = in_features, out_features
  local dt = opts.dtype or "float32"
  self:register_parameter("weight", medlua.empty({out_features, in_features}, {dtype = dt}))
  self:register_parameter("bias", opts.bias ~= false and medlua.empty({out_features}, {dtype = dt}) or nil)
  default_init(self.weight, self.bias, in_features)
end
function Linear:forward(x) return F.linear(x, self.weight, self.bias) end
function Linear:extra_repr()
  return string.format("in_features=%d, out_features=%d, bias=%s", self.in_features, self.out_features, tostring(self.bias ~= nil))
end

local function make_conv(k, transposed)
  local name = (transposed and "ConvTranspose" or "Conv") .. k .. "d"
  local C = class(name, Module)
  local fname = (transposed and "conv_transpose" or "conv") .. k .. "d"
  function C:init(in_ch, out_ch, kernel_size, opts)
    opts = opts or {}
    local groups = opts.groups or 1
    assert(in_ch % groups == 0 and out_ch % groups == 0,
      string.format("%s: in_channels %d and out_channels %d must be divisible by groups %d", name, in_ch, out_ch, groups))
    self.in_channels, self.out_channels = in_ch, out_ch
    self.kernel_size = tuple(kernel_size, k, name .. " kernel_size")
    self.stride = tuple(opts.stride or 1, k, name .. " stride")
    self.padding = tuple(opts.padding or 0, k, name .. " padding")
    self.dilation = tuple(opts.dilation or 1, k, name .. " dilation")
    self.output_padding = tuple(opts.output_padding or 0, k, name .. " output_padding")
    self.groups = groups
    local shape
    if transposed then shape = {in_ch, out_ch // groups} else shape = {out_ch, in_ch // groups} end
    local rf = 1
    for i = 1, k do shape[#shape + 1] = self.kernel_size[i]; rf = rf * self.kernel_size[i] end
    local dt = opts.dtype or "float32"
    self:register_parameter("weight", medlua.empty(shape, {dtype = dt}))
    self:register_parameter("bias", opts.bias ~= false and medlua.empty({out_ch}, {dtype = dt}) or nil)
    default_init(self.weight, self.bias, shape[2] * rf) -- PyTorch: fan_in = weight.size(1) * receptive field
  end
  function C:forward(x)
    return F[fname](x, self.weight, self.bias, {stride = self.stride, padding = self.padding,
      dilation = self.dilation, groups = self.groups, output_padding = transposed and self.output_padding or nil})
  end
  function C:extra_repr()
    return string.format("%d, %d, kernel_size=(%s), stride=(%s), padding=(%s)", self.in_channels, self.out_channels,
      table.concat(self.kernel_size, ", "), table.concat(self.stride, ", "), table.concat(self.padding, ", "))
  end
  return C
end
for k = 1, 3 do make_conv(k, false); make_conv(k, true) end

local function make_batchnorm(k)
  local name = "BatchNorm" .. k .. "d"
  local B = class(name, Module)
  function B:init(num_features, opts)
    opts = opts or {}
    self.num_features = num_features
    self.eps = opts.eps or 1e-5
    self.momentum = opts.momentum or 0.1
    self.affine = opts.affine ~= false
    self.track_running_stats = opts.track_running_stats ~= false
    local dt = opts.dtype or "float32"
    if self.affine then
      self:register_parameter("weight", medlua.ones({num_features}, {dtype = dt}))
      self:register_parameter("bias", medlua.zeros({num_features}, {dtype = dt}))
    end
    if self.track_running_stats then
      self:register_buffer("running_mean", medlua.zeros({num_features}, {dtype = dt}))
      self:register_buffer("running_var", medlua.ones({num_features}, {dtype = dt}))
      self:register_buffer("num_batches_tracked", medlua.zeros({}, {dtype = "int64"}))
    end
  end
  -- prelu_weight (optional): apply PReLU in the same op (ADN fuses norm + PReLU this way)
  function B:forward(x, prelu_weight)
    local use_batch = self.training or not self.track_running_stats
    if self.training and self.track_running_stats then
      self.num_batches_tracked:add_(1)
    end
    return F.batch_norm(x, self.running_mean, self.running_var, {weight = self.weight, bias = self.bias,
      training = use_batch, momentum = self.momentum, eps = self.eps, prelu = prelu_weight})
  end
  B.fuses_prelu = true
  function B:extra_repr()
    return string.format("%d, eps=%g, momentum=%g, affine=%s", self.num_features, self.eps, self.momentum, tostring(self.affine))
  end
end
for k = 1, 3 do make_batchnorm(k) end

local function make_instancenorm(k)
  local I = class("InstanceNorm" .. k .. "d", Module)
  function I:init(num_features, opts)
    opts = opts or {}
    self.num_features, self.eps, self.affine = num_features, opts.eps or 1e-5, opts.affine == true
    if self.affine then
      self:register_parameter("weight", medlua.ones({num_features}))
      self:register_parameter("bias", medlua.zeros({num_features}))
    end
  end
  function I:forward(x, prelu_weight)
    return F.instance_norm(x, {weight = self.weight, bias = self.bias, eps = self.eps, prelu = prelu_weight})
  end
  I.fuses_prelu = true
  function I:extra_repr() return string.format("%d, eps=%g, affine=%s", self.num_features, self.eps, tostring(self.affine)) end
end
for k = 1, 3 do make_instancenorm(k) end

local GroupNorm = class("GroupNorm", Module)
function GroupNorm:init(num_groups, num_channels, opts)
  opts = opts or {}
  self.num_groups, self.num_channels, self.eps = num_groups, num_channels, opts.eps or 1e-5
  if opts.affine ~= false then
    self:register_parameter("weight", medlua.ones({num_channels}))
    self:register_parameter("bias", medlua.zeros({num_channels}))
  end
end
function GroupNorm:forward(x, prelu_weight)
  return F.group_norm(x, self.num_groups, {weight = self.weight, bias = self.bias, eps = self.eps, prelu = prelu_weight})
end
GroupNorm.fuses_prelu = true

local LayerNorm = class("LayerNorm", Module)
function LayerNorm:init(normalized_shape, opts)
  opts = opts or {}
  if type(normalized_shape) == "number" then normalized_shape = {normalized_shape} end
  self.normalized_shape, self.eps = normalized_shape, opts.eps or 1e-5
  if opts.elementwise_affine ~= false then
    self:register_parameter("weight", medlua.ones(normalized_shape))
    self:register_parameter("bias", medlua.zeros(normalized_shape))
  end
end
function LayerNorm:forward(x) return F.layer_norm(x, self.normalized_shape, {weight = self.weight, bias = self.bias, eps = self.eps}) end

-- activations
local function simple(name, fn, repr)
  local A = class(name, Module)
  function A:init(a) self.arg = a end
  function A:forward(x) return fn(x, self.arg) end
  if repr then function A:extra_repr() return repr(self) end end
end
simple("ReLU", function(x) return F.relu(x) end)
simple("Sigmoid", function(x) return F.sigmoid(x) end)
simple("Tanh", function(x) return F.tanh(x) end)
simple("SiLU", function(x) return F.silu(x) end)
simple("GELU", function(x) return F.gelu(x) end)
simple("LeakyReLU", function(x, a) return F.leaky_relu(x, a or 0.01) end)
simple("ELU", function(x, a) return F.elu(x, a or 1.0) end)
simple("Softmax", function(x, d) return F.softmax(x, d or 1) end)
simple("LogSoftmax", function(x, d) return F.log_softmax(x, d or 1) end)

local PReLU = class("PReLU", Module)
function PReLU:init(num_parameters, init)
  self.num_parameters = num_parameters or 1
  self:register_parameter("weight", medlua.full({self.num_parameters}, init or 0.25))
end
function PReLU:forward(x) return F.prelu(x, self.weight) end
function PReLU:extra_repr() return "num_parameters=" .. self.num_parameters end

local Dropout = class("Dropout", Module)
function Dropout:init(p) self.p = p or 0.5 end
function Dropout:forward(x) return F.dropout(x, {p = self.p, training = self.training}) end
function Dropout:extra_repr() return "p=" .. self.p end

local Flatten = class("Flatten", Module)
function Flatten:init(s, e) self.start_dim, self.end_dim = s or 1, e or -1 end
function Flatten:forward(x) return x:flatten(self.start_dim, self.end_dim) end

for k = 1, 3 do
  local M = class("MaxPool" .. k .. "d", Module)
  function M:init(kernel_size, opts) self.opts = opts or {}; self.opts.kernel_size = kernel_size end
  function M:forward(x) return F["max_pool" .. k .. "d"](x, self.opts) end
  local A = class("AvgPool" .. k .. "d", Module)
  function A:init(kernel_size, opts) self.opts = opts or {}; self.opts.kernel_size = kernel_size end
  function A:forward(x) return F["avg_pool" .. k .. "d"](x, self.opts) end
  local AA = class("AdaptiveAvgPool" .. k .. "d", Module)
  function AA:init(size) self.size = size end
  function AA:forward(x) return F["adaptive_avg_pool" .. k .. "d"](x, self.size) end
end

-- ------------------------------------------------------------------ MONAI blocks
-- Names and structure follow MONAI (monai.networks.blocks / nets.UNet) so state_dict keys match.
local function make_norm(norm, dims, ch)
  local kind = type(norm) == "table" and norm[1] or norm
  kind = kind and kind:lower()
  if kind == "batch" then return nn["BatchNorm" .. dims .. "d"](ch)
  elseif kind == "instance" then return nn["InstanceNorm" .. dims .. "d"](ch, type(norm) == "table" and norm[2] or nil)
  elseif kind == "group" then return nn.GroupNorm(norm[2].num_groups, ch)
  elseif kind == nil or kind == "none" then return nil end
  error("unknown norm '" .. tostring(kind) .. "' (expected batch, instance, group or none)", 3)
end

local function make_act(act)
  local kind = type(act) == "table" and act[1] or act
  kind = kind and kind:lower()
  if kind == "prelu" then return nn.PReLU()
  elseif kind == "relu" then return nn.ReLU()
  elseif kind == "leakyrelu" then return nn.LeakyReLU(type(act) == "table" and act[2] and act[2].negative_slope or 0.01)
  elseif kind == "elu" then return nn.ELU()
  elseif kind == "gelu" then return nn.GELU()
  elseif kind == nil or kind == "none" then return nil end
  error("unknown act '" .. tostring(kind) .. "'", 3)
end

-- ADN: norm (N), dropout (D), act (A) in the given ordering
local ADN = class("ADN", Module)
function ADN:init(o)
  for c in (o.ordering or "NDA"):gmatch(".") do
    if c == "N" then local m = make_norm(o.norm, o.dims, o.channels); if m then self:add_module("N", m) end
    elseif c == "D" then if o.dropout and o.dropout > 0 then self:add_module("D", nn.Dropout(o.dropout)) end
    elseif c == "A" then local m = make_act(o.act); if m then self:add_module("A", m) end end
  end
end
-- A norm directly followed by PReLU runs as one fused op (same result, fewer passes over memory,
-- the norm's output is never stored); everything else runs in order like Sequential.
function ADN:forward(x)
  local ch = self._children
  local i = 1
  while i <= #ch do
    local m, nxt = self[ch[i]], ch[i + 1] and self[ch[i + 1]]
    if m.fuses_prelu and nxt and getmetatable(nxt) == nn.PReLU and ADN.fuse ~= false then
      x = m:forward(x, nxt.weight)
      i = i + 2
    else
      x = m:forward(x)
      i = i + 1
    end
  end
  return x
end

-- Convolution: conv (or transposed conv) then ADN unless conv_only
local Convolution = class("Convolution", Module)
function Convolution:init(o)
  local d = o.dims
  local s = o.strides or 1
  local ks = o.kernel_size or 3
  local pad = o.padding or (ks - 1) // 2
  if o.is_transposed then
    self:add_module("conv", nn["ConvTranspose" .. d .. "d"](o.in_channels, o.out_channels, ks,
      {stride = s, padding = pad, output_padding = s - 1, bias = o.bias ~= false}))
  else
    self:add_module("conv", nn["Conv" .. d .. "d"](o.in_channels, o.out_channels, ks,
      {stride = s, padding = pad, bias = o.bias ~= false}))
  end
  if not o.conv_only then
    self:add_module("adn", nn.ADN{ordering = o.adn_ordering, norm = o.norm, dropout = o.dropout, act = o.act,
      dims = d, channels = o.out_channels})
  end
end
Convolution.forward = Sequential.forward

local ResidualUnit = class("ResidualUnit", Module)
function ResidualUnit:init(o)
  local d = o.dims
  local ks = o.kernel_size or 3
  local strides = o.strides or 1
  local subunits = math.max(1, o.subunits or 2)
  local conv = nn.Sequential()
  local sch, sst = o.in_channels, strides
  for su = 0, subunits - 1 do
    local conv_only = o.last_conv_only and su == subunits - 1
    conv:add_module("unit" .. su, nn.Convolution{dims = d, in_channels = sch, out_channels = o.out_channels,
      strides = sst, kernel_size = ks, act = o.act, norm = o.norm, dropout = o.dropout, bias = o.bias,
      conv_only = conv_only, adn_ordering = o.adn_ordering})
    sch, sst = o.out_channels, 1
  end
  self:add_module("conv", conv)
  if strides ~= 1 or o.in_channels ~= o.out_channels then
    local rk, rp = ks, (ks - 1) // 2
    if strides == 1 then rk, rp = 1, 0 end
    self:add_module("residual", nn["Conv" .. d .. "d"](o.in_channels, o.out_channels, rk,
      {stride = strides, padding = rp, bias = o.bias ~= false}))
  end
end
function ResidualUnit:forward(x)
  local res = self.residual and self.residual:forward(x) or x
  return self.conv:forward(x) + res
end

local SkipConnection = class("SkipConnection", Module)
function SkipConnection:init(sub) self:add_module("submodule", sub) end
function SkipConnection:forward(x) return medlua.cat({x, self.submodule:forward(x)}, 1) end

-- MONAI UNet: UNet{spatial_dims=3, in_channels=1, out_channels=3, channels={16,32,64,128,256},
-- strides={2,2,2,2}, num_res_units=2, norm="batch"} has 4,809,920 parameters, as in MONAI.
local UNet = class("UNet", Module)
function UNet:init(o)
  local d = assert(o.spatial_dims, "UNet: spatial_dims is required")
  local ch, st = assert(o.channels, "UNet: channels is required"), assert(o.strides, "UNet: strides is required")
  assert(#ch >= 2, "UNet: channels needs at least 2 entries")
  assert(#st == #ch - 1, string.format("UNet: strides has %d entries, expected len(channels)-1 = %d", #st, #ch - 1))
  local c = {dims = d, kernel_size = o.kernel_size or 3, up_kernel_size = o.up_kernel_size or 3,
    num_res_units = o.num_res_units or 0, act = o.act or "prelu", norm = o.norm or "instance",
    dropout = o.dropout or 0, bias = o.bias ~= false, adn_ordering = o.adn_ordering or "NDA"}
  self.cfg, self.strides = c, st
  local function down(inc, outc, s, is_top)
    if c.num_res_units > 0 then
      return nn.ResidualUnit{dims = d, in_channels = inc, out_channels = outc, strides = s, kernel_size = c.kernel_size,
        subunits = c.num_res_units, act = c.act, norm = c.norm, dropout = c.dropout, bias = c.bias, adn_ordering = c.adn_ordering}
    end
    return nn.Convolution{dims = d, in_channels = inc, out_channels = outc, strides = s, kernel_size = c.kernel_size,
      act = c.act, norm = c.norm, dropout = c.dropout, bias = c.bias, adn_ordering = c.adn_ordering}
  end
  local function up(inc, outc, s, is_top)
    local conv = nn.Convolution{dims = d, in_channels = inc, out_channels = outc, strides = s,
      kernel_size = c.up_kernel_size, act = c.act, norm = c.norm, dropout = c.dropout, bias = c.bias,
      conv_only = is_top and c.num_res_units == 0, is_transposed = true, adn_ordering = c.adn_ordering}
    if c.num_res_units > 0 then
      local ru = nn.ResidualUnit{dims = d, in_channels = outc, out_channels = outc, strides = 1,
        kernel_size = c.kernel_size, subunits = 1, act = c.act, norm = c.norm, dropout = c.dropout, bias = c.bias,
        last_conv_only = is_top, adn_ordering = c.adn_ordering}
      return nn.Sequential(conv, ru)
    end
    return conv
  end
  local function block(inc, outc, chs, sts, is_top)
    local cc, s = chs[1], sts[1]
    local sub, upc
    if #chs > 2 then
      local rest_c, rest_s = {table.unpack(chs, 2)}, {table.unpack(sts, 2)}
      sub = block(cc, cc, rest_c, rest_s, false)
      upc = cc * 2
    else
      sub = down(cc, chs[2], 1, false)
      upc = cc + chs[2]
    end
    return nn.Sequential(down(inc, cc, s, is_top), nn.SkipConnection(sub), up(upc, outc, s, is_top))
  end
  self:add_module("model", block(o.in_channels or 1, o.out_channels or 1, ch, st, true))
end
function UNet:forward(x)
  local f = 1
  for _, s in ipairs(self.strides) do f = f * s end
  local sz = x:size()
  for i = 3, #sz do
    if sz[i] % f ~= 0 then
      error(string.format("UNet: spatial size %s must be divisible by %d (product of strides)", table.concat(sz, "x"), f), 2)
    end
  end
  return self.model:forward(x)
end

return nn
