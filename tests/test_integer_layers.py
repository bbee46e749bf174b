"""Independent checks of the integer arithmetic of the simulation and of the int8 network.

The simulation (``dfq_gpu.quantize``) and the int8 network (``dfq_gpu.to_int8``) take their
integer parameters from the same file, :mod:`dfq_gpu.quant.requant`, so their bit-for-bit
agreement (``tests/test_int8.py``) says nothing about whether those parameters are right. The
tests here compare against computations written from the definitions alone:

1. Every quantized step of a small simulated network (input quantizer, dense 3x3 convolutions
   with padding at stride 1 and 2, a 1x1 convolution, a depthwise convolution, a linear layer
   with float and with quantized output, a residual add of two differently scaled operands,
   global average pooling over 3x5 = 15 positions with quantized and with float output, max
   pooling) is fed random values on its input grid, ``(q - z) * s`` with codes spread over
   all of ``[qmin, qmax]``, and its output compared with a float64 computation from the
   dequantized inputs and weights (``F.conv2d`` / ``F.linear`` / ``a + b`` /
   ``F.adaptive_avg_pool2d`` / ``F.max_pool2d``), followed by the graph's own activation module.
2. The functions of :mod:`dfq_gpu.quant.requant` against the formulas of its docstring,
   evaluated here in float64 (or exactly, with fractions) from hand-picked and random scales.
3. The steps of the int8 network (reference backend) for the residual add, the average pools
   and the max pool, fed int8 codes directly, against float64 computations from the
   dequantized codes (dequantized with the simulation's quantizers, not the steps' own
   parameters).

The bound of a requantized output (:func:`check_requantized`): with ``u`` the exact real
result in output steps (after the fused activation), the integer network returns
``clamp(rne(u'), lo_q - z, hi_q - z)`` where ``u'`` differs from ``u`` only by float32
rounding (of ``acc``: none, it is exact below 2^24; of the multiplier and of the product:
relative 2^-24 each; of the stored float32 bias: relative 2^-24 of ``|b| / s_y``) and, for adds,
by the rational approximation of the scale ratio. With ``delta`` bounding ``|u' - u|``, the
output must lie in ``[rne(u - delta), rne(u + delta)]`` clamped to the grid (rounding and clamping
are monotone and commute, and the quantized clamp bounds are the float bounds rounded the same
way). This is *exact rounding except within ``delta`` of a tie* and implies the half-step bound
``|y - y_ref| <= (0.5 + delta) s_y``, tighter than the one step the brief asks for. ``delta`` is
about 1e-4 steps for layers and pools, about ``2^-16 * 255 * s_max / s_y`` for adds.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from dfq_gpu import DFQConfig, prepare, quantize, to_int8
from dfq_gpu.int8 import layers as L
from dfq_gpu.modules import ChannelClamp, FakeQuant, QAdd, QAvgPool, QConv2d, QLinear
from dfq_gpu.quant import requant

#: float32 unit roundoff: round to nearest has a relative error of at most this.
U = 2.0**-24
#: the real-valued result of a layer, in output steps, is known to within this much (module
#: docstring): 2^-22 (multiplier and product rounding, with margin) times 2^9 (values further
#: than 2^9 steps from zero are clamped to a grid end either way), plus the float32 bias below.
LAYER_DELTA = 2.0**-22 * 2**9


# =============================================================================================
# The network
# =============================================================================================
class TinyNet(nn.Module):
    """Input 3x12x20 -> 3x3 conv (stride 1, padding 1) + Hardtanh(-1, 2) (nonzero output zero
    point) -> 2x2 max pool -> 3x3 conv (stride 2, padding 1) + ReLU -> 3x5 map; a residual block
    (depthwise 3x3 + ReLU6, 1x1 conv without activation: zero point ~128) added to it, ReLU;
    global average pool over 3x5; linear (``tail="fc"``) or the pool as the output
    (``tail="gap"``)."""

    def __init__(self, tail: str = "fc") -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardtanh(-1.0, 2.0))
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, 5)
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.pool(self.conv1(x)))
        h = self.relu(h + self.pw(self.dw(h)))
        g = h.mean((2, 3))
        return self.fc(g) if self.tail == "fc" else g


def _model(tail: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyNet(tail)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(c, generator=g) * 0.5)
    return model.eval()


EXAMPLE = torch.randn(1, 3, 12, 20, generator=torch.Generator().manual_seed(1))
CONFIGS = {
    # per-tensor asymmetric weights (nonzero weight zero points), float logits
    "tensor": ("fc", DFQConfig(input_range=(-2.5, 2.5))),
    # per-channel symmetric weights (per-channel multipliers), quantized logits
    "channel": ("fc", DFQConfig(input_range=(-2.5, 2.5), weight_granularity="channel", weight_symmetric=True,
                                quantize_output=True)),
    # the average pool is the float network output; no bias correction, so that the simulation's
    # biases are the prepared network's biases rounded onto the accumulator grid
    "gap": ("gap", DFQConfig(input_range=(-2.5, 2.5), bias_correction="none")),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: tiny tensors, and a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sims() -> dict[str, fx.GraphModule]:
    return {k: quantize(_model(tail), (EXAMPLE,), cfg) for k, (tail, cfg) in CONFIGS.items()}


# =============================================================================================
# Helpers
# =============================================================================================
def _node(gm: fx.GraphModule, name: str) -> fx.Node:
    for n in gm.graph.nodes:
        if n.name == name or (n.op == "call_module" and str(n.target) == name):
            return n
    raise KeyError(name)


def _mod(gm: fx.GraphModule, node: fx.Node):
    return gm.get_submodule(str(node.target)) if node.op == "call_module" else None


def input_fq(gm: fx.GraphModule, arg: fx.Node) -> FakeQuant:
    """The quantizer whose values ``arg`` carries: the FakeQuant itself, or one before max
    pooling (which moves values unchanged)."""
    while not isinstance(_mod(gm, arg), FakeQuant):
        assert isinstance(_mod(gm, arg), nn.MaxPool2d), f"unexpected op {arg.name} before a quantized step"
        arg = arg.args[0]
    return _mod(gm, arg)


def fused_chain(gm: fx.GraphModule, node: fx.Node) -> tuple[nn.Module | None, FakeQuant | None]:
    """The activation (clamp) and output quantizer that follow ``node`` in the graph, if any."""
    act = fq = None
    users = list(node.users)
    if len(users) == 1 and isinstance(_mod(gm, users[0]), (nn.ReLU, nn.ReLU6, nn.Hardtanh, ChannelClamp)):
        act = _mod(gm, users[0])
        users = list(users[0].users)
    if len(users) == 1 and isinstance(_mod(gm, users[0]), FakeQuant):
        fq = _mod(gm, users[0])
    return act, fq


def random_codes(fq: FakeQuant, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Integer codes (int64) on ``fq``'s grid: each sample spread around the zero point with its
    own width (all of ``[qmin, qmax]`` for a quarter of the samples, +-64, +-16, +-4 for the
    others), so that outputs land everywhere from the middle of the grid to the clamps; the
    first sample holds ``qmin`` and ``qmax``."""
    g = torch.Generator().manual_seed(seed)
    z = int(fq.zero_point)
    q = torch.empty(shape, dtype=torch.int64)
    for i in range(shape[0]):
        w = (None, 64, 16, 4)[i % 4]
        lo, hi = (fq.qmin, fq.qmax) if w is None else (max(fq.qmin, z - w), min(fq.qmax, z + w))
        q[i] = torch.randint(lo, hi + 1, shape[1:], generator=g)
    q.view(-1)[0], q.view(-1)[1] = fq.qmin, fq.qmax
    return q


def on_grid(q: torch.Tensor, fq: FakeQuant) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x32, x64)``: the values of codes ``q`` as the simulation holds them (float32
    ``(q - z) * s``, as FakeQuant dequantizes) and exactly (float64)."""
    z = int(fq.zero_point)
    x32 = (q - z).to(torch.float32) * fq.scale.to(torch.float32)
    x64 = (q - z).to(torch.float64) * float(fq.scale)
    return x32, x64


def output_codes(y: torch.Tensor, fq: FakeQuant) -> torch.Tensor:
    """The integers ``q - z`` of an output ``y`` that must lie on ``fq``'s grid (checked)."""
    k = y.to(torch.float64) / float(fq.scale)
    kr = torch.round(k)
    assert (k - kr).abs().max().item() < 1e-3, "output is not on the output quantizer's grid"
    return kr


def check_requantized(k: torch.Tensor, u: torch.Tensor, delta: float, fq: FakeQuant, what: str) -> float:
    """``k`` (integers ``q - z_y``) must be ``u`` (exact result in output steps, float64, after
    the activation) rounded to nearest and clamped to the grid, except within ``delta`` of a
    rounding tie: ``clamp(rne(u - delta)) <= k <= clamp(rne(u + delta))``. Also checks the
    implied ``|k - clamp(u)| <= 0.5 + delta``. Returns that largest distance (in steps)."""
    z = int(fq.zero_point)
    lo_k, hi_k = fq.qmin - z, fq.qmax - z
    assert k.shape == u.shape, (k.shape, u.shape)
    low = torch.round(u - delta).clamp(lo_k, hi_k)
    high = torch.round(u + delta).clamp(lo_k, hi_k)
    bad = (k < low) | (k > high)
    err = (k - u.clamp(lo_k, hi_k)).abs()
    worst = err.max().item()
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {k.numel()} outputs are not the exact result rounded "
                           f"to nearest (delta={delta:.3g} steps); largest error {worst:.4f} steps, e.g. got "
                           f"{k[bad][:5].tolist()} for exact {u[bad][:5].tolist()}")
    assert worst <= 0.5 + delta
    return worst


def exact_weights(m: QConv2d | QLinear) -> torch.Tensor:
    """The dequantized weights ``(q - z_w) * s_w`` in float64, the integers recovered here from
    the stored float32 weights (which hold them to within float32 rounding, checked)."""
    shape = [-1] + [1] * (m.weight.dim() - 1)
    s = m.w_scale.to(torch.float64).reshape(shape) if m.w_scale.numel() > 1 else m.w_scale.to(torch.float64).reshape(())
    w = m.weight.detach().to(torch.float64)
    n = torch.round(w / s)
    assert ((w / s) - n).abs().max().item() < 1e-4, "weights are not on their grid"
    return n * s


def float_reference(m: QConv2d | QLinear, x64: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(m, QConv2d):
        return F.conv2d(x64, w, b, m.stride, m.padding, m.dilation, m.groups)
    return F.linear(x64, w, b)


# =============================================================================================
# 1. The simulation's quantized steps against float64
# =============================================================================================
def test_input_quantizer_rounds_to_nearest(sims):
    """The network input's FakeQuant: ``clamp(rne(x / s) + z, qmin, qmax)`` computed in float64
    (it uses ``x * float32(1 / s)``: relative error <= 2^-23 of ``x / s``, so ``delta`` is
    2^-22 * max|x / s|), on values from 20% beyond both ends of the grid."""
    for key in ("tensor", "channel"):
        fq = _mod(sims[key], _node(sims[key], "act_quant_x"))
        assert isinstance(fq, FakeQuant) and int(fq.zero_point) != 0
        lo, hi = fq.float_range
        g = torch.Generator().manual_seed(3)
        x = (torch.rand(4000, generator=g, dtype=torch.float64) * 1.4 - 0.2) * (hi - lo) + lo
        x = x.to(torch.float32)
        with torch.no_grad():
            y = fq(x)
        u = x.to(torch.float64) / float(fq.scale)
        check_requantized(output_codes(y, fq), u, 2.0**-22 * u.abs().max().item(), fq, f"{key}: input quantizer")


LAYER_CASES = [
    ("tensor", "conv1.0", "3x3 conv, stride 1, padding 1, input zero point 128"),
    ("tensor", "conv2.0", "3x3 conv, stride 2, padding 1, input zero point from Hardtanh, after max pool"),
    ("tensor", "dw.0", "depthwise 3x3, ReLU6 as per-channel clamp"),
    ("tensor", "pw.0", "1x1 conv without activation (output zero point ~128)"),
    ("tensor", "fc", "linear, float output"),
    ("channel", "conv1.0", "per-channel symmetric weights"),
    ("channel", "conv2.0", "per-channel symmetric weights, stride 2"),
    ("channel", "dw.0", "per-channel depthwise"),
    ("channel", "pw.0", "per-channel 1x1"),
    ("channel", "fc", "linear, quantized output"),
]


@pytest.mark.parametrize("key,layer,what", LAYER_CASES, ids=[f"{k}-{n}" for k, n, _ in LAYER_CASES])
def test_layer_matches_float64(sims, key, layer, what):
    """A conv / depthwise / linear layer on its integer path, fed random values on its input
    grid, against ``F.conv2d`` / ``F.linear`` in float64 on the dequantized input and weights
    with the (grid-rounded) float bias, then the graph's activation module in float64.

    Quantized output: exact rounding except within ``delta`` of a tie (module docstring),
    ``delta = LAYER_DELTA + 2^-24 max|b| / s_y`` (the float32 bias is the integer bias times
    ``s_x s_w`` rounded to float32). Float output: ``float32(acc) * float32(s_x s_w)`` is the
    exact value times ``(1 + e)^2`` plus the float32 bias error, so
    ``|y - v| <= 2^-22 |v| + 2^-24 |b|``.

    Also checks the documented invariant the bound relies on (the simulation's bias is a
    multiple of ``s_x s_w``), that the outputs really vary (not everything clamped), and that
    the layer followed by its activation and output quantizer returns the same values."""
    sim = sims[key]
    node = _node(sim, layer)
    m = _mod(sim, node)
    assert isinstance(m, (QConv2d, QLinear)) and m.integer_output is not None, what
    if layer == "conv2.0":
        assert m.stride == (2, 2) and m.padding == (1, 1)
    if layer == "dw.0":
        assert m.groups == m.in_channels == m.out_channels
    fq_x = input_fq(sim, node.args[0])
    act, fq_y = fused_chain(sim, node)
    in_shape = (16, m.in_channels, 12, 20) if layer == "conv1.0" else (
        (16, m.in_channels, 6, 10) if layer == "conv2.0" else
        (16, m.in_channels, 3, 5) if isinstance(m, QConv2d) else (64, m.in_features))
    q = random_codes(fq_x, in_shape, seed=sum(map(ord, layer)))
    x32, x64 = on_grid(q, fq_x)
    w = exact_weights(m)
    b = m.bias.detach().to(torch.float64)
    s_x = float(fq_x.scale)
    step = s_x * m.w_scale.to(torch.float64).reshape(-1)
    nb = b / step
    assert (nb - torch.round(nb)).abs().max().item() <= 1e-6 * max(1.0, nb.abs().max().item()), \
        "the simulation's bias is not on the accumulator grid s_x * s_w"
    with torch.no_grad():
        y = m(x32)
        v = float_reference(m, x64, w, b)
        if act is not None:
            v = act(v)
    if fq_y is None:
        assert m.integer_output == "float" and act is None
        mag = float_reference(m, x64.abs(), w.abs(), b.abs())
        err = (y.to(torch.float64) - v).abs()
        bound = 2.0**-22 * v.abs() + U * mag + 1e-30
        rel = float((err / mag.clamp_min(1e-30)).max())
        assert (err <= bound).all(), f"{what}: float output off by {rel:.3g} (relative to the magnitude)"
        return
    s_y = float(fq_y.scale)
    delta = LAYER_DELTA + U * b.abs().max().item() / s_y
    k = output_codes(y, fq_y)
    check_requantized(k, v / s_y, delta, fq_y, f"{key} {layer} ({what})")
    # the whole requantization really varies: not all outputs clamped to one value
    assert k.unique().numel() > 20
    with torch.no_grad():
        chain = fq_y(act(y) if act is not None else y)
    assert torch.equal(chain, y), "the activation and quantizer after the integer layer changed its output"


def test_residual_add_matches_float64(sims):
    """The residual add (``QAdd``) of two operands with different scales (and different zero
    points), with its fused ReLU, against ``relu(a + b) / s_y`` in float64.

    ``delta``: the integer multipliers weigh the smaller-scale operand with ``p / q``, the
    closest fraction with denominator <= 2^15 to ``s_min / s_max``, which is within
    ``1 / (2 * 2^15)`` of it (the gap between neighbours of the Farey sequence of order N is
    ``1 / (b d)`` with ``b + d > N``); so the sum is off by at most
    ``max|b - z_b| * (s_max / s_y) * 2^-16``, plus float32 rounding (``LAYER_DELTA``)."""
    for key in ("tensor", "channel"):
        sim = sims[key]
        node = _node(sim, "add")
        m = _mod(sim, node)
        assert isinstance(m, QAdd)
        fa, fb = input_fq(sim, node.args[0]), input_fq(sim, node.args[1])
        act, fq_y = fused_chain(sim, node)
        assert isinstance(act, nn.ReLU) and fq_y is not None
        s_a, s_b = float(fa.scale), float(fb.scale)
        assert abs(math.log(s_a / s_b)) > 0.1, "the operands' scales should differ"
        assert int(fa.zero_point) != int(fb.zero_point)
        qa = random_codes(fa, (32, 8, 3, 5), seed=11)
        qb = random_codes(fb, (32, 8, 3, 5), seed=12)
        a32, a64 = on_grid(qa, fa)
        b32, b64 = on_grid(qb, fb)
        with torch.no_grad():
            y = m(a32, b32)
        u = torch.relu(a64 + b64) / float(fq_y.scale)
        max_c = max(fa.qmax - int(fa.zero_point), int(fa.zero_point) - fa.qmin,
                    fb.qmax - int(fb.zero_point), int(fb.zero_point) - fb.qmin)
        delta = max_c * max(s_a, s_b) / float(fq_y.scale) * 2.0**-16 + LAYER_DELTA
        k = output_codes(y, fq_y)
        check_requantized(k, u, delta, fq_y, f"{key}: residual add")
        assert k.unique().numel() > 20


@pytest.mark.parametrize("hw", [(3, 5), (4, 4), (1, 1)])
def test_global_avgpool_matches_float64(sims, hw):
    """The global average pool (``QAvgPool``, quantized output) against
    ``F.adaptive_avg_pool2d(x, 1) / s_y`` in float64, on the traced 3x5 map (H*W = 15: a
    multiplier divided by H*W - 1 is 7% off) and on other sizes the module accepts.

    ``acc = sum (x - z_x)`` is exact; ``m = float32(s_x / (s_y H W))`` and the product add
    relative 2^-24 each: ``delta = LAYER_DELTA``."""
    sim = sims["tensor"]
    node = _node(sim, "mean")
    m = _mod(sim, node)
    assert isinstance(m, QAvgPool)
    fq_x = input_fq(sim, node.args[0])
    act, fq_y = fused_chain(sim, node)
    assert act is None and fq_y is not None
    q = random_codes(fq_x, (64, 8, *hw), seed=21)
    x32, x64 = on_grid(q, fq_x)
    with torch.no_grad():
        y = m(x32)
    u = F.adaptive_avg_pool2d(x64, 1).flatten(1) / float(fq_y.scale)
    k = output_codes(y, fq_y)
    check_requantized(k, u, LAYER_DELTA, fq_y, f"average pool {hw}")
    if hw != (1, 1):
        assert k.unique().numel() > 20


def test_global_avgpool_float_output_matches_float64(sims):
    """The average pool that is the float network output: ``float32(acc) * float32(s_x / HW)``
    against the float64 mean, ``|y - mean| <= 2^-22 |mean| + tiny`` (two float32 roundings)."""
    sim = sims["gap"]
    node = _node(sim, "mean")
    m = _mod(sim, node)
    assert isinstance(m, QAvgPool) and m.y_scale is None
    fq_x = input_fq(sim, node.args[0])
    for hw in ((3, 5), (2, 3)):
        q = random_codes(fq_x, (64, 8, *hw), seed=22)
        x32, x64 = on_grid(q, fq_x)
        with torch.no_grad():
            y = m(x32)
        ref = F.adaptive_avg_pool2d(x64, 1).flatten(1)
        err = (y.to(torch.float64) - ref).abs()
        assert (err <= 2.0**-22 * ref.abs() + 1e-30).all(), \
            f"float average pool {hw}: relative error {float((err / ref.abs().clamp_min(1e-30)).max()):.3g}"


def test_whole_simulation_pool_output_is_the_mean_of_its_input(sims):
    """End to end on the "gap" network: the simulated output (the float average pool) is, within
    float32 rounding, the float64 mean of the quantized activation that feeds it (recorded by a
    hook), on real images."""
    sim = sims["gap"]
    fq = _mod(sim, _node(sim, "act_quant_relu"))
    seen = {}
    h = fq.register_forward_hook(lambda mod, inp, out: seen.__setitem__("x", out.detach().clone()))
    try:
        with torch.no_grad():
            y = sim(torch.randn(8, 3, 12, 20, generator=torch.Generator().manual_seed(5)))
    finally:
        h.remove()
    ref = seen["x"].to(torch.float64).mean((2, 3))
    assert (ref != 0).any()
    assert ((y.to(torch.float64) - ref).abs() <= 2.0**-22 * ref.abs() + 2.0**-22 * float(fq.scale)).all()


def test_max_pool_moves_values_unchanged(sims):
    """Max pooling gets no quantizer: its output is the float64 max pool of its (on-grid) input,
    exactly, and therefore on the same grid."""
    sim = sims["tensor"]
    node = _node(sim, "pool")
    m = _mod(sim, node)
    assert isinstance(m, nn.MaxPool2d)
    assert not isinstance(_mod(sim, next(iter(node.users))), FakeQuant)
    fq = input_fq(sim, node.args[0])
    q = random_codes(fq, (8, 8, 12, 20), seed=31)
    x32, x64 = on_grid(q, fq)
    with torch.no_grad():
        y = m(x32)
    assert torch.equal(y.to(torch.float64), F.max_pool2d(x32.to(torch.float64), 2))
    output_codes(y, fq)


def test_simulation_biases_round_to_nearest_on_the_accumulator_grid(sims):
    """Without bias correction, each simulated layer's bias is the prepared (FP32) network's
    bias rounded to the *nearest* multiple of ``s_x s_w``: within half a step (plus float32
    rounding), and a multiple of it."""
    tail, cfg = CONFIGS["gap"]
    sim = sims["gap"]
    prepared = prepare(_model(tail), (EXAMPLE,), cfg)
    n = 0
    for node in sim.graph.nodes:
        m = _mod(sim, node)
        if not isinstance(m, (QConv2d, QLinear)):
            continue
        b_float = prepared.get_submodule(str(node.target)).bias.detach().to(torch.float64)
        b_sim = m.bias.detach().to(torch.float64)
        step = float(input_fq(sim, node.args[0]).scale) * m.w_scale.to(torch.float64).reshape(-1)
        assert ((b_sim - b_float).abs() <= step * (0.5 + 1e-6) + U * b_float.abs()).all(), str(node.target)
        assert ((b_sim / step - torch.round(b_sim / step)).abs() <= 1e-6 * (1 + (b_sim / step).abs())).all()
        n += 1
    assert n == 4


# =============================================================================================
# 2. quant/requant.py against the definitions
# =============================================================================================
def _random_scales(n: int, seed: int) -> list[float]:
    """float32 values log-uniform over 1e-4 .. 1e1."""
    rng = random.Random(seed)
    return [float(torch.tensor(10 ** rng.uniform(-4, 1), dtype=torch.float32)) for _ in range(n)]


def _is_float32(v: float) -> bool:
    return float(torch.tensor(v, dtype=torch.float32)) == v


HAND_SCALES = [(0.02, 0.005, 0.01), (1.0, 1.0, 1.0), (0.0123, 0.0456, 0.0789), (1e-3, 0.5, 0.25),
               (3.0, 1e-4, 0.1)]


def test_requant_multiplier_float_scale_and_step():
    """``accumulator_step = s_x s_w`` (float64), ``requant_multiplier = float32(s_x s_w / s_y)``
    and ``float_output_scale = float32(s_x s_w)``: each within relative 2^-24 (one float32
    rounding) of the value computed here."""
    scales = _random_scales(60, 1)
    cases = HAND_SCALES + [tuple(scales[i:i + 3]) for i in range(0, 60, 3)]
    for s_x, s_w, s_y in cases:
        w_scale = torch.tensor([s_w, s_w * 1.7, s_w / 3.1], dtype=torch.float64)
        step = requant.accumulator_step(s_x, w_scale)
        exact = torch.tensor([s_x * s_w, s_x * s_w * 1.7, s_x * s_w / 3.1], dtype=torch.float64)
        assert step.dtype == torch.float64 and torch.allclose(step, exact, rtol=1e-15, atol=0)
        m = requant.requant_multiplier(step, s_y)
        assert m.dtype == torch.float32
        rel = (m.to(torch.float64) / (exact / s_y) - 1).abs().max().item()
        assert rel <= U, (s_x, s_w, s_y, rel)
        fs = requant.float_output_scale(step)
        assert fs.dtype == torch.float32 and (fs.to(torch.float64) / exact - 1).abs().max().item() <= U


def test_integer_bias_rounds_to_nearest():
    """``integer_bias = clamp(round(b / step), int32)``: within half a step of ``b`` for random
    biases (no ties), the exact integers back for biases on the grid (``k * step`` rounded to
    float32, below 2^24 steps), zeros for no bias, int32 saturation for huge ones."""
    g = torch.Generator().manual_seed(4)
    step = torch.rand(64, generator=g, dtype=torch.float64) * 1e-3 + 1e-5
    b = (torch.randn(64, generator=g, dtype=torch.float64) * 0.5).to(torch.float32)
    bq = requant.integer_bias(b, step, 64)
    assert bq.dtype == torch.int64
    off = (bq.to(torch.float64) - b.to(torch.float64) / step).abs()
    assert off.max().item() <= 0.5, "the integer bias is not the nearest integer of b / step"
    k = torch.randint(-(2**23), 2**23, (64,), generator=g, dtype=torch.int64)
    on_grid_b = (k.to(torch.float64) * step).to(torch.float32)
    assert torch.equal(requant.integer_bias(on_grid_b, step, 64), k)
    assert torch.equal(requant.integer_bias(None, step, 64), torch.zeros(64, dtype=torch.int64))
    huge = torch.tensor([1e6, -1e6], dtype=torch.float32)
    assert requant.integer_bias(huge, torch.tensor([1e-6, 1e-6], dtype=torch.float64), 2).tolist() == \
        [2**31 - 1, -(2**31)]


def _expected_bound(b: float, s_y: float, z: int, qmin: int, qmax: int) -> set[int]:
    """``clamp(round(b / s_y) + z, qmin, qmax)`` in float64; both neighbours when ``b / s_y`` is
    within 1e-4 of a tie (the function works in float32)."""
    if math.isinf(b):
        return {qmax if b > 0 else qmin}
    u = b / s_y
    return {min(max(int(round(v)) + z, qmin), qmax) for v in (u - 1e-4, u + 1e-4)}


def test_quantized_bounds_round_to_the_output_grid():
    """``quantized_bounds`` of a clamp = ``clamp(round(bound / s_y) + z_y, qmin, qmax)``, with
    ``+-inf`` the grid ends: ReLU gives ``(z, qmax)``; ReLU6, Hardtanh and random per-channel
    bounds give the rounded values; bounds beyond the grid saturate."""
    rng = random.Random(7)
    grids = [requant.Grid(0.0235, 0, 0, 255), requant.Grid(0.0473, 128, 0, 255), requant.Grid(0.011, 85, 0, 255),
             requant.Grid(0.05, 0, -127, 127), requant.Grid(0.3, 3, 0, 15)]
    for grid in grids:
        lo_hi = [(0.0, math.inf), (0.0, 6.0), (-1.0, 1.5), (-math.inf, math.inf), (-1e3, 1e3)]
        lo_hi += [(rng.uniform(-3, 0), rng.uniform(0, 3)) for _ in range(20)]
        lo = torch.tensor([p[0] for p in lo_hi], dtype=torch.float32)
        hi = torch.tensor([p[1] for p in lo_hi], dtype=torch.float32)
        qlo, qhi = requant.quantized_bounds(grid, lo, hi)
        for i in range(len(lo_hi)):
            for got, bound in ((int(qlo[i]), float(lo[i])), (int(qhi[i]), float(hi[i]))):
                assert got in _expected_bound(bound, grid.scale, grid.zero_point, grid.qmin, grid.qmax), \
                    (grid, bound, got)
        assert int(qlo[0]) == max(grid.zero_point, grid.qmin) and int(qhi[0]) == grid.qmax  # ReLU


def test_layer_requant_parameters():
    """``layer_requant`` puts the pieces together: bias, multiplier, zero point and bounds (grid
    ends without activation, the rounded ReLU6 / per-channel clamp bounds with one), and a
    float scale instead for a float output."""
    x = requant.Grid(0.0196, 128, 0, 255)
    y = requant.Grid(0.0317, 7, 0, 255)
    w_scale = torch.tensor([0.004, 0.002, 0.0031], dtype=torch.float64)
    bias = torch.tensor([0.1, -0.05, 0.0], dtype=torch.float32)
    step = 0.0196 * w_scale
    rq = requant.layer_requant(x, w_scale, bias, 3, y)
    assert (rq.bias.to(torch.float64) - bias.to(torch.float64) / step).abs().max() <= 0.5
    assert ((rq.multiplier.to(torch.float64) / (step / 0.0317) - 1).abs() <= U).all()
    assert rq.zero_point == 7 and rq.lo.tolist() == [0] and rq.hi.tolist() == [255] and rq.float_scale is None
    rq6 = requant.layer_requant(x, w_scale, bias, 3, y, nn.ReLU6())
    assert rq6.lo.tolist() == [7] and rq6.hi.tolist() == [round(6 / 0.0317) + 7]
    cc = ChannelClamp(torch.tensor([-0.1, 0.0, -1.0]), torch.tensor([1.0, 2.0, 100.0]))
    rqc = requant.layer_requant(x, w_scale, bias, 3, y, cc)
    assert rqc.lo.tolist() == [round(-0.1 / 0.0317) + 7, 7, 0]
    assert rqc.hi.tolist() == [round(1.0 / 0.0317) + 7, round(2.0 / 0.0317) + 7, 255]
    rqf = requant.layer_requant(x, w_scale, bias, 3, None)
    assert rqf.multiplier is None and ((rqf.float_scale.to(torch.float64) / step - 1).abs() <= U).all()


def test_layer_accumulator_bound_covers_the_worst_input():
    """``layer_accumulator_bound`` = ``max_n (max|x - z_x| sum_k |w_nk - z_w| + |bias_n|)``, and
    the worst input (each tap at the grid end of the weight's sign) reaches it."""
    g = torch.Generator().manual_seed(9)
    wc = torch.randint(-128, 128, (6, 20), generator=g)
    bias_q = torch.randint(-1000, 1000, (6,), generator=g)
    x = requant.Grid(0.1, 100, 0, 255)  # max |x - z| = 155 (at qmax), 100 at qmin
    bound = requant.layer_accumulator_bound(wc, x, bias_q)
    expected = max(155 * int(wc[n].abs().sum()) + abs(int(bias_q[n])) for n in range(6))
    assert bound == expected
    # the accumulator of the most extreme input (x - z = 155 where w >= 0, -100 elsewhere) stays below it
    worst = max(int((torch.where(wc[n] >= 0, 155, -100) * wc[n]).sum()) + int(bias_q[n]) for n in range(6))
    assert worst <= bound


ADD_SCALES = [(0.02, 0.03, 0.04), (0.05, 0.05, 0.07), (0.031, 0.0123, 0.0456), (1e-3, 0.2, 0.1),
              (0.2, 1e-3, 0.1), (1e-7, 0.5, 0.5), (0.1 / 3, 0.1, 0.05)]


def test_add_multipliers_weigh_each_operand_with_its_scale():
    """``add_multipliers(s_a, s_b, s_y) = (ia, ib, m)``: integers with ``|ia|, |ib| <= 2^15``, a
    float32 ``m``, and ``ia m ~ s_a / s_y``, ``ib m ~ s_b / s_y``. Precision (documented): the
    larger-scale operand only by float32 rounding of ``m`` (relative 2^-24); the other through
    the ratio ``ib / ia``, the closest fraction with denominator <= 2^15 to ``s_b / s_a``, so
    within ``(s_max / s_y) (2^-16 + 2^-23)`` (Farey bound, as in the add test); and when the
    ratio is a small fraction (to float precision) it is found exactly."""
    scales = _random_scales(60, 2)
    cases = ADD_SCALES + [tuple(scales[i:i + 3]) for i in range(0, 60, 3)]
    for s_a, s_b, s_y in cases:
        ia, ib, m = requant.add_multipliers(s_a, s_b, s_y)
        assert isinstance(ia, int) and isinstance(ib, int) and _is_float32(m)
        assert 0 <= ia <= 2**15 and 0 <= ib <= 2**15 and max(ia, ib) > 0
        s_max = max(s_a, s_b)
        tol = (s_max / s_y) * (2.0**-16 + 2.0**-23)
        assert abs(ia * m - s_a / s_y) <= tol, (s_a, s_b, s_y, ia, ib, m)
        assert abs(ib * m - s_b / s_y) <= tol, (s_a, s_b, s_y, ia, ib, m)
        (big, big_i), (small, small_i) = ((s_a, ia), (s_b, ib)) if s_a >= s_b else ((s_b, ib), (s_a, ia))
        assert abs(big_i * m / (big / s_y) - 1) <= 2 * U
        # the ratio is the closest fraction with denominator <= 2^15: within half the gap 1 / (b d)
        # between Farey neighbours (b + d > 2^15, so b d >= 2^15). (The docstring's "below
        # 1 / (ia ib)" does not hold in general: s = 0.10814555, 0.08054157 gives 32200 / 23981
        # with an error of 1.40 / (ia ib).)
        ratio_err = abs(Fraction(small_i, big_i) - Fraction(small) / Fraction(big))
        assert ratio_err <= Fraction(1, 2 * 2**15), (s_a, s_b, ia, ib)
    ia, ib, m = requant.add_multipliers(0.03, 0.01, 0.02)  # ratio 3 (to float precision)
    assert (ia, ib) == (3, 1)
    ia, ib, m = requant.add_multipliers(0.01, 0.03, 0.02)
    assert (ia, ib) == (1, 3)


def test_add_requant_bounds():
    """``add_requant`` with ReLU: lower bound at the output zero point, upper at the grid end;
    its multipliers are ``add_multipliers``'s."""
    a, b, y = requant.Grid(0.02, 0, 0, 255), requant.Grid(0.05, 128, 0, 255), requant.Grid(0.04, 0, 0, 255)
    rq = requant.add_requant(a, b, y, nn.ReLU(), 8)
    assert (rq.ia, rq.ib, rq.multiplier) == requant.add_multipliers(0.02, 0.05, 0.04)
    assert abs(rq.ia * rq.multiplier - 0.5) < 1e-4 and abs(rq.ib * rq.multiplier - 1.25) < 1e-4
    assert rq.lo.tolist() == [0] and rq.hi.tolist() == [255]
    y2 = requant.Grid(0.04, 30, 0, 255)
    rq2 = requant.add_requant(a, b, y2, nn.ReLU6(), 8)
    assert rq2.lo.tolist() == [30] and rq2.hi.tolist() == [min(255, 30 + round(6 / 0.04))]


@pytest.mark.parametrize("hw", [1, 2, 15, 49, 64, 196])
def test_avgpool_multiplier_and_float_scale(hw):
    """``avgpool_multiplier(s_x, s_y, hw) = float32(s_x / (s_y hw))`` and
    ``avgpool_float_scale(s_x, hw) = float32(s_x / hw)``, within relative 2^-24 + 2^-52 of the
    float64 value computed here, and float32 values."""
    scales = _random_scales(40, 3)
    for s_x, s_y in [(0.0378, 0.0272), (1.0, 1.0), (0.02, 0.5)] + list(zip(scales[::2], scales[1::2])):
        m = requant.avgpool_multiplier(s_x, s_y, hw)
        assert _is_float32(m)
        assert abs(m / (s_x / (s_y * hw)) - 1) <= U + 2.0**-52, (s_x, s_y, hw, m)
        f = requant.avgpool_float_scale(s_x, hw)
        assert _is_float32(f)
        assert abs(f / (s_x / hw) - 1) <= U + 2.0**-52, (s_x, hw, f)


def test_grid_of_a_quantizer():
    """``Grid.of`` reads a FakeQuant's float32 scale, zero point and range; ``max_abs`` is the
    largest ``|q - z|``."""
    fq = FakeQuant(0.1, 200, 8, False)
    g = requant.Grid.of(fq)
    assert g == requant.Grid(float(torch.tensor(0.1, dtype=torch.float32)), 200, 0, 255)
    assert g.max_abs == 200
    assert requant.Grid.of(FakeQuant(0.1, 0, 8, True)).max_abs == 127


# =============================================================================================
# 3. The int8 network's steps against float64
# =============================================================================================
@pytest.fixture(scope="module")
def nets(sims):
    return {k: to_int8(sims[k], backend="reference", fuse_residual=False, fuse_stem=False) for k in ("tensor", "gap")}


def _int8_offset(fq: FakeQuant) -> int:
    """The int8 network stores an asymmetric 8-bit grid ``[0, 255]`` shifted by 128."""
    assert fq.bits == 8
    return 128 if fq.qmin == 0 else 0


def _int8_input(net, sim, step: str, i: int) -> FakeQuant:
    """The simulation quantizer whose values input ``i`` of int8 step ``step`` stands for."""
    node = next(n for n in net.graph.nodes if n.op == "call_module" and str(n.target) == step)
    arg = node.args[i]
    while not net.net.get_submodule(str(arg.target)).sim_quantizer:
        arg = arg.args[0]  # max pool / padding: values unchanged
    return _mod(sim, _node(sim, net.net.get_submodule(str(arg.target)).sim_quantizer))


def _int8_codes(fq: FakeQuant, shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random int8 codes on ``fq``'s (shifted) grid and their float64 values ``(q - z) s``."""
    q = random_codes(fq, shape, seed)
    return (q - _int8_offset(fq)).to(torch.int8), on_grid(q, fq)[1]


def test_int8_add_step_matches_float64(sims, nets):
    """``Int8Add`` (kernels' reference) on int8 codes over the whole grid: its output, read on the
    simulation's output quantizer, is ``relu(a + b) / s_y`` rounded to nearest (same ``delta``
    as the simulation's add)."""
    net, sim = nets["tensor"], sims["tensor"]
    step = net.steps()["add"]
    assert isinstance(step, L.Int8Add)
    fa, fb = _int8_input(net, sim, "add", 0), _int8_input(net, sim, "add", 1)
    fq_y = _mod(sim, _node(sim, step.sim_quantizer))
    assert abs(math.log(float(fa.scale) / float(fb.scale))) > 0.1
    a8, a64 = _int8_codes(fa, (32, 3, 5, 8), seed=41)
    b8, b64 = _int8_codes(fb, (32, 3, 5, 8), seed=42)
    with torch.no_grad():
        y8 = step(a8, b8)
    assert y8.dtype == torch.int8
    k = (y8.to(torch.float64) + _int8_offset(fq_y) - int(fq_y.zero_point))
    u = torch.relu(a64 + b64) / float(fq_y.scale)
    max_c = 255
    delta = max_c * max(float(fa.scale), float(fb.scale)) / float(fq_y.scale) * 2.0**-16 + LAYER_DELTA
    check_requantized(k, u, delta, fq_y, "int8 add")


@pytest.mark.parametrize("hw", [(3, 5), (5, 5)])
def test_int8_avgpool_step_matches_float64(sims, nets, hw):
    """``Int8AvgPool`` on int8 codes: the mean over H*W in float64, in output steps, rounded to
    nearest (``delta = LAYER_DELTA``), on the converted 3x5 size and on another one (its
    multiplier for other sizes is computed on first use)."""
    net, sim = nets["tensor"], sims["tensor"]
    step = net.steps()["mean"]
    assert isinstance(step, L.Int8AvgPool)
    fq_x = _int8_input(net, sim, "mean", 0)
    fq_y = _mod(sim, _node(sim, step.sim_quantizer))
    x8, x64 = _int8_codes(fq_x, (64, *hw, 8), seed=43)
    with torch.no_grad():
        y8 = step(x8)
    k = (y8.to(torch.float64) + _int8_offset(fq_y) - int(fq_y.zero_point))
    u = x64.mean((1, 2)) / float(fq_y.scale)
    check_requantized(k, u, LAYER_DELTA, fq_y, f"int8 average pool {hw}")
    assert k.unique().numel() > 20


def test_int8_float_avgpool_step_matches_float64(sims, nets):
    """``FloatAvgPool`` (the pool is the network output) on int8 codes: the float64 mean within
    two float32 roundings; and the whole int8 network's output on images is the float64 mean of
    its last int8 activation, dequantized with the simulation's quantizer."""
    net, sim = nets["gap"], sims["gap"]
    step = net.steps()["mean"]
    assert isinstance(step, L.FloatAvgPool)
    fq_x = _int8_input(net, sim, "mean", 0)
    x8, x64 = _int8_codes(fq_x, (64, 3, 5, 8), seed=44)
    with torch.no_grad():
        y = step(x8)
    ref = x64.mean((1, 2))
    assert ((y.to(torch.float64) - ref).abs() <= 2.0**-22 * ref.abs() + 1e-30).all()

    images = torch.randn(8, 3, 12, 20, generator=torch.Generator().manual_seed(6))
    out, acts = net.activations(images)
    node = next(n for n in net.graph.nodes if n.op == "call_module" and str(n.target) == "mean")
    last = acts[str(node.args[0].target)]
    deq = (last.to(torch.float64) + _int8_offset(fq_x) - int(fq_x.zero_point)) * float(fq_x.scale)
    ref = deq.mean((1, 2))
    assert (ref != 0).any()
    assert ((out.to(torch.float64) - ref).abs() <= 2.0**-22 * ref.abs() + 1e-30).all()


def test_int8_maxpool_step_matches_float64(sims, nets):
    """``Int8MaxPool2d`` on int8 codes: exactly the float64 max pool of the dequantized input."""
    net, sim = nets["tensor"], sims["tensor"]
    step = net.steps()["pool"]
    assert isinstance(step, L.Int8MaxPool2d)
    fq = _int8_input(net, sim, "pool", 0)
    x8, x64 = _int8_codes(fq, (8, 12, 20, 8), seed=45)
    with torch.no_grad():
        y8 = step(x8)
    deq = (y8.to(torch.float64) + _int8_offset(fq) - int(fq.zero_point)) * float(fq.scale)
    ref = F.max_pool2d(x64.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    assert torch.equal(deq, ref)
