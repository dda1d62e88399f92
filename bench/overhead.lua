-- Per-call overhead of a tiny elementwise op from Lua (goal: <= 2 us), and of a tiny op under autograd.
local medlua = require "medlua"
local n = tonumber(arg[1]) or 200000
local a, b = medlua.ones(1), medlua.ones(1)
local function bench(name, f)
  f() -- warm
  local best = math.huge
  for _ = 1, 5 do
    local t0 = medlua.clock()
    for _ = 1, n do f() end
    local dt = (medlua.clock() - t0) / n
    if dt < best then best = dt end
  end
  print(string.format("medlua %-28s %.3f us/call", name, best * 1e6))
end
bench("a + b (1 elem)", function() return a + b end)
bench("a:add(b) (1 elem)", function() return a:add(b) end)
bench("a * 2 (1 elem)", function() return a * 2 end)
local ag = medlua.ones(1, {requires_grad = true})
bench("ag * b (grad recorded)", function() return ag * b end)
