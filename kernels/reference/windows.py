"""Windowed average and max pooling with any kernel, stride, padding and ``ceil_mode``; adaptive
average pooling; nearest and bilinear upsampling."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .helpers import float32_value, INT8_MAX, INT8_MIN, Padding, Tensor
from .checks import (
    _check_bool_arg, check_int8_zero_point, _check_is_tensor, _check_scalar_bounds, _check_scale, check_tensor,
    _describe, normalize_padding, normalize_stride,
)
from .exact import EXACT_FLOAT32, requantize_centered
from .contract import _centered, _x_bound


def pool_output_size(
    n: int, k: int, pad_before: int, pad_after: int, stride: int, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Output length of a pooling window along one axis, as PyTorch computes it.

    ``(n + pad_before + pad_after - dilation (k - 1) - 1 [+ stride - 1 if ceil_mode]) // stride + 1``;
    in ceil mode the last window is dropped when it would start past the input and the leading
    padding (``(out - 1) stride >= n + pad_before``). Raises ValueError when no window fits.
    """
    span = dilation * (k - 1) + 1
    num = n + pad_before + pad_after - span
    if num < 0:
        raise ValueError(
            f"window {k} (dilation {dilation}) with padding ({pad_before}, {pad_after}) does not fit an input of {n}"
        )
    out = (num + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + pad_before:
        out -= 1
    return out


def _pool_window_args(x: Tensor, kernel_size, stride, padding, dilation, ceil_mode):
    """Shared window validation of the max and average pools: ``(ks, stride, pad, dil, ceil, oh, ow)``."""
    _check_is_tensor(x, "x")
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    ks = normalize_stride(kernel_size)
    stride = ks if stride is None else normalize_stride(stride)
    pad = normalize_padding(padding)
    dil = normalize_stride(dilation)
    ceil_mode = _check_bool_arg(ceil_mode, "ceil_mode")
    H, W = x.shape[1], x.shape[2]
    oh = pool_output_size(H, ks[0], pad[0], pad[1], stride[0], dil[0], ceil_mode)
    ow = pool_output_size(W, ks[1], pad[2], pad[3], stride[1], dil[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"window {ks} with padding {pad} does not fit an input of {H}x{W} (output {oh}x{ow})")
    if H * W * x.shape[3] >= 2**31:
        raise ValueError(f"one image of {H}x{W}x{x.shape[3]} int8 values exceeds the kernel's 2^31 index range")
    return ks, stride, pad, dil, ceil_mode, oh, ow


def avgpool2d_multipliers(x_scale: float, y_scale: float, n: int, device: Union[str, torch.device] = "cpu") -> Tensor:
    """float32 ``[n + 1]``: entry ``d`` (1 <= d <= n) is ``float32((s_x / s_y) / d)`` computed in
    float64 (the multiplier of a window sum with divisor ``d``); entry 0 is unused (0)."""
    s_x = _check_scale(x_scale, "x_scale")
    s_y = _check_scale(y_scale, "y_scale")
    vals = [0.0] + [float32_value((s_x / s_y) / d) for d in range(1, n + 1)]
    return torch.tensor(vals, dtype=torch.float32, device=device)


def check_avgpool2d_args(
    x: Tensor, kernel_size, stride, padding, ceil_mode, count_include_pad, z_x, x_scale, y_scale, z_y, lo, hi
):
    """Validate windowed-average-pool inputs.

    Returns ``(ks, stride, pad, ceil_mode, count_include_pad, oh, ow, z_x, s_x, s_y, z_y, lo, hi)``.
    ``stride=None`` means ``kernel_size`` (as in PyTorch); ``padding`` is ``p``, ``(ph, pw)`` or
    ``(top, bottom, left, right)``, each side at most half the window (PyTorch's condition).
    """
    ks, stride, pad, _, ceil_mode, oh, ow = _pool_window_args(x, kernel_size, stride, padding, 1, ceil_mode)
    if pad[0] > ks[0] // 2 or pad[1] > ks[0] // 2 or pad[2] > ks[1] // 2 or pad[3] > ks[1] // 2:
        raise ValueError(f"padding {pad} must be at most half the window {ks} on each side")
    count_include_pad = _check_bool_arg(count_include_pad, "count_include_pad")
    z_x = check_int8_zero_point(z_x, "z_x")
    z_y = check_int8_zero_point(z_y, "z_y")
    s_x = _check_scale(x_scale, "x_scale")
    s_y = _check_scale(y_scale, "y_scale")
    lo, hi = _check_scalar_bounds(lo, hi)
    return ks, stride, pad, ceil_mode, count_include_pad, oh, ow, z_x, s_x, s_y, z_y, lo, hi


def avgpool2d_divisors(
    n: int, out: int, k: int, stride: int, pad_before: int, pad_after: int, count_include_pad: bool,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:  # fmt: skip
    """int64 ``[out]``: the divisor factor of each window along one axis, as ``F.avg_pool2d`` counts.

    Window ``o`` starts at ``s = o stride - pad_before`` and ends at ``e = min(s + k, n + pad_after)``;
    it counts ``e - s`` taps with ``count_include_pad``, else ``min(e, n) - max(s, 0)``. The divisor of
    an output position is the product of its two axes' factors.
    """
    start = torch.arange(out, dtype=torch.int64, device=device) * stride - pad_before
    end = torch.clamp(start + k, max=n + pad_after)
    if count_include_pad:
        return end - start
    return torch.clamp(end, max=n) - torch.clamp(start, min=0)


def int8_avgpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None],
    padding: Padding,
    ceil_mode: bool,
    count_include_pad: bool,
    z_x: int,
    x_scale: float,
    y_scale: float,
    z_y: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
) -> Tensor:
    """Reference windowed average pool: x NHWC ``[B,H,W,C]`` -> NHWC ``[B,OH,OW,C]`` (``F.avg_pool2d``'s shape).

    ``acc = sum over the window's in-bounds taps of (x - z_x)`` (exact int32; padded taps add 0),
    ``d`` = the window's divisor as ``F.avg_pool2d`` counts it (``count_include_pad``, ``ceil_mode``,
    :func:`avgpool2d_divisors`), ``y = clamp(rne(float32(acc) * m_d) + z_y, lo, hi)`` with
    ``m_d = float32((s_x / s_y) / d)`` computed in float64 (:func:`avgpool2d_multipliers`).
    """
    ks, st, pad, _, cip, oh, ow, z_x, s_x, s_y, z_y, lo, hi = check_avgpool2d_args(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, z_x, x_scale, y_scale, z_y, lo, hi
    )
    xc = _centered(x, z_x, ()).permute(0, 3, 1, 2).contiguous()
    y = exact_window_average(xc, ks, st, pad, (oh, ow), cip, s_x, s_y, float(int(lo) - z_y), float(int(hi) - z_y),
                             _x_bound(z_x))
    return (y.permute(0, 2, 3, 1).to(torch.int32) + z_y).to(torch.int8).contiguous()


def _adaptive_window(o: int, n: int, out: int) -> Tuple[int, int]:
    """Start and end of window ``o`` of ``out`` adaptive windows along an axis of length ``n``:
    ``floor(o n / out) <= i < ceil((o + 1) n / out)``, as ``F.adaptive_avg_pool2d``."""
    return (o * n) // out, ((o + 1) * n + out - 1) // out


def adaptive_windows(n: int, out: int, device: Union[str, torch.device] = "cpu") -> Tuple[Tensor, Tensor]:
    """int64 ``[out]`` starts and ends of the adaptive windows along an axis of length ``n``
    (:func:`_adaptive_window`)."""
    bounds = torch.tensor([_adaptive_window(o, n, out) for o in range(out)], dtype=torch.int64, device=device)
    return bounds[:, 0], bounds[:, 1]


def adaptive_window_max(n: int, out: int) -> int:
    """The longest of the ``out`` adaptive windows along an axis of length ``n``."""
    return max(end - start for start, end in (_adaptive_window(o, n, out) for o in range(out)))


def normalize_adaptive_size(output_size) -> Tuple[Optional[int], Optional[int]]:
    """An adaptive pool's ``output_size`` (``s``, ``(s,)`` or ``(oh, ow)``, a ``None`` side keeping
    the input's size, as ``F.adaptive_avg_pool2d``) as a pair; ``ValueError`` for anything else or
    a side below 1."""
    if output_size is None or isinstance(output_size, (numbers.Integral, torch.SymInt)):
        sizes = (output_size, output_size)
    else:
        sizes = tuple(output_size)
        if len(sizes) == 1:
            sizes = (sizes[0], sizes[0])
    if len(sizes) != 2 or any(s is not None and (isinstance(s, bool) or not isinstance(s, numbers.Integral))
                              for s in sizes):
        raise ValueError(f"output_size must be an int or a pair of ints (None keeps the input size), "
                         f"got {output_size!r}")
    if any(s is not None and s < 1 for s in sizes):
        raise ValueError(f"output_size must be positive, got {output_size!r}")
    return tuple(None if s is None else int(s) for s in sizes)  # type: ignore[return-value]


def adaptive_output_size(x_hw: Tuple[int, int], output_size) -> Tuple[int, int]:
    """``(OH, OW)`` of an adaptive pool of an ``x_hw`` input (:func:`normalize_adaptive_size`)."""
    oh, ow = (int(x_hw[i]) if s is None else s for i, s in enumerate(normalize_adaptive_size(output_size)))
    return oh, ow


def check_adaptive_avgpool2d_args(x: Tensor, output_size, z_x, x_scale, y_scale, z_y, lo, hi):
    """Validate adaptive-average-pool inputs: ``(oh, ow, z_x, s_x, s_y, z_y, lo, hi)``."""
    _check_is_tensor(x, "x")
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    H, W = x.shape[1], x.shape[2]
    oh, ow = adaptive_output_size((H, W), output_size)
    if H < 1 or W < 1:
        raise ValueError(f"adaptive average pooling of an empty {H}x{W} input")
    if H * W * x.shape[3] >= 2**31:
        raise ValueError(f"one image of {H}x{W}x{x.shape[3]} int8 values exceeds the kernel's 2^31 index range")
    if adaptive_window_max(H, oh) * adaptive_window_max(W, ow) * 255 >= 2**31:
        raise ValueError(f"adaptive average pooling from {H}x{W} to {oh}x{ow}: a window sum may exceed int32")
    z_x = check_int8_zero_point(z_x, "z_x")
    z_y = check_int8_zero_point(z_y, "z_y")
    s_x = _check_scale(x_scale, "x_scale")
    s_y = _check_scale(y_scale, "y_scale")
    lo, hi = _check_scalar_bounds(lo, hi)
    return oh, ow, z_x, s_x, s_y, z_y, lo, hi


def int8_adaptive_avgpool2d(
    x: Tensor,
    output_size,
    z_x: int,
    x_scale: float,
    y_scale: float,
    z_y: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
) -> Tensor:
    """Reference adaptive average pool: x NHWC ``[B,H,W,C]`` -> NHWC ``[B,OH,OW,C]``
    (``F.adaptive_avg_pool2d``'s windows, :func:`adaptive_windows`).

    ``acc = sum over the window of (x - z_x)`` (exact int32), ``d`` the window's size,
    ``y = clamp(rne(float32(acc) * m_d) + z_y, lo, hi)`` with ``m_d = float32((s_x / s_y) / d)``
    computed in float64 (:func:`avgpool2d_multipliers`), as the windowed average pool.
    """
    oh, ow, z_x, s_x, s_y, z_y, lo, hi = check_adaptive_avgpool2d_args(x, output_size, z_x, x_scale, y_scale, z_y,
                                                                       lo, hi)
    xc = _centered(x, z_x, ()).permute(0, 3, 1, 2).contiguous()
    y = exact_adaptive_average(xc, (oh, ow), s_x, s_y, float(int(lo) - z_y), float(int(hi) - z_y))
    return (y.permute(0, 2, 3, 1).to(torch.int32) + z_y).to(torch.int8).contiguous()


@torch.no_grad()
def exact_adaptive_average(
    xc: Tensor, out_hw: Tuple[int, int], x_scale: float, y_scale: float, lo: float, hi: float
) -> Tensor:
    """The adaptive average pool of :func:`int8_adaptive_avgpool2d` on centered integers ``xc``
    (float32 NCHW), relative to the output zero point: ``clamp(rne(float32(acc) * m_d), lo, hi)``
    (float32 NCHW). The window sums come from a float64 summed-area table (exact: integers below
    2^53). Shared by the reference and the simulation's adaptive average pool."""
    oh, ow = out_hw
    H, W = xc.shape[2], xc.shape[3]
    dev = xc.device
    sh, eh = adaptive_windows(H, oh, dev)
    sw, ew = adaptive_windows(W, ow, dev)
    table = F.pad(xc.to(torch.float64).cumsum(2).cumsum(3), (1, 0, 1, 0))  # [B, C, H + 1, W + 1]
    rows_e, rows_s = table[:, :, eh], table[:, :, sh]
    acc = rows_e[..., ew] - rows_e[..., sw] - rows_s[..., ew] + rows_s[..., sw]
    m = adaptive_average_multipliers((H, W), out_hw, x_scale, y_scale, dev).reshape(1, 1, oh, ow)
    return requantize_centered(acc.to(torch.float32).contiguous(), m, lo, hi)


def adaptive_average_multipliers(
    hw: Tuple[int, int], out_hw: Tuple[int, int], x_scale: float, y_scale: float,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:  # fmt: skip
    """float32 ``[oh, ow]``: the multiplier ``float32((s_x / s_y) / d)`` of each adaptive window,
    ``d`` its size (:func:`adaptive_windows`)."""
    (H, W), (oh, ow) = hw, out_hw
    sh, eh = adaptive_windows(H, oh, device)
    sw, ew = adaptive_windows(W, ow, device)
    mult = avgpool2d_multipliers(x_scale, y_scale, adaptive_window_max(H, oh) * adaptive_window_max(W, ow), device)
    return mult[(eh - sh)[:, None] * (ew - sw)[None, :]]


def window_average_multipliers(
    hw: Tuple[int, int], out_hw: Tuple[int, int], ks: Tuple[int, int], st: Tuple[int, int],
    pad: Tuple[int, int, int, int], count_include_pad: bool, x_scale: float, y_scale: float,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:  # fmt: skip
    """float32 ``[oh, ow]``: the multiplier ``float32((s_x / s_y) / d)`` of each window of a
    windowed average pool, ``d`` its divisor (:func:`avgpool2d_divisors` of both axes)."""
    (H, W), (oh, ow) = hw, out_hw
    dh = avgpool2d_divisors(H, oh, ks[0], st[0], pad[0], pad[1], count_include_pad, device)
    dw = avgpool2d_divisors(W, ow, ks[1], st[1], pad[2], pad[3], count_include_pad, device)
    return avgpool2d_multipliers(x_scale, y_scale, ks[0] * ks[1], device)[dh[:, None] * dw[None, :]]


def pool_windows(n: int, out: int, k: int, stride: int, pad_before: int,
                 device: Union[str, torch.device] = "cpu") -> Tuple[Tensor, Tensor]:
    """int64 ``[out]`` starts and ends, within ``[0, n)``, of the windows of a windowed pool along
    one axis: window ``o`` covers ``o stride - pad_before <= i < o stride - pad_before + k``
    (padded and past-the-end taps excluded)."""
    start = torch.arange(out, dtype=torch.int64, device=device) * stride - pad_before
    return start.clamp(min=0), (start + k).clamp(max=n)


@torch.no_grad()
def exact_window_average(
    xc: Tensor,
    ks: Tuple[int, int],
    st: Tuple[int, int],
    pad: Tuple[int, int, int, int],
    out_hw: Tuple[int, int],
    count_include_pad: bool,
    x_scale: float,
    y_scale: float,
    lo: float,
    hi: float,
    x_bound: int,
) -> Tensor:
    """The windowed average pool of :func:`int8_avgpool2d` on centered integers ``xc`` (float32
    NCHW), relative to the output zero point: ``clamp(rne(float32(acc) * m_d), lo, hi)`` (float32
    NCHW), ``acc`` the exact window sum (padded taps add 0), ``m_d`` by the window's divisor. Shared
    by the reference and the simulation's windowed average pool."""
    oh, ow = out_hw
    H, W = xc.shape[2], xc.shape[3]
    extra_h = max(0, (oh - 1) * st[0] + ks[0] - (H + pad[0] + pad[1]))
    extra_w = max(0, (ow - 1) * st[1] + ks[1] - (W + pad[2] + pad[3]))
    exact32 = ks[0] * ks[1] * x_bound < EXACT_FLOAT32
    xp = F.pad(xc if exact32 else xc.to(torch.float64), (pad[2], pad[3] + extra_w, pad[0], pad[1] + extra_h))
    acc = F.avg_pool2d(xp, ks, st, divisor_override=1)[:, :, :oh, :ow].to(torch.float32)  # window sums, exact
    m = window_average_multipliers((H, W), out_hw, ks, st, pad, count_include_pad, x_scale, y_scale, xc.device)
    return requantize_centered(acc.contiguous(), m.reshape(1, 1, oh, ow), lo, hi)


def check_maxpool2d_args(x: Tensor, kernel_size, stride, padding, dilation=1, ceil_mode=False):
    """Validate max-pool inputs; returns ``(ks, stride, pad, dilation, ceil_mode, oh, ow)``.

    ``stride=None`` means ``kernel_size``; ``padding`` ``p``, ``(ph, pw)`` or ``(top, bottom, left,
    right)``, each side smaller than the window; the output size is ``F.max_pool2d``'s
    (:func:`pool_output_size`).
    """
    ks, st, pad, dil, ceil_mode, oh, ow = _pool_window_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    if pad[0] >= ks[0] or pad[1] >= ks[0] or pad[2] >= ks[1] or pad[3] >= ks[1]:
        raise ValueError(f"padding {pad} must be smaller than the window {ks} on each side")
    return ks, st, pad, dil, ceil_mode, oh, ow


def int8_maxpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None],
    padding: Padding = 0,
    dilation: Union[int, Sequence[int]] = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """Reference max pool on NHWC int8 -> NHWC ``[B,OH,OW,C]`` (``F.max_pool2d``'s output shape).

    Taps outside the input (padding, and windows running past the border in ``ceil_mode``) are
    ignored: they count as -128, below or equal to every real value. ``dilation`` spaces the taps.
    Scale and zero point pass through unchanged (max commutes with the monotone quantizer).
    """
    ks, st, pad, dil, _, oh, ow = check_maxpool2d_args(x, kernel_size, stride, padding, dilation, ceil_mode)
    H, W = x.shape[1], x.shape[2]
    extra_h = max(0, (oh - 1) * st[0] + dil[0] * (ks[0] - 1) + 1 - (H + pad[0] + pad[1]))
    extra_w = max(0, (ow - 1) * st[1] + dil[1] * (ks[1] - 1) + 1 - (W + pad[2] + pad[3]))
    xf = x.to(torch.float32).permute(0, 3, 1, 2)
    xf = F.pad(xf, (pad[2], pad[3] + extra_w, pad[0], pad[1] + extra_h), value=float(INT8_MIN))
    y = F.max_pool2d(xf, ks, st, dilation=dil)[:, :, :oh, :ow]
    return y.permute(0, 2, 3, 1).to(torch.int8).contiguous()


def check_upsample_args(x: Tensor, size=None, scale_factor=None):
    """Validate nearest-upsampling inputs; returns ``(oh, ow, (mode_h, scale_h), (mode_w, scale_w))``.

    Exactly one of ``size`` (``n`` or ``(oh, ow)``) and ``scale_factor`` (``s`` or ``(sh, sw)``,
    positive) is given. The output size is ``F.interpolate``'s: ``size``, or
    ``floor(float64(n) * s)``. Each axis has an index rule (:func:`upsample_nearest_indices`).
    """
    _check_is_tensor(x, "x")
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    H, W = x.shape[1], x.shape[2]
    if H < 1 or W < 1:
        raise ValueError(f"x must have H, W >= 1, got {_describe(x)}")
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size and scale_factor")
    if size is not None:
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            size = (int(size), int(size))
        size = tuple(size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in size):
            raise ValueError(f"size must be a positive int or a pair of positive ints, got {size}")
        out = (int(size[0]), int(size[1]))
        scales: Tuple[Optional[float], Optional[float]] = (None, None)
    else:
        if isinstance(scale_factor, numbers.Real) and not isinstance(scale_factor, bool):
            scale_factor = (scale_factor, scale_factor)
        sf = tuple(scale_factor)
        if len(sf) != 2:
            raise ValueError(f"scale_factor must be a positive float or a pair of them, got {scale_factor}")
        sf = tuple(_check_scale(v, "scale_factor") for v in sf)
        out = (math.floor(float(H) * sf[0]), math.floor(float(W) * sf[1]))
        if min(out) < 1:
            raise ValueError(f"scale_factor {sf} gives an empty output {out} for an input of {H}x{W}")
        scales = sf  # type: ignore[assignment]
    rule_h = _nearest_rule(H, out[0], scales[0])
    rule_w = _nearest_rule(W, out[1], scales[1])
    if out[0] * out[1] * x.shape[3] >= 2**31 or H * W * x.shape[3] >= 2**31:
        raise ValueError(f"an image of {out[0]}x{out[1]}x{x.shape[3]} values exceeds the kernel's 2^31 index range")
    return out[0], out[1], rule_h, rule_w


def _nearest_rule(n_in: int, n_out: int, scale: Optional[float]) -> Tuple[int, float]:
    """``(mode, s)``: mode 0 copies (``n_out == n_in``), 1 halves (``n_out == 2 n_in``), 2 uses the
    float32 factor ``s`` (``float32(1 / scale)``, else ``float32(n_in) / float32(n_out)``)."""
    if n_out == n_in:
        return 0, 1.0
    if n_out == 2 * n_in:
        return 1, 0.5
    if scale is not None:
        return 2, float32_value(1.0 / scale)
    return 2, float(np.float32(n_in) / np.float32(n_out))


def upsample_nearest_indices(
    n_in: int, n_out: int, rule: Tuple[int, float], device: Union[str, torch.device] = "cpu"
) -> Tensor:
    """int64 ``[n_out]`` source indices of nearest upsampling along one axis (PyTorch's CPU rule):
    ``o`` if ``n_out == n_in``, ``o // 2`` if ``n_out == 2 n_in``, else
    ``min(floor(float32(o) * s), n_in - 1)`` with one float32 multiply."""
    o = torch.arange(n_out, dtype=torch.int64, device=device)
    mode, s = rule
    if mode == 0:
        return o
    if mode == 1:
        return o // 2
    idx = torch.floor(o.to(torch.float32) * torch.tensor(s, dtype=torch.float32, device=device)).to(torch.int64)
    return torch.clamp(idx, max=n_in - 1)


def int8_upsample_nearest(
    x: Tensor,
    size: Union[int, Sequence[int], None] = None,
    scale_factor: Union[float, Sequence[float], None] = None,
) -> Tensor:
    """Reference nearest-neighbour upsampling of NHWC int8 -> NHWC ``[B, OH, OW, C]``, values unchanged.

    Output size and source indices are those of ``F.interpolate(mode="nearest")`` on the CPU
    (:func:`check_upsample_args`, :func:`upsample_nearest_indices`): ``size`` gives the factor
    ``float32(n_in) / float32(n_out)``, ``scale_factor`` the factor ``float32(1 / scale_factor)``;
    outputs as large as the input, or twice as large, copy or halve the index exactly.
    """
    oh, ow, rule_h, rule_w = check_upsample_args(x, size, scale_factor)
    ih = upsample_nearest_indices(x.shape[1], oh, rule_h, x.device)
    iw = upsample_nearest_indices(x.shape[2], ow, rule_w, x.device)
    return x[:, ih][:, :, iw].contiguous()


#: Fraction bits of the bilinear interpolation weights: ``w0 + w1 = 2^8`` per axis, so the
#: accumulator ``sum w_h w_w (x - z_x)`` stays within ``255 * 2^16 < 2^24`` and ``float32(acc)`` is exact.
BILINEAR_FRAC_BITS = 8


def bilinear_taps(n_in: int, n_out: int, align_corners: bool, scale: Optional[float] = None,
                  device: Union[str, torch.device] = "cpu") -> Tuple[Tensor, Tensor, Tensor]:
    """The taps of bilinear resampling along one axis: int64 ``[n_out]`` source indices
    ``i0 <= i1`` and the integer weight ``w1`` of ``i1`` (``w0 = 2^F - w1``, ``F =``
    :data:`BILINEAR_FRAC_BITS`).

    The source coordinate is ``F.interpolate(mode="bilinear")``'s, in float64:
    ``align_corners``: ``o (n_in - 1) / (n_out - 1)`` (0 when ``n_out == 1``); otherwise
    ``max((o + 0.5) r - 0.5, 0)`` with ``r = 1 / scale`` when a scale factor was given, else
    ``n_in / n_out``. ``i0 = min(floor(src), n_in - 1)``, ``i1 = min(i0 + 1, n_in - 1)``,
    ``w1 = rne((src - i0) 2^F)``.
    """
    i0, i1, w1 = _bilinear_taps_cpu(int(n_in), int(n_out), bool(align_corners), None if scale is None else float(scale))
    return i0.to(device), i1.to(device), w1.to(device)


@functools.lru_cache(maxsize=256)
def _bilinear_taps_cpu(n_in: int, n_out: int, align_corners: bool, scale: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`bilinear_taps` on the CPU, computed once per axis size (callers do not modify them)."""
    o = torch.arange(n_out, dtype=torch.float64)
    if align_corners:
        src = o * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        r = 1.0 / float(scale) if scale is not None else n_in / n_out
        src = ((o + 0.5) * r - 0.5).clamp_(min=0.0)
    i0 = src.floor().clamp_(max=n_in - 1)
    w1 = torch.round((src - i0) * (1 << BILINEAR_FRAC_BITS)).clamp_(0, 1 << BILINEAR_FRAC_BITS).to(torch.int64)
    i0 = i0.to(torch.int64)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, w1


def bilinear_accumulate(xc: Tensor, dims: Tuple[int, int], taps_h: Tuple[Tensor, Tensor, Tensor],
                        taps_w: Tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """The exact accumulator of bilinear resampling: ``sum_{a, b} wh_a ww_b xc[.., i_a, .., j_b, ..]``
    over the two taps of each axis (:func:`bilinear_taps`), on the integers ``xc = x - z_x``
    (int64, or float32/float64 holding integers) with its height and width along ``dims``;
    int64 result, ``|acc| <= max|xc| 2^(2F)``."""
    one = 1 << BILINEAR_FRAC_BITS
    x = xc.to(torch.int64)
    for dim, (i0, i1, w1) in zip(dims, (taps_h, taps_w)):
        shape = [1] * x.dim()
        shape[dim] = -1
        w1v = w1.to(x.device).view(shape)
        x = (one - w1v) * x.index_select(dim, i0.to(x.device)) + w1v * x.index_select(dim, i1.to(x.device))
    return x


def check_upsample_bilinear_args(x: Tensor, size, scale_factor, align_corners: bool, z_x: int, multiplier: float,
                                 z_y: int, lo: int, hi: int):
    """Validate bilinear-resampling inputs (sizes as :func:`check_upsample_args`); returns ``(oh,
    ow, scale_h, scale_w, z_x, m, z_y, lo, hi)``, the scale factors ``None`` when ``size`` was
    given and ``m`` the multiplier's float32 value."""
    oh, ow, _, _ = check_upsample_args(x, size, scale_factor)
    if not isinstance(align_corners, bool):
        raise ValueError(f"align_corners must be a bool, got {align_corners!r}")
    z_x = check_int8_zero_point(z_x, "z_x")
    z_y = check_int8_zero_point(z_y, "z_y")
    m = float32_value(_check_scale(multiplier, "multiplier"))
    lo, hi = _check_scalar_bounds(lo, hi)
    sh = sw = None
    if scale_factor is not None:
        sf = (scale_factor, scale_factor) if isinstance(scale_factor, numbers.Real) else tuple(scale_factor)
        sh, sw = float(sf[0]), float(sf[1])
    return oh, ow, sh, sw, z_x, m, z_y, lo, hi


def int8_upsample_bilinear(
    x: Tensor,
    size: Union[int, Sequence[int], None],
    scale_factor: Union[float, Sequence[float], None],
    align_corners: bool,
    z_x: int,
    multiplier: float,
    z_y: int,
    lo: int = INT8_MIN,
    hi: int = INT8_MAX,
) -> Tensor:
    """Reference bilinear resampling of NHWC int8 -> NHWC ``[B, OH, OW, C]`` int8 (any output size).

    ``acc = sum_{a, b} wh_a ww_b (x[i_a, j_b] - z_x)`` exactly (:func:`bilinear_taps`: the two
    source rows and columns of ``F.interpolate(mode="bilinear", align_corners=...)`` and weights
    in steps of ``2^-8`` summing to ``2^8``), then :func:`requantize`'s
    ``clamp(rne(float32(acc) * m) + z_y, lo, hi)`` with ``m = float32((s_x / s_y) / 2^16)``
    computed by the caller. Output size as :func:`check_upsample_args`.
    """
    oh, ow, sh, sw, z_x, m, z_y, lo, hi = check_upsample_bilinear_args(x, size, scale_factor, align_corners, z_x,
                                                                      multiplier, z_y, lo, hi)
    th = bilinear_taps(x.shape[1], oh, align_corners, sh, x.device)
    tw = bilinear_taps(x.shape[2], ow, align_corners, sw, x.device)
    acc = bilinear_accumulate(x.to(torch.int64) - z_x, (1, 2), th, tw).to(torch.float32)
    y = requantize_centered(acc, m, lo - z_y, hi - z_y)
    return (y + z_y).to(torch.int8)
