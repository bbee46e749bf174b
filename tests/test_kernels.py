"""Tests of the int8 kernels package.

* The reference (``kernels.reference``) is checked against independent computations (int64
  loops over taps, numpy float32 epilogue) so that a wrong reference fails.
* Every Triton kernel is checked bit for bit (``torch.equal``) against the reference; without a
  GPU they run through Triton's interpreter (``tests/conftest.py`` sets ``TRITON_INTERPRET``).
* The custom ops are traced with ``torch.compile`` and ``torch.export``; their fake
  implementations are checked for shapes and dtypes; bad inputs raise ``ValueError``.
* ``benchmarks/kernels.py --quick`` runs end to end and writes its JSON report, and
  ``--compile-only`` compiles every kernel for cuda:90 (wgmma, no register spills) without a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import reference as ref
from kernels import tiles

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = Path(__file__).resolve().parents[1]


# =============================================================================================
# Helpers
# =============================================================================================
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_i8(shape, g, lo=-128, hi=128) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int8)


def make_params(variant: str, n: int, k: int, g: torch.Generator) -> Dict:
    """Quantization parameters for ``n`` output channels with reduction length ``k``.

    variants: ``sym`` (zero points 0, per-tensor), ``asym`` (post-ReLU z_x=-128, per-tensor weight
    zero point, bias, ReLU6-like bounds), ``perchannel`` (everything per channel), ``int32``
    (accumulator output with per-channel weight zero point).
    """
    scale = 1.0 / (128.0 * 40.0 * math.sqrt(k))
    if variant == "sym":
        return dict(bias=None, multiplier=scale * 3, z_x=0, w_zp=None, z_y=0, lo=-128, hi=127)
    if variant == "asym":
        return dict(
            bias=torch.randint(-30000, 30000, (n,), generator=g, dtype=torch.int32),
            multiplier=scale * 7, z_x=-128, w_zp=torch.tensor([5], dtype=torch.int32),
            z_y=-128, lo=-128, hi=-128 + 96,
        )  # fmt: skip
    if variant in ("perchannel", "int32"):
        lo = torch.randint(-128, -20, (n,), generator=g, dtype=torch.int32)
        return dict(
            bias=torch.randint(-30000, 30000, (n,), generator=g, dtype=torch.int32),
            multiplier=(torch.rand(n, generator=g) * 6 + 0.5) * scale,
            z_x=17, w_zp=torch.randint(-4, 5, (n,), generator=g, dtype=torch.int32),
            z_y=3, lo=lo, hi=lo + torch.randint(30, 140, (n,), generator=g, dtype=torch.int32).clamp(max=127 - lo),
        )  # fmt: skip
    raise AssertionError(variant)


def to_dev(p: Dict, device: str = DEVICE) -> Dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in p.items()}


def np_requant(acc: np.ndarray, m, z_y: int, lo, hi) -> np.ndarray:
    """Independent epilogue: numpy float32 product, np.rint (half to even), float64 clip."""
    prod = acc.astype(np.float32) * np.asarray(m, dtype=np.float32)
    r = np.rint(prod).astype(np.float64) + z_y
    return np.clip(r, np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)).astype(np.int8)


def _np(v):
    return v.cpu().numpy() if isinstance(v, torch.Tensor) else v


def independent_gemm_acc(x, w, bias, z_x, w_zp) -> torch.Tensor:
    """int64 broadcast-multiply-sum, wrapped to int32."""
    zw = 0 if w_zp is None else w_zp.to(torch.int64).reshape(-1, 1)
    xc = x.to(torch.int64) - z_x
    wc = w.to(torch.int64) - zw
    acc = (xc[:, None, :] * wc[None, :, :]).sum(-1)
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    return acc.to(torch.int32)


def independent_conv_acc(x, w, bias, z_x, w_zp, stride, pad, depthwise=False) -> torch.Tensor:
    """Loop over taps in int64 on an input explicitly padded with z_x (NHWC)."""
    B, H, W, C = x.shape
    KH, KW = (w.shape[0], w.shape[1]) if depthwise else (w.shape[1], w.shape[2])
    sh, sw = stride
    t, b, l, r = pad
    xp = torch.full((B, H + t + b, W + l + r, C), z_x, dtype=torch.int64)
    xp[:, t : t + H, l : l + W, :] = x.to(torch.int64)
    OH = (H + t + b - KH) // sh + 1
    OW = (W + l + r - KW) // sw + 1
    wc = w.to(torch.int64)
    if w_zp is not None:
        wc = wc - (w_zp.to(torch.int64) if depthwise else w_zp.to(torch.int64).reshape(-1, 1, 1, 1))
    n = C if depthwise else w.shape[0]
    acc = torch.zeros((B, OH, OW, n), dtype=torch.int64)
    for kh in range(KH):
        for kw in range(KW):
            patch = xp[:, kh : kh + sh * (OH - 1) + 1 : sh, kw : kw + sw * (OW - 1) + 1 : sw, :] - z_x
            if depthwise:
                acc += patch * wc[kh, kw]
            else:
                acc += (patch[..., None, :] * wc[:, kh, kw, :]).sum(-1)
    if bias is not None:
        acc += bias.to(torch.int64)
    return acc.to(torch.int32)


# =============================================================================================
# The reference against independent computations
# =============================================================================================
@pytest.mark.parametrize("variant", ["sym", "asym", "perchannel"])
def test_reference_gemm_matches_independent(variant):
    g = _gen(1)
    M, K, N = 23, 37, 19
    x, w = rand_i8((M, K), g), rand_i8((N, K), g)
    p = make_params(variant, N, K, g)
    acc = ref.int8_gemm(x, w, out_int32=True, **p)
    expect_acc = independent_gemm_acc(x, w, p["bias"], p["z_x"], p["w_zp"])
    assert torch.equal(acc, expect_acc)
    y = ref.int8_gemm(x, w, **p)
    expect = np_requant(expect_acc.numpy(), _np(p["multiplier"]), p["z_y"], _np(p["lo"]), _np(p["hi"]))
    assert np.array_equal(y.numpy(), expect)
    assert len(torch.unique(y)) > 5, "test data saturates: the check would be weak"


@pytest.mark.parametrize(
    "C,KH,KW,stride,pad",
    [(3, 3, 3, (2, 2), (0, 1, 0, 1)), (5, 5, 5, (1, 1), (2, 2, 2, 2)), (6, 1, 3, (2, 1), (0, 0, 1, 2))],
)
def test_reference_conv_matches_independent(C, KH, KW, stride, pad):
    g = _gen(2)
    x, w = rand_i8((2, 9, 8, C), g), rand_i8((7, KH, KW, C), g)
    p = make_params("perchannel", 7, KH * KW * C, g)
    acc = ref.int8_conv2d(x, w, stride=stride, padding=pad, out_int32=True, **p)
    expect = independent_conv_acc(x, w, p["bias"], p["z_x"], p["w_zp"], stride, pad)
    assert torch.equal(acc, expect)


@pytest.mark.parametrize("K,stride,pad", [(3, (1, 1), (1, 1, 1, 1)), (5, (2, 2), (1, 2, 1, 2))])
def test_reference_depthwise_matches_independent(K, stride, pad):
    g = _gen(3)
    C = 11
    x, w = rand_i8((2, 10, 9, C), g), rand_i8((K, K, C), g)
    p = make_params("perchannel", C, K * K, g)
    acc = ref.int8_depthwise_conv2d(x, w, stride=stride, padding=pad, out_int32=True, **p)
    expect = independent_conv_acc(x, w, p["bias"], p["z_x"], p["w_zp"], stride, pad, depthwise=True)
    assert torch.equal(acc, expect)


def test_reference_conv_padding_is_zero_in_real_domain():
    """Float64 check on dequantized values: padded taps behave like real zeros."""
    g = _gen(4)
    s_x, s_w = 0.05, 0.01
    x, w = rand_i8((1, 6, 7, 4), g), rand_i8((3, 3, 3, 4), g)
    z_x = -20
    acc = ref.int8_conv2d(x, w, None, 1.0, z_x=z_x, padding=(0, 1, 0, 1), stride=2, out_int32=True)
    xr = ((x.double() - z_x) * s_x).permute(0, 3, 1, 2)
    wr = (w.double() * s_w).permute(0, 3, 1, 2)
    real = F.conv2d(F.pad(xr, (0, 1, 0, 1)), wr, stride=2).permute(0, 2, 3, 1)
    assert torch.allclose(acc.double() * s_x * s_w, real, rtol=0, atol=1e-9)


def test_reference_requantize_rounds_half_to_even_and_saturates():
    acc = torch.tensor([-5, -3, -1, 1, 3, 5, 7, 10**6, -(10**6), 2**31 - 1, -(2**31)], dtype=torch.int32)
    m = torch.tensor([0.5], dtype=torch.float32)
    y = ref.requantize(acc, m, 0, torch.tensor([-128], dtype=torch.int32), torch.tensor([127], dtype=torch.int32))
    assert y.tolist() == [-2, -2, 0, 0, 2, 2, 4, 127, -128, 127, -128]
    assert np.array_equal(y.numpy(), np_requant(acc.numpy(), 0.5, 0, -128, 127))


def test_reference_add_close_to_real_valued_add():
    g = _gen(5)
    a, b = rand_i8((4000,), g), rand_i8((4000,), g)
    s_a, s_b, s_y = 0.031, 0.0117, 0.04
    z_a, z_b, z_y = 3, -9, 1
    ia, ib, m = ref.add_multipliers(s_a, s_b, s_y)
    y = ref.int8_add(a, b, z_a, z_b, ia, ib, m, z_y)
    exact_acc = (a.to(torch.int64) - z_a) * ia + (b.to(torch.int64) - z_b) * ib
    assert np.array_equal(y.numpy(), np_requant(exact_acc.numpy(), m, z_y, -128, 127))
    real = ((a.double() - z_a) * s_a + (b.double() - z_b) * s_b) / s_y + z_y
    # the integer multipliers deviate by < 0.01 output steps: only near-ties may round differently
    assert (y.double() - real.round().clamp(-128, 127)).abs().max() <= 1
    unsaturated = (real > -127) & (real < 126)
    assert ((y.double() - real)[unsaturated].abs() <= 0.51).all()
    assert (y.double() != real.round().clamp(-128, 127)).float().mean() < 0.01


def test_reference_pools_and_quantize_match_independent():
    g = _gen(6)
    x = rand_i8((2, 7, 5, 6), g)
    # max pool against float max_pool2d with -inf padding
    y = ref.int8_maxpool2d(x, 3, 2, 1)
    expect = F.max_pool2d(x.permute(0, 3, 1, 2).double(), 3, 2, 1).permute(0, 2, 3, 1)
    assert torch.equal(y.double(), expect)
    # average pool: int64 sum then the numpy epilogue
    m = ref.float32_value(0.8 / 35)
    y = ref.int8_avgpool(x, -5, m, 4)
    acc = (x.to(torch.int64) + 5).sum((1, 2))
    assert np.array_equal(y.numpy(), np_requant(acc.numpy(), m, 4, -128, 127))
    # quantize: numpy float32 multiply by the float32 reciprocal, and PyTorch's own fake-quantize
    xf = torch.randn(2, 3, 4, 5, generator=g) * 3
    q = ref.quantize(xf, 0.02, -7)
    inv = np.float32(1.0) / np.float32(0.02)
    fq = torch.fake_quantize_per_tensor_affine(xf, 0.02, -7 + 128, 0, 255)  # uint8 domain = int8 + 128
    assert torch.equal(((q.float() + 7) * np.float32(0.02)), fq.permute(0, 2, 3, 1))
    expect = np.clip(np.rint(xf.permute(0, 2, 3, 1).numpy() * inv).astype(np.float64) - 7, -128, 127)
    assert np.array_equal(q.numpy(), expect.astype(np.int8))
    back = ref.dequantize(q, 0.02, -7)
    assert torch.equal(back, (q.float() + 7) * np.float32(0.02))


def test_fold_bias_roundtrip():
    g = _gen(7)
    w = rand_i8((9, 3, 3, 5), g)
    bias = torch.randint(-1000, 1000, (9,), generator=g, dtype=torch.int32)
    w_zp = torch.randint(-3, 4, (9,), generator=g, dtype=torch.int32)
    folded = ref.fold_bias(w, bias, -128, w_zp)
    expected = bias.long() + 128 * w.reshape(9, -1).long().sum(1) - 45 * 128 * w_zp.long()
    assert torch.equal(folded.long(), expected)
    assert torch.equal(ref.unfold_bias(w, folded, -128, w_zp), bias.long())
    assert ref.fold_bias(w, None, 0, w_zp) is None


# =============================================================================================
# Triton kernels against the reference (bit-exact)
# =============================================================================================
GEMM_SHAPES = [(1, 40, 24), (37, 70, 45), (130, 150, 66), (64, 64, 64), (3, 24, 144)]


@pytest.mark.parametrize("variant", ["sym", "asym", "perchannel", "int32"])
@pytest.mark.parametrize("M,K,N", GEMM_SHAPES)
def test_gemm_kernel_bit_exact(M, K, N, variant):
    g = _gen(M * 1000 + K + N)
    x, w = rand_i8((M, K), g).to(DEVICE), rand_i8((N, K), g).to(DEVICE)
    p = to_dev(make_params(variant, N, K, g))
    out_int32 = variant == "int32"
    y = kernels.int8_gemm(x, w, out_int32=out_int32, backend="triton", **p)
    expect = ref.int8_gemm(x, w, out_int32=out_int32, **p)
    assert y.dtype == (torch.int32 if out_int32 else torch.int8) and y.shape == (M, N)
    assert torch.equal(y, expect)


def test_gemm_kernel_bias_folded_matches_unfolded():
    g = _gen(11)
    x, w = rand_i8((33, 50), g).to(DEVICE), rand_i8((20, 50), g).to(DEVICE)
    p = to_dev(make_params("perchannel", 20, 50, g))
    folded = ref.fold_bias(w, p["bias"], p["z_x"], p["w_zp"])
    expect = ref.int8_gemm(x, w, **p)
    q = dict(p, bias=folded)
    assert torch.equal(kernels.int8_gemm(x, w, bias_folded=True, backend="triton", **q), expect)
    assert torch.equal(ref.int8_gemm(x, w, bias_folded=True, **q), expect)


@pytest.mark.parametrize("m", [1e-9, 1e-4, 0.5, 1.5, 1e4])
def test_gemm_kernel_extreme_multipliers_and_ties(m):
    """K=1 GEMM: acc = x - z_x spans [-255, 255]; m=0.5/1.5 give exact ties, 1e4 saturates."""
    x = torch.arange(-128, 128, dtype=torch.int8).reshape(-1, 1).to(DEVICE)
    w = torch.tensor([[1], [-1], [3]], dtype=torch.int8).to(DEVICE)
    bias = torch.tensor([0, 2**30 + 1, -3], dtype=torch.int32).to(DEVICE)
    kw = dict(bias=bias, multiplier=m, z_x=127, z_y=-1)
    y = kernels.int8_gemm(x, w, backend="triton", **kw)
    assert torch.equal(y, ref.int8_gemm(x, w, **kw))
    acc = independent_gemm_acc(x.cpu(), w.cpu(), bias.cpu(), 127, None)
    assert np.array_equal(y.cpu().numpy(), np_requant(acc.numpy(), m, -1, -128, 127))


def test_gemm_kernel_per_channel_mixed_extremes():
    g = _gen(12)
    x, w = rand_i8((40, 30), g).to(DEVICE), rand_i8((6, 30), g).to(DEVICE)
    mult = torch.tensor([1e-9, 1e4, 0.5, 3e-5, 1.0, 7e-3], dtype=torch.float32).to(DEVICE)
    lo = torch.tensor([-128, -128, 0, -10, -128, 5], dtype=torch.int32).to(DEVICE)
    hi = torch.tensor([127, 6, 127, 10, -100, 5], dtype=torch.int32).to(DEVICE)
    kw = dict(multiplier=mult, z_x=-3, z_y=-2, lo=lo, hi=hi)
    y = kernels.int8_gemm(x, w, backend="triton", **kw)
    assert torch.equal(y, ref.int8_gemm(x, w, **kw))
    assert torch.equal(y[:, 5], torch.full_like(y[:, 5], 5))


CONV_CASES = [
    # B, H, W, C, N, KH, KW, stride, padding
    (1, 9, 9, 3, 16, 3, 3, (2, 2), (0, 1, 0, 1)),  # EfficientNet stem, TF "same" padding
    (2, 11, 10, 3, 8, 7, 7, (2, 2), (3, 3, 3, 3)),  # ResNet stem
    (2, 9, 7, 40, 24, 3, 3, (1, 1), (1, 1, 1, 1)),
    (1, 10, 9, 40, 20, 5, 5, (2, 2), (1, 2, 1, 2)),
    (2, 6, 5, 33, 70, 1, 1, (1, 1), (0, 0, 0, 0)),  # routed to the GEMM
    (2, 8, 7, 20, 12, 1, 1, (2, 2), (0, 0, 0, 0)),  # ResNet downsample
    (1, 6, 8, 64, 18, 3, 3, (1, 1), (0, 1, 0, 1)),
    (1, 5, 7, 17, 9, 1, 3, (1, 2), (0, 0, 1, 1)),
    # channel extent a multiple of the interpreter's BLOCK_K = 64 (EVEN_K: no channel mask)
    (1, 9, 7, 128, 20, 5, 3, (2, 1), (2, 1, 1, 1)),  # tap-major, C = 2 * BLOCK_K, non-square
    (2, 9, 8, 8, 21, 4, 4, (2, 2), (1, 2, 1, 2)),  # flat K, K = 4*4*8 = 128
]


@pytest.mark.parametrize("variant", ["sym", "perchannel", "int32"])
@pytest.mark.parametrize("B,H,W,C,N,KH,KW,stride,pad", CONV_CASES)
def test_conv_kernel_bit_exact(B, H, W, C, N, KH, KW, stride, pad, variant):
    g = _gen(H * 100 + C + KH)
    x, w = rand_i8((B, H, W, C), g).to(DEVICE), rand_i8((N, KH, KW, C), g).to(DEVICE)
    p = to_dev(make_params(variant, N, KH * KW * C, g))
    out_int32 = variant == "int32"
    y = kernels.int8_conv2d(x, w, stride=stride, padding=pad, out_int32=out_int32, backend="triton", **p)
    expect = ref.int8_conv2d(x, w, stride=stride, padding=pad, out_int32=out_int32, **p)
    assert torch.equal(y, expect)


def test_conv_kernel_asym_params():
    g = _gen(13)
    x, w = rand_i8((1, 7, 6, 24), g).to(DEVICE), rand_i8((10, 3, 3, 24), g).to(DEVICE)
    p = to_dev(make_params("asym", 10, 9 * 24, g))
    kw = dict(stride=2, padding=(1, 0, 0, 1), **p)
    assert torch.equal(kernels.int8_conv2d(x, w, backend="triton", **kw), ref.int8_conv2d(x, w, **kw))


def _config_id(cfg) -> str:
    return "_".join(f"{k[6:] if k.startswith('BLOCK_') else k}{v}" for k, v in cfg.kwargs.items()) + (
        f"_w{cfg.num_warps}s{cfg.num_stages}"
    )


def _autotune_configs(family: str):
    from kernels import _config

    return [pytest.param(c, id=_config_id(c)) for c in _config.GPU_CONFIGS[family]]


#: Kernel shapes of the per-tile conv check with C = BLOCK_K, one per autotune entry in turn.
_EVEN_CONV_KERNELS = [(3, 3), (5, 5), (7, 7), (1, 1), (1, 3), (5, 3)]


@pytest.mark.parametrize("cfg", _autotune_configs("gemm"))
def test_every_gemm_autotune_config_is_bit_exact(cfg, monkeypatch):
    """Each entry of the GEMM/conv autotune list, forced, on shapes no tile divides (autotuning
    may pick any of them on a GPU, so each must be exact, not only the default). The convolutions
    take every loop of each tile: tap-major with C = 19 (channel mask) and C = BLOCK_K (EVEN_K, no
    channel mask; a kernel shape per entry in turn, stride 2, padding with z_x != 0), each with
    the taps unrolled and stepped (UNROLL_TAPS), and the flat-K loop with K = 147 (RGB 7x7 stem)
    and K = 128 (EVEN_K); N = 21 is no tile's multiple."""
    from kernels import _config, conv
    from kernels._config import GEMM_GPU_CONFIGS, forced_config

    g = _gen(21)
    x, w = rand_i8((131, 161), g).to(DEVICE), rand_i8((37, 161), g).to(DEVICE)
    p = to_dev(make_params("perchannel", 37, 161, g))
    bk = cfg.kwargs["BLOCK_K"]
    kh, kw = _EVEN_CONV_KERNELS[GEMM_GPU_CONFIGS.index(cfg) % len(_EVEN_CONV_KERNELS)]
    convs = [  # (x shape, w shape, stride, padding, EVEN_K)
        ((2, 9, 7, 19), (21, 3, 3, 19), (2, 1), (0, 1, 1, 1), False),
        ((1, 8, 7, bk), (21, kh, kw, bk), 2, (kh // 2, (kh - 1) // 2, kw // 2, (kw - 1) // 2), True),
        ((1, 9, 8, 3), (21, 7, 7, 3), 2, 3, False),
        ((1, 7, 6, 8), (21, 4, 4, 8), 2, (1, 2, 2, 1), True),
    ]
    # the TMA variant with this tile (if it is one of its tiles): K = 176 is a multiple of 16 but of
    # no BLOCK_K (the last K block reads past the edge: zero-filled), M and N of no tile
    if cfg in _config.GEMM_TMA_CONFIGS:
        xt, wt = rand_i8((131, 176), g).to(DEVICE), rand_i8((37, 176), g).to(DEVICE)
        pt = to_dev(make_params("perchannel", 37, 176, g))
        with forced_config("gemm", cfg), kernels.use_settings(gemm_variant="tma"), \
                tiles.record_launches() as launches:
            yt = kernels.int8_gemm(xt, wt, backend="triton", **pt)
        assert [rec[0] for rec in launches] == ["int8_gemm_tma_kernel"]
        assert torch.equal(yt, ref.int8_gemm(xt, wt, **pt))
        # and the TMA convolution: C = 48 (a channel block crosses into the next tap's weights for
        # BLOCK_K 32, exceeds C for 64 and 128), 7 x 11 outputs (patches past the edge), z_x != 0
        # (stride 1: one loop over all steps; stride 2: the taps unrolled over the input's phases)
        xc, wc = rand_i8((1, 7, 11, 48), g).to(DEVICE), rand_i8((21, 3, 3, 48), g).to(DEVICE)
        for stride in (1, 2):
            conv_kw = dict(padding=1, stride=stride, **to_dev(make_params("perchannel", 21, 9 * 48, g)))
            with forced_config("gemm", cfg), kernels.use_settings(gemm_variant="tma"), \
                    tiles.record_launches() as launches:
                yc = kernels.int8_conv2d(xc, wc, backend="triton", **conv_kw)
            assert [rec[0] for rec in launches] == ["int8_conv2d_tma_kernel"]
            assert torch.equal(yc, ref.int8_conv2d(xc, wc, **conv_kw)), stride
    with forced_config("gemm", cfg):
        y = kernels.int8_gemm(x, w, backend="triton", **p)
        for xs, ws, stride, pad, even in convs:
            n, khh, kww, c = ws
            meta = dict(C=c, KH=khh, KW=kww, FLAT_K=c < conv.FLAT_K_MAX_CHANNELS, BLOCK_K=bk)
            assert conv._even_k(meta) == even
            xc, wc = rand_i8(xs, g).to(DEVICE), rand_i8(ws, g).to(DEVICE)
            pc = to_dev(make_params("perchannel", n, khh * kww * c, g))
            conv_kw = dict(stride=stride, padding=pad, **pc)
            expect = ref.int8_conv2d(xc, wc, **conv_kw)
            for min_steps in (1, 10**9) if not meta["FLAT_K"] else (1,):  # unrolled, stepped
                monkeypatch.setattr(conv, "TAP_UNROLL_MIN_STEPS", min_steps)
                unrolled = conv._unroll_taps(meta)
                assert unrolled == (not meta["FLAT_K"] and (min_steps == 1 or khh * kww in (1, 49)))
                yc = kernels.int8_conv2d(xc, wc, backend="triton", **conv_kw)
                assert torch.equal(yc, expect), (xs, ws, unrolled)
    assert torch.equal(y, ref.int8_gemm(x, w, **p))


def test_conv_loop_heuristics():
    """EVEN_K and UNROLL_TAPS as the launcher's heuristics set them."""
    from kernels import conv

    def meta(C, k=3, bk=64):
        return dict(C=C, KH=k, KW=k, FLAT_K=C < conv.FLAT_K_MAX_CHANNELS, BLOCK_K=bk)

    assert conv._even_k(meta(128)) and not conv._even_k(meta(120)) and conv._even_k(meta(32, bk=32))
    assert conv._even_k(meta(8, k=4, bk=128)) and not conv._even_k(meta(3, k=7, bk=32))  # flat: K = KH*KW*C
    steps = conv.TAP_UNROLL_MIN_STEPS
    assert conv._unroll_taps(meta(64 * steps)) and not conv._unroll_taps(meta(64 * steps - 64))
    assert conv._unroll_taps(meta(64 * steps - 63))  # a partial channel block is a step too
    assert conv._unroll_taps(meta(64, k=1)) and conv._unroll_taps(meta(64, k=7))  # one tap; 49 > 32 taps
    assert not conv._unroll_taps(meta(64, k=5)) and not conv._unroll_taps(meta(3, k=7))  # 25 taps; flat K


def test_gemm_tile_pruning_keeps_wide_and_thin_tiles_where_they_fit():
    """256-wide tiles only for N > 128, 16-wide tiles only when they cover N, BLOCK_K within K."""
    from kernels import _config, conv, gemm

    prune = gemm._int8_gemm_kernel_tuned.early_config_prune

    def tiles(kept):
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) for c in kept}

    cfgs = _config.GEMM_GPU_CONFIGS
    narrow = tiles(prune(cfgs, dict(N=16, K=32)))
    assert (128, 16, 32) in narrow and all(bk == 32 for _, _, bk in narrow)
    wide = tiles(prune(cfgs, dict(N=144, K=24)))
    assert (64, 256, 32) in wide and all(bn >= 32 and bk == 32 for _, bn, bk in wide)
    big = tiles(prune(cfgs, dict(N=1000, K=1280)))
    assert {(64, 256, 64), (64, 256, 128)} <= big and all(bn >= 32 for _, bn, _ in big)
    assert all(bn <= 128 for _, bn, _ in tiles(prune(cfgs, dict(N=96, K=512))))
    stem = tiles(conv._prune_conv(cfgs, dict(N=16, C=3, KH=7, KW=7, FLAT_K=True)))  # K = 147
    assert (128, 16, 32) in stem and all(bn <= 32 for _, bn, _ in stem)
    assert stem <= {t[:3] for t in _config.CONV_FLAT_K_TILES}  # the flat-K loop's own tiles
    # the TMA convolution: no 128x128 4-warp tile with stride 2 and several taps (they spill)
    prune_tma = conv._int8_conv2d_tma_kernel_tuned.early_config_prune
    wide = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) for c in
            prune_tma(_config.GEMM_TMA_CONFIGS, dict(N=256, C=256, KH=3, KW=3, STRIDE=1))]
    assert (128, 128, 4) in wide
    for k, kept in ((3, False), (1, True)):
        strided = prune_tma(_config.GEMM_TMA_CONFIGS, dict(N=256, C=256, KH=k, KW=k, STRIDE=2))
        assert ((128, 128, 4) in [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) for c in strided]) == kept
    stem = tiles(conv._prune_conv(cfgs, dict(N=64, C=3, KH=7, KW=7, FLAT_K=True)))
    assert _config.DEFAULT_GPU_CONFIG["gemm"] in _config.CONV_FLAT_K_CONFIGS and (128, 64, 64) in stem


@pytest.mark.parametrize("cfg", _autotune_configs("depthwise_rows"))
def test_every_depthwise_rows_autotune_config_is_bit_exact(cfg):
    from kernels._config import forced_config, use_depthwise_variant

    g = _gen(23)
    x, w = rand_i8((2, 4, 19, 37), g).to(DEVICE), rand_i8((5, 5, 37), g).to(DEVICE)  # no tile divides
    p = to_dev(make_params("perchannel", 37, 25, g))
    kw = dict(padding=(2, 1, 2, 3), **p)
    with forced_config("depthwise_rows", cfg), use_depthwise_variant("rows"):
        y = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw)
    assert torch.equal(y, ref.int8_depthwise_conv2d(x, w, **kw))


@pytest.mark.parametrize("acc", ["int32", "float32"])
@pytest.mark.parametrize("cfg", _autotune_configs("depthwise_tma"))
def test_every_depthwise_tma_autotune_config_is_bit_exact(cfg, acc, monkeypatch):
    """Each tile of the TMA depthwise kernel (the "tma" variant: stride 1 or 2, channels a multiple
    of 16), on the int32 and float32 paths: C = 48 (a channel tile runs past C for BLOCK_C 32, 64,
    128), 8 x 12 outputs (patches past the edge), asymmetric padding with z_x != 0; and stride 2
    (the input's four phases) with TF "same" padding."""
    from kernels import depthwise
    from kernels._config import forced_config, use_depthwise_variant

    monkeypatch.setattr(depthwise, "FLOAT_ACC_KERNELS", frozenset({"tiles"} if acc == "float32" else ()))
    g = _gen(24)
    x, w = rand_i8((2, 9, 11, 48), g).to(DEVICE), rand_i8((5, 5, 48), g).to(DEVICE)
    kw = dict(padding=(2, 1, 2, 3), **to_dev(make_params("perchannel", 48, 25, g)))
    kw2 = dict(kw, padding=(1, 2, 1, 2), stride=2)
    with forced_config("depthwise_tma", cfg), use_depthwise_variant("tma"), tiles.record_launches() as launches:
        y = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw)
        y2 = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw2)
    assert [rec[0] for rec in launches] == ["int8_depthwise_tma_kernel"] * 2
    assert torch.equal(y, ref.int8_depthwise_conv2d(x, w, **kw))
    assert torch.equal(y2, ref.int8_depthwise_conv2d(x, w, **kw2))


def test_depthwise_tma_variant_where_it_applies():
    """The TMA depthwise kernel on more shapes (3x3 with symmetric weights and the int32 output,
    a 1 x 2 input, 144 channels; stride 2 on odd and even sizes, unpadded, a 2 x 3 input), and
    the launches it leaves to the tiles kernel (strides (2, 1) and 3, stride 2 on a 1-row input,
    24 channels, an input 1 byte off a 16-byte boundary), all bit-exact."""
    from kernels._config import use_depthwise_variant

    g = _gen(25)

    def run(x, w, kw):
        with use_depthwise_variant("tma"), tiles.record_launches() as launches:
            y = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw)
        assert torch.equal(y, ref.int8_depthwise_conv2d(x, w, **kw))
        return [rec[0] for rec in launches]

    for xs, k, variant, out_int32, stride, pad in (
        ((1, 14, 14, 16), 3, "sym", True, 1, 1), ((1, 1, 2, 32), 3, "perchannel", False, 1, 1),
        ((1, 7, 7, 144), 3, "asym", False, 1, 1), ((2, 13, 10, 32), 5, "perchannel", False, 2, 2),
        ((1, 8, 12, 16), 3, "asym", True, 2, 0), ((1, 2, 3, 16), 3, "sym", False, 2, 1),
    ):  # fmt: skip
        x, w = rand_i8(xs, g).to(DEVICE), rand_i8((k, k, xs[-1]), g).to(DEVICE)
        p = to_dev(make_params(variant, xs[-1], k * k, g))
        if p["w_zp"] is not None and p["w_zp"].numel() == 1:
            p["w_zp"] = p["w_zp"].expand(xs[-1]).contiguous()
        kw = dict(padding=pad, stride=stride, out_int32=out_int32, **p)
        assert run(x, w, kw) == ["int8_depthwise_tma_kernel"], xs
    p = to_dev(make_params("perchannel", 32, 9, g))
    x32, w32 = rand_i8((1, 9, 9, 32), g).to(DEVICE), rand_i8((3, 3, 32), g).to(DEVICE)
    x24, w24 = rand_i8((1, 9, 9, 24), g).to(DEVICE), rand_i8((3, 3, 24), g).to(DEVICE)
    xs = rand_i8((9 * 9 * 32 + 1,), g).to(DEVICE)[1:].view(1, 9, 9, 32)
    x1 = rand_i8((1, 1, 9, 32), g).to(DEVICE)
    for x, w, q, stride in ((x32, w32, p, (2, 1)), (x32, w32, p, 3), (x1, w32, p, 2),
                            (x24, w24, to_dev(make_params("perchannel", 24, 9, g)), 1), (xs, w32, p, 1)):  # fmt: skip
        assert run(x, w, dict(q, padding=1, stride=stride)) == ["int8_depthwise_kernel"]


@pytest.mark.parametrize("acc", ["int32", "float32"])
@pytest.mark.parametrize("cfg", _autotune_configs("depthwise"))
def test_every_depthwise_autotune_config_is_bit_exact(cfg, acc, monkeypatch):
    """Each tile of the tiles kernel, on its int32 path (its default) and its float32 path; the
    max pool and the adaptive average pool, which take the same tiles."""
    from kernels import depthwise
    from kernels._config import forced_config

    monkeypatch.setattr(depthwise, "FLOAT_ACC_KERNELS", frozenset({"tiles"} if acc == "float32" else ()))
    g = _gen(22)
    x, w = rand_i8((2, 11, 9, 37), g).to(DEVICE), rand_i8((5, 5, 37), g).to(DEVICE)
    p = to_dev(make_params("perchannel", 37, 25, g))
    kw = dict(stride=2, padding=(1, 2, 1, 2), **p)
    xm = rand_i8((1, 9, 10, 45), g).to(DEVICE)
    with forced_config("depthwise", cfg):
        y = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw)
        ym = kernels.int8_maxpool2d(xm, 3, 2, 1, backend="triton")
        ya = kernels.int8_adaptive_avgpool2d(xm, (4, 7), -3, 0.05, 0.021, 2, backend="triton")
    assert torch.equal(y, ref.int8_depthwise_conv2d(x, w, **kw))
    assert torch.equal(ym, ref.int8_maxpool2d(xm, 3, 2, 1))
    assert torch.equal(ya, ref.int8_adaptive_avgpool2d(xm, (4, 7), -3, 0.05, 0.021, 2))


def test_forced_config_and_autotune_switch():
    from kernels import _config

    cfg = _config.GPU_CONFIGS["gemm"][-1]
    before = _config.launch_meta("gemm")
    with _config.forced_config("gemm", cfg):
        meta = _config.launch_meta("gemm")
        assert {k: meta[k] for k in cfg.kwargs} == cfg.kwargs
    assert _config.launch_meta("gemm") == before
    with pytest.raises(ValueError, match="unknown kernel family"):
        with _config.forced_config("winograd", cfg):
            pass
    enabled = _config.autotune_enabled()
    try:
        _config.set_autotune(False)
        if not _config.INTERPRETED:
            assert _config.launch_meta("depthwise")["BLOCK_P"] == _config.DEFAULT_GPU_CONFIG["depthwise"].kwargs["BLOCK_P"]
        else:  # the interpreter always launches one fixed tile
            assert _config.launch_meta("depthwise") == _config.INTERPRET_META["depthwise"]
    finally:
        _config.set_autotune(enabled)


@pytest.mark.parametrize("case,ndig", [("small", 1), ("large", 3), ("huge_zp", 4)])
def test_conv_kernel_padding_correction_digit_planes(case, ndig):
    """Padded taps are corrected with int8 digit planes of the per-tap weight sums (1 to 4 planes)."""
    from kernels.conv import padding_digits

    g = _gen(25)
    w_zp = None
    if case == "small":  # |sum| <= 127: one plane
        C, w = 3, rand_i8((6, 3, 3, 3), g, -4, 5)
    elif case == "large":  # 300 channels of 127: sums of 38100 need three planes
        C, w = 300, torch.full((5, 3, 3, 300), 127, dtype=torch.int8)
    else:  # a weight zero point of 2^24: sums near -2^28, accumulators wrap modulo 2^32
        C, w = 20, rand_i8((5, 3, 3, 20), g)
        w_zp = torch.tensor([2**24], dtype=torch.int32)
    digits, n, tp = padding_digits(w, w_zp)
    assert n == ndig and tp == 32 and digits.dtype == torch.int8 and digits.shape == (ndig, w.shape[0], tp)
    sums = w.reshape(w.shape[0], 9, C).sum(2, dtype=torch.int64) - (0 if w_zp is None else C * int(w_zp))
    rebuilt = sum((256**i) * digits[i, :, :9].to(torch.int64) for i in range(ndig))
    assert torch.equal((rebuilt - sums) % 2**32, torch.zeros_like(sums))
    x = rand_i8((1, 5, 6, C), g).to(DEVICE)
    w = w.to(DEVICE)
    w_zp = None if w_zp is None else w_zp.to(DEVICE)
    kw = dict(z_x=-128, w_zp=w_zp, stride=1, padding=(1, 2, 2, 1), out_int32=True)
    assert torch.equal(kernels.int8_conv2d(x, w, backend="triton", **kw), ref.int8_conv2d(x, w, **kw))


def test_derived_tensors_are_cached_and_invalidated():
    """Folded biases and padding digits are computed once per weight tensor and redone after an update."""
    from kernels._config import DERIVED

    g = _gen(26)
    x, w = rand_i8((1, 6, 6, 20), g).to(DEVICE), rand_i8((8, 3, 3, 20), g).to(DEVICE)
    kw = dict(z_x=-100, padding=1)
    DERIVED.clear()
    y1 = kernels.int8_conv2d(x, w, None, 1e-3, backend="triton", **kw)
    assert len(DERIVED._entries) == 2  # fold_bias and the padding digits
    assert torch.equal(kernels.int8_conv2d(x, w, None, 1e-3, backend="triton", **kw), y1)
    assert len(DERIVED._entries) == 2
    w.mul_(-1).sub_(1)  # in-place update: the cached entries must not be reused
    y2 = kernels.int8_conv2d(x, w, None, 1e-3, backend="triton", **kw)
    assert torch.equal(y2, ref.int8_conv2d(x, w, None, 1e-3, **kw))
    assert not torch.equal(y1, y2)


DW_CASES = [
    # B, H, W, C, K, stride, padding
    (2, 9, 8, 20, 3, 1, (1, 1, 1, 1)),
    (1, 10, 11, 70, 3, 2, (0, 1, 0, 1)),
    (1, 8, 9, 72, 5, 1, (2, 2, 2, 2)),
    (2, 9, 9, 33, 5, 2, (2, 1, 0, 3)),
    (1, 7, 6, 8, 3, (2, 1), (1, 0, 0, 1)),
]


@pytest.mark.parametrize("kernel", ["tiles", "rows"])
@pytest.mark.parametrize("variant", ["sym", "perchannel", "int32"])
@pytest.mark.parametrize("B,H,W,C,K,stride,pad", DW_CASES)
def test_depthwise_kernel_bit_exact(B, H, W, C, K, stride, pad, variant, kernel):
    """Both depthwise kernels ("rows" applies to stride 1; other cases fall back to "tiles")."""
    from kernels._config import use_depthwise_variant

    g = _gen(H * 100 + C + K)
    x, w = rand_i8((B, H, W, C), g).to(DEVICE), rand_i8((K, K, C), g).to(DEVICE)
    p = to_dev(make_params(variant, C, K * K, g))
    out_int32 = variant == "int32"
    kw = dict(stride=stride, padding=pad, out_int32=out_int32, **p)
    with use_depthwise_variant(kernel):
        y = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw)
    assert torch.equal(y, ref.int8_depthwise_conv2d(x, w, **kw))


DW_ROWS_CASES = [
    # B, H, W, C, KH, KW, padding: window sizes 1 to 5, non-square, asymmetric and no padding,
    # widths and channel counts that no tile divides
    (2, 7, 19, 37, 1, 1, (0, 0, 0, 0)),
    (1, 6, 5, 9, 2, 2, (1, 0, 0, 1)),
    (1, 9, 23, 70, 3, 3, (0, 2, 1, 1)),
    (2, 5, 6, 16, 4, 4, (2, 1, 1, 2)),
    (1, 3, 40, 33, 5, 5, (2, 2, 2, 2)),
    (1, 8, 7, 20, 5, 3, (2, 2, 1, 1)),
]


@pytest.mark.parametrize("B,H,W,C,KH,KW,pad", DW_ROWS_CASES)
def test_depthwise_rows_kernel_window_sizes(B, H, W, C, KH, KW, pad, monkeypatch):
    """The rows kernel keeps one accumulator per window row (up to 5) and shifts them down the
    image: every window height, output rows fewer than the window, int32 and int8 outputs, float32
    accumulation (its default) and int32 (its path beyond the float32 bound)."""
    from kernels import depthwise
    from kernels._config import use_depthwise_variant

    g = _gen(B * 1000 + H * 100 + W + KH * 7 + KW)
    x, w = rand_i8((B, H, W, C), g).to(DEVICE), rand_i8((KH, KW, C), g).to(DEVICE)
    p = to_dev(make_params("perchannel", C, KH * KW, g))
    families = []
    launch = depthwise.launch

    def spy(kernel, tuned, family, grid, args):
        families.append((family, args["FLOAT_ACC"]))
        return launch(kernel, tuned, family, grid, args)

    depthwise.launch = spy
    try:
        with use_depthwise_variant("rows"):
            for policy in ({"rows"}, set()):
                monkeypatch.setattr(depthwise, "FLOAT_ACC_KERNELS", frozenset(policy))
                for out_int32 in (False, True):
                    kw = dict(padding=pad, out_int32=out_int32, **p)
                    y = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw)
                    assert torch.equal(y, ref.int8_depthwise_conv2d(x, w, **kw)), (policy, out_int32)
    finally:
        depthwise.launch = launch
    assert families == [("depthwise_rows", True)] * 2 + [("depthwise_rows", False)] * 2


def test_depthwise_variant_switch():
    from kernels import _config

    assert _config.depthwise_variant() in _config.DEPTHWISE_VARIANTS
    with _config.use_depthwise_variant("rows"):
        assert _config.depthwise_variant() == "rows"
    with pytest.raises(ValueError, match="depthwise variant"):
        _config.set_depthwise_variant("winograd")


# ---------------------------------------------------------------------------------------------
# Depthwise float32 accumulation: exact up to 2^24, the int32 path beyond (kernels/README.md)
# ---------------------------------------------------------------------------------------------
def test_depthwise_float_accumulation_bound():
    """The launcher's bound, and a float32 sum just beyond it that is inexact (so the switch matters)."""
    from kernels.depthwise import FLOAT32_EXACT_LIMIT, float_accumulation_exact

    assert FLOAT32_EXACT_LIMIT == 2**24
    # |x - z_x| = 255 (z_x = 127 or -128) and |w - z_w| = 255: 258 taps, every window up to 16x16
    for z_x in (127, -128):
        assert float_accumulation_exact(16 * 16, z_x, symmetric=False)
        assert float_accumulation_exact(258, z_x, symmetric=False) and 258 * 255 * 255 < 2**24
        assert not float_accumulation_exact(259, z_x, symmetric=False) and 259 * 255 * 255 > 2**24
        # symmetric weights: |w| <= 128, 514 taps
        assert float_accumulation_exact(514, z_x, symmetric=True)
        assert not float_accumulation_exact(515, z_x, symmetric=True)
    assert float_accumulation_exact(514, 0, symmetric=False)  # |x - 0| <= 128
    assert not float_accumulation_exact(515, 0, symmetric=False)
    # float32 adds products of 65025 exactly up to 258 of them, not 259 (16841475 is odd, > 2^24)
    acc = np.float32(0)
    for _ in range(258):
        acc = np.float32(acc + np.float32(65025))
    assert int(acc) == 258 * 65025
    assert int(np.float32(acc + np.float32(65025))) != 259 * 65025


def _extreme_depthwise_case(KH: int, KW: int, z_x: int):
    """Every |x - z_x| = 255 and |w - z_w| = 255 (per-channel zero points at -128 and 127), one sign
    per channel, so each channel's partial sums grow to KH * KW * 65025 in magnitude; padded
    columns (z_x) contribute 0."""
    C = 6
    x = torch.full((1, KH, KW + 2, C), -128 if z_x == 127 else 127, dtype=torch.int8)
    w = torch.tensor([-128, 127] * (C // 2), dtype=torch.int8).expand(KH, KW, C).contiguous()
    w_zp = torch.tensor([127, -128] * (C // 2), dtype=torch.int32)
    bias = torch.tensor([5, -7, 0, 2**20, -(2**20), 3], dtype=torch.int32)
    kw = dict(bias=bias, z_x=z_x, w_zp=w_zp.to(DEVICE), padding=(0, 0, 1, 1), out_int32=True)
    kw["bias"] = bias.to(DEVICE)
    return x.to(DEVICE), w.to(DEVICE), kw


def _run_depthwise_spied(variant: str, x, w, kw):
    """Run the Triton depthwise kernel of ``variant``; returns (output, FLOAT_ACC of the launch)."""
    from kernels import depthwise
    from kernels._config import use_depthwise_variant

    seen = []
    launch = depthwise.launch

    def spy(kernel, tuned, family, grid, args):
        seen.append((family, args["FLOAT_ACC"]))
        return launch(kernel, tuned, family, grid, args)

    depthwise.launch = spy
    try:
        with use_depthwise_variant(variant):
            y = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw)
    finally:
        depthwise.launch = launch
    assert [f for f, _ in seen] == ["depthwise_rows" if variant == "rows" else "depthwise"]
    return y, seen[0][1]


@pytest.mark.parametrize(
    "variant,KH,KW,z_x,float_acc",
    [("tiles", 5, 5, 127, True), ("rows", 5, 5, 127, True),  # 5x5 windows at the extremes:
     ("tiles", 5, 5, -128, True), ("rows", 5, 5, -128, True),  # x - z_x = -255 and +255
     ("tiles", 6, 43, 127, True), ("rows", 3, 86, -128, True),  # 258 taps: the largest windows within the bound
     ("tiles", 7, 37, -128, False), ("rows", 1, 259, 127, False)],  # 259 taps: the int32 path
)  # fmt: skip
def test_depthwise_float_accumulation_at_the_exactness_limit(variant, KH, KW, z_x, float_acc, monkeypatch):
    from kernels import depthwise

    monkeypatch.setattr(depthwise, "FLOAT_ACC_KERNELS", frozenset({"tiles", "rows"}))
    x, w, kw = _extreme_depthwise_case(KH, KW, z_x)
    y, used_float = _run_depthwise_spied(variant, x, w, kw)
    assert used_float == float_acc
    expect = ref.int8_depthwise_conv2d(x, w, **kw)
    assert torch.equal(y, expect)
    sums = (expect - kw["bias"]).abs().max()
    assert int(sums) == KH * KW * 65025  # the interior window reaches the bound
    assert int((expect - kw["bias"]).abs().min()) == KH * (KW - 1) * 65025  # a padded column adds 0


@pytest.mark.parametrize("variant", ["tiles", "rows"])
def test_depthwise_float_accumulation_beyond_the_bound_is_inexact(variant, monkeypatch):
    """Forcing float32 on a 259-tap window at the extremes loses the last unit: the switch matters."""
    from kernels import depthwise

    monkeypatch.setattr(depthwise, "FLOAT_ACC_KERNELS", frozenset({"tiles", "rows"}))
    monkeypatch.setattr(depthwise, "float_accumulation_exact", lambda taps, z_x, symmetric: True)
    KH, KW = (7, 37) if variant == "tiles" else (1, 259)
    x, w, kw = _extreme_depthwise_case(KH, KW, 127)
    y, used_float = _run_depthwise_spied(variant, x, w, kw)
    assert used_float
    diff = (y.to(torch.int64) - ref.int8_depthwise_conv2d(x, w, **kw).to(torch.int64)).abs()
    assert int(diff.max()) == 1  # 259 * 65025 = 16841475 is odd: float32 rounds it to 16841476


def test_depthwise_shifted_weights_follow_in_place_updates():
    """The launcher's w - z_w tensors (float32 or int32) are cached per weight tensor and redone
    after an in-place update of the weights or of their zero points."""
    g = _gen(31)
    x, w = rand_i8((1, 6, 7, 24), g).to(DEVICE), rand_i8((3, 3, 24), g).to(DEVICE)
    w_zp = torch.randint(-128, 128, (24,), generator=g, dtype=torch.int32).to(DEVICE)
    kw = dict(z_x=-3, w_zp=w_zp, padding=1, out_int32=True)
    for variant in ("tiles", "rows"):
        y1, _ = _run_depthwise_spied(variant, x, w, kw)
        assert torch.equal(y1, ref.int8_depthwise_conv2d(x, w, **kw))
    w.mul_(-1).sub_(1)
    w_zp.add_(1).clamp_(max=127)
    for variant in ("tiles", "rows"):
        y2, _ = _run_depthwise_spied(variant, x, w, kw)
        assert torch.equal(y2, ref.int8_depthwise_conv2d(x, w, **kw))


@pytest.mark.parametrize(
    "shape,scales",
    [((2, 5, 7, 24), (0.031, 0.0117, 0.04)), ((3, 1000), (0.5, 0.5, 0.25)), ((9,), (1e-3, 2.0, 0.1))],
)
def test_add_kernel_bit_exact(shape, scales):
    g = _gen(14)
    a, b = rand_i8(shape, g).to(DEVICE), rand_i8(shape, g).to(DEVICE)
    ia, ib, m = ref.add_multipliers(*scales)
    for lo, hi, z_y in ((-128, 127, 0), (-128, -128 + 60, -128)):
        args = (a, b, 3, -9, ia, ib, m, z_y, lo, hi)
        assert torch.equal(kernels.int8_add(*args, backend="triton"), ref.int8_add(*args))


@pytest.mark.parametrize("shape,per_channel", [((2, 7, 7, 70), False), ((3, 4, 5, 33), True), ((1, 1, 1, 5), False)])
def test_avgpool_kernel_bit_exact(shape, per_channel):
    g = _gen(15)
    x = rand_i8(shape, g).to(DEVICE)
    C = shape[3]
    hw = shape[1] * shape[2]
    m = (torch.rand(C, generator=g) / hw).to(DEVICE) if per_channel else ref.float32_value(0.7 / hw)
    for z_x, z_y, lo, hi in ((-128, -128, -128, 127), (3, 5, -20, 100)):
        kw = dict(z_x=z_x, multiplier=m, z_y=z_y, lo=lo, hi=hi)
        assert torch.equal(kernels.int8_avgpool(x, backend="triton", **kw), ref.int8_avgpool(x, **kw))


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 1, (0, 1, 1, 2))])
def test_maxpool_kernel_bit_exact(k, s, p):
    x = rand_i8((2, 9, 8, 70), _gen(16)).to(DEVICE)
    assert torch.equal(kernels.int8_maxpool2d(x, k, s, p, backend="triton"), ref.int8_maxpool2d(x, k, s, p))


def test_maxpool_kernel_padding_on_post_relu_input():
    """ResNet's 3x3/2 max pool after a ReLU: most values are the zero point -128 and C = 64 allows
    16-byte loads; padded taps must count as -128 (not -1) so all-zero border windows stay -128."""
    g = _gen(17)
    x = torch.full((3, 12, 12, 64), -128, dtype=torch.int8)
    keep = torch.rand(x.shape, generator=g) < 0.05
    x[keep] = rand_i8((int(keep.sum()),), g, lo=-128, hi=128)
    x = x.to(DEVICE)
    y = kernels.int8_maxpool2d(x, 3, 2, 1, backend="triton")
    expect = ref.int8_maxpool2d(x, 3, 2, 1)
    assert torch.equal(y, expect)
    assert (expect[:, 0, :, :] == -128).any()  # some border windows hold only zeros


@pytest.mark.parametrize("layout", ["nchw", "nchw_channels_last", "nhwc", "flat"])
def test_quantize_dequantize_kernels_bit_exact(layout):
    g = _gen(17)
    x = torch.randn(2, 5, 6, 7, generator=g) * 4
    x[0, 0, 0, :4] = torch.tensor([1e30, -1e30, float("inf"), -float("inf")])
    x[1, 1, 1, :4] = torch.tensor([0.05, 0.15, -0.25, 2.5]) * 0.1  # ties of x / 0.1 in float32
    if layout == "nchw_channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    mode = {"nchw_channels_last": "nchw"}.get(layout, layout)
    x = x.to(DEVICE)
    for scale, z, lo, hi in ((0.1, 0, -128, 127), (0.0371, -7, -100, 90)):
        q = kernels.quantize(x, scale, z, lo, hi, layout=mode, backend="triton")
        assert torch.equal(q, ref.quantize(x, scale, z, lo, hi, layout=mode))
        assert q.dtype == torch.int8 and q.is_contiguous()
        if mode == "nchw":
            assert q.shape == (2, 6, 7, 5)
        d = kernels.dequantize(q, scale, z, backend="triton")
        assert torch.equal(d, ref.dequantize(q, scale, z))


def test_kernel_modules_direct_and_empty_batch():
    """The Triton launchers are usable directly, and empty inputs give empty outputs."""
    from kernels import conv, gemm

    g = _gen(18)
    x, w = rand_i8((0, 16), g).to(DEVICE), rand_i8((8, 16), g).to(DEVICE)
    assert gemm.int8_gemm(x, w, None, 0.1).shape == (0, 8)
    x4 = rand_i8((0, 5, 5, 4), g).to(DEVICE)
    assert conv.int8_conv2d(x4, rand_i8((3, 3, 3, 4), g).to(DEVICE), None, 0.1, padding=1).shape == (0, 5, 5, 3)


# =============================================================================================
# Dispatch, validation, custom ops
# =============================================================================================
def test_backend_dispatch_and_context():
    g = _gen(19)
    x, w = rand_i8((5, 33), g).to(DEVICE), rand_i8((7, 33), g).to(DEVICE)
    assert kernels.get_backend() == "auto"
    with kernels.use_backend("reference"):
        assert kernels.get_backend() == "reference"
        y_ref = kernels.int8_gemm(x, w, None, 0.01, z_x=3)
    assert kernels.get_backend() == "auto"
    assert torch.equal(kernels.int8_gemm(x, w, None, 0.01, z_x=3, backend="triton"), y_ref)
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.int8_gemm(x, w, None, 0.01, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.set_backend("fast")


def test_triton_backend_on_cpu_without_interpreter_is_an_error(monkeypatch):
    from kernels import ops

    monkeypatch.setattr(ops, "_interpreted", lambda: False)
    x = torch.zeros((2, 16), dtype=torch.int8)
    with pytest.raises(ValueError, match="CUDA tensors"):
        kernels.int8_gemm(x, x, None, 0.1, backend="triton")
    # "auto" falls back to the reference for CPU tensors
    assert kernels.int8_gemm(x, x, None, 0.1, backend="auto").shape == (2, 2)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_validation_errors(backend):
    g = _gen(20)

    def rand_i8(shape, g):  # on the device the backend runs on
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8).to(DEVICE)

    x, w = rand_i8((4, 16), g), rand_i8((3, 16), g)
    call = lambda *a, **k: kernels.int8_gemm(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(ValueError, match="dtype"):
        call(x.to(torch.int32), w, None, 0.1)
    with pytest.raises(ValueError, match="K differs"):
        call(x, rand_i8((3, 15), g), None, 0.1)
    with pytest.raises(ValueError, match="contiguous"):
        call(rand_i8((16, 4), g).t(), w, None, 0.1)
    with pytest.raises(ValueError, match="multiplier"):
        call(x, w, None, torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="multiplier"):
        call(x, w, None, torch.ones(3, dtype=torch.float64, device=DEVICE))
    with pytest.raises(ValueError, match="z_x"):
        call(x, w, None, 0.1, z_x=200)
    with pytest.raises(ValueError, match="bias"):
        call(x, w, torch.zeros(4, dtype=torch.int32, device=DEVICE), 0.1)
    with pytest.raises(ValueError, match="lo"):
        call(x, w, None, 0.1, lo=10, hi=5)
    with pytest.raises(ValueError, match="lo and hi"):
        # bound tensors are read back (validated) only on the CPU
        kernels.int8_gemm(x.cpu(), w.cpu(), None, 0.1, lo=torch.tensor([-200], dtype=torch.int32), backend="reference")
    x4 = rand_i8((1, 5, 5, 4), g)
    with pytest.raises(ValueError, match="NHWC"):
        kernels.int8_conv2d(x4.permute(0, 3, 1, 2), rand_i8((2, 3, 3, 4), g), None, 0.1, backend=backend)
    with pytest.raises(ValueError, match="channels"):
        kernels.int8_conv2d(x4, rand_i8((2, 3, 3, 5), g), None, 0.1, backend=backend)
    with pytest.raises(ValueError, match="padding"):
        kernels.int8_conv2d(x4, rand_i8((2, 3, 3, 4), g), None, 0.1, padding=(1, 1, 1), backend=backend)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.int8_conv2d(x4, rand_i8((2, 7, 7, 4), g), None, 0.1, backend=backend)
    with pytest.raises(ValueError, match="KH, KW, C"):
        kernels.int8_depthwise_conv2d(x4, rand_i8((4, 3, 3), g), None, 0.1, backend=backend)
    with pytest.raises(ValueError, match="same shape"):
        kernels.int8_add(x, x[:2], 0, 0, 1, 1, 1.0, 0, backend=backend)
    with pytest.raises(ValueError, match="float32"):
        kernels.quantize(torch.zeros(2, 3, 4, 4, dtype=torch.float64, device=DEVICE), 0.1, 0, backend=backend)
    with pytest.raises(ValueError, match="4-D"):
        kernels.quantize(torch.zeros(3, 4, device=DEVICE), 0.1, 0, backend=backend)
    with pytest.raises(ValueError, match="window"):
        kernels.int8_maxpool2d(x4, 3, 2, 3, backend=backend)


def test_integer_bounds_checked_on_every_device():
    """Python-int bounds are validated before they become device tensors (a GPU's bound tensors
    are not read back), so lo > hi fails on a non-CPU device too; here the meta device."""
    meta = torch.device("meta")
    with pytest.raises(ValueError, match=r"lo \(10\) must not exceed hi \(5\)"):
        ref.check_epilogue(0.1, 0, 10, 5, 3, meta)
    m, z, lo, hi = ref.check_epilogue(0.1, 0, -3, 7, 3, meta)
    assert lo.device.type == "meta" and hi.shape == (1,) and z == 0


def test_add_multipliers_validation_and_bounds():
    ia, ib, m = ref.add_multipliers(0.02, 0.05, 0.03)
    assert ib == 1 << ref.ADD_SHIFT and 0 < ia < ib
    assert m == ref.float32_value(0.05 / (2**ref.ADD_SHIFT * 0.03))
    with pytest.raises(ValueError, match="s_b"):
        ref.add_multipliers(0.02, -1.0, 0.03)
    with pytest.raises(ValueError, match="ia"):
        ref.int8_add(torch.zeros(3, dtype=torch.int8), torch.zeros(3, dtype=torch.int8), 0, 0, 2**20, 1, 1.0, 0)


def test_weight_layout_helpers():
    w = torch.arange(2 * 3 * 4 * 5, dtype=torch.int8).reshape(2, 3, 4, 5)  # [N, C, KH, KW]
    w_nhwc = kernels.conv_weight_to_nhwc(w)
    assert w_nhwc.shape == (2, 4, 5, 3) and w_nhwc[1, 2, 3, 0] == w[1, 0, 2, 3]
    dw = torch.arange(6 * 9, dtype=torch.int8).reshape(6, 1, 3, 3)
    dw_hwc = kernels.depthwise_weight_to_hwc(dw)
    assert dw_hwc.shape == (3, 3, 6) and dw_hwc[1, 2, 4] == dw[4, 0, 1, 2]


class TinyInt8Net(torch.nn.Module):
    """quantize -> stem conv -> depthwise -> 1x1 conv -> residual add -> max pool -> avg pool -> fc."""

    def __init__(self, backend: Optional[str]):
        super().__init__()
        g = _gen(21)
        self.backend = backend
        self.w1 = rand_i8((8, 3, 3, 3), g).to(DEVICE)
        self.b1 = torch.randint(-500, 500, (8,), generator=g, dtype=torch.int32).to(DEVICE)
        self.m1 = (torch.rand(8, generator=g) * 3e-3).to(DEVICE)
        self.wd = rand_i8((3, 3, 8), g).to(DEVICE)
        self.w2 = rand_i8((8, 1, 1, 8), g).to(DEVICE)
        self.wfc = rand_i8((5, 8), g).to(DEVICE)
        self.ia, self.ib, self.madd = ref.add_multipliers(0.05, 0.03, 0.06)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        be = self.backend
        q = kernels.quantize(img, 0.02, -3, backend=be)
        h = kernels.int8_conv2d(q, self.w1, self.b1, self.m1, z_x=-3, z_y=-128, stride=2, padding=(0, 1, 0, 1),
                                lo=-128, hi=-128 + 120, backend=be)  # fmt: skip
        d = kernels.int8_depthwise_conv2d(h, self.wd, None, 4e-3, z_x=-128, w_zp=1, z_y=-128, padding=1, backend=be)
        e = kernels.int8_conv2d(d, self.w2, None, 2e-3, z_x=-128, z_y=0, backend=be)
        r = kernels.int8_add(h, e, -128, 0, self.ia, self.ib, self.madd, -10, backend=be)
        p = kernels.int8_maxpool2d(r, 3, 2, 1, backend=be)
        a = kernels.int8_avgpool(p, -10, 0.9 / 9, -10, backend=be)
        logits = kernels.int8_gemm(a, self.wfc, None, 0.01, z_x=-10, z_y=0, backend=be)
        return kernels.dequantize(logits, 0.1, 0, backend=be)


def _tiny_input() -> torch.Tensor:
    return torch.randn(2, 3, 11, 12, generator=_gen(22)).to(DEVICE)


def test_custom_ops_torch_compile_matches_eager():
    net_ref, net_tri = TinyInt8Net("reference"), TinyInt8Net("triton")
    img = _tiny_input()
    eager = net_ref(img)
    assert torch.equal(net_tri(img), eager)
    assert eager.abs().sum() > 0 and eager.shape == (2, 5)
    torch._dynamo.reset()
    compiled = torch.compile(net_tri, backend="eager", fullgraph=True)
    assert torch.equal(compiled(img), eager)


def test_custom_ops_torch_export_and_fake_shapes():
    net = TinyInt8Net("reference")
    img = _tiny_input()
    ep = torch.export.export(net, (img,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for op in ("quantize", "conv2d", "depthwise_conv2d", "add", "maxpool2d", "avgpool", "gemm", "dequantize"):
        assert f"dfq_int8.{op}.default" in targets, targets
    out_meta = [n for n in ep.graph.nodes if n.op == "output"][0].args[0][0].meta["val"]
    assert tuple(out_meta.shape) == (2, 5) and out_meta.dtype == torch.float32
    assert torch.equal(ep.module()(img), net(img))


def test_fake_impls_agree_with_real_outputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    g = _gen(23)
    x4, w4 = rand_i8((2, 9, 8, 6), g), rand_i8((5, 3, 3, 6), g)
    dw, x2, w2 = rand_i8((5, 5, 6), g), rand_i8((7, 6), g), rand_i8((4, 6), g)
    m1, i1 = torch.tensor([0.01]), torch.tensor([-128], dtype=torch.int32)
    i2 = torch.tensor([127], dtype=torch.int32)
    calls = {
        "gemm": lambda: torch.ops.dfq_int8.gemm(x2, w2, None, m1, 1, None, 0, i1, i2, True, False, "reference"),
        "conv": lambda: torch.ops.dfq_int8.conv2d(
            x4, w4, None, m1, 0, None, 0, i1, i2, [2, 1], [0, 1, 1, 1], False, False, "reference"
        ),
        "dw": lambda: torch.ops.dfq_int8.depthwise_conv2d(
            x4, dw, None, m1, 0, None, 0, i1, i2, [2, 2], [2, 2, 2, 2], True, "reference"
        ),
        "add": lambda: torch.ops.dfq_int8.add(x4, x4, 0, 1, 3, 4, 0.5, 0, -128, 127, "reference"),
        "avg": lambda: torch.ops.dfq_int8.avgpool(x4, 0, m1, 0, i1, i2, "reference"),
        "max": lambda: torch.ops.dfq_int8.maxpool2d(x4, [3, 3], [2, 2], [1, 1, 1, 1], "reference"),
        "quant": lambda: torch.ops.dfq_int8.quantize(x4.float().permute(0, 3, 1, 2), 0.1, 0, -128, 127, "nchw",
                                                     "reference"),  # fmt: skip
        "dequant": lambda: torch.ops.dfq_int8.dequantize(x4, 0.1, 0, "reference"),
    }
    real = {k: f() for k, f in calls.items()}
    mode = FakeTensorMode()
    with mode:
        x4, w4, dw, x2, w2, m1, i1, i2 = (mode.from_tensor(t) for t in (x4, w4, dw, x2, w2, m1, i1, i2))
        fake = {k: f() for k, f in calls.items()}
    for k in calls:
        assert fake[k].shape == real[k].shape and fake[k].dtype == real[k].dtype, k


def test_opcheck_gemm_and_conv():
    g = _gen(24)
    x2, w2 = rand_i8((7, 20), g), rand_i8((4, 20), g)
    m1, i1, i2 = torch.tensor([0.01]), torch.tensor([-128], dtype=torch.int32), torch.tensor([127], dtype=torch.int32)
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(
        torch.ops.dfq_int8.gemm.default, (x2, w2, None, m1, 1, None, 0, i1, i2, False, False, "reference"),
        test_utils=tests,
    )  # fmt: skip
    x4, w4 = rand_i8((1, 6, 5, 4), g), rand_i8((3, 3, 3, 4), g)
    torch.library.opcheck(
        torch.ops.dfq_int8.conv2d.default,
        (x4, w4, None, m1, 2, None, 0, i1, i2, [1, 1], [1, 1, 1, 1], False, False, "reference"),
        test_utils=tests,
    )


# =============================================================================================
# Benchmark script
# =============================================================================================
def test_benchmark_quick_writes_report(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "benchmarks" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "kernels.json"
    bench.main(["--quick", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["schema"] == bench.SCHEMA and report["mode"] == "quick"
    assert report["all_bit_exact"] is True
    kinds = {r["kind"] for r in report["results"]}
    assert kinds == {"gemm", "conv3x3", "depthwise", "add", "maxpool", "avgpool", "quantize", "stem",
                     "dwproject"} == set(bench.KINDS)
    for r in report["results"]:
        assert r["bit_exact"] is True and r["ms"] > 0 and r["gbps"] > 0
        assert set(r) >= {"name", "shape", "tops", "baselines", "speedup", "roofline_floor_ms", "pct_of_roofline"}
        if r["kind"] == "depthwise":  # every kernel variant that applies (rows: stride 1; tma: C % 16 == 0)
            st, c = r["shape"]["stride"], r["shape"]["C"]
            expected = {"tiles"} | ({"rows"} if st == 1 else set()) | ({"tma"} if c % 16 == 0 else set())
            assert set(r["variants"]) == expected, r["variants"]
            assert all(v["bit_exact"] is True and v["ms"] > 0 for v in r["variants"].values())
            assert all(v["tiles"] and v["tiles"][0]["family"].startswith("depthwise") for v in r["variants"].values())
        if r["kind"] == "gemm":  # both GEMM kernels where TMA can read the operands (K % 16 == 0)
            expected = {"pointers", "tma"} if r["shape"]["K"] % 16 == 0 else {"pointers"}
            assert set(r["variants"]) == expected, r["variants"]
            assert all(v["bit_exact"] is True and v["ms"] > 0 for v in r["variants"].values())
            assert (r["speedup"]["tma_vs_pointers"] is not None) == ("tma" in expected)
            # a K or N no multiple of 16 is timed again on padded rows (to_int8's channel padding)
            narrow = r["shape"]["K"] % 16 != 0 or r["shape"]["N"] % 16 != 0
            assert ("padded" in r) == narrow and (r["speedup"]["padded_vs_unpadded"] is not None) == narrow
            if narrow:
                assert r["padded"]["bit_exact"] is True and r["padded"]["K"] % 16 == r["padded"]["N"] % 16 == 0
        if r["kind"] == "conv3x3":  # both tap-major loops forced, and the equivalent GEMM timed
            assert {k: v["bit_exact"] for k, v in r["loops"].items() if k != "threshold"} == {"unrolled": True,
                                                                                             "stepped": True}
            assert all(r["loops"][k]["ms"] > 0 for k in ("unrolled", "stepped"))
            assert r["baselines"]["equivalent_gemm_ms"] > 0 and r["speedup"]["vs_equivalent_gemm"] > 0
            # and both kernel variants (stride 1, C % 16 == 0: the TMA convolution applies)
            assert set(r["variants"]) == {"pointers", "tma"} and r["speedup"]["tma_vs_pointers"] > 0
            assert all(v["bit_exact"] is True and v["vs_equivalent_gemm"] > 0 for v in r["variants"].values())
        if r["kind"] == "stem":  # the fused stem against quantize then the flat-K convolution (checked equal)
            assert r["baselines"]["quantize_then_conv_ms"] > 0 and r["speedup"]["vs_quantize_then_conv"] > 0
        if r["kind"] == "dwproject":  # the fused pair against the two kernels (checked equal)
            assert r["baselines"]["depthwise_then_gemm_ms"] > 0 and r["speedup"]["vs_depthwise_then_gemm"] > 0
        # the timer (CUDA-graph replay on a GPU, no fallback), the L2 rotation (a stand-in L2 on
        # the CPU), the copy references, the tiles
        cuda = torch.cuda.is_available()
        assert r["timer"]["method"] == ("cuda_graph" if cuda else "wall_clock"), r["timer"]
        assert r["timer"]["fallback"] is None and r["timer_fallbacks"] == []
        assert r["l2"]["method"] == "rotate" and 1 <= r["l2"]["buffer_sets"] <= (bench.MAX_SETS if cuda else 2)
        assert r["bandwidth"]["triton_copy_gbps"] > 0 and r["bandwidth"]["torch_copy_gbps"] > 0
        if not cuda:
            assert r["bandwidth"]["spec_gbps"] is None and r["pct_of_peak_tops"] is None  # no card on a CPU
        sources = ("default", "table", "autotune", "forced") if cuda else ("interpreter",)
        assert all(t["source"] in sources and t["config"] for t in r["tiles"]), r["tiles"]
        assert bool(r["tiles"]) == (r["kind"] in ("gemm", "conv3x3", "depthwise", "maxpool", "stem"))  # tiled families
    assert report["copy_bandwidth_gbps"] > 0 and report["copy_bandwidth"]["triton_copy_gbps"] > 0
    assert report["timer_fallback_count"] == 0
    assert report["l2"]["bytes"] > 0 and (torch.cuda.is_available() or report["l2"]["bytes"] == bench.QUICK_L2_BYTES)
    assert "all bit-exact: True" in capsys.readouterr().out
    # without --out, a quick run never writes over committed results; the GPU tables of rooflines
    assert not bench.default_out(True, "kernels").resolve().is_relative_to(ROOT)
    assert bench.spec_hbm_gbps("NVIDIA H200") == 4800.0 and bench.spec_hbm_gbps("NVIDIA H100 80GB HBM3") == 3350.0


def test_benchmark_records_a_failing_case_and_goes_on(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_kernels2", ROOT / "benchmarks" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def broken(*args):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(bench, "bench_add", broken)
    out = tmp_path / "kernels.json"
    with pytest.raises(SystemExit, match="not bit-exact"):
        bench.main(["--quick", "--kinds", "add", "avgpool", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] is True and report["all_bit_exact"] is False and report["kinds"] == ["add", "avgpool"]
    add, pool = report["results"]
    assert add["kind"] == "add" and add["bit_exact"] is False and "no kernel image" in add["error"]
    assert pool["kind"] == "avgpool" and pool["bit_exact"] is True  # the run went on past the failure


def test_benchmark_compile_only_for_hopper(tmp_path):
    """Every kernel compiles ahead of time for cuda:90 (no GPU needed); GEMM/conv lower to wgmma."""
    import os
    import subprocess
    import sys

    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--compile-only", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["all_ok"] and report["target"] == "cuda:90"
    by_kernel = {r["kernel"]: r for r in report["results"]}
    assert {"depthwise 5x5 float32 acc", "depthwise rows 5x5", "depthwise rows 3x3 int32 acc"} <= set(by_kernel)
    assert {"gemm wzp=False", "conv 3x3 flat=False", "depthwise 3x3", "add", "quantize nchw", "quantize im2col 7x7 rgb",
            "dwproject 3x3 residual", "dwproject 5x5 residual",
            "lut into slice",
            "lut per channel", "mul gate", "upsample bilinear", "avgpool2d 3x3", "maxpool dilated 3x3", "upsample nearest"} <= set(by_kernel)
    # the TMA variants load their operands with bulk tensor copies (and only they do)
    tma = {"gemm tma wzp=False", "gemm tma wzp=True residual", "conv tma 3x3 wzp=False",
           "conv tma 3x3 wzp=True residual stride 2"}
    assert tma <= set(by_kernel) and all(r["tma"] == (" tma " in f" {name} ") for name, r in by_kernel.items())
    # rows of a channel count that is not a multiple of 16 compile to byte loads and stores and no
    # cp.async pipeline (why to_int8(pad_channels=True) pads them); aligned rows to vectors
    unaligned, aligned = by_kernel["gemm unaligned rows"], by_kernel["gemm wzp=True"]
    assert unaligned["byte_accesses"] > 0 and not unaligned["cp_async"]
    assert aligned["byte_accesses"] == 0 and aligned["cp_async"]
    for name, r in by_kernel.items():
        assert r["wgmma"] == name.startswith(("gemm", "conv", "dwproject")), name
        assert r["shared_bytes"] <= 227 * 1024, name
        if name != "gemm unaligned rows":  # spills with some Triton versions: the reason for the padding
            assert r["spill_bytes"] in (0, None), (name, r["spill_bytes"])
        # a fused multiply-add reaching the rounding would change requantization results; the
        # depthwise float32 accumulations are made of them (exact by their bound)
        assert not r["fma_into_rounding"], name
        float_acc = name in ("depthwise rows 3x3", "depthwise rows 5x5", "depthwise 5x5 float32 acc")
        assert r["fp32_fma"] == float_acc, name
        assert r["rint"] == (name not in ("dequantize", "maxpool 3x3", "maxpool dilated 3x3", "lut into slice",
                                          "lut per channel", "upsample nearest")), name
        assert not r["sign_extended_load_other"], name  # see kernels/pool.py's max pool


# =============================================================================================
# GEMM with a fused residual add (kernels.gemm.GemmPlan(..., residual=...))
# =============================================================================================
def _residual_case(M: int, K: int, N: int, per_channel: bool, seed: int):
    """A GEMM with asymmetric zero points, a bias and clamp bounds (per channel or per tensor),
    its residual operand ``r`` and the add (bounds of its own, the layer's output as operand a)."""
    g = _gen(seed)
    x, w, r = rand_i8((M, K), g), rand_i8((N, K), g), rand_i8((M, N), g)
    scale = 6.0 / (128.0 * 40.0 * math.sqrt(K))
    if per_channel:
        mult = (torch.rand(N, generator=g) + 0.5) * scale
        lo = torch.randint(-128, -20, (N,), generator=g, dtype=torch.int32)
        hi = torch.randint(20, 128, (N,), generator=g, dtype=torch.int32)
        w_zp = torch.randint(-4, 5, (N,), generator=g, dtype=torch.int32)
    else:
        mult, lo, hi, w_zp = scale, -100, 110, torch.tensor([3], dtype=torch.int32)
    p = dict(bias=torch.randint(-30000, 30000, (N,), generator=g, dtype=torch.int32), multiplier=mult, z_x=-17,
             w_zp=w_zp, z_y=5, lo=lo, hi=hi)
    ia, ib, m = ref.add_multipliers(0.021, 0.034, 0.05)
    spec = ref.ResidualAdd(z_a=5, z_b=-11, ia=ia, ib=ib, multiplier=m, z_y=-3, lo=-60, hi=60)
    return x.to(DEVICE), w.to(DEVICE), r.to(DEVICE), to_dev(p), spec


def test_conv_tma_variant_bit_exact_and_where_it_applies():
    """The "tma" variant of the convolution (stride 1 or 2, channels a multiple of 16: output
    patches loaded as TMA boxes of the NHWC input or, with stride 2, of its four phases,
    zero-filled past the image and past C) against the reference: 1x1, 3x3, 5x5 and 3x1 windows,
    symmetric, asymmetric and no padding with z_x != 0, the weight zero point, the int32 output
    and the residual add, output widths that need each patch width and ones no patch divides;
    other strides, 24-channel convolutions and a misaligned input run the pointer kernel, with the
    same results."""
    from kernels import conv

    assert [conv.tma_patch_width(w) for w in (56, 28, 14, 7, 11, 224)] == [8, 4, 16, 8, 4, 16]
    g = _gen(78)
    ia, ib, m = ref.add_multipliers(0.021, 0.034, 0.05)
    spec = ref.ResidualAdd(z_a=3, z_b=-11, ia=ia, ib=ib, multiplier=m, z_y=-3, lo=-60, hi=60)

    def run(x, w, kw):
        with kernels.use_settings(gemm_variant="tma"), tiles.record_launches() as launches:
            y = conv.int8_conv2d(x, w, **kw)
        return y, [rec[0] for rec in launches]

    # x shape, w shape, stride, padding, parameters, residual
    for xs, ws, stride, pad, variant, residual in (
        ((2, 9, 14, 32), (24, 3, 3, 32), 1, 1, "perchannel", False),
        ((1, 6, 28, 16), (40, 5, 5, 16), 1, (1, 3, 2, 2), "asym", True),
        ((1, 5, 7, 64), (9, 3, 1, 64), 1, (1, 1, 0, 0), "int32", False),
        ((1, 4, 9, 16), (16, 3, 3, 16), 1, 0, "sym", False),
        # stride 2: odd and even sizes, TF "same" padding, a 1x1 downsampling, a 2 x 3 input
        ((2, 9, 11, 48), (20, 3, 3, 48), 2, 1, "perchannel", True),
        ((1, 8, 9, 16), (24, 3, 3, 16), 2, (0, 1, 0, 1), "asym", False),
        ((1, 14, 14, 32), (16, 1, 1, 32), 2, 0, "int32", False),
        ((1, 2, 3, 16), (8, 5, 5, 16), 2, 2, "perchannel", False),
    ):  # fmt: skip
        x, w = rand_i8(xs, g).to(DEVICE), rand_i8(ws, g).to(DEVICE)
        n, kh, kwid, c = ws
        kw = dict(to_dev(make_params(variant, n, kh * kwid * c, g)), stride=stride, padding=pad,
                  out_int32=variant == "int32")
        expect = ref.int8_conv2d(x, w, **kw)
        if residual:
            kw["z_y"] = spec.z_a
            r = rand_i8(tuple(expect.shape), g).to(DEVICE)
            expect = ref.residual_add(ref.int8_conv2d(x, w, **kw), r, spec)
            kw.update(residual=spec, r=r)
        y, names = run(x, w, kw)
        assert names == ["int8_conv2d_tma_kernel"] and torch.equal(y, expect), (xs, ws)
    # the pointer kernel: stride (2, 1) and 3; 24 channels (rows 24 bytes apart); an input 1 byte
    # off 16; stride 2 on a 1-row input
    p = to_dev(make_params("perchannel", 8, 9 * 32, g))
    x32, w32 = rand_i8((1, 9, 9, 32), g).to(DEVICE), rand_i8((8, 3, 3, 32), g).to(DEVICE)
    x24, w24 = rand_i8((1, 9, 9, 24), g).to(DEVICE), rand_i8((8, 3, 3, 24), g).to(DEVICE)
    p24 = to_dev(make_params("perchannel", 8, 9 * 24, g))
    xs = rand_i8((9 * 9 * 32 + 1,), g).to(DEVICE)[1:].view(1, 9, 9, 32)
    x1 = rand_i8((1, 1, 9, 32), g).to(DEVICE)
    for x, w, q, stride in ((x32, w32, p, (2, 1)), (x32, w32, p, 3), (x24, w24, p24, 1), (xs, w32, p, 1),
                            (x1, w32, p, 2)):
        y, names = run(x, w, dict(q, padding=1, stride=stride))
        assert names == ["int8_conv2d_kernel"], names
        assert torch.equal(y, ref.int8_conv2d(x, w, padding=1, stride=stride, **q))


def test_gemm_tma_variant_bit_exact_and_where_it_applies():
    """The "tma" GEMM variant (persistent grid, operand blocks through TMA descriptors) against the
    reference on shapes no tile divides (the last K block read past the edge), with the weight
    zero point, per-tensor and per-channel epilogues, the int32 output and the residual add; a
    launch whose operands TMA cannot read (K no multiple of 16; an operand not 16-byte aligned)
    runs the pointer kernel, with the same results."""
    from kernels import gemm

    g = _gen(77)

    def run(x, w, kw):
        with kernels.use_settings(gemm_variant="tma"), tiles.record_launches() as launches:
            y = gemm.int8_gemm(x, w, **kw)
        return y, [rec[0] for rec in launches]

    ia, ib, m = ref.add_multipliers(0.021, 0.034, 0.05)
    spec = ref.ResidualAdd(z_a=3, z_b=-11, ia=ia, ib=ib, multiplier=m, z_y=-3, lo=-60, hi=60)
    # M, K, N, parameters, residual; 8 output tiles of 64 x 64 for 3 programs in the first case
    for M, K, N, variant, residual in ((131, 176, 130, "perchannel", False), (70, 48, 37, "asym", True),
                                       (9, 32, 5, "int32", False), (1, 64, 16, "sym", False)):  # fmt: skip
        x, w = rand_i8((M, K), g).to(DEVICE), rand_i8((N, K), g).to(DEVICE)
        kw = dict(to_dev(make_params(variant, N, K, g)), out_int32=variant == "int32")
        expect = ref.int8_gemm(x, w, **kw)
        if residual:
            kw["z_y"] = spec.z_a
            r = rand_i8((M, N), g).to(DEVICE)
            expect = ref.residual_add(ref.int8_gemm(x, w, **kw), r, spec)
            kw.update(residual=spec, r=r)
        y, names = run(x, w, kw)
        assert names == ["int8_gemm_tma_kernel"] and torch.equal(y, expect), (M, K, N, variant)
    # where TMA cannot read an operand: K = 40 (rows 40 bytes apart), x or w starting 1 byte off
    # a 16-byte boundary (a view into a larger buffer)
    p = to_dev(make_params("perchannel", 24, 40, g))
    x, w = rand_i8((33, 40), g).to(DEVICE), rand_i8((24, 40), g).to(DEVICE)
    xs = rand_i8((33 * 48 + 1,), g).to(DEVICE)[1:].view(33, 48)
    ws = rand_i8((24 * 48 + 1,), g).to(DEVICE)[1:].view(24, 48)
    x48, w48 = rand_i8((33, 48), g).to(DEVICE), rand_i8((24, 48), g).to(DEVICE)
    p48 = to_dev(make_params("perchannel", 24, 48, g))
    for a, b, q in ((x, w, p), (xs, w48, p48), (x48, ws, p48)):
        y, names = run(a, b, q)
        assert names == ["int8_gemm_kernel"] and torch.equal(y, ref.int8_gemm(a, b, **q))
    assert not gemm.tma_ready(xs) and gemm.tma_ready(x48)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("M,K,N", [(67, 93, 45), (1, 40, 24), (130, 150, 66)])
def test_gemm_residual_epilogue_bit_exact(M, K, N, per_channel):
    """The GEMM with the residual add fused into its epilogue equals the reference GEMM followed
    by the reference add (``kernels.reference.residual_add``), also with the operands' roles
    exchanged (``ResidualAdd.swapped`` of the add ``r + gemm``)."""
    import dataclasses

    from kernels import gemm

    x, w, r, p, spec = _residual_case(M, K, N, per_channel, seed=M + K + N)
    layer = ref.int8_gemm(x, w, **p)
    expect = ref.residual_add(layer, r, spec)
    y = gemm.int8_gemm(x, w, residual=spec, r=r, **p)
    assert y.dtype == torch.int8 and y.shape == (M, N)
    assert torch.equal(y, expect)
    assert torch.equal(expect, ref.int8_add(r, layer, *dataclasses.astuple(spec.swapped())))
    if M > 1:  # not a saturated, trivial case; both bounds of the add are reached
        assert len(torch.unique(y)) > 50 and int(y.min()) == -60 and int(y.max()) == 60
    # a plan bound once, called on other rows
    plan = gemm.GemmPlan(w, ref.fold_bias(w, p["bias"], p["z_x"], p["w_zp"]), p["w_zp"],
                         *ref.check_epilogue(p["multiplier"], p["z_y"], p["lo"], p["hi"], N, x.device), False,
                         residual=spec)
    assert torch.equal(plan(x[: M // 2 + 1], r[: M // 2 + 1]), expect[: M // 2 + 1])


def test_gemm_residual_epilogue_every_autotune_tile():
    """Each GEMM autotune tile, forced, with the residual epilogue (shapes no tile divides)."""
    from kernels import _config, gemm

    x, w, r, p, spec = _residual_case(37, 70, 45, True, seed=3)
    expect = ref.residual_add(ref.int8_gemm(x, w, **p), r, spec)
    for cfg in _config.GPU_CONFIGS["gemm"]:
        with _config.forced_config("gemm", cfg):
            assert torch.equal(gemm.int8_gemm(x, w, residual=spec, r=r, **p), expect), _config_id(cfg)


def test_gemm_residual_epilogue_checks_its_arguments():
    import dataclasses

    from kernels import gemm

    x, w, r, p, spec = _residual_case(9, 20, 7, False, seed=4)
    with pytest.raises(ValueError, match="out_int32"):
        gemm.int8_gemm(x, w, out_int32=True, residual=spec, r=r, **p)
    with pytest.raises(ValueError, match="pass its other operand r"):
        gemm.int8_gemm(x, w, residual=spec, **p)
    with pytest.raises(ValueError, match="no residual add"):
        gemm.int8_gemm(x, w, r=r, **p)
    with pytest.raises(ValueError, match=r"r must be \[M, N\]"):
        gemm.int8_gemm(x, w, residual=spec, r=r[:, :5].contiguous(), **p)
    with pytest.raises(ValueError, match="contiguous"):
        gemm.int8_gemm(x, w, residual=spec, r=r.t().contiguous().t(), **p)
    with pytest.raises(ValueError, match=r"\|ia\|"):
        gemm.int8_gemm(x, w, residual=dataclasses.replace(spec, ia=1 << 16), r=r, **p)
    with pytest.raises(ValueError, match="lo"):
        gemm.int8_gemm(x, w, residual=dataclasses.replace(spec, lo=10, hi=0), r=r, **p)
    assert gemm.int8_gemm(x[:0], w, residual=spec, r=r[:0], **p).shape == (0, 7)


# =============================================================================================
# Convolution with a fused residual add (kernels.conv.ConvPlan(..., residual=...))
# =============================================================================================
#: One convolution per loop of the kernel (the epilogue is shared): (x shape, w shape, stride,
#: padding, loop). Unrolled: a strided 1x1 (one tap); stepped: a 3x3 basic-block convolution with
#: padding (z_x != 0: the padding correction too); flat K: an RGB stem; gemm: the 1x1 delegation.
_CONV_RESIDUAL_CASES = {
    "unrolled": ((2, 9, 7, 20), (24, 1, 1, 20), 2, 0),
    "stepped": ((2, 7, 6, 19), (21, 3, 3, 19), 1, 1),
    "flat": ((1, 11, 9, 3), (18, 5, 5, 3), 2, (2, 1, 2, 1)),
    "gemm": ((2, 6, 5, 33), (22, 1, 1, 33), 1, 0),
}


@pytest.mark.parametrize("loop", list(_CONV_RESIDUAL_CASES))
def test_conv_residual_epilogue_bit_exact(loop):
    """The convolution with the residual add fused into its epilogue equals the reference
    convolution followed by the reference add, once per loop shape of the kernel (and the 1x1
    GEMM delegation); a plan bound once, called on fewer images, too."""
    import dataclasses

    from kernels import conv

    xs, ws, stride, pad = _CONV_RESIDUAL_CASES[loop]
    n, kh, kw, c = ws
    g = _gen(sum(xs) + sum(ws))
    x, w = rand_i8(xs, g).to(DEVICE), rand_i8(ws, g).to(DEVICE)
    p = to_dev(make_params("perchannel", n, kh * kw * c, g))
    kwargs = dict(stride=stride, padding=pad, **p)
    layer = ref.int8_conv2d(x, w, **kwargs)
    r = rand_i8(tuple(layer.shape), g).to(DEVICE)
    ia, ib, m = ref.add_multipliers(0.021, 0.034, 0.05)
    spec = ref.ResidualAdd(z_a=p["z_y"], z_b=-11, ia=ia, ib=ib, multiplier=m, z_y=-3, lo=-60, hi=60)
    expect = ref.residual_add(layer, r, spec)
    assert torch.equal(expect, ref.int8_add(r, layer, *dataclasses.astuple(spec.swapped())))
    assert len(torch.unique(expect)) > 50 and int(expect.min()) == -60 and int(expect.max()) == 60
    meta = dict(C=c, KH=kh, KW=kw, FLAT_K=c < conv.FLAT_K_MAX_CHANNELS, BLOCK_K=64)  # the interpreter's tile
    if loop != "gemm":
        assert (meta["FLAT_K"], conv._unroll_taps(meta)) == {"unrolled": (False, True), "stepped": (False, False),
                                                              "flat": (True, False)}[loop]
    y = conv.int8_conv2d(x, w, residual=spec, r=r, **kwargs)
    assert y.dtype == torch.int8 and torch.equal(y, expect)
    args = ref.check_conv_args(x, w, p["bias"], p["w_zp"], p["multiplier"], p["z_x"], p["z_y"], p["lo"], p["hi"],
                               stride, pad)
    bias, w_zp, mult, z_x, z_y, lo, hi, st, pd = args
    plan = conv.ConvPlan(w, ref.fold_bias(w, bias, z_x, w_zp), w_zp, mult, z_x, z_y, lo, hi, st, pd, False,
                         residual=spec)
    assert (plan.gemm is not None) == (loop == "gemm") and plan.residual == spec
    assert torch.equal(plan(x[:1], r[:1]), expect[:1])


def test_conv_residual_epilogue_checks_its_arguments():
    from kernels import conv

    g = _gen(5)
    x, w = rand_i8((1, 6, 5, 16), g).to(DEVICE), rand_i8((8, 3, 3, 16), g).to(DEVICE)
    p = to_dev(make_params("sym", 8, 9 * 16, g))
    r = rand_i8((1, 3, 3, 8), g).to(DEVICE)  # stride 2, padding 1
    spec = ref.ResidualAdd(0, 4, 3, 5, 0.01, -2)
    kw = dict(stride=2, padding=1, **p)
    with pytest.raises(ValueError, match="out_int32"):
        conv.int8_conv2d(x, w, out_int32=True, residual=spec, r=r, **kw)
    with pytest.raises(ValueError, match="pass its other operand r"):
        conv.int8_conv2d(x, w, residual=spec, **kw)
    with pytest.raises(ValueError, match="no residual add"):
        conv.int8_conv2d(x, w, r=r, **kw)
    with pytest.raises(ValueError, match=r"r must be \[B, OH, OW, N\]"):
        conv.int8_conv2d(x, w, residual=spec, r=rand_i8((1, 6, 5, 8), g).to(DEVICE), **kw)
    with pytest.raises(ValueError, match="contiguous"):
        conv.int8_conv2d(x, w, residual=spec, r=r.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3), **kw)
    with pytest.raises(ValueError, match=r"\|ia\|"):
        conv.int8_conv2d(x, w, residual=ref.ResidualAdd(0, 4, 1 << 16, 5, 0.01, -2), r=r, **kw)
    assert conv.int8_conv2d(x[:0], w, residual=spec, r=r[:0], **kw).shape == (0, 3, 3, 8)
    # the 1x1 delegation checks r in NHWC terms before the GEMM sees it
    w1 = rand_i8((8, 1, 1, 16), g).to(DEVICE)
    with pytest.raises(ValueError, match=r"r must be \[B, OH, OW, N\]"):
        conv.int8_conv2d(x, w1, residual=spec, r=r, **p)
