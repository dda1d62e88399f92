-- Meshes from the Lua side (vol:mesh, lua/medlua/mesh.lua): the liver of the real sample label map
-- (watertight, enclosed volume against the voxel-count volume of label_stats, inside the label's world
-- bounding box), every structure of the map watertight, a sphere in a rotated anisotropic grid placed in
-- world mm, PLY written and read back (header and bytes), glTF (.gltf JSON with a data URI, and .glb)
-- with the right counts, the self-contained HTML page (no external resources), bad input with clear
-- messages, and, when Debian's chromium is installed, a headless screenshot of the page whose pixels
-- must show the coloured meshes and the legend (skipped otherwise). Run from the repository root.
local medlua = require "medlua"
local T = require "medlua.test"
local volume = require "medlua.volume"
local mesh = require "medlua.mesh"
local json = require "medlua.json"

local SEG = "data/samples/example_seg_full_fast.nii.gz"
local TMPDIR = os.tmpname()
os.remove(TMPDIR)
assert(os.execute("mkdir -p '" .. TMPDIR .. "'"))
local function tmp(name) return TMPDIR .. "/" .. name end

local function slurp(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function no_tmp_leftovers()
  local h = io.popen("ls -a '" .. TMPDIR .. "'")
  local n = 0
  for line in h:lines() do if line:find(".tmp", 1, true) then n = n + 1 end end
  h:close()
  T.eq(n, 0, "temporary files left behind")
end

local seg = volume.load(SEG)
local stats = seg:label_stats()
local LIVER = 5

local cache = {}
local function liver(opts)
  local key = json.encode(opts or {})
  if not cache[key] then
    local o = {label = LIVER}
    for k, v in pairs(opts or {}) do o[k] = v end
    cache[key] = seg:mesh(o)
  end
  return cache[key]
end

-- ============================================================ the liver
T.case("liver (label 5) of the sample label map: watertight, volume = voxel volume, world placement", function()
  local st = stats[LIVER]
  assert(st, "the sample has no label 5")
  local m = liver()
  T.eq(getmetatable(m), mesh.Mesh)
  T.ok(tostring(m):find("Mesh%(vertices=%d+, faces=%d+%)"), tostring(m))
  T.eq(m.vertices.dtype, "float32")
  T.eq(m.faces.dtype, "int32")
  T.eq(m.normals.dtype, "float32")
  local V, F = m.vertices:size(0), m.faces:size(0)
  T.eq(m.vertices:size(), {V, 3})
  T.eq(m.faces:size(), {F, 3})
  T.eq(m.normals:size(), {V, 3})
  T.ok(F > 2000, "faces: " .. F)
  T.ok(mesh.is_watertight(m), "liver mesh is not watertight")
  local s = mesh.stats(m)
  T.eq(s.boundary_edges, 0)
  T.eq(s.nonmanifold_edges, 0)
  T.eq(s.misoriented_edges, 0)
  -- 2 - 2 genus per component; a liver label is one blob, maybe with a few islands or tunnels
  local ml = mesh.volume_ml(m)
  print(string.format("  liver: V %d F %d, mesh %.1f mL, voxels %.1f mL, area %.0f cm^2, Euler %d", V, F, ml,
    st.volume_ml, mesh.area(m) / 100, s.euler))
  T.ok(ml > 0, "signed volume must be positive (faces outward)")
  T.ok(math.abs(ml / st.volume_ml - 1) < 0.05, string.format("mesh %.1f mL vs voxels %.1f mL", ml, st.volume_ml))
  -- every vertex inside the label's world bounding box grown by one voxel
  local aff = seg.affine
  local lo, hi = {math.huge, math.huge, math.huge}, {-math.huge, -math.huge, -math.huge}
  for c = 0, 7 do
    local idx = {}
    for a = 1, 3 do
      local b = (c >> (a - 1)) & 1 == 1 and st.bbox_hi[a] + 1 or st.bbox_lo[a] - 1
      idx[a] = b
    end
    local w = {seg:world(idx[1], idx[2], idx[3])}
    for a = 1, 3 do lo[a] = math.min(lo[a], w[a]); hi[a] = math.max(hi[a], w[a]) end
  end
  local vlo, vhi = mesh.bounds(m)
  for a = 1, 3 do
    T.ok(vlo[a] >= lo[a] - 1e-3 and vhi[a] <= hi[a] + 1e-3,
      string.format("axis %d: vertices [%.1f, %.1f] outside the label's box [%.1f, %.1f]", a, vlo[a], vhi[a], lo[a], hi[a]))
  end
  -- the vertex centroid is near the label centroid (world mm)
  local c = m.vertices:double():mean(0):tolist()
  for a = 1, 3 do T.near(c[a], st.centroid_mm[a], 15, "centroid axis " .. a) end
  T.eq(aff:size(), {4, 4})
  -- normals are unit vectors and point outward: moving along them leaves the organ
  local nl = m.normals:double():pow(2):sum(1):sqrt()
  T.ok((nl - 1):abs():max():item() < 1e-4)
end)

T.case("liver: smoothing, Taubin and step keep it closed; volume stays close", function()
  local ref = stats[LIVER].volume_ml
  for _, o in ipairs({{smooth_sigma = 1}, {smooth_sigma = {1, 1, 0.5}, taubin_iters = 10}, {step = 2}}) do
    local m = liver(o)
    local ok, s = mesh.is_watertight(m)
    T.ok(ok, "not watertight with " .. json.encode(o))
    local ml = s.volume_mm3 / 1000
    print(string.format("  %s: F %d, %.1f mL (voxels %.1f), area %.0f cm^2", json.encode(o), m.faces:size(0), ml, ref,
      s.area_mm2 / 100))
    T.ok(math.abs(ml / ref - 1) < 0.08, string.format("%s: %.1f mL vs %.1f", json.encode(o), ml, ref))
  end
  T.ok(liver({step = 2}).faces:size(0) < liver().faces:size(0) / 2.5)
  T.ok(mesh.area(liver({smooth_sigma = 1})) < mesh.area(liver()))
end)

T.case("every structure of the sample label map gives a watertight mesh", function()
  local n, bad = 0, {}
  local labels = {}
  for lab in pairs(stats) do labels[#labels + 1] = lab end
  table.sort(labels)
  for _, lab in ipairs(labels) do
    local m = seg:mesh{label = lab}
    local ok, s = mesh.is_watertight(m)
    if not ok or s.volume_mm3 <= 0 then bad[#bad + 1] = lab end
    n = n + 1
  end
  T.ok(n > 20, "labels: " .. n)
  T.eq(bad, {}, "labels with a non-watertight mesh")
  -- the union of all labels (nil label = every non-zero voxel)
  local all = seg:mesh()
  T.ok(mesh.is_watertight(all))
end)

-- ============================================================ world placement
T.case("a sphere in a rotated, anisotropic grid lands on the sphere in world mm", function()
  local sp = {0.8, 1.2, 2.0}
  local c, s = math.cos(0.6), math.sin(0.6)
  local A = {{c * sp[1], -s * sp[2], 0, -40}, {s * sp[1], c * sp[2], 0, 25}, {0, 0, sp[3], 110}, {0, 0, 0, 1}}
  local X, Y, Z = 50, 40, 24
  local center = {-40 + c * sp[1] * 24.6 - s * sp[2] * 19.3, 25 + s * sp[1] * 24.6 + c * sp[2] * 19.3, 110 + sp[3] * 11.7}
  local r = 14
  -- voxel world coordinates with tensor ops
  local i = medlua.arange(0, X):double():view(X, 1, 1)
  local j = medlua.arange(0, Y):double():view(1, Y, 1)
  local k = medlua.arange(0, Z):double():view(1, 1, Z)
  local wx = i * A[1][1] + j * A[1][2] + A[1][4] - center[1]
  local wy = i * A[2][1] + j * A[2][2] + A[2][4] - center[2]
  local wz = k * A[3][3] + A[3][4] - center[3]
  local d2 = wx:pow(2) + wy:pow(2) + wz:pow(2)
  local mask = (d2:le(r * r)):to("uint8")
  local vol = volume.new(mask, A)
  local m = vol:mesh{smooth_sigma = 1, taubin_iters = 10}
  T.ok(mesh.is_watertight(m))
  local d = m.vertices:double() - medlua.tensor(center, {dtype = "float64"})
  local dist = d:pow(2):sum(1):sqrt()
  local diag = math.sqrt(sp[1] ^ 2 + sp[2] ^ 2 + sp[3] ^ 2)
  T.ok((dist - r):abs():max():item() < diag * 0.5, "max |d - r| = " .. (dist - r):abs():max():item())
  T.near(mesh.volume_ml(m), 4 / 3 * math.pi * r ^ 3 / 1000, 0.03 * 4 / 3 * math.pi * r ^ 3 / 1000)
  T.near(mesh.area(m), 4 * math.pi * r * r, 0.05 * 4 * math.pi * r * r)
  -- normals outward: dot(normal, radial) > 0.8 everywhere after smoothing
  local radial = d / dist:view(-1, 1)
  T.ok((radial * m.normals:double()):sum(1):min():item() > 0.8)
end)

-- ============================================================ PLY
T.case("PLY: binary little-endian with normals and colours; header and body read back exactly", function()
  local m = liver()
  local p = tmp("liver.ply")
  mesh.write_ply(p, m, {color = {200, 90, 60}})
  local h = mesh.read_ply_header(p)
  T.eq(h.format, "binary_little_endian")
  T.eq(h.version, "1.0")
  T.eq(#h.elements, 2)
  T.eq(h.elements[1].name, "vertex")
  T.eq(h.elements[1].count, m.vertices:size(0))
  T.eq(h.elements[2].name, "face")
  T.eq(h.elements[2].count, m.faces:size(0))
  local names = {}
  for _, pr in ipairs(h.elements[1].properties) do names[#names + 1] = pr.name .. ":" .. pr.type end
  T.eq(names, {"x:float", "y:float", "z:float", "nx:float", "ny:float", "nz:float", "red:uchar", "green:uchar",
    "blue:uchar"})
  T.eq(h.elements[2].properties[1], {name = "vertex_indices", list = true, count_type = "uchar", type = "int"})
  T.ok(table.concat(h.comments, "\n"):find("SPACE=RAS", 1, true))
  -- exact size: header + 27 bytes per vertex + 13 per face
  T.eq(#slurp(p), h.header_bytes + 27 * m.vertices:size(0) + 13 * m.faces:size(0))
  local back = mesh.read_ply(p)
  T.ok(back.vertices:equal(m.vertices), "vertices differ")
  T.ok(back.faces:equal(m.faces), "faces differ")
  T.ok(back.normals:equal(m.normals), "normals differ")
  T.eq(back.colors:get(0, 0), 200)
  T.eq(back.colors:get(back.colors:size(0) - 1, 2), 60)
  T.ok(mesh.is_watertight(back))
  -- LPS: x and y negated, same faces (a rotation: the winding stays outward)
  mesh.write_ply(tmp("liver_lps.ply"), m, {color = "#c85a3c", space = "LPS"})
  local lps = mesh.read_ply(tmp("liver_lps.ply"))
  T.ok(lps.vertices:select(1, 0):equal(-m.vertices:select(1, 0)))
  T.ok(lps.vertices:select(1, 2):equal(m.vertices:select(1, 2)))
  T.ok(mesh.volume_ml(lps) > 0)
  T.eq(lps.colors:get(0, 1), 90)
  no_tmp_leftovers()
end)

-- ============================================================ glTF
local function b64decode_len(s)
  local pad = s:match("(=*)$")
  return #s // 4 * 3 - #pad
end

T.case("glTF: valid JSON, one node/mesh/material per structure, counts and byte lengths agree", function()
  local items = {
    {name = "liver", color = {200, 90, 60}, mesh = liver()},
    {name = "spleen", color = {0.2, 0.3, 0.9}, alpha = 0.5, mesh = seg:mesh{label = 1}},
    {name = "absent", mesh = seg:mesh{label = 250, allow_missing = true}},
  }
  local p = tmp("organs.gltf")
  mesh.write_gltf(p, items)
  local doc = json.decode(slurp(p))
  T.eq(doc.asset.version, "2.0")
  T.eq(#doc.meshes, 2, "the empty structure is skipped")
  T.eq(#doc.materials, 2)
  T.eq(#doc.nodes, 3) -- two structures + the root with the RAS mm -> glTF metres matrix
  T.eq(doc.nodes[3].children, {0, 1})
  T.eq(#doc.nodes[3].matrix, 16)
  T.eq(doc.scenes[doc.scene + 1].nodes, {2})
  T.eq(doc.meshes[1].name, "liver")
  T.eq(doc.materials[2].alphaMode, "BLEND")
  T.near(doc.materials[1].pbrMetallicRoughness.baseColorFactor[1], 200 / 255, 1e-9)
  local total = 0
  for _, v in ipairs(doc.bufferViews) do
    T.eq(v.byteOffset, total)
    total = total + v.byteLength
  end
  T.eq(doc.buffers[1].byteLength, total)
  local uri = doc.buffers[1].uri
  T.eq(uri:sub(1, 37), "data:application/octet-stream;base64,")
  T.eq(b64decode_len(uri:sub(38)), total)
  for mi, it in ipairs({items[1], items[2]}) do
    local prim = doc.meshes[mi].primitives[1]
    local pos, nrm, idx = doc.accessors[prim.attributes.POSITION + 1], doc.accessors[prim.attributes.NORMAL + 1],
      doc.accessors[prim.indices + 1]
    T.eq(pos.count, it.mesh.vertices:size(0))
    T.eq(nrm.count, it.mesh.vertices:size(0))
    T.eq(idx.count, 3 * it.mesh.faces:size(0))
    T.eq(pos.componentType, 5126)
    T.eq(idx.componentType, 5125)
    T.eq(doc.bufferViews[pos.bufferView + 1].byteLength, 12 * pos.count)
    T.eq(doc.bufferViews[idx.bufferView + 1].byteLength, 4 * idx.count)
    local lo, hi = mesh.bounds(it.mesh)
    for a = 1, 3 do T.near(pos.min[a], lo[a], 1e-3); T.near(pos.max[a], hi[a], 1e-3) end
  end
  -- binary glTF
  local g = tmp("organs.glb")
  mesh.write_gltf(g, items)
  local s = slurp(g)
  local magic, version, length = string.unpack("<I4I4I4", s)
  T.eq(magic, 0x46546C67)
  T.eq(version, 2)
  T.eq(length, #s)
  local jlen, jtype = string.unpack("<I4I4", s, 13)
  T.eq(jtype, 0x4E4F534A)
  T.eq(jlen % 4, 0)
  local gdoc = json.decode(s:sub(21, 20 + jlen))
  T.eq(#gdoc.meshes, 2)
  T.eq(gdoc.buffers[1].uri, nil)
  local blen, btype = string.unpack("<I4I4", s, 21 + jlen)
  T.eq(btype, 0x004E4942)
  T.eq(blen, gdoc.buffers[1].byteLength)
  T.eq(28 + jlen + blen, #s)
  -- only empty structures: a valid document without meshes, buffers or empty arrays
  mesh.write_gltf(tmp("none.gltf"), {items[3]})
  local none = json.decode(slurp(tmp("none.gltf")))
  T.eq(none.meshes, nil)
  T.eq(none.buffers, nil)
  T.eq(none.nodes[1].children, nil)
  mesh.write_gltf(tmp("none.glb"), {items[3]})
  local ns = slurp(tmp("none.glb"))
  T.eq(select(3, string.unpack("<I4I4I4", ns)), #ns)
  -- a single mesh is accepted too
  mesh.write_gltf(tmp("one.gltf"), liver())
  T.eq(#json.decode(slurp(tmp("one.gltf"))).meshes, 1)
  no_tmp_leftovers()
end)

-- ============================================================ HTML
local function html_spec()
  local gt = liver({smooth_sigma = 1, taubin_iters = 5})
  return {
    title = "sample: prediction vs ground truth",
    groups = {
      {name = "prediction", meshes = {{name = "liver", color = {220, 60, 40}, mesh = liver()},
        {name = "spleen", color = {40, 90, 230}, mesh = seg:mesh{label = 1}}}},
      {name = "ground truth", meshes = {{name = "liver", color = {60, 200, 80}, mesh = gt}}},
    },
  }
end

T.case("HTML: one self-contained page, no external resources, names, colours and mesh data embedded", function()
  local p = tmp("view.html")
  mesh.write_html(p, html_spec())
  local s = slurp(p)
  T.ok(s:find("<!DOCTYPE html>", 1, true) == 1)
  T.ok(not s:find("<script[^>]+src="), "external script")
  T.ok(not s:find("<link", 1, true), "external stylesheet")
  T.ok(not s:find("https?://"), "a network address in the page")
  T.ok(s:find("webgl", 1, true))
  local data = s:match('<script type="application/json" id="medlua%-data">(.-)</script>')
  T.ok(data, "embedded data")
  local d = json.decode(data)
  T.eq(#d.groups, 2)
  T.eq(d.groups[1].name, "prediction")
  T.eq(d.groups[1].items[1].name, "liver")
  T.eq(d.groups[1].items[1].color, {220, 60, 40})
  local it = d.groups[1].items[1]
  T.eq(b64decode_len(it.pos), 12 * it.nv)
  T.eq(b64decode_len(it.nrm), 3 * it.nv)
  T.eq(b64decode_len(it.idx), (it.idx_type == "u16" and 6 or 12) * it.nf)
  T.eq(it.nf, liver().faces:size(0))
  T.ok(#s < 4e6, "page size " .. #s)
  -- a structure over max_faces is decimated for the page, and says so
  local spec = html_spec()
  spec.max_faces = 2000
  mesh.write_html(tmp("small.html"), spec)
  local d2 = json.decode(slurp(tmp("small.html")):match('id="medlua%-data">(.-)</script>'))
  T.ok(d2.groups[1].items[1].nf <= 2000 and d2.groups[1].items[1].faces_full == it.nf)
  T.ok(#slurp(tmp("small.html")) < #s / 3)
  -- without colours, one structure name keeps one colour across groups
  local l = liver()
  mesh.write_html(tmp("pal.html"), {groups = {{name = "a", meshes = {{name = "liver", mesh = l}, {name = "x", mesh = l}}},
    {name = "b", meshes = {{name = "liver", mesh = l}}}}})
  local d3 = json.decode(slurp(tmp("pal.html")):match('id="medlua%-data">(.-)</script>'))
  T.eq(d3.groups[2].items[1].color, d3.groups[1].items[1].color)
  T.ne(d3.groups[1].items[2].color, d3.groups[1].items[1].color)
  -- title is escaped in the HTML head, and "</" cannot close the data script early
  mesh.write_html(tmp("esc.html"), {title = "a </script><b>", groups = {{name = "x</script>", meshes = {}}}})
  local e = slurp(tmp("esc.html"))
  T.ok(e:find("<title>a &lt;/script&gt;&lt;b&gt;</title>", 1, true))
  T.eq(json.decode(e:match('id="medlua%-data">(.-)</script>')).groups[1].name, "x</script>")
  no_tmp_leftovers()
end)

-- ============================================================ bad input
T.case("bad input: clear errors naming the function", function()
  T.raises(function() return seg:mesh{label = 999} end, "Volume:mesh: label 999 is not present")
  T.eq(seg:mesh{label = 999, allow_missing = true}.faces:size(), {0, 3})
  T.raises(function() return seg:mesh{lable = 5} end, "unknown option 'lable'")
  T.raises(function() return seg:mesh{label = 5, step = 0} end, "step")
  T.raises(function() return seg:mesh{label = 5, iso = 1} end, "iso")
  T.raises(function() return seg:mesh{label = 5, smooth_sigma = -1} end, "smooth_sigma")
  T.raises(function() return seg:mesh{label = 5, smooth_sigma = {1, 2}} end, "smooth_sigma")
  T.raises(function() return seg:mesh{label = "liver"} end, "label")
  local v4 = volume.new(medlua.zeros(4, 4, 4, 2))
  T.raises(function() return v4:mesh() end, "Volume:mesh: needs a 3-D volume, got shape [4, 4, 4, 2]")
  local empty = volume.new(medlua.zeros(5, 5, 5))
  local m = empty:mesh()
  T.eq(m.vertices:size(), {0, 3})
  T.eq(m.faces:size(), {0, 3})
  T.eq(mesh.is_watertight(m), false)
  T.eq(mesh.volume_ml(m), 0)
  mesh.write_ply(tmp("empty.ply"), m)
  T.eq(mesh.read_ply(tmp("empty.ply")).faces:size(0), 0)
  T.raises(function() mesh.write_ply(tmp("x.ply"), {vertices = 1}) end, "mesh.write_ply: mesh must be a Mesh")
  T.raises(function() mesh.write_ply(tmp("x.ply"), liver(), {color = {300, 0, 0}}) end, "out of range")
  T.raises(function() mesh.write_ply(tmp("x.ply"), liver(), {space = "XYZ"}) end, "space")
  T.raises(function() mesh.write_ply(TMPDIR .. "/no/such/dir/x.ply", liver()) end, "mesh.write_ply: cannot write")
  T.raises(function() mesh.write_html(tmp("x.html"), {}) end, "mesh.write_html: expected")
  T.raises(function() mesh.write_gltf(tmp("x.gltf"), {{name = "a", mesh = 3}}) end, "item 1.mesh")
  local bad = mesh.new(medlua.zeros(3, 3), medlua.tensor({{0, 1, 5}}, {dtype = "int32"}), medlua.zeros(3, 3))
  T.raises(function() return mesh.area(bad) end, "vertex 5")
  T.raises(function() mesh.new(medlua.zeros(3, 3), medlua.tensor({{0, 1, 5}}, {dtype = "int32"})) end, "vertex 5")
  T.raises(function() mesh.read_ply(SEG) end, "not a PLY file")
  no_tmp_leftovers()
end)

-- ============================================================ headless browser (optional)
local function which(cmd)
  local h = io.popen("command -v " .. cmd .. " 2>/dev/null")
  local s = h:read("a")
  h:close()
  s = s:gsub("%s+$", "")
  return s ~= "" and s or nil
end

--- Renders an HTML page headless; returns the PNG path or nil, reason.
local function screenshot(html, png)
  local chrome = which("chromium") or which("chromium-browser") or which("google-chrome")
  if not chrome then return nil, "no chromium" end
  os.remove(png)
  local cmd = string.format("timeout 90 '%s' --headless --no-sandbox --disable-gpu --use-gl=angle " ..
    "--use-angle=swiftshader --enable-unsafe-swiftshader --hide-scrollbars --window-size=1000,800 " ..
    "--virtual-time-budget=3000 --screenshot='%s' 'file://%s' >/dev/null 2>&1", chrome, png, html)
  os.execute(cmd)
  local f = io.open(png, "rb")
  if not f then return nil, "chromium wrote no screenshot" end
  f:close()
  return png
end

T.case("HTML in headless chromium: meshes visible and coloured, legend drawn (skipped without chromium)", function()
  if not (which("chromium") or which("chromium-browser") or which("google-chrome")) then
    print("skipped: chromium is not installed (apt-get install chromium)")
    return
  end
  local html = tmp("shot.html")
  mesh.write_html(html, html_spec())
  if html:sub(1, 1) ~= "/" then html = os.getenv("PWD") .. "/" .. html end
  local png, why = screenshot(html, tmp("shot.png"))
  if not png then error(why) end
  local keep = os.getenv("MEDLUA_MESH_SCREENSHOT")
  if keep then os.execute("cp '" .. png .. "' '" .. keep .. "'") end
  local img = volume.read_png(png):float()
  local H, W = img:size(0), img:size(1)
  T.eq({H, W}, {800, 1000})
  local r, g, b = img:select(2, 0), img:select(2, 1), img:select(2, 2)
  local n = H * W
  -- the liver of the prediction: red-dominant shaded pixels; the spleen: blue-dominant
  local red = ((r - g):gt(50):float() * (r - b):gt(50):float()):sum():item() / n
  local blue = ((b - r):gt(50):float() * (b - g):gt(20):float()):sum():item() / n
  -- the legend panel (top-left): light text on the dark panel
  local legend = img:narrow(0, 0, 120):narrow(1, 0, 180)
  local light = legend:select(2, 0):gt(180):float():sum():item()
  print(string.format("  screenshot %s: red %.1f%%, blue %.2f%%, legend light pixels %d", png, 100 * red, 100 * blue, light))
  T.ok(red > 0.02, "liver not visible")
  T.ok(blue > 0.001, "spleen not visible")
  T.ok(light > 100, "legend not drawn")
end)

T.case("PLY, glTF and GLB open in a third-party reader (assimp; skipped when absent)", function()
  if not which("assimp") then print("skipped: assimp is not installed (apt-get install assimp-utils)") return end
  local items = {{name = "liver", color = {200, 90, 60}, mesh = liver()}, {name = "spleen", mesh = seg:mesh{label = 1}}}
  mesh.write_ply(tmp("a.ply"), liver())
  mesh.write_gltf(tmp("a.gltf"), items)
  mesh.write_gltf(tmp("a.glb"), items)
  local want = liver().faces:size(0) + items[2].mesh.faces:size(0)
  for _, case in ipairs({{"a.ply", liver().faces:size(0), 1}, {"a.gltf", want, 2}, {"a.glb", want, 2}}) do
    local h = io.popen("assimp info '" .. tmp(case[1]) .. "' 2>&1")
    local out = h:read("a")
    h:close()
    T.ok(out:find("Importing file ...%s+OK"), case[1] .. ": assimp could not import it:\n" .. out:sub(1, 400))
    T.eq(tonumber(out:match("\nFaces:%s+(%d+)")), case[2], case[1] .. " faces")
    T.eq(tonumber(out:match("\nMeshes:%s+(%d+)")), case[3], case[1] .. " meshes")
  end
  -- glTF: the root matrix maps RAS mm to metres with +Y = superior
  local h = io.popen("assimp info '" .. tmp("a.gltf") .. "' 2>&1")
  local out = h:read("a")
  h:close()
  local ylo, yhi = out:match("Minimum point%s+%(%S+ (%S+) %S+%)"), out:match("Maximum point%s+%(%S+ (%S+) %S+%)")
  local lo, hi = mesh.bounds(liver())
  local slo, shi = math.min(lo[3], mesh.bounds(items[2].mesh)[3]), hi[3]
  T.near(tonumber(ylo), slo / 1000, 2e-4)
  T.ok(tonumber(yhi) >= shi / 1000 - 2e-4)
end)

T.run()
os.execute("rm -rf '" .. TMPDIR .. "'")
