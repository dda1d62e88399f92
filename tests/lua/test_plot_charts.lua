-- medlua.plot charts: bar charts, histograms and box plots (sizes, where the data lands in pixels, NaN
-- handling, panels, errors) and the exported canvas the recipes draw their figures with.
local medlua = require "medlua"
local plot = require "medlua.plot"
local T = require "medlua.test"

local NAN = 0 / 0

local function pixel(img, x, y)
  return {img:get(y, x, 0), img:get(y, x, 1), img:get(y, x, 2)}
end
local function is_white(p) return p[1] == 255 and p[2] == 255 and p[3] == 255 end
local function same(p, c) return p[1] == c[1] and p[2] == c[2] and p[3] == c[3] end

-- the pixel row of value v on a vertical value axis spanning [lo, hi] over the frame
local function row_of(f, v, lo, hi) return math.floor(f.bottom - (v - lo) / (hi - lo) * (f.bottom - f.top) + 0.5) end

T.case("canvas: exported, paste / text / fill_rect with alpha / save_png", function()
  local cv = plot.new_canvas(64, 48, {255, 255, 255})
  T.eq(getmetatable(cv), plot.Canvas)
  local img = medlua.tensor({{{0, 10, 20}, {30, 40, 50}}, {{60, 70, 80}, {90, 100, 300}}}) -- 300 is clamped
  cv:paste(img, 5, 6)
  cv:paste(medlua.full({2, 2}, 100.4), 62, 46)     -- gray, partly outside: clipped, rounded
  cv:fill_rect(20, 20, 29, 29, {0, 0, 0}, 0.5)
  local w = cv:text("Ab", 40, 2, {255, 0, 0}, 2)
  T.eq(w, plot.text_width("Ab", 2))
  local t = cv:to_tensor()
  T.eq(t:size(), {48, 64, 3})
  T.eq(pixel(t, 5, 6), {0, 10, 20})
  T.eq(pixel(t, 6, 7), {90, 100, 255})
  T.eq(pixel(t, 63, 47), {100, 100, 100})
  T.eq(pixel(t, 25, 25), {127, 127, 127})  -- half-way to black (stored 127.5, converted down)
  local red = 0
  for y = 2, 20 do for x = 40, 40 + w - 1 do if same(pixel(t, x, y), {255, 0, 0}) then red = red + 1 end end end
  T.ok(red > 40, "text drawn: " .. red .. " red pixels")
  T.eq(plot.fit_text("structure_name", 6 * 8 - 1), "struct..")
  T.eq(plot.fit_text("liver", 29), "liver")
  local path = os.tmpname() .. ".png"
  cv:save_png(path)
  T.tensor_eq(medlua._volume.read_png(path), t)
  os.remove(path)
end)

T.case("bars: sizes, sorted horizontal bars as long as their values, NaN gets no bar", function()
  local img, f = plot.bars{labels = {"a", "b", "c", "d"}, values = {0.2, 0.9, NAN, 0.5}, horizontal = true,
    sort = true, xlim = {0, 1}, value_labels = false, color = {0, 0, 200}}
  T.eq(img.dtype, "uint8")
  T.eq(img:size(1), 800)
  T.eq(img:size(0), 240) -- a horizontal chart's default height grows with its bars, at least 240
  T.ok(f.left < f.right and f.top < f.bottom)
  T.eq(pixel(img, f.left, f.top), {0, 0, 0})
  -- categories top to bottom in descending order (NaN last): b 0.9, d 0.5, a 0.2, c n/a
  local n = 4
  local function bar_len(rank)
    local y = math.floor(f.bottom - ((n + 1 - rank) - 0.5) / n * (f.bottom - f.top) + 0.5)
    local len = 0
    for x = f.left + 1, f.right - 1 do if same(pixel(img, x, y), {0, 0, 200}) then len = len + 1 end end
    return len
  end
  local W = f.right - f.left
  for rank, v in ipairs{0.9, 0.5, 0.2} do
    T.near(bar_len(rank), v * W, 3, string.format("rank %d bar ~ %g of the axis", rank, v))
  end
  T.eq(bar_len(4), 0)
  -- more bars: taller; grouped vertical bars, with errors and value labels: the default size
  local names, vals = {}, {}
  for i = 1, 40 do names[i] = "structure_" .. i; vals[i] = i / 40 end
  local tall = plot.bars{labels = names, values = vals, horizontal = true, title = "t"}
  T.eq(tall:size(0), 70 + 26 + 40 * 14)
  local g = plot.bars{labels = {"x", "y"}, series = {{name = "s1", values = {1, 2}, errors = {0.1, 0.2}},
    {name = "s2", values = {2, NAN}}}, title = "grouped", width = 400, height = 300}
  T.eq(g:size(), {300, 400, 3})
  T.raises(function() plot.bars{labels = {"a"}, values = {1, 2}} end, "1 labels for 2 values")
  T.raises(function() plot.bars{series = {{values = {1}}, {values = {1, 2}}}} end, "series 2 has 2 values, series 1 has 1")
end)

T.case("hist: numpy bin counts, bar heights, NaN and inf skipped, overlaid series blend", function()
  local counts, edges, skipped, n = plot.hist_counts({0, 0.5, 1, 1.5, 2, NAN, math.huge}, {bins = 4, range = {0, 2}})
  T.eq(counts, {1, 1, 1, 2}) -- the last bin is closed, as numpy.histogram
  T.eq(edges, {0, 0.5, 1, 1.5, 2})
  T.eq(skipped, 2)
  T.eq(n, 5)
  T.eq(plot.hist_counts({1, 2, 3}, {bins = {0, 2, 10}}), {1, 2})
  local col = {200, 0, 0}
  local img, f = plot.hist{values = {0, 0.5, 1, 1.5, 2, NAN}, bins = 4, range = {0, 2}, xlim = {0, 2}, ylim = {0, 4},
    color = col, alpha = 1, legend = false, width = 400, height = 300}
  T.eq(img:size(), {300, 400, 3})
  local function col_x(b) return math.floor(f.left + (b - 0.5) / 4 * (f.right - f.left) + 0.5) end
  -- bin 4 holds 2 values: filled below row(2), white above; bin 1 holds 1
  T.ok(same(pixel(img, col_x(4), row_of(f, 2, 0, 4) + 3), col), "bin 4 filled up to 2")
  T.ok(is_white(pixel(img, col_x(4), row_of(f, 2, 0, 4) - 3)), "bin 4 ends at 2")
  T.ok(same(pixel(img, col_x(1), row_of(f, 1, 0, 4) + 3), col), "bin 1 filled up to 1")
  T.ok(is_white(pixel(img, col_x(1), row_of(f, 1, 0, 4) - 3)), "bin 1 ends at 1")
  -- two series overlaid with alpha: where both have counts the colour is a blend of the two
  local a, b = {}, {}
  for i = 1, 100 do a[i] = (i % 10) / 10; b[i] = (i % 10) / 10 end
  local img2, f2 = plot.hist{series = {{name = "a", values = a, color = {255, 0, 0}}, {name = "b", values = b,
    color = {0, 0, 255}}}, bins = 10, range = {0, 1}, legend = false}
  local p = pixel(img2, math.floor((f2.left + f2.right) / 2), f2.bottom - 5)
  T.ok(p[1] > 40 and p[3] > 40 and p[2] < 200, "a blend of red and blue: " .. table.concat(p, ","))
  T.raises(function() plot.hist{values = {1, 2}, bins = 0} end, "bins must be a positive integer")
end)

T.case("boxplot: quartiles, whiskers, median and outliers where numpy puts them", function()
  local data = {1, 2, 3, 4, 5, 6, 7, 8, 9, 30, NAN}
  local st = plot.box_stats(data)
  T.eq(st.n, 10)
  T.eq(st.skipped, 1)
  T.near(st.q1, 3.25, 1e-12)    -- numpy.percentile(..., 25), linear interpolation
  T.near(st.median, 5.5, 1e-12)
  T.near(st.q3, 7.75, 1e-12)
  T.eq(st.lo, 1)
  T.eq(st.hi, 9)                 -- the largest value within q3 + 1.5 IQR = 14.5
  T.eq(st.outliers, {30})
  T.near(st.mean, 7.5, 1e-12)
  local col = {0, 160, 0}
  local edge = {0, 96, 0} -- the box outline: the group colour at 60 %
  local img, f = plot.boxplot{groups = {{name = "known", values = data, color = col}}, ylim = {0, 40},
    show_mean = false, width = 400, height = 400}
  T.eq(img:size(), {400, 400, 3})
  T.eq(pixel(img, f.left, f.bottom), {0, 0, 0})
  local bx = f.boxes[1]
  -- a column inside the box but outside the whisker caps: outline at q1 and q3, median rows in between
  local x = math.floor(bx.center + 0.375 * (bx.to - bx.from) + 0.5)
  local edge_rows, median_rows = {}, {}
  for y = f.top + 1, f.bottom - 1 do
    local p = pixel(img, x, y)
    if same(p, edge) then edge_rows[#edge_rows + 1] = y end
    if same(p, {20, 20, 20}) then median_rows[#median_rows + 1] = y end
  end
  T.eq(edge_rows, {row_of(f, 7.75, 0, 40), row_of(f, 3.25, 0, 40)})
  T.eq(median_rows, {row_of(f, 5.5, 0, 40) - 1, row_of(f, 5.5, 0, 40)})
  -- whisker caps at 1 and 9 on the centre column's neighbours; the outlier's ring around 30
  T.ok(same(pixel(img, bx.center + 1, row_of(f, 9, 0, 40)), edge), "upper whisker cap at 9")
  T.ok(same(pixel(img, bx.center + 1, row_of(f, 1, 0, 40)), edge), "lower whisker cap at 1")
  local y30 = row_of(f, 30, 0, 40)
  T.ok(not is_white(pixel(img, bx.center, y30 - 2)) or not is_white(pixel(img, bx.center, y30 - 3)), "outlier ring")
  local c30 = pixel(img, bx.center, y30) -- 30 is also a grid line
  T.ok(is_white(c30) or same(c30, {225, 225, 225}), "the outlier is an open circle")
  -- between the upper whisker and the outlier: nothing but background (and grid)
  local p = pixel(img, bx.center, row_of(f, 20, 0, 40))
  T.ok(is_white(p) or same(p, {225, 225, 225}), "no whisker up to the outlier")
  -- groups without data and horizontal boxes render
  local img2 = plot.boxplot{groups = {{name = "none", values = {NAN, NAN}}, {name = "t", values = medlua.randn(50)}},
    horizontal = true, title = "h"}
  T.eq(img2:size(), {500, 800, 3})
end)

T.case("panels and save_png take every chart type; errors name the chart", function()
  local spec = {panels = {
    {type = "hist", values = {1, 2, 2, 3}, title = "h"},
    {type = "boxplot", groups = {{name = "g", values = {1, 2, 3}}}, title = "b"},
    {type = "bars", labels = {"a", "b"}, values = {1, 2}, title = "bars"},
    {series = {{name = "l", y = {1, 2}}}, title = "lines"}}, cols = 2, width = 640, height = 480, title = "all"}
  local path = os.tmpname() .. ".png"
  plot.save_png(path, spec)
  local img = medlua._volume.read_png(path)
  T.eq(img:size(), {480, 640, 3})
  T.tensor_eq(img, plot.panels(spec))
  plot.save_png(path, {type = "bars", labels = {"a"}, values = {1}, width = 200, height = 100})
  T.eq(medlua._volume.read_png(path):size(), {100, 200, 3})
  os.remove(path)
  T.raises(function() plot.panels{panels = {{type = "pie"}}} end, "panel 1 has unknown type 'pie'")
  T.raises(function() plot.render{type = "pie"} end, "unknown type 'pie'")
  T.raises(function() plot.boxplot{groups = {}} end, "plot.boxplot: expected groups")
  T.raises(function() plot.bars{values = {1}, width = 70, height = 50} end, "plot.bars: 70x50 is too small")
end)

T.run()
