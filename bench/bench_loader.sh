#!/usr/bin/env bash
# Data loading: medlua's DataLoader (C worker threads, bench/bench_loader.lua) against MONAI's DataLoader
# (worker processes, bench/bench_loader.py) on the same realistic pipeline: load CT + labels (NIfTI .gz),
# EnsureChannelFirst, Spacing 1.5 mm (bilinear / nearest), ScaleIntensityRange, RandCropByPosNegLabel
# 96^3 x 2, RandFlip, RandRotate90; batch 2 items (4 crops), shuffle, num_workers 2 on both sides.
# Each side prints the median epoch time over --epochs epochs after one warm-up epoch (MONAI keeps its
# workers alive between epochs: persistent_workers=True), then one epoch with a simulated training step
# (sleep --step seconds per batch, the main thread idle as with a GPU), twice, and the fraction of the
# second epoch's loop spent waiting for batches (goal: < 5% of the step time).
#   bash bench/bench_loader.sh [--items 8] [--epochs 3] [--workers 2] [--step 0.5]
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=bench/venv/bin/python
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --items|--epochs|--workers|--step|--batch) ARGS+=("$1" "$2"); shift 2 ;;
    *) echo "usage: $0 [--items N] [--epochs N] [--workers N] [--batch N] [--step S]"; exit 2 ;;
  esac
done
[ -x "$BUILD/medlua" ] || make --no-print-directory -j"$(nproc)" "$BUILD/medlua" >/dev/null || exit 1
if ! "$PY" -c "import monai, nibabel" 2>/dev/null; then
  echo "bench_loader: MONAI/nibabel missing in bench/venv (bench/venv/bin/python -m pip install monai nibabel)"; exit 1
fi
echo "== data loading: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
"$PY" -c "import monai, torch; print('== peer: monai', monai.__version__, 'torch', torch.__version__)" 2>/dev/null
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
m=$("$BUILD/medlua" bench/bench_loader.lua "${ARGS[@]}") || { echo "$m"; exit 1; }
p=$("$PY" bench/bench_loader.py "${ARGS[@]}" 2>/dev/null) || { echo "$p"; exit 1; }
echo "$m"; echo "$p"; echo
field() { sed -n "s/.* $1=\([-0-9.]*\).*/\1/p" <<<"$2" | head -n1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
m1=$(grep -v " step " <<<"$m"); p1=$(grep -v " step " <<<"$p")
m2=$(grep " step " <<<"$m"); p2=$(grep " step " <<<"$p")
printf '%-46s | %10s | %10s | %6s\n' "case" "medlua" "peer" "ratio"
printf '%-46s | %10s | %10s | %6s\n' "epoch time, s (median; lower is better)" "$(field epoch_s "$m1")" "$(field epoch_s "$p1")" \
  "$(ratio "$(field epoch_s "$m1")" "$(field epoch_s "$p1")")"
printf '%-46s | %10s | %10s | %6s\n' "samples/s (96^3 crops; higher is better)" "$(field samples_per_s "$m1")" \
  "$(field samples_per_s "$p1")" "$(ratio "$(field samples_per_s "$m1")" "$(field samples_per_s "$p1")")"
printf '%-46s | %10s | %10s | %6s\n' "first epoch incl. worker start, s" "$(field first_epoch_s "$m1")" \
  "$(field first_epoch_s "$p1")" "$(ratio "$(field first_epoch_s "$m1")" "$(field first_epoch_s "$p1")")"
if [ -n "$m2" ] && [ -n "$p2" ]; then
  printf '%-46s | %10s | %10s | %6s\n' "wait / (wait + step), steady epoch" "$(field wait_frac "$m2")" \
    "$(field wait_frac "$p2")" "$(ratio "$(field wait_frac "$m2")" "$(field wait_frac "$p2")")"
  printf '%-46s | %10s | %10s | %6s\n' "wait / (wait + step), first epoch with steps" "$(field first_wait_frac "$m2")" \
    "$(field first_wait_frac "$p2")" "$(ratio "$(field first_wait_frac "$m2")" "$(field first_wait_frac "$p2")")"
fi
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
