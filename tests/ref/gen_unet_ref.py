#!/usr/bin/env python3
"""Golden values for medlua's nn.UNet (lua/medlua/nn.lua) from monai.networks.nets.UNet (MONAI 1.6.1).

Run with the benchmark venv (torch 2, MONAI, safetensors):
    bench/venv/bin/python tests/ref/gen_unet_ref.py

Writes tests/ref/unet_monai_ref.safetensors with safetensors.torch.save_file. For every config <cfg>
(see CONFIGS; the metadata entry "configs" is the same list as JSON: name, UNet keyword arguments,
input shape, names of the parameters whose gradients are stored):

    <cfg>/<key>          the model's state_dict, every key exactly as MONAI names it (float32
                         weights, int64 num_batches_tracked), taken after a few train-mode forwards on
                         random data so the BatchNorm running statistics are not 0/1
    <cfg>:x              the input (float32)
    <cfg>:out_eval       model.eval()(x)                                        (float64)
    <cfg>:out_train      model.train()(x), batch statistics (the first forward after eval)  (float64)
    <cfg>:after/<key>    every BatchNorm buffer after that train-mode forward (running_mean,
                         running_var as float64, num_batches_tracked int64)
    <cfg>:r              a random cotangent (float32)
    <cfg>:grad_x         d sum(out_train * r) / dx                               (float64)
    <cfg>:grad/<key>     d sum(out_train * r) / d parameter, for the parameters named in the config

The references are computed in float64 from the float32 weights and inputs (the model is copied and
converted with .double()), so they are the exact answer for the stored float32 numbers and a float32
implementation is compared against them with a relative tolerance. Each config is seeded from its name.
Reruns give the same tensors; the order of the file's JSON header may differ (safetensors writes its
metadata from a hash map).
tests/lua/test_unet_golden.lua builds the same nn.UNet, loads <cfg>/* by name and replays the checks.
"""
import copy
import json
import os
import sys
import zlib

import torch
from safetensors.torch import save_file

import monai
from monai.networks.nets import UNet

assert monai.__version__ == "1.6.1", monai.__version__
assert sys.byteorder == "little"
torch.set_num_threads(1)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "unet_monai_ref.safetensors")

CONFIGS = [
    {"name": "unet3d_batch_res2",
     "kwargs": dict(spatial_dims=3, in_channels=1, out_channels=3, channels=[8, 16, 32, 64], strides=[2, 2, 2],
                    num_res_units=2, norm="batch", dropout=0.0),
     "input": [2, 1, 16, 24, 8],
     "grad_params": ["model.0.conv.unit0.conv.weight", "model.0.conv.unit0.adn.N.weight",
                     "model.0.conv.unit0.adn.N.bias", "model.0.conv.unit1.adn.A.weight", "model.0.residual.weight",
                     "model.0.residual.bias", "model.1.submodule.1.submodule.1.submodule.conv.unit1.conv.bias",
                     "model.1.submodule.1.submodule.1.submodule.conv.unit1.adn.N.weight",
                     "model.1.submodule.1.submodule.1.submodule.residual.weight",
                     "model.1.submodule.1.submodule.2.0.conv.weight", "model.1.submodule.2.1.conv.unit0.adn.A.weight",
                     "model.2.0.conv.weight", "model.2.0.adn.N.weight", "model.2.1.conv.unit0.conv.weight",
                     "model.2.1.conv.unit0.conv.bias"]},
    {"name": "unet2d_instance_res0",
     "kwargs": dict(spatial_dims=2, in_channels=2, out_channels=2, channels=[4, 8, 16, 32], strides=[2, 1, 2],
                    num_res_units=0, norm="instance", dropout=0.0),
     "input": [2, 2, 24, 16],
     "grad_params": ["model.0.conv.weight", "model.0.conv.bias", "model.0.adn.A.weight",
                     "model.1.submodule.0.conv.weight", "model.1.submodule.1.submodule.1.submodule.conv.weight",
                     "model.1.submodule.1.submodule.2.conv.weight", "model.1.submodule.2.conv.weight",
                     "model.2.conv.weight", "model.2.conv.bias"]},
    {"name": "unet2d_instance_res1",
     "kwargs": dict(spatial_dims=2, in_channels=1, out_channels=4, channels=[4, 8, 16], strides=[2, 2],
                    num_res_units=1, norm="instance", dropout=0.0),
     "input": [2, 1, 16, 20],
     "grad_params": ["model.0.conv.unit0.conv.weight", "model.0.conv.unit0.adn.A.weight", "model.0.residual.weight",
                     "model.1.submodule.0.residual.weight", "model.1.submodule.1.submodule.residual.weight",
                     "model.1.submodule.1.submodule.residual.bias",
                     "model.2.0.conv.weight", "model.2.1.conv.unit0.conv.weight", "model.2.1.conv.unit0.conv.bias"]},
]


def seeded(name):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def make_case(cfg, out):
    name, g = cfg["name"], seeded(cfg["name"])
    net = UNet(**cfg["kwargs"]).float()
    with torch.no_grad():
        # random weights: convolutions as PyTorch initialises them (from this generator), norms and
        # PReLU slopes away from their 1/0/0.25 defaults so a mix-up of parameters shows
        for key, p in net.named_parameters():
            if key.endswith("adn.A.weight"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.05)
            elif ".adn.N." in key and key.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif ".adn.N." in key and key.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                fan_in = p.shape[1] * p[0, 0].numel() if p.dim() > 1 else None
                if key.endswith("bias"):
                    w = dict(net.named_parameters())[key[:-4] + "weight"]
                    fan_in = w.shape[1] * w[0, 0].numel()
                bound = 1.0 / fan_in ** 0.5
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
        # non-trivial running statistics: three train-mode forwards on shifted, scaled random data
        net.train()
        for _ in range(3):
            net(torch.randn(cfg["input"], generator=g) * 1.5 + 0.3)
    sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    for k, v in sd.items():
        out[f"{name}/{k}"] = v

    x = torch.randn(cfg["input"], generator=g)
    r = torch.randn([cfg["input"][0], cfg["kwargs"]["out_channels"]] + cfg["input"][2:], generator=g)
    out[f"{name}:x"], out[f"{name}:r"] = x.contiguous(), r.contiguous()

    ref = copy.deepcopy(net).double()
    ref.eval()
    with torch.no_grad():
        out[f"{name}:out_eval"] = ref(x.double()).contiguous()
    ref.train()
    xd = x.double().requires_grad_(True)
    y = ref(xd)
    out[f"{name}:out_train"] = y.detach().contiguous()
    for k, v in ref.state_dict().items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            out[f"{name}:after/{k}"] = v.detach().clone().contiguous()
    (y * r.double()).sum().backward()
    out[f"{name}:grad_x"] = xd.grad.contiguous()
    params = dict(ref.named_parameters())
    for k in cfg["grad_params"]:
        assert k in params, (name, k)
        out[f"{name}:grad/{k}"] = params[k].grad.contiguous()
    return sum(p.numel() for p in net.parameters())


def main():
    out = {}
    meta = []
    for cfg in CONFIGS:
        n = make_case(cfg, out)
        meta.append({"name": cfg["name"], "kwargs": cfg["kwargs"], "input": cfg["input"],
                     "grad_params": cfg["grad_params"], "num_parameters": n})
        print(f"{cfg['name']}: {n} parameters")
    save_file(out, OUT, metadata={"configs": json.dumps(meta), "monai": monai.__version__,
                                  "torch": torch.__version__})
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
