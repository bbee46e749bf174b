"""The fusion plan: one walk over a quantized graph that decides, for every int8 step, what fuses
with what and with which integer parameters (:mod:`dfq_gpu.quant.requant`).

A step is a quantized layer, a residual add or a global average pool, followed by its fused
clamp activation and its output quantizer (:func:`fused_output`), or an elementwise activation
between two quantizers (a table), or a per-channel affine map between two quantizers (a table
per channel). :func:`build_plan` returns one typed plan per such node (:class:`LayerPlan`,
:class:`AddPlan`, :class:`AvgPoolPlan`, :class:`LookupPlan`, :class:`ChannelAffinePlan`, ...), keyed by the
node's name, in graph order. Both executors of the integer contract read it:

* the simulation (:func:`dfq_gpu.quant.simulate.make_integer_exact`) switches a step to integer
  arithmetic when its ``float_reason`` is ``None`` and keeps the float simulation otherwise;
* the int8 converter (:func:`dfq_gpu.to_int8`) builds its kernel steps from the same
  parameters, and raises its own errors for what it cannot run (it does not look at
  ``float_reason``: e.g. a layer whose module is called twice is converted twice, an
  accumulator bound above int32 is the kernels' concern).

:func:`residual_fusions` reads the plan to say which residual adds the int8 network may compute in
the epilogue of the layer producing one operand, :func:`stem_fusions` which convolution quantizes
the network input itself (``dfq_gpu.to_int8`` does both by default), and
:func:`depthwise_project_fusions` which depthwise convolutions run in one kernel with the 1x1
convolution after them (``to_int8(..., fuse_depthwise=True)``).

Plans hold the quantizers' own grids (:class:`~dfq_gpu.quant.requant.Grid`); the int8 storage
offset (``-128`` for asymmetric grids) is the converter's business.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.fx as fx
import torch.nn as nn

from kernels import reference as kref
from kernels.reference import IM2COL_MAX_CHANNELS

from ..graph import ops
from ..graph.trace import node_module
from ..layers import layer_type
from ..modules import (QUANTIZED_LAYER_TYPES, QAdaptiveAvgPool2d, QAdd, QAvgPool, QAvgPool2d, QChannelAffine, QConv2d,
                       QLinear, QLookup, QMul, QUpsampleBilinear)
from ..nn import ChannelClamp, FakeQuant
from . import requant
from .requant import Grid

__all__ = ["FUSABLE_ACTS", "LayerPlan", "AddPlan", "AvgPoolPlan", "AvgPool2dPlan", "LookupPlan", "ChannelAffinePlan",
           "MulPlan", "BilinearPlan", "StepPlan", "build_plan",
           "is_passthrough", "lookup_spec", "channel_affine_spec",
           "input_quantizer", "source_quantizer", "fused_output", "global_avgpool_problem", "module_users",
           "EXCEEDS_INT32", "ResidualFusion", "residual_fusions", "StemFusion", "stem_fusions",
           "DepthwiseProjectFusion", "depthwise_project_fusions"]

FUSABLE_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, ChannelClamp)

EXCEEDS_INT32 = "its accumulator could exceed int32"


# =============================================================================================
# Graph vocabulary of the integer network
# =============================================================================================
def is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Ops that move quantized values unchanged (no requantization in the integer network)."""
    if ops.is_zero_pad(gm, node) or ops.is_spatial_pool(gm, node) == "max":
        return True
    if ops.is_channel_preserving_reshape(gm, node) or ops.is_flatten_reshape(gm, node):
        return True
    if node.op == "call_method" and node.target in ("view", "reshape", "flatten", "contiguous", "squeeze"):
        return True
    return node.op == "call_function" and node.target in (torch.flatten, torch.reshape, torch.squeeze)


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


# =============================================================================================
# The plans
# =============================================================================================
@dataclass(frozen=True)
class _Fusion:
    """What one int8 step covers in the graph.

    ``node``: the layer / add / pool node; ``act``: the fused clamp activation node after it
    (``None`` if absent); ``quantizer``: the output ``FakeQuant`` node (``None``: the step's result
    is a float tensor, the network output); ``tail``: the last of these nodes, whose value the
    step produces. ``float_reason``: why the simulation keeps this step in float (``None``: it
    computes in integers); the int8 converter makes its own checks instead.
    """

    node: fx.Node
    act: Optional[fx.Node]
    quantizer: Optional[fx.Node]
    tail: fx.Node
    float_reason: Optional[str]

    @property
    def name(self) -> str:
        """The step's node name (the simulation's and the int8 network's)."""
        return self.node.name


@dataclass(frozen=True)
class LayerPlan(_Fusion):
    """A quantized convolution or linear layer (+ fused clamp) (+ output quantizer).

    ``kind``: ``"conv"`` (groups 1), ``"depthwise"`` (groups = in = out channels), ``"grouped"``
    (any other grouping: no int8 kernel) or ``"linear"``. ``weight``: the integer weights (int64,
    PyTorch layout, on the weight grid); ``w_zero_point``: int64 ``[1|N]``; ``n_out``: ``N``.
    ``x``/``y``: the input / output quantizers' grids (``None``: not quantized, or disabled).
    ``requant``: the integer parameters (bias, multiplier and bounds with the activation fused,
    or the float output scale), ``None`` when they do not exist (input not quantized, output
    quantizer disabled, an activation that cannot be fused). ``acc_bound``: the largest
    ``|acc|`` over all inputs (``None`` without ``requant``).
    """

    kind: str
    weight: torch.Tensor
    w_zero_point: torch.Tensor
    n_out: int
    x: Optional[Grid]
    y: Optional[Grid]
    requant: Optional[requant.LayerRequant]
    acc_bound: Optional[int]


@dataclass(frozen=True)
class AddPlan(_Fusion):
    """A residual add of two quantized tensors (+ fused clamp) (+ output quantizer).

    ``a``/``b``/``y``: the grids of the operands and of the output quantizer (``None``: not
    quantized or disabled). ``channels``: the size of dimension 1 (per-channel clamp bounds).
    ``requant``: the multipliers ``ia``, ``ib``, ``m`` and the bounds on ``y``, ``None`` when
    they do not exist (an operand or the output not quantized, an activation that cannot be
    fused). ``acc_bound``: the largest ``|(a - z_a) ia + (b - z_b) ib|`` (``None`` without
    ``requant``).
    """

    a: Optional[Grid]
    b: Optional[Grid]
    y: Optional[Grid]
    channels: int
    requant: Optional[requant.AddRequant]
    acc_bound: Optional[int]


@dataclass(frozen=True)
class AvgPoolPlan(_Fusion):
    """A global average pool of a quantized tensor (+ output quantizer; no activation fuses).

    ``x``/``y``: input and output grids (``y`` ``None``: a float output, or a disabled quantizer);
    ``hw``: the number of pooled positions ``H W``; ``keepdim``: the output is ``[B, C, 1, 1]``
    rather than ``[B, C]``. The executors take the multiplier ``float32((s_x / s_y) / (H W))``
    (:func:`~dfq_gpu.quant.requant.avgpool_multiplier`), or the float output's scale, from these
    grids and the ``H W`` of the tensor they pool.
    """

    x: Optional[Grid]
    y: Optional[Grid]
    hw: int
    keepdim: bool


@dataclass(frozen=True)
class LookupPlan(_Fusion):
    """An elementwise activation with no integer form (hardswish, SiLU, sigmoid, ...) between two
    quantizers: a table from input codes to output codes (:class:`~dfq_gpu.modules.QLookup`).

    ``fn`` / ``fn_kwargs``: the function (:data:`dfq_gpu.nn.ELEMENTWISE`); ``x`` / ``y``: the
    input and output quantizers as ``(scale, zero_point, bits, symmetric)`` (``None``: not
    quantized, or disabled). The node's only user is its output quantizer.
    """

    fn: str
    fn_kwargs: dict
    x: Optional[tuple[float, int, int, bool]]
    y: Optional[tuple[float, int, int, bool]]


@dataclass(frozen=True, eq=False)
class ChannelAffinePlan(_Fusion):
    """A per-channel affine map ``x[:, c] * scale[c] + shift[c]`` between two quantizers (a batch
    norm left in the network, a constant per-channel factor or offset): a table per channel from
    input codes to output codes (:class:`~dfq_gpu.modules.QChannelAffine`).

    ``input``: the tensor the map reads; ``scale`` / ``shift``: float32 ``[C]``; ``x`` / ``y``:
    the input and output quantizers as ``(scale, zero_point, bits, symmetric)`` (``None``: not
    quantized, or disabled). The node's only user is its output quantizer.
    """

    input: fx.Node
    scale: torch.Tensor
    shift: torch.Tensor
    x: Optional[tuple[float, int, int, bool]]
    y: Optional[tuple[float, int, int, bool]]


@dataclass(frozen=True)
class MulPlan(_Fusion):
    """The product of two quantized tensors (+ output quantizer; no activation fuses): of the
    same shape, or a 4-D tensor times a per-(image, channel) gate ``[B, C, 1, 1]``.

    ``a``/``b``/``y``: the grids of the operands and of the output (``None``: not quantized or
    disabled); ``multiplier``: ``float32(s_a s_b / s_y)`` (``None`` without the grids);
    ``gate``: which operand (0 or 1) is the broadcast gate, ``None`` for equal shapes.
    """

    a: Optional[Grid]
    b: Optional[Grid]
    y: Optional[Grid]
    multiplier: Optional[float]
    gate: Optional[int]


@dataclass(frozen=True)
class AvgPool2dPlan(_Fusion):
    """A windowed or adaptive average pool of a quantized tensor (+ output quantizer; no
    activation fuses): ``args`` (:class:`~dfq_gpu.graph.ops.AvgPoolArgs`, without
    ``divisor_override``) for a windowed pool, ``None`` for an adaptive one, whose
    ``output_size`` is ``(oh, ow)`` (``None`` sides keep the input's size); ``x``/``y`` the input
    and output grids (``None``: not quantized or disabled)."""

    args: Optional[ops.AvgPoolArgs]
    x: Optional[Grid]
    y: Optional[Grid]
    output_size: Optional[tuple[Optional[int], Optional[int]]] = None


@dataclass(frozen=True)
class BilinearPlan(_Fusion):
    """A bilinear resampling of a quantized 4-D tensor (+ output quantizer; no activation fuses)
    with integer weights (:class:`~dfq_gpu.modules.QUpsampleBilinear`): ``size`` (a node computed
    at run time, a constant, or ``None``) or ``scale_factor`` (``(h, w)``), ``align_corners``,
    ``x``/``y`` the input and output grids (``None``: not quantized or disabled)."""

    size: Any
    scale_factor: Optional[tuple[float, float]]
    align_corners: bool
    x: Optional[Grid]
    y: Optional[Grid]


StepPlan = Union[LayerPlan, AddPlan, AvgPoolPlan, AvgPool2dPlan, LookupPlan, ChannelAffinePlan, MulPlan, BilinearPlan]


def _enabled_grid(fq: Any) -> Optional[Grid]:
    return Grid.of(fq) if isinstance(fq, FakeQuant) and fq.enabled else None


def module_users(gm: fx.GraphModule) -> dict[str, int]:
    """How many nodes call each module (by its path)."""
    count: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            count[str(n.target)] = count.get(str(n.target), 0) + 1
    return count


def _first(*reasons: Optional[str]) -> Optional[str]:
    return next((r for r in reasons if r is not None), None)


def _layer_plan(gm: fx.GraphModule, node: fx.Node, m: QConv2d | QLinear, shared: bool) -> LayerPlan:
    act, fq, tail = fused_output(gm, node)
    kind = layer_type(m).kind  # dfq_gpu.layers: "conv", "depthwise", "grouped", "linear"
    n_out = int(m.weight.shape[0])
    weight = m.integer_weight()
    wzp = m.w_zero_point.detach().to(torch.int64).cpu().reshape(-1)
    x = _enabled_grid(input_quantizer(gm, node))
    y = _enabled_grid(node_module(gm, fq)) if fq is not None else None
    why = _first("its module is called by several nodes" if shared else None,
                 "a layer call with extra arguments" if len(node.args) != 1 or node.kwargs else None,
                 "its input is not quantized" if x is None else None,
                 "its output quantizer is disabled" if fq is not None and y is None else None)
    rq = bound = None
    if x is not None and (fq is None or y is not None):
        try:
            rq = requant.layer_requant(x, m.w_scale, m.bias, n_out, y,
                                       node_module(gm, act) if act is not None and y is not None else None)
        except ValueError as exc:  # an activation that cannot be fused
            why = _first(why, str(exc))
        else:
            bound = requant.layer_accumulator_bound(weight - m._bcast(m.w_zero_point), x, rq.bias)
            why = _first(why, EXCEEDS_INT32 if bound > requant.INT32_MAX else None)
    return LayerPlan(node, act, fq, tail, why, kind, weight, wzp, n_out, x, y, rq, bound)


def _add_plan(gm: fx.GraphModule, node: fx.Node) -> AddPlan:
    act, fq, tail = fused_output(gm, node)
    ins = ops.tensor_inputs(node)
    shape = ops.tensor_shape(node)
    channels = shape[1] if shape is not None and len(shape) >= 2 else 1
    a = _enabled_grid(source_quantizer(gm, ins[0])) if len(ins) == 2 else None
    b = _enabled_grid(source_quantizer(gm, ins[1])) if len(ins) == 2 else None
    y = _enabled_grid(node_module(gm, fq)) if fq is not None else None
    why = _first("an add without two tensor inputs" if len(ins) != 2 else None,
                 "an add of tensors of different shapes (broadcasting)" if len(ins) == 2 and
                 (ops.tensor_shape(ins[0]) != ops.tensor_shape(ins[1]) or shape is None) else None,
                 "an operand is not quantized" if a is None or b is None else None,
                 # the int8 network adds the two dequantized tensors in float32, as the simulation does
                 "its result is the float network output" if fq is None else None,
                 "its output quantizer is disabled" if y is None else None)
    rq = bound = None
    if a is not None and b is not None and y is not None:
        try:
            rq = requant.add_requant(a, b, y, node_module(gm, act) if act is not None else None, channels)
        except ValueError as exc:  # an activation that cannot be fused
            why = _first(why, str(exc))
        else:
            bound = (max(abs(a.qmin - a.zero_point), abs(a.qmax - a.zero_point)) * abs(rq.ia)
                     + max(abs(b.qmin - b.zero_point), abs(b.qmax - b.zero_point)) * abs(rq.ib))
            why = _first(why, EXCEEDS_INT32 if bound > requant.INT32_MAX else None)
    return AddPlan(node, act, fq, tail, why, a, b, y, channels, rq, bound)


def _avgpool_plan(gm: fx.GraphModule, node: fx.Node) -> AvgPoolPlan:
    act, fq, tail = fused_output(gm, node)
    problem = global_avgpool_problem(gm, node)
    x = _enabled_grid(source_quantizer(gm, node.args[0])) if node.args else None
    y = _enabled_grid(node_module(gm, fq)) if fq is not None else None
    shape_in = (ops.tensor_shape(node.args[0]) if node.args else None) or (1, 1, 1, 1)
    hw = int(shape_in[2] * shape_in[3]) if len(shape_in) == 4 else 1
    keepdim = len(ops.tensor_shape(node) or ()) == 4
    why = _first(problem,
                 "its input is not quantized" if x is None else None,
                 "an activation after average pooling" if act is not None else None,
                 EXCEEDS_INT32 if x is not None and hw * x.max_abs > requant.INT32_MAX else None,
                 "its output quantizer is disabled" if fq is not None and y is None else None)
    return AvgPoolPlan(node, act, fq, tail, why, x, y, hw, keepdim)


def _fq_spec(fq: Any) -> Optional[tuple[float, int, int, bool]]:
    if not isinstance(fq, FakeQuant) or not fq.enabled:
        return None
    return float(fq.scale), int(round(float(fq.zero_point))), int(fq.bits), bool(fq.symmetric)


def lookup_spec(gm: fx.GraphModule, node: fx.Node) -> Optional[tuple[str, dict]]:
    """``(fn, fn_kwargs)`` if ``node`` is an elementwise activation an integer network computes by
    a table (a :class:`~dfq_gpu.modules.QLookup`, or an activation of :data:`dfq_gpu.nn.ELEMENTWISE`)."""
    m = node_module(gm, node)
    if isinstance(m, QLookup):
        return m.fn, dict(m.fn_kwargs)
    return ops.elementwise_activation(gm, node)


def _lookup_plan(gm: fx.GraphModule, node: fx.Node, spec: tuple[str, dict], shared: bool) -> LookupPlan:
    users = list(node.users)
    fq = users[0] if len(users) == 1 and isinstance(node_module(gm, users[0]), FakeQuant) else None
    x = _fq_spec(source_quantizer(gm, node.args[0] if node.args else None))
    y = _fq_spec(node_module(gm, fq)) if fq is not None else None
    why = _first("its module is called by several nodes" if shared else None,
                 "its input is not quantized" if x is None else None,
                 "its result is not quantized (no quantizer right after it)" if fq is None else None,
                 "its output quantizer is disabled" if fq is not None and y is None else None)
    return LookupPlan(node, None, fq, fq if fq is not None else node, why, spec[0], spec[1], x, y)


#: call_function targets and call_method names of the elementwise ops with a constant operand that
#: can be per-channel affine maps
_AFFINE_OPS: dict[Any, str] = {operator.mul: "mul", torch.mul: "mul", "mul": "mul", "mul_": "mul",
                               operator.add: "add", torch.add: "add", "add": "add", "add_": "add",
                               operator.sub: "sub", torch.sub: "sub", "sub": "sub", "sub_": "sub"}


def _constant(gm: fx.GraphModule, node: Any) -> Optional[torch.Tensor]:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in str(node.target).split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) and obj.is_floating_point() else None


@torch.no_grad()
def channel_affine_spec(gm: fx.GraphModule, node: fx.Node) -> Optional[tuple[fx.Node, torch.Tensor, torch.Tensor]]:
    """``(input, scale, shift)`` (float32 ``[C]``) if ``node`` maps the channels (dimension 1) of
    a 4-D tensor each by its own affine function: a :class:`~dfq_gpu.modules.QChannelAffine`, a
    ``BatchNorm2d`` in eval mode with running statistics, or a multiply, add or subtraction
    (tensor first) of a constant ``[C, 1, 1]`` / ``[1, C, 1, 1]`` tensor (a ``get_attr``)."""
    m = node_module(gm, node)
    x = node.args[0] if node.args else None
    if isinstance(m, QChannelAffine):
        return (x, m.scale, m.shift) if isinstance(x, fx.Node) else None
    shape = ops.tensor_shape(x) if isinstance(x, fx.Node) else None
    if isinstance(m, nn.BatchNorm2d):
        if (m.training or m.running_mean is None or m.running_var is None or shape is None or len(shape) != 4
                or len(node.args) != 1 or node.kwargs):
            return None
        inv = torch.rsqrt(m.running_var.double() + m.eps)
        w = m.weight.double() if m.weight is not None else torch.ones_like(inv)
        b = m.bias.double() if m.bias is not None else torch.zeros_like(inv)
        scale = w * inv
        return x, scale.float(), (b - m.running_mean.double() * scale).float()
    fn = _AFFINE_OPS.get(node.target) if node.op in ("call_function", "call_method") else None
    if fn is None or len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    if fn == "sub" or _constant(gm, b) is not None:
        x, c = a, _constant(gm, b)
    else:
        x, c = b, _constant(gm, a)
    shape = ops.tensor_shape(x) if isinstance(x, fx.Node) else None
    if c is None or shape is None or len(shape) != 4 or ops.tensor_shape(node) != shape:
        return None
    channels = shape[1]
    if tuple(c.shape) not in ((channels, 1, 1), (1, channels, 1, 1)):
        return None
    c = c.detach().reshape(-1).to(torch.float32).cpu()
    if fn == "mul":
        return x, c.clone(), torch.zeros_like(c)
    return x, torch.ones_like(c), (c if fn == "add" else -c).clone()


def _channel_affine_plan(gm: fx.GraphModule, node: fx.Node, spec: tuple[fx.Node, torch.Tensor, torch.Tensor],
                         shared: bool) -> ChannelAffinePlan:
    x_node, scale, shift = spec
    users = list(node.users)
    fq = users[0] if len(users) == 1 and isinstance(node_module(gm, users[0]), FakeQuant) else None
    x = _fq_spec(source_quantizer(gm, x_node))
    y = _fq_spec(node_module(gm, fq)) if fq is not None else None
    finite = bool(torch.isfinite(scale).all() and torch.isfinite(shift).all())
    why = _first("its module is called by several nodes" if shared else None,
                 "its input is not quantized" if x is None else None,
                 "its result is not quantized (no quantizer right after it)" if fq is None else None,
                 "its output quantizer is disabled" if fq is not None and y is None else None,
                 "a per-channel factor or offset that is not finite" if not finite else None)
    return ChannelAffinePlan(node, None, fq, fq if fq is not None else node, why, x_node, scale, shift, x, y)


def bilinear_spec(gm: fx.GraphModule, node: fx.Node) -> Optional[tuple[Any, Optional[tuple[float, float]], bool]]:
    """``(size, scale_factor, align_corners)`` if ``node`` resamples bilinearly (a
    :class:`~dfq_gpu.modules.QUpsampleBilinear`, or :func:`dfq_gpu.graph.ops.bilinear_upsample_args`),
    ``scale_factor`` as an ``(h, w)`` pair."""
    m = node_module(gm, node)
    if isinstance(m, QUpsampleBilinear):
        size = node.args[1] if len(node.args) > 1 else m.size
        return size, m.scale_factor, m.align_corners
    args = ops.bilinear_upsample_args(gm, node)
    if args is None:
        return None
    size, scale, corners = args
    if scale is not None:
        scale = (float(scale[0]), float(scale[1])) if isinstance(scale, (tuple, list)) else (float(scale),) * 2
    return size, scale, corners


def _bilinear_plan(gm: fx.GraphModule, node: fx.Node, spec: tuple[Any, Optional[tuple[float, float]], bool]
                   ) -> BilinearPlan:
    act, fq, tail = fused_output(gm, node)
    x = _enabled_grid(source_quantizer(gm, node.args[0])) if node.args else None
    y = _enabled_grid(node_module(gm, fq)) if fq is not None else None
    why = _first("its input is not quantized" if x is None else None,
                 "an activation after resampling" if act is not None else None,
                 "its result is not quantized" if fq is None else None,
                 "its output quantizer is disabled" if fq is not None and y is None else None)
    return BilinearPlan(node, act, fq, tail, why, spec[0], spec[1], spec[2], x, y)


def _avgpool2d_plan(gm: fx.GraphModule, node: fx.Node, args: Optional[ops.AvgPoolArgs],
                    output_size: Optional[tuple[Optional[int], Optional[int]]] = None) -> AvgPool2dPlan:
    """The plan of a windowed pool (``args``) or of an adaptive one (``output_size``)."""
    act, fq, tail = fused_output(gm, node)
    x = _enabled_grid(source_quantizer(gm, node.args[0])) if node.args else None
    y = _enabled_grid(node_module(gm, fq)) if fq is not None else None
    shape = ops.tensor_shape(node.args[0]) if node.args else None
    four_d = shape is not None and len(shape) == 4
    window = 0  # the most taps a window sums
    if args is not None:
        window = args.kernel[0] * args.kernel[1]
    elif four_d and output_size is not None:
        oh, ow = kref.adaptive_output_size(shape[2:], output_size)
        window = kref.adaptive_window_max(shape[2], oh) * kref.adaptive_window_max(shape[3], ow)
    why = _first(None if four_d else "average pooling of a tensor that is not 4-D",
                 "average pooling with divisor_override" if args is not None and args.divisor_override is not None
                 else None,
                 "its input is not quantized" if x is None else None,
                 "an activation after average pooling" if act is not None else None,
                 "its result is not quantized" if fq is None else None,
                 "its output quantizer is disabled" if fq is not None and y is None else None,
                 EXCEEDS_INT32 if x is not None and window * x.max_abs > requant.INT32_MAX else None)
    return AvgPool2dPlan(node, act, fq, tail, why, args, x, y, output_size)


def _adaptive_output_size(gm: fx.GraphModule, node: fx.Node) -> Optional[tuple[Optional[int], Optional[int]]]:
    """An adaptive average pool's output size as a pair (``None`` sides keep the input's size),
    else ``None`` (not an adaptive average pool, or a size PyTorch would refuse)."""
    size = ops.adaptive_avg_pool_size(gm, node)
    try:
        return None if size is None else kref.normalize_adaptive_size(size)
    except ValueError:
        return None


def _mul_plan(gm: fx.GraphModule, node: fx.Node) -> MulPlan:
    act, fq, tail = fused_output(gm, node)
    ins = ops.tensor_inputs(node)
    shapes = [ops.tensor_shape(n) for n in ins]
    gate = None
    shape_why = None
    if len(ins) != 2:
        shape_why = "a multiply without two tensor inputs"
    elif shapes[0] is None or shapes[1] is None:
        shape_why = "no shape information"
    elif shapes[0] != shapes[1]:
        for g in (0, 1):
            full, small = shapes[1 - g], shapes[g]
            if len(full) == 4 and len(small) == 4 and small[:2] == full[:2] and small[2:] == (1, 1):
                gate = g
        if gate is None:
            shape_why = f"a multiply of shapes {shapes[0]} and {shapes[1]} (only equal shapes or a [B, C, 1, 1] gate)"
    elif len(shapes[0]) != 4:
        shape_why = "a multiply of tensors that are not 4-D"
    a = _enabled_grid(source_quantizer(gm, ins[0])) if len(ins) == 2 else None
    b = _enabled_grid(source_quantizer(gm, ins[1])) if len(ins) == 2 else None
    y = _enabled_grid(node_module(gm, fq)) if fq is not None else None
    why = _first(shape_why,
                 "an operand is not quantized" if a is None or b is None else None,
                 "an activation after a multiply" if act is not None else None,
                 "its result is not quantized" if fq is None else None,
                 "its output quantizer is disabled" if fq is not None and y is None else None)
    m = None
    if a is not None and b is not None and y is not None:
        m = requant.mul_multiplier(a.scale, b.scale, y.scale)
        if a.max_abs * b.max_abs > requant.INT32_MAX:
            why = _first(why, EXCEEDS_INT32)
    return MulPlan(node, act, fq, tail, why, a, b, y, m, gate)


@torch.no_grad()
def build_plan(gm: fx.GraphModule) -> dict[str, StepPlan]:
    """The plan of every int8 step of the quantized graph ``gm``, by node name, in graph order:
    a :class:`LayerPlan` for each ``QConv2d`` / ``QLinear`` node, an :class:`AddPlan` for each
    residual add (``QAdd`` or a tensor add), an :class:`AvgPoolPlan` for each average pool
    (``QAvgPool`` or a float average pooling)."""
    users = module_users(gm)
    plan: dict[str, StepPlan] = {}
    fused: set[fx.Node] = set()  # activations fused into the step before them
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        if isinstance(m, QUANTIZED_LAYER_TYPES):
            plan[node.name] = _layer_plan(gm, node, m, users.get(str(node.target), 0) > 1)
        elif (affine := channel_affine_spec(gm, node)) is not None:
            plan[node.name] = _channel_affine_plan(gm, node, affine, node.op == "call_module"
                                                   and users.get(str(node.target), 0) > 1)
        elif (bilinear := bilinear_spec(gm, node)) is not None:
            plan[node.name] = _bilinear_plan(gm, node, bilinear)
        elif isinstance(m, QAdd) or ops.is_add(node):
            plan[node.name] = _add_plan(gm, node)
        elif isinstance(m, QAvgPool2d):
            plan[node.name] = _avgpool2d_plan(gm, node, ops.AvgPoolArgs(m.kernel, m.stride, m.padding, m.ceil_mode,
                                                                        m.count_include_pad, None))
        elif isinstance(m, QAdaptiveAvgPool2d):
            plan[node.name] = _avgpool2d_plan(gm, node, None, m.output_size)
        elif isinstance(m, QAvgPool) or ops.is_spatial_pool(gm, node) == "avg":
            window = ops.avg_pool_args(gm, node)
            adaptive = _adaptive_output_size(gm, node) if window is None else None
            if (window is not None or adaptive is not None) and global_avgpool_problem(gm, node) is not None:
                plan[node.name] = _avgpool2d_plan(gm, node, window, adaptive)
            else:
                plan[node.name] = _avgpool_plan(gm, node)
        elif isinstance(m, QMul) or ops.is_mul(node):
            plan[node.name] = _mul_plan(gm, node)
        elif node not in fused and (spec := lookup_spec(gm, node)) is not None:
            plan[node.name] = _lookup_plan(gm, node, spec, node.op == "call_module"
                                           and users.get(str(node.target), 0) > 1)
        p = plan.get(node.name)
        if p is not None and p.act is not None:
            fused.add(p.act)
    return plan


# =============================================================================================
# Residual adds fused into the layer that produces one operand
# =============================================================================================
@dataclass(frozen=True)
class ResidualFusion:
    """A residual add computed in the epilogue of the layer that produces one of its operands
    (``kernels.reference.ResidualAdd``): ``add`` and ``layer`` are node names, ``operand`` (0 or
    1) the position of the layer's output among the add's tensor inputs."""

    add: str
    layer: str
    operand: int


def _epilogue_fusable(gm: fx.GraphModule, lp: LayerPlan) -> bool:
    """The layer runs on the GEMM or implicit-GEMM convolution kernel, whose ``[M, N]`` output
    the residual tile follows row for row: a linear layer (not on a 4-D tensor, which it takes in
    NCHW order), or a dense (groups 1), undilated, zero-padded convolution of any kernel size,
    stride and padding (a zero padding in front merges into the convolution's own). Depthwise,
    grouped and dilated convolutions run on other kernels (or in pieces) and do not fuse."""
    m = node_module(gm, lp.node)
    if lp.kind == "linear":
        shape = ops.tensor_shape(lp.node)
        return isinstance(m, QLinear) and shape is not None and len(shape) != 4
    if lp.kind != "conv" or not isinstance(m, QConv2d):
        return False
    return tuple(m.dilation) == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"


def residual_fusions(gm: fx.GraphModule, plan: dict[str, StepPlan]) -> dict[str, ResidualFusion]:
    """Which residual adds the int8 network computes in the epilogue of the layer producing one
    of their operands, by add name (the one place that decides it; :func:`dfq_gpu.to_int8`
    follows it unless ``fuse_residual=False``).

    An add fuses when it computes in integers with an int8 output (its plan has no
    ``float_reason``: two quantized operands of one shape, an output quantizer, i.e. not the
    float network output) and one operand is the output quantizer (the ``tail``) of an integer
    convolution or linear layer whose int8 output has no other user, running on the GEMM or the
    convolution kernel (a linear layer, or a dense convolution of any kernel size, stride and
    padding: not grouped, dilated or depthwise). When both operands qualify, the first one is
    taken. The fused step computes the layer's int8 output exactly as without fusion and applies
    the add's integer contract to it in the same epilogue, so the result is the separate layer
    and add's, bit for bit."""
    producers = {p.tail: p for p in plan.values() if isinstance(p, LayerPlan) and p.quantizer is not None}
    out: dict[str, ResidualFusion] = {}
    for name, p in plan.items():
        if not isinstance(p, AddPlan) or p.float_reason is not None or p.quantizer is None or p.requant is None:
            continue
        ins = ops.tensor_inputs(p.node)
        if len(ins) != 2 or ins[0] is ins[1]:
            continue
        for i, src in enumerate(ins):
            lp = producers.get(src)
            if (lp is not None and lp.tail is lp.quantizer and lp.float_reason is None and lp.requant is not None
                    and len(src.users) == 1 and _epilogue_fusable(gm, lp)):
                out[name] = ResidualFusion(name, lp.name, i)
                break
    return out


# =============================================================================================
# The input quantization fused into the first convolution
# =============================================================================================
@dataclass(frozen=True)
class StemFusion:
    """A convolution that quantizes the float network input itself (``kernels.stem``): ``layer``
    is its node name, ``quantizer`` the name of the input's ``FakeQuant`` node."""

    layer: str
    quantizer: str


def stem_fusions(gm: fx.GraphModule, plan: dict[str, StepPlan],
                 residual: Optional[dict[str, ResidualFusion]] = None) -> dict[str, StemFusion]:
    """Which convolutions the int8 network computes straight from the float network input, by
    layer name (the one place that decides it; :func:`dfq_gpu.to_int8` follows it unless
    ``fuse_stem=False``): the input quantizer and an im2col matrix of the quantized input in one
    kernel, then the GEMM.

    A convolution fuses when its input is the ``FakeQuant`` of a 4-D network input (a placeholder),
    possibly through one zero padding, and that quantizer (and the padding) has no other user but
    shape queries (``x.size()``, which the converter answers from the float input); the
    convolution is an integer one (no ``float_reason``), dense (groups 1), undilated, zero-padded,
    on fewer than ``kernels.reference.IM2COL_MAX_CHANNELS`` input channels (an RGB stem: the
    channel counts the convolution kernel could only gather byte-wise), and does not fuse a
    residual add (``residual``, the add fusions by add name)."""
    with_residual = {f.layer for f in (residual or {}).values()}
    out: dict[str, StemFusion] = {}
    for name, p in plan.items():
        if not isinstance(p, LayerPlan) or p.kind != "conv" or p.float_reason is not None or p.requant is None \
                or name in with_residual:
            continue
        m = node_module(gm, p.node)
        if not isinstance(m, QConv2d) or m.in_channels >= IM2COL_MAX_CHANNELS or not _epilogue_fusable(gm, p):
            continue
        src = p.node.args[0] if p.node.args else None
        if isinstance(src, fx.Node) and ops.is_zero_pad(gm, src) and len(src.users) == 1:
            src = src.args[0]
        if not isinstance(src, fx.Node) or not isinstance(node_module(gm, src), FakeQuant) \
                or sum(not ops.is_shape_query(u) for u in src.users) != 1:
            continue
        inp = src.args[0] if src.args else None
        shape = ops.tensor_shape(inp) if isinstance(inp, fx.Node) else None
        if isinstance(inp, fx.Node) and inp.op == "placeholder" and shape is not None and len(shape) == 4:
            out[name] = StemFusion(name, src.name)
    return out


# =============================================================================================
# A depthwise convolution and the 1x1 convolution after it in one kernel
# =============================================================================================
@dataclass(frozen=True)
class DepthwiseProjectFusion:
    """A depthwise convolution computed inside the step of the 1x1 convolution that reads its int8
    output (``kernels.dwproject``): ``depthwise`` and ``project`` are node names."""

    depthwise: str
    project: str


def _is_pointwise(m: Any) -> bool:
    return (isinstance(m, QConv2d) and tuple(m.kernel_size) == (1, 1) and ops.pair(m.stride) == (1, 1)
            and not isinstance(m.padding, str) and ops.pair(m.padding) == (0, 0) and m.groups == 1)


def depthwise_project_fusions(gm: fx.GraphModule, plan: dict[str, StepPlan]) -> dict[str, DepthwiseProjectFusion]:
    """Which depthwise convolutions the int8 network computes in the step of the 1x1 convolution
    after them, by project name (the one place that decides it; :func:`dfq_gpu.to_int8` follows it
    with ``fuse_depthwise=True``): the inverted-residual block's depthwise -> project pair, whose
    intermediate int8 tensor then never reaches memory.

    The depthwise convolution (undilated, zero-padded, integer: no ``float_reason``) ends in its
    own output quantizer, whose only user is an integer 1x1 convolution (stride 1, unpadded,
    groups 1; its residual add may be fused into it too). The fused step computes the depthwise
    layer's int8 output exactly and feeds it to the 1x1 convolution in registers, so the result is
    the two steps' bit for bit."""
    out: dict[str, DepthwiseProjectFusion] = {}
    by_node = {p.node: p for p in plan.values() if isinstance(p, LayerPlan)}
    for name, p in plan.items():
        if not isinstance(p, LayerPlan) or p.kind != "depthwise" or p.float_reason is not None or p.requant is None \
                or p.quantizer is None or p.tail is not p.quantizer or len(p.tail.users) != 1:
            continue
        m = node_module(gm, p.node)
        if not isinstance(m, QConv2d) or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros":
            continue
        user = next(iter(p.tail.users))
        q = by_node.get(user)
        if q is None or q.kind != "conv" or q.float_reason is not None or q.requant is None \
                or not _is_pointwise(node_module(gm, user)):
            continue
        out[q.name] = DepthwiseProjectFusion(name, q.name)
    return out
