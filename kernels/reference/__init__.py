"""Pure PyTorch integer reference of the int8 execution contract (no Triton).

This package *is* the contract: every Triton kernel of :mod:`kernels` must agree with it bit for
bit, and it is the CPU fallback of :mod:`kernels.ops`. It also holds the input validation and
the small helpers an integrator needs (bias folding, add multipliers, weight layouts). Every name
is imported from here (``kernels.reference.int8_gemm``); the modules, each importing only those
above it:

* :mod:`.helpers`: types, int8 bounds, float32 rounding of scales, bias folding, the add's
  fixed-point multipliers, weight layouts;
* :mod:`.checks`: validation and normalization of the arguments (shared with the launchers);
* :mod:`.exact`: the executor, exact integer reductions in floating point and the epilogue (also
  run by the simulation's integer layers);
* :mod:`.contract`: requantization, GEMM, convolution, depthwise convolution, add and residual
  add, global average pool, quantize (also into an im2col matrix), dequantize;
* :mod:`.tables`: table lookup and the gating multiply;
* :mod:`.windows`: windowed average and max pooling, nearest and bilinear upsampling.

Conventions
-----------
* Activations are int8, NHWC (channels last). A uint8 tensor ``q`` with zero point ``z`` is the
  int8 tensor ``q - 128`` with zero point ``z - 128``. Activation zero points are Python ints in
  [-128, 127].
* Weights are int8 with a zero point per tensor or per output channel (int32 ``[1]`` or
  ``[N]``; ``None`` means symmetric). Bias is int32 ``[N]`` or ``None``.
* Accumulation: ``acc = sum_k (x_k - z_x)(w_k - z_w) + bias`` in int32 (two's complement
  wrap-around on overflow, identical in kernels and reference). Convolution padding lies in the
  real domain: padded taps hold ``z_x`` and contribute exactly 0 (EfficientNet's ZeroPad2d and
  "same" padding, PyTorch's zero padding).
* Requantization: ``y = clamp(rne(float32(acc) * m) + z_y, lo, hi)`` (see :func:`requantize`).

Accumulators are computed in float64 on zero-point-subtracted integers (exact: every partial
sum is an integer far below 2^53), then converted to int64 and wrapped to int32.
"""

from __future__ import annotations

from .helpers import (  # noqa: F401
    ADD_MAX_MULTIPLIER,
    add_multipliers,
    ADD_SHIFT,
    conv_weight_to_nhwc,
    depthwise_weight_to_hwc,
    float32_reciprocal,
    float32_value,
    FloatOrTensor,
    fold_bias,
    INT8_MAX,
    INT8_MIN,
    IntOrTensor,
    Padding,
    Tensor,
    unfold_bias,
)
from .checks import (  # noqa: F401
    as_channel_param,
    check_add_args,
    _check_bool_arg,
    check_conv_args,
    check_depthwise_args,
    _check_device,
    check_epilogue,
    check_gemm_args,
    check_int8_zero_point,
    _check_int_arg,
    _check_is_tensor,
    check_nhwc_input,
    _check_scalar_bounds,
    _check_scalar_multiplier,
    _check_scale,
    check_tensor,
    check_weight_extras,
    conv_output_size,
    _describe,
    normalize_padding,
    normalize_stride,
)
from .exact import (  # noqa: F401
    channel_view,
    exact_accumulate,
    exact_add,
    EXACT_FLOAT32,
    exact_product,
    exact_sum,
    ExactReduction,
    float32_chunks,
    MAX_FLOAT32_CHUNKS,
    plan_reduction,
    Reduce,
    requantize_centered,
)
from .contract import (  # noqa: F401
    _centered,
    check_avgpool_args,
    check_dequantize_args,
    check_quantize_args,
    check_quantize_im2col_args,
    check_quantizer,
    dequantize,
    _finish,
    IM2COL_MAX_CHANNELS,
    IM2COL_ROW_ALIGN,
    im2col_width,
    int8_add,
    int8_avgpool,
    int8_conv2d,
    int8_depthwise_conv2d,
    int8_gemm,
    quantize,
    quantize_im2col,
    _raw_bias,
    requantize,
    residual_add,
    ResidualAdd,
    _x_bound,
)
from .tables import (  # noqa: F401
    check_lut_args,
    check_mul_args,
    int8_lut,
    int8_mul,
    lut_from_function,
    LUT_SIZE,
    _scalar_epilogue,
)
from .windows import (  # noqa: F401
    adaptive_average_multipliers,
    adaptive_output_size,
    adaptive_window_max,
    adaptive_windows,
    check_adaptive_avgpool2d_args,
    exact_adaptive_average,
    int8_adaptive_avgpool2d,
    normalize_adaptive_size,
    avgpool2d_divisors,
    avgpool2d_multipliers,
    bilinear_accumulate,
    BILINEAR_FRAC_BITS,
    bilinear_taps,
    _bilinear_taps_cpu,
    check_avgpool2d_args,
    pool_windows,
    window_average_multipliers,
    check_maxpool2d_args,
    check_upsample_args,
    check_upsample_bilinear_args,
    exact_window_average,
    int8_avgpool2d,
    int8_maxpool2d,
    int8_upsample_bilinear,
    int8_upsample_nearest,
    _nearest_rule,
    pool_output_size,
    _pool_window_args,
    upsample_nearest_indices,
)

__all__ = [
    "requantize",
    "fold_bias",
    "add_multipliers",
    "float32_value",
    "float32_reciprocal",
    "conv_weight_to_nhwc",
    "depthwise_weight_to_hwc",
    "conv_output_size",
    "int8_gemm",
    "int8_conv2d",
    "int8_depthwise_conv2d",
    "int8_add",
    "ResidualAdd",
    "residual_add",
    "int8_avgpool",
    "int8_maxpool2d",
    "quantize",
    "quantize_im2col",
    "im2col_width",
    "IM2COL_MAX_CHANNELS",
    "dequantize",
    "int8_lut",
    "lut_from_function",
    "int8_mul",
    "int8_avgpool2d",
    "int8_adaptive_avgpool2d",
    "avgpool2d_multipliers",
    "pool_output_size",
    "int8_upsample_nearest",
    "int8_upsample_bilinear",
    "bilinear_taps",
    "bilinear_accumulate",
    "BILINEAR_FRAC_BITS",
]
