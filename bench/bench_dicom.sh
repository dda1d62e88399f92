#!/usr/bin/env bash
# DICOM series loading: medlua (_volume.read_dicom: DCMTK parse + OpenJPEG, files read in parallel
# with OpenMP) against pydicom (read every file, sort by ImagePositionPatient, stack, rescale to
# float32) and SimpleITK's ImageSeriesReader (GDCM), in the same run on the same machine.
#
#   bash bench/bench_dicom.sh            # RUNS=5 (median of the runs inside each tool)
#   RUNS=9 THREADS=2 bash bench/bench_dicom.sh
#
# Cases: the 20-slice JPEG 2000 lossless CT (../shared/data/ct_totalseg/example_ct_dicom), the
# 133-slice uncompressed LIDC CT, and a 300-slice 512x512 uncompressed CT series written by medlua's
# writer into a temporary directory (the LIDC slices repeated). Every loader returns float32 HU; the
# table also prints the volume sums so a wrong load cannot pass for a fast one.
# Prints "case | medlua | peer | ratio" (ratio = peer time / medlua time: above 1, medlua is faster).
# The JPEG 2000 case also prints medlua on one thread: nearly all of its time is OpenJPEG's entropy
# decoder (the same library pydicom's pylibjpeg-openjpeg and GDCM use), so its ratio to the peers is
# about the number of threads; on 2 cores that is about 2x.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=${PY:-bench/venv/bin/python}
RUNS=${RUNS:-5}
THREADS=${THREADS:-$(nproc)}
SHARED=../shared/data
[ -x "$BUILD/medlua" ] || make --no-print-directory -j2 "$BUILD/medlua" >/dev/null || exit 1
if ! "$PY" -c "import pydicom, SimpleITK, numpy" 2>/dev/null; then
  echo "bench_dicom: $PY lacks pydicom / SimpleITK (bench/venv); skipped"; exit 0
fi
TMP=$(mktemp -d /tmp/medlua_bench_dicom.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
export OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}

cat >"$TMP/load.lua" <<'EOF'
local V = medlua._volume
local dir, runs = arg[1], tonumber(arg[2])
local times, vol = {}, nil
for r = 1, runs do
  vol = nil
  collectgarbage()
  local t0 = medlua.clock()
  vol = V.read_dicom(dir)
  times[#times + 1] = medlua.clock() - t0
end
local first = times[1] -- includes loading DCMTK's data dictionary (once per process)
table.sort(times)
print(string.format("medlua median_s=%.4f min_s=%.4f first_s=%.4f runs=%d shape=%s sum=%.6g", times[(#times + 1) // 2],
  times[1], first, runs, table.concat(vol.shape, "x"), vol.data:double():sum():item()))
EOF

cat >"$TMP/make300.lua" <<'EOF'
-- 300 slices of 512x512: the LIDC series repeated along z, written by medlua (explicit little endian)
local V = medlua._volume
local src = V.read_dicom(arg[1])
local d = src.data:contiguous()
local parts, n = {}, 0
while n < 300 do
  local take = math.min(300 - n, d:size(2))
  parts[#parts + 1] = d:narrow(2, 0, take)
  n = n + take
end
local vol = V.with_data(src, medlua.cat(parts, 2))
V.write_dicom_series(vol, arg[2], {series_description = "bench 300 slices"})
EOF

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2" | head -n1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "n/a" }'; }

echo "== machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), OMP threads=$THREADS, load: $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" -c "import pydicom, SimpleITK as s; print('== peers: pydicom', pydicom.__version__, '| SimpleITK', s.Version_VersionString())"
printf '%-34s | %-16s | %-22s | %s\n' "case" "medlua (median)" "peer (median)" "ratio peer/medlua"

run_case() { # name dir [one-thread row: 1]
  local name=$1 dir=$2 one=${3:-0} m m1="" p t=""
  m=$("$BUILD/medlua" "$TMP/load.lua" "$dir" "$RUNS" 2>/dev/null)
  [ "$one" = 1 ] && [ "$THREADS" != 1 ] && m1=$(OMP_NUM_THREADS=1 "$BUILD/medlua" "$TMP/load.lua" "$dir" "$RUNS" 2>/dev/null)
  for peer in pydicom sitk; do
    p=$("$PY" bench/pydicom_sitk_load.py "$dir" --runs "$RUNS" --peers "$peer" 2>/dev/null)
    printf '%-34s | %-16s | %-22s | %s\n' "$name" "$(field median_s "$m") s" "$peer $(field median_s "$p") s" \
      "$(ratio "$(field median_s "$m")" "$(field median_s "$p")")"
    [ -n "$m1" ] && printf '%-34s | %-16s | %-22s | %s\n' "  (medlua on 1 thread)" "$(field median_s "$m1") s" \
      "$peer $(field median_s "$p") s" "$(ratio "$(field median_s "$m1")" "$(field median_s "$p")")"
    t="$t $peer sum=$(field sum "$p")"
  done
  echo "    medlua first call $(field first_s "$m") s (DCMTK dictionary load included); sums: medlua=$(field sum "$m")$t; shape (X x Y x Z) $(field shape "$m")"
}

if [ -d "$SHARED/ct_totalseg/example_ct_dicom" ]; then
  run_case "20 x 512^2 CT, JPEG 2000 lossless" "$SHARED/ct_totalseg/example_ct_dicom" 1
else echo "skipped: $SHARED/ct_totalseg/example_ct_dicom not present"; fi
if [ -d "$SHARED/ct_lidc0001/dicom_full" ]; then
  run_case "133 x 512^2 CT, uncompressed" "$SHARED/ct_lidc0001/dicom_full"
  "$BUILD/medlua" "$TMP/make300.lua" "$SHARED/ct_lidc0001/dicom_full" "$TMP/ct300" 2>/dev/null &&
    run_case "300 x 512^2 CT, uncompressed" "$TMP/ct300"
else echo "skipped: $SHARED/ct_lidc0001/dicom_full not present"; fi
