"""The small modules the passes put into a network (they need nothing but torch and the
quantization grid of :func:`dfq_gpu.formulas.quant_grid`).

- :class:`ChannelClamp`: ``clamp(x, lo[c], hi[c])`` with per-channel bounds. ReLU6 in
  ``relu6="clip"`` mode becomes one; equalization rescales its bounds with the channel, so
  the network computes exactly the same function.
- :class:`FakeQuant`: per-tensor uniform quantize-dequantize of activations;
  :func:`fake_quant_tensor` the same for any tensor with broadcast parameters.
- :data:`ELEMENTWISE` / :func:`elementwise_of_module`: the elementwise activations that an
  integer network computes by a table from input to output codes, by name.

The quantized layers (:class:`~dfq_gpu.modules.QConv2d`, ...) are in :mod:`dfq_gpu.modules`,
which re-exports these three names.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .formulas import quant_grid

__all__ = ["ChannelClamp", "FakeQuant", "fake_quant_tensor", "grid_values", "ELEMENTWISE", "elementwise_of_module"]


def _prelu(x: torch.Tensor, weight: float) -> torch.Tensor:
    return F.prelu(x, torch.tensor([float(weight)], dtype=x.dtype))


#: Elementwise activations by name: ``ELEMENTWISE[name](x, **kwargs)`` (the kwargs are numbers or
#: strings). An integer network maps each input code to an output code through a table built
#: with these (:class:`dfq_gpu.modules.QLookup`).
ELEMENTWISE: dict[str, Callable[..., torch.Tensor]] = {
    "hardswish": lambda x: F.hardswish(x),
    "hardsigmoid": lambda x: F.hardsigmoid(x),
    "silu": lambda x: F.silu(x),
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "leaky_relu": lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope),
    "elu": lambda x, alpha=1.0: F.elu(x, alpha),
    "mish": lambda x: F.mish(x),
    "softplus": lambda x, beta=1.0, threshold=20.0: F.softplus(x, beta, threshold),
    "relu": torch.relu,
    "relu6": lambda x: F.relu6(x),
    "hardtanh": lambda x, min_val=-1.0, max_val=1.0: F.hardtanh(x, min_val, max_val),
    "prelu": _prelu,
}

# module type -> (name in ELEMENTWISE, the module attributes that are its kwargs)
_ELEMENTWISE_MODULES: dict[type, tuple[str, tuple[str, ...]]] = {
    nn.Hardswish: ("hardswish", ()), nn.Hardsigmoid: ("hardsigmoid", ()), nn.SiLU: ("silu", ()),
    nn.Sigmoid: ("sigmoid", ()), nn.Tanh: ("tanh", ()), nn.GELU: ("gelu", ("approximate",)),
    nn.LeakyReLU: ("leaky_relu", ("negative_slope",)), nn.ELU: ("elu", ("alpha",)), nn.Mish: ("mish", ()),
    nn.Softplus: ("softplus", ("beta", "threshold")), nn.ReLU: ("relu", ()), nn.ReLU6: ("relu6", ()),
    nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
}


def elementwise_of_module(m: Optional[nn.Module]) -> Optional[tuple[str, dict[str, Any]]]:
    """``(name, kwargs)`` of :data:`ELEMENTWISE` that computes the module ``m``, else ``None``
    (a PReLU counts with one shared slope only)."""
    if m is None:
        return None
    if type(m) is nn.PReLU:
        return ("prelu", {"weight": float(m.weight.detach().reshape(-1)[0])}) if m.weight.numel() == 1 else None
    spec = _ELEMENTWISE_MODULES.get(type(m))
    if spec is None:
        return None
    return spec[0], {k: getattr(m, k) for k in spec[1]}


def _per_channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.dim() <= 1:
        return v
    shape = [1] * x.dim()
    shape[1] = -1
    return v.view(shape)


class ChannelClamp(nn.Module):
    """``clamp(x, lo[c], hi[c])`` along dimension 1 (the channel dimension).

    ``passthrough``: set by :func:`dfq_gpu.quant.simulate.make_integer_exact` when the step before
    it computes in integers with this clamp fused (its float32 output already lies within the
    bounds): a float32 input is then returned unchanged, without a pass over it.
    """

    passthrough: bool = False

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
        if self.passthrough and x.dtype == torch.float32:
            return x
        lo = _per_channel_view(self.lo.to(x.dtype), x)
        hi = _per_channel_view(self.hi.to(x.dtype), x)
        return torch.clamp(x, lo, hi)  # min(max(x, lo), hi) in one pass

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, lo=[{self.lo.min().item():.4g}, {self.lo.max().item():.4g}], "
                f"hi=[{self.hi.min().item():.4g}, {self.hi.max().item():.4g}]"
                + (", passthrough" if self.passthrough else ""))


def fake_quant_tensor(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                      qmax: int) -> torch.Tensor:
    """``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``, rounding half to even.

    ``scale``/``zero_point`` broadcast against ``x`` (per tensor: 0-d; per channel: shaped
    for broadcasting by the caller).
    """
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def grid_values(codes: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """The float32 values ``(q - zero_point) * scale`` of integer codes ``q``, computed exactly as
    :class:`FakeQuant` dequantizes (so they equal its outputs bit for bit)."""
    return (codes.to(torch.float32) - torch.tensor(float(zero_point))) * torch.tensor(float(scale),
                                                                                   dtype=torch.float32)


class FakeQuant(nn.Module):
    """Per-tensor activation quantizer: quantizes and dequantizes its input.

    ``scale`` / ``zero_point`` map the integer grid ``[qmin, qmax]`` to floats
    (``x = (q - zero_point) * scale``); ``bits``/``symmetric`` say which grid. ``enabled``
    turns it into the identity (used to measure what each quantizer costs).

    It computes in float32, as the integer network's quantize step does: a floating input of
    another dtype (float16, bfloat16, float64) is converted to float32 first, also when
    disabled, and the output is float32. The quantizer on the network input is therefore where
    a simulation turns any floating input into float32.

    ``passthrough``: set by :func:`dfq_gpu.quant.simulate.make_integer_exact` when the step before
    it computes in integers and writes its values on this quantizer's grid, ``(q - zero_point) *
    scale`` in float32, as this quantizer would: a float32 input is then returned unchanged,
    without the six passes over it that quantizing it again costs (the values are the same).
    """

    passthrough: bool = False

    def __init__(self, scale: float, zero_point: int, bits: int, symmetric: bool, source: str = "") -> None:
        super().__init__()
        self.bits = int(bits)
        self.symmetric = bool(symmetric)
        self.qmin, self.qmax = quant_grid(bits, symmetric)
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(float(zero_point), dtype=torch.float32))
        self.enabled = True
        self.source = source  # how the range was obtained ("bn", "calibrate", "example inputs", ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passthrough and x.dtype == torch.float32:
            return x
        if x.dtype != torch.float32 and x.is_floating_point():
            x = x.to(torch.float32)  # exact for float16/bfloat16; what QuantizeInput does too
        if not self.enabled:
            return x
        # x * (1 / scale) in float32, as the integer network's quantize op (and PyTorch's
        # fake_quantize_per_tensor_affine) computes it, so that both round identically.
        scale = self.scale.to(torch.float32)
        zp = self.zero_point.to(torch.float32)
        if x.requires_grad:
            q = torch.clamp(torch.round(x * torch.reciprocal(scale)) + zp, self.qmin, self.qmax)
            return (q - zp) * scale
        # the same operations on one new tensor (allocating a tensor per step costs more than the step)
        q = x * torch.reciprocal(scale)
        return q.round_().add_(zp).clamp_(self.qmin, self.qmax).sub_(zp).mul_(scale)

    @property
    def float_range(self) -> tuple[float, float]:
        s, z = float(self.scale), float(self.zero_point)
        return (self.qmin - z) * s, (self.qmax - z) * s

    def extra_repr(self) -> str:
        lo, hi = self.float_range
        return (f"bits={self.bits}, symmetric={self.symmetric}, scale={float(self.scale):.4g}, "
                f"zero_point={int(self.zero_point)}, range=[{lo:.4g}, {hi:.4g}]"
                + (", passthrough" if self.passthrough else ""))
