"""Bias absorption: move ``c = clip(beta - n gamma, 0, hi)`` from a layer into the next one.

For ``layer 1 -> act -> layer 2`` with ``act`` a ReLU or a clamp to ``[0, hi]`` (ReLU6 in
"clip" mode) and layer 1's pre-activation output ``N(beta, gamma^2)`` per channel:
``b1 -= c``, the clamp becomes ``[0, hi - c]`` and ``b2 += W2 c`` (summed over the taps of a
convolution). Wherever the pre-activation is at least ``c`` (probability ``Phi(n)``, 99.865%
for ``n = 3``) the network computes exactly the same; a channel that always saturates
(``beta - n gamma >= hi``) is a constant and is absorbed whole. The activation range
shrinks by ``c``, which is what per-tensor activation quantization needs after
equalization has scaled channels up.

With ``absorb_exact`` (the default) the move is exact: the activation becomes the clamp
``[-c, hi - c]``, which is ``act(z) - c`` for every ``z``. The part of a channel below its
data-free activation range (``beta - act_range_sigmas gamma``) is then cut by the activation
quantizer instead of by the activation, so the float network stays the same and the
approximation lives only where quantization is. ``absorb_exact=False`` is the paper's
version, ``act(z - c)``, which also cuts ``z < c`` in float.

Into a convolution with zero padding the move is exact in the interior only: at the
border the padded zeros stand for an activation of ``-c``. The report says where this is
the case. Regions through residual adds or gates are left alone (the shift would have to
cross the add).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .. import formulas as fm
from ..graph import ops
from ..graph.regions import is_bn_sink
from ..graph.trace import node_module
from ..nn import ChannelClamp
from .base import Workspace, add_bias, layer_response_to_constant

__all__ = ["absorb_biases"]


def _absorb_path(ws: Workspace, region) -> tuple[object, str, list[str]] | str:
    """The single activation module of a simple region and notes, or the reason it does not apply."""
    if region.residual or len(region.srcs) != 1:
        return "residual region: the shift cannot cross the add"
    if region.concat:
        return "concatenation between the layers"
    if any(is_bn_sink(ws.module(n)) for n in region.sinks):
        return "a batch norm reads the activations"
    gm = ws.gm
    act = None
    act_name = ""
    padded = False
    for n in gm.graph.nodes:
        if n.name not in region.acts:
            continue
        m = node_module(gm, n)
        if isinstance(m, (nn.ReLU, ChannelClamp)):
            if act is not None:
                return "more than one activation between the layers"
            act, act_name = m, str(n.target)
        elif ops.is_zero_pad(gm, n):
            padded = True
        else:
            return f"{ops.describe(gm, n)} between the layers"
    if act is None:
        return "no ReLU / clamp between the layers"
    if isinstance(act, ChannelClamp) and torch.any(act.lo != 0):
        return "clamp with a nonzero lower bound (already absorbed?)"
    notes = []
    for name in region.sinks:
        sink = ws.module(name)
        if padded or (isinstance(sink, nn.Conv2d) and any(p > 0 for p in _padding(sink))):
            notes.append(f"{name} is zero-padded: exact in the interior, approximate at the border")
    return act, act_name, notes


def region_absorbable(ws: Workspace, region) -> bool:
    """Whether bias absorption will move a constant out of this region's activations."""
    path = _absorb_path(ws, region)
    return not isinstance(path, str) and (ws.cfg.absorb_padded or not path[2])


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    p = conv.padding
    return (0,) if isinstance(p, str) else tuple(p)


@torch.no_grad()
def absorb_biases(ws: Workspace) -> None:
    n_sigmas = ws.cfg.absorb_sigmas
    exact = ws.cfg.absorb_exact
    done = 0
    by_src = {rec.srcs: rec for rec in ws.report.regions if rec.status == "equalized"}
    for region in ws.regions:
        rec = by_src.get(region.srcs)
        path = _absorb_path(ws, region)
        if isinstance(path, str):
            if rec is not None:
                rec.absorbed = f"not absorbed: {path}"
            continue
        act, act_name, notes = path
        if notes and not ws.cfg.absorb_padded:
            if rec is not None:
                rec.absorbed = "not absorbed: " + "; ".join(notes) + " (absorb_padded=False)"
            continue
        src = region.srcs[0]
        if src not in ws.bn_stats:
            if rec is not None:
                rec.absorbed = "not absorbed: no batch-norm statistics for the source"
            continue
        bs = ws.bn_stats[src]
        hi = act.hi.detach().double().cpu().numpy() if isinstance(act, ChannelClamp) else np.inf
        c = fm.absorption_shift(bs.mean, bs.std, n_sigmas, hi)
        if not np.any(c > 0):
            if rec is not None:
                rec.absorbed = "nothing to absorb (every channel reaches below beta - n gamma <= 0)"
            continue
        layer = ws.module(src)
        add_bias(layer, -c)
        ws.bn_stats[src].mean = bs.mean - c
        if exact:
            if not isinstance(act, ChannelClamp):  # ReLU -> clamp(x, -c, inf)
                inf = torch.full((len(c),), float("inf"), dtype=layer.weight.dtype, device=layer.weight.device)
                clamp = ChannelClamp(torch.zeros_like(inf), inf)
                ws.gm.add_submodule(act_name, clamp)
                act = clamp
            act.lo.sub_(act.lo.new_tensor(c))
            act.hi.sub_(act.hi.new_tensor(c))
        elif isinstance(act, ChannelClamp):
            act.hi.sub_(act.hi.new_tensor(c))
        lrec = ws.report.layers.get(src)
        if lrec is not None:
            lrec.absorbed_out = c
        for name in region.sinks:
            sink = ws.module(name)
            delta = layer_response_to_constant(sink, c)
            add_bias(sink, delta)
            srec = ws.report.layers.get(name)
            if srec is not None:
                srec.absorbed_in = delta if srec.absorbed_in is None else srec.absorbed_in + delta
        if rec is not None:
            rec.absorbed = (f"absorbed {int(np.sum(c > 0))}/{len(c)} channels, max shift {float(c.max()):.4g}"
                            + ("; " + "; ".join(notes) if notes else ""))
        done += 1
    ws.report.step(f"absorbed biases in {done} regions (c = max(0, beta - {n_sigmas:g} gamma))")
