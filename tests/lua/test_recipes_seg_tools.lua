-- Smoke runs of the segmentation tool recipes (check_setup, explore_data, visualize_predictions) on the
-- sample data, as a user would run them.
local T = require "medlua.test"
local volume = require "medlua.volume"
local labelmap = require "medlua.labelmap"
local json = require "medlua.json"
local exe = arg[-1]

local run = T.run_cmd

local tmpdir = T.tmpdir

local SPEC = "vertebrae=26-50,spinal_cord=79"
local CT, SEG = "data/samples/example_ct.nii.gz", "data/samples/example_seg_full_fast.nii.gz"

T.case("check_setup: all checks pass", function()
  local out, code = run(exe .. " recipes/check_setup.lua")
  T.eq(code, 0, out)
  T.ok(out:find("setup OK", 1, true), out)
  T.ok(out:find("GPU:", 1, true), out)
  T.ok(out:find("oneDNN:%s+v?[%d%.]*,? ?convolution OK"), out)
  T.ok(out:find("sample data:%s+found"), out)
  T.ok(out:find("3D conv:%s+1x1x32%^3"), out)
  -- runs from another working directory too (data found relative to the script)
  local pwd = io.popen("pwd"):read("l")
  local abs = exe:sub(1, 1) == "/" and exe or (pwd .. "/" .. exe)
  out, code = run("cd /tmp && '" .. abs .. "' '" .. pwd .. "/recipes/check_setup.lua'")
  T.eq(code, 0, out)
  T.ok(out:find("setup OK", 1, true), out)
  -- a copy of the recipe outside the repository finds no sample data: a problem, exit code 1
  local dir = tmpdir()
  os.execute("mkdir -p '" .. dir .. "/recipes' && cp recipes/check_setup.lua '" .. dir .. "/recipes/'")
  out, code = run(exe .. " " .. dir .. "/recipes/check_setup.lua")
  T.eq(code, 1, out)
  T.ok(out:find("sample data missing: " .. dir .. "/data/samples/example_ct.nii.gz", 1, true), out)
  T.ok(not out:find("setup OK", 1, true), out)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.case("explore_data: sample patients, class counts, JSON and montage", function()
  local dir = tmpdir()
  local out, code = run(string.format("%s recipes/explore_data.lua --labels %s --out %s", exe, SPEC, dir))
  T.eq(code, 0, out)
  T.ok(out:find("shape     (122, 101, 112)", 1, true), out)
  T.ok(out:find("shape     (512, 512, 20)", 1, true), out)
  T.ok(out:find("axcodes   LPS", 1, true), out)
  T.ok(out:find("%s+5%s+liver%s+41692%s+1125%.68"), out)                -- a raw label value with its volume
  T.ok(out:find("%s+1%s+vertebrae%s+15562%s+420%.17"), out)            -- a class of --labels
  T.ok(out:find("%s+2%s+spinal_cord%s+1553%s"), out)
  T.ok(out:find("label matches the image grid", 1, true), out)
  T.ok(out:find("label DIFFERS from the image grid (orientation LAS vs image LPS)", 1, true), out)
  T.ok(out:find("spacing range  x 0.98-3.00", 1, true), out)
  T.ok(out:find("shape range    x 122-512  y 101-512  z 20-112", 1, true), out)
  local doc = json.read(dir .. "/dataset_summary.json")
  T.eq(#doc.cases, 2)
  T.eq(doc.cases[1].shape, {122, 101, 112})
  T.eq(doc.cases[1].label_info.same_grid, true)
  T.eq(doc.cases[2].label_info.same_grid, false)
  T.eq(doc.cases[1].label_info.classes[2].voxels, 15562)
  T.eq(doc.cases[2].axcodes, "LPS")
  T.eq(doc.summary.shape_max, {512, 512, 112})
  local img = volume.read_png(dir .. "/dataset_montage.png")
  T.eq(img:dim(), 3)
  T.eq(img:size(2), 3)
  T.ok(img:size(0) > 256 and img:size(1) > 4 * 256, "montage too small: " .. table.concat(img:size(), "x"))
  T.ok(img:float():std():item() > 10, "montage is blank")
  os.execute("rm -rf '" .. dir .. "'")
end)

T.case("explore_data: a MONAI-style data list", function()
  local dir = tmpdir()
  local pwd = io.popen("pwd"):read("l")
  json.write(dir .. "/dataset.json", {training = {{image = pwd .. "/" .. CT, label = pwd .. "/" .. SEG}},
    validation = {{image = pwd .. "/" .. CT}}})
  local out, code = run(string.format("%s recipes/explore_data.lua %s/dataset.json --max-values 3", exe, dir))
  T.eq(code, 0, out)
  T.ok(out:find("Exploring 1 case (datalist", 1, true), out)
  T.ok(out:find("... and 58 smaller values", 1, true), out)
  out, code = run(string.format("%s recipes/explore_data.lua %s/dataset.json --key validation", exe, dir))
  T.eq(code, 0, out)
  T.ok(out:find("0 with labels", 1, true), out)
  out, code = run(string.format("%s recipes/explore_data.lua %s/dataset.json --key test", exe, dir))
  T.eq(code, 1, out)
  T.ok(out:find("dataset.json: no key 'test'", 1, true), out)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.case("explore_data: bad inputs", function()
  local out, code = run(exe .. " recipes/explore_data.lua --image /nonexistent/ct.nii.gz")
  T.eq(code, 1, out)
  T.ok(out:find("/nonexistent/ct.nii.gz", 1, true), out)
  out, code = run(exe .. " recipes/explore_data.lua --image " .. CT .. " --label /nonexistent/seg.nii.gz")
  T.eq(code, 1, out)
  T.ok(out:find("/nonexistent/seg.nii.gz", 1, true), out)
  out, code = run(exe .. " recipes/explore_data.lua --labels 'vertebrae=50-26'")
  T.eq(code, 1, out)
  T.ok(out:find("--labels 'vertebrae=50-26'", 1, true) and out:find("empty", 1, true), out)
  out, code = run(exe .. " recipes/explore_data.lua --max-cases many")
  T.eq(code, 2, out)
end)

-- the prediction: the ground truth remapped to classes (so Dice must be exactly 1)
local function make_pred(dir)
  local lm = labelmap.parse(SPEC)
  local p = dir .. "/pred.nii.gz"
  labelmap.remap(volume.load(SEG), lm):save(p)
  return p
end

T.case("visualize_predictions: image | GT | prediction figure, Dice 1 for a perfect prediction", function()
  local dir = tmpdir()
  local pred = make_pred(dir)
  local png = dir .. "/fig/prediction_visualization.png"
  local out, code = run(string.format("%s recipes/visualize_predictions.lua --image %s --label %s --labels %s " ..
    "--pred %s --out %s", exe, CT, SEG, SPEC, pred, png))
  T.eq(code, 0, out)
  T.ok(out:find("whole volume%s+1%.000%s+1%.000%s+1%.000"), out)
  T.ok(not out:find("0%.%d%d%d"), "a Dice below 1: " .. out)
  local w, h = out:match("wrote .- %((%d+) x (%d+) px")
  T.ok(w, out)
  local img = volume.read_png(png)
  T.eq(img:size(), {tonumber(h), tonumber(w), 3})
  T.eq(tonumber(w), 2 * 16 + 3 * 320 + 2 * 8) -- three 320-px panels side by side
  T.ok(tonumber(h) >= 320, out)
  -- explicit slices, sagittal
  out, code = run(string.format("%s recipes/visualize_predictions.lua --image %s --label %s --labels %s " ..
    "--pred %s --axis 0 --slices 61 --out %s", exe, CT, SEG, SPEC, pred, png))
  T.eq(code, 0, out)
  T.ok(out:find("slice 61%s+1%.000%s+1%.000"), out)
  T.ok(out:find("sagittal slice 61", 1, true), out)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.case("visualize_predictions: LAS label of an LPS DICOM series is resampled to the image grid", function()
  local dir = tmpdir()
  local ct = volume.load("data/samples/example_ct_dicom")
  local lm = labelmap.parse(SPEC)
  local pred = dir .. "/pred.nii.gz"
  labelmap.remap(volume.load("data/samples/example_seg_dicom.nii.gz"), lm):resample_like(ct, {mode = "nearest"}):save(pred)
  local out, code = run(string.format("%s recipes/visualize_predictions.lua --image data/samples/example_ct_dicom " ..
    "--label data/samples/example_seg_dicom.nii.gz --labels %s --pred %s --slices 10 --out %s/f.png", exe, SPEC, pred,
    dir))
  T.eq(code, 0, out)
  T.ok(out:find("resampled to the image grid", 1, true), out)
  T.ok(out:find("whole volume%s+1%.000%s+1%.000"), out)
  os.execute("rm -rf '" .. dir .. "'")
end)

T.case("visualize_predictions: bad inputs name the file and exit 1", function()
  local dir = tmpdir()
  local pred = make_pred(dir)
  local base = exe .. " recipes/visualize_predictions.lua --image " .. CT .. " --out " .. dir .. "/x.png "
  local out, code = run(base .. "--pred /nonexistent/pred.nii.gz")
  T.eq(code, 1, out)
  T.ok(out:find("/nonexistent/pred.nii.gz", 1, true), out)
  out, code = run(base .. "--pred " .. pred .. " --label /nonexistent/gt.nii.gz")
  T.eq(code, 1, out)
  T.ok(out:find("/nonexistent/gt.nii.gz", 1, true), out)
  -- a prediction with another shape than the image
  out, code = run(base .. "--pred data/samples/example_seg_dicom.nii.gz")
  T.eq(code, 1, out)
  T.ok(out:find("example_seg_dicom.nii.gz", 1, true) and out:find("does not match", 1, true), out)
  -- a bad --labels spec
  out, code = run(base .. "--pred " .. pred .. " --label " .. SEG .. " --labels 'vertebrae=26-50,vertebrae=79'")
  T.eq(code, 1, out)
  T.ok(out:find("given twice", 1, true), out)
  -- raw labels without --labels
  out, code = run(base .. "--pred " .. pred .. " --label " .. SEG)
  T.eq(code, 1, out)
  T.ok(out:find(SEG, 1, true) and out:find("--labels", 1, true), out)
  -- bad options
  out, code = run(base .. "--pred " .. pred .. " --slices 500")
  T.eq(code, 1, out)
  T.ok(out:find("outside 0..111", 1, true), out)
  out, code = run(base .. "--pred " .. pred .. " --axis sideways")
  T.eq(code, 2, out)
  T.ok(io.open(dir .. "/x.png") == nil, "a PNG was written despite the errors")
  os.execute("rm -rf '" .. dir .. "'")
end)

T.run()
