"""Find the structures the DFQ passes act on.

- :class:`BNPair`: a convolution / linear layer whose only consumer is a batch norm, which
  can be folded into it.
- :class:`Region`: a cross-layer equalization region. Its source layers' output channels
  can all be scaled by ``1/s`` and its sink layers' input channels by ``s`` without
  changing the network's function, because every op in between (``acts``) is
  positively scale-equivariant per channel: ReLU, LeakyReLU, PReLU, per-channel clamps
  (ReLU6 in "clip" mode), zero padding, max / average pooling, interpolation (any mode: a
  fixed linear combination of one channel's values), channel-preserving reshapes, residual
  adds (all of whose inputs are then in the region: one scale vector shared by every producer
  and consumer of the residual stream), multiplicative gates (``x * g`` where the gate ``g``
  lies outside the region, as in squeeze-excitation) and concatenations along the channels
  (every input then in the region, side by side: each source, sink and clamp covers a slice
  of the region's channels, from its offset). A conv -> depthwise -> conv chain is two
  regions, which equalization iterates over. A batch norm that was not folded (a
  pre-activation BN) can be a sink: it absorbs the scale exactly, stays in float and
  constrains nothing.
- :class:`SkippedRegion`: a layer whose output channels cannot be scaled, and why.

Regions are found by growing a set of tensors from each layer's output: a tensor in the
region needs every producer to be a source layer or an equivariant op (whose region inputs
then join), and every consumer to be a sink layer or an equivariant op (whose output then
joins). Anything else (the network output, ReLU6 in "keep" mode, a sigmoid, a concatenation
along another dimension or of a tensor with itself, a channel shuffle) makes the region
impossible, and that is reported, never an error.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch.fx as fx
import torch.nn as nn

from ..nn import ChannelClamp
from . import ops
from ..layers import is_layer_module, layer_type
from .trace import BN_TYPES, node_module

__all__ = ["BNPair", "Region", "SkippedRegion", "find_bn_pairs", "find_regions", "is_bn_sink", "is_depthwise",
           "placed_max"]


@dataclass(frozen=True)
class BNPair:
    """A layer and the batch norm that directly and solely follows it."""

    layer: str  # module name of the conv / linear
    bn: str  # module name of the batch norm
    bn_node: str  # node name of the batch norm


@dataclass(frozen=True)
class Region:
    """An equalization region: ``srcs`` scaled by ``1/s`` per output channel, ``sinks`` by ``s`` per input channel.

    Without a concatenation every tensor of the region has its ``channels`` channels. Through
    a concatenation along the channels, the region's channels are those of the widest
    concatenation and each source, sink and op covers a slice of them, from its offset in
    ``src_offsets`` / ``sink_offsets`` / ``act_offsets`` (empty: all at offset 0).
    """

    srcs: tuple[str, ...]
    sinks: tuple[str, ...]
    acts: tuple[str, ...]  # node names of the equivariant ops between them
    channels: int
    residual: bool = False  # passes through a residual add (one scale vector shared by several layers)
    notes: tuple[str, ...] = field(default_factory=tuple)
    src_offsets: tuple[int, ...] = ()
    sink_offsets: tuple[int, ...] = ()
    act_offsets: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"{'+'.join(self.srcs)} -> {'+'.join(self.sinks)}"

    @property
    def concat(self) -> bool:
        """Whether the region passes through a concatenation (its members cover slices of it)."""
        return bool(self.src_offsets)

    def src_offset(self, i: int) -> int:
        return self.src_offsets[i] if self.src_offsets else 0

    def sink_offset(self, i: int) -> int:
        return self.sink_offsets[i] if self.sink_offsets else 0

    def act_offset(self, name: str) -> int:
        return self.act_offsets[self.acts.index(name)] if self.act_offsets else 0


def placed_max(parts: Sequence[np.ndarray], offsets: Sequence[int], channels: int) -> np.ndarray:
    """Per region channel, the largest of ``parts`` (each relative to its own maximum) placed at
    their channel ``offsets``; 0 where no part covers a channel."""
    out = np.zeros(channels)
    for p, o in zip(parts, offsets):
        p = np.asarray(p, dtype=np.float64)
        top = p.max(initial=0.0)
        if top > 0:
            out[o:o + len(p)] = np.maximum(out[o:o + len(p)], p / top)
    return out


@dataclass(frozen=True)
class SkippedRegion:
    """A layer whose output channels could not be equalized, with the reason."""

    layer: str
    reason: str


def is_bn_sink(m: object) -> bool:
    """A batch norm left in the network (not folded: it does not follow a layer, e.g. a
    pre-activation BN) can end a region as a sink: ``BN(x / s)`` with its running mean divided
    and its weight multiplied by ``s`` is ``BN(x)``. It stays in float, so it puts no constraint
    on the scales."""
    return isinstance(m, BN_TYPES) and bool(m.affine) and m.running_mean is not None and m.running_var is not None


def is_depthwise(m: nn.Module) -> bool:
    lt = layer_type(m)
    return lt is not None and lt.kind == "depthwise"


def find_bn_pairs(gm: fx.GraphModule) -> tuple[list[BNPair], list[SkippedRegion]]:
    """Batch norms that follow a conv / linear layer with no other consumer."""
    pairs: list[BNPair] = []
    skipped: list[SkippedRegion] = []
    for node in gm.graph.nodes:
        bn = node_module(gm, node)
        if not isinstance(bn, BN_TYPES):
            continue
        src = node.args[0] if node.args else None
        layer = node_module(gm, src) if isinstance(src, fx.Node) else None
        if not is_layer_module(layer):
            skipped.append(SkippedRegion(str(node.target), "batch norm not directly after a conv/linear layer; "
                                                           "left in place"))
            continue
        if len(src.users) != 1:
            skipped.append(SkippedRegion(str(node.target), f"the output of {src.target} is also used elsewhere; "
                                                           "folding would change the other use"))
            continue
        if not bn.track_running_stats or bn.running_mean is None:
            skipped.append(SkippedRegion(str(node.target), "batch norm without running statistics"))
            continue
        pairs.append(BNPair(layer=str(src.target), bn=str(node.target), bn_node=node.name))
    return pairs, skipped


class _Fail(Exception):
    pass


def _is_equivariant_unary(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = node_module(gm, node)
    if isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.PReLU, ChannelClamp)):
        return True
    if ops.is_zero_pad(gm, node) or ops.is_spatial_pool(gm, node) is not None or ops.is_interpolate(gm, node):
        return True
    return ops.is_channel_preserving_reshape(gm, node)


def _gate_operand(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """For ``x * g`` with ``g`` broadcast over space (a gate), return ``(x, g)``."""
    a, b = ops.tensor_inputs(node)
    sa, sb = ops.tensor_shape(a), ops.tensor_shape(b)
    if sa is None or sb is None or len(sa) != len(sb) or sa == sb:
        return None
    if len(sa) >= 3 and all(d == 1 for d in sb[2:]) and sb[:2] == sa[:2]:
        return a, b
    if len(sb) >= 3 and all(d == 1 for d in sa[2:]) and sa[:2] == sb[:2]:
        return b, a
    return None


def _grow(gm: fx.GraphModule, start: fx.Node, residuals: bool) -> Region:
    channels = ops.channels_of(start)
    if channels is None:
        raise _Fail("its output has no channel dimension")
    lt = layer_type(node_module(gm, start))
    if lt is not None and lt.out_channels(node_module(gm, start)) != channels:
        # e.g. a linear layer on [B, H, W, C]: its channels are not dimension 1, which the
        # statistics and the equivariance rules of the ops in between assume
        raise _Fail("its output channels are not along dimension 1")
    # every tensor of the region and the offset of its channels in the region's channels (all 0
    # unless a concatenation puts tensors side by side)
    offset: dict[fx.Node, int] = {start: 0}
    queue: deque[fx.Node] = deque([start])
    srcs: dict[str, int] = {}
    sinks: dict[str, int] = {}
    acts: dict[str, int] = {}
    residual = concat = False
    via: dict[fx.Node, str] = {}  # the concatenation through which a tensor joined, for the reasons

    def add_tensor(t: fx.Node, off: int, through: str | None = None) -> None:
        if t in offset:
            if offset[t] != off:
                raise _Fail(f"{ops.describe(gm, t)} would take two channel positions in it")
            return
        if ops.channels_of(t) is None:
            raise _Fail(f"{ops.describe(gm, t)} has no channel dimension")
        offset[t] = off
        if through is not None:
            via[t] = through
        queue.append(t)

    def same_channels(a: fx.Node, b: fx.Node) -> None:
        if ops.channels_of(a) != ops.channels_of(b):
            raise _Fail(f"{ops.describe(gm, b)} changes the number of channels")

    def record(members: dict[str, int], key: str, off: int) -> None:
        if members.setdefault(key, off) != off:
            raise _Fail(f"{key} is used at two channel positions of it")

    def _grow_from(n: fx.Node) -> None:
        nonlocal residual, concat
        off, link = offset[n], via.get(n)
        m = node_module(gm, n)
        # ---- the producer of tensor n
        if is_layer_module(m):
            if layer_type(m).out_channels(m) != ops.channels_of(n):
                raise _Fail(f"{n.target} produces part of it with its channels not along dimension 1")
            record(srcs, str(n.target), off)
        elif _is_equivariant_unary(gm, n):
            inp = ops.tensor_inputs(n)[0]
            same_channels(n, inp)
            record(acts, n.name, off)
            add_tensor(inp, off, link)
        elif ops.is_add(n):
            if not residuals:
                raise _Fail(f"residual add {n.name} (equalize_residuals=False)")
            residual = True
            record(acts, n.name, off)
            for inp in ops.tensor_inputs(n):
                same_channels(n, inp)
                add_tensor(inp, off, link)
        elif ops.is_mul(n):
            pair = _gate_operand(n)
            if pair is None:
                raise _Fail(f"{ops.describe(gm, n)} multiplies two full tensors")
            record(acts, n.name, off)
            same_channels(n, pair[0])
            add_tensor(pair[0], off, link)
        elif (parts := ops.channel_cat_inputs(n)) is not None:
            if len(set(parts)) != len(parts):
                raise _Fail(f"{n.name} concatenates a tensor with itself")
            concat = True
            record(acts, n.name, off)
            for p in parts:
                add_tensor(p, off, n.name)
                off += ops.channels_of(p) or 0
        elif n.op == "placeholder":
            raise _Fail("the residual stream starts at the network input")
        else:
            raise _Fail(f"{ops.describe(gm, n)} produces part of it and is not scale-equivariant")
        off = offset[n]
        # ---- the consumers of tensor n
        for u in n.users:
            if ops.is_shape_query(u):
                continue
            um = node_module(gm, u)
            if u.op == "output":
                raise _Fail("it reaches the network output")
            if is_layer_module(um):
                if u.args[0] is not n:
                    raise _Fail(f"{u.target} uses it as a non-input argument")
                if layer_type(um).in_channels(um) != ops.channels_of(n):
                    raise _Fail(f"{u.target} reads it with its channels not along dimension 1")
                record(sinks, str(u.target), off)
            elif is_bn_sink(um):
                if um.num_features != ops.channels_of(n):
                    raise _Fail(f"{u.target} reads it with its channels not along dimension 1")
                record(sinks, str(u.target), off)
            elif _is_equivariant_unary(gm, u):
                same_channels(n, u)
                add_tensor(u, off, link)
            elif ops.is_add(u):
                if not residuals:
                    raise _Fail(f"residual add {u.name} (equalize_residuals=False)")
                same_channels(n, u)
                add_tensor(u, off, link)
            elif ops.is_mul(u):
                pair = _gate_operand(u)
                if pair is None or pair[0] is not n:
                    raise _Fail(f"it feeds the gate of {ops.describe(gm, u)}" if pair else
                                f"{ops.describe(gm, u)} multiplies two full tensors")
                same_channels(n, u)
                add_tensor(u, off, link)
            elif (parts := ops.channel_cat_inputs(u)) is not None:
                if parts.count(n) != 1:
                    raise _Fail(f"{u.name} concatenates it with itself")
                add_tensor(u, off - sum(ops.channels_of(p) or 0 for p in parts[:parts.index(n)]), u.name)
            elif isinstance(um, (nn.ReLU6, nn.Hardtanh)):
                raise _Fail(f"{ops.describe(gm, u)} is a fixed clamp, not scale-equivariant "
                            "(relu6='keep'; 'clip' makes it equivariant)")
            elif ops.is_cat(u):
                raise _Fail(f"it feeds the concatenation {u.name}, not along the channels")
            else:
                raise _Fail(f"it feeds {ops.describe(gm, u)}, which is not scale-equivariant per channel")

    while queue:
        cur = queue.popleft()
        try:
            _grow_from(cur)
        except _Fail as why:
            raise _Fail(f"{why} (reached through the concatenation {via[cur]})" if cur in via else str(why)) from None
    if not sinks:
        raise _Fail("no layer consumes it")
    # a mul gate must not be scaled itself (its other operand outside the region)
    for name in acts:
        node = next(x for x in gm.graph.nodes if x.name == name)
        if ops.is_mul(node):
            pair = _gate_operand(node)
            if pair is not None and pair[1] in offset:
                raise _Fail(f"both operands of {node.name} are in the region")
    notes: tuple[str, ...] = ()
    if residual:
        notes = (f"residual region: {len(srcs)} producers and {len(sinks)} consumers share one scale vector",)
    if not concat:
        return Region(srcs=tuple(srcs), sinks=tuple(sinks), acts=tuple(acts), channels=channels, residual=residual,
                      notes=notes)
    base = min(offset.values())
    width = max(o - base + (ops.channels_of(t) or 0) for t, o in offset.items())
    notes += (f"through a concatenation: {len(srcs)} producers side by side in {width} channels",)
    return Region(srcs=tuple(srcs), sinks=tuple(sinks), acts=tuple(acts), channels=width, residual=residual,
                  notes=notes, src_offsets=tuple(o - base for o in srcs.values()),
                  sink_offsets=tuple(o - base for o in sinks.values()),
                  act_offsets=tuple(o - base for o in acts.values()))


def find_regions(gm: fx.GraphModule, residuals: bool = True) -> tuple[list[Region], list[SkippedRegion]]:
    """All equalization regions of a canonical graph, and the layers that could not be equalized.

    Every layer is the source of at most one region; regions are returned in the
    topological order of their first source.
    """
    regions: list[Region] = []
    skipped: list[SkippedRegion] = []
    assigned: set[str] = set()
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        if not is_layer_module(m) or str(node.target) in assigned:
            continue
        try:
            region = _grow(gm, node, residuals)
        except _Fail as why:
            skipped.append(SkippedRegion(str(node.target), str(why)))
            assigned.add(str(node.target))
            continue
        assigned.update(region.srcs)
        regions.append(region)
    return regions, skipped
