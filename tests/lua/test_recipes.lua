-- Smoke runs of the recipes on small data, as a user would run them.
local T = require "medlua.test"
local exe = arg[-1]

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok and 0 or code
end

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

T.run()
