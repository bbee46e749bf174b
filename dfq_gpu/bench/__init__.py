"""The benchmarks, importable from the installed package and runnable as modules:

- ``python -m dfq_gpu.bench.kernels``: bit-exactness and speed of the int8 kernels;
- ``python -m dfq_gpu.bench.e2e``: end-to-end throughput of the int8 network against fp16 / fp32;
- ``python -m dfq_gpu.bench.quantize_speed``: how long ``prepare`` and ``quantize`` take;
- ``python -m dfq_gpu.bench.ablation``: the paper-style ablation table;
- ``python -m dfq_gpu.bench.tiles``: the tile sweep that writes a tuned tile table (``kernels/tiles/``);
- ``python -m dfq_gpu.bench.review``: what a GPU run's reports show (goals, defaults, README tables).

Each module has a ``main(argv)``. The scripts ``benchmarks/<name>.py`` of a checkout run the
same code with the same command lines (:func:`run_as_script`).
"""

from __future__ import annotations

import importlib.util
from typing import Any, MutableMapping

__all__ = ["BENCHMARKS", "run_as_script"]

#: The benchmark modules of this package.
BENCHMARKS = ("kernels", "e2e", "quantize_speed", "ablation", "tiles", "review")


def run_as_script(name: str, namespace: MutableMapping[str, Any]) -> None:
    """Execute the code of ``dfq_gpu.bench.<name>`` in ``namespace``, a script's globals.

    The script then holds the benchmark's functions and constants itself (replacing one of them
    on the script's module changes what its ``main`` calls), and runs ``main()`` when its
    ``__name__`` is ``"__main__"``.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"no benchmark named {name!r}; benchmarks are: {', '.join(BENCHMARKS)}")
    spec = importlib.util.find_spec(f"{__name__}.{name}")
    if spec is None or spec.loader is None or not hasattr(spec.loader, "get_code"):
        raise ImportError(f"cannot find the code of {__name__}.{name}")
    code = spec.loader.get_code(spec.name)
    namespace.setdefault("__file__", spec.origin)
    exec(code, namespace)  # noqa: S102 - the benchmark's own module code, in the script's namespace
