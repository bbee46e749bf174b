"""Bit-exactness check and benchmark of the int8 kernels against PyTorch baselines.

One command::

    python -m dfq_gpu.bench.kernels [--out PATH]          # CUDA GPU: CNN-sized shapes
    python -m dfq_gpu.bench.kernels --quick [--out PATH]  # tiny shapes; on a CPU through Triton's interpreter
    python -m dfq_gpu.bench.kernels --compile-only        # no GPU: compile everything for cuda:90

(``python benchmarks/kernels.py ...`` in a checkout of the project is the same command.)

Every kernel output is first compared bit for bit with the integer reference
(``kernels.reference``), then timed (median) next to its baselines:

* GEMM: ``torch._int_mm`` alone, ``torch._int_mm`` + a separate eager requantization pass
  (bias add, float multiply, round, zero point, clamp, cast), and fp16 ``torch.matmul``;
* 3x3 convolution (implicit GEMM): cuDNN fp16 ``F.conv2d`` with channels_last tensors;
* depthwise convolution: cuDNN fp16 depthwise ``F.conv2d`` (channels_last), and the copy bandwidth;
* residual add: the copy bandwidth.

Times are device times of CUDA-graph replays (``do_bench_cudagraph``), so Python and launch
overhead are excluded for kernels and baselines alike; ``ms_with_launch`` adds a plain
``do_bench`` time of the kernel, launch overhead included.

Reported per case: milliseconds, TOPS (2 ops per multiply-accumulate), GB/s of compulsory
traffic, speedups, and the roofline floor ``max(ops / peak_int8, bytes / copy_bandwidth)`` with
the fraction of it reached. The int8 peak is a constant (dense int8 tensor-core rate of an
H100/H200 SXM, 1979 TOPS), not a measurement; the copy bandwidth is measured with a large
``copy_``. Results go to a JSON file (``--out``, default ``benchmarks/results/kernels.json`` under
the working directory).

In ``--quick`` mode without a GPU the timings are those of Triton's interpreter (a wall-clock
median of a few runs) and only show that the pipeline runs end to end.

``--compile-only`` needs no GPU either: it compiles the kernels ahead of time for an H100/H200
(``cuda:90``) with Triton's own compiler and ptxas, one representative configuration per kernel
(every autotune configuration with ``--all-configs``), and reports for each whether it lowered
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
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

# Without a GPU the kernels run through Triton's interpreter, which has to be switched on before
# Triton is imported (its own library functions such as tl.sum are decorated at import time).
# --compile-only compiles for a GPU and must not be interpreted.
if __name__ == "__main__" and not torch.cuda.is_available() and "--compile-only" not in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

import kernels  # noqa: E402
from kernels import _config  # noqa: E402
from kernels import reference as ref  # noqa: E402

SCHEMA = "dfq_int8-kernel-bench/1"
COMPILE_SCHEMA = "dfq_int8-kernel-compile/1"
PEAK_INT8_TOPS = {"H100": 1979.0, "H200": 1979.0}
PEAK_NOTE = "assumed dense int8 tensor-core peak of an H100/H200 SXM (1979 TOPS); not measured"

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


# =============================================================================================
# Timing
# =============================================================================================
class Timer:
    """Median time of a callable in milliseconds.

    On CUDA, device time from ``triton.testing.do_bench_cudagraph`` (the callable is captured in
    a CUDA graph, so Python and launch overhead do not count; this is what every "ms" and every
    baseline reports), falling back to ``do_bench`` if a capture fails. :meth:`with_launch`
    times plain ``do_bench`` calls, launch overhead included. Without CUDA: a wall clock.
    """

    def __init__(self, cuda: bool, quick: bool):
        self.cuda = cuda
        self.quick = quick
        self.name = (
            "triton.testing.do_bench_cudagraph (median; do_bench if capture fails)"
            if cuda
            else "time.perf_counter (median of 2, no warm-up)"
        )
        self.fallbacks: List[str] = []

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.cuda:
            try:
                return float(triton.testing.do_bench_cudagraph(fn, rep=20 if self.quick else 100, return_mode="median"))
            except Exception as exc:  # capture unsupported for this callable: time it with launches
                self.fallbacks.append(f"{getattr(fn, '__name__', 'fn')}: {type(exc).__name__}")
                torch.cuda.synchronize()
                return self.with_launch(fn)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def with_launch(self, fn: Callable[[], Any]) -> Optional[float]:
        """``do_bench`` median including Python/launch overhead (CUDA only)."""
        if not self.cuda:
            return None
        kw = dict(warmup=5, rep=20) if self.quick else dict(warmup=25, rep=100)
        return float(triton.testing.do_bench(fn, return_mode="median", **kw))


def _try_time(timer: Timer, fn: Callable[[], Any]) -> Optional[float]:
    """Time a baseline; ``None`` when PyTorch does not support it on this device/dtype."""
    try:
        return timer(fn)
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def copy_bandwidth_gbps(timer: Timer, device: str, quick: bool) -> float:
    """Read+write bandwidth of a large ``copy_`` (GB/s)."""
    n = (1 << 22) if quick else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * n / (ms * 1e-3) / 1e9


# =============================================================================================
# Cases
# =============================================================================================
def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def _entry(kind, name, shape, exact, ms, ops, nbytes, ctx, baselines, speedup, goal, goal_met,
           ms_launch: Optional[float] = None) -> Dict[str, Any]:  # fmt: skip
    floor = None
    if ctx["copy_gbps"]:
        floor = nbytes / (ctx["copy_gbps"] * 1e9) * 1e3
        if ops and ctx["peak_tops"]:
            floor = max(floor, ops / (ctx["peak_tops"] * 1e12) * 1e3)
    return {
        "kind": kind,
        "name": name,
        "shape": shape,
        "bit_exact": bool(exact),
        "ms": ms,
        "ms_with_launch": ms_launch,
        "tops": ops / (ms * 1e-3) / 1e12 if ops else None,
        "gbps": nbytes / (ms * 1e-3) / 1e9,
        "roofline_floor_ms": floor,
        "pct_of_roofline": None if floor is None else 100.0 * floor / ms,
        "baselines": baselines,
        "speedup": speedup,
        "goal": goal,
        "goal_met": goal_met if ctx["cuda"] else None,
    }


def bench_gemm(M: int, K: int, N: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = torch.randint(-128, 128, (M, K), dtype=torch.int8, generator=g).to(dev)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, generator=g).to(dev)
    bias = torch.randint(-20000, 20000, (N,), dtype=torch.int32, generator=g).to(dev)
    m = (torch.rand(N, generator=g) * 4.0 / (128.0 * 128.0 * math.sqrt(K))).to(dev)
    z_x, z_y = -128, 5  # post-ReLU activations (uint8 zero point 0), symmetric weights
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    folded = ref.fold_bias(w, bias, z_x, None)

    def ours():
        return kernels.int8_gemm(x, w, folded, m, z_x, None, z_y, lo, hi, bias_folded=True, backend="triton")

    exact = torch.equal(ours(), ref.int8_gemm(x, w, bias, m, z_x, None, z_y, lo, hi))
    ms = timer(ours)
    ms_launch = timer.with_launch(ours)
    wt = w.t()
    int_mm_ok = M > 16 and K % 8 == 0 and N % 8 == 0 and K >= 16

    def int_mm_requant():
        acc = torch._int_mm(x, wt)
        y = (acc + folded).to(torch.float32).mul_(m).round_().add_(z_y).clamp_(-128, 127)
        return y.to(torch.int8)

    base: Dict[str, Optional[float]] = {"int_mm_ms": None, "int_mm_requant_ms": None}
    if int_mm_ok:
        base["int_mm_ms"] = _try_time(timer, lambda: torch._int_mm(x, wt))
        base["int_mm_requant_ms"] = _try_time(timer, int_mm_requant)
    xh, wh = x.to(torch.float16), w.to(torch.float16)
    base["fp16_matmul_ms"] = _try_time(timer, lambda: torch.matmul(xh, wh.t()))
    del xh, wh
    speed = {
        "vs_int_mm": _ratio(base["int_mm_ms"], ms),
        "vs_int_mm_requant": _ratio(base["int_mm_requant_ms"], ms),
        "vs_fp16_matmul": _ratio(base["fp16_matmul_ms"], ms),
    }
    big = M == N == K == 8192
    goal = ">= 0.8x torch._int_mm" if big else ">= 1.2x torch._int_mm + requant"
    ref_speed = speed["vs_int_mm"] if big else speed["vs_int_mm_requant"]
    met = None if ref_speed is None else ref_speed >= (0.8 if big else 1.2)
    nbytes = M * K + N * K + M * N + 12 * N
    return _entry("gemm", f"gemm M={M} K={K} N={N}", {"M": M, "K": K, "N": N}, exact, ms, 2.0 * M * N * K,
                  nbytes, ctx, base, speed, goal, met, ms_launch)  # fmt: skip


def _slices(b: int) -> List[slice]:
    return [slice(0, min(2, b)), slice(max(0, b - 2), b)] if b > 4 else [slice(0, b)]


def bench_conv(B: int, H: int, W: int, C: int, N: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = torch.randint(-128, 128, (B, H, W, C), dtype=torch.int8, generator=g).to(dev)
    w = torch.randint(-128, 128, (N, 3, 3, C), dtype=torch.int8, generator=g).to(dev)
    bias = torch.randint(-20000, 20000, (N,), dtype=torch.int32, generator=g).to(dev)
    m = (torch.rand(N, generator=g) * 4.0 / (128.0 * 128.0 * math.sqrt(9 * C))).to(dev)
    z_x, z_y = -128, 0
    folded = ref.fold_bias(w, bias, z_x, None)
    # bounds as device tensors: a Python int would become a new tensor on every call (a host-to-
    # device copy, which cannot be captured in the CUDA graph the timer uses)
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    kw = dict(z_x=z_x, z_y=z_y, lo=lo, hi=hi, stride=1, padding=1)

    def ours():
        return kernels.int8_conv2d(x, w, folded, m, bias_folded=True, backend="triton", **kw)

    y = ours()
    exact = all(torch.equal(y[s], ref.int8_conv2d(x[s], w, bias, m, **kw)) for s in _slices(B))
    ms = timer(ours)
    ms_launch = timer.with_launch(ours)
    xh = x.permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
    wh = w.permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
    base = {"cudnn_fp16_channels_last_ms": _try_time(timer, lambda: torch.nn.functional.conv2d(xh, wh, padding=1))}
    del xh, wh
    speed = {"vs_cudnn_fp16": _ratio(base["cudnn_fp16_channels_last_ms"], ms)}
    met = None if speed["vs_cudnn_fp16"] is None else speed["vs_cudnn_fp16"] > 1.0
    ops = 2.0 * B * H * W * N * 9 * C
    nbytes = B * H * W * (C + N) + N * 9 * C + 12 * N
    return _entry("conv3x3", f"conv3x3 {B}x{H}x{W}x{C}->{N}", {"B": B, "H": H, "W": W, "C": C, "N": N}, exact, ms,
                  ops, nbytes, ctx, base, speed, "faster than cuDNN fp16 channels_last", met, ms_launch)  # fmt: skip


def bench_depthwise(B: int, H: int, W: int, C: int, stride: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = torch.randint(-128, 128, (B, H, W, C), dtype=torch.int8, generator=g).to(dev)
    w = torch.randint(-128, 128, (3, 3, C), dtype=torch.int8, generator=g).to(dev)
    bias = torch.randint(-2000, 2000, (C,), dtype=torch.int32, generator=g).to(dev)
    m = (torch.rand(C, generator=g) * 0.01).to(dev)
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)
    kw = dict(z_x=-128, z_y=-128, lo=lo, hi=hi, stride=stride, padding=1)

    def ours():
        return kernels.int8_depthwise_conv2d(x, w, bias, m, backend="triton", **kw)

    y = ours()
    exact = all(torch.equal(y[s], ref.int8_depthwise_conv2d(x[s], w, bias, m, **kw)) for s in _slices(B))
    ms = timer(ours)
    ms_launch = timer.with_launch(ours)
    # the other kernel variant (stride 1 only): checked and timed the same way
    variants: Dict[str, Any] = {_config.depthwise_variant(): {"ms": ms, "bit_exact": exact}}
    if stride == 1:
        other = "rows" if _config.depthwise_variant() == "tiles" else "tiles"
        with _config.use_depthwise_variant(other):
            y_other = ours()
            variants[other] = {"bit_exact": bool(torch.equal(y_other, y)) and exact, "ms": _try_time(timer, ours)}
        del y_other
        exact = exact and variants[other]["bit_exact"]  # the case is exact only if both variants are
    xh = x.permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
    wh = w.permute(2, 0, 1).unsqueeze(1).to(torch.float16).contiguous(memory_format=torch.channels_last)
    base = {
        "cudnn_fp16_channels_last_ms": _try_time(
            timer, lambda: torch.nn.functional.conv2d(xh, wh, stride=stride, padding=1, groups=C)
        )
    }
    del xh, wh
    nbytes = x.numel() + y.numel() + w.numel() + 12 * C
    copy_ms = nbytes / (ctx["copy_gbps"] * 1e9) * 1e3
    speed = {"vs_cudnn_fp16": _ratio(base["cudnn_fp16_channels_last_ms"], ms), "vs_copy": copy_ms / ms}
    ops = 2.0 * y.numel() * 9
    for v in variants.values():
        v["pct_of_copy"] = None if not v.get("ms") else 100.0 * copy_ms / v["ms"]
    entry = _entry("depthwise", f"depthwise3x3 s{stride} {B}x{H}x{W}x{C}",
                  {"B": B, "H": H, "W": W, "C": C, "stride": stride}, exact, ms, ops, nbytes, ctx, base, speed,
                  ">= 60% of copy bandwidth", speed["vs_copy"] >= 0.6, ms_launch)  # fmt: skip
    entry["variants"] = variants
    return entry


def bench_add(B: int, H: int, W: int, C: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    a = torch.randint(-128, 128, (B, H, W, C), dtype=torch.int8, generator=g).to(dev)
    b = torch.randint(-128, 128, (B, H, W, C), dtype=torch.int8, generator=g).to(dev)
    ia, ib, m = ref.add_multipliers(0.031, 0.017, 0.045)
    args = (a, b, 3, -7, ia, ib, m, 2)

    def ours():
        return kernels.int8_add(*args, backend="triton")

    exact = torch.equal(ours(), ref.int8_add(*args))
    ms = timer(ours)
    ms_launch = timer.with_launch(ours)
    nbytes = 3 * a.numel()
    copy_ms = nbytes / (ctx["copy_gbps"] * 1e9) * 1e3
    speed = {"vs_copy": copy_ms / ms}
    return _entry("add", f"add {B}x{H}x{W}x{C}", {"B": B, "H": H, "W": W, "C": C}, exact, ms, 0.0, nbytes, ctx,
                  {}, speed, ">= 60% of copy bandwidth", speed["vs_copy"] >= 0.6, ms_launch)  # fmt: skip


def _post_relu_int8(shape, g: torch.Generator, density: float = 0.4) -> torch.Tensor:
    """int8 activations after a ReLU: the zero point -128 where the real value is 0."""
    x = torch.randint(-128, 128, shape, dtype=torch.int8, generator=g)
    x[torch.rand(shape, generator=g) >= density] = -128
    return x


def bench_maxpool(B: int, H: int, W: int, C: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    """ResNet's 3x3/2 max pool (padding 1) on post-ReLU activations."""
    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = _post_relu_int8((B, H, W, C), g).to(dev)

    def ours():
        return kernels.int8_maxpool2d(x, 3, 2, 1, backend="triton")

    y = ours()
    exact = torch.equal(y, ref.int8_maxpool2d(x, 3, 2, 1))
    ms = timer(ours)
    ms_launch = timer.with_launch(ours)
    xh = x.permute(0, 3, 1, 2).to(torch.float16).contiguous(memory_format=torch.channels_last)
    base = {"cudnn_fp16_channels_last_ms": _try_time(timer, lambda: torch.nn.functional.max_pool2d(xh, 3, 2, 1))}
    del xh
    nbytes = x.numel() + y.numel()
    copy_ms = nbytes / (ctx["copy_gbps"] * 1e9) * 1e3
    speed = {"vs_fp16_max_pool2d": _ratio(base["cudnn_fp16_channels_last_ms"], ms), "vs_copy": copy_ms / ms}
    return _entry("maxpool", f"maxpool3x3 s2 {B}x{H}x{W}x{C}", {"B": B, "H": H, "W": W, "C": C}, exact, ms, 0.0,
                  nbytes, ctx, base, speed, ">= 60% of copy bandwidth", speed["vs_copy"] >= 0.6, ms_launch)  # fmt: skip


def bench_avgpool(B: int, H: int, W: int, C: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    """Global average pool with requantization (the classifier head of MobileNet/EfficientNet/ResNet)."""
    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = _post_relu_int8((B, H, W, C), g).to(dev)
    m = (torch.rand(C, generator=g) * 0.02 + 0.01).to(dev) / (H * W)
    lo = torch.full((1,), -128, dtype=torch.int32, device=dev)
    hi = torch.full((1,), 127, dtype=torch.int32, device=dev)

    def ours():
        return kernels.int8_avgpool(x, -128, m, -128, lo, hi, backend="triton")

    y = ours()
    exact = torch.equal(y, ref.int8_avgpool(x, -128, m, -128, lo, hi))
    ms = timer(ours)
    ms_launch = timer.with_launch(ours)
    nbytes = x.numel() + y.numel() + 12 * C
    copy_ms = nbytes / (ctx["copy_gbps"] * 1e9) * 1e3
    speed = {"vs_copy": copy_ms / ms}
    return _entry("avgpool", f"avgpool global {B}x{H}x{W}x{C}", {"B": B, "H": H, "W": W, "C": C}, exact, ms, 0.0,
                  nbytes, ctx, {}, speed, ">= 60% of copy bandwidth", speed["vs_copy"] >= 0.6, ms_launch)  # fmt: skip


def bench_quantize(B: int, H: int, W: int, C: int, ctx: Dict[str, Any]) -> Dict[str, Any]:
    """Input quantization: float32 NCHW images to int8 NHWC (the first step of the int8 network)."""
    dev, timer, g = ctx["device"], ctx["timer"], ctx["gen"]
    x = (torch.rand((B, C, H, W), generator=g) * 2 - 1).to(dev)
    scale, zp = 2.0 / 255.0, 0

    def ours():
        return kernels.quantize(x, scale, zp, layout="nchw", backend="triton")

    y = ours()
    exact = torch.equal(y, ref.quantize(x, scale, zp, layout="nchw"))
    ms = timer(ours)
    ms_launch = timer.with_launch(ours)
    nbytes = 4 * x.numel() + y.numel()
    copy_ms = nbytes / (ctx["copy_gbps"] * 1e9) * 1e3
    speed = {"vs_copy": copy_ms / ms}
    return _entry("quantize", f"quantize nchw->nhwc {B}x{C}x{H}x{W}", {"B": B, "H": H, "W": W, "C": C}, exact, ms,
                  0.0, nbytes, ctx, {}, speed, ">= 60% of copy bandwidth", speed["vs_copy"] >= 0.6,
                  ms_launch)  # fmt: skip


# =============================================================================================
# Ahead-of-time compilation for sm_90 (no GPU needed)
# =============================================================================================
_PTR = {torch.int8: "*i8", torch.int32: "*i32", torch.float32: "*fp32"}


def _compile_sm90(fn, runtime: Dict[str, Any], constexprs: Dict[str, Any], div16: List[str], num_warps: int,
                  num_stages: int) -> Dict[str, Any]:  # fmt: skip
    """Compile one kernel specialization for cuda:90; report wgmma use, shared memory and spills."""
    import re
    import subprocess

    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", 90, 32)
    backend = triton.compiler.make_backend(target)
    # as at run time, an int argument equal to 1 is specialized into a constant (per-channel
    # strides of 1, for instance, let the channel vectors load as wide vectors)
    constexprs = {**constexprs, **{n: 1 for n, v in runtime.items() if type(v) is int and v == 1}}
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            v = runtime[name]
            signature[name] = _PTR[v] if isinstance(v, torch.dtype) else ("fp32" if isinstance(v, float) else "i32")
    hinted = [n for n, v in runtime.items() if isinstance(v, torch.dtype)] + list(div16)
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in hinted}
    src = triton.compiler.ASTSource(fn=fn, constexprs=constexprs, signature=signature, attrs=attrs)
    options = backend.parse_options({"num_warps": num_warps, "num_stages": num_stages})
    cc = triton.compile(src, target=target, options=options.__dict__)
    ptx = cc.asm["ptx"]
    entry: Dict[str, Any] = {
        "wgmma": "wgmma.mma_async" in ptx,
        "cp_async": "cp.async" in ptx,
        "shared_bytes": int(cc.metadata.shared),
        "fp32_fma": bool(re.search(r"\bfma\.rn(\.ftz)?\.f32", ptx)),  # would break bit-exact requantization
        "rint": "cvt.rni.f32.f32" in ptx,  # round half to even
        # a negative constant `other` of a masked load: for int8 vector loads Triton packs it as
        # one sign-extended 32-bit word (bytes -128, -1, -1, -1 instead of four -128s), which gave
        # wrong padded values; the kernels use no negative constant `other` at all
        "sign_extended_load_other": bool(re.search(r"mov\.u32 %r\d+, 0xffffffffffffff[0-9a-f]{2};", ptx)),
        "registers": None,
        "spill_bytes": None,
    }
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if cuobjdump.exists():
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cc.asm["cubin"])
            f.flush()
            out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", out)
        if m:
            entry["registers"], entry["spill_bytes"] = int(m.group(1)), int(m.group(2))
    return entry


def compile_only(all_configs: bool) -> Dict[str, Any]:
    """Compile every kernel for cuda:90 (one config each, or every autotune config)."""
    from kernels import conv, depthwise, elementwise, gemm, lut, pool

    if _config.INTERPRETED:
        raise SystemExit("--compile-only must run without TRITON_INTERPRET (in a fresh process)")
    i8, i32, f32 = torch.int8, torch.int32, torch.float32
    # per-channel multipliers and bounds (stride 1), as DFQ's equalized ReLU6 clips produce
    epi = dict(mult_ptr=f32, lo_ptr=i32, hi_ptr=i32, stride_mult=1, stride_lo=1, stride_hi=1, z_y=0)
    gemm_rt = dict(x_ptr=i8, w_ptr=i8, bias_ptr=i32, wzp_ptr=i32, y_ptr=i8, M=0, N=0, K=0, stride_xm=0,
                   stride_wn=0, stride_ym=0, stride_wzp=0, M_BUCKET=0, **epi)  # fmt: skip
    conv_rt = dict(x_ptr=i8, w_ptr=i8, bias_ptr=i32, wzp_ptr=i32, dig_ptr=i8, y_ptr=i8, B=0, H=0, W=0, C=0, OH=0,
                   OW=0, N=0, stride_h=0, stride_w=0, pad_top=0, pad_left=0, stride_wzp=0, z_x=0, M_BUCKET=0,
                   **epi)  # fmt: skip
    dw_rt = dict(x_ptr=i8, w_ptr=i8, bias_ptr=i32, wzp_ptr=i32, y_ptr=i8, B=0, H=0, W=0, C=0, OH=0, OW=0,
                 stride_h=0, stride_w=0, pad_top=0, pad_left=0, stride_wzp=0, z_x=0, P_BUCKET=0, **epi)  # fmt: skip
    flags = dict(HAS_BIAS=True, OUT_INT32=False, USE_RINT=True)
    gemm_cfgs = _config.GEMM_GPU_CONFIGS if all_configs else [_config.GEMM_GPU_CONFIGS[4]]
    dw_cfgs = _config.DEPTHWISE_GPU_CONFIGS if all_configs else [_config.DEPTHWISE_GPU_CONFIGS[0]]
    jobs = []
    for cfg in gemm_cfgs:
        for wzp in (False, True):
            jobs.append((f"gemm wzp={wzp}", gemm._int8_gemm_kernel, gemm_rt, dict(HAS_WZP=wzp, **flags), ["N", "K",
                         "stride_xm", "stride_wn", "stride_ym"], cfg))  # fmt: skip
        for k, flat, pad_corr in ((3, False, True), (7, True, True), (1, False, False)):
            consts = dict(KH=k, KW=k, FLAT_K=flat, PAD_CORR=pad_corr, NDIG=2, TP=32 if k < 7 else 64,
                          HAS_WZP=False, **flags)  # fmt: skip
            jobs.append((f"conv {k}x{k} flat={flat}", conv._int8_conv2d_kernel, conv_rt, consts, ["C", "N"], cfg))
    rows_rt = {k: v for k, v in dw_rt.items() if k in depthwise._int8_depthwise_rows_kernel.arg_names}
    rows_cfgs = _config.DEPTHWISE_ROWS_GPU_CONFIGS if all_configs else [_config.DEFAULT_GPU_CONFIG["depthwise_rows"]]
    for cfg in rows_cfgs:
        for k in (3, 5):
            jobs.append((f"depthwise rows {k}x{k}", depthwise._int8_depthwise_rows_kernel, rows_rt,
                         dict(KH=k, KW=k, HAS_WZP=True, **flags), ["C"], cfg))  # fmt: skip
    for cfg in dw_cfgs:
        jobs.append(("depthwise 3x3", depthwise._int8_depthwise_kernel, dw_rt,
                     dict(KH=3, KW=3, HAS_WZP=True, **flags), ["C"], cfg))  # fmt: skip
        mp_rt = {k: v for k, v in dw_rt.items() if k in pool._int8_maxpool_kernel.arg_names}
        jobs.append(("maxpool 3x3", pool._int8_maxpool_kernel, mp_rt, dict(KH=3, KW=3), ["C"], cfg))
        mpd_rt = {**mp_rt, "dil_h": 0, "dil_w": 0}
        jobs.append(("maxpool dilated 3x3", pool._int8_maxpool_dilated_kernel, mpd_rt, dict(KH=3, KW=3), ["C"], cfg))
        ap_rt = dict(x_ptr=i8, y_ptr=i8, mult_ptr=f32, B=0, H=0, W=0, C=0, OH=0, OW=0, stride_h=0, stride_w=0,
                     pad_top=0, pad_bottom=0, pad_left=0, pad_right=0, z_x=0, z_y=0, lo=0, hi=0, P_BUCKET=0)
        jobs.append(("avgpool2d 3x3", pool._int8_avgpool2d_kernel, ap_rt,
                     dict(KH=3, KW=3, COUNT_INCLUDE_PAD=False, USE_RINT=True), ["C"], cfg))  # fmt: skip
    single = triton.Config({}, num_warps=_config.ELEMENTWISE_GPU_WARPS, num_stages=1)
    block = dict(BLOCK=_config.ELEMENTWISE_GPU_BLOCK)
    jobs += [
        ("add", elementwise._int8_add_kernel, dict(a_ptr=i8, b_ptr=i8, y_ptr=i8, n_elements=0, z_a=0, z_b=0, ia=0,
         ib=0, m=1.0, z_y=0, lo=0, hi=0), dict(USE_RINT=True, **block), [], single),
        ("quantize nchw", elementwise._quantize_kernel, dict(x_ptr=f32, y_ptr=i8, n_elements=0, C=0, H=0, W=0,
         stride_b=0, stride_c=0, stride_h=0, stride_w=0, inv_scale=1.0, z=0, lo=0, hi=0),
         dict(GATHER=True, USE_RINT=True, **block), [], single),
        ("dequantize", elementwise._dequantize_kernel, dict(q_ptr=i8, y_ptr=f32, n_elements=0, scale=1.0, z=0),
         block, [], single),
        ("lut into slice", lut._int8_lut_kernel, dict(x_ptr=i8, table_ptr=i8, y_ptr=i8, n_elements=0, C=0, C_out=0,
         channel_offset=0), dict(SLICE=True, PER_CHANNEL=False, **block), [], single),
        ("lut per channel", lut._int8_lut_kernel, dict(x_ptr=i8, table_ptr=i8, y_ptr=i8, n_elements=0, C=0,
         C_out=0, channel_offset=0), dict(SLICE=False, PER_CHANNEL=True, **block), [], single),
        ("mul gate", elementwise._int8_mul_kernel, dict(x_ptr=i8, g_ptr=i8, y_ptr=i8, n_elements=0, HWC=0, C=0,
         z_x=0, z_g=0, m=1.0, z_y=0, lo=0, hi=0), dict(PER_CHANNEL=True, USE_RINT=True, **block), [], single),
        ("upsample bilinear", pool._int8_upsample_bilinear_kernel, dict(x_ptr=i8, y_ptr=i8, th_ptr=i32, tw_ptr=i32,
         n_elements=0, H=0, W=0, C=0, OH=0, OW=0, z_x=0, m=1.0, z_y=0, lo=0, hi=0),
         dict(ONE=256, USE_RINT=True, **block), [], single),
        ("upsample nearest", pool._int8_upsample_nearest_kernel, dict(x_ptr=i8, y_ptr=i8, n_elements=0, H=0, W=0,
         C=0, OH=0, OW=0, mode_h=0, scale_h=1.0, mode_w=0, scale_w=1.0), block, [], single),
        ("avgpool", pool._int8_avgpool_kernel, dict(x_ptr=i8, y_ptr=i8, mult_ptr=f32, lo_ptr=i32, hi_ptr=i32, HW=0,
         C=0, stride_mult=0, stride_lo=0, stride_hi=0, z_x=0, z_y=0), dict(USE_RINT=True, **_config.AVGPOOL_GPU_META),
         ["C"], triton.Config({}, num_warps=_config.AVGPOOL_GPU_WARPS, num_stages=1)),
    ]  # fmt: skip
    results = []
    for name, fn, rt, consts, div16, cfg in jobs:
        consts = {**consts, **cfg.kwargs}
        entry = {"kernel": name, "config": dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)}
        try:
            entry.update(_compile_sm90(fn, rt, consts, div16, cfg.num_warps, cfg.num_stages), ok=True)
        except Exception as exc:  # report every failure, keep compiling the rest
            entry.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
        results.append(entry)
        print(f"{name:22s} {str(entry['config']):100s} ok={entry['ok']} wgmma={entry.get('wgmma')} "
              f"shared={entry.get('shared_bytes')} regs={entry.get('registers')} spill={entry.get('spill_bytes')} "
              f"fma={entry.get('fp32_fma')} rint={entry.get('rint')}")
    return {
        "schema": COMPILE_SCHEMA,
        "mode": "compile-only",
        "target": "cuda:90",
        "triton": triton.__version__,
        "all_ok": all(r["ok"] for r in results),
        "results": results,
    }


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
            "tops": None, "gbps": None, "roofline_floor_ms": None, "pct_of_roofline": None, "baselines": {},
            "speedup": {}, "goal": None, "goal_met": None,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}  # fmt: skip


KINDS = ("gemm", "conv3x3", "depthwise", "add", "maxpool", "avgpool", "quantize")


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
    from kernels._config import INTERPRETED

    device = "cuda" if cuda else "cpu"
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    timer = Timer(cuda, quick)
    ctx: Dict[str, Any] = {
        "device": device,
        "cuda": cuda,
        "timer": timer,
        "gen": torch.Generator().manual_seed(0),
        "peak_tops": _peak_tops(device_name) if cuda else None,
    }
    ctx["copy_gbps"] = copy_bandwidth_gbps(timer, device, quick)
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
        "copy_bandwidth_gbps": ctx["copy_gbps"],
        "peak_int8_tops": ctx["peak_tops"],
        "peak_int8_note": PEAK_NOTE,
        "all_bit_exact": False,
        "complete": False,
        "note": None if cuda else "interpreter timings: correctness and plumbing only, not performance",
        "results": results,
    }
    cases: List[Any] = []
    cases += [("gemm", f"gemm M={M} K={K} N={N}", dict(M=M, K=K, N=N), bench_gemm, (M, K, N))
              for M, K, N in (QUICK_GEMM if quick else FULL_GEMM)]  # fmt: skip
    cases += [("conv3x3", f"conv3x3 {B}x{H}x{W}x{C}->{N}", dict(B=B, H=H, W=W, C=C, N=N), bench_conv, (B, H, W, C, N))
              for B, H, W, C, N in (QUICK_CONV if quick else FULL_CONV)]  # fmt: skip
    cases += [("depthwise", f"depthwise3x3 s{st} {B}x{H}x{W}x{C}", dict(B=B, H=H, W=W, C=C, stride=st),
               bench_depthwise, (B, H, W, C, st)) for B, H, W, C, st in (QUICK_DW if quick else FULL_DW)]  # fmt: skip
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
        try:
            r = fn(*args, ctx)
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
            r = _case_error(kind, name, shape, exc)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        results.append(r)
        print_row(r)
        report["all_bit_exact"] = all(x["bit_exact"] for x in results)
        if save is not None:
            save(report)
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
    print(f"{r['name']:44s} {str(r['bit_exact']):>5s} {_fmt(r['ms']):>9s} {_fmt(r['tops'], '.1f'):>8s} "
          f"{_fmt(r['gbps'], '.1f'):>8s} {_fmt(r['pct_of_roofline'], '.0f'):>6s}  {sp}  [{r['goal']}: "
          f"{r['goal_met']}]", flush=True)  # fmt: skip


def print_header(report: Dict[str, Any]) -> None:
    print(f"{report['device']} | {report['backend']} | timer: {report['timer']}")
    print(f"copy bandwidth {report['copy_bandwidth_gbps']:.1f} GB/s; peak int8 {report['peak_int8_tops']} TOPS "
          f"({report['peak_int8_note']})")  # fmt: skip
    print(f"{'case':44s} {'exact':>5s} {'ms':>9s} {'TOPS':>8s} {'GB/s':>8s} {'%roof':>6s}  speedups", flush=True)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the report that was written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes; runs on a CPU through the interpreter")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile the kernels for cuda:90 without a GPU and report wgmma/shared memory/spills")
    parser.add_argument("--all-configs", action="store_true", help="with --compile-only: every autotune config")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which cases to run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "results" / "kernels.json",
                        help="where to write the JSON report")  # fmt: skip
    args = parser.parse_args(argv)
    if args.compile_only:
        report = compile_only(args.all_configs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
        if not report["all_ok"]:
            raise SystemExit("some kernel failed to compile for cuda:90")
        return report
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header_printed = []

    def save(report: Dict[str, Any]) -> None:
        if not header_printed:
            print_header(report)
            header_printed.append(True)
        tmp = args.out.with_suffix(args.out.suffix + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, args.out)

    report = run(args.quick, save, args.kinds)
    print("all bit-exact:", report["all_bit_exact"])
    print(f"wrote {args.out}")
    if not report["all_bit_exact"]:
        raise SystemExit("some kernel is not bit-exact against the reference")
    return report


if __name__ == "__main__":
    main()
