-- convert_medical_data.lua: a DICOM series (directory) or a NIfTI volume -> PNG slices + transforms.json
-- (camera intrinsics and one camera-to-world pose per slice), the input format of MVSplat-style
-- novel-view training.
--
--   medlua recipes/convert_medical_data.lua /path/to/dicom_dir data/patient_001
--   medlua recipes/convert_medical_data.lua ct.nii.gz data/ct_lung --normalization window \
--       --window-center -600 --window-width 1500
--   medlua recipes/convert_medical_data.lua ct.nii.gz data/quick --slices 40:60   # a 20-slice quick test
--
-- CT windows (HU): soft tissue 40/400, bone 300/1500, lung -600/1500 (or --window soft|bone|lung).
--
-- Slices: along --axis (0, 1, 2 = the volume's first, second, third voxel axis; 2 = axial for a
-- scanner-ordered CT). Image columns follow the first remaining voxel axis and rows the second, so an
-- axial slice of a DICOM series looks like the original DICOM image.
--
-- Poses: camera k sits at k * z_step along the slicing axis (z_step = slice spacing in metres, as the
-- original converter: 1 mm -> 0.001 units), with its x axis along the image columns, y along the image
-- rows and z = x cross y; the frame is the volume's voxel-axis frame. transforms.json also records the
-- volume's affine (voxel -> RAS mm), spacing, shape and axis codes, so nothing about the geometry is lost.
local medlua = require "medlua"
local cli = require "medlua.cli"
local volume = require "medlua.volume"
local json = require "medlua.json"
local progress = require "medlua.progress"

local windows = {soft = {40, 400}, bone = {300, 1500}, lung = {-600, 1500}, brain = {40, 80}}

local args = cli.parse(arg, {
  description = "Convert a DICOM series or NIfTI volume to PNG slices + transforms.json (MVSplat input).",
  {"input", nil, "DICOM directory or file, or NIfTI file (.nii, .nii.gz, .hdr)", positional = true},
  {"output", nil, "output directory (created)", positional = true},
  {"--normalization", "minmax", "intensity scaling: minmax | window | percentile"},
  {"--window-center", 40.0, "window centre (HU) for --normalization window"},
  {"--window-width", 400.0, "window width (HU) for --normalization window"},
  {"--window", "", "named CT window: soft | bone | lung | brain (sets --normalization window)"},
  {"--lower", 0.5, "lower percentile for --normalization percentile"},
  {"--upper", 99.5, "upper percentile for --normalization percentile"},
  {"--axis", 2, "slicing axis: 0 (sagittal), 1 (coronal), 2 (axial)"},
  {"--focal-length", 0.0, "focal length in pixels (0 = image width)"},
  {"--slices", "", "only slices a:b (0-based, end exclusive, like Python; e.g. 40:60)"},
  {"--bits", 8, "PNG bit depth: 8 or 16"},
  {"--series-uid", "", "DICOM: which series (default: the largest)"},
})

local function die(msg) cli.die("convert_medical_data", msg) end

if not args.input or not args.output then die("need INPUT and OUTPUT (see --help)") end
if args.axis ~= 0 and args.axis ~= 1 and args.axis ~= 2 then die("--axis must be 0, 1 or 2") end
if args.bits ~= 8 and args.bits ~= 16 then die("--bits must be 8 or 16") end
if args.window ~= "" then
  local w = windows[args.window]
  if not w then die("--window must be one of soft, bone, lung, brain (got '" .. args.window .. "')") end
  args.normalization = "window"
  args.window_center, args.window_width = w[1], w[2]
end
local norm = args.normalization
if norm ~= "minmax" and norm ~= "window" and norm ~= "percentile" then
  die("--normalization must be minmax, window or percentile (got '" .. norm .. "')")
end
if norm == "window" and args.window_width <= 0 then die("--window-width must be positive") end

-- load
local kind, why = volume.detect(args.input)
if not kind then die(why) end
print(string.format("Loading %s from %s...", kind == "nifti" and "NIfTI volume" or "DICOM series", args.input))
local ok, vol = pcall(volume.load, args.input, kind ~= "nifti" and args.series_uid ~= "" and
  {series_uid = args.series_uid} or nil)
if not ok then die(tostring(vol)) end
local shape, sp = vol.shape, vol.spacing
print(string.format("  Volume shape: (%s)", table.concat(shape, ", ")))
print(string.format("  Voxel spacing: (%g, %g, %g)", sp[1], sp[2], sp[3]))
print(string.format("  Orientation: %s", vol.axcodes))
local ax = args.axis
print(string.format("  Slice thickness (%s): %.2f mm", ({"X", "Y", "Z"})[ax + 1], sp[ax + 1]))
if #shape == 4 then print(string.format("  4-D volume: using the first of %d frames", shape[4])) end

-- slice range
local n = shape[ax + 1]
local first, last = 0, n - 1
if args.slices ~= "" then
  local a, b = args.slices:match("^(%-?%d*):(%-?%d*)$")
  if not a then die("--slices must look like a:b (e.g. 40:60), got '" .. args.slices .. "'") end
  a = a == "" and 0 or tonumber(a)
  b = b == "" and n or tonumber(b)
  if a < 0 then a = a + n end
  if b < 0 then b = b + n end
  a, b = math.max(a, 0), math.min(b, n)
  if a >= b then die(string.format("--slices %s selects no slice of %d", args.slices, n)) end
  first, last = a, b - 1
end

-- intensity
print(string.format("\nNormalizing intensity using method: %s", norm))
local data = vol.data
if data:dim() == 4 then data = data:select(3, 0) end
local dmin, dmax = data:min():item(), data:max():item()
print(string.format("  Original range: [%.2f, %.2f]", dmin, dmax))
local opts = {axis = ax, normalization = norm, bits = args.bits, first = first, last = last}
if norm == "window" then
  opts.window = {args.window_center, args.window_width}
  print(string.format("  Window: center %g, width %g -> [%g, %g]", args.window_center, args.window_width,
    args.window_center - args.window_width / 2, args.window_center + args.window_width / 2))
elseif norm == "percentile" then
  opts.lower, opts.upper = args.lower, args.upper
end
local maxv = args.bits == 16 and 65535 or 255
print(string.format("  Normalized range: [0, %d]", maxv))

-- slices
local count = last - first + 1
os.execute("mkdir -p '" .. args.output:gsub("'", "'\\''") .. "'")
local probe = io.open(args.output .. "/.medlua_write_test", "w")
if not probe then die("cannot write to output directory " .. args.output) end
probe:close()
os.remove(args.output .. "/.medlua_write_test")
print(string.format("\nSaving %d slices to %s...", count, args.output))
local bar = progress.new(count, {desc = "slices", unit = "slice"})
local names = vol:save_slices(args.output, {axis = ax, normalization = norm, bits = args.bits, first = first,
  last = last, window = opts.window, lower = opts.lower, upper = opts.upper,
  on_slice = function() bar:update(1) end})
bar:close()
print(string.format("  Saved %d/%d slices", #names, count))

-- transforms.json
print("\nGenerating transforms.json...")
local img = vol:slice(ax, first)
local h, w = img:size(0), img:size(1)
local fl = args.focal_length > 0 and args.focal_length or w
local step_mm = sp[ax + 1]
local zstep = step_mm / 1000
local e = {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}
local u = e[({2, 1, 1})[ax + 1]]              -- image columns: first remaining axis
local v = e[({3, 3, 2})[ax + 1]]              -- image rows: second remaining axis
local nrm = {u[2] * v[3] - u[3] * v[2], u[3] * v[1] - u[1] * v[3], u[1] * v[2] - u[2] * v[1]}
local s = e[ax + 1]
local frames = {}
for i, name in ipairs(names) do
  local k = first + i - 1
  local t = {s[1] * k * zstep, s[2] * k * zstep, s[3] * k * zstep}
  frames[i] = {file_path = name, slice_index = k, transform_matrix = {
    {u[1], v[1], nrm[1], t[1]},
    {u[2], v[2], nrm[2], t[2]},
    {u[3], v[3], nrm[3], t[3]},
    {0, 0, 0, 1}}}
end
local aff = {}
local A = vol.affine
for r = 0, 3 do aff[r + 1] = {A:get(r, 0), A:get(r, 1), A:get(r, 2), A:get(r, 3)} end
local out = {
  camera_model = "PINHOLE", fl_x = fl + 0.0, fl_y = fl + 0.0, cx = w / 2, cy = h / 2, w = w, h = h,
  slice_axis = ax, slice_spacing_mm = step_mm, z_step = zstep,
  normalization = norm, intensity_range = {dmin, dmax},
  window = opts.window, bits = args.bits,
  volume = {source = args.input, shape = shape, spacing = sp, affine = aff, axcodes = vol.axcodes,
    modality = vol.modality ~= "" and vol.modality or nil},
  frames = frames,
}
local path = args.output .. "/transforms.json"
json.write(path, out, {indent = 2, key_order = {"camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h", "slice_axis",
  "slice_spacing_mm", "z_step", "normalization", "intensity_range", "window", "bits", "volume", "frames"}})
print(string.format("  Image shape: %d x %d", h, w))
print(string.format("  Focal length: %.2f", fl))
print(string.format("  Principal point: (%.2f, %.2f)", w / 2, h / 2))
print(string.format("  Slice thickness: %.2f mm", step_mm))
print(string.format("  Z-step (camera translation): %.6f units", zstep))
print(string.format("  Saved transforms.json to %s", path))

print("\n\u{2713} Conversion complete!")
print(string.format("  Output directory: %s", args.output))
print(string.format("  Number of slices: %d", #names))
print(string.format("  Image shape: %d x %d", h, w))
local absdir = args.output
if absdir:sub(1, 1) ~= "/" then
  local pwd = os.getenv("PWD")
  if pwd then absdir = pwd .. "/" .. absdir end
end
print("\nNext steps:")
print(string.format("  1. Update data_root in your training config to: %s", absdir))
print(string.format("  2. Update image_shape to: [%d, %d]", h, w))
print("  3. Run training with: medlua recipes/train_mvsplat.lua --data " .. args.output)
