"""Which torchvision architectures quantize and run in int8, and how much of each.

For every classification model of ``torchvision.models.list_models(module=torchvision.models)``
under 100M parameters (random weights seeded per model, randomized BN statistics, 10 classes, one small input; the models of
:mod:`dfq_gpu.models.torchvision_suite`),
the segmentation models of ``torchvision.models.segmentation`` (their ``out`` tensor) and SSDLite
(backbone and head; anchors, box decoding and NMS stay in float outside the quantized part):
``dfq_gpu.quantize`` (data-free
W8A8 per tensor), ``dfq_gpu.to_int8`` on the integer reference, and the int8 network against the
simulation on the same input. Writes JSON (one record per model) and a Markdown table::

    python scripts/coverage.py --out benchmarks/results/coverage.json [--only resnet18 ...]

(``--only`` replaces those models' records in an existing file.)

Columns: regions equalized / found, share of the convolution and linear MACs that run in int8,
ops in int8 / all ops, whether the int8 network equals the simulation bit for bit, the reasons
for what runs in float, and ONNX: the share of the integer network's codes that ONNX Runtime (CPU,
default optimizations) returns for the exported QDQ graph (``dfq_gpu.export_onnx``), each step
fed the reference codes / run freely (the largest difference in codes), and run freely for the
graph written with ``exact=True`` (``onnx``: also the tensors that differ; needs the ``export``
extra). Segmentation models also get the pixel agreement and the mean IoU
of the int8 masks (argmax over classes) against the FP32 model's (``mask_agreement``,
``mask_miou``), SSDLite the share of the FP32 model's top-20 boxes per image that the int8
outputs give too (same label, IoU >= 0.5, ``box_agreement``); random weights, so these say little
about trained models.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision

import dfq_gpu as D
from dfq_gpu.models import torchvision_suite as suite
from dfq_gpu.models.torchvision_suite import DETECTION, SEGMENTATION


def measure(name: str) -> dict[str, Any]:
    t0 = time.time()
    rec: dict[str, Any] = {"model": name}
    try:
        rec["params"] = suite.parameter_count(name)
        if rec["params"] > 100e6:
            rec["skipped"] = "over 100M parameters"
            return rec
        m = suite.build(name)
        size = suite.input_size(name)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        q = D.quantize(m, (x,))
        rep = q.report
        rec["regions"] = [len(rep.equalized_regions), len(rep.regions)]
        net = D.to_int8(q, backend="reference")
        cov = net.coverage
        rec["int8_mac_fraction"] = round(cov.int8_mac_fraction, 4)
        rec["ops"] = [len(cov.placement) - len(cov.float_nodes), len(cov.placement)]
        reasons: dict[str, int] = {}
        for why in cov.float_nodes.values():
            reasons[why] = reasons.get(why, 0) + 1
        rec["float_reasons"] = reasons
        with torch.no_grad():
            a, b = q(x), net(x)
        pairs = zip(a, b) if isinstance(a, tuple) else [(a, b)]
        rec["bit_exact"] = all(bool(torch.equal(u, v)) for u, v in pairs)
        if name in SEGMENTATION:
            ref = m(x)  # the float model
            pred, true = a.argmax(1), ref.argmax(1)
            rec["mask_agreement"] = float((pred == true).float().mean())
            ious = [float(((pred == c) & (true == c)).sum() / ((pred == c) | (true == c)).sum())
                    for c in range(ref.shape[1]) if bool(((pred == c) | (true == c)).any())]
            rec["mask_miou"] = sum(ious) / len(ious)  # mean IoU of the int8 masks against FP32's
        if name in DETECTION:  # top-20 boxes per image, decoded in float from the int8 and the FP32 outputs
            with torch.no_grad():
                rec["box_agreement"] = suite.box_agreement(m.detections(x, m(x)), m.detections(x, b))
        rec["input"] = size
        rec["onnx"] = onnx_agreement(q, x)
    except Exception as exc:  # reported, not raised: the table lists what fails and why
        rec["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
    rec["seconds"] = round(time.time() - t0, 1)
    return rec


def onnx_agreement(q: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """The exported QDQ graph in ONNX Runtime against the integer network's codes."""
    try:
        from dfq_gpu.export import ExportError, run_onnx
    except ImportError:  # pragma: no cover - the export extra is not installed
        return {"error": "the 'export' extra (onnx, onnxruntime) is not installed"}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        try:
            D.export_onnx(q, path)
        except ExportError as exc:
            return {"error": str(exc)[:300]}
        ref = D.golden_activations(q, x)
        for mode, forced in (("forced", ref), ("free", None)):
            rep = D.compare_layers(run_onnx(path, x, teacher_forcing=forced)[1], ref, tolerance=1, layers=q)
            differ = [d.layer for d in rep.layers if d.equal_share < 1]
            out[mode] = {"equal_share": rep.equal_share, "max_abs_diff": rep.max_abs_diff, "tensors": len(rep.layers),
                         "not_equal": differ if forced is not None else len(differ)}
        D.export_onnx(q, path, exact=True)  # adds and global pools as integer arithmetic too
        rep = D.compare_layers(run_onnx(path, x)[1], ref, tolerance=1, layers=q)
        out["exact_free"] = {"equal_share": rep.equal_share, "max_abs_diff": rep.max_abs_diff,
                             "not_equal": [d.layer for d in rep.layers if d.equal_share < 1]}
    return out


def _onnx_cell(r: dict[str, Any]) -> str:
    o = r.get("onnx")
    if o is None:
        return ""
    if "error" in o:  # "cannot export NODE (KIND) to ONNX: WHY (supported: ...)"
        node, _, why = o["error"].removeprefix("cannot export ").partition(" to ONNX: ")
        return f"does not export: {why.split(' (supported')[0][:90]} ({node.split(' (')[0][:60]})"
    f, g, e = o["forced"], o["free"], o["exact_free"]
    return (f"{_share(f['equal_share'], 3)} / {_share(g['equal_share'], 2)} (max {f['max_abs_diff']} / "
            f"{g['max_abs_diff']}) / {_share(e['equal_share'], 3)}")


def _share(x: float, digits: int) -> str:
    """A share in percent; only an equal share of 1 reads 100 % (less rounds to just below)."""
    v = round(100 * x, digits)
    return f"{min(v, 100 - 10 ** -digits) if x < 1 else v:.{digits}f}%"


def table(records: list[dict[str, Any]]) -> str:
    rows = ["| model | regions equalized | int8 MACs | ops in int8 | bit-exact | runs in float | "
            "ONNX Runtime, codes equal: fed / free (max diff) / free with exact=True |",
            "|---|---|---|---|---|---|---|"]
    for r in records:
        if "skipped" in r:
            continue
        if "error" in r:
            rows.append(f"| {r['model']} | | | | | fails: {r['error'][:120]} | |")
            continue
        fl = "; ".join(f"{why} ({n})" for why, n in sorted(r["float_reasons"].items(), key=lambda kv: -kv[1]))
        rows.append(f"| {r['model']} | {r['regions'][0]}/{r['regions'][1]} | {100 * r['int8_mac_fraction']:.1f}% | "
                    f"{r['ops'][0]}/{r['ops'][1]} | {'yes' if r['bit_exact'] else 'NO'} | {fl} | {_onnx_cell(r)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/coverage.json")
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    names = args.only or [*torchvision.models.list_models(module=torchvision.models), *SEGMENTATION, *DETECTION]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # --only NAME ...: measure those again and replace their records in an existing file
    records = json.loads(out.read_text())["records"] if args.only and out.exists() else []
    for name in names:
        rec = measure(name)
        print(json.dumps(rec), flush=True)
        at = [i for i, r in enumerate(records) if r["model"] == name]
        if at:
            records[at[0]] = rec
        else:
            records.append(rec)
        # written after every model, so an interrupted sweep keeps what it measured
        out.write_text(json.dumps({"machine": "2-core CPU, integer reference backend", "torch": torch.__version__,
                                   "torchvision": torchvision.__version__, "records": records}, indent=1))
        out.with_suffix(".md").write_text(table(records) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
