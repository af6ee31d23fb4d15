"""Shared helpers of the analysis experiments: the run skeleton, the configuration base,
configuration resolution, paired statistics."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from rmtprune.paper.experiments.analysis import common, regression
from rmtprune.paper.experiments.analysis.regression import RegressionConfig
from rmtprune.paper.presets import PresetConfig


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


@dataclass(frozen=True)
class _Squares(PresetConfig):
    seeds: int

    @classmethod
    def preset_table(cls) -> Mapping[str, _Squares]:
        return {"smoke": cls(2), "small": cls(3), "paper": cls(4)}


@dataclass(frozen=True)
class _Sum:
    preset: str
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "total": self.total}


def _run_squares(out: Path, computed: list[int], **kw: Any) -> _Sum:
    def units(run: common.AnalysisContext[_Squares]) -> list[int]:
        def square(k: int) -> int:
            computed.append(k)
            return k * k

        return [
            run.store.get(f"k-{k}", partial(square, k), int, int) for k in range(run.config.seeds)
        ]

    def report(run: common.AnalysisContext[_Squares], values: list[int]) -> _Sum:
        (run.folder / "report_section.md").write_text(f"sum {sum(values)}\n")
        return _Sum(run.preset, sum(values))

    args = {"preset": "small", "seeds": None, "config": None, "data_dir": None, "resume": True}
    return common.run_analysis(
        "squares",
        "squares.run",
        (_Squares, _Squares.from_preset),
        units,
        report,
        out=out,
        progress=False,
        **{**args, **kw},
    )


def test_run_skeleton_resumes_units_and_writes_metrics(tmp_path: Path) -> None:
    computed: list[int] = []
    first = _run_squares(tmp_path / "run", computed)
    assert first == _Sum("small", 0 + 1 + 4) and computed == [0, 1, 2]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == first.to_dict()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["experiment"], config["preset"], config["config"]) == (
        "squares",
        "small",
        {"seeds": 3},
    )
    again = _run_squares(tmp_path / "run", computed)  # every unit stored: nothing computed
    assert again == first and computed == [0, 1, 2]
    with pytest.raises(ValueError, match=r"'preset' parameter of squares\.run"):
        _run_squares(tmp_path / "other", computed, preset="huge")
    with pytest.raises(ValueError, match="seeds"):
        _run_squares(tmp_path / "other", computed, seeds=0)
    assert not (tmp_path / "other").exists()  # refused before the directory was made


def test_preset_config_base_round_trips_and_checks() -> None:
    small = RegressionConfig.from_preset("small")
    assert small == regression.PRESETS["small"] and small.to_dict()["widths"] == [
        1,
        200,
        200,
        200,
        1,
    ]
    assert RegressionConfig.from_dict(small.to_dict()) == small
    assert small.replace(seeds=9).seeds == 9 and small.seeds == 5
    with pytest.raises(ValueError, match="'noise' parameter of RegressionConfig"):
        small.replace(noise=-1.0)
    with pytest.raises(ValueError, match=r"'preset' parameter of RegressionConfig\.from_preset"):
        RegressionConfig.from_preset("huge")
    with pytest.raises(ValueError, match=r"'values' parameter of RegressionConfig\.from_dict"):
        RegressionConfig.from_dict({"width": 3})
