"""A depthwise convolution and the 1x1 convolution after it in one kernel (Triton).

Layout follows Triton's matmul tutorial: the configuration, the ``@triton.jit`` kernel, a launch
plan, and a reference check (``python -m kernels.dwproject``).

In an inverted-residual block (MobileNetV2, EfficientNet-Lite) the depthwise convolution's int8
output is written to memory and read back at once by the 1x1 "project" convolution. Here each
program owns ``BLOCK_P`` output pixels x ``BLOCK_N`` project channels and walks the expanded
channels in chunks of ``BLOCK_E``: it computes the depthwise tile ``[BLOCK_P, BLOCK_E]`` (a loop
over the taps, int32 multiply-adds of ``(x - z_x)`` and the weights minus their zero point, the depthwise
bias, the shared requantization with the depthwise layer's own multipliers and bounds) and feeds
that int8 tile straight into ``tl.dot`` with the project weight's ``[BLOCK_E, BLOCK_N]`` tile. The
project's epilogue is the GEMM's (folded bias for the depthwise output's zero point, the row sums
when its weights have a zero point, ``requantize_channels``, and a fused residual add when
``RESIDUAL``). Every integer is the two layers': the depthwise tile is exactly the depthwise
layer's int8 output (the contract of :func:`kernels.reference.int8_depthwise_conv2d`), and the
project is :func:`kernels.reference.int8_gemm` on it. The depthwise output never reaches memory:
``2 * B*OH*OW*E`` bytes less per block. With ``N > BLOCK_N`` each column block of programs
recomputes the depthwise tile (from L2).

``dfq_gpu.quant.plan.depthwise_project_fusions`` decides where it runs
(``dfq_gpu.int8.layers.Int8DepthwiseProjectConv2d``).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from . import reference as ref
from ._config import DERIVED, INTERPRETED, USE_RINT, cdiv, channel_stride
from .depthwise import shifted_weights
from .gemm import _NO_RESIDUAL, check_residual_operand, gemm_epilogue, residual_args
from .requant import requantize_channels

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

# =============================================================================================
# Configuration
# =============================================================================================
#: Pixels and expanded channels per step; the project's channel block is ``min(128, N)`` rounded up
#: to a power of two (at least 16).
DWPROJECT_GPU_META = dict(BLOCK_P=64, BLOCK_E=32)
DWPROJECT_GPU_WARPS = 4
DWPROJECT_GPU_STAGES = 2
DWPROJECT_INTERPRET_META = dict(BLOCK_P=64, BLOCK_E=32)
DWPROJECT_MAX_BLOCK_N = 128


def block_n(n: int) -> int:
    """The project's channel block for ``n`` output channels."""
    return min(DWPROJECT_MAX_BLOCK_N, max(16, triton.next_power_of_2(n)))


# =============================================================================================
# Kernel
# =============================================================================================
@triton.jit(do_not_specialize=["z_x", "z_d", "z_y", "z_a", "z_r", "ia", "ib", "add_z", "add_lo", "add_hi"])
def _int8_dw_project_kernel(
    # Pointers: input, depthwise weights and epilogue, project weights and epilogue, output
    x_ptr,  # int8 NHWC [B, H, W, E], the depthwise input
    dw_ptr,  # int32 [KH, KW, E], depthwise weights minus their zero point
    dbias_ptr, dmult_ptr, dlo_ptr, dhi_ptr,  # depthwise: int32 [E] bias, float32 [1|E] multiplier, int32 [1|E] bounds
    pw_ptr,  # int8 [N, E], the 1x1 project weight
    pbias_ptr, pwzp_ptr, pmult_ptr, plo_ptr, phi_ptr,  # project: folded int32 [N] bias, int32 [1|N] zero point, ...
    y_ptr,  # int8 (or int32) NHWC [B, OH, OW, N]
    r_ptr,  # RESIDUAL only: int8 NHWC [B, OH, OW, N], the residual add's other operand
    # Geometry (M = B * OH * OW output pixels)
    M, H, W, E, OH, OW, N,
    stride_h, stride_w, pad_top, pad_left,
    # Per-channel strides: 0 for a per-tensor value, 1 for one value per channel
    stride_dmult, stride_dlo, stride_dhi, stride_pwzp, stride_pmult, stride_plo, stride_phi,
    # Zero points: input, depthwise output (the project's input), output
    z_x, z_d, z_y,
    # RESIDUAL only: the add (kernels.reference.ResidualAdd)
    z_a, z_r, ia, ib, add_m, add_z, add_lo, add_hi,
    # Meta-parameters
    KH: tl.constexpr, KW: tl.constexpr, HAS_DBIAS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_WZP: tl.constexpr,
    OUT_INT32: tl.constexpr, RESIDUAL: tl.constexpr, USE_RINT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # -- this program's output pixels and project channels; each pixel's window corner
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    p_ok = offs_p < M
    n_ok = offs_n < N
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    b = offs_p // (OW * OH)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    img_row = b.to(tl.int64) * H  # the image's first input row, in rows

    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.int32)
    row_sum = tl.zeros((BLOCK_P,), dtype=tl.int32)
    for e0 in range(0, E, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        e_ok = offs_e < E
        # -- the depthwise tile: sum over taps of (x - z_x)(w - z_w); a tap outside the input adds 0
        dacc = tl.zeros((BLOCK_P, BLOCK_E), dtype=tl.int32)
        for t in range(KH * KW):  # a loop, not unrolled: unrolled 5x5 taps keep 25 tiles in flight
            kh = t // KW
            kw = t - kh * KW
            ih = ih0 + kh
            iw = iw0 + kw
            ok = (p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))[:, None] & e_ok[None, :]
            pix = ((img_row + ih) * W + iw) * E  # int64 element offset of the pixel
            xv = tl.load(x_ptr + pix[:, None] + offs_e[None, :], mask=ok, other=0).to(tl.int32)
            wv = tl.load(dw_ptr + t * E + offs_e, mask=e_ok, other=0)
            dacc += tl.where(ok, xv - z_x, 0) * wv[None, :]
        if HAS_DBIAS:
            dacc += tl.load(dbias_ptr + offs_e, mask=e_ok, other=0)[None, :]
        # -- requantized exactly as the depthwise layer's output; channels past E add nothing
        d = requantize_channels(dacc, offs_e, e_ok, dmult_ptr, stride_dmult, dlo_ptr, stride_dlo, dhi_ptr, stride_dhi,
                                z_d, USE_RINT, ROWS=True)
        d = tl.where(e_ok[None, :], d, 0).to(tl.int8)
        # -- the project: the int8 tile times the K-major [BLOCK_E, BLOCK_N] weight tile
        wt = tl.load(pw_ptr + offs_n.to(tl.int64)[None, :] * E + offs_e[:, None], mask=e_ok[:, None] & n_ok[None, :],
                     other=0)
        acc = tl.dot(d, wt, acc, out_dtype=tl.int32)
        if HAS_WZP:
            row_sum += tl.sum(d.to(tl.int32), axis=1)

    # -- the project's exact corrections and epilogue: the GEMM's, on the [M, N] row-major output
    gemm_epilogue(acc, row_sum, offs_p, p_ok, offs_n, N, pbias_ptr, pwzp_ptr, stride_pwzp, pmult_ptr, stride_pmult,
                  plo_ptr, stride_plo, phi_ptr, stride_phi, z_y, y_ptr, N, r_ptr, N, z_a, z_r, ia, ib, add_m, add_z,
                  add_lo, add_hi, HAS_BIAS, HAS_WZP, OUT_INT32, RESIDUAL, USE_RINT)


# =============================================================================================
# Launch plan
# =============================================================================================
class DwProjectPlan:
    """The fused launch with both layers' arguments bound once; calling it on NHWC int8 ``x``
    (the depthwise input) returns ``int8_gemm``-as-1x1-convolution of ``int8_depthwise_conv2d(x)``
    bit for bit (and the residual add, ``plan(x, r)``, with ``residual``).

    Arguments as :func:`kernels.reference.check_depthwise_args` and
    :func:`kernels.reference.check_gemm_args` return them: the depthwise weight ``[KH, KW, E]``
    with its raw bias; the project weight ``[N, E]`` with its bias folded for ``z_d``, the
    depthwise output's zero point.
    """

    def __init__(
        self,
        dw_w: Tensor, dw_bias: Optional[Tensor], dw_wzp: Optional[Tensor], dw_mult: Tensor, z_x: int, z_d: int,
        dw_lo: Tensor, dw_hi: Tensor, stride: Tuple[int, int], pad: Tuple[int, int, int, int],
        pw: Tensor, p_bias: Optional[Tensor], p_wzp: Optional[Tensor], p_mult: Tensor, z_y: int, p_lo: Tensor,
        p_hi: Tensor, out_int32: bool, residual: Optional[ref.ResidualAdd] = None,
    ) -> None:  # fmt: skip
        if residual is not None and out_int32:
            raise ValueError("a residual add needs the int8 output, not the int32 accumulator (out_int32=True)")
        KH, KW, E = dw_w.shape
        N = pw.shape[0]
        if pw.shape != (N, E):
            raise ValueError(f"the project weight must be [N, E] with E={E} (the depthwise channels), got {tuple(pw.shape)}")
        self.KH, self.KW, self.E, self.N = KH, KW, E, N
        self.stride, self.pad = tuple(stride), tuple(pad)
        self.device = dw_w.device
        self.out_dtype = torch.int32 if out_int32 else torch.int8
        self.residual = residual
        shifted = DERIVED.get("depthwise_shifted_w", (dw_w, dw_wzp), torch.int32,
                              lambda: shifted_weights(dw_w, dw_wzp, torch.int32))
        self.static = dict(
            dw_ptr=shifted, dbias_ptr=dw_bias if dw_bias is not None else dw_mult, dmult_ptr=dw_mult, dlo_ptr=dw_lo,
            dhi_ptr=dw_hi, pw_ptr=pw, pbias_ptr=p_bias if p_bias is not None else p_mult,
            pwzp_ptr=p_wzp if p_wzp is not None else p_mult, pmult_ptr=p_mult, plo_ptr=p_lo, phi_ptr=p_hi,
            E=E, N=N, stride_h=stride[0], stride_w=stride[1], pad_top=pad[0], pad_left=pad[2],
            stride_dmult=channel_stride(dw_mult), stride_dlo=channel_stride(dw_lo), stride_dhi=channel_stride(dw_hi),
            stride_pwzp=channel_stride(p_wzp), stride_pmult=channel_stride(p_mult), stride_plo=channel_stride(p_lo),
            stride_phi=channel_stride(p_hi), z_x=z_x, z_d=z_d, z_y=z_y, KH=KH, KW=KW, HAS_DBIAS=dw_bias is not None,
            HAS_BIAS=p_bias is not None, HAS_WZP=p_wzp is not None, OUT_INT32=out_int32, USE_RINT=USE_RINT,
            BLOCK_N=block_n(N), **(_NO_RESIDUAL if residual is None else residual_args(residual)),
        )  # fmt: skip
        self.meta = dict(DWPROJECT_INTERPRET_META) if INTERPRETED else dict(
            DWPROJECT_GPU_META, num_warps=DWPROJECT_GPU_WARPS, num_stages=DWPROJECT_GPU_STAGES)

    def __call__(self, x: Tensor, r: Optional[Tensor] = None) -> Tensor:
        B, H, W, _ = ref.check_nhwc_input(x, self.E, self.device)
        OH, OW = ref.conv_output_size(H, W, self.KH, self.KW, self.stride, self.pad)  # type: ignore[arg-type]
        shape = (B, OH, OW, self.N)
        check_residual_operand(r, self.residual, shape, x, "DwProjectPlan", "[B, OH, OW, N]")
        y = torch.empty(shape, dtype=self.out_dtype, device=x.device)
        M = B * OH * OW
        if M == 0:
            return y
        grid = (cdiv(M, self.meta["BLOCK_P"]), cdiv(self.N, self.static["BLOCK_N"]))
        _int8_dw_project_kernel[grid](x, **self.static, y_ptr=y, r_ptr=y if r is None else r, M=M, H=H, W=W, OH=OH,
                                      OW=OW, **self.meta)
        return y


# =============================================================================================
# Reference check
# =============================================================================================
def _self_check(device: str = "cuda" if torch.cuda.is_available() else "cpu") -> bool:
    """Compare with the two reference layers: a 3x3 stride-1 block with a residual add and a 5x5
    stride-2 block with per-channel parameters and zero points, channel counts no block divides."""
    g = torch.Generator().manual_seed(0)
    ok = True
    for k, s, pad, E, N, res in ((3, 1, (1, 1, 1, 1), 40, 24, True), (5, 2, (1, 2, 1, 2), 70, 150, False)):
        x = torch.randint(-128, 128, (2, 9, 11, E), generator=g, dtype=torch.int8)
        dw = torch.randint(-128, 128, (k, k, E), generator=g, dtype=torch.int8)
        dwzp = torch.randint(-3, 4, (E,), generator=g, dtype=torch.int32)
        dbias = torch.randint(-3000, 3000, (E,), generator=g, dtype=torch.int32)
        dm = torch.rand(E, generator=g) * 2e-3 + 1e-4
        dlo, dhi = torch.full((E,), -128, dtype=torch.int32), torch.full((E,), 90, dtype=torch.int32)
        pw = torch.randint(-128, 128, (N, E), generator=g, dtype=torch.int8)
        pwzp = torch.randint(-3, 4, (N,), generator=g, dtype=torch.int32)
        pbias = torch.randint(-9000, 9000, (N,), generator=g, dtype=torch.int32)
        pm = torch.rand(N, generator=g) * 1e-3 + 1e-4
        plo, phi = torch.full((N,), -128, dtype=torch.int32), torch.full((N,), 127, dtype=torch.int32)
        z_x, z_d, z_y = -7, -128, 5
        d = ref.int8_depthwise_conv2d(x, dw, dbias, dm, z_x, dwzp, z_d, dlo, dhi, (s, s), pad)
        y = ref.int8_gemm(d.reshape(-1, E), pw, pbias, pm, z_d, pwzp, z_y, plo, phi).view(*d.shape[:3], N)
        spec = ref.ResidualAdd(z_y, 3, 17000, 9000, 1.1e-4, -2, -128, 127) if res else None
        r = torch.randint(-128, 128, y.shape, generator=g, dtype=torch.int8) if res else None
        expect = ref.residual_add(y, r, spec) if res else y
        dev = [t.to(device) for t in (x, dw, dbias, dwzp, dm, dlo, dhi, pw, pwzp, pm, plo, phi)]
        xd, dwd, dbd, dzd, dmd, dlod, dhid, pwd, pzd, pmd, plod, phid = dev
        plan = DwProjectPlan(dwd, dbd, dzd, dmd, z_x, z_d, dlod, dhid, (s, s), pad, pwd,
                             ref.fold_bias(pwd, pbias.to(device), z_d, pzd), pzd, pmd, z_y, plod, phid, False, spec)
        got = plan(xd) if r is None else plan(xd, r.to(device))
        ok &= torch.equal(got.cpu(), expect)
    logger.info("depthwise + project reference check on %s: %s", device, "bit-exact" if ok else "MISMATCH")
    return bool(ok)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(0 if _self_check() else 1)
