-- medlua.train: the training loop recipes share: progress bars, validation, checkpoints and exact resume,
-- metric logs (CSV, JSONL, TensorBoard), curves.png, early stopping and a summary.
--
--   local train = require "medlua.train"
--   local summary = train.fit{
--     model = net, optimizer = opt, scheduler = sched,        -- scheduler optional
--     loss_fn = F.cross_entropy,                              -- loss_fn(model:forward(x), y)
--     train_loader = loader,                                  -- see "Loaders" below
--     val_fn = function(model, epoch) return {val_dice = d, val_loss = l} end,
--     epochs = 50,                                            -- or steps = 10000
--     out_dir = "out/unet", monitor = "val_dice", mode = "max", resume = true,
--   }
--
-- Options (defaults):
--   model, optimizer                  required
--   loss_fn(pred, target) -> loss     with batches {x, y} / {input=, target=} / {image=, label=} / {x=, y=}
--   step_fn(model, batch, ctx) -> loss[, {name = number}]   instead of loss_fn: full control of a step
--   train_loader                      required (see below)
--   epochs | steps                    one of them (steps = a budget of optimizer steps)
--   steps_per_epoch                   caps an epoch (required for endless function loaders)
--   scheduler                         a medlua.sched scheduler; ReduceLROnPlateau steps after each
--                                     validation with the monitored metric
--   scheduler_step ("epoch")          "epoch" or "step"; OneCycleLR and WarmupCosineSchedule default to "step"
--   val_fn(model, epoch, step) -> {metric = number}   run in eval mode, without grad; its use of the
--                                     random generator does not change training's random stream
--   val_every (1)                     validate every n epochs (or, with val_every_steps, every n steps)
--   val_every_steps                   validate every n optimizer steps instead
--   monitor ("val_dice"), mode ("max") the metric that picks best.safetensors (without val_fn: train_loss, min)
--   early_stop_patience               stop after this many validations without improvement
--   min_delta (0)                     an improvement must beat the best by more than this
--   out_dir                           checkpoints, logs and curves go here (nothing is written without it)
--   resume (false)                    continue from out_dir/last.safetensors when it exists
--   checkpoint_every                  also save last.safetensors every n steps (mid-epoch)
--   clip_grad_norm                    max global gradient norm (logged as grad_norm)
--   on_step(info) -> false to stop    info = {epoch, step, step_in_epoch, loss, lr, metrics, model, optimizer}
--   seed                              medlua.manual_seed(seed) before a fresh run
--   tensorboard (true), plot (true)   TensorBoard events in out_dir/tb, out_dir/curves.png
--   quiet (false)                     no progress bars or summary lines
--   stop_on_nan (true)                raise when the loss is NaN or infinite
--
-- Loaders: a list of batches (iterated in order each epoch); a function fn(epoch, i) returning batch i
-- of the epoch or nil when the epoch ends; or an object with :iter(epoch) returning an iterator function
-- (and optionally #loader / loader:len()). A resumed mid-epoch run calls fn(epoch, i) from the next i,
-- indexes lists from there, and draws and discards the batches already used from iterators.
--
-- Files in out_dir: last.safetensors and best.safetensors (model weights under their own names,
-- optimizer state under "optimizer.", metadata: epoch, step, step_in_epoch, epoch_complete, best
-- metric, RNG seed/offset, scheduler state as JSON, running loss sums, elapsed time), metrics.csv and
-- metrics.jsonl (one row per epoch end and per validation: epoch, step, train_loss = mean since the last
-- row, lr, time, grad_norm, the val_fn metrics), steps.csv (loss and lr per step), tb/events.out.tfevents.*
-- (train/loss, train/lr, train/grad_norm per step; val/<metric> and train/epoch_loss per row), curves.png
-- (panels: losses, validation metrics, learning rate). train.load_model(model, path) loads the weights of
-- such a checkpoint, train.read_checkpoint(path) returns its metadata (numbers converted) and tensors.
-- The run is reproducible: a run resumed from last.safetensors ends with the same weights, optimizer and
-- scheduler state and logs as an uninterrupted one (the RNG state is part of the checkpoint).
local medlua = require "medlua"
local optim = require "medlua.optim"
local json = require "medlua.json"
local log = require "medlua.log"
local plot = require "medlua.plot"
local progress = require "medlua.progress"

local train = {}

local FORMAT = "medlua.train/1"
local OPT_PREFIX = "optimizer."

local function clock() return medlua.clock() end

local function fmt_time(s)
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm%02ds", s // 3600, (s % 3600) // 60, s % 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return string.format("%ds", s)
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function scalar(v)
  if medlua.is_tensor(v) then return v:item() end
  return v
end

-- ------------------------------------------------------------------ checkpoints
local function meta_num(meta, k, path)
  local v = meta[k]
  local n = v and tonumber(v)
  if not n then error(string.format("train: %s: metadata '%s' is missing or not a number (%s)", path, k, tostring(v)), 3) end
  return math.tointeger(n) or n
end

-- Splits a checkpoint's tensors into the model's and the optimizer's.
local function split_ckpt(tensors)
  local model_sd, opt_sd = {}, {}
  for k, t in pairs(tensors) do
    if k:sub(1, #OPT_PREFIX) == OPT_PREFIX then opt_sd[k:sub(#OPT_PREFIX + 1)] = t else model_sd[k] = t end
  end
  return model_sd, opt_sd
end

-- Loads the model weights of a train.fit checkpoint (or any safetensors file of weights).
function train.load_model(model, path, strict)
  local tensors, meta = medlua.load(path)
  local model_sd = split_ckpt(tensors)
  model:load_state_dict(model_sd, strict)
  return meta
end

-- A checkpoint's metadata with its numbers converted ({epoch =, step =, best_metric =, rng_seed =, ...},
-- scheduler = the decoded scheduler state) and its tensors.
function train.read_checkpoint(path)
  local tensors, meta = medlua.load(path)
  local out = {}
  for k, v in pairs(meta) do
    local n = tonumber(v)
    if k == "scheduler" then out[k] = json.decode(v, path .. ": scheduler")
    elseif n and k ~= "monitor" and k ~= "mode" and k ~= "format" then out[k] = math.tointeger(n) or n
    else out[k] = v end
  end
  return out, tensors
end

-- ------------------------------------------------------------------ loaders
local function loader_len(loader, steps_per_epoch)
  local n
  if type(loader) == "table" then
    if type(loader.len) == "function" then n = loader:len()
    elseif type(loader.iter) ~= "function" then n = #loader
    else
      local mt = getmetatable(loader)
      if mt and mt.__len then n = #loader end
    end
  end
  if steps_per_epoch then n = n and math.min(n, steps_per_epoch) or steps_per_epoch end
  return n
end

-- Returns next() for batches start_i, start_i + 1, ... of the epoch.
local function make_iter(loader, epoch, start_i)
  local i = start_i - 1
  if type(loader) == "function" then
    return function() i = i + 1; return loader(epoch, i) end
  end
  if type(loader) ~= "table" then error("train.fit: train_loader must be a list, a function or an object with :iter()", 3) end
  if type(loader.iter) == "function" then
    local it = loader:iter(epoch)
    if type(it) ~= "function" then error("train.fit: train_loader:iter(epoch) must return an iterator function", 3) end
    for _ = 1, start_i - 1 do if it() == nil then break end end
    return it
  end
  return function() i = i + 1; return loader[i] end
end

local function unpack_batch(batch)
  if type(batch) ~= "table" then return batch, nil end
  if batch[1] ~= nil then return batch[1], batch[2] end
  if batch.x ~= nil then return batch.x, batch.y end
  if batch.input ~= nil then return batch.input, batch.target end
  if batch.image ~= nil then return batch.image, batch.label end
  error("train.fit: cannot find the input in a batch (expected {x, y}, {input=, target=}, {image=, label=}" ..
    " or {x=, y=}); pass step_fn to handle other batches", 4)
end

-- ------------------------------------------------------------------ curves
local function decimate(xs, ys, maxn)
  if #xs <= maxn then return xs, ys end
  local bx, by = {}, {}
  local per = #xs / maxn
  for b = 0, maxn - 1 do
    local i0, i1 = math.floor(b * per) + 1, math.floor((b + 1) * per)
    local sx, sy, n = 0, 0, 0
    for i = i0, i1 do
      if ys[i] == ys[i] then sx = sx + xs[i]; sy = sy + ys[i]; n = n + 1 end
    end
    if n > 0 then bx[#bx + 1] = sx / n; by[#by + 1] = sy / n end
  end
  return bx, by
end

local function is_loss_name(k) return k:find("loss", 1, true) ~= nil end

-- Panels: losses (per step, epoch means, validation losses), validation metrics, learning rate.
function train.curves_spec(steps_hist, rows, title)
  local sx, sy, lx, ly = {}, {}, {}, {}
  for _, r in ipairs(steps_hist) do
    sx[#sx + 1] = r.step; sy[#sy + 1] = r.loss
    lx[#lx + 1] = r.step; ly[#ly + 1] = r.lr
  end
  sx, sy = decimate(sx, sy, 1500)
  lx, ly = decimate(lx, ly, 1500)
  local loss_series = {}
  if #sx > 0 then loss_series[#loss_series + 1] = {name = "train loss (step)", x = sx, y = sy, marker = false, width = 1,
    color = {160, 190, 220}} end
  local series_by = {}
  local order = {}
  for _, r in ipairs(rows) do
    for k, v in pairs(r) do
      if type(v) == "number" and k ~= "epoch" and k ~= "step" and k ~= "time" and k ~= "lr" and k ~= "grad_norm" then
        if not series_by[k] then series_by[k] = {x = {}, y = {}}; order[#order + 1] = k end
        local s = series_by[k]
        s.x[#s.x + 1] = r.step; s.y[#s.y + 1] = v
      end
    end
  end
  table.sort(order)
  local metric_series = {}
  for _, k in ipairs(order) do
    local s = series_by[k]
    local entry = {name = k, x = s.x, y = s.y}
    if is_loss_name(k) then loss_series[#loss_series + 1] = entry else metric_series[#metric_series + 1] = entry end
  end
  local logy = true
  for _, s in ipairs(loss_series) do for _, v in ipairs(s.y) do if v == v and v <= 0 then logy = false end end end
  local panels = {{title = "loss", xlabel = "step", series = loss_series, logy = logy}}
  if #metric_series > 0 then panels[#panels + 1] = {title = "validation", xlabel = "step", series = metric_series} end
  if #lx > 0 then
    panels[#panels + 1] = {title = "learning rate", xlabel = "step", series = {{name = "lr", x = lx, y = ly,
      marker = false}}, legend = false}
  end
  return {panels = panels, cols = #panels, width = 420 * #panels, height = 340, title = title}
end

-- ------------------------------------------------------------------ fit
local function check_opts(o)
  local known = {model = 1, optimizer = 1, scheduler = 1, scheduler_step = 1, loss_fn = 1, step_fn = 1,
    train_loader = 1, val_fn = 1, epochs = 1, steps = 1, steps_per_epoch = 1, val_every = 1, val_every_steps = 1,
    out_dir = 1, monitor = 1, mode = 1, early_stop_patience = 1, min_delta = 1, resume = 1, checkpoint_every = 1,
    clip_grad_norm = 1, on_step = 1, seed = 1, tensorboard = 1, plot = 1, quiet = 1, stop_on_nan = 1, name = 1}
  for k in pairs(o) do
    if not known[k] then error("train.fit: unknown option '" .. tostring(k) .. "'", 3) end
  end
  if not o.model or type(o.model.parameters) ~= "function" then error("train.fit: 'model' must be an nn module", 3) end
  if type(o.optimizer) ~= "table" or type(o.optimizer.step) ~= "function" then
    error("train.fit: 'optimizer' must be an optimizer (optim.SGD/Adam/AdamW)", 3)
  end
  if not o.loss_fn and not o.step_fn then error("train.fit: give loss_fn(pred, target) or step_fn(model, batch)", 3) end
  if o.train_loader == nil then error("train.fit: 'train_loader' is required", 3) end
  if (o.epochs == nil) == (o.steps == nil) then error("train.fit: give exactly one of 'epochs' and 'steps'", 3) end
  for _, k in ipairs{"epochs", "steps", "steps_per_epoch", "val_every", "val_every_steps", "early_stop_patience",
    "checkpoint_every"} do
    local v = o[k]
    if v ~= nil and not (math.type(v) == "integer" and v > 0) then
      error(string.format("train.fit: '%s' must be a positive integer, got %s", k, tostring(v)), 3)
    end
  end
  if o.mode ~= nil and o.mode ~= "max" and o.mode ~= "min" then
    error("train.fit: mode must be 'max' or 'min', got " .. tostring(o.mode), 3)
  end
  if o.resume and not o.out_dir then error("train.fit: resume needs out_dir", 3) end
  if o.scheduler_step ~= nil and o.scheduler_step ~= "epoch" and o.scheduler_step ~= "step" then
    error("train.fit: scheduler_step must be 'epoch' or 'step'", 3)
  end
end

local NULL_OUT = {write = function() end, flush = function() end}

function train.fit(o)
  assert(type(o) == "table", "train.fit: expected an options table")
  check_opts(o)
  local model, opt, sched = o.model, o.optimizer, o.scheduler
  local params = model:parameters()
  local quiet = o.quiet
  local out = quiet and NULL_OUT or io.stdout
  local function say(...) if not quiet then print(string.format(...)) end end

  local monitor, mode = o.monitor or "val_dice", o.mode or "max"
  if not o.val_fn and o.monitor == nil then monitor, mode = "train_loss", o.mode or "min" end
  local min_delta = o.min_delta or 0
  local plateau = sched and sched.type == "ReduceLROnPlateau"
  local sched_step = o.scheduler_step
  if sched and not sched_step then
    sched_step = (sched.type == "OneCycleLR" or sched.type == "WarmupCosineSchedule") and "step" or "epoch"
  end
  local val_every = o.val_every or 1
  local stop_on_nan = o.stop_on_nan ~= false

  -- state
  local epoch, start_i, step = 1, 1, 0
  local best, best_epoch, best_step = nil, nil, nil
  local bad = 0
  local elapsed0 = 0
  local steps_hist, rows = {}, {}
  local dir = o.out_dir
  local last_path = dir and (dir .. "/last.safetensors")
  local best_path = dir and (dir .. "/best.safetensors")
  local stopped_early = false

  if dir then log.mkdir_p(dir, "train.fit") end

  -- resume
  local resumed = false
  local pending_acc
  if o.resume and file_exists(last_path) then
    local tensors, meta = medlua.load(last_path)
    if meta.format ~= FORMAT then
      error(string.format("train.fit: %s: not a train.fit checkpoint (format '%s')", last_path, tostring(meta.format)), 2)
    end
    local model_sd, opt_sd = split_ckpt(tensors)
    local ok, err = pcall(model.load_state_dict, model, model_sd, true)
    if not ok then error("train.fit: " .. last_path .. ": " .. tostring(err), 2) end
    opt:load_state_dict(opt_sd)
    if sched then
      if not meta.scheduler then error("train.fit: " .. last_path .. ": the checkpoint has no scheduler state", 2) end
      sched:load_state_dict(json.decode(meta.scheduler, last_path .. ": scheduler"))
    end
    medlua.set_rng_state(meta_num(meta, "rng_seed", last_path), meta_num(meta, "rng_offset", last_path))
    epoch = meta_num(meta, "epoch", last_path)
    local sie = meta_num(meta, "step_in_epoch", last_path)
    step = meta_num(meta, "step", last_path)
    if meta.epoch_complete == "1" then epoch, start_i = epoch + 1, 1 else start_i = sie + 1 end
    if meta.best_metric and meta.best_metric ~= "" then
      best = tonumber(meta.best_metric)
      best_epoch, best_step = tonumber(meta.best_epoch), tonumber(meta.best_step)
    end
    bad = tonumber(meta.bad_validations) or 0
    pending_acc = {tonumber(meta.acc_loss) or 0, math.tointeger(tonumber(meta.acc_n) or 0) or 0,
      tonumber(meta.acc_grad_norm) or 0, math.tointeger(tonumber(meta.acc_grad_norm_n) or 0) or 0}
    elapsed0 = tonumber(meta.time) or 0
    resumed = true
    say("resumed from %s: epoch %d, step %d%s", last_path, epoch, step,
      best and string.format(", best %s %.6g at epoch %d", monitor, best, best_epoch) or "")
  else
    if o.seed then medlua.manual_seed(o.seed) end
    if o.resume then say("resume: no checkpoint in %s, starting fresh", dir) end
  end

  -- logs
  local csv, jsonl, steps_csv, tb
  if dir then
    if not resumed then
      for _, f in ipairs{"metrics.csv", "metrics.jsonl", "steps.csv"} do os.remove(dir .. "/" .. f) end
      if o.tensorboard ~= false then -- old event files of a fresh run would mix with the new curves
        local p = io.popen("ls -1 " .. "'" .. (dir .. "/tb"):gsub("'", "'\\''") .. "' 2>/dev/null")
        if p then
          for name in p:lines() do
            if name:match("^events%.out%.tfevents%.") then os.remove(dir .. "/tb/" .. name) end
          end
          p:close()
        end
      end
    end
    csv = log.CSV(dir .. "/metrics.csv", {"epoch", "step", "train_loss", "lr", "time"})
    jsonl = log.JSONL(dir .. "/metrics.jsonl")
    steps_csv = log.CSV(dir .. "/steps.csv", {"step", "epoch", "loss", "lr"})
    if resumed then
      csv:truncate_after("step", step)
      jsonl:truncate_after("step", step)
      steps_csv:truncate_after("step", step)
      rows = log.read_jsonl(dir .. "/metrics.jsonl")
      for _, r in ipairs(rows) do for k, v in pairs(r) do if v == json.null then r[k] = 0 / 0 end end end
      steps_hist = log.read_csv(dir .. "/steps.csv")
    end
    if o.tensorboard ~= false then tb = log.TensorBoard(dir .. "/tb") end
  end

  local t_start = clock()
  local function elapsed() return elapsed0 + clock() - t_start end

  local function better(v)
    if v ~= v then return false end
    if best == nil then return true end
    if mode == "max" then return v > best + min_delta end
    return v < best - min_delta
  end

  -- running sums since the last metrics row
  local acc_loss, acc_n, acc_gn, acc_gn_n = 0, 0, 0, 0
  if pending_acc then acc_loss, acc_n, acc_gn, acc_gn_n = table.unpack(pending_acc) end

  local function save(path, ep, sie, complete)
    if not dir then return end
    local tensors = {}
    local sd = model:state_dict()
    for k, t in pairs(sd) do tensors[k] = t end
    for k, t in pairs(opt:state_dict()) do tensors[OPT_PREFIX .. k] = t end
    local seed, offset = medlua.get_rng_state()
    local meta = {
      format = FORMAT, epoch = tostring(ep), step = tostring(step), step_in_epoch = tostring(sie),
      epoch_complete = complete and "1" or "0", rng_seed = tostring(seed), rng_offset = tostring(offset),
      monitor = monitor, mode = mode, best_metric = best and string.format("%.17g", best) or "",
      best_epoch = best_epoch and tostring(best_epoch) or "", best_step = best_step and tostring(best_step) or "",
      bad_validations = tostring(bad), time = string.format("%.3f", elapsed()), lr = string.format("%.17g", opt.lr),
      optimizer = opt.name or "",
      acc_loss = string.format("%.17g", acc_loss), acc_n = tostring(acc_n),
      acc_grad_norm = string.format("%.17g", acc_gn), acc_grad_norm_n = tostring(acc_gn_n),
    }
    if sched then
      meta.scheduler = json.encode(sched:state_dict())
      meta.scheduler_type = sched.type
    end
    medlua.save(path, tensors, meta)
  end

  local function write_curves()
    if not dir or o.plot == false then return end
    local ok, err = pcall(plot.save_png, dir .. "/curves.png", train.curves_spec(steps_hist, rows, o.name))
    if not ok then io.stderr:write("train.fit: curves.png: ", tostring(err), "\n") end
  end

  -- one metrics row (epoch end or validation)
  local function emit_row(ep, metrics)
    local r = {epoch = ep, step = step, lr = opt.lr, time = elapsed()}
    if acc_n > 0 then r.train_loss = acc_loss / acc_n end
    if acc_gn_n > 0 then r.grad_norm = acc_gn / acc_gn_n end
    for k, v in pairs(metrics or {}) do r[k] = v end
    acc_loss, acc_n, acc_gn, acc_gn_n = 0, 0, 0, 0
    rows[#rows + 1] = r
    if csv then csv:log(r); jsonl:log(r) end
    if tb then
      local s = {}
      for k, v in pairs(r) do
        if k ~= "epoch" and k ~= "step" and k ~= "time" and type(v) == "number" then
          s[(k:match("^val_") and "val/" .. k:sub(5)) or (k == "train_loss" and "train/epoch_loss") or ("metrics/" .. k)] = v
        end
      end
      tb:add_scalars(s, step)
      tb:flush()
    end
    return r
  end

  -- validation: eval mode, no grad, RNG-neutral; updates best/early stopping; returns metrics, stop flag
  local last_metrics
  local function validate(ep, sie, complete)
    local metrics = {}
    if o.val_fn then
      local seed, offset = medlua.get_rng_state()
      model:eval()
      local ok, res
      do
        local g <close> = medlua.no_grad()
        ok, res = pcall(o.val_fn, model, ep, step)
      end
      model:train()
      medlua.set_rng_state(seed, offset)
      if not ok then error(res, 0) end
      if type(res) ~= "table" then error("train.fit: val_fn must return a table of metrics, got " .. type(res), 0) end
      for k, v in pairs(res) do
        v = scalar(v)
        if type(v) == "number" then metrics[k] = v end
      end
    end
    last_metrics = metrics
    local value = metrics[monitor]
    if value == nil and monitor == "train_loss" and acc_n > 0 then value = acc_loss / acc_n end
    if value == nil then
      local names = {}
      for k in pairs(metrics) do names[#names + 1] = k end
      table.sort(names)
      error(string.format("train.fit: monitor '%s' is not among the metrics val_fn returned (%s)", monitor,
        #names > 0 and table.concat(names, ", ") or "none"), 0)
    end
    if plateau then sched:step(value) end
    local improved = better(value)
    if improved then
      best, best_epoch, best_step, bad = value, ep, step, 0
    else
      bad = bad + 1
    end
    local parts = {}
    local names = {}
    for k in pairs(metrics) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do parts[#parts + 1] = string.format("%s %.4f", k, metrics[k]) end
    if o.val_fn then say("  validation epoch %d step %d: %s%s", ep, step, table.concat(parts, "  "),
      improved and string.format("  (best %s)", monitor) or string.format("  (best %.4f at epoch %d)", best, best_epoch)) end
    local stop = o.early_stop_patience and bad >= o.early_stop_patience or false
    return metrics, improved, stop
  end

  -- ---------------------------------------------------------------- the loop
  local total_epochs = o.epochs
  local budget = o.steps
  local done = (total_epochs and epoch > total_epochs) or (budget and step >= budget)
  if done then say("nothing to do: the checkpoint is at epoch %d, step %d", epoch - 1, step) end
  model:train()
  local stop_requested = false

  while not done do
    local len = loader_len(o.train_loader, o.steps_per_epoch)
    local it = make_iter(o.train_loader, epoch, start_i)
    local desc = total_epochs and string.format("epoch %d/%d", epoch, total_epochs) or string.format("epoch %d", epoch)
    local bar_total = len
    if budget and len then bar_total = math.min(len, start_i - 1 + budget - step) end
    local bar = progress.new(bar_total and (bar_total - start_i + 1) or nil, {desc = desc, unit = "step", out = out})
    local i = start_i - 1
    local epoch_ended = false
    while true do
      if len and i >= len then epoch_ended = true; break end
      if budget and step >= budget then break end
      local batch = it()
      if batch == nil then epoch_ended = true; break end
      i = i + 1
      step = step + 1
      opt:zero_grad()
      local loss, extra
      if o.step_fn then
        loss, extra = o.step_fn(model, batch, {epoch = epoch, step = step, step_in_epoch = i})
      else
        local x, y = unpack_batch(batch)
        loss = o.loss_fn(model:forward(x), y)
      end
      if not medlua.is_tensor(loss) then error(string.format("train.fit: the loss at step %d is not a tensor (%s)",
        step, type(loss)), 2) end
      local lval = loss:item()
      if stop_on_nan and (lval ~= lval or lval == math.huge or lval == -math.huge) then
        bar:close()
        error(string.format("train.fit: the loss is %s at epoch %d step %d (last good checkpoint: %s)",
          lval ~= lval and "NaN" or tostring(lval),
          epoch, step, last_path or "none"), 2)
      end
      loss:backward()
      local gn
      if o.clip_grad_norm then gn = optim.clip_grad_norm_(params, o.clip_grad_norm) end
      opt:step()
      loss = nil
      local lr_used = opt.lr
      if sched and sched_step == "step" and not plateau then sched:step() end
      acc_loss, acc_n = acc_loss + lval, acc_n + 1
      if gn then acc_gn, acc_gn_n = acc_gn + gn, acc_gn_n + 1 end
      steps_hist[#steps_hist + 1] = {step = step, loss = lval, lr = lr_used}
      if steps_csv then steps_csv:log{step = step, epoch = epoch, loss = lval, lr = lr_used} end
      if tb then
        local s = {["train/loss"] = lval, ["train/lr"] = lr_used}
        if gn then s["train/grad_norm"] = gn end
        if type(extra) == "table" then
          for k, v in pairs(extra) do v = scalar(v); if type(v) == "number" then s["train/" .. k] = v end end
        end
        tb:add_scalars(s, step)
      end
      local post = {loss = lval, lr = lr_used}
      bar:update(1, post)
      if o.on_step then
        local r = o.on_step({epoch = epoch, step = step, step_in_epoch = i, loss = lval, lr = lr_used,
          metrics = extra, model = model, optimizer = opt})
        if r == false then stop_requested = true end
      end
      if o.val_every_steps and step % o.val_every_steps == 0 then
        local metrics, improved, stop = validate(epoch, i, false)
        emit_row(epoch, metrics)
        if improved then save(best_path, epoch, i, len ~= nil and i >= len) end
        write_curves()
        if stop then stopped_early = true end
      end
      if o.checkpoint_every and step % o.checkpoint_every == 0 then save(last_path, epoch, i, false) end
      if stopped_early or stop_requested then break end
    end
    local epoch_time = bar:close()
    if acc_n > 0 then
      say("%s: %d steps, loss %.4g, lr %.3g, %.1f s (%.2f steps/s)", desc, i - start_i + 1, acc_loss / acc_n, opt.lr,
        epoch_time, (i - start_i + 1) / math.max(epoch_time, 1e-9))
    end
    if epoch_ended and not stopped_early and not stop_requested then
      if sched and sched_step == "epoch" and not plateau then sched:step() end
      local metrics, improved, stop
      if o.val_fn and not o.val_every_steps and epoch % val_every == 0 then
        metrics, improved, stop = validate(epoch, i, true)
      elseif not o.val_fn and not o.val_every_steps then
        metrics, improved, stop = validate(epoch, i, true) -- monitors train_loss
      end
      emit_row(epoch, metrics)
      save(last_path, epoch, i, true)
      if improved then save(best_path, epoch, i, true) end
      write_curves()
      if stop then stopped_early = true end
      epoch, start_i = epoch + 1, 1
      if total_epochs and epoch > total_epochs then done = true end
    else
      -- stopped inside the epoch (step budget, early stop or on_step): keep the position and the
      -- running means (in the checkpoint), so a resumed run logs the same epoch row as a straight one
      save(last_path, epoch, i, false)
      write_curves()
      done = true
    end
    if budget and step >= budget then done = true end
    if stopped_early or stop_requested then done = true end
  end

  local total_time = elapsed()
  if tb then tb:close() end
  if csv then csv:close(); jsonl:close(); steps_csv:close() end
  if stopped_early then say("early stopping: no improvement of %s in %d validations", monitor, o.early_stop_patience) end
  local last_loss = steps_hist[#steps_hist] and steps_hist[#steps_hist].loss
  if best then
    say("done: %d steps, %s; best %s %.6g at epoch %d (step %d)%s", step, fmt_time(total_time), monitor, best,
      best_epoch, best_step, dir and (" -> " .. best_path) or "")
  else
    say("done: %d steps, %s", step, fmt_time(total_time))
  end
  return {best_metric = best, best_epoch = best_epoch, best_step = best_step, monitor = monitor, mode = mode,
    epochs = epoch - 1, steps = step, time = total_time, stopped_early = stopped_early, last_loss = last_loss,
    last_metrics = last_metrics, history = rows, out_dir = dir, resumed = resumed}
end

return train
