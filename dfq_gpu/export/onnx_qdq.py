"""ONNX export of a simulated quantized network as a QDQ graph (and of a float network as plain ONNX).

:func:`export_onnx` walks the ``torch.fx`` graph returned by :func:`dfq_gpu.quantize` node by
node and writes each node with ``onnx.helper`` (opset 13; 14 or 17 where PyTorch's exporter
writes a float op, below), laid out as ONNX Runtime and TensorRT expect a statically quantized
("QDQ") model:

* every ``FakeQuant`` becomes ``QuantizeLinear`` (its output, the integer codes, is the tensor
  named after the ``FakeQuant`` node, e.g. ``act_quant_c1_2``) followed, for each consumer, by
  its own ``DequantizeLinear`` (``act_quant_c1_2_dq``, ``act_quant_c1_2_dq_1``, ...). Same float32
  scale and zero point as the quantizer: asymmetric grids ``[0, 2^b - 1]`` as ``uint8``,
  symmetric ones ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` as ``int8``. A grid narrower than its storage
  type (symmetric 8-bit: ``-128`` is not on it; fewer than 8 bits) gets a ``Clip`` to the grid's
  float range in front of the ``QuantizeLinear``.
* ``QConv2d`` / ``QLinear``: ``Conv`` / ``Gemm`` (``transB=1``) whose weight is an integer
  initializer (``int8`` for symmetric weights, ``uint8`` with its zero point for asymmetric ones)
  followed by ``DequantizeLinear`` (per tensor, or per output channel along axis 0), and whose
  bias is an ``int32`` initializer ``round(b / (s_x s_w))`` (scale ``float32(s_x s_w)``, zero
  point 0) followed by ``DequantizeLinear``, exactly the integer bias of
  :mod:`dfq_gpu.quant.requant`. A ``ZeroPad2d`` in front of a convolution becomes part of the
  convolution's ``pads``.
* fused clamps: ``ReLU`` -> ``Relu``, ``ReLU6`` / ``Hardtanh`` / a ``ChannelClamp`` whose
  bounds are the same for every channel -> ``Clip``; a per-channel ``ChannelClamp`` ->
  ``Max`` / ``Min`` with constant ``[1, C, 1, 1]`` bounds. When a quantizer follows it (as
  always in :func:`dfq_gpu.quantize`'s networks), the per-channel clamp acts on the codes:
  ``layer -> QuantizeLinear -> DequantizeLinear -> Max -> Min -> QuantizeLinear``, with the
  bounds quantized as the integer network quantizes them. Rounding is monotone, so this is the
  same clamp, and the layer stays followed by its ``QuantizeLinear``, which runtimes fuse into
  ``QLinearConv``.
* scales around a fused layer: ONNX Runtime computes a ``QLinearConv``'s multiplier as
  ``float32(float32(s_x * s_w) / s_y)``, the integer contract as ``float32(s_x s_w / s_y)``
  rounded once; they differ in the last bit for about a quarter of the layers, and the outputs
  then differ near rounding ties. The layer's input ``DequantizeLinear``, weight
  ``DequantizeLinear`` and output ``QuantizeLinear`` therefore carry scales a few units in the
  last place from the quantizers' (about 1e-7 relative, :func:`exact_multiplier_scales`) for
  which the two agree: for every per-tensor weight scale, for about nine channels in ten of
  per-channel ones. The other ``DequantizeLinear`` nodes carry the quantizers' scales.
* residual adds: ``Add`` of two dequantized tensors (each input has its own ``DequantizeLinear``
  after the ``QuantizeLinear`` of its quantizer); global average pooling: ``GlobalAveragePool``
  (then ``Flatten`` for a ``[B, C]`` result). Runtimes fuse both (``QLinearAdd``,
  ``QLinearGlobalAveragePool``) and keep their own arithmetic, which differs near rounding ties.
  A linear layer on ``[..., K]`` (tokens, an NHWC view) is a ``Gemm`` on the codes reshaped to
  ``[-1, K]``, its float result reshaped back.
* the integer network's other steps, which runtimes have no fused integer kernel for, are written
  as the integer network's own arithmetic in plain ONNX ops on exact integers, so that their codes
  are the integer network's: an elementwise activation (:class:`~dfq_gpu.modules.QLookup`: hardswish,
  SiLU, sigmoid, GELU, ...) and a per-channel affine map (:class:`~dfq_gpu.modules.QChannelAffine`)
  are ``Gather`` from their tables (``Cast`` of the codes to ``int32``, minus the grid's lowest
  code, plus the channel's row); a product (:class:`~dfq_gpu.modules.QMul`, the squeeze-excitation
  gate), a windowed or adaptive average pool and bilinear resampling compute ``q - z`` (``Cast``,
  ``Sub``), the exact accumulator (``Mul``; window sums and bilinear weights as two ``MatMul`` with
  ``[out, in]`` matrices of 0/1 or of the integer weights, in float64 when a sum may pass 2^24),
  then ``Mul`` by the multiplier (per window), ``Round`` (half to even), ``Clip`` to the grid and
  ``Mul`` by the output scale, which the next ``QuantizeLinear`` maps back to the same codes. Codes
  going onto another grid (a cat of several quantizations, a second quantizer) go through the
  integer network's table from one grid to the other (``Gather``).
* ops that move values: max pooling (``MaxPool``), flatten / reshape (``Flatten`` / ``Reshape``),
  zero padding not in front of a convolution (``Pad``), nearest upsampling (``Gather`` of
  PyTorch's source rows and columns), ``cat`` (``Concat``), ``transpose`` / ``permute``
  (``Transpose``), ``chunk`` / ``split`` (``Split``) and slicing (``Slice``) are wrapped
  ``DequantizeLinear -> op -> QuantizeLinear`` with the quantizer of their input (a no-op on the
  values).
* ops the simulation computes in float between a dequantize and a quantize (the integer network's
  float fallback: a layer norm, an activation whose quantizers are disabled) and the float ops of a
  float network: activations (``Relu``, ``Clip``, ``HardSigmoid``, ``Sigmoid``, ``Tanh``, ``Erf``,
  ``LeakyRelu``, ``Elu``, ``Softplus``, ``PRelu``; hardswish, SiLU, mish and GELU composed from them
  with ``Mul`` / ``Add``), batch norms left in (``Mul``, ``Add``), layer norms (``ReduceMean``,
  ``Sqrt``, ...), products, sums and quotients of tensors and numbers, windowed and adaptive
  average pools (PyTorch's windows and divisors, as above in float), bilinear resampling
  (``Resize``), float parameters read by the graph (initializers).
* what is computed from constants alone (Swin's relative position bias, from its table and an
  integer index) is folded into initializers; any other op that computes in float without an
  emitter here (attention, ``einsum``, ``softmax``, an ``expand`` to the batch, Swin's shifted-window
  attention, ...) is exported by PyTorch's own exporter and spliced in, its inputs dequantized as
  the simulation reads them (:mod:`.onnx_fallback`; listed in the metadata ``dfq_gpu.pytorch_exported``,
  opset 14 or 17 then).
* the network output: ``output`` (``output_0``, ... for several), float32.

A float network (no ``FakeQuant``, e.g. :func:`dfq_gpu.prepare`'s folded and equalized model)
is written with the same emitters as plain ONNX: float weights and biases, no Q/DQ.

What neither can write raises :class:`ExportError` (a :class:`~dfq_gpu.DFQError`) naming the node.
"""

from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import DFQError
from ..graph import ops
from ..graph.trace import node_module
from ..modules import (ChannelClamp, FakeQuant, QAdaptiveAvgPool2d, QAdd, QAvgPool, QAvgPool2d, QChannelAffine, QConv2d,
                       QLinear, QLookup, QMul, QUpsampleBilinear)
from ..quant import requant
from .onnx_fallback import ConstantsAndFallback
from .onnx_scales import FusedScales, exact_multiplier_scales
from .onnx_steps import _QP, _T, FloatOps, IntegerSteps, Movement, _same_grid

__all__ = ["OPSET", "ExportError", "FusedScales", "exact_multiplier_scales", "export_onnx", "quantized_tensor_names",
           "uint8_weights"]

#: The ONNX opset of exported graphs (per-axis DequantizeLinear needs 13), unless a float op
#: exported by PyTorch needs a later one (:data:`.onnx_fallback.FALLBACK_OPSETS`).
OPSET = 13
_METADATA_KEY = "dfq_gpu.quantized_tensors"
_FALLBACK_KEY = "dfq_gpu.pytorch_exported"

_RELU_FNS = (F.relu, torch.relu)
_RELU6_FNS = (F.relu6,)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d)
_TRANSPOSES = frozenset({"transpose", "permute", torch.transpose, torch.permute})
_SPLITS = frozenset({"chunk", "split", torch.chunk, torch.split})
_FLOAT_BINARY: dict[Any, str] = {operator.mul: "Mul", torch.mul: "Mul", "mul": "Mul", operator.add: "Add",
                                 torch.add: "Add", "add": "Add", operator.sub: "Sub", torch.sub: "Sub", "sub": "Sub",
                                 operator.truediv: "Div", torch.div: "Div", "div": "Div"}


class ExportError(DFQError):
    """The network cannot be written as ONNX; the message names the node and why."""


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportError("ONNX export needs the 'onnx' package: pip install 'dfq-gpu[export]'") from exc
    return onnx


def _storage(symmetric: bool) -> tuple[str, int, int]:
    return ("int8", -128, 127) if symmetric else ("uint8", 0, 255)


class _Emitter(IntegerSteps, FloatOps, Movement, ConstantsAndFallback):
    """Walks the fx graph and writes each node (the QDQ layout of layers, clamps, adds, pools,
    padding and reshapes here; the other steps in the mixins of :mod:`.onnx_steps`, constants
    and PyTorch's exporter in :mod:`.onnx_fallback`)."""

    def __init__(self, gm: fx.GraphModule, onnx: Any, exact: bool = False) -> None:
        self.gm = gm
        self.onnx = onnx
        self.exact = exact  # residual adds and global average pools as integer arithmetic too
        self.h = onnx.helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.env: dict[fx.Node, _T] = {}
        self.done: set[fx.Node] = set()
        self.taken: set[str] = set()  # tensor names
        self.node_names: set[str] = set()
        self.dq_count: dict[str, int] = {}
        self.quantized: list[str] = []  # Q outputs named after FakeQuant nodes, in graph order
        self.q_scales: dict[str, np.float32] = {}  # FakeQuant node -> scale of the Q right after a fused layer
        self.materialized: dict[fx.Node, _T] = {}  # constants read by tensors: their initializers
        self.fallback_nodes: list[str] = []  # nodes exported by PyTorch's exporter
        self.opsets: dict[str, int] = {"": OPSET}

    # ----------------------------------------------------------------------------- helpers
    def err(self, node: fx.Node, why: str) -> ExportError:
        return ExportError(f"cannot export {ops.describe(self.gm, node)} to ONNX: {why}")

    def fresh(self, base: str, taken: Optional[set[str]] = None) -> str:
        taken = self.taken if taken is None else taken
        base = base.replace(".", "_") or "t"
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], out: str, node_name: Optional[str] = None, **attrs: Any) -> str:
        """Append a node with one output tensor ``out`` (taken as it is: callers pass a fresh name)."""
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out],
                                           name=self.fresh(node_name or out, self.node_names),
                                           **attrs))
        return out

    def qparams(self, name: str, fq: FakeQuant, node: fx.Node) -> _QP:
        if fq.bits > 8:
            raise self.err(node, f"{fq.bits}-bit activations (ONNX QDQ stores 8-bit codes)")
        dtype, smin, smax = _storage(fq.symmetric)
        z = int(round(float(fq.zero_point)))
        if not (smin <= fq.qmin <= z <= fq.qmax <= smax):
            raise self.err(node, f"zero point {z} on the grid [{fq.qmin}, {fq.qmax}] does not fit {dtype}")
        return _QP(np.float32(float(fq.scale)), z, dtype, int(fq.qmin), int(fq.qmax), name)

    def qdq_consts(self, qp: _QP, base: str, scale: Optional[np.float32] = None) -> tuple[str, str]:
        """The scale and zero point initializers of a Q/DQ node of the quantizer ``qp`` (one
        shared pair per quantizer); ``scale`` replaces its scale in this node (a new initializer)."""
        z = f"{base}_zero_point"
        if z not in self.taken:
            self.const(z, np.array(qp.zero_point, dtype=qp.dtype))
        if scale is not None and np.float32(scale) != qp.scale:
            return self.const(f"{base}_q_scale", np.array(scale, dtype=np.float32)), z
        s = f"{base}_scale"
        if s not in self.taken:
            self.const(s, np.array(qp.scale, dtype=np.float32))
        return s, z

    def quantize(self, x: str, qp: _QP, out_base: str, scale: Optional[np.float32] = None) -> str:
        """``QuantizeLinear`` of a float tensor (with a ``Clip`` to the grid when it is narrower
        than the storage type); ``scale`` replaces the quantizer's in this node."""
        s, z = self.qdq_consts(qp, qp.fq_name, scale)
        _, smin, smax = _storage(qp.dtype == "int8")
        if (qp.qmin, qp.qmax) != (smin, smax):
            lo = self.const(f"{out_base}_grid_min", np.array(np.float32(qp.qmin - qp.zero_point) * qp.scale,
                                                              dtype=np.float32))
            hi = self.const(f"{out_base}_grid_max", np.array(np.float32(qp.qmax - qp.zero_point) * qp.scale,
                                                              dtype=np.float32))
            x = self.op("Clip", [x, lo, hi], self.fresh(f"{out_base}_grid_clip"))
        return self.op("QuantizeLinear", [x, s, z], self.fresh(out_base))

    def dequantize(self, t: _T, scale: Optional[np.float32] = None) -> str:
        """A new ``DequantizeLinear`` of the codes ``t`` (one per consumer); ``scale`` replaces
        the quantizer's scale in this one (see :func:`exact_multiplier_scales`)."""
        assert t.q is not None and t.name is not None
        k = self.dq_count.get(t.name, 0)
        self.dq_count[t.name] = k + 1
        s, z = self.qdq_consts(t.q, t.q.fq_name, scale)
        return self.op("DequantizeLinear", [t.name, s, z], self.fresh(f"{t.name}_dq" + (f"_{k}" if k else "")))

    def value(self, node: fx.Node, arg: Any, keep_pad: bool = False) -> _T:
        if not isinstance(arg, fx.Node) or arg not in self.env:
            raise self.err(node, f"its input {arg!r} is not a tensor the export knows")
        t = self.env[arg]
        if t.kind == "const":
            t = self.materialize(node, arg, t)
        if t.kind != "tensor":
            raise self.err(node, f"its input {ops.describe(self.gm, arg)} is not a tensor")
        if t.pad is not None and not keep_pad:
            t = self.apply_pad(arg, t)
        return t

    def float_input(self, node: fx.Node, arg: Any, keep_pad: bool = False) -> tuple[str, _T]:
        """The float ONNX tensor of ``arg`` for ``node`` (a ``DequantizeLinear`` of quantized codes)."""
        t = self.value(node, arg, keep_pad)
        return (self.dequantize(t) if t.q is not None else t.name), t  # type: ignore[return-value]

    def passthrough(self, node: fx.Node, src: _T, op_type: str, inputs: list[str], shape: Any, **attrs: Any) -> None:
        """An op that moves values unchanged: on codes, DQ -> op -> Q with the input's quantizer."""
        out = self.op(op_type, inputs, self.fresh(node.name if src.q is None else f"{node.name}_float"),
                      node_name=node.name, **attrs)
        if src.q is not None:
            out = self.quantize(out, src.q, node.name)
        self.env[node] = _T(out, shape=shape, q=src.q)

    def apply_pad(self, node: fx.Node, t: _T) -> _T:
        assert t.pad is not None
        top, bottom, left, right = t.pad
        pads = self.const(f"{node.name}_pads", np.array([0, 0, top, left, 0, 0, bottom, right], dtype=np.int64))
        x = self.dequantize(t) if t.q is not None else t.name
        tmp = _T(t.name, shape=t.shape, q=t.q)
        self.passthrough(node, tmp, "Pad", [x, pads], t.shape, mode="constant")
        t2 = self.env[node]
        return t2

    def sole_quantizer(self, node: fx.Node) -> Optional[tuple[fx.Node, FakeQuant]]:
        """The enabled ``FakeQuant`` that is the only user of ``node``, if any."""
        users = list(node.users)
        m = node_module(self.gm, users[0]) if len(users) == 1 else None
        return (users[0], m) if isinstance(m, FakeQuant) and m.enabled else None

    def output_quantizer(self, node: fx.Node) -> Optional[tuple[fx.Node, FakeQuant]]:
        """The quantizer of a layer's output: its only user, or behind its only user when that is
        a clamp activation."""
        found = self.sole_quantizer(node)
        users = list(node.users)
        if found is None and len(users) == 1 and self.is_clamp(users[0]):
            found = self.sole_quantizer(users[0])
        return found

    def is_clamp(self, node: fx.Node) -> bool:
        return isinstance(node_module(self.gm, node), (nn.ReLU, nn.ReLU6, nn.Hardtanh, ChannelClamp)) or (
            node.op == "call_function" and node.target in _RELU_FNS + _RELU6_FNS)

    # ----------------------------------------------------------------------------- walk
    def run(self, input_names: Optional[Sequence[str]]) -> Any:
        # the integer-code tensors get the names of the FakeQuant nodes: reserve them
        reserved = {n.name for n in self.gm.graph.nodes if isinstance(node_module(self.gm, n), FakeQuant)}
        self.taken |= reserved
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        for i, node in enumerate(placeholders):
            shape = ops.tensor_shape(node)
            if shape is None:
                raise self.err(node, "no shape information (pass example_inputs)")
            name = self.fresh(input_names[i] if input_names else node.name)
            dims: list[Any] = ["batch"] + list(shape[1:])
            self.inputs.append(self.h.make_tensor_value_info(name, self.onnx.TensorProto.FLOAT, dims))
            self.env[node] = _T(name, shape=shape)
            self.done.add(node)
        for node in self.gm.graph.nodes:
            if node not in self.done:
                self.visit(node)
        graph = self.h.make_graph(self.nodes, "dfq_gpu", self.inputs, self.outputs, initializer=self.inits)
        model = self.h.make_model(graph, opset_imports=[self.h.make_opsetid(d, v) for d, v in self.opsets.items()],
                                  producer_name="dfq_gpu")
        model.ir_version = min(model.ir_version, 8)  # readable by older runtimes too
        props = {}
        if self.quantized:
            props[_METADATA_KEY] = json.dumps(self.quantized)
        if self.fallback_nodes:
            props[_FALLBACK_KEY] = json.dumps(self.fallback_nodes)
        if props:
            self.h.set_model_props(model, props)
        return model

    def visit(self, node: fx.Node) -> None:
        gm = self.gm
        if node.op == "output":
            self.output(node)
            return
        if node.op == "get_attr":
            self.constant(node)
            return
        if self.foldable(node):
            self.fold(node)
            return
        m = node_module(gm, node)
        if isinstance(m, FakeQuant):
            self.fake_quant(node, m)
        elif isinstance(m, (QConv2d, nn.Conv2d)):
            self.conv(node, m)
        elif isinstance(m, (QLinear, nn.Linear)):
            self.linear(node, m)
        elif self.is_clamp(node):
            self.clamp(node, m)
        elif isinstance(m, QAdd) and self.exact:
            self.exact_add(node, m)
        elif isinstance(m, QAvgPool) and self.exact:
            self.exact_global_average(node, m)
        elif isinstance(m, QAdd) or ops.is_add(node):
            self.add(node)
        elif isinstance(m, QAvgPool) or (ops.is_spatial_pool(gm, node) == "avg" and
                                         not isinstance(m, (QAvgPool2d, QAdaptiveAvgPool2d))):
            self.avgpool(node, m)
        elif isinstance(m, QLookup):
            self.lookup(node, m) if m.integer else self.activation(node, m.fn, m.fn_kwargs)
        elif isinstance(m, QChannelAffine):
            if m.integer:
                self.channel_affine(node, m)
            else:
                self.channel_affine_in_float(node, m.scale.double().numpy(), m.shift.double().numpy())
        elif isinstance(m, QMul):
            self.mul(node, m)
        elif isinstance(m, (QAvgPool2d, QAdaptiveAvgPool2d)):
            self.window_average(node, m)
        elif isinstance(m, QUpsampleBilinear):
            self.bilinear(node, m)
        elif ops.is_cat(node):
            self.cat(node)
        elif (up := ops.nearest_upsample_args(gm, node)) is not None:
            self.nearest(node, *up)
        elif ops.is_interpolate(gm, node):
            self.resize(node, m)
        elif (act := ops.elementwise_activation(gm, node)) is not None:
            self.activation(node, *act)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            self.batch_norm(node, m)
        elif isinstance(m, nn.LayerNorm) or (node.op == "call_function" and node.target is F.layer_norm):
            self.layer_norm(node, m)
        elif node.op in ("call_method", "call_function") and node.target in _TRANSPOSES:
            self.transpose(node)
        elif node.op in ("call_method", "call_function") and node.target in _SPLITS:
            self.split(node)
        elif node.op == "call_function" and node.target is operator.getitem and \
                self.env.get(node.args[0], _T(None)).kind == "tuple":
            self.env[node] = self.env[node.args[0]].items[node.args[1]]  # type: ignore[index]
        elif node.op == "call_function" and node.target is operator.getitem and \
                self.env.get(node.args[0], _T(None)).kind == "tensor":
            self.slice(node)
        elif ops.is_spatial_pool(gm, node) == "max":
            self.maxpool(node, m)
        elif ops.is_zero_pad(gm, node):
            self.zero_pad(node)
        elif isinstance(m, _IDENTITY_MODULES):
            self.env[node] = self.value(node, node.args[0], keep_pad=True)
        elif ops.is_shape_query(node):
            self.env[node] = _T(None, kind="other")
        elif node.op in ("call_function", "call_method") and ops.tensor_shape(node) is None and all(
                self.env.get(a, _T(None)).kind in ("other", "const") for a in node.all_input_nodes):
            self.env[node] = _T(None, kind="other")  # arithmetic on sizes
        elif node.op in ("call_function", "call_method") and node.target in _FLOAT_BINARY:
            self.float_binary(node, _FLOAT_BINARY[node.target])
        elif ops.is_flatten_reshape(gm, node) or ops.is_channel_preserving_reshape(gm, node) or (
                node.op == "call_method" and node.target in ("view", "reshape", "flatten", "squeeze", "unsqueeze",
                                                             "contiguous")) \
                or (node.op == "call_function" and node.target in (torch.flatten, torch.reshape, torch.squeeze,
                                                                  torch.unsqueeze)) \
                or isinstance(m, nn.Flatten):
            self.reshape(node)
        else:
            what = type(m).__name__ if m is not None else getattr(node.target, "__name__", str(node.target))
            self.torch_fallback(node, f"no ONNX emitter for {what} (supported: convolutions, linear layers, "
                                      "ReLU/ReLU6/Hardtanh/ChannelClamp, residual adds, the integer network's lookup "
                                      "tables, per-channel maps, products, average pools and bilinear resampling, "
                                      "max pooling, zero padding, nearest upsampling, cat, chunk/split, "
                                      "transpose/permute, flatten/reshape, activation quantizers, and float ops "
                                      "PyTorch's ONNX exporter writes)")

    # ----------------------------------------------------------------------------- node kinds
    def fake_quant(self, node: fx.Node, fq: FakeQuant) -> None:
        t = self.value(node, node.args[0])
        if not fq.enabled:
            self.env[node] = _T(self.dequantize(t) if t.q is not None else t.name, shape=ops.tensor_shape(node))
            return
        qp = self.qparams(node.name, fq, node)
        # codes of another grid: the integer network's table onto this one (exact), else the float value
        x = self.regrid(node, t, fq) if t.q is not None and not _same_grid(t.q, qp) else \
            (self.dequantize(t) if t.q is not None else t.name)
        assert x is not None
        self.taken.discard(node.name)
        out = self.quantize(x, qp, node.name, self.q_scales.get(node.name))
        assert out == node.name
        self.quantized.append(out)
        self.env[node] = _T(out, shape=ops.tensor_shape(node), q=qp)

    def layer_input(self, node: fx.Node, m: nn.Module, keep_pad: bool = False, x: Optional[_T] = None
                    ) -> tuple[str, _T, Optional[FusedScales]]:
        """The float input of a conv / linear layer, its value (``x``: instead of the node's
        argument), and, when the layer's output is quantized, the :class:`FusedScales` that its
        input and weight ``DequantizeLinear`` and its output ``QuantizeLinear`` carry."""
        x = self.value(node, node.args[0], keep_pad) if x is None else x
        if x.q is None:
            return x.name, x, None  # type: ignore[return-value]
        out_q = self.output_quantizer(node)
        tuned = None
        if out_q is not None and isinstance(m, (QConv2d, QLinear)):
            s_x, s_y = float(x.q.scale), float(out_q[1].scale)
            mult = requant.requant_multiplier(requant.accumulator_step(s_x, m.w_scale), s_y).numpy()
            tuned = exact_multiplier_scales(s_x, m.w_scale.detach().cpu().to(torch.float32).numpy(), s_y, mult)
            self.q_scales[out_q[0].name] = tuned.y
        return self.dequantize(x, None if tuned is None else tuned.x), x, tuned

    def _weight(self, node: fx.Node, m: nn.Module, x: _T, tuned: Optional[FusedScales] = None
                ) -> tuple[str, Optional[str]]:
        """ONNX names of the (dequantized) weight and bias of a layer (``tuned``: the scales of
        :meth:`layer_input`)."""
        base = node.name
        n = m.weight.shape[0]
        if not isinstance(m, (QConv2d, QLinear)):
            w = self.const(f"{base}_weight", m.weight.detach().cpu().to(torch.float32).numpy())
            b = None if m.bias is None else self.const(f"{base}_bias", m.bias.detach().cpu().to(torch.float32).numpy())
            return w, b
        if m.w_bits > 8:
            raise self.err(node, f"{m.w_bits}-bit weights (ONNX QDQ stores 8-bit codes)")
        q = m.integer_weight()
        zp = m.w_zero_point.detach().to(torch.int64).cpu().reshape(-1)
        scale = m.w_scale.detach().to(torch.float64).cpu().reshape(-1)
        if zp.numel() not in (1, n) or scale.numel() not in (1, n):
            raise self.err(node, "weight scale / zero point neither per tensor nor per output channel")
        dtype, smin, smax = _storage(m.w_symmetric)
        if int(q.min()) < smin or int(q.max()) > smax or int(zp.min()) < smin or int(zp.max()) > smax:
            raise self.err(node, f"integer weights or zero point outside {dtype}")
        per_channel = scale.numel() > 1 or zp.numel() > 1
        scale_32 = scale.numpy().astype(np.float32) if tuned is None else tuned.w
        if per_channel:
            scale_a = np.broadcast_to(scale_32, (n,)).astype(np.float32)
            zp_a = zp.expand(n).numpy().astype(dtype)
        else:
            scale_a = np.array(scale_32.reshape(-1)[0], dtype=np.float32)
            zp_a = np.array(zp[0].item(), dtype=dtype)
        wq = self.const(f"{base}_weight_quantized", q.numpy().astype(dtype))
        ws = self.const(f"{base}_weight_scale", scale_a)
        wz = self.const(f"{base}_weight_zero_point", zp_a)
        attrs = {"axis": 0} if per_channel else {}
        w = self.op("DequantizeLinear", [wq, ws, wz], self.fresh(f"{base}_weight"), **attrs)
        if x.q is None:  # float input: float bias
            bias = m.bias.detach().cpu().to(torch.float32).numpy() if m.bias is not None else np.zeros(n, np.float32)
            return w, self.const(f"{base}_bias", bias)
        step = requant.accumulator_step(float(x.q.scale), m.w_scale)  # s_x s_w, float64, [1|N]
        bias_q = requant.integer_bias(m.bias, step, n)
        bq = self.const(f"{base}_bias_quantized", bias_q.numpy().astype(np.int32))
        x_scale = x.q.scale if tuned is None else tuned.x
        b_scale = (np.float32(x_scale) * np.asarray(scale_a, dtype=np.float32)).astype(np.float32)  # s_x s_w
        if per_channel:
            bs = self.const(f"{base}_bias_scale", b_scale)
            bz = self.const(f"{base}_bias_zero_point", np.zeros(n, dtype=np.int32))
        else:
            bs = self.const(f"{base}_bias_scale", np.array(b_scale, dtype=np.float32))
            bz = self.const(f"{base}_bias_zero_point", np.array(0, dtype=np.int32))
        b = self.op("DequantizeLinear", [bq, bs, bz], self.fresh(f"{base}_bias"), **attrs)
        return w, b

    def conv(self, node: fx.Node, m: nn.Conv2d) -> None:
        if len(node.args) != 1 or node.kwargs:
            raise self.err(node, "a layer call with extra arguments")
        x_name, x, tuned = self.layer_input(node, m, keep_pad=True)
        if m.padding_mode != "zeros":
            raise self.err(node, f"padding_mode='{m.padding_mode}' (only zero padding)")
        kh, kw = m.kernel_size
        if isinstance(m.padding, str):
            if m.padding == "valid":
                ph = pw = (0, 0)
            else:  # "same": PyTorch puts the extra row/column at the end
                dh, dw = m.dilation
                th, tw = dh * (kh - 1), dw * (kw - 1)
                ph, pw = (th // 2, th - th // 2), (tw // 2, tw - tw // 2)
        else:
            p = ops.pair(m.padding)
            ph, pw = (p[0], p[0]), (p[1], p[1])
        extra = x.pad or (0, 0, 0, 0)
        pads = [ph[0] + extra[0], pw[0] + extra[2], ph[1] + extra[1], pw[1] + extra[3]]
        w, b = self._weight(node, m, x, tuned)
        inputs = [x_name, w] + ([b] if b is not None else [])
        out = self.op("Conv", inputs, self.fresh(node.name), kernel_shape=[kh, kw], strides=list(ops.pair(m.stride)),
                      pads=pads, dilations=list(ops.pair(m.dilation)), group=int(m.groups))
        self.env[node] = _T(out, shape=ops.tensor_shape(node))

    def linear(self, node: fx.Node, m: nn.Linear) -> None:
        if len(node.args) != 1 or node.kwargs:
            raise self.err(node, "a layer call with extra arguments")
        x = self.value(node, node.args[0])
        shape = ops.tensor_shape(node)
        if x.shape is None or len(x.shape) < 2 or shape is None:
            raise self.err(node, "a linear layer without shape information (pass example_inputs)")
        if len(x.shape) > 2:  # [..., K]: the layer on the rows of the [-1, K] matrix (the codes reshaped)
            rows = self.const(f"{node.name}_rows_shape", np.array([-1, x.shape[-1]], dtype=np.int64))
            x = replace(x, name=self.op("Reshape", [x.name, rows], self.fresh(f"{node.name}_rows")),  # type: ignore
                        shape=(-1, x.shape[-1]))
        x_name, x, tuned = self.layer_input(node, m, x=x)
        w, b = self._weight(node, m, x, tuned)
        inputs = [x_name, w] + ([b] if b is not None else [])
        out = self.op("Gemm", inputs, self.fresh(node.name if len(shape) == 2 else f"{node.name}_rows"), transB=1)
        if len(shape) > 2:
            back = self.const(f"{node.name}_shape", np.array([-1] + list(shape[1:]), dtype=np.int64))
            out = self.op("Reshape", [out, back], self.fresh(node.name))
        self.env[node] = _T(out, shape=shape)

    def clamp(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        x_name, x = self.float_input(node, node.args[0])
        shape = ops.tensor_shape(node) or x.shape
        if m is None:
            lo, hi = (0.0, math.inf) if node.target in _RELU_FNS else (0.0, 6.0)
            per_channel = None
        elif isinstance(m, ChannelClamp):
            lo_t, hi_t = m.lo.detach().cpu().to(torch.float32), m.hi.detach().cpu().to(torch.float32)
            if bool((lo_t == lo_t[0]).all()) and bool((hi_t == hi_t[0]).all()):
                lo, hi, per_channel = float(lo_t[0]), float(hi_t[0]), None
            else:
                lo = hi = 0.0
                per_channel = (lo_t, hi_t)
        else:
            b = ops.is_clamp_act(m)
            assert b is not None
            lo, hi = b
            per_channel = None
        if per_channel is not None:
            if shape is None or len(shape) < 2 or shape[1] != per_channel[0].numel():
                raise self.err(node, f"per-channel bounds for {per_channel[0].numel()} channels on shape {shape}")
            bshape = [1, shape[1]] + [1] * (len(shape) - 2)
            lo_a, hi_a = per_channel[0].numpy(), per_channel[1].numpy()
            fq = self.sole_quantizer(node)
            if fq is not None:
                # Quantized next: clamp the codes instead (rounding is monotone, so clamping the
                # codes to the quantized bounds is the same), which leaves the producer followed
                # directly by a QuantizeLinear that runtimes fuse into it (QLinearConv).
                qp = self.qparams(fq[0].name, fq[1], fq[0])
                lo_q, hi_q = requant.quantized_bounds(requant.Grid.of(fq[1]), per_channel[0], per_channel[1])
                codes = self.quantize(x_name, qp, f"{node.name}_codes", self.q_scales.get(fq[0].name))
                t = self.dequantize(_T(codes, q=qp), self.q_scales.get(fq[0].name))
                scale = np.float32(self.q_scales.get(fq[0].name, qp.scale))
                lo_a = (lo_q - qp.zero_point).numpy().astype(np.float32) * scale  # DequantizeLinear's float32
                hi_a = (hi_q - qp.zero_point).numpy().astype(np.float32) * scale
                x_name = t
            lo_c = self.const(f"{node.name}_lo", lo_a.astype(np.float32).reshape(bshape))
            hi_c = self.const(f"{node.name}_hi", hi_a.astype(np.float32).reshape(bshape))
            y = self.op("Max", [x_name, lo_c], self.fresh(f"{node.name}_max"))
            out = self.op("Min", [y, hi_c], self.fresh(node.name))
        elif lo == 0.0 and hi == math.inf:
            out = self.op("Relu", [x_name], self.fresh(node.name))
        else:
            ins = [x_name, self.const(f"{node.name}_min", np.array(lo, dtype=np.float32))]
            if hi != math.inf:
                ins.append(self.const(f"{node.name}_max", np.array(hi, dtype=np.float32)))
            out = self.op("Clip", ins, self.fresh(node.name))
        self.env[node] = _T(out, shape=shape)

    def add(self, node: fx.Node) -> None:
        ins = ops.tensor_inputs(node) if not isinstance(node_module(self.gm, node), QAdd) else list(node.args)
        if len(ins) != 2:
            raise self.err(node, "an add without two tensor inputs")
        sa, sb = ops.tensor_shape(ins[0]), ops.tensor_shape(ins[1])
        if isinstance(node_module(self.gm, node), QAdd) and sa is not None and sb is not None and sa != sb:
            raise self.err(node, f"an add of tensors of different shapes {sa} and {sb} (broadcasting)")
        a, _ = self.float_input(node, ins[0])
        b, _ = self.float_input(node, ins[1])
        out = self.op("Add", [a, b], self.fresh(node.name))
        self.env[node] = _T(out, shape=ops.tensor_shape(node))

    def avgpool(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        if not isinstance(m, QAvgPool):
            problem = self._global_avgpool_problem(node)
            if problem is not None:
                self.float_window_average(node, problem)
                return
        x_name, x = self.float_input(node, node.args[0])
        if x.shape is None or len(x.shape) != 4:
            raise self.err(node, "average pooling of a tensor that is not 4-D")
        shape_out = ops.tensor_shape(node)
        out = self.op("GlobalAveragePool", [x_name], self.fresh(node.name if shape_out is None or len(shape_out) == 4
                                                                else f"{node.name}_4d"), node_name=node.name)
        if shape_out is not None and len(shape_out) == 2:
            out = self.op("Flatten", [out], self.fresh(node.name), axis=1)
        self.env[node] = _T(out, shape=shape_out)

    def _global_avgpool_problem(self, node: fx.Node) -> Optional[str]:
        from ..quant.simulate import global_avgpool_problem

        return global_avgpool_problem(self.gm, node)

    def maxpool(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        x = self.value(node, node.args[0])
        src_name = self.dequantize(x) if x.q is not None else x.name
        assert src_name is not None
        if isinstance(m, nn.AdaptiveMaxPool2d) or (node.op == "call_function" and node.target is F.adaptive_max_pool2d):
            size = m.output_size if m is not None else ops.node_arg(node, 1, "output_size", None)
            if ops.pair(size) != (1, 1):
                raise self.err(node, f"adaptive max pooling to {size} (only global)")
            shape_out = ops.tensor_shape(node)
            if shape_out is not None and len(shape_out) == 2:
                tmp = self.op("GlobalMaxPool", [src_name], self.fresh(f"{node.name}_4d"))
                self.passthrough(node, x, "Flatten", [tmp], shape_out, axis=1)
            else:
                self.passthrough(node, x, "GlobalMaxPool", [src_name], shape_out)
            return
        a = ops.max_pool_args(self.gm, node)
        if a is None:
            raise self.err(node, "an unsupported kind of max pooling")
        if a.return_indices:
            raise self.err(node, "max pooling with return_indices")
        p = a.padding
        self.passthrough(node, x, "MaxPool", [src_name], ops.tensor_shape(node), kernel_shape=list(a.kernel),
                         strides=list(a.stride), pads=[p[0], p[1], p[0], p[1]], dilations=list(a.dilation),
                         ceil_mode=int(a.ceil_mode))

    def zero_pad(self, node: fx.Node) -> None:
        x = self.value(node, node.args[0], keep_pad=True)
        if x.shape is None or len(x.shape) != 4:
            raise self.err(node, "zero padding of a tensor that is not 4-D")
        left, right, top, bottom = ops.zero_pad_amounts(self.gm, node)
        if min(left, right, top, bottom) < 0:
            raise self.err(node, "negative padding (cropping)")
        p = x.pad or (0, 0, 0, 0)
        self.env[node] = replace(x, shape=ops.tensor_shape(node),
                                 pad=(p[0] + top, p[1] + bottom, p[2] + left, p[3] + right))
        # merged into the next convolution when every user is one, else an explicit Pad
        if not all(isinstance(node_module(self.gm, u), nn.Conv2d) and u.args[0] is node for u in node.users):
            self.env[node] = self.apply_pad(node, self.env[node])

    def reshape(self, node: fx.Node) -> None:
        ins = ops.tensor_inputs(node)
        if len(ins) != 1:
            raise self.err(node, "a reshape with several tensor inputs")
        x = self.value(node, ins[0])
        si, so = ops.tensor_shape(ins[0]), ops.tensor_shape(node)
        if si is None or so is None:
            raise self.err(node, "no shape information (pass example_inputs)")
        if si == so:
            self.env[node] = x
            return
        src = self.dequantize(x) if x.q is not None else x.name
        assert src is not None
        if len(so) == 2 and so[0] == si[0] and so[1] == math.prod(si[1:]):
            self.passthrough(node, x, "Flatten", [src], so, axis=1)
            return
        if so[0] != si[0]:
            raise self.err(node, f"a reshape from {si} to {so} that changes the batch dimension")
        shape = self.const(f"{node.name}_shape", np.array([0] + list(so[1:]), dtype=np.int64))
        self.passthrough(node, x, "Reshape", [src, shape], so)

    def output(self, node: fx.Node) -> None:
        flat: list[fx.Node] = []
        fx.node.map_arg(node.args[0], lambda a: flat.append(a))
        for i, a in enumerate(flat):
            name = "output" if len(flat) == 1 else f"output_{i}"
            t = self.value(node, a)
            src = self.dequantize(t) if t.q is not None else t.name
            assert src is not None
            out = self.op("Identity", [src], self.fresh(name))
            shape = ops.tensor_shape(a)
            dims: Optional[list[Any]] = None if shape is None else ["batch"] + list(shape[1:])
            self.outputs.append(self.h.make_tensor_value_info(out, self.onnx.TensorProto.FLOAT, dims))


def _ensure_shapes(gm: fx.GraphModule, example_inputs: Optional[Sequence[Any]]) -> None:
    if example_inputs is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
        return
    for n in gm.graph.nodes:
        if n.op == "placeholder" and ops.tensor_shape(n) is None:
            raise ExportError(f"the graph has no shape information for input '{n.name}': pass example_inputs")


def export_onnx(q: nn.Module, path: Optional[str | os.PathLike] = None,
                example_inputs: Optional[Sequence[Any]] = None, *, input_names: Optional[Sequence[str]] = None,
                check: bool = True, weights: str = "int8", exact: bool = False) -> Any:
    """Write a network of this package as ONNX (opset 13, see :data:`OPSET`) and return the
    ``onnx.ModelProto``.

    Args:
        q: the ``torch.fx.GraphModule`` of :func:`dfq_gpu.quantize` (written as a QDQ graph, see
            the module docstring), or of :func:`dfq_gpu.prepare` (no quantizers: plain float ONNX).
        path: the ``.onnx`` file to write (``None``: only return the model).
        example_inputs: inputs to record tensor shapes with when the graph has none (graphs from
            ``quantize`` / ``prepare`` / ``dfq_gpu.load`` already do).
        input_names: ONNX names of the inputs (default: the graph's placeholder names).
        check: run ``onnx.checker.check_model`` on the result.
        weights: ``"int8"`` (default: symmetric weights as ``int8`` with zero point 0, what
            TensorRT takes) or ``"uint8"`` (every weight as ``uint8``, symmetric ones with zero
            point 128: the same values, for ONNX Runtime on x86 CPUs without VNNI, see
            :func:`uint8_weights`).
        exact: write residual adds and global average pools as the integer network's arithmetic
            too (as the other non-fused steps), instead of ``DequantizeLinear -> Add /
            GlobalAveragePool -> QuantizeLinear``, which runtimes fuse into kernels with their own
            rounding (``QLinearAdd``); ONNX Runtime then returns every code of the integer network
            wherever its fused convolutions do (every layer with per-tensor weights). For checking
            runtimes and results, not for speed.

    The batch dimension of inputs and outputs is dynamic (``batch``). The tensor named after each
    ``FakeQuant`` node of ``q`` holds that quantizer's integer codes (uint8 / int8); see
    :func:`quantized_tensor_names` and :func:`dfq_gpu.export.run_onnx`.

    Raises:
        ExportError: ``q`` is not an fx graph, lacks shapes, or holds a node that neither an
            emitter nor PyTorch's exporter writes (the message names it); ``onnx`` is not installed.
    """
    onnx = _require_onnx()
    if not isinstance(q, fx.GraphModule):
        raise ExportError(f"export_onnx takes the torch.fx.GraphModule of dfq_gpu.quantize or dfq_gpu.prepare, got "
                          f"{type(q).__name__}")
    if weights not in ("int8", "uint8"):
        raise ExportError(f"weights must be 'int8' or 'uint8', got {weights!r}")
    _ensure_shapes(q, example_inputs)
    model = _Emitter(q, onnx, exact=bool(exact)).run(input_names)
    if weights == "uint8":
        model = uint8_weights(model)
    if check:
        onnx.checker.check_model(model)
    if path is not None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_bytes(model.SerializeToString())
        os.replace(tmp, p)
    return model


def uint8_weights(model: Any) -> Any:
    """A copy of an exported model whose ``int8`` weights (initializers read by a
    ``DequantizeLinear``, with an ``int8`` zero point) are stored as ``uint8``, codes and zero
    point shifted by 128: ``(w + 128) - (z + 128) = w - z``, the same dequantized values.

    Why: on x86 CPUs without VNNI, ONNX Runtime runs a fused ``QLinearConv`` / ``QGemm`` of
    ``uint8`` activations and ``int8`` weights (U8S8) with ``VPMADDUBSW``, which saturates a sum of
    two products at 16 bits, and its outputs are then wrong by tens of codes where large
    activations meet large weights (microsoft/onnxruntime#16105; its quantization guide
    recommends U8U8 there). ``uint8`` weights take the U8U8 kernels, which do not saturate."""
    onnx = _require_onnx()
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    done: set[str] = set()
    for n in m.graph.node:
        if n.op_type != "DequantizeLinear" or len(n.input) < 3 or n.input[0] in done:
            continue
        w, z = inits.get(n.input[0]), inits.get(n.input[2])
        if w is None or z is None or w.data_type != onnx.TensorProto.INT8 or (
                z.data_type != onnx.TensorProto.INT8 and z.name not in done):
            continue
        for t in (w, z) if z.name not in done else (w,):
            shifted = (numpy_helper.to_array(t).astype(np.int16) + 128).astype(np.uint8)
            t.CopyFrom(numpy_helper.from_array(shifted, t.name))
            done.add(t.name)
    return m


def quantized_tensor_names(model: Any) -> list[str]:
    """The integer-code tensors of an exported model (named after the simulation's ``FakeQuant``
    nodes), in graph order."""
    for p in model.metadata_props:
        if p.key == _METADATA_KEY:
            return list(json.loads(p.value))
    return []

