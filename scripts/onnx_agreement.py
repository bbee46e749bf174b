"""ONNX Runtime against the integer network: the numbers of README's export section.

Quantizes pretrained EfficientNet-Lite0 (data-free W8A8 per tensor) and a randomly initialised
ResNet-18 (randomized BN statistics), exports each with :func:`dfq_gpu.export_onnx`, runs it in
ONNX Runtime on the CPU (default optimizations) and compares with the integer network
(``dfq_gpu.to_int8(q, backend="reference")``, bit-identical to the simulation):

* per quantized tensor, on the 20 images of the ImageNet sample (one view each): the share of
  codes equal to the integer network's when every ONNX Runtime step is fed the reference codes
  ("forced": each step's own difference) and when it runs freely ("free"), and the largest
  difference;
* on all 160 views (20 images x 8 views): top-1 agreement with the integer network and the
  logit SQNR against FP32 of ONNX Runtime and of the simulation;
* which fused operators ONNX Runtime made of the graph;
* the same for the graph written with ``export_onnx(..., exact=True)`` (residual adds and the
  global average pool as the integer network's arithmetic): ``exact_export``.

    python scripts/onnx_agreement.py --out benchmarks/results/onnx_ort_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

import dfq_gpu
from dfq_gpu import DFQConfig, compare_layers, export_onnx, golden_activations, quantize, to_int8
from dfq_gpu.bench.e2e import randomize_bn
from dfq_gpu.data import imagenet_sample
from dfq_gpu.evaluate import sqnr_per_sample
from dfq_gpu.export import optimized_op_counts, run_onnx


def _per_tensor(path: Path, q: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    net = to_int8(q, backend="reference")
    ref = golden_activations(q, x, net=net)
    out: dict[str, Any] = {}
    for mode, forced in (("forced", ref), ("free", None)):
        _, codes = run_onnx(path, x, teacher_forcing=forced) if forced is not None else run_onnx(path, x)
        rep = compare_layers(codes, ref, tolerance=1, layers=q)
        out[mode] = {
            "equal_share_all_codes": rep.equal_share,
            "worst_tensor_equal_share": min(d.equal_share for d in rep.layers),
            "max_abs_diff": rep.max_abs_diff,
            "tensors_not_equal": [{"tensor": d.name, "layer": d.layer, "equal_share": d.equal_share,
                                   "max_abs_diff": d.max_abs_diff} for d in rep.layers if d.equal_share < 1],
        }
    return out


def measure(name: str, model: torch.nn.Module, cfg: DFQConfig, pre: Any, tmp: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    q = quantize(model, (torch.zeros(1, 3, 224, 224),), cfg)
    path = tmp / f"{name}.onnx"
    export_onnx(q, path)
    rec: dict[str, Any] = {"model": name, "ort_ops": optimized_op_counts(path, str(tmp / f"{name}.opt.onnx"))}
    x20 = imagenet_sample(pre, views=1).tensors[0]
    rec["per_tensor_20_images"] = _per_tensor(path, q, x20)
    exact = tmp / f"{name}.exact.onnx"
    export_onnx(q, exact, exact=True)
    rec["exact_export"] = {"ort_ops": optimized_op_counts(exact, str(tmp / f"{name}.exact.opt.onnx")),
                           "per_tensor_20_images": _per_tensor(exact, q, x20)}
    x = imagenet_sample(pre, views=8).tensors[0]
    with torch.no_grad():
        fp, ys = model(x), q(x)
    yo = torch.from_numpy(run_onnx(path, x, intermediate=False)[0][0])
    ye = torch.from_numpy(run_onnx(exact, x, intermediate=False)[0][0])
    rec["views"] = int(x.shape[0])
    rec["top1_agreement_with_int8"] = (yo.argmax(1) == ys.argmax(1)).float().mean().item()
    rec["exact_export"]["top1_agreement_with_int8"] = (ye.argmax(1) == ys.argmax(1)).float().mean().item()
    rec["exact_export"]["logits_max_abs_diff_vs_simulation"] = float((ye - ys).abs().max())
    rec["sqnr_vs_fp32_db"] = {"onnxruntime": sqnr_per_sample(fp, yo).mean().item(),
                              "simulation": sqnr_per_sample(fp, ys).mean().item()}
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({k: rec[k] for k in ("model", "top1_agreement_with_int8", "sqnr_vs_fp32_db", "seconds")}))
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import onnxruntime

    torch.manual_seed(0)
    records = []
    with tempfile.TemporaryDirectory() as d:
        lite0, pre = dfq_gpu.load_model("efficientnet_lite0")
        records.append(measure("efficientnet_lite0", lite0, DFQConfig(input_range=pre.input_range), pre, Path(d)))
        resnet = torchvision.models.resnet18().eval()
        randomize_bn(resnet)
        records.append(measure("resnet18_random_init", resnet, DFQConfig(input_range=pre.input_range), pre, Path(d)))
    meta = {"machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads", "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__, "dfq_gpu": dfq_gpu.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "models": records}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
