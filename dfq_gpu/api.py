"""The recipe: ``prepare`` (function-preserving FP32 steps) and ``quantize`` (the simulated
quantized network), each on a private copy of the user's model. The steps themselves are the
declared pass lists of :mod:`dfq_gpu.pipeline`."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from .config import DFQConfig
from .errors import DFQError
from .graph.trace import trace_model
from .passes.base import Workspace, layer_kind
from .pipeline import PREPARE, QUANTIZE, State, run_passes
from .report import LayerRecord, Report

__all__ = ["prepare", "prepared_workspace", "quantize", "DFQError"]

log = logging.getLogger(__name__)


def _check_inputs(model: Any, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    """``example_inputs`` as a tuple of finite floating-point tensors, and a model without NaN or
    Inf; raises :class:`DFQError` naming the first problem. (Inputs the model cannot run on are
    found when the traced graph is run: :func:`dfq_gpu.graph.trace.propagate_shapes`.)"""
    if not isinstance(model, nn.Module):
        raise DFQError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise DFQError("example_inputs must be a non-empty tuple of example tensors, e.g. (torch.randn(1, 3, 224, 224),)")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            raise DFQError(f"example_inputs[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise DFQError(f"example_inputs[{i}] must be a floating-point tensor (e.g. float32 images), got dtype "
                           f"{t.dtype}; convert it with .float() (and scale it as the model expects)")
        if not torch.isfinite(t).all():
            raise DFQError(f"example_inputs[{i}] contains NaN or Inf")
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise DFQError(f"parameter or buffer '{name}' of the model contains NaN or Inf")
    return tuple(example_inputs)


def _build_workspace(model: nn.Module, example_inputs: tuple[Any, ...], cfg: DFQConfig,
                     leaf_modules: Sequence[str], inplace: bool) -> Workspace:
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    gm = trace_model(work, example_inputs, leaf_modules=leaf_modules)
    report = Report(config=cfg.to_dict())
    from .zoo import random_weights_note  # a model loaded without pretrained weights says so in the report

    note = random_weights_note(model)
    if note is not None:
        report.step(f"WARNING: {note}")
    ws = Workspace(gm=gm, cfg=cfg, example_inputs=example_inputs, report=report)
    nodes = ws.layer_nodes()
    if not nodes:
        raise DFQError("the model has no quantizable layer (no nn.Conv2d or nn.Linear was found in its graph)")
    for n in nodes:
        m = ws.module(str(n.target))
        report.layers[str(n.target)] = LayerRecord(name=str(n.target), kind=layer_kind(m),
                                                   weight_shape=tuple(m.weight.shape))
    for leaf in leaf_modules:
        report.skip(leaf, "marked as a leaf module: treated as an opaque op and left in float")
    return ws


def _prepare(model: nn.Module, example_inputs: Any, cfg: DFQConfig, leaf_modules: Sequence[str],
             inplace: bool = False, data: Iterable[Any] | None = None) -> tuple[State, set[str]]:
    """Trace a private copy (or ``model`` itself) and run :data:`~dfq_gpu.pipeline.PREPARE`."""
    t0 = time.perf_counter()
    example_inputs = _check_inputs(model, example_inputs)
    ws = _build_workspace(model, example_inputs, cfg, leaf_modules, inplace)
    ws.report.timings["trace"] = time.perf_counter() - t0
    state = State(ws, data=data, data_threads=_data_threads)
    have = run_passes(PREPARE, state, {"data"} if data is not None else set())
    ws.gm.recompile()
    ws.report.timings["equalize"] = sum(p.get("seconds", 0.0) for p in ws.report.passes if p["name"] == "equalize")
    ws.report.timings["prepare"] = time.perf_counter() - t0
    return state, have


def _attach(gm: fx.GraphModule, ws: Workspace) -> fx.GraphModule:
    gm.report = ws.report  # type: ignore[attr-defined]
    gm.dfq_config = ws.cfg  # type: ignore[attr-defined]
    return gm


_USER_THREADS = [torch.get_num_threads()]


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _few_threads() -> Iterator[None]:
    """The passes run thousands of tiny tensor ops: one intra-op thread avoids the pool's
    synchronisation, which costs 10x or more when other processes share the cores. Passes
    that run the network on data use the caller's thread count again (``_data_threads``)."""
    _USER_THREADS[0] = torch.get_num_threads()
    with _threads(1):
        yield


def _data_threads() -> contextlib.AbstractContextManager[None]:
    return _threads(_USER_THREADS[0])


def prepare(model: nn.Module, example_inputs: Any, config: DFQConfig | None = None, *,
            leaf_modules: Sequence[str] = (), inplace: bool = False) -> fx.GraphModule:
    """The FP32 network after BN folding, ReLU6 handling, cross-layer equalization and bias absorption.

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace (see ``leaf_modules``).
        example_inputs: a tuple of floating-point example input tensors (as for ``torch.export``).
        config: a :class:`DFQConfig` (defaults to ``DFQConfig()``).
        leaf_modules: qualified names of submodules to treat as opaque (left in float), for
            modules ``torch.fx`` cannot trace.
        inplace: transform ``model`` itself instead of a copy (saves memory).

    Returns:
        A ``torch.fx.GraphModule`` with a ``report`` attribute (:class:`~dfq_gpu.report.Report`).
        With ``relu6`` "clip" or "keep" and ``absorb_bias=False`` it computes the same
        function as ``model`` up to float rounding; bias absorption changes it only where a
        pre-activation falls below ``beta - 3 gamma``.

    Raises:
        DFQError: bad arguments, e.g. example inputs that are not floating-point tensors or that
            the model cannot run on (the message names the failing layer and, where the first
            layer's input size does not match, the channels it expects).
        TraceFailure: ``torch.fx`` cannot trace the model (the message names the module to pass
            in ``leaf_modules``).
    """
    cfg = config or DFQConfig()
    with _few_threads():
        state, _ = _prepare(model, example_inputs, cfg, leaf_modules, inplace)
    return _attach(state.ws.gm, state.ws)


def prepared_workspace(model: nn.Module, example_inputs: Any, config: DFQConfig | None = None, *,
                       leaf_modules: Sequence[str] = ()) -> Workspace:
    """What :func:`prepare` works on, for running passes by hand (the tutorial steps through
    :func:`dfq_gpu.passes.equalize.equalization_sweeps` on it): a traced private copy of ``model``
    after the passes of :data:`~dfq_gpu.pipeline.PREPARE` that ``config`` asks for, with the
    statistics they learned (batch-norm statistics, the example inputs' statistics). ``ws.gm``
    carries the report, as :func:`prepare`'s result does."""
    cfg = config or DFQConfig()
    with _few_threads():
        state, _ = _prepare(model, example_inputs, cfg, leaf_modules)
    _attach(state.ws.gm, state.ws)
    return state.ws


def quantize(model: nn.Module, example_inputs: Any, config: DFQConfig | None = None,
             data: Iterable[Any] | None = None, *, leaf_modules: Sequence[str] = (),
             inplace: bool = False) -> fx.GraphModule:
    """A module that simulates the quantized network: :func:`prepare`, then quantization of
    weights and activations and bias correction.

    Args:
        model, example_inputs, config, leaf_modules, inplace: as for :func:`prepare`.
        data: an iterable of input batches (tensors, tuples of tensors, or ``(inputs, labels)``
            pairs); needed only for ``act_ranges="calibrate"`` or ``bias_correction="empirical"``
            (at most ``config.calibration_batches`` batches are used).

    Returns:
        A ``torch.fx.GraphModule`` with ``report`` and ``dfq_config`` attributes; its layers are
        :class:`~dfq_gpu.modules.QConv2d` / :class:`~dfq_gpu.modules.QLinear` and its
        activation quantizers :class:`~dfq_gpu.nn.FakeQuant`. ``dfq_gpu.to_int8`` turns it
        into an integer network.

        It computes in float32 whatever floating dtype its inputs have: the quantizer on each
        input converts float16, bfloat16 or float64 values to float32 (exactly, for the half
        types), as the integer network's input step does, so the output is float32 and, for a
        half-precision ``x``, bit-identical to the output for ``x.float()`` and to the integer
        network's. (With ``act_bits=None`` there are no quantizers: inputs must then have the
        weights' dtype, as for the float model.)

    Raises:
        DFQError, TraceFailure: as for :func:`prepare`; ``DFQError`` also when ``data`` is needed
            but missing, or is not an iterable.
    """
    cfg = config or DFQConfig()
    if data is None and cfg.act_ranges == "calibrate" and cfg.act_bits is not None:
        raise DFQError("act_ranges='calibrate' needs data; pass data=... or use act_ranges='bn' (data-free)")
    if data is None and cfg.bias_correction == "empirical":
        raise DFQError("bias_correction='empirical' needs data; pass data=... or use 'analytic' (data-free)")
    if data is not None and not hasattr(data, "__iter__"):
        raise DFQError(f"data must be an iterable of input batches, got {type(data).__name__}")
    with _few_threads():
        return _quantize(model, example_inputs, cfg, data, leaf_modules, inplace)


def _quantize(model: nn.Module, example_inputs: Any, cfg: DFQConfig, data: Iterable[Any] | None,
              leaf_modules: Sequence[str], inplace: bool) -> fx.GraphModule:
    t0 = time.perf_counter()
    state, have = _prepare(model, example_inputs, cfg, leaf_modules, inplace, data)
    run_passes(QUANTIZE, state, have)
    state.ws.report.timings["quantize"] = time.perf_counter() - t0
    return _attach(state.ws.gm, state.ws)
