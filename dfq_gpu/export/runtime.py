"""Running an exported graph in ONNX Runtime (CPU), with its quantized tensors as extra outputs.

On x86 CPUs without VNNI, ONNX Runtime's fused ``uint8`` x ``int8`` kernels saturate at 16 bits
(:func:`~dfq_gpu.export.onnx_qdq.uint8_weights`); there a session runs the model with its ``int8``
weights stored as ``uint8`` (the same values) unless told otherwise (``uint8_weights``), so
what it returns is the exported graph's arithmetic, not that limitation's.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from typing import Any, Mapping, Optional

import numpy as np
import torch

from .onnx_qdq import ExportError, _require_onnx, quantized_tensor_names
from .onnx_qdq import uint8_weights as _to_uint8

__all__ = ["ort_session", "run_onnx", "optimized_op_counts", "ort_u8s8_saturates"]

log = logging.getLogger(__name__)

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
#: CPU flags (``/proc/cpuinfo``) of the instructions ONNX Runtime's U8S8 kernels use instead of
#: the saturating ``VPMADDUBSW``.
_VNNI = frozenset({"avx512_vnni", "avx_vnni"})


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> Optional[frozenset[str]]:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def ort_u8s8_saturates(machine: Optional[str] = None, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether ONNX Runtime's fused U8S8 kernels can saturate here: an x86 CPU without VNNI
    (``avx512_vnni`` / ``avx_vnni`` not among its flags, or flags unknown). ``machine``:
    ``platform.machine()`` by default."""
    if (machine or platform.machine()).lower() not in _X86:
        return False
    flags = _cpu_flags(cpuinfo)
    return flags is None or not (flags & _VNNI)


_host_saturates = functools.lru_cache(maxsize=1)(lambda: ort_u8s8_saturates())


def _load(model: Any) -> Any:
    onnx = _require_onnx()
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(str(model))
    return model


_RUNTIME_SUFFIX = "__runtime"


def _with_quantized_outputs(model: Any, forced: Any = ()) -> tuple[Any, list[str]]:
    """A copy of ``model`` whose integer-code tensors are graph outputs too. The tensors named in
    ``forced`` become graph inputs as well: their ``QuantizeLinear`` writes ``NAME__runtime``
    (still an output) and every consumer reads the input ``NAME`` instead (teacher forcing)."""
    onnx = _require_onnx()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = quantized_tensor_names(m)
    inits = {i.name: i for i in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    existing = {o.name for o in m.graph.output}
    added: list[str] = []
    for name in names:
        node = producers.get(name)
        if node is None or node.op_type not in ("QuantizeLinear", "Identity") or name in existing:
            continue
        if node.op_type == "Identity":  # the codes of a constant (an initializer)
            src = inits.get(node.input[0])
            elem = src.data_type if src is not None else onnx.TensorProto.UINT8
        else:
            zp = inits.get(node.input[2]) if len(node.input) > 2 else None
            elem = zp.data_type if zp is not None else onnx.TensorProto.UINT8
        if name in forced:
            node.output[0] = name + _RUNTIME_SUFFIX
            m.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, None))
            m.graph.output.append(onnx.helper.make_tensor_value_info(name + _RUNTIME_SUFFIX, elem, None))
        else:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        added.append(name)
    return m, added


def ort_session(model: Any, *, optimize: bool = True, threads: int = 0, optimized_path: str | None = None,
                uint8_weights: Optional[bool] = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for an exported model (path or
    ``ModelProto``). ``optimize=False`` disables ONNX Runtime's graph optimizations (no QDQ
    fusion: every op between ``DequantizeLinear`` and ``QuantizeLinear`` runs in float).
    ``uint8_weights``: run ``int8`` weights as ``uint8`` (the same values; see the module
    docstring); ``None`` (default): where the fused kernels would saturate (``optimize`` on and
    :func:`ort_u8s8_saturates`)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportError("running ONNX models needs 'onnxruntime': pip install 'dfq-gpu[export]'") from exc
    so = ort.SessionOptions()
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
    if optimized_path:
        so.optimized_model_filepath = optimized_path
        so.log_severity_level = 3  # not the warning that the optimized graph is specific to this machine
    m = _load(model)
    if uint8_weights is None:
        uint8_weights = optimize and _host_saturates()
        if uint8_weights:
            log.info("ONNX Runtime session: int8 weights run as uint8 (an x86 CPU without VNNI, where its "
                     "uint8 x int8 kernels saturate)")
    if uint8_weights:
        m = _to_uint8(m)
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_onnx(model: Any, *inputs: Any, intermediate: bool = True, optimize: bool = True, batch_size: int = 0,
             threads: int = 0, teacher_forcing: Optional[Mapping[str, Any]] = None,
             uint8_weights: Optional[bool] = None) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Run an exported model in ONNX Runtime on the CPU.

    Args:
        model: an exported model (path or ``ModelProto``).
        inputs: the network inputs (float NCHW).
        intermediate: also return the integer codes of every quantized tensor.
        optimize: ONNX Runtime's graph optimizations (QDQ fusion) on (default) or off.
        batch_size: > 0 runs the inputs in chunks of this size.
        threads: intra-op threads (0: ONNX Runtime's default).
        teacher_forcing: ``{tensor name: reference codes}`` (:func:`dfq_gpu.golden_activations`):
            every op reads these codes instead of the codes computed by the op before it, so the
            codes returned for a tensor show that step's own difference (no propagation).
        uint8_weights: as :func:`ort_session` (default: where ONNX Runtime's kernels would
            saturate otherwise).

    Returns ``(outputs, codes)``: the graph outputs, and (with ``intermediate``) the integer codes
    of every quantized tensor by the simulation's ``FakeQuant`` node name (what
    :func:`dfq_gpu.compare_layers` takes).
    """
    m = _load(model)
    added: list[str] = []
    forced = dict(teacher_forcing or {})
    if intermediate or forced:
        m, added = _with_quantized_outputs(m, forced)
    sess = ort_session(m, optimize=optimize, threads=threads, uint8_weights=uint8_weights)
    in_names = [i.name for i in sess.get_inputs() if i.name not in forced]
    elem = {i.name: i.type for i in sess.get_inputs()}
    arrays = [x.detach().cpu().to(torch.float32).numpy() if isinstance(x, torch.Tensor) else
              np.asarray(x, dtype=np.float32) for x in inputs]
    if len(arrays) != len(in_names):
        raise ExportError(f"the model takes {len(in_names)} inputs, got {len(arrays)}")
    feeds_forced = {}
    for k, v in forced.items():
        if k not in elem:
            raise ExportError(f"teacher_forcing names '{k}', which is not a quantized tensor of the model")
        dt = np.int8 if "int8" in elem[k] and "uint8" not in elem[k] else np.uint8
        a = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v)
        feeds_forced[k] = a.astype(dt)
    n = arrays[0].shape[0]
    step = batch_size if batch_size > 0 else n
    chunks: list[list[np.ndarray]] = []
    for i in range(0, n, step):
        feeds = {k: a[i:i + step] for k, a in zip(in_names, arrays)}
        feeds.update({k: a[i:i + step] for k, a in feeds_forced.items()})
        chunks.append(sess.run(None, feeds))
    res = [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]
    n_out = len(res) - len(added)
    return res[:n_out], dict(zip(added, res[n_out:]))


def optimized_op_counts(model: Any, path: str) -> dict[str, int]:
    """The op types of the graph ONNX Runtime runs after its optimizations (written to ``path``)."""
    onnx = _require_onnx()
    ort_session(model, optimize=True, optimized_path=path)
    counts: dict[str, int] = {}
    for n in onnx.load(path).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts

