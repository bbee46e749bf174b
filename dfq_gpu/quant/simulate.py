"""Turn a prepared FP32 graph into a simulation of its integer execution.

Weights: every conv / linear layer becomes a :class:`~dfq_gpu.modules.QConv2d` /
:class:`~dfq_gpu.modules.QLinear` holding quantize-dequantized weights.

Activations: a :class:`~dfq_gpu.modules.FakeQuant` goes where the integer network
materializes an int8 tensor: on the network input, after each layer (after its activation
when that is a clamp, ReLU, ReLU6 or per-channel clamp, which the integer kernels fuse),
after each add (and its fused clamp), after average pooling and after any other op.
Zero padding, max pooling and reshapes move int8 values unchanged and get none. The
network output stays in float unless ``quantize_output``.

Biases: rounded to the int32 grid of ``input scale x weight scale``, as the integer
network stores them.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .. import formulas as fm
from ..graph import ops
from ..graph.stats import NodeStats
from ..graph.trace import LAYER_TYPES, node_module
from ..modules import ChannelClamp, FakeQuant, QConv2d, QLinear
from ..passes.base import Workspace
from .quantizer import act_qparams, quantize_weight, weight_qparams, weight_sqnr_db

__all__ = ["quantize_weights", "insert_act_quantizers", "act_quant_points", "input_quantizer", "round_biases",
           "is_passthrough", "iter_input_batches", "calibrate_ranges", "FUSABLE_ACTS"]

log = logging.getLogger(__name__)

FUSABLE_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, ChannelClamp)


def is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops that move quantized values unchanged (no requantization in the integer network)."""
    if ops.is_zero_pad(gm, node) or ops.is_spatial_pool(gm, node) == "max":
        return True
    if ops.is_channel_preserving_reshape(gm, node) or ops.is_flatten_reshape(gm, node):
        return True
    if node.op == "call_method" and node.target in ("view", "reshape", "flatten", "contiguous", "squeeze"):
        return True
    return node.op == "call_function" and node.target in (torch.flatten, torch.reshape, torch.squeeze)


def _real_users(node: fx.Node) -> list[fx.Node]:
    return [u for u in node.users if not ops.is_shape_query(u)]


def act_quant_points(gm: fx.GraphModule, quantize_output: bool) -> list[fx.Node]:
    """Nodes whose output the integer network stores as int8 (in graph order)."""
    points: list[fx.Node] = []
    for node in gm.graph.nodes:
        shape = ops.tensor_shape(node)
        if node.op in ("output", "get_attr") or shape is None:
            continue
        tm = node.meta.get("tensor_meta")
        if tm is not None and not tm.dtype.is_floating_point:
            continue
        users = _real_users(node)
        if not users:
            continue
        if node.op != "placeholder":
            if is_passthrough(gm, node):
                continue
            if len(users) == 1 and isinstance(node_module(gm, users[0]), FUSABLE_ACTS) and (
                    isinstance(node_module(gm, node), LAYER_TYPES) or ops.is_add(node)):
                continue  # quantized after the fused activation
            if not quantize_output and all(u.op == "output" or _only_feeds_output(gm, u) for u in users):
                continue
        points.append(node)
    return points


def _only_feeds_output(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True if ``node`` is a passthrough whose values only reach the graph output."""
    if not is_passthrough(gm, node):
        return False
    return all(u.op == "output" or _only_feeds_output(gm, u) for u in _real_users(node))


def input_quantizer(gm: fx.GraphModule, node: fx.Node) -> FakeQuant | None:
    """The activation quantizer whose values ``node``'s first input carries (through passthroughs)."""
    cur = node.args[0] if node.args else None
    while isinstance(cur, fx.Node):
        m = node_module(gm, cur)
        if isinstance(m, FakeQuant):
            return m
        if cur.op == "placeholder" or not is_passthrough(gm, cur):
            return None
        cur = cur.args[0]
    return None


@torch.no_grad()
def quantize_weights(ws: Workspace) -> dict[str, torch.Tensor]:
    """Replace every layer by its quantized version; returns the float weights by layer name."""
    cfg = ws.cfg
    float_weights: dict[str, torch.Tensor] = {}
    n = 0
    for node in ws.layer_nodes():
        name = str(node.target)
        m = ws.module(name)
        if name in cfg.skip_layers:
            ws.report.skip(name, "in skip_layers: left in float")
            continue
        per_channel = cfg.weight_granularity == "channel"
        scale, zp = weight_qparams(m.weight, cfg.weight_bits, per_channel, cfg.weight_symmetric)
        w_q = quantize_weight(m.weight, scale, zp, cfg.weight_bits, cfg.weight_symmetric)
        float_weights[name] = m.weight.detach().clone()
        cls = QConv2d if isinstance(m, nn.Conv2d) else QLinear
        q = cls.from_float(m, w_q, scale, zp, cfg.weight_bits, cfg.weight_symmetric)
        ws.gm.add_submodule(name, q)
        rec = ws.report.layers.get(name)
        if rec is not None:
            rec.w_bits = cfg.weight_bits
            rec.w_scale = scale.numpy()
            rec.w_zero_point = zp.numpy()
            rec.weight_sqnr_db = weight_sqnr_db(float_weights[name], w_q)
        n += 1
    ws.gm.recompile()
    ws.report.step(f"quantized the weights of {n} layers to {cfg.weight_bits} bits, per {cfg.weight_granularity}, "
                   f"{'symmetric' if cfg.weight_symmetric else 'asymmetric'}")
    return float_weights


def iter_input_batches(data: Iterable[Any], max_batches: int | None = None) -> Iterator[tuple[Any, ...]]:
    """Model inputs from ``data``: batches of tensors, tuples of tensors, or ``(inputs, labels)`` pairs.

    A ``(x, y)`` pair whose ``y`` is an integer tensor of labels yields ``(x,)``.
    """
    for i, batch in enumerate(data):
        if max_batches is not None and i >= max_batches:
            return
        if isinstance(batch, torch.Tensor):
            yield (batch,)
        elif isinstance(batch, (tuple, list)):
            if len(batch) == 2 and isinstance(batch[1], torch.Tensor) and not batch[1].is_floating_point():
                yield (batch[0],)
            else:
                yield tuple(batch)
        elif isinstance(batch, dict) and "inputs" in batch:
            yield (batch["inputs"],)
        else:
            raise TypeError(f"data must yield tensors or (inputs, labels) pairs, got {type(batch).__name__}")


_MAX_SAMPLES = 1 << 18


def _mse_range(values: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, float]:
    """The range ``f * [lo, hi]`` (f in 0.2..1) quantizing ``values`` with the least squared error."""
    best: tuple[float, float, float] | None = None
    v = values.to(torch.float64)
    for f in np.linspace(0.2, 1.0, 33):
        l, h = min(lo * f, 0.0), max(hi * f, 0.0)
        if h <= l:
            continue
        scale, zp = act_qparams(l, h, bits, symmetric)
        qmin, qmax = (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)
        q = (torch.clamp(torch.round(v / scale) + zp, qmin, qmax) - zp) * scale
        e = float(((q - v) ** 2).mean())
        if best is None or e < best[2]:
            best = (l, h, e)
    return (lo, hi) if best is None else (best[0], best[1])


@torch.no_grad()
def calibrate_ranges(gm: fx.GraphModule, names: list[str], data: Iterable[Any], max_batches: int,
                     method: str = "minmax", bits: int = 8, symmetric: bool = False) -> dict[str, tuple[float, float]]:
    """Ranges of the given nodes' outputs over the data: min/max, or the MSE-optimal part of it."""
    wanted = set(names)
    ranges: dict[str, list[float]] = {}
    samples: dict[str, list[torch.Tensor]] = {}

    class _Rec(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            res = super().run_node(n)
            if n.name in wanted and isinstance(res, torch.Tensor):
                lo, hi = float(res.min()), float(res.max())
                r = ranges.setdefault(n.name, [lo, hi])
                r[0], r[1] = min(r[0], lo), max(r[1], hi)
                if method == "mse":
                    flat = res.detach().reshape(-1)
                    stride = max(1, flat.numel() // (_MAX_SAMPLES // max(1, max_batches)))
                    samples.setdefault(n.name, []).append(flat[::stride].clone())
            return res

    count = 0
    for inputs in iter_input_batches(data, max_batches):
        _Rec(gm).run(*inputs)
        count += 1
    if count == 0:
        raise ValueError("calibration data is empty")
    out = {k: (v[0], v[1]) for k, v in ranges.items()}
    if method == "mse":
        for k, (lo, hi) in out.items():
            out[k] = _mse_range(torch.cat(samples[k]), lo, hi, bits, symmetric)
    return out


def insert_act_quantizers(ws: Workspace, stats: dict[str, NodeStats],
                          calibrated: dict[str, tuple[float, float]] | None = None) -> list[str]:
    """Insert a :class:`FakeQuant` after every quantization point; returns the point names."""
    cfg = ws.cfg
    gm = ws.gm
    assert cfg.act_bits is not None
    points = act_quant_points(gm, cfg.quantize_output)
    for p in points:
        source = "calibrate"
        if calibrated is not None and p.name in calibrated:
            lo, hi = calibrated[p.name]
        else:
            s = stats.get(p.name)
            if s is None:
                raise RuntimeError(f"no activation range for {ops.describe(gm, p)}: its statistics could not be "
                                   "derived; use act_ranges='calibrate' with data")
            lo, hi = float(np.min(s.lo)), float(np.max(s.hi))
            source = s.source
            if p.op == "placeholder" and cfg.input_range is not None:
                lo, hi = cfg.input_range
                source = "input_range"
            elif p.op != "placeholder" and cfg.act_range_method == "mse":
                mu, sd, clo, chi = s.value_model()
                lo, hi, _ = fm.mse_optimal_range(mu, sd, clo, chi, lo, hi, levels=2**cfg.act_bits)
        scale, zp = act_qparams(lo, hi, cfg.act_bits, cfg.act_symmetric)
        fq = FakeQuant(scale, zp, cfg.act_bits, cfg.act_symmetric, source=source)
        name = f"act_quant_{p.name}"
        gm.add_submodule(name, fq)
        with gm.graph.inserting_after(p):
            qn = gm.graph.call_module(name, (p,))
        qn.meta = dict(p.meta)
        p.replace_all_uses_with(qn, delete_user_cb=lambda u, qn=qn: u is not qn)
    gm.graph.lint()
    gm.recompile()
    ws.report.step(f"inserted {len(points)} activation quantizers ({cfg.act_bits} bits, ranges: {cfg.act_ranges})")
    return [p.name for p in points]


@torch.no_grad()
def round_biases(ws: Workspace) -> None:
    """Round each quantized layer's bias to the int32 grid ``s_in * s_w`` of the integer network."""
    gm = ws.gm
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        if not isinstance(m, (QConv2d, QLinear)):
            continue
        fq = input_quantizer(gm, node)
        if fq is None:
            continue
        step = float(fq.scale) * m.w_scale.to(torch.float64)
        b = m.bias.detach().to(torch.float64)
        q = torch.clamp(torch.round(b / step), -(2**31), 2**31 - 1)
        m.bias.copy_((q * step).to(m.bias.dtype))
