-- Smoke runs of train_unet.lua and infer_unet.lua on the real sample CTs (a tiny UNet and a few steps),
-- and the bad inputs that must stop them before training starts.
local T = require "medlua.test"
local volume = require "medlua.volume"
local json = require "medlua.json"
local exe = arg[-1]

local run = T.run_cmd

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  return d
end

local exists = require("medlua.path").exists

local TINY = "--roi 32 --channels 4,8,16 --strides 2,2 --num-res-units 1 --spacing 4 --batch-size 2 --workers 2 --quiet"
local dir = tmpdir()

T.case("train_unet: tiny model on the sample CTs writes checkpoints, logs, predictions and overlays", function()
  local out, code = run(string.format("%s recipes/train_unet.lua %s --steps 6 --val-every 3 --out %s", exe, TINY, dir))
  T.eq(code, 0, out)
  for _, f in ipairs{"best.safetensors", "last.safetensors", "config.json", "label_map.json", "metrics.csv",
    "metrics.jsonl", "curves.png", "results.json", "predictions/example_ct_dicom_pred.nii.gz",
    "overlays/example_ct_dicom.png"} do
    T.ok(exists(dir .. "/" .. f), "missing " .. f .. "\n" .. out)
  end
  T.ok(out:find("vertebrae", 1, true) and out:find("spinal_cord", 1, true) and out:find("HD95", 1, true), out)
  T.ok(out:find("summary: vertebrae Dice", 1, true), out)
  -- the prediction has the DICOM series' own geometry (LPS, 512x512x20)
  local img = volume.load("data/samples/example_ct_dicom")
  local pred = volume.load(dir .. "/predictions/example_ct_dicom_pred.nii.gz")
  T.eq(table.concat(pred.shape, "x"), "512x512x20")
  T.eq(pred.axcodes, img.axcodes)
  T.ok((pred.affine - img.affine):abs():amax():item() < 1e-3, "prediction affine differs from the image's")
  T.ok(pred.data:amax():item() <= 2 and pred.data:amin():item() >= 0, "class values out of range")
  local lm = json.read(dir .. "/label_map.json")
  T.eq(table.concat(lm.names, ","), "background,vertebrae,spinal_cord")
  local res = json.read(dir .. "/results.json")
  T.eq(#res.cases, 1)
  T.eq(#res.cases[1].classes, 2)
end)

T.case("infer_unet: the trained model segments the validation patient again, same labels as training's", function()
  local pdir = dir .. "/infer"
  local out, code = run(string.format("%s recipes/infer_unet.lua --model %s --image data/samples/example_ct_dicom " ..
    "--label data/samples/example_seg_dicom.nii.gz --out %s", exe, dir, pdir))
  T.eq(code, 0, out)
  T.ok(out:find("Dice", 1, true), out)
  local a = volume.load(pdir .. "/example_ct_dicom_pred.nii.gz")
  local b = volume.load(dir .. "/predictions/example_ct_dicom_pred.nii.gz")
  T.eq((a.data:float() - b.data:float()):abs():amax():item(), 0, "inference differs from the training recipe's")
  T.ok(exists(pdir .. "/example_ct_dicom.png"), "overlay missing")
  T.ok(exists(pdir .. "/inference.json"), "inference.json missing")
end)

T.case("train_unet --resume continues from last.safetensors", function()
  local out, code = run(string.format("%s recipes/train_unet.lua %s --steps 8 --val-every 4 --out %s --resume", exe, TINY, dir))
  T.eq(code, 0, out)
  local rows = 0
  for line in io.lines(dir .. "/steps.csv") do if line:match("^%d") then rows = rows + 1 end end
  T.eq(rows, 8, "steps.csv should hold 8 steps after resuming from 6")
end)

-- every bad input must be refused before training starts (no progress line, no step logged)
local function refused(cmd, needle)
  local out, code = run(cmd)
  T.eq(code, 1, out)
  T.ok(out:find(needle, 1, true), "expected '" .. needle .. "' in: " .. out)
  T.ok(not out:find("step/s", 1, true) and not out:find("validation epoch", 1, true), "training started: " .. out)
  return out
end

T.case("train_unet: bad inputs are refused before training", function()
  local bad = tmpdir()
  local base = string.format("%s recipes/train_unet.lua %s --steps 2 --out %s", exe, TINY, bad)
  -- label from the other patient: another grid
  refused(base .. " --train-label data/samples/example_seg_dicom.nii.gz", "does not match the image")
  -- missing label file
  refused(base .. " --train-label /nonexistent/seg.nii.gz", "/nonexistent/seg.nii.gz: label file not found")
  -- a class whose values are absent
  refused(base .. " --labels vertebrae=26-50,kidney_cyst=200", "kidney_cyst")
  -- label values outside the label map when labels are used as class indices
  refused(base .. " --labels none --num-classes 3", "label value")
  -- ROI larger than the image in every axis
  refused(base .. " --roi 512 --spacing 4", "larger than the image")
  -- a checkpoint from another architecture
  local out, code = run(string.format("%s recipes/train_unet.lua %s --steps 1 --val-image '' --out %s", exe, TINY, bad))
  T.eq(code, 0, out)
  refused(string.format("%s recipes/train_unet.lua --roi 32 --channels 4,8,16,32 --strides 2,2,2 --spacing 4 --steps 2 " ..
    "--val-image '' --resume --out %s --quiet", exe, bad), "checkpoint does not fit this model")
  -- a structure name not in the label table
  refused(base .. " --labels bones=vertebra_Z9", "no structure named")
  os.execute("rm -rf '" .. bad .. "'")
end)

T.case("infer_unet: bad inputs", function()
  local out, code = run(string.format("%s recipes/infer_unet.lua --model /nonexistent/run", exe))
  T.eq(code, 1, out)
  T.ok(out:find("/nonexistent/run/config.json", 1, true), out)
  out, code = run(string.format("%s recipes/infer_unet.lua --model %s --image /nonexistent/ct.nii.gz", exe, dir))
  T.eq(code, 1, out)
  T.ok(out:find("/nonexistent/ct.nii.gz", 1, true), out)
  out, code = run(string.format("%s recipes/infer_unet.lua --model %s --checkpoint tests/ref/golden_conv.safetensors", exe, dir))
  T.eq(code, 1, out)
  T.ok(out:find("checkpoint does not fit this model", 1, true), out)
end)

T.case("train_unet / infer_unet --help", function()
  for _, r in ipairs{"train_unet", "infer_unet"} do
    local out, code = run(string.format("%s recipes/%s.lua --help", exe, r))
    T.eq(code, 0, out)
    T.ok(out:find("usage: medlua", 1, true), out)
  end
end)

T.case("cleanup", function() os.execute("rm -rf '" .. dir .. "'") end)
T.run()
