"""Channel padding of an integer network: activations with a channel count that is not a multiple
of 16 stored with 16-aligned rows (``to_int8(q, pad_channels=True)``).

Why: an NHWC int8 activation of C channels is a ``[pixels, C]`` matrix with rows of C bytes.
With C = 24 or 40 (EfficientNet-Lite's and MobileNet's narrow stages) or 72, 120, 200
(MobileNetV3's expanded ones), no row starts on a 16-byte boundary: Triton cannot prove the
alignment, so the GEMM reading it loads and stores one byte per instruction and cannot use
``cp.async`` pipelining or TMA (``benchmarks/kernels.py --compile-only``: the "unaligned rows"
GEMM job). Stored with ``ceil(C / 16) * 16`` channels the rows are aligned, at the price of the
extra bytes (24 -> 32 channels: a third more for those tensors).

How it stays exact: a *group* is a set of tensors joined by steps that treat channels
independently (depthwise convolution, residual add, pooling, zero padding, table lookup,
multiply, upsampling); the steps that mix channels (dense convolution, linear layer) start a
group with their output and end one with their input. A group is padded when every tensor in it
is made by such steps and read only by them (or by the flatten of a global pool's one-pixel
output, which keeps the channels in order). Then

* a producing layer gets zero weight rows, zero bias and zero weight zero point for the extra
  output channels, so each extra channel's accumulator is 0 and its output a constant (its
  zero point);
* a consuming layer gets extra input channels whose weights equal the weight zero point of
  their output channel: each contributes ``(x - z_x)(z_w - z_w) = 0`` to the exact sum whatever
  ``x`` holds, and its folded bias ``bias - z_x sum w + K z_x z_w`` is unchanged (the extra
  ``K`` and ``sum w`` terms cancel);
* the channel-wise steps in between get padded per-channel parameters (weights 0, multiplier
  1, the whole int8 range as bounds, a copy of the first channel's table): their extra channels
  never reach a real one.

So every real channel's integers are those of the unpadded network, bit for bit. The padded
steps carry ``logical_channels`` (the real count); :meth:`Int8Network.activations` and
:func:`~dfq_gpu.int8.compare_with_simulation` slice their outputs back to it, and the network
outputs are never padded (a tensor that reaches a dequantization, a float step or a reshape is
not). A shape query of a padded tensor (``x.shape``, ``x.size(d)``: an upsampling to another
tensor's size) is told the real channel count. The facts of each step type are :data:`CHANNEL_FACTS`, the one table this
module decides by.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn as nn

from . import layers as L

__all__ = ["ChannelFacts", "CHANNEL_FACTS", "ALIGN", "pad_channels"]

log = logging.getLogger(__name__)

#: Channel counts are padded up to a multiple of this (16 bytes: the alignment of vector loads,
#: ``cp.async`` and TMA rows).
ALIGN = 16

#: How a step reads an input: it mixes channels and can take extra ones ("absorb"), it keeps
#: channels apart and its output has the input's channels ("same"), or it needs the input as it is
#: ("fixed").
ABSORB, SAME, FIXED = "absorb", "same", "fixed"
#: How a step's output relates to the groups: a new group starts there ("source": a channel-mixing
#: layer), it belongs to its "same" inputs' group, or it cannot be padded ("fixed").
SOURCE = "source"
#: How a shape query (``layers.nchw_shape``, ``layers.nchw_size``) reads its tensor: told the real
#: channel count when the tensor is padded.
QUERY = "query"


@dataclass(frozen=True)
class ChannelFacts:
    """What channel padding needs to know about one step type.

    ``inputs``: the role of each positional input (``ABSORB``, ``SAME``, ``FIXED``; missing ones
    are ``FIXED``); ``output``: ``SOURCE``, ``SAME`` or ``FIXED``; ``channels``: the step's own
    channel count on its output side (a producing layer's output channels; None when it has
    none of its own); ``pad_input`` / ``pad_output``: rewrite the step's parameters for extra
    input channels (an absorbing layer) or extra output channels (a producing layer or a
    channel-wise step), given the real and the padded count."""

    inputs: tuple[str, ...]
    output: str
    channels: Optional[Callable[[nn.Module], int]] = None
    pad_input: Optional[Callable[[nn.Module, int, int], None]] = None
    pad_output: Optional[Callable[[nn.Module, int, int], None]] = None


# -- parameter rewrites ----------------------------------------------------------------------------
def _pad(t: Optional[torch.Tensor], dim: int, c: int, cp: int, value: float | torch.Tensor) -> Optional[torch.Tensor]:
    """``t`` with ``cp - c`` entries of ``value`` appended along ``dim`` when that dimension holds
    ``c`` channels (a per-tensor value, one entry, stays as it is unless ``c`` is 1)."""
    if t is None or t.shape[dim] != c:
        return t
    shape = list(t.shape)
    shape[dim] = cp - c
    extra = (value.expand(shape) if isinstance(value, torch.Tensor) else torch.full(shape, value)).to(t)
    return torch.cat([t, extra], dim=dim).contiguous()


def _pad_epilogue(step: nn.Module, c: int, cp: int) -> None:
    """The per-channel epilogue of a ``_Requant`` step (multiplier 1, the whole int8 range) and an
    add's per-channel clamp."""
    for name, value in (("multiplier", 1.0), ("lo", -128), ("hi", 127), ("clamp_lo", -128), ("clamp_hi", 127)):
        t = getattr(step, name, None)
        if isinstance(t, torch.Tensor):
            setattr(step, name, _pad(t, 0, c, cp, value))


def _weight_rows_padder(axis: int) -> Callable[[nn.Module, int, int], None]:
    """The rewrite for extra output channels of a step whose weight has its output channels on
    ``axis`` (a dense convolution or linear layer: 0; a depthwise convolution ``[KH, KW, C]``: 2):
    zero weights, zero (folded) bias and weight zero point, so their accumulator is 0, and the
    per-channel epilogue padded."""

    def pad(step: nn.Module, c: int, cp: int) -> None:
        step.weight = _pad(step.weight, axis, c, cp, 0)
        step.bias = _pad(step.bias, 0, c, cp, 0)
        step.w_zp = _pad(step.w_zp, 0, c, cp, 0)
        _pad_epilogue(step, c, cp)

    return pad


_pad_layer_output = _weight_rows_padder(0)
_pad_depthwise = _weight_rows_padder(2)


def _pad_layer_input(step: nn.Module, c: int, cp: int) -> None:
    """Extra input channels of a dense convolution ``[N, KH, KW, C]`` or linear layer ``[N, K]``:
    weights equal to each output channel's weight zero point (0 without one)."""
    w = step.weight
    n = w.shape[0]
    zp = step.w_zp if step.w_zp is not None else torch.zeros(1, dtype=torch.int32, device=w.device)
    fill = zp.to(torch.int8).reshape(-1).expand(n).reshape(n, *([1] * (w.dim() - 1)))
    step.weight = _pad(w, w.dim() - 1, c, cp, fill)


def _pad_table(step: nn.Module, c: int, cp: int) -> None:
    if step.table.dim() == 2:  # per-channel tables [C, 256]
        step.table = _pad(step.table, 0, c, cp, step.table[:1])


def _out_channels(step: nn.Module) -> int:
    return int(step.weight.shape[0])


def _float_output(step: nn.Module) -> bool:
    return bool(getattr(step, "float_output", False))


_LAYER = ChannelFacts((ABSORB, SAME), SOURCE, _out_channels, _pad_layer_input, _pad_layer_output)
_CHANNELWISE = ChannelFacts((SAME,), SAME)
_QUERY = ChannelFacts((QUERY,), FIXED)

#: The facts of every step type that can hold padded channels (exact types: a subclass has its own
#: entry or none). Anything else reading or making a tensor keeps that tensor's group unpadded.
CHANNEL_FACTS: dict[type, ChannelFacts] = {
    L.Int8Conv2d: _LAYER,
    L.Int8Linear: _LAYER,
    # the stem reads the float image; a fused depthwise + 1x1 reads the depthwise input
    L.Int8StemConv2d: ChannelFacts((FIXED,), SOURCE, _out_channels, None, _pad_layer_output),
    L.Int8DepthwiseProjectConv2d: ChannelFacts((FIXED, SAME), SOURCE, _out_channels, None, _pad_layer_output),
    L.Int8DepthwiseConv2d: ChannelFacts((SAME,), SAME, pad_output=_pad_depthwise),
    L.Int8Add: ChannelFacts((SAME, SAME), SAME, pad_output=_pad_epilogue),
    L.Int8Mul: ChannelFacts((SAME, SAME), SAME),
    L.Int8Lookup: ChannelFacts((SAME,), SAME, pad_output=_pad_table),
    L.Int8AvgPool: _CHANNELWISE,
    L.Int8MaxPool2d: _CHANNELWISE,
    L.Int8GlobalMaxPool: _CHANNELWISE,
    L.Int8Pad: _CHANNELWISE,
    L.Int8AvgPool2d: _CHANNELWISE,
    L.Int8AdaptiveAvgPool2d: _CHANNELWISE,
    L.Int8UpsampleNearest: _CHANNELWISE,
    L.Int8UpsampleBilinear: _CHANNELWISE,
}


#: Steps whose output has one pixel per image (``[B, 1, 1, C]`` or ``[B, C]``): flattening it
#: keeps the channels in order.
_ONE_PIXEL = (L.Int8AvgPool, L.Int8GlobalMaxPool)


def _facts(gm: fx.GraphModule, node: fx.Node) -> Optional[ChannelFacts]:
    if node.op == "call_function" and node.target in (L.nchw_shape, L.nchw_size):
        return _QUERY if "channels" not in node.kwargs else None
    if node.op == "call_function" and node.target is L.flatten_nhwc:
        # the flatten of a classifier head: channel-wise when it flattens a global pool's output
        src = node.args[0] if node.args else None
        one_pixel = isinstance(src, fx.Node) and src.op == "call_module" and isinstance(
            gm.get_submodule(str(src.target)), _ONE_PIXEL)
        return _CHANNELWISE if one_pixel and len(node.args) == 1 and not node.kwargs else None
    if node.op != "call_module":
        return None
    step = gm.get_submodule(str(node.target))
    facts = CHANNEL_FACTS.get(type(step))
    if facts is not None and facts.output != FIXED and _float_output(step):
        facts = ChannelFacts(facts.inputs, FIXED, facts.channels, facts.pad_input, None)
    return facts


def _roles(facts: Optional[ChannelFacts], node: fx.Node, user: fx.Node) -> set[str]:
    """How ``user`` reads ``node``: the roles of the places it is passed in (a layer may take it
    both as its input and as a fused residual add's operand)."""
    if facts is None or any(node is v for v in user.kwargs.values()):
        return {FIXED}
    roles = {facts.inputs[i] if i < len(facts.inputs) else FIXED for i, a in enumerate(user.args) if a is node}
    return roles or {FIXED}


def pad_channels(gm: fx.GraphModule, align: int = ALIGN) -> dict[str, tuple[int, int]]:
    """Pad the channels of the integer network ``gm`` (in place) where a group of tensors (see
    the module docstring) has a channel count that is not a multiple of ``align``.

    Returns ``{step name: (channels, stored channels)}`` for every step whose output is padded."""
    nodes = list(gm.graph.nodes)
    parent = {n: n for n in nodes}

    def find(n: fx.Node) -> fx.Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    facts = {n: _facts(gm, n) for n in nodes}
    # -- groups: a step's output joins its "same" inputs' group (a channel-wise step's input, a
    #    fused residual add's other operand)
    for n in nodes:
        f = facts[n]
        if f is not None and f.output != FIXED:
            for i, a in enumerate(n.args):
                if isinstance(a, fx.Node) and i < len(f.inputs) and f.inputs[i] == SAME:
                    parent[find(a)] = find(n)
    # -- a group is padded when all its tensors are made by steps with facts and read by them
    members: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        members.setdefault(find(n), []).append(n)
    done: dict[str, tuple[int, int]] = {}
    queried = False
    for group in members.values():
        plan = _group_plan(gm, group, facts)
        if plan is None:
            continue
        c, absorbers, queries = plan
        cp = -(-c // align) * align
        if cp == c:
            continue
        for n in group:
            if n.op != "call_module":
                continue  # a flatten: nothing of its own to pad
            step = gm.get_submodule(str(n.target))
            f = facts[n]
            assert f is not None
            if f.pad_output is not None:
                f.pad_output(step, c, cp)
            step.logical_channels, step.stored_channels = c, cp
            done[str(n.target)] = (c, cp)
        for n in absorbers:
            f = facts[n]
            assert f is not None and f.pad_input is not None
            f.pad_input(gm.get_submodule(str(n.target)), c, cp)
        for n in queries:
            n.kwargs = {**n.kwargs, "channels": c}
            queried = True
    if queried:
        gm.recompile()
    if done:
        sizes: dict[tuple[int, int], int] = {}
        for v in done.values():
            sizes[v] = sizes.get(v, 0) + 1
        log.info("channel padding: %s", ", ".join(f"{c} -> {cp} ({k} steps)" for (c, cp), k in sorted(sizes.items())))
    return done


def _group_plan(gm: fx.GraphModule, group: list[fx.Node],
                facts: dict[fx.Node, Optional[ChannelFacts]]) -> Optional[tuple[int, list[fx.Node], list[fx.Node]]]:
    """``(channels, absorbing users, shape queries)`` of a paddable group, or None."""
    counts: set[int] = set()
    absorbers: list[fx.Node] = []
    queries: list[fx.Node] = []
    for n in group:
        f = facts[n]
        if f is None or f.output == FIXED:
            return None  # made by something that cannot pad its output
        if f.output == SOURCE:
            assert f.channels is not None
            counts.add(f.channels(gm.get_submodule(str(n.target))))
        for u in n.users:
            roles = _roles(facts[u], n, u)
            if FIXED in roles:
                return None
            if ABSORB in roles:
                w = gm.get_submodule(str(u.target)).weight
                counts.add(int(w.shape[-1]))
                absorbers.append(u)
            if QUERY in roles:
                queries.append(u)
    if len(counts) != 1:
        return None  # no producing layer, or channel counts that disagree (a broadcast)
    c = counts.pop()
    # a channel-wise step's own per-channel parameters must have the group's channel count
    if any(not _own_channels(gm.get_submodule(str(n.target))) <= {1, c} for n in group
           if facts[n].output == SAME and n.op == "call_module"):
        return None
    return c, list(dict.fromkeys(absorbers)), list(dict.fromkeys(queries))


def _own_channels(step: nn.Module) -> set[int]:
    """The channel counts of a channel-wise step's per-channel parameters."""
    sizes = {int(t.shape[0]) for name in ("bias", "w_zp", "multiplier", "lo", "hi", "clamp_lo", "clamp_hi")
             if isinstance(t := getattr(step, name, None), torch.Tensor) and t.dim() > 0}
    if isinstance(step, L.Int8DepthwiseConv2d):
        sizes.add(int(step.weight.shape[2]))
    if isinstance(step, L.Int8Lookup) and step.table.dim() == 2:
        sizes.add(int(step.table.shape[0]))
    return sizes
