"""The layer registry (dfq_gpu.layers): recognition, facts, channel scaling, moments, registration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dfq_gpu import layers
from dfq_gpu.graph.regions import is_depthwise
from dfq_gpu.graph.stats import NodeStats, _layer_moments
from dfq_gpu.graph.trace import LAYER_TYPES
from dfq_gpu.layers import conv_entry, is_layer_module, layer_type
from dfq_gpu.modules import QUANTIZED_LAYERS, QConv2d, QLinear
from dfq_gpu.passes.base import (in_channel_absmax, layer_kind, layer_response_to_constant, out_channel_absmax,
                                 scale_in_channels, scale_out_channels)


def _seed(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return m


@pytest.mark.parametrize("module, kind, label, cin, cout, groups", [
    (nn.Conv2d(8, 16, 3), "conv", "conv", 8, 16, 1),
    (nn.Conv2d(1, 1, 3), "conv", "conv", 1, 1, 1),
    (nn.Conv2d(8, 8, 3, groups=8), "depthwise", "depthwise", 8, 8, 8),
    (nn.Conv2d(8, 16, 3, groups=8), "grouped", "grouped conv", 8, 16, 8),  # channel multiplier 2: not depthwise
    (nn.Conv2d(8, 16, 1, groups=4), "grouped", "grouped conv", 8, 16, 4),
    (nn.Linear(12, 5), "linear", "linear", 12, 5, 1),
])
def test_recognises_torch_layers(module, kind, label, cin, cout, groups):
    lt = layer_type(module)
    assert lt is not None and lt.kind == kind and lt.label == label
    assert layer_kind(module) == label
    assert (lt.in_channels(module), lt.out_channels(module), lt.groups(module)) == (cin, cout, groups)
    assert lt.module_class is type(module)
    assert is_depthwise(module) == (kind == "depthwise")
    w = module.weight
    assert w.shape[0] == cout and w.shape[lt.in_axis] * groups == cin  # axis 0 out, axis 1 in / groups
    assert lt.kind in QUANTIZED_LAYERS


def test_non_layers_and_quantized_layers():
    for m in (nn.ReLU(), nn.BatchNorm2d(3), nn.Conv1d(3, 4, 3), None, 3):
        assert layer_type(m) is None and not is_layer_module(m)
    assert LAYER_TYPES == (nn.Conv2d, nn.Linear)
    # the quantized layers are their float layers' kinds
    assert layer_type(QConv2d(6, 6, 3, groups=6)).kind == "depthwise"
    assert layer_type(QConv2d(6, 4, 3)).kind == "conv"
    assert layer_type(QLinear(6, 4)).kind == "linear"
    assert QUANTIZED_LAYERS["depthwise"] is QConv2d and QUANTIZED_LAYERS["linear"] is QLinear


def test_in_channel_absmax_of_a_grouped_conv():
    m = _seed(nn.Conv2d(6, 4, 3, groups=2, bias=False))
    w = m.weight.detach().abs()  # [4, 3, 3, 3]: out 0-1 read in 0-2, out 2-3 read in 3-5
    want = torch.cat([w[:2].amax(dim=(0, 2, 3)), w[2:].amax(dim=(0, 2, 3))]).double().numpy()
    np.testing.assert_array_equal(in_channel_absmax(m), want)
    np.testing.assert_array_equal(out_channel_absmax(m), w.reshape(4, -1).amax(1).double().numpy())


@pytest.mark.parametrize("second", [
    lambda: nn.Conv2d(6, 5, 3, padding=1),
    lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6),
    lambda: nn.Conv2d(6, 4, 1, groups=2),
])
def test_channel_scaling_keeps_a_conv_pair_function(second):
    first = _seed(nn.Conv2d(3, 6, 3, padding=1).double(), 1)
    nxt = _seed(second().double(), 2)
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    before = nxt(first(x))
    s = np.random.default_rng(4).uniform(0.2, 5.0, size=6)
    scale_out_channels(first, 1.0 / s)
    scale_in_channels(nxt, s)
    torch.testing.assert_close(nxt(first(x)), before, rtol=1e-12, atol=1e-12)


def test_channel_scaling_keeps_a_linear_pair_function():
    a, b = _seed(nn.Linear(5, 7).double(), 1), _seed(nn.Linear(7, 3).double(), 2)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    before = b(a(x))
    s = np.random.default_rng(4).uniform(0.2, 5.0, size=7)
    scale_out_channels(a, 1.0 / s)
    scale_in_channels(b, s)
    torch.testing.assert_close(b(a(x)), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: nn.Conv2d(4, 6, 3, bias=False), lambda: nn.Conv2d(4, 8, 3, groups=4, bias=False),
                                  lambda: nn.Linear(4, 6, bias=False)])
def test_response_to_a_constant_input(make):
    m = _seed(make().double())
    c = np.random.default_rng(0).normal(size=4)
    r = layer_response_to_constant(m, c)
    if isinstance(m, nn.Linear):
        y = m(torch.from_numpy(c).view(1, 4)).view(-1)
    else:
        y = m(torch.from_numpy(c).view(1, 4, 1, 1).expand(1, 4, 5, 5))[0, :, 2, 2]
    np.testing.assert_allclose(r, y.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_moments_against_monte_carlo():
    m = _seed(nn.Conv2d(3, 4, 3).double(), 5)
    mean, std = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.5, 2.0])
    s = NodeStats(mean, std, mean - 3 * std, mean + 3 * std, "test")
    mu, sd = _layer_moments(m, s)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(200_000, 3, 3, 3, generator=g, dtype=torch.float64) * torch.from_numpy(std).view(1, 3, 1, 1) \
        + torch.from_numpy(mean).view(1, 3, 1, 1)  # every tap independent, as the propagation assumes
    with torch.no_grad():
        y = m(x)[:, :, 0, 0]
    np.testing.assert_allclose(mu, y.mean(0).numpy(), atol=0.02 * sd.max())
    np.testing.assert_allclose(sd, y.std(0).numpy(), rtol=0.01)


def test_register_a_new_layer_type():
    conv1d = conv_entry("conv1d", "conv1d", nn.Conv1d, F.conv1d, lambda m: isinstance(m, nn.Conv1d))
    m = _seed(nn.Conv1d(4, 6, 3).double())
    assert layer_type(m) is None
    layers.register(conv1d)
    try:
        assert layer_type(m) is conv1d and layer_kind(m) == "conv1d" and is_layer_module(m)
        assert layer_type(nn.Conv2d(3, 3, 3, groups=3)).kind == "depthwise"  # the others are unchanged
        # the weight helpers work for it without further code
        nxt = _seed(nn.Conv1d(6, 2, 1).double(), 1)
        x = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        before = nxt(m(x))
        s = np.random.default_rng(3).uniform(0.5, 2.0, size=6)
        scale_out_channels(m, 1.0 / s)
        scale_in_channels(nxt, s)
        torch.testing.assert_close(nxt(m(x)), before, rtol=1e-12, atol=1e-12)
        c = np.array([1.0, -2.0, 0.5, 3.0])
        want = (m.weight.detach() * torch.from_numpy(c).view(1, 4, 1)).sum(dim=(1, 2)).numpy()
        np.testing.assert_allclose(layer_response_to_constant(m, c), want, rtol=1e-12)
    finally:
        layers.unregister("conv1d")
    assert layer_type(m) is None
    assert [e.kind for e in layers.layer_types()] == ["linear", "depthwise", "grouped", "conv"]
