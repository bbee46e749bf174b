"""Tests of the int8 ops for more CNN architectures: table lookup, gating multiply, windowed
and adaptive average pool, max pool with ceil mode and dilation, nearest upsampling.

* Each reference function (``kernels.reference``) is checked against an independent computation
  from its definition: PyTorch's float ops (``F.avg_pool2d``, ``F.adaptive_avg_pool2d``, ``F.max_pool2d``,
  ``F.interpolate``, ``fake_quantize_per_tensor_affine``) in float64/float32 and a numpy float32 epilogue.
* Every Triton kernel is checked bit for bit (``torch.equal``) against the reference on odd shapes;
  without a GPU they run through Triton's interpreter (``tests/conftest.py`` sets
  ``TRITON_INTERPRET``).
* The custom ops have fake implementations of the right shapes and trace with ``torch.compile``;
  bad inputs raise ``ValueError`` with a message naming the problem.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_i8(shape, g, lo=-128, hi=128) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.int8)


def np_requant(acc: np.ndarray, m, z_y: int, lo, hi) -> np.ndarray:
    """Independent epilogue: numpy float32 product, np.rint (half to even), float64 clip."""
    prod = acc.astype(np.float32) * np.asarray(m, dtype=np.float32)
    r = np.rint(prod).astype(np.float64) + z_y
    return np.clip(r, lo, hi).astype(np.int8)


def nchw(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


# =============================================================================================
# Table lookup
# =============================================================================================
LUT_FUNCTIONS = {
    "hardswish": F.hardswish,
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "identity": lambda v: v,
}


@pytest.mark.parametrize("name", sorted(LUT_FUNCTIONS))
def test_lut_from_function_matches_fake_quantized_float_simulation(name):
    fn = LUT_FUNCTIONS[name]
    s_x, z_x, s_y, z_y = 0.0437, -9, 0.0213, -30
    table = ref.lut_from_function(fn, s_x, z_x, s_y, z_y)
    assert table.dtype == torch.int8 and table.shape == (256,)
    # the float simulation: dequantize, fn in float32, PyTorch's fake quantization (uint8 domain)
    q = np.arange(-128, 128)
    v = torch.from_numpy((q - z_x).astype(np.float32) * np.float32(s_x))
    f = fn(v)
    fq = torch.fake_quantize_per_tensor_affine(f, s_y, z_y + 128, 0, 255)
    assert torch.equal((table.float() - z_y) * np.float32(s_y), fq)
    # numpy float32 quantization with the float32 reciprocal
    inv = np.float32(1.0) / np.float32(s_y)
    expect = np.clip(np.rint(f.numpy() * inv).astype(np.float64) + z_y, -128, 127).astype(np.int8)
    assert np.array_equal(table.numpy(), expect)
    # and within half a step of the exact float64 function (up to float32 rounding at ties)
    real = fn(torch.from_numpy((q - z_x) * s_x)).numpy() / s_y + z_y
    unsat = (real > -127.5) & (real < 126.5)
    assert np.abs(table.numpy().astype(np.float64) - real)[unsat].max() <= 0.5 + 1e-4
    assert len(np.unique(table.numpy())) > 20, "the table saturates: the check would be weak"


def test_lut_from_function_bounds_and_identity_requantization():
    t = ref.lut_from_function(F.relu6, 0.05, 0, 0.05, -128, lo=-128, hi=-128 + 100)
    assert t.min() == -128 and t.max() == -28
    same = ref.lut_from_function(lambda v: v, 0.1, 3, 0.1, 3)
    assert torch.equal(same, torch.arange(-128, 128, dtype=torch.int8))


def test_reference_lut_and_channel_slice():
    g = _gen(1)
    x = rand_i8((2, 7, 5, 3), g)
    table = rand_i8((256,), g)
    y = ref.int8_lut(x, table)
    assert np.array_equal(y.numpy(), np.take(table.numpy(), x.numpy().astype(np.int64) + 128))
    out = rand_i8((2, 7, 5, 8), g)
    before = out.clone()
    assert ref.int8_lut(x, table, out, 4) is out
    assert torch.equal(out[..., 4:7], y)
    assert torch.equal(out[..., :4], before[..., :4]) and torch.equal(out[..., 7:], before[..., 7:])


def test_reference_per_channel_lut():
    g = _gen(4)
    x = rand_i8((2, 7, 5, 3), g)
    table = rand_i8((3, 256), g)
    y = ref.int8_lut(x, table)
    for c in range(3):  # channel c through row c
        assert np.array_equal(y[..., c].numpy(), np.take(table[c].numpy(), x[..., c].numpy().astype(np.int64) + 128))
    out = rand_i8((2, 7, 5, 8), g)
    assert torch.equal(ref.int8_lut(x, table, out, 5)[..., 5:], y)
    with pytest.raises(ValueError, match=r"per-channel table must be \[C, 256\] with C = x.shape\[-1\] = 3"):
        ref.int8_lut(x, rand_i8((4, 256), g))


@pytest.mark.parametrize("shape", [(2, 7, 5, 3), (2, 7, 5, 37), (1000,), (3, 11, 6)])
def test_lut_kernel_bit_exact(shape):
    g = _gen(2)
    x = rand_i8(shape, g).to(DEVICE)
    table = ref.lut_from_function(F.silu, 0.06, 5, 0.03, -40, device=DEVICE)
    y = kernels.int8_lut(x, table, backend="triton")
    assert torch.equal(y, ref.int8_lut(x, table)) and y.shape == x.shape
    per_channel = rand_i8((shape[-1], 256), g).to(DEVICE)  # one row per channel of the last dimension
    y = kernels.int8_lut(x, per_channel, backend="triton")
    assert torch.equal(y, ref.int8_lut(x, per_channel))
    if len(shape) == 4:  # into a channel slice
        out = torch.zeros((*shape[:3], shape[3] + 6), dtype=torch.int8, device=DEVICE)
        kernels.int8_lut(x, per_channel, out, 2, backend="triton")
        assert torch.equal(out[..., 2:2 + shape[3]], y) and not out[..., :2].any() and not out[..., 2 + shape[3]:].any()


def test_lut_kernel_builds_channel_concatenation():
    g = _gen(3)
    a, b = rand_i8((2, 7, 5, 3), g).to(DEVICE), rand_i8((2, 7, 5, 37), g).to(DEVICE)
    ta = ref.lut_from_function(lambda v: v, 0.05, 0, 0.08, 2, device=DEVICE)
    tb = ref.lut_from_function(torch.sigmoid, 0.05, -7, 1 / 256, -128, device=DEVICE)
    out = torch.zeros((2, 7, 5, 40), dtype=torch.int8, device=DEVICE)
    assert kernels.int8_lut(a, ta, out, 0, backend="triton") is out
    kernels.int8_lut(b, tb, out, 3, backend="triton")
    expect = torch.cat([ref.int8_lut(a, ta), ref.int8_lut(b, tb)], dim=3)
    assert torch.equal(out, expect)
    out_ref = torch.zeros_like(out)
    kernels.int8_lut(a, ta, out_ref, 0, backend="reference")
    kernels.int8_lut(b, tb, out_ref, 3, backend="reference")
    assert torch.equal(out_ref, expect)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_lut_bad_inputs(backend):
    g = _gen(4)
    x, table = rand_i8((2, 3, 4, 5), g).to(DEVICE), rand_i8((256,), g).to(DEVICE)
    call = lambda *a: kernels.int8_lut(*a, backend=backend)  # noqa: E731
    with pytest.raises(ValueError, match="256 entries"):
        call(x, table[:255])
    with pytest.raises(ValueError, match="table .*dtype"):
        call(x, table.to(torch.int32))
    with pytest.raises(ValueError, match="x must have dtype torch.int8"):
        call(x.to(torch.int32), table)
    out = torch.zeros((2, 3, 4, 8), dtype=torch.int8, device=DEVICE)
    with pytest.raises(ValueError, match=r"channels \[4, 9\) of x do not fit out"):
        call(x, table, out, 4)
    with pytest.raises(ValueError, match="must match x"):
        call(x, table, torch.zeros((2, 3, 5, 8), dtype=torch.int8, device=DEVICE), 0)
    with pytest.raises(ValueError, match="channel_offset must be >= 0"):
        call(x, table, out, -1)
    with pytest.raises(ValueError, match="needs an out tensor"):
        call(x, table, None, 2)
    with pytest.raises(ValueError, match="NaN"):
        ref.lut_from_function(lambda v: v * float("nan"), 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match="y_scale"):
        ref.lut_from_function(torch.sigmoid, 0.1, 0, -1.0, 0)
    with pytest.raises(ValueError, match="shape"):
        ref.lut_from_function(lambda v: v[:10], 0.1, 0, 0.1, 0)


# =============================================================================================
# Gating multiply
# =============================================================================================
def test_reference_mul_matches_independent():
    g = _gen(5)
    x, gate = rand_i8((2, 7, 5, 37), g), rand_i8((2, 37), g)
    s_x, s_g, s_y, z_x, z_g, z_y = 0.05, 1 / 256, 0.04, 7, -128, -3
    m = ref.float32_value(s_x * s_g / s_y)
    y = ref.int8_mul(x, gate, z_x, z_g, m, z_y)
    acc = (x.numpy().astype(np.int64) - z_x) * (gate.numpy().astype(np.int64)[:, None, None, :] - z_g)
    assert np.array_equal(y.numpy(), np_requant(acc, m, z_y, -128, 127))
    real = (x.double() - z_x) * s_x * (gate.double()[:, None, None, :] - z_g) * s_g / s_y + z_y
    unsat = (real > -127.5) & (real < 126.5)
    assert ((y.double() - real)[unsat].abs() <= 0.5 + 1e-4).all()
    assert len(torch.unique(y)) > 50
    # elementwise gate with bounds
    g2 = rand_i8(x.shape, g)
    y2 = ref.int8_mul(x, g2, -5, 3, 3e-4, 10, -60, 90)
    acc2 = (x.numpy().astype(np.int64) + 5) * (g2.numpy().astype(np.int64) - 3)
    assert np.array_equal(y2.numpy(), np_requant(acc2, 3e-4, 10, -60, 90))


@pytest.mark.parametrize("C", [3, 37])
@pytest.mark.parametrize("per_channel", [True, False])
def test_mul_kernel_bit_exact(C, per_channel):
    g = _gen(6)
    x = rand_i8((2, 7, 5, C), g).to(DEVICE)
    gate = rand_i8((2, C) if per_channel else (2, 7, 5, C), g).to(DEVICE)
    for args in ((3, -128, 1.7e-4, -4), (-128, 9, 6.1e-5, 20, -100, 100), (0, 0, 0.5, 0)):
        y = kernels.int8_mul(x, gate, *args, backend="triton")
        assert torch.equal(y, ref.int8_mul(x, gate, *args)), args


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_mul_bad_inputs(backend):
    g = _gen(7)
    x = rand_i8((2, 3, 4, 5), g).to(DEVICE)
    call = lambda *a: kernels.int8_mul(*a, backend=backend)  # noqa: E731
    with pytest.raises(ValueError, match=r"g must be \[B, C\]"):
        call(x, rand_i8((2, 4), g).to(DEVICE), 0, 0, 0.1, 0)
    with pytest.raises(ValueError, match=r"g must be \[B, C\]"):
        call(x, rand_i8((2, 1, 1, 5), g).to(DEVICE), 0, 0, 0.1, 0)
    with pytest.raises(ValueError, match="z_g"):
        call(x, rand_i8((2, 5), g).to(DEVICE), 0, 200, 0.1, 0)
    with pytest.raises(ValueError, match="multiplier must be finite"):
        call(x, rand_i8((2, 5), g).to(DEVICE), 0, 0, float("inf"), 0)
    with pytest.raises(ValueError, match=r"lo \(5\) must not exceed hi \(3\)"):
        call(x, rand_i8((2, 5), g).to(DEVICE), 0, 0, 0.1, 0, 5, 3)
    with pytest.raises(ValueError, match="NHWC"):
        call(x[0], rand_i8((2, 5), g).to(DEVICE), 0, 0, 0.1, 0)


# =============================================================================================
# Windowed average pool
# =============================================================================================
AVG_CASES = [
    # kernel, stride, padding, ceil_mode, count_include_pad
    (3, 2, 1, False, True),
    (3, 2, 1, False, False),
    (3, 2, 1, True, True),
    (3, 2, 1, True, False),
    (2, 2, 0, True, True),
    (3, 1, 1, False, False),
    ((3, 2), (2, 1), (1, 0), True, False),
    (5, 3, 2, True, True),
]


def independent_avgpool(x, k, s, p, ceil_mode, cip, z_x, s_x, s_y, z_y, lo=-128, hi=127):
    """F.avg_pool2d in float64 on the centered integers: window sums, PyTorch's divisors, numpy epilogue."""
    xc = nchw(x.double() - z_x)
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil_mode, count_include_pad=cip)
    acc = torch.round(F.avg_pool2d(xc, divisor_override=1, **kw))
    ones = torch.ones_like(xc[:1, :1])
    divisor = torch.round(F.avg_pool2d(ones, divisor_override=1, **kw) / F.avg_pool2d(ones, **kw))
    # the window sum divided by PyTorch's divisor is PyTorch's average
    assert torch.allclose(acc / divisor, F.avg_pool2d(xc, **kw), rtol=0, atol=1e-9)
    m = np.float32((s_x / s_y) / divisor.numpy())
    y = np_requant(nhwc(acc).numpy(), nhwc(torch.from_numpy(m)).numpy(), z_y, lo, hi)
    return torch.from_numpy(y)


@pytest.mark.parametrize("k,s,p,ceil_mode,cip", AVG_CASES)
def test_reference_avgpool2d_matches_float_avg_pool2d(k, s, p, ceil_mode, cip):
    g = _gen(8)
    x = rand_i8((2, 7, 5, 6), g)
    args = (-5, 0.05, 0.021, 3)
    y = ref.int8_avgpool2d(x, k, s, p, ceil_mode, cip, *args)
    expect = independent_avgpool(x, k, s, p, ceil_mode, cip, *args)
    assert y.shape == expect.shape and torch.equal(y, expect)
    y2 = ref.int8_avgpool2d(x, k, s, p, ceil_mode, cip, 12, 0.05, 0.05, -128, -128, 0)
    assert torch.equal(y2, independent_avgpool(x, k, s, p, ceil_mode, cip, 12, 0.05, 0.05, -128, -128, 0))


def test_avgpool2d_multipliers():
    t = ref.avgpool2d_multipliers(0.05, 0.03, 9)
    assert t.dtype == torch.float32 and t.shape == (10,)
    assert [float(v) for v in t[1:]] == [ref.float32_value((0.05 / 0.03) / d) for d in range(1, 10)]


@pytest.mark.parametrize("C", [3, 37])
@pytest.mark.parametrize("k,s,p,ceil_mode,cip", AVG_CASES)
def test_avgpool2d_kernel_bit_exact(k, s, p, ceil_mode, cip, C):
    x = rand_i8((2, 7, 5, C), _gen(9)).to(DEVICE)
    for args in ((-5, 0.05, 0.021, 3), (-128, 0.02, 0.01, -128, -128, 60)):
        y = kernels.int8_avgpool2d(x, k, s, p, ceil_mode, cip, *args, backend="triton")
        assert torch.equal(y, ref.int8_avgpool2d(x, k, s, p, ceil_mode, cip, *args)), args


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_avgpool2d_bad_inputs(backend):
    x = rand_i8((2, 7, 5, 3), _gen(10)).to(DEVICE)
    call = lambda *a: kernels.int8_avgpool2d(x, *a, backend=backend)  # noqa: E731
    with pytest.raises(ValueError, match="at most half the window"):
        call(3, 2, 2, False, True, 0, 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="does not fit"):
        call(9, 1, 0, False, True, 0, 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="x_scale"):
        call(3, 2, 1, False, True, 0, -0.1, 0.1, 0)
    with pytest.raises(ValueError, match="z_x"):
        call(3, 2, 1, False, True, 300, 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="stride"):
        call(3, 0, 1, False, True, 0, 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="NHWC"):
        kernels.int8_avgpool2d(x[0], 3, 2, 1, False, True, 0, 0.1, 0.1, 0, backend=backend)


# =============================================================================================
# Adaptive average pool: F.adaptive_avg_pool2d's windows, of varying sizes
# =============================================================================================
# (H, W, output_size): identity, upsampling a 1x1 map (AlexNet's head at small inputs), windows
# that overlap and differ in size, a None side, more outputs than inputs on one axis
ADAPTIVE_CASES = [(6, 6, (6, 6)), (1, 1, (6, 6)), (7, 7, 3), (10, 13, (7, 4)), (5, 8, (None, 3)), (3, 2, (5, 7))]


def independent_adaptive_avgpool(x, size, z_x, s_x, s_y, z_y):
    """F.adaptive_avg_pool2d in float64 on the centered integers times each window's size (the
    number of unit impulses it sees), numpy epilogue."""
    xc = nchw(x.double() - z_x)
    h, w = xc.shape[2:]
    impulses = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    d = (F.adaptive_avg_pool2d(impulses, size) > 0).sum(0, keepdim=True).double()
    acc = torch.round(F.adaptive_avg_pool2d(xc, size) * d)
    m = np.float32((s_x / s_y) / d.numpy())
    return torch.from_numpy(np_requant(nhwc(acc).numpy(), nhwc(torch.from_numpy(m)).numpy(), z_y, -128, 127))


@pytest.mark.parametrize("h,w,size", ADAPTIVE_CASES)
def test_reference_adaptive_avgpool2d_matches_float_adaptive_avg_pool2d(h, w, size):
    x = rand_i8((2, h, w, 5), _gen(30))
    for args in ((-5, 0.05, 0.021, 3), (12, 0.05, 0.05, -128)):
        y = ref.int8_adaptive_avgpool2d(x, size, *args)
        expect = independent_adaptive_avgpool(x, size, *args)
        assert y.shape == expect.shape and torch.equal(y, expect), args


@pytest.mark.parametrize("C", [3, 37])
@pytest.mark.parametrize("h,w,size", ADAPTIVE_CASES)
def test_adaptive_avgpool2d_kernel_bit_exact(h, w, size, C):
    x = rand_i8((2, h, w, C), _gen(31)).to(DEVICE)
    for args in ((-5, 0.05, 0.021, 3), (-128, 0.02, 0.01, -128, -128, 60)):
        y = kernels.int8_adaptive_avgpool2d(x, size, *args, backend="triton")
        assert torch.equal(y, ref.int8_adaptive_avgpool2d(x, size, *args)), args


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_adaptive_avgpool2d_bad_inputs(backend):
    x = rand_i8((2, 7, 5, 3), _gen(32)).to(DEVICE)
    call = lambda *a: kernels.int8_adaptive_avgpool2d(x, *a, backend=backend)  # noqa: E731
    with pytest.raises(ValueError, match="output_size must be positive"):
        call((0, 2), 0, 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="output_size must be an int or a pair"):
        call((2, 2, 2), 0, 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="x_scale"):
        call(3, 0, -0.1, 0.1, 0)
    with pytest.raises(ValueError, match="z_x"):
        call(3, 300, 0.1, 0.1, 0)
    with pytest.raises(ValueError, match="NHWC"):
        kernels.int8_adaptive_avgpool2d(x[0], 3, 0, 0.1, 0.1, 0, backend=backend)


# =============================================================================================
# Max pool: ceil mode and dilation
# =============================================================================================
def test_reference_maxpool2d_matches_float_max_pool2d():
    x = rand_i8((2, 7, 5, 3), _gen(11))
    checked = 0
    for k, s, p, d, ceil_mode in itertools.product((2, 3), (1, 2, 3), (0, 1), (1, 2), (False, True)):
        try:
            expect = nhwc(F.max_pool2d(nchw(x.double()), k, s, p, dilation=d, ceil_mode=ceil_mode))
        except RuntimeError:
            with pytest.raises(ValueError):
                ref.int8_maxpool2d(x, k, s, p, d, ceil_mode)
            continue
        y = ref.int8_maxpool2d(x, k, s, p, d, ceil_mode)
        assert y.shape == expect.shape and torch.equal(y.double(), expect), (k, s, p, d, ceil_mode)
        checked += 1
    assert checked > 40


MAX_CASES = [
    (3, 2, 1, 1, False),
    (3, 2, 1, 1, True),
    (2, 2, 0, 1, True),
    (3, 2, 1, 2, False),
    (3, 2, 1, 2, True),
    ((3, 2), (1, 2), (1, 0), (2, 1), True),
]


@pytest.mark.parametrize("C", [3, 37])
@pytest.mark.parametrize("k,s,p,d,ceil_mode", MAX_CASES)
def test_maxpool2d_kernel_ceil_mode_and_dilation_bit_exact(k, s, p, d, ceil_mode, C):
    x = rand_i8((2, 7, 5, C), _gen(12)).to(DEVICE)
    y = kernels.int8_maxpool2d(x, k, s, p, dilation=d, ceil_mode=ceil_mode, backend="triton")
    assert torch.equal(y, ref.int8_maxpool2d(x, k, s, p, d, ceil_mode))
    expect = nhwc(F.max_pool2d(nchw(x.cpu().double()), k, s, p, dilation=d, ceil_mode=ceil_mode))
    assert torch.equal(y.cpu().double(), expect)


def test_maxpool2d_old_signature_still_works():
    x = rand_i8((2, 9, 8, 6), _gen(13)).to(DEVICE)
    y = kernels.int8_maxpool2d(x, 3, 2, 1, backend="triton")
    assert torch.equal(y, ref.int8_maxpool2d(x, 3, 2, 1))
    assert torch.equal(torch.ops.dfq_int8.maxpool2d(x, [3, 3], [2, 2], [1, 1, 1, 1], "reference"), y)
    assert torch.equal(kernels.int8_maxpool2d(x, 3, None, backend="reference"), ref.int8_maxpool2d(x, 3, 3))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_maxpool2d_bad_inputs(backend):
    x = rand_i8((1, 5, 5, 4), _gen(14)).to(DEVICE)
    with pytest.raises(ValueError, match="smaller than the window"):
        kernels.int8_maxpool2d(x, 3, 2, 3, backend=backend)
    with pytest.raises(ValueError, match="dilation 3.*does not fit"):
        kernels.int8_maxpool2d(x, 3, 1, 0, dilation=3, backend=backend)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        kernels.int8_maxpool2d(x, 3, 1, 0, dilation=0, backend=backend)
    with pytest.raises(ValueError, match="ceil_mode must be a bool"):
        ref.int8_maxpool2d(x, 3, 2, 1, 1, "yes")


# =============================================================================================
# Nearest upsampling
# =============================================================================================
UPSAMPLE_CASES = [
    ((14, 10), None),
    (None, 2),
    (None, 3),
    (None, 2.1),  # output twice as large: the index is halved, as PyTorch's CPU kernel does
    (None, 1.01),  # output as large as the input: a copy
    (None, (0.5, 1.7)),
    ((9, 11), None),
    (None, (2, 1.5)),
    (4, None),
]


@pytest.mark.parametrize("size,scale_factor", UPSAMPLE_CASES)
def test_reference_upsample_matches_interpolate(size, scale_factor):
    x = rand_i8((2, 7, 5, 3), _gen(15))
    expect = nhwc(F.interpolate(nchw(x.float()), size=size, scale_factor=scale_factor, mode="nearest"))
    y = ref.int8_upsample_nearest(x, size, scale_factor)
    assert y.shape == expect.shape and torch.equal(y.float(), expect)


@pytest.mark.parametrize("C", [3, 37])
@pytest.mark.parametrize("size,scale_factor", UPSAMPLE_CASES)
def test_upsample_kernel_bit_exact(size, scale_factor, C):
    x = rand_i8((2, 7, 5, C), _gen(16)).to(DEVICE)
    y = kernels.int8_upsample_nearest(x, size, scale_factor, backend="triton")
    assert torch.equal(y, ref.int8_upsample_nearest(x, size, scale_factor))


BILINEAR_CASES = [((13, 20), None, False), (None, 2.0, False), ((9, 11), None, True), ((3, 4), None, False),
                  (None, (1.7, 2.3), False), ((1, 1), None, True)]


@pytest.mark.parametrize("size,scale_factor,align_corners", BILINEAR_CASES)
def test_reference_bilinear_is_float_bilinear_within_the_weight_rounding(size, scale_factor, align_corners):
    """The integer result is F.interpolate's (float64, on the dequantized input) rounded to the
    output grid, up to the weights' rounding to 2^-8: each axis's two weights are off by at most
    2^-9 each, so the four products by at most 2^-7 in all, times the largest |x - z_x|."""
    x = rand_i8((2, 5, 7, 3), _gen(18))
    z_x, s_x, z_y, s_y = -5, 0.05, 3, 0.045
    m = ref.float32_value((s_x / s_y) / 65536)
    y = ref.int8_upsample_bilinear(x, size, scale_factor, align_corners, z_x, m, z_y)
    xf = ((x.double() - z_x) * s_x).permute(0, 3, 1, 2)
    f = F.interpolate(xf, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=align_corners)
    f = f.permute(0, 2, 3, 1) / s_y + z_y
    assert y.shape == f.shape
    inside = (f > -128) & (f < 127)  # values past the grid's ends clamp
    bound = 0.5 + (x.double() - z_x).abs().max() * s_x / s_y / 128 + 1e-6
    assert inside.float().mean() > 0.5 and (y.double() - f)[inside].abs().max() <= bound
    assert torch.equal(y[~inside & (f >= 127)], torch.full_like(y[~inside & (f >= 127)], 127))


@pytest.mark.parametrize("C", [3, 37])
@pytest.mark.parametrize("size,scale_factor,align_corners", BILINEAR_CASES)
def test_upsample_bilinear_kernel_bit_exact(size, scale_factor, align_corners, C):
    x = rand_i8((2, 5, 7, C), _gen(19)).to(DEVICE)
    args = (size, scale_factor, align_corners, -5, ref.float32_value(0.9 / 65536), 3, -100, 120)
    y = kernels.int8_upsample_bilinear(x, *args, backend="triton")
    assert torch.equal(y, ref.int8_upsample_bilinear(x, *args))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_upsample_bad_inputs(backend):
    x = rand_i8((1, 5, 5, 4), _gen(17)).to(DEVICE)
    call = lambda **k: kernels.int8_upsample_nearest(x, backend=backend, **k)  # noqa: E731
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        call()
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        call(size=4, scale_factor=2.0)
    with pytest.raises(ValueError, match="scale_factor"):
        call(scale_factor=-2.0)
    with pytest.raises(ValueError, match="empty output"):
        call(scale_factor=0.1)
    with pytest.raises(ValueError, match="size must be"):
        call(size=(0, 3))
    bilinear = lambda **k: kernels.int8_upsample_bilinear(x, **{"size": None, "scale_factor": 2.0,  # noqa: E731
                                                                "align_corners": False, "z_x": 0,
                                                                "multiplier": 1e-5, "z_y": 0, **k}, backend=backend)
    with pytest.raises(ValueError, match="exactly one of size and scale_factor"):
        bilinear(size=4)
    with pytest.raises(ValueError, match="align_corners must be a bool"):
        bilinear(align_corners=1)
    with pytest.raises(ValueError, match="multiplier"):
        bilinear(multiplier=-1.0)
    with pytest.raises(ValueError, match="z_y"):
        bilinear(z_y=300)


# =============================================================================================
# Custom ops: fake implementations, tracing
# =============================================================================================
def test_new_ops_fake_impls_agree_with_real_outputs():
    from torch._subclasses.fake_tensor import FakeTensorMode

    g = _gen(18)
    x, gate, table = rand_i8((2, 7, 5, 3), g), rand_i8((2, 3), g), rand_i8((256,), g)
    calls = {
        "lut": lambda: torch.ops.dfq_int8.lut(x, table, "reference"),
        "mul": lambda: torch.ops.dfq_int8.mul(x, gate, 0, 1, 0.01, 0, -128, 127, "reference"),
        "avg": lambda: torch.ops.dfq_int8.avgpool2d(x, [3, 3], [2, 2], [1, 1, 1, 1], True, False, 0, 0.1, 0.2, 0,
                                                    -128, 127, "reference"),  # fmt: skip
        "max": lambda: torch.ops.dfq_int8.maxpool2d(x, [3, 3], [2, 2], [1, 1, 1, 1], "reference", [2, 1], True),
        "up": lambda: torch.ops.dfq_int8.upsample_nearest(x, None, [2.1, 1.5], "reference"),
        "bilinear": lambda: torch.ops.dfq_int8.upsample_bilinear(x, [11, 4], None, False, 0, 1e-5, 0, -128, 127,
                                                                 "reference"),
        "lut per channel": lambda: torch.ops.dfq_int8.lut(x, table.repeat(3, 1), "reference"),
        "adaptive": lambda: torch.ops.dfq_int8.adaptive_avgpool2d(x, [4, 9], 0, 0.1, 0.2, 0, -128, 127, "reference"),
    }
    real = {k: f() for k, f in calls.items()}
    mode = FakeTensorMode()
    with mode:
        x, gate, table = (mode.from_tensor(t) for t in (x, gate, table))
        fake = {k: f() for k, f in calls.items()}
    for k in calls:
        assert fake[k].shape == real[k].shape and fake[k].dtype == real[k].dtype, k


def test_opcheck_lut_into_and_mul():
    g = _gen(19)
    x, table = rand_i8((2, 3, 4, 5), g), rand_i8((256,), g)
    out = torch.zeros((2, 3, 4, 9), dtype=torch.int8)
    tests = ("test_schema", "test_faketensor")
    torch.library.opcheck(torch.ops.dfq_int8.lut_into.default, (x, table, out, 2, "reference"), test_utils=tests)
    torch.library.opcheck(
        torch.ops.dfq_int8.mul.default, (x, rand_i8((2, 5), g), 1, 2, 0.01, 0, -128, 127, "reference"),
        test_utils=tests,
    )  # fmt: skip


class SqueezeExciteConcat(torch.nn.Module):
    """upsample -> hardswish table into a concat buffer -> SE gate -> ceil-mode pools."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend
        self.t_hs = ref.lut_from_function(F.hardswish, 0.05, 0, 0.04, -10, device=DEVICE)
        self.t_id = ref.lut_from_function(lambda v: v, 0.05, 0, 0.04, -10, device=DEVICE)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        be = self.backend
        up = kernels.int8_upsample_nearest(x, scale_factor=2, backend=be)
        cat = torch.empty(up.shape[:3] + (2 * up.shape[3],), dtype=torch.int8, device=up.device)
        kernels.int8_lut(up, self.t_hs, cat, 0, backend=be)
        kernels.int8_lut(up, self.t_id, cat, up.shape[3], backend=be)
        gated = kernels.int8_mul(cat, gate, -10, -128, 0.04 / 256 / 0.03, 0, backend=be)
        p = kernels.int8_maxpool2d(gated, 3, 2, 1, ceil_mode=True, backend=be)
        return kernels.int8_avgpool2d(p, 2, 2, 0, True, False, 0, 0.03, 0.03, 0, backend=be)


def test_new_ops_torch_compile_matches_eager():
    g = _gen(20)
    x, gate = rand_i8((2, 4, 3, 3), g).to(DEVICE), rand_i8((2, 6), g).to(DEVICE)
    eager = SqueezeExciteConcat("reference")(x, gate)
    assert torch.equal(SqueezeExciteConcat("triton")(x, gate), eager)
    assert eager.shape == (2, 3, 2, 6) and len(torch.unique(eager)) > 3
    torch._dynamo.reset()
    compiled = torch.compile(SqueezeExciteConcat("reference"), backend="eager", fullgraph=True)
    assert torch.equal(compiled(x, gate), eager)
