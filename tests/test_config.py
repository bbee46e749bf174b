"""DFQConfig validation and round trip."""

from __future__ import annotations

import json

import pytest

from dfq_gpu import DFQConfig


def test_defaults_are_the_data_free_recipe():
    c = DFQConfig()
    assert (c.weight_bits, c.act_bits, c.weight_granularity) == (8, 8, "tensor")
    assert c.relu6 == "clip" and c.equalize and c.absorb_bias
    assert c.bias_correction == "analytic" and c.act_ranges == "bn"


@pytest.mark.parametrize("field,value", [
    ("weight_bits", 0), ("weight_bits", 33), ("weight_bits", 1), ("weight_bits", 8.0), ("weight_bits", True),
    ("act_bits", 0), ("act_bits", 17),
    ("weight_granularity", "row"), ("relu6", "relu"), ("bias_correction", "yes"), ("act_ranges", "data"),
    ("cle_objective", "acts"), ("cle_max_iter", 0), ("cle_tol", -1.0), ("cle_scale_bound", 1.0),
    ("cle_dead_threshold", 1.0), ("absorb_sigmas", -1.0), ("act_range_sigmas", 0.0),
    ("equalize", "yes"), ("input_range", (1.0, -1.0)), ("input_range", (0.0,)), ("calibration_batches", 0),
    ("skip_layers", "conv1"),
])
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DFQConfig(**{field: value})


def test_dict_round_trip_through_json():
    c = DFQConfig(weight_bits=4, act_bits=None, weight_granularity="channel", relu6="keep",
                  input_range=(-1, 1), skip_layers=("fc",), cle_scale_bound=None)
    d = json.loads(json.dumps(c.to_dict()))
    assert DFQConfig.from_dict(d) == c


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown field"):
        DFQConfig.from_dict({"weight_bit": 8})


def test_replace_validates():
    c = DFQConfig()
    assert c.replace(weight_bits=4).weight_bits == 4
    with pytest.raises(ValueError, match="weight_bits"):
        c.replace(weight_bits=99)


def test_presets():
    assert not DFQConfig.naive().equalize and DFQConfig.naive().bias_correction == "none"
    # naive's activation ranges are the data-free BN ranges narrowed by the MSE rule, and its
    # documentation says so (it used to claim "min/max only")
    assert DFQConfig.naive().act_range_method == "minmax" and DFQConfig.naive().act_ranges == "bn"
    assert "min/max only" not in DFQConfig.naive.__doc__ and '"mse"' in DFQConfig.naive.__doc__
    assert DFQConfig.naive(act_range_method="minmax").act_range_method == "minmax"
    p = DFQConfig.paper()
    assert p.relu6 == "replace" and p.cle_scale_bound is None and p.cle_objective == "weights"
