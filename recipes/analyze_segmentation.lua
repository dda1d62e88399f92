-- analyze_segmentation.lua: evaluate a 2-D multi-label U-Net trained by train_unet2d.lua on test subjects
-- (the seed's segmentation_detection_analysis notebook, as a recipe). For every subject: inference on the
-- whole CT slice by slice (batched, medlua.totalseg.predict_volume), the thresholded masks reassembled in
-- the CT's own geometry, per-structure metrics with TotalSegmentator's conventions, figures and 3-D meshes.
--
--   medlua recipes/analyze_segmentation.lua --run out/unet2d --data /data/totalseg --subjects s0001,s0002
--   medlua recipes/analyze_segmentation.lua --run out/unet2d --image data/samples/example_ct_dicom \
--       --label data/samples/example_seg_dicom.nii.gz --label-table data/samples/labels_total.tsv
--
-- RUN holds config.json ({model = {type = "UNet2D", ...}, structures = {...}, label_values = {...}, axis,
-- target_shape, window or clip + normalize, threshold}), label_map.json and best.safetensors (or
-- --checkpoint). Subjects come from a TotalSegmentator-layout root (ROOT/sXXXX/ct.nii.gz +
-- ROOT/sXXXX/segmentations/<structure>.nii.gz) or from CTs (NIfTI or DICOM folders) with multi-label maps
-- and a label table ('value<TAB>name', e.g. labels_total.tsv); masks in another axis order than their CT
-- (e.g. a LAS NIfTI of an LPS DICOM series) are permuted onto the CT grid, other grids are an error.
--
-- Metrics per subject and structure (medlua.metrics, in mm with the CT's spacing): Dice, IoU, HD95 and
-- normalized surface Dice at --tolerance mm (3). As TotalSegmentator's evaluate.py: NaN when the
-- structure is absent from the ground truth (a prediction there counts as a false positive in the CSV's
-- pred_ml, not in the scores); Dice, IoU and NSD are 0 when it is present but not predicted (HD95 is then
-- undefined: NaN, and the row's detected column is 0). Success at Dice >= 0.5 / 0.7 / 0.9 and the volume
-- error (prediction - ground truth, mL) per row; their rates and means per structure.
--
-- Outputs in --out (written into a temporary folder first and moved in at the end: a failed run leaves
-- nothing half-written):
--   evaluation_results_<name>.csv       one row per subject and structure
--   structure_summary_<name>.csv        per structure: means, success rates, volume errors
--   metrics_distribution_<name>.png     histograms and box plots of Dice / IoU / NSD / HD95 / volume error
--   structure_ranking_<name>.png        structures by mean Dice (+- sd), success rates at 0.5/0.7/0.9
--   segmentation_visualization_<name>.png   CT | ground truth | prediction | errors, several slices
--   predictions/<subject>_seg.nii.gz    the multi-label prediction (TotalSegmentator label values) in the
--                                       CT's geometry; --masks adds predictions/<subject>/<structure>.nii.gz
--   3d_<subject>.html / .gltf           predicted and ground-truth meshes (marching cubes, world mm, RAS+),
--   3d_<subject>/*.ply                  one colour per structure; the page opens offline, with toggles
local medlua = require "medlua"
local cli = require "medlua.cli"
local path = require "medlua.path"
local volume = require "medlua.volume"
local labelmap = require "medlua.labelmap"
local metrics = require "medlua.metrics"
local json = require "medlua.json"
local plot = require "medlua.plot"
local F = medlua.F

local args = cli.parse(arg, {
  description = "Evaluate a 2-D multi-label U-Net run on test subjects: masks as NIfTI, per-structure Dice / IoU / "
    .. "HD95 / NSD, a CSV, figures and 3-D meshes.",
  {"--run", "", "training run folder with config.json, label_map.json, best.safetensors (required)"},
  {"--checkpoint", "", "weights file ('' = RUN/best.safetensors)"},
  {"--data", "", "TotalSegmentator-layout root: ROOT/<subject>/ct.nii.gz + segmentations/<structure>.nii.gz"},
  {"--subjects", "", "subjects of --data, comma-separated ('' = every folder in ROOT)"},
  {"--image", "", "CT(s) (NIfTI file or DICOM folder), comma-separated, instead of --data"},
  {"--label", "", "multi-label ground truth map(s) of --image, same order"},
  {"--label-table", "", "label table 'value<TAB>name' of --label ('' = labels_total.tsv next to it)"},
  {"--structures", "", "evaluate only these of the run's structures, comma-separated ('' = all)"},
  {"--name", "", "run name in the output file names ('' = the run folder's name)"},
  {"--out", "", "output folder ('' = RUN/analysis)"},
  {"--threshold", -1.0, "probability threshold (-1: config.json's, else 0.5)"},
  {"--batch-size", 16, "slices per forward pass"},
  {"--prob-memory", 2.0, "GB of probabilities held at once (more structures than fit: several inference passes)"},
  {"--tolerance", 3.0, "surface Dice tolerance in mm"},
  {"--masks", false, "also write one binary NIfTI per predicted structure"},
  {"--vis-subjects", 2, "subjects shown in segmentation_visualization"},
  {"--vis-slices", 3, "axial slices per subject in segmentation_visualization"},
  {"--panel", 256, "panel size in pixels in segmentation_visualization"},
  {"--window", "soft", "CT window of the pictures: soft | bone | lung | C,W (HU)"},
  {"--meshes", true, "write 3d_<subject>.html/.gltf and PLY meshes (--no-meshes: skip)"},
  {"--mesh-smooth", 10, "Taubin smoothing iterations of the meshes"},
  {"--threads", 0, "compute threads (0 = all cores)"},
})
if args.threads > 0 then medlua.threads(math.tointeger(args.threads)) end

local PROG = "analyze_segmentation"
local function clean(msg) return cli.clean(msg, true) end
local function die(msg) cli.die(PROG, msg, true) end
local NAN = 0 / 0
local okt, totalseg = pcall(require, "medlua.totalseg")
if not okt then die("medlua.totalseg is not available: " .. clean(totalseg)) end
local function ts_msg(e) return (clean(e):gsub("^totalseg: ", "")) end
local function finite(x) return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge end
-- per-structure summaries by mean Dice, best first (no Dice last), then by name
local function ranked(summ)
  local sorted = {}
  for _, b in ipairs(summ) do sorted[#sorted + 1] = b end
  table.sort(sorted, function(a, b)
    local fa, fb = finite(a.dice_mean), finite(b.dice_mean)
    if fa ~= fb then return fa end
    if fa and a.dice_mean ~= b.dice_mean then return a.dice_mean > b.dice_mean end
    return a.name < b.name
  end)
  return sorted
end

-- ---------------------------------------------------------------------------------------- files
local dirname, basename, join, exists, is_dir = path.dirname, path.basename, path.join, path.exists, path.is_dir
local function q(p) return "'" .. p:gsub("'", "'\\''") .. "'" end
local split = cli.split

-- ---------------------------------------------------------------------------------------- options
if args.run == "" then die("--run RUN is required (a training run folder with config.json and best.safetensors)") end
if (args.data ~= "") == (args.image ~= "") then
  die("give either --data ROOT (TotalSegmentator layout) or --image CT --label MAP (see --help)")
end
if args.image ~= "" and args.label == "" then die("--image needs --label (the multi-label ground truth map)") end
if args.data == "" and args.subjects ~= "" then die("--subjects selects folders of --data") end
local WINDOWS = {soft = {40, 400}, bone = {300, 1500}, lung = {-600, 1500}, brain = {40, 80}}
local win = WINDOWS[args.window]
if not win then
  local c, w = args.window:match("^%s*(%-?[%d%.]+)%s*,%s*([%d%.]+)%s*$")
  c, w = tonumber(c), tonumber(w)
  if not c or not w or w <= 0 then die("--window must be soft, bone, lung, brain or CENTER,WIDTH (got '" .. args.window .. "')") end
  win = {c, w}
end
local batch_size = math.tointeger(args.batch_size)
if not batch_size or batch_size < 1 then die("--batch-size must be a positive integer") end
if not (args.tolerance >= 0) then die("--tolerance must be >= 0 mm") end
local panel = math.tointeger(args.panel)
if not panel or panel < 64 or panel > 1024 then die("--panel must be an integer between 64 and 1024") end
local vis_subjects, vis_slices = math.tointeger(args.vis_subjects), math.tointeger(args.vis_slices)
if not vis_subjects or vis_subjects < 0 or not vis_slices or vis_slices < 1 or vis_slices > 12 then
  die("--vis-subjects must be an integer >= 0 and --vis-slices one in 1..12")
end
if not (args.prob_memory > 0) then die("--prob-memory must be > 0 (GB)") end
local smooth_iters = math.tointeger(args.mesh_smooth)
if not smooth_iters or smooth_iters < 0 then die("--mesh-smooth must be an integer >= 0") end

-- ---------------------------------------------------------------------------------------- the run
local run = args.run:gsub("/+$", "")
if not is_dir(run) then die(run .. ": no such run folder (--run)") end
local cfg_path = join(run, "config.json")
if not exists(cfg_path) then die(cfg_path .. ": no such file (the run's config, written by train_unet2d.lua)") end
local ok, cfg = pcall(json.read, cfg_path)
if not ok then die(cfg_path .. ": " .. clean(cfg):gsub("^json%.read: ", "")) end
if type(cfg) ~= "table" then die(cfg_path .. ": expected a JSON object") end
local function cfg_fail(fmt, ...) die(cfg_path .. ": " .. string.format(fmt, ...)) end
if type(cfg.model) ~= "table" then cfg_fail("no 'model' object") end
if type(cfg.structures) ~= "table" or #cfg.structures == 0 then cfg_fail("'structures' must be a non-empty list of names") end
for i, s in ipairs(cfg.structures) do
  if type(s) ~= "string" or s == "" then cfg_fail("structures[%d] is not a name", i) end
end
local K_all = #cfg.structures
if cfg.model.out_channels ~= K_all then
  cfg_fail("model.out_channels is %s but %d structures are listed", tostring(cfg.model.out_channels), K_all)
end
if cfg.label_values ~= nil then
  if type(cfg.label_values) ~= "table" or #cfg.label_values ~= K_all then
    cfg_fail("'label_values' must list one label value per structure (%d)", K_all)
  end
  for i, v in ipairs(cfg.label_values) do
    if math.type(v) ~= "integer" or v < 1 or v > 65535 then cfg_fail("label_values[%d] = %s is not a label value 1..65535", i, tostring(v)) end
  end
end
if cfg.model.type ~= nil and cfg.model.type ~= "UNet2D" then
  cfg_fail("model.type '%s' is not supported here (UNet2D)", tostring(cfg.model.type))
end
local threshold = args.threshold >= 0 and args.threshold or (type(cfg.threshold) == "number" and cfg.threshold or 0.5)
if not (threshold > 0 and threshold < 1) then die(string.format("the threshold must be in (0, 1), got %g", threshold)) end
local run_name = args.name ~= "" and args.name or basename(run)
if run_name:find("[/%c]") then die("--name must not contain '/' or control characters") end
local out_dir = (args.out ~= "" and args.out or join(run, "analysis")):gsub("/+$", "")
if exists(out_dir) and not is_dir(out_dir) then die(out_dir .. ": exists and is not a folder (--out)") end

-- label_map.json: when present, its structures must be the config's ({structures = {{name, channel (0-based),
-- value}, ...}} as train_unet2d.lua writes it, or a list of names)
do
  local lp = join(run, "label_map.json")
  if exists(lp) then
    local ok2, lmj = pcall(json.read, lp)
    if not ok2 then die(lp .. ": " .. clean(lmj):gsub("^json%.read: ", "")) end
    local list = type(lmj) == "table" and (lmj.structures or lmj.names or (#lmj > 0 and lmj)) or nil
    if type(list) ~= "table" then die(lp .. ": expected {structures = [{name, channel, value}, ...]}") end
    for i, e in ipairs(list) do
      local name, ch, val = e, i, nil
      if type(e) == "table" then
        name, val = e.name, e.value
        if e.channel ~= nil then ch = (math.tointeger(e.channel) or -1) + 1 end
      end
      if cfg.structures[ch] ~= name then
        die(string.format("%s: channel %d is '%s' but %s says '%s'", lp, ch - 1, tostring(name), cfg_path,
          tostring(cfg.structures[ch])))
      end
      if val ~= nil and cfg.label_values and cfg.label_values[ch] ~= val then
        die(string.format("%s: '%s' has label value %s but %s says %s", lp, name, tostring(val), cfg_path,
          tostring(cfg.label_values[ch])))
      end
    end
    if #list ~= K_all then
      die(string.format("%s lists %d structures but %s has %d", lp, #list, cfg_path, K_all))
    end
  end
end

-- structures to evaluate: {name, channel (1-based), value}
local structures = {}
do
  local chan_of = {}
  for i, s in ipairs(cfg.structures) do chan_of[s] = i end
  local wanted = args.structures ~= "" and split(args.structures) or cfg.structures
  local seen = {}
  for _, s in ipairs(wanted) do
    if not chan_of[s] then
      die(string.format("unknown structure '%s' (--structures): not one of the %d structures of %s; close names: %s", s,
        #cfg.structures, cfg_path, table.concat(totalseg.close_names(s, cfg.structures, 5), ", ")))
    end
    if seen[s] then die("structure '" .. s .. "' is given twice (--structures)") end
    seen[s] = true
    local c = chan_of[s]
    structures[#structures + 1] = {name = s, channel = c, value = cfg.label_values and cfg.label_values[c] or c}
  end
end
local K = #structures

-- ---------------------------------------------------------------------------------------- subjects

-- the grid of a NIfTI file from its header (no voxels read)
local function header_grid(path)
  local okh, h = pcall(medlua._volume.nifti_header, path)
  if not okh then return nil, clean(h) end
  local d = h.dim
  if d[1] < 3 or (d[1] > 3 and d[5] > 1) then return nil, string.format("expected a 3-D volume, got %d dimensions", d[1]) end
  return {shape = {d[2], d[3], d[4]}, affine = h.affine}
end
local function affine_list(a) return a:double():tolist() end

local subjects = {}
if args.data ~= "" then
  local root = args.data:gsub("/+$", "")
  if not is_dir(root) then die(root .. ": no such folder (--data)") end
  local names = split(args.subjects)
  if #names == 0 then
    local okl, list = pcall(medlua._data.listdir, root)
    if not okl then die(root .. ": " .. clean(list)) end
    table.sort(list)
    for _, n in ipairs(list) do -- every folder is a subject (as totalseg.list_subjects)
      if n:sub(1, 1) ~= "." and is_dir(join(root, n)) then names[#names + 1] = n end
    end
    if #names == 0 then die(root .. ": no subject folders (expected ROOT/<subject>/ct.nii.gz + segmentations/)") end
  end
  for _, n in ipairs(names) do
    local sdir = join(root, n)
    if not is_dir(sdir) then die(sdir .. ": no such subject folder (--subjects " .. n .. ")") end
    local ct = join(sdir, "ct.nii.gz")
    if not exists(ct) then die(ct .. ": no such file (subject " .. n .. " has no CT)") end
    local masks = {}
    for _, st in ipairs(structures) do
      local m = join(join(sdir, "segmentations"), st.name .. ".nii.gz")
      if not exists(m) then
        die(string.format("%s: no such file (subject %s has no mask of structure '%s')", m, n, st.name))
      end
      masks[#masks + 1] = m
    end
    subjects[#subjects + 1] = {name = n, dir = sdir, ct = ct, masks = masks}
  end
else
  local imgs, labs = split(args.image), split(args.label)
  if #imgs ~= #labs then die(string.format("%d --image but %d --label entries (one ground truth map per CT)", #imgs, #labs)) end
  local table_path = args.label_table ~= "" and args.label_table or join(dirname(labs[1]), "labels_total.tsv")
  if not exists(table_path) then
    die(table_path .. ": no such file (--label-table: the 'value<TAB>name' table of the label map)")
  end
  local okr, tbl = pcall(totalseg.read_table, table_path)
  if not okr then die(ts_msg(tbl)) end
  for _, st in ipairs(structures) do
    local v = tbl.by_name[st.name]
    if not v then
      die(string.format("unknown structure name '%s' (of %s): not in the label table %s; close names: %s", st.name,
        cfg_path, table_path, table.concat(totalseg.close_names(st.name, tbl.names, 5), ", ")))
    end
    if cfg.label_values and v ~= st.value then
      print(string.format("note: %s has value %d in %s but %d in %s; the ground truth is read with the table's",
        st.name, v, table_path, st.value, cfg_path))
    end
    st.gt_value = v
  end
  local used = {}
  for i, ct in ipairs(imgs) do
    if not exists(ct) then die(ct .. ": no such file or folder (--image)") end
    if not exists(labs[i]) then die(labs[i] .. ": no such file (--label)") end
    local n = basename(ct):gsub("%.nii%.gz$", ""):gsub("%.nii$", "")
    if used[n] then n = n .. "_" .. i end
    used[n] = true
    subjects[#subjects + 1] = {name = n, ct = ct, label = labs[i]}
  end
end
for _, s in ipairs(subjects) do
  if s.name:find("[/%c]") then die("subject name '" .. s.name .. "' cannot name files") end
end

-- every grid before any inference or output: NIfTI CTs and masks by their headers; a DICOM CT is read
-- and matched to its label map slice by slice position (totalseg.align_series), kept for later
for _, s in ipairs(subjects) do
  local kind, why = volume.detect(s.ct)
  if not kind then die(why) end
  if kind ~= "nifti" and s.masks then die(s.ct .. ": the CT of a TotalSegmentator subject must be NIfTI") end
  if kind ~= "nifti" then
    local oka, ct, lab = pcall(totalseg.align_series, s.ct, s.label)
    if not oka then die(ts_msg(ct)) end
    s.loaded = {ct = ct, label = lab.data}
  else
    local g, err = header_grid(s.ct)
    if not g then die(s.ct .. ": " .. err) end
    for _, m in ipairs(s.masks or {s.label}) do
      if volume.detect(m) ~= "nifti" then die(m .. ": a mask must be a NIfTI file") end
      local mg, merr = header_grid(m)
      if not mg then die(m .. ": " .. merr) end
      local map, why2 = totalseg.grid_map(g.affine, g.shape, mg.affine, mg.shape)
      if not map then
        die(string.format("%s: the mask's grid (%s) does not match its CT %s (%s): %s", m,
          totalseg._geom_str(mg.shape, affine_list(mg.affine)), s.ct, totalseg._geom_str(g.shape, affine_list(g.affine)),
          why2))
      end
    end
  end
end

-- ---------------------------------------------------------------------------------------- the model
local okr, nets = pcall(require, "medlua.nets")
if not okr then die("medlua.nets is not available: " .. clean(nets)) end
local train = require "medlua.train"
local ckpt = args.checkpoint ~= "" and args.checkpoint or join(run, "best.safetensors")
if not exists(ckpt) then die(ckpt .. ": no such checkpoint" .. (args.checkpoint == "" and " (--checkpoint)" or "")) end
local okn, net = pcall(nets.UNet2D, cfg.model)
if not okn then die(cfg_path .. ": model: " .. clean(net)) end
do
  local okw, err = pcall(train.load_model, net, ckpt, true)
  if not okw then
    local msg = tostring(err):gsub("^[^:\n]*%.lua:%d+: ", ""):gsub("\n%s*", "; ")
    die(string.format("%s: cannot load the checkpoint into %s's model: %s", ckpt, cfg_path, msg))
  end
end
net:eval()
print(string.format("run %s: %d structures (%d evaluated), threshold %g, checkpoint %s", run, K_all, K, threshold, ckpt))
print(string.format("%d subject%s: %s", #subjects, #subjects == 1 and "" or "s",
  #subjects <= 8 and (function() local t = {} for i, s in ipairs(subjects) do t[i] = s.name end return table.concat(t, ", ") end)()
  or (#subjects .. " subjects")))

-- ---------------------------------------------------------------------------------------- output staging
-- Everything is written into a temporary sibling of --out and moved into it at the end.
local out_parent = dirname(out_dir)
local made_parent = false
if not is_dir(out_parent) then
  os.execute("mkdir -p " .. q(out_parent))
  if not is_dir(out_parent) then die(out_parent .. ": cannot create the folder (--out)") end
  made_parent = true
end
local tmp = join(out_parent, string.format(".%s.tmp%d%04d", basename(out_dir), os.time(), math.random(0, 9999)))
os.execute("mkdir -p " .. q(tmp))
if not is_dir(tmp) then die(tmp .. ": cannot create a temporary folder next to --out") end
local function abort(msg)
  os.execute("rm -rf " .. q(tmp))
  if made_parent then os.execute("rmdir " .. q(out_parent) .. " 2>/dev/null") end
  die(msg)
end

-- ---------------------------------------------------------------------------------------- pictures
local PALETTE = {{230, 25, 75}, {60, 180, 75}, {255, 225, 25}, {0, 130, 200}, {245, 130, 48}, {145, 30, 180},
  {70, 240, 240}, {240, 50, 230}, {210, 245, 60}, {250, 190, 212}, {0, 128, 128}, {220, 190, 255},
  {170, 110, 40}, {255, 250, 200}, {128, 0, 0}, {170, 255, 195}, {128, 128, 0}, {255, 215, 180}, {0, 0, 128},
  {128, 128, 128}}
local function color_of(k) return PALETTE[(k - 1) % #PALETTE + 1] end

local function flip(t, d) return t:index_select(d, medlua.arange(t:size(d) - 1, -1, -1)) end
-- axial slice z of a RAS tensor [X, Y, Z] as seen by a radiologist: patient's right on the left, anterior up
local function axial(t, z) return flip(flip(t:select(2, z):t(), 0), 1) end
local function resize(s, h, w, mode)
  local x = s:float():contiguous():view(1, 1, s:size(0), s:size(1))
  return F.interpolate(x, {size = {h, w}, mode = mode}):view(h, w)
end
local function gray_rgb(g01)
  local g = g01 * 255
  return medlua.stack({g, g, g}, 2)
end
-- structure indices [h, w] (0 = none) alpha-blended over rgb, each structure with an opaque outline
local function overlay(rgb, lab, alpha)
  local h, w = lab:size(0), lab:size(1)
  local present = labelmap.values(lab) or {}
  for _, k in ipairs(present) do
    if k > 0 then
      local m = lab:eq(k):float()
      local inner = F.max_pool2d((1 - m):view(1, 1, h, w), {kernel_size = 3, stride = 1, padding = 1}):view(h, w)
      local a = (m * alpha + m * inner * (1 - alpha)):unsqueeze(2)
      rgb = rgb + (medlua.tensor(color_of(k)):view(1, 1, 3) - rgb) * a
    end
  end
  return rgb
end
-- over a dimmed CT: right structure, false positive (nothing there in the GT), false negative (nothing
-- predicted), wrong structure (both, but not the same one)
local ERR_COLORS = {{"right structure", {40, 200, 70}}, {"false positive", {235, 40, 40}},
  {"false negative (missed)", {40, 110, 255}}, {"wrong structure", {255, 200, 0}}}
local function error_map(rgb, gt, pr)
  local g, p = gt:gt(0), pr:gt(0)
  local same = gt:eq(pr)
  local masks = {g:logical_and(same), p:logical_and(g:logical_not()), g:logical_and(p:logical_not()),
    g:logical_and(p):logical_and(same:logical_not())}
  local out = rgb * 0.6
  for i, m in ipairs(masks) do
    out = out + (medlua.tensor(ERR_COLORS[i][2]):view(1, 1, 3) - out) * m:float():unsqueeze(2) * 0.8
  end
  return out
end

-- ---------------------------------------------------------------------------------------- per subject
local function fmt_num(v, f)
  if v ~= v then return "NaN" end
  if v == math.huge then return "inf" end
  return string.format(f or "%.6f", v)
end

local rows = {}         -- one per subject and structure
local vis = {}          -- slices kept for the figure
local mesh_mod
local t_infer, t_metrics, t_mesh = 0, 0, 0

local function process(si, s)
  local t0 = medlua.clock()
  -- the CT and its ground truth on the CT's voxel grid
  local ct, gt_of
  if s.masks then
    local names = {}
    for k, st in ipairs(structures) do names[k] = st.name end
    local okl, subj = pcall(totalseg.load_subject, s.dir, names)
    if not okl then error(ts_msg(subj), 0) end
    ct = subj.ct
    gt_of = function(k) -- structure k: in any of the layers (structures may overlap)
      local m
      for _, L in ipairs(subj.layers) do m = m and m:logical_or(L:eq(k)) or L:eq(k) end
      return m or medlua.zeros(ct.shape, {dtype = "bool"})
    end
  else
    local lab
    if s.loaded then
      ct, lab = s.loaded.ct, s.loaded.label
      s.loaded = nil
    else
      local okc, v = pcall(totalseg.load_volume, s.ct, "the CT")
      if not okc then error(ts_msg(v), 0) end
      ct = v
      if ct.ndim ~= 3 then error(string.format("%s: expected a 3-D CT, got shape %s", s.ct, table.concat(ct.shape, "x")), 0) end
      local okm, lv = pcall(totalseg.load_volume, s.label, "the label map")
      if not okm then error(ts_msg(lv), 0) end
      local okg, t = pcall(totalseg.match_grid, ct, lv, s.label, s.ct)
      if not okg then error(ts_msg(t), 0) end
      lab = t
    end
    gt_of = function(k) return lab:eq(structures[k].gt_value) end
  end
  local sp = ct.spacing
  local vox_ml = sp[1] * sp[2] * sp[3] / 1000
  io.write(string.format("[%d/%d] %s  %s  spacing (%.3g, %.3g, %.3g) mm: inference", si, #subjects, s.name,
    table.concat(ct.shape, "x"), sp[1], sp[2], sp[3]))
  io.flush()
  -- probabilities of at most --prob-memory GB at a time: structures in chunks (each one inference pass)
  local nvox = ct.shape[1] * ct.shape[2] * ct.shape[3]
  local chunk = math.max(1, math.min(K, math.floor(args.prob_memory * 2 ^ 30 / (4 * nvox))))
  local probs, c0
  local function predict(k0)
    local chans = {}
    for k = k0, math.min(K, k0 + chunk - 1) do chans[#chans + 1] = structures[k].channel end
    local tp = medlua.clock()
    probs = nil
    collectgarbage()
    local okp, pr = pcall(totalseg.predict_volume, net, ct, cfg, {batch_size = batch_size, channels = chans})
    if not okp then error(s.ct .. ": inference failed: " .. ts_msg(pr), 0) end
    if not medlua.is_tensor(pr) or pr:dim() ~= 4 or pr:size(0) ~= #chans or pr:size(1) ~= ct.shape[1] or
      pr:size(2) ~= ct.shape[2] or pr:size(3) ~= ct.shape[3] then
      error(string.format("totalseg.predict_volume returned %s, expected [%d, %s] probabilities on the CT grid",
        medlua.is_tensor(pr) and ("[" .. table.concat(pr:size(), ", ") .. "]") or type(pr), #chans,
        table.concat(ct.shape, ", ")), 0)
    end
    probs, c0 = pr, k0
    t_infer = t_infer + (medlua.clock() - tp)
  end
  predict(1)
  local t1 = medlua.clock()
  local t_infer_1 = t_infer
  io.write(string.format(" %.1f s%s, metrics", t1 - t0, chunk < K and string.format(" (pass 1 of %d, %d structure%s "
    .. "each: --prob-memory)", (K + chunk - 1) // chunk, chunk, chunk == 1 and "" or "s") or ""))
  io.flush()
  local idx_dtype = K <= 255 and "uint8" or "int32"
  -- the multi-label prediction: at each voxel the most probable structure above the threshold
  local best_p = medlua.zeros(ct.shape, {dtype = "float32"})
  local pred_idx = medlua.zeros(ct.shape, {dtype = idx_dtype})
  local gt_idx = medlua.zeros(ct.shape, {dtype = idx_dtype})
  local pred_dir = join(tmp, "predictions")
  os.execute("mkdir -p " .. q(pred_dir) .. (args.masks and (" " .. q(join(pred_dir, s.name))) or ""))
  local meshes_pred, meshes_gt = {}, {}
  for k, st in ipairs(structures) do
    if k >= c0 + chunk then predict(k) end
    local p = probs:select(0, k - c0)
    local pm = p:gt(threshold)
    local g = gt_of(k)
    local upd = pm:logical_and(p:gt(best_p))
    best_p = medlua.where(upd, p, best_p)
    pred_idx = medlua.where(upd, k, pred_idx)
    gt_idx = medlua.where(g, k, gt_idx)
    local pb, gb = pm:byte(), g:byte()
    local pn, gn = pb:sum():item(), gb:sum():item()
    local r = {subject = s.name, structure = st.name, value = st.value, gt_voxels = gn, pred_voxels = pn,
      gt_ml = gn * vox_ml, pred_ml = pn * vox_ml}
    r.volume_error_ml = r.pred_ml - r.gt_ml
    if gn == 0 then -- not in the ground truth: no score (TotalSegmentator's convention)
      r.dice, r.iou, r.hd95, r.nsd = NAN, NAN, NAN, NAN
      r.volume_error_ml = NAN
    elseif pn == 0 then -- present but missed
      r.dice, r.iou, r.nsd, r.hd95 = 0, 0, 0, NAN
    else
      r.dice = metrics.dice(pb, gb):item()
      r.iou = metrics.iou(pb, gb):item()
      r.hd95 = metrics.hausdorff95(pb, gb, {spacing = sp}):item()
      r.nsd = metrics.surface_dice(pb, gb, {spacing = sp, tolerance_mm = args.tolerance}):item()
    end
    r.gt_present, r.detected = gn > 0, gn > 0 and pn > 0
    rows[#rows + 1] = r
    if args.masks and pn > 0 then -- a binary mask per predicted structure (TotalSegmentator's layout)
      local mv = ct:with_data(pb)
      mv.is_label = true
      mv:save(join(join(pred_dir, s.name), st.name .. ".nii.gz"))
    end
    if args.meshes then
      local tm = medlua.clock()
      mesh_mod = mesh_mod or require("medlua.mesh")
      local mopt = {label = 1, taubin_iters = smooth_iters, allow_missing = true}
      if pn > 0 then
        local m = ct:with_data(pb):mesh(mopt)
        if m.faces:size(0) > 0 then meshes_pred[#meshes_pred + 1] = {name = st.name, color = color_of(k), mesh = m} end
      end
      if gn > 0 then
        local m = ct:with_data(gb):mesh(mopt)
        if m.faces:size(0) > 0 then meshes_gt[#meshes_gt + 1] = {name = st.name, color = color_of(k), mesh = m} end
      end
      t_mesh = t_mesh + medlua.clock() - tm
    end
  end
  probs, best_p, gt_of = nil, nil, nil
  -- NIfTI outputs in the CT's geometry: structure indices -> TotalSegmentator label values
  local maxv = 0
  for _, st in ipairs(structures) do maxv = math.max(maxv, st.value) end
  local lab = medlua.zeros(ct.shape, {dtype = maxv <= 255 and "uint8" or "int32"})
  for k, st in ipairs(structures) do lab = medlua.where(pred_idx:eq(k), st.value, lab) end
  local seg = ct:with_data(lab)
  seg.is_label = true
  seg:save(join(pred_dir, s.name .. "_seg.nii.gz"))
  -- meshes
  if args.meshes then
    local tm = medlua.clock()
    local base = "3d_" .. s.name
    local title = string.format("%s: prediction vs ground truth (run %s)", s.name, run_name)
    mesh_mod.write_html(join(tmp, base .. ".html"), {title = title, groups = {
      {name = "prediction", meshes = meshes_pred}, {name = "ground truth", meshes = meshes_gt}}})
    local items = {}
    for _, m in ipairs(meshes_pred) do items[#items + 1] = {name = "prediction/" .. m.name, color = m.color, mesh = m.mesh} end
    for _, m in ipairs(meshes_gt) do items[#items + 1] = {name = "ground_truth/" .. m.name, color = m.color, mesh = m.mesh} end
    mesh_mod.write_gltf(join(tmp, base .. ".gltf"), items, {name = s.name})
    if #items > 0 then
      os.execute("mkdir -p " .. q(join(tmp, base)))
      for _, m in ipairs(meshes_pred) do mesh_mod.write_ply(join(join(tmp, base), "prediction_" .. m.name .. ".ply"), m.mesh, {color = m.color}) end
      for _, m in ipairs(meshes_gt) do mesh_mod.write_ply(join(join(tmp, base), "ground_truth_" .. m.name .. ".ply"), m.mesh, {color = m.color}) end
    end
    t_mesh = t_mesh + medlua.clock() - tm
  end
  -- slices for the figure: spread over the ground truth's axial extent
  if si <= vis_subjects then
    local ras = ct:to_ras()
    local gr = ct:with_data(gt_idx):to_ras().data
    local pr = ct:with_data(pred_idx):to_ras().data
    local nz = gr:size(2)
    local counts = gr:gt(0):float():sum({0, 1}):tolist()
    local zs = {}
    for z = 0, nz - 1 do if counts[z + 1] > 0 then zs[#zs + 1] = z end end
    if #zs == 0 then for z = 0, nz - 1 do zs[#zs + 1] = z end end
    local chosen, seen = {}, {}
    local n = math.min(vis_slices, #zs)
    for i = 1, n do
      local z = zs[math.floor((i - 0.5) / n * #zs) + 1]
      if not seen[z] then seen[z] = true; chosen[#chosen + 1] = z end
    end
    local rsp = ras.spacing
    local ct_t = ras.data
    for _, z in ipairs(chosen) do
      local g, p = axial(gr, z), axial(pr, z)
      -- per-structure Dice on this slice (structures in the GT slice)
      local parts = {}
      for k = 1, K do
        local gm, pm = g:eq(k), p:eq(k)
        local gn = gm:sum():item()
        if gn > 0 then
          local pn, i = pm:sum():item(), gm:logical_and(pm):sum():item()
          parts[#parts + 1] = {k = k, dice = 2 * i / (gn + pn)}
        end
      end
      local _, _, zw = ras:world(0, 0, z)
      vis[#vis + 1] = {subject = s.name, z = z, nz = nz, zmm = zw, ct = axial(ct_t, z):float(), gt = g:contiguous(),
        pred = p:contiguous(), rsp = rsp[2], csp = rsp[1], dice = parts}
    end
  end
  local t2 = medlua.clock()
  t_metrics = t_metrics + (t2 - t1) - (t_infer - t_infer_1)
  local present, s_d, n_d = 0, 0, 0
  for i = #rows - K + 1, #rows do
    local r = rows[i]
    if r.gt_present then present = present + 1; s_d = s_d + r.dice; n_d = n_d + 1 end
  end
  print(string.format(" %.1f s; %d/%d structures in the ground truth, mean Dice %s", t2 - t1 - (t_infer - t_infer_1),
    present, K, n_d > 0 and string.format("%.4f", s_d / n_d) or "n/a"))
  collectgarbage()
end

-- ---------------------------------------------------------------------------------------- summaries
local THRESHOLDS = {0.5, 0.7, 0.9}
local function mean_sd(list)
  local s, n = 0, 0
  for _, v in ipairs(list) do if finite(v) then s, n = s + v, n + 1 end end
  if n == 0 then return NAN, NAN, 0 end
  local m = s / n
  local ss = 0
  for _, v in ipairs(list) do if finite(v) then ss = ss + (v - m) ^ 2 end end
  return m, n > 1 and math.sqrt(ss / (n - 1)) or NAN, n
end
local function median(list)
  local v = {}
  for _, x in ipairs(list) do if finite(x) then v[#v + 1] = x end end
  if #v == 0 then return NAN end
  table.sort(v)
  return plot.quantile_sorted(v, 0.5)
end

local function summarize()
  local by = {}
  for _, st in ipairs(structures) do by[st.name] = {name = st.name, value = st.value, dice = {}, iou = {}, hd95 = {}, nsd = {},
    vol = {}, absvol = {}, present = 0, detected = 0, fp = 0} end
  for _, r in ipairs(rows) do
    local b = by[r.structure]
    if r.gt_present then
      b.present = b.present + 1
      if r.detected then b.detected = b.detected + 1 end
      b.dice[#b.dice + 1] = r.dice; b.iou[#b.iou + 1] = r.iou; b.hd95[#b.hd95 + 1] = r.hd95; b.nsd[#b.nsd + 1] = r.nsd
      b.vol[#b.vol + 1] = r.volume_error_ml; b.absvol[#b.absvol + 1] = math.abs(r.volume_error_ml)
    elseif r.pred_voxels > 0 then
      b.fp = b.fp + 1
    end
  end
  local out = {}
  for _, st in ipairs(structures) do
    local b = by[st.name]
    b.dice_mean, b.dice_sd = mean_sd(b.dice)
    b.dice_median = median(b.dice)
    b.iou_mean = mean_sd(b.iou)
    b.hd95_mean = mean_sd(b.hd95)
    b.nsd_mean = mean_sd(b.nsd)
    b.vol_mean = mean_sd(b.vol)
    b.absvol_mean = mean_sd(b.absvol)
    b.success = {}
    for i, t in ipairs(THRESHOLDS) do
      local c = 0
      for _, d in ipairs(b.dice) do if d >= t then c = c + 1 end end
      b.success[i] = b.present > 0 and c / b.present or NAN
    end
    out[#out + 1] = b
  end
  return out
end

local function write_text(path, text)
  local f, err = io.open(path, "w")
  if not f then error(path .. ": " .. tostring(err), 0) end
  f:write(text)
  f:close()
end

local function csv_field(s)
  s = tostring(s)
  if s:find('[,"\n]') then return '"' .. s:gsub('"', '""') .. '"' end
  return s
end

local function write_results_csv(path)
  local tol = args.tolerance
  local tname = (tol == math.floor(tol)) and string.format("%d", tol) or string.format("%g", tol)
  local head = {"run", "subject", "structure", "label_value", "gt_present", "detected", "dice", "iou", "hd95_mm",
    "nsd_" .. tname .. "mm", "dice_ge_0.5", "dice_ge_0.7", "dice_ge_0.9", "gt_voxels", "pred_voxels", "gt_ml", "pred_ml",
    "volume_error_ml"}
  local lines = {table.concat(head, ",")}
  for _, r in ipairs(rows) do
    local succ = {}
    for i, t in ipairs(THRESHOLDS) do succ[i] = r.gt_present and (r.dice >= t and "1" or "0") or "NaN" end
    lines[#lines + 1] = table.concat({csv_field(run_name), csv_field(r.subject), csv_field(r.structure), r.value,
      r.gt_present and 1 or 0, r.gt_present and (r.detected and 1 or 0) or "NaN", fmt_num(r.dice), fmt_num(r.iou),
      fmt_num(r.hd95, "%.3f"), fmt_num(r.nsd), succ[1], succ[2], succ[3], string.format("%d", r.gt_voxels),
      string.format("%d", r.pred_voxels), fmt_num(r.gt_ml, "%.3f"), fmt_num(r.pred_ml, "%.3f"),
      fmt_num(r.volume_error_ml, "%.3f")}, ",")
  end
  write_text(path, table.concat(lines, "\n") .. "\n")
end

local function write_summary_csv(path, summ)
  local lines = {"structure,label_value,subjects_with_gt,detected,false_positive_subjects,dice_mean,dice_sd,dice_median,"
    .. "iou_mean,hd95_mm_mean,nsd_mean,success_0.5,success_0.7,success_0.9,volume_error_ml_mean,abs_volume_error_ml_mean"}
  for _, b in ipairs(summ) do
    lines[#lines + 1] = table.concat({csv_field(b.name), b.value, b.present, b.detected, b.fp, fmt_num(b.dice_mean),
      fmt_num(b.dice_sd), fmt_num(b.dice_median), fmt_num(b.iou_mean), fmt_num(b.hd95_mean, "%.3f"),
      fmt_num(b.nsd_mean), fmt_num(b.success[1], "%.4f"), fmt_num(b.success[2], "%.4f"), fmt_num(b.success[3], "%.4f"),
      fmt_num(b.vol_mean, "%.3f"), fmt_num(b.absvol_mean, "%.3f")}, ",")
  end
  write_text(path, table.concat(lines, "\n") .. "\n")
end

local function column(field, only_present)
  local out = {}
  for _, r in ipairs(rows) do
    if not only_present or r.gt_present then out[#out + 1] = r[field] end
  end
  return out
end

local function draw_distribution(path, summ)
  local tol = string.format("%g", args.tolerance)
  local dice, iou, nsd, hd = column("dice"), column("iou"), column("nsd"), column("hd95")
  local volerr = column("volume_error_ml", true)
  local C1, C2, C3, C4 = {31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}
  -- Dice per subject as boxes
  local per_subject, order = {}, {}
  for _, r in ipairs(rows) do
    if not per_subject[r.subject] then per_subject[r.subject] = {}; order[#order + 1] = r.subject end
    local t = per_subject[r.subject]
    t[#t + 1] = r.dice
  end
  local groups = {}
  for i, sname in ipairs(order) do
    if i > 24 then break end
    groups[#groups + 1] = {name = sname, values = per_subject[sname], color = C1}
  end
  local n_rows = #rows
  local spec = {title = string.format("Metric distributions: run %s, %d subject%s x %d structure%s (NaN rows skipped: "
    .. "structure not in the ground truth)", run_name, #subjects, #subjects == 1 and "" or "s", K, K == 1 and "" or "s"),
    cols = 3, width = 1500, height = 920, panels = {
    {type = "hist", title = "Overlap scores", xlabel = "score", ylabel = "subject x structure count", bins = 20,
      range = {0, 1}, series = {{name = "Dice", values = dice, color = C1}, {name = "IoU", values = iou, color = C2},
      {name = "NSD " .. tol .. " mm", values = nsd, color = C3}}, median_lines = true},
    {type = "hist", title = "HD95", xlabel = "HD95 (mm)", ylabel = "count", bins = 20,
      series = {{name = "HD95", values = hd, color = C4}}, median_lines = true},
    {type = "hist", title = "Volume error (prediction - GT)", xlabel = "mL", ylabel = "count", bins = 20,
      series = {{name = "volume error", values = volerr, color = {148, 103, 189}}}, median_lines = true,
      ref_lines = {{value = 0, color = {90, 90, 90}}}},
    {type = "boxplot", title = "Overlap scores", ylabel = "score", ylim = {-0.05, 1.05},
      groups = {{name = "Dice", values = dice, color = C1}, {name = "IoU", values = iou, color = C2},
        {name = "NSD " .. tol .. "mm", values = nsd, color = C3}}, ref_lines = {{value = 0.5, label = "0.5"},
        {value = 0.7, label = "0.7"}, {value = 0.9, label = "0.9"}}},
    {type = "boxplot", title = "HD95", ylabel = "mm", groups = {{name = "HD95", values = hd, color = C4}}},
    {type = "boxplot", title = "Dice per subject", ylabel = "Dice", ylim = {-0.05, 1.05}, groups = groups},
  }}
  plot.save_png(path, spec)
  return n_rows
end

local function bucket_color(d)
  if not finite(d) then return {170, 170, 170} end
  if d >= 0.9 then return {44, 160, 44} elseif d >= 0.7 then return {140, 200, 60} elseif d >= 0.5 then
    return {255, 165, 0} end
  return {214, 39, 40}
end

local function draw_ranking(path, summ)
  local sorted = ranked(summ)
  local labels, means, sds, colors, s1, s2, s3 = {}, {}, {}, {}, {}, {}, {}
  for i, b in ipairs(sorted) do
    labels[i] = string.format("%s (n=%d)", b.name, b.present)
    means[i], sds[i], colors[i] = b.dice_mean, b.dice_sd, bucket_color(b.dice_mean)
    s1[i], s2[i], s3[i] = b.success[1], b.success[2], b.success[3]
  end
  local n = #sorted
  local H = math.max(420, math.min(8000, 140 + n * 30))
  local refs = {{value = 0.5, label = "0.5"}, {value = 0.7, label = "0.7"}, {value = 0.9, label = "0.9"}}
  plot.save_png(path, {title = string.format("Structures ranked by mean Dice: run %s (%d subject%s; n = subjects with "
    .. "the structure in the ground truth)", run_name, #subjects, #subjects == 1 and "" or "s"),
    cols = 2, width = 1500, height = H, panels = {
    {type = "bars", title = "Mean Dice (+- sd over subjects)", xlabel = "Dice", labels = labels, values = means,
      errors = sds, colors = colors, horizontal = true, xlim = {0, 1.12}, value_format = "%.3f", ref_lines = refs,
      legend_position = "right", legend = {{name = "Dice >= 0.9", color = {44, 160, 44}}, {name = "0.7 - 0.9", color = {140, 200, 60}},
        {name = "0.5 - 0.7", color = {255, 165, 0}}, {name = "< 0.5", color = {214, 39, 40}},
        {name = "not in GT (n/a)", color = {170, 170, 170}}}},
    {type = "bars", title = "Success rate: share of subjects with Dice >= t", xlabel = "share of subjects",
      labels = labels, horizontal = true, xlim = {0, 1.12}, value_format = "%.2f", legend_position = "right", series = {
        {name = "Dice >= 0.5", values = s1, color = {255, 165, 0}},
        {name = "Dice >= 0.7", values = s2, color = {140, 200, 60}},
        {name = "Dice >= 0.9", values = s3, color = {44, 160, 44}}}},
  }})
end

local function draw_visualization(path)
  if #vis == 0 then return false end
  local BLACK, DARK, WHITE = {0, 0, 0}, {60, 60, 60}, {255, 255, 255}
  local heads = {"CT", "Ground truth", "Prediction", "Errors"}
  local M, GAP, cap_h = 16, 8, 30
  -- each slice keeps its physical aspect ratio, the longer side `panel` pixels
  local pw = 0
  for _, v in ipairs(vis) do
    local hmm, wmm = v.ct:size(0) * v.rsp, v.ct:size(1) * v.csp
    local sc = panel / math.max(hmm, wmm)
    v.ph, v.pw = math.max(1, math.floor(hmm * sc + 0.5)), math.max(1, math.floor(wmm * sc + 0.5))
    pw = math.max(pw, v.pw)
  end
  local W = 2 * M + 4 * pw + 3 * GAP
  -- legend: the structures shown
  local shown = {}
  for _, v in ipairs(vis) do
    for _, t in ipairs{v.gt, v.pred} do
      for _, k in ipairs(labelmap.values(t) or {}) do if k > 0 then shown[k] = true end end
    end
  end
  local legend, lx, ly = {}, M, 0
  for k = 1, K do
    if shown[k] then
      local s = structures[k].name
      local iw = 18 + plot.text_width(s) + 18
      if lx + iw > W - M and lx > M then lx, ly = M, ly + 18 end
      legend[#legend + 1] = {x = lx, y = ly, k = k, s = s}
      lx = lx + iw
    end
  end
  local legend_h = #legend > 0 and (ly + 18) or 0
  local title_h, head_h, foot_h = 32, 22, 34
  local rows_h = 0
  for _, v in ipairs(vis) do rows_h = rows_h + cap_h + v.ph + GAP end
  local H = M + title_h + head_h + rows_h + legend_h + foot_h + M
  local cv = plot.new_canvas(W, H, WHITE)
  cv:text(plot.fit_text(string.format("Segmentation: ground truth vs prediction, run %s (threshold %g)", run_name,
    threshold), W - 2 * M, 2), M, M, BLACK, 2)
  local y = M + title_h
  for i, h in ipairs(heads) do
    cv:text(h, M + (i - 1) * (pw + GAP) + (pw - plot.text_width(h, 2)) // 2, y, BLACK, 2)
  end
  y = y + head_h
  local lo_w = win[1] - win[2] / 2
  for _, v in ipairs(vis) do
    local parts = {}
    local sd, nd = 0, 0
    for _, d in ipairs(v.dice) do sd, nd = sd + d.dice, nd + 1 end
    for _, d in ipairs(v.dice) do
      if #parts < 6 then parts[#parts + 1] = string.format("%s %.2f", structures[d.k].name, d.dice) end
    end
    local cap = string.format("%s  axial slice %d/%d (z = %.1f mm)", v.subject, v.z, v.nz - 1, v.zmm)
    cv:text(plot.fit_text(cap, W - 2 * M, 1), M, y + 4, BLACK, 1)
    local cap2 = nd > 0 and string.format("Dice on this slice: mean %.3f over %d structure%s%s%s", sd / nd, nd,
      nd == 1 and "" or "s", #parts > 0 and ": " or "", table.concat(parts, ", ") .. (nd > #parts and ", ..." or ""))
      or "no ground-truth structure on this slice"
    cv:text(plot.fit_text(cap2, W - 2 * M, 1), M, y + 16, DARK, 1)
    y = y + cap_h
    local ph, vw = v.ph, v.pw
    local g01 = ((resize(v.ct, ph, vw, "bilinear") - lo_w) / win[2]):clamp(0, 1)
    local base = gray_rgb(g01)
    local gs, ps = resize(v.gt, ph, vw, "nearest"), resize(v.pred, ph, vw, "nearest")
    local imgs = {base, overlay(base, gs, 0.5), overlay(base, ps, 0.5), error_map(base, gs, ps)}
    for i, im in ipairs(imgs) do
      local px = M + (i - 1) * (pw + GAP) + (pw - vw) // 2
      cv:paste(im, px, y)
      if i == 1 then -- orientation letters
        local yellow = {255, 220, 0}
        cv:text("R", px + 3, y + ph // 2 - 4, yellow)
        cv:text("L", px + vw - 8, y + ph // 2 - 4, yellow)
        cv:text("A", px + vw // 2 - 2, y + 3, yellow)
        cv:text("P", px + vw // 2 - 2, y + ph - 12, yellow)
      end
    end
    y = y + ph + GAP
  end
  for _, it in ipairs(legend) do
    cv:fill_rect(it.x, y + it.y, it.x + 11, y + it.y + 11, color_of(it.k))
    cv:rect(it.x, y + it.y, it.x + 11, y + it.y + 11, DARK)
    cv:text(it.s, it.x + 17, y + it.y + 2, BLACK)
  end
  y = y + legend_h + 6
  local kx = M
  cv:text("Errors:", kx, y + 2, BLACK)
  kx = kx + plot.text_width("Errors:") + 10
  for _, e in ipairs(ERR_COLORS) do
    cv:fill_rect(kx, y, kx + 11, y + 11, e[2])
    cv:text(e[1], kx + 17, y + 2, BLACK)
    kx = kx + 17 + plot.text_width(e[1]) + 24
  end
  cv:text(string.format("Overlays: the most probable structure above the threshold per voxel. CT window %g/%g HU; "
    .. "patient's right on the image's left.", win[1], win[2]), M, y + 18, DARK)
  cv:save_png(path)
  return true
end

-- ---------------------------------------------------------------------------------------- run
local t_start = medlua.clock()
local written = {}
local okp, perr = xpcall(function()
  for si, s in ipairs(subjects) do process(si, s) end
  local summ = summarize()
  local names = {
    results = "evaluation_results_" .. run_name .. ".csv",
    summary = "structure_summary_" .. run_name .. ".csv",
    dist = "metrics_distribution_" .. run_name .. ".png",
    rank = "structure_ranking_" .. run_name .. ".png",
    vis = "segmentation_visualization_" .. run_name .. ".png",
  }
  write_results_csv(join(tmp, names.results))
  write_summary_csv(join(tmp, names.summary), summ)
  draw_distribution(join(tmp, names.dist), summ)
  draw_ranking(join(tmp, names.rank), summ)
  draw_visualization(join(tmp, names.vis))
  return summ
end, debug.traceback)
if not okp then
  abort(tostring(perr):match("^[^\n]*") or tostring(perr))
end
local summ = perr

-- move the finished outputs into --out
do
  local okl, entries = pcall(medlua._data.listdir, tmp)
  if not okl then abort(tmp .. ": " .. clean(entries)) end
  if not is_dir(out_dir) then
    local okm, err = os.rename(tmp, out_dir)
    if not okm then abort(out_dir .. ": cannot move the outputs in: " .. tostring(err)) end
  else
    for _, e in ipairs(entries) do
      local dst = join(out_dir, e)
      if is_dir(dst) then os.execute("rm -rf " .. q(dst)) end
      local okm, err = os.rename(join(tmp, e), dst)
      if not okm then abort(dst .. ": cannot move the output in: " .. tostring(err)) end
    end
    os.execute("rm -rf " .. q(tmp))
  end
  table.sort(entries)
  written = entries
end

-- ---------------------------------------------------------------------------------------- summary table
local function f3(v) return finite(v) and string.format("%.3f", v) or "n/a" end
local function f1(v) return finite(v) and string.format("%.1f", v) or "n/a" end
local function pct(v) return finite(v) and string.format("%.0f%%", 100 * v) or "n/a" end
local sorted = ranked(summ)
local wn = 9
for _, b in ipairs(sorted) do wn = math.max(wn, #b.name) end
local fmt = "%-" .. wn .. "s %5s %5s %14s %6s %8s %6s %6s %6s %6s %10s"
print("")
print(string.format(fmt, "structure", "n_gt", "found", "Dice mean+-sd", "IoU", "HD95 mm", "NSD", ">=0.5", ">=0.7",
  ">=0.9", "|dV| mL"))
for _, b in ipairs(sorted) do
  print(string.format(fmt, b.name, b.present, b.detected, finite(b.dice_sd) and string.format("%.3f+-%.3f",
    b.dice_mean, b.dice_sd) or f3(b.dice_mean), f3(b.iou_mean), f1(b.hd95_mean), f3(b.nsd_mean),
    pct(b.success[1]), pct(b.success[2]), pct(b.success[3]), f1(b.absvol_mean)))
end
local all_d, all_i, all_h, all_n = column("dice", true), column("iou", true), column("hd95", true), column("nsd", true)
local md, sdd, nn = mean_sd(all_d)
local succ = {}
for i, t in ipairs(THRESHOLDS) do
  local c = 0
  for _, d in ipairs(all_d) do if d >= t then c = c + 1 end end
  succ[i] = nn > 0 and c / nn or NAN
end
local struct_means = {}
for _, b in ipairs(summ) do struct_means[#struct_means + 1] = b.dice_mean end
print(string.format(fmt, "ALL rows", nn, "", finite(sdd) and string.format("%.3f+-%.3f", md, sdd) or f3(md),
  f3((mean_sd(all_i))), f1((mean_sd(all_h))), f3((mean_sd(all_n))), pct(succ[1]), pct(succ[2]), pct(succ[3]), ""))
print(string.format("mean of the per-structure mean Dice: %s over %d structures with ground truth; NSD at %g mm; HD95 over "
  .. "detected structures", f3((mean_sd(struct_means))), select(3, mean_sd(struct_means)), args.tolerance))
print(string.format("time: inference %.1f s, metrics and slices %.1f s, meshes %.1f s, total %.1f s", t_infer,
  t_metrics - t_mesh, t_mesh, medlua.clock() - t_start))
print("wrote " .. out_dir .. "/: " .. table.concat(written, ", "))
