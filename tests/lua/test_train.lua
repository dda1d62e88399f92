-- medlua.train (fit loop, checkpoints, exact resume, early stopping), medlua.log (CSV, JSONL, TensorBoard
-- event files: framing, CRC32C, a golden record from TensorBoard's own writer) and medlua.plot (PNG curves).
-- The models are tiny and the data synthetic: the whole suite runs in a few seconds.
local medlua = require "medlua"
local nn = require "medlua.nn"
local optim = require "medlua.optim"
local train = require "medlua.train"
local log = require "medlua.log"
local plot = require "medlua.plot"
local json = require "medlua.json"
local T = require "medlua.test"
local F = medlua.F

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  return p .. "_train"
end
local function rmrf(d) os.execute("rm -rf '" .. d .. "'") end
local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end
local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end
local function unhex(h) return (h:gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end)) end
local function ls(dir)
  local out = {}
  local p = io.popen("ls -1 '" .. dir .. "' 2>/dev/null")
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

-- ------------------------------------------------------------------ a tiny regression problem
local W_TRUE = medlua.tensor({{1.0}, {-2.0}, {0.5}, {3.0}})
local function make_model(dropout)
  local layers = {nn.Linear(4, 16), nn.ReLU()}
  if dropout then layers[#layers + 1] = nn.Dropout(0.2) end
  layers[#layers + 1] = nn.Linear(16, 1)
  return nn.Sequential(table.unpack(layers))
end
-- batches come from medlua's random generator, so a resumed run only sees the same data when the RNG
-- state is restored from the checkpoint
local function loader(epoch, i)
  if i > 3 then return nil end
  local x = medlua.randn(16, 4)
  return {x, x:matmul(W_TRUE) + medlua.randn(16, 1) * 0.01}
end
local VX = medlua.randn(64, 4)
local VY = VX:matmul(W_TRUE)
local function val_fn(model)
  local pred = model:forward(VX)
  local mse = F.mse_loss(pred, VY):item()
  local noise = medlua.randn(1):item() -- validation may use the RNG without changing training's stream
  return {val_loss = mse, val_score = 1 / (1 + mse), val_noise = noise * 0}
end

local function params_equal(a, b)
  local pa, pb = a:state_dict(), b:state_dict()
  for k, t in pairs(pa) do T.near(t, pb[k], 0, "parameter " .. k) end
end

T.case("fit trains, validates and writes checkpoints, logs, events and curves", function()
  local dir = tmpdir()
  medlua.manual_seed(1)
  local model = make_model()
  local opt = optim.Adam(model:parameters(), {lr = 0.05})
  local sched = optim.StepLR(opt, {step_size = 3, gamma = 0.5})
  local seen = 0
  local s = train.fit{model = model, optimizer = opt, scheduler = sched, loss_fn = F.mse_loss, train_loader = loader,
    val_fn = val_fn, epochs = 6, out_dir = dir, monitor = "val_loss", mode = "min", quiet = true, seed = 3,
    clip_grad_norm = 10, on_step = function(info) seen = seen + 1; T.ok(info.loss == info.loss) end}
  T.eq(s.steps, 18); T.eq(s.epochs, 6); T.eq(seen, 18)
  T.ok(s.history[6].val_loss < s.history[1].val_loss * 0.5, "validation loss falls")
  T.ok(s.best_metric <= s.history[6].val_loss + 1e-12)
  T.near(opt.lr, 0.05 * 0.25, 1e-15, "StepLR stepped once per epoch")
  for _, f in ipairs{"last.safetensors", "best.safetensors", "metrics.csv", "metrics.jsonl", "steps.csv", "curves.png"} do
    T.ok(read(dir .. "/" .. f), f .. " exists")
  end
  -- metrics.csv: one header, one row per epoch, the columns train.fit promises
  local rows, header = log.read_csv(dir .. "/metrics.csv")
  T.eq(#rows, 6)
  T.eq({header[1], header[2], header[3], header[4], header[5]}, {"epoch", "step", "train_loss", "lr", "time"})
  T.eq(rows[6].step, 18)
  T.ok(rows[1].val_loss and rows[1].grad_norm, "validation metrics and grad_norm are columns")
  T.eq(#log.read_jsonl(dir .. "/metrics.jsonl"), 6)
  T.eq(#log.read_csv(dir .. "/steps.csv"), 18)
  -- checkpoint metadata
  local _, meta = medlua.load(dir .. "/last.safetensors")
  T.eq(meta.format, "medlua.train/1"); T.eq(meta.epoch, "6"); T.eq(meta.step, "18"); T.eq(meta.epoch_complete, "1")
  T.eq(meta.monitor, "val_loss"); T.eq(meta.scheduler_type, "StepLR")
  T.eq(tonumber(meta.best_metric), s.best_metric)
  T.eq(json.decode(meta.scheduler).last_epoch, 6)
  local info = train.read_checkpoint(dir .. "/last.safetensors")
  T.eq(info.step, 18); T.eq(info.scheduler.step_size, 3); T.eq(math.type(info.rng_offset), "integer")
  -- best.safetensors loads into a fresh model
  local m2 = make_model()
  train.load_model(m2, dir .. "/best.safetensors")
  T.near(F.mse_loss(m2:forward(VX), VY):item(), s.best_metric, 1e-6)
  -- TensorBoard events: every record checks out, scalars per step and per epoch
  local tbfiles = ls(dir .. "/tb")
  T.eq(#tbfiles, 1)
  T.ok(tbfiles[1]:match("^events%.out%.tfevents%.%d+%."), tbfiles[1])
  local ev = log.read_tfevents(dir .. "/tb/" .. tbfiles[1])
  T.eq(ev[1].file_version, "brain.Event:2")
  local count = {}
  for _, e in ipairs(ev) do for _, v in ipairs(e.values) do count[v.tag] = (count[v.tag] or 0) + 1 end end
  T.eq(count["train/loss"], 18); T.eq(count["train/lr"], 18); T.eq(count["train/grad_norm"], 18)
  T.eq(count["val/loss"], 6); T.eq(count["train/epoch_loss"], 6)
  -- curves.png: an RGB image
  local img = medlua._volume.read_png(dir .. "/curves.png")
  T.eq(img:size(), {340, 1260, 3})
  rmrf(dir)
end)

-- train 4 steps straight vs 2 + resume + 2: identical weights, optimizer and scheduler state
local function resume_case(cfg)
  local dir_a, dir_b = tmpdir(), tmpdir()
  local function run(dir, budget, resume)
    medlua.manual_seed(7)
    local model = make_model(true)
    local opt = cfg.make_opt(model)
    local sched = cfg.make_sched and cfg.make_sched(opt)
    local o = {model = model, optimizer = opt, scheduler = sched, loss_fn = F.mse_loss, train_loader = cfg.loader or loader,
      val_fn = cfg.val_fn, out_dir = dir, resume = resume, quiet = true, seed = 7, monitor = cfg.monitor,
      mode = cfg.mode, steps_per_epoch = cfg.steps_per_epoch}
    o[cfg.unit] = budget
    local s = train.fit(o)
    return model, opt, sched, s
  end
  local ma, oa, sa = run(dir_a, cfg.full, false)
  run(dir_b, cfg.half, false)
  local mb, ob, sb, s2 = run(dir_b, cfg.full, true)
  T.ok(s2.resumed, "the second run resumed")
  params_equal(ma, mb)
  T.eq(ob.lr, oa.lr)
  T.eq(ob.step_count, oa.step_count)
  if oa.betas then T.eq(ob.betas, oa.betas) end
  if oa.momentum then T.eq(ob.momentum, oa.momentum) end
  if sa then T.eq(sb:state_dict(), sa:state_dict()) end
  T.eq({medlua.get_rng_state()}, {medlua.get_rng_state()})
  -- the logs of the resumed run equal the straight run's (no duplicated or missing rows)
  local ra, rb = log.read_csv(dir_a .. "/steps.csv"), log.read_csv(dir_b .. "/steps.csv")
  T.eq(#rb, #ra)
  for i = 1, #ra do T.eq(rb[i].step, ra[i].step); T.eq(rb[i].loss, ra[i].loss) end
  local ma_rows, mb_rows = log.read_csv(dir_a .. "/metrics.csv"), log.read_csv(dir_b .. "/metrics.csv")
  T.eq(#mb_rows, #ma_rows)
  for i = 1, #ma_rows do
    for k, v in pairs(ma_rows[i]) do
      if k ~= "time" then T.eq(mb_rows[i][k], v, "metrics.csv row " .. i .. " column " .. k) end
    end
  end
  rmrf(dir_a); rmrf(dir_b)
end

T.case("resume: 2 + 2 epochs equal 4 straight (Adam, StepLR, dropout, RNG data)", function()
  resume_case{unit = "epochs", full = 4, half = 2, val_fn = val_fn, monitor = "val_loss", mode = "min",
    make_opt = function(m) return optim.Adam(m:parameters(), {lr = 0.01}) end,
    make_sched = function(o) return optim.StepLR(o, {step_size = 1, gamma = 0.7}) end}
end)

T.case("resume: 2 + 2 steps inside an epoch (SGD Nesterov, OneCycleLR per step)", function()
  resume_case{unit = "steps", full = 4, half = 2,
    make_opt = function(m) return optim.SGD(m:parameters(), {lr = 0.01, momentum = 0.9, nesterov = true}) end,
    make_sched = function(o) return optim.OneCycleLR(o, {max_lr = 0.05, total_steps = 4}) end}
end)

T.case("resume: 5 + 4 steps across epochs with ReduceLROnPlateau, list loader and step validation", function()
  local batches = {}
  medlua.manual_seed(11)
  for i = 1, 3 do
    local x = medlua.randn(8, 4)
    batches[i] = {x = x, y = x:matmul(W_TRUE)}
  end
  resume_case{unit = "steps", full = 9, half = 5, loader = batches, monitor = "val_loss", mode = "min",
    val_fn = function(m) return {val_loss = F.mse_loss(m:forward(VX), VY):item() + 1} end,
    make_opt = function(m) return optim.AdamW(m:parameters(), {lr = 0.01}) end,
    make_sched = function(o) return optim.ReduceLROnPlateau(o, {patience = 0, factor = 0.5}) end}
end)

T.case("resume after the end is a no-op; resume without a checkpoint starts fresh", function()
  local dir = tmpdir()
  local model = make_model()
  local opt = optim.SGD(model:parameters(), {lr = 0.01})
  train.fit{model = model, optimizer = opt, loss_fn = F.mse_loss, train_loader = loader, epochs = 1, out_dir = dir,
    resume = true, quiet = true}
  local before = model:state_dict()["0.weight"]:clone()
  local s = train.fit{model = model, optimizer = opt, loss_fn = F.mse_loss, train_loader = loader, epochs = 1,
    out_dir = dir, resume = true, quiet = true}
  T.eq(s.steps, 3)
  T.near(model:state_dict()["0.weight"], before, 0)
  T.eq(s.monitor, "train_loss") -- no val_fn: the epoch's training loss picks best.safetensors
  rmrf(dir)
end)

T.case("early stopping after early_stop_patience validations without improvement", function()
  local calls = 0
  local s = train.fit{model = make_model(), optimizer = optim.SGD(make_model():parameters(), {lr = 0.0}),
    loss_fn = F.mse_loss, train_loader = loader, epochs = 20, quiet = true, early_stop_patience = 3,
    val_fn = function() calls = calls + 1; return {val_dice = 0.5} end}
  T.ok(s.stopped_early)
  T.eq(calls, 4) -- the first sets the best, three more without improvement
  T.eq(s.epochs, 4)
  T.eq(s.best_epoch, 1)
end)

T.case("val_every, val_every_steps and on_step stopping", function()
  local epochs_seen = {}
  train.fit{model = make_model(), optimizer = optim.SGD(make_model():parameters(), {lr = 0.01}), loss_fn = F.mse_loss,
    train_loader = loader, epochs = 6, val_every = 3, quiet = true,
    val_fn = function(_, ep) epochs_seen[#epochs_seen + 1] = ep; return {val_dice = ep} end}
  T.eq(epochs_seen, {3, 6})
  local steps_seen = {}
  train.fit{model = make_model(), optimizer = optim.SGD(make_model():parameters(), {lr = 0.01}), loss_fn = F.mse_loss,
    train_loader = loader, steps = 10, val_every_steps = 4, quiet = true,
    val_fn = function(_, _, st) steps_seen[#steps_seen + 1] = st; return {val_dice = st} end}
  T.eq(steps_seen, {4, 8})
  local s = train.fit{model = make_model(), optimizer = optim.SGD(make_model():parameters(), {lr = 0.01}),
    loss_fn = F.mse_loss, train_loader = loader, epochs = 5, quiet = true,
    on_step = function(info) if info.step == 5 then return false end end}
  T.eq(s.steps, 5)
end)

T.case("step_fn, iterator loaders and extra step metrics", function()
  local dir = tmpdir()
  local it_loader = {iter = function(_, epoch)
    local i = 0
    return function() i = i + 1; if i <= 2 then local x = medlua.randn(4, 4); return {input = x, target = x:sum(1, true)} end end
  end}
  local model = make_model()
  local s = train.fit{model = model, optimizer = optim.Adam(model:parameters()), train_loader = it_loader, epochs = 2,
    out_dir = dir, quiet = true, plot = false,
    step_fn = function(m, batch) local l = F.mse_loss(m:forward(batch.input), batch.target); return l, {mse = l} end}
  T.eq(s.steps, 4)
  T.ok(read(dir .. "/curves.png") == nil, "plot = false writes no curves")
  local ev = log.read_tfevents(dir .. "/tb/" .. ls(dir .. "/tb")[1])
  local n = 0
  for _, e in ipairs(ev) do for _, v in ipairs(e.values) do if v.tag == "train/mse" then n = n + 1 end end end
  T.eq(n, 4)
  rmrf(dir)
end)

T.case("fit argument and data errors name the problem", function()
  local model = make_model()
  local opt = optim.SGD(model:parameters(), {lr = 0.01})
  local base = {model = model, optimizer = opt, loss_fn = F.mse_loss, train_loader = loader, epochs = 1, quiet = true}
  local function with(k, v)
    local o = {}
    for a, b in pairs(base) do o[a] = b end
    o[k] = v
    return o
  end
  T.raises(function() train.fit(with("epoch", 3)) end, "unknown option 'epoch'")
  T.raises(function() train.fit(with("steps", 3)) end, "exactly one of 'epochs' and 'steps'")
  T.raises(function() train.fit(with("epochs", 0)) end, "'epochs' must be a positive integer")
  T.raises(function() train.fit(with("mode", "up")) end, "mode must be 'max' or 'min'")
  T.raises(function() train.fit(with("resume", true)) end, "resume needs out_dir")
  T.raises(function() train.fit(with("train_loader", 5)) end, "train_loader must be a list")
  T.raises(function() train.fit(with("val_fn", function() return {val_loss = 1} end)) end,
    "monitor 'val_dice' is not among the metrics val_fn returned (val_loss)")
  T.raises(function() train.fit(with("train_loader", function(_, i) if i < 3 then return {foo = 1} end end)) end,
    "train.fit: cannot find the input in a batch")
  local bad = with("loss_fn", function(p) return p:sum() * (0 / 0) end)
  T.raises(function() train.fit(bad) end, "the loss is NaN at epoch 1 step 1")
  -- a safetensors file that is not a train.fit checkpoint
  local dir = tmpdir()
  os.execute("mkdir -p '" .. dir .. "'")
  model:save(dir .. "/last.safetensors")
  local r = with("resume", true)
  r.out_dir = dir
  T.raises(function() train.fit(r) end, dir .. "/last.safetensors: not a train.fit checkpoint")
  rmrf(dir)
end)

T.case("bad checkpoints: another model, truncated file, missing metadata", function()
  local dir = tmpdir()
  local function fit(model, resume)
    return train.fit{model = model, optimizer = optim.SGD(model:parameters(), {lr = 0.01}), loss_fn = F.mse_loss,
      train_loader = loader, epochs = 1, out_dir = dir, resume = resume, quiet = true}
  end
  fit(make_model(), false)
  local path = dir .. "/last.safetensors"
  local good = read(path)
  local other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
  T.raises(function() fit(other, true) end, path .. ": load_state_dict: checkpoint does not match the model")
  write(path, good:sub(1, #good - 100))
  T.raises(function() fit(make_model(), true) end, path)
  -- a checkpoint whose metadata lost the RNG state
  local tensors, meta = medlua.load(dir .. "/best.safetensors")
  meta.rng_seed = nil
  medlua.save(path, tensors, meta)
  T.raises(function() fit(make_model(), true) end, path .. ": metadata 'rng_seed' is missing or not a number")
  -- a checkpoint made without a scheduler cannot restore one
  write(path, good)
  local m = make_model()
  local o = optim.SGD(m:parameters(), {lr = 0.1})
  T.raises(function()
    train.fit{model = m, optimizer = o, scheduler = optim.StepLR(o, {step_size = 1}), loss_fn = F.mse_loss,
      train_loader = loader, epochs = 2, out_dir = dir, resume = true, quiet = true}
  end, path .. ": the checkpoint has no scheduler state")
  -- torn metric logs are repaired on resume
  write(dir .. "/metrics.jsonl", read(dir .. "/metrics.jsonl") .. '{"epoch":2,"st')
  local s = fit(make_model(), true)
  T.eq(s.steps, 3)
  T.eq(#log.read_jsonl(dir .. "/metrics.jsonl"), 1)
  write(dir .. "/bad.jsonl", '{"a":1}\n{"a":\n')
  T.raises(function() log.read_jsonl(dir .. "/bad.jsonl") end, dir .. "/bad.jsonl:2")
  T.raises(function() log.read_csv(dir .. "/none.csv") end, dir .. "/none.csv: cannot open")
  rmrf(dir)
end)

-- ------------------------------------------------------------------ medlua.log
T.case("CSV: header once, resume-safe appends, new columns, torn lines, quoting, truncate_after", function()
  local dir = tmpdir()
  os.execute("mkdir -p '" .. dir .. "'")
  local path = dir .. "/m.csv"
  local c = log.CSV(path, {"epoch", "loss"})
  c:log{epoch = 1, loss = 0.5}
  c:log{epoch = 2, loss = 0.25}
  c:close()
  c = log.CSV(path)
  c:log{epoch = 3, loss = 0.125}
  c:close()
  T.eq(read(path), "epoch,loss\n1,0.5\n2,0.25\n3,0.125\n")
  c = log.CSV(path)
  c:log{epoch = 4, loss = 0 / 0, note = 'say "hi", twice'}
  c:close()
  T.eq(read(path), 'epoch,loss,note\n1,0.5,\n2,0.25,\n3,0.125,\n4,nan,"say ""hi"", twice"\n')
  local rows = log.read_csv(path)
  T.eq(rows[4].note, 'say "hi", twice')
  T.ok(rows[4].loss ~= rows[4].loss)
  write(path, read(path) .. "5,0.06") -- a crash in the middle of a row
  c = log.CSV(path)
  c:truncate_after("epoch", 2)
  c:log{epoch = 3, loss = 1.5}
  c:close()
  T.eq(read(path), "epoch,loss,note\n1,0.5,\n2,0.25,\n3,1.5,\n")
  c = log.CSV(path)
  c:close()
  T.raises(function() c:log{epoch = 1} end, path .. ": the log is closed")
  T.raises(function() log.CSV(dir .. "/no/such/dir/m.csv") end, dir .. "/no/such/dir/m.csv: cannot open")
  rmrf(dir)
end)

T.case("JSONL: one object per line, NaN as null, resume-safe", function()
  local dir = tmpdir()
  os.execute("mkdir -p '" .. dir .. "'")
  local path = dir .. "/m.jsonl"
  local j = log.JSONL(path)
  j:log{step = 1, loss = 0.5, name = "a"}
  j:log{step = 2, loss = 1 / 0}
  j:close()
  T.eq(read(path), '{"step":1,"loss":0.5,"name":"a"}\n{"step":2,"loss":null}\n')
  write(path, read(path) .. '{"step":3,"lo')
  j = log.JSONL(path)
  j:truncate_after("step", 1)
  j:log{step = 2, loss = medlua.tensor({0.25})}
  j:close()
  T.eq(read(path), '{"step":1,"loss":0.5,"name":"a"}\n{"step":2,"loss":0.25}\n')
  T.eq(#log.read_jsonl(path), 2)
  rmrf(dir)
end)

T.case("CRC32C and its TFRecord mask", function()
  T.eq(log.crc32c("123456789"), 0xE3069283)
  T.eq(log.crc32c(""), 0)
  T.eq(log.crc32c(string.rep("\0", 32)), 0x8A9136AA) -- RFC 3720 B.4 test vectors
  T.eq(log.crc32c(string.rep("\255", 32)), 0x62A8AB43)
  local inc = {}
  for i = 0, 31 do inc[#inc + 1] = string.char(i) end
  T.eq(log.crc32c(table.concat(inc)), 0x46DD794E)
  -- split computation continues a CRC
  T.eq(log.crc32c("6789", log.crc32c("12345")), 0xE3069283)
end)

T.case("TensorBoard event bytes equal TensorBoard's own writer (golden)", function()
  -- from tensorboard 2.21: event_pb2.Event(wall_time=1700000000.25, step=7, summary=Summary(value=[Value(
  -- tag="loss/train", simple_value=0.25)])) through tensorboard.summary.writer.record_writer.RecordWriter
  local ev = log.encode_event(1700000000.25, 7, nil, nil)
  T.eq(hex(ev), "0900001040fc54d9411007")
  local golden = "200000000000000029eda9500900001040fc54d94110072a130a110a0a6c6f73732f747261696e150000803e639881be"
  local dir = tmpdir()
  local tb = log.TensorBoard(dir)
  tb:add_scalar("loss/train", 0.25, 7, 1700000000.25)
  tb:add_scalars({a = -1.5, b = 1e30}, -3, 2.0)
  tb:close()
  local name = ls(dir)[1]
  local bytes = read(dir .. "/" .. name)
  -- record 1: file_version; then the scalar record, byte for byte
  local hdr = "1800000000000000a37f4b22"
  T.eq(hex(bytes:sub(1, 12)), hdr)
  local len1 = 12 + 0x18 + 4
  T.eq(hex(bytes:sub(len1 + 1, len1 + #golden // 2)), golden)
  local ev3 = "09000000000000004010fdffffffffffffffff012a140a080a0161150000c0bf0a080a016215caf24971"
  local rec3 = bytes:sub(len1 + #golden // 2 + 1)
  T.eq(hex(rec3:sub(13, 12 + #ev3 // 2)), ev3)
  local events = log.read_tfevents(dir .. "/" .. name)
  T.eq(#events, 3)
  T.eq(events[2].step, 7)
  T.eq(events[2].values[1].simple_value, 0.25)
  T.eq(events[3].step, -3)
  T.eq(events[3].values[2].tag, "b")
  rmrf(dir)
end)

T.case("TensorBoard reader checks framing and CRCs; images", function()
  local dir = tmpdir()
  local tb = log.TensorBoard(dir)
  for i = 0, 199 do tb:add_scalar("x", i * 0.5, i) end
  local img = medlua.arange(12 * 20 * 3):fmod(256):to("uint8"):view(12, 20, 3)
  tb:add_image("img", img, 3)
  tb:close()
  local path = dir .. "/" .. ls(dir)[1]
  local ev = log.read_tfevents(path)
  T.eq(#ev, 202)
  T.eq(ev[202].values[1].image.width, 20)
  T.eq(ev[202].values[1].image.height, 12)
  T.eq(ev[202].values[1].image.colorspace, 3)
  local good = read(path)
  -- every record's CRCs recomputed here
  local i, n = 1, 0
  while i <= #good do
    local lenb = good:sub(i, i + 7)
    local len = string.unpack("<I8", lenb)
    T.eq(string.unpack("<I4", good, i + 8), log.masked_crc32c(lenb))
    T.eq(string.unpack("<I4", good, i + 12 + len), log.masked_crc32c(good:sub(i + 12, i + 11 + len)))
    i, n = i + 16 + len, n + 1
  end
  T.eq(n, 202)
  -- a flipped data byte, a flipped length byte, a truncated file
  local b = good:sub(1, 30) .. string.char(good:byte(31) ~ 1) .. good:sub(32)
  write(path, b)
  T.raises(function() log.read_tfevents(path) end, path .. ": record 1: data CRC mismatch")
  write(path, string.char(good:byte(1) ~ 4) .. good:sub(2))
  T.raises(function() log.read_tfevents(path) end, path .. ": record 1: length CRC mismatch")
  write(path, good:sub(1, #good - 10))
  T.raises(function() log.read_tfevents(path) end, "record 202: truncated")
  T.raises(function() log.read_tfevents(dir .. "/nope") end, dir .. "/nope: cannot open")
  T.raises(function() log.TensorBoard("/proc/no_such/x") end, "/proc/no_such/x: cannot create the folder")
  rmrf(dir)
end)

-- ------------------------------------------------------------------ medlua.plot
T.case("plot.lines draws axes, series and legend into an RGB uint8 image", function()
  local x, y1, y2 = {}, {}, {}
  for i = 1, 50 do x[i] = i; y1[i] = math.exp(-i / 10); y2[i] = i % 5 == 0 and 0.5 or 0 / 0 end
  local img = plot.lines{series = {{name = "train", x = x, y = y1}, {name = "val", x = x, y = y2}}, title = "Loss",
    xlabel = "epoch", ylabel = "loss", width = 320, height = 200}
  T.eq(img.dtype, "uint8")
  T.eq(img:size(), {200, 320, 3})
  local px = img:view(-1, 3):double()
  -- white background dominates; the first palette colour (31, 119, 180) appears
  local n_white = px:eq(255):float():sum(1):eq(3):float():sum():item()
  T.ok(n_white > 200 * 320 * 0.6, "mostly white")
  local blue = (px:select(1, 2) - px:select(1, 0)):gt(100)
  T.ok(blue:float():sum():item() > 100, "the first series is drawn in the first palette colour (blue)")
  local orange = (px:select(1, 0) - px:select(1, 2)):gt(100)
  T.ok(orange:float():sum():item() > 20, "the second series' markers and legend are orange")
  local black = px:sum(1):eq(0):float():sum():item()
  T.ok(black > 2 * (320 + 200) * 0.6, "a black frame and text")
  -- logy, tensors as data, a single point, an empty series
  local img2 = plot.lines{series = {{y = medlua.tensor({1, 10, 100, -1, 1000})}, {name = "one", y = {5}}, {name = "empty", y = {}}},
    logy = true}
  T.eq(img2:size(), {500, 800, 3})
end)

T.case("plot.save_png writes a PNG; panels; errors", function()
  local dir = tmpdir()
  os.execute("mkdir -p '" .. dir .. "'")
  local path = dir .. "/c.png"
  local spec = {panels = {{series = {{name = "a", y = {1, 2, 3}}}}, {series = {{name = "b", y = {3, 2, 1}}}}}, cols = 2,
    width = 400, height = 150, title = "two"}
  plot.save_png(path, spec)
  local img = medlua._volume.read_png(path)
  T.eq(img:size(), {150, 400, 3})
  T.tensor_eq(img, plot.panels(spec))
  T.raises(function() plot.lines{series = {{x = {1, 2}, y = {1, 2, 3}}}} end, "series 1 ('1'): x has 2 values, y has 3")
  T.raises(function() plot.lines{series = {}, width = 10} end, "width and height must be integers in 64..8192")
  T.raises(function() plot.lines{series = {{y = "abc"}}} end, "series 1.y must be a list or a tensor")
  rmrf(dir)
end)

T.case("the built-in font covers printable ASCII and tick labels read well", function()
  for c = 32, 126 do T.ok(plot.font[string.char(c)], "glyph for " .. string.char(c)) end
  T.eq(plot.fmt_tick(0.5, 0.5), "0.5")
  T.eq(plot.fmt_tick(2.5, 2.5), "2.5")
  T.eq(plot.fmt_tick(100, 50), "100")
  T.eq(plot.fmt_tick(0.0001, 0.0001), "1e-4")
  T.eq(plot.fmt_tick(1e-17, 0.1), "0")
end)

T.run()
