"""The paper-style ablation table for one model on the ImageNet sample (or Fashion-MNIST).

    python benchmarks/ablation.py --model efficientnet_lite0 --out benchmarks/results/ablation_lite0_cpu.json
    python benchmarks/ablation.py --quick          # the main rows only

The code is :mod:`dfq_gpu.bench.ablation` (``python -m dfq_gpu.bench.ablation`` is the same command);
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

run_as_script("ablation", globals())
