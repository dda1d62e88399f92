-- totalseg_split.lua: a CT + its multi-label map -> the TotalSegmentator layout, and back.
--
--   OUT/SUBJECT/ct.nii.gz + OUT/SUBJECT/segmentations/<structure>.nii.gz (uint8 0/1, one per structure of
--   the label table, empty ones included, as TotalSegmentator writes them)
--
-- The map must be on the CT's voxel grid (or the same voxels in another axis order, e.g. LAS vs LPS,
-- undone exactly). A CT given as a DICOM folder is matched to the map slice by slice by position
-- (ImagePositionPatient), so a series with slices missing still gets the right mask slices. Nothing is
-- half-written: the subject is assembled in a hidden staging folder that is renamed into place at the
-- end (each NIfTI file is also written to a temporary name and renamed). After writing, the subject is
-- merged back and compared with the input map (--no-check skips it).
--
--   medlua recipes/totalseg_split.lua                                  # the sample patient -> out/totalseg/s0001
--   medlua recipes/totalseg_split.lua --ct data/samples/example_ct_dicom --seg data/samples/example_seg_dicom.nii.gz \
--       --subject s0002
--   medlua recipes/totalseg_split.lua --ct ../shared/data/ct_lidc0001/dicom_full \
--       --seg ../shared/data/ct_lidc0001/totalseg_mask_full133.nii.gz \
--       --table ../shared/data/ct_lidc0001/totalseg_mask_structures.csv --subject s0003
--   medlua recipes/totalseg_split.lua --structures liver,spleen,vertebrae_* --subject s0001 --overwrite
--   medlua recipes/totalseg_split.lua --merge out/totalseg/s0001 --output s0001_multilabel.nii.gz
local medlua = require "medlua"
local cli = require "medlua.cli"
local totalseg = require "medlua.totalseg"

local args = cli.parse(arg, {
  description = "Write a CT and its multi-label map as a TotalSegmentator subject folder (ct.nii.gz + "
    .. "segmentations/<structure>.nii.gz), or (--merge) a subject folder back as one multi-label map.",
  {"--ct", "data/samples/example_ct.nii.gz", "the CT: a NIfTI file or a DICOM folder"},
  {"--seg", "data/samples/example_seg_full_fast.nii.gz", "its multi-label map (NIfTI)"},
  {"--table", "data/samples/labels_total.tsv", "label table: value<TAB>name lines, or a CSV with structure,id"},
  {"--structures", "all", "structures to write: names and globs, comma-separated (liver,vertebrae_*), or all"},
  {"--out", "out/totalseg", "dataset root folder"},
  {"--subject", "s0001", "subject folder name"},
  {"--overwrite", false, "replace an existing subject folder"},
  {"--check", true, "merge the written subject back and compare it with the input map (--no-check skips)"},
  {"--merge", "", "instead: a subject folder to merge back into one multi-label map (with --output)"},
  {"--output", "", "with --merge: the multi-label NIfTI to write"},
})

local t0 = medlua.clock()
local function die(msg) cli.die("totalseg_split", msg) end
local function try(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then die(r[2]) end
  return table.unpack(r, 2, r.n)
end

local root = totalseg.root()
local function find(p)
  if p == "" or p:sub(1, 1) == "/" then return p end
  local f = io.open(p, "rb")
  if f then f:close(); return p end
  if totalseg.is_dir(p) then return p end
  local alt = root .. "/" .. p
  f = io.open(alt, "rb")
  if f then f:close(); return alt end
  if totalseg.is_dir(alt) then return alt end
  return p
end

local tbl = try(totalseg.read_table, find(args.table))

-- ------------------------------------------------------------------ merge mode
if args.merge ~= "" then
  if args.output == "" then die("--merge needs --output FILE.nii.gz (the multi-label map to write)") end
  local ml, info = try(totalseg.merge, args.merge, tbl,
    {structures = args.structures ~= "all" and args.structures or nil})
  try(ml.save, ml, args.output, {dtype = ml.dtype})
  local ov = {}
  for n, c in pairs(info.overlaps) do ov[#ov + 1] = string.format("%s (%d voxels)", n, c) end
  table.sort(ov)
  print(string.format("merged %d masks of %s -> %s (%s, %s)%s in %.1f s", #info.structures, args.merge, args.output,
    table.concat(ml.shape, "x"), ml.dtype, #ov > 0 and ("; overlaps, the later mask kept: " .. table.concat(ov, ", ")) or "",
    medlua.clock() - t0))
  os.exit(0)
end

-- ------------------------------------------------------------------ split mode
local ct, seg = find(args.ct), find(args.seg)
local names = try(totalseg.select, tbl, args.structures)
local n = 0
local r = try(totalseg.split, ct, seg, tbl, args.out, args.subject, {structures = names, overwrite = args.overwrite,
  on_file = function() n = n + 1; if n % 20 == 0 then io.write(string.format("  %d/%d masks\n", n, #names)); io.flush() end end})
print(string.format("%s: ct.nii.gz (%s) + %d masks in segmentations/ (%d not empty: %s%s) in %.1f s", r.dir, r.ct_dtype,
  #r.structures, #r.present, table.concat(r.present, ", ", 1, math.min(#r.present, 8)),
  #r.present > 8 and ", ..." or "", medlua.clock() - t0))

if args.check then
  local t1 = medlua.clock()
  local volume = require "medlua.volume"
  local merged = try(totalseg.merge, r.dir, tbl, {structures = names})
  -- the input map on the CT's grid, restricted to the structures written
  local want
  if totalseg.is_dir(ct) then
    local _, mv = try(totalseg.align_series, ct, seg)
    want = mv.data
  else
    local ctv = try(totalseg.load_volume, ct, "the CT")
    want = try(totalseg.match_grid, ctv, try(volume.load, seg), seg, ct)
  end
  want = want:float()
  if #names < #tbl.names then
    local keep = medlua.zeros(want:size())
    for _, nm in ipairs(names) do keep = keep + want:eq(tbl.by_name[nm]):float() end
    want = want * keep
  end
  local same = merged.data:float():equal(want)
  print(string.format("check: merging %s back gives the input map %s (%.1f s)", r.dir,
    same and "exactly" or "WITH DIFFERENCES", medlua.clock() - t1))
  if not same then os.exit(1) end
end
