"""Accuracy and fidelity metrics: top-1 / top-5 against labels, and against a reference model
top-1 agreement and mean per-sample logit SQNR in dB."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

__all__ = ["Metrics", "evaluate", "sqnr_per_sample", "collect_outputs"]


@dataclass(frozen=True)
class Metrics:
    """Results of :func:`evaluate`; fields that need labels or a reference are ``None`` without them."""

    n: int
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None  # fraction of samples whose top-1 equals the reference's
    sqnr_db: float | None = None  # mean over samples of 10 log10(|ref|^2 / |ref - out|^2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.2f}%"

        sq = "-" if self.sqnr_db is None else f"{self.sqnr_db:.2f} dB"
        return f"n={self.n} top1={pct(self.top1)} top5={pct(self.top5)} agreement={pct(self.agreement)} sqnr={sq}"


def sqnr_per_sample(ref: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``10 log10(|ref_i|^2 / |ref_i - out_i|^2)`` per sample (``inf`` where they are equal)."""
    ref = ref.detach().to(torch.float64).reshape(ref.shape[0], -1)
    out = out.detach().to(torch.float64).reshape(out.shape[0], -1)
    signal = (ref * ref).sum(1)
    noise = ((ref - out) ** 2).sum(1)
    return 10.0 * torch.log10(signal / noise)


def _iter(data: Any, batch_size: int) -> Iterable[tuple[Any, torch.Tensor | None]]:
    if isinstance(data, Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        from torch.utils.data import DataLoader

        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    elif isinstance(data, torch.Tensor):
        data = [data[i:i + batch_size] for i in range(0, data.shape[0], batch_size)]
    for batch in data:
        if isinstance(batch, torch.Tensor):
            yield batch, None
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            yield batch[0], batch[1]
        elif isinstance(batch, (tuple, list)) and len(batch) == 1:
            yield batch[0], None
        else:
            raise TypeError(f"data must yield tensors or (inputs, labels) pairs, got {type(batch).__name__}")


def _forward(model: Callable[..., torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, dict):  # segmentation models return {"out": ...}
        out = out["out"]
    return out


@torch.no_grad()
def collect_outputs(model: Callable[..., torch.Tensor], data: Any, batch_size: int = 32,
                    progress: bool = False) -> torch.Tensor:
    """Concatenated outputs of ``model`` over ``data`` (for a reference computed once)."""
    if isinstance(model, nn.Module):
        model.eval()
    outs = [_forward(model, x).float().cpu() for x, _ in tqdm(_iter(data, batch_size), disable=not progress,
                                                               desc="reference", leave=False)]
    return torch.cat(outs)


@torch.no_grad()
def evaluate(model: Callable[..., torch.Tensor], data: Any, reference: nn.Module | torch.Tensor | None = None,
             batch_size: int = 32, progress: bool | None = None, desc: str = "evaluate") -> Metrics:
    """Evaluate ``model`` on ``data``.

    Args:
        model: a module (or any callable) mapping a batch of inputs to logits.
        data: a ``Dataset`` of ``(x, label)``, an iterable of ``(x, labels)`` batches or of input
            batches, or a tensor of inputs.
        reference: a reference model, or its outputs on ``data`` as one tensor (from
            :func:`collect_outputs`), for agreement and SQNR.
        progress: show a ``tqdm`` bar (default: when there are more than 8 batches).
    """
    if isinstance(model, nn.Module):
        model.eval()
    if isinstance(reference, nn.Module):
        reference.eval()
    n = 0
    correct1 = correct5 = agree = 0
    sq_sum = 0.0
    has_labels = True
    offset = 0
    batches = list(_iter(data, batch_size)) if not isinstance(data, Dataset) else None
    iterable = batches if batches is not None else _iter(data, batch_size)
    total = len(batches) if batches is not None else None
    show = progress if progress is not None else (total is None or total > 8)
    for x, y in tqdm(iterable, total=total, disable=not show, desc=desc, leave=False):
        out = _forward(model, x).float().cpu()
        b = out.shape[0]
        if y is None:
            has_labels = False
        else:
            y = torch.as_tensor(y).cpu()
            k = min(5, out.shape[1])
            top = out.topk(k, dim=1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(1).sum())
        if reference is not None:
            if isinstance(reference, torch.Tensor):
                ref = reference[offset:offset + b].float()
                if ref.shape[0] != b:
                    raise ValueError(f"reference outputs have {reference.shape[0]} rows, fewer than the data")
            else:
                ref = _forward(reference, x).float().cpu()
            agree += int((ref.argmax(1) == out.argmax(1)).sum())
            s = sqnr_per_sample(ref, out)
            s = torch.where(torch.isinf(s) & (s > 0), torch.full_like(s, 300.0), s)  # identical: cap at 300 dB
            sq_sum += float(s.sum())
        n += b
        offset += b
    if n == 0:
        raise ValueError("evaluate: data is empty")
    return Metrics(
        n=n,
        top1=correct1 / n if has_labels else None,
        top5=correct5 / n if has_labels else None,
        agreement=agree / n if reference is not None else None,
        sqnr_db=sq_sum / n if reference is not None else None,
    )
