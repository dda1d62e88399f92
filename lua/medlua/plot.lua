-- medlua.plot: line plots rasterized to an RGB image (no plotting library needed).
--
--   local plot = require "medlua.plot"
--   local img = plot.lines{series = {{name = "train", x = steps, y = losses}, {name = "val", y = vals}},
--                          title = "loss", xlabel = "step", ylabel = "loss", logy = true}
--   -- img: uint8 tensor [H, W, 3]
--   plot.save_png("curves.png", spec)              -- renders and writes an 8-bit RGB PNG (atomically)
--   plot.save_png("curves.png", {panels = {spec1, spec2}, cols = 2, width = 1200, height = 450})
--
-- Spec fields: series (list of {name =, x = list|tensor (default 1..n), y = list|tensor, color = {r,g,b},
-- marker = bool (default: true for series of at most 30 points), width = 1|2|3 (line width, default 2)}),
-- title, xlabel, ylabel, width = 800, height = 500, logy = false, xlim = {lo, hi}, ylim = {lo, hi},
-- legend = true. NaN, infinite (and for logy non-positive) values break a line instead of drawing it.
-- plot.panels{panels = {spec, ...}, cols =, width =, height =, title =} lays several plots out on a grid.
-- Text uses a built-in 5x9 pixel font (printable ASCII), drawn 1x for ticks and labels, 2x for titles.
local medlua = require "medlua"

local plot = {}

-- ------------------------------------------------------------------ font: 5 columns x 9 rows per glyph
-- One glyph per line: the character, a space, then its rows from the top ('#' = ink), '/' between
-- rows; rows 1-7 sit on the baseline, rows 8-9 are descenders. Missing rows are blank.
local FONT_SRC = [[
  
! ..#../..#../..#../..#../..#../...../..#..
" .#.#./.#.#.
# .#.#./.#.#./#####/.#.#./#####/.#.#./.#.#.
$ ..#../.####/#.#../.###./..#.#/####./..#..
% ##.../##..#/...#./..#../.#.../#..##/...##
& .##../#..#./#.#../.#.../#.#.#/#..#./.##.#
' ..#../..#..
( ...#./..#../.#.../.#.../.#.../..#../...#.
) .#.../..#../...#./...#./...#./..#../.#...
* ...../..#../#.#.#/.###./#.#.#/..#..
+ ...../..#../..#../#####/..#../..#..
, ...../...../...../...../...../..#../..#../.#...
- ...../...../...../#####
. ...../...../...../...../...../.##../.##..
/ ...../....#/...#./..#../.#.../#....
0 .###./#...#/#..##/#.#.#/##..#/#...#/.###.
1 ..#../.##../..#../..#../..#../..#../.###.
2 .###./#...#/....#/...#./..#../.#.../#####
3 #####/...#./..#../...#./....#/#...#/.###.
4 ...#./..##./.#.#./#..#./#####/...#./...#.
5 #####/#..../####./....#/....#/#...#/.###.
6 ..##./.#.../#..../####./#...#/#...#/.###.
7 #####/....#/...#./..#../.#.../.#.../.#...
8 .###./#...#/#...#/.###./#...#/#...#/.###.
9 .###./#...#/#...#/.####/....#/...#./.##..
: ...../.##../.##../...../.##../.##..
; ...../.##../.##../...../.##../.##../.#...
< ...#./..#../.#.../#..../.#.../..#../...#.
= ...../...../#####/...../#####
> .#.../..#../...#./....#/...#./..#../.#...
? .###./#...#/....#/...#./..#../...../..#..
@ .###./#...#/....#/.##.#/#.#.#/#.#.#/.###.
A .###./#...#/#...#/#####/#...#/#...#/#...#
B ####./#...#/#...#/####./#...#/#...#/####.
C .###./#...#/#..../#..../#..../#...#/.###.
D ###../#..#./#...#/#...#/#...#/#..#./###..
E #####/#..../#..../####./#..../#..../#####
F #####/#..../#..../####./#..../#..../#....
G .###./#...#/#..../#.###/#...#/#...#/.####
H #...#/#...#/#...#/#####/#...#/#...#/#...#
I .###./..#../..#../..#../..#../..#../.###.
J ..###/...#./...#./...#./...#./#..#./.##..
K #...#/#..#./#.#../##.../#.#../#..#./#...#
L #..../#..../#..../#..../#..../#..../#####
M #...#/##.##/#.#.#/#.#.#/#...#/#...#/#...#
N #...#/#...#/##..#/#.#.#/#..##/#...#/#...#
O .###./#...#/#...#/#...#/#...#/#...#/.###.
P ####./#...#/#...#/####./#..../#..../#....
Q .###./#...#/#...#/#...#/#.#.#/#..#./.##.#
R ####./#...#/#...#/####./#.#../#..#./#...#
S .####/#..../#..../.###./....#/....#/####.
T #####/..#../..#../..#../..#../..#../..#..
U #...#/#...#/#...#/#...#/#...#/#...#/.###.
V #...#/#...#/#...#/#...#/#...#/.#.#./..#..
W #...#/#...#/#...#/#.#.#/#.#.#/#.#.#/.#.#.
X #...#/#...#/.#.#./..#../.#.#./#...#/#...#
Y #...#/#...#/.#.#./..#../..#../..#../..#..
Z #####/....#/...#./..#../.#.../#..../#####
[ .###./.#.../.#.../.#.../.#.../.#.../.###.
\ ...../#..../.#.../..#../...#./....#
] .###./...#./...#./...#./...#./...#./.###.
^ ..#../.#.#./#...#
_ ...../...../...../...../...../...../...../#####
` .#.../..#..
a ...../...../.###./....#/.####/#...#/.####
b #..../#..../#.##./##..#/#...#/#...#/####.
c ...../...../.###./#..../#..../#...#/.###.
d ....#/....#/.##.#/#..##/#...#/#...#/.####
e ...../...../.###./#...#/#####/#..../.###.
f ..##./.#..#/.#.../###../.#.../.#.../.#...
g ...../...../.####/#...#/#...#/#...#/.####/....#/.###.
h #..../#..../#.##./##..#/#...#/#...#/#...#
i ..#../...../.##../..#../..#../..#../.###.
j ...#./...../..##./...#./...#./...#./...#./#..#./.##..
k #..../#..../#..#./#.#../##.../#.#../#..#.
l .##../..#../..#../..#../..#../..#../.###.
m ...../...../##.#./#.#.#/#.#.#/#.#.#/#.#.#
n ...../...../#.##./##..#/#...#/#...#/#...#
o ...../...../.###./#...#/#...#/#...#/.###.
p ...../...../####./#...#/#...#/#...#/####./#..../#....
q ...../...../.####/#...#/#...#/#...#/.####/....#/....#
r ...../...../#.##./##..#/#..../#..../#....
s ...../...../.####/#..../.###./....#/####.
t .#.../.#.../###../.#.../.#.../.#..#/..##.
u ...../...../#...#/#...#/#...#/#..##/.##.#
v ...../...../#...#/#...#/#...#/.#.#./..#..
w ...../...../#...#/#...#/#.#.#/#.#.#/.#.#.
x ...../...../#...#/.#.#./..#../.#.#./#...#
y ...../...../#...#/#...#/#...#/#...#/.####/....#/.###.
z ...../...../#####/...#./..#../.#.../#####
{ ...#./..#../..#../.#.../..#../..#../...#.
| ..#../..#../..#../..#../..#../..#../..#..
} .#.../..#../..#../...#./..#../..#../.#...
~ ...../...../.#.../#.#.#/...#.
]]

local GW, GH = 5, 9 -- glyph cell; text advances 6 px per character at scale 1
local FONT = {}
for line in FONT_SRC:gmatch("([^\n]*)\n") do
  if #line >= 1 then
    local ch, rows = line:sub(1, 1), line:sub(3)
    local g = {}
    local r = 0
    for row in (rows .. "/"):gmatch("([^/]*)/") do
      r = r + 1
      for c = 1, #row do
        if row:sub(c, c) == "#" then g[#g + 1] = {c - 1, r - 1} end
      end
    end
    FONT[ch] = g
  end
end
FONT[" "] = {}
local UNKNOWN = FONT["?"]
plot.font = FONT

-- ------------------------------------------------------------------ canvas
local Canvas = {}
Canvas.__index = Canvas

local function new_canvas(w, h, bg)
  local px = {}
  local r, g, b = bg[1], bg[2], bg[3]
  local n = w * h * 3
  for i = 1, n, 3 do px[i] = r; px[i + 1] = g; px[i + 2] = b end
  return setmetatable({w = w, h = h, px = px}, Canvas)
end

-- Blends color c into pixel (x, y) with coverage a in [0, 1].
function Canvas:blend(x, y, c, a)
  if x < 0 or y < 0 or x >= self.w or y >= self.h then return end
  local clip = self.clip
  if clip and (x < clip[1] or y < clip[2] or x > clip[3] or y > clip[4]) then return end
  local i = (y * self.w + x) * 3 + 1
  local px = self.px
  if a >= 1 then
    px[i], px[i + 1], px[i + 2] = c[1], c[2], c[3]
  elseif a > 0 then
    px[i] = px[i] + (c[1] - px[i]) * a
    px[i + 1] = px[i + 1] + (c[2] - px[i + 1]) * a
    px[i + 2] = px[i + 2] + (c[3] - px[i + 2]) * a
  end
end

function Canvas:fill_rect(x0, y0, x1, y1, c)
  for y = math.max(0, y0), math.min(self.h - 1, y1) do
    for x = math.max(0, x0), math.min(self.w - 1, x1) do self:blend(x, y, c, 1) end
  end
end

function Canvas:hline(x0, x1, y, c, a)
  for x = x0, x1 do self:blend(x, y, c, a or 1) end
end
function Canvas:vline(x, y0, y1, c, a)
  for y = y0, y1 do self:blend(x, y, c, a or 1) end
end
function Canvas:rect(x0, y0, x1, y1, c)
  self:hline(x0, x1, y0, c); self:hline(x0, x1, y1, c)
  self:vline(x0, y0, y1, c); self:vline(x1, y0, y1, c)
end

-- Anti-aliased line (Xiaolin Wu) of width 1; width 2 and 3 add parallel strokes.
local function fpart(x) return x - math.floor(x) end
function Canvas:wu_line(x0, y0, x1, y1, c)
  local steep = math.abs(y1 - y0) > math.abs(x1 - x0)
  if steep then x0, y0, x1, y1 = y0, x0, y1, x1 end
  if x0 > x1 then x0, x1, y0, y1 = x1, x0, y1, y0 end
  local dx, dy = x1 - x0, y1 - y0
  local grad = dx == 0 and 1 or dy / dx
  local function put(x, y, a)
    if steep then self:blend(y, x, c, a) else self:blend(x, y, c, a) end
  end
  local xs, xe = math.floor(x0 + 0.5), math.floor(x1 + 0.5)
  local y = y0 + grad * (xs - x0)
  for x = xs, xe do
    local yi = math.floor(y)
    local f = y - yi
    put(x, yi, 1 - f)
    put(x, yi + 1, f)
    y = y + grad
  end
end

function Canvas:line(x0, y0, x1, y1, c, width)
  width = width or 1
  self:wu_line(x0, y0, x1, y1, c)
  if width >= 2 then
    local steep = math.abs(y1 - y0) > math.abs(x1 - x0)
    local ox, oy = steep and 0.6 or 0, steep and 0 or 0.6
    self:wu_line(x0 + ox, y0 + oy, x1 + ox, y1 + oy, c)
    if width >= 3 then self:wu_line(x0 - ox, y0 - oy, x1 - ox, y1 - oy, c) end
  end
end

function Canvas:marker(x, y, c, r)
  r = r or 2
  local xi, yi = math.floor(x + 0.5), math.floor(y + 0.5)
  for dy = -r, r do
    for dx = -r, r do
      local d = math.sqrt(dx * dx + dy * dy)
      if d <= r + 0.5 then self:blend(xi + dx, yi + dy, c, math.min(1, r + 0.5 - d + 0.3)) end
    end
  end
end

-- Text: returns the width in pixels. vertical = true draws bottom-to-top (for y axis labels).
local function text_width(s, scale) return (#s * (GW + 1) - 1) * (scale or 1) end
plot.text_width = text_width

function Canvas:text(s, x, y, c, scale, vertical)
  scale = scale or 1
  local adv = (GW + 1) * scale
  for k = 1, #s do
    local g = FONT[s:sub(k, k)] or UNKNOWN
    local ox = (k - 1) * adv
    for _, p in ipairs(g) do
      for sy = 0, scale - 1 do
        for sx = 0, scale - 1 do
          local gx, gy = ox + p[1] * scale + sx, p[2] * scale + sy
          if vertical then self:blend(x + gy, y - gx, c, 1) else self:blend(x + gx, y + gy, c, 1) end
        end
      end
    end
  end
  return text_width(s, scale)
end

function Canvas:to_tensor()
  return medlua.tensor(self.px, {dtype = "uint8"}):view(self.h, self.w, 3)
end

-- ------------------------------------------------------------------ ticks
local function nice_step(range, n)
  local raw = range / math.max(1, n)
  local mag = 10 ^ math.floor(math.log(raw, 10))
  local r = raw / mag
  local s
  if r <= 1 then s = 1 elseif r <= 2 then s = 2 elseif r <= 2.5 then s = 2.5 elseif r <= 5 then s = 5 else s = 10 end
  return s * mag
end

local function fmt_tick(v, step)
  if math.abs(v) < step * 1e-6 then return "0" end
  local a = math.abs(v)
  if a >= 1e5 or a < 1e-3 then
    local s = string.format("%.2e", v):gsub("%.?0+e", "e"):gsub("e%+0*", "e"):gsub("e%-0*", "e-")
    return s
  end
  local dec = math.max(0, -math.floor(math.log(step, 10) + 1e-9))
  if step / 10 ^ -dec ~= math.floor(step / 10 ^ -dec + 0.5) then dec = dec + 1 end -- 2.5 steps
  return string.format("%." .. dec .. "f", v)
end
plot.fmt_tick = fmt_tick

local function linear_ticks(lo, hi, n)
  local step = nice_step(hi - lo, n)
  local t, out = math.ceil(lo / step - 1e-9) * step, {}
  while t <= hi + step * 1e-9 do
    out[#out + 1] = {v = t, label = fmt_tick(t, step)}
    t = t + step
    if #out > 50 then break end
  end
  return out, step
end

local function log_label(e)
  if e >= -2 and e <= 4 then return fmt_tick(10 ^ e, 10 ^ math.min(e, 0)) end
  return "1e" .. e
end

-- ticks for log10 space [lo, hi] (given as exponents)
local function log_ticks(lo, hi)
  local out = {}
  local e0, e1 = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
  local every = math.max(1, math.ceil((e1 - e0 + 1) / 8))
  for e = e0, e1, every do out[#out + 1] = {v = e, label = log_label(e), major = true} end
  if e1 - e0 <= 2 then -- few decades: label 2x and 5x too
    for e = math.floor(lo) , math.ceil(hi) do
      for _, m in ipairs{2, 5} do
        local v = e + math.log(m, 10)
        if v >= lo and v <= hi then out[#out + 1] = {v = v, label = fmt_tick(m * 10 ^ e, 10 ^ e)} end
      end
    end
  end
  if #out < 2 then -- less than a decade: linear ticks, labelled with their values
    out = {}
    local lt = linear_ticks(10 ^ lo, 10 ^ hi, 5)
    for _, t in ipairs(lt) do if t.v > 0 then out[#out + 1] = {v = math.log(t.v, 10), label = t.label} end end
  end
  return out
end

-- ------------------------------------------------------------------ one plot
local PALETTE = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}, {148, 103, 189}, {140, 86, 75},
  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}}
plot.palette = PALETTE
local BLACK, GRID, TEXT, WHITE = {0, 0, 0}, {225, 225, 225}, {40, 40, 40}, {255, 255, 255}

local function as_list(v, what)
  if v == nil then return nil end
  if medlua.is_tensor(v) then return v:detach():double():contiguous():view(-1):tolist() end
  if type(v) ~= "table" then error("plot: " .. what .. " must be a list or a tensor, got " .. type(v), 4) end
  return v
end

local function finite(v) return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge end

local function render(cv, spec, X0, Y0, W, H)
  local series = spec.series or {}
  if type(series) ~= "table" then error("plot.lines: series must be a list", 3) end
  local logy = spec.logy
  -- data in plot coordinates
  local data = {}
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for si, s in ipairs(series) do
    local y = as_list(s.y, "series " .. si .. ".y") or {}
    local x = as_list(s.x, "series " .. si .. ".x")
    if x and #x ~= #y then
      error(string.format("plot.lines: series %d ('%s'): x has %d values, y has %d", si, tostring(s.name or si),
        #x, #y), 3)
    end
    local pts = {}
    for i = 1, #y do
      local xv, yv = x and x[i] or i, y[i]
      if type(yv) == "boolean" then yv = yv and 1 or 0 end
      if logy and finite(yv) then yv = yv > 0 and math.log(yv, 10) or nil end
      if finite(xv) and finite(yv) then
        pts[#pts + 1] = {xv, yv}
        if xv < xmin then xmin = xv end
        if xv > xmax then xmax = xv end
        if yv < ymin then ymin = yv end
        if yv > ymax then ymax = yv end
      else
        pts[#pts + 1] = false -- a gap
      end
    end
    data[si] = {pts = pts, color = s.color or PALETTE[(si - 1) % #PALETTE + 1], name = s.name or ("series " .. si),
      width = s.width or 2, marker = s.marker}
  end
  if xmin > xmax then xmin, xmax, ymin, ymax = 0, 1, 0, 1 end
  if spec.xlim then xmin, xmax = spec.xlim[1], spec.xlim[2] end
  if spec.ylim then
    ymin, ymax = spec.ylim[1], spec.ylim[2]
    if logy then ymin, ymax = math.log(ymin, 10), math.log(ymax, 10) end
  end
  if xmax - xmin <= 0 then xmin, xmax = xmin - 0.5, xmax + 0.5 end
  if ymax - ymin <= 0 then
    local d = logy and 0.5 or math.max(math.abs(ymin) * 0.1, 1e-9)
    ymin, ymax = ymin - d, ymax + d
  end
  -- margins so that markers at the ends stay inside the frame (as matplotlib does)
  if not spec.ylim then
    local pad = (ymax - ymin) * 0.05
    ymin, ymax = ymin - pad, ymax + pad
  end
  if not spec.xlim then
    local pad = (xmax - xmin) * 0.02
    xmin, xmax = xmin - pad, xmax + pad
  end
  local yticks
  if logy then yticks = log_ticks(ymin, ymax) else yticks = linear_ticks(ymin, ymax, 6) end
  local xticks = linear_ticks(xmin, xmax, math.max(4, math.floor(W / 90)))
  if xmax - xmin >= 2 and xticks[1] and math.floor(xticks[1].v) == xticks[1].v then
    -- integer axes (epochs, steps) do not need fractional ticks
    local ok = true
    for _, t in ipairs(xticks) do if t.v ~= math.floor(t.v) then ok = false end end
    if not ok then
      local kept = {}
      for _, t in ipairs(xticks) do if t.v == math.floor(t.v) then kept[#kept + 1] = t end end
      xticks = kept
    end
  end
  -- layout
  local ylw = 0
  for _, t in ipairs(yticks) do ylw = math.max(ylw, text_width(t.label)) end
  local top = Y0 + 10 + (spec.title and 26 or 0)
  local left = X0 + 12 + (spec.ylabel and 14 or 0) + ylw + 6
  local right = X0 + W - 16
  local bottom = Y0 + H - 22 - (spec.xlabel and 14 or 0)
  if right - left < 20 or bottom - top < 20 then error(string.format("plot.lines: %dx%d is too small", W, H), 3) end
  local function px(x) return left + (x - xmin) / (xmax - xmin) * (right - left) end
  local function py(y) return bottom - (y - ymin) / (ymax - ymin) * (bottom - top) end
  -- title and labels
  if spec.title then
    local t = tostring(spec.title)
    cv:text(t, math.floor(X0 + (W - text_width(t, 2)) / 2), Y0 + 8, BLACK, 2)
  end
  if spec.xlabel then
    local t = tostring(spec.xlabel)
    cv:text(t, math.floor((left + right - text_width(t)) / 2), Y0 + H - 14, TEXT)
  end
  if spec.ylabel then
    local t = tostring(spec.ylabel)
    cv:text(t, X0 + 8, math.floor((top + bottom + text_width(t)) / 2), TEXT, 1, true)
  end
  -- grid and ticks
  for _, t in ipairs(yticks) do
    local y = math.floor(py(t.v) + 0.5)
    if y >= top and y <= bottom then
      cv:hline(left + 1, right - 1, y, GRID)
      cv:hline(left - 4, left, y, BLACK)
      cv:text(t.label, left - 6 - text_width(t.label), y - 4, TEXT)
    end
  end
  for _, t in ipairs(xticks) do
    local x = math.floor(px(t.v) + 0.5)
    if x >= left and x <= right then
      cv:vline(x, top + 1, bottom - 1, GRID)
      cv:vline(x, bottom, bottom + 4, BLACK)
      cv:text(t.label, x - math.floor(text_width(t.label) / 2), bottom + 7, TEXT)
    end
  end
  -- series, clipped to the plot area
  cv.clip = {left + 1, top + 1, right - 1, bottom - 1}
  for _, d in ipairs(data) do
    local prev
    local npts = 0
    for _, p in ipairs(d.pts) do if p then npts = npts + 1 end end
    local marker = d.marker
    if marker == nil then marker = npts <= 30 end
    for _, p in ipairs(d.pts) do
      if p then
        local x, y = px(p[1]), py(p[2])
        if prev then cv:line(prev[1], prev[2], x, y, d.color, d.width) end
        if marker then cv:marker(x, y, d.color, 2) end
        prev = {x, y}
      else
        prev = nil
      end
    end
    if npts == 1 and not marker then cv:marker(prev and prev[1] or 0, prev and prev[2] or 0, d.color, 2) end
  end
  cv.clip = nil
  cv:rect(left, top, right, bottom, BLACK)
  -- legend: inside the frame, in the corner that hides the fewest data points
  if spec.legend ~= false and #data > 0 and (#data > 1 or series[1].name) then
    local lw = 0
    for _, d in ipairs(data) do lw = math.max(lw, text_width(d.name)) end
    local bw, bh = lw + 36, #data * 14 + 8
    local corners = {{right - 8 - bw, top + 8}, {left + 8, top + 8}, {right - 8 - bw, bottom - 8 - bh},
      {left + 8, bottom - 8 - bh}}
    local best, best_n = nil, math.huge
    for _, c in ipairs(corners) do
      if c[1] > left + 2 and c[2] > top + 2 then
        local n = 0
        for _, d in ipairs(data) do
          for _, p in ipairs(d.pts) do
            if p then
              local x, y = px(p[1]), py(p[2])
              if x >= c[1] - 4 and x <= c[1] + bw + 4 and y >= c[2] - 4 and y <= c[2] + bh + 4 then n = n + 1 end
            end
          end
        end
        if n < best_n then best, best_n = c, n end
      end
    end
    if best then
      local bx0, by0 = best[1], best[2]
      local bx1 = bx0 + bw
      cv:fill_rect(bx0, by0, bx1, by0 + bh, WHITE)
      cv:rect(bx0, by0, bx1, by0 + bh, {160, 160, 160})
      for i, d in ipairs(data) do
        local y = by0 + 4 + (i - 1) * 14
        cv:line(bx0 + 6, y + 4, bx0 + 24, y + 4, d.color, 2)
        cv:text(d.name, bx0 + 30, y, TEXT)
      end
    end
  end
end

local function check_size(w, h, what)
  if math.type(w) ~= "integer" or math.type(h) ~= "integer" or w < 64 or h < 48 or w > 8192 or h > 8192 then
    error(string.format("%s: width and height must be integers in 64..8192 x 48..8192, got %s x %s", what,
      tostring(w), tostring(h)), 3)
  end
end

-- plot.lines(spec) -> uint8 tensor [height, width, 3]
function plot.lines(spec)
  assert(type(spec) == "table", "plot.lines: expected a spec table")
  if spec.panels then return plot.panels(spec) end
  local W, H = spec.width or 800, spec.height or 500
  check_size(W, H, "plot.lines")
  local cv = new_canvas(W, H, WHITE)
  render(cv, spec, 0, 0, W, H)
  return cv:to_tensor()
end

-- plot.panels{panels = {spec, ...}, cols = n, width =, height =, title =} -> one image with a grid of plots
function plot.panels(spec)
  local panels = spec.panels
  assert(type(panels) == "table" and #panels > 0, "plot.panels: expected a non-empty list of panels")
  local cols = spec.cols or math.min(#panels, 3)
  local rows = math.ceil(#panels / cols)
  local W, H = spec.width or 480 * cols, spec.height or 360 * rows
  check_size(W, H, "plot.panels")
  local cv = new_canvas(W, H, WHITE)
  local top = 0
  if spec.title then
    local t = tostring(spec.title)
    cv:text(t, math.floor((W - text_width(t, 2)) / 2), 8, BLACK, 2)
    top = 30
  end
  local pw, ph = W // cols, (H - top) // rows
  for i, p in ipairs(panels) do
    local r, c = (i - 1) // cols, (i - 1) % cols
    render(cv, p, c * pw, top + r * ph, pw, ph)
  end
  return cv:to_tensor()
end

-- Renders spec (plot.lines or plot.panels) and writes it as an 8-bit RGB PNG. Returns the image tensor.
function plot.save_png(path, spec)
  local img = spec.panels and plot.panels(spec) or plot.lines(spec)
  medlua._volume.write_png(path, img)
  return img
end

return plot
