"""Datasets: the ImageNet sample views, image folders, Fashion-MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dfq_gpu import data as D


@pytest.fixture(scope="module")
def small_pre() -> D.Preprocess:
    return D.Preprocess(size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_imagenet_sample_files_and_labels():
    files = D._sample_files()
    assert len(files) == 20
    for path, label in files:
        assert path.name.startswith("imagenet_") and path.name.endswith(f"_{label}.jpg")
        assert 0 <= label < 1000


def test_imagenet_sample_views_are_deterministic(small_pre):
    a = D.imagenet_sample(small_pre, views=3, seed=0)
    b = D.imagenet_sample(small_pre, views=3, seed=0)
    c = D.imagenet_sample(small_pre, views=3, seed=1)
    xa, ya = a.tensors
    assert xa.shape == (60, 3, 64, 64) and ya.shape == (60,)
    assert torch.equal(xa, b.tensors[0]) and torch.equal(ya, b.tensors[1])
    # view 0 of each image is the center crop, the same for any seed; random views differ
    assert torch.equal(xa[::3], c.tensors[0][::3])
    assert not torch.equal(xa[1::3], c.tensors[0][1::3])
    # labels are image-major
    labels = [lab for _, lab in D._sample_files()]
    assert ya.tolist() == [lab for lab in labels for _ in range(3)]
    # normalised to the preprocess range
    lo, hi = small_pre.input_range
    assert xa.min() >= lo - 1e-6 and xa.max() <= hi + 1e-6


def test_center_crop_geometry():
    pre = D.Preprocess(size=8, mean=(0.0,) * 3, std=(1.0,) * 3, crop_fraction=1.0)
    img = Image.new("RGB", (16, 8))
    px = img.load()
    for x in range(16):
        for y in range(8):
            px[x, y] = (x * 16, 0, 0)
    t = pre(img)  # shorter side already 8: crop the middle 8 columns of 16
    assert t.shape == (3, 8, 8)
    assert t[0, 0, 0].item() == pytest.approx(4 * 16 / 255, abs=1e-6)


def _write_images(folder, n, size=(20, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"img{i}.jpg")


def test_image_folder_class_layout(tmp_path, small_pre):
    _write_images(tmp_path / "n01440764", 2)
    _write_images(tmp_path / "n01443537", 3)
    ds = D.ImageFolder(tmp_path, small_pre)
    assert len(ds) == 5
    labels = [ds[i][1] for i in range(5)]
    assert labels == [0, 0, 1, 1, 1]
    assert ds[0][0].shape == (3, 64, 64)


def test_image_folder_flat_with_labels_file(tmp_path, small_pre):
    _write_images(tmp_path / "val", 3)
    (tmp_path / "labels.txt").write_text("7\n3\n999\n")
    ds = D.ImageFolder(tmp_path / "val", small_pre, labels_file=tmp_path / "labels.txt")
    assert [ds[i][1] for i in range(3)] == [7, 3, 999]
    (tmp_path / "named.txt").write_text("img2.jpg 5\nimg0.jpg 1\n")
    ds2 = D.ImageFolder(tmp_path / "val", small_pre, labels_file=tmp_path / "named.txt")
    assert sorted(lab for _, lab in ds2.samples) == [1, 5]


def test_image_folder_errors(tmp_path, small_pre):
    with pytest.raises(D.DatasetNotFound, match="does not exist"):
        D.ImageFolder(tmp_path / "missing", small_pre)
    (tmp_path / "empty" / "n0").mkdir(parents=True)
    with pytest.raises(D.DatasetNotFound, match="no images"):
        D.ImageFolder(tmp_path / "empty", small_pre)
    bad = tmp_path / "bad" / "n0"
    bad.mkdir(parents=True)
    (bad / "broken.jpg").write_bytes(b"not a jpeg at all")
    ds = D.ImageFolder(tmp_path / "bad", small_pre)
    with pytest.raises(ValueError, match="cannot read image"):
        ds[0]


def test_fashion_mnist_splits():
    test = D.fashion_mnist("test")
    x, y = test.tensors
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert set(y.unique().tolist()) == set(range(10))
    assert torch.bincount(y).tolist() == [1000] * 10
    train = D.fashion_mnist("train", limit=100)
    assert train.tensors[0].shape == (100, 1, 28, 28)
    # normalised: the test set has roughly zero mean and unit std
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1.0) < 0.05


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(D.DatasetNotFound, match="apt-get install dataset-fashion-mnist"):
        D.fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        D.fashion_mnist("val")


def test_loader_batches_and_is_deterministic():
    ds = D.fashion_mnist("test", limit=50)
    a = [y for _, y in D.loader(ds, batch_size=16, shuffle=True, seed=3)]
    b = [y for _, y in D.loader(ds, batch_size=16, shuffle=True, seed=3)]
    assert [len(t) for t in a] == [16, 16, 16, 2]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
