"""Bias correction: remove the expected output shift that weight quantization causes.

With ``eps = Q(W) - W``, a layer's output shifts on average by ``eps E[x]`` (summed over the
taps of a convolution); the correction is ``b -= eps E[x]``.

- ``analytic`` (data-free): ``E[x]`` from the statistics propagated from the batch norms:
  for an input ``act(z)`` with ``z ~ N(beta, gamma^2)``, the clipped-normal mean for ReLU,
  ReLU6 and per-channel clamps, ``beta`` for no activation, Gauss-Hermite moments for
  other activations, sums through residual adds.
- ``empirical``: run data through the float and the quantized network and, layer by layer
  in execution order, move each quantized layer's mean pre-activation output per channel
  onto the float one (so later layers see the corrected earlier ones). This corrects all
  mean errors, activation quantization included.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
import torch.fx as fx

from ..graph.stats import NodeStats
from ..graph.trace import node_module
from ..layers import layer_type
from ..modules import QUANTIZED_LAYER_TYPES
from ..passes.base import Workspace, add_bias, layer_response_to_constant
from .simulate import iter_input_batches

__all__ = ["analytic_bias_correction", "empirical_bias_correction"]

log = logging.getLogger(__name__)


@torch.no_grad()
def analytic_bias_correction(ws: Workspace, stats: dict[str, NodeStats], float_weights: dict[str, torch.Tensor]) -> None:
    done = 0
    for node in ws.gm.graph.nodes:
        m = node_module(ws.gm, node)
        if not isinstance(m, QUANTIZED_LAYER_TYPES) or str(node.target) not in float_weights:
            continue
        name = str(node.target)
        src = node.args[0]
        s = stats.get(src.name) if isinstance(src, fx.Node) else None
        in_ch = layer_type(m).in_channels(m)
        if s is None or s.channels != in_ch:
            ws.report.skip(name, "analytic bias correction: no statistics for the layer's input")
            continue
        eps = m.weight.detach() - float_weights[name].to(m.weight.dtype)
        delta = layer_response_to_constant(m, s.mean, weight=eps)
        add_bias(m, -delta)
        rec = ws.report.layers.get(name)
        if rec is not None:
            rec.bias_correction = delta
        done += 1
    ws.report.step(f"analytic bias correction of {done} layers (E[x] from batch-norm statistics)")


def _stack_inputs(data: Iterable[Any], max_batches: int) -> tuple[torch.Tensor, ...]:
    batches = list(iter_input_batches(data, max_batches))
    if not batches:
        raise ValueError("bias_correction='empirical' got empty data")
    return tuple(torch.cat([b[i] for b in batches]) for i in range(len(batches[0])))


def _channel_mean(t: torch.Tensor) -> torch.Tensor:
    dims = [d for d in range(t.dim()) if d != 1]
    return t.detach().to(torch.float64).mean(dim=dims)


@torch.no_grad()
def empirical_bias_correction(ws: Workspace, float_gm: fx.GraphModule, data: Iterable[Any]) -> None:
    inputs = _stack_inputs(data, ws.cfg.calibration_batches)
    names = [str(n.target) for n in ws.gm.graph.nodes if isinstance(node_module(ws.gm, n), QUANTIZED_LAYER_TYPES)]
    fp_means: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        mod = float_gm.get_submodule(name)
        handles.append(mod.register_forward_hook(
            lambda _m, _i, out, name=name: fp_means.__setitem__(name, _channel_mean(out))))
    float_gm(*inputs)
    for h in handles:
        h.remove()

    def correct(module: torch.nn.Module, _inp: Any, out: torch.Tensor, name: str) -> torch.Tensor:
        delta = fp_means[name] - _channel_mean(out)
        add_bias(module, delta.cpu().numpy())
        rec = ws.report.layers.get(name)
        if rec is not None:
            prev = rec.bias_correction if rec.bias_correction is not None else 0.0
            rec.bias_correction = prev - delta.cpu().numpy()
        shape = [1] * out.dim()
        shape[1] = -1
        return out + delta.to(out.dtype).view(shape)

    handles = [ws.module(n).register_forward_hook(lambda m, i, o, name=n: correct(m, i, o, name))
               for n in names if n in fp_means]
    try:
        ws.gm(*inputs)
    finally:
        for h in handles:
            h.remove()
    ws.report.step(f"empirical bias correction of {len(handles)} layers on {int(inputs[0].shape[0])} samples")
