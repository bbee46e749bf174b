"""The ``dfq-gpu`` command line (also ``python -m dfq_gpu``).

Subcommands:

- ``demo``: EfficientNet-Lite0 on the ImageNet sample, the results table of README;
- ``quantize MODEL --out FILE``: quantize a zoo model, a torchvision model (``--weights``) or a
  ``package.module:factory`` and write the quantized network;
- ``eval MODEL_OR_FILE --data SPEC``: top-1 / top-5, and agreement / SQNR against FP32;
- ``bench``: the benchmarks, quick (CPU) or full;
- ``export FILE --onnx OUT [--exact]``: write a quantized file as an ONNX QDQ graph (``dfq_gpu.export_onnx``).

Exit status 0 on success, 2 on bad input with a one-line message on stderr (no traceback).
``--json`` prints machine-readable results, ``--quiet`` silences progress bars.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)


class UsageError(ValueError):
    """A user error the CLI reports in one line."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .api import DFQError
    from .data import DatasetNotFound
    from .graph.trace import TraceFailure
    from .int8 import Int8ConversionError
    from .io import LoadError, SaveError
    from .zoo import BadCheckpoint, ModelNotFound

    return (UsageError, DFQError, DatasetNotFound, TraceFailure, LoadError, SaveError, BadCheckpoint, ModelNotFound,
            Int8ConversionError, FileExistsError, FileNotFoundError, ValueError)


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2))
    elif not args.quiet or text:
        print(text)


# ----------------------------------------------------------------------------- demo
def _demo(args: argparse.Namespace) -> int:
    from . import data as D
    from .ablation import ABLATION_ROWS, QUICK_ROWS, format_table, run_ablation
    from .zoo import load_model

    model, pre = load_model(args.model)
    ds = D.imagenet_sample(pre, views=args.views)
    rows = QUICK_ROWS if args.quick else ABLATION_ROWS
    if not args.quiet and not args.json:
        print(f"{args.model}: {len(ds)} views of the ImageNet sample (20 images), {len(rows)} variants", flush=True)
    res = run_ablation(model, ds, model_name=args.model, rows=rows, input_range=pre.input_range,
                       progress=not args.quiet and not args.json)
    if args.out:
        _write_text_atomic(Path(args.out), res.to_json(), overwrite=True)
    _emit(args, json.loads(res.to_json()), format_table(res, markdown=args.markdown))
    return 0


# ----------------------------------------------------------------------------- quantize
def _config_from_args(args: argparse.Namespace, input_range: tuple[float, float] | None) -> Any:
    from .config import DFQConfig

    base = DFQConfig.naive() if args.naive else DFQConfig()
    changes: dict[str, Any] = {}
    for flag, field in (("weight_bits", "weight_bits"), ("granularity", "weight_granularity"),
                        ("relu6", "relu6"), ("bias_correction", "bias_correction"), ("act_ranges", "act_ranges"),
                        ("cle_scale_bound", "cle_scale_bound")):
        v = getattr(args, flag, None)
        if v is not None:
            changes[field] = v
    if args.act_bits is not None:
        changes["act_bits"] = None if args.act_bits == 0 else args.act_bits
    if args.no_equalize:
        changes["equalize"] = False
    if args.no_absorb:
        changes["absorb_bias"] = False
    if args.symmetric:
        changes["weight_symmetric"] = True
    if input_range is not None:
        changes["input_range"] = input_range
    return base.replace(**changes)


def _load_data(spec: str, pre: Any, args: argparse.Namespace) -> Any:
    from . import data as D

    if spec in ("imagenet-sample", "imagenet_sample"):
        return D.imagenet_sample(pre, views=args.views)
    if spec in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return D.fashion_mnist("test", limit=args.limit)
    p = Path(spec)
    if p.exists():
        ds = D.ImageFolder(p, pre, labels_file=args.labels)
        if args.limit is not None:
            import torch.utils.data as tud

            ds = tud.Subset(ds, range(min(args.limit, len(ds))))
        return ds
    raise UsageError(f"unknown data '{spec}': use imagenet-sample, fashion-mnist, or an image folder path")


def _quantize(args: argparse.Namespace) -> int:
    import torch

    from .api import quantize
    from .io import save
    from .zoo import load_model

    out = Path(args.out)
    if args.weights and Path(args.weights).resolve() == out.resolve():
        raise UsageError("--out must not be the weights file")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    model, pre = load_model(args.model, weights=args.weights)
    cfg = _config_from_args(args, pre.input_range)
    data = None
    if cfg.act_ranges == "calibrate" or cfg.bias_correction == "empirical":
        if not args.data:
            raise UsageError("--act-ranges calibrate / --bias-correction empirical need --data")
        ds = _load_data(args.data, pre, args)
        data = torch.utils.data.DataLoader(ds, batch_size=16)
    size = args.input_size or pre.size
    example = (torch.zeros(1, pre.channels, size, size),)
    t0 = time.perf_counter()
    q = quantize(model, example, cfg, data=data)
    secs = time.perf_counter() - t0
    save(q, out, model_name=args.model + (f"@{args.weights}" if args.weights else ""), overwrite=args.force,
         extra_metadata={"input_shape": json.dumps(list(example[0].shape))})
    rep = q.report
    payload = {"out": str(out), "model": args.model, "seconds": secs, "summary": rep.summary(),
               "config": cfg.to_dict()}
    _emit(args, payload, f"wrote {out} ({secs:.1f} s): {rep.summary()}")
    return 0


# ----------------------------------------------------------------------------- eval
def _eval(args: argparse.Namespace) -> int:
    from .evaluate import collect_outputs, evaluate
    from .io import load, read_metadata
    from .zoo import load_model

    target = args.model
    reference = None
    if target.endswith(".safetensors") and Path(target).exists():
        meta = read_metadata(target)
        net = load(target)
        spec = meta.get("model", "")
        name, _, weights = spec.partition("@")
        if not name:
            raise UsageError(f"{target} does not record its model; cannot build the FP32 reference")
        fp, pre = load_model(name, weights=weights or None)
        reference = fp
        if args.int8:
            from .int8 import to_int8

            net = to_int8(net)
    else:
        if args.int8:
            raise UsageError("--int8 needs a quantized file (from 'dfq-gpu quantize')")
        net, pre = load_model(target, weights=args.weights)
    ds = _load_data(args.data, pre, args)
    ref_out = collect_outputs(reference, ds, batch_size=args.batch_size) if reference is not None else None
    m = evaluate(net, ds, reference=ref_out, batch_size=args.batch_size, progress=not args.quiet and not args.json)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    text = f"{target} on {args.data} ({m.n} images): top-1 {pct(m.top1)}, top-5 {pct(m.top5)}"
    if m.agreement is not None:
        text += f", agreement with FP32 {pct(m.agreement)}, logit SQNR {m.sqnr_db:.2f} dB"
    _emit(args, {"model": target, "data": args.data, **m.to_dict()}, text)
    return 0


# ----------------------------------------------------------------------------- bench
def _bench(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    jobs = {
        "kernels": quick + ["--out", str(out_dir / "kernels.json")],
        "e2e": quick + ["--out", str(out_dir / "e2e.json")],
        "quantize_speed": ["--repeat", "1" if args.quick else "5", "--out", str(out_dir / "quantize_speed.json")],
        "ablation": (["--quick", "--views", "1"] if args.quick else []) + ["--out", str(out_dir / "ablation.json")],
    }
    selected = args.only or list(jobs)
    results: dict[str, Any] = {}
    for name in selected:
        if name not in jobs:
            raise UsageError(f"unknown benchmark '{name}'; choose from {', '.join(jobs)}")
        argv = jobs[name]
        module = f"dfq_gpu.bench.{name}"
        if not args.quiet and not args.json:
            print(f"== {name}: python -m {module} {' '.join(argv)}", flush=True)
        old_argv = sys.argv
        sys.argv = [module] + argv
        try:
            runpy.run_module(module, run_name="__main__")
        except SystemExit as e:
            if e.code not in (0, None):
                raise UsageError(f"benchmark {name} failed with exit status {e.code}") from None
        finally:
            sys.argv = old_argv
        results[name] = str(out_dir / Path(argv[-1]).name)
    _emit(args, {"results": results}, "\n".join(f"{k}: {v}" for k, v in results.items()))
    return 0


# ----------------------------------------------------------------------------- export
def _export(args: argparse.Namespace) -> int:
    import torch

    from .export import export_onnx, quantized_tensor_names
    from .io import load, read_metadata

    src, out = Path(args.model), Path(args.onnx)
    if not src.exists():
        raise UsageError(f"{src} does not exist")
    if out.suffix != ".onnx":
        raise UsageError(f"--onnx must name a .onnx file, got {out}")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    net = load(src)
    example = None
    shape = read_metadata(src).get("input_shape")
    if shape:
        example = (torch.zeros(*json.loads(shape)),)
    model = export_onnx(net, out, example_inputs=example, weights=args.weights, exact=args.exact)
    n_q = len(quantized_tensor_names(model))
    payload = {"out": str(out), "opset": model.opset_import[0].version, "nodes": len(model.graph.node),
               "quantized_tensors": n_q, "weights": args.weights, "exact": args.exact}
    _emit(args, payload, f"wrote {out}: {len(model.graph.node)} ONNX nodes, {n_q} quantized tensors "
                         f"(opset {model.opset_import[0].version})")
    return 0


# ----------------------------------------------------------------------------- helpers
def _write_text_atomic(path: Path, text: str, overwrite: bool) -> None:
    import tempfile

    if path.exists() and not overwrite:
        raise UsageError(f"{path} exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfq-gpu", description="Data-free 8-bit quantization of PyTorch CNNs.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="quantize EfficientNet-Lite0 and print the results table")
    d.add_argument("--model", default="efficientnet_lite0")
    d.add_argument("--views", type=int, default=8, help="views per sample image (default 8: 160 images)")
    d.add_argument("--quick", action="store_true", help="only the main rows")
    d.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    d.add_argument("--out", help="also write the JSON results to this file")
    _common(d)
    d.set_defaults(func=_demo)

    q = sub.add_parser("quantize", help="quantize a model and write it as .safetensors")
    q.add_argument("model", help="zoo name (see 'dfq_gpu.zoo.available_models()'), torchvision name, or module:factory")
    q.add_argument("--out", required=True, help="the .safetensors file to write")
    q.add_argument("--weights", help="a state-dict file to load into the model first")
    q.add_argument("--force", action="store_true", help="replace --out if it exists")
    q.add_argument("--naive", action="store_true", help="plain min/max quantization (no DFQ steps)")
    q.add_argument("--weight-bits", type=int)
    q.add_argument("--act-bits", type=int, help="activation bits (0: leave activations in float)")
    q.add_argument("--granularity", choices=["tensor", "channel"])
    q.add_argument("--symmetric", action="store_true", help="symmetric weights")
    q.add_argument("--relu6", choices=["clip", "replace", "keep"])
    q.add_argument("--no-equalize", action="store_true")
    q.add_argument("--no-absorb", action="store_true")
    q.add_argument("--bias-correction", choices=["analytic", "empirical", "none"])
    q.add_argument("--act-ranges", choices=["bn", "calibrate"])
    q.add_argument("--cle-scale-bound", type=float)
    q.add_argument("--data", help="calibration data for --act-ranges calibrate / --bias-correction empirical")
    q.add_argument("--labels", help="labels file for a flat image folder")
    q.add_argument("--views", type=int, default=8)
    q.add_argument("--limit", type=int)
    q.add_argument("--input-size", type=int, help="example input size (default: the model's)")
    _common(q)
    q.set_defaults(func=_quantize)

    e = sub.add_parser("eval", help="evaluate a model or a quantized file")
    e.add_argument("model", help="a .safetensors file from 'quantize', or a model name")
    e.add_argument("--data", required=True, help="imagenet-sample, fashion-mnist, or an image folder")
    e.add_argument("--weights", help="state-dict file for a model name")
    e.add_argument("--labels", help="labels file for a flat image folder")
    e.add_argument("--views", type=int, default=8, help="views per ImageNet sample image")
    e.add_argument("--limit", type=int, help="evaluate the first N images only")
    e.add_argument("--batch-size", type=int, default=8,
                   help="images per batch (default 8: on a CPU the fastest for the simulation and the reference "
                        "int8 network alike; the Lite0 simulation takes 2.8x longer per image in batches of 40)")
    e.add_argument("--int8", action="store_true", help="run the integer network instead of the simulation")
    _common(e)
    e.set_defaults(func=_eval)

    b = sub.add_parser("bench", help="run the benchmarks (quick: CPU-sized)")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--only", nargs="*", help="kernels, e2e, quantize_speed, ablation")
    b.add_argument("--out-dir", default="bench-results")
    _common(b)
    b.set_defaults(func=_bench)

    x = sub.add_parser("export", help="write a quantized file as an ONNX QDQ graph")
    x.add_argument("model", help="a .safetensors file from 'quantize'")
    x.add_argument("--onnx", required=True, help="the .onnx file to write")
    x.add_argument("--force", action="store_true", help="replace --onnx if it exists")
    x.add_argument("--exact", action="store_true",
                   help="residual adds and global average pools as integer arithmetic too (every code of the "
                        "integer network in ONNX Runtime; not fused by runtimes)")
    x.add_argument("--weights", choices=("int8", "uint8"), default="int8",
                   help="symmetric weights as int8 (default; TensorRT) or every weight as uint8 (ONNX Runtime on x86 "
                        "CPUs without VNNI)")
    _common(x)
    x.set_defaults(func=_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.quiet or args.json:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("dfq-gpu: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if args.debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"dfq-gpu: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
