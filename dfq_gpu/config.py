"""Validated configuration for the DFQ pipeline (``DFQConfig``)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping

__all__ = ["DFQConfig", "RELU6_MODES", "BIAS_CORRECTION_MODES", "ACT_RANGE_MODES", "GRANULARITIES"]

RELU6_MODES = ("clip", "replace", "keep")
BIAS_CORRECTION_MODES = ("analytic", "empirical", "none")
ACT_RANGE_MODES = ("bn", "calibrate")
GRANULARITIES = ("tensor", "channel")
CLE_OBJECTIVES = ("weights", "weights+acts")


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"DFQConfig.{name}: {msg}")


@dataclass(frozen=True)
class DFQConfig:
    """Everything the DFQ pipeline can be told.

    The defaults are the data-free recipe: BN folding, exact ReLU6 handling ("clip"),
    cross-layer equalization with the guards that keep it from inflating activation
    ranges, bias absorption, per-tensor 8-bit weights and activations with activation
    ranges from the batch-norm statistics, and analytic bias correction.

    Attributes:
        weight_bits: bit width of the weights (2 to 16).
        act_bits: bit width of the activations (2 to 16), or ``None`` to leave them in float.
        weight_granularity: ``"tensor"`` (one scale per weight tensor, the paper's setting)
            or ``"channel"`` (one per output channel).
        weight_symmetric: symmetric weights (zero point 0) instead of asymmetric min/max.
        act_symmetric: symmetric activations instead of asymmetric.
        relu6: ``"clip"`` turns ReLU6 into a per-channel clamp that equalization rescales
            (exact), ``"replace"`` replaces it by ReLU as in the paper (changes the network),
            ``"keep"`` leaves it and lets it end an equalization region.
        fold_bn: fold batch norms into the preceding convolution / linear layer.
        equalize: cross-layer equalization.
        equalize_residuals: equalize across residual adds with one scale vector shared by
            every producer and consumer of the residual stream (beyond the paper, which
            stops at adds).
        cle_objective: ``"weights"`` equalizes weight ranges only (the paper);
            ``"weights+acts"`` also counts the data-free activation ranges of each channel,
            so that equalization does not trade weight precision for activation range.
        cle_max_iter: maximum number of sweeps over all regions.
        cle_tol: stop when no scale of a sweep differs from 1 by more than this.
        cle_scale_bound: bound ``B`` on each scale factor, ``1/B <= s <= B`` per sweep
            and in total; ``None`` for unbounded (the paper).
        cle_dead_threshold: a channel whose range is below this fraction of its tensor's
            largest channel range is treated as dead and left unscaled.
        absorb_bias: bias absorption after equalization.
        absorb_sigmas: ``c = max(0, beta - absorb_sigmas * gamma)`` (the paper uses 3).
        absorb_padded: also absorb into zero-padded convolutions (the paper does), where the
            move is exact only away from the border; off by default, because on small
            feature maps (7x7 with a 5x5 kernel) most outputs touch the border.
        absorb_exact: keep the network's function exactly by giving the activation the lower
            bound ``-c`` (a per-channel clamp, free in the integer kernels); ``False`` is the
            paper's approximation ``act(z - c)``.
        bias_correction: ``"analytic"`` (data-free, from BN statistics), ``"empirical"``
            (from data), or ``"none"``.
        act_ranges: ``"bn"`` (data-free, ``beta +- act_range_sigmas * gamma`` through the
            activation) or ``"calibrate"`` (min/max over data).
        act_range_sigmas: the ``n`` in ``beta +- n gamma``.
        act_range_method: ``"mse"`` narrows each activation range to the one with the least
            expected squared error (clipping plus rounding), from the per-channel value
            model (data-free) or from the calibration data; ``"minmax"`` keeps the full range.
        input_range: float range of the network input, e.g. ``(-1.0, 1.0)``; ``None``
            takes it from the example inputs.
        quantize_output: also quantize the network output (the logits); off by default,
            the last layer then produces float output from its int32 accumulator.
        calibration_batches: how many batches of ``data`` calibration and empirical bias
            correction use at most.
        skip_layers: qualified module names to leave in float.
    """

    weight_bits: int = 8
    act_bits: int | None = 8
    weight_granularity: Literal["tensor", "channel"] = "tensor"
    weight_symmetric: bool = False
    act_symmetric: bool = False
    relu6: Literal["clip", "replace", "keep"] = "clip"
    fold_bn: bool = True
    equalize: bool = True
    equalize_residuals: bool = True
    cle_objective: Literal["weights", "weights+acts"] = "weights+acts"
    cle_max_iter: int = 50
    cle_tol: float = 1e-3
    cle_scale_bound: float | None = 16.0
    cle_dead_threshold: float = 1e-3
    absorb_bias: bool = True
    absorb_sigmas: float = 3.0
    absorb_padded: bool = False
    absorb_exact: bool = True
    bias_correction: Literal["analytic", "empirical", "none"] = "analytic"
    act_ranges: Literal["bn", "calibrate"] = "bn"
    act_range_sigmas: float = 8.0
    act_range_method: Literal["mse", "minmax"] = "mse"
    input_range: tuple[float, float] | None = None
    quantize_output: bool = False
    calibration_batches: int = 8
    skip_layers: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_bool(v: Any) -> bool:
            return isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        _check(is_int(self.weight_bits) and 2 <= self.weight_bits <= 16, "weight_bits",
               f"must be an integer from 2 to 16, got {self.weight_bits!r}")
        _check(self.act_bits is None or (is_int(self.act_bits) and 2 <= self.act_bits <= 16), "act_bits",
               f"must be an integer from 2 to 16 or None, got {self.act_bits!r}")
        _check(self.weight_granularity in GRANULARITIES, "weight_granularity",
               f"must be one of {GRANULARITIES}, got {self.weight_granularity!r}")
        _check(self.relu6 in RELU6_MODES, "relu6", f"must be one of {RELU6_MODES}, got {self.relu6!r}")
        _check(self.bias_correction in BIAS_CORRECTION_MODES, "bias_correction",
               f"must be one of {BIAS_CORRECTION_MODES}, got {self.bias_correction!r}")
        _check(self.act_ranges in ACT_RANGE_MODES, "act_ranges",
               f"must be one of {ACT_RANGE_MODES}, got {self.act_ranges!r}")
        _check(self.act_range_method in ("mse", "minmax"), "act_range_method",
               f"must be 'mse' or 'minmax', got {self.act_range_method!r}")
        _check(self.cle_objective in CLE_OBJECTIVES, "cle_objective",
               f"must be one of {CLE_OBJECTIVES}, got {self.cle_objective!r}")
        for name in ("weight_symmetric", "act_symmetric", "fold_bn", "equalize", "equalize_residuals",
                     "absorb_bias", "absorb_padded", "absorb_exact", "quantize_output"):
            _check(is_bool(getattr(self, name)), name, f"must be True or False, got {getattr(self, name)!r}")
        _check(is_int(self.cle_max_iter) and self.cle_max_iter >= 1, "cle_max_iter",
               f"must be a positive integer, got {self.cle_max_iter!r}")
        _check(is_num(self.cle_tol) and self.cle_tol > 0, "cle_tol", f"must be a positive number, got {self.cle_tol!r}")
        _check(self.cle_scale_bound is None or (is_num(self.cle_scale_bound) and self.cle_scale_bound > 1),
               "cle_scale_bound", f"must be a number > 1 or None, got {self.cle_scale_bound!r}")
        _check(is_num(self.cle_dead_threshold) and 0 <= self.cle_dead_threshold < 1, "cle_dead_threshold",
               f"must be in [0, 1), got {self.cle_dead_threshold!r}")
        _check(is_num(self.absorb_sigmas) and self.absorb_sigmas >= 0, "absorb_sigmas",
               f"must be a non-negative number, got {self.absorb_sigmas!r}")
        _check(is_num(self.act_range_sigmas) and self.act_range_sigmas > 0, "act_range_sigmas",
               f"must be a positive number, got {self.act_range_sigmas!r}")
        _check(is_int(self.calibration_batches) and self.calibration_batches >= 1, "calibration_batches",
               f"must be a positive integer, got {self.calibration_batches!r}")
        if self.input_range is not None:
            ok = (isinstance(self.input_range, (tuple, list)) and len(self.input_range) == 2
                  and all(is_num(v) for v in self.input_range) and self.input_range[0] < self.input_range[1])
            _check(ok, "input_range", f"must be a pair (low, high) with low < high, got {self.input_range!r}")
            object.__setattr__(self, "input_range", (float(self.input_range[0]), float(self.input_range[1])))
        if isinstance(self.skip_layers, str):
            raise ValueError("DFQConfig.skip_layers: must be a sequence of module names, not a single string")
        _check(all(isinstance(s, str) for s in self.skip_layers), "skip_layers", "must hold module names (str)")
        object.__setattr__(self, "skip_layers", tuple(self.skip_layers))

    # ------------------------------------------------------------------ presets
    @classmethod
    def naive(cls, **overrides: Any) -> "DFQConfig":
        """The naive baseline: BN folding, then min/max quantization without equalization, bias
        absorption or bias correction (ReLU6 kept as it is).

        Weights get their min/max range; activations the full data-free range ``beta +- n gamma``
        of their BN statistics (``n = act_range_sigmas``, ``act_range_method="minmax"``), or with
        ``act_ranges="calibrate"`` the min/max seen on the calibration data: the paper's baseline.
        ``DFQConfig.naive(act_range_method="mse")`` narrows the activation ranges as
        :class:`DFQConfig` does (a stronger baseline).
        """
        base = dict(equalize=False, absorb_bias=False, bias_correction="none", relu6="keep", act_range_method="minmax")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def paper(cls, **overrides: Any) -> "DFQConfig":
        """The paper's recipe: ReLU6 replaced by ReLU, plain weight-range CLE, no scale bound."""
        base = dict(relu6="replace", cle_objective="weights", cle_scale_bound=None, equalize_residuals=False)
        base.update(overrides)
        return cls(**base)

    # ------------------------------------------------------------ dict round trip
    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serializable dict of every field."""
        d = dataclasses.asdict(self)
        d["skip_layers"] = list(self.skip_layers)
        if self.input_range is not None:
            d["input_range"] = list(self.input_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DFQConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"DFQConfig: unknown field(s) {sorted(unknown)}; known fields are {sorted(known)}")
        kw = dict(d)
        if kw.get("input_range") is not None:
            kw["input_range"] = tuple(kw["input_range"])
        if "skip_layers" in kw:
            kw["skip_layers"] = tuple(kw["skip_layers"])
        return cls(**kw)

    def replace(self, **changes: Any) -> "DFQConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)
