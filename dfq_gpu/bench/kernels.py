"""Bit-exactness check and benchmark of the int8 kernels against PyTorch baselines.

One command::

    python -m dfq_gpu.bench.kernels [--out PATH]          # CUDA GPU: CNN-sized shapes
    python -m dfq_gpu.bench.kernels --quick [--out PATH]  # tiny shapes; on a CPU through Triton's interpreter
    python -m dfq_gpu.bench.kernels --compile-only        # no GPU: compile everything for cuda:90

(``python benchmarks/kernels.py ...`` in a checkout of the project is the same command.)

Every kernel output is first compared bit for bit with the integer reference
(``kernels.reference``), then timed next to its baselines:

* GEMM: ``torch._int_mm`` alone, ``torch._int_mm`` + a separate eager requantization pass
  (bias add, float multiply, round, zero point, clamp, cast), and fp16 ``torch.matmul``;
* 3x3 convolution (implicit GEMM): cuDNN fp16 ``F.conv2d`` with channels_last tensors;
* depthwise convolution (both kernel variants where both apply): cuDNN fp16 depthwise ``F.conv2d``;
* residual add, max and average pool, input quantization: copies of the same bytes.

**Timing.** The kernels are launched through their launch plans (``kernels.gemm.GemmPlan``,
``kernels.conv.ConvPlan``, ``kernels.depthwise.DepthwisePlan``; the elementwise and pool
launchers take Python scalars), with every argument bound once, and timed by CUDA-graph replay:
one graph holds many calls, replayed a few times between CUDA events; ``ms`` is the median
replay time per call. A case whose capture fails falls back to ``triton.testing.do_bench``
(launch overhead included): the case's ``timer.fallback`` says why, and the report counts them
(``timer_fallback_count``; the goal is zero). ``ms_with_launch`` adds a plain ``do_bench`` time of
one call, launch overhead included.

**L2.** Every case is timed with the L2 cold by rotation: the graph cycles over enough distinct
buffer sets (inputs, weights, outputs; copies of the first set) that together they exceed
``L2_ROTATE_FACTOR`` times the L2 size (read from ``torch.cuda.get_device_properties``; 50-60 MB
on an H100/H200), so a call never finds its operands in L2 from an earlier call. A case that is
larger than that alone uses one set. Each case's ``l2`` records the sets, bytes and L2 size.

**Rooflines.** Bandwidth is reported against a vectorized Triton copy and torch's ``copy_`` of
the same bytes (timed the same way, L2 cold) and against the card's spec (``SPEC_HBM_GBPS``:
H100 SXM 3.35 TB/s, H200 4.8 TB/s); TOPS (2 ops per multiply-accumulate) against the dense int8
tensor-core peak (1979 TOPS on an H100/H200 SXM, a constant, not measured). The roofline floor is
``max(ops / peak, bytes / best measured copy bandwidth)``. Each case also records the tile every
launch ran with (``tiles``: forced / table / autotune / default / interpreter; see
:mod:`kernels.tiles`). Results go to a JSON file (``--out``; default
``benchmarks/results/kernels.json`` on a GPU, a temporary file with ``--quick``).

In ``--quick`` mode without a GPU the timings are those of Triton's interpreter (a wall-clock
median of a few runs over the rotated sets, with a stand-in L2 of ``QUICK_L2_BYTES`` so the
rotation runs) and only show that the pipeline runs end to end.

``--compile-only`` (:mod:`dfq_gpu.bench.compile_sm90`) needs no GPU either: it compiles the
kernels ahead of time for an H100/H200 (``cuda:90``) with Triton's own compiler and ptxas, one
representative configuration per kernel (every autotune configuration with ``--all-configs``),
and reports for each whether it lowered
to wgmma, its shared memory, its register spills, and whether the PTX rounds with
``cvt.rni`` and is free of float32 fused multiply-adds (which would break bit-exactness). It
must run in a fresh process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

# Without a GPU the kernels run through Triton's interpreter, which has to be switched on before
# Triton is imported (its own library functions such as tl.sum are decorated at import time).
# --compile-only compiles for a GPU and must not be interpreted.
if __name__ == "__main__" and not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import kernels  # noqa: E402,F401
from kernels import _config  # noqa: E402
from kernels import reference as ref  # noqa: E402

SCHEMA = "dfq_int8-kernel-bench/1"
PEAK_INT8_TOPS = {"H100": 1979.0, "H200": 1979.0}
PEAK_NOTE = "assumed dense int8 tensor-core peak of an H100/H200 SXM (1979 TOPS); not measured"
#: HBM bandwidth of the card's spec sheet (GB/s), by a substring of the device name, first match wins.
SPEC_HBM_GBPS = (("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0))
#: The rotated buffers of a case exceed this many times the L2 size.
L2_ROTATE_FACTOR = 3.0
#: L2 size assumed when the device does not report one.
DEFAULT_L2_BYTES = 50 * 2**20
#: Stand-in L2 of the quick (CPU) run: small, so that the rotation code runs (on at most
#: ``QUICK_MAX_SETS`` sets).
QUICK_L2_BYTES = 64 * 2**10
QUICK_MAX_SETS = 2
MAX_SETS = 64
MAX_ROTATED_BYTES = 8 * 2**30
#: CUDA-graph timing: about this many milliseconds of work per replay, this many timed replays.
GRAPH_TARGET_MS = 10.0
GRAPH_REPLAYS = 7
GRAPH_MAX_CALLS = 1000

FULL_GEMM = [(8192, 8192, 8192), (802816, 24, 144), (802816, 144, 24), (50176, 96, 576), (12544, 320, 1280),
             (50176, 1024, 256), (50176, 2304, 256)]  # fmt: skip
FULL_CONV = [(256, 56, 56, 64, 64), (256, 28, 28, 128, 128), (256, 14, 14, 256, 256), (256, 7, 7, 512, 512)]
FULL_DW = [(256, 56, 56, 144, 1), (256, 112, 112, 96, 2), (256, 14, 14, 576, 1)]
FULL_ADD = [(256, 56, 56, 24), (256, 28, 28, 32)]

QUICK_GEMM = [(64, 64, 64), (100, 24, 144), (100, 144, 24)]
QUICK_CONV = [(1, 8, 8, 32, 32)]
QUICK_DW = [(1, 8, 8, 144, 1), (1, 10, 10, 96, 2)]
QUICK_ADD = [(2, 12, 12, 24)]
FULL_MAXPOOL = [(256, 112, 112, 64)]  # ResNet-50 after conv1
QUICK_MAXPOOL = [(2, 12, 12, 64)]
FULL_AVGPOOL = [(256, 7, 7, 1280), (256, 7, 7, 2048)]  # EfficientNet-Lite0/MobileNetV2, ResNet-50 heads
QUICK_AVGPOOL = [(2, 7, 7, 40)]
FULL_QUANTIZE = [(256, 224, 224, 3)]
QUICK_QUANTIZE = [(2, 16, 16, 3)]
#: Stems on the float input (B, H, W, C, N, kernel, stride, padding): ResNet-50's 7x7/2, EfficientNet's
#: 3x3/2 with TF "same" padding.
FULL_STEM = [(256, 224, 224, 3, 64, 7, 2, (3, 3, 3, 3)), (256, 224, 224, 3, 32, 3, 2, (0, 1, 0, 1))]
QUICK_STEM = [(1, 16, 16, 3, 16, 7, 2, (3, 3, 3, 3)), (1, 15, 15, 3, 8, 3, 2, (0, 1, 0, 1))]
#: Depthwise + 1x1 project pairs of EfficientNet-Lite0 (B, H, W, E, kernel, N, residual): a 56x56 block
#: with its skip add, the last block (N = 320: three column blocks recompute the depthwise tile).
FULL_DWPROJECT = [(256, 56, 56, 144, 3, 24, True), (256, 7, 7, 1152, 3, 320, False)]
QUICK_DWPROJECT = [(1, 9, 9, 40, 3, 24, True), (1, 5, 5, 72, 5, 150, False)]

Call = Callable[[], Any]


# =============================================================================================
# Timing
# =============================================================================================
class Timer:
    """Median time per call, in milliseconds, of a list of calls (one per rotated buffer set).

    On CUDA: CUDA-graph replay (one graph cycling over the calls many times; see the module
    docstring), falling back to ``triton.testing.do_bench`` when capturing fails (recorded in
    :attr:`fallbacks`). Without CUDA: a wall clock over the calls (median of 2 passes)."""

    def __init__(self, cuda: bool, quick: bool):
        self.cuda = cuda
        self.quick = quick
        self.name = (
            "CUDA-graph replay over rotated buffer sets (median of replays; do_bench if capture fails)"
            if cuda
            else "time.perf_counter over the rotated sets (" + ("one pass" if quick else "median of 2 passes")
            + ", no warm-up)"
        )
        self.fallbacks: List[str] = []

    def measure(self, calls: Sequence[Call], label: str = "fn") -> Dict[str, Any]:
        """``{"ms", "method", "calls_per_replay", "fallback"}`` for ``calls`` (each already run once)."""
        calls = list(calls)
        if not self.cuda:
            times = []
            for _ in range(1 if self.quick else 2):
                t0 = time.perf_counter()
                for f in calls:
                    f()
                times.append((time.perf_counter() - t0) * 1e3 / len(calls))
            return {"ms": statistics.median(times), "method": "wall_clock", "calls_per_replay": None, "fallback": None}
        try:
            ms, n = self._graph(calls)
            return {"ms": ms, "method": "cuda_graph", "calls_per_replay": n, "fallback": None}
        except Exception as exc:  # noqa: BLE001 - capture unsupported for these calls: time them with launches
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            self.fallbacks.append(f"{label}: {reason}")
            torch.cuda.synchronize()
            kw = dict(warmup=5, rep=20) if self.quick else dict(warmup=25, rep=100)
            ms = float(triton.testing.do_bench(lambda: [f() for f in calls], return_mode="median", **kw)) / len(calls)
            return {"ms": ms, "method": "do_bench (fallback)", "calls_per_replay": None, "fallback": reason}

    def __call__(self, fn: Call) -> float:
        """Median ms of one call (one set)."""
        return self.measure([fn])["ms"]

    def _graph(self, calls: List[Call]):
        cur = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(cur)
        with torch.cuda.stream(side):
            for f in calls:
                f()
        cur.wait_stream(side)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for f in calls:
            f()
        end.record()
        end.synchronize()
        per_pass = max(start.elapsed_time(end), 1e-3)
        target = GRAPH_TARGET_MS / (3.0 if self.quick else 1.0)
        cycles = int(max(1, min(target / per_pass, GRAPH_MAX_CALLS // len(calls))))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            keep = None
            for _ in range(cycles):
                keep = [f() for f in calls]  # outputs of the previous cycle stay distinct buffers
            del keep
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(3 if self.quick else GRAPH_REPLAYS):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        del graph
        n = cycles * len(calls)
        return statistics.median(times) / n, n

    def with_launch(self, fn: Call) -> Optional[float]:
        """``do_bench`` median including Python/launch overhead (CUDA only; L2 as it comes)."""
        if not self.cuda:
            return None
        kw = dict(warmup=5, rep=20) if self.quick else dict(warmup=25, rep=100)
        return float(triton.testing.do_bench(fn, return_mode="median", **kw))


def _try_time(timer: Timer, calls: Sequence[Call], label: str) -> Optional[Dict[str, Any]]:
    """Time a baseline (each call run once first); ``None`` when PyTorch does not support it here."""
    try:
        for f in calls:
            f()
        return timer.measure(calls, label)
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _ms(t: Optional[Dict[str, Any]]) -> Optional[float]:
    return None if t is None else t["ms"]


# =============================================================================================
# L2 rotation and copy references
# =============================================================================================
def l2_bytes(cuda: bool, quick: bool) -> Dict[str, Any]:
    """The L2 size in bytes and where it came from."""
    if not cuda:
        return {"bytes": QUICK_L2_BYTES, "source": "quick-mode stand-in (CPU: no meaning)"}
    try:
        size = int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0))
    except Exception:  # pragma: no cover
        size = 0
    if size > 0:
        return {"bytes": size, "source": "torch.cuda.get_device_properties().L2_cache_size"}
    return {"bytes": DEFAULT_L2_BYTES, "source": "assumed (the device reported none)"}


def n_sets(ctx: Dict[str, Any], bytes_per_set: int) -> int:
    """Buffer sets a case cycles over so that together they exceed ``L2_ROTATE_FACTOR`` x L2."""
    need = math.ceil(L2_ROTATE_FACTOR * ctx["l2_bytes"] / max(bytes_per_set, 1))
    cap = QUICK_MAX_SETS if not ctx["cuda"] else MAX_SETS
    return int(max(1, min(cap, need, MAX_ROTATED_BYTES // max(bytes_per_set, 1))))


def l2_info(ctx: Dict[str, Any], sets: int, bytes_per_set: int) -> Dict[str, Any]:
    rotated = sets * bytes_per_set
    return {"method": "rotate", "buffer_sets": sets, "bytes_per_set": bytes_per_set, "rotated_bytes": rotated,
            "l2_bytes": ctx["l2_bytes"], "cold": rotated >= L2_ROTATE_FACTOR * ctx["l2_bytes"]}


def clone_sets(first: Dict[str, Any], sets: int) -> List[Dict[str, Any]]:
    """``first`` and ``sets - 1`` copies of it with every tensor cloned (distinct memory)."""
    out = [first]
    for _ in range(sets - 1):
        out.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in first.items()})
    return out


def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):  # pragma: no cover - jitted by _triton_copy_kernel
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst + offs, tl.load(src + offs, mask=mask), mask=mask)


_COPY_KERNEL: List[Any] = []


def _triton_copy_kernel() -> Any:
    """The vectorized copy kernel (int32 elements, 16 per thread with 8 warps: 16-byte loads and
    stores), decorated on first use (after the interpreter switch of :func:`run`)."""
    if not _COPY_KERNEL:
        _COPY_KERNEL.append(triton.jit(_copy_kernel))
    return _COPY_KERNEL[0]


def triton_copy(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Copy int32 ``src`` into ``dst`` with the vectorized Triton copy kernel."""
    n = src.numel()
    block = 4096
    opts = {} if _config.INTERPRETED else {"num_warps": 8}
    _triton_copy_kernel()[(triton.cdiv(n, block),)](src, dst, n, BLOCK=block, **opts)
    return dst


def copy_refs(ctx: Dict[str, Any], nbytes: int) -> Dict[str, Any]:
    """Triton copy and torch ``copy_`` moving ``nbytes`` in all (half read, half written), timed
    like the kernels (same rotation rule); cached per byte count."""
    cache = ctx.setdefault("_copy_cache", {})
    if nbytes in cache:
        return cache[nbytes]
    timer, dev = ctx["timer"], ctx["device"]
    n = max(4, (nbytes // 2 + 15) // 16 * 4)  # int32 elements, a multiple of 16 bytes
    per_set = 8 * n
    sets = n_sets(ctx, per_set)
    bufs = [(torch.zeros(n, dtype=torch.int32, device=dev), torch.empty(n, dtype=torch.int32, device=dev))
            for _ in range(sets)]  # fmt: skip
    tri = [lambda s=s, d=d: triton_copy(s, d) for s, d in bufs]
    tor = [lambda s=s, d=d: d.copy_(s) for s, d in bufs]
    t_tri = _try_time(timer, tri, f"triton copy {nbytes} B")
    t_tor = _try_time(timer, tor, f"torch copy_ {nbytes} B")
    moved = 2 * 4 * n
    res = {
        "bytes": moved,
        "triton_copy_ms": _ms(t_tri),
        "torch_copy_ms": _ms(t_tor),
        "triton_copy_gbps": None if not _ms(t_tri) else moved / (t_tri["ms"] * 1e-3) / 1e9,
        "torch_copy_gbps": None if not _ms(t_tor) else moved / (t_tor["ms"] * 1e-3) / 1e9,
        "timer": {"triton": None if t_tri is None else t_tri["method"],
                  "torch": None if t_tor is None else t_tor["method"]},
        "l2": l2_info(ctx, sets, per_set),
    }
    del bufs
    cache[nbytes] = res
    return res


def copy_bandwidth(timer: Timer, ctx: Dict[str, Any], quick: bool) -> Dict[str, Any]:
    """Read+write bandwidth of a large copy (1 GiB moved on a GPU): torch ``copy_`` and the Triton copy."""
    n = (1 << 14) if quick else (1 << 30)
    return copy_refs(ctx, n)


def spec_hbm_gbps(device_name: str) -> Optional[float]:
    for key, gbps in SPEC_HBM_GBPS:
        if key in device_name:
            return gbps
    return None


# =============================================================================================
# Cases
# =============================================================================================
def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def _pct(ms_ref: Optional[float], ms: Optional[float]) -> Optional[float]:
    return None if ms_ref is None or not ms else 100.0 * ms_ref / ms


def _calls(sets: Sequence[Dict[str, Any]], fn: Callable[[Dict[str, Any]], Any]) -> List[Call]:
    return [lambda s=s: fn(s) for s in sets]


def _first_call(calls: Sequence[Call]) -> Any:
    """Run the first call, recording the tile of every launch (``kernels.tiles``)."""
    from kernels import tiles

    with tiles.record_launches() as rec:
        y = calls[0]()
    return y, [tiles.describe(r) for r in rec]


def _entry(kind, name, shape, exact, t, ops, nbytes, ctx, baselines, speedup, goal, goal_met,
           ms_launch=None, l2=None, launched=None) -> Dict[str, Any]:  # fmt: skip
    ms = t["ms"]
    cp = copy_refs(ctx, nbytes)
    copies = [g for g in (cp["triton_copy_gbps"], cp["torch_copy_gbps"]) if g]
    best_copy = max(copies) if copies else None
    floor = None
    if best_copy:
        floor = nbytes / (best_copy * 1e9) * 1e3
        if ops and ctx["peak_tops"]:
            floor = max(floor, ops / (ctx["peak_tops"] * 1e12) * 1e3)
    gbps = nbytes / (ms * 1e-3) / 1e9
    tops = ops / (ms * 1e-3) / 1e12 if ops else None
    return {
        "kind": kind,
        "name": name,
        "shape": shape,
        "bit_exact": bool(exact),
        "ms": ms,
        "ms_with_launch": ms_launch,
        "timer": {k: t.get(k) for k in ("method", "calls_per_replay", "fallback")},
        "l2": l2,
        "tops": tops,
        "pct_of_peak_tops": None if tops is None or not ctx["peak_tops"] else 100.0 * tops / ctx["peak_tops"],
        "bytes": nbytes,
        "gbps": gbps,
        "bandwidth": {
            "triton_copy_gbps": cp["triton_copy_gbps"],
            "torch_copy_gbps": cp["torch_copy_gbps"],
            "spec_gbps": ctx["spec_gbps"],
            "pct_of_triton_copy": None if not cp["triton_copy_gbps"] else 100.0 * gbps / cp["triton_copy_gbps"],
            "pct_of_torch_copy": None if not cp["torch_copy_gbps"] else 100.0 * gbps / cp["torch_copy_gbps"],
            "pct_of_spec": None if not ctx["spec_gbps"] else 100.0 * gbps / ctx["spec_gbps"],
        },
        "roofline_floor_ms": floor,
        "pct_of_roofline": None if floor is None else 100.0 * floor / ms,
        "baselines": baselines,
        "speedup": speedup,
        "goal": goal,
        "goal_met": goal_met if ctx["cuda"] else None,
        "tiles": launched,
    }


def _copy_ms(ctx: Dict[str, Any], nbytes: int) -> Optional[float]:
    """The faster measured copy of ``nbytes`` (ms)."""
    cp = copy_refs(ctx, nbytes)
    vals = [v for v in (cp["triton_copy_ms"], cp["torch_copy_ms"]) if v]
    return min(vals) if vals else None


def bench_gemm(M: int, K: int, N: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    from kernels.gemm import GemmPlan

    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g).to(dev)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g).to(dev)
    bias = torch.randint(-20000, 20000, (N,), dtype=torch.int32, generator=g).to(dev)
    m = (torch.rand(N, generator=g) * 4.0 / (128.0 * 128.0 * math.sqrt(K))).to(dev)
    z_x, z_y = -128, 5  # post-ReLU activations (uint8 zero point 0), symmetric weights
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    b_n, w_zp, m_n, z_x, z_y, lo_n, hi_n = ref.check_gemm_args(x, w, bias, None, m, z_x, z_y, lo, hi)
    folded = ref.fold_bias(w, b_n, z_x, w_zp)
    nbytes = M * K + N * K + M * N + 12 * N
    sets = clone_sets(dict(x=x, w=w, folded=folded, m=m_n, lo=lo_n, hi=hi_n), n_sets(ctx, nbytes))
    for s in sets:
        s["plan"] = GemmPlan(s["w"], s["folded"], w_zp, s["m"], z_y, s["lo"], s["hi"], False)
    ours = _calls(sets, lambda s: s["plan"](s["x"]))
    y, launched = _first_call(ours)
    exact = torch.equal(y, ref.int8_gemm(x, w, bias, m, z_x, None, z_y, lo, hi))
    t = timer.measure(ours, f"gemm {M}x{K}x{N}")
    ms_launch = timer.with_launch(ours[0])
    variants = gemm_variants(ours, y, exact, t, launched, timer, f"gemm {M}x{K}x{N}")
    exact = all(v["bit_exact"] for v in variants.values())  # the case is exact only if every variant is
    padded = time_padded_gemm(sets, y, w_zp, z_y, timer, f"gemm {M}x{K}x{N} padded") if K % 16 or N % 16 else None
    int_mm_ok = M > 16 and K % 8 == 0 and N % 8 == 0 and K >= 16

    def int_mm_requant(s):
        acc = torch._int_mm(s["x"], s["w"].t())
        yy = (acc + s["folded"]).to(torch.float32).mul_(s["m"]).round_().add_(z_y).clamp_(-128, 127)
        return yy.to(torch.int8)

    base: Dict[str, Optional[float]] = {"int_mm_ms": None, "int_mm_requant_ms": None}
    if int_mm_ok:
        base["int_mm_ms"] = _ms(_try_time(timer, _calls(sets, lambda s: torch._int_mm(s["x"], s["w"].t())), "int_mm"))
        base["int_mm_requant_ms"] = _ms(_try_time(timer, _calls(sets, int_mm_requant), "int_mm_requant"))
    for s in sets:
        s["xh"], s["wh"] = s["x"].to(torch.float16), s["w"].to(torch.float16)
    base["fp16_matmul_ms"] = _ms(_try_time(timer, _calls(sets, lambda s: torch.matmul(s["xh"], s["wh"].t())),
                                           "fp16 matmul"))  # fmt: skip
    l2 = l2_info(ctx, len(sets), nbytes)
    del sets
    speed = {
        "vs_int_mm": _ratio(base["int_mm_ms"], t["ms"]),
        "vs_int_mm_requant": _ratio(base["int_mm_requant_ms"], t["ms"]),
        "vs_fp16_matmul": _ratio(base["fp16_matmul_ms"], t["ms"]),
        "tma_vs_pointers": _ratio((variants.get("pointers") or {}).get("ms"), (variants.get("tma") or {}).get("ms")),
        "padded_vs_unpadded": _ratio(t["ms"], (padded or {}).get("ms")),
    }
    big = M == N == K == 8192
    goal = ">= 0.8x torch._int_mm" if big else ">= 1.2x torch._int_mm + requant"
    ref_speed = speed["vs_int_mm"] if big else speed["vs_int_mm_requant"]
    met = None if ref_speed is None else ref_speed >= (0.8 if big else 1.2)
    entry = _entry("gemm", f"gemm M={M} K={K} N={N}", {"M": M, "K": K, "N": N}, exact, t, 2.0 * M * N * K,
                   nbytes, ctx, base, speed, goal, met, ms_launch, l2, launched)  # fmt: skip
    entry["variants"] = variants
    if padded is not None:
        entry["padded"] = padded
    return entry


def time_padded_gemm(sets: List[Dict[str, Any]], y: torch.Tensor, w_zp: Optional[torch.Tensor], z_y: int,
                     timer: Timer, label: str) -> Dict[str, Any]:
    """A GEMM whose K or N is not a multiple of 16 run as ``to_int8(pad_channels=True)`` runs it: on
    rows padded to 16-byte multiples (``x`` ``[M, Kp]``, ``w`` ``[Np, Kp]`` with zero rows and
    columns, symmetric weights), its ``[M, :N]`` checked against ``y`` and timed on the same sets."""
    from kernels.gemm import GemmPlan

    assert w_zp is None  # the cases' weights are symmetric: the extra columns of x may hold anything
    (M, K), N = sets[0]["x"].shape, sets[0]["w"].shape[0]
    kp, np_ = -(-K // 16) * 16, -(-N // 16) * 16

    def grow(v: Optional[torch.Tensor], fill: float) -> Optional[torch.Tensor]:
        return v if v is None or v.numel() == 1 else torch.cat([v, v.new_full((np_ - N,), fill)])

    for s in sets:
        s["xp"] = torch.zeros(M, kp, dtype=torch.int8, device=s["x"].device)
        s["xp"][:, :K] = s["x"]
        wp = torch.zeros(np_, kp, dtype=torch.int8, device=s["w"].device)
        wp[:N, :K] = s["w"]
        s["plan_padded"] = GemmPlan(wp, grow(s["folded"], 0), None, grow(s["m"], 1.0), z_y, grow(s["lo"], -128),
                                    grow(s["hi"], 127), False)
    calls = _calls(sets, lambda s: s["plan_padded"](s["xp"]))
    yp, launched = _first_call(calls)
    t = _try_time(timer, calls, label)
    for s in sets:
        del s["xp"], s["plan_padded"]
    return {"K": kp, "N": np_, "bit_exact": bool(torch.equal(yp[:, :N], y)), "ms": _ms(t), "timer": t,
            "tiles": launched}


def gemm_variants(calls: Sequence[Call], y: torch.Tensor, exact: bool, t: Dict[str, Any], launched: Any,
                  timer: Timer, label: str) -> Dict[str, Any]:
    """The GEMM and convolution kernel variants (``kernels.settings.GEMM_VARIANTS``) of a case: the one in force
    (output ``y``, ``exact``, time ``t``, tiles ``launched``) and the other, checked against ``y``
    and timed the same way where it runs (the "tma" variant leaves the launches whose operands TMA
    cannot read to the pointer kernel: then only the one in force is reported)."""
    from kernels import settings as ks

    current = ks.current_settings().gemm_variant
    variants: Dict[str, Any] = {current: {"ms": t["ms"], "bit_exact": exact, "timer": t, "tiles": launched}}
    other = "tma" if current == "pointers" else "pointers"
    with ks.use_settings(gemm_variant=other):
        y_other, launched_other = _first_call(calls)
        if [r["kernel"] for r in launched_other] != [r["kernel"] for r in launched]:
            t_other = _try_time(timer, calls, f"{label} {other}")
            variants[other] = {"bit_exact": bool(torch.equal(y_other, y)) and exact, "ms": _ms(t_other),
                               "timer": t_other, "tiles": launched_other}  # fmt: skip
    return variants


def _slices(b: int) -> List[slice]:
    return [slice(0, min(2, b)), slice(max(0, b - 2), b)] if b > 4 else [slice(0, b)]


def bench_conv(B: int, H: int, W: int, C: int, N: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    from kernels.conv import ConvPlan

    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = torch.randint(-128, 128, (B, H, W, C), dtype=torch.int8, generator=g).to(dev)
    w = torch.randint(-128, 128, (N, 3, 3, C), dtype=torch.int8, generator=g).to(dev)
    bias = torch.randint(-20000, 20000, (N,), dtype=torch.int32, generator=g).to(dev)
    m = (torch.rand(N, generator=g) * 4.0 / (128.0 * 128.0 * math.sqrt(9 * C))).to(dev)
    z_x, z_y = -128, 0
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    kw = dict(z_x=z_x, z_y=z_y, lo=lo, hi=hi, stride=1, padding=1)
    b_n, w_zp, m_n, z_x, z_y, lo_n, hi_n, stride, pad = ref.check_conv_args(x, w, bias, None, m, z_x, z_y, lo, hi, 1, 1)
    folded = ref.fold_bias(w, b_n, z_x, w_zp)
    nbytes = B * H * W * (C + N) + N * 9 * C + 12 * N
    sets = clone_sets(dict(x=x, w=w, folded=folded, m=m_n, lo=lo_n, hi=hi_n), n_sets(ctx, nbytes))
    for s in sets:
        s["plan"] = ConvPlan(s["w"], s["folded"], w_zp, s["m"], z_x, z_y, s["lo"], s["hi"], stride, pad, False)
    ours = _calls(sets, lambda s: s["plan"](s["x"]))
    y, launched = _first_call(ours)
    exact = all(torch.equal(y[sl], ref.int8_conv2d(x[sl], w, bias, m, **kw)) for sl in _slices(B))
    t = timer.measure(ours, f"conv3x3 {B}x{H}x{W}x{C}->{N}")
    ms_launch = timer.with_launch(ours[0])
    loops = time_conv_loops(ours, lambda yy: all(torch.equal(yy[sl], y[sl]) for sl in _slices(B)), timer,
                            f"conv3x3 {B}x{H}x{W}x{C}->{N}")
    exact = exact and all(v.get("bit_exact", True) for v in loops.values() if isinstance(v, dict))
    variants = gemm_variants(ours, y, exact, t, launched, timer, f"conv3x3 {B}x{H}x{W}x{C}->{N}")
    exact = all(v["bit_exact"] for v in variants.values())
    for s in sets:
        s["xh"] = s["x"].permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
        s["wh"] = s["w"].permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
    base = {"cudnn_fp16_channels_last_ms": _ms(_try_time(
        timer, _calls(sets, lambda s: torch.nn.functional.conv2d(s["xh"], s["wh"], padding=1)), "cudnn conv"))}
    l2 = l2_info(ctx, len(sets), nbytes)
    del sets
    gemm_ms = equivalent_gemm_ms(B * H * W, 9 * C, N, ctx)
    base["equivalent_gemm_ms"] = gemm_ms
    for v in variants.values():  # each kernel variant against the same baselines
        v["vs_cudnn_fp16"] = _ratio(base["cudnn_fp16_channels_last_ms"], v["ms"])
        v["vs_equivalent_gemm"] = _ratio(gemm_ms, v["ms"])
    speed = {"vs_cudnn_fp16": _ratio(base["cudnn_fp16_channels_last_ms"], t["ms"]),
             "vs_equivalent_gemm": _ratio(gemm_ms, t["ms"]),
             "tma_vs_pointers": _ratio((variants.get("pointers") or {}).get("ms"),
                                       (variants.get("tma") or {}).get("ms"))}
    met = (None if speed["vs_cudnn_fp16"] is None or speed["vs_equivalent_gemm"] is None else
           speed["vs_cudnn_fp16"] >= CONV_GOAL_VS_CUDNN and speed["vs_equivalent_gemm"] >= CONV_GOAL_VS_GEMM)
    ops = 2.0 * B * H * W * N * 9 * C
    e = _entry("conv3x3", f"conv3x3 {B}x{H}x{W}x{C}->{N}", {"B": B, "H": H, "W": W, "C": C, "N": N}, exact, t,
               ops, nbytes, ctx, base, speed,
               f">= {CONV_GOAL_VS_GEMM}x the project's GEMM on the equivalent [B*OH*OW, 9C] x [9C, N] shape and "
               f">= {CONV_GOAL_VS_CUDNN}x cuDNN fp16 channels_last", met, ms_launch, l2, launched)  # fmt: skip
    e["loops"] = loops
    e["variants"] = variants
    return e


#: The convolution goals of the roofline issue, against the GEMM of the same shape and cuDNN fp16.
CONV_GOAL_VS_GEMM = 0.7
CONV_GOAL_VS_CUDNN = 1.6


def time_conv_loops(calls: Sequence[Call], same: Callable[[Any], bool], timer: Timer, label: str) -> Dict[str, Any]:
    """The convolution timed with each of its two tap-major loops forced (``kernels.conv``'s
    ``TAP_UNROLL_MIN_STEPS``: 1 unrolls the taps of every layer, a huge value keeps every layer
    with 2-32 taps on the stepped loop), each checked against the default's output with ``same``;
    ``"default"`` names the loop the heuristic picks for the tile in use. Decides the threshold."""
    from kernels import conv

    saved = conv.TAP_UNROLL_MIN_STEPS
    out: Dict[str, Any] = {"threshold": saved}
    for mode, value in (("unrolled", 1), ("stepped", 1 << 30)):
        conv.TAP_UNROLL_MIN_STEPS = value
        try:
            y = calls[0]()  # compiles this loop before any capture
            res = timer.measure(calls, f"{label} {mode} loop")
            out[mode] = {"ms": res["ms"], "method": res["method"], "bit_exact": bool(same(y))}
        except Exception as exc:  # recorded, the run goes on
            out[mode] = {"ms": None, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            conv.TAP_UNROLL_MIN_STEPS = saved
    return out


def equivalent_gemm_ms(M: int, K: int, N: int, ctx: Dict[str, Any]) -> Optional[float]:
    """Time of the project's GEMM (``GemmPlan``, same epilogue) on the convolution's equivalent
    ``[M, K] x [K, N]`` shape, random int8 operands, one buffer set (None if it fails)."""
    from kernels.gemm import GemmPlan

    dev, g = ctx["device"], ctx["gen"]
    try:
        x = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g).to(dev)
        w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g).to(dev)
        m = torch.full((N,), 1.0 / (128.0 * 128.0 * math.sqrt(K)), device=dev)
        lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
        hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
        bias = ref.fold_bias(w, torch.zeros(N, dtype=torch.int32, device=dev), -128, None)
        plan = GemmPlan(w, bias, None, m, 0, lo, hi, False)
        calls = [lambda: plan(x)]
        calls[0]()
        return _ms(_try_time(ctx["timer"], calls, "equivalent gemm"))
    except Exception:  # recorded as a missing baseline
        return None


def bench_depthwise(B: int, H: int, W: int, C: int, stride: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    from kernels.depthwise import DepthwisePlan

    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = torch.randint(-128, 128, (B, H, W, C), dtype=torch.int8, generator=g).to(dev)
    w = torch.randint(-128, 128, (3, 3, C), dtype=torch.int8, generator=g).to(dev)
    bias = torch.randint(-2000, 2000, (C,), dtype=torch.int32, generator=g).to(dev)
    m = (torch.rand(C, generator=g) * 0.01).to(dev)
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    kw = dict(z_x=-128, z_y=-128, lo=lo, hi=hi, stride=stride, padding=1)
    b_n, w_zp, m_n, z_x, z_y, lo_n, hi_n, st, pad = ref.check_depthwise_args(x, w, bias, None, m, -128, -128, lo, hi,
                                                                           stride, 1)  # fmt: skip
    OH, OW = ref.conv_output_size(H, W, 3, 3, st, pad)
    nbytes = x.numel() + B * OH * OW * C + w.numel() + 12 * C
    sets = clone_sets(dict(x=x, w=w, bias=b_n, m=m_n, lo=lo_n, hi=hi_n), n_sets(ctx, nbytes))
    for s in sets:
        s["plan"] = DepthwisePlan(s["w"], s["bias"], w_zp, s["m"], z_x, z_y, s["lo"], s["hi"], st, pad, False)
    ours = _calls(sets, lambda s: s["plan"](s["x"]))
    y, launched = _first_call(ours)
    exact = all(torch.equal(y[sl], ref.int8_depthwise_conv2d(x[sl], w, bias, m, **kw)) for sl in _slices(B))
    label = f"depthwise3x3 s{stride} {B}x{H}x{W}x{C}"
    t = timer.measure(ours, label)
    ms_launch = timer.with_launch(ours[0])
    # the other kernel variants where they apply ("rows": stride 1; "tma": stride 1 or 2, C % 16 == 0):
    # checked and timed the same way
    current = _config.depthwise_variant()
    variants: Dict[str, Any] = {current: {"ms": t["ms"], "bit_exact": exact, "timer": t, "tiles": launched}}
    applies = {"tiles": True, "rows": stride == 1, "tma": stride in (1, 2) and C % 16 == 0 and min(H, W) >= stride}
    for other in [v for v in _config.DEPTHWISE_VARIANTS if v != current and applies[v]]:
        with _config.use_depthwise_variant(other):
            y_other, launched_other = _first_call(ours)
            t_other = _try_time(timer, ours, f"{label} {other}")
            variants[other] = {"bit_exact": bool(torch.equal(y_other, y)) and exact, "ms": _ms(t_other),
                               "timer": t_other, "tiles": launched_other}  # fmt: skip
        del y_other
        exact = exact and variants[other]["bit_exact"]  # the case is exact only if every variant is
    for s in sets:
        s["xh"] = s["x"].permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
        s["wh"] = s["w"].permute(2, 0, 1).unsqueeze(1).to(torch.float16).contiguous(memory_format=torch.channels_last)
    base = {"cudnn_fp16_channels_last_ms": _ms(_try_time(timer, _calls(
        sets, lambda s: torch.nn.functional.conv2d(s["xh"], s["wh"], stride=stride, padding=1, groups=C)),
        "cudnn depthwise"))}  # fmt: skip
    l2 = l2_info(ctx, len(sets), nbytes)
    del sets
    copy_ms = _copy_ms(ctx, nbytes)
    speed = {"vs_cudnn_fp16": _ratio(base["cudnn_fp16_channels_last_ms"], t["ms"]), "vs_copy": _ratio(copy_ms, t["ms"])}
    ops = 2.0 * y.numel() * 9
    for v in variants.values():
        v["pct_of_copy"] = _pct(copy_ms, v.get("ms"))
    met = None if speed["vs_copy"] is None else speed["vs_copy"] >= 0.6
    entry = _entry("depthwise", label, {"B": B, "H": H, "W": W, "C": C, "stride": stride}, exact, t, ops, nbytes, ctx,
                   base, speed, ">= 60% of copy bandwidth", met, ms_launch, l2, launched)  # fmt: skip
    entry["variants"] = variants
    return entry


def _memory_case(kind: str, name: str, shape: Dict[str, Any], ctx: Dict[str, Any], sets: List[Dict[str, Any]],
                 fn: Callable[[Dict[str, Any]], Any], expected: Callable[[], torch.Tensor], nbytes: int,
                 base: Optional[Dict[str, Any]] = None,
                 base_speed: Optional[Dict[str, str]] = None) -> Dict[str, Any]:  # fmt: skip
    """A memory-bound case: check, time (rotated sets), baselines, and the copy reference."""
    timer = ctx["timer"]
    ours = _calls(sets, fn)
    y, launched = _first_call(ours)
    exact = torch.equal(y, expected())
    t = timer.measure(ours, name)
    ms_launch = timer.with_launch(ours[0])
    baselines = {k: _ms(_try_time(timer, _calls(sets, b), f"{name} {k}")) for k, b in (base or {}).items()}
    copy_ms = _copy_ms(ctx, nbytes)
    speed = {sk: _ratio(baselines[bk], t["ms"]) for sk, bk in (base_speed or {}).items()}
    speed["vs_copy"] = _ratio(copy_ms, t["ms"])
    met = None if speed["vs_copy"] is None else speed["vs_copy"] >= 0.6
    return _entry(kind, name, shape, exact, t, 0.0, nbytes, ctx, baselines, speed, ">= 60% of copy bandwidth",
                  met, ms_launch, l2_info(ctx, len(sets), nbytes), launched)  # fmt: skip


def bench_add(B: int, H: int, W: int, C: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    from kernels import elementwise

    dev, g = ctx["device"], ctx["gen"]
    a = torch.randint(-128, 128, (B, H, W, C), dtype=torch.int8, generator=g).to(dev)
    b = torch.randint(-128, 128, (B, H, W, C), dtype=torch.int8, generator=g).to(dev)
    ia, ib, m = ref.add_multipliers(0.031, 0.017, 0.045)
    nbytes = 3 * a.numel()
    sets = clone_sets(dict(a=a, b=b), n_sets(ctx, nbytes))
    return _memory_case("add", f"add {B}x{H}x{W}x{C}", {"B": B, "H": H, "W": W, "C": C}, ctx, sets,
                        lambda s: elementwise.int8_add(s["a"], s["b"], 3, -7, ia, ib, m, 2),
                        lambda: ref.int8_add(a, b, 3, -7, ia, ib, m, 2), nbytes)  # fmt: skip


def _post_relu_int8(shape, g: torch.Generator, density: float = 0.4) -> torch.Tensor:
    """int8 activations after a ReLU: the zero point -128 where the real value is 0."""
    x = torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)
    x[torch.rand(shape, generator=g) >= density] = -128
    return x


def bench_maxpool(B: int, H: int, W: int, C: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    """ResNet's 3x3/2 max pool (padding 1) on post-ReLU activations."""
    from kernels import pool

    dev, g = ctx["device"], ctx["gen"]
    x = _post_relu_int8((B, H, W, C), g).to(dev)
    OH, OW = (H + 2 - 3) // 2 + 1, (W + 2 - 3) // 2 + 1
    nbytes = x.numel() + B * OH * OW * C
    sets = clone_sets(dict(x=x), n_sets(ctx, nbytes))
    for s in sets:
        s["xh"] = s["x"].permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
    return _memory_case("maxpool", f"maxpool3x3 s2 {B}x{H}x{W}x{C}", {"B": B, "H": H, "W": W, "C": C}, ctx, sets,
                        lambda s: pool.int8_maxpool2d(s["x"], 3, 2, 1), lambda: ref.int8_maxpool2d(x, 3, 2, 1), nbytes,
                        {"cudnn_fp16_channels_last_ms": lambda s: torch.nn.functional.max_pool2d(s["xh"], 3, 2, 1)},
                        {"vs_fp16_max_pool2d": "cudnn_fp16_channels_last_ms"})  # fmt: skip


def bench_avgpool(B: int, H: int, W: int, C: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    """Global average pool with requantization (the classifier head of MobileNet/EfficientNet/ResNet)."""
    from kernels import pool

    dev, g = ctx["device"], ctx["gen"]
    x = _post_relu_int8((B, H, W, C), g).to(dev)
    m = (torch.rand(C, generator=g) * 0.02 + 0.01).to(dev) / (H * W)
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    nbytes = x.numel() + B * C + 12 * C
    sets = clone_sets(dict(x=x, m=m, lo=lo, hi=hi), n_sets(ctx, nbytes))
    return _memory_case("avgpool", f"avgpool global {B}x{H}x{W}x{C}", {"B": B, "H": H, "W": W, "C": C}, ctx, sets,
                        lambda s: pool.int8_avgpool(s["x"], -128, s["m"], -128, s["lo"], s["hi"]),
                        lambda: ref.int8_avgpool(x, -128, m, -128, lo, hi), nbytes)  # fmt: skip


def bench_quantize(B: int, H: int, W: int, C: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    """Input quantization: float32 NCHW images to int8 NHWC (the first step of the int8 network)."""
    from kernels import elementwise

    dev, g = ctx["device"], ctx["gen"]
    x = (torch.rand((B, C, H, W), generator=g) * 2 - 1).to(dev)
    scale, zp = 2.0 / 255.0, 0
    nbytes = 4 * x.numel() + x.numel()
    sets = clone_sets(dict(x=x), n_sets(ctx, nbytes))
    return _memory_case("quantize", f"quantize nchw->nhwc {B}x{C}x{H}x{W}", {"B": B, "H": H, "W": W, "C": C}, ctx,
                        sets, lambda s: elementwise.quantize(s["x"], scale, zp, layout="nchw"),
                        lambda: ref.quantize(x, scale, zp, layout="nchw"), nbytes)  # fmt: skip

def bench_stem(B: int, H: int, W: int, C: int, N: int, k: int, stride: int, pad: Tuple[int, int, int, int],
               ctx: Dict[str, Any]) -> Dict[str, Any]:
    """The first convolution on the float images: quantize-and-im2col then the GEMM
    (``kernels.stem.StemPlan``, what the int8 network runs by default) against the unfused path
    (quantize to NHWC, then the flat-K convolution) and cuDNN fp16 on the same convolution."""
    from kernels import elementwise
    from kernels.conv import ConvPlan
    from kernels.stem import StemPlan, quantize_im2col

    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    name = f"stem {k}x{k} s{stride} {B}x{C}x{H}x{W}->{N}"
    x = (torch.rand((B, C, H, W), generator=g) * 2 - 1).to(dev)
    scale, z_x = 2.0 / 255.0, 0
    w = torch.randint(-128, 128, (N, k, k, C), dtype=torch.int8, generator=g).to(dev)
    bias = torch.randint(-20000, 20000, (N,), dtype=torch.int32, generator=g).to(dev)
    m = (torch.rand(N, generator=g) * 4.0 / (128.0 * 128.0 * math.sqrt(k * k * C))).to(dev)
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    b_n, w_zp, m_n, z_x, z_y, lo_n, hi_n, st, pd = ref.check_conv_args(
        torch.zeros((1, H, W, C), dtype=torch.int8, device=dev), w, bias, None, m, z_x, 0, lo, hi, stride, pad)
    folded = ref.fold_bias(w, b_n, z_x, w_zp)
    OH, OW = ref.conv_output_size(H, W, k, k, st, pd)
    M, K = B * OH * OW, k * k * C
    nbytes = 4 * x.numel() + M * N + w.numel() + 12 * N
    sets = clone_sets(dict(x=x), n_sets(ctx, nbytes))
    plan = StemPlan(w, folded, w_zp, m_n, z_y, lo_n, hi_n, st, pd, False, scale, z_x, -128, 127)
    conv = ConvPlan(w, folded, w_zp, m_n, z_x, z_y, lo_n, hi_n, st, pd, False)
    ours = _calls(sets, lambda s: plan(s["x"]))
    y, launched = _first_call(ours)
    exact = all(torch.equal(y[sl], ref.int8_conv2d(ref.quantize(x[sl], scale, z_x), w, bias, m, z_x, None, z_y, lo,
                                                   hi, st, pd)) for sl in _slices(B))
    unfused = _calls(sets, lambda s: conv(elementwise.quantize(s["x"], scale, z_x, layout="nchw")))
    exact = exact and torch.equal(unfused[0](), y)
    t = timer.measure(ours, name)
    ms_launch = timer.with_launch(ours[0])
    for s in sets:
        s["xh"] = s["x"].to(torch.float16).contiguous(memory_format=torch.channels_last)
    wh = w.permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
    symmetric = pd[0] == pd[1] and pd[2] == pd[3]

    def cudnn(s: Dict[str, Any]) -> torch.Tensor:
        if symmetric:
            return torch.nn.functional.conv2d(s["xh"], wh, stride=st, padding=(pd[0], pd[2]))
        return torch.nn.functional.conv2d(torch.nn.functional.pad(s["xh"], (pd[2], pd[3], pd[0], pd[1])), wh, stride=st)

    base = {
        "quantize_then_conv_ms": _ms(_try_time(timer, unfused, f"{name} quantize + flat-K conv")),
        "im2col_only_ms": _ms(_try_time(timer, _calls(sets, lambda s: quantize_im2col(
            s["x"], scale, z_x, -128, 127, (k, k), st, pd)), f"{name} im2col")),
        "cudnn_fp16_channels_last_ms": _ms(_try_time(timer, _calls(sets, cudnn), f"{name} cudnn")),
    }
    l2 = l2_info(ctx, len(sets), nbytes)
    del sets
    speed = {"vs_quantize_then_conv": _ratio(base["quantize_then_conv_ms"], t["ms"]),
             "vs_cudnn_fp16": _ratio(base["cudnn_fp16_channels_last_ms"], t["ms"])}
    met = None if speed["vs_quantize_then_conv"] is None else speed["vs_quantize_then_conv"] >= 1.0
    return _entry("stem", name, {"B": B, "H": H, "W": W, "C": C, "N": N, "kernel": k, "stride": stride,
                                 "padding": list(pd)}, exact, t, 2.0 * M * N * K, nbytes, ctx, base, speed,
                  "faster than quantize then the flat-K convolution (the fusion's reason)", met, ms_launch, l2,
                  launched)  # fmt: skip


def bench_dwproject(B: int, H: int, W: int, E: int, k: int, N: int, residual: bool,
                    ctx: Dict[str, Any]) -> Dict[str, Any]:
    """A depthwise convolution (stride 1) and the 1x1 convolution after it in one kernel
    (``kernels.dwproject``, ``to_int8(fuse_depthwise=True)``) against the two kernels the network
    runs otherwise (checked equal): the fusion's reason is the depthwise output's
    ``2 * B*H*W*E`` bytes."""
    from kernels.depthwise import DepthwisePlan
    from kernels.dwproject import DwProjectPlan
    from kernels.gemm import GemmPlan

    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    name = f"dw{k}x{k}+1x1 {B}x{H}x{W}x{E}->{N}" + (" +add" if residual else "")
    i8 = lambda *shape: torch.randint(-128, 128, shape, dtype=torch.int8, generator=g).to(dev)  # noqa: E731
    x, dw, pw = i8(B, H, W, E), i8(k, k, E), i8(N, E)
    d_bias = torch.randint(-2000, 2000, (E,), dtype=torch.int32, generator=g).to(dev)
    d_m = (torch.rand(E, generator=g) * 0.01).to(dev)
    p_bias = torch.randint(-20000, 20000, (N,), dtype=torch.int32, generator=g).to(dev)
    p_m = (torch.rand(N, generator=g) * 4.0 / (128.0 * 128.0 * math.sqrt(E))).to(dev)
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    pad = (k // 2,) * 4
    z_x, z_d, z_y = -128, -128, 0
    spec = ref.ResidualAdd(z_y, 3, 17000, 9000, 1.1e-4, -2, -128, 127) if residual else None
    r = i8(B, H, W, N) if residual else None
    folded = ref.fold_bias(pw, p_bias, z_d, None)
    fused = DwProjectPlan(dw, d_bias, None, d_m, z_x, z_d, lo, hi, (1, 1), pad, pw, folded, None, p_m, z_y, lo, hi,
                          False, spec)
    dw_plan = DepthwisePlan(dw, d_bias, None, d_m, z_x, z_d, lo, hi, (1, 1), pad, False)
    gemm = GemmPlan(pw, folded, None, p_m, z_y, lo, hi, False, spec)
    M = B * H * W
    nbytes = x.numel() + M * N * (2 if residual else 1) + dw.numel() + pw.numel() + 12 * (E + N)
    sets = clone_sets(dict(x=x, r=r) if residual else dict(x=x), n_sets(ctx, nbytes))
    ours = _calls(sets, lambda s: fused(s["x"], s["r"]) if residual else fused(s["x"]))
    y, launched = _first_call(ours)
    sl = slice(0, min(2, B))
    d_ref = ref.int8_depthwise_conv2d(x[sl], dw, d_bias, d_m, z_x, None, z_d, lo, hi, (1, 1), pad)
    y_ref = ref.int8_gemm(d_ref.reshape(-1, E), pw, p_bias, p_m, z_d, None, z_y, lo, hi).view(*d_ref.shape[:3], N)
    if residual:
        y_ref = ref.residual_add(y_ref, r[sl], spec)
    exact = torch.equal(y[sl], y_ref)

    def separate(s: Dict[str, Any]) -> torch.Tensor:
        d = dw_plan(s["x"]).view(M, E)
        return (gemm(d, s["r"].view(M, N)) if residual else gemm(d)).view(B, H, W, N)

    two = _calls(sets, separate)
    exact = exact and torch.equal(two[0](), y)
    t = timer.measure(ours, name)
    ms_launch = timer.with_launch(ours[0])
    base = {"depthwise_then_gemm_ms": _ms(_try_time(timer, two, f"{name} two kernels"))}
    l2 = l2_info(ctx, len(sets), nbytes)
    del sets
    speed = {"vs_depthwise_then_gemm": _ratio(base["depthwise_then_gemm_ms"], t["ms"]),
             "vs_copy": _ratio(_copy_ms(ctx, nbytes), t["ms"])}
    met = None if speed["vs_depthwise_then_gemm"] is None else speed["vs_depthwise_then_gemm"] >= 1.0
    return _entry("dwproject", name, {"B": B, "H": H, "W": W, "E": E, "kernel": k, "N": N, "residual": residual},
                  exact, t, 2.0 * M * E * (k * k + N), nbytes, ctx, base, speed,
                  "faster than the depthwise kernel then the GEMM (the fusion's reason)", met, ms_launch, l2,
                  launched)  # fmt: skip


# =============================================================================================
# Main
# =============================================================================================
def _peak_tops(device_name: str) -> Optional[float]:
    for key, tops in PEAK_INT8_TOPS.items():
        if key in device_name:
            return tops
    return None


def _case_error(kind: str, name: str, shape: Dict[str, Any], exc: BaseException) -> Dict[str, Any]:
    """A case that raised: recorded as not bit-exact with the error, so the run goes on."""
    return {"kind": kind, "name": name, "shape": shape, "bit_exact": False, "ms": None, "ms_with_launch": None,
            "timer": None, "l2": None, "tops": None, "pct_of_peak_tops": None, "bytes": None, "gbps": None,
            "bandwidth": None, "roofline_floor_ms": None, "pct_of_roofline": None, "baselines": {}, "speedup": {},
            "goal": None, "goal_met": None, "tiles": None,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}  # fmt: skip


KINDS = ("gemm", "conv3x3", "depthwise", "stem", "dwproject", "add", "maxpool", "avgpool", "quantize")
#: Memory-bound kinds (their goal is a fraction of the copy bandwidth).
MEMORY_BOUND = ("depthwise", "add", "maxpool", "avgpool", "quantize")


def run(quick: bool, save: Optional[Callable[[Dict[str, Any]], None]] = None,
        kinds: Sequence[str] = KINDS) -> Dict[str, Any]:  # fmt: skip
    """Run every case and return the JSON-ready report.

    ``save`` (if given) is called with the report so far after every case, so that a run cut
    short by a time limit still leaves what it measured; a case that raises is recorded with its
    error (and counts as not bit-exact) instead of ending the run."""
    cuda = torch.cuda.is_available()
    if not cuda and not quick:
        raise SystemExit("the full benchmark needs a CUDA device; use --quick for the CPU/interpreter run")
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules are imported
    from kernels import settings as ks
    from kernels import tiles
    from kernels._config import INTERPRETED

    device = "cuda" if cuda else "cpu"
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    timer = Timer(cuda, quick)
    l2 = l2_bytes(cuda, quick)
    ctx: Dict[str, Any] = {
        "device": device,
        "cuda": cuda,
        "timer": timer,
        "gen": torch.Generator().manual_seed(0),
        "peak_tops": _peak_tops(device_name) if cuda else None,
        "spec_gbps": spec_hbm_gbps(device_name) if cuda else None,
        "l2_bytes": l2["bytes"],
    }
    big_copy = copy_bandwidth(timer, ctx, quick)
    ctx["copy_gbps"] = big_copy["torch_copy_gbps"]
    settings = ks.current_settings()
    table = tiles.table_for(settings) if cuda else None
    results: List[Dict[str, Any]] = []
    report: Dict[str, Any] = {
        "schema": SCHEMA,
        "mode": "quick" if quick else "full",
        "device": device_name,
        "backend": "triton-interpreter" if INTERPRETED else "triton",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "timer": timer.name,
        "timer_fallbacks": timer.fallbacks,
        "timer_fallback_count": 0,
        "l2": {**l2, "handling": f"rotate over distinct buffer sets totalling >= {L2_ROTATE_FACTOR:g}x L2 per case "
                                 "(not flushed); see each case's l2"},
        "copy_bandwidth_gbps": ctx["copy_gbps"],
        "copy_bandwidth": big_copy,
        "spec_hbm_gbps": ctx["spec_gbps"],
        "peak_int8_tops": ctx["peak_tops"],
        "peak_int8_note": PEAK_NOTE,
        "kernel_settings": {"autotune": settings.autotune, "tile_table": settings.tile_table,
                            "tile_match": settings.tile_match, "depthwise_variant": settings.depthwise_variant, "forced": [f for f, _ in settings.forced]},
        "tile_table": None if table is None else table.summary(),
        "all_bit_exact": False,
        "complete": False,
        "note": None if cuda else "interpreter timings: correctness and plumbing only, not performance",
        "results": results,
    }  # fmt: skip
    cases: List[Any] = []
    cases += [("gemm", f"gemm M={M} K={K} N={N}", dict(M=M, K=K, N=N), bench_gemm, (M, K, N))
              for M, K, N in (QUICK_GEMM if quick else FULL_GEMM)]  # fmt: skip
    cases += [("conv3x3", f"conv3x3 {B}x{H}x{W}x{C}->{N}", dict(B=B, H=H, W=W, C=C, N=N), bench_conv, (B, H, W, C, N))
              for B, H, W, C, N in (QUICK_CONV if quick else FULL_CONV)]  # fmt: skip
    cases += [("depthwise", f"depthwise3x3 s{st} {B}x{H}x{W}x{C}", dict(B=B, H=H, W=W, C=C, stride=st),
               bench_depthwise, (B, H, W, C, st)) for B, H, W, C, st in (QUICK_DW if quick else FULL_DW)]  # fmt: skip
    cases += [("stem", f"stem {k}x{k} s{st} {B}x{C}x{H}x{W}->{N}", dict(B=B, H=H, W=W, C=C, N=N, kernel=k, stride=st),
               bench_stem, (B, H, W, C, N, k, st, pd))
              for B, H, W, C, N, k, st, pd in (QUICK_STEM if quick else FULL_STEM)]  # fmt: skip
    cases += [("dwproject", f"dw{k}x{k}+1x1 {B}x{H}x{W}x{E}->{N}" + (" +add" if res else ""),
               dict(B=B, H=H, W=W, E=E, kernel=k, N=N, residual=res), bench_dwproject, (B, H, W, E, k, N, res))
              for B, H, W, E, k, N, res in (QUICK_DWPROJECT if quick else FULL_DWPROJECT)]  # fmt: skip
    cases += [("add", f"add {B}x{H}x{W}x{C}", dict(B=B, H=H, W=W, C=C), bench_add, (B, H, W, C))
              for B, H, W, C in (QUICK_ADD if quick else FULL_ADD)]  # fmt: skip
    cases += [("maxpool", f"maxpool3x3 s2 {B}x{H}x{W}x{C}", dict(B=B, H=H, W=W, C=C), bench_maxpool, (B, H, W, C))
              for B, H, W, C in (QUICK_MAXPOOL if quick else FULL_MAXPOOL)]  # fmt: skip
    cases += [("avgpool", f"avgpool global {B}x{H}x{W}x{C}", dict(B=B, H=H, W=W, C=C), bench_avgpool, (B, H, W, C))
              for B, H, W, C in (QUICK_AVGPOOL if quick else FULL_AVGPOOL)]  # fmt: skip
    cases += [("quantize", f"quantize nchw->nhwc {B}x{C}x{H}x{W}", dict(B=B, H=H, W=W, C=C), bench_quantize,
               (B, H, W, C)) for B, H, W, C in (QUICK_QUANTIZE if quick else FULL_QUANTIZE)]  # fmt: skip
    cases = [c for c in cases if c[0] in kinds]
    report["kinds"] = list(kinds)
    if save is not None:
        save(report)
    for kind, name, shape, fn, args in cases:
        n_fallbacks = len(timer.fallbacks)
        try:
            r = fn(*args, ctx)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
            r = _case_error(kind, name, shape, exc)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        r["timer_fallbacks"] = timer.fallbacks[n_fallbacks:]  # this case's (kernel and baselines)
        results.append(r)
        if cuda:
            torch.cuda.empty_cache()
        print_row(r)
        report["all_bit_exact"] = all(x["bit_exact"] for x in results)
        report["timer_fallback_count"] = len(timer.fallbacks)
        if save is not None:
            save(report)
    report["timer_fallback_count"] = len(timer.fallbacks)
    report["complete"] = True
    if save is not None:
        save(report)
    return report


def _fmt(v: Optional[float], spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_row(r: Dict[str, Any]) -> None:
    """One line of the results table (flushed, so a log shows progress)."""
    if r.get("error"):
        print(f"{r['name']:44s} ERROR {r['error']}", flush=True)
        return
    sp = " ".join(f"{k}={_fmt(v, '.2f')}" for k, v in r["speedup"].items())
    bw = r.get("bandwidth") or {}
    timer = (r.get("timer") or {}).get("method", "-")
    print(f"{r['name']:44s} {str(r['bit_exact']):>5s} {_fmt(r['ms']):>9s} {_fmt(r['tops'], '.1f'):>8s} "
          f"{_fmt(r['gbps'], '.1f'):>8s} {_fmt(bw.get('pct_of_spec'), '.0f'):>5s} "
          f"{_fmt(r['pct_of_roofline'], '.0f'):>6s}"
          f"  {sp}  [{r['goal']}: {r['goal_met']}] ({timer}, {(r.get('l2') or {}).get('buffer_sets')} sets)",
          flush=True)  # fmt: skip


def print_header(report: Dict[str, Any]) -> None:
    cb = report["copy_bandwidth"]
    print(f"{report['device']} | {report['backend']} | timer: {report['timer']}")
    print(f"L2 {report['l2']['bytes']} B ({report['l2']['source']}); copy of {cb['bytes']} B: torch "
          f"{_fmt(cb['torch_copy_gbps'], '.1f')} GB/s, Triton {_fmt(cb['triton_copy_gbps'], '.1f')} GB/s; spec "
          f"{report['spec_hbm_gbps']} GB/s; peak int8 {report['peak_int8_tops']} TOPS ({report['peak_int8_note']})")
    print(f"{'case':44s} {'exact':>5s} {'ms':>9s} {'TOPS':>8s} {'GB/s':>8s} {'%spec':>5s} {'%roof':>6s}  speedups",
          flush=True)  # fmt: skip


def default_out(quick: bool, name: str) -> Path:
    """Where a report goes without ``--out``: ``benchmarks/results/<name>.json`` for a GPU run; a
    temporary file for ``--quick`` (never over committed results)."""
    if quick:
        return Path(tempfile.gettempdir()) / "dfq_gpu_bench" / f"{name}_quick.json"
    return Path("benchmarks") / "results" / f"{name}.json"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the report that was written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes; runs on a CPU through the interpreter")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile the kernels for cuda:90 without a GPU and report wgmma/shared memory/spills")
    parser.add_argument("--all-configs", action="store_true", help="with --compile-only: every autotune config")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which cases to run")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON report (default: benchmarks/results/kernels.json; "
                             "--quick: a temporary file)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.compile_only:
        out = args.out or Path("benchmarks") / "results" / "kernels_compile.json"
        from dfq_gpu.bench.compile_sm90 import compile_only  # absolute: this code also runs as a script

        report = compile_only(args.all_configs)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
        if not report["all_ok"]:
            raise SystemExit("some kernel failed to compile for cuda:90")
        return report
    out = args.out or default_out(args.quick, "kernels")
    out.parent.mkdir(parents=True, exist_ok=True)
    header_printed = []

    def save(report: Dict[str, Any]) -> None:
        if not header_printed:
            print_header(report)
            header_printed.append(True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out)

    report = run(args.quick, save, args.kinds)
    print(f"all bit-exact: {report['all_bit_exact']}; timer fallbacks: {report['timer_fallback_count']}")
    print(f"wrote {out}")
    if not report["all_bit_exact"]:
        raise SystemExit("some kernel is not bit-exact against the reference")
    return report


if __name__ == "__main__":
    main()
