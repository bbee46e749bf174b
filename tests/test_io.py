"""save / load: bit-exact round trip, int8 from a file, versions, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import dfq_gpu as D
from dfq_gpu import io as dio


@pytest.fixture(scope="module")
def fmnist_q():
    from dfq_gpu.data import fashion_mnist

    model, _ = D.load_model("fmnist_mobilenet")
    x = fashion_mnist("test", limit=64).tensors[0]
    return D.quantize(model, (x[:1],)), x


def test_round_trip_is_bit_exact(tmp_path, fmnist_q):
    q, x = fmnist_q
    path = D.save(q, tmp_path / "q.safetensors", model_name="fmnist_mobilenet")
    loaded = D.load(path)
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))
    assert loaded.dfq_config == q.dfq_config
    assert loaded.dfq_model_name == "fmnist_mobilenet"
    assert loaded.report.summary() == q.report.summary()
    rec = loaded.report.layer("stem.0")
    assert rec.range_folded[0].shape == q.report.layer("stem.0").range_folded[0].shape
    meta = dio.read_metadata(path)
    assert meta["format_version"] == dio.FORMAT_VERSION and json.loads(meta["config"])["weight_bits"] == 8


def test_int8_network_rebuilds_from_the_file(tmp_path, fmnist_q):
    q, x = fmnist_q
    path = D.save(q, tmp_path / "q.safetensors")
    a, b = D.to_int8(q), D.to_int8(D.load(path))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_existing_file_is_not_overwritten_and_failed_writes_leave_nothing(tmp_path, fmnist_q, monkeypatch):
    q, _ = fmnist_q
    target = tmp_path / "q.safetensors"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        D.save(q, target)
    assert target.read_bytes() == b"precious"

    import safetensors.torch as st

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        D.save(q, target, overwrite=True)
    assert target.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["q.safetensors"]  # no temporary file left behind


def test_other_format_versions_and_other_files_are_refused(tmp_path, fmnist_q):
    q, _ = fmnist_q
    from safetensors.torch import load_file, save_file

    path = D.save(q, tmp_path / "q.safetensors")
    meta = dio.read_metadata(path)
    meta["format_version"] = "999"
    meta["dfq_gpu_version"] = "9.9.9"
    save_file(load_file(str(path)), str(tmp_path / "future.safetensors"), metadata=meta)
    with pytest.raises(dio.LoadError, match="format version '999'.*9.9.9"):
        D.load(tmp_path / "future.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(dio.LoadError, match="not a dfq_gpu quantized network"):
        D.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(dio.LoadError, match="not a safetensors file"):
        D.load(tmp_path / "junk.safetensors")
    with pytest.raises(dio.LoadError, match="does not exist"):
        D.load(tmp_path / "missing.safetensors")


def test_unsupported_modules_are_named(tmp_path):
    class Custom(nn.Module):
        def forward(self, x):
            return x * 2

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 1)
            self.custom = Custom()

        def forward(self, x):
            return self.custom(self.c(x))

    q = D.quantize(M().eval(), (torch.randn(1, 3, 8, 8),), leaf_modules=["custom"])
    with pytest.raises(dio.SaveError, match="'custom'"):
        D.save(q, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_report_plot_ranges(fmnist_q, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, _ = fmnist_q
    axes = q.report.plot_ranges("blocks.1.conv.1.0")
    assert len(axes) == 2
    lo, hi = q.report.layer("blocks.1.conv.1.0").range_folded
    assert len(axes[0].collections[0].get_segments()) == len(lo)
    plt.savefig(tmp_path / "ranges.png")
    assert (tmp_path / "ranges.png").stat().st_size > 1000
    plt.close("all")


def test_integer_simulation_round_trips(tmp_path, fmnist_q):
    """The integer steps of the simulation (layers' integer paths, QAdd, QAvgPool) and the
    quantizers and clamps that pass their input through come back from the file as they were:
    same parameters, same outputs bit for bit."""
    from dfq_gpu.modules import QAdd, QAvgPool, QConv2d, QLinear
    from dfq_gpu.quant.simulate import stale_integer_steps

    q, x = fmnist_q
    loaded = D.load(D.save(q, tmp_path / "q.safetensors"))

    def steps(gm):
        out = {}
        for n, m in gm.named_modules():
            if isinstance(m, (QConv2d, QLinear)):
                out[n] = m.integer_state()
            elif isinstance(m, (QAdd, QAvgPool)):
                out[n] = (type(m).__name__, m.state())
            elif getattr(m, "passthrough", False):
                out[n] = "passthrough"
        return out

    before, after = steps(q), steps(loaded)
    assert before == after
    assert sum(1 for v in before.values() if isinstance(v, tuple) and v[0] == "QAdd") == 5
    assert sum(1 for v in before.values() if v == "passthrough") > 20
    assert stale_integer_steps(loaded) == []
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))


class _MeanTail(nn.Module):
    """A ReLU6 (a per-channel clamp after equalization), a residual add and a global average
    that is the float network output."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))

    def forward(self, x):
        h = self.a(x)
        return (h + self.b(h)).mean((2, 3))


def test_float_output_average_round_trips(tmp_path):
    from dfq_gpu.modules import QAvgPool

    torch.manual_seed(0)
    model = _MeanTail().eval()
    x = torch.randn(4, 3, 10, 10)
    q = D.quantize(model, (x[:1],), D.DFQConfig(input_range=(-3.0, 3.0)))
    pool = next(m for m in q.modules() if isinstance(m, QAvgPool))
    assert pool.y_scale is None  # float output
    loaded = D.load(D.save(q, tmp_path / "m.safetensors"))
    with torch.no_grad():
        assert torch.equal(q(x), loaded(x))
        assert torch.equal(D.to_int8(loaded, backend="reference")(x), loaded(x))
