"""Per-quantizer sensitivity and automatic float fallback (dfq_gpu.sensitivity)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn as nn

import dfq_gpu
from dfq_gpu import DFQConfig, DFQError
from dfq_gpu.modules import QConv2d
from dfq_gpu.sensitivity import Sensitivity, quantize_with_fallback, sensitivity, synthetic_inputs

SENSITIVE = "1.0"  # the depthwise convolution


def _cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _model() -> nn.Module:
    """conv -> depthwise -> pointwise -> pool -> linear. Channel 0 of the first conv is dead (all
    zero) and the depthwise filter of that channel has weights of +-50: its output stays the
    bias, but one scale per tensor for the depthwise weights rounds every other channel's
    weights (about 0.3) to 0 or +-0.4, which only that layer's weights suffer from."""
    torch.manual_seed(0)
    m = nn.Sequential(_cbr(3, 8), _cbr(8, 8, 3, 8), _cbr(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(16, 10))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.5)
        m[0][0].weight[0] = 0
        m[0][1].bias[0] = 0
        m[0][1].running_mean[0] = 0
        m[1][0].weight[0] = 50 * torch.sign(torch.randn(1, 3, 3))
    return m.eval()


CFG = DFQConfig.naive(act_range_method="mse")  # per-tensor W8A8 without equalization (which would fix the
# depthwise layer); activation ranges narrowed so that the weights dominate the error
NS = 16  # synthetic samples, the same in every measurement


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, torch.nn.Module, Sensitivity]:
    model = _model()
    ex = torch.randn(2, 3, 16, 16)
    q = dfq_gpu.quantize(model, ex, CFG)
    return model, ex, q, sensitivity(q, model, example_inputs=ex, num_samples=NS, progress=False)


def test_sensitive_layer_ranked_first(setup) -> None:
    _, _, q, s = setup
    assert (s.rows[0].name, s.rows[0].kind) == (SENSITIVE, "weights")
    assert s.most_sensitive(1, "weights")[0].name == SENSITIVE
    assert [r.kind for r in s.most_sensitive(3, "activations")] == ["activations"] * 3
    row = s.row(SENSITIVE)
    others = [r for r in s.rows if r is not row]
    # alone it costs as much as everything together; in float it gives back >10 dB
    assert row.only_on_db < s.all_on_db + 1.0
    assert row.only_off_db > s.all_on_db + 10.0
    assert row.only_on_db < min(r.only_on_db for r in others) - 10.0
    assert row.only_off_db > max(r.only_off_db for r in others) + 10.0
    # every quantizer is measured: 4 layers' weights, the input and 4 activation quantizers
    assert sum(r.kind == "weights" for r in s.rows) == 4
    assert sum(r.kind == "activations" for r in s.rows) == sum(isinstance(m, dfq_gpu.modules.FakeQuant)
                                                               for m in q.modules())
    # recorded in the report, and q itself unchanged (a copy was measured)
    assert q.report.to_dict()["sensitivity"]["rows"][0]["name"] == SENSITIVE
    assert all(m.enabled for m in q.modules() if isinstance(m, dfq_gpu.modules.FakeQuant))


def test_on_off_consistency() -> None:
    """All off is exactly the FP32 network, with analytic bias correction and rounded biases (which
    belong to the quantized weights); all on matches the quantized network; a network with a single
    quantizer has only-on == all-on and only-off == FP32."""
    model = _model()
    ex = torch.randn(2, 3, 16, 16)
    q = dfq_gpu.quantize(model, ex, DFQConfig())
    batches = synthetic_inputs(ex, 16, 8)
    s = sensitivity(q, model, batches, example_inputs=ex, progress=False)
    assert s.all_off_db == math.inf
    p = dfq_gpu.prepare(model, ex, DFQConfig())
    direct = dfq_gpu.evaluate(q, [b[0] for b in batches], reference=p).sqnr_db
    assert abs(s.all_on_db - direct) < 0.05
    assert s.n_samples == 16

    lin = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    q1 = dfq_gpu.quantize(lin, ex, DFQConfig.naive(act_bits=None))
    s1 = sensitivity(q1, lin, example_inputs=ex, progress=False, record=False)
    (row,) = s1.rows
    assert (row.name, row.kind, row.only_off_db) == ("0", "weights", math.inf)
    assert row.only_on_db == pytest.approx(s1.all_on_db, abs=1e-9) and math.isfinite(row.only_on_db)


def test_table_rendering(setup) -> None:
    _, _, _, s = setup
    d = s.to_dict()
    json.dumps(d)  # inf as a string
    assert d["all_off_db"] == "inf" and d["rows"][0]["name"] == SENSITIVE
    text = repr(s)
    assert text.splitlines()[3].split("|")[1].strip() == SENSITIVE
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = s.plot(k=3)
    assert len(ax.get_yticklabels()) == 3


def test_fallback_keeps_exactly_the_sensitive_layer(setup, tmp_path) -> None:
    model, ex, _, s = setup
    assert s.all_on_db < 28.0  # the target is above today's SQNR
    q = quantize_with_fallback(model, ex, CFG, target_sqnr_db=28.0, num_samples=NS, progress=False)
    fb = q.report.fallback
    assert (fb["float_weights"], fb["float_activations"]) == ([SENSITIVE], [])
    assert fb["history"][0]["sqnr_db"] < 28.0 <= fb["sqnr_db"] == fb["history"][-1]["sqnr_db"]
    assert fb["sqnr_db"] == pytest.approx(s.row(SENSITIVE).only_off_db, abs=0.1)  # what sensitivity predicted
    mods = dict(q.named_modules())
    assert type(mods[SENSITIVE]) is nn.Conv2d and isinstance(mods["2.0"], QConv2d)
    assert (SENSITIVE, "in skip_layers: left in float") in q.report.skipped
    # the integer network runs that layer in float, bit-identical to the simulation
    net = dfq_gpu.to_int8(q, backend="reference")
    node = "_" + SENSITIVE.replace(".", "_")  # the layer's node; its activation follows it in float
    assert "left in float" in net.coverage.float_nodes[node] and len(net.coverage.float_nodes) == 2
    xs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(net(xs), q(xs))
    # save / load keep the float layer, the report's fallback and sensitivity sections
    path = tmp_path / "q.safetensors"
    dfq_gpu.save(q, path)
    q2 = dfq_gpu.load(path)
    assert q2.report.fallback == json.loads(json.dumps(fb)) and q2.report.sensitivity["rows"]
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(q(x), q2(x))
    # a target already met keeps everything quantized
    q0 = quantize_with_fallback(model, ex, CFG, target_sqnr_db=10.0, num_samples=NS, progress=False)
    assert q0.report.fallback["float_weights"] == q0.report.fallback["float_activations"] == []
    assert q0.report.sensitivity is None


def test_fallback_activations(setup) -> None:
    """Keeping activations in float: the best activation quantizer by only-off is disabled, the
    network reaches what sensitivity predicted, and the integer network keeps that tensor in
    float, bit-identical to the simulation."""
    model, ex, _, s = setup
    best = max(s.most_sensitive(len(s.rows), "activations"), key=lambda r: r.only_off_db)
    target = best.only_off_db - 0.1
    assert target > s.all_on_db
    q = quantize_with_fallback(model, ex, CFG, target_sqnr_db=target, kinds="activations", max_float=1,
                               ranking=s, num_samples=NS, progress=False)
    fb = q.report.fallback
    assert (fb["float_weights"], fb["float_activations"]) == ([], [best.name])
    assert fb["sqnr_db"] == pytest.approx(best.only_off_db, abs=0.1)
    assert dict(q.named_modules())[best.name].enabled is False
    with pytest.raises(ValueError, match=rf"'{best.name}' is disabled"):
        dfq_gpu.to_int8(q, backend=None, fallback=False)
    net = dfq_gpu.to_int8(q, backend="reference")
    assert net.coverage.float_nodes
    xs = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.equal(net(xs), q(xs))


def test_fallback_cap_and_argument_errors(setup) -> None:
    model, ex, q, _ = setup
    with pytest.raises(DFQError, match=r"1 quantizer\(s\) in float \(max_float=1\).*below the target 200"):
        quantize_with_fallback(model, ex, CFG, target_sqnr_db=200.0, max_float=1, num_samples=4,
                               progress=False)
    # candidates that give no gain are not kept (quantization errors partly cancel on this model)
    with pytest.raises(DFQError) as err:
        quantize_with_fallback(model, ex, CFG, target_sqnr_db=200.0, max_float=4, num_samples=NS, progress=False)
    found = re.search(r"(\d+) quantizer\(s\) in float .* (\d+) candidates tried, (\d+) not kept", str(err.value))
    assert found, str(err.value)
    kept, tried, dropped = (int(g) for g in found.groups())
    assert dropped >= 1 and kept + dropped == tried and kept <= 4
    for bad in (math.nan, math.inf, "30", True, None):
        with pytest.raises(DFQError, match="target_sqnr_db"):
            quantize_with_fallback(model, ex, CFG, target_sqnr_db=bad)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DFQError, match="max_float"):
            quantize_with_fallback(model, ex, CFG, target_sqnr_db=30.0, max_float=bad)
    for bad in ((), "bias", ("weights", "biases")):
        with pytest.raises(DFQError, match="kinds"):
            quantize_with_fallback(model, ex, CFG, target_sqnr_db=30.0, kinds=bad)
    with pytest.raises(DFQError, match="ranking"):
        quantize_with_fallback(model, ex, CFG, target_sqnr_db=30.0, ranking=[])
    with pytest.raises(DFQError, match="which"):
        sensitivity(q, model, example_inputs=ex, which=("bias",))
    with pytest.raises(DFQError, match="rank_by"):
        sensitivity(q, model, example_inputs=ex, rank_by="worst")
    with pytest.raises(DFQError, match="example_inputs"):
        sensitivity(q, model)
    with pytest.raises(DFQError, match="dfq_gpu.quantize"):
        sensitivity(model, model, example_inputs=ex)
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)).eval()
    with pytest.raises(DFQError, match="no layer '0.0'"):
        sensitivity(q, dfq_gpu.prepare(other, ex, CFG))
