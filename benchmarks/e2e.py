"""End-to-end throughput of the int8 network (``dfq_gpu.to_int8``) against PyTorch fp16 and fp32.

    python benchmarks/e2e.py [--out PATH]            # CUDA GPU: batch 1, 32, 256 at 224x224
    python benchmarks/e2e.py --quick [--out PATH]    # CPU: tiny batches and resolution, reference backend

The code is :mod:`dfq_gpu.bench.e2e` (``python -m dfq_gpu.bench.e2e`` is the same command);
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

run_as_script("e2e", globals())
