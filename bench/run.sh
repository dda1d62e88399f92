#!/usr/bin/env bash
# make bench: medlua against PyTorch CPU / MONAI (from PyPI, in bench/venv), same machine, same threads,
# in one run. Prints each pair and the ratio medlua/peer (below 1 = medlua faster / smaller).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-$(nproc)}
PY=bench/venv/bin/python
if [ ! -x "$PY" ] || ! "$PY" -c "import torch, monai" 2>/dev/null; then
  echo "setting up bench/venv (PyPI torch + monai; large download, once)"
  /usr/bin/python3 -m venv bench/venv && "$PY" -m pip install -q --upgrade pip && "$PY" -m pip install -q torch monai numpy nibabel SimpleITK pydicom scipy pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg || {
    echo "bench: could not install torch/monai from PyPI"; exit 1; }
fi
mkdir -p "$BUILD/bench"
echo "== machine: $(nproc) cores, threads=$THREADS, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
"$PY" -c "import torch, monai; print('== peers: torch', torch.__version__, 'monai', monai.__version__)"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2" | head -n1; }

echo; echo "== kernels: matmul 2048^3, conv3d 32->32 3x3x3 on 64^3"
if [ -f bench/bench_kernels.c ]; then
  make --no-print-directory "$BUILD/libmedlua.a" >/dev/null
  gcc -std=c11 -D_GNU_SOURCE -O3 -march=native -fopenmp -Imodules bench/bench_kernels.c "$BUILD/libmedlua.a" \
    -ldnnl -lcjson -lm -o "$BUILD/bench/bench_kernels" && OMP_NUM_THREADS=$THREADS "$BUILD/bench/bench_kernels"
  OMP_NUM_THREADS=$THREADS "$PY" bench/torch_kernels.py --threads "$THREADS"
fi

echo; echo "== per-call overhead of a tiny op (goal <= 2 us)"
"$BUILD/medlua" bench/overhead.lua
"$PY" bench/torch_overhead.py

echo; echo "== MONAI-shaped 3D U-Net train step (batch 2, 96^3, Adam)"
m=$("$BUILD/medlua" bench/unet_step.lua --threads "$THREADS" "$@"); echo "$m"
t=$(OMP_NUM_THREADS=$THREADS "$PY" bench/torch_unet_step.py --threads "$THREADS" "$@"); echo "$t"
echo "ratio step time medlua/monai: $(ratio "$(field step_ms "$m")" "$(field step_ms "$t")")  (goal <= 0.8)"
echo "ratio peak RSS  medlua/monai: $(ratio "$(field peak_rss_mb "$m")" "$(field peak_rss_mb "$t")")  (goal <= 0.7)"

echo; echo "== volumes: NIfTI load/save vs nibabel"
bash bench/bench_nifti.sh
echo; echo "== volumes: DICOM series load vs pydicom and SimpleITK"
[ -f bench/bench_dicom.sh ] && bash bench/bench_dicom.sh
echo; echo "== volumes: resample 512x512x300 to 1.5 mm vs SimpleITK"
bash bench/bench_resample.sh
echo; echo "== data loading (MONAI-style pipeline, 2 workers) vs MONAI DataLoader"
bash bench/bench_loader.sh

echo; echo "== sliding-window inference, 512x512x300 volume, MONAI-shaped U-Net, roi 96^3, sw_batch 4, overlap 0.25, gaussian"
m=$("$BUILD/medlua" bench/sliding_window.lua --threads "$THREADS"); echo "$m"
t=$(OMP_NUM_THREADS=$THREADS "$PY" bench/sliding_window.py --threads "$THREADS"); echo "$t"
echo "ratio total time medlua/monai: $(ratio "$(field total_s "$m")" "$(field total_s "$t")")"
echo "ratio peak RSS   medlua/monai: $(ratio "$(field peak_rss_mb "$m")" "$(field peak_rss_mb "$t")")"
echo; echo "== end-to-end training: recipes/train_unet.lua vs MONAI, same task/config/steps/threads (goal: Dice >= MONAI - 0.02)"
# the recipe's default steps take ~10-20 min per side on 2 cores; TRAIN_UNET_STEPS=60 for a quick check
bash bench/bench_train_unet.sh --threads "$THREADS" ${TRAIN_UNET_STEPS:+--steps "$TRAIN_UNET_STEPS"}
