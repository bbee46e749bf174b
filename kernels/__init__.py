"""int8 inference kernels for data-free quantized CNNs.

The integer contract lives in :mod:`kernels.reference` (pure PyTorch, also the CPU fallback) and,
on the Triton side, in the one shared requantization epilogue of :mod:`kernels.requant`. The
operators below are ``torch.library`` custom ops (namespace ``dfq_int8``) that dispatch to Triton
on CUDA tensors and to the reference otherwise; see :mod:`kernels.ops` and ``kernels/README.md``.
Which kernel runs, and with which tile, is set by one :class:`~kernels.settings.KernelSettings`
object (:func:`current_settings`, :func:`use_settings`).

Importing this package does not import Triton; the Triton modules (:mod:`kernels.gemm`,
:mod:`kernels.conv`, :mod:`kernels.depthwise`, :mod:`kernels.elementwise`, :mod:`kernels.pool`,
:mod:`kernels.lut`, and the fused layer pairs :mod:`kernels.stem` and :mod:`kernels.dwproject`)
load on first use.
"""

from __future__ import annotations

from . import reference, settings
from .ops import (
    BACKENDS,
    dequantize,
    get_backend,
    int8_adaptive_avgpool2d,
    int8_add,
    int8_avgpool,
    int8_avgpool2d,
    int8_conv2d,
    int8_depthwise_conv2d,
    int8_gemm,
    int8_lut,
    int8_maxpool2d,
    int8_mul,
    int8_upsample_nearest,
    int8_upsample_bilinear,
    quantize,
    set_backend,
    triton_available,
    use_backend,
)
from .reference import (
    add_multipliers,
    conv_weight_to_nhwc,
    depthwise_weight_to_hwc,
    float32_reciprocal,
    float32_value,
    fold_bias,
    lut_from_function,
)
from .settings import KernelSettings, current_settings, set_settings, use_settings

__all__ = [
    "reference",
    "settings",
    "KernelSettings",
    "current_settings",
    "set_settings",
    "use_settings",
    "BACKENDS",
    "get_backend",
    "set_backend",
    "use_backend",
    "triton_available",
    "int8_gemm",
    "int8_conv2d",
    "int8_depthwise_conv2d",
    "int8_add",
    "int8_avgpool",
    "int8_maxpool2d",
    "int8_avgpool2d",
    "int8_adaptive_avgpool2d",
    "int8_mul",
    "int8_lut",
    "int8_upsample_nearest",
    "int8_upsample_bilinear",
    "quantize",
    "dequantize",
    "add_multipliers",
    "fold_bias",
    "float32_value",
    "float32_reciprocal",
    "lut_from_function",
    "conv_weight_to_nhwc",
    "depthwise_weight_to_hwc",
]
