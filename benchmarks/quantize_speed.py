"""How long the data-free pipeline takes: ``prepare`` and ``quantize`` on a model (CPU).

    python benchmarks/quantize_speed.py --model efficientnet_lite0 --repeat 5 --out speed.json

The code is :mod:`dfq_gpu.bench.quantize_speed` (``python -m dfq_gpu.bench.quantize_speed`` is the same command);
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

run_as_script("quantize_speed", globals())
