-- DICOM from Lua: medlua._volume.read_dicom / list_dicom_series / write_dicom_series /
-- edit_dicom_tags / read_dicom_tags on the small series in tests/data/dicom (golden values from
-- tests/ref/dicom_ref.json, made by tests/ref/gen_dicom_ref.py with pydicom and dcm2niix), options,
-- round trips, tag edits and bad input (every error names the file and the reason).
-- The shared data set (../shared/data) adds one LIDC case when present. Run from the repository root.
local medlua = require "medlua"
local T = require "medlua.test"
local V = medlua._volume

local DATA = "tests/data/dicom"
local CT = DATA .. "/ct_j2k"
local CT1 = CT .. "/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573"
local EPI = DATA .. "/epi4d"
local EPI1 = EPI .. "/axial_epi_fmri_interleaved_i_to_s-00001.dcm"

local TMP = os.tmpname()
os.remove(TMP)
assert(os.execute("mkdir -p '" .. TMP .. "'"))
local function tmp(name) return TMP .. "/" .. name end
local exists = require("medlua.path").exists
local function listdir(d)
  local out, p = {}, io.popen("ls -A '" .. d .. "' 2>/dev/null")
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end
local function read_bytes(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end
local function write_bytes(p, s)
  local f = assert(io.open(p, "wb"))
  f:write(s)
  f:close()
end
local function sum(vol) return vol.data:double():sum():item() end
local function affine_near(a, b, tol)
  for r = 0, 3 do
    for c = 0, 3 do
      local x = a[r + 1][c + 1]
      local y = b[r + 1][c + 1]
      T.near(x, y, tol or 1e-4, string.format("affine[%d][%d]", r, c))
    end
  end
end
local function affine_table(vol)
  local A, t = vol.affine, {}
  for r = 0, 3 do
    t[r + 1] = {}
    for c = 0, 3 do t[r + 1][c + 1] = A:get(r, c) end
  end
  return t
end

T.case("read a JPEG 2000 CT series: shape, geometry, HU values, metadata", function()
  local v = V.read_dicom(CT)
  T.eq(v.shape, {512, 512, 3})
  T.eq(v.dtype, "float32")
  T.eq(v.axcodes, "LPS")
  T.eq(v.modality, "CT")
  T.eq(v.window_center, 40)
  T.eq(v.window_width, 300)
  T.eq(v.rescale_intercept, -1024)
  T.near(v.spacing[1], 0.9765625, 1e-9)
  T.near(v.spacing[3], 2, 1e-9)
  -- pydicom reference (tests/ref/dicom_ref.json, case data_ct_j2k)
  local A = affine_table(v)
  local want = {{-0.9765625, 0, 0, 249.51171875}, {0, -0.9765625, 0, 437.51171875}, {0, 0, 2, -770.5}, {0, 0, 0, 1}}
  for r = 1, 4 do for c = 1, 4 do T.near(A[r][c], want[r][c], 1e-4) end end
  T.eq(sum(v), -489167713)
  T.eq(v.data:min():item(), -1024)
  T.eq(v.data:max():item(), 1443)
  T.eq(v.data:get(11, 7, 0), -1024)
end)

T.case("dtype = native: stored integers as int32, no rescale", function()
  local v = V.read_dicom(CT, {dtype = "native"})
  T.eq(v.dtype, "int32")
  T.eq(sum(v), 316138655)
  T.eq(v.rescale_intercept, -1024)
end)

T.case("a 4-D GE EPI series (repeated positions) and enhanced multi-frame files", function()
  local v = V.read_dicom(EPI)
  T.eq(v.shape, {64, 64, 15, 2})
  T.eq(sum(v), 72530627)
  T.eq(v.data:get(11, 7, 3, 0), 49)
  T.eq(v.modality, "MR")
  local a = V.read_dicom(DATA .. "/single/emri_small_jpeg_2k_lossless.dcm")
  local b = V.read_dicom(DATA .. "/single/emri_small_RLE.dcm")
  T.eq(a.shape, {64, 64, 10})
  T.eq(sum(a), 4493276)
  T.ok(a.data:equal(b.data), "JPEG 2000 and RLE decode to the same pixels")
end)

T.case("list_dicom_series and choosing a series", function()
  local list = V.list_dicom_series(DATA)
  T.eq(#list, 6)
  local by = {}
  for _, s in ipairs(list) do by[s.first_file:match("[^/]+$")] = s end
  local ct, epi = by["CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573"],
    by["axial_epi_fmri_interleaved_i_to_s-00001.dcm"]
  local emr, mosaic, tiny, seg = by["emri_small_RLE.dcm"], by["mosaic_j2k.dcm"], by["tiny_mosaic.dcm"], by["liver_rle.dcm"]
  T.ok(ct and epi and emr and mosaic and tiny and seg,
    "CT (3 files), EPI (30 files), the two enhanced MR files, two Siemens mosaics, a SEG")
  T.eq(ct.n_files, 3)
  T.eq(ct.rows, 512)
  T.eq(ct.columns, 512)
  T.eq(ct.transfer_syntax, "1.2.840.10008.1.2.4.90")
  T.ok(ct.transfer_syntax_name:find("JPEG 2000"), ct.transfer_syntax_name)
  T.eq(epi.n_files, 30)
  T.eq(epi.n_images, 30)
  T.eq(emr.n_files, 2)
  T.eq(emr.n_images, 20)
  T.ok(epi.first_file:find("epi4d/", 1, true))
  -- a mosaic counts its tiles as images, of the tiles' size
  T.eq({mosaic.n_files, mosaic.n_images, mosaic.rows, mosaic.columns}, {1, 35, 64, 64})
  T.eq({tiny.n_files, tiny.n_images, tiny.rows, tiny.columns}, {1, 3, 32, 32})
  T.eq({seg.modality, seg.n_images}, {"SEG", 3})
  -- the largest series by default (the 35-slice mosaic), another one by UID
  T.eq(V.read_dicom(DATA).shape, {64, 64, 35})
  T.eq(V.read_dicom(DATA, {series_uid = epi.series_uid}).shape, {64, 64, 15, 2})
  local e = V.read_dicom(DATA, {series_uid = emr.series_uid})
  T.eq(e.shape, {64, 64, 20}) -- two files of the same 10 frames, no positions: stacked
  T.raises(function() V.read_dicom(DATA, {series_uid = "9.9.9"}) end, "no series with SeriesInstanceUID 9.9.9")
  T.eq(#V.list_dicom_series(DATA, {recursive = false}), 0)
  T.raises(function() V.read_dicom(DATA, {recursive = false}) end, "no DICOM images found")
end)

T.case("Siemens mosaic: tiles as slices, geometry as dcm2niix (tests/data/dicom/mosaic/ref_dcm2niix.nii.gz)", function()
  local v = V.read_dicom(DATA .. "/mosaic/mosaic_j2k.dcm")
  T.eq(v.shape, {64, 64, 35})
  T.eq(sum(v), 38036663)
  local ref = V.read_nifti(DATA .. "/mosaic/ref_dcm2niix.nii.gz")
  T.eq(ref.shape, {64, 64, 35})
  -- dcm2niix stores the rows bottom-up: flipping its second axis gives our voxel order
  local f = ref:flip(1)
  affine_near(affine_table(v), affine_table(f), 1e-3)
  T.ok(v.data:equal(f.data), "pixels equal dcm2niix's")
end)

T.case("RLE Lossless with 1 bit allocated (DICOM SEG) decodes like the uncompressed bits", function()
  local v = V.read_dicom(DATA .. "/single/liver_rle.dcm")
  T.eq(v.shape, {512, 512, 3})
  T.eq(v.modality, "SEG")
  T.eq(sum(v), 107098) -- tests/ref/dicom_ref.json, case data_liver_rle.dcm
  T.eq(v.data:select(2, 0):double():sum():item(), 36233)
end)

T.case("options are checked", function()
  T.raises(function() V.read_dicom(CT, {on_uneven = "maybe"}) end, "on_uneven' must be \"warn\", \"resample\" or \"error\"")
  T.raises(function() V.read_dicom(CT, {dtype = "float64"}) end, "dtype' must be")
  T.raises(function() V.read_dicom(CT, {colour = true}) end, "unknown option 'colour'")
  T.raises(function() V.read_dicom(CT, {series_uid = 5}) end, "series_uid' must be a string")
  T.raises(function() V.write_dicom_series(V.read_dicom(CT), tmp("x"), {series_number = -1}) end, "series_number")
end)

T.case("write_dicom_series and read it back (also as a method)", function()
  local v = V.read_dicom(CT)
  local dir = tmp("ct_written")
  v:write_dicom_series(dir, {patient_id = "P1", series_description = "from medlua", series_number = 7})
  T.eq(#listdir(dir), 3)
  local w = V.read_dicom(dir)
  T.eq(w.shape, v.shape)
  T.ok(w.data:equal(v.data), "integer HU: exact")
  affine_near(affine_table(w), affine_table(v), 1e-4)
  T.eq(w.patient_id, "P1")
  T.eq(w.description, "from medlua")
  T.eq(w.modality, "CT")
  local tags = V.read_dicom_tags(dir .. "/IM000001.dcm", {"SeriesNumber", "SOPClassUID", "RescaleSlope", "ImageType"})
  T.eq(tags.SeriesNumber, "7")
  T.eq(tags.SOPClassUID, "1.2.840.10008.5.1.4.1.1.2")
  T.eq(tags.RescaleSlope, "1")
  -- an existing directory is not replaced unless overwrite = true
  T.raises(function() v:write_dicom_series(dir) end, "not empty")
  local vol4 = V.read_dicom(EPI)
  vol4:write_dicom_series(dir, {overwrite = true})
  T.eq(#listdir(dir), 30)
  T.ok(V.read_dicom(dir).data:equal(vol4.data), "4-D round trip")
  for _, name in ipairs(listdir(TMP)) do T.ok(not name:find("%.tmp%-") and not name:find("%.old%-"), name) end
end)

T.case("write a float volume: values within half a rescale step", function()
  local t = medlua.linspace(-3.3, 7.9, 8 * 6 * 4):reshape(8, 6, 4)
  local vol = V.new(t, {{0.5, 0, 0, 1}, {0, 0.75, 0, 2}, {0, 0, 1.5, 3}, {0, 0, 0, 1}})
  local dir = tmp("float_written")
  V.write_dicom_series(vol, dir, {modality = "MR"})
  local w = V.read_dicom(dir)
  local step = (7.9 + 3.3) / 65534
  T.ok((w.data - vol.data):abs():max():item() <= 0.51 * step + 1e-6, "quantisation")
  affine_near(affine_table(w), affine_table(vol), 1e-4)
  T.eq(V.read_dicom_tags(dir .. "/IM000001.dcm", {"SOPClassUID"}).SOPClassUID, "1.2.840.10008.5.1.4.1.1.7")
  -- NaN: refused, nothing written
  local bad = V.new(medlua.full({4, 4, 2}, 0 / 0))
  T.raises(function() V.write_dicom_series(bad, tmp("nan_out")) end, "NaN")
  T.ok(not exists(tmp("nan_out")), "nothing left")
end)

T.case("edit_dicom_tags: set, multi-valued, delete, by tag; pixels and transfer syntax kept", function()
  local out = tmp("edited.dcm")
  V.edit_dicom_tags(CT1, out, {
    DistanceSourceToDetector = 1000.0,
    ["(0018,1111)"] = 541.25,
    PatientName = "Doe^Jane",
    SeriesDescription = false,
    WindowCenter = {40, 400},
  })
  local t = V.read_dicom_tags(out, {"DistanceSourceToDetector", "DistanceSourceToPatient", "PatientName",
    "SeriesDescription", "WindowCenter", "(0002,0010)"})
  T.eq(t.DistanceSourceToDetector, "1000")
  T.eq(t.DistanceSourceToPatient, "541.25")
  T.eq(t.PatientName, "Doe^Jane")
  T.eq(t.SeriesDescription, nil)
  T.eq(t.WindowCenter, "40\\400")
  T.eq(t["(0002,0010)"], "1.2.840.10008.1.2.4.90")
  T.ok(V.read_dicom(out).data:equal(V.read_dicom(CT1).data), "pixel data untouched")
  -- in place
  V.edit_dicom_tags(out, out, {PatientID = "P-7"})
  T.eq(V.read_dicom_tags(out, {"PatientID"}).PatientID, "P-7")
  -- errors name the file and the reason; nothing written
  local out2 = tmp("edited2.dcm")
  T.raises(function() V.edit_dicom_tags(CT1, out2, {NotAKeyword = 1}) end, "unknown tag 'NotAKeyword'")
  T.raises(function() V.edit_dicom_tags(CT1, out2, {PixelData = "x"}) end, "pixel data")
  T.raises(function() V.edit_dicom_tags(CT1, out2, {Rows = "lots"}) end, "Rows")
  T.raises(function() V.edit_dicom_tags(CT1, out2, {PatientName = {}}) end, "must be a string, a number")
  T.raises(function() V.edit_dicom_tags(CT1, out2, {}) end, "no tags given")
  T.raises(function() V.edit_dicom_tags(tmp("missing.dcm"), out2, {PatientID = "x"}) end, "missing.dcm")
  T.ok(not exists(out2), "nothing written on error")
end)

T.case("bad input: errors name the file and the reason", function()
  local b = read_bytes(EPI1)
  local p = tmp("trunc.dcm")
  write_bytes(p, b:sub(1, #b - 3000))
  local e = T.raises(function() V.read_dicom(p) end, "truncated")
  T.ok(e:find(p, 1, true), e)
  p = tmp("text.dcm")
  write_bytes(p, "this is not a DICOM file\n")
  e = T.raises(function() V.read_dicom(p) end, "not a DICOM file")
  T.ok(e:find(p, 1, true), e)
  assert(os.execute("mkdir -p '" .. tmp("empty") .. "'"))
  T.raises(function() V.read_dicom(tmp("empty")) end, "no DICOM images found")
  T.raises(function() V.read_dicom(tmp("nope")) end, "nope")
  -- a file with no Rows
  p = tmp("norows.dcm")
  V.edit_dicom_tags(EPI1, p, {Rows = false})
  T.raises(function() V.read_dicom(p) end, "lacks Rows")
  -- absurd dims
  p = tmp("absurd.dcm")
  V.edit_dicom_tags(EPI1, p, {Rows = 65535, Columns = 65535, NumberOfFrames = 2000000000})
  T.raises(function() V.read_dicom(p) end, "absurd dims")
  -- unsupported transfer syntax
  local j = read_bytes(CT1)
  p = tmp("ts92.dcm")
  write_bytes(p, (j:gsub("1%.2%.840%.10008%.1%.2%.4%.90", "1.2.840.10008.1.2.4.92", 1)))
  T.raises(function() V.read_dicom(p) end, "unsupported transfer syntax 1.2.840.10008.1.2.4.92")
  -- corrupt JPEG 2000 main header
  local soc = j:find("\xff\x4f\xff\x51", 1, true)
  p = tmp("j2k.dcm")
  write_bytes(p, j:sub(1, soc + 3) .. "\0\2" .. j:sub(soc + 6))
  T.raises(function() V.read_dicom(p) end, "JPEG 2000 stream corrupt")
end)

T.case("JPEG 2000 decoded in parallel: same pixels at any medlua.threads, a corrupt middle slice is one clear error", function()
  local n0 = medlua.threads()
  medlua.threads(1)
  local ref = V.read_dicom(CT).data
  -- the 3-slice series with the middle slice's tile-part length broken (OpenJPEG fails while decoding)
  local dir = tmp("j2k_mid")
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local names = listdir(CT)
  table.sort(names)
  for i, nm in ipairs(names) do
    local b = read_bytes(CT .. "/" .. nm)
    if i == 2 then
      local sot = b:find("\xff\x90", b:find("\xff\x4f\xff\x51", 1, true), true)
      b = b:sub(1, sot + 5) .. "\x7f\xff\xff\xff" .. b:sub(sot + 10)
    end
    write_bytes(dir .. "/" .. nm, b)
  end
  for _, n in ipairs {1, 2, 8} do
    medlua.threads(n)
    T.ok(V.read_dicom(CT).data:equal(ref), "same pixels at " .. n .. " threads")
    T.raises(function() V.read_dicom(dir) end, names[2] .. ": JPEG 2000 stream corrupt: Tile part length")
  end
  medlua.threads(n0)
end)

T.case("uneven spacing: warn / resample / error", function()
  local t = medlua.arange(8 * 6 * 6, {dtype = "float32"}):reshape(8, 6, 6)
  local vol = V.new(t, {{-1, 0, 0, 0}, {0, -1, 0, 0}, {0, 0, 2, 0}, {0, 0, 0, 1}})
  local dir = tmp("gap")
  V.write_dicom_series(vol, dir)
  os.remove(dir .. "/IM000004.dcm")
  T.eq(V.read_dicom(dir).shape, {8, 6, 5})
  local r = V.read_dicom(dir, {on_uneven = "resample"})
  T.eq(r.shape, {8, 6, 6})
  T.ok((r.data - vol.data):abs():max():item() < 1e-3, "linear in k: the missing slice is restored")
  T.raises(function() V.read_dicom(dir, {on_uneven = "error"}) end, "uneven slice spacing")
end)

T.case("shared data (skipped when absent): the LIDC chest CT", function()
  local d = "../shared/data/ct_lidc0001/dicom_full"
  if not exists(d .. "/1-001.dcm") then print("  skipped: " .. d .. " not present") return end
  local v = V.read_dicom(d)
  T.eq(v.shape, {512, 512, 133})
  T.eq(v.axcodes, "LPS")
  T.near(v.spacing[3], 2.5, 1e-6)
  T.near(sum(v), -28831490048, 1e6)
end)

T.run()
os.execute("rm -rf '" .. TMP .. "'")
