#!/usr/bin/env bash
# End-to-end training: recipes/train_unet.lua (medlua) against bench/monai_train_unet.py (MONAI 1.6.1) on
# the recipe's default task (vertebrae and spinal cord, train on data/samples/example_ct, validate on the
# DICOM series), same config, same data, same number of steps, same validation schedule, same threads.
# The goal: medlua's validation Dice within 0.02 of MONAI's or better, per class.
#   bash bench/bench_train_unet.sh [--steps N] [--val-every N] [--threads 2] [--seed 0] [--out DIR]
# --steps defaults to the recipe's default, --val-every too (lowered to --steps when that is smaller, so
# the last step is validated). Every other setting is the recipe's current default, read from its
# --help and passed to the MONAI script explicitly. The sides run one after the other. Per class it prints
# the last validation's Dice (at the last step when --val-every divides --steps) of each side and their
# difference, then the best validation of each side, every validation of both runs side by side, the
# training loss (mean of the last 50 steps), seconds per training step (the training loop without the
# validation passes, divided by the steps), the share of it spent waiting for batches and peak RSS up
# to the end of training (medlua: VmHWM; MONAI: the main process, its DataLoader worker processes
# separately). Logs, metrics.csv and
# the medlua run's checkpoints go to DIR (default build/bench/train_unet). Single runs, one seed each:
# training noise between seeds can itself exceed 0.02. Both sides run with OMP_WAIT_POLICY=passive:
# medlua sets it for itself (host/main.c); without it torch's libgomp threads spin at every barrier,
# which on a busy 2-core machine made a MONAI step 3-5x slower (1.3 s -> 4.5-6 s at 64^3 here).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PY=bench/venv/bin/python
STEPS="" VAL_EVERY="" THREADS=2 SEED="" OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --val-every) VAL_EVERY=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "usage: $0 [--steps N] [--val-every N] [--threads N] [--seed N] [--out DIR]"; exit 2 ;;
  esac
done
[ -x "$BUILD/medlua" ] || make --no-print-directory -j"$(nproc)" "$BUILD/medlua" >/dev/null || exit 1
if ! "$PY" -c "import monai, nibabel, pydicom" 2>/dev/null; then
  echo "bench_train_unet: MONAI/nibabel/pydicom missing in bench/venv (bash bench/run.sh sets it up)"; exit 1
fi
# MONAI's KeepLargestConnectedComponent (the recipe's --postprocess) needs scikit-image
"$PY" -c "import skimage" 2>/dev/null || "$PY" -m pip install -q scikit-image || {
  echo "bench_train_unet: could not install scikit-image into bench/venv"; exit 1; }

HELP=$("$BUILD/medlua" recipes/train_unet.lua --help) || { echo "$HELP"; exit 1; }
default() { sed -n "s/^  --$1 .*(default: \([^)]*\))$/\1/p" <<<"$HELP" | head -n1; }
STEPS=${STEPS:-$(default steps)}
VAL_EVERY=${VAL_EVERY:-$(default val-every)}
SEED=${SEED:-$(default seed)}
[ "$VAL_EVERY" -gt "$STEPS" ] && VAL_EVERY=$STEPS
OUT=${OUT:-$BUILD/bench/train_unet}
mkdir -p "$OUT"
rm -rf "$OUT/medlua" "$OUT/monai"
PYARGS=()
for o in train-image train-label val-image val-label labels spacing a-min a-max roi batch-size lr weight-decay sched \
  postprocess channels strides num-res-units norm sw-batch-size overlap workers affine-prob; do
  PYARGS+=("--$o" "$(default "$o")")
done

# a recipe option this script does not know may be a setting the MONAI side does not mirror
KNOWN=" help steps val-every threads seed out quiet resume tta time-limit early-stop datalist images label-dir val-fraction \
label-table num-classes ${PYARGS[*]//--/} "
for o in $(sed -n 's/^  --\([a-z0-9-]*\).*/\1/p' <<<"$HELP"); do
  case "$KNOWN" in *" $o "*) ;; *) echo "bench_train_unet: WARNING: recipe option --$o ($(default "$o")) is not mirrored by bench/monai_train_unet.py" ;; esac
done
for o in early-stop time-limit; do
  [ "$(default "$o")" = 0 ] || echo "bench_train_unet: WARNING: the recipe's --$o default is $(default "$o"), the MONAI side has none"
done
echo "== train_unet end to end: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "== steps $STEPS, validation every $VAL_EVERY, threads $THREADS, seed $SEED; recipe defaults: ${PYARGS[*]}"
echo "== load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# medlua: the recipe as is; MEDLUA_INIT wraps train.fit to time the validation passes and read VmHWM, and
# (diagnostics, not compared) seg.postprocess/seg.evaluate to log, per validation, raw_dice_<class> (the Dice
# before --postprocess) and fg_kept (the share of predicted foreground voxels the postprocessing kept), as the
# MONAI script does
INIT='local m = require "medlua"
local tr = require "medlua.train"
local seg = require "medlua.segment"
local pp, ev = seg.postprocess, seg.evaluate
local raw, diag = nil, {}
seg.postprocess = function(pred, ...) raw = pred; return pp(pred, ...) end
seg.evaluate = function(pred, gt, lm, opts)
  local rows = ev(pred, gt, lm, opts)
  if raw and opts and opts.hd95 == false then
    for _, r in ipairs(ev(raw, gt, lm, opts)) do
      local k = "raw_dice_" .. r.name
      diag[k] = diag[k] or {}; table.insert(diag[k], r.dice)
    end
    local nr = raw.data:gt(0):sum():item()
    diag.fg_kept = diag.fg_kept or {}
    table.insert(diag.fg_kept, nr > 0 and pred.data:gt(0):sum():item() / nr or 0 / 0)
  end
  raw = nil
  return rows
end
local fit = tr.fit
tr.fit = function(o)
  local vt, nv, vf = 0, 0, o.val_fn
  if vf then o.val_fn = function(...)
    local t = m.clock(); diag = {}
    local r = vf(...)
    for k, l in pairs(diag) do local s = 0; for _, v in ipairs(l) do s = s + v end; r[k] = s / #l end
    vt = vt + m.clock() - t; nv = nv + 1; return r end end
  local t = m.clock()
  local s = fit(o)
  local hwm = 0
  local f = io.open("/proc/self/status")
  if f then hwm = tonumber(f:read("a"):match("VmHWM:%s*(%d+)")) or 0; f:close() end
  local ft = m.clock() - t
  io.stdout:write(string.format("medlua fit steps=%d fit_s=%.1f val_s=%.1f n_val=%d s_per_step=%.3f peak_rss_mb=%.0f\n",
    s.steps, ft, vt, nv, (ft - vt) / math.max(s.steps, 1), hwm / 1024))
  return s
end'
t0=$(date +%s)
MEDLUA_INIT=$INIT OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=passive "$BUILD/medlua" recipes/train_unet.lua --steps "$STEPS" --val-every "$VAL_EVERY" \
  --threads "$THREADS" --seed "$SEED" --out "$OUT/medlua" --quiet >"$OUT/medlua.log" 2>&1
rc=$?
echo "== medlua: exit $rc, $(( $(date +%s) - t0 )) s wall (log $OUT/medlua.log)"
[ $rc -eq 0 ] || { tail -n 20 "$OUT/medlua.log"; exit 1; }

t0=$(date +%s)
OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=passive "$PY" bench/monai_train_unet.py --steps "$STEPS" --val-every "$VAL_EVERY" --threads "$THREADS" \
  --seed "$SEED" --out "$OUT/monai" "${PYARGS[@]}" >"$OUT/monai.log" 2>&1
rc=$?
echo "== MONAI: exit $rc, $(( $(date +%s) - t0 )) s wall (log $OUT/monai.log)"
[ $rc -eq 0 ] || { tail -n 20 "$OUT/monai.log"; exit 1; }
echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

# medlua's metrics.csv: columns by name; the last row with validation metrics, and the best val_dice row
csvcol() { # file row(last|best) column
  awk -F, -v want="$3" -v mode="$2" 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
    c["val_dice"] && $c["val_dice"] != "" { v = $c["val_dice"] + 0
      if (mode == "last" || best == "" || v > best) { best = v; row = $0 } }
    END { if (row == "") exit; n = split(row, f, ","); print (c[want] ? f[c[want]] : "") }' "$1"
}
M=$(grep "^medlua fit" "$OUT/medlua.log" | tail -n1)
P=$(grep "^monai summary" "$OUT/monai.log" | tail -n1)
field() { sed -n "s/.* $1=\([-0-9.naNinf]*\).*/\1/p" <<<"$2" | head -n1; }
classes=$(sed -n 's/^medlua .*classes: background, //p' "$OUT/medlua.log" | head -n1 | tr -d ',')
echo
printf '%-22s | %8s | %8s | %8s | %s\n' "validation Dice" "medlua" "MONAI" "diff" "medlua >= MONAI - 0.02"
for c in $classes; do
  for mode in last best; do
    m=$(csvcol "$OUT/medlua/metrics.csv" $mode "val_dice_$c")
    if [ $mode = last ]; then p=$(field "dice_$c" "$P"); else p=$(field "best_dice_$c" "$P"); fi
    awk -v n="$c ($mode)" -v m="$m" -v p="$p" 'BEGIN { d = m - p
      printf "%-22s | %8.4f | %8.4f | %+8.4f | %s\n", n, m, p, d, (d >= -0.02 ? "yes" : "NO") }'
  done
done
ms=$(csvcol "$OUT/medlua/metrics.csv" last step); bs=$(csvcol "$OUT/medlua/metrics.csv" best step)
echo "(last = validation at step medlua $ms / MONAI $(field last_step "$P"); best = highest mean val_dice: medlua step $bs, MONAI step $(field best_step "$P"))"
# every validation of both runs, by step (one seed each: the spread shows how noisy the task is)
echo "every validation, Dice vertebrae / spinal cord ... (medlua | MONAI):"
awk -F, -v cls="$classes" 'BEGIN { nc = split(cls, C, " ") }
  { sub(/\r$/, "") }
  FNR == 1 { delete c; for (i = 1; i <= NF; i++) c[$i] = i; side = (FILENAME ~ /medlua/) ? "m" : "p"; next }
  c["val_dice"] && $c["val_dice"] != "" { s = $c["step"]; if (!(s in seen)) { seen[s] = 1; order[++n] = s }
    v = ""; for (k = 1; k <= nc; k++) v = v sprintf("%s%.3f", k > 1 ? " / " : "", $c["val_dice_" C[k]]); r[side, s] = v }
  END { for (i = 1; i <= n; i++) printf "  step %6d: %-17s | %s\n", order[i], r["m", order[i]], r["p", order[i]] }' \
  "$OUT/medlua/metrics.csv" "$OUT/monai/metrics.csv"
printf '%-22s | %8s | %8s | %8s\n' "" "medlua" "MONAI" "ratio"
ml=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next } $c["train_loss"] != "" { v = $c["train_loss"] } END { print v }' \
  "$OUT/medlua/metrics.csv")
printf '%-22s | %8.4f | %8.4f | %8s\n' "train loss, last 50" "$ml" "$(field train_loss_last50 "$P")" ""
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
printf '%-22s | %8s | %8s | %8s\n' "s per training step" "$(field s_per_step "$M")" "$(field s_per_step "$P")" \
  "$(ratio "$(field s_per_step "$M")" "$(field s_per_step "$P")")"
printf '%-22s | %8s | %8s | %8s\n' "validation passes, s" "$(field val_s "$M")" "$(field val_s "$P")" \
  "$(ratio "$(field val_s "$M")" "$(field val_s "$P")")"
mw=$(sed -n 's/^data loading: waited \([0-9.]*\)%.*/\1/p' "$OUT/medlua.log" | head -n1)
printf '%-22s | %8s | %8s | %8s\n' "waiting for batches" "${mw:-?}%" "$(awk -v f="$(field data_wait_frac "$P")" 'BEGIN { printf "%.1f%%", 100 * f }')" ""
printf '%-22s | %8s | %8s | %8s\n' "peak RSS, MB" "$(field peak_rss_mb "$M")" "$(field peak_rss_mb "$P")" \
  "$(ratio "$(field peak_rss_mb "$M")" "$(field peak_rss_mb "$P")")"
echo "(MONAI's peak RSS is its main process; each of its DataLoader worker processes peaked at $(field worker_peak_rss_mb "$P") MB RSS, mostly shared with the main process; medlua's workers are threads inside its process)"
grep "^summary:" "$OUT/medlua.log" | sed 's/^/medlua recipe (best checkpoint, validation image in its own grid): /'
