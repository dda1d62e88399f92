-- medlua.progress: a progress bar with rate and ETA on a terminal, plain lines otherwise.
--   local bar = progress.new(total, {desc = "epoch 1", unit = "step"})
--   for i = 1, total do ...; bar:update(1, {loss = l}) end
--   bar:close()
local medlua = require "medlua"
local progress = {}
local Bar = {}
Bar.__index = Bar

local function now() return medlua.clock and medlua.clock() or os.clock() end

local function fmt_time(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%d:%02d:%02d", s // 3600, (s % 3600) // 60, s % 60) end
  return string.format("%02d:%02d", s // 60, s % 60)
end

function progress.new(total, opts)
  opts = opts or {}
  local tty = opts.tty
  if tty == nil then tty = medlua.isatty and medlua.isatty(1) or false end
  local self = setmetatable({total = total, n = 0, desc = opts.desc or "", unit = opts.unit or "it",
    t0 = now(), tty = tty, last = 0, every = opts.every or math.max(1, (total or 100) // 10),
    out = opts.out or io.stdout, width = opts.width or 28}, Bar)
  return self
end

function Bar:_postfix(post)
  if not post then return "" end
  local keys = {}
  for k in pairs(post) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do
    local v = post[k]
    parts[#parts + 1] = type(v) == "number" and string.format("%s=%.4g", k, v) or (k .. "=" .. tostring(v))
  end
  return " " .. table.concat(parts, " ")
end

function Bar:line(post)
  local el = now() - self.t0
  local rate = el > 0 and self.n / el or 0
  local eta = (self.total and rate > 0) and (self.total - self.n) / rate or math.huge
  local head = self.desc ~= "" and (self.desc .. " ") or ""
  if self.total then
    local frac = self.total > 0 and self.n / self.total or 1
    local bar = ""
    if self.tty then
      local filled = math.floor(frac * self.width + 0.5)
      bar = "|" .. string.rep("#", filled) .. string.rep(" ", self.width - filled) .. "| "
    end
    return string.format("%s%3d%% %s%d/%d [%s<%s, %.2f %s/s]%s", head, math.floor(frac * 100 + 0.5), bar,
      self.n, self.total, fmt_time(el), fmt_time(eta), rate, self.unit, self:_postfix(post))
  end
  return string.format("%s%d %s [%s, %.2f %s/s]%s", head, self.n, self.unit, fmt_time(el), rate, self.unit, self:_postfix(post))
end

function Bar:update(k, post)
  self.n = self.n + (k or 1)
  self.post = post or self.post
  if self.tty then
    local t = now()
    if t - self.last > 0.1 or self.n == self.total then
      self.out:write("\r\27[K", self:line(self.post))
      self.out:flush()
      self.last = t
    end
  elseif self.n % self.every == 0 or self.n == self.total then
    self.out:write(self:line(self.post), "\n")
    self.out:flush()
  end
end

function Bar:close()
  if self.tty then self.out:write("\r\27[K", self:line(self.post), "\n") end
  self.out:flush()
  return now() - self.t0
end

return progress
