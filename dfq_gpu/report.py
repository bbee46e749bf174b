"""What the pipeline did to every layer and region, and what it skipped and why.

Each pass records its facts here; ``q.report`` renders them as a text table (``repr``),
an HTML table in Jupyter (``_repr_html_``) and a plain dict (``to_dict``), and plots the
per-channel weight ranges like the paper's figures (``plot_ranges``).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LayerRecord", "RegionRecord", "Report"]


def _arr(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


@dataclass
class LayerRecord:
    """Facts about one conv / linear layer."""

    name: str
    kind: str  # "conv", "depthwise", "grouped conv", "linear"
    weight_shape: tuple[int, ...]
    bn: str | None = None  # the batch norm folded into it
    # per-output-channel weight ranges (min, max), after BN folding and after CLE / absorption
    range_folded: tuple[np.ndarray, np.ndarray] | None = None
    range_equalized: tuple[np.ndarray, np.ndarray] | None = None
    out_scale: np.ndarray | None = None  # total factor applied to output channels by CLE (1/s)
    in_scale: np.ndarray | None = None  # total factor applied to input channels by CLE (s)
    absorbed_out: np.ndarray | None = None  # c removed from this layer's bias (bias absorption)
    absorbed_in: np.ndarray | None = None  # W c added to this layer's bias from the previous layer
    bias_correction: np.ndarray | None = None  # subtracted from the bias by bias correction
    w_bits: int | None = None
    w_scale: np.ndarray | None = None
    w_zero_point: np.ndarray | None = None
    weight_sqnr_db: float | None = None
    act_in: dict[str, Any] | None = None  # quantizer of the layer's input
    act_out: dict[str, Any] | None = None  # quantizer of the layer's output
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, tuple) and v and isinstance(v[0], np.ndarray):
                d[k] = [_arr(x) for x in v]
            elif isinstance(v, dict):
                d[k] = {kk: _arr(vv) for kk, vv in v.items()}
            else:
                d[k] = _arr(v)
        return d

    @property
    def range_ratio_folded(self) -> float | None:
        return _spread(self.range_folded)

    @property
    def range_ratio_equalized(self) -> float | None:
        return _spread(self.range_equalized)


def _spread(r: tuple[np.ndarray, np.ndarray] | None) -> float | None:
    """Largest channel range over the median channel range."""
    if r is None:
        return None
    width = r[1] - r[0]
    med = float(np.median(width))
    return float(width.max() / med) if med > 0 else math.inf


@dataclass
class RegionRecord:
    """An equalization region and what happened to it."""

    srcs: tuple[str, ...]
    sinks: tuple[str, ...]
    channels: int
    residual: bool
    status: str  # "equalized", "not equalized"
    scale_min: float | None = None
    scale_max: float | None = None
    clamped: int = 0  # channels whose scale hit the bound
    dead: int = 0  # channels left unscaled as dead
    absorbed: str | None = None  # what bias absorption did, or why not
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{'+'.join(self.srcs)} -> {'+'.join(self.sinks)}"

    def to_dict(self) -> dict[str, Any]:
        return {k: _arr(v) if not isinstance(v, tuple) else list(v) for k, v in self.__dict__.items()}


@dataclass
class Report:
    """The per-layer and per-region record of a DFQ run."""

    config: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, LayerRecord] = field(default_factory=dict)
    regions: list[RegionRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    steps: list[str] = field(default_factory=list)  # what each pass did, in order
    # every pass of dfq_gpu.pipeline: {"name", "status": ran / off / skipped, "why", "seconds"}
    passes: list[dict[str, Any]] = field(default_factory=list)
    cle_iterations: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # dfq_gpu.sensitivity / quantize_with_fallback: the ranked table and the fallback's steps (plain dicts)
    sensitivity: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None

    # ------------------------------------------------------------------ recording
    def layer(self, name: str) -> LayerRecord:
        """The record of layer ``name`` (``KeyError`` listing the names if unknown)."""
        try:
            return self.layers[name]
        except KeyError:
            raise KeyError(f"no layer {name!r} in the report; layers are: {', '.join(self.layers)}") from None

    def skip(self, what: str, why: str) -> None:
        self.skipped.append((what, why))

    def step(self, text: str) -> None:
        self.steps.append(text)

    @property
    def equalized_regions(self) -> list[RegionRecord]:
        return [r for r in self.regions if r.status == "equalized"]

    # ------------------------------------------------------------------ rendering
    def to_dict(self) -> dict[str, Any]:
        return {
            "config": dict(self.config),
            "steps": list(self.steps),
            "passes": [dict(p) for p in self.passes],
            "cle_iterations": self.cle_iterations,
            "layers": {k: v.to_dict() for k, v in self.layers.items()},
            "regions": [r.to_dict() for r in self.regions],
            "skipped": [{"what": w, "why": y} for w, y in self.skipped],
            "timings": dict(self.timings),
            **{k: v for k, v in (("sensitivity", self.sensitivity), ("fallback", self.fallback)) if v is not None},
        }

    def _rows(self) -> list[list[str]]:
        rows = []
        for rec in self.layers.values():
            def f(v: float | None, fmt: str = "{:.3g}") -> str:
                return "-" if v is None else fmt.format(v)

            scale = "-"
            if rec.out_scale is not None:
                scale = f"{float(np.min(rec.out_scale)):.3g}..{float(np.max(rec.out_scale)):.3g}"
            absorbed = "-" if rec.absorbed_out is None else f"{float(np.abs(rec.absorbed_out).max()):.3g}"
            bc = "-" if rec.bias_correction is None else f"{float(np.abs(rec.bias_correction).max()):.3g}"
            act = "-"
            if rec.act_out:
                act = f"[{rec.act_out['lo']:.3g}, {rec.act_out['hi']:.3g}]"
            rows.append([rec.name, rec.kind, f(rec.range_ratio_folded), f(rec.range_ratio_equalized), scale,
                         absorbed, bc, f(rec.weight_sqnr_db, "{:.1f}"), act])
        return rows

    _HEAD = ["layer", "kind", "spread", "spread CLE", "1/s (CLE)", "absorbed", "bias corr", "W SQNR dB", "act range"]

    def summary(self) -> str:
        eq = self.equalized_regions
        res = sum(1 for r in eq if r.residual)
        return (f"{len(self.layers)} layers, {len(eq)} equalized regions ({res} residual), "
                f"{len(self.regions) - len(eq)} regions not equalized, {len(self.skipped)} skipped items, "
                f"CLE sweeps: {self.cle_iterations}")

    def __repr__(self) -> str:
        rows = self._rows()
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(self._HEAD)]
        lines = ["DFQ report: " + self.summary()]
        lines += ["  " + " | ".join(h.ljust(w) for h, w in zip(self._HEAD, widths))]
        lines += ["  " + "-+-".join("-" * w for w in widths)]
        lines += ["  " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        if self.skipped:
            lines.append("skipped:")
            lines += [f"  {w}: {y}" for w, y in self.skipped]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        esc = html.escape
        head = "".join(f"<th>{esc(h)}</th>" for h in self._HEAD)
        body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in self._rows())
        skipped = "".join(f"<li><b>{esc(w)}</b>: {esc(y)}</li>" for w, y in self.skipped)
        steps = "".join(f"<li>{esc(s)}</li>" for s in self.steps)
        return (f"<div class='dfq-report'><p><b>DFQ report</b>: {esc(self.summary())}</p>"
                f"<details><summary>steps</summary><ol>{steps}</ol></details>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                + (f"<details><summary>skipped ({len(self.skipped)})</summary><ul>{skipped}</ul></details>"
                   if self.skipped else "") + "</div>")

    # ------------------------------------------------------------------ plots
    def plot_ranges(self, layer: str, ax: Any = None, which: str = "both") -> Any:
        """Box plot of the per-output-channel weight ranges of ``layer`` (as the paper's Fig. 2).

        ``which``: ``"folded"``, ``"equalized"`` or ``"both"`` (side by side, on one shared y-axis
        so that the panels compare).
        """
        import matplotlib.pyplot as plt

        rec = self.layer(layer)
        series = []
        if which in ("folded", "both") and rec.range_folded is not None:
            series.append(("after BN folding", rec.range_folded))
        if which in ("equalized", "both") and rec.range_equalized is not None:
            series.append(("after CLE", rec.range_equalized))
        if not series:
            raise ValueError(f"layer {layer!r} has no recorded ranges for which={which!r}")
        if ax is None:
            _, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 3.2), squeeze=False, sharey=True)
            axes = list(axes[0])
        else:
            axes = [ax] * len(series) if not isinstance(ax, (list, tuple, np.ndarray)) else list(ax)
        # one y-axis for before and after: separate axes would rescale each panel and hide what CLE does
        top = max(float(max(np.max(np.abs(lo)), np.max(np.abs(hi)))) for _, (lo, hi) in series) * 1.05 or 1.0
        for a, (title, (lo, hi)) in zip(axes, series):
            a.set_ylim(-top, top)
            ch = np.arange(len(lo))
            a.vlines(ch, lo, hi, color="tab:blue", lw=1.0)
            a.scatter(ch, lo, s=3, color="tab:blue")
            a.scatter(ch, hi, s=3, color="tab:blue")
            a.axhline(0, color="k", lw=0.5)
            a.set_title(f"{layer}: {title}")
            a.set_xlabel("output channel")
            a.set_ylabel("weight range")
        return axes[0] if len(axes) == 1 else axes
