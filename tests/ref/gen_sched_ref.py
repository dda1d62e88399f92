#!/usr/bin/env python3
"""Golden learning-rate sequences and optimizer trajectories for tests/lua/test_sched.lua.

Run with the bench venv (PyTorch 2 + MONAI):

    bench/venv/bin/python tests/ref/gen_sched_ref.py      # writes tests/ref/sched_ref.json

Each scheduler case records the learning rate the scheduler leaves in the optimizer right after it is
built (index 0) and after each of `steps` calls of `scheduler.step()` (PyTorch order: the optimizer
steps first; here there are no gradients, so only the schedule matters). OneCycleLR cases also record
the momentum (SGD) or beta1 (Adam) after each step. Optimizer cases record float64 parameters after
each step of a fixed differentiable loss, with and without a scheduler. Floats are written with
repr() so the JSON round trip is exact.
"""
import json
import math
import os
import sys

import torch
from torch.optim import lr_scheduler as L

try:
    from monai.optimizers import WarmupCosineSchedule
except ImportError:  # pragma: no cover
    WarmupCosineSchedule = None

torch.set_default_dtype(torch.float64)


def dummy_opt(kind="sgd", lr=0.1, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    if kind == "sgd":
        return torch.optim.SGD([p], lr=lr, **kw)
    if kind == "adam":
        return torch.optim.Adam([p], lr=lr, **kw)
    raise ValueError(kind)


def lr_of(opt):
    return float(opt.param_groups[0]["lr"])


def run_sched(name, make, steps, opt_kind="sgd", opt_kw=None, lr=0.1, metrics=None, momentum=False):
    opt = dummy_opt(opt_kind, lr=lr, **(opt_kw or {}))
    sched, args = make(opt)
    lrs, moms = [lr_of(opt)], []

    def mom():
        g = opt.param_groups[0]
        return float(g["betas"][0]) if "betas" in g else float(g["momentum"])

    if momentum:
        moms.append(mom())
    for i in range(steps):
        opt.step()
        if metrics is not None:
            sched.step(metrics[i])
        else:
            sched.step()
        lrs.append(lr_of(opt))
        if momentum:
            moms.append(mom())
        assert abs(sched.get_last_lr()[0] - lrs[-1]) == 0
    case = {"name": name, "lr": lr, "optimizer": opt_kind, "optimizer_opts": opt_kw or {}, "args": args,
            "steps": steps, "lrs": lrs}
    if metrics is not None:
        case["metrics"] = metrics
    if momentum:
        case["momentum"] = moms
    return case


def sched_cases():
    cases = []
    cases.append(run_sched("StepLR step_size=3 gamma=0.5", lambda o: (L.StepLR(o, step_size=3, gamma=0.5),
                                                                       {"step_size": 3, "gamma": 0.5}), 20))
    cases.append(run_sched("StepLR default gamma", lambda o: (L.StepLR(o, step_size=4), {"step_size": 4}), 13,
                           lr=0.05))
    cases.append(run_sched("MultiStepLR repeated milestone",
                           lambda o: (L.MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3),
                                      {"milestones": [2, 5, 5, 9], "gamma": 0.3}), 15))
    cases.append(run_sched("CosineAnnealingLR T_max=10 eta_min past T_max",
                           lambda o: (L.CosineAnnealingLR(o, T_max=10, eta_min=0.001),
                                      {"T_max": 10, "eta_min": 0.001}), 45))
    cases.append(run_sched("CosineAnnealingLR T_max=7", lambda o: (L.CosineAnnealingLR(o, T_max=7), {"T_max": 7}),
                           10, lr=3e-4))
    # nnU-Net's PolyLRScheduler is lr0 * (1 - t / T) ** 0.9 (closed form); PyTorch's PolynomialLR is the
    # same schedule computed recursively. The closed form is written as "lrs_closed".
    for T, power, steps in ((20, 0.9, 25), (7, 2.0, 9)):
        c = run_sched(f"PolyLR total_iters={T} power={power}",
                      lambda o, T=T, power=power: (L.PolynomialLR(o, total_iters=T, power=power),
                                                   {"total_iters": T, "power": power}), steps, lr=0.01)
        c["lrs_closed"] = [0.01 * (1 - min(t, T) / T) ** power for t in range(steps + 1)]
        cases.append(c)
    if WarmupCosineSchedule is not None:
        cases.append(run_sched("WarmupCosineSchedule defaults",
                               lambda o: (WarmupCosineSchedule(o, warmup_steps=5, t_total=30),
                                          {"warmup_steps": 5, "t_total": 30}), 30))
        cases.append(run_sched("WarmupCosineSchedule multiplier end_lr cycles",
                               lambda o: (WarmupCosineSchedule(o, warmup_steps=4, t_total=20, warmup_multiplier=0.1,
                                                               end_lr=0.02, cycles=1.0),
                                          {"warmup_steps": 4, "t_total": 20, "warmup_multiplier": 0.1,
                                           "end_lr": 0.02, "cycles": 1.0}), 24))
    metrics = [1.0, 0.9, 0.95, 0.95, 0.96, 0.97, 0.89, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9,
               0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.5]
    cases.append(run_sched("ReduceLROnPlateau min rel cooldown min_lr",
                           lambda o: (L.ReduceLROnPlateau(o, mode="min", factor=0.5, patience=2, cooldown=1,
                                                          min_lr=0.01),
                                      {"mode": "min", "factor": 0.5, "patience": 2, "cooldown": 1, "min_lr": 0.01}),
                           len(metrics), metrics=metrics))
    m2 = [0.1, 0.2, 0.2005, 0.2009, 0.21, 0.2, 0.2, 0.3, 0.29, 0.28, 0.27, 0.26, 0.25]
    cases.append(run_sched("ReduceLROnPlateau max abs",
                           lambda o: (L.ReduceLROnPlateau(o, mode="max", factor=0.1, patience=1,
                                                          threshold=1e-3, threshold_mode="abs"),
                                      {"mode": "max", "factor": 0.1, "patience": 1, "threshold": 1e-3,
                                       "threshold_mode": "abs"}), len(m2), metrics=m2))
    m3 = [5.0] * 40
    cases.append(run_sched("ReduceLROnPlateau defaults eps stop",
                           lambda o: (L.ReduceLROnPlateau(o), {}), len(m3), lr=1e-5, metrics=m3))
    cases.append(run_sched("OneCycleLR SGD cos",
                           lambda o: (L.OneCycleLR(o, max_lr=0.5, total_steps=25), {"max_lr": 0.5, "total_steps": 25}),
                           25, opt_kw={"momentum": 0.9}, momentum=True))
    cases.append(run_sched("OneCycleLR Adam linear three_phase",
                           lambda o: (L.OneCycleLR(o, max_lr=0.01, total_steps=30, pct_start=0.25,
                                                   anneal_strategy="linear", div_factor=10.0,
                                                   final_div_factor=100.0, three_phase=True),
                                      {"max_lr": 0.01, "total_steps": 30, "pct_start": 0.25,
                                       "anneal_strategy": "linear", "div_factor": 10.0,
                                       "final_div_factor": 100.0, "three_phase": True}),
                           30, opt_kind="adam", opt_kw={"betas": [0.9, 0.99]}, momentum=True))
    cases.append(run_sched("OneCycleLR epochs x steps_per_epoch custom momentum",
                           lambda o: (L.OneCycleLR(o, max_lr=1.0, epochs=3, steps_per_epoch=7, pct_start=0.4,
                                                   base_momentum=0.8, max_momentum=0.9),
                                      {"max_lr": 1.0, "epochs": 3, "steps_per_epoch": 7, "pct_start": 0.4,
                                       "base_momentum": 0.8, "max_momentum": 0.9}),
                           21, opt_kw={"momentum": 0.5}, momentum=True))
    return cases


def loss_fn(p):
    # a smooth non-quadratic loss with per-element weights, easy to write in medlua:
    #   sum(w * p^2 + p^3 * 0.1 - p)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    return (w * p * p + p * p * p * 0.1 - p).sum()


P0 = [0.5, -1.0, 2.0, 0.25]


def run_opt(name, make_opt, steps, make_sched=None, sched_args=None):
    p = torch.nn.Parameter(torch.tensor(P0))
    opt, opt_name, opt_args = make_opt([p])
    sched = make_sched(opt) if make_sched else None
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(p).backward()
        opt.step()
        if sched:
            sched.step()
        traj.append([float(v) for v in p.detach()])
    case = {"name": name, "optimizer": opt_name, "opts": opt_args, "p0": P0, "steps": steps, "params": traj}
    if sched_args:
        case["scheduler"] = sched_args
    return case


def opt_cases():
    cases = []
    sgd_variants = [
        ("SGD plain", {"lr": 0.05}),
        ("SGD momentum dampening", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
        ("SGD nesterov weight_decay", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
        ("SGD maximize weight_decay", {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.1, "maximize": True}),
    ]
    for name, kw in sgd_variants:
        cases.append(run_opt(name, lambda ps, kw=kw: (torch.optim.SGD(ps, **kw), "SGD", kw), 6))
    adam_variants = [
        ("Adam weight_decay", "Adam", {"lr": 0.05, "betas": [0.8, 0.95], "weight_decay": 0.1}),
        ("AdamW defaults", "AdamW", {"lr": 0.05}),
        ("AdamW weight_decay eps", "AdamW", {"lr": 0.02, "betas": [0.85, 0.9], "eps": 1e-6, "weight_decay": 0.3}),
    ]
    for name, cls, kw in adam_variants:
        cases.append(run_opt(name, lambda ps, cls=cls, kw=kw: (getattr(torch.optim, cls)(
            ps, **{k: (tuple(v) if k == "betas" else v) for k, v in kw.items()}), cls, kw), 6))
    # optimizer + scheduler: momentum cycling must reach the update rule
    cases.append(run_opt("SGD nesterov + OneCycleLR",
                         lambda ps: (torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), "SGD",
                                     {"lr": 0.1, "momentum": 0.9, "nesterov": True}), 10,
                         lambda o: L.OneCycleLR(o, max_lr=0.2, total_steps=10),
                         {"type": "OneCycleLR", "max_lr": 0.2, "total_steps": 10}))
    cases.append(run_opt("Adam + OneCycleLR beta1",
                         lambda ps: (torch.optim.Adam(ps, lr=0.1), "Adam", {"lr": 0.1}), 10,
                         lambda o: L.OneCycleLR(o, max_lr=0.05, total_steps=10, anneal_strategy="linear"),
                         {"type": "OneCycleLR", "max_lr": 0.05, "total_steps": 10, "anneal_strategy": "linear"}))
    cases.append(run_opt("AdamW + CosineAnnealingLR",
                         lambda ps: (torch.optim.AdamW(ps, lr=0.05), "AdamW", {"lr": 0.05}), 8,
                         lambda o: L.CosineAnnealingLR(o, T_max=8, eta_min=0.001),
                         {"type": "CosineAnnealingLR", "T_max": 8, "eta_min": 0.001}))
    return cases


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sched_ref.json")
    ref = {
        "generator": "tests/ref/gen_sched_ref.py",
        "torch": torch.__version__,
        "monai": __import__("monai").__version__ if WarmupCosineSchedule is not None else None,
        "loss": "sum(w * p^2 + 0.1 * p^3 - p), w = [1, 2, 0.5, 3]",
        "schedulers": sched_cases(),
        "optimizers": opt_cases(),
    }
    with open(out, "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    print(f"wrote {out}: {len(ref['schedulers'])} scheduler cases, {len(ref['optimizers'])} optimizer cases")


if __name__ == "__main__":
    sys.exit(main())
