"""A depthwise convolution and the 1x1 convolution after it in one kernel (``kernels.dwproject``),
and the fusion rule that puts it in the int8 network (``dfq_gpu.quant.plan.depthwise_project_fusions``).

Triton runs under the interpreter here (``conftest.py``); on a CUDA machine the same tests run the
compiled kernel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dfq_gpu import DFQConfig, quantize, to_int8
from dfq_gpu.int8 import layers as L
from dfq_gpu.quant.plan import build_plan, depthwise_project_fusions
from kernels import dwproject
from kernels import reference as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

#: (B, H, W, E, N, kernel, stride, padding, per_channel, residual, out_int32): a MobileNet block
#: with its skip add, a 5x5/2 block with more project channels than one block (two column blocks),
#: TF "same" padding with per-tensor parameters, channel counts no block divides, an int32 output.
CASES = [
    (2, 7, 9, 40, 24, 3, 1, (1, 1, 1, 1), True, True, False),
    (1, 9, 8, 70, 150, 5, 2, (1, 2, 1, 2), True, False, False),
    (2, 8, 7, 33, 16, 3, 2, (0, 1, 0, 1), False, False, False),
    (1, 5, 6, 24, 20, 3, 1, (1, 1, 1, 1), True, False, True),
]


def _case(B, H, W, E, N, k, per_channel, residual, g):
    i8 = lambda *shape: torch.randint(-128, 128, shape, generator=g, dtype=torch.int8)  # noqa: E731
    nc = lambda n: n if per_channel else 1  # noqa: E731
    d = dict(w=i8(k, k, E), bias=torch.randint(-3000, 3000, (E,), generator=g, dtype=torch.int32),
             w_zp=torch.randint(-3, 4, (nc(E),), generator=g, dtype=torch.int32),
             m=torch.rand(nc(E), generator=g) * 2e-3 + 1e-4, z_x=-7, z_y=-128,
             lo=torch.full((nc(E),), -128, dtype=torch.int32), hi=torch.full((nc(E),), 90, dtype=torch.int32))
    p = dict(w=i8(N, E), bias=torch.randint(-9000, 9000, (N,), generator=g, dtype=torch.int32) if per_channel else None,
             w_zp=torch.randint(-3, 4, (nc(N),), generator=g, dtype=torch.int32) if per_channel else None,
             m=torch.rand(nc(N), generator=g) * 1e-3 + 1e-4, z_y=5,
             lo=torch.randint(-128, -60, (nc(N),), generator=g, dtype=torch.int32),
             hi=torch.full((nc(N),), 127, dtype=torch.int32))
    spec = ref.ResidualAdd(p["z_y"], 3, 17000, 9000, 1.1e-4, -2, -128, 127) if residual else None
    return i8(B, H, W, E), d, p, spec


@pytest.mark.parametrize("B,H,W,E,N,k,stride,pad,per_channel,residual,out_int32", CASES)
def test_kernel_is_the_two_layers(B, H, W, E, N, k, stride, pad, per_channel, residual, out_int32):
    g = torch.Generator().manual_seed(E + N + k)
    x, d, p, spec = _case(B, H, W, E, N, k, per_channel, residual, g)
    s = (stride, stride)
    dw_out = ref.int8_depthwise_conv2d(x, d["w"], d["bias"], d["m"], d["z_x"], d["w_zp"], d["z_y"], d["lo"], d["hi"], s,
                                       pad)
    y = ref.int8_gemm(dw_out.reshape(-1, E), p["w"], p["bias"], p["m"], d["z_y"], p["w_zp"], p["z_y"], p["lo"], p["hi"],
                      out_int32=out_int32).view(*dw_out.shape[:3], N)
    r = torch.randint(-128, 128, y.shape, generator=g, dtype=torch.int8) if residual else None
    expect = ref.residual_add(y, r, spec) if residual else y
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    folded = ref.fold_bias(p["w"], p["bias"], d["z_y"], p["w_zp"])
    plan = dwproject.DwProjectPlan(dev(d["w"]), dev(d["bias"]), dev(d["w_zp"]), dev(d["m"]), d["z_x"], d["z_y"],
                                   dev(d["lo"]), dev(d["hi"]), s, pad, dev(p["w"]), dev(folded), dev(p["w_zp"]),
                                   dev(p["m"]), p["z_y"], dev(p["lo"]), dev(p["hi"]), out_int32, spec)
    got = plan(dev(x)) if r is None else plan(dev(x), dev(r))
    assert torch.equal(got.cpu(), expect)
    if residual:
        with pytest.raises(ValueError, match="pass its other operand"):
            plan(dev(x))
        with pytest.raises(ValueError, match="r must be"):
            plan(dev(x), dev(r[:, :-1].contiguous()))
    else:
        with pytest.raises(ValueError, match="no residual add"):
            plan(dev(x), dev(torch.zeros_like(got, dtype=torch.int8)))


# =============================================================================================
# In the network
# =============================================================================================
class _Block(nn.Module):
    """An inverted-residual block: expand 1x1, depthwise, project 1x1, a skip add where shapes allow."""

    def __init__(self, c: int, e: int, k: int, stride: int, out: int, extra_reader: bool = False) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(e, e, k, stride, k // 2, groups=e, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(e, out, 1, bias=False), nn.BatchNorm2d(out))
        self.skip = stride == 1 and c == out
        self.extra_reader = extra_reader

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.dw(self.expand(x))
        y = self.project(d)
        if self.extra_reader:  # the depthwise output read twice: no fusion
            y = y + d[:, : y.shape[1]]
        return x + y if self.skip else y


def _sim(extra_reader: bool = False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6(), _Block(16, 40, 3, 1, 16), _Block(16, 48, 5, 2, 24),
                        _Block(24, 72, 3, 1, 24, extra_reader), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(24, 5)).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 21, 19)
    return quantize(net, (x[:1],), DFQConfig(weight_granularity="channel")), x


def test_fusion_in_the_network_is_bit_exact():
    sim, x = _sim()
    plain = to_int8(sim, backend="reference")
    fused = to_int8(sim, backend="reference", fuse_depthwise=True)
    kinds = [type(m).__name__ for m in fused.steps().values()]
    assert kinds.count("Int8DepthwiseProjectConv2d") == 3 and "Int8DepthwiseConv2d" not in kinds
    assert len(fused.coverage.depthwise) == 3 and len(fused.coverage.fused) == 2  # the skip adds fuse too
    assert "3 depthwise convolutions fused" in fused.coverage.summary()
    assert not plain.coverage.depthwise  # off by default
    with torch.no_grad():
        expect = plain(x)
        assert torch.equal(fused(x), expect) and torch.equal(sim(x), expect)
        fused.backend = "triton"
        assert torch.equal(fused.to(DEVICE)(x.to(DEVICE)).cpu(), expect)
    # the fused steps do not materialize the depthwise outputs' quantizers
    _, acts = plain.to("cpu").activations(x)
    _, acts_f = fused.to("cpu").activations(x)
    assert len(acts) - len(acts_f) == 3


def test_fusion_rule():
    """Only a depthwise convolution whose int8 output a 1x1 convolution alone reads."""
    sim, _ = _sim(extra_reader=True)
    fusions = depthwise_project_fusions(sim, build_plan(sim))
    assert {(f.depthwise, f.project) for f in fusions.values()} == {("_2_dw_0", "_2_project_0"),
                                                                   ("_3_dw_0", "_3_project_0")}  # not block 4's
    assert set(fusions) == {"_2_project_0", "_3_project_0"}
    net = to_int8(sim, backend="reference", fuse_depthwise=True)
    assert sum(isinstance(m, L.Int8DepthwiseProjectConv2d) for m in net.steps().values()) == 2


def test_end_to_end_benchmark_variants_run():
    """``e2e.py``'s comparisons at the largest batch (run on a GPU only there): the fused network
    and the other depthwise kernel, each against the default network bit for bit, then timed."""
    from dfq_gpu.bench import e2e

    sim, x = _sim()
    net = to_int8(sim, backend="reference")
    fused = to_int8(sim, backend="reference", fuse_depthwise=True)
    clock = e2e.Clock(False, True)
    r = e2e.time_fused_depthwise(clock, net, fused, x)["int8_dw_project"]
    assert r["fused"] == 3 and r["equal_to_default"] is True and r["eager_ms"] > 0 and not r.get("error")
    others = e2e.time_other_depthwise_variant(clock, net, x)
    import kernels

    assert set(others) == {f"int8_dw_{v}" for v in kernels.settings.DEPTHWISE_VARIANTS
                           if v != kernels.current_settings().depthwise_variant}
    assert all(v["equal_to_default"] is True and v["eager_ms"] > 0 for v in others.values())
