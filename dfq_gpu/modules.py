"""The quantized layers of a simulated network.

- :class:`ChannelClamp`, :class:`FakeQuant`, :func:`fake_quant_tensor`: re-exported from
  :mod:`dfq_gpu.nn`, where they are defined (the passes insert them before quantization).
- :class:`QConv2d` / :class:`QLinear`: convolution / linear layers whose ``weight`` holds the
  quantize-dequantized weights and which remember their integer quantization parameters,
  so that an integer network can be built from them (``dfq_gpu.to_int8``).
- :class:`QAdd` / :class:`QAvgPool`: a residual add and a global average pool of quantized
  tensors, computed with the integer arithmetic of the int8 network.

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
may move a value at a bound off the grid; the quantizer maps it back onto the same integer).
A layer without an output quantizer returns ``float32(acc) * float32(s_x s_w)``.

The exact accumulator is computed on the CPU in float32 on the integers ``x - z_x`` and
``w - z_w``: every partial sum of a reduction is an integer of magnitude at most
``max|x - z_x| * sum_k |w_k - z_w|``, exact in float32 below 2^24, so the input channels are
split into chunks whose bound stays below 2^24, each chunk runs as one float32 convolution, and
the chunks are added in float64 (most layers need one chunk). Other devices, and layers that
would need many chunks, use one float64 convolution (exact below 2^53). Zero padding is exact:
a padded tap is 0 = ``x - z_x`` of the real zero. The integer path runs without autograd
(rounding has no gradient).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import ChannelClamp, FakeQuant, fake_quant_tensor
from .quant.requant import avgpool_float_scale, avgpool_multiplier

__all__ = ["ChannelClamp", "FakeQuant", "QConv2d", "QLinear", "QAdd", "QAvgPool", "fake_quant_tensor",
           "QUANTIZED_LAYERS", "QUANTIZED_LAYER_TYPES"]


#: float32 holds every integer of magnitude up to 2^24 exactly.
EXACT_FLOAT32 = 1 << 24
#: A layer whose float32 reduction would need more chunks than this runs as one float64 reduction.
MAX_FLOAT32_CHUNKS = 8
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


def _clamp_inplace(y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """``y.clamp_(lo, hi)`` for broadcast tensor bounds (``lo <= hi``), as two in-place passes
    (faster on the CPU than a clamp with tensor bounds)."""
    torch.maximum(y, lo, out=y)
    return torch.minimum(y, hi, out=y)


def _float32_chunks(bound: np.ndarray) -> Optional[list[tuple[int, int]]]:
    """Split the reduction ``[0, C)`` into contiguous chunks whose worst-case partial sums
    (``bound[n, c]``: the bound contributed by input channel ``c`` to output ``n``) stay exact
    in float32; ``None`` if one channel alone exceeds 2^24."""
    n, c = bound.shape
    if c == 0:
        return [(0, 0)]
    chunks: list[tuple[int, int]] = []
    running = np.zeros(n)
    start = 0
    for k in range(c):
        col = bound[:, k]
        if col.max() >= EXACT_FLOAT32:
            return None
        nxt = running + col
        if nxt.max() >= EXACT_FLOAT32:
            chunks.append((start, k))
            start, running = k, col.copy()
        else:
            running = nxt
    chunks.append((start, c))
    return chunks


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

    def _bcast(self, v: torch.Tensor) -> torch.Tensor:
        shape = [-1] + [1] * (self.weight.dim() - 1)
        return v.view(shape) if v.numel() > 1 else v.reshape(())

    def integer_weight(self) -> torch.Tensor:
        """The integer weights ``q`` (int64), exactly as quantized."""
        s = self._bcast(self.w_scale)
        z = self._bcast(self.w_zero_point)
        return torch.round(self.weight.detach().to(torch.float64) / s).to(torch.int64) + z

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

    def _integer_plan(self, device: torch.device) -> tuple:
        """``(integer weights w - z_w, kind, chunks, float32 bias)`` for ``device``, cached while
        the weights do not change. ``kind``: ``"f32"`` (one float32 reduction with the bias),
        ``"f32+b"`` (one float32 reduction, then the bias added in float32: one rounding of the
        exact sum), ``"chunks"`` (float32 chunks added in float64), ``"f64"`` (one float64
        reduction)."""
        try:
            key = (self.weight.data_ptr(), self.weight._version, self.w_scale.data_ptr(), self.w_scale._version,
                   self.w_zero_point.data_ptr(), self.w_zero_point._version, str(device))
        except RuntimeError:  # inference tensors have no version counter
            key = None
        if key is not None and self._iq_cache is not None and self._iq_cache[0] == key:
            return self._iq_cache[1]
        wc = (self.integer_weight() - self._bcast(self.w_zero_point)).cpu()
        n = wc.shape[0]
        x_max = max(abs(self.iq_x_min), abs(self.iq_x_max))
        absw = wc.abs().to(torch.float64)
        bias_abs = self.iq_bias.detach().abs().cpu()
        groups = int(getattr(self, "groups", 1))
        c_in = self._reduction_channels()
        if groups == 1:
            per_channel = (absw.reshape(n, c_in, -1).sum(2) * x_max).numpy()
            per_output = per_channel.sum(1)
            chunks = _float32_chunks(per_channel)
        else:
            per_output = (absw.reshape(n, -1).sum(1) * x_max).numpy()
            chunks = [(0, c_in)] if per_output.max() < EXACT_FLOAT32 else None
        if device.type != "cpu" or chunks is None or len(chunks) > MAX_FLOAT32_CHUNKS:
            kind = "f64"  # other devices may pick convolution algorithms that are not exact in float32
        elif len(chunks) == 1:
            if float((torch.from_numpy(per_output) + bias_abs).max()) < EXACT_FLOAT32:
                kind = "f32"
            elif float(bias_abs.max()) <= EXACT_FLOAT32:
                kind = "f32+b"
            else:
                kind = "chunks"
        else:
            kind = "chunks"
        if kind == "chunks" and (getattr(self, "groups", 1) != 1 or chunks is None):
            kind = "f64"  # grouped / depthwise convolutions cannot be split along input channels
        dtype = torch.float64 if kind == "f64" else torch.float32
        bounds = None
        if self.integer_output == "quantized" and self.iq_lo.numel() == 1:
            bounds = (float(self.iq_lo[0]), float(self.iq_hi[0]))
        plan = (wc.to(device=device, dtype=dtype), kind, chunks,
                self.iq_bias.detach().to(device=device, dtype=torch.float32), bounds)
        if key is not None:
            self._iq_cache = (key, plan)
        return plan

    def _exact_accumulator(self, xc: torch.Tensor, plan: tuple) -> torch.Tensor:
        """``float32(acc)`` for the centered integer input ``xc``: the exact accumulator rounded
        once to float32, as the integer network's ``float32(acc)``."""
        wc, kind, chunks, bias32, _ = plan
        if kind == "f64":
            acc = self._reduce(xc.to(torch.float64), wc, self.iq_bias.to(torch.float64))
            return torch.round(acc).to(torch.float32)  # exact; the rounding guards non-direct algorithms
        if kind == "f32":
            return self._reduce(xc, wc, bias32)
        if kind == "f32+b":
            acc = self._reduce(xc, wc, None)
            return acc.add_(self._channel_view(bias32, acc))
        dim = self._channel_dim(xc) if xc.dim() > 1 else 0
        acc64: Optional[torch.Tensor] = None
        for a, b in chunks:
            part = self._reduce(xc.narrow(dim, a, b - a), wc.narrow(1, a, b - a), None)
            acc64 = part.to(torch.float64) if acc64 is None else acc64.add_(part)
        assert acc64 is not None
        acc64.add_(self._channel_view(self.iq_bias.to(torch.float64), acc64))
        return acc64.to(torch.float32)

    def _channel_view(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A ``[1|N]`` per-output-channel tensor shaped to broadcast against the output ``y``."""
        if v.numel() == 1:
            return v.reshape(())
        shape = [1] * y.dim()
        shape[self._channel_dim(y)] = -1
        return v.view(shape)

    @torch.no_grad()
    def _integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._integer_plan(x.device)
        xc = _centered(x, self.iq_x_scale, self.iq_x_min, self.iq_x_max)
        acc = self._exact_accumulator(xc, plan)
        if self.integer_output == "float":
            y = acc.mul_(self._channel_view(self.iq_float_scale, acc))
        else:
            y = acc.mul_(self._channel_view(self.iq_multiplier, acc)).round_()
            bounds = plan[4]
            if bounds is not None:
                y.clamp_(bounds[0], bounds[1])
            else:
                _clamp_inplace(y, self._channel_view(self.iq_lo, y), self._channel_view(self.iq_hi, y))
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
        if self.acc_bound >= EXACT_FLOAT32:
            acc = ac.to(torch.float64).mul_(self.ia).add_(bc.to(torch.float64), alpha=self.ib).to(torch.float32)
        else:
            acc = ac.mul_(self.ia).add_(bc, alpha=self.ib)  # integers below 2^24: exact
        y = acc.mul_(_scalar(self.multiplier, acc.device)).round_()
        if self.lo.numel() == 1:
            y.clamp_(int(self.lo[0]) - self.zero_point, int(self.hi[0]) - self.zero_point)
        else:
            lo = (self.lo - self.zero_point).to(torch.float32)
            hi = (self.hi - self.zero_point).to(torch.float32)
            _clamp_inplace(y, _bounds_view(lo, y), _bounds_view(hi, y))
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
        if hw * max(abs(v) for v in self.x_range) < EXACT_FLOAT32:
            acc = xc.sum(dim=(2, 3))  # every partial sum is an integer below 2^24: exact
        else:
            acc = xc.to(torch.float64).sum(dim=(2, 3)).to(torch.float32)
        if self.y_scale is None:
            y = acc.mul_(_scalar(avgpool_float_scale(self.x_scale, hw), acc.device))
        else:
            y = acc.mul_(_scalar(avgpool_multiplier(self.x_scale, self.y_scale, hw), acc.device)).round_()
            y = y.clamp_(self.qmin - self.zero_point, self.qmax - self.zero_point)
            y = y.mul_(_scalar(self.y_scale, y.device))
        if self.keepdim:
            y = y.view(y.shape[0], y.shape[1], 1, 1)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def extra_repr(self) -> str:
        out = "float" if self.y_scale is None else f"zero_point={self.zero_point}, grid=[{self.qmin}, {self.qmax}]"
        return f"x_scale={self.x_scale:.6g}, keepdim={self.keepdim}, output: {out}"
