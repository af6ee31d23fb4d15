"""The analysis dispatcher of `reproduce` and the initialisation experiment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rmtprune.paper.experiments import reproduce
from rmtprune.paper.experiments.analysis import regression
from rmtprune.paper.experiments.analysis.experiments import (
    AnalysisRun,
    markdown_to_html,
    reproduce_analysis,
)
from rmtprune.paper.experiments.analysis.init_compare import SCHEMES
from rmtprune.paper.experiments.runner import all_experiments

from . import analysis_content, unit_stamps

PNG = b"\x89PNG\r\n\x1a\n"


def test_every_experiment_is_listed() -> None:
    classification = ["fc-mnist", "fc-fashion", "cnn-mnist", "cnn-fashion", "fc-cifar10"]
    analysis = ["theory", "init", "regression", "landscape"]
    assert list(all_experiments()) == [*classification, *analysis, "ablation"]
    assert all_experiments()["theory"].startswith("Section 4 / B.1: W = R + S")


@pytest.mark.slow  # four classification runs
def test_init_smoke_compares_four_schemes(tmp_path: Path, data_root: Path) -> None:
    run = reproduce(
        "init", preset="smoke", seeds=1, out=tmp_path / "init", data_dir=data_root, progress=False
    )
    assert run.run_dir == tmp_path / "init"
    rows = json.loads((run.run_dir / "metrics.json").read_text())["rows"]
    assert [r["scheme"] for r in rows] == list(SCHEMES)
    for r in rows:
        assert 0.0 <= r["normal_mean"] <= 1.0 and 0.0 <= r["pruned_mean"] <= 1.0
        assert r["difference"] == pytest.approx(r["pruned_mean"] - r["normal_mean"])
        assert 0.0 < r["reduction"] < 1.0
        # each scheme is a full classification run in its own directory
        assert (run.run_dir / r["scheme"] / "report.md").is_file()
    # spike counts are scale invariant: the Gaussian schemes share the draws of one seed
    gaussian = [r["spikes_at_start"] for r in rows if r["scheme"] != "normal_n2"]
    assert len(set(gaussian)) == 1
    report = (run.run_dir / "report.md").read_text()
    assert "Which initialisations benefit from pruning" in report
    assert report.count("pruning ") >= len(SCHEMES)
    page = (run.run_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<table>" in page


def test_regression_report_is_self_contained(
    regression_smoke: AnalysisRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = regression_smoke  # reproduce_analysis("regression", preset="smoke"), conftest.py
    assert run.experiment == "regression" and run.preset == "smoke"
    stamps = unit_stamps(run.run_dir)
    first_report = (run.run_dir / "report.md").read_text()

    def never(*args: object) -> None:
        raise AssertionError("a finished unit was trained again")

    with monkeypatch.context() as m:  # a second call resumes: nothing left to train
        m.setattr(regression, "_train", never)
        again = reproduce("regression", preset="smoke", out=run.run_dir, progress=False)
    assert isinstance(again, AnalysisRun) and again.run_dir == run.run_dir
    assert analysis_content(again.result) == analysis_content(run.result)
    assert unit_stamps(run.run_dir) == stamps
    # the report states the compute time of all stored units, not the resumed call's 0 s
    units = [p for p in (run.run_dir / "units").glob("*.json") if ".seconds" not in p.name]
    timings = [json.loads(p.with_suffix(".seconds.json").read_text()) for p in units]
    total = sum(t["seconds"] for t in timings)
    assert units and all(t["seconds"] > 0 for t in timings)
    stated = f"Compute time {total:.0f} s over its {len(units)} units, summed over every call;"
    report = (run.run_dir / "report.md").read_text()
    assert stated in report and stated in first_report
    assert f"this call took {again.wall_time:.0f} s." in report
    with pytest.raises(ValueError, match=r"differs in \['seeds'\]"):
        reproduce("regression", preset="smoke", seeds=3, out=run.run_dir, progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        reproduce("regression", preset="smoke", out=run.run_dir, progress=False, resume=False)
    page = (run.run_dir / "report.html").read_text()
    images = re.findall(r'src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    for png in run.run_dir.glob("*.png"):
        assert png.read_bytes().startswith(PNG)
    env = json.loads((run.run_dir / "environment.json").read_text())
    assert "torch" in json.dumps(env)


def test_markdown_to_html_blocks(tmp_path: Path) -> None:
    (tmp_path / "f.png").write_bytes(PNG + b"rest")
    (tmp_path / "g.png").write_bytes(PNG + b"other")
    text = (
        "# Title\n\n| a | b |\n|---|---|\n| 1 | **2** |\n\n- one\n- two\n\n![cap](f.png)"
        "\n\n![first](f.png) ![second](g.png)"
    )
    page = markdown_to_html(text, tmp_path, "t")
    assert "<h1>Title</h1>" in page
    assert "<td>1</td><td><strong>2</strong></td>" in page
    assert "<li>one</li><li>two</li>" in page
    assert 'alt="cap" src="data:image/png;base64,' in page
    assert 'alt="first"' in page and 'alt="second"' in page  # several images on one line


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'experiment_id' parameter of reproduce_analysis"):
        reproduce_analysis("nope", out="/tmp/never-written")
    with pytest.raises(ValueError, match="'seeds' parameter of reproduce"):
        reproduce("theory", seeds=[0, 1], out="/tmp/never-written")
    with pytest.raises(ValueError, match="'preset' parameter of reproduce_analysis"):
        reproduce_analysis("theory", preset="huge", out="/tmp/never-written")
