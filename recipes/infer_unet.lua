-- infer_unet.lua: segment new images with a model trained by train_unet.lua (seed 002: inference.py).
--
-- Each image is reoriented and resampled as in training, segmented by sliding-window inference
-- (Gaussian blending, optional flip test-time augmentation), and the class probabilities are
-- resampled back to the image's own voxel grid before the argmax: the label map written has the
-- input's shape, affine and axis order, so it overlays the image in 3D Slicer or ITK-SNAP.
--
--   medlua recipes/infer_unet.lua                                     # the default: validation patient
--   medlua recipes/infer_unet.lua --model out/unet_spine --image ct.nii.gz --out preds
--   medlua recipes/infer_unet.lua --images folder_of_cts --tta
--   medlua recipes/infer_unet.lua --image ct.nii.gz --label seg.nii.gz   # also prints Dice / HD95
local medlua = require "medlua"
local cli = require "medlua.cli"
local data = require "medlua.data"
local json = require "medlua.json"
local log = require "medlua.log"
local seg = require "medlua.segment"

local args = cli.parse(arg, {
  description = "Segment images with a 3D U-Net trained by train_unet.lua; writes NIfTI label maps in each "
    .. "input's own geometry.",
  {"--model", "out/unet_spine", "training output folder (config.json + best.safetensors)"},
  {"--checkpoint", "", "weights file (default: MODEL/best.safetensors, else MODEL/last.safetensors)"},
  {"--image", "data/samples/example_ct_dicom", "image(s): NIfTI files or DICOM folders, comma-separated"},
  {"--label", "", "ground-truth label map(s) for evaluation, comma-separated, same order ('' = none)"},
  {"--images", "", "a folder of NIfTI images to segment (replaces --image)"},
  {"--datalist", "", "a MONAI datalist JSON; segments the entries of --key"},
  {"--key", "validation", "datalist key"},
  {"--out", "", "output folder (default: MODEL/predictions)"},
  {"--tta", false, "flip test-time augmentation (average over flips of each axis)"},
  {"--sw-batch-size", 0, "windows per forward pass (0 = as trained)"},
  {"--overlap", -1.0, "sliding-window overlap (-1 = as trained, MONAI default 0.25)"},
  {"--blend", "", "window blending: gaussian or constant ('' = as trained)"},
  {"--postprocess", "", "largest_foreground, largest_per_class or none ('' = as trained)"},
  {"--overlay", true, "also write an overlay PNG per case (with --label: image | GT | prediction)"},
  {"--threads", 0, "compute threads (0 = all cores)"},
})
if args.threads > 0 then medlua.threads(args.threads) end

local function die(msg) cli.die("infer_unet", msg) end

local split = cli.split

local mdir = seg.find(args.model)
local ok, cfg = pcall(seg.load_config, mdir .. "/config.json")
if not ok then die(cfg) end
if args.sw_batch_size > 0 then cfg.sw_batch_size = math.tointeger(args.sw_batch_size) end
if args.overlap >= 0 then
  if args.overlap >= 1 then die("--overlap must be in [0, 1)") end
  cfg.overlap = args.overlap
end
if args.blend ~= "" then
  if args.blend ~= "gaussian" and args.blend ~= "constant" then die("--blend must be gaussian or constant") end
  cfg.blend = args.blend
end
if args.postprocess ~= "" then
  if args.postprocess ~= "none" and args.postprocess ~= "largest_foreground" and args.postprocess ~= "largest_per_class" then
    die("--postprocess must be largest_foreground, largest_per_class or none")
  end
  cfg.postprocess = args.postprocess
end
local lm = cfg.labels

local ckpt = args.checkpoint ~= "" and seg.find(args.checkpoint) or (mdir .. "/best.safetensors")
if args.checkpoint == "" and not io.open(ckpt, "rb") then ckpt = mdir .. "/last.safetensors" end
local net = seg.build_model(cfg)
local okw, ew = pcall(seg.load_weights, net, ckpt)
if not okw then die(ew) end
net:eval()

-- cases
local items = {}
if args.datalist ~= "" then
  local okd, list = pcall(data.load_datalist, seg.find(args.datalist), args.key)
  if not okd then die(list) end
  items = list
elseif args.images ~= "" then
  local okf, list = pcall(data.pair_folder, seg.find(args.images), nil)
  if not okf then die(list) end
  items = list
else
  local I, L = split(args.image), split(args.label)
  if #L > 0 and #L ~= #I then die(string.format("%d images but %d label maps", #I, #L)) end
  for i, p in ipairs(I) do items[i] = {image = p, label = L[i]} end
end
if #items == 0 then die("no image to segment") end

local out = args.out ~= "" and args.out or (mdir .. "/predictions")
log.mkdir_p(out, "infer_unet")
print(string.format("model %s (%s), classes: %s, spacing %s mm, roi %s, %s blending%s", ckpt,
  table.concat(cfg.model.channels, "-"), table.concat(lm.names, ", "), table.concat(cfg.spacing, "x"),
  table.concat(cfg.roi, "x"), cfg.blend or "gaussian", args.tta and ", flip TTA" or ""))

local results = {}
for i, it in ipairs(items) do
  local okc, c = pcall(seg.load_case, it, lm)
  if not okc then die(c) end
  local t0 = medlua.clock()
  local pred = seg.predict(net, c.image, cfg, {tta = args.tta, progress = medlua.isatty and medlua.isatty(1)})
  local dt = medlua.clock() - t0
  local pp = string.format("%s/%s_pred.nii.gz", out, c.name)
  pred:save(pp)
  local line = string.format("[%d/%d] %s: %s -> %s (%.1f s)", i, #items, c.name, table.concat(c.image.shape, "x"), pp, dt)
  print(line)
  local r = {name = c.name, image = c.image_path, prediction = pp, seconds = dt}
  local gp
  if c.label then
    local rows = seg.evaluate(pred, c.label, lm)
    print(seg.format_table(rows, "  against " .. c.label_path))
    r.label, r.classes = c.label_path, rows
    gp = string.format("%s/%s_gt.nii.gz", out, c.name)
    c.label:save(gp)
  end
  if args.overlay then
    local png = string.format("%s/%s.png", out, c.name)
    local cmd = string.format("%q %q --image %q --pred %q %s --label-map %q --out %q --slices auto > /dev/null 2>&1",
      arg[-1] or "medlua", seg.root() .. "/recipes/visualize_predictions.lua", c.image_path, pp,
      gp and string.format("--label %q", gp) or "", mdir .. "/label_map.json", png)
    if os.execute(cmd) then print("  overlay: " .. png); r.overlay = png end
  end
  results[#results + 1] = r
end
json.write(out .. "/inference.json", {checkpoint = ckpt, tta = args.tta, cases = results})
