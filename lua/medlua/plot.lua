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
--
-- Other charts (each returns the image and its frame {left, right, top, bottom} in pixels; in panels and
-- plot.save_png they are specs with type = "bars" | "hist" | "boxplot"):
--   plot.bars{labels = names, values = dice, errors = sd, horizontal = true, sort = true, ref_lines = {0.5, 0.9}}
--   plot.bars{labels = names, series = {{name = ">=0.5", values = a}, {name = ">=0.9", values = b}}}  -- grouped
--   plot.hist{series = {{name = "Dice", values = d}, {name = "NSD", values = n}}, bins = 20, median_lines = true}
--   plot.boxplot{groups = {{name = "Dice", values = d}, {name = "IoU", values = j}}, ylabel = "score"}
--   plot.save_png("charts.png", {panels = {{type = "hist", ...}, {type = "boxplot", ...}}, cols = 2})
-- NaN and infinite values are skipped (histograms and box plots count them; a NaN bar reads "n/a").
-- plot.box_stats(values) and plot.hist_counts(values, {bins =, range =}) give the numbers drawn.
--
-- The canvas is exported for figures that are not charts (CT montages, overlays):
--   local cv = plot.new_canvas(w, h, {255, 255, 255})
--   cv:paste(rgb, x, y)                    -- an image tensor [h, w, 3] (or [h, w]) of values 0..255
--   cv:text("liver", x, y, {0, 0, 0}, 2)   -- top-left corner, scale 2; returns the width in pixels
--   cv:fill_rect(x0, y0, x1, y1, color, alpha)   cv:rect(...)   cv:line(x0, y0, x1, y1, color, width)
--   cv:circle(x, y, r, color)   cv:dashed_line(...)   cv:to_tensor()   cv:save_png(path)
-- with plot.text_width(s, scale) and plot.fit_text(s, pixels, scale) (cut with ".." to fit).
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

-- Fills the rectangle with corners (x0, y0) and (x1, y1), both inclusive; a (default 1) blends.
function Canvas:fill_rect(x0, y0, x1, y1, c, a)
  a = a or 1
  for y = math.max(0, y0), math.min(self.h - 1, y1) do
    for x = math.max(0, x0), math.min(self.w - 1, x1) do self:blend(x, y, c, a) end
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

-- s shortened with ".." so that it fits in px pixels at the given scale
local function fit_text(s, px, scale)
  s = tostring(s)
  local m = math.floor((px + (scale or 1)) / ((GW + 1) * (scale or 1)))
  if #s <= m then return s end
  return s:sub(1, math.max(1, m - 2)) .. ".."
end
plot.fit_text = fit_text

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

plot.Canvas = Canvas
plot.new_canvas = new_canvas

function Canvas:to_tensor()
  return medlua.tensor(self.px, {dtype = "uint8"}):view(self.h, self.w, 3)
end

-- Writes the canvas as an 8-bit RGB PNG; returns the image tensor.
function Canvas:save_png(path)
  local img = self:to_tensor()
  medlua._volume.write_png(path, img)
  return img
end

-- Copies an image tensor ([h, w, 3] RGB or [h, w] gray, values 0..255, any dtype) with its top-left
-- corner at (x, y); values are clamped and rounded to integers, parts outside the canvas are dropped.
function Canvas:paste(img, x, y)
  if not medlua.is_tensor(img) or (img:dim() ~= 3 and img:dim() ~= 2) or (img:dim() == 3 and img:size(2) ~= 3) then
    error("Canvas:paste: expected an image tensor [h, w, 3] or [h, w]", 2)
  end
  if img:dim() == 2 then img = img:unsqueeze(2):expand(img:size(0), img:size(1), 3) end
  local h, w = img:size(0), img:size(1)
  local v = img:float():clamp(0, 255):round():contiguous():view(-1):tolist()
  local px, W = self.px, self.w
  local c0, c1 = math.max(0, -x), math.min(w - 1, W - 1 - x)
  for r = math.max(0, -y), math.min(h - 1, self.h - 1 - y) do
    local src, dst = (r * w + c0) * 3, ((y + r) * W + x + c0) * 3
    for k = 1, (c1 - c0 + 1) * 3 do px[dst + k] = v[src + k] end
  end
end

-- Anti-aliased circle outline of radius r (pixels) and stroke width (default 1) centred at (x, y).
function Canvas:circle(x, y, r, c, width)
  local hw = (width or 1) / 2
  for yi = math.floor(y - r - hw - 1), math.ceil(y + r + hw + 1) do
    for xi = math.floor(x - r - hw - 1), math.ceil(x + r + hw + 1) do
      local d = math.abs(math.sqrt((xi - x) ^ 2 + (yi - y) ^ 2) - r)
      local a = hw + 0.5 - d
      if a > 0 then self:blend(xi, yi, c, math.min(1, a)) end
    end
  end
end

-- Filled diamond (|dx| + |dy| <= r), anti-aliased at the edge.
function Canvas:diamond(x, y, r, c)
  for yi = math.floor(y - r - 1), math.ceil(y + r + 1) do
    for xi = math.floor(x - r - 1), math.ceil(x + r + 1) do
      local a = r + 0.5 - (math.abs(xi - x) + math.abs(yi - y))
      if a > 0 then self:blend(xi, yi, c, math.min(1, a)) end
    end
  end
end

-- Dashed line: dash pixels drawn, gap pixels skipped, along the segment.
function Canvas:dashed_line(x0, y0, x1, y1, c, width, dash, gap)
  dash, gap = dash or 6, gap or 4
  local len = math.sqrt((x1 - x0) ^ 2 + (y1 - y0) ^ 2)
  if len == 0 then return end
  local ux, uy = (x1 - x0) / len, (y1 - y0) / len
  local t = 0
  while t < len do
    local e = math.min(len, t + dash)
    self:line(x0 + ux * t, y0 + uy * t, x0 + ux * e, y0 + uy * e, c, width)
    t = e + gap
  end
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
local MEDIAN = {20, 20, 20}

local function as_list(v, what)
  if v == nil then return nil end
  if medlua.is_tensor(v) then return v:detach():double():contiguous():view(-1):tolist() end
  if type(v) ~= "table" then error("plot: " .. what .. " must be a list or a tensor, got " .. type(v), 4) end
  return v
end

local function finite(v) return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge end

-- Frame of one plot inside the cell (X0, Y0, W, H): title, axis labels, grid, ticks and tick labels.
-- r: xmin, xmax, ymin, ymax (data coordinates at the frame's edges), xticks, yticks ({v =, label =} lists),
-- xgrid / ygrid (default true), xtick_vertical (x tick labels drawn bottom-to-top, for long category
-- names), who (the function named in errors). Returns {left, right, top, bottom, px = x -> pixel column,
-- py = y -> pixel row}. The frame rectangle itself is drawn by the caller, after the data.
local function axes(cv, spec, X0, Y0, W, H, r)
  local xmin, xmax, ymin, ymax = r.xmin, r.xmax, r.ymin, r.ymax
  local xticks, yticks = r.xticks, r.yticks
  local ylw = 0
  for _, t in ipairs(yticks) do ylw = math.max(ylw, text_width(t.label)) end
  local xlh = 0 -- extra room under the frame for vertical x tick labels
  if r.xtick_vertical then
    for _, t in ipairs(xticks) do xlh = math.max(xlh, text_width(t.label)) end
    xlh = math.max(0, xlh - 9)
  end
  local top = Y0 + 10 + (spec.title and 26 or 0)
  local left = X0 + 12 + (spec.ylabel and 14 or 0) + ylw + 6
  local right = X0 + W - 16 - (r.right_extra or 0)
  local bottom = Y0 + H - 22 - (spec.xlabel and 14 or 0) - xlh
  if right - left < 20 or bottom - top < 20 then error(string.format("%s: %dx%d is too small", r.who, W, H), 4) end
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
      if r.ygrid ~= false then cv:hline(left + 1, right - 1, y, GRID) end
      cv:hline(left - 4, left, y, BLACK)
      cv:text(t.label, left - 6 - text_width(t.label), y - 4, TEXT)
    end
  end
  for _, t in ipairs(xticks) do
    local x = math.floor(px(t.v) + 0.5)
    if x >= left and x <= right then
      if r.xgrid ~= false then cv:vline(x, top + 1, bottom - 1, GRID) end
      cv:vline(x, bottom, bottom + 4, BLACK)
      if r.xtick_vertical then
        cv:text(t.label, x - 4, bottom + 7 + text_width(t.label), TEXT, 1, true)
      else
        cv:text(t.label, x - math.floor(text_width(t.label) / 2), bottom + 7, TEXT)
      end
    end
  end
  return {left = left, right = right, top = top, bottom = bottom, px = px, py = py}
end

-- Legend box inside frame f, in the corner (top right, top left, bottom right, bottom left) where
-- covered(x0, y0, x1, y1) -- how much data the box would hide -- is smallest. entries: {name =, color =,
-- box = true (a filled square, for bars and histograms; else a line), alpha =}.
local function legend_width(entries)
  local lw = 0
  for _, e in ipairs(entries) do lw = math.max(lw, text_width(e.name)) end
  return lw + 36
end

local function draw_legend(cv, f, entries, covered, outside)
  local left, right, top, bottom = f.left, f.right, f.top, f.bottom
  local bw, bh = legend_width(entries), #entries * 14 + 8
  local best
  if outside then -- to the right of the frame, at its top (the caller reserved the room)
    best = {right + 10, top}
  else
    local corners = {{right - 8 - bw, top + 8}, {left + 8, top + 8}, {right - 8 - bw, bottom - 8 - bh},
      {left + 8, bottom - 8 - bh}}
    local best_n = math.huge
    for _, c in ipairs(corners) do
      if c[1] > left + 2 and c[2] > top + 2 then
        local n = covered(c[1] - 4, c[2] - 4, c[1] + bw + 4, c[2] + bh + 4)
        if n < best_n then best, best_n = c, n end
      end
    end
  end
  if not best then return end
  local bx0, by0 = best[1], best[2]
  local bx1 = bx0 + bw
  cv:fill_rect(bx0, by0, bx1, by0 + bh, WHITE)
  cv:rect(bx0, by0, bx1, by0 + bh, {160, 160, 160})
  for i, e in ipairs(entries) do
    local y = by0 + 4 + (i - 1) * 14
    if e.box then
      cv:fill_rect(bx0 + 8, y, bx0 + 22, y + 8, e.color, e.alpha or 1)
      cv:rect(bx0 + 8, y, bx0 + 22, y + 8, e.edge or e.color)
    else
      cv:line(bx0 + 6, y + 4, bx0 + 24, y + 4, e.color, 2)
    end
    cv:text(e.name, bx0 + 30, y, TEXT)
  end
end

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
  local f = axes(cv, spec, X0, Y0, W, H, {xmin = xmin, xmax = xmax, ymin = ymin, ymax = ymax, xticks = xticks,
    yticks = yticks, who = "plot.lines"})
  local px, py, left, right, top, bottom = f.px, f.py, f.left, f.right, f.top, f.bottom
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
    local entries = {}
    for i, d in ipairs(data) do entries[i] = {name = d.name, color = d.color} end
    draw_legend(cv, f, entries, function(x0, y0, x1, y1)
      local n = 0
      for _, d in ipairs(data) do
        for _, p in ipairs(d.pts) do
          if p then
            local x, y = px(p[1]), py(p[2])
            if x >= x0 and x <= x1 and y >= y0 and y <= y1 then n = n + 1 end
          end
        end
      end
      return n
    end)
  end
end

local function check_size(w, h, what)
  if math.type(w) ~= "integer" or math.type(h) ~= "integer" or w < 64 or h < 48 or w > 8192 or h > 8192 then
    error(string.format("%s: width and height must be integers in 64..8192 x 48..8192, got %s x %s", what,
      tostring(w), tostring(h)), 3)
  end
end

-- ------------------------------------------------------------------ bar charts, histograms, box plots
local function darker(c, f)
  f = f or 0.65
  return {math.floor(c[1] * f), math.floor(c[2] * f), math.floor(c[3] * f)}
end

local function fail_spec(who, fmt, ...) error(who .. ": " .. string.format(fmt, ...), 4) end

-- finite numbers of a list or tensor, and how many entries were skipped (NaN, infinite, not a number)
local function finite_values(v, who, what)
  local list = as_list(v, what) or {}
  local out, skipped = {}, 0
  for i = 1, #list do
    local x = list[i]
    if finite(x) then out[#out + 1] = x else skipped = skipped + 1 end
  end
  return out, skipped
end

-- value format for bar labels: from the largest magnitude
local function auto_format(vals)
  local m = 0
  for _, v in ipairs(vals) do if finite(v) then m = math.max(m, math.abs(v)) end end
  if m < 10 then return "%.3f" elseif m < 1000 then return "%.1f" end
  return "%.0f"
end

-- ticks of a value axis over [lo, hi] with about n ticks; integer_only drops fractional ticks
local function value_ticks(lo, hi, n, integer_only)
  local t = linear_ticks(lo, hi, n)
  if integer_only then
    local kept = {}
    for _, x in ipairs(t) do if x.v == math.floor(x.v) then kept[#kept + 1] = x end end
    if #kept >= 2 then t = kept end
  end
  return t
end

-- category ticks at 1..n (label i at position pos(i)); long labels are cut to max_chars
local function category_ticks(labels, pos, max_chars)
  local t = {}
  for i, l in ipairs(labels) do
    local s = tostring(l)
    if #s > max_chars then s = s:sub(1, max_chars - 2) .. ".." end
    t[#t + 1] = {v = pos(i), label = s}
  end
  return t
end

-- drops labels so that neighbours are at least min_px apart on the axis (every k-th is kept)
local function thin_ticks(ticks, px_per_unit, min_px)
  local k = math.max(1, math.ceil(min_px / math.max(1e-9, math.abs(px_per_unit))))
  if k == 1 then return ticks end
  local out = {}
  for i = 1, #ticks, k do out[#out + 1] = ticks[i] end
  return out
end

-- ink covered by a box: non-white pixels inside it (legend placement for filled charts)
local function ink(cv, x0, y0, x1, y1)
  local n, px, W = 0, cv.px, cv.w
  for y = math.max(0, math.floor(y0)), math.min(cv.h - 1, math.floor(y1)) do
    for x = math.max(0, math.floor(x0)), math.min(W - 1, math.floor(x1)) do
      local i = (y * W + x) * 3 + 1
      if px[i] + px[i + 1] + px[i + 2] < 3 * 215 then n = n + 1 end
    end
  end
  return n
end

-- dashed reference lines across the frame at values of the value axis, with their labels
local function reference_lines(cv, f, refs, horizontal_values)
  for _, r in ipairs(refs or {}) do
    local v = type(r) == "table" and r.value or r
    local label = type(r) == "table" and r.label or nil
    local col = type(r) == "table" and r.color or {120, 120, 120}
    if finite(v) then
      if horizontal_values then
        local x = math.floor(f.px(v) + 0.5)
        if x > f.left and x < f.right then
          cv:dashed_line(x, f.top + 1, x, f.bottom - 1, col, 1)
          -- the label above the frame, where it hides no bar
          if label then cv:text(label, x - math.floor(text_width(label) / 2), f.top - 10, col) end
        end
      else
        local y = math.floor(f.py(v) + 0.5)
        if y > f.top and y < f.bottom then
          cv:dashed_line(f.left + 1, y, f.right - 1, y, col, 1)
          if label then cv:text(label, f.right - 3 - text_width(label), y - 11, col) end
        end
      end
    end
  end
end

-- bars: one value per category and series
local function render_bars(cv, spec, X0, Y0, W, H)
  local who = "plot.bars"
  local labels = spec.labels
  local series = spec.series
  if series == nil then
    series = {{name = spec.name, values = spec.values, errors = spec.errors, color = spec.color, colors = spec.colors}}
  end
  if type(series) ~= "table" or #series == 0 then fail_spec(who, "expected values = {...} or series = {{values = ...}}") end
  local data = {}
  local n
  for si, s in ipairs(series) do
    local v = as_list(s.values, "series " .. si .. ".values")
    if not v then fail_spec(who, "series %d has no values", si) end
    local e = as_list(s.errors, "series " .. si .. ".errors")
    n = n or #v
    if #v ~= n then fail_spec(who, "series %d has %d values, series 1 has %d", si, #v, n) end
    if e and #e ~= n then fail_spec(who, "series %d has %d values but %d errors", si, n, #e) end
    data[si] = {name = s.name or ("series " .. si), values = v, errors = e, colors = s.colors,
      color = s.color or PALETTE[(si - 1) % #PALETTE + 1]}
  end
  labels = labels and as_list(labels, "labels") or {}
  if #labels == 0 then for i = 1, n do labels[i] = tostring(i) end end
  if #labels ~= n then fail_spec(who, "%d labels for %d values", #labels, n) end
  -- order of the categories
  local order = {}
  for i = 1, n do order[i] = i end
  if spec.sort then
    local v1 = data[1].values
    local asc = spec.sort == "ascending"
    table.sort(order, function(a, b)
      local va, vb = v1[a], v1[b]
      local fa, fb = finite(va), finite(vb)
      if fa ~= fb then return fa end -- missing values last
      if not fa or va == vb then return a < b end
      if asc then return va < vb end
      return va > vb
    end)
  end
  local horizontal = spec.horizontal == true
  -- value range (bars start at 0)
  local lo, hi = 0, 0
  for _, d in ipairs(data) do
    for i = 1, n do
      local v, e = d.values[i], d.errors and d.errors[i]
      if finite(v) then
        local ee = finite(e) and math.abs(e) or 0
        lo, hi = math.min(lo, v - ee), math.max(hi, v + ee)
      end
    end
  end
  if hi - lo <= 0 then hi = lo + 1 end
  local lim = horizontal and spec.xlim or (not horizontal and spec.ylim) or spec.lim
  local fmt = spec.value_format or auto_format((function()
    local all = {}
    for _, d in ipairs(data) do for i = 1, n do all[#all + 1] = d.values[i] end end
    return all
  end)())
  local show_values = spec.value_labels ~= false
  if lim then lo, hi = lim[1], lim[2]
  else
    -- room for the value labels at the bar ends
    local pad = (hi - lo) * (show_values and (horizontal and 0.16 or 0.1) or 0.05)
    if hi > 0 then hi = hi + pad end
    if lo < 0 then lo = lo - pad end
  end
  local vticks = value_ticks(lo, hi, horizontal and math.max(4, math.floor(W / 110)) or 6)
  local function cpos(rank) return horizontal and (n + 1 - rank) or rank end
  local cat_labels = {}
  for r, i in ipairs(order) do cat_labels[r] = labels[i] end
  local cticks = category_ticks(cat_labels, cpos, spec.max_label_chars or 28)
  local entries = {}
  if type(spec.legend) == "table" then
    for _, e in ipairs(spec.legend) do entries[#entries + 1] = {name = e.name or e[1], color = e.color or e[2], box = true} end
  elseif spec.legend ~= false and #data > 1 then
    for _, d in ipairs(data) do entries[#entries + 1] = {name = d.name, color = d.color, box = true,
      alpha = spec.alpha or 1, edge = darker(d.color)} end
  end
  local outside = #entries > 0 and spec.legend_position == "right"
  local r = {who = who, right_extra = outside and (legend_width(entries) + 10) or 0}
  if horizontal then
    r.xmin, r.xmax, r.ymin, r.ymax = lo, hi, 0.5, n + 0.5
    r.xticks, r.yticks, r.ygrid = vticks, cticks, false
    -- category labels 10 px apart at least
    local slot = (H - 60) / math.max(1, n)
    r.yticks = thin_ticks(cticks, slot, 10)
  else
    r.xmin, r.xmax, r.ymin, r.ymax = 0.5, n + 0.5, lo, hi
    r.xticks, r.yticks, r.xgrid = cticks, vticks, false
    local lw = 0
    for _, t in ipairs(cticks) do lw = math.max(lw, text_width(t.label)) end
    local slot = (W - 80) / math.max(1, n)
    if lw + 4 > slot then
      r.xtick_vertical = true
      r.xticks = thin_ticks(cticks, slot, 10)
    end
  end
  local f = axes(cv, spec, X0, Y0, W, H, r)
  local ns = #data
  local group = spec.bar_width or 0.8
  local bw = group / ns
  local cvv = horizontal and f.px or f.py -- value -> pixel
  local cvc = horizontal and f.py or f.px -- category coordinate -> pixel
  local base = cvv(math.max(lo, math.min(hi, 0)))
  local alpha = spec.alpha or 1
  cv.clip = {f.left + 1, f.top + 1, f.right - 1, f.bottom - 1}
  local labels_to_draw = {}
  for rank, i in ipairs(order) do
    for si, d in ipairs(data) do
      -- series left to right, or top to bottom (the legend's order)
      local c0 = horizontal and (cpos(rank) + group / 2 - si * bw) or (cpos(rank) - group / 2 + (si - 1) * bw)
      local a, b = cvc(c0 + bw * 0.06), cvc(c0 + bw * 0.94)
      if a > b then a, b = b, a end
      a, b = math.floor(a + 0.5), math.floor(b + 0.5) - 1
      if b < a then b = a end
      local v = d.values[i]
      local col = (d.colors and d.colors[i]) or d.color
      if finite(v) then
        local p = cvv(math.max(lo, math.min(hi, v)))
        local p0, p1 = math.floor(math.min(base, p) + 0.5), math.floor(math.max(base, p) + 0.5)
        if horizontal then
          cv:fill_rect(p0, a, p1, b, col, alpha)
          cv:rect(p0, a, p1, b, darker(col))
        else
          cv:fill_rect(a, p0, b, p1, col, alpha)
          cv:rect(a, p0, b, p1, darker(col))
        end
        local tip = p
        local e = d.errors and d.errors[i]
        if finite(e) and e ~= 0 then
          local mid = (a + b) / 2
          local e0, e1 = cvv(v - math.abs(e)), cvv(v + math.abs(e))
          local cap = math.max(2, math.min(6, (b - a) / 4))
          local ec = {30, 30, 30}
          if horizontal then
            cv:line(e0, mid, e1, mid, ec, 1)
            cv:line(e0, mid - cap, e0, mid + cap, ec, 1)
            cv:line(e1, mid - cap, e1, mid + cap, ec, 1)
          else
            cv:line(mid, e0, mid, e1, ec, 1)
            cv:line(mid - cap, e0, mid + cap, e0, ec, 1)
            cv:line(mid - cap, e1, mid + cap, e1, ec, 1)
          end
          tip = (v >= 0) and (horizontal and math.max(p, e1) or math.min(p, e1)) or
            (horizontal and math.min(p, e0) or math.max(p, e0))
        end
        if show_values then
          labels_to_draw[#labels_to_draw + 1] = {s = string.format(fmt, v), tip = tip, a = a, b = b, neg = v < 0}
        end
      elseif show_values then
        labels_to_draw[#labels_to_draw + 1] = {s = "n/a", tip = base, a = a, b = b, na = true}
      end
    end
  end
  cv.clip = nil
  reference_lines(cv, f, spec.ref_lines, horizontal)
  -- value labels after the reference lines, so that they stay readable
  for _, l in ipairs(labels_to_draw) do
    local tw = text_width(l.s)
    local col = l.na and {150, 150, 150} or TEXT
    if horizontal then
      if l.b - l.a + 1 >= 7 then
        local x = l.neg and (l.tip - 4 - tw) or (l.tip + 4)
        local y = math.floor((l.a + l.b) / 2 - 3.5 + 0.5)
        if x + tw > f.right - 2 then x = l.tip - 4 - tw; col = WHITE end
        cv:text(l.s, math.floor(x), y, col)
      end
    elseif tw <= l.b - l.a + 8 then
      local y = l.neg and (l.tip + 4) or (l.tip - 12)
      cv:text(l.s, math.floor((l.a + l.b - tw) / 2 + 0.5), math.floor(y), col)
    elseif l.b - l.a + 1 >= 8 then -- too narrow: the label runs up the bar's end, bottom to top
      local y = l.neg and (l.tip + 4 + tw) or (l.tip - 4)
      cv:text(l.s, math.floor((l.a + l.b) / 2 - 4), math.floor(y), col, 1, true)
    end
  end
  cv:rect(f.left, f.top, f.right, f.bottom, BLACK)
  if base > (horizontal and f.left or f.top) and base < (horizontal and f.right or f.bottom) then
    local b = math.floor(base + 0.5)
    if horizontal then cv:vline(b, f.top, f.bottom, BLACK) else cv:hline(f.left, f.right, b, BLACK) end
  end
  if #entries > 0 then draw_legend(cv, f, entries, function(...) return ink(cv, ...) end, outside) end
  return f
end

--- plot.hist_counts(values, {bins = 20 | {edges}, range = {lo, hi}}) -> counts, edges, skipped
--- (numpy.histogram: bins are [e_i, e_i+1), the last one closed; NaN and infinite values skipped)
function plot.hist_counts(values, opts)
  opts = opts or {}
  local v, skipped = finite_values(values, "plot.hist_counts", "values")
  local edges = opts.bins
  if type(edges) ~= "table" then
    local nb = edges or 20
    if math.type(nb) ~= "integer" or nb < 1 then error("plot.hist: bins must be a positive integer or a list of edges", 3) end
    local lo, hi
    if opts.range then lo, hi = opts.range[1], opts.range[2]
    else
      lo, hi = math.huge, -math.huge
      for _, x in ipairs(v) do lo, hi = math.min(lo, x), math.max(hi, x) end
      if lo > hi then lo, hi = 0, 1 end
    end
    if hi <= lo then lo, hi = lo - 0.5, hi + 0.5 end
    edges = {}
    for i = 0, nb do edges[i + 1] = lo + (hi - lo) * i / nb end
  else
    if #edges < 2 then error("plot.hist: bins as edges needs at least 2 values", 3) end
    for i = 2, #edges do
      if not (edges[i] > edges[i - 1]) then error("plot.hist: bin edges must increase", 3) end
    end
  end
  local nb = #edges - 1
  local counts = {}
  for i = 1, nb do counts[i] = 0 end
  local lo, hi = edges[1], edges[#edges]
  for _, x in ipairs(v) do
    if x >= lo and x <= hi then
      -- binary search for the bin (uniform edges could divide, but edges may be uneven)
      local a, b = 1, nb
      while a < b do
        local m = (a + b + 1) // 2
        if x >= edges[m] then a = m else b = m - 1 end
      end
      counts[a] = counts[a] + 1
    end
  end
  return counts, edges, skipped, #v
end

local function render_hist(cv, spec, X0, Y0, W, H)
  local who = "plot.hist"
  local series = spec.series or {{name = spec.name, values = spec.values, color = spec.color}}
  if type(series) ~= "table" or #series == 0 then fail_spec(who, "expected values = {...} or series = {{values = ...}}") end
  -- common range and edges
  local range = spec.range
  local edges = type(spec.bins) == "table" and spec.bins or nil
  if not edges and not range then
    local lo, hi = math.huge, -math.huge
    for si, s in ipairs(series) do
      local v = finite_values(s.values, who, "series " .. si .. ".values")
      for _, x in ipairs(v) do lo, hi = math.min(lo, x), math.max(hi, x) end
    end
    if lo > hi then lo, hi = 0, 1 end
    range = {lo, hi}
  end
  local data = {}
  local cmax = 0
  for si, s in ipairs(series) do
    local ok, counts, e, skipped, nfin = pcall(plot.hist_counts, s.values, {bins = edges or spec.bins or 20, range = range})
    if not ok then fail_spec(who, "series %d: %s", si, tostring(counts):gsub("^.-plot%.hist: ", "")) end
    edges = e
    local total = 0
    for _, c in ipairs(counts) do total = total + c end
    local h = {}
    for i, c in ipairs(counts) do
      h[i] = spec.density and (total > 0 and c / (total * (e[i + 1] - e[i])) or 0) or c
      cmax = math.max(cmax, h[i])
    end
    local name = s.name or ("series " .. si)
    name = name .. string.format(" (n=%d%s)", nfin, skipped > 0 and string.format(", %d NaN skipped", skipped) or "")
    data[si] = {name = name, h = h, color = s.color or PALETTE[(si - 1) % #PALETTE + 1], values = s.values}
  end
  local lo, hi = edges[1], edges[#edges]
  local xmin, xmax = lo - (hi - lo) * 0.02, hi + (hi - lo) * 0.02
  if spec.xlim then xmin, xmax = spec.xlim[1], spec.xlim[2] end
  local ymin, ymax = 0, cmax > 0 and cmax * 1.08 or 1
  if spec.ylim then ymin, ymax = spec.ylim[1], spec.ylim[2] end
  local alpha = spec.alpha or (#data > 1 and 0.45 or 0.75)
  local entries = {}
  for i, d in ipairs(data) do
    entries[i] = {name = d.name, color = d.color, box = true, alpha = alpha, edge = darker(d.color, 0.8)}
  end
  local outside = spec.legend ~= false and spec.legend_position == "right"
  local f = axes(cv, spec, X0, Y0, W, H, {who = who, xmin = xmin, xmax = xmax, ymin = ymin, ymax = ymax,
    xticks = linear_ticks(xmin, xmax, math.max(4, math.floor((W - (outside and legend_width(entries) or 0)) / 90))),
    yticks = value_ticks(ymin, ymax, 6, not spec.density), right_extra = outside and (legend_width(entries) + 10) or 0})
  cv.clip = {f.left + 1, f.top + 1, f.right - 1, f.bottom - 1}
  for _, d in ipairs(data) do
    local y0 = f.py(0)
    for i = 1, #d.h do
      if d.h[i] > 0 then
        local xa, xb = math.floor(f.px(edges[i]) + 0.5), math.floor(f.px(edges[i + 1]) + 0.5)
        cv:fill_rect(xa, math.floor(f.py(d.h[i]) + 0.5), xb - 1, math.floor(y0 + 0.5), d.color, alpha)
      end
    end
  end
  -- outlines (step lines) over all fills, so that overlaid series stay distinguishable
  for _, d in ipairs(data) do
    local edge = darker(d.color, 0.8)
    local prev = 0
    for i = 1, #d.h + 1 do
      local hcur = d.h[i] or 0
      local x = math.floor(f.px(edges[i]) + 0.5)
      if hcur ~= prev then
        cv:line(x, math.floor(f.py(prev) + 0.5), x, math.floor(f.py(hcur) + 0.5), edge, 1)
      end
      if i <= #d.h and hcur > 0 then
        local xb = math.floor(f.px(edges[i + 1]) + 0.5)
        local y = math.floor(f.py(hcur) + 0.5)
        cv:line(x, y, xb, y, edge, 1)
      end
      prev = hcur
    end
  end
  cv.clip = nil
  -- medians as dashed lines
  if spec.median_lines then
    for _, d in ipairs(data) do
      local st = plot.box_stats(d.values)
      if st.n > 0 then
        local x = math.floor(f.px(st.median) + 0.5)
        if x > f.left and x < f.right then cv:dashed_line(x, f.top + 1, x, f.bottom - 1, darker(d.color, 0.7), 2, 5, 3) end
      end
    end
  end
  reference_lines(cv, f, spec.ref_lines, true)
  cv:rect(f.left, f.top, f.right, f.bottom, BLACK)
  if spec.legend ~= false then draw_legend(cv, f, entries, function(...) return ink(cv, ...) end, outside) end
  return f
end

-- the p-quantile of a sorted list, linear interpolation (numpy's default, matplotlib's box plots)
local function quantile_sorted(xs, p)
  local h = (#xs - 1) * p
  local i = math.floor(h)
  local a, b = xs[i + 1], xs[math.min(#xs, i + 2)]
  return a + (h - i) * (b - a)
end
plot.quantile_sorted = quantile_sorted

--- plot.box_stats(values, whis = 1.5) -> {n, skipped, mean, min, max, q1, median, q3, lo, hi, outliers}
--- as matplotlib's boxplot: quartiles by linear interpolation, whiskers at the most extreme values
--- within whis * IQR of the box, the values beyond are outliers. NaN and infinite values are skipped.
function plot.box_stats(values, whis)
  whis = whis or 1.5
  local v, skipped = finite_values(values, "plot.box_stats", "values")
  table.sort(v)
  local st = {n = #v, skipped = skipped, outliers = {}}
  if #v == 0 then return st end
  local s = 0
  for _, x in ipairs(v) do s = s + x end
  st.mean, st.min, st.max = s / #v, v[1], v[#v]
  st.q1, st.median, st.q3 = quantile_sorted(v, 0.25), quantile_sorted(v, 0.5), quantile_sorted(v, 0.75)
  local iqr = st.q3 - st.q1
  local wlo, whi = st.q1 - whis * iqr, st.q3 + whis * iqr
  st.lo, st.hi = st.q1, st.q3
  for _, x in ipairs(v) do
    if x >= wlo then st.lo = math.min(st.lo, x) break end
  end
  for i = #v, 1, -1 do
    if v[i] <= whi then st.hi = math.max(st.hi, v[i]) break end
  end
  for _, x in ipairs(v) do if x < st.lo or x > st.hi then st.outliers[#st.outliers + 1] = x end end
  return st
end

local function render_box(cv, spec, X0, Y0, W, H)
  local who = "plot.boxplot"
  local groups = spec.groups
  if groups == nil and spec.data then
    groups = {}
    for i, d in ipairs(spec.data) do groups[i] = {name = spec.labels and spec.labels[i] or tostring(i), values = d} end
  end
  if type(groups) ~= "table" or #groups == 0 then fail_spec(who, "expected groups = {{name =, values = ...}, ...}") end
  local horizontal = spec.horizontal == true
  local stats = {}
  local lo, hi = math.huge, -math.huge
  for gi, g in ipairs(groups) do
    if type(g) ~= "table" then fail_spec(who, "group %d must be a table {name =, values =}", gi) end
    local st = plot.box_stats(as_list(g.values, "group " .. gi .. ".values") or {}, spec.whis)
    stats[gi] = st
    if st.n > 0 then lo, hi = math.min(lo, st.min), math.max(hi, st.max) end
  end
  if lo > hi then lo, hi = 0, 1 end
  if hi - lo <= 0 then local d = math.max(math.abs(lo) * 0.1, 0.5); lo, hi = lo - d, hi + d end
  local lim = horizontal and spec.xlim or (not horizontal and spec.ylim) or spec.lim
  if lim then lo, hi = lim[1], lim[2]
  else
    local pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad
  end
  local n = #groups
  local show_n = spec.show_n ~= false
  local labels = {}
  for gi, g in ipairs(groups) do
    labels[gi] = tostring(g.name or gi) .. (show_n and string.format(" (n=%d)", stats[gi].n) or "")
  end
  local function cpos(i) return horizontal and (n + 1 - i) or i end
  local cticks = category_ticks(labels, cpos, spec.max_label_chars or 28)
  local vticks = value_ticks(lo, hi, horizontal and math.max(4, math.floor(W / 110)) or 6)
  local r = {who = who}
  if horizontal then
    r.xmin, r.xmax, r.ymin, r.ymax, r.xticks, r.yticks, r.ygrid = lo, hi, 0.5, n + 0.5, vticks, cticks, false
  else
    r.xmin, r.xmax, r.ymin, r.ymax, r.xticks, r.yticks, r.xgrid = 0.5, n + 0.5, lo, hi, cticks, vticks, false
    local lw = 0
    for _, t in ipairs(cticks) do lw = math.max(lw, text_width(t.label)) end
    local slot = (W - 80) / math.max(1, n)
    if lw + 4 > slot then r.xtick_vertical = true; r.xticks = thin_ticks(cticks, slot, 10) end
  end
  local f = axes(cv, spec, X0, Y0, W, H, r)
  local cvv = horizontal and f.px or f.py
  local cvc = horizontal and f.py or f.px
  local half = (spec.box_width or 0.5) / 2
  cv.clip = {f.left + 1, f.top + 1, f.right - 1, f.bottom - 1}
  local boxes = {}
  -- a segment along the value axis (v0 -> v1 at category pixel c) or across it
  local function seg(v0, v1, c, col, w)
    if horizontal then cv:line(v0, c, v1, c, col, w) else cv:line(c, v0, c, v1, col, w) end
  end
  local function across(v, c0, c1, col)
    if horizontal then cv:vline(v, c0, c1, col) else cv:hline(c0, c1, v, col) end
  end
  for gi, st in ipairs(stats) do
    local g = groups[gi]
    local col = g.color or spec.color or PALETTE[(gi - 1) % #PALETTE + 1]
    local edge = darker(col, 0.6)
    local c = cvc(cpos(gi))
    local ca, cb = cvc(cpos(gi) - half), cvc(cpos(gi) + half)
    if ca > cb then ca, cb = cb, ca end
    ca, cb = math.floor(ca + 0.5), math.floor(cb + 0.5)
    local cm = math.floor(c + 0.5)
    if st.n == 0 then
      local s = "no data"
      if horizontal then cv:text(s, f.left + 6, cm - 4, {150, 150, 150})
      else cv:text(s, cm - math.floor(text_width(s) / 2), math.floor((f.top + f.bottom) / 2), {150, 150, 150}) end
    else
      local P = function(v) return math.floor(cvv(v) + 0.5) end
      local q1, q3, med = P(st.q1), P(st.q3), P(st.median)
      local wl, wh = P(st.lo), P(st.hi)
      -- whiskers and caps
      local capa, capb = math.floor(c - (cb - ca) / 4 + 0.5), math.floor(c + (cb - ca) / 4 + 0.5)
      seg(wl, q1, cm, edge, 1)
      seg(q3, wh, cm, edge, 1)
      across(wl, capa, capb, edge)
      across(wh, capa, capb, edge)
      -- box
      local v0, v1 = math.min(q1, q3), math.max(q1, q3)
      if horizontal then
        cv:fill_rect(v0, ca, v1, cb, col, 0.45)
        cv:rect(v0, ca, v1, cb, edge)
      else
        cv:fill_rect(ca, v0, cb, v1, col, 0.45)
        cv:rect(ca, v0, cb, v1, edge)
      end
      -- median: 2 px, dark
      across(med, ca, cb, MEDIAN)
      across(med + (horizontal and 1 or -1), ca, cb, MEDIAN)
      if spec.show_mean ~= false then
        if horizontal then cv:diamond(cvv(st.mean), c, 3, WHITE); cv:diamond(cvv(st.mean), c, 2, edge)
        else cv:diamond(c, cvv(st.mean), 3, WHITE); cv:diamond(c, cvv(st.mean), 2, edge) end
      end
      for _, o in ipairs(st.outliers) do
        if horizontal then cv:circle(cvv(o), c, 2.5, edge, 1.2) else cv:circle(c, cvv(o), 2.5, edge, 1.2) end
      end
      boxes[gi] = {center = cm, from = ca, to = cb, q1 = q1, q3 = q3, median = med, lo = wl, hi = wh}
    end
  end
  cv.clip = nil
  reference_lines(cv, f, spec.ref_lines, horizontal)
  cv:rect(f.left, f.top, f.right, f.bottom, BLACK)
  f.boxes, f.stats = boxes, stats
  return f
end

local RENDER = {lines = render, bars = render_bars, hist = render_hist, boxplot = render_box}

local function chart(kind, spec, defaults)
  local who = "plot." .. kind
  if type(spec) ~= "table" then error(who .. ": expected a spec table", 3) end
  local W, H = spec.width or defaults[1], spec.height or defaults[2]
  check_size(W, H, who)
  local cv = new_canvas(W, H, WHITE)
  local f = RENDER[kind](cv, spec, 0, 0, W, H)
  f.px, f.py = nil, nil
  return cv:to_tensor(), f
end

--- plot.bars{labels = {...}, values = {...}, errors = {...}, colors = {per bar}, horizontal = false,
---   sort = false | true/"descending" | "ascending", value_labels = true, value_format = "%.3f",
---   ref_lines = {0.5, {value = 0.9, label = "0.9", color = {r, g, b}}}, legend = {{name =, color =}} (or false),
---   legend_position = "auto" (inside, in the emptiest corner) | "right" (outside the frame),
---   series = {{name =, values =, errors =, color =}, ...} (grouped bars), title, xlabel, ylabel, xlim/ylim
---   (the value axis), width, height} -> uint8 image [H, W, 3], frame {left, right, top, bottom}
--- NaN values get no bar and an "n/a" label. A horizontal chart without a height grows with the labels.
function plot.bars(spec)
  local n = type(spec) == "table" and #(spec.labels or spec.values or (spec.series and spec.series[1] and
    spec.series[1].values) or {}) or 0
  local h = 500
  if type(spec) == "table" and spec.horizontal and n > 0 then
    local ns = spec.series and #spec.series or 1
    h = math.max(240, math.min(8192, 70 + (spec.title and 26 or 0) + (spec.xlabel and 14 or 0) + n * math.max(14, 8 * ns + 6)))
  end
  return chart("bars", spec, {800, h})
end

--- plot.hist{values = list|tensor or series = {{name =, values =, color =}, ...}, bins = 20 | {edges},
---   range = {lo, hi}, density = false, alpha (0.75 one series, 0.45 overlaid), median_lines = false,
---   legend = false to omit it, legend_position = "auto" | "right",
---   ref_lines, title, xlabel, ylabel, xlim, ylim, width, height} -> image, frame
--- NaN and infinite values are skipped (the legend says how many).
function plot.hist(spec) return chart("hist", spec, {800, 500}) end

--- plot.boxplot{groups = {{name =, values =, color =}, ...} (or data = {list, ...}, labels = {...}),
---   horizontal = false, whis = 1.5, show_mean = true, show_n = true, box_width = 0.5, ref_lines, title,
---   xlabel, ylabel, xlim/ylim (the value axis), width, height} -> image, frame (frame.boxes[i]: pixel
--- positions of group i's box: center, from, to, q1, q3, median, lo, hi; frame.stats[i]: plot.box_stats)
--- Boxes span the quartiles, the dark line is the median, the diamond the mean, whiskers reach the most
--- extreme values within 1.5 IQR, circles are the outliers beyond. NaN values are skipped.
function plot.boxplot(spec) return chart("boxplot", spec, {800, 500}) end

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
    local fn = RENDER[p.type or "lines"]
    if not fn then
      error(string.format("plot.panels: panel %d has unknown type '%s' (lines, bars, hist, boxplot)", i,
        tostring(p.type)), 2)
    end
    fn(cv, p, c * pw, top + r * ph, pw, ph)
  end
  return cv:to_tensor()
end

-- plot.render(spec) -> image: spec.panels -> plot.panels, else by spec.type: "lines" (default), "bars",
-- "hist", "boxplot".
function plot.render(spec)
  if type(spec) ~= "table" then error("plot.render: expected a spec table", 2) end
  if spec.panels then return plot.panels(spec) end
  local kind = spec.type or "lines"
  if kind == "lines" then return plot.lines(spec) end
  if not RENDER[kind] then
    error(string.format("plot.render: unknown type '%s' (lines, bars, hist, boxplot)", tostring(kind)), 2)
  end
  return (plot[kind](spec))
end

-- Renders spec (any plot.render spec, panels included) and writes it as an 8-bit RGB PNG. Returns the
-- image tensor.
function plot.save_png(path, spec)
  local img = plot.render(spec)
  medlua._volume.write_png(path, img)
  return img
end

return plot
