"""Replaying an int8 network from CUDA graphs: :class:`GraphedNetwork`.

An int8 network makes one Python call and one kernel launch per layer. On a GPU that host work,
not the kernels, sets the pace at small batches (and, without a graph, at any batch on a fast
card). A CUDA graph records the launches of one call once and replays them with a single
launch. :class:`GraphedNetwork` does this per input shape: the first call with a new shape runs
the network a few times on a side stream (so every kernel is compiled, autotuned and every
launch plan built), captures one call into a graph with static input and output buffers, and
every later call with that shape copies its input in, replays and returns a copy of the output.

Graphs hold the addresses of the network's buffers, so a graph is captured again when a buffer
is replaced (``.to()``) or changed in place (its version counter moves). A graph also holds the
kernels it launched, so it is captured again when the network's backend or any kernel setting
changes (:func:`kernels.current_settings`: default backend, autotuning, a forced tile, the
depthwise variant). Inputs that are not CUDA tensors, and ``torch.compile`` tracing, run the
network as it is.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn

import kernels

__all__ = ["GraphedNetwork", "cuda_capture"]

log = logging.getLogger(__name__)

Tensor = torch.Tensor
#: ``capture(fn, warmup) -> (replay, output)``: run ``fn`` ``warmup`` times, record one more call
#: and return a function that replays it and that call's (static) output.
Capture = Callable[[Callable[[], Any], int], Tuple[Callable[[], None], Any]]


def cuda_capture(fn: Callable[[], Any], warmup: int) -> Tuple[Callable[[], None], Any]:
    """Warm ``fn`` up on a side stream, then capture one call into a ``torch.cuda.CUDAGraph``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


@dataclass
class _Entry:
    static_in: Tensor
    static_out: Any
    replay: Callable[[], None]
    state: Tuple[Any, ...]


def _version(t: Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter
        return -1


def _clone(out: Any) -> Any:
    if isinstance(out, Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    if isinstance(out, dict):
        return {k: _clone(v) for k, v in out.items()}
    return out


class GraphedNetwork(nn.Module):
    """An int8 network (or any module with one tensor input) replayed from CUDA graphs, one per
    input shape, dtype and layout.

    Args:
        net: the network, e.g. ``dfq_gpu.to_int8(q).to("cuda")``. It is wrapped, not copied.
        max_graphs: how many input shapes keep a graph; the least recently used is dropped
            beyond that (each graph keeps its input, output and intermediate buffers alive).
        warmup: calls before each capture (compiles, autotunes and builds the launch plans
            outside the graph).
        clone_output: return a copy of the static output buffer (default). With ``False`` the
            returned tensor is overwritten by the next call of the same shape.
        capture: how a call is recorded; :func:`cuda_capture` by default (a
            ``(fn, warmup) -> (replay, output)`` function; the tests pass a CPU stand-in).

    Example::

        net = dfq_gpu.to_int8(q).cuda()
        fast = GraphedNetwork(net)
        logits = fast(images.cuda())  # first call of this shape: warm-up and capture
        logits = fast(images.cuda())  # replay
    """

    def __init__(
        self,
        net: nn.Module,
        max_graphs: int = 8,
        warmup: int = 2,
        clone_output: bool = True,
        capture: Optional[Capture] = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ValueError(f"net must be an nn.Module, got {type(net).__name__}")
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive int, got {max_graphs!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be a positive int (the first calls compile and autotune kernels, "
                             f"which cannot happen during a capture), got {warmup!r}")
        self.net = net
        self.max_graphs = max_graphs
        self.warmup = warmup
        self.clone_output = bool(clone_output)
        self._capture: Optional[Capture] = capture
        self._graphs: "OrderedDict[Tuple[Any, ...], _Entry]" = OrderedDict()
        self.captures = 0  # how many graphs were recorded (a new shape, or a buffer change)

    def _uses_graphs(self, x: Tensor) -> bool:
        if torch.compiler.is_compiling() or type(x) is not Tensor:
            return False
        return self._capture is not None or x.is_cuda

    def _watch(self) -> Tuple[Tuple[Any, ...], Any]:
        """What a graph depends on besides the input: every buffer and parameter slot of the
        network (its dict, name, tensor and version counter), the network's backend and the kernel
        settings."""
        slots = []
        for m in self.net.modules():
            for d in (m._buffers, m._parameters):
                for name, t in d.items():
                    if t is not None:
                        slots.append((d, name, t, _version(t)))
        return tuple(slots), self._kernel_state()

    def _kernel_state(self) -> Tuple[Optional[str], "kernels.KernelSettings"]:
        """Which kernels a call launches: the network's backend and the kernel settings (the
        whole object, so any change of backend, autotuning, forced tile or depthwise variant)."""
        return getattr(self.net, "backend", None), kernels.current_settings()

    def _unchanged(self, entry: "_Entry") -> bool:
        slots, kernel_state = entry.state
        if kernel_state != self._kernel_state():
            return False
        try:
            return all(d.get(name) is t and t._version == v for d, name, t, v in slots)
        except RuntimeError:  # an inference tensor (no version counter)
            return all(d.get(name) is t and _version(t) == v for d, name, t, v in slots)

    def forward(self, x: Tensor) -> Any:
        if not isinstance(x, Tensor):
            raise ValueError(f"GraphedNetwork takes one tensor input, got {type(x).__name__}")
        if not self._uses_graphs(x):
            return self.net(x)
        key = (tuple(x.shape), x.dtype, x.device, x.stride())
        entry = self._graphs.get(key)
        if entry is None or not self._unchanged(entry):
            entry = self._record(x, key)
        else:
            self._graphs.move_to_end(key)
        entry.static_in.copy_(x)
        entry.replay()
        return _clone(entry.static_out) if self.clone_output else entry.static_out

    def _record(self, x: Tensor, key: Tuple[Any, ...]) -> _Entry:
        self._graphs.pop(key, None)
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        static_in = x.detach().clone()
        net = self.net

        def call() -> Any:
            with torch.no_grad():
                return net(static_in)

        capture = self._capture or cuda_capture
        replay, static_out = capture(call, self.warmup)
        entry = _Entry(static_in, static_out, replay, self._watch())
        self._graphs[key] = entry
        self.captures += 1
        log.info("captured a graph for input %s (%d kept)", tuple(x.shape), len(self._graphs))
        return entry

    def reset(self) -> None:
        """Drop every captured graph (and the memory it holds)."""
        self._graphs.clear()

    def extra_repr(self) -> str:
        return f"graphs={len(self._graphs)}, max_graphs={self.max_graphs}, clone_output={self.clone_output}"
