"""Capture a model as a ``torch.fx`` graph in the canonical form the passes work on.

Canonical form:

- every convolution / linear layer is a ``call_module`` of a plain ``nn.Conv2d`` /
  ``nn.Linear`` (subclasses such as EfficientNet's ``Conv2dStaticSamePadding`` are traced
  through, and the resulting functional ``F.conv2d`` / ``F.linear`` calls on parameters are
  turned back into modules, the padding module in front staying a ``ZeroPad2d`` node);
- activations called as functions or methods (``F.relu``, ``torch.relu``, ``x.relu()``,
  ``F.relu6``, ``F.hardtanh(x, 0, 6)``, ``F.leaky_relu``...) become modules;
- no module is called from two places (a reused module is copied per call site);
- ``Identity`` and ``Dropout`` calls are removed, in-place activations are made out-of-place;
- every node carries its output shape (``node.meta["tensor_meta"]``) from the example inputs
  (example inputs the model cannot run on raise :class:`~dfq_gpu.DFQError` naming the node).
"""

from __future__ import annotations

import copy
import logging
import operator
from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from ..errors import DFQError
from ..layers import is_layer_module, layer_types
from ..nn import ChannelClamp, FakeQuant

__all__ = ["TraceFailure", "DFQTracer", "trace_model", "node_module", "is_layer", "describe", "LAYER_TYPES",
           "ACT_TYPES"]

log = logging.getLogger(__name__)

# the torch classes of the built-in entries of dfq_gpu.layers: (nn.Conv2d, nn.Linear)
LAYER_TYPES = tuple(dict.fromkeys(e.module_class for e in reversed(layer_types())))
BN_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d)
ACT_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
             nn.SiLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU)


class TraceFailure(RuntimeError):
    """``torch.fx`` could not capture the model; the message names the module to mark as a leaf."""


class DFQTracer(fx.Tracer):
    """An ``fx`` tracer that keeps torch.nn modules as leaves and traces through user subclasses.

    A subclass of a torch.nn layer that keeps its parent's ``forward`` stays a leaf; one that
    overrides ``forward`` (for example a convolution with built-in padding) is traced through.
    ``leaf_modules`` (qualified names) and ``leaf_types`` force modules to be opaque leaves;
    they are left in float and reported.
    """

    def __init__(self, leaf_modules: Iterable[str] = (), leaf_types: Sequence[type] = ()) -> None:
        super().__init__()
        self.leaf_modules = set(leaf_modules)
        self.leaf_types = tuple(leaf_types)
        self.module_stack_names: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_modules or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return False
        mod = type(m).__module__
        if mod.startswith("torch.nn") or mod.startswith("torch.ao.nn"):
            return True
        if isinstance(m, (ChannelClamp, FakeQuant)):
            return True
        for base in LAYER_TYPES + BN_TYPES + ACT_TYPES + (nn.ZeroPad2d, nn.MaxPool2d, nn.AvgPool2d,
                                                          nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity):
            if isinstance(m, base) and type(m).forward is base.forward:
                return True
        return False

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        name = self.path_of_module(m) if hasattr(self, "root") else type(m).__name__
        self.module_stack_names.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = name
            raise
        finally:
            self.module_stack_names.pop()


def node_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls, else ``None``."""
    if node.op != "call_module":
        return None
    return gm.get_submodule(str(node.target))


def is_layer(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for a ``call_module`` of a registered layer type (:mod:`dfq_gpu.layers`:
    ``nn.Conv2d``, ``nn.Linear``)."""
    return is_layer_module(node_module(gm, node))


def describe(gm: fx.GraphModule, node: fx.Node) -> str:
    """A short human description of a node for reports (also :func:`dfq_gpu.graph.ops.describe`)."""
    m = node_module(gm, node)
    if m is not None:
        return f"{node.target} ({type(m).__name__})"
    if node.op == "call_function":
        return f"{node.name} ({getattr(node.target, '__name__', str(node.target))})"
    if node.op == "call_method":
        return f"{node.name} (.{node.target}())"
    return f"{node.name} ({node.op})"


# ----------------------------------------------------------------------------- tracing
def trace_model(
    model: nn.Module,
    example_inputs: tuple[Any, ...],
    leaf_modules: Iterable[str] = (),
) -> fx.GraphModule:
    """Trace ``model`` (already a private copy, in eval mode) into canonical form.

    Raises :class:`TraceFailure` naming the innermost module being traced when ``fx``
    cannot capture it, with the hint to pass it in ``leaf_modules``, and
    :class:`~dfq_gpu.DFQError` when the model cannot run on ``example_inputs``
    (:func:`propagate_shapes`).
    """
    tracer = DFQTracer(leaf_modules=leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises many kinds of errors on data-dependent control flow
        where = tracer.failed_in or "<top level>"
        raise TraceFailure(
            f"torch.fx could not trace the model inside module '{where}' ({type(exc).__name__}: {exc}). "
            f"Pass leaf_modules=['{where}'] to treat it as an opaque layer left in float."
        ) from exc
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    _functional_layers_to_modules(gm, tracer.root)
    _functional_acts_to_modules(gm)
    _remove_identities(gm)
    _unshare_modules(gm)
    gm.graph.lint()
    gm.recompile()
    propagate_shapes(gm, example_inputs)
    return gm


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph and records each node's output metadata as ``torch.fx``'s ``ShapeProp``
    does, remembering the node it is running (the one that failed, on an error) and leaving the
    op's own exception as it is (``ShapeProp`` prints its traceback and wraps it)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.extra_traceback = False
        self.current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        result = super().run_node(n)
        tensors = False

        def meta(obj: Any) -> Any:
            nonlocal tensors
            if isinstance(obj, torch.Tensor):
                tensors = True
                return _extract_tensor_metadata(obj)
            return obj

        value = map_aggregate(result, meta)
        if tensors:
            n.meta["tensor_meta"] = value
        n.meta["type"] = type(result)
        return result


def propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> None:
    """Record every node's output shape/dtype in ``node.meta['tensor_meta']``.

    Raises :class:`~dfq_gpu.DFQError` when the model cannot run on ``example_inputs``, naming
    the node that failed, the error it raised (chained) and, when the first layer's input size
    does not match, what that layer expects.
    """
    prop = _ShapeRecorder(gm)
    try:
        with torch.no_grad():
            prop.run(*example_inputs)
    except Exception as exc:
        raise DFQError(_run_failure_message(gm, prop.current, example_inputs, exc)) from exc


def _run_failure_message(gm: fx.GraphModule, node: fx.Node | None, example_inputs: tuple[Any, ...],
                         cause: BaseException) -> str:
    shapes = ", ".join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                       for t in example_inputs)
    where = describe(gm, node) if node is not None else "the model"
    text = (f"the model cannot run on the example inputs (shapes {shapes}): {where} failed with "
            f"{type(cause).__name__}: {str(cause).strip()}")
    expected = _first_layer_expectation(gm, example_inputs[0] if example_inputs else None)
    return text if expected is None else f"{text}. {expected}"


def _first_layer_expectation(gm: fx.GraphModule, x: Any) -> str | None:
    """What the first convolution / linear layer expects of the input, when ``x`` (the first
    example input) does not have it; ``None`` when it does or nothing can be said."""
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        if not isinstance(m, LAYER_TYPES):
            continue
        if not isinstance(x, torch.Tensor):
            return None
        shape = tuple(x.shape)
        if isinstance(m, nn.Conv2d):
            want, what, form = m.in_channels, "input channels", f"[B, {m.in_channels}, H, W]"
            given = shape[-3] if len(shape) >= 3 else None
        else:
            want, what, form = m.in_features, "input features", f"[B, {m.in_features}]"
            given = shape[-1] if shape else None
        if given == want:
            return None
        return (f"The first layer, {describe(gm, node)}, expects {want} {what} (inputs of shape {form}), "
                f"but example_inputs[0] has shape {shape}")
    return None


def _fresh_name(gm: fx.GraphModule, base: str) -> str:
    base = base.replace(".", "_") or "m"
    name, i = base, 1
    existing = dict(gm.named_modules())
    while name in existing or hasattr(gm, name):
        name = f"{base}_{i}"
        i += 1
    return name


def _get_attr_value(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if node is None:
        return None
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, torch.Tensor) else None
    return None


def _adopt_owner_name(gm: fx.GraphModule, root: nn.Module, owner: str, mod: nn.Module, replaced: set[str]) -> str:
    """Install ``mod`` under its parameter owner's name where that owner is a layer subclass.

    A ``Conv2dStaticSamePadding`` at ``blocks.0.conv`` traced through leaves a call to its
    child ``blocks.0.conv.static_padding`` and an ``F.conv2d`` on ``blocks.0.conv.weight``;
    the child moves to ``blocks.0.conv_static_padding`` and the plain ``nn.Conv2d`` takes the
    name ``blocks.0.conv``, so reports use the names the user knows.
    """
    try:
        owner_mod = root.get_submodule(owner) if owner else None
    except AttributeError:
        owner_mod = None
    if owner_mod is None or owner in replaced or not isinstance(owner_mod, LAYER_TYPES):
        name = _fresh_name(gm, owner or "layer")
        gm.add_submodule(name, mod)
        return name
    for n in gm.graph.nodes:
        if n.op == "call_module" and str(n.target).startswith(owner + "."):
            child = str(n.target)[len(owner) + 1:]
            new_target = owner + "_" + child.replace(".", "_")
            gm.add_submodule(new_target, gm.get_submodule(str(n.target)))
            n.target = new_target
    gm.add_submodule(owner, mod)
    replaced.add(owner)
    return owner


def _functional_layers_to_modules(gm: fx.GraphModule, root: nn.Module) -> None:
    """``F.conv2d(x, <param>, <param>, ...)`` and ``F.linear`` on parameters -> modules."""
    replaced: set[str] = set()
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (F.conv2d, F.linear, torch.conv2d):
            continue
        args = list(node.args) + [None] * 7
        kw = dict(node.kwargs)
        x = args[0]
        w_node = kw.get("weight", args[1])
        b_node = kw.get("bias", args[2])
        weight = _get_attr_value(gm, w_node)
        bias = _get_attr_value(gm, b_node) if b_node is not None else None
        if weight is None or (b_node is not None and bias is None):
            continue  # weights computed at run time: leave it alone (reported as unsupported later)
        if node.target is F.linear:
            mod: nn.Module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        else:
            stride = kw.get("stride", args[3] if args[3] is not None else 1)
            padding = kw.get("padding", args[4] if args[4] is not None else 0)
            dilation = kw.get("dilation", args[5] if args[5] is not None else 1)
            groups = kw.get("groups", args[6] if args[6] is not None else 1)
            if any(isinstance(v, fx.Node) for v in (stride, padding, dilation, groups)):
                continue
            if isinstance(padding, str):
                continue
            mod = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                            padding=padding, dilation=dilation, groups=groups, bias=bias is not None)
        mod = mod.to(dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            mod.weight.copy_(weight)
            if bias is not None:
                mod.bias.copy_(bias)
        # name the new module after the parameter's owner (e.g. "_blocks.0._depthwise_conv")
        owner = str(w_node.target).rsplit(".", 1)[0] if "." in str(w_node.target) else ""
        name = _adopt_owner_name(gm, root, owner, mod, replaced)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (x,))
        new.meta = dict(node.meta)
        new.meta["dfq_origin"] = owner
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()


def _act_module_for(node: fx.Node) -> nn.Module | None:
    t = node.target
    args, kw = node.args, node.kwargs
    if node.op == "call_function":
        if t in (F.relu, torch.relu, torch.relu_, F.relu_):
            return nn.ReLU()
        if t is F.relu6:
            return nn.ReLU6()
        if t in (F.hardtanh, F.hardtanh_):
            lo = kw.get("min_val", args[1] if len(args) > 1 else -1.0)
            hi = kw.get("max_val", args[2] if len(args) > 2 else 1.0)
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                return nn.ReLU6() if (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)
        if t in (F.leaky_relu, F.leaky_relu_):
            slope = kw.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            if isinstance(slope, (int, float)):
                return nn.LeakyReLU(slope)
        if t is F.hardswish:
            return nn.Hardswish()
        if t is F.hardsigmoid:
            return nn.Hardsigmoid()
        if t in (F.silu,):
            return nn.SiLU()
        if t in (torch.sigmoid, F.sigmoid):
            return nn.Sigmoid()
    if node.op == "call_method":
        if t in ("relu", "relu_"):
            return nn.ReLU()
        if t in ("sigmoid", "sigmoid_"):
            return nn.Sigmoid()
    return None


def _functional_acts_to_modules(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        mod = _act_module_for(node)
        if mod is None:
            continue
        name = _fresh_name(gm, f"{node.name}_act")
        gm.add_submodule(name, mod)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (node.args[0],))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        if m is not None and hasattr(m, "inplace"):
            m.inplace = False
        if node.op == "call_function" and node.target is operator.iadd:
            node.target = operator.add


def _is_eval_stochastic_depth(node: fx.Node, m: Optional[nn.Module]) -> bool:
    """torchvision's stochastic depth (EfficientNet, ConvNeXt, ...) in evaluation: the identity."""
    if m is not None:
        return type(m).__name__ == "StochasticDepth" and not m.training
    if node.op != "call_function" or getattr(node.target, "__name__", "") != "stochastic_depth":
        return False
    training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
    return training is False


def _remove_identities(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        m = node_module(gm, node)
        drop = isinstance(m, (nn.Identity, nn.Dropout, nn.Dropout2d))
        if node.op == "call_function" and node.target in (F.dropout, F.dropout2d):
            drop = True
        if _is_eval_stochastic_depth(node, m):
            drop = True
        if drop and node.args and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.delete_all_unused_submodules()


def _unshare_modules(gm: fx.GraphModule) -> None:
    """Give every call site of a reused module a copy of its own."""
    seen: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        target = str(node.target)
        if target not in seen:
            seen.add(target)
            continue
        mod = copy.deepcopy(gm.get_submodule(target))
        name = _fresh_name(gm, target + "_call")
        gm.add_submodule(name, mod)
        node.target = name
        node.meta["dfq_origin"] = target
        log.debug("module %s is called more than once; call site %s gets its own copy %s", target, node.name, name)
