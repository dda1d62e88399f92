-- medlua side of bench/bench_resample.sh: resampling a CT-sized float32 volume (default 512x512x300,
-- spacing 0.7 x 0.7 x 1.25 mm) to 1.5 mm isotropic, plus B-spline, label (nearest) and rotation cases.
-- The volume is analytic (sin/cos of the index) so bench/sitk_resample.py builds the same voxels;
-- each case prints the median time over --runs runs and the mean of its output as a checksum.
--   build/medlua bench/resample.lua [--size 512] [--slices 300] [--runs 5] [--layout f|c] [--threads 0]
local medlua = require "medlua"
local cli = require "medlua.cli"
local V = medlua._volume

local args = cli.parse(arg, {
  description = "volume resampling benchmark (medlua side)",
  {"--size", 512, "in-plane voxels"}, {"--slices", 300, "slices"}, {"--runs", 5, "timed runs per case"},
  {"--layout", "f", "memory order: f = i fastest (as read from NIfTI/DICOM), c = k fastest"},
  {"--threads", 0, "threads (0 = all cores)"}, {"--cases", "linear,bspline,nearest,rotate", "cases to run"},
})
if args.threads > 0 then medlua.threads(args.threads) end
local N, S = args.size, args.slices

-- x[i, j, k] = sin(0.02 i) + cos(0.03 j) + 0.01 k
local fi = (medlua.arange(N, {dtype = "float32"}) * 0.02):sin()
local fj = (medlua.arange(N, {dtype = "float32"}) * 0.03):cos()
local fk = medlua.arange(S, {dtype = "float32"}) * 0.01
local x
if args.layout == "f" then -- storage [k][j][i], i fastest, viewed as [i, j, k]
  x = (fi:reshape(1, 1, N) + fj:reshape(1, N, 1) + fk:reshape(S, 1, 1)):contiguous():permute(2, 1, 0)
else
  x = (fi:reshape(N, 1, 1) + fj:reshape(1, N, 1) + fk:reshape(1, 1, S)):contiguous()
end
local A = {{0.7, 0, 0, 0}, {0, 0.7, 0, 0}, {0, 0, 1.25, 0}, {0, 0, 0, 1}}
local vol = V.new(x, A)
local lab = V.new(((x + 2) * 2):floor():to("uint8"), A) -- 0..11 label-like values

local function median(t) table.sort(t) return t[(#t + 1) // 2] end

local function run(name, fn)
  fn() -- warm up (page faults, thread start)
  local times, out = {}, nil
  for _ = 1, args.runs do
    collectgarbage()
    local t0 = medlua.clock()
    out = fn()
    times[#times + 1] = medlua.clock() - t0
  end
  local sh = out.shape
  print(string.format("medlua %s ms=%.1f min_ms=%.1f shape=%dx%dx%d mean=%.6f", name, median(times) * 1000,
    math.min(table.unpack(times)) * 1000, sh[1], sh[2], sh[3], out.data:double():mean():item()))
end

local c = 0.5 * 0.7 * (N - 1)
local ca, sa = math.cos(math.rad(10)), math.sin(math.rad(10))
-- rotate 10 degrees about the volume's centre (z axis)
local rot = {{ca, -sa, 0, c - ca * c + sa * c}, {sa, ca, 0, c - sa * c - ca * c}, {0, 0, 1, 0}, {0, 0, 0, 1}}
local grid15 -- the 1.5 mm grid, the reference grid of the rotation case
local cases = {
  linear = function() return vol:resample{spacing = 1.5, mode = "linear"} end,
  bspline = function() return vol:resample{spacing = 1.5, mode = "bspline"} end,
  nearest = function() return lab:resample{spacing = 1.5} end,
  rotate = function()
    grid15 = grid15 or vol:resample{spacing = 1.5, mode = "nearest"}
    return vol:transform(rot, grid15, {mode = "linear"})
  end,
}
print(string.format("medlua volume %dx%dx%d float32 layout=%s threads=%d", N, N, S, args.layout, medlua.threads()))
for name in args.cases:gmatch("[^,]+") do
  if cases[name] then run(name, cases[name]) end
end
