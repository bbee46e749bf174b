"""End-to-end throughput of the int8 network (``dfq_gpu.to_int8``) against PyTorch fp16 and fp32.

One command::

    python -m dfq_gpu.bench.e2e [--out PATH]            # CUDA GPU: batch 1, 32, 256 at 224x224
    python -m dfq_gpu.bench.e2e --quick [--out PATH]    # CPU: tiny batches and resolution, reference backend

(``python benchmarks/e2e.py ...`` in a checkout of the project is the same command; the report
goes to ``benchmarks/results/e2e.json`` under the working directory unless ``--out`` says otherwise;
with ``--quick``, to a temporary file, never over committed results.)

For EfficientNet-Lite0 and ResNet-50 (``--models`` adds MobileNetV3-Large and EfficientNet-B0;
random weights with randomized batch-norm statistics: only the speed matters here), images per
second of

* ``int8``: the integer network from ``dfq_gpu.quantize`` + ``dfq_gpu.to_int8`` (float NCHW
  images in, float logits out: input quantization and output dequantization included), Triton
  kernels on CUDA, each launch with its tile from the device's tuned tile table
  (``kernels/tiles/<gpu>.json``, :mod:`kernels.tiles`) or else the family's default tile:
  autotuning is off unless ``--autotune`` (``int8_kernel_settings`` records what was in force,
  ``layer_tiles`` the tile every step's launches ran with, and where it came from);
* ``fp16_eager``: the float model in half precision with its batch norms folded into the
  convolutions (``fold_batch_norms``: an FX pass, ``fp16_eager.bn_folded`` counts them, checked
  against the unfolded model in float32), channels_last, cuDNN (``cudnn.benchmark`` on);
* ``fp16_compile``: the same folded model through ``torch.compile(mode=--compile-mode)``
  (default ``max-autotune`` on a GPU) with Inductor's freezing on (``torch._inductor.config.freezing``,
  under ``torch.no_grad``), one static-shape compilation per batch; ``max-autotune`` and
  ``reduce-overhead`` replay through Inductor's own CUDA graphs (``cudagraphs`` in the entry);
* ``fp32_eager``: the float model in float32 (batch norms not folded), channels_last (TF32 off).

Each variant is timed as is (``eager_ms``) and, on CUDA, replayed from a CUDA graph captured at
the fixed batch size (``cudagraph_ms``), which removes Python and launch overhead; ``ms`` is the
better of the two and gives ``images_per_s``. Times are medians over repeats of CUDA-event
timed loops. Reported per model and batch: ``speedup_vs_fp16_eager`` and
``speedup_vs_fp16_compile`` (int8 images/s divided by theirs, each at its best), and the same
without CUDA graphs on either side (``speedup_vs_fp16_eager_no_graphs``).

At the largest batch, after its baselines (``torch.compile`` included, since each of these
compiles kernels of its own), the int8 network is also timed with the other depthwise kernel
variants (``int8_dw_rows``, ``int8_dw_tma``), with the other GEMM kernel (``int8_gemm_tma``: the persistent TMA
GEMM and convolution kernels where the operands allow) and with each depthwise convolution
fused into the 1x1 convolution after it (``int8_dw_project``, ``to_int8(q,
fuse_depthwise=True)``) and with its narrow activations stored as they are instead of with
16-aligned rows (``int8_pad_channels_off``, ``to_int8(q, pad_channels=False)``), each output
compared bit for bit with the default network's. The int8
network is also profiled step by step (``step_profile``: each step replayed alone from a CUDA
graph on the input the network gave it; time per step type, the slowest steps with their shapes
and tiles), to show where the time goes.
The profile's sum is compared with the network's own CUDA-graph replay time
(``sum_over_network``; the goal is within 5%: ``within_5pct``).

Before timing, the int8 network's Triton output is compared bit for bit with the integer
reference on the same device (every int8 activation and the logits). Autotuning of the int8
kernels happens on each new shape; ``--autotune-ms`` shortens Triton's per-config benchmark so
that the whole run fits in a few minutes (0 keeps Triton's default), and the time of the first
(autotuning) call is reported. The JSON report (``--out``) is rewritten after every measurement,
so a run cut short by a time limit still leaves what it measured; ``--budget-s`` skips what no
longer fits (``torch.compile`` last: a compilation is only started with at least
``COMPILE_MIN_S[mode]`` seconds left, and its entry says "started" until it finishes, so a
compilation cut off by the step's time limit is visible as such).

Only torch, torchvision, triton and this repository are needed: EfficientNet-Lite0 comes from
``efficientnet_lite_pytorch`` when it is installed and is otherwise built here with the same
layers (``"source"`` in the report says which).

``--quick`` runs on the CPU with the integer reference, batch 1 and 2 at 32x32 and a couple of
iterations: it shows that the pipeline works end to end, not how fast anything is.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

SCHEMA = "dfq_int8-e2e-bench/1"
MODELS = ("efficientnet_lite0", "resnet50")
#: Also available with ``--models`` (torchvision, random weights): the networks with hardswish,
#: SiLU and squeeze-excitation gates, whose int8 steps include tables and gating multiplies.
MORE_MODELS = ("mobilenet_v3_large", "efficientnet_b0")
FULL_BATCHES = (1, 32, 256)
QUICK_BATCHES = (1, 2)
VARIANTS = ("int8", "fp16_eager", "fp16_compile", "fp32_eager")
#: ``torch.compile`` modes of ``--compile-mode``.
COMPILE_MODES = ("max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead", "default")
#: Seconds that must be left in the budget to start a compilation of each mode (an estimate:
#: max-autotune benchmarks Triton templates against cuDNN/cuBLAS for every convolution shape).
COMPILE_MIN_S = {"max-autotune": 75.0, "max-autotune-no-cudagraphs": 75.0, "reduce-overhead": 40.0, "default": 40.0}
#: Modes whose compiled model replays through Inductor's own CUDA graphs.
INDUCTOR_CUDAGRAPH_MODES = ("max-autotune", "reduce-overhead")
#: Calls per CUDA graph when a step of the int8 network is timed alone.
STEP_GRAPH_CALLS = 10


# =============================================================================================
# Models
# =============================================================================================
def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Random batch-norm statistics and affine parameters (so folding and quantization are not trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)


def _same_pad(k: int, stride: int, size: int) -> Tuple[nn.ZeroPad2d, int]:
    """TensorFlow "same" padding for a fixed input size (as EfficientNet-Lite's static padding)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2)), out


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, size: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: List[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        pad, self.out_size = _same_pad(k, stride, size)
        layers += [pad, nn.Conv2d(hidden, hidden, k, stride, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.skip else y


class Lite0(nn.Module):
    """EfficientNet-Lite0's layers (ReLU6, no squeeze-excitation, static "same" padding)."""

    # kernel, stride, expansion, output channels, repeats
    STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
              (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))

    def __init__(self, image_size: int = 224, num_classes: int = 1000) -> None:
        super().__init__()
        pad, size = _same_pad(3, 2, image_size)
        self.stem = nn.Sequential(pad, nn.Conv2d(3, 32, 3, 2, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        blocks: List[nn.Module] = []
        cin = 32
        for k, s, e, c, n in self.STAGES:
            for i in range(n):
                blk = _MBConv(cin, c, e, k, s if i == 0 else 1, size)
                size = blk.out_size
                blocks.append(blk)
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build_model(name: str, image_size: int) -> Tuple[nn.Module, str, Tuple[float, float]]:
    """``(model, source, input_range)`` with random weights and randomized BN statistics."""
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite_pytorch import EfficientNet

            model: nn.Module = EfficientNet.from_name("efficientnet-lite0")
            source = "efficientnet_lite_pytorch (random weights)"
        except ImportError:
            model = Lite0(image_size)
            source = "benchmarks/e2e.py Lite0 (same layers as efficientnet-lite0, random weights)"
        input_range = (-1.0, 1.0)
    elif name == "resnet50":
        import torchvision

        model = torchvision.models.resnet50(weights=None)
        source = "torchvision.models.resnet50 (random weights)"
        input_range = (-2.1179, 2.64)  # ImageNet mean/std normalization
    elif name in MORE_MODELS:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        source = f"torchvision.models.{name} (random weights)"
        input_range = (-2.1179, 2.64)  # ImageNet mean/std normalization
    else:
        raise SystemExit(f"unknown model {name!r}; choose from {MODELS + MORE_MODELS}")
    randomize_bn(model)
    return model.eval(), source, input_range


def fold_batch_norms(model: nn.Module) -> Tuple[nn.Module, int]:
    """A copy of ``model`` with every BatchNorm2d that directly follows a convolution folded into
    it (``torch.nn.utils.fusion.fuse_conv_bn_weights``), as an FX GraphModule; returns ``(model,
    folded)``. Convolutions (subclasses too, such as a static-"same"-padding convolution) are
    traced as leaves; a batch norm is folded only when it is its convolution's single user and
    the convolution is called once."""
    import copy

    import torch.fx as fx
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)

    model = copy.deepcopy(model).eval()
    gm = fx.GraphModule(model, _Tracer().trace(model))
    modules = dict(gm.named_modules())
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded = 0
    for node in list(gm.graph.nodes):
        bn = modules.get(str(node.target)) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
            continue
        prev = node.args[0] if node.args else None
        conv = modules.get(str(prev.target)) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(prev.users) != 1 or calls.get(str(prev.target)) != 1:
            continue
        with torch.no_grad():
            w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                        bn.bias)  # fmt: skip
        conv.weight, conv.bias = w, b
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), folded


# =============================================================================================
# Timing
# =============================================================================================
class Clock:
    """Median milliseconds per call: CUDA events on a GPU, a wall clock otherwise."""

    def __init__(self, cuda: bool, quick: bool) -> None:
        self.cuda = cuda
        self.quick = quick
        self.name = ("CUDA events around a loop of calls, median of 3 repeats (~0.2 s each)" if cuda
                     else "time.perf_counter, median of a few calls")

    def __call__(self, fn: Callable[[], Any]) -> float:
        if not self.cuda:
            times = []
            for _ in range(1 if self.quick else 3):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)
        for _ in range(2):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        est = max((time.perf_counter() - t0) * 1e3, 1e-3)
        iters = int(min(200, max(3, 200.0 / est)))
        times = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / iters)
        return statistics.median(times)


def cuda_graph(fn: Callable[[], Any]) -> Tuple[Callable[[], None], Any]:
    """Capture ``fn()`` (static inputs) in a CUDA graph; returns ``(replay, graph)``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay, graph


def shorten_autotuning(ms: float) -> List[str]:
    """Make Triton's autotuner benchmark each config for about ``ms`` milliseconds (0: leave it)."""
    if ms <= 0:
        return []
    import importlib

    import triton.testing

    def bench(kernel_call: Callable[[], Any], quantiles: Any = None) -> Any:
        return triton.testing.do_bench(kernel_call, warmup=max(1, int(ms // 4)), rep=max(1, int(ms)),
                                       quantiles=quantiles)

    patched = []
    for mod_name in ("kernels.gemm", "kernels.conv", "kernels.depthwise", "kernels.pool"):
        mod = importlib.import_module(mod_name)
        for attr, obj in vars(mod).items():
            if type(obj).__name__ == "Autotuner":
                obj._do_bench = bench  # read by the do_bench (cached) property of recent Triton versions
                obj.__dict__["do_bench"] = bench
                patched.append(f"{mod_name}.{attr}")
    return patched


# =============================================================================================
# The benchmark
# =============================================================================================
class Report:
    """The JSON report, rewritten after every change."""

    def __init__(self, path: Path, data: Dict[str, Any]) -> None:
        self.path = path
        self.data = data

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def measure(clock: Clock, fn: Callable[[], Any], cuda: bool, graphs: bool) -> Dict[str, Any]:
    """Eager and (on CUDA) CUDA-graph times of ``fn``."""
    out: Dict[str, Any] = {"eager_ms": None, "cudagraph_ms": None, "error": None, "cudagraph_error": None}
    try:
        out["eager_ms"] = clock(fn)
    except Exception as exc:  # a variant PyTorch does not support here (e.g. fp16 on a CPU)
        out["error"] = _err(exc)
        return out
    if cuda and graphs:
        try:
            replay, graph = cuda_graph(fn)
            out["cudagraph_ms"] = clock(replay)
            del graph
        except Exception as exc:
            out["cudagraph_error"] = _err(exc)
            torch.cuda.synchronize()
    best = [v for v in (out["eager_ms"], out["cudagraph_ms"]) if v is not None]
    out["ms"] = min(best) if best else None
    return out


def _ips(batch: int, ms: Optional[float]) -> Optional[float]:
    return None if not ms else batch / (ms * 1e-3)


def _time_variant(clock: Clock, net: Any, variant: Any, x: torch.Tensor, out: Dict[str, Any],
                  context: Any = None) -> Dict[str, Any]:
    """``variant(x)`` (inside ``context``) against the default network's ``net(x)``, bit for bit
    (``equal_to_default``), then timed; an error is recorded in ``out``."""
    try:
        with torch.no_grad():
            y_default = net(x)
            with context if context is not None else contextlib.nullcontext():
                out["equal_to_default"] = bool(torch.equal(variant(x), y_default))
                out.update(measure(clock, lambda: variant(x), clock.cuda, True))
    except Exception as exc:
        out.update(error=_err(exc), ms=None)
        traceback.print_exc()
        if clock.cuda:
            torch.cuda.synchronize()
    return out


def time_other_depthwise_variant(clock: Clock, net: Any, x: torch.Tensor) -> Dict[str, Any]:
    """The int8 network with each other depthwise kernel (``kernels.settings.DEPTHWISE_VARIANTS``:
    "tiles", "rows", "tma"; "rows" runs the stride-1 layers, "tma" those of stride 1 or 2 on channels a multiple
    of 16): its output
    against the default's, bit for bit, and its times. Returned under ``int8_dw_<variant>``."""
    from kernels._config import DEPTHWISE_VARIANTS, depthwise_variant, use_depthwise_variant

    return {f"int8_dw_{other}": _time_variant(clock, net, net, x, {"variant": other}, use_depthwise_variant(other))
            for other in DEPTHWISE_VARIANTS if other != depthwise_variant()}


def time_other_gemm_variant(clock: Clock, net: Any, x: torch.Tensor) -> Dict[str, Any]:
    """The int8 network with the other GEMM and convolution kernels (``kernels.settings.GEMM_VARIANTS``:
    "pointers" and "tma"; "tma" runs the GEMMs and convolutions whose operands TMA can read): its output against the
    default's, bit for bit, and its times. Returned under ``int8_gemm_<variant>``."""
    from kernels import settings as ks

    other = "tma" if ks.current_settings().gemm_variant == "pointers" else "pointers"
    return {f"int8_gemm_{other}": _time_variant(clock, net, net, x, {"variant": other},
                                                ks.use_settings(gemm_variant=other))}


def time_fused_depthwise(clock: Clock, net: Any, fused: Any, x: torch.Tensor) -> Dict[str, Any]:
    """The int8 network with each depthwise convolution computed in the kernel of the 1x1
    convolution after it (``to_int8(q, fuse_depthwise=True)``, ``kernels.dwproject``): its output
    against the default network's, bit for bit, and its times. Returned under ``int8_dw_project``."""
    return {"int8_dw_project": _time_variant(clock, net, fused, x, {"fused": len(fused.coverage.depthwise)})}


def time_unpadded_channels(clock: Clock, net: Any, unpadded: Any, x: torch.Tensor) -> Dict[str, Any]:
    """The int8 network with its activations of 24, 40, 72, ... channels stored as they are
    (``to_int8(q, pad_channels=False)``; the default pads them to 16-aligned rows): its output
    against the default network's, bit for bit, and its times. Returned under
    ``int8_pad_channels_off``, with ``padded``: how many steps of the default network pad."""
    return {"int8_pad_channels_off": _time_variant(clock, net, unpadded, x, {"padded": len(net.padded_channels)})}


def time_graphed_network(clock: Clock, net: Any, x: torch.Tensor) -> Dict[str, Any]:
    """The library's CUDA-graph runner (``dfq_gpu.int8.GraphedNetwork``: input copied in, output
    copied out, buffer checks on every call): its output against the eager network's, bit for
    bit, and its time per call."""
    from dfq_gpu.int8 import GraphedNetwork

    out: Dict[str, Any] = {"graphed_network_equal": None, "graphed_network_ms": None, "graphed_network_error": None}
    try:
        graphed = GraphedNetwork(net)
        with torch.no_grad():
            out["graphed_network_equal"] = bool(torch.equal(graphed(x), net(x)))
            out["graphed_network_ms"] = clock(lambda: graphed(x))
        graphed.reset()
    except Exception as exc:
        out["graphed_network_error"] = _err(exc)
        traceback.print_exc()
        torch.cuda.synchronize()
    return out


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b == 0 else a / b


def check_bit_exact(net: Any, x: torch.Tensor) -> Dict[str, Any]:
    """Triton vs the integer reference on the same device: every int8 activation and the logits."""
    saved = net.backend
    try:
        net.backend = "auto"
        out_t, acts_t = net.activations(x)
        net.backend = "reference"
        # the reference's float64 convolutions are exact on integers only with direct or GEMM
        # algorithms: keep cuDNN (benchmark mode may pick FFT or Winograd) out of it
        with torch.backends.cudnn.flags(enabled=False):
            out_r, acts_r = net.activations(x)
    finally:
        net.backend = saved
    differing = [k for k in acts_r if k not in acts_t or not torch.equal(acts_t[k], acts_r[k])]
    logits_equal = bool(torch.equal(out_t, out_r))
    return {"batch": int(x.shape[0]), "activations": len(acts_r), "differing_activations": differing[:10],
            "logits_equal": logits_equal, "bit_exact": not differing and logits_equal}


def _step_ms(fn: Callable[[], Any], cuda: bool) -> Tuple[float, str]:
    """Milliseconds per call of one step: CUDA-graph replay of ``STEP_GRAPH_CALLS`` calls (median
    of 5 replays) on a GPU, falling back to CUDA events around eager calls; wall clock on a CPU."""
    if not cuda:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3, "wall_clock"
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            keep = [fn() for _ in range(STEP_GRAPH_CALLS)]
            del keep
        graph.replay()
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / STEP_GRAPH_CALLS)
        del graph
        return statistics.median(times), "cuda_graph"
    except Exception:  # noqa: BLE001 - a step that cannot be captured alone: events around eager calls
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(STEP_GRAPH_CALLS):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / STEP_GRAPH_CALLS, "cuda_events (fallback)"


def profile_steps(net: Any, x: torch.Tensor, cuda: bool, top: int = 15,
                  network_ms: Optional[float] = None) -> Dict[str, Any]:  # fmt: skip
    """Time every step of the int8 network alone: one eager call records each step's inputs (and
    the tile of each of its kernel launches, :mod:`kernels.tiles`), then each step is replayed
    from its own CUDA graph on those inputs (wall clock on a CPU). Returns the total, the time per
    step type, the slowest steps with their shapes and tiles, every step's tiles
    (``layer_tiles``), and the total against ``network_ms`` (the whole network's CUDA-graph replay
    time; measured here when not given): ``sum_over_network``, goal within 5%."""
    from kernels import tiles

    steps = net.steps()
    inputs: Dict[str, Any] = {}
    shapes: Dict[str, Any] = {}
    launch_at: Dict[str, List[int]] = {}
    order: List[str] = []

    def pre(name: str, rec: List[Any]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            inputs[name] = args
            launch_at[name] = [len(rec)]
            shapes[name] = [list(a.shape) for a in args if isinstance(a, torch.Tensor)]
            order.append(name)
        return hook

    def post(name: str, rec: List[Any]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            launch_at[name].append(len(rec))
            shapes[name] = (shapes[name], list(out.shape) if isinstance(out, torch.Tensor) else None)
        return hook

    handles = []
    with tiles.record_launches() as rec:
        for name, m in steps.items():
            handles += [m.register_forward_pre_hook(pre(name, rec)), m.register_forward_hook(post(name, rec))]
        try:
            with torch.no_grad():
                net(x)
            if cuda:
                torch.cuda.synchronize()
        finally:
            for h in handles:
                h.remove()
    network_timer = "given (the int8 entry's cudagraph_ms)"
    if network_ms is None:
        with torch.no_grad():
            if cuda:
                try:
                    replay, graph = cuda_graph(lambda: net(x))
                    network_ms, network_timer = Clock(True, False)(replay), "cuda_graph"
                    del graph
                except Exception as exc:  # noqa: BLE001 - compare with the eager time instead, say so
                    torch.cuda.synchronize()
                    network_ms = Clock(True, False)(lambda: net(x))
                    network_timer = f"eager CUDA events (graph capture failed: {_err(exc)})"
            else:
                t0 = time.perf_counter()
                net(x)
                network_ms, network_timer = (time.perf_counter() - t0) * 1e3, "wall_clock (eager)"
    rows = []
    methods: Dict[str, int] = {}
    with torch.no_grad():
        for name in order:
            module, args = steps[name], inputs[name]
            ms, method = _step_ms(lambda: module(*args), cuda)
            methods[method] = methods.get(method, 0) + 1
            ins, out = shapes[name]
            a, b = launch_at[name]
            rows.append({"step": name, "kind": type(module).__name__, "ms": ms, "in": ins, "out": out,
                         "detail": module.extra_repr(), "tiles": [tiles.describe(r) for r in rec[a:b]]})
    inputs.clear()
    total = sum(r["ms"] for r in rows)
    by_kind: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"ms": 0.0, "steps": 0})
        k["ms"] += r["ms"]
        k["steps"] += 1
    for k in by_kind.values():
        k["share"] = k["ms"] / total if total else None
    sources: Dict[str, int] = {}
    for r in rows:
        for t in r["tiles"]:
            sources[t["source"]] = sources.get(t["source"], 0) + 1
    ratio = total / network_ms if network_ms else None
    return {
        "batch": int(x.shape[0]),
        "timer": (f"each step alone, CUDA-graph replay of {STEP_GRAPH_CALLS} calls on the inputs the network "
                  "gave it (median of 5)") if cuda else "wall clock around each step (one call)",
        "step_timers": methods,
        "total_ms": total,
        "network_ms": network_ms,
        "network_timer": network_timer,
        "sum_over_network": ratio,
        "within_5pct": None if ratio is None else abs(ratio - 1.0) <= 0.05,
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["ms"])),
        "slowest": sorted(rows, key=lambda r: -r["ms"])[:top],
        "steps": len(rows),
        "tile_sources": sources,
        "layer_tiles": [{"step": r["step"], "kind": r["kind"], "tiles": r["tiles"]} for r in rows],
    }


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Run the benchmark with the int8 kernel settings of ``args`` (autotuning off unless
    ``--autotune``; the tile table on unless ``--no-tile-table``) and return the report."""
    from kernels import settings as ks

    changes: Dict[str, Any] = {"autotune": bool(getattr(args, "autotune", False)),
                               "tile_table": not getattr(args, "no_tile_table", False)}
    if getattr(args, "tile_table", None):
        changes["tile_table_file"] = str(args.tile_table)
    with ks.use_settings(**changes):
        return _run(args)


def _kernel_settings_record(cuda: bool) -> Dict[str, Any]:
    from kernels import settings as ks

    s = ks.current_settings()
    out: Dict[str, Any] = {"autotune": s.autotune, "tile_table": s.tile_table, "tile_table_file": s.tile_table_file,
                           "tile_match": s.tile_match, "depthwise_variant": s.depthwise_variant, "gemm_variant": s.gemm_variant,
                           "forced": [f for f, _ in s.forced],
                           "table": None}
    if cuda and s.tile_table:
        from kernels import tiles

        table = tiles.table_for(s)
        out["table"] = None if table is None else table.summary()
        if table is None:
            where = s.tile_table_file or tiles.default_table_path(tiles.current_device_name())
            out["table_note"] = (f"no usable table at {where}: every launch ran with its family's default tile"
                                 + (" or autotuned" if s.autotune else ""))
    return out


def _run(args: argparse.Namespace) -> Dict[str, Any]:
    quick = args.quick
    cuda = torch.cuda.is_available() and not quick
    if not cuda and not quick:
        raise SystemExit("the full benchmark needs a CUDA device; use --quick for the CPU run")
    t_start = time.monotonic()
    deadline = t_start + args.budget_s if args.budget_s else math.inf
    device = "cuda" if cuda else "cpu"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if quick:
        torch.set_num_threads(1)  # small tensors: threads cost more than they bring

    import dfq_gpu
    from dfq_gpu import DFQConfig

    size = args.image_size or (32 if quick else 224)
    batches = tuple(args.batches) if args.batches else (QUICK_BATCHES if quick else FULL_BATCHES)
    models = tuple(args.models) if args.models else MODELS
    do_compile = (not quick or args.compile) and not args.no_compile
    clock = Clock(cuda, quick)
    patched = shorten_autotuning(args.autotune_ms) if cuda else []
    gpu = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})"
    try:
        import triton

        triton_version: Optional[str] = triton.__version__
    except ImportError:
        triton_version = None
    settings_record = _kernel_settings_record(cuda)
    int8_autotune: Optional[bool] = settings_record["autotune"] if cuda else None
    compile_mode = args.compile_mode or ("max-autotune" if cuda else "default")
    report = Report(args.out, {
        "schema": SCHEMA,
        "mode": "quick" if quick else "full",
        "device": gpu,
        "torch": torch.__version__,
        "triton": triton_version,
        "int8_backend": "auto (Triton)" if cuda else "reference",
        "image_size": size,
        "batches": list(batches),
        "timer": clock.name,
        "autotune_bench_ms": args.autotune_ms if patched else None,
        "int8_autotune": int8_autotune,
        "int8_kernel_settings": settings_record,
        "autotuners_patched": patched,
        "compile_mode": compile_mode if do_compile else None,
        "compile_freezing": True if do_compile else None,
        "budget_s": args.budget_s,
        "note": None if cuda else "CPU timings with the integer reference: plumbing only, not performance",
        "models": {},
        "skipped": [],
        "complete": False,
    })
    report.save()

    def left() -> float:
        return deadline - time.monotonic()

    prepared: Dict[str, Dict[str, Any]] = {}
    for name in models:
        entry: Dict[str, Any] = {"results": {}}
        report.data["models"][name] = entry
        model, source, input_range = build_model(name, size)
        entry["source"] = source
        entry["parameters"] = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        example = torch.empty(1, 3, size, size).uniform_(*input_range)
        q = dfq_gpu.quantize(model, (example,), DFQConfig(input_range=input_range))
        t1 = time.perf_counter()
        net = dfq_gpu.to_int8(q).to(device)
        entry["quantize_s"] = t1 - t0
        entry["to_int8_s"] = time.perf_counter() - t1
        entry["int8_steps"] = len(net.steps())
        if cuda:
            try:
                xb = torch.empty(args.check_batch, 3, size, size, device=device).uniform_(*input_range)
                t2 = time.perf_counter()
                entry["triton_vs_reference"] = check_bit_exact(net, xb)
                # includes compiling and autotuning the kernels for batch 2
                entry["triton_vs_reference"]["seconds"] = time.perf_counter() - t2
            except Exception as exc:
                entry["triton_vs_reference"] = {"bit_exact": False, "error": _err(exc)}
                traceback.print_exc()
        fold = {"bn_folded": 0, "error": None, "max_abs_diff_fp32": None}
        try:
            folded, fold["bn_folded"] = fold_batch_norms(model)
            with torch.no_grad():
                xf = torch.empty(2, 3, size, size).uniform_(*input_range)
                fold["max_abs_diff_fp32"] = float((folded(xf) - model(xf)).abs().max())
        except Exception as exc:  # an untraceable model: fp16 without folding, recorded
            folded, fold["error"] = _copy(model), _err(exc)
        entry["bn_fold"] = fold
        fp16 = folded.to(device=device, dtype=torch.float16, memory_format=torch.channels_last)
        fp32 = _copy(model).to(device=device, memory_format=torch.channels_last)
        prepared[name] = {"net": net, "fp16": fp16, "fp32": fp32, "input_range": input_range, "fold": fold,
                          "sim": q}  # for the depthwise + 1x1 variant, built when it is timed
        report.save()


    def measure_batch(name: str, batch: int) -> None:
        entry, p = report.data["models"][name], prepared[name]
        net, fp16, fp32, fold = p["net"], p["fp16"], p["fp32"], p["fold"]
        res = entry["results"].setdefault(str(batch), {})
        if left() < 20:
            report.data["skipped"].append(f"{name} batch {batch}: time budget")
            return
        x = torch.empty(batch, 3, size, size, device=device).uniform_(*p["input_range"])
        x16 = x.to(torch.float16).contiguous(memory_format=torch.channels_last)
        x32 = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            t0 = time.perf_counter()
            try:
                net(x)
                if cuda:
                    torch.cuda.synchronize()
                first = time.perf_counter() - t0
                res["int8"] = measure(clock, lambda: net(x), cuda, True)
                res["int8"]["first_call_s"] = first
                if cuda:
                    res["int8"].update(time_graphed_network(clock, net, x))
            except Exception as exc:
                res["int8"] = {"error": _err(exc), "ms": None}
                traceback.print_exc()
            res["fp16_eager"] = measure(clock, lambda: fp16(x16), cuda, True)
            res["fp16_eager"].update(bn_folded=fold["bn_folded"], channels_last=True, cudnn_benchmark=True)
            res["fp32_eager"] = measure(clock, lambda: fp32(x32), cuda, True)
        _summarize(res, batch)
        if batch == max(batches) and (res.get("int8") or {}).get("ms") is not None:
            try:
                prof = entry["step_profile"] = profile_steps(
                    net, x, cuda, network_ms=res["int8"].get("cudagraph_ms") if cuda else None)
                entry["tile_sources"] = prof["tile_sources"]
                ratio = prof["sum_over_network"]
                print(f"{name} batch {batch} int8 step profile (sum/network "
                      f"{'-' if ratio is None else f'{ratio:.3f}'}; tiles {prof['tile_sources']}): " + ", ".join(
                    f"{k} {v['share']:.0%}" for k, v in prof["by_kind"].items() if v["share"] is not None),
                    flush=True)  # fmt: skip
            except Exception as exc:
                entry["step_profile"] = {"error": _err(exc)}
                traceback.print_exc()
        report.save()
        print(_line(name, batch, res), flush=True)
        if cuda:
            torch.cuda.empty_cache()

    def variants_batch(name: str, batch: int) -> None:
        """The int8 network with the other kernel variants and the depthwise + 1x1 fusion, each
        checked bit for bit against the default network (CUDA only; after the baselines, which
        the goals are stated against, since each variant compiles kernels of its own)."""
        entry, p = report.data["models"][name], prepared[name]
        res = entry["results"].setdefault(str(batch), {})
        if (res.get("int8") or {}).get("ms") is None:
            return
        net = p["net"]
        x = torch.empty(batch, 3, size, size, device=device).uniform_(*p["input_range"])
        with torch.no_grad():
            # first the channel padding (a default whose end-to-end effect no kernel case shows)
            if net.padded_channels and left() > 40:
                try:
                    unpadded = dfq_gpu.to_int8(p["sim"], pad_channels=False).to(device)
                except Exception as exc:  # recorded; the int8 result stands
                    res["int8_pad_channels_off"] = {"error": _err(exc), "ms": None}
                else:
                    res.update(time_unpadded_channels(clock, net, unpadded, x))
            elif net.padded_channels:
                report.data["skipped"].append(f"{name} batch {batch} int8_pad_channels_off: time budget")
            if left() > 20:
                res.update(time_other_depthwise_variant(clock, net, x))
            # the other GEMM/convolution kernels, then the fusion: both compile kernels now
            if left() > 30:
                res.update(time_other_gemm_variant(clock, net, x))
            else:
                report.data["skipped"].append(f"{name} batch {batch} other gemm variant: time budget")
            if left() > 60:
                try:
                    fused = dfq_gpu.to_int8(p["sim"], fuse_depthwise=True).to(device)
                except Exception as exc:  # recorded; the int8 result stands
                    res["int8_dw_project"] = {"error": _err(exc), "ms": None}
                else:
                    if fused.coverage.depthwise:
                        res.update(time_fused_depthwise(clock, net, fused, x))
            else:
                report.data["skipped"].append(f"{name} batch {batch} int8_dw_project: time budget")
        _summarize(res, batch)
        report.save()
        if cuda:
            torch.cuda.empty_cache()

    inductor_graphs = compile_mode in INDUCTOR_CUDAGRAPH_MODES

    def compile_batch(name: str, batch: int) -> None:
        entry, p = report.data["models"][name], prepared[name]
        res = entry["results"].setdefault(str(batch), {})
        if not do_compile:
            res["fp16_compile"] = {
                "ms": None, "error": "skipped (quick mode; pass --compile)" if quick else "skipped (--no-compile)"}
            return
        need = COMPILE_MIN_S.get(compile_mode, 40.0) if cuda else 0.0
        if left() < need:
            res["fp16_compile"] = {"ms": None, "mode": compile_mode,
                                   "error": f"skipped (time budget: {left():.0f} s left, a {compile_mode} "
                                            f"compilation needs about {need:.0f} s)"}  # fmt: skip
            report.data["skipped"].append(f"{name} batch {batch} fp16_compile ({compile_mode}): time budget")
            report.save()
            return
        res["fp16_compile"] = {"ms": None, "mode": compile_mode, "freezing": True, "bn_folded": True,
                               "error": "started: the compilation did not finish (cut off by a time limit?)"}
        report.save()
        x16 = torch.empty(batch, 3, size, size, device=device).uniform_(*p["input_range"]).to(
            torch.float16).contiguous(memory_format=torch.channels_last)
        try:
            import torch._dynamo as dynamo
            import torch._inductor.config as inductor_config

            dynamo.reset()  # one static-shape compilation per batch, nothing reused
            with torch.no_grad():
                old_freezing = inductor_config.freezing
                inductor_config.freezing = True
                try:
                    compiled = torch.compile(p["fp16"], mode=None if compile_mode == "default" else compile_mode,
                                             dynamic=False)  # fmt: skip
                    t0 = time.perf_counter()
                    compiled(x16)
                    compiled(x16)  # Inductor's CUDA graphs record on a later call
                    if cuda:
                        torch.cuda.synchronize()
                    first = time.perf_counter() - t0
                finally:
                    inductor_config.freezing = old_freezing
                r = measure(clock, lambda: compiled(x16), cuda, not inductor_graphs)
            r.update(mode=compile_mode, freezing=True, bn_folded=True, first_call_s=first,
                     cudagraphs=("inductor (mode " + compile_mode + ")") if inductor_graphs and cuda else
                     ("captured by this benchmark" if cuda else None))
            res["fp16_compile"] = r
        except Exception as exc:
            res["fp16_compile"] = {"ms": None, "mode": compile_mode, "error": _err(exc)}
            traceback.print_exc()
        _summarize(res, batch)
        report.save()
        print(_line(name, batch, res), flush=True)
        if cuda:
            torch.cuda.empty_cache()

    # the largest batch first (the throughput goal is stated there): every model's eager
    # variants and profile, then its compiled baselines (the most expensive to prepare); then the
    # other batches the same way, batch 1 last
    largest = max(batches)
    rest = sorted((b for b in batches if b != largest), key=lambda b: (b == 1, -b))
    for phase in ([largest], rest):
        for name in models:
            for batch in phase:
                measure_batch(name, batch)
        for name in models:
            for batch in phase:
                compile_batch(name, batch)
        if cuda and phase == [largest]:
            for name in models:
                variants_batch(name, largest)

    report.data["summary"] = {
        name: {b: {"int8_images_per_s": (r.get("int8") or {}).get("images_per_s"),
                   "fp16_eager_images_per_s": (r.get("fp16_eager") or {}).get("images_per_s"),
                   "fp16_compile_images_per_s": (r.get("fp16_compile") or {}).get("images_per_s"),
                   "speedup_vs_fp16_eager": r.get("speedup_vs_fp16_eager"),
                   "speedup_vs_fp16_compile": r.get("speedup_vs_fp16_compile")}
               for b, r in entry["results"].items()}
        for name, entry in report.data["models"].items()}
    report.data["elapsed_s"] = time.monotonic() - t_start
    report.data["complete"] = not report.data["skipped"]
    report.save()
    return report.data


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _summarize(res: Dict[str, Any], batch: int) -> None:
    for v in VARIANTS:
        r = res.get(v)
        if isinstance(r, dict):
            r["images_per_s"] = _ips(batch, r.get("ms"))
    ips = {v: (res.get(v) or {}).get("images_per_s") for v in VARIANTS}
    eager = {v: _ips(batch, (res.get(v) or {}).get("eager_ms")) for v in VARIANTS}
    res["speedup_vs_fp16_eager"] = _ratio(ips["int8"], ips["fp16_eager"])
    res["speedup_vs_fp16_compile"] = _ratio(ips["int8"], ips["fp16_compile"])
    res["speedup_vs_fp32_eager"] = _ratio(ips["int8"], ips["fp32_eager"])
    res["speedup_vs_fp16_eager_no_graphs"] = _ratio(eager["int8"], eager["fp16_eager"])
    for key in [k for k in res if k.startswith(("int8_dw_", "int8_gemm_"))]:  # the other kernel variants
        other = res[key]
        other["images_per_s"] = _ips(batch, other.get("ms"))
        res[f"speedup_vs_fp16_eager_{key[len('int8_'):]}"] = _ratio(other["images_per_s"], ips["fp16_eager"])


def _line(name: str, batch: int, res: Dict[str, Any]) -> str:
    parts = []
    for v in VARIANTS:
        ips = (res.get(v) or {}).get("images_per_s")
        parts.append(f"{v}={'-' if ips is None else f'{ips:.0f}'}")
    s1, s2 = res.get("speedup_vs_fp16_eager"), res.get("speedup_vs_fp16_compile")
    return (f"{name} batch {batch}: images/s " + " ".join(parts)
            + f" | int8/fp16_eager={'-' if s1 is None else f'{s1:.2f}'}"
            + f" int8/fp16_compile={'-' if s2 is None else f'{s2:.2f}'}")


def default_out(quick: bool) -> Path:
    """Where the report goes without ``--out``: ``benchmarks/results/e2e.json`` for a GPU run, a
    temporary file for ``--quick`` (never over committed results)."""
    if quick:
        import tempfile

        return Path(tempfile.gettempdir()) / "dfq_gpu_bench" / "e2e_quick.json"
    return Path("benchmarks") / "results" / "e2e.json"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the report that was written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU, integer reference, tiny batches and resolution")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON report (default: benchmarks/results/e2e.json; --quick: a "
                             "temporary file)")
    parser.add_argument("--models", nargs="+", choices=MODELS + MORE_MODELS,
                        help=f"models to run (default: {' '.join(MODELS)})")
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default: 1 32 256; quick: 1 2)")
    parser.add_argument("--image-size", type=int, default=None, help="resolution (default 224; quick: 32)")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="skip what no longer fits in this many seconds (0: no limit)")
    parser.add_argument("--autotune-ms", type=float, default=10.0,
                        help="milliseconds Triton's autotuner benchmarks each config (0: Triton's default)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="torch.compile mode of fp16_compile (default: max-autotune on a GPU, default on a CPU)")
    parser.add_argument("--autotune", action="store_true",
                        help="autotune the int8 kernels (default: off; tiles from the tile table or the defaults)")
    parser.add_argument("--no-tile-table", action="store_true", help="do not use the tuned tile table")
    parser.add_argument("--tile-table", type=Path, default=None,
                        help="the tile table to use (default: kernels/tiles/<device>.json)")
    parser.add_argument("--compile", action="store_true", help="with --quick: also time torch.compile")
    parser.add_argument("--check-batch", type=int, default=2,
                        help="batch of the Triton-vs-reference check (a multiple of 16 shares the kernels' "
                             "compiled specializations with batch 32 and 256)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = default_out(args.quick)
    report = run(args)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
