-- medlua side of bench/bench_nifti.sh.
--   medlua bench/nifti_load.lua load PATH [RUNS]       median seconds of _volume.read_nifti(PATH) (float32)
--   medlua bench/nifti_load.lua save PATH OUT [RUNS] [LEVEL]   median seconds of writing PATH's volume
--                                                      (float32) as OUT (gzip level LEVEL, default 6)
-- Prints "medlua <what> median_s=<s> runs=<n> sum=<checksum>".
local medlua = require "medlua"
local V = medlua._volume
local cmd, path = arg[1], arg[2]

local function median(t)
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
end

if cmd == "load" then
  local runs = tonumber(arg[3]) or 5
  local times, vol = {}, nil
  for i = 1, runs do
    vol = nil
    collectgarbage()
    local t0 = medlua.clock()
    vol = V.read_nifti(path)
    times[i] = medlua.clock() - t0
  end
  print(string.format("medlua load median_s=%.4f runs=%d sum=%.6g", median(times), runs,
    vol.data:double():sum():item()))
elseif cmd == "save" then
  local out, runs, level = arg[3], tonumber(arg[4]) or 3, tonumber(arg[5]) or 6
  local vol = V.read_nifti(path)
  local times = {}
  for i = 1, runs do
    local t0 = medlua.clock()
    V.write_nifti(vol, out, {compression_level = level})
    times[i] = medlua.clock() - t0
  end
  print(string.format("medlua save median_s=%.4f runs=%d sum=%.6g", median(times), runs,
    vol.data:double():sum():item()))
else
  error("usage: medlua bench/nifti_load.lua load PATH [RUNS] | save PATH OUT [RUNS] [LEVEL]")
end
