"""Progress bars (issue 13, item 6) and the optional extras staying optional (item 7)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune._util.progress import progress_enabled, resolve
from rmtprune.cli.app import main

SRC = str(Path(rmtprune.__file__).resolve().parents[1])


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 40))


def test_analyze_and_prune_show_a_bar_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    assert resolve(None) is False  # pytest's stderr is not a terminal: off by default
    rmtprune.analyze(_model())
    rmtprune.prune(_model(), criterion=rmtprune.MPCriterion(min_rank=8))
    assert capsys.readouterr().err == ""
    rmtprune.analyze(_model(), progress=True)
    assert "analyze: fitting" in capsys.readouterr().err
    rmtprune.prune(_model(), criterion=rmtprune.MPCriterion(min_rank=8), progress=True)
    err = capsys.readouterr().err
    assert "prune: fitting" in err and "prune: surgery" in err
    with progress_enabled(True):
        rmtprune.analyze(_model(), progress=False)
    assert capsys.readouterr().err == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_checkpoint_bar_follows_the_one_progress_choice() -> None:
    # the streamed checkpoint routes decide on and off like the walker's bars: the enclosing
    # progress_enabled(...) choice first, then whether the stream is a terminal
    from rmtprune.ondisk.progress import CheckpointProgress

    def shown(stream: io.StringIO, enabled: bool | None = None) -> str:
        with CheckpointProgress([1.0, 3.0], enabled=enabled, stream=stream, use_tqdm=False) as bar:
            bar.advance("fc1", 1.0)
            bar.advance("fc2", 3.0)
        return stream.getvalue()

    assert shown(_Terminal()).splitlines()[0].startswith("[1/2]  25% fc1")
    assert shown(io.StringIO()) == ""
    with progress_enabled(False):
        assert shown(_Terminal()) == ""
        assert shown(_Terminal(), enabled=True).count("\n") == 2  # an explicit choice wins
    with progress_enabled(True):
        assert shown(io.StringIO()).splitlines()[1].startswith("[2/2] 100% fc2")
    with pytest.raises(TypeError, match="'progress' parameter"):
        CheckpointProgress([1.0], enabled="yes")  # type: ignore[arg-type]


def test_pruner_step_bar(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    pruner = rmtprune.SpectralPruner(
        _model(),
        schedule=rmtprune.schedules.Constant(0.0),
        every=1,
        criterion=rmtprune.MPCriterion(min_rank=8),
    )
    assert pruner.step(1, progress=True).changed
    assert "prune: fitting" in capsys.readouterr().err


def test_cli_progress_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")
    path = tmp_path / "m.safetensors"
    rmtprune.save(_model(), path)
    # the file's two weights are untyped (no model): one bar over both, read one at a time
    assert main(["analyze", str(path), "--progress"]) == 0
    assert "2/2 layers" in capsys.readouterr().err
    assert main(["analyze", str(path), "--no-progress"]) == 0
    assert "layers" not in capsys.readouterr().err
    assert main(["analyze", str(path), "--progress", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_without_tqdm_there_is_no_bar_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm...` raise ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    report = rmtprune.analyze(_model(), progress=True)
    assert report["0"].status == "ok" and capsys.readouterr().err == ""


def test_bad_progress_value() -> None:
    with pytest.raises(TypeError, match="'progress' parameter"):
        rmtprune.analyze(_model(), progress="yes")  # type: ignore[arg-type]


def test_import_rmtprune_imports_no_optional_stack() -> None:
    # (``import torch`` itself imports ``tqdm`` through torch.hub when it is installed; our bar
    # module imports ``tqdm.auto`` only when a bar is shown.)  FSDP and distributed
    # checkpointing are imported by integrations.fsdp's functions when called, not on import.
    code = (
        "import sys, rmtprune, rmtprune.integrations, rmtprune.integrations.peft, "
        "rmtprune.integrations.fsdp, rmtprune.pruning.optim; "
        "heavy = ('lightning', 'transformers', 'accelerate', 'pytorch_lightning', 'peft'); "
        "found = {m.split('.')[0] for m in sys.modules} & set(heavy); "
        "found |= {m for m in sys.modules if m.startswith(('torch.distributed.fsdp', "
        "'torch.distributed.checkpoint', 'tqdm.auto'))}; "
        "print(sorted(found))"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
