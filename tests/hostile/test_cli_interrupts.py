"""Outputs survive failures and interruptions (issue 20, item 4): a directory output is replaced
atomically, SIGINT and SIGTERM leave no temporary file, and temporary names stay short.

On 1f66e57 a failed `prune DIR -o OUT --overwrite` had already deleted OUT's weights, SIGTERM
left the streamed writer's temporary files behind, and an output name of 250 characters failed
with "File name too long" (its temporary name was 264 characters).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import rmtprune
from rmtprune._util import fileio
from rmtprune._util.fileio import replace_directory
from rmtprune.cli.app import main
from rmtprune.hf import pretrained
from rmtprune.storage import writer

transformers = pytest.importorskip("transformers")

SRC = Path(rmtprune.__file__).resolve().parents[1]  # the rmtprune under test, for subprocesses


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _bert_directory(path: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(path)
    return path


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _leftovers(*directories: Path) -> list[str]:
    """Hidden entries (every temporary name rmtprune makes is hidden)."""
    return sorted(p.name for d in directories for p in d.iterdir() if p.name.startswith("."))


@pytest.fixture
def pruned_out(tmp_path: Path) -> tuple[Path, Path]:
    """A model directory and an earlier `prune` of it (plus a tokenizer file beside)."""
    source = _bert_directory(tmp_path / "bert")
    out = tmp_path / "out"
    assert main(["prune", str(source), "-o", str(out), "--min-rank", "4", "--quiet"]) == 0
    (out / "tokenizer.json").write_text('{"version": "1.0"}')
    return source, out


def _full_disk_in_weights(model: object, path: str | os.PathLike[str], **kw: object) -> None:
    Path(path).write_bytes(b"the first bytes of the new weights")
    raise OSError(errno.ENOSPC, "No space left on device", os.fspath(path))


def _full_disk_in_config(directory: str, key: str, value: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", os.path.join(directory, "config.json"))


@pytest.mark.parametrize("where", ["weights", "config"])
def test_a_failed_directory_output_leaves_the_old_one_byte_for_byte(
    pruned_out: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    source, out = pruned_out
    before = _contents(out)
    if where == "weights":  # the disk fills while the new weights are written
        monkeypatch.setattr(pretrained, "save", _full_disk_in_weights)
    else:  # the new weights are complete; writing the config fails
        monkeypatch.setattr(pretrained, "add_to_config", _full_disk_in_config)
    argv = ["prune", str(source), "-o", str(out), "--overwrite", "--min-rank", "6", "--quiet"]
    capsys.readouterr()
    assert main(argv) == 2
    assert "no space left on device" in capsys.readouterr().err
    assert _contents(out) == before
    assert _leftovers(out, out.parent) == []


def test_an_interrupted_directory_output_leaves_the_old_one(
    pruned_out: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, out = pruned_out
    before = _contents(out)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrained, "add_to_config", interrupted)
    argv = ["prune", str(source), "-o", str(out), "--overwrite", "--quiet"]
    assert main(argv) == 130
    assert _contents(out) == before
    assert _leftovers(out, out.parent) == []


def test_an_overwritten_directory_output_is_replaced_and_keeps_other_files(
    pruned_out: tuple[Path, Path],
) -> None:
    source, out = pruned_out
    (out / "model.safetensors").write_bytes(b"a stale dense checkpoint")
    link = out.parent / "link"
    link.symlink_to(out, target_is_directory=True)
    argv = ["prune", str(source), "-o", str(link), "--overwrite", "--min-rank", "6", "--quiet"]
    assert main(argv) == 0
    assert link.is_symlink() and link.resolve() == out  # the link still names the directory
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "rmtprune.safetensors", "tokenizer.json"]
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    model = rmtprune.from_pretrained(transformers.BertModel, out)
    assert model.encoder.layer[0].attention.self.query.rank == 6
    assert _leftovers(out, out.parent) == []


def test_without_a_sibling_the_directory_is_replaced_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old weights")
    (out / "vocab.txt").write_text("a\nb\n")
    real = fileio.temp_directory

    def no_sibling(directory: str | os.PathLike[str], suffix: str = ".tmp") -> Path:
        if Path(directory) == tmp_path:  # the parent refuses new entries (read-only)
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(directory))
        return real(directory, suffix)

    monkeypatch.setattr(fileio, "temp_directory", no_sibling)
    with pytest.raises(OSError, match="full"), replace_directory(out) as stage:
        (stage / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")
    assert _contents(out) == {"model.safetensors": b"old weights", "vocab.txt": b"a\nb\n"}
    with replace_directory(out, keep=lambda name: name != "model.safetensors") as stage:
        assert stage.parent == out
        (stage / "rmtprune.safetensors").write_bytes(b"new weights")
    assert _contents(out) == {"rmtprune.safetensors": b"new weights", "vocab.txt": b"a\nb\n"}
    assert _leftovers(out, tmp_path) == []


def test_a_failed_swap_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("old")
    real = os.rename
    calls: list[str] = []

    def second_rename_fails(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        calls.append(os.fspath(target))
        if len(calls) == 2:  # new → OUT, after OUT → backup
            raise OSError(errno.EIO, "Input/output error", os.fspath(target))
        real(source, target)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="Input/output error"), replace_directory(out) as stage:
        (stage / "config.json").write_text("new")
    assert len(calls) == 3  # OUT → backup, new → OUT (failed), backup → OUT
    assert _contents(out) == {"config.json": b"old"}
    assert _leftovers(tmp_path) == []


# SIGINT and SIGTERM in a real process -------------------------------------------------------

_SLOW_WRITER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
from rmtprune.{module} import {owner}
real = {owner}.{name}
def slowed(*args, **kwargs):
    result = real(*args, **kwargs)
    print("writing", flush=True)  # part of the output is on disk: now stop me
    time.sleep(120)
    return result
{owner}.{name} = slowed
from rmtprune.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def _run_and_stop(script: str, argv: list[str], sig: signal.Signals, cwd: Path) -> str:
    """Run ``main(argv)`` in a process whose writer pauses mid-output, send ``sig`` there and
    return its stderr (after checking its exit status)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.getcwd()])}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "writing", process.stderr.read() if process.stderr else line
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + sig, (process.returncode, err)
    return err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_writing_a_file_leaves_no_temporary_file(
    tmp_path: Path,
    sig: signal.Signals,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The signal arrives in this process (main's SIGTERM handler; SIGINT as Python's default
    handler raises it) once part of the output is on disk; a real process receiving SIGTERM
    is the directory test below."""
    generator = torch.Generator().manual_seed(0)
    tensors = {f"layers.{k}.weight": torch.randn(96, 128, generator=generator) for k in range(3)}
    source = tmp_path / "model.safetensors"
    save_file(tensors, str(source))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "pruned.safetensors"
    out.write_bytes(b"the earlier output")
    real = writer.SafetensorsWriter.add

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if sig == signal.SIGINT:  # what signal.default_int_handler does
            raise KeyboardInterrupt
        os.kill(os.getpid(), sig)  # main's handler raises Terminated here
        return result

    monkeypatch.setattr(writer.SafetensorsWriter, "add", interrupted)
    argv = ["prune", str(source), "--assume-linear", "*", "-o", str(out), "--overwrite"]
    assert main([*argv, "--quiet"]) == 128 + sig
    err = capsys.readouterr().err
    word = "terminated" if sig == signal.SIGTERM else "interrupted"
    assert err.strip().startswith(f"rmtprune prune: error: {word}"), err
    assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["pruned.safetensors"]
    assert out.read_bytes() == b"the earlier output"


@pytest.mark.slow  # a real process importing torch and transformers
def test_sigterm_while_writing_a_directory_leaves_the_old_one(
    pruned_out: tuple[Path, Path],
) -> None:
    source, out = pruned_out
    before = _contents(out)
    script = _SLOW_WRITER.format(module="hf", owner="pretrained", name="save")
    argv = ["prune", str(source), "-o", str(out), "--overwrite", "--min-rank", "6", "--quiet"]
    err = _run_and_stop(script, argv, signal.SIGTERM, out.parent)
    assert "terminated" in err
    assert _contents(out) == before
    assert _leftovers(out, out.parent) == []


def test_main_restores_the_sigterm_handler(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert main(["prune", str(tmp_path / "missing.safetensors"), "--dry-run", "--quiet"]) == 2
    assert signal.getsignal(signal.SIGTERM) is before


# temporary names within the file system's limit ---------------------------------------------


@pytest.mark.parametrize("kind", ["safetensors (streamed writer)", "state dict (rmtprune.save)"])
def test_an_output_name_of_250_characters_is_written(tmp_path: Path, kind: str) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {"fc.weight": torch.randn(64, 80, generator=generator)}
    if kind.startswith("safetensors"):
        source = tmp_path / "model.safetensors"
        save_file(tensors, str(source))
    else:
        source = tmp_path / "model.pt"
        torch.save(tensors, source)
    out = tmp_path / ("p" * (250 - len(".safetensors")) + ".safetensors")
    report = tmp_path / ("r" * (250 - len(".json")) + ".json")
    assert len(out.name) == len(report.name) == 250
    argv = ["prune", str(source), "--assume-linear", "fc", "-o", str(out), "--json", str(report)]
    assert main([*argv, "--quiet"]) == 0
    with safe_open(str(out), "pt") as handle:
        assert set(handle.keys()) == {"fc.first.weight", "fc.second.weight"}
    assert report.read_text().startswith("{")
    assert _leftovers(tmp_path) == []
