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
from .sensitivity import Sensitivity, quantize_with_fallback, sensitivity
from .export import compare_layers, export_onnx, golden_activations
from .zoo import load_model
from ._version import __version__

__all__ = ["DFQConfig", "DFQError", "Metrics", "Report", "TraceFailure", "compare_layers", "evaluate", "export_onnx",
           "golden_activations", "load", "load_model", "prepare", "quantize", "quantize_with_fallback", "save",
           "Sensitivity", "sensitivity", "to_int8", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
