-- check_setup.lua: is this machine ready to run the segmentation recipes? (the check_setup.py of a
-- PyTorch + MONAI project: versions, threads, GPU, oneDNN, memory, data, one timed training-like op)
--
--   medlua recipes/check_setup.lua
--   medlua recipes/check_setup.lua --threads 4
--
-- Prints one line per check and ends with "setup OK", or with the list of problems and exit code 1.
-- Optional pieces (a GPU, the larger shared data set ../shared/data/ct_totalseg) are reported but are
-- not problems when absent.
local medlua = require "medlua"
local cli = require "medlua.cli"
local path = require "medlua.path"
local F = medlua.F

local args = cli.parse(arg, {
  description = "Check the medlua installation: versions, threads, GPU, oneDNN, memory, sample data, a timed 3D conv.",
  {"--threads", 0, "CPU threads to use (0 = leave as configured)"},
  {"--size", 32, "edge of the cube used by the timed 3D conv forward+backward"},
})

local problems = {}
local function problem(msg) problems[#problems + 1] = msg end
local function line(label, value) print(string.format("%-22s %s", label .. ":", value)) end
local clean = cli.clean

-- where the repository is: the directory above this script (recipes/..)
local dirname, join, is_dir = path.dirname, path.join, path.is_dir
local script_dir = dirname(arg and arg[0] or "recipes/check_setup.lua")
local root = script_dir:match("^(.*)/recipes$") or (script_dir == "recipes" and ".") or join(script_dir, "..")

local function is_file(p)
  local f = io.open(p, "rb")
  if not f then return false end
  local ok, _, code = f:read(0)
  f:close()
  return code ~= 21 and ok ~= nil
end
local function human(bytes)
  local units = {"B", "KiB", "MiB", "GiB", "TiB"}
  local v, u = bytes, 1
  while v >= 1024 and u < #units do v, u = v / 1024, u + 1 end
  return u == 1 and string.format("%d B", v) or string.format("%.1f %s", v, units[u])
end

print("medlua setup check")
print(string.rep("-", 60))

-- versions
line("medlua", medlua.version or "?")
local exe = arg and arg[-1]
local onednn
if exe then
  local p = io.popen(string.format("'%s' --version 2>/dev/null", exe:gsub("'", "'\\''")))
  if p then
    local v = p:read("a") or ""
    p:close()
    onednn = v:match("oneDNN ([%d%.]+)")
    local lua_release = v:match("(Lua [%d%.]+)")
    line("Lua", lua_release or _VERSION)
  else
    line("Lua", _VERSION)
  end
else
  line("Lua", _VERSION)
end
if _VERSION ~= "Lua 5.4" then problem("expected Lua 5.4, running " .. tostring(_VERSION)) end

-- threads
if args.threads > 0 then medlua.threads(math.tointeger(args.threads) or 1) end
local nproc
do
  local f = io.open("/proc/cpuinfo", "r")
  if f then
    nproc = 0
    for l in f:lines() do if l:match("^processor%s*:") then nproc = nproc + 1 end end
    f:close()
  end
end
line("CPU threads", string.format("%d (medlua.threads())%s%s", medlua.threads(),
  nproc and nproc > 0 and string.format(", %d logical CPUs", nproc) or "",
  os.getenv("OMP_NUM_THREADS") and (", OMP_NUM_THREADS=" .. os.getenv("OMP_NUM_THREADS")) or ""))

-- GPU
local cuda = rawget(medlua, "cuda")
if type(cuda) == "table" and type(cuda.available) == "function" then
  local ok, avail = pcall(cuda.available)
  if ok and avail then
    local desc = "available"
    if type(cuda.device_count) == "function" then
      local ok2, n = pcall(cuda.device_count)
      if ok2 and n then desc = desc .. string.format(" (%s device%s)", tostring(n), n == 1 and "" or "s") end
    end
    if type(cuda.device_name) == "function" then
      local ok3, name = pcall(cuda.device_name, 0)
      if ok3 and name then desc = desc .. ": " .. tostring(name) end
    end
    line("GPU", desc)
  else
    line("GPU", "none (CUDA support built in, but no usable device" .. (ok and "" or (": " .. clean(avail))) .. ")")
  end
else
  line("GPU", "none (CPU only)")
end

-- oneDNN: a small convolution with a known answer
do
  local ok, err = pcall(function()
    local x = medlua.ones(1, 1, 5, 5)
    local w = medlua.ones(2, 1, 3, 3)
    local y = F.conv2d(x, w)
    local s = y:size()
    if s[1] ~= 1 or s[2] ~= 2 or s[3] ~= 3 or s[4] ~= 3 then
      error("conv2d gave shape [" .. table.concat(s, ", ") .. "], expected [1, 2, 3, 3]")
    end
    local mx, mn = y:max():item(), y:min():item()
    if math.abs(mx - 9) > 1e-5 or math.abs(mn - 9) > 1e-5 then
      error(string.format("conv2d of ones gave values in [%g, %g], expected 9", mn, mx))
    end
  end)
  if ok then
    line("oneDNN", (onednn and ("v" .. onednn .. ", ") or "") .. "convolution OK")
  else
    line("oneDNN", "FAILED: " .. clean(err))
    problem("oneDNN convolution failed: " .. clean(err))
  end
end

-- Lua library modules the recipes use
do
  local mods = {"medlua.nn", "medlua.optim", "medlua.losses", "medlua.metrics", "medlua.data", "medlua.transforms",
    "medlua.volume", "medlua.labelmap", "medlua.json", "medlua.plot"}
  local bad = {}
  for _, m in ipairs(mods) do
    local ok, err = pcall(require, m)
    if not ok then bad[#bad + 1] = m .. " (" .. clean(err):match("^[^\n]*") .. ")" end
  end
  if #bad == 0 then
    line("Lua modules", string.format("%d loaded (nn, optim, losses, metrics, data, transforms, volume, ...)", #mods))
  else
    line("Lua modules", "FAILED: " .. table.concat(bad, "; "))
    problem("Lua modules failed to load: " .. table.concat(bad, "; "))
  end
end

-- sample data
print(string.format("%-22s %s", "repository:", root))
do
  local samples = join(root, "data/samples")
  local want = {
    {"example_ct.nii.gz", "file"},
    {"example_seg_full_fast.nii.gz", "file"},
    {"example_ct_dicom", "dir"},
    {"example_seg_dicom.nii.gz", "file"},
    {"labels_total.tsv", "file"},
  }
  local missing = {}
  for _, w in ipairs(want) do
    local p = join(samples, w[1])
    local ok = w[2] == "dir" and is_dir(p) or (w[2] == "file" and is_file(p))
    if not ok then missing[#missing + 1] = p end
  end
  if #missing == 0 then
    local volume = require "medlua.volume"
    local ok, v = pcall(volume.load, join(samples, "example_ct.nii.gz"))
    if ok then
      line("sample data", string.format("found in %s (example_ct: %s, %s)", samples,
        table.concat(v.shape, "x"), v.axcodes))
    else
      line("sample data", "found but unreadable: " .. clean(v))
      problem("sample CT " .. join(samples, "example_ct.nii.gz") .. " could not be read: " .. clean(v))
    end
  else
    line("sample data", "MISSING: " .. table.concat(missing, ", "))
    problem("sample data missing: " .. table.concat(missing, ", "))
  end
end
do
  local shared = join(root, "../shared/data/ct_totalseg")
  if is_dir(shared) then
    local n = 0
    local ok, names = pcall(medlua._data.listdir, shared)
    if ok and type(names) == "table" then n = #names end
    line("shared data", string.format("%s present (%d entries)", shared, n))
  else
    line("shared data", shared .. " not present (optional)")
  end
end

-- a timed sanity op: 3D conv forward + backward, as in a U-Net training step
do
  local S = math.tointeger(args.size) or 32
  local ok, err = pcall(function()
    medlua.manual_seed(0)
    local x = medlua.randn(1, 1, S, S, S)
    local w = medlua.randn(8, 1, 3, 3, 3, {requires_grad = true})
    local b = medlua.zeros(8, {requires_grad = true})
    -- warm-up (oneDNN builds its kernels on the first call), then the timed run
    F.conv3d(x, w, b, {padding = 1}):square():mean():backward()
    w.grad, b.grad = nil, nil
    local t0 = medlua.clock()
    local y = F.conv3d(x, w, b, {padding = 1})
    local loss = y:square():mean()
    loss:backward()
    local dt = medlua.clock() - t0
    local g = w.grad
    if g == nil then error("no gradient for the weight") end
    local gs = g:abs():sum():item()
    if gs ~= gs or gs == math.huge or gs == 0 then error("gradient is " .. tostring(gs)) end
    local ys = y:size()
    if ys[2] ~= 8 or ys[3] ~= S or ys[4] ~= S or ys[5] ~= S then
      error("output shape [" .. table.concat(ys, ", ") .. "]")
    end
    line("3D conv", string.format("1x1x%d^3 -> 8 channels, forward+backward in %.1f ms (loss %.4f)", S, dt * 1000,
      loss:item()))
  end)
  if not ok then
    line("3D conv", "FAILED: " .. clean(err))
    problem("3D convolution forward+backward failed: " .. clean(err))
  end
end

-- memory (after the timed op, so that the peak means something)
do
  local m = medlua.mem()
  local sys = ""
  local f = io.open("/proc/meminfo", "r")
  if f then
    local info = {}
    for l in f:lines() do
      local k, v = l:match("^(%w+):%s+(%d+) kB")
      if k then info[k] = tonumber(v) * 1024 end
    end
    f:close()
    if info.MemTotal then
      sys = string.format("system %s total, %s available; ", human(info.MemTotal), human(info.MemAvailable or 0))
      if info.MemAvailable and info.MemAvailable < 2 * 1024 ^ 3 then
        print("  note: less than 2 GiB of memory available; use small patches / batch 1 for 3D training")
      end
    end
  end
  line("memory", string.format("%smedlua tensors: %s live (%d tensors), peak %s", sys, human(m.cpu or 0),
    m.tensors or 0, human(m.cpu_peak or 0)))
end

print(string.rep("-", 60))
if #problems == 0 then
  print("setup OK")
else
  print(string.format("%d problem%s:", #problems, #problems == 1 and "" or "s"))
  for _, p in ipairs(problems) do print("  - " .. p) end
  os.exit(1)
end
