"""Fingerprints of what the package computes, to show that a restructuring changed nothing.

For three networks (pretrained EfficientNet-Lite0, ResNet-18 with seeded random weights and BN
statistics, the shipped Fashion-MNIST model) it quantizes with the default data-free recipe and
records SHA-256 digests of the bytes of: every activation quantizer's scale and zero point, every
quantized layer's weights and bias, the simulation's output, the integer network's int8
activations and output (integer reference backend), and, for the Fashion-MNIST model, the same
through the Triton kernels (Triton's interpreter on a CPU) for its first four inputs. ``tests/test_fingerprints.py``
recomputes them and compares with ``tests/fingerprints.json``; a difference names what changed.

    .venv/bin/python scripts/fingerprints.py            # print the fingerprints
    .venv/bin/python scripts/fingerprints.py --write    # record them in tests/fingerprints.json

Record only from code whose outputs are known to be right (the commit before a restructuring).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "tests" / "fingerprints.json"
#: Inputs run through the Triton kernels (the first ones of a case's inputs).
TRITON_INPUTS = 4

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before kernels is imported (by dfq_gpu)


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        if t.is_floating_point():
            t = t + 0.0  # -0.0 and 0.0 are the same number (which one a bias holds varies between runs)
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def _randomized_resnet18() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(n, generator=g) * 0.7 + 1)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
    return model


def cases() -> dict[str, tuple[nn.Module, torch.Tensor, Any]]:
    """name -> (model, inputs, DFQConfig)."""
    from dfq_gpu import DFQConfig, data, zoo

    lite0, pre = zoo.load_model("efficientnet_lite0")
    x_lite0 = data.imagenet_sample(pre, views=1).tensors[0][:2]
    fm, fpre = zoo.load_model("fmnist_mobilenet")
    x_fm = data.fashion_mnist("test", limit=16).tensors[0]
    g = torch.Generator().manual_seed(1)
    x_r18 = torch.randn(2, 3, 64, 64, generator=g)
    return {
        "efficientnet_lite0": (lite0, x_lite0, DFQConfig(input_range=pre.input_range)),
        "resnet18": (_randomized_resnet18(), x_r18, DFQConfig()),
        "fmnist_mobilenet": (fm, x_fm, DFQConfig(input_range=fpre.input_range)),
    }


def fingerprint(model: nn.Module, x: torch.Tensor, cfg: Any, triton: bool = False) -> dict[str, str]:
    import dfq_gpu
    from dfq_gpu.modules import FakeQuant, QConv2d, QLinear

    with torch.no_grad():
        q = dfq_gpu.quantize(model, (x[:1],), cfg)
        fqs = [(n, m) for n, m in q.named_modules() if isinstance(m, FakeQuant)]
        layers = [(n, m) for n, m in q.named_modules() if isinstance(m, (QConv2d, QLinear))]
        out: dict[str, str] = {
            "quantizers": _digest(*[t for _, m in fqs for t in (m.scale, m.zero_point)]),
            "weights": _digest(*[m.weight for _, m in layers]),
            "biases": _digest(*[m.bias for _, m in layers if m.bias is not None]),
            "simulation": _digest(q(x)),
        }
        # every quantizer's activation: the network without fusions (a fused layer's own output and
        # a fused stem's quantized input are never materialized); the outputs: the default network,
        # residual adds and the stem's input quantization fused
        net = dfq_gpu.to_int8(q, backend="reference", fuse_residual=False, fuse_stem=False)
        fused = dfq_gpu.to_int8(q, backend="reference")
        _, acts = net.activations(x)
        out["int8_activations"] = _digest(*[acts[k] for k in sorted(acts)])
        out["int8_output"] = _digest(fused(x))
        if triton:  # through Triton's interpreter on a CPU, which is slow: the first inputs only
            xs = x[:TRITON_INPUTS]
            net.backend = fused.backend = "triton"
            _, acts_t = net.activations(xs)
            out["triton_activations"] = _digest(*[acts_t[k] for k in sorted(acts_t)])
            out["triton_output"] = _digest(fused(xs))
    return out


def compute() -> dict[str, dict[str, str]]:
    return {name: fingerprint(model, x, cfg, triton=name == "fmnist_mobilenet")
            for name, (model, x, cfg) in cases().items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"record them in {FILE.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    fps = compute()
    text = json.dumps(fps, indent=1, sort_keys=True) + "\n"
    print(text, end="")
    if args.write:
        FILE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
