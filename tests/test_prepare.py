"""prepare(): function preservation on real architectures and what each pass does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

import dfq_gpu as D
from dfq_gpu import zoo
from dfq_gpu.modules import ChannelClamp
from dfq_gpu.passes.base import in_channel_absmax, out_channel_absmax


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BN statistics and affine parameters far from the identity (including negative gammas)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.7 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return model


def tv_model(name: str) -> nn.Module:
    if name.startswith(("deeplabv3", "ssdlite")):
        return torchvision.models.get_model(name, weights=None, weights_backbone=None).backbone
    return torchvision.models.get_model(name, weights=None)


# (equalized regions, of which residual) per relu6 mode; a change here means region finding changed.
# The relu6 mode changes nothing in a network without ReLU6, so those run in one mode only.
REGIONS = {
    "mobilenet_v2": {"clip": (42, 5), "keep": (7, 5)},
    "mobilenet_v3_large": {"clip": (24, 5)},
    "resnet18": {"clip": (12, 4)},
    "resnet50": {"clip": (37, 4)},
    "efficientnet_b0": {"clip": (7, 5)},  # stochastic depth (identity in eval) no longer ends regions
    "mnasnet1_0": {"clip": (42, 5)},
    "shufflenet_v2_x1_0": {"clip": (37, 0)},
    "regnet_x_400mf": {"clip": (49, 4)},
    "deeplabv3_mobilenet_v3_large": {"clip": (24, 5)},
    "ssdlite320_mobilenet_v3_large": {"clip": (32, 5), "keep": (24, 5)},
}


#: prepare() is exact up to float64 rounding (measured: about 1e-14 relative); a function-changing
#: bug in a pass moves the outputs by far more than this.
EXACT = 1e-10


def _max_rel(a, b) -> float:
    if isinstance(a, dict):
        return max(_max_rel(a[k], b[k]) for k in a)
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("name,mode", [(n, m) for n in sorted(REGIONS) for m in REGIONS[n]])
def test_prepare_preserves_function_on_torchvision(name, mode):
    torch.manual_seed(0)
    model = randomize_bn(tv_model(name)).eval().double()
    if len(REGIONS[name]) == 1:  # one mode: the network has no ReLU6 for the mode to act on
        assert not any(isinstance(m, nn.Hardtanh) for m in model.modules())  # ReLU6 is a Hardtanh
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    before = copy.deepcopy(model.state_dict())
    fp = D.prepare(model, (x,), D.DFQConfig(relu6=mode, absorb_bias=False))
    with torch.no_grad():
        err = _max_rel(model(x), fp(x))
    assert err < EXACT
    eq = fp.report.equalized_regions
    assert (len(eq), sum(r.residual for r in eq)) == REGIONS[name][mode]
    # the user's model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.fixture(scope="module")
def lite0():
    return zoo.load_model("efficientnet_lite0")


@pytest.mark.parametrize("mode,regions", [("clip", (40, 5)), ("keep", (7, 5))])
def test_prepare_preserves_function_on_lite0(lite0, mode, regions):
    model = copy.deepcopy(lite0[0]).double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    fp = D.prepare(model, (x[:1],), D.DFQConfig(relu6=mode, absorb_bias=False))
    with torch.no_grad():
        assert _max_rel(model(x), fp(x)) < EXACT
    eq = fp.report.equalized_regions
    assert (len(eq), sum(r.residual for r in eq)) == regions


def test_exact_absorption_preserves_function_and_paper_absorption_approximates(lite0):
    model = copy.deepcopy(lite0[0]).double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64) * 0.5
    with torch.no_grad():
        ref = model(x)
        exact = D.prepare(model, (x[:1],), D.DFQConfig(absorb_exact=True))
        assert _max_rel(ref, exact(x)) < EXACT
        absorbed = [r for r in exact.report.regions if r.absorbed and r.absorbed.startswith("absorbed")]
        assert len(absorbed) >= 10
        shifted = [rec for rec in exact.report.layers.values() if rec.absorbed_out is not None]
        assert shifted and all(np.all(rec.absorbed_out >= 0) for rec in shifted)
        paper = D.prepare(model, (x[:1],), D.DFQConfig(absorb_exact=False))
        err = _max_rel(ref, paper(x))
        assert 1e-6 < err < 1.0  # the paper's version changes the network a little


class Chain(nn.Module):
    """conv -> BN -> ReLU -> depthwise -> BN -> ReLU -> conv -> BN -> ReLU -> conv."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.b2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.c2, self.b3 = nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.dw(x)))
        x = torch.relu(self.b3(self.c2(x)))
        return self.c3(x)


def _chain():
    torch.manual_seed(1)
    m = randomize_bn(Chain()).eval()
    with torch.no_grad():  # very unequal channel ranges, as after BN folding in MobileNets
        m.c1.weight.mul_(torch.logspace(-2, 1, 16).view(-1, 1, 1, 1))
        m.dw.weight.mul_(torch.logspace(1, -1.5, 16).view(-1, 1, 1, 1))
    return m


def test_cle_equalizes_pairs_to_sqrt_r1_r2():
    m = _chain()
    x = (torch.randn(2, 3, 8, 8),)
    cfg = D.DFQConfig(cle_objective="weights", cle_scale_bound=None, absorb_bias=False, cle_max_iter=200,
                      cle_tol=1e-9, cle_dead_threshold=0.0)
    fp = D.prepare(m, x, cfg)
    folded = D.prepare(m, x, cfg.replace(equalize=False))
    # after convergence, every pair's ranges are equal per channel up to one factor per region
    for src, dst in [("c1", "dw"), ("dw", "c2"), ("c2", "c3")]:
        r1 = out_channel_absmax(fp.get_submodule(src))
        r2 = in_channel_absmax(fp.get_submodule(dst))
        ratio = r1 / r2
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)
    # an isolated pair: both ranges become sqrt(r1 r2) (up to the region's one global factor)
    pair = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    with torch.no_grad():
        pair[0].weight.mul_(torch.logspace(-2, 1, 16).view(-1, 1, 1, 1))
    eq = D.prepare(pair, x, cfg.replace(fold_bn=False))
    r1, r2 = out_channel_absmax(pair[0]), in_channel_absmax(pair[2])
    e1, e2 = out_channel_absmax(eq.get_submodule("0")), in_channel_absmax(eq.get_submodule("2"))
    k = np.sqrt(r1.max() / r2.max())  # the normalisation by each tensor's largest range
    np.testing.assert_allclose(e1 / k, np.sqrt(r1 * r2), rtol=1e-6)
    np.testing.assert_allclose(e2 * k, np.sqrt(r1 * r2), rtol=1e-6)
    with torch.no_grad():
        assert _max_rel(m(*x), fp(*x)) < 1e-5
    # the spread of per-channel ranges shrinks a lot
    rec = fp.report.layer("dw")
    assert rec.range_ratio_equalized < rec.range_ratio_folded / 5


def test_cle_guards_dead_channels_and_bounds_scales():
    m = _chain()
    with torch.no_grad():
        m.dw.weight[3].zero_()  # a dead depthwise channel
    x = (torch.randn(2, 3, 8, 8),)
    fp = D.prepare(m, x, D.DFQConfig(cle_scale_bound=4.0, absorb_bias=False))
    for p in fp.parameters():
        assert torch.isfinite(p).all()
    for rec in fp.report.equalized_regions:
        assert 1 / 4 - 1e-9 <= rec.scale_min and rec.scale_max <= 4 + 1e-9
    assert any(r.dead >= 1 for r in fp.report.equalized_regions)
    with torch.no_grad():
        assert _max_rel(m(*x), fp(*x)) < 1e-5


def test_relu6_modes():
    m = torchvision.models.mobilenet_v2().eval()
    randomize_bn(m)
    x = (torch.randn(1, 3, 64, 64),)
    clip = D.prepare(m, x, D.DFQConfig(relu6="clip"))
    assert not any(isinstance(mod, nn.ReLU6) for mod in clip.modules())
    clamps = [mod for mod in clip.modules() if isinstance(mod, ChannelClamp)]
    assert len(clamps) == 35  # every ReLU6 of mobilenet_v2 became a per-channel clamp
    with torch.no_grad():
        assert _max_rel(m(*x), clip(*x)) < 1e-5  # ... computing the same function (float32)
    rep = D.prepare(m, x, D.DFQConfig(relu6="replace", absorb_bias=False))
    assert not any(isinstance(mod, nn.ReLU6) for mod in rep.modules())
    with torch.no_grad():
        assert _max_rel(m(*x), rep(*x)) > 1e-3  # replacing ReLU6 changes the network
    keep = D.prepare(m, x, D.DFQConfig(relu6="keep"))
    assert sum(isinstance(mod, nn.ReLU6) for mod in keep.modules()) == 35
    assert any("fixed clamp" in " ".join(r.notes) for r in keep.report.regions if r.status != "equalized")


def test_bn_folding_keeps_statistics_and_reports():
    m = _chain()
    fp = D.prepare(m, (torch.randn(1, 3, 8, 8),), D.DFQConfig(equalize=False))
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in fp.modules())
    assert fp.report.layer("c1").bn == "b1" and fp.report.layer("c3").bn is None
    assert "folded 3 batch norms" in fp.report.steps[0]


def test_equalization_sweeps_are_the_pass_one_sweep_at_a_time():
    """The sweeps the tutorial steps through are the pass's own: run to the end on a workspace
    prepared without equalization they give exactly prepare()'s weights, and the tutorial's stepper
    (with the config's objective and bound) ends at the scales the report records."""
    import dataclasses

    from dfq_gpu.api import prepared_workspace
    from dfq_gpu.graph.regions import find_regions
    from dfq_gpu.passes.equalize import equalization_sweeps
    from dfq_gpu.tutorial.ch03_equalization import CLEStepper

    m, x = _chain(), (torch.randn(1, 3, 8, 8),)
    cfg = D.DFQConfig(absorb_bias=False)
    fp = D.prepare(m, x, cfg)
    ws = prepared_workspace(m, x, cfg.replace(equalize=False))
    regions, _ = find_regions(ws.gm, residuals=cfg.equalize_residuals)
    sweeps = list(equalization_sweeps(dataclasses.replace(ws, cfg=cfg), regions))
    assert len(sweeps) == fp.report.cle_iterations > 1 and sweeps[-1].converged
    assert not any(s.converged for s in sweeps[:-1]) and sweeps[0].worst > sweeps[-1].worst
    for name in fp.report.layers:
        assert torch.equal(ws.gm.get_submodule(name).weight, fp.get_submodule(name).weight), name
    stepper = CLEStepper(m, x, bound=cfg.cle_scale_bound, objective=cfg.cle_objective)
    stepper.run(sweeps=cfg.cle_max_iter, tol=cfg.cle_tol)
    got = sorted((float(t.min()), float(t.max())) for t in stepper.history[-1].total_scales)
    want = sorted((r.scale_min, r.scale_max) for r in fp.report.equalized_regions)
    assert got == want


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_equalization_through_concat_and_interpolate(mode):
    """Equalization across a concatenation of an upsampled branch: the function is unchanged,
    each source's slice of the scale vector moves its channels, and the integer network equals
    the simulation."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_graph import Concat

    torch.manual_seed(0)
    model = Concat(swap=True, mode=mode).eval()
    with torch.no_grad():  # output channels of very different ranges
        model.a.weight.mul_(torch.tensor([0.05, 1.0, 4.0, 0.3]).view(4, 1, 1, 1))
        model.b.weight.mul_(torch.tensor([8.0, 0.1, 1.0, 2.0, 0.02, 1.0]).view(6, 1, 1, 1))
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    m64 = copy.deepcopy(model).double()
    fp = D.prepare(m64, (x[:1],), D.DFQConfig(absorb_bias=False, cle_objective="weights"))
    with torch.no_grad():
        assert _max_rel(m64(x), fp(x)) < EXACT
    eq = fp.report.equalized_regions
    assert len(eq) == 1 and eq[0].scale_max / eq[0].scale_min > 4, eq
    ra, rb = (out_channel_absmax(fp.get_submodule(n)) for n in ("a", "b"))
    ra0, rb0 = (out_channel_absmax(getattr(model, n)) for n in ("a", "b"))
    assert ra.max() / ra.min() < ra0.max() / ra0.min() and rb.max() / rb.min() < rb0.max() / rb0.min()
    q = D.quantize(model, (x[:1].float(),), D.DFQConfig(input_range=(-4.0, 4.0)))
    with torch.no_grad():
        assert torch.equal(D.to_int8(q, backend="reference")(x.float()), q(x.float()))


class _PreActivation(nn.Module):
    """Two branches concatenated into a pre-activation batch norm (BN -> ReLU -> conv, as in DenseNet)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 2, 3, padding=1)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.c(torch.relu(self.bn(h)))


def test_unfolded_batch_norm_is_a_sink():
    """A batch norm that cannot be folded ends a region as a sink that absorbs the scale exactly
    (gamma *= s, mean /= s) and constrains nothing: the sources' ranges get equalized, the function
    is unchanged and the integer network still equals the simulation."""
    torch.manual_seed(0)
    model = randomize_bn(_PreActivation()).eval()
    with torch.no_grad():
        model.a.weight.mul_(torch.tensor([0.05, 1.0, 4.0, 0.3]).view(4, 1, 1, 1))
        model.b.weight.mul_(torch.tensor([8.0, 0.1, 1.0, 2.0, 0.02, 1.0]).view(6, 1, 1, 1))
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    m64 = copy.deepcopy(model).double()
    fp = D.prepare(m64, (x[:1],), D.DFQConfig(cle_objective="weights"))
    with torch.no_grad():
        assert _max_rel(m64(x), fp(x)) < EXACT
    eq = fp.report.equalized_regions
    assert len(eq) == 1 and set(eq[0].srcs) == {"a", "b"} and eq[0].sinks == ("bn",), fp.report.regions
    spread = [out_channel_absmax(fp.get_submodule(n)) for n in ("a", "b")]
    before = [out_channel_absmax(getattr(model, n)) for n in ("a", "b")]
    for r, r0 in zip(spread, before):
        assert r.max() / r.min() < 0.5 * r0.max() / r0.min()
    assert not torch.equal(fp.get_submodule("bn").weight, m64.bn.weight)
    q = D.quantize(model, (x[:1].float(),), D.DFQConfig(input_range=(-4.0, 4.0)))
    with torch.no_grad():
        assert torch.equal(D.to_int8(q, backend="reference")(x.float()), q(x.float()))
