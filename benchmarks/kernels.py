"""Bit-exactness check and benchmark of the int8 kernels against PyTorch baselines.

    python benchmarks/kernels.py [--out PATH]          # CUDA GPU: CNN-sized shapes
    python benchmarks/kernels.py --quick [--out PATH]  # tiny shapes; on a CPU through Triton's interpreter
    python benchmarks/kernels.py --compile-only        # no GPU: compile everything for cuda:90

The code is :mod:`dfq_gpu.bench.kernels` (``python -m dfq_gpu.bench.kernels`` is the same command);
this script runs it with this checkout first on ``sys.path``. Its options and output are
documented there.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# this checkout first, and not this folder (its kernels.py would shadow the kernels package)
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, HERE)]

from dfq_gpu.bench import run_as_script  # noqa: E402

run_as_script("kernels", globals())
