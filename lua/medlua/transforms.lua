-- medlua.transforms: MONAI-named dictionary transforms that compile to native descriptors.
--
--   local T = require "medlua.transforms"
--   local train_tf = T.Compose{
--     T.LoadImaged{keys = {"image", "label"}},
--     T.EnsureChannelFirstd{keys = {"image", "label"}},
--     T.Orientationd{keys = {"image", "label"}, axcodes = "RAS"},
--     T.Spacingd{keys = {"image", "label"}, pixdim = {1.5, 1.5, 2.0}, mode = {"bilinear", "nearest"}},
--     T.ScaleIntensityRanged{keys = "image", a_min = -175, a_max = 250, b_min = 0, b_max = 1, clip = true},
--     T.CropForegroundd{keys = {"image", "label"}, source_key = "image"},
--     T.RandCropByPosNegLabeld{keys = {"image", "label"}, label_key = "label", spatial_size = {96, 96, 96},
--                              pos = 1, neg = 1, num_samples = 2, image_key = "image"},
--     T.RandFlipd{keys = {"image", "label"}, prob = 0.5, spatial_axis = 0},
--     function(d) d.image = d.image * 2; return d end,   -- a custom Lua transform (main thread)
--   }
--   train_tf:set_random_state(0)
--   local out = train_tf{image = "ct.nii.gz", label = "seg.nii.gz"}    -- a list of 2 dicts here
--
-- Semantics follow MONAI 1.6 (same names, options and defaults; axes and indices 0-based as in
-- MONAI). Images are float32 [C, X, Y, Z] (3-D); d[key .. "_meta_dict"] holds {affine, filename_or_obj,
-- spatial_shape}. Every transform also exists without the trailing "d" (the array version): it takes
-- and returns a tensor, e.g. T.RandFlip{prob = 1, spatial_axis = 0}(x); T.LoadImage{}(path) returns
-- the tensor and its meta dict.
--
-- A Compose runs on the main thread when called; inside data.Dataset / data.DataLoader the native
-- transforms before the first Lua function run in C worker threads.
local medlua = require "medlua"
local C = medlua._data
local M = {}

-- options each transform accepts (besides keys / allow_missing_keys); MONAI options that only tune
-- speed or devices are accepted and ignored (IGNORED)
local OPTIONS = {
  LoadImaged = {"ensure_channel_first"},
  EnsureChannelFirstd = {"channel_dim"},
  Spacingd = {"pixdim", "mode", "padding_mode", "diagonal", "align_corners", "scale_extent", "recompute_affine"},
  Orientationd = {"axcodes", "as_closest_canonical", "labels"},
  ScaleIntensityRanged = {"a_min", "a_max", "b_min", "b_max", "clip"},
  NormalizeIntensityd = {"subtrahend", "divisor", "nonzero", "channel_wise"},
  CropForegroundd = {"source_key", "select_fn", "threshold", "channel_indices", "margin", "allow_smaller",
    "k_divisible", "mode", "start_coord_key", "end_coord_key"},
  SpatialPadd = {"spatial_size", "method", "mode", "value"},
  CenterSpatialCropd = {"roi_size"},
  EnsureTyped = {"data_type", "track_meta"},
  ToTensord = {"track_meta"},
  RandSpatialCropd = {"roi_size", "max_roi_size", "random_center", "random_size"},
  RandCropByPosNegLabeld = {"label_key", "spatial_size", "pos", "neg", "num_samples", "image_key", "image_threshold",
    "allow_smaller", "fg_indices_key", "bg_indices_key"},
  RandRotate90d = {"prob", "max_k", "spatial_axes"},
  RandFlipd = {"prob", "spatial_axis"},
  RandAffined = {"prob", "rotate_range", "shear_range", "translate_range", "scale_range", "spatial_size", "mode",
    "padding_mode"},
  RandGaussianNoised = {"prob", "mean", "std", "sample_std"},
  RandScaleIntensityd = {"factors", "prob", "channel_wise"},
  RandShiftIntensityd = {"offsets", "prob", "channel_wise", "safe"},
}
local IGNORED = {lazy = true, cache_grid = true, device = true, image_only = true, dtype = true, reader = true,
  meta_keys = true, meta_key_postfix = true, overwriting = true, simple_keys = true, prune_meta_pattern = true,
  prune_meta_sep = true, track_meta = true, data_type = true, dtype_out = true}

local function fail(name, fmt, ...)
  error(name .. ": " .. string.format(fmt, ...), 4)
end

local Transform = {}
Transform.__index = Transform
M.Transform = Transform

local function is_transform(x) return getmetatable(x) == Transform end

-- validate opts and build the native spec (a flat table read by modules/data/data_lua.c)
local function make(dname, name, opts, array)
  opts = opts or {}
  if type(opts) ~= "table" then fail(name, "options must be a table, got %s", type(opts)) end
  local allowed = {}
  for _, k in ipairs(OPTIONS[dname]) do allowed[k] = true end
  if not array then allowed.keys = true; allowed.allow_missing_keys = true end
  local spec = {type = dname, name = name}
  local keys = opts.keys
  for k, v in pairs(opts) do
    if math.type(k) == "integer" and not array then
      -- positional keys: T.LoadImaged{"image", "label"}
      if keys ~= nil and keys ~= opts then fail(name, "give keys either positionally or as keys = {...}") end
      keys = opts
    elseif type(k) ~= "string" then
      fail(name, "option names must be strings")
    elseif not allowed[k] and not IGNORED[k] then
      local names = {}
      for a in pairs(allowed) do names[#names + 1] = a end
      table.sort(names)
      fail(name, "unknown option '%s' (expected one of: %s)", k, table.concat(names, ", "))
    elseif allowed[k] then
      spec[k] = v
    end
  end
  if keys == opts then
    local ks = {}
    for i = 1, #opts do ks[i] = opts[i] end
    keys = ks
  end
  if array then keys = {"img"} end
  if keys == nil then fail(name, "option 'keys' is required") end
  if type(keys) == "string" then keys = {keys} end
  spec.keys = keys
  -- MONAI options that change nothing here, or that this implementation refuses clearly
  if spec.select_fn ~= nil then
    fail(name, "select_fn must be left out (values > 0, MONAI's is_positive); use threshold = t for values > t")
  end
  if spec.diagonal then fail(name, "diagonal=true is not supported") end
  if spec.align_corners then fail(name, "align_corners=true is not supported") end
  if spec.scale_extent then fail(name, "scale_extent=true is not supported") end
  if spec.fg_indices_key or spec.bg_indices_key then
    fail(name, "fg_indices_key / bg_indices_key are not supported (the indices are computed natively)")
  end
  if spec.as_closest_canonical then spec.axcodes = "RAS" end
  if spec.labels ~= nil then fail(name, "custom labels are not supported (RAS+ world)") end
  if spec.channel_dim ~= nil and spec.channel_dim ~= "no_channel" then
    fail(name, "channel_dim must be left out or \"no_channel\" (images are read channel-last only for 4-D NIfTI)")
  end
  if dname == "Spacingd" then
    local pm = spec.padding_mode or "border"
    if pm ~= "border" then fail(name, "padding_mode must be \"border\" (MONAI's default), got %s", tostring(pm)) end
    spec.padding_mode = nil
  end
  if dname == "CropForegroundd" and spec.mode ~= nil and spec.mode ~= "constant" then
    fail(name, "mode must be \"constant\"")
  end
  if dname == "CropForegroundd" then spec.mode = nil end
  if dname == "RandShiftIntensityd" and spec.safe then fail(name, "safe=true is not supported") end
  local t = setmetatable({_spec = spec, _name = name, _array = array, _random = dname:sub(1, 4) == "Rand"}, Transform)
  -- check the options now (the native parser raises clear errors)
  t._pipe = C.pipeline({spec})
  t._calls = 0
  return t
end

for dname in pairs(OPTIONS) do
  local aname = dname:sub(1, -2)
  M[dname] = function(opts) return make(dname, dname, opts, false) end
  M[aname] = function(opts) return make(dname, aname, opts, true) end
end

local function wrap_input(x)
  local mt = type(x) == "userdata" and getmetatable(x)
  if type(x) == "string" or medlua.is_tensor(x) or (mt and mt.__name == "Volume") then
    return {img = x}, true
  end
  return x, false
end

local function seed_or_random(s)
  if s ~= nil then return s end
  return math.random(0, 0x7fffffff)
end

-- t(d): apply to one dictionary on the main thread -> dict (or a list of dicts for multi-sample crops)
function Transform.__call(self, d)
  local input, wrapped = wrap_input(d)
  self._seed = self._seed or seed_or_random(nil)
  local out = C.apply(self._pipe, input, {seed = self._seed, index = self._calls})
  self._calls = self._calls + 1
  if wrapped then
    if #out == 1 then
      if self._spec.type == "LoadImaged" then return out[1].img, out[1].img_meta_dict end
      return out[1].img
    end
    local r = {}
    for i, o in ipairs(out) do r[i] = o.img end
    return r
  end
  if #out == 1 then return out[1] end
  return out
end

function Transform:set_random_state(seed)
  self._seed = seed
  self._calls = 0
  return self
end

function Transform.__tostring(self) return "Transform(" .. self._name .. ")" end

-- ------------------------------------------------------------------ Compose
local Compose = {}
Compose.__index = Compose
M.ComposeClass = Compose

local NOOP = {type = "EnsureTyped", name = "lua function", keys = {"__lua__"}}

--- T.Compose{t1, t2, fn, ...} (or T.Compose({...})): nested Composes are flattened.
function M.Compose(list)
  if type(list) ~= "table" then error("Compose: expected a list of transforms, got " .. type(list), 2) end
  if getmetatable(list) == Compose then return list end
  local items = {}
  local function add(x, i)
    if getmetatable(x) == Compose then
      for _, y in ipairs(x.items) do add(y, i) end
    elseif is_transform(x) or type(x) == "function" then
      items[#items + 1] = x
    else
      error(string.format("Compose: item %d must be a transform or a Lua function, got %s", i, type(x)), 3)
    end
  end
  for i, x in ipairs(list.transforms or list) do add(x, i) end
  local specs, first_lua, first_random = {}, nil, nil
  for i, x in ipairs(items) do
    if type(x) == "function" then
      specs[i] = NOOP
      first_lua = first_lua or i
    else
      specs[i] = x._spec
      if x._random then first_random = first_random or i end
    end
  end
  local self = setmetatable({items = items, _calls = 0}, Compose)
  self._pipe = C.pipeline(specs)
  self.n = #items
  -- 0-based counts: transforms [0, native_end) are native and run in worker threads
  self.native_end = (first_lua or (#items + 1)) - 1
  self.deterministic_end = math.min(self.native_end, (first_random or (#items + 1)) - 1)
  return self
end

function Compose:set_random_state(seed)
  if math.type(seed) ~= "integer" then error("Compose:set_random_state: seed must be an integer", 2) end
  self._seed = seed
  self._calls = 0
  return self
end

function Compose:random_state() return self._seed end

-- run items [from, n) (0-based from) on a list of dicts on the main thread
function Compose:_run(list, from, seed, epoch, index)
  local i = from + 1
  local n = #self.items
  while i <= n do
    local x = self.items[i]
    if type(x) == "function" then
      local out = {}
      for j, d in ipairs(list) do
        local r = x(d, {index = index, epoch = epoch, seed = seed, sample = j})
        if type(r) ~= "table" then
          error(string.format("Compose: Lua transform %d returned %s (expected the dictionary, or a list of them)",
            i, type(r)), 0)
        end
        if r[1] ~= nil and type(r[1]) == "table" and not medlua.is_tensor(r[1]) then
          for _, y in ipairs(r) do out[#out + 1] = y end
        else
          out[#out + 1] = r
        end
      end
      list = out
      i = i + 1
    else
      local j = i
      while j <= n and type(self.items[j]) ~= "function" do j = j + 1 end
      list = C.apply(self._pipe, list, {seed = seed, epoch = epoch, index = index, from = i - 1, to = j - 1})
      i = j
    end
  end
  return list
end

--- compose(d): dict -> dict (or a list when a transform makes several samples); also a tensor,
--- volume or path for array transforms (wrapped as {img = x}).
function Compose.__call(self, d)
  local input, wrapped = wrap_input(d)
  self._seed = self._seed or seed_or_random(nil)
  local out = self:_run({input}, 0, self._seed, 0, self._calls)
  self._calls = self._calls + 1
  if wrapped then
    if #out == 1 then return out[1].img, out[1].img_meta_dict end
    local r = {}
    for i, o in ipairs(out) do r[i] = o.img end
    return r
  end
  if #out == 1 then return out[1] end
  return out
end

function Compose.__len(self) return #self.items end

function Compose.__tostring(self)
  local names = {}
  for i, x in ipairs(self.items) do names[i] = type(x) == "function" and "<lua function>" or x._name end
  return "Compose(" .. table.concat(names, ", ") .. ")"
end

return M
