"""Float32 scales for the Q/DQ nodes around a fused layer such that a runtime's own multiplier
(ONNX Runtime's ``QLinearConv``: ``float32(float32(s_x * s_w) / s_y)``) is exactly the integer
contract's (:func:`exact_multiplier_scales`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["FusedScales", "exact_multiplier_scales"]


def _ulps(v: np.float32, k: np.ndarray) -> np.ndarray:
    """The float32 values ``k`` units in the last place from ``v`` (``k`` int32)."""
    return (np.array(v, dtype=np.float32).view(np.int32) + k.astype(np.int32)).view(np.float32)


def _by_distance(n: int) -> np.ndarray:
    """``0, 1, -1, 2, -2, ..., n, -n``."""
    return np.concatenate([[0], np.stack([np.arange(1, n + 1), -np.arange(1, n + 1)], 1).reshape(-1)])


@dataclass(frozen=True)
class FusedScales:
    """Scales of the Q/DQ nodes around one fused layer (see :func:`exact_multiplier_scales`):
    its input's ``DequantizeLinear`` (``x``), its weight's (``w``, ``[1|N]``), the
    ``QuantizeLinear`` right after it (``y``), and per output channel whether the runtime's
    multiplier is exactly the contract's (``exact``)."""

    x: np.float32
    w: np.ndarray
    y: np.float32
    exact: np.ndarray


def exact_multiplier_scales(x_scale: float, w_scale: np.ndarray, y_scale: float, multiplier: np.ndarray,
                            x_search: int = 8, y_search: int = 4, w_search: int = 256) -> FusedScales:
    """Float32 scales for the Q/DQ nodes around one fused layer such that a runtime computing
    the layer's multiplier as ``float32(float32(x' * w') / y')`` (ONNX Runtime's ``QLinearConv``)
    gets exactly the integer contract's ``multiplier`` (``float32(s_x s_w / s_y)`` rounded once,
    :func:`dfq_gpu.quant.requant.requant_multiplier`) for every output channel.

    Not every float32 multiplier is reachable from given ``x'`` and ``y'`` (a step of ``w'``
    moves the doubly rounded result by up to four units in the last place), so ``y'`` and ``x'``
    are searched within ``y_search`` and ``x_search`` units in the last place of the
    quantizers' scales and each ``w'`` within ``w_search`` of the weight scale, nearest first
    (the quantizers' own scales when they work): the scales move by about 1e-7 relative, 3e-5
    at most. Channels without a solution keep the weight scale (``exact`` is ``False``).
    """
    m = np.asarray(multiplier, dtype=np.float32).reshape(-1)
    w = np.asarray(w_scale, dtype=np.float32).reshape(-1)
    n = max(m.size, w.size)
    m, w = np.broadcast_to(m, (n,)), np.broadcast_to(w, (n,))
    cand = (w.view(np.int32)[:, None] + _by_distance(w_search)[None, :].astype(np.int32)).view(np.float32)
    best: Optional[FusedScales] = None
    for y in _ulps(np.float32(y_scale), _by_distance(y_search)):
        for x in _ulps(np.float32(x_scale), _by_distance(x_search)):
            with np.errstate(over="ignore", under="ignore"):
                ok = (cand * x).astype(np.float32) / y == m[:, None]
            found = ok.any(1)
            if best is None or found.sum() > best.exact.sum():
                chosen = np.where(found, cand[np.arange(n), ok.argmax(1)], w).astype(np.float32)
                best = FusedScales(np.float32(x), chosen, np.float32(y), found)
                if found.all():
                    return best
    assert best is not None
    return best
