"""The computations and widgets of the tutorial notebooks (``notebooks/``), one module per chapter,
so that the notebooks stay short and everything they show is importable and testable.

- :mod:`~dfq_gpu.tutorial.common`: set-up, a timer, the chapters' models and data, the results
  folder, the rows of the README's results table;
- :mod:`~dfq_gpu.tutorial.ch01_basics`: quantizing one tensor (:class:`QuantizationExplorer`);
- :mod:`~dfq_gpu.tutorial.ch02_per_tensor`: per-channel ranges after BN folding
  (:class:`ChannelRangeExplorer`);
- :mod:`~dfq_gpu.tutorial.ch03_equalization`: cross-layer equalization sweep by sweep
  (:class:`CLEStepper`, :class:`CLEExplorer`, :class:`EqualizationExplorer`, which reruns it);
- :mod:`~dfq_gpu.tutorial.ch04_absorption`: bias absorption (:class:`AbsorptionExplorer`);
- :mod:`~dfq_gpu.tutorial.ch05_bias_correction`: bias correction (:class:`BiasCorrectionExplorer`);
- :mod:`~dfq_gpu.tutorial.ch06_int8_kernels`: the int8 GEMM tile by tile, bit-exact checks, the
  benchmark results (:class:`GemmTileExplorer`, :func:`show_benchmark_results`);
- :mod:`~dfq_gpu.tutorial.ch07_your_own_model`: the DFQ dashboard for any model and data.

A notebook imports its chapter, e.g. ``from dfq_gpu.tutorial import common, ch03_equalization as ch``.
The subpackage needs the ``notebooks`` extra (``ipywidgets``, ``matplotlib``); the rest of
``dfq_gpu`` never imports it.
"""

from __future__ import annotations

import importlib

__all__ = ["common", "ch01_basics", "ch02_per_tensor", "ch03_equalization", "ch04_absorption",
           "ch05_bias_correction", "ch06_int8_kernels", "ch07_your_own_model"]

#: What the tutorial needs beyond the core package: the distributions of the ``notebooks`` extra.
REQUIRED = ("ipywidgets", "matplotlib")


def _check_requirements() -> None:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"dfq_gpu.tutorial needs {' and '.join(missing)}, which are not installed: "
                          "pip install 'dfq_gpu[notebooks]'")


_check_requirements()
