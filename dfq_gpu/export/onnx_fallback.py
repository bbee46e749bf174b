"""What the exporter writes without an emitter of its own, as a mixin of its emitter:

* **constants**: a node whose inputs are all constants (parameters and buffers read with
  ``get_attr``, and what is computed from them alone: Swin's relative position bias, gathered
  from its table by an integer index or computed by a small MLP) is evaluated once in PyTorch
  and becomes an initializer where a tensor of the network reads it (integer codes when a
  quantizer produced it);
* **float ops through PyTorch's exporter**: any other node that computes in float (attention,
  ``einsum``, ``softmax``, a class token expanded to the batch, Swin's shifted-window attention,
  ...) is exported by ``torch.onnx.export`` (TorchScript exporter, batch dimension dynamic) as a
  small module of its own, together with the size arithmetic its arguments come from, and its
  graph is spliced in: renamed, fed the node's float inputs (``DequantizeLinear`` of quantized
  codes, as the simulation computes it). The model's opset rises to what such a piece needs
  (14, else 17: PyTorch exports attention from 14). The nodes exported this way are listed in the model's metadata
  (``dfq_gpu.pytorch_exported``) and logged.

The integer network's own steps (the modules of :mod:`dfq_gpu.modules`) are never exported this
way: they have emitters, or the export fails naming them.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any, Iterator

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .. import modules as dfq_modules
from ..graph import ops
from ..graph.trace import node_module
from .onnx_steps import _T

log = logging.getLogger(__name__)

#: Opsets tried, in order, for a piece exported by PyTorch (the exporter's own ops are valid in all).
FALLBACK_OPSETS = (14, 17)


def _is_dfq_module(m: Any) -> bool:
    return isinstance(m, nn.Module) and type(m).__module__ == dfq_modules.__name__


def _leaves(v: Any) -> Iterator[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        yield v
    elif isinstance(v, (tuple, list)):
        for item in v:
            yield from _leaves(item)


class _Leaves(nn.Module):
    """The tensors of a sub-graph's result, flattened (what ``torch.onnx.export`` returns)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_leaves(self.gm(*xs)))


class ConstantsAndFallback:
    """Constant folding and float ops exported by PyTorch (see the module docstring). Uses the
    emitter's ``env``, ``fresh``, ``const``, ``float_input``, ``err``, ``nodes``, ``inits``."""

    # ----------------------------------------------------------------------------- constants
    def constant(self, node: fx.Node) -> None:
        """A parameter or buffer read by the graph: a constant, an initializer once a tensor of
        the network reads it."""
        v: Any = self.gm
        for part in str(node.target).split("."):
            v = getattr(v, part)
        self.env[node] = _T(None, kind="const", value=v.detach() if isinstance(v, torch.Tensor) else v,
                            shape=tuple(v.shape) if isinstance(v, torch.Tensor) else None)

    def foldable(self, node: fx.Node) -> bool:
        """Whether ``node`` computes from constants alone."""
        if node.op not in ("call_function", "call_method", "call_module"):
            return False
        ins = node.all_input_nodes
        if not ins and node.op != "call_function":
            return False
        return all(a in self.env and self.env[a].kind == "const" for a in ins)

    def fold(self, node: fx.Node) -> None:
        """Evaluate a node of constants once, in PyTorch."""
        args = fx.node.map_arg(node.args, lambda a: self.env[a].value)
        kwargs = fx.node.map_arg(node.kwargs, lambda a: self.env[a].value)
        if node.op == "call_module":
            fn: Any = self.gm.get_submodule(str(node.target))
        elif node.op == "call_function":
            fn = node.target
        else:
            fn, args = getattr(args[0], str(node.target)), args[1:]
        try:
            with torch.no_grad():
                v = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure is the user's model's; say where
            raise self.err(node, f"computing it from constants failed: {type(exc).__name__}: {exc}") from exc
        q = None
        if isinstance(fn, dfq_modules.FakeQuant) and fn.enabled and isinstance(v, torch.Tensor):
            q = self.qparams(node.name, fn, node)  # stored as this quantizer's codes
        self.env[node] = _T(None, kind="const", value=v, q=q,
                            shape=tuple(v.shape) if isinstance(v, torch.Tensor) else None)
        if q is not None:  # a quantized tensor of the network like the others, named after its quantizer
            self.materialize(node, node, self.env[node])

    def materialize(self, node: fx.Node, arg: fx.Node, t: _T) -> _T:
        """The initializer of a constant tensor read by ``node`` (one per constant)."""
        done = self.materialized.get(arg)
        if done is not None:
            return done
        v = t.value
        if not isinstance(v, torch.Tensor):
            raise self.err(node, f"its input {ops.describe(self.gm, arg)} is a constant {type(v).__name__}, "
                                 "not a tensor")
        v = v.detach().cpu()
        if t.q is not None:  # a quantizer's output: its codes
            codes = torch.round(v.double() / float(t.q.scale)) + t.q.zero_point
            array = codes.numpy().astype(t.q.dtype)
        elif v.is_floating_point():
            array = v.float().numpy()
        elif v.dtype == torch.bool:
            array = v.numpy()
        else:
            array = v.to(torch.int64).numpy()
        name = self.const(arg.name if t.q is None else f"{arg.name}_codes", np.ascontiguousarray(array))
        if t.q is not None:
            self.taken.discard(arg.name)
            name = self.op("Identity", [name], self.fresh(arg.name))
            self.quantized.append(name)
        out = _T(name, shape=tuple(v.shape), q=t.q)
        self.materialized[arg] = out
        return out

    # ----------------------------------------------------------------------------- PyTorch's exporter
    def torch_fallback(self, node: fx.Node, why: str) -> None:
        """Export ``node`` (with the size arithmetic of its arguments) by ``torch.onnx.export``
        and splice the result in; ``why``: the message when that fails too."""
        m = node_module(self.gm, node)
        if _is_dfq_module(m):
            raise self.err(node, why)
        sub, inputs = self._subgraph(node)
        names, examples = [], []
        for arg in inputs:
            name, t = self.float_input(node, arg)
            meta = arg.meta.get("tensor_meta")
            if t.shape is None or meta is None or not hasattr(meta, "dtype"):
                raise self.err(node, "no shape information for its inputs (pass example_inputs)")
            names.append(name)
            g = torch.Generator().manual_seed(len(examples))
            dtype = torch.float32 if t.q is not None else meta.dtype
            examples.append(torch.randn(t.shape, generator=g).to(dtype) if dtype.is_floating_point
                            else torch.zeros(t.shape, dtype=dtype))
        with torch.no_grad():
            result = sub(*examples)
        n_out = sum(1 for _ in _leaves(result))
        proto, problems = None, []
        for opset in FALLBACK_OPSETS:
            try:
                proto = self._torch_export(_Leaves(sub), examples, n_out, opset)
                break
            except Exception as exc:  # noqa: BLE001 - PyTorch's exporter raises many kinds
                problems.append(f"opset {opset}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        if proto is None:
            raise self.err(node, f"{why}; PyTorch's ONNX exporter failed too ({problems[-1]})")
        outs = self._splice(node, proto, names, n_out)
        self.fallback_nodes.append(node.name)
        log.info("exported %s through PyTorch's ONNX exporter (%s)", node.name, why.split(" (")[0])
        it = iter(outs)

        def rebuild(v: Any) -> _T:
            if isinstance(v, torch.Tensor):
                return _T(next(it), shape=tuple(v.shape))
            if isinstance(v, (tuple, list)):
                return _T(None, kind="tuple", items=tuple(rebuild(i) for i in v))
            return _T(None, kind="other")

        self.env[node] = rebuild(result)

    def _subgraph(self, node: fx.Node) -> tuple[fx.GraphModule, list[fx.Node]]:
        """``node`` as a module of its own: tensors of the network become inputs, constants
        buffers, and sizes computed from tensors are computed again from them."""
        graph, root = fx.Graph(), nn.Module()
        mapping: dict[fx.Node, Any] = {}
        inputs: list[fx.Node] = []

        def copy_op(n: fx.Node) -> fx.Node:
            target: Any = n.target
            if n.op == "call_module":
                target = f"m{len(root._modules)}"
                root.add_module(target, self.gm.get_submodule(str(n.target)))
            elif n.op not in ("call_function", "call_method"):
                raise self.err(node, f"its argument {ops.describe(self.gm, n)} cannot be recomputed")
            new = graph.create_node(n.op, target, fx.node.map_arg(n.args, copy), fx.node.map_arg(n.kwargs, copy),
                                    name=n.name)
            mapping[n] = new
            return new

        def copy(n: fx.Node) -> Any:
            if n in mapping:
                return mapping[n]
            t = self.env.get(n)
            if t is None:
                raise self.err(node, f"its input {ops.describe(self.gm, n)} is not known to the export")
            if t.kind == "tensor":
                mapping[n] = graph.placeholder(f"in{len(inputs)}")
                inputs.append(n)
            elif t.kind == "const" and isinstance(t.value, torch.Tensor):
                name = f"c{len(root._buffers)}"
                root.register_buffer(name, t.value.detach().clone())
                mapping[n] = graph.get_attr(name)
            elif t.kind == "const":
                mapping[n] = t.value
            elif t.kind == "other":  # a size: computed again from the tensors it comes from
                copy_op(n)
            else:
                raise self.err(node, f"its input {ops.describe(self.gm, n)} is a {t.kind}")
            return mapping[n]

        graph.output(copy_op(node))
        gm = fx.GraphModule(root, graph)
        gm.eval()
        return gm, inputs

    @staticmethod
    def _torch_export(module: nn.Module, examples: list[torch.Tensor], n_out: int, opset: int) -> Any:
        import onnx

        buf = io.BytesIO()
        ins, outs = [f"in{i}" for i in range(len(examples))], [f"out{j}" for j in range(n_out)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(examples), buf, opset_version=opset, dynamo=False, input_names=ins,
                              output_names=outs, dynamic_axes={n: {0: "batch"} for n in ins + outs},
                              do_constant_folding=True)
        return onnx.load_from_string(buf.getvalue())

    def _splice(self, node: fx.Node, proto: Any, names: list[str], n_out: int) -> list[str]:
        """Append the nodes and initializers of ``proto`` (renamed; its inputs ``in{i}`` read
        ``names[i]``) and return the names of its outputs ``out{j}``."""
        g = proto.graph
        rename: dict[str, str] = {"": ""}
        rename.update({f"in{i}": n for i, n in enumerate(names)})
        for j in range(n_out):
            rename[f"out{j}"] = self.fresh(node.name if n_out == 1 else f"{node.name}_{j}")
        for init in g.initializer:
            new = self.onnx.TensorProto()
            new.CopyFrom(init)
            new.name = self.fresh(f"{node.name}_{init.name.lstrip('/').replace('/', '_')}")
            rename[init.name] = new.name
            self.inits.append(new)
        for n in g.node:
            if any(a.type in (self.onnx.AttributeProto.GRAPH, self.onnx.AttributeProto.GRAPHS) for a in n.attribute):
                raise self.err(node, f"PyTorch's exporter wrote a {n.op_type} with a sub-graph")
            for o in n.output:
                if o not in rename:
                    rename[o] = self.fresh(f"{node.name}_{o.lstrip('/').replace('/', '_')}")
        for n in g.node:
            new = self.onnx.NodeProto()
            new.CopyFrom(n)
            del new.input[:]
            del new.output[:]
            new.input.extend(rename[i] for i in n.input)
            new.output.extend(rename[o] for o in n.output)
            new.name = self.fresh(f"{node.name}_{n.name.lstrip('/').replace('/', '_') or n.op_type}", self.node_names)
            self.nodes.append(new)
        for imp in proto.opset_import:
            self.opsets[imp.domain] = max(self.opsets.get(imp.domain, 0), imp.version)
        return [rename[f"out{j}"] for j in range(n_out)]
