"""What each kind of node does to channels: the vocabulary shared by region finding,
statistics propagation and quantizer placement."""

from __future__ import annotations

import numbers
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..nn import elementwise_of_module
from .trace import describe, node_module

__all__ = [
    "tensor_shape",
    "channels_of",
    "tensor_inputs",
    "is_add",
    "is_mul",
    "is_cat",
    "channel_cat_inputs",
    "is_interpolate",
    "is_shape_query",
    "is_zero_pad",
    "is_spatial_pool",
    "is_channel_preserving_reshape",
    "is_flatten_reshape",
    "is_clamp_act",
    "elementwise_activation",
    "nearest_upsample_args",
    "avg_pool_args",
    "adaptive_avg_pool_size",
    "AvgPoolArgs",
    "describe",
]

_AVG_POOL_FNS = tuple(f for f in (F.avg_pool2d, F.adaptive_avg_pool2d, getattr(torch, "avg_pool2d", None),
                                   getattr(torch, "adaptive_avg_pool2d", None),
                                   getattr(torch._C._nn, "avg_pool2d", None),
                                   getattr(torch._C._nn, "adaptive_avg_pool2d", None)) if f is not None)
_ADAPTIVE_AVG_POOL_FNS = tuple(f for f in (F.adaptive_avg_pool2d, getattr(torch, "adaptive_avg_pool2d", None),
                                            getattr(torch._C._nn, "adaptive_avg_pool2d", None)) if f is not None)
_ADD = (operator.add, torch.add, operator.iadd)
_MUL = (operator.mul, torch.mul, operator.imul)


def tensor_shape(node: Any) -> tuple[int, ...] | None:
    """The output shape recorded by shape propagation, or ``None`` for non-tensors."""
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        return None
    return tuple(int(d) for d in tm.shape)


def channels_of(node: Any) -> int | None:
    """Size of dimension 1 (channels) of a node's output, if it is a tensor of rank >= 2."""
    shape = tensor_shape(node)
    if shape is None or len(shape) < 2:
        return None
    return shape[1]


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The input nodes of ``node`` that produce tensors, in argument order."""
    out: list[fx.Node] = []
    for a in list(node.args) + list(node.kwargs.values()):
        items = a if isinstance(a, (list, tuple)) else [a]
        for it in items:
            if isinstance(it, fx.Node) and tensor_shape(it) is not None and it not in out:
                out.append(it)
    return out


def is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD:
        return len(tensor_inputs(node)) == 2 and not node.kwargs.get("alpha")
    return node.op == "call_method" and node.target in ("add", "add_") and len(tensor_inputs(node)) == 2


def is_mul(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _MUL:
        return len(tensor_inputs(node)) == 2
    return node.op == "call_method" and node.target in ("mul", "mul_") and len(tensor_inputs(node)) == 2


# call_function targets / call_method names of elementwise activations -> (name in dfq_gpu.nn.ELEMENTWISE,
# the names of their extra arguments in order)
_ELEMENTWISE_FNS: dict[Any, tuple[str, tuple[str, ...]]] = {
    F.hardswish: ("hardswish", ()), F.hardsigmoid: ("hardsigmoid", ()), F.silu: ("silu", ()),
    torch.sigmoid: ("sigmoid", ()), F.sigmoid: ("sigmoid", ()), torch.tanh: ("tanh", ()), F.tanh: ("tanh", ()),
    F.gelu: ("gelu", ("approximate",)), F.leaky_relu: ("leaky_relu", ("negative_slope",)),
    F.elu: ("elu", ("alpha",)), F.mish: ("mish", ()), F.softplus: ("softplus", ("beta", "threshold")),
    F.relu: ("relu", ()), torch.relu: ("relu", ()), F.relu6: ("relu6", ()),
    F.hardtanh: ("hardtanh", ("min_val", "max_val")),
}
_ELEMENTWISE_METHODS: dict[str, str] = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "sigmoid_": "sigmoid",
                                        "tanh_": "tanh", "relu_": "relu"}


def elementwise_activation(gm: fx.GraphModule, node: fx.Node) -> tuple[str, dict[str, Any]] | None:
    """``(name, kwargs)`` of :data:`dfq_gpu.nn.ELEMENTWISE` if ``node`` applies an elementwise
    activation to one tensor (a module such as ``nn.Hardswish``, ``F.silu(x)``, ``x.sigmoid()``),
    with constant arguments only; else ``None``."""
    if node.op == "call_module":
        return elementwise_of_module(node_module(gm, node)) if len(node.args) == 1 and not node.kwargs else None
    if node.op == "call_method":
        name = _ELEMENTWISE_METHODS.get(str(node.target))
        return (name, {}) if name is not None and len(node.args) == 1 and not node.kwargs else None
    if node.op != "call_function":
        return None
    spec = _ELEMENTWISE_FNS.get(node.target)
    if spec is None or not node.args or len(tensor_inputs(node)) != 1:
        return None
    name, params = spec
    kwargs: dict[str, Any] = {}
    extra = list(node.args[1:])
    for i, v in enumerate(extra):
        if i >= len(params):
            if isinstance(v, bool):  # a trailing ``inplace`` flag
                continue
            return None
        kwargs[params[i]] = v
    for k, v in node.kwargs.items():
        if k == "inplace":
            continue
        if k not in params:
            return None
        kwargs[k] = v
    if any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None
    return name, kwargs


def nearest_upsample_args(gm: fx.GraphModule, node: fx.Node) -> tuple[Any, Any] | None:
    """``(size, scale_factor)`` of a nearest-neighbour upsampling (``F.interpolate(mode="nearest")``,
    ``nn.Upsample``, ``nn.UpsamplingNearest2d``) with constant arguments, else ``None``."""
    m = node_module(gm, node)
    if isinstance(m, nn.Upsample):
        if m.mode != "nearest" or getattr(m, "recompute_scale_factor", None):
            return None
        size, scale = m.size, m.scale_factor
    elif node.op == "call_function" and node.target in (F.interpolate, F.upsample, F.upsample_nearest):
        mode = node_arg(node, 3, "mode", "nearest") if node.target is not F.upsample_nearest else "nearest"
        if mode != "nearest" or node_arg(node, 5, "recompute_scale_factor", None) or \
                node_arg(node, 6, "antialias", False):
            return None
        size, scale = node_arg(node, 1, "size", None), node_arg(node, 2, "scale_factor", None)
    else:
        return None
    if (size is None) == (scale is None) or any(isinstance(v, fx.Node) for v in
                                                 (size if isinstance(size, (tuple, list)) else (size,))):
        return None
    return size, scale


def bilinear_upsample_args(gm: fx.GraphModule, node: fx.Node) -> tuple[Any, Any, bool] | None:
    """``(size, scale_factor, align_corners)`` of a bilinear resampling of a 4-D tensor
    (``F.interpolate(mode="bilinear")``, ``nn.Upsample(mode="bilinear")``,
    ``nn.UpsamplingBilinear2d``), else ``None``. ``size`` may be a node (computed from shapes at
    run time); ``scale_factor`` must be constant."""
    m = node_module(gm, node)
    if isinstance(m, nn.Upsample):
        if m.mode != "bilinear" or getattr(m, "recompute_scale_factor", None):
            return None
        size, scale, corners = m.size, m.scale_factor, bool(m.align_corners)
    elif node.op == "call_function" and node.target in (F.interpolate, F.upsample, F.upsample_bilinear):
        if node.target is F.upsample_bilinear:
            mode, corners = "bilinear", True
        else:
            mode, corners = node_arg(node, 3, "mode", "nearest"), node_arg(node, 4, "align_corners", None)
        if mode != "bilinear" or node_arg(node, 5, "recompute_scale_factor", None) or \
                node_arg(node, 6, "antialias", False):
            return None
        size, scale = node_arg(node, 1, "size", None), node_arg(node, 2, "scale_factor", None)
        corners = bool(corners)
    else:
        return None
    shape = tensor_shape(node)
    if (size is None) == (scale is None) or isinstance(scale, fx.Node) or shape is None or len(shape) != 4:
        return None
    return size, scale, corners


def is_cat(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (torch.cat, torch.concat)


def channel_cat_inputs(node: fx.Node) -> list[fx.Node] | None:
    """The inputs of a concatenation along the channels (dimension 1), in order (repeats
    included), or ``None`` for anything else."""
    if not is_cat(node):
        return None
    parts, dim, shape = node_arg(node, 0, "tensors", None), node_arg(node, 1, "dim", 0), tensor_shape(node)
    if not isinstance(parts, (list, tuple)) or shape is None or len(shape) < 2 or not isinstance(dim, int) or \
            not all(isinstance(p, fx.Node) and channels_of(p) is not None for p in parts):
        return None
    return list(parts) if dim % len(shape) == 1 else None


_INTERPOLATE_FNS = (F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear)


def is_interpolate(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Spatial resampling (``F.interpolate`` in any mode, ``nn.Upsample`` and its subclasses):
    each output value is a fixed linear combination of values of the same channel, so it is
    scale-equivariant per channel."""
    return isinstance(node_module(gm, node), nn.Upsample) or (node.op == "call_function" and
                                                                node.target in _INTERPOLATE_FNS)


def is_shape_query(node: fx.Node) -> bool:
    """``x.size()``, ``x.shape``, ``x.dim()``: users that read no values."""
    if node.op == "call_method" and node.target in ("size", "dim"):
        return True
    return node.op == "call_function" and node.target is getattr and len(node.args) > 1 and \
        node.args[1] in ("shape", "dtype", "device")


def is_zero_pad(gm: fx.GraphModule, node: fx.Node) -> bool:
    m = node_module(gm, node)
    if isinstance(m, nn.ZeroPad2d):
        return True
    if isinstance(m, (nn.ConstantPad2d, nn.ConstantPad1d)) and float(m.value) == 0.0:
        return True
    if node.op == "call_function" and node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
        return mode == "constant" and (value is None or float(value) == 0.0)
    return False


def zero_pad_amounts(gm: fx.GraphModule, node: fx.Node) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) of a zero-padding node."""
    m = node_module(gm, node)
    pad = m.padding if m is not None else node.kwargs.get("pad", node.args[1])
    pad = tuple(int(p) for p in pad)
    if len(pad) == 2:
        pad = pad + (0, 0)
    return pad[:4]  # type: ignore[return-value]


def is_spatial_pool(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """``"max"`` or ``"avg"`` for per-channel spatial pooling (positively homogeneous), else None."""
    m = node_module(gm, node)
    if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return "max"
    if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "avg"
    if node.op == "call_function":
        if node.target in (F.max_pool2d, F.adaptive_max_pool2d, torch.max_pool2d):
            return "max"
        if node.target in _AVG_POOL_FNS:
            return "avg"
        if node.target is torch.mean:
            return "avg" if _mean_over_spatial(node) else None
    if node.op == "call_method" and node.target == "mean":
        return "avg" if _mean_over_spatial(node) else None
    return None


def _mean_over_spatial(node: fx.Node) -> bool:
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    shape = tensor_shape(node.args[0])
    if dims is None or shape is None or len(shape) < 3:
        return False
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    dims = tuple(d % len(shape) for d in dims)
    return 0 not in dims and 1 not in dims


def is_channel_preserving_reshape(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A reshape/flatten/view/squeeze that keeps dim 1 as the channels and only drops size-1 dims."""
    if not _is_reshape(gm, node):
        return False
    src = tensor_inputs(node)
    if len(src) != 1:
        return False
    si, so = tensor_shape(src[0]), tensor_shape(node)
    if si is None or so is None or len(si) < 2 or len(so) < 2:
        return False
    return si[0] == so[0] and si[1] == so[1] and all(d == 1 for d in si[2:]) and all(d == 1 for d in so[2:])


def is_flatten_reshape(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``[N, C, H, W] -> [N, C*H*W]`` (channel-major flatten)."""
    if not _is_reshape(gm, node):
        return False
    src = tensor_inputs(node)
    if len(src) != 1:
        return False
    si, so = tensor_shape(src[0]), tensor_shape(node)
    if si is None or so is None or len(so) != 2 or len(si) < 3:
        return False
    n = 1
    for d in si[1:]:
        n *= d
    return si[0] == so[0] and so[1] == n


def _is_reshape(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in (torch.flatten, torch.reshape, torch.squeeze):
        return True
    if node.op == "call_method" and node.target in ("view", "reshape", "flatten", "squeeze", "contiguous"):
        return True
    return isinstance(node_module(gm, node), (nn.Flatten, nn.Unflatten))


def is_clamp_act(m: nn.Module | None) -> tuple[float, float] | None:
    """Bounds of a clamp-type activation (ReLU, ReLU6, Hardtanh) as floats, else ``None``."""
    if isinstance(m, nn.ReLU6):
        return 0.0, 6.0
    if isinstance(m, nn.ReLU):
        return 0.0, float("inf")
    if isinstance(m, nn.Hardtanh):
        return float(m.min_val), float(m.max_val)
    return None


def pair(v: Any) -> tuple[int, int]:
    """A 2-D size argument (an int or a sequence of one or two ints) as ``(h, w)``."""
    if isinstance(v, numbers.Integral):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


def node_arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` (positional) or ``name`` (keyword) of a call node, else ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


@dataclass(frozen=True)
class MaxPoolArgs:
    """A 2-D max pool's arguments as ``(h, w)`` pairs (``padding``: the same on both sides)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    return_indices: bool


@dataclass(frozen=True)
class AvgPoolArgs:
    """A 2-D average pool's arguments as ``(h, w)`` pairs (``padding``: the same on both sides)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    ceil_mode: bool
    count_include_pad: bool
    divisor_override: Any


def avg_pool_args(gm: fx.GraphModule, node: fx.Node) -> AvgPoolArgs | None:
    """The arguments of an ``nn.AvgPool2d`` call or an ``F.avg_pool2d`` call with constant
    arguments (the stride defaults to the kernel size); ``None`` for anything else."""
    m = node_module(gm, node)
    if isinstance(m, nn.AvgPool2d):
        ks, stride, pad, ceil, cip, div = (m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                                           m.divisor_override)
    elif node.op == "call_function" and node.target in (F.avg_pool2d, getattr(torch._C._nn, "avg_pool2d", None)):
        ks = node_arg(node, 1, "kernel_size", None)
        stride = node_arg(node, 2, "stride", None)
        pad = node_arg(node, 3, "padding", 0)
        ceil = node_arg(node, 4, "ceil_mode", False)
        cip = node_arg(node, 5, "count_include_pad", True)
        div = node_arg(node, 6, "divisor_override", None)
    else:
        return None
    if ks is None or any(isinstance(v, fx.Node) for v in (ks, stride, pad, ceil, cip, div)):
        return None
    kernel = pair(ks)
    no_stride = stride is None or (not isinstance(stride, numbers.Integral) and len(stride) == 0)
    return AvgPoolArgs(kernel, kernel if no_stride else pair(stride), pair(pad), bool(ceil), bool(cip), div)


def adaptive_avg_pool_size(gm: fx.GraphModule, node: fx.Node) -> Any:
    """The ``output_size`` of an ``nn.AdaptiveAvgPool2d`` call or an ``F.adaptive_avg_pool2d``
    call, as given (an int or a sequence, ``None`` sides keeping the input's size); ``None`` for
    anything else or a size computed in the graph."""
    m = node_module(gm, node)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        size = m.output_size
    elif node.op == "call_function" and node.target in _ADAPTIVE_AVG_POOL_FNS:
        size = node_arg(node, 1, "output_size", None)
    else:
        return None
    if isinstance(size, fx.Node) or (isinstance(size, (tuple, list)) and any(isinstance(v, fx.Node) for v in size)):
        return None
    return size


def max_pool_args(gm: fx.GraphModule, node: fx.Node) -> MaxPoolArgs | None:
    """The arguments of an ``nn.MaxPool2d`` call or an ``F.max_pool2d`` / ``torch.max_pool2d``
    call (the stride defaults to the kernel size); ``None`` for anything else."""
    m = node_module(gm, node)
    if isinstance(m, nn.MaxPool2d):
        ks, stride, pad, dil, ceil, ret = (m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                                           m.return_indices)
    elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
        ks = node_arg(node, 1, "kernel_size", None)
        stride = node_arg(node, 2, "stride", None)
        pad = node_arg(node, 3, "padding", 0)
        dil = node_arg(node, 4, "dilation", 1)
        ceil = node_arg(node, 5, "ceil_mode", False)
        ret = node_arg(node, 6, "return_indices", False)
    else:
        return None
    kernel = pair(ks)
    no_stride = stride is None or (not isinstance(stride, numbers.Integral) and len(stride) == 0)
    return MaxPoolArgs(kernel, kernel if no_stride else pair(stride), pair(pad), pair(dil), bool(ceil), bool(ret))
