"""Tests of the integer network (``dfq_gpu.to_int8``).

The simulation computes with the integer network's arithmetic (``dfq_gpu.quant.requant``), so
the integer network (reference backend) must reproduce its outputs bit for bit.

* EfficientNet-Lite0: the integer reference and the Triton kernels (through Triton's interpreter
  on a CPU, see ``tests/conftest.py``) produce identical int8 activations and logits; on the
  160 ImageNet sample views the integer network's logits are the simulation's, bit for bit
  (top-1 agreement >= 99% and the same logit SQNR against FP32 within 1 dB are the acceptance
  bounds), at any batch size; every step, fed the simulation's own quantized inputs,
  reproduces the simulation's integers exactly.
* Fashion-MNIST: the integer network's logits on the 10k test images are the simulation's, bit
  for bit, also with per-channel weights, symmetric weights and activations and 4 bits; the
  ``FakeQuant`` after each integer step returns its input unchanged.
* ResNet-18/50, MobileNetV2 (random weights, randomized BN statistics) and EfficientNet-Lite1/2
  convert, run and agree with the simulation bit for bit; small networks cover per-channel and
  symmetric weights, symmetric and narrower activations, quantized outputs, max pooling,
  explicit padding, flattening of spatial maps and an activation on the float output.
* What cannot run in int8 raises :class:`Int8ConversionError` naming the node.
* ``torch.export`` traces the integer network; ``benchmarks/e2e.py --quick`` runs end to end.
"""

from __future__ import annotations

import copy
import re
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from dfq_gpu import DFQConfig, quantize, to_int8, zoo
from dfq_gpu.evaluate import sqnr_per_sample
from dfq_gpu.int8 import Int8ConversionError, Int8Network, compare_with_simulation
from dfq_gpu.int8 import layers as L
from dfq_gpu.graph import ops
from dfq_gpu.graph.trace import node_module
from dfq_gpu.modules import QAdd

ROOT = Path(__file__).resolve().parents[1]


# =============================================================================================
# Helpers
# =============================================================================================
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these tests run many small ops, which extra threads slow down
    (badly so on a shared CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, so that a randomly initialised network has
    non-trivial folded weights and activation ranges."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch: int) -> torch.Tensor:
    """``fn`` over ``x`` in batches (small ones: the integer reference's float64 temporaries of
    large batches cost more in memory traffic than they save)."""
    return torch.cat([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def check_steps(net: Int8Network, sim, x: torch.Tensor) -> None:
    """Each step, fed the simulation's quantized inputs, reproduces its integers exactly, and so
    does the integer network run freely (its output is the simulation's, bit for bit)."""
    res = compare_with_simulation(net, sim, x)
    assert res, "no step was compared"
    n_fq = sum(1 for n in sim.graph.nodes if n.op == "call_module" and "act_quant" in str(n.target))
    # a layer with a residual add fused into it does not materialize its own quantizer
    n_fq -= sum(1 for m in net.steps().values() if getattr(m, "layer_quantizer", ""))
    # nor does a stem convolution that quantizes the network input itself
    n_fq -= sum(1 for m in net.steps().values() if isinstance(m, L.Int8StemConv2d))
    assert len(res) == n_fq, (len(res), n_fq)
    for name, r in res.items():
        assert r.mismatches == 0 and r.max_abs_diff == 0, (name, r)
    free = compare_with_simulation(net, sim, x, teacher_forcing=False)
    assert all(r.mismatches == 0 for r in free.values()), {k: r for k, r in free.items() if r.mismatches}
    with torch.no_grad():
        assert torch.equal(sim(x), net(x))


def interpreter_or_cuda() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    from kernels._config import INTERPRETED

    return "cpu" if INTERPRETED else None


# =============================================================================================
# EfficientNet-Lite0 (pretrained) on the ImageNet sample
# =============================================================================================
@pytest.fixture(scope="module")
def lite0():
    from dfq_gpu.data import imagenet_sample

    model, pre = zoo.load_model("efficientnet_lite0")
    views = imagenet_sample(pre).tensors[0]
    sim = quantize(model, (views[:1],), DFQConfig(input_range=pre.input_range))
    net = to_int8(sim, backend="reference")
    return model, sim, net, views


def test_lite0_graph_is_integer(lite0):
    _, sim, net, _ = lite0
    kinds = {type(m).__name__ for m in net.steps().values()}
    # every residual add of Lite0 follows a 1x1 projection: computed in that convolution's epilogue;
    # the stem (behind its ZeroPad2d) quantizes the input itself
    assert kinds == {"Int8StemConv2d", "Int8Conv2d", "Int8DepthwiseConv2d", "Int8AvgPool", "Int8Linear"}
    assert list(net.coverage.stem) == [n.name for n in sim.graph.nodes if n.op == "placeholder"
                                       for n in n.users][:1]
    n_adds = sum(1 for n in sim.graph.nodes if ops.is_add(n) or isinstance(node_module(sim, n), QAdd))
    assert n_adds > 0 and len(net.coverage.fused) == n_adds
    assert sum(getattr(m, "residual", None) is not None for m in net.steps().values()) == n_adds
    n_layers = sum(1 for m in sim.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert sum(isinstance(m, (L.Int8Conv2d, L.Int8DepthwiseConv2d, L.Int8Linear)) for m in net.steps().values()) \
        == n_layers
    # EfficientNet's ZeroPad2d "same" padding is merged into the kernels: (top, bottom, left, right)
    assert net.steps()["_conv_stem"].padding == (0, 1, 0, 1)
    assert not any(isinstance(m, L.Int8Pad) for m in net.steps().values())
    # every activation between the input and the logits is int8
    x = lite0[3][:1]
    out, acts = net.activations(x)
    assert out.dtype == torch.float32 and out.shape == (1, 1000)
    assert len(acts) == len(net.steps()) - 1  # all but the float-output classifier
    assert acts["_conv_stem"].shape == (1, 112, 112, 32) and acts["_avg_pooling"].shape == (1, 1, 1, 1280)


def test_lite0_reference_and_triton_kernels_identical(lite0):
    """Every int8 activation and the logits, reference vs Triton (interpreter on a CPU: 2 images
    at 64x64, which Lite0's fixed paddings allow; the average pool adapts its multiplier)."""
    device = interpreter_or_cuda()
    if device is None:
        pytest.skip("needs CUDA or Triton's interpreter (TRITON_INTERPRET=1 before kernels is imported)")
    _, _, net, views = lite0
    net = copy.deepcopy(net).to(device)
    x = views[::80][:2]
    if device == "cpu":
        x = F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    x = x.to(device)
    net.backend = "triton"
    out_t, acts_t = net.activations(x)
    net.backend = "reference"
    with torch.backends.cudnn.flags(enabled=False):
        out_r, acts_r = net.activations(x)
    # 60 quantizers, less the outputs of the layers whose residual add is fused into them and the
    # input quantizer (computed by the stem)
    assert acts_t.keys() == acts_r.keys() and len(acts_r) == 60 - len(net.coverage.fused) - len(net.coverage.stem)
    for k in acts_r:
        assert torch.equal(acts_t[k], acts_r[k]), k
    assert torch.equal(out_t, out_r)
    assert len(torch.unique(acts_r["_avg_pooling"])) > 20  # not a saturated, trivial network


def test_lite0_agrees_with_simulation_on_imagenet_sample(lite0):
    """Top-1 agreement and logit SQNR on the 160 views: the integer network agrees with the
    simulation on >= 99% of the views and its SQNR against FP32 is the simulation's within 1 dB;
    in fact its logits are the simulation's, bit for bit, and the simulation's do not depend on
    the batch size (no float32 summation order is involved)."""
    model, sim, net, views = lite0
    assert views.shape[0] == 160
    fp = batched(model, views, 8)
    ys = batched(sim, views, 4)
    ys32 = batched(sim, views[:32], 32)  # one batch of 32
    yi = batched(net, views, 4)
    same = ys.argmax(1) == yi.argmax(1)
    agreement = same.float().mean().item()
    sq_sim = sqnr_per_sample(fp, ys).mean().item()
    sq_int = sqnr_per_sample(fp, yi).mean().item()
    msg = (f"top-1 agreement {agreement:.4f} ({int(same.sum())}/160), logits bit-identical: "
           f"{torch.equal(ys, yi)}, simulation at batch 32 == batch 4: {torch.equal(ys[:32], ys32)}; SQNR vs FP32: "
           f"simulation {sq_sim:.2f} dB, int8 {sq_int:.2f} dB")
    print(msg)
    assert agreement >= 0.99, msg
    assert abs(sq_int - sq_sim) <= 1.0, msg
    assert sq_int > 10.0, msg
    assert torch.equal(ys, yi), msg
    assert torch.equal(ys[:32], ys32), msg


def test_lite0_steps_reproduce_simulation_integers(lite0):
    _, sim, net, views = lite0
    check_steps(net, sim, views[::80][:2])


# =============================================================================================
# Fashion-MNIST (trained)
# =============================================================================================
@pytest.fixture(scope="module")
def fmnist():
    from dfq_gpu.data import fashion_mnist

    model, pre = zoo.load_model("fmnist_mobilenet")
    x, y = fashion_mnist("test").tensors
    sim = quantize(model, (x[:1],), DFQConfig(input_range=pre.input_range))
    return model, sim, to_int8(sim, backend="reference"), x, y


def test_fmnist_accuracy_matches_simulation(fmnist):
    """On the first quarter of the test set (2,500 images)."""
    _, sim, net, x, y = fmnist
    assert x.shape[0] == 10000
    x, y = x[:2500], y[:2500]
    ys, yi = batched(sim, x, 100), batched(net, x, 50)
    acc_sim = (ys.argmax(1) == y).float().mean().item()
    acc_int = (yi.argmax(1) == y).float().mean().item()
    print(f"Fashion-MNIST test accuracy: simulation {100 * acc_sim:.2f}%, int8 {100 * acc_int:.2f}%")
    assert abs(acc_int - acc_sim) <= 0.001
    assert acc_int > 0.85
    assert torch.equal(ys, yi)  # the logits of all 2,500 images, bit for bit


@pytest.mark.parametrize("cfg", [
    DFQConfig(weight_granularity="channel"),
    DFQConfig(weight_symmetric=True, act_symmetric=True),
    DFQConfig(weight_bits=4, act_bits=4),
], ids=["per-channel", "symmetric", "w4a4"])
def test_fmnist_variants_bit_identical(fmnist, cfg):
    model, _, _, x, _ = fmnist
    from dfq_gpu.data import fashion_mnist_preprocess

    sim = quantize(model, (x[:1],), cfg.replace(input_range=fashion_mnist_preprocess().input_range))
    net = to_int8(sim, backend="reference")
    xs = x[:300]
    with torch.no_grad():
        ys, yi = sim(xs), net(xs)
    assert torch.equal(ys, yi)
    check_steps(net, sim, xs[:16])


def test_fake_quant_after_integer_steps_is_exact_no_op(fmnist):
    """The output of an integer layer / add / pool (through its fused activation) is already on
    its quantizer's grid: the ``FakeQuant`` after it returns its input unchanged."""
    from dfq_gpu.graph.trace import node_module
    from dfq_gpu.modules import FakeQuant, QAdd, QAvgPool, QConv2d, QLinear

    _, sim, _, x, _ = fmnist
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    producers: dict[str, torch.Tensor] = {}

    class Rec(torch.fx.Interpreter):
        def run_node(self, n):
            res = super().run_node(n)
            m = node_module(sim, n)
            if isinstance(m, (QConv2d, QLinear, QAdd, QAvgPool)) and getattr(m, "integer_output", "quantized"):
                producers[n.name] = res
            if isinstance(m, FakeQuant) and n.args[0].op != "placeholder":
                src = n.args[0]
                src = src.args[0] if src.name not in producers else src  # through the fused activation
                if src.name in producers:
                    pairs.append((producers[src.name], res))
            return res

    with torch.no_grad():
        Rec(sim).run(x[:32])
    n_fq = sum(1 for m in sim.modules() if isinstance(m, FakeQuant))
    assert len(pairs) == n_fq - 1  # all but the input quantizer
    for before, after in pairs:
        assert torch.equal(before, after)


def test_fmnist_buffers_devices_export_and_compile(fmnist):
    _, sim, net, x, _ = fmnist
    conv = net.steps()["stem_0"]
    assert conv.weight.dtype == torch.int8 and conv.weight.shape == (16, 3, 3, 1)
    assert conv.bias.dtype == torch.int32 and conv.multiplier.dtype == torch.float32
    assert conv.lo.dtype == torch.int32 and conv.hi.dtype == torch.int32
    dw = net.steps()["blocks_0_conv_0_0"]
    assert isinstance(dw, L.Int8DepthwiseConv2d) and dw.weight.shape == (3, 3, 16)
    # ReLU6 after equalization is a per-channel clamp, fused as per-channel int32 bounds
    assert dw.lo.numel() == 16 and dw.hi.numel() == 16 and bool((dw.lo <= dw.hi).all())
    # every integer parameter is a buffer: .to() moves all of them
    moved = copy.deepcopy(net).to("meta")
    assert all(b.device.type == "meta" for b in moved.buffers())
    assert any(k.endswith("weight") for k in net.state_dict())
    # torch.export traces the custom ops
    xb = x[:2]
    ep = torch.export.export(net, (xb,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for op in ("quantize", "conv2d", "depthwise_conv2d", "gemm", "add", "avgpool"):
        assert f"dfq_int8.{op}.default" in targets, targets
    assert torch.equal(ep.module()(xb), net(xb))
    # torch.compile traces it as one graph
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    assert torch.equal(compiled(xb), net(xb))


def test_backend_attribute_and_default():
    net = to_int8(_small_sim(DFQConfig())[1])
    assert net.backend == "auto"
    assert all(m.backend == "auto" for m in net.steps().values())
    net.backend = "reference"
    assert all(m.backend == "reference" for m in net.steps().values())
    net.backend = None  # the kernels' process-wide default
    x = torch.randn(2, 3, 20, 20)
    with kernels.use_backend("reference"):
        y = net(x)
    assert y.shape == (2, 10)
    with pytest.raises(ValueError, match="backend"):
        net.backend = "fast"
    with pytest.raises(ValueError, match="backend"):
        to_int8(_small_sim(DFQConfig())[1], backend="cuda")


# =============================================================================================
# Other networks
# =============================================================================================
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite1", "efficientnet_lite2"])
def test_model_converts_and_agrees(name):
    model, pre = zoo.load_model(name)
    if not name.startswith("efficientnet"):
        randomize_bn(model)
    size = 32 if name == "resnet50" else 64
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)).clamp(*pre.input_range)
    sim = quantize(model, (x[:1],), DFQConfig(input_range=pre.input_range))
    net = to_int8(sim, backend="reference")
    with torch.no_grad():
        ys, yi = sim(x), net(x)
    assert yi.shape == ys.shape and yi.dtype == torch.float32
    check_steps(net, sim, x)
    sq = sqnr_per_sample(ys, yi).min().item()
    assert sq > 15.0, f"logit SQNR of int8 against the simulation: {sq:.1f} dB"
    kinds = {type(m).__name__ for m in net.steps().values()}
    if name.startswith("resnet"):
        assert "Int8MaxPool2d" in kinds and "Int8DepthwiseConv2d" not in kinds
    else:
        assert "Int8DepthwiseConv2d" in kinds


class SmallNet(nn.Module):
    """Explicit padding before a convolution and before a max pool, max pooling, depthwise and
    dense convolutions with ReLU / ReLU6 / Hardtanh, a residual add with ReLU, a flatten of a
    3x3 map and a ReLU on the float output."""

    def __init__(self) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.BatchNorm2d(8), nn.ReLU())
        self.pad2 = nn.ZeroPad2d(1)
        self.pool = nn.MaxPool2d(3, 2)
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.relu = nn.ReLU()
        self.conv2 = nn.Sequential(nn.Conv2d(8, 4, 3, 2, padding=1), nn.BatchNorm2d(4), nn.Hardtanh(-1.0, 1.5))
        self.fc = nn.Linear(4 * 3 * 3, 10)
        self.out_act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.pad2(self.conv1(self.pad(x))))
        h = self.relu(h + self.pw(self.dw(h)))
        h = self.conv2(h)
        return self.out_act(self.fc(torch.flatten(h, 1)))


def _small_sim(cfg: DFQConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = randomize_bn(SmallNet(), seed)
    x = torch.randn(4, 3, 20, 20, generator=torch.Generator().manual_seed(seed + 1))
    cfg = dataclasses.replace(cfg, input_range=(-2.5, 2.5)) if cfg.input_range is None else cfg
    return model, quantize(model, (x[:1],), cfg), x


@pytest.mark.parametrize("cfg", [
    DFQConfig(),
    DFQConfig(weight_granularity="channel", weight_symmetric=True),
    DFQConfig(act_symmetric=True, weight_granularity="channel"),
    DFQConfig(quantize_output=True),
    DFQConfig(weight_bits=4, act_bits=6),
    DFQConfig(equalize=False, bias_correction="none", relu6="keep"),
], ids=["default", "perchannel-sym", "act-sym", "quantized-output", "w4a6", "plain"])
def test_small_network_variants(cfg):
    model, sim, x = _small_sim(cfg)
    net = to_int8(sim, backend="reference")
    kinds = [type(m).__name__ for m in net.steps().values()]
    assert {"Int8MaxPool2d", "Int8Pad", "Int8DepthwiseConv2d"} <= set(kinds), kinds
    assert "Int8Add" not in kinds and len(net.coverage.fused) == 1  # the add is in the epilogue of pw (1x1)
    with torch.no_grad():
        ys, yi = sim(x), net(x)
    assert yi.shape == (4, 10)
    check_steps(net, sim, x)
    if cfg.quantize_output:
        assert "FloatClamp" not in kinds and kinds[-1] == "Dequantize"
    else:
        assert kinds[-1] == "FloatClamp"  # the ReLU after the last layer, in float
        assert bool((yi >= 0).all())
    sq = sqnr_per_sample(ys, yi).min().item()
    assert sq > 25.0, sq


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the names of the operators dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cfg", [DFQConfig(weight_granularity="channel"), DFQConfig(quantize_output=True)],
                         ids=["perchannel", "quantized-output"])
def test_triton_steps_launch_directly_and_follow_buffer_changes(cfg):
    """On the Triton path the steps launch the kernels directly (no ``dfq_int8`` dispatch, no
    per-call argument checks) from launch plans bound once per step; a plan is rebuilt when a
    buffer changes in place or is replaced, and is not copied with the network."""
    device = interpreter_or_cuda()
    if device is None:
        pytest.skip("needs CUDA or Triton's interpreter (TRITON_INTERPRET=1 before kernels is imported)")
    _, sim, x = _small_sim(cfg)
    ref_net = to_int8(sim, backend="reference").to(device)
    net = to_int8(sim, backend="triton").to(device)
    x = x.to(device)
    with torch.no_grad():
        with _OpLog() as log:
            y = net(x)
        assert not [op for op in log.ops if "dfq_int8" in op]
        with _OpLog() as log:
            y_ref = ref_net(x)
        assert {"dfq_int8.conv2d.default", "dfq_int8.depthwise_conv2d.default"} <= set(log.ops)
        assert torch.equal(y, y_ref)

        name = next(k for k, m in net.steps().items() if isinstance(m, L.Int8DepthwiseConv2d))
        dw, dw_ref = net.steps()[name], ref_net.steps()[name]
        plan = dw.__dict__["_plan"][1]
        assert torch.equal(net(x[:1]), ref_net(x[:1]))  # another batch size, same plan
        assert dw.__dict__["_plan"][1] is plan
        # in-place changes of the epilogue and weights reach the kernels
        for step in (dw, dw_ref):
            step.multiplier.mul_(0.5)
            step.weight.neg_()
        y2 = net(x)
        assert dw.__dict__["_plan"][1] is not plan
        assert torch.equal(y2, ref_net(x)) and not torch.equal(y2, y)
        # the other depthwise kernel gives the same network output
        from kernels._config import use_depthwise_variant

        with use_depthwise_variant("rows"):
            assert torch.equal(net(x), y2)
        # so does the TMA GEMM: the stem's im2col GEMM (K = 27 padded to 32) and the 1x1 layer
        # (8 input channels stored as 16: to_int8's channel padding) take it, the linear layer
        # (K = 36 after a flatten, which keeps rows as they are) keeps the pointer kernel
        from kernels import tiles

        with kernels.use_settings(gemm_variant="tma"), tiles.record_launches() as launches:
            assert torch.equal(net(x), y2)
        names = [rec[0] for rec in launches]
        assert names.count("int8_gemm_tma_kernel") == 2 and "int8_gemm_kernel" in names, names
        # copies carry no plan and run on their own buffers
        copied = copy.deepcopy(net)
        assert "_plan" not in copied.steps()[name].__dict__
        assert torch.equal(copied(x), y2)
        # the direct path checks its input like the ops do
        c = dw.weight.shape[2]
        with pytest.raises(ValueError, match=f"C={c + 1} channels"):
            dw(torch.zeros(1, 5, 5, c + 1, dtype=torch.int8, device=device))
        with pytest.raises(ValueError, match="dtype torch.int8"):
            dw(torch.zeros(1, 5, 5, c, dtype=torch.int32, device=device))


def test_per_channel_clamp_after_add(caplog):
    """A per-channel clamp after a residual add (bounds differing between channels) cannot go
    into the add kernel's per-tensor bounds: it follows as an exact integer clamp. (The clamp is
    swapped in after quantize: ``to_int8`` warns that the simulation's add is stale until
    ``make_integer_exact`` updates it.)"""
    from dfq_gpu.modules import ChannelClamp
    from dfq_gpu.quant.simulate import make_integer_exact, stale_integer_steps

    _, sim, x = _small_sim(DFQConfig())
    assert isinstance(sim.get_submodule("relu"), nn.ReLU)
    sim.add_submodule("relu", ChannelClamp(torch.linspace(-0.6, 0.2, 8), torch.linspace(0.3, 3.0, 8)))
    assert stale_integer_steps(sim) == ["add"]
    with caplog.at_level("WARNING", logger="dfq_gpu.int8.convert"):
        to_int8(sim, backend="reference")
    assert "no longer match" in caplog.text and "add" in caplog.text
    make_integer_exact(sim)
    assert stale_integer_steps(sim) == []
    net = to_int8(sim, backend="reference", fuse_residual=False)
    add = next(m for m in net.steps().values() if isinstance(m, L.Int8Add))
    assert add.clamp_lo is not None and add.clamp_lo.dtype == torch.int8 and len(set(add.clamp_lo.tolist())) > 1
    check_steps(net, sim, x)


def test_symmetric_weights_have_no_zero_point_and_asymmetric_ones_do():
    _, sim, _ = _small_sim(DFQConfig(weight_symmetric=True, weight_granularity="channel"))
    net = to_int8(sim)
    assert all(m.w_zp is None for m in net.steps().values() if hasattr(m, "w_zp"))
    _, sim, _ = _small_sim(DFQConfig())
    net = to_int8(sim, pad_channels=False)  # the simulation's weights as they are (no extra channels)
    conv = net.steps()["conv1_0"]
    assert conv.w_zp is not None and conv.w_zp.dtype == torch.int32
    q = sim.get_submodule("conv1.0").integer_weight()
    assert torch.equal(conv.weight.to(torch.int64), kernels.conv_weight_to_nhwc(q) - 128)


def test_input_zero_point_and_clamp_bounds_follow_the_quantizers():
    _, sim, _ = _small_sim(DFQConfig())
    net = to_int8(sim)
    fq = sim.get_submodule("act_quant_x")
    stem = net.steps()["conv1_0"]  # the input quantization fused into the first convolution
    assert isinstance(stem, L.Int8StemConv2d) and net.coverage.stem == {"act_quant_x": "conv1_0"}
    qin = stem.quantize
    assert stem.z_x == qin.zero_point
    assert qin.zero_point == int(fq.zero_point) - 128 and qin.scale == float(fq.scale)
    # ReLU after conv1: lower bound = output zero point; nothing clipped above
    conv = net.steps()["conv1_0"]
    assert int(conv.lo) == conv.z_y and int(conv.hi) == 127


# =============================================================================================
# What cannot run in int8
# =============================================================================================
class _Seq(nn.Module):
    def __init__(self, mid: nn.Module, mul: bool = False) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.mid = mid
        self.b = nn.Conv2d(8, 4, 1)
        self.mul = mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.a(x))
        if self.mul:
            h = h * 2.0
        return self.b(h).mean((2, 3))


def _sim_of(model: nn.Module, cfg: DFQConfig | None = None):
    randomize_bn(model)
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    return quantize(model, (x,), cfg or DFQConfig(input_range=(-3.0, 3.0)))


@pytest.mark.parametrize("model,pattern", [
    (_Seq(nn.Softmax(dim=1)), r"mid \(Softmax\).*no int8 kernel for Softmax"),
    (_Seq(nn.ReLU(), mul=True), r"mul.*no int8 kernel"),
    (nn.Sequential(nn.Conv2d(3, 8, 3, dilation=2, stride=2)), r"dilation \(2, 2\) with stride \(2, 2\)"),
], ids=["softmax", "float-op", "dilated"])
def test_unsupported_ops_raise_without_fallback(model, pattern):
    sim = _sim_of(model)
    with pytest.raises(Int8ConversionError, match=pattern):
        to_int8(sim, fallback=False)


def _check_fallback(sim, node: str, pattern: str, int8_fraction: float | None = None) -> None:
    """to_int8 runs ``node`` in float with a reason matching ``pattern``, bit-exact with the simulation."""
    net = to_int8(sim, backend="reference")
    assert net.coverage is not None
    assert re.search(pattern, net.coverage.float_nodes[node]), net.coverage.float_nodes
    if int8_fraction is not None:
        assert net.coverage.int8_mac_fraction == pytest.approx(int8_fraction)
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(net(x), sim(x))


@pytest.mark.parametrize("model,node,pattern", [
    (_Seq(nn.Softmax(dim=1)), "mid", r"no int8 kernel for Softmax"),
    (_Seq(nn.ReLU(), mul=True), "mul", r"no int8 kernel for mul"),
    (nn.Sequential(nn.Conv2d(3, 8, 3, dilation=2, stride=2)), "_0", r"dilation \(2, 2\) with stride"),
], ids=["softmax", "float-op", "dilated"])
def test_what_has_no_int8_step_runs_in_float(model, node, pattern):
    """Without an int8 step, an op runs in float between a dequantize and a quantize, as the
    simulation computes it (bit for bit), and the coverage report says why."""
    _check_fallback(_sim_of(model), node, pattern)


class _MobileOps(nn.Module):
    """The ops of MobileNetV3 / EfficientNet / ShuffleNet / RegNet / GoogLeNet that run in int8
    beyond convolutions, adds and pools: hardswish and SiLU tables, a squeeze-excitation gate, a
    grouped convolution, dilated convolutions (depthwise and dense), a ceil-mode max pool, a
    nearest upsampling and a slice, a windowed and an adaptive average pool, a cat of different
    quantizations, a channel shuffle, a chunk, a linear layer on tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 1),
                                nn.Hardsigmoid())
        self.grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, padding=(1, 3), dilation=(1, 3)), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.a = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4), nn.SiLU())
        self.avg = nn.AvgPool2d(3, 1, padding=1, count_include_pad=False)
        self.tok = nn.Linear(4, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x * self.se(x)
        x = self.pool(self.grouped(x))
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")[:, :, 1:-2, ::2]
        y = torch.cat([self.a(x), self.avg(self.b(x))], dim=1)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        y1, _ = y.chunk(2, dim=1)
        t = torch.sigmoid(self.tok(y1.flatten(2).transpose(1, 2)))  # tokens [B, H*W, 4] -> [B, H*W, 6]
        t = F.adaptive_avg_pool2d(t.transpose(1, 2).reshape(b, 6, h, w), (3, None))  # windows of 2 and 3 rows
        return self.head(t.mean((2, 3)))


def test_mobile_ops_run_in_int8_bit_exact(tmp_path):
    """Every op of _MobileOps runs in int8 (no float fallback), equal to the simulation bit for
    bit, on the integer reference and on the Triton kernels (interpreter or CUDA), also on inputs
    of another size than the traced one (the adaptive pool's windows follow it); the simulation
    saves and loads with its new modules."""
    model = _MobileOps()
    randomize_bn(model)
    x = torch.randn(4, 3, 13, 11, generator=torch.Generator().manual_seed(6))
    sim = quantize(model, (x[:2],), DFQConfig(input_range=(-3.0, 3.0)))
    kinds = {type(m).__name__ for m in sim.modules()}
    assert {"QLookup", "QMul", "QAvgPool2d", "QAdaptiveAvgPool2d"} <= kinds, kinds
    net = to_int8(sim, backend="reference")
    assert net.coverage is not None and net.coverage.float_nodes == {} and net.coverage.int8_mac_fraction == 1.0
    steps = {type(m).__name__ for m in net.steps().values()}
    assert {"Int8Lookup", "Int8Mul", "Int8GroupedConv2d", "Int8DilatedConv2d", "Int8Cat", "Int8MaxPool2d",
            "Int8UpsampleNearest", "Int8AvgPool2d", "Int8AdaptiveAvgPool2d", "Int8Linear"} <= steps, steps
    from dfq_gpu import load, save

    save(sim, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    with torch.no_grad():
        ref = sim(x)
        assert torch.equal(loaded(x), ref) and torch.equal(to_int8(loaded, backend="reference")(x), ref)
        assert torch.equal(net(x), ref)
        x2 = torch.randn(2, 3, 17, 9, generator=torch.Generator().manual_seed(7))
        ref2 = sim(x2)
        assert torch.equal(net(x2), ref2)
        device = interpreter_or_cuda()
        if device is not None:
            net.backend = "triton"
            assert torch.equal(net.to(device)(x.to(device)).cpu(), ref)
            assert torch.equal(net(x2.to(device)).cpu(), ref2)


class _PerChannelMaps(nn.Module):
    """Per-channel affine maps between quantizers: a pre-activation batch norm after a
    concatenation (DenseNet), a constant per-channel factor (ConvNeXt's layer scale) and a
    constant per-channel offset."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv = nn.Conv2d(8, 6, 1)
        self.layer_scale = nn.Parameter(torch.linspace(-2.0, 3.0, 6).view(6, 1, 1))
        self.register_buffer("offset", torch.linspace(-1.0, 1.0, 6).view(1, 6, 1, 1))
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))
        return self.head(y * self.layer_scale + self.offset)


def test_per_channel_maps_run_in_int8_by_per_channel_tables(tmp_path):
    """A batch norm left in the network and constant per-channel factors and offsets become
    QChannelAffine (one table per channel), run in int8 as one per-channel int8_lut each, equal
    to the simulation bit for bit (reference and Triton), and each table entry is the float map
    of its input value rounded to the output grid."""
    from dfq_gpu import load, save
    from dfq_gpu.modules import FakeQuant, QChannelAffine

    model = _PerChannelMaps().eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(8))
    sim = quantize(model, (x,), DFQConfig(input_range=(-3.0, 3.0)))
    maps = {n: m for n, m in sim.named_modules() if isinstance(m, QChannelAffine)}
    assert len(maps) == 3, list(maps)
    for m in maps.values():  # every input code of every channel against float64
        s_x, z_x = m.x[0], m.x[1]
        s_y, z_y = m.y[0], m.y[1]
        q = torch.arange(m.x_qmin, m.x_qmax + 1, dtype=torch.float64)
        v = (q - z_x) * s_x
        f = v[None, :] * m.scale.double()[:, None] + m.shift.double()[:, None]
        fq = FakeQuant(*m.y)
        lo, hi = (fq.qmin - z_y) * s_y, (fq.qmax - z_y) * s_y
        vals = m(v.float().view(1, 1, -1, 1).expand(1, m.channels, -1, 1).contiguous()).double()[0, :, :, 0]
        assert torch.all((vals - f.clamp(lo, hi)).abs() <= s_y / 2 + 1e-6 * (1 + f.abs())), m
    net = to_int8(sim, backend="reference", pad_channels=False)  # the tables as the simulation has them
    assert net.coverage is not None and net.coverage.float_nodes == {}, net.coverage.summary()
    tables = [m.table for m in net.steps().values() if isinstance(m, L.Int8Lookup) and m.table.dim() == 2]
    assert sorted(t.shape[0] for t in tables) == [6, 6, 8]
    save(sim, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    with torch.no_grad():
        ref = sim(x)
        assert torch.equal(net(x), ref) and torch.equal(loaded(x), ref)
        assert torch.equal(to_int8(loaded, backend="reference")(x), ref)
        device = interpreter_or_cuda()
        if device is not None:
            net.backend = "triton"
            assert torch.equal(net.to(device)(x.to(device)).cpu(), ref)
        assert (ref - model(x)).abs().max() < 0.1 * model(x).abs().max()


class _Segmenter(nn.Module):
    """The resamplings of segmentation models: an image-pooling branch brought back to the feature
    map's size (DeepLabV3's ASPP pooling, size from a shape at run time), a fixed factor
    (``nn.Upsample``, corners aligned) and the logits resampled to the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1),
                                 nn.ReLU())
        self.pool_branch = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(16, 5, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.enc(x)
        g = F.interpolate(self.pool_branch(F.adaptive_avg_pool2d(f, 1)), size=f.shape[-2:], mode="bilinear",
                          align_corners=False)
        y = self.up(self.head(torch.cat([f, g], 1)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_bilinear_resampling_runs_in_int8(tmp_path):
    """Bilinear resampling (sizes from shapes at run time, a fixed factor, corners aligned or not)
    is QUpsampleBilinear in the simulation and int8_upsample_bilinear in the int8 network, equal
    bit for bit (reference and Triton), saved and loaded; the last one, the float network
    output, runs in float by default and in int8 with quantize_output."""
    from dfq_gpu import load, save
    from dfq_gpu.modules import QUpsampleBilinear

    model = _Segmenter().eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 19, 23, generator=torch.Generator().manual_seed(9))
    sim = quantize(model, (x,), DFQConfig(input_range=(-3.0, 3.0)))
    assert sum(isinstance(m, QUpsampleBilinear) for m in sim.modules()) == 2
    net = to_int8(sim, backend="reference")
    assert list(net.coverage.float_nodes.values()) == ["its result is not quantized"], net.coverage.float_nodes
    with torch.no_grad():
        assert torch.equal(net(x), sim(x))
    sim = quantize(model, (x,), DFQConfig(input_range=(-3.0, 3.0), quantize_output=True))
    assert sum(isinstance(m, QUpsampleBilinear) for m in sim.modules()) == 3
    net = to_int8(sim, backend="reference")
    assert net.coverage.float_nodes == {}
    steps = [m for m in net.steps().values() if isinstance(m, L.Int8UpsampleBilinear)]
    assert len(steps) == 3 and {s.align_corners for s in steps} == {True, False}
    save(sim, tmp_path / "m.safetensors")
    loaded = load(tmp_path / "m.safetensors")
    x2 = torch.randn(1, 3, 26, 17, generator=torch.Generator().manual_seed(10))  # another size: shapes at run time
    with torch.no_grad():
        for inp in (x, x2):
            ref = sim(inp)
            assert ref.shape[-2:] == inp.shape[-2:]
            assert torch.equal(net(inp), ref) and torch.equal(loaded(inp), ref)
        assert (sim(x) - model(x)).abs().max() < 0.1 * model(x).abs().max()
        device = interpreter_or_cuda()
        if device is not None:
            net.backend = "triton"
            assert torch.equal(net.to(device)(x.to(device)).cpu(), sim(x))


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "regnet_y_400mf"])
def test_torchvision_models_run_entirely_in_int8(name):
    """Hardswish/SE (MobileNetV3), channel shuffle (ShuffleNetV2), grouped convolutions with
    SE (RegNetY): every op in int8, equal to the simulation bit for bit (random weights and BN
    statistics; scripts/coverage.py runs all of torchvision's classification models)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10).eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    sim = quantize(model, (x,))
    net = to_int8(sim, backend="reference")
    assert net.coverage is not None and net.coverage.float_nodes == {}, net.coverage.summary()
    with torch.no_grad():
        assert torch.equal(net(x), sim(x))


def test_configurations_that_cannot_run_in_int8():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with pytest.raises(Int8ConversionError, match="act_bits=None"):
        to_int8(_sim_of(copy.deepcopy(model), DFQConfig(act_bits=None)))
    cfg = dict(input_range=(-3.0, 3.0))
    with pytest.raises(Int8ConversionError, match="12 bits"):
        to_int8(_sim_of(copy.deepcopy(model), DFQConfig(weight_bits=12, **cfg)), fallback=False)
    with pytest.raises(Int8ConversionError, match="10 bits"):
        to_int8(_sim_of(copy.deepcopy(model), DFQConfig(act_bits=10, **cfg)), fallback=False)
    with pytest.raises(Int8ConversionError, match="left in float"):
        to_int8(_sim_of(copy.deepcopy(model), DFQConfig(skip_layers=("2",), **cfg)), fallback=False)
    # with the float fallback (the default) these run, the layers concerned in float
    macs0 = 10 * 10 * 8 * 27  # per image: 10x10 outputs, 8 channels, 3x3x3 taps
    macs2 = 10 * 10 * 4 * 8
    _check_fallback(_sim_of(copy.deepcopy(model), DFQConfig(weight_bits=12, **cfg)), "_0", "12 bits", 0.0)
    _check_fallback(_sim_of(copy.deepcopy(model), DFQConfig(skip_layers=("2",), **cfg)), "_2", "left in float",
                    macs0 / (macs0 + macs2))
    sim = _sim_of(copy.deepcopy(model))
    next(m for m in sim.modules() if type(m).__name__ == "FakeQuant").enabled = False
    with pytest.raises(Int8ConversionError, match="disabled"):
        to_int8(sim, fallback=False)
    with pytest.raises(Int8ConversionError, match="GraphModule"):
        to_int8(model)
    assert issubclass(Int8ConversionError, ValueError)
    # weights changed after quantize, off their grid by a third of a step
    sim = _sim_of(copy.deepcopy(model), DFQConfig(**cfg))
    conv = next(m for m in sim.modules() if isinstance(m, nn.Conv2d))
    to_int8(sim, fallback=False)  # the integer weights are cached by now
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] += conv.w_scale.reshape(-1)[0] / 3
    with pytest.raises(Int8ConversionError, match="not on their quantization grid"):
        to_int8(sim, fallback=False)


# =============================================================================================
# End-to-end benchmark, quick mode
# =============================================================================================
def test_e2e_benchmark_quick(tmp_path):
    out = tmp_path / "e2e.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--quick", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["schema"] == "dfq_int8-e2e-bench/1" and rep["mode"] == "quick" and rep["complete"] is True
    assert rep["int8_backend"] == "reference" and set(rep["models"]) == {"efficientnet_lite0", "resnet50"}
    for name, entry in rep["models"].items():
        assert entry["int8_steps"] > 20 and entry["quantize_s"] > 0
        assert set(entry["results"]) == {"1", "2"}
        for batch, res in entry["results"].items():
            assert res["int8"]["images_per_s"] > 0, (name, batch, res["int8"])
            assert res["fp32_eager"]["images_per_s"] > 0
            assert res["speedup_vs_fp32_eager"] > 0
            assert "skipped" in res["fp16_compile"]["error"]
            assert {"speedup_vs_fp16_eager", "speedup_vs_fp16_compile", "speedup_vs_fp16_eager_no_graphs"} <= set(res)
        prof = entry["step_profile"]
        assert prof["batch"] == 2 and prof["steps"] == entry["int8_steps"]
        kind_ms = sum(k["ms"] for k in prof["by_kind"].values())
        assert abs(kind_ms - prof["total_ms"]) < 1e-6 * max(1.0, prof["total_ms"])
        assert sum(k["steps"] for k in prof["by_kind"].values()) == prof["steps"]
        # (no Int8Add where every residual add is fused into the convolution producing an operand)
        assert {"Int8StemConv2d", "Int8Conv2d"} <= set(prof["by_kind"])
        slow = prof["slowest"]
        assert slow and all(a["ms"] >= b["ms"] for a, b in zip(slow, slow[1:]))
        assert all(r["out"] is not None and r["in"] for r in slow)
        # the profile's sum against the whole network; the fp16 baseline's folded batch norms
        assert prof["network_ms"] > 0 and prof["sum_over_network"] > 0 and len(prof["layer_tiles"]) == prof["steps"]
        assert entry["bn_fold"]["bn_folded"] > 10 and entry["bn_fold"]["max_abs_diff_fp32"] < 1e-2
        assert entry["results"]["2"]["fp16_eager"]["bn_folded"] == entry["bn_fold"]["bn_folded"]
    assert rep["int8_kernel_settings"]["autotune"] is False and rep["int8_kernel_settings"]["tile_table"] is True
    # without --out, a quick run never writes over committed results
    import importlib.util

    spec = importlib.util.spec_from_file_location("_e2e_bench_out", ROOT / "benchmarks" / "e2e.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    assert not e2e.default_out(True).resolve().is_relative_to(ROOT)


# =============================================================================================
# Network tails and inputs of other kinds
# =============================================================================================
class TailNet(nn.Module):
    """Endings where the float output comes from an add, an average, a convolution (a float NCHW
    map), and a global max pool followed by a 1x1 convolution and a ``view``."""

    def __init__(self, tail: str) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.c = nn.Conv2d(8, 6, 1)
        self.gmax = nn.AdaptiveMaxPool2d(1)
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.tail == "add":
            return self.b(h) + h
        if self.tail == "mean":
            return self.b(h).mean((2, 3))
        if self.tail == "conv":
            return self.c(F.max_pool2d(h, 2))
        g = self.gmax(self.b(h))
        return self.c(g).view(g.shape[0], -1)


@pytest.mark.parametrize("tail,step", [("add", "FloatAdd"), ("mean", "FloatAvgPool"), ("conv", "Int8MaxPool2d"),
                                       ("gmax", "Int8GlobalMaxPool")])
def test_network_tails(tail, step):
    torch.manual_seed(0)
    model = randomize_bn(TailNet(tail))
    x = torch.randn(3, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    sim = quantize(model, (x[:1],), DFQConfig(input_range=(-3.0, 3.0)))
    net = to_int8(sim, backend="reference")
    assert step in {type(m).__name__ for m in net.steps().values()}
    with torch.no_grad():
        ys, yi = sim(x), net(x)
    assert yi.shape == ys.shape and yi.dtype == torch.float32
    check_steps(net, sim, x)
    assert sqnr_per_sample(ys, yi).min().item() > 30.0


def test_fully_connected_network():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU6(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    sim = quantize(model, (x[:1],), DFQConfig(input_range=(-3.0, 3.0)))
    net = to_int8(sim, backend="reference")
    assert [type(m).__name__ for m in net.steps().values()] == ["QuantizeInput"] + ["Int8Linear"] * 3
    with torch.no_grad():
        ys, yi = sim(x), net(x)
    check_steps(net, sim, x)
    assert sqnr_per_sample(ys, yi).min().item() > 30.0


def test_tokens_flatten_into_a_linear_layer():
    """``[B, L, C]`` int8 tokens flattened to ``[B, L * C]`` for a linear layer: the codes are
    reshaped (only a 4-D NHWC map flattens by a permutation of its own)."""
    torch.manual_seed(0)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.tok, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 6), nn.Linear(9 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = F.relu(self.tok(self.c(x).flatten(2).transpose(1, 2)))
            return self.fc(t.flatten(1))

    x = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    sim = quantize(Tokens().eval(), (x[:1],), DFQConfig(input_range=(-3.0, 3.0)))
    net = to_int8(sim, backend="reference", fallback=False)
    with torch.no_grad():
        assert torch.equal(net(x), sim(x))
    check_steps(net, sim, x)


def test_depthwise_with_a_huge_integer_bias_stays_exact():
    """A depthwise layer whose integer bias exceeds float32's exact range takes the float64 path
    (it cannot be split along input channels) and still matches the integer network bit for bit."""
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        model[2].bias.fill_(1e4)
    x = torch.randn(4, 3, 8, 8)
    q = quantize(model, (x,), DFQConfig(equalize=False, absorb_bias=False))
    net = to_int8(q, backend="reference")
    with torch.no_grad():
        assert torch.equal(q(x), net(x))


def test_host_overhead_benchmark(tmp_path):
    """The host-overhead benchmark stubs every kernel launch of the network (one per step of
    Lite0 and ResNet-50, two for the stem: its im2col kernel and the GEMM; none runs through the
    interpreter unnoticed) and reports the time."""
    out = tmp_path / "host.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"), "--image-size", "64",
                           "--repeats", "3", "--label", "test", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["schema"] == "dfq_int8-host-overhead/1" and rep["label"] == "test"
    assert set(rep["models"]) == {"efficientnet_lite0", "resnet50"}
    for name, res in rep["models"].items():
        assert res["launches"] == res["steps"] + 1 > 50, (name, res)
        assert 0 < res["us_per_step"] < 1e4


# =============================================================================================
# CUDA-graph replay (the capture itself is torch's; a CPU stand-in records and replays here)
# =============================================================================================
def _cpu_capture(fn, warmup):
    """Stand-in for ``cuda_capture``: the "graph" re-runs the call and writes the static output
    in place, as a replayed CUDA graph does."""
    for _ in range(warmup):
        fn()
    out = fn()

    def replay():
        out.copy_(fn())

    return replay, out


def test_graphed_network_replays_per_shape_and_recaptures_on_changes():
    """On a CPU the capture is a stand-in (re-run and copy into the static output); on a CUDA
    machine the same checks run with real CUDA graphs of the Triton network."""
    from dfq_gpu.int8 import GraphedNetwork

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    _, sim, x = _small_sim(DFQConfig(weight_granularity="channel"))
    net = to_int8(sim, backend="auto" if cuda else "reference").to(device)
    x = x.to(device)
    g = GraphedNetwork(net, max_graphs=2, capture=None if cuda else _cpu_capture)
    with torch.no_grad():
        y4 = g(x)
        assert g.captures == 1 and torch.equal(y4, net(x))
        x_other = x.flip(0)
        assert torch.equal(g(x_other), net(x_other)) and g.captures == 1  # replay with new values
        y1 = g(x[:1])
        assert g.captures == 2 and torch.equal(y1, net(x[:1]))
        # outputs are copies unless asked otherwise
        a, b = g(x), g(x)
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
        # an in-place change of a buffer invalidates the graphs that saw the old values
        step = next(m for m in net.steps().values() if isinstance(m, L.Int8DepthwiseConv2d))
        step.multiplier.mul_(0.5)
        y_changed = g(x)
        assert g.captures == 3 and torch.equal(y_changed, net(x)) and not torch.equal(y_changed, y4)
        # so does a backend change
        net.backend = "triton" if cuda else "auto"
        g(x)
        assert g.captures == 4
        # least recently used shapes are dropped beyond max_graphs
        g(x[:2])
        g(x[:3])
        assert g.captures == 6 and len(g._graphs) == 2
        g(x[:3])
        assert g.captures == 6
        g(x)
        assert g.captures == 7
        # without copies the static buffer is returned (overwritten by the next call)
        g2 = GraphedNetwork(net, clone_output=False, capture=None if cuda else _cpu_capture)
        o1 = g2(x)
        o2 = g2(x.flip(0))
        assert o1 is o2 and torch.equal(o2, net(x.flip(0)))
        # CPU tensors without a capture function run the network as it is
        cpu_net = to_int8(sim, backend="reference")
        plain = GraphedNetwork(cpu_net)
        assert torch.equal(plain(x.cpu()), cpu_net(x.cpu())) and plain.captures == 0
    # the end-to-end benchmark's check of the runner (on a CPU: no graphs, the network as it is)
    import importlib.util

    spec = importlib.util.spec_from_file_location("_e2e_bench", ROOT / "benchmarks" / "e2e.py")
    e2e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e2e)
    res = e2e.time_graphed_network(e2e.Clock(cuda=False, quick=True), net, x)
    assert res["graphed_network_equal"] is True and res["graphed_network_ms"] > 0, res
    # and its run of the other depthwise kernel (through the interpreter on a CPU)
    if interpreter_or_cuda() is not None:
        net_t = to_int8(sim, backend="triton").to(device)
        res = e2e.time_other_depthwise_variant(e2e.Clock(cuda=cuda, quick=True), net_t, x)
        assert set(res) == {f"int8_dw_{v}" for v in kernels.settings.DEPTHWISE_VARIANTS
                            if v != kernels.current_settings().depthwise_variant}
        for other in res.values():
            assert other["equal_to_default"] is True and other["ms"] > 0 and other.get("error") is None, other
        # and of the other GEMM kernel (the stem's GEMM takes the TMA one)
        (name, other), = e2e.time_other_gemm_variant(e2e.Clock(cuda=cuda, quick=True), net_t, x).items()
        assert name in ("int8_gemm_tma", "int8_gemm_pointers") and other["equal_to_default"] is True, other
        assert other["ms"] > 0 and other.get("error") is None
    with pytest.raises(ValueError, match="max_graphs"):
        GraphedNetwork(net, max_graphs=0)
    with pytest.raises(ValueError, match="warmup"):
        GraphedNetwork(net, warmup=0)
    with pytest.raises(ValueError, match="one tensor input"):
        g([x])


def test_graphed_network_recaptures_when_a_kernel_setting_changes():
    """A graph holds the kernels its capture launched: any change of the kernel settings (the
    depthwise variant, a forced tile, autotuning, the default backend) captures again, and calls
    under unchanged settings (also re-entered with the same values) replay."""
    from dfq_gpu.int8 import GraphedNetwork
    from kernels import _config

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    _, sim, x = _small_sim(DFQConfig(weight_granularity="channel"))
    net = to_int8(sim, backend="reference" if interpreter_or_cuda() is None else "triton").to(device)
    x = x[:1].to(device)
    start = kernels.current_settings()
    other = "rows" if start.depthwise_variant == "tiles" else "tiles"
    tile = _config.GPU_CONFIGS["depthwise"][-1]
    g = GraphedNetwork(net, warmup=1, capture=None if cuda else _cpu_capture)
    with torch.no_grad():
        expected = net(x)
        assert torch.equal(g(x), expected) and g.captures == 1
        g(x)
        with kernels.use_settings(depthwise_variant=start.depthwise_variant, autotune=start.autotune):
            assert torch.equal(g(x), expected)
        with kernels.use_settings(start):
            g(x)
        assert g.captures == 1  # nothing changed: replays
        with _config.use_depthwise_variant(other):
            assert torch.equal(g(x), expected) and g.captures == 2
            g(x)
            assert g.captures == 2
        g(x)  # back to the first settings: the graph of the other variant is not replayed
        assert g.captures == 3
        with _config.forced_config("depthwise", tile):
            assert torch.equal(g(x), expected) and g.captures == 4
            g(x)
            assert g.captures == 4
            with _config.forced_config("depthwise", tile):  # the same tile again: no change
                g(x)
            assert g.captures == 4
        g(x)
        assert g.captures == 5
        with kernels.use_settings(autotune=not start.autotune):
            g(x)
            assert g.captures == 6
        with kernels.use_backend("reference" if start.backend != "reference" else "auto"):
            g(x)
            assert g.captures == 7
        assert torch.equal(g(x), expected) and g.captures == 8
        assert kernels.current_settings() == start


# =============================================================================================
# Residual adds fused into the 1x1 convolution or linear layer producing an operand
# =============================================================================================
class _ResidualNet(nn.Module):
    """Residual adds that fuse into the layer producing an operand: an inverted bottleneck whose
    1x1 projection is the add's second operand (a per-channel clamp after the add, swapped in by
    :func:`_residual_sim`), a block whose 1x1 convolution is the first operand (ReLU after the
    add), and a linear layer on pooled features; and a 1x1 convolution whose output two adds use
    (not fused)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU6(),
                                nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),
                                nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.act1 = nn.ReLU()
        self.b2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                                nn.BatchNorm2d(8))
        self.act2 = nn.ReLU()
        self.pw3 = nn.Conv2d(8, 8, 1)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = self.act1(h + self.b1(h))
        h = self.act2(self.b2(h) + h)
        p = self.pw3(h)
        h = (p + h) + p
        g = h.mean((2, 3))
        g = g + self.fc1(g)
        return self.fc2(g)


#: The adds of _ResidualNet that fuse, and the layer each fuses into.
_FUSED = {"add": "b1_6", "add_1": "b2_3", "add_4": "fc1"}


@pytest.fixture(scope="module")
def residual_sim():
    from dfq_gpu.modules import ChannelClamp
    from dfq_gpu.quant.simulate import make_integer_exact

    torch.manual_seed(0)
    model = randomize_bn(_ResidualNet())
    x = torch.randn(4, 3, 10, 9, generator=torch.Generator().manual_seed(11))
    sim = quantize(model, (x[:1],), DFQConfig(input_range=(-3.0, 3.0)))
    assert isinstance(sim.get_submodule("act1"), nn.ReLU)
    sim.add_submodule("act1", ChannelClamp(torch.linspace(-0.5, 0.1, 8), torch.linspace(0.4, 3.0, 8)))
    make_integer_exact(sim)
    return sim, x


def test_residual_adds_fuse_into_the_producing_layer(residual_sim):
    """By default each add that :func:`residual_fusions` selects becomes part of the
    step of the 1x1 convolution or linear layer producing an operand (a GEMM with the add in its
    epilogue on the Triton path); a layer output with two users is not fused. The network equals
    the simulation and the unfused network bit for bit, on the integer reference, step by step,
    under ``torch.compile`` (custom ops: the layer, then the add) and on the Triton kernels (one
    fused GEMM launch per step, interpreter or CUDA); the coverage report is unchanged but for
    the fused adds it lists."""
    from dfq_gpu.int8 import GraphedNetwork
    from dfq_gpu.quant.plan import ResidualFusion, build_plan, residual_fusions

    sim, x = residual_sim
    fusions = residual_fusions(sim, build_plan(sim))
    assert {a: f.layer for a, f in fusions.items()} == _FUSED
    assert fusions["add"] == ResidualFusion("add", "b1_6", 1) and fusions["add_1"].operand == 0
    plain = to_int8(sim, backend="reference", fuse_residual=False)
    net = to_int8(sim, backend="reference")
    steps = net.steps()
    fused = {k: m for k, m in steps.items() if getattr(m, "residual", None) is not None}
    assert set(fused) == set(_FUSED.values()) and not set(_FUSED) & set(steps)
    assert isinstance(fused["fc1"], L.Int8Linear) and isinstance(fused["b2_3"], L.Int8Conv2d)
    assert steps["pw3"].residual is None  # its output is an operand of two adds
    assert sum(isinstance(m, L.Int8Add) for m in steps.values()) == 2
    assert sum(isinstance(m, L.Int8Add) for m in plain.steps().values()) == 5
    assert len(steps) == len(plain.steps()) - 3
    # the per-channel clamp after the first add follows the fused step
    assert fused["b1_6"].clamp_lo is not None and fused["b2_3"].clamp_lo is None
    for add, layer in _FUSED.items():
        assert fused[layer].sim_quantizer == plain.steps()[add].sim_quantizer
        assert fused[layer].layer_quantizer == plain.steps()[layer].sim_quantizer
    cov, cov0 = net.coverage, plain.coverage
    assert cov.fused == _FUSED and cov0.fused == {} and "3 residual adds fused" in cov.summary()
    assert cov.placement == cov0.placement and cov.float_nodes == {}
    assert (cov.macs_int8, cov.macs_total) == (cov0.macs_int8, cov0.macs_total) and cov.int8_mac_fraction == 1.0
    with torch.no_grad():
        ref = sim(x)
        assert torch.equal(plain(x), ref) and torch.equal(net(x), ref)
        check_steps(net, sim, x)
        torch._dynamo.reset()
        assert torch.equal(torch.compile(net, backend="eager", fullgraph=True)(x), ref)
        g = GraphedNetwork(net, capture=_cpu_capture)
        assert torch.equal(g(x), ref) and torch.equal(g(x.flip(0)), sim(x.flip(0)))
        device = interpreter_or_cuda()
        if device is not None:
            net_t = to_int8(sim, backend="triton").to(device)
            with _OpLog() as log:
                y = net_t(x.to(device))
            assert not [op for op in log.ops if "dfq_int8" in op]
            assert torch.equal(y.cpu(), ref)
            for layer in _FUSED.values():
                plan = net_t.steps()[layer].__dict__["_plan"][1]
                kind = "GemmPlan" if layer == "fc1" else "ConvPlan"  # a 1x1 ConvPlan hands it to its GemmPlan
                assert type(plan).__name__ == kind and plan.residual == fused[layer].residual
                if kind == "ConvPlan":
                    assert plan.gemm is not None and plan.gemm.residual == plan.residual
            _, acts = net_t.activations(x.to(device))
            _, acts_r = net.activations(x)
            assert acts.keys() == acts_r.keys() and all(torch.equal(acts[k].cpu(), acts_r[k]) for k in acts)


def test_fused_residual_network_saves_loads_and_falls_back(residual_sim, tmp_path, monkeypatch):
    """A saved and loaded simulation converts to the same fused network (same outputs); a fused
    add that cannot be converted after all runs in float behind its layer's own step, still
    equal to the simulation."""
    from dfq_gpu import load, save
    from dfq_gpu.int8 import convert

    sim, x = residual_sim
    save(sim, tmp_path / "r.safetensors")
    loaded = load(tmp_path / "r.safetensors")
    net = to_int8(loaded, backend="reference")
    assert net.coverage.fused == _FUSED
    with torch.no_grad():
        ref = sim(x)
        assert torch.equal(loaded(x), ref) and torch.equal(net(x), ref)
    real = convert._Converter.add_epilogue

    def refuse(self, p):
        if p.name == "add_1":
            raise self.err(p.node, "refused for the test")
        return real(self, p)

    monkeypatch.setattr(convert._Converter, "add_epilogue", refuse)
    net = to_int8(sim, backend="reference")
    assert net.coverage.float_nodes == {"add_1": "refused for the test", "act2": "its input is computed in float"}
    assert net.coverage.fused == {k: v for k, v in _FUSED.items() if k != "add_1"}
    assert net.steps()["b2_3"].residual is None  # the layer's own step, emitted when the add needed it
    with torch.no_grad():
        assert torch.equal(net(x), ref)


class _BasicBlocks(nn.Module):
    """ResNet-18/34 basic blocks, whose add follows a 3x3 convolution: one with the identity
    (the stepped tap-major loop, padding with z_x != 0), one downsampling (a stride-2 3x3
    convolution, the add's first operand, and a stride-2 1x1 one as the other), and a 3x3
    convolution behind a ``ZeroPad2d`` (merged into its padding) on 8 channels (flat K)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.b = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                               nn.Conv2d(24, 24, 3, padding=1), nn.BatchNorm2d(24))
        self.down = nn.Sequential(nn.Conv2d(16, 24, 1, stride=2), nn.BatchNorm2d(24))
        self.narrow = nn.Conv2d(24, 8, 1)
        self.c = nn.Sequential(nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(8, 8, 2))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(self.a(h) + h)
        h = torch.relu(self.b(h) + self.down(h))
        h = torch.relu(self.narrow(h))
        h = self.c(h) + h
        return self.fc(h.mean((2, 3)))


def test_residual_adds_fuse_into_a_3x3_convolution():
    """The adds of basic blocks fuse into the 3x3 convolution producing an operand (any stride,
    padding, a merged ``ZeroPad2d``): equal to the simulation and the unfused network on the
    integer reference and on the Triton kernels (one fused ``ConvPlan`` launch per step, each
    loop of the convolution kernel: stepped, and flat K for 8 channels)."""
    from dfq_gpu.quant.plan import build_plan, residual_fusions

    torch.manual_seed(1)
    model = randomize_bn(_BasicBlocks())
    x = torch.randn(2, 3, 9, 8, generator=torch.Generator().manual_seed(5))
    sim = quantize(model, (x[:1],), DFQConfig(input_range=(-3.0, 3.0)))
    fusions = residual_fusions(sim, build_plan(sim))
    assert sorted((f.layer, f.operand) for f in fusions.values()) == [("a_3", 0), ("b_3", 0), ("c_1", 0)]
    plain = to_int8(sim, backend="reference", fuse_residual=False)
    net = to_int8(sim, backend="reference")
    steps = net.steps()
    fused = {k: m for k, m in steps.items() if getattr(m, "residual", None) is not None}
    assert set(fused) == {"a_3", "b_3", "c_1"} and all(isinstance(m, L.Int8Conv2d) for m in fused.values())
    assert fused["c_1"].padding == (1, 0, 1, 0) and fused["b_3"].weight.shape[1:3] == (3, 3)
    assert not any(isinstance(m, L.Int8Add) for m in steps.values()) and len(net.coverage.fused) == 3
    with torch.no_grad():
        ref = sim(x)
        assert torch.equal(plain(x), ref) and torch.equal(net(x), ref)
        device = interpreter_or_cuda()
        if device is not None:
            net_t = to_int8(sim, backend="triton").to(device)
            with _OpLog() as log:
                y = net_t(x.to(device))
            assert not [op for op in log.ops if "dfq_int8" in op]
            assert torch.equal(y.cpu(), ref)
            for layer, m in fused.items():
                plan = net_t.steps()[layer].__dict__["_plan"][1]
                assert type(plan).__name__ == "ConvPlan" and plan.gemm is None and plan.residual == m.residual


def test_whole_network_survives_torch_save_and_load(tmp_path):
    """``torch.save(net)`` / ``torch.load``: the GraphModule is stored as code and traced again on
    loading; the layout helpers it calls (which branch on shapes) stay calls, the fused steps
    (stem, residual) keep their inputs, and the loaded network computes the same integers."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
            self.conv = nn.Conv2d(8, 8, 3, 1, 1)
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            y = torch.relu(y + self.conv(y))
            return self.fc(torch.flatten(y, 1).reshape(x.size(0), -1))

    x = torch.randn(2, 3, 8, 8)
    net = to_int8(quantize(Net().eval(), (x[:1],)), backend="reference")
    assert net.coverage.stem and net.coverage.fused
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert [type(m).__name__ for m in loaded.steps().values()] == [type(m).__name__ for m in net.steps().values()]


def test_whole_network_refuses_dtype_casts():
    """The float32 multipliers and scales are part of the integer contract: a floating dtype cast
    of the network is refused with a clear error (a move is not), and ``.type()`` (which would
    cast the int8 weights too) as well."""
    from dfq_gpu import DFQError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.randn(2, 3, 6, 6)
    net = to_int8(quantize(model, (x[:1],)), backend="reference")
    y = net(x)
    for cast in (lambda n: n.half(), lambda n: n.bfloat16(), lambda n: n.double(), lambda n: n.to(torch.float16),
                 lambda n: n.to("cpu", torch.bfloat16), lambda n: n.to(dtype=torch.float64),
                 lambda n: n.to(x.half())):
        with pytest.raises(DFQError, match="cannot be cast to torch"):
            cast(net)
    with pytest.raises(DFQError, match="integer weights"):
        net.type(torch.float32)
    assert net.to("cpu") is net and net.to(torch.float32) is net and net.float() is net
    assert torch.equal(net(x), y) and torch.equal(net(x.half()), net(x.half().float()))
