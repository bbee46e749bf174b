"""dfq_gpu: data-free 8-bit quantization of PyTorch CNNs (Nagel et al., ICCV 2019) with Triton int8 kernels."""

from __future__ import annotations

import logging

from .api import DFQError, prepare, quantize
from .config import DFQConfig
from .graph.trace import TraceFailure
from .int8 import to_int8
from .io import load, save
from .report import Report
from .evaluate import Metrics, evaluate
from .zoo import load_model
from ._version import __version__

__all__ = ["DFQConfig", "DFQError", "Metrics", "Report", "TraceFailure", "evaluate", "load", "load_model", "prepare",
           "quantize", "save", "to_int8", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
