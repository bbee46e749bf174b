"""Where an integer network computes: :class:`Coverage`, what :func:`dfq_gpu.to_int8` reports
as ``Int8Network.coverage`` (each compute node of the simulation in int8 or in float with the
reason, and the share of the convolution and linear multiply-accumulates in int8)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch.fx as fx
import torch.nn as nn

from ..graph import ops
from ..graph.trace import node_module

__all__ = ["Coverage", "layer_macs", "measure_coverage"]


@dataclass(frozen=True)
class Coverage:
    """Where an integer network computes: ``placement`` maps every compute node of the
    simulation (layers, activations, adds, pools, multiplies, concatenations, ...) to ``"int8"``
    or to the reason it runs in float (fp32, between a dequantize and a quantize);
    ``macs_int8`` / ``macs_total``: multiply-accumulates per image of the convolutions and linear
    layers (from the shapes recorded at quantization); ``fused``: the residual adds computed in the
    epilogue of the layer producing one operand (add node -> layer node; both are placed in
    int8, and the layer's MACs count as int8); ``stem``: the input quantizer computed by the first
    convolution's step (quantizer node -> convolution node); ``depthwise``: the depthwise
    convolutions computed in the step of the 1x1 convolution after them (depthwise node -> 1x1
    node)."""

    placement: dict[str, str]
    macs_int8: int
    macs_total: int
    fused: dict[str, str] = field(default_factory=dict)
    stem: dict[str, str] = field(default_factory=dict)
    depthwise: dict[str, str] = field(default_factory=dict)

    @property
    def float_nodes(self) -> dict[str, str]:
        """The nodes that run in float, with the reason."""
        return {k: v for k, v in self.placement.items() if v != "int8"}

    @property
    def int8_mac_fraction(self) -> float:
        """The share of the multiply-accumulates that run in int8 (1.0 for a network without any)."""
        return self.macs_int8 / self.macs_total if self.macs_total else 1.0

    def summary(self) -> str:
        """One line: how much runs in int8, and what runs in float."""
        fl = self.float_nodes
        text = (f"{len(self.placement) - len(fl)} of {len(self.placement)} ops in int8, "
                f"{100 * self.int8_mac_fraction:.1f}% of MACs")
        if self.fused:
            n = len(self.fused)
            text += f"; {n} residual add{'s' if n > 1 else ''} fused into the layer producing an operand"
        if self.stem:
            text += f"; input quantization fused into {', '.join(sorted(set(self.stem.values())))}"
        if self.depthwise:
            n = len(self.depthwise)
            text += f"; {n} depthwise convolution{'s' if n > 1 else ''} fused into the 1x1 convolution after it"
        if fl:
            by: dict[str, list[str]] = {}
            for k, v in fl.items():
                by.setdefault(v, []).append(k)
            text += "; float: " + "; ".join(f"{', '.join(n[:4])}{' ...' if len(n) > 4 else ''} ({why})"
                                            for why, n in by.items())
        return text


def layer_macs(m: Optional[nn.Module], node: fx.Node) -> int:
    """Multiply-accumulates per image of a convolution or linear layer (0 for anything else, or
    without a recorded output shape)."""
    shape = ops.tensor_shape(node)
    if shape is None or len(shape) < 2:
        return 0
    per_output = 0
    if isinstance(m, nn.Conv2d):
        per_output = (m.in_channels // m.groups) * math.prod(m.kernel_size)
    elif isinstance(m, nn.Linear):
        per_output = m.in_features
    return per_output * math.prod(shape[1:])


def measure_coverage(sim: fx.GraphModule, float_nodes: dict[str, str],
                     skip: Callable[[fx.Node], bool], fused: Optional[dict[str, str]] = None,
                     stem: Optional[dict[str, str]] = None, depthwise: Optional[dict[str, str]] = None) -> Coverage:
    """The :class:`Coverage` of the integer network of ``sim`` whose float parts are
    ``float_nodes`` (node name -> reason), whose fused residual adds are ``fused`` (add ->
    layer), whose input quantizers computed by a convolution are ``stem`` and whose depthwise
    convolutions computed by the 1x1 convolution after them are ``depthwise``; nodes for which ``skip`` holds (quantizers, sizes, constants) are not listed."""
    placement: dict[str, str] = {}
    macs_int8 = macs_total = 0
    for node in sim.graph.nodes:
        if skip(node):
            continue
        where = float_nodes.get(node.name, "int8")
        placement[node.name] = where
        macs = layer_macs(node_module(sim, node), node)
        macs_total += macs
        macs_int8 += macs if where == "int8" else 0
    return Coverage(placement, macs_int8, macs_total, dict(fused or {}), dict(stem or {}), dict(depthwise or {}))
