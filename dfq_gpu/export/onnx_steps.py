"""The exporter's emitters beyond the QDQ layout of :mod:`.onnx_qdq`, as mixins of its emitter:
the integer network's steps written as its own arithmetic in plain ONNX ops (:class:`IntegerSteps`),
float ops (:class:`FloatOps`) and ops that move values (:class:`Movement`); and the values an fx
node becomes (:class:`_T`, with the activation quantizer :class:`_QP`).

The mixins use the emitter's helpers (``op``, ``const``, ``fresh``, ``value``, ``float_input``,
``quantize``, ``dequantize``, ``passthrough``, ``sole_quantizer``, ``qparams``, ``err``), defined
in :class:`dfq_gpu.export.onnx_qdq._Emitter`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from kernels import reference as kref

from ..graph import ops
from ..modules import (FakeQuant, QAdaptiveAvgPool2d, QAdd, QAvgPool, QAvgPool2d, QChannelAffine, QLookup, QMul,
                       QUpsampleBilinear)
from ..nn import grid_values
from ..quant import requant


@dataclass(frozen=True)
class _QP:
    """An activation quantizer in ONNX terms."""

    scale: np.float32
    zero_point: int
    dtype: str  # "uint8" | "int8"
    qmin: int
    qmax: int
    fq_name: str  # the FakeQuant node whose grid this is


@dataclass(frozen=True)
class _T:
    """What an fx node became: ``name`` is an ONNX tensor (float, or integer codes when ``q`` is
    set); ``kind`` ``"other"`` for Python values (sizes) that the ONNX graph does not need,
    ``"const"`` for what is computed from constants alone (``value``; an initializer once a tensor
    reads it, integer codes of ``q`` when a quantizer produced it)."""

    name: Optional[str]
    kind: str = "tensor"
    shape: Optional[tuple[int, ...]] = None
    q: Optional[_QP] = None
    pad: Optional[tuple[int, int, int, int]] = None  # pending zero padding (top, bottom, left, right)
    items: Optional[tuple["_T", ...]] = None  # kind "tuple": the tensors of chunk / split
    value: Any = field(default=None, compare=False)  # kind "const": the value


def _same_grid(a: _QP, b: _QP) -> bool:
    return (a.scale, a.zero_point, a.qmin, a.qmax) == (b.scale, b.zero_point, b.qmin, b.qmax)


def _window_matrix(start: torch.Tensor, end: torch.Tensor, n: int) -> np.ndarray:
    """``[out, n]``: 1 where input ``i`` is in window ``o`` (``start[o] <= i < end[o]``)."""
    i = np.arange(n)[None, :]
    return ((i >= start.numpy()[:, None]) & (i < end.numpy()[:, None])).astype(np.float64)


def _bilinear_matrix(i0: torch.Tensor, i1: torch.Tensor, w1: torch.Tensor, n: int) -> np.ndarray:
    """``[out, n]``: the integer weights ``2^F - w1`` of ``i0`` and ``w1`` of ``i1`` per output."""
    out = np.zeros((i0.numel(), n), dtype=np.float64)
    rows = np.arange(i0.numel())
    np.add.at(out, (rows, i0.numpy()), (1 << kref.BILINEAR_FRAC_BITS) - w1.numpy())
    np.add.at(out, (rows, i1.numpy()), w1.numpy())
    return out


class IntegerSteps:
    """The integer network's steps that runtimes have no fused kernel for, as its own arithmetic
    in plain ONNX ops (exact), and residual adds / global pools the same way with ``exact=True``."""

    def codes(self, node: fx.Node, arg: Any, scale: Optional[float] = None, zero_point: Optional[int] = None) -> _T:
        """The quantized value of ``arg`` for a step of the integer network, whose quantizer must
        have the ``scale`` (and ``zero_point``) the step was built for."""
        t = self.value(node, arg)
        if t.q is None:
            raise self.err(node, "its input is not quantized (the integer step needs integer codes)")
        if (scale is not None and t.q.scale != np.float32(scale)) or (
                zero_point is not None and t.q.zero_point != int(zero_point)):
            raise self.err(node, f"its input's quantizer (scale {float(t.q.scale):.6g}, zero point {t.q.zero_point}) "
                                 f"is not the one it was built for ({scale}, {zero_point})")
        return t

    def cast(self, x: str, to: str, base: str) -> str:
        return self.op("Cast", [x], self.fresh(base), to=getattr(self.onnx.TensorProto, to))

    def centered(self, node: fx.Node, t: _T, dtype: str = "FLOAT") -> str:
        """The integers ``q - z`` of the codes ``t`` as ``dtype`` (exact)."""
        assert t.q is not None and t.name is not None
        x = self.cast(t.name, dtype, f"{node.name}_int")
        if t.q.zero_point == 0:
            return x
        np_dtype = {"FLOAT": np.float32, "DOUBLE": np.float64, "INT32": np.int32}[dtype]
        z = self.const(f"{node.name}_x_zero_point", np.array(t.q.zero_point, dtype=np_dtype))
        return self.op("Sub", [x, z], self.fresh(f"{node.name}_centered"))

    def requantized(self, node: fx.Node, acc: str, multiplier: Any, lo: Any, hi: Any, y_scale: float) -> str:
        """``clamp(rne(float32(acc) * m), lo, hi) * s_y`` (float32): the output quantizer's value of
        the integer epilogue (``lo``/``hi`` relative to its zero point: numbers, or per-channel
        arrays shaped to broadcast), as the simulation computes it."""
        m = self.const(f"{node.name}_multiplier", np.asarray(multiplier, dtype=np.float32))
        y = self.op("Mul", [acc, m], self.fresh(f"{node.name}_scaled"))
        y = self.op("Round", [y], self.fresh(f"{node.name}_rounded"))  # half to even, as torch.round
        lo_c = self.const(f"{node.name}_lo", np.asarray(lo, dtype=np.float32))
        hi_c = self.const(f"{node.name}_hi", np.asarray(hi, dtype=np.float32))
        if np.ndim(lo) == 0 and np.ndim(hi) == 0:
            y = self.op("Clip", [y, lo_c, hi_c], self.fresh(f"{node.name}_clamped"))
        else:
            y = self.op("Min", [self.op("Max", [y, lo_c], self.fresh(f"{node.name}_max")), hi_c],
                        self.fresh(f"{node.name}_clamped"))
        s = self.const(f"{node.name}_y_scale", np.array(y_scale, dtype=np.float32))
        return self.op("Mul", [y, s], self.fresh(node.name))

    def table_lookup(self, node: fx.Node, t: _T, table: torch.Tensor, qmin: int, offsets: Optional[np.ndarray] = None
                     ) -> str:
        """``table[q - qmin (+ offset of q's channel)]`` for the codes ``t`` (``Gather``; ``table``
        holds float32 output values)."""
        assert t.name is not None
        idx = self.cast(t.name, "INT32", f"{node.name}_index")
        idx = self.op("Sub", [idx, self.const(f"{node.name}_qmin", np.array(qmin, dtype=np.int32))],
                      self.fresh(f"{node.name}_index"))
        if offsets is not None:
            idx = self.op("Add", [idx, self.const(f"{node.name}_rows", offsets.astype(np.int32))],
                          self.fresh(f"{node.name}_index"))
        tab = self.const(f"{node.name}_table", table.detach().cpu().to(torch.float32).reshape(-1).numpy())
        return self.op("Gather", [tab, idx], self.fresh(node.name), axis=0)

    def regrid(self, node: fx.Node, t: _T, fq: FakeQuant) -> str:
        """The float values ``fq`` gives the codes ``t`` of another grid (a table, exact)."""
        assert t.q is not None
        with torch.no_grad():
            v = grid_values(torch.arange(t.q.qmin, t.q.qmax + 1), float(t.q.scale), t.q.zero_point)
            table = fq(v)
        return self.table_lookup(node, t, table, t.q.qmin)

    def lookup(self, node: fx.Node, m: QLookup) -> None:
        """An elementwise activation: the integer network's table from input codes to output
        values (``table * s_y``, as :class:`QLookup` computes them)."""
        if not m.integer:
            raise self.err(node, f"{m.fn} computed in float (its quantizers are disabled)")
        t = self.codes(node, node.args[0], *m.x[:2])
        values = m.table * torch.tensor(m.y[0], dtype=torch.float32)
        self.env[node] = _T(self.table_lookup(node, t, values, m.x_qmin), shape=ops.tensor_shape(node))

    def channel_affine(self, node: fx.Node, m: QChannelAffine) -> None:
        """A per-channel affine map: one table per channel (rows of one flat table)."""
        if not m.integer:
            raise self.err(node, "a per-channel affine map computed in float (its quantizers are disabled)")
        t = self.codes(node, node.args[0], *m.x[:2])
        if t.shape is None or len(t.shape) < 2:
            raise self.err(node, "no shape information (pass example_inputs)")
        n = m.x_qmax - m.x_qmin + 1
        rows = (np.arange(m.channels) * n).reshape([1, m.channels] + [1] * (len(t.shape) - 2))
        values = m.table * torch.tensor(m.y[0], dtype=torch.float32)
        self.env[node] = _T(self.table_lookup(node, t, values, m.x_qmin, rows), shape=ops.tensor_shape(node))

    def mul(self, node: fx.Node, m: QMul) -> None:
        """A product (squeeze-excitation gate): ``(a - z_a)(b - z_b)`` exactly, then the epilogue."""
        a = self.codes(node, node.args[0], m.a_scale)
        b = self.codes(node, node.args[1], m.b_scale)
        acc = self.op("Mul", [self.centered(node, a), self.centered(node, b)], self.fresh(f"{node.name}_acc"))
        out = self.requantized(node, acc, m.multiplier, m.qmin - m.zero_point, m.qmax - m.zero_point, m.y_scale)
        self.env[node] = _T(out, shape=ops.tensor_shape(node))

    def exact_add(self, node: fx.Node, m: QAdd) -> None:
        """A residual add with its fused clamp as the integer network computes it (``exact=True``):
        ``(a - z_a) ia + (b - z_b) ib`` exactly (float64 when it may pass 2^24), then the epilogue."""
        a, b = self.codes(node, node.args[0], m.a_scale), self.codes(node, node.args[1], m.b_scale)
        if a.shape is None or a.shape != b.shape:
            raise self.err(node, f"an add of tensors of different shapes {a.shape} and {b.shape} (broadcasting)")
        dt, np_dt = ("DOUBLE", np.float64) if m.acc_bound >= kref.EXACT_FLOAT32 else ("FLOAT", np.float32)
        terms = [self.op("Mul", [self.centered(node, t, dt), self.const(f"{node.name}_i", np.array(i, dtype=np_dt))],
                         self.fresh(f"{node.name}_term")) for t, i in ((a, m.ia), (b, m.ib))]
        acc = self.op("Add", terms, self.fresh(f"{node.name}_acc"))
        if dt == "DOUBLE":
            acc = self.cast(acc, "FLOAT", f"{node.name}_acc")
        lo, hi = (m.lo - m.zero_point).numpy(), (m.hi - m.zero_point).numpy()
        if lo.size > 1:
            view = [1, -1] + [1] * (len(a.shape) - 2)
            lo, hi = lo.reshape(view), hi.reshape(view)
        else:
            lo, hi = lo.reshape(()), hi.reshape(())
        out = self.requantized(node, acc, m.multiplier, lo, hi, m.y_scale)
        self.env[node] = _T(out, shape=ops.tensor_shape(node))

    def exact_global_average(self, node: fx.Node, m: QAvgPool) -> None:
        """A global average pool as the integer network computes it (``exact=True``): the exact
        sum over the image (``ReduceSum``, float64 when it may pass 2^24), then the epilogue (or,
        for the float network output, ``float32(sum) * float32(s_x / HW)``)."""
        t = self.codes(node, node.args[0], m.x_scale)
        if t.shape is None or len(t.shape) != 4:
            raise self.err(node, "average pooling of a tensor that is not 4-D")
        hw = int(t.shape[2] * t.shape[3])
        wide = hw * max(abs(v) for v in m.x_range) >= kref.EXACT_FLOAT32
        acc = self.op("ReduceSum", [self.centered(node, t, "DOUBLE" if wide else "FLOAT"),
                                    self.const(f"{node.name}_axes", np.array([2, 3], dtype=np.int64))],
                      self.fresh(f"{node.name}_acc"), keepdims=int(m.keepdim))
        if wide:
            acc = self.cast(acc, "FLOAT", f"{node.name}_acc")
        if m.y_scale is None:
            s = self.const(f"{node.name}_scale", np.array(requant.avgpool_float_scale(m.x_scale, hw), dtype=np.float32))
            out = self.op("Mul", [acc, s], self.fresh(node.name))
        else:
            mult = requant.avgpool_multiplier(m.x_scale, m.y_scale, hw)
            out = self.requantized(node, acc, mult, m.qmin - m.zero_point, m.qmax - m.zero_point, m.y_scale)
        self.env[node] = _T(out, shape=ops.tensor_shape(node))

    def separable(self, node: fx.Node, t: _T, rows: np.ndarray, cols: np.ndarray, bound: int) -> str:
        """``rows @ (x - z) @ cols^T`` over the last two dimensions of the codes ``t``, exactly: in
        float32 when every partial sum stays below 2^24 (``bound``: the largest ``|result|``), else
        in float64, then float32 as the reference rounds it."""
        wide = bound >= kref.EXACT_FLOAT32
        dt, np_dt = ("DOUBLE", np.float64) if wide else ("FLOAT", np.float32)
        y = self.rows_cols(node, self.centered(node, t, dt), rows, cols, np_dt, f"{node.name}_acc")
        return self.cast(y, "FLOAT", f"{node.name}_acc") if wide else y

    def rows_cols(self, node: fx.Node, x: str, rows: np.ndarray, cols: np.ndarray, dtype: Any, out: str) -> str:
        """``rows @ x @ cols^T`` over the last two dimensions of ``x`` (two ``MatMul``, constants of
        ``dtype``)."""
        y = self.op("MatMul", [x, self.const(f"{node.name}_cols", cols.T.astype(dtype))], self.fresh(f"{node.name}_w"))
        return self.op("MatMul", [self.const(f"{node.name}_rows", rows.astype(dtype)), y], self.fresh(out))

    def window_average(self, node: fx.Node, m: QAvgPool2d | QAdaptiveAvgPool2d) -> None:
        """A windowed or adaptive average pool: exact window sums (products with 0/1 matrices, one
        per axis), times the multiplier of each window's divisor."""
        t = self.codes(node, node.args[0], m.x_scale)
        if t.shape is None or len(t.shape) != 4:
            raise self.err(node, "average pooling of a tensor that is not 4-D (or without shape information)")
        H, W = t.shape[2:]
        if isinstance(m, QAdaptiveAvgPool2d):
            oh, ow = kref.adaptive_output_size((H, W), m.output_size)
            (sh, eh), (sw, ew) = kref.adaptive_windows(H, oh), kref.adaptive_windows(W, ow)
            mult = kref.adaptive_average_multipliers((H, W), (oh, ow), m.x_scale, m.y_scale)
        else:
            ph, pw = m.padding
            oh = kref.pool_output_size(H, m.kernel[0], ph, ph, m.stride[0], 1, m.ceil_mode)
            ow = kref.pool_output_size(W, m.kernel[1], pw, pw, m.stride[1], 1, m.ceil_mode)
            sh, eh = kref.pool_windows(H, oh, m.kernel[0], m.stride[0], ph)
            sw, ew = kref.pool_windows(W, ow, m.kernel[1], m.stride[1], pw)
            mult = kref.window_average_multipliers((H, W), (oh, ow), m.kernel, m.stride, (ph, ph, pw, pw),
                                                   m.count_include_pad, m.x_scale, m.y_scale)
        rows, cols = _window_matrix(sh, eh, H), _window_matrix(sw, ew, W)
        bound = int((eh - sh).max() * (ew - sw).max()) * max(abs(v) for v in m.x_range)
        acc = self.separable(node, t, rows, cols, bound)
        out = self.requantized(node, acc, mult.numpy(), m.qmin - m.zero_point, m.qmax - m.zero_point, m.y_scale)
        self.env[node] = _T(out, shape=ops.tensor_shape(node))

    def bilinear(self, node: fx.Node, m: QUpsampleBilinear) -> None:
        """Bilinear resampling: the exact accumulator with the integer weights of each axis (two
        products with ``[out, in]`` weight matrices), then the epilogue."""
        t = self.codes(node, node.args[0], m.x_scale)
        shape = ops.tensor_shape(node)
        if t.shape is None or len(t.shape) != 4 or shape is None:
            raise self.err(node, "bilinear resampling without shape information (pass example_inputs)")
        (H, W), (oh, ow) = t.shape[2:], shape[2:]
        given_size = m.size is not None or len(node.args) > 1 or "size" in node.kwargs
        sh, sw = (None, None) if given_size else m.scale_factor  # type: ignore[misc]
        rows = _bilinear_matrix(*kref.bilinear_taps(H, oh, m.align_corners, sh), H)
        cols = _bilinear_matrix(*kref.bilinear_taps(W, ow, m.align_corners, sw), W)
        acc = self.separable(node, t, rows, cols, 0)  # |acc| <= 255 * 2^16 < 2^24
        out = self.requantized(node, acc, m.multiplier, m.qmin - m.zero_point, m.qmax - m.zero_point, m.y_scale)
        self.env[node] = _T(out, shape=shape)


class FloatOps:
    """Ops that a float network holds, or that a quantized one computes in float between a
    dequantize and a quantize (the integer network's float fallback): plain ONNX float ops."""

    def activation(self, node: fx.Node, fn: str, kwargs: dict[str, Any]) -> None:
        """An elementwise activation in float (:data:`dfq_gpu.nn.ELEMENTWISE`'s ``fn``)."""
        x, _ = self.float_input(node, node.args[0])
        out = self.float_activation(node, x, fn, kwargs)
        self.env[node] = _T(out, shape=ops.tensor_shape(node))

    def float_activation(self, node: fx.Node, x: str, fn: str, kw: dict[str, Any]) -> str:
        name = node.name

        def const(tag: str, v: float) -> str:
            return self.const(f"{name}_{tag}", np.array(v, dtype=np.float32))

        def op(kind: str, ins: list[str], tag: str = "", **attrs: Any) -> str:
            return self.op(kind, ins, self.fresh(f"{name}{tag}"), node_name=name, **attrs)

        if fn in ("hardswish", "hardsigmoid"):
            g = op("HardSigmoid", [x], "_gate" if fn == "hardswish" else "", alpha=1.0 / 6.0, beta=0.5)
            return op("Mul", [x, g]) if fn == "hardswish" else g
        if fn in ("silu", "sigmoid"):
            g = op("Sigmoid", [x], "_gate" if fn == "silu" else "")
            return op("Mul", [x, g]) if fn == "silu" else g
        if fn == "tanh":
            return op("Tanh", [x])
        if fn == "relu":
            return op("Relu", [x])
        if fn in ("relu6", "hardtanh"):
            lo, hi = (0.0, 6.0) if fn == "relu6" else (float(kw.get("min_val", -1.0)), float(kw.get("max_val", 1.0)))
            return op("Clip", [x, const("min", lo), const("max", hi)])
        if fn == "leaky_relu":
            return op("LeakyRelu", [x], alpha=float(kw.get("negative_slope", 0.01)))
        if fn == "elu":
            return op("Elu", [x], alpha=float(kw.get("alpha", 1.0)))
        if fn == "prelu":
            return op("PRelu", [x, self.const(f"{name}_slope", np.array([kw["weight"]], dtype=np.float32))])
        if fn in ("softplus", "mish"):
            beta = float(kw.get("beta", 1.0)) if fn == "softplus" else 1.0
            sx = op("Mul", [x, const("beta", beta)], "_scaled") if beta != 1.0 else x
            sp = op("Softplus", [sx], "_softplus" if fn == "mish" or beta != 1.0 else "")
            if beta != 1.0:
                sp = op("Div", [sp, const("beta_div", beta)], "_softplus" if fn == "mish" else "")
            return op("Mul", [x, op("Tanh", [sp], "_tanh")]) if fn == "mish" else sp
        if fn == "gelu":
            half = op("Mul", [x, const("half", 0.5)], "_half")
            if kw.get("approximate", "none") == "tanh":
                cube = op("Mul", [op("Mul", [x, x], "_sq"), x], "_cube")
                inner = op("Add", [x, op("Mul", [cube, const("k", 0.044715)], "_k")], "_inner")
                t = op("Tanh", [op("Mul", [inner, const("c", math.sqrt(2.0 / math.pi))], "_arg")], "_tanh")
            else:
                t = op("Erf", [op("Div", [x, const("sqrt2", math.sqrt(2.0))], "_arg")], "_erf")
            return op("Mul", [half, op("Add", [t, const("one", 1.0)], "_one_plus")])
        raise self.err(node, f"no ONNX emitter for the activation {fn}")

    def float_binary(self, node: fx.Node, kind: str) -> None:
        """``a * b`` / ``a + b`` / ``a - b`` / ``a / b`` in float (tensors, broadcasting; or a tensor
        and a number)."""
        if node.kwargs or len(node.args) != 2:
            raise self.err(node, "an arithmetic op with keyword arguments (alpha, rounding_mode, out)")
        ins = []
        for a in node.args[:2]:
            if isinstance(a, fx.Node):
                ins.append(self.float_input(node, a)[0])
            elif isinstance(a, (int, float)) and not isinstance(a, bool):
                ins.append(self.const(f"{node.name}_operand", np.array(a, dtype=np.float32)))
            else:
                raise self.err(node, f"an operand {a!r} that is neither a tensor nor a number")
        self.env[node] = _T(self.op(kind, ins, self.fresh(node.name)), shape=ops.tensor_shape(node))

    def channel_affine_in_float(self, node: fx.Node, scale: np.ndarray, shift: np.ndarray) -> None:
        """``x * scale[c] + shift[c]`` along dimension 1 in float (a batch norm, a disabled
        :class:`QChannelAffine`)."""
        x, t = self.float_input(node, node.args[0])
        if t.shape is None or len(t.shape) < 2:
            raise self.err(node, "no shape information (pass example_inputs)")
        view = [1, -1] + [1] * (len(t.shape) - 2)
        y = self.op("Mul", [x, self.const(f"{node.name}_scale", scale.astype(np.float32).reshape(view))],
                    self.fresh(f"{node.name}_scaled"))
        out = self.op("Add", [y, self.const(f"{node.name}_shift", shift.astype(np.float32).reshape(view))],
                      self.fresh(node.name))
        self.env[node] = _T(out, shape=ops.tensor_shape(node))

    def batch_norm(self, node: fx.Node, m: nn.modules.batchnorm._BatchNorm) -> None:
        """A batch norm left in a float network, with its running statistics."""
        if m.running_mean is None or m.running_var is None:
            raise self.err(node, "a batch norm without running statistics")
        scale = m.weight.detach().double() if m.weight is not None else torch.ones_like(m.running_var).double()
        scale = scale / torch.sqrt(m.running_var.double() + m.eps)
        shift = (m.bias.detach().double() if m.bias is not None else 0.0) - m.running_mean.double() * scale
        self.channel_affine_in_float(node, scale.numpy(), shift.numpy() if isinstance(shift, torch.Tensor) else shift)

    def layer_norm(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        """``LayerNorm`` over the last dimensions, in float (mean, variance, normalization, affine)."""
        x, t = self.float_input(node, node.args[0])
        if isinstance(m, nn.LayerNorm):
            shape, w, b, eps = m.normalized_shape, m.weight, m.bias, m.eps
        else:
            shape = ops.node_arg(node, 1, "normalized_shape", None)
            w, b = ops.node_arg(node, 2, "weight", None), ops.node_arg(node, 3, "bias", None)
            eps = ops.node_arg(node, 4, "eps", 1e-5)
            w, b = (self.gm.get_parameter(a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else a
                    for a in (w, b))
        k = len(shape) if isinstance(shape, (tuple, list)) else 1
        if any(isinstance(v, fx.Node) for v in (w, b)):
            raise self.err(node, "a layer norm whose weight or bias is computed")
        axes = list(range(-k, 0))
        mean = self.op("ReduceMean", [x], self.fresh(f"{node.name}_mean"), axes=axes, keepdims=1)
        d = self.op("Sub", [x, mean], self.fresh(f"{node.name}_centered"))
        var = self.op("ReduceMean", [self.op("Mul", [d, d], self.fresh(f"{node.name}_sq"))],
                      self.fresh(f"{node.name}_var"), axes=axes, keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.const(f"{node.name}_eps", np.array(eps, dtype=np.float32))],
                                       self.fresh(f"{node.name}_var_eps"))], self.fresh(f"{node.name}_std"))
        y = self.op("Div", [d, std], self.fresh(f"{node.name}_normalized" if w is not None or b is not None
                                                 else node.name))
        if w is not None:
            y = self.op("Mul", [y, self.const(f"{node.name}_weight", w.detach().cpu().float().numpy())],
                        self.fresh(f"{node.name}_weighted" if b is not None else node.name))
        if b is not None:
            y = self.op("Add", [y, self.const(f"{node.name}_bias", b.detach().cpu().float().numpy())],
                        self.fresh(node.name))
        self.env[node] = _T(y, shape=ops.tensor_shape(node))

    def float_window_average(self, node: fx.Node, problem: str) -> None:
        """A windowed or adaptive average pool in float, with PyTorch's windows and divisors: the
        window sums as two products with 0/1 matrices, divided by each window's divisor."""
        x_name, x = self.float_input(node, node.args[0])
        shape = ops.tensor_shape(node)
        if x.shape is None or len(x.shape) != 4 or shape is None or len(shape) != 4:
            raise self.err(node, problem)
        (H, W), (oh, ow) = x.shape[2:], shape[2:]
        a = ops.avg_pool_args(self.gm, node)
        if a is not None:
            if a.divisor_override is not None:
                raise self.err(node, "average pooling with divisor_override")
            (kh, kw), (st_h, st_w), (ph, pw) = a.kernel, a.stride, a.padding
            (sh, eh), (sw, ew) = kref.pool_windows(H, oh, kh, st_h, ph), kref.pool_windows(W, ow, kw, st_w, pw)
            d = kref.avgpool2d_divisors(H, oh, kh, st_h, ph, ph, a.count_include_pad)[:, None] * \
                kref.avgpool2d_divisors(W, ow, kw, st_w, pw, pw, a.count_include_pad)[None, :]
        elif ops.adaptive_avg_pool_size(self.gm, node) is not None:
            (sh, eh), (sw, ew) = kref.adaptive_windows(H, oh), kref.adaptive_windows(W, ow)
            d = (eh - sh)[:, None] * (ew - sw)[None, :]
        else:
            raise self.err(node, problem)
        y = self.rows_cols(node, x_name, _window_matrix(sh, eh, H), _window_matrix(sw, ew, W), np.float32,
                           f"{node.name}_sum")
        out = self.op("Div", [y, self.const(f"{node.name}_divisor", d.numpy().astype(np.float32))],
                      self.fresh(node.name))
        self.env[node] = _T(out, shape=shape)

    def resize(self, node: fx.Node, m: Optional[nn.Module]) -> None:
        """Bilinear resampling computed in float (a network output that no quantizer takes, or a
        float network): ``Resize`` to the traced output size (the batch size follows the input)."""
        up = ops.bilinear_upsample_args(self.gm, node)
        if up is None:
            raise self.err(node, "a resampling mode other than nearest and bilinear (or non-constant arguments)")
        x_name, x = self.float_input(node, node.args[0])
        shape = ops.tensor_shape(node)
        if shape is None or len(shape) != 4:
            raise self.err(node, "bilinear resampling without shape information (pass example_inputs)")
        nc = self.op("Shape", [x_name], self.fresh(f"{node.name}_shape"))
        nc = self.op("Slice", [nc, self.const(f"{node.name}_start", np.array([0], dtype=np.int64)),
                               self.const(f"{node.name}_end", np.array([2], dtype=np.int64))],
                     self.fresh(f"{node.name}_batch_channels"))
        sizes = self.op("Concat", [nc, self.const(f"{node.name}_hw", np.array(shape[2:], dtype=np.int64))],
                        self.fresh(f"{node.name}_sizes"), axis=0)
        mode = "align_corners" if up[2] else "pytorch_half_pixel"
        out = self.op("Resize", [x_name, "", "", sizes], self.fresh(node.name), mode="linear",
                      coordinate_transformation_mode=mode)
        self.env[node] = _T(out, shape=shape)


class Movement:
    """Ops that move values: ``DequantizeLinear -> op -> QuantizeLinear`` with the input's quantizer
    (or the float op on a float tensor)."""

    def cat(self, node: fx.Node) -> None:
        """``Concat``: inputs on the grid of the quantizer that takes the result are dequantized,
        the others mapped onto it by a table (the integer network's requantization); without such a
        quantizer every input must share one grid."""
        parts, dim = ops.node_arg(node, 0, "tensors", None), ops.node_arg(node, 1, "dim", 0)
        shape = ops.tensor_shape(node)
        if not isinstance(parts, (list, tuple)) or shape is None or not isinstance(dim, int):
            raise self.err(node, "a concatenation without shape information or a constant dimension")
        vals = [self.value(node, p) for p in parts]
        fq = self.sole_quantizer(node)
        qs = [v.q for v in vals]
        if fq is not None and all(q is not None for q in qs):
            target = self.qparams(fq[0].name, fq[1], fq[0])
            ins = [self.dequantize(v) if _same_grid(v.q, target) else self.regrid(node, v, fq[1])  # type: ignore
                   for v in vals]
            out = self.op("Concat", ins, self.fresh(node.name), axis=dim % len(shape))
            self.env[node] = _T(out, shape=shape)
            return
        if any(q is None for q in qs):
            if all(q is None for q in qs):  # a float network
                out = self.op("Concat", [v.name for v in vals], self.fresh(node.name), axis=dim % len(shape))
                self.env[node] = _T(out, shape=shape)
                return
            raise self.err(node, "a concatenation of quantized and float tensors")
        if not all(_same_grid(q, qs[0]) for q in qs):  # type: ignore[arg-type]
            # no quantizer takes the result (a network output): the float values, as the simulation
            out = self.op("Concat", [self.dequantize(v) for v in vals], self.fresh(node.name), axis=dim % len(shape))
            self.env[node] = _T(out, shape=shape)
            return
        self.passthrough(node, vals[0], "Concat", [self.dequantize(v) for v in vals], shape, axis=dim % len(shape))

    def nearest(self, node: fx.Node, size: Any, scale_factor: Any) -> None:
        """Nearest-neighbour upsampling: ``Gather`` of PyTorch's source rows and columns."""
        x = self.value(node, node.args[0])
        shape = ops.tensor_shape(node)
        if x.shape is None or len(x.shape) != 4 or shape is None:
            raise self.err(node, "nearest upsampling without shape information (pass example_inputs)")
        probe = torch.empty(1, x.shape[2], x.shape[3], 1, dtype=torch.int8)
        oh, ow, rule_h, rule_w = kref.check_upsample_args(probe, size, scale_factor)
        ih = kref.upsample_nearest_indices(x.shape[2], oh, rule_h).numpy()
        iw = kref.upsample_nearest_indices(x.shape[3], ow, rule_w).numpy()
        src = self.dequantize(x) if x.q is not None else x.name
        assert src is not None
        rows = self.op("Gather", [src, self.const(f"{node.name}_rows", ih)], self.fresh(f"{node.name}_rows"), axis=2)
        self.passthrough(node, x, "Gather", [rows, self.const(f"{node.name}_cols", iw)], shape, axis=3)

    def transpose(self, node: fx.Node) -> None:
        x = self.value(node, node.args[0])
        if x.shape is None:
            raise self.err(node, "no shape information (pass example_inputs)")
        rank = len(x.shape)
        rest = [a for a in node.args[1:]] or list(node.kwargs.values())
        if node.target in ("permute", torch.permute):
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            perm = [int(d) % rank for d in dims]
        else:
            perm = list(range(rank))
            i, j = (int(d) % rank for d in rest[:2])
            perm[i], perm[j] = perm[j], perm[i]
        if sorted(perm) != list(range(rank)):
            raise self.err(node, f"a permutation {perm} of a {rank}-D tensor")
        if perm[0] != 0:
            raise self.err(node, "a transpose that moves the batch dimension")
        src = self.dequantize(x) if x.q is not None else x.name
        assert src is not None
        self.passthrough(node, x, "Transpose", [src], ops.tensor_shape(node), perm=perm)

    def slice(self, node: fx.Node) -> None:
        """Basic indexing ``x[..., a:b:c, k, None]`` that keeps the batch: ``Slice`` (positive
        steps), then ``Reshape`` where integers drop or ``None`` adds dimensions."""
        x = self.value(node, node.args[0])
        shape = ops.tensor_shape(node)
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if x.shape is None or shape is None:
            raise self.err(node, "indexing without shape information (pass example_inputs)")
        if any(not isinstance(i, (slice, int, type(None), type(Ellipsis))) or isinstance(i, bool) for i in index) or \
                sum(i is Ellipsis for i in index) > 1 or any(isinstance(v, fx.Node) for i in index if isinstance(
                    i, slice) for v in (i.start, i.stop, i.step)):
            raise self.err(node, f"indexing with {index!r} (only constant slices, integers, None and ...)")
        real = [i for i in index if i is not None and i is not Ellipsis]
        if Ellipsis in index:
            at = index.index(Ellipsis)
            fill = len(x.shape) - len(real)
            index = index[:at] + (slice(None),) * fill + index[at + 1:]
        starts, ends, axes, steps = [], [], [], []
        dim = 0
        for i in index:
            if i is None:
                continue
            n = x.shape[dim]
            if isinstance(i, int):
                k = i % n
                sl = (k, k + 1, 1)
            else:
                sl = i.indices(n)
                if sl[2] <= 0:
                    raise self.err(node, f"a slice with step {sl[2]} (only positive steps)")
            if sl != (0, n, 1):
                if dim == 0:
                    raise self.err(node, "indexing along the batch dimension")
                starts.append(sl[0]), ends.append(sl[1]), axes.append(dim), steps.append(sl[2])
            dim += 1
        src = self.dequantize(x) if x.q is not None else x.name
        assert src is not None
        if starts:
            consts = [self.const(f"{node.name}_{k}", np.array(v, dtype=np.int64))
                      for k, v in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
            src = self.op("Slice", [src] + consts, self.fresh(f"{node.name}_sliced"))
        target = self.const(f"{node.name}_shape", np.array([0] + list(shape[1:]), dtype=np.int64))
        self.passthrough(node, x, "Reshape", [src, target], shape)

    def split(self, node: fx.Node) -> None:
        """``chunk`` / ``split`` along a non-batch dimension: ``Split`` with the sizes of the
        pieces; ``getitem`` then takes one."""
        x = self.value(node, node.args[0])
        dim = ops.node_arg(node, 2, "dim", 0)
        if x.shape is None or not isinstance(dim, int) or dim % len(x.shape) == 0:
            raise self.err(node, "a split without shape information or along the batch dimension")
        axis = dim % len(x.shape)
        n = x.shape[axis]
        arg = ops.node_arg(node, 1, "chunks" if node.target in ("chunk", torch.chunk) else "split_size_or_sections",
                           None)
        if node.target in ("chunk", torch.chunk):
            step = -(-n // int(arg))
            sizes = [min(step, n - i) for i in range(0, n, step)]
        elif isinstance(arg, int):
            sizes = [min(arg, n - i) for i in range(0, n, arg)]
        else:
            sizes = [int(v) for v in arg]
        src = self.dequantize(x) if x.q is not None else x.name
        assert src is not None
        split = self.const(f"{node.name}_sizes", np.array(sizes, dtype=np.int64))
        names = [self.fresh(f"{node.name}_{i}" if x.q is None else f"{node.name}_{i}_float") for i in range(len(sizes))]
        self.nodes.append(self.h.make_node("Split", [src, split], names, name=self.fresh(node.name, self.node_names),
                                           axis=axis))
        items = []
        for i, (name, k) in enumerate(zip(names, sizes)):
            shape = tuple(x.shape[:axis]) + (k,) + tuple(x.shape[axis + 1:])
            out = self.quantize(name, x.q, f"{node.name}_{i}") if x.q is not None else name
            items.append(_T(out, shape=shape, q=x.q))
        self.env[node] = _T(None, kind="tuple", items=tuple(items))
