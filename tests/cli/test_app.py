"""The command line, end to end, against the Python API it wraps."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.cli.app import build_parser, main

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def build():
        return nn.Sequential(nn.Linear(120, 90), nn.ReLU(), nn.Conv2d(8, 40, 3), nn.Flatten())
    """
)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(120, 90), nn.ReLU(), nn.Conv2d(8, 40, 3), nn.Flatten())
    with torch.no_grad():
        u = torch.randn(90, 2)
        v = torch.randn(2, 120)
        model[0].weight += 0.5 * u @ v / 120**0.5  # two spikes above the bulk
    return model


@pytest.fixture
def factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "cli_factory_mod.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("cli_factory_mod", None)
    return "cli_factory_mod:build"


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, sub in subparsers.items():
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text
            if action.option_strings and action.help is None:
                pytest.fail(f"{name} {action.option_strings} has no help text")


def test_analyze_json_matches_python_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model()
    path = tmp_path / "m.safetensors"
    rmtprune.save(model, path)
    assert main(["analyze", str(path), "--json", "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = rmtprune.analyze(model).to_dict()
    assert [r["name"] for r in got["layers"]] == ["0", "2"]
    for g, w in zip(got["layers"], want["layers"], strict=True):
        assert g["sigma2"] == pytest.approx(w["sigma2"], rel=1e-12)
        assert g["n_spikes"] == w["n_spikes"]
    assert got["layers"][0]["n_spikes"] == 2
    target = tmp_path / "report.json"
    assert main(["analyze", str(path), "--json", str(target), "--quiet"]) == 0
    assert json.loads(target.read_text()) == got
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_model_factory_with_torch_state_dict(
    tmp_path: Path, factory: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model()
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    assert main(["analyze", "--model", factory, "--weights", str(weights), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| 0 | Linear | 90×120 |" in out and "| 2 | Conv2d | 40×72 |" in out


def test_prune_writes_a_model_that_loads_and_matches_the_api(
    tmp_path: Path, factory: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model()
    weights = tmp_path / "w.safetensors"
    rmtprune.save(model, weights)
    out = tmp_path / "pruned.safetensors"
    assert main(["prune", str(weights), "--dry-run", "-o", str(out), "--quiet"]) == 0
    assert not out.exists()
    assert "[dry run]" in capsys.readouterr().out
    argv = ["prune", "--model", factory, str(weights), "-o", str(out), "--quiet"]
    assert main([*argv, "--min-rank", "3"]) == 0
    assert out.exists()
    expected, _ = rmtprune.prune(model, criterion=rmtprune.MPCriterion(min_rank=3))
    import cli_factory_mod

    loaded = rmtprune.load(cli_factory_mod.build(), out)
    x = torch.randn(5, 120)
    torch.testing.assert_close(loaded[0](x), expected[0](x), rtol=0, atol=0)
    # an existing output is never overwritten silently
    assert main([*argv, "--min-rank", "3"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--min-rank", "5", "--overwrite"]) == 0
    assert rmtprune.load(cli_factory_mod.build(), out)[0].rank == 5


def test_shell_model_reprunes_a_pruned_file(tmp_path: Path) -> None:
    model = _model()
    first = tmp_path / "a.safetensors"
    second = tmp_path / "b.safetensors"
    rmtprune.save(model, first)
    # without a model the dense layer's type is unknown: it is pruned only when named
    argv = ["prune", str(first), "-o", str(second), "--bulk-keep", "0.5", "--quiet"]
    assert main([*argv, "--assume-linear", "0"]) == 0
    third = tmp_path / "c.safetensors"  # the factorized layer's type is in the file
    assert main(["prune", str(second), "-o", str(third), "--bulk-keep", "0.1", "--quiet"]) == 0
    once, _ = rmtprune.prune(
        model, criterion=rmtprune.MPCriterion(bulk_keep=0.5), select=rmtprune.Select(include=["0"])
    )
    twice, _ = rmtprune.prune(
        once, criterion=rmtprune.MPCriterion(bulk_keep=0.1), select=rmtprune.Select(include=["0"])
    )
    fresh = _model()
    loaded = rmtprune.load(fresh, third)
    assert loaded[0].rank == twice[0].rank
    x = torch.randn(4, 120)
    torch.testing.assert_close(loaded[0](x), twice[0](x))


def test_bad_input_gives_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.safetensors"
    rmtprune.save(_model(), path)
    assert main(["analyze", str(path), "--alpha", "0.7", "--quiet"]) == 2
    assert "'alpha' parameter of analyze" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["analyze", str(path), "--model", "no_colon_here"]) == 2
    assert "package.module:factory" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["analyze", str(bad)]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert main(["prune", str(path)]) == 2  # a usage error: exit 2 and one line, like argparse's
    assert "rmtprune prune: error: -o/--output is required unless --dry-run" in (
        capsys.readouterr().err
    )
    assert main(["analyze"]) == 2
    assert "give the weights PATH" in capsys.readouterr().err


def test_demo_without_data_says_how_to_provide_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "nodata"
    empty.mkdir()
    out = tmp_path / "run"
    assert main(["demo", "--data-dir", str(empty), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "RMTPRUNE_DATA" in err and "--download" in err
    assert "train-images-idx3-ubyte" in err
    assert not out.exists()  # nothing written before the data is there


def test_reproduce_lists_every_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [
        "fc-mnist",
        "fc-fashion",
        "cnn-mnist",
        "cnn-fashion",
        "fc-cifar10",
        "theory",
        "init",
        "regression",
        "landscape",
        "ablation",
    ]


def test_reproduce_takes_the_ablation_presets_for_the_ablation_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["reproduce", "fc-mnist", "--preset", "manuscript-small", "--quiet"]
    assert main(argv) != 0  # the parser knows the preset; fc-mnist refuses it, naming its own
    assert "one of ['smoke', 'small', 'paper']. Got 'manuscript-small'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "ablation", "--preset", "huge"])
    assert "manuscript-small" in capsys.readouterr().err  # argparse lists every preset


@pytest.mark.parametrize("command", ["analyze", "prune"])
def test_an_option_is_checked_once_whatever_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # the options used to be checked where each route happened to build its Select: a
    # safetensors file said "parameter of analyze", a .pt state dict "parameter of Select"
    streamed, loaded = tmp_path / "m.safetensors", tmp_path / "m.pt"
    rmtprune.save(_model(), streamed)
    torch.save(_model().state_dict(), loaded)
    lines = []
    for path in (streamed, loaded):
        argv = [command, str(path), "--min-dim", "0", "--quiet"]
        assert main([*argv, "--dry-run"] if command == "prune" else argv) == 2
        lines.append(capsys.readouterr().err)
    expected = (
        f"rmtprune {command}: error: The 'min_dim' parameter of {command} must be an int >= 1. "
        "Got 0 instead.\n"
    )
    assert lines == [expected, expected]
