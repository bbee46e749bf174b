"""Deployment and diagnosis: ONNX export of the simulated network as a QDQ graph
(:func:`export_onnx`), running it in ONNX Runtime (:func:`run_onnx`), and the integer network as
a golden model for other runtimes' per-layer outputs (:func:`golden_activations`,
:func:`compare_layers`).

``onnx`` / ``onnxruntime`` are optional (``pip install 'dfq-gpu[export]'``): they are imported
when a function needs them.
"""

from __future__ import annotations

from .golden import LayerDiff, LayerReport, compare_layers, golden_activations, quantizer_layers
from .onnx_qdq import OPSET, ExportError, export_onnx, quantized_tensor_names, uint8_weights
from .runtime import optimized_op_counts, ort_session, ort_u8s8_saturates, run_onnx

__all__ = ["OPSET", "ExportError", "LayerDiff", "LayerReport", "compare_layers", "export_onnx",
           "golden_activations", "optimized_op_counts", "ort_session", "ort_u8s8_saturates", "quantized_tensor_names",
           "quantizer_layers", "run_onnx", "uint8_weights"]
