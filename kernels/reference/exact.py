"""The executor of the contract: exact integer reductions in floating point and the epilogue.

The simulation of dfq_gpu (``dfq_gpu.modules``) runs its integer layers through these functions
too, on the centered integers it recovers from its dequantized tensors, so the contract is
executed by this package and by the Triton kernels, nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

from .helpers import Tensor


#: float32 holds every integer of magnitude up to 2^24 exactly.
EXACT_FLOAT32 = 1 << 24
#: A reduction whose float32 form would need more chunks than this runs as one float64 reduction.
MAX_FLOAT32_CHUNKS = 8

#: ``reduce(x, w, bias)``: the float convolution / matrix product of a layer (``bias`` may be ``None``).
Reduce = Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]


@dataclass(frozen=True)
class ExactReduction:
    """How :func:`exact_accumulate` computes ``acc = sum_k xc_k wc_k + bias`` exactly.

    Every partial sum of the reduction is an integer of magnitude at most
    ``max|xc| * sum_k |wc_k|``, exact in float32 below 2^24 and in float64 below 2^53. ``kind``:

    * ``"f32"``: one float32 reduction with the bias (the result is exact);
    * ``"f32+b"``: one float32 reduction, then the float32 bias added (one rounding of the exact sum);
    * ``"chunks"``: the input channels split into ``chunks`` whose float32 reductions are exact,
      added in float64 with the bias, rounded once to float32;
    * ``"f64"``: one float64 reduction (devices other than the CPU, whose convolution algorithms
      need not be exact in float32, and reductions too large for a few float32 chunks).

    ``weight``: the centered integer weights in the dtype of the reduction, on its device;
    ``bias32`` / ``bias64``: the bias in float32 / float64 (``None`` without a bias).
    """

    weight: Tensor
    kind: str
    chunks: Optional[Tuple[Tuple[int, int], ...]]
    bias32: Optional[Tensor]
    bias64: Optional[Tensor]


def float32_chunks(bound: np.ndarray) -> Optional[list[Tuple[int, int]]]:
    """Split the reduction ``[0, C)`` into contiguous chunks whose worst-case partial sums
    (``bound[n, c]``: the bound contributed by input channel ``c`` to output ``n``) stay exact
    in float32; ``None`` if one channel alone exceeds 2^24.

    Greedy: each chunk is the longest run of channels from its start whose sums stay below 2^24
    for every output. The running sums are prefix sums (integers, exact in float64), and the
    largest partial sum over the outputs grows with the chunk's end, so each end is found by
    bisection."""
    n, c = bound.shape
    if c == 0:
        return [(0, 0)]
    if n == 0:
        return [(0, c)]
    if bound.max() >= EXACT_FLOAT32:
        return None
    prefix = np.zeros((n, c + 1))
    np.cumsum(bound, axis=1, out=prefix[:, 1:])
    chunks: list[Tuple[int, int]] = []
    start = 0
    while start < c:
        base = prefix[:, start]
        lo, hi = start + 1, c  # channels [start, lo) fit; find the largest end <= hi that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (prefix[:, mid] - base).max() < EXACT_FLOAT32:
                lo = mid
            else:
                hi = mid - 1
        chunks.append((start, lo))
        start = lo
    return chunks


def plan_reduction(wc: Tensor, bias: Optional[Tensor], x_bound: int, groups: int, device: torch.device,
                   exact: bool = False) -> ExactReduction:
    """The :class:`ExactReduction` of a layer.

    Args:
        wc: the centered integer weights ``w - z_w`` in PyTorch layout ``[N, C / groups, ...]``
            (any dtype that holds them exactly).
        bias: the integer bias ``[N]`` (or ``None``).
        x_bound: the largest ``|x - z_x|`` of the input.
        groups: the convolution's groups (1 for a linear layer); grouped reductions are not
            split into chunks.
        device: where the reduction runs.
        exact: the caller needs the exact accumulator (an int32 output), not ``float32(acc)``:
            only ``"f32"`` and ``"f64"`` are used.
    """
    n = wc.shape[0]
    absw = wc.detach().to(device="cpu", dtype=torch.float64).abs()
    bias_abs = (torch.zeros(n, dtype=torch.float64) if bias is None
                else bias.detach().to(device="cpu", dtype=torch.float64).abs().reshape(-1))
    if groups == 1:
        per_channel = (absw.reshape(n, wc.shape[1], -1).sum(2) * x_bound).numpy()
        per_output = per_channel.sum(1)
        chunks = float32_chunks(per_channel)
    else:
        per_output = (absw.reshape(n, -1).sum(1) * x_bound).numpy()
        chunks = [(0, wc.shape[1])] if per_output.max(initial=0.0) < EXACT_FLOAT32 else None
    kind = "f64"
    if device.type == "cpu" and chunks is not None and len(chunks) <= MAX_FLOAT32_CHUNKS:
        if len(chunks) == 1 and float((torch.from_numpy(per_output) + bias_abs).max()) < EXACT_FLOAT32:
            kind = "f32"
        elif len(chunks) == 1 and float(bias_abs.max()) <= EXACT_FLOAT32:
            kind = "f32+b"
        elif groups == 1:
            kind = "chunks"
    if exact and kind != "f32":
        kind = "f64"
    dtype = torch.float64 if kind == "f64" else torch.float32
    return ExactReduction(
        weight=wc.detach().to(device=device, dtype=dtype),
        kind=kind,
        chunks=tuple(chunks) if kind == "chunks" and chunks is not None else None,
        bias32=None if bias is None else bias.detach().reshape(-1).to(device=device, dtype=torch.float32),
        bias64=None if bias is None else bias.detach().reshape(-1).to(device=device, dtype=torch.float64),
    )


def channel_view(v: Tensor, y: Tensor, channel_dim: int) -> Tensor:
    """A ``[1|N]`` per-channel tensor shaped to broadcast against ``y`` along ``channel_dim``."""
    if v.numel() == 1:
        return v.reshape(())
    shape = [1] * y.dim()
    shape[channel_dim] = -1
    return v.view(shape)


@torch.no_grad()
def exact_accumulate(xc: Tensor, red: ExactReduction, reduce: Reduce, channel_dim: int) -> Tensor:
    """The accumulator ``acc = reduce(xc, wc) + bias`` of the centered integer input ``xc``
    (float32, its channels along ``channel_dim``): ``float32(acc)``, the exact value rounded once,
    for the float32 kinds, and the exact value in float64 for ``"f64"``."""
    if red.kind == "f64":  # NCHW: channels-last float64 convolution is very slow on the CPU
        acc = reduce(xc.to(torch.float64, memory_format=torch.contiguous_format), red.weight, red.bias64)
        return torch.round(acc)  # exact; the rounding guards convolution algorithms that are not direct
    if red.kind == "f32":
        return reduce(xc, red.weight, red.bias32)
    if red.kind == "f32+b":
        acc = reduce(xc, red.weight, None)
        return acc if red.bias32 is None else acc.add_(channel_view(red.bias32, acc, channel_dim))
    assert red.chunks is not None
    acc64: Optional[Tensor] = None
    for a, b in red.chunks:
        part = reduce(xc.narrow(channel_dim, a, b - a), red.weight.narrow(1, a, b - a), None)
        acc64 = part.to(torch.float64) if acc64 is None else acc64.add_(part)
    assert acc64 is not None
    if red.bias64 is not None:
        acc64.add_(channel_view(red.bias64, acc64, channel_dim))
    return acc64.to(torch.float32)


@torch.no_grad()
def exact_add(ac: Tensor, bc: Tensor, ia: int, ib: int, bound: int) -> Tensor:
    """``float32(ac ia + bc ib)`` of centered integer tensors (float32), where ``bound`` bounds
    ``|ac ia + bc ib|``: in float32 below 2^24 (exact), else in float64 rounded once. ``ac`` is
    overwritten."""
    if bound >= EXACT_FLOAT32:
        return ac.to(torch.float64).mul_(ia).add_(bc.to(torch.float64), alpha=ib).to(torch.float32)
    return ac.mul_(ia).add_(bc, alpha=ib)


@torch.no_grad()
def exact_product(ac: Tensor, bc: Tensor, bound: int) -> Tensor:
    """``float32(ac bc)`` of centered integer tensors (float32, broadcasting), where ``bound``
    bounds ``|ac bc|``: in float32 below 2^24 (exact), else in float64 rounded once."""
    if bound < EXACT_FLOAT32:
        return ac * bc
    return (ac.to(torch.float64) * bc.to(torch.float64)).to(torch.float32)


@torch.no_grad()
def exact_sum(xc: Tensor, dims: Tuple[int, ...], bound: int) -> Tensor:
    """``float32(sum over dims of xc)`` of a centered integer tensor (float32), where ``bound``
    bounds the sum's magnitude: in float32 below 2^24 (every partial sum exact), else in float64."""
    if bound < EXACT_FLOAT32:
        return xc.sum(dim=dims)
    return xc.to(torch.float64).sum(dim=dims).to(torch.float32)


@torch.no_grad()
def requantize_centered(acc: Tensor, multiplier: Union[Tensor, float], lo: Union[Tensor, float],
                        hi: Union[Tensor, float]) -> Tensor:
    """The epilogue relative to the output zero point, in place on a float32 accumulator:
    ``clamp(rne(acc * m), lo, hi)`` = ``q - z_y`` for the ``q`` of :func:`requantize`, with
    ``lo``/``hi`` the bounds minus ``z_y`` (numbers, or float32 tensors broadcasting against
    ``acc``) and ``m`` a float32 tensor or a number (taken as its float32 value). Rounding and
    clamping to integer bounds commute, so this equals clamping first as the kernels do."""
    m = multiplier if isinstance(multiplier, Tensor) else torch.tensor(float(multiplier), dtype=torch.float32,
                                                                          device=acc.device)
    y = acc.mul_(m).round_()
    if isinstance(lo, Tensor) or isinstance(hi, Tensor):
        lo_t = lo if isinstance(lo, Tensor) else torch.tensor(float(lo), device=acc.device)
        hi_t = hi if isinstance(hi, Tensor) else torch.tensor(float(hi), device=acc.device)
        torch.maximum(y, lo_t, out=y)  # two in-place passes: faster on the CPU than a tensor-bound clamp
        return torch.minimum(y, hi_t, out=y)
    return y.clamp_(float(lo), float(hi))
