"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dfq_gpu.evaluate import Metrics, evaluate, sqnr_per_sample
from dfq_gpu.formulas import sqnr_db


class Fixed(torch.nn.Module):
    """Returns pre-set logits for inputs that are row indices."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.long().view(-1)]


def test_sqnr_hand_values():
    ref = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    out = torch.tensor([[3.0, 3.0], [0.0, 0.0]])
    # |ref|^2 = 25, |err|^2 = 1 -> 10 log10 25 = 13.979; second: 1 / 1 -> 0 dB
    s = sqnr_per_sample(ref, out)
    assert s[0].item() == pytest.approx(10 * math.log10(25.0))
    assert s[1].item() == pytest.approx(0.0)
    assert sqnr_db(np.array([3.0, 4.0]), np.array([3.0, 3.0])) == pytest.approx(13.9794, abs=1e-4)
    assert sqnr_db(np.ones(3), np.ones(3)) == math.inf


def test_top1_top5_agreement_and_sqnr():
    # 4 samples, 6 classes
    logits = torch.tensor([
        [9, 1, 2, 3, 4, 5],   # top1 0
        [1, 9, 8, 7, 6, 5],   # top1 1, top5 {1,2,3,4,5}
        [0, 1, 2, 3, 4, 5],   # top1 5, top5 {5,4,3,2,1}
        [5, 4, 3, 2, 1, 0],   # top1 0, top5 {0,1,2,3,4}
    ], dtype=torch.float32)
    labels = torch.tensor([0, 2, 0, 5])
    idx = torch.arange(4).float().view(4, 1)
    ds = TensorDataset(idx, labels)
    ref_logits = logits.clone()
    ref_logits[3] = torch.tensor([0, 9, 0, 0, 0, 0.0])  # reference disagrees on sample 3
    m = evaluate(Fixed(logits), ds, reference=ref_logits, batch_size=3)
    assert m.n == 4
    assert m.top1 == pytest.approx(1 / 4)        # only sample 0
    assert m.top5 == pytest.approx(2 / 4)        # samples 0 and 1 (label 2 in top5)
    assert m.agreement == pytest.approx(3 / 4)
    expected = sqnr_per_sample(ref_logits, logits)
    expected = torch.where(torch.isinf(expected), torch.full_like(expected, 300.0), expected)
    assert m.sqnr_db == pytest.approx(expected.mean().item())


def test_reference_model_and_unlabelled_batches():
    logits = torch.randn(10, 5)
    model = Fixed(logits)
    batches = [torch.arange(0, 6).float(), torch.arange(6, 10).float()]
    m = evaluate(model, batches, reference=model)
    assert m.top1 is None and m.top5 is None
    assert m.agreement == 1.0 and m.sqnr_db == 300.0
    assert isinstance(m, Metrics) and "agreement=100.00%" in str(m)


def test_empty_data_raises():
    with pytest.raises(ValueError, match="empty"):
        evaluate(Fixed(torch.zeros(1, 2)), [])
