"""The quantized layers of a simulated network.

- :class:`ChannelClamp`, :class:`FakeQuant`, :func:`fake_quant_tensor`: re-exported from
  :mod:`dfq_gpu.nn`, where they are defined (the passes insert them before quantization).
- :class:`QConv2d` / :class:`QLinear`: convolution / linear layers whose ``weight`` holds the
  quantize-dequantized weights and which remember their integer quantization parameters,
  so that an integer network can be built from them (``dfq_gpu.to_int8``).
- :class:`QAdd` / :class:`QAvgPool`: a residual add and a global average pool of quantized
  tensors, computed with the integer arithmetic of the int8 network.
- :class:`QLookup`: an elementwise activation between two quantizers as a table from input
  codes to output codes, the table of the int8 network.
- :class:`QChannelAffine`: a per-channel affine map between two quantizers (a batch norm left
  in the network, a constant per-channel factor) as one table per channel, the int8 network's.
- :class:`QMul`: the product of two quantized tensors (the squeeze-excitation gate ``x * g``),
  in integers.
- :class:`QUpsampleBilinear`: bilinear resampling of a quantized tensor with integer weights,
  in integers.

Integer path
------------
Once quantization is finished (:func:`dfq_gpu.quant.simulate.make_integer_exact`), a layer
whose input and output are quantized computes, together with its fused activation and output
quantizer, exactly what the int8 network computes (the parameters come from
:mod:`dfq_gpu.quant.requant`, which the int8 converter uses too)::

    acc = sum_k (x_k - z_x)(w_k - z_w) + bias_q      exact integer accumulator
    y   = (clamp(rne(float32(acc) * m), lo_q - z_y, hi_q - z_y)) * s_y

``y`` is ``(q - z_y) * s_y`` for the integer ``q = clamp(rne(float32(acc) * m) + z_y, lo_q,
hi_q)`` of the integer network, computed with :class:`FakeQuant`'s float32 dequantization, so
the activation and ``FakeQuant`` that follow in the graph return it unchanged (the activation
may move a value at a bound off the grid; the quantizer maps it back onto the same integer);
:func:`~dfq_gpu.quant.simulate.make_integer_exact` marks those that need not compute as
``passthrough``.
A layer without an output quantizer returns ``float32(acc) * float32(s_x s_w)``.

The exact accumulator and the epilogue are computed by the integer reference
(:func:`kernels.reference.exact_accumulate`, :func:`~kernels.reference.requantize_centered`,
:func:`~kernels.reference.exact_add`, :func:`~kernels.reference.exact_sum`) on the integers
``x - z_x`` and ``w - z_w``, which these layers recover from their dequantized inputs: the
reference is the one CPU executor of the integer contract, here on NCHW float tensors as in
the int8 network's reference backend on int8 NHWC tensors. Zero padding is exact: a padded tap
is 0 = ``x - z_x`` of the real zero. The integer path runs without autograd (rounding has no
gradient).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import reference as kref

from .nn import ELEMENTWISE, ChannelClamp, FakeQuant, fake_quant_tensor, grid_values
from .quant.requant import avgpool_float_scale, avgpool_multiplier, bilinear_multiplier

__all__ = ["ChannelClamp", "FakeQuant", "QConv2d", "QLinear", "QAdd", "QAvgPool", "QAvgPool2d", "QAdaptiveAvgPool2d",
           "QLookup", "QChannelAffine", "QMul", "QUpsampleBilinear",
           "fake_quant_tensor",
           "QUANTIZED_LAYERS", "QUANTIZED_LAYER_TYPES"]


_IQ_BUFFERS = ("iq_bias", "iq_multiplier", "iq_lo", "iq_hi", "iq_float_scale")


def _scalar(value: float, device: torch.device) -> torch.Tensor:
    """``value`` (a float32 number) as a 0-d float32 tensor: multiplications by it are float32
    multiplications."""
    return torch.tensor(value, dtype=torch.float32, device=device)


def _centered(x: torch.Tensor, scale: float, lo: int, hi: int) -> torch.Tensor:
    """The integers ``q - z`` of values ``x = (q - z) * scale`` on a quantizer's grid (float32;
    exact, since ``x * (1 / scale)`` is within a few float32 ulps of an integer), clamped to
    ``[lo, hi]`` (values off the grid are quantized as the quantizer would)."""
    s = _scalar(scale, x.device)
    return (x.to(torch.float32) * torch.reciprocal(s)).round_().clamp_(lo, hi)


class _QuantLayerMixin:
    """Quantization parameters shared by :class:`QConv2d` and :class:`QLinear`.

    ``weight`` holds the dequantized weights ``(q - w_zero_point) * w_scale``; ``w_scale`` and
    ``w_zero_point`` have one entry (per tensor) or one per output channel; integer weights
    are recovered exactly by :meth:`integer_weight`.

    With :meth:`set_integer_path` the layer computes as the integer network does (module
    docstring): ``integer_output`` is then ``"quantized"`` (the output is requantized onto the
    output quantizer's grid, the fused activation included) or ``"float"`` (float output from
    the accumulator), and ``None`` for the float simulation.
    """

    w_scale: torch.Tensor
    w_zero_point: torch.Tensor
    w_bits: int
    w_symmetric: bool
    weight: torch.Tensor
    integer_output: Optional[str] = None

    def _init_quant(self, w_scale: torch.Tensor, w_zero_point: torch.Tensor, bits: int, symmetric: bool) -> None:
        self.register_buffer("w_scale", w_scale.detach().to(torch.float64).clone())  # type: ignore[attr-defined]
        self.register_buffer("w_zero_point", w_zero_point.detach().to(torch.int64).clone())  # type: ignore[attr-defined]
        self.w_bits = int(bits)
        self.w_symmetric = bool(symmetric)
        self.integer_output = None
        self._iq_cache: Optional[tuple] = None
        self._iw_cache: Optional[tuple] = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # type: ignore[misc]
        state["_iq_cache"] = state["_iw_cache"] = None  # derived from the weights; rebuilt on demand
        return state

    def _bcast(self, v: torch.Tensor) -> torch.Tensor:
        shape = [-1] + [1] * (self.weight.dim() - 1)
        return v.view(shape) if v.numel() > 1 else v.reshape(())

    def _weights_key(self) -> Optional[tuple]:
        """What the caches derived from the weights depend on: the weight, scale and zero-point
        tensors and their versions (``None`` for inference tensors, which have no version counter)."""
        w = self.weight
        try:
            return (w.data_ptr(), w._version, tuple(w.shape), w.device, self.w_scale.data_ptr(),
                    self.w_scale._version, self.w_zero_point.data_ptr(), self.w_zero_point._version)
        except RuntimeError:
            return None

    def integer_weight(self) -> torch.Tensor:
        """The integer weights ``q`` (int64), exactly as quantized (cached while the weights and
        their quantizer do not change; do not modify the returned tensor)."""
        w = self.weight
        key = self._weights_key()
        cached = getattr(self, "_iw_cache", None)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        s = self._bcast(self.w_scale)
        z = self._bcast(self.w_zero_point)
        q = torch.round(w.detach().to(torch.float64) / s).to(torch.int64) + z
        self._iw_cache = (key, q) if key is not None else None
        return q

    # ------------------------------------------------------------------------- integer path
    @staticmethod
    def integer_tensors_of(x_scale: float, x_min: int, x_max: int, bias: torch.Tensor, *,
                           multiplier: Optional[torch.Tensor] = None, y_scale: Optional[float] = None,
                           y_zero_point: Optional[int] = None, lo: Optional[torch.Tensor] = None,
                           hi: Optional[torch.Tensor] = None,
                           float_scale: Optional[torch.Tensor] = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """The scalars and the (CPU) ``iq_*`` buffers :meth:`set_integer_path` stores for these arguments."""
        scalars: dict = {"x_scale": float(x_scale), "x_min": int(x_min), "x_max": int(x_max)}
        tensors = {"iq_bias": bias.detach().cpu().reshape(-1).to(torch.float64).clone()}
        if float_scale is not None:
            scalars["output"] = "float"
            tensors["iq_float_scale"] = float_scale.detach().cpu().reshape(-1).to(torch.float32).clone()
            return scalars, tensors
        if multiplier is None or y_scale is None or y_zero_point is None or lo is None or hi is None:
            raise ValueError("a quantized output needs multiplier, y_scale, y_zero_point, lo and hi")
        z = int(y_zero_point)
        scalars.update(output="quantized", y_scale=float(y_scale), y_zero_point=z)
        tensors["iq_multiplier"] = multiplier.detach().cpu().reshape(-1).to(torch.float32).clone()
        # the bounds relative to the zero point: clamp(rne(y) + z, lo, hi) - z = clamp(rne(y), lo - z, hi - z)
        tensors["iq_lo"] = (lo.detach().cpu().reshape(-1).to(torch.int64) - z).to(torch.float32)
        tensors["iq_hi"] = (hi.detach().cpu().reshape(-1).to(torch.int64) - z).to(torch.float32)
        return scalars, tensors

    def set_integer_path(self, x_scale: float, x_min: int, x_max: int, bias: torch.Tensor, *,
                         multiplier: Optional[torch.Tensor] = None, y_scale: Optional[float] = None,
                         y_zero_point: Optional[int] = None, lo: Optional[torch.Tensor] = None,
                         hi: Optional[torch.Tensor] = None, float_scale: Optional[torch.Tensor] = None) -> None:
        """Compute this layer as the integer network does (parameters from
        :func:`dfq_gpu.quant.requant.layer_requant`).

        Args:
            x_scale: the input quantizer's scale (a float32 value).
            x_min, x_max: the input grid relative to its zero point, ``qmin - z_x`` and ``qmax - z_x``.
            bias: the integer bias ``[N]``.
            multiplier, y_scale, y_zero_point, lo, hi: a quantized output: float32 multiplier
                ``[1|N]``, the output quantizer's scale and zero point, and the integer bounds
                ``[1|N]`` on its grid (fused activation included).
            float_scale: a float output instead: ``float32(s_x s_w)`` ``[1|N]``.
        """
        scalars, tensors = self.integer_tensors_of(x_scale, x_min, x_max, bias, multiplier=multiplier,
                                                   y_scale=y_scale, y_zero_point=y_zero_point, lo=lo, hi=hi,
                                                   float_scale=float_scale)
        n = self.weight.shape[0]
        if tensors["iq_bias"].numel() != n:
            raise ValueError(f"the integer bias has {tensors['iq_bias'].numel()} entries for {n} output channels")
        self.clear_integer_path()
        self.restore_integer_path(scalars)
        for name, t in tensors.items():
            self.register_buffer(name, t.to(self.weight.device))  # type: ignore[attr-defined]

    def integer_state(self) -> Optional[tuple[dict, dict[str, list]]]:
        """The integer path's parameters (scalars, and buffers as lists), ``None`` on the float
        simulation; equal to ``integer_state_of`` of the arguments that set it."""
        spec = self.integer_path_spec()
        if spec is None:
            return None
        return spec, {k: b.detach().cpu().tolist() for k, b in self._buffers.items()  # type: ignore[attr-defined]
                      if k in _IQ_BUFFERS and b is not None}

    @classmethod
    def integer_state_of(cls, **kw) -> tuple[dict, dict[str, list]]:
        """:meth:`integer_state` after ``set_integer_path(**kw)``."""
        scalars, tensors = cls.integer_tensors_of(**kw)
        return scalars, {k: t.tolist() for k, t in tensors.items()}

    def integer_path_spec(self) -> Optional[dict]:
        """The integer path's scalar parameters (its tensors are the ``iq_*`` buffers), or ``None``
        on the float simulation; :meth:`restore_integer_path` takes it back."""
        if self.integer_output is None:
            return None
        spec = {"output": self.integer_output, "x_scale": self.iq_x_scale, "x_min": self.iq_x_min,
                "x_max": self.iq_x_max}
        if self.integer_output == "quantized":
            spec.update(y_scale=self.iq_y_scale, y_zero_point=self.iq_y_zero_point)
        return spec

    def restore_integer_path(self, spec: dict) -> None:
        """Switch to the integer path from :meth:`integer_path_spec`, with zero-filled placeholder
        ``iq_*`` buffers that the caller replaces (``dfq_gpu.io.load`` with the saved ones)."""
        self.clear_integer_path()
        n = self.weight.shape[0]
        self.iq_x_scale, self.iq_x_min, self.iq_x_max = float(spec["x_scale"]), int(spec["x_min"]), int(spec["x_max"])
        self.register_buffer("iq_bias", torch.zeros(n, dtype=torch.float64))  # type: ignore[attr-defined]
        if spec["output"] == "float":
            self.register_buffer("iq_float_scale", torch.zeros(1))  # type: ignore[attr-defined]
        else:
            self.iq_y_scale, self.iq_y_zero_point = float(spec["y_scale"]), int(spec["y_zero_point"])
            for name in ("iq_multiplier", "iq_lo", "iq_hi"):
                self.register_buffer(name, torch.zeros(1))  # type: ignore[attr-defined]
        self.integer_output = str(spec["output"])

    def clear_integer_path(self) -> None:
        """Back to the float simulation."""
        for name in _IQ_BUFFERS:
            self._buffers.pop(name, None)  # type: ignore[attr-defined]
        self.integer_output = None
        self._iq_cache = None

    def _reduction_channels(self) -> int:
        raise NotImplementedError

    def _reduce(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _channel_dim(self, y: torch.Tensor) -> int:
        raise NotImplementedError

    def _integer_plan(self, device: torch.device) -> kref.ExactReduction:
        """How the reference computes this layer's exact accumulator on ``device``
        (:func:`kernels.reference.plan_reduction`), cached while the weights do not change."""
        weights = self._weights_key()
        key = None if weights is None else (*weights, str(device))
        if key is not None and self._iq_cache is not None and self._iq_cache[0] == key:
            return self._iq_cache[1]
        wc = (self.integer_weight() - self._bcast(self.w_zero_point)).cpu()
        x_bound = max(abs(self.iq_x_min), abs(self.iq_x_max))
        plan = kref.plan_reduction(wc, self.iq_bias.detach().cpu(), x_bound, int(getattr(self, "groups", 1)), device)
        if key is not None:
            self._iq_cache = (key, plan)
        return plan

    def _channel_view(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A ``[1|N]`` per-output-channel tensor shaped to broadcast against the output ``y``."""
        return kref.channel_view(v, y, self._channel_dim(y))

    @torch.no_grad()
    def _integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = _centered(x, self.iq_x_scale, self.iq_x_min, self.iq_x_max)
        dim = self._channel_dim(xc) if xc.dim() > 1 else 0
        acc = kref.exact_accumulate(xc, self._integer_plan(x.device), self._reduce, dim).to(torch.float32)
        if self.integer_output == "float":
            y = acc.mul_(self._channel_view(self.iq_float_scale, acc))
        else:
            if self.iq_lo.numel() == 1:
                lo, hi = float(self.iq_lo[0]), float(self.iq_hi[0])
            else:
                lo, hi = self._channel_view(self.iq_lo, acc), self._channel_view(self.iq_hi, acc)
            y = kref.requantize_centered(acc, self._channel_view(self.iq_multiplier, acc), lo, hi)
            y = y.mul_(_scalar(self.iq_y_scale, y.device))  # (q - z_y) * s_y, as FakeQuant dequantizes
        return y if x.dtype == torch.float32 or not x.is_floating_point() else y.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.integer_output is None:
            return self.float_forward(x)
        return self._integer_forward(x)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer alone as the float simulation computes it (quantized weights, float bias),
        whether or not it is on the integer path."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        rep = super().extra_repr()  # type: ignore[misc]  # the float layer's (next in the MRO)
        return rep if self.integer_output is None else f"{rep}, integer_output={self.integer_output}"


class QConv2d(_QuantLayerMixin, nn.Conv2d):
    """A convolution with quantized weights (see :class:`_QuantLayerMixin`)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_q: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor,
                   bits: int, symmetric: bool) -> "QConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                conv.groups, bias=True, padding_mode=conv.padding_mode, device=conv.weight.device,
                dtype=conv.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(w_q)
            q.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(q.bias))
        q._init_quant(w_scale, w_zero_point, bits, symmetric)
        return q

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Conv2d.forward(self, x)

    def _reduction_channels(self) -> int:
        return self.in_channels

    def _reduce(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return self._conv_forward(x, w, b)

    def _channel_dim(self, y: torch.Tensor) -> int:
        return y.dim() - 3  # [B, C, H, W] or unbatched [C, H, W]


class QLinear(_QuantLayerMixin, nn.Linear):
    """A linear layer with quantized weights (see :class:`_QuantLayerMixin`)."""

    @classmethod
    def from_float(cls, lin: nn.Linear, w_q: torch.Tensor, w_scale: torch.Tensor, w_zero_point: torch.Tensor,
                   bits: int, symmetric: bool) -> "QLinear":
        q = cls(lin.in_features, lin.out_features, bias=True, device=lin.weight.device, dtype=lin.weight.dtype)
        with torch.no_grad():
            q.weight.copy_(w_q)
            q.bias.copy_(lin.bias if lin.bias is not None else torch.zeros_like(q.bias))
        q._init_quant(w_scale, w_zero_point, bits, symmetric)
        return q

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.Linear.forward(self, x)

    def _reduction_channels(self) -> int:
        return self.in_features

    def _reduce(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> torch.Tensor:
        return F.linear(x, w, b)

    def _channel_dim(self, y: torch.Tensor) -> int:
        return y.dim() - 1


# The quantized module that replaces a layer, by the layer's kind (dfq_gpu.layers.LayerType.kind).
QUANTIZED_LAYERS: dict[str, type[nn.Module]] = {"conv": QConv2d, "depthwise": QConv2d, "grouped": QConv2d,
                                                "linear": QLinear}
# Every class of QUANTIZED_LAYERS (an isinstance test for "a quantized layer").
QUANTIZED_LAYER_TYPES: tuple[type[nn.Module], ...] = (QConv2d, QLinear)


def _bounds_view(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-tensor (0-d) or per-channel (along dimension 1) bounds shaped for ``y``."""
    if v.numel() == 1:
        return v.reshape(())
    shape = [1] * y.dim()
    shape[1 if y.dim() > 1 else 0] = -1
    return v.view(shape)


class QAdd(nn.Module):
    """Residual add of two quantized tensors, computed as the integer network does, with the
    fused activation and the output quantizer (parameters from
    :func:`dfq_gpu.quant.requant.add_requant`)::

        acc = (a - z_a) ia + (b - z_b) ib                   exact
        y   = clamp(rne(float32(acc) * m), lo - z_y, hi - z_y) * s_y

    ``a`` and ``b`` are the dequantized values of their quantizers (scales ``a_scale``,
    ``b_scale``); ``lo``/``hi`` are the integer bounds (int64 ``[1|C]``, along dimension 1) on
    the output grid of zero point ``zero_point`` and scale ``y_scale``. ``acc_bound`` is the
    largest possible ``|acc|``: the accumulator runs in float32 below 2^24, else in float64.
    """

    def __init__(self, a_scale: float, b_scale: float, ia: int, ib: int, multiplier: float, y_scale: float,
                 zero_point: int, lo: torch.Tensor, hi: torch.Tensor, a_range: tuple[int, int],
                 b_range: tuple[int, int]) -> None:
        super().__init__()
        self.a_scale, self.b_scale, self.ia, self.ib = float(a_scale), float(b_scale), int(ia), int(ib)
        self.multiplier, self.y_scale, self.zero_point = float(multiplier), float(y_scale), int(zero_point)
        self.a_range = (int(a_range[0]), int(a_range[1]))  # qmin - z_a, qmax - z_a
        self.b_range = (int(b_range[0]), int(b_range[1]))
        self.register_buffer("lo", lo.detach().reshape(-1).to(torch.int64).clone())
        self.register_buffer("hi", hi.detach().reshape(-1).to(torch.int64).clone())

    def state(self) -> tuple:
        """All parameters (for comparisons)."""
        return (self.a_scale, self.b_scale, self.ia, self.ib, self.multiplier, self.y_scale, self.zero_point,
                self.a_range, self.b_range, self.lo.tolist(), self.hi.tolist())

    @property
    def acc_bound(self) -> int:
        return (max(abs(v) for v in self.a_range) * abs(self.ia) + max(abs(v) for v in self.b_range) * abs(self.ib))

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ac = _centered(a, self.a_scale, *self.a_range)
        bc = _centered(b, self.b_scale, *self.b_range)
        acc = kref.exact_add(ac, bc, self.ia, self.ib, self.acc_bound)
        if self.lo.numel() == 1:
            lo, hi = int(self.lo[0]) - self.zero_point, int(self.hi[0]) - self.zero_point
        else:
            lo = _bounds_view((self.lo - self.zero_point).to(torch.float32), acc)
            hi = _bounds_view((self.hi - self.zero_point).to(torch.float32), acc)
        y = kref.requantize_centered(acc, _scalar(self.multiplier, acc.device), lo, hi)
        y = y.mul_(_scalar(self.y_scale, y.device))
        return y if a.dtype == torch.float32 else y.to(a.dtype)

    def extra_repr(self) -> str:
        return (f"ia={self.ia}, ib={self.ib}, multiplier={self.multiplier:.6g}, zero_point={self.zero_point}, "
                f"per_channel_bounds={self.lo.numel() > 1}")


class QAvgPool(nn.Module):
    """Global average pooling ``[B, C, H, W] -> [B, C]`` (``[B, C, 1, 1]`` with ``keepdim``) of a
    quantized tensor, computed as the integer network does::

        acc = sum_hw (x - z_x)                                 exact
        y   = clamp(rne(float32(acc) * m), qmin - z_y, qmax - z_y) * s_y,   m = float32((s_x / s_y) / (H W))

    (:func:`dfq_gpu.quant.requant.avgpool_multiplier`), or, without an output quantizer
    (``y_scale=None``, the float network output), ``float32(acc) * float32(s_x / (H W))``.
    """

    def __init__(self, x_scale: float, x_range: tuple[int, int], keepdim: bool, y_scale: Optional[float] = None,
                 zero_point: int = 0, qmin: int = 0, qmax: int = 0) -> None:
        super().__init__()
        self.x_scale = float(x_scale)
        self.x_range = (int(x_range[0]), int(x_range[1]))
        self.keepdim = bool(keepdim)
        self.y_scale = None if y_scale is None else float(y_scale)
        self.zero_point, self.qmin, self.qmax = int(zero_point), int(qmin), int(qmax)

    def state(self) -> tuple:
        """All parameters (for comparisons)."""
        return (self.x_scale, self.x_range, self.keepdim, self.y_scale, self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"QAvgPool expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        hw = int(x.shape[2] * x.shape[3])
        xc = _centered(x, self.x_scale, *self.x_range)
        acc = kref.exact_sum(xc, (2, 3), hw * max(abs(v) for v in self.x_range))
        if self.y_scale is None:
            y = acc.mul_(_scalar(avgpool_float_scale(self.x_scale, hw), acc.device))
        else:
            m = _scalar(avgpool_multiplier(self.x_scale, self.y_scale, hw), acc.device)
            y = kref.requantize_centered(acc, m, self.qmin - self.zero_point, self.qmax - self.zero_point)
            y = y.mul_(_scalar(self.y_scale, y.device))
        if self.keepdim:
            y = y.view(y.shape[0], y.shape[1], 1, 1)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        out = "float" if self.y_scale is None else f"zero_point={self.zero_point}, grid=[{self.qmin}, {self.qmax}]"
        return f"x_scale={self.x_scale:.6g}, keepdim={self.keepdim}, output: {out}"


class QLookup(nn.Module):
    """An elementwise activation (``nn.ELEMENTWISE[fn](x, **fn_kwargs)``: hardswish, SiLU,
    sigmoid, ...) between two quantizers, computed as the integer network does: by a table from
    each input code ``q`` to an output code.

    The table is built once from the float function on the input grid's values, exactly as the
    float simulation would compute them: ``v = (q - z_x) * s_x`` (``FakeQuant``'s float32
    dequantization), the output quantizer applied to ``fn(v)``. The float simulation computes
    the same thing, except that PyTorch's CPU kernels of functions such as SiLU or GELU may
    differ in the last bit between tensor sizes and memory offsets; the table fixes one answer,
    which the int8 network shares. ``table`` holds ``q_y - z_y`` (float32) for
    ``q = x_qmin .. x_qmax``. With ``integer=False`` the module computes the float function.
    """

    def __init__(self, fn: str, fn_kwargs: dict, x_scale: float, x_zero_point: int, x_bits: int, x_symmetric: bool,
                 y_scale: float, y_zero_point: int, y_bits: int, y_symmetric: bool, integer: bool = True) -> None:
        super().__init__()
        if fn not in ELEMENTWISE:
            raise ValueError(f"unknown elementwise function {fn!r} (known: {', '.join(sorted(ELEMENTWISE))})")
        self.fn, self.fn_kwargs = str(fn), dict(fn_kwargs)
        self.x = (float(x_scale), int(x_zero_point), int(x_bits), bool(x_symmetric))
        self.y = (float(y_scale), int(y_zero_point), int(y_bits), bool(y_symmetric))
        self.integer = bool(integer)
        fx_in = FakeQuant(*self.x)
        fq_out = FakeQuant(*self.y)
        self.x_qmin, self.x_qmax = fx_in.qmin, fx_in.qmax
        with torch.no_grad():
            v = grid_values(torch.arange(fx_in.qmin, fx_in.qmax + 1), self.x[0], self.x[1])
            y = fq_out(ELEMENTWISE[self.fn](v, **self.fn_kwargs).to(torch.float32))
            rel = (y * torch.reciprocal(fq_out.scale)).round_()
        self.register_buffer("table", rel)

    def state(self) -> tuple:
        """All parameters (for comparisons)."""
        return (self.fn, tuple(sorted(self.fn_kwargs.items())), self.x, self.y, self.integer)

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return ELEMENTWISE[self.fn](x, **self.fn_kwargs)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.integer:
            return self.float_forward(x)
        s_x, z_x = self.x[0], self.x[1]
        xc = _centered(x, s_x, self.x_qmin - z_x, self.x_qmax - z_x)
        idx = xc.add_(z_x - self.x_qmin).to(torch.int64)
        y = self.table[idx]
        y = y.mul_(_scalar(self.y[0], y.device))  # (q - z_y) * s_y, as FakeQuant dequantizes
        return y if x.dtype == torch.float32 or not x.is_floating_point() else y.to(x.dtype)

    def extra_repr(self) -> str:
        kw = "".join(f", {k}={v}" for k, v in self.fn_kwargs.items())
        return f"fn={self.fn}{kw}, integer={self.integer}"


class QChannelAffine(nn.Module):
    """A per-channel affine map ``y[:, c] = x[:, c] * scale[c] + shift[c]`` (float32) between two
    quantizers, along dimension 1: a batch norm left in the network (``scale = gamma /
    sqrt(var + eps)``, ``shift = beta - mean * scale``), a constant per-channel factor (ConvNeXt's
    layer scale) or offset. Computed as the integer network does, by one table per channel from
    input codes to output codes, built from the float map on the input grid's values
    (``FakeQuant``'s dequantization ``(q - z_x) * s_x``, then the output quantizer): ``table[c,
    q - x_qmin]`` holds ``q_y - z_y`` (float32). With ``integer=False`` the module computes the
    float map.
    """

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, x_scale: float, x_zero_point: int, x_bits: int,
                 x_symmetric: bool, y_scale: float, y_zero_point: int, y_bits: int, y_symmetric: bool,
                 integer: bool = True) -> None:
        super().__init__()
        scale = torch.as_tensor(scale, dtype=torch.float32).detach().reshape(-1).clone()
        shift = torch.as_tensor(shift, dtype=torch.float32).detach().reshape(-1).clone()
        if scale.shape != shift.shape or scale.numel() == 0:
            raise ValueError(f"scale and shift must have one entry per channel, got {tuple(scale.shape)} and "
                             f"{tuple(shift.shape)}")
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.x = (float(x_scale), int(x_zero_point), int(x_bits), bool(x_symmetric))
        self.y = (float(y_scale), int(y_zero_point), int(y_bits), bool(y_symmetric))
        self.integer = bool(integer)
        fx_in, fq_out = FakeQuant(*self.x), FakeQuant(*self.y)
        self.x_qmin, self.x_qmax = fx_in.qmin, fx_in.qmax
        with torch.no_grad():
            v = grid_values(torch.arange(fx_in.qmin, fx_in.qmax + 1), self.x[0], self.x[1])  # [n]
            y = fq_out(v[None, :] * scale[:, None] + shift[:, None])  # [C, n]
            rel = (y * torch.reciprocal(fq_out.scale)).round_()
        self.register_buffer("table", rel.contiguous())

    @property
    def channels(self) -> int:
        return int(self.scale.numel())

    def state(self) -> tuple:
        """All parameters (for comparisons)."""
        return (tuple(self.scale.tolist()), tuple(self.shift.tolist()), self.x, self.y, self.integer)

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return t.to(x.device).view(1, -1, *([1] * (x.dim() - 2)))

    def float_forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._view(self.scale, x) + self._view(self.shift, x)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels along dimension 1, got shape {tuple(x.shape)}")
        if not self.integer:
            return self.float_forward(x)
        s_x, z_x = self.x[0], self.x[1]
        n = self.x_qmax - self.x_qmin + 1
        idx = _centered(x, s_x, self.x_qmin - z_x, self.x_qmax - z_x).add_(z_x - self.x_qmin).to(torch.int64)
        idx = idx + self._view(torch.arange(self.channels, device=x.device) * n, x)  # row of each channel
        y = self.table.to(x.device).reshape(-1)[idx]
        y = y.mul_(_scalar(self.y[0], y.device))  # (q - z_y) * s_y, as FakeQuant dequantizes
        return y if x.dtype == torch.float32 or not x.is_floating_point() else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, integer={self.integer}"


class QMul(nn.Module):
    """The product of two quantized tensors of the same shape, or of a tensor and a per-(image,
    channel) gate ``[B, C, 1, 1]`` (squeeze-excitation), computed as the integer network does::

        acc = (a - z_a)(b - z_b)                                     exact
        y   = clamp(rne(float32(acc) * m), qmin - z_y, qmax - z_y) * s_y,   m = float32(s_a s_b / s_y)

    (:func:`dfq_gpu.quant.requant.mul_multiplier`).
    """

    def __init__(self, a_scale: float, a_range: tuple[int, int], b_scale: float, b_range: tuple[int, int],
                 multiplier: float, y_scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.a_scale, self.b_scale = float(a_scale), float(b_scale)
        self.a_range = (int(a_range[0]), int(a_range[1]))  # qmin - z_a, qmax - z_a
        self.b_range = (int(b_range[0]), int(b_range[1]))
        self.multiplier, self.y_scale = float(multiplier), float(y_scale)
        self.zero_point, self.qmin, self.qmax = int(zero_point), int(qmin), int(qmax)

    def state(self) -> tuple:
        """All parameters (for comparisons)."""
        return (self.a_scale, self.a_range, self.b_scale, self.b_range, self.multiplier, self.y_scale,
                self.zero_point, self.qmin, self.qmax)

    @property
    def acc_bound(self) -> int:
        return max(abs(v) for v in self.a_range) * max(abs(v) for v in self.b_range)

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        acc = kref.exact_product(_centered(a, self.a_scale, *self.a_range), _centered(b, self.b_scale, *self.b_range),
                                 self.acc_bound)
        y = kref.requantize_centered(acc, _scalar(self.multiplier, acc.device), self.qmin - self.zero_point,
                                     self.qmax - self.zero_point)
        y = y.mul_(_scalar(self.y_scale, y.device))
        return y if a.dtype == torch.float32 else y.to(a.dtype)

    def extra_repr(self) -> str:
        return f"multiplier={self.multiplier:.6g}, zero_point={self.zero_point}, grid=[{self.qmin}, {self.qmax}]"


class QAvgPool2d(nn.Module):
    """A windowed average pool (``nn.AvgPool2d`` / ``F.avg_pool2d``: any kernel, stride, padding,
    ``ceil_mode``, ``count_include_pad``) of a quantized tensor, computed as the integer network
    does (:func:`kernels.reference.exact_window_average`): the exact sum of each window's
    integers, times ``float32((s_x / s_y) / d)`` for the window's divisor ``d``, rounded, clamped
    to the output grid.
    """

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], ceil_mode: bool,
                 count_include_pad: bool, x_scale: float, x_range: tuple[int, int], y_scale: float, zero_point: int,
                 qmin: int, qmax: int) -> None:
        super().__init__()
        self.kernel = (int(kernel[0]), int(kernel[1]))
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = (int(padding[0]), int(padding[1]))
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)
        self.x_scale, self.x_range = float(x_scale), (int(x_range[0]), int(x_range[1]))
        self.y_scale, self.zero_point, self.qmin, self.qmax = float(y_scale), int(zero_point), int(qmin), int(qmax)

    def state(self) -> tuple:
        """All parameters (for comparisons)."""
        return (self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.x_scale,
                self.x_range, self.y_scale, self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"QAvgPool2d expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        ph, pw = self.padding
        oh = kref.pool_output_size(x.shape[2], self.kernel[0], ph, ph, self.stride[0], 1, self.ceil_mode)
        ow = kref.pool_output_size(x.shape[3], self.kernel[1], pw, pw, self.stride[1], 1, self.ceil_mode)
        xc = _centered(x, self.x_scale, *self.x_range).contiguous()
        y = kref.exact_window_average(xc, self.kernel, self.stride, (ph, ph, pw, pw), (oh, ow), self.count_include_pad,
                                      self.x_scale, self.y_scale, float(self.qmin - self.zero_point),
                                      float(self.qmax - self.zero_point), max(abs(v) for v in self.x_range))
        y = y.mul_(_scalar(self.y_scale, y.device))
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}, ceil_mode={self.ceil_mode}, "
                f"count_include_pad={self.count_include_pad}")


class QAdaptiveAvgPool2d(nn.Module):
    """An adaptive average pool to any output size (``nn.AdaptiveAvgPool2d`` /
    ``F.adaptive_avg_pool2d``; a ``None`` side keeps the input's size) of a quantized tensor,
    computed as the integer network does (:func:`kernels.reference.exact_adaptive_average`): the
    exact sum of each of ``F.adaptive_avg_pool2d``'s windows, times ``float32((s_x / s_y) / d)``
    for the window's size ``d``, rounded, clamped to the output grid. The windows follow the
    input's size at each call, as the float pool's do.
    """

    def __init__(self, output_size: tuple[Optional[int], Optional[int]], x_scale: float, x_range: tuple[int, int],
                 y_scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.output_size = tuple(None if s is None else int(s) for s in output_size)
        self.x_scale, self.x_range = float(x_scale), (int(x_range[0]), int(x_range[1]))
        self.y_scale, self.zero_point, self.qmin, self.qmax = float(y_scale), int(zero_point), int(qmin), int(qmax)

    def state(self) -> tuple:
        """All parameters (for comparisons)."""
        return (self.output_size, self.x_scale, self.x_range, self.y_scale, self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"QAdaptiveAvgPool2d expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        out_hw = kref.adaptive_output_size((x.shape[2], x.shape[3]), self.output_size)
        xc = _centered(x, self.x_scale, *self.x_range)
        y = kref.exact_adaptive_average(xc, out_hw, self.x_scale, self.y_scale, float(self.qmin - self.zero_point),
                                        float(self.qmax - self.zero_point))
        y = y.mul_(_scalar(self.y_scale, y.device))
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class QUpsampleBilinear(nn.Module):
    """Bilinear resampling (``F.interpolate(mode="bilinear")``, ``nn.Upsample``) of a quantized
    tensor, computed as the integer network does: the exact accumulator
    ``sum wh ww (x - z_x)`` over the two source rows and columns with weights in steps of
    ``2^-8`` (:func:`kernels.reference.bilinear_accumulate`), times ``float32((s_x / s_y) /
    2^16)``, rounded, clamped to the output grid. ``size`` (given at the call, e.g. computed from
    another tensor's shape, or fixed here) or ``scale_factor`` sets the output size, as for
    ``F.interpolate``.
    """

    def __init__(self, size: Optional[tuple[int, int]], scale_factor: Optional[tuple[float, float]], align_corners: bool,
                 x_scale: float, x_range: tuple[int, int], y_scale: float, zero_point: int, qmin: int,
                 qmax: int) -> None:
        super().__init__()
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.scale_factor = None if scale_factor is None else (float(scale_factor[0]), float(scale_factor[1]))
        self.align_corners = bool(align_corners)
        self.x_scale, self.x_range = float(x_scale), (int(x_range[0]), int(x_range[1]))
        self.y_scale, self.zero_point, self.qmin, self.qmax = float(y_scale), int(zero_point), int(qmin), int(qmax)
        self.multiplier = bilinear_multiplier(self.x_scale, self.y_scale)

    def state(self) -> tuple:
        """All parameters (for comparisons)."""
        return (self.size, self.scale_factor, self.align_corners, self.x_scale, self.x_range, self.y_scale,
                self.zero_point, self.qmin, self.qmax)

    def output_size(self, h: int, w: int, size: Any = None) -> tuple[tuple[int, int], tuple[Optional[float], ...]]:
        """``((oh, ow), (scale_h, scale_w))`` for an ``h x w`` input, as ``F.interpolate`` sizes it."""
        size = self.size if size is None else size
        if size is not None:
            pair = (size, size) if isinstance(size, int) else tuple(size)
            return (int(pair[0]), int(pair[1])), (None, None)
        assert self.scale_factor is not None
        sh, sw = self.scale_factor
        return (math.floor(h * sh), math.floor(w * sw)), (sh, sw)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, size: Any = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"QUpsampleBilinear expects a [B, C, H, W] tensor, got shape {tuple(x.shape)}")
        (oh, ow), (sh, sw) = self.output_size(x.shape[2], x.shape[3], size)
        th = kref.bilinear_taps(x.shape[2], oh, self.align_corners, sh, x.device)
        tw = kref.bilinear_taps(x.shape[3], ow, self.align_corners, sw, x.device)
        acc = kref.bilinear_accumulate(_centered(x, self.x_scale, *self.x_range), (2, 3), th, tw).to(torch.float32)
        y = kref.requantize_centered(acc, self.multiplier, float(self.qmin - self.zero_point),
                                     float(self.qmax - self.zero_point))
        y = y.mul_(_scalar(self.y_scale, y.device))
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, align_corners={self.align_corners}"
