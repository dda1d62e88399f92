-- medlua.totalseg (TotalSegmentator layout, DICOM/mask alignment by position, 2-D slice datasets,
-- predict_volume), medlua.nets.UNet2D, recipes/totalseg_split.lua and recipes/train_unet2d.lua.
-- Real data: data/samples (always); ../shared/data/ct_lidc0001 (the by-position test; skipped, and said
-- so, when ../shared is absent, as on a fresh clone).
local T = require "medlua.test"
local volume = require "medlua.volume"
local json = require "medlua.json"
local totalseg = require "medlua.totalseg"
local nets = require "medlua.nets"
local train = require "medlua.train"
local optim = require "medlua.optim"
local F = medlua.F
local exe = arg[-1]

local TABLE = "data/samples/labels_total.tsv"
local CT, SEG = "data/samples/example_ct.nii.gz", "data/samples/example_seg_full_fast.nii.gz"
local DCM, DSEG = "data/samples/example_ct_dicom", "data/samples/example_seg_dicom.nii.gz"
local LIDC = "../shared/data/ct_lidc0001"
-- the structures of the DICOM subject written by the round-trip test (and trained on by the smoke run)
local DCM_STRUCTS = "liver,spleen,stomach,pancreas,aorta,inferior_vena_cava,vertebrae_T*,rib_*,spinal_cord,autochthon_*"

local run = T.run_cmd

local function sh(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local tmpdir = T.tmpdir

local exists = require("medlua.path").exists

local function ls_a(d) -- every name in a folder, hidden ones included
  local out = {}
  local p = io.popen("ls -A " .. sh(d) .. " 2>/dev/null")
  for n in p:lines() do out[#out + 1] = n end
  p:close()
  table.sort(out)
  return out
end

local read = T.read_file

local tbl = totalseg.read_table(TABLE)
local ROOT = tmpdir() -- s0001 (example_ct) and s0002 (the DICOM sample), shared by later cases

T.case("label tables (TSV and CSV), structure selection with globs, close names for unknown ones", function()
  T.eq(#tbl.names, 117)
  T.eq(tbl.by_name.liver, 5)
  T.eq(tbl.names[117], "costal_cartilages")
  T.eq(table.concat(totalseg.select(tbl, "liver,kidney_*,liver"), ","), "liver,kidney_right,kidney_left,kidney_cyst_left,kidney_cyst_right")
  T.eq(#totalseg.select(tbl, nil), 117)
  T.eq(#totalseg.select(tbl, "vertebrae_*"), 25)
  T.raises(function() totalseg.select(tbl, "livr") end, "unknown structure 'livr'.*close names: liver")
  T.raises(function() totalseg.select(tbl, "spleen,kidny_left") end, "close names: kidney_left")
  T.raises(function() totalseg.select(tbl, "vertebra_*") end, "matches no structure.*vertebrae_")
  local d = tmpdir()
  local f = assert(io.open(d .. "/s.csv", "w"))
  f:write("group,original_idx,structure,id\norgans,1,spleen,1\nribs,26,costal_cartilages,118\n")
  f:close()
  local c = totalseg.read_table(d .. "/s.csv")
  T.eq(c.by_name.costal_cartilages, 118)
  T.eq(c.by_value[1], "spleen")
  f = assert(io.open(d .. "/bad.tsv", "w"))
  f:write("1\tspleen\n2\tspleen\n")
  f:close()
  T.raises(function() totalseg.read_table(d .. "/bad.tsv") end, "'spleen' is listed twice")
end)

T.case("split/merge round trip is exact: example_ct, all 117 structures", function()
  local r = totalseg.split(CT, SEG, tbl, ROOT, "s0001")
  T.eq(#r.structures, 117)
  T.eq(#ls_a(ROOT .. "/s0001/segmentations"), 117)
  T.eq(#r.present, 61)
  T.eq(table.concat(ls_a(ROOT), ","), "s0001", "no staging folder may remain")
  local ml = totalseg.merge(ROOT .. "/s0001", tbl)
  local orig = volume.load(SEG)
  T.eq(table.concat(ml.shape, "x"), "122x101x112")
  T.ok(ml.data:float():equal(orig.data), "merged map differs from the input")
  T.eq((ml.affine - orig.affine):abs():amax():item(), 0)
  -- each mask is a uint8 0/1 file on the CT's grid; the CT keeps its values
  local liver = volume.load(ROOT .. "/s0001/segmentations/liver.nii.gz", {dtype = "native"})
  T.eq(liver.dtype, "uint8")
  T.ok(liver.data:float():equal(orig.data:eq(5):float()))
  T.ok(volume.load(ROOT .. "/s0001/ct.nii.gz").data:equal(volume.load(CT).data), "ct.nii.gz values differ")
  -- a subset merges back to the map restricted to it
  local sub = totalseg.merge(ROOT .. "/s0001", tbl, {structures = "liver,spleen"})
  local want = orig.data:eq(5):float() * 5 + orig.data:eq(1):float()
  T.ok(sub.data:float():equal(want))
end)

T.case("split/merge round trip of the DICOM sample (LPS series, LAS map): exact on the series' grid", function()
  local r = totalseg.split(DCM, DSEG, tbl, ROOT, "s0002", {structures = DCM_STRUCTS})
  T.ok(#r.present >= 10, "present: " .. table.concat(r.present, ","))
  local ct = volume.load(ROOT .. "/s0002/ct.nii.gz")
  T.eq(ct.axcodes, "LPS")
  local series = volume.load(DCM)
  T.ok((ct.affine - series.affine):abs():amax():item() < 1e-4)
  T.ok(ct.data:equal(series.data), "ct.nii.gz differs from the DICOM series")
  local ml = totalseg.merge(ROOT .. "/s0002", tbl)
  -- the map brought onto the series' voxels (an exact flip of the A/P axis), restricted to the subset
  local want = volume.load(DSEG):resample_like(series, {mode = "nearest"}).data
  local keep = medlua.zeros(want:size())
  for _, n in ipairs(r.structures) do keep = keep + want:eq(tbl.by_name[n]):float() end
  T.ok(ml.data:float():equal(want * keep), "merged map differs from the input")
end)

T.case("bad inputs: missing ct.nii.gz, a mask on another grid, unknown names, bad label values", function()
  local d = tmpdir()
  -- a subject without ct.nii.gz: named in the error
  assert(os.execute("mkdir -p " .. sh(d .. "/s0009/segmentations")))
  T.raises(function() totalseg.merge(d .. "/s0009", tbl) end, "s0009: the subject folder has no ct.nii.gz")
  T.raises(function() totalseg.list_subjects(d) end, "s0009: the subject folder has no ct.nii.gz")
  T.raises(function() totalseg.load_subject(d .. "/s0009", {"liver"}) end, "has no ct.nii.gz")
  -- a mask with another grid (shifted 1.5 mm, same shape), then another shape
  local sd = d .. "/s0001"
  assert(os.execute("cp -r " .. sh(ROOT .. "/s0001") .. " " .. sh(sd)))
  local sp = volume.load(sd .. "/segmentations/spleen.nii.gz")
  local aff = sp.affine:clone()
  aff:set(aff:get(0, 3) + 1.5, 0, 3)
  sp:with_data(sp.data, aff):save(sd .. "/segmentations/spleen.nii.gz", {dtype = "uint8"})
  T.raises(function() totalseg.merge(sd, tbl) end, "segmentations/spleen.nii.gz: its grid .* differs from the CT")
  T.raises(function() totalseg.load_subject(sd, {"liver", "spleen"}) end, "spleen.nii.gz: its grid .* differs from the CT")
  local small = volume.load(ROOT .. "/s0002/segmentations/liver.nii.gz")
  small:save(sd .. "/segmentations/spleen.nii.gz", {dtype = "uint8"})
  T.raises(function() totalseg.merge(sd, tbl) end, "spleen.nii.gz: its grid %(shape 512x512x20.*the shapes differ")
  -- the same voxels in another axis order are not an error (undone exactly)
  sp:flip(0):save(sd .. "/segmentations/spleen.nii.gz", {dtype = "uint8"})
  T.ok(totalseg.merge(sd, tbl, {structures = "spleen"}).data:equal(
    totalseg.merge(ROOT .. "/s0001", tbl, {structures = "spleen"}).data), "a flipped copy of the mask must merge the same")
  -- a mask that is not 0/1
  sp:with_data(sp.data * 2):save(sd .. "/segmentations/spleen.nii.gz", {dtype = "uint8"})
  T.raises(function() totalseg.merge(sd, tbl, {structures = "spleen"}) end, "spleen.nii.gz: a structure mask must hold only 0 and 1")
  -- a file whose name is not in the table
  assert(os.execute("cp " .. sh(ROOT .. "/s0001/segmentations/liver.nii.gz") .. " " .. sh(sd .. "/segmentations/livr.nii.gz")))
  T.raises(function() totalseg.merge(sd, tbl) end, "livr.nii.gz: unknown structure 'livr'.*close names: liver")
  -- split: a label value that is not in the table, a structure name that is not
  local seg = volume.load(SEG)
  local bad = seg:with_data(seg.data + seg.data:eq(5):float() * 195) -- liver 5 -> 200
  T.raises(function() totalseg.split(CT, bad, tbl, d, "s0010") end, "label value%(s%) 200 are not in the label table")
  T.raises(function() totalseg.split(CT, SEG, tbl, d, "s0010", {structures = "livr"}) end, "close names: liver")
  T.raises(function() totalseg.split(CT, DSEG, tbl, d, "s0010") end, "example_seg_dicom.nii.gz: its grid .* differs")
  T.ok(not exists(d .. "/s0010/ct.nii.gz"), "a refused split must write nothing")
end)

T.case("split writes a subject whole or not at all (error halfway, existing subject, overwrite)", function()
  local d = tmpdir()
  local n = 0
  T.raises(function()
    totalseg.split(CT, SEG, tbl, d, "s0001", {on_file = function()
      n = n + 1
      if n == 5 then error("simulated write failure") end
    end})
  end, "simulated write failure")
  T.eq(#ls_a(d), 0, "the failed split left: " .. table.concat(ls_a(d), ", "))
  totalseg.split(CT, SEG, tbl, d, "s0001", {structures = "liver"})
  T.raises(function() totalseg.split(CT, SEG, tbl, d, "s0001", {structures = "spleen"}) end, "s0001 already exists")
  totalseg.split(CT, SEG, tbl, d, "s0001", {structures = "spleen,aorta", overwrite = true})
  T.eq(table.concat(ls_a(d .. "/s0001/segmentations"), ","), "aorta.nii.gz,spleen.nii.gz")
  T.eq(table.concat(ls_a(d), ","), "s0001")
end)

T.case("recipes/totalseg_split.lua: split with the round-trip check, refusals, merge back", function()
  local d = tmpdir()
  local out, code = run(string.format("%s recipes/totalseg_split.lua --out %s --subject s0001 --structures liver,spleen,kidney_*",
    exe, sh(d)))
  T.eq(code, 0, out)
  T.ok(out:find("gives the input map exactly", 1, true), out)
  T.eq(#ls_a(d .. "/s0001/segmentations"), 6)
  out, code = run(string.format("%s recipes/totalseg_split.lua --out %s --subject s0001", exe, sh(d)))
  T.eq(code, 1, out)
  T.ok(out:find("already exists", 1, true), out)
  out, code = run(string.format("%s recipes/totalseg_split.lua --out %s --subject s0002 --structures livr", exe, sh(d)))
  T.eq(code, 1, out)
  T.ok(out:find("close names: liver", 1, true), out)
  T.ok(not exists(d .. "/s0002"), "refused: nothing may be written")
  out, code = run(string.format("%s recipes/totalseg_split.lua --merge %s --output %s", exe, sh(d .. "/s0001"),
    sh(d .. "/m.nii.gz")))
  T.eq(code, 0, out)
  local m = volume.load(d .. "/m.nii.gz")
  local s = volume.load(SEG).data
  T.ok(m.data:equal(s:eq(5):float() * 5 + s:eq(1):float() + s:eq(2):float() * 2 + s:eq(3):float() * 3))
end)

T.case("DICOM series and mask aligned by slice position; a subset of the slices still aligns (ct_lidc0001)", function()
  local f = io.open(LIDC .. "/dicom_full/1-001.dcm", "rb")
  if not f then
    print("  skipped: " .. LIDC .. " is absent (../shared is not part of a fresh clone)")
    return
  end
  f:close()
  local mask = LIDC .. "/totalseg_mask_full133.nii.gz"
  local ct, m, info = totalseg.align_series(LIDC .. "/dicom_full", mask)
  T.eq(#info.slices, 133)
  T.ok(not info.uneven)
  -- by position the DICOM file 1-NNN is mask slice 133-NNN (the series is feet first; MANIFEST's NNN-1 is
  -- the file order, not the position)
  for _, s in ipairs(info.slices) do
    local nnn = tonumber(s.file:match("1%-(%d+)%.dcm$"))
    T.eq(s.mask_index, 133 - nnn, s.file)
  end
  -- 40 of the 133 files, unevenly spaced, in a temporary folder
  local d = tmpdir()
  local pick = {} -- files 1, 4, 8, 11, 14, 18, ...: gaps of 3 and 4 slices
  for i = 1, 133 do
    local r = i % 10
    if r == 1 or r == 4 or r == 8 then pick[#pick + 1] = i end
  end
  T.eq(#pick, 40)
  for _, i in ipairs(pick) do
    assert(os.execute(string.format("cp %s %s", sh(string.format("%s/dicom_full/1-%03d.dcm", LIDC, i)), sh(d))))
  end
  local ct2, m2, info2 = totalseg.align_series(d, mask)
  T.eq(table.concat(m2.shape, "x"), "512x512x40")
  T.ok(info2.uneven, "the subset is unevenly spaced")
  local full_k = {}
  for k, s in ipairs(info.slices) do full_k[string.format("%.3f", s.position[3])] = k - 1 end
  for k, s in ipairs(info2.slices) do
    local j = full_k[string.format("%.3f", s.position[3])]
    T.ok(j ~= nil, "no slice of the full series at z = " .. s.position[3])
    T.ok(m2.data:select(2, k - 1):equal(m.data:select(2, j)), "mask slice differs at " .. s.file)
    T.ok(ct2.data:select(2, k - 1):equal(ct.data:select(2, j)), "CT slice differs at " .. s.file)
  end
  -- the content agrees: lung labels (10-14) lie on air, rib and vertebra labels on bone
  local lab, hu = m2.data, ct2.data
  local lung = lab:ge(10):logical_and(lab:le(14)):float()
  T.ok((lung * hu:lt(-500):float()):sum():item() / lung:sum():item() > 0.9, "lungs are not on air")
  local bone = lab:ge(92):logical_and(lab:le(115)):logical_or(lab:ge(29):logical_and(lab:le(46))):float()
  T.ok((bone * hu:gt(150):float()):sum():item() / bone:sum():item() > 0.4, "ribs/vertebrae are not on bone")
  -- such a subset cannot become ct.nii.gz (one affine cannot place every slice): refused, nothing written
  local o = tmpdir()
  T.raises(function() totalseg.split(d, mask, LIDC .. "/totalseg_mask_structures.csv", o, "s0003", {structures = "liver"}) end,
    "unevenly spaced")
  T.eq(#ls_a(o), 0)
  -- a mask that does not cover a slice is an error naming the file
  local short = volume.load(mask)
  short = short:with_data(short.data:narrow(2, 0, 100):contiguous())
  T.raises(function() totalseg.align_series(d, short) end, "has no mask slice at its position")
end)

T.case("slice dataset: RAS slices, intensities, exact labels, resizing, empty-slice sampling", function()
  local names = {"liver", "spleen", "aorta"}
  local subj = totalseg.load_subject(ROOT .. "/s0001", names)
  T.eq(subj.voxels.liver, volume.load(SEG).data:eq(5):float():sum():item())
  -- native in-plane size (no resizing): labels exact, window exact
  local cfg = {target_shape = {122, 101}, axis = 2, window = {40, 400}}
  local p = totalseg.prepare_slices(subj, cfg, 3)
  T.eq(table.concat(p.images:size(), "x"), "112x1x122x101")
  local seg, ct = volume.load(SEG).data, volume.load(CT).data
  local bank = totalseg.slice_bank({p}, 3, 122, 101)
  local b = totalseg.bank_batch(bank, {51, 70})
  T.eq(table.concat(b[2]:size(), "x"), "2x3x122x101")
  T.ok(b[2]:select(0, 0):select(0, 0):equal(seg:select(2, 50):eq(5):float()), "liver channel of slice 51")
  T.ok(b[2]:select(0, 1):select(0, 2):equal(seg:select(2, 69):eq(52):float()), "aorta channel of slice 70")
  local win = ((ct:select(2, 50) + 160) / 400):clamp(0, 1)
  T.ok((b[1]:select(0, 0):select(0, 0) - win):abs():amax():item() < 1e-6, "windowed intensities")
  -- resized to 64x48: labels keep their values, images bilinear in [0, 1]
  local p2 = totalseg.prepare_slices(subj, {target_shape = {64, 48}, axis = 1, window = {40, 400}}, 3)
  T.eq(table.concat(p2.images:size(), "x"), "101x1x64x48")
  T.ok(p2.images:amin():item() >= 0 and p2.images:amax():item() <= 1)
  T.ok(p2.layers[1]:float():amax():item() <= 3)
  -- clip + z-score with given statistics
  local p3 = totalseg.prepare_slices(subj, {target_shape = {122, 101}, axis = 2, clip = {-1000, 1000},
    intensity_mean = 10, intensity_std = 100}, 3)
  T.ok((p3.images:select(0, 50):select(0, 0) - (ct:select(2, 50):clamp(-1000, 1000) - 10) / 100):abs():amax():item() < 1e-4)
  -- empty slices: each epoch keeps every slice with a structure and round(w * #empty) of the others
  local full, empty = 0, 0
  for _, v in ipairs(bank.nonempty) do if v then full = full + 1 else empty = empty + 1 end end
  T.ok(full > 20 and empty > 20, string.format("%d full, %d empty", full, empty))
  local L = totalseg.SliceLoader(bank, {batch_size = 8, empty_weight = 0.25, seed = 3})
  local n_empty = math.floor(0.25 * empty + 0.5)
  T.eq(L.epoch_size, full + n_empty)
  T.eq(L:len(), (full + n_empty + 7) // 8)
  local e1, e2 = L:epoch_indices(1), L:epoch_indices(2)
  T.eq(#e1, full + n_empty)
  local ne = 0
  for _, i in ipairs(e1) do if not bank.nonempty[i] then ne = ne + 1 end end
  T.eq(ne, n_empty)
  T.eq(table.concat(e1, ","), table.concat(L:epoch_indices(1), ","), "same seed and epoch, same samples")
  T.ne(table.concat(e1, ","), table.concat(e2, ","))
  local nb, ns = 0, 0
  for batch in L:iter(1) do nb = nb + 1; ns = ns + batch[1]:size(0) end
  T.eq(nb, L:len())
  T.eq(ns, full + n_empty)
  T.eq(totalseg.SliceLoader(bank, {empty_weight = 0}).epoch_size, full)
end)

-- a stand-in network: logits = its input repeated over K channels (so probabilities = sigmoid(input))
local function echo_net(K)
  return {training = true, eval = function(self) self.training = false end, train = function(self) self.training = true end,
    forward = function(_, x) return medlua.cat((function() local t = {} for i = 1, K do t[i] = x end return t end)(), 1) end}
end

T.case("predict_volume: probabilities on the CT's own grid, for every slice axis and orientation", function()
  local ct1 = volume.load(ROOT .. "/s0001/ct.nii.gz")   -- RAS
  local ct2 = volume.load(ROOT .. "/s0002/ct.nii.gz")   -- LPS
  for _, ct in ipairs{ct1, ct2:crop({0, 0, 0}, {96, 80, 20})} do
    local want = (((ct.data + 160) / 400):clamp(0, 1)):sigmoid()
    for axis = 0, 2 do
      local sz = {}
      for d = 0, 2 do
        -- RAS axis d of this volume: its voxel axis
        if d ~= axis then sz[#sz + 1] = ct.shape[totalseg._ras_map(ct.affine)[d + 1] + 1] end
      end
      local cfg = {target_shape = sz, axis = axis, window = {40, 400}}
      local p = totalseg.predict_volume(echo_net(2), ct, cfg, {batch_size = 7})
      T.eq(table.concat(p:size(), "x"), "2x" .. table.concat(ct.shape, "x"))
      T.ok((p:select(0, 1) - want):abs():amax():item() < 1e-6, string.format("%s axis %d", ct.axcodes, axis))
    end
    -- resized slices come back at the CT's size, close to the truth
    local p = totalseg.predict_volume(echo_net(1), ct, {target_shape = {64, 64}, axis = 2, window = {40, 400}})
    T.eq(table.concat(p:size(), "x"), "1x" .. table.concat(ct.shape, "x"))
    T.ok((p:select(0, 0) - want):abs():mean():item() < 0.02)
  end
  local sel = totalseg.predict_volume(echo_net(3), ct1, {target_shape = {122, 101}, axis = 2, window = {40, 400}},
    {channels = {2}})
  T.eq(sel:size(0), 1)
end)

T.case("UNet2D: shapes, PyTorch parameter names and count, a batch it overfits", function()
  local net = nets.UNet2D{in_channels = 1, out_channels = 117, features = {32, 64, 128, 256}, bottleneck = 512}
  T.eq(net:num_parameters(), 7766293)
  local sd = net:state_dict()
  for _, k in ipairs{"downs.0.conv.0.weight", "downs.3.conv.4.running_var", "bottleneck.conv.3.weight", "ups.0.weight",
    "ups.0.bias", "ups.7.conv.1.bias", "final_conv.weight"} do
    T.ok(sd[k] ~= nil, "missing " .. k)
  end
  T.eq(table.concat(sd["ups.0.weight"]:size(), "x"), "512x256x2x2")
  T.eq(table.concat(net:forward(medlua.randn(1, 1, 32, 48)):size(), "x"), "1x117x32x48")
  T.raises(function() net:forward(medlua.randn(1, 1, 40, 32)) end, "divisible by 16")
  T.raises(function() net:forward(medlua.randn(1, 2, 32, 32)) end, "has 2 channels, the network expects 1")
  -- a small one learns one batch of multi-label targets (overlapping channels)
  medlua.manual_seed(1)
  local small = nets.UNet2D{out_channels = 2, features = {8, 16}, bottleneck = 32}
  local x = medlua.randn(4, 1, 32, 32)
  local y = medlua.stack({x:gt(0):float():squeeze(1), x:gt(0.5):float():squeeze(1)}, 1)
  local opt = optim.Adam(small:parameters(), {lr = 1e-2})
  local first, last
  for i = 1, 25 do
    opt:zero_grad()
    local loss = F.binary_cross_entropy_with_logits(small:forward(x), y)
    loss:backward()
    opt:step()
    if i == 1 then first = loss:item() end
    last = loss:item()
  end
  T.ok(last < 0.5 * first, string.format("loss %.4f -> %.4f", first, last))
  -- gradients equal those of the same modules composed step by step with out-of-place ops (an in-place
  -- ReLU on the batch norm's output once gave wrong gradients without any error)
  local function grads(fwd)
    small:zero_grad()
    F.binary_cross_entropy_with_logits(fwd(x), y):backward()
    return small.downs["0"].conv["0"].weight.grad:clone(), small.ups["1"].conv["3"].weight.grad:clone()
  end
  local a1, b1 = grads(function(t) return small:forward(t) end)
  local function dc(m, t)
    local c = m.conv
    t = F.relu(c["1"]:forward(c["0"]:forward(t)))
    return F.relu(c["4"]:forward(c["3"]:forward(t)))
  end
  local a2, b2 = grads(function(t)
    local s1 = dc(small.downs["0"], t)
    local s2 = dc(small.downs["1"], F.max_pool2d(s1, {kernel_size = 2}))
    local u = dc(small.bottleneck, F.max_pool2d(s2, {kernel_size = 2}))
    u = dc(small.ups["1"], medlua.cat({s2, small.ups["0"]:forward(u)}, 1))
    u = dc(small.ups["3"], medlua.cat({s1, small.ups["2"]:forward(u)}, 1))
    return small.final_conv:forward(u)
  end)
  T.ok((a1 - a2):abs():amax():item() <= 1e-6 * (1 + a2:abs():amax():item()), "first conv weight gradient")
  T.ok((b1 - b2):abs():amax():item() <= 1e-6 * (1 + b2:abs():amax():item()), "decoder conv weight gradient")
end)

local OUT = tmpdir() .. "/run"
local SMOKE = string.format("%s recipes/train_unet2d.lua --data %s --train-subjects s0001 --val-subjects s0002 " ..
  "--structures liver,spleen,aorta --target-shape 64 --batch-size 2 --steps-per-epoch 3 --dice-weight 0.5 --quiet",
  exe, sh(ROOT))

T.case("train_unet2d: 2 epochs write every file of the contract; checkpoints load into UNet2D(config.model)", function()
  local out, code = run(SMOKE .. " --epochs 2 --out " .. sh(OUT))
  T.eq(code, 0, out)
  for _, f in ipairs{"config.json", "label_map.json", "best.safetensors", "last.safetensors", "checkpoint_epoch1.safetensors",
    "checkpoint_epoch2.safetensors", "training_history.json", "training_history.png", "metrics.jsonl", "curves.png"} do
    T.ok(exists(OUT .. "/" .. f), "missing " .. f .. "\n" .. out)
  end
  local cfg = json.read(OUT .. "/config.json")
  T.eq(cfg.model.type, "UNet2D")
  T.eq(cfg.model.in_channels, 1)
  T.eq(cfg.model.out_channels, 3)
  T.eq(table.concat(cfg.model.features, ","), "32,64,128,256")
  T.eq(cfg.model.bottleneck, 512)
  T.eq(table.concat(cfg.structures, ","), "liver,spleen,aorta")
  T.eq(table.concat(cfg.label_values, ","), "5,1,52")
  T.eq(cfg.axis, 2)
  T.eq(table.concat(cfg.target_shape, ","), "64,64")
  T.eq(table.concat(cfg.clip, ","), "-1000,1000")
  T.eq(cfg.normalize, "zscore")
  T.eq(cfg.threshold, 0.5)
  local lm = json.read(OUT .. "/label_map.json")
  T.eq(#lm.structures, 3)
  T.eq(lm.structures[3].name, "aorta")
  T.eq(lm.structures[3].channel, 2)
  T.eq(lm.structures[3].value, 52)
  local h = json.read(OUT .. "/training_history.json")
  T.eq(#h.epochs, 2)
  T.eq(#h.train_loss, 2)
  T.eq(#h.val_dice_per_structure.liver, 2)
  T.ok(type(h.best_epoch) == "number")
  for _, ck in ipairs{"best", "checkpoint_epoch1", "checkpoint_epoch2"} do
    local net = nets.UNet2D(cfg.model)
    train.load_model(net, OUT .. "/" .. ck .. ".safetensors")
  end
  local a, b = nets.UNet2D(cfg.model), nets.UNet2D(cfg.model)
  train.load_model(a, OUT .. "/checkpoint_epoch2.safetensors")
  train.load_model(b, OUT .. "/last.safetensors")
  T.ok(a:state_dict()["final_conv.weight"]:equal(b:state_dict()["final_conv.weight"]), "epoch 2 checkpoint != last")
  local net, c2 = totalseg.load_trained(OUT)
  local ct = volume.load(DCM)
  local p = totalseg.predict_volume(net, ct, c2, {batch_size = 8})
  T.eq(table.concat(p:size(), "x"), "3x512x512x20")
  T.ok(p:amin():item() >= 0 and p:amax():item() <= 1)
end)

T.case("train_unet2d --resume continues from the last epoch; corrupted checkpoints are refused cleanly", function()
  local out, code = run(SMOKE .. " --epochs 3 --resume --no-final-eval --out " .. sh(OUT))
  T.eq(code, 0, out)
  T.ok(out:find("1 epochs after epoch 2", 1, true), out)
  T.ok(exists(OUT .. "/checkpoint_epoch3.safetensors"), "no epoch 3 checkpoint\n" .. out)
  local h = json.read(OUT .. "/training_history.json")
  T.eq(#h.epochs, 3)
  local rows = 0
  for line in io.lines(OUT .. "/steps.csv") do if line:match("^%d") then rows = rows + 1 end end
  T.eq(rows, 9, "3 epochs of 3 steps")
  -- a corrupted last.safetensors: --resume stops before writing anything
  local d = tmpdir() .. "/bad"
  assert(os.execute("mkdir -p " .. sh(d)))
  local good = read(OUT .. "/last.safetensors")
  local f = assert(io.open(d .. "/last.safetensors", "wb"))
  f:write(good:sub(1, #good // 2))
  f:close()
  out, code = run(SMOKE .. " --epochs 3 --resume --out " .. sh(d))
  T.eq(code, 1, out)
  T.ok(out:find("last.safetensors: cannot resume (a damaged checkpoint?)", 1, true) and out:find("out of range", 1, true), out)
  T.eq(table.concat(ls_a(d), ","), "last.safetensors", "a refused resume must not write files")
  T.eq(read(d .. "/last.safetensors"), good:sub(1, #good // 2))
  -- a checkpoint of another model (other structures)
  f = assert(io.open(d .. "/last.safetensors", "wb"))
  f:write(good)
  f:close()
  out, code = run(SMOKE:gsub("liver,spleen,aorta", "liver,spleen") .. " --epochs 3 --resume --out " .. sh(d))
  T.eq(code, 1, out)
  T.ok(out:find("does not fit this model", 1, true), out)
  -- loading: a clear error naming the file
  T.raises(function() totalseg.load_trained(OUT, d .. "/nothing.safetensors") end, "nothing.safetensors: checkpoint not found")
  f = assert(io.open(d .. "/cut.safetensors", "wb"))
  f:write(good:sub(1, 100))
  f:close()
  T.raises(function() totalseg.load_trained(OUT, d .. "/cut.safetensors") end, "cut.safetensors: cannot load the checkpoint")
  T.raises(function() train.load_model(nets.UNet2D{out_channels = 3}, d .. "/cut.safetensors") end, "cut.safetensors")
  -- bad data for the recipe: an unknown structure, a subject without ct.nii.gz
  out, code = run(SMOKE:gsub("liver,spleen,aorta", "liver,splen") .. " --out " .. sh(d .. "/x"))
  T.eq(code, 1, out)
  T.ok(out:find("close names: spleen", 1, true), out)
  assert(os.execute("mkdir -p " .. sh(ROOT .. "/s0005/segmentations")))
  out, code = run(SMOKE .. " --out " .. sh(d .. "/y"))
  os.execute("rmdir " .. sh(ROOT .. "/s0005/segmentations") .. " " .. sh(ROOT .. "/s0005"))
  T.eq(code, 1, out)
  T.ok(out:find("s0005: the subject folder has no ct.nii.gz", 1, true), out)
  T.ok(not exists(d .. "/x") and not exists(d .. "/y"), "refused runs must not create their output folder")
end)

T.run()
