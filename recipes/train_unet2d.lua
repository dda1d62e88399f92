-- train_unet2d.lua: a 2-D U-Net for multi-organ CT segmentation on TotalSegmentator-layout data
-- (seed 004: train_unet.ipynb), natively.
--
-- Data: a TotalSegmentator-layout root (sXXXX/ct.nii.gz + sXXXX/segmentations/<structure>.nii.gz).
-- Without --data, OUT/data is made once from the sample patients with medlua.totalseg.split:
-- s0001 = data/samples/example_ct (train), s0002 = data/samples/example_ct_dicom (validation, the DICOM
-- series matched to its label map by slice position), and s0003 = ../shared/data/ct_lidc0001 (train)
-- when that folder exists. Every subject is cut into 2-D slices along --axis (RAS), windowed or clipped
-- and z-scored, resized to --target-shape and kept in memory; batches are cut from there with native
-- tensor ops (see lua/medlua/totalseg.lua). Slices without any chosen structure are kept with
-- probability --empty-weight per epoch.
--
-- Model: nets.UNet2D (encoder 32-64-128-256, bottleneck 512, skip connections, one output channel per
-- structure). Loss: BCEWithLogits (multi-label: structures may overlap) + --dice-weight x soft Dice.
-- Adam. Validation after every epoch: per-structure Dice of the validation subjects' slices (threshold
-- 0.5, NaN for a structure absent from a subject's labels, as TotalSegmentator evaluates).
--
-- Files in OUT: config.json (model, structures, label values, axis, target shape, intensity transform,
-- threshold: what recipes/analyze_segmentation.lua and totalseg.predict_volume need), label_map.json,
-- checkpoint_epochN.safetensors (every epoch), best.safetensors (best validation Dice),
-- last.safetensors (resume), training_history.json and training_history.png (loss and Dice curves),
-- metrics.csv/jsonl, steps.csv, curves.png and tb/ (medlua.train.fit's logs).
--
--   medlua recipes/train_unet2d.lua --structures liver,spleen,kidney_*,aorta --epochs 5 --target-shape 128
--   medlua recipes/train_unet2d.lua --data /data/Totalsegmentator_dataset --val-subjects s0011,s0012
--   medlua recipes/train_unet2d.lua --resume --epochs 10                  # continue OUT/last.safetensors
local medlua = require "medlua"
local optim = require "medlua.optim"
local losses = require "medlua.losses"
local train = require "medlua.train"
local cli = require "medlua.cli"
local path = require "medlua.path"
local json = require "medlua.json"
local log = require "medlua.log"
local plot = require "medlua.plot"
local nets = require "medlua.nets"
local totalseg = require "medlua.totalseg"

local args = cli.parse(arg, {
  description = "Train a 2-D U-Net (one sigmoid channel per structure) on TotalSegmentator-layout data. With no "
    .. "--data: the sample patients (data/samples, and ../shared/data/ct_lidc0001 when present) in OUT/data.",
  {"--data", "", "a TotalSegmentator-layout root (sXXXX/ct.nii.gz + segmentations/); '' = OUT/data from the samples"},
  {"--table", "data/samples/labels_total.tsv", "label table: value<TAB>name lines, or a CSV with structure,id"},
  {"--structures", "all", "structures (channels, in this order): names and globs, comma-separated, or all"},
  {"--val-subjects", "", "validation subjects, comma-separated (default: split=val in ROOT/meta.csv, else the last)"},
  {"--train-subjects", "", "training subjects (default: every other subject)"},
  {"--axis", 2, "slice axis in RAS: 0 sagittal, 1 coronal, 2 axial"},
  {"--target-shape", "256", "slice size: H,W or one number for a square (multiples of 16)"},
  {"--window", "", "CT window center,width (HU) mapped to [0, 1], e.g. 40,400; replaces --clip"},
  {"--clip", "-1000,1000", "clip HU to lo,hi, then z-score with the training slices' mean and std"},
  {"--empty-weight", 0.1, "probability that a slice without any chosen structure is used in an epoch"},
  {"--epochs", 5, "epochs"},
  {"--batch-size", 8, "slices per step"},
  {"--lr", 1e-3, "Adam learning rate"},
  {"--dice-weight", 0.0, "weight of a soft Dice term (sigmoid, batch Dice per channel) added to BCEWithLogits"},
  {"--features", "32,64,128,256", "U-Net encoder channels"},
  {"--bottleneck", 512, "U-Net bottleneck channels"},
  {"--threshold", 0.5, "probability threshold for Dice and predictions"},
  {"--steps-per-epoch", 0, "cap on the steps of an epoch (0 = all sampled slices)"},
  {"--val-batch-size", 16, "slices per forward pass in validation"},
  {"--seed", 0, "random seed (same seed, same run)"},
  {"--threads", 0, "compute threads (0 = all cores)"},
  {"--out", "out/unet2d", "output folder"},
  {"--resume", false, "continue from OUT/last.safetensors"},
  {"--no-final-eval", false, "skip the evaluation of best.safetensors on the validation CTs' own grids"},
  {"--quiet", false, "no progress bars"},
})

local t_start = medlua.clock()
if args.threads > 0 then medlua.threads(math.tointeger(args.threads)) end

local function die(msg) cli.die("train_unet2d", msg) end

local function try(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then die(r[2]) end
  return table.unpack(r, 2, r.n)
end

local split = cli.split

local function numbers(s, n, what) return cli.numbers(s, n, what, "train_unet2d") end

local function ints(s, what)
  local v = numbers(s, nil, what)
  for i, x in ipairs(v) do
    if x ~= math.floor(x) or x < 1 then die(string.format("--%s: '%s' must be positive integers", what, s)) end
    v[i] = math.tointeger(x)
  end
  return v
end

local function pos_int(x, what)
  if x ~= math.floor(x) or x < 1 then die(string.format("--%s must be a positive integer, got %s", what, tostring(x))) end
  return math.tointeger(x)
end

local exists = path.exists

local function rss_mb(field)
  local f = io.open("/proc/self/status", "r")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return (tonumber(s:match(field .. ":%s*(%d+)")) or 0) / 1024
end

-- ------------------------------------------------------------------ options
local root = totalseg.root()
local function find(p)
  if p == "" or p:sub(1, 1) == "/" or exists(p) or totalseg.is_dir(p) then return p end
  local alt = root .. "/" .. p
  if exists(alt) or totalseg.is_dir(alt) then return alt end
  return p
end

local tbl = try(totalseg.read_table, find(args.table))
local names = try(totalseg.select, tbl, args.structures)
local K = #names
if K > 255 then die("at most 255 structures per model") end
local axis = math.tointeger(args.axis)
if axis ~= 0 and axis ~= 1 and axis ~= 2 then die("--axis must be 0, 1 or 2") end
local features = ints(args.features, "features")
local bottleneck = pos_int(args.bottleneck, "bottleneck")
local div = 2 ^ #features // 1
local ts = ints(args.target_shape, "target-shape")
if #ts == 1 then ts = {ts[1], ts[1]} end
if #ts ~= 2 then die("--target-shape: expected H,W or one number") end
for _, s in ipairs(ts) do
  if s % div ~= 0 then
    die(string.format("--target-shape %s: both sizes must be multiples of %d (2^%d poolings)", args.target_shape, div,
      #features))
  end
end
local epochs = pos_int(args.epochs, "epochs")
local batch_size = pos_int(args.batch_size, "batch-size")
local val_bs = pos_int(args.val_batch_size, "val-batch-size")
if args.lr <= 0 then die("--lr must be positive") end
if args.empty_weight < 0 or args.empty_weight > 1 then die("--empty-weight must be in [0, 1]") end
if args.dice_weight < 0 then die("--dice-weight must be >= 0") end
if args.threshold <= 0 or args.threshold >= 1 then die("--threshold must be in (0, 1)") end
local seed = math.tointeger(args.seed) or die("--seed must be an integer")

local cfg = {
  model = {type = "UNet2D", in_channels = 1, out_channels = K, features = features, bottleneck = bottleneck},
  structures = names, label_values = {}, axis = axis, target_shape = ts, threshold = args.threshold,
}
for i, n in ipairs(names) do cfg.label_values[i] = tbl.by_name[n] end
if args.window ~= "" then
  cfg.window = numbers(args.window, 2, "window")
  if cfg.window[2] <= 0 then die("--window: the width must be positive") end
else
  cfg.clip = numbers(args.clip, 2, "clip")
  if cfg.clip[2] <= cfg.clip[1] then die("--clip: lo must be below hi") end
  cfg.normalize = "zscore"
end

-- ------------------------------------------------------------------ resume: refuse a bad checkpoint first
local out = args.out
local last_path = out .. "/last.safetensors"
local resume_epoch = 0
if args.resume and exists(last_path) then
  local function reason(err)
    local r = tostring(err):gsub("^[^:]*%.lua:%d+: ", "")
    if r:sub(1, #last_path + 2) == last_path .. ": " then r = r:sub(#last_path + 3) end
    return r
  end
  local ok, meta = pcall(train.read_checkpoint, last_path)
  if not ok then die(string.format("%s: cannot resume (a damaged checkpoint?): %s", last_path, reason(meta))) end
  local okn, err = pcall(train.load_model, nets.UNet2D(cfg.model), last_path)
  if not okn then
    die(string.format("%s: cannot resume: the checkpoint does not fit this model (%d structures, features %s, " ..
      "bottleneck %d): %s", last_path, K, table.concat(features, "-"), bottleneck, reason(err)))
  end
  if exists(out .. "/config.json") then
    local okc, old = pcall(json.read, out .. "/config.json")
    if okc and type(old.structures) == "table" and table.concat(old.structures, ",") ~= table.concat(names, ",") then
      die(string.format("%s: cannot resume: it was trained on other structures (%s) than --structures gives (%s)",
        last_path, table.concat(old.structures, ","), table.concat(names, ",")))
    end
  end
  resume_epoch = tonumber(meta.epoch) or 0
  if meta.epoch_complete ~= 1 then resume_epoch = resume_epoch - 1 end
end

-- ------------------------------------------------------------------ data
local data_root = args.data ~= "" and find(args.data) or (out .. "/data")

-- the default dataset: the sample patients split into the TotalSegmentator layout (once)
local function make_default_data(dir)
  local samples = root .. "/data/samples"
  local lidc = root .. "/../shared/data/ct_lidc0001"
  local made = false
  local items = {
    {"s0001", samples .. "/example_ct.nii.gz", samples .. "/example_seg_full_fast.nii.gz", nil, "train",
      "data/samples/example_ct.nii.gz"},
    {"s0002", samples .. "/example_ct_dicom", samples .. "/example_seg_dicom.nii.gz", nil, "val",
      "data/samples/example_ct_dicom (DICOM)"},
  }
  if totalseg.is_dir(lidc .. "/dicom_full") then
    items[#items + 1] = {"s0003", lidc .. "/dicom_full", lidc .. "/totalseg_mask_full133.nii.gz",
      lidc .. "/totalseg_mask_structures.csv", "train", "../shared/data/ct_lidc0001 (DICOM)"}
  else
    print("default data: ../shared/data/ct_lidc0001 not found: skipped (two sample patients only)")
  end
  for _, it in ipairs(items) do
    local sdir = dir .. "/" .. it[1]
    if not exists(sdir .. "/ct.nii.gz") then
      local t0 = medlua.clock()
      local t = it[4] and try(totalseg.read_table, it[4]) or tbl
      -- the standard names only (the LIDC table has an extra 'carpal' at 117 and costal_cartilages at 118)
      local sel = {}
      for _, n in ipairs(t.names) do if tbl.by_name[n] then sel[#sel + 1] = n end end
      local r = try(totalseg.split, it[2], it[3], t, dir, it[1], {structures = sel})
      print(string.format("default data: %s <- %s: %d masks (%d not empty) in %.1f s", sdir, it[6], #r.structures,
        #r.present, medlua.clock() - t0))
      made = true
    end
  end
  if made or not exists(dir .. "/meta.csv") then
    local lines = {"image_id;source;split"}
    for _, it in ipairs(items) do lines[#lines + 1] = string.format("%s;%s;%s", it[1], it[6], it[5]) end
    log.write_atomic(dir .. "/meta.csv", table.concat(lines, "\n") .. "\n", "train_unet2d")
  end
end

if args.data == "" then try(make_default_data, data_root) end
local subjects = try(totalseg.list_subjects, data_root)
if #subjects == 0 then die(data_root .. ": no subject folders (sXXXX/ct.nii.gz + segmentations/)") end
local known = {}
for _, s in ipairs(subjects) do known[s] = true end

-- meta.csv (TotalSegmentator's: image_id;...;split) marks validation subjects
local function meta_split()
  local f = io.open(data_root .. "/meta.csv", "r")
  if not f then return {} end
  local header = f:read("l") or ""
  local sep = header:find(";", 1, true) and ";" or ","
  local cols = {}
  for c in (header .. sep):gmatch("([^" .. sep .. "]*)" .. sep) do cols[#cols + 1] = c end
  local id_col, split_col
  for i, c in ipairs(cols) do
    if c == "image_id" then id_col = i end
    if c == "split" then split_col = i end
  end
  local out = {}
  if id_col and split_col then
    for line in f:lines() do
      local v = {}
      for c in (line .. sep):gmatch("([^" .. sep .. "]*)" .. sep) do v[#v + 1] = c end
      if v[id_col] and v[split_col] then out[v[id_col]] = v[split_col] end
    end
  end
  f:close()
  return out
end

local val_names, train_names = {}, {}
if args.val_subjects ~= "" then
  val_names = split(args.val_subjects)
else
  local ms = meta_split()
  for _, s in ipairs(subjects) do if ms[s] == "val" then val_names[#val_names + 1] = s end end
  if #val_names == 0 and #subjects > 1 then val_names = {subjects[#subjects]} end
end
local is_val = {}
for _, s in ipairs(val_names) do
  if not known[s] then
    die(string.format("--val-subjects: no subject '%s' in %s (subjects: %s)", s, data_root, table.concat(subjects, ", ")))
  end
  is_val[s] = true
end
if args.train_subjects ~= "" then
  train_names = split(args.train_subjects)
  for _, s in ipairs(train_names) do
    if not known[s] then
      die(string.format("--train-subjects: no subject '%s' in %s (subjects: %s)", s, data_root, table.concat(subjects, ", ")))
    end
    if is_val[s] then die(string.format("subject %s is both a training and a validation subject", s)) end
  end
else
  for _, s in ipairs(subjects) do if not is_val[s] then train_names[#train_names + 1] = s end end
end
if #train_names == 0 then die("no training subject (every subject is a validation subject)") end

print(string.format("medlua %s | threads %d | %d structures: %s", medlua.version, medlua.threads(), K,
  K <= 20 and table.concat(names, ", ") or (table.concat(names, ", ", 1, 12) .. ", ...")))
print(string.format("data %s: train %s | val %s", data_root, table.concat(train_names, ","),
  #val_names > 0 and table.concat(val_names, ",") or "none"))

-- load every subject (masks checked against their CT's grid), the intensity statistics, the slices
local t_data = medlua.clock()
local loaded = {}
for _, s in ipairs(train_names) do loaded[#loaded + 1] = {s, false} end
for _, s in ipairs(val_names) do loaded[#loaded + 1] = {s, true} end
local subj_data = {}
for _, it in ipairs(loaded) do
  local t0 = medlua.clock()
  local sd = try(totalseg.load_subject, data_root .. "/" .. it[1], names)
  sd.is_val = it[2]
  subj_data[#subj_data + 1] = sd
  local present = 0
  for _, n in ipairs(names) do if (sd.voxels[n] or 0) > 0 then present = present + 1 end end
  print(string.format("%s %-6s %s, %s mm, %s: %d of %d structures present (%.1f s)", it[2] and "val  " or "train", it[1],
    table.concat(sd.ct.shape, "x"), table.concat((function()
      local sp = {}
      for i, v in ipairs(sd.ct.spacing) do sp[i] = string.format("%.3g", v) end
      return sp
    end)(), "x"), sd.ct.axcodes, present, K, medlua.clock() - t0))
end
if cfg.clip then
  local s1, s2, n = 0, 0, 0
  for _, sd in ipairs(subj_data) do
    if not sd.is_val then
      local a, b, c = totalseg.clip_stats(sd.ct.data, cfg.clip[1], cfg.clip[2])
      s1, s2, n = s1 + a, s2 + b, n + c
    end
  end
  cfg.intensity_mean = s1 / n
  cfg.intensity_std = math.sqrt(math.max(s2 / n - (s1 / n) ^ 2, 1e-12))
end
local train_prep, val_prep, val_full = {}, {}, {}
for _, sd in ipairs(subj_data) do
  local p = try(totalseg.prepare_slices, sd, cfg, K)
  if sd.is_val then
    val_prep[#val_prep + 1] = p
    val_full[#val_full + 1] = sd -- kept for the final evaluation on the CT's own grid
  else
    train_prep[#train_prep + 1] = p
    sd.ct, sd.layers = nil, nil
  end
  collectgarbage()
end
subj_data = nil
collectgarbage()
local H, W = ts[1], ts[2]
local train_bank = totalseg.slice_bank(train_prep, K, H, W)
local val_bank = totalseg.slice_bank(val_prep, K, H, W)
train_prep = nil
local n_full = 0
for _, v in ipairs(train_bank.nonempty) do if v then n_full = n_full + 1 end end
local loader = try(totalseg.SliceLoader, train_bank, {batch_size = batch_size, empty_weight = args.empty_weight,
  seed = seed})
print(string.format("slices %dx%d along axis %d: train %d (%d with a structure, %d empty: %d per epoch), val %d | " ..
  "%s | data ready in %.1f s", H, W, axis, train_bank.n, n_full, train_bank.n - n_full, loader.n_empty_used, val_bank.n,
  cfg.window and string.format("window %g,%g", cfg.window[1], cfg.window[2]) or
    string.format("clip %g,%g + z-score (mean %.1f, std %.1f)", cfg.clip[1], cfg.clip[2], cfg.intensity_mean,
      cfg.intensity_std), medlua.clock() - t_data))

cfg.label_table = args.table
cfg.data = data_root
cfg.train_subjects, cfg.val_subjects = json.array(train_names), json.array(val_names)
cfg.empty_weight, cfg.batch_size, cfg.lr, cfg.dice_weight, cfg.seed = args.empty_weight, batch_size, args.lr,
  args.dice_weight, seed

-- ------------------------------------------------------------------ model, loss, optimizer
medlua.manual_seed(seed)
local net = nets.UNet2D(cfg.model)
print(string.format("UNet2D features %s, bottleneck %d, %d outputs: %d parameters", table.concat(features, "-"), bottleneck,
  K, net:num_parameters()))
local bce = losses.BCEWithLogitsLoss{}
local dice_loss = args.dice_weight > 0 and losses.DiceLoss{sigmoid = true, batch = true} or nil
local function loss_fn(logits, y)
  local l = bce(logits, y)
  if dice_loss then l = l + dice_loss(logits, y) * args.dice_weight end
  return l
end
local opt = optim.Adam(net:parameters(), {lr = args.lr})
local spe = args.steps_per_epoch > 0 and pos_int(args.steps_per_epoch, "steps-per-epoch") or nil

-- ------------------------------------------------------------------ validation
local history = {epochs = {}}
local cur_val -- per-structure Dice of the last validation
local function validate(model)
  local mean_sum, mean_n = 0, 0
  local per = {}
  for k = 1, K do per[k] = {} end
  local loss_sum, loss_n = 0, 0
  for _, s in ipairs(val_bank.subjects) do
    local inter, ps, tsum = {}, {}, {}
    for k = 1, K do inter[k], ps[k], tsum[k] = 0, 0, 0 end
    for b0 = s.first, s.first + s.n - 1, val_bs do
      local idx = {}
      for i = b0, math.min(b0 + val_bs - 1, s.first + s.n - 1) do idx[#idx + 1] = i end
      local batch = totalseg.bank_batch(val_bank, idx)
      local logits = model:forward(batch[1])
      loss_sum = loss_sum + loss_fn(logits, batch[2]):item() * #idx
      loss_n = loss_n + #idx
      local _, i2, p2, t2 = totalseg.dice_per_structure(logits:sigmoid(), batch[2], args.threshold)
      for k = 1, K do inter[k], ps[k], tsum[k] = inter[k] + i2[k], ps[k] + p2[k], tsum[k] + t2[k] end
    end
    for k = 1, K do
      if tsum[k] > 0 then table.insert(per[k], 2 * inter[k] / (ps[k] + tsum[k])) end
    end
  end
  local dice = {}
  for k = 1, K do
    local s, n = 0, 0
    for _, v in ipairs(per[k]) do s = s + v; n = n + 1 end
    dice[k] = n > 0 and s / n or 0 / 0
    if n > 0 then mean_sum = mean_sum + dice[k]; mean_n = mean_n + 1 end
  end
  cur_val = dice
  return {val_dice = mean_n > 0 and mean_sum / mean_n or 0, val_loss = loss_n > 0 and loss_sum / loss_n or 0 / 0}
end

-- ------------------------------------------------------------------ history files
local function nan_to_null(v) if v ~= v then return json.null end return v end

local function write_history()
  local h = {structures = names, epoch = {}, train_loss = {}, val_loss = {}, val_dice = {}, epoch_time_s = {},
    val_dice_per_structure = {}, epochs = {}}
  for k = 1, K do h.val_dice_per_structure[names[k]] = json.array{} end
  for i, e in ipairs(history.epochs) do
    h.epoch[i] = e.epoch
    h.train_loss[i] = nan_to_null(e.train_loss)
    h.val_loss[i] = nan_to_null(e.val_loss or 0 / 0)
    h.val_dice[i] = nan_to_null(e.val_dice or 0 / 0)
    h.epoch_time_s[i] = e.time
    for k = 1, K do h.val_dice_per_structure[names[k]][i] = nan_to_null(e.per and e.per[k] or 0 / 0) end
    local row = {epoch = e.epoch, train_loss = nan_to_null(e.train_loss), val_loss = nan_to_null(e.val_loss or 0 / 0),
      val_dice = nan_to_null(e.val_dice or 0 / 0), time_s = e.time, checkpoint = e.checkpoint}
    h.epochs[i] = row
  end
  h.best_epoch, h.best_val_dice = history.best_epoch, history.best_val_dice and nan_to_null(history.best_val_dice)
  h.epoch_time_note = "seconds per epoch, training + validation, on this machine"
  json.write(out .. "/training_history.json", h)
  -- curves: losses; Dice (mean, and per structure when few)
  local ex, tl, vl, vd = {}, {}, {}, {}
  for i, e in ipairs(history.epochs) do
    ex[i], tl[i], vl[i], vd[i] = e.epoch, e.train_loss, e.val_loss or 0 / 0, e.val_dice or 0 / 0
  end
  local loss_series = {{name = "train loss", x = ex, y = tl}}
  if #val_names > 0 then loss_series[2] = {name = "val loss", x = ex, y = vl} end
  local dice_series = {}
  if #val_names > 0 then
    dice_series[1] = {name = "val Dice (mean)", x = ex, y = vd, width = 3, color = {20, 20, 20}}
    if K <= 10 then
      for k = 1, K do
        local y = {}
        for i, e in ipairs(history.epochs) do y[i] = e.per and e.per[k] or 0 / 0 end
        local any = false
        for _, v in ipairs(y) do if v == v then any = true end end
        if any then dice_series[#dice_series + 1] = {name = names[k], x = ex, y = y, width = 1} end
      end
    end
  end
  local panels = {{title = "loss (BCE" .. (dice_loss and string.format(" + %g x Dice)", args.dice_weight) or ")"),
    xlabel = "epoch", ylabel = "loss", series = loss_series}}
  if #dice_series > 0 then
    panels[2] = {title = string.format("validation Dice (threshold %g)", args.threshold), xlabel = "epoch",
      ylabel = "Dice", series = dice_series, ylim = {0, 1}}
  end
  local ok, err = pcall(plot.save_png, out .. "/training_history.png", {panels = panels, cols = #panels,
    width = 560 * #panels, height = 420, title = string.format("train_unet2d: %d structures, %dx%d slices", K, H, W)})
  if not ok then io.stderr:write("train_unet2d: training_history.png: ", tostring(err), "\n") end
end

-- ------------------------------------------------------------------ train, one epoch per train.fit call
try(log.mkdir_p, out, "train_unet2d")
json.write(out .. "/config.json", cfg, {indent = 2, key_order = {"model", "structures", "label_values", "axis",
  "target_shape", "window", "clip", "normalize", "intensity_mean", "intensity_std", "threshold"}})
local lm = {structures = {}, label_table = args.table}
for k, n in ipairs(names) do lm.structures[k] = {name = n, channel = k - 1, value = tbl.by_name[n]} end
json.write(out .. "/label_map.json", lm, {indent = 2, key_order = {"name", "channel", "value"}})

if resume_epoch > 0 and exists(out .. "/training_history.json") then
  local ok, h = pcall(json.read, out .. "/training_history.json")
  if ok and type(h.epochs) == "table" then
    for i, row in ipairs(h.epochs) do
      if type(row.epoch) == "number" and row.epoch <= resume_epoch then
        local per = {}
        for k = 1, K do
          local v = h.val_dice_per_structure and h.val_dice_per_structure[names[k]] and
            h.val_dice_per_structure[names[k]][i]
          per[k] = (v == nil or v == json.null) and 0 / 0 or v
        end
        local function num(v) return (v == nil or v == json.null) and 0 / 0 or v end
        history.epochs[#history.epochs + 1] = {epoch = row.epoch, train_loss = num(row.train_loss),
          val_loss = num(row.val_loss), val_dice = num(row.val_dice), time = row.time_s, per = per,
          checkpoint = row.checkpoint}
      end
    end
    if type(h.best_epoch) == "number" and h.best_epoch <= resume_epoch then
      history.best_epoch = h.best_epoch
      if type(h.best_val_dice) == "number" then history.best_val_dice, history.best_mon = h.best_val_dice, h.best_val_dice end
    end
  end
end

local function copy_checkpoint(src, dst)
  local f = assert(io.open(src, "rb"))
  local bytes = f:read("a")
  f:close()
  log.write_atomic(dst, bytes, "train_unet2d")
end

print(string.format("training: %d epochs of %d steps (batch %d), Adam lr %g, BCEWithLogits%s -> %s", epochs,
  spe and math.min(spe, loader:len()) or loader:len(), batch_size, args.lr,
  dice_loss and string.format(" + %g x Dice", args.dice_weight) or "", out))

-- One train.fit run. Epoch-end bookkeeping happens in val_fn (called at the end of every epoch, before
-- train.fit writes last.safetensors); checkpoint_epochN.safetensors is a copy of last.safetensors taken at
-- the first step of epoch N + 1 (last.safetensors then still holds the end of epoch N) and after the run.
local ep = {loss = 0, n = 0, t0 = medlua.clock()}
local epoch_times = {}
local function ckpt_name(e) return string.format("checkpoint_epoch%d.safetensors", e) end
local function epoch_end(model, epoch)
  local t_train = medlua.clock() - ep.t0
  local m
  if #val_names > 0 then m = validate(model) else m = {train_loss = ep.n > 0 and ep.loss / ep.n or 0 / 0} end
  local dt = medlua.clock() - ep.t0
  epoch_times[#epoch_times + 1] = dt
  local entry = {epoch = epoch, train_loss = ep.n > 0 and ep.loss / ep.n or 0 / 0, val_loss = m.val_loss,
    val_dice = m.val_dice, time = dt, train_time = t_train, per = cur_val, checkpoint = ckpt_name(epoch)}
  for i = #history.epochs, 1, -1 do -- a resumed run may redo an epoch that was logged
    if history.epochs[i].epoch >= epoch then table.remove(history.epochs, i) end
  end
  history.epochs[#history.epochs + 1] = entry
  local mon = #val_names > 0 and m.val_dice or -entry.train_loss
  if mon == mon and (history.best_mon == nil or mon > history.best_mon) then
    history.best_mon, history.best_epoch = mon, epoch
    history.best_val_dice = m.val_dice
  end
  write_history()
  local parts = {}
  if cur_val and K <= 20 then
    for k = 1, K do parts[#parts + 1] = string.format("%s %.3f", names[k], cur_val[k]) end
  end
  print(string.format("epoch %d/%d: %.1f s (train %.1f s), train loss %.4f%s%s | peak RSS %.0f MB", epoch, epochs, dt,
    t_train, entry.train_loss, m.val_dice and string.format(", val Dice %.4f", m.val_dice) or "",
    #parts > 0 and (" (" .. table.concat(parts, ", ") .. ")") or "", rss_mb("VmHWM")))
  ep.loss, ep.n, ep.t0 = 0, 0, medlua.clock()
  return m
end

local summary = try(train.fit, {
  model = net, optimizer = opt, loss_fn = loss_fn, train_loader = loader, epochs = epochs, steps_per_epoch = spe,
  val_fn = epoch_end,
  monitor = #val_names > 0 and "val_dice" or "train_loss", mode = #val_names > 0 and "max" or "min",
  out_dir = out, resume = args.resume, seed = seed, quiet = args.quiet, name = "train_unet2d",
  on_step = function(info)
    if info.step_in_epoch == 1 and info.epoch > 1 then
      copy_checkpoint(last_path, out .. "/" .. ckpt_name(info.epoch - 1))
    end
    ep.loss, ep.n = ep.loss + info.loss, ep.n + 1
  end,
})
if summary.epochs >= 1 and exists(last_path) then
  local ok, meta = pcall(train.read_checkpoint, last_path)
  if ok and meta.epoch_complete == 1 then copy_checkpoint(last_path, out .. "/" .. ckpt_name(meta.epoch)) end
end
write_history()

-- ------------------------------------------------------------------ final evaluation on the CTs' own grids
local best_path = out .. "/best.safetensors"
if not exists(best_path) then best_path = last_path end
local final = {}
if #val_full > 0 and not args.no_final_eval and exists(best_path) then
  try(train.load_model, net, best_path)
  net:eval()
  print(string.format("evaluation of %s on the validation CTs (their own grids, threshold %g):", best_path, args.threshold))
  for _, sd in ipairs(val_full) do
    local nvox = sd.ct.shape[1] * sd.ct.shape[2] * sd.ct.shape[3]
    local group = math.max(1, math.min(K, math.floor(2.5e8 / nvox)))
    local dice = {}
    -- the ground-truth layers as float32 in the predictions' memory order (C-contiguous [X, Y, Z])
    local gl = {}
    for i, L in ipairs(sd.layers) do gl[i] = L:contiguous():float() end
    for c0 = 1, K, group do
      local chans = {}
      for k = c0, math.min(K, c0 + group - 1) do chans[#chans + 1] = k end
      local probs = try(totalseg.predict_volume, net, sd.ct, cfg, {channels = chans, batch_size = val_bs})
      for j, k in ipairs(chans) do
        local p = probs:select(0, j - 1):gt(args.threshold):float()
        local g = gl[1] and gl[1]:eq(k):float() or medlua.zeros(sd.ct.shape)
        for i = 2, #gl do g = g + gl[i]:eq(k):float() end
        local gs, ps = g:sum():item(), p:sum():item()
        dice[k] = gs > 0 and 2 * (p * g):sum():item() / (ps + gs) or 0 / 0
      end
      probs = nil
      collectgarbage()
    end
    final[sd.name] = dice
    local parts = {}
    for k = 1, K do if dice[k] == dice[k] then parts[#parts + 1] = string.format("%s %.3f", names[k], dice[k]) end end
    print(string.format("  %s: %s", sd.name, #parts > 0 and table.concat(parts, ", ") or "no structure present"))
  end
end

local total = medlua.clock() - t_start
local mean_epoch = 0
for _, t in ipairs(epoch_times) do mean_epoch = mean_epoch + t end
mean_epoch = #epoch_times > 0 and mean_epoch / #epoch_times or 0
local best_str
if #val_names > 0 then
  best_str = string.format("best val Dice %s at epoch %s", history.best_val_dice and string.format("%.4f",
    history.best_val_dice) or "n/a", tostring(history.best_epoch or "n/a"))
else
  best_str = string.format("no validation subject: best.safetensors has the lowest training loss (epoch %s)",
    tostring(history.best_epoch or "n/a"))
end
print(string.format("summary: %d epochs%s, %.1f s per epoch (training + validation), total %.1f min | %s | peak RSS " ..
  "%.0f MB | out: %s", #epoch_times, resume_epoch > 0 and (" after epoch " .. resume_epoch) or "", mean_epoch, total / 60,
  best_str, rss_mb("VmHWM"), out))
