-- explore_data.lua: look at a segmentation data set before training on it (the explore_data.py of a
-- MONAI project): per case the grid (shape, spacing, orientation, origin), the intensities and the
-- labels present; whether each label map lies on its image's grid; a summary across cases.
--
--   medlua recipes/explore_data.lua                                   # the two sample patients
--   medlua recipes/explore_data.lua data/imagesTr --label-dir data/labelsTr
--   medlua recipes/explore_data.lua dataset.json --key training       # MONAI / Decathlon data list
--   medlua recipes/explore_data.lua --image ct.nii.gz --label seg.nii.gz
--   medlua recipes/explore_data.lua --labels vertebrae=26-50,spinal_cord=79 --out outputs/explore
--
-- --labels SPEC counts the classes a training run would use (medlua.labelmap: values, ranges a-b,
-- structure names or globs from --label-table). --out DIR writes dataset_summary.json and
-- dataset_montage.png (the middle axial slice of every case, windowed, and its labels).
--
-- Pictures show slices as a radiologist reads them: the volume is reoriented to RAS first, then an
-- axial slice has the patient's right on the image's left and anterior at the top.
local medlua = require "medlua"
local cli = require "medlua.cli"
local path = require "medlua.path"
local volume = require "medlua.volume"
local labelmap = require "medlua.labelmap"
local data = require "medlua.data"
local json = require "medlua.json"
local plot = require "medlua.plot"
local F = medlua.F

-- CT windows (centre, width in HU), as in convert_medical_data.lua
local WINDOWS = {soft = {40, 400}, bone = {300, 1500}, lung = {-600, 1500}, brain = {40, 80}}

local args = cli.parse(arg, {
  description = "Explore a segmentation data set: grid, orientation, intensities, labels; a summary and a montage.",
  {"input", nil, "a folder of images, a JSON data list, or one image (NIfTI file or DICOM directory); " ..
    "default: the sample data", positional = true},
  {"--image", "", "one image (NIfTI file or DICOM directory)"},
  {"--label", "", "the label map of --image (or of a single INPUT image)"},
  {"--label-dir", "", "folder input: folder of label maps with the images' names (nnU-Net _0000 suffix allowed)"},
  {"--key", "training", "data list key (training, validation, test)"},
  {"--labels", "", "classes to count, e.g. vertebrae=26-50,spinal_cord=79 (values, ranges, names)"},
  {"--label-table", "", "label table 'value<TAB>name' (default: labels_total.tsv next to the labels, if any)"},
  {"--out", "", "folder for dataset_summary.json and dataset_montage.png"},
  {"--window", "bone", "montage window: bone | soft | lung | brain | C,W (HU)"},
  {"--max-values", 0, "print at most N label values per case, largest first (0 = all)"},
  {"--max-cases", 0, "explore only the first N cases (0 = all)"},
  {"--tile", 256, "montage tile size in pixels"},
})

local PROG = "explore_data"
local function clean(msg) return cli.clean(msg, true) end
local function die(msg) cli.die(PROG, msg, true) end

-- ---------------------------------------------------------------------------------------- paths
local dirname, basename, join, exists, is_dir, case_name = path.dirname, path.basename, path.join, path.exists, path.is_dir, path.case_name
local script_dir = dirname(arg and arg[0] or "recipes/explore_data.lua")
local root = script_dir:match("^(.*)/recipes$") or (script_dir == "recipes" and ".") or join(script_dir, "..")
local samples = join(root, "data/samples")

-- ---------------------------------------------------------------------------------------- options
local win = WINDOWS[args.window]
if not win then
  local c, w = args.window:match("^%s*(%-?[%d%.]+)%s*,%s*([%d%.]+)%s*$")
  c, w = tonumber(c), tonumber(w)
  if not c or not w or w <= 0 then
    die(string.format("--window must be bone, soft, lung, brain or CENTER,WIDTH with WIDTH > 0 (got '%s')", args.window))
  end
  win = {c, w}
end
if args.tile < 64 or args.tile > 1024 then die("--tile must be between 64 and 1024") end

-- ---------------------------------------------------------------------------------------- cases
local cases = {}
local mode
if args.image ~= "" then
  if args.input then die("give either INPUT or --image, not both") end
  cases[1] = {image = args.image, label = args.label ~= "" and args.label or nil}
  mode = "files"
elseif args.input then
  local input = args.input
  if not exists(input) then die(input .. ": no such file or directory") end
  if input:lower():match("%.json$") then
    local ok, list = pcall(data.load_datalist, input, args.key)
    if not ok then die(list) end
    for i, d in ipairs(list) do
      if type(d.image) ~= "string" then die(string.format("%s: %s[%d] has no image path", input, args.key, i)) end
      cases[#cases + 1] = {image = d.image, label = type(d.label) == "string" and d.label or nil}
    end
    mode = "datalist " .. input .. " [" .. args.key .. "]"
  elseif is_dir(input) then
    local ok, imgs = pcall(data.pair_folder, input, nil)
    if not ok then die(imgs) end
    if #imgs == 0 then
      -- not a folder of NIfTI files: one DICOM series?
      local ok2, series = pcall(volume.list_series, input)
      if not ok2 or type(series) ~= "table" or #series == 0 then
        die(input .. ": no NIfTI images (.nii, .nii.gz) and no DICOM series in this folder")
      end
      cases[1] = {image = input, label = args.label ~= "" and args.label or nil}
      mode = "DICOM series"
    else
      local label_dir = args.label_dir ~= "" and args.label_dir or nil
      if not label_dir then -- Decathlon / nnU-Net layout: imagesTr next to labelsTr
        local b = basename(input)
        local guess = b:match("^images(.*)$")
        if guess and is_dir(join(dirname(input:gsub("/+$", "")), "labels" .. guess)) then
          label_dir = join(dirname(input:gsub("/+$", "")), "labels" .. guess)
          print("labels: found " .. label_dir)
        end
      end
      local by_image = {}
      if label_dir then
        if not is_dir(label_dir) then die(label_dir .. ": not a folder (--label-dir)") end
        local ok3, pairs_ = pcall(data.pair_folder, input, label_dir, {strict = false})
        if not ok3 then die(pairs_) end
        for _, d in ipairs(pairs_) do by_image[d.image] = d.label end
      end
      for _, d in ipairs(imgs) do cases[#cases + 1] = {image = d.image, label = by_image[d.image]} end
      mode = "folder " .. input .. (label_dir and (" + labels " .. label_dir) or "")
    end
  else
    cases[1] = {image = input, label = args.label ~= "" and args.label or nil}
    mode = "files"
  end
else
  cases[1] = {image = join(samples, "example_ct.nii.gz"), label = join(samples, "example_seg_full_fast.nii.gz")}
  cases[2] = {image = join(samples, "example_ct_dicom"), label = join(samples, "example_seg_dicom.nii.gz"),
    name = "example_ct_dicom"}
  mode = "sample data " .. samples
end
if args.max_cases > 0 and #cases > args.max_cases then
  for i = #cases, args.max_cases + 1, -1 do cases[i] = nil end
end
for _, c in ipairs(cases) do c.name = c.name or case_name(c.image) end

-- label names and classes
local table_path = args.label_table ~= "" and args.label_table or nil
if table_path and not exists(table_path) then die(table_path .. ": no such file (--label-table)") end
if not table_path then
  for _, c in ipairs(cases) do
    if c.label and exists(join(dirname(c.label), "labels_total.tsv")) then
      table_path = join(dirname(c.label), "labels_total.tsv")
      break
    end
  end
end
local names_by_value = {}
if table_path then
  local ok, bv = pcall(labelmap.read_tsv, table_path)
  if not ok then die(bv) end
  names_by_value = bv
end
local lm
if args.labels ~= "" then
  local ok, r = pcall(labelmap.parse, args.labels, table_path)
  if not ok then die("--labels '" .. args.labels .. "': " .. clean(r)) end
  lm = r
end

-- ---------------------------------------------------------------------------------------- drawing
local PALETTE = {{230, 25, 75}, {60, 180, 75}, {255, 225, 25}, {0, 130, 200}, {245, 130, 48}, {145, 30, 180},
  {70, 240, 240}, {240, 50, 230}, {210, 245, 60}, {250, 190, 212}, {0, 128, 128}, {220, 190, 255},
  {170, 110, 40}, {255, 250, 200}, {128, 0, 0}, {170, 255, 195}, {128, 128, 0}, {255, 215, 180}, {0, 0, 128}}
local function color_of(c) return PALETTE[(c - 1) % #PALETTE + 1] end

local function flip(t, d)
  local n = t:size(d)
  return t:index_select(d, medlua.arange(n - 1, -1, -1))
end

-- slice k along axis of a RAS tensor [X, Y, Z], oriented for viewing: axial (2) has the patient's right on
-- the left and anterior up; coronal (1) right on the left, superior up; sagittal (0) anterior on the
-- left, superior up. Returns [rows, cols], row spacing, column spacing.
local function view_slice(t, sp, axis, k)
  local s = flip(flip(t:select(axis, k):t(), 0), 1)
  local a, b = ({{2, 3}, {1, 3}, {1, 2}})[axis + 1][1], ({{2, 3}, {1, 3}, {1, 2}})[axis + 1][2]
  return s, sp[b], sp[a]
end

-- output size keeping the physical aspect ratio, longer side = box
local function fit_size(rows, cols, rsp, csp, box)
  local hmm, wmm = rows * rsp, cols * csp
  local sc = box / math.max(hmm, wmm)
  return math.max(1, math.floor(hmm * sc + 0.5)), math.max(1, math.floor(wmm * sc + 0.5))
end

local function resize(s, h, w, mode_)
  local x = s:float():contiguous():view(1, 1, s:size(0), s:size(1))
  return F.interpolate(x, {size = {h, w}, mode = mode_}):view(h, w)
end

local function gray_rgb(img01)
  local g = img01 * 255
  return medlua.stack({g, g, g}, 2)
end

-- alpha-blend each class of lab ([h, w], class values) over rgb, with an opaque outline
local function overlay(rgb, lab, classes, color_fn, alpha)
  local h, w = lab:size(0), lab:size(1)
  for _, c in ipairs(classes) do
    local m = lab:eq(c):float()
    if m:sum():item() > 0 then
      local inner = F.max_pool2d((1 - m):view(1, 1, h, w), {kernel_size = 3, stride = 1, padding = 1}):view(h, w)
      local a = (m * alpha + m * inner * (1 - alpha)):unsqueeze(2)
      local col = medlua.tensor(color_fn(c)):view(1, 1, 3)
      rgb = rgb + (col - rgb) * a
    end
  end
  return rgb
end

-- the montage is a plot canvas (medlua.plot): text in its 5x9 font, rectangles, pasted image tensors
local fit_text = plot.fit_text

-- ---------------------------------------------------------------------------------------- per case
local function fmt3(v, f) return string.format("(" .. f .. ", " .. f .. ", " .. f .. ")", v[1], v[2], v[3]) end
local function finite(x) return x == x and x ~= math.huge and x ~= -math.huge end
local function num(x) return finite(x) and x or nil end

local function same_grid(a, b)
  local sa, sb = a.shape, b.shape
  if sa[1] ~= sb[1] or sa[2] ~= sb[2] or sa[3] ~= sb[3] then
    return false, string.format("shape (%s) vs image (%s)", table.concat(sb, ", "), table.concat(sa, ", ")), 0
  end
  local d = (a.affine - b.affine):abs():max():item()
  if d > 1e-3 then
    local why = a.axcodes ~= b.axcodes and string.format("orientation %s vs image %s", b.axcodes, a.axcodes) or
      string.format("affines differ by up to %.3g mm", d)
    return false, why, d
  end
  return true, nil, d
end

local function tile_of(img, lab, classes)
  -- middle axial slice of the RAS image (and of the labels, already on the image grid)
  local ras = img:to_ras()
  local t = ras.data
  if t:dim() == 4 then t = t:select(3, 0) end
  local sp = ras.spacing
  local k = t:size(2) // 2
  local s, rsp, csp = view_slice(t, sp, 2, k)
  local h, w = fit_size(s:size(0), s:size(1), rsp, csp, args.tile)
  local g = ((resize(s, h, w, "bilinear") - (win[1] - win[2] / 2)) / win[2]):clamp(0, 1)
  local base = gray_rgb(g)
  local over
  if lab then
    local lt = lab:to_ras().data
    local ls = resize(view_slice(lt, sp, 2, k), h, w, "nearest")
    local present = classes
    if not present then -- raw values: the ones on this slice
      present = {}
      local ok, vals = pcall(labelmap.values, ls)
      if ok and vals then for _, v in ipairs(vals) do if v > 0 then present[#present + 1] = v end end end
    end
    over = overlay(base, ls, present, color_of, 0.45)
  end
  return {img = base, over = over, slice = k}
end

local infos, tiles, failures = {}, {}, {}

local function explore(c, i)
  print(string.format("\n[%d/%d] %s", i, #cases, c.name))
  local kind, why = volume.detect(c.image)
  if not kind then error(why, 0) end
  local ok, img = pcall(volume.load, c.image)
  if not ok then error(clean(img), 0) end
  local t = img.data
  local sh, sp = img.shape, img.spacing
  local info = {name = c.name, image = c.image, label = c.label, format = kind == "nifti" and "NIfTI" or "DICOM",
    shape = sh, dtype = img.dtype, spacing = sp, axcodes = img.axcodes, origin = img.origin}
  local aff = {}
  for r = 0, 3 do aff[r + 1] = {img.affine:get(r, 0), img.affine:get(r, 1), img.affine:get(r, 2), img.affine:get(r, 3)} end
  info.affine = aff
  print(string.format("  image     %s (%s%s)", c.image, info.format, img.modality ~= "" and (", " .. img.modality) or ""))
  print(string.format("  shape     (%s)  dtype %s", table.concat(sh, ", "), img.dtype))
  print(string.format("  spacing   (%.3f, %.3f, %.3f) mm   field of view %.0f x %.0f x %.0f mm", sp[1], sp[2], sp[3],
    sh[1] * sp[1], sh[2] * sp[2], sh[3] * sp[3]))
  print(string.format("  axcodes   %s   origin %s mm", img.axcodes, fmt3(img.origin, "%.2f")))
  local tf = t:float()
  local q = tf:quantile({0.005, 0.995})
  local st = {min = tf:min():item(), max = tf:max():item(), mean = tf:mean():item(),
    std = tf:numel() > 1 and tf:std():item() or 0, p0_5 = q:get(0), p99_5 = q:get(1)}
  for k, v in pairs(st) do st[k] = num(v) end
  info.intensity = st
  print(string.format("  intensity min %.1f  max %.1f  mean %.1f  std %.1f  p0.5 %.1f  p99.5 %.1f",
    st.min or 0 / 0, st.max or 0 / 0, st.mean or 0 / 0, st.std or 0 / 0, st.p0_5 or 0 / 0, st.p99_5 or 0 / 0))
  tf, q = nil, nil

  local lab, lab_on_img, classes
  if c.label then
    local ok2, l = pcall(volume.load, c.label)
    if not ok2 then error(clean(l), 0) end
    lab = l
    local li = {path = c.label, shape = l.shape, dtype = l.dtype, spacing = l.spacing, axcodes = l.axcodes}
    info.label_info = li
    print(string.format("  label     %s  shape (%s)  dtype %s  axcodes %s", c.label, table.concat(l.shape, ", "),
      l.dtype, l.axcodes))
    local same, why2 = same_grid(img, l)
    li.same_grid = same
    if same then
      print("  grid      label matches the image grid (same shape and affine within 1e-3)")
      lab_on_img = l
    else
      li.grid_difference = why2
      print(string.format("  grid      label DIFFERS from the image grid (%s): resample it to the image grid " ..
        "with nearest neighbour before training", why2))
      local ok3, r = pcall(l.resample_like, l, img, {mode = "nearest"})
      if ok3 then lab_on_img = r end
    end
    local ok4, stats = pcall(l.label_stats, l)
    if not ok4 then error(c.label .. ": cannot compute label statistics: " .. clean(stats), 0) end
    local vals = {}
    for v, s in pairs(stats) do vals[#vals + 1] = {value = v, name = names_by_value[v], voxels = s.voxels,
      volume_ml = s.volume_ml} end
    table.sort(vals, function(a, b) return a.value < b.value end)
    li.values = json.array(vals)
    local lsp = l.spacing
    local vox_ml = lsp[1] * lsp[2] * lsp[3] / 1000
    local nfg = 0
    for _, v in ipairs(vals) do nfg = nfg + v.voxels end
    local nvox = l.shape[1] * l.shape[2] * l.shape[3]
    li.foreground_voxels = nfg
    print(string.format("  labels    %d value%s present besides background 0; foreground %d voxels (%.1f%%, %.1f mL)",
      #vals, #vals == 1 and "" or "s", nfg, 100 * nfg / nvox, nfg * vox_ml))
    local max_values = args.max_values
    if vals[1] and (vals[1].value < 0 or #vals > 255) then
      local why = vals[1].value < 0 and string.format("negative value %g", vals[1].value) or
        string.format("%d distinct values", #vals)
      print(string.format("  WARNING   %s does not look like a label map (%s): is it an image?", c.label, why))
      li.warning = "not a label map: " .. why
      if max_values == 0 then max_values = 20 end
    end
    local shown = vals
    if max_values > 0 and #vals > max_values then
      shown = {}
      for k, v in ipairs(vals) do shown[k] = v end
      table.sort(shown, function(a, b) return a.voxels > b.voxels end)
      for k = #shown, max_values + 1, -1 do shown[k] = nil end
      table.sort(shown, function(a, b) return a.value < b.value end)
    end
    if #shown > 0 then print(string.format("    %6s  %-28s %10s %10s", "value", "name", "voxels", "mL")) end
    for _, v in ipairs(shown) do
      print(string.format("    %6d  %-28s %10d %10.2f", v.value, v.name or "", v.voxels, v.volume_ml))
    end
    if #shown < #vals then print(string.format("    ... and %d smaller values (--max-values N shows more)", #vals - #shown)) end
    if lm then
      local ok5, cls = pcall(labelmap.remap, l, lm, c.label)
      if not ok5 then error(clean(cls), 0) end
      local counts = labelmap.count(cls, lm)
      local out = {}
      print(string.format("  classes   (--labels %s)", args.labels))
      print(string.format("    %5s  %-28s %10s %10s %8s", "class", "name", "voxels", "mL", "% fg"))
      local fg = 0
      for k = 2, #counts do fg = fg + counts[k] end
      for k, n in ipairs(counts) do
        local name = lm.names[k]
        out[k] = {index = k - 1, name = name, voxels = math.tointeger(n) or n, volume_ml = n * vox_ml}
        print(string.format("    %5d  %-28s %10d %10.2f %8s%s", k - 1, name, n, n * vox_ml,
          k == 1 and "" or string.format("%.1f", fg > 0 and 100 * n / fg or 0), (k > 1 and n == 0) and
          "   <- absent in this case" or ""))
      end
      li.classes = out
      if lab_on_img then
        lab_on_img = (lab_on_img == l) and cls or labelmap.remap(lab_on_img, lm, c.label)
      end
      classes = {}
      for k = 1, lm.num_classes - 1 do classes[k] = k end
    end
  end
  infos[#infos + 1] = info
  if args.out ~= "" then
    local ok6, tl = pcall(tile_of, img, lab_on_img, classes)
    if ok6 then
      tl.name = c.name
      tiles[#tiles + 1] = tl
    else
      print("  (no montage tile: " .. clean(tl) .. ")")
    end
  end
end

print(string.format("Exploring %d case%s (%s)", #cases, #cases == 1 and "" or "s", mode))
if table_path then print("label names from " .. table_path) end
if lm then print("classes: " .. tostring(lm)) end
for i, c in ipairs(cases) do
  local ok, err = pcall(explore, c, i)
  if not ok then
    local msg = clean(err)
    print("  ERROR: " .. msg)
    failures[#failures + 1] = c.name .. ": " .. msg
  end
  collectgarbage()
end

-- ---------------------------------------------------------------------------------------- summary
local summary
if #infos > 0 then
  local function range(get)
    local lo, hi = {math.huge, math.huge, math.huge}, {-math.huge, -math.huge, -math.huge}
    for _, inf in ipairs(infos) do
      local v = get(inf)
      for a = 1, 3 do lo[a], hi[a] = math.min(lo[a], v[a]), math.max(hi[a], v[a]) end
    end
    return lo, hi
  end
  local function median(get)
    local m = {}
    for a = 1, 3 do
      local xs = {}
      for _, inf in ipairs(infos) do xs[#xs + 1] = get(inf)[a] end
      table.sort(xs)
      local n = #xs
      m[a] = n % 2 == 1 and xs[(n + 1) // 2] or (xs[n // 2] + xs[n // 2 + 1]) / 2
    end
    return m
  end
  local get_sp = function(inf) return inf.spacing end
  local get_sh = function(inf) return inf.shape end
  local splo, sphi = range(get_sp)
  local shlo, shhi = range(get_sh)
  local spmed = median(get_sp)
  local axset, nlab, nmis = {}, 0, 0
  for _, inf in ipairs(infos) do
    axset[inf.axcodes] = (axset[inf.axcodes] or 0) + 1
    if inf.label_info then
      nlab = nlab + 1
      if not inf.label_info.same_grid then nmis = nmis + 1 end
    end
  end
  print(string.format("\nSummary: %d case%s, %d with labels", #infos, #infos == 1 and "" or "s", nlab))
  local wname = 12
  for _, inf in ipairs(infos) do wname = math.max(wname, math.min(#inf.name, 40)) end
  local fmt = "  %-" .. wname .. "s  %-16s %-22s %-8s %-14s %s"
  print(string.format(fmt, "case", "shape", "spacing (mm)", "axcodes", "HU p0.5-p99.5", "label grid"))
  for _, inf in ipairs(infos) do
    local li = inf.label_info
    local it = inf.intensity
    print(string.format(fmt, inf.name:sub(1, 40), table.concat(inf.shape, "x", 1, 3),
      string.format("%.2f x %.2f x %.2f", inf.spacing[1], inf.spacing[2], inf.spacing[3]), inf.axcodes,
      string.format("%.0f..%.0f", it.p0_5 or 0 / 0, it.p99_5 or 0 / 0),
      li == nil and "-" or (li.same_grid and "same" or "differs (resample)")))
  end
  print(string.format("  spacing range  x %.2f-%.2f  y %.2f-%.2f  z %.2f-%.2f mm; median (%.2f, %.2f, %.2f)",
    splo[1], sphi[1], splo[2], sphi[2], splo[3], sphi[3], spmed[1], spmed[2], spmed[3]))
  print(string.format("  shape range    x %d-%d  y %d-%d  z %d-%d", shlo[1], shhi[1], shlo[2], shhi[2], shlo[3], shhi[3]))
  local axl = {}
  for k, n in pairs(axset) do axl[#axl + 1] = string.format("%s (%d)", k, n) end
  table.sort(axl)
  print("  orientations   " .. table.concat(axl, ", ") ..
    (#axl > 1 and "  -> reorient to RAS (Orientationd) before training" or ""))
  if nmis > 0 then
    print(string.format("  %d label map%s not on the image grid -> resample with nearest neighbour (resample_like)",
      nmis, nmis == 1 and " is" or "s are"))
  end
  local totals
  if lm then
    totals = {}
    for k = 1, lm.num_classes do totals[k] = {name = lm.names[k], voxels = 0, volume_ml = 0, cases = 0} end
    for _, inf in ipairs(infos) do
      local cl = inf.label_info and inf.label_info.classes
      if cl then
        for k, cc in ipairs(cl) do
          totals[k].voxels = totals[k].voxels + cc.voxels
          totals[k].volume_ml = totals[k].volume_ml + cc.volume_ml
          if cc.voxels > 0 then totals[k].cases = totals[k].cases + 1 end
        end
      end
    end
    local parts = {}
    for k = 2, #totals do
      parts[#parts + 1] = string.format("%s %.1f mL in %d/%d", totals[k].name, totals[k].volume_ml, totals[k].cases, nlab)
    end
    print("  classes        " .. table.concat(parts, "; "))
  end
  summary = {num_cases = #infos, num_labelled = nlab, labels_off_grid = nmis, spacing_min = splo, spacing_max = sphi,
    spacing_median = spmed, shape_min = shlo, shape_max = shhi, axcodes = axset, classes = totals}
end

-- ---------------------------------------------------------------------------------------- outputs
if args.out ~= "" then
  os.execute("mkdir -p '" .. args.out:gsub("'", "'\\''") .. "'")
  if not is_dir(args.out) then die(args.out .. ": cannot create the output folder") end
  local doc = {source = mode, label_table = table_path, labels = lm and lm:to_json_table() or nil,
    cases = json.array(infos), summary = summary, failures = #failures > 0 and failures or nil}
  local jpath = join(args.out, "dataset_summary.json")
  local ok, err = pcall(json.write, jpath, doc, {indent = 2, key_order = {"source", "label_table", "labels",
    "summary", "cases", "failures", "name", "image", "label", "format", "shape", "dtype", "spacing", "axcodes",
    "origin", "affine", "intensity", "label_info"}})
  if not ok then die(jpath .. ": " .. clean(err)) end
  print("\nwrote " .. jpath)
  if #tiles > 0 then
    local T, gap, cap = args.tile, 8, 22
    local per_row = math.min(#tiles, 2)
    local bw = 2 * T + gap
    local rows = math.ceil(#tiles / per_row)
    local legend_h = lm and 26 or 0
    local head = 30
    local W = per_row * bw + (per_row + 1) * 16
    local H = head + rows * (cap + T + gap) + legend_h + 8
    local fig = plot.new_canvas(W, H, {255, 255, 255})
    local title = string.format("Middle axial slice per case (window %g/%g HU; patient right on image left)", win[1], win[2])
    fig:text(fit_text(title, W - 16, 2), 8, 8, {0, 0, 0}, 2)
    for i, tl in ipairs(tiles) do
      local r, cidx = (i - 1) // per_row, (i - 1) % per_row
      local x0 = 16 + cidx * (bw + 16)
      local y0 = head + r * (cap + T + gap)
      fig:text(fit_text(string.format("%s  (z %d)", tl.name, tl.slice), bw, 2), x0, y0 + 2, {30, 30, 30}, 2)
      fig:fill_rect(x0, y0 + cap, x0 + T - 1, y0 + cap + T - 1, {0, 0, 0})
      local ih, iw = tl.img:size(0), tl.img:size(1)
      local ox, oy = x0 + (T - iw) // 2, y0 + cap + (T - ih) // 2
      fig:paste(tl.img, ox, oy)
      fig:fill_rect(x0 + T + gap, y0 + cap, x0 + 2 * T + gap - 1, y0 + cap + T - 1, {0, 0, 0})
      if tl.over then
        fig:paste(tl.over, ox + T + gap, oy)
      else
        fig:text("no label", x0 + T + gap + T // 2 - 24, y0 + cap + T // 2, {200, 200, 200}, 1)
      end
    end
    if lm then
      local x, y = 16, H - legend_h
      for k = 2, lm.num_classes do
        local col = color_of(k - 1)
        fig:fill_rect(x, y, x + 13, y + 13, col)
        local s = lm.names[k]
        fig:text(s, x + 20, y, {0, 0, 0}, 2)
        x = x + 20 + #s * 12 + 20
      end
    end
    local ppath = join(args.out, "dataset_montage.png")
    local ok2, err2 = pcall(fig.save_png, fig, ppath)
    if not ok2 then die(ppath .. ": " .. clean(err2)) end
    print("wrote " .. ppath)
  end
end

if #failures > 0 then
  io.stderr:write(string.format("%s: %d of %d case%s failed: %s\n", PROG, #failures, #cases, #cases == 1 and "" or "s",
    table.concat(failures, "; ")))
  os.exit(1)
end
