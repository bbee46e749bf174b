"""The kernel settings in force: one frozen :class:`KernelSettings` object.

Everything that changes which kernel runs, or with which tile, without changing any result:

* ``backend``: the default backend of the operators (``"auto"``, ``"triton"``, ``"reference"``;
  see :mod:`kernels.ops`);
* ``autotune``: whether GPU launches go through ``triton.autotune`` (off: each family's default
  tile, ``kernels._config.DEFAULT_GPU_CONFIG``);
* ``forced``: tiles forced per kernel family (``"gemm"``, ``"depthwise"``, ``"depthwise_rows"``),
  bypassing autotuning, as sorted ``(family, Tile)`` pairs;
* ``depthwise_variant``: the depthwise kernel, ``"tiles"``, ``"rows"`` or ``"tma"``;
* ``gemm_variant``: the GEMM and convolution kernels, ``"pointers"`` or ``"tma"`` (a persistent
  grid loading through TMA descriptors, on Hopper and later, where the operands' layout allows);
* ``tile_table``: whether GPU launches take their tile from the tuned tile table of the device
  (:mod:`kernels.tiles`; order: forced tile > table entry > nearest entry > autotuning > default tile);
* ``tile_table_file``: the table to read (``None``: ``kernels/tiles/<device>.json``);
* ``tile_match``: how a launch finds its table entry, ``"nearest"`` (default: the entry of the
  same kernel and key, else the one whose key differs only in the problem's size fields, batch
  rows or image sizes, by the least factor, within ``kernels.tiles.NEAREST_MAX_LOG2``) or
  ``"exact"`` (only an entry of the same key).

:func:`current_settings` returns the object in force; :func:`set_settings` and the context
manager :func:`use_settings` replace it. The older switches (``kernels.set_backend`` /
``use_backend``, ``kernels._config.set_autotune`` / ``forced_config`` /
``set_depthwise_variant`` / ``use_depthwise_variant``) are thin wrappers of these. The defaults
are read from the environment once, when this module is imported (:func:`settings_from_env`:
``DFQ_KERNELS_AUTOTUNE``, ``DFQ_DEPTHWISE_VARIANT``, ``DFQ_GEMM_VARIANT``,
``DFQ_KERNELS_TILE_TABLE``, ``DFQ_KERNELS_TILE_MATCH``).

Anything that caches work depending on a setting keys it on the whole object (it is hashable and
compares by value): ``dfq_gpu.int8.GraphedNetwork`` captures its CUDA graphs again when it
changes. The launch plans (``kernels.gemm.GemmPlan`` ...) cache nothing that depends on it: they
read it on every call.

This module does not import Triton.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Dict, Iterable, Iterator, Mapping, NamedTuple, Optional, Tuple, Union

__all__ = [
    "BACKENDS",
    "DEPTHWISE_VARIANTS",
    "GEMM_VARIANTS",
    "TILE_MATCHES",
    "KERNEL_FAMILIES",
    "Tile",
    "KernelSettings",
    "settings_from_env",
    "DEFAULT_SETTINGS",
    "current_settings",
    "set_settings",
    "use_settings",
]

#: Operator backends (see :mod:`kernels.ops`).
BACKENDS = ("auto", "triton", "reference")

#: Depthwise kernels: "tiles" (pixel x channel tiles, any stride), "rows" (stride-1 windows
#: of at most ``kernels._config.DEPTHWISE_ROWS_MAX_KH`` rows walk down the image) or "tma"
#: (stride 1 or 2, channels a multiple of 16, compute capability 9.0 or the interpreter: patches
#: of the image, or of its parity phases, loaded tap by tap as TMA boxes in pipelined loops);
#: other cases use "tiles".
DEPTHWISE_VARIANTS = ("tiles", "rows", "tma")

#: GEMM and implicit-GEMM convolution kernels (``kernels.gemm``, ``kernels.conv``): "pointers"
#: (one program per output tile, pointer loads) or "tma" (a persistent grid of at most one program
#: per SM, operand blocks loaded through TMA descriptors; used on compute capability 9.0 and later,
#: and under Triton's interpreter, for GEMMs with K a multiple of 16 and convolutions of stride 1
#: or 2 with C a multiple of 16, operands 16-byte aligned; other launches use "pointers").
GEMM_VARIANTS = ("pointers", "tma")

#: How a launch finds its entry in the tuned tile table: "nearest" (the same key, else the
#: nearest one in the problem's size fields, see ``kernels.tiles.TileTable.nearest``) or "exact".
TILE_MATCHES = ("nearest", "exact")

#: Kernel families a tile can be forced for (the keys of ``kernels._config.GPU_CONFIGS``):
#: ``"gemm"`` (GEMM and convolution), ``"depthwise"`` (depthwise convolution and max pooling),
#: ``"depthwise_rows"`` and ``"depthwise_tma"`` (the rows and TMA variants of the depthwise
#: convolution).
KERNEL_FAMILIES = ("depthwise", "depthwise_rows", "depthwise_tma", "gemm")


class Tile(NamedTuple):
    """A forced launch configuration in hashable form: the meta-parameters (sorted ``(name,
    value)`` pairs), warps and stages of a ``triton.Config`` (the parts a launch uses)."""

    meta: Tuple[Tuple[str, Any], ...]
    num_warps: Any
    num_stages: Any

    @property
    def kwargs(self) -> Dict[str, Any]:
        """The meta-parameters as a dict (as ``triton.Config.kwargs``)."""
        return dict(self.meta)

    @classmethod
    def of(cls, config: Any) -> "Tile":
        """The tile of a ``triton.Config`` (or of a :class:`Tile`)."""
        if isinstance(config, Tile):
            return config
        try:
            meta, warps, stages = config.kwargs, config.num_warps, config.num_stages
        except AttributeError:
            raise ValueError(f"a forced tile must be a triton.Config or a kernels.settings.Tile, "
                             f"got {type(config).__name__}") from None
        return cls(tuple(sorted(meta.items())), warps, stages)


def _check_backend(name: Any) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def _check_variant(name: Any) -> str:
    if name not in DEPTHWISE_VARIANTS:
        raise ValueError(f"depthwise variant must be one of {DEPTHWISE_VARIANTS}, got {name!r}")
    return name


def _check_gemm_variant(name: Any) -> str:
    if name not in GEMM_VARIANTS:
        raise ValueError(f"gemm variant must be one of {GEMM_VARIANTS}, got {name!r}")
    return name


def _check_tile_match(name: Any) -> str:
    if name not in TILE_MATCHES:
        raise ValueError(f"tile match must be one of {TILE_MATCHES}, got {name!r}")
    return name


def _check_family(family: Any) -> str:
    if family not in KERNEL_FAMILIES:
        raise ValueError(f"unknown kernel family {family!r}; expected one of {sorted(KERNEL_FAMILIES)}")
    return family


ForcedTiles = Union[Mapping[str, Any], Iterable[Tuple[str, Any]]]


@dataclasses.dataclass(frozen=True)
class KernelSettings:
    """The kernel settings (immutable, hashable, compared by value).

    ``forced`` may be given as a mapping or pairs ``family -> triton.Config`` (or :class:`Tile`);
    it is stored as ``(family, Tile)`` pairs sorted by family. Invalid values raise
    ``ValueError``.
    """

    backend: str = "auto"
    autotune: bool = True
    forced: Tuple[Tuple[str, Tile], ...] = ()
    depthwise_variant: str = "tiles"
    gemm_variant: str = "pointers"
    tile_table: bool = True
    tile_table_file: Optional[str] = None
    tile_match: str = "nearest"

    def __post_init__(self) -> None:
        _check_backend(self.backend)
        _check_tile_match(self.tile_match)
        _check_variant(self.depthwise_variant)
        _check_gemm_variant(self.gemm_variant)
        object.__setattr__(self, "autotune", bool(self.autotune))
        object.__setattr__(self, "tile_table", bool(self.tile_table))
        if self.tile_table_file is not None:
            object.__setattr__(self, "tile_table_file", os.fspath(self.tile_table_file))
        pairs = self.forced.items() if isinstance(self.forced, Mapping) else self.forced
        tiles: Dict[str, Tile] = {}
        for family, config in pairs:
            tiles[_check_family(family)] = Tile.of(config)
        object.__setattr__(self, "forced", tuple(sorted(tiles.items())))

    def forced_tile(self, family: str) -> Optional[Tile]:
        """The tile forced for ``family``, or None."""
        for name, tile in self.forced:
            if name == family:
                return tile
        return None

    def with_forced(self, family: str, config: Any) -> "KernelSettings":
        """These settings with ``config`` forced for ``family`` (``None``: nothing forced)."""
        tiles = dict(self.forced)
        if config is None:
            tiles.pop(_check_family(family), None)
        else:
            tiles[_check_family(family)] = Tile.of(config)
        return self.replace(forced=tuple(tiles.items()))

    def replace(self, **changes: Any) -> "KernelSettings":
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


_FIELDS = tuple(f.name for f in dataclasses.fields(KernelSettings))


def settings_from_env(environ: Optional[Mapping[str, str]] = None) -> KernelSettings:
    """The default settings given the environment (``os.environ`` by default); the one place
    the environment is read:

    * ``DFQ_KERNELS_AUTOTUNE``: ``0``, ``false``, ``no`` or ``off`` switch autotuning off;
    * ``DFQ_DEPTHWISE_VARIANT``: ``tiles`` (default), ``rows`` or ``tma`` (any other value raises
      ``ValueError``);
    * ``DFQ_GEMM_VARIANT``: ``pointers`` (default) or ``tma`` (any other value raises
      ``ValueError``);
    * ``DFQ_KERNELS_TILE_TABLE``: ``0``, ``false``, ``no`` or ``off`` switch the tuned tile table
      off; ``1``, ``true``, ``yes``, ``on`` or empty keep the device's table
      (``kernels/tiles/<device>.json``); any other value is the path of the table to read;
    * ``DFQ_KERNELS_TILE_MATCH``: ``nearest`` (default) or ``exact`` (any other value raises
      ``ValueError``).

    The backend always defaults to ``"auto"`` and no tile is forced.
    """
    env = os.environ if environ is None else environ
    autotune = env.get("DFQ_KERNELS_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")
    variant = env.get("DFQ_DEPTHWISE_VARIANT", "tiles").strip().lower()
    if variant not in DEPTHWISE_VARIANTS:
        raise ValueError(f"DFQ_DEPTHWISE_VARIANT must be one of {DEPTHWISE_VARIANTS}, got {variant!r}")
    gemm_variant = env.get("DFQ_GEMM_VARIANT", "pointers").strip().lower()
    if gemm_variant not in GEMM_VARIANTS:
        raise ValueError(f"DFQ_GEMM_VARIANT must be one of {GEMM_VARIANTS}, got {gemm_variant!r}")
    match = env.get("DFQ_KERNELS_TILE_MATCH", "nearest").strip().lower()
    if match not in TILE_MATCHES:
        raise ValueError(f"DFQ_KERNELS_TILE_MATCH must be one of {TILE_MATCHES}, got {match!r}")
    table = env.get("DFQ_KERNELS_TILE_TABLE", "").strip()
    tile_table, table_file = True, None
    if table.lower() in _OFF:
        tile_table = False
    elif table and table.lower() not in ("1", "true", "yes", "on"):
        table_file = table
    return KernelSettings(autotune=autotune, depthwise_variant=variant, gemm_variant=gemm_variant,
                          tile_table=tile_table, tile_table_file=table_file, tile_match=match)


_OFF = ("0", "false", "no", "off")


#: The settings read from the environment when ``kernels`` was imported.
DEFAULT_SETTINGS: KernelSettings = settings_from_env()

_current: KernelSettings = DEFAULT_SETTINGS


def current_settings() -> KernelSettings:
    """The kernel settings in force."""
    return _current


def _merge(settings: Optional[KernelSettings], changes: Dict[str, Any]) -> KernelSettings:
    if settings is not None and not isinstance(settings, KernelSettings):
        raise ValueError(f"settings must be a KernelSettings, got {type(settings).__name__}")
    base = current_settings() if settings is None else settings
    return base.replace(**changes) if changes else base


def set_settings(settings: Optional[KernelSettings] = None, **changes: Any) -> KernelSettings:
    """Put ``settings`` (default: the current ones) with ``changes`` applied in force, e.g.
    ``set_settings(depthwise_variant="rows")``; returns the settings in force before."""
    global _current
    new = _merge(settings, changes)
    previous, _current = _current, new
    return previous


@contextlib.contextmanager
def use_settings(settings: Optional[KernelSettings] = None, **changes: Any) -> Iterator[KernelSettings]:
    """Context manager: run the enclosed block with ``settings`` (default: the current ones)
    with ``changes`` applied, e.g. ``with use_settings(autotune=False, depthwise_variant="rows"):``.

    On exit (also on an exception) the fields it set get their previous values back: every field
    when ``settings`` is given, else the fields named in ``changes``; fields changed inside the
    block by other means keep their new values. Yields the settings put in force.
    """
    previous = current_settings()
    new = _merge(settings, changes)
    fields = _FIELDS if settings is not None else tuple(changes)
    set_settings(new)
    try:
        yield new
    finally:
        set_settings(current_settings().replace(**{f: getattr(previous, f) for f in fields}))
