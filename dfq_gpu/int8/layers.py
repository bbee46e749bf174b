"""The steps of an integer network: small modules that call the ``dfq_int8`` kernels.

Each step holds its integer parameters as buffers (int8 weights in the kernel layouts,
int32 biases, float32 multipliers, int32 clamp bounds), so ``.to("cuda")`` moves them, and
its zero points, strides and paddings as Python ints. Activations between steps are int8
NHWC tensors (``[B, H, W, C]``), or ``[B, C]`` after pooling and flattening.

``backend`` (``"auto"``, ``"triton"``, ``"reference"``, or ``None`` for the kernels'
process-wide default) is passed to every kernel call; :class:`~dfq_gpu.int8.Int8Network`
sets it on all its steps at once.
"""

from __future__ import annotations

import itertools
from types import ModuleType
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

import kernels

from ..errors import DFQError
from ..quant.requant import avgpool_float_scale, avgpool_multiplier

__all__ = [
    "Int8Step",
    "QuantizeInput",
    "check_finite_input",
    "Dequantize",
    "Int8Conv2d",
    "Int8StemConv2d",
    "Int8DepthwiseProjectConv2d",
    "Int8DepthwiseConv2d",
    "Int8GroupedConv2d",
    "Int8DilatedConv2d",
    "Int8Linear",
    "Int8Add",
    "FloatAdd",
    "Int8AvgPool",
    "FloatAvgPool",
    "Int8MaxPool2d",
    "Int8GlobalMaxPool",
    "Int8Pad",
    "FloatClamp",
    "Int8Lookup",
    "Int8UpsampleBilinear",
    "Int8Mul",
    "Int8Cat",
    "Int8UpsampleNearest",
    "Int8AvgPool2d",
    "Int8AdaptiveAvgPool2d",
    "nchw_size",
    "int8_to_nchw",
    "int8_to_nhwc",
    "nchw_shape",
    "flatten_nhwc",
    "expand_to_nhwc",
    "nhwc_to_nchw",
]

Tensor = torch.Tensor


class Int8Step(nn.Module):
    """Base class of the steps: a ``backend`` attribute and the name of the quantizer it replaces.

    ``sim_quantizer`` is the name of the simulation's ``FakeQuant`` node whose values the
    step's int8 output stands for; it is empty for steps with float output and for steps that
    only move int8 values (padding, max pooling).

    ``logical_channels``: None, or the real channel count of an output stored with more
    (``stored_channels``; ``to_int8(q, pad_channels=True)``, :mod:`dfq_gpu.int8.padding`): the
    extra channels are not part of the activation.

    ``nchw_output``: the step's 4-D output is in the simulation's dimension order (a linear layer
    on the last dimension of a 4-D tensor), not NHWC as other 4-D activations.
    """

    logical_channels: Optional[int] = None
    stored_channels: Optional[int] = None
    nchw_output: bool = False

    def __init__(self, backend: Optional[str] = "auto", sim_quantizer: str = "") -> None:
        super().__init__()
        self.backend = backend
        self.sim_quantizer = sim_quantizer

    def _triton(self, x: Tensor, module: str) -> Optional[ModuleType]:
        """The Triton module to launch directly on ``x`` (eager CUDA or interpreter), else None."""
        return kernels.ops.triton_module(x, self.backend, module)

    def _cached_plan(self, build: Callable[[], Any], slot: str = "_plan", extra: Sequence[Any] = ()) -> Any:
        """The step's kernel launch plan (weight-side arguments bound once), rebuilt whenever a
        buffer is replaced (``.to()``, ``load_state_dict`` with ``assign``) or changed in place.
        ``slot`` (a name starting with ``_plan``) keeps a second plan apart from the first;
        ``extra``: more buffers the plan is built from (a fused child step's).

        Buffers created under ``torch.inference_mode`` have no version counter; their plan is
        rebuilt on every call (still without the dispatcher)."""
        try:
            bufs = itertools.chain(self._buffers.values(), *extra) if extra else self._buffers.values()
            key = tuple((id(b), b._version) for b in bufs if b is not None)
        except RuntimeError:
            return build()
        cached = self.__dict__.get(slot)
        if cached is not None and cached[0] == key:
            return cached[1]
        plan = build()
        self.__dict__[slot] = (key, plan)
        return plan

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for slot in [k for k in state if k.startswith("_plan")]:
            del state[slot]  # launch plans hold kernel handles and are rebuilt on demand
        return state

    def _get_name(self) -> str:
        """The name ``repr`` prints: the class, and a padded output's real and stored channels."""
        name = super()._get_name()
        if self.logical_channels is None:
            return name
        return f"{name}[channels {self.logical_channels} stored as {self.stored_channels}]"

    def logical(self, y: Tensor) -> Tensor:
        """The step's output ``y`` without the extra channels of a padded output (channels last),
        a 4-D one in NHWC order."""
        if self.nchw_output and y.dim() == 4:
            return y.permute(0, 2, 3, 1)
        c = self.logical_channels
        return y if c is None or y.shape[-1] == c else y[..., :c]


def _i32(values: Sequence[int] | Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=torch.int32).reshape(-1).clone()


def _f32(values: Sequence[float] | Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float32).reshape(-1).clone()


def _register_channel_clamp(step: nn.Module, clamp_lo: Optional[Tensor], clamp_hi: Optional[Tensor]) -> None:
    """The per-channel clamp after an add (int8 ``[C]`` buffers ``clamp_lo``/``clamp_hi``, or None):
    bounds that differ between channels, which the add kernel's per-tensor bounds cannot hold."""
    step.register_buffer("clamp_lo", None if clamp_lo is None else clamp_lo.to(torch.int8).reshape(-1).clone())
    step.register_buffer("clamp_hi", None if clamp_hi is None else clamp_hi.to(torch.int8).reshape(-1).clone())


def _channel_clamp(step: nn.Module, y: Tensor) -> Tensor:
    """``y`` clamped by the step's per-channel clamp (an exact integer clamp), if it has one."""
    if step.clamp_lo is not None and step.clamp_hi is not None:
        y = torch.minimum(torch.maximum(y, step.clamp_lo), step.clamp_hi)
    return y


class QuantizeInput(Int8Step):
    """Float network input -> int8: NCHW images become NHWC, other ranks keep their shape.

    Any floating input is converted to float32 first. Non-finite input: a CPU tensor holding
    NaN or Inf raises :class:`~dfq_gpu.DFQError` (:func:`check_finite_input`); CUDA tensors are
    not checked (it would wait for the GPU), and the quantize kernel saturates them: ``+Inf`` to
    ``hi``, ``-Inf`` and NaN to ``lo`` (its clamp is IEEE maxNum/minNum, which returns the
    operand that is not NaN).
    """

    def __init__(self, scale: float, zero_point: int, lo: int, hi: int, check_finite: bool = True, **kw) -> None:
        super().__init__(**kw)
        self.scale, self.zero_point, self.lo, self.hi = float(scale), int(zero_point), int(lo), int(hi)
        self.check_finite = bool(check_finite)  # off where a float part of the network ends

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        if self.check_finite:
            check_finite_input(x)
        layout = "nchw" if x.dim() == 4 else "flat"
        mod = self._triton(x, "elementwise")
        if mod is not None:
            return mod.quantize(x, self.scale, self.zero_point, self.lo, self.hi, layout)
        return kernels.quantize(x, self.scale, self.zero_point, self.lo, self.hi, layout=layout,
                                backend=self.backend)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}, lo={self.lo}, hi={self.hi}"


def check_finite_input(x: Tensor) -> None:
    """Raise :class:`~dfq_gpu.DFQError` if the CPU tensor ``x`` (an input of the integer network)
    holds NaN or Inf, saying how many; the integer reference would turn them into arbitrary
    integers. One ``torch.isfinite(x).all()``; nothing is checked for tensors on other devices
    (a check would wait for the GPU) nor while the network is traced (``kernels.ops.is_traced``),
    so no check enters a ``torch.compile``/``torch.export`` graph."""
    if x.device.type != "cpu" or kernels.ops.is_traced(x) or bool(torch.isfinite(x).all()):
        return
    nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
    raise DFQError(f"the input of the int8 network contains {nan} NaN and {inf} Inf values (of {x.numel()}, "
                   f"shape {tuple(x.shape)}); integer execution needs finite inputs")


class Dequantize(Int8Step):
    """int8 -> float32 ``(q - z) * s``; 4-D NHWC tensors are returned as NCHW (a permuted view)."""

    def __init__(self, scale: float, zero_point: int, **kw) -> None:
        super().__init__(**kw)
        self.scale, self.zero_point = float(scale), int(zero_point)

    def forward(self, q: Tensor) -> Tensor:
        q = q.contiguous()
        mod = self._triton(q, "elementwise")
        if mod is not None:
            y = mod.dequantize(q, self.scale, self.zero_point)
        else:
            y = kernels.dequantize(q, self.scale, self.zero_point, backend=self.backend)
        return y.permute(0, 3, 1, 2) if y.dim() == 4 else y

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}"


class _Requant(Int8Step):
    """Epilogue parameters shared by the layer steps.

    ``multiplier`` float32 ``[1|N]``, ``lo``/``hi`` int32 ``[1|N]``, ``z_y``. With
    ``out_scale`` (float32 ``[1|N]``) the step returns float ``acc * out_scale`` instead of int8
    (a layer whose output is the network output).
    """

    def _init_epilogue(self, multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor,
                       out_scale: Optional[Tensor]) -> None:
        self.register_buffer("multiplier", _f32(multiplier))
        self.register_buffer("lo", _i32(lo))
        self.register_buffer("hi", _i32(hi))
        self.z_y = int(z_y)
        self.float_output = out_scale is not None
        if out_scale is not None:
            self.register_buffer("out_scale", _f32(out_scale))
        else:
            self.out_scale = None

    def _plan_params(self, n: int, ndim: int, layout: str) -> tuple:
        """``(bias, w_zp, multiplier, z_y, lo, hi)`` validated for a weight of rank ``ndim`` and
        ``n`` output channels (once per launch plan)."""
        ref = kernels.reference
        ref.check_tensor(self.weight, "weight", torch.int8, ndim, layout)
        bias, w_zp = ref.check_weight_extras(self.bias, self.w_zp, n, self.weight.device)
        m, z_y, lo, hi = ref.check_epilogue(self.multiplier, self.z_y, self.lo, self.hi, n, self.multiplier.device)
        return bias, w_zp, m, z_y, lo, hi

    def _launch(self, x: Tensor, module: str, build: Callable[[ModuleType], Any],
                r: Optional[Tensor] = None) -> Optional[Tensor]:
        """``x`` (and a fused residual add's other operand ``r``) through the step's launch plan
        (``build(triton_module)`` makes it), or None when the op must go through the ``dfq_int8``
        custom op instead."""
        mod = self._triton(x, module)
        if mod is None:
            return None
        plan = self._cached_plan(lambda: build(mod))
        y = plan(x) if r is None else plan(x, r)
        return self._to_float(y) if self.float_output else y

    def _to_float(self, acc: Tensor) -> Tensor:
        assert self.out_scale is not None
        return acc.to(torch.float32) * self.out_scale

    # -- a residual add fused into the step (Int8Conv2d, Int8Linear) -------------------------
    def _init_residual(self, residual: Optional["kernels.reference.ResidualAdd"], clamp_lo: Optional[Tensor],
                       clamp_hi: Optional[Tensor], layer_quantizer: str) -> None:
        """``residual``: the add computed on the step's int8 output and a second input ``r``
        (``forward(x, r)``), ``None`` for a plain layer; ``clamp_lo``/``clamp_hi``: the add's
        per-channel clamp (int8 ``[N]``, bounds that differ between channels), applied after it
        as :class:`Int8Add` does; ``layer_quantizer``: the simulation's quantizer of the layer's
        own output, which a fused step does not materialize (``sim_quantizer`` names the add's)."""
        if residual is not None and not isinstance(residual, kernels.reference.ResidualAdd):
            raise ValueError(f"residual must be a kernels.reference.ResidualAdd, got {type(residual).__name__}")
        if residual is not None and self.float_output:
            raise ValueError("a residual add needs the layer's int8 output, not a float output")
        self.residual = residual
        self.layer_quantizer = str(layer_quantizer) if residual is not None else ""
        _register_channel_clamp(self, clamp_lo, clamp_hi)

    def _check_residual_input(self, r: Optional[Tensor]) -> Tensor:
        if self.residual is None:
            if r is not None:
                raise ValueError(f"{type(self).__name__} has no residual add: it takes one input")
            return r  # type: ignore[return-value]
        if not isinstance(r, Tensor):
            raise ValueError(f"{type(self).__name__} with a fused residual add takes its second operand r")
        return r

    def _add_residual(self, y: Tensor, r: Tensor) -> Tensor:
        """The add after the layer's own int8 output ``y`` (reference backend, custom ops):
        ``kernels.int8_add`` with the fused step's parameters."""
        spec = self.residual
        assert spec is not None
        return kernels.int8_add(y, r.contiguous(), spec.z_a, spec.z_b, spec.ia, spec.ib, spec.multiplier, spec.z_y,
                                spec.lo, spec.hi, backend=self.backend)

    def _residual_repr(self) -> str:
        spec = self.residual
        if spec is None:
            return ""
        return (f", residual=(z_a={spec.z_a}, z_r={spec.z_b}, ia={spec.ia}, ib={spec.ib}, "
                f"multiplier={spec.multiplier:.6g}, z_y={spec.z_y}, lo={spec.lo}, hi={spec.hi}, "
                f"per_channel_clamp={self.clamp_lo is not None})")


class Int8Conv2d(_Requant):
    """Dense convolution (groups 1) on NHWC int8: ``kernels.int8_conv2d`` with a folded bias.

    A 1x1, stride-1, unpadded convolution is a GEMM over the ``B*H*W`` pixels and runs as
    ``kernels.int8_gemm`` (what the Triton convolution launcher does internally too; on the CPU
    the reference GEMM is much faster than the reference convolution).

    With ``residual`` (a :class:`kernels.reference.ResidualAdd`; any kernel size, stride and
    padding) the step also computes the residual add of its int8 output and a second input:
    ``forward(x, r)`` with ``r`` NHWC of the output's shape. On the direct Triton path one launch
    does both (the add in the epilogue, ``kernels.conv.ConvPlan(..., residual=...)``, which hands
    a 1x1 stride-1 unpadded convolution and its residual to the GEMM: the layer's int8 output is
    never written); otherwise (reference backend, ``torch.compile``) the layer then
    ``kernels.int8_add``. The add's per-channel clamp (``clamp_lo``/``clamp_hi``)
    follows in both cases; the result is the separate layer and :class:`Int8Add`'s bit for bit.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], w_zp: Optional[Tensor], z_x: int,
                 multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor, stride: Sequence[int],
                 padding: Sequence[int], out_scale: Optional[Tensor] = None,
                 residual: Optional["kernels.reference.ResidualAdd"] = None, clamp_lo: Optional[Tensor] = None,
                 clamp_hi: Optional[Tensor] = None, layer_quantizer: str = "", **kw) -> None:
        super().__init__(**kw)
        self.register_buffer("weight", weight.to(torch.int8).contiguous())  # [N, KH, KW, C]
        self.register_buffer("w_zp", None if w_zp is None else _i32(w_zp))
        self.z_x = int(z_x)
        folded = kernels.fold_bias(self.weight, None if bias is None else _i32(bias), self.z_x, self.w_zp)
        self.register_buffer("bias", folded)  # folded: bias - z_x sum w + K z_x z_w (int32) or None
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)  # (top, bottom, left, right)
        self.pointwise = self.weight.shape[1:3] == (1, 1) and self.stride == (1, 1) and not any(self.padding)
        self._init_epilogue(multiplier, z_y, lo, hi, out_scale)
        self._init_residual(residual, clamp_lo, clamp_hi, layer_quantizer)

    def _conv_plan(self, mod: ModuleType) -> Any:
        bias, w_zp, m, z_y, lo, hi = self._plan_params(self.weight.shape[0], 4, "[N, KH, KW, C]")
        return mod.ConvPlan(self.weight, bias, w_zp, m, self.z_x, z_y, lo, hi, self.stride, self.padding,
                            self.float_output, residual=self.residual)

    def forward(self, x: Tensor, r: Optional[Tensor] = None) -> Tensor:
        r = self._check_residual_input(r)
        if r is None:
            return self._layer(x)
        r = r.contiguous()
        y = self._launch(x, "conv", self._conv_plan, r)  # the launch plan checks r against the output
        if y is None:
            y = self._layer(x)
            if r.shape != y.shape:
                raise ValueError(f"r must have the output's shape {tuple(y.shape)}, got {tuple(r.shape)}")
            y = self._add_residual(y, r)
        return _channel_clamp(self, y)

    def _layer(self, x: Tensor) -> Tensor:
        y = self._launch(x, "conv", self._conv_plan)
        if y is not None:
            return y
        folded = self.bias is not None
        if self.pointwise:
            b, h, w, c = x.shape
            n = self.weight.shape[0]
            y = kernels.int8_gemm(x.reshape(b * h * w, c), self.weight.view(n, c), self.bias, self.multiplier,
                                  self.z_x, self.w_zp, self.z_y, self.lo, self.hi, out_int32=self.float_output,
                                  bias_folded=folded, backend=self.backend).view(b, h, w, n)
            return self._to_float(y) if self.float_output else y
        y = kernels.int8_conv2d(x, self.weight, self.bias, self.multiplier, self.z_x, self.w_zp, self.z_y, self.lo,
                                self.hi, self.stride, self.padding, out_int32=self.float_output,
                                bias_folded=folded, backend=self.backend)
        return self._to_float(y) if self.float_output else y

    def extra_repr(self) -> str:
        n, kh, kw, c = self.weight.shape
        return (f"{c}, {n}, kernel=({kh}, {kw}), stride={self.stride}, padding={self.padding}, z_x={self.z_x}, "
                f"z_y={self.z_y}, per_channel={self.multiplier.numel() > 1}, float_output={self.float_output}"
                + self._residual_repr())


class Int8StemConv2d(Int8Conv2d):
    """The network's first convolution with the input quantization fused into it: an
    :class:`Int8Conv2d` (same arguments, no residual add) called on the float NCHW input ``x``,
    computing ``conv(quantize(x))`` with ``quantize`` a :class:`QuantizeInput`; chosen by
    :func:`dfq_gpu.quant.plan.stem_fusions`.

    On the direct Triton path: one quantize-and-im2col launch and one GEMM
    (``kernels.stem.StemPlan``), so the quantized NHWC image is never written and the convolution
    reads whole aligned rows instead of gathering a few channels per tap; otherwise (reference
    backend, ``torch.compile``) the two steps. The result is theirs bit for bit. The input
    quantizer's activation is not materialized (``input_quantizer`` names it).
    """

    def __init__(self, *args: Any, quantize: QuantizeInput, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if not isinstance(quantize, QuantizeInput):
            raise ValueError(f"quantize must be a QuantizeInput step, got {type(quantize).__name__}")
        if self.residual is not None:
            raise ValueError("a stem convolution cannot also fuse a residual add")
        if quantize.zero_point != self.z_x:
            raise ValueError(f"the input quantizer's zero point {quantize.zero_point} is not the convolution's "
                             f"z_x={self.z_x}")
        self.quantize = quantize
        self.input_quantizer = quantize.sim_quantizer

    def _stem_plan(self, mod: ModuleType) -> Any:
        q = self.quantize
        bias, w_zp, m, z_y, lo, hi = self._plan_params(self.weight.shape[0], 4, "[N, KH, KW, C]")
        return mod.StemPlan(self.weight, bias, w_zp, m, z_y, lo, hi, self.stride, self.padding, self.float_output,
                            q.scale, q.zero_point, q.lo, q.hi)

    def forward(self, x: Tensor, r: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        if r is not None:
            raise ValueError("Int8StemConv2d has no residual add: it takes one input")
        mod = self._triton(x, "stem") if isinstance(x, Tensor) and x.dim() == 4 else None
        if mod is None:
            return super().forward(self.quantize(x))
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        if self.quantize.check_finite:
            check_finite_input(x)
        y = self._cached_plan(lambda: self._stem_plan(mod), slot="_plan_stem")(x)
        return self._to_float(y) if self.float_output else y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", input_quantizer={self.input_quantizer!r}"


class Int8DepthwiseProjectConv2d(Int8Conv2d):
    """A 1x1 convolution with the depthwise convolution before it fused into its step: an
    :class:`Int8Conv2d` (same arguments, 1x1, stride 1, unpadded; a residual add may be fused too)
    called on the depthwise layer's input, computing ``conv(depthwise(x))`` (``depthwise`` an
    :class:`Int8DepthwiseConv2d` with an int8 output); chosen by
    :func:`dfq_gpu.quant.plan.depthwise_project_fusions`.

    On the direct Triton path one launch (``kernels.dwproject.DwProjectPlan``): the depthwise
    tile is computed, requantized and fed to the tensor cores in registers, so its int8 output
    never reaches memory; otherwise (reference backend, ``torch.compile``) the two steps. The
    result is theirs bit for bit. The depthwise output's quantizer is not materialized
    (``depthwise_quantizer`` names it).
    """

    def __init__(self, *args: Any, depthwise: Int8DepthwiseConv2d, **kw: Any) -> None:
        super().__init__(*args, **kw)
        if not isinstance(depthwise, Int8DepthwiseConv2d) or depthwise.float_output:
            raise ValueError("depthwise must be an Int8DepthwiseConv2d step with an int8 output")
        if not self.pointwise:
            raise ValueError("the convolution after a fused depthwise one must be 1x1, stride 1, unpadded")
        if depthwise.weight.shape[2] != self.weight.shape[3] or depthwise.z_y != self.z_x:
            raise ValueError(f"the depthwise output ({depthwise.weight.shape[2]} channels, zero point {depthwise.z_y}) "
                             f"is not this convolution's input ({self.weight.shape[3]} channels, z_x={self.z_x})")
        self.depthwise = depthwise
        self.depthwise_quantizer = depthwise.sim_quantizer

    def _dw_plan(self, mod: ModuleType) -> Any:
        dw = self.depthwise
        d_bias, d_wzp, d_m, z_d, d_lo, d_hi = dw._plan_params(dw.weight.shape[2], 3, "[KH, KW, C]")
        bias, w_zp, m, z_y, lo, hi = self._plan_params(self.weight.shape[0], 4, "[N, KH, KW, C]")
        n, c = self.weight.shape[0], self.weight.shape[3]
        return mod.DwProjectPlan(dw.weight, d_bias, d_wzp, d_m, dw.z_x, z_d, d_lo, d_hi, dw.stride, dw.padding,
                                 self.weight.view(n, c), bias, w_zp, m, z_y, lo, hi, self.float_output,
                                 residual=self.residual)

    def forward(self, x: Tensor, r: Optional[Tensor] = None) -> Tensor:
        r = self._check_residual_input(r)
        mod = self._triton(x, "dwproject")
        if mod is None:
            return super().forward(self.depthwise(x), r)
        plan = self._cached_plan(lambda: self._dw_plan(mod), slot="_plan_dw",
                                 extra=(self.depthwise._buffers.values(),))
        if r is None:
            y = plan(x)
            return self._to_float(y) if self.float_output else y
        return _channel_clamp(self, plan(x, r.contiguous()))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", depthwise_quantizer={self.depthwise_quantizer!r}"


class Int8GroupedConv2d(Int8Step):
    """Grouped convolution (ResNeXt, RegNet) on NHWC int8: one dense :class:`Int8Conv2d` per
    group on its slice of the input channels, the outputs concatenated along channels. Takes the
    arguments of :class:`Int8Conv2d` (per-channel ones for all output channels) and ``groups``."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], w_zp: Optional[Tensor], z_x: int,
                 multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor, stride: Sequence[int],
                 padding: Sequence[int], out_scale: Optional[Tensor] = None, groups: int = 1, **kw) -> None:
        super().__init__(**kw)
        n = weight.shape[0]
        if groups < 1 or n % groups:
            raise ValueError(f"{n} output channels cannot be split into {groups} groups")
        self.groups = int(groups)
        per = n // groups

        def part(t: Optional[Tensor], g: int) -> Optional[Tensor]:
            if t is None:
                return None
            t = torch.as_tensor(t).reshape(-1)
            return t if t.numel() == 1 else t[g * per:(g + 1) * per]

        self.parts = nn.ModuleList(
            Int8Conv2d(weight[g * per:(g + 1) * per], part(bias, g), part(w_zp, g), z_x, part(multiplier, g), z_y,
                       part(lo, g), part(hi, g), stride, padding, part(out_scale, g), **kw)
            for g in range(groups))

    def forward(self, x: Tensor) -> Tensor:
        xs = x.chunk(self.groups, dim=3)
        return torch.cat([conv(xg.contiguous()) for conv, xg in zip(self.parts, xs)], dim=3)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class Int8DilatedConv2d(Int8Step):
    """A stride-1 convolution with dilation ``(dh, dw)`` (DeepLab's atrous convolutions) as
    undilated convolutions of the input's phases: with the input padded by its zero point,
    output ``(i + dh a, j + dw b)`` only reads inputs ``(i + dh (a + t), j + dw (b + u))``, so
    each phase ``x[:, i::dh, j::dw]`` convolved without dilation (and without padding) by the
    step ``inner`` gives the outputs ``y[:, i::dh, j::dw]``. The same integers as one dilated
    convolution, on the kernels of :class:`Int8Conv2d` / :class:`Int8DepthwiseConv2d`."""

    def __init__(self, inner: Int8Step, dilation: Sequence[int], padding: Sequence[int], z_x: int, **kw) -> None:
        super().__init__(**kw)
        self.inner = inner
        self.dilation = tuple(int(d) for d in dilation)
        self.padding = tuple(int(p) for p in padding)  # (top, bottom, left, right)
        self.z_x = int(z_x)

    def forward(self, x: Tensor) -> Tensor:
        t, b, left, r = self.padding
        xp = torch.nn.functional.pad(x, (0, 0, left, r, t, b), value=self.z_x)
        dh, dw = self.dilation
        out: Optional[Tensor] = None
        kh, kw = self._kernel()
        oh, ow = xp.shape[1] - dh * (kh - 1), xp.shape[2] - dw * (kw - 1)
        for i in range(min(dh, oh)):
            for j in range(min(dw, ow)):
                y = self.inner(xp[:, i::dh, j::dw, :].contiguous())
                if out is None:
                    out = y.new_empty((x.shape[0], oh, ow, y.shape[3]))
                out[:, i::dh, j::dw, :] = y
        assert out is not None, "a dilated convolution without outputs"
        return out

    def _kernel(self) -> tuple[int, int]:
        w = self.inner.weight
        return (int(w.shape[1]), int(w.shape[2])) if w.dim() == 4 else (int(w.shape[0]), int(w.shape[1]))

    def extra_repr(self) -> str:
        return f"dilation={self.dilation}, padding={self.padding}"


class Int8DepthwiseConv2d(_Requant):
    """Depthwise convolution on NHWC int8: ``kernels.int8_depthwise_conv2d`` (raw int32 bias)."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], w_zp: Optional[Tensor], z_x: int,
                 multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor, stride: Sequence[int],
                 padding: Sequence[int], out_scale: Optional[Tensor] = None, **kw) -> None:
        super().__init__(**kw)
        self.register_buffer("weight", weight.to(torch.int8).contiguous())  # [KH, KW, C]
        self.register_buffer("bias", None if bias is None else _i32(bias))
        self.register_buffer("w_zp", None if w_zp is None else _i32(w_zp))
        self.z_x = int(z_x)
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)
        self._init_epilogue(multiplier, z_y, lo, hi, out_scale)

    def _depthwise_plan(self, mod: ModuleType) -> Any:
        bias, w_zp, m, z_y, lo, hi = self._plan_params(self.weight.shape[2], 3, "[KH, KW, C]")
        return mod.DepthwisePlan(self.weight, bias, w_zp, m, self.z_x, z_y, lo, hi, self.stride, self.padding,
                                 self.float_output)

    def forward(self, x: Tensor) -> Tensor:
        y = self._launch(x, "depthwise", self._depthwise_plan)
        if y is not None:
            return y
        y = kernels.int8_depthwise_conv2d(x, self.weight, self.bias, self.multiplier, self.z_x, self.w_zp, self.z_y,
                                          self.lo, self.hi, self.stride, self.padding,
                                          out_int32=self.float_output, backend=self.backend)
        return self._to_float(y) if self.float_output else y

    def extra_repr(self) -> str:
        kh, kw, c = self.weight.shape
        return (f"{c}, kernel=({kh}, {kw}), stride={self.stride}, padding={self.padding}, z_x={self.z_x}, "
                f"z_y={self.z_y}, per_channel={self.multiplier.numel() > 1}, float_output={self.float_output}")


class Int8Linear(_Requant):
    """Fully connected layer on int8 ``[..., K]`` (rows of any leading shape, e.g. ``[B, K]`` or
    the tokens ``[B, T, K]``): ``kernels.int8_gemm`` with a folded bias.

    With ``residual``, ``forward(x, r)`` also computes the residual add of the output and ``r``
    (``[..., N]``), in the GEMM's epilogue on the direct Triton path, as :class:`Int8Conv2d`."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], w_zp: Optional[Tensor], z_x: int,
                 multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor, out_scale: Optional[Tensor] = None,
                 residual: Optional["kernels.reference.ResidualAdd"] = None, clamp_lo: Optional[Tensor] = None,
                 clamp_hi: Optional[Tensor] = None, layer_quantizer: str = "", **kw) -> None:
        super().__init__(**kw)
        self.register_buffer("weight", weight.to(torch.int8).contiguous())  # [N, K]
        self.register_buffer("w_zp", None if w_zp is None else _i32(w_zp))
        self.z_x = int(z_x)
        folded = kernels.fold_bias(self.weight, None if bias is None else _i32(bias), self.z_x, self.w_zp)
        self.register_buffer("bias", folded)
        self._init_epilogue(multiplier, z_y, lo, hi, out_scale)
        self._init_residual(residual, clamp_lo, clamp_hi, layer_quantizer)

    def _gemm_plan(self, mod: ModuleType) -> Any:
        bias, w_zp, m, z_y, lo, hi = self._plan_params(self.weight.shape[0], 2, "[N, K]")
        return mod.GemmPlan(self.weight, bias, w_zp, m, z_y, lo, hi, self.float_output, residual=self.residual)

    def forward(self, x: Tensor, r: Optional[Tensor] = None) -> Tensor:
        r = self._check_residual_input(r)
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1]).contiguous()
        if r is not None:
            n = self.weight.shape[0]
            if tuple(r.shape) != (*lead, n):
                raise ValueError(f"r must have the output's shape {(*lead, n)}, got {tuple(r.shape)}")
            r2 = r.reshape(-1, n).contiguous()
            y = self._launch(x, "gemm", self._gemm_plan, r2)
            if y is None:
                y = self._add_residual(self._gemm(x), r2)
            return _channel_clamp(self, y).reshape(*lead, n)
        return self._gemm(x).reshape(*lead, self.weight.shape[0])

    def _gemm(self, x: Tensor) -> Tensor:
        """The layer on ``x`` ``[M, K]`` (contiguous) -> ``[M, N]``."""
        y = self._launch(x, "gemm", self._gemm_plan)
        if y is None:
            y = kernels.int8_gemm(x, self.weight, self.bias, self.multiplier, self.z_x, self.w_zp, self.z_y,
                                  self.lo, self.hi, out_int32=self.float_output, bias_folded=self.bias is not None,
                                  backend=self.backend)
            y = self._to_float(y) if self.float_output else y
        return y

    def extra_repr(self) -> str:
        n, k = self.weight.shape
        return (f"{k}, {n}, z_x={self.z_x}, z_y={self.z_y}, per_channel={self.multiplier.numel() > 1}, "
                f"float_output={self.float_output}" + self._residual_repr())


class Int8Add(Int8Step):
    """Residual add ``kernels.int8_add`` with the integer multipliers of
    :func:`dfq_gpu.quant.requant.add_multipliers`.

    ``lo``/``hi`` are the fused per-tensor bounds. A per-channel clamp whose bounds differ
    between channels (``clamp_lo``/``clamp_hi``, int8 ``[C]``) is applied after the kernel as an
    exact integer clamp.
    """

    def __init__(self, z_a: int, z_b: int, ia: int, ib: int, multiplier: float, z_y: int, lo: int, hi: int,
                 clamp_lo: Optional[Tensor] = None, clamp_hi: Optional[Tensor] = None, **kw) -> None:
        super().__init__(**kw)
        self.z_a, self.z_b, self.ia, self.ib = int(z_a), int(z_b), int(ia), int(ib)
        self.multiplier, self.z_y, self.lo, self.hi = float(multiplier), int(z_y), int(lo), int(hi)
        _register_channel_clamp(self, clamp_lo, clamp_hi)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        a, b = a.contiguous(), b.contiguous()
        mod = self._triton(a, "elementwise")
        if mod is not None:
            y = mod.int8_add(a, b, self.z_a, self.z_b, self.ia, self.ib, self.multiplier, self.z_y, self.lo, self.hi)
        else:
            y = kernels.int8_add(a, b, self.z_a, self.z_b, self.ia, self.ib, self.multiplier, self.z_y, self.lo,
                                 self.hi, backend=self.backend)
        return _channel_clamp(self, y)

    def extra_repr(self) -> str:
        return (f"z_a={self.z_a}, z_b={self.z_b}, ia={self.ia}, ib={self.ib}, multiplier={self.multiplier:.6g}, "
                f"z_y={self.z_y}, lo={self.lo}, hi={self.hi}, per_channel_clamp={self.clamp_lo is not None}")


class FloatAdd(Int8Step):
    """An add whose result is the (float) network output: dequantize both operands and add."""

    def __init__(self, s_a: float, z_a: int, s_b: float, z_b: int, **kw) -> None:
        super().__init__(**kw)
        self.s_a, self.z_a, self.s_b, self.z_b = float(s_a), int(z_a), float(s_b), int(z_b)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        fa = kernels.dequantize(a.contiguous(), self.s_a, self.z_a, backend=self.backend)
        fb = kernels.dequantize(b.contiguous(), self.s_b, self.z_b, backend=self.backend)
        return fa + fb


class Int8AvgPool(_Requant):
    """Global average pool ``[B, H, W, C] -> [B, C]`` (``[B, 1, 1, C]`` with ``keepdim``).

    The multiplier ``float32((s_x / s_y) / (H W))`` (:func:`dfq_gpu.quant.requant.avgpool_multiplier`)
    is stored for the spatial size seen at conversion; other sizes get their own multiplier,
    computed on first use and kept.
    """

    def __init__(self, z_x: int, x_scale: float, y_scale: float, hw: int, z_y: int, lo: int, hi: int, keepdim: bool,
                 **kw) -> None:
        super().__init__(**kw)
        self.z_x = int(z_x)
        self.x_scale, self.y_scale = float(x_scale), float(y_scale)
        self.hw = int(hw)
        self._init_epilogue(torch.tensor([avgpool_multiplier(self.x_scale, self.y_scale, self.hw)]), z_y,
                            torch.tensor([lo]), torch.tensor([hi]), None)
        self.keepdim = bool(keepdim)
        self._other: dict = {}

    def _multiplier(self, hw: int, device: torch.device) -> Tensor:
        if hw == self.hw:
            return self.multiplier
        key = (hw, str(device))
        m = self._other.get(key)
        if m is None:
            m = torch.tensor([avgpool_multiplier(self.x_scale, self.y_scale, hw)], dtype=torch.float32, device=device)
            self._other[key] = m
        return m

    def forward(self, x: Tensor) -> Tensor:
        m = self._multiplier(x.shape[1] * x.shape[2], x.device)
        mod = self._triton(x, "pool")
        if mod is not None:
            y = mod.int8_avgpool(x, self.z_x, m, self.z_y, self.lo, self.hi)
        else:
            y = kernels.int8_avgpool(x, self.z_x, m, self.z_y, self.lo, self.hi, backend=self.backend)
        return y.view(y.shape[0], 1, 1, y.shape[1]) if self.keepdim else y

    def extra_repr(self) -> str:
        return (f"z_x={self.z_x}, z_y={self.z_y}, s_x/s_y={self.x_scale / self.y_scale:.6g}, "
                f"keepdim={self.keepdim}")


class FloatAvgPool(Int8Step):
    """Global average pool whose result is the (float) network output:
    ``float32(sum_hw (x - z_x)) * float32(s_x / (H W))``
    (:func:`dfq_gpu.quant.requant.avgpool_float_scale`), the integer sum taken exactly."""

    def __init__(self, scale: float, zero_point: int, keepdim: bool, **kw) -> None:
        super().__init__(**kw)
        self.scale, self.zero_point, self.keepdim = float(scale), int(zero_point), bool(keepdim)

    def forward(self, x: Tensor) -> Tensor:
        hw = int(x.shape[1] * x.shape[2])
        acc = (x.to(torch.int64) - self.zero_point).sum(dim=(1, 2))  # exact
        # a Python float already on the float32 grid: the product is the float32 one, and no
        # host-to-device copy (which would wait for the GPU) is made per call
        y = acc.to(torch.float32) * avgpool_float_scale(self.scale, hw)
        return y.view(y.shape[0], 1, 1, y.shape[1]) if self.keepdim else y


class Int8MaxPool2d(Int8Step):
    """Max pool on NHWC int8 (scale and zero point unchanged)."""

    def __init__(self, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int] = (1, 1), ceil_mode: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)
        self.dilation = tuple(int(d) for d in dilation)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x: Tensor) -> Tensor:
        mod = self._triton(x, "pool")
        extra = {} if self.dilation == (1, 1) and not self.ceil_mode else \
            {"dilation": self.dilation, "ceil_mode": self.ceil_mode}
        if mod is not None:
            return mod.int8_maxpool2d(x, self.kernel_size, self.stride, self.padding, **extra)
        return kernels.int8_maxpool2d(x, self.kernel_size, self.stride, self.padding, backend=self.backend, **extra)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class Int8GlobalMaxPool(Int8Step):
    """Global max pool on NHWC int8 (``AdaptiveMaxPool2d(1)``)."""

    def __init__(self, keepdim: bool, **kw) -> None:
        super().__init__(**kw)
        self.keepdim = bool(keepdim)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.amax(x, dim=(1, 2))
        return y.view(y.shape[0], 1, 1, y.shape[1]) if self.keepdim else y


class Int8Pad(Int8Step):
    """Zero padding of an NHWC int8 tensor (the padded taps hold the zero point, i.e. real zero)."""

    def __init__(self, padding: Sequence[int], value: int, **kw) -> None:
        super().__init__(**kw)
        self.padding = tuple(int(p) for p in padding)  # (top, bottom, left, right)
        self.value = int(value)

    def forward(self, x: Tensor) -> Tensor:
        t, b, left, r = self.padding
        return torch.nn.functional.pad(x, (0, 0, left, r, t, b), value=self.value)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class FloatClamp(Int8Step):
    """An activation after a layer whose output is the float network output: a clamp along the
    channel (last) dimension."""

    def __init__(self, lo: Tensor, hi: Tensor, **kw) -> None:
        super().__init__(**kw)
        self.register_buffer("lo", _f32(lo))
        self.register_buffer("hi", _f32(hi))

    def forward(self, x: Tensor) -> Tensor:
        return torch.minimum(torch.maximum(x, self.lo), self.hi)


class Int8Lookup(Int8Step):
    """A map from int8 codes to int8 codes by a 256-entry table (``kernels.int8_lut``): an
    activation with no integer form between two quantizers (hardswish, SiLU, sigmoid, ...), or
    the requantization of a tensor from one quantizer to another; or by one such table per
    channel (``[C, 256]``, NHWC input): a per-channel affine map. The table is the simulation's
    (:class:`dfq_gpu.modules.QLookup`, or the output quantizer applied to the input grid's values)
    mapped to int8 storage."""

    def __init__(self, table: Tensor, **kw) -> None:
        super().__init__(**kw)
        t = torch.as_tensor(table)
        t = t.reshape(-1) if t.dim() != 2 else t
        if t.shape[-1] != 256:
            raise ValueError(f"a lookup table has 256 entries (per channel: [C, 256]), got {tuple(t.shape)}")
        self.register_buffer("table", t.to(torch.int8).contiguous().clone())

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()
        mod = self._triton(x, "lut")
        if mod is not None:
            return mod.int8_lut(x, self.table)
        return kernels.int8_lut(x, self.table, backend=self.backend)


class Int8Mul(Int8Step):
    """The product of two int8 tensors (``kernels.int8_mul``): NHWC ``x`` times ``g`` of the same
    shape, or times a per-(image, channel) gate (NHWC ``[B, 1, 1, C]``, passed as ``[B, C]``)."""

    def __init__(self, z_x: int, z_g: int, multiplier: float, z_y: int, lo: int, hi: int, gate: bool, **kw) -> None:
        super().__init__(**kw)
        self.z_x, self.z_g, self.multiplier = int(z_x), int(z_g), float(multiplier)
        self.z_y, self.lo, self.hi, self.gate = int(z_y), int(lo), int(hi), bool(gate)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        x = x.contiguous()
        g = g.reshape(g.shape[0], g.shape[-1]).contiguous() if self.gate else g.contiguous()
        mod = self._triton(x, "elementwise")
        args = (x, g, self.z_x, self.z_g, self.multiplier, self.z_y, self.lo, self.hi)
        if mod is not None:
            return mod.int8_mul(*args)
        return kernels.int8_mul(*args, backend=self.backend)

    def extra_repr(self) -> str:
        return f"multiplier={self.multiplier:.6g}, z_y={self.z_y}, gate={self.gate}"


class Int8AvgPool2d(Int8Step):
    """Windowed average pool of NHWC int8 (``kernels.int8_avgpool2d``)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], ceil_mode: bool,
                 count_include_pad: bool, z_x: int, x_scale: float, y_scale: float, z_y: int, lo: int, hi: int,
                 **kw) -> None:
        super().__init__(**kw)
        self.kernel, self.stride = tuple(int(k) for k in kernel), tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)  # (top, bottom, left, right)
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)
        self.z_x, self.x_scale, self.y_scale = int(z_x), float(x_scale), float(y_scale)
        self.z_y, self.lo, self.hi = int(z_y), int(lo), int(hi)

    def forward(self, x: Tensor) -> Tensor:
        args = (x.contiguous(), self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                self.z_x, self.x_scale, self.y_scale, self.z_y, self.lo, self.hi)
        mod = self._triton(x, "pool")
        if mod is not None:
            return mod.int8_avgpool2d(*args)
        return kernels.int8_avgpool2d(*args, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"count_include_pad={self.count_include_pad}")


class Int8AdaptiveAvgPool2d(Int8Step):
    """Adaptive average pool of NHWC int8 to ``output_size`` (``kernels.int8_adaptive_avgpool2d``;
    a ``None`` side keeps the input's size)."""

    def __init__(self, output_size: Sequence[Optional[int]], z_x: int, x_scale: float, y_scale: float, z_y: int,
                 lo: int, hi: int, **kw) -> None:
        super().__init__(**kw)
        self.output_size = tuple(None if v is None else int(v) for v in output_size)
        self.z_x, self.x_scale, self.y_scale = int(z_x), float(x_scale), float(y_scale)
        self.z_y, self.lo, self.hi = int(z_y), int(lo), int(hi)

    def forward(self, x: Tensor) -> Tensor:
        args = (x.contiguous(), self.output_size, self.z_x, self.x_scale, self.y_scale, self.z_y, self.lo, self.hi)
        mod = self._triton(x, "pool")
        if mod is not None:
            return mod.int8_adaptive_avgpool2d(*args)
        return kernels.int8_adaptive_avgpool2d(*args, backend=self.backend)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class Int8UpsampleBilinear(Int8Step):
    """Bilinear resampling of NHWC int8 (``kernels.int8_upsample_bilinear``): integer weights, one
    requantization. The output size is ``size`` given at the call (``[oh, ow]`` computed from a
    shape at run time), else the fixed ``size`` or ``scale_factor``."""

    def __init__(self, size: Optional[Sequence[int]], scale_factor: Optional[Sequence[float]], align_corners: bool,
                 z_x: int, multiplier: float, z_y: int, lo: int, hi: int, **kw) -> None:
        super().__init__(**kw)
        self.size = None if size is None else tuple(int(s) for s in size)
        self.scale_factor = None if scale_factor is None else tuple(float(s) for s in scale_factor)
        self.align_corners = bool(align_corners)
        self.z_x, self.multiplier, self.z_y, self.lo, self.hi = int(z_x), float(multiplier), int(z_y), int(lo), int(hi)

    def forward(self, x: Tensor, size: Any = None) -> Tensor:
        if size is not None:
            size, scale = ((int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)), None
        else:
            size, scale = self.size, self.scale_factor
        args = (x.contiguous(), size, scale, self.align_corners, self.z_x, self.multiplier, self.z_y, self.lo, self.hi)
        mod = self._triton(x, "pool")
        if mod is not None:
            return mod.int8_upsample_bilinear(*args)
        return kernels.int8_upsample_bilinear(*args, backend=self.backend)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, align_corners={self.align_corners}, multiplier={self.multiplier:.6g}"


class Int8UpsampleNearest(Int8Step):
    """Nearest-neighbour upsampling of NHWC int8 (``kernels.int8_upsample_nearest``; values and
    quantization unchanged)."""

    def __init__(self, size: Optional[Sequence[int]], scale_factor: Optional[Sequence[float]], **kw) -> None:
        super().__init__(**kw)
        self.size = None if size is None else tuple(int(s) for s in size)
        self.scale_factor = None if scale_factor is None else tuple(float(s) for s in scale_factor)

    def forward(self, x: Tensor) -> Tensor:
        mod = self._triton(x, "pool")
        if mod is not None and hasattr(mod, "int8_upsample_nearest"):
            return mod.int8_upsample_nearest(x.contiguous(), self.size, self.scale_factor)
        return kernels.int8_upsample_nearest(x.contiguous(), self.size, self.scale_factor, backend=self.backend)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale_factor={self.scale_factor}"


class Int8Cat(Int8Step):
    """Concatenation of NHWC int8 tensors along channels into one output quantization: an input on
    the output's grid is copied into its channel slice, any other is mapped there by its 256-entry
    requantization table (``kernels.int8_lut`` with an output channel offset)."""

    def __init__(self, tables: Sequence[Optional[Tensor]], **kw) -> None:
        super().__init__(**kw)
        self.copies = [t is None for t in tables]
        for i, t in enumerate(tables):
            self.register_buffer(f"table{i}", None if t is None else torch.as_tensor(t).to(torch.int8).clone())

    def forward(self, *xs: Tensor) -> Tensor:
        b, h, w = xs[0].shape[:3]
        out = torch.empty((b, h, w, sum(int(x.shape[3]) for x in xs)), dtype=torch.int8, device=xs[0].device)
        off = 0
        for i, x in enumerate(xs):
            c = int(x.shape[3])
            if self.copies[i]:
                out[..., off:off + c].copy_(x)
            else:
                table = getattr(self, f"table{i}")
                mod = self._triton(x, "lut")
                if mod is not None:
                    mod.int8_lut(x.contiguous(), table, out, off)
                else:
                    kernels.int8_lut(x.contiguous(), table, out, off, backend=self.backend)
            off += c
        return out

    def extra_repr(self) -> str:
        return f"inputs={len(self.copies)}, copied={sum(self.copies)}"


# =============================================================================================
# Layout helpers (called from the integer network's graph)
# =============================================================================================
_NCHW_TO_NHWC = (0, 3, 1, 2)


def nchw_size(x: Tensor, dim: Optional[int] = None, channels: Optional[int] = None):
    """``size`` of the NCHW tensor that the NHWC tensor ``x`` stands for (other ranks: ``x.size``).
    ``channels``: the real channel count of a tensor stored with more (channel padding,
    :mod:`dfq_gpu.int8.padding`), reported as dimension 1 of a 4-D or 2-D ``x``."""
    if x.dim() == 4:
        size = torch.Size((x.shape[0], x.shape[3], x.shape[1], x.shape[2]))
    else:
        size = x.size()
    if channels is not None and x.dim() in (2, 4):
        size = torch.Size((size[0], channels, *size[2:]))
    return size if dim is None else size[dim]


def nchw_shape(x: Tensor, channels: Optional[int] = None):
    """``shape`` of the NCHW tensor that the NHWC tensor ``x`` stands for (``channels``: as
    :func:`nchw_size`)."""
    return nchw_size(x, channels=channels)


def flatten_nhwc(x: Tensor) -> Tensor:
    """``[B, C, H, W] -> [B, C*H*W]`` in NCHW order, for an NHWC tensor (``[B, N]`` stays)."""
    if x.dim() == 4 and x.shape[1] * x.shape[2] != 1:
        x = x.permute(0, 3, 1, 2)
    return x.reshape(x.shape[0], -1).contiguous()


def expand_to_nhwc(x: Tensor) -> Tensor:
    """``[B, C] -> [B, 1, 1, C]`` (NHWC of ``[B, C, 1, 1]``)."""
    return x.reshape(x.shape[0], 1, 1, -1)


def int8_to_nchw(x: Tensor) -> Tensor:
    """An int8 NHWC tensor as contiguous NCHW (for ops that move values in NCHW order)."""
    return x.permute(0, 3, 1, 2).contiguous()


def int8_to_nhwc(x: Tensor) -> Tensor:
    """An int8 NCHW tensor as contiguous NHWC."""
    return x.permute(0, 2, 3, 1).contiguous()


def nhwc_to_nchw_of_last(x: Tensor) -> Tensor:
    """A float 4-D result computed in NCHW order, stored as the NHWC tensor the integer network
    keeps for 4-D float values (:func:`nhwc_to_nchw` undoes it)."""
    return x.permute(0, 2, 3, 1)


def nhwc_to_nchw(x: Tensor) -> Tensor:
    """A float NHWC tensor as NCHW (a permuted view)."""
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


#: The helpers above that the integer network's graph calls: leaves when a pickled network's
#: generated code is traced again (``torch.load``; see ``dfq_gpu.int8.convert.Int8Tracer``).
GRAPH_FUNCTIONS = (nchw_size, nchw_shape, flatten_nhwc, expand_to_nhwc, int8_to_nchw, int8_to_nhwc,
                   nhwc_to_nchw_of_last, nhwc_to_nchw)
