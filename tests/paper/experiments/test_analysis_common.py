"""Shared helpers of the analysis experiments: configuration resolution, paired statistics."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.regression import RegressionConfig


def test_resolve_config_preset_instance_and_seed_override() -> None:
    owner = "regression.run"
    made = common.resolve_config(
        RegressionConfig, RegressionConfig.from_preset, None, "smoke", None, owner
    )
    assert made == RegressionConfig.from_preset("smoke", None)
    given = RegressionConfig.from_preset("small", None)
    assert (
        common.resolve_config(
            RegressionConfig, RegressionConfig.from_preset, given, "smoke", None, owner
        )
        is given
    )
    seven = common.resolve_config(
        RegressionConfig, RegressionConfig.from_preset, given, "smoke", 7, owner
    )
    assert seven.seeds == 7 and given.seeds != 7  # the caller's object is not modified
    with pytest.raises(TypeError, match=r"'config' parameter of regression\.run.*RegressionConfig"):
        common.resolve_config(
            RegressionConfig, RegressionConfig.from_preset, {}, "smoke", None, owner
        )
    with pytest.raises(ValueError, match="seeds"):
        common.resolve_config(
            RegressionConfig, RegressionConfig.from_preset, given, "smoke", 0, owner
        )


def test_paired_comparison_is_the_paired_t_test_on_b_minus_a() -> None:
    a, b = [1.0, 2.0, 3.5, 4.0], [0.7, 1.9, 3.6, 3.2]
    c = common.paired_comparison(b, a, metric="mse")  # pruned (b) − normal (a)
    assert c.mean == pytest.approx(sum(y - x for x, y in zip(a, b, strict=True)) / 4)
    assert c.p_value == pytest.approx(stats.ttest_rel(b, a).pvalue, rel=1e-10)
    assert (c.losses, c.n, c.metric) == (3, 4, "mse") and c.mean_b == pytest.approx(2.625)
    one = common.paired_comparison([0.5], [1.0])
    assert math.isnan(one.p_value) and math.isnan(one.std)
    with pytest.raises(ValueError, match="'a' and 'b'"):
        common.paired_comparison([1.0, 2.0], [1.0])
