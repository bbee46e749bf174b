"""Datasets: the ImageNet sample shipped in the ``foolbox`` wheel, ImageNet-style folders,
and Fashion-MNIST from the Debian package ``dataset-fashion-mnist``.

Every dataset here is a ``torch.utils.data.Dataset`` of ``(image tensor, label)`` pairs;
:func:`loader` batches one. Images are preprocessed with a :class:`Preprocess` (the one
``dfq_gpu.zoo.load_model`` returns with a model).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "Preprocess",
    "DatasetNotFound",
    "imagenet_sample",
    "imagenet_sample_dir",
    "ImageFolder",
    "fashion_mnist",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "loader",
]

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path(os.environ.get("DFQ_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG")


class DatasetNotFound(FileNotFoundError):
    """A dataset is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its images: size, resize-then-center-crop ratio, normalisation.

    ``__call__`` maps a PIL image to a float tensor ``[C, size, size]``: resize the shorter
    side to ``size / crop_fraction``, center-crop ``size``, scale to ``[0, 1]``, then
    ``(x - mean) / std``. :meth:`random_view` does a seeded random resized crop and flip instead.
    """

    size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_fraction: float = 0.875
    grayscale: bool = False

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @property
    def input_range(self) -> tuple[float, float]:
        """The float range normalised images can take."""
        lo = min((0.0 - m) / s for m, s in zip(self.mean, self.std))
        hi = max((1.0 - m) / s for m, s in zip(self.mean, self.std))
        return float(lo), float(hi)

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("L" if self.grayscale else "RGB")
        arr = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr.copy())
        t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
        return (t - mean) / std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        short = self.size / self.crop_fraction
        scale = short / min(w, h)
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        img = img.convert("L" if self.grayscale else "RGB").resize((nw, nh), Image.BILINEAR)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return self.to_tensor(img.crop((left, top, left + self.size, top + self.size)))

    def random_view(self, img: Image.Image, rng: np.random.Generator, scale: tuple[float, float] = (0.25, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
        """A random resized crop (area fraction in ``scale``, aspect in ``ratio``) with a random flip."""
        img = img.convert("L" if self.grayscale else "RGB")
        w, h = img.size
        area = w * h
        for _ in range(20):
            a = area * rng.uniform(*scale)
            r = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
            cw, ch = int(round(np.sqrt(a * r))), int(round(np.sqrt(a / r)))
            if 0 < cw <= w and 0 < ch <= h:
                left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                break
        else:
            cw = ch = min(w, h)
            left, top = (w - cw) // 2, (h - ch) // 2
        crop = img.crop((left, top, left + cw, top + ch)).resize((self.size, self.size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        return self.to_tensor(crop)


# ----------------------------------------------------------------------------- ImageNet sample
def imagenet_sample_dir() -> Path:
    """The folder of the 20 labelled ImageNet validation images inside the ``foolbox`` package."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFound("the ImageNet sample comes with the 'foolbox' wheel: pip install foolbox==3.3.4")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not d.is_dir() or not list(d.glob("imagenet_*")):
        raise DatasetNotFound(f"no imagenet_*.jpg files in {d}; reinstall foolbox==3.3.4")
    return d


def _sample_files() -> list[tuple[Path, int]]:
    files = sorted(imagenet_sample_dir().glob("imagenet_*_*.jpg"))
    return [(f, int(f.stem.split("_")[-1])) for f in files]


def imagenet_sample(preprocess: Preprocess | None = None, views: int = 8, seed: int = 0) -> TensorDataset:
    """The ImageNet sample: 20 labelled validation images, ``views`` views each (160 by default).

    View 0 of each image is the standard resize + center crop; the others are random
    resized crops and flips drawn from ``numpy.random.default_rng(seed)``, so the set is
    the same on every run. Order: image-major (all views of image 0, then image 1, ...).
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    pre = preprocess or Preprocess()
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for path, label in _sample_files():
        with Image.open(path) as img:
            img.load()
            xs.append(pre(img))
            ys.append(label)
            for _ in range(views - 1):
                xs.append(pre.random_view(img, rng))
                ys.append(label)
    return TensorDataset(torch.stack(xs), torch.tensor(ys, dtype=torch.long))


# ----------------------------------------------------------------------------- ImageNet folder
class ImageFolder(Dataset):
    """An ImageNet-style folder.

    Either ``root/<class>/*.jpg`` where ``<class>`` is a WordNet id (``n01440764``; sorted wnids
    give the standard 0..999 indices) or a class index, or a flat folder of images with
    ``labels_file``: one line per image, ``<file name> <label>`` or just ``<label>`` in the
    sorted order of the file names (the ILSVRC2012 validation ground-truth layout).
    """

    def __init__(self, root: str | os.PathLike, preprocess: Preprocess | None = None,
                 labels_file: str | os.PathLike | None = None) -> None:
        self.root = Path(root)
        self.preprocess = preprocess or Preprocess()
        if not self.root.is_dir():
            raise DatasetNotFound(f"image folder {self.root} does not exist")
        self.samples: list[tuple[Path, int]] = []
        if labels_file is not None:
            self._flat(Path(labels_file))
        else:
            self._classes()
        if not self.samples:
            raise DatasetNotFound(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")

    def _classes(self) -> None:
        dirs = sorted(d for d in self.root.iterdir() if d.is_dir())
        if not dirs:
            raise DatasetNotFound(f"{self.root} has no class sub-folders; for a flat folder pass labels_file=")
        if all(d.name.isdigit() for d in dirs):
            index = {d.name: int(d.name) for d in dirs}
        else:
            index = {d.name: i for i, d in enumerate(dirs)}
        for d in dirs:
            for f in sorted(d.iterdir()):
                if f.suffix in IMAGE_EXTENSIONS or f.suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((f, index[d.name]))

    def _flat(self, labels_file: Path) -> None:
        if not labels_file.is_file():
            raise DatasetNotFound(f"labels file {labels_file} does not exist")
        files = sorted(f for f in self.root.iterdir() if f.suffix.lower() in {e.lower() for e in IMAGE_EXTENSIONS})
        lines = [ln.split() for ln in labels_file.read_text().splitlines() if ln.strip()]
        if lines and len(lines[0]) >= 2:
            by_name = {parts[0]: int(parts[1]) for parts in lines}
            self.samples = [(f, by_name[f.name]) for f in files if f.name in by_name]
        else:
            if len(lines) != len(files):
                raise ValueError(f"{labels_file} has {len(lines)} labels for {len(files)} images in {self.root}")
            self.samples = [(f, int(parts[0])) for f, parts in zip(files, lines)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as img:
                img.load()
                return self.preprocess(img), label
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc


# ----------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def fashion_mnist(split: str = "test", root: str | os.PathLike | None = None, limit: int | None = None) -> TensorDataset:
    """Fashion-MNIST (``split`` "train": 60k, "test": 10k) as normalised ``[N, 1, 28, 28]`` tensors.

    Read from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
    or ``root`` / ``$DFQ_FASHION_MNIST_DIR``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    img_path, lab_path = d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.is_file() or not lab_path.is_file():
        raise DatasetNotFound(f"Fashion-MNIST is not in {d}: install it with "
                              "'apt-get install dataset-fashion-mnist' (or set DFQ_FASHION_MNIST_DIR)")
    images = _read_idx(img_path)
    labels = _read_idx(lab_path)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def fashion_mnist_preprocess() -> Preprocess:
    return Preprocess(size=28, mean=(FASHION_MNIST_MEAN,), std=(FASHION_MNIST_STD,), crop_fraction=1.0,
                      grayscale=True)


# ----------------------------------------------------------------------------- loaders
def loader(dataset: Dataset, batch_size: int = 32, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A deterministic ``DataLoader`` over a dataset (seeded when shuffling)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None)


def batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], batch_size):
        yield x[i:i + batch_size]
