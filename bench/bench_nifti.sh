#!/usr/bin/env bash
# NIfTI load / save: medlua (_volume.read_nifti / write_nifti) against nibabel
# (nib.load(p).get_fdata(dtype=np.float32), the file read included; saving with img.to_filename).
# Each figure is the median of several runs inside one process (the file in the page cache after the
# first run). Prints "case | medlua | peer | ratio" (ratio = nibabel time / medlua time: >= 2 is the goal
# for the .nii.gz loads).
#   bash bench/bench_nifti.sh            (build/medlua must exist: make)
# The 512x512x300 int16 CT phantom is written once to $BUILD/bench/ct512_i16.nii.gz by nibabel.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=${PY:-bench/venv/bin/python}
[ -x "$PY" ] || PY=/usr/bin/python3
MED=$BUILD/medlua
RUNS=${RUNS:-7}
mkdir -p "$BUILD/bench"
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
"$PY" -c "import nibabel, numpy; print('== peer: nibabel', nibabel.__version__, 'numpy', numpy.__version__)"

CT=$BUILD/bench/ct512_i16.nii.gz
if [ ! -f "$CT" ]; then
  echo "writing $CT (512x512x300 int16 phantom, nibabel)"
  "$PY" bench/nibabel_load.py make_ct "$CT" || exit 1
fi
CTRAW=$BUILD/bench/ct512_i16.nii
[ -f "$CTRAW" ] || gzip -dc "$CT" > "$CTRAW"
EX=../shared/data/ct_totalseg/example_ct.nii.gz

field() { sed -n "s/.*$1=\([0-9.e+-]*\).*/\1/p" <<<"$2" | head -n1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "n/a" }'; }
printf '%-44s | %10s | %10s | %s\n' "case" "medlua s" "nibabel s" "ratio nibabel/medlua"
row() { # name medlua-output peer-output
  local m p
  m=$(field median_s "$2"); p=$(field median_s "$3")
  local ms ps; ms=$(field sum "$2"); ps=$(field sum "$3")
  printf '%-44s | %10s | %10s | %s%s\n' "$1" "$m" "$p" "$(ratio "$m" "$p")" \
    "$( [ "$ms" = "$ps" ] || echo "  (checksums differ: $ms vs $ps)")"
}
load_case() { # name path
  [ -f "$2" ] || { echo "$1: skipped ($2 missing)"; return; }
  local m p
  m=$("$MED" bench/nifti_load.lua load "$2" "$RUNS") || { echo "$1: medlua failed"; return; }
  p=$("$PY" bench/nibabel_load.py load "$2" "$RUNS") || { echo "$1: nibabel failed"; return; }
  row "$1" "$m" "$p"
}
load_case "load example_ct.nii.gz (122x101x112 i32)" "$EX"
load_case "load 512x512x300 int16 .nii.gz" "$CT"
load_case "load 512x512x300 int16 .nii" "$CTRAW"
p=$("$PY" bench/nibabel_load.py save "$CT" "$BUILD/bench/out_nibabel.nii.gz" 3)
for lvl in 6 1; do
  m=$("$MED" bench/nifti_load.lua save "$CT" "$BUILD/bench/out_medlua.nii.gz" 3 $lvl)
  row "save 512x512x300 float32 .nii.gz (level $lvl)" "$m" "$p"
  echo "  file sizes: medlua $(stat -c %s "$BUILD/bench/out_medlua.nii.gz") bytes (libdeflate level $lvl), nibabel $(stat -c %s "$BUILD/bench/out_nibabel.nii.gz") bytes (zlib level 1)"
done
rm -f "$BUILD/bench/out_medlua.nii.gz" "$BUILD/bench/out_nibabel.nii.gz"
echo "load $(cut -d' ' -f1-3 /proc/loadavg) at the end"
