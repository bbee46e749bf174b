"""dfq_gpu: data-free 8-bit quantization of PyTorch CNNs (Nagel et al., ICCV 2019) with Triton int8 kernels."""

from __future__ import annotations

import logging

from .api import DFQError, prepare, quantize
from .config import DFQConfig
from .graph.trace import TraceFailure
from .int8 import to_int8
from .report import Report

__version__ = "0.1.0"

__all__ = ["DFQConfig", "DFQError", "Report", "TraceFailure", "prepare", "quantize", "to_int8", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
