"""The state the passes share while transforming one private copy of a model, and
per-channel weight helpers (ranges, scaling of input / output channels)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..config import DFQConfig
from ..graph.regions import Region, is_depthwise
from ..graph.stats import ChannelStats, NodeStats
from ..graph.trace import LAYER_TYPES
from ..report import Report

__all__ = ["Workspace", "out_channel_absmax", "out_channel_minmax", "in_channel_absmax", "scale_out_channels",
           "scale_in_channels", "layer_response_to_constant", "layer_kind"]


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
                if n.op == "call_module" and isinstance(self.gm.get_submodule(str(n.target)), LAYER_TYPES)]


def layer_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if is_depthwise(m):
        return "depthwise"
    if isinstance(m, nn.Conv2d) and m.groups > 1:
        return "grouped conv"
    return "conv"


def _w(m: nn.Module) -> torch.Tensor:
    return m.weight.detach()


def out_channel_minmax(m: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    w = _w(m).reshape(_w(m).shape[0], -1)
    return (w.amin(1).to(torch.float64).cpu().numpy(), w.amax(1).to(torch.float64).cpu().numpy())


def out_channel_absmax(m: nn.Module) -> np.ndarray:
    """Per output channel ``max |W|`` (exact: max and abs need no wider type)."""
    w = _w(m)
    return w.reshape(w.shape[0], -1).abs().amax(1).to(torch.float64).cpu().numpy()


def in_channel_absmax(m: nn.Module) -> np.ndarray:
    """Per input channel ``max |W|`` over output channels and taps (grouped convs handled)."""
    w = _w(m).abs()
    if isinstance(m, nn.Linear):
        return w.amax(0).to(torch.float64).cpu().numpy()
    g = m.groups
    o, ipg = w.shape[0], w.shape[1]
    w = w.reshape(g, o // g, ipg, -1)  # [g, o/g, i/g, taps]
    return w.amax(dim=(1, 3)).reshape(-1).to(torch.float64).cpu().numpy()


def _as(m: nn.Module, v: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(v, dtype=m.weight.dtype, device=m.weight.device)


@torch.no_grad()
def scale_out_channels(m: nn.Module, factor: np.ndarray) -> None:
    """``W[o] *= factor[o]``, ``b[o] *= factor[o]``."""
    f = _as(m, factor)
    m.weight.mul_(f.view([-1] + [1] * (m.weight.dim() - 1)))
    if m.bias is not None:
        m.bias.mul_(f)


@torch.no_grad()
def scale_in_channels(m: nn.Module, factor: np.ndarray) -> None:
    """``W[:, i] *= factor[i]`` (for grouped convs, ``i`` counts across groups)."""
    f = _as(m, factor)
    if isinstance(m, nn.Linear):
        m.weight.mul_(f.view(1, -1))
        return
    g = m.groups
    o, ipg = m.weight.shape[0], m.weight.shape[1]
    w = m.weight.view(g, o // g, ipg, *m.weight.shape[2:])
    w.mul_(f.view(g, 1, ipg, *([1] * (m.weight.dim() - 2))))


@torch.no_grad()
def layer_response_to_constant(m: nn.Module, c: np.ndarray, weight: torch.Tensor | None = None) -> np.ndarray:
    """``sum_{i, taps} W[o, i, taps] * c[i]`` per output channel: the layer's response (without
    bias) to an input that is the constant ``c[i]`` on channel ``i`` everywhere."""
    w = (weight if weight is not None else m.weight).detach().to(torch.float64).cpu()
    cc = torch.as_tensor(np.asarray(c, dtype=np.float64))
    if isinstance(m, nn.Linear):
        return (w @ cc).numpy()
    kh, kw = w.shape[2], w.shape[3]
    x = cc.view(1, -1, 1, 1).expand(1, -1, kh, kw)
    return F.conv2d(x, w, None, groups=m.groups).view(-1).numpy()


@torch.no_grad()
def add_bias(m: nn.Module, delta: np.ndarray) -> None:
    """``b += delta``, creating the bias if the layer has none."""
    d = _as(m, delta)
    if m.bias is None:
        m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], dtype=m.weight.dtype, device=m.weight.device))
    m.bias.add_(d)
