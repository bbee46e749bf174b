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
the requantization ``clamp(rne(float32(acc) * m) + z_y, lo, hi)``, parameters from
:mod:`dfq_gpu.quant.requant`), so that the simulation and the network of
:func:`dfq_gpu.to_int8` compute the same integers: residual adds and average pools become
:class:`~dfq_gpu.modules.QAdd` / :class:`~dfq_gpu.modules.QAvgPool` modules (the nodes keep
their names), layers keep their module and compute through its integer path. The
activations and ``FakeQuant`` nodes after them stay in the graph and return their values
unchanged. This covers any bit width whose accumulator provably stays within int32 (8-bit
layers up to about 33000 inputs per output; also narrower and somewhat wider grids, which the
int8 network cannot run). Everything else keeps the float simulation: activations that are not
quantized (``act_bits=None``), layers left in float (``skip_layers``), accumulators that could
exceed int32 (16-bit weights and activations), disabled quantizers, ops without an integer
counterpart.
"""

from __future__ import annotations

import logging
import operator
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .. import formulas as fm
from ..graph import ops
from ..graph.stats import NodeStats
from ..graph.trace import LAYER_TYPES, node_module
from ..modules import QAdd, QAvgPool, QConv2d, QLinear
from ..nn import ChannelClamp, FakeQuant
from ..passes.base import Workspace
from . import requant
from .quantizer import act_qparams, quantize_weight, weight_qparams, weight_sqnr_db

__all__ = ["quantize_weights", "insert_act_quantizers", "act_quant_points", "input_quantizer", "source_quantizer",
           "fused_output", "global_avgpool_problem", "round_biases", "make_integer_exact", "stale_integer_steps",
           "finalize_integer_simulation", "is_passthrough", "iter_input_batches", "calibrate_ranges", "FUSABLE_ACTS"]

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
    return source_quantizer(gm, node.args[0] if node.args else None)


def source_quantizer(gm: fx.GraphModule, arg: Any) -> FakeQuant | None:
    """The activation quantizer whose values ``arg`` carries (through passthroughs), else ``None``."""
    cur = arg
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
        if not isinstance(m, (QConv2d, QLinear)):
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
def fused_output(gm: fx.GraphModule, node: fx.Node) -> tuple[fx.Node | None, fx.Node | None, fx.Node]:
    """The fused activation and the output quantizer after ``node`` (each ``None`` if absent) and
    the last node of that chain: ``node`` [-> its only user, a clamp activation] [-> its only
    user, a ``FakeQuant``]. The integer network computes this chain as one step."""
    act = fq = None
    tail = node
    users = list(node.users)
    if len(users) == 1 and isinstance(node_module(gm, users[0]), FUSABLE_ACTS):
        act = tail = users[0]
        users = list(act.users)
    if len(users) == 1 and isinstance(node_module(gm, users[0]), FakeQuant):
        fq = tail = users[0]
    return act, fq, tail


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    t = tuple(int(a) for a in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def global_avgpool_problem(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """``None`` if the average pooling ``node`` is a global average pool (``[B, C, H, W] -> [B, C]``
    or ``[B, C, 1, 1]``), else why not."""
    shape_in = ops.tensor_shape(node.args[0]) if node.args else None
    shape_out = ops.tensor_shape(node)
    if shape_in is None or shape_out is None or len(shape_in) != 4:
        return "average pooling of a tensor that is not 4-D"
    if not (len(shape_out) in (2, 4) and shape_out[0] == shape_in[0] and shape_out[1] == shape_in[1]
            and all(d == 1 for d in shape_out[2:])):
        return f"average pooling from {shape_in} to {shape_out} (only global average pooling)"
    m = node_module(gm, node)
    if isinstance(m, nn.AvgPool2d):
        kernel, padding, divisor = m.kernel_size, m.padding, m.divisor_override
    elif node.op == "call_function" and getattr(node.target, "__name__", "") == "avg_pool2d":
        kernel = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
        padding = node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0)
        divisor = node.args[6] if len(node.args) > 6 else node.kwargs.get("divisor_override")
    else:
        return None
    if _pair(padding) != (0, 0) or _pair(kernel) != tuple(shape_in[2:]) or divisor is not None:
        return "an average pooling window that does not cover the whole input"
    return None


_EXCEEDS_INT32 = "its accumulator could exceed int32"


def _module_users(gm: fx.GraphModule) -> dict[str, int]:
    count: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            count[str(n.target)] = count.get(str(n.target), 0) + 1
    return count


def _enabled_grid(fq: FakeQuant | None) -> requant.Grid | None:
    return requant.Grid.of(fq) if fq is not None and fq.enabled else None


def _layer_params(gm: fx.GraphModule, node: fx.Node, m: QConv2d | QLinear,
                  shared: bool) -> tuple[str | None, dict[str, Any] | None]:
    """``(None, keyword arguments of set_integer_path)``, or ``(why not, None)``."""
    if shared:
        return "its module is called by several nodes", None
    if len(node.args) != 1 or node.kwargs:
        return "a layer call with extra arguments", None
    x = _enabled_grid(input_quantizer(gm, node))
    if x is None:
        return "its input is not quantized", None
    act, fq, _ = fused_output(gm, node)
    y = None
    if fq is not None:
        y = _enabled_grid(node_module(gm, fq))  # type: ignore[arg-type]
        if y is None:
            return "its output quantizer is disabled", None
    n_out = m.weight.shape[0]
    rq = requant.layer_requant(x, m.w_scale, m.bias, n_out, y, node_module(gm, act) if act is not None and
                               y is not None else None)
    wc = m.integer_weight() - m._bcast(m.w_zero_point)
    bound = requant.layer_accumulator_bound(wc, x, rq.bias)
    if bound > requant.INT32_MAX:
        log.debug("%s: |accumulator| up to %d", node.name, bound)
        return _EXCEEDS_INT32, None
    kw: dict[str, Any] = dict(x_scale=x.scale, x_min=x.qmin - x.zero_point, x_max=x.qmax - x.zero_point, bias=rq.bias)
    if rq.float_scale is not None:
        kw.update(float_scale=rq.float_scale)
    else:
        assert y is not None
        kw.update(multiplier=rq.multiplier, y_scale=y.scale, y_zero_point=y.zero_point, lo=rq.lo, hi=rq.hi)
    return None, kw


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


def _add_module(gm: fx.GraphModule, node: fx.Node) -> tuple[str | None, QAdd | None]:
    """``(None, the QAdd computing node)``, or ``(why not, None)``."""
    ins = ops.tensor_inputs(node)
    if len(ins) != 2:
        return "an add without two tensor inputs", None
    shape = ops.tensor_shape(node)
    if ops.tensor_shape(ins[0]) != ops.tensor_shape(ins[1]) or shape is None:
        return "an add of tensors of different shapes (broadcasting)", None
    a, b = _enabled_grid(source_quantizer(gm, ins[0])), _enabled_grid(source_quantizer(gm, ins[1]))
    if a is None or b is None:
        return "an operand is not quantized", None
    act, fq, _ = fused_output(gm, node)
    if fq is None:  # the int8 network adds the two dequantized tensors in float32, as the simulation does
        return "its result is the float network output", None
    y = _enabled_grid(node_module(gm, fq))  # type: ignore[arg-type]
    if y is None:
        return "its output quantizer is disabled", None
    channels = shape[1] if len(shape) >= 2 else 1
    rq = requant.add_requant(a, b, y, node_module(gm, act) if act is not None else None, channels)
    mod = QAdd(a.scale, b.scale, rq.ia, rq.ib, rq.multiplier, y.scale, y.zero_point, rq.lo, rq.hi,
               (a.qmin - a.zero_point, a.qmax - a.zero_point), (b.qmin - b.zero_point, b.qmax - b.zero_point))
    if mod.acc_bound > requant.INT32_MAX:
        log.debug("%s: |accumulator| up to %d", node.name, mod.acc_bound)
        return _EXCEEDS_INT32, None
    return None, mod


def _avgpool_module(gm: fx.GraphModule, node: fx.Node) -> tuple[str | None, QAvgPool | None]:
    """``(None, the QAvgPool computing node)``, or ``(why not, None)``."""
    problem = global_avgpool_problem(gm, node)
    if problem is not None:
        return problem, None
    x = _enabled_grid(source_quantizer(gm, node.args[0]))
    if x is None:
        return "its input is not quantized", None
    act, fq, _ = fused_output(gm, node)
    if act is not None:
        return "an activation after average pooling", None
    keepdim = len(ops.tensor_shape(node) or ()) == 4
    x_range = (x.qmin - x.zero_point, x.qmax - x.zero_point)
    shape_in = ops.tensor_shape(node.args[0]) or (1, 1, 1, 1)
    if shape_in[2] * shape_in[3] * x.max_abs > requant.INT32_MAX:
        return _EXCEEDS_INT32, None
    if fq is None:
        return None, QAvgPool(x.scale, x_range, keepdim)
    y = _enabled_grid(node_module(gm, fq))  # type: ignore[arg-type]
    if y is None:
        return "its output quantizer is disabled", None
    return None, QAvgPool(x.scale, x_range, keepdim, y.scale, y.zero_point, y.qmin, y.qmax)


@torch.no_grad()
def make_integer_exact(gm: fx.GraphModule) -> dict[str, Any]:
    """Switch the simulation to the integer network's arithmetic wherever it applies (module
    docstring). Run it again after changing quantizers, biases or activations of a quantized
    network (:func:`stale_integer_steps` finds steps whose parameters no longer match).

    Returns ``{"layers": n, "adds": n, "pools": n, "float": {node name: reason}}``: how many
    layers, adds and average pools compute in integers, and the nodes of those kinds that keep
    the float simulation, with the reason.
    """
    done = {"layers": 0, "adds": 0, "pools": 0}
    left: dict[str, str] = {}
    users = _module_users(gm)
    for node in list(gm.graph.nodes):
        m = node_module(gm, node)
        shared = users.get(str(node.target), 0) > 1
        try:
            if isinstance(m, (QConv2d, QLinear)):
                kind = "layers"
                m.clear_integer_path()
                why, kw = _layer_params(gm, node, m, shared)
                if kw is not None:
                    m.set_integer_path(**kw)
            elif isinstance(m, QAdd) or ops.is_add(node):
                kind = "adds"
                why, add = _add_module(gm, node)
                if add is not None:
                    _retarget(gm, node, add, tuple(ops.tensor_inputs(node)), shared=not isinstance(m, QAdd))
                elif isinstance(m, QAdd):  # back to the float add
                    _to_function(gm, node, operator.add, tuple(node.args), {})
            elif isinstance(m, QAvgPool) or ops.is_spatial_pool(gm, node) == "avg":
                kind = "pools"
                why, pool = _avgpool_module(gm, node)
                if pool is not None:
                    _retarget(gm, node, pool, (node.args[0],), shared)
                elif isinstance(m, QAvgPool):  # back to the float average
                    _to_function(gm, node, torch.mean, (node.args[0], (2, 3)), {"keepdim": m.keepdim})
            else:
                continue
        except ValueError as exc:  # e.g. an activation that cannot be fused
            kind, why = "", str(exc)
        if why is None:
            done[kind] += 1
        else:
            left[node.name] = why
            log.debug("%s keeps the float simulation: %s", node.name, why)
    gm.graph.lint()
    gm.recompile()
    return {**done, "float": left}


@torch.no_grad()
def stale_integer_steps(gm: fx.GraphModule) -> list[str]:
    """The nodes computing in integers whose parameters differ from what their quantizers,
    biases and activations give now (the network was changed after :func:`make_integer_exact`)."""
    stale: list[str] = []
    users = _module_users(gm)
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        try:
            if isinstance(m, (QConv2d, QLinear)) and m.integer_output is not None:
                _, kw = _layer_params(gm, node, m, users.get(str(node.target), 0) > 1)
                fresh = kw is not None and m.integer_state() == type(m).integer_state_of(**kw)
            elif isinstance(m, QAdd):
                _, add = _add_module(gm, node)
                fresh = add is not None and add.state() == m.state()
            elif isinstance(m, QAvgPool):
                _, pool = _avgpool_module(gm, node)
                fresh = pool is not None and pool.state() == m.state()
            else:
                continue
        except ValueError:
            fresh = False
        if not fresh:
            stale.append(node.name)
    return stale


def finalize_integer_simulation(ws: Workspace) -> None:
    """The last step of :func:`dfq_gpu.quantize` with quantized activations: :func:`make_integer_exact`."""
    if ws.cfg.act_bits is None:
        return
    res = make_integer_exact(ws.gm)
    text = (f"integer arithmetic in the simulation: {res['layers']} layers, {res['adds']} adds, {res['pools']} "
            "average pools")
    by_reason: dict[str, list[str]] = {}
    for name, why in res["float"].items():
        by_reason.setdefault(why, []).append(name)
    if by_reason:
        text += "; float simulation for " + "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
    log.info(text)
    ws.report.step(text)
