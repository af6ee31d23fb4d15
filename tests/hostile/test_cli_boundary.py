"""The command line's one error boundary: every expected failure is one line and exit 2.

Each test names the hostile attempt of issue 10 it replays (docs/reliability.md).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.cli import app as cli
from rmtprune.cli.app import main
from rmtprune.ondisk import inputs as cli_inputs


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(80, 60), nn.ReLU(), nn.Linear(60, 40))


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    rmtprune.save(_model(), path)
    return path


def _one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_output_directory_missing_is_reported_before_any_work(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    called = []
    monkeypatch.setattr(rmtprune, "prune", lambda *a, **k: called.append(1))
    out = tmp_path / "no" / "such" / "dir" / "p.safetensors"
    assert main(["prune", str(weights), "-o", str(out), "--quiet"]) == 2
    _one_error_line(capsys, str(out.parent), "does not exist", "create it")
    assert called == []  # checked before the model was even loaded


def test_output_that_is_a_directory(weights: Path, tmp_path: Path, capsys) -> None:
    assert main(["prune", str(weights), "-o", str(tmp_path), "--quiet"]) == 2
    _one_error_line(capsys, str(tmp_path), "is a directory")


def test_output_in_read_only_directory(weights: Path, capsys) -> None:
    # /proc refuses new files even for root (chmod tricks do not stop root)
    assert main(["prune", str(weights), "-o", "/proc/pruned.safetensors", "--quiet"]) == 2
    _one_error_line(capsys, "/proc", "choose a writable location")


def test_output_read_only_directory_simulated(
    weights: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import tempfile

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["prune", str(weights), "-o", str(tmp_path / "p.safetensors"), "--quiet"]) == 2
    _one_error_line(capsys, str(tmp_path), "Permission denied")


def test_overwriting_proc_file_is_refused_with_a_clear_message(weights: Path, capsys) -> None:
    # before: "[Errno 17] File exists: '/proc/version'"
    assert main(["prune", str(weights), "-o", "/proc/version", "--overwrite", "--quiet"]) == 2
    _one_error_line(capsys, "/proc")
    assert main(["prune", str(weights), "-o", "/proc/version", "--quiet"]) == 2
    _one_error_line(capsys, "/proc/version exists; pass --overwrite")


def test_reproduce_out_that_is_a_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    assert main(["reproduce", "fc-mnist", "--preset", "smoke", "--out", str(target)]) == 2
    _one_error_line(capsys, str(target), "not a directory")
    assert target.read_text() == "x"


def test_disk_full_while_saving(weights: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "p.safetensors"))

    monkeypatch.setattr(cli_inputs, "save", full)  # what `prune -o FILE` calls
    report = tmp_path / "report.json"
    out = tmp_path / "p.safetensors"
    state_dict = tmp_path / "w.pt"  # loaded whole (safetensors streams: test_cli_stream_prune)
    torch.save(_model().state_dict(), state_dict)
    argv = ["prune", str(state_dict), "-o", str(out), "--json", str(report), "--quiet"]
    assert main(argv) == 2
    _one_error_line(capsys, "no space left on device", str(out))
    assert not report.exists()  # the report is not left behind when the model was not saved


def test_json_report_is_world_readable_like_models(weights: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    out = tmp_path / "p.safetensors"
    argv = ["prune", str(weights), "-o", str(out), "--json", str(report), "--quiet"]
    assert main(argv) == 0
    assert stat.S_IMODE(report.stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert json.loads(report.read_text())["params_before"] == sum(
        p.numel() for p in _model().parameters()
    )


def test_json_may_not_overwrite_the_input(weights: Path, capsys) -> None:
    before = weights.read_bytes()
    assert main(["analyze", str(weights), "--json", str(weights), "--quiet"]) == 2
    _one_error_line(capsys, "--json", "is a file of the input")
    assert weights.read_bytes() == before


def test_keyboard_interrupt_exits_130_with_one_line(weights: Path, capsys, monkeypatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_inputs, "analyze_input", interrupted)  # the one entry point
    assert main(["analyze", str(weights), "--quiet"]) == 130
    _one_error_line(capsys, "interrupted")


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(
    weights: Path, capsys, monkeypatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli_inputs, "analyze_input", broken)  # the one entry point
    assert main(["analyze", str(weights), "--quiet"]) == 1
    _one_error_line(capsys, "ZeroDivisionError", "boom", "--debug")
    assert main(["analyze", str(weights), "--quiet", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: boom" in err


def test_permission_error_on_input_names_the_file(weights: Path, capsys, monkeypatch) -> None:
    import builtins

    real_open = builtins.open

    def guarded(file: object, *args: object, **kwargs: object) -> object:
        if os.fspath(file) == str(weights):  # type: ignore[call-overload]
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", guarded)
    assert main(["analyze", str(weights), "--quiet"]) == 2
    _one_error_line(capsys, str(weights), "cannot be read", "permission")


def test_directory_given_as_weights(tmp_path: Path, capsys) -> None:
    # a directory is read as a model directory; one without a checkpoint is named, one line
    assert main(["analyze", str(tmp_path), "--quiet"]) == 2
    _one_error_line(capsys, str(tmp_path), "holds none of")


FACTORIES = textwrap.dedent(
    """
    import torch
    from torch import nn
    NOT_CALLABLE = 5
    def wrong():
        return nn.Sequential(nn.Linear(10, 10))
    def raising():
        raise RuntimeError("factory exploded")
    """
)


@pytest.fixture
def factories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "hostile_factories.py").write_text(FACTORIES)
    (tmp_path / "hostile_broken.py").write_text("raise RuntimeError('import exploded')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("hostile_factories", "hostile_broken"):
        sys.modules.pop(name, None)
    return "hostile_factories"


@pytest.mark.parametrize(
    ("target", "needles"),
    [
        ("hostile_factories:NOT_CALLABLE", ["NOT_CALLABLE", "int", "not a function"]),
        ("hostile_factories:raising", ["hostile_factories:raising", "factory exploded"]),
        ("hostile_broken:build", ["hostile_broken", "import exploded"]),
        ("hostile_missing_module:build", ["hostile_missing_module", "PYTHONPATH"]),
        ("hostile_factories:wrong", ["hostile_factories:wrong", "does not fit", "unexpected keys"]),
    ],
)
def test_model_factory_failures(
    factories: str, weights: Path, capsys, target: str, needles: list[str]
) -> None:
    plain = weights.with_suffix(".pt")
    torch.save(_model().state_dict(), plain)
    assert main(["analyze", str(plain), "--model", target, "--quiet"]) == 2
    _one_error_line(capsys, *needles)


def test_usage_errors_are_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["analyze", "--alpha", "abc"])
    assert exc.value.code == 2
    _one_error_line(capsys, "--alpha", "invalid float value")
    with pytest.raises(SystemExit):
        main(["analyze", "x", "\r0", "--bogus\nline"])  # found by fuzzing: control characters
    _one_error_line(capsys, "unrecognized arguments", "0 --bogus | line")


def test_debug_is_documented() -> None:
    assert "--debug" in cli.build_parser().format_help()


def test_safetensors_disk_full_names_the_output(
    weights: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # before: "No space left on device" as a SafetensorError traceback
    from safetensors import SafetensorError

    import rmtprune.storage.format

    def full(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(rmtprune.storage.format, "save_file", full)
    out = tmp_path / "p.safetensors"
    report = tmp_path / "r.json"
    state_dict = tmp_path / "w.pt"  # loaded whole, saved by rmtprune.save
    torch.save(_model().state_dict(), state_dict)
    argv = ["prune", str(state_dict), "-o", str(out), "--json", str(report), "--quiet"]
    assert main(argv) == 2
    _one_error_line(capsys, f"could not write {out}", "No space left", "free some space")
    assert not out.exists() and not report.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt", "w.safetensors"]


@pytest.mark.parametrize("content", [b"", b"\x00" * 5, b"not a safetensors file at all"])
def test_broken_safetensors_file_is_named_as_such(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    for command in ("analyze", "prune"):
        assert main([command, str(path), "--dry-run" if command == "prune" else "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not a valid safetensors file" in err[0], err
        assert f"its {len(content)} bytes" in err[0] and "torch.load" not in err[0]
