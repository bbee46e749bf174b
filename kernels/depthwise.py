"""int8 depthwise 2-D convolution, NHWC, with the fused requantization epilogue (Triton).

Layout follows Triton's matmul tutorial: tile configurations, the ``@triton.jit`` kernel, a thin
launcher, and a reference check (``python -m kernels.depthwise``).

Each program owns a ``BLOCK_P`` output pixels x ``BLOCK_C`` channels tile; channels are the
contiguous NHWC dimension, so every tap is one vectorized load per pixel row. The weight is
``[KH, KW, C]`` (one contiguous channel vector per tap). There are no tensor cores here: the
kernel is a memory-bound stencil on CUDA cores (``KH``/``KW`` constexpr; window columns unrolled).

``acc[p, c] = sum_taps (x - z_x)(w - z_w[c]) + bias[c]`` is accumulated in one of two exact ways,
chosen by the launcher (constexpr ``FLOAT_ACC``). The launcher shifts the weights once per weight
tensor (``w' = w - z_w``, :func:`shifted_weights`, cached in :data:`kernels._config.DERIVED`):

* float32 (``FLOAT_ACC``, float32 ``w'``): each loaded input becomes ``float32(x - z_x)`` exactly
  (:func:`exact_float`; padded taps load ``z_x`` and become exactly 0) and is added times ``w'``
  with float32 fused multiply-adds. The sum is exact while every partial sum stays within 2^24
  in magnitude (``KH * KW * max|x - z_x| * max|w'| <= 2^24``, :func:`float_accumulation_exact`,
  proof in kernels/README.md); it is then converted to int32 and the bias is added in int32.
  The rows kernel takes this path wherever it is exact; the tiles kernel only when named in
  :data:`FLOAT_ACC_KERNELS` (it converts each input for a single multiply-add, which costs more
  instructions than int32).
* int32: ``sum_taps x * w' + (bias - z_x * sum_taps w')`` with int32 multiply-adds (the
  per-channel correction is built in the kernel from the same weight vectors). Padded taps load
  ``z_x``, so they add ``z_x * w'`` to the first sum and cancel exactly against the correction.
  Exact modulo 2^32 for every window size. The tiles kernel reads int32 ``w'``; the rows kernel,
  which takes this path only beyond the float32 bound, reads the int8 ``w`` and shifts it itself.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import (
    DERIVED,
    DEPTHWISE_GPU_CONFIGS,
    DEPTHWISE_ROWS_GPU_CONFIGS,
    DEPTHWISE_ROWS_MAX_KH,
    DEPTHWISE_TMA_GPU_CONFIGS,
    DEPTHWISE_TMA_STRIDED_SPILLING,
    USE_RINT,
    cdiv,
    depthwise_variant,
    epilogue_args,
    launch,
    next_pow2_bucket,
    prune_by_size,
)
from .gemm import TMA_STRIDES, input_descriptors, phase_box, tma_patch_width, tma_ready
from .requant import load_channel_params, requantize, requantize_channels

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


#: Float32 sums of integers are exact while every partial sum stays within this magnitude.
FLOAT32_EXACT_LIMIT: int = 1 << 24


def float_accumulation_exact(taps: int, z_x: int, symmetric: bool) -> bool:
    """Whether float32 accumulation of a depthwise window is exact: ``taps`` (``KH * KW``)
    products of ``|x - z_x| <= max(128 + z_x, 127 - z_x)`` and ``|w - z_w| <= 255`` (``<= 128`` for
    symmetric weights, ``w_zp=None``), so every partial sum is an integer of magnitude at most
    ``taps * max|x - z_x| * max|w - z_w|``; at most 2^24 is exact (kernels/README.md). Weight zero
    points are assumed to lie in [-128, 127], as the contract requires."""
    x_bound = max(128 + int(z_x), 127 - int(z_x))
    w_bound = 128 if symmetric else 255
    return int(taps) * x_bound * w_bound <= FLOAT32_EXACT_LIMIT


#: The depthwise kernels that accumulate in float32 where that is exact. The rows kernel converts
#: each loaded input once for ``KH`` multiply-adds and keeps the float32 weights in registers
#: across its row loop; the tiles kernel would convert each loaded input for a single
#: multiply-add, which costs more instructions than int32 (kernels/README.md, "Depthwise
#: accumulation"), so it keeps int32 unless named here.
FLOAT_ACC_KERNELS: frozenset = frozenset({"rows"})


def shifted_weights(w: Tensor, w_zp: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """``w - z_w`` ``[KH, KW, C]`` as int32 (wrapping modulo 2^32 like the kernels' int32
    arithmetic) or float32 (exact for the contract's zero points: ``|w - z_w| <= 255``), computed on
    ``w``'s device without a synchronization."""
    wc = w.to(torch.int32) if w_zp is None else w.to(torch.int32) - w_zp
    return wc.to(dtype).contiguous()


@triton.jit
def exact_float(v, offset):
    """``float32(v - offset)``, exactly, for an int32 tile ``v`` and an int32 scalar ``offset``, both
    of magnitude below 2^22, without an int -> float conversion instruction per element (those
    issue at a quarter of the float32 rate on Hopper): the bits ``v + 0x4B400000`` are the float32
    ``1.5 * 2^23 + v`` (the float32 numbers in [2^23, 2^24) are the integers), and subtracting
    the float32 integer ``1.5 * 2^23 + offset`` is exact (Sterbenz: both lie in [2^23, 2^24])."""
    f = (v + 0x4B400000).to(tl.float32, bitcast=True)
    return f - (offset + 12582912)


# =============================================================================================
# Kernel
# =============================================================================================
@triton.jit
def depthwise_tap(acc, accf, w_sum, xv, wv, z_x, FLOAT_ACC: tl.constexpr):
    """One tap of a depthwise window on a ``[pixels, channels]`` tile: the int8 inputs ``xv``
    (padded taps holding ``z_x``) times the shifted weights ``wv = w - z_w`` of the tap. float32:
    ``accf += (x - z_x) * w'`` (padded taps exactly 0); int32: ``acc += x * w'`` and ``w_sum``
    collects ``sum_taps w'`` for :func:`depthwise_epilogue`'s correction."""
    if FLOAT_ACC:
        accf += exact_float(xv.to(tl.int32), z_x) * wv[None, :]
    else:
        acc += xv.to(tl.int32) * wv[None, :]
        w_sum += wv
    return acc, accf, w_sum


@triton.jit
def depthwise_epilogue(acc, accf, w_sum, rows, row_ok, offs_c, mask_c, C, z_x, bias_ptr, mult_ptr, stride_mult,
                       lo_ptr, stride_lo, hi_ptr, stride_hi, z_y, y_ptr,
                       HAS_BIAS: tl.constexpr, OUT_INT32: tl.constexpr, USE_RINT: tl.constexpr,
                       FLOAT_ACC: tl.constexpr):  # fmt: skip
    """The per-channel terms in int32 (the bias and, on the int32 path, ``- z_x * sum_taps w'``),
    then the int32 store, or the requantization and the int8 store, of output pixels ``rows``
    (stored where ``row_ok``) of the NHWC ``[P, C]`` output."""
    if FLOAT_ACC:
        acc = accf.to(tl.int32)  # an integer of magnitude <= 2^24: converted exactly
        corr = tl.zeros_like(w_sum)
    else:
        corr = -z_x * w_sum
    if HAS_BIAS:
        corr += tl.load(bias_ptr + offs_c, mask=mask_c, other=0)
    acc += corr[None, :]
    y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * C + offs_c[None, :]
    mask = row_ok[:, None] & mask_c[None, :]
    if OUT_INT32:
        tl.store(y_ptrs, acc, mask=mask)
    else:
        out = requantize_channels(acc, offs_c, mask_c, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y,
                                  USE_RINT, ROWS=True)
        tl.store(y_ptrs, out, mask=mask)


@triton.jit(do_not_specialize=["z_x", "z_y"])
def _int8_depthwise_kernel(
    # Pointers: input, weight, per-channel vectors, output
    x_ptr, w_ptr,  # int8 NHWC [B, H, W, C]; w - z_w [KH, KW, C], int32 (float32 with FLOAT_ACC)
    bias_ptr, wzp_ptr,  # int32 [C]; weight zero point (unused: the launcher shifts the weights)
    mult_ptr, lo_ptr, hi_ptr,  # float32 [1|C] multiplier, int32 [1|C] bounds
    y_ptr,  # int8 (or int32) NHWC [B, OH, OW, C]
    # Geometry
    B, H, W, C, OH, OW,
    stride_h, stride_w, pad_top, pad_left,
    # Per-channel strides: 0 for a per-tensor value, 1 for one value per channel
    stride_wzp, stride_mult, stride_lo, stride_hi,
    # Zero points
    z_x, z_y,
    # Autotune bucket of the pixel count (not used in the body)
    P_BUCKET,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, USE_RINT: tl.constexpr,
    FLOAT_ACC: tl.constexpr,  # float32 fused multiply-adds (exact by the launcher's bound), else int32
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    P = B * OH * OW

    # -- output pixels (flattened b, oh, ow) and channels of this tile
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c < C
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    img = offs_p // (OW * OH)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)  # [BLOCK_P] int64 image base
    zx8 = z_x.to(tl.int8)

    # -- taps, with the weights w' = w - z_w shifted by the launcher (no per-tap widening or zero
    #    point). float32: accf += (x - z_x) * w', padded taps are exactly 0. int32: acc += x * w'
    #    and w_sum collects sum_taps w' for the correction below. Window rows are a loop and
    #    columns are unrolled: unrolling both lets the compiler hoist every tap's loads and spill
    #    registers (measured on sm_90).
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32)
    accf = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    w_sum = tl.zeros((BLOCK_C,), dtype=tl.int32)
    for kh in range(KH):
        ih = ih0 + kh
        row_ok = mask_p & (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = iw0 + kw
            ok = row_ok & (iw >= 0) & (iw < W)
            x_ptrs = x_img[:, None] + ((ih * W + iw) * C)[:, None] + offs_c[None, :]
            xv = tl.load(x_ptrs, mask=ok[:, None] & mask_c[None, :], other=zx8)
            wv = tl.load(w_ptr + (kh * KW + kw) * C + offs_c, mask=mask_c, other=0)
            acc, accf, w_sum = depthwise_tap(acc, accf, w_sum, xv, wv, z_x, FLOAT_ACC)

    depthwise_epilogue(acc, accf, w_sum, offs_p, mask_p, offs_c, mask_c, C, z_x, bias_ptr, mult_ptr, stride_mult,
                       lo_ptr, stride_lo, hi_ptr, stride_hi, z_y, y_ptr, HAS_BIAS, OUT_INT32, USE_RINT, FLOAT_ACC)


def prune_channel_tiles(prune: Callable[..., List[triton.Config]]) -> Callable[..., List[triton.Config]]:
    """Wrap an ``early_config_prune`` hook: channel tiles narrower than 32 are tuned only where they
    leave fewer lanes idle than a 32-wide tile (24 channels: 8-wide; 40, 80, 112, 144, 240:
    8- and 16-wide), not on channel counts that 32 divides."""

    def hook(configs: List[triton.Config], named_args: Dict[str, Any], **kwargs: Any) -> List[triton.Config]:
        C = int({**named_args, **kwargs}["C"])
        lanes = lambda bc: cdiv(C, bc) * bc  # noqa: E731
        kept = [cfg for cfg in configs if cfg.kwargs["BLOCK_C"] >= 32 or lanes(cfg.kwargs["BLOCK_C"]) < lanes(32)]
        return prune(kept or configs, named_args, **kwargs)

    return hook


_int8_depthwise_kernel_tuned = triton.autotune(
    configs=DEPTHWISE_GPU_CONFIGS,
    key=["P_BUCKET", "C", "KH", "KW", "stride_h", "stride_w", "HAS_WZP", "OUT_INT32", "FLOAT_ACC"],
    prune_configs_by={"early_config_prune": prune_channel_tiles(prune_by_size({"BLOCK_C": ("C",)}))},
)(_int8_depthwise_kernel)


@triton.jit(do_not_specialize=["z_x", "z_y"])
def _int8_depthwise_rows_kernel(
    # Pointers: input, weight, per-channel vectors, output
    x_ptr, w_ptr,  # int8 NHWC [B, H, W, C]; int8 w [KH, KW, C] (FLOAT_ACC: float32 w - z_w)
    bias_ptr, wzp_ptr,  # int32 [C], int32 [1|C] weight zero point (unused with FLOAT_ACC)
    mult_ptr, lo_ptr, hi_ptr,  # float32 [1|C] multiplier, int32 [1|C] bounds
    y_ptr,  # int8 (or int32) NHWC [B, OH, OW, C]
    # Geometry (stride 1)
    B, H, W, C, OH, OW,
    pad_top, pad_left,
    # Per-channel strides: 0 for a per-tensor value, 1 for one value per channel
    stride_wzp, stride_mult, stride_lo, stride_hi,
    # Zero points
    z_x, z_y,
    # Autotune bucket of the pixel count (not used in the body)
    P_BUCKET,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, USE_RINT: tl.constexpr,
    FLOAT_ACC: tl.constexpr,  # float32 fused multiply-adds (exact by the launcher's bound), else int32
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Stride-1 depthwise convolution, ``KH <= 5``: the program owns ``BLOCK_W`` output columns x
    ``BLOCK_C`` channels of one image and walks down its rows. Input row ``t - pad_top`` is
    loaded once per window column and added into the ``KH`` output rows that use it: ``a_j``
    holds output row ``t - j`` and receives window row ``j``; ``a_{KH-1}`` is then complete and
    stored, and the accumulators shift by one row. Each input element is loaded ``KW`` times
    instead of ``KH * KW`` (and, on the float32 path, converted once for ``KH`` multiply-adds).
    Same arithmetic as :func:`_int8_depthwise_kernel`."""
    pid_bw = tl.program_id(0)
    pid_c = tl.program_id(1)
    n_wb = tl.cdiv(OW, BLOCK_W)
    img = pid_bw // n_wb
    offs_w = (pid_bw - img * n_wb) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_w = offs_w < OW
    mask_c = offs_c < C
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)
    y_img = y_ptr + img.to(tl.int64) * (OH * OW * C)
    zx8 = z_x.to(tl.int8)
    if HAS_WZP:
        zw = tl.load(wzp_ptr + offs_c * stride_wzp, mask=mask_c, other=0)

    # -- per-channel terms in int32: bias, and on the int32 path - z_x * sum_taps (w - z_w)
    #    (padded taps load z_x and cancel against it); the float32 path shifts x by z_x instead
    w_sum = tl.zeros((BLOCK_C,), dtype=tl.int32)
    if FLOAT_ACC:  # w_ptr holds float32 w - z_w: every tap's vector in registers across the row loop
        wts = ()
        for tap in tl.static_range(KH * KW):
            wts = wts + (tl.load(w_ptr + tap * C + offs_c, mask=mask_c, other=0.0),)
    else:
        for tap in tl.static_range(KH * KW):
            wv = tl.load(w_ptr + tap * C + offs_c, mask=mask_c, other=0).to(tl.int32)
            if HAS_WZP:
                wv = tl.where(mask_c, wv - zw, 0)
            w_sum += wv
    corr = -z_x * w_sum
    if HAS_BIAS:
        corr += tl.load(bias_ptr + offs_c, mask=mask_c, other=0)
    if not OUT_INT32:
        mult, lo, hi = load_channel_params(offs_c, mask_c, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr,
                                           stride_hi)  # fmt: skip

    # -- one accumulator per window row (unused ones are compiled out)
    acc_dtype = tl.float32 if FLOAT_ACC else tl.int32
    a0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_dtype)
    a1 = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_dtype)
    a2 = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_dtype)
    a3 = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_dtype)
    a4 = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_dtype)
    for t in range(0, OH + KH - 1):
        ih = t - pad_top
        row_ok = (ih >= 0) & (ih < H)
        for kw in tl.static_range(KW):
            iw = offs_w - pad_left + kw
            ok = (iw >= 0) & (iw < W) & row_ok
            x_ptrs = x_img + ((ih * W + iw) * C)[:, None] + offs_c[None, :]
            xv = tl.load(x_ptrs, mask=ok[:, None] & mask_c[None, :], other=zx8).to(tl.int32)
            if FLOAT_ACC:
                xv = exact_float(xv, z_x)  # x - z_x, converted once for KH multiply-adds
            for j in tl.static_range(KH):
                if FLOAT_ACC:
                    wv = wts[j * KW + kw]
                else:
                    wv = tl.load(w_ptr + (j * KW + kw) * C + offs_c, mask=mask_c, other=0).to(tl.int32)
                    if HAS_WZP:
                        wv = tl.where(mask_c, wv - zw, 0)
                if j == 0:
                    a0 += xv * wv[None, :]
                elif j == 1:
                    a1 += xv * wv[None, :]
                elif j == 2:
                    a2 += xv * wv[None, :]
                elif j == 3:
                    a3 += xv * wv[None, :]
                else:
                    a4 += xv * wv[None, :]
        # -- output row t - (KH - 1) is complete: epilogue and store; then shift the rows
        if KH == 1:
            done = a0
        elif KH == 2:
            done = a1
        elif KH == 3:
            done = a2
        elif KH == 4:
            done = a3
        else:
            done = a4
        oh = t - (KH - 1)
        acc = done.to(tl.int32) + corr[None, :]  # float32 path: an integer <= 2^24, converted exactly
        y_ptrs = y_img + ((oh * OW + offs_w) * C)[:, None] + offs_c[None, :]
        mask = ((oh >= 0) & mask_w)[:, None] & mask_c[None, :]
        if OUT_INT32:
            tl.store(y_ptrs, acc, mask=mask)
        else:
            tl.store(y_ptrs, requantize(acc, mult[None, :], z_y, lo[None, :], hi[None, :], USE_RINT), mask=mask)
        if KH >= 5:
            a4 = a3
        if KH >= 4:
            a3 = a2
        if KH >= 3:
            a2 = a1
        if KH >= 2:
            a1 = a0
        a0 = tl.zeros((BLOCK_W, BLOCK_C), dtype=acc_dtype)


_int8_depthwise_rows_kernel_tuned = triton.autotune(
    configs=DEPTHWISE_ROWS_GPU_CONFIGS,
    key=["P_BUCKET", "C", "OW", "KH", "KW", "HAS_WZP", "OUT_INT32", "FLOAT_ACC"],
    prune_configs_by={
        "early_config_prune": prune_channel_tiles(prune_by_size({"BLOCK_C": ("C",), "BLOCK_W": ("OW",)}))
    },
)(_int8_depthwise_rows_kernel)


@triton.jit(do_not_specialize=["z_x", "z_y"])
def _int8_depthwise_tma_kernel(
    # TMA descriptors of the NHWC input [B, H, W, C] (stride 1: the input four times; stride 2: its
    # four row/column parity phases, kernels.gemm.input_descriptors) in [1, BLOCK_P // BW, BW,
    # BLOCK_C] boxes
    x00, x01, x10, x11,
    # Pointers: weight, per-channel vectors, output (as in _int8_depthwise_kernel)
    w_ptr, bias_ptr, wzp_ptr, mult_ptr, lo_ptr, hi_ptr, y_ptr,
    # Geometry
    B, H, W, C, OH, OW,
    stride_wzp, stride_mult, stride_lo, stride_hi,
    z_x, z_y,
    P_BUCKET,
    # Meta-parameters; BW: the output tile is a patch of BLOCK_P // BW rows of BW pixels
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD_TOP: tl.constexpr, PAD_LEFT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, USE_RINT: tl.constexpr,
    FLOAT_ACC: tl.constexpr, BW: tl.constexpr, NUM_STAGES: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Depthwise convolution of stride 1 or 2 with TMA loads: the program owns a ``BH x BW`` patch
    of one image's output pixels (``BH = BLOCK_P // BW``) x ``BLOCK_C`` channels. With stride 1,
    for tap ``(kh, kw)`` the inputs are the patch shifted by ``(kh - PAD_TOP, kw - PAD_LEFT)``:
    one TMA box, which the hardware zero-fills outside the image and past ``C``; the taps are a
    loop, which Triton software-pipelines (the boxes of the next taps load while one is summed).
    With stride 2, input row ``2 oh + dh`` (``dh = kh - PAD_TOP``) is row ``oh + floor(dh / 2)``
    of the phase of rows of parity ``dh mod 2``, and likewise for columns: each tap's inputs are
    a box of one of the four phases (as in the TMA convolution), the taps of each phase one
    pipelined loop. Padded taps are set to ``z_x`` after the load, so the arithmetic is
    :func:`_int8_depthwise_kernel`'s."""
    BH: tl.constexpr = BLOCK_P // BW
    tiles_w = tl.cdiv(OW, BW)
    tiles = tl.cdiv(OH, BH) * tiles_w
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    img = pid // tiles
    patch = pid - img * tiles
    oh0 = (patch // tiles_w) * BH
    ow0 = (patch % tiles_w) * BW
    i = tl.arange(0, BLOCK_P)
    oh = oh0 + i // BW  # [BLOCK_P] output pixels of the patch, row-major
    ow = ow0 + i % BW
    c0 = pid_c * BLOCK_C
    offs_c = c0 + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    zx8 = z_x.to(tl.int8)

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32)
    accf = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    w_sum = tl.zeros((BLOCK_C,), dtype=tl.int32)
    if STRIDE == 1:
        for tap in tl.range(0, KH * KW, num_stages=NUM_STAGES):
            kh = tap // KW
            kw = tap - kh * KW
            ih = oh + kh - PAD_TOP
            iw = ow + kw - PAD_LEFT
            inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            box = x00.load([img, oh0 + kh - PAD_TOP, ow0 + kw - PAD_LEFT, c0]).reshape(BLOCK_P, BLOCK_C)
            xv = tl.where(inside[:, None], box, zx8)  # a padded tap holds z_x, as in the pointer kernel
            wv = tl.load(w_ptr + tap * C + offs_c, mask=mask_c, other=0)
            acc, accf, w_sum = depthwise_tap(acc, accf, w_sum, xv, wv, z_x, FLOAT_ACC)
    else:
        # one pipelined loop per phase (ph, pw) over the taps that read it: kh = KH0 + 2 j with
        # kh0 = (ph + PAD_TOP) mod 2, likewise kw (unrolling all the taps spills)
        for ph in tl.static_range(2):
            for pw in tl.static_range(2):
                kh0 = (ph + PAD_TOP) % 2  # compile-time constants (ph, pw are)
                kw0 = (pw + PAD_LEFT) % 2
                nw = (KW - kw0 + 1) // 2
                for t in tl.range(0, ((KH - kh0 + 1) // 2) * nw, num_stages=NUM_STAGES):
                    j = t // nw
                    kh = kh0 + 2 * j
                    kw = kw0 + 2 * (t - j * nw)
                    # the tap's offset in the phase's grid: kh - PAD_TOP - ph is even, so the
                    # (truncating) division is exact
                    dh = (kh - PAD_TOP - ph) // 2
                    dw = (kw - PAD_LEFT - pw) // 2
                    ih = 2 * oh + kh - PAD_TOP
                    iw = 2 * ow + kw - PAD_LEFT
                    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    box = phase_box(x00, x01, x10, x11, [img, oh0 + dh, ow0 + dw, c0], ph, pw)
                    xv = tl.where(inside[:, None], box.reshape(BLOCK_P, BLOCK_C), zx8)
                    wv = tl.load(w_ptr + (kh * KW + kw) * C + offs_c, mask=mask_c, other=0)
                    acc, accf, w_sum = depthwise_tap(acc, accf, w_sum, xv, wv, z_x, FLOAT_ACC)

    depthwise_epilogue(acc, accf, w_sum, (img * OH + oh) * OW + ow, (oh < OH) & (ow < OW), offs_c, mask_c, C, z_x,
                       bias_ptr, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y, y_ptr, HAS_BIAS,
                       OUT_INT32, USE_RINT, FLOAT_ACC)


def _set_depthwise_tma_block(nargs: dict) -> None:
    """Autotune pre-hook (and direct-launch hook): the box follows the tile being launched."""
    for name in ("x00", "x01", "x10", "x11"):
        nargs[name].block_shape = [1, nargs["BLOCK_P"] // nargs["BW"], nargs["BW"], nargs["BLOCK_C"]]


_prune_channels_tma = prune_channel_tiles(prune_by_size({"BLOCK_C": ("C",)}))


def _prune_depthwise_tma(configs, named_args, **kwargs):
    """The channel-tile pruning of the depthwise kernels; with stride 2, without the tiles of
    :data:`~kernels._config.DEPTHWISE_TMA_STRIDED_SPILLING` (they spill there)."""
    if {**named_args, **kwargs}["STRIDE"] == 2:
        configs = [c for c in configs if (c.kwargs["BLOCK_P"], c.kwargs["BLOCK_C"], c.num_warps)
                   not in DEPTHWISE_TMA_STRIDED_SPILLING] or configs
    return _prune_channels_tma(configs, named_args, **kwargs)


_int8_depthwise_tma_kernel_tuned = triton.autotune(
    configs=[triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages,
                           pre_hook=_set_depthwise_tma_block) for c in DEPTHWISE_TMA_GPU_CONFIGS],
    key=["P_BUCKET", "C", "OW", "KH", "KW", "STRIDE", "HAS_WZP", "OUT_INT32", "FLOAT_ACC"],
    prune_configs_by={"early_config_prune": _prune_depthwise_tma},
)(_int8_depthwise_tma_kernel)


# =============================================================================================
# Launcher
# =============================================================================================
class DepthwisePlan:
    """The depthwise launch with its weight-side arguments bound once; calling it on an NHWC
    ``x`` checks ``x`` (dtype, rank, channels, layout, device), sizes the output and launches.

    The arguments must already be validated and normalized (as
    :func:`kernels.reference.check_depthwise_args` returns them).
    """

    def __init__(
        self,
        w: Tensor,
        bias: Optional[Tensor],
        w_zp: Optional[Tensor],
        multiplier: Tensor,
        z_x: int,
        z_y: int,
        lo: Tensor,
        hi: Tensor,
        stride: Tuple[int, int],
        pad: Tuple[int, int, int, int],
        out_int32: bool,
    ) -> None:
        KH, KW, C = w.shape
        self.KH, self.KW, self.C = KH, KW, C
        self.stride, self.pad = stride, pad
        self.rows_ok = stride == (1, 1) and KH <= DEPTHWISE_ROWS_MAX_KH  # the rows variant applies
        # the TMA variant applies (for an aligned input): stride 1 or 2 in both directions
        self.tma_ok = stride[0] == stride[1] in TMA_STRIDES and C % 16 == 0
        self.device = w.device
        self.out_dtype = torch.int32 if out_int32 else torch.int8
        # float32 accumulation where it is exact for every input (the window, z_x and whether the
        # weights are symmetric bound it) and the kernel gains from it (FLOAT_ACC_KERNELS)
        exact = float_accumulation_exact(KH * KW, z_x, w_zp is None)
        self.float_acc = {v: exact and v in FLOAT_ACC_KERNELS for v in ("tiles", "rows")}
        self.static = dict(
            C=C, stride_h=stride[0], stride_w=stride[1], pad_top=pad[0], pad_left=pad[2], z_x=z_x, z_y=z_y,
            KH=KH, KW=KW, OUT_INT32=out_int32, USE_RINT=USE_RINT, **epilogue_args(bias, w_zp, multiplier, lo, hi),
        )  # fmt: skip
        # the rows kernel takes no stride arguments (stride 1)
        self.static_rows = {k: v for k, v in self.static.items() if k not in ("stride_h", "stride_w")}
        # the weight operand of each kernel, bound here like the other weight-side arguments:
        # w - z_w as float32 (float32 path) or int32 (tiles kernel, int32 path), computed on the
        # device once per weight tensor (DERIVED); the int8 w for the rows kernel's int32 path,
        # which subtracts z_w itself
        self.static["w_ptr"] = self._weights(w, w_zp, self.float_acc["tiles"], torch.int32)
        if self.rows_ok:
            self.static_rows["w_ptr"] = self._weights(w, w_zp, self.float_acc["rows"], None)
        self.static["FLOAT_ACC"] = self.float_acc["tiles"]
        self.static_rows["FLOAT_ACC"] = self.float_acc["rows"]

    @staticmethod
    def _weights(w: Tensor, w_zp: Optional[Tensor], float_acc: bool, int_dtype: Optional[torch.dtype]) -> Tensor:
        dtype = torch.float32 if float_acc else int_dtype
        if dtype is None:
            return w
        return DERIVED.get("depthwise_shifted_w", (w, w_zp), dtype, lambda: shifted_weights(w, w_zp, dtype))

    def __call__(self, x: Tensor) -> Tensor:
        B, H, W, C = ref.check_nhwc_input(x, self.C, self.device)
        OH, OW = ref.conv_output_size(H, W, self.KH, self.KW, self.stride, self.pad)
        y = torch.empty((B, OH, OW, C), dtype=self.out_dtype, device=x.device)
        P = B * OH * OW
        if P == 0 or C == 0:
            return y
        variant = depthwise_variant()
        if variant == "tma" and self.tma_ok and min(H, W) >= self.stride[0] and tma_ready(x.view(-1, C)):
            self._launch_tma(x, y)
            return y
        rows = self.rows_ok and variant == "rows"
        args = dict(self.static_rows if rows else self.static, x_ptr=x, y_ptr=y, B=B, H=H, W=W, OH=OH, OW=OW,
                    P_BUCKET=next_pow2_bucket(P))
        if rows:
            grid = lambda META: (B * cdiv(OW, META["BLOCK_W"]), cdiv(C, META["BLOCK_C"]))  # noqa: E731
            launch(_int8_depthwise_rows_kernel, _int8_depthwise_rows_kernel_tuned, "depthwise_rows", grid, args)
            return y
        grid = lambda META: (cdiv(P, META["BLOCK_P"]), cdiv(C, META["BLOCK_C"]))  # noqa: E731
        launch(_int8_depthwise_kernel, _int8_depthwise_kernel_tuned, "depthwise", grid, args)
        return y

    def _launch_tma(self, x: Tensor, y: Tensor) -> None:
        """The "tma" variant: the tiles kernel's weight-side arguments, the input as a descriptor."""
        B, H, W, C = x.shape
        OH, OW = y.shape[1], y.shape[2]
        bw = tma_patch_width(OW)
        static = {k: v for k, v in self.static.items() if k not in ("stride_h", "stride_w", "pad_top", "pad_left")}
        x00, x01, x10, x11 = input_descriptors(x, self.stride[0], [1, 16, bw, 16])
        args = dict(static, x00=x00, x01=x01, x10=x10, x11=x11, y_ptr=y, B=B, H=H, W=W, OH=OH, OW=OW,
                    P_BUCKET=next_pow2_bucket(B * OH * OW), BW=bw, STRIDE=self.stride[0], PAD_TOP=self.pad[0],
                    PAD_LEFT=self.pad[2])

        def grid(META):
            bh = META["BLOCK_P"] // bw
            return (B * cdiv(OH, bh) * cdiv(OW, bw), cdiv(C, META["BLOCK_C"]))

        launch(_int8_depthwise_tma_kernel, _int8_depthwise_tma_kernel_tuned, "depthwise_tma", grid, args,
               pre_hook=_set_depthwise_tma_block)


def int8_depthwise_conv2d(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: ref.FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Tensor] = None,
    z_y: int = 0,
    lo: ref.IntOrTensor = ref.INT8_MIN,
    hi: ref.IntOrTensor = ref.INT8_MAX,
    stride: Union[int, Sequence[int]] = 1,
    padding: ref.Padding = 0,
    out_int32: bool = False,
) -> Tensor:
    """Triton depthwise convolution; same contract as :func:`kernels.reference.int8_depthwise_conv2d`.

    ``x`` int8 NHWC ``[B, H, W, C]``, ``w`` int8 ``[KH, KW, C]`` (both contiguous), any window size;
    ``padding`` ``(top, bottom, left, right)``; returns int8 NHWC ``[B, OH, OW, C]``.
    """
    bias, w_zp, m, z_x, z_y, lo, hi, stride, pad = ref.check_depthwise_args(
        x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding
    )
    return DepthwisePlan(w, bias, w_zp, m, z_x, z_y, lo, hi, stride, pad, out_int32)(x)


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare with the reference on a 5x5 stride-2 case with asymmetric padding."""
    g = torch.Generator().manual_seed(0)
    C = 70
    x = torch.randint(-128, 128, (2, 13, 10, C), generator=g, dtype=torch.int8).to(device)
    w = torch.randint(-128, 128, (5, 5, C), generator=g, dtype=torch.int8).to(device)
    bias = torch.randint(-5000, 5000, (C,), generator=g, dtype=torch.int32).to(device)
    mult = (torch.rand(C, generator=g) * 1e-2).to(device)
    w_zp = torch.randint(-3, 4, (C,), generator=g, dtype=torch.int32).to(device)
    kwargs = dict(z_x=9, w_zp=w_zp, z_y=-4, lo=-128, hi=100, stride=2, padding=(1, 2, 1, 2))
    ok = torch.equal(
        int8_depthwise_conv2d(x, w, bias, mult, **kwargs), ref.int8_depthwise_conv2d(x, w, bias, mult, **kwargs)
    )
    logger.info("int8_depthwise_conv2d reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return ok


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
