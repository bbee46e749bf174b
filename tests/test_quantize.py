"""quantize(): the simulated quantized network, bias correction, accuracy anchors, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import dfq_gpu as D
from dfq_gpu import data as data_mod
from dfq_gpu import zoo
from dfq_gpu.evaluate import collect_outputs, evaluate
from dfq_gpu.modules import FakeQuant, QConv2d, QLinear


class Net(nn.Module):
    """conv-BN-ReLU6 -> depthwise-BN-ReLU6 -> conv-BN, residual, pool, linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.dw, self.b2 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b3 = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)
        self.act = nn.ReLU6()

    def forward(self, x):
        x = self.act(self.b1(self.c1(x)))
        y = self.act(self.b2(self.dw(x)))
        x = x + self.b3(self.c2(y))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def trained_stats_net(seed=0, n=256):
    """A Net whose BN statistics are those of its data (so analytic bias correction has true E[x])."""
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        net.c1.weight.mul_(torch.logspace(-1.5, 0.5, 16).view(-1, 1, 1, 1))
        net.dw.weight.mul_(torch.logspace(0.5, -1.5, 16).view(-1, 1, 1, 1))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            nn.init.uniform_(m.weight, 0.5, 2.0)
            nn.init.normal_(m.bias, 0.5, 1.0)
    x = torch.randn(n, 3, 12, 12)
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval(), x


def test_quantize_leaves_the_model_alone_and_builds_the_simulation():
    net, x = trained_stats_net()
    before = copy.deepcopy(net.state_dict())
    q = D.quantize(net, (x[:2],))
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not hasattr(net, "report")
    layers = [m for m in q.modules() if isinstance(m, (QConv2d, QLinear))]
    assert len(layers) == 4
    fqs = [m for m in q.modules() if isinstance(m, FakeQuant)]
    # input, after c1's clamp, after dw's clamp, after c2, after the add, after the pool (logits stay float)
    assert len(fqs) == 6
    with torch.no_grad():
        out = q(x[:8])
    assert out.shape == (8, 5) and torch.isfinite(out).all()
    # weights really lie on an 8-bit grid of one scale per tensor
    for m in layers:
        w = m.integer_weight()
        assert w.min() >= 0 and w.max() <= 255 and m.w_scale.numel() == 1
        assert torch.allclose((w - m.w_zero_point).double() * m.w_scale, m.weight.double(), atol=1e-6)


@pytest.mark.parametrize("bits,gran,sym", [(4, "tensor", False), (8, "channel", True), (16, "tensor", True),
                                           (2, "channel", False)])
def test_bit_widths_and_granularities(bits, gran, sym):
    net, x = trained_stats_net()
    q = D.quantize(net, (x[:2],), D.DFQConfig(weight_bits=bits, act_bits=bits, weight_granularity=gran,
                                                 weight_symmetric=sym, act_symmetric=sym))
    for m in q.modules():
        if isinstance(m, (QConv2d, QLinear)):
            w = m.integer_weight()
            lo, hi = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
            assert w.min() >= lo and w.max() <= hi
            assert m.w_scale.numel() == (m.weight.shape[0] if gran == "channel" else 1)
        if isinstance(m, FakeQuant):
            assert m.bits == bits and m.symmetric == sym
    ref = net(x[:16]).detach()
    sq = evaluate(q, x[:16], reference=ref).sqnr_db
    assert sq > (30 if bits == 16 else -5)


def _mean_error(q, net, x):
    with torch.no_grad():
        return (q(x) - net(x)).mean(0).abs().mean().item()


def test_analytic_bias_correction_removes_the_mean_error():
    net, x = trained_stats_net()
    cfg = D.DFQConfig(weight_bits=4, act_bits=None, equalize=False, absorb_bias=False, relu6="keep")
    no_bc = D.quantize(net, (x[:2],), cfg.replace(bias_correction="none"))
    bc = D.quantize(net, (x[:2],), cfg)
    assert _mean_error(bc, net, x) < 0.6 * _mean_error(no_bc, net, x)
    rec = bc.report.layer("dw")
    assert rec.bias_correction is not None and np.abs(rec.bias_correction).max() > 0


def test_empirical_bias_correction_uses_data():
    net, x = trained_stats_net()
    cfg = D.DFQConfig(weight_bits=4, act_bits=8, equalize=False, bias_correction="empirical", relu6="keep")
    with pytest.raises(D.DFQError, match="needs data"):
        D.quantize(net, (x[:2],), cfg)
    batches = [x[i:i + 64] for i in range(0, 256, 64)]
    bc = D.quantize(net, (x[:2],), cfg, data=batches)
    no_bc = D.quantize(net, (x[:2],), cfg.replace(bias_correction="none"))
    assert _mean_error(bc, net, x) < 0.5 * _mean_error(no_bc, net, x)


def test_calibrated_activation_ranges():
    net, x = trained_stats_net()
    cfg = D.DFQConfig(act_ranges="calibrate")
    with pytest.raises(D.DFQError, match="needs data"):
        D.quantize(net, (x[:2],), cfg)
    q = D.quantize(net, (x[:2],), cfg, data=[(x[:128], torch.zeros(128, dtype=torch.long))])
    fq = [m for m in q.modules() if isinstance(m, FakeQuant)]
    assert all(m.source == "calibrate" for m in fq[1:])


def test_skip_layers_stay_float():
    net, x = trained_stats_net()
    q = D.quantize(net, (x[:2],), D.DFQConfig(skip_layers=("fc",)))
    assert type(q.get_submodule("fc")) is nn.Linear
    assert ("fc", "in skip_layers: left in float") in q.report.skipped


def test_report_renders():
    net, x = trained_stats_net()
    q = D.quantize(net, (x[:2],))
    r = q.report
    text = repr(r)
    assert "DFQ report" in text and "dw" in text and "depthwise" in text
    d = json.loads(json.dumps(r.to_dict()))
    assert d["layers"]["c1"]["w_bits"] == 8 and d["layers"]["c1"]["act_in"]["source"] in ("input", "observed")
    assert "<table>" in r._repr_html_()
    assert r.layer("dw").act_out["hi"] > 0
    with pytest.raises(KeyError, match="no layer"):
        r.layer("nope")


def test_bad_input():
    net, x = trained_stats_net()
    with pytest.raises(D.DFQError, match="torch.nn.Module"):
        D.quantize("resnet", (x,))
    with pytest.raises(D.DFQError, match="example_inputs"):
        D.quantize(net, ())
    bad = copy.deepcopy(net)
    with torch.no_grad():
        bad.dw.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(D.DFQError, match="dw.weight"):
        D.quantize(bad, (x[:2],))
    with pytest.raises(D.DFQError, match="no quantizable layer"):
        D.quantize(nn.Sequential(nn.ReLU(), nn.Flatten()), (x[:2],))
    with pytest.raises(D.DFQError, match="data must be"):
        D.quantize(net, (x[:2],), D.DFQConfig(), data=42)


@pytest.fixture(scope="module")
def lite0_sample():
    model, pre = zoo.load_model("efficientnet_lite0")
    ds = data_mod.imagenet_sample(pre)
    ref = collect_outputs(model, ds, batch_size=40)
    return model, pre, ds, ref


def test_lite0_w8a8_per_tensor_data_free(lite0_sample):
    """README's anchor: data-free per-tensor W8A8 on EfficientNet-Lite0 (160 sample views)."""
    model, pre, ds, ref = lite0_sample
    x = ds.tensors[0]
    naive = D.quantize(model, (x[:1],), D.DFQConfig.naive(input_range=pre.input_range))
    dfq = D.quantize(model, (x[:1],), D.DFQConfig(input_range=pre.input_range))
    m_naive = evaluate(naive, ds, reference=ref, batch_size=40)
    m_dfq = evaluate(dfq, ds, reference=ref, batch_size=40)
    assert m_dfq.agreement >= 0.97 and m_dfq.sqnr_db >= 18.0
    assert m_naive.sqnr_db < 12.0 and m_dfq.sqnr_db > m_naive.sqnr_db + 6


def test_fmnist_w8a8_within_0p3_points():
    model, _ = zoo.load_model("fmnist_mobilenet")
    test = data_mod.fashion_mnist("test")
    x = test.tensors[0]
    fp = evaluate(model, test, batch_size=1000)
    q = D.quantize(model, (x[:1],))
    qm = evaluate(q, test, batch_size=1000)
    assert abs(qm.top1 - fp.top1) <= 0.003
