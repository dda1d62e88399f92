-- recipes/analyze_segmentation.lua on the sample CTs: a smoke run in the TotalSegmentator layout and one
-- with a DICOM series + multi-label map, checking every output and TotalSegmentator's NaN / 0 conventions,
-- and the bad inputs (each an error naming the file, nothing written).
--
-- Two run folders: one built here, a randomly initialised nets.UNet2D saved as a train.fit checkpoint
-- (weights + optimizer state + metadata) with config.json and label_map.json, whose output biases make
-- the conventions deterministic: kidney_left never fires (present in the ground truth but missed: Dice,
-- IoU, NSD 0, HD95 NaN) and brain fires everywhere (absent from the ground truth: every score NaN, the
-- prediction only in pred_ml); and one trained by recipes/train_unet2d.lua for 1 epoch at 64x64 on the
-- same 3 structures (skipped when that recipe is missing).
local medlua = require "medlua"
local T = require "medlua.test"
local volume = require "medlua.volume"
local metrics = require "medlua.metrics"
local json = require "medlua.json"
local nets = require "medlua.nets"
local optim = require "medlua.optim"
local totalseg = require "medlua.totalseg"
local exe = arg[-1]

local NAMES = {"liver", "kidney_left", "brain"}
local VALUES = {5, 3, 90}

local run = T.run_cmd
local tmpdir = T.tmpdir
local exists = require("medlua.path").exists
local function is_dir(p)
  local f = io.open(p, "rb")
  if not f then return false end
  local _, _, code = f:read(1)
  f:close()
  return code == 21
end
local function listdir(p) local l = medlua._data.listdir(p); table.sort(l); return l end
local read = T.read_file

-- CSV rows as tables keyed by the header
local function read_csv(path)
  local lines = {}
  for l in read(path):gmatch("[^\n]+") do lines[#lines + 1] = l end
  local head = {}
  for h in lines[1]:gmatch("[^,]+") do head[#head + 1] = h end
  local rows = {}
  for i = 2, #lines do
    local r, j = {}, 0
    for v in (lines[i] .. ","):gmatch("([^,]*),") do j = j + 1; r[head[j]] = v end
    rows[#rows + 1] = r
  end
  return rows, head
end
local function num(s) return s == "NaN" and 0 / 0 or tonumber(s) end
local function is_nan(s) return s == "NaN" end

-- the run folder: config.json, label_map.json, best.safetensors (train.fit's format)
local function make_run(dir)
  os.execute("mkdir -p '" .. dir .. "'")
  medlua.manual_seed(0)
  local cfg = {model = {type = "UNet2D", in_channels = 1, out_channels = 3, features = {8, 16}, bottleneck = 32},
    structures = NAMES, label_values = VALUES, axis = 2, target_shape = {64, 64}, window = {40, 400}, threshold = 0.5}
  local net = nets.UNet2D(cfg.model)
  do
    local g <close> = medlua.no_grad()
    net.final_conv.bias:set(-30, 1) -- kidney_left: never
    net.final_conv.bias:set(30, 2)  -- brain: everywhere
  end
  json.write(dir .. "/config.json", cfg)
  json.write(dir .. "/label_map.json", {structures = NAMES, label_values = VALUES})
  local opt = optim.Adam(net:parameters(), {lr = 1e-3})
  local tensors = {}
  for k, t in pairs(net:state_dict()) do tensors[k] = t end
  for k, t in pairs(opt:state_dict()) do tensors["optimizer." .. k] = t end
  medlua.save(dir .. "/best.safetensors", tensors, {format = "medlua.train/1", epoch = "1", step = "1"})
end

local TABLE = "data/samples/labels_total.tsv"
local CT, SEG = "data/samples/example_ct.nii.gz", "data/samples/example_seg_full_fast.nii.gz"

local root = tmpdir()
-- removed when the tests pass (T.run exits at once on a failure, leaving the files to look at)
local cleanup <close> = setmetatable({}, {__close = function() os.execute("rm -rf '" .. root .. "'") end})
make_run(root .. "/run")
totalseg.split(CT, SEG, totalseg.read_table(TABLE), root .. "/data", "s0001", {structures = NAMES})
local RECIPE = exe .. " recipes/analyze_segmentation.lua --run " .. root .. "/run "

T.case("TotalSegmentator layout: every output, NaN for a structure absent from the GT, 0 when missed", function()
  local out_dir = root .. "/results/a"
  local out, code = run(RECIPE .. "--data " .. root .. "/data --name tiny --out " .. out_dir ..
    " --masks --vis-slices 2 --mesh-smooth 3")
  T.eq(code, 0, out)
  -- the printed summary
  T.ok(out:find("structure%s+n_gt%s+found%s+Dice mean%+%-sd"), out)
  T.ok(out:find("kidney_left%s+1%s+0%s+0%.000"), out)
  T.ok(out:find("brain%s+0%s+0%s+n/a"), out)
  T.ok(out:find("ALL rows", 1, true), out)
  -- every file
  local files = listdir(out_dir)
  for _, f in ipairs{"evaluation_results_tiny.csv", "structure_summary_tiny.csv", "metrics_distribution_tiny.png",
    "structure_ranking_tiny.png", "segmentation_visualization_tiny.png", "3d_s0001.html", "3d_s0001.gltf",
    "3d_s0001", "predictions"} do
    T.ok(exists(out_dir .. "/" .. f), f .. " missing; got " .. table.concat(files, ", "))
  end
  T.eq(#listdir(root .. "/results"), 1, "a temporary folder was left next to the output")
  -- CSV: one row per subject and structure, TotalSegmentator's conventions
  local rows, head = read_csv(out_dir .. "/evaluation_results_tiny.csv")
  T.eq(head, {"run", "subject", "structure", "label_value", "gt_present", "detected", "dice", "iou", "hd95_mm", "nsd_3mm",
    "dice_ge_0.5", "dice_ge_0.7", "dice_ge_0.9", "gt_voxels", "pred_voxels", "gt_ml", "pred_ml", "volume_error_ml"})
  T.eq(#rows, 3)
  local by = {}
  for _, r in ipairs(rows) do by[r.structure] = r; T.eq(r.subject, "s0001"); T.eq(r.run, "tiny") end
  local liver, kid, brain = by.liver, by.kidney_left, by.brain
  T.eq(liver.gt_voxels, "41692")
  T.near(num(liver.gt_ml), 41692 * 27 / 1000, 1e-3)
  local d = num(liver.dice)
  T.ok(d >= 0 and d <= 1, "liver Dice " .. liver.dice)
  -- present but missed: 0 (HD95 undefined)
  T.eq({kid.gt_present, kid.detected, kid.dice, kid.iou, kid.nsd_3mm, kid.hd95_mm, kid["dice_ge_0.5"]},
    {"1", "0", "0.000000", "0.000000", "0.000000", "NaN", "0"})
  T.eq(kid.pred_voxels, "0")
  T.near(num(kid.volume_error_ml), -num(kid.gt_ml), 1e-3)
  -- absent from the ground truth: NaN, even though it was predicted (a false positive)
  T.eq(brain.gt_present, "0")
  for _, k in ipairs{"detected", "dice", "iou", "hd95_mm", "nsd_3mm", "dice_ge_0.9", "volume_error_ml"} do
    T.ok(is_nan(brain[k]), "brain " .. k .. " = " .. brain[k])
  end
  T.ok(tonumber(brain.pred_voxels) > 0, "brain fires everywhere")
  -- the multi-label prediction: the CT's grid, TotalSegmentator label values
  local ct = volume.load(root .. "/data/s0001/ct.nii.gz")
  local seg = volume.load(out_dir .. "/predictions/s0001_seg.nii.gz")
  T.eq(seg.shape, ct.shape)
  T.ok((seg.affine - ct.affine):abs():max():item() < 1e-4, "the prediction is in the CT's geometry")
  for _, v in ipairs(require("medlua.labelmap").values(seg)) do
    T.ok(v == 0 or v == 5 or v == 3 or v == 90, "unexpected label value " .. v)
  end
  -- the per-structure masks give the CSV's scores back
  local bm = volume.load(out_dir .. "/predictions/s0001/brain.nii.gz")
  T.eq(bm.data:sum():item(), tonumber(brain.pred_voxels))
  T.ok(not exists(out_dir .. "/predictions/s0001/kidney_left.nii.gz"), "no mask for a structure never predicted")
  local gt = volume.load(root .. "/data/s0001/segmentations/liver.nii.gz")
  if tonumber(liver.pred_voxels) > 0 then
    local lm = volume.load(out_dir .. "/predictions/s0001/liver.nii.gz")
    T.near(metrics.dice(lm.data, gt.data):item(), d, 1e-5)
  else
    T.eq(liver.dice, "0.000000")
  end
  -- pictures of readable size
  local img = volume.read_png(out_dir .. "/metrics_distribution_tiny.png")
  T.eq(img:size(), {920, 1500, 3})
  T.ok(img:float():std():item() > 5, "distribution figure is blank")
  local vis = volume.read_png(out_dir .. "/segmentation_visualization_tiny.png")
  T.ok(vis:size(1) >= 4 * 256 and vis:size(0) >= 2 * 212, "visualization " .. table.concat(vis:size(), "x"))
  T.ok(volume.read_png(out_dir .. "/structure_ranking_tiny.png"):size(1) == 1500)
  -- meshes: glTF with prediction and ground-truth nodes, PLY per structure, a self-contained page
  local gltf = json.decode(read(out_dir .. "/3d_s0001.gltf"))
  local nodes = {}
  for _, n in ipairs(gltf.nodes) do nodes[n.name] = true end
  T.ok(nodes["ground_truth/liver"] and nodes["ground_truth/kidney_left"] and nodes["prediction/brain"],
    "glTF nodes: " .. json.encode(gltf.nodes))
  T.ok(not nodes["ground_truth/brain"] and not nodes["prediction/kidney_left"], "no mesh for an empty mask")
  T.ok(exists(out_dir .. "/3d_s0001/ground_truth_liver.ply") and exists(out_dir .. "/3d_s0001/prediction_brain.ply"))
  local html = read(out_dir .. "/3d_s0001.html")
  T.ok(html:find("ground truth", 1, true) and html:find("kidney_left", 1, true), "page names groups and structures")
  T.ok(not html:find("https?://[%w%.]+/[%w%./]*%.js"), "the page loads no script from the network")
  -- a second run into the same folder replaces the outputs
  out, code = run(RECIPE .. "--data " .. root .. "/data --name tiny --out " .. out_dir ..
    " --no-meshes --vis-subjects 0 --structures kidney_left")
  T.eq(code, 0, out)
  T.eq(#read_csv(out_dir .. "/evaluation_results_tiny.csv"), 1)
end)

T.case("CT as a DICOM series + multi-label map + label table, probabilities in chunks", function()
  local out_dir = root .. "/results/b"
  local out, code = run(RECIPE .. "--image data/samples/example_ct_dicom --label data/samples/example_seg_dicom.nii.gz "
    .. "--label-table " .. TABLE .. " --out " .. out_dir .. " --no-meshes --vis-subjects 1 --vis-slices 1 --prob-memory 0.01")
  T.eq(code, 0, out)
  T.ok(out:find("pass 1 of 3, 1 structure each", 1, true), "10 MB of probabilities: one structure per pass: " .. out)
  local rows = read_csv(out_dir .. "/evaluation_results_run.csv") -- --name defaults to the run folder's name
  T.eq(#rows, 3)
  local by = {}
  for _, r in ipairs(rows) do by[r.structure] = r end
  T.eq(by.liver.subject, "example_ct_dicom")
  T.eq(by.liver.gt_voxels, "366708") -- the LAS map's liver on the LPS series' grid, every voxel
  T.eq(by.kidney_left.gt_present, "0")   -- not in this scan: NaN
  T.ok(is_nan(by.kidney_left.dice) and is_nan(by.kidney_left.nsd_3mm))
  T.eq(by.brain.gt_present, "0")
  local ct = volume.load("data/samples/example_ct_dicom")
  local seg = volume.load(out_dir .. "/predictions/example_ct_dicom_seg.nii.gz")
  T.eq(seg.shape, ct.shape)
  T.eq(seg.axcodes, ct.axcodes)
  T.ok((seg.affine - ct.affine):abs():max():item() < 1e-3, "the prediction overlays the series")
  T.ok(exists(out_dir .. "/segmentation_visualization_run.png"))
  T.ok(not exists(out_dir .. "/3d_example_ct_dicom.html"), "--no-meshes")
end)

T.case("a run trained by recipes/train_unet2d.lua (1 epoch at 64x64, 3 structures)", function()
  if not exists("recipes/train_unet2d.lua") then
    print("  (recipes/train_unet2d.lua not found: this case is skipped)")
    return
  end
  local data = root .. "/data2" -- two copies of the sample subject: one to train on, one to validate with
  os.execute(string.format("mkdir -p '%s' && cp -r '%s/data/s0001' '%s/s0001' && cp -r '%s/data/s0001' '%s/s0002'",
    data, root, data, root, data))
  local out, code = run(exe .. " recipes/train_unet2d.lua --data " .. data .. " --structures " .. table.concat(NAMES, ",")
    .. " --epochs 1 --target-shape 64 --features 8,16 --bottleneck 32 --no-final-eval --quiet --out " .. root .. "/t2d")
  T.eq(code, 0, out)
  local out_dir = root .. "/results/c"
  out, code = run(exe .. " recipes/analyze_segmentation.lua --run " .. root .. "/t2d --data " .. data ..
    " --subjects s0002 --out " .. out_dir .. " --no-meshes --vis-slices 1")
  T.eq(code, 0, out)
  local rows = read_csv(out_dir .. "/evaluation_results_t2d.csv")
  T.eq(#rows, 3)
  local by = {}
  for _, r in ipairs(rows) do by[r.structure] = r end
  T.eq(by.liver.gt_voxels, "41692")
  T.ok(num(by.liver.dice) >= 0 and num(by.liver.dice) <= 1, by.liver.dice)
  T.ok(is_nan(by.brain.dice) and by.brain.gt_present == "0", "brain is not in this CT")
  for _, f in ipairs{"metrics_distribution_t2d.png", "structure_ranking_t2d.png", "segmentation_visualization_t2d.png",
    "structure_summary_t2d.csv", "predictions/s0002_seg.nii.gz"} do
    T.ok(exists(out_dir .. "/" .. f), f)
  end
end)

T.case("bad inputs: an error naming the file, nothing written", function()
  local bad = root .. "/bad"
  os.execute(string.format("mkdir -p '%s' && cp -r '%s/data' '%s/data' && cp -r '%s/run' '%s/run'", bad, root, bad, root, bad))
  local R = exe .. " recipes/analyze_segmentation.lua --run " .. bad .. "/run --data " .. bad .. "/data --out " .. bad .. "/out/x "
  local function expect_fail(extra, needle, what)
    local out, code = run(R .. (extra or ""))
    T.eq(code, 1, what .. ": " .. out)
    T.ok(out:find(needle, 1, true), what .. ": the message should name " .. needle .. ": " .. out)
    T.ok(not exists(bad .. "/out"), what .. ": an output folder was created")
    return out
  end
  -- a subject without ct.nii.gz
  local ct = bad .. "/data/s0001/ct.nii.gz"
  os.rename(ct, ct .. ".away")
  expect_fail(nil, ct, "missing CT")
  os.rename(ct .. ".away", ct)
  -- a mask on another grid: the same shape, one slice (3 mm) higher; then one slice fewer
  local mp = bad .. "/data/s0001/segmentations/liver.nii.gz"
  local m = volume.load(mp)
  local a = m.affine:clone()
  a:set(a:get(2, 3) + 3, 2, 3)
  volume.new(m.data, a):save(mp)
  local out = expect_fail(nil, mp, "mask grid")
  T.ok(out:find("does not match its CT", 1, true) and out:find("not at the same positions", 1, true), out)
  m:with_data(m.data:narrow(2, 1, m.shape[3] - 1):contiguous()):save(mp)
  out = expect_fail(nil, mp, "mask shape")
  T.ok(out:find("shapes differ", 1, true), out)
  m:save(mp)
  -- unknown structure names: --structures, and a structure of the run missing from the label table
  out = expect_fail("--structures liver,kidney_lft", "kidney_lft", "unknown --structures")
  T.ok(out:find("close names: kidney_left", 1, true), out)
  local tsv = bad .. "/two.tsv"
  local f = io.open(tsv, "w")
  f:write("5\tliver\n3\tkidney_left\n")
  f:close()
  local R2 = exe .. " recipes/analyze_segmentation.lua --run " .. bad .. "/run --image " .. CT .. " --label " .. SEG ..
    " --out " .. bad .. "/out/x "
  out, code = run(R2 .. "--label-table " .. tsv)
  T.eq(code, 1, out)
  T.ok(out:find("unknown structure name 'brain'", 1, true) and out:find(tsv, 1, true), out)
  -- a truncated checkpoint
  local ck = bad .. "/run/best.safetensors"
  local full = read(ck)
  f = io.open(ck, "wb")
  f:write(full:sub(1, 3000))
  f:close()
  out = expect_fail(nil, ck, "truncated checkpoint")
  T.ok(out:find("truncated", 1, true) or out:find("cannot load", 1, true), out)
  -- weights of another architecture
  f = io.open(ck, "wb")
  f:write(full)
  f:close()
  local cfg = json.read(bad .. "/run/config.json")
  cfg.model.features = {8, 32}
  json.write(bad .. "/run/config.json", cfg)
  out = expect_fail(nil, ck, "other architecture")
  T.ok(out:find("shape mismatch", 1, true), out)
  T.eq(listdir(bad), {"data", "run", "two.tsv"})
end)

T.run()
