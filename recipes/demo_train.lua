-- demo_train.lua: train a tiny convolutional segmentation model on synthetic images and watch the
-- loss fall. Each image holds a few bright disks on a noisy, shaded background; the model learns
-- to mark disk pixels. Runs in seconds on a laptop CPU; `make run` runs it until the 3D
-- segmentation recipe takes over.
local medlua = require "medlua"
local nn = require "medlua.nn"
local optim = require "medlua.optim"
local cli = require "medlua.cli"
local progress = require "medlua.progress"
local F = medlua.F

local args = cli.parse(arg, {
  description = "Train a tiny conv net to segment synthetic disks (a smoke test of medlua's engine).",
  {"--steps", 150, "training steps"},
  {"--batch", 8, "images per batch"},
  {"--size", 48, "image height and width in pixels"},
  {"--lr", 0.01, "Adam learning rate"},
  {"--width", 16, "channels of the hidden layers"},
  {"--seed", 0, "random seed"},
  {"--threads", 0, "CPU threads (0 = all cores)"},
  {"--out", "", "folder for the weights (safetensors); empty = do not save"},
})

if args.threads > 0 then medlua.threads(args.threads) end
medlua.manual_seed(args.seed)

-- A batch of images [B,1,S,S] and masks [B,1,S,S] (1 inside a disk).
local S = args.size
local ys = medlua.arange(S):float():view(1, 1, S, 1)
local xs = medlua.arange(S):float():view(1, 1, 1, S)
local function make_batch(B)
  local mask = medlua.zeros(B, 1, S, S)
  for _ = 1, 3 do
    local cy = medlua.rand(B, 1, 1, 1) * (S * 0.8) + S * 0.1
    local cx = medlua.rand(B, 1, 1, 1) * (S * 0.8) + S * 0.1
    local r = medlua.rand(B, 1, 1, 1) * (S * 0.12) + S * 0.06
    local d2 = (ys - cy) ^ 2 + (xs - cx) ^ 2
    mask = mask:maximum(d2:lt(r * r):float())
  end
  local shade = (xs / S) * 0.5 + (medlua.rand(B, 1, 1, 1) - 0.5)
  local img = mask * 1.0 + shade + medlua.randn(B, 1, S, S) * 0.35
  return img, mask
end

local W = args.width
local model = nn.Sequential(
  nn.Conv2d(1, W, 3, {padding = 1}), nn.BatchNorm2d(W), nn.ReLU(),
  nn.Conv2d(W, W, 3, {padding = 2, dilation = 2}), nn.BatchNorm2d(W), nn.ReLU(),
  nn.Conv2d(W, 1, 1))
local opt = optim.Adam(model:parameters(), {lr = args.lr})

print(string.format("medlua %s | threads %d | model %d parameters | %d steps of batch %d at %dx%d",
  medlua.version, medlua.threads(), model:num_parameters(), args.steps, args.batch, S, S))
print(model)

local function dice(logits, mask)
  local pred = logits:gt(0):float()
  local inter = (pred * mask):sum():item()
  return 2 * inter / (pred:sum():item() + mask:sum():item() + 1e-6)
end

local bar = progress.new(args.steps, {desc = "train", unit = "step", every = math.max(1, args.steps // 10)})
local first, last
local t0 = medlua.clock()
for step = 1, args.steps do
  local img, mask = make_batch(args.batch)
  local logits = model:forward(img)
  local loss = F.binary_cross_entropy_with_logits(logits, mask)
  opt:zero_grad()
  loss:backward()
  opt:step()
  local l = loss:item()
  first = first or l
  last = l
  bar:update(1, {loss = l})
end
bar:close()
local elapsed = medlua.clock() - t0

model:eval()
local img, mask = make_batch(32)
local d
do
  local g <close> = medlua.no_grad()
  d = dice(model:forward(img), mask)
end
print(string.format("loss %.4f -> %.4f in %d steps (%.1f ms/step); validation Dice %.3f on 32 new images",
  first, last, args.steps, 1000 * elapsed / args.steps, d))
if args.out ~= "" then
  os.execute("mkdir -p '" .. args.out .. "'")
  local path = args.out .. "/demo_model.safetensors"
  model:save(path, {recipe = "demo_train", steps = tostring(args.steps)})
  print("weights written to " .. path)
end
if not (last < first * 0.5) then
  io.stderr:write("demo_train: the loss did not fall by half; something is wrong\n")
  os.exit(1)
end
