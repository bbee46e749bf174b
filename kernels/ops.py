"""Public int8 operators: ``torch.library`` custom ops under ``dfq_int8::`` plus typed wrappers.

Every operator is registered with :func:`torch.library.custom_op` and a fake (meta)
implementation, so ``torch.compile`` and ``torch.export`` trace models that call them as opaque
nodes with known output shapes and dtypes (``torch.ops.dfq_int8.gemm`` etc.).

Dispatch
--------
Each op takes a ``backend`` string, resolved by the Python wrappers below from their ``backend``
argument or, when that is ``None``, from the process-wide default (:func:`set_backend`,
:func:`use_backend`; the ``backend`` field of :func:`kernels.settings.current_settings`):

* ``"auto"`` (default): Triton kernels for CUDA tensors, the PyTorch reference otherwise;
* ``"triton"``: Triton kernels; CPU tensors are accepted only when Triton's interpreter is active
  (``TRITON_INTERPRET=1`` set before ``kernels`` is imported), otherwise a ``ValueError``;
* ``"reference"``: the integer reference of :mod:`kernels.reference` (any device).

Under ``torch.compile`` the wrappers run at trace time, so the backend in force then is baked
into the graph. Triton is imported lazily: the reference path works without it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from types import ModuleType
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from . import reference as ref
from .settings import BACKENDS, _check_backend, current_settings, set_settings, use_settings

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

__all__ = [
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
    "triton_available",
    "triton_module",
    "is_traced",
    "int8_gemm",
    "int8_conv2d",
    "int8_depthwise_conv2d",
    "int8_add",
    "int8_avgpool",
    "int8_maxpool2d",
    "quantize",
    "dequantize",
    "int8_lut",
    "int8_mul",
    "int8_avgpool2d",
    "int8_adaptive_avgpool2d",
    "int8_upsample_nearest",
    "int8_upsample_bilinear",
]


# =============================================================================================
# Backend selection: the ``backend`` field of the kernel settings (kernels.settings)
# =============================================================================================
def get_backend() -> str:
    """The process-wide default backend (``"auto"`` unless changed)."""
    return current_settings().backend


def set_backend(name: str) -> None:
    """Set the process-wide default backend: ``"auto"``, ``"triton"`` or ``"reference"``."""
    set_settings(backend=name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the enclosed calls with another default backend."""
    with use_settings(backend=name):
        yield


def _resolve(backend: Optional[str]) -> str:
    return current_settings().backend if backend is None else _check_backend(backend)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether Triton (and so the kernel modules) can be imported."""
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _interpreted() -> bool:
    from ._config import INTERPRETED

    return INTERPRETED


@functools.lru_cache(maxsize=None)
def _triton_module(module: str) -> ModuleType:
    """``kernels.<module>``, imported once (a dict lookup on every later launch)."""
    return importlib.import_module(f"{__package__}.{module}")


def _impl(backend: str, t: Tensor, module: str) -> ModuleType:
    """The module implementing an op for this backend and input: a Triton module or the reference."""
    if backend == "reference":
        return ref
    if backend == "auto":
        if not t.is_cuda or not triton_available():
            return ref
    else:  # "triton"
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package")
        if not t.is_cuda and not _interpreted():
            raise ValueError(
                f"backend='triton' got tensors on {t.device}: Triton needs CUDA tensors, or "
                "TRITON_INTERPRET=1 in the environment before kernels is imported"
            )
    return _triton_module(module)


def is_traced(x: object) -> bool:
    """True when ``x`` is not a plain tensor to compute on now: a tensor subclass (the fake and
    functional tensors of tracing) or any value under ``torch.compile``/``torch.export`` tracing.
    Direct kernel launches and checks that read values (one device sync on a GPU) are for the
    other case only."""
    return type(x) is not Tensor or torch.compiler.is_compiling()


def triton_module(x: object, backend: Optional[str], module: str) -> Optional[ModuleType]:
    """The Triton kernel module (``"gemm"``, ``"conv"``, ``"depthwise"``, ``"elementwise"``,
    ``"pool"``, ``"lut"``, ``"stem"``, ``"dwproject"``) that runs an op on ``x`` eagerly under
    ``backend``, or ``None`` when the op must go
    through its ``dfq_int8`` custom op instead: the reference backend, CPU tensors without the
    interpreter under ``"auto"``, tensor subclasses (fake and functional tensors of tracing), and
    ``torch.compile``/``torch.export`` tracing.

    Callers that validated their arguments once (the steps of ``dfq_gpu.int8``) use it to launch
    the kernels directly, without the dispatcher and the per-call argument checks. ``"triton"``
    on CPU tensors without the interpreter raises the same ``ValueError`` as the op.
    """
    if is_traced(x):
        return None
    name = _resolve(backend)
    if name == "reference":
        return None
    impl = _impl(name, x, module)
    return None if impl is ref else impl


# =============================================================================================
# Custom ops and their fake implementations
# =============================================================================================
@torch.library.custom_op("dfq_int8::gemm", mutates_args=())
def _gemm_op(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor],
    multiplier: Tensor,
    z_x: int,
    w_zp: Optional[Tensor],
    z_y: int,
    lo: Tensor,
    hi: Tensor,
    out_int32: bool,
    bias_folded: bool,
    backend: str,
) -> Tensor:
    impl = _impl(backend, x, "gemm")
    return impl.int8_gemm(x, w, bias, multiplier, z_x, w_zp, z_y, lo, hi, out_int32, bias_folded)


@_gemm_op.register_fake
def _(x, w, bias, multiplier, z_x, w_zp, z_y, lo, hi, out_int32, bias_folded, backend):
    ref.check_gemm_args(x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi, check_values=False)
    return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.int32 if out_int32 else torch.int8)


@torch.library.custom_op("dfq_int8::conv2d", mutates_args=())
def _conv2d_op(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor],
    multiplier: Tensor,
    z_x: int,
    w_zp: Optional[Tensor],
    z_y: int,
    lo: Tensor,
    hi: Tensor,
    stride: List[int],
    padding: List[int],
    out_int32: bool,
    bias_folded: bool,
    backend: str,
) -> Tensor:
    impl = _impl(backend, x, "conv")
    return impl.int8_conv2d(x, w, bias, multiplier, z_x, w_zp, z_y, lo, hi, stride, padding, out_int32, bias_folded)


@_conv2d_op.register_fake
def _(x, w, bias, multiplier, z_x, w_zp, z_y, lo, hi, stride, padding, out_int32, bias_folded, backend):
    *_, stride, pad = ref.check_conv_args(
        x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding, check_values=False
    )
    oh, ow = ref.conv_output_size(x.shape[1], x.shape[2], w.shape[1], w.shape[2], stride, pad)
    return x.new_empty((x.shape[0], oh, ow, w.shape[0]), dtype=torch.int32 if out_int32 else torch.int8)


@torch.library.custom_op("dfq_int8::depthwise_conv2d", mutates_args=())
def _depthwise_op(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor],
    multiplier: Tensor,
    z_x: int,
    w_zp: Optional[Tensor],
    z_y: int,
    lo: Tensor,
    hi: Tensor,
    stride: List[int],
    padding: List[int],
    out_int32: bool,
    backend: str,
) -> Tensor:
    impl = _impl(backend, x, "depthwise")
    return impl.int8_depthwise_conv2d(x, w, bias, multiplier, z_x, w_zp, z_y, lo, hi, stride, padding, out_int32)


@_depthwise_op.register_fake
def _(x, w, bias, multiplier, z_x, w_zp, z_y, lo, hi, stride, padding, out_int32, backend):
    *_, stride, pad = ref.check_depthwise_args(
        x, w, bias, w_zp, multiplier, z_x, z_y, lo, hi, stride, padding, check_values=False
    )
    oh, ow = ref.conv_output_size(x.shape[1], x.shape[2], w.shape[0], w.shape[1], stride, pad)
    return x.new_empty((x.shape[0], oh, ow, x.shape[3]), dtype=torch.int32 if out_int32 else torch.int8)


@torch.library.custom_op("dfq_int8::add", mutates_args=())
def _add_op(
    a: Tensor, b: Tensor, z_a: int, z_b: int, ia: int, ib: int, multiplier: float, z_y: int, lo: int, hi: int,
    backend: str,
) -> Tensor:  # fmt: skip
    impl = _impl(backend, a, "elementwise")
    return impl.int8_add(a, b, z_a, z_b, ia, ib, multiplier, z_y, lo, hi)


@_add_op.register_fake
def _(a, b, z_a, z_b, ia, ib, multiplier, z_y, lo, hi, backend):
    ref.check_add_args(a, b, z_a, z_b, ia, ib, multiplier, z_y, lo, hi)
    return torch.empty_like(a)


@torch.library.custom_op("dfq_int8::avgpool", mutates_args=())
def _avgpool_op(
    x: Tensor, z_x: int, multiplier: Tensor, z_y: int, lo: Tensor, hi: Tensor, backend: str
) -> Tensor:
    impl = _impl(backend, x, "pool")
    return impl.int8_avgpool(x, z_x, multiplier, z_y, lo, hi)


@_avgpool_op.register_fake
def _(x, z_x, multiplier, z_y, lo, hi, backend):
    ref.check_avgpool_args(x, z_x, multiplier, z_y, lo, hi, check_values=False)
    return x.new_empty((x.shape[0], x.shape[3]), dtype=torch.int8)


@torch.library.custom_op("dfq_int8::maxpool2d", mutates_args=())
def _maxpool_op(
    x: Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    backend: str,
    dilation: Optional[List[int]] = None,
    ceil_mode: bool = False,
) -> Tensor:
    impl = _impl(backend, x, "pool")
    return impl.int8_maxpool2d(x, kernel_size, stride, padding, 1 if dilation is None else dilation, ceil_mode)


@_maxpool_op.register_fake
def _(x, kernel_size, stride, padding, backend, dilation=None, ceil_mode=False):
    *_, oh, ow = ref.check_maxpool2d_args(x, kernel_size, stride, padding, 1 if dilation is None else dilation,
                                          ceil_mode)  # fmt: skip
    return x.new_empty((x.shape[0], oh, ow, x.shape[3]), dtype=torch.int8)


@torch.library.custom_op("dfq_int8::avgpool2d", mutates_args=())
def _avgpool2d_op(
    x: Tensor,
    kernel_size: List[int],
    stride: List[int],
    padding: List[int],
    ceil_mode: bool,
    count_include_pad: bool,
    z_x: int,
    x_scale: float,
    y_scale: float,
    z_y: int,
    lo: int,
    hi: int,
    backend: str,
) -> Tensor:
    impl = _impl(backend, x, "pool")
    return impl.int8_avgpool2d(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, z_x, x_scale, y_scale, z_y, lo, hi
    )


@_avgpool2d_op.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, z_x, x_scale, y_scale, z_y, lo, hi, backend):
    checked = ref.check_avgpool2d_args(
        x, kernel_size, stride, padding, ceil_mode, count_include_pad, z_x, x_scale, y_scale, z_y, lo, hi
    )
    oh, ow = checked[5], checked[6]
    return x.new_empty((x.shape[0], oh, ow, x.shape[3]), dtype=torch.int8)


@torch.library.custom_op("dfq_int8::adaptive_avgpool2d", mutates_args=())
def _adaptive_avgpool2d_op(
    x: Tensor, output_size: List[int], z_x: int, x_scale: float, y_scale: float, z_y: int, lo: int, hi: int,
    backend: str,
) -> Tensor:
    impl = _impl(backend, x, "pool")
    return impl.int8_adaptive_avgpool2d(x, output_size, z_x, x_scale, y_scale, z_y, lo, hi)


@_adaptive_avgpool2d_op.register_fake
def _(x, output_size, z_x, x_scale, y_scale, z_y, lo, hi, backend):
    oh, ow = ref.check_adaptive_avgpool2d_args(x, output_size, z_x, x_scale, y_scale, z_y, lo, hi)[:2]
    return x.new_empty((x.shape[0], oh, ow, x.shape[3]), dtype=torch.int8)


@torch.library.custom_op("dfq_int8::upsample_bilinear", mutates_args=())
def _upsample_bilinear_op(
    x: Tensor, size: Optional[List[int]], scale_factor: Optional[List[float]], align_corners: bool, z_x: int,
    multiplier: float, z_y: int, lo: int, hi: int, backend: str
) -> Tensor:
    impl = _impl(backend, x, "pool")
    return impl.int8_upsample_bilinear(x, size, scale_factor, align_corners, z_x, multiplier, z_y, lo, hi)


@_upsample_bilinear_op.register_fake
def _(x, size, scale_factor, align_corners, z_x, multiplier, z_y, lo, hi, backend):
    oh, ow = ref.check_upsample_bilinear_args(x, size, scale_factor, align_corners, z_x, multiplier, z_y, lo, hi)[:2]
    return x.new_empty((x.shape[0], oh, ow, x.shape[3]), dtype=torch.int8)


@torch.library.custom_op("dfq_int8::upsample_nearest", mutates_args=())
def _upsample_nearest_op(
    x: Tensor, size: Optional[List[int]], scale_factor: Optional[List[float]], backend: str
) -> Tensor:
    impl = _impl(backend, x, "pool")
    return impl.int8_upsample_nearest(x, size, scale_factor)


@_upsample_nearest_op.register_fake
def _(x, size, scale_factor, backend):
    oh, ow, _, _ = ref.check_upsample_args(x, size, scale_factor)
    return x.new_empty((x.shape[0], oh, ow, x.shape[3]), dtype=torch.int8)


@torch.library.custom_op("dfq_int8::lut", mutates_args=())
def _lut_op(x: Tensor, table: Tensor, backend: str) -> Tensor:
    impl = _impl(backend, x, "lut")
    return impl.int8_lut(x, table)


@_lut_op.register_fake
def _(x, table, backend):
    ref.check_lut_args(x, table)
    return torch.empty_like(x)


@torch.library.custom_op("dfq_int8::lut_into", mutates_args=("out",))
def _lut_into_op(x: Tensor, table: Tensor, out: Tensor, channel_offset: int, backend: str) -> None:
    impl = _impl(backend, x, "lut")
    impl.int8_lut(x, table, out, channel_offset)


@_lut_into_op.register_fake
def _(x, table, out, channel_offset, backend):
    ref.check_lut_args(x, table, out, channel_offset)


@torch.library.custom_op("dfq_int8::mul", mutates_args=())
def _mul_op(
    x: Tensor, g: Tensor, z_x: int, z_g: int, multiplier: float, z_y: int, lo: int, hi: int, backend: str
) -> Tensor:
    impl = _impl(backend, x, "elementwise")
    return impl.int8_mul(x, g, z_x, z_g, multiplier, z_y, lo, hi)


@_mul_op.register_fake
def _(x, g, z_x, z_g, multiplier, z_y, lo, hi, backend):
    ref.check_mul_args(x, g, z_x, z_g, multiplier, z_y, lo, hi)
    return torch.empty_like(x)


@torch.library.custom_op("dfq_int8::quantize", mutates_args=())
def _quantize_op(x: Tensor, scale: float, zero_point: int, lo: int, hi: int, layout: str, backend: str) -> Tensor:
    impl = _impl(backend, x, "elementwise")
    return impl.quantize(x, scale, zero_point, lo, hi, layout)


@_quantize_op.register_fake
def _(x, scale, zero_point, lo, hi, layout, backend):
    ref.check_quantize_args(x, scale, zero_point, lo, hi, layout)
    shape = (x.shape[0], x.shape[2], x.shape[3], x.shape[1]) if layout == "nchw" else tuple(x.shape)
    return x.new_empty(shape, dtype=torch.int8)


@torch.library.custom_op("dfq_int8::dequantize", mutates_args=())
def _dequantize_op(q: Tensor, scale: float, zero_point: int, backend: str) -> Tensor:
    impl = _impl(backend, q, "elementwise")
    return impl.dequantize(q, scale, zero_point)


@_dequantize_op.register_fake
def _(q, scale, zero_point, backend):
    ref.check_dequantize_args(q, scale, zero_point)
    return q.new_empty(q.shape, dtype=torch.float32)


# =============================================================================================
# Typed public wrappers
# =============================================================================================
def _require_tensors(**tensors: object) -> None:
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def _epilogue_tensors(x: Tensor, n: int, multiplier, z_y, lo, hi):
    return ref.check_epilogue(multiplier, z_y, lo, hi, n, x.device, check_values=False)


def _wzp_tensor(x: Tensor, n: int, w_zp: Optional[Union[int, Tensor]]) -> Optional[Tensor]:
    if w_zp is None:
        return None
    return ref.as_channel_param(w_zp, n, torch.int32, x.device, "w_zp")


def int8_gemm(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: ref.FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Union[int, Tensor]] = None,
    z_y: int = 0,
    lo: ref.IntOrTensor = ref.INT8_MIN,
    hi: ref.IntOrTensor = ref.INT8_MAX,
    out_int32: bool = False,
    bias_folded: bool = False,
    backend: Optional[str] = None,
) -> Tensor:
    """int8 GEMM with fused requantization: ``x [M, K]`` int8, ``w [N, K]`` int8 -> ``[M, N]``.

    ``y = clamp(rne(float32(acc) * multiplier) + z_y, lo, hi)`` with ``acc = sum_k (x - z_x)(w - z_w)
    + bias`` (int32). ``multiplier`` (float32), ``lo``/``hi`` (int32) and ``w_zp`` (int32) are per
    tensor (a Python number or a ``[1]`` tensor) or per output channel (``[N]`` tensor); ``bias``
    is int32 ``[N]``, raw, or folded by :func:`kernels.reference.fold_bias` when ``bias_folded``.
    ``out_int32`` returns the int32 accumulator instead.
    """
    _require_tensors(x=x, w=w)
    m, z_y, lo, hi = _epilogue_tensors(x, w.shape[0], multiplier, z_y, lo, hi)
    wzp = _wzp_tensor(x, w.shape[0], w_zp)
    return torch.ops.dfq_int8.gemm(x, w, bias, m, z_x, wzp, z_y, lo, hi, out_int32, bias_folded, _resolve(backend))


def int8_conv2d(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: ref.FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Union[int, Tensor]] = None,
    z_y: int = 0,
    lo: ref.IntOrTensor = ref.INT8_MIN,
    hi: ref.IntOrTensor = ref.INT8_MAX,
    stride: Union[int, Sequence[int]] = 1,
    padding: ref.Padding = 0,
    out_int32: bool = False,
    bias_folded: bool = False,
    backend: Optional[str] = None,
) -> Tensor:
    """int8 convolution (implicit GEMM): x NHWC ``[B,H,W,C]``, w ``[N,KH,KW,C]`` -> NHWC ``[B,OH,OW,N]``.

    Same epilogue and parameters as :func:`int8_gemm`; ``stride`` ``s`` or ``(sh, sw)``;
    ``padding`` ``p``, ``(ph, pw)`` or ``(top, bottom, left, right)``, padded taps being zero in the
    real domain (they hold ``z_x``). Dilation 1, groups 1.
    """
    _require_tensors(x=x, w=w)
    n = w.shape[0]
    m, z_y, lo, hi = _epilogue_tensors(x, n, multiplier, z_y, lo, hi)
    wzp = _wzp_tensor(x, n, w_zp)
    st = list(ref.normalize_stride(stride))
    pad = list(ref.normalize_padding(padding))
    return torch.ops.dfq_int8.conv2d(
        x, w, bias, m, z_x, wzp, z_y, lo, hi, st, pad, out_int32, bias_folded, _resolve(backend)
    )


def int8_depthwise_conv2d(
    x: Tensor,
    w: Tensor,
    bias: Optional[Tensor] = None,
    multiplier: ref.FloatOrTensor = 1.0,
    z_x: int = 0,
    w_zp: Optional[Union[int, Tensor]] = None,
    z_y: int = 0,
    lo: ref.IntOrTensor = ref.INT8_MIN,
    hi: ref.IntOrTensor = ref.INT8_MAX,
    stride: Union[int, Sequence[int]] = 1,
    padding: ref.Padding = 0,
    out_int32: bool = False,
    backend: Optional[str] = None,
) -> Tensor:
    """int8 depthwise convolution: x NHWC ``[B,H,W,C]``, w ``[KH,KW,C]`` -> NHWC ``[B,OH,OW,C]``.

    Per-channel parameters have ``C`` entries. Any window size; padding as in :func:`int8_conv2d`.
    """
    _require_tensors(x=x, w=w)
    c = x.shape[-1]
    m, z_y, lo, hi = _epilogue_tensors(x, c, multiplier, z_y, lo, hi)
    wzp = _wzp_tensor(x, c, w_zp)
    st = list(ref.normalize_stride(stride))
    pad = list(ref.normalize_padding(padding))
    return torch.ops.dfq_int8.depthwise_conv2d(
        x, w, bias, m, z_x, wzp, z_y, lo, hi, st, pad, out_int32, _resolve(backend)
    )


def int8_add(
    a: Tensor,
    b: Tensor,
    z_a: int,
    z_b: int,
    ia: int,
    ib: int,
    multiplier: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
    backend: Optional[str] = None,
) -> Tensor:
    """Residual add of two int8 tensors (same shape) into a third quantization.

    ``y = clamp(rne(float32((a - z_a) ia + (b - z_b) ib) * m) + z_y, lo, hi)``; get ``(ia, ib, m)``
    from :func:`kernels.reference.add_multipliers` (``s_a``, ``s_b``, ``s_y``).
    """
    return torch.ops.dfq_int8.add(a, b, z_a, z_b, ia, ib, float(multiplier), z_y, lo, hi, _resolve(backend))


def int8_avgpool(
    x: Tensor,
    z_x: int,
    multiplier: ref.FloatOrTensor,
    z_y: int,
    lo: ref.IntOrTensor = ref.INT8_MIN,
    hi: ref.IntOrTensor = ref.INT8_MAX,
    backend: Optional[str] = None,
) -> Tensor:
    """Global average pool: x NHWC ``[B,H,W,C]`` -> int8 ``[B,C]`` with ``m = s_x / (H W s_y)``."""
    _require_tensors(x=x)
    m, z_y, lo, hi = _epilogue_tensors(x, x.shape[-1], multiplier, z_y, lo, hi)
    return torch.ops.dfq_int8.avgpool(x, z_x, m, z_y, lo, hi, _resolve(backend))


def int8_maxpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None],
    padding: ref.Padding = 0,
    dilation: Union[int, Sequence[int]] = 1,
    ceil_mode: bool = False,
    backend: Optional[str] = None,
) -> Tensor:
    """Max pool on NHWC int8 -> ``[B, OH, OW, C]`` with ``F.max_pool2d``'s output shape.

    Taps outside the input (padding, windows past the border in ``ceil_mode``) count as -128;
    ``dilation`` spaces the taps; ``stride=None`` means ``kernel_size``. Scale and zero point are
    unchanged.
    """
    ks = list(ref.normalize_stride(kernel_size))
    st = ks if stride is None else list(ref.normalize_stride(stride))
    pad = list(ref.normalize_padding(padding))
    dil = list(ref.normalize_stride(dilation))
    be = _resolve(backend)
    if dil == [1, 1] and ceil_mode is False:
        return torch.ops.dfq_int8.maxpool2d(x, ks, st, pad, be)
    return torch.ops.dfq_int8.maxpool2d(x, ks, st, pad, be, dil, ceil_mode)


def int8_avgpool2d(
    x: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Union[int, Sequence[int], None],
    padding: ref.Padding,
    ceil_mode: bool,
    count_include_pad: bool,
    z_x: int,
    x_scale: float,
    y_scale: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
    backend: Optional[str] = None,
) -> Tensor:
    """Windowed average pool on NHWC int8 -> ``[B, OH, OW, C]`` with ``F.avg_pool2d``'s output shape.

    ``acc = sum over the window's in-bounds taps of (x - z_x)`` (int32), ``d`` the divisor
    ``F.avg_pool2d`` uses there (``count_include_pad``, ``ceil_mode``), then
    ``y = clamp(rne(float32(acc) * m_d) + z_y, lo, hi)`` with ``m_d = float32((x_scale / y_scale) / d)``
    computed in float64. ``stride=None`` means ``kernel_size``; padding at most half the window.
    """
    ks = list(ref.normalize_stride(kernel_size))
    st = ks if stride is None else list(ref.normalize_stride(stride))
    pad = list(ref.normalize_padding(padding))
    return torch.ops.dfq_int8.avgpool2d(
        x, ks, st, pad, ceil_mode, count_include_pad, z_x, float(x_scale), float(y_scale), z_y, lo, hi,
        _resolve(backend),
    )  # fmt: skip


def int8_adaptive_avgpool2d(
    x: Tensor,
    output_size: Union[int, Sequence[Optional[int]]],
    z_x: int,
    x_scale: float,
    y_scale: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
    backend: Optional[str] = None,
) -> Tensor:
    """Adaptive average pool on NHWC int8 -> ``[B, OH, OW, C]`` with ``F.adaptive_avg_pool2d``'s
    windows (``output_size`` ``s`` or ``(oh, ow)``, ``None`` keeping that side's size).

    ``acc = sum over the window of (x - z_x)`` (int32), ``d`` the window's size, then
    ``y = clamp(rne(float32(acc) * m_d) + z_y, lo, hi)`` with ``m_d = float32((x_scale / y_scale) / d)``
    computed in float64, as :func:`int8_avgpool2d`.
    """
    _require_tensors(x=x)
    oh, ow = ref.adaptive_output_size((x.shape[1], x.shape[2]) if x.dim() == 4 else (1, 1), output_size)
    return torch.ops.dfq_int8.adaptive_avgpool2d(x, [oh, ow], z_x, float(x_scale), float(y_scale), z_y, lo, hi,
                                                 _resolve(backend))


def _resize_args(size: Union[int, Sequence[int], None],
                 scale_factor: Union[float, Sequence[float], None]) -> Tuple[Optional[List[int]], Optional[List[float]]]:
    """``size`` and ``scale_factor`` as the custom ops take them: lists of two, or ``None``."""
    sz: Optional[List[int]] = None
    sf: Optional[List[float]] = None
    if size is not None:
        sz = [size, size] if isinstance(size, int) else list(size)
    if scale_factor is not None:
        if isinstance(scale_factor, bool):
            raise ValueError("scale_factor must be a positive float or a pair of them, got a bool")
        sf = [float(scale_factor)] * 2 if isinstance(scale_factor, (int, float)) else [float(v) for v in scale_factor]
    return sz, sf


def int8_upsample_nearest(
    x: Tensor,
    size: Union[int, Sequence[int], None] = None,
    scale_factor: Union[float, Sequence[float], None] = None,
    backend: Optional[str] = None,
) -> Tensor:
    """Nearest-neighbour upsampling of NHWC int8 -> ``[B, OH, OW, C]``, values (and quantization)
    unchanged; output size and source indices are ``F.interpolate(mode="nearest")``'s. Give exactly
    one of ``size`` (``n`` or ``(oh, ow)``) and ``scale_factor`` (``s`` or ``(sh, sw)``)."""
    sz, sf = _resize_args(size, scale_factor)
    return torch.ops.dfq_int8.upsample_nearest(x, sz, sf, _resolve(backend))


def int8_upsample_bilinear(
    x: Tensor,
    size: Union[int, Sequence[int], None],
    scale_factor: Union[float, Sequence[float], None],
    align_corners: bool,
    z_x: int,
    multiplier: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
    backend: Optional[str] = None,
) -> Tensor:
    """Bilinear resampling of NHWC int8 -> ``[B, OH, OW, C]`` int8: ``acc = sum wh ww (x - z_x)``
    over ``F.interpolate(mode="bilinear", align_corners=...)``'s two source rows and columns with
    weights in steps of ``2^-8`` (:func:`kernels.reference.bilinear_taps`), then
    ``clamp(rne(float32(acc) * m) + z_y, lo, hi)``, ``m = float32((s_x / s_y) / 2^16)``. Give exactly
    one of ``size`` and ``scale_factor``."""
    sz, sf = _resize_args(size, scale_factor)
    if not isinstance(align_corners, bool):
        raise ValueError(f"align_corners must be a bool, got {align_corners!r}")
    ints = {"z_x": z_x, "z_y": z_y, "lo": lo, "hi": hi}
    for name, v in ints.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be a Python int, got {v!r}")
    return torch.ops.dfq_int8.upsample_bilinear(x, sz, sf, align_corners, z_x, float(multiplier), z_y, lo, hi,
                                                _resolve(backend))


def int8_lut(
    x: Tensor,
    table: Tensor,
    out: Optional[Tensor] = None,
    channel_offset: int = 0,
    backend: Optional[str] = None,
) -> Tensor:
    """Table lookup ``y = table[x + 128]`` on an int8 tensor of any rank (int8 ``[256]`` table on
    ``x``'s device, e.g. from :func:`kernels.reference.lut_from_function`).

    With ``out`` (int8 NHWC ``[B, H, W, C_out]``, ``x`` ``[B, H, W, C]``) the result is written into
    channels ``[channel_offset, channel_offset + C)`` of ``out`` in place and ``out`` is returned.
    """
    be = _resolve(backend)
    if out is None:
        if channel_offset != 0:
            ref.check_lut_args(x, table, out, channel_offset)
        return torch.ops.dfq_int8.lut(x, table, be)
    torch.ops.dfq_int8.lut_into(x, table, out, channel_offset, be)
    return out


def int8_mul(
    x: Tensor,
    g: Tensor,
    z_x: int,
    z_g: int,
    multiplier: float,
    z_y: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
    backend: Optional[str] = None,
) -> Tensor:
    """Gating multiply (squeeze-excitation): x NHWC ``[B, H, W, C]`` times ``g`` (``[B, C]``, broadcast
    over H and W, or of ``x``'s shape) -> int8 NHWC.

    ``y = clamp(rne(float32((x - z_x)(g - z_g)) * multiplier) + z_y, lo, hi)`` with the per-tensor
    ``multiplier = s_x s_g / s_y`` (used as its float32 value).
    """
    return torch.ops.dfq_int8.mul(x, g, z_x, z_g, float(multiplier), z_y, lo, hi, _resolve(backend))


def quantize(
    x: Tensor,
    scale: float,
    zero_point: int,
    lo: int = ref.INT8_MIN,
    hi: int = ref.INT8_MAX,
    layout: str = "nchw",
    backend: Optional[str] = None,
) -> Tensor:
    """float32 -> int8: ``clamp(rne(x * (1.0f / float32(scale))) + zero_point, lo, hi)``.

    ``layout="nchw"`` (default) turns a 4-D NCHW input (any strides) into NHWC int8; ``"nhwc"``
    and ``"flat"`` keep the shape.
    """
    return torch.ops.dfq_int8.quantize(x, float(scale), zero_point, lo, hi, layout, _resolve(backend))


def dequantize(q: Tensor, scale: float, zero_point: int, backend: Optional[str] = None) -> Tensor:
    """int8 -> float32: ``float32(q - zero_point) * float32(scale)`` (same shape and layout)."""
    return torch.ops.dfq_int8.dequantize(q, float(scale), zero_point, _resolve(backend))
