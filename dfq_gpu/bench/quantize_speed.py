"""How long the data-free pipeline takes: ``prepare`` and ``quantize`` on a model (CPU).

    python -m dfq_gpu.bench.quantize_speed --model efficientnet_lite0 --repeat 5 --out speed.json

Reports the median wall time of each call over ``--repeat`` runs (after one warm-up) and the
time of each pass from ``report.timings``. The goal for EfficientNet-Lite0 on a 2-core CPU is
under 5 seconds for ``prepare`` + ``quantize``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import dfq_gpu as D
from dfq_gpu.zoo import load_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model, pre = load_model(args.model)
    x = (torch.zeros(1, pre.channels, pre.size, pre.size),)
    cfg = D.DFQConfig(input_range=pre.input_range)
    D.quantize(model, x, cfg)  # warm-up
    prep, quant, timings = [], [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        D.prepare(model, x, cfg)
        prep.append(time.perf_counter() - t)
        t = time.perf_counter()
        q = D.quantize(model, x, cfg)
        quant.append(time.perf_counter() - t)
        timings.append(q.report.timings)
    res = {
        "model": args.model,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "prepare_s_median": statistics.median(prep),
        "quantize_s_median": statistics.median(quant),
        "quantize_includes_prepare": True,
        "passes_s_median": {k: statistics.median(t[k] for t in timings) for k in timings[0]},
        "goal_s": 5.0,
        "goal_met": statistics.median(quant) < 5.0,
    }
    print(json.dumps(res, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
