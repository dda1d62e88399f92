#!/usr/bin/env bash
# Volume resampling: medlua (bench/resample.lua) against SimpleITK's Resample (bench/sitk_resample.py)
# on the same analytic 512x512x300 float32 CT-sized volume (0.7 x 0.7 x 1.25 mm -> 1.5 mm isotropic),
# same machine, same thread count, one run. medlua's volume is stored i fastest, as ITK stores it and
# as a NIfTI/DICOM reader hands it out. Each side prints the median of --runs runs; the table gives the
# ratio medlua/peer (below 1 = medlua faster) and whether both outputs have the same mean.
#   bash bench/bench_resample.sh [--runs 5] [--size 512] [--slices 300]
# Goal: linear resampling < 1 s and faster than SimpleITK.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-$(nproc)}
PY=bench/venv/bin/python
RUNS=5 SIZE=512 SLICES=300
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --slices) SLICES=$2; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--size N] [--slices N]"; exit 2 ;;
  esac
done
[ -x "$BUILD/medlua" ] || make --no-print-directory -j"$(nproc)" "$BUILD/medlua" >/dev/null || exit 1
if ! "$PY" -c "import SimpleITK, numpy" 2>/dev/null; then
  echo "bench_resample: SimpleITK missing (bench/venv/bin/python -m pip install SimpleITK numpy)"; exit 1
fi
echo "== volume resampling: $(nproc) cores, threads=$THREADS, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
m=$(OMP_NUM_THREADS=$THREADS "$BUILD/medlua" bench/resample.lua --runs "$RUNS" --size "$SIZE" --slices "$SLICES" \
  --threads "$THREADS" --layout f) || { echo "$m"; exit 1; }
s=$(OMP_NUM_THREADS=$THREADS "$PY" bench/sitk_resample.py --runs "$RUNS" --size "$SIZE" --slices "$SLICES" \
  --threads "$THREADS") || { echo "$s"; exit 1; }
echo "$m" | head -n1
echo "$s" | head -n1
echo
field() { sed -n "s/.*$1=\([-0-9.x]*\).*/\1/p" <<<"$2" | head -n1; }
printf '%-34s | %10s | %10s | %6s | %s\n' "case (median of $RUNS)" "medlua ms" "sitk ms" "ratio" "same output mean"
names=(linear bspline nearest rotate)
labels=("linear 0.7x0.7x1.25 -> 1.5 mm" "bspline (cubic) -> 1.5 mm" "nearest (uint8 labels) -> 1.5 mm" "linear, 10-degree rotation")
for i in "${!names[@]}"; do
  n=${names[$i]}
  ml=$(grep "^medlua $n " <<<"$m"); sl=$(grep "^sitk $n " <<<"$s")
  a=$(field ms "$ml"); b=$(field ms "$sl")
  r=$(awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
  same=$(awk -v a="$(field mean "$ml")" -v b="$(field mean "$sl")" 'BEGIN { d = a - b; if (d < 0) d = -d; print (d < 1e-4 ? "yes" : "NO") " (" a " / " b ")" }')
  printf '%-34s | %10s | %10s | %6s | %s\n' "${labels[$i]}" "$a" "$b" "$r" "$same"
done
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
