"""Validation and normalization of the contract's arguments (shared with the Triton launchers):
every bad input raises ``ValueError`` naming the argument and what it should be."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch

from .helpers import ADD_MAX_MULTIPLIER, float32_value, FloatOrTensor, INT8_MAX, INT8_MIN, IntOrTensor, Padding, Tensor


def _describe(t: Tensor) -> str:
    return f"dtype={t.dtype}, shape={tuple(t.shape)}, device={t.device}"


def check_int8_zero_point(value: int, name: str) -> int:
    """Validate an activation zero point (a Python int in [-128, 127])."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a Python int, got {type(value).__name__}")
    value = int(value)
    if not INT8_MIN <= value <= INT8_MAX:
        raise ValueError(f"{name} must lie in [-128, 127], got {value}")
    return value


def check_tensor(t: Tensor, name: str, dtype: torch.dtype, ndim: int, layout: str = "") -> None:
    """Raise a ValueError unless ``t`` is a contiguous tensor of the given dtype and rank."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    what = f"{name} ({layout})" if layout else name
    if t.dtype != dtype:
        raise ValueError(f"{what} must have dtype {dtype}, got {_describe(t)}")
    if t.dim() != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got {_describe(t)}")
    if not t.is_contiguous():
        hint = " (for NHWC data pass x.permute(0, 2, 3, 1).contiguous())" if ndim == 4 else ""
        raise ValueError(f"{what} must be contiguous, got strides {tuple(t.stride())}{hint}")


def _check_device(t: Tensor, device: torch.device, name: str) -> None:
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the input is on {device}")


def check_nhwc_input(x: Tensor, channels: int, device: torch.device) -> Tuple[int, int, int, int]:
    """Check the input of a prepared layer launch (int8, contiguous NHWC, ``channels`` channels,
    on ``device``, one image below 2^31 elements); returns ``(B, H, W, C)``."""
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    B, H, W, C = x.shape
    if C != channels:
        raise ValueError(f"x has C={C} channels (NHWC {tuple(x.shape)}) but the weight expects {channels}")
    if x.device != device:
        raise ValueError(f"x is on {x.device} but the weight is on {device}")
    if H * W * C >= 2**31:
        raise ValueError(f"one image of {H}x{W}x{C} int8 values exceeds the kernel's 2^31 index range")
    return B, H, W, C


def as_channel_param(
    value: Union[numbers.Number, Tensor],
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    name: str,
) -> Tensor:
    """Normalize a per-tensor or per-channel parameter into a contiguous 1-D tensor of numel 1 or n.

    Python numbers become a ``[1]`` tensor of ``dtype`` on ``device``; tensors must already have
    that dtype and device (no silent conversion of multipliers or bounds).
    """
    if isinstance(value, Tensor):
        if value.dtype != dtype:
            raise ValueError(f"{name} must have dtype {dtype}, got {_describe(value)}")
        if value.dim() != 1 or value.numel() not in (1, n):
            raise ValueError(f"{name} must be 1-D with 1 or {n} elements, got shape {tuple(value.shape)}")
        _check_device(value, device, name)
        return value.contiguous()
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise ValueError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    return torch.tensor([value], dtype=dtype, device=device)


def check_epilogue(
    multiplier: FloatOrTensor,
    z_y: int,
    lo: IntOrTensor,
    hi: IntOrTensor,
    n: int,
    device: torch.device,
    check_values: bool = True,
) -> Tuple[Tensor, int, Tensor, Tensor]:
    """Validate and normalize the requantization parameters for ``n`` output channels.

    Returns ``(multiplier f32[1|n], z_y, lo i32[1|n], hi i32[1|n])``. Bounds given as Python
    ints are checked to satisfy ``-128 <= lo <= hi <= 127``; bound tensors are checked too when
    ``check_values`` and they live on the CPU (device tensors are not read back, to avoid a
    synchronization; tracing passes ``check_values=False``).
    """
    z_y = check_int8_zero_point(z_y, "z_y")
    for v, nm in ((lo, "lo"), (hi, "hi")):
        if not isinstance(v, Tensor) and isinstance(v, numbers.Integral) and not INT8_MIN <= int(v) <= INT8_MAX:
            raise ValueError(f"{nm} must lie in [-128, 127], got {v}")
    if isinstance(lo, numbers.Integral) and isinstance(hi, numbers.Integral) and int(lo) > int(hi):
        # checked here for every device (bound tensors on a GPU are not read back below)
        raise ValueError(f"lo ({lo}) must not exceed hi ({hi})")
    if isinstance(multiplier, numbers.Real) and not isinstance(multiplier, bool):
        if not math.isfinite(float(multiplier)):
            raise ValueError(f"multiplier must be finite, got {multiplier}")
    m_t = as_channel_param(multiplier, n, torch.float32, device, "multiplier")
    lo_t = as_channel_param(lo, n, torch.int32, device, "lo")
    hi_t = as_channel_param(hi, n, torch.int32, device, "hi")
    if check_values and lo_t.device.type == "cpu":
        if bool((lo_t < INT8_MIN).any()) or bool((hi_t > INT8_MAX).any()):
            raise ValueError("lo and hi must lie in [-128, 127]")
        if bool((lo_t > hi_t).any()):
            raise ValueError("lo must not exceed hi")
    return m_t, z_y, lo_t, hi_t


def check_weight_extras(
    bias: Optional[Tensor], w_zp: Optional[Tensor], n: int, device: torch.device
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    """Validate the optional int32 bias ``[n]`` and weight zero point ``[1|n]``."""
    if bias is not None:
        check_tensor(bias, "bias", torch.int32, 1)
        if bias.numel() != n:
            raise ValueError(f"bias must have {n} elements (one per output channel), got {bias.numel()}")
        _check_device(bias, device, "bias")
    if w_zp is not None:
        w_zp = as_channel_param(w_zp, n, torch.int32, device, "w_zp")
    return bias, w_zp


def normalize_stride(stride: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``s`` or ``(sh, sw)`` -> ``(sh, sw)``, each a positive int."""
    if isinstance(stride, numbers.Integral):
        stride = (int(stride), int(stride))
    stride = tuple(int(s) for s in stride)
    if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f"stride must be a positive int or a pair of positive ints, got {stride}")
    return stride  # type: ignore[return-value]


def normalize_padding(padding: Padding) -> Tuple[int, int, int, int]:
    """``p``, ``(ph, pw)`` or ``(top, bottom, left, right)`` -> ``(top, bottom, left, right)``."""
    if isinstance(padding, numbers.Integral):
        p = int(padding)
        pad = (p, p, p, p)
    else:
        vals = tuple(int(p) for p in padding)
        if len(vals) == 2:
            pad = (vals[0], vals[0], vals[1], vals[1])
        elif len(vals) == 4:
            pad = vals  # type: ignore[assignment]
        else:
            raise ValueError(f"padding must be an int, (ph, pw) or (top, bottom, left, right), got {padding}")
    if min(pad) < 0:
        raise ValueError(f"padding must be non-negative, got {pad}")
    return pad


def conv_output_size(
    h: int, w: int, kh: int, kw: int, stride: Tuple[int, int], padding: Tuple[int, int, int, int]
) -> Tuple[int, int]:
    """Output height and width of a convolution / pooling window (floor mode)."""
    oh = (h + padding[0] + padding[1] - kh) // stride[0] + 1
    ow = (w + padding[2] + padding[3] - kw) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(
            f"window {kh}x{kw} with padding {padding} does not fit an input of {h}x{w} (output {oh}x{ow})"
        )
    return oh, ow


def check_gemm_args(x: Tensor, w: Tensor, bias, w_zp, multiplier, z_x, z_y, lo, hi, check_values: bool = True):
    """Validate GEMM inputs; returns normalized ``(bias, w_zp, multiplier, z_x, z_y, lo, hi)``."""
    check_tensor(x, "x", torch.int8, 2, "[M, K]")
    check_tensor(w, "w", torch.int8, 2, "[N, K]")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x is [M, K] = {tuple(x.shape)} but w is [N, K] = {tuple(w.shape)}: K differs")
    _check_device(w, x.device, "w")
    n = w.shape[0]
    z_x = check_int8_zero_point(z_x, "z_x")
    bias, w_zp = check_weight_extras(bias, w_zp, n, x.device)
    m, z_y, lo, hi = check_epilogue(multiplier, z_y, lo, hi, n, x.device, check_values)
    return bias, w_zp, m, z_x, z_y, lo, hi


def check_conv_args(
    x: Tensor, w: Tensor, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding, check_values: bool = True
):
    """Validate convolution inputs (x NHWC ``[B,H,W,C]``, w ``[N,KH,KW,C]``)."""
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    check_tensor(w, "w", torch.int8, 4, "[N, KH, KW, C]")
    if x.shape[3] != w.shape[3]:
        raise ValueError(
            f"x has C={x.shape[3]} channels (NHWC {tuple(x.shape)}) but w [N, KH, KW, C] = {tuple(w.shape)}"
        )
    _check_device(w, x.device, "w")
    n = w.shape[0]
    z_x = check_int8_zero_point(z_x, "z_x")
    stride = normalize_stride(stride)
    padding = normalize_padding(padding)
    conv_output_size(x.shape[1], x.shape[2], w.shape[1], w.shape[2], stride, padding)
    bias, w_zp = check_weight_extras(bias, w_zp, n, x.device)
    m, z_y, lo, hi = check_epilogue(multiplier, z_y, lo, hi, n, x.device, check_values)
    return bias, w_zp, m, z_x, z_y, lo, hi, stride, padding


def check_depthwise_args(
    x: Tensor, w: Tensor, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding, check_values: bool = True
):
    """Validate depthwise inputs (x NHWC ``[B,H,W,C]``, w ``[KH,KW,C]``)."""
    check_tensor(x, "x", torch.int8, 4, "NHWC [B, H, W, C]")
    check_tensor(w, "w", torch.int8, 3, "[KH, KW, C]")
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"x has C={x.shape[3]} channels but w [KH, KW, C] = {tuple(w.shape)}")
    _check_device(w, x.device, "w")
    c = x.shape[3]
    z_x = check_int8_zero_point(z_x, "z_x")
    stride = normalize_stride(stride)
    padding = normalize_padding(padding)
    conv_output_size(x.shape[1], x.shape[2], w.shape[0], w.shape[1], stride, padding)
    bias, w_zp = check_weight_extras(bias, w_zp, c, x.device)
    m, z_y, lo, hi = check_epilogue(multiplier, z_y, lo, hi, c, x.device, check_values)
    return bias, w_zp, m, z_x, z_y, lo, hi, stride, padding


def check_add_args(a: Tensor, b: Tensor, z_a, z_b, ia, ib, multiplier, z_y, lo, hi):
    """Validate residual-add inputs; returns ``(z_a, z_b, ia, ib, m, z_y, lo, hi)`` as Python scalars."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise ValueError("a and b must be torch.Tensors")
    check_tensor(a, "a", torch.int8, a.dim())
    check_tensor(b, "b", torch.int8, b.dim())
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    _check_device(b, a.device, "b")
    z_a = check_int8_zero_point(z_a, "z_a")
    z_b = check_int8_zero_point(z_b, "z_b")
    z_y = check_int8_zero_point(z_y, "z_y")
    for v, nm in ((ia, "ia"), (ib, "ib")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{nm} must be a Python int")
        if abs(int(v)) > ADD_MAX_MULTIPLIER:
            raise ValueError(f"{nm} must satisfy |{nm}| <= {ADD_MAX_MULTIPLIER} so |acc| < 2^24, got {v}")
    lo, hi = _check_scalar_bounds(lo, hi)
    return z_a, z_b, int(ia), int(ib), _check_scalar_multiplier(multiplier), z_y, lo, hi


def _check_scalar_bounds(lo: int, hi: int) -> Tuple[int, int]:
    for v, nm in ((lo, "lo"), (hi, "hi")):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{nm} must be a Python int")
        if not INT8_MIN <= int(v) <= INT8_MAX:
            raise ValueError(f"{nm} must lie in [-128, 127], got {v}")
    if lo > hi:
        raise ValueError(f"lo ({lo}) must not exceed hi ({hi})")
    return int(lo), int(hi)


def _check_scalar_multiplier(m: float, name: str = "multiplier") -> float:
    if isinstance(m, bool) or not isinstance(m, numbers.Real):
        raise ValueError(f"{name} must be a Python float")
    if not math.isfinite(float(m)):
        raise ValueError(f"{name} must be finite, got {m}")
    return float32_value(float(m))




def _check_is_tensor(t: object, name: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _check_int_arg(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a Python int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_bool_arg(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_scale(value: object, name: str) -> float:
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(float(value))):
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    if float(value) <= 0:
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    return float(value)
