"""ONNX export (QDQ layout), ONNX Runtime against the integer network, and the golden-model
comparison (dfq_gpu.export)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dfq_gpu
from dfq_gpu import DFQConfig, DFQError, compare_layers, export_onnx, golden_activations, prepare, quantize, to_int8
from dfq_gpu.cli import main as cli_main
from dfq_gpu.export import (ExportError, optimized_op_counts, ort_u8s8_saturates, quantized_tensor_names, run_onnx,
                            uint8_weights)
from dfq_gpu.export.onnx_qdq import exact_multiplier_scales
from dfq_gpu.quant import requant

sys.path.insert(0, str(Path(__file__).parent))
from test_int8 import _MobileOps, check_steps, randomize_bn  # noqa: E402  (the int8 tests' helpers and network)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
numpy_helper = onnx.numpy_helper


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


class Tiny(nn.Module):
    """conv-BN-ReLU6, depthwise-BN-ReLU6, conv-BN, residual add, global average pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(x)
        h = h + self.pw(self.dw(h))
        return self.fc(torch.flatten(self.pool(h), 1))


def _tiny(cfg: DFQConfig = DFQConfig(), seed: int = 0):
    torch.manual_seed(seed)
    model = randomize_bn(Tiny(), seed)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 1))
    cfg = cfg.replace(input_range=(-2.5, 2.5))
    return model, quantize(model, (x[:1],), cfg), x, cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, q, x, cfg = _tiny()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    proto = export_onnx(q, path)
    return model, q, x, cfg, path, proto


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph) -> dict:
    out: dict = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


# =============================================================================================
# Layout
# =============================================================================================
def test_qdq_layout(tiny):
    _, q, _, _, path, proto = tiny
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.opset_import[0].version >= 13
    g = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    prod, cons = _producers(g), _consumers(g)
    ops_ = [n.op_type for n in g.node]
    assert ops_.count("Conv") == 3 and ops_.count("Gemm") == 1 and ops_.count("Add") == 1
    assert "GlobalAveragePool" in ops_ and "Flatten" in ops_
    fqs = {n.name: q.get_submodule(n.target) for n in q.graph.nodes
           if isinstance(q.get_submodule(n.target) if n.op == "call_module" else None, dfq_gpu.modules.FakeQuant)}
    # one QuantizeLinear per FakeQuant, named after it, with its float32 scale and zero point
    names = quantized_tensor_names(proto)
    assert set(fqs) <= set(names)
    for name, fq in fqs.items():
        qn = prod[name]
        assert qn.op_type == "QuantizeLinear"
        # the quantizer's scale, or within a few units in the last place of it right after a
        # fused layer (exact_multiplier_scales)
        assert inits[qn.input[1]].dtype == np.float32
        np.testing.assert_allclose(float(inits[qn.input[1]]), float(fq.scale), rtol=1e-6)
        zp = inits[qn.input[2]]
        assert zp.dtype == np.uint8 and int(zp) == int(fq.zero_point)  # asymmetric [0, 255] grids as uint8
        # every consumer reads its own DequantizeLinear
        for dq in cons[name]:
            assert dq.op_type == "DequantizeLinear" and len(cons[dq.output[0]]) == 1
    # layers: integer weights and int32 bias on the grid s_x * s_w, both dequantized
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        x_dq, w_dq, b_dq = (prod[i] for i in n.input)
        assert {x_dq.op_type, w_dq.op_type, b_dq.op_type} == {"DequantizeLinear"}
        w, ws = inits[w_dq.input[0]], inits[w_dq.input[1]]
        assert w.dtype in (np.uint8, np.int8)
        b, bs, bz = (inits[i] for i in b_dq.input)
        assert b.dtype == np.int32 and bz.dtype == np.int32 and not bz.any()
        s_x = inits[x_dq.input[1]]
        np.testing.assert_array_equal(bs, (np.float32(s_x) * ws).astype(np.float32))
        # the residual add's inputs and the pool's are dequantized codes too
    for n in g.node:
        if n.op_type in ("Add", "GlobalAveragePool"):
            assert all(prod[i].op_type == "DequantizeLinear" for i in n.input)
    # the ChannelClamps of the ReLU6s (rescaled per channel by equalization) as Max/Min with [1, C, 1, 1]
    maxes = [n for n in g.node if n.op_type == "Max"]
    assert len(maxes) == 2
    for n in maxes:
        assert inits[n.input[1]].shape == (1, 8, 1, 1)
        # on the codes: Conv -> QuantizeLinear -> DequantizeLinear -> Max -> Min -> QuantizeLinear,
        # so that the convolution is followed by its QuantizeLinear (fusable)
        dq = prod[n.input[0]]
        assert dq.op_type == "DequantizeLinear" and prod[dq.input[0]].op_type == "QuantizeLinear"
        assert prod[prod[dq.input[0]].input[0]].op_type == "Conv"
        mn = cons[n.output[0]][0]
        assert mn.op_type == "Min" and inits[mn.input[1]].shape == (1, 8, 1, 1)
        assert len(np.unique(inits[mn.input[1]])) > 1  # really per channel


@pytest.mark.parametrize("cfg", [DFQConfig(weight_granularity="channel", weight_symmetric=True),
                                 DFQConfig(act_symmetric=True, relu6="keep")], ids=["perchannel-sym", "act-sym"])
def test_variants_are_exact_step_by_step(cfg, tmp_path):
    """Per-channel int8 weights (DequantizeLinear axis 0) and symmetric int8 activations (a Clip
    keeps -128 off the grid [-127, 127])."""
    _, q, x, _ = _tiny(cfg, seed=3)
    proto = export_onnx(q, tmp_path / "m.onnx")
    g = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    if cfg.weight_granularity == "channel":
        wdq = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_weight_quantized")]
        assert wdq and all(inits[n.input[0]].dtype == np.int8 and inits[n.input[1]].ndim == 1 for n in wdq)
        assert all(a.i == 0 for n in wdq for a in n.attribute if a.name == "axis")
    else:
        qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
        assert all(inits[n.input[2]].dtype == np.int8 for n in qs)
        assert sum(n.op_type == "Clip" and n.output[0].endswith("_grid_clip") for n in g.node) == len(qs)
    ref = golden_activations(q, x)
    for optimize in (True, False):
        outs, codes = run_onnx(proto, x, optimize=optimize)
        rep = compare_layers(codes, ref, tolerance=1)
        assert rep.ok and not rep.missing and rep.equal_share >= 0.999, str(rep)
        outs_f, codes_f = run_onnx(proto, x, optimize=optimize, teacher_forcing=ref)
        rep = compare_layers(codes_f, ref, tolerance=1)
        assert rep.ok and rep.equal_share >= 0.999, str(rep)


# =============================================================================================
# ONNX Runtime against the integer network
# =============================================================================================
def test_ort_agrees_with_integer_network_per_tensor(tiny):
    """ONNX Runtime computes each step from dequantized values in float (or, where it fuses the QDQ
    pattern, with its own float requantization): codes can differ from the integer network's
    near rounding ties only, so >= 99.9% of all codes are equal (>= 98% of every tensor: the
    pooled one has 64 values) and none differs by more than one code."""
    _, q, x, _, path, _ = tiny
    net = to_int8(q, backend="reference", fuse_residual=False, fuse_stem=False)  # every quantizer's activation
    ref = golden_activations(q, x, net=net)
    assert len(ref) == 6
    with torch.no_grad():
        yi = net(x)
    for optimize in (True, False):
        outs, codes = run_onnx(path, x, optimize=optimize)
        rep = compare_layers(codes, ref, tolerance=1, layers=q)
        assert rep.ok and not rep.missing and rep.equal_share >= 0.999, str(rep)
        assert rep.max_abs_diff <= 1 and all(d.equal_share >= 0.98 for d in rep.layers), str(rep)
        assert rep["act_quant_x"].equal_share == 1.0  # the input quantizer is the same float32 arithmetic
        assert outs[0].shape == (8, 10)
        assert (outs[0].argmax(1) == yi.numpy().argmax(1)).all()
        np.testing.assert_allclose(outs[0], yi.numpy(), atol=0.05 * float(yi.abs().max()))
    counts = optimized_op_counts(path, str(path.with_suffix(".opt.onnx")))
    assert counts.get("QLinearConv", 0) >= 1 and counts.get("QLinearAdd", 0) == 1  # fused where it can


def test_exact_multiplier_scales():
    """The exported scales make ONNX Runtime's multiplier float32(float32(x' w') / y') the
    contract's float32(s_x s_w / s_y), with scales a few ulps from the quantizers': always for a
    per-tensor weight scale, for most channels of per-channel ones (one x' and y' for all of
    them), where the quantizers' own scales miss it for about a quarter."""
    rng = np.random.default_rng(0)
    exact = base = 0
    for trial in range(40):
        s_x, s_y = (np.float32(v) for v in rng.uniform(1e-3, 0.1, 2))
        s_w = rng.uniform(1e-4, 0.05, 64).astype(np.float32)
        m = requant.requant_multiplier(requant.accumulator_step(float(s_x), torch.from_numpy(s_w)), float(s_y)).numpy()
        for w, mm in ((s_w[:1], m[:1]), (s_w, m)):
            f = exact_multiplier_scales(float(s_x), w, float(s_y), mm)
            ort = (np.float32(f.x) * f.w).astype(np.float32) / np.float32(f.y)
            np.testing.assert_array_equal(ort == mm, f.exact)
            for got, want in ((f.x, s_x), (f.y, s_y)):
                assert abs(float(got) / float(want) - 1) < 1e-6
            np.testing.assert_allclose(f.w, w, rtol=3e-5)
            np.testing.assert_array_equal(f.w[~f.exact], w[~f.exact])
        assert bool(exact_multiplier_scales(float(s_x), s_w[:1], float(s_y), m[:1]).exact.all())
        exact += int(f.exact.sum())
        base += int(((s_x * s_w).astype(np.float32) / s_y == m).sum())
    assert exact >= 0.85 * 40 * 64 and base <= 0.8 * 40 * 64, (exact, base)


def test_ort_fused_convolutions_are_exact(tiny):
    """Every convolution runs fused (QLinearConv, per-channel clamps on the codes after it) and,
    each fed the reference codes, gives the integer network's codes exactly."""
    _, q, x, _, path, _ = tiny
    counts = optimized_op_counts(path, str(path.with_suffix(".opt2.onnx")))
    assert counts.get("QLinearConv", 0) == 3 and counts.get("Conv", 0) == 0, counts
    ref = golden_activations(q, x)
    _, codes = run_onnx(path, x, teacher_forcing=ref)
    rep = compare_layers(codes, ref, tolerance=0, layers=q)
    convs = [d for d in rep.layers if d.layer in ("c1_0", "dw_0", "pw_0")]
    assert len(convs) == 3 and all(d.equal_share == 1.0 for d in convs), str(rep)


def test_fp32_model_exports_as_plain_onnx(tmp_path):
    model, _, x, cfg = _tiny()
    fp = prepare(model, (x[:1],), cfg)
    proto = export_onnx(fp, tmp_path / "fp.onnx")
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    outs, codes = run_onnx(tmp_path / "fp.onnx", x)
    assert codes == {}
    with torch.no_grad():
        np.testing.assert_allclose(outs[0], fp(x).numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(outs[0], model(x).numpy(), rtol=1e-3, atol=1e-3)


class _Cumprod(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(x, 3)


def test_unsupported_node_is_named(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Hardswish(), _Cumprod()).eval()
    fp = prepare(model, (torch.zeros(1, 3, 8, 8),), DFQConfig(input_range=(-1.0, 1.0)))
    with pytest.raises(ExportError, match=r"cannot export .*cumprod.*no ONNX emitter for cumprod.*PyTorch's ONNX "
                                          r"exporter failed too .*cumprod") as e:
        export_onnx(fp, tmp_path / "x.onnx")
    assert isinstance(e.value, DFQError)
    with pytest.raises(ExportError, match="GraphModule"):
        export_onnx(model, tmp_path / "x.onnx")


# =============================================================================================
# The integer network's other steps: lookup tables, products, pools, resampling, value movement
# =============================================================================================
class _ExportOps(nn.Module):
    """A batch norm left in the network (after a ReLU, before a padded convolution: a per-channel
    table), bilinear upsampling, a windowed average pool, a linear layer on the channels of an
    NHWC view with GELU and a layer norm in float between quantizers, reshapes with sizes computed
    from the shape, a cat of two heads of different quantizations, and a float bilinear
    resampling of the output to the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.mlp = nn.Sequential(nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))
        self.h1 = nn.Conv2d(6, 3, 1)
        self.h2 = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(F.relu(self.c1(x)))
        y = F.relu(self.c2(y))
        y = F.avg_pool2d(F.interpolate(y, scale_factor=2.0, mode="bilinear"), 3, 2, 1, ceil_mode=True)
        y = y + self.mlp(self.norm(y.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        b, c, h, w = y.shape
        y = y.reshape(b, c, h * w).reshape(b, c, h, w)  # arithmetic on sizes
        out = torch.cat([self.h1(y), self.h2(y)], 1)
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _WidePool(nn.Module):
    """A 257 x 257 window: sums up to 257^2 * 255 > 2^24, beyond float32's exact integers."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.h = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(F.avg_pool2d(F.relu(self.c(x)), 257, 2))


def _fq_shapes(q) -> dict:
    from dfq_gpu.graph import ops

    return {n.name: ops.tensor_shape(n) for n in q.graph.nodes
            if n.op == "call_module" and isinstance(q.get_submodule(n.target), dfq_gpu.modules.FakeQuant)}


def _exact_in_ort(q, x, path) -> dict:
    """Export ``q``; ONNX Runtime, fed the reference codes at every step and run freely, returns
    every quantized tensor of the integer network exactly. Returns the exported graph's op counts."""
    proto = export_onnx(q, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    ref = golden_activations(q, x)
    shapes = _fq_shapes(q)
    assert ref and all(v.shape[1:] == tuple(shapes[k])[1:] for k, v in ref.items())  # the simulation's order
    for forced in (ref, None):
        outs, codes = run_onnx(path, x, teacher_forcing=forced)
        rep = compare_layers(codes, ref, tolerance=0, layers=q)
        assert rep.ok and not rep.missing and rep.equal_share == 1.0, str(rep)
    with torch.no_grad():
        y = q(x)
    np.testing.assert_allclose(outs[0], y.numpy(), rtol=1e-5, atol=1e-6 * float(y.abs().max()))
    counts: dict = {}
    for n in proto.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def test_integer_steps_are_exact_in_onnx_runtime(tmp_path):
    """The steps runtimes do not fuse are written as the integer network's own arithmetic in plain
    ONNX ops (hardswish / SiLU / sigmoid tables as ``Gather``; the squeeze-excitation product, the
    windowed and adaptive average pools as exact integer sums, ``Round``, ``Clip``; cat onto one grid
    by a table; shuffle, chunk, slices as ``Transpose`` / ``Split`` / ``Slice``), so ONNX Runtime
    returns every code of the integer network (convolutions fused with matched scales)."""
    model = randomize_bn(_MobileOps())
    x = torch.randn(3, 3, 13, 11, generator=torch.Generator().manual_seed(6))
    q = quantize(model, (x[:2],), DFQConfig(input_range=(-3.0, 3.0)))
    counts = _exact_in_ort(q, x, tmp_path / "mobile_ops.onnx")
    assert {"Gather", "MatMul", "Round", "Concat", "Split", "Slice", "Transpose"} <= set(counts), counts
    assert counts["Gather"] >= 4 + 2  # four activation tables, the nearest upsampling's rows and columns


def test_channel_tables_resampling_and_float_ops_export(tmp_path):
    """A per-channel table (a batch norm left in), bilinear upsampling (exact integer weights in two
    ``MatMul``), a windowed pool with ``ceil_mode``, float GELU / layer norm between quantizers, a
    linear layer on an NHWC view (whose integer codes the golden model reports in the simulation's
    dimension order), a cat of two quantizations and a float resampling of the output; a window
    too large for float32's exact integers sums in float64."""
    model = randomize_bn(_ExportOps())
    x = torch.randn(3, 3, 11, 9, generator=torch.Generator().manual_seed(2))
    q = quantize(model, (x[:1],), DFQConfig(input_range=(-3.0, 3.0)))
    kinds = {type(m).__name__ for m in q.modules()}
    assert {"QChannelAffine", "QUpsampleBilinear", "QAvgPool2d"} <= kinds, kinds
    check_steps(to_int8(q, backend="reference"), q, x)  # each step, its NHWC-view linear included
    counts = _exact_in_ort(q, x, tmp_path / "ops.onnx")
    assert {"ReduceMean", "Sqrt", "Resize", "MatMul", "Gather", "Concat"} <= set(counts), counts
    wide = randomize_bn(_WidePool())
    xw = torch.randn(1, 3, 259, 260, generator=torch.Generator().manual_seed(3))
    qw = quantize(wide, (xw,), DFQConfig(input_range=(-3.0, 3.0)))
    proto = export_onnx(qw, tmp_path / "wide.onnx")
    assert any(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.DOUBLE for n in proto.graph.node)
    _exact_in_ort(qw, xw, tmp_path / "wide.onnx")


def test_exact_export_returns_every_code(tmp_path):
    """``exact=True``: the residual add (with its per-channel ReLU6 clamp) and the global average
    pool as integer arithmetic too, not fused by ONNX Runtime (the default graph's QLinearAdd and
    QLinearGlobalAveragePool round their own way near ties); run freely, ONNX Runtime returns every
    code of the integer network."""
    _, q, x, _ = _tiny(seed=5)
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    ref = golden_activations(q, x)
    reports = {}
    for exact in (False, True):
        path = tmp_path / f"m_{exact}.onnx"
        proto = export_onnx(q, path, exact=exact)
        types = [n.op_type for n in proto.graph.node]
        assert ("ReduceSum" in types and "GlobalAveragePool" not in types) == exact
        outs, codes = run_onnx(path, x)
        reports[exact] = compare_layers(codes, ref, tolerance=1, layers=q)
        counts = optimized_op_counts(path, str(path.with_suffix(".opt.onnx")))
        assert counts.get("QLinearConv", 0) == 3 and (counts.get("QLinearAdd", 0) == 0) == exact, counts
    assert reports[True].equal_share == 1.0 and not reports[True].missing, str(reports[True])
    with torch.no_grad():
        np.testing.assert_allclose(outs[0], q(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("net,ops_", [(_MobileOps, {"HardSigmoid", "Sigmoid", "Mul", "Split", "Slice"}),
                                      (_ExportOps, {"Erf", "ReduceMean", "Resize", "Transpose"})],
                         ids=["mobile-ops", "export-ops"])
def test_float_networks_export_their_activations(net, ops_, tmp_path):
    """``prepare``'s float networks with hardswish, SiLU, sigmoid, GELU, a layer norm, a batch norm
    left in, the squeeze-excitation product, cat and resampling: plain ONNX, PyTorch's outputs."""
    model = randomize_bn(net())
    x = torch.randn(2, 3, 13, 11, generator=torch.Generator().manual_seed(4))
    fp = prepare(model, (x[:1],), DFQConfig(input_range=(-3.0, 3.0)))
    proto = export_onnx(fp, tmp_path / "fp.onnx")
    types = {n.op_type for n in proto.graph.node}
    assert ops_ <= types and not types & {"QuantizeLinear", "DequantizeLinear"}, types
    outs, _ = run_onnx(tmp_path / "fp.onnx", x)
    with torch.no_grad():
        y = fp(x)
    np.testing.assert_allclose(outs[0], y.numpy(), rtol=1e-4, atol=1e-5 * float(y.abs().max()))


class _Attention(nn.Module):
    """A patch embedding, a class token expanded to the batch, a position embedding added by
    broadcasting, multi-head attention, a relative-position bias gathered from a table by an
    integer index (computed from constants alone), einsum, softmax, flip, a layer norm."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8, generator=g))
        self.pos = nn.Parameter(torch.randn(1, 5, 8, generator=g) * 0.2)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.table = nn.Parameter(torch.randn(9, 1, generator=g))
        self.register_buffer("index", torch.randint(0, 9, (5, 5), generator=g))
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        t = t + self.attn(t, t, t, need_weights=False)[0]
        bias = self.table[self.index].squeeze(-1)
        a = torch.softmax(torch.einsum("bnc,bmc->bnm", t, t) * 0.3 + bias, -1)
        t = torch.einsum("bnm,bmc->bnc", a, t).flip(1)
        return self.head(self.norm(t)[:, 0])


def test_float_ops_export_through_pytorch(tmp_path):
    """Ops without an emitter of their own that compute in float (attention, einsum, softmax, an
    expand to the batch, flip) are exported by PyTorch's exporter and spliced in, listed in the
    metadata; what is computed from constants alone (an integer index into a table, and the
    quantizer after it) is folded into initializers. Fed the reference codes, ONNX Runtime returns
    every code within one (float ops round their own way), a batch other than the traced one too."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    q = quantize(_Attention(), (x[:2],), DFQConfig(input_range=(-3.0, 3.0)))
    path = tmp_path / "attention.onnx"
    proto = export_onnx(q, path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert {"expand", "attn", "einsum", "softmax", "einsum_1", "flip"} <= set(meta["dfq_gpu.pytorch_exported"])
    assert proto.opset_import[0].version == 14  # PyTorch writes attention from opset 14
    inits = {i.name: i for i in proto.graph.initializer}
    assert "squeeze" in inits and "getitem_2" not in meta["dfq_gpu.pytorch_exported"]  # the bias, folded
    assert not any(i.data_type == onnx.TensorProto.INT64 and list(i.dims) == [5, 5] for i in inits.values())
    ref = golden_activations(q, x)
    constants = [k for k in quantized_tensor_names(proto) if _producers(proto.graph)[k].op_type == "Identity"]
    assert constants and all(k in ref for k in constants)  # the bias's codes, folded
    rep = compare_layers(run_onnx(path, x, teacher_forcing=ref)[1], ref, tolerance=1, layers=q)
    assert rep.ok and not rep.missing and rep.max_abs_diff <= 1 and rep.equal_share > 0.99, str(rep)
    outs, _ = run_onnx(path, x)
    with torch.no_grad():
        y = q(x)
    np.testing.assert_allclose(outs[0], y.numpy(), atol=0.05 * float(y.abs().max()))


# =============================================================================================
# The golden model
# =============================================================================================
def test_golden_model_finds_the_perturbed_layer(tiny):
    _, q, x, _, path, proto = tiny
    ref = golden_activations(q, x)
    order = list(ref)
    # 1. one weight of the depthwise convolution edited in the ONNX graph
    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    init = next(i for i in bad.graph.initializer if i.name == "dw_0_weight_quantized")
    w = numpy_helper.to_array(init).copy()
    w[3, 0, 1, 1] = 0 if w[3, 0, 1, 1] > 127 else 255
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    _, codes = run_onnx(bad, x)
    rep = compare_layers(codes, ref, tolerance=1, layers=q)
    first = rep.first_divergence
    assert first is not None and first.name == "act_quant_dw_2" and first.layer == "dw_0", str(rep)
    assert all(not d.diverged for d in rep.layers[:order.index("act_quant_dw_2")])
    # 2. one tensor of the dict perturbed by two codes
    _, codes = run_onnx(proto, x)
    assert compare_layers(codes, ref, tolerance=1).ok
    codes["act_quant_pw_0"] = codes["act_quant_pw_0"].astype(np.int32)
    codes["act_quant_pw_0"][1, 2, 3, 4] += 2
    rep = compare_layers(codes, ref, tolerance=1, layers=q)
    assert rep.first_divergence.name == "act_quant_pw_0" and rep.first_divergence.layer == "pw_0"
    assert rep["act_quant_pw_0"].max_abs_diff >= 2 and rep["act_quant_pw_0"].equal_share < 1.0
    assert "first divergence: act_quant_pw_0" in str(rep)
    # an incomplete dict: reported as missing, not compared
    del codes["act_quant_add"]
    assert compare_layers(codes, ref).missing == ["act_quant_add"]
    with pytest.raises(DFQError, match="non-integer"):
        compare_layers({"act_quant_x": np.full(ref["act_quant_x"].shape, 0.5)}, ref)


def test_uint8_weights_are_the_same_values_and_run_exact(tmp_path):
    """``int8`` weights stored as ``uint8`` (codes and zero point + 128) dequantize to the same
    floats, and ONNX Runtime's fused kernels on them return the reference codes (ONNX Runtime's
    U8S8 kernels saturate on x86 CPUs without VNNI: ``ort_u8s8_saturates``)."""
    _, q, x, _ = _tiny(DFQConfig(weight_granularity="channel", weight_symmetric=True), seed=3)
    proto = export_onnx(q)
    u8 = uint8_weights(proto)
    assert export_onnx(q, weights="uint8") == u8 and proto != u8
    a = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    b = {i.name: numpy_helper.to_array(i) for i in u8.graph.initializer}
    wdq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_weight_quantized")]
    assert len(wdq) == 4
    for n in wdq:
        w, s, z = n.input
        assert a[w].dtype == np.int8 and b[w].dtype == np.uint8 and (b[z] == 128).all()
        axis = [1] + [1] * (a[w].ndim - 1)
        axis[0] = -1
        deq = lambda i: (i[w].astype(np.float32) - i[z].astype(np.float32).reshape(axis)) * i[s].reshape(axis)  # noqa
        np.testing.assert_array_equal(deq(a), deq(b))
    assert all(np.array_equal(a[k], b[k]) for k in a if not k.endswith(("_weight_quantized", "_weight_zero_point")))
    ref = golden_activations(q, x)
    _, codes = run_onnx(proto, x, uint8_weights=True)
    rep = compare_layers(codes, ref, tolerance=1)
    assert rep.ok and rep.equal_share >= 0.999, str(rep)
    with pytest.raises(ExportError, match="weights must be"):
        export_onnx(q, weights="int4")


def test_which_cpus_saturate(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert ort_u8s8_saturates("x86_64", str(info)) is True
    info.write_text("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert ort_u8s8_saturates("x86_64", str(info)) is False
    assert ort_u8s8_saturates("AMD64", str(tmp_path / "none")) is True  # flags unknown: assume it can
    assert ort_u8s8_saturates("aarch64", str(tmp_path / "none")) is False


# =============================================================================================
# Command line
# =============================================================================================
def test_cli_export(tiny, tmp_path, capsys):
    _, q, x, _, _, _ = tiny
    src = tmp_path / "tiny.safetensors"
    dfq_gpu.save(q, src, model_name="tiny")
    out = tmp_path / "tiny.onnx"
    assert cli_main(["export", str(src), "--onnx", str(out), "--quiet"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    outs, _ = run_onnx(out, x, intermediate=False)
    with torch.no_grad():
        assert (outs[0].argmax(1) == q(x).numpy().argmax(1)).all()
    capsys.readouterr()
    for argv, pattern in ((["export", str(tmp_path / "none.safetensors"), "--onnx", str(tmp_path / "a.onnx")],
                           "does not exist"),
                          (["export", str(src), "--onnx", str(out)], "exists; pass --force"),
                          (["export", str(src), "--onnx", str(tmp_path / "a.txt")], r"\.onnx")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dfq-gpu: error: ") and re.search(pattern, err[0]), err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    assert cli_main(["export", str(junk), "--onnx", str(tmp_path / "b.onnx")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert cli_main(["export", str(src), "--onnx", str(out), "--force", "--json"]) == 0
    capsys.readouterr()
    assert cli_main(["export", str(src), "--onnx", str(out), "--force", "--json", "--weights", "uint8", "--exact"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["weights"] == "uint8" and payload["exact"] is True
    assert not any(n.op_type in ("Add", "GlobalAveragePool") and all(i.endswith(("_dq", "_dq_1")) for i in n.input)
                   for n in onnx.load(str(out)).graph.node)
    model = onnx.load(str(out))
    assert {i.data_type for i in model.graph.initializer if i.name.endswith("_weight_quantized")} == {
        onnx.TensorProto.UINT8}


# =============================================================================================
# EfficientNet-Lite0 (pretrained), 20 images of the ImageNet sample
# =============================================================================================
@pytest.mark.slow
def test_lite0_onnx_agrees_with_integer_network(tmp_path):
    from dfq_gpu.data import imagenet_sample
    from dfq_gpu.evaluate import sqnr_per_sample

    t0 = time.perf_counter()
    model, pre = dfq_gpu.load_model("efficientnet_lite0")
    q = quantize(model, (torch.zeros(1, 3, 224, 224),), DFQConfig(input_range=pre.input_range))
    export_onnx(q, tmp_path / "lite0.onnx")
    onnx.checker.check_model(str(tmp_path / "lite0.onnx"), full_check=True)
    counts = optimized_op_counts(tmp_path / "lite0.onnx", str(tmp_path / "lite0.opt.onnx"))
    assert counts.get("QLinearConv", 0) == 49 and counts.get("Conv", 0) == 0, counts  # every conv fused
    x = imagenet_sample(pre, views=1).tensors[0]
    assert x.shape[0] == 20
    net = to_int8(q, backend="reference")
    with torch.no_grad():
        fp = model(x)
        ys = q(x)
        # the integer network's logits are the simulation's, bit for bit (tests/test_int8.py checks
        # it on all 160 views): checked here on two images, the simulation (twice as fast on the
        # CPU) stands for it on the rest
        assert torch.equal(net(x[:2]), ys[:2])
    yi = ys
    outs, _ = run_onnx(tmp_path / "lite0.onnx", x, intermediate=False)
    yo = torch.from_numpy(outs[0])
    agreement = (yo.argmax(1) == yi.argmax(1)).float().mean().item()
    sq_sim, sq_ort = sqnr_per_sample(fp, ys).mean().item(), sqnr_per_sample(fp, yo).mean().item()
    msg = f"agreement {agreement:.3f}, SQNR simulation {sq_sim:.2f} dB, ORT {sq_ort:.2f} dB"
    print(msg, f"({time.perf_counter() - t0:.0f} s)")
    assert agreement >= 0.99, msg
    assert abs(sq_ort - sq_sim) <= 0.5, msg
    assert sq_ort > 15.0, msg


@pytest.mark.slow
def test_resnet18_onnx_agrees_with_integer_network(tmp_path):
    """ResNet-18 (random init, randomized BN) in ONNX Runtime: top-1 agreement with the integer
    network and the simulation's SQNR against FP32, on the 20 images of the ImageNet sample."""
    import torchvision

    from dfq_gpu.data import Preprocess, imagenet_sample
    from dfq_gpu.evaluate import sqnr_per_sample

    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(), seed=0)
    pre = Preprocess()
    x = imagenet_sample(pre, views=1).tensors[0]
    q = quantize(model, (x[:1],), DFQConfig(input_range=pre.input_range))
    export_onnx(q, tmp_path / "r18.onnx")
    onnx.checker.check_model(str(tmp_path / "r18.onnx"), full_check=True)
    with torch.no_grad():
        fp, ys = model(x), q(x)
        assert torch.equal(to_int8(q, backend="reference")(x[:2]), ys[:2])
    yo = torch.from_numpy(run_onnx(tmp_path / "r18.onnx", x, intermediate=False)[0][0])
    agreement = (yo.argmax(1) == ys.argmax(1)).float().mean().item()
    sq_sim, sq_ort = sqnr_per_sample(fp, ys).mean().item(), sqnr_per_sample(fp, yo).mean().item()
    print(f"agreement {agreement:.3f}, SQNR simulation {sq_sim:.2f} dB, ORT {sq_ort:.2f} dB")
    assert agreement >= 0.99 and abs(sq_ort - sq_sim) <= 0.5, (agreement, sq_sim, sq_ort)
