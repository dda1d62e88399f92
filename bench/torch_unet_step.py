"""MONAI 3D U-Net train step (the peer of bench/unet_step.lua): same network, batch, loss, optimizer."""
import argparse, resource, time
import torch
from monai.networks.nets import UNet

p = argparse.ArgumentParser()
p.add_argument("--size", type=int, default=96)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--warmup", type=int, default=1)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (bench/bench_gpu.sh; cudnn.benchmark on)")
a = p.parse_args()
gpu = a.device != "cpu"
if gpu:
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False  # medlua's default: no TF32
    torch.backends.cudnn.allow_tf32 = False
if a.threads > 0:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256),
           strides=(2, 2, 2, 2), num_res_units=2, norm="batch")
net = net.to(a.device)
opt = torch.optim.Adam(net.parameters(), lr=1e-4)
x = torch.randn(a.batch, 1, a.size, a.size, a.size).to(a.device)
y = torch.randint(0, 3, (a.batch, a.size, a.size, a.size)).to(a.device)
lossf = torch.nn.CrossEntropyLoss()
times = []
for i in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = lossf(net(x), y)
    loss.backward()
    opt.step()
    if gpu:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if i >= a.warmup:
        times.append(dt)
times.sort()
med = times[(len(times) - 1) // 2]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"torch unet3d params={sum(p.numel() for p in net.parameters())} threads={torch.get_num_threads()} "
      f"step_ms={med*1000:.1f} min_ms={times[0]*1000:.1f} peak_rss_mb={rss:.0f} loss={loss.item():.4f} "
      f"torch={torch.__version__}" +
      (f" device={a.device} peak_gpu_mb={torch.cuda.max_memory_allocated() / 2**20:.0f}" if gpu else ""))
