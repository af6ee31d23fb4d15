"""``rmtprune prune/analyze`` criterion and selection options against the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.cli.app import CRITERIA, build_parser, main
from rmtprune.pruning.selection import DEFAULT_MIN_DIM


def _saved(tmp_path: Path) -> tuple[nn.Sequential, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(120, 90), nn.ReLU(), nn.Linear(90, 60), nn.Linear(60, 10))
    path = tmp_path / "m.safetensors"
    rmtprune.save(model, path)
    return model, path


# without a model a dense layer's type is unknown (never guessed): name them as Linear
LINEAR = ["--assume-linear", "*"]


def test_help_defaults_come_from_the_code() -> None:
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in ("analyze", "prune"):
        actions = {a.dest: a for a in sub[command]._actions}
        assert actions["min_dim"].default == DEFAULT_MIN_DIM == 32
        assert "%(default)s" in actions["min_dim"].help
    choices = {a.dest: a for a in sub["prune"]._actions}["criterion"].choices
    assert tuple(choices) == tuple(CRITERIA) == ("mp", "gavish-donoho", "energy", "rank", "ratio")
    assert all(hasattr(rmtprune, name) for name in CRITERIA.values())


@pytest.mark.parametrize(
    ("argv", "criterion"),
    [
        (["--criterion", "energy", "--energy", "0.7"], rmtprune.Energy(0.7)),
        (["--criterion", "rank", "--rank", "6"], rmtprune.FixedRank(6)),
        (["--criterion", "ratio", "--ratio", "0.25"], rmtprune.FixedRatio(0.25)),
        (["--criterion", "gavish-donoho"], rmtprune.GavishDonohoCriterion()),
        (["--bulk-keep", "0.4", "--min-rank", "3"], rmtprune.MPCriterion(0.4, 3)),
    ],
)
def test_prune_criterion_options_match_the_api(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    criterion: rmtprune.pruning.criteria.Criterion,
) -> None:
    model, path = _saved(tmp_path)
    assert main(["prune", str(path), "--dry-run", "--json", "--quiet", *LINEAR, *argv]) == 0
    got = json.loads(capsys.readouterr().out)
    _, want = rmtprune.prune(model, criterion=criterion, dry_run=True)
    assert got["layers"] == json.loads(want.to_json())["layers"]
    assert got["params_after"] == want.params_after < want.params_before


def test_exclude_and_bad_combinations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = _saved(tmp_path)
    assert (
        main(
            ["analyze", str(path), *LINEAR, "--exclude", "2", "--min-dim", "5", "--json", "--quiet"]
        )
        == 0
    )
    assert [r["name"] for r in json.loads(capsys.readouterr().out)["layers"]] == ["0", "3"]
    assert main(["prune", str(path), "--dry-run", "--criterion", "rank", "--quiet"]) == 2
    assert "--criterion rank needs --rank" in capsys.readouterr().err
    assert main(["prune", str(path), "--dry-run", "--energy", "0.5", "--quiet"]) == 2
    assert "--energy applies to --criterion energy only" in capsys.readouterr().err
    assert main(["prune", str(path), "--dry-run", "--exclude", "nope", "--quiet"]) == 2
    assert "'exclude' parameter names 'nope'" in capsys.readouterr().err
