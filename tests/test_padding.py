"""Channel padding of the integer network (``to_int8(q, pad_channels=True)``, ``dfq_gpu.int8.padding``):
activations of 24, 40, 10 ... channels stored with 16-aligned rows, the real channels bit-exact.

Triton runs under the interpreter here (``conftest.py``); on a CUDA machine the same tests run the
compiled kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dfq_gpu import DFQConfig, quantize, to_int8
from dfq_gpu.int8 import compare_with_simulation
from dfq_gpu.int8 import layers as L

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class _Net(nn.Module):
    """A MobileNetV3-style network in miniature: hardswish (a table), a squeeze-excitation gate
    (pool, two 1x1 convolutions, hardsigmoid, multiply), a skip add, a 3x3 convolution and a
    linear layer reading a global mean; channels 40, 10, 24, 20 (none a multiple of 16). With
    ``head=False`` the network ends at the 24-channel tensor; with ``flatten`` the linear layer
    reads the flattened output of a global pool instead of a mean."""

    def __init__(self, head: bool = True, flatten: bool = False) -> None:
        super().__init__()
        bn_act = lambda c, act: [nn.BatchNorm2d(c), act()]  # noqa: E731
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), *bn_act(16, nn.ReLU))
        self.expand = nn.Sequential(nn.Conv2d(16, 40, 1, bias=False), *bn_act(40, nn.Hardswish))
        self.dw = nn.Sequential(nn.Conv2d(40, 40, 3, 1, 1, groups=40, bias=False), *bn_act(40, nn.Hardswish))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(40, 10, 1), nn.ReLU(), nn.Conv2d(10, 40, 1),
                                nn.Hardsigmoid())
        self.project = nn.Sequential(nn.Conv2d(40, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.block = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, bias=False), *bn_act(24, nn.ReLU6))
        self.head = nn.Sequential(nn.Conv2d(24, 20, 1), nn.ReLU()) if head else None
        self.fc = nn.Linear(20, 5) if head else None
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.expand(self.stem(x)))
        y = self.project(y * self.se(y))
        y = y + self.block(y)
        if self.head is None:
            return y
        h = self.head(y)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1) if self.flatten else h.mean((2, 3)))


def _sim(cfg: DFQConfig, head: bool = True, flatten: bool = False):
    torch.manual_seed(0)
    net = _Net(head, flatten).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 13, 11)
    return quantize(net, (x[:1],), cfg), x


@pytest.mark.parametrize("cfg, flatten", [(DFQConfig(weight_granularity="channel"), False),
                                          (DFQConfig(weight_symmetric=True), True)],
                         ids=["per-channel-zero-points", "symmetric-flatten"])
def test_padded_network_is_bit_exact(cfg: DFQConfig, flatten: bool) -> None:
    sim, x = _sim(cfg, flatten=flatten)
    plain = to_int8(sim, backend="reference", pad_channels=False)
    padded = to_int8(sim, backend="reference")  # on by default
    assert not plain.padded_channels
    got = padded.padded_channels
    # every group: the expand/depthwise/SE gate group (40), the squeeze (10), the skip group with
    # the 3x3 convolution and the add fused into it (24), the head read by a mean (or a global
    # pool and a flatten) and a linear layer (20)
    assert sorted(set(got.values())) == [(10, 16), (20, 32), (24, 32), (40, 48)], got
    steps = padded.steps()
    assert steps["expand_0"].weight.shape == (48, 1, 1, 16) and steps["project_0"].weight.shape == (32, 1, 1, 48)
    assert steps["block_0"].weight.shape == (32, 3, 3, 32) and steps["fc"].weight.shape == (5, 32)
    assert repr(steps["project_0"]).startswith("Int8Conv2d[channels 24 stored as 32](48, 32, ")
    assert repr(steps["fc"]).startswith("Int8Linear(32, 5, ")  # its output is the network's
    with torch.no_grad():
        expect = plain(x)
        assert torch.equal(padded(x), expect) and torch.equal(sim(x), expect)
        _, acts = plain.activations(x)
        _, acts_p = padded.activations(x)
        assert acts.keys() == acts_p.keys() and all(torch.equal(acts[k], acts_p[k]) for k in acts)
        agree = compare_with_simulation(padded, sim, x)
        assert agree and all(a.mismatches == 0 for a in agree.values())
        padded.backend = "triton"
        assert torch.equal(padded.to(DEVICE)(x.to(DEVICE)).cpu(), expect)


def test_padding_stops_where_a_tensor_leaves_the_int8_steps() -> None:
    """A tensor that reaches the network output (a dequantization) keeps its channels, and so do
    the tensors joined to it by channel-wise steps; the layers before them still pad theirs."""
    sim, x = _sim(DFQConfig(), head=False)
    net = to_int8(sim, backend="reference")
    got = net.padded_channels
    assert not any(c == 24 for c, _ in got.values()) and (40, 48) in got.values()
    assert net.steps()["project_0"].weight.shape == (24, 1, 1, 48)  # absorbs 48, makes 24
    assert all(isinstance(m, L.Int8Step) for m in net.steps().values())
    with torch.no_grad():
        assert torch.equal(net(x), to_int8(sim, backend="reference", pad_channels=False)(x))


class _Seg(nn.Module):
    """A segmentation head in miniature (LR-ASPP's): a low-resolution branch upsampled to the size
    of a 24-channel skip tensor (a shape query on it: ``size=skip.shape[-2:]``), plus a 1x1
    classifier of the skip tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.ReLU())
        self.low = nn.Sequential(nn.Conv2d(24, 40, 3, 2, 1), nn.ReLU())
        self.cls_low, self.cls_skip = nn.Conv2d(40, 6, 1), nn.Conv2d(24, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        up = nn.functional.interpolate(self.low(skip), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.cls_low(up) + self.cls_skip(skip) + skip.size(1) / 24


def test_shape_queries_of_a_padded_tensor_see_its_real_channels() -> None:
    """A tensor whose size another tensor is upsampled to is padded like the others (its shape
    query, and ``size(1)``, report the real channels); the network equals the unpadded one."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 15, 13)
    sim = quantize(_Seg().eval(), (x[:1],), DFQConfig())
    plain = to_int8(sim, backend="reference", pad_channels=False)
    net = to_int8(sim, backend="reference")
    assert net.padded_channels == {"stem_0": (24, 32), "low_0": (40, 48), "interpolate": (40, 48)}
    queries = [n for n in net.graph.nodes if n.target in (L.nchw_shape, L.nchw_size)]
    assert len(queries) == 2 and all(n.kwargs == {"channels": 24} for n in queries)
    with torch.no_grad():
        expect = plain(x)
        assert torch.equal(net(x), expect) and torch.equal(sim(x), expect)
        agree = compare_with_simulation(net, sim, x)
        assert agree and all(a.mismatches == 0 for a in agree.values())
        net.backend = "triton"
        assert torch.equal(net.to(DEVICE)(x.to(DEVICE)).cpu(), expect)
    t = torch.zeros(2, 5, 7, 32)
    assert L.nchw_shape(t) == (2, 32, 5, 7) and L.nchw_shape(t, channels=24) == (2, 24, 5, 7)
    assert L.nchw_size(t, 1, channels=24) == 24 and L.nchw_size(t, -1, channels=24) == 7
    assert L.nchw_size(torch.zeros(2, 32), 1, channels=20) == 20 and L.nchw_size(t, 2) == 5


def test_end_to_end_benchmark_times_the_unpadded_network() -> None:
    from dfq_gpu.bench import e2e

    sim, x = _sim(DFQConfig())
    net = to_int8(sim, backend="reference")
    unpadded = to_int8(sim, backend="reference", pad_channels=False)
    r = e2e.time_unpadded_channels(e2e.Clock(False, True), net, unpadded, x)["int8_pad_channels_off"]
    assert r["padded"] == len(net.padded_channels) > 0 and r["equal_to_default"] is True and r["eager_ms"] > 0
