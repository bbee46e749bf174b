"""Tuned tile tables: the tile each kernel launches with, per device, kernel and problem key.

A table is a JSON file under ``kernels/tiles/`` named after the card (``h200.json``,
``h100.json``; :func:`device_tag`), written by the sweep ``python -m dfq_gpu.bench.tiles`` from
the autotuners' caches after running the benchmark networks with autotuning on::

    {"schema": "dfq_int8-tiles/1", "device": "NVIDIA H200", "triton": "3.6.0",
     "created": "...", "source": "...",
     "kernels": {"int8_gemm_kernel": [
         {"key": {"M_BUCKET": 1048576, "N": 144, "K": 24, "HAS_WZP": false, "OUT_INT32": false},
          "config": {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8,
                     "num_warps": 4, "num_stages": 4}}, ...]}}

Kernel names are the ``@triton.jit`` function names without leading underscores; the key fields
are the kernel's ``triton.autotune`` key (``tuned.keys``), by name; the config holds the
meta-parameters of the family's tiles plus ``num_warps`` and ``num_stages``.

:func:`kernels._config.launch` chooses each GPU launch's tile in this order (:func:`select_tile`):
a forced tile (``kernels._config.forced_config``) > the table's entry for this kernel and key >
the nearest entry (settings field ``tile_match="nearest"``, the default; see below) > autotuning
(when on) > the family's default tile.

A table is tuned at a few batch sizes and one image size, while the autotune keys hold the
problem's size (``M_BUCKET``/``P_BUCKET``: output rows or pixels, a power of two; ``H``, ``W``,
``OW``: image sizes), so batch 64 or a 256x256 input finds no entry of the same key. The nearest
entry (:meth:`TileTable.nearest`) is one of the same kernel whose key agrees in every other field
(channels, window, stride, flags) and whose size fields are nearest: least ``sum |log2(table /
launch)|`` over :data:`SIZE_KEYS`, at most :data:`NEAREST_MAX_LOG2` (a factor of 16 in all;
ties go to the larger problem). Every tile of a family computes the same integers, so a tile
chosen for a neighbouring size is only a matter of speed. ``tile_match="exact"``
(``DFQ_KERNELS_TILE_MATCH=exact``) autotunes those launches instead. Under Triton's interpreter the interpreter tile
is used (or a forced one), never the table. The table is switched by the settings field
``tile_table`` (environment ``DFQ_KERNELS_TILE_TABLE=0`` turns it off; a path selects another
file: ``tile_table_file``).

A table is loaded once per (file, device) and checked when a kernel first looks into it: a
missing file means no table; a table written for another device is ignored with a warning; an
entry whose key fields are not the kernel's autotune key (a stale key, after the key changed) or
whose config names meta-parameters the family does not have (or lacks some) is ignored with a
logged warning.

Every launch through :func:`kernels._config.launch` is also noted (:func:`note_launch`): the last
tile per kernel and key (:func:`launched_tiles`), and, inside :func:`record_launches`, each
launch in order, so a benchmark can tell which tile every layer ran with. Autotuned launches are
resolved from the autotuner's cache (``tuned.cache``: key tuple -> chosen ``triton.Config``).

This module imports neither Triton nor the kernel modules (only torch, to name the device).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "SCHEMA",
    "TILES_DIR",
    "SOURCES",
    "SIZE_KEYS",
    "NEAREST_MAX_LOG2",
    "TileTable",
    "device_tag",
    "default_table_path",
    "load_table",
    "table_for",
    "current_device_name",
    "reset",
    "select_tile",
    "kernel_name",
    "config_json",
    "table_from_caches",
    "autotuner_caches",
    "merge_tables",
    "write_table",
    "note_launch",
    "launched_tiles",
    "clear_launches",
    "record_launches",
    "describe",
]

logger = logging.getLogger(__name__)

SCHEMA = "dfq_int8-tiles/1"
#: Where the committed tables live.
TILES_DIR = Path(__file__).resolve().with_name("tiles")
#: Where a launch's tile came from.
SOURCES = ("forced", "table", "nearest", "autotune", "default", "interpreter")
#: Autotune key fields that measure the problem's size rather than its kind: a nearest table
#: entry may differ from the launch in these, never in the others.
SIZE_KEYS = frozenset({"M_BUCKET", "P_BUCKET", "H", "W", "OW"})
#: Farthest a nearest entry may be: ``sum |log2(entry / launch)|`` over the size fields.
NEAREST_MAX_LOG2: float = 4.0
_LAUNCH_FIELDS = ("num_warps", "num_stages")


# =============================================================================================
# Device names and files
# =============================================================================================
def device_tag(name: Optional[str]) -> str:
    """Short file tag of a device name: ``"NVIDIA H200"`` -> ``"h200"`` (as benchmarks/gpu_check.sh)."""
    if not name:
        return "nogpu"
    for tag in ("H200", "H100", "A100", "L40S", "L4"):
        if tag in name:
            return tag.lower()
    return "".join(c if c.isalnum() else "_" for c in name).lower()


def default_table_path(device_name: Optional[str]) -> Path:
    """``kernels/tiles/<device tag>.json``."""
    return TILES_DIR / f"{device_tag(device_name)}.json"


_DEVICE_NAME: List[Optional[str]] = []  # cached once per process


def current_device_name() -> Optional[str]:
    """The name of the current CUDA device (read once per process), or None without CUDA."""
    if not _DEVICE_NAME:
        try:
            import torch

            _DEVICE_NAME.append(torch.cuda.get_device_name() if torch.cuda.is_available() else None)
        except Exception:  # pragma: no cover - no usable CUDA runtime
            _DEVICE_NAME.append(None)
    return _DEVICE_NAME[0]


# =============================================================================================
# The table
# =============================================================================================
def _key_value(v: Any) -> Any:
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)


class TileTable:
    """A loaded tile table (``data`` as in the module docstring); ``source`` names its file."""

    def __init__(self, data: Mapping[str, Any], source: str = "<memory>") -> None:
        self.source = source
        self.device: Optional[str] = data.get("device")
        self.triton: Optional[str] = data.get("triton")
        kernels = data.get("kernels") or {}
        self.kernels: Dict[str, List[Any]] = {str(k): list(v or []) for k, v in kernels.items()}
        self.warnings: List[str] = []
        self._index: Dict[Tuple[str, Tuple[str, ...], FrozenSet[str]], Dict[tuple, Dict[str, Any]]] = {}
        self._by_kind: Dict[Tuple[str, Tuple[str, ...], FrozenSet[str]], Dict[tuple, List[tuple]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.kernels.values())

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        logger.warning("tile table %s: %s", self.source, msg)

    def index(self, kernel: str, key_names: Sequence[str], meta_names: Iterable[str]) -> Dict[tuple, Dict[str, Any]]:
        """The usable entries of ``kernel``: key tuple (values in ``key_names`` order) -> launch
        meta (tile meta-parameters, ``num_warps``, ``num_stages``). Built (and its entries checked,
        with warnings) once per kernel."""
        ix = (kernel, tuple(key_names), frozenset(meta_names))
        found = self._index.get(ix)
        if found is None:
            found = self._index[ix] = self._build(*ix)
        return found

    def _build(self, kernel: str, key_names: Tuple[str, ...],
               meta_names: FrozenSet[str]) -> Dict[tuple, Dict[str, Any]]:  # fmt: skip
        out: Dict[tuple, Dict[str, Any]] = {}
        for i, entry in enumerate(self.kernels.get(kernel, [])):
            key = entry.get("key") if isinstance(entry, Mapping) else None
            config = entry.get("config") if isinstance(entry, Mapping) else None
            if not isinstance(key, Mapping) or set(key) != set(key_names):
                self._warn(f"{kernel} entry {i}: key fields {sorted(key) if isinstance(key, Mapping) else key!r} are "
                           f"not the kernel's autotune key {list(key_names)} (stale entry ignored)")
                continue
            if not isinstance(config, Mapping):
                self._warn(f"{kernel} entry {i}: no config (ignored)")
                continue
            meta = {k: v for k, v in config.items() if k not in _LAUNCH_FIELDS}
            unknown, missing = set(meta) - meta_names, meta_names - set(meta)
            if unknown or missing:
                self._warn(f"{kernel} entry {i}: config {dict(config)} names unknown meta-parameters "
                           f"{sorted(unknown)} or lacks {sorted(missing)} (ignored)")
                continue
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in config.values()):
                self._warn(f"{kernel} entry {i}: config {dict(config)} has non-integer values (ignored)")
                continue
            launch = dict(meta)
            launch["num_warps"] = int(config.get("num_warps", 4))
            launch["num_stages"] = int(config.get("num_stages", 3))
            out[tuple(_key_value(key[n]) for n in key_names)] = launch
        return out

    def lookup(self, kernel: str, key_names: Sequence[str], key_values: Sequence[Any],
               meta_names: Iterable[str]) -> Optional[Dict[str, Any]]:  # fmt: skip
        """The launch meta for ``kernel`` at ``key_values`` (a copy), or None."""
        hit = self.index(kernel, key_names, meta_names).get(tuple(key_values))
        return None if hit is None else dict(hit)

    def nearest(self, kernel: str, key_names: Sequence[str], key_values: Sequence[Any], meta_names: Iterable[str],
                max_log2: float = NEAREST_MAX_LOG2) -> Optional[Tuple[Dict[str, Any], tuple]]:  # fmt: skip
        """``(launch meta, entry key)`` of the entry of ``kernel`` nearest to ``key_values``: the
        same values in every field but the size fields (:data:`SIZE_KEYS`, positive ints), and
        the least ``sum |log2(entry / launch)|`` over those, at most ``max_log2``; ties go to the
        larger sizes. None when no entry qualifies (or the key has no size field)."""
        names = tuple(key_names)
        sized = _size_positions(names, key_values)
        if not sized:
            return None
        ix = (kernel, names, frozenset(meta_names))
        kinds = self._by_kind.get(ix)
        if kinds is None:  # entries grouped by their fields other than the size fields, once
            kinds = self._by_kind[ix] = {}
            for key, launch in self.index(*ix).items():
                at = _size_positions(names, key)
                kinds.setdefault((at, _kind_of(key, at)), []).append((key, launch))
        want = [math.log2(key_values[i]) for i in sized]
        best = None
        for key, launch in kinds.get((sized, _kind_of(tuple(key_values), sized)), ()):
            got = [math.log2(key[i]) for i in sized]
            distance = sum(abs(g - w) for g, w in zip(got, want))
            rank = (distance, [-g for g in got])
            if distance <= max_log2 and (best is None or rank < best[0]):
                best = (rank, key, launch)
        return None if best is None else (dict(best[2]), best[1])

    def summary(self) -> Dict[str, Any]:
        """JSON-ready description: file, device, Triton version, entries per kernel, warnings."""
        return {"file": self.source, "device": self.device, "triton": self.triton,
                "entries": {k: len(v) for k, v in sorted(self.kernels.items())}, "warnings": list(self.warnings)}


def _size_positions(key_names: Sequence[str], key_values: Sequence[Any]) -> Tuple[int, ...]:
    # the size fields of a key (SIZE_KEYS) that hold a positive int (else they must match exactly)
    return tuple(i for i, n in enumerate(key_names) if n in SIZE_KEYS and isinstance(key_values[i], int)
                 and not isinstance(key_values[i], bool) and key_values[i] > 0)  # fmt: skip


def _kind_of(key: tuple, sized: Tuple[int, ...]) -> tuple:
    return tuple(v for i, v in enumerate(key) if i not in sized)


def load_table(path: "os.PathLike[str] | str", device_name: Optional[str] = None) -> Optional[TileTable]:
    """Read a table; None (nothing used) when the file is missing, unreadable, of another schema,
    or written for another device than ``device_name`` (when given)."""
    p = Path(path)
    if not p.is_file():
        logger.debug("no tile table at %s", p)
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("tile table %s unreadable (%s): not used", p, exc)
        return None
    if not isinstance(data, Mapping) or data.get("schema") != SCHEMA:
        logger.warning("tile table %s: schema %r is not %r: not used", p,
                       data.get("schema") if isinstance(data, Mapping) else None, SCHEMA)
        return None
    if device_name is not None and data.get("device") != device_name:
        logger.warning("tile table %s was written for %r, not this device (%r): not used", p, data.get("device"),
                       device_name)
        return None
    return TileTable(data, str(p))


_TABLES: Dict[Tuple[Optional[str], Optional[str]], Optional[TileTable]] = {}


def table_for(settings: Any) -> Optional[TileTable]:
    """The table the kernel ``settings`` select for the current device (loaded once), or None."""
    if not settings.tile_table:
        return None
    device = current_device_name()
    key = (settings.tile_table_file, device)
    try:
        return _TABLES[key]
    except KeyError:
        pass
    if settings.tile_table_file is None and device is None:
        table = None
    else:
        table = load_table(settings.tile_table_file or default_table_path(device), device)
    _TABLES[key] = table
    return table


def reset() -> None:
    """Forget the loaded tables, the device name and the launch decisions made from them (tests;
    a table rewritten in place)."""
    _TABLES.clear()
    _DEVICE_NAME.clear()
    DECISIONS.clear()


#: The tile decisions of :func:`kernels._config.launch`, by ``(id(autotuner), family, key values,
#: id(settings))``, each holding its settings object (so that no id is reused while it is here).
DECISIONS: Dict[Tuple[Any, ...], Tuple[Any, Any]] = {}
_MAX_DECISIONS = 4096


def remember_decision(memo: Tuple[Any, ...], decision: Tuple[Any, Any]) -> None:
    """Store one launch decision (bounded: the store is emptied when full)."""
    if len(DECISIONS) >= _MAX_DECISIONS:
        DECISIONS.clear()
    DECISIONS[memo] = decision


# =============================================================================================
# Selection (pure: testable without a GPU)
# =============================================================================================
_META_OF: Dict[int, Tuple[Any, Dict[str, Any]]] = {}


def _launch_meta(cfg: Any) -> Dict[str, Any]:
    # built once per config object (launches are on the host's critical path); a fresh copy out
    hit = _META_OF.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        hit = _META_OF[id(cfg)] = (cfg, {**cfg.kwargs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    return dict(hit[1])


def select_tile(
    *,
    forced: Any,
    interpreted: bool,
    interpret_meta: Mapping[str, Any],
    table: Optional[TileTable],
    kernel: Optional[str],
    key_names: Sequence[str] = (),
    key_values: Sequence[Any] = (),
    meta_names: Iterable[str] = (),
    autotune: bool,
    default: Any,
    match: str = "exact",
) -> Tuple[str, Optional[Dict[str, Any]]]:
    """``(source, meta)`` of one launch; ``meta`` None means "through the autotuner".

    Interpreter: the forced tile's meta-parameters, else the interpreter tile. GPU: the forced
    tile > the table's entry for ``kernel`` at ``key_values`` > with ``match="nearest"``, the
    nearest entry (:meth:`TileTable.nearest`) > autotuning (when on) > the family's ``default``
    config."""
    if interpreted:
        return ("forced", dict(forced.kwargs)) if forced is not None else ("interpreter", dict(interpret_meta))
    if forced is not None:
        return "forced", _launch_meta(forced)
    if table is not None and kernel is not None:
        hit = table.lookup(kernel, key_names, key_values, meta_names)
        if hit is not None:
            return "table", hit
        if match == "nearest":
            near = table.nearest(kernel, key_names, key_values, meta_names)
            if near is not None:
                return "nearest", near[0]
    if autotune:
        return "autotune", None
    return "default", _launch_meta(default)


# =============================================================================================
# Writing tables (the sweep)
# =============================================================================================
def kernel_name(kernel: Any) -> str:
    """Table name of a ``@triton.jit`` function (or an autotuner of one): its name without
    leading underscores."""
    fn = getattr(kernel, "fn", None) if type(kernel).__name__ == "Autotuner" else kernel
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", None) or repr(fn)
    return str(name).lstrip("_")


def config_json(cfg: Any) -> Dict[str, Any]:
    """A ``triton.Config`` (or :class:`kernels.settings.Tile`) as a table config."""
    return {**{k: _key_value(v) for k, v in cfg.kwargs.items()}, "num_warps": cfg.num_warps,
            "num_stages": cfg.num_stages}


def _named_key(key_names: Sequence[str], cache_key: Sequence[Any]) -> Dict[str, Any]:
    # the autotuner's cache key: the key arguments' values in key order, then the dtypes of the
    # tensor arguments (not part of the table key: fixed by the kernel and its flags)
    return {n: _key_value(v) for n, v in zip(key_names, cache_key)}


def table_from_caches(caches: Iterable[Tuple[str, Sequence[str], Mapping[tuple, Any]]], device: Optional[str],
                      triton_version: Optional[str], **extra: Any) -> Dict[str, Any]:  # fmt: skip
    """A table (JSON-ready dict) from autotuner caches: ``(kernel name, key names, cache)`` with
    ``cache`` mapping the autotuner's key tuple to the chosen config."""
    kernels: Dict[str, Dict[tuple, Dict[str, Any]]] = {}
    for name, key_names, cache in caches:
        for cache_key, cfg in cache.items():
            if len(cache_key) < len(key_names):
                continue
            key = _named_key(key_names, cache_key)
            kernels.setdefault(name, {})[tuple(key[n] for n in key_names)] = {"key": key, "config": config_json(cfg)}
    out = {
        "schema": SCHEMA,
        "device": device,
        "triton": triton_version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
        "kernels": {name: [v for _, v in sorted(entries.items(), key=lambda kv: repr(kv[0]))]
                    for name, entries in sorted(kernels.items())},
    }
    return out


def autotuner_caches(modules: Iterable[Any]) -> List[Tuple[str, Sequence[str], Mapping[tuple, Any]]]:
    """``(kernel name, key names, cache)`` of every ``triton.autotune`` object in ``modules``."""
    found = []
    for mod in modules:
        for obj in vars(mod).values():
            if type(obj).__name__ == "Autotuner" and hasattr(obj, "cache"):
                found.append((kernel_name(obj), list(obj.keys), dict(obj.cache)))
    return found


def merge_tables(old: Optional[Mapping[str, Any]], new: Mapping[str, Any]) -> Dict[str, Any]:
    """``new`` with the entries of ``old`` (same schema and device) it does not re-tune."""
    if not old or old.get("schema") != SCHEMA or old.get("device") != new.get("device"):
        return dict(new)
    merged = {k: v for k, v in new.items() if k != "kernels"}
    kernels: Dict[str, Dict[str, Any]] = {}
    for table in (old, new):
        for name, entries in (table.get("kernels") or {}).items():
            for e in entries:
                kernels.setdefault(name, {})[json.dumps(e.get("key"), sort_keys=True)] = e
    merged["kernels"] = {n: [e for _, e in sorted(es.items())] for n, es in sorted(kernels.items())}
    return merged


def write_table(path: "os.PathLike[str] | str", table: Mapping[str, Any]) -> Path:
    """Write ``table`` as JSON (atomically); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(table, indent=1) + "\n")
    os.replace(tmp, p)
    return p


# =============================================================================================
# Bookkeeping of launches: which tile each kernel ran with
# =============================================================================================
#: (kernel name, key values) -> the last launch's record
_LAUNCHED: Dict[Tuple[str, tuple], Tuple[Any, ...]] = {}
_RECORDER: List[List[Tuple[Any, ...]]] = []
_KEYS: Dict[int, Tuple[Any, str, Tuple[str, ...]]] = {}


def launch_key(kernel: Any, tuned: Any, args: Mapping[str, Any]) -> Tuple[str, Tuple[str, ...], tuple]:
    """``(kernel name, autotune key names, key values)`` of a launch (names cached per kernel)."""
    hit = _KEYS.get(id(tuned))
    if hit is None or hit[0] is not tuned:
        hit = _KEYS[id(tuned)] = (tuned, kernel_name(kernel), tuple(getattr(tuned, "keys", ()) or ()))
    _, name, keys = hit
    return name, keys, tuple([args.get(k) for k in keys])


def note_launch(name: str, family: str, key_names: Tuple[str, ...], key_values: tuple, source: str,
                meta: Optional[Dict[str, Any]], tuned: Any) -> None:  # fmt: skip
    """Remember one launch (called by :func:`kernels._config.launch`)."""
    rec = (name, family, key_names, key_values, source, meta, tuned)
    _LAUNCHED[(name, key_values)] = rec
    if _RECORDER:
        _RECORDER[-1].append(rec)


def _resolve_autotuned(tuned: Any, key_values: tuple) -> Optional[Dict[str, Any]]:
    n = len(key_values)
    for cache_key, cfg in list(getattr(tuned, "cache", {}).items()):
        if tuple(cache_key[:n]) == tuple(key_values):
            return config_json(cfg)
    return None


def describe(rec: Tuple[Any, ...]) -> Dict[str, Any]:
    """A launch record as JSON: kernel, family, key by name, source and the config it ran with
    (autotuned launches: read from the autotuner's cache)."""
    name, family, key_names, key_values, source, meta, tuned = rec
    config = dict(meta) if meta is not None else _resolve_autotuned(tuned, key_values)
    return {"kernel": name, "family": family, "key": {k: _key_value(v) for k, v in zip(key_names, key_values)},
            "source": source, "config": config}


def launched_tiles() -> List[Dict[str, Any]]:
    """Every (kernel, key) launched since the last :func:`clear_launches`, with its last tile."""
    return [describe(r) for r in _LAUNCHED.values()]


def clear_launches() -> None:
    _LAUNCHED.clear()


@contextlib.contextmanager
def record_launches() -> Iterator[List[Tuple[Any, ...]]]:
    """Collect the records of the launches inside the block, in order (see :func:`describe`)."""
    records: List[Tuple[Any, ...]] = []
    _RECORDER.append(records)
    try:
        yield records
    finally:
        for i in range(len(_RECORDER) - 1, -1, -1):
            if _RECORDER[i] is records:
                del _RECORDER[i]
                break
