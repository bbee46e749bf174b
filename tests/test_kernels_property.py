"""Property tests: random shapes and quantization parameters, kernels bit-exact against the reference.

Few examples each (the kernels run through Triton's interpreter on a CPU), derandomized so the
run is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import reference as ref

try:  # tests/ as rootdir-relative modules (no __init__.py) or as a package
    from test_kernels import DEVICE, independent_conv_acc, independent_gemm_acc, np_requant
except ImportError:  # pragma: no cover
    from .test_kernels import DEVICE, independent_conv_acc, independent_gemm_acc, np_requant

SETTINGS = settings(max_examples=10, deadline=None, derandomize=True, print_blob=True)


@st.composite
def epilogues(draw, n: int, k: int):
    """Per-tensor or per-channel multiplier and bounds, zero points, optional bias and w_zp."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    log_m = draw(st.floats(-9.0, 1.0))
    if draw(st.booleans()):
        mult = torch.exp(torch.empty(n).uniform_(-1.0, 1.0, generator=g)) * (10.0**log_m) / math.sqrt(k)
    else:
        mult = (10.0**log_m) / math.sqrt(k)
    if draw(st.booleans()):
        lo = torch.randint(-128, 0, (n,), generator=g, dtype=torch.int32)
        hi = torch.maximum(lo, torch.randint(-20, 128, (n,), generator=g, dtype=torch.int32))
    else:
        lo = draw(st.integers(-128, 0))
        hi = draw(st.integers(lo, 127))
    w_zp = draw(st.sampled_from(["none", "tensor", "channel"]))
    if w_zp == "tensor":
        w_zp = torch.tensor([draw(st.integers(-8, 8))], dtype=torch.int32)
    elif w_zp == "channel":
        w_zp = torch.randint(-8, 9, (n,), generator=g, dtype=torch.int32)
    else:
        w_zp = None
    bias = torch.randint(-(2**20), 2**20, (n,), generator=g, dtype=torch.int32) if draw(st.booleans()) else None
    params = dict(
        bias=bias, multiplier=mult, z_x=draw(st.integers(-128, 127)), w_zp=w_zp,
        z_y=draw(st.integers(-128, 127)), lo=lo, hi=hi,
    )  # fmt: skip
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in params.items()}, g


@SETTINGS
@given(st.integers(1, 80), st.integers(1, 140), st.integers(1, 90), st.data())
def test_gemm_property(M, K, N, data):
    p, g = data.draw(epilogues(N, K))
    x = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8).to(DEVICE)
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8).to(DEVICE)
    out_int32 = data.draw(st.booleans())
    y = kernels.int8_gemm(x, w, out_int32=out_int32, backend="triton", **p)
    expect = ref.int8_gemm(x, w, out_int32=out_int32, **p)
    assert torch.equal(y, expect)
    acc = independent_gemm_acc(x.cpu(), w.cpu(), _cpu(p["bias"]), p["z_x"], _cpu(p["w_zp"]))
    if out_int32:
        assert torch.equal(y.cpu(), acc)
    else:
        m = _cpu(p["multiplier"])
        m = m.numpy() if isinstance(m, torch.Tensor) else ref.float32_value(m)
        lo, hi = (v.cpu().numpy() if isinstance(v, torch.Tensor) else v for v in (p["lo"], p["hi"]))
        assert np.array_equal(y.cpu().numpy(), np_requant(acc.numpy(), m, p["z_y"], lo, hi))


def _cpu(v):
    return v.cpu() if isinstance(v, torch.Tensor) else v


@st.composite
def conv_geometry(draw, depthwise: bool):
    kh = draw(st.sampled_from([1, 3, 5]))
    kw = draw(st.sampled_from([1, 3, 5]) if not depthwise else st.just(kh))
    pad = tuple(draw(st.integers(0, k - 1)) if k > 1 else 0 for k in (kh, kh, kw, kw))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h = draw(st.integers(max(1, kh - pad[0] - pad[1]), 12))
    w = draw(st.integers(max(1, kw - pad[2] - pad[3]), 12))
    return draw(st.integers(1, 2)), h, w, kh, kw, stride, pad


@SETTINGS
@given(conv_geometry(depthwise=False), st.integers(1, 48), st.integers(1, 40), st.data())
def test_conv_property(geom, C, N, data):
    B, H, W, KH, KW, stride, pad = geom
    p, g = data.draw(epilogues(N, KH * KW * C))
    x = torch.randint(-128, 128, (B, H, W, C), generator=g, dtype=torch.int8).to(DEVICE)
    w = torch.randint(-128, 128, (N, KH, KW, C), generator=g, dtype=torch.int8).to(DEVICE)
    kw = dict(stride=stride, padding=pad, **p)
    assert torch.equal(kernels.int8_conv2d(x, w, backend="triton", **kw), ref.int8_conv2d(x, w, **kw))
    acc = kernels.int8_conv2d(x, w, backend="triton", out_int32=True, **kw)
    expect = independent_conv_acc(x.cpu(), w.cpu(), _cpu(p["bias"]), p["z_x"], _cpu(p["w_zp"]), stride, pad)
    assert torch.equal(acc.cpu(), expect)


@SETTINGS
@given(conv_geometry(depthwise=True), st.integers(1, 80), st.sampled_from(["tiles", "rows"]), st.data())
def test_depthwise_property(geom, C, kernel, data):
    from kernels._config import use_depthwise_variant

    B, H, W, K, _, stride, pad = geom
    if kernel == "rows":  # the rows kernel is stride 1 only (other strides fall back to tiles)
        stride = (1, 1)
    p, g = data.draw(epilogues(C, K * K))
    x = torch.randint(-128, 128, (B, H, W, C), generator=g, dtype=torch.int8).to(DEVICE)
    w = torch.randint(-128, 128, (K, K, C), generator=g, dtype=torch.int8).to(DEVICE)
    kw = dict(stride=stride, padding=pad, **p)
    with use_depthwise_variant(kernel):
        y = kernels.int8_depthwise_conv2d(x, w, backend="triton", **kw)
        acc = kernels.int8_depthwise_conv2d(x, w, backend="triton", out_int32=True, **kw)
    assert torch.equal(y, ref.int8_depthwise_conv2d(x, w, **kw))
    expect = independent_conv_acc(
        x.cpu(), w.cpu(), _cpu(p["bias"]), p["z_x"], _cpu(p["w_zp"]), stride, pad, depthwise=True
    )
    assert torch.equal(acc.cpu(), expect)
