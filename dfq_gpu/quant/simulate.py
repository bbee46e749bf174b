"""Turn a prepared FP32 graph into a simulation of its integer execution.

Weights: every conv / linear layer becomes a :class:`~dfq_gpu.modules.QConv2d` /
:class:`~dfq_gpu.modules.QLinear` holding quantize-dequantized weights.

Activations: a :class:`~dfq_gpu.nn.FakeQuant` goes where the integer network
materializes an int8 tensor: on the network input, after each layer (after its activation
when that is a clamp, ReLU, ReLU6 or per-channel clamp, which the integer kernels fuse),
after each add (and its fused clamp), after average pooling and after any other op.
Zero padding, max pooling and reshapes move int8 values unchanged and get none. The
network output stays in float unless ``quantize_output``.

Biases: rounded to the int32 grid of ``input scale x weight scale``, as the integer
network stores them.

Integer arithmetic (:func:`make_integer_exact`, the last step of :func:`dfq_gpu.quantize`):
every quantized layer, residual add and global average pool whose inputs and output are
quantized is switched to the integer network's arithmetic (an exact integer accumulator and
the requantization ``clamp(rne(float32(acc) * m) + z_y, lo, hi)``; the steps, their fusion and
their parameters from the fusion plan of :mod:`dfq_gpu.quant.plan`, which the int8 converter
reads too), so that the simulation and the network of
:func:`dfq_gpu.to_int8` compute the same integers: residual adds and average pools become
:class:`~dfq_gpu.modules.QAdd` / :class:`~dfq_gpu.modules.QAvgPool` modules (the nodes keep
their names), layers keep their module and compute through its integer path. The
activations and ``FakeQuant`` nodes after them stay in the graph and return the step's values
unchanged (on the quantizer's grid, the clamp applied): per-channel clamps and quantizers are
marked ``passthrough`` and return their input without a pass over it (a quantizer after a ReLU6
or Hardtanh computes, as a value at the bound may have moved off the grid). This covers any bit
width whose accumulator provably stays within int32 (8-bit layers up to about 33000 inputs per
output; also narrower and somewhat wider grids, which the int8 network cannot run). Everything
else keeps the float simulation: activations that are not quantized (``act_bits=None``), layers
left in float (``skip_layers``), accumulators that could exceed int32 (16-bit weights and
activations), disabled quantizers, ops without an integer counterpart.
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .. import formulas as fm
from ..graph import ops
from ..graph.stats import NodeStats
from ..graph.trace import node_module
from ..layers import is_layer_module, layer_type
from ..modules import (QUANTIZED_LAYER_TYPES, QUANTIZED_LAYERS, QAdaptiveAvgPool2d, QAdd, QAvgPool, QAvgPool2d,
                       QChannelAffine, QLookup, QMul, QUpsampleBilinear)
from ..nn import ChannelClamp, FakeQuant
from ..passes.base import Workspace
from . import requant
from .plan import (FUSABLE_ACTS, AddPlan, AvgPool2dPlan, AvgPoolPlan, BilinearPlan, ChannelAffinePlan, LayerPlan,
                   LookupPlan, MulPlan, StepPlan,
                   build_plan, fused_output,
                   global_avgpool_problem, input_quantizer, is_passthrough, module_users, source_quantizer)
from .quantizer import act_qparams, quantize_weight, weight_qparams, weight_sqnr_db

__all__ = ["quantize_weights", "insert_act_quantizers", "act_quant_points", "input_quantizer", "source_quantizer",
           "fused_output", "global_avgpool_problem", "round_biases", "make_integer_exact", "stale_integer_steps",
           "finalize_integer_simulation", "is_passthrough", "iter_input_batches", "calibrate_ranges", "FUSABLE_ACTS"]

log = logging.getLogger(__name__)

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
                    is_layer_module(node_module(gm, node)) or ops.is_add(node)):
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
        cls = QUANTIZED_LAYERS[layer_type(m).kind]
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
        qmin, qmax = fm.quant_grid(bits, symmetric)
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
    """Round each quantized layer's bias to the int32 grid ``s_in * s_w`` of the integer network
    (:func:`dfq_gpu.quant.requant.integer_bias`)."""
    gm = ws.gm
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        if not isinstance(m, QUANTIZED_LAYER_TYPES):
            continue
        fq = input_quantizer(gm, node)
        if fq is None:
            continue
        step = requant.accumulator_step(float(fq.scale), m.w_scale)
        q = requant.integer_bias(m.bias, step, m.bias.numel())
        m.bias.copy_((q * step).to(m.bias.dtype))


# =============================================================================================
# Integer arithmetic
# =============================================================================================
def _integer_path_kwargs(p: LayerPlan) -> dict[str, Any]:
    """The keyword arguments of ``set_integer_path`` for a layer's plan (its ``requant`` set)."""
    x, rq = p.x, p.requant
    assert x is not None and rq is not None
    kw: dict[str, Any] = dict(x_scale=x.scale, x_min=x.qmin - x.zero_point, x_max=x.qmax - x.zero_point, bias=rq.bias)
    if rq.float_scale is not None:
        kw.update(float_scale=rq.float_scale)
    else:
        assert p.y is not None
        kw.update(multiplier=rq.multiplier, y_scale=p.y.scale, y_zero_point=p.y.zero_point, lo=rq.lo, hi=rq.hi)
    return kw


def _add_module(p: AddPlan) -> QAdd:
    """The :class:`QAdd` computing an add's plan (no ``float_reason``)."""
    a, b, y, rq = p.a, p.b, p.y, p.requant
    assert a is not None and b is not None and y is not None and rq is not None
    return QAdd(a.scale, b.scale, rq.ia, rq.ib, rq.multiplier, y.scale, y.zero_point, rq.lo, rq.hi,
                (a.qmin - a.zero_point, a.qmax - a.zero_point), (b.qmin - b.zero_point, b.qmax - b.zero_point))


def _avgpool_module(p: AvgPoolPlan) -> QAvgPool:
    """The :class:`QAvgPool` computing an average pool's plan (no ``float_reason``)."""
    x, y = p.x, p.y
    assert x is not None
    x_range = (x.qmin - x.zero_point, x.qmax - x.zero_point)
    if y is None:
        return QAvgPool(x.scale, x_range, p.keepdim)
    return QAvgPool(x.scale, x_range, p.keepdim, y.scale, y.zero_point, y.qmin, y.qmax)


def _lookup_module(p: LookupPlan) -> QLookup:
    """The :class:`QLookup` computing an activation's plan (no ``float_reason``)."""
    assert p.x is not None and p.y is not None
    return QLookup(p.fn, p.fn_kwargs, *p.x, *p.y)


def _channel_affine_module(p: ChannelAffinePlan) -> QChannelAffine:
    """The :class:`QChannelAffine` computing a per-channel affine map's plan (no ``float_reason``)."""
    assert p.x is not None and p.y is not None
    return QChannelAffine(p.scale, p.shift, *p.x, *p.y)


def _computed(value: Any) -> bool:
    """Whether a call argument holds graph nodes (a value computed at run time, e.g. from a shape)."""
    found: list[fx.Node] = []
    fx.node.map_arg(value, found.append)
    return bool(found)


def _bilinear_module(p: BilinearPlan) -> QUpsampleBilinear:
    """The :class:`QUpsampleBilinear` computing a bilinear resampling's plan (no ``float_reason``);
    a size computed at run time is the call's argument."""
    x, y = p.x, p.y
    assert x is not None and y is not None
    size = None if _computed(p.size) or p.size is None else (
        (int(p.size), int(p.size)) if isinstance(p.size, int) else (int(p.size[0]), int(p.size[1])))
    return QUpsampleBilinear(size, p.scale_factor, p.align_corners, x.scale, (x.qmin - x.zero_point,
                             x.qmax - x.zero_point), y.scale, y.zero_point, y.qmin, y.qmax)


def _avgpool2d_module(p: AvgPool2dPlan) -> QAvgPool2d | QAdaptiveAvgPool2d:
    """The :class:`QAvgPool2d` computing a windowed average pool's plan, the
    :class:`QAdaptiveAvgPool2d` computing an adaptive one's (no ``float_reason``)."""
    x, y, a = p.x, p.y, p.args
    assert x is not None and y is not None
    x_range = (x.qmin - x.zero_point, x.qmax - x.zero_point)
    if a is None:
        assert p.output_size is not None
        return QAdaptiveAvgPool2d(p.output_size, x.scale, x_range, y.scale, y.zero_point, y.qmin, y.qmax)
    return QAvgPool2d(a.kernel, a.stride, a.padding, a.ceil_mode, a.count_include_pad, x.scale, x_range, y.scale,
                      y.zero_point, y.qmin, y.qmax)


def _mul_module(p: MulPlan) -> QMul:
    """The :class:`QMul` computing a multiply's plan (no ``float_reason``)."""
    a, b, y = p.a, p.b, p.y
    assert a is not None and b is not None and y is not None and p.multiplier is not None
    return QMul(a.scale, (a.qmin - a.zero_point, a.qmax - a.zero_point), b.scale,
                (b.qmin - b.zero_point, b.qmax - b.zero_point), p.multiplier, y.scale, y.zero_point, y.qmin, y.qmax)


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _retarget(gm: fx.GraphModule, node: fx.Node, module: nn.Module, args: tuple, shared: bool) -> None:
    """Make ``node`` (keeping its name) call ``module``: at the same path if it called a module
    no other node calls, else under a new name."""
    if node.op == "call_module" and not shared:
        target = str(node.target)
    else:
        target = _free_name(gm, node.name)
    gm.add_submodule(target, module)
    node.op = "call_module"
    node.target = target
    node.args = args
    node.kwargs = {}


def _to_function(gm: fx.GraphModule, node: fx.Node, fn: Any, args: tuple, kwargs: dict) -> None:
    """Make ``node`` (keeping its name) a call of ``fn``, dropping the module it called."""
    target = str(node.target)
    node.op = "call_function"
    node.target = fn
    node.args = args
    node.kwargs = kwargs
    if not any(n.op == "call_module" and str(n.target) == target for n in gm.graph.nodes):
        gm.delete_submodule(target)


def _writes_on_grid(gm: fx.GraphModule, p: StepPlan) -> bool:
    """Whether the plan's step, computing in integers, writes its values on the grid of an enabled
    output quantizer (its fused clamp applied): ``(q - z) * s`` in float32, as the quantizer would."""
    fq = node_module(gm, p.quantizer) if p.quantizer is not None else None
    if not (isinstance(fq, FakeQuant) and fq.enabled):
        return False
    return not isinstance(p, LayerPlan) or (p.requant is not None and p.requant.float_scale is None)


def _chain_modules(gm: fx.GraphModule, p: StepPlan, users: dict[str, int]) -> list[FakeQuant | ChannelClamp]:
    """The output quantizer and per-channel clamp fused into the plan's step that can pass their
    input through (modules called by that node only; ``users``: :func:`module_users`). The
    quantizer only after a clamp that passes through too or a ReLU: a clamp that computes may move
    a value at a bound off the grid (ReLU6 at 6.0), which the quantizer maps back."""
    def own(n: Optional[fx.Node]) -> Optional[nn.Module]:
        return node_module(gm, n) if n is not None and users.get(str(n.target), 0) == 1 else None

    act, fq = own(p.act), own(p.quantizer)
    out: list[FakeQuant | ChannelClamp] = []
    if isinstance(act, ChannelClamp):
        out.append(act)
    elif p.act is not None and not isinstance(act, nn.ReLU):
        return out
    if isinstance(fq, FakeQuant):
        out.append(fq)
    return out


def _set_passthroughs(gm: fx.GraphModule, steps: list[StepPlan]) -> int:
    """Mark the quantizers and clamps after ``steps`` (computing in integers) that receive values
    already on their grid as ``passthrough``, and clear the mark everywhere else; how many."""
    for m in gm.modules():
        if isinstance(m, (FakeQuant, ChannelClamp)):
            m.passthrough = False
    n = 0
    users = module_users(gm)
    for p in steps:
        if _writes_on_grid(gm, p):
            for m in _chain_modules(gm, p, users):
                m.passthrough = True
                n += 1
    return n


@torch.no_grad()
def make_integer_exact(gm: fx.GraphModule) -> dict[str, Any]:
    """Switch the simulation to the integer network's arithmetic wherever it applies (module
    docstring), as the fusion plan (:func:`dfq_gpu.quant.plan.build_plan`) decides. Run it
    again after changing quantizers, biases or activations of a quantized network
    (:func:`stale_integer_steps` finds steps whose parameters no longer match).

    Returns ``{"layers": n, "adds": n, "pools": n, "lookups": n, "muls": n, "float": {node name:
    reason}, "passthrough": n}``: how many layers, adds, average pools, tables (activations and
    per-channel affine maps) and multiplies compute in integers, the nodes of those kinds that
    keep the float simulation, with the reason, and how many quantizers and clamps after them
    pass their input through.
    """
    done = {"layers": 0, "adds": 0, "pools": 0, "lookups": 0, "muls": 0}
    left: dict[str, str] = {}
    integer: list[StepPlan] = []
    users = module_users(gm)
    for p in build_plan(gm).values():
        node = p.node
        m = node_module(gm, node)
        why = p.float_reason
        try:
            if isinstance(p, LayerPlan):
                kind = "layers"
                assert isinstance(m, QUANTIZED_LAYER_TYPES)
                m.clear_integer_path()
                if why is None:
                    m.set_integer_path(**_integer_path_kwargs(p))
            elif isinstance(p, AddPlan):
                kind = "adds"
                if why is None:
                    _retarget(gm, node, _add_module(p), tuple(ops.tensor_inputs(node)),
                              shared=not isinstance(m, QAdd))
                elif isinstance(m, QAdd):  # back to the float add
                    _to_function(gm, node, operator.add, tuple(node.args), {})
            elif isinstance(p, AvgPool2dPlan):
                kind = "pools"
                if why is None:
                    _retarget(gm, node, _avgpool2d_module(p), (node.args[0],), users.get(str(node.target), 0) > 1)
                elif isinstance(m, QAvgPool2d) and p.args is not None:  # back to the float average
                    a = p.args
                    _to_function(gm, node, torch.nn.functional.avg_pool2d,
                                 (node.args[0], a.kernel, a.stride, a.padding, a.ceil_mode, a.count_include_pad), {})
                elif isinstance(m, QAdaptiveAvgPool2d):
                    _to_function(gm, node, torch.nn.functional.adaptive_avg_pool2d, (node.args[0], m.output_size), {})
            elif isinstance(p, MulPlan):
                kind = "muls"
                if why is None:
                    _retarget(gm, node, _mul_module(p), tuple(ops.tensor_inputs(node)), shared=not isinstance(m, QMul))
                elif isinstance(m, QMul):  # back to the float product
                    _to_function(gm, node, operator.mul, tuple(node.args), {})
            elif isinstance(p, BilinearPlan):
                kind = "pools"
                if why is None:
                    args = (node.args[0], p.size) if _computed(p.size) else (node.args[0],)
                    _retarget(gm, node, _bilinear_module(p), args,
                              node.op != "call_module" or users.get(str(node.target), 0) > 1)
                elif isinstance(m, QUpsampleBilinear):  # back to the float resampling
                    _to_function(gm, node, torch.nn.functional.interpolate, (node.args[0],),
                                 {"size": p.size, "scale_factor": p.scale_factor, "mode": "bilinear",
                                  "align_corners": p.align_corners})
            elif isinstance(p, ChannelAffinePlan):
                kind = "lookups"
                if why is None:
                    consts = [a for a in node.args if isinstance(a, fx.Node) and a is not p.input]
                    _retarget(gm, node, _channel_affine_module(p), (p.input,),
                              node.op != "call_module" or users.get(str(node.target), 0) > 1)
                    for c in consts:  # the constant factor now lives in the module
                        if c.op == "get_attr" and not c.users:
                            gm.graph.erase_node(c)
                elif isinstance(m, QChannelAffine):  # back to the float map
                    m.integer = False
            elif isinstance(p, LookupPlan):
                kind = "lookups"
                if why is None:
                    _retarget(gm, node, _lookup_module(p), (node.args[0],), users.get(str(node.target), 0) > 1)
                elif isinstance(m, QLookup):  # back to the float function
                    m.integer = False
            else:
                kind = "pools"
                if why is None:
                    _retarget(gm, node, _avgpool_module(p), (node.args[0],), users.get(str(node.target), 0) > 1)
                elif isinstance(m, QAvgPool):  # back to the float average
                    _to_function(gm, node, torch.mean, (node.args[0], (2, 3)), {"keepdim": m.keepdim})
        except ValueError as exc:  # e.g. an integer bias of the wrong size
            kind, why = "", str(exc)
        if why is None:
            done[kind] += 1
            integer.append(p)
        else:
            left[node.name] = why
            log.debug("%s keeps the float simulation: %s", node.name, why)
    gm.graph.lint()
    gm.recompile()
    return {**done, "float": left, "passthrough": _set_passthroughs(gm, integer)}


@torch.no_grad()
def stale_integer_steps(gm: fx.GraphModule, plan: Optional[dict[str, StepPlan]] = None) -> list[str]:
    """The nodes computing in integers whose parameters differ from what their quantizers,
    biases and activations give now (the network was changed after :func:`make_integer_exact`),
    and the steps computing in float whose output quantizer or clamp still passes its input
    through. ``plan``: the graph's plan (:func:`dfq_gpu.quant.plan.build_plan`) if already built."""
    stale: list[str] = []
    users = module_users(gm)
    for p in (build_plan(gm) if plan is None else plan).values():
        m = node_module(gm, p.node)
        if isinstance(p, LayerPlan) and isinstance(m, QUANTIZED_LAYER_TYPES) and m.integer_output is not None:
            fresh = p.float_reason is None and m.integer_state() == type(m).integer_state_of(**_integer_path_kwargs(p))
        elif isinstance(p, AddPlan) and isinstance(m, QAdd):
            fresh = p.float_reason is None and _add_module(p).state() == m.state()
        elif isinstance(p, AvgPoolPlan) and isinstance(m, QAvgPool):
            fresh = p.float_reason is None and _avgpool_module(p).state() == m.state()
        elif isinstance(p, AvgPool2dPlan) and isinstance(m, (QAvgPool2d, QAdaptiveAvgPool2d)):
            fresh = p.float_reason is None and _avgpool2d_module(p).state() == m.state()
        elif isinstance(p, MulPlan) and isinstance(m, QMul):
            fresh = p.float_reason is None and _mul_module(p).state() == m.state()
        elif isinstance(p, LookupPlan) and isinstance(m, QLookup) and m.integer:
            fresh = p.float_reason is None and _lookup_module(p).state() == m.state()
        elif isinstance(p, BilinearPlan) and isinstance(m, QUpsampleBilinear):
            fresh = p.float_reason is None and _bilinear_module(p).state() == m.state()
        elif isinstance(p, ChannelAffinePlan) and isinstance(m, QChannelAffine) and m.integer:
            fresh = p.float_reason is None and _channel_affine_module(p).state() == m.state()
        else:  # computes in float: what comes after it must compute
            fresh = not any(c.passthrough and (isinstance(c, ChannelClamp) or c.enabled)
                            for c in _chain_modules(gm, p, users))
        if not fresh:
            stale.append(p.name)
    return stale


def finalize_integer_simulation(ws: Workspace) -> None:
    """The last step of :func:`dfq_gpu.quantize` with quantized activations: :func:`make_integer_exact`."""
    if ws.cfg.act_bits is None:
        return
    res = make_integer_exact(ws.gm)
    text = (f"integer arithmetic in the simulation: {res['layers']} layers, {res['adds']} adds, {res['pools']} "
            "average pools")
    text += f", {res['lookups']} tables (activations, per-channel maps)" if res["lookups"] else ""
    text += f", {res['muls']} multiplies" if res["muls"] else ""
    by_reason: dict[str, list[str]] = {}
    for name, why in res["float"].items():
        by_reason.setdefault(why, []).append(name)
    if by_reason:
        text += "; float simulation for " + "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
    log.info(text)
    ws.report.step(text)
