"""Data-free per-channel statistics of every tensor in the network.

After batch-norm folding, the pre-activation output of a layer is modelled per channel as
``N(beta, gamma^2)`` (the BN shift and scale). From there, each node's output gets a
per-channel mean, standard deviation and interval ``[lo, hi]`` by propagation:

- activations with a closed form (ReLU, ReLU6, per-channel clamps): clipped-normal moments;
- other elementwise activations (hardswish, SiLU, sigmoid, ...): Gauss-Hermite moments and
  the function's extremes over the input interval;
- adds: means and variances add (independence), intervals add;
- gates ``x * g``: products; pooling, zero padding and reshapes: per-channel passthrough
  (padding widens the interval to include 0); flatten: each channel repeated;
- a layer without a BN after it: ``mean = W E[x] + b``, ``var = W^2 Var[x]`` (taps independent),
  interval ``mean +- n std``;
- anything else: what the example inputs produce there (marked ``"observed"``), so a
  network with unknown ops still gets ranges, and the report says where they came from.

The interval of a node is ``mean +- n sigma`` through the activation, ``n`` being
``DFQConfig.act_range_sigmas``; per-tensor activation ranges are the min/max over channels.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .. import formulas as fm
from ..nn import ChannelClamp
from . import ops
from ..layers import is_layer_module, layer_type
from .trace import node_module

__all__ = ["ChannelStats", "NodeStats", "observe", "propagate", "node_stats", "layer_input_node"]

log = logging.getLogger(__name__)


@dataclass
class ChannelStats:
    """Per-channel Gaussian model ``N(mean, std^2)`` of a layer's pre-activation output (from its BN)."""

    mean: np.ndarray
    std: np.ndarray

    def scaled(self, inv_s: np.ndarray) -> "ChannelStats":
        return ChannelStats(self.mean * inv_s, self.std * np.abs(inv_s))


@dataclass
class NodeStats:
    """Per-channel statistics of a node's output: mean, std and a value interval."""

    mean: np.ndarray
    std: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    source: str  # "bn", "propagated", "observed", "input"
    # the value model: clip(N(pre_mean, pre_std^2), clamp_lo, clamp_hi) per channel, where known
    pre_mean: np.ndarray | None = None
    pre_std: np.ndarray | None = None
    clamp_lo: np.ndarray | None = None
    clamp_hi: np.ndarray | None = None

    def value_model(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(mu, sigma, clamp_lo, clamp_hi)``: the values are ``clip(N(mu, sigma^2), clamp_lo, clamp_hi)``.

        After a clamp this is exact under the Gaussian model of the clamp's input; elsewhere the
        Gaussian with the node's mean and std, clipped to its interval.
        """
        if self.pre_mean is not None:
            return self.pre_mean, self.pre_std, self.clamp_lo, self.clamp_hi  # type: ignore[return-value]
        return self.mean, self.std, self.lo, self.hi

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def observe(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> dict[str, NodeStats]:
    """Per-channel mean/std/min/max of every tensor node on the example inputs."""
    out: dict[str, NodeStats] = {}

    class _Rec(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            res = super().run_node(n)
            if isinstance(res, torch.Tensor) and res.is_floating_point() and res.dim() >= 2 and res.numel() > 0:
                x = res.detach().to(torch.float64).transpose(0, 1).reshape(res.shape[1], -1)
                out[n.name] = NodeStats(_np(x.mean(1)), _np(x.std(1, unbiased=False)), _np(x.min(1).values),
                                        _np(x.max(1).values), "observed")
            return res

    with torch.no_grad():
        _Rec(gm).run(*example_inputs)
    return out


# ----------------------------------------------------------------------------- activations
def _np_act(m: nn.Module) -> Callable[[np.ndarray], np.ndarray] | None:
    from scipy.special import erf, expit

    if isinstance(m, nn.Hardswish):
        return lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0
    if isinstance(m, nn.Hardsigmoid):
        return lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0)
    if isinstance(m, nn.SiLU):
        return lambda x: x * expit(x)
    if isinstance(m, nn.Sigmoid):
        return expit
    if isinstance(m, nn.Tanh):
        return np.tanh
    if isinstance(m, nn.GELU):
        return lambda x: 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if isinstance(m, nn.ELU):
        a = float(m.alpha)
        return lambda x: np.where(x > 0, x, a * np.expm1(np.minimum(x, 0.0)))
    if isinstance(m, nn.LeakyReLU):
        s = float(m.negative_slope)
        return lambda x: np.where(x > 0, x, s * x)
    return None


def _clamp_bounds(m: nn.Module, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    if isinstance(m, ChannelClamp):
        return _np(m.lo), _np(m.hi)
    b = ops.is_clamp_act(m)
    if b is None:
        return None
    return np.full(channels, b[0]), np.full(channels, b[1])


def _apply_clamp(s: NodeStats, lo: np.ndarray, hi: np.ndarray) -> NodeStats:
    mean = fm.clipped_normal_mean(s.mean, s.std, lo, hi)
    std = fm.clipped_normal_std(s.mean, s.std, lo, hi)
    if s.pre_mean is None:
        model = dict(pre_mean=s.mean, pre_std=s.std, clamp_lo=np.maximum(lo, s.lo), clamp_hi=np.minimum(hi, s.hi))
    else:  # a clamp of a clamp: intersect the bounds
        model = dict(pre_mean=s.pre_mean, pre_std=s.pre_std, clamp_lo=np.clip(s.clamp_lo, lo, hi),
                     clamp_hi=np.clip(s.clamp_hi, lo, hi))
    return NodeStats(mean, std, np.clip(s.lo, lo, hi), np.clip(s.hi, lo, hi), s.source, **model)


def _apply_fn(s: NodeStats, f: Callable[[np.ndarray], np.ndarray]) -> NodeStats:
    mean, std = fm.normal_function_moments(f, s.mean, s.std)
    grid = s.lo[:, None] + (s.hi - s.lo)[:, None] * np.linspace(0.0, 1.0, 129)[None, :]
    vals = f(grid)
    return NodeStats(mean, std, vals.min(1), vals.max(1), s.source)


def _prelu(s: NodeStats, m: nn.PReLU) -> NodeStats:
    w = _np(m.weight)
    w = np.broadcast_to(w, s.mean.shape) if w.size > 1 else np.full_like(s.mean, float(w.reshape(-1)[0]))
    out_mean = np.empty_like(s.mean)
    out_std = np.empty_like(s.mean)
    for i in range(s.mean.shape[0]):
        f = (lambda a: (lambda x: np.where(x > 0, x, a * x)))(w[i])
        mu, sd = fm.normal_function_moments(f, s.mean[i:i + 1], s.std[i:i + 1])
        out_mean[i], out_std[i] = mu[0], sd[0]
    lo = np.where(s.lo > 0, s.lo, w * s.lo)
    hi = np.where(s.hi > 0, s.hi, w * s.hi)
    return NodeStats(out_mean, out_std, np.minimum(lo, hi), np.maximum(lo, hi), s.source)


# ----------------------------------------------------------------------------- layers
def _layer_moments(m: nn.Module, s: NodeStats) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of a layer's output given independent inputs with per-channel stats
    (the per-type part: :attr:`dfq_gpu.layers.LayerType.moments`)."""
    lt = layer_type(m)
    assert lt is not None, type(m).__name__
    w = m.weight.detach().to(torch.float64).cpu()
    b = m.bias.detach().to(torch.float64).cpu() if m.bias is not None else None
    mu, v = lt.moments(m, w, b, torch.from_numpy(s.mean), torch.from_numpy(s.std**2))
    return mu.numpy(), np.sqrt(np.maximum(v.numpy(), 0.0))


def layer_input_node(node: fx.Node) -> fx.Node:
    return node.args[0]  # canonical layers take their input first


def propagate(
    gm: fx.GraphModule,
    bn_stats: dict[str, ChannelStats],
    observed: dict[str, NodeStats],
    n_sigmas: float,
    input_range: tuple[float, float] | None = None,
) -> dict[str, NodeStats]:
    """Statistics of every tensor node (keyed by node name), data-free where possible."""
    stats: dict[str, NodeStats] = {}
    for node in gm.graph.nodes:
        if node.op == "output" or ops.tensor_shape(node) is None:
            continue
        s = node_stats(gm, node, stats, bn_stats, observed, n_sigmas, input_range)
        if s is None:  # not derivable data-free: fall back to what was observed
            s = observed.get(node.name)
        if s is not None:
            stats[node.name] = s
    return stats


def node_stats(
    gm: fx.GraphModule,
    node: fx.Node,
    stats: dict[str, NodeStats],
    bn_stats: dict[str, ChannelStats],
    observed: dict[str, NodeStats],
    n_sigmas: float,
    input_range: tuple[float, float] | None = None,
) -> NodeStats | None:
    """The statistics of ``node``'s output from those of its inputs (``stats``, keyed by node
    name), as :func:`propagate` derives them (without its fallback to the observed values);
    ``None`` where they cannot be derived: an input without statistics, an op without a rule,
    or an op whose arguments the rules do not understand (a call with an unusual signature;
    the rules read arbitrary user arguments, so any exception they raise means this, and is
    logged at debug level)."""
    try:
        return _node_stats(gm, node, stats, bn_stats, observed, n_sigmas, input_range)
    except Exception as exc:  # an op with an unusual signature
        log.debug("statistics of %s cannot be derived (%s)", node.name, exc)
        return None


def _node_stats(gm, node, stats, bn_stats, observed, n, input_range) -> NodeStats | None:
    m = node_module(gm, node)
    ins = [stats.get(i.name) for i in ops.tensor_inputs(node)]
    if node.op == "placeholder":
        obs = observed.get(node.name)
        if obs is None:
            return None
        if input_range is not None:
            return NodeStats(obs.mean, obs.std, np.full_like(obs.mean, input_range[0]),
                             np.full_like(obs.mean, input_range[1]), "input")
        return NodeStats(obs.mean, obs.std, obs.lo, obs.hi, "input")
    if is_layer_module(m):
        key = str(node.target)
        if key in bn_stats:
            bs = bn_stats[key]
            return NodeStats(bs.mean.copy(), np.abs(bs.std).copy(), bs.mean - n * np.abs(bs.std),
                             bs.mean + n * np.abs(bs.std), "bn")
        if not ins or ins[0] is None:
            return None
        mu, sd = _layer_moments(m, ins[0])
        return NodeStats(mu, sd, mu - n * sd, mu + n * sd, "propagated")
    if len(ins) == 0 or any(s is None for s in ins):
        return None
    s0 = ins[0]
    if m is not None:
        cb = _clamp_bounds(m, s0.channels)
        if cb is not None:
            return _apply_clamp(s0, *cb)
        if isinstance(m, nn.PReLU):
            return _prelu(s0, m)
        f = _np_act(m)
        if f is not None:
            return _apply_fn(s0, f)
    if ops.is_zero_pad(gm, node):
        return NodeStats(s0.mean, s0.std, np.minimum(s0.lo, 0.0), np.maximum(s0.hi, 0.0), s0.source)
    if ops.is_spatial_pool(gm, node) == "max" or ops.is_channel_preserving_reshape(gm, node):
        return dataclasses.replace(s0)
    if ops.is_spatial_pool(gm, node) == "avg" or ops.is_interpolate(gm, node):
        # a weighted average of the channel's values (bicubic can overshoot a little)
        return NodeStats(s0.mean, s0.std, s0.lo, s0.hi, s0.source)
    if ops.is_flatten_reshape(gm, node):
        shape = ops.tensor_shape(ops.tensor_inputs(node)[0])
        rep = int(np.prod(shape[2:]))
        return NodeStats(*(np.repeat(v, rep) for v in (s0.mean, s0.std, s0.lo, s0.hi)), s0.source)
    if ops.is_add(node) and len(ins) == 2 and ins[0].channels == ins[1].channels:
        a, b = ins
        return NodeStats(a.mean + b.mean, np.sqrt(a.std**2 + b.std**2), a.lo + b.lo, a.hi + b.hi, "propagated")
    if ops.is_mul(node) and len(ins) == 2 and ins[0].channels == ins[1].channels:
        a, b = ins
        mean = a.mean * b.mean
        var = (a.std**2 + a.mean**2) * (b.std**2 + b.mean**2) - mean**2
        corners = np.stack([a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi])
        return NodeStats(mean, np.sqrt(np.maximum(var, 0.0)), corners.min(0), corners.max(0), "propagated")
    if ops.is_cat(node):
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim in (1, -3) or (dim == -1 and len(ops.tensor_shape(node)) == 2):
            return NodeStats(*(np.concatenate([getattr(s, k) for s in ins]) for k in ("mean", "std", "lo", "hi")),
                             "propagated")
    return None
