#!/usr/bin/env python3
"""Generate medlua's golden reference files from PyTorch (CPU, float64).

    /usr/bin/python3 tests/ref/gen_ref.py            # golden_*.safetensors (needs torch)
    tests/ref/venv/bin/python tests/ref/gen_ref.py   # same, plus interop_torch.safetensors written
                                                     # by the real safetensors.torch.save_file and a
                                                     # cross-check of every golden file with it

Every golden file holds, for each case `<case>`:
    <case>.<input>        the op's inputs (float64; class-index targets int64)
    <case>.out            the forward output
    <case>.r              a random cotangent shaped like out
    <case>.grad_<input>   d sum(out * r) / d input, for each differentiable input
    <case>.<state>_after  in-place updated state (batch_norm running stats)
and a metadata entry `<case>` whose value is a JSON string describing the call:
    {"op": "conv3d",                        # medlua.F function name
     "args": [{"tensor": "x"}, {"tensor": "w"}, {"value": null},
              {"opts": {"stride": [2, 2, 2]}, "tensor_opts": {"weight": "w"}}],
     "grads": ["x", "w"],                   # inputs with a grad_<name> tensor
     "after": {"running_mean": "running_mean_after"}}
so tests/lua/test_golden.lua can replay every case with no per-op code: positional arguments are
tensors (by input name), plain JSON values (null = nil), or an options table (plain values plus
tensors by input name). The files are written by the small safetensors writer below (json +
struct), independent of the safetensors package.
"""
import json
import math
import os
import sys
import zlib

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))

sys.path.insert(0, HERE)
from st_io import st_load_torch as st_load, st_save_torch as st_save  # noqa: E402


def replay(path):
    """Re-run every case of a written golden file from its JSON call description alone, calling
    torch.nn.functional with the medlua option names (which are PyTorch's), and compare with the
    stored output, gradients and updated state. This checks the descriptions test_golden.lua uses."""
    ts, meta = st_load(path)
    n = 0
    for case, text in meta.items():
        if case == "generator":
            continue
        spec = json.loads(text)
        xs = {}

        def inp(name):
            if name not in xs:
                xs[name] = ts[f"{case}.{name}"].clone()
                if name in spec["grads"]:
                    xs[name].requires_grad_(True)
            return xs[name]

        args, kwargs = [], {}
        for a in spec["args"]:
            if "tensor" in a:
                args.append(inp(a["tensor"]))
            elif "opts" in a:
                kwargs = dict(a["opts"])
                kwargs.update({k: inp(v) for k, v in a["tensor_opts"].items()})
            else:
                args.append(a["value"])
        for k, v in list(kwargs.items()):
            if isinstance(v, list) and k in ("stride", "padding", "dilation", "output_padding", "kernel_size", "size"):
                kwargs[k] = tuple(v)
        for g in spec["grads"]:
            inp(g)
        out = getattr(F, spec["op"])(*args, **kwargs)
        assert torch.equal(out, ts[f"{case}.out"]), f"{case}: replayed output differs"
        for k, stored in spec["after"].items():
            assert torch.equal(xs[k].detach(), ts[f"{case}.{stored}"]), f"{case}: {k} after differs"
        if spec["grads"]:
            (out * ts[f"{case}.r"]).sum().backward()
            for g in spec["grads"]:
                got = xs[g].grad if xs[g].grad is not None else torch.zeros_like(xs[g])
                assert torch.equal(got, ts[f"{case}.grad_{g}"]), f"{case}: replayed grad_{g} differs"
        n += 1
    return n


# ------------------------------------------------------------------ golden case collection
class Golden:
    def __init__(self, fname):
        self.fname = fname
        self.tensors = {}
        self.meta = {"generator": f"tests/ref/gen_ref.py, torch {torch.__version__}, float64, CPU"}

    def case(self, name, op, args, fn, inputs, grads=(), after=None):
        """args: the medlua call description (see the module docstring).
        fn(xs) runs the op in PyTorch on the dict xs (clones of inputs, grads enabled as listed)
        and returns the output; after maps input name -> stored name for in-place updated inputs."""
        assert name not in self.meta, name
        xs = {}
        for k, v in inputs.items():
            c = v.detach().clone()
            if k in grads:
                c.requires_grad_(True)
            xs[k] = c
        out = fn(xs)
        r = torch.randn(out.shape, dtype=out.dtype)
        if grads:
            (out * r).sum().backward()
        for k, v in inputs.items():
            self.tensors[f"{name}.{k}"] = v.detach().clone()
        self.tensors[f"{name}.out"] = out.detach().clone()
        self.tensors[f"{name}.r"] = r
        for k in grads:
            g = xs[k].grad
            assert g is not None, f"{name}: {k} is listed as differentiable but got no gradient"
            self.tensors[f"{name}.grad_{k}"] = g.detach().clone()
        for k, stored in (after or {}).items():
            self.tensors[f"{name}.{stored}"] = xs[k].detach().clone()
        self.meta[name] = json.dumps({"op": op, "args": args, "grads": list(grads), "after": after or {}},
                                     sort_keys=True)

    def write(self):
        path = os.path.join(HERE, self.fname)
        st_save(path, self.tensors, self.meta)
        ncases = len(self.meta) - 1
        print(f"{self.fname}: {ncases} cases, {len(self.tensors)} tensors, {os.path.getsize(path)} bytes")
        return path


def seed(case_name):
    """Seed per case, so that adding or changing one case leaves every other case's data alone."""
    torch.manual_seed(zlib.crc32(case_name.encode("utf-8")))


def T(name):
    return {"tensor": name}


def V(value):
    return {"value": value}


def O(opts=None, **tensor_opts):
    return {"opts": opts or {}, "tensor_opts": tensor_opts}


def randn(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def uniform(lo, hi, *shape):
    return torch.rand(*shape, dtype=torch.float64) * (hi - lo) + lo


def _tup(v, k):
    return list(v) if isinstance(v, (list, tuple)) else [v] * k


# ------------------------------------------------------------------ convolution
def gen_conv():
    g = Golden("golden_conv.safetensors")

    def conv(name, k, x, w, bias, stride=1, padding=0, dilation=1, groups=1):

        seed(name)
        op = f"conv{k}d"
        inputs = {"x": randn(*x), "w": randn(*w)}
        if bias:
            inputs["b"] = randn(w[0])
        opts = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
        fn = getattr(F, op)
        g.case(name, op, [T("x"), T("w"), T("b") if bias else V(None), O(opts)],
               lambda xs: fn(xs["x"], xs["w"], xs.get("b"), stride=stride, padding=padding, dilation=dilation,
                             groups=groups),
               inputs, grads=list(inputs))

    def convt(name, k, x, w, bias, stride=1, padding=0, output_padding=0, dilation=1, groups=1):

        seed(name)
        op = f"conv_transpose{k}d"
        inputs = {"x": randn(*x), "w": randn(*w)}
        if bias:
            inputs["b"] = randn(w[1] * groups)
        opts = {"stride": stride, "padding": padding, "output_padding": output_padding, "dilation": dilation,
                "groups": groups}
        fn = getattr(F, op)
        g.case(name, op, [T("x"), T("w"), T("b") if bias else V(None), O(opts)],
               lambda xs: fn(xs["x"], xs["w"], xs.get("b"), stride=stride, padding=padding,
                             output_padding=output_padding, groups=groups, dilation=dilation),
               inputs, grads=list(inputs))

    conv("conv1d_s2_p1_d2_g2", 1, [2, 4, 11], [6, 2, 3], True, stride=2, padding=1, dilation=2, groups=2)
    conv("conv1d_plain", 1, [1, 3, 8], [2, 3, 4], False)
    conv("conv2d_s21_p10", 2, [2, 3, 7, 8], [4, 3, 3, 2], True, stride=[2, 1], padding=[1, 0])
    conv("conv2d_depthwise_p1", 2, [1, 4, 6, 6], [4, 1, 3, 3], False, padding=1, groups=4)
    conv("conv2d_d2_p2", 2, [1, 2, 9, 9], [3, 2, 3, 3], True, padding=2, dilation=2)
    conv("conv2d_1x1", 2, [2, 5, 3, 4], [3, 5, 1, 1], True)
    conv("conv3d_s2_p1", 3, [1, 2, 6, 5, 7], [3, 2, 3, 3, 3], True, stride=2, padding=1)
    conv("conv3d_g2_d121_p120", 3, [2, 4, 5, 6, 5], [4, 2, 3, 3, 3], False, padding=[1, 2, 0],
         dilation=[1, 2, 1], groups=2)
    conv("conv3d_s212_k2", 3, [1, 3, 5, 6, 6], [2, 3, 2, 2, 3], True, stride=[2, 1, 2])
    convt("conv_transpose1d_s2_p1_op1", 1, [2, 3, 5], [3, 2, 3], True, stride=2, padding=1, output_padding=1)
    convt("conv_transpose2d_s2_p1_op1", 2, [2, 4, 4, 5], [4, 3, 3, 3], True, stride=2, padding=1, output_padding=1)
    convt("conv_transpose2d_g2_d2_s12", 2, [1, 4, 5, 4], [4, 2, 3, 2], True, stride=[1, 2], padding=[2, 1],
          output_padding=[0, 1], dilation=2, groups=2)
    convt("conv_transpose2d_k2_s2", 2, [2, 3, 3, 3], [3, 2, 2, 2], False, stride=2)
    convt("conv_transpose3d_s2_p1_op101", 3, [1, 4, 3, 4, 3], [4, 2, 3, 3, 3], True, stride=2, padding=1,
          output_padding=[1, 0, 1])
    convt("conv_transpose3d_g2_s122_d112", 3, [1, 4, 3, 3, 4], [4, 1, 2, 3, 3], False, stride=[1, 2, 2],
          padding=[0, 1, 1], dilation=[1, 1, 2], groups=2)
    convt("conv_transpose3d_k2_s2", 3, [2, 2, 2, 3, 2], [2, 3, 2, 2, 2], True, stride=2)
    return g.write()


# ------------------------------------------------------------------ pooling
def gen_pool():
    g = Golden("golden_pool.safetensors")

    def maxp(name, k, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):

        seed(name)
        op = f"max_pool{k}d"
        opts = {"kernel_size": kernel_size, "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}
        if stride is not None:
            opts["stride"] = stride
        fn = getattr(F, op)
        g.case(name, op, [T("x"), O(opts)],
               lambda xs: fn(xs["x"], kernel_size, stride=stride, padding=padding, dilation=dilation,
                             ceil_mode=ceil_mode),
               {"x": randn(*x)}, grads=["x"])

    def avgp(name, k, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):

        seed(name)
        op = f"avg_pool{k}d"
        opts = {"kernel_size": kernel_size, "padding": padding, "ceil_mode": ceil_mode,
                "count_include_pad": count_include_pad}
        if stride is not None:
            opts["stride"] = stride
        fn = getattr(F, op)
        g.case(name, op, [T("x"), O(opts)],
               lambda xs: fn(xs["x"], kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                             count_include_pad=count_include_pad),
               {"x": randn(*x)}, grads=["x"])

    def adap(name, k, x, out):

        seed(name)
        op = f"adaptive_avg_pool{k}d"
        fn = getattr(F, op)
        g.case(name, op, [T("x"), V(out)], lambda xs: fn(xs["x"], out), {"x": randn(*x)}, grads=["x"])

    maxp("max_pool1d_k3_s2", 1, [2, 3, 11], 3, stride=2)
    maxp("max_pool2d_k3_s2_p1", 2, [2, 3, 9, 8], 3, stride=2, padding=1)
    maxp("max_pool2d_k32_s2_p10_d12_ceil", 2, [1, 2, 8, 9], [3, 2], stride=2, padding=[1, 0], dilation=[1, 2],
         ceil_mode=True)
    maxp("max_pool2d_k2_default_stride", 2, [1, 3, 6, 7], 2)
    maxp("max_pool3d_k2_s2", 3, [1, 2, 6, 6, 6], 2, stride=2)
    maxp("max_pool3d_k3_s2_p1_ceil", 3, [1, 2, 7, 6, 5], 3, stride=2, padding=1, ceil_mode=True)
    maxp("max_pool3d_k2_s1_d2", 3, [2, 1, 5, 6, 5], 2, stride=1, dilation=2)
    avgp("avg_pool2d_k3_s2_p1", 2, [2, 3, 7, 8], 3, stride=2, padding=1)
    avgp("avg_pool3d_k2_s2", 3, [1, 2, 6, 6, 6], 2, stride=2)
    avgp("avg_pool3d_k3_s2_p1_noinc", 3, [1, 2, 7, 6, 5], 3, stride=2, padding=1, count_include_pad=False)
    avgp("avg_pool3d_k3_s2_p1_ceil", 3, [1, 2, 6, 7, 5], 3, stride=2, padding=1, ceil_mode=True)
    avgp("avg_pool3d_k232_s2_ceil_noinc", 3, [2, 1, 5, 6, 7], [2, 3, 2], stride=2, padding=[1, 1, 0],
         ceil_mode=True, count_include_pad=False)
    adap("adaptive_avg_pool1d_10to4", 1, [2, 3, 10], 4)
    adap("adaptive_avg_pool2d_75to32", 2, [2, 3, 7, 5], [3, 2])
    adap("adaptive_avg_pool3d_574to232", 3, [1, 2, 5, 7, 4], [2, 3, 2])
    adap("adaptive_avg_pool3d_574to354", 3, [2, 1, 5, 7, 4], [3, 5, 4])
    adap("adaptive_avg_pool3d_to1", 3, [2, 3, 4, 3, 5], 1)
    return g.write()


# ------------------------------------------------------------------ normalization
def gen_norm():
    g = Golden("golden_norm.safetensors")

    def bn(name, x, training, affine=True, running=True, momentum=0.1, eps=1e-5):

        seed(name)
        c = x[1]
        inputs = {"x": randn(*x) * 2 + 0.5}
        if running:
            inputs["running_mean"] = randn(c) * 0.1
            inputs["running_var"] = uniform(0.5, 2.0, c)
        if affine:
            inputs["weight"] = uniform(0.5, 1.5, c)
            inputs["bias"] = randn(c)
        topts = {k: k for k in ("weight", "bias") if affine}
        opts = {"training": training, "momentum": momentum, "eps": eps}
        args = [T("x"), T("running_mean") if running else V(None), T("running_var") if running else V(None),
                O(opts, **topts)]
        grads = ["x"] + (["weight", "bias"] if affine else [])
        after = {"running_mean": "running_mean_after", "running_var": "running_var_after"} if running else None
        g.case(name, "batch_norm", args,
               lambda xs: F.batch_norm(xs["x"], xs.get("running_mean"), xs.get("running_var"), xs.get("weight"),
                                       xs.get("bias"), training=training, momentum=momentum, eps=eps),
               inputs, grads=grads, after=after)

    bn("batch_norm2d_train", [4, 3, 5, 6], True)
    bn("batch_norm2d_eval", [4, 3, 5, 6], False)
    bn("batch_norm3d_train_noaffine_m03", [2, 3, 3, 4, 5], True, affine=False, momentum=0.3, eps=1e-3)
    bn("batch_norm3d_eval", [2, 2, 3, 3, 4], False)
    bn("batch_norm1d_train_ncl", [4, 3, 7], True)
    bn("batch_norm1d_train_nc", [6, 4], True)
    bn("batch_norm2d_train_no_running", [3, 2, 4, 4], True, running=False)

    def inorm(name, x, affine, eps=1e-5):

        seed(name)
        c = x[1]
        inputs = {"x": randn(*x) * 1.5 - 0.3}
        if affine:
            inputs["weight"] = uniform(0.5, 1.5, c)
            inputs["bias"] = randn(c)
        topts = {k: k for k in ("weight", "bias") if affine}
        g.case(name, "instance_norm", [T("x"), O({"eps": eps}, **topts)],
               lambda xs: F.instance_norm(xs["x"], weight=xs.get("weight"), bias=xs.get("bias"), eps=eps),
               inputs, grads=list(inputs))

    inorm("instance_norm3d_affine", [2, 3, 4, 5, 3], True)
    inorm("instance_norm2d", [2, 3, 5, 4], False, eps=1e-3)

    def gnorm(name, x, groups, affine, eps=1e-5):

        seed(name)
        c = x[1]
        inputs = {"x": randn(*x) + 1.0}
        if affine:
            inputs["weight"] = uniform(0.5, 1.5, c)
            inputs["bias"] = randn(c)
        topts = {k: k for k in ("weight", "bias") if affine}
        g.case(name, "group_norm", [T("x"), V(groups), O({"eps": eps}, **topts)],
               lambda xs: F.group_norm(xs["x"], groups, weight=xs.get("weight"), bias=xs.get("bias"), eps=eps),
               inputs, grads=list(inputs))

    gnorm("group_norm2d_g3_affine", [2, 6, 4, 5], 3, True)
    gnorm("group_norm3d_g2", [2, 4, 3, 3, 3], 2, False, eps=1e-3)
    gnorm("group_norm_g1_affine", [3, 4, 6], 1, True)

    def lnorm(name, x, nshape, affine, eps=1e-5):

        seed(name)
        inputs = {"x": randn(*x) * 0.7 + 0.2}
        if affine:
            inputs["weight"] = uniform(0.5, 1.5, *nshape)
            inputs["bias"] = randn(*nshape)
        topts = {k: k for k in ("weight", "bias") if affine}
        g.case(name, "layer_norm", [T("x"), V(nshape), O({"eps": eps}, **topts)],
               lambda xs: F.layer_norm(xs["x"], nshape, weight=xs.get("weight"), bias=xs.get("bias"), eps=eps),
               inputs, grads=list(inputs))

    lnorm("layer_norm_last2_affine", [2, 3, 4, 5], [4, 5], True)
    lnorm("layer_norm_last1", [3, 7], [7], False)
    lnorm("layer_norm_last1_affine_eps", [2, 5, 8], [8], True, eps=1e-3)
    return g.write()


# ------------------------------------------------------------------ resampling, padding, grids
def gen_resample():
    g = Golden("golden_resample.safetensors")

    def interp(name, x, mode, size=None, scale_factor=None, align_corners=None):

        seed(name)
        opts = {"mode": mode}
        if size is not None:
            opts["size"] = size
        if scale_factor is not None:
            opts["scale_factor"] = scale_factor
        if align_corners is not None:
            opts["align_corners"] = align_corners
        g.case(name, "interpolate", [T("x"), O(opts)],
               lambda xs: F.interpolate(xs["x"], size=size, scale_factor=scale_factor, mode=mode,
                                        align_corners=align_corners),
               {"x": randn(*x)}, grads=["x"])

    interp("interp_nearest1d_size", [2, 3, 5], "nearest", size=[8])
    interp("interp_nearest2d_size", [1, 2, 4, 3], "nearest", size=[7, 5])
    interp("interp_nearest2d_sf2", [1, 2, 3, 4], "nearest", scale_factor=2.0)
    interp("interp_nearest2d_sf1.7", [1, 1, 5, 4], "nearest", scale_factor=1.7)
    interp("interp_nearest3d_size", [1, 2, 3, 4, 5], "nearest", size=[5, 3, 7])
    interp("interp_nearest3d_sf2", [1, 1, 2, 3, 2], "nearest", scale_factor=2.0)
    interp("interp_linear1d_acF_size", [2, 3, 6], "linear", size=[9], align_corners=False)
    interp("interp_linear1d_acT_size", [2, 3, 6], "linear", size=[4], align_corners=True)
    interp("interp_bilinear_acT_size", [1, 2, 4, 5], "bilinear", size=[7, 9], align_corners=True)
    interp("interp_bilinear_acF_size", [1, 2, 4, 5], "bilinear", size=[7, 9], align_corners=False)
    interp("interp_bilinear_acF_size_down", [2, 1, 9, 8], "bilinear", size=[4, 5], align_corners=False)
    interp("interp_bilinear_acF_sf0.6", [1, 2, 8, 7], "bilinear", scale_factor=0.6, align_corners=False)
    interp("interp_bilinear_acF_sf2", [1, 2, 3, 4], "bilinear", scale_factor=2.0, align_corners=False)
    interp("interp_bilinear_acT_sf2", [1, 2, 3, 4], "bilinear", scale_factor=2.0, align_corners=True)
    interp("interp_trilinear_acT_size", [1, 2, 3, 4, 3], "trilinear", size=[5, 6, 4], align_corners=True)
    interp("interp_trilinear_acF_size", [1, 2, 3, 4, 3], "trilinear", size=[5, 6, 4], align_corners=False)
    interp("interp_trilinear_acF_sf1.5", [1, 1, 4, 3, 4], "trilinear", scale_factor=1.5, align_corners=False)
    interp("interp_trilinear_acF_sf2", [2, 1, 2, 3, 2], "trilinear", scale_factor=2.0, align_corners=False)

    def pad(name, x, pads, mode, value=0.0):

        seed(name)
        opts = {"mode": mode}
        if mode == "constant":
            opts["value"] = value
        g.case(name, "pad", [T("x"), V(pads), O(opts)],
               lambda xs: F.pad(xs["x"], pads, mode=mode, value=value) if mode == "constant"
               else F.pad(xs["x"], pads, mode=mode),
               {"x": randn(*x)}, grads=["x"])

    pad("pad_constant_4d_v0.5", [1, 2, 3, 4], [1, 2, 0, 3], "constant", 0.5)
    pad("pad_constant_5d", [1, 1, 2, 3, 2], [1, 1, 2, 0, 0, 1], "constant", 0.0)
    pad("pad_constant_3d_last", [2, 3, 4], [2, 1], "constant", -1.0)
    pad("pad_reflect_3d", [2, 3, 6], [2, 3], "reflect")
    pad("pad_reflect_4d", [1, 2, 5, 6], [2, 1, 1, 3], "reflect")
    pad("pad_reflect_5d", [1, 1, 4, 4, 5], [1, 2, 2, 1, 3, 1], "reflect")
    pad("pad_replicate_3d", [2, 2, 5], [3, 1], "replicate")
    pad("pad_replicate_4d", [1, 2, 4, 3], [2, 2, 1, 3], "replicate")
    pad("pad_replicate_5d", [1, 2, 3, 2, 3], [1, 0, 2, 1, 1, 2], "replicate")

    def gs(name, x, grid_shape, mode, padding_mode, align_corners):

        seed(name)
        inputs = {"x": randn(*x), "grid": uniform(-1.2, 1.2, *grid_shape)}
        opts = {"mode": mode, "padding_mode": padding_mode, "align_corners": align_corners}
        g.case(name, "grid_sample", [T("x"), T("grid"), O(opts)],
               lambda xs: F.grid_sample(xs["x"], xs["grid"], mode=mode, padding_mode=padding_mode,
                                        align_corners=align_corners),
               inputs, grads=["x", "grid"])

    for mode in ("bilinear", "nearest"):
        for pm in ("zeros", "border"):
            for ac in (False, True):
                tag = f"{mode}_{pm}_ac{'T' if ac else 'F'}"
                gs(f"grid_sample2d_{tag}", [2, 3, 5, 6], [2, 4, 7, 2], mode, pm, ac)
                gs(f"grid_sample3d_{tag}", [1, 2, 4, 5, 3], [1, 3, 4, 2, 3], mode, pm, ac)

    def ag(name, theta_shape, size, align_corners):

        seed(name)
        theta = randn(*theta_shape) * 0.3
        eye = torch.eye(theta_shape[1], theta_shape[2], dtype=torch.float64)
        inputs = {"theta": theta + eye}
        g.case(name, "affine_grid", [T("theta"), V(size), O({"align_corners": align_corners})],
               lambda xs: F.affine_grid(xs["theta"], size, align_corners=align_corners),
               inputs, grads=["theta"])

    ag("affine_grid2d_acF", [2, 2, 3], [2, 3, 5, 4], False)
    ag("affine_grid2d_acT", [2, 2, 3], [2, 3, 5, 4], True)
    ag("affine_grid3d_acF", [2, 3, 4], [2, 1, 3, 4, 5], False)
    ag("affine_grid3d_acT", [1, 3, 4], [1, 2, 4, 3, 2], True)
    return g.write()


# ------------------------------------------------------------------ softmax and losses
def gen_loss():
    g = Golden("golden_loss.safetensors")

    for fname in ("softmax", "log_softmax"):
        for dim, tag in ((1, "dim1"), (-1, "dimm1"), (0, "dim0")):
            fn = getattr(F, fname)
            seed(f"{fname}_{tag}")
            g.case(f"{fname}_{tag}", fname, [T("x"), V(dim)], lambda xs, fn=fn, dim=dim: fn(xs["x"], dim=dim),
                   {"x": randn(3, 5, 4) * 3}, grads=["x"])

    def pair(name, op, fn, shape, red, extra_opts=None, scale=1.0):

        seed(name)
        opts = {"reduction": red}
        opts.update(extra_opts or {})
        g.case(name, op, [T("x"), T("y"), O(opts)], fn, {"x": randn(*shape) * scale, "y": randn(*shape) * scale},
               grads=["x", "y"])

    for red in ("mean", "sum", "none"):
        pair(f"mse_loss_{red}", "mse_loss", lambda xs, red=red: F.mse_loss(xs["x"], xs["y"], reduction=red),
             [3, 4, 5], red)
        pair(f"l1_loss_{red}", "l1_loss", lambda xs, red=red: F.l1_loss(xs["x"], xs["y"], reduction=red),
             [3, 4, 5], red)
    for beta, red in ((1.0, "mean"), (0.5, "sum"), (0.5, "none"), (2.0, "mean")):
        pair(f"smooth_l1_loss_b{beta}_{red}", "smooth_l1_loss",
             lambda xs, beta=beta, red=red: F.smooth_l1_loss(xs["x"], xs["y"], beta=beta, reduction=red),
             [4, 6], red, {"beta": beta}, scale=1.5)

    def bce(name, shape, red, weight_shape=None, pos_weight_shape=None):

        seed(name)
        inputs = {"x": randn(*shape) * 2, "y": torch.rand(*shape, dtype=torch.float64)}
        topts = {}
        if weight_shape is not None:
            inputs["weight"] = uniform(0.5, 2.0, *weight_shape)
            topts["weight"] = "weight"
        if pos_weight_shape is not None:
            inputs["pos_weight"] = uniform(0.5, 3.0, *pos_weight_shape)
            topts["pos_weight"] = "pos_weight"
        g.case(name, "binary_cross_entropy_with_logits", [T("x"), T("y"), O({"reduction": red}, **topts)],
               lambda xs: F.binary_cross_entropy_with_logits(xs["x"], xs["y"], weight=xs.get("weight"),
                                                             pos_weight=xs.get("pos_weight"), reduction=red),
               inputs, grads=["x", "y"])

    bce("bce_with_logits_mean", [4, 3], "mean")
    bce("bce_with_logits_posw_weight_mean", [4, 3], "mean", weight_shape=[3], pos_weight_shape=[3])
    bce("bce_with_logits_posw_sum", [2, 3, 4, 4], "sum", pos_weight_shape=[3, 1, 1])
    bce("bce_with_logits_weight_none", [5, 2], "none", weight_shape=[5, 2])

    def ce(name, x_shape, red, weight=False, ignore_index=-100, label_smoothing=0.0, prob=False, targets=None):

        seed(name)
        c = x_shape[1]
        inputs = {"x": randn(*x_shape) * 2}
        if prob:
            inputs["y"] = torch.softmax(randn(*x_shape) * 2, dim=1)
        else:
            inputs["y"] = targets if targets is not None else torch.randint(0, c, [x_shape[0]] + x_shape[2:])
        opts = {"reduction": red, "ignore_index": ignore_index, "label_smoothing": label_smoothing}
        topts = {}
        if weight:
            inputs["weight"] = uniform(0.3, 2.0, c)
            topts["weight"] = "weight"
        g.case(name, "cross_entropy", [T("x"), T("y"), O(opts, **topts)],
               lambda xs: F.cross_entropy(xs["x"], xs["y"], weight=xs.get("weight"), ignore_index=ignore_index,
                                          reduction=red, label_smoothing=label_smoothing),
               inputs, grads=["x", "y"] if prob else ["x"])

    ce("cross_entropy_idx_mean", [5, 4], "mean")
    ce("cross_entropy_idx_weight_ignore_ls_mean", [6, 4], "mean", weight=True, ignore_index=2, label_smoothing=0.1,
       targets=torch.tensor([0, 2, 1, 3, 2, 1]))
    ce("cross_entropy_idx_weight_ignore_ls_sum", [6, 4], "sum", weight=True, ignore_index=2, label_smoothing=0.1,
       targets=torch.tensor([0, 2, 1, 3, 2, 1]))
    ce("cross_entropy_idx_ls_none_ignore", [5, 3], "none", ignore_index=0, label_smoothing=0.2,
       targets=torch.tensor([0, 1, 2, 0, 1]))
    ce("cross_entropy_idx_weight_mean", [7, 5], "mean", weight=True)
    ce("cross_entropy_spatial_weight_ls_mean", [2, 4, 3, 3], "mean", weight=True, label_smoothing=0.05)
    ce("cross_entropy_spatial3d_ignore_mean", [1, 3, 2, 3, 2], "mean", ignore_index=1)
    ce("cross_entropy_prob_ls_mean", [5, 4], "mean", label_smoothing=0.1, prob=True)
    ce("cross_entropy_prob_spatial_weight_sum", [2, 3, 4], "sum", weight=True, prob=True)

    def nll(name, x_shape, red, weight=False, ignore_index=-100, targets=None):

        seed(name)
        c = x_shape[1]
        inputs = {"x": torch.log_softmax(randn(*x_shape) * 2, dim=1)}
        inputs["y"] = targets if targets is not None else torch.randint(0, c, [x_shape[0]] + x_shape[2:])
        topts = {}
        if weight:
            inputs["weight"] = uniform(0.3, 2.0, c)
            topts["weight"] = "weight"
        g.case(name, "nll_loss", [T("x"), T("y"), O({"reduction": red, "ignore_index": ignore_index}, **topts)],
               lambda xs: F.nll_loss(xs["x"], xs["y"], weight=xs.get("weight"), ignore_index=ignore_index,
                                     reduction=red),
               inputs, grads=["x"])

    nll("nll_loss_weight_ignore_mean", [6, 5], "mean", weight=True, ignore_index=1,
        targets=torch.tensor([1, 0, 4, 1, 3, 2]))
    nll("nll_loss_sum", [4, 3], "sum")
    nll("nll_loss_weight_none", [4, 3], "none", weight=True)
    nll("nll_loss_spatial_mean", [2, 3, 4, 2], "mean", weight=True)
    return g.write()


# ------------------------------------------------------------------ interop with the real library
def interop_tensors():
    """The tensors of interop_torch.safetensors; tests/c/test_safetensors.c and
    tests/lua/test_safetensors.lua restate these values."""
    return {
        "f64": (torch.arange(24, dtype=torch.float64) * 0.5 - 3).reshape(2, 3, 4),
        "f32": (torch.arange(12, dtype=torch.float32) * 0.25 - 1).reshape(3, 4),
        "f16": torch.arange(8, dtype=torch.float16) * 0.5 - 2,
        "bf16": torch.arange(8, dtype=torch.bfloat16) * 0.25 - 1,
        "i64": torch.tensor([-(2 ** 40) - 7, 0, 1, 2 ** 40 + 7, 9007199254740993], dtype=torch.int64),
        "i32": torch.tensor([-2 ** 31, -1, 0, 2 ** 31 - 1], dtype=torch.int32),
        "u8": torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True, True, False]),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }


INTEROP_META = {"format": "pt", "source": "safetensors.torch.save_file", "unicode": "h\u00e9llo \"q\" \\ end"}


def gen_interop(golden_paths):
    try:
        import safetensors
        from safetensors.torch import load_file, save_file
    except ImportError:
        print("safetensors is not importable: interop_torch.safetensors not regenerated "
              "(use tests/ref/venv/bin/python, see tests/ref/README.md)")
        return False
    path = os.path.join(HERE, "interop_torch.safetensors")
    save_file(interop_tensors(), path, metadata=INTEROP_META)
    os.chmod(path, 0o644)  # the library writes through a private temporary file
    print(f"interop_torch.safetensors: written by safetensors {safetensors.__version__}, "
          f"{os.path.getsize(path)} bytes")
    # our own writer must produce files the real library reads back identically
    from safetensors import safe_open
    for p in golden_paths:
        loaded = load_file(p)
        with safe_open(p, framework="pt") as f:
            meta = f.metadata()
        assert meta and "generator" in meta, p
        assert len(loaded) > 0, p
    own = os.path.join(HERE, "interop_own_writer.tmp.safetensors")
    st_save(own, interop_tensors(), INTEROP_META)
    back = load_file(own)
    os.remove(own)
    for k, v in interop_tensors().items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    print(f"checked: {len(golden_paths)} golden files and the own-writer interop tensors load in safetensors")
    return True


def main():
    torch.set_default_dtype(torch.float64)
    paths = [gen_conv(), gen_pool(), gen_norm(), gen_resample(), gen_loss()]
    total = sum(os.path.getsize(p) for p in paths)
    print(f"golden files: {total} bytes in all")
    replayed = sum(replay(p) for p in paths)
    print(f"replayed {replayed} cases from their JSON descriptions: outputs, gradients and state match")
    gen_interop(paths)


if __name__ == "__main__":
    main()
