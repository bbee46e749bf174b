"""The integer network as a golden model for other runtimes.

:func:`golden_activations` runs the integer network of :func:`dfq_gpu.to_int8` (the integer
reference kernels by default) and returns every quantized activation as the integer codes of
its quantizer (on the quantizer's own grid: ``[0, 255]`` for asymmetric 8-bit activations,
``[-127, 127]`` for symmetric ones; NCHW), keyed by the simulation's ``FakeQuant`` node names
and in execution order. :func:`compare_layers` compares another runtime's per-layer codes under
the same names (an ONNX Runtime run of :func:`dfq_gpu.export_onnx`'s graph, see
:func:`dfq_gpu.export.run_onnx`, names its quantized tensors that way) with it and finds the first
layer where they diverge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.fx as fx

from ..errors import DFQError
from ..graph.trace import node_module
from ..modules import FakeQuant
from ..quant.simulate import fused_output

__all__ = ["LayerDiff", "LayerReport", "compare_layers", "golden_activations", "quantizer_layers"]


@dataclass(frozen=True)
class LayerDiff:
    """One quantized tensor of another runtime against the integer reference."""

    name: str  # the FakeQuant node (tensor) name
    layer: str  # the node that produces it (conv, add, pool, ...), or the name itself
    numel: int
    equal_share: float  # share of codes that are equal
    max_abs_diff: int  # in codes
    diverged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layer": self.layer, "numel": self.numel, "equal_share": self.equal_share,
                "max_abs_diff": self.max_abs_diff, "diverged": self.diverged}


@dataclass(frozen=True)
class LayerReport:
    """The result of :func:`compare_layers`: ``layers`` in execution order; ``first_divergence``
    the first diverging one (``None`` if none); ``missing`` the reference tensors that the other
    runtime did not provide (not compared)."""

    layers: list[LayerDiff]
    tolerance: int
    min_equal: float
    missing: list[str] = field(default_factory=list)

    @property
    def first_divergence(self) -> Optional[LayerDiff]:
        return next((d for d in self.layers if d.diverged), None)

    @property
    def equal_share(self) -> float:
        """The share of equal codes over all compared tensors together."""
        n = sum(d.numel for d in self.layers)
        return sum(d.equal_share * d.numel for d in self.layers) / max(1, n)

    @property
    def max_abs_diff(self) -> int:
        return max((d.max_abs_diff for d in self.layers), default=0)

    @property
    def ok(self) -> bool:
        return self.first_divergence is None

    def __getitem__(self, name: str) -> LayerDiff:
        for d in self.layers:
            if d.name == name:
                return d
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {"tolerance": self.tolerance, "min_equal": self.min_equal, "equal_share": self.equal_share,
                "first_divergence": None if first is None else first.name,
                "layers": [d.to_dict() for d in self.layers], "missing": list(self.missing)}

    def __str__(self) -> str:
        lines = [f"{'tensor':<40} {'layer':<28} {'equal':>8} {'max diff':>8}"]
        for d in self.layers:
            mark = "  <-- diverges" if d.diverged else ""
            lines.append(f"{d.name:<40} {d.layer:<28} {100 * d.equal_share:7.3f}% {d.max_abs_diff:8d}{mark}")
        first = self.first_divergence
        lines.append("no divergence" if first is None else
                     f"first divergence: {first.name} (layer {first.layer}): max diff {first.max_abs_diff} codes > "
                     f"{self.tolerance} or equal share {first.equal_share:.4f} < {self.min_equal}")
        if self.missing:
            lines.append(f"not provided: {', '.join(self.missing)}")
        return "\n".join(lines)


def quantizer_layers(q: fx.GraphModule) -> dict[str, str]:
    """``{FakeQuant node name: name of the node whose output it quantizes}`` (the layer, add or
    pool in front of its fused activation; the graph input for the input quantizer)."""
    out: dict[str, str] = {}
    for n in q.graph.nodes:
        if isinstance(node_module(q, n), FakeQuant):
            out.setdefault(n.name, n.args[0].name if isinstance(n.args[0], fx.Node) else n.name)
    fused: dict[str, str] = {}
    for n in q.graph.nodes:  # graph order: a layer comes before its fused activation
        if n.op in ("call_module", "call_function", "call_method") and not isinstance(node_module(q, n), FakeQuant):
            _, fq, _ = fused_output(q, n)
            if fq is not None and fq.name not in fused:
                fused[fq.name] = n.name
    out.update(fused)
    return out


@torch.no_grad()
def golden_activations(q: fx.GraphModule, *inputs: Any, net: Any = None) -> dict[str, np.ndarray]:
    """The integer network's quantized activations as codes on each quantizer's grid.

    Args:
        q: the simulated network of :func:`dfq_gpu.quantize`.
        inputs: its inputs (float NCHW).
        net: its integer network (default: ``dfq_gpu.to_int8(q, backend="reference",
            fuse_residual=False, fuse_stem=False)``, which materializes every quantizer's
            activation; a network with fused residual adds has no entry for a fused layer's own
            quantizer, one with a fused stem none for the input quantizer).

    Returns:
        ``{FakeQuant node name: int32 array}`` (NCHW for 4-D tensors) in execution order.
    """
    from ..int8 import to_int8

    if net is None:
        net = to_int8(q, backend="reference", fuse_residual=False, fuse_stem=False)
    _, acts = net.activations(*inputs)
    steps = net.steps()
    fqs = {n.name: node_module(q, n) for n in q.graph.nodes if isinstance(node_module(q, n), FakeQuant)}
    out: dict[str, np.ndarray] = {}
    for step_name, a in acts.items():
        sq = getattr(steps.get(step_name), "sim_quantizer", "")
        fq = fqs.get(sq)
        if not sq or fq is None or sq in out:
            continue
        codes = a.to(torch.int32) + (0 if fq.symmetric else 128)  # int8 storage -> the quantizer's grid
        if codes.dim() == 4:
            codes = codes.permute(0, 3, 1, 2)  # NHWC -> NCHW
        out[sq] = codes.contiguous().cpu().numpy()
    return out


def compare_layers(outputs: Mapping[str, Any], reference: Mapping[str, Any], *, tolerance: int = 1,
                   min_equal: float = 0.0, layers: Optional[Mapping[str, str] | fx.GraphModule] = None) -> LayerReport:
    """Compare another runtime's per-layer integer codes with the integer reference.

    Args:
        outputs: ``{tensor name: codes}`` from the other runtime (arrays or tensors, any integer
            or integral float dtype, same element order as the reference: NCHW).
        reference: ``{tensor name: codes}`` in execution order, from :func:`golden_activations`.
        tolerance: a tensor diverges when some code differs by more than this.
        min_equal: ... or when fewer than this share of its codes are equal.
        layers: ``{tensor name: layer name}`` (or the simulated network, see
            :func:`quantizer_layers`) to name the producing layers in the report.

    Returns:
        A :class:`LayerReport`; ``report.first_divergence`` is the first tensor in execution order
        that diverges.
    """
    if isinstance(layers, fx.GraphModule):
        layers = quantizer_layers(layers)
    layers = layers or {}
    if tolerance < 0 or not 0.0 <= min_equal <= 1.0:
        raise DFQError(f"tolerance must be >= 0 and min_equal in [0, 1], got {tolerance} and {min_equal}")
    diffs: list[LayerDiff] = []
    missing: list[str] = []
    for name, ref in reference.items():
        if name not in outputs:
            missing.append(name)
            continue
        r = np.asarray(ref.cpu() if isinstance(ref, torch.Tensor) else ref).astype(np.int64)
        o = outputs[name]
        o = np.asarray(o.detach().cpu() if isinstance(o, torch.Tensor) else o)
        if o.size != r.size:
            raise DFQError(f"tensor '{name}' has {o.size} values, the reference {r.size} (shape {r.shape})")
        if o.dtype.kind == "f":
            if not np.all(np.isfinite(o)) or not np.all(o == np.rint(o)):
                raise DFQError(f"tensor '{name}' holds non-integer values: pass integer codes (QuantizeLinear "
                               "outputs), not dequantized floats")
            o = np.rint(o)
        d = np.abs(o.reshape(r.shape).astype(np.int64) - r)
        n = int(d.size)
        equal = float((d == 0).sum()) / max(1, n)
        mx = int(d.max()) if n else 0
        diffs.append(LayerDiff(name, str(layers.get(name, name)), n, equal, mx, mx > tolerance or equal < min_equal))
    return LayerReport(diffs, int(tolerance), float(min_equal), missing)
