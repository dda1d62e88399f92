#!/usr/bin/env python3
"""Summary of bench/dice_parity.sh: per side and class, mean +- sd over seeds of the validation Dice.

    bench/venv/bin/python bench/dice_parity_summary.py DIR 0,1,2

Reads DIR/seedN/medlua/metrics.csv, DIR/seedN/monai/metrics.csv (every validation), DIR/seedN/medlua.log
("medlua fit ..." line: s/step, peak RSS) and DIR/seedN/monai.log ("monai summary ..." line), and writes
DIR/summary.md (also printed). Per seed and side:
  final   the Dice of the last validation (the last step)
  last3   the mean Dice of the last 3 validations
  best    the per-class Dice at the validation with the highest mean Dice (the checkpoint train_unet keeps)
  max     the highest Dice each class reached at any validation (an optimistic figure, for reference)
Across seeds: mean, sample sd, and for medlua - MONAI the difference of the means with its standard error
sqrt(sd_m^2/n_m + sd_p^2/n_p) and Welch's t (the seeds of the two sides are unrelated random streams, so the
comparison is unpaired). "within 0.02" = mean(medlua) >= mean(MONAI) - 0.02.
"""
import csv
import math
import os
import re
import sys
import warnings

try:
    from scipy import stats
except ImportError:  # p-values are optional
    stats = None


def read_vals(path):
    """every validation row: [(step, {class: dice}), ...] in step order"""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("val_dice", "") in ("", None):
                continue
            per = {k[len("val_dice_"):]: float(v) for k, v in r.items() if k.startswith("val_dice_") and v != ""}
            # diagnostics (bench_train_unet.sh / monai_train_unet.py): Dice before --postprocess, kept share
            per.update({"raw:" + k[len("raw_dice_"):]: float(v) for k, v in r.items() if k.startswith("raw_dice_") and v != ""})
            if r.get("fg_kept", "") not in ("", None):
                per["fg_kept"] = float(r["fg_kept"])
            rows.append((int(float(r["step"])), per))
    rows.sort(key=lambda t: t[0])
    return rows


def field(line, name):
    m = re.search(r"(?:^| )" + re.escape(name) + r"=([-0-9.eEnaif]+)", line or "")
    return float(m.group(1)) if m else float("nan")


def last_line(path, prefix):
    out = None
    with open(path, errors="replace") as f:
        for ln in f:
            if ln.startswith(prefix):
                out = ln.strip()
    return out


def mean(v):
    v = [x for x in v if x == x]
    return sum(v) / len(v) if v else float("nan")


def sd(v):
    v = [x for x in v if x == x]
    if len(v) < 2:
        return float("nan")
    m = mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def per_run(rows, classes):
    mean_of = lambda per: mean([per[c] for c in classes])
    allk = [k for k in rows[0][1]]
    final = rows[-1][1]
    last3 = {c: mean([r[1][c] for r in rows[-3:]]) for c in allk}
    bstep, bper = max(rows, key=lambda r: mean_of(r[1]))  # first maximum, as train_unet and the MONAI script
    mx = {c: max(r[1][c] for r in rows) for c in allk}
    return {"final": final, "last3": last3, "best": bper, "best_step": bstep, "max": mx, "last_step": rows[-1][0],
            "steps": [r[0] for r in rows], "all": rows}


def main():
    warnings.simplefilter("ignore")
    out, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",") if s.strip()]
    sides = ("medlua", "monai")
    runs = {s: {} for s in sides}
    perf = {s: {} for s in sides}
    classes = None
    for seed in seeds:
        d = os.path.join(out, f"seed{seed}")
        for side in sides:
            rows = read_vals(os.path.join(d, side, "metrics.csv"))
            if not rows:
                sys.exit(f"dice_parity_summary: no validation rows in {d}/{side}/metrics.csv")
            cl = sorted((k for k in rows[0][1] if ":" not in k and k != "fg_kept"), key=lambda c: (c != "vertebrae", c))
            classes = classes or cl
            runs[side][seed] = per_run(rows, classes)
        m = last_line(os.path.join(d, "medlua.log"), "medlua fit")
        p = last_line(os.path.join(d, "monai.log"), "monai summary")
        perf["medlua"][seed] = {"s_per_step": field(m, "s_per_step"), "rss": field(m, "peak_rss_mb"), "val_s": field(m, "val_s")}
        perf["monai"][seed] = {"s_per_step": field(p, "s_per_step"), "rss": field(p, "peak_rss_mb"), "val_s": field(p, "val_s"),
                               "worker_rss": field(p, "worker_peak_rss_mb")}
    L = []
    w = L.append
    n = len(seeds)
    info = os.path.join(out, "run_info.txt")
    if os.path.exists(info):
        w("## Runs\n")
        w("```")
        w(open(info).read().rstrip())
        w("```\n")
    w(f"## Per seed ({n} seeds; Dice per class: " + " / ".join(classes) + ")\n")
    w("| seed | side | final (step) | mean of last 3 | best (step) | max per class | s/step | peak RSS MB |")
    w("|---|---|---|---|---|---|---|---|")
    fmt = lambda per: " / ".join(f"{per[c]:.3f}" for c in classes)
    for seed in seeds:
        for side in sides:
            r, pf = runs[side][seed], perf[side][seed]
            w(f"| {seed} | {side} | {fmt(r['final'])} ({r['last_step']}) | {fmt(r['last3'])} | {fmt(r['best'])} "
              f"({r['best_step']}) | {fmt(r['max'])} | {pf['s_per_step']:.3f} | {pf['rss']:.0f} |")
    w("")
    w("## Every validation (Dice " + " / ".join(classes) + "; medlua | MONAI)\n")
    steps = runs["medlua"][seeds[0]]["steps"]
    w("| step | " + " | ".join(f"seed {s} medlua | seed {s} MONAI" for s in seeds) + " |")
    w("|---|" + "---|---|" * n)
    for i, st in enumerate(steps):
        cells = []
        for s in seeds:
            for side in sides:
                rr = runs[side][s]["all"]
                cells.append(fmt(rr[i][1]) if i < len(rr) and rr[i][0] == st else "-")
        w(f"| {st} | " + " | ".join(cells) + " |")
    w("")
    w(f"## Summary: mean +- sd over {n} seeds\n")
    w("| metric | class | medlua | MONAI | medlua - MONAI (+- SE) | Welch t | p | within 0.02 or better |")
    w("|---|---|---|---|---|---|---|---|")
    verdict = {}
    raw = ["raw:" + c for c in classes] if all("raw:" + c in runs[sd_][s]["final"] for sd_ in sides for s in seeds
                                                 for c in classes) else []
    groups = [("final", classes), ("last3", classes), ("best", classes), ("max", classes)]
    if raw:
        groups += [("final", raw), ("last3", raw), ("max", raw)]
    shown = False
    for metric, cls in groups:
        if cls is raw and not shown:
            shown = True
            w("| *diagnostic, not the compared figure: Dice before postprocessing (raw:)* | | | | | | | |")
        for c in cls + ["mean" if cls is classes else "raw:mean"]:
            get = (lambda r: mean([r[metric][k] for k in cls])) if c.endswith("mean") else (lambda r: r[metric][c])
            vm = [get(runs["medlua"][s]) for s in seeds]
            vp = [get(runs["monai"][s]) for s in seeds]
            mm, mp, sm, sp = mean(vm), mean(vp), sd(vm), sd(vp)
            diff = mm - mp
            se = math.sqrt(sm ** 2 / n + sp ** 2 / n) if n > 1 else float("nan")
            t = diff / se if se > 0 else float("nan")
            pv = float("nan")
            if stats is not None and n > 1:
                pv = float(stats.ttest_ind(vm, vp, equal_var=False).pvalue)
            ok = diff >= -0.02
            verdict[(metric, c)] = (diff, se, ok)
            w(f"| {metric} | {c} | {mm:.3f} +- {sm:.3f} | {mp:.3f} +- {sp:.3f} | {diff:+.3f} +- {se:.3f} | {t:+.2f} | "
              f"{pv:.2f} | {'yes' if ok else 'NO'} |")
    w("")
    w("| cost (training loop, without validation) | medlua | MONAI | ratio |")
    w("|---|---|---|---|")
    for key, name in (("s_per_step", "s per training step"), ("rss", "peak RSS, MB (MONAI: main process)"),
                      ("val_s", "all validation passes, s")):
        vm = [perf["medlua"][s][key] for s in seeds]
        vp = [perf["monai"][s][key] for s in seeds]
        d = 3 if key == "s_per_step" else (1 if key == "val_s" else 0)
        w(f"| {name} | {mean(vm):.{d}f} +- {sd(vm):.{d}f} | {mean(vp):.{d}f} +- {sd(vp):.{d}f} | {mean(vm) / mean(vp):.2f} |")
    if raw:
        w("\n## Diagnostic: what the postprocessing (largest foreground component) does at each validation\n")
        w("Per validation: val Dice (after postprocessing) / raw Dice (before), mean over classes, and the share "
          "of predicted foreground voxels kept (fg_kept).\n")
        w("| side | validations | both classes 0 after pp | of those, raw mean Dice | fg_kept < 0.5 | "
          "mean val Dice | mean raw Dice | sd over validations (val / raw) |")
        w("|---|---|---|---|---|---|---|---|")
        for side in sides:
            allrows = [r[1] for s in seeds for r in runs[side][s]["all"]]
            zero = [r for r in allrows if all(r[c] == 0 for c in classes)]
            vm = [mean([r[c] for c in classes]) for r in allrows]
            vr = [mean([r["raw:" + c] for c in classes]) for r in allrows]
            w(f"| {side} | {len(allrows)} | {len(zero)} | "
              f"{mean([mean([r['raw:' + c] for c in classes]) for r in zero]):.3f} | "
              f"{sum(1 for r in allrows if r.get('fg_kept', 1) < 0.5)} | {mean(vm):.3f} | {mean(vr):.3f} | "
              f"{sd(vm):.3f} / {sd(vr):.3f} |")
        w("\nEvery validation, side by side (val Dice " + " / ".join(classes) + " -> raw Dice, fg_kept):\n")
        w("| seed | step | medlua | MONAI |")
        w("|---|---|---|---|")
        for s in seeds:
            for i, st in enumerate(runs["medlua"][s]["steps"]):
                cells = []
                for side in sides:
                    rr = runs[side][s]["all"]
                    if i < len(rr) and rr[i][0] == st:
                        r = rr[i][1]
                        cells.append(fmt(r) + " -> " + " / ".join(f"{r['raw:' + c]:.3f}" for c in classes)
                                     + f", {r.get('fg_kept', float('nan')):.2f}")
                    else:
                        cells.append("-")
                w(f"| {s} | {st} | " + " | ".join(cells) + " |")
    wr = [perf["monai"][s]["worker_rss"] for s in seeds]
    w(f"\n(MONAI's DataLoader worker processes peaked at {mean(wr):.0f} MB RSS each, mostly shared with the main process.)")
    text = "\n".join(L) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
