"""The ``dfq-gpu`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    import torch

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
    if args.json:
        print(res.to_json())
    else:
        print(format_table(res, markdown=args.markdown))
    if args.out:
        with open(args.out, "w") as f:
            f.write(res.to_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dfq-gpu", description="Data-free 8-bit quantization of PyTorch CNNs.")
    p.add_argument("--quiet", action="store_true", help="no progress bars or chatter")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="quantize EfficientNet-Lite0 and print the results table")
    d.add_argument("--model", default="efficientnet_lite0")
    d.add_argument("--views", type=int, default=8, help="views per sample image (default 8: 160 images)")
    d.add_argument("--quick", action="store_true", help="only the main rows")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    d.add_argument("--out", help="also write the JSON results to this file")
    d.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
