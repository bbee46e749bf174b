"""Table lookup (activations with no closed integer form) and the gating multiply (squeeze and
excitation)."""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from .helpers import float32_reciprocal, float32_value, INT8_MAX, INT8_MIN, Tensor
from .checks import (
    _check_device, check_int8_zero_point, _check_int_arg, _check_is_tensor, _check_scalar_bounds,
    _check_scalar_multiplier, _check_scale, check_tensor, _describe,
)
from .exact import exact_product
from .contract import _centered, requantize, _x_bound


#: Entries of an int8 lookup table: one per int8 value, ``table[q + 128]``.
LUT_SIZE = 256


def check_lut_args(x: Tensor, table: Tensor, out: Optional[Tensor] = None, channel_offset: int = 0) -> int:
    """Validate table-lookup inputs; returns ``channel_offset`` as an int.

    ``x``: int8, contiguous, any rank; ``table``: int8 ``[256]``, or ``[C, 256]`` with ``C`` the
    size of ``x``'s last dimension (one table per channel of an NHWC tensor), contiguous on
    ``x``'s device. With ``out``: ``x`` is NHWC ``[B, H, W, C]``, ``out`` int8 NHWC ``[B, H, W, C_out]`` on the
    same device and ``0 <= channel_offset``, ``channel_offset + C <= C_out``.
    """
    _check_is_tensor(x, "x")
    _check_is_tensor(table, "table")
    check_tensor(x, "x", torch.int8, x.dim())
    if table.dim() == 2:
        check_tensor(table, "table", torch.int8, 2, f"[C, {LUT_SIZE}]")
        if x.dim() == 0 or table.shape != (x.shape[-1], LUT_SIZE):
            raise ValueError(f"a per-channel table must be [C, {LUT_SIZE}] with C = x.shape[-1] = "
                             f"{x.shape[-1] if x.dim() else None}, got {tuple(table.shape)}")
    else:
        check_tensor(table, "table", torch.int8, 1, f"[{LUT_SIZE}] or [C, {LUT_SIZE}]")
        if table.numel() != LUT_SIZE:
            raise ValueError(f"table must have {LUT_SIZE} entries (table[q + 128] for q in [-128, 127]), "
                             f"got {table.numel()}")
    _check_device(table, x.device, "table")
    offset = _check_int_arg(channel_offset, "channel_offset", 0)
    if out is None:
        if offset != 0:
            raise ValueError(f"channel_offset={offset} needs an out tensor")
        return 0
    _check_is_tensor(out, "out")
    check_tensor(out, "out", torch.int8, 4, "NHWC [B, H, W, C_out]")
    if x.dim() != 4:
        raise ValueError(f"with out, x must be NHWC [B, H, W, C], got {_describe(x)}")
    _check_device(out, x.device, "out")
    if tuple(out.shape[:3]) != tuple(x.shape[:3]):
        raise ValueError(
            f"out [B, H, W, C_out] = {tuple(out.shape)} must match x [B, H, W, C] = {tuple(x.shape)} in B, H, W"
        )
    if offset + x.shape[3] > out.shape[3]:
        raise ValueError(
            f"channels [{offset}, {offset + x.shape[3]}) of x do not fit out, which has C_out={out.shape[3]}"
        )
    return offset


def int8_lut(x: Tensor, table: Tensor, out: Optional[Tensor] = None, channel_offset: int = 0) -> Tensor:
    """Reference table lookup: ``y = table[x + 128]`` elementwise (int8, any rank, same shape);
    with a per-channel table ``[C, 256]``, ``y[..., c] = table[c, x[..., c] + 128]``.

    With ``out`` (int8 NHWC ``[B, H, W, C_out]``, ``x`` ``[B, H, W, C]``) the result is written into
    channels ``[channel_offset, channel_offset + C)`` of ``out`` in place and ``out`` is returned
    (a channel concatenation: each input mapped by its own table into its slice). Build tables
    with :func:`lut_from_function`.
    """
    offset = check_lut_args(x, table, out, channel_offset)
    idx = x.to(torch.int64) + 128
    if table.dim() == 2:  # per channel: row c of the table for the last dimension's index c
        idx = idx + torch.arange(x.shape[-1], device=x.device, dtype=torch.int64) * LUT_SIZE
    y = table.reshape(-1)[idx]
    if out is None:
        return y
    out[..., offset : offset + x.shape[3]] = y
    return out


def lut_from_function(
    fn,
    x_scale: float,
    x_zero_point: int,
    y_scale: float,
    y_zero_point: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:
    """The int8 ``[256]`` table of ``fn`` between two quantizations, as a float simulation computes it.

    For every ``q`` in [-128, 127]: ``v = float32(q - z_x) * float32(s_x)`` (:func:`dequantize`),
    ``f = fn(v)`` (``fn`` maps a float32 tensor of 256 values to a tensor of 256 values, converted
    to float32), then :func:`quantize`'s ``clamp(rne(f * (1.0f / float32(s_y))) + z_y, lo, hi)``
    with the float32 reciprocal of :func:`float32_reciprocal`. Entry ``q + 128`` is the output for
    input ``q``; pass the table to :func:`int8_lut`. ``fn`` must not return NaN (infinities
    saturate to the bounds). With ``fn`` the identity this is a requantization from ``(s_x, z_x)``
    to ``(s_y, z_y)``.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    s_x = _check_scale(x_scale, "x_scale")
    s_y = _check_scale(y_scale, "y_scale")
    z_x = check_int8_zero_point(x_zero_point, "x_zero_point")
    z_y = check_int8_zero_point(y_zero_point, "y_zero_point")
    lo, hi = _check_scalar_bounds(lo, hi)
    inv = float32_reciprocal(s_y)
    if not math.isfinite(inv) or inv == 0.0:
        raise ValueError(f"1/y_scale for y_scale={y_scale} is not a finite nonzero float32")
    q = torch.arange(INT8_MIN, INT8_MAX + 1, dtype=torch.int32, device=device)
    v = (q - z_x).to(torch.float32) * float32_value(s_x)
    f = fn(v)
    if not isinstance(f, Tensor) or f.shape != v.shape or not f.is_floating_point():
        got = _describe(f) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"fn must return a floating-point tensor of shape ({LUT_SIZE},), got {got}")
    f = f.to(device=v.device, dtype=torch.float32)
    if bool(torch.isnan(f).any()):
        raise ValueError("fn returned NaN for some input value; the table needs a number for every int8 input")
    y = f * inv
    y = torch.clamp(y, min=float(lo - z_y - 1), max=float(hi - z_y + 1))
    t = torch.round(y).to(torch.int32) + z_y
    return torch.clamp(t, lo, hi).to(torch.int8)


def check_mul_args(x: Tensor, g: Tensor, z_x, z_g, multiplier, z_y, lo, hi):
    """Validate gating-multiply inputs; returns ``(z_x, z_g, m, z_y, lo, hi, per_channel)``.

    ``x`` int8 NHWC ``[B, H, W, C]``; ``g`` int8 ``[B, C]`` (``per_channel``: one gate per image and
    channel) or of ``x``'s shape (elementwise), contiguous, on ``x``'s device.
    """
    _check_is_tensor(x, "x")
    _check_is_tensor(g, "g")
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    check_tensor(g, "g", torch.int8, g.dim())
    B, _, _, C = x.shape
    if tuple(g.shape) == tuple(x.shape):
        per_channel = False
    elif tuple(g.shape) == (B, C):
        per_channel = True
    else:
        raise ValueError(
            f"g must be [B, C] = {(B, C)} (one gate per image and channel) or have x's shape "
            f"{tuple(x.shape)}, got {tuple(g.shape)}"
        )
    _check_device(g, x.device, "g")
    z_x = check_int8_zero_point(z_x, "z_x")
    z_g = check_int8_zero_point(z_g, "z_g")
    z_y = check_int8_zero_point(z_y, "z_y")
    lo, hi = _check_scalar_bounds(lo, hi)
    return z_x, z_g, _check_scalar_multiplier(multiplier), z_y, lo, hi, per_channel


def _scalar_epilogue(m: float, lo: int, hi: int, device: torch.device) -> Tuple[Tensor, Tensor, Tensor]:
    return (
        torch.tensor([m], dtype=torch.float32, device=device),
        torch.tensor([lo], dtype=torch.int32, device=device),
        torch.tensor([hi], dtype=torch.int32, device=device),
    )


def int8_mul(
    x: Tensor,
    g: Tensor,
    z_x: int,
    z_g: int,
    multiplier: float,
    z_y: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
) -> Tensor:
    """Reference gating multiply (squeeze-excitation): x NHWC ``[B,H,W,C]`` times ``g`` -> NHWC int8.

    ``g`` is ``[B, C]`` (broadcast over H and W) or of ``x``'s shape. ``acc = (x - z_x)(g - z_g)``
    exactly in int32 (``|acc| <= 255^2``), then :func:`requantize` with the per-tensor
    ``multiplier`` (``s_x s_g / s_y``, used as its float32 value) and bounds.
    """
    z_x, z_g, m, z_y, lo, hi, per_channel = check_mul_args(x, g, z_x, z_g, multiplier, z_y, lo, hi)
    gc = _centered(g, z_g, ())
    if per_channel:
        gc = gc[:, None, None, :]
    acc = exact_product(_centered(x, z_x, ()), gc, _x_bound(z_x) * _x_bound(z_g))
    m_t, lo_t, hi_t = _scalar_epilogue(m, lo, hi, x.device)
    return requantize(acc, m_t, z_y, lo_t, hi_t)
