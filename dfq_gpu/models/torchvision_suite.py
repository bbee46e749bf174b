"""torchvision's architectures as a quantization test suite: every classification model under a
parameter limit, the segmentation models with MobileNetV3 and ResNet-50 backbones and SSDLite, with
random weights and randomized batch-norm statistics, each with an input it runs on.

What a user quantizes of a segmentation or detection model is its tensor part:

* :class:`SegmentationOut` returns a segmentation model's ``out`` tensor (the ``dict`` stays
  outside the traced graph);
* :class:`DetectorCore` returns an SSD's ``(box regression, class logits)``; anchors, box decoding
  and NMS run in float on these outputs, outside the quantized part
  (:meth:`DetectorCore.detections`; SSDLite as a whole does not trace with ``torch.fx``), and
  :func:`box_agreement` compares two sets of detections.

``scripts/coverage.py`` measures the README's coverage table on this suite and
``tests/test_architectures.py`` checks every model of it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Iterator
from unittest import mock

import torch
import torch.nn as nn

__all__ = ["SEGMENTATION", "DETECTION", "SegmentationOut", "DetectorCore", "box_agreement", "names",
           "parameter_count", "build", "input_size", "randomize_bn_statistics"]

SEGMENTATION = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")
DETECTION = ("ssdlite320_mobilenet_v3_large",)


class SegmentationOut(nn.Module):
    """A segmentation model's ``out`` tensor (the ``dict`` output stays outside the traced part)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)["out"]


class DetectorCore(nn.Module):
    """An SSD's backbone and head: ``(box regression, class logits)``, the part of a detector that
    is quantized. Anchors, box decoding and NMS run in float on these outputs, from the quantized
    network's or any other's: :meth:`detections`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = model.backbone, model.head
        object.__setattr__(self, "_detector", model)  # not a submodule: not traced, not quantized

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(list(self.backbone(x).values()))
        return out["bbox_regression"], out["cls_logits"]

    @torch.no_grad()
    def detections(self, x: torch.Tensor, outputs: tuple[torch.Tensor, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The detector's boxes, scores and labels per image (its anchors for ``x``'s size, box
        decoding, score threshold and NMS, in float) from ``outputs`` = ``(box regression, class
        logits)`` for the input ``x`` (already preprocessed: the model's transform is not applied)."""
        from torchvision.models.detection.image_list import ImageList

        det = self._detector
        sizes = [(int(x.shape[-2]), int(x.shape[-1]))] * x.shape[0]
        features = list(self.backbone(x).values())  # only their sizes are read by the anchor generator
        anchors = det.anchor_generator(ImageList(x, sizes), features)
        return det.postprocess_detections({"bbox_regression": outputs[0], "cls_logits": outputs[1]}, anchors, sizes)


def box_agreement(reference: list[dict[str, torch.Tensor]], other: list[dict[str, torch.Tensor]], top: int = 20,
                  iou: float = 0.5) -> float:
    """The share of ``reference``'s ``top`` highest-scoring boxes per image that ``other`` has too:
    a box of the same label with IoU >= ``iou`` (each of ``other``'s boxes matched once, greedily
    in ``reference``'s score order)."""
    from torchvision.ops import box_iou

    hit = total = 0
    for ref, oth in zip(reference, other):
        order = ref["scores"].argsort(descending=True)[:top]
        free = torch.ones(len(oth["boxes"]), dtype=torch.bool)
        ious = box_iou(ref["boxes"][order], oth["boxes"]) if len(oth["boxes"]) else None
        for k, i in enumerate(order.tolist()):
            total += 1
            if ious is None:
                continue
            ok = free & (oth["labels"] == ref["labels"][i]) & (ious[k] >= iou)
            if bool(ok.any()):
                j = int(torch.where(ok, ious[k], torch.full_like(ious[k], -1.0)).argmax())
                free[j] = False
                hit += 1
    return hit / total if total else 1.0


def _construct(name: str, num_classes: int) -> nn.Module:
    import torchvision

    warnings.filterwarnings("ignore", message="The default weight initialization", category=FutureWarning)
    if name in SEGMENTATION:
        return torchvision.models.get_model(name, num_classes=num_classes, weights=None, weights_backbone=None,
                                            aux_loss=False)
    if name in DETECTION:
        return torchvision.models.get_model(name, num_classes=num_classes, weights=None, weights_backbone=None)
    return torchvision.models.get_model(name, num_classes=num_classes)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """``torch.nn.init``'s in-place initialisers as no-ops (the tensors keep whatever they hold)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    with contextlib.ExitStack() as stack:
        for n in names:
            stack.enter_context(mock.patch.object(torch.nn.init, n, lambda t, *a, **k: t))
        yield


@functools.lru_cache(maxsize=None)
def parameter_count(name: str, num_classes: int = 10) -> int:
    """Parameters of ``name`` as :func:`build` makes it, counted on the meta device (nothing
    allocated), or, for builders that compute with tensors (RegNet), without initialising them."""
    try:
        with torch.device("meta"):
            m = _construct(name, num_classes)
    except (NotImplementedError, RuntimeError):
        with _no_init():
            m = _construct(name, num_classes)
    return sum(p.numel() for p in m.parameters())


def names(max_params: float = 100e6) -> list[str]:
    """Every classification model of ``torchvision.models.list_models(module=torchvision.models)``
    with at most ``max_params`` parameters (10 classes), then :data:`SEGMENTATION` and
    :data:`DETECTION`."""
    import torchvision

    classification = [n for n in torchvision.models.list_models(module=torchvision.models)
                      if parameter_count(n) <= max_params]
    return [*classification, *SEGMENTATION, *DETECTION]


def randomize_bn_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running means uniform in ``[-0.5, 0.5)`` and variances in ``[0.5, 2)`` for every 2-D batch
    norm (fresh ones hold 0 and 1, which would make folding trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d) and mod.running_mean is not None:
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 1.5 + 0.5)
    return model


def build(name: str, seed: int = 0, num_classes: int = 10) -> nn.Module:
    """``name`` in eval mode with random weights (``torch.manual_seed(seed)``) and randomized BN
    statistics; segmentation models wrapped in :class:`SegmentationOut`, detectors in
    :class:`DetectorCore`."""
    torch.manual_seed(seed)
    m = randomize_bn_statistics(_construct(name, num_classes), seed)
    if name in SEGMENTATION:
        m = SegmentationOut(m)
    elif name in DETECTION:
        m = DetectorCore(m)
    return m.eval()


def input_size(name: str, small: bool = False) -> int:
    """The side of a square input ``name`` runs on: 224 for ViT, Swin and MaxViT (fixed position
    embeddings and windows), 80 for Inception-v3, 128 for SSDLite, otherwise 64 (``small``: 32)."""
    if name.startswith(("vit_", "swin", "maxvit")):
        return 224
    if "inception" in name:
        return 80
    if name in DETECTION:
        return 128
    return 32 if small else 64
