"""The one kernel settings object (``kernels.settings``): the older switches are views of it, the
context managers restore it, the environment sets its defaults, and launches (including launch
plans built earlier) follow it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

import kernels
from kernels import _config
from kernels import reference as ref
from kernels import settings as ks
from kernels.settings import KernelSettings, Tile

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

GEMM_TILE = triton.Config(dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=1), num_warps=4, num_stages=2)


@pytest.fixture(autouse=True)
def _restore_settings():
    before = ks.current_settings()
    yield
    assert ks.current_settings() == before, "a test left the kernel settings changed"
    ks.set_settings(before)


def test_settings_object_values_and_validation():
    s = KernelSettings()
    assert (s.backend, s.autotune, s.forced, s.depthwise_variant) == ("auto", True, (), "tiles")
    # forced tiles: a mapping or pairs, stored sorted as hashable Tiles; compared by value
    a = KernelSettings(forced={"gemm": GEMM_TILE, "depthwise": _config.GPU_CONFIGS["depthwise"][1]})
    b = KernelSettings(forced=[("depthwise", _config.GPU_CONFIGS["depthwise"][1]), ("gemm", GEMM_TILE)])
    assert a == b and hash(a) == hash(b) and [f for f, _ in a.forced] == ["depthwise", "gemm"]
    tile = a.forced_tile("gemm")
    assert isinstance(tile, Tile) and tile.kwargs == GEMM_TILE.kwargs
    assert (tile.num_warps, tile.num_stages) == (4, 2)
    assert a.forced_tile("depthwise_rows") is None
    assert a != a.with_forced("gemm", _config.GPU_CONFIGS["gemm"][0])
    assert a.with_forced("gemm", None) == KernelSettings(forced={"depthwise": _config.GPU_CONFIGS["depthwise"][1]})
    assert a.replace(autotune=0).autotune is False
    assert {s, KernelSettings(), a, b} == {s, a}
    with pytest.raises(ValueError, match="backend must be one of"):
        KernelSettings(backend="cuda")
    with pytest.raises(ValueError, match="depthwise variant must be one of"):
        KernelSettings(depthwise_variant="winograd")
    with pytest.raises(ValueError, match="unknown kernel family"):
        KernelSettings(forced={"winograd": GEMM_TILE})
    with pytest.raises(ValueError, match="forced tile"):
        KernelSettings(forced={"gemm": {"BLOCK_M": 32}})
    with pytest.raises(ValueError, match="KernelSettings"):
        ks.set_settings("rows")
    # the families a tile can be forced for are the families with autotune lists
    assert set(ks.KERNEL_FAMILIES) == set(_config.GPU_CONFIGS)
    assert _config.DEPTHWISE_VARIANTS is ks.DEPTHWISE_VARIANTS and kernels.BACKENDS is ks.BACKENDS


def test_wrappers_and_settings_agree():
    start = ks.current_settings()
    # setters change their field of the one object (and nothing else) ...
    try:
        kernels.set_backend("reference")
        assert ks.current_settings() == start.replace(backend="reference")
        _config.set_autotune(not start.autotune)
        assert ks.current_settings() == start.replace(backend="reference", autotune=not start.autotune)
        other = "rows" if start.depthwise_variant == "tiles" else "tiles"
        _config.set_depthwise_variant(other)
        assert ks.current_settings() == start.replace(
            backend="reference", autotune=not start.autotune, depthwise_variant=other
        )
        with _config.forced_config("gemm", GEMM_TILE):
            assert ks.current_settings().forced == (("gemm", Tile.of(GEMM_TILE)),)
            assert _config.launch_meta("gemm")["BLOCK_M"] == 32
    finally:
        ks.set_settings(start)
    # ... and the getters read the object, however it was set
    with ks.use_settings(backend="triton", autotune=False, depthwise_variant="rows", forced={"gemm": GEMM_TILE}):
        assert kernels.get_backend() == "triton" and kernels.ops._resolve(None) == "triton"
        assert _config.autotune_enabled() is False and _config.depthwise_variant() == "rows"
        assert {k: _config.launch_meta("gemm")[k] for k in GEMM_TILE.kwargs} == GEMM_TILE.kwargs
    with ks.use_settings(backend="reference", depthwise_variant="tiles"):
        assert kernels.get_backend() == "reference" and _config.depthwise_variant() == "tiles"


def test_launch_meta_reads_the_settings_on_a_gpu_path(monkeypatch):
    """The GPU branch of ``launch_meta`` (checked on any machine): forced tile, else the default
    tile when autotuning is off, else None (autotune)."""
    monkeypatch.setattr(_config, "INTERPRETED", False)
    with ks.use_settings(autotune=True, forced=()):
        assert _config.launch_meta("gemm") is None
        with ks.use_settings(forced={"gemm": GEMM_TILE}):
            assert _config.launch_meta("gemm") == {**GEMM_TILE.kwargs, "num_warps": 4, "num_stages": 2}
            assert _config.launch_meta("depthwise") is None
        with ks.use_settings(autotune=False):
            d = _config.DEFAULT_GPU_CONFIG["depthwise_rows"]
            assert _config.launch_meta("depthwise_rows") == {**d.kwargs, "num_warps": d.num_warps,
                                                             "num_stages": d.num_stages}


def test_context_managers_restore_on_exit_and_on_errors():
    start = ks.current_settings()
    other = KernelSettings(backend="reference", autotune=not start.autotune, forced={"depthwise": GEMM_TILE},
                           depthwise_variant="rows" if start.depthwise_variant == "tiles" else "tiles")
    # a whole object: every field comes back, also after an exception
    with pytest.raises(RuntimeError, match="boom"):
        with ks.use_settings(other) as s:
            assert s == other and ks.current_settings() == other
            raise RuntimeError("boom")
    assert ks.current_settings() == start
    # nested changes unwind one level at a time
    with ks.use_settings(depthwise_variant="rows"):
        with ks.use_settings(autotune=False, depthwise_variant="tiles"):
            assert ks.current_settings() == start.replace(autotune=False, depthwise_variant="tiles")
        assert ks.current_settings() == start.replace(depthwise_variant="rows")
    assert ks.current_settings() == start
    # keyword changes restore only the fields they name (as the older context managers did)
    try:
        with kernels.use_backend("reference"):
            kernels.set_settings(autotune=not start.autotune)
        assert ks.current_settings() == start.replace(autotune=not start.autotune)
    finally:
        ks.set_settings(start)
    # the older context managers restore on errors too
    for cm in (kernels.use_backend("reference"), _config.use_depthwise_variant("rows"),
               _config.forced_config("gemm", GEMM_TILE), ks.use_settings(forced={"gemm": GEMM_TILE})):
        with pytest.raises(KeyError):
            with cm:
                assert ks.current_settings() != start
                raise KeyError("x")
        assert ks.current_settings() == start
    # forced_config restores only its family's tile
    with _config.forced_config("depthwise", _config.GPU_CONFIGS["depthwise"][2]):
        with _config.forced_config("gemm", GEMM_TILE):
            assert [f for f, _ in ks.current_settings().forced] == ["depthwise", "gemm"]
        assert ks.current_settings().forced == (("depthwise", Tile.of(_config.GPU_CONFIGS["depthwise"][2])),)
    assert ks.current_settings() == start
    # a rejected value changes nothing
    with pytest.raises(ValueError, match="depthwise variant"):
        with _config.use_depthwise_variant("winograd"):
            pass
    with pytest.raises(ValueError, match="unknown kernel family"):
        with _config.forced_config("winograd", GEMM_TILE):
            pass
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.set_backend("fast")
    assert ks.current_settings() == start
    # set_settings returns the settings it replaced
    assert ks.set_settings(other) == start and ks.set_settings(start) == other


def test_environment_sets_the_defaults(monkeypatch):
    for name in ("DFQ_KERNELS_AUTOTUNE", "DFQ_DEPTHWISE_VARIANT"):
        monkeypatch.delenv(name, raising=False)
    assert ks.settings_from_env() == KernelSettings()
    for value, on in (("0", False), ("false", False), (" No ", False), ("OFF", False), ("1", True), ("yes", True)):
        monkeypatch.setenv("DFQ_KERNELS_AUTOTUNE", value)
        assert ks.settings_from_env().autotune is on, value
    monkeypatch.setenv("DFQ_DEPTHWISE_VARIANT", " Rows ")
    assert ks.settings_from_env() == KernelSettings(autotune=True, depthwise_variant="rows")
    assert ks.settings_from_env({"DFQ_KERNELS_AUTOTUNE": "off"}) == KernelSettings(autotune=False)
    monkeypatch.setenv("DFQ_DEPTHWISE_VARIANT", "winograd")
    with pytest.raises(ValueError, match="DFQ_DEPTHWISE_VARIANT must be one of"):
        ks.settings_from_env()


def test_environment_is_read_at_import():
    """A fresh interpreter with the variables set starts with those settings (and the older
    getters report them); the defaults are the values read then."""
    code = (
        "import json, kernels; from kernels import _config, settings as s\n"
        "c = s.current_settings()\n"
        "print(json.dumps([c.backend, c.autotune, c.depthwise_variant, _config.autotune_enabled(),"
        " _config.depthwise_variant(), c == s.DEFAULT_SETTINGS == s.settings_from_env()]))\n"
    )
    env = dict(os.environ, DFQ_KERNELS_AUTOTUNE="off", DFQ_DEPTHWISE_VARIANT="rows", TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["auto", False, "rows", False, "rows", True]
    env["DFQ_DEPTHWISE_VARIANT"] = "winograd"
    bad = subprocess.run([sys.executable, "-c", "import kernels"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "DFQ_DEPTHWISE_VARIANT must be one of" in bad.stderr


def _triton_or_skip():
    if DEVICE == "cpu" and not _config.INTERPRETED:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")


def test_launch_plans_follow_later_setting_changes(monkeypatch):
    """Plans are bound once per layer; the variant and the tile are chosen at each call, so a plan
    built before a settings change launches what the new settings say (and stays bit-exact)."""
    _triton_or_skip()
    from kernels import depthwise, gemm

    g = torch.Generator().manual_seed(5)
    # depthwise: a plan built under "tiles" launches the rows kernel once "rows" is in force
    x = torch.randint(-128, 128, (1, 6, 5, 8), generator=g, dtype=torch.int8).to(DEVICE)
    w = torch.randint(-128, 128, (3, 3, 8), generator=g, dtype=torch.int8).to(DEVICE)
    args = ref.check_depthwise_args(x, w, None, None, 0.01, 3, -2, -128, 127, 1, 1)
    bias, w_zp, m, z_x, z_y, lo, hi, stride, pad = args
    expected = ref.int8_depthwise_conv2d(x, w, None, 0.01, z_x=3, z_y=-2, stride=1, padding=1)
    families, metas = [], []
    real_launch = depthwise.launch

    def spy(kernel, tuned, family, grid, a):
        families.append(family)
        return real_launch(kernel, tuned, family, grid, a)

    monkeypatch.setattr(depthwise, "launch", spy)
    with ks.use_settings(depthwise_variant="tiles"):
        plan = depthwise.DepthwisePlan(w, bias, w_zp, m, z_x, z_y, lo, hi, stride, pad, False)
        assert torch.equal(plan(x), expected)
    with ks.use_settings(depthwise_variant="rows"):
        assert torch.equal(plan(x), expected)
    assert families == ["depthwise", "depthwise_rows"]
    # GEMM: a plan built before a tile is forced launches with the forced tile
    a = torch.randint(-128, 128, (9, 40), generator=g, dtype=torch.int8).to(DEVICE)
    b = torch.randint(-128, 128, (12, 40), generator=g, dtype=torch.int8).to(DEVICE)
    bias, w_zp, m, z_x, z_y, lo, hi = ref.check_gemm_args(a, b, None, None, 0.02, 0, 1, -128, 127)
    gplan = gemm.GemmPlan(b, None, w_zp, m, z_y, lo, hi, False)
    real_gemm_launch = gemm.launch

    def gspy(kernel, tuned, family, grid, args_):
        metas.append(_config.launch_meta(family))
        return real_gemm_launch(kernel, tuned, family, grid, args_)

    monkeypatch.setattr(gemm, "launch", gspy)
    expected = ref.int8_gemm(a, b, None, 0.02, z_y=1)
    assert torch.equal(gplan(a), expected)
    with _config.forced_config("gemm", GEMM_TILE):
        assert torch.equal(gplan(a), expected)
    assert metas[1] is not None and {k: metas[1][k] for k in GEMM_TILE.kwargs} == GEMM_TILE.kwargs
    assert metas[0] != metas[1]
