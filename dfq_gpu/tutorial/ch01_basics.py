"""Chapter 1, quantization basics: uniform affine and symmetric grids on one tensor, rounding
and clipping error, SQNR against the range (:func:`quantize_tensor`, :func:`sqnr_vs_clip`,
:func:`plot_quantization`), and :class:`QuantizationExplorer`, the chapter's widget."""

from __future__ import annotations

import html
from typing import Any, Mapping

import numpy as np
import torch

from .. import formulas as fm
from . import _widgets as ui

__all__ = ["quantize_tensor", "sqnr_vs_clip", "plot_quantization", "QuantizationExplorer"]


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
    plt = ui.plt()
    r = quantize_tensor(w, bits, clip, symmetric)
    w = np.asarray(w, dtype=np.float64).ravel()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.3))
    ax[0].hist(w, bins=120, color=ui.GREY)
    grid = (np.arange(r["qmin"], r["qmax"] + 1) - r["zero_point"]) * r["scale"]
    if len(grid) <= 64:
        for g in grid:
            ax[0].axvline(g, color=ui.BLUE, lw=0.6, alpha=0.7)
    else:
        ax[0].axvspan(r["lo"], r["hi"], color=ui.BLUE, alpha=0.12)
    ax[0].axvspan(w.min(), r["lo"], color=ui.RED, alpha=0.15)
    ax[0].axvspan(r["hi"], w.max(), color=ui.RED, alpha=0.15)
    ax[0].set_yscale("log")
    ax[0].set_title(f"{name} values and the {r['levels']}-level grid" if name else f"{r['levels']}-level grid")
    ax[0].set_xlabel("value (blue: grid points, red: clipped)")
    e_in, e_out = r["err"][r["inside"]], r["err"][~r["inside"]]
    bins = np.linspace(min(r["err"].min(), -r["scale"]), max(r["err"].max(), r["scale"]), 80)
    ax[1].hist(e_in, bins=bins, color=ui.BLUE, label="rounding")
    if e_out.size:
        ax[1].hist(e_out, bins=bins, color=ui.RED, label="clipping")
    ax[1].axvline(-r["scale"] / 2, color="k", lw=0.6, ls="--")
    ax[1].axvline(r["scale"] / 2, color="k", lw=0.6, ls="--")
    ax[1].set_yscale("log")
    ax[1].set_title("error Q(w) - w (dashed: +-scale/2)")
    ax[1].legend(fontsize="small")
    clips, sq = sqnr_vs_clip(w, bits, symmetric)
    ax[2].plot(clips, sq, color=ui.BLUE)
    ax[2].plot([clip], [r["sqnr_db"]], "o", color=ui.RED)
    best = clips[int(np.argmax(sq))]
    ax[2].axvline(best, color=ui.GREEN, lw=0.8, ls="--", label=f"best {best:.2f}")
    ax[2].set_xlabel("range / full range")
    ax[2].set_ylabel("SQNR (dB)")
    ax[2].set_title(f"{bits}-bit {'symmetric' if symmetric else 'asymmetric'}: SQNR vs range")
    ax[2].legend(fontsize="small")
    fig.tight_layout()
    return fig


class QuantizationExplorer(ui.Explorer):
    """Bits, range and symmetric/asymmetric quantization of one of ``tensors`` (name -> array)."""

    def __init__(self, tensors: Mapping[str, Any], bits: int = 4, clip: float = 1.0, symmetric: bool = False) -> None:
        self.tensors = {k: np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
                        for k, v in tensors.items()}
        self.tensor = ui.control("Dropdown", options=list(self.tensors), description="tensor")
        self.bits = ui.control("IntSlider", min=2, max=8, value=bits, description="bits")
        self.clip = ui.control("FloatSlider", min=0.05, max=1.0, step=0.01, value=clip, description="range fraction",
                               readout_format=".2f")
        self.mode = ui.control("ToggleButtons", options=["asymmetric", "symmetric"],
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
            ui.show_figure(self.out, plot_quantization(w, bits, clip, symmetric, tensor))
        self.last = r
        return r
