"""The paper-style ablation table for one model on the ImageNet sample (or Fashion-MNIST).

    python -m dfq_gpu.bench.ablation --model efficientnet_lite0 --out benchmarks/results/ablation_lite0_cpu.json
    python -m dfq_gpu.bench.ablation --model fmnist_mobilenet
    python -m dfq_gpu.bench.ablation --quick          # the main rows only
    python -m dfq_gpu.bench.ablation --model fmnist_mobilenet --quick --weight-bits 5

Rows: FP32; naive per-tensor and per-channel (weights only, and W8A8); +CLE; +CLE+absorption;
+CLE+absorption+bias correction (data-free DFQ); each ReLU6 mode; the paper's recipe; and, for
comparison, rows that use data (calibrated activation ranges, empirical bias correction).
Columns: top-1, top-5, top-1 agreement with FP32 and mean logit SQNR against FP32.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfq_gpu import data as D
from dfq_gpu.ablation import ABLATION_ROWS, QUICK_ROWS, format_table, run_ablation, with_weight_bits
from dfq_gpu.zoo import load_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--views", type=int, default=8, help="views per ImageNet sample image")
    ap.add_argument("--limit", type=int, default=None, help="Fashion-MNIST: first N test images only")
    ap.add_argument("--quick", action="store_true", help="main rows only")
    ap.add_argument("--weight-bits", type=int, default=None, help="weight bits of every row (default: 8)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--out", help="write the results as JSON")
    args = ap.parse_args(argv)

    model, pre = load_model(args.model)
    if args.model == "fmnist_mobilenet":
        ds = D.fashion_mnist("test", limit=args.limit)
        batch = 1000
    else:
        ds = D.imagenet_sample(pre, views=args.views)
        batch = 40
    rows = QUICK_ROWS if args.quick else ABLATION_ROWS
    if args.weight_bits is not None:
        rows = with_weight_bits(rows, args.weight_bits)
    res = run_ablation(model, ds, model_name=args.model, rows=rows, batch_size=batch, input_range=pre.input_range)
    print(format_table(res, markdown=args.markdown))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(res.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
