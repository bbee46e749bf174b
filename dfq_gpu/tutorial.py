"""The computations behind the tutorial notebooks (``notebooks/``), kept here so that the
notebooks stay short and everything they show is importable and testable.

- :func:`setup`: thread count, Triton's interpreter switch, plot defaults;
- :func:`lite0`, :func:`imagenet`, :func:`fmnist`: the models and data the chapters use (cached);
- :func:`ablation`: rows of the README's results table (``dfq_gpu.ablation``), read from a
  results file of ``python -m dfq_gpu demo --out ...`` when one matches, else computed;
- :class:`CLEStepper`: cross-layer equalization one sweep at a time, for chapter 3;
- :func:`absorption_intervals`: the data-free activation ranges before and after bias
  absorption, for chapter 4;
- :func:`layer_output_bias`: the mean output error per channel that weight quantization
  causes, for chapter 5;
- :func:`gemm_tiled` and :func:`gemm_program_grid`: the int8 GEMM kernel's tiling replayed in
  NumPy, :func:`bit_exact_checks` and :func:`int8_check`, and the benchmark results helpers
  (:func:`benchmark_reports`, :func:`run_quick_kernel_benchmark`, :func:`run_quick_e2e_benchmark`,
  :func:`e2e_rows`), for chapter 6.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from . import formulas as fm
from .ablation import ABLATION_ROWS, AblationResult, AblationRow, run_ablation
from .api import prepare
from .config import DFQConfig

__all__ = [
    "REPO_ROOT", "RESULTS_DIR", "setup", "lite0", "imagenet", "fmnist", "example_input", "ablation", "ablation_rows",
    "CLEStepper", "absorption_intervals", "bn_stats_after_cle", "layer_output_bias", "gemm_tiled",
    "gemm_program_grid", "BenchmarkReports", "benchmark_reports", "results_dir", "kernel_benchmarks",
    "run_quick_kernel_benchmark", "run_quick_e2e_benchmark", "e2e_rows", "bit_exact_checks", "int8_check", "timer",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


# ----------------------------------------------------------------------------- set-up
def default_threads() -> int:
    """Threads for torch on this machine: ``$DFQ_NUM_THREADS``, else 1 on machines with at most
    2 cores and half the cores otherwise.

    Measured on a shared 2-core machine: with 2 threads, the many small operations of
    ``quantize`` on EfficientNet-Lite0 took 15-60 s instead of 0.6-2.5 s with 1 thread, and
    a batch of 32 images took 3.9 s instead of 2.1 s, because the second thread competes with
    whatever else runs on the machine.
    """
    env = os.environ.get("DFQ_NUM_THREADS")
    if env:
        return max(1, int(env))
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else max(1, cores // 2)


def setup(threads: int | None = None, dpi: int = 72) -> dict[str, Any]:
    """Prepare a notebook: torch threads, Triton's interpreter when there is no GPU, plot defaults.

    ``TRITON_INTERPRET=1`` must be in the environment before the kernels' Triton modules are
    imported, so this runs first. Returns what was set.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    n = threads or default_threads()
    torch.set_num_threads(n)
    torch.manual_seed(0)
    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.max_open_warning": 0,
                                    "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": "medium"})
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        pass
    logging.getLogger("dfq_gpu").setLevel(logging.WARNING)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return {"threads": n, "device": device, "triton_interpret": os.environ.get("TRITON_INTERPRET", "0")}


class timer:
    """``with timer() as t: ...``; ``t.seconds`` afterwards."""

    def __enter__(self) -> "timer":
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


# ----------------------------------------------------------------------------- models and data
@functools.lru_cache(maxsize=None)
def lite0() -> tuple[nn.Module, Any]:
    """EfficientNet-Lite0 (ImageNet weights) and its preprocessing, loaded once per process."""
    from .zoo import load_model

    return load_model("efficientnet_lite0")


@functools.lru_cache(maxsize=None)
def _imagenet(pre: Any, views: int) -> torch.utils.data.TensorDataset:
    from .data import imagenet_sample

    return imagenet_sample(pre, views=views)


def imagenet(pre: Any, views: int = 8) -> torch.utils.data.TensorDataset:
    """The README's evaluation set: ``views`` views of each of the 20 labelled ImageNet images."""
    return _imagenet(pre, views)


@functools.lru_cache(maxsize=None)
def fmnist(limit: int | None = 512) -> tuple[nn.Module, Any, torch.utils.data.TensorDataset]:
    """The small trained Fashion-MNIST network, its preprocessing and the first ``limit`` test images."""
    from .data import fashion_mnist
    from .zoo import load_model

    model, pre = load_model("fmnist_mobilenet")
    return model, pre, fashion_mnist("test", limit=limit)


def example_input(data: torch.utils.data.TensorDataset) -> tuple[torch.Tensor]:
    """A one-image example input for tracing."""
    return (data.tensors[0][:1],)


def subset(data: torch.utils.data.TensorDataset, every: int) -> torch.utils.data.TensorDataset:
    """Every ``every``-th sample (the ImageNet sample is image-major, so this keeps all 20 images)."""
    return torch.utils.data.TensorDataset(*(t[::every] for t in data.tensors))


# ----------------------------------------------------------------------------- the results table
def ablation_rows(names: Sequence[str]) -> list[AblationRow]:
    """The rows of ``ABLATION_ROWS`` with these names, in the given order."""
    by_name = {r.name: r for r in ABLATION_ROWS}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"no ablation row named {missing}; rows are: {[r.name for r in ABLATION_ROWS]}")
    return [by_name[n] for n in names]


def _row_config(row: AblationRow) -> dict[str, Any] | None:
    return None if row.config is None else row.config.to_dict()


def _from_results_file(names: Sequence[str], model_name: str, n: int) -> tuple[AblationResult, Path] | None:
    """An ablation result for all ``names`` from a JSON file of ``python -m dfq_gpu demo --out``
    in ``benchmarks/results``, if one has the same model, image count and row configurations."""
    rows = ablation_rows(names)
    for path in sorted(glob.glob(str(RESULTS_DIR / "*.json"))):
        try:
            with open(path) as f:
                d = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(d, dict) or d.get("model") != model_name or d.get("n") != n or "rows" not in d:
            continue
        stored = {r.get("name"): r for r in d["rows"] if isinstance(r, dict)}
        if all(r.name in stored and stored[r.name].get("config") == _row_config(r) for r in rows):
            res = AblationResult(model=model_name, n=n, rows=[stored[r.name] for r in rows])
            res.machine = d.get("machine", res.machine)
            res.torch_version = d.get("torch_version", res.torch_version)
            return res, Path(path)
    return None


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """A hash of the package's source code: cached results are only reused by the same code."""
    h = hashlib.sha256()
    for p in sorted((REPO_ROOT / "dfq_gpu").rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def _cache_dir() -> Path | None:
    env = os.environ.get("DFQ_TUTORIAL_CACHE_DIR")
    if env == "":
        return None
    return Path(env) if env else Path.home() / ".cache" / "dfq_gpu" / "tutorial"


def _cache_key(row: AblationRow, model_name: str, data: torch.utils.data.TensorDataset,
               input_range: tuple[float, float] | None) -> str:
    x = data.tensors[0]
    fingerprint = [len(x), float(x.double().sum()), float(x[::7].double().abs().sum())]
    payload = json.dumps({"row": row.name, "config": _row_config(row), "uses_data": row.uses_data,
                          "model": model_name, "data": fingerprint, "input_range": input_range,
                          "code": _source_hash()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def ablation(names: Sequence[str], model: nn.Module | None = None, data: torch.utils.data.TensorDataset | None = None,
             model_name: str = "efficientnet_lite0", input_range: tuple[float, float] | None = None,
             progress: bool = True, use_results_file: bool | None = None) -> tuple[AblationResult, str]:
    """Rows of the README's results table, computed as the README computes them.

    With no ``model``/``data``: EfficientNet-Lite0 on the 160 views of the ImageNet sample with
    ``input_range=pre.input_range``, which is what ``python -m dfq_gpu demo`` runs. The rows
    come from, in this order: a results file of ``python -m dfq_gpu demo --out ...`` in
    ``benchmarks/results`` with the same model, image count and row configurations; the
    on-disk cache of earlier runs of the same code (``$DFQ_TUTORIAL_CACHE_DIR``, default
    ``~/.cache/dfq_gpu/tutorial``; set it to the empty string to turn it off); and
    :func:`dfq_gpu.ablation.run_ablation` for the rest, in one call (one FP32 reference pass).
    ``use_results_file=False`` (or ``DFQ_TUTORIAL_USE_RESULTS=0`` in the environment) skips the
    results files, to recompute the rows with the code as it is.

    Returns the result and a sentence saying where the rows came from.
    """
    if use_results_file is None:
        use_results_file = os.environ.get("DFQ_TUTORIAL_USE_RESULTS", "1") != "0"
    if model is None or data is None:
        model, pre = lite0()
        data = imagenet(pre)
        input_range = pre.input_range if input_range is None else input_range
    n = len(data.tensors[0])
    if use_results_file:
        found = _from_results_file(names, model_name, n)
        if found is not None:
            res, path = found
            return res, f"read from {path.relative_to(REPO_ROOT)} (python -m dfq_gpu demo --out ...)"
    rows = ablation_rows(names)
    cache = _cache_dir()
    cached: dict[str, dict[str, Any]] = {}
    if cache is not None:
        for r in rows:
            p = cache / f"ablation-{_cache_key(r, model_name, data, input_range)}.json"
            if p.is_file():
                try:
                    cached[r.name] = json.loads(p.read_text())
                except ValueError:
                    pass
    todo = [r for r in rows if r.name not in cached]
    computed: dict[str, dict[str, Any]] = {}
    secs = 0.0
    if todo:
        t0 = time.perf_counter()
        res = run_ablation(model, data, model_name=model_name, rows=todo, input_range=input_range, progress=progress)
        secs = time.perf_counter() - t0
        for r, entry in zip(todo, res.rows):
            computed[r.name] = entry
            if cache is not None:
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    (cache / f"ablation-{_cache_key(r, model_name, data, input_range)}.json").write_text(
                        json.dumps(entry))
                except OSError as exc:  # a read-only home: just do not cache
                    log.info("could not cache an ablation row: %s", exc)
    out = AblationResult(model=model_name, n=n, rows=[computed.get(r.name) or cached[r.name] for r in rows])
    parts = []
    if computed:
        parts.append(f"computed {len(computed)} rows with dfq_gpu.ablation.run_ablation in {secs:.0f} s")
    if cached:
        parts.append(f"{len(cached)} rows from the cache of earlier runs of the same code")
    return out, "; ".join(parts)


# ----------------------------------------------------------------------------- chapter 2
def levels_per_channel(lo: np.ndarray, hi: np.ndarray, bits: int = 8) -> np.ndarray:
    """How many steps of a per-tensor ``bits``-bit grid each channel's range ``[lo, hi]`` spans."""
    scale, _ = fm.quant_params(np.min(lo), np.max(hi), bits)
    return (np.asarray(hi) - np.asarray(lo)) / float(scale)


def layer_weights(gm: nn.Module, kinds: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The weight tensors of a prepared / quantized network's conv and linear layers by name
    (only the given kinds, e.g. ``{"depthwise"}``, when ``kinds`` is set)."""
    report = getattr(gm, "report", None)
    out = {}
    for name, m in gm.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if kinds is not None and report is not None and name in report.layers:
                if report.layers[name].kind not in set(kinds):
                    continue
            out[name] = m.weight.detach()
    return out


# ----------------------------------------------------------------------------- chapter 3
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

        from .api import prepared_workspace
        from .graph.regions import find_regions
        from .passes.equalize import equalization_sweeps

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
        from .passes.base import in_channel_absmax, out_channel_absmax

        outs, ins = {}, {}
        for name in self.report.layers:
            m = self.gm.get_submodule(name)
            outs[name] = out_channel_absmax(m)
            ins[name] = in_channel_absmax(m)
        return CLESnapshot(sweep, outs, ins, [t.copy() for t in total], [s.copy() for s in last])

    @staticmethod
    def _normalized_max(parts: list[np.ndarray]) -> np.ndarray:
        out = np.zeros_like(parts[0])
        for p in parts:
            top = p.max(initial=0.0)
            out = np.maximum(out, p / top if top > 0 else np.zeros_like(p))
        return out

    def region_ranges(self, k: int, sweep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(r_src, r_dst)`` of region ``k`` after ``sweep`` sweeps (relative to each tensor's max)."""
        snap = self.history[-1 if sweep is None else sweep]
        r = self.regions[k]
        return (self._normalized_max([snap.out_ranges[n] for n in r.srcs]),
                self._normalized_max([snap.in_ranges[n] for n in r.sinks]))

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
        """The paper's objective for region ``k``: mean per-channel precision ``r_i / R`` of the
        source outputs and of the sink inputs."""
        a, b = self.region_ranges(k, sweep)
        return float(a.mean()), float(b.mean())


# ----------------------------------------------------------------------------- chapter 4
def bn_stats_after_cle(model: nn.Module, gm: nn.Module, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """``(beta, gamma)`` of ``layer``'s pre-activation output in the prepared network ``gm``:
    the original batch norm's shift and scale times the total CLE factor ``1/s`` of each channel
    (before any bias absorption)."""
    rec = gm.report.layer(layer)
    if rec.bn is None:
        raise ValueError(f"{layer} had no batch norm")
    bn = model.get_submodule(rec.bn)
    beta = bn.bias.detach().double().numpy()
    gamma = np.abs(bn.weight.detach().double().numpy())
    f = np.ones_like(beta) if rec.out_scale is None else np.asarray(rec.out_scale, dtype=np.float64)
    return beta * f, gamma * f


@dataclass
class AbsorptionView:
    """Data-free per-channel activation intervals of one layer before and after absorption."""

    beta: np.ndarray
    gamma: np.ndarray
    hi: np.ndarray  # the clamp's upper bound per channel (ReLU6 scaled by CLE)
    c: np.ndarray  # the absorbed shift
    before: tuple[np.ndarray, np.ndarray]
    after: tuple[np.ndarray, np.ndarray]
    frac_changed: float  # share of channels x probability where act(z - c) != act(z) - c

    @property
    def tensor_range_before(self) -> tuple[float, float]:
        return float(min(0.0, self.before[0].min())), float(max(0.0, self.before[1].max()))

    @property
    def tensor_range_after(self) -> tuple[float, float]:
        return float(min(0.0, self.after[0].min())), float(max(0.0, self.after[1].max()))


def act_upper_bound(gm: nn.Module, layer: str) -> np.ndarray:
    """The upper clamp bound of the activation right after ``layer`` in a prepared network
    (``inf`` for ReLU), as it was before absorption (``hi + c`` when ``c`` was absorbed)."""
    from .nn import ChannelClamp

    node = next(n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) == layer)
    users = list(node.users)
    m = gm.get_submodule(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None
    c = gm.report.layer(layer).absorbed_out
    c = np.zeros(1) if c is None else np.asarray(c)
    if isinstance(m, ChannelClamp):
        return m.hi.detach().double().numpy() + c
    if isinstance(m, nn.ReLU6):
        return np.full(node.meta["tensor_meta"].shape[1], 6.0)
    return np.full(node.meta["tensor_meta"].shape[1], np.inf)


def absorption_intervals(beta: np.ndarray, gamma: np.ndarray, hi: np.ndarray, n_sigmas: float,
                         act_sigmas: float = 6.0, exact: bool = True) -> AbsorptionView:
    """What bias absorption with ``c = clip(beta - n_sigmas gamma, 0, hi)`` does to the data-free
    activation range ``clip(beta +- act_sigmas gamma, 0, hi)`` of each channel.

    ``exact`` (the package's default): the activation becomes the clamp ``[-c, hi - c]``, i.e.
    ``act(z) - c``; otherwise the paper's ``act(z - c)`` (clamp ``[0, hi - c]``), which differs
    from the original where ``z < c``.
    """
    c = fm.absorption_shift(beta, gamma, n_sigmas, hi)
    before = fm.gaussian_interval(beta, gamma, act_sigmas, 0.0, hi)
    lo_after = -c if exact else np.zeros_like(c)
    after = fm.gaussian_interval(beta - c, gamma, act_sigmas, lo_after, hi - c)
    live = gamma > 0
    p_below = np.where(live & (c > 0), fm.normal_cdf((c - beta) / np.where(live, gamma, 1.0)), 0.0)
    return AbsorptionView(beta, gamma, hi, c, before, after, float(np.mean(p_below)))


# ----------------------------------------------------------------------------- chapter 5
@torch.no_grad()
def layer_output_bias(float_gm: nn.Module, q_gm: nn.Module, inputs: torch.Tensor,
                      layers: Sequence[str] | None = None, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per output channel ``E[y_q - y]`` of each layer, both computed on the float network's input
    of that layer: the shift that the layer's own weight quantization (and correction) causes.

    ``float_gm`` is ``prepare(model, ..., cfg)`` and ``q_gm`` is ``quantize(model, ..., cfg)`` with
    the same ``cfg`` (same layer names); ``inputs`` is a batch of network inputs.
    """
    names = list(layers) if layers is not None else list(float_gm.report.layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        qm = q_gm.get_submodule(name)

        def f(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            d = (qm(args[0]) - out).double()
            dims = [i for i in range(d.dim()) if i != 1]
            sums[name] = sums.get(name, 0) + d.sum(dim=dims)
            counts[name] = counts.get(name, 0) + d.numel() // d.shape[1]
        return f

    handles = [float_gm.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        for i in range(0, len(inputs), batch_size):
            float_gm(inputs[i:i + batch_size])
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n] / counts[n]).numpy() for n in names if n in sums}


# ----------------------------------------------------------------------------- chapter 6
def gemm_program_grid(M: int, N: int, block_m: int, block_n: int, group_m: int) -> np.ndarray:
    """Which program id computes each output tile: the grouped ("swizzled") order of the
    kernel in ``kernels/gemm.py``, as an array ``[cdiv(M, BM), cdiv(N, BN)]``."""
    num_m, num_n = -(-M // block_m), -(-N // block_n)
    grid = np.full((num_m, num_n), -1, dtype=np.int64)
    for pid in range(num_m * num_n):
        per_group = group_m * num_n
        first_m = (pid // per_group) * group_m
        size_m = min(num_m - first_m, group_m)
        pid_m = first_m + (pid % per_group) % size_m
        pid_n = (pid % per_group) // size_m
        grid[pid_m, pid_n] = pid
    return grid


@dataclass
class TileStep:
    """One step of the walk-through: program ``pid`` at K block ``k0`` of output tile ``(pid_m, pid_n)``."""

    pid: int
    pid_m: int
    pid_n: int
    k0: int
    acc_sample: int  # acc[0, 0] of the tile after this step


def gemm_tiled(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None, multiplier: float | np.ndarray, z_x: int,
               w_zp: int | np.ndarray | None, z_y: int, lo: int = -128, hi: int = 127, block_m: int = 32,
               block_n: int = 32, block_k: int = 32, group_m: int = 2,
               trace: list[TileStep] | None = None) -> np.ndarray:
    """The int8 GEMM of ``kernels.int8_gemm`` computed tile by tile in NumPy, the way the Triton
    kernel does it: programs in grouped order, a K loop of int8 dot products accumulated in
    int32, the zero-point terms folded into the bias, and the requantization epilogue
    ``clamp(rne(float32(acc) * m) + z_y, lo, hi)``.

    ``x``: int8 ``[M, K]``; ``w``: int8 ``[N, K]``; ``bias``: int32 ``[N]``; ``multiplier``
    float32 (scalar or ``[N]``); ``w_zp``: weight zero point(s) or ``None``.
    """
    x = np.asarray(x, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    M, K = x.shape
    N = w.shape[0]
    zw = np.zeros(N, dtype=np.int64) if w_zp is None else np.broadcast_to(np.asarray(w_zp, dtype=np.int64), (N,))
    b = np.zeros(N, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64)
    # bias' = bias - z_x * sum_k w + K z_x z_w: computed once per weight tensor (kernels.fold_bias)
    folded = b - z_x * w.sum(axis=1) + K * z_x * zw
    m = np.broadcast_to(np.asarray(multiplier, dtype=np.float32), (N,))
    y = np.zeros((M, N), dtype=np.int8)
    grid = gemm_program_grid(M, N, block_m, block_n, group_m)
    order = sorted((int(grid[i, j]), i, j) for i in range(grid.shape[0]) for j in range(grid.shape[1]))
    for pid, pm, pn in order:
        rows = slice(pm * block_m, min(M, (pm + 1) * block_m))
        cols = slice(pn * block_n, min(N, (pn + 1) * block_n))
        acc = np.zeros((rows.stop - rows.start, cols.stop - cols.start), dtype=np.int64)
        row_sum = np.zeros(rows.stop - rows.start, dtype=np.int64)
        for k0 in range(0, K, block_k):
            a = x[rows, k0:k0 + block_k]  # [BM, BK] int8 tile of x
            bt = w[cols, k0:k0 + block_k].T  # [BK, BN] tile of w, read K-major
            acc += a @ bt  # tl.dot(a, b, acc, out_dtype=int32)
            row_sum += a.sum(axis=1)  # only needed when the weights have a zero point
            if trace is not None:
                trace.append(TileStep(pid, pm, pn, k0, int(acc[0, 0])))
        acc += folded[cols][None, :]
        acc -= row_sum[:, None] * zw[cols][None, :]
        acc = ((acc + 2**31) % 2**32) - 2**31  # int32 two's complement, as the kernel's accumulator
        # epilogue: one float32 multiply, clamp, round half to even, zero point, clamp
        t = acc.astype(np.float32) * m[cols][None, :]
        t = np.clip(t, np.float32(lo - z_y - 1), np.float32(hi - z_y + 1))
        q = np.rint(t).astype(np.int64) + z_y
        y[rows, cols] = np.clip(q, lo, hi).astype(np.int8)
    return y


KERNEL_SCHEMA = "dfq_int8-kernel-bench"
E2E_VARIANTS = ("int8", "fp16_eager", "fp16_compile", "fp32_eager")
E2E_SCHEMA = "dfq_int8-e2e-bench"
COMPILE_SCHEMA = "dfq_int8-kernel-compile"


def _is_gpu_report(rep: Mapping[str, Any]) -> bool:
    """A report measured on a GPU: the full (not ``--quick``) run, not through the interpreter."""
    return rep.get("mode") == "full" and rep.get("backend", "triton") != "triton-interpreter" \
        and not str(rep.get("device", "")).startswith("CPU")


@dataclass
class BenchmarkReports:
    """The benchmark JSON reports found in a results folder, by kind, newest first.

    ``kernels_gpu`` / ``e2e_gpu``: full runs of ``benchmarks/kernels.py`` / ``benchmarks/e2e.py``
    on a GPU (``benchmarks/gpu_check.sh`` writes them as ``kernels_<gpu>.json`` and
    ``e2e_<gpu>.json``); ``kernels_cpu`` / ``e2e_cpu``: their ``--quick`` runs; ``compile``:
    ``benchmarks/kernels.py --compile-only`` reports; ``unreadable``: JSON files that could not
    be read, with the reason (other JSON files, such as the ablation results, are ignored).
    """

    directory: Path
    kernels_gpu: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    kernels_cpu: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    e2e_gpu: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    e2e_cpu: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    compile: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def has_gpu_results(self) -> bool:
        return bool(self.kernels_gpu or self.e2e_gpu)


def results_dir() -> Path:
    """``$DFQ_BENCHMARK_RESULTS_DIR`` if set, else ``benchmarks/results`` of this checkout."""
    env = os.environ.get("DFQ_BENCHMARK_RESULTS_DIR")
    return Path(env) if env else RESULTS_DIR


def benchmark_reports(directory: Path | str | None = None) -> BenchmarkReports:
    """Sort the JSON reports of ``benchmarks/kernels.py`` and ``benchmarks/e2e.py`` in
    ``directory`` (default :func:`results_dir`) by kind; see :class:`BenchmarkReports`.

    A file that is not valid JSON, or that has a known schema but not the fields the plots need,
    is listed in ``unreadable`` instead of raising: a GPU run cut short can leave one behind.
    """
    d = Path(directory) if directory is not None else results_dir()
    out = BenchmarkReports(directory=d)
    paths = sorted(d.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name), reverse=True) if d.is_dir() else []
    for p in paths:
        try:
            rep = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            out.unreadable.append((p, f"{type(exc).__name__}: {exc}"))
            continue
        if not isinstance(rep, dict):
            continue
        schema = str(rep.get("schema", ""))
        if schema.startswith(KERNEL_SCHEMA):
            if not isinstance(rep.get("results"), list):
                out.unreadable.append((p, "no 'results' list"))
                continue
            (out.kernels_gpu if _is_gpu_report(rep) else out.kernels_cpu).append((p, rep))
        elif schema.startswith(E2E_SCHEMA):
            if not isinstance(rep.get("models"), dict):
                out.unreadable.append((p, "no 'models' mapping"))
                continue
            (out.e2e_gpu if _is_gpu_report(rep) else out.e2e_cpu).append((p, rep))
        elif schema.startswith(COMPILE_SCHEMA):
            if not isinstance(rep.get("results"), list):
                out.unreadable.append((p, "no 'results' list"))
                continue
            out.compile.append((p, rep))
    return out


def kernel_benchmarks(directory: Path | str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The GPU kernel benchmark reports (``benchmarks/kernels.py`` run on a GPU) in
    ``directory`` (default ``benchmarks/results``), newest first."""
    return benchmark_reports(directory).kernels_gpu


def _run_benchmark_script(script: str, args: Sequence[str], out: Path | str, timeout: float) -> dict[str, Any]:
    """Run ``python benchmarks/<script> ARGS --out OUT`` in a fresh process and return its report.

    The script is started from the repository root without ``PYTHONPATH``: the script's own
    folder comes first on ``sys.path`` and holds a ``kernels.py``, so the script inserts the
    repository root itself.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks/{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(Path(out).read_text())


def run_quick_kernel_benchmark(out: Path | str, timeout: float = 300.0) -> dict[str, Any]:
    """Run ``python benchmarks/kernels.py --quick --out OUT`` (tiny shapes; on a CPU through
    Triton's interpreter) in a fresh process and return its JSON report."""
    return _run_benchmark_script("kernels.py", ["--quick"], out, timeout)


def run_quick_e2e_benchmark(out: Path | str, models: Sequence[str] = ("efficientnet_lite0",),
                            timeout: float = 300.0) -> dict[str, Any]:
    """Run ``python benchmarks/e2e.py --quick --models ... --out OUT`` (CPU, integer reference,
    batch 1 and 2 at 32x32) in a fresh process and return its JSON report."""
    return _run_benchmark_script("e2e.py", ["--quick", "--models", *models], out, timeout)


def e2e_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per model and batch of a ``benchmarks/e2e.py`` report: images/s of every variant
    (``None`` where it was not measured, with the error if there was one) and the speedups."""
    rows = []
    for model, entry in (report.get("models") or {}).items():
        results = (entry or {}).get("results") or {}
        for batch in sorted(results, key=lambda b: int(b) if str(b).isdigit() else 0):
            r = results[batch] or {}
            row: dict[str, Any] = {"model": model, "batch": int(batch) if str(batch).isdigit() else batch}
            for v in E2E_VARIANTS:
                m = r.get(v) or {}
                ips = m.get("images_per_s")
                if ips is None and m.get("ms"):
                    ips = row["batch"] / (m["ms"] * 1e-3) if isinstance(row["batch"], int) else None
                row[v] = ips
                row[v + "_error"] = m.get("error")
            for k in ("speedup_vs_fp16_eager", "speedup_vs_fp16_compile", "speedup_vs_fp32_eager"):
                row[k] = r.get(k)
            rows.append(row)
    return rows


def bit_exact_checks(device: str | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Run a few random problems of every kind through the Triton kernels and the integer
    reference and compare the int8 outputs bit for bit.

    On a CPU the Triton kernels run through Triton's interpreter (``TRITON_INTERPRET=1`` must
    have been set before the kernels were first used, see :func:`setup`); the problems are
    small so that this takes seconds. Returns one dict per problem: name, ``equal``, seconds.
    """
    import kernels

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(seed)

    def i8(*shape: int) -> torch.Tensor:
        return torch.randint(-128, 128, shape, generator=g, dtype=torch.int8).to(dev)

    def i32(n: int, lo: int, hi: int) -> torch.Tensor:
        return torch.randint(lo, hi, (n,), generator=g, dtype=torch.int32).to(dev)

    def f32(n: int, scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=g) * scale + scale / 10).to(dev)

    M, K, N = 67, 93, 45
    C, H, Wd, O = 24, 9, 11, 40
    cases: list[tuple[str, Callable[[], torch.Tensor]]] = [
        (f"gemm {M}x{K} @ {K}x{N}, weight zero points, ReLU6-like bounds",
         lambda x=i8(M, K), w=i8(N, K), b=i32(N, -5000, 5000), m=f32(N, 1e-3), zw=i32(N, -3, 4):
         kernels.int8_gemm(x, w, b, m, z_x=-7, w_zp=zw, z_y=3, lo=-100, hi=120)),
        (f"conv 3x3 stride 2, padding (0, 1, 0, 1), {C}->{O} channels on {H}x{Wd}",
         lambda x=i8(2, H, Wd, C), w=i8(O, 3, 3, C), b=i32(O, -3000, 3000), m=f32(O, 2e-4):
         kernels.int8_conv2d(x, w, b, m, z_x=5, z_y=-2, stride=2, padding=(0, 1, 0, 1))),
        (f"depthwise 5x5, padding 2, {C} channels on {H}x{Wd}",
         lambda x=i8(2, H, Wd, C), w=i8(5, 5, C), b=i32(C, -2000, 2000), m=f32(C, 5e-4):
         kernels.int8_depthwise_conv2d(x, w, b, m, z_x=-128, z_y=0, lo=-128, hi=60, padding=2)),
        ("residual add", lambda a=i8(2, 6, 6, C), b=i8(2, 6, 6, C):
         kernels.int8_add(a, b, -3, 4, *kernels.add_multipliers(0.02, 0.035, 0.04), z_y=1)),
    ]
    out = []
    for name, fn in cases:
        t0 = time.perf_counter()
        with kernels.use_backend("triton"):
            y_triton = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        with kernels.use_backend("reference"):
            y_ref = fn()
        out.append({"name": name, "equal": bool(torch.equal(y_triton.cpu(), y_ref.cpu())), "seconds": secs,
                    "shape": tuple(y_ref.shape), "device": str(dev)})
    return out


def int8_check(q: nn.Module, net: nn.Module, data: torch.utils.data.TensorDataset, reference: nn.Module,
               device: str | None = None, triton_images: int = 4) -> dict[str, Any]:
    """Run the integer network ``net = dfq_gpu.to_int8(q)`` next to the simulation ``q`` on ``data``.

    Returns the seconds the integer network took, whether its logits equal the simulation's
    bit for bit (and the largest difference), the metrics of both against ``reference`` (the float
    model), and, on a CPU, whether the Triton kernels (through the interpreter) give the same
    logits as the integer reference on the first ``triton_images`` inputs.
    """
    from .evaluate import collect_outputs, evaluate

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    xs = data.tensors[0].to(dev)
    net, qd = net.to(dev), q.to(dev)
    with timer() as t:
        out_int8 = collect_outputs(net, xs, batch_size=256)
    out_sim = collect_outputs(qd, xs, batch_size=256)
    res: dict[str, Any] = {
        "device": dev, "images": len(xs), "seconds": t.seconds, "equal": bool(torch.equal(out_int8, out_sim)),
        "max_abs_diff": float((out_int8 - out_sim).abs().max()),
        "agreement": float((out_int8.argmax(1) == out_sim.argmax(1)).float().mean()),
        "simulation": evaluate(qd.cpu(), data, reference=reference, progress=False),
        "int8": evaluate(net.cpu(), data, reference=reference, progress=False),
    }
    net.to(dev)
    if dev == "cpu" and triton_images:
        saved = getattr(net, "backend", None)
        try:
            net.backend = "triton"
            with timer() as tt:
                few = collect_outputs(net, xs[:triton_images])
        finally:
            net.backend = saved
        res["triton_equal"] = bool(torch.equal(few, out_int8[:triton_images]))
        res["triton_images"] = triton_images
        res["triton_seconds"] = tt.seconds
    return res
