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
    for name in ("DFQ_KERNELS_AUTOTUNE", "DFQ_DEPTHWISE_VARIANT", "DFQ_GEMM_VARIANT", "DFQ_KERNELS_TILE_TABLE",
                 "DFQ_KERNELS_TILE_MATCH"):
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
    monkeypatch.delenv("DFQ_DEPTHWISE_VARIANT")
    monkeypatch.setenv("DFQ_GEMM_VARIANT", " TMA ")
    assert ks.settings_from_env() == KernelSettings(gemm_variant="tma")
    monkeypatch.setenv("DFQ_GEMM_VARIANT", "wgmma")
    with pytest.raises(ValueError, match="DFQ_GEMM_VARIANT must be one of"):
        ks.settings_from_env()
    with pytest.raises(ValueError, match="gemm variant must be one of"):
        KernelSettings(gemm_variant="cutlass")
    assert ks.settings_from_env({"DFQ_KERNELS_TILE_MATCH": " Exact "}) == KernelSettings(tile_match="exact")
    assert KernelSettings().tile_match == "nearest"
    with pytest.raises(ValueError, match="DFQ_KERNELS_TILE_MATCH must be one of"):
        ks.settings_from_env({"DFQ_KERNELS_TILE_MATCH": "closest"})
    with pytest.raises(ValueError, match="tile match must be one of"):
        KernelSettings(tile_match="any")


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


# =============================================================================================
# Tuned tile tables (kernels.tiles): lookup order, switch, loader edge cases, the sweep's writer
# =============================================================================================
H200 = "NVIDIA H200"
GEMM_KEYS = ("M_BUCKET", "N", "K", "HAS_WZP", "OUT_INT32")
TABLE_TILE = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 2, "num_stages": 3}


def _gemm_table(tmp_path, device=H200, entries=None, name="table.json"):
    from kernels import tiles

    key = {"M_BUCKET": 64, "N": 16, "K": 32, "HAS_WZP": False, "OUT_INT32": False}
    data = {"schema": tiles.SCHEMA, "device": device, "triton": "3.6.0",
            "kernels": {"int8_gemm_kernel": entries if entries is not None else [{"key": key, "config": TABLE_TILE}]}}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


class _FakeAutotuner:
    """What the table code reads of a ``triton.autotune`` object (named like Triton's class)."""

    def __init__(self, fn, keys, cache=None):
        self.fn, self.keys, self.cache = fn, list(keys), dict(cache or {})


_FakeAutotuner.__name__ = "Autotuner"


def _fake_kernel():
    def _int8_gemm_kernel():  # noqa: ANN202 - only its name matters
        pass

    return _int8_gemm_kernel


def test_tile_selection_order_and_switch(tmp_path, monkeypatch, caplog):
    """forced > table entry > autotune > default on the GPU path; the interpreter tile under the
    interpreter; ``tile_table=False`` (or DFQ_KERNELS_TILE_TABLE=0) skips the table."""
    from kernels import tiles

    default = _config.DEFAULT_GPU_CONFIG["gemm"]
    table = tiles.load_table(_gemm_table(tmp_path), H200)
    key_vals = (64, 16, 32, False, False)
    common = dict(interpret_meta=_config.INTERPRET_META["gemm"], kernel="int8_gemm_kernel", key_names=GEMM_KEYS,
                  meta_names=default.kwargs, default=default)
    sel = lambda **kw: tiles.select_tile(**{**common, **kw})  # noqa: E731
    forced = Tile.of(GEMM_TILE)
    assert sel(forced=forced, interpreted=False, table=table, key_values=key_vals, autotune=True) == (
        "forced", {**GEMM_TILE.kwargs, "num_warps": 4, "num_stages": 2})
    assert sel(forced=None, interpreted=False, table=table, key_values=key_vals, autotune=True) == ("table", TABLE_TILE)
    assert sel(forced=None, interpreted=False, table=table, key_values=key_vals, autotune=False) == (
        "table", TABLE_TILE)
    other_key = (128, 16, 32, False, False)  # another batch: only the size field differs
    assert sel(forced=None, interpreted=False, table=table, key_values=other_key, autotune=True) == ("autotune", None)
    assert sel(forced=None, interpreted=False, table=table, key_values=other_key, autotune=True,
               match="nearest") == ("nearest", TABLE_TILE)
    assert sel(forced=None, interpreted=False, table=table, key_values=(128, 24, 32, False, False), autotune=False,
               match="nearest")[0] == "default"  # another N: no entry is near
    assert sel(forced=None, interpreted=False, table=None, key_values=key_vals, autotune=False) == (
        "default", {**default.kwargs, "num_warps": default.num_warps, "num_stages": default.num_stages})
    assert sel(forced=None, interpreted=True, table=table, key_values=key_vals, autotune=True) == (
        "interpreter", dict(_config.INTERPRET_META["gemm"]))
    assert sel(forced=forced, interpreted=True, table=table, key_values=key_vals, autotune=True) == (
        "forced", dict(GEMM_TILE.kwargs))
    # through kernels._config.launch_meta, as a GPU launch reads the settings and the table
    monkeypatch.setattr(_config, "INTERPRETED", False)
    monkeypatch.setattr(tiles, "current_device_name", lambda: H200)
    tiles.reset()
    kernel = _fake_kernel()
    tuned = _FakeAutotuner(kernel, GEMM_KEYS)
    args = dict(M_BUCKET=64, N=16, K=32, HAS_WZP=False, OUT_INT32=False, M=50, x_ptr=None)
    meta = lambda **kw: _config.launch_meta("gemm", kernel, tuned, args, with_source=True)  # noqa: E731
    try:
        with ks.use_settings(autotune=True, forced=(), tile_table=True, tile_table_file=str(_gemm_table(tmp_path))):
            assert meta() == ("table", TABLE_TILE)
            assert _config.launch_meta("gemm") is None  # without the kernel and its key: no table
            with _config.forced_config("gemm", GEMM_TILE):
                assert meta()[0] == "forced"
            with ks.use_settings(tile_table=False):
                assert meta() == ("autotune", None)
                with ks.use_settings(autotune=False):
                    assert meta()[0] == "default"
            args["M_BUCKET"] = 1024  # a larger batch: the nearest entry (16x), unless exact matches are asked for
            assert meta() == ("nearest", TABLE_TILE)
            with ks.use_settings(tile_match="exact"):
                assert meta() == ("autotune", None)
            args["M_BUCKET"] = 2048  # 32x: too far
            assert meta() == ("autotune", None)
            args["M_BUCKET"], args["N"] = 64, 24  # a key the table does not hold
            assert meta() == ("autotune", None)
        # a table for another device is not used
        with ks.use_settings(autotune=False, tile_table_file=str(_gemm_table(tmp_path, device="NVIDIA H100",
                                                                                      name="h100.json"))):
            args["N"] = 16
            with caplog.at_level("WARNING", logger="kernels.tiles"):
                assert meta()[0] == "default"
            assert "written for 'NVIDIA H100'" in caplog.text
    finally:
        tiles.reset()
    # the environment switch
    assert ks.settings_from_env({"DFQ_KERNELS_TILE_TABLE": "0"}).tile_table is False
    assert ks.settings_from_env({"DFQ_KERNELS_TILE_TABLE": "on"}) == KernelSettings()
    custom = ks.settings_from_env({"DFQ_KERNELS_TILE_TABLE": "/x/h200.json"})
    assert custom.tile_table is True and custom.tile_table_file == "/x/h200.json"
    assert KernelSettings().tile_table is True and KernelSettings().tile_table_file is None


def test_nearest_tile_table_entry():
    """Without an entry of the launch's key, the entry of the same kernel that differs only in the
    size fields (bucketed rows, image sizes) by the least factor, within NEAREST_MAX_LOG2; ties
    to the larger problem; never across channels, windows, strides or flags."""
    from kernels import tiles

    keys = ("M_BUCKET", "N", "C", "H", "W", "KH", "KW", "stride_h", "stride_w", "HAS_WZP", "OUT_INT32")
    meta_names = _config.DEFAULT_GPU_CONFIG["gemm"].kwargs

    def entry(m, h, n=64, stride=1, wzp=False, block_m=64):
        key = dict(zip(keys, (m, n, 32, h, h, 3, 3, stride, stride, wzp, False)))
        return {"key": key, "config": {**TABLE_TILE, "BLOCK_M": block_m}}

    table = tiles.TileTable({"kernels": {"int8_conv2d_kernel": [
        entry(1 << 20, 56, block_m=128),  # batch 256 at 224x224
        entry(1 << 17, 56, block_m=64),  # batch 32
        entry(1 << 12, 56, block_m=32),  # batch 1
        entry(1 << 16, 56, n=128, block_m=256),  # other N
        entry(1 << 16, 56, stride=2, block_m=256),  # other stride
        entry(1 << 16, 56, wzp=True, block_m=256),  # other flag
    ]}})

    def near(m, h, **kw):
        got = table.nearest("int8_conv2d_kernel", keys, (m, 64, 32, h, h, 3, 3, 1, 1, False, False), meta_names, **kw)
        return None if got is None else (got[0]["BLOCK_M"], got[1][0])

    assert near(1 << 17, 56) == (64, 1 << 17)  # the exact key is the nearest
    assert near(1 << 16, 56) == (64, 1 << 17)  # batch 16: 2x from batch 32, 16x from batch 1
    assert near(1 << 18, 56) == (64, 1 << 17)  # 2x from batch 32, 4x from batch 256
    assert near(1 << 19, 56) == (128, 1 << 20)  # 2x from batch 256, 4x from batch 32
    assert near(1 << 14, 56) == (32, 1 << 12)  # 4x from batch 1, 8x from batch 32
    assert near(1 << 20, 64) == (128, 1 << 20)  # a 256x256 input: H and W 64/56 from the table's
    assert near(1 << 22, 112) == (128, 1 << 20)  # 4x the rows, 2x each side: 2 + 1 + 1 = 4, the limit
    assert near(1 << 23, 112) is None  # 5: too far
    assert near(1 << 16, 56, max_log2=0.5) is None and near(1 << 17, 56, max_log2=0) == (64, 1 << 17)
    # nothing across other fields: an N, stride or flag of no entry finds none
    assert table.nearest("int8_conv2d_kernel", keys, (1 << 17, 96, 32, 56, 56, 3, 3, 1, 1, False, False),
                         meta_names) is None
    assert table.nearest("int8_conv2d_kernel", keys, (1 << 17, 64, 32, 56, 56, 3, 3, 2, 2, False, False),
                         meta_names)[0]["BLOCK_M"] == 256  # the stride-2 entry, 2x away
    assert table.nearest("int8_gemm_kernel", GEMM_KEYS, (64, 16, 32, False, False), meta_names) is None
    # a tie goes to the larger problem
    tie = tiles.TileTable({"kernels": {"int8_conv2d_kernel": [entry(1 << 10, 56, block_m=32),
                                                              entry(1 << 14, 56, block_m=128)]}})
    got = tie.nearest("int8_conv2d_kernel", keys, (1 << 12, 64, 32, 56, 56, 3, 3, 1, 1, False, False), meta_names)
    assert got[0]["BLOCK_M"] == 128 and got[1][0] == 1 << 14
    # the launch meta is a copy
    got[0]["BLOCK_M"] = 0
    assert tie.nearest("int8_conv2d_kernel", keys, (1 << 12, 64, 32, 56, 56, 3, 3, 1, 1, False, False),
                       meta_names)[0]["BLOCK_M"] == 128


def test_tile_table_loader_ignores_what_it_cannot_use(tmp_path, caplog):
    from kernels import tiles

    meta_names = _config.DEFAULT_GPU_CONFIG["gemm"].kwargs
    assert tiles.load_table(tmp_path / "missing.json", H200) is None  # no file: nothing used
    (tmp_path / "bad.json").write_text("{not json")
    assert tiles.load_table(tmp_path / "bad.json", H200) is None
    (tmp_path / "schema.json").write_text(json.dumps({"schema": "other/1", "device": H200, "kernels": {}}))
    assert tiles.load_table(tmp_path / "schema.json", H200) is None
    good = {"M_BUCKET": 64, "N": 16, "K": 32, "HAS_WZP": False, "OUT_INT32": False}
    entries = [
        {"key": {**good, "N": 8}, "config": TABLE_TILE},
        {"key": {"M_BUCKET": 64, "N": 16, "K": 32}, "config": TABLE_TILE},  # stale key (fields changed)
        {"key": {**good, "N": 24}, "config": {**TABLE_TILE, "BLOCK_Q": 16}},  # unknown meta-parameter
        {"key": {**good, "N": 40}, "config": {"BLOCK_M": 64, "num_warps": 4}},  # missing meta-parameters
        {"key": {**good, "N": 48}, "config": {**TABLE_TILE, "BLOCK_M": "64"}},  # not an int
        "not an entry",
    ]
    with caplog.at_level("WARNING", logger="kernels.tiles"):
        table = tiles.load_table(_gemm_table(tmp_path, entries=entries), H200)
        assert table is not None and len(table) == 6
        ix = table.index("int8_gemm_kernel", GEMM_KEYS, meta_names)
    assert list(ix) == [(64, 8, 32, False, False)] and ix[(64, 8, 32, False, False)] == TABLE_TILE
    assert len(table.warnings) == 5 and "stale" in caplog.text and "BLOCK_Q" in caplog.text
    assert table.lookup("int8_gemm_kernel", GEMM_KEYS, (64, 24, 32, False, False), meta_names) is None
    assert table.lookup("int8_conv2d_kernel", ("N",), (8,), meta_names) is None  # no entries for that kernel
    # the whole table for this device; without a device name any table is accepted
    assert tiles.load_table(_gemm_table(tmp_path), None) is not None
    assert table.summary()["entries"] == {"int8_gemm_kernel": 6}
    assert tiles.device_tag(H200) == "h200" and tiles.device_tag("NVIDIA H100 80GB HBM3") == "h100"
    assert tiles.default_table_path(H200) == tiles.TILES_DIR / "h200.json"


def test_tile_table_written_from_an_autotune_cache_round_trips(tmp_path):
    """The sweep's writer: autotuner caches (key tuple + tensor dtypes -> triton.Config) to a
    table, merged with an older one, written, loaded and looked up; launch bookkeeping resolves
    autotuned launches from the same cache."""
    import types

    from kernels import tiles

    cfg = _config.GEMM_GPU_CONFIGS[3]
    other = _config.GEMM_GPU_CONFIGS[5]
    tuned = _FakeAutotuner(_fake_kernel(), GEMM_KEYS, {
        (1048576, 144, 24, False, False, "torch.int8", "torch.int8", "torch.int32"): cfg,
        (65536, 576, 96, True, False, "torch.int8", "torch.int8"): other,
    })
    module = types.SimpleNamespace(_int8_gemm_kernel_tuned=tuned, something_else=3)
    caches = tiles.autotuner_caches([module])
    assert [(n, list(k)) for n, k, _ in caches] == [("int8_gemm_kernel", list(GEMM_KEYS))]
    data = tiles.table_from_caches(caches, H200, "3.6.0", source="test")
    assert data["schema"] == tiles.SCHEMA and data["device"] == H200 and data["source"] == "test"
    (e1, e2) = sorted(data["kernels"]["int8_gemm_kernel"], key=lambda e: e["key"]["N"])
    assert e1["key"] == {"M_BUCKET": 1048576, "N": 144, "K": 24, "HAS_WZP": False, "OUT_INT32": False}
    assert e1["config"] == {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    assert e2["key"]["HAS_WZP"] is True
    # merging keeps an older entry that was not re-tuned, and the new one where both have the key
    old = tiles.table_from_caches([("int8_gemm_kernel", GEMM_KEYS, {(8, 8, 8, False, False): other,
                                                                   (1048576, 144, 24, False, False): other})],
                                  H200, "3.6.0")  # fmt: skip
    merged = tiles.merge_tables(old, data)
    by_n = {e["key"]["N"]: e for e in merged["kernels"]["int8_gemm_kernel"]}
    assert set(by_n) == {8, 144, 576} and by_n[144]["config"]["BLOCK_N"] == cfg.kwargs["BLOCK_N"]
    assert tiles.merge_tables({**old, "device": "NVIDIA H100"}, data) == data  # another device: not merged
    path = tiles.write_table(tmp_path / "tiles" / "h200.json", merged)
    table = tiles.load_table(path, H200)
    meta_names = _config.DEFAULT_GPU_CONFIG["gemm"].kwargs
    assert table.lookup("int8_gemm_kernel", GEMM_KEYS, (1048576, 144, 24, False, False), meta_names) == e1["config"]
    assert table.lookup("int8_gemm_kernel", GEMM_KEYS, (8, 8, 8, False, False), meta_names) is not None
    assert not table.warnings
    # an autotuned launch is described with the config the autotuner's cache chose
    args = dict(M_BUCKET=65536, N=576, K=96, HAS_WZP=True, OUT_INT32=False)
    name, names, values = tiles.launch_key(tuned.fn, tuned, args)
    with tiles.record_launches() as rec:
        tiles.note_launch(name, "gemm", names, values, "autotune", None, tuned)
    (d,) = [tiles.describe(r) for r in rec]
    assert d == {"kernel": "int8_gemm_kernel", "family": "gemm", "key": args, "source": "autotune",
                 "config": {**other.kwargs, "num_warps": other.num_warps, "num_stages": other.num_stages}}
    assert d in tiles.launched_tiles()


def test_tile_sweep_quick(tmp_path):
    """``python -m dfq_gpu.bench.tiles --quick``: a tiny network through the interpreter, its
    launched keys written as a table that no GPU would load (named after the CPU)."""
    if not _config.INTERPRETED:
        pytest.skip("the quick sweep runs under Triton's interpreter")
    from dfq_gpu.bench import tiles as sweep
    from kernels import tiles

    out = tmp_path / "tiles.json"
    data = sweep.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == data
    assert data["schema"] == tiles.SCHEMA and data["sweep"]["mode"] == "quick" and data["sweep"]["complete"]
    assert {"int8_gemm_kernel", "int8_conv2d_kernel", "int8_depthwise_kernel"} <= set(data["kernels"])
    assert tiles.load_table(out, H200) is None  # written for the CPU: never used on a GPU
    table = tiles.load_table(out)
    for name, entries in data["kernels"].items():
        for e in entries:
            assert set(e["config"]) >= {"num_warps", "num_stages"}
    assert len(table) == sum(len(v) for v in data["kernels"].values())
    assert sweep.main.__module__ == "dfq_gpu.bench.tiles"
