"""The integer parameters of every requantization step: the one definition shared by the
simulation (:func:`dfq_gpu.quant.simulate.make_integer_exact`) and the int8 converter
(:func:`dfq_gpu.to_int8`), both through the fusion plan (:func:`dfq_gpu.quant.plan.build_plan`).

Every function here works on the quantizers' own integer grids: an activation quantizer maps
the integers ``[qmin, qmax]`` with zero point ``z`` to ``(q - z) * scale``
(:class:`~dfq_gpu.nn.FakeQuant`). The int8 converter stores asymmetric grids shifted by
128 (``[0, 255]`` becomes ``[-128, 127]``), which moves zero points and clamp bounds by the
same amount and changes no arithmetic.

A quantized layer with input quantizer ``(s_x, z_x)``, integer weights ``w`` with scale and
zero point ``(s_w, z_w)`` (per tensor or per output channel), float bias ``b``, output
quantizer ``(s_y, z_y)`` and a fused clamp activation ``[lo_f, hi_f]`` computes::

    acc = sum_k (x_k - z_x)(w_k - z_w) + bias_q            exact, int32
    y   = clamp(rne(float32(acc) * m) + z_y, lo_q, hi_q)    on the output grid

with (:func:`layer_requant`)

* ``step = s_x * s_w`` (float64): the grid of the accumulator;
* ``bias_q = clamp(round(b / step), -2^31, 2^31 - 1)`` (:func:`integer_bias`);
* ``m = float32(step / s_y)`` (:func:`requant_multiplier`);
* ``lo_q, hi_q``: the bounds quantized by the output quantizer with its own float32 arithmetic,
  ``clamp(round(float32(b) * (1 / s_y)) + z_y, qmin, qmax)`` (:func:`quantized_bounds`), so a
  value clamped to a bound and then quantized gives the same integer as the quantized value
  clamped to the quantized bound;
* without an output quantizer (the network output) the layer returns
  ``float32(acc) * float32(step)`` (:func:`float_output_scale`).

A residual add computes ``acc = (a - z_a) ia + (b - z_b) ib`` with the integer multipliers of
:func:`add_multipliers` and the same epilogue; a global average pool ``acc = sum_hw (x - z_x)``
with ``m = float32((s_x / s_y) / (H W))`` (:func:`avgpool_multiplier`), or, as a float output,
``float32(acc) * float32(s_x / (H W))`` (:func:`avgpool_float_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional

import torch
import torch.nn as nn

from kernels import reference as kref

from ..graph.ops import is_clamp_act
from ..nn import ChannelClamp

__all__ = [
    "INT32_MIN",
    "INT32_MAX",
    "Grid",
    "LayerRequant",
    "AddRequant",
    "accumulator_step",
    "integer_bias",
    "requant_multiplier",
    "float_output_scale",
    "act_float_bounds",
    "quantized_bounds",
    "layer_requant",
    "layer_accumulator_bound",
    "add_multipliers",
    "add_requant",
    "avgpool_multiplier",
    "avgpool_float_scale",
]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class Grid:
    """A per-tensor activation quantizer: ``x = (q - zero_point) * scale``, ``q`` in ``[qmin, qmax]``.

    ``scale`` is the float32 value of the quantizer's scale (as a Python float).
    """

    scale: float
    zero_point: int
    qmin: int
    qmax: int

    @classmethod
    def of(cls, fq: Any) -> "Grid":
        """The grid of a :class:`~dfq_gpu.nn.FakeQuant`."""
        return cls(float(fq.scale), int(round(float(fq.zero_point))), int(fq.qmin), int(fq.qmax))

    @property
    def max_abs(self) -> int:
        """The largest ``|q - zero_point|`` on the grid."""
        return max(self.qmax - self.zero_point, self.zero_point - self.qmin)


@dataclass(frozen=True)
class LayerRequant:
    """The integer parameters of a conv / linear layer (grid domain, see the module docstring).

    ``bias``: int64 ``[N]``. With an output quantizer: ``multiplier`` float32 ``[1|N]``,
    ``zero_point`` and the int64 bounds ``lo``/``hi`` ``[1|N]`` (activation fused), and
    ``float_scale`` is ``None``. Without one (float output): ``float_scale`` float32 ``[1|N]``
    and the others ``None``.
    """

    bias: torch.Tensor
    multiplier: Optional[torch.Tensor]
    zero_point: Optional[int]
    lo: Optional[torch.Tensor]
    hi: Optional[torch.Tensor]
    float_scale: Optional[torch.Tensor]


@dataclass(frozen=True)
class AddRequant:
    """The integer parameters of a residual add: ``ia``, ``ib``, the float32 multiplier (as a
    Python float), and the int64 bounds ``lo``/``hi`` ``[1|C]`` on the output grid."""

    ia: int
    ib: int
    multiplier: float
    lo: torch.Tensor
    hi: torch.Tensor


# =============================================================================================
# Layers
# =============================================================================================
def accumulator_step(s_x: float, w_scale: torch.Tensor) -> torch.Tensor:
    """``s_x * s_w`` in float64, ``[1|N]``: the real value of one accumulator unit."""
    return float(s_x) * w_scale.detach().to(torch.float64).cpu().reshape(-1)


def integer_bias(bias: Optional[torch.Tensor], step: torch.Tensor, n: int) -> torch.Tensor:
    """The int32 bias (as int64 ``[N]``): ``clamp(round(bias / step), -2^31, 2^31 - 1)``.

    The simulation rounds its biases to this grid (:func:`dfq_gpu.quant.simulate.round_biases`),
    so this recovers its integers exactly while they are below 2^24 grid steps (the float32
    bias holds them exactly).
    """
    b = torch.zeros(n, dtype=torch.float64) if bias is None else bias.detach().to(torch.float64).cpu().reshape(-1)
    return torch.clamp(torch.round(b / step), INT32_MIN, INT32_MAX).to(torch.int64)


def requant_multiplier(step: torch.Tensor, s_y: float) -> torch.Tensor:
    """``float32(s_x s_w / s_y)``, ``[1|N]``."""
    return (step / float(s_y)).to(torch.float32)


def float_output_scale(step: torch.Tensor) -> torch.Tensor:
    """``float32(s_x s_w)``, ``[1|N]``: the float output of a layer is ``float32(acc) * this``."""
    return step.to(torch.float32)


def act_float_bounds(act: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 bounds ``[1]`` or ``[channels]`` of a fusable clamp activation (ReLU, ReLU6,
    Hardtanh, :class:`~dfq_gpu.nn.ChannelClamp`); ``ValueError`` for anything else."""
    if isinstance(act, ChannelClamp):
        if act.channels != channels:
            raise ValueError(f"it clamps {act.channels} channels but its input has {channels}")
        return act.lo.detach().to(torch.float32).cpu(), act.hi.detach().to(torch.float32).cpu()
    bounds = is_clamp_act(act)
    if bounds is None:
        raise ValueError(f"cannot fuse {type(act).__name__}")
    lo, hi = bounds
    return torch.tensor([lo], dtype=torch.float32), torch.tensor([hi], dtype=torch.float32)


def quantized_bounds(y: Grid, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer bounds (int64, grid domain) of a fused clamp: the output quantizer applied to the
    float bounds with the quantizer's own float32 arithmetic (``+-inf`` become the grid ends)."""
    scale = torch.tensor(y.scale, dtype=torch.float32)
    inv = torch.reciprocal(scale)
    zp = torch.tensor(float(y.zero_point), dtype=torch.float32)

    def q(b: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(b.to(torch.float32) * inv) + zp, y.qmin, y.qmax).to(torch.int64)

    return q(lo), q(hi)


def layer_requant(x: Grid, w_scale: torch.Tensor, bias: Optional[torch.Tensor], n_out: int, y: Optional[Grid],
                  act: Optional[nn.Module] = None) -> LayerRequant:
    """The integer parameters of a quantized layer (see the module docstring).

    Args:
        x: the input quantizer's grid.
        w_scale: weight scale ``[1|N]``.
        bias: the (float) bias ``[N]`` or ``None``.
        n_out: number of output channels ``N``.
        y: the output quantizer's grid, or ``None`` for a float output.
        act: the fused activation (with an output quantizer only), or ``None``.
    """
    step = accumulator_step(x.scale, w_scale)
    bias_q = integer_bias(bias, step, n_out)
    if y is None:
        return LayerRequant(bias_q, None, None, None, None, float_output_scale(step))
    if act is None:
        lo, hi = torch.tensor([y.qmin], dtype=torch.int64), torch.tensor([y.qmax], dtype=torch.int64)
    else:
        lo, hi = quantized_bounds(y, *act_float_bounds(act, n_out))
    return LayerRequant(bias_q, requant_multiplier(step, y.scale), y.zero_point, lo, hi, None)


def layer_accumulator_bound(w_centered: torch.Tensor, x: Grid, bias_q: torch.Tensor) -> int:
    """An upper bound of ``|acc|`` over all inputs on the grid ``x``:
    ``max_n (max|x - z_x| * sum_k |w_nk - z_w| + |bias_n|)``.

    ``w_centered`` is ``w - z_w`` with the output channel first.
    """
    n = w_centered.shape[0]
    s = w_centered.detach().to(torch.float64).abs().reshape(n, -1).sum(1)
    b = bias_q.detach().to(torch.float64).abs().reshape(-1)
    return int(math.ceil(float((x.max_abs * s + b).max())))


# =============================================================================================
# Residual adds
# =============================================================================================
def add_multipliers(s_a: float, s_b: float, s_y: float) -> tuple[int, int, float]:
    """Integer multipliers ``(ia, ib, m)`` of ``int8_add`` for ``y = ((a - z_a) s_a + (b - z_b) s_b) / s_y``.

    Only the ratio ``ia / ib`` has to match ``s_a / s_b``: it is the best rational approximation
    with numerator and denominator at most ``2^15`` (continued fractions), and
    ``m = float32(s_max / (max(ia, ib) s_y))``. This satisfies the kernel's limits
    (``|ia|, |ib| <= 2^15``, so ``|acc| < 2^24`` is exact in float32) like
    ``kernels.add_multipliers``, whose rounding of both multipliers to 15 bits leaves a relative
    error of up to ``2^-16``; the best approximation's error is at most ``2^-16`` too (neighbouring
    fractions ``a/b < c/d`` with denominators up to ``N = 2^15`` are ``1/(bd) <= 1/N`` apart), and
    the value before rounding is otherwise off only by float32 rounding of ``m`` and of the product.
    """
    s_max, s_min = max(s_a, s_b), min(s_a, s_b)
    ratio = Fraction(s_min / s_max).limit_denominator(kref.ADD_MAX_MULTIPLIER)
    p, q = ratio.numerator, ratio.denominator
    if p == 0:  # a ratio below 2^-16: keep the kernels' multipliers
        return kref.add_multipliers(s_a, s_b, s_y)
    ia, ib = (q, p) if s_a >= s_b else (p, q)
    return ia, ib, kref.float32_value(s_max / (q * s_y))


def add_requant(a: Grid, b: Grid, y: Grid, act: Optional[nn.Module], channels: int) -> AddRequant:
    """The integer parameters of a residual add ``a + b`` [+ fused clamp activation] quantized by ``y``."""
    ia, ib, m = add_multipliers(a.scale, b.scale, y.scale)
    if act is None:
        lo, hi = torch.tensor([y.qmin], dtype=torch.int64), torch.tensor([y.qmax], dtype=torch.int64)
    else:
        lo, hi = quantized_bounds(y, *act_float_bounds(act, channels))
    return AddRequant(ia, ib, m, lo, hi)


# =============================================================================================
# Global average pooling
# =============================================================================================
def mul_multiplier(s_a: float, s_b: float, s_y: float) -> float:
    """``float32(s_a s_b / s_y)`` (as a Python float): the multiplier of ``(a - z_a)(b - z_b)``."""
    return kref.float32_value(float(s_a) * float(s_b) / float(s_y))


def avgpool_multiplier(s_x: float, s_y: float, hw: int) -> float:
    """``float32((s_x / s_y) / hw)`` (as a Python float): the multiplier of ``sum_hw (x - z_x)``."""
    return kref.float32_value((float(s_x) / float(s_y)) / int(hw))


def bilinear_multiplier(s_x: float, s_y: float) -> float:
    """``float32((s_x / s_y) / 2^(2F))`` (``F =`` :data:`kernels.reference.BILINEAR_FRAC_BITS`): the
    multiplier of bilinear resampling's accumulator ``sum wh ww (x - z_x)``, whose weights sum to
    ``2^(2F)``."""
    return kref.float32_value((float(s_x) / float(s_y)) / (1 << (2 * kref.BILINEAR_FRAC_BITS)))


def avgpool_float_scale(s_x: float, hw: int) -> float:
    """``float32(s_x / hw)``: a global average pool whose result is the float network output is
    ``float32(sum_hw (x - z_x)) * this``."""
    return kref.float32_value(float(s_x) / int(hw))
