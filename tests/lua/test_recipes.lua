-- Smoke runs of the recipes on small data, as a user would run them.
local T = require "medlua.test"
local exe = arg[-1]

local run = T.run_cmd

T.case("demo_train: loss falls, weights saved", function()
  local dir = os.tmpname()
  os.remove(dir)
  local out, code = run(string.format("%s recipes/demo_train.lua --steps 60 --batch 4 --size 32 --out %s", exe, dir))
  T.eq(code, 0, out)
  local first, last = out:match("loss ([%d%.]+) %-> ([%d%.]+)")
  T.ok(first and tonumber(last) < tonumber(first) * 0.5, "loss did not fall: " .. out)
  local f = io.open(dir .. "/demo_model.safetensors", "rb")
  T.ok(f ~= nil, "weights file missing")
  if f then f:close() end
  os.execute("rm -rf '" .. dir .. "'")
end)

T.case("demo_train --help and bad option", function()
  local out, code = run(exe .. " recipes/demo_train.lua --help")
  T.eq(code, 0)
  T.ok(out:find("%-%-steps"), out)
  out, code = run(exe .. " recipes/demo_train.lua --steps many")
  T.eq(code, 2)
  T.ok(out:find("expects a number"), out)
end)

T.case("convert_medical_data: NIfTI CT -> PNG slices + transforms.json", function()
  local json = require "medlua.json"
  local volume = require "medlua.volume"
  local dir = os.tmpname()
  os.remove(dir)
  local out, code = run(string.format("%s recipes/convert_medical_data.lua data/samples/example_ct.nii.gz %s " ..
    "--normalization window --window-center -600 --window-width 1500 --slices 40:60", exe, dir))
  T.eq(code, 0, out)
  T.ok(out:find("Volume shape: (122, 101, 112)", 1, true), out)
  T.ok(out:find("Z-step (camera translation): 0.003000 units", 1, true), out)
  local tj = json.read(dir .. "/transforms.json")
  T.eq(#tj.frames, 20)
  T.eq(tj.w, 122)
  T.eq(tj.h, 101)
  T.eq(tj.fl_x, 122.0)
  T.eq(tj.frames[1].file_path, "001.png")
  T.near(tj.frames[2].transform_matrix[3][4] - tj.frames[1].transform_matrix[3][4], 0.003, 1e-12)
  T.near(tj.volume.affine[3][3], 3.0, 1e-4)
  -- the PNG holds the windowed slice 40 (rows = voxel axis 1, columns = voxel axis 0)
  local img = volume.read_png(dir .. "/001.png")
  T.eq(img:size(0), 101)
  local ct = volume.load("data/samples/example_ct.nii.gz")
  local ref = ((ct.data:select(2, 40):t() - (-600 - 750)) / 1500 * 255):clamp(0, 255)
  T.ok((img:float() - ref):abs():max():item() <= 0.51, "PNG differs from the windowed slice")
  os.execute("rm -rf '" .. dir .. "'")
  out, code = run(string.format("%s recipes/convert_medical_data.lua /nonexistent.nii.gz %s", exe, dir))
  T.eq(code, 1)
  T.ok(out:find("/nonexistent.nii.gz", 1, true), out)
  out, code = run(string.format("%s recipes/convert_medical_data.lua data/samples/example_ct.nii.gz %s --slices 500:600",
    exe, dir))
  T.eq(code, 1)
  T.ok(out:find("selects no slice", 1, true), out)
end)

T.run()
