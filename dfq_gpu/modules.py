"""The few modules the passes put into a network.

- :class:`ChannelClamp`: ``clamp(x, lo[c], hi[c])`` with per-channel bounds. ReLU6 in
  ``relu6="clip"`` mode becomes one; equalization rescales its bounds with the channel, so
  the network computes exactly the same function.
- :class:`FakeQuant`: per-tensor uniform quantize-dequantize of activations.
- :class:`QConv2d` / :class:`QLinear`: convolution / linear layers whose ``weight`` holds the
  quantize-dequantized weights and which remember their integer quantization parameters,
  so that an integer network can be built from them (``dfq_gpu.to_int8``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ChannelClamp", "FakeQuant", "QConv2d", "QLinear", "fake_quant_tensor"]


def _per_channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.dim() <= 1:
        return v
    shape = [1] * x.dim()
    shape[1] = -1
    return v.view(shape)


class ChannelClamp(nn.Module):
    """``clamp(x, lo[c], hi[c])`` along dimension 1 (the channel dimension)."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        super().__init__()
        if lo.shape != hi.shape or lo.dim() != 1:
            raise ValueError(f"ChannelClamp: lo and hi must be 1-D of the same length, got {tuple(lo.shape)} "
                             f"and {tuple(hi.shape)}")
        self.register_buffer("lo", lo.clone())
        self.register_buffer("hi", hi.clone())

    @classmethod
    def constant(cls, lo: float, hi: float, channels: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> "ChannelClamp":
        return cls(torch.full((channels,), float(lo), dtype=dtype, device=device),
                   torch.full((channels,), float(hi), dtype=dtype, device=device))

    @property
    def channels(self) -> int:
        return self.lo.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo = _per_channel_view(self.lo.to(x.dtype), x)
        hi = _per_channel_view(self.hi.to(x.dtype), x)
        return torch.minimum(torch.maximum(x, lo), hi)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, lo=[{self.lo.min().item():.4g}, {self.lo.max().item():.4g}], "
                f"hi=[{self.hi.min().item():.4g}, {self.hi.max().item():.4g}]")


def fake_quant_tensor(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                      qmax: int) -> torch.Tensor:
    """``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``, rounding half to even.

    ``scale``/``zero_point`` broadcast against ``x`` (per tensor: 0-d; per channel: shaped
    for broadcasting by the caller).
    """
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


class FakeQuant(nn.Module):
    """Per-tensor activation quantizer: quantizes and dequantizes its input.

    ``scale`` / ``zero_point`` map the integer grid ``[qmin, qmax]`` to floats
    (``x = (q - zero_point) * scale``); ``bits``/``symmetric`` say which grid. ``enabled``
    turns it into the identity (used to measure what each quantizer costs).
    """

    def __init__(self, scale: float, zero_point: int, bits: int, symmetric: bool, source: str = "") -> None:
        super().__init__()
        self.bits = int(bits)
        self.symmetric = bool(symmetric)
        if symmetric:
            self.qmin, self.qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2**bits - 1
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(float(zero_point), dtype=torch.float32))
        self.enabled = True
        self.source = source  # how the range was obtained ("bn", "calibrate", "example inputs", ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        # x * (1 / scale) in x's dtype, as the integer network's quantize op (and PyTorch's
        # fake_quantize_per_tensor_affine) computes it, so that both round identically.
        scale = self.scale.to(x.dtype)
        q = torch.clamp(torch.round(x * torch.reciprocal(scale)) + self.zero_point.to(x.dtype), self.qmin, self.qmax)
        return (q - self.zero_point.to(x.dtype)) * scale

    @property
    def float_range(self) -> tuple[float, float]:
        s, z = float(self.scale), float(self.zero_point)
        return (self.qmin - z) * s, (self.qmax - z) * s

    def extra_repr(self) -> str:
        lo, hi = self.float_range
        return (f"bits={self.bits}, symmetric={self.symmetric}, scale={float(self.scale):.4g}, "
                f"zero_point={int(self.zero_point)}, range=[{lo:.4g}, {hi:.4g}]")


class _QuantLayerMixin:
    """Quantization parameters shared by :class:`QConv2d` and :class:`QLinear`.

    ``weight`` holds the dequantized weights ``(q - w_zero_point) * w_scale``; ``w_scale`` and
    ``w_zero_point`` have one entry (per tensor) or one per output channel; integer weights
    are recovered exactly by :meth:`integer_weight`.
    """

    w_scale: torch.Tensor
    w_zero_point: torch.Tensor
    w_bits: int
    w_symmetric: bool
    weight: torch.Tensor

    def _init_quant(self, w_scale: torch.Tensor, w_zero_point: torch.Tensor, bits: int, symmetric: bool) -> None:
        self.register_buffer("w_scale", w_scale.detach().to(torch.float64).clone())  # type: ignore[attr-defined]
        self.register_buffer("w_zero_point", w_zero_point.detach().to(torch.int64).clone())  # type: ignore[attr-defined]
        self.w_bits = int(bits)
        self.w_symmetric = bool(symmetric)

    def _bcast(self, v: torch.Tensor) -> torch.Tensor:
        shape = [-1] + [1] * (self.weight.dim() - 1)
        return v.view(shape) if v.numel() > 1 else v.reshape(())

    def integer_weight(self) -> torch.Tensor:
        """The integer weights ``q`` (int64), exactly as quantized."""
        s = self._bcast(self.w_scale)
        z = self._bcast(self.w_zero_point)
        return torch.round(self.weight.detach().to(torch.float64) / s).to(torch.int64) + z


class QConv2d(nn.Conv2d, _QuantLayerMixin):
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


class QLinear(nn.Linear, _QuantLayerMixin):
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
