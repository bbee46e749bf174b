"""The one requantization epilogue shared by every Triton kernel of the package.

Contract (mirrored in :func:`kernels.reference.requantize`)::

    y = clamp(rne(float32(acc) * m) + z_y, lo, hi)

* ``acc``: int32 accumulator tile; ``m``: float32 multiplier (scalar or broadcastable per output
  channel); ``z_y``: output zero point, added *after* rounding; ``lo``/``hi``: int32 bounds
  (scalar or per channel) within [-128, 127]. ReLU / ReLU6 / per-channel clip bounds are fused
  as these bounds.
* ``float32(acc) * m`` is exactly one float32 multiply (bit-identical to PyTorch's
  ``acc.float() * m``). The product is clamped to ``[lo - z_y - 1, hi - z_y + 1]`` *before*
  rounding: every value beyond that interval rounds to something the final integer clamp maps to
  the same bound, and the clamp keeps huge products (multipliers of 1e4, accumulators near
  2^31) inside the range where the float -> int conversion is defined.
* ``rne`` is round half to even (``torch.round``). On a GPU it is ``libdevice.rint``; under
  Triton's interpreter (where libdevice is unavailable) it is ``(x + 1.5 * 2^23) - 1.5 * 2^23``,
  exact for ``|x| < 2^22``, which the clamp guarantees. The trick is not used on a GPU because
  an ``x * m + c`` chain there may be contracted into a fused multiply-add.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def round_clamp(y, z_y, lo, hi, USE_RINT: tl.constexpr):
    """``clamp(rne(y) + z_y, lo, hi)`` as int32 for a float32 tile ``y``.

    ``lo``/``hi`` are int32 (scalars or tiles broadcastable against ``y``); ``z_y`` an int32
    scalar. Infinite ``y`` saturate to the bounds; NaN is not supported.
    """
    lo_f = (lo - z_y - 1).to(tl.float32)
    hi_f = (hi - z_y + 1).to(tl.float32)
    y = tl.minimum(tl.maximum(y, lo_f), hi_f)
    if USE_RINT:
        r = libdevice.rint(y)
    else:
        r = (y + 12582912.0) - 12582912.0  # 1.5 * 2^23: float32 round half to even for |y| < 2^22
    q = r.to(tl.int32) + z_y
    q = tl.minimum(tl.maximum(q, lo), hi)
    return q


@triton.jit
def requantize(acc, m, z_y, lo, hi, USE_RINT: tl.constexpr):
    """int32 accumulator tile -> int8 tile: ``clamp(rne(float32(acc) * m) + z_y, lo, hi)``."""
    y = acc.to(tl.float32) * m
    q = round_clamp(y, z_y, lo, hi, USE_RINT)
    return q.to(tl.int8)


@triton.jit
def requantize_add(a, b, z_a, z_b, ia, ib, m, z_y, lo, hi, USE_RINT: tl.constexpr):
    """The residual add's contract on two int8 (or int32) tiles ``a``, ``b`` of one shape:
    ``acc = (a - z_a) * ia + (b - z_b) * ib`` exactly in int32 (``|ia|, |ib| <= 2^15``, so
    ``|acc| < 2^24`` and ``float32(acc)`` is exact), then :func:`requantize` -> int8.

    The one definition of the rule, used by the elementwise add kernel and by the GEMM's fused
    residual epilogue (where ``a`` is the layer's own requantized int8 tile), so both agree with
    :func:`kernels.reference.int8_add` / :func:`kernels.reference.residual_add` bit for bit.
    """
    acc = (a.to(tl.int32) - z_a) * ia + (b.to(tl.int32) - z_b) * ib
    return requantize(acc, m, z_y, lo, hi, USE_RINT)


@triton.jit
def load_channel_params(offs_c, mask_c, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi):
    """The multiplier and bounds of channels ``offs_c``: per tensor (stride 0) or per channel
    (stride 1). Masked-off channels get harmless values (their outputs are never stored); no
    negative constant is used as a load's ``other``."""
    mult = tl.load(mult_ptr + offs_c * stride_mult, mask=mask_c, other=0.0)
    lo = tl.load(lo_ptr + offs_c * stride_lo, mask=mask_c, other=0)
    hi = tl.load(hi_ptr + offs_c * stride_hi, mask=mask_c, other=127)
    return mult, lo, hi


@triton.jit
def requantize_channels(acc, offs_c, mask_c, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y,
                        USE_RINT: tl.constexpr, ROWS: tl.constexpr):  # fmt: skip
    """:func:`requantize` with the parameters of channels ``offs_c`` loaded from memory
    (:func:`load_channel_params`); ``acc`` is ``[rows, channels]`` int32 when ``ROWS``, else
    ``[channels]``."""
    mult, lo, hi = load_channel_params(offs_c, mask_c, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi)
    if ROWS:
        return requantize(acc, mult[None, :], z_y, lo[None, :], hi[None, :], USE_RINT)
    return requantize(acc, mult, z_y, lo, hi, USE_RINT)


@triton.jit
def add_gemm_corrections(acc, row_sum, offs_n, mask_n, bias_ptr, wzp_ptr, stride_wzp,
                         HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr):  # fmt: skip
    """The exact int32 terms of a GEMM-shaped accumulator ``[M, N]``: ``+ bias`` (with
    ``-z_x * sum_k w`` already folded in) and ``- sum_k x * z_w`` (``row_sum`` is ``sum_k x``)."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0)[None, :]
    if HAS_WZP:
        zw = tl.load(wzp_ptr + offs_n * stride_wzp, mask=mask_n, other=0)
        acc -= row_sum[:, None] * zw[None, :]
    return acc
