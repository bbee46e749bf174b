"""Batch-norm folding: ``W' = W g / sqrt(v + eps)``, ``b' = (b - m) g / sqrt(v + eps) + beta``.

The BN's ``beta`` and ``|gamma|`` are kept per layer as the Gaussian model ``N(beta, gamma^2)``
of its pre-activation output; equalization and absorption keep them up to date, and the
data-free activation ranges and analytic bias correction read them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn

from ..graph.regions import find_bn_pairs
from ..graph.stats import ChannelStats
from .base import Workspace, add_bias, out_channel_minmax

__all__ = ["fold_batch_norms"]

log = logging.getLogger(__name__)


@torch.no_grad()
def fold_batch_norms(ws: Workspace) -> None:
    gm = ws.gm
    pairs, skipped = find_bn_pairs(gm)
    for s in skipped:
        ws.report.skip(s.layer, s.reason)
    for p in pairs:
        layer = ws.module(p.layer)
        bn = ws.module(p.bn)
        if isinstance(layer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
            ws.report.skip(p.bn, "batch norm after a linear layer is not a BatchNorm1d")
            continue
        dt = layer.weight.dtype
        var = bn.running_var.detach().to(torch.float64)
        mean = bn.running_mean.detach().to(torch.float64)
        gamma = bn.weight.detach().to(torch.float64) if bn.affine else torch.ones_like(var)
        beta = bn.bias.detach().to(torch.float64) if bn.affine else torch.zeros_like(var)
        k = gamma / torch.sqrt(var + bn.eps)
        w = layer.weight.detach().to(torch.float64)
        layer.weight.copy_((w * k.view([-1] + [1] * (w.dim() - 1))).to(dt))
        b = layer.bias.detach().to(torch.float64) if layer.bias is not None else torch.zeros_like(mean)
        new_b = (b - mean) * k + beta
        if layer.bias is None:
            add_bias(layer, np.zeros(w.shape[0]))
        layer.bias.copy_(new_b.to(dt))
        ws.bn_stats[p.layer] = ChannelStats(beta.cpu().numpy(), gamma.abs().cpu().numpy())
        # remove the BN node
        node = ws.node(p.bn_node)
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
        rec = ws.report.layers.get(p.layer)
        if rec is not None:
            rec.bn = p.bn
            rec.range_folded = out_channel_minmax(layer)
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    ws.report.step(f"folded {len(pairs)} batch norms" + (f", {len(skipped)} left in place" if skipped else ""))
