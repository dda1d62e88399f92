"""MONAI sliding-window inference (the peer of bench/sliding_window.lua): same U-Net, volume, roi, blending."""
import argparse, math, time
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from monai.networks.nets import UNet

p = argparse.ArgumentParser()
p.add_argument("--x", type=int, default=512)
p.add_argument("--y", type=int, default=512)
p.add_argument("--z", type=int, default=300)
p.add_argument("--roi", type=int, default=96)
p.add_argument("--sw", type=int, default=4)
p.add_argument("--overlap", type=float, default=0.25)
p.add_argument("--mode", default="gaussian")
p.add_argument("--threads", type=int, default=0)
p.add_argument("--one", action="store_true", help="time one predictor batch of sw windows and extrapolate")
p.add_argument("--reps", type=int, default=3)
p.add_argument("--no-net", action="store_true", help="no network: the predictor repeats the window to 3 channels")
a = p.parse_args()
if a.threads > 0:
    torch.set_num_threads(a.threads)


def peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0


torch.manual_seed(0)
net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
           strides=(2, 2, 2, 2), num_res_units=2, norm="batch")
net.eval()
R = a.roi
img = (max(a.x, R), max(a.y, R), max(a.z, R))
nwin = len(dense_patch_slices(img, (R,) * 3, _get_scan_interval(img, (R,) * 3, 3, (a.overlap,) * 3)))
nbatch = math.ceil(nwin / a.sw)

with torch.no_grad():
    if a.one:
        xb = torch.randn(a.sw, 1, R, R, R)
        net(xb)
        times = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            net(xb)
            times.append(time.perf_counter() - t0)
        times.sort()
        t = times[(len(times) - 1) // 2]
        print(f"torch sliding_window one_batch threads={torch.get_num_threads()} windows={nwin} batches={nbatch} "
              f"batch_s={t:.3f} extrapolated_forward_s={t * nbatch:.1f} peak_rss_mb={peak_rss_mb():.0f}")
    else:
        x = torch.randn(1, 1, a.x, a.y, a.z)
        fwd = 0.0

        def predictor(t):
            global fwd
            t0 = time.perf_counter()
            y = t.repeat(1, 3, 1, 1, 1) if a.no_net else net(t)
            fwd += time.perf_counter() - t0
            return y

        t0 = time.perf_counter()
        out = sliding_window_inference(x, (R,) * 3, a.sw, predictor, overlap=a.overlap, mode=a.mode)
        total = time.perf_counter() - t0
        print(f"torch sliding_window threads={torch.get_num_threads()} volume={a.x}x{a.y}x{a.z} windows={nwin} "
              f"total_s={total:.1f} forward_s={fwd:.1f} other_s={total - fwd:.1f} peak_rss_mb={peak_rss_mb():.0f} "
              f"out_mean={out.mean().item():.5f} monai={__import__('monai').__version__} torch={torch.__version__}")
