"""Tile sweep: autotune the int8 benchmark networks' kernels and write the tuned tile table.

One command::

    python -m dfq_gpu.bench.tiles --out kernels/tiles/h200.json [--models ...] [--batches 256 32 1]
                                  [--budget-s S] [--autotune-ms 5]
    python -m dfq_gpu.bench.tiles --quick [--out PATH]   # CPU: plumbing only (see below)

(``python benchmarks/tiles.py ...`` in a checkout of the project is the same command.)

It builds the end-to-end benchmark's int8 networks (:mod:`dfq_gpu.bench.e2e`'s model builders,
``dfq_gpu.quantize`` + ``dfq_gpu.to_int8``), runs each at the benchmark batches (largest first,
models in order: the throughput goal is at batch 256) with autotuning on and the tile table off
(``kernels.settings``: ``autotune=True, tile_table=False``, nothing forced), Triton's
per-config benchmark shortened to ``--autotune-ms`` (as the end-to-end benchmark does), then
reads every autotuner's cache (``tuned.cache``: autotune key -> chosen config) and writes the
table (:mod:`kernels.tiles` describes the format and how launches use it). Entries of an
existing table for the same device (``--merge-with``, default ``--out``; e.g. the committed
``kernels/tiles/<gpu>.json``) are kept unless re-tuned (``--no-merge``: start afresh).

The budget (``--budget-s``) is checked after every step of a network: when it runs out the
sweep stops there and writes what was tuned so far (``"sweep": {"complete": false}``); the table
is also rewritten after every network run, so a run killed by a time limit still leaves one.

``--quick`` runs a tiny network (a stem, one inverted-residual block with its skip add, a
head, the pool and the classifier) at 16x16 through Triton's interpreter, where launches use the
interpreter tile and nothing is autotuned: the table it writes (to a temporary file unless
``--out`` is given) holds the keys the network launched with the interpreter tile, marked
``"mode": "quick"`` and named after the CPU, so no GPU would ever load it. It only shows that the
pipeline runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

# --quick runs on the CPU through Triton's interpreter (also on a GPU machine), which has to be
# switched on before the kernels are imported
if __name__ == "__main__" and (not torch.cuda.is_available() or "--quick" in sys.argv):
    os.environ.setdefault("TRITON_INTERPRET", "1")

SWEEP_SCHEMA_NOTE = "written by python -m dfq_gpu.bench.tiles"
FULL_BATCHES = (256, 32, 1)
QUICK_MODELS = ("tiny",)
#: Modules holding the autotuned kernels.
KERNEL_MODULES = ("kernels.gemm", "kernels.conv", "kernels.depthwise", "kernels.pool")


class _OutOfBudget(Exception):
    pass


def tiny_model(image_size: int = 16) -> torch.nn.Module:
    """A stem (which quantizes the input itself: a GEMM on its im2col matrix), one inverted-residual
    block with a skip add, a 3x3 head (the convolution kernel), pool and classifier."""
    import torch.nn as nn

    from dfq_gpu.bench import e2e

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
            self.block = e2e._MBConv(16, 16, 4, 3, 1, image_size)
            self.head = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(self.head(self.block(self.stem(x)))), 1))

    model = Tiny()
    e2e.randomize_bn(model)
    return model.eval()


def build_int8(name: str, image_size: int, device: str, backend: Optional[str] = None) -> Dict[str, Any]:
    """The int8 network of a benchmark model (or ``"tiny"``) and its input range."""
    import dfq_gpu
    from dfq_gpu import DFQConfig
    from dfq_gpu.bench import e2e

    torch.manual_seed(0)
    if name == "tiny":
        model, source, input_range = tiny_model(image_size), "dfq_gpu.bench.tiles.tiny_model", (-1.0, 1.0)
    else:
        model, source, input_range = e2e.build_model(name, image_size)
    example = torch.empty(1, 3, image_size, image_size).uniform_(*input_range)
    q = dfq_gpu.quantize(model, (example,), DFQConfig(input_range=input_range))
    kw = {} if backend is None else {"backend": backend}
    net = dfq_gpu.to_int8(q, **kw).to(device)
    return {"net": net, "source": source, "input_range": input_range}


def _autotuners() -> List[Any]:
    return [importlib.import_module(m) for m in KERNEL_MODULES]


def _cache_size() -> int:
    return sum(len(c) for _, _, c in _caches())


def _caches() -> List[Any]:
    from kernels import tiles

    return tiles.autotuner_caches(_autotuners())


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the sweep; returns the table written to ``args.out``."""
    import triton

    from kernels import settings as ks
    from kernels import tiles
    from kernels._config import INTERPRETED

    quick = args.quick
    cuda = torch.cuda.is_available() and not quick
    if not cuda and not quick:
        raise SystemExit("the tile sweep needs a CUDA device; use --quick for the CPU plumbing run")
    if quick and not INTERPRETED:
        raise SystemExit("--quick needs Triton's interpreter (TRITON_INTERPRET=1 before kernels is imported)")
    t_start = time.monotonic()
    deadline = t_start + args.budget_s if args.budget_s else float("inf")
    device = "cuda" if cuda else "cpu"
    size = args.image_size or (16 if quick else 224)
    batches = tuple(args.batches) if args.batches else ((1,) if quick else FULL_BATCHES)
    models = tuple(args.models) if args.models else (QUICK_MODELS if quick else ("efficientnet_lite0", "resnet50"))
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    patched: List[str] = []
    if cuda:
        from dfq_gpu.bench.e2e import shorten_autotuning

        patched = shorten_autotuning(args.autotune_ms)
    old = None
    base = args.merge_with if args.merge_with is not None else args.out
    if not args.no_merge and base.is_file():
        try:
            old = json.loads(base.read_text())
        except ValueError:
            old = None
    sweep: Dict[str, Any] = {
        "mode": "quick" if quick else "full", "models": list(models), "batches": list(batches), "image_size": size,
        "autotune_bench_ms": args.autotune_ms if patched else None, "budget_s": args.budget_s, "runs": [],
        "complete": False, "stopped": None, "seconds": None,
    }  # fmt: skip
    recorded: List[Any] = []

    def table() -> Dict[str, Any]:
        if quick:  # no autotuning under the interpreter: the launched keys with the interpreter tile
            caches = _records_as_caches(recorded)
        else:
            caches = _caches()
        new = tiles.table_from_caches(caches, device_name, triton.__version__, source=SWEEP_SCHEMA_NOTE,
                                      torch=torch.__version__, sweep=sweep)  # fmt: skip
        return tiles.merge_tables(old, new)

    def save() -> Dict[str, Any]:
        sweep["seconds"] = time.monotonic() - t_start
        data = table()
        tiles.write_table(args.out, data)
        return data

    with ks.use_settings(autotune=True, tile_table=False, forced=()), torch.no_grad():
        try:
            for batch in batches:
                for name in models:
                    if time.monotonic() > deadline:
                        raise _OutOfBudget(f"before {name} batch {batch}")
                    t0 = time.monotonic()
                    built = _built(name, size, device, quick)
                    net = built["net"]
                    x = torch.empty(batch, 3, size, size, device=device).uniform_(*built["input_range"])
                    before = _cache_size()
                    handles = []
                    last_save = [time.monotonic()]

                    def after_step(module: Any, inputs: Any, output: Any, _name: str = name, _b: int = batch) -> None:
                        if cuda:
                            torch.cuda.synchronize()
                        now = time.monotonic()
                        if now - last_save[0] > 10:
                            save()
                            last_save[0] = now
                        if now > deadline:
                            raise _OutOfBudget(f"inside {_name} batch {_b}")

                    for m in net.steps().values():
                        handles.append(m.register_forward_hook(after_step))
                    run_rec = {"model": name, "batch": batch, "source": built["source"]}
                    sweep["runs"].append(run_rec)
                    try:
                        with tiles.record_launches() as rec:
                            net(x)
                        recorded.extend(rec)
                        if cuda:
                            torch.cuda.synchronize()
                    finally:
                        for h in handles:
                            h.remove()
                        run_rec["seconds"] = time.monotonic() - t0
                        run_rec["new_entries"] = _cache_size() - before
                        run_rec["launched_keys"] = len({(r[0], r[3]) for r in rec})
                        save()
                    print(f"{name} batch {batch}: {run_rec['launched_keys']} kernel keys launched, "
                          f"{run_rec['new_entries']} newly tuned, in {run_rec['seconds']:.1f}s", flush=True)  # fmt: skip
                    if cuda:
                        torch.cuda.empty_cache()
            sweep["complete"] = True
        except _OutOfBudget as exc:
            sweep["stopped"] = f"time budget ({exc})"
            print(f"stopped: {sweep['stopped']}", flush=True)
    data = save()
    n = sum(len(v) for v in data["kernels"].values())
    print(f"wrote {args.out}: {n} entries for {len(data['kernels'])} kernels", flush=True)
    return data


_BUILT: Dict[Any, Dict[str, Any]] = {}


def _built(name: str, size: int, device: str, quick: bool) -> Dict[str, Any]:
    key = (name, size, device)
    if key not in _BUILT:
        _BUILT.clear()  # one network at a time in memory
        _BUILT[key] = build_int8(name, size, device, backend="triton" if quick else None)
    return _BUILT[key]


def _records_as_caches(records: Sequence[Any]) -> List[Any]:
    """Launch records (``kernels.tiles.record_launches``) as autotuner-cache-like triples, their
    tile as the "chosen" config (the quick mode's stand-in for autotuning)."""
    from kernels.settings import Tile

    out: Dict[str, Any] = {}
    for name, _family, key_names, key_values, _source, meta, _tuned in records:
        if meta is None:
            continue
        launch = {k: v for k, v in meta.items() if k not in ("num_warps", "num_stages")}
        tile = Tile(tuple(sorted(launch.items())), meta.get("num_warps", 4), meta.get("num_stages", 1))
        out.setdefault(name, (name, key_names, {}))[2][tuple(key_values)] = tile
    return list(out.values())


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the table that was written."""
    from dfq_gpu.bench.e2e import MODELS, MORE_MODELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU plumbing run: a tiny network on the interpreter")
    parser.add_argument("--out", type=Path, default=None,
                        help="the table to write (default: kernels/tiles/<device>.json; --quick: a temporary file)")
    parser.add_argument("--models", nargs="+", choices=MODELS + MORE_MODELS + QUICK_MODELS,
                        help="networks, in order (default: efficientnet_lite0 resnet50; quick: tiny)")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes, in order (default: 256 32 1)")
    parser.add_argument("--image-size", type=int, default=None, help="resolution (default 224; quick: 16)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop (and write) after this many seconds")
    parser.add_argument("--autotune-ms", type=float, default=5.0,
                        help="milliseconds Triton's autotuner benchmarks each config (0: Triton's default)")
    parser.add_argument("--no-merge", action="store_true", help="do not keep the entries of an existing table")
    parser.add_argument("--merge-with", type=Path, default=None,
                        help="the existing table whose entries are kept unless re-tuned (default: --out)")
    args = parser.parse_args(argv)
    if args.out is None:
        if args.quick:
            args.out = Path(tempfile.gettempdir()) / "dfq_gpu_bench" / "tiles_quick.json"
        else:
            from kernels import tiles

            args.out = tiles.default_table_path(torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    return run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
