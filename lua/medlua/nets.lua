-- medlua.nets: ready-made networks built from medlua.nn layers.
--
--   local nets = require "medlua.nets"
--   local net = nets.UNet2D{in_channels = 1, out_channels = 12, features = {32, 64, 128, 256}, bottleneck = 512}
--   local logits = net(x)        -- x [N, 1, H, W] (H, W multiples of 2^#features) -> [N, 12, H, W]
--
-- UNet2D is the classic 2-D U-Net of the seed notebook (Ronneberger et al. 2015 with padding and batch
-- norm): per encoder level a DoubleConv (two 3x3 conv (no bias) + BatchNorm + ReLU) then 2x2 max pooling;
-- a DoubleConv bottleneck; per decoder level a 2x2 stride-2 transposed convolution, concatenation with
-- the encoder's output of that level (skip connection) and a DoubleConv; a 1x1 convolution to one
-- output channel (logit) per structure. The state_dict keys are those of the common PyTorch version
-- (downs.i.conv.*, bottleneck.conv.*, ups.2i (ConvTranspose2d), ups.2i+1.conv.*, final_conv.*), so its
-- weights load by name:
--   features {32, 64, 128, 256}, bottleneck 512, in 1, out 117: 7,766,293 parameters (as the PyTorch model).
local medlua = require "medlua"
local nn = require "medlua.nn"
local F = medlua.F

local nets = {}

-- a module class that inherits nn.Module without registering itself in the nn table
local function class(name) return nn.define(name, nn.Module) end
nets._class = class

-- ModuleList: children named 0, 1, 2, ... (PyTorch nn.ModuleList), no forward
local ModuleList = class("ModuleList")
nets.ModuleList = ModuleList
function ModuleList:init(list)
  for _, m in ipairs(list or {}) do self:append(m) end
end
function ModuleList:append(m) return self:add_module(tostring(#self._children), m) end
function ModuleList:get(i) return self[tostring(i)] end -- 0-based, as in PyTorch
function ModuleList:len() return #self._children end

-- DoubleConv: (conv 3x3 no bias, BatchNorm, ReLU) x 2, under the name "conv" (a Sequential 0..5)
local DoubleConv = class("DoubleConv")
nets.DoubleConv = DoubleConv
function DoubleConv:init(cin, cout)
  self.in_channels, self.out_channels = cin, cout
  self:add_module("conv", nn.Sequential(
    nn.Conv2d(cin, cout, 3, {padding = 1, bias = false}), nn.BatchNorm2d(cout), nn.ReLU(),
    nn.Conv2d(cout, cout, 3, {padding = 1, bias = false}), nn.BatchNorm2d(cout), nn.ReLU()))
end
-- (ReLU out of place: relu_ on a tensor in a graph is recorded on a copy of it, so it would save nothing here)
function DoubleConv:forward(x)
  local c = self.conv
  x = F.relu(c["1"]:forward(c["0"]:forward(x)))
  return F.relu(c["4"]:forward(c["3"]:forward(x)))
end
function DoubleConv:extra_repr() return string.format("%d -> %d", self.in_channels, self.out_channels) end

local function check_int(v, what, lo)
  if math.type(v) ~= "integer" or v < (lo or 1) then
    error(string.format("UNet2D: %s must be an integer >= %d, got %s", what, lo or 1, tostring(v)), 4)
  end
  return v
end

local UNet2D = class("UNet2D")
nets.UNet2DClass = UNet2D

--- nets.UNet2D{in_channels = 1, out_channels = 1, features = {32, 64, 128, 256}, bottleneck = 2 * features[#features]}
function nets.UNet2D(o)
  o = o or {}
  if type(o) ~= "table" then error("UNet2D: expected an options table", 2) end
  for k in pairs(o) do
    if k ~= "in_channels" and k ~= "out_channels" and k ~= "features" and k ~= "bottleneck" and k ~= "type" then
      error("UNet2D: unknown option '" .. tostring(k) .. "' (expected in_channels, out_channels, features, bottleneck)", 2)
    end
  end
  return UNet2D.new(o)
end

function UNet2D:init(o)
  local cin = check_int(o.in_channels or 1, "in_channels")
  local cout = check_int(o.out_channels or 1, "out_channels")
  local feats = o.features or {32, 64, 128, 256}
  if type(feats) ~= "table" or #feats < 1 then error("UNet2D: features must be a non-empty list of channel counts", 3) end
  for i, f in ipairs(feats) do check_int(f, "features[" .. i .. "]") end
  local bott = check_int(o.bottleneck or 2 * feats[#feats], "bottleneck")
  self.in_channels, self.out_channels, self.bottleneck_channels = cin, cout, bott
  self.features = {table.unpack(feats)}
  self.divisor = 2 ^ #feats // 1
  local downs = ModuleList()
  local c = cin
  for _, f in ipairs(feats) do
    downs:append(DoubleConv(c, f))
    c = f
  end
  self:add_module("downs", downs)
  self:add_module("bottleneck", DoubleConv(feats[#feats], bott))
  local ups = ModuleList()
  c = bott
  for i = #feats, 1, -1 do
    local f = feats[i]
    ups:append(nn.ConvTranspose2d(c, f, 2, {stride = 2}))
    ups:append(DoubleConv(2 * f, f))
    c = f
  end
  self:add_module("ups", ups)
  self:add_module("final_conv", nn.Conv2d(feats[1], cout, 1))
end

function UNet2D:extra_repr()
  return string.format("in_channels=%d, out_channels=%d, features={%s}, bottleneck=%d", self.in_channels,
    self.out_channels, table.concat(self.features, ", "), self.bottleneck_channels)
end

--- the model part of a config.json: {type = "UNet2D", in_channels, out_channels, features, bottleneck}
function UNet2D:config()
  return {type = "UNet2D", in_channels = self.in_channels, out_channels = self.out_channels,
    features = {table.unpack(self.features)}, bottleneck = self.bottleneck_channels}
end

function UNet2D:forward(x)
  if not medlua.is_tensor(x) or x:dim() ~= 4 then
    error(string.format("UNet2D: expected an input [N, %d, H, W], got %s", self.in_channels,
      medlua.is_tensor(x) and ("[" .. table.concat(x:size(), ", ") .. "]") or type(x)), 2)
  end
  local sz = x:size()
  if sz[2] ~= self.in_channels then
    error(string.format("UNet2D: input [%s] has %d channels, the network expects %d", table.concat(sz, ", "), sz[2],
      self.in_channels), 2)
  end
  if sz[3] % self.divisor ~= 0 or sz[4] % self.divisor ~= 0 then
    error(string.format("UNet2D: spatial size %dx%d must be divisible by %d (2^%d poolings)", sz[3], sz[4],
      self.divisor, #self.features), 2)
  end
  local skips = {}
  local n = #self.features
  for i = 0, n - 1 do
    x = self.downs[tostring(i)]:forward(x)
    skips[i + 1] = x
    x = F.max_pool2d(x, {kernel_size = 2, stride = 2})
  end
  x = self.bottleneck:forward(x)
  for i = 0, n - 1 do
    x = self.ups[tostring(2 * i)]:forward(x)
    x = medlua.cat({skips[n - i], x}, 1)
    skips[n - i] = nil
    x = self.ups[tostring(2 * i + 1)]:forward(x)
  end
  return self.final_conv:forward(x)
end

return nets
