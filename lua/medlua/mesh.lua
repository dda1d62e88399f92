-- medlua.mesh: triangle meshes of segmentations (marching cubes in world millimetres) and their files.
--
--   local volume, mesh = require "medlua.volume", require "medlua.mesh"
--   local seg = volume.load("seg.nii.gz")
--   local liver = seg:mesh{label = 5, smooth_sigma = 1, taubin_iters = 10}
--   print(liver, mesh.volume_ml(liver), mesh.area(liver), mesh.is_watertight(liver))
--   mesh.write_ply("liver.ply", liver, {color = {200, 90, 60}})          -- MeshLab, Slicer, ParaView
--   mesh.write_gltf("organs.gltf", {{name = "liver", color = {200, 90, 60}, mesh = liver}})  -- or .glb
--   mesh.write_html("organs.html", {title = "case 1", groups = {
--     {name = "prediction", meshes = {{name = "liver", color = {200, 90, 60}, mesh = liver}}},
--     {name = "ground truth", meshes = {{name = "liver", color = {200, 90, 60}, mesh = liver_gt}}}}})
--
-- A Mesh is a table {vertices = float32 [V, 3] (world mm, RAS+), faces = int32 [F, 3] (0-based,
-- counter-clockwise seen from outside), normals = float32 [V, 3] (unit, outward)}; vol:mesh{...}
-- (modules/volume/volume_mesh_lua.c) makes one, mesh.new(vertices, faces, normals?) wraps tensors.
-- Colours are {r, g, b} with integer components in 0..255, float components in 0..1, or "#rrggbb".
-- Every file is written to a temporary name and renamed into place.
local medlua = require("medlua")
local json = require("medlua.json")
local N = medlua._volume._mesh_native()

local M = {}
local Mesh = {}
Mesh.__index = Mesh
M.Mesh = Mesh

local function fail(fname, fmt, ...)
  error(fname .. ": " .. string.format(fmt, ...), 3)
end

local function nverts(m) return m.vertices:size(0) end
local function nfaces(m) return m.faces:size(0) end

local function check_mesh(fname, m, what)
  what = what or "mesh"
  if type(m) ~= "table" or not medlua.is_tensor(m.vertices) or not medlua.is_tensor(m.faces) then
    fail(fname, "%s must be a Mesh {vertices = [V, 3] tensor, faces = [F, 3] tensor, normals = ...}, got %s", what,
      type(m) == "table" and "a table without vertices/faces tensors" or type(m))
  end
  return m
end

Mesh.__tostring = function(m)
  return string.format("Mesh(vertices=%d, faces=%d)", nverts(m), nfaces(m))
end

--- mesh.new(vertices, faces, normals?) -> Mesh (normals from area-weighted faces when nil)
function M.new(vertices, faces, normals)
  if not medlua.is_tensor(vertices) or not medlua.is_tensor(faces) then
    error("mesh.new: vertices and faces must be tensors ([V, 3] and [F, 3])", 2)
  end
  vertices, faces = vertices:float():contiguous(), faces:int():contiguous()
  normals = normals and normals:float():contiguous() or N.normals(vertices, faces)
  return setmetatable({vertices = vertices, faces = faces, normals = normals}, Mesh)
end

-- ------------------------------------------------------------------ measures
--- mesh.stats(m) -> {area_mm2, volume_mm3, watertight, euler, vertices_used, edges, boundary_edges,
---                   nonmanifold_edges, misoriented_edges, degenerate_faces}
function M.stats(m)
  check_mesh("mesh.stats", m)
  return N.stats(m.vertices, m.faces)
end

--- mesh.area(m) -> surface area in mm^2
function M.area(m) return M.stats(m).area_mm2 end

--- mesh.volume_ml(m) -> enclosed volume in mL (signed, by the divergence theorem: > 0 when the faces
--- point outward; meaningful for a watertight mesh)
function M.volume_ml(m) return M.stats(m).volume_mm3 / 1000 end

--- mesh.is_watertight(m) -> bool, stats: every edge shared by exactly two faces that traverse it in
--- opposite directions (closed, manifold, consistently oriented), and no degenerate face
function M.is_watertight(m)
  local st = M.stats(m)
  return st.watertight, st
end

--- mesh.smooth(m, iters, lambda = 0.5, mu = -0.53) -> a Taubin-smoothed copy (mu = 0: Laplacian)
function M.smooth(m, iters, lambda, mu)
  check_mesh("mesh.smooth", m)
  local v = N.taubin(m.vertices, m.faces, iters or 10, lambda, mu)
  return M.new(v, m.faces)
end

--- mesh.decimate(m, max_faces) -> a mesh with at most max_faces triangles (vertex clustering; for
--- display, not guaranteed watertight). A mesh already small enough comes back as a copy.
function M.decimate(m, max_faces)
  check_mesh("mesh.decimate", m)
  local v, f, n = N.decimate(m.vertices, m.faces, max_faces)
  return setmetatable({vertices = v, faces = f, normals = n}, Mesh)
end

function M.bounds(m)
  check_mesh("mesh.bounds", m)
  if nverts(m) == 0 then return nil end
  return m.vertices:amin(0):tolist(), m.vertices:amax(0):tolist()
end

for _, name in ipairs({"stats", "area", "volume_ml", "is_watertight", "smooth", "decimate", "bounds"}) do
  Mesh[name] = M[name]
end

-- ------------------------------------------------------------------ colours
local palette = {
  {230, 25, 75}, {60, 180, 75}, {255, 225, 25}, {0, 130, 200}, {245, 130, 48}, {145, 30, 180}, {70, 240, 240},
  {240, 50, 230}, {210, 245, 60}, {250, 190, 212}, {0, 128, 128}, {220, 190, 255}, {170, 110, 40},
  {255, 250, 200}, {128, 0, 0}, {170, 255, 195}, {128, 128, 0}, {255, 215, 180}, {0, 0, 128}, {128, 128, 128},
}
M.palette = palette

--- mesh.color(c, i) -> {r, g, b} integers 0..255 (c nil: palette entry i)
function M.color(c, i, fname)
  fname = fname or "mesh.color"
  if c == nil then
    local p = palette[((i or 1) - 1) % #palette + 1]
    return {p[1], p[2], p[3]}
  end
  if type(c) == "string" then
    local r, g, b = c:match("^#(%x%x)(%x%x)(%x%x)$")
    if not r then fail(fname, "colour string must be \"#rrggbb\", got %q", c) end
    return {tonumber(r, 16), tonumber(g, 16), tonumber(b, 16)}
  end
  if type(c) ~= "table" or #c < 3 then fail(fname, "colour must be {r, g, b} or \"#rrggbb\", got %s", tostring(c)) end
  local all_int = true
  for q = 1, 3 do
    if type(c[q]) ~= "number" then fail(fname, "colour component %d is not a number", q) end
    if math.type(c[q]) ~= "integer" then all_int = false end
  end
  local out = {}
  for q = 1, 3 do
    local x = all_int and c[q] or math.floor(c[q] * 255 + 0.5)
    if x < 0 or x > 255 then fail(fname, "colour component %d out of range (integers 0..255 or floats 0..1)", q) end
    out[q] = math.tointeger(x) or math.floor(x)
  end
  return out
end

-- ------------------------------------------------------------------ files
local function write_atomic(fname, path, chunks)
  if type(path) ~= "string" then fail(fname, "path must be a string, got %s", type(path)) end
  local tmp = path .. ".tmp" .. tostring(os.time()) .. tostring(math.random(1e6))
  local f, err = io.open(tmp, "wb")
  if not f then error(fname .. ": cannot write " .. path .. ": " .. tostring(err), 3) end
  for _, c in ipairs(chunks) do
    local ok, werr = f:write(c)
    if not ok then
      f:close(); os.remove(tmp)
      error(fname .. ": writing " .. path .. " failed: " .. tostring(werr), 3)
    end
  end
  local ok, cerr = f:close()
  if not ok then os.remove(tmp); error(fname .. ": writing " .. path .. " failed: " .. tostring(cerr), 3) end
  local rok, rerr = os.rename(tmp, path)
  if not rok then os.remove(tmp); error(fname .. ": cannot rename into " .. path .. ": " .. tostring(rerr), 3) end
end

--- mesh.write_ply(path, m, {color = {r, g, b}, space = "RAS"|"LPS"}): binary little-endian PLY with
--- float x y z, float nx ny nz, uchar red green blue per vertex and int vertex_indices per face.
--- Coordinates are world mm in RAS+ (default) or LPS (x and y negated, what 3D Slicer assumes for model
--- files without a coordinate-system tag); the header says which ("comment SPACE=RAS").
function M.write_ply(path, m, opts)
  local fname = "mesh.write_ply"
  check_mesh(fname, m)
  opts = opts or {}
  local space = (opts.space or "RAS"):upper()
  if space ~= "RAS" and space ~= "LPS" then fail(fname, "space must be \"RAS\" or \"LPS\", got %q", tostring(opts.space)) end
  local color = M.color(opts.color or {200, 200, 200}, 1, fname)
  local normals = m.normals or N.normals(m.vertices, m.faces)
  local header = table.concat({
    "ply",
    "format binary_little_endian 1.0",
    "comment made by medlua (marching cubes)",
    "comment SPACE=" .. space .. " units=mm",
    "element vertex " .. nverts(m),
    "property float x", "property float y", "property float z",
    "property float nx", "property float ny", "property float nz",
    "property uchar red", "property uchar green", "property uchar blue",
    "element face " .. nfaces(m),
    "property list uchar int vertex_indices",
    "end_header", ""}, "\n")
  write_atomic(fname, path, {header, N.ply_vertices(m.vertices, normals, color, space == "LPS"), N.ply_faces(m.faces)})
end

local ply_types = {
  char = "i1", int8 = "i1", uchar = "I1", uint8 = "I1", short = "i2", int16 = "i2", ushort = "I2", uint16 = "I2",
  int = "i4", int32 = "i4", uint = "I4", uint32 = "I4", float = "f", float32 = "f", double = "d", float64 = "d",
}

--- mesh.read_ply_header(path) -> {format =, comments = {...}, elements = {{name =, count =, properties =
--- {{name =, type =} | {name =, list = true, count_type =, type =}}}}, header_bytes =}
function M.read_ply_header(path)
  local fname = "mesh.read_ply_header"
  local f, err = io.open(path, "rb")
  if not f then error(fname .. ": " .. tostring(err), 2) end
  local head = f:read(65536) or ""
  f:close()
  local stop = head:find("end_header\r?\n")
  if head:sub(1, 4) ~= "ply\n" and head:sub(1, 5) ~= "ply\r\n" or not stop then
    error(fname .. ": " .. path .. ": not a PLY file (no 'ply' magic or no end_header)", 2)
  end
  local hdr = {comments = {}, elements = {}}
  local _, hend = head:find("end_header\r?\n")
  hdr.header_bytes = hend
  for line in head:sub(1, stop - 1):gmatch("[^\r\n]+") do
    local w = {}
    for x in line:gmatch("%S+") do w[#w + 1] = x end
    if w[1] == "format" then hdr.format, hdr.version = w[2], w[3]
    elseif w[1] == "comment" then hdr.comments[#hdr.comments + 1] = line:match("^comment%s+(.*)$") or ""
    elseif w[1] == "element" then
      hdr.elements[#hdr.elements + 1] = {name = w[2], count = math.tointeger(tonumber(w[3])), properties = {}}
    elseif w[1] == "property" then
      local el = hdr.elements[#hdr.elements]
      if not el then error(fname .. ": " .. path .. ": property before any element", 2) end
      if w[2] == "list" then
        el.properties[#el.properties + 1] = {name = w[5], list = true, count_type = w[3], type = w[4]}
      else
        el.properties[#el.properties + 1] = {name = w[3], type = w[2]}
      end
    end
  end
  return hdr
end

--- mesh.read_ply(path) -> Mesh (+ colors uint8 [V, 3] when the file has them), header. Reads binary
--- little-endian PLY files with triangle faces (what write_ply writes, and most tools).
function M.read_ply(path)
  local fname = "mesh.read_ply"
  local hdr = M.read_ply_header(path)
  if hdr.format ~= "binary_little_endian" then
    error(fname .. ": " .. path .. ": only binary_little_endian PLY is read, got " .. tostring(hdr.format), 2)
  end
  local f = assert(io.open(path, "rb"))
  local data = f:read("a")
  f:close()
  local pos = hdr.header_bytes + 1
  local verts, norms, cols, faces = {}, {}, {}, {}
  for _, el in ipairs(hdr.elements) do
    local fmt, names, simple = "<", {}, true
    for _, p in ipairs(el.properties) do
      if p.list then simple = false break end
      local t = ply_types[p.type]
      if not t then error(fname .. ": " .. path .. ": unknown property type " .. tostring(p.type), 2) end
      fmt = fmt .. t
      names[#names + 1] = p.name
    end
    if simple then
      local idx = {}
      for i, nme in ipairs(names) do idx[nme] = i end
      for _ = 1, el.count do
        local vals = {string.unpack(fmt, data, pos)}
        pos = vals[#vals]
        if el.name == "vertex" then
          verts[#verts + 1] = {vals[idx.x], vals[idx.y], vals[idx.z]}
          if idx.nx then norms[#norms + 1] = {vals[idx.nx], vals[idx.ny], vals[idx.nz]} end
          if idx.red then cols[#cols + 1] = {vals[idx.red], vals[idx.green], vals[idx.blue]} end
        end
      end
    else
      if #el.properties ~= 1 then error(fname .. ": " .. path .. ": face elements with extra properties are not read", 2) end
      local p = el.properties[1]
      local ct, it = ply_types[p.count_type], ply_types[p.type]
      for _ = 1, el.count do
        local n
        n, pos = string.unpack("<" .. ct, data, pos)
        if n ~= 3 then error(fname .. ": " .. path .. ": only triangles are read, got a face with " .. n .. " vertices", 2) end
        local a, b, c
        a, b, c, pos = string.unpack("<" .. it .. it .. it, data, pos)
        faces[#faces + 1] = {a, b, c}
      end
    end
  end
  local function mat(t, dtype)
    if #t == 0 then return medlua.zeros({0, 3}, {dtype = dtype}) end
    return medlua.tensor(t, {dtype = dtype})
  end
  local m = M.new(mat(verts, "float32"), mat(faces, "int32"), #norms > 0 and mat(norms, "float32") or nil)
  if #cols > 0 then m.colors = mat(cols, "uint8") end
  return m, hdr
end

-- ------------------------------------------------------------------ glTF
-- items: a Mesh, or a list of {name =, color =, alpha =, mesh =}
local function normalize_items(fname, items)
  if type(items) ~= "table" then fail(fname, "expected a mesh or a list of {name =, color =, mesh =}, got %s", type(items)) end
  if medlua.is_tensor(items.vertices) then items = {{name = "mesh", mesh = items}} end
  local out = {}
  for i, it in ipairs(items) do
    if type(it) ~= "table" then fail(fname, "item %d must be a table {name =, color =, mesh =}", i) end
    local m = it.mesh or (medlua.is_tensor(it.vertices) and it)
    check_mesh(fname, m, "item " .. i .. ".mesh")
    local alpha = it.alpha or 1
    if type(alpha) ~= "number" or alpha < 0 or alpha > 1 then fail(fname, "item %d: alpha must be in [0, 1]", i) end
    out[#out + 1] = {name = tostring(it.name or ("structure_" .. i)), color = M.color(it.color, i, fname),
      alpha = alpha, mesh = m}
  end
  return out
end

-- RAS millimetres -> glTF (right-handed, +Y up, +Z front, metres): x_g = -R, y_g = S, z_g = A
local RAS_TO_GLTF = {-0.001, 0, 0, 0, 0, 0, 0.001, 0, 0, 0.001, 0, 0, 0, 0, 0, 1} -- column-major

--- mesh.write_gltf(path, items, {name = "scene"}): glTF 2.0, one node + mesh + material per
--- structure (its name and colour; alpha < 1 blends). path ending in .glb: binary glTF; otherwise a
--- .gltf JSON with the buffer embedded as a base64 data URI. Vertex positions stay in RAS+ mm; a root
--- node's matrix converts them to glTF's metres, +Y up (superior), +Z front (anterior), so viewers show
--- the patient upright and facing them. Structures with no triangles are skipped.
function M.write_gltf(path, items, opts)
  local fname = "mesh.write_gltf"
  if type(path) ~= "string" then fail(fname, "path must be a string, got %s", type(path)) end
  items = normalize_items(fname, items)
  opts = opts or {}
  local glb = path:lower():match("%.glb$") ~= nil
  local chunks, offset = {}, 0
  local views, accessors, meshes, materials, nodes = {}, {}, {}, {}, {}
  local function add_view(bytes, target)
    chunks[#chunks + 1] = bytes
    views[#views + 1] = {buffer = 0, byteOffset = offset, byteLength = #bytes, target = target}
    offset = offset + #bytes -- every piece is a multiple of 4 bytes
    return #views - 1
  end
  for _, it in ipairs(items) do
    local m = it.mesh
    local nv, nf = nverts(m), nfaces(m)
    if nf > 0 then
      local normals = m.normals or N.normals(m.vertices, m.faces)
      local lo, hi = M.bounds(m)
      local vp = add_view(N.bytes(m.vertices, "f32"), 34962)
      local vn = add_view(N.bytes(normals, "f32"), 34962)
      local vi = add_view(N.bytes(m.faces, "u32"), 34963)
      accessors[#accessors + 1] = {bufferView = vp, componentType = 5126, count = nv, type = "VEC3", min = lo, max = hi}
      local ap = #accessors - 1
      accessors[#accessors + 1] = {bufferView = vn, componentType = 5126, count = nv, type = "VEC3"}
      local an = #accessors - 1
      accessors[#accessors + 1] = {bufferView = vi, componentType = 5125, count = 3 * nf, type = "SCALAR"}
      local ai = #accessors - 1
      local c = it.color
      materials[#materials + 1] = {
        name = it.name,
        pbrMetallicRoughness = {baseColorFactor = {c[1] / 255, c[2] / 255, c[3] / 255, it.alpha + 0.0},
          metallicFactor = 0.0, roughnessFactor = 0.6},
        alphaMode = it.alpha < 1 and "BLEND" or "OPAQUE",
        doubleSided = false,
      }
      meshes[#meshes + 1] = {name = it.name, primitives = {{attributes = {POSITION = ap, NORMAL = an},
        indices = ai, material = #materials - 1, mode = 4}}}
      nodes[#nodes + 1] = {name = it.name, mesh = #meshes - 1}
    end
  end
  local children = {}
  for i = 1, #nodes do children[i] = i - 1 end
  -- glTF arrays, when present, must not be empty
  nodes[#nodes + 1] = {name = opts.name or "medlua", matrix = RAS_TO_GLTF, children = #children > 0 and children or nil}
  local function arr(t) return #t > 0 and t or nil end
  local bin = table.concat(chunks)
  local doc = {
    asset = {version = "2.0", generator = "medlua marching cubes",
      extras = {units = "vertex positions in millimetres, RAS+ world coordinates; the root node's matrix " ..
        "converts to metres, +Y = superior, +Z = anterior, -X = patient right"}},
    scene = 0,
    scenes = {{name = opts.name or "medlua", nodes = {#nodes - 1}}},
    nodes = nodes,
    meshes = arr(meshes),
    materials = arr(materials),
    accessors = arr(accessors),
    bufferViews = arr(views),
    buffers = #bin > 0 and {{byteLength = #bin}} or nil,
  }
  if not glb then
    if doc.buffers then doc.buffers[1].uri = "data:application/octet-stream;base64," .. N.base64(bin) end
    write_atomic(fname, path, {json.encode(doc)})
    return
  end
  local js = json.encode(doc)
  js = js .. string.rep(" ", (4 - #js % 4) % 4)
  local parts = {string.pack("<I4I4", #js, 0x4E4F534A), js}
  if #bin > 0 then
    parts[#parts + 1] = string.pack("<I4I4", #bin, 0x004E4942)
    parts[#parts + 1] = bin
  end
  local total = 12
  for _, p in ipairs(parts) do total = total + #p end
  table.insert(parts, 1, string.pack("<I4I4I4", 0x46546C67, 2, total))
  write_atomic(fname, path, parts)
end

-- ------------------------------------------------------------------ HTML viewer
local html_template -- below

local function html_escape(s)
  return (tostring(s):gsub("[&<>\"']", {["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;",
    ["'"] = "&#39;"}))
end

--- mesh.write_html(path, {title =, groups = {{name =, meshes = {{name =, color =, mesh =}, ...},
---                 alpha =}, ...}, max_faces = 200000, background = "#1b1d22"}):
--- ONE self-contained page (no server, no network: opens from file://) with a small WebGL viewer:
--- perspective camera, drag = rotate, wheel = zoom, right-drag or shift-drag = pan, double-click = reset;
--- Lambert + ambient shading from the vertex normals, a colour per structure (default: one palette
--- colour per structure name, the same in every group), a legend with a checkbox per structure and per
--- group, the second and later groups (e.g. ground truth) drawn semi-transparent
--- over the first, side by side, or opaque (a selector), and an R/A/S orientation triad. The first view
--- is anterior (patient's right on the viewer's left), superior up. Meshes are embedded as base64
--- Float32 positions, Int8 normals and Uint16/Uint32 indices; a structure over max_faces triangles is
--- decimated for the page (vertex clustering; its legend entry says so).
function M.write_html(path, spec)
  local fname = "mesh.write_html"
  if type(path) ~= "string" then fail(fname, "path must be a string, got %s", type(path)) end
  if type(spec) ~= "table" or type(spec.groups) ~= "table" then
    fail(fname, "expected {title =, groups = {{name =, meshes = {{name =, color =, mesh =}, ...}}, ...}}")
  end
  local max_faces = spec.max_faces or 200000
  if math.type(max_faces) ~= "integer" or max_faces < 1 then fail(fname, "max_faces must be a positive integer") end
  local groups, ci, by_name = {}, 0, {}
  for gi, g in ipairs(spec.groups) do
    if type(g) ~= "table" or type(g.meshes) ~= "table" then
      fail(fname, "group %d must be {name =, meshes = {{name =, color =, mesh =}, ...}}", gi)
    end
    local items = {}
    for i, it in ipairs(g.meshes) do
      if type(it) ~= "table" then fail(fname, "group %d, mesh %d must be a table {name =, color =, mesh =}", gi, i) end
      local m = check_mesh(fname, it.mesh, string.format("group %d, mesh %d", gi, i))
      -- without a colour, a structure name keeps one palette colour in every group
      local key = tostring(it.name or i)
      if it.color == nil and not by_name[key] then ci = ci + 1; by_name[key] = M.color(nil, ci) end
      local col = it.color ~= nil and M.color(it.color, 1, fname) or by_name[key]
      local nf0 = nfaces(m)
      if nf0 > max_faces then m = M.decimate(m, max_faces) end
      local nv, nf = nverts(m), nfaces(m)
      local normals = m.normals or N.normals(m.vertices, m.faces)
      items[#items + 1] = {
        name = tostring(it.name or ("structure " .. i)), color = col, nv = nv, nf = nf,
        faces_full = nf0,
        pos = nv > 0 and N.base64(N.bytes(m.vertices, "f32")) or "",
        nrm = nv > 0 and N.base64(N.bytes(normals, "i8n")) or "",
        idx = nf > 0 and N.base64(N.bytes(m.faces, nv < 65536 and "u16" or "u32")) or "",
        idx_type = nv < 65536 and "u16" or "u32",
      }
    end
    groups[#groups + 1] = {name = tostring(g.name or ("group " .. gi)), items = json.array(items),
      alpha = g.alpha}
  end
  local data = json.encode({title = spec.title or "medlua meshes", groups = json.array(groups),
    background = spec.background or "#1b1d22"})
  data = data:gsub("</", "<\\/") -- never close the script element early
  local page = html_template
    :gsub("{{TITLE}}", function() return html_escape(spec.title or "medlua meshes") end)
    :gsub("{{DATA}}", function() return data end)
  write_atomic(fname, path, {page})
end

html_template = [=[<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{TITLE}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  html, body { margin: 0; height: 100%; overflow: hidden; background: #1b1d22; font: 13px/1.35 system-ui, sans-serif; color: #e8e8e8; }
  #view { position: absolute; inset: 0; width: 100%; height: 100%; display: block; cursor: grab; }
  #triad { position: absolute; left: 10px; bottom: 10px; width: 110px; height: 110px; pointer-events: none; }
  #panel { position: absolute; top: 10px; left: 10px; max-height: calc(100% - 150px); overflow: auto; background: rgba(20,22,27,0.85);
           border: 1px solid #3a3d45; border-radius: 6px; padding: 8px 10px; min-width: 190px; }
  #panel h1 { font-size: 14px; margin: 0 0 6px 0; }
  .group { margin-top: 6px; }
  .group > label { font-weight: 600; }
  .item { margin-left: 16px; white-space: nowrap; }
  .sw { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin: 0 5px -1px 2px; border: 1px solid #0006; }
  .note { color: #9aa0aa; font-size: 11px; }
  #help { position: absolute; right: 10px; bottom: 8px; color: #9aa0aa; font-size: 11px; text-align: right; }
  #err { position: absolute; top: 40%; width: 100%; text-align: center; color: #ff8080; font-size: 16px; }
  select, button { font: inherit; background: #2a2d35; color: #e8e8e8; border: 1px solid #474b55; border-radius: 3px; }
</style>
</head>
<body>
<canvas id="view"></canvas>
<canvas id="triad" width="110" height="110"></canvas>
<div id="panel"><h1 id="title"></h1><div id="groups"></div>
  <div style="margin-top:8px">other groups: <select id="mode">
    <option value="overlay">transparent overlay</option><option value="side">side by side</option>
    <option value="opaque">opaque overlay</option></select></div>
  <div style="margin-top:6px"><button id="reset">reset view</button> <span class="note">units: mm (RAS+)</span></div>
</div>
<div id="help">drag: rotate &middot; wheel: zoom &middot; right-drag / shift-drag: pan &middot; double-click: reset</div>
<script type="application/json" id="medlua-data">{{DATA}}</script>
<script>
(function () {
"use strict";
var D = JSON.parse(document.getElementById("medlua-data").textContent);
document.title = D.title;
document.getElementById("title").textContent = D.title;
document.body.style.background = D.background;
var canvas = document.getElementById("view");
var attrs = {antialias: true, preserveDrawingBuffer: true, alpha: false, premultipliedAlpha: false};
var gl = /webgl1/.test(location.hash) ? null : canvas.getContext("webgl2", attrs), gl2 = !!gl;
if (!gl) gl = canvas.getContext("webgl", attrs) || canvas.getContext("experimental-webgl", attrs);
function fatal(msg) { var e = document.createElement("div"); e.id = "err"; e.textContent = msg; document.body.appendChild(e); }
if (!gl) { fatal("WebGL is not available in this browser."); return; }
var u32ok = gl2 || !!gl.getExtension("OES_element_index_uint");

function b64(s) {
  var bin = atob(s), n = bin.length, u = new Uint8Array(n);
  for (var i = 0; i < n; i++) u[i] = bin.charCodeAt(i);
  return u.buffer;
}

var VS = "attribute vec3 aPos; attribute vec3 aNrm; uniform mat4 uProj; uniform mat4 uView; uniform vec3 uOff;" +
  "varying vec3 vN; varying vec3 vP;" +
  "void main() { vec4 p = uView * vec4(aPos + uOff, 1.0); vP = p.xyz; vN = (uView * vec4(aNrm, 0.0)).xyz; gl_Position = uProj * p; }";
var FS = "precision mediump float; uniform vec3 uColor; uniform float uAlpha; varying vec3 vN; varying vec3 vP;" +
  "void main() { vec3 n = normalize(vN); if (!gl_FrontFacing) n = -n;" +
  " vec3 l = normalize(vec3(0.35, 0.45, 1.0)); vec3 v = normalize(-vP);" +
  " float d = max(dot(n, l), 0.0); float h = pow(max(dot(n, normalize(l + v)), 0.0), 40.0);" +
  " vec3 c = uColor * (0.30 + 0.70 * d) + vec3(0.12) * h; gl_FragColor = vec4(c, uAlpha); }";
function shader(type, src) {
  var s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
var prog = gl.createProgram();
gl.attachShader(prog, shader(gl.VERTEX_SHADER, VS));
gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, FS));
gl.bindAttribLocation(prog, 0, "aPos"); gl.bindAttribLocation(prog, 1, "aNrm");
gl.linkProgram(prog);
if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) { fatal("WebGL: " + gl.getProgramInfoLog(prog)); return; }
gl.useProgram(prog);
var U = {};
["uProj", "uView", "uOff", "uColor", "uAlpha"].forEach(function (k) { U[k] = gl.getUniformLocation(prog, k); });

/* ---- geometry */
var lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
var groups = D.groups.map(function (g, gi) {
  var glo = [Infinity, Infinity, Infinity], ghi = [-Infinity, -Infinity, -Infinity];
  var items = g.items.map(function (it) {
    var o = {name: it.name, color: it.color, nv: it.nv, nf: it.nf, full: it.faces_full, visible: true};
    if (it.nf === 0) return o;
    var pos = new Float32Array(b64(it.pos));
    for (var i = 0; i < pos.length; i += 3)
      for (var k = 0; k < 3; k++) { var x = pos[i + k]; if (x < glo[k]) glo[k] = x; if (x > ghi[k]) ghi[k] = x; }
    o.vb = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, o.vb); gl.bufferData(gl.ARRAY_BUFFER, pos, gl.STATIC_DRAW);
    o.nb = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, o.nb);
    gl.bufferData(gl.ARRAY_BUFFER, new Int8Array(b64(it.nrm)), gl.STATIC_DRAW);
    var big = it.idx_type === "u32";
    if (big && !u32ok) { o.nf = 0; o.skipped = "needs 32-bit indices"; return o; }
    o.ib = gl.createBuffer(); gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, o.ib);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, big ? new Uint32Array(b64(it.idx)) : new Uint16Array(b64(it.idx)), gl.STATIC_DRAW);
    o.itype = big ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT;
    return o;
  });
  for (var k = 0; k < 3; k++) { lo[k] = Math.min(lo[k], glo[k]); hi[k] = Math.max(hi[k], ghi[k]); }
  return {name: g.name, items: items, visible: true, alpha: g.alpha, lo: glo, hi: ghi};
});
if (!(lo[0] <= hi[0])) { lo = [-50, -50, -50]; hi = [50, 50, 50]; }
var mode = "overlay";
function groupOffset(gi) {
  if (mode !== "side" || gi === 0) return [0, 0, 0];
  var w = (hi[0] - lo[0]) * 1.15 + 10;
  return [-w * gi, 0, 0]; /* toward the patient's left = the viewer's right in the anterior view */
}
function sceneBounds() {
  var l = lo.slice(), h = hi.slice();
  if (mode === "side") l[0] -= ((hi[0] - lo[0]) * 1.15 + 10) * (groups.length - 1);
  return [l, h];
}

/* ---- camera: orbit about a target, +S up; yaw 0 = anterior view */
var cam = {};
function resetView() {
  var b = sceneBounds(), l = b[0], h = b[1];
  cam.target = [(l[0] + h[0]) / 2, (l[1] + h[1]) / 2, (l[2] + h[2]) / 2];
  var r = 0.5 * Math.sqrt(Math.pow(h[0] - l[0], 2) + Math.pow(h[1] - l[1], 2) + Math.pow(h[2] - l[2], 2));
  cam.radius = Math.max(r, 1);
  cam.dist = cam.radius / Math.sin(17.5 * Math.PI / 180) * 1.05;
  cam.yaw = 0; cam.pitch = 0.15;
}
function sub(a, b) { return [a[0] - b[0], a[1] - b[1], a[2] - b[2]]; }
function cross(a, b) { return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]; }
function norm(a) { var l = Math.hypot(a[0], a[1], a[2]) || 1; return [a[0] / l, a[1] / l, a[2] / l]; }
function dot(a, b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
function basis() {
  var cp = Math.cos(cam.pitch), d = [Math.sin(cam.yaw) * cp, Math.cos(cam.yaw) * cp, Math.sin(cam.pitch)];
  var f = [-d[0], -d[1], -d[2]];               /* forward (eye -> target) */
  var r = norm(cross(f, [0, 0, 1]));           /* screen right */
  var u = cross(r, f);                         /* screen up */
  return {d: d, f: f, r: r, u: u};
}
function viewMatrix(B) {
  var eye = [cam.target[0] + B.d[0] * cam.dist, cam.target[1] + B.d[1] * cam.dist, cam.target[2] + B.d[2] * cam.dist];
  var r = B.r, u = B.u, f = B.f;
  return new Float32Array([r[0], u[0], -f[0], 0, r[1], u[1], -f[1], 0, r[2], u[2], -f[2], 0,
    -dot(r, eye), -dot(u, eye), dot(f, eye), 1]);
}
function projMatrix(aspect) {
  var fov = 35 * Math.PI / 180, t = 1 / Math.tan(fov / 2);
  var n = Math.max(cam.dist - cam.radius * 3, cam.dist * 0.01), fa = cam.dist + cam.radius * 3;
  return new Float32Array([t / aspect, 0, 0, 0, 0, t, 0, 0, 0, 0, (fa + n) / (n - fa), -1, 0, 0, 2 * fa * n / (n - fa), 0]);
}

/* ---- drawing */
var pending = false;
function redraw() { if (!pending) { pending = true; requestAnimationFrame(function () { pending = false; draw(); }); } }
function drawItem(o, off, alpha) {
  if (!o.visible || !o.ib) return;
  gl.uniform3f(U.uColor, o.color[0] / 255, o.color[1] / 255, o.color[2] / 255);
  gl.uniform1f(U.uAlpha, alpha);
  gl.uniform3f(U.uOff, off[0], off[1], off[2]);
  gl.bindBuffer(gl.ARRAY_BUFFER, o.vb); gl.vertexAttribPointer(0, 3, gl.FLOAT, false, 0, 0);
  gl.bindBuffer(gl.ARRAY_BUFFER, o.nb); gl.vertexAttribPointer(1, 3, gl.BYTE, true, 0, 0);
  gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, o.ib);
  gl.drawElements(gl.TRIANGLES, o.nf * 3, o.itype, 0);
}
function draw() {
  var dpr = window.devicePixelRatio || 1, w = Math.max(1, Math.round(canvas.clientWidth * dpr)),
    h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  gl.viewport(0, 0, w, h);
  var bg = D.background.match(/^#(..)(..)(..)$/);
  if (bg) gl.clearColor(parseInt(bg[1], 16) / 255, parseInt(bg[2], 16) / 255, parseInt(bg[3], 16) / 255, 1);
  gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
  var B = basis();
  gl.uniformMatrix4fv(U.uProj, false, projMatrix(w / h));
  gl.uniformMatrix4fv(U.uView, false, viewMatrix(B));
  gl.enableVertexAttribArray(0); gl.enableVertexAttribArray(1);
  gl.enable(gl.DEPTH_TEST); gl.depthMask(true); gl.disable(gl.BLEND); gl.disable(gl.CULL_FACE);
  var trans = [];
  groups.forEach(function (g, gi) {
    if (!g.visible) return;
    var a = gi === 0 || mode !== "overlay" ? 1 : (g.alpha != null ? g.alpha : 0.35);
    g.items.forEach(function (o) { if (a < 1) trans.push([o, gi, a]); else drawItem(o, groupOffset(gi), 1); });
  });
  if (trans.length) {
    /* LEQUAL: where both groups have the same surface (identical triangles from the same voxels) the
       overlay tints it instead of flickering */
    gl.enable(gl.BLEND); gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA); gl.depthMask(false);
    gl.depthFunc(gl.LEQUAL); gl.enable(gl.CULL_FACE); gl.cullFace(gl.BACK);
    trans.forEach(function (t) { drawItem(t[0], groupOffset(t[1]), t[2]); });
    gl.depthMask(true); gl.disable(gl.CULL_FACE); gl.depthFunc(gl.LESS);
  }
  drawTriad(B);
}

/* ---- orientation triad (R, A, S; opposite ends L, P, I) */
var tri = document.getElementById("triad"), tc = tri.getContext("2d");
function drawTriad(B) {
  tc.clearRect(0, 0, 110, 110);
  var axes = [[[1, 0, 0], "R", "L", "#ff5c5c"], [[0, 1, 0], "A", "P", "#5cdc5c"], [[0, 0, 1], "S", "I", "#6ea8ff"]];
  var c = 55, L = 36;
  axes.sort(function (a, b) { return dot(a[0], B.d) - dot(b[0], B.d); }); /* far axes first */
  tc.font = "bold 13px system-ui, sans-serif"; tc.textAlign = "center"; tc.textBaseline = "middle";
  axes.forEach(function (ax) {
    var x = dot(ax[0], B.r), y = dot(ax[0], B.u);
    tc.strokeStyle = ax[3]; tc.lineWidth = 3; tc.globalAlpha = 1;
    tc.beginPath(); tc.moveTo(c, c); tc.lineTo(c + x * L, c - y * L); tc.stroke();
    tc.fillStyle = ax[3]; tc.fillText(ax[1], c + x * (L + 10), c - y * (L + 10));
    tc.globalAlpha = 0.45; tc.fillText(ax[2], c - x * (L + 6), c + y * (L + 6)); tc.globalAlpha = 1;
  });
}

/* ---- legend and toggles */
var gdiv = document.getElementById("groups");
function rgb(c) { return "rgb(" + c[0] + "," + c[1] + "," + c[2] + ")"; }
groups.forEach(function (g, gi) {
  var box = document.createElement("div"); box.className = "group";
  var lab = document.createElement("label"), cb = document.createElement("input");
  cb.type = "checkbox"; cb.checked = true; cb.setAttribute("data-group", g.name);
  lab.appendChild(cb); lab.appendChild(document.createTextNode(" " + g.name)); box.appendChild(lab);
  var subs = [];
  g.items.forEach(function (o) {
    var d = document.createElement("div"); d.className = "item";
    var l = document.createElement("label"), c = document.createElement("input");
    c.type = "checkbox"; c.checked = true; c.setAttribute("data-structure", o.name);
    var sw = document.createElement("span"); sw.className = "sw"; sw.style.background = rgb(o.color);
    l.appendChild(c); l.appendChild(sw); l.appendChild(document.createTextNode(o.name));
    var note = o.skipped ? " (" + o.skipped + ")" : o.nf === 0 ? " (empty)" : o.full > o.nf ? " (" + o.nf + " of " + o.full + " triangles)" : "";
    if (note) { var s = document.createElement("span"); s.className = "note"; s.textContent = note; l.appendChild(s); }
    d.appendChild(l); box.appendChild(d);
    c.addEventListener("change", function () { o.visible = c.checked; redraw(); });
    subs.push(c);
  });
  cb.addEventListener("change", function () { g.visible = cb.checked; subs.forEach(function (s) { s.disabled = !cb.checked; }); redraw(); });
  gdiv.appendChild(box);
});
document.getElementById("mode").addEventListener("change", function (e) { mode = e.target.value; resetView(); redraw(); });
document.getElementById("reset").addEventListener("click", function () { resetView(); redraw(); });
if (groups.length < 2) document.getElementById("mode").parentNode.style.display = "none";

/* ---- mouse */
var drag = null;
canvas.addEventListener("contextmenu", function (e) { e.preventDefault(); });
canvas.addEventListener("mousedown", function (e) {
  drag = {x: e.clientX, y: e.clientY, pan: e.button === 2 || e.button === 1 || e.shiftKey};
  canvas.style.cursor = "grabbing"; e.preventDefault();
});
window.addEventListener("mouseup", function () { drag = null; canvas.style.cursor = "grab"; });
window.addEventListener("mousemove", function (e) {
  if (!drag) return;
  var dx = e.clientX - drag.x, dy = e.clientY - drag.y; drag.x = e.clientX; drag.y = e.clientY;
  if (drag.pan) {
    var B = basis(), s = cam.dist * 2 * Math.tan(17.5 * Math.PI / 180) / canvas.clientHeight;
    for (var k = 0; k < 3; k++) cam.target[k] += (-dx * B.r[k] + dy * B.u[k]) * s;
  } else {
    cam.yaw -= dx * 0.008;
    cam.pitch = Math.max(-1.55, Math.min(1.55, cam.pitch + dy * 0.008));
  }
  redraw();
});
canvas.addEventListener("wheel", function (e) {
  e.preventDefault();
  cam.dist *= Math.exp((e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY) * 0.0012);
  cam.dist = Math.max(cam.radius * 0.05, Math.min(cam.radius * 50, cam.dist));
  redraw();
}, {passive: false});
canvas.addEventListener("dblclick", function () { resetView(); redraw(); });
window.addEventListener("resize", redraw);

/* the page's address may choose the first view: file:///.../page.html#mode=side&view=left
   (mode: overlay, side, opaque; view: anterior, posterior, left, right, superior, inferior;
   webgl1: do not use WebGL 2) */
var views = {anterior: [0, 0.15], posterior: [Math.PI, 0.15], left: [-Math.PI / 2, 0.15], right: [Math.PI / 2, 0.15],
  superior: [0, 1.55], inferior: [0, -1.55]};
var hash = {};
location.hash.replace(/^#/, "").split("&").forEach(function (kv) { var p = kv.split("="); if (p[0]) hash[p[0]] = p[1]; });
if (hash.mode === "side" || hash.mode === "overlay" || hash.mode === "opaque") { mode = hash.mode; document.getElementById("mode").value = mode; }
resetView();
if (views[hash.view]) { cam.yaw = views[hash.view][0]; cam.pitch = views[hash.view][1]; }
draw();
window.medluaViewer = {groups: groups, camera: cam, draw: draw, setMode: function (m) { mode = m; resetView(); draw(); }};
})();
</script>
</body>
</html>
]=]

return M
