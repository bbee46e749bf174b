"""Interactive widgets and plots for the tutorial notebooks, and a DFQ dashboard for any model.

Each explorer is a small class: its ``update(...)`` method computes and draws for one choice of
the controls (usable without a browser, and what the tests call), and its ``widget`` (shown
when the object is the last expression of a cell) wires ``ipywidgets`` controls to it. Slow
callbacks run only when a slider is released (``continuous_update=False``) and report progress
in a status line; plots are real matplotlib figures rendered into an ``ipywidgets.Output``.

- :class:`QuantizationExplorer` (chapter 1): bits, range and symmetric/asymmetric on a tensor;
- :class:`ChannelRangeExplorer` (chapter 2): per-channel weight ranges of a layer;
- :class:`CLEExplorer` (chapter 3): cross-layer equalization sweep by sweep, per region;
- :class:`AbsorptionExplorer` (chapter 4): bias absorption's ``beta - n gamma`` rule;
- :class:`BiasCorrectionExplorer` (chapter 5): bias correction per bit width and mode;
- :class:`GemmTileExplorer` (chapter 6): the int8 GEMM kernel's tiles and K loop;
  :func:`show_benchmark_results`: the GPU (or else CPU) benchmark results;
- :class:`DFQDashboard` / :func:`dashboard` (chapter 7): every DFQ stage on any model and data.
"""

from __future__ import annotations

import html
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import formulas as fm

__all__ = [
    "show_figure", "quantize_tensor", "plot_quantization", "QuantizationExplorer", "plot_channel_boxplot",
    "plot_layer_sqnr", "ChannelRangeExplorer", "plot_cle_region", "CLEExplorer", "plot_absorption",
    "AbsorptionExplorer", "plot_layer_bias", "BiasCorrectionExplorer", "plot_gemm_tiles", "GemmTileExplorer",
    "plot_kernel_benchmark", "plot_e2e_benchmark", "kernel_table_html", "e2e_table_html", "compile_table_html",
    "show_benchmark_results", "DFQDashboard", "dashboard", "metrics_table",
]

log = logging.getLogger(__name__)

_BLUE, _GREY, _RED, _GREEN, _ORANGE = "tab:blue", "0.6", "tab:red", "tab:green", "tab:orange"


def _plt() -> Any:
    import matplotlib.pyplot as plt

    return plt


def _w() -> Any:
    import ipywidgets

    return ipywidgets


def show_figure(out: Any, fig: Any) -> None:
    """Render ``fig`` into the ``ipywidgets.Output`` ``out`` (replacing what was there) and close it."""
    from IPython.display import display

    with out:
        out.clear_output(wait=True)
        display(fig)
    _plt().close(fig)


class _Explorer:
    """Shared plumbing: a status line with a progress bar, an output area, and display."""

    def _init_ui(self, controls: Sequence[Any], extra: Sequence[Any] = (),
                 rows: Sequence[Sequence[Any]] | None = None) -> None:
        """Lay out ``controls`` three to a row (or as the given ``rows``), then ``extra``, the
        progress bar and status line, the result line and the plot."""
        W = _w()
        self.status = W.HTML(value="")
        self.progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="160px", visibility="hidden"))
        self.text = W.HTML(value="")
        self.out = W.Output(layout=W.Layout(min_height="120px"))
        if rows is None:
            rows = [controls[i:i + 3] for i in range(0, len(controls), 3)]
        rows = [W.HBox(list(r)) for r in rows]
        self.widget = W.VBox(rows + list(extra) + [W.HBox([self.progress, self.status]), self.text, self.out])

    @contextmanager
    def busy(self, what: str, steps: int = 1) -> Iterator[Callable[[str], None]]:
        """Show ``what`` and a progress bar while the block runs; yields ``advance(label)``."""
        t0 = time.perf_counter()
        self.progress.max = max(1, steps)
        self.progress.value = 0
        self.progress.layout.visibility = "visible"
        self.status.value = f"<i>{html.escape(what)}...</i>"

        def advance(label: str) -> None:
            self.progress.value = min(self.progress.max, self.progress.value + 1)
            self.status.value = f"<i>{html.escape(label)}...</i>"

        try:
            yield advance
            self.status.value = f"<span style='color:gray'>updated in {time.perf_counter() - t0:.1f} s</span>"
        except Exception as exc:
            why = f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}"
            self.status.value = f"<span style='color:#b00'>{why}</span>"
            log.exception("widget update failed")
        finally:
            self.progress.value = self.progress.max
            self.progress.layout.visibility = "hidden"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _slider(kind: str, **kw: Any) -> Any:
    W = _w()
    if kind.endswith("Slider"):
        kw.setdefault("continuous_update", False)
    style = {"description_width": "initial"}
    if kind == "ToggleButtons":
        style["button_width"] = "auto"
    kw.setdefault("style", style)
    return getattr(W, kind)(**kw)


# ============================================================================ chapter 1
def quantize_tensor(w: np.ndarray, bits: int, clip: float = 1.0, symmetric: bool = False) -> dict[str, Any]:
    """Quantize ``w`` with a grid covering ``clip`` times its range.

    Asymmetric: the grid spans ``[clip * min(w), clip * max(w)]``; symmetric: ``[-a, a]`` with
    ``a = clip * max|w|``. Returns the dequantized tensor, scale, zero point, range, SQNR and
    the squared error split into rounding (values inside the range) and clipping (outside).
    """
    w = np.asarray(w, dtype=np.float64).ravel()
    if symmetric:
        a = clip * float(np.max(np.abs(w)))
        lo, hi = -a, a
    else:
        lo, hi = clip * float(w.min()), clip * float(w.max())
    scale, zp = fm.quant_params(np.array(lo), np.array(hi), bits, symmetric)
    scale, zp = float(scale), int(zp)
    wq = fm.fake_quant(w, scale, zp, bits, symmetric)
    qmin, qmax = fm.quant_grid(bits, symmetric)
    glo, ghi = (qmin - zp) * scale, (qmax - zp) * scale
    inside = (w >= glo - scale / 2) & (w <= ghi + scale / 2)
    err = wq - w
    return {"wq": wq, "err": err, "scale": scale, "zero_point": zp, "lo": glo, "hi": ghi, "inside": inside,
            "sqnr_db": fm.sqnr_db(w, wq), "mse_round": float(np.sum(err[inside] ** 2) / w.size),
            "mse_clip": float(np.sum(err[~inside] ** 2) / w.size), "levels": qmax - qmin + 1,
            "qmin": qmin, "qmax": qmax}


def sqnr_vs_clip(w: np.ndarray, bits: int, symmetric: bool, clips: np.ndarray | None = None,
                 max_samples: int = 50000) -> tuple[np.ndarray, np.ndarray]:
    """SQNR (dB) of quantizing ``w`` for a range of clip fractions (on a subsample of large tensors)."""
    w = np.asarray(w, dtype=np.float64).ravel()
    if w.size > max_samples:
        w = np.random.default_rng(0).choice(w, max_samples, replace=False)
    clips = np.linspace(0.05, 1.0, 60) if clips is None else clips
    return clips, np.array([quantize_tensor(w, bits, c, symmetric)["sqnr_db"] for c in clips])


def plot_quantization(w: np.ndarray, bits: int, clip: float = 1.0, symmetric: bool = False, name: str = "") -> Any:
    """Three panels: the values with the quantization grid, the error split into rounding and
    clipping, and SQNR against the clip fraction (the current choice marked)."""
    plt = _plt()
    r = quantize_tensor(w, bits, clip, symmetric)
    w = np.asarray(w, dtype=np.float64).ravel()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.3))
    ax[0].hist(w, bins=120, color=_GREY)
    grid = (np.arange(r["qmin"], r["qmax"] + 1) - r["zero_point"]) * r["scale"]
    if len(grid) <= 64:
        for g in grid:
            ax[0].axvline(g, color=_BLUE, lw=0.6, alpha=0.7)
    else:
        ax[0].axvspan(r["lo"], r["hi"], color=_BLUE, alpha=0.12)
    ax[0].axvspan(w.min(), r["lo"], color=_RED, alpha=0.15)
    ax[0].axvspan(r["hi"], w.max(), color=_RED, alpha=0.15)
    ax[0].set_yscale("log")
    ax[0].set_title(f"{name} values and the {r['levels']}-level grid" if name else f"{r['levels']}-level grid")
    ax[0].set_xlabel("value (blue: grid points, red: clipped)")
    e_in, e_out = r["err"][r["inside"]], r["err"][~r["inside"]]
    bins = np.linspace(min(r["err"].min(), -r["scale"]), max(r["err"].max(), r["scale"]), 80)
    ax[1].hist(e_in, bins=bins, color=_BLUE, label="rounding")
    if e_out.size:
        ax[1].hist(e_out, bins=bins, color=_RED, label="clipping")
    ax[1].axvline(-r["scale"] / 2, color="k", lw=0.6, ls="--")
    ax[1].axvline(r["scale"] / 2, color="k", lw=0.6, ls="--")
    ax[1].set_yscale("log")
    ax[1].set_title("error Q(w) - w (dashed: +-scale/2)")
    ax[1].legend(fontsize="small")
    clips, sq = sqnr_vs_clip(w, bits, symmetric)
    ax[2].plot(clips, sq, color=_BLUE)
    ax[2].plot([clip], [r["sqnr_db"]], "o", color=_RED)
    best = clips[int(np.argmax(sq))]
    ax[2].axvline(best, color=_GREEN, lw=0.8, ls="--", label=f"best {best:.2f}")
    ax[2].set_xlabel("range / full range")
    ax[2].set_ylabel("SQNR (dB)")
    ax[2].set_title(f"{bits}-bit {'symmetric' if symmetric else 'asymmetric'}: SQNR vs range")
    ax[2].legend(fontsize="small")
    fig.tight_layout()
    return fig


class QuantizationExplorer(_Explorer):
    """Bits, range and symmetric/asymmetric quantization of one of ``tensors`` (name -> array)."""

    def __init__(self, tensors: Mapping[str, Any], bits: int = 4, clip: float = 1.0, symmetric: bool = False) -> None:
        self.tensors = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
                        for k, v in tensors.items()}
        self.tensor = _slider("Dropdown", options=list(self.tensors), description="tensor")
        self.bits = _slider("IntSlider", min=2, max=8, value=bits, description="bits")
        self.clip = _slider("FloatSlider", min=0.05, max=1.0, step=0.01, value=clip, description="range fraction",
                            readout_format=".2f")
        self.mode = _slider("ToggleButtons", options=["asymmetric", "symmetric"],
                            value="symmetric" if symmetric else "asymmetric", description="grid")
        self._init_ui([self.tensor, self.bits, self.clip, self.mode])
        for c in (self.tensor, self.bits, self.clip, self.mode):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.tensor.value, self.bits.value, self.clip.value, self.mode.value == "symmetric")

    def update(self, tensor: str, bits: int, clip: float, symmetric: bool) -> dict[str, Any]:
        r: dict[str, Any] = {}
        with self.busy("quantizing"):
            w = self.tensors[tensor]
            r = quantize_tensor(w, bits, clip, symmetric)
            self.text.value = (
                f"<b>{html.escape(tensor)}</b> ({w.size} values): scale <b>{r['scale']:.4g}</b>, zero point "
                f"<b>{r['zero_point']}</b>, grid [{r['lo']:.4g}, {r['hi']:.4g}] | SQNR <b>{r['sqnr_db']:.2f} dB</b> | "
                f"mean squared error: rounding {r['mse_round']:.3g}, clipping {r['mse_clip']:.3g}")
            show_figure(self.out, plot_quantization(w, bits, clip, symmetric, tensor))
        self.last = r
        return r


# ============================================================================ chapter 2
def plot_channel_boxplot(weight: torch.Tensor | np.ndarray, ax: Any = None, max_channels: int = 64,
                         title: str = "") -> Any:
    """Box plot of the weights of each output channel (as the paper's Fig. 2)."""
    plt = _plt()
    w = np.asarray(weight.detach().cpu() if isinstance(weight, torch.Tensor) else weight, dtype=np.float64)
    w = w.reshape(w.shape[0], -1)
    shown = min(max_channels, w.shape[0])
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 3))
    ax.boxplot(list(w[:shown]), widths=0.6, showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, shown + 1, max(1, shown // 16)))
    ax.set_xticklabels(range(0, shown, max(1, shown // 16)))
    ax.set_xlabel("output channel" + (f" (first {shown} of {w.shape[0]})" if shown < w.shape[0] else ""))
    ax.set_ylabel("weight")
    ax.set_title(title)
    return ax


def _channel_sqnr(w: np.ndarray, bits: int, per_channel: bool) -> np.ndarray:
    w = w.reshape(w.shape[0], -1)
    if per_channel:
        scale, zp = fm.quant_params(w.min(1), w.max(1), bits)
        wq = fm.fake_quant(w, scale[:, None], zp[:, None], bits)
    else:
        scale, zp = fm.quant_params(w.min(), w.max(), bits)
        wq = fm.fake_quant(w, scale, zp, bits)
    return np.array([fm.sqnr_db(a, b) for a, b in zip(w, wq)])


def plot_layer_sqnr(names: Sequence[str], kinds: Sequence[str], sqnr_tensor: Sequence[float],
                    sqnr_channel: Sequence[float], ax: Any = None) -> Any:
    """Weight SQNR of every layer, per-tensor against per-channel quantization (depthwise in red)."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 3.2))
    x = np.arange(len(names))
    colors = [_RED if k == "depthwise" else _BLUE for k in kinds]
    ax.bar(x, sqnr_channel, color="0.85", label="per-channel")
    ax.bar(x, sqnr_tensor, color=colors, width=0.6, label="per-tensor (red: depthwise)")
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("_blocks.", "b").replace("_conv", "") for n in names], rotation=90,
                       fontsize="x-small")
    ax.set_ylabel("weight SQNR (dB)")
    ax.legend(fontsize="small")
    return ax


class ChannelRangeExplorer(_Explorer):
    """The per-output-channel weights of a layer of a prepared (BN-folded) network: box plots,
    the number of per-tensor grid steps each channel spans, and per-channel SQNR."""

    def __init__(self, gm: nn.Module, layers: Sequence[str] | None = None, bits: int = 8,
                 layer: str | None = None) -> None:
        self.gm = gm
        report = gm.report
        layers = list(layers) if layers is not None else [n for n, r in report.layers.items() if r.kind == "depthwise"]
        opts = [(f"{n} ({report.layers[n].kind}, spread {report.layers[n].range_ratio_folded:.1f})", n)
                for n in layers]
        self.layer = _slider("Dropdown", options=opts, value=layer if layer is not None else layers[0],
                             description="layer", layout=_w().Layout(width="430px"))
        self.bits = _slider("IntSlider", min=2, max=8, value=bits, description="bits")
        self._init_ui([self.layer, self.bits])
        for c in (self.layer, self.bits):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.layer.value, self.bits.value)

    def update(self, layer: str, bits: int) -> dict[str, Any]:
        plt = _plt()
        out: dict[str, Any] = {}
        with self.busy("plotting"):
            w = self.gm.get_submodule(layer).weight.detach().double().numpy()
            w2 = w.reshape(w.shape[0], -1)
            lo, hi = w2.min(1), w2.max(1)
            from .tutorial import levels_per_channel

            levels = levels_per_channel(lo, hi, bits)
            sq_t, sq_c = _channel_sqnr(w, bits, False), _channel_sqnr(w, bits, True)
            fig, ax = plt.subplots(1, 3, figsize=(14, 3.4), gridspec_kw={"width_ratios": [2.2, 1.3, 1.3]})
            plot_channel_boxplot(w, ax[0], title=f"{layer}: weights per output channel after BN folding")
            ch = np.arange(len(levels))
            ax[1].bar(ch, levels, color=np.where(levels < 16, _RED, _BLUE), width=1.0)
            ax[1].axhline(2**bits - 1, color="k", ls="--", lw=0.8)
            ax[1].set_yscale("log")
            ax[1].set_ylim(bottom=0.1)
            ax[1].set_xlabel("output channel")
            ax[1].set_title(f"grid steps per channel, per-tensor {bits}-bit\n(red: < 16, dashed: per-channel)")
            fin_t, fin_c = np.clip(sq_t, -10, 120), np.clip(sq_c, -10, 120)
            ax[2].plot(ch, fin_c, ".", color=_GREEN, label="per-channel", ms=4)
            ax[2].plot(ch, fin_t, ".", color=_RED, label="per-tensor", ms=4)
            ax[2].set_xlabel("output channel")
            ax[2].set_ylabel("SQNR (dB)")
            ax[2].set_title("weight SQNR of each channel")
            ax[2].legend(fontsize="small")
            fig.tight_layout()
            spread = float((hi - lo).max() / np.median(hi - lo))
            self.text.value = (
                f"<b>{html.escape(layer)}</b>: {w.shape[0]} channels; largest/median channel range "
                f"<b>{spread:.1f}</b>; "
                f"per-tensor {bits}-bit grid: <b>{int(np.sum(levels < 4))}</b> channels span fewer than 4 steps, "
                f"median {np.median(levels):.0f} steps; layer SQNR per-tensor "
                f"<b>{fm.sqnr_db(w2, _fq(w2, bits, False)):.1f} dB</b> vs per-channel "
                f"<b>{fm.sqnr_db(w2, _fq(w2, bits, True)):.1f} dB</b>")
            show_figure(self.out, fig)
            out = {"levels": levels, "sqnr_tensor": sq_t, "sqnr_channel": sq_c, "spread": spread}
        return out


def _fq(w2: np.ndarray, bits: int, per_channel: bool) -> np.ndarray:
    if per_channel:
        s, z = fm.quant_params(w2.min(1), w2.max(1), bits)
        return fm.fake_quant(w2, s[:, None], z[:, None], bits)
    s, z = fm.quant_params(w2.min(), w2.max(), bits)
    return fm.fake_quant(w2, s, z, bits)


# ============================================================================ chapter 3
def plot_cle_region(stepper: Any, k: int, sweep: int) -> Any:
    """Region ``k`` of a :class:`dfq_gpu.tutorial.CLEStepper` after ``sweep`` sweeps: the sources'
    output-channel ranges, the sinks' input-channel ranges (both before in grey), the total
    scales, and the convergence of all regions."""
    plt = _plt()
    a0, b0 = stepper.region_ranges(k, 0)
    a, b = stepper.region_ranges(k, sweep)
    s = stepper.history[sweep].total_scales[k]
    r = stepper.regions[k]
    ch = np.arange(len(a))
    fig, ax = plt.subplots(1, 4, figsize=(15, 3.3))
    for axis, before, after, what in ((ax[0], a0, a, "outputs of " + "+".join(r.srcs)),
                                      (ax[1], b0, b, "inputs of " + "+".join(r.sinks))):
        axis.bar(ch, after, color=_BLUE, width=0.8, label=f"sweep {sweep}")
        axis.plot(ch, before, "_", color="k", ms=max(2.0, min(8.0, 300.0 / len(ch))), mew=1.5, label="sweep 0")
        axis.set_ylim(0, 1.05)
        axis.set_xlabel("channel")
        axis.set_ylabel("range / tensor max")
        axis.set_title(what if len(what) < 48 else what[:45] + "...", fontsize="small")
        axis.legend(fontsize="x-small")
    ax[2].semilogy(ch, s, ".", color=_ORANGE)
    ax[2].axhline(1.0, color="k", lw=0.6)
    _plain_log_axis(ax[2])
    ax[2].set_xlabel("channel")
    ax[2].set_title("total scale s (sources / s, sinks * s)", fontsize="small")
    changes = getattr(stepper, "changes", None) or []
    if changes:
        ax[3].semilogy(np.arange(1, len(changes) + 1), changes, "o-", color=_BLUE, ms=3)
        if sweep >= 1:
            ax[3].plot([sweep], [changes[min(sweep, len(changes)) - 1]], "o", color=_RED)
    ax[3].set_xlabel("sweep")
    ax[3].set_title("largest |log s| of each sweep (all regions)", fontsize="small")
    fig.tight_layout()
    return fig


def _plain_log_axis(ax: Any) -> None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


class CLEExplorer(_Explorer):
    """Step through the sweeps of a :class:`dfq_gpu.tutorial.CLEStepper` (already run) and pick the region."""

    def __init__(self, stepper: Any, region: int = 0, sweep: int | None = None) -> None:
        self.stepper = stepper
        opts = [(stepper.region_label(k), k) for k in range(len(stepper.regions))]
        self.region = _slider("Dropdown", options=opts, value=region, description="region",
                              layout=_w().Layout(width="520px"))
        last = len(stepper.history) - 1
        self.sweep = _slider("IntSlider", min=0, max=last, value=last if sweep is None else sweep, description="sweep")
        self._init_ui([self.region, self.sweep])
        for c in (self.region, self.sweep):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.region.value, self.sweep.value)

    def update(self, region: int, sweep: int) -> dict[str, Any]:
        res: dict[str, Any] = {}
        with self.busy("plotting"):
            st = self.stepper
            p0, p = st.precision(region, 0), st.precision(region, sweep)
            s = st.history[sweep].total_scales[region]
            self.text.value = (
                f"after <b>{sweep}</b> sweeps: mean channel precision r<sub>i</sub>/R of the sources "
                f"{p0[0]:.3f} &rarr; <b>{p[0]:.3f}</b>, of the sinks {p0[1]:.3f} &rarr; <b>{p[1]:.3f}</b> "
                f"(sum {sum(p0):.3f} &rarr; <b>{sum(p):.3f}</b>); scales from {s.min():.3g} to {s.max():.3g}")
            show_figure(self.out, plot_cle_region(st, region, sweep))
            res = {"precision_before": p0, "precision": p, "scales": s}
        return res


# ============================================================================ chapter 4
def plot_absorption(view: Any, layer: str, n_sigmas: float, curve: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Any:
    """Per-channel activation intervals before/after absorption, the Gaussian of the channel
    with the largest shift, and the per-tensor range against the number of sigmas."""
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.4), gridspec_kw={"width_ratios": [2.2, 1.2, 1.2]})
    ch = np.arange(len(view.c))
    ax[0].vlines(ch - 0.2, view.before[0], view.before[1], color=_GREY, lw=1.2, label="before")
    ax[0].vlines(ch + 0.2, view.after[0], view.after[1], color=_BLUE, lw=1.2, label="after")
    (lb, hb), (la, ha) = view.tensor_range_before, view.tensor_range_after
    for v in (lb, hb):
        ax[0].axhline(v, color=_GREY, ls="--", lw=0.8)
    for v in (la, ha):
        ax[0].axhline(v, color=_BLUE, ls="--", lw=0.8)
    ax[0].set_xlabel("channel")
    ax[0].set_title(f"{layer}: data-free activation range per channel (dashed: per tensor)", fontsize="small")
    ax[0].set_ylabel("activation value")
    ax[0].legend(fontsize="x-small", loc="upper right")
    i = int(np.argmax(view.c)) if np.any(view.c > 0) else int(np.argmax(view.beta))
    mu, sd, c = view.beta[i], max(view.gamma[i], 1e-12), view.c[i]
    z = np.linspace(mu - 5 * sd, mu + 5 * sd, 400)
    pdf = fm.normal_pdf((z - mu) / sd) / sd
    ax[1].plot(z, pdf, color="k", lw=1)
    ax[1].fill_between(z, pdf, where=z < c, color=_RED, alpha=0.4, label=f"z < c: {fm.normal_cdf((c - mu) / sd):.2%}")
    ax[1].axvline(c, color=_RED, lw=1)
    ax[1].axvline(0, color="k", lw=0.5)
    ax[1].set_title(f"channel {i}: z ~ N({mu:.2f}, {sd:.2f}^2), c = {c:.2f}", fontsize="small")
    ax[1].legend(fontsize="x-small")
    ns, exact, paper = curve
    ax[2].plot(ns, exact, color=_BLUE, label="exact (clamp [-c, hi-c])")
    ax[2].plot(ns, paper, color=_ORANGE, label="paper (act(z - c))")
    ax[2].axhline(hb - lb, color=_GREY, ls="--", lw=0.8, label="no absorption")
    ax[2].axvline(n_sigmas, color=_RED, lw=0.8)
    ax[2].set_xlabel("n (c = beta - n gamma)")
    ax[2].set_title("per-tensor range width", fontsize="small")
    ax[2].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


class AbsorptionExplorer(_Explorer):
    """The ``c = max(0, beta - n gamma)`` rule on the absorbed layers of a prepared network.

    ``gm`` is ``prepare(model, ...)`` with absorption (its CLE scales are used); the intervals
    are the data-free ones the activation quantizers start from, ``clip(beta +- act_sigmas gamma)``
    (``act_sigmas``: the configuration's ``act_range_sigmas`` unless given).
    """

    def __init__(self, model: nn.Module, gm: nn.Module, layers: Sequence[str] | None = None, n_sigmas: float = 3.0,
                 act_sigmas: float | None = None) -> None:
        from .config import DFQConfig
        from .tutorial import act_upper_bound, bn_stats_after_cle

        if act_sigmas is None:
            act_sigmas = getattr(gm, "dfq_config", DFQConfig()).act_range_sigmas
        self.act_sigmas = float(act_sigmas)
        rep = gm.report
        if layers is None:
            layers = [n for n, r in rep.layers.items() if r.absorbed_out is not None]
        layers = list(layers)
        if not layers:
            raise ValueError("no layer of this network had a bias absorbed")
        self.stats = {}
        for n in layers:
            beta, gamma = bn_stats_after_cle(model, gm, n)
            self.stats[n] = (beta, gamma, act_upper_bound(gm, n))
        self.layer = _slider("Dropdown", options=layers, description="layer", layout=_w().Layout(width="360px"))
        self.n = _slider("FloatSlider", min=0.0, max=6.0, step=0.25, value=n_sigmas, description="n sigmas",
                         readout_format=".2f")
        self.mode = _slider("ToggleButtons", options=["exact", "paper"], description="absorption")
        self._init_ui([self.layer, self.n, self.mode])
        for c in (self.layer, self.n, self.mode):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.layer.value, self.n.value, self.mode.value == "exact")

    def view(self, layer: str, n_sigmas: float, exact: bool = True) -> Any:
        from .tutorial import absorption_intervals

        beta, gamma, hi = self.stats[layer]
        return absorption_intervals(beta, gamma, hi, n_sigmas, self.act_sigmas, exact)

    def update(self, layer: str, n_sigmas: float, exact: bool = True) -> Any:
        v = None
        with self.busy("computing"):
            v = self.view(layer, n_sigmas, exact)
            ns = np.linspace(0, 6, 25)
            widths_e = [np.subtract(*self.view(layer, n, True).tensor_range_after[::-1]) for n in ns]
            widths_p = [np.subtract(*self.view(layer, n, False).tensor_range_after[::-1]) for n in ns]
            (lb, hb), (la, ha) = v.tensor_range_before, v.tensor_range_after
            self.text.value = (
                f"c = max(0, beta - {n_sigmas:g} gamma): <b>{int(np.sum(v.c > 0))}/{len(v.c)}</b> channels shifted, "
                f"largest c {v.c.max():.3g}; per-tensor range [{lb:.3g}, {hb:.3g}] &rarr; <b>[{la:.3g}, {ha:.3g}]</b> "
                f"(8-bit step {(hb - lb) / 255:.4g} &rarr; <b>{(ha - la) / 255:.4g}</b>); "
                + ("exact: the float network is unchanged" if exact else
                   f"paper: a shifted channel's output changes where z &lt; c (on average {v.frac_changed:.3%} "
                   "of a channel's values)"))
            show_figure(self.out, plot_absorption(v, layer, n_sigmas, (ns, np.array(widths_e), np.array(widths_p))))
        return v


# ============================================================================ chapter 5
def plot_layer_bias(names: Sequence[str], before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray],
                    layer: str, label: str, sweep: Mapping[tuple[int, str], float] | None = None,
                    metric: str = "SQNR (dB)") -> Any:
    """The mean output error per channel of ``layer`` without and with correction, its size over
    all layers, and a network metric per bit width and mode."""
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.4), gridspec_kw={"width_ratios": [1.6, 1.6, 1.1]})
    b, a = before[layer], after[layer]
    ch = np.arange(len(b))
    ax[0].bar(ch, b, color=_GREY, width=1.0, label="no correction")
    ax[0].bar(ch, a, color=_BLUE, width=0.5, label=label)
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].set_xlabel("output channel")
    ax[0].set_title(f"{layer}: mean output error E[y_q - y]", fontsize="small")
    ax[0].legend(fontsize="x-small")
    x = np.arange(len(names))
    ax[1].semilogy(x, [np.abs(before[n]).mean() for n in names], "o-", color=_GREY, ms=3, label="no correction")
    ax[1].semilogy(x, [np.abs(after[n]).mean() for n in names], "o-", color=_BLUE, ms=3, label=label)
    ax[1].axvline(list(names).index(layer), color=_RED, lw=0.8)
    ax[1].set_xlabel("layer (network order)")
    ax[1].set_title("mean |E[y_q - y]| over channels, every layer", fontsize="small")
    ax[1].legend(fontsize="x-small")
    if sweep:
        modes = sorted({m for _, m in sweep})
        colors = {"none": _GREY, "analytic": _BLUE, "empirical": _GREEN}
        for m in modes:
            pts = sorted((bits, v) for (bits, mm), v in sweep.items() if mm == m)
            ax[2].plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors.get(m, _ORANGE), label=m, ms=4)
        ax[2].set_xlabel("weight bits")
        ax[2].set_ylabel(metric)
        ax[2].set_title("network output, per bit width", fontsize="small")
        ax[2].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


class BiasCorrectionExplorer(_Explorer):
    """Bias correction per bit width and mode on a network with quantized weights.

    For each ``(bits, mode)`` the model is quantized with ``base.replace(weight_bits=bits,
    bias_correction=mode)``, evaluated on ``data`` against the float model, and each layer's mean
    output error per channel is measured on ``probe`` (network inputs) with
    :func:`dfq_gpu.tutorial.layer_output_bias`. Results are cached, so going back is instant.
    """

    def __init__(self, model: nn.Module, data: Any, probe: torch.Tensor, base: Any,
                 calibration: Sequence[torch.Tensor] | None = None, bits: int = 6, mode: str = "analytic",
                 layer: str | None = None, precomputed: Sequence[tuple[int, str]] = ()) -> None:
        from .api import prepare
        from .evaluate import collect_outputs

        self.model, self.data, self.probe, self.base = model, data, probe, base
        self.calibration = list(calibration) if calibration is not None else [probe]
        self.example = (probe[:1],)
        self.float_gm = prepare(model, self.example, base)
        self.names = list(self.float_gm.report.layers)
        self.reference = collect_outputs(model, data)
        self.cache: dict[tuple[int, str], dict[str, Any]] = {}
        if precomputed:
            from tqdm.auto import tqdm

            for b, m in tqdm(list(precomputed), desc="quantize, evaluate, measure", leave=False):
                self.compute(b, m)
        self.bits = _slider("IntSlider", min=3, max=8, value=bits, description="weight bits")
        self.mode = _slider("ToggleButtons", options=["none", "analytic", "empirical"], value=mode,
                            description="bias correction")
        default = layer if layer is not None else next((n for n in self.names if "depthwise" in n), self.names[0])
        self.layer = _slider("Dropdown", options=self.names, value=default, description="layer",
                             layout=_w().Layout(width="360px"))
        self._init_ui([self.bits, self.mode, self.layer])
        for c in (self.bits, self.mode, self.layer):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def compute(self, bits: int, mode: str, advance: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Quantize, evaluate and measure the per-channel output errors for one setting (cached)."""
        from .api import quantize
        from .evaluate import evaluate
        from .tutorial import layer_output_bias

        key = (bits, mode)
        if key not in self.cache:
            cfg = self.base.replace(weight_bits=bits, bias_correction=mode)
            q = quantize(self.model, self.example, cfg, data=self.calibration if mode == "empirical" else None)
            if advance:
                advance("evaluating")
            metrics = evaluate(q, self.data, reference=self.reference, progress=False)
            if advance:
                advance("measuring the output error of every layer")
            bias = layer_output_bias(self.float_gm, q, self.probe, self.names)
            predicted = {n: q.report.layers[n].bias_correction for n in self.names}
            self.cache[key] = {"metrics": metrics, "bias": bias, "predicted": predicted}
        return self.cache[key]

    def sweep(self, metric: str = "sqnr_db") -> dict[tuple[int, str], float]:
        return {k: getattr(v["metrics"], metric) for k, v in self.cache.items()}

    def refresh(self) -> None:
        self.update(self.bits.value, self.mode.value, self.layer.value)

    def update(self, bits: int, mode: str, layer: str) -> dict[str, Any]:
        res: dict[str, Any] = {}
        with self.busy(f"quantizing to {bits} bits, bias correction {mode}", steps=4) as advance:
            res = self.compute(bits, mode, advance)
            none = self.compute(bits, "none", advance)
            m, m0 = res["metrics"], none["metrics"]
            self.text.value = (
                f"W{bits}, bias correction <b>{mode}</b>: logit SQNR <b>{m.sqnr_db:.2f} dB</b> "
                f"(none: {m0.sqnr_db:.2f}), "
                f"top-1 agreement with FP32 <b>{m.agreement:.3f}</b> (none: {m0.agreement:.3f}) on {m.n} images; "
                f"{html.escape(layer)}: mean |E[y_q - y]| {np.abs(none['bias'][layer]).mean():.3g} &rarr; "
                f"<b>{np.abs(res['bias'][layer]).mean():.3g}</b>")
            show_figure(self.out, plot_layer_bias(self.names, none["bias"], res["bias"], layer, mode, self.sweep()))
        return res


# ============================================================================ chapter 6
def plot_gemm_tiles(M: int, N: int, K: int, block_m: int, block_n: int, block_k: int, group_m: int, pid: int,
                    k_step: int) -> Any:
    """The tiles program ``pid`` reads at K step ``k_step`` (x and w) and the output tile it
    writes, with every output tile labelled by the program that computes it."""
    import matplotlib.patches as patches

    from .tutorial import gemm_program_grid

    plt = _plt()
    grid = gemm_program_grid(M, N, block_m, block_n, group_m)
    pm, pn = map(int, np.argwhere(grid == pid)[0])
    fig, ax = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [K, N, N]})

    def frame(a: Any, w: int, h: int, title: str) -> None:
        a.set_xlim(0, w)
        a.set_ylim(h, 0)
        a.set_aspect("equal")
        a.set_title(title, fontsize="small")
        a.grid(False)

    frame(ax[0], K, M, f"x [M={M}, K={K}]")
    frame(ax[1], N, K, f"w read as [K={K}, N={N}]")
    frame(ax[2], N, M, f"y [M={M}, N={N}]: program id per tile")
    k0 = k_step * block_k
    for k in range(0, K, block_k):
        for a_, rect in ((ax[0], (k, pm * block_m, min(block_k, K - k), min(block_m, M - pm * block_m))),
                         (ax[1], (pn * block_n, k, min(block_n, N - pn * block_n), min(block_k, K - k)))):
            done = k < k0
            cur = k == k0
            a_.add_patch(patches.Rectangle(rect[:2], rect[2], rect[3], facecolor=_RED if cur else (_ORANGE if done else
                         "0.9"), alpha=0.8 if cur else 0.5, edgecolor="k", lw=0.5))
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            p = int(grid[i, j])
            color = _RED if p == pid else (_BLUE if p < pid else "0.92")
            ax[2].add_patch(patches.Rectangle((j * block_n, i * block_m), min(block_n, N - j * block_n),
                                              min(block_m, M - i * block_m), facecolor=color, alpha=0.6,
                                              edgecolor="k", lw=0.5))
            ax[2].text(j * block_n + min(block_n, N - j * block_n) / 2, i * block_m + min(block_m, M - i * block_m) / 2,
                       str(p), ha="center", va="center", fontsize="small")
    fig.tight_layout()
    return fig


class GemmTileExplorer(_Explorer):
    """Walk the int8 GEMM kernel's programs and K steps on a small problem, next to the values
    :func:`dfq_gpu.tutorial.gemm_tiled` computes for them."""

    def __init__(self, x: np.ndarray, w: np.ndarray, params: Mapping[str, Any], block_m: int = 32, block_n: int = 32,
                 block_k: int = 32, group_m: int = 2) -> None:
        from .tutorial import gemm_program_grid, gemm_tiled

        self.x, self.w, self.params = np.asarray(x), np.asarray(w), dict(params)
        self.blocks = (block_m, block_n, block_k, group_m)
        self.trace: list[Any] = []
        self.y = gemm_tiled(self.x, self.w, **self.params, block_m=block_m, block_n=block_n, block_k=block_k,
                            group_m=group_m, trace=self.trace)
        M, K = self.x.shape
        N = self.w.shape[0]
        n_prog = int(gemm_program_grid(M, N, block_m, block_n, group_m).size)
        self.pid = _slider("IntSlider", min=0, max=n_prog - 1, value=0, description="program id")
        self.k = _slider("IntSlider", min=0, max=-(-K // block_k) - 1, value=0, description="K step")
        self._init_ui([self.pid, self.k])
        for c in (self.pid, self.k):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.pid.value, self.k.value)

    def update(self, pid: int, k_step: int) -> Any:
        step = None
        with self.busy("drawing"):
            bm, bn, bk, gm = self.blocks
            M, K = self.x.shape
            N = self.w.shape[0]
            steps = [t for t in self.trace if t.pid == pid]
            step = steps[min(k_step, len(steps) - 1)]
            r0, c0 = step.pid_m * bm, step.pid_n * bn
            self.text.value = (
                f"program <b>{pid}</b> computes output tile ({step.pid_m}, {step.pid_n}): "
                f"rows {r0}..{min(M, r0 + bm) - 1}, columns {c0}..{min(N, c0 + bn) - 1}; "
                f"after K step {k_step} (k = {step.k0}..{min(K, step.k0 + bk) - 1}) "
                f"its int32 accumulator acc[0, 0] = sum x*w so far = <b>{step.acc_sample}</b>; final int8 "
                f"y[{r0}, {c0}] = <b>{int(self.y[r0, c0])}</b>")
            show_figure(self.out, plot_gemm_tiles(M, N, K, bm, bn, bk, gm, pid, k_step))
        return step


def _num(v: Any) -> float:
    """A finite float, or NaN for ``None``, strings and other non-numbers (missing measurements)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if np.isfinite(f) else float("nan")


def plot_kernel_benchmark(report: Mapping[str, Any], title: str = "") -> Any:
    """Kernel time against its baselines for every case of a ``benchmarks/kernels.py`` report
    (log scale), with bit-exactness and, on a GPU, the fraction of the roofline reached.
    Missing times (a case that failed) are left out of the bars."""
    plt = _plt()
    cases = [c for c in report.get("results", []) if isinstance(c, Mapping)]
    gpu = report.get("backend") != "triton-interpreter" and report.get("mode") != "quick"
    fig, ax = plt.subplots(1, 2 if gpu else 1, figsize=(14 if gpu else 10, 0.45 * len(cases) + 1.6), squeeze=False)
    ax = ax[0]
    y = np.arange(len(cases))
    names = [str(c.get("name", "?")) + ("" if c.get("bit_exact") else "  (NOT bit-exact)") for c in cases]
    ax[0].barh(y, [_num(c.get("ms")) for c in cases], height=0.35, color=_BLUE, label="int8 kernel")
    base_keys = sorted({k for c in cases for k in (c.get("baselines") or {})})
    colors = [_GREY, _ORANGE, _GREEN, "tab:purple", "tab:brown"]
    for i, k in enumerate(base_keys):
        vals = [_num((c.get("baselines") or {}).get(k)) for c in cases]
        ys = [yy + 0.35 + 0.12 * i for yy, v in zip(y, vals) if not np.isnan(v)]
        ax[0].barh(ys, [v for v in vals if not np.isnan(v)], height=0.12, color=colors[i % len(colors)],
                   label=k.replace("_ms", ""))
    ax[0].set_yticks(y + 0.2)
    ax[0].set_yticklabels(names, fontsize="small")
    ax[0].invert_yaxis()
    ax[0].set_xscale("log")
    ax[0].set_xlabel("milliseconds (log)")
    ax[0].legend(fontsize="x-small", loc="lower right")
    ax[0].set_title(title or f"{report.get('device', '')} ({report.get('backend', '')})", fontsize="small")
    if gpu:
        pct = [np.nan_to_num(_num(c.get("pct_of_roofline"))) for c in cases]
        ax[1].barh(y, pct, color=[_GREEN if c.get("goal_met") else _ORANGE for c in cases])
        ax[1].set_yticks(y)
        ax[1].set_yticklabels([str(c.get("goal", "")) for c in cases], fontsize="x-small")
        ax[1].invert_yaxis()
        ax[1].set_xlabel("% of the roofline floor (green: goal met)")
    fig.tight_layout()
    return fig


def plot_e2e_benchmark(report: Mapping[str, Any], title: str = "") -> Any:
    """Images per second of the int8 network and the float baselines, per model and batch size,
    from a ``benchmarks/e2e.py`` report (log scale; variants that were not measured are left
    out), with the int8 speedup over fp16 eager written above each group."""
    from .tutorial import E2E_VARIANTS, e2e_rows

    plt = _plt()
    rows = e2e_rows(report)
    models = list(dict.fromkeys(r["model"] for r in rows)) or ["(no results)"]
    fig, axes = plt.subplots(1, len(models), figsize=(max(6.0, 5.5 * len(models)), 3.4), squeeze=False)
    colors = {"int8": _BLUE, "fp16_eager": _ORANGE, "fp16_compile": _GREEN, "fp32_eager": _GREY}
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        x = np.arange(len(mine))
        width = 0.8 / len(E2E_VARIANTS)
        for i, v in enumerate(E2E_VARIANTS):
            vals = np.array([_num(r[v]) for r in mine])
            if np.all(np.isnan(vals)):
                continue
            ax.bar(x + (i - 1.5) * width, np.nan_to_num(vals), width=width, color=colors[v], label=v)
        for xi, r in zip(x, mine):
            sp = _num(r.get("speedup_vs_fp16_eager"))
            if not np.isnan(sp):
                top = max([_num(r[v]) for v in E2E_VARIANTS if not np.isnan(_num(r[v]))] or [1.0])
                ax.text(xi, top * 1.15, f"x{sp:.2f}", ha="center", fontsize="x-small")
        ax.set_xticks(x)
        ax.set_xticklabels([f"batch {r['batch']}" for r in mine])
        measured = [_num(r[v]) for r in mine for v in E2E_VARIANTS if not np.isnan(_num(r[v])) and _num(r[v]) > 0]
        if measured:
            ax.set_yscale("log")
            ax.set_ylim(min(measured) / 2, max(measured) * 2)  # room for the speedups above the bars
        ax.set_ylabel("images / s (log)")
        ax.set_title(model, fontsize="small")
        ax.legend(fontsize="x-small", loc="lower right")
    fig.suptitle(title or f"{report.get('device', '')}: int8 network vs float (xN: int8 / fp16 eager)",
                 fontsize="small")
    fig.tight_layout()
    return fig


def _html_table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th style='padding:0 8px;text-align:left'>{html.escape(str(h))}</th>" for h in head)
    tr = "".join("<tr>" + "".join(f"<td style='padding:0 8px'>{html.escape(str(c))}</td>" for c in b) + "</tr>"
                 for b in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"


def _f(v: Any, spec: str) -> str:
    f = _num(v)
    return "-" if np.isnan(f) else format(f, spec)


def kernel_table_html(report: Mapping[str, Any]) -> str:
    """The cases of a ``benchmarks/kernels.py`` report as an HTML table."""
    head = ["case", "bit-exact", "ms", "TOPS", "GB/s", "% roofline", "speedups", "goal", "met"]
    body = []
    for c in report.get("results", []):
        if not isinstance(c, Mapping):
            continue
        sp = ", ".join(f"{k.replace('vs_', '')} x{_f(v, '.2f')}" for k, v in (c.get("speedup") or {}).items())
        body.append([c.get("name", "?"), c.get("bit_exact"), _f(c.get("ms"), ".4f"), _f(c.get("tops"), ".1f"),
                     _f(c.get("gbps"), ".1f"), _f(c.get("pct_of_roofline"), ".0f"), sp, c.get("goal", ""),
                     "-" if c.get("goal_met") is None else c.get("goal_met")])
    return _html_table(head, body)


def e2e_table_html(report: Mapping[str, Any]) -> str:
    """The model x batch rows of a ``benchmarks/e2e.py`` report as an HTML table (images/s)."""
    from .tutorial import E2E_VARIANTS, e2e_rows

    head = ["model", "batch", *[f"{v} img/s" for v in E2E_VARIANTS], "int8 / fp16 eager", "int8 / fp16 compile"]
    body = []
    for r in e2e_rows(report):
        cells = []
        for v in E2E_VARIANTS:
            val = _f(r[v], ".1f")
            cells.append(val if val != "-" or not r.get(v + "_error") else f"- ({r[v + '_error']})")
        body.append([r["model"], r["batch"], *cells, _f(r.get("speedup_vs_fp16_eager"), ".2f"),
                     _f(r.get("speedup_vs_fp16_compile"), ".2f")])
    return _html_table(head, body)


def compile_table_html(report: Mapping[str, Any]) -> str:
    """A ``benchmarks/kernels.py --compile-only`` report as an HTML table."""
    head = ["kernel", "compiled", "wgmma", "shared bytes", "registers", "spill bytes", "cvt.rni", "fp32 FMA"]
    body = []
    for r in report.get("results", []):
        if isinstance(r, Mapping):
            body.append([r.get("kernel", "?"), r.get("ok"), r.get("wgmma", "-"), r.get("shared_bytes", "-"),
                         r.get("registers", "-"), r.get("spill_bytes", "-"), r.get("rint", "-"),
                         r.get("fp32_fma", "-")])
    return _html_table(head, body)


def show_benchmark_results(directory: Any = None, run_quick: bool = True) -> dict[str, Any]:
    """Display the benchmark results of ``directory`` (default ``benchmarks/results``) in a notebook.

    GPU reports of ``benchmarks/kernels.py`` and ``benchmarks/e2e.py`` (``kernels_<gpu>.json``,
    ``e2e_<gpu>.json`` from ``benchmarks/gpu_check.sh``) are shown as tables and plots, newest
    first. Where there is none, that is said, and the CPU results are shown instead: a ``--quick``
    report found in ``directory``, or else (with ``run_quick``) a fresh ``--quick`` run in a
    temporary folder (a few seconds each; through Triton's interpreter and the integer reference,
    so they show that everything runs, not how fast). ``--compile-only`` reports (the kernels
    compiled for an H100/H200 without a GPU) are listed too.

    Returns what was shown: ``{"kernels": [...], "e2e": [...], "compile": [...], "gpu": bool,
    "unreadable": [...]}``, each list holding ``(source, device, kind)`` tuples.
    """
    import tempfile

    from IPython.display import HTML, display

    from .tutorial import REPO_ROOT, benchmark_reports, run_quick_e2e_benchmark, run_quick_kernel_benchmark

    reps = benchmark_reports(directory)
    try:
        where = str(reps.directory.resolve().relative_to(REPO_ROOT))
    except ValueError:  # a folder outside this checkout
        where = str(reps.directory)
    shown: dict[str, Any] = {"kernels": [], "e2e": [], "compile": [], "gpu": reps.has_gpu_results,
                             "unreadable": [p.name for p, _ in reps.unreadable]}
    plt = _plt()

    def show(fig: Any) -> None:
        display(fig)
        plt.close(fig)

    def heading(text: str) -> None:
        display(HTML(f"<h4>{html.escape(text)}</h4>"))

    def note(text: str) -> None:
        display(HTML(f"<p>{text}</p>"))

    for what, gpu_list, cpu_list, runner, table, plot in (
            ("kernels", reps.kernels_gpu, reps.kernels_cpu, run_quick_kernel_benchmark, kernel_table_html,
             plot_kernel_benchmark),
            ("e2e", reps.e2e_gpu, reps.e2e_cpu, run_quick_e2e_benchmark, e2e_table_html, plot_e2e_benchmark)):
        script = "benchmarks/kernels.py" if what == "kernels" else "benchmarks/e2e.py"
        heading(f"{script}: {'the int8 kernels' if what == 'kernels' else 'the whole int8 network'}")
        for path, rep in gpu_list:
            ok = rep.get("all_bit_exact") if what == "kernels" else rep.get("complete")
            note(f"<b>{html.escape(path.name)}</b>: {html.escape(str(rep.get('device', '?')))}, torch "
                 f"{html.escape(str(rep.get('torch', '?')))}, triton {html.escape(str(rep.get('triton', '?')))}; "
                 + (f"all bit-exact: <b>{ok}</b>" if what == "kernels" else f"complete: <b>{ok}</b>"
                    + (f", skipped: {html.escape(', '.join(map(str, rep.get('skipped') or [])))}"
                       if rep.get("skipped") else "")))
            if what == "e2e":
                checks = [f"{html.escape(str(name))}: <b>"
                          + ("bit-exact" if (m.get("triton_vs_reference") or {}).get("bit_exact") else "NOT bit-exact")
                          + "</b>" for name, m in (rep.get("models") or {}).items() if "triton_vs_reference" in m]
                if checks:
                    note("Triton network against the integer reference: " + "; ".join(checks))
            for text in rep.get("notes") or []:
                note(html.escape(str(text)))
            display(HTML(table(rep)))
            show(plot(rep, title=f"{path.name}: {rep.get('device', '')}"))
            shown[what].append((path.name, rep.get("device"), "gpu"))
        if gpu_list:
            continue
        note(f"<b>No GPU results yet</b> in {html.escape(where)}: <code>benchmarks/gpu_check.sh</code> "
             f"on an H100/H200 writes <code>{'kernels' if what == 'kernels' else 'e2e'}_&lt;gpu&gt;.json</code> "
             "there. The CPU run below shows that everything runs end to end; its times are not a "
             "performance measurement.")
        if cpu_list:
            path, rep = cpu_list[0]
            source = path.name
        elif run_quick:
            with tempfile.TemporaryDirectory() as tmp:
                rep = runner(Path(tmp) / "quick.json")
            source = f"{script} --quick (run now)"
        else:
            continue
        note(f"{html.escape(source)}: {html.escape(str(rep.get('device', '?')))}; "
             + (f"all bit-exact: <b>{rep.get('all_bit_exact')}</b>; " if what == "kernels" else "")
             + html.escape(str(rep.get("note") or "")))
        display(HTML(table(rep)))
        show(plot(rep, title=f"{source} on {rep.get('device', '')}: not a performance measurement"))
        shown[what].append((source, rep.get("device"), "cpu"))
    if reps.compile:
        heading("benchmarks/kernels.py --compile-only: the kernels compiled for an H100/H200 (sm_90) without a GPU")
        for path, rep in reps.compile:
            note(f"<b>{html.escape(path.name)}</b>: target {html.escape(str(rep.get('target', '?')))}, triton "
                 f"{html.escape(str(rep.get('triton', '?')))}; all compiled: <b>{rep.get('all_ok')}</b>")
            display(HTML(compile_table_html(rep)))
            shown["compile"].append((path.name, rep.get("target"), "compile"))
    for path, why in reps.unreadable:
        note(f"skipped {html.escape(path.name)}: {html.escape(why)}")
    return shown


# ============================================================================ chapter 7
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


class DFQDashboard(_Explorer):
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
        from .evaluate import collect_outputs

        W = _w()
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
        self.relu6 = _slider("Dropdown", options=["clip", "replace", "keep"], value="clip", description="ReLU6")
        self.bias_correction = _slider("ToggleButtons", options=["none", "analytic", "empirical"], value="analytic",
                                       description="bias corr.")
        self.granularity = _slider("ToggleButtons", options=["tensor", "channel"], value="tensor",
                                   description="weights per")
        self.weight_bits = _slider("IntSlider", min=2, max=8, value=8, description="weight bits")
        self.act_bits = _slider("Dropdown", options=[("float", 0), ("4", 4), ("5", 5), ("6", 6), ("8", 8), ("16", 16)],
                                value=8, description="act bits")
        self.layer = _slider("Dropdown", options=[], description="layer", layout=W.Layout(width="380px"))
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
        from .config import DFQConfig

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
        from .api import quantize
        from .evaluate import evaluate

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
        plt = _plt()
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
        ax[2].bar(np.arange(len(names)), sq, color=[_RED if k == "depthwise" else _BLUE for k in kinds])
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
        show_figure(self.out, fig)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def dashboard(model: nn.Module, data: Any, **kwargs: Any) -> DFQDashboard:
    """A :class:`DFQDashboard` for ``model`` on ``data`` (see there for the arguments)."""
    return DFQDashboard(model, data, **kwargs)
