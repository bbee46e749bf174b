"""Every torchvision architecture under 100M parameters quantizes and runs in int8.

One test per model of :func:`dfq_gpu.models.torchvision_suite.names`: every classification model of
``torchvision.models.list_models(module=torchvision.models)`` with at most 100M parameters, the
segmentation models (their ``out`` tensor) and SSDLite (backbone and head), with random weights
and randomized BN statistics. ``quantize`` and ``to_int8`` (integer reference backend) must
succeed, the int8 network must equal the simulation bit for bit, and at least 90% of the
convolution and linear MACs must run in int8; where part of a model runs in float, the coverage
report gives a reason for every such node. A few are exported to ONNX and run in ONNX Runtime too.

Kept lean for CI: one image of the smallest side each model runs on, and two equalization sweeps
(the sweeps' number changes the weights, not which ops run in int8 or how; convergence and the
default settings are tested on real networks elsewhere). The full sweep with the default settings
is ``scripts/coverage.py`` (README's coverage table).
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

import dfq_gpu as D
from dfq_gpu.models import torchvision_suite as suite

torchvision = pytest.importorskip("torchvision")

#: Sides below the default small input (32) for models that need more: AlexNet's last max pool.
MIN_SIDE = {"alexnet": 64}
#: Models also exported to ONNX (``exact=True``) and run in ONNX Runtime, which must return every
#: code of the integer network: one of each family of non-fused steps (hardswish / hardsigmoid
#: tables and the squeeze-excitation product, channel shuffle and split, windowed pools and cat,
#: bilinear resampling and a float output, detection heads).
ONNX_MODELS = ("mobilenet_v3_small", "shufflenet_v2_x0_5", "googlenet", "lraspp_mobilenet_v3_large",
               "ssdlite320_mobilenet_v3_large")
ONNX_FLOAT_MODELS = ("swin_t",)  # float ops exported by PyTorch's exporter
CONFIG = D.DFQConfig(cle_max_iter=2, act_range_method="minmax")


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", suite.names(max_params=100e6))
def test_architecture_quantizes_and_runs_in_int8(name: str) -> None:
    model = suite.build(name, seed=0)
    side = max(suite.input_size(name, small=True), MIN_SIDE.get(name, 0))
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1))
    sim = D.quantize(model, (x,), CONFIG)
    net = D.to_int8(sim, backend="reference")
    cov = net.coverage
    assert cov is not None
    assert cov.int8_mac_fraction >= 0.9, cov.summary()
    assert all(isinstance(why, str) and why for why in cov.float_nodes.values()), cov.float_nodes
    with torch.no_grad():
        a, b = sim(x), net(x)
    pairs = list(zip(a, b)) if isinstance(a, tuple) else [(a, b)]
    assert pairs and all(torch.equal(u, v) for u, v in pairs)
    if name in ONNX_MODELS:
        _exact_in_onnx_runtime(sim, x, a)
    if name in ONNX_FLOAT_MODELS:
        _onnx_runtime_within_a_code(sim, x)
    if name in suite.DETECTION:  # boxes, scores and labels from the int8 outputs, decoded in float
        dets = model.detections(x, b)
        assert len(dets) == 1 and dets[0]["boxes"].shape[1:] == (4,) and len(dets[0]["boxes"]) > 0
        assert suite.box_agreement(dets, dets) == 1.0


def _exact_in_onnx_runtime(sim: torch.nn.Module, x: torch.Tensor, y) -> None:
    pytest.importorskip("onnxruntime")
    from dfq_gpu.export import run_onnx

    proto = D.export_onnx(sim, exact=True)
    ref = D.golden_activations(sim, x)
    for forced in (ref, None):
        outs, codes = run_onnx(proto, x, teacher_forcing=forced)
        rep = D.compare_layers(codes, ref, tolerance=0, layers=sim)
        assert rep.equal_share == 1.0 and not rep.missing, str(rep)
    for o, want in zip(outs, y if isinstance(y, tuple) else (y,)):
        assert o.shape == tuple(want.shape) and float(abs(o - want.numpy()).max()) <= 1e-6 * float(want.abs().max())


def _onnx_runtime_within_a_code(sim: torch.nn.Module, x: torch.Tensor) -> None:
    """A transformer: its attention exported by PyTorch, its relative position bias folded; fed the
    reference codes, ONNX Runtime's float ops return every code within one."""
    pytest.importorskip("onnxruntime")
    from dfq_gpu.export import run_onnx

    proto = D.export_onnx(sim)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["dfq_gpu.pytorch_exported"])
    ref = D.golden_activations(sim, x)
    rep = D.compare_layers(run_onnx(proto, x, teacher_forcing=ref)[1], ref, tolerance=1, layers=sim)
    assert rep.ok and not rep.missing and rep.max_abs_diff <= 1, str(rep)


def test_box_agreement_matches_by_label_and_iou() -> None:
    def dets(boxes, scores, labels):
        return [{"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
                 "labels": torch.tensor(labels)}]

    ref = dets([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]], [0.9, 0.8, 0.1], [1, 2, 1])
    moved = dets([[1, 0, 11, 10], [20, 20, 30, 30]], [0.5, 0.5], [1, 1])  # the second has another label
    assert suite.box_agreement(ref, moved, top=2) == 0.5
    assert suite.box_agreement(ref, moved, top=3) == pytest.approx(1 / 3)  # one box matches once only
    far = dets([[5, 5, 15, 15]], [0.9], [1])  # IoU 25/175
    assert suite.box_agreement(ref, far, top=1) == 0.0 and suite.box_agreement(ref, far, top=1, iou=0.1) == 1.0
    assert suite.box_agreement(ref, dets(torch.zeros(0, 4).tolist(), [], []), top=2) == 0.0


def test_suite_is_every_model_under_the_limit() -> None:
    """The parametrization above is torchvision's list minus the models over 100M parameters
    (counted without allocating them), plus the segmentation and detection models."""
    listed = torchvision.models.list_models(module=torchvision.models)
    names = suite.names(max_params=100e6)
    big = [n for n in listed if n not in names]
    assert {"vgg16", "vit_l_16", "regnet_y_128gf"} <= set(big)
    assert {"resnet50", "efficientnet_b7", "convnext_base", "regnet_y_16gf", "mobilenet_v3_large"} <= set(names)
    assert names[-4:] == [*suite.SEGMENTATION, *suite.DETECTION]
    assert suite.parameter_count("resnet18") == sum(p.numel() for p in torchvision.models.resnet18(num_classes=10)
                                                     .parameters())
    assert suite.parameter_count("regnet_y_16gf") > 80e6 > suite.parameter_count("regnet_y_8gf")
