"""Bad inputs get clear errors: example inputs the model cannot run on (wrong channel count,
integer dtype, not a tensor), NaN/Inf images given to the integer network on the CPU, and
half-precision inputs, which the simulation and the integer network both quantize as float32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import dfq_gpu as D
import kernels


class TinyNet(nn.Module):
    """conv-BN-ReLU6 -> depthwise-BN-ReLU6 -> conv-BN -> global pool -> linear, on 3x12x12."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b3 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.b1(self.c1(x)))
        x = self.act(self.b2(self.dw(x)))
        x = self.b3(self.c2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_net() -> tuple[nn.Module, torch.Tensor]:
    """A TinyNet whose BN statistics are those of its data, and that data."""
    torch.manual_seed(0)
    net = TinyNet()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    x = torch.randn(32, 3, 12, 12)
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval(), x


@pytest.fixture(scope="module")
def sim_and_int8():
    net, x = tiny_net()
    q = D.quantize(net, (x[:1],))
    return q, D.to_int8(q, backend="reference"), x[:8]


def _unchanged(net: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    state = net.state_dict()
    return (state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
            and not net.training and not hasattr(net, "report"))


# =============================================================================================
# example inputs
# =============================================================================================
@pytest.mark.parametrize("entry", [D.quantize, D.prepare])
def test_wrong_channel_count_names_the_layer_and_the_expected_channels(entry):
    net, x = tiny_net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(D.DFQError) as info:
        entry(net, (torch.randn(1, 4, 12, 12),))
    msg = str(info.value)
    assert "c1 (Conv2d) failed" in msg  # the failing node
    assert "expects 3 input channels" in msg and "(1, 4, 12, 12)" in msg
    assert "ShapeProp" not in msg
    # the op's own error is chained
    assert isinstance(info.value.__cause__, RuntimeError) and "channels" in str(info.value.__cause__)
    assert _unchanged(net, before)
    # the same model still quantizes with a valid input
    q = entry(net, (x[:1],))
    with torch.no_grad():
        assert torch.isfinite(q(x[:4])).all()
    assert _unchanged(net, before)


def test_failure_after_the_first_layer_names_that_node():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 12 * 12, 5)).eval()
    with pytest.raises(D.DFQError) as info:
        D.quantize(net, (torch.randn(1, 3, 8, 8),))
    msg = str(info.value)
    assert "2 (Linear) failed" in msg and "(1, 3, 8, 8)" in msg
    assert "first layer" not in msg  # the first layer's 3 channels are there
    assert info.value.__cause__ is not None


def test_first_linear_layer_states_its_input_features():
    net = nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    with pytest.raises(D.DFQError, match=r"expects 12 input features .*example_inputs\[0\] has shape \(2, 10\)"):
        D.prepare(net, (torch.randn(2, 10),))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
@pytest.mark.parametrize("entry", [D.quantize, D.prepare])
def test_non_floating_example_input(entry, dtype):
    net, _ = tiny_net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(D.DFQError, match=rf"example_inputs\[0\] must be a floating-point tensor.*{dtype}"):
        entry(net, (torch.zeros(1, 3, 12, 12, dtype=dtype),))
    assert _unchanged(net, before)


@pytest.mark.parametrize("bad,index,kind", [((torch.randn(1, 3, 12, 12), 3), 1, "int"), ([[1.0, 2.0]], 0, "list"),
                                            (("image",), 0, "str"), ((None,), 0, "NoneType")])
def test_non_tensor_example_input(bad, index, kind):
    net, _ = tiny_net()
    with pytest.raises(D.DFQError, match=rf"example_inputs\[{index}\] must be a torch.Tensor, got {kind}$"):
        D.quantize(net, bad)


# =============================================================================================
# NaN / Inf in the integer network
# =============================================================================================
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_int8_network_rejects_nan_and_inf_on_the_cpu(sim_and_int8, backend):
    q, _, x = sim_and_int8
    net = D.to_int8(q, backend=backend)
    bad = x.clone()
    bad[0, 0, 0, :2] = float("nan")
    bad[1, 2, 3, 4] = float("inf")
    bad[2, 1, 5, 6] = -float("inf")
    with pytest.raises(D.DFQError, match=r"contains 2 NaN and 2 Inf values \(of 3456"):
        net(bad)
    with pytest.raises(ValueError, match="2 NaN and 0 Inf"):  # DFQError is a ValueError
        net(bad[:1].half())
    with pytest.raises(D.DFQError, match="NaN"):
        net.activations(bad)  # the step-by-step run goes through the same input step
    assert torch.isnan(q(bad[:1])).all()  # what the simulation makes of it
    assert torch.equal(net(x), q(x))  # finite inputs still run, bit-identical


def test_finite_check_stays_out_of_exported_graphs(sim_and_int8):
    q, net, x = sim_and_int8
    ep = torch.export.export(net, (x[:2],))
    targets = " ".join(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
    assert "isfinite" not in targets and "isnan" not in targets
    bad = x[:2].clone()
    bad[0, 0, 0, 0] = float("nan")
    ep.module()(bad)  # no check in the exported program: it runs (to arbitrary numbers)
    with pytest.raises(D.DFQError):
        net(bad)


def test_quantize_kernel_maps_nan_to_the_lower_bound():
    """What the CUDA path does with non-finite input, which it does not check: the Triton
    quantize kernel (here under Triton's interpreter without a GPU, whose maximum/minimum have
    the same IEEE maxNum/minNum semantics as the compiled kernel) maps NaN and -Inf to ``lo``
    and +Inf to ``hi``. The CPU reference has no such definition (NaN -> int is undefined),
    which is why the integer network rejects such inputs on the CPU."""
    pytest.importorskip("triton")
    from kernels import _config

    if not (_config.INTERPRETED or torch.cuda.is_available()):
        pytest.skip("needs a GPU or TRITON_INTERPRET=1 (set by tests/conftest.py)")
    from kernels import elementwise

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 1.0], device=dev)
    for scale, z, lo, hi in [(0.02, 3, -128, 127), (0.05, -128, -128, 127), (0.1, 10, -20, 90)]:
        y = elementwise.quantize(x, scale, z, lo, hi, layout="flat").cpu()
        assert y.tolist()[:3] == [lo, hi, lo]
        assert torch.equal(y[3:], kernels.reference.quantize(x[3:].cpu(), scale, z, lo, hi, layout="flat"))


# =============================================================================================
# half precision
# =============================================================================================
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_simulation_computes_in_float32_and_matches_the_int8_network(sim_and_int8, dtype):
    q, net, x = sim_and_int8
    xl = x.to(dtype)
    with torch.no_grad():
        sim_out = q(xl)
        assert sim_out.dtype == torch.float32
        assert torch.equal(sim_out, q(xl.float()))
        assert torch.equal(sim_out, net(xl))  # the integer reference backend
    # the step-by-step comparison agrees too (it runs the simulation through fx.Interpreter)
    agreement = D.int8.compare_with_simulation(net, q, xl)
    assert agreement and all(a.mismatches == 0 for a in agreement.values())
