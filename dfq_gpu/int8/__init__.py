"""Integer execution of a quantized network: :func:`to_int8` turns the simulation returned by
:func:`dfq_gpu.quantize` into a network whose activations stay int8 between layers and that runs
on the ``dfq_int8`` kernels (Triton on CUDA, the integer reference on the CPU)."""

from __future__ import annotations

from .compare import StepAgreement, compare_with_simulation
from .convert import Coverage, Int8ConversionError, Int8Network, to_int8
from .graphs import GraphedNetwork

__all__ = ["to_int8", "Int8ConversionError", "Int8Network", "Coverage", "GraphedNetwork", "compare_with_simulation",
           "StepAgreement"]
