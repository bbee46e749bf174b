"""The fusion plan (``dfq_gpu.quant.plan``): one plan per int8 step, and both the simulation
and the int8 network built from the same plan objects."""

from __future__ import annotations

import torch
import torch.nn as nn

import dfq_gpu.int8.convert as convert
import dfq_gpu.quant.simulate as simulate
from dfq_gpu import DFQConfig, quantize, to_int8
from dfq_gpu.int8 import layers as L
from dfq_gpu.modules import QAdd, QAvgPool
from dfq_gpu.quant.plan import AddPlan, AvgPoolPlan, LayerPlan, build_plan


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dw_act = nn.ReLU()
        self.pw = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        h = self.relu(h + self.pw(self.dw_act(self.dw(h))))
        return self.fc(torch.flatten(self.pool(h), 1))


def _sim():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    return quantize(Tiny().eval(), (x[:1],), DFQConfig(input_range=(-3.0, 3.0))), x


def test_one_plan_per_int8_step_with_its_fusion():
    sim, _ = _sim()
    plan = build_plan(sim)
    assert [(n, type(p).__name__) for n, p in plan.items()] == [
        ("conv", "LayerPlan"), ("dw", "LayerPlan"), ("pw", "LayerPlan"), ("add", "AddPlan"),
        ("pool", "AvgPoolPlan"), ("fc", "LayerPlan")]
    kinds = {n: p.kind for n, p in plan.items() if isinstance(p, LayerPlan)}
    assert kinds == {"conv": "conv", "dw": "depthwise", "pw": "conv", "fc": "linear"}
    acts = {n: None if p.act is None else p.act.name for n, p in plan.items()}
    assert acts == {"conv": "act", "dw": "dw_act", "pw": None, "add": "relu", "pool": None, "fc": None}
    assert all(p.float_reason is None for p in plan.values()), {n: p.float_reason for n, p in plan.items()}
    fc = plan["fc"]
    assert isinstance(fc, LayerPlan) and fc.quantizer is None and fc.y is None
    assert fc.requant is not None and fc.requant.float_scale is not None and fc.requant.multiplier is None
    conv = plan["conv"]
    assert isinstance(conv, LayerPlan) and conv.requant is not None and conv.y is not None
    assert conv.tail is conv.quantizer and int(conv.requant.lo[0]) == conv.y.zero_point  # ReLU6 fused: lo = 0.0
    add, pool = plan["add"], plan["pool"]
    assert isinstance(add, AddPlan) and add.requant is not None and add.acc_bound is not None
    assert isinstance(pool, AvgPoolPlan) and pool.hw == 100 and pool.y is not None


def test_simulation_and_int8_network_built_from_the_same_plan(monkeypatch):
    sim, x = _sim()
    plans: dict[str, list] = {"sim": [], "int8": []}

    def recording(key):
        def build(gm):
            p = build_plan(gm)
            plans[key].append(p)
            return p
        return build

    monkeypatch.setattr(simulate, "build_plan", recording("sim"))
    monkeypatch.setattr(convert, "build_plan", recording("int8"))
    res = simulate.make_integer_exact(sim)
    assert (res["layers"], res["adds"], res["pools"], res["float"]) == (4, 1, 1, {})
    net = to_int8(sim, backend="reference", fuse_residual=False, fuse_stem=False)  # a step per add and quantizer
    (sim_plan,), (int8_plan,) = plans["sim"], plans["int8"]
    steps = net.steps()
    for name in ("conv", "dw", "pw", "fc"):
        p = int8_plan[name]
        assert isinstance(p, LayerPlan) and p.requant is not None
        m = sim.get_submodule(name)
        step = steps[name]
        assert isinstance(step, (L.Int8Conv2d, L.Int8DepthwiseConv2d, L.Int8Linear))
        if p.requant.multiplier is not None:
            assert torch.equal(step.multiplier, p.requant.multiplier)
            assert torch.equal(m.iq_multiplier, p.requant.multiplier)
            assert torch.equal(m.iq_multiplier, sim_plan[name].requant.multiplier)
        else:
            assert torch.equal(step.out_scale, p.requant.float_scale)
            assert torch.equal(m.iq_float_scale, p.requant.float_scale)
        assert torch.equal(m.iq_bias.to(torch.int64), p.requant.bias)
    add = int8_plan["add"]
    assert isinstance(add, AddPlan) and add.requant is not None
    qadd, step_add = sim.get_submodule("add"), steps["add"]
    assert isinstance(qadd, QAdd) and isinstance(step_add, L.Int8Add)
    assert (qadd.ia, qadd.ib, qadd.multiplier) == (step_add.ia, step_add.ib, step_add.multiplier) == (
        add.requant.ia, add.requant.ib, add.requant.multiplier)
    pool = int8_plan["pool"]
    assert isinstance(pool, AvgPoolPlan) and isinstance(sim.get_submodule("pool"), QAvgPool)
    assert isinstance(steps["pool"], L.Int8AvgPool) and steps["pool"].hw == pool.hw
    with torch.no_grad():
        assert torch.equal(net(x), sim(x))


def test_plan_records_why_the_simulation_stays_in_float():
    sim, _ = _sim()
    add = build_plan(sim)["add"]
    assert add.quantizer is not None
    sim.get_submodule(str(add.quantizer.target)).enabled = False
    plan = build_plan(sim)
    assert plan["add"].float_reason == "its output quantizer is disabled"
    assert plan["add"].requant is None
    assert plan["pool"].float_reason == "its input is not quantized"
    assert plan["conv"].float_reason is None


class _Fusable(nn.Module):
    """Adds whose layer operand fuses: a dense 3x3 convolution (the convolution kernel's
    epilogue), then ones that do not: a depthwise, a grouped 1x1 and a dilated 3x3 convolution;
    then a 1x1 convolution (the GEMM's), and a strided 3x3 one behind a zero padding (merged into
    its padding) with a strided 1x1 downsampling as the other operand."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dense = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 1, groups=2)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.pw = nn.Conv2d(8, 8, 1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.strided = nn.Conv2d(8, 8, 3, stride=2)
        self.down = nn.Conv2d(8, 8, 1, stride=2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.dense(h)
        h = self.dw(h) + h
        h = h + self.grouped(h)
        h = self.dilated(h) + h
        h = self.pw(h) + h
        h = self.strided(self.pad(h)) + self.down(h)
        return self.fc(h.mean((2, 3)))


def test_residual_fusions_take_a_dense_conv_or_linear_output_with_one_user():
    from dfq_gpu.quant.plan import ResidualFusion, residual_fusions

    sim, _ = _sim()
    plan = build_plan(sim)
    assert residual_fusions(sim, plan) == {"add": ResidualFusion("add", "pw", 1)}
    sim.get_submodule(str(plan["add"].quantizer.target)).enabled = False  # the add stays in float
    assert residual_fusions(sim, build_plan(sim)) == {}
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    q = quantize(_Fusable().eval(), (x,), DFQConfig(input_range=(-3.0, 3.0)))
    plan = build_plan(q)
    adds = [n for n, p in plan.items() if isinstance(p, AddPlan)]
    assert len(adds) == 6 and all(plan[n].float_reason is None for n in adds)
    assert residual_fusions(q, plan) == {adds[0]: ResidualFusion(adds[0], "dense", 1),
                                         adds[4]: ResidualFusion(adds[4], "pw", 0),
                                         adds[5]: ResidualFusion(adds[5], "strided", 0)}
