#!/usr/bin/env bash
# Validation-Dice parity, medlua vs MONAI, over several seeds (issue 4's evidence item: "same config, same
# data, same number of steps: medlua's validation Dice is within 0.02 of MONAI's or better").
#   bash bench/dice_parity.sh [--steps 600] [--val-every 100] [--seeds 0,1,2,3,4] [--out DIR] [--summary-only]
# Runs bench/bench_train_unet.sh once per seed (medlua then MONAI, one after the other, the recipe's defaults
# for everything but --steps/--val-every/--seed, passed to MONAI explicitly), then summarises, per side and
# class, mean +- sd over seeds of (a) the final validation Dice, (b) the mean of the last 3 validations,
# (c) the best validation (per class: the class Dice at the step with the highest mean Dice, as train_unet
# selects its checkpoint; and the per-class maximum), plus s/step and peak RSS. Writes DIR/summary.md
# (default build/bench/dice_parity). --summary-only re-summarises existing runs in DIR.
set -u
cd "$(dirname "$0")/.."
STEPS=600 VAL_EVERY=100 SEEDS=0,1,2,3,4 OUT="" SUMMARY_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) STEPS=$2; shift 2 ;;
    --val-every) VAL_EVERY=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --summary-only) SUMMARY_ONLY=1; shift ;;
    *) echo "usage: $0 [--steps N] [--val-every N] [--seeds 0,1,2,3,4] [--out DIR] [--summary-only]"; exit 2 ;;
  esac
done
OUT=${OUT:-${BUILD:-build}/bench/dice_parity}
mkdir -p "$OUT"
if [ $SUMMARY_ONLY = 0 ]; then
  {
    echo "--"
    echo "command: bash bench/dice_parity.sh --steps $STEPS --val-every $VAL_EVERY --seeds $SEEDS"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  } >>"$OUT/run_info.txt"
  for s in ${SEEDS//,/ }; do
    echo "uptime before seed $s: $(uptime)" | tee -a "$OUT/run_info.txt"
    t0=$(date +%s)
    bash bench/bench_train_unet.sh --steps "$STEPS" --val-every "$VAL_EVERY" --seed "$s" --out "$OUT/seed$s" \
      >"$OUT/seed$s.txt" 2>&1
    rc=$?
    echo "seed $s: bench_train_unet exit $rc, $(( $(date +%s) - t0 )) s" | tee -a "$OUT/run_info.txt"
    echo "uptime after seed $s: $(uptime)" | tee -a "$OUT/run_info.txt"
    [ $rc -eq 0 ] || { tail -n 20 "$OUT/seed$s.txt"; exit 1; }
  done
fi
exec bench/venv/bin/python bench/dice_parity_summary.py "$OUT" "$SEEDS"
