-- visualize_predictions.lua: a PNG figure of a segmentation next to its ground truth (the
-- visualize_predictions.py of a MONAI project). One row per chosen slice: image | ground truth overlay |
-- prediction overlay, per-class colours alpha-blended over the windowed CT with an outline, a legend
-- with the class names, and per-class Dice (printed, and on the figure) when the ground truth is given.
--
--   medlua recipes/visualize_predictions.lua --image data/samples/example_ct.nii.gz \
--       --pred outputs/predictions/example_ct_seg.nii.gz \
--       --label data/samples/example_seg_full_fast.nii.gz --labels vertebrae=26-50,spinal_cord=79
--   medlua recipes/visualize_predictions.lua --image ct_dicom_dir --pred pred.nii.gz --slices 5,10,15 --window soft
--
-- --pred holds class indices 0..K-1 on the image's grid (as recipes/infer_unet.lua writes them); a
-- prediction with the image's shape but another orientation is resampled (nearest neighbour), one with
-- another shape is an error. --label is either class indices, or raw label values (e.g. TotalSegmentator's
-- 1..117) mapped to classes with --labels SPEC (and --label-table for structure names); a label map in
-- another grid (e.g. a LAS NIfTI of an LPS DICOM series) is resampled to the image grid (nearest).
-- --label-map label_map.json ({spec =, names = {...}}, written by the training recipe; also found next to
-- --pred) gives the class names and the spec for raw ground truth.
--
-- Slices are shown as a radiologist reads them, whatever the file's orientation: the volumes are
-- reoriented to RAS, then axial slices have the patient's right on the image's left and anterior up,
-- coronal slices right on the left and superior up, sagittal slices anterior on the left and superior
-- up. Slice indices count along the RAS axis (--axis 2: from inferior to superior).
local medlua = require "medlua"
local cli = require "medlua.cli"
local path = require "medlua.path"
local volume = require "medlua.volume"
local labelmap = require "medlua.labelmap"
local json = require "medlua.json"
local plot = require "medlua.plot"
local F = medlua.F

-- CT windows (centre, width in HU), as in convert_medical_data.lua
local WINDOWS = {soft = {40, 400}, bone = {300, 1500}, lung = {-600, 1500}, brain = {40, 80}}
local AXIS_NAMES = {[0] = "sagittal", [1] = "coronal", [2] = "axial"}

local args = cli.parse(arg, {
  description = "Draw image | ground truth | prediction for chosen slices, with a legend and per-class Dice.",
  {"--image", "", "the image: NIfTI file or DICOM directory (required)"},
  {"--pred", "", "prediction: class indices 0..K-1 on the image grid (NIfTI)"},
  {"--label", "", "ground truth (NIfTI): class indices, or raw label values with --labels"},
  {"--labels", "", "classes from raw ground-truth values, e.g. vertebrae=26-50,spinal_cord=79"},
  {"--label-table", "", "label table 'value<TAB>name' for structure names in --labels"},
  {"--label-map", "", "label_map.json from training ({spec, names}); default: label_map.json next to --pred"},
  {"--axis", 2, "slice axis in RAS: 0 sagittal, 1 coronal, 2 axial"},
  {"--slices", "auto", "slice indices, e.g. 10,20,30 (negative from the end), or auto (up to 4 with most foreground)"},
  {"--window", "bone", "CT window: bone | soft | lung | brain | C,W (HU)"},
  {"--alpha", 0.45, "overlay opacity (0..1)"},
  {"--panel", 320, "panel size in pixels (longer side)"},
  {"--out", "outputs/prediction_visualization.png", "output PNG"},
})

local PROG = "visualize_predictions"
local function clean(msg) return cli.clean(msg, true) end
local function die(msg) cli.die(PROG, msg, true) end

local dirname, basename, join, exists, is_dir = path.dirname, path.basename, path.join, path.exists, path.is_dir

-- ---------------------------------------------------------------------------------------- options
if args.image == "" then die("--image is required (a NIfTI file or a DICOM directory; see --help)") end
if args.pred == "" and args.label == "" then die("give --pred and/or --label (see --help)") end
local axis = math.tointeger(args.axis)
if axis ~= 0 and axis ~= 1 and axis ~= 2 then die("--axis must be 0, 1 or 2 (got " .. tostring(args.axis) .. ")") end
local win = WINDOWS[args.window]
if not win then
  local c, w = args.window:match("^%s*(%-?[%d%.]+)%s*,%s*([%d%.]+)%s*$")
  c, w = tonumber(c), tonumber(w)
  if not c or not w or w <= 0 then
    die(string.format("--window must be bone, soft, lung, brain or CENTER,WIDTH with WIDTH > 0 (got '%s')", args.window))
  end
  win = {c, w}
end
if not (args.alpha >= 0 and args.alpha <= 1) then die("--alpha must be between 0 and 1") end
local panel = math.tointeger(args.panel)
if not panel or panel < 64 or panel > 2048 then die("--panel must be an integer between 64 and 2048") end
local slice_req
if args.slices ~= "auto" then
  slice_req = {}
  for part in args.slices:gmatch("[^,]+") do
    local v = math.tointeger(tonumber((part:gsub("%s", ""))))
    if not v then die("--slices must be 'auto' or integers separated by commas, e.g. 10,20,30 (got '" .. args.slices .. "')") end
    slice_req[#slice_req + 1] = v
  end
  if #slice_req == 0 then die("--slices is empty") end
  if #slice_req > 16 then die("--slices: at most 16 slices per figure") end
end

for _, p in ipairs{{args.image, "--image"}, {args.pred, "--pred"}, {args.label, "--label"},
  {args.label_map, "--label-map"}, {args.label_table, "--label-table"}} do
  if p[1] ~= "" and not exists(p[1]) then die(p[1] .. ": no such file or directory (" .. p[2] .. ")") end
end

-- ---------------------------------------------------------------------------------------- label map
local table_path = args.label_table ~= "" and args.label_table or nil
local lm_json_path = args.label_map ~= "" and args.label_map or nil
if not lm_json_path and args.pred ~= "" and exists(join(dirname(args.pred), "label_map.json")) then
  lm_json_path = join(dirname(args.pred), "label_map.json")
end
local lmj
if lm_json_path then
  local ok, r = pcall(json.read, lm_json_path)
  if not ok then
    local msg = clean(r):gsub("^json%.read: ", "")
    die(msg:find(lm_json_path, 1, true) and msg or (lm_json_path .. ": " .. msg))
  end
  if type(r) ~= "table" then die(lm_json_path .. ": expected a JSON object {spec = ..., names = [...]}") end
  if r.names ~= nil then
    if type(r.names) ~= "table" or #r.names < 2 then die(lm_json_path .. ": 'names' must be a list of at least 2 class names") end
    for i, n in ipairs(r.names) do
      if type(n) ~= "string" then die(string.format("%s: names[%d] is not a string", lm_json_path, i)) end
    end
  end
  if r.spec ~= nil and type(r.spec) ~= "string" then die(lm_json_path .. ": 'spec' must be a string") end
  lmj = r
  print("label map: " .. lm_json_path)
end

local lm, lm_explicit
if args.labels ~= "" then
  local ok, r = pcall(labelmap.parse, args.labels, table_path)
  if not ok then die("--labels '" .. args.labels .. "': " .. clean(r)) end
  lm, lm_explicit = r, true
elseif lmj and lmj.spec and lmj.spec ~= "identity" then
  local tp = table_path or (type(lmj.table_path) == "string" and exists(lmj.table_path) and lmj.table_path) or nil
  local ok, r = pcall(labelmap.parse, lmj.spec, tp)
  if not ok then die(lm_json_path .. ": spec '" .. lmj.spec .. "': " .. clean(r)) end
  lm = r
end
local names
if lm_explicit then names = lm.names
elseif lmj and lmj.names then names = lmj.names
elseif lm then names = lm.names end
if lm and names and #names ~= lm.num_classes then
  die(string.format("%s: %d names but the spec '%s' gives %d classes", lm_json_path or "label map", #names, lm.spec,
    lm.num_classes))
end

-- ---------------------------------------------------------------------------------------- volumes
local function load(path, what)
  local kind, why = volume.detect(path)
  if not kind then die(why) end
  local ok, v = pcall(volume.load, path)
  if not ok then die(clean(v)) end
  if #v.shape == 4 then
    if v.shape[4] ~= 1 then die(string.format("%s: %s is 4-D (%s); expected a 3-D volume", path, what,
      table.concat(v.shape, "x"))) end
    v = v:with_data(v.data:select(3, 0))
  end
  return v
end
local function shape_str(v) return "(" .. table.concat(v.shape, ", ") .. ")" end
local function grid_diff(a, b)
  local sa, sb = a.shape, b.shape
  if sa[1] ~= sb[1] or sa[2] ~= sb[2] or sa[3] ~= sb[3] then return "shape" end
  local d = (a.affine - b.affine):abs():max():item()
  if d > 1e-3 then
    return a.axcodes ~= b.axcodes and string.format("orientation %s vs image %s", b.axcodes, a.axcodes) or
      string.format("affine differs by up to %.3g mm", d)
  end
  return nil
end
local function int_values(v, path)
  local t = v.data
  local frac = (t - t:round()):abs():max():item()
  if frac > 1e-3 then die(string.format("%s: values must be integer labels (found one %.3g away from an integer)", path, frac)) end
  local ok, vals, mn = pcall(labelmap.values, v)
  if not ok then die(path .. ": " .. clean(vals)) end
  if not vals then die(string.format("%s: negative label value %g (an image rather than a label map?)", path, mn)) end
  return vals
end

local img = load(args.image, "the image")
print(string.format("image: %s  %s  spacing (%.3g, %.3g, %.3g) mm  %s", args.image, shape_str(img),
  img.spacing[1], img.spacing[2], img.spacing[3], img.axcodes))

local pred, pred_vals
if args.pred ~= "" then
  pred = load(args.pred, "the prediction")
  local d = grid_diff(img, pred)
  if d == "shape" then
    die(string.format("%s: prediction shape %s does not match the image %s %s (predictions must be on the image grid)",
      args.pred, shape_str(pred), args.image, shape_str(img)))
  elseif d then
    print(string.format("pred:  %s: %s -> resampled to the image grid (nearest neighbour)", args.pred, d))
    pred = pred:resample_like(img, {mode = "nearest"})
  end
  pred_vals = int_values(pred, args.pred)
  local mx = pred_vals[#pred_vals]
  if names and mx > #names - 1 then
    die(string.format("%s: value %d is not a class index 0..%d (%s)", args.pred, mx, #names - 1,
      lm_json_path and ("label map " .. lm_json_path) or ("--labels " .. args.labels)))
  end
  print(string.format("pred:  %s  classes present: %s", args.pred, table.concat(pred_vals, ", ")))
end

local gt
if args.label ~= "" then
  gt = load(args.label, "the ground truth")
  local d = grid_diff(img, gt)
  if d then
    print(string.format("label: %s: %s -> resampled to the image grid (nearest neighbour)", args.label,
      d == "shape" and string.format("shape %s vs image %s", shape_str(gt), shape_str(img)) or d))
    gt = gt:resample_like(img, {mode = "nearest"})
  end
  local vals = int_values(gt, args.label)
  local mx = vals[#vals]
  local remap = lm_explicit or (lm and mx > lm.num_classes - 1)
  if remap then
    local ok, r = pcall(labelmap.remap, gt, lm, args.label)
    if not ok then die(clean(r)) end
    gt = r
    print(string.format("label: %s  raw values -> %d classes (%s)", args.label, lm.num_classes, tostring(lm)))
  else
    if names and mx > #names - 1 then
      die(string.format("%s: value %d is not a class index 0..%d; give --labels to map raw label values", args.label,
        mx, #names - 1))
    end
    if not names and mx > 63 then
      die(string.format("%s: label values up to %d are too many classes to draw; if these are raw label values " ..
        "(e.g. TotalSegmentator's), give --labels SPEC (e.g. vertebrae=26-50,spinal_cord=79) or --label-map",
        args.label, mx))
    end
    if pred_vals and mx > math.max(pred_vals[#pred_vals], 1) and not names then
      print(string.format("note: %s has values up to %d but the prediction only up to %d; if these are raw label " ..
        "values, give --labels (e.g. vertebrae=26-50,spinal_cord=79)", args.label, mx, pred_vals[#pred_vals]))
    end
    local shown = #vals > 16 and (table.concat(vals, ", ", 1, 16) .. ", ...") or table.concat(vals, ", ")
    print(string.format("label: %s  class indices: %s", args.label, shown))
  end
end

-- classes
local K
if names then K = #names
else
  local mx = 1
  if pred_vals then mx = math.max(mx, pred_vals[#pred_vals]) end
  if gt then mx = math.max(mx, gt.data:max():item()) end
  K = math.floor(mx) + 1
  names = {"background"}
  for c = 1, K - 1 do names[c + 1] = "class_" .. c end
end
if K > 64 then die(string.format("%d classes is too many to draw (give --labels to choose classes)", K)) end

-- ---------------------------------------------------------------------------------------- slices
local img_r = img:to_ras()
local pred_r = pred and pred:to_ras() or nil
local gt_r = gt and gt:to_ras() or nil
local sp = img_r.spacing
local n = img_r.shape[axis + 1]
local others = ({{1, 2}, {0, 2}, {0, 1}})[axis + 1]

local slices = {}
if slice_req then
  for _, k in ipairs(slice_req) do
    local kk = k < 0 and k + n or k
    if kk < 0 or kk >= n then
      die(string.format("--slices: index %d is outside 0..%d (%s axis %d of %s in RAS)", k, n - 1, AXIS_NAMES[axis],
        axis, args.image))
    end
    slices[#slices + 1] = kk
  end
else
  local fg
  if gt_r then fg = gt_r.data:gt(0) end
  if pred_r then fg = fg and fg:logical_or(pred_r.data:gt(0)) or pred_r.data:gt(0) end
  local counts = fg:float():sum(others):tolist()
  local cand, nfg = {}, 0
  for k = 0, n - 1 do
    if counts[k + 1] > 0 then
      nfg = nfg + 1
      cand[#cand + 1] = k
    end
  end
  if nfg == 0 then
    slices[1] = n // 2
    print("note: no foreground in the ground truth or the prediction; showing the middle slice")
  else
    table.sort(cand, function(a, b)
      if counts[a + 1] ~= counts[b + 1] then return counts[a + 1] > counts[b + 1] end
      return a < b
    end)
    local gap = math.max(1, nfg // 5)
    for _, k in ipairs(cand) do
      local ok = true
      for _, s in ipairs(slices) do if math.abs(s - k) < gap then ok = false break end end
      if ok then slices[#slices + 1] = k end
      if #slices == 4 then break end
    end
    table.sort(slices)
  end
end

-- ---------------------------------------------------------------------------------------- Dice
-- dice(p, g) for class c: 2|P & G| / (|P| + |G|); nil when the class is in neither
local function dice_counts(p, g, c)
  local pm, gm = p:eq(c), g:eq(c)
  return pm:logical_and(gm):sum():item(), pm:sum():item(), gm:sum():item()
end
local function dice_of(i, ps, gs)
  if ps + gs == 0 then return nil end
  return 2 * i / (ps + gs)
end
local function fmt_dice(d) return d and string.format("%.3f", d) or "n/a" end
local function mean_dice(ds)
  local s, m = 0, 0
  for c = 1, K - 1 do if ds[c] then s, m = s + ds[c], m + 1 end end
  return m > 0 and s / m or nil
end

local dice_rows
if pred and gt then
  dice_rows = {}
  local vol_d = {}
  for c = 1, K - 1 do vol_d[c] = dice_of(dice_counts(pred.data, gt.data, c)) end
  local acc = {}
  for c = 1, K - 1 do acc[c] = {0, 0, 0} end
  local per_slice = {}
  for si, k in ipairs(slices) do
    local ps, gs = pred_r.data:select(axis, k), gt_r.data:select(axis, k)
    local d = {}
    for c = 1, K - 1 do
      local i, a, b = dice_counts(ps, gs, c)
      acc[c][1], acc[c][2], acc[c][3] = acc[c][1] + i, acc[c][2] + a, acc[c][3] + b
      d[c] = dice_of(i, a, b)
    end
    per_slice[si] = d
  end
  local shown = {}
  for c = 1, K - 1 do shown[c] = dice_of(acc[c][1], acc[c][2], acc[c][3]) end
  dice_rows = {volume = vol_d, shown = shown, per_slice = per_slice}
  -- table
  local w = 11
  for c = 2, K do w = math.max(w, #names[c] + 1) end
  local head = string.format("%-16s", "Dice")
  for c = 2, K do head = head .. string.format(" %" .. w .. "s", names[c]) end
  print("\n" .. head .. string.format(" %" .. w .. "s", "mean"))
  local function row(label, ds)
    local s = string.format("%-16s", label)
    for c = 1, K - 1 do s = s .. string.format(" %" .. w .. "s", fmt_dice(ds[c])) end
    print(s .. string.format(" %" .. w .. "s", fmt_dice(mean_dice(ds))))
  end
  for si, k in ipairs(slices) do row(string.format("slice %d", k), per_slice[si]) end
  if #slices > 1 then row("shown slices", shown) end
  row("whole volume", vol_d)
  print("(n/a: the class is in neither the prediction nor the ground truth)")
end

-- ---------------------------------------------------------------------------------------- drawing
local PALETTE = {{230, 25, 75}, {60, 180, 75}, {255, 225, 25}, {0, 130, 200}, {245, 130, 48}, {145, 30, 180},
  {70, 240, 240}, {240, 50, 230}, {210, 245, 60}, {250, 190, 212}, {0, 128, 128}, {220, 190, 255},
  {170, 110, 40}, {255, 250, 200}, {128, 0, 0}, {170, 255, 195}, {128, 128, 0}, {255, 215, 180}, {0, 0, 128}}
local function color_of(c) return PALETTE[(c - 1) % #PALETTE + 1] end

local function flip(t, d)
  local m = t:size(d)
  return t:index_select(d, medlua.arange(m - 1, -1, -1))
end
-- slice k of a RAS tensor [X, Y, Z] oriented for viewing; returns [rows, cols], row and column spacing
local function view_slice(t, k)
  local s = flip(flip(t:select(axis, k):t(), 0), 1)
  return s, sp[others[2] + 1], sp[others[1] + 1]
end
local function fit_size(rows, cols, rsp, csp, box)
  local hmm, wmm = rows * rsp, cols * csp
  local sc = box / math.max(hmm, wmm)
  return math.max(1, math.floor(hmm * sc + 0.5)), math.max(1, math.floor(wmm * sc + 0.5))
end
local function resize(s, h, w, mode)
  local x = s:float():contiguous():view(1, 1, s:size(0), s:size(1))
  return F.interpolate(x, {size = {h, w}, mode = mode}):view(h, w)
end
local function gray_rgb(img01)
  local g = img01 * 255
  return medlua.stack({g, g, g}, 2)
end
local function overlay(rgb, lab, alpha)
  local h, w = lab:size(0), lab:size(1)
  for c = 1, K - 1 do
    local m = lab:eq(c):float()
    if m:sum():item() > 0 then
      local inner = F.max_pool2d((1 - m):view(1, 1, h, w), {kernel_size = 3, stride = 1, padding = 1}):view(h, w)
      local a = (m * alpha + m * inner * (1 - alpha)):unsqueeze(2)
      local col = medlua.tensor(color_of(c)):view(1, 1, 3)
      rgb = rgb + (col - rgb) * a
    end
  end
  return rgb
end
-- the figure is a plot canvas (medlua.plot): text in its 5x9 font, rectangles, pasted image tensors
local text_w, fit_text = plot.text_width, plot.fit_text

-- panels per row
local cols = {{"Image", "image"}}
if gt then cols[#cols + 1] = {"Ground truth", "gt"} end
if pred then cols[#cols + 1] = {"Prediction", "pred"} end
local s0 = view_slice(img_r.data, slices[1])
local ph, pw = fit_size(s0:size(0), s0:size(1), sp[others[2] + 1], sp[others[1] + 1], panel)
local M, GAP = 16, 8
local BLACK, DARK, WHITE = {0, 0, 0}, {40, 40, 40}, {255, 255, 255}
local W = math.max(2 * M + #cols * pw + (#cols - 1) * GAP, 560)
-- legend layout (wrapping)
local legend = {}
do
  local x, y = M, 0
  for c = 1, K - 1 do
    local s = names[c + 1]
    local iw = 20 + text_w(s, 2) + 24
    if x + iw > W - M and x > M then x, y = M, y + 24 end
    legend[#legend + 1] = {x = x, y = y, c = c, s = s}
    x = x + iw
  end
  legend.h = y + 18
end
local title_h, head_h, cap_h = 30, 36, 22
local dice_h = dice_rows and 20 or 0
local H = M + title_h + head_h + #slices * (cap_h + ph + GAP) + 6 + legend.h + dice_h + M
local fig = plot.new_canvas(W, H, WHITE)

local title = (pred and gt) and "Prediction vs ground truth" or (pred and "Prediction" or "Ground truth")
fig:text(fit_text(title .. ": " .. basename(args.image), W - 2 * M, 2), M, M, BLACK, 2)
local y = M + title_h
local x0 = M + (W - 2 * M - (#cols * pw + (#cols - 1) * GAP)) // 2
for i, c in ipairs(cols) do
  local px = x0 + (i - 1) * (pw + GAP)
  fig:text(fit_text(c[1], pw, 2), px, y + 4, BLACK, 2)
  local file = c[2] == "pred" and args.pred or (c[2] == "gt" and args.label or args.image)
  fig:text(fit_text(basename(file), pw, 1), px, y + 24, DARK, 1)
end
y = y + head_h

-- orientation letters at the panel edges: left, right, top, bottom
local EDGES = {[0] = {"A", "P", "S", "I"}, [1] = {"R", "L", "S", "I"}, [2] = {"R", "L", "A", "P"}}
local edges = EDGES[axis]
local lo_w = win[1] - win[2] / 2
for si, k in ipairs(slices) do
  local wx, wy, wz = img_r:world(axis == 0 and k or 0, axis == 1 and k or 0, axis == 2 and k or 0)
  local pos = ({wx, wy, wz})[axis + 1]
  local cap = string.format("%s slice %d/%d (%s = %.1f mm)", AXIS_NAMES[axis], k, n - 1, ({"x", "y", "z"})[axis + 1], pos)
  if dice_rows then
    local parts = {}
    for c = 1, K - 1 do parts[#parts + 1] = names[c + 1] .. " " .. fmt_dice(dice_rows.per_slice[si][c]) end
    cap = cap .. "   Dice: " .. table.concat(parts, ", ")
  end
  fig:text(fit_text(cap, W - 2 * M, 1), M, y + 6, BLACK, 1)
  y = y + cap_h
  local s = view_slice(img_r.data, k)
  local g = ((resize(s, ph, pw, "bilinear") - lo_w) / win[2]):clamp(0, 1)
  local base = gray_rgb(g)
  for i, c in ipairs(cols) do
    local px = x0 + (i - 1) * (pw + GAP)
    local im = base
    if c[2] == "gt" then im = overlay(base, resize(view_slice(gt_r.data, k), ph, pw, "nearest"), args.alpha) end
    if c[2] == "pred" then im = overlay(base, resize(view_slice(pred_r.data, k), ph, pw, "nearest"), args.alpha) end
    fig:paste(im, px, y)
    if i == 1 then
      local yellow = {255, 220, 0}
      fig:text(edges[1], px + 3, y + ph // 2 - 4, yellow, 1)
      fig:text(edges[2], px + pw - 8, y + ph // 2 - 4, yellow, 1)
      fig:text(edges[3], px + pw // 2 - 2, y + 3, yellow, 1)
      fig:text(edges[4], px + pw // 2 - 2, y + ph - 12, yellow, 1)
    end
  end
  y = y + ph + GAP
  collectgarbage()
end
y = y + 6
for _, it in ipairs(legend) do
  local col = color_of(it.c)
  fig:fill_rect(it.x, y + it.y, it.x + 15, y + it.y + 15, col)
  fig:rect(it.x, y + it.y, it.x + 15, y + it.y + 15, DARK)
  fig:text(it.s, it.x + 22, y + it.y + 1, BLACK, 2)
end
y = y + legend.h
if dice_rows then
  local parts = {}
  for c = 1, K - 1 do parts[#parts + 1] = names[c + 1] .. " " .. fmt_dice(dice_rows.volume[c]) end
  local s = string.format("Dice over the whole volume: %s (mean %s); window %g/%g HU", table.concat(parts, ", "),
    fmt_dice(mean_dice(dice_rows.volume)), win[1], win[2])
  fig:text(fit_text(s, W - 2 * M, 1), M, y + 6, BLACK, 1)
end

local out = args.out
if dirname(out) ~= "." and not is_dir(dirname(out)) then
  os.execute("mkdir -p '" .. dirname(out):gsub("'", "'\\''") .. "'")
end
local ok, err = pcall(fig.save_png, fig, out)
if not ok then die(out .. ": " .. clean(err)) end
print(string.format("\nwrote %s (%d x %d px, %s slice%s %s)", out, W, H, AXIS_NAMES[axis], #slices > 1 and "s" or "",
  table.concat(slices, ", ")))
