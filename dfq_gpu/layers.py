"""The layer registry: one :class:`LayerType` entry per kind of weight layer.

Every fact the package needs about a convolution / linear layer, which does not depend on
quantization, is here, so that ``graph/``, ``passes/`` and ``quant/`` look a layer up instead of
testing its class: how to recognise it, its ``kind`` name, its channel counts, its group
structure, how to scale its input / output channels, its response to a per-channel constant
input and the first two moments of its output for statistics propagation.

Weights are laid out as PyTorch does: output channels on axis 0, ``in_channels / groups``
input channels on axis 1, then the taps (none for a linear layer). The output channels form
``groups`` consecutive blocks, block ``g`` reading input channels ``g * ipg ... (g + 1) * ipg - 1``.

The entries, looked up in order (the first whose ``matches`` accepts a module wins):

========== ================================================ ===============
kind       modules                                          label (reports)
========== ================================================ ===============
linear     ``nn.Linear`` (and subclasses)                   ``linear``
depthwise  ``nn.Conv2d``, ``1 < groups == in == out``       ``depthwise``
grouped    any other ``nn.Conv2d`` with ``groups > 1``      ``grouped conv``
conv       ``nn.Conv2d`` with ``groups == 1``               ``conv``
========== ================================================ ===============

The facts that depend on quantization live beside their modules, keyed by ``kind``: the
quantized module (:data:`dfq_gpu.modules.QUANTIZED_LAYERS`), the int8 step
(:data:`dfq_gpu.int8.convert.INT8_STEPS`). :func:`register` adds an entry (for example a
``nn.Conv1d``) without editing any other module.

This module imports only torch, numpy and the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LayerType", "layer_type", "is_layer_module", "register", "unregister", "layer_types",
           "LINEAR", "CONV", "DEPTHWISE", "GROUPED", "conv_entry"]


def _taps(w: torch.Tensor) -> list[int]:
    return [1] * (w.dim() - 2)


@dataclass(frozen=True)
class LayerType:
    """The facts about one kind of weight layer.

    ``matches(m)``: whether a module is of this kind (entries are tried in registry order).
    ``module_class``: the torch class its modules are instances of (what a saved layer is
    rebuilt from). ``in_channels(m)`` / ``out_channels(m)`` / ``groups(m)``: channel counts and
    the group structure of the weight (axis 0: output channels, axis 1: ``in / groups`` input
    channels, then the taps). ``response(m, w, c)``: ``sum_{i, taps} w[o, i, taps] * c[i]``
    per output channel, in float64 (``w`` float64 weights, ``c`` float64 per-channel constant).
    ``moments(m, w, b, mean, var)``: mean and variance (float64 tensors) of the output for
    independent inputs with per-channel ``mean`` / ``var`` (``w``, ``b`` float64).
    """

    kind: str
    label: str
    module_class: type
    matches: Callable[[nn.Module], bool]
    in_channels: Callable[[nn.Module], int]
    out_channels: Callable[[nn.Module], int]
    groups: Callable[[nn.Module], int]
    response: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    moments: Callable[[nn.Module, torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor],
                      tuple[torch.Tensor, torch.Tensor]]
    in_axis: int = 1  # the weight axis of the (per-group) input channels; output channels are axis 0

    # ------------------------------------------------------------------ weight facts
    def out_channel_absmax(self, m: nn.Module) -> np.ndarray:
        """Per output channel ``max |W|`` (exact: max and abs need no wider type)."""
        w = m.weight.detach()
        return w.reshape(w.shape[0], -1).abs().amax(1).to(torch.float64).cpu().numpy()

    def out_channel_minmax(self, m: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        w = m.weight.detach()
        w = w.reshape(w.shape[0], -1)
        return (w.amin(1).to(torch.float64).cpu().numpy(), w.amax(1).to(torch.float64).cpu().numpy())

    def in_channel_absmax(self, m: nn.Module) -> np.ndarray:
        """Per input channel ``max |W|`` over output channels and taps (input channels of all
        groups, in order)."""
        w = m.weight.detach().abs()
        g = self.groups(m)
        o, ipg = w.shape[0], w.shape[1]
        w = w.reshape(g, o // g, ipg, -1)  # [g, o/g, i/g, taps]
        return w.amax(dim=(1, 3)).reshape(-1).to(torch.float64).cpu().numpy()

    @torch.no_grad()
    def scale_out_channels(self, m: nn.Module, factor: torch.Tensor) -> None:
        """``W[o] *= factor[o]``, ``b[o] *= factor[o]`` (``factor`` of the weight's dtype and device)."""
        m.weight.mul_(factor.view([-1] + [1] * (m.weight.dim() - 1)))
        if m.bias is not None:
            m.bias.mul_(factor)

    @torch.no_grad()
    def scale_in_channels(self, m: nn.Module, factor: torch.Tensor) -> None:
        """``W[:, i] *= factor[i]`` (``i`` counts input channels across groups)."""
        g = self.groups(m)
        o, ipg = m.weight.shape[0], m.weight.shape[1]
        w = m.weight.view(g, o // g, ipg, *m.weight.shape[2:])
        w.mul_(factor.view(g, 1, ipg, *_taps(m.weight)))


# ----------------------------------------------------------------------------- entries
def _linear_response(m: nn.Module, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return w @ c


def _linear_moments(m, w, b, mean, var):
    return w @ mean + (b if b is not None else 0.0), (w * w) @ var


def conv_entry(kind: str, label: str, module_class: type, conv: Callable[..., torch.Tensor],
               matches: Callable[[nn.Module], bool]) -> LayerType:
    """A :class:`LayerType` for a convolution computed by the functional ``conv``
    (``F.conv1d``, ``F.conv2d``, ...; called as ``conv(x, w, b, groups=g)``)."""

    def response(m, w, c):
        x = c.view(1, -1, *_taps(w)).expand(1, -1, *w.shape[2:])
        return conv(x, w, None, groups=m.groups).view(-1)

    def moments(m, w, b, mean, var):
        xm = mean.view(1, -1, *_taps(w)).expand(1, -1, *w.shape[2:])
        xv = var.view(1, -1, *_taps(w)).expand(1, -1, *w.shape[2:])
        return (conv(xm, w, b, groups=m.groups).view(-1), conv(xv, w * w, None, groups=m.groups).view(-1))

    return LayerType(kind=kind, label=label, module_class=module_class, matches=matches,
                     in_channels=lambda m: m.in_channels, out_channels=lambda m: m.out_channels,
                     groups=lambda m: m.groups, response=response, moments=moments)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


LINEAR = LayerType(kind="linear", label="linear", module_class=nn.Linear,
                   matches=lambda m: isinstance(m, nn.Linear),
                   in_channels=lambda m: m.in_features, out_channels=lambda m: m.out_features,
                   groups=lambda m: 1, response=_linear_response, moments=_linear_moments)
DEPTHWISE = conv_entry("depthwise", "depthwise", nn.Conv2d, F.conv2d, _is_depthwise)
GROUPED = conv_entry("grouped", "grouped conv", nn.Conv2d, F.conv2d,
                     lambda m: isinstance(m, nn.Conv2d) and m.groups > 1)
CONV = conv_entry("conv", "conv", nn.Conv2d, F.conv2d, lambda m: isinstance(m, nn.Conv2d))

_REGISTRY: list[LayerType] = [LINEAR, DEPTHWISE, GROUPED, CONV]


def layer_types() -> tuple[LayerType, ...]:
    """The registered entries, in lookup order."""
    return tuple(_REGISTRY)


def register(entry: LayerType, first: bool = True) -> LayerType:
    """Add ``entry`` to the registry (by default ahead of the others, so that an entry for a
    special case of a registered class wins). Replaces an entry of the same ``kind``."""
    unregister(entry.kind)
    _REGISTRY.insert(0 if first else len(_REGISTRY), entry)
    return entry


def unregister(kind: str) -> None:
    """Remove the entry of that ``kind`` (nothing if there is none)."""
    _REGISTRY[:] = [e for e in _REGISTRY if e.kind != kind]


def layer_type(m: object) -> Optional[LayerType]:
    """The registry entry of a module, or ``None`` when it is not a weight layer."""
    if not isinstance(m, nn.Module):
        return None
    for e in _REGISTRY:
        if e.matches(m):
            return e
    return None


def is_layer_module(m: object) -> bool:
    """True for a module the registry knows (a convolution or linear layer)."""
    return layer_type(m) is not None
