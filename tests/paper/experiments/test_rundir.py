"""Run directories that grow by seeds, import of archived seeds, re-rendering, the device flag."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from rmtprune.cli import app as cli
from rmtprune.paper.experiments import get_config, run_experiment
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.results import RunResult, SeedResult
from rmtprune.paper.experiments.rundir import config_differences, prepare_analysis_dir, read_config
from rmtprune.paper.experiments.runner import render_run, reproduce
from rmtprune.paper.experiments.seeds import parse_seeds, seed_tuple

from . import load_metrics, strip_times

SRC = str(Path(__file__).resolve().parents[3] / "src")
PAPER = Path(__file__).resolve().parents[3] / "docs" / "results" / "paper"
ARCHIVE = PAPER / "fc-fashion"
# Every archived paper-scale run (a directory with a metrics.json): each must re-render byte for
# byte from its stored seeds; a seed archived later (fc-mnist) joins the test by being there.
ARCHIVES = sorted(p.parent.name for p in PAPER.glob("*/metrics.json"))


def _config(seeds: tuple[int, ...]) -> ExperimentConfig:
    return get_config("fc-mnist", "smoke").replace(seeds=seeds)


@pytest.fixture(scope="module")
def separate(
    data_root: Path, smoke_runs: dict[str, RunResult], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, RunResult]:
    """Seeds 0 and 1 in one run ("both", the shared smoke run), seed 0 alone ("zero"), and
    a copy of "zero" grown by a later call that trains seed 1 ("grown": seed 1 trained apart
    from "both", the source of the imports below)."""
    root = tmp_path_factory.mktemp("separate")
    kw: dict[str, Any] = {"data_dir": data_root, "progress": False}
    both = smoke_runs["fc-mnist"]
    assert both.config.seeds == (0, 1)
    zero = run_experiment(_config((0,)), out=root / "zero", **kw)
    shutil.copytree(zero.run_dir, root / "grown")
    grown = run_experiment(_config((1,)), out=root / "grown", **kw)
    return {"both": both, "zero": zero, "grown": grown}


# ------------------------------------------------------------------------ --seeds grammar
@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", 3), ("0,1,2", (0, 1, 2)), ("1-2", (1, 2)), ("0, 4-6", (0, 4, 5, 6)), ("7", 7),
     ("0-0", (0,))],
)  # fmt: skip
def test_parse_seeds(text: str, expected: Any) -> None:
    assert parse_seeds(text) == expected


def test_a_lone_zero_is_refused_naming_the_count_and_seed_zero() -> None:
    with pytest.raises(ValueError, match=r"a lone number counts seeds: '1' is seed 0 alone, '0-0'"):
        parse_seeds("0")


@pytest.mark.parametrize("text", ["", "a", "2-1", "1,1", "1-", "-1", "0,,1"])
def test_parse_seeds_refuses_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="'seeds' parameter"):
        parse_seeds(text)


def test_seed_tuple_count_list_and_string() -> None:
    assert seed_tuple(3) == (0, 1, 2)
    assert seed_tuple([4, 2]) == (4, 2)
    assert seed_tuple("1-2") == (1, 2)
    for bad in (0, [], [-1], 1.5, b"12"):
        with pytest.raises((ValueError, TypeError), match="seeds"):
            seed_tuple(bad)  # type: ignore[arg-type]


def test_config_differences_ignore_seeds_threads_device_and_read_old_names() -> None:
    a = _config((0,)).to_dict()
    b = _config((1, 2)).replace(num_threads=1, device="cpu").to_dict()
    assert config_differences(a, b) == []
    old = {("prune_every" if k == "every" else k): v for k, v in a.items()}
    assert config_differences(old, a) == []
    assert config_differences(old, {**a, "every": 2}) == ["every"]
    assert "device" not in a


# ------------------------------------------------------------------------ growing directories
def test_import_of_a_separate_seed_equals_one_run_of_both(
    separate: dict[str, RunResult], data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "imported"
    shutil.copytree(separate["zero"].run_dir, out)
    source = separate["grown"].run_dir / "metrics.json"  # seed 0 as here, seed 1 trained apart
    imported = run_experiment(
        _config((0,)), out=out, data_dir=data_root, progress=False, import_seeds=[source]
    )
    assert [s.seed for s in imported.seeds] == [0, 1]
    assert load_metrics(out) == load_metrics(separate["both"].run_dir)
    assert imported.summary == separate["both"].summary
    assert read_config(out)["seeds"] == [0, 1]  # type: ignore[index]
    env = json.loads((out / "environment.json").read_text())
    # the identical seed 0 is skipped, seed 1 imported
    assert env["imported"][0]["seeds"] == [1] and env["imported"][0]["environment"] is not None
    assert (out / "seed-1" / "spectra.json").is_file()  # carried over from the source run
    assert not (out / "seed-1" / "normal").exists()  # results only, no checkpoints
    # The same import again changes nothing.
    again = run_experiment(
        _config((0,)), out=out, data_dir=data_root, progress=False, import_seeds=[out]
    )
    assert again.summary == imported.summary


def test_a_later_call_adds_seeds_and_reports_all(
    separate: dict[str, RunResult], tmp_path: Path
) -> None:
    grown = separate["grown"]  # "zero" continued by a call for seed 1 (the fixture)
    assert [s.seed for s in grown.seeds] == [0, 1]
    assert (grown.run_dir / "seed-1" / "normal").is_dir()  # seed 1 was trained there
    assert load_metrics(grown.run_dir) == load_metrics(separate["both"].run_dir)
    assert read_config(grown.run_dir)["seeds"] == [0, 1]  # type: ignore[index]
    report = (grown.run_dir / "report.md").read_text()
    assert "seeds [0, 1]" in report
    assert len(json.loads((grown.run_dir / "environment.json").read_text())["resumed"]) == 1
    # A stored seed is loaded, not trained again: no checkpoint is needed any more.
    out = tmp_path / "grown"
    shutil.copytree(grown.run_dir, out)
    shutil.rmtree(out / "seed-0" / "normal")
    assert render_run(out).summary == grown.summary


def test_old_layout_seed_without_result_file_is_resumed(
    separate: dict[str, RunResult], data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "old"
    shutil.copytree(separate["zero"].run_dir, out)
    (out / "seed-0" / "result.json").unlink()  # runs made before result.json existed
    resumed = run_experiment(_config((0,)), out=out, data_dir=data_root, progress=False)
    assert load_metrics(out) == load_metrics(separate["zero"].run_dir)
    assert (out / "seed-0" / "result.json").is_file()
    stored = [
        strip_times(json.loads((run / "seed-0" / "result.json").read_text()))
        for run in (out, separate["zero"].run_dir)
    ]
    assert stored[0] == stored[1] and resumed.seeds[0].seed == 0


def test_import_refuses_other_configuration_and_conflicting_seed(
    separate: dict[str, RunResult], data_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    shutil.copytree(separate["zero"].run_dir, out)
    other = tmp_path / "other.json"
    metrics = json.loads((separate["grown"].run_dir / "metrics.json").read_text())
    other.write_text(json.dumps({**metrics, "config": {**metrics["config"], "lr": 0.5}}))
    with pytest.raises(ValueError, match=r"differs from the run's in \['lr'\]"):
        run_experiment(_config((0,)), out=out, data_dir=data_root, import_seeds=[other])
    clash = tmp_path / "clash.json"
    seed_one = metrics["seeds"][1]
    clash.write_text(json.dumps({**metrics, "seeds": [{**seed_one, "seed": 0}]}))
    with pytest.raises(ValueError, match="Cannot import seed 0"):
        run_experiment(_config((0,)), out=out, data_dir=data_root, import_seeds=[clash])
    with pytest.raises(FileNotFoundError, match="import_seeds"):
        run_experiment(_config((0,)), out=out, data_dir=data_root, import_seeds=[tmp_path / "x"])


def test_growing_still_refuses_other_configuration(
    separate: dict[str, RunResult], data_root: Path
) -> None:
    with pytest.raises(ValueError, match=r"differs in \['epochs'\]"):
        run_experiment(
            _config((5,)).replace(epochs=4), out=separate["zero"].run_dir, data_dir=data_root
        )


def _archived_seeds(archive: Path) -> list[SeedResult]:
    return [
        SeedResult.from_dict(s) for s in json.loads((archive / "metrics.json").read_text())["seeds"]
    ]


@pytest.mark.parametrize("experiment", ARCHIVES)
def test_archived_paper_seeds_import_and_render_byte_for_byte(
    experiment: str, data_root: Path, tmp_path: Path
) -> None:
    """The lead's path: the archived seeds (metrics only) join a run directory."""
    archive = PAPER / experiment
    seeds = [s.seed for s in _archived_seeds(archive)]
    out = tmp_path / "paper"
    result = reproduce(
        experiment,
        preset="paper",
        seeds=seeds,
        out=out,
        data_dir=data_root,
        progress=False,
        import_seeds=[str(archive / "metrics.json")],
    )
    assert isinstance(result, RunResult) and [s.seed for s in result.seeds] == seeds
    for name in ("metrics.json", "metrics.csv", "after_training.csv"):
        assert (out / name).read_bytes() == (archive / name).read_bytes(), name


def test_archived_fc_fashion_seeds_hold_the_readmes_numbers() -> None:
    assert "fc-fashion" in ARCHIVES
    finals = []
    for stored in _archived_seeds(ARCHIVE):
        finals += [stored.normal.final_accuracy, stored.pruned.final_accuracy]
    # README's numbers, per seed: normal, pruned
    assert finals == pytest.approx([0.9065, 0.9043, 0.9071, 0.9075, 0.9055, 0.9054], abs=5e-5)


def test_render_run_needs_finished_seeds(separate: dict[str, RunResult], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(separate["both"].run_dir, out)
    (out / "seed-1" / "result.json").unlink()
    with pytest.raises(ValueError, match=r"seeds \[1\] have not finished"):
        render_run(out)
    with pytest.raises(FileNotFoundError, match="run_dir"):
        render_run(tmp_path / "nothing")


# ------------------------------------------------------------------------ a killed process
def _reproduce_process(out: Path, data_root: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    argv = ["reproduce", "fc-mnist", "--preset", "smoke", "--seeds", "1", "--out", str(out)]
    cmd = [sys.executable, "-m", "rmtprune.cli.app", *argv, "--data-dir", str(data_root)]
    return subprocess.Popen(
        [*cmd, "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow  # two processes training the smoke preset
def test_sigkill_during_reproduce_resumes_to_identical_metrics(
    separate: dict[str, RunResult], data_root: Path, tmp_path: Path
) -> None:
    """The command killed with SIGKILL once a checkpoint is on disk (a file may be half
    written), then run again: the same metrics as the uninterrupted run of seed 0 (in
    process, one thread, as here)."""
    killed_dir = tmp_path / "killed"
    killed = _reproduce_process(killed_dir, data_root)
    deadline = time.monotonic() + 600
    while not list(killed_dir.glob("seed-*/*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert not (killed_dir / "metrics.json").exists()
    resumed = _reproduce_process(killed_dir, data_root)
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err.decode()
    got, want = load_metrics(killed_dir), load_metrics(separate["zero"].run_dir)
    assert got["summary"] == want["summary"]  # accuracies, sizes
    assert got["seeds"] == want["seeds"]


# ------------------------------------------------------------------------ device
def test_device_is_recorded_and_not_part_of_the_configuration(
    separate: dict[str, RunResult],
) -> None:
    run = separate["zero"].run_dir
    assert json.loads((run / "environment.json").read_text())["device"] == "cpu"
    assert "device" not in json.loads((run / "config.json").read_text())["config"]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", ""])
def test_malformed_device_is_refused(device: str) -> None:
    with pytest.raises(ValueError, match="'device' parameter"):
        _config((0,)).replace(device=device)


def test_cli_names_device_on_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["reproduce", "fc-mnist", "--device", "gpu"])
    assert info.value.code == 2
    assert "--device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "fc-mnist", "--seeds", "3-1"])
    assert "--seeds" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_unavailable_device_is_refused_before_anything_is_written(
    data_root: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"'device' parameter .*'cuda'"):
        run_experiment(_config((0,)).replace(device="cuda"), out=tmp_path / "r", data_dir=data_root)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_run_trains_and_records_the_device(data_root: Path, tmp_path: Path) -> None:
    result = run_experiment(
        _config((0,)).replace(device="cuda"), out=tmp_path / "gpu", data_dir=data_root
    )
    env = json.loads((tmp_path / "gpu" / "environment.json").read_text())
    assert env["device"] == "cuda" and env["device_name"]
    assert result.summary[1].reduction > 0 and result.seeds[0].pruned.final_accuracy > 0.2


def test_cli_parses_seeds_device_and_imports() -> None:
    argv = "reproduce fc-fashion --seeds 1-2 --device cuda:1 --import-seeds a/metrics.json"
    args = cli.build_parser().parse_args([*argv.split(), "--import-seeds", "b"])
    assert args.seeds == (1, 2) and args.device == "cuda:1"
    assert args.import_seeds == ["a/metrics.json", "b"]
    assert cli.build_parser().parse_args(["demo", "--seeds", "2"]).seeds == 2
    assert cli.build_parser().parse_args(["demo"]).device == "cpu"


def test_every_experiment_refuses_a_foreign_directory(tmp_path: Path, data_root: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    for experiment in ("fc-mnist", "regression", "theory", "landscape", "init"):
        with pytest.raises(ValueError, match="not empty"):
            reproduce(experiment, preset="smoke", out=tmp_path, data_dir=data_root, progress=False)
    with pytest.raises(ValueError, match="'experiment_id' parameter of reproduce"):
        reproduce("nope", out=tmp_path)


def test_analysis_dir_refuses_another_experiment_and_no_resume(tmp_path: Path) -> None:
    config = {"widths": [1, 8, 1], "seeds": 2, "num_threads": 1}
    run_dir = prepare_analysis_dir(tmp_path / "run", "regression", "smoke", config)
    first = json.loads((run_dir / "config.json").read_text())
    assert first["experiment"] == "regression" and first["config"] == config
    # same configuration (threads may differ): continued, recorded under "resumed"
    prepare_analysis_dir(run_dir, "regression", "smoke", {**config, "num_threads": 2})
    assert len(json.loads((run_dir / "environment.json").read_text())["resumed"]) == 1
    assert json.loads((run_dir / "config.json").read_text()) == first
    with pytest.raises(ValueError, match=r"differs in \['seeds', 'widths'\]"):
        prepare_analysis_dir(run_dir, "regression", "smoke", {"widths": [1, 4, 1], "seeds": 3})
    with pytest.raises(ValueError, match="holds a run of 'regression', not of the 'theory'"):
        prepare_analysis_dir(run_dir, "theory", "smoke", config)
    with pytest.raises(ValueError, match="already holds a run"):
        prepare_analysis_dir(run_dir, "regression", "smoke", config, resume=False)


def test_no_resume_refuses_a_run_as_its_help_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reproduce_parser = cli.build_parser()._subparsers._group_actions[0].choices["reproduce"]  # type: ignore[union-attr]
    (flag,) = [a for a in reproduce_parser._actions if "--no-resume" in a.option_strings]
    assert flag.help is not None and flag.help.startswith("refuse an --out that already holds")
    config = _config((0,))
    (tmp_path / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    argv = ["reproduce", "fc-mnist", "--preset", "smoke", "--seeds", "1", "--out", str(tmp_path)]
    assert cli.main([*argv, "--no-resume", "--quiet"]) != 0
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # nothing started over


def test_an_older_format_run_directory_is_named_as_such(tmp_path: Path, data_root: Path) -> None:
    old = tmp_path / "init"  # the archive's first format: a flat config.json
    old.mkdir()
    shutil.copy(ARCHIVE.parents[1] / "init" / "config.json", old / "config.json")
    assert "config" not in json.loads((old / "config.json").read_text())
    kw: dict[str, Any] = {"preset": "smoke", "out": old, "data_dir": data_root, "progress": False}
    for experiment in ("init", "fc-fashion", "regression"):
        with pytest.raises(ValueError, match="written in an older rmtprune format"):
            reproduce(experiment, **kw)
    with pytest.raises(ValueError, match=r"'run_dir' parameter of render_run .* older rmtprune"):
        render_run(old)
    classification = tmp_path / "fc-mnist"  # a current classification run, asked for an analysis
    classification.mkdir()
    (classification / "config.json").write_text(json.dumps({"config": _config((0,)).to_dict()}))
    with pytest.raises(ValueError, match="holds a run of 'fc-mnist', not of the 'init' experiment"):
        reproduce("init", **{**kw, "out": classification})
    with pytest.raises(ValueError, match="holds a run of 'fc-mnist', not of the 'fc-fashion'"):
        reproduce("fc-fashion", **{**kw, "out": classification})
