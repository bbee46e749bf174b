"""The paper-style ablation table: FP32, naive quantization, and DFQ step by step.

Used by the demo (``dfq-gpu demo``), ``benchmarks/ablation.py`` and the notebooks, so the
numbers they print are the same.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .api import quantize
from .config import DFQConfig
from .evaluate import Metrics, collect_outputs, evaluate

__all__ = ["AblationRow", "AblationResult", "ABLATION_ROWS", "QUICK_ROWS", "run_ablation", "format_table",
           "with_weight_bits", "agreement_interval"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AblationRow:
    """One row of the table: a name, a config (``None`` for FP32) and whether it uses data."""

    name: str
    config: DFQConfig | None
    uses_data: bool = False


N = DFQConfig.naive
ABLATION_ROWS: tuple[AblationRow, ...] = (
    AblationRow("FP32", None),
    AblationRow("W8 naive per-tensor", N(act_bits=None)),
    AblationRow("W8 naive per-channel", N(act_bits=None, weight_granularity="channel")),
    AblationRow("W8A8 naive per-tensor", N()),
    AblationRow("W8A8 naive per-channel, calibrated acts", N(weight_granularity="channel", act_ranges="calibrate"),
                uses_data=True),
    AblationRow("W8A8 +CLE", DFQConfig(absorb_bias=False, bias_correction="none")),
    AblationRow("W8A8 +CLE +absorption", DFQConfig(bias_correction="none")),
    AblationRow("W8A8 +CLE +absorption +bias corr. (DFQ)", DFQConfig()),
    AblationRow("W8A8 DFQ, relu6=replace", DFQConfig(relu6="replace")),
    AblationRow("W8A8 DFQ, relu6=keep", DFQConfig(relu6="keep")),
    AblationRow("W8A8 DFQ as in the paper", DFQConfig.paper()),
    AblationRow("W8 DFQ (weights only)", DFQConfig(act_bits=None)),
    AblationRow("W8A8 DFQ per-channel", DFQConfig(weight_granularity="channel")),
    AblationRow("W8A8 DFQ + calibrated acts + empirical BC", DFQConfig(act_ranges="calibrate",
                                                                       bias_correction="empirical"), uses_data=True),
)
QUICK_ROWS: tuple[AblationRow, ...] = tuple(r for r in ABLATION_ROWS if r.name in (
    "FP32", "W8 naive per-tensor", "W8 naive per-channel", "W8A8 naive per-tensor",
    "W8A8 +CLE +absorption +bias corr. (DFQ)"))


def with_weight_bits(rows: Sequence[AblationRow], bits: int) -> tuple[AblationRow, ...]:
    """The same rows with ``bits``-bit weights (names say so: "W8A8 ..." becomes "W5A8 ...")."""
    out = []
    for r in rows:
        if r.config is None:
            out.append(r)
            continue
        name = f"W{bits}" + r.name[2:] if r.name.startswith("W8") else r.name
        out.append(AblationRow(name, r.config.replace(weight_bits=bits), r.uses_data))
    return tuple(out)


@dataclass
class AblationResult:
    model: str
    n: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    machine: str = field(default_factory=lambda: f"{platform.machine()} {platform.processor() or ''}".strip())
    torch_version: str = torch.__version__
    #: inputs per distinct image (the ImageNet sample: 8 views of each of 20 images); what one
    #: image is worth in top-1 and agreement follows from it (:func:`format_table` says so)
    views_per_image: int = 1
    #: lines the table must carry, e.g. that the model has random weights
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


#: Batch size of the evaluation (the FP32 outputs depend on it in the last bits). Small: the
#: simulation's elementwise passes then stay in the CPU's caches (Lite0 on 2 cores: 1.7x faster
#: than batches of 40).
BATCH_SIZE = 8


def run_ablation(model: nn.Module, data: torch.utils.data.TensorDataset, model_name: str = "model",
                 rows: Sequence[AblationRow] = ABLATION_ROWS, batch_size: int = BATCH_SIZE,
                 calibration: Sequence[torch.Tensor] | None = None, input_range: tuple[float, float] | None = None,
                 progress: bool = True, on_row: Callable[[dict[str, Any]], None] | None = None,
                 reference: torch.Tensor | None = None) -> AblationResult:
    """Evaluate every row on ``data`` against the FP32 model.

    ``calibration`` (input batches) serves the rows that use data; by default the first
    quarter of ``data``. ``input_range`` is the float range of the preprocessed inputs.
    ``reference``: the FP32 model's outputs on ``data`` (``collect_outputs(model, data,
    batch_size)``) if already computed; the FP32 row reuses them.
    """
    x = data.tensors[0]
    ref = collect_outputs(model, data, batch_size=batch_size) if reference is None else reference
    if ref.shape[0] != len(x):
        raise ValueError(f"reference has outputs for {ref.shape[0]} inputs, data has {len(x)}")
    # only the shape of the example input matters to the data-free rows (as for `dfq-gpu quantize`)
    example = (torch.zeros_like(x[:1]),)
    if calibration is None:
        calibration = [x[i:i + 16] for i in range(0, max(16, len(x) // 4), 16)]
    result = AblationResult(model=model_name, n=len(x))
    from .zoo import random_weights_note

    note = random_weights_note(model)
    if note:
        log.warning(note)
        result.notes.append(note)
    for row in tqdm(rows, desc="ablation", disable=not progress):
        t0 = time.perf_counter()
        if row.config is None:  # FP32: the reference outputs themselves, batch by batch
            q: Callable[[torch.Tensor], torch.Tensor] = _replay(ref)
            secs = 0.0
        else:
            cfg = row.config if input_range is None else row.config.replace(input_range=input_range)
            q = quantize(model, example, cfg, data=calibration if row.uses_data else None)
            secs = time.perf_counter() - t0
        m: Metrics = evaluate(q, data, reference=ref, batch_size=batch_size, progress=False)
        entry = {"name": row.name, "top1": m.top1, "top5": m.top5, "agreement": m.agreement,
                 "sqnr_db": None if row.config is None else m.sqnr_db, "quantize_seconds": secs,
                 "uses_data": row.uses_data, "config": None if row.config is None else row.config.to_dict()}
        result.rows.append(entry)
        if on_row is not None:
            on_row(entry)
    return result


def _replay(outputs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable returning the next ``len(x)`` rows of ``outputs`` on each call (inputs in order)."""
    pos = 0

    def forward(x: torch.Tensor) -> torch.Tensor:
        nonlocal pos
        out = outputs[pos:pos + len(x)]
        pos += len(x)
        return out

    return forward


def agreement_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a share ``p`` measured on ``n`` independent images."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def resolution_note(result: AblationResult) -> str:
    """What the table's top-1 and agreement can resolve, in one sentence."""
    views = max(1, int(getattr(result, "views_per_image", 1) or 1))
    images = max(1, result.n // views)
    step = 100.0 / images
    lo, hi = agreement_interval(0.95, images)
    if views == 1:
        return (f"{result.n} inputs: one input is {step:.2f} points of top-1 and agreement if the inputs are "
                f"independent images (an agreement of 0.95 then has a 95% interval of [{lo:.2f}, {hi:.2f}]); "
                "views of fewer images (the ImageNet sample: 20 images x 8 views) resolve much less.")
    return (f"{result.n} inputs = {images} images x {views} views: one image is {step:.1f} points of top-1 and "
            f"agreement (its views mostly agree); an agreement of 0.95 has a 95% interval of [{lo:.2f}, {hi:.2f}] "
            f"over {images} images. Differences of a few points of top-1 are noise here; compare SQNR and agreement.")


def format_table(result: AblationResult, markdown: bool = False) -> str:
    """The table as aligned text (or Markdown), with what its numbers can resolve (text only) and
    its notes (e.g. random weights) on their own lines."""
    head = ["variant", "top-1", "top-5", "agreement", "SQNR dB", "data-free", "time s"]
    body = []
    for r in result.rows:
        body.append([
            r["name"],
            f"{100 * r['top1']:.2f}" if r["top1"] is not None else "-",
            f"{100 * r['top5']:.2f}" if r["top5"] is not None else "-",
            f"{r['agreement']:.3f}" if r["agreement"] is not None else "-",
            f"{r['sqnr_db']:.2f}" if r["sqnr_db"] is not None else "-",
            "no" if r["uses_data"] else "yes",
            f"{r['quantize_seconds']:.1f}" if r["quantize_seconds"] else "-",
        ])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(b) + " |" for b in body]
        lines += [f"\n**WARNING: {n}**" for n in getattr(result, "notes", [])]
        return "\n".join(lines)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = [f"{result.model} on {result.n} images"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    lines.append(resolution_note(result))
    lines += [f"WARNING: {n}" for n in getattr(result, "notes", [])]
    return "\n".join(lines)
