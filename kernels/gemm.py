"""int8 x int8 -> int32 GEMM with the fused requantization epilogue (Triton).

Layout follows Triton's matmul tutorial: tile configurations, the ``@triton.jit`` kernel, a thin
launcher, and a reference check (``python -m kernels.gemm``).

``y[m, n] = requant(sum_k (x[m,k] - z_x)(w[n,k] - z_w[n]) + bias[n])`` is computed as

* the int8 dot product ``sum_k x w`` (``tl.dot`` with an int32 accumulator, exact);
* ``+ bias'[n]`` where ``bias' = bias - z_x * sum_k w[n,k] + K * z_x * z_w[n]`` is folded once in
  the launcher (:func:`kernels.reference.fold_bias`), or passed already folded;
* ``- z_w[n] * sum_k x[m,k]``: the row sums of ``x`` are accumulated in the K loop only when the
  weights have a zero point (``HAS_WZP`` constexpr);
* then :func:`kernels.requant.requantize_channels` (the shared epilogue);
* with ``RESIDUAL`` (constexpr), a residual add fused after it: the tile of the other operand
  ``r`` (int8 ``[M, N]``, same offsets) is loaded and :func:`kernels.requant.requantize_add`
  applies the add's contract to the layer's requantized int8 tile and ``r``
  (:class:`kernels.reference.ResidualAdd`); only the add's output is stored, so the layer's int8
  output is never written to memory and read back.

Both operands are K-contiguous: ``x`` is ``[M, K]`` row-major and ``w`` is ``[N, K]`` row-major,
read as a ``[BLOCK_K, BLOCK_N]`` tile by transposed indexing (the K-major B operand Hopper's int8
wgmma wants).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import (
    DERIVED,
    INTERPRETED,
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
from .requant import add_gemm_corrections, requantize_add, requantize_channels
from .settings import current_settings, use_settings

try:  # host-side TMA descriptors (Triton 3.4 and later)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: the "tma" variant falls back to "pointers"
    TensorDescriptor = None

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


# =============================================================================================
# Kernel
# =============================================================================================
@triton.jit
def grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)`` of tile ``tile_id`` in grouped ("swizzled") order: GROUP_M row blocks
    share the same column blocks in L2."""
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = tile_id // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((tile_id % num_pid_in_group) % group_size_m)
    pid_n = (tile_id % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def phase_box(x00, x01, x10, x11, coords, PH: tl.constexpr, PW: tl.constexpr):
    """The TMA box at ``coords`` of the NHWC input phase ``(PH, PW)`` (rows ``PH::2``, columns
    ``PW::2``; with stride 1 all four are the whole input): the descriptors of
    :func:`input_descriptors`, shared by the TMA convolution and depthwise kernels."""
    if PH == 0:
        if PW == 0:
            box = x00.load(coords)
        else:
            box = x01.load(coords)
    else:
        if PW == 0:
            box = x10.load(coords)
        else:
            box = x11.load(coords)
    return box


@triton.jit
def gemm_epilogue(
    acc, row_sum, rows, row_ok, offs_n, N,
    bias_ptr, wzp_ptr, stride_wzp, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y,
    y_ptr, stride_ym, r_ptr, stride_rm, z_a, z_r, ia, ib, add_m, add_z, add_lo, add_hi,
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, RESIDUAL: tl.constexpr,
    USE_RINT: tl.constexpr,
):  # fmt: skip
    """The GEMM's epilogue on one ``[BLOCK_M, BLOCK_N]`` tile (output rows ``rows``, stored where
    ``row_ok``; columns ``offs_n``, stored below ``N``): the exact int32 corrections, then the
    int32 store, or the requantization (and the fused residual add, whose operand has the
    output's offsets) and the int8 store. Shared by the GEMM and convolution kernels."""
    # -- exact int32 corrections
    mask_n = offs_n < N
    acc = add_gemm_corrections(acc, row_sum, offs_n, mask_n, bias_ptr, wzp_ptr, stride_wzp, HAS_BIAS, HAS_WZP)

    # -- epilogue and store
    rows = rows.to(tl.int64)
    y_ptrs = y_ptr + rows[:, None] * stride_ym + offs_n[None, :]
    mask = row_ok[:, None] & mask_n[None, :]
    if OUT_INT32:
        tl.store(y_ptrs, acc, mask=mask)
    else:
        out = requantize_channels(acc, offs_n, mask_n, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y,
                                  USE_RINT, ROWS=True)
        if RESIDUAL:
            # the fused residual add: the layer's int8 tile (exactly its unfused output) plus r
            r_ptrs = r_ptr + rows[:, None] * stride_rm + offs_n[None, :]
            r = tl.load(r_ptrs, mask=mask, other=0)
            out = requantize_add(out, r, z_a, z_r, ia, ib, add_m, add_z, add_lo, add_hi, USE_RINT)
        tl.store(y_ptrs, out, mask=mask)


@triton.jit(do_not_specialize=["z_y", "z_a", "z_r", "ia", "ib", "add_z", "add_lo", "add_hi"])
def _int8_gemm_kernel(
    # Pointers: operands, per-output-channel vectors, output
    x_ptr, w_ptr,  # int8 [M, K], int8 [N, K]
    bias_ptr, wzp_ptr,  # int32 [N] (folded bias), int32 [1|N] weight zero point
    mult_ptr, lo_ptr, hi_ptr,  # float32 [1|N] multiplier, int32 [1|N] bounds
    y_ptr,  # int8 (or int32) [M, N]
    r_ptr,  # RESIDUAL only: int8 [M, N], the residual add's other operand (else any pointer)
    # Problem size
    M, N, K,
    # Row strides (the K and N dimensions are contiguous)
    stride_xm, stride_wn, stride_ym, stride_rm,
    # Per-channel strides: 0 for a per-tensor value, 1 for one value per output channel
    stride_wzp, stride_mult, stride_lo, stride_hi,
    # Output zero point
    z_y,
    # RESIDUAL only: the add (kernels.reference.ResidualAdd): zero points of the layer's output and
    # of r, integer multipliers, float32 multiplier, output zero point and bounds
    z_a, z_r, ia, ib, add_m, add_z, add_lo, add_hi,
    # Autotune bucket of M (not used in the body)
    M_BUCKET,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, RESIDUAL: tl.constexpr,
    USE_RINT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    # -- tile offsets; rows/columns past M/N wrap around (loads stay in bounds without a mask,
    #    the store is masked). Row offsets are int64: M * K may exceed 2^31.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :]  # [BLOCK_M, BLOCK_K]
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None]  # [BLOCK_K, BLOCK_N], K-major

    # -- main loop: int8 dot products accumulated in int32
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    row_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + offs_k) < K
        a = tl.load(x_ptrs, mask=k_ok[None, :], other=0)
        b = tl.load(w_ptrs, mask=k_ok[:, None], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        if HAS_WZP:
            row_sum += tl.sum(a.to(tl.int32), axis=1)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K

    gemm_epilogue(acc, row_sum, offs_m, offs_m < M, offs_n, N, bias_ptr, wzp_ptr, stride_wzp, mult_ptr, stride_mult,
                  lo_ptr, stride_lo, hi_ptr, stride_hi, z_y, y_ptr, stride_ym, r_ptr, stride_rm, z_a, z_r, ia, ib, add_m,
                  add_z, add_lo, add_hi, HAS_BIAS, HAS_WZP, OUT_INT32, RESIDUAL, USE_RINT)


_int8_gemm_kernel_tuned = triton.autotune(
    configs=GEMM_GPU_CONFIGS,
    key=["M_BUCKET", "N", "K", "HAS_WZP", "OUT_INT32", "RESIDUAL"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_N": ("N",), "BLOCK_K": ("K",)},
                                                          narrow={"BLOCK_N": GEMM_NARROW_N})},
)(_int8_gemm_kernel)


@triton.jit(do_not_specialize=["z_y", "z_a", "z_r", "ia", "ib", "add_z", "add_lo", "add_hi"])
def _int8_gemm_tma_kernel(
    # TMA descriptors of the operands: x int8 [M, K] in [BLOCK_M, BLOCK_K] blocks, w int8 [N, K]
    # in [BLOCK_N, BLOCK_K] blocks (both K-contiguous; blocks past M, N or K read as zeros)
    x_desc, w_desc,
    # Per-output-channel vectors, output, residual operand: as in _int8_gemm_kernel
    bias_ptr, wzp_ptr, mult_ptr, lo_ptr, hi_ptr, y_ptr, r_ptr,
    M, N, K,
    stride_ym, stride_rm,
    stride_wzp, stride_mult, stride_lo, stride_hi,
    z_y,
    z_a, z_r, ia, ib, add_m, add_z, add_lo, add_hi,
    # Autotune bucket of M (not used in the body); number of programs of the persistent grid
    M_BUCKET, NUM_PROGRAMS,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, RESIDUAL: tl.constexpr,
    USE_RINT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    """The same GEMM as :func:`_int8_gemm_kernel` on a persistent grid with TMA loads.

    ``NUM_PROGRAMS`` programs (one per SM at most) walk the output tiles in grouped order, tile
    ``start, start + NUM_PROGRAMS, ...``; each tile's K loop loads its operand blocks through the
    tensor-memory accelerator (no address arithmetic or masks: the hardware zero-fills blocks past
    the edges, and zeros add nothing to the dot product nor to the row sums), then runs the shared
    epilogue. Zero-filled K columns are why K needs no mask; the epilogue masks rows and columns.
    """
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_tiles = num_pid_m * num_pid_n
    for tile_id in tl.range(tl.program_id(0), num_tiles, NUM_PROGRAMS):
        pid_m, pid_n = grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        row_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            a = x_desc.load([off_m, k0])  # [BLOCK_M, BLOCK_K]
            b = w_desc.load([off_n, k0])  # [BLOCK_N, BLOCK_K]: K-major B, as wgmma wants it
            acc = tl.dot(a, b.T, acc, out_dtype=tl.int32)
            if HAS_WZP:
                row_sum += tl.sum(a.to(tl.int32), axis=1)
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        gemm_epilogue(acc, row_sum, offs_m, offs_m < M, offs_n, N, bias_ptr, wzp_ptr, stride_wzp, mult_ptr, stride_mult,
                      lo_ptr, stride_lo, hi_ptr, stride_hi, z_y, y_ptr, stride_ym, r_ptr, stride_rm, z_a, z_r, ia, ib,
                      add_m, add_z, add_lo, add_hi, HAS_BIAS, HAS_WZP, OUT_INT32, RESIDUAL, USE_RINT)


def _set_tma_blocks(nargs: dict) -> None:
    """Autotune pre-hook (and direct-launch hook) of the TMA kernel: the descriptors' block shapes
    follow the tile being launched."""
    nargs["x_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    nargs["w_desc"].block_shape = [nargs["BLOCK_N"], nargs["BLOCK_K"]]


_int8_gemm_tma_kernel_tuned = triton.autotune(
    configs=[triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=_set_tma_blocks)
             for c in GEMM_TMA_CONFIGS],
    key=["M_BUCKET", "N", "K", "HAS_WZP", "OUT_INT32", "RESIDUAL"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_N": ("N",), "BLOCK_K": ("K",)},
                                                          narrow={"BLOCK_N": GEMM_NARROW_N})},
)(_int8_gemm_tma_kernel)


# =============================================================================================
# Launcher
# =============================================================================================
#: Programs of the persistent TMA grid under Triton's interpreter (a few, so that each program
#: walks several tiles there too).
INTERPRETER_PROGRAMS: int = 3


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def persistent_programs(device: torch.device) -> int:
    """Programs of a persistent grid on ``device``: one per SM on a GPU."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else INTERPRETER_PROGRAMS


def tma_ready(t: Tensor) -> bool:
    """Whether the 2-D int8 operand ``t`` can be read through a TMA descriptor: Triton has host
    descriptors, the device is of compute capability 9.0 or later (or Triton's interpreter runs
    the kernels), the rows are contiguous, 16-byte aligned, and 16 bytes apart times a whole
    number (K a multiple of 16 for a contiguous operand)."""
    if TensorDescriptor is None or t.stride(1) != 1 or t.stride(0) % 16 or t.data_ptr() % 16:
        return False
    if t.device.type == "cuda":
        return torch.cuda.get_device_capability(t.device)[0] >= 9
    return INTERPRETED


#: Widths of the output patches of the TMA convolution and depthwise kernels (powers of two: Triton's tensor shapes).
TMA_PATCH_WIDTHS = (16, 8, 4)


def tma_patch_width(OW: int) -> int:
    """The patch width for ``OW`` output columns: the one of :data:`TMA_PATCH_WIDTHS` that covers
    them with the fewest columns (56 -> 8, 28 -> 4, 14 -> 16, 7 -> 8), the widest on a tie."""
    return min(TMA_PATCH_WIDTHS, key=lambda bw: (cdiv(OW, bw) * bw, -bw))


#: Strides of the TMA convolution and depthwise kernels (the same in both directions).
TMA_STRIDES = (1, 2)


def input_descriptors(x: Tensor, stride: int, block: list) -> list:
    """The four input descriptors of the TMA convolution and depthwise kernels (:func:`phase_box`):
    stride 1, ``x`` itself four times;
    stride 2, its phases ``x[:, ph::2, pw::2, :]`` for ``(ph, pw)`` = 00, 01, 10, 11 (each a
    strided view: rows ``2 W C`` bytes apart, pixels ``2 C``)."""
    B, H, W, C = x.shape
    if stride == 1:
        return [TensorDescriptor(x, [B, H, W, C], [H * W * C, W * C, C, 1], block)] * 4
    return [TensorDescriptor(x[:, ph::2, pw::2, :], [B, (H - ph + 1) // 2, (W - pw + 1) // 2, C],
                             [H * W * C, 2 * W * C, 2 * C, 1], block) for ph in (0, 1) for pw in (0, 1)]


#: Kernel arguments of the residual epilogue when there is none (RESIDUAL off: never read).
_NO_RESIDUAL = dict(z_a=0, z_r=0, ia=0, ib=0, add_m=1.0, add_z=0, add_lo=ref.INT8_MIN, add_hi=ref.INT8_MAX,
                    RESIDUAL=False)


def check_residual_operand(r: Optional[Tensor], residual: Optional[ref.ResidualAdd], shape: tuple, x: Tensor,
                           plan: str, dims: str) -> None:
    """The fused residual add's other operand ``r`` as a launch plan takes it: required exactly
    when the plan has a ``residual``, an int8 tensor of ``shape`` (``dims`` names its dimensions,
    NHWC when 4-D) on ``x``'s device. ``plan`` names the plan in the messages."""
    layout = f"NHWC {dims}" if len(shape) == 4 else dims
    if residual is None:
        if r is not None:
            raise ValueError(f"r is given but this {plan} has no residual add ({plan}(..., residual=...))")
        return
    if r is None:
        raise ValueError(f"this {plan} fuses a residual add: pass its other operand r (int8 {layout})")
    ref.check_tensor(r, "r", torch.int8, len(shape), layout)
    if tuple(r.shape) != tuple(shape):
        raise ValueError(f"r must be {dims} = {tuple(shape)}, got {tuple(r.shape)}")
    if r.device != x.device:
        raise ValueError(f"r is on {r.device} but x is on {x.device}")


def residual_args(residual: ref.ResidualAdd) -> dict:
    """The kernel arguments of a fused residual add, validated like :func:`kernels.reference.int8_add`'s
    (zero points and bounds in [-128, 127], ``lo <= hi``, ``|ia|, |ib| <= 2^15``, a finite multiplier,
    used as its float32 value)."""
    if not isinstance(residual, ref.ResidualAdd):
        raise ValueError(f"residual must be a kernels.reference.ResidualAdd, got {type(residual).__name__}")
    z_a = ref.check_int8_zero_point(residual.z_a, "residual.z_a")
    z_r = ref.check_int8_zero_point(residual.z_b, "residual.z_b")
    z_y = ref.check_int8_zero_point(residual.z_y, "residual.z_y")
    for v, nm in ((residual.ia, "ia"), (residual.ib, "ib")):
        if isinstance(v, bool) or not isinstance(v, int) or abs(v) > ref.ADD_MAX_MULTIPLIER:
            raise ValueError(f"residual.{nm} must be a Python int with |{nm}| <= {ref.ADD_MAX_MULTIPLIER}, got {v!r}")
    lo, hi = ref._check_scalar_bounds(residual.lo, residual.hi)
    m = ref._check_scalar_multiplier(residual.multiplier, "residual.multiplier")
    return dict(z_a=z_a, z_r=z_r, ia=int(residual.ia), ib=int(residual.ib), add_m=m, add_z=z_y, add_lo=lo, add_hi=hi,
                RESIDUAL=True)


class GemmPlan:
    """The GEMM launch with its weight-side arguments bound once; calling it on ``x`` ``[M, K]``
    checks ``x`` (dtype, rank, K, layout, device), sizes the output and launches.

    The weight-side arguments must already be validated and normalized (as
    :func:`kernels.reference.check_gemm_args` returns them, with ``bias`` folded): a network
    layer builds its plan once and reuses it on every call (see ``dfq_gpu.int8.layers``).

    With ``residual`` (a :class:`kernels.reference.ResidualAdd`) the plan fuses a residual add
    into the epilogue: ``plan(x, r)`` takes the add's other operand ``r`` (int8 ``[M, N]``,
    contiguous) and returns ``residual_add(gemm(x), r, residual)`` bit for bit, without writing
    the GEMM's own int8 output. A residual needs an int8 output (not ``out_int32``).
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
        out_int32: bool,
        residual: Optional[ref.ResidualAdd] = None,
    ) -> None:
        if residual is not None and out_int32:
            raise ValueError("a residual add needs the int8 output of the GEMM, not its int32 accumulator "
                             "(out_int32=True)")
        self.N, self.K = w.shape
        self.device = w.device
        self.out_dtype = torch.int32 if out_int32 else torch.int8
        self.residual = residual
        self._w_desc: Any = None  # the weight's TMA descriptor, False where TMA cannot read it
        self.static = dict(
            w_ptr=w, N=self.N, K=self.K, stride_wn=w.stride(0), z_y=z_y, OUT_INT32=out_int32, USE_RINT=USE_RINT,
            **epilogue_args(bias, w_zp, multiplier, lo, hi),
            **(_NO_RESIDUAL if residual is None else residual_args(residual)),
        )

    def __call__(self, x: Tensor, r: Optional[Tensor] = None) -> Tensor:
        ref.check_tensor(x, "x", torch.int8, 2, "[M, K]")
        if x.shape[1] != self.K:
            raise ValueError(f"x is [M, K] = {tuple(x.shape)} but the weight has K = {self.K}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device} but the weight is on {self.device}")
        M, N = x.shape[0], self.N
        check_residual_operand(r, self.residual, (M, N), x, "GemmPlan", "[M, N]")
        y = torch.empty((M, N), dtype=self.out_dtype, device=x.device)
        if M == 0 or N == 0:
            return y
        if current_settings().gemm_variant == "tma" and self._tma_weight() and tma_ready(x):
            self._launch_tma(x, y, r)
            return y
        args = dict(self.static, x_ptr=x, y_ptr=y, r_ptr=y if r is None else r, M=M, stride_xm=x.stride(0),
                    stride_ym=y.stride(0), stride_rm=y.stride(0) if r is None else r.stride(0),
                    M_BUCKET=next_pow2_bucket(M))
        grid = lambda META: (cdiv(M, META["BLOCK_M"]) * cdiv(N, META["BLOCK_N"]),)  # noqa: E731
        launch(_int8_gemm_kernel, _int8_gemm_kernel_tuned, "gemm", grid, args)
        return y

    # -- the "tma" variant (kernels.settings.GEMM_VARIANTS) ---------------------------------------
    def _tma_weight(self) -> bool:
        """Whether the weight can be read through a TMA descriptor (built once, here)."""
        if self._w_desc is None:
            w = self.static["w_ptr"]
            self._w_desc = TensorDescriptor(w, [self.N, self.K], [w.stride(0), 1], [16, 32]) if tma_ready(w) else False
        return self._w_desc is not False

    def _launch_tma(self, x: Tensor, y: Tensor, r: Optional[Tensor]) -> None:
        M, N = x.shape[0], self.N
        static = {k: v for k, v in self.static.items() if k not in ("w_ptr", "stride_wn")}
        programs = persistent_programs(x.device)
        args = dict(static, x_desc=TensorDescriptor(x, [M, self.K], [x.stride(0), 1], [16, 32]), w_desc=self._w_desc,
                    y_ptr=y, r_ptr=y if r is None else r, M=M, stride_ym=y.stride(0),
                    stride_rm=y.stride(0) if r is None else r.stride(0), M_BUCKET=next_pow2_bucket(M),
                    NUM_PROGRAMS=programs)  # fmt: skip
        grid = lambda META: (min(programs, cdiv(M, META["BLOCK_M"]) * cdiv(N, META["BLOCK_N"])),)  # noqa: E731
        launch(_int8_gemm_tma_kernel, _int8_gemm_tma_kernel_tuned, "gemm", grid, args, pre_hook=_set_tma_blocks)


def int8_gemm(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: ref.FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Tensor] = None,
    z_y: int = 0,
    lo: ref.IntOrTensor = ref.INT8_MIN,
    hi: ref.IntOrTensor = ref.INT8_MAX,
    out_int32: bool = False,
    bias_folded: bool = False,
    residual: Optional[ref.ResidualAdd] = None,
    r: Optional[Tensor] = None,
) -> Tensor:
    """Triton int8 GEMM; same contract and arguments as :func:`kernels.reference.int8_gemm`.

    ``x`` int8 ``[M, K]`` and ``w`` int8 ``[N, K]`` (both contiguous); returns int8 ``[M, N]`` or
    the int32 accumulator when ``out_int32``. With ``residual`` and ``r`` (int8 ``[M, N]``) the
    residual add is fused into the epilogue: the result is
    ``kernels.reference.residual_add(int8_gemm(x, w, ...), r, residual)``, bit for bit.
    """
    bias, w_zp, m, z_x, z_y, lo, hi = ref.check_gemm_args(x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi)
    if not bias_folded:
        bias = DERIVED.get("fold_bias", (w, bias, w_zp), z_x, lambda: ref.fold_bias(w, bias, z_x, w_zp))
    return GemmPlan(w, bias, w_zp, m, z_y, lo, hi, out_int32, residual)(x, r)


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare the kernel with the reference on one odd-sized problem with every feature on."""
    g = torch.Generator().manual_seed(0)
    M, K, N = 67, 93, 45
    x = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8).to(device)
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8).to(device)
    bias = torch.randint(-5000, 5000, (N,), generator=g, dtype=torch.int32).to(device)
    w_zp = torch.randint(-3, 4, (N,), generator=g, dtype=torch.int32).to(device)
    mult = (torch.rand(N, generator=g) * 1e-3).to(device)
    kwargs = dict(z_x=-7, w_zp=w_zp, z_y=3, lo=-100, hi=120)
    ok = torch.equal(int8_gemm(x, w, bias, mult, **kwargs), ref.int8_gemm(x, w, bias, mult, **kwargs))
    r = torch.randint(-128, 128, (M, N), generator=g, dtype=torch.int8).to(device)
    spec = ref.ResidualAdd(3, -9, *ref.add_multipliers(0.031, 0.017, 0.04)[:2], 1e-3, 4, -90, 110)
    ok &= torch.equal(int8_gemm(x, w, bias, mult, residual=spec, r=r, **kwargs),
                      ref.residual_add(ref.int8_gemm(x, w, bias, mult, **kwargs), r, spec))
    x16, w16 = x[:, :80].contiguous(), w[:, :80].contiguous()  # K = 80: TMA can read the operands
    with use_settings(gemm_variant="tma"):
        ok &= torch.equal(int8_gemm(x16, w16, bias, mult, **kwargs), ref.int8_gemm(x16, w16, bias, mult, **kwargs))
    logger.info("int8_gemm reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return ok


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
