"""What every chapter uses: notebook set-up, a timer, the models and data of the chapters
(loaded once per process), where benchmark results live, and the rows of the README's results
table (:func:`ablation`).

- :func:`setup`: thread count, Triton's interpreter switch, plot defaults, the results folder;
- :func:`lite0`, :func:`imagenet`, :func:`fmnist`: the models and data the chapters use (cached);
- :func:`results_dir`: the folder of benchmark results (an argument, ``$DFQ_BENCHMARK_RESULTS_DIR``,
  the folder given to :func:`setup`, or ``benchmarks/results`` under the working directory);
- :func:`ablation`: rows of the README's results table (``dfq_gpu.ablation``), read from a
  results file of ``python -m dfq_gpu demo --out ...`` when one matches, else computed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

import dfq_gpu

from ..ablation import ABLATION_ROWS, BATCH_SIZE, AblationResult, AblationRow, run_ablation

__all__ = [
    "default_threads", "setup", "timer", "lite0", "imagenet", "fmnist", "example_input", "subset", "results_dir",
    "ablation", "ablation_rows", "EVAL_BATCH",
]

log = logging.getLogger(__name__)

#: Batch size of the chapters' evaluations of quantized networks: small batches keep the
#: simulation's elementwise passes in the CPU's caches (:data:`dfq_gpu.ablation.BATCH_SIZE`).
EVAL_BATCH = BATCH_SIZE

#: The folder :func:`setup` was given for benchmark results (``None``: not given).
_SETUP_RESULTS: Path | None = None


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


def setup(threads: int | None = None, dpi: int = 72, results: Path | str | None = None) -> dict[str, Any]:
    """Prepare a notebook: torch threads, Triton's interpreter when there is no GPU, plot defaults.

    ``TRITON_INTERPRET=1`` must be in the environment before the kernels' Triton modules are
    imported, so this runs first. ``results``: a folder of benchmark results and results tables
    for :func:`results_dir` to use when ``$DFQ_BENCHMARK_RESULTS_DIR`` is not set (the notebooks
    pass their checkout's ``benchmarks/results``). Returns what was set.
    """
    global _SETUP_RESULTS
    _SETUP_RESULTS = None if results is None else Path(results)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    n = threads or default_threads()
    torch.set_num_threads(n)
    torch.manual_seed(0)
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.max_open_warning": 0,
                                "axes.grid": True, "grid.alpha": 0.3, "axes.titlesize": "medium"})
    logging.getLogger("dfq_gpu").setLevel(logging.WARNING)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    found = results_dir()
    return {"threads": n, "device": device, "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
            "results": None if found is None else str(found)}


class timer:
    """``with timer() as t: ...``; ``t.seconds`` afterwards."""

    def __enter__(self) -> "timer":
        self.t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


def results_dir(directory: Path | str | None = None) -> Path | None:
    """The folder of benchmark results: ``directory`` if given, else ``$DFQ_BENCHMARK_RESULTS_DIR``,
    else the folder given to :func:`setup` if it exists, else ``benchmarks/results`` under the
    current working directory if it exists, else ``None`` (no results found)."""
    if directory is not None:
        return Path(directory)
    env = os.environ.get("DFQ_BENCHMARK_RESULTS_DIR")
    if env:
        return Path(env)
    if _SETUP_RESULTS is not None and _SETUP_RESULTS.is_dir():
        return _SETUP_RESULTS
    here = Path.cwd() / "benchmarks" / "results"
    return here if here.is_dir() else None


# ----------------------------------------------------------------------------- models and data
@functools.lru_cache(maxsize=None)
def lite0() -> tuple[nn.Module, Any]:
    """EfficientNet-Lite0 (ImageNet weights) and its preprocessing, loaded once per process."""
    from ..zoo import load_model

    return load_model("efficientnet_lite0")


@functools.lru_cache(maxsize=None)
def _imagenet(pre: Any, views: int) -> torch.utils.data.TensorDataset:
    from ..data import imagenet_sample

    return imagenet_sample(pre, views=views)


def imagenet(pre: Any, views: int = 8) -> torch.utils.data.TensorDataset:
    """The README's evaluation set: ``views`` views of each of the 20 labelled ImageNet images."""
    return _imagenet(pre, views)


@functools.lru_cache(maxsize=None)
def fmnist(limit: int | None = 512) -> tuple[nn.Module, Any, torch.utils.data.TensorDataset]:
    """The small trained Fashion-MNIST network, its preprocessing and the first ``limit`` test images."""
    from ..data import fashion_mnist
    from ..zoo import load_model

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


def _from_results_file(names: Sequence[str], model_name: str, n: int,
                       directory: Path | None) -> tuple[AblationResult, Path] | None:
    """An ablation result for all ``names`` from a JSON file of ``python -m dfq_gpu demo --out``
    in ``directory``, if one has the same model, image count and row configurations."""
    if directory is None or not directory.is_dir():
        return None
    rows = ablation_rows(names)
    for path in sorted(directory.glob("*.json")):
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


def _shown_path(path: Path) -> str:
    """``path`` as a reader recognizes it: from the folder above ``benchmarks/`` when it is in one."""
    parts = path.parts
    if "benchmarks" in parts:
        return str(Path(*parts[len(parts) - 1 - parts[::-1].index("benchmarks"):]))
    return str(path)


@functools.lru_cache(maxsize=1)
def _source_hash() -> str:
    """A hash of the installed package's source code: cached results are only reused by the same code."""
    h = hashlib.sha256()
    for p in sorted(Path(dfq_gpu.__file__).resolve().parent.rglob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def _cache_dir() -> Path | None:
    env = os.environ.get("DFQ_TUTORIAL_CACHE_DIR")
    if env == "":
        return None
    return Path(env) if env else Path.home() / ".cache" / "dfq_gpu" / "tutorial"


def _cache_key(row: AblationRow | None, model_name: str, data: torch.utils.data.TensorDataset,
               input_range: tuple[float, float] | None) -> str:
    """The cache key of a row (``None``: of the FP32 outputs) on this model, data and code."""
    x = data.tensors[0]
    fingerprint = [len(x), float(x.double().sum()), float(x[::7].double().abs().sum())]
    payload = json.dumps({"row": None if row is None else row.name,
                          "config": None if row is None else _row_config(row),
                          "uses_data": None if row is None else row.uses_data,
                          "model": model_name, "data": fingerprint, "input_range": input_range,
                          "code": _source_hash()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _reference(cache: Path | None, model: nn.Module, model_name: str,
               data: torch.utils.data.TensorDataset) -> torch.Tensor | None:
    """The FP32 outputs on ``data`` from the cache (``None`` if not there), so that every chapter
    does not run the same FP32 pass again."""
    if cache is None:
        return None
    p = cache / f"reference-{_cache_key(None, model_name, data, None)}.pt"
    if p.is_file():
        try:
            ref = torch.load(p, weights_only=True)
            if isinstance(ref, torch.Tensor) and ref.shape[0] == len(data.tensors[0]):
                return ref
        except Exception as exc:  # a damaged file: compute it again
            log.info("could not read the cached reference %s: %s", p, exc)
    return None


def _store_reference(cache: Path | None, model_name: str, data: torch.utils.data.TensorDataset,
                     ref: torch.Tensor) -> None:
    if cache is None:
        return
    try:
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(ref, cache / f"reference-{_cache_key(None, model_name, data, None)}.pt")
    except OSError as exc:  # a read-only home: just do not cache
        log.info("could not cache the FP32 reference: %s", exc)


def ablation(names: Sequence[str], model: nn.Module | None = None, data: torch.utils.data.TensorDataset | None = None,
             model_name: str = "efficientnet_lite0", input_range: tuple[float, float] | None = None,
             progress: bool = True, use_results_file: bool | None = None,
             results: Path | str | None = None) -> tuple[AblationResult, str]:
    """Rows of the README's results table, computed as the README computes them.

    With no ``model``/``data``: EfficientNet-Lite0 on the 160 views of the ImageNet sample with
    ``input_range=pre.input_range``, which is what ``python -m dfq_gpu demo`` runs. The rows
    come from, in this order: a results file of ``python -m dfq_gpu demo --out ...`` in the
    folder :func:`results_dir` finds (``results`` if given) with the same model, image count and row configurations; the
    on-disk cache of earlier runs of the same code (``$DFQ_TUTORIAL_CACHE_DIR``, default
    ``~/.cache/dfq_gpu/tutorial``; set it to the empty string to turn it off); and
    :func:`dfq_gpu.ablation.run_ablation` for the rest, in one call (one FP32 reference pass).
    ``use_results_file=False`` (or ``DFQ_TUTORIAL_USE_RESULTS=0`` in the environment) skips the
    results files, to recompute the rows with the code as it is.

    Returns the result and a sentence saying where the rows came from.
    """
    if use_results_file is None:
        use_results_file = os.environ.get("DFQ_TUTORIAL_USE_RESULTS", "1") != "0"
    views = 1
    if model is None or data is None:
        model, pre = lite0()
        data = imagenet(pre)
        views = 8  # the ImageNet sample: 20 images, 8 views each
        input_range = pre.input_range if input_range is None else input_range
    n = len(data.tensors[0])
    if use_results_file:
        found = _from_results_file(names, model_name, n, results_dir(results))
        if found is not None:
            res, path = found
            res.views_per_image = views
            return res, f"read from {_shown_path(path)} (python -m dfq_gpu demo --out ...)"
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
        ref = _reference(cache, model, model_name, data)
        if ref is None:
            from ..evaluate import collect_outputs

            ref = collect_outputs(model, data, batch_size=BATCH_SIZE)  # as run_ablation computes it
            _store_reference(cache, model_name, data, ref)
        res = run_ablation(model, data, model_name=model_name, rows=todo, input_range=input_range, progress=progress,
                           reference=ref)
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
    out = AblationResult(model=model_name, n=n, rows=[computed.get(r.name) or cached[r.name] for r in rows],
                         views_per_image=views)
    parts = []
    if computed:
        parts.append(f"computed {len(computed)} rows with dfq_gpu.ablation.run_ablation in {secs:.0f} s")
    if cached:
        parts.append(f"{len(cached)} rows from the cache of earlier runs of the same code")
    return out, "; ".join(parts)
