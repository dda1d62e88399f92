-- medlua.log: metric logs for training runs: CSV, JSON Lines and TensorBoard event files.
--
--   local log = require "medlua.log"
--   local csv = log.CSV("run/metrics.csv")                -- or log.CSV(path, {"epoch", "step", "loss"})
--   csv:log{epoch = 1, step = 100, loss = 0.25}           -- header written once; new keys add columns
--   local jl = log.JSONL("run/metrics.jsonl");  jl:log{epoch = 1, loss = 0.25}
--   local tb = log.TensorBoard("run/tb")                  -- run/tb/events.out.tfevents.<time>.<host>.<pid>
--   tb:add_scalar("loss/train", 0.25, 100)                -- tag, value, global step
--   tb:add_scalars({["val/dice"] = 0.8, ["val/loss"] = 0.3}, 100)   -- one event, several values
--   tb:add_image("curves", "run/curves.png", 100)         -- a PNG file (or an RGB uint8 tensor [H,W,3])
--   csv:close(); jl:close(); tb:close()                   -- also closed by <close> and the GC
--
-- Resuming a run: opening an existing CSV/JSONL file appends to it (the header is kept, a torn last line
-- from a crash is dropped) and `:truncate_after("step", s)` drops the rows logged after the checkpoint
-- at step s, so a resumed run does not log those steps twice. A TensorBoard writer always starts a new
-- event file in the folder (TensorBoard reads them all).
--
-- Event files follow TensorFlow's format: TFRecord framing (uint64 length, masked CRC32C of the length,
-- data, masked CRC32C of the data) around Event protobufs (wall_time = 1 double, step = 2 int64,
-- file_version = 3 "brain.Event:2" on the first record, summary = 5 with Summary.Value {tag = 1,
-- simple_value = 2 float, image = 4}); the protobuf bytes are written by hand. log.read_tfevents(path)
-- reads such a file back, checking every CRC. log.crc32c(s) and log.masked_crc32c(s) are exposed.
local json = require "medlua.json"

local log = {}

-- ------------------------------------------------------------------ small file helpers
local exists = require("medlua.path").exists

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Creates a folder and its parents (no-op when it exists). Raises "<what>: <dir>: reason" on failure.
function log.mkdir_p(dir, what)
  if dir == "" or exists(dir) then return dir end
  local ok = os.execute("mkdir -p -- " .. shell_quote(dir) .. " 2>/dev/null")
  if not ok or not exists(dir) then
    error(string.format("%s: %s: cannot create the folder", what or "mkdir", dir), 2)
  end
  return dir
end

local function read_all(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Writes `data` to a temporary file next to `path` and renames it into place.
local function write_atomic(path, data, what)
  local tmp = string.format("%s.tmp-%d", path, math.random(0, 0x7fffffff))
  local f, err = io.open(tmp, "wb")
  if not f then error(string.format("%s: %s: cannot write: %s", what, path, err), 3) end
  local ok, werr = f:write(data)
  local cok = f:close()
  if not ok or not cok then
    os.remove(tmp)
    error(string.format("%s: %s: write failed: %s", what, path, tostring(werr)), 3)
  end
  local rok, rerr = os.rename(tmp, path)
  if not rok then
    os.remove(tmp)
    error(string.format("%s: %s: rename failed: %s", what, path, tostring(rerr)), 3)
  end
end
log.write_atomic = write_atomic

local function hostname()
  local h = read_all("/proc/sys/kernel/hostname") or read_all("/etc/hostname") or os.getenv("HOSTNAME") or ""
  h = h:gsub("%s+", "")
  if h == "" then h = "localhost" end
  return (h:gsub("[^%w%.%-_]", "_"))
end

local function getpid()
  local s = read_all("/proc/self/stat")
  return s and tonumber(s:match("^(%d+)")) or 0
end

local function now()
  local m = package.loaded.medlua
  return m and m.clock and m.clock() or os.clock()
end

-- Wall-clock seconds with sub-second resolution (os.time() plus the monotonic clock since load).
local wall0, mono0 = os.time(), now()
local function wall_time() return wall0 + (now() - mono0) end
log.wall_time = wall_time

-- ------------------------------------------------------------------ value formatting
local function fmt_number(x)
  if math.type(x) == "integer" then return tostring(x) end
  if x ~= x then return "nan" end
  if x == math.huge then return "inf" end
  if x == -math.huge then return "-inf" end
  if x == math.floor(x) and math.abs(x) < 1e15 then return string.format("%.1f", x) end
  local s = string.format("%.15g", x)
  if tonumber(s) ~= x then s = string.format("%.17g", x) end
  return s
end

local function to_scalar(v)
  local m = package.loaded.medlua
  if m and m.is_tensor(v) then return v:item() end
  return v
end

-- Orders keys: the `first` list, then the rest sorted.
local PRIORITY = {"epoch", "step", "iteration", "time", "wall_time"}
local function ordered_keys(t, first)
  local seen, out = {}, {}
  for _, k in ipairs(first or PRIORITY) do
    if t[k] ~= nil and not seen[k] then out[#out + 1] = k; seen[k] = true end
  end
  local rest = {}
  for k in pairs(t) do if not seen[k] then rest[#rest + 1] = tostring(k) end end
  table.sort(rest)
  for _, k in ipairs(rest) do out[#out + 1] = k end
  return out
end

-- ------------------------------------------------------------------ CSV
local function csv_field(v)
  v = to_scalar(v)
  if v == nil then return "" end
  if type(v) == "number" then return fmt_number(v) end
  if type(v) == "boolean" then return tostring(v) end
  local s = tostring(v)
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

-- Splits one CSV line (RFC 4180 quoting, no embedded newlines) into fields.
local function csv_split(line)
  local out, i, n = {}, 1, #line
  if n == 0 then return {""} end
  while i <= n + 1 do
    if line:sub(i, i) == '"' then
      local buf, j = {}, i + 1
      while true do
        local q = line:find('"', j, true)
        if not q then buf[#buf + 1] = line:sub(j); j = n + 1; break end
        buf[#buf + 1] = line:sub(j, q - 1)
        if line:sub(q + 1, q + 1) == '"' then buf[#buf + 1] = '"'; j = q + 2 else j = q + 1; break end
      end
      out[#out + 1] = table.concat(buf)
      i = j + 1 -- skip the comma
    else
      local c = line:find(",", i, true)
      if not c then out[#out + 1] = line:sub(i); break end
      out[#out + 1] = line:sub(i, c - 1)
      i = c + 1
      if i == n + 1 then out[#out + 1] = ""; break end
    end
  end
  return out
end
log.csv_split = csv_split

-- Lines of a text file; a last line without its newline (a torn write) is reported separately.
local function split_lines(s)
  local lines = {}
  for l in s:gmatch("([^\n]*)\n") do lines[#lines + 1] = l:gsub("\r$", "") end
  local tail = s:match("[^\n]+$")
  return lines, tail
end

local CSV = {}
CSV.__index = CSV
CSV.__name = "medlua.log.CSV"

-- log.CSV(path, columns?) or log.CSV(path, {columns = {...}})
function log.CSV(path, opts)
  assert(type(path) == "string", "log.CSV: expected a file path")
  local columns
  if type(opts) == "table" and opts.columns then columns = opts.columns
  elseif type(opts) == "table" then columns = opts end
  local self = setmetatable({path = path, columns = {}, index = {}}, CSV)
  local s = read_all(path)
  local header_written = false
  if s and #s > 0 then
    local lines, tail = split_lines(s)
    if #lines == 0 then
      lines = {} -- only a torn header: start over
    else
      for _, c in ipairs(csv_split(lines[1])) do self:_add_col(c) end
      header_written = true
    end
    if tail then -- drop a torn last line
      write_atomic(path, #lines > 0 and (table.concat(lines, "\n") .. "\n") or "", "log.CSV")
    end
  end
  local extra = false
  for _, c in ipairs(columns or {}) do
    if not self.index[c] then self:_add_col(c); extra = header_written end
  end
  self.header_written = header_written
  if extra then self:_rewrite_header() end
  self:_open()
  if not self.header_written and #self.columns > 0 then self:_write_header() end
  return self
end

function CSV:_add_col(c)
  c = tostring(c)
  if self.index[c] then return end
  self.columns[#self.columns + 1] = c
  self.index[c] = #self.columns
end

function CSV:_open()
  local f, err = io.open(self.path, "ab")
  if not f then error(string.format("log.CSV: %s: cannot open for appending: %s", self.path, err), 3) end
  self.f = f
end

function CSV:_write_header()
  local h = {}
  for i, c in ipairs(self.columns) do h[i] = csv_field(c) end
  self.f:write(table.concat(h, ","), "\n")
  self.f:flush()
  self.header_written = true
end

-- New columns after rows were written: rewrite the file with the longer header, old rows padded.
function CSV:_rewrite_header()
  if self.f then self.f:close(); self.f = nil end
  local s = read_all(self.path) or ""
  local lines = split_lines(s)
  local ncol = #self.columns
  local h = {}
  for i, c in ipairs(self.columns) do h[i] = csv_field(c) end
  lines[1] = table.concat(h, ",")
  for i = 2, #lines do
    local have = #csv_split(lines[i])
    if have < ncol then lines[i] = lines[i] .. string.rep(",", ncol - have) end
  end
  write_atomic(self.path, table.concat(lines, "\n") .. "\n", "log.CSV")
  self.header_written = true
end

-- Appends one row (a table column -> number/string/boolean/1-element tensor); unknown keys add columns.
function CSV:log(row)
  if not self.f then error("log.CSV: " .. self.path .. ": the log is closed", 2) end
  local new = false
  for _, k in ipairs(ordered_keys(row)) do
    if not self.index[k] then self:_add_col(k); new = true end
  end
  if new then
    if self.header_written then self:_rewrite_header(); self:_open() else self:_write_header() end
  elseif not self.header_written then
    self:_write_header()
  end
  local fields = {}
  for i, c in ipairs(self.columns) do fields[i] = csv_field(row[c]) end
  self.f:write(table.concat(fields, ","), "\n")
  self.f:flush()
  return self
end
CSV.write = CSV.log

-- Drops rows whose column `key` holds a number greater than `value` (rows logged after a checkpoint).
function CSV:truncate_after(key, value)
  if self.f then self.f:close(); self.f = nil end
  local s = read_all(self.path) or ""
  local lines = split_lines(s)
  local col = self.index[key]
  if col and #lines > 1 then
    local keep = {lines[1]}
    for i = 2, #lines do
      local v = tonumber(csv_split(lines[i])[col])
      if not (v and v > value) then keep[#keep + 1] = lines[i] end
    end
    if #keep ~= #lines then write_atomic(self.path, table.concat(keep, "\n") .. "\n", "log.CSV") end
  end
  self:_open()
  return self
end

function CSV:close()
  if self.f then self.f:close(); self.f = nil end
end
CSV.__close = CSV.close
CSV.__gc = CSV.close

-- Reads a CSV file: a list of rows (tables column -> value; numeric fields become numbers) and the header.
function log.read_csv(path)
  local s = read_all(path)
  if not s then error("log.read_csv: " .. path .. ": cannot open", 2) end
  local lines = split_lines(s)
  if #lines == 0 then return {}, {} end
  local header = csv_split(lines[1])
  local rows = {}
  for i = 2, #lines do
    local f = csv_split(lines[i])
    local r = {}
    for j, c in ipairs(header) do
      local v = f[j]
      if v ~= nil and v ~= "" then
        local num = tonumber(v)
        if v == "nan" then num = 0 / 0 elseif v == "inf" then num = math.huge elseif v == "-inf" then num = -math.huge end
        r[c] = num or v
      end
    end
    rows[#rows + 1] = r
  end
  return rows, header
end

-- ------------------------------------------------------------------ JSON Lines
local JSONL = {}
JSONL.__index = JSONL
JSONL.__name = "medlua.log.JSONL"

local function json_safe(v)
  v = to_scalar(v)
  if type(v) == "number" and (v ~= v or v == math.huge or v == -math.huge) then return json.null end
  if type(v) == "table" and getmetatable(v) == nil then
    local o = {}
    for k, x in pairs(v) do o[k] = json_safe(x) end
    return o
  end
  return v
end
log.json_safe = json_safe

function log.JSONL(path)
  assert(type(path) == "string", "log.JSONL: expected a file path")
  local self = setmetatable({path = path}, JSONL)
  local s = read_all(path)
  if s and #s > 0 and s:sub(-1) ~= "\n" then
    local lines = split_lines(s)
    write_atomic(path, #lines > 0 and (table.concat(lines, "\n") .. "\n") or "", "log.JSONL")
  end
  self:_open()
  return self
end

function JSONL:_open()
  local f, err = io.open(self.path, "ab")
  if not f then error(string.format("log.JSONL: %s: cannot open for appending: %s", self.path, err), 3) end
  self.f = f
end

-- Appends one JSON object per line; NaN and infinities are written as null.
function JSONL:log(row)
  if not self.f then error("log.JSONL: " .. self.path .. ": the log is closed", 2) end
  local r = json_safe(row)
  self.f:write(json.encode(r, {key_order = ordered_keys(r)}), "\n")
  self.f:flush()
  return self
end
JSONL.write = JSONL.log

function JSONL:truncate_after(key, value)
  if self.f then self.f:close(); self.f = nil end
  local s = read_all(self.path) or ""
  local lines = split_lines(s)
  local keep = {}
  for _, l in ipairs(lines) do
    local ok, r = pcall(json.decode, l)
    local v = ok and type(r) == "table" and tonumber(r[key])
    if not (v and v > value) then keep[#keep + 1] = l end
  end
  if #keep ~= #lines then
    write_atomic(self.path, #keep > 0 and (table.concat(keep, "\n") .. "\n") or "", "log.JSONL")
  end
  self:_open()
  return self
end

function JSONL:close()
  if self.f then self.f:close(); self.f = nil end
end
JSONL.__close = JSONL.close
JSONL.__gc = JSONL.close

function log.read_jsonl(path)
  local s = read_all(path)
  if not s then error("log.read_jsonl: " .. path .. ": cannot open", 2) end
  local out = {}
  local n = 0
  for l in s:gmatch("([^\n]*)\n?") do
    n = n + 1
    if l ~= "" then out[#out + 1] = json.decode(l, path .. ":" .. n) end
  end
  return out
end

-- ------------------------------------------------------------------ CRC32C (Castagnoli), pure Lua
local CRC_T = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c & 1 == 1 then c = (c >> 1) ~ 0x82F63B78 else c = c >> 1 end
  end
  CRC_T[i] = c
end

function log.crc32c(s, crc)
  crc = (crc or 0) ~ 0xFFFFFFFF
  local T, byte = CRC_T, string.byte
  local n, i = #s, 1
  while i + 7 <= n do
    local b1, b2, b3, b4, b5, b6, b7, b8 = byte(s, i, i + 7)
    crc = T[(crc ~ b1) & 0xFF] ~ (crc >> 8)
    crc = T[(crc ~ b2) & 0xFF] ~ (crc >> 8)
    crc = T[(crc ~ b3) & 0xFF] ~ (crc >> 8)
    crc = T[(crc ~ b4) & 0xFF] ~ (crc >> 8)
    crc = T[(crc ~ b5) & 0xFF] ~ (crc >> 8)
    crc = T[(crc ~ b6) & 0xFF] ~ (crc >> 8)
    crc = T[(crc ~ b7) & 0xFF] ~ (crc >> 8)
    crc = T[(crc ~ b8) & 0xFF] ~ (crc >> 8)
    i = i + 8
  end
  for j = i, n do crc = T[(crc ~ byte(s, j)) & 0xFF] ~ (crc >> 8) end
  return crc ~ 0xFFFFFFFF
end

function log.masked_crc32c(s)
  local c = log.crc32c(s)
  return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
end

-- ------------------------------------------------------------------ protobuf (just what Event needs)
local function varint(n)
  local out = {}
  repeat
    local b = n & 0x7F
    n = n >> 7 -- logical shift: negative int64 take 10 bytes, as protobuf wants
    if n ~= 0 then b = b | 0x80 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end

local function field_bytes(num, s) return varint(num << 3 | 2) .. varint(#s) .. s end
local function field_varint(num, n) return varint(num << 3) .. varint(n) end

local function summary_scalar(tag, value)
  return field_bytes(1, field_bytes(1, tag) .. string.char(2 << 3 | 5) .. string.pack("<f", value))
end

local function summary_image(tag, png, h, w, c)
  local img = field_varint(1, h) .. field_varint(2, w) .. field_varint(3, c) .. field_bytes(4, png)
  return field_bytes(1, field_bytes(1, tag) .. field_bytes(4, img))
end

-- One Event protobuf: wall_time (1, double), step (2, int64), then file_version (3) or summary (5).
function log.encode_event(wall, step, file_version, summary)
  local parts = {string.char(1 << 3 | 1), string.pack("<d", wall)}
  if step and step ~= 0 then parts[#parts + 1] = field_varint(2, step) end
  if file_version then parts[#parts + 1] = field_bytes(3, file_version) end
  if summary then parts[#parts + 1] = field_bytes(5, summary) end
  return table.concat(parts)
end

-- TFRecord framing around one record.
function log.tfrecord(data)
  local len = string.pack("<I8", #data)
  return len .. string.pack("<I4", log.masked_crc32c(len)) .. data .. string.pack("<I4", log.masked_crc32c(data))
end

-- ------------------------------------------------------------------ TensorBoard writer
local TB = {}
TB.__index = TB
TB.__name = "medlua.log.TensorBoard"

local file_seq = 0

-- log.TensorBoard(logdir, {flush_secs = 10, filename_suffix = ""})
function log.TensorBoard(logdir, opts)
  assert(type(logdir) == "string", "log.TensorBoard: expected a folder")
  opts = opts or {}
  log.mkdir_p(logdir, "log.TensorBoard")
  local base = string.format("%s/events.out.tfevents.%010d.%s.%d", logdir, os.time(), hostname(), getpid())
  local path = base .. (opts.filename_suffix or "")
  while exists(path) do -- two writers in one second in one process
    file_seq = file_seq + 1
    path = base .. "." .. file_seq .. (opts.filename_suffix or "")
  end
  local f, err = io.open(path, "wb")
  if not f then error(string.format("log.TensorBoard: %s: cannot create: %s", path, err), 2) end
  local self = setmetatable({path = path, logdir = logdir, f = f, flush_secs = opts.flush_secs or 10,
    last_flush = now()}, TB)
  self:_write(log.encode_event(wall_time(), 0, "brain.Event:2"))
  self:flush()
  return self
end

function TB:_write(event)
  if not self.f then error("log.TensorBoard: " .. self.path .. ": the writer is closed", 3) end
  local ok, err = self.f:write(log.tfrecord(event))
  if not ok then error("log.TensorBoard: " .. self.path .. ": write failed: " .. tostring(err), 3) end
  if now() - self.last_flush >= self.flush_secs then self:flush() end
end

local function check_step(step, what)
  step = step or 0
  if math.type(step) ~= "integer" then
    local i = math.tointeger(step)
    if not i then error(what .. ": step must be an integer, got " .. tostring(step), 3) end
    step = i
  end
  return step
end

function TB:add_scalar(tag, value, step, wall)
  assert(type(tag) == "string", "add_scalar: tag must be a string")
  value = to_scalar(value)
  if type(value) ~= "number" then error("add_scalar: value for '" .. tag .. "' must be a number", 2) end
  self:_write(log.encode_event(wall or wall_time(), check_step(step, "add_scalar"), nil, summary_scalar(tag, value)))
  return self
end

-- Several scalars in one event: {tag = value, ...} (non-numbers are skipped).
function TB:add_scalars(values, step, wall)
  local parts = {}
  local keys = {}
  for k in pairs(values) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = to_scalar(values[k])
    if type(v) == "number" then parts[#parts + 1] = summary_scalar(tostring(k), v) end
  end
  if #parts == 0 then return self end
  self:_write(log.encode_event(wall or wall_time(), check_step(step, "add_scalars"), nil, table.concat(parts)))
  return self
end

-- An image: a PNG file path, PNG bytes, or an RGB/gray uint8 tensor [H,W,3] / [H,W] (written via PNG).
function TB:add_image(tag, img, step, wall)
  local png
  local m = package.loaded.medlua
  if m and m.is_tensor(img) then
    local tmp = os.tmpname()
    m._volume.write_png(tmp, img)
    png = read_all(tmp)
    os.remove(tmp)
  elseif type(img) == "string" and img:sub(1, 8) == "\137PNG\r\n\26\n" then
    png = img
  elseif type(img) == "string" then
    png = read_all(img)
    if not png then error("add_image: " .. img .. ": cannot open", 2) end
  end
  if not png or png:sub(1, 8) ~= "\137PNG\r\n\26\n" or #png < 33 then
    error("add_image: '" .. tag .. "': expected a PNG file, PNG bytes or an image tensor", 2)
  end
  local w, h, _, ctype = string.unpack(">I4I4BB", png, 17)
  local channels = ({[0] = 1, [2] = 3, [3] = 3, [4] = 2, [6] = 4})[ctype] or 3
  self:_write(log.encode_event(wall or wall_time(), check_step(step, "add_image"), nil,
    summary_image(tag, png, h, w, channels)))
  return self
end

function TB:flush()
  if self.f then self.f:flush() end
  self.last_flush = now()
  return self
end

function TB:close()
  if self.f then self.f:close(); self.f = nil end
end
TB.__close = TB.close
TB.__gc = TB.close

-- ------------------------------------------------------------------ reading event files back
local function read_varint(s, i, path)
  local n, shift = 0, 0
  while true do
    local b = s:byte(i)
    if not b then error("read_tfevents: " .. path .. ": truncated varint", 0) end
    n = n | ((b & 0x7F) << shift)
    i = i + 1
    if b < 0x80 then return n, i end
    shift = shift + 7
    if shift > 63 then error("read_tfevents: " .. path .. ": varint too long", 0) end
  end
end

-- Decodes a protobuf message into {field = {values...}}: varints as integers, fixed64/32 as raw strings,
-- length-delimited fields as strings.
local function decode_fields(s, path)
  local out, i = {}, 1
  while i <= #s do
    local key
    key, i = read_varint(s, i, path)
    local num, wt = key >> 3, key & 7
    local v
    if wt == 0 then v, i = read_varint(s, i, path)
    elseif wt == 1 then v = s:sub(i, i + 7); i = i + 8
    elseif wt == 5 then v = s:sub(i, i + 3); i = i + 4
    elseif wt == 2 then
      local len
      len, i = read_varint(s, i, path)
      v = s:sub(i, i + len - 1)
      if #v ~= len then error("read_tfevents: " .. path .. ": truncated field " .. num, 0) end
      i = i + len
    else
      error(string.format("read_tfevents: %s: unsupported wire type %d in field %d", path, wt, num), 0)
    end
    if i > #s + 1 then error("read_tfevents: " .. path .. ": truncated message", 0) end
    out[num] = out[num] or {}
    table.insert(out[num], v)
  end
  return out
end

-- Reads an event file, checking the framing and both CRCs of every record. Returns a list of events
-- {wall_time =, step =, file_version =, values = {{tag =, simple_value =, image = {height, width, png}}}}.
function log.read_tfevents(path)
  local s = read_all(path)
  if not s then error("read_tfevents: " .. path .. ": cannot open", 2) end
  local events, i, rec = {}, 1, 0
  while i <= #s do
    rec = rec + 1
    if i + 11 > #s then
      error(string.format("read_tfevents: %s: record %d: truncated header (%d bytes left)", path, rec, #s - i + 1), 2)
    end
    local lenb = s:sub(i, i + 7)
    local len = string.unpack("<I8", lenb)
    local lcrc = string.unpack("<I4", s, i + 8)
    if lcrc ~= log.masked_crc32c(lenb) then
      error(string.format("read_tfevents: %s: record %d: length CRC mismatch", path, rec), 2)
    end
    if len < 0 or i + 12 + len + 4 - 1 > #s then
      error(string.format("read_tfevents: %s: record %d: truncated: header says %d data bytes, %d left", path, rec,
        len, #s - i - 11), 2)
    end
    local data = s:sub(i + 12, i + 12 + len - 1)
    local dcrc = string.unpack("<I4", s, i + 12 + len)
    if dcrc ~= log.masked_crc32c(data) then
      error(string.format("read_tfevents: %s: record %d: data CRC mismatch", path, rec), 2)
    end
    i = i + 12 + len + 4
    local ok, f = pcall(decode_fields, data, path)
    if not ok then error(f, 2) end
    local ev = {step = f[2] and f[2][1] or 0, values = {}}
    if f[1] then ev.wall_time = string.unpack("<d", f[1][1]) end
    if f[3] then ev.file_version = f[3][1] end
    if f[5] then
      local sm = decode_fields(f[5][1], path)
      for _, vb in ipairs(sm[1] or {}) do
        local vf = decode_fields(vb, path)
        local val = {tag = vf[1] and vf[1][1]}
        if vf[2] then val.simple_value = string.unpack("<f", vf[2][1]) end
        if vf[4] then
          local im = decode_fields(vf[4][1], path)
          val.image = {height = im[1] and im[1][1], width = im[2] and im[2][1], colorspace = im[3] and im[3][1],
            png = im[4] and im[4][1]}
        end
        ev.values[#ev.values + 1] = val
      end
    end
    events[#events + 1] = ev
  end
  return events
end

return log
