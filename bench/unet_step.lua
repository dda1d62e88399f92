-- MONAI-shaped 3D U-Net train step in medlua: channels 16-32-64-128-256, strides 2-2-2-2,
-- num_res_units=2, batch norm, PReLU, 1 -> 3 channels, batch 2 of one 96^3 patch, Adam, cross entropy.
-- Prints the median step time and the process's peak RSS; bench/torch_unet_step.py does the same in MONAI.
local medlua = require "medlua"
local nn = require "medlua.nn"
local optim = require "medlua.optim"
local cli = require "medlua.cli"
local F = medlua.F

local args = cli.parse(arg, {
  description = "MONAI-shaped 3D U-Net train step benchmark",
  {"--size", 96, "patch edge"}, {"--batch", 2, "batch size"}, {"--steps", 5, "timed steps"},
  {"--warmup", 1, "untimed steps"}, {"--threads", 0, "threads (0 = all cores)"},
  {"--device", "cpu", "cpu or cuda[:N] (bench/bench_gpu.sh)"},
})
local dev = args.device
local on_gpu = dev ~= "cpu"
if args.threads > 0 then medlua.threads(args.threads) end
medlua.manual_seed(0)
local net = nn.UNet{spatial_dims = 3, in_channels = 1, out_channels = 3, channels = {16, 32, 64, 128, 256},
  strides = {2, 2, 2, 2}, num_res_units = 2, norm = "batch"}
net:to(dev)
local opt = optim.Adam(net:parameters(), {lr = 1e-4})
local S, B = args.size, args.batch
local x = medlua.randn(B, 1, S, S, S):to(dev)
local y = medlua.randint(0, 3, {B, S, S, S}):to(dev)

local function peak_rss_mb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("a")
  f:close()
  return (tonumber(s:match("VmHWM:%s*(%d+)")) or 0) / 1024
end

local times = {}
local loss
for i = 1, args.warmup + args.steps do
  local t0 = medlua.clock()
  opt:zero_grad()
  loss = F.cross_entropy(net:forward(x), y)
  loss:backward()
  opt:step()
  if on_gpu then medlua.cuda.synchronize() end
  local dt = medlua.clock() - t0
  if i > args.warmup then times[#times + 1] = dt end
end
table.sort(times)
local med = times[(#times + 1) // 2]
local gpu = on_gpu and string.format(" device=%s peak_gpu_mb=%.0f", dev,
  medlua.cuda.memory_stats(tonumber(dev:match(":(%d+)")) or 0).peak / 2 ^ 20) or ""
print(string.format("medlua unet3d params=%d threads=%d step_ms=%.1f min_ms=%.1f peak_rss_mb=%.0f loss=%.4f%s",
  net:num_parameters(), medlua.threads(), med * 1000, times[1] * 1000, peak_rss_mb(), loss:item(), gpu))
