"""Cross-layer equalization (CLE), iterated over all regions until the scales converge.

For a region with sources ``S`` and sinks ``T`` and channel ``i``: ``r_S[i]`` is the range of
output channel ``i`` over the sources, ``r_T[i]`` the range of input channel ``i`` over the
sinks, each as a fraction of its tensor's largest channel range (so that several sources
or sinks of different magnitude count alike). The scale is ``s_i = sqrt(r_S[i] / r_T[i])``
(the paper's choice for one pair); sources are divided and sinks multiplied by it, which
makes both ranges equal. Through a concatenation each source and sink contributes to, and is
scaled by, its slice of the region's channels; a channel that only batch norms read (they stay in
float) has no sink-side constraint, ``r_T[i] = 1``, so the sweeps equalize the sources' ranges
there. Regions are swept in topological order, repeatedly, until no
scale differs from 1 by more than ``cle_tol`` (chains like conv -> depthwise -> conv need
this), or ``cle_max_iter`` sweeps. :func:`equalization_sweeps` yields the sweeps one at a time
(the tutorial steps through them); :func:`equalize` runs them all and records the result.

Guards (``DFQ.md`` measured why):

- a channel whose range is below ``cle_dead_threshold`` of its tensor's maximum on either
  side is dead: left unscaled, so it is never blown up by a near-zero denominator;
- the total scale of each channel stays within ``[1/cle_scale_bound, cle_scale_bound]``;
- with ``cle_objective="weights+acts"``, the source side's range of a channel is the larger
  of its weight range and its data-free activation range (both relative to their tensor's
  maximum), so equalization never shrinks a channel's weights at the price of making its
  activation the largest of the tensor: per-tensor activation quantization stays fine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Collection, Iterator, Mapping, Sequence

import numpy as np
import torch.fx as fx

from .. import formulas as fm
from ..graph import stats as st
from ..graph.regions import Region, find_regions, is_bn_sink, placed_max
from ..graph.trace import node_module
from ..nn import ChannelClamp
from ..report import RegionRecord
from .absorb import region_absorbable
from .base import (Workspace, in_channel_absmax, in_channel_count, out_channel_absmax, out_channel_count,
                   out_channel_minmax, scale_in_channels, scale_out_channels)

__all__ = ["equalize", "equalization_sweeps", "Sweep", "apply_region_scale", "region_act_ranges", "region_ranges",
           "ranges_of"]

log = logging.getLogger(__name__)


def _sink_input_nodes(ws: Workspace, region: Region) -> list[tuple[fx.Node, int]]:
    """The tensors the sinks read (inside the region), each with its channel offset in it."""
    offsets = {name: region.sink_offset(i) for i, name in enumerate(region.sinks)}
    out: list[tuple[fx.Node, int]] = []
    for n in ws.gm.graph.nodes:
        if n.op == "call_module" and str(n.target) in offsets:
            item = (n.args[0], offsets[str(n.target)])
            if item not in out:
                out.append(item)
    return out


def region_act_ranges(ws: Workspace, region: Region, stats: dict[str, st.NodeStats],
                      offset_free: bool = False) -> np.ndarray | None:
    """Per-channel width ``hi - lo`` of the activations the sinks read, relative to each tensor's
    per-tensor range (``max hi - min lo``); the max over those tensors (placed at their channel
    offsets in the region; 0 where no sink reads). ``None`` if unknown."""
    out = np.zeros(region.channels)
    found = False
    for n, off in _sink_input_nodes(ws, region):
        s = stats.get(n.name)
        if s is None or off + s.channels > region.channels:
            return None
        lo, hi = np.minimum(s.lo, 0.0), np.maximum(s.hi, 0.0)
        total = hi.max() - lo.min()
        if total <= 0:
            return None
        width = (s.hi - s.lo) if offset_free else (hi - lo)
        out[off:off + s.channels] = np.maximum(out[off:off + s.channels], width / total)
        found = True
    return out if found else None


def ranges_of(region: Region, out_ranges: Mapping[str, np.ndarray], in_ranges: Mapping[str, np.ndarray],
              float_sinks: Collection[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """``(r_src, r_dst)`` from per-layer weight ranges (``out_channel_absmax`` of the sources,
    ``in_channel_absmax`` of the sinks): per region channel, each relative to its layer's largest,
    max over layers, placed at their offsets. Channels that only ``float_sinks`` read (batch norms
    left in the network: they stay in float and absorb any scale) have no constraint,
    ``r_dst = 1``, so the sweeps equalize the sources' ranges there (within the scale bound and the
    activations')."""
    r_src = placed_max([out_ranges[n] for n in region.srcs],
                       [region.src_offset(i) for i in range(len(region.srcs))], region.channels)
    layers = [i for i, n in enumerate(region.sinks) if n not in float_sinks]
    r_dst = placed_max([in_ranges[region.sinks[i]] for i in layers], [region.sink_offset(i) for i in layers],
                       region.channels)
    read = np.zeros((2, region.channels), dtype=bool)  # [read by a layer, read by a float sink]
    for i, n in enumerate(region.sinks):
        off = region.sink_offset(i)
        read[0 if i in layers else 1, off:off + len(in_ranges[n])] = True
    r_dst[read[1] & ~read[0]] = 1.0
    return r_src, r_dst


def region_ranges(ws: Workspace, region: Region) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ranges_of` for the region's current weights."""
    return ranges_of(region, {n: out_channel_absmax(ws.module(n)) for n in region.srcs},
                     {n: in_channel_absmax(ws.module(n)) for n in region.sinks},
                     {n for n in region.sinks if is_bn_sink(ws.module(n))})


def _refresh_region_stats(ws: Workspace, region: Region, stats: dict[str, st.NodeStats]) -> None:
    """Recompute the statistics of the nodes inside a region (they scale with it)."""
    inside = set(region.acts) | set(region.srcs)
    for n in ws.gm.graph.nodes:
        if n.name in inside or (n.op == "call_module" and str(n.target) in region.srcs):
            s = st.node_stats(ws.gm, n, stats, ws.bn_stats, ws.observed, ws.cfg.act_range_sigmas,
                              ws.cfg.input_range)
            if s is not None:
                stats[n.name] = s


def apply_region_scale(ws: Workspace, region: Region, s: np.ndarray) -> None:
    """Divide the sources' output channels by ``s`` and multiply the sinks' input channels by it.

    Keeps everything that depends on the channel scale in step: the sources' BN statistics
    and the per-channel clamp bounds inside the region.
    """
    inv_all = 1.0 / s
    for i, name in enumerate(region.srcs):
        m, off = ws.module(name), region.src_offset(i)
        inv = inv_all[off:off + out_channel_count(m)]
        scale_out_channels(m, inv)
        if name in ws.bn_stats:
            ws.bn_stats[name] = ws.bn_stats[name].scaled(inv)
        rec = ws.report.layers.get(name)
        if rec is not None:
            rec.out_scale = inv if rec.out_scale is None else rec.out_scale * inv
    for i, name in enumerate(region.sinks):
        m, off = ws.module(name), region.sink_offset(i)
        si = s[off:off + in_channel_count(m)]
        scale_in_channels(m, si)
        rec = ws.report.layers.get(name)
        if rec is not None:
            rec.in_scale = si if rec.in_scale is None else rec.in_scale * si
    acts = set(region.acts)
    for n in ws.gm.graph.nodes:
        if n.name in acts:
            m = node_module(ws.gm, n)
            if isinstance(m, ChannelClamp):
                off = region.act_offset(n.name)
                inv = inv_all[off:off + m.channels]
                m.lo.mul_(m.lo.new_tensor(inv))
                m.hi.mul_(m.hi.new_tensor(inv))


@dataclass(frozen=True)
class Sweep:
    """One sweep of cross-layer equalization over all regions (what :func:`equalization_sweeps`
    yields): ``scales[k]`` is the scale this sweep applied to region ``k``, ``total[k]`` the
    product of all sweeps so far, ``dead[k]`` the channels found dead so far, ``worst`` the
    largest ``|log s|`` of the sweep and ``converged`` whether it was below ``log(1 + cle_tol)``."""

    index: int
    scales: tuple[np.ndarray, ...]
    total: tuple[np.ndarray, ...]
    dead: tuple[np.ndarray, ...]
    worst: float
    converged: bool


def equalization_sweeps(ws: Workspace, regions: Sequence[Region]) -> Iterator[Sweep]:
    """Equalize ``regions`` one sweep at a time, as :func:`equalize` does (``ws.cfg``'s objective,
    scale bound, dead-channel threshold, tolerance and number of sweeps): each ``next`` applies one
    sweep to ``ws.gm`` and yields what it did; it stops after the sweep that converged or after
    ``cle_max_iter`` sweeps."""
    cfg = ws.cfg
    use_acts = cfg.cle_objective == "weights+acts"
    stats = st.propagate(ws.gm, ws.bn_stats, ws.observed, cfg.act_range_sigmas, cfg.input_range) if use_acts else {}
    total = [np.ones(r.channels) for r in regions]
    absorbable = [cfg.absorb_bias and region_absorbable(ws, r) for r in regions]
    dead = [np.zeros(r.channels, dtype=bool) for r in regions]
    bound = cfg.cle_scale_bound
    for index in range(1, cfg.cle_max_iter + 1):
        worst = 0.0
        scales = []
        for k, r in enumerate(regions):
            r_src, r_dst = region_ranges(ws, r)
            if use_acts:
                a = region_act_ranges(ws, r, stats, offset_free=absorbable[k])
                if a is not None:
                    r_src = np.maximum(r_src, a)
            s = fm.equalization_scales(r_src, r_dst, dead_threshold=cfg.cle_dead_threshold, bound=None)
            dead[k] |= (r_src <= cfg.cle_dead_threshold) | (r_dst <= cfg.cle_dead_threshold)
            if bound is not None:
                s = np.clip(total[k] * s, 1.0 / bound, bound) / total[k]
            apply_region_scale(ws, r, s)
            total[k] *= s
            scales.append(s)
            if use_acts:
                _refresh_region_stats(ws, r, stats)
            worst = max(worst, float(np.max(np.abs(np.log(s)))))
        log.debug("CLE sweep %d: largest scale change %.3g", index, worst)
        converged = worst <= math.log1p(cfg.cle_tol)
        yield Sweep(index, tuple(scales), tuple(t.copy() for t in total), tuple(d.copy() for d in dead), worst,
                    converged)
        if converged:
            return


def equalize(ws: Workspace) -> None:
    cfg = ws.cfg
    regions, skipped = find_regions(ws.gm, residuals=cfg.equalize_residuals)
    ws.regions = regions
    for sk in skipped:
        ws.report.regions.append(RegionRecord(srcs=(sk.layer,), sinks=(), channels=0, residual=False,
                                              status="not equalized", notes=[sk.reason]))
    records = []
    for r in regions:
        rec = RegionRecord(srcs=r.srcs, sinks=r.sinks, channels=r.channels, residual=r.residual, status="equalized",
                           notes=list(r.notes))
        ws.report.regions.append(rec)
        records.append(rec)
    if not regions:
        ws.report.step("equalization: no region found")
        return
    last = None
    for last in equalization_sweeps(ws, regions):
        pass
    sweeps = 0 if last is None else last.index
    total = [np.ones(r.channels) for r in regions] if last is None else last.total
    dead = [np.zeros(r.channels, dtype=bool) for r in regions] if last is None else last.dead
    bound = cfg.cle_scale_bound
    ws.report.cle_iterations = sweeps
    for rec, t, d in zip(records, total, dead):
        rec.scale_min, rec.scale_max = float(t.min()), float(t.max())
        if bound is not None:
            rec.clamped = int(np.sum(np.isclose(t, bound) | np.isclose(t, 1.0 / bound)))
        rec.dead = int(d.sum())
    for name, lrec in ws.report.layers.items():
        lrec.range_equalized = out_channel_minmax(ws.module(name))
    ws.report.step(f"equalized {len(regions)} regions ({sum(r.residual for r in regions)} residual) in {sweeps} "
                   f"sweeps; {len(skipped)} layers' outputs could not be equalized")
