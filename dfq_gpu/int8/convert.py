"""From the simulated quantized network to an integer network: :func:`to_int8`.

:func:`dfq_gpu.quantize` returns a ``torch.fx`` graph that *simulates* integer execution in
float (``FakeQuant`` after every tensor the integer network stores, quantize-dequantized
weights, biases on the int32 grid). :func:`to_int8` reads that graph and builds a new one whose
activations stay int8 (NHWC) from the input quantizer to the final dequantization, calling the
``dfq_int8`` kernels (see ``kernels/README.md`` for the integer contract): on the Triton path,
outside ``torch.compile``/``torch.export`` tracing, each step launches its kernel directly from a
launch plan bound once; otherwise it calls the ``torch.ops.dfq_int8`` custom op.

How each node of the simulation is mapped
-----------------------------------------
* placeholder + ``FakeQuant``: :class:`~dfq_gpu.int8.layers.QuantizeInput` (NCHW float ->
  NHWC int8, the same float32 reciprocal as ``FakeQuant``).
* ``QConv2d`` / ``QLinear`` [+ ReLU / ReLU6 / Hardtanh / ChannelClamp] + ``FakeQuant``: one
  kernel call with the requantization epilogue ``clamp(rne(float32(acc) * m) + z_y, lo, hi)``,
  ``m = float32(s_x s_w / s_y)`` (per tensor or per output channel), the activation fused into
  ``lo``/``hi``, the int32 bias folded with the input zero point. Dense convolutions use
  ``int8_conv2d`` (weights ``[N, KH, KW, C]``), depthwise ones ``int8_depthwise_conv2d``
  (``[KH, KW, C]``), linear layers ``int8_gemm``. A ``ZeroPad2d`` in front of a convolution is
  merged into the kernel's (top, bottom, left, right) padding (padded taps hold the input zero
  point, i.e. real zero, as in the simulation).
* a layer without an output quantizer (the network output): the kernel returns its int32
  accumulator, which becomes ``float32(acc) * float32(s_x s_w)`` (the bias is part of ``acc``);
  an activation after it is applied in float.
* residual add (``QAdd``, or an ``operator.add``) [+ activation] + ``FakeQuant``: ``int8_add``
  with integer multipliers ``ia, ib`` (at most ``2^15``) whose ratio is the best rational
  approximation of ``s_a / s_b`` (:func:`dfq_gpu.quant.requant.add_multipliers`); per-tensor
  bounds are fused, per-channel ones that differ between channels follow as an exact integer
  clamp. An add whose result is the float network output adds the two dequantized tensors.
* by default (``to_int8(..., fuse_residual=False)`` turns it off): a residual add whose operand
  is the int8 output of a dense convolution (groups 1, undilated; any kernel size, stride and
  padding, e.g. the 3x3 convolution of a ResNet basic block) or a linear layer with no other user
  (the one decision, :func:`dfq_gpu.quant.plan.residual_fusions`) is computed by that layer's step
  (``Int8Conv2d``/``Int8Linear`` with ``residual``, called on the layer's input and the add's
  other operand, named after the layer): on the Triton path one convolution or GEMM launch with
  the add in its epilogue (``kernels.conv.ConvPlan``/``kernels.gemm.GemmPlan(..., residual=...)``),
  so the layer's int8 output is never written to memory; otherwise the layer then ``int8_add``.
  The per-channel clamp follows either way. The result is the separate steps' bit for bit; the
  step's ``sim_quantizer`` is the add's quantizer, the layer's own (``layer_quantizer``) is not
  materialized, so ``Int8Network.activations`` and ``compare_with_simulation`` have no entry for
  it, and ``Int8Network.coverage.fused`` lists the fused adds.
* by default (``to_int8(..., fuse_stem=False)`` turns it off): the first convolution, when it
  reads the quantized network input (through a zero padding at most) and nothing else does, on
  fewer than 16 channels (the one decision, :func:`dfq_gpu.quant.plan.stem_fusions`), quantizes
  the float input itself (:class:`~dfq_gpu.int8.layers.Int8StemConv2d`): on the Triton path one
  quantize-and-im2col launch and a GEMM (``kernels.stem``); otherwise ``QuantizeInput`` then the
  convolution. The same integers; the input quantizer's activation is not materialized
  (``Int8Network.coverage.stem`` names the convolution).
* with ``to_int8(..., fuse_depthwise=True)``: a depthwise convolution whose int8 output only a
  1x1 convolution reads (:func:`dfq_gpu.quant.plan.depthwise_project_fusions`) is computed in that
  convolution's step (:class:`~dfq_gpu.int8.layers.Int8DepthwiseProjectConv2d`, called on the
  depthwise input): one ``kernels.dwproject`` launch on the Triton path, the two steps otherwise.
  The same integers; the depthwise output's quantizer is not materialized
  (``Int8Network.coverage.depthwise`` lists the pairs).
* global average pooling (``QAvgPool``, ``AdaptiveAvgPool2d(1)``, ``F.adaptive_avg_pool2d(x, 1)``,
  ``x.mean((2, 3))``, an ``AvgPool2d`` covering the whole input) + ``FakeQuant``: ``int8_avgpool``
  with ``m = float32((s_x / s_y) / (H W))``; as the float network output,
  ``float32(sum (x - z_x)) * float32(s_x / (H W))``.
* ``MaxPool2d`` / ``F.max_pool2d``: ``int8_maxpool2d`` (values and quantization unchanged);
  ``AdaptiveMaxPool2d(1)``: a max over H and W.
* ``view`` / ``reshape`` / ``flatten`` / ``squeeze`` / ``contiguous``: the int8 values are moved
  unchanged; a flatten of an NHWC tensor with ``H W > 1`` is taken in NCHW order, as in the
  simulation. ``x.size()`` / ``x.shape`` report NCHW sizes, and arithmetic on such Python values
  is copied as it is.
* ``QLookup`` (an activation with no integer form between two quantizers) + ``FakeQuant``:
  ``int8_lut`` with the simulation's table; a ``FakeQuant`` on an int8 tensor (a second
  quantizer): the table of that requantization.
* ``QChannelAffine`` (a batch norm left in the network, a constant per-channel factor) +
  ``FakeQuant``: ``int8_lut`` with the simulation's per-channel tables (``[C, 256]``).
* ``QMul`` (the squeeze-excitation gate, elementwise products) + ``FakeQuant``: ``int8_mul``.
* ``torch.cat`` along channels + ``FakeQuant``: each input mapped into its slice of the output by
  its requantization table (``int8_lut`` with an output offset), or copied when on the output's
  grid; other concatenations and the ops that only move values (view, transpose, chunk,
  getitem, ...) run on the int8 tensors in NCHW order, their quantization unchanged.
* grouped convolutions: one dense convolution per group; dilated convolutions (stride 1): the
  input's phases convolved without dilation; ``QAvgPool2d``: ``int8_avgpool2d``;
  ``QAdaptiveAvgPool2d``: ``int8_adaptive_avgpool2d``; nearest upsampling: ``int8_upsample_nearest``;
  ``QUpsampleBilinear``: ``int8_upsample_bilinear``;
  linear layers on ``[..., K]``.
* anything else (with ``fallback=True``, the default): the simulation's own module or function,
  in float32, on the dequantized values of its int8 inputs (contiguous NCHW, bit-identical to
  the simulation's), its result quantized at the simulation's next ``FakeQuant`` (the
  simulation's arithmetic, so the result is the simulation's); ``Int8Network.coverage`` lists
  these nodes with the reason.
* output: int8 tensors are dequantized (``(q - z) * s`` in float32, bit-identical to the
  simulation's last ``FakeQuant``), 4-D results are returned as NCHW.

Integer parameters
------------------
What fuses with what (a layer, add or pool with its clamp activation and output quantizer) and
the bias, multipliers, clamp bounds and add multipliers come from the fusion plan
(:func:`dfq_gpu.quant.plan.build_plan`, parameters from :mod:`dfq_gpu.quant.requant`), the
same plan the simulation computes with (:func:`dfq_gpu.quant.simulate.make_integer_exact`);
this module checks what the int8 kernels can run and only maps the parameters to the int8
storage: activations on the asymmetric grid ``[0, 2^b - 1]`` are stored as ``q - 128`` with
zero point ``z - 128`` (``[-128, 127]`` for 8 bits), and so are their clamp bounds; symmetric
activations as they are. Weights the same (``integer_weight() - 128`` with zero point
``w_zero_point - 128`` when asymmetric; symmetric weights get no zero point at all, which the
kernels compile out). The bias is ``round(bias / (s_x s_w))`` in int32: the simulation already
rounded it to that grid, so this recovers its integers exactly (while below 2^24 grid steps,
which the float32 bias holds exactly). A clamp bound ``b`` of a fused activation becomes
``clamp(round(float32(b) * (1 / s_y)) + z_y, qmin, qmax)``, computed in float32 exactly as the
output ``FakeQuant`` would quantize ``b`` (``+-inf`` become the ends of the grid).

The integer network and the simulation
--------------------------------------
The simulation computes every quantized layer, residual add and global average pool with the
integer network's arithmetic: the exact integer accumulator and the same epilogue
(:mod:`dfq_gpu.modules`), so the two produce the same integers, and the integer network's
output is bit-identical to the simulation's (``tests/test_int8.py``: Fashion-MNIST,
EfficientNet-Lite0 on the ImageNet sample, per-channel, symmetric and 4-bit quantization).
Input quantization, fused activation bounds, zero padding, max pooling and the final
dequantization were bit-identical already. :func:`dfq_gpu.int8.compare_with_simulation`
checks it step by step. The simulation is therefore also independent of the batch size and of
the convolution algorithms of the machine it runs on.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import operator
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

import kernels

from ..errors import DFQError
from ..graph import ops
from ..graph.trace import node_module
from ..layers import is_layer_module
from ..modules import (QUANTIZED_LAYER_TYPES, QAdaptiveAvgPool2d, QAdd, QAvgPool, QAvgPool2d, QChannelAffine, QConv2d,
                       QLinear, QLookup, QMul, QUpsampleBilinear)
from ..nn import FakeQuant, grid_values
from ..quant import requant
from ..quant.requant import add_multipliers  # noqa: F401  (re-exported: the add multipliers of the converter)
from ..quant.plan import (FUSABLE_ACTS, AddPlan, AvgPool2dPlan, AvgPoolPlan, BilinearPlan, ChannelAffinePlan, LayerPlan,
                          LookupPlan, MulPlan, ResidualFusion, StemFusion, StepPlan, DepthwiseProjectFusion,
                          build_plan, depthwise_project_fusions,
                          global_avgpool_problem, is_passthrough, residual_fusions, stem_fusions)
from ..quant.simulate import stale_integer_steps
from . import layers as L
from . import padding
from .coverage import Coverage, measure_coverage

__all__ = ["to_int8", "Int8ConversionError", "Int8Network", "Coverage"]

log = logging.getLogger(__name__)

INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class LayerStep:
    """How the converter builds the int8 step of one layer kind: ``method`` (of the converter,
    called as ``method(node, m, plan, x, w8, w_zero_point, requant, sim_quantizer, epilogue)``,
    returning the step and its output rank) and whether its input may keep a pending zero pad
    (folded into the kernel's padding)."""

    method: str
    keep_pad: bool


# The int8 step of each layer kind (dfq_gpu.layers.LayerType.kind); a grouped convolution that
# is not depthwise has no kernel (conv_step says so).
INT8_STEPS: dict[str, LayerStep] = {
    "conv": LayerStep("conv_step", keep_pad=True),
    "depthwise": LayerStep("conv_step", keep_pad=True),
    "grouped": LayerStep("conv_step", keep_pad=True),
    "linear": LayerStep("linear_step", keep_pad=False),
}
# The convolution kinds with a kernel: the int8 step and the weight layout it takes.
CONV_KERNELS: dict[str, tuple[type, Any]] = {
    "conv": (L.Int8Conv2d, kernels.conv_weight_to_nhwc),
    "depthwise": (L.Int8DepthwiseConv2d, kernels.depthwise_weight_to_hwc),
    "grouped": (L.Int8GroupedConv2d, kernels.conv_weight_to_nhwc),
}


# Ops that only move values: run on int8 tensors as they are (Converter.movement).
_MOVEMENT_METHODS = frozenset({"view", "reshape", "transpose", "permute", "contiguous", "flatten", "chunk", "split",
                               "squeeze", "unsqueeze", "unbind", "narrow", "expand", "repeat", "flip"})
_MOVEMENT_FUNCTIONS = frozenset({torch.transpose, torch.permute, torch.flatten, torch.reshape, torch.chunk, torch.split,
                                 torch.squeeze, torch.unsqueeze, torch.unbind, torch.narrow, torch.cat, torch.concat,
                                 torch.stack, torch.flip, operator.getitem, torch.channel_shuffle,
                                 F.pixel_shuffle, F.pixel_unshuffle})


class Int8ConversionError(ValueError):
    """The simulated network contains something the integer network cannot execute; the message
    names the node and the reason (``reason``: the reason alone)."""

    def __init__(self, message: str, reason: Optional[str] = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


# =============================================================================================
# Values flowing through the conversion
# =============================================================================================
@dataclass(frozen=True)
class _QParams:
    """Per-tensor activation quantization in the int8 domain."""

    scale: float  # the float32 value of FakeQuant.scale
    zero_point: int  # int8-domain zero point
    lo: int  # int8-domain grid ends
    hi: int
    sim_quantizer: str  # name of the FakeQuant node of the simulation
    grid: requant.Grid  # the quantizer's own grid (what dfq_gpu.quant.requant computes on)
    offset: int  # grid value - int8 value


@dataclass(frozen=True)
class _Val:
    """What a simulation node has become in the integer graph.

    kind: ``"int8"`` (int8 tensor, NHWC when 4-D), ``"float"`` (float tensor, NHWC when 4-D),
    ``"input"`` (the float network input, NCHW), ``"sim"`` (a value of a part of the network
    that runs in float: exactly the simulation's tensor, NCHW), ``"other"`` (a Python value, e.g.
    a size).
    ``pad``: a zero padding (top, bottom, left, right) not yet applied (merged into the next
    convolution when there is one).
    """

    node: fx.Node
    kind: str
    q: Optional[_QParams] = None
    rank: Optional[int] = None
    pad: Optional[tuple[int, int, int, int]] = None


@dataclass
class _DeferredLayer:
    """A layer whose residual add fuses into it (:func:`dfq_gpu.quant.plan.residual_fusions`): its
    step is built when the add is reached (the add's other operand may be computed after the
    layer), or, if anything reads the layer's own output first, emitted unfused then.

    ``build(sim_quantizer, epilogue)`` builds the layer's step (``(module, rank)``)."""

    node: fx.Node
    act: Optional[fx.Node]
    fq: fx.Node
    x: "_Val"
    qp: "_QParams"
    epi: dict
    build: Any


def _act_offset(symmetric: bool) -> int:
    """Shift from the simulation's grid to int8: asymmetric grids start at 0, int8 at -128."""
    return 0 if symmetric else 128


def _fq_params(name: str, fq: FakeQuant) -> _QParams:
    if not fq.enabled:
        raise Int8ConversionError(f"activation quantizer '{name}' is disabled (FakeQuant.enabled=False): the "
                                  "integer network needs every quantizer of the simulation")
    if fq.bits > 8:
        raise Int8ConversionError(f"activation quantizer '{name}' has {fq.bits} bits: the int8 kernels take at "
                                  "most 8-bit activations")
    off = _act_offset(fq.symmetric)
    z = int(round(float(fq.zero_point))) - off
    lo, hi = int(fq.qmin) - off, int(fq.qmax) - off
    if not (INT8_MIN <= lo <= z <= hi <= INT8_MAX):
        raise Int8ConversionError(f"activation quantizer '{name}': zero point {int(float(fq.zero_point))} on the "
                                  f"grid [{fq.qmin}, {fq.qmax}] does not map into int8")
    return _QParams(float(fq.scale), z, lo, hi, name, requant.Grid.of(fq), off)


def requant_table(src: _QParams, fq: FakeQuant, fn: Any, out: _QParams) -> torch.Tensor:
    """The int8 table ``[256]`` of ``x -> fq(fn(x))`` on the int8 codes of ``src``: each code's
    value as the simulation holds it (``FakeQuant``'s dequantization ``(q - z) * s`` in float32),
    ``fn`` applied, the simulation's quantizer ``fq`` applied, and the result's integer on
    ``out``'s grid in int8 storage. Codes outside ``src``'s grid (narrower than 8 bits) map as the
    grid's ends do."""
    codes = (torch.arange(INT8_MIN, INT8_MAX + 1, dtype=torch.int64) + src.offset).clamp(src.grid.qmin, src.grid.qmax)
    y = fq(fn(grid_values(codes, src.grid.scale, src.grid.zero_point))).to(torch.float32)
    rel = (y * torch.reciprocal(torch.tensor(out.scale, dtype=torch.float32))).round()
    return (rel + out.zero_point).clamp(out.lo, out.hi).to(torch.int8)


class Int8Tracer(fx.Tracer):
    """The tracer a pickled integer network is rebuilt with (``torch.save(net)`` then
    ``torch.load``: a ``GraphModule`` is stored as its generated code and traced again on
    loading, with every module a leaf): the layout helpers the graph calls
    (:data:`~dfq_gpu.int8.layers.GRAPH_FUNCTIONS`, which branch on shapes) stay single calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("autowrap_functions", L.GRAPH_FUNCTIONS)
        super().__init__(*args, **kwargs)


# =============================================================================================
# The converter
# =============================================================================================
class _Converter:
    def __init__(self, gm: fx.GraphModule, backend: Optional[str], plan: dict[str, StepPlan],
                 fallback: bool = True, fusions: Optional[dict[str, ResidualFusion]] = None,
                 stems: Optional[dict[str, StemFusion]] = None,
                 depthwise: Optional[dict[str, DepthwiseProjectFusion]] = None) -> None:
        self.gm = gm
        self.backend = backend
        self.fallback = fallback  # run what has no int8 step in float instead of raising
        self.float_nodes: dict[str, str] = {}  # simulation node -> why it runs in float
        self.dequantized: dict[fx.Node, fx.Node] = {}  # int8 value -> its float NCHW tensor
        self.plan = plan  # the fusion plan (dfq_gpu.quant.plan): what each step fuses, its integer parameters
        self.graph = fx.Graph(tracer_cls=Int8Tracer)
        self.root = nn.Module()
        self.env: dict[fx.Node, _Val] = {}
        self.done: set[fx.Node] = set()
        self.names: set[str] = set()
        # residual adds fused into the layer producing one operand (dfq_gpu.quant.plan.residual_fusions)
        self.fusions: dict[str, ResidualFusion] = dict(fusions or {})  # by add name
        self.fused_layers: set[str] = {f.layer for f in self.fusions.values()}
        self.deferred: dict[fx.Node, _DeferredLayer] = {}  # a fused layer's output quantizer -> its step
        self.fused: dict[str, str] = {}  # add -> the layer whose step computes it (Coverage.fused)
        # convolutions that quantize the network input themselves (dfq_gpu.quant.plan.stem_fusions)
        self.stems: dict[str, StemFusion] = dict(stems or {})  # by layer name
        self.input_steps: dict[fx.Node, tuple[fx.Node, L.QuantizeInput]] = {}  # its output -> (float input, step)
        self.stem_fused: dict[str, str] = {}  # input quantizer -> the convolution computing it (Coverage.stem)
        # depthwise convolutions fused into the 1x1 convolution after them (depthwise_project_fusions)
        self.dw_fusions: dict[str, DepthwiseProjectFusion] = dict(depthwise or {})  # by 1x1 layer name
        self.dw_sources: set[str] = {f.depthwise for f in self.dw_fusions.values()}
        self.dw_steps: dict[fx.Node, tuple[fx.Node, L.Int8DepthwiseConv2d]] = {}  # its output -> (its input, step)
        self.dw_fused: dict[str, str] = {}  # depthwise layer -> the 1x1 convolution computing it (Coverage.depthwise)

    # ---------------------------------------------------------------------------------------
    # helpers
    # ---------------------------------------------------------------------------------------
    def err(self, node: fx.Node, why: str) -> Int8ConversionError:
        return Int8ConversionError(f"cannot convert {ops.describe(self.gm, node)} to int8: {why}", why)

    def step(self, name: str, module: L.Int8Step, *args: Any) -> fx.Node:
        name = self.unique_name(name)
        module.backend = self.backend
        self.root.add_module(name, module)
        return self.graph.call_module(name, tuple(args))

    def fn(self, f: Any, *args: Any) -> fx.Node:
        return self.graph.call_function(f, tuple(args))

    def val(self, node: fx.Node, user: fx.Node) -> _Val:
        if node in self.deferred:  # read by something else than its fused add: the layer step after all
            self.emit_deferred(node)
        v = self.env.get(node)
        if v is None:
            raise self.err(user, f"its input {ops.describe(self.gm, node)} has no integer counterpart")
        return v

    def int8_input(self, user: fx.Node, arg: Any, keep_pad: bool = False) -> _Val:
        """The int8 value of ``arg`` (an input of ``user``), with any pending padding applied
        unless ``keep_pad``."""
        if not isinstance(arg, fx.Node):
            raise self.err(user, f"its input {arg!r} is not a tensor")
        v = self.val(arg, user)
        if v.kind == "input":
            raise self.err(user, f"its input {ops.describe(self.gm, arg)} is the float network input without an "
                                 "activation quantizer")
        if v.kind in ("float", "sim"):
            raise self.err(user, f"its input {ops.describe(self.gm, arg)} is a float tensor, not quantized "
                                 "(a float op between quantizers, or an op after the output layer)")
        if v.kind != "int8":
            raise self.err(user, f"its input {ops.describe(self.gm, arg)} is not a tensor")
        if v.pad is not None and not keep_pad:
            v = self.apply_pad(arg, v)
        return v

    def apply_pad(self, node: fx.Node, v: _Val) -> _Val:
        assert v.q is not None and v.pad is not None
        out = self.step(f"{node.name}_pad", L.Int8Pad(v.pad, v.q.zero_point), v.node)
        v2 = replace(v, node=out, pad=None)
        self.env[node] = v2
        return v2

    def out_quantizer(self, fq: fx.Node) -> _QParams:
        fqm = node_module(self.gm, fq)
        assert isinstance(fqm, FakeQuant)
        return _fq_params(fq.name, fqm)

    def act_module(self, act: Optional[fx.Node], channels: int) -> Optional[nn.Module]:
        """The fused activation's module (``None`` if absent), checked to be fusable."""
        if act is None:
            return None
        m = node_module(self.gm, act)
        assert m is not None
        try:
            requant.act_float_bounds(m, channels)
        except ValueError as exc:
            raise self.err(act, str(exc)) from exc
        return m

    def float_act(self, act: Optional[fx.Node], out: fx.Node, channels: int) -> fx.Node:
        m = self.act_module(act, channels)
        if act is None or m is None:
            return out
        flo, fhi = requant.act_float_bounds(m, channels)
        return self.step(act.name, L.FloatClamp(flo, fhi), out)

    def finish(self, node: fx.Node, act: Optional[fx.Node], fq: Optional[fx.Node], tail: fx.Node, v: _Val) -> None:
        for n in (node, act, fq):
            if n is not None:
                self.done.add(n)
        self.env[tail] = v
        if tail is not node:  # shape queries on the pre-activation value see the same shape
            self.env.setdefault(node, v)

    # ---------------------------------------------------------------------------------------
    # the walk
    # ---------------------------------------------------------------------------------------
    def run(self) -> fx.GraphModule:
        for node in self.gm.graph.nodes:
            if node in self.done:
                continue
            self.visit(node)
        gm = fx.GraphModule(self.root, self.graph, class_name="Int8GraphModule")
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
        return gm

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            new = self.graph.placeholder(node.name, default_value=node.args[0] if node.args else
                                         inspect.Signature.empty)
            new.meta = {}
            self.env[node] = _Val(new, "input", rank=len(ops.tensor_shape(node) or ()))
            return
        if node.op == "output":
            self.output(node)
            return
        try:
            self.int8_node(node)
        except Int8ConversionError as exc:
            if not self.fallback:
                raise
            self.float_node(node, exc.reason)

    # ---------------------------------------------------------------------------------------
    # float fallback
    # ---------------------------------------------------------------------------------------
    def sim_value(self, user: fx.Node, arg: fx.Node) -> fx.Node:
        """The integer graph's node holding the simulation's value of ``arg`` (an input of
        ``user``, which runs in float): int8 tensors dequantized to contiguous NCHW float32
        (bit-identical to the simulation's quantizer output), float NHWC results as NCHW."""
        v = self.val(arg, user)
        if v.kind == "int8":
            if arg not in self.dequantized:
                v = self.int8_input(user, arg)
                assert v.q is not None
                deq = self.step(f"dequant_{arg.name}", L.Dequantize(v.q.scale, v.q.zero_point), v.node)
                self.dequantized[arg] = self.graph.call_method("contiguous", (deq,))
            return self.dequantized[arg]
        if v.kind == "float" and v.rank == 4:
            return self.graph.call_method("contiguous", (self.fn(L.nhwc_to_nchw, v.node),))
        return v.node

    def float_node(self, node: fx.Node, reason: str) -> None:
        """Run ``node`` as the simulation does, in float32 on the simulation's values of its
        inputs (the same module or function on the same tensors: the same results)."""
        if node.op == "get_attr":
            obj: Any = self.gm
            for part in str(node.target).split("."):
                obj = getattr(obj, part)
            name = self.unique_name(str(node.target))
            if isinstance(obj, torch.Tensor):
                self.root.register_buffer(name, obj.detach().clone())
            else:
                setattr(self.root, name, copy.deepcopy(obj))
            new = self.graph.get_attr(name)
        elif node.op == "call_module":
            name = self.unique_name(str(node.target))
            self.root.add_module(name, copy.deepcopy(self.gm.get_submodule(str(node.target))))
            args = fx.node.map_arg(node.args, lambda n: self.sim_value(node, n))
            kwargs = fx.node.map_arg(node.kwargs, lambda n: self.sim_value(node, n))
            new = self.graph.call_module(name, args, kwargs)
        else:
            new = self.graph.node_copy(node, lambda n: self.sim_value(node, n))
        new.meta = {}
        shape = ops.tensor_shape(node)
        self.env[node] = _Val(new, "sim", rank=len(shape) if shape is not None else None)
        if not self.is_bookkeeping(node):
            self.float_nodes[node.name] = reason
            log.debug("%s runs in float: %s", node.name, reason)

    def is_bookkeeping(self, node: fx.Node) -> bool:
        """Nodes that compute nothing worth reporting (quantizers, sizes, constants)."""
        if node.op in ("get_attr", "placeholder", "output"):
            return True
        if isinstance(node_module(self.gm, node), FakeQuant) or ops.is_shape_query(node):
            return True
        return node.op != "call_module" and ops.tensor_shape(node) is None

    def unique_name(self, base: str) -> str:
        base = base.replace(".", "_")
        name, i = base, 1
        while name in self.names or hasattr(self.root, name):
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def int8_node(self, node: fx.Node) -> None:
        gm = self.gm
        ins = [self.env.get(n) for n in node.all_input_nodes]
        if (ins and all(v is not None and v.kind == "sim" for v in ins)
                and not isinstance(node_module(gm, node), FakeQuant)):
            raise self.err(node, "its input is computed in float")
        if node.op == "get_attr":
            raise self.err(node, "constant tensors (get_attr) are not supported")
        m = node_module(gm, node)
        if isinstance(m, FakeQuant):
            self.fake_quant(node, m)
        elif isinstance(m, QUANTIZED_LAYER_TYPES):
            self.layer(node, m)
        elif is_layer_module(m):
            raise self.err(node, "the layer was left in float (skip_layers, or not quantized); the integer network "
                                 "needs quantized weights for every layer")
        elif isinstance(m, QAdd) or ops.is_add(node):
            self.add(node)
        elif isinstance(m, QAvgPool):
            self.avgpool(node)
        elif isinstance(m, QLookup):
            self.lookup(node, m)
        elif isinstance(m, QChannelAffine):
            self.channel_affine(node, m)
        elif isinstance(m, QUpsampleBilinear):
            self.upsample_bilinear(node, m)
        elif isinstance(m, QMul):
            self.mul(node)
        elif isinstance(m, (QAvgPool2d, QAdaptiveAvgPool2d)):
            self.avgpool2d(node, m)
        elif ops.is_cat(node):
            self.cat(node)
        elif (up := ops.nearest_upsample_args(gm, node)) is not None:
            self.upsample(node, *up)
        elif ops.is_shape_query(node):
            self.shape_query(node)
        elif ops.is_zero_pad(gm, node):
            self.zero_pad(node)
        elif ops.is_spatial_pool(gm, node) == "max":
            self.maxpool(node, m)
        elif ops.is_spatial_pool(gm, node) == "avg":
            self.avgpool(node)
        elif is_passthrough(gm, node):
            self.reshape(node)
        elif self.is_python_value_op(node):
            new = self.graph.node_copy(node, lambda n: self.env[n].node)
            new.meta = {}
            self.env[node] = _Val(new, "other")
        elif self.is_movement(node):
            self.movement(node)
        elif isinstance(m, FUSABLE_ACTS):
            raise self.err(node, "an activation that does not directly follow a convolution, linear layer or add "
                                 "(with its quantizer right after it) cannot be fused into a kernel")
        elif (p := self.plan.get(node.name)) is not None and p.float_reason is not None:
            raise self.err(node, p.float_reason)  # an op with an int8 kernel, kept in float by the plan
        else:
            what = type(m).__name__ if m is not None else getattr(node.target, "__name__", str(node.target))
            err = self.err(node, f"no int8 kernel for {what} (supported: convolutions, depthwise convolutions, "
                                 "linear layers, ReLU/ReLU6/clamp activations fused into them, residual adds, "
                                 "global average pooling, max pooling, zero padding and reshapes)")
            err.reason = f"no int8 kernel for {what}"
            raise err

    def is_movement(self, node: fx.Node) -> bool:
        """Ops that only move values (see :meth:`movement`)."""
        if node.op == "call_method":
            return node.target in _MOVEMENT_METHODS
        return node.op == "call_function" and node.target in _MOVEMENT_FUNCTIONS

    def is_python_value_op(self, node: fx.Node) -> bool:
        """An op on sizes or other Python values (``x.shape[0]``, ``b * c``): copied as it is."""
        if node.op not in ("call_function", "call_method") or ops.tensor_shape(node) is not None:
            return False
        inputs = node.all_input_nodes
        return bool(inputs) and all(n in self.env and self.env[n].kind == "other" for n in inputs)

    # ---------------------------------------------------------------------------------------
    # node kinds
    # ---------------------------------------------------------------------------------------
    def fake_quant(self, node: fx.Node, fq: FakeQuant) -> None:
        src = node.args[0]
        v = self.val(src, node)
        qp = _fq_params(node.name, fq)
        if v.kind == "int8":  # a second quantizer on an int8 tensor: a table from one grid to the other
            v = self.int8_input(node, src)
            assert v.q is not None
            out = self.step(node.name, L.Int8Lookup(requant_table(v.q, fq, lambda t: t, qp), sim_quantizer=node.name),
                            v.node)
            self.env[node] = _Val(out, "int8", qp, rank=v.rank)
            return
        if v.kind not in ("input", "sim", "float"):
            raise self.err(node, f"an activation quantizer after {ops.describe(self.gm, src)}, which is not a tensor")
        if v.rank is None or v.rank < 1 or (v.kind == "input" and v.rank not in (2, 4)):
            raise self.err(node, f"the network input has rank {v.rank}; NCHW images (4-D) or [B, K] (2-D) are "
                                 "supported")
        x = v.node if v.kind == "input" else self.sim_value(node, src)
        quant = L.QuantizeInput(qp.scale, qp.zero_point, qp.lo, qp.hi, check_finite=v.kind == "input",
                                sim_quantizer=node.name)
        out = self.step(node.name, quant, x)
        if v.kind == "input":
            self.input_steps[out] = (x, quant)
        self.env[node] = _Val(out, "int8", qp, rank=v.rank)

    def step_plan(self, node: fx.Node, kind: type) -> Any:
        """The fusion plan of ``node`` (:func:`dfq_gpu.quant.plan.build_plan`), of type ``kind``."""
        p = self.plan.get(node.name)
        assert isinstance(p, kind) and p.node is node, f"no {kind.__name__} for {node.name}"
        return p

    def _weights(self, node: fx.Node, m: QConv2d | QLinear,
                 p: LayerPlan) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """int8 weights (PyTorch layout) and int32 weight zero point ``[1|N]`` (``None`` if all zero)."""
        if m.w_bits > 8:
            raise self.err(node, f"its weights have {m.w_bits} bits; the int8 kernels take at most 8")
        from ..formulas import quant_grid

        qmin, qmax = quant_grid(m.w_bits, m.w_symmetric)
        q, zp = p.weight, p.w_zero_point
        n = p.n_out
        if zp.numel() not in (1, n) or m.w_scale.numel() not in (1, n):
            raise self.err(node, "weight scale / zero point must be per tensor or per output channel")
        if int(q.min()) < qmin or int(q.max()) > qmax:
            raise self.err(node, f"its integer weights lie outside the grid [{qmin}, {qmax}]")
        s = m.w_scale.detach().to(torch.float32).cpu()
        shape = [-1] + [1] * (q.dim() - 1)
        s_b = s.view(shape) if s.numel() > 1 else s.reshape(())
        z_b = zp.view(shape) if zp.numel() > 1 else zp.reshape(())
        # in float32 (the weights' own precision: float32 rounding is far inside these tolerances)
        deq = (q - z_b).to(torch.float32).mul_(s_b)
        if not torch.allclose(deq, m.weight.detach().to(torch.float32).cpu(), rtol=1e-5, atol=float(s.min()) * 1e-3):
            raise self.err(node, "its weights are not on their quantization grid (were they changed after quantize?)")
        off = _act_offset(m.w_symmetric)
        w8 = (q - off).to(torch.int8)
        zp8 = (zp - off).to(torch.int32)
        return w8, (None if bool((zp8 == 0).all()) else zp8)

    def layer(self, node: fx.Node, m: QConv2d | QLinear) -> None:
        if len(node.args) != 1 or node.kwargs:
            raise self.err(node, "a layer call with extra arguments")
        p: LayerPlan = self.step_plan(node, LayerPlan)
        how = INT8_STEPS.get(p.kind)
        if how is None:
            raise self.err(node, f"no int8 step for a layer of kind '{p.kind}' (dfq_gpu.int8.convert.INT8_STEPS)")
        x = self.int8_input(node, node.args[0], keep_pad=how.keep_pad)
        assert x.q is not None and x.q.grid == p.x
        act, fq, tail = p.act, p.quantizer, p.tail
        n_out = p.n_out
        w8, wzp = self._weights(node, m, p)
        qp = self.out_quantizer(fq) if fq is not None else None
        if qp is not None:
            self.act_module(act, n_out)  # raises for an activation that cannot be fused
        rq = p.requant
        assert rq is not None
        if qp is not None:
            assert rq.multiplier is not None and rq.lo is not None and rq.hi is not None
            epi = dict(multiplier=rq.multiplier, z_y=qp.zero_point, lo=rq.lo - qp.offset, hi=rq.hi - qp.offset,
                       out_scale=None)
            sim_q = fq.name if fq is not None else ""
        else:
            epi = dict(multiplier=torch.ones(1), z_y=0, lo=torch.tensor([INT8_MIN]), hi=torch.tensor([INT8_MAX]),
                       out_scale=rq.float_scale)
            sim_q = ""
        build = lambda sim_quantizer, epilogue: getattr(self, how.method)(  # noqa: E731
            node, m, p, x, w8, wzp, rq, sim_quantizer, epilogue)
        if node.name in self.fused_layers and qp is not None and fq is not None and tail is fq \
                and (how.method == "conv_step" or x.rank != 4):
            # its residual add computes it: the step is built when the add is reached (add_fused)
            self.deferred[tail] = _DeferredLayer(node, act, fq, x, qp, epi, build)
            self.done.update(n for n in (node, act, fq) if n is not None)
            return
        mod, rank = build(sim_q, epi)
        self.emit_layer(node, act, fq, tail, mod, rank, x, qp, how.method, n_out)

    def emit_layer(self, node: fx.Node, act: Optional[fx.Node], fq: Optional[fx.Node], tail: fx.Node,
                   mod: "L.Int8Step", rank: int, x: "_Val", qp: Optional[_QParams], method: str, n_out: int) -> None:
        if method == "linear_step" and rank == 4:  # the last dimension of the NCHW order
            mod.nchw_output = True
            out = self.fn(L.nhwc_to_nchw_of_last if qp is None else L.int8_to_nhwc,
                          self.step(node.name, mod, self.fn(L.int8_to_nchw, x.node)))
        else:
            out = self.step(node.name, mod, self.step_input(node, mod, x.node))
            if isinstance(mod, L.Int8DepthwiseConv2d) and node.name in self.dw_sources:
                self.dw_steps[out] = (x.node, mod)
        if qp is not None:
            v = _Val(out, "int8", qp, rank=rank)
        else:
            v = _Val(self.float_act(act, out, n_out), "float", rank=rank)
        self.finish(node, act, fq, tail, v)

    def step_input(self, node: fx.Node, mod: "L.Int8Step", x_node: fx.Node) -> fx.Node:
        """The node a layer step is called on: the float network input for a stem that quantizes
        it (the ``QuantizeInput`` step is left without users), the depthwise layer's input for a
        1x1 convolution that computes it (the depthwise step is left without users), else
        ``x_node``."""
        if isinstance(mod, L.Int8StemConv2d):
            self.stem_fused[self.stems[node.name].quantizer] = node.name
            return self.input_steps[x_node][0]
        if isinstance(mod, L.Int8DepthwiseProjectConv2d):
            self.dw_fused[self.dw_fusions[node.name].depthwise] = node.name
            return self.dw_steps[x_node][0]
        return x_node

    def emit_deferred(self, tail: fx.Node) -> None:
        """The unfused step of a deferred layer (its output is needed on its own after all)."""
        d = self.deferred.pop(tail)
        mod, rank = d.build(d.fq.name, d.epi)
        self.emit_layer(d.node, d.act, d.fq, tail, mod, rank, d.x, d.qp, "", 0)

    def conv_step(self, node: fx.Node, m: QConv2d, p: LayerPlan, x: "_Val", w8: torch.Tensor,
                  wzp: Optional[torch.Tensor], rq: Any, sim_q: str, epi: dict[str, Any]) -> tuple["L.Int8Step", int]:
        """The int8 step of a 2-D convolution (``INT8_STEPS``): :data:`CONV_KERNELS` by kind."""
        assert isinstance(m, QConv2d)
        if x.rank != 4:
            raise self.err(node, f"a convolution on a rank-{x.rank} tensor")
        dilation = tuple(m.dilation)
        if dilation != (1, 1) and (ops.pair(m.stride) != (1, 1) or p.kind == "grouped"):
            raise self.err(node, f"dilation {dilation} with stride {tuple(ops.pair(m.stride))} or groups "
                                 f"{m.groups} (dilated convolutions run in int8 at stride 1, dense or depthwise)")
        if m.padding_mode != "zeros":
            raise self.err(node, f"padding_mode='{m.padding_mode}' (only zero padding is supported)")
        kh, kw = m.kernel_size
        if isinstance(m.padding, str):
            if m.padding == "valid":
                ph = pw = (0, 0)
            else:  # "same" (stride 1): PyTorch puts the extra row/column at the end
                eh, ew = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
                ph = (eh // 2, eh - eh // 2)
                pw = (ew // 2, ew - ew // 2)
        else:
            pp = ops.pair(m.padding)
            ph, pw = (pp[0], pp[0]), (pp[1], pp[1])
        extra = x.pad or (0, 0, 0, 0)
        pad = (ph[0] + extra[0], ph[1] + extra[1], pw[0] + extra[2], pw[1] + extra[3])
        stride = ops.pair(m.stride)
        if p.kind not in CONV_KERNELS:
            raise self.err(node, f"a grouped convolution (groups={m.groups}, {m.in_channels} -> "
                                 f"{m.out_channels} channels) that is not depthwise")
        step_cls, layout = CONV_KERNELS[p.kind]
        extra: dict[str, Any] = {"groups": m.groups} if p.kind == "grouped" else {}
        if node.name in self.stems and x.node in self.input_steps and step_cls is L.Int8Conv2d \
                and dilation == (1, 1):  # the stem fusion (dfq_gpu.quant.plan.stem_fusions)
            step_cls, extra = L.Int8StemConv2d, {"quantize": self.input_steps[x.node][1]}
        if node.name in self.dw_fusions and x.node in self.dw_steps and step_cls is L.Int8Conv2d \
                and dilation == (1, 1):  # dfq_gpu.quant.plan.depthwise_project_fusions
            step_cls, extra = L.Int8DepthwiseProjectConv2d, {"depthwise": self.dw_steps[x.node][1]}
        if dilation != (1, 1):
            inner = step_cls(layout(w8), rq.bias, wzp, x.q.zero_point, stride=(1, 1), padding=(0, 0, 0, 0),
                             sim_quantizer=sim_q, **epi)
            inner.backend = self.backend
            return L.Int8DilatedConv2d(inner, dilation, pad, x.q.zero_point, sim_quantizer=sim_q), 4
        mod = step_cls(layout(w8), rq.bias, wzp, x.q.zero_point, stride=stride, padding=pad, sim_quantizer=sim_q,
                       **epi, **extra)
        return mod, 4

    def linear_step(self, node: fx.Node, m: QLinear, p: LayerPlan, x: "_Val", w8: torch.Tensor,
                    wzp: Optional[torch.Tensor], rq: Any, sim_q: str, epi: dict[str, Any]) -> tuple["L.Int8Step", int]:
        """The int8 step of a linear layer (``INT8_STEPS``): on ``[B, K]``, or on the last
        dimension of a tensor of any rank (a 4-D one is taken in its NCHW order)."""
        if x.rank is None or x.rank < 2:
            raise self.err(node, f"a linear layer on a rank-{x.rank} tensor")
        return L.Int8Linear(w8, rq.bias, wzp, x.q.zero_point, sim_quantizer=sim_q, **epi), x.rank

    def add(self, node: fx.Node) -> None:
        p: AddPlan = self.step_plan(node, AddPlan)
        ins = ops.tensor_inputs(node)
        f = self.fusions.get(node.name)
        if f is not None and len(ins) == 2 and ins[f.operand] in self.deferred:
            self.add_fused(node, p, ins, f)
            return
        a = self.int8_input(node, ins[0])
        b = self.int8_input(node, ins[1])
        assert a.q is not None and b.q is not None and a.q.grid == p.a and b.q.grid == p.b
        sa, sb = ops.tensor_shape(ins[0]), ops.tensor_shape(ins[1])
        if sa != sb:
            raise self.err(node, f"an add of tensors of different shapes {sa} and {sb} (broadcasting)")
        act, fq, tail = p.act, p.quantizer, p.tail
        if fq is None:
            out = self.step(node.name, L.FloatAdd(a.q.scale, a.q.zero_point, b.q.scale, b.q.zero_point),
                            a.node, b.node)
            v = _Val(self.float_act(act, out, p.channels), "float", rank=a.rank)
            self.finish(node, act, fq, tail, v)
            return
        qp, lo_s, hi_s, clamp_lo, clamp_hi = self.add_epilogue(p)
        rq = p.requant
        assert rq is not None
        mod = L.Int8Add(a.q.zero_point, b.q.zero_point, rq.ia, rq.ib, rq.multiplier, qp.zero_point, lo_s, hi_s,
                        clamp_lo, clamp_hi, sim_quantizer=fq.name)
        out = self.step(node.name, mod, a.node, b.node)
        self.finish(node, act, fq, tail, _Val(out, "int8", qp, rank=a.rank))

    def add_epilogue(self, p: AddPlan) -> tuple[_QParams, int, int, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The output quantization of an integer add and its bounds in int8 storage: per-tensor
        ``lo``/``hi`` for the kernel, and the per-channel clamp that follows it (``None`` unless
        the bounds differ between channels)."""
        assert p.quantizer is not None
        qp = self.out_quantizer(p.quantizer)
        self.act_module(p.act, p.channels)  # raises for an activation that cannot be fused
        rq = p.requant
        assert rq is not None
        lo, hi = rq.lo - qp.offset, rq.hi - qp.offset
        if lo.numel() > 1 and (bool((lo != lo[0]).any()) or bool((hi != hi[0]).any())):
            return qp, qp.lo, qp.hi, lo, hi
        return qp, int(lo.reshape(-1)[0]), int(hi.reshape(-1)[0]), None, None

    def add_fused(self, node: fx.Node, p: AddPlan, ins: list[fx.Node], f: ResidualFusion) -> None:
        """A residual add computed by the step of the layer producing operand ``f.operand``
        (deferred until now): one step on the layer's input and the add's other operand, whose
        int8 output stands for the add's quantizer (the layer's own is not materialized)."""
        tail = ins[f.operand]
        d = self.deferred[tail]
        r = self.int8_input(node, ins[1 - f.operand])
        assert r.q is not None and p.quantizer is not None and p.requant is not None
        sa, sb = ops.tensor_shape(ins[0]), ops.tensor_shape(ins[1])
        if sa != sb or r.rank != d.x.rank:
            raise self.err(node, f"an add of tensors of different shapes {sa} and {sb} (broadcasting)")
        qp, lo_s, hi_s, clamp_lo, clamp_hi = self.add_epilogue(p)
        rq = p.requant
        ia, ib = (rq.ia, rq.ib) if f.operand == 0 else (rq.ib, rq.ia)  # the layer's output is operand a
        spec = kernels.reference.ResidualAdd(d.qp.zero_point, r.q.zero_point, ia, ib, rq.multiplier, qp.zero_point,
                                             lo_s, hi_s)
        epi = dict(d.epi, residual=spec, clamp_lo=clamp_lo, clamp_hi=clamp_hi, layer_quantizer=d.fq.name)
        mod, rank = d.build(p.quantizer.name, epi)
        del self.deferred[tail]
        out = self.step(d.node.name, mod, self.step_input(d.node, mod, d.x.node), r.node)
        self.done.update(n for n in (d.node, d.act, d.fq) if n is not None)
        self.fused[node.name] = d.node.name
        self.finish(node, p.act, p.quantizer, p.tail, _Val(out, "int8", qp, rank=rank))

    def lookup(self, node: fx.Node, m: QLookup) -> None:
        """An activation between two quantizers: the simulation's table (:class:`QLookup`) on
        int8 storage, one ``int8_lut`` call."""
        p: LookupPlan = self.step_plan(node, LookupPlan)
        if not m.integer or p.float_reason is not None or p.quantizer is None:
            raise self.err(node, p.float_reason or "the simulation computes it in float")
        x = self.int8_input(node, node.args[0])
        assert x.q is not None and x.q.grid.scale == m.x[0] and x.q.grid.zero_point == m.x[1]
        qp = self.out_quantizer(p.quantizer)
        codes = (torch.arange(INT8_MIN, INT8_MAX + 1) + x.q.offset).clamp(m.x_qmin, m.x_qmax) - m.x_qmin
        table = (m.table.detach().cpu()[codes].to(torch.int64) + qp.zero_point).clamp(qp.lo, qp.hi)
        out = self.step(node.name, L.Int8Lookup(table, sim_quantizer=p.quantizer.name), x.node)
        self.finish(node, None, p.quantizer, p.tail, _Val(out, "int8", qp, rank=x.rank))

    def channel_affine(self, node: fx.Node, m: QChannelAffine) -> None:
        """A per-channel affine map between two quantizers: the simulation's tables
        (:class:`QChannelAffine`, one row per channel) on int8 storage, one ``int8_lut`` call with a
        ``[C, 256]`` table on the NHWC tensor."""
        p: ChannelAffinePlan = self.step_plan(node, ChannelAffinePlan)
        if not m.integer or p.float_reason is not None or p.quantizer is None:
            raise self.err(node, p.float_reason or "the simulation computes it in float")
        x = self.int8_input(node, node.args[0])
        assert x.q is not None and x.q.grid.scale == m.x[0] and x.q.grid.zero_point == m.x[1]
        if x.rank != 4:
            raise self.err(node, f"a per-channel map of a rank-{x.rank} tensor (NCHW images only)")
        qp = self.out_quantizer(p.quantizer)
        codes = (torch.arange(INT8_MIN, INT8_MAX + 1) + x.q.offset).clamp(m.x_qmin, m.x_qmax) - m.x_qmin
        table = (m.table.detach().cpu()[:, codes].to(torch.int64) + qp.zero_point).clamp(qp.lo, qp.hi)
        out = self.step(node.name, L.Int8Lookup(table, sim_quantizer=p.quantizer.name), x.node)
        self.finish(node, None, p.quantizer, p.tail, _Val(out, "int8", qp, rank=x.rank))

    def mul(self, node: fx.Node) -> None:
        """The product of two int8 tensors, or of a tensor and its squeeze-excitation gate."""
        p: MulPlan = self.step_plan(node, MulPlan)
        if p.float_reason is not None or p.quantizer is None or p.multiplier is None:
            raise self.err(node, p.float_reason or "the simulation computes it in float")
        ins = ops.tensor_inputs(node)
        vals = [self.int8_input(node, ins[0]), self.int8_input(node, ins[1])]
        x, g = (vals[0], vals[1]) if p.gate != 0 else (vals[1], vals[0])
        assert x.q is not None and g.q is not None
        qp = self.out_quantizer(p.quantizer)
        mod = L.Int8Mul(x.q.zero_point, g.q.zero_point, p.multiplier, qp.zero_point, qp.lo, qp.hi,
                        gate=p.gate is not None, sim_quantizer=p.quantizer.name)
        out = self.step(node.name, mod, x.node, g.node)
        self.finish(node, None, p.quantizer, p.tail, _Val(out, "int8", qp, rank=x.rank))

    def zero_pad(self, node: fx.Node) -> None:
        x = self.int8_input(node, node.args[0], keep_pad=True)
        if x.rank != 4:
            raise self.err(node, "zero padding of a tensor that is not 4-D")
        left, right, top, bottom = ops.zero_pad_amounts(self.gm, node)
        if min(left, right, top, bottom) < 0:
            raise self.err(node, "negative padding (cropping)")
        p = x.pad or (0, 0, 0, 0)
        self.env[node] = replace(x, pad=(p[0] + top, p[1] + bottom, p[2] + left, p[3] + right))

    def maxpool(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        x = self.int8_input(node, node.args[0])
        if x.rank != 4:
            raise self.err(node, "max pooling of a tensor that is not 4-D")
        out_rank = len(ops.tensor_shape(node) or ())
        if isinstance(m, nn.AdaptiveMaxPool2d) or (node.op == "call_function" and node.target is F.adaptive_max_pool2d):
            size = m.output_size if m is not None else ops.node_arg(node, 1, "output_size", None)
            ret = (getattr(m, "return_indices", False) if m is not None
                   else ops.node_arg(node, 2, "return_indices", False))
            if ops.pair(size) != (1, 1) or ret:
                raise self.err(node, f"adaptive max pooling to {size} (only global, output size 1)")
            out = self.step(node.name, L.Int8GlobalMaxPool(keepdim=out_rank == 4), x.node)
            self.env[node] = replace(x, node=out, rank=out_rank)
            return
        a = ops.max_pool_args(self.gm, node)
        if a is None:
            raise self.err(node, "an unsupported kind of max pooling")
        if a.return_indices:
            raise self.err(node, "max pooling with return_indices")
        p = a.padding
        out = self.step(node.name, L.Int8MaxPool2d(a.kernel, a.stride, (p[0], p[0], p[1], p[1]), a.dilation,
                                                   a.ceil_mode), x.node)
        self.env[node] = replace(x, node=out)

    def avgpool(self, node: fx.Node) -> None:
        p2 = self.plan.get(node.name)
        if isinstance(p2, AvgPool2dPlan):  # a windowed pool the simulation keeps in float
            raise self.err(node, p2.float_reason or "the simulation computes it in float")
        p: AvgPoolPlan = self.step_plan(node, AvgPoolPlan)
        x = self.int8_input(node, node.args[0])
        assert x.q is not None
        shape_in = ops.tensor_shape(node.args[0])
        shape_out = ops.tensor_shape(node)
        if x.rank != 4 or shape_in is None or shape_out is None:
            raise self.err(node, "average pooling of a tensor that is not 4-D")
        problem = global_avgpool_problem(self.gm, node)
        if problem is not None:
            raise self.err(node, problem)
        assert x.q.grid == p.x
        if p.act is not None:
            raise self.err(p.act, "an activation after average pooling is not fused by the simulation")
        if p.quantizer is None:
            out = self.step(node.name, L.FloatAvgPool(x.q.scale, x.q.zero_point, p.keepdim), x.node)
            self.finish(node, None, None, p.tail, _Val(out, "float", rank=len(shape_out)))
            return
        qp = self.out_quantizer(p.quantizer)
        assert p.y is not None
        mod = L.Int8AvgPool(x.q.zero_point, p.x.scale, p.y.scale, p.hw, qp.zero_point, qp.lo, qp.hi, p.keepdim,
                            sim_quantizer=p.quantizer.name)
        out = self.step(node.name, mod, x.node)
        self.finish(node, None, p.quantizer, p.tail, _Val(out, "int8", qp, rank=len(shape_out)))

    def reshape(self, node: fx.Node) -> None:
        ins = ops.tensor_inputs(node)
        if len(ins) != 1:
            raise self.err(node, "a reshape with several tensor inputs")
        v = self.val(ins[0], node)
        if v.kind in ("int8",):
            v = self.int8_input(node, ins[0])
        elif v.kind != "float":
            raise self.err(node, f"its input {ops.describe(self.gm, ins[0])} is not quantized")
        si, so = ops.tensor_shape(ins[0]), ops.tensor_shape(node)
        if si is None or so is None:
            raise self.err(node, "no shape information")
        if si == so:
            self.env[node] = v
            return
        if len(so) == 2 and so[0] == si[0] and so[1] == math.prod(si[1:]):
            out = self.fn(L.flatten_nhwc, v.node) if len(si) == 4 else self.graph.call_function(
                torch.flatten, (v.node, 1))
            self.env[node] = replace(v, node=out, rank=2)
            return
        if len(si) == 2 and len(so) == 4 and so[:2] == si and so[2:] == (1, 1):
            self.env[node] = replace(v, node=self.fn(L.expand_to_nhwc, v.node), rank=4)
            return
        if len(si) == 4 and len(so) == 4 and so[0] == si[0] and so[1] == si[1] and si[2:] == so[2:]:
            self.env[node] = v
            return
        self.movement(node)

    def movement(self, node: fx.Node) -> None:
        """An op that only moves values (view, transpose, chunk, getitem, a cat of tensors of one
        quantization, ...), run on the int8 tensors in NCHW order as the simulation runs it on
        their values: the result holds the same quantization (NHWC again when 4-D; a tuple of
        tensors stays NCHW until an item is taken)."""
        qs: list[_QParams] = []

        def arg(n: fx.Node) -> fx.Node:
            v = self.val(n, node)
            if v.kind == "other":
                return v.node
            if v.kind != "int8":
                raise self.err(node, "its input is computed in float")
            v = self.int8_input(node, n)
            assert v.q is not None
            qs.append(v.q)
            return self.fn(L.int8_to_nchw, v.node) if v.rank == 4 else v.node

        new = self.graph.node_copy(node, arg)
        new.meta = {}
        if not qs:
            raise self.err(node, "no int8 input")
        if any(q.grid != qs[0].grid or q.offset != qs[0].offset for q in qs):
            raise self.err(node, "it moves int8 tensors of different quantizations")
        shape = ops.tensor_shape(node)
        if shape is not None and len(shape) == 4:
            self.env[node] = _Val(self.fn(L.int8_to_nhwc, new), "int8", qs[0], rank=4)
        else:
            self.env[node] = _Val(new, "int8", qs[0], rank=len(shape) if shape is not None else None)

    def avgpool2d(self, node: fx.Node, m: QAvgPool2d | QAdaptiveAvgPool2d) -> None:
        """A windowed or adaptive average pool: ``int8_avgpool2d`` / ``int8_adaptive_avgpool2d``
        with the simulation's window or output size, and grids."""
        p: AvgPool2dPlan = self.step_plan(node, AvgPool2dPlan)
        if p.float_reason is not None or p.quantizer is None:
            raise self.err(node, p.float_reason or "the simulation computes it in float")
        x = self.int8_input(node, node.args[0])
        assert x.q is not None and x.q.grid == p.x
        qp = self.out_quantizer(p.quantizer)
        mod: L.Int8Step
        if isinstance(m, QAdaptiveAvgPool2d):
            mod = L.Int8AdaptiveAvgPool2d(m.output_size, x.q.zero_point, m.x_scale, m.y_scale, qp.zero_point, qp.lo,
                                          qp.hi, sim_quantizer=p.quantizer.name)
        else:
            ph, pw = m.padding
            mod = L.Int8AvgPool2d(m.kernel, m.stride, (ph, ph, pw, pw), m.ceil_mode, m.count_include_pad,
                                  x.q.zero_point, m.x_scale, m.y_scale, qp.zero_point, qp.lo, qp.hi,
                                  sim_quantizer=p.quantizer.name)
        out = self.step(node.name, mod, x.node)
        self.finish(node, None, p.quantizer, p.tail, _Val(out, "int8", qp, rank=4))

    def upsample_bilinear(self, node: fx.Node, m: QUpsampleBilinear) -> None:
        """Bilinear resampling: ``int8_upsample_bilinear`` with the simulation's grids, its output
        size given at the call when the simulation computes it from a shape."""
        p: BilinearPlan = self.step_plan(node, BilinearPlan)
        if p.float_reason is not None or p.quantizer is None:
            raise self.err(node, p.float_reason or "the simulation computes it in float")
        x = self.int8_input(node, node.args[0])
        if x.rank != 4:
            raise self.err(node, "resampling of a tensor that is not 4-D")
        assert x.q is not None and x.q.grid == p.x
        qp = self.out_quantizer(p.quantizer)
        mod = L.Int8UpsampleBilinear(m.size, m.scale_factor, m.align_corners, x.q.zero_point, m.multiplier,
                                     qp.zero_point, qp.lo, qp.hi, sim_quantizer=p.quantizer.name)
        args = [x.node]
        if len(node.args) > 1:  # the size, computed from shapes at run time

            def value(n: fx.Node) -> fx.Node:
                v = self.val(n, node)
                if v.kind != "other":
                    raise self.err(node, "its output size is not a value computed from shapes")
                return v.node

            args.append(fx.node.map_arg(node.args[1], value))
        out = self.step(node.name, mod, *args)
        self.finish(node, None, p.quantizer, p.tail, _Val(out, "int8", qp, rank=4))

    def upsample(self, node: fx.Node, size: Any, scale_factor: Any) -> None:
        """Nearest-neighbour upsampling: the int8 values moved, quantization unchanged."""
        x = self.int8_input(node, node.args[0])
        if x.rank != 4:
            raise self.err(node, "upsampling of a tensor that is not 4-D")
        pair = (lambda v: None if v is None else (tuple(v) if isinstance(v, (tuple, list)) else (v, v)))
        out = self.step(node.name, L.Int8UpsampleNearest(pair(size), pair(scale_factor)), x.node)
        self.env[node] = replace(x, node=out)

    def cat(self, node: fx.Node) -> None:
        """A concatenation along channels of 4-D int8 tensors whose result a quantizer takes
        next: each input requantized to that quantizer by a table (or copied when on its grid)
        into its slice of the output; other concatenations move values (:meth:`movement`)."""
        ins = ops.tensor_inputs(node)
        dim = ops.node_arg(node, 1, "dim", 0)
        shape = ops.tensor_shape(node)
        users = list(node.users)
        fq = users[0] if len(users) == 1 and isinstance(node_module(self.gm, users[0]), FakeQuant) else None
        if fq is None or shape is None or len(shape) != 4 or dim not in (1, -3) or len(ins) != len(node.args[0]):
            self.movement(node)
            return
        qp = self.out_quantizer(fq)
        fqm = node_module(self.gm, fq)
        vals, tables = [], []
        for n in ins:
            v = self.int8_input(node, n)
            assert v.q is not None
            if v.rank != 4:
                raise self.err(node, "a concatenation of tensors that are not 4-D")
            same = v.q.grid == qp.grid and v.q.offset == qp.offset
            vals.append(v.node)
            tables.append(None if same else requant_table(v.q, fqm, lambda t: t, qp))
        out = self.step(node.name, L.Int8Cat(tables, sim_quantizer=fq.name), *vals)
        self.finish(node, None, fq, fq, _Val(out, "int8", qp, rank=4))

    def shape_query(self, node: fx.Node) -> None:
        src = node.args[0]
        v = self.val(src, node)
        if v.node in self.input_steps:  # the quantized network input: the float input has its NCHW shape
            v = _Val(self.input_steps[v.node][0], "input", rank=v.rank)
        if node.op == "call_method" and node.target == "size":
            dim = ops.node_arg(node, 1, "dim", None)
            if v.kind in ("input", "sim"):
                out = self.graph.call_method("size", (v.node,) if dim is None else (v.node, dim))
            else:
                out = self.fn(L.nchw_size, v.node, dim) if dim is not None else self.fn(L.nchw_size, v.node)
        elif node.op == "call_method" and node.target == "dim":
            out = self.graph.call_method("dim", (v.node,))
        elif node.op == "call_function" and node.args[1] == "shape":
            out = self.graph.call_function(getattr, (v.node, "shape")) if v.kind in ("input", "sim") else \
                self.fn(L.nchw_shape, v.node)
        else:
            raise self.err(node, f"the query {node.args[1]!r} (its value differs between float and int8 tensors)")
        self.env[node] = _Val(out, "other")

    def output(self, node: fx.Node) -> None:
        def conv(a: fx.Node) -> fx.Node:
            v = self.val(a, node)
            if v.kind == "int8":
                v = self.int8_input(node, a)
                assert v.q is not None
                return self.step(f"dequant_{a.name}", L.Dequantize(v.q.scale, v.q.zero_point), v.node)
            if v.kind == "float":
                return self.fn(L.nhwc_to_nchw, v.node) if v.rank == 4 else v.node
            return v.node

        self.graph.output(fx.node.map_arg(node.args[0], conv))


# =============================================================================================
# The integer network
# =============================================================================================
class Int8Network(nn.Module):
    """An int8 network built by :func:`to_int8`.

    ``forward`` takes what the simulated network takes (floating NCHW images of any floating
    dtype, converted to float32 as the simulation's input quantizer does) and returns float32
    outputs. Non-finite input: on the CPU, an input holding NaN or Inf raises
    :class:`~dfq_gpu.DFQError` saying how many (one ``torch.isfinite(x).all()`` per call, not
    done under ``torch.compile``/``torch.export`` tracing). On CUDA nothing is checked (a check
    would wait for the GPU): the quantize kernel maps ``+Inf`` to the top of the input
    quantizer's grid and NaN and ``-Inf`` to its bottom (its clamp uses IEEE maxNum/minNum, which
    return the operand that is not NaN), so an image with NaN pixels gives finite outputs
    where the simulation gives NaN (infinities saturate in both).

    ``net`` is the ``torch.fx.GraphModule`` of integer steps (see ``print(net.graph)``); its
    steps' names are those of the simulation's nodes they replace. ``backend`` chooses the
    kernels for every step: ``"auto"`` (Triton on CUDA tensors, the integer reference
    otherwise), ``"triton"``, ``"reference"``, or ``None`` (the kernels' process-wide default,
    see ``kernels.use_backend``).

    ``.to(device)`` moves it; a floating dtype other than float32 (``.half()``, ``.to(torch.float16)``,
    ``.double()``...) raises :class:`~dfq_gpu.DFQError`: its float32 multipliers and scales are part
    of the integer contract, and casting them would change the integers.
    """

    def __init__(self, net: fx.GraphModule, backend: Optional[str] = "auto",
                 coverage: Optional[Coverage] = None) -> None:
        super().__init__()
        self.net = net
        self.backend = backend
        self.coverage = coverage  # what runs in int8 and what in float (to_int8 sets it)

    @property
    def backend(self) -> Optional[str]:
        return self._backend

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        if value is not None and value not in kernels.BACKENDS:
            raise ValueError(f"backend must be one of {kernels.BACKENDS} or None, got {value!r}")
        self._backend = value
        for m in self.net.modules():
            if isinstance(m, L.Int8Step):
                m.backend = value

    @property
    def graph(self) -> fx.Graph:
        return self.net.graph

    @staticmethod
    def _refuse_cast(dtype: Any) -> None:
        if dtype is not None and dtype != torch.float32:
            raise DFQError(f"an int8 network cannot be cast to {dtype}: its weights are integers and its requantization "
                           "multipliers and scales float32, part of the integer contract (a cast would change its "
                           "integers); it takes inputs of any floating dtype as they are. Move it with .to(device)")

    def to(self, *args: Any, **kwargs: Any) -> "Int8Network":  # type: ignore[override]
        self._refuse_cast(torch._C._nn._parse_to(*args, **kwargs)[1])
        return super().to(*args, **kwargs)

    def half(self) -> "Int8Network":
        self._refuse_cast(torch.float16)
        return self

    def bfloat16(self) -> "Int8Network":
        self._refuse_cast(torch.bfloat16)
        return self

    def double(self) -> "Int8Network":
        self._refuse_cast(torch.float64)
        return self

    def type(self, dst_type: Any) -> "Int8Network":  # type: ignore[override]
        # nn.Module.type casts every parameter and buffer, the int8 weights included
        raise DFQError(f"an int8 network cannot be cast with .type({dst_type!r}): it would cast its integer weights "
                       "too. Move it with .to(device)")

    def forward(self, *args: Any) -> Any:
        return self.net(*args)

    def steps(self) -> dict[str, L.Int8Step]:
        """The integer steps by name, in graph order."""
        return {str(n.target): self.net.get_submodule(str(n.target)) for n in self.net.graph.nodes
                if n.op == "call_module"}

    @torch.no_grad()
    def activations(self, *args: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run the network and return ``(output, {step name: int8 output})`` for every step
        whose output is an int8 activation (NHWC, or ``[B, C]``; the real channels of a padded
        one, see ``to_int8(pad_channels=True)``).

        ``self.steps()[name].sim_quantizer`` names the simulation's ``FakeQuant`` node whose
        (dequantized) values that activation stands for.
        """
        acts: dict[str, torch.Tensor] = {}

        class _Rec(fx.Interpreter):
            def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
                res = super().call_module(target, args, kwargs)
                if isinstance(res, torch.Tensor) and res.dtype == torch.int8:
                    acts[str(target)] = self.fetch_attr(str(target)).logical(res)
                return res

        out = _Rec(self.net).run(*args)
        return out, acts

    @property
    def padded_channels(self) -> dict[str, tuple[int, int]]:
        """``{step name: (channels, stored channels)}`` of the steps whose output is stored with
        extra channels (``to_int8(pad_channels=True)``); empty otherwise."""
        return {name: (m.logical_channels, m.stored_channels) for name, m in self.steps().items()
                if m.logical_channels is not None}

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


def to_int8(q: nn.Module, backend: Optional[str] = "auto", fallback: bool = True,
            fuse_residual: bool = True, fuse_stem: bool = True, fuse_depthwise: bool = False,
            pad_channels: bool = True) -> Int8Network:
    """The integer network of a simulated quantized model.

    Args:
        q: the ``torch.fx.GraphModule`` returned by :func:`dfq_gpu.quantize` (activations
            quantized, weights of at most 8 bits).
        backend: ``"auto"`` (default: Triton kernels for CUDA tensors, the integer reference on
            the CPU), ``"triton"`` (on the CPU only under Triton's interpreter,
            ``TRITON_INTERPRET=1``), ``"reference"``, or ``None`` to follow the kernels'
            process-wide default; changeable later through ``.backend``.
        fallback: run what has no int8 step (an op without a kernel, a layer left in float, a
            float op between quantizers...) in float32, between a dequantize of its int8 inputs
            and the quantize of the simulation's next quantizer, exactly as the simulation
            computes it (the same module on the same values); ``False`` raises instead.
            ``net.coverage`` says what runs where and why.
        fuse_residual: compute each residual add that
            :func:`dfq_gpu.quant.plan.residual_fusions` selects (an operand produced by a dense,
            undilated convolution or a linear layer with no other user) in the step of that layer:
            one convolution or GEMM launch with the add in its epilogue on the Triton path, so
            the layer's int8 output is never written and read back. The outputs are the same bit
            for bit; the layer's own quantizer is then not materialized (``net.activations`` and
            :func:`dfq_gpu.int8.compare_with_simulation` have no entry for it; the fused step's
            ``layer_quantizer`` names it). ``net.coverage.fused`` lists the fused adds.
            ``False`` keeps every add a step of its own and every quantizer's activation
            (what :func:`dfq_gpu.export.golden_activations` uses).
        fuse_stem: let the convolution that :func:`dfq_gpu.quant.plan.stem_fusions` selects (the
            first convolution, on an input of fewer than 16 channels read only by it) quantize the
            float input itself (:class:`~dfq_gpu.int8.layers.Int8StemConv2d`): on the Triton path
            one quantize-and-im2col kernel and a GEMM, with no int8 NHWC copy of the input. The
            outputs are the same bit for bit; the input quantizer's activation is not
            materialized. ``net.coverage.stem`` names the convolution. ``False`` keeps the
            :class:`~dfq_gpu.int8.layers.QuantizeInput` step.
        fuse_depthwise: compute each depthwise convolution that
            :func:`dfq_gpu.quant.plan.depthwise_project_fusions` selects (one whose int8 output only
            a 1x1 convolution reads: the depthwise -> project pair of an inverted-residual block) in
            the step of that 1x1 convolution (:class:`~dfq_gpu.int8.layers.Int8DepthwiseProjectConv2d`):
            on the Triton path one kernel (``kernels.dwproject``), so the depthwise output never
            reaches memory. The same outputs bit for bit; the depthwise output's quantizer is not
            materialized; ``net.coverage.depthwise`` lists the pairs. Off by default until a GPU
            run shows it faster than the two kernels.
        pad_channels: store the activations whose channel count is not a multiple of 16 (24, 40,
            72, ...) with channels up to the next multiple, where only layers and channel-wise
            steps make and read them (:mod:`dfq_gpu.int8.padding`): their rows become 16-byte
            aligned, which the GEMM's vector loads, ``cp.async`` and TMA need, for the price of
            the extra bytes (compiled for sm_90, a GEMM on rows of 24 or 40 bytes loads and stores
            single bytes without ``cp.async`` and spills registers with the default tile). The real
            channels are the same bit for bit; ``net.padded_channels`` lists the padded steps,
            ``net.activations`` returns their real channels. ``False`` keeps every tensor's channels.

    Returns:
        An :class:`Int8Network` on the CPU (``.to("cuda")`` moves its integer parameters) that
        takes float NCHW images and returns float outputs. The module docstring of
        :mod:`dfq_gpu.int8.convert` lists how it can differ from the simulation.

    Non-finite input (NaN, Inf) raises :class:`~dfq_gpu.DFQError` on the CPU and is saturated
    to the ends of the input quantizer's grid on CUDA (NaN to the bottom), see
    :class:`Int8Network`.

    Raises:
        Int8ConversionError: the model cannot become an integer network at all (activations not
            quantized, no quantizer, not a ``GraphModule``), or, with ``fallback=False``, something
            cannot run in int8; the message names the node.
    """
    if backend is not None and backend not in kernels.BACKENDS:
        raise ValueError(f"backend must be one of {kernels.BACKENDS} or None, got {backend!r}")
    if not isinstance(q, fx.GraphModule):
        raise Int8ConversionError(f"to_int8 takes the torch.fx.GraphModule returned by dfq_gpu.quantize, got "
                                  f"{type(q).__name__}")
    cfg = getattr(q, "dfq_config", None)
    if cfg is not None and getattr(cfg, "act_bits", 8) is None:
        raise Int8ConversionError("the activations are not quantized (DFQConfig.act_bits=None): the integer network "
                                  "needs activation quantizers; quantize with act_bits=8")
    if not any(isinstance(m, FakeQuant) for m in q.modules()):
        raise Int8ConversionError("the model has no activation quantizer (FakeQuant): quantize it with "
                                  "dfq_gpu.quantize(..., DFQConfig(act_bits=8)) first")
    with torch.inference_mode(False), torch.no_grad():
        plan = build_plan(q)
    stale = stale_integer_steps(q, plan)
    if stale:
        log.warning("the simulation's integer parameters of %s no longer match its quantizers, biases or activations "
                    "(changed after quantize?); the integer network follows those, so its outputs can differ from "
                    "the simulation's until dfq_gpu.quant.simulate.make_integer_exact(q) updates it",
                    ", ".join(stale))
    fusions = residual_fusions(q, plan) if fuse_residual else {}
    stems = stem_fusions(q, plan, fusions) if fuse_stem else {}
    dws = depthwise_project_fusions(q, plan) if fuse_depthwise else {}
    conv = _Converter(q, backend, plan, fallback=fallback, fusions=fusions, stems=stems, depthwise=dws)
    with torch.inference_mode(False), torch.no_grad():
        net = conv.run()
        if pad_channels:
            padding.pad_channels(net)
    coverage = measure_coverage(q, conv.float_nodes, conv.is_bookkeeping, fused=conv.fused, stem=conv.stem_fused,
                                depthwise=conv.dw_fused)
    n_steps = sum(1 for n in net.graph.nodes if n.op == "call_module")
    log.info("built an int8 network with %d steps: %s", n_steps, coverage.summary())
    if coverage.float_nodes:
        log.warning("int8 network: %s", coverage.summary())
    out = Int8Network(net, backend, coverage)
    out.dfq_config = cfg  # type: ignore[attr-defined]
    return out

