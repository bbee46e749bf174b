"""What the package computes has not changed: quantizer parameters, weights, biases, the
simulation's output and the integer network's activations and output (integer reference, and
the Triton kernels through the interpreter on the first inputs of the Fashion-MNIST model, which
must equal the reference's) on pretrained EfficientNet-Lite0, a seeded ResNet-18 and the
Fashion-MNIST model, against the fingerprints in ``tests/fingerprints.json``
(``scripts/fingerprints.py --write`` records them; do that only when an output is meant to
change, and say why in the commit)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fingerprints", ROOT / "scripts" / "fingerprints.py")
fingerprints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fingerprints)

RECORDED = json.loads((ROOT / "tests" / "fingerprints.json").read_text())


@pytest.fixture(scope="module")
def cases():
    return fingerprints.cases()


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_outputs_match_the_recorded_fingerprints(cases, name):
    model, x, cfg = cases[name]
    got = fingerprints.fingerprint(model, x, cfg, triton="triton_output" in RECORDED[name])
    changed = {k: (RECORDED[name][k], got.get(k)) for k in RECORDED[name] if got.get(k) != RECORDED[name][k]}
    assert not changed, f"{name}: changed since recorded (recorded, now): {changed}"
    # the simulation and the integer network agree bit for bit, and so do the two backends
    assert got["simulation"] == got["int8_output"]
    if "triton_output" in RECORDED[name]:
        ref = fingerprints.fingerprint(model, x[:fingerprints.TRITON_INPUTS], cfg)
        assert (got["triton_activations"], got["triton_output"]) == (ref["int8_activations"], ref["int8_output"])
