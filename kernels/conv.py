"""int8 implicit-GEMM 2-D convolution, NHWC, with the fused requantization epilogue (Triton).

Layout follows Triton's matmul tutorial: tile configurations, the ``@triton.jit`` kernel, a thin
launcher, and a reference check (``python -m kernels.conv``).

The convolution is the GEMM ``[M = B*OH*OW, K = KH*KW*C] x [K, N]``: row ``m`` of the virtual
im2col matrix is gathered on the fly from the NHWC input, the weight ``[N, KH, KW, C]`` is read
as the K-contiguous ``[N, K]`` matrix.

Padding is zero in the real domain, i.e. a padded tap "holds" ``z_x``. The loads zero-fill instead
(a plain predicated copy, so the operand tiles go from global to shared memory to the tensor cores
untouched), and the difference is added exactly, on the tensor cores too. With the folded bias
``bias - z_x * sum_k w + K * z_x * z_w``, the missing contribution of the padded taps ``P(m)`` of
output pixel ``m`` is ``corr[m, n] = sum_t P'[m, t] * S[t, n]`` with ``P'[m, t] = z_x`` if tap ``t``
of pixel ``m`` is padding, else 0 (an int8 tile built from the pixel coordinates), and
``S[t, n] = sum_c (w[n, t, c] - z_w[n])``. ``S`` does not fit int8, so it is stored as ``NDIG``
signed base-256 digit planes ``S = sum_i 256^i D_i`` (int8, ``[NDIG, N, TP]``, taps padded to
``TP >= 32``, built once per weight tensor), and the correction is ``NDIG`` small int8 dots in
Horner form, ``acc = dot(P', D_i, 256 * acc)``, before the main loop starts accumulating into the
same registers. All of it is exact modulo 2^32, like the int32 accumulator itself. ``PAD_CORR``
(constexpr) switches it on when there is padding and ``z_x != 0``.

The K loop takes one of three shapes, chosen per launch by the constexprs ``FLAT_K`` (launcher),
``UNROLL_TAPS`` and ``EVEN_K`` (``triton.heuristics`` on the arguments and the tile in use, so a
forced, default or autotuned tile gets them alike).

* tap-major (``FLAT_K=False``, channels >= 16): a step loads ``BLOCK_M`` rows of ``BLOCK_K``
  contiguous channels of one tap (a bounds test per row, vectorized channel loads) and the
  ``[BLOCK_K, BLOCK_N]`` weight tile of the same tap and channels. The rows' base pointers (image
  offset in int64) and both pointer tiles of tap ``(0, 0)`` are computed once per program, and
  nothing is divided in the loop.

  - unrolled (``UNROLL_TAPS=True``): ``tl.static_range`` over ``KH`` and ``KW``. Per tap the row
    mask and the two pointer tiles are computed once, then the channel loop only advances both
    tiles by ``BLOCK_K``: the GEMM's loop. Triton software-pipelines each tap's channel loop on its
    own (a prologue per tap), so a tap with few channel blocks waits for a load latency. Used for
    one tap (a strided 1x1 convolution), more than 32 taps, or at least
    :data:`TAP_UNROLL_MIN_STEPS` channel blocks per tap.
  - stepped (``UNROLL_TAPS=False``, the other tap-major layers): one loop over
    ``KH*KW*ceil(C/BLOCK_K)`` steps, pipelined as a whole. Each row's tap validity is an int32 bit
    mask computed once (bit ``t``: tap ``t`` lies inside the input); the tap position and the
    scalar input and weight offsets are carried from step to step and advanced with selects, so a
    step adds a shift-and-test per row and a few scalar operations to the GEMM's loop.
  - ``EVEN_K`` (``C % BLOCK_K == 0``): no channel mask; the input mask is the row mask alone and
    the weight load is unmasked.

  Compiled for sm_90 (Triton 3.8; 128x128x64 tile, 4 warps, 3x3, per-channel epilogue), one step
  of the unrolled loop is 75 PTX instructions (82 with the channel mask), of the stepped loop 105
  (112); the earlier loop, which split the step index into ``(tap, channel block)`` and recomputed
  the rows' coordinates every step, took 153.
* flat (``FLAT_K=True``, few channels such as an RGB stem): ``k`` runs over ``KH*KW*C`` and each
  ``k`` is split into ``(kh, kw, c)`` every step (divisions of ``[BLOCK_K]`` vectors), so a
  3-channel 7x7 stem does not pad every tap to a whole ``BLOCK_K``. The ``[BLOCK_M, BLOCK_K]`` part of a step is four
  compares and one pointer add against row bases computed once; the weight tile advances by
  ``BLOCK_K``. ``EVEN_K`` (``KH*KW*C % BLOCK_K == 0``) drops the ``k`` mask. With ``C`` not a
  multiple of 16 these loads are byte-wise on a GPU (about 1200 PTX instructions a step for
  7x7x3 with the tile above, 1630 before the row bases were hoisted).

With ``RESIDUAL`` (constexpr) a residual add is fused after the requantization, as in
:mod:`kernels.gemm`: the NHWC output is the ``[M, N]`` row-major matrix, so the tile of the add's
other operand ``r`` (contiguous NHWC ``[B, OH, OW, N]``) has the output tile's offsets, and
:func:`kernels.requant.requantize_add` combines the layer's int8 tile with it; only the add's
output is stored. The epilogue is shared by all three loop shapes.

A 1x1, stride-1, unpadded convolution is routed to :mod:`kernels.gemm` (with its residual).

With the ``"tma"`` GEMM variant (``kernels.use_settings(gemm_variant="tma")``) a convolution of
stride 1 or 2 with ``C`` a multiple of 16 runs :func:`_int8_conv2d_tma_kernel` instead: output
tiles are patches of one image, each (tap, channel block) step loads the patch's input pixels as
one TMA box of the input (stride 2: of one of its four row/column parity phases), zero-filled
where it leaves the image so that the same padding correction applies, on a persistent grid; the
same bits.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Tuple, Union

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import (
    CONV_FLAT_K_TILES,
    CONV_TMA_STRIDED_SPILLING,
    DERIVED,
    GEMM_GPU_CONFIGS,
    GEMM_NARROW_N,
    GEMM_TMA_CONFIGS,
    USE_RINT,
    cdiv,
    epilogue_args,
    launch,
    next_pow2_bucket,
    prune_by_size,
)
from .gemm import (
    _NO_RESIDUAL,
    TMA_STRIDES,
    GemmPlan,
    TensorDescriptor,
    check_residual_operand,
    gemm_epilogue,
    grouped_tile,
    input_descriptors,
    persistent_programs,
    phase_box,
    residual_args,
    tma_patch_width,
    tma_ready,
)
from .settings import current_settings

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

#: Channel counts below this use the flat-K loop.
FLAT_K_MAX_CHANNELS = ref.IM2COL_MAX_CHANNELS

#: Tap-major convolutions with at least this many channel blocks (``ceil(C / BLOCK_K)``) per tap
#: run the unrolled-tap loop, the others the stepped loop (see the module docstring). Each tap's
#: channel loop is software-pipelined on its own, so a short one pays a memory latency per tap;
#: the stepped loop is one pipelined loop. Not measured on a GPU yet: 1 runs every tap-major
#: layer unrolled, a large value every layer with 2-32 taps stepped.
TAP_UNROLL_MIN_STEPS = 8


# =============================================================================================
# Kernel
# =============================================================================================
@triton.jit
def _dot_step(a_ptrs, b_ptrs, a_mask, k_ok, acc, row_sum, EVEN_K: tl.constexpr, HAS_WZP: tl.constexpr):
    """One step of every K loop below: the ``[BLOCK_M, BLOCK_K]`` input tile (rows outside the
    input masked by ``a_mask``, zero-filled) and the K-major ``[BLOCK_K, BLOCK_N]`` weight tile,
    both also masked by ``k_ok`` (``[BLOCK_K]``) unless ``EVEN_K``, one int8 dot into the int32
    ``acc``, and the input's row sums when the weights have a zero point."""
    if EVEN_K:
        a = tl.load(a_ptrs, mask=a_mask, other=0)
        b = tl.load(b_ptrs)
    else:
        a = tl.load(a_ptrs, mask=a_mask & k_ok[None, :], other=0)
        b = tl.load(b_ptrs, mask=k_ok[:, None], other=0)
    acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    if HAS_WZP:
        row_sum += tl.sum(a.to(tl.int32), axis=1)
    return acc, row_sum


@triton.jit
def padding_correction(acc, ih0, iw0, offs_n, dig_ptr, H, W, N, z_x,
                       KH: tl.constexpr, KW: tl.constexpr, NDIG: tl.constexpr, TP: tl.constexpr):  # fmt: skip
    """The padding correction (module docstring), added to ``acc`` before the K loop: ``acc +=
    sum_t P'[m, t] S[t, n]``, Horner over the ``NDIG`` digit planes of ``S``. Row ``m``'s tap
    ``(0, 0)`` lies at input ``(ih0[m], iw0[m])``; ``P'[m, t] = z_x`` where tap ``t`` falls outside
    the ``H x W`` input."""
    offs_t = tl.arange(0, TP)
    ih_t = ih0[:, None] + (offs_t // KW)[None, :]
    iw_t = iw0[:, None] + (offs_t % KW)[None, :]
    padded = (ih_t < 0) | (ih_t >= H) | (iw_t < 0) | (iw_t >= W)
    p = tl.where(padded & (offs_t < KH * KW)[None, :], z_x, 0).to(tl.int8)  # [BLOCK_M, TP]
    d_ptrs = dig_ptr + (offs_n % N)[None, :] * TP + offs_t[:, None]  # [TP, BLOCK_N], K-major
    acc = tl.dot(p, tl.load(d_ptrs + (NDIG - 1) * N * TP), acc, out_dtype=tl.int32)
    for i in tl.static_range(NDIG - 2, -1, -1):
        acc = tl.dot(p, tl.load(d_ptrs + i * N * TP), acc * 256, out_dtype=tl.int32)
    return acc


@triton.jit(do_not_specialize=["z_x", "z_y", "z_a", "z_r", "ia", "ib", "add_z", "add_lo", "add_hi"])
def _int8_conv2d_kernel(
    # Pointers: input, weight, per-output-channel vectors, output
    x_ptr, w_ptr,  # int8 NHWC [B, H, W, C], int8 [N, KH, KW, C]
    bias_ptr, wzp_ptr,  # int32 [N] (folded bias), int32 [1|N] weight zero point
    dig_ptr,  # int8 [NDIG, N, TP] base-256 digits of sum_c (w - z_w) per tap (PAD_CORR only)
    mult_ptr, lo_ptr, hi_ptr,  # float32 [1|N] multiplier, int32 [1|N] bounds
    y_ptr,  # int8 (or int32) NHWC [B, OH, OW, N]
    r_ptr,  # RESIDUAL only: int8 NHWC [B, OH, OW, N], the residual add's other operand (else any pointer)
    # Geometry
    B, H, W, C, OH, OW, N,
    stride_h, stride_w, pad_top, pad_left,
    # Per-channel strides: 0 for a per-tensor value, 1 for one value per output channel
    stride_wzp, stride_mult, stride_lo, stride_hi,
    # Zero points
    z_x, z_y,
    # RESIDUAL only: the add (kernels.reference.ResidualAdd), as in kernels.gemm
    z_a, z_r, ia, ib, add_m, add_z, add_lo, add_hi,
    # Autotune bucket of M (not used in the body)
    M_BUCKET,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr, FLAT_K: tl.constexpr, EVEN_K: tl.constexpr, UNROLL_TAPS: tl.constexpr,
    PAD_CORR: tl.constexpr, NDIG: tl.constexpr, TP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, RESIDUAL: tl.constexpr,
    USE_RINT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    M = B * OH * OW
    K = KH * KW * C

    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    # -- output pixels of this tile (rows past M wrap around; only the store is masked)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    pix = offs_m % M
    ow = pix % OW
    oh = (pix // OW) % OH
    img = pix // (OW * OH)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    x_img = x_ptr + img.to(tl.int64) * (H * W * C)  # [BLOCK_M] int64 image base (batch may be large)
    w_rows = w_ptr + (offs_n % N).to(tl.int64) * K  # [BLOCK_N] weight rows

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    if PAD_CORR:
        # -- padding correction first, into the accumulator
        acc = padding_correction(acc, ih0, iw0, offs_n, dig_ptr, H, W, N, z_x, KH, KW, NDIG, TP)
    if FLAT_K:
        # -- k = (kh * KW + kw) * C + c, split per element; only [BLOCK_K] vectors are divided,
        #    the [BLOCK_M, BLOCK_K] part is a pointer add and four compares against hoisted rows
        x_pix = x_img + (ih0 * W + iw0) * C  # [BLOCK_M] pointer to tap (0, 0) of each pixel
        w_ptrs = w_rows[None, :] + offs_k[:, None]  # [BLOCK_K, BLOCK_N], K-major
        for k0 in range(0, K, BLOCK_K):
            k = k0 + offs_k
            tap = k // C
            c = k - tap * C
            kh = tap // KW
            kw = tap - kh * KW
            inside = ((ih0[:, None] >= -kh[None, :]) & (ih0[:, None] < (H - kh)[None, :])
                      & (iw0[:, None] >= -kw[None, :]) & (iw0[:, None] < (W - kw)[None, :]))  # fmt: skip
            a_ptrs = x_pix[:, None] + ((kh * W + kw) * C + c)[None, :]
            acc, row_sum = _dot_step(a_ptrs, w_ptrs, inside, offs_k < K - k0, acc, row_sum, EVEN_K, HAS_WZP)
            w_ptrs += BLOCK_K
    else:
        # -- tap-major: BLOCK_M rows x BLOCK_K contiguous channels of one tap per step, the row
        #    pointers of tap (0, 0) computed once; no division in the loop
        x_rows = x_img + (ih0 * W + iw0) * C  # [BLOCK_M] pointer to tap (0, 0) of each pixel
        if UNROLL_TAPS:
            # taps unrolled at compile time: per tap one row mask and one pointer tile, then a
            # channel loop that only advances the pointers, exactly the GEMM's loop (each tap's
            # loop is software-pipelined on its own)
            for kh in tl.static_range(KH):
                h_ok = (ih0 >= -kh) & (ih0 < H - kh)
                for kw in tl.static_range(KW):
                    row_ok = (h_ok & (iw0 >= -kw) & (iw0 < W - kw))[:, None]  # [BLOCK_M, 1]
                    # built from the row vectors, not from a_base/b_base: with those kept live
                    # across the taps a 128x128x64 tile (4 warps) spilled 8 bytes on sm_90
                    a_ptrs = (x_rows + (kh * W + kw) * C)[:, None] + offs_k[None, :]
                    b_ptrs = (w_rows + (kh * KW + kw) * C)[None, :] + offs_k[:, None]
                    for c0 in range(0, C, BLOCK_K):
                        acc, row_sum = _dot_step(a_ptrs, b_ptrs, row_ok, offs_k < C - c0, acc, row_sum, EVEN_K,
                                                 HAS_WZP)
                        a_ptrs += BLOCK_K
                        b_ptrs += BLOCK_K
        else:
            # one pipelined loop over (tap, channel block) steps (KH*KW <= 32): the rows' tap
            # validity is a bit mask computed once (bit t: tap t inside the input), the tap
            # position is carried in scalars and the pointers move by a scalar offset
            a_base = x_rows[:, None] + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
            b_base = w_rows[None, :] + offs_k[:, None]  # [BLOCK_K, BLOCK_N], K-major
            tap_bits = tl.zeros((BLOCK_M,), dtype=tl.int32)
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    ok = (ih0 >= -kh) & (ih0 < H - kh) & (iw0 >= -kw) & (iw0 < W - kw)
                    tap_bits |= ok.to(tl.int32) << (kh * KW + kw)  # bit 31 is the sign bit: fine
            tap = tl.full((), 0, tl.int32)
            kw = tl.full((), 0, tl.int32)
            c0 = tl.full((), 0, tl.int32)
            a_off = tl.full((), 0, tl.int32)  # (kh * W + kw) * C + c0
            b_off = tl.full((), 0, tl.int32)  # tap * C + c0
            for _ in range(0, KH * KW * tl.cdiv(C, BLOCK_K)):
                row_ok = (((tap_bits >> tap) & 1) != 0)[:, None]  # [BLOCK_M, 1]
                acc, row_sum = _dot_step(a_base + a_off, b_base + b_off, row_ok, offs_k < C - c0, acc, row_sum,
                                         EVEN_K, HAS_WZP)
                # next step: the next channel block, or channel 0 of the next tap (next window row)
                c_next = c0 + BLOCK_K
                next_tap = c_next >= C
                kw_next = tl.where(next_tap, kw + 1, kw)
                next_row = kw_next == KW
                a_off = tl.where(next_tap, a_off - c0 + tl.where(next_row, (W - KW + 1) * C, C), a_off + BLOCK_K)
                c0 = tl.where(next_tap, 0, c_next)
                kw = tl.where(next_row, 0, kw_next)
                tap = tl.where(next_tap, tap + 1, tap)
                b_off = tap * C + c0

    # -- the GEMM's epilogue: the NHWC output (and r, contiguous NHWC too) is the [M, N] row-major matrix
    gemm_epilogue(acc, row_sum, offs_m, offs_m < M, offs_n, N, bias_ptr, wzp_ptr, stride_wzp, mult_ptr, stride_mult,
                  lo_ptr, stride_lo, hi_ptr, stride_hi, z_y, y_ptr, N, r_ptr, N, z_a, z_r, ia, ib, add_m, add_z,
                  add_lo, add_hi, HAS_BIAS, HAS_WZP, OUT_INT32, RESIDUAL, USE_RINT)


def _tile(cfg) -> Tuple[int, int, int, int]:
    return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], cfg.kwargs["BLOCK_K"], cfg.num_warps


def _prune_conv(configs, named_args, **kwargs):
    """:func:`~kernels._config.prune_by_size` on N and the channel loop's extent; a flat-K
    convolution keeps to the tiles of :data:`~kernels._config.CONV_FLAT_K_TILES` (the others
    spill there)."""
    args = {**named_args, **kwargs}
    if args["FLAT_K"]:
        flat = [c for c in configs if _tile(c) in CONV_FLAT_K_TILES]
        configs = flat or configs
    k_size = args["C"] * (args["KH"] * args["KW"] if args["FLAT_K"] else 1)
    return prune_by_size({"BLOCK_N": ("N",), "BLOCK_K": ("K_SIZE",)}, narrow={"BLOCK_N": GEMM_NARROW_N})(
        configs, {**args, "K_SIZE": k_size}
    )


def _even_k(args) -> bool:
    """``EVEN_K``: the extent of the channel loop (``C`` tap-major, ``KH*KW*C`` flat) is a multiple
    of ``BLOCK_K``, so the loads need no channel mask. Computed per launch from the tile in use
    (forced, default or the autotuner's), hence a heuristic rather than a launcher argument."""
    return (args["C"] * (args["KH"] * args["KW"] if args["FLAT_K"] else 1)) % args["BLOCK_K"] == 0


def _unroll_taps(args) -> bool:
    """``UNROLL_TAPS``: the tap-major loop with the taps unrolled (one channel loop per tap) rather
    than one loop over all (tap, channel block) steps. Unrolled when there is one tap (a strided
    1x1 convolution: the plain GEMM loop), more than 32 taps (the stepped loop's tap bit mask is
    an int32), or at least :data:`TAP_UNROLL_MIN_STEPS` channel blocks per tap."""
    taps = args["KH"] * args["KW"]
    steps = -(-args["C"] // args["BLOCK_K"])
    return not args["FLAT_K"] and (taps == 1 or taps > 32 or steps >= TAP_UNROLL_MIN_STEPS)


#: The kernel as launched directly (interpreter, forced or default tile) and autotuned: the loop
#: switches ``EVEN_K`` and ``UNROLL_TAPS`` filled in from the arguments and the tile.
_int8_conv2d_kernel_launch = triton.heuristics({"EVEN_K": _even_k, "UNROLL_TAPS": _unroll_taps})(_int8_conv2d_kernel)

_int8_conv2d_kernel_tuned = triton.autotune(
    configs=GEMM_GPU_CONFIGS,
    key=["M_BUCKET", "N", "C", "H", "W", "KH", "KW", "stride_h", "stride_w", "HAS_WZP", "OUT_INT32",
         "RESIDUAL"],
    prune_configs_by={"early_config_prune": _prune_conv},
)(_int8_conv2d_kernel_launch)


# ---------------------------------------------------------------------------------------------
# The "tma" variant (kernels.settings.GEMM_VARIANTS): stride 1 or 2, rows of 16-byte multiples
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["z_x", "z_y", "z_a", "z_r", "ia", "ib", "add_z", "add_lo", "add_hi"])
def _int8_conv2d_tma_kernel(
    # TMA descriptors of the NHWC input in [1, BLOCK_M // BW, BW, BLOCK_K] boxes (a patch of the
    # image, BLOCK_K channels): stride 1, the input [B, H, W, C] four times; stride 2, its four
    # phases x[:, ph::2, pw::2, :] (00, 01, 10, 11). The weight as [N, KH*KW*C] in
    # [BLOCK_N, BLOCK_K] blocks.
    x00, x01, x10, x11, w_desc,
    # Per-output-channel vectors, padding digits, output, residual operand: as in _int8_conv2d_kernel
    bias_ptr, wzp_ptr, dig_ptr, mult_ptr, lo_ptr, hi_ptr, y_ptr, r_ptr,
    B, H, W, C, OH, OW, N,
    stride_wzp, stride_mult, stride_lo, stride_hi,
    z_x, z_y,
    z_a, z_r, ia, ib, add_m, add_z, add_lo, add_hi,
    # Autotune bucket of M (not used in the body); number of programs of the persistent grid
    M_BUCKET, NUM_PROGRAMS,
    # Meta-parameters; BW: the output tile is a patch of BLOCK_M // BW rows of BW pixels
    KH: tl.constexpr, KW: tl.constexpr, STRIDE: tl.constexpr, PAD_TOP: tl.constexpr, PAD_LEFT: tl.constexpr,
    PAD_CORR: tl.constexpr, NDIG: tl.constexpr, TP: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, RESIDUAL: tl.constexpr,
    USE_RINT: tl.constexpr, BW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """A convolution of stride 1 or 2 on a persistent grid with TMA loads.

    An output tile is a ``BH x BW`` patch of one image's output pixels (``BH = BLOCK_M // BW``)
    times ``BLOCK_N`` channels. With stride 1, for tap ``(kh, kw)`` the input pixels the patch
    needs are the patch shifted by ``(kh - PAD_TOP, kw - PAD_LEFT)``: one TMA box of the NHWC
    input, which the hardware zero-fills where it leaves the image (the padding, corrected exactly
    as in the pointer kernel) or runs past ``C`` (those channels meet the next tap's weights,
    times zero). One pipelined loop walks all (tap, channel block) steps with scalar index
    arithmetic only. With stride 2, input row ``2 oh + dh`` (``dh = kh - PAD_TOP``) is row
    ``oh + floor(dh / 2)`` of phase ``dh mod 2`` (the rows of that parity), and likewise for
    columns: a tap's pixels are a box of one of the four phases, chosen at compile time (the
    taps are unrolled, one channel loop each). The weight block of a step is
    ``w[n0:n0+BLOCK_N, tap*C + c0:...]``. Rows of a patch past ``OH``/``OW`` are computed and not
    stored.
    """
    BH: tl.constexpr = BLOCK_M // BW
    tiles_h = tl.cdiv(OH, BH)
    tiles_w = tl.cdiv(OW, BW)
    num_pid_m = B * tiles_h * tiles_w
    num_pid_n = tl.cdiv(N, BLOCK_N)
    c_steps = tl.cdiv(C, BLOCK_K)
    i = tl.arange(0, BLOCK_M)
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_PROGRAMS):
        pid_m, pid_n = grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        img = pid_m // (tiles_h * tiles_w)
        patch = pid_m - img * (tiles_h * tiles_w)
        oh0 = (patch // tiles_w) * BH
        ow0 = (patch % tiles_w) * BW
        oh = oh0 + i // BW  # [BLOCK_M] output pixels of the patch, row-major
        ow = ow0 + i % BW
        off_n = pid_n * BLOCK_N
        offs_n = off_n + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        row_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
        if PAD_CORR:
            acc = padding_correction(acc, oh * STRIDE - PAD_TOP, ow * STRIDE - PAD_LEFT, offs_n, dig_ptr, H, W, N,
                                     z_x, KH, KW, NDIG, TP)  # fmt: skip
        if STRIDE == 1:
            for step in range(0, KH * KW * c_steps):
                tap = step // c_steps
                c0 = (step - tap * c_steps) * BLOCK_K
                kh = tap // KW
                a = x00.load([img, oh0 + kh - PAD_TOP, ow0 + (tap - kh * KW) - PAD_LEFT, c0])
                a = a.reshape(BLOCK_M, BLOCK_K)
                b = w_desc.load([off_n, tap * C + c0])  # [BLOCK_N, BLOCK_K]: K-major B
                acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
                if HAS_WZP:
                    row_sum += tl.sum(a.to(tl.int32), axis=1)
        else:
            for kh in tl.static_range(KH):
                for kw in tl.static_range(KW):
                    # the tap's phase and its offset in the phase's grid (compile-time constants)
                    ph = (kh - PAD_TOP) % 2
                    pw = (kw - PAD_LEFT) % 2
                    dh = (kh - PAD_TOP - ph) // 2
                    dw = (kw - PAD_LEFT - pw) // 2
                    for c0 in range(0, C, BLOCK_K):
                        a = phase_box(x00, x01, x10, x11, [img, oh0 + dh, ow0 + dw, c0], ph, pw)
                        a = a.reshape(BLOCK_M, BLOCK_K)
                        b = w_desc.load([off_n, (kh * KW + kw) * C + c0])
                        acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
                        if HAS_WZP:
                            row_sum += tl.sum(a.to(tl.int32), axis=1)
        gemm_epilogue(acc, row_sum, (img * OH + oh) * OW + ow, (oh < OH) & (ow < OW), offs_n, N, bias_ptr, wzp_ptr,
                      stride_wzp, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y, y_ptr, N, r_ptr, N,
                      z_a, z_r, ia, ib, add_m, add_z, add_lo, add_hi, HAS_BIAS, HAS_WZP, OUT_INT32, RESIDUAL,
                      USE_RINT)  # fmt: skip


def _set_conv_tma_blocks(nargs: dict) -> None:
    """Autotune pre-hook (and direct-launch hook) of the TMA convolution: the descriptors' block
    shapes follow the tile being launched."""
    bw = nargs["BW"]
    for name in ("x00", "x01", "x10", "x11"):
        nargs[name].block_shape = [1, nargs["BLOCK_M"] // bw, bw, nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]




def _prune_conv_tma(configs, named_args, **kwargs):
    """:func:`~kernels._config.prune_by_size` on N and C; with stride 2 and several taps, without
    the tiles of :data:`~kernels._config.CONV_TMA_STRIDED_SPILLING` (they spill there)."""
    args = {**named_args, **kwargs}
    if args["STRIDE"] == 2 and args["KH"] * args["KW"] > 1:
        configs = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps)
                   not in CONV_TMA_STRIDED_SPILLING] or configs
    return prune_by_size({"BLOCK_N": ("N",), "BLOCK_K": ("C",)}, narrow={"BLOCK_N": GEMM_NARROW_N})(configs, args)


_int8_conv2d_tma_kernel_tuned = triton.autotune(
    configs=[triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_set_conv_tma_blocks)
             for c in GEMM_TMA_CONFIGS],
    key=["M_BUCKET", "N", "C", "H", "W", "KH", "KW", "STRIDE", "HAS_WZP", "OUT_INT32", "RESIDUAL"],
    prune_configs_by={"early_config_prune": _prune_conv_tma},
)(_int8_conv2d_tma_kernel)


# =============================================================================================
# Launcher
# =============================================================================================
def padding_digits(w: Tensor, w_zp: Optional[Tensor]) -> Tuple[Tensor, int, int]:
    """Digit planes of the per-tap weight sums, for the padding correction.

    ``S[t, n] = sum_c (w[n, t, c] - z_w[n])`` (int64) is written as ``sum_i 256^i D_i[n, t]`` with
    signed digits ``D_i`` in [-128, 127], using the fewest planes ``NDIG`` (at most 4, which is
    exact modulo 2^32 for any value). Returns ``(D int8 [NDIG, N, TP], NDIG, TP)`` with the taps
    zero-padded to ``TP = max(32, next_pow2(KH * KW))`` (the K of an int8 tensor-core dot).
    """
    N, KH, KW, C = w.shape
    taps = KH * KW
    tp = max(32, triton.next_power_of_2(taps))
    s = w.reshape(N, taps, C).sum(dim=2, dtype=torch.int64)
    if w_zp is not None:
        s = s - C * w_zp.to(torch.int64).reshape(-1, 1)
    lo, hi = int(s.min().item()), int(s.max().item())
    ndig = 1
    while ndig < 4 and not (-128 * (256**ndig - 1) // 255 <= lo and hi <= 127 * (256**ndig - 1) // 255):
        ndig += 1
    digits = torch.zeros((ndig, N, tp), dtype=torch.int8, device=w.device)
    for i in range(ndig):
        d = torch.remainder(s + 128, 256) - 128
        digits[i, :, :taps] = d.to(torch.int8)
        s = torch.div(s - d, 256, rounding_mode="floor")
    return digits, ndig, tp


class ConvPlan:
    """The convolution launch with its weight-side arguments bound once; calling it on an NHWC
    ``x`` checks ``x`` (dtype, rank, channels, layout, device), sizes the output and launches.

    The arguments must already be validated and normalized (as
    :func:`kernels.reference.check_conv_args` returns them, with ``bias`` folded); the padding
    digit planes are derived here, once. A 1x1, stride-1, unpadded convolution runs as a
    :class:`~kernels.gemm.GemmPlan` over the ``B*H*W`` pixels.

    With ``residual`` (a :class:`kernels.reference.ResidualAdd`) the plan fuses a residual add
    into the epilogue, for any kernel size, stride and padding (and in the GEMM delegation):
    ``plan(x, r)`` takes the add's other operand ``r`` (int8 NHWC ``[B, OH, OW, N]``, contiguous)
    and returns ``residual_add(conv(x), r, residual)`` bit for bit, without writing the
    convolution's own int8 output. A residual needs an int8 output (not ``out_int32``).
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
        residual: Optional[ref.ResidualAdd] = None,
    ) -> None:
        if residual is not None and out_int32:
            raise ValueError("a residual add needs the int8 output of the convolution, not its int32 accumulator "
                             "(out_int32=True)")
        N, KH, KW, C = w.shape
        self.N, self.KH, self.KW, self.C = N, KH, KW, C
        self.stride, self.pad = stride, pad
        self.device = w.device
        self.out_dtype = torch.int32 if out_int32 else torch.int8
        self.residual = residual
        self.gemm: Optional[GemmPlan] = None
        if KH == 1 and KW == 1 and stride == (1, 1) and pad == (0, 0, 0, 0):
            self.gemm = GemmPlan(w.view(N, C), bias, w_zp, multiplier, z_y, lo, hi, out_int32, residual)
            return
        pad_corr = z_x != 0 and any(pad)
        digits, ndig, tp = (
            DERIVED.get("pad_digits", (w, w_zp), None, lambda: padding_digits(w, w_zp)) if pad_corr else (None, 1, 32)
        )
        self._w_desc: Any = None  # the weight's TMA descriptor, False where TMA cannot read it
        self.static = dict(
            w_ptr=w, dig_ptr=digits if digits is not None else multiplier,
            C=C, N=N, stride_h=stride[0], stride_w=stride[1], pad_top=pad[0], pad_left=pad[2], z_x=z_x, z_y=z_y,
            KH=KH, KW=KW, FLAT_K=C < FLAT_K_MAX_CHANNELS, PAD_CORR=pad_corr, NDIG=ndig, TP=tp,
            OUT_INT32=out_int32, USE_RINT=USE_RINT, **epilogue_args(bias, w_zp, multiplier, lo, hi),
            **(_NO_RESIDUAL if residual is None else residual_args(residual)),
        )  # fmt: skip

    def __call__(self, x: Tensor, r: Optional[Tensor] = None) -> Tensor:
        B, H, W, C = ref.check_nhwc_input(x, self.C, self.device)
        N = self.N
        OH, OW = ref.conv_output_size(H, W, self.KH, self.KW, self.stride, self.pad)
        check_residual_operand(r, self.residual, (B, OH, OW, N), x, "ConvPlan", "[B, OH, OW, N]")
        if self.gemm is not None:
            r2 = None if r is None else r.view(B * H * W, N)
            return self.gemm(x.view(B * H * W, C), r2).view(B, H, W, N)
        y = torch.empty((B, OH, OW, N), dtype=self.out_dtype, device=x.device)
        M = B * OH * OW
        if M == 0 or N == 0:
            return y
        if (current_settings().gemm_variant == "tma" and self._tma_weight() and tma_ready(x.view(-1, C))
                and min(H, W) >= self.stride[0]):
            self._launch_tma(x, y, r)
            return y
        args = dict(self.static, x_ptr=x, y_ptr=y, r_ptr=y if r is None else r, B=B, H=H, W=W, OH=OH, OW=OW,
                    M_BUCKET=next_pow2_bucket(M))
        grid = lambda META: (cdiv(M, META["BLOCK_M"]) * cdiv(N, META["BLOCK_N"]),)  # noqa: E731
        launch(_int8_conv2d_kernel_launch, _int8_conv2d_kernel_tuned, "gemm", grid, args)
        return y

    # -- the "tma" variant (kernels.settings.GEMM_VARIANTS) ---------------------------------------
    def _tma_weight(self) -> bool:
        """Whether this convolution runs on the TMA kernel when the input allows (the same stride,
        1 or 2, in both directions; rows of a whole number of 16 bytes); the weight's descriptor
        is built once, here."""
        if self._w_desc is None:
            N, KH, KW, C = self.static["w_ptr"].shape
            w2 = self.static["w_ptr"].view(N, KH * KW * C)
            ok = self.stride[0] == self.stride[1] in TMA_STRIDES and C % 16 == 0 and tma_ready(w2)
            self._w_desc = TensorDescriptor(w2, [N, KH * KW * C], [KH * KW * C, 1], [16, 32]) if ok else False
        return self._w_desc is not False

    def _launch_tma(self, x: Tensor, y: Tensor, r: Optional[Tensor]) -> None:
        B, H, W, C = x.shape
        OH, OW, N = y.shape[1], y.shape[2], self.N
        skip = ("w_ptr", "stride_h", "stride_w", "pad_top", "pad_left", "FLAT_K")
        static = {k: v for k, v in self.static.items() if k not in skip}
        programs = persistent_programs(x.device)
        bw = tma_patch_width(OW)
        x00, x01, x10, x11 = input_descriptors(x, self.stride[0], [1, 16, bw, 32])
        args = dict(static, x00=x00, x01=x01, x10=x10, x11=x11, w_desc=self._w_desc, y_ptr=y,
                    r_ptr=y if r is None else r, B=B, H=H, W=W, OH=OH, OW=OW, M_BUCKET=next_pow2_bucket(B * OH * OW),
                    NUM_PROGRAMS=programs, BW=bw, STRIDE=self.stride[0], PAD_TOP=self.pad[0], PAD_LEFT=self.pad[2])

        def grid(META):
            bh = META["BLOCK_M"] // bw
            return (min(programs, B * cdiv(OH, bh) * cdiv(OW, bw) * cdiv(N, META["BLOCK_N"])),)

        launch(_int8_conv2d_tma_kernel, _int8_conv2d_tma_kernel_tuned, "gemm", grid, args,
               pre_hook=_set_conv_tma_blocks)


def int8_conv2d(
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
    bias_folded: bool = False,
    residual: Optional[ref.ResidualAdd] = None,
    r: Optional[Tensor] = None,
) -> Tensor:
    """Triton implicit-GEMM convolution; same contract as :func:`kernels.reference.int8_conv2d`.

    ``x`` int8 NHWC ``[B, H, W, C]``, ``w`` int8 ``[N, KH, KW, C]`` (both contiguous); ``padding``
    ``(top, bottom, left, right)``; returns int8 NHWC ``[B, OH, OW, N]`` (int32 if ``out_int32``).
    With ``residual`` and ``r`` (int8 NHWC ``[B, OH, OW, N]``) the residual add is fused into the
    epilogue: the result is ``kernels.reference.residual_add(int8_conv2d(x, w, ...), r, residual)``,
    bit for bit.
    """
    bias, w_zp, m, z_x, z_y, lo, hi, stride, pad = ref.check_conv_args(
        x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding
    )
    if not bias_folded:
        bias = DERIVED.get("fold_bias", (w, bias, w_zp), z_x, lambda: ref.fold_bias(w, bias, z_x, w_zp))
    return ConvPlan(w, bias, w_zp, m, z_x, z_y, lo, hi, stride, pad, out_int32, residual)(x, r)


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare with the reference: a 3x3 tap-major case and a 3-channel flat-K stem."""
    g = torch.Generator().manual_seed(0)
    ok = True
    for C, KH, stride, pad in ((40, 3, (1, 1), (1, 1, 1, 1)), (3, 5, (2, 2), (1, 2, 2, 1))):
        x = torch.randint(-128, 128, (2, 11, 9, C), generator=g, dtype=torch.int8).to(device)
        w = torch.randint(-128, 128, (24, KH, KH, C), generator=g, dtype=torch.int8).to(device)
        bias = torch.randint(-5000, 5000, (24,), generator=g, dtype=torch.int32).to(device)
        mult = (torch.rand(24, generator=g) * 1e-3).to(device)
        kwargs = dict(z_x=-5, w_zp=torch.tensor([2], dtype=torch.int32, device=device), z_y=-1, stride=stride,
                      padding=pad)  # fmt: skip
        ok &= torch.equal(int8_conv2d(x, w, bias, mult, **kwargs), ref.int8_conv2d(x, w, bias, mult, **kwargs))
    logger.info("int8_conv2d reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return bool(ok)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
