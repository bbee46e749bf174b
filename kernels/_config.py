"""Tile configurations and the interpreter switch shared by every kernel module.

Two situations are told apart once, at import time:

* ``INTERPRETED``: Triton's interpreter is active (``TRITON_INTERPRET=1`` was in the environment
  when the ``@triton.jit`` decorators ran).  Kernels are then launched with one fixed, large tile
  (the interpreter's cost grows with programs x loop steps, and it rejects ``triton.autotune``
  with several configs) and round half to even with the float magic-number trick.
* otherwise (a CUDA device): kernels go through a small ``triton.autotune`` list keyed on bucketed
  problem sizes, and round with ``libdevice.rint``.

Autotuning can be switched off (``DFQ_KERNELS_AUTOTUNE=0`` in the environment, or
:func:`set_autotune`): each kernel then launches with its family's default tile, which is what
the GPU test run does so that a hundred test shapes do not each pay for a tuning sweep. One
configuration can also be forced for a family (:func:`forced_config`), which is how the tests
check every entry of the autotune lists bit for bit. These switches and the depthwise variant
are fields of the one settings object of :mod:`kernels.settings`, read at every launch.

The flag is read from the type of a probe ``@triton.jit`` function rather than from the
environment, so it reflects how the kernels in this package were really decorated.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import triton
import triton.language as tl

from . import tiles
from .settings import (  # noqa: F401  (DEPTHWISE_VARIANTS is re-exported)
    DEPTHWISE_VARIANTS,
    KERNEL_FAMILIES,
    current_settings,
    set_settings,
    use_settings,
)


@triton.jit
def _probe(x_ptr):  # pragma: no cover - never launched, only inspected
    tl.store(x_ptr, 0)


#: True when the kernels of this package run through Triton's interpreter.
INTERPRETED: bool = type(_probe).__name__ == "InterpretedFunction"

#: Round with ``libdevice.rint`` (GPU) rather than the float magic-number trick (interpreter).
USE_RINT: bool = not INTERPRETED


def next_pow2_bucket(n: int, cap: int = 1 << 20) -> int:
    """Autotune bucket for a size: the next power of two, at most ``cap``."""
    return min(1 << (max(int(n), 1) - 1).bit_length(), cap)


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints (plain Python: ``triton.cdiv`` is a slower wrapper in
    recent Triton versions, and grids are computed on every launch)."""
    return -(-a // b)


def _cfg(num_warps: int, num_stages: int, **meta: int) -> triton.Config:
    return triton.Config(dict(meta), num_warps=num_warps, num_stages=num_stages)


# ---------------------------------------------------------------------------------------------
# GEMM / implicit-GEMM convolution tiles.
# On Hopper an int8 ``tl.dot`` maps to wgmma when BLOCK_M is a multiple of 64, BLOCK_N >= 16 and
# BLOCK_K >= 32 (with 8 warps and BLOCK_M = 64 the two warp groups split N); both operands are
# K-contiguous. Every config compiles for sm_90 with wgmma and cp.async pipelining within the
# shared-memory limit (``benchmarks/kernels.py --compile-only --all-configs``, no GPU needed;
# reports ``benchmarks/results/compile_sm90_triton3.6.json`` and ``..._triton3.8.json``). With
# Triton 3.6, the GPU machine's, no kernel spills registers on any tile it autotunes over; with
# 3.8, five (kernel, tile) pairs spill 8-24 bytes: the stepped 3x3 loop and the TMA convolution
# with a residual on 128x128x32, and the stride-2 TMA convolution with a weight zero point and a
# residual on 64x128x64 and the 64x256 tiles. Left out because they spill registers:
# 256x128 tiles (with Triton 3.6: 8-48 bytes in the residual epilogue and the unrolled 3x3 loop,
# 56-96 in the TMA GEMM; with 3.8: 96-168 bytes), 128x256 tiles (128-192 bytes with Triton 3.8
# for BLOCK_K 32/64/128 with 8 warps: the int32 accumulator alone is 128 registers a thread).
# 64x256 with 4 warps compiles without spills but at 238-242 registers; it is left out as too
# close to the limit.
# The entries after the first ten (added with the unrolled-tap conv loop): 64x256 tiles with
# 8 warps for wide layers (a 256-wide N tile reads the activations once for N <= 256), and thin
# tiles for narrow or shallow layers (BLOCK_N 16/32/64 with BLOCK_K 32, or 128 for deep K), so
# that BLOCK_N >= N and the activations are read once. ``prune_by_size`` keeps each where it
# fits (see GEMM_NARROW_N).
# ---------------------------------------------------------------------------------------------
GEMM_GPU_CONFIGS: List[triton.Config] = [
    _cfg(8, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8),
    _cfg(8, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8),
    _cfg(8, 3, BLOCK_M=256, BLOCK_N=64, BLOCK_K=64, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=32, BLOCK_K=64, GROUP_M=8),
    _cfg(8, 4, BLOCK_M=256, BLOCK_N=32, BLOCK_K=64, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=128, BLOCK_K=32, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=32, BLOCK_K=32, GROUP_M=8),
    # wide N (N > 128): 64x256, 8 warps (two warp groups side by side in N)
    _cfg(8, 4, BLOCK_M=64, BLOCK_N=256, BLOCK_K=64, GROUP_M=8),
    _cfg(8, 3, BLOCK_M=64, BLOCK_N=256, BLOCK_K=128, GROUP_M=8),
    _cfg(8, 4, BLOCK_M=64, BLOCK_N=256, BLOCK_K=32, GROUP_M=8),  # shallow K (expand 1x1 from 16-32 channels)
    # thin: narrow N or shallow K, BLOCK_N >= N so the activations are read once
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=32, BLOCK_K=128, GROUP_M=8),  # narrow N, deep K (projections)
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=16, BLOCK_K=64, GROUP_M=8),
    _cfg(4, 4, BLOCK_M=128, BLOCK_N=16, BLOCK_K=32, GROUP_M=8),
    _cfg(8, 4, BLOCK_M=256, BLOCK_N=16, BLOCK_K=32, GROUP_M=8),
]

#: Autotune pruning of the GEMM/conv tiles (:func:`prune_by_size`): a block is at most
#: ``max(32, next_pow2(size))`` (no 256-wide tile for N <= 128, no BLOCK_K 128 for K <= 64), and a
#: tile narrower than ``GEMM_NARROW_N`` must cover all of N (the 16-wide tiles only for N <= 16).
GEMM_NARROW_N: int = 32

#: Tiles of the flat-K convolution loop (fewer than 16 channels: RGB stems). Its input tile is
#: gathered byte by byte (C is no multiple of 16, so no load vectorizes) with a 64-bit pointer
#: per element, and on sm_90 (Triton 3.8, compiled with C not divisible by 16 as at run time)
#: the other entries spill registers in it: 72-2008 bytes for a 7x7x3 stem (the loop before the
#: row bases were hoisted spilled too, 240 bytes on the default 128x64x64 tile; 256x64x64 with 8
#: warps spills 8 bytes with Triton 3.6). Autotuning a flat-K convolution keeps to these; the
#: default tile is one of them.
CONV_FLAT_K_TILES = {(128, 64, 64, 4), (128, 32, 32, 4), (64, 256, 32, 8), (128, 16, 32, 4),
                     (256, 16, 32, 8)}  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps)  # fmt: skip
CONV_FLAT_K_CONFIGS: List[triton.Config] = [
    c for c in GEMM_GPU_CONFIGS
    if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps) in CONV_FLAT_K_TILES
]  # fmt: skip

#: Tiles of the TMA GEMM (``kernels.gemm``, the "tma" variant): the GEMM's, less the 128x128
#: tiles with 8 warps, which spill 16 bytes there (Triton 3.6, weight zero point and residual).
GEMM_TMA_CONFIGS: List[triton.Config] = [
    c for c in GEMM_GPU_CONFIGS
    if not (c.kwargs["BLOCK_M"] == c.kwargs["BLOCK_N"] == 128 and c.num_warps == 8)
]  # fmt: skip

#: Tiles (BLOCK_M, BLOCK_N, num_warps) the TMA convolution does not autotune over with stride 2
#: and more than one tap: its taps are unrolled there (one pipelined channel loop each) and these
#: spill 48-88 bytes (Triton 3.6, 3x3, 128x128 with 4 warps at BLOCK_K 32 and 64).
CONV_TMA_STRIDED_SPILLING = {(128, 128, 4)}

#: Interpreter tile for GEMM and convolution: large, so few programs and few K steps.
GEMM_INTERPRET_META: Dict[str, Any] = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=4)

# Depthwise convolution / pooling: (pixels x channels) tiles on CUDA cores, channels contiguous.
# BLOCK_C is a power of two (Triton's aranges); a channel count it does not divide leaves lanes of
# the last channel tile idle. The 8- and 16-wide tiles let autotuning waste none on the channel
# counts of MobileNet/EfficientNet (24, 40, 80, 112, 144, 240: largest power-of-two divisors 8 or
# 16), the wider ones serve the rest. One stage: these loops have no cp.async to pipeline (more
# stages compile to the same code). sm_90, Triton 3.8: 70-118 registers, no spills.
DEPTHWISE_GPU_CONFIGS: List[triton.Config] = [
    _cfg(4, 1, BLOCK_P=64, BLOCK_C=64),
    _cfg(4, 1, BLOCK_P=128, BLOCK_C=32),
    _cfg(4, 1, BLOCK_P=32, BLOCK_C=128),
    _cfg(8, 1, BLOCK_P=128, BLOCK_C=64),
    _cfg(8, 1, BLOCK_P=64, BLOCK_C=128),
    _cfg(4, 1, BLOCK_P=128, BLOCK_C=16),
    _cfg(8, 1, BLOCK_P=256, BLOCK_C=32),
    _cfg(4, 1, BLOCK_P=64, BLOCK_C=32),
    _cfg(4, 1, BLOCK_P=256, BLOCK_C=16),
    _cfg(4, 1, BLOCK_P=256, BLOCK_C=8),
]
DEPTHWISE_INTERPRET_META: Dict[str, Any] = dict(BLOCK_P=64, BLOCK_C=64)
# The adaptive average pool (kernels/pool.py: run-time loops over windows of varying size) takes
# the same tiles but the 256 x 16 one, which spills 8 bytes on sm_90 (Triton 3.6 and 3.8).
ADAPTIVE_POOL_GPU_CONFIGS: List[triton.Config] = [
    c for c in DEPTHWISE_GPU_CONFIGS if (c.kwargs["BLOCK_P"], c.kwargs["BLOCK_C"]) != (256, 16)
]

# Depthwise convolution, "rows" variant (stride 1): a (columns x channels) strip of one image
# walks down the rows, each input row loaded once per window column and added into the KH output
# rows it belongs to.
DEPTHWISE_ROWS_GPU_CONFIGS: List[triton.Config] = [
    # The float32 path keeps the KH*KW float32 weight vectors in registers across the row loop,
    # so every tile has at most 4 strip elements per thread: sm_90, Triton 3.8, 95 registers for
    # 3x3 and 188 for 5x5 windows (8 elements per thread spill on 5x5). The 8- and 16-wide
    # channel tiles serve channel counts with small power-of-two divisors (see above).
    _cfg(4, 1, BLOCK_W=16, BLOCK_C=32),
    _cfg(4, 1, BLOCK_W=8, BLOCK_C=64),
    _cfg(2, 1, BLOCK_W=8, BLOCK_C=32),
    _cfg(4, 1, BLOCK_W=8, BLOCK_C=32),
    _cfg(8, 1, BLOCK_W=16, BLOCK_C=64),
    _cfg(8, 1, BLOCK_W=32, BLOCK_C=32),
    _cfg(4, 1, BLOCK_W=32, BLOCK_C=16),
    _cfg(2, 1, BLOCK_W=16, BLOCK_C=16),
    _cfg(4, 1, BLOCK_W=64, BLOCK_C=8),
    _cfg(2, 1, BLOCK_W=32, BLOCK_C=8),
]
DEPTHWISE_ROWS_INTERPRET_META: Dict[str, Any] = dict(BLOCK_W=16, BLOCK_C=64)  # few programs, few steps
#: Largest window height of the rows variant (one register accumulator per window row).
DEPTHWISE_ROWS_MAX_KH: int = 5

# Depthwise convolution, "tma" variant (stride 1 or 2): a patch of BLOCK_P // BW rows of BW output
# pixels x BLOCK_C channels; each tap's box is loaded by TMA in a loop over the taps that Triton
# pipelines only when told its stages (``tl.range(..., num_stages=NUM_STAGES)``; NUM_STAGES - 1
# boxes in flight), so each tile names them as a meta-parameter too. BLOCK_C >= 16: a box row is
# at least 16 bytes.
DEPTHWISE_TMA_GPU_CONFIGS: List[triton.Config] = [
    _cfg(4, 3, BLOCK_P=128, BLOCK_C=32, NUM_STAGES=3),
    _cfg(4, 3, BLOCK_P=64, BLOCK_C=64, NUM_STAGES=3),
    _cfg(4, 4, BLOCK_P=64, BLOCK_C=32, NUM_STAGES=4),
    _cfg(8, 3, BLOCK_P=128, BLOCK_C=64, NUM_STAGES=3),
    _cfg(8, 3, BLOCK_P=256, BLOCK_C=32, NUM_STAGES=3),
    _cfg(4, 3, BLOCK_P=128, BLOCK_C=16, NUM_STAGES=3),
    _cfg(4, 2, BLOCK_P=64, BLOCK_C=128, NUM_STAGES=2),
    _cfg(8, 2, BLOCK_P=256, BLOCK_C=64, NUM_STAGES=2),
]
DEPTHWISE_TMA_INTERPRET_META: Dict[str, Any] = dict(BLOCK_P=64, BLOCK_C=64, NUM_STAGES=2)
#: Tiles (BLOCK_P, BLOCK_C, num_warps) the TMA depthwise kernel does not autotune over with stride
#: 2: 256x64 with 8 warps spills 8 bytes there on a 5x5 window (Triton 3.6; none with 3.8).
DEPTHWISE_TMA_STRIDED_SPILLING = {(256, 64, 8)}

#: Elementwise kernels (add, quantize, dequantize): one flat block per program.
ELEMENTWISE_GPU_BLOCK: int = 2048
ELEMENTWISE_GPU_WARPS: int = 8
ELEMENTWISE_INTERPRET_BLOCK: int = 8192

#: Global average pool: (pixels x channels) chunk summed per loop step.
AVGPOOL_GPU_META: Dict[str, Any] = dict(BLOCK_HW=64, BLOCK_C=64)
AVGPOOL_GPU_WARPS: int = 4
AVGPOOL_INTERPRET_META: Dict[str, Any] = dict(BLOCK_HW=64, BLOCK_C=64)


def prune_by_size(
    size_args: Dict[str, Sequence[str]], narrow: Optional[Dict[str, int]] = None
) -> Callable[..., List[triton.Config]]:
    """Make an ``early_config_prune`` hook dropping tiles much larger (or much thinner) than the problem.

    ``size_args`` maps a meta-parameter (e.g. ``"BLOCK_N"``) to the kernel argument names whose
    value bounds it (e.g. ``("N",)``).  A config survives when each such block is at most
    ``max(32, next_pow2(size))``, so a 24-channel problem is not tuned over 256-wide tiles.
    ``narrow`` maps some of those blocks to a width below which a tile must cover the whole size
    (``{"BLOCK_N": 32}``: a 16-wide tile only when ``N <= 16``, so that it reads the activations
    once), so a 1000-channel problem is not tuned over 16-wide tiles.  When nothing survives, the
    config with the smallest tiles is kept so autotuning always has one.
    """
    narrow = dict(narrow or {})

    def prune(configs: List[triton.Config], named_args: Dict[str, Any], **kwargs: Any) -> List[triton.Config]:
        args = {**named_args, **kwargs}
        kept = []
        for cfg in configs:
            ok = True
            for block, names in size_args.items():
                if block not in cfg.kwargs:
                    continue
                size = 1
                for name in names:
                    size *= int(args[name])
                if cfg.kwargs[block] > max(32, triton.next_power_of_2(max(size, 1))):
                    ok = False
                    break
                if block in narrow and cfg.kwargs[block] < min(narrow[block], size):
                    ok = False
                    break
            if ok:
                kept.append(cfg)
        if not kept:
            kept = [min(configs, key=lambda c: sum(v for k, v in c.kwargs.items() if k.startswith("BLOCK")))]
        return kept

    return prune


#: Default tile of each family when autotuning is off.
DEFAULT_GPU_CONFIG: Dict[str, triton.Config] = {
    "gemm": _cfg(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, GROUP_M=8),
    # 32 channels: no idle lanes on 32, 96, 192, 320, 384, 480, 576, 672, 960, 1152 channels and at
    # most 10% on 144 (64 channels would idle 25% on 96 and 144, 6% on 240 and 480)
    "depthwise": _cfg(4, 1, BLOCK_P=128, BLOCK_C=32),
    "depthwise_rows": _cfg(4, 1, BLOCK_W=16, BLOCK_C=32),
    "depthwise_tma": DEPTHWISE_TMA_GPU_CONFIGS[0],
}
GPU_CONFIGS: Dict[str, List[triton.Config]] = {
    "gemm": GEMM_GPU_CONFIGS,
    "depthwise": DEPTHWISE_GPU_CONFIGS,
    "depthwise_rows": DEPTHWISE_ROWS_GPU_CONFIGS,
    "depthwise_tma": DEPTHWISE_TMA_GPU_CONFIGS,
}
INTERPRET_META: Dict[str, Dict[str, Any]] = {
    "gemm": GEMM_INTERPRET_META,
    "depthwise": DEPTHWISE_INTERPRET_META,
    "depthwise_rows": DEPTHWISE_ROWS_INTERPRET_META,
    "depthwise_tma": DEPTHWISE_TMA_INTERPRET_META,
}

# The settings (depthwise variant, autotuning, forced tiles, backend) live in one object,
# kernels.settings.KernelSettings; the functions below are thin wrappers of it.
if set(GPU_CONFIGS) != set(KERNEL_FAMILIES):  # pragma: no cover - a development error
    raise RuntimeError("kernels.settings.KERNEL_FAMILIES and kernels._config.GPU_CONFIGS disagree")


def depthwise_variant() -> str:
    """The depthwise kernel in use: ``"tiles"`` (default), ``"rows"`` or ``"tma"``."""
    return current_settings().depthwise_variant


def set_depthwise_variant(name: str) -> None:
    """Choose the depthwise kernel (also ``DFQ_DEPTHWISE_VARIANT`` in the environment)."""
    set_settings(depthwise_variant=name)


@contextlib.contextmanager
def use_depthwise_variant(name: str) -> Iterator[None]:
    """Context manager: run the enclosed depthwise convolutions with another kernel variant."""
    with use_settings(depthwise_variant=name):
        yield


def set_autotune(enabled: bool) -> None:
    """Switch autotuning on GPU on or off (off: each family's :data:`DEFAULT_GPU_CONFIG`)."""
    set_settings(autotune=bool(enabled))


def autotune_enabled() -> bool:
    """Whether GPU launches go through ``triton.autotune``."""
    return current_settings().autotune


@contextlib.contextmanager
def forced_config(family: str, config: triton.Config) -> Iterator[None]:
    """Launch every kernel of ``family`` (``"gemm"``: GEMM and convolution; ``"depthwise"``:
    depthwise convolution and max pooling; ``"depthwise_rows"``, ``"depthwise_tma"``: the rows
    and TMA variants of the depthwise convolution) with ``config`` inside the block, bypassing
    autotuning.

    Under the interpreter only the tile sizes matter (warps and stages are GPU notions).
    On exit the family's previous forced tile (or none) is back; other families keep theirs."""
    previous = current_settings().forced_tile(family)
    set_settings(current_settings().with_forced(family, config))
    try:
        yield
    finally:
        set_settings(current_settings().with_forced(family, previous))


def launch_meta(
    family: str, kernel: Any = None, tuned: Any = None, args: Optional[Dict[str, Any]] = None, *,
    with_source: bool = False, key: Optional[tuple] = None,
) -> Any:
    """Meta-parameters for a direct launch of a ``family`` kernel, or None to autotune
    (``with_source``: ``(source, meta)``, the source one of :data:`kernels.tiles.SOURCES`).

    Interpreter: the family's interpreter tile (or the forced config's tiles). GPU
    (:func:`kernels.tiles.select_tile`): the forced config, else the tuned tile table's entry for
    ``kernel`` at the autotune key of ``args`` (when the settings' ``tile_table`` is on and the
    kernel, its autotuner ``tuned`` and ``args`` are given) or, with the settings'
    ``tile_match="nearest"``, its nearest entry, else None when autotuning is on,
    else the family's default config. ``key``: the launch's :func:`kernels.tiles.launch_key`, if
    already computed."""
    settings = current_settings()
    forced = settings.forced_tile(family)
    table = name = None
    key_names: tuple = ()
    key_values: tuple = ()
    if not INTERPRETED and forced is None and kernel is not None and args is not None and settings.tile_table:
        table = tiles.table_for(settings)
        if table is not None:
            name, key_names, key_values = key if key is not None else tiles.launch_key(kernel, tuned, args)
    source, meta = tiles.select_tile(
        forced=forced, interpreted=INTERPRETED, interpret_meta=INTERPRET_META[family], table=table, kernel=name,
        key_names=key_names, key_values=key_values, meta_names=DEFAULT_GPU_CONFIG[family].kwargs,
        autotune=settings.autotune, default=DEFAULT_GPU_CONFIG[family], match=settings.tile_match,
    )  # fmt: skip
    return (source, meta) if with_source else meta


def launch(
    kernel: Any, tuned: Any, family: str, grid: Callable[[Dict[str, Any]], tuple], args: Dict[str, Any],
    pre_hook: Optional[Callable[[Dict[str, Any]], None]] = None,
) -> None:
    """Launch ``kernel`` on ``args``: through its autotuned wrapper ``tuned``, or directly with the
    meta-parameters of :func:`launch_meta` (interpreter, forced config, tile table, autotuning
    off). ``pre_hook``: what the autotuner's configs run before a launch (called here with the
    arguments and the meta-parameters on a direct launch). The tile is noted for
    :func:`kernels.tiles.launched_tiles` / ``record_launches``."""
    name, key_names, key_values = key = tiles.launch_key(kernel, tuned, args)
    # the decision depends only on the settings object, the kernel and its key (and the loaded
    # tables, which tiles.reset() forgets with the decisions): made once, then a dict lookup
    settings = current_settings()
    memo = (id(tuned), family, key_values, id(settings))
    hit = tiles.DECISIONS.get(memo)
    if hit is None or hit[0] is not settings:
        hit = (settings, launch_meta(family, kernel, tuned, args, with_source=True, key=key))
        tiles.remember_decision(memo, hit)
    source, meta = hit[1]
    if meta is None:
        tuned[grid](**args)
    else:
        if pre_hook is not None:
            pre_hook({**args, **meta})
        kernel[grid(meta)](**args, **meta)
    tiles.note_launch(name, family, key_names, key_values, source, meta, tuned)


def channel_stride(t: Optional[Any]) -> int:
    """Stride of a per-tensor (``[1]``, or absent) or per-channel parameter vector: 0 or 1."""
    return 0 if t is None or t.numel() == 1 else 1


def epilogue_args(bias: Optional[Any], w_zp: Optional[Any], multiplier: Any, lo: Any, hi: Any) -> Dict[str, Any]:
    """The kernel arguments of the bias, weight zero point and requantization epilogue shared by
    the GEMM, convolution and depthwise kernels (pointers, per-channel strides, switches);
    ``multiplier`` stands in for the pointers that a switch turns off."""
    return dict(
        bias_ptr=bias if bias is not None else multiplier,
        wzp_ptr=w_zp if w_zp is not None else multiplier,
        mult_ptr=multiplier, lo_ptr=lo, hi_ptr=hi,
        stride_wzp=channel_stride(w_zp), stride_mult=channel_stride(multiplier),
        stride_lo=channel_stride(lo), stride_hi=channel_stride(hi),
        HAS_BIAS=bias is not None, HAS_WZP=w_zp is not None,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Launch-time cache of tensors derived from weights (folded biases, padding tables)
# ---------------------------------------------------------------------------------------------
class DerivedCache:
    """Tensors computed from weight tensors, reused across calls while the sources are unchanged.

    An entry is keyed on the identity of its source tensors plus hashable extras and is reused
    only while every source is alive (weak references) and has the same version counter (an
    in-place update invalidates it). Tensors without a version counter (created under
    ``torch.inference_mode``) are never cached. This keeps per-call launch overhead (a handful of
    tiny reductions) off the inference path without changing any result.
    """

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._entries: Dict[Any, Any] = {}

    def get(self, tag: str, sources: Sequence[Any], extra: Any, compute: Callable[[], Any]) -> Any:
        import weakref

        try:
            versions = tuple(None if t is None else t._version for t in sources)
        except RuntimeError:  # inference tensors have no version counter
            return compute()
        key = (tag, tuple(id(t) for t in sources), extra)
        hit = self._entries.get(key)
        if hit is not None:
            refs, vers, value = hit
            alive = all((r is None) == (t is None) and (r is None or r() is t) for r, t in zip(refs, sources))
            if alive and vers == versions:
                return value
        value = compute()
        if len(self._entries) >= self.max_entries:
            self._entries = {k: v for k, v in self._entries.items() if all(r is None or r() is not None for r in v[0])}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[key] = (tuple(None if t is None else weakref.ref(t) for t in sources), versions, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


#: The cache every launcher uses.
DERIVED = DerivedCache()
