"""Step-by-step comparison of an integer network with the simulation it was built from.

The simulation computes with the integer network's arithmetic (``dfq_gpu.quant.requant``), so
every step of the integer network reproduces the simulation's integers exactly and the outputs
are bit-identical; :func:`compare_with_simulation` checks it step by step and, where a network
was changed after quantization (``dfq_gpu.quant.simulate.stale_integer_steps``), shows where the
two part. With ``teacher_forcing`` every step receives the simulation's own quantized inputs
(the outputs of the simulation's ``FakeQuant`` nodes, as int8), so the difference it reports for
a step is that step's own difference; without it, differences propagate from step to step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from ..graph.trace import node_module
from ..nn import FakeQuant
from .convert import Int8Network, _act_offset

__all__ = ["StepAgreement", "compare_with_simulation", "simulation_int8_activations"]


@dataclass(frozen=True)
class StepAgreement:
    """How one int8 activation compares with the simulation's quantized values."""

    numel: int
    mismatches: int  # elements that differ
    max_abs_diff: int  # in quantization steps

    @property
    def mismatch_fraction(self) -> float:
        return self.mismatches / max(1, self.numel)


def _as_int8(fq: FakeQuant, t: torch.Tensor) -> torch.Tensor:
    """The simulation's quantized values ``t = (q - z) s`` as the int8 tensor of the integer
    network (NHWC when 4-D)."""
    q = torch.round(t.to(torch.float32) * torch.reciprocal(fq.scale.to(torch.float32)))
    q = q + fq.zero_point.to(torch.float32) - _act_offset(fq.symmetric)
    q = q.to(torch.int8)
    return q.permute(0, 2, 3, 1).contiguous() if q.dim() == 4 else q.contiguous()


@torch.no_grad()
def simulation_int8_activations(sim: fx.GraphModule, *inputs: Any) -> dict[str, torch.Tensor]:
    """Run the simulation and return the output of each ``FakeQuant`` node as int8 (by node name)."""
    out: dict[str, torch.Tensor] = {}

    class _Rec(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            res = super().run_node(n)
            m = node_module(sim, n)
            if isinstance(m, FakeQuant) and isinstance(res, torch.Tensor):
                out[n.name] = _as_int8(m, res)
            return res

    _Rec(sim).run(*inputs)
    return out


@torch.no_grad()
def compare_with_simulation(net: Int8Network, sim: fx.GraphModule, *inputs: Any,
                            teacher_forcing: bool = True) -> dict[str, StepAgreement]:
    """Compare every int8 activation of ``net`` with the simulation's on the same inputs.

    Args:
        net: the network returned by :func:`dfq_gpu.to_int8` for ``sim``.
        sim: the simulated quantized model (from :func:`dfq_gpu.quantize`).
        inputs: the network inputs (float, NCHW).
        teacher_forcing: feed each step the simulation's quantized inputs instead of the integer
            network's own, so that differences do not propagate from step to step.

    Returns:
        ``{step name: StepAgreement}`` for each step producing a new quantized tensor, in graph
        order.
    """
    ref = simulation_int8_activations(sim, *inputs)
    steps = net.steps()
    result: dict[str, StepAgreement] = {}

    class _Forced(fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            res = super().call_module(target, args, kwargs)
            name = str(target)
            step = steps.get(name)
            sq = getattr(step, "sim_quantizer", "")
            if sq and sq in ref and isinstance(res, torch.Tensor) and res.dtype == torch.int8:
                real = step.logical(res)  # without the extra channels of a padded output
                want = ref[sq].to(res.device).reshape(real.shape)
                diff = (real.to(torch.int32) - want.to(torch.int32)).abs()
                result[name] = StepAgreement(numel=diff.numel(), mismatches=int((diff != 0).sum()),
                                             max_abs_diff=int(diff.max()) if diff.numel() else 0)
                if teacher_forcing:
                    if step.nchw_output and res.dim() == 4:  # the step's own dimension order
                        return want.permute(0, 3, 1, 2).contiguous()
                    return want if real is res else torch.cat([want, res[..., want.shape[-1]:]], dim=-1)
            return res

    _Forced(net.net).run(*inputs)
    return result
