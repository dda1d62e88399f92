-- medlua.labelmap: choose segmentation classes from a label map's values, and remap label volumes.
--
--   local labelmap = require "medlua.labelmap"
--   local lm = labelmap.parse("vertebrae=26-50,spinal_cord=79")              -- values and ranges
--   local lm = labelmap.parse("liver,spleen", "labels_total.tsv")            -- structure names
--   local lm = labelmap.parse("vertebrae=vertebrae_*,spinal_cord", "labels_total.tsv")  -- globs
--   lm.names        -> {"background", "vertebrae", "spinal_cord"}  (class index = position - 1)
--   lm.num_classes  -> 3
--   local cls = labelmap.remap(label_volume, lm)   -- uint8 volume of class indices, same geometry
--   labelmap.check_present(label_volume, lm, "seg.nii.gz")   -- error for a class absent from a file
--   labelmap.read_tsv("labels_total.tsv")          -> {[1] = "spleen", ...}, {spleen = 1, ...}
--
-- Voxels whose value belongs to no class become background (0). A value claimed by two classes is an
-- error. Without a label map, labelmap.identity(n) keeps values 0..n-1 and labelmap.remap refuses
-- any other value, naming it.
local medlua = require "medlua"

local M = {}

local function fail(fmt, ...) error("labelmap: " .. string.format(fmt, ...), 3) end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

--- labelmap.read_tsv(path) -> names_by_value, value_by_name   (lines "value<TAB>name"; '#' comments)
function M.read_tsv(path)
  local f, err = io.open(path, "r")
  if not f then fail("cannot open label table %s: %s", path, tostring(err)) end
  local by_value, by_name = {}, {}
  local n = 0
  for line in f:lines() do
    n = n + 1
    line = trim(line)
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local v, name = line:match("^(%d+)%s+(%S+)$")
      if not v then
        f:close()
        fail("%s:%d: expected 'value<TAB>name', got '%s'", path, n, line)
      end
      v = math.tointeger(tonumber(v))
      by_value[v] = name
      by_name[name] = v
    end
  end
  f:close()
  return by_value, by_name
end

local function glob_to_pattern(g)
  return "^" .. g:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$"
end

-- values of one class spec: "26-50", "79", "26-50+79", "vertebrae_*", "spinal_cord"
local function parse_values(spec, cname, table_path, by_name)
  local ranges = {}
  for part in spec:gmatch("[^+]+") do
    part = trim(part)
    local lo, hi = part:match("^(%d+)%s*%-%s*(%d+)$")
    if lo then
      lo, hi = tonumber(lo), tonumber(hi)
      if hi < lo then fail("class '%s': range %s is empty", cname, part) end
      ranges[#ranges + 1] = {lo, hi}
    elseif part:match("^%d+$") then
      local v = tonumber(part)
      ranges[#ranges + 1] = {v, v}
    else
      if not by_name then
        fail("class '%s': '%s' is a structure name, but no label table was given (e.g. labels_total.tsv)", cname, part)
      end
      local pat, found = glob_to_pattern(part), {}
      for name, v in pairs(by_name) do
        if name:match(pat) then found[#found + 1] = v end
      end
      if #found == 0 then
        fail("class '%s': no structure named '%s' in %s", cname, part, table_path or "the label table")
      end
      table.sort(found)
      for _, v in ipairs(found) do ranges[#ranges + 1] = {v, v} end
    end
  end
  if #ranges == 0 then fail("class '%s' has no values", cname) end
  for _, r in ipairs(ranges) do
    if r[1] < 1 then fail("class '%s': value %d is background (0) and cannot be a class", cname, r[1]) end
  end
  return ranges
end

local LM = {}
LM.__index = LM
M.LabelMapClass = LM

--- labelmap.parse(spec, table_path?) -> label map
--- spec: comma-separated classes "name=values" or "structure_name" (with a table); values are integers,
--- ranges a-b, structure names or globs from the table, joined by '+'.
function M.parse(spec, table_path)
  if type(spec) ~= "string" or trim(spec) == "" then fail("expected a label map string like 'vertebrae=26-50,spinal_cord=79'") end
  local by_name
  if table_path then
    local _, bn = M.read_tsv(table_path)
    by_name = bn
  end
  local lm = setmetatable({names = {"background"}, classes = {}, spec = spec, table_path = table_path}, LM)
  local seen = {}
  for item in spec:gmatch("[^,]+") do
    item = trim(item)
    local name, vals = item:match("^([%w_%-%.]+)%s*=%s*(.+)$")
    if not name then
      name, vals = item, item
      if not item:match("^[%w_%-%.%*%?]+$") then fail("cannot read class '%s' (expected name=values)", item) end
    end
    if seen[name] then fail("class '%s' is given twice", name) end
    seen[name] = true
    local ranges = parse_values(vals, name, table_path, by_name)
    lm.classes[#lm.classes + 1] = {name = name, index = #lm.classes + 1, ranges = ranges}
    lm.names[#lm.names + 1] = name
  end
  -- a value may belong to one class only
  for i, a in ipairs(lm.classes) do
    for j = i + 1, #lm.classes do
      local b = lm.classes[j]
      for _, ra in ipairs(a.ranges) do
        for _, rb in ipairs(b.ranges) do
          if ra[1] <= rb[2] and rb[1] <= ra[2] then
            fail("value %d belongs to both '%s' and '%s'", math.max(ra[1], rb[1]), a.name, b.name)
          end
        end
      end
    end
  end
  lm.num_classes = #lm.names
  return lm
end

--- labelmap.identity(n, names?) -> a label map keeping values 0..n-1 (names default class_1...)
function M.identity(n, names)
  if math.type(n) ~= "integer" or n < 2 then fail("identity: need at least 2 classes, got %s", tostring(n)) end
  local lm = setmetatable({names = {}, classes = {}, identity = true, spec = "identity"}, LM)
  for i = 0, n - 1 do lm.names[i + 1] = names and names[i + 1] or (i == 0 and "background" or ("class_" .. i)) end
  for i = 1, n - 1 do lm.classes[i] = {name = lm.names[i + 1], index = i, ranges = {{i, i}}} end
  lm.num_classes = n
  return lm
end

function LM:__tostring()
  local parts = {}
  for _, c in ipairs(self.classes) do
    local rs = {}
    for _, r in ipairs(c.ranges) do rs[#rs + 1] = r[1] == r[2] and tostring(r[1]) or (r[1] .. "-" .. r[2]) end
    parts[#parts + 1] = string.format("%d:%s=%s", c.index, c.name, table.concat(rs, "+"))
  end
  return "LabelMap(" .. table.concat(parts, ", ") .. ")"
end

--- lm:to_json_table() -> {spec =, names = {...}, classes = {{name, index, values = {{lo, hi}}}}}
function LM:to_json_table()
  local cls = {}
  for _, c in ipairs(self.classes) do cls[#cls + 1] = {name = c.name, index = c.index, values = c.ranges} end
  return {spec = self.spec, names = self.names, classes = cls}
end

local function is_volume(x)
  local mt = type(x) == "userdata" and getmetatable(x)
  return mt and mt.__name == "Volume"
end

local function data_of(x, who)
  if is_volume(x) then return x.data end
  if medlua.is_tensor(x) then return x end
  fail("%s: expected a Volume or a tensor, got %s", who, type(x))
end

--- labelmap.values(vol_or_tensor) -> sorted list of the distinct integer values present
function M.values(x)
  local t = data_of(x, "values")
  local mx = t:amax():item()
  local mn = t:amin():item()
  if mn < 0 then return nil, mn end
  if mx > 65535 then fail("values: label value %g is too large for a label map", mx) end
  local counts = medlua.zeros({math.floor(mx) + 1}, {dtype = "float64"})
  local idx = t:long():flatten()
  counts:scatter_add_(0, idx, medlua.ones({idx:numel()}, {dtype = "float64"}))
  local out = {}
  local c = counts:tolist()
  for v = 0, #c - 1 do if c[v + 1] > 0 then out[#out + 1] = v end end
  return out
end

--- labelmap.remap(vol_or_tensor, lm, what?) -> uint8 class indices (a Volume when given one)
--- what: a name for error messages (the file). Non-integer label values are an error.
function M.remap(x, lm, what)
  if getmetatable(lm) ~= LM then fail("remap: expected a label map from labelmap.parse / identity") end
  what = what or "label"
  local t = data_of(x, "remap")
  local frac = (t - t:round()):abs():amax():item()
  if frac > 1e-3 then fail("%s: label values must be integers (found a value %g away from one)", what, frac) end
  if lm.identity then
    local mn, mx = t:amin():item(), t:amax():item()
    if mn < 0 or mx > lm.num_classes - 1 then
      local bad = mn < 0 and mn or mx
      fail("%s: label value %g is not in the label map (classes 0..%d); give --labels to choose classes",
        what, bad, lm.num_classes - 1)
    end
    local out = t:round():byte()
    if is_volume(x) then
      local v = x:with_data(out)
      v.is_label = true
      return v
    end
    return out
  end
  local out = medlua.zeros(t:size(), {dtype = "uint8"})
  for _, c in ipairs(lm.classes) do
    for _, r in ipairs(c.ranges) do
      local m = (r[1] == r[2]) and t:eq(r[1]) or t:ge(r[1] - 0.5):logical_and(t:le(r[2] + 0.5))
      out = medlua.where(m, c.index, out)
    end
  end
  out = out:byte()
  if is_volume(x) then
    local v = x:with_data(out)
    v.is_label = true
    return v
  end
  return out
end

--- labelmap.check_present(vol_or_tensor (already remapped), lm, what) -> counts per class;
--- an error naming the file when a class has no voxel in it.
function M.count(x, lm)
  local t = data_of(x, "count"):long():flatten()
  local counts = medlua.zeros({lm.num_classes}, {dtype = "float64"})
  counts:scatter_add_(0, t, medlua.ones({t:numel()}, {dtype = "float64"}))
  return counts:tolist()
end

function M.check_present(x, lm, what)
  local c = M.count(x, lm)
  for i = 2, lm.num_classes do
    if c[i] == 0 then
      local cl = lm.classes[i - 1]
      local rs = {}
      for _, r in ipairs(cl.ranges) do rs[#rs + 1] = r[1] == r[2] and tostring(r[1]) or (r[1] .. "-" .. r[2]) end
      fail("%s: no voxel of class '%s' (label values %s) -- check --labels against the label file",
        what or "label", cl.name, table.concat(rs, "+"))
    end
  end
  return c
end

return M
