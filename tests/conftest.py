"""Test configuration shared by every test module.

Triton kernels run through Triton's interpreter when no CUDA device is present.
``TRITON_INTERPRET`` has to be in the environment before any ``@triton.jit``
function is defined, so it is set here, before the test modules import ``kernels``.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, os.cpu_count() or 1))
