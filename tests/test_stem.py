"""The stem convolution on the float input: quantize-and-im2col, the GEMM on it (``kernels.stem``),
and the fusion rule that puts it in the int8 network (``dfq_gpu.quant.plan.stem_fusions``).

Triton runs under the interpreter here (``conftest.py``); on a CUDA machine the same tests run the
compiled kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dfq_gpu import DFQConfig, quantize, to_int8
from dfq_gpu.int8 import layers as L
from dfq_gpu.quant.plan import build_plan, stem_fusions
from kernels import reference as ref
from kernels import stem

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: (B, C, H, W, kernel, stride, padding (top, bottom, left, right)): ResNet's and EfficientNet's
#: stems, a grey-scale input, odd channel counts and sizes, a non-square kernel and stride.
CASES = [
    (2, 3, 13, 11, (7, 7), (2, 2), (3, 3, 3, 3)),
    (1, 3, 9, 10, (3, 3), (2, 2), (0, 1, 0, 1)),
    (2, 1, 7, 6, (3, 3), (1, 1), (1, 1, 1, 1)),
    (1, 5, 6, 9, (1, 3), (1, 2), (0, 0, 1, 1)),
    (1, 15, 5, 5, (2, 2), (1, 1), (0, 0, 0, 0)),
]


def _input(shape, seed: int, scale: float) -> torch.Tensor:
    """Float input with exact ties (``(k + 0.5) * scale``, rounded to even) and values beyond the
    grid (saturated), besides random ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 40 * scale
    flat = x.view(-1)
    n = flat.numel()
    flat[: n // 4] = (torch.randint(-140, 140, (n // 4,), generator=g) + 0.5) * scale
    flat[n // 4: n // 4 + 3] = torch.tensor([1e6, -1e6, 300 * scale])
    return x


def _independent_im2col(q: torch.Tensor, kernel, stride, pad, z: int) -> torch.Tensor:
    """Loops over output pixels and taps on the NHWC int8 tensor ``q``."""
    B, H, W, C = q.shape
    (kh, kw), (sh, sw), (t, b, l, r) = kernel, stride, pad
    OH, OW = (H + t + b - kh) // sh + 1, (W + l + r - kw) // sw + 1
    rows = []
    for bi in range(B):
        for oh in range(OH):
            for ow in range(OW):
                row = []
                for i in range(kh):
                    for j in range(kw):
                        ih, iw = oh * sh - t + i, ow * sw - l + j
                        inside = 0 <= ih < H and 0 <= iw < W
                        row.extend(q[bi, ih, iw].tolist() if inside else [z] * C)
                rows.append(row + [0] * (ref.im2col_width(len(row)) - len(row)))
    return torch.tensor(rows, dtype=torch.int8)


@pytest.mark.parametrize("B,C,H,W,kernel,stride,pad", CASES[:3])
def test_reference_im2col_matches_independent_loops(B, C, H, W, kernel, stride, pad):
    x = _input((B, C, H, W), seed=H * W + C, scale=0.03)
    a = ref.quantize_im2col(x, 0.03, -5, -128, 120, kernel, stride, pad)
    q = ref.quantize(x, 0.03, -5, -128, 120)
    assert a.shape[1] % ref.IM2COL_ROW_ALIGN == 0
    assert torch.equal(a, _independent_im2col(q, kernel, stride, pad, -5))


@pytest.mark.parametrize("B,C,H,W,kernel,stride,pad", CASES)
def test_quantize_im2col_kernel_bit_exact(B, C, H, W, kernel, stride, pad):
    x = _input((B, C, H, W), seed=H + W + C, scale=0.021)
    args = (0.021, 7, -100, 127, kernel, stride, pad)
    expect = ref.quantize_im2col(x, *args)
    # contiguous, channels_last and a strided view of a larger tensor
    views = [x, x.to(memory_format=torch.channels_last),
             torch.stack([x, -x], dim=-1)[..., 0]]
    for v in views:
        assert torch.equal(stem.quantize_im2col(v.to(DEVICE), *args).cpu(), expect)


def _conv_params(n: int, g: torch.Generator, per_channel: bool) -> dict:
    lo = torch.randint(-128, -20, (n,), generator=g, dtype=torch.int32)
    return dict(
        bias=torch.randint(-20000, 20000, (n,), generator=g, dtype=torch.int32),
        multiplier=(torch.rand(n if per_channel else 1, generator=g) + 0.2) * 2e-3,
        w_zp=torch.randint(-4, 5, (n if per_channel else 1,), generator=g, dtype=torch.int32),
        z_y=3, lo=lo, hi=(lo + 100).clamp(max=127),
    )


@pytest.mark.parametrize("out_int32", [False, True])
@pytest.mark.parametrize("B,C,H,W,kernel,stride,pad", [CASES[0], CASES[1], CASES[3]])
def test_stem_plan_is_quantize_then_conv(B, C, H, W, kernel, stride, pad, out_int32):
    g = torch.Generator().manual_seed(B + C + H)
    n = 19
    x = _input((B, C, H, W), seed=W, scale=0.05)
    w = torch.randint(-128, 128, (n, *kernel, C), generator=g, dtype=torch.int8)
    p = _conv_params(n, g, per_channel=C != 5)
    z_x = -9
    q = ref.quantize(x, 0.05, z_x, -128, 127)
    expect = ref.int8_conv2d(q, w, p["bias"], p["multiplier"], z_x, p["w_zp"], p["z_y"], p["lo"], p["hi"], stride, pad,
                             out_int32=out_int32)
    bias, w_zp, m, z_y, lo, hi = (ref.fold_bias(w, p["bias"], z_x, p["w_zp"]), p["w_zp"], p["multiplier"], p["z_y"],
                                  p["lo"], p["hi"])
    dev = lambda t: t.to(DEVICE)  # noqa: E731
    plan = stem.StemPlan(dev(w), dev(bias), dev(w_zp), dev(m), z_y, dev(lo), dev(hi), stride, pad, out_int32,
                         0.05, z_x, -128, 127)
    assert torch.equal(plan(dev(x)).cpu(), expect)
    with pytest.raises(ValueError, match="float32 NCHW"):
        plan(dev(q))
    with pytest.raises(ValueError, match="channels"):
        plan(dev(torch.zeros(1, C + 1, H, W)))


# =============================================================================================
# In the network
# =============================================================================================
class _Net(nn.Module):
    """A zero padding in front of the stem (EfficientNet's "same" padding), a shape query on the
    input, a residual block after it."""

    def __init__(self, in_channels: int = 3, second_reader: bool = False) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2), nn.BatchNorm2d(16), nn.ReLU6())
        self.side = nn.Conv2d(in_channels, 16, 1, 2) if second_reader else None
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        y = self.stem(self.pad(x))
        if self.side is not None:
            y = y + self.side(x)[:, :, : y.shape[2], : y.shape[3]]
        y = torch.relu(y + self.block(y))
        return self.fc(y.mean((2, 3)).reshape(b, -1))


def _sim(net: nn.Module, c: int = 3) -> tuple:
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, c, 15, 13)
    return quantize(net.eval(), (x[:1],), DFQConfig(weight_granularity="channel")), x


def test_stem_fusion_in_the_network_is_bit_exact():
    sim, x = _sim(_Net())
    fused = to_int8(sim, backend="reference")
    plain = to_int8(sim, backend="reference", fuse_stem=False)
    kinds = [type(m).__name__ for m in fused.steps().values()]
    assert kinds[0] == "Int8StemConv2d" and "QuantizeInput" not in kinds
    assert [type(m).__name__ for m in plain.steps().values()][0] == "QuantizeInput"
    (fq, conv), = fused.coverage.stem.items()
    assert fused.steps()[conv].input_quantizer == fq and "input quantization fused" in fused.coverage.summary()
    with torch.no_grad():
        expect = plain(x)
        assert torch.equal(fused(x), expect) and torch.equal(sim(x), expect)
        fused.backend = "triton"
        assert torch.equal(fused.to(DEVICE)(x.to(DEVICE)).cpu(), expect)


def test_stem_fusion_rule():
    """Only a convolution that is the one reader of the quantized input, on fewer than 16 channels."""
    sim, _ = _sim(_Net(second_reader=True))
    assert stem_fusions(sim, build_plan(sim)) == {}
    sim, _ = _sim(_Net(in_channels=16), c=16)
    assert stem_fusions(sim, build_plan(sim)) == {}
    assert not isinstance(to_int8(sim, backend="reference").steps()["stem_0"], L.Int8StemConv2d)
