"""``rmtprune prune/analyze`` criterion and selection options against the Python API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.cli.app import CRITERIA, build_parser, main
from rmtprune.factorize.masks import mask_of
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
    assert tuple(choices) == tuple(CRITERIA)
    assert tuple(CRITERIA) == ("mp", "gavish-donoho", "energy", "rank", "ratio", "sparsity")
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


@pytest.mark.parametrize(
    ("argv", "criterion"),
    [
        (["--sparsity", "0.4"], rmtprune.Sparsity(0.4)),
        (
            ["--sparsity", "0.6", "--allocation", "global"],
            rmtprune.Sparsity(0.6, allocation="global"),
        ),
        (["--sparsity-pattern", "2:4"], rmtprune.Sparsity(pattern="2:4")),
    ],
)
def test_sparsity_from_the_command_line_is_the_api_and_is_stored_sparse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], criterion: Any
) -> None:
    model, path = _saved(tmp_path)
    out = tmp_path / "sparse.safetensors"
    command = ["prune", str(path), "-o", str(out), "--json", "--quiet", *LINEAR, "--min-dim", "5"]
    assert main([*command, "--criterion", "sparsity", *argv]) == 0
    got = json.loads(capsys.readouterr().out)
    select = rmtprune.Select(min_dim=5)
    want, report = rmtprune.prune(model, criterion=criterion, select=select)
    assert got["layers"] == json.loads(report.to_json())["layers"]
    sparse = [r["name"] for r in got["layers"] if r["action"] == "sparsified"]
    assert sparse and set(sparse) <= {"0", "2", "3"}  # 2:4 skips layer 2 (90 inputs), saying so
    loaded = rmtprune.load(nn.Sequential(nn.Linear(120, 90), nn.ReLU(), nn.Linear(90, 60),
                                         nn.Linear(60, 10)), out)  # fmt: skip
    for name in ("0", "2", "3"):  # the masks and values of the API's result, bit for bit
        mask, wanted = mask_of(loaded.get_submodule(name)), mask_of(want.get_submodule(name))
        assert (mask is None and wanted is None) or torch.equal(mask, wanted)
        assert torch.equal(loaded.get_submodule(name).weight, want.get_submodule(name).weight)
    assert out.stat().st_size < path.stat().st_size  # values and a bitmask, not dense


def test_sparsity_options_refuse_what_does_not_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = _saved(tmp_path)
    base = ["prune", str(path), "--dry-run", "--quiet", *LINEAR]
    cases = [
        (["--sparsity", "0.5"], "--sparsity applies to --criterion sparsity only"),
        (["--allocation", "global"], "--allocation applies to --criterion sparsity only"),
        (["--criterion", "sparsity"], "--criterion sparsity needs --sparsity"),
        (["--criterion", "sparsity", "--sparsity", "0.5", "--min-rank", "3"], "--min-rank"),
        (["--criterion", "sparsity", "--sparsity", "1.5"], "'target' parameter of Sparsity"),
        (["--criterion", "sparsity", "--sparsity-pattern", "4:2"], "'pattern' parameter"),
        (["--criterion", "sparsity", "--sparsity", "0.5", "--split", "always"], "never splits"),
    ]
    for argv, needle in cases:
        assert main([*base, *argv]) == 2, argv
        assert needle in capsys.readouterr().err, argv
