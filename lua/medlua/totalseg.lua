-- medlua.totalseg: the TotalSegmentator dataset layout, 2-D slice datasets for multi-label training,
-- and whole-volume prediction with a 2-D network (seed 004: train_unet2d / analyze_segmentation).
--
--   local totalseg = require "medlua.totalseg"
--   local tbl = totalseg.read_table("data/samples/labels_total.tsv")      -- 117 names by value
--   local names = totalseg.select(tbl, "liver,spleen,vertebrae_*")        -- error lists close names
--   totalseg.split("ct.nii.gz", "seg.nii.gz", tbl, "dataset", "s0001")    -- dataset/s0001/ct.nii.gz +
--                                                                         --   segmentations/<name>.nii.gz
--   local ml = totalseg.merge("dataset/s0001", tbl)                       -- the multi-label map back
--   local ct, mask, info = totalseg.align_series("dicom_dir", "mask.nii.gz")  -- by slice position
--   local subj = totalseg.load_subject("dataset/s0001", names)            -- CT + masks, grids checked
--   local probs = totalseg.predict_volume(net, ct, config)                -- [K, X, Y, Z], ct's own grid
--
-- Layout (TotalSegmentator): a root folder of subjects; each subject folder holds ct.nii.gz and
-- segmentations/<structure>.nii.gz, one binary uint8 mask per structure on the CT's voxel grid
-- (TotalSegmentator writes all 117, empty ones included). A label table maps value <-> name:
-- "value<TAB>name" lines (labels_total.tsv) or a CSV with 'structure' and 'id' columns.
--
-- Grids: a mask must describe the CT's voxels: the same shape and affine (to 1e-3), or the same voxels
-- stored in another axis order (e.g. LAS vs LPS), which is undone exactly by a permutation/flip; anything
-- else is an error naming the file. Written subjects appear whole or not at all: a subject is written
-- into a hidden staging folder next to it and renamed into place when every file is written (each
-- NIfTI file is itself written to a temporary name and renamed).
--
-- Slices (training): each subject is put in RAS axis order (an exact permutation/flip), cut along
-- `axis` (0 = sagittal, 1 = coronal, 2 = axial), intensities windowed ({center, width} -> [0, 1]) or
-- clipped and z-scored, resized to target_shape (bilinear for the image; centred nearest for the
-- labels, which stay exact label values) and kept in memory: images [N, 1, H, W] float32 and the
-- structures as uint8 "layers" [N, H, W] holding the channel number (1..K) of the structure at each
-- pixel (structures that overlap go to a second layer), so 117 structures cost one byte per pixel.
-- A batch is cut from these banks with native tensor ops (index_select, a broadcast comparison against
-- 1..K), giving multi-label targets [B, K, H, W] (one channel per structure, overlaps allowed).
local medlua = require "medlua"
local volume = require "medlua.volume"
local json = require "medlua.json"
local path = require "medlua.path"
local F = medlua.F

local M = {}

local function fail(fmt, ...) error("totalseg: " .. string.format(fmt, ...), 0) end

-- ------------------------------------------------------------------ files
local exists = path.exists

local function listdir(p) return medlua._data.listdir(p) end

local is_dir, basename = path.is_dir, path.basename
M.is_dir = is_dir

local function mkdir(p)
  local ok = pcall(path.mkdir, p)
  if not ok then fail("%s: cannot create the folder", p) end
end
M.mkdir = mkdir

-- removes a file or a folder tree (only what this module created: staging folders, replaced subjects)
local function rm_tree(p)
  local ok, names = pcall(listdir, p)
  if ok then
    for _, n in ipairs(names) do rm_tree(p .. "/" .. n) end
    -- listdir skips hidden names: remove those too
    local h = io.popen("ls -A -- '" .. p:gsub("'", "'\\''") .. "' 2>/dev/null")
    if h then
      for n in h:lines() do if n:sub(1, 1) == "." then rm_tree(p .. "/" .. n) end end
      h:close()
    end
  end
  os.remove(p)
end
M._rm_tree = rm_tree

--- the repository (or install) folder, found from this file's location
function M.root()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  return src:match("^(.*)/lua/medlua/totalseg%.lua$") or "."
end

-- ------------------------------------------------------------------ label tables
local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function split_csv(line)
  local out = {}
  for f in (line .. ","):gmatch("([^,]*),") do out[#out + 1] = trim(f) end
  return out
end

local Table = {}
Table.__index = Table
M.TableClass = Table

--- totalseg.read_table(path) -> {path, names (by value), by_name = {name = value}, by_value = {value = name}}
--- "value<TAB>name" lines ('#' comments), or a CSV whose header names 'structure' (or 'name') and 'id'
--- (or 'value') columns, as ct_lidc0001/totalseg_mask_structures.csv.
function M.read_table(path)
  if type(path) ~= "string" then fail("read_table: expected a path, got %s", type(path)) end
  local f, err = io.open(path, "r")
  if not f then fail("cannot open the label table %s: %s", path, tostring(err)) end
  local text = f:read("a")
  f:close()
  local t = setmetatable({path = path, names = {}, by_name = {}, by_value = {}}, Table)
  local lines = {}
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line:gsub("\r$", "") end
  local csv_name, csv_value
  local first = 1
  while first <= #lines and (trim(lines[first]) == "" or trim(lines[first]):sub(1, 1) == "#") do first = first + 1 end
  if lines[first] and lines[first]:find(",", 1, true) and not lines[first]:match("^%s*%d") then
    local head = split_csv(lines[first])
    for i, h in ipairs(head) do
      h = h:lower()
      if h == "structure" or h == "name" then csv_name = i end
      if h == "id" or h == "value" or h == "label" then csv_value = i end
    end
    if not csv_name or not csv_value then
      fail("%s: a CSV label table needs 'structure' and 'id' columns, the header is '%s'", path, lines[first])
    end
    first = first + 1
  end
  local entries = {}
  for ln = first, #lines do
    local line = trim(lines[ln])
    if line ~= "" and line:sub(1, 1) ~= "#" then
      local v, name
      if csv_name then
        local cols = split_csv(line)
        v, name = cols[csv_value], cols[csv_name]
      else
        v, name = line:match("^(%d+)%s+(%S+)$")
      end
      v = v and math.tointeger(tonumber(v))
      if not v or not name or name == "" then
        fail("%s:%d: expected '%s', got '%s'", path, ln, csv_name and "a CSV row with a structure and an id" or
          "value<TAB>name", line)
      end
      if v < 1 or v > 65535 then fail("%s:%d: label value %d out of range 1..65535", path, ln, v) end
      if t.by_name[name] then fail("%s:%d: structure '%s' is listed twice", path, ln, name) end
      if t.by_value[v] then fail("%s:%d: value %d is listed twice ('%s' and '%s')", path, ln, v, t.by_value[v], name) end
      t.by_name[name], t.by_value[v] = v, name
      entries[#entries + 1] = {v, name}
    end
  end
  if #entries == 0 then fail("%s: the label table is empty", path) end
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  for i, e in ipairs(entries) do t.names[i] = e[2] end
  return t
end

function Table:__tostring()
  return string.format("LabelTable(%d structures, %s)", #self.names, self.path or "?")
end

--- the default table: data/samples/labels_total.tsv (TotalSegmentator "total", 117 structures)
function M.default_table_path() return M.root() .. "/data/samples/labels_total.tsv" end

local function as_table(t)
  if t == nil then return M.read_table(M.default_table_path()) end
  if type(t) == "string" then return M.read_table(t) end
  if getmetatable(t) == Table then return t end
  if type(t) == "table" and t.by_name and t.names then return setmetatable(t, Table) end
  fail("expected a label table (totalseg.read_table) or its path, got %s", type(t))
end
M.as_table = as_table

-- ------------------------------------------------------------------ structure names
local function levenshtein(a, b)
  local la, lb = #a, #b
  if la == 0 then return lb end
  if lb == 0 then return la end
  local prev, cur = {}, {}
  for j = 0, lb do prev[j] = j end
  for i = 1, la do
    cur[0] = i
    local ca = a:byte(i)
    for j = 1, lb do
      local cost = ca == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev, cur = cur, prev
  end
  return prev[lb]
end

--- totalseg.close_names(name, names, n = 5) -> the n names closest to `name` (edit distance, substrings first)
function M.close_names(name, names, n)
  n = n or 5
  local q = name:lower():gsub("[%*%?]", "")
  local scored = {}
  for _, c in ipairs(names) do
    local cl = c:lower()
    local d = levenshtein(q, cl)
    -- a name containing the query (kidney -> kidney_left) is close, the more so the shorter it is
    if #q >= 3 and cl:find(q, 1, true) then d = math.min(d, 1 + (#cl - #q) / 10) end
    -- a shared leading word (liver_x -> liver...)
    local w = q:match("^[^_]+")
    if w and #w >= 3 and cl:sub(1, #w) == w then d = d - 0.5 end
    scored[#scored + 1] = {d, c}
  end
  table.sort(scored, function(x, y) if x[1] ~= y[1] then return x[1] < y[1] end return x[2] < y[2] end)
  local out = {}
  for i = 1, math.min(n, #scored) do out[i] = scored[i][2] end
  return out
end

local function glob_pattern(g)
  return "^" .. g:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$"
end

local function unknown(name, tbl, what)
  fail("unknown structure '%s'%s (not in %s); close names: %s", name, what and (" " .. what) or "",
    tbl.path or "the label table", table.concat(M.close_names(name, tbl.names, 5), ", "))
end

--- totalseg.select(tbl, spec) -> list of names. spec: nil, "", "all" or "*" = every structure in the
--- table's order; else names and globs, comma-separated (a string) or a list: "liver,spleen,vertebrae_*".
--- Order: as given (a glob expands in table order); duplicates dropped. An unknown name, or a glob that
--- matches nothing, is an error listing close names.
function M.select(tbl, spec)
  tbl = as_table(tbl)
  if spec == nil or spec == "" or spec == "all" or spec == "*" then
    return {table.unpack(tbl.names)}
  end
  local items = {}
  if type(spec) == "string" then
    for p in spec:gmatch("[^,]+") do
      p = trim(p)
      if p ~= "" then items[#items + 1] = p end
    end
  elseif type(spec) == "table" then
    for _, p in ipairs(spec) do items[#items + 1] = p end
  else
    fail("structures must be a comma-separated string or a list of names, got %s", type(spec))
  end
  if #items == 0 then fail("no structure names given") end
  local out, seen = {}, {}
  local function add(n) if not seen[n] then seen[n] = true; out[#out + 1] = n end end
  for _, p in ipairs(items) do
    if type(p) ~= "string" then fail("structure names must be strings, got %s", type(p)) end
    if p == "all" or p == "*" then
      for _, n in ipairs(tbl.names) do add(n) end
    elseif p:find("[%*%?]") then
      local pat, found = glob_pattern(p), 0
      for _, n in ipairs(tbl.names) do
        if n:match(pat) then add(n); found = found + 1 end
      end
      if found == 0 then unknown(p, tbl, "(the pattern matches no structure)") end
    else
      if not tbl.by_name[p] then unknown(p, tbl) end
      add(p)
    end
  end
  return out
end

-- ------------------------------------------------------------------ affines and grids
local function aff_list(a)
  if medlua.is_tensor(a) then
    if a:dim() == 3 then a = a:select(0, 0) end
    return a:double():tolist()
  end
  return a
end

local function inv4(m)
  -- affine inverse: [R t; 0 1]^-1 = [R^-1, -R^-1 t]
  local a, b, c = m[1][1], m[1][2], m[1][3]
  local d, e, f = m[2][1], m[2][2], m[2][3]
  local g, h, i = m[3][1], m[3][2], m[3][3]
  local A, B, C = e * i - f * h, -(d * i - f * g), d * h - e * g
  local det = a * A + b * B + c * C
  if math.abs(det) < 1e-12 then fail("singular affine") end
  local r = {
    {A / det, -(b * i - c * h) / det, (b * f - c * e) / det},
    {B / det, (a * i - c * g) / det, -(a * f - c * d) / det},
    {C / det, -(a * h - b * g) / det, (a * e - b * d) / det},
  }
  local out = {}
  for row = 1, 3 do
    local tr = -(r[row][1] * m[1][4] + r[row][2] * m[2][4] + r[row][3] * m[3][4])
    out[row] = {r[row][1], r[row][2], r[row][3], tr}
  end
  out[4] = {0, 0, 0, 1}
  return out
end
M._inv4 = inv4

local function mul4(a, b)
  local out = {}
  for r = 1, 4 do
    out[r] = {}
    for c = 1, 4 do
      local s = 0
      for k = 1, 4 do s = s + a[r][k] * b[k][c] end
      out[r][c] = s
    end
  end
  return out
end

local function max_diff(a, b)
  local m = 0
  for r = 1, 4 do for c = 1, 4 do m = math.max(m, math.abs(a[r][c] - b[r][c])) end end
  return m
end

local function geom_str(shape, aff)
  local sp, ax = {}, {}
  for c = 1, 3 do
    sp[c] = string.format("%.4g", math.sqrt(aff[1][c] ^ 2 + aff[2][c] ^ 2 + aff[3][c] ^ 2))
  end
  local ok, codes = pcall(volume.axcodes, medlua.tensor(aff, {dtype = "float64"}))
  return string.format("shape %s, spacing %s mm, origin (%.4g, %.4g, %.4g), %s", table.concat(shape, "x", 1, 3),
    table.concat(sp, "x"), aff[1][4], aff[2][4], aff[3][4], ok and codes or "?")
end
M._geom_str = geom_str

--- totalseg.grid_map(ref_affine, ref_shape, affine, shape, tol = 1e-3) -> map or nil, reason
--- When the grid (affine, shape) holds the same voxels as the reference grid, possibly in another axis
--- order: map = {perm = {axis of the grid for each reference axis (0-based)}, flip = {bool per reference
--- axis}, identity = bool}. The test: the affine implied by the permutation equals ref_affine to tol
--- (mm), and the shapes agree.
function M.grid_map(ref_aff, ref_shape, aff, shape, tol)
  tol = tol or 1e-3
  ref_aff, aff = aff_list(ref_aff), aff_list(aff)
  if #ref_shape < 3 or #shape < 3 then return nil, "not a 3-D grid" end
  local same_shape = ref_shape[1] == shape[1] and ref_shape[2] == shape[2] and ref_shape[3] == shape[3]
  if same_shape and max_diff(ref_aff, aff) <= tol then
    return {perm = {0, 1, 2}, flip = {false, false, false}, identity = true}
  end
  local mi = inv4(aff)
  local m = mul4(mi, ref_aff) -- reference voxel -> grid voxel
  local perm, flip, used = {}, {}, {}
  local P = {{0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 0}, {0, 0, 0, 1}}
  for i = 1, 3 do
    local best, bj = -1, nil
    for j = 1, 3 do if math.abs(m[j][i]) > best then best, bj = math.abs(m[j][i]), j end end
    if used[bj] then return nil, "the axes are not a permutation of the reference's" end
    used[bj] = true
    perm[i] = bj - 1
    flip[i] = m[bj][i] < 0
    if ref_shape[i] ~= shape[bj] then return nil, "the shapes differ" end
    P[bj][i] = flip[i] and -1 or 1
    P[bj][4] = flip[i] and (shape[bj] - 1) or 0
  end
  local implied = mul4(aff, P)
  if max_diff(implied, ref_aff) > tol then return nil, "the voxels are not at the same positions" end
  local identity = perm[1] == 0 and perm[2] == 1 and perm[3] == 2 and not (flip[1] or flip[2] or flip[3])
  return {perm = perm, flip = flip, identity = identity}
end

local function flip_dim(t, d)
  local n = t:size(d)
  return t:index_select(d, medlua.arange(n - 1, -1, -1):long())
end

--- a view of t with its dims in memory order (largest stride first), and the permutation back. Volumes
--- read from NIfTI/DICOM are [X, Y, Z] with X fastest in memory (strides 1, X, X*Y); the elementwise and
--- reduction kernels are fast on contiguous memory only, so whole-volume arithmetic runs on this view.
local function storage_view(t)
  local st, nd = t:stride(), t:dim()
  local dims = {}
  for d = 0, nd - 1 do dims[#dims + 1] = d end
  table.sort(dims, function(a, b)
    if st[a + 1] ~= st[b + 1] then return st[a + 1] > st[b + 1] end
    return a < b
  end)
  local inv = {}
  for i, d in ipairs(dims) do inv[d + 1] = i - 1 end
  local v = t:permute(table.unpack(dims))
  if not v:is_contiguous() then v = v:contiguous() end
  return v, inv
end
M._storage_view = storage_view

--- fn applied elementwise to t through its memory-order view; the result indexed like t
local function elementwise(t, fn)
  local v, inv = storage_view(t)
  return fn(v):permute(table.unpack(inv))
end
M._elementwise = elementwise

--- totalseg.apply_map(t, map) -> t (3-D tensor of the grid) in the reference's voxel order (a copy)
function M.apply_map(t, map)
  if map.identity then return t end
  local r = t:permute(map.perm[1], map.perm[2], map.perm[3])
  for i = 1, 3 do if map.flip[i] then r = flip_dim(r, i - 1) end end
  return r:contiguous()
end

local function shape3(v)
  local s = v.shape
  return {s[1], s[2], s[3]}
end

--- totalseg.match_grid(ct, vol, what, ct_what) -> vol's data on ct's voxel grid (tensor), or an error naming
--- `what` (the file) when the grids differ
function M.match_grid(ct, vol, what, ct_what)
  if vol.ndim ~= 3 then fail("%s: expected a 3-D volume, got shape %s", what, table.concat(vol.shape, "x")) end
  local map, why = M.grid_map(ct.affine, shape3(ct), vol.affine, shape3(vol))
  if not map then
    fail("%s: its grid (%s) differs from the CT%s (%s): %s", what, geom_str(shape3(vol), aff_list(vol.affine)),
      ct_what and (" " .. ct_what) or "", geom_str(shape3(ct), aff_list(ct.affine)), why)
  end
  return M.apply_map(vol.data, map)
end

-- ------------------------------------------------------------------ loading
local function load_volume(path, what, opts)
  if not exists(path) and not is_dir(path) then fail("%s: no such file or folder", path) end
  local ok, v = pcall(volume.load, path, opts)
  if not ok then fail("%s: cannot read %s: %s", path, what or "the volume", tostring(v):gsub("^[^:]*%.lua:%d+: ", "")) end
  return v
end
M.load_volume = load_volume

local function as_volume(x, what)
  if type(x) == "string" then return load_volume(x, what), x end
  local mt = type(x) == "userdata" and getmetatable(x)
  if mt and mt.__name == "Volume" then return x, nil end
  fail("%s: expected a Volume or a path, got %s", what, type(x))
end

-- ------------------------------------------------------------------ aligning a DICOM series with a mask
local function num_list(s)
  local out = {}
  for x in tostring(s or ""):gmatch("[^\\]+") do out[#out + 1] = tonumber(x) end
  return out
end

--- totalseg.align_series(series_dir, mask, opts) -> ct Volume, mask Volume on the CT's grid, info
--- Reads the DICOM series and, per slice, its ImagePositionPatient; every slice is matched to the mask
--- slice at the same world position (not the same index), so a series with slices missing (a subset of
--- the files, even unevenly spaced) still gets the right mask slices. The in-plane grids must match (a
--- permutation/flip of axes is undone exactly). info = {slices = {{file, position = {x, y, z} (RAS mm),
--- mask_index (0-based)}...}, uneven = bool (the reader had to use the median gap in the affine)}.
--- mask: a Volume or a path. A slice with no mask slice at its position is an error naming the file.
function M.align_series(series_dir, mask, opts)
  opts = opts or {}
  local tol = opts.tol or 1e-2
  local ct = load_volume(series_dir, "the DICOM series")
  local mvol, mpath = as_volume(mask, "mask")
  mpath = mpath or "mask"
  if ct.ndim ~= 3 then fail("%s: expected a 3-D series, got shape %s", series_dir, table.concat(ct.shape, "x")) end
  -- the files of the series and their positions
  local files = {}
  local ok, names = pcall(listdir, series_dir)
  if not ok then fail("%s: not a folder of DICOM files", series_dir) end
  local by_uid = {}
  for _, n in ipairs(names) do
    local p = series_dir .. "/" .. n
    local okt, tags = pcall(medlua._volume.read_dicom_tags, p,
      {"SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient"})
    if okt and tags.ImagePositionPatient and tags.ImageOrientationPatient then
      local uid = tags.SeriesInstanceUID or ""
      by_uid[uid] = by_uid[uid] or {}
      table.insert(by_uid[uid], {file = p, ipp = num_list(tags.ImagePositionPatient),
        iop = num_list(tags.ImageOrientationPatient)})
    end
  end
  for _, list in pairs(by_uid) do if #list > #files then files = list end end
  local nz = ct.shape[3]
  if #files ~= nz then
    fail("%s: %d DICOM files with positions but the series has %d slices (one frame per file is expected)",
      series_dir, #files, nz)
  end
  -- sort along the slice normal (as the reader), LPS -> RAS
  local iop = files[1].iop
  local nrm = {iop[2] * iop[6] - iop[3] * iop[5], iop[3] * iop[4] - iop[1] * iop[6], iop[1] * iop[5] - iop[2] * iop[4]}
  for _, f in ipairs(files) do
    f.d = f.ipp[1] * nrm[1] + f.ipp[2] * nrm[2] + f.ipp[3] * nrm[3]
    f.position = {-f.ipp[1], -f.ipp[2], f.ipp[3]}
  end
  table.sort(files, function(a, b) return a.d < b.d end)
  -- in-plane axes of the CT (affine columns 0, 1) in mask voxel units
  local ca, ma = aff_list(ct.affine), aff_list(mvol.affine)
  local mi = inv4(ma)
  local mshape = shape3(mvol)
  local axes, flips, used = {}, {}, {}
  for c = 1, 2 do
    local v = {}
    for r = 1, 3 do v[r] = mi[r][1] * ca[1][c] + mi[r][2] * ca[2][c] + mi[r][3] * ca[3][c] end
    local best, bj = -1, nil
    for r = 1, 3 do if math.abs(v[r]) > best then best, bj = math.abs(v[r]), r end end
    for r = 1, 3 do
      local want = r == bj and (v[bj] < 0 and -1 or 1) or 0
      if math.abs(v[r] - want) > 1e-3 then
        fail("%s: the mask's in-plane grid (%s) differs from the series %s (%s): pixel spacing or orientation",
          mpath, geom_str(mshape, ma), series_dir, geom_str(shape3(ct), ca))
      end
    end
    if used[bj] then fail("%s: the mask's axes are not a permutation of the series'", mpath) end
    used[bj] = true
    axes[c], flips[c] = bj, v[bj] < 0
    if ct.shape[c] ~= mshape[bj] then
      fail("%s: the mask has %d voxels along axis %d, the series %s has %d along its axis %d", mpath, mshape[bj], bj - 1,
        series_dir, ct.shape[c], c - 1)
    end
  end
  local saxis = 6 - axes[1] - axes[2]
  local msp = math.sqrt(ma[1][saxis] ^ 2 + ma[2][saxis] ^ 2 + ma[3][saxis] ^ 2)
  local idx = {}
  local info = {slices = {}, uneven = false}
  for k, f in ipairs(files) do
    local p = f.position
    local q = {}
    for r = 1, 3 do q[r] = mi[r][1] * p[1] + mi[r][2] * p[2] + mi[r][3] * p[3] + mi[r][4] end
    -- the slice's first pixel must be the mask's corner in-plane
    for c = 1, 2 do
      local want = flips[c] and (mshape[axes[c]] - 1) or 0
      local a = axes[c]
      local sp = math.sqrt(ma[1][a] ^ 2 + ma[2][a] ^ 2 + ma[3][a] ^ 2)
      if math.abs(q[a] - want) * sp > tol then
        fail("%s: slice %s is shifted in-plane by %.3g mm against the mask %s", series_dir, f.file,
          (q[a] - want) * sp, mpath)
      end
    end
    local s = q[saxis]
    local si = math.floor(s + 0.5)
    if math.abs(s - si) * msp > tol or si < 0 or si >= mshape[saxis] then
      fail("%s: slice %s at (%.2f, %.2f, %.2f) mm has no mask slice at its position: it falls at %.3f on the " ..
        "mask's axis %d, whose slices are 0..%d, %.4g mm apart (%s)", series_dir, f.file, p[1], p[2], p[3], s,
        saxis - 1, mshape[saxis] - 1, msp, mpath)
    end
    idx[k] = si
    info.slices[k] = {file = f.file, position = p, mask_index = si}
  end
  -- uneven: the reader's affine places slice k at origin + k * gap; compare with the true positions
  for k, f in ipairs(files) do
    for r = 1, 3 do
      local w = ca[r][1] * 0 + ca[r][2] * 0 + ca[r][3] * (k - 1) + ca[r][4]
      if math.abs(w - f.position[r]) > 1e-2 then info.uneven = true end
    end
  end
  -- mask -> [slice axis, CT row axis, CT column axis] (NIfTI memory order of the result: whole slices
  -- and rows are copied), the matched slices, the flips; the result is viewed as [X, Y, Z]
  local t = mvol.data:permute(saxis - 1, axes[2] - 1, axes[1] - 1)
  t = t:index_select(0, medlua.tensor(idx, {dtype = "int64"}))
  if flips[2] then t = flip_dim(t, 1) end
  if flips[1] then t = flip_dim(t, 2) end
  if not t:is_contiguous() then t = t:contiguous() end
  local out = ct:with_data(t:permute(2, 1, 0))
  out.is_label = true
  return ct, out, info
end

-- ------------------------------------------------------------------ split / merge
local function rand_tag()
  local s = ""
  for _ = 1, 8 do s = s .. string.char(string.byte("a") + math.random(0, 25)) end
  return s
end

-- copies a file through a temporary name (renamed into place)
local function copy_file(src, dst)
  local f, err = io.open(src, "rb")
  if not f then fail("%s: %s", src, tostring(err)) end
  local data = f:read("a")
  f:close()
  local tmp = dst .. ".tmp-" .. rand_tag()
  local g, gerr = io.open(tmp, "wb")
  if not g then fail("%s: cannot write: %s", dst, tostring(gerr)) end
  local ok, werr = g:write(data)
  local cok = g:close()
  if not ok or not cok then os.remove(tmp); fail("%s: write failed: %s", dst, tostring(werr)) end
  local rok, rerr = os.rename(tmp, dst)
  if not rok then os.remove(tmp); fail("%s: rename failed: %s", dst, tostring(rerr)) end
end
M._copy_file = copy_file

local function is_integral(t)
  return (t - t:round()):abs():amax():item() == 0
end

--- the dtype a CT is saved with: int16 when every value is an integer in range, else float32
local function ct_dtype(t)
  local lo, hi = t:amin():item(), t:amax():item()
  if lo >= -32768 and hi <= 32767 and is_integral(t) then return "int16" end
  return "float32"
end

--- totalseg.split(ct, multilabel, tbl, out_dir, subject, opts) -> {dir, structures, present = {name...}}
--- Writes out_dir/subject/ct.nii.gz and segmentations/<name>.nii.gz (uint8 0/1) for every structure of
--- the selection (opts.structures, default all of the table; empty masks are written too, as
--- TotalSegmentator does). ct: a Volume, a NIfTI path or a DICOM folder (matched to the map slice by
--- slice position with align_series; an unevenly spaced series is refused); multilabel: a Volume or a
--- path, on the CT's grid (or the same voxels in another axis order). A label value that is not in the
--- table is an error naming it.
--- opts.overwrite: replace an existing subject folder (else an error). Nothing is left half-written:
--- the subject is assembled in a hidden staging folder that is renamed into place at the end.
function M.split(ct, multilabel, tbl, out_dir, subject, opts)
  opts = opts or {}
  tbl = as_table(tbl)
  local names = M.select(tbl, opts.structures)
  if type(out_dir) ~= "string" or out_dir == "" then fail("split: out_dir must be a folder path") end
  if type(subject) ~= "string" or subject == "" or subject:find("/", 1, true) or subject:sub(1, 1) == "." then
    fail("split: subject must be a folder name like s0001, got '%s'", tostring(subject))
  end
  local target = out_dir .. "/" .. subject
  if is_dir(target) and not opts.overwrite then
    fail("%s already exists (give overwrite = true / --overwrite to replace it)", target)
  end
  -- read and check everything before writing anything
  local ctv, mlt, ct_what, ml_what
  if type(ct) == "string" and is_dir(ct) then
    local ctvol, mv, info = M.align_series(ct, multilabel, opts)
    if info.uneven then
      fail("%s: the series' slices are unevenly spaced, so ct.nii.gz (one affine) could not place every slice " ..
        "where it is; give a complete series, or resample it first (volume.load(dir, {on_uneven = \"resample\"}))", ct)
    end
    ctv, mlt, ct_what = ctvol, mv.data, ct
    ml_what = type(multilabel) == "string" and multilabel or "multi-label map"
  else
    local cp
    ctv, cp = as_volume(ct, "CT")
    ct_what = cp or "CT"
    local mv, mp = as_volume(multilabel, "multi-label map")
    ml_what = mp or "multi-label map"
    mlt = M.match_grid(ctv, mv, ml_what, ct_what)
  end
  if ctv.ndim ~= 3 then fail("%s: expected a 3-D CT, got shape %s", ct_what, table.concat(ctv.shape, "x")) end
  -- the map in NIfTI memory order ([Z, Y, X] contiguous): the per-structure comparisons are then
  -- contiguous and the masks are handed to the writer in the order it stores (X fastest)
  local mls = mlt:permute(2, 1, 0)
  if not mls:is_contiguous() then mls = mls:contiguous() end
  if mls.dtype ~= "float32" then mls = mls:float() end
  -- the values present (native label statistics: also refuses non-integer values)
  local okc, st = pcall(function() return ctv:with_data(mls:permute(2, 1, 0)):label_stats() end)
  if not okc then fail("%s: %s", ml_what, tostring(st):gsub("^[^:]*%.lua:%d+: ", ""):gsub("^Volume:label_stats: ", "")) end
  local counts = {}
  for v, x in pairs(st) do if v ~= 0 and x.voxels > 0 then counts[v] = x.voxels end end
  local bad = {}
  for v in pairs(counts) do if v ~= 0 and not tbl.by_value[v] then bad[#bad + 1] = v end end
  table.sort(bad)
  if #bad > 0 then
    fail("%s: label value(s) %s are not in the label table %s (values 1..%d)", ml_what, table.concat(bad, ", "),
      tbl.path or "", #tbl.names)
  end
  local cdt = ct_dtype((storage_view(ctv.data)))
  -- write into a staging folder, then rename it into place
  mkdir(out_dir)
  local stage = string.format("%s/.%s.partial-%s", out_dir, subject, rand_tag())
  local present = {}
  local ok, err = pcall(function()
    mkdir(stage .. "/segmentations")
    ctv:save(stage .. "/ct.nii.gz", {dtype = cdt})
    local empty_file -- every empty mask is the same file: written once, then copied
    for _, name in ipairs(names) do
      local v = tbl.by_name[name]
      local path = stage .. "/segmentations/" .. name .. ".nii.gz"
      if counts[v] then
        ctv:with_data(mls:eq(v):permute(2, 1, 0)):save(path, {dtype = "uint8"}) -- bool written as 0/1 uint8
        present[#present + 1] = name
      elseif empty_file then
        copy_file(empty_file, path)
      else
        ctv:with_data(medlua.zeros(ctv.shape, {dtype = "uint8"})):save(path, {dtype = "uint8"})
        empty_file = path
      end
      if opts.on_file then opts.on_file(name) end
    end
  end)
  if not ok then
    rm_tree(stage)
    error(err, 0)
  end
  local old
  if is_dir(target) then
    old = string.format("%s/.%s.old-%s", out_dir, subject, rand_tag())
    local rok, rerr = os.rename(target, old)
    if not rok then rm_tree(stage); fail("%s: cannot move the old subject aside: %s", target, tostring(rerr)) end
  end
  local rok, rerr = os.rename(stage, target)
  if not rok then
    if old then os.rename(old, target) end
    rm_tree(stage)
    fail("%s: cannot rename the staging folder into place: %s", target, tostring(rerr))
  end
  if old then rm_tree(old) end
  return {dir = target, structures = names, present = present, ct_dtype = cdt}
end

local function mask_name(file)
  return file:match("^(.+)%.nii%.gz$") or file:match("^(.+)%.nii$")
end

--- the structures (file names without .nii.gz) in subject_dir/segmentations, checked against the table
local function subject_files(subject_dir, tbl)
  if not is_dir(subject_dir) then fail("%s: no such subject folder", subject_dir) end
  if not exists(subject_dir .. "/ct.nii.gz") then
    fail("%s: the subject folder has no ct.nii.gz (a subject needs ct.nii.gz and segmentations/*.nii.gz)", subject_dir)
  end
  local sd = subject_dir .. "/segmentations"
  local ok, files = pcall(listdir, sd)
  if not ok then fail("%s: the subject folder has no segmentations/ folder", subject_dir) end
  local out = {}
  for _, f in ipairs(files) do
    local n = mask_name(f)
    if n then
      if tbl and not tbl.by_name[n] then
        fail("%s/%s: unknown structure '%s' (not in %s); close names: %s", sd, f, n, tbl.path or "the label table",
          table.concat(M.close_names(n, tbl.names, 5), ", "))
      end
      out[#out + 1] = n
    end
  end
  return out
end
M.subject_structures = subject_files

local function ct_grid(subject_dir)
  local p = subject_dir .. "/ct.nii.gz"
  local ok, h = pcall(medlua._volume.nifti_header, p)
  if not ok then fail("%s: cannot read the CT header: %s", p, tostring(h)) end
  local shape = {h.dim[2], h.dim[3], h.dim[4]}
  if h.dim[1] ~= 3 and not (h.dim[1] > 3 and h.dim[5] == 1) then
    fail("%s: expected a 3-D CT, got %d dimensions", p, h.dim[1])
  end
  return {shape = shape, affine = h.affine, ndim = 3}, p
end

-- checks that a float32 mask holds only 0 and 1 and returns its voxel count. Integer-stored files
-- (uint8, as TotalSegmentator writes) only need the range; float-stored ones are also checked for
-- fractions. (No temporary volumes: on a 512x512x133 CT each costs ~140 MB of fresh pages.)
local function check_binary(m, what, stored_float)
  local mn, mx = m:amin():item(), m:amax():item()
  if mn < 0 or mx > 1 or (mx > 0 and mx < 1) then
    fail("%s: a structure mask must hold only 0 and 1 (found values in [%g, %g])", what, mn, mx)
  end
  if mx == 0 then return 0 end
  if stored_float and (m - m * m):amax():item() ~= 0 then
    fail("%s: a structure mask must hold only 0 and 1 (found fractions)", what)
  end
  return m:sum():item()
end

local FLOAT_TYPES = {float32 = true, float64 = true, float128 = true, complex64 = true, complex128 = true}
local function stored_float(path)
  local ok, h = pcall(medlua._volume.nifti_header, path)
  if not ok then return true end
  local n = tostring(h.datatype_name or ""):lower()
  return FLOAT_TYPES[n] or n:find("float") ~= nil or (h.scl_slope ~= 0 and h.scl_slope ~= 1) or
    (h.scl_inter ~= 0 and h.scl_inter == h.scl_inter)
end

-- Adds mask m (float32 0/1, modified in place) into the label tensor L (float32, values 0..255) as the
-- value v, when it does not overlap what L holds already; returns false (L unchanged, m 0/1 again)
-- otherwise. Exact: only small integers are ever added in float32.
local MARK = 1024
local function add_disjoint(L, m, v)
  L:add_(m:mul_(MARK))
  if L:amax():item() > MARK then
    L:sub_(m)
    m:div_(MARK)
    return false
  end
  L:add_(m:mul_((v - MARK) / MARK))
  return true
end

--- totalseg.merge(subject_dir, tbl, opts) -> Volume (uint8, or int16 for values > 255) of label values on
--- the CT's grid, info = {structures = {...}, overlaps = {name = voxels also claimed by an earlier mask}}
--- opts.structures: merge only these (default: every mask in segmentations/). Errors: no ct.nii.gz
--- (naming the folder), a file whose name is not in the table (listing close names), a mask whose grid
--- differs from the CT's (naming the file), a mask with values other than 0/1.
function M.merge(subject_dir, tbl, opts)
  opts = opts or {}
  tbl = as_table(tbl)
  local files = subject_files(subject_dir, tbl)
  local names = files
  if opts.structures then
    names = M.select(tbl, opts.structures)
    local have = {}
    for _, n in ipairs(files) do have[n] = true end
    for _, n in ipairs(names) do
      if not have[n] then fail("%s/segmentations/%s.nii.gz: no such mask in the subject", subject_dir, n) end
    end
  end
  local grid, cpath = ct_grid(subject_dir)
  local maxv = 0
  for _, n in ipairs(names) do maxv = math.max(maxv, tbl.by_name[n]) end
  local dt = maxv <= 255 and "uint8" or "int16"
  -- float32 (the fast path of the elementwise kernels), in NIfTI memory order: [Z, Y, X] contiguous
  local out = medlua.zeros({grid.shape[3], grid.shape[2], grid.shape[1]})
  local info = {structures = names, overlaps = {}}
  for _, n in ipairs(names) do
    local p = subject_dir .. "/segmentations/" .. n .. ".nii.gz"
    local mv = load_volume(p, "the mask")
    local m = M.match_grid(grid, mv, p, cpath):permute(2, 1, 0)
    if not m:is_contiguous() then m = m:contiguous() end
    if check_binary(m, p, stored_float(p)) > 0 then
      local v = tbl.by_name[n]
      if not add_disjoint(out, m, v) then -- overlap: the later mask wins
        local on = m:gt(0)
        info.overlaps[n] = on:logical_and(out:gt(0)):float():sum():item()
        out = medlua.where(on, v, out)
      end
    end
  end
  local v = volume.new(out:to(dt):permute(2, 1, 0), medlua.tensor(aff_list(grid.affine), {dtype = "float64"}))
  v.is_label = true
  return v, info
end

--- totalseg.list_subjects(root) -> sorted subject folder names; every (non-hidden) folder under root is a
--- subject and must hold ct.nii.gz (an error names the folder otherwise)
function M.list_subjects(root)
  local ok, names = pcall(listdir, root)
  if not ok then fail("%s: not a dataset folder (expected sXXXX/ct.nii.gz + segmentations/)", root) end
  local out = {}
  for _, n in ipairs(names) do
    local p = root .. "/" .. n
    if is_dir(p) then
      if not exists(p .. "/ct.nii.gz") then
        fail("%s: the subject folder has no ct.nii.gz (a subject needs ct.nii.gz and segmentations/*.nii.gz)", p)
      end
      out[#out + 1] = n
    end
  end
  table.sort(out)
  return out
end

-- ------------------------------------------------------------------ subjects in memory
--- totalseg.load_subject(subject_dir, names, opts) -> {name, dir, ct = Volume (float32), layers = {uint8
--- tensors on the CT grid holding channel numbers 1..K}, voxels = {count per structure}}
--- Every requested mask must exist (error naming the file) and match the CT's grid. opts.table: checks
--- that the names are in it.
function M.load_subject(subject_dir, names, opts)
  opts = opts or {}
  if opts.table then
    local tbl = as_table(opts.table)
    for _, n in ipairs(names) do if not tbl.by_name[n] then unknown(n, tbl) end end
  end
  subject_files(subject_dir, nil) -- ct.nii.gz and segmentations/ exist
  local cpath = subject_dir .. "/ct.nii.gz"
  local ct = load_volume(cpath, "the CT")
  if ct.ndim ~= 3 then fail("%s: expected a 3-D CT, got shape %s", cpath, table.concat(ct.shape, "x")) end
  local K = #names
  if K > 255 then fail("at most 255 structures per model, got %d", K) end
  local paths = {}
  for k, n in ipairs(names) do
    local p = subject_dir .. "/segmentations/" .. n .. ".nii.gz"
    if not exists(p) then fail("%s: mask of structure '%s' not found in subject %s", p, n, subject_dir) end
    paths[k] = p
  end
  local layers, voxels = {}, {}
  -- layers are built in float32 (the fast path of the elementwise kernels, in place) and stored as
  -- uint8 at the end
  local function fold(k, m, p)
    if m.dtype ~= "float32" then m = m:float() end
    local cnt = check_binary(m, p, stored_float(p))
    voxels[names[k]] = cnt
    if cnt == 0 then return end
    for li = 1, #layers + 1 do
      local L = layers[li]
      if not L then
        layers[li] = m:mul_(k)
        return
      end
      if add_disjoint(L, m, k) then return end
    end
  end
  -- each mask is read (native NIfTI reader, libdeflate) and folded in, in NIfTI memory order ([Z, Y, X]
  -- contiguous: the fast path of the elementwise kernels). medlua.data's worker pipeline (LoadImaged in
  -- 2 threads + collate) was measured 3-5x slower for this (117 masks of the sample DICOM patient: 5-7 s
  -- against 1.2-2 s), so the files are read here directly.
  for k, p in ipairs(paths) do
    local mv = load_volume(p, "the mask")
    local map, why = M.grid_map(ct.affine, shape3(ct), mv.affine, shape3(mv))
    if not map then
      fail("%s: its grid (%s) differs from the CT %s (%s): %s", p, geom_str(shape3(mv), aff_list(mv.affine)), cpath,
        geom_str(shape3(ct), aff_list(ct.affine)), why)
    end
    local m = M.apply_map(mv.data, map):permute(2, 1, 0)
    if not m:is_contiguous() then m = m:contiguous() end
    mv = nil
    fold(k, m, p)
    m = nil
    if shape3(ct)[1] * shape3(ct)[2] * shape3(ct)[3] > 4e6 then collectgarbage() end -- free each big mask now
  end
  for li, L in ipairs(layers) do layers[li] = L:byte():permute(2, 1, 0) end -- [X, Y, Z] views
  return {name = basename(subject_dir), dir = subject_dir, ct = ct, layers = layers, voxels = voxels}
end

-- ------------------------------------------------------------------ slices
-- RAS axis order of a grid: for each RAS axis j, the voxel axis along it and whether it runs backwards
local function ras_map(affine)
  local a = aff_list(affine)
  local perm, flip, used = {}, {}, {}
  -- voxel axes in order of how clearly they point along one world axis
  local order = {}
  for i = 1, 3 do
    local col = {math.abs(a[1][i]), math.abs(a[2][i]), math.abs(a[3][i])}
    local n = math.sqrt(col[1] ^ 2 + col[2] ^ 2 + col[3] ^ 2)
    order[i] = {i = i, best = math.max(col[1], col[2], col[3]) / (n > 0 and n or 1)}
  end
  table.sort(order, function(x, y) return x.best > y.best end)
  for _, o in ipairs(order) do
    local i = o.i
    local best, bj = -1, nil
    for j = 1, 3 do
      if not used[j] and math.abs(a[j][i]) > best then best, bj = math.abs(a[j][i]), j end
    end
    used[bj] = true
    perm[bj] = i - 1
    flip[bj] = a[bj][i] < 0
  end
  return perm, flip
end
M._ras_map = ras_map

--- t [X, Y, Z] (voxel order of `affine`) -> RAS order (a view when nothing is flipped)
local function to_ras_t(t, affine, lead)
  lead = lead or 0
  local perm, flip = ras_map(affine)
  local p = {}
  for d = 0, lead - 1 do p[#p + 1] = d end
  for j = 1, 3 do p[#p + 1] = perm[j] + lead end
  local r = t:permute(table.unpack(p))
  for j = 1, 3 do if flip[j] then r = flip_dim(r, j - 1 + lead) end end
  return r
end

--- the inverse: t in RAS order (with `lead` leading dims) -> the voxel order of `affine`
local function from_ras_t(t, affine, lead)
  lead = lead or 0
  local perm, flip = ras_map(affine)
  local r = t
  for j = 1, 3 do if flip[j] then r = flip_dim(r, j - 1 + lead) end end
  -- RAS axis j holds voxel axis perm[j]: voxel axis i is RAS axis inv[i]
  local inv = {}
  for j = 1, 3 do inv[perm[j] + 1] = j - 1 end
  local p = {}
  for d = 0, lead - 1 do p[#p + 1] = d end
  for i = 1, 3 do p[#p + 1] = inv[i] + lead end
  return r:permute(table.unpack(p))
end
M._to_ras_t, M._from_ras_t = to_ras_t, from_ras_t

-- [a, p, q] order of the RAS axes for slicing along `axis`
local function slice_perm(axis)
  if axis == 0 then return {0, 1, 2} elseif axis == 1 then return {1, 0, 2} else return {2, 0, 1} end
end

--- totalseg.slices_of(t [X, Y, Z], affine, axis, lead) -> t as [n, P, Q] slices along RAS `axis` (a view)
function M.slices_of(t, affine, axis, lead)
  lead = lead or 0
  local r = to_ras_t(t, affine, lead)
  local sp = slice_perm(axis)
  local p = {}
  for d = 0, lead - 1 do p[#p + 1] = d end
  for _, d in ipairs(sp) do p[#p + 1] = d + lead end
  return r:permute(table.unpack(p))
end

--- centred nearest-neighbour resize of the last two dims (PyTorch's "nearest-exact"), any dtype
function M.resize_nearest(t, H, W)
  local nd = t:dim()
  local P, Q = t:size(nd - 2), t:size(nd - 1)
  local function idx(n_in, n_out)
    local v = {}
    for i = 0, n_out - 1 do v[i + 1] = math.min(n_in - 1, math.floor((i + 0.5) * n_in / n_out)) end
    return medlua.tensor(v, {dtype = "int64"})
  end
  if P ~= H then t = t:index_select(nd - 2, idx(P, H)) end
  if Q ~= W then t = t:index_select(nd - 1, idx(Q, W)) end
  return t
end

--- bilinear resize (align_corners = false) of [N, C, P, Q] float to [N, C, H, W]
function M.resize_bilinear(t, H, W)
  if t:size(2) == H and t:size(3) == W then return t end
  return F.interpolate(t, {size = {H, W}, mode = "bilinear", align_corners = false})
end

local function check_cfg(cfg, who)
  if type(cfg) ~= "table" then fail("%s: expected a config table", who) end
  local ts = cfg.target_shape
  if type(ts) ~= "table" or math.type(ts[1]) ~= "integer" or math.type(ts[2]) ~= "integer" or ts[1] < 1 or ts[2] < 1 then
    fail("%s: config.target_shape must be {H, W} (integers), got %s", who, json.encode(ts or json.null))
  end
  local axis = cfg.axis == nil and 2 or cfg.axis
  if axis ~= 0 and axis ~= 1 and axis ~= 2 then fail("%s: config.axis must be 0, 1 or 2, got %s", who, tostring(axis)) end
  if cfg.window == nil and cfg.clip == nil then fail("%s: config needs window = {center, width} or clip = {lo, hi}", who) end
  if cfg.window and (type(cfg.window) ~= "table" or type(cfg.window[1]) ~= "number" or type(cfg.window[2]) ~= "number"
      or cfg.window[2] <= 0) then
    fail("%s: config.window must be {center, width > 0}", who)
  end
  if cfg.clip and (type(cfg.clip) ~= "table" or type(cfg.clip[1]) ~= "number" or type(cfg.clip[2]) ~= "number"
      or cfg.clip[2] <= cfg.clip[1]) then
    fail("%s: config.clip must be {lo, hi} with lo < hi", who)
  end
  return axis
end
M.check_config = check_cfg

--- intensity transform of a CT tensor (HU) by the config: window -> [0, 1]; clip -> clamp, then z-score
--- with config.intensity_mean / intensity_std (the training set's) or this tensor's own statistics
function M.normalize_intensity(t, cfg)
  return elementwise(t, function(v) return M._normalize(v, cfg) end)
end

function M._normalize(t, cfg)
  if t.dtype ~= "float32" then t = t:float() end
  -- one new tensor, then in place (a 512x512x300 CT is 300 MB a copy)
  if cfg.window then
    local c, w = cfg.window[1], cfg.window[2]
    return (t - (c - w / 2)):div_(w):clamp_(0, 1)
  end
  local x = t:clamp(cfg.clip[1], cfg.clip[2])
  if cfg.normalize == nil or cfg.normalize == "zscore" then
    local mean, std = cfg.intensity_mean, cfg.intensity_std
    if mean == nil or std == nil then
      mean = x:mean():item()
      std = x:std():item()
    end
    return x:sub_(mean):div_(math.max(std, 1e-6))
  elseif cfg.normalize == "none" then
    return x
  end
  fail("config.normalize must be \"zscore\" or \"none\", got %s", tostring(cfg.normalize))
end

--- sum, sum of squares and count of the clipped intensities (for the training set's z-score statistics)
function M.clip_stats(t, lo, hi)
  local x = storage_view(t):float():clamp(lo, hi) -- float32, one copy (a double copy of a big CT is ~1 GB)
  local s1 = x:sum():item()
  return s1, x:mul_(x):sum():item(), x:numel()
end

--- totalseg.prepare_slices(subject, cfg, K) -> {name, images [n, 1, H, W] float32, layers = {[n, H, W]
--- uint8}, present [n, K] (uint8 0/1: structure k in slice i), nonempty {bool per slice}, n, shape_in = {P, Q}}
function M.prepare_slices(subj, cfg, K)
  local axis = check_cfg(cfg, "prepare_slices")
  local H, W = cfg.target_shape[1], cfg.target_shape[2]
  local ct = subj.ct
  local img = M.slices_of(M.normalize_intensity(ct.data, cfg), ct.affine, axis):contiguous()
  local n, P, Q = img:size(0), img:size(1), img:size(2)
  local images = M.resize_bilinear(img:view(n, 1, P, Q), H, W):contiguous()
  img = nil
  local layers = {}
  local present = medlua.zeros({n * (K + 1)}, {dtype = "float64"})
  local base = (medlua.arange(n):long() * (K + 1)):view(n, 1, 1)
  for li, L in ipairs(subj.layers) do
    local s = M.resize_nearest(M.slices_of(L, ct.affine, axis), H, W):contiguous()
    layers[li] = s
    local idx = (s:long() + base):flatten()
    present:scatter_add_(0, idx, medlua.ones({idx:numel()}, {dtype = "float64"}))
  end
  present = present:view(n, K + 1):narrow(1, 1, K):gt(0):byte():contiguous()
  local ne = present:sum(1):gt(0):tolist()
  local nonempty = {}
  for i = 1, n do nonempty[i] = ne[i] == true or ne[i] == 1 end
  return {name = subj.name, images = images, layers = layers, present = present, nonempty = nonempty, n = n,
    shape_in = {P, Q}}
end

--- multi-label targets [B, K, H, W] float32 from layer tensors [B, H, W] (channel numbers 1..K)
function M.targets(layers, K, B, H, W)
  local kv = medlua.arange(1, K + 1):byte():view(1, K, 1, 1)
  local y
  for _, L in ipairs(layers) do
    local e = L:unsqueeze(1):eq(kv)
    y = y and y:logical_or(e) or e
  end
  if not y then return medlua.zeros(B, K, H, W) end
  return y:float()
end

--- a bank of slices from several subjects: images [N, 1, H, W], layers {[N, H, W]}, per-slice subject
--- and nonempty flags
function M.slice_bank(prepared, K, H, W)
  local imgs, nl = {}, 0
  for _, p in ipairs(prepared) do imgs[#imgs + 1] = p.images; nl = math.max(nl, #p.layers) end
  local bank = {K = K, H = H, W = W, subject = {}, nonempty = {}, local_index = {}, subjects = {}}
  bank.images = #imgs > 0 and medlua.cat(imgs, 0) or medlua.zeros(0, 1, H, W)
  bank.layers = {}
  for li = 1, nl do
    local parts = {}
    for i, p in ipairs(prepared) do parts[i] = p.layers[li] or medlua.zeros({p.n, H, W}, {dtype = "uint8"}) end
    bank.layers[li] = medlua.cat(parts, 0)
  end
  local pres = {}
  for _, p in ipairs(prepared) do
    local first = #bank.subject + 1
    for i = 1, p.n do
      bank.subject[#bank.subject + 1] = p.name
      bank.nonempty[#bank.nonempty + 1] = p.nonempty[i]
      bank.local_index[#bank.local_index + 1] = i - 1
    end
    bank.subjects[#bank.subjects + 1] = {name = p.name, first = first, n = p.n}
    pres[#pres + 1] = p.present
  end
  bank.present = #pres > 0 and medlua.cat(pres, 0) or medlua.zeros({0, K}, {dtype = "uint8"})
  bank.n = #bank.subject
  return bank
end

--- batch {x [B, 1, H, W], y [B, K, H, W]} of bank slices (1-based indices)
function M.bank_batch(bank, indices)
  local idx = {}
  for i, v in ipairs(indices) do idx[i] = v - 1 end
  local it = medlua.tensor(idx, {dtype = "int64"})
  local x = bank.images:index_select(0, it)
  local ls = {}
  for li, L in ipairs(bank.layers) do ls[li] = L:index_select(0, it) end
  local y = M.targets(ls, bank.K, #indices, bank.H, bank.W)
  return {x, y}
end

-- small deterministic generator (xorshift64*) so epochs do not touch medlua's or Lua's random state
local function rng(seed)
  local s = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) | 1
  return function(n) -- integer in [1, n]
    s = s ~ (s >> 12); s = s ~ (s << 25); s = s ~ (s >> 27)
    local r = (s * 0x2545F4914F6CDD1D) >> 11
    return r % n + 1
  end
end
M._rng = rng

local Loader = {}
Loader.__index = Loader
M.SliceLoaderClass = Loader

--- totalseg.SliceLoader(bank, {indices = bank slices to draw from (1-based; default all), batch_size = 8,
---   shuffle = true, empty_weight = 1, seed = 0}) -> loader for medlua.train.fit (:iter(epoch), :len())
--- Empty slices (no voxel of any structure) are down-weighted by sampling: each epoch holds every
--- non-empty slice and a fresh random round(empty_weight * #empty) of the empty ones, shuffled; the
--- choice depends only on (seed, epoch), so a resumed run sees the same batches.
function M.SliceLoader(bank, opts)
  opts = opts or {}
  local self = setmetatable({bank = bank, batch_size = opts.batch_size or 8, shuffle = opts.shuffle ~= false,
    empty_weight = opts.empty_weight or 1, seed = opts.seed or 0}, Loader)
  if math.type(self.batch_size) ~= "integer" or self.batch_size < 1 then fail("SliceLoader: batch_size must be >= 1") end
  if self.empty_weight < 0 or self.empty_weight > 1 then fail("SliceLoader: empty_weight must be in [0, 1]") end
  local idx = opts.indices
  if not idx then idx = {}; for i = 1, bank.n do idx[i] = i end end
  self.full, self.empty = {}, {}
  for _, i in ipairs(idx) do
    if bank.nonempty[i] then self.full[#self.full + 1] = i else self.empty[#self.empty + 1] = i end
  end
  self.n_empty_used = math.floor(self.empty_weight * #self.empty + 0.5)
  self.epoch_size = #self.full + self.n_empty_used
  if self.epoch_size == 0 then fail("SliceLoader: no slice to train on (every slice is empty and empty_weight is 0)") end
  return self
end

function Loader:len() return (self.epoch_size + self.batch_size - 1) // self.batch_size end
Loader.__len = Loader.len

--- the bank indices of an epoch's samples, in order
function Loader:epoch_indices(epoch)
  local r = rng(self.seed * 1000003 + (epoch or 1))
  local list = {}
  for i, v in ipairs(self.full) do list[i] = v end
  local e = {table.unpack(self.empty)}
  for i = 1, self.n_empty_used do -- partial Fisher-Yates: the first n_empty_used of a shuffle
    local j = i - 1 + r(#e - i + 1)
    e[i], e[j] = e[j], e[i]
    list[#list + 1] = e[i]
  end
  if self.shuffle then
    for i = #list, 2, -1 do
      local j = r(i)
      list[i], list[j] = list[j], list[i]
    end
  end
  return list
end

function Loader:iter(epoch)
  local list = self:epoch_indices(epoch)
  local pos = 0
  return function()
    if pos >= #list then return nil end
    local b = {}
    for i = pos + 1, math.min(pos + self.batch_size, #list) do b[#b + 1] = list[i] end
    pos = pos + #b
    return M.bank_batch(self.bank, b)
  end
end

-- ------------------------------------------------------------------ metrics on slice stacks
--- per-structure Dice of thresholded probabilities over a stack of slices: probs/targets [N, K, H, W]
--- -> list of K values, NaN where the structure is absent from the target (TotalSegmentator's
--- convention), and the intersection / sums for pooling
function M.dice_per_structure(probs, target, threshold)
  local p = probs:gt(threshold or 0.5):float()
  local inter = (p * target):sum({0, 2, 3}):tolist()
  local ps, ts = p:sum({0, 2, 3}):tolist(), target:sum({0, 2, 3}):tolist()
  local out = {}
  for k = 1, #inter do
    if ts[k] == 0 then out[k] = 0 / 0 else out[k] = 2 * inter[k] / (ps[k] + ts[k]) end
  end
  return out, inter, ps, ts
end

-- ------------------------------------------------------------------ models and prediction
--- the model of a config: nets.UNet2D(config.model)
function M.build_model(cfg)
  local m = cfg.model
  if type(m) ~= "table" then fail("config.model is missing") end
  if m.type ~= nil and m.type ~= "UNet2D" then fail("config.model.type must be \"UNet2D\", got %s", tostring(m.type)) end
  local nets = require "medlua.nets"
  return nets.UNet2D{in_channels = m.in_channels or 1, out_channels = m.out_channels, features = m.features,
    bottleneck = m.bottleneck}
end

--- totalseg.load_trained(out_dir, which = "best") -> net (eval mode), config
--- reads out_dir/config.json, builds the UNet2D and loads out_dir/<which>.safetensors (or a path)
function M.load_trained(dir, which)
  local cp = dir .. "/config.json"
  if not exists(cp) then fail("%s: no config.json (written by recipes/train_unet2d.lua)", dir) end
  local ok, cfg = pcall(json.read, cp)
  if not ok then fail("%s: cannot read: %s", cp, tostring(cfg)) end
  local net = M.build_model(cfg)
  local path = which or "best"
  if not path:find("/", 1, true) and not path:find("%.safetensors$") then path = dir .. "/" .. path .. ".safetensors" end
  if not exists(path) then fail("%s: checkpoint not found", path) end
  local okl, err = pcall(require("medlua.train").load_model, net, path)
  if not okl then fail("%s: cannot load the checkpoint: %s", path, tostring(err):gsub("^[^:]*%.lua:%d+: ", "")) end
  net:eval()
  return net, cfg
end

--- totalseg.predict_volume(net, ct, config, opts) -> probabilities [K, X, Y, Z] float32 on ct's own grid
--- (the voxel order of the Volume given, e.g. LPS for a DICOM series). The CT is cut into slices along
--- config.axis (in RAS), normalized and resized to config.target_shape as in training, run through the
--- network in batches of opts.batch_size (default 8) in eval mode without gradients; sigmoid
--- probabilities are resized back (bilinear) to the CT's in-plane size. opts.channels: a list of 1-based
--- channels to return (default all K; memory is K * X * Y * Z * 4 bytes). opts.progress(done, total).
function M.predict_volume(net, ct, cfg, opts)
  opts = opts or {}
  local axis = check_cfg(cfg, "predict_volume")
  local mt = type(ct) == "userdata" and getmetatable(ct)
  if not (mt and mt.__name == "Volume") then fail("predict_volume: ct must be a Volume, got %s", type(ct)) end
  if ct.ndim ~= 3 then fail("predict_volume: expected a 3-D CT, got shape %s", table.concat(ct.shape, "x")) end
  local H, W = cfg.target_shape[1], cfg.target_shape[2]
  local bs = opts.batch_size or cfg.batch_size or 8
  local chans = opts.channels
  local g <close> = medlua.no_grad()
  local was_training = net.training
  net:eval()
  local img = M.slices_of(M.normalize_intensity(ct.data, cfg), ct.affine, axis):contiguous()
  local n, P, Q = img:size(0), img:size(1), img:size(2)
  local x = M.resize_bilinear(img:view(n, 1, P, Q), H, W):contiguous()
  img = nil
  local out, K
  local sel
  local s = 0
  local ok, err = pcall(function()
    while s < n do
      local b = math.min(bs, n - s)
      local logits = net:forward(x:narrow(0, s, b))
      if not K then
        K = logits:size(1)
        if chans then
          local v = {}
          for i, c in ipairs(chans) do
            if math.type(c) ~= "integer" or c < 1 or c > K then fail("predict_volume: channel %s out of 1..%d", tostring(c), K) end
            v[i] = c - 1
          end
          sel = medlua.tensor(v, {dtype = "int64"})
        end
        out = medlua.empty({chans and #chans or K, n, P, Q})
      end
      if sel then logits = logits:index_select(1, sel) end
      local p = logits:sigmoid()
      local kk = p:size(1)
      -- resize back in pieces of at most ~16M values
      local step = math.max(1, math.floor(16e6 / (b * P * Q)))
      for c0 = 0, kk - 1, step do
        local cn = math.min(step, kk - c0)
        local r = M.resize_bilinear(p:narrow(1, c0, cn):contiguous(), P, Q)
        out:narrow(0, c0, cn):narrow(1, s, b):copy_(r:transpose(0, 1))
      end
      s = s + b
      if opts.progress then opts.progress(s, n) end
    end
  end)
  if was_training then net:train() end
  if not ok then error(err, 0) end
  -- [K, a, p, q] -> [K, RAS...] -> the CT's own voxel order
  local sp = slice_perm(axis)
  local inv = {}
  for i, d in ipairs(sp) do inv[d + 1] = i - 1 end
  local ras = out:permute(0, inv[1] + 1, inv[2] + 1, inv[3] + 1)
  return from_ras_t(ras, ct.affine, 1):contiguous()
end

return M
