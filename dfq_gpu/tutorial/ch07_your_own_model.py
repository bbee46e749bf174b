"""Chapter 7, your own model: :class:`DFQDashboard` (:func:`dashboard`) toggles every DFQ stage,
the bit widths and the weight granularity on any model and data and shows accuracy, logit SQNR
and per-layer ranges; :func:`metrics_table` is its runs table."""

from __future__ import annotations

import html
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import _widgets as ui

__all__ = ["metrics_table", "DFQDashboard", "dashboard"]


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """An HTML table of dashboard runs (newest first)."""
    head = ["#", "setting", "top-1", "agreement", "SQNR dB", "quantize s"]
    body = []
    for r in rows:
        m = r["metrics"]
        body.append([str(r["run"]), html.escape(r["label"]), "-" if m.top1 is None else f"{100 * m.top1:.2f}%",
                     "-" if m.agreement is None else f"{m.agreement:.3f}",
                     "-" if m.sqnr_db is None else f"{m.sqnr_db:.2f}", f"{r['seconds']:.1f}"])
    th = "".join(f"<th style='padding:0 8px'>{h}</th>" for h in head)
    tr = "".join("<tr>" + "".join(f"<td style='padding:0 8px'>{c}</td>" for c in b) + "</tr>" for b in body)
    return f"<table class='dfq-runs'><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"


class DFQDashboard(ui.Explorer):
    """Toggle each DFQ stage, the bit widths and the weight granularity on any model and data,
    and see accuracy, logit SQNR and per-layer ranges update.

    Args:
        model: any ``nn.Module`` :func:`dfq_gpu.quantize` can trace (eval mode is used).
        data: a ``Dataset`` of ``(x, label)``, a tensor of inputs, or a list of batches
            (``(x, labels)`` pairs or input tensors); evaluated against the float model.
        example_inputs: for tracing; default: the first sample of ``data``.
        input_range: the float range of the inputs (as ``DFQConfig.input_range``).
        calibration: input batches for empirical bias correction (default: the first 64 inputs).
        leaf_modules: passed to :func:`dfq_gpu.quantize`.
        layer: the layer whose ranges are plotted first.
    """

    def __init__(self, model: nn.Module, data: Any, example_inputs: tuple[torch.Tensor, ...] | None = None,
                 input_range: tuple[float, float] | None = None, calibration: Sequence[torch.Tensor] | None = None,
                 leaf_modules: Sequence[str] = (), layer: str | None = None, batch_size: int = 256,
                 auto: bool = True) -> None:
        from ..evaluate import collect_outputs

        W = ui.widgets()
        self.model = model.eval()
        self.data = data
        self.batch_size = batch_size
        inputs = self._first_inputs(data, 64)
        self.example_inputs = example_inputs if example_inputs is not None else (inputs[:1],)
        self.calibration = list(calibration) if calibration is not None else [inputs]
        self.input_range = input_range
        self.leaf_modules = tuple(leaf_modules)
        self.reference = collect_outputs(self.model, data, batch_size=batch_size)
        self.history: list[dict[str, Any]] = []
        self.q: nn.Module | None = None
        st = {"description_width": "initial"}
        self.fold_bn = W.Checkbox(value=True, description="fold BN", style=st, indent=False)
        self.equalize = W.Checkbox(value=True, description="equalize (CLE)", style=st, indent=False)
        self.absorb = W.Checkbox(value=True, description="absorb biases", style=st, indent=False)
        self.relu6 = ui.control("Dropdown", options=["clip", "replace", "keep"], value="clip", description="ReLU6")
        self.bias_correction = ui.control("ToggleButtons", options=["none", "analytic", "empirical"], value="analytic",
                                          description="bias corr.")
        self.granularity = ui.control("ToggleButtons", options=["tensor", "channel"], value="tensor",
                                      description="weights per")
        self.weight_bits = ui.control("IntSlider", min=2, max=8, value=8, description="weight bits")
        self.act_bits = ui.control("Dropdown",
                                   options=[("float", 0), ("4", 4), ("5", 5), ("6", 6), ("8", 8), ("16", 16)],
                                   value=8, description="act bits")
        self.layer = ui.control("Dropdown", options=[], description="layer", layout=W.Layout(width="380px"))
        self._wanted_layer = layer
        self.run_button = W.Button(description="run", icon="play", layout=W.Layout(width="90px"))
        self.run_button.on_click(lambda _b: self.run())
        stages = W.HBox([self.fold_bn, self.equalize, self.absorb], layout=W.Layout(width="430px"))
        rows = [[stages, self.relu6], [self.bias_correction, self.granularity], [self.weight_bits, self.act_bits],
                [self.layer, self.run_button]]
        self.table = W.HTML()
        self._init_ui([c for r in rows for c in r], extra=[self.table], rows=rows)
        self.stage_controls = [self.fold_bn, self.equalize, self.absorb, self.relu6, self.bias_correction,
                               self.granularity, self.weight_bits, self.act_bits]
        self._quiet = False
        if auto:
            for c in self.stage_controls:
                c.observe(lambda _change: None if self._quiet else self.run(), names="value")
        self.layer.observe(lambda _change: None if self._quiet else self.redraw(), names="value")
        self.run()

    @staticmethod
    def _first_inputs(data: Any, n: int) -> torch.Tensor:
        if isinstance(data, torch.Tensor):
            return data[:n]
        if hasattr(data, "tensors"):
            return data.tensors[0][:n]
        xs: list[torch.Tensor] = []
        for b in data:
            x = b[0] if isinstance(b, (tuple, list)) else b
            xs.append(x)
            if sum(len(t) for t in xs) >= n:
                break
        return torch.cat(xs)[:n]

    def config(self) -> Any:
        """The ``DFQConfig`` the controls describe."""
        from ..config import DFQConfig

        return DFQConfig(
            fold_bn=self.fold_bn.value, equalize=self.equalize.value, absorb_bias=self.absorb.value,
            relu6=self.relu6.value, bias_correction=self.bias_correction.value, weight_bits=self.weight_bits.value,
            act_bits=self.act_bits.value or None, weight_granularity=self.granularity.value,
            input_range=self.input_range)

    def set_controls(self, config: Any) -> None:
        """Move the controls to ``config`` (as far as they can show it) without running anything."""
        acts = config.act_bits or 0
        values = [(self.fold_bn, config.fold_bn), (self.equalize, config.equalize), (self.absorb, config.absorb_bias),
                  (self.relu6, config.relu6), (self.bias_correction, config.bias_correction),
                  (self.granularity, config.weight_granularity), (self.weight_bits, config.weight_bits),
                  (self.act_bits, acts if acts in [v for _, v in self.act_bits.options] else None)]
        self._quiet = True
        try:
            for control, value in values:
                if value is None:
                    continue
                if hasattr(control, "min") and not control.min <= value <= control.max:
                    continue
                control.value = value
        finally:
            self._quiet = False

    def label(self, config: Any = None) -> str:
        """A short description of ``config`` (default: the controls' setting) for the runs table."""
        c = config if config is not None else self.config()
        stages = [s for s, on in (("BN", c.fold_bn), ("CLE", c.equalize), ("absorb", c.absorb_bias)) if on]
        acts = "float" if c.act_bits is None else str(c.act_bits)
        return (f"W{c.weight_bits}A{acts} per-{c.weight_granularity}, {'+'.join(stages) or 'nothing'}, "
                f"relu6={c.relu6}, BC={c.bias_correction}")

    def run(self, config: Any = None) -> Any:
        """Quantize with ``config`` (default: the controls' setting; a given config also moves the
        controls to it), evaluate, add a row to the runs table and redraw; returns the metrics."""
        from ..api import quantize
        from ..evaluate import evaluate

        metrics = None
        with self.busy("quantizing", steps=3) as advance:
            cfg = config or self.config()
            if config is not None:
                self.set_controls(config)
            t0 = time.perf_counter()
            q = quantize(self.model, self.example_inputs, cfg,
                         data=self.calibration if cfg.bias_correction == "empirical" or cfg.act_ranges == "calibrate"
                         else None, leaf_modules=self.leaf_modules)
            secs = time.perf_counter() - t0
            advance("evaluating")
            metrics = evaluate(q, self.data, reference=self.reference, batch_size=self.batch_size, progress=False)
            self.q = q
            self.history.insert(0, {"run": len(self.history) + 1, "label": self.label(cfg), "metrics": metrics,
                                    "seconds": secs, "config": cfg})
            self.table.value = metrics_table(self.history[:8])
            names = list(q.report.layers)
            current = self.layer.value if self.layer.value in names else (
                self._wanted_layer if self._wanted_layer in names else
                next((n for n, r in q.report.layers.items() if r.kind == "depthwise"), names[0]))
            if list(self.layer.options) != names:
                self._quiet = True
                try:
                    self.layer.options = names
                    self.layer.value = current
                finally:
                    self._quiet = False
            advance("plotting")
            self.redraw()
        return metrics

    def redraw(self) -> None:
        """Plot the chosen layer's per-channel ranges and every layer's weight SQNR."""
        plt = ui.plt()
        q = self.q
        if q is None or self.layer.value is None:
            return
        rep = q.report
        fig, ax = plt.subplots(1, 3, figsize=(15, 3.3))
        layer = self.layer.value
        try:
            rep.plot_ranges(layer, ax=[ax[0], ax[1]], which="both")
        except ValueError:
            ax[0].text(0.5, 0.5, "no ranges recorded", ha="center")
        if rep.layer(layer).range_folded is not None and rep.layer(layer).range_equalized is not None:
            lo = min(np.min(rep.layer(layer).range_folded[0]), np.min(rep.layer(layer).range_equalized[0]))
            hi = max(np.max(rep.layer(layer).range_folded[1]), np.max(rep.layer(layer).range_equalized[1]))
            for a in ax[:2]:
                a.set_ylim(lo * 1.05, hi * 1.05)
        names = list(rep.layers)
        sq = [rep.layers[n].weight_sqnr_db if rep.layers[n].weight_sqnr_db is not None else np.nan for n in names]
        kinds = [rep.layers[n].kind for n in names]
        ax[2].bar(np.arange(len(names)), sq, color=[ui.RED if k == "depthwise" else ui.BLUE for k in kinds])
        ax[2].axvline(names.index(layer), color="k", lw=0.8, ls="--")
        ax[2].set_xlabel("layer (red: depthwise)")
        ax[2].set_ylabel("weight SQNR (dB)")
        ax[2].set_title("every layer's weight SQNR", fontsize="small")
        fig.tight_layout()
        m = self.history[0]["metrics"] if self.history else None
        r = rep.layer(layer)
        if m is not None:
            top1 = "" if m.top1 is None else f"top-1 <b>{100 * m.top1:.2f}%</b>, "
            self.text.value = (
                f"<b>{html.escape(self.history[0]['label'])}</b>: {top1}agreement with float "
                f"<b>{m.agreement:.3f}</b>, logit SQNR <b>{m.sqnr_db:.2f} dB</b> on {m.n} samples | "
                f"{html.escape(layer)}: spread {_fmt(r.range_ratio_folded)} &rarr; {_fmt(r.range_ratio_equalized)}, "
                f"weight SQNR {_fmt(r.weight_sqnr_db)} dB | {html.escape(rep.summary())}")
        ui.show_figure(self.out, fig)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def dashboard(model: nn.Module, data: Any, **kwargs: Any) -> DFQDashboard:
    """A :class:`DFQDashboard` for ``model`` on ``data`` (see there for the arguments)."""
    return DFQDashboard(model, data, **kwargs)
