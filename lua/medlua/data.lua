-- medlua.data: datasets and a data loader whose transforms run in native worker threads.
--
--   local data = require "medlua.data"
--   local T = require "medlua.transforms"
--   local files = data.load_datalist("dataset.json", "training")         -- {{image=..., label=...}, ...}
--   local ds = data.CacheDataset{data = files, transform = train_tf, cache_rate = 1.0, max_bytes = 4e9}
--   local loader = data.DataLoader(ds, {batch_size = 2, shuffle = true, num_workers = 2, seed = 0})
--   for epoch = 1, 10 do
--     for batch in loader:iter() do        -- batch.image [B, C, X, Y, Z], batch.label, batch.image_meta_dict
--       ...
--     end
--     print(loader:stats().wait_frac)      -- time waiting for batches / (waiting + training step)
--   end
--
-- Execution: the native transforms before the first Lua function of the Compose run in C worker
-- threads (one sample per worker at a time, single-threaded kernels) into a bounded queue of
-- `prefetch` batches; Lua functions (and anything after them) run on the main thread. With a seed,
-- the batches do not depend on num_workers: every sample's randomness is keyed by (seed, epoch,
-- index, transform). A failing sample (missing file...) raises its error, naming the data list
-- entry, at the batch that needs it.
local medlua = require "medlua"
local T = require "medlua.transforms"
local json = require "medlua.json"
local path = require "medlua.path"
local C = medlua._data
local M = {}

local function as_compose(tf, who)
  if tf == nil then return T.Compose{} end
  if getmetatable(tf) == T.ComposeClass then return tf end
  if getmetatable(tf) == T.Transform or type(tf) == "function" then return T.Compose{tf} end
  if type(tf) == "table" then return T.Compose(tf) end
  error(who .. ": transform must be a Compose, a transform, a Lua function or a list of them, got " .. type(tf), 3)
end

local function check_opts(who, opts, allowed)
  for k in pairs(opts) do
    if not allowed[k] then
      local names = {}
      for a in pairs(allowed) do names[#names + 1] = a end
      table.sort(names)
      error(string.format("%s: unknown option '%s' (expected one of: %s)", who, tostring(k), table.concat(names, ", ")), 3)
    end
  end
end

-- ------------------------------------------------------------------ datasets
local Dataset = {}
Dataset.__index = function(self, k)
  if math.type(k) == "integer" then return Dataset.get(self, k) end
  return Dataset[k]
end
M.DatasetClass = Dataset

local function new_dataset(who, opts, cache)
  if type(opts) ~= "table" then error(who .. ": expected an options table {data = ..., transform = ...}", 3) end
  local allowed = {data = true, transform = true}
  if cache then
    for _, k in ipairs{"cache_rate", "cache_num", "max_bytes", "num_workers", "lazy", "progress", "copy_cache",
      "as_contiguous", "runtime_cache", "hash_as_key", "hash_func"} do allowed[k] = true end
  end
  check_opts(who, opts, allowed)
  if type(opts.data) ~= "table" then error(who .. ": data must be a list of dictionaries", 3) end
  local tf = as_compose(opts.transform, who)
  local o = {native_end = tf.native_end}
  local self = {transform = tf, _n = #opts.data, _cache = cache}
  if cache then
    local rate = opts.cache_rate or 1.0
    if type(rate) ~= "number" or rate < 0 or rate > 1 then error(who .. ": cache_rate must be in [0, 1]", 3) end
    local num = math.floor(#opts.data * rate)
    if opts.cache_num then num = math.min(num, opts.cache_num) end
    o.cache_upto = tf.deterministic_end
    o.cache_n = num
    o.max_bytes = opts.max_bytes or 0
    self.cache_num = num
  end
  self._ds = C.dataset(opts.data, tf._pipe, o)
  setmetatable(self, Dataset)
  if cache and not opts.lazy and (o.cache_upto or 0) > 0 and self.cache_num > 0 then
    C.fill_cache(self._ds, opts.num_workers or medlua.threads())
  end
  return self
end

--- data.Dataset{data = list_of_dicts, transform = compose}
function M.Dataset(opts) return new_dataset("Dataset", opts, false) end

--- data.CacheDataset{data = ..., transform = ..., cache_rate = 1.0, cache_num = n, max_bytes = bytes,
---                   num_workers = threads used to fill the cache, lazy = false}
--- Keeps the output of the deterministic prefix (the transforms before the first random one) of the
--- first cache_rate * #data items in memory, as long as the total stays under max_bytes (items beyond
--- the budget are recomputed every time). The cache is filled at construction (as MONAI), or during the
--- first epoch with lazy = true.
function M.CacheDataset(opts) return new_dataset("CacheDataset", opts, true) end

function Dataset.__len(self) return self._n end

--- ds:get(i [, epoch]) -> the transformed dict of item i (1-based), or a list of dicts for multi-sample
--- transforms; runs on the calling thread.
function Dataset:get(i, epoch)
  if math.type(i) ~= "integer" or i < 1 or i > self._n then
    error(string.format("Dataset: index %s out of range [1, %d]", tostring(i), self._n), 2)
  end
  local tf = self.transform
  local seed = tf._seed or 0
  local list = C.dataset_get(self._ds, i, seed, epoch or 0)
  if tf.native_end < tf.n then list = tf:_run(list, tf.native_end, seed, epoch or 0, i - 1) end
  if #list == 1 then return list[1] end
  return list
end

--- ds:cache_info() -> {items, bytes, skipped, hits, misses, cache_num, max_bytes}
function Dataset:cache_info() return C.cache_info(self._ds) end

function Dataset.__tostring(self)
  return string.format("%s(%d items, %s)", self._cache and "CacheDataset" or "Dataset", self._n, tostring(self.transform))
end

-- ------------------------------------------------------------------ loader
local Loader = {}
Loader.__index = Loader
M.DataLoaderClass = Loader

--- data.DataLoader(ds, {batch_size = 1, shuffle = false, num_workers = 0, prefetch = 2 * max(1, num_workers),
---                      drop_last = false, seed = nil, collate = "stack" | "pad"})
--- seed nil: the Compose's random state if set, else a random seed. Batches hold batch_size items
--- times the samples each makes (RandCropByPosNegLabeld num_samples), as MONAI's list_data_collate.
function M.DataLoader(ds, opts)
  opts = opts or {}
  if getmetatable(ds) ~= Dataset then error("DataLoader: expected a data.Dataset or data.CacheDataset", 2) end
  check_opts("DataLoader", opts, {batch_size = true, shuffle = true, num_workers = true, prefetch = true,
    drop_last = true, seed = true, collate = true, pin_memory = true, persistent_workers = true})
  local nw = opts.num_workers or 0
  if math.type(nw) ~= "integer" or nw < 0 then error("DataLoader: num_workers must be an integer >= 0", 2) end
  local bs = opts.batch_size or 1
  if math.type(bs) ~= "integer" or bs < 1 then error("DataLoader: batch_size must be an integer >= 1", 2) end
  local collate = opts.collate or "stack"
  if collate ~= "stack" and collate ~= "pad" then error("DataLoader: collate must be \"stack\" or \"pad\"", 2) end
  local tf = ds.transform
  local seed = opts.seed
  if seed == nil then seed = tf._seed end
  if seed == nil then seed = math.random(0, 0x7fffffff) end
  if math.type(seed) ~= "integer" then error("DataLoader: seed must be an integer", 2) end
  local lua_suffix = tf.native_end < tf.n
  local prefetch = opts.prefetch or 2 * math.max(1, nw)
  local self = setmetatable({dataset = ds, batch_size = bs, num_workers = nw, seed = seed, _epoch = 0,
    _collate = collate, _suffix = lua_suffix, _lua_s = 0}, Loader)
  self._l = C.loader(ds._ds, {batch_size = bs, shuffle = opts.shuffle and true or false,
    drop_last = opts.drop_last and true or false, num_workers = nw, prefetch = prefetch, seed = seed,
    xform_seed = tf._seed or seed, collate = lua_suffix and "none" or collate})
  return self
end

function Loader.__len(self) return C.loader_len(self._l) end

--- loader:set_epoch(e): the next iter() runs epoch e (epochs count from 0 and advance by one per iter()).
function Loader:set_epoch(e)
  if math.type(e) ~= "integer" or e < 0 then error("DataLoader:set_epoch: epoch must be an integer >= 0", 2) end
  self._epoch = e
end

--- for batch, indices in loader:iter() do ... end   (indices: the data list entries of the batch)
function Loader:iter()
  local epoch = self._epoch
  self._epoch = epoch + 1
  C.loader_start(self._l, epoch)
  local tf = self.dataset.transform
  local xseed = tf._seed or self.seed
  return function()
    local b, idx = C.loader_next(self._l)
    if b == nil then return nil end
    if self._suffix then
      local t0 = medlua.clock and medlua.clock() or os.clock()
      local out = {}
      -- b is the list of samples, idx the data list entry of each; the samples of one entry are
      -- consecutive and go through the Lua part together (as in Dataset:get)
      local j = 1
      while j <= #b do
        local group = {b[j]}
        local k = j + 1
        while k <= #b and idx[k] == idx[j] do group[#group + 1] = b[k]; k = k + 1 end
        local r = tf:_run(group, tf.native_end, xseed, epoch, idx[j] - 1)
        for _, y in ipairs(r) do out[#out + 1] = y end
        j = k
      end
      b = C.collate(out, self._collate)
      self._lua_s = self._lua_s + ((medlua.clock and medlua.clock() or os.clock()) - t0)
      local items, seen = {}, {}
      for _, i in ipairs(idx) do
        if not seen[i] then seen[i] = true; items[#items + 1] = i end
      end
      idx = items
    end
    return b, idx
  end
end

--- loader:stats() -> {batches, samples, wait_s, step_s, produce_s, collate_s, lua_s, wait_frac,
---                    samples_per_s, num_workers, prefetch}
--- wait_s: the main thread blocked waiting for batches; step_s: the time between batches (the training
--- step); wait_frac = wait_s / (wait_s + step_s) (the loader keeps up when it is below ~0.05).
function Loader:stats()
  local s = C.loader_stats(self._l)
  s.lua_s = self._lua_s
  return s
end

function Loader:reset_stats()
  C.loader_reset_stats(self._l)
  self._lua_s = 0
end

--- loader:stop(): cancel the epoch in progress (e.g. after breaking out of the loop early).
function Loader:stop() C.loader_stop(self._l) end

--- loader:close(): stop and join the worker threads (also done by the garbage collector).
function Loader:close() C.loader_close(self._l) end
Loader.__close = Loader.close

function Loader.__tostring(self)
  return string.format("DataLoader(%d batches of %d, %d workers)", #self, self.batch_size, self.num_workers)
end

-- ------------------------------------------------------------------ data lists
local dirname, join, exists = path.dirname, path.resolve, path.exists

--- data.load_datalist(json_path, key = "training", base_dir = dirname(json_path), is_segmentation = true)
--- as MONAI's load_decathlon_datalist: "image" (and "label" for segmentation) are joined to base_dir;
--- other string values are joined when the result exists; entries that are plain strings become
--- {image = path}.
function M.load_datalist(path, key, base_dir, is_segmentation)
  key = key or "training"
  if is_segmentation == nil then is_segmentation = true end
  local f, err = io.open(path, "rb")
  if not f then error("load_datalist: " .. tostring(err), 2) end
  local text = f:read("a")
  f:close()
  local ok, doc = pcall(json.decode, text)
  if not ok then error("load_datalist: " .. path .. ": invalid JSON: " .. tostring(doc), 2) end
  if type(doc) ~= "table" or doc[key] == nil then
    error(string.format("load_datalist: %s: no key '%s' in the data list", path, key), 2)
  end
  local items = doc[key]
  if type(items) ~= "table" then error(string.format("load_datalist: %s: '%s' must be a list", path, key), 2) end
  base_dir = base_dir or dirname(path)
  local out = {}
  for i, it in ipairs(items) do
    if type(it) == "string" then it = {image = it} end
    if type(it) ~= "table" then
      error(string.format("load_datalist: %s: %s[%d] must be a dictionary or a path", path, key, i), 2)
    end
    local d = {}
    for k, v in pairs(it) do
      if type(v) == "string" then
        if k == "image" or (is_segmentation and k == "label") then d[k] = join(base_dir, v)
        else
          local j = join(base_dir, v)
          d[k] = exists(j) and j or v
        end
      elseif type(v) == "table" then
        local l = {}
        for q, e in ipairs(v) do l[q] = type(e) == "string" and join(base_dir, e) or e end
        d[k] = l
      else
        d[k] = v
      end
    end
    out[i] = d
  end
  return out
end

local function strip_ext(name)
  local s = name:gsub("%.nii%.gz$", ""):gsub("%.nii$", ""):gsub("%.mha$", ""):gsub("%.nrrd$", "")
  return s
end

--- data.pair_folder(images_dir, labels_dir, {image_key = "image", label_key = "label",
---                  pattern = "%.nii%.gz$|%.nii$", strict = true})
--- -> {{image = images_dir/x.nii.gz, label = labels_dir/x.nii.gz}, ...} sorted by name. A label matches an
--- image with the same name, or the same name without the nnU-Net channel suffix (_0000). strict: an
--- image without a label is an error naming it (else it is skipped). labels_dir nil: images only.
function M.pair_folder(images_dir, labels_dir, opts)
  opts = opts or {}
  local ik, lk = opts.image_key or "image", opts.label_key or "label"
  local function is_image(n)
    if opts.pattern then return n:match(opts.pattern) ~= nil end
    return n:match("%.nii%.gz$") or n:match("%.nii$")
  end
  local ok, names = pcall(C.listdir, images_dir)
  if not ok then error("pair_folder: " .. tostring(names), 2) end
  local labels = {}
  if labels_dir then
    local ok2, lnames = pcall(C.listdir, labels_dir)
    if not ok2 then error("pair_folder: " .. tostring(lnames), 2) end
    for _, n in ipairs(lnames) do
      if is_image(n) then labels[strip_ext(n)] = n end
    end
  end
  local out = {}
  for _, n in ipairs(names) do
    if is_image(n) then
      local d = {[ik] = images_dir .. "/" .. n}
      if labels_dir then
        local stem = strip_ext(n)
        local l = labels[stem] or labels[(stem:gsub("_%d%d%d%d$", ""))]
        if l then
          d[lk] = labels_dir .. "/" .. l
        elseif opts.strict ~= false then
          error(string.format("pair_folder: %s/%s has no label in %s", images_dir, n, labels_dir), 2)
        else
          d = nil
        end
      end
      if d then out[#out + 1] = d end
    end
  end
  return out
end

--- data.collate(list_of_dicts, "stack" | "pad") -> batch
function M.collate(list, mode) return C.collate(list, mode) end

return M
