"""Which quantizers hurt: per-quantizer sensitivity, and automatic float fallback.

:func:`sensitivity` measures, for every quantizer of a simulated network (the weights of each
quantized layer and each activation quantizer, separately), the network's output SQNR against
the FP32 network when **only that quantizer is on** (the noise it adds alone) and when **only
it is off** (what keeping it in float would give back). It is data-free by default: the inputs
are synthetic images drawn from the input statistics (:func:`synthetic_inputs`).

:func:`quantize_with_fallback` keeps the fewest quantizers in float that reach a target SQNR:
it ranks them by the SQNR the network reaches with only that quantizer off, then keeps them in
float one at a time (a layer's weights through ``skip_layers``, an activation quantizer by
disabling it), re-quantizing and measuring, until the target is met.

How a quantizer is turned off:

- activations: :class:`~dfq_gpu.nn.FakeQuant` has an ``enabled`` flag;
- weights: the layer computes with its float weights and bias **after** :func:`dfq_gpu.prepare`
  (BN folded, equalized, biases absorbed: the network the quantizer was applied to), taken from
  the prepared network of the same model and config, whose layers have the same names. Bias
  correction and the rounding of the bias to the integer grid belong to the quantized weights and
  are turned off with them.

The measurements run on a copy of the network in the float simulation (quantize-dequantize
everywhere, float accumulators) instead of the integer arithmetic that :func:`dfq_gpu.quantize`
switches on at the end: a quantizer cannot be turned off in the integer arithmetic, and the two
differ by rare one-step rounding ties (``all_on_db`` of the result is the float simulation's
SQNR with every quantizer on). The reference is the prepared FP32 network; with every quantizer
off the copy computes exactly that network (``all_off_db`` is ``inf``).

Cost: two forward passes per quantizer and batch, each starting at the quantizer's node (the
values before it are those of the all-off or all-on run, kept per batch).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .api import prepare, quantize
from .config import DFQConfig
from .errors import DFQError
from .evaluate import sqnr_per_sample
from .modules import QConv2d, QLinear
from .nn import FakeQuant
from .quant.simulate import iter_input_batches, make_integer_exact

__all__ = ["SensitivityRow", "Sensitivity", "sensitivity", "synthetic_inputs", "quantize_with_fallback"]

log = logging.getLogger(__name__)

KINDS = ("weights", "activations")
RANK_BY = ("only_on", "only_off")
_CAP_DB = 300.0  # a sample computed exactly counts as 300 dB in a mean with inexact ones (as in evaluate)

Batch = tuple[torch.Tensor, ...]


# =============================================================================================
# Result
# =============================================================================================
@dataclass(frozen=True)
class SensitivityRow:
    """One quantizer: ``name`` is the layer's name for weights, the ``FakeQuant`` module's name
    for activations (``node``: the graph node whose output it quantizes)."""

    name: str
    kind: str  # "weights" or "activations"
    only_on_db: float  # output SQNR with only this quantizer on
    only_off_db: float  # output SQNR with every quantizer on but this one
    node: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "only_on_db": _num(self.only_on_db),
                "only_off_db": _num(self.only_off_db), "node": self.node}


def _num(v: float) -> float | str | None:
    return None if math.isnan(v) else v if math.isfinite(v) else str(v)


def _fmt(v: float) -> str:
    return f"{v:.2f}" if math.isfinite(v) else str(v)


@dataclass
class Sensitivity:
    """Per-quantizer sensitivity of a quantized network, most sensitive first.

    ``rows`` are ranked by ``rank_by``: ``"only_on"`` (lowest SQNR with only that quantizer on
    first: the quantizer that adds the most noise) or ``"only_off"`` (highest SQNR with only that
    quantizer off first: the one whose float fallback gives back the most). ``all_on_db`` and
    ``all_off_db`` are the SQNR with every quantizer on / off (``inf``: exactly the FP32 network).
    SQNR: the mean over samples of ``10 log10(|ref|^2 / |ref - out|^2)`` of the outputs, as in
    :func:`dfq_gpu.evaluate`.
    """

    rows: list[SensitivityRow]
    all_on_db: float
    all_off_db: float
    n_samples: int
    data: str  # what the inputs were
    rank_by: str = "only_on"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def most_sensitive(self, k: int = 10, kind: str | None = None) -> list[SensitivityRow]:
        """The ``k`` most sensitive quantizers, of one ``kind`` (``"weights"``/``"activations"``) or all."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
        return [r for r in self.rows if kind is None or r.kind == kind][:max(0, int(k))]

    def row(self, name: str, kind: str = "weights") -> SensitivityRow:
        """The row of quantizer ``name`` of ``kind`` (``KeyError`` if there is none)."""
        for r in self.rows:
            if r.name == name and r.kind == kind:
                return r
        raise KeyError(f"no {kind} quantizer {name!r} in the sensitivity table")

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serializable dict (``inf`` as the string ``"inf"``)."""
        return {"rank_by": self.rank_by, "all_on_db": _num(self.all_on_db), "all_off_db": _num(self.all_off_db),
                "n_samples": self.n_samples, "data": self.data, "seconds": self.seconds, "notes": list(self.notes),
                "rows": [r.to_dict() for r in self.rows]}

    def table(self, k: int | None = None, kind: str | None = None) -> str:
        """The ranked rows as a text table (the first ``k``, of one ``kind``)."""
        rows = self.most_sensitive(len(self.rows) if k is None else k, kind)
        head = ["#", "quantizer", "kind", "only on dB", "only off dB"]
        cells = [[str(i + 1), r.name, r.kind, _fmt(r.only_on_db), _fmt(r.only_off_db)] for i, r in enumerate(rows)]
        widths = [max(len(h), *(len(c[j]) for c in cells)) if cells else len(h) for j, h in enumerate(head)]
        lines = ["  " + " | ".join(h.ljust(w) for h, w in zip(head, widths)),
                 "  " + "-+-".join("-" * w for w in widths)]
        lines += ["  " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Sensitivity: {len(self.rows)} quantizers, ranked by {self.rank_by}; all on {_fmt(self.all_on_db)} "
                f"dB, all off {_fmt(self.all_off_db)} dB; {self.n_samples} samples ({self.data})\n" + self.table())

    def plot(self, ax: Any = None, k: int = 15, kind: str | None = None) -> Any:
        """Horizontal bar chart of the ``k`` most sensitive quantizers: SQNR with only it on, and
        with only it off, against the all-on SQNR. Returns the matplotlib axes."""
        import matplotlib.pyplot as plt

        rows = self.most_sensitive(k, kind)
        if ax is None:
            _, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
        cap = lambda v: v if math.isfinite(v) else _CAP_DB  # noqa: E731
        ys = list(range(len(rows)))[::-1]
        labels = [f"{r.name} ({'W' if r.kind == 'weights' else 'A'})" for r in rows]
        ax.barh([y + 0.2 for y in ys], [cap(r.only_on_db) for r in rows], height=0.4, label="only this on")
        ax.barh([y - 0.2 for y in ys], [cap(r.only_off_db) for r in rows], height=0.4, label="only this off")
        if math.isfinite(self.all_on_db):
            ax.axvline(self.all_on_db, color="k", lw=0.8, ls="--", label="all on")
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_xlabel("output SQNR vs FP32 (dB)")
        ax.set_title(f"most sensitive quantizers (ranked by {self.rank_by})")
        ax.legend(fontsize=7)
        return ax


# =============================================================================================
# Inputs
# =============================================================================================
def _smooth_noise(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Standard-normal noise per sample and channel, spatially correlated over the last two dims
    (a sum of white noise upsampled from 1/32 .. 1/1 of the size, roughly the 1/f spectrum of
    natural images); white noise for tensors with fewer than 3 dims."""
    if len(shape) < 3:
        return torch.randn(shape, generator=gen)
    lead, (h, w) = shape[:-2], shape[-2:]
    n = int(math.prod(lead))
    acc = torch.zeros(n, 1, h, w)
    for f in (32, 16, 8, 4, 2, 1):
        sh, sw = max(1, h // f), max(1, w // f)
        z = torch.randn(n, 1, sh, sw, generator=gen)
        acc += torch.nn.functional.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
    acc = acc.reshape(*lead, h, w)
    dims = tuple(range(acc.dim() - 2, acc.dim()))
    return (acc - acc.mean(dims, keepdim=True)) / acc.std(dims, keepdim=True).clamp_min(1e-12)


def synthetic_inputs(example_inputs: Any, num_samples: int = 32, batch_size: int = 16,
                     input_range: tuple[float, float] | None = None, seed: int = 0) -> list[Batch]:
    """Data-free input batches shaped like ``example_inputs`` (their batch size replaced).

    Each channel (dimension 1) gets the mean and standard deviation of that channel of the
    example inputs, or, where they are constant (e.g. ``torch.zeros``), the middle of
    ``input_range`` and a quarter of its width; values are clipped to ``input_range``. Images
    (3-D and more) get spatially correlated noise (:func:`_smooth_noise`), others white noise.
    Deterministic for a given ``seed``.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(num_samples, int) or num_samples < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise DFQError(f"num_samples and batch_size must be positive integers, got {num_samples!r}, {batch_size!r}")
    gen = torch.Generator().manual_seed(seed)
    per_input = []
    for i, ex in enumerate(example_inputs):
        if not isinstance(ex, torch.Tensor) or not ex.is_floating_point() or ex.dim() < 1:
            raise DFQError(f"example_inputs[{i}] must be a floating-point tensor with a batch dimension")
        ex = ex.detach().float().cpu()
        shape = (num_samples, *ex.shape[1:])
        if ex.dim() >= 2:
            dims = [d for d in range(ex.dim()) if d != 1]
            mean = ex.mean(dims)
            std = ex.std(dims, unbiased=False) if ex.numel() > ex.shape[1] else torch.zeros(ex.shape[1])
        else:
            mean, std = ex.mean().reshape(1), ex.std(unbiased=False).reshape(1)
        if input_range is not None:
            lo, hi = input_range
        else:
            lo, hi = float(ex.min()) if ex.numel() else -1.0, float(ex.max()) if ex.numel() else 1.0
        const = std <= 1e-12
        if bool(const.any()):
            if hi - lo <= 0:
                lo, hi = -1.0, 1.0
                log.warning("synthetic_inputs: constant example input and no input_range; using mean 0, std 0.5")
            mean = torch.where(const, torch.full_like(mean, (lo + hi) / 2), mean)
            std = torch.where(const, torch.full_like(std, (hi - lo) / 4), std)
        view = [1] * len(shape)
        if len(shape) >= 2:
            view[1] = -1
        x = _smooth_noise(shape, gen) * std.reshape(view) + mean.reshape(view)
        if input_range is not None:
            x = x.clamp(lo, hi)
        per_input.append(x.to(example_inputs[i].dtype))
    return [tuple(t[s:s + batch_size] for t in per_input) for s in range(0, num_samples, batch_size)]


def _as_batches(data: Any, batch_size: int) -> list[Batch]:
    """``data`` (a ``Dataset`` of ``(x, label)``, a tensor of inputs, or an iterable of batches as
    for :func:`dfq_gpu.quantize`) as a list of input tuples."""
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    elif isinstance(data, torch.Tensor):
        data = [data[i:i + batch_size] for i in range(0, data.shape[0], batch_size)]
    elif not hasattr(data, "__iter__"):
        raise DFQError(f"data must be an iterable of input batches, a Dataset or a tensor, got {type(data).__name__}")
    try:
        batches = list(iter_input_batches(data))
    except TypeError as exc:
        raise DFQError(str(exc)) from None
    if not batches:
        raise DFQError("data is empty")
    return batches


# =============================================================================================
# Measurement
# =============================================================================================
def _first_output(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        out = out["out"] if "out" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _mean_db(parts: list[torch.Tensor]) -> float:
    if not parts:
        return math.nan
    s = torch.cat(parts)
    if bool(torch.isposinf(s).all()):
        return math.inf
    return float(torch.where(torch.isposinf(s), torch.full_like(s, _CAP_DB), s).mean())


class _Runner:
    """Runs a GraphModule node by node, optionally from node ``start`` with the values of the
    nodes before it taken from an earlier full run."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self._live: dict[int, list[fx.Node]] = {}

    def live(self, start: int) -> list[fx.Node]:
        """The nodes before ``start`` whose values nodes from ``start`` on use."""
        if start not in self._live:
            seen: dict[fx.Node, None] = {}
            for n in self.nodes[start:]:
                for a in n.all_input_nodes:
                    if self.index[a] < start:
                        seen[a] = None
            self._live[start] = list(seen)
        return self._live[start]

    @torch.no_grad()
    def run(self, inputs: Batch, start: int = 0, prefix: dict[fx.Node, Any] | None = None,
            keep: bool = False) -> tuple[torch.Tensor, dict[fx.Node, Any] | None]:
        interp = fx.Interpreter(self.gm, garbage_collect_values=False)
        env: dict[fx.Node, Any] = {}
        if start:
            assert prefix is not None
            for n in self.live(start):  # copies: an in-place op must not change the kept values
                v = prefix[n]
                env[n] = v.clone() if isinstance(v, torch.Tensor) else v
        interp.env = env
        k = sum(1 for n in self.nodes[:start] if n.op == "placeholder")
        out: Any = None
        for n in self.nodes[start:]:
            if n.op == "placeholder":
                env[n] = inputs[k]
                k += 1
            elif n.op == "output":
                out = interp.run_node(n)
            else:
                env[n] = interp.run_node(n)
        return _first_output(out).float(), (env if keep else None)


@dataclass
class _Quantizer:
    name: str
    kind: str
    start: int  # index of its first node
    node: str
    module: nn.Module
    w: tuple[torch.Tensor, torch.Tensor] | None = None  # quantized (weight, bias)
    w_float: tuple[torch.Tensor, torch.Tensor] | None = None  # float (weight, bias)

    def set(self, on: bool) -> None:
        if self.kind == "activations":
            self.module.enabled = on  # type: ignore[assignment]
            return
        w, b = self.w if on else self.w_float  # type: ignore[misc]
        self.module.weight.data = w  # type: ignore[union-attr]
        self.module.bias.data = b  # type: ignore[union-attr]


def _no_inplace(gm: fx.GraphModule) -> None:
    """Turn off in-place activations (their inputs are values kept for later runs)."""
    for m in gm.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False  # type: ignore[assignment]
    for n in gm.graph.nodes:
        if n.kwargs.get("inplace") is True:
            n.kwargs = {**n.kwargs, "inplace": False}
    gm.recompile()


def _is_prepared(model: nn.Module) -> bool:
    return isinstance(model, fx.GraphModule) and hasattr(model, "report") and not any(
        isinstance(m, (QConv2d, QLinear, FakeQuant)) for m in model.modules())


def _float_network(q: fx.GraphModule, model: nn.Module, example_inputs: Any,
                   leaf_modules: Sequence[str]) -> fx.GraphModule:
    if _is_prepared(model):
        return model  # type: ignore[return-value]
    cfg = getattr(q, "dfq_config", None)
    if not isinstance(cfg, DFQConfig):
        raise DFQError("q must be a network returned by dfq_gpu.quantize (it has no dfq_config)")
    if example_inputs is None:
        raise DFQError("example_inputs are needed to prepare the float network: pass the example inputs given to "
                       "quantize, or pass model=dfq_gpu.prepare(model, example_inputs, q.dfq_config)")
    return prepare(model, example_inputs, cfg, leaf_modules=leaf_modules)


def _quantizers(work: fx.GraphModule, p: fx.GraphModule, which: Sequence[str]) -> list[_Quantizer]:
    nodes = list(work.graph.nodes)
    first: dict[str, tuple[int, str]] = {}
    for i, n in enumerate(nodes):
        if n.op == "call_module" and str(n.target) not in first:
            first[str(n.target)] = (i, n.name)
    p_mods = dict(p.named_modules())
    out: list[_Quantizer] = []
    for name, m in work.named_modules():
        if name not in first:
            continue
        i, node = first[name]
        if isinstance(m, FakeQuant) and "activations" in which:
            out.append(_Quantizer(name, "activations", i, str(nodes[i].args[0]), m))
        elif isinstance(m, (QConv2d, QLinear)) and "weights" in which:
            fm = p_mods.get(name)
            if not isinstance(fm, (nn.Conv2d, nn.Linear)) or tuple(fm.weight.shape) != tuple(m.weight.shape):
                raise DFQError(f"the float network has no layer '{name}' of weight shape {tuple(m.weight.shape)}: "
                               "model, example_inputs and leaf_modules must be those given to quantize")
            wf = fm.weight.detach().to(m.weight.dtype).clone()
            bf = (fm.bias.detach().to(m.bias.dtype).clone() if fm.bias is not None else torch.zeros_like(m.bias))
            out.append(_Quantizer(name, "weights", i, node, m, (m.weight.data, m.bias.data), (wf, bf)))
    out.sort(key=lambda z: z.start)
    return out


def _measure(q: fx.GraphModule, p: fx.GraphModule, batches: list[Batch], which: Sequence[str], rank_by: str,
             data_desc: str, progress: bool | None, modes: Sequence[str] = RANK_BY) -> Sensitivity:
    """The sensitivity table; ``modes``: which of the two measurements to make (``nan`` for the other)."""
    t0 = time.perf_counter()
    work = copy.deepcopy(q)
    work.eval()
    for m in work.modules():
        if isinstance(m, FakeQuant):
            m.enabled = False
    make_integer_exact(work)  # with every quantizer off: the float simulation everywhere
    _no_inplace(work)
    allq = _quantizers(work, p, KINDS)
    quants = [z for z in allq if z.kind in which]
    if not quants:
        raise DFQError(f"the network has no quantizer of kind {tuple(which)}")
    runner = _Runner(work)

    def set_all(on: bool) -> None:
        for z in allq:
            z.set(on)

    only_on: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(quants))}
    only_off: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(quants))}
    all_on: list[torch.Tensor] = []
    all_off: list[torch.Tensor] = []
    n = 0
    show = progress if progress is not None else None
    bar = tqdm(total=len(batches) * len(quants) * len(modes), desc="sensitivity", disable=show is False, leave=False)
    try:
        for batch in batches:
            with torch.no_grad():
                ref = _first_output(p(*batch)).float()
            set_all(False)
            out, env_off = runner.run(batch, keep=True)
            all_off.append(sqnr_per_sample(ref, out))
            set_all(True)
            out, env_on = runner.run(batch, keep=True)
            all_on.append(sqnr_per_sample(ref, out))
            # one quantizer toggled at a time against all off (only_on) or all on (only_off); each run
            # starts at the quantizer's node from the values the other run left
            for mode, on, env, results in (("only_on", True, env_off, only_on), ("only_off", False, env_on, only_off)):
                set_all(not on)
                for i, z in enumerate(quants if mode in modes else ()):
                    z.set(on)
                    out, _ = runner.run(batch, z.start, env)
                    z.set(not on)
                    results[i].append(sqnr_per_sample(ref, out))
                    bar.update(1)
            set_all(True)
            n += ref.shape[0]
            del env_off, env_on
    finally:
        bar.close()
    rows = [SensitivityRow(z.name, z.kind, _mean_db(only_on[i]), _mean_db(only_off[i]), z.node)
            for i, z in enumerate(quants)]
    nz = lambda v: 0.0 if math.isnan(v) else v  # noqa: E731
    if rank_by == "only_on":
        rows.sort(key=lambda r: (nz(r.only_on_db), -nz(r.only_off_db)))
    else:
        rows.sort(key=lambda r: (-nz(r.only_off_db), nz(r.only_on_db)))
    res = Sensitivity(rows=rows, all_on_db=_mean_db(all_on), all_off_db=_mean_db(all_off), n_samples=n,
                      data=data_desc, rank_by=rank_by, seconds=time.perf_counter() - t0)
    if "weights" not in which or "activations" not in which:
        res.notes.append(f"measured only {', '.join(which)}")
    log.info("sensitivity of %d quantizers on %d samples (%s) in %.1f s: all on %.2f dB; most sensitive: %s",
             len(rows), n, data_desc, res.seconds, res.all_on_db,
             ", ".join(f"{r.name} ({r.kind}, " + (f"{_fmt(r.only_on_db)} dB alone)" if rank_by == "only_on" else
                                                   f"{_fmt(r.only_off_db)} dB without it)") for r in rows[:3]))
    return res


def _check_choice(value: Any, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise DFQError(f"{name} must be one of {allowed}, got {value!r}")


def _inputs(data: Any, example_inputs: Any, p: fx.GraphModule, cfg: DFQConfig, num_samples: int,
            batch_size: int, seed: int) -> tuple[list[Batch], str]:
    if data is not None:
        batches = _as_batches(data, batch_size)
        return batches, f"data, {len(batches)} batches"
    if example_inputs is None:
        shapes = [n.meta.get("tensor_meta") for n in p.graph.nodes if n.op == "placeholder"]
        if not shapes or any(s is None for s in shapes):
            raise DFQError("pass example_inputs (or data) to draw synthetic inputs of the right shape")
        example_inputs = tuple(torch.zeros(tuple(s.shape), dtype=s.dtype) for s in shapes)
    rng = cfg.input_range
    batches = synthetic_inputs(example_inputs, num_samples, batch_size, rng, seed)
    return batches, f"synthetic, seed {seed}, input range {rng}"


def sensitivity(q: fx.GraphModule, model: nn.Module, data: Iterable[Any] | None = None, *,
                example_inputs: Any = None, which: Sequence[str] = KINDS, rank_by: str = "only_on",
                num_samples: int = 32, batch_size: int = 16, seed: int = 0, leaf_modules: Sequence[str] = (),
                progress: bool | None = None, record: bool = True) -> Sensitivity:
    """Per-quantizer sensitivity of ``q``: the output SQNR against the FP32 network with only each
    quantizer on, and with only it off (module docstring).

    Args:
        q: a network returned by :func:`dfq_gpu.quantize` (it is not changed; a copy is measured).
        model: the float model given to ``quantize`` (it is prepared again with ``q.dfq_config``,
            which needs ``example_inputs``), or the network :func:`dfq_gpu.prepare` returned for it
            with the same config: the float weights and the FP32 reference.
        data: input batches (as for :func:`dfq_gpu.quantize`, or a ``Dataset`` / tensor as for
            :func:`dfq_gpu.evaluate`); ``None`` (the default) draws ``num_samples`` synthetic
            inputs from the input statistics (:func:`synthetic_inputs` with ``q.dfq_config.input_range``).
        example_inputs: the example inputs given to ``quantize``.
        which: the kinds of quantizer to measure, ``"weights"`` and/or ``"activations"``.
        rank_by: ``"only_on"`` or ``"only_off"`` (:class:`Sensitivity`).
        num_samples, batch_size, seed: the synthetic inputs (``batch_size`` also batches a ``Dataset``).
        leaf_modules: as given to ``quantize``.
        progress: a ``tqdm`` bar (``None``: tqdm's default, ``False``: none).
        record: also store the table in ``q.report.sensitivity`` (a dict).

    Returns:
        A :class:`Sensitivity` table.

    Raises:
        DFQError: bad arguments, or a ``model`` whose layers do not match ``q``'s.
    """
    if not isinstance(q, fx.GraphModule) or not isinstance(getattr(q, "dfq_config", None), DFQConfig):
        raise DFQError("q must be a network returned by dfq_gpu.quantize")
    if isinstance(which, str):
        which = (which,)
    for w in which:
        _check_choice(w, KINDS, "which")
    _check_choice(rank_by, RANK_BY, "rank_by")
    p = _float_network(q, model, example_inputs, leaf_modules)
    p.eval()
    batches, desc = _inputs(data, example_inputs, p, q.dfq_config, num_samples, batch_size, seed)
    res = _measure(q, p, batches, tuple(which), rank_by, desc, progress)
    if record:
        _record(q, "sensitivity", res.to_dict())
    return res


def _record(q: fx.GraphModule, key: str, value: dict[str, Any]) -> None:
    rep = getattr(q, "report", None)
    if rep is not None and hasattr(rep, key):
        setattr(rep, key, value)


# =============================================================================================
# Automatic fallback
# =============================================================================================
@torch.no_grad()
def _sqnr(net: nn.Module, batches: list[Batch], refs: list[torch.Tensor]) -> float:
    net.eval()
    return _mean_db([sqnr_per_sample(r, _first_output(net(*b)).float()) for b, r in zip(batches, refs)])


def _build(model: nn.Module, example_inputs: Any, cfg: DFQConfig, data: Any, leaf_modules: Sequence[str],
           float_weights: Sequence[str], float_acts: Sequence[str]) -> fx.GraphModule:
    """``quantize`` with ``float_weights`` added to ``skip_layers`` and the activation quantizers
    ``float_acts`` disabled (the integer arithmetic of the simulation redone around them)."""
    q = quantize(model, example_inputs, cfg.replace(skip_layers=tuple(cfg.skip_layers) + tuple(float_weights)), data,
                 leaf_modules=leaf_modules)
    if float_acts:
        mods = dict(q.named_modules())
        for name in float_acts:
            mods[name].enabled = False  # type: ignore[union-attr]
            q.report.skip(name, "activation quantizer disabled by the automatic fallback: float values")  # type: ignore
        make_integer_exact(q)
    return q


def quantize_with_fallback(model: nn.Module, example_inputs: Any, config: DFQConfig | None = None, *,
                           target_sqnr_db: float, data: Iterable[Any] | None = None,
                           kinds: Sequence[str] = KINDS, max_float: int | None = None, num_samples: int = 32,
                           batch_size: int = 16, seed: int = 0, leaf_modules: Sequence[str] = (),
                           ranking: Sensitivity | None = None, progress: bool | None = None) -> fx.GraphModule:
    """:func:`dfq_gpu.quantize`, keeping the fewest quantizers in float that reach ``target_sqnr_db``.

    The network is quantized with ``config``; if its output SQNR against the prepared FP32
    network is below the target, the quantizers of ``kinds`` are ranked by the SQNR the network
    reaches with only that quantizer off (:func:`sensitivity` with ``rank_by="only_off"``) and
    tried in float one at a time, in that order, re-quantizing and measuring after each, until the
    target is met. A candidate is kept in float only if it raises the measured SQNR (quantization
    errors partly cancel, so keeping one more in float can lower it); at most ``2 * max_float``
    candidates are tried. Keeping in float means: for a layer's weights, adding the layer to
    ``skip_layers`` (its input and output activations stay quantized); for an activation
    quantizer, disabling it (``FakeQuant.enabled = False``: the tensor stays float32). The SQNR is
    measured on ``data`` if given, else on synthetic inputs (:func:`synthetic_inputs`), with the
    returned network itself (its integer arithmetic where it applies). The data-free ranking is a
    rough guide: on EfficientNet-Lite0 it meets its target on the synthetic inputs but gains
    little on real images (README); pass a few dozen real images as ``data`` where you have them.

    :func:`dfq_gpu.to_int8` runs the layers left in float, and the tensors of disabled
    quantizers, in float32 between a dequantize and the next quantizer, bit-identical to this
    simulation (``net.coverage`` lists them). ``kinds=("weights",)`` keeps only weights in float,
    which ``skip_layers`` also says by hand.

    Args:
        model, example_inputs, config, leaf_modules: as for :func:`dfq_gpu.quantize`;
            ``config.skip_layers`` stay in float and are not counted.
        target_sqnr_db: the output SQNR to reach, in dB.
        data: input batches to measure on (and to calibrate with, if ``config`` needs data).
        kinds: what may be kept in float: ``"weights"`` and/or ``"activations"``.
        max_float: the most quantizers to keep in float; default a fifth of those of ``kinds``
            (at least 1).
        num_samples, batch_size, seed: the synthetic inputs.
        ranking: a :class:`Sensitivity` of the network quantized with ``config`` to rank by (its
            ``only_off_db``), from :func:`sensitivity` on the same data, instead of measuring one.
        progress: ``tqdm`` bars.

    Returns:
        The quantized network, as from :func:`dfq_gpu.quantize`; ``q.report.fallback`` holds the
        target, the layers whose weights were kept in float (``float_weights``), the activation
        quantizers kept in float (``float_activations``) and the SQNR after each addition
        (``history``); ``q.report.sensitivity`` the ranking used.

    Raises:
        DFQError: bad arguments, or the target not reached with ``max_float`` quantizers in float
            (the message gives the SQNR reached).
    """
    if isinstance(target_sqnr_db, bool) or not isinstance(target_sqnr_db, (int, float)) or \
            not math.isfinite(target_sqnr_db):
        raise DFQError(f"target_sqnr_db must be a finite number of dB, got {target_sqnr_db!r}")
    if max_float is not None and (isinstance(max_float, bool) or not isinstance(max_float, int) or max_float < 1):
        raise DFQError(f"max_float must be a positive integer or None, got {max_float!r}")
    if isinstance(kinds, str):
        kinds = (kinds,)
    if not kinds:
        raise DFQError("kinds must name at least one of ('weights', 'activations')")
    for k in kinds:
        _check_choice(k, KINDS, "kinds")
    cfg = config or DFQConfig()
    if not isinstance(cfg, DFQConfig):
        raise DFQError(f"config must be a DFQConfig, got {type(cfg).__name__}")
    if ranking is not None and not isinstance(ranking, Sensitivity):
        raise DFQError(f"ranking must be a Sensitivity from dfq_gpu.sensitivity, got {type(ranking).__name__}")
    t0 = time.perf_counter()
    p = prepare(model, example_inputs, cfg, leaf_modules=leaf_modules)
    p.eval()
    batches, desc = _inputs(data, example_inputs, p, cfg, num_samples, batch_size, seed)
    needs_data = cfg.bias_correction == "empirical" or (cfg.act_ranges == "calibrate" and cfg.act_bits is not None)
    qdata = batches if needs_data else None
    with torch.no_grad():
        refs = [_first_output(p(*b)).float() for b in batches]
    q = quantize(model, example_inputs, cfg, qdata, leaf_modules=leaf_modules)
    db = _sqnr(q, batches, refs)
    history: list[dict[str, Any]] = [{"float": 0, "added": None, "kind": None, "sqnr_db": db, "kept": True}]
    log.info("fallback: %.2f dB with nothing in float (target %.2f dB, %s)", db, target_sqnr_db, desc)
    n_layers = sum(isinstance(m, (QConv2d, QLinear)) for m in q.modules())
    n_acts = sum(isinstance(m, FakeQuant) for m in q.modules())
    n_quant = (n_layers if "weights" in kinds else 0) + (n_acts if "activations" in kinds else 0)
    cap = max_float if max_float is not None else max(1, math.ceil(n_quant / 5))
    weights: list[str] = []
    acts: list[str] = []
    sens = None
    if db < target_sqnr_db:
        if ranking is None:
            sens = _measure(q, p, batches, tuple(kinds), "only_off", desc, progress, modes=("only_off",))
            rows = sens.rows
        else:
            rows = sorted((r for r in ranking.rows if r.kind in kinds and not math.isnan(r.only_off_db)),
                          key=lambda r: -r.only_off_db)
        tries = 2 * cap
        bar = tqdm(total=tries, desc="fallback", disable=progress is False, leave=False)
        for row in rows:
            if db >= target_sqnr_db or len(weights) + len(acts) >= cap or tries == 0:
                break
            tries -= 1
            bar.update(1)
            cand_w = weights + [row.name] if row.kind == "weights" else weights
            cand_a = acts + [row.name] if row.kind == "activations" else acts
            cand = _build(model, example_inputs, cfg, qdata, leaf_modules, cand_w, cand_a)
            cand_db = _sqnr(cand, batches, refs)
            kept = cand_db > db
            history.append({"float": len(cand_w) + len(cand_a), "added": row.name, "kind": row.kind,
                            "sqnr_db": cand_db, "kept": kept})
            log.info("fallback: +%s (%s): %.2f dB, %s", row.name, row.kind, cand_db,
                     f"kept ({len(cand_w) + len(cand_a)} in float)" if kept else "not kept (no gain)")
            if kept:
                weights, acts, q, db = cand_w, cand_a, cand, cand_db
        bar.close()
        if db < target_sqnr_db:
            steps = "; ".join(f"+{h['added']}: {_fmt(h['sqnr_db'])} dB" for h in history[1:] if h["kept"])
            raise DFQError(f"automatic fallback: {len(weights) + len(acts)} quantizer(s) in float (max_float={cap}) "
                           f"reach {_fmt(db)} dB, below the target {target_sqnr_db} dB (nothing in float: "
                           f"{_fmt(history[0]['sqnr_db'])} dB; {steps}; {len(history) - 1} candidates tried, "
                           f"{sum(not h['kept'] for h in history[1:])} not kept as they gave no gain). Raise max_float "
                           "or lower the target.")
    summary = {"target_sqnr_db": float(target_sqnr_db), "float_weights": list(weights), "float_activations": list(acts),
               "sqnr_db": _num(db), "history": [{**h, "sqnr_db": _num(h["sqnr_db"])} for h in history],
               "data": desc, "n_samples": sum(b[0].shape[0] for b in batches), "quantized_layers": n_layers,
               "activation_quantizers": n_acts, "kinds": list(kinds), "seconds": time.perf_counter() - t0}
    _record(q, "fallback", summary)
    if sens is not None:
        _record(q, "sensitivity", sens.to_dict())
    q.report.step(f"automatic fallback to {target_sqnr_db} dB ({desc}): "  # type: ignore[union-attr]
                  f"weights of {len(weights)} of {n_layers} "
                  f"layers in float ({', '.join(weights) or 'none'}), {len(acts)} of {n_acts} activation quantizers "
                  f"in float ({', '.join(acts) or 'none'}); {_fmt(db)} dB")
    return q
