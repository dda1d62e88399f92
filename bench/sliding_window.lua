-- Sliding-window inference of a whole CT-sized volume with the MONAI-shaped 3D U-Net (channels
-- 16-32-64-128-256, strides 2-2-2-2, num_res_units=2, batch norm, 1 -> 3 channels) in eval mode, no grad:
-- medlua.inferers.sliding_window_inference, roi 96^3, sw_batch_size 4, overlap 0.25, gaussian blending.
-- bench/sliding_window.py does the same with monai.inferers.sliding_window_inference.
--   build/medlua bench/sliding_window.lua --threads 2               # the whole volume (196 windows)
--   build/medlua bench/sliding_window.lua --threads 2 --one         # one predictor batch, extrapolated
--   build/medlua bench/sliding_window.lua --threads 2 --no-net      # no network: the blending alone
-- Prints total seconds, the part spent in the network's forward, the rest (window copies, blending,
-- normalisation), and the process's peak RSS (VmHWM).
local medlua = require "medlua"
local nn = require "medlua.nn"
local cli = require "medlua.cli"
local inferers = require "medlua.inferers"

local args = cli.parse(arg, {
  description = "sliding-window inference benchmark (medlua side)",
  {"--x", 512, "volume size, axis 0"}, {"--y", 512, "axis 1"}, {"--z", 300, "axis 2"},
  {"--roi", 96, "window edge"}, {"--sw", 4, "sw_batch_size"}, {"--overlap", 0.25, "window overlap"},
  {"--mode", "gaussian", "blending: gaussian | constant"}, {"--threads", 0, "threads (0 = all cores)"},
  {"--one", false, "time one predictor batch of sw windows (median of --reps after a warm-up) and extrapolate"},
  {"--reps", 3, "timed predictor batches with --one"},
  {"--net", true, "run the U-Net (--no-net: the predictor repeats the window to 3 channels, timing only the blending)"},
})
if args.threads > 0 then medlua.threads(args.threads) end

local function peak_rss_mb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return (tonumber(s:match("VmHWM:%s*(%d+)")) or 0) / 1024
end

medlua.manual_seed(0)
local net = nn.UNet{spatial_dims = 3, in_channels = 1, out_channels = 3, channels = {16, 32, 64, 128, 256},
  strides = {2, 2, 2, 2}, num_res_units = 2, norm = "batch"}
net:eval()
local guard <close> = medlua.no_grad()
local R = args.roi
local roi = {R, R, R}
local nwin = #inferers.window_starts({math.max(args.x, R), math.max(args.y, R), math.max(args.z, R)}, roi, args.overlap)
local nbatch = math.ceil(nwin / args.sw)

if args.one then
  local xb = medlua.randn(args.sw, 1, R, R, R)
  net:forward(xb)
  local times = {}
  for i = 1, args.reps do
    local t0 = medlua.clock()
    local y = net:forward(xb)
    times[i] = medlua.clock() - t0
    y = nil
  end
  table.sort(times)
  local t = times[(#times + 1) // 2]
  print(string.format("medlua sliding_window one_batch threads=%d windows=%d batches=%d batch_s=%.3f "
    .. "extrapolated_forward_s=%.1f peak_rss_mb=%.0f", medlua.threads(), nwin, nbatch, t, t * nbatch, peak_rss_mb()))
  return
end

local x = medlua.randn(1, 1, args.x, args.y, args.z)
local fwd = 0
local function predictor(t)
  local t0 = medlua.clock()
  local y = args.net and net:forward(t) or t:expand(t:size(0), 3, R, R, R):contiguous()
  fwd = fwd + (medlua.clock() - t0)
  return y
end
local t0 = medlua.clock()
local out = inferers.sliding_window_inference(x, roi, args.sw, predictor, {overlap = args.overlap, mode = args.mode})
local total = medlua.clock() - t0
print(string.format("medlua sliding_window threads=%d volume=%dx%dx%d windows=%d total_s=%.1f forward_s=%.1f "
  .. "other_s=%.1f peak_rss_mb=%.0f out_mean=%.5f", medlua.threads(), args.x, args.y, args.z, nwin, total, fwd,
  total - fwd, peak_rss_mb(), out:mean():item()))
