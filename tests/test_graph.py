"""Tracing into canonical form and region finding on small hand-built networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dfq_gpu.graph.regions import find_bn_pairs, find_regions
from dfq_gpu.graph.trace import TraceFailure, trace_model
from dfq_gpu.modules import ChannelClamp

X = (torch.randn(2, 3, 16, 16),)


def regions_of(model, x=X, residuals=True):
    gm = trace_model(model.eval(), x)
    return find_regions(gm, residuals=residuals)


class Pair(nn.Module):
    def __init__(self, act=None):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = act if act is not None else nn.ReLU()
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x)))


def test_conv_relu_conv_is_one_region():
    regions, skipped = regions_of(Pair())
    assert [(r.srcs, r.sinks) for r in regions] == [(("c1",), ("c2",))]
    assert regions[0].channels == 8 and not regions[0].residual
    assert [s.layer for s in skipped] == ["c2"] and "network output" in skipped[0].reason


@pytest.mark.parametrize("act,ok", [(nn.ReLU(), True), (nn.LeakyReLU(0.1), True), (nn.PReLU(8), True),
                                    (ChannelClamp.constant(0, 6, 8), True), (nn.ReLU6(), False),
                                    (nn.Hardswish(), False), (nn.Sigmoid(), False)])
def test_which_activations_let_equalization_through(act, ok):
    regions, skipped = regions_of(Pair(act))
    assert bool(regions) == ok
    if not ok:
        assert "c1" in [s.layer for s in skipped]
        reason = next(s.reason for s in skipped if s.layer == "c1")
        assert "not scale-equivariant" in reason


class Functional(nn.Module):
    """Functional activations, a reused module and a ZeroPad2d + conv pair."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Conv2d(8, 8, 3, stride=2, groups=8)
        self.relu = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = self.relu(self.dw(self.pad(x)))
        x = self.relu(self.c2(x))  # the same ReLU module used twice
        return x.mean((2, 3))


def test_functional_ops_and_reused_modules_are_canonicalised():
    gm = trace_model(Functional().eval(), X)
    mods = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert mods.count("ReLU") == 3  # F.relu became a module, the reused ReLU got a copy per call
    relu_targets = [n.target for n in gm.graph.nodes if n.op == "call_module" and "relu" in str(n.target).lower()]
    assert len(set(relu_targets)) == 3
    regions, _ = find_regions(gm)
    assert [(r.srcs, r.sinks) for r in regions] == [(("c1",), ("dw",)), (("dw",), ("c2",))]


class SubclassConv(nn.Conv2d):
    """A conv with built-in padding, like EfficientNet's Conv2dStaticSamePadding."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

    def forward(self, x):
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, 1, self.groups)


def test_conv_subclass_is_traced_into_pad_and_plain_conv():
    model = nn.Sequential(SubclassConv(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    gm = trace_model(model, X)
    assert type(gm.get_submodule("0")) is nn.Conv2d
    assert isinstance(gm.get_submodule("0_static_padding"), nn.ZeroPad2d)
    assert torch.equal(gm(*X), model(*X))
    regions, _ = find_regions(gm)
    assert [(r.srcs, r.sinks) for r in regions] == [(("0",), ("2",))]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a1 = nn.Conv2d(8, 16, 1)
        self.a2 = nn.Conv2d(16, 8, 1)
        self.b1 = nn.Conv2d(8, 16, 1)
        self.b2 = nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a2(F.relu(self.a1(x)))
        x = x + self.b2(F.relu(self.b1(x)))
        return self.head(x)


def test_residual_stream_is_one_region_with_shared_scales():
    regions, _ = regions_of(Residual())
    res = [r for r in regions if r.residual]
    assert len(res) == 1
    assert set(res[0].srcs) == {"stem", "a2", "b2"}
    assert set(res[0].sinks) == {"a1", "b1", "head"}
    assert {(r.srcs, r.sinks) for r in regions if not r.residual} == {(("a1",), ("a2",)), (("b1",), ("b2",))}
    regions2, skipped2 = regions_of(Residual(), residuals=False)
    assert not any(r.residual for r in regions2)
    assert any("equalize_residuals=False" in s.reason for s in skipped2)


class Gate(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.c1(x))
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.c2(x * g)


def test_squeeze_excitation_gate_passes_equalization():
    regions, skipped = regions_of(Gate())
    by_src = {r.srcs: r.sinks for r in regions}
    assert set(by_src[("c1",)]) == {"fc1", "c2"}
    assert by_src[("fc1",)] == ("fc2",)
    assert any(s.layer == "fc2" and "Sigmoid" in s.reason for s in skipped)


class Concat(nn.Module):
    """Two branches side by side, the second at half resolution and upsampled, into one conv;
    ``swap`` puts the branch computed first second in the concatenation."""

    def __init__(self, swap: bool = False, mode: str = "bilinear"):
        super().__init__()
        self.swap, self.mode = swap, mode
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.c = nn.Conv2d(10, 2, 1)

    def forward(self, x):
        a = F.relu(self.a(x))
        b = F.interpolate(F.relu(self.b(x)), scale_factor=2.0, mode=self.mode)
        return self.c(torch.cat([b, a] if self.swap else [a, b], 1))


@pytest.mark.parametrize("swap", [False, True])
def test_concat_and_interpolate_are_one_region_with_offsets(swap):
    """A concatenation along the channels puts its inputs side by side: one region whose sources
    cover slices of the sink's input channels (offsets in the concatenation's order, whichever
    branch the search starts from); interpolation is scale-equivariant per channel."""
    regions, skipped = regions_of(Concat(swap))
    assert len(regions) == 1, skipped
    r = regions[0]
    assert r.concat and r.channels == 10 and set(r.srcs) == {"a", "b"} and r.sinks == ("c",)
    offsets = dict(zip(r.srcs, r.src_offsets))
    assert offsets == ({"b": 0, "a": 6} if swap else {"a": 0, "b": 4})
    assert r.sink_offsets == (0,) and any("concatenation" in n for n in r.notes)


@pytest.mark.parametrize("dim,why", [(1, "with itself"), (2, "not along the channels")])
def test_concat_with_itself_or_off_channels_is_reported(dim, why):
    class SelfCat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(8 if dim == 1 else 4, 2, 1)

        def forward(self, x):
            h = F.relu(self.a(x))
            return self.c(torch.cat([h, h], dim))

    regions, skipped = regions_of(SelfCat())
    assert regions == [] and any(s.layer == "a" and why in s.reason for s in skipped), skipped


def test_bn_pairs_and_unfoldable_bn():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.bn_alone = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.c(x)
            return self.bn(y) + self.bn_alone(y)

    gm = trace_model(M().eval(), X)
    pairs, skipped = find_bn_pairs(gm)
    assert pairs == []  # the conv output has two users: folding would change the other
    assert {s.layer for s in skipped} == {"bn", "bn_alone"}


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 1)
        self.inner = Branchy()

    def forward(self, x):
        return self.inner(self.c(x))


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return x
        return -x


def test_untraceable_module_is_named():
    with pytest.raises(TraceFailure, match="inner") as e:
        trace_model(DataDependent().eval(), X)
    assert "leaf_modules=['inner']" in str(e.value)
    gm = trace_model(DataDependent().eval(), X, leaf_modules=["inner"])
    assert any(n.target == "inner" for n in gm.graph.nodes)
