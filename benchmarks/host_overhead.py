"""Host-side cost of one int8 network call: the Python work per step around the kernel launches.

One command::

    python benchmarks/host_overhead.py [--out PATH] [--models efficientnet_lite0 resnet50]

Without CUDA graphs, a GPU sits idle whenever the host takes longer to issue a step than the
GPU takes to run it (small batches, or any batch on a fast GPU), so this time bounds eager
throughput. It is measured on the CPU: the network runs on the Triton path (``TRITON_INTERPRET=1``
is set before ``kernels`` is imported, so CPU tensors are accepted) with every kernel launch
replaced by a stub that only counts, so what is timed is everything *but* the kernels and
Triton's own launcher: the steps' ``forward``, argument handling, output allocation and the
launch-plan lookups. Triton's launcher adds its own cost per launch on a GPU machine (not
measured here).

The report gives, per model, the median milliseconds per network call at batch 1, the number of
kernel launches, the number of steps and the microseconds per step. ``--label`` tags the run
(e.g. a commit), so that runs of two versions on one machine can be compared.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before kernels (and so Triton's @jit) is imported

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # benchmarks/kernels.py
sys.path.insert(0, str(ROOT))

SCHEMA = "dfq_int8-host-overhead/1"
MODELS = ("efficientnet_lite0", "resnet50")


class _Counter:
    def __init__(self) -> None:
        self.n = 0


def stub_launches(counter: _Counter) -> List[str]:
    """Replace every Triton kernel launch of the ``kernels`` package by a counting no-op;
    returns what was patched."""
    from kernels import conv, depthwise, dwproject, elementwise, gemm, lut, pool, stem

    def launch(*args: Any, **kwargs: Any) -> None:
        counter.n += 1

    class _Kernel:
        def __getitem__(self, grid: Any) -> Any:
            return launch

    patched = []
    for mod in (gemm, conv, depthwise, pool):
        mod.launch = launch  # type: ignore[attr-defined]
        patched.append(f"{mod.__name__}.launch")
    for mod in (elementwise, lut, pool, stem, dwproject):
        for name in dir(mod):
            if name.endswith("_kernel") and hasattr(getattr(mod, name), "__getitem__"):
                setattr(mod, name, _Kernel())
                patched.append(f"{mod.__name__}.{name}")
    # the NaN/Inf check of the input runs on CPU tensors only (a CUDA run skips it): not host work
    # a GPU run pays
    from dfq_gpu.int8 import layers

    layers.check_finite_input = lambda x: None  # type: ignore[assignment]
    patched.append("dfq_gpu.int8.layers.check_finite_input")
    return patched


def build(name: str, image_size: int) -> torch.nn.Module:
    import dfq_gpu
    from benchmarks_e2e import build_model  # type: ignore[import-not-found]

    model, _, input_range = build_model(name, image_size)
    x = torch.rand(1, 3, image_size, image_size) * (input_range[1] - input_range[0]) + input_range[0]
    sim = dfq_gpu.quantize(model, (x,), dfq_gpu.DFQConfig(input_range=input_range))
    return dfq_gpu.to_int8(sim, backend="triton"), x


def measure(net: torch.nn.Module, x: torch.Tensor, counter: _Counter, repeats: int) -> Dict[str, Any]:
    steps = sum(1 for n in net.graph.nodes if n.op == "call_module")
    times = []
    with torch.no_grad():
        net(x)  # builds the launch plans
        for _ in range(repeats):
            counter.n = 0
            t0 = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t0)
    ms = statistics.median(times) * 1e3
    return {"ms_per_call": ms, "launches": counter.n, "steps": steps, "us_per_step": ms * 1e3 / steps}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON report")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--label", default="", help="a tag for this run (e.g. the commit)")
    args = parser.parse_args(argv)

    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmarks_e2e", _HERE / "e2e.py")
    assert spec is not None and spec.loader is not None
    e2e = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks_e2e"] = e2e
    spec.loader.exec_module(e2e)

    counter = _Counter()
    patched = stub_launches(counter)
    torch.set_num_threads(1)
    report: Dict[str, Any] = {
        "schema": SCHEMA, "label": args.label, "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(), "torch": torch.__version__, "image_size": args.image_size,
        "batch": 1, "repeats": args.repeats, "stubbed": patched, "models": {},
    }  # fmt: skip
    for name in args.models:
        net, x = build(name, args.image_size)
        res = measure(net, x, counter, args.repeats)
        report["models"][name] = res
        print(f"{name}: {res['ms_per_call']:.2f} ms per call, {res['launches']} launches, {res['steps']} steps, "
              f"{res['us_per_step']:.1f} us per step (kernels and Triton's launcher excluded)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
