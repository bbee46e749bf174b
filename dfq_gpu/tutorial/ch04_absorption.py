"""Chapter 4, bias absorption: the data-free activation ranges before and after absorbing
``c = clip(beta - n gamma, 0, hi)`` (:func:`bn_stats_after_cle`, :func:`act_upper_bound`,
:func:`absorption_intervals`), :func:`plot_absorption` and :class:`AbsorptionExplorer`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .. import formulas as fm
from . import _widgets as ui
from .common import EVAL_BATCH

__all__ = ["bn_stats_after_cle", "AbsorptionView", "act_upper_bound", "absorption_intervals", "plot_absorption",
           "AbsorptionExplorer"]


def bn_stats_after_cle(model: nn.Module, gm: nn.Module, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """``(beta, gamma)`` of ``layer``'s pre-activation output in the prepared network ``gm``:
    the original batch norm's shift and scale times the total CLE factor ``1/s`` of each channel
    (before any bias absorption)."""
    rec = gm.report.layer(layer)
    if rec.bn is None:
        raise ValueError(f"{layer} had no batch norm")
    bn = model.get_submodule(rec.bn)
    beta = bn.bias.detach().double().numpy()
    gamma = np.abs(bn.weight.detach().double().numpy())
    f = np.ones_like(beta) if rec.out_scale is None else np.asarray(rec.out_scale, dtype=np.float64)
    return beta * f, gamma * f


@dataclass
class AbsorptionView:
    """Data-free per-channel activation intervals of one layer before and after absorption."""

    beta: np.ndarray
    gamma: np.ndarray
    hi: np.ndarray  # the clamp's upper bound per channel (ReLU6 scaled by CLE)
    c: np.ndarray  # the absorbed shift
    before: tuple[np.ndarray, np.ndarray]
    after: tuple[np.ndarray, np.ndarray]
    frac_changed: float  # share of channels x probability where act(z - c) != act(z) - c

    @property
    def tensor_range_before(self) -> tuple[float, float]:
        return float(min(0.0, self.before[0].min())), float(max(0.0, self.before[1].max()))

    @property
    def tensor_range_after(self) -> tuple[float, float]:
        return float(min(0.0, self.after[0].min())), float(max(0.0, self.after[1].max()))


def act_upper_bound(gm: nn.Module, layer: str) -> np.ndarray:
    """The upper clamp bound of the activation right after ``layer`` in a prepared network
    (``inf`` for ReLU), as it was before absorption (``hi + c`` when ``c`` was absorbed)."""
    from ..nn import ChannelClamp

    node = next(n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) == layer)
    users = list(node.users)
    m = gm.get_submodule(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None
    c = gm.report.layer(layer).absorbed_out
    c = np.zeros(1) if c is None else np.asarray(c)
    if isinstance(m, ChannelClamp):
        return m.hi.detach().double().numpy() + c
    if isinstance(m, nn.ReLU6):
        return np.full(node.meta["tensor_meta"].shape[1], 6.0)
    return np.full(node.meta["tensor_meta"].shape[1], np.inf)


def absorption_intervals(beta: np.ndarray, gamma: np.ndarray, hi: np.ndarray, n_sigmas: float,
                         act_sigmas: float = 6.0, exact: bool = True) -> AbsorptionView:
    """What bias absorption with ``c = clip(beta - n_sigmas gamma, 0, hi)`` does to the data-free
    activation range ``clip(beta +- act_sigmas gamma, 0, hi)`` of each channel.

    ``exact`` (the package's default): the activation becomes the clamp ``[-c, hi - c]``, i.e.
    ``act(z) - c``; otherwise the paper's ``act(z - c)`` (clamp ``[0, hi - c]``), which differs
    from the original where ``z < c``.
    """
    c = fm.absorption_shift(beta, gamma, n_sigmas, hi)
    before = fm.gaussian_interval(beta, gamma, act_sigmas, 0.0, hi)
    lo_after = -c if exact else np.zeros_like(c)
    after = fm.gaussian_interval(beta - c, gamma, act_sigmas, lo_after, hi - c)
    live = gamma > 0
    p_below = np.where(live & (c > 0), fm.normal_cdf((c - beta) / np.where(live, gamma, 1.0)), 0.0)
    return AbsorptionView(beta, gamma, hi, c, before, after, float(np.mean(p_below)))


def plot_absorption(view: Any, layer: str, n_sigmas: float, curve: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Any:
    """Per-channel activation intervals before/after absorption, the Gaussian of the channel
    with the largest shift, and the per-tensor range against the number of sigmas."""
    plt = ui.plt()
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.4), gridspec_kw={"width_ratios": [2.2, 1.2, 1.2]})
    ch = np.arange(len(view.c))
    ax[0].vlines(ch - 0.2, view.before[0], view.before[1], color=ui.GREY, lw=1.2, label="before")
    ax[0].vlines(ch + 0.2, view.after[0], view.after[1], color=ui.BLUE, lw=1.2, label="after")
    (lb, hb), (la, ha) = view.tensor_range_before, view.tensor_range_after
    for v in (lb, hb):
        ax[0].axhline(v, color=ui.GREY, ls="--", lw=0.8)
    for v in (la, ha):
        ax[0].axhline(v, color=ui.BLUE, ls="--", lw=0.8)
    ax[0].set_xlabel("channel")
    ax[0].set_title(f"{layer}: data-free activation range per channel (dashed: per tensor)", fontsize="small")
    ax[0].set_ylabel("activation value")
    ax[0].legend(fontsize="x-small", loc="upper right")
    i = int(np.argmax(view.c)) if np.any(view.c > 0) else int(np.argmax(view.beta))
    mu, sd, c = view.beta[i], max(view.gamma[i], 1e-12), view.c[i]
    z = np.linspace(mu - 5 * sd, mu + 5 * sd, 400)
    pdf = fm.normal_pdf((z - mu) / sd) / sd
    ax[1].plot(z, pdf, color="k", lw=1)
    ax[1].fill_between(z, pdf, where=z < c, color=ui.RED, alpha=0.4, label=f"z < c: {fm.normal_cdf((c - mu) / sd):.2%}")
    ax[1].axvline(c, color=ui.RED, lw=1)
    ax[1].axvline(0, color="k", lw=0.5)
    ax[1].set_title(f"channel {i}: z ~ N({mu:.2f}, {sd:.2f}^2), c = {c:.2f}", fontsize="small")
    ax[1].legend(fontsize="x-small")
    ns, exact, paper = curve
    ax[2].plot(ns, exact, color=ui.BLUE, label="exact (clamp [-c, hi-c])")
    ax[2].plot(ns, paper, color=ui.ORANGE, label="paper (act(z - c))")
    ax[2].axhline(hb - lb, color=ui.GREY, ls="--", lw=0.8, label="no absorption")
    ax[2].axvline(n_sigmas, color=ui.RED, lw=0.8)
    ax[2].set_xlabel("n (c = beta - n gamma)")
    ax[2].set_title("per-tensor range width", fontsize="small")
    ax[2].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


class AbsorptionExplorer(ui.Explorer):
    """The ``c = max(0, beta - n gamma)`` rule on the absorbed layers of a prepared network.

    ``gm`` is ``prepare(model, ...)`` with absorption (its CLE scales are used); the intervals
    are the data-free ones the activation quantizers start from, ``clip(beta +- act_sigmas gamma)``
    (``act_sigmas``: the configuration's ``act_range_sigmas`` unless given).
    """

    def __init__(self, model: nn.Module, gm: nn.Module, layers: Sequence[str] | None = None, n_sigmas: float = 3.0,
                 act_sigmas: float | None = None, probe: torch.Tensor | None = None,
                 example_inputs: tuple[torch.Tensor, ...] | None = None) -> None:
        from ..config import DFQConfig

        # with probe images: every (n, mode) is also quantized (W8A8 per tensor, CLE + absorption with
        # that n, no bias correction) and its logit SQNR against FP32 shown, cached per setting
        self.model, self.probe, self.example = model, probe, example_inputs
        self.base_config = getattr(gm, "dfq_config", DFQConfig())
        self.network: dict[tuple[float, bool], Any] = {}
        self.reference = None
        if probe is not None:
            from ..evaluate import collect_outputs

            self.reference = collect_outputs(model, probe)
            if self.example is None:
                self.example = (probe[:1],)

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
        self.layer = ui.control("Dropdown", options=layers, description="layer",
                                layout=ui.widgets().Layout(width="360px"))
        self.n = ui.control("FloatSlider", min=0.0, max=6.0, step=0.25, value=n_sigmas, description="n sigmas",
                            readout_format=".2f")
        self.mode = ui.control("ToggleButtons", options=["exact", "paper"], description="absorption")
        self._init_ui([self.layer, self.n, self.mode])
        for c in (self.layer, self.n, self.mode):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.layer.value, self.n.value, self.mode.value == "exact")

    def view(self, layer: str, n_sigmas: float, exact: bool = True) -> Any:

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
            if self.probe is not None:
                m = self.network_metrics(n_sigmas, exact)
                self.text.value += (f"<br>the W8A8 network (per tensor, CLE + absorption with n = {n_sigmas:g}, no bias "
                                    f"correction) against FP32 on {m.n} images: logit SQNR <b>{m.sqnr_db:.2f} dB</b>, "
                                    f"agreement {m.agreement:.3f}")
            ui.show_figure(self.out, plot_absorption(v, layer, n_sigmas, (ns, np.array(widths_e), np.array(widths_p))))
        return v

    def network_metrics(self, n_sigmas: float, exact: bool = True) -> Any:
        """Logit SQNR and agreement of the whole W8A8 network quantized with absorption at ``n_sigmas``
        (``exact`` or the paper's variant), CLE as configured, no bias correction; on the probe images."""
        from ..api import quantize
        from ..evaluate import evaluate

        if self.probe is None:
            raise ValueError("no probe images: pass probe= to measure the network")
        key = (float(n_sigmas), bool(exact))
        if key not in self.network:
            cfg = self.base_config.replace(absorb_bias=True, absorb_sigmas=float(n_sigmas), absorb_exact=bool(exact),
                                           bias_correction="none")
            q = quantize(self.model, self.example, cfg)
            self.network[key] = evaluate(q, self.probe, reference=self.reference, batch_size=EVAL_BATCH, progress=False)
        return self.network[key]
