"""Chapter 5, bias correction: the mean output error per channel that weight quantization causes
(:func:`layer_output_bias`), :func:`plot_layer_bias` and :class:`BiasCorrectionExplorer`
(bias correction per bit width and mode)."""

from __future__ import annotations

import html
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import _widgets as ui
from .common import EVAL_BATCH

__all__ = ["layer_output_bias", "network_output_shift", "plot_layer_bias", "BiasCorrectionExplorer"]


@torch.no_grad()
def layer_output_bias(float_gm: nn.Module, q_gm: nn.Module, inputs: torch.Tensor,
                      layers: Sequence[str] | None = None, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per output channel ``E[y_q - y]`` of each layer, both computed on the float network's input
    of that layer: the shift that the layer's own weight quantization (and correction) causes.

    ``float_gm`` is ``prepare(model, ..., cfg)`` and ``q_gm`` is ``quantize(model, ..., cfg)`` with
    the same ``cfg`` (same layer names); ``inputs`` is a batch of network inputs.
    """
    names = list(layers) if layers is not None else list(float_gm.report.layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        qm = q_gm.get_submodule(name)

        def f(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            d = (qm(args[0]) - out).double()
            dims = [i for i in range(d.dim()) if i != 1]
            sums[name] = sums.get(name, 0) + d.sum(dim=dims)
            counts[name] = counts.get(name, 0) + d.numel() // d.shape[1]
        return f

    handles = [float_gm.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for i in range(0, len(inputs), batch_size):
            float_gm(inputs[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).numpy() for n in names if n in sums}


@torch.no_grad()
def network_output_shift(float_gm: nn.Module, q_gm: nn.Module, inputs: torch.Tensor,
                         layers: Sequence[str] | None = None, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per output channel ``E[y_q - y]`` of each layer with each network running on its own inputs:
    the quantized layer sees the quantized network's activations, so this is the shift that has
    *accumulated* through the quantized network up to and including the layer (what the output
    of the whole network sees), unlike :func:`layer_output_bias`."""
    names = list(layers) if layers is not None else list(float_gm.report.layers)

    def means(gm: nn.Module) -> dict[str, torch.Tensor]:
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}

        def hook(name: str) -> Callable[..., None]:
            def f(_m: nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                d = out.double()
                dims = [i for i in range(d.dim()) if i != 1]
                sums[name] = sums.get(name, 0) + d.sum(dim=dims)
                counts[name] = counts.get(name, 0) + d.numel() // d.shape[1]
            return f

        handles = [gm.get_submodule(n).register_forward_hook(hook(n)) for n in names]
        try:
            for i in range(0, len(inputs), batch_size):
                gm(inputs[i:i + batch_size])
        finally:
            for h in handles:
                h.remove()
        return {n: sums[n] / counts[n] for n in names if n in sums}

    f, q = means(float_gm), means(q_gm)
    return {n: (q[n] - f[n]).numpy() for n in names if n in f and n in q}


def plot_layer_bias(names: Sequence[str], before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray],
                    layer: str, label: str, sweep: Mapping[tuple[int, str], float] | None = None,
                    metric: str = "SQNR (dB)") -> Any:
    """The mean output error per channel of ``layer`` without and with correction, its size over
    all layers, and a network metric per bit width and mode."""
    plt = ui.plt()
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.4), gridspec_kw={"width_ratios": [1.6, 1.6, 1.1]})
    b, a = before[layer], after[layer]
    ch = np.arange(len(b))
    ax[0].bar(ch, b, color=ui.GREY, width=1.0, label="no correction")
    ax[0].bar(ch, a, color=ui.BLUE, width=0.5, label=label)
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].set_xlabel("output channel")
    ax[0].set_title(f"{layer}: mean output error E[y_q - y]", fontsize="small")
    ax[0].legend(fontsize="x-small")
    x = np.arange(len(names))
    ax[1].semilogy(x, [np.abs(before[n]).mean() for n in names], "o-", color=ui.GREY, ms=3, label="no correction")
    ax[1].semilogy(x, [np.abs(after[n]).mean() for n in names], "o-", color=ui.BLUE, ms=3, label=label)
    ax[1].axvline(list(names).index(layer), color=ui.RED, lw=0.8)
    ax[1].set_xlabel("layer (network order)")
    ax[1].set_title("mean |E[y_q - y]| over channels, every layer", fontsize="small")
    ax[1].legend(fontsize="x-small")
    if sweep:
        modes = sorted({m for _, m in sweep})
        colors = {"none": ui.GREY, "analytic": ui.BLUE, "empirical": ui.GREEN}
        for m in modes:
            pts = sorted((bits, v) for (bits, mm), v in sweep.items() if mm == m)
            ax[2].plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors.get(m, ui.ORANGE), label=m, ms=4)
        ax[2].set_xlabel("weight bits")
        ax[2].set_ylabel(metric)
        ax[2].set_title("network output, per bit width", fontsize="small")
        ax[2].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


class BiasCorrectionExplorer(ui.Explorer):
    """Bias correction per bit width and mode on a network with quantized weights.

    For each ``(bits, mode)`` the model is quantized with ``base.replace(weight_bits=bits,
    bias_correction=mode)``, evaluated on ``data`` against the float model, and each layer's mean
    output error per channel is measured on ``probe`` (network inputs) with
    :func:`layer_output_bias`. Results are cached, so going back is instant.
    """

    def __init__(self, model: nn.Module, data: Any, probe: torch.Tensor, base: Any,
                 calibration: Sequence[torch.Tensor] | None = None, bits: int = 6, mode: str = "analytic",
                 layer: str | None = None, precomputed: Sequence[tuple[int, str]] = ()) -> None:
        from ..api import prepare
        from ..evaluate import collect_outputs

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
        self.bits = ui.control("IntSlider", min=3, max=8, value=bits, description="weight bits")
        self.mode = ui.control("ToggleButtons", options=["none", "analytic", "empirical"], value=mode,
                               description="bias correction")
        default = layer if layer is not None else next((n for n in self.names if "depthwise" in n), self.names[0])
        self.layer = ui.control("Dropdown", options=self.names, value=default, description="layer",
                                layout=ui.widgets().Layout(width="360px"))
        self._init_ui([self.bits, self.mode, self.layer])
        for c in (self.bits, self.mode, self.layer):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def compute(self, bits: int, mode: str, advance: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Quantize, evaluate and measure the per-channel output errors for one setting (cached)."""
        from ..api import quantize
        from ..evaluate import evaluate

        key = (bits, mode)
        if key not in self.cache:
            cfg = self.base.replace(weight_bits=bits, bias_correction=mode)
            q = quantize(self.model, self.example, cfg, data=self.calibration if mode == "empirical" else None)
            if advance:
                advance("evaluating")
            metrics = evaluate(q, self.data, reference=self.reference, batch_size=EVAL_BATCH, progress=False)
            if advance:
                advance("measuring the output error of every layer")
            bias = layer_output_bias(self.float_gm, q, self.probe, self.names)
            accumulated = network_output_shift(self.float_gm, q, self.probe, self.names)
            predicted = {n: q.report.layers[n].bias_correction for n in self.names}
            self.cache[key] = {"metrics": metrics, "bias": bias, "predicted": predicted, "accumulated": accumulated}
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
            ui.show_figure(self.out, plot_layer_bias(self.names, none["bias"], res["bias"], layer, mode, self.sweep()))
        return res
