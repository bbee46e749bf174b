"""Chapter 3, cross-layer equalization: :class:`CLEStepper` runs the package's equalization pass
one sweep at a time and records every intermediate state; :func:`plot_cle_region` and
:class:`CLEExplorer` show a region's ranges and scales sweep by sweep."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..config import DFQConfig
from . import _widgets as ui
from .common import EVAL_BATCH

__all__ = ["CLESnapshot", "CLEStepper", "plot_cle_region", "CLEExplorer", "EqualizationExplorer"]


@dataclass
class CLESnapshot:
    """Per-layer ranges after a number of sweeps: output- and input-channel ``max |W|``."""

    sweep: int
    out_ranges: dict[str, np.ndarray]
    in_ranges: dict[str, np.ndarray]
    total_scales: list[np.ndarray]  # the product of all scales so far, per region
    last_scales: list[np.ndarray] = field(default_factory=list)  # the scales of this sweep, per region


class CLEStepper:
    """Cross-layer equalization sweep by sweep, recording every intermediate state.

    The network is prepared without equalization (BN folded, ReLU6 as in ``relu6``); then each
    :meth:`step` takes the next sweep of the package's own equalization pass,
    :func:`dfq_gpu.passes.equalize.equalization_sweeps`, over the regions of
    :func:`dfq_gpu.graph.regions.find_regions`: per region ``s_i = sqrt(r_src[i] / r_dst[i])``,
    where ``r_src`` is channel ``i``'s range over the sources' outputs and ``r_dst`` over the
    sinks' inputs, each relative to its tensor's largest channel. ``objective="weights"`` is the
    paper's objective (``DFQConfig``'s default, ``"weights+acts"``, also counts the data-free
    activation ranges); channels below ``dead_threshold`` are left alone and ``bound`` caps the
    total scale, the ``cle_*`` fields of :class:`~dfq_gpu.DFQConfig`.
    """

    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], *, relu6: str = "clip",
                 residuals: bool = True, bound: float | None = None, dead_threshold: float = 1e-3,
                 input_range: tuple[float, float] | None = None, objective: str = "weights") -> None:
        import dataclasses

        from ..api import prepared_workspace
        from ..graph.regions import find_regions
        from ..passes.equalize import equalization_sweeps

        cfg = DFQConfig(equalize=False, absorb_bias=False, relu6=relu6, act_bits=None, bias_correction="none",
                        input_range=input_range)
        ws = prepared_workspace(model, example_inputs, cfg)
        self.gm = ws.gm
        self.report = ws.report
        self.regions, self.skipped = find_regions(self.gm, residuals=residuals)
        cle = cfg.replace(cle_objective=objective, cle_scale_bound=bound, cle_dead_threshold=dead_threshold,
                          equalize_residuals=residuals, cle_max_iter=10_000, cle_tol=1e-12)
        self._sweeps = equalization_sweeps(dataclasses.replace(ws, cfg=cle), self.regions)
        self.bound = bound
        self.dead_threshold = dead_threshold
        self.history: list[CLESnapshot] = [self._snapshot(0, [np.ones(r.channels) for r in self.regions], [])]

    def _snapshot(self, sweep: int, total: Sequence[np.ndarray], last: Sequence[np.ndarray]) -> CLESnapshot:
        from ..passes.base import in_channel_absmax, out_channel_absmax

        outs, ins = {}, {}
        for name in self.report.layers:
            m = self.gm.get_submodule(name)
            outs[name] = out_channel_absmax(m)
            ins[name] = in_channel_absmax(m)
        for r in self.regions:  # sinks that are not layers (batch norms left in the network)
            for name in r.sinks:
                if name not in ins:
                    ins[name] = in_channel_absmax(self.gm.get_submodule(name))
        return CLESnapshot(sweep, outs, ins, [t.copy() for t in total], [s.copy() for s in last])

    def region_ranges(self, k: int, sweep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(r_src, r_dst)`` of region ``k`` after ``sweep`` sweeps (relative to each tensor's max),
        as the package's sweep computes them (:func:`dfq_gpu.passes.equalize.ranges_of`)."""
        from ..graph.regions import is_bn_sink
        from ..passes.equalize import ranges_of

        snap = self.history[-1 if sweep is None else sweep]
        r = self.regions[k]
        return ranges_of(r, snap.out_ranges, snap.in_ranges,
                         {n for n in r.sinks if is_bn_sink(self.gm.get_submodule(n))})

    def step(self) -> float:
        """One sweep over all regions (the package's next one); returns its largest ``|log s|``
        (0 once the scales no longer change at all, when no sweep is added)."""
        sweep = next(self._sweeps, None)
        if sweep is None:
            return 0.0
        self.history.append(self._snapshot(len(self.history), sweep.total, sweep.scales))
        return sweep.worst

    def run(self, sweeps: int = 20, tol: float = 1e-3) -> list[float]:
        """Up to ``sweeps`` sweeps, stopping when no scale changes by more than ``tol``; returns
        the largest ``|log s|`` of each sweep."""
        changes = []
        for _ in range(sweeps):
            changes.append(self.step())
            if changes[-1] <= np.log1p(tol):
                break
        self.changes = changes
        return changes

    def region_label(self, k: int) -> str:
        r = self.regions[k]
        tag = " (residual)" if r.residual else ""
        return f"{k}: {r.name} [{r.channels} ch]{tag}"

    def precision(self, k: int, sweep: int | None = None) -> tuple[float, float]:
        """Mean per-channel precision ``p_i = r_i / R`` of region ``k``'s source outputs and of its
        sink inputs (each channel's range relative to its tensor's largest)."""
        a, b = self.region_ranges(k, sweep)
        return float(a.mean()), float(b.mean())

    def objective(self, k: int, sweep: int | None = None) -> float:
        """The paper's objective for region ``k``: the sum over channels of the *product* of the two
        sides' precisions, ``sum_i p1_i p2_i`` (maximal, for a pair, when ``s_i = sqrt(r1_i / r2_i)``)."""
        a, b = self.region_ranges(k, sweep)
        return float(np.sum(a * b))


def plot_cle_region(stepper: Any, k: int, sweep: int) -> Any:
    """Region ``k`` of a :class:`CLEStepper` after ``sweep`` sweeps: the sources'
    output-channel ranges, the sinks' input-channel ranges (both before in grey), the total
    scales, and the convergence of all regions."""
    plt = ui.plt()
    a0, b0 = stepper.region_ranges(k, 0)
    a, b = stepper.region_ranges(k, sweep)
    s = stepper.history[sweep].total_scales[k]
    r = stepper.regions[k]
    ch = np.arange(len(a))
    fig, ax = plt.subplots(1, 4, figsize=(15, 3.3))
    for axis, before, after, what in ((ax[0], a0, a, "outputs of " + "+".join(r.srcs)),
                                      (ax[1], b0, b, "inputs of " + "+".join(r.sinks))):
        axis.bar(ch, after, color=ui.BLUE, width=0.8, label=f"sweep {sweep}")
        axis.plot(ch, before, "_", color="k", ms=max(2.0, min(8.0, 300.0 / len(ch))), mew=1.5, label="sweep 0")
        axis.set_ylim(0, 1.05)
        axis.set_xlabel("channel")
        axis.set_ylabel("range / tensor max")
        axis.set_title(what if len(what) < 48 else what[:45] + "...", fontsize="small")
        axis.legend(fontsize="x-small")
    ax[2].semilogy(ch, s, ".", color=ui.ORANGE)
    ax[2].axhline(1.0, color="k", lw=0.6)
    _plain_log_axis(ax[2])
    ax[2].set_xlabel("channel")
    ax[2].set_title("total scale s (sources / s, sinks * s)", fontsize="small")
    changes = getattr(stepper, "changes", None) or []
    if changes:
        ax[3].semilogy(np.arange(1, len(changes) + 1), changes, "o-", color=ui.BLUE, ms=3)
        if sweep >= 1:
            ax[3].plot([sweep], [changes[min(sweep, len(changes)) - 1]], "o", color=ui.RED)
    ax[3].set_xlabel("sweep")
    ax[3].set_title("largest |log s| of each sweep (all regions)", fontsize="small")
    fig.tight_layout()
    return fig


def _plain_log_axis(ax: Any) -> None:
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


class CLEExplorer(ui.Explorer):
    """Step through the sweeps of a :class:`CLEStepper` (already run) and pick the region."""

    def __init__(self, stepper: Any, region: int = 0, sweep: int | None = None) -> None:
        self.stepper = stepper
        opts = [(stepper.region_label(k), k) for k in range(len(stepper.regions))]
        self.region = ui.control("Dropdown", options=opts, value=region, description="region",
                                 layout=ui.widgets().Layout(width="520px"))
        last = len(stepper.history) - 1
        self.sweep = ui.control("IntSlider", min=0, max=last, value=last if sweep is None else sweep,
                                description="sweep")
        self._init_ui([self.region, self.sweep])
        for c in (self.region, self.sweep):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.region.value, self.sweep.value)

    def update(self, region: int, sweep: int) -> dict[str, Any]:
        res: dict[str, Any] = {}
        with self.busy("plotting"):
            st = self.stepper
            p0, p = st.precision(region, 0), st.precision(region, sweep)
            o0, o = st.objective(region, 0), st.objective(region, sweep)
            s = st.history[sweep].total_scales[region]
            self.text.value = (
                f"after <b>{sweep}</b> sweeps: the paper's objective &sum;<sub>i</sub> p1<sub>i</sub> p2<sub>i</sub> "
                f"(product of the two sides' channel precisions r<sub>i</sub>/R) {o0:.3f} &rarr; <b>{o:.3f}</b>; "
                f"mean precision of the sources {p0[0]:.3f} &rarr; {p[0]:.3f}, of the sinks {p0[1]:.3f} &rarr; "
                f"{p[1]:.3f}; scales from {s.min():.3g} to {s.max():.3g}" + self._extra_text())
            ui.show_figure(self.out, plot_cle_region(st, region, sweep))
            res = {"precision_before": p0, "precision": p, "objective_before": o0, "objective": o, "scales": s}
        return res

    def _extra_text(self) -> str:
        return ""


class EqualizationExplorer(CLEExplorer):
    """:class:`CLEExplorer` that reruns the real equalization whenever its guards change: the
    ReLU6 mode, the objective, the scale bound and the dead-channel threshold (the ``relu6`` and
    ``cle_*`` fields of :class:`~dfq_gpu.DFQConfig`). Each setting runs a fresh
    :class:`CLEStepper` to convergence (the package's own sweeps) and quantizes the network with
    the same settings (8-bit weights and activations, one scale per tensor, CLE only: no
    absorption or bias correction) to measure its logit SQNR against FP32 on ``probe`` images.
    Results are cached per setting (a few seconds each on two CPU cores)."""

    BOUNDS = (("none", None), ("4", 4.0), ("16", 16.0), ("64", 64.0))
    DEAD = (("0 (no guard)", 0.0), ("1e-3", 1e-3), ("1e-2", 1e-2))

    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], probe: torch.Tensor, *,
                 input_range: tuple[float, float] | None = None, relu6: str = "clip", objective: str = "weights",
                 bound: float | None = None, dead_threshold: float = 1e-3, region: int = 0, sweep: int | None = None,
                 sweeps: int = 20, stepper: CLEStepper | None = None) -> None:
        from ..evaluate import collect_outputs

        self.model, self.example, self.probe = model, example_inputs, probe
        self.input_range, self.sweeps = input_range, sweeps
        self.reference = collect_outputs(model, probe)
        self.cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        key = (relu6, objective, bound, dead_threshold)
        if stepper is not None:  # an already-run stepper with exactly these settings
            self.cache[key] = {"stepper": stepper}
        self.stepper = self._result(key)["stepper"]
        super().__init__(self.stepper, region=region, sweep=sweep)
        W = ui.widgets()
        self.relu6 = ui.control("ToggleButtons", options=["clip", "replace", "keep"], value=relu6, description="ReLU6")
        self.objective_mode = ui.control("ToggleButtons", options=["weights", "weights+acts"], value=objective,
                                         description="objective")
        self.bound = ui.control("Dropdown", options=list(self.BOUNDS), value=bound, description="scale bound",
                                layout=W.Layout(width="180px"))
        self.dead = ui.control("Dropdown", options=list(self.DEAD), value=dead_threshold, description="dead threshold",
                               layout=W.Layout(width="220px"))
        settings = [self.relu6, self.objective_mode, self.bound, self.dead]
        self._init_ui([], rows=[settings[:2], settings[2:], [self.region], [self.sweep]])
        for c in settings:
            c.observe(lambda _change: self.rerun(), names="value")
        self.refresh()

    def settings(self) -> tuple[Any, ...]:
        return (self.relu6.value, self.objective_mode.value, self.bound.value, self.dead.value)

    def _result(self, key: tuple[Any, ...], advance: Any = None) -> dict[str, Any]:
        from ..api import quantize
        from ..evaluate import evaluate

        res = self.cache.setdefault(key, {})
        relu6, objective, bound, dead = key
        if "stepper" not in res:
            if advance:
                advance("equalizing")
            st = CLEStepper(self.model, self.example, relu6=relu6, bound=bound, dead_threshold=dead,
                            input_range=self.input_range, objective=objective)
            st.run(self.sweeps)
            res["stepper"] = st
        if "metrics" not in res:
            if advance:
                advance("quantizing W8A8 and measuring the SQNR")
            cfg = DFQConfig(relu6=relu6, cle_objective=objective, cle_scale_bound=bound, cle_dead_threshold=dead,
                            absorb_bias=False, bias_correction="none", input_range=self.input_range)
            q = quantize(self.model, self.example, cfg)
            res["metrics"] = evaluate(q, self.probe, reference=self.reference, batch_size=EVAL_BATCH, progress=False)
            res["network"] = q
        return res

    def network(self, **settings: Any) -> nn.Module:
        """The W8A8 network quantized with the widget's settings (what the SQNR in its text measures),
        or with other ``relu6``, ``objective``, ``bound`` or ``dead_threshold`` (computed once, cached)."""
        names = ("relu6", "objective", "bound", "dead_threshold")
        unknown = set(settings) - set(names)
        if unknown:
            raise TypeError(f"network(): unknown settings {sorted(unknown)}; the settings are {list(names)}")
        key = tuple(settings.get(n, v) for n, v in zip(names, self.settings()))
        return self._result(key)["network"]

    def rerun(self) -> dict[str, Any]:
        """Equalize (and quantize) with the current settings, then redraw."""
        out: dict[str, Any] = {}
        with self.busy("rerunning the equalization", steps=2) as advance:
            res = self._result(self.settings(), advance)
            self.stepper = res["stepper"]
            self._quiet = True
            try:
                keep = self.region.value or 0
                self.region.options = [(self.stepper.region_label(k), k) for k in range(len(self.stepper.regions))]
                self.region.value = min(keep, len(self.stepper.regions) - 1)
                self.sweep.max = len(self.stepper.history) - 1
                self.sweep.value = self.sweep.max
            finally:
                self._quiet = False
            out = res
        self.refresh()
        return out

    def refresh(self) -> None:
        if getattr(self, "_quiet", False) or not hasattr(self, "relu6"):
            return
        super().refresh()

    def _extra_text(self) -> str:
        m = self._result(self.settings())["metrics"]
        return (f"<br>W8A8 network with these CLE settings (no absorption or bias correction), against FP32 on "
                f"{m.n} images: logit SQNR <b>{m.sqnr_db:.2f} dB</b>, agreement {m.agreement:.3f}")
