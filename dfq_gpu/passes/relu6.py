"""ReLU6 handling, three ways (``DFQConfig.relu6``).

- ``"clip"``: every ReLU6 / Hardtanh becomes a :class:`~dfq_gpu.nn.ChannelClamp`
  with per-channel bounds. Scaling channel ``i`` by ``1/s_i`` then turns its bounds into
  ``[0, 6/s_i]``: the same function, now positively scale-equivariant, so equalization
  can pass through it. In the integer network these bounds are the per-channel clamp of
  the requantization epilogue, so they cost nothing.
- ``"replace"``: ReLU6 becomes ReLU, as in the paper. It changes the network (badly for
  EfficientNet-Lite).
- ``"keep"``: ReLU6 stays and ends an equalization region.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..graph import ops
from ..graph.trace import node_module
from ..nn import ChannelClamp
from .base import Workspace

__all__ = ["handle_relu6"]


def handle_relu6(ws: Workspace) -> None:
    mode = ws.cfg.relu6
    gm = ws.gm
    changed = 0
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        if not isinstance(m, (nn.ReLU6, nn.Hardtanh)):
            continue
        lo, hi = float(m.min_val), float(m.max_val)
        if mode == "replace":
            if (lo, hi) == (0.0, 6.0):
                gm.add_submodule(str(node.target), nn.ReLU())
                changed += 1
        elif mode == "clip":
            c = ops.channels_of(node)
            if c is None:
                ws.report.skip(str(node.target), "clamp on a tensor without a channel dimension left as is")
                continue
            ref = next(iter(gm.parameters()), None)
            dtype = ref.dtype if ref is not None else torch.float32
            gm.add_submodule(str(node.target), ChannelClamp.constant(lo, hi, c, dtype=dtype))
            changed += 1
    gm.recompile()
    if mode == "replace":
        ws.report.step(f"replaced {changed} ReLU6 by ReLU (changes the network's function)")
    elif mode == "clip":
        ws.report.step(f"turned {changed} ReLU6/Hardtanh into per-channel clamps (exact)")
    else:
        ws.report.step("kept ReLU6 as is (it ends equalization regions)")
