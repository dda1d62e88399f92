-- medlua.volume: medical volumes (a tensor [X, Y, Z(, T)] + a voxel-to-world affine in RAS+ mm + metadata).
--
--   local volume = require("medlua.volume")
--   local ct = volume.load("ct.nii.gz")             -- NIfTI-1/2 (.nii, .nii.gz, .hdr/.img)
--   local dcm = volume.load("dicom_dir/")           -- DICOM directory (largest series) or file
--   print(ct, ct.shape, ct.spacing, ct.axcodes)
--   local iso = ct:resample{spacing = 1.5}          -- ops return new volumes, geometry updated
--   iso:save("iso.nii.gz")
--   iso:save_slices("png_dir", {axis = 2, window = {40, 400}})
--
-- Native functions live in medlua._volume; every one that takes a volume first is also a method.
local medlua = require("medlua")
local C = medlua._volume
local M = {}
local methods = C.methods

local function fail(fname, fmt, ...)
  error(fname .. ": " .. string.format(fmt, ...), 3)
end

local function need(name)
  local f = C[name]
  if not f then error("medlua.volume: " .. name .. " is not available in this build", 3) end
  return f
end

local function lower_ext(path)
  local p = path:lower()
  if p:sub(-3) == ".gz" then
    return (p:sub(1, -4):match("%.([%w]+)$") or "") .. ".gz"
  end
  return p:match("%.([%w]+)$") or ""
end

local nifti_ext = {nii = true, ["nii.gz"] = true, hdr = true, img = true, ["hdr.gz"] = true, ["img.gz"] = true}

--- What kind of input a path is: "dicom_dir", "dicom", "nifti", or nil + reason.
function M.detect(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local head, rerr, code = f:read(132)
  f:close()
  if head == nil and code == 21 then return "dicom_dir" end -- EISDIR
  if head == nil and rerr then return nil, path .. ": " .. rerr end
  head = head or ""
  if nifti_ext[lower_ext(path)] then return "nifti" end
  if #head >= 132 and head:sub(129, 132) == "DICM" then return "dicom" end
  if lower_ext(path) == "dcm" then return "dicom" end
  if #head >= 4 then
    local magic = head:sub(345, 348)
    if head:sub(1, 2) == "\31\139" then return "nifti" end -- gzip: only NIfTI is read compressed
    local n = string.unpack("<i4", head)
    local nb = string.unpack(">i4", head)
    if n == 348 or nb == 348 or n == 540 or nb == 540 or magic == "n+1\0" then return "nifti" end
  end
  return nil, path .. ": unknown format (expected a NIfTI file .nii/.nii.gz/.hdr or a DICOM file or directory)"
end

--- volume.load(path, opts): NIfTI or DICOM by content. opts go to the reader
--- (NIfTI: dtype; DICOM: series_uid, on_uneven, on_tilt, dtype).
function M.load(path, opts)
  if type(path) ~= "string" then fail("volume.load", "path must be a string, got %s", type(path)) end
  local kind, why = M.detect(path)
  if not kind then error("volume.load: " .. why, 2) end
  if kind == "nifti" then return need("read_nifti")(path, opts) end
  return need("read_dicom")(path, opts)
end

--- volume.list_series(dir): the DICOM series in a directory.
function M.list_series(dir)
  return need("list_dicom_series")(dir)
end

--- vol:save(path, opts): NIfTI by extension (.nii, .nii.gz, .hdr, .img).
function methods.save(vol, path, opts)
  if type(path) ~= "string" then fail("Volume:save", "path must be a string, got %s", type(path)) end
  if not nifti_ext[lower_ext(path)] then
    fail("Volume:save", "%s: unknown extension (NIfTI: .nii, .nii.gz, .hdr; DICOM series: vol:save_dicom(dir); " ..
      "PNG slices: vol:save_slices(dir))", path)
  end
  return need("write_nifti")(vol, path, opts)
end

function methods.save_dicom(vol, dir, opts)
  return need("write_dicom_series")(vol, dir, opts)
end

M.save = methods.save
M.new = C.new
M.write_png = C.write_png
M.read_png = C.read_png
M.edit_dicom_tags = C.edit_dicom_tags
M.axcodes = C.axcodes

-- in-plane axes of a slice along `axis` (0-based): image columns follow the first remaining voxel
-- axis and rows the second, so an axial slice of a DICOM-read volume looks like the DICOM image.
local function plane_axes(axis)
  if axis == 0 then return 1, 2 elseif axis == 1 then return 0, 2 else return 0, 1 end
end

--- vol:slice(axis, index) -> 2-D tensor [rows, cols] (0-based axis and index, a view).
function methods.slice(vol, axis, index)
  axis = axis or 2
  if axis ~= 0 and axis ~= 1 and axis ~= 2 then fail("Volume:slice", "axis must be 0, 1 or 2, got %s", tostring(axis)) end
  local n = vol.shape[axis + 1]
  if math.type(index) ~= "integer" or index < 0 or index >= n then
    fail("Volume:slice", "index %s out of range [0, %d) for axis %d", tostring(index), n, axis)
  end
  local d = vol.data
  if d:dim() == 4 then d = d:select(3, 0) end
  local s = d:select(axis, index) -- [a, b] where a, b are the remaining axes in order
  return s:t()                    -- rows = b, cols = a
end

--- Intensity scaling used for pictures: returns a float32 tensor in [0, 1] and the range used.
---   how = "minmax" (default), "window" (center, width), "percentile" (lower, upper; default 0.5, 99.5)
function M.normalize(t, how, a, b)
  t = t:float()
  local lo, hi
  if how == nil or how == "minmax" then
    lo, hi = t:min():item(), t:max():item()
  elseif how == "window" then
    if type(a) ~= "number" or type(b) ~= "number" or b <= 0 then
      error("volume.normalize: window needs a center and a positive width", 2)
    end
    lo, hi = a - b / 2, a + b / 2
  elseif how == "percentile" then
    local pl, pu = a or 0.5, b or 99.5
    if not (pl >= 0 and pu <= 100 and pl < pu) then
      error("volume.normalize: percentiles must satisfy 0 <= lower < upper <= 100", 2)
    end
    local q = t:quantile({pl / 100, pu / 100})
    lo, hi = q:get(0), q:get(1)
  else
    error("volume.normalize: unknown normalization '" .. tostring(how) .. "' (minmax, window, percentile)", 2)
  end
  local out
  if hi > lo then out = ((t - lo) / (hi - lo)):clamp(0, 1) else out = t * 0 end
  return out, lo, hi
end

--- vol:save_slices(dir, opts): one PNG per slice, named 001.png, 002.png, ...
---   opts.axis (0|1|2, default 2), opts.normalization ("minmax"|"window"|"percentile"),
---   opts.window = {center, width}, opts.lower/opts.upper (percentiles), opts.bits (8|16),
---   opts.first/opts.last (0-based, inclusive), opts.digits (default 3, more when needed),
---   opts.on_slice(i, n) called after each file. The intensity range comes from the whole volume.
---   Returns the list of file names and the range used.
function methods.save_slices(vol, dir, opts)
  opts = opts or {}
  local axis = opts.axis or 2
  if axis ~= 0 and axis ~= 1 and axis ~= 2 then
    fail("Volume:save_slices", "axis must be 0, 1 or 2, got %s", tostring(axis))
  end
  local n = vol.shape[axis + 1]
  local first, last = opts.first or 0, opts.last or (n - 1)
  if first < 0 or last >= n or first > last then
    fail("Volume:save_slices", "slice range %d:%d outside [0, %d)", first, last + 1, n)
  end
  local how = opts.normalization or (opts.window and "window") or "minmax"
  local w = opts.window or {}
  local data = vol.data
  if data:dim() == 4 then data = data:select(3, 0) end
  local _, lo, hi = M.normalize(data:slice(0, 0, 1), how, w[1] or opts.lower, w[2] or opts.upper)
  if how ~= "window" then _, lo, hi = M.normalize(data, how, opts.lower, opts.upper) end
  local bits = opts.bits or 8
  local maxv = bits == 16 and 65535 or 255
  local scale = hi > lo and maxv / (hi - lo) or 0
  local digits = math.max(opts.digits or 3, #tostring(last - first + 1))
  local names = {}
  for k = first, last do
    local img = ((data:select(axis, k):t():float() - lo) * scale):clamp(0, maxv)
    local name = string.format("%0" .. digits .. "d.png", k - first + 1)
    C.write_png(dir .. "/" .. name, img, {bits = bits})
    names[#names + 1] = name
    if opts.on_slice then opts.on_slice(k - first + 1, last - first + 1) end
  end
  return names, lo, hi
end

return M
