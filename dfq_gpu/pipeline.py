"""The recipe as two declared lists of passes, run by one runner.

Every pass has one signature, ``run(state)``, says when the config asks for it (``when``) and
what it needs from passes before it (``needs``, resources that earlier passes ``provide``). The
runner runs the lists in order, skips a pass the config switches off, skips with the reason a
pass whose needs are not met (bias absorption without equalization regions), and records every
pass in ``report.passes`` (ran or skipped, why, seconds). Read :data:`PREPARE` and
:data:`QUANTIZE` as the paper's recipe:

    PREPARE   fold BN -> ReLU6 -> observe the example inputs -> equalize -> absorb biases
    QUANTIZE  statistics -> (float copy) -> quantize weights -> analytic bias correction
              -> (calibrate ranges) -> activation quantizers -> (empirical bias correction)
              -> biases onto the int32 grid -> integer arithmetic -> report the quantizers
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch.fx as fx

from .config import DFQConfig
from .graph import stats as st
from .passes.absorb import absorb_biases
from .passes.base import Workspace, out_channel_minmax
from .passes.bn_fold import fold_batch_norms
from .passes.equalize import equalize
from .passes.relu6 import handle_relu6
from .quant.bias_correction import analytic_bias_correction, empirical_bias_correction
from .graph.trace import node_module
from .modules import QUANTIZED_LAYER_TYPES
from .nn import FakeQuant
from .quant.simulate import (act_quant_points, calibrate_ranges, finalize_integer_simulation, input_quantizer,
                             insert_act_quantizers, quantize_weights, round_biases)

__all__ = ["State", "Pass", "PREPARE", "QUANTIZE", "RESOURCES", "run_passes"]

#: What passes provide to later ones, as a reader would name it.
RESOURCES = {
    "bn_stats": "batch-norm statistics",
    "observed": "statistics of the example inputs",
    "regions": "equalization regions",
    "stats": "activation statistics",
    "float_copy": "a float copy of the network",
    "float_weights": "the float weights",
    "data": "data",
    "act_quantizers": "activation quantizers",
}


@dataclass
class State:
    """What the passes of one run share: the workspace and what earlier passes computed."""

    ws: Workspace
    data: Optional[Iterable[Any]] = None
    stats: dict[str, st.NodeStats] = field(default_factory=dict)
    float_gm: Optional[fx.GraphModule] = None
    float_weights: dict[str, Any] = field(default_factory=dict)
    calibrated: Optional[dict[str, tuple[float, float]]] = None
    #: passes that use data run with the caller's torch thread count (see ``api._data_threads``)
    data_threads: Callable[[], Any] = field(default=lambda: _NoContext())

    @property
    def cfg(self) -> DFQConfig:
        return self.ws.cfg


class _NoContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


@dataclass(frozen=True)
class Pass:
    """One step of the recipe.

    ``when`` says whether the config asks for it and ``off`` how to say that it does not (the
    config field that switched it off); ``needs`` and ``provides`` name :data:`RESOURCES`.
    """

    name: str
    run: Callable[[State], None]
    when: Callable[[DFQConfig], bool] = lambda cfg: True
    off: str = ""
    needs: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()


# ------------------------------------------------------------------------------ prepare
def _fold(s: State) -> None:
    fold_batch_norms(s.ws)


def _record_folded_ranges(s: State) -> None:
    for name, rec in s.ws.report.layers.items():
        rec.range_folded = out_channel_minmax(s.ws.module(name))
        rec.range_equalized = rec.range_folded


def _relu6(s: State) -> None:
    handle_relu6(s.ws)
    s.ws.gm.recompile()


def _observe(s: State) -> None:
    s.ws.observed = st.observe(s.ws.gm, s.ws.example_inputs)


def _equalize(s: State) -> None:
    equalize(s.ws)


def _absorb(s: State) -> None:
    absorb_biases(s.ws)


PREPARE: tuple[Pass, ...] = (
    Pass("fold_bn", _fold, lambda c: c.fold_bn, "fold_bn=False", provides=("bn_stats",)),
    Pass("record_folded_ranges", _record_folded_ranges),
    Pass("relu6", _relu6),
    Pass("observe", _observe, provides=("observed",)),
    Pass("equalize", _equalize, lambda c: c.equalize, "equalize=False", provides=("regions",)),
    Pass("absorb", _absorb, lambda c: c.absorb_bias, "absorb_bias=False", needs=("regions",)),
)


# ------------------------------------------------------------------------------ quantize
def _statistics(s: State) -> None:
    c = s.cfg
    s.stats = st.propagate(s.ws.gm, s.ws.bn_stats, s.ws.observed, c.act_range_sigmas, c.input_range)


def _float_copy(s: State) -> None:
    s.float_gm = copy.deepcopy(s.ws.gm)


def _quantize_weights(s: State) -> None:
    s.float_weights = quantize_weights(s.ws)


def _analytic_bc(s: State) -> None:
    analytic_bias_correction(s.ws, s.stats, s.float_weights)


def _calibrate(s: State) -> None:
    c = s.cfg
    assert s.float_gm is not None and s.data is not None
    names = [p.name for p in act_quant_points(s.float_gm, c.quantize_output)]
    with s.data_threads():
        s.calibrated = calibrate_ranges(s.float_gm, names, s.data, c.calibration_batches, c.act_range_method,
                                        c.act_bits, c.act_symmetric)


def _act_quantizers(s: State) -> None:
    insert_act_quantizers(s.ws, s.stats, s.calibrated)


def _empirical_bc(s: State) -> None:
    assert s.float_gm is not None and s.data is not None
    with s.data_threads():
        empirical_bias_correction(s.ws, s.float_gm, s.data)


def _round_biases(s: State) -> None:
    round_biases(s.ws)


def _integer(s: State) -> None:
    finalize_integer_simulation(s.ws)


def _record(s: State) -> None:
    """Each layer's input and output quantizer in its report record."""
    gm = s.ws.gm
    for node in gm.graph.nodes:
        m = node_module(gm, node)
        rec = s.ws.report.layers.get(str(node.target)) if isinstance(m, QUANTIZED_LAYER_TYPES) else None
        if rec is None:
            continue
        fq = input_quantizer(gm, node)
        if fq is not None:
            rec.act_in = _quantizer_record(fq)
        # output quantizer: directly after, or after a fused activation
        cur = node
        for _ in range(2):
            users = list(cur.users)
            if len(users) != 1:
                break
            um = node_module(gm, users[0])
            if isinstance(um, FakeQuant):
                rec.act_out = _quantizer_record(um)
                break
            cur = users[0]


def _quantizer_record(fq: FakeQuant) -> dict[str, Any]:
    lo, hi = fq.float_range
    return {"scale": float(fq.scale), "zero_point": int(fq.zero_point), "lo": lo, "hi": hi, "source": fq.source}


def _calibrating(c: DFQConfig) -> bool:
    return c.act_bits is not None and c.act_ranges == "calibrate"


def _acts(c: DFQConfig) -> bool:
    return c.act_bits is not None


QUANTIZE: tuple[Pass, ...] = (
    Pass("statistics", _statistics, provides=("stats",)),
    Pass("float_copy", _float_copy, lambda c: c.bias_correction == "empirical" or _calibrating(c),
         "no pass uses data", provides=("float_copy",)),
    Pass("quantize_weights", _quantize_weights, provides=("float_weights",)),
    Pass("analytic_bias_correction", _analytic_bc, lambda c: c.bias_correction == "analytic",
         "bias_correction is not 'analytic'", needs=("stats", "float_weights")),
    Pass("calibrate_ranges", _calibrate, _calibrating, "act_ranges is not 'calibrate'",
         needs=("float_copy", "data")),
    Pass("act_quantizers", _act_quantizers, _acts, "act_bits=None", needs=("stats",),
         provides=("act_quantizers",)),
    Pass("empirical_bias_correction", _empirical_bc, lambda c: c.bias_correction == "empirical",
         "bias_correction is not 'empirical'", needs=("float_copy", "data")),
    Pass("round_biases", _round_biases, _acts, "act_bits=None", needs=("act_quantizers",)),
    Pass("integer_arithmetic", _integer, _acts, "act_bits=None", needs=("act_quantizers",)),
    Pass("record_act_quant", _record),
)


# ------------------------------------------------------------------------------ runner
def _missing_reason(need: str, passes: Sequence[Pass], cfg: DFQConfig) -> str:
    """Why ``need`` is not there: the config switch of the pass that would have provided it."""
    for p in passes:
        if need in p.provides and not p.when(cfg):
            return p.off
    return "nothing before it provides it"


#: How the report says that a pass was skipped for a missing need (kept as the text it always had).
_NEEDS_TEXT = {"absorb": "bias absorption"}


def run_passes(passes: Sequence[Pass], state: State, have: set[str] | None = None) -> set[str]:
    """Run ``passes`` in order on ``state``; returns the resources available afterwards.

    ``have`` holds the resources available before the first pass (e.g. ``{"data"}`` when the
    caller passed data, or what an earlier list provided). Every pass is recorded in
    ``state.ws.report.passes``.
    """
    have = set() if have is None else set(have)
    report, cfg = state.ws.report, state.cfg
    for p in passes:
        entry: dict[str, Any] = {"name": p.name}
        if not p.when(cfg):
            entry.update(status="off", why=p.off)
        else:
            missing = [n for n in p.needs if n not in have]
            if missing:
                why = "; ".join(f"needs {RESOURCES[n]} ({_missing_reason(n, passes, cfg)})" for n in missing)
                entry.update(status="skipped", why=why)
                report.step(f"{_NEEDS_TEXT.get(p.name, p.name)} needs "
                            f"{' and '.join(RESOURCES[n] for n in missing)}; skipped because "
                            f"{', '.join(_missing_reason(n, passes, cfg) for n in missing)}")
            else:
                t0 = time.perf_counter()
                p.run(state)
                have.update(p.provides)
                entry.update(status="ran", seconds=time.perf_counter() - t0)
        report.passes.append(entry)
    return have
