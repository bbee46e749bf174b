"""int8 x int8 -> int32 GEMM with the fused requantization epilogue (Triton).

Layout follows Triton's matmul tutorial: tile configurations, the ``@triton.jit`` kernel, a thin
launcher, and a reference check (``python -m kernels.gemm``).

``y[m, n] = requant(sum_k (x[m,k] - z_x)(w[n,k] - z_w[n]) + bias[n])`` is computed as

* the int8 dot product ``sum_k x w`` (``tl.dot`` with an int32 accumulator, exact);
* ``+ bias'[n]`` where ``bias' = bias - z_x * sum_k w[n,k] + K * z_x * z_w[n]`` is folded once in
  the launcher (:func:`kernels.reference.fold_bias`), or passed already folded;
* ``- z_w[n] * sum_k x[m,k]``: the row sums of ``x`` are accumulated in the K loop only when the
  weights have a zero point (``HAS_WZP`` constexpr);
* then :func:`kernels.requant.requantize_channels` (the shared epilogue).

Both operands are K-contiguous: ``x`` is ``[M, K]`` row-major and ``w`` is ``[N, K]`` row-major,
read as a ``[BLOCK_K, BLOCK_N]`` tile by transposed indexing (the K-major B operand Hopper's int8
wgmma wants).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import (
    DERIVED,
    GEMM_GPU_CONFIGS,
    USE_RINT,
    cdiv,
    epilogue_args,
    launch,
    next_pow2_bucket,
    prune_by_size,
)
from .requant import add_gemm_corrections, requantize_channels

logger = logging.getLogger(__name__)

Tensor = torch.Tensor


# =============================================================================================
# Kernel
# =============================================================================================
@triton.jit(do_not_specialize=["z_y"])
def _int8_gemm_kernel(
    # Pointers: operands, per-output-channel vectors, output
    x_ptr, w_ptr,  # int8 [M, K], int8 [N, K]
    bias_ptr, wzp_ptr,  # int32 [N] (folded bias), int32 [1|N] weight zero point
    mult_ptr, lo_ptr, hi_ptr,  # float32 [1|N] multiplier, int32 [1|N] bounds
    y_ptr,  # int8 (or int32) [M, N]
    # Problem size
    M, N, K,
    # Row strides (the K and N dimensions are contiguous)
    stride_xm, stride_wn, stride_ym,
    # Per-channel strides: 0 for a per-tensor value, 1 for one value per output channel
    stride_wzp, stride_mult, stride_lo, stride_hi,
    # Output zero point
    z_y,
    # Autotune bucket of M (not used in the body)
    M_BUCKET,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr, OUT_INT32: tl.constexpr, USE_RINT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # -- grouped ("swizzled") program order: GROUP_M row blocks share the same column blocks in L2
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

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

    # -- exact int32 corrections
    mask_n = offs_n < N
    acc = add_gemm_corrections(acc, row_sum, offs_n, mask_n, bias_ptr, wzp_ptr, stride_wzp, HAS_BIAS, HAS_WZP)

    # -- epilogue and store
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    mask = (offs_m < M)[:, None] & mask_n[None, :]
    if OUT_INT32:
        tl.store(y_ptrs, acc, mask=mask)
    else:
        out = requantize_channels(acc, offs_n, mask_n, mult_ptr, stride_mult, lo_ptr, stride_lo, hi_ptr, stride_hi, z_y,
                                  USE_RINT, ROWS=True)
        tl.store(y_ptrs, out, mask=mask)


_int8_gemm_kernel_tuned = triton.autotune(
    configs=GEMM_GPU_CONFIGS,
    key=["M_BUCKET", "N", "K", "HAS_WZP", "OUT_INT32"],
    prune_configs_by={"early_config_prune": prune_by_size({"BLOCK_N": ("N",), "BLOCK_K": ("K",)})},
)(_int8_gemm_kernel)


# =============================================================================================
# Launcher
# =============================================================================================
class GemmPlan:
    """The GEMM launch with its weight-side arguments bound once; calling it on ``x`` ``[M, K]``
    checks ``x`` (dtype, rank, K, layout, device), sizes the output and launches.

    The weight-side arguments must already be validated and normalized (as
    :func:`kernels.reference.check_gemm_args` returns them, with ``bias`` folded): a network
    layer builds its plan once and reuses it on every call (see ``dfq_gpu.int8.layers``).
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
    ) -> None:
        self.N, self.K = w.shape
        self.device = w.device
        self.out_dtype = torch.int32 if out_int32 else torch.int8
        self.static = dict(
            w_ptr=w, N=self.N, K=self.K, stride_wn=w.stride(0), z_y=z_y, OUT_INT32=out_int32, USE_RINT=USE_RINT,
            **epilogue_args(bias, w_zp, multiplier, lo, hi),
        )

    def __call__(self, x: Tensor) -> Tensor:
        ref.check_tensor(x, "x", torch.int8, 2, "[M, K]")
        if x.shape[1] != self.K:
            raise ValueError(f"x is [M, K] = {tuple(x.shape)} but the weight has K = {self.K}")
        if x.device != self.device:
            raise ValueError(f"x is on {x.device} but the weight is on {self.device}")
        M, N = x.shape[0], self.N
        y = torch.empty((M, N), dtype=self.out_dtype, device=x.device)
        if M == 0 or N == 0:
            return y
        args = dict(self.static, x_ptr=x, y_ptr=y, M=M, stride_xm=x.stride(0), stride_ym=y.stride(0),
                    M_BUCKET=next_pow2_bucket(M))
        grid = lambda META: (cdiv(M, META["BLOCK_M"]) * cdiv(N, META["BLOCK_N"]),)  # noqa: E731
        launch(_int8_gemm_kernel, _int8_gemm_kernel_tuned, "gemm", grid, args)
        return y


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
) -> Tensor:
    """Triton int8 GEMM; same contract and arguments as :func:`kernels.reference.int8_gemm`.

    ``x`` int8 ``[M, K]`` and ``w`` int8 ``[N, K]`` (both contiguous); returns int8 ``[M, N]`` or
    the int32 accumulator when ``out_int32``.
    """
    bias, w_zp, m, z_x, z_y, lo, hi = ref.check_gemm_args(x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi)
    if not bias_folded:
        bias = DERIVED.get("fold_bias", (w, bias, w_zp), z_x, lambda: ref.fold_bias(w, bias, z_x, w_zp))
    return GemmPlan(w, bias, w_zp, m, z_y, lo, hi, out_int32)(x)


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
    logger.info("int8_gemm reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return ok


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
