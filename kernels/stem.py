"""The network's first convolution on its float input: quantize-and-im2col, then the GEMM (Triton).

Layout follows Triton's matmul tutorial: the configuration, the ``@triton.jit`` kernel, a thin
launcher, a launch plan, and a reference check (``python -m kernels.stem``).

A stem convolution reads few channels (3 for RGB), so the implicit-GEMM convolution can only gather
its input a few bytes at a time (``kernels.conv``'s flat-K loop), and the input quantization before
it is a pass of its own over the image. Here one kernel does both: it reads the float NCHW image
(any strides), quantizes each value with the input quantizer's contract
(:func:`kernels.reference.quantize`: one float32 multiply by ``float32(1/scale)``, round half to
even, zero point, clamp) and writes the int8 im2col matrix ``[B*OH*OW, KP]``
(:func:`kernels.reference.quantize_im2col`): taps outside the image hold the zero point (real
zero), the columns from ``KH*KW*C`` to ``KP`` (a multiple of 32, e.g. 147 -> 160 for a 7x7 RGB stem)
hold 0. The convolution is then :mod:`kernels.gemm` on 32-byte aligned rows against the weight
padded with zero columns, its epilogue and folded bias unchanged (the zero columns add nothing to
``sum x w``, ``sum x`` or ``sum w``): the convolution of the quantized input bit for bit, with no
padding correction. The matrix costs ``KP`` bytes per output pixel (write then read, ~0.5 GB for
ResNet-50's stem at batch 256 against 0.15 GB of float input); the GEMM reads it in whole aligned
rows at tensor-core rates instead of byte-wise gathers.

``dfq_gpu.quant.plan.stem_fusions`` decides which convolution runs this way
(``dfq_gpu.int8.layers.Int8StemConv2d``).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import INTERPRETED, USE_RINT, cdiv
from .gemm import GemmPlan
from .requant import round_clamp

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

# =============================================================================================
# Configuration
# =============================================================================================
#: Output tile of one program: ``BLOCK_M`` rows of the matrix by ``BLOCK_K`` columns (``KP`` is
#: a multiple of 32, so the columns need no mask). One fixed tile: the kernel moves bytes.
IM2COL_GPU_META = dict(BLOCK_M=64, BLOCK_K=32)
IM2COL_GPU_WARPS = 4
IM2COL_INTERPRET_META = dict(BLOCK_M=512, BLOCK_K=32)  # few programs for the interpreter


# =============================================================================================
# Kernel
# =============================================================================================
@triton.jit(do_not_specialize=["z", "lo", "hi"])
def _quantize_im2col_kernel(
    x_ptr, a_ptr,  # float32 NCHW input (any strides), int8 [M, KP] output (row-major)
    M, H, W, OH, OW,  # M = B * OH * OW
    stride_b, stride_c, stride_h, stride_w,  # input strides in elements
    conv_sh, conv_sw, pad_top, pad_left,  # the convolution's stride and leading padding
    inv_scale, z, lo, hi,  # float32 1/s, zero point, bounds (the input quantizer)
    C: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, KP: tl.constexpr,
    USE_RINT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output pixels (b, oh, ow)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)  # (kh, kw, c), then the zero columns
    row_ok = rows < M
    ow = rows % OW
    oh = (rows // OW) % OH
    b = rows // (OW * OH)
    c = cols % C  # C, KW constexpr: these divisions are shifts or multiplies
    tap = cols // C
    kw = tap % KW
    kh = tap // KW
    ih0 = oh * conv_sh - pad_top  # the window's top-left input pixel, per row
    iw0 = ow * conv_sw - pad_left
    ih = ih0[:, None] + kh[None, :]
    iw = iw0[:, None] + kw[None, :]
    col_ok = cols < KH * KW * C
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W) & col_ok[None, :] & row_ok[:, None]
    # the element offset splits into a row part and a column part, each computed once (the 2-D
    # tile costs one add); the offset of a tap outside the image is masked, never loaded
    row_base = b.to(tl.int64) * stride_b + ih0.to(tl.int64) * stride_h + iw0.to(tl.int64) * stride_w
    col_base = c.to(tl.int64) * stride_c + kh.to(tl.int64) * stride_h + kw.to(tl.int64) * stride_w
    x = tl.load(x_ptr + (row_base[:, None] + col_base[None, :]), mask=inside, other=0.0)
    q = round_clamp(x * inv_scale, z, lo, hi, USE_RINT)
    # a tap outside the image is real zero (the zero point); the row's padding columns are 0
    q = tl.where(inside, q, tl.where(col_ok[None, :], z, 0))
    dst = rows.to(tl.int64)[:, None] * KP + cols[None, :]
    tl.store(a_ptr + dst, q.to(tl.int8), mask=row_ok[:, None])


# =============================================================================================
# Launcher
# =============================================================================================
def _launch_im2col(x: Tensor, inv: float, z: int, lo: int, hi: int, kernel: Tuple[int, int],
                   stride: Tuple[int, int], pad: Tuple[int, int, int, int], out_hw: Tuple[int, int]) -> Tensor:
    B, C, H, W = x.shape
    KH, KW = kernel
    OH, OW = out_hw
    KP = ref.im2col_width(KH * KW * C)
    M = B * OH * OW
    a = torch.empty((M, KP), dtype=torch.int8, device=x.device)
    if M == 0:
        return a
    meta = IM2COL_INTERPRET_META if INTERPRETED else IM2COL_GPU_META
    grid = (cdiv(M, meta["BLOCK_M"]), KP // meta["BLOCK_K"])
    _quantize_im2col_kernel[grid](
        x, a, M, H, W, OH, OW, *x.stride(), stride[0], stride[1], pad[0], pad[2], inv, z, lo, hi,
        C=C, KH=KH, KW=KW, KP=KP, USE_RINT=USE_RINT, **meta, **({} if INTERPRETED else {"num_warps": IM2COL_GPU_WARPS}),
    )  # fmt: skip
    return a


def quantize_im2col(
    x: Tensor,
    scale: float,
    zero_point: int,
    lo: int,
    hi: int,
    kernel: Tuple[int, int],
    stride=1,
    padding=0,
) -> Tensor:
    """Triton quantize-and-im2col; same contract as :func:`kernels.reference.quantize_im2col`."""
    inv, z, lo, hi, kernel, stride, pad, out_hw = ref.check_quantize_im2col_args(
        x, scale, zero_point, lo, hi, kernel, stride, padding)
    return _launch_im2col(x, inv, z, lo, hi, kernel, stride, pad, out_hw)


# =============================================================================================
# Launch plan
# =============================================================================================
class StemPlan:
    """The quantized convolution of a float input with its arguments bound once: calling it on
    float32 NCHW ``x`` (any strides) returns the int8 (or int32) NHWC output of
    ``int8_conv2d(quantize(x, scale, z_x, x_lo, x_hi), w, ...)`` bit for bit, computed as
    :func:`quantize_im2col` then a :class:`~kernels.gemm.GemmPlan` on the weight padded with zero
    columns.

    The weight-side arguments must already be validated and normalized (as
    :func:`kernels.reference.check_conv_args` returns them, ``bias`` folded for the unpadded
    weight, which the padded GEMM uses unchanged).
    """

    def __init__(
        self,
        w: Tensor,
        bias: Optional[Tensor],
        w_zp: Optional[Tensor],
        multiplier: Tensor,
        z_y: int,
        lo: Tensor,
        hi: Tensor,
        stride: Tuple[int, int],
        pad: Tuple[int, int, int, int],
        out_int32: bool,
        scale: float,
        z_x: int,
        x_lo: int,
        x_hi: int,
    ) -> None:
        N, KH, KW, C = w.shape
        self.N, self.KH, self.KW, self.C = N, KH, KW, C
        self.stride, self.pad = tuple(stride), tuple(pad)
        self.device = w.device
        k = KH * KW * C
        wp = torch.zeros((N, ref.im2col_width(k)), dtype=torch.int8, device=w.device)
        wp[:, :k] = w.reshape(N, k)
        self.gemm = GemmPlan(wp, bias, w_zp, multiplier, z_y, lo, hi, out_int32)
        self.scale, self.z_x, self.x_lo, self.x_hi = float(scale), int(z_x), int(x_lo), int(x_hi)
        self.inv = ref.check_quantizer(self.scale, self.z_x, self.x_lo, self.x_hi)[0]

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.dim() != 4:
            what = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a float32 NCHW tensor (any strides), got a {what}")
        if x.shape[1] != self.C:
            raise ValueError(f"x has C={x.shape[1]} channels (NCHW {tuple(x.shape)}) but the weight expects {self.C}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device} but the weight is on {self.device}")
        B, _, H, W = x.shape
        OH, OW = ref.conv_output_size(H, W, self.KH, self.KW, self.stride, self.pad)  # type: ignore[arg-type]
        a = _launch_im2col(x, self.inv, self.z_x, self.x_lo, self.x_hi, (self.KH, self.KW), self.stride,  # type: ignore[arg-type]
                           self.pad, (OH, OW))  # type: ignore[arg-type]
        return self.gemm(a).view(B, OH, OW, self.N)


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare with the reference: a ResNet stem (7x7, stride 2, padding 3) and an EfficientNet
    stem (3x3, stride 2, TF "same" padding), per-channel parameters, a channels_last input."""
    g = torch.Generator().manual_seed(0)
    ok = True
    for (kh, kw), stride, pad in (((7, 7), (2, 2), (3, 3, 3, 3)), ((3, 3), (2, 2), (0, 1, 0, 1))):
        x = (torch.randn(2, 3, 17, 15, generator=g) * 2).to(device).to(memory_format=torch.channels_last)
        w = torch.randint(-128, 128, (24, kh, kw, 3), generator=g, dtype=torch.int8).to(device)
        wzp = torch.randint(-3, 4, (24,), generator=g, dtype=torch.int32).to(device)
        bias = torch.randint(-5000, 5000, (24,), generator=g, dtype=torch.int32).to(device)
        m = (torch.rand(24, generator=g) * 1e-3 + 1e-4).to(device)
        lo, hi = torch.full((24,), -128, dtype=torch.int32).to(device), torch.full((24,), 100, dtype=torch.int32).to(device)
        q = ref.quantize(x, 0.021, -7, -128, 127)
        expect = ref.int8_conv2d(q, w, bias, m, -7, wzp, 5, lo, hi, stride, pad)
        plan = StemPlan(w, ref.fold_bias(w, bias, -7, wzp), wzp, m, 5, lo, hi, stride, pad, False, 0.021, -7, -128, 127)
        ok &= torch.equal(plan(x), expect)
        ok &= torch.equal(quantize_im2col(x, 0.021, -7, -128, 127, (kh, kw), stride, pad),
                          ref.quantize_im2col(x, 0.021, -7, -128, 127, (kh, kw), stride, pad))
    logger.info("stem reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return bool(ok)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
