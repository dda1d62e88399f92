#!/usr/bin/python3
"""PyTorch CPU counterpart of bench/bench_kernels.c: same problems, same output lines.

  matmul 2048^3 f32; conv3d 32->32 3x3x3 padding 1 on [1,32,64,64,64] f32 forward and
  forward+backward (data + weights + bias). GFLOP/s from the median of several timed runs
  after one warm-up.

Run with Debian's python3-torch (or any torch): /usr/bin/python3 bench/torch_kernels.py [--runs N] [--threads N]
(threads default: OMP_NUM_THREADS, else 2).
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F


def median(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def report(what, who, flops, times):
    m = median(times)
    print("%-58s %-10s %8.1f GFLOP/s  (median %.2f ms of %d)" % (what, who, flops / m * 1e-9, m * 1e3, len(times)),
          flush=True)


def timed(fn, runs):
    fn()  # warm-up
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="timed runs per problem (median reported)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args()
    runs, threads = max(1, args.runs), max(1, args.threads)
    torch.set_num_threads(threads)
    print("torch %s kernels: %d threads, %d timed runs each" % (torch.__version__, torch.get_num_threads(), runs))

    n = 2048
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    report("matmul 2048x2048x2048 f32", "torch", 2.0 * n * n * n, timed(lambda: torch.matmul(a, b), runs))

    x = torch.randn(1, 32, 64, 64, 64)
    w = torch.randn(32, 32, 3, 3, 3)
    bias = torch.randn(32)
    fl = 2.0 * 32 * 32 * 27 * 64.0 * 64 * 64
    with torch.no_grad():
        report("conv3d 32->32 k3 p1 [1,32,64,64,64] f32 forward", "torch", fl,
               timed(lambda: F.conv3d(x, w, bias, padding=1), runs))
    x.requires_grad_(True)
    w.requires_grad_(True)
    bias.requires_grad_(True)
    g = torch.randn(1, 32, 64, 64, 64)

    def fwd_bwd():
        y = F.conv3d(x, w, bias, padding=1)
        y.backward(g)
        x.grad = None
        w.grad = None
        bias.grad = None

    report("conv3d 32->32 k3 p1 [1,32,64,64,64] f32 forward+backward", "torch", 3 * fl, timed(fwd_bwd, runs))


if __name__ == "__main__":
    main()
