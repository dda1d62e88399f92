"""Per-call overhead of a tiny elementwise op in PyTorch (peer of bench/overhead.lua)."""
import sys, time, torch
n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
a, b = torch.ones(1), torch.ones(1)
ag = torch.ones(1, requires_grad=True)
def bench(name, f):
    f()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) / n)
    print(f"torch  {name:28s} {best*1e6:.3f} us/call")
bench("a + b (1 elem)", lambda: a + b)
bench("a.add(b) (1 elem)", lambda: a.add(b))
bench("a * 2 (1 elem)", lambda: a * 2)
bench("ag * b (grad recorded)", lambda: ag * b)
