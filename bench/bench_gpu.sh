#!/usr/bin/env bash
# GPU benchmarks side by side with PyTorch + cuDNN on the same GPU (make bench-gpu): the MONAI-shaped 3-D
# U-Net train step (batch 2, 96^3, f32, Adam, cross entropy; bench/unet_step.lua vs bench/torch_unet_step.py
# with cudnn.benchmark, TF32 off on both sides), median step time and peak GPU memory. Goal (issue 6):
# medlua's step time <= PyTorch's, peak GPU memory <= PyTorch's. Needs a GPU and, for the peer, a CUDA
# build of torch + MONAI in bench/venv (PyPI's torch is the CUDA build). Without a GPU it says so and
# exits 0. Not run yet: no GPU was lent to the session that wrote it.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=bench/venv/bin/python
DEV=${DEV:-cuda:0}
[ -x "$BUILD/medlua" ] || make --no-print-directory -j"$(nproc)" "$BUILD/medlua" >/dev/null || exit 1
if ! "$BUILD/medlua" -e 'os.exit(medlua.cuda.available() and 0 or 1)' 2>/dev/null; then
  echo "bench-gpu: skipped ($("$BUILD/medlua" -e 'io.write(medlua.cuda.status())' 2>/dev/null))"
  exit 0
fi
echo "GPU: $("$BUILD/medlua" -e 'io.write(medlua.cuda.device_name(0))')"
m=$("$BUILD/medlua" bench/unet_step.lua --device "$DEV" --steps 10 --warmup 3 "$@"); echo "$m"
if "$PY" -c "import torch, monai; assert torch.cuda.is_available()" 2>/dev/null; then
  t=$("$PY" bench/torch_unet_step.py --device "$DEV" --steps 10 --warmup 3 "$@"); echo "$t"
  ms=$(sed -E 's/.*step_ms=([0-9.]+).*/\1/' <<<"$m"); ts=$(sed -E 's/.*step_ms=([0-9.]+).*/\1/' <<<"$t")
  mg=$(sed -E 's/.*peak_gpu_mb=([0-9.]+).*/\1/' <<<"$m"); tg=$(sed -E 's/.*peak_gpu_mb=([0-9.]+).*/\1/' <<<"$t")
  awk -v a="$ms" -v b="$ts" -v c="$mg" -v d="$tg" \
    'BEGIN { printf "ratio medlua/torch: step %.2fx (goal <= 1), peak GPU memory %.2fx (goal <= 1)\n", a / b, c / d }'
else
  echo "bench-gpu: the peer needs torch with CUDA and MONAI in bench/venv (bash bench/run.sh sets up the venv)"
fi
