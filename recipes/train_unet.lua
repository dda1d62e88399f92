-- train_unet.lua: train MONAI's 3D U-Net for CT segmentation, natively (seed 002: train.py).
--
-- Default run (no arguments): a spine task -- background / vertebrae / spinal cord -- on two real CTs
-- with TotalSegmentator labels: train on example_ct.nii.gz (abdomen, 3 mm), validate on the other
-- patient (a 20-slice DICOM series). The pipeline is MONAI's: Orientation RAS, Spacing, intensity
-- range scaling, RandCropByPosNegLabel, flips and intensity jitter, run by native worker threads;
-- DiceCE loss, Adam, sliding-window validation. At the end the best checkpoint segments the validation
-- patient in its own geometry (NIfTI), per-class Dice and HD95 are printed and overlays written.
--
--   medlua recipes/train_unet.lua                                   # the default spine task
--   medlua recipes/train_unet.lua --steps 2000 --roi 96 --spacing 1.5
--   medlua recipes/train_unet.lua --datalist dataset.json --labels liver=1,tumour=2
--   medlua recipes/train_unet.lua --images imagesTr --label-dir labelsTr --val-fraction 0.2
--   medlua recipes/train_unet.lua --resume                          # continue out/unet_spine/last
local medlua = require "medlua"
local optim = require "medlua.optim"
local losses = require "medlua.losses"
local data = require "medlua.data"
local T = require "medlua.transforms"
local train = require "medlua.train"
local cli = require "medlua.cli"
local json = require "medlua.json"
local log = require "medlua.log"
local labelmap = require "medlua.labelmap"
local seg = require "medlua.segment"

local args = cli.parse(arg, {
  description = "Train a 3D U-Net (MONAI semantics) for CT segmentation. With no arguments: vertebrae and "
    .. "spinal cord on the sample CTs (data/samples).",
  {"--train-image", "data/samples/example_ct.nii.gz", "training image(s): NIfTI files or DICOM folders, comma-separated"},
  {"--train-label", "data/samples/example_seg_full_fast.nii.gz", "their label maps, comma-separated, same order"},
  {"--val-image", "data/samples/example_ct_dicom", "validation image(s), comma-separated ('' = none)"},
  {"--val-label", "data/samples/example_seg_dicom.nii.gz", "validation label map(s)"},
  {"--datalist", "", "a MONAI datalist JSON (keys 'training' and 'validation'); replaces the four options above"},
  {"--images", "", "a folder of images (with --label-dir); replaces --train-image/--train-label"},
  {"--label-dir", "", "the folder of label maps matching --images by name"},
  {"--val-fraction", 0.0, "with --images or a datalist without 'validation': the share of cases to validate on"},
  {"--labels", "vertebrae=26-50,spinal_cord=79", "classes: name=values (ranges a-b, '+' joins, structure names from "
    .. "--label-table); 'none' = labels are class indices already"},
  {"--label-table", "data/samples/labels_total.tsv", "value<TAB>name table for structure names in --labels"},
  {"--num-classes", 0, "with --labels none: the number of classes incl. background (0 = largest label + 1)"},
  {"--spacing", "2", "training voxel spacing in mm: one number or sx,sy,sz"},
  {"--a-min", -1000, "intensity mapped to 0 (HU)"},
  {"--a-max", 1500, "intensity mapped to 1 (HU)"},
  {"--roi", "64", "patch size: one number or x,y,z (multiples of 16)"},
  {"--batch-size", 2, "patches per step (RandCropByPosNegLabel num_samples)"},
  {"--steps", 1200, "optimizer steps"},
  {"--lr", 1e-3, "Adam learning rate"},
  {"--weight-decay", 1e-5, "Adam weight decay"},
  {"--sched", "poly", "learning-rate schedule per step: poly (nnU-Net, power 0.9), cosine or none"},
  {"--postprocess", "largest_foreground", "on predictions: largest_foreground (largest connected component of "
    .. "all classes together), largest_per_class or none"},
  {"--channels", "16,32,64,128,256", "UNet channels"},
  {"--strides", "2,2,2,2", "UNet strides"},
  {"--num-res-units", 2, "UNet residual units"},
  {"--norm", "batch", "UNet norm: batch, instance or none"},
  {"--val-every", 200, "validate every N steps"},
  {"--sw-batch-size", 2, "windows per forward pass in validation/inference"},
  {"--overlap", 0.25, "sliding-window overlap"},
  {"--workers", 2, "data loader worker threads"},
  {"--affine-prob", 0.3, "probability of a random rotation (+-15 deg axial, +-6 deg other) and scaling (+-10%)"},
  {"--seed", 0, "random seed (same seed, same run)"},
  {"--threads", 0, "compute threads (0 = all cores)"},
  {"--early-stop", 0, "stop after this many validations without improvement (0 = never)"},
  {"--time-limit", 0, "stop training after this many minutes (0 = no limit)"},
  {"--tta", false, "flip test-time augmentation in the final evaluation"},
  {"--out", "out/unet_spine", "output folder: checkpoints, logs, curves, predictions, overlays"},
  {"--resume", false, "continue from OUT/last.safetensors"},
  {"--quiet", false, "no progress bars"},
})

local t_start = medlua.clock()
if args.threads > 0 then medlua.threads(args.threads) end

local function die(msg) cli.die("train_unet", msg) end

local split = cli.split

local function numbers(s, n, what) return cli.numbers(s, n, what, "train_unet", {broadcast = n == 3}) end

local function ints(s, what)
  local v = numbers(s, nil, what)
  for i, x in ipairs(v) do
    if math.type(x) ~= "integer" and x ~= math.floor(x) then die(string.format("--%s: '%s' is not an integer", what, s)) end
    v[i] = math.tointeger(x)
  end
  return v
end

-- ------------------------------------------------------------------ cases
local function pairs_of(imgs, labs, what)
  local I, L = split(imgs), split(labs)
  if #I == 0 then return {} end
  if #L > 0 and #I ~= #L then
    die(string.format("%s: %d images but %d label maps (give one label per image)", what, #I, #L))
  end
  local out = {}
  for i, p in ipairs(I) do out[i] = {image = p, label = L[i]} end
  return out
end

local train_items, val_items
if args.datalist ~= "" then
  local p = seg.find(args.datalist)
  local ok, tr = pcall(data.load_datalist, p, "training")
  if not ok then die(tr) end
  train_items = tr
  local ok2, va = pcall(data.load_datalist, p, "validation")
  val_items = ok2 and va or {}
elseif args.images ~= "" then
  if args.label_dir == "" then die("--images needs --label-dir (the matching label maps)") end
  local ok, items = pcall(data.pair_folder, seg.find(args.images), seg.find(args.label_dir))
  if not ok then die(items) end
  train_items, val_items = items, {}
else
  train_items = pairs_of(args.train_image, args.train_label, "--train-image/--train-label")
  val_items = pairs_of(args.val_image, args.val_label, "--val-image/--val-label")
end
if #val_items == 0 and args.val_fraction > 0 then
  local nv = math.max(1, math.floor(#train_items * args.val_fraction + 0.5))
  if nv >= #train_items then die("--val-fraction leaves no training case") end
  for _ = 1, nv do val_items[#val_items + 1] = table.remove(train_items) end
end
if #train_items == 0 then die("no training cases") end
for _, it in ipairs(train_items) do
  if not it.label then die(string.format("%s: training case has no label map", it.image)) end
end

-- ------------------------------------------------------------------ label map
local lm
if args.labels == "none" then
  local n = math.tointeger(args.num_classes) or 0
  if n == 0 then
    local mx = 1
    for _, it in ipairs(train_items) do
      local ok, v = pcall(require("medlua.volume").load, seg.find(it.label))
      if not ok then die(string.format("%s: cannot read the label: %s", it.label, tostring(v))) end
      mx = math.max(mx, math.floor(v.data:amax():item()))
    end
    n = mx + 1
  end
  lm = labelmap.identity(n)
else
  local tbl = args.label_table ~= "" and seg.find(args.label_table) or nil
  local needs_table = args.labels:find("[%a_]%*") or not args.labels:find("=")
  local ok, r = pcall(labelmap.parse, args.labels, (tbl and (needs_table or io.open(tbl))) and tbl or nil)
  if not ok then die(r) end
  lm = r
end

local cfg = {
  spacing = numbers(args.spacing, 3, "spacing"), a_min = args.a_min, a_max = args.a_max,
  roi = ints(args.roi, "roi"), labels = lm, sw_batch_size = math.tointeger(args.sw_batch_size),
  overlap = args.overlap, blend = "gaussian", postprocess = args.postprocess,
  model = {channels = ints(args.channels, "channels"), strides = ints(args.strides, "strides"),
    num_res_units = math.tointeger(args.num_res_units), norm = args.norm},
}
if #cfg.roi == 1 then cfg.roi = {cfg.roi[1], cfg.roi[1], cfg.roi[1]} end
if #cfg.roi ~= 3 then die("--roi: expected one number or x,y,z") end
if #cfg.model.strides ~= #cfg.model.channels - 1 then
  die(string.format("--strides has %d entries; --channels has %d, so %d are needed", #cfg.model.strides,
    #cfg.model.channels, #cfg.model.channels - 1))
end
if args.postprocess ~= "none" and args.postprocess ~= "largest_foreground" and args.postprocess ~= "largest_per_class" then
  die("--postprocess must be largest_foreground, largest_per_class or none, got " .. args.postprocess)
end
if args.a_max <= args.a_min then die("--a-max must be larger than --a-min") end
local ok_roi, e_roi = pcall(seg.check_roi, cfg)
if not ok_roi then die("--roi: " .. e_roi) end

-- ------------------------------------------------------------------ load and check everything first
print(string.format("medlua %s | threads %d | classes: %s", medlua.version, medlua.threads(), table.concat(lm.names, ", ")))
print(tostring(lm))
local function load_all(items, what)
  local out = {}
  for i, it in ipairs(items) do
    local ok, c = pcall(seg.load_case, it, lm)
    if not ok then die(c) end
    if not c.label and what == "validation" then die(string.format("%s: validation case has no label map", c.image_path)) end
    out[i] = c
  end
  return out
end
local train_cases = load_all(train_items, "training")
local val_cases = load_all(val_items, "validation")

-- every class must appear in the training labels
local totals = {}
for k = 1, lm.num_classes do totals[k] = 0 end
for _, c in ipairs(train_cases) do
  for k, n in ipairs(labelmap.count(c.label, lm)) do totals[k] = totals[k] + n end
end
for k = 2, lm.num_classes do
  if totals[k] == 0 then
    local cl = lm.classes[k - 1]
    die(string.format("class '%s' (label values %s) has no voxel in any training label (%s); check --labels",
      cl.name, tostring(lm):match(cl.name .. "=([^,)]*)") or "?", train_items[1].label))
  end
end

-- preprocess to the training grid (RAS, spacing); ROI larger than every image is refused
local train_ds_items = {}
for _, c in ipairs(train_cases) do
  local x, y = seg.preprocess(c.image, cfg, false), seg.preprocess(c.label, cfg, true)
  c.x, c.y = x, y
  local fits = false
  for d = 1, 3 do if x.shape[d] >= cfg.roi[d] then fits = true end end
  if not fits then
    die(string.format("--roi %s is larger than the image %s (%s after resampling to %s mm) in every axis",
      table.concat(cfg.roi, "x"), c.image_path, table.concat(x.shape, "x"), table.concat(cfg.spacing, "x")))
  end
  print(string.format("train %-28s %s -> %s at %s mm", c.name, table.concat(c.image.shape, "x"), table.concat(x.shape, "x"),
    table.concat(cfg.spacing, "x")))
end
for _, c in ipairs(val_cases) do
  c.x, c.y = seg.preprocess(c.image, cfg, false), seg.preprocess(c.label, cfg, true)
  print(string.format("val   %-28s %s -> %s at %s mm", c.name, table.concat(c.image.shape, "x"), table.concat(c.x.shape, "x"),
    table.concat(cfg.spacing, "x")))
end

-- ------------------------------------------------------------------ data pipeline (native threads)
-- The volumes are already in memory on the training grid; the workers crop and augment.
local tf = T.Compose{
  T.EnsureChannelFirstd{keys = {"image", "label"}},
  T.SpatialPadd{keys = {"image", "label"}, spatial_size = cfg.roi},
  T.RandCropByPosNegLabeld{keys = {"image", "label"}, label_key = "label", spatial_size = cfg.roi, pos = 1, neg = 1,
    num_samples = math.tointeger(args.batch_size), image_key = "image", image_threshold = 0},
  T.RandAffined{keys = {"image", "label"}, prob = args.affine_prob, rotate_range = {0.1, 0.1, 0.26},
    scale_range = {0.1, 0.1, 0.1}, mode = {"bilinear", "nearest"}, padding_mode = "border"},
  T.RandFlipd{keys = {"image", "label"}, prob = 0.5, spatial_axis = 0},
  T.RandScaleIntensityd{keys = "image", factors = 0.1, prob = 0.5},
  T.RandShiftIntensityd{keys = "image", offsets = 0.1, prob = 0.5},
}
tf:set_random_state(math.tointeger(args.seed))
local steps_per_epoch = 50
local reps = math.max(1, math.ceil(steps_per_epoch / #train_cases))
local items = {}
for _ = 1, reps do
  for _, c in ipairs(train_cases) do items[#items + 1] = {image = c.x, label = c.y} end
end
local ds = data.Dataset{data = items, transform = tf}
local loader = data.DataLoader(ds, {batch_size = 1, shuffle = true, num_workers = math.tointeger(args.workers),
  seed = math.tointeger(args.seed)})

-- ------------------------------------------------------------------ model, loss, optimizer
medlua.manual_seed(math.tointeger(args.seed))
local net = seg.build_model(cfg)
local nparams = 0
for _, p in ipairs(net:parameters()) do nparams = nparams + p:numel() end
print(string.format("UNet channels %s strides %s res units %d, %s norm: %d parameters", table.concat(cfg.model.channels, "-"),
  table.concat(cfg.model.strides, "-"), cfg.model.num_res_units, cfg.model.norm, nparams))
local loss_fn = losses.DiceCELoss{to_onehot_y = true, softmax = true}
local opt = optim.Adam(net:parameters(), {lr = args.lr, weight_decay = args.weight_decay})
local scheduler
if args.sched == "poly" then
  scheduler = optim.PolyLR(opt, {total_iters = math.tointeger(args.steps), power = 0.9})
elseif args.sched == "cosine" then
  scheduler = optim.CosineAnnealingLR(opt, {T_max = math.tointeger(args.steps)})
elseif args.sched ~= "none" then
  die("--sched must be poly, cosine or none, got " .. args.sched)
end

local out = args.out
log.mkdir_p(out, "train_unet")
-- a checkpoint from another architecture is refused before any training
if args.resume then
  local last = out .. "/last.safetensors"
  local f = io.open(last, "rb")
  if f then
    f:close()
    local ok, e = pcall(seg.load_weights, seg.build_model(cfg), last)
    if not ok then die(e) end
  end
end
seg.save_config(out .. "/config.json", cfg)
json.write(out .. "/label_map.json", lm:to_json_table())

-- ------------------------------------------------------------------ validation
local function validate(model)
  local rows_all = {}
  for _, c in ipairs(val_cases) do
    local probs = seg.predict_probs(model, c.x, cfg)
    local pred = seg.postprocess(c.x:with_data(probs:argmax(0):byte()), cfg.postprocess)
    local rows = seg.evaluate(pred, c.y, lm, {hd95 = false})
    for k, r in ipairs(rows) do
      rows_all[k] = rows_all[k] or {}
      table.insert(rows_all[k], r.dice)
    end
  end
  local m = {}
  local sum, n = 0, 0
  for k, list in ipairs(rows_all) do
    local s, c = 0, 0
    for _, v in ipairs(list) do if v == v then s = s + v; c = c + 1 end end
    local d = c > 0 and s / c or 0 / 0
    m["val_dice_" .. lm.names[k + 1]] = d
    if d == d then sum = sum + d; n = n + 1 end
  end
  m.val_dice = n > 0 and sum / n or 0
  return m
end

local deadline = args.time_limit > 0 and (t_start + args.time_limit * 60) or nil
local summary = train.fit{
  model = net, optimizer = opt, loss_fn = loss_fn, train_loader = loader,
  scheduler = scheduler, scheduler_step = scheduler and "step" or nil,
  steps = math.tointeger(args.steps), steps_per_epoch = steps_per_epoch,
  val_fn = #val_cases > 0 and function(model) return validate(model) end or nil,
  val_every_steps = #val_cases > 0 and math.tointeger(args.val_every) or nil,
  monitor = #val_cases > 0 and "val_dice" or "train_loss", mode = #val_cases > 0 and "max" or "min",
  early_stop_patience = args.early_stop > 0 and math.tointeger(args.early_stop) or nil,
  out_dir = out, resume = args.resume, seed = math.tointeger(args.seed), quiet = args.quiet,
  on_step = deadline and function() return medlua.clock() < deadline end or nil,
  name = "train_unet",
}
local stats = loader:stats()
loader:close()
local t_train = medlua.clock() - t_start
print(string.format("data loading: waited %.1f%% of the step time (%d batches, %.1f samples/s produced)",
  100 * (stats.wait_frac or 0), stats.batches or 0, stats.samples_per_s or 0))

-- ------------------------------------------------------------------ final evaluation with the best weights
if #val_cases == 0 then
  print(string.format("done in %.1f min (no validation cases); weights in %s", t_train / 60, out))
  os.exit(0)
end
local best = out .. "/best.safetensors"
local bf = io.open(best, "rb")
if bf then bf:close() else best = out .. "/last.safetensors" end
seg.load_weights(net, best)
log.mkdir_p(out .. "/predictions", "train_unet")
log.mkdir_p(out .. "/overlays", "train_unet")
local results = {checkpoint = best, spacing = cfg.spacing, steps = summary and summary.step or args.steps, cases = {}}
local all_rows = {}
for _, c in ipairs(val_cases) do
  local pred = seg.predict(net, c.image, cfg, {tta = args.tta})
  local pp = string.format("%s/predictions/%s_pred.nii.gz", out, c.name)
  pred:save(pp)
  local rows = seg.evaluate(pred, c.label, lm)
  print(seg.format_table(rows, string.format("validation %s (its own grid, %s mm; best checkpoint %s)", c.name,
    table.concat(c.image.spacing, "x"), best)))
  results.cases[#results.cases + 1] = {name = c.name, image = c.image_path, label = c.label_path, prediction = pp,
    classes = rows}
  for k, r in ipairs(rows) do
    all_rows[k] = all_rows[k] or {name = r.name, dice = {}, hd95 = {}}
    table.insert(all_rows[k].dice, r.dice)
    table.insert(all_rows[k].hd95, r.hd95)
  end
  -- overlays: image | ground truth (remapped, on the image grid) | prediction
  local gp = string.format("%s/predictions/%s_gt.nii.gz", out, c.name)
  c.label:save(gp)
  local png = string.format("%s/overlays/%s.png", out, c.name)
  local cmd = string.format("%q %q --image %q --pred %q --label %q --label-map %q --out %q --slices auto > /dev/null 2>&1",
    arg[-1] or "medlua", seg.root() .. "/recipes/visualize_predictions.lua", c.image_path, pp, gp,
    out .. "/label_map.json", png)
  if os.execute(cmd) then print("overlay: " .. png) else print("overlay: could not be drawn (" .. png .. ")") end
end
json.write(out .. "/results.json", results)
local t_all = medlua.clock() - t_start
local parts = {}
for _, r in ipairs(all_rows) do
  local s, n = 0, 0
  for _, v in ipairs(r.dice) do if v == v then s = s + v; n = n + 1 end end
  parts[#parts + 1] = string.format("%s Dice %.3f", r.name, n > 0 and s / n or 0 / 0)
end
print(string.format("summary: %s | training %.1f min, total %.1f min | peak tensor memory %.0f MB | out: %s",
  table.concat(parts, ", "), t_train / 60, t_all / 60, (medlua.mem().cpu_peak or 0) / 2 ^ 20, out))
