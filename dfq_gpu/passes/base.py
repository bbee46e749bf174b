"""The state the passes share while transforming one private copy of a model, and
per-channel weight helpers (ranges, scaling of input / output channels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ..config import DFQConfig
from ..graph.regions import Region, is_bn_sink
from ..graph.stats import ChannelStats, NodeStats
from ..layers import LayerType, is_layer_module, layer_type
from ..report import Report

__all__ = ["Workspace", "out_channel_absmax", "out_channel_minmax", "in_channel_absmax", "out_channel_count",
           "in_channel_count", "scale_out_channels", "scale_in_channels", "layer_response_to_constant", "layer_kind"]


@dataclass
class Workspace:
    """A traced private copy of the model and everything the passes learn about it."""

    gm: fx.GraphModule
    cfg: DFQConfig
    example_inputs: tuple[Any, ...]
    report: Report
    bn_stats: dict[str, ChannelStats] = field(default_factory=dict)  # layer name -> output N(beta, gamma^2)
    regions: list[Region] = field(default_factory=list)
    observed: dict[str, NodeStats] = field(default_factory=dict)  # node name -> stats on the example inputs

    def module(self, name: str) -> nn.Module:
        return self.gm.get_submodule(name)

    def node(self, name: str) -> fx.Node:
        for n in self.gm.graph.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def layer_nodes(self) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes
                if n.op == "call_module" and is_layer_module(self.gm.get_submodule(str(n.target)))]


def layer_kind(m: nn.Module) -> str:
    """The layer's label for reports (``conv``, ``depthwise``, ``grouped conv``, ``linear``)."""
    return _lt(m).label


def _lt(m: nn.Module) -> LayerType:
    lt = layer_type(m)
    if lt is None:
        raise TypeError(f"{type(m).__name__} is not a registered layer type (dfq_gpu.layers)")
    return lt


def out_channel_minmax(m: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    return _lt(m).out_channel_minmax(m)


def out_channel_absmax(m: nn.Module) -> np.ndarray:
    """Per output channel ``max |W|`` (exact: max and abs need no wider type)."""
    return _lt(m).out_channel_absmax(m)


def in_channel_absmax(m: nn.Module) -> np.ndarray:
    """Per input channel ``max |W|`` over output channels and taps (grouped convs handled); for a
    batch norm sink (:func:`~dfq_gpu.graph.regions.is_bn_sink`) its multiplier ``|gamma| / sigma``."""
    if is_bn_sink(m):
        return (m.weight.detach().abs() / torch.sqrt(m.running_var + m.eps)).to(torch.float64).cpu().numpy()
    return _lt(m).in_channel_absmax(m)


def out_channel_count(m: nn.Module) -> int:
    """The number of output channels (the length of :func:`out_channel_absmax`)."""
    return int(_lt(m).out_channels(m))


def in_channel_count(m: nn.Module) -> int:
    """The number of input channels, across groups (the length of :func:`in_channel_absmax`)."""
    return int(m.weight.numel()) if is_bn_sink(m) else int(_lt(m).in_channels(m))


def _as(m: nn.Module, v: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(v, dtype=m.weight.dtype, device=m.weight.device)


@torch.no_grad()
def scale_out_channels(m: nn.Module, factor: np.ndarray) -> None:
    """``W[o] *= factor[o]``, ``b[o] *= factor[o]``."""
    _lt(m).scale_out_channels(m, _as(m, factor))


@torch.no_grad()
def scale_in_channels(m: nn.Module, factor: np.ndarray) -> None:
    """``W[:, i] *= factor[i]`` (for grouped convs, ``i`` counts across groups); a batch norm sink
    gets ``gamma *= factor`` and ``running_mean /= factor``, so that it maps ``x / factor`` as it
    mapped ``x``."""
    if is_bn_sink(m):
        m.weight.mul_(_as(m, factor))
        m.running_mean.div_(torch.as_tensor(factor, dtype=m.running_mean.dtype, device=m.running_mean.device))
        return
    _lt(m).scale_in_channels(m, _as(m, factor))


@torch.no_grad()
def layer_response_to_constant(m: nn.Module, c: np.ndarray, weight: torch.Tensor | None = None) -> np.ndarray:
    """``sum_{i, taps} W[o, i, taps] * c[i]`` per output channel: the layer's response (without
    bias) to an input that is the constant ``c[i]`` on channel ``i`` everywhere."""
    w = (weight if weight is not None else m.weight).detach().to(torch.float64).cpu()
    cc = torch.as_tensor(np.asarray(c, dtype=np.float64))
    return _lt(m).response(m, w, cc).numpy()


@torch.no_grad()
def add_bias(m: nn.Module, delta: np.ndarray) -> None:
    """``b += delta``, creating the bias if the layer has none."""
    d = _as(m, delta)
    if m.bias is None:
        m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device))
    m.bias.add_(d)
