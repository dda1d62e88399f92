-- medlua side of bench/bench_loader.sh: a realistic 3-D segmentation training pipeline (load CT +
-- labels, Spacing 1.5 mm, ScaleIntensityRange, RandCropByPosNegLabel 96^3 x 2, RandFlip, RandRotate90)
-- through data.DataLoader with C worker threads. Prints
--   medlua epoch_s=<median epoch time> samples_per_s=<...> first_epoch_s=<...>
--   medlua step wait_frac=<...> wait_s=<...> step_s=<...>     (with a simulated training step)
--   build/medlua bench/bench_loader.lua [--items 8] [--epochs 3] [--workers 2] [--batch 2] [--step 0.5]
local medlua = require "medlua"
local cli = require "medlua.cli"
local X = require "medlua.transforms"
local data = require "medlua.data"

local args = cli.parse(arg, {
  description = "data loader benchmark (medlua side)",
  {"--items", 8, "data list entries (the same CT repeated)"}, {"--epochs", 3, "timed epochs (after one warm-up)"},
  {"--workers", 2, "loader worker threads"}, {"--batch", 2, "items per batch"},
  {"--step", 0.5, "simulated training step in seconds (sleep) for the wait-fraction run; 0 skips it"},
  {"--image", "data/samples/example_ct.nii.gz", "CT"}, {"--label", "data/samples/example_seg_full_fast.nii.gz", "labels"},
})
local KEYS = {"image", "label"}
local tf = X.Compose{
  X.LoadImaged{keys = KEYS},
  X.EnsureChannelFirstd{keys = KEYS},
  X.Spacingd{keys = KEYS, pixdim = {1.5, 1.5, 1.5}, mode = {"bilinear", "nearest"}},
  X.ScaleIntensityRanged{keys = "image", a_min = -175, a_max = 250, b_min = 0, b_max = 1, clip = true},
  X.RandCropByPosNegLabeld{keys = KEYS, label_key = "label", spatial_size = {96, 96, 96}, pos = 1, neg = 1,
    num_samples = 2, image_key = "image", image_threshold = 0},
  X.RandFlipd{keys = KEYS, prob = 0.5, spatial_axis = 0},
  X.RandRotate90d{keys = KEYS, prob = 0.5, max_k = 3},
}
local list = {}
for i = 1, args.items do list[i] = {image = args.image, label = args.label} end
local ds = data.Dataset{data = list, transform = tf}
local loader = data.DataLoader(ds, {batch_size = args.batch, shuffle = true, num_workers = args.workers, seed = 0})

local function epoch(step)
  local t0 = medlua.clock()
  local n = 0
  for b in loader:iter() do
    n = n + b.image:size()[1]
    assert(b.image:size()[3] == 96)
    if step > 0 then os.execute(string.format("sleep %.3f", step)) end
  end
  return medlua.clock() - t0, n
end

local first = epoch(0)
local times, n = {}, 0
for e = 1, args.epochs do times[e], n = epoch(0) end
table.sort(times)
local med = times[(#times + 1) // 2]
print(string.format("medlua epoch_s=%.3f samples_per_s=%.3f first_epoch_s=%.3f samples=%d workers=%d", med, n / med,
  first, n, args.workers))
if args.step > 0 then
  -- two epochs with the step; the second is the steady state (its first batches are made during the
  -- last step of the first, as in training)
  local fr = {}
  for e = 1, 2 do
    loader:reset_stats()
    epoch(args.step)
    fr[e] = loader:stats()
  end
  local s = fr[2]
  print(string.format("medlua step wait_frac=%.4f wait_s=%.3f step_s=%.3f produce_s=%.3f first_wait_frac=%.4f",
    s.wait_frac, s.wait_s, s.step_s, s.produce_s, fr[1].wait_frac))
end
loader:close()
