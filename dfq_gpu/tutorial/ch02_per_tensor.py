"""Chapter 2, what per-tensor int8 does to MobileNet-style networks: the per-channel weight ranges
of a BN-folded layer against one per-tensor grid (:func:`levels_per_channel`,
:func:`plot_channel_boxplot`, :func:`plot_layer_sqnr`), and :class:`ChannelRangeExplorer`."""

from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import formulas as fm
from . import _widgets as ui

__all__ = ["levels_per_channel", "layer_weights", "plot_channel_boxplot", "plot_layer_sqnr", "ChannelRangeExplorer"]


def levels_per_channel(lo: np.ndarray, hi: np.ndarray, bits: int = 8) -> np.ndarray:
    """How many steps of a per-tensor ``bits``-bit grid each channel's range ``[lo, hi]`` spans."""
    scale, _ = fm.quant_params(np.min(lo), np.max(hi), bits)
    return (np.asarray(hi) - np.asarray(lo)) / float(scale)


def layer_weights(gm: nn.Module, kinds: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The weight tensors of a prepared / quantized network's conv and linear layers by name
    (only the given kinds, e.g. ``{"depthwise"}``, when ``kinds`` is set)."""
    report = getattr(gm, "report", None)
    out = {}
    for name, m in gm.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if kinds is not None and report is not None and name in report.layers:
                if report.layers[name].kind not in set(kinds):
                    continue
            out[name] = m.weight.detach()
    return out


def plot_channel_boxplot(weight: torch.Tensor | np.ndarray, ax: Any = None, max_channels: int = 64,
                         title: str = "") -> Any:
    """Box plot of the weights of each output channel (as the paper's Fig. 2)."""
    plt = ui.plt()
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
    plt = ui.plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 3.2))
    x = np.arange(len(names))
    colors = [ui.RED if k == "depthwise" else ui.BLUE for k in kinds]
    ax.bar(x, sqnr_channel, color="0.85", label="per-channel")
    ax.bar(x, sqnr_tensor, color=colors, width=0.6, label="per-tensor (red: depthwise)")
    ax.set_xticks(x)
    ax.set_xticklabels([n.replace("_blocks.", "b").replace("_conv", "") for n in names], rotation=90,
                       fontsize="x-small")
    ax.set_ylabel("weight SQNR (dB)")
    ax.legend(fontsize="small")
    return ax


class ChannelRangeExplorer(ui.Explorer):
    """The per-output-channel weights of a layer of a prepared (BN-folded) network: box plots,
    the number of per-tensor grid steps each channel spans, and per-channel SQNR."""

    def __init__(self, gm: nn.Module, layers: Sequence[str] | None = None, bits: int = 8,
                 layer: str | None = None) -> None:
        self.gm = gm
        report = gm.report
        layers = list(layers) if layers is not None else [n for n, r in report.layers.items() if r.kind == "depthwise"]
        opts = [(f"{n} ({report.layers[n].kind}, spread {report.layers[n].range_ratio_folded:.1f})", n)
                for n in layers]
        self.layer = ui.control("Dropdown", options=opts, value=layer if layer is not None else layers[0],
                                description="layer", layout=ui.widgets().Layout(width="430px"))
        self.bits = ui.control("IntSlider", min=2, max=8, value=bits, description="bits")
        self._init_ui([self.layer, self.bits])
        for c in (self.layer, self.bits):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.layer.value, self.bits.value)

    def update(self, layer: str, bits: int) -> dict[str, Any]:
        plt = ui.plt()
        out: dict[str, Any] = {}
        with self.busy("plotting"):
            w = self.gm.get_submodule(layer).weight.detach().double().numpy()
            w2 = w.reshape(w.shape[0], -1)
            lo, hi = w2.min(1), w2.max(1)
            levels = levels_per_channel(lo, hi, bits)
            sq_t, sq_c = _channel_sqnr(w, bits, False), _channel_sqnr(w, bits, True)
            fig, ax = plt.subplots(1, 3, figsize=(14, 3.4), gridspec_kw={"width_ratios": [2.2, 1.3, 1.3]})
            plot_channel_boxplot(w, ax[0], title=f"{layer}: weights per output channel after BN folding")
            ch = np.arange(len(levels))
            ax[1].bar(ch, levels, color=np.where(levels < 16, ui.RED, ui.BLUE), width=1.0)
            ax[1].axhline(2**bits - 1, color="k", ls="--", lw=0.8)
            ax[1].set_yscale("log")
            ax[1].set_ylim(bottom=0.1)
            ax[1].set_xlabel("output channel")
            ax[1].set_title(f"grid steps per channel, per-tensor {bits}-bit\n(red: < 16, dashed: per-channel)")
            fin_t, fin_c = np.clip(sq_t, -10, 120), np.clip(sq_c, -10, 120)
            ax[2].plot(ch, fin_c, ".", color=ui.GREEN, label="per-channel", ms=4)
            ax[2].plot(ch, fin_t, ".", color=ui.RED, label="per-tensor", ms=4)
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
            ui.show_figure(self.out, fig)
            out = {"levels": levels, "sqnr_tensor": sq_t, "sqnr_channel": sq_c, "spread": spread}
        return out


def _fq(w2: np.ndarray, bits: int, per_channel: bool) -> np.ndarray:
    if per_channel:
        s, z = fm.quant_params(w2.min(1), w2.max(1), bits)
        return fm.fake_quant(w2, s[:, None], z[:, None], bits)
    s, z = fm.quant_params(w2.min(), w2.max(), bits)
    return fm.fake_quant(w2, s, z, bits)
