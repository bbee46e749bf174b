"""Chapter 6, int8 on the GPU with Triton.

- :func:`gemm_tiled` and :func:`gemm_program_grid`: the int8 GEMM kernel's tiling replayed in
  NumPy; :func:`plot_gemm_tiles` and :class:`GemmTileExplorer` walk its programs and K steps;
- :func:`bit_exact_checks` and :func:`int8_check`: the Triton kernels and the integer network
  against the integer reference and the simulation;
- the benchmark results: :func:`benchmark_reports` sorts the JSON reports of
  ``python -m dfq_gpu.bench.kernels`` / ``python -m dfq_gpu.bench.e2e`` (``benchmarks/kernels.py`` /
  ``benchmarks/e2e.py`` in a checkout) found in a folder, :func:`run_quick_kernel_benchmark` and
  :func:`run_quick_e2e_benchmark` run their ``--quick`` versions, :func:`show_benchmark_results`
  displays them.
"""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from kernels import reference as kref

from . import _widgets as ui
from .common import results_dir, timer

__all__ = [
    "gemm_program_grid", "TileStep", "gemm_tiled", "plot_gemm_tiles", "GemmTileExplorer", "KERNEL_SCHEMA",
    "E2E_SCHEMA", "COMPILE_SCHEMA", "E2E_VARIANTS", "BenchmarkReports", "benchmark_reports", "results_dir",
    "kernel_benchmarks", "run_quick_kernel_benchmark", "run_quick_e2e_benchmark", "e2e_rows", "bit_exact_checks",
    "int8_check", "plot_kernel_benchmark", "plot_e2e_benchmark", "kernel_table_html", "e2e_table_html",
    "compile_table_html", "show_benchmark_results",
]


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
        # the epilogue (one float32 multiply, round half to even, zero point, clamp) is the
        # contract's own: kernels.reference.requantize, not a copy of it
        y[rows, cols] = kref.requantize(torch.from_numpy(acc.astype(np.int32)),
                                        torch.from_numpy(m[cols].copy()), z_y,
                                        torch.tensor([lo], dtype=torch.int32),
                                        torch.tensor([hi], dtype=torch.int32)).numpy()
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

    directory: Path | None
    kernels_gpu: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    kernels_cpu: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    e2e_gpu: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    e2e_cpu: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    compile: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def has_gpu_results(self) -> bool:
        return bool(self.kernels_gpu or self.e2e_gpu)


def benchmark_reports(directory: Path | str | None = None) -> BenchmarkReports:
    """Sort the JSON reports of ``benchmarks/kernels.py`` and ``benchmarks/e2e.py`` in
    ``directory`` (default :func:`~dfq_gpu.tutorial.common.results_dir`) by kind; see
    :class:`BenchmarkReports`. No folder, or one that does not exist, gives no reports.

    A file that is not valid JSON, or that has a known schema but not the fields the plots need,
    is listed in ``unreadable`` instead of raising: a GPU run cut short can leave one behind.
    """
    d = results_dir(directory)
    out = BenchmarkReports(directory=d)
    paths = sorted(d.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name), reverse=True) \
        if d is not None and d.is_dir() else []
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
    ``directory`` (default :func:`~dfq_gpu.tutorial.common.results_dir`), newest first."""
    return benchmark_reports(directory).kernels_gpu


def _run_benchmark_module(name: str, args: Sequence[str], out: Path | str, timeout: float) -> dict[str, Any]:
    """Run ``python -m dfq_gpu.bench.<name> ARGS --out OUT`` in a fresh process and return its report.

    The process imports the same ``dfq_gpu`` as this one: the folder holding the package goes
    first on its ``PYTHONPATH``.
    """
    import dfq_gpu

    env = dict(os.environ)
    home = str(Path(dfq_gpu.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([home] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", f"dfq_gpu.bench.{name}", *args, "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m dfq_gpu.bench.{name} {' '.join(args)} failed ({proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return json.loads(Path(out).read_text())


def run_quick_kernel_benchmark(out: Path | str, timeout: float = 300.0) -> dict[str, Any]:
    """Run ``python -m dfq_gpu.bench.kernels --quick --out OUT`` (tiny shapes; on a CPU through
    Triton's interpreter) in a fresh process and return its JSON report."""
    return _run_benchmark_module("kernels", ["--quick"], out, timeout)


def run_quick_e2e_benchmark(out: Path | str, models: Sequence[str] = ("efficientnet_lite0",),
                            timeout: float = 300.0) -> dict[str, Any]:
    """Run ``python -m dfq_gpu.bench.e2e --quick --models ... --out OUT`` (CPU, integer reference,
    batch 1 and 2 at 32x32) in a fresh process and return its JSON report."""
    return _run_benchmark_module("e2e", ["--quick", "--models", *models], out, timeout)


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
    from ..evaluate import collect_outputs, evaluate

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


def plot_gemm_tiles(M: int, N: int, K: int, block_m: int, block_n: int, block_k: int, group_m: int, pid: int,
                    k_step: int) -> Any:
    """The tiles program ``pid`` reads at K step ``k_step`` (x and w) and the output tile it
    writes, with every output tile labelled by the program that computes it."""
    import matplotlib.patches as patches


    plt = ui.plt()
    grid = gemm_program_grid(M, N, block_m, block_n, group_m)
    pm, pn = map(int, np.argwhere(grid == pid)[0])
    fig, ax = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [K, N, N]})

    def frame(a: Any, w: int, h: int, title: str) -> None:
        a.set_xlim(0, w)
        a.set_ylim(h, 0)
        a.set_aspect("equal")
        a.set_title(title, fontsize="small")
        a.grid(False)

    frame(ax[0], K, M, f"x [M={M}, K={K}]")
    frame(ax[1], N, K, f"w read as [K={K}, N={N}]")
    frame(ax[2], N, M, f"y [M={M}, N={N}]: program id per tile")
    k0 = k_step * block_k
    for k in range(0, K, block_k):
        for a_, rect in ((ax[0], (k, pm * block_m, min(block_k, K - k), min(block_m, M - pm * block_m))),
                         (ax[1], (pn * block_n, k, min(block_n, N - pn * block_n), min(block_k, K - k)))):
            done = k < k0
            cur = k == k0
            face = ui.RED if cur else (ui.ORANGE if done else "0.9")
            a_.add_patch(patches.Rectangle(rect[:2], rect[2], rect[3], facecolor=face, alpha=0.8 if cur else 0.5,
                                           edgecolor="k", lw=0.5))
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            p = int(grid[i, j])
            color = ui.RED if p == pid else (ui.BLUE if p < pid else "0.92")
            ax[2].add_patch(patches.Rectangle((j * block_n, i * block_m), min(block_n, N - j * block_n),
                                              min(block_m, M - i * block_m), facecolor=color, alpha=0.6,
                                              edgecolor="k", lw=0.5))
            ax[2].text(j * block_n + min(block_n, N - j * block_n) / 2, i * block_m + min(block_m, M - i * block_m) / 2,
                       str(p), ha="center", va="center", fontsize="small")
    fig.tight_layout()
    return fig


class GemmTileExplorer(ui.Explorer):
    """Walk the int8 GEMM kernel's programs and K steps on a small problem, next to the values
    :func:`gemm_tiled` computes for them."""

    def __init__(self, x: np.ndarray, w: np.ndarray, params: Mapping[str, Any], block_m: int = 32, block_n: int = 32,
                 block_k: int = 32, group_m: int = 2) -> None:

        self.x, self.w, self.params = np.asarray(x), np.asarray(w), dict(params)
        self.blocks = (block_m, block_n, block_k, group_m)
        self.trace: list[Any] = []
        self.y = gemm_tiled(self.x, self.w, **self.params, block_m=block_m, block_n=block_n, block_k=block_k,
                            group_m=group_m, trace=self.trace)
        M, K = self.x.shape
        N = self.w.shape[0]
        n_prog = int(gemm_program_grid(M, N, block_m, block_n, group_m).size)
        self.pid = ui.control("IntSlider", min=0, max=n_prog - 1, value=0, description="program id")
        self.k = ui.control("IntSlider", min=0, max=-(-K // block_k) - 1, value=0, description="K step")
        self._init_ui([self.pid, self.k])
        for c in (self.pid, self.k):
            c.observe(lambda _change: self.refresh(), names="value")
        self.refresh()

    def refresh(self) -> None:
        self.update(self.pid.value, self.k.value)

    def update(self, pid: int, k_step: int) -> Any:
        step = None
        with self.busy("drawing"):
            bm, bn, bk, gm = self.blocks
            M, K = self.x.shape
            N = self.w.shape[0]
            steps = [t for t in self.trace if t.pid == pid]
            step = steps[min(k_step, len(steps) - 1)]
            r0, c0 = step.pid_m * bm, step.pid_n * bn
            self.text.value = (
                f"program <b>{pid}</b> computes output tile ({step.pid_m}, {step.pid_n}): "
                f"rows {r0}..{min(M, r0 + bm) - 1}, columns {c0}..{min(N, c0 + bn) - 1}; "
                f"after K step {k_step} (k = {step.k0}..{min(K, step.k0 + bk) - 1}) "
                f"its int32 accumulator acc[0, 0] = sum x*w so far = <b>{step.acc_sample}</b>; final int8 "
                f"y[{r0}, {c0}] = <b>{int(self.y[r0, c0])}</b>")
            ui.show_figure(self.out, plot_gemm_tiles(M, N, K, bm, bn, bk, gm, pid, k_step))
        return step


def _num(v: Any) -> float:
    """A finite float, or NaN for ``None``, strings and other non-numbers (missing measurements)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if np.isfinite(f) else float("nan")


def plot_kernel_benchmark(report: Mapping[str, Any], title: str = "") -> Any:
    """Kernel time against its baselines for every case of a ``benchmarks/kernels.py`` report
    (log scale), with bit-exactness and, on a GPU, the fraction of the roofline reached.
    Missing times (a case that failed) are left out of the bars."""
    plt = ui.plt()
    cases = [c for c in report.get("results", []) if isinstance(c, Mapping)]
    gpu = report.get("backend") != "triton-interpreter" and report.get("mode") != "quick"
    fig, ax = plt.subplots(1, 2 if gpu else 1, figsize=(14 if gpu else 10, 0.45 * len(cases) + 1.6), squeeze=False)
    ax = ax[0]
    y = np.arange(len(cases))
    names = [str(c.get("name", "?")) + ("" if c.get("bit_exact") else "  (NOT bit-exact)") for c in cases]
    ax[0].barh(y, [_num(c.get("ms")) for c in cases], height=0.35, color=ui.BLUE, label="int8 kernel")
    base_keys = sorted({k for c in cases for k in (c.get("baselines") or {})})
    colors = [ui.GREY, ui.ORANGE, ui.GREEN, "tab:purple", "tab:brown"]
    for i, k in enumerate(base_keys):
        vals = [_num((c.get("baselines") or {}).get(k)) for c in cases]
        ys = [yy + 0.35 + 0.12 * i for yy, v in zip(y, vals) if not np.isnan(v)]
        ax[0].barh(ys, [v for v in vals if not np.isnan(v)], height=0.12, color=colors[i % len(colors)],
                   label=k.replace("_ms", ""))
    ax[0].set_yticks(y + 0.2)
    ax[0].set_yticklabels(names, fontsize="small")
    ax[0].invert_yaxis()
    ax[0].set_xscale("log")
    ax[0].set_xlabel("milliseconds (log)")
    ax[0].legend(fontsize="x-small", loc="lower right")
    ax[0].set_title(title or f"{report.get('device', '')} ({report.get('backend', '')})", fontsize="small")
    if gpu:
        pct = [np.nan_to_num(_num(c.get("pct_of_roofline"))) for c in cases]
        ax[1].barh(y, pct, color=[ui.GREEN if c.get("goal_met") else ui.ORANGE for c in cases])
        ax[1].set_yticks(y)
        ax[1].set_yticklabels([str(c.get("goal", "")) for c in cases], fontsize="x-small")
        ax[1].invert_yaxis()
        ax[1].set_xlabel("% of the roofline floor (green: goal met)")
    fig.tight_layout()
    return fig


def plot_e2e_benchmark(report: Mapping[str, Any], title: str = "") -> Any:
    """Images per second of the int8 network and the float baselines, per model and batch size,
    from a ``benchmarks/e2e.py`` report (log scale; variants that were not measured are left
    out), with the int8 speedup over fp16 eager written above each group."""

    plt = ui.plt()
    rows = e2e_rows(report)
    models = list(dict.fromkeys(r["model"] for r in rows)) or ["(no results)"]
    fig, axes = plt.subplots(1, len(models), figsize=(max(6.0, 5.5 * len(models)), 3.4), squeeze=False)
    colors = {"int8": ui.BLUE, "fp16_eager": ui.ORANGE, "fp16_compile": ui.GREEN, "fp32_eager": ui.GREY}
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        x = np.arange(len(mine))
        width = 0.8 / len(E2E_VARIANTS)
        for i, v in enumerate(E2E_VARIANTS):
            vals = np.array([_num(r[v]) for r in mine])
            if np.all(np.isnan(vals)):
                continue
            ax.bar(x + (i - 1.5) * width, np.nan_to_num(vals), width=width, color=colors[v], label=v)
        for xi, r in zip(x, mine):
            sp = _num(r.get("speedup_vs_fp16_eager"))
            if not np.isnan(sp):
                top = max([_num(r[v]) for v in E2E_VARIANTS if not np.isnan(_num(r[v]))] or [1.0])
                ax.text(xi, top * 1.15, f"x{sp:.2f}", ha="center", fontsize="x-small")
        ax.set_xticks(x)
        ax.set_xticklabels([f"batch {r['batch']}" for r in mine])
        measured = [_num(r[v]) for r in mine for v in E2E_VARIANTS if not np.isnan(_num(r[v])) and _num(r[v]) > 0]
        if measured:
            ax.set_yscale("log")
            ax.set_ylim(min(measured) / 2, max(measured) * 2)  # room for the speedups above the bars
        ax.set_ylabel("images / s (log)")
        ax.set_title(model, fontsize="small")
        ax.legend(fontsize="x-small", loc="lower right")
    fig.suptitle(title or f"{report.get('device', '')}: int8 network vs float (xN: int8 / fp16 eager)",
                 fontsize="small")
    fig.tight_layout()
    return fig


def _html_table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    th = "".join(f"<th style='padding:0 8px;text-align:left'>{html.escape(str(h))}</th>" for h in head)
    tr = "".join("<tr>" + "".join(f"<td style='padding:0 8px'>{html.escape(str(c))}</td>" for c in b) + "</tr>"
                 for b in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{tr}</tbody></table>"


def _f(v: Any, spec: str) -> str:
    f = _num(v)
    return "-" if np.isnan(f) else format(f, spec)


def kernel_table_html(report: Mapping[str, Any]) -> str:
    """The cases of a ``benchmarks/kernels.py`` report as an HTML table."""
    head = ["case", "bit-exact", "ms", "TOPS", "GB/s", "% roofline", "speedups", "goal", "met"]
    body = []
    for c in report.get("results", []):
        if not isinstance(c, Mapping):
            continue
        sp = ", ".join(f"{k.replace('vs_', '')} x{_f(v, '.2f')}" for k, v in (c.get("speedup") or {}).items())
        body.append([c.get("name", "?"), c.get("bit_exact"), _f(c.get("ms"), ".4f"), _f(c.get("tops"), ".1f"),
                     _f(c.get("gbps"), ".1f"), _f(c.get("pct_of_roofline"), ".0f"), sp, c.get("goal", ""),
                     "-" if c.get("goal_met") is None else c.get("goal_met")])
    return _html_table(head, body)


def e2e_table_html(report: Mapping[str, Any]) -> str:
    """The model x batch rows of a ``benchmarks/e2e.py`` report as an HTML table (images/s)."""

    head = ["model", "batch", *[f"{v} img/s" for v in E2E_VARIANTS], "int8 / fp16 eager", "int8 / fp16 compile"]
    body = []
    for r in e2e_rows(report):
        cells = []
        for v in E2E_VARIANTS:
            val = _f(r[v], ".1f")
            cells.append(val if val != "-" or not r.get(v + "_error") else f"- ({r[v + '_error']})")
        body.append([r["model"], r["batch"], *cells, _f(r.get("speedup_vs_fp16_eager"), ".2f"),
                     _f(r.get("speedup_vs_fp16_compile"), ".2f")])
    return _html_table(head, body)


def compile_table_html(report: Mapping[str, Any]) -> str:
    """A ``benchmarks/kernels.py --compile-only`` report as an HTML table: one row per kernel (an
    ``--all-configs`` report compiles each kernel with every tile: the row says how many, the
    register range and the worst spill)."""
    head = ["kernel", "tiles", "compiled", "wgmma", "shared bytes (max)", "registers", "spill bytes (max)", "cvt.rni",
            "fp32 FMA"]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in report.get("results", []):
        if isinstance(r, Mapping):
            groups.setdefault(str(r.get("kernel", "?")), []).append(r)

    def span(vals: list[Any]) -> Any:
        nums = [v for v in vals if isinstance(v, (int, float))]
        if not nums:
            return "-"
        return nums[0] if min(nums) == max(nums) else f"{min(nums)}-{max(nums)}"

    def peak(vals: list[Any]) -> Any:
        nums = [v for v in vals if isinstance(v, (int, float))]
        return max(nums) if nums else "-"

    body = []
    for name, rs in groups.items():
        def col(key: str) -> list[Any]:
            return [r.get(key) for r in rs]

        body.append([name, len(rs), all(v is True for v in col("ok")), all(v is True for v in col("wgmma")),
                     peak(col("shared_bytes")), span(col("registers")), peak(col("spill_bytes")),
                     all(v is True for v in col("rint")), any(v is True for v in col("fp32_fma"))])
    return _html_table(head, body)


def show_benchmark_results(directory: Path | str | None = None, run_quick: bool = True) -> dict[str, Any]:
    """Display the benchmark results of ``directory`` in a notebook (default: the folder
    :func:`~dfq_gpu.tutorial.common.results_dir` finds; where there is none, that is said).

    GPU reports of ``benchmarks/kernels.py`` and ``benchmarks/e2e.py`` (``kernels_<gpu>.json``,
    ``e2e_<gpu>.json`` from ``benchmarks/gpu_check.sh``) are shown as tables and plots, newest
    first. Where there is none, that is said, and the CPU results are shown instead: a ``--quick``
    report found in ``directory``, or else (with ``run_quick``) a fresh ``--quick`` run in a
    temporary folder (a few seconds each; through Triton's interpreter and the integer reference,
    so they show that everything runs, not how fast). ``--compile-only`` reports (the kernels
    compiled for an H100/H200 without a GPU) are listed too.

    Returns what was shown: ``{"kernels": [...], "e2e": [...], "compile": [...], "gpu": bool,
    "unreadable": [...]}``, each list holding ``(source, device, kind)`` tuples.
    """
    import tempfile

    from IPython.display import HTML, display

    reps = benchmark_reports(directory)
    where = "no folder" if reps.directory is None else str(reps.directory)
    shown: dict[str, Any] = {"kernels": [], "e2e": [], "compile": [], "gpu": reps.has_gpu_results,
                             "unreadable": [p.name for p, _ in reps.unreadable]}
    plt = ui.plt()

    def show(fig: Any) -> None:
        display(fig)
        plt.close(fig)

    def heading(text: str) -> None:
        display(HTML(f"<h4>{html.escape(text)}</h4>"))

    def note(text: str) -> None:
        display(HTML(f"<p>{text}</p>"))

    if reps.directory is None or not reps.directory.is_dir():
        place = "" if reps.directory is None else f" in {html.escape(str(reps.directory))}"
        note(f"<b>No benchmark results found{place}; pass a directory</b>: "
             "<code>show_benchmark_results(path)</code>, <code>$DFQ_BENCHMARK_RESULTS_DIR</code>, or a "
             "<code>benchmarks/results</code> folder under the working directory.")
    for what, gpu_list, cpu_list, runner, table, plot in (
            ("kernels", reps.kernels_gpu, reps.kernels_cpu, run_quick_kernel_benchmark, kernel_table_html,
             plot_kernel_benchmark),
            ("e2e", reps.e2e_gpu, reps.e2e_cpu, run_quick_e2e_benchmark, e2e_table_html, plot_e2e_benchmark)):
        script = "benchmarks/kernels.py" if what == "kernels" else "benchmarks/e2e.py"
        subject = "the int8 kernels" if what == "kernels" else "the whole int8 network"
        heading(f"python -m dfq_gpu.bench.{what} ({script}): {subject}")
        for path, rep in gpu_list:
            ok = rep.get("all_bit_exact") if what == "kernels" else rep.get("complete")
            note(f"<b>{html.escape(path.name)}</b>: {html.escape(str(rep.get('device', '?')))}, torch "
                 f"{html.escape(str(rep.get('torch', '?')))}, triton {html.escape(str(rep.get('triton', '?')))}; "
                 + (f"all bit-exact: <b>{ok}</b>" if what == "kernels" else f"complete: <b>{ok}</b>"
                    + (f", skipped: {html.escape(', '.join(map(str, rep.get('skipped') or [])))}"
                       if rep.get("skipped") else "")))
            if what == "e2e":
                checks = [f"{html.escape(str(name))}: <b>"
                          + ("bit-exact" if (m.get("triton_vs_reference") or {}).get("bit_exact") else "NOT bit-exact")
                          + "</b>" for name, m in (rep.get("models") or {}).items() if "triton_vs_reference" in m]
                if checks:
                    note("Triton network against the integer reference: " + "; ".join(checks))
            for text in rep.get("notes") or []:
                note(html.escape(str(text)))
            display(HTML(table(rep)))
            show(plot(rep, title=f"{path.name}: {rep.get('device', '')}"))
            shown[what].append((path.name, rep.get("device"), "gpu"))
        if gpu_list:
            continue
        note(f"<b>No GPU results yet</b> in {html.escape(where)}: <code>benchmarks/gpu_check.sh</code> "
             f"on an H100/H200 writes <code>{'kernels' if what == 'kernels' else 'e2e'}_&lt;gpu&gt;.json</code> "
             "there. The CPU run below shows that everything runs end to end; its times are not a "
             "performance measurement.")
        if cpu_list:
            path, rep = cpu_list[0]
            source = path.name
        elif run_quick:
            with tempfile.TemporaryDirectory() as tmp:
                rep = runner(Path(tmp) / "quick.json")
            source = f"python -m dfq_gpu.bench.{what} --quick (run now)"
        else:
            continue
        note(f"{html.escape(source)}: {html.escape(str(rep.get('device', '?')))}; "
             + (f"all bit-exact: <b>{rep.get('all_bit_exact')}</b>; " if what == "kernels" else "")
             + html.escape(str(rep.get("note") or "")))
        display(HTML(table(rep)))
        show(plot(rep, title=f"{source} on {rep.get('device', '')}: not a performance measurement"))
        shown[what].append((source, rep.get("device"), "cpu"))
    if reps.compile:
        heading("benchmarks/kernels.py --compile-only: the kernels compiled for an H100/H200 (sm_90) without a GPU")
        for path, rep in reps.compile:
            note(f"<b>{html.escape(path.name)}</b>: target {html.escape(str(rep.get('target', '?')))}, triton "
                 f"{html.escape(str(rep.get('triton', '?')))}; all compiled: <b>{rep.get('all_ok')}</b>")
            display(HTML(compile_table_html(rep)))
            shown["compile"].append((path.name, rep.get("target"), "compile"))
    for path, why in reps.unreadable:
        note(f"skipped {html.escape(path.name)}: {html.escape(why)}")
    return shown
