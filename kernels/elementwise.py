"""Elementwise int8 kernels (Triton): residual add, quantize on entry, dequantize on exit, gating multiply.

Layout follows Triton's tutorials: block sizes, the ``@triton.jit`` kernels, thin launchers, and
a reference check (``python -m kernels.elementwise``). Every kernel works on flat blocks of
``BLOCK`` elements with int64 offsets.

* :func:`int8_add`: ``acc = (a - z_a) * ia + (b - z_b) * ib`` exactly in int32 (integer
  multipliers from :func:`kernels.reference.add_multipliers`, ``|acc| < 2^24``), then the shared
  epilogue (:func:`kernels.requant.requantize_add`, which the GEMM's fused residual epilogue
  calls too). No float multiply-add is involved, so there is nothing a GPU compiler can contract.
* :func:`quantize`: float32 (NCHW with any strides, or a contiguous tensor) -> int8 NHWC,
  ``clamp(rne(x * (1.0f / float32(s))) + z, lo, hi)`` with the shared round-and-clamp.
* :func:`dequantize`: int8 -> float32, ``float32(q - z) * float32(s)``.
* :func:`int8_mul`: squeeze-excitation gate, ``acc = (x - z_x) * (g - z_g)`` exactly in int32 with
  ``g`` one value per image and channel (``[B, C]``) or elementwise, then the shared epilogue.
"""

from __future__ import annotations

import logging

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import (
    ELEMENTWISE_GPU_BLOCK,
    ELEMENTWISE_GPU_WARPS,
    ELEMENTWISE_INTERPRET_BLOCK,
    INTERPRETED,
    USE_RINT,
    cdiv,
)
from .requant import requantize, requantize_add, round_clamp

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


def _block() -> int:
    return ELEMENTWISE_INTERPRET_BLOCK if INTERPRETED else ELEMENTWISE_GPU_BLOCK


def _launch_opts() -> dict:
    return {} if INTERPRETED else {"num_warps": ELEMENTWISE_GPU_WARPS}


# =============================================================================================
# Kernels
# =============================================================================================
@triton.jit(do_not_specialize=["z_a", "z_b", "ia", "ib", "z_y", "lo", "hi"])
def _int8_add_kernel(
    a_ptr, b_ptr, y_ptr,  # int8 inputs and output, same shape, contiguous
    n_elements,
    z_a, z_b,  # input zero points
    ia, ib,  # integer multipliers, |ia|, |ib| <= 2^15
    m, z_y, lo, hi,  # epilogue: float32 multiplier, output zero point, bounds
    USE_RINT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    a = tl.load(a_ptr + offs, mask=mask, other=0)
    b = tl.load(b_ptr + offs, mask=mask, other=0)
    tl.store(y_ptr + offs, requantize_add(a, b, z_a, z_b, ia, ib, m, z_y, lo, hi, USE_RINT), mask=mask)


@triton.jit(do_not_specialize=["z", "lo", "hi"])
def _quantize_kernel(
    x_ptr, y_ptr,  # float32 input (any strides when GATHER), int8 contiguous output
    n_elements,
    C, H, W,  # output NHWC geometry (GATHER only)
    stride_b, stride_c, stride_h, stride_w,  # input strides in elements (GATHER only)
    inv_scale, z, lo, hi,  # float32 1/s, zero point, bounds
    GATHER: tl.constexpr, USE_RINT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    if GATHER:
        # output index (b, h, w, c) in NHWC order -> input element through its strides
        c = offs % C
        pix = offs // C
        w = pix % W
        h = (pix // W) % H
        b = pix // (W * H)
        src = b * stride_b + c * stride_c + h * stride_h + w * stride_w
    else:
        src = offs
    x = tl.load(x_ptr + src, mask=mask, other=0.0)
    q = round_clamp(x * inv_scale, z, lo, hi, USE_RINT)
    tl.store(y_ptr + offs, q.to(tl.int8), mask=mask)


@triton.jit(do_not_specialize=["z"])
def _dequantize_kernel(
    q_ptr, y_ptr,  # int8 input, float32 output, contiguous
    n_elements,
    scale, z,  # float32 scale, zero point
    BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32)
    tl.store(y_ptr + offs, (q - z).to(tl.float32) * scale, mask=mask)


# =============================================================================================
# Launchers
# =============================================================================================
def int8_add(
    a: Tensor,
    b: Tensor,
    z_a: int,
    z_b: int,
    ia: int,
    ib: int,
    multiplier: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
) -> Tensor:
    """Triton residual add; same contract as :func:`kernels.reference.int8_add`."""
    z_a, z_b, ia, ib, m, z_y, lo, hi = ref.check_add_args(a, b, z_a, z_b, ia, ib, multiplier, z_y, lo, hi)
    y = torch.empty_like(a)
    n = a.numel()
    if n == 0:
        return y
    block = _block()
    _int8_add_kernel[(cdiv(n, block),)](
        a, b, y, n, z_a, z_b, ia, ib, m, z_y, lo, hi, USE_RINT=USE_RINT, BLOCK=block, **_launch_opts()
    )
    return y


def quantize(
    x: Tensor,
    scale: float,
    zero_point: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
    layout: str = "nchw",
) -> Tensor:
    """Triton quantize; same contract as :func:`kernels.reference.quantize`.

    ``layout="nchw"``: 4-D NCHW input with any strides (e.g. channels_last), NHWC int8 output,
    gathered in one pass. ``"nhwc"`` / ``"flat"``: output has the input's shape.
    """
    inv, z, lo, hi = ref.check_quantize_args(x, scale, zero_point, lo, hi, layout)
    block = _block()
    if layout == "nchw":
        B, C, H, W = x.shape
        y = torch.empty((B, H, W, C), dtype=torch.int8, device=x.device)
        strides = x.stride()
        gather = True
    else:
        x = x.contiguous()
        y = torch.empty(x.shape, dtype=torch.int8, device=x.device)
        C = H = W = 1
        strides = (0, 0, 0, 0)
        gather = False
    n = y.numel()
    if n == 0:
        return y
    _quantize_kernel[(cdiv(n, block),)](
        x, y, n, C, H, W, *strides, inv, z, lo, hi,
        GATHER=gather, USE_RINT=USE_RINT, BLOCK=block, **_launch_opts(),
    )  # fmt: skip
    return y


def dequantize(q: Tensor, scale: float, zero_point: int) -> Tensor:
    """Triton dequantize; same contract as :func:`kernels.reference.dequantize`."""
    s, z = ref.check_dequantize_args(q, scale, zero_point)
    y = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    n = q.numel()
    if n == 0:
        return y
    block = _block()
    _dequantize_kernel[(cdiv(n, block),)](q, y, n, s, z, BLOCK=block, **_launch_opts())
    return y


# =============================================================================================
# Gating multiply (squeeze-excitation)
# =============================================================================================
@triton.jit(do_not_specialize=["z_x", "z_g", "z_y", "lo", "hi"])
def _int8_mul_kernel(
    x_ptr, g_ptr, y_ptr,  # int8 x NHWC [B, H, W, C] and output, contiguous; int8 gate g
    n_elements,
    HWC, C,  # PER_CHANNEL only: elements per image, channels (g is [B, C])
    z_x, z_g,  # zero points of x and g
    m, z_y, lo, hi,  # epilogue: float32 multiplier, output zero point, bounds
    PER_CHANNEL: tl.constexpr, USE_RINT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    if PER_CHANNEL:
        g_offs = (offs // HWC) * C + offs % C  # gate of image b, channel c
    else:
        g_offs = offs
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(tl.int32)
    g = tl.load(g_ptr + g_offs, mask=mask, other=0).to(tl.int32)
    acc = (x - z_x) * (g - z_g)  # |acc| <= 255^2: exact in int32 and in float32
    tl.store(y_ptr + offs, requantize(acc, m, z_y, lo, hi, USE_RINT), mask=mask)


def int8_mul(
    x: Tensor,
    g: Tensor,
    z_x: int,
    z_g: int,
    multiplier: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
) -> Tensor:
    """Triton gating multiply; same contract as :func:`kernels.reference.int8_mul`."""
    z_x, z_g, m, z_y, lo, hi, per_channel = ref.check_mul_args(x, g, z_x, z_g, multiplier, z_y, lo, hi)
    y = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    B, H, W, C = x.shape
    block = _block()
    _int8_mul_kernel[(cdiv(n, block),)](
        x, g, y, n, H * W * C, C, z_x, z_g, m, z_y, lo, hi,
        PER_CHANNEL=per_channel, USE_RINT=USE_RINT, BLOCK=block, **_launch_opts(),
    )  # fmt: skip
    return y


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare add, quantize, dequantize and the gating multiply with the reference."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (3, 7, 5, 33), generator=g, dtype=torch.int8).to(device)
    b = torch.randint(-128, 128, (3, 7, 5, 33), generator=g, dtype=torch.int8).to(device)
    ia, ib, m = ref.add_multipliers(0.031, 0.017, 0.04)
    ok = torch.equal(int8_add(a, b, 3, -9, ia, ib, m, 1), ref.int8_add(a, b, 3, -9, ia, ib, m, 1))
    x = (torch.randn(2, 3, 9, 7, generator=g) * 4).to(device)
    ok &= torch.equal(quantize(x, 0.037, -4), ref.quantize(x, 0.037, -4))
    ok &= torch.equal(dequantize(a, 0.02, 5), ref.dequantize(a, 0.02, 5))
    gate = torch.randint(-128, 128, (3, 33), generator=g, dtype=torch.int8).to(device)
    ok &= torch.equal(int8_mul(a, gate, 3, -128, 1.3e-4, -5), ref.int8_mul(a, gate, 3, -128, 1.3e-4, -5))
    ok &= torch.equal(int8_mul(a, b, -7, 2, 2.1e-4, 4, -100, 90), ref.int8_mul(a, b, -7, 2, 2.1e-4, 4, -100, 90))
    logger.info("elementwise reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return bool(ok)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
