"""The API raises documented exception types naming the layer or file (issue 10, item 4)."""

from __future__ import annotations

import builtins
import errno
import json
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import rmtprune
from rmtprune import DegenerateSpectrumWarning, InvalidFileError
from rmtprune._util.fileio import check_input_file
from rmtprune.cli.app import main
from rmtprune.ondisk.sources import read_tensors
from rmtprune.paper.data.datasets import read_cifar_batch
from rmtprune.paper.training.state import load_state, save_state


def _two_layers() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 48))


@pytest.mark.parametrize(
    ("dtype", "needle"),
    [(torch.int8, "unsupported dtype torch.int8"), (torch.complex64, "torch.complex64")],
)
def test_unsupported_dtype_skips_only_that_layer(dtype: torch.dtype, needle: str) -> None:
    # before: one int8 or complex layer aborted the whole analyze, naming no layer
    model = _two_layers()
    weight = model[0].weight.detach()
    model[0].weight = nn.Parameter((weight * 100).to(dtype), requires_grad=False)
    report = rmtprune.analyze(model)
    assert report["0"].status == "skipped" and needle in report["0"].reason
    assert report["2"].status == "ok"
    expected = rmtprune.analyze(nn.Sequential(model[2]))["0"]
    assert report["2"].sigma2 == expected.sigma2
    _, pruned = rmtprune.prune(model, criterion=rmtprune.MPCriterion(min_rank=4), dry_run=True)
    assert pruned["0"].action == "skipped" and needle in pruned["0"].reason


def test_meta_device_model_is_reported_not_crashed() -> None:
    # before: "Tensor.item() cannot be called on meta tensors"
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(128, 64))
    row = rmtprune.analyze(model)["0"]
    assert row.status == "skipped" and "meta device" in row.reason
    assert row.shape == (64, 128)


def test_layers_of_the_wrong_type() -> None:
    # before: "'int' object is not iterable"
    with pytest.raises(TypeError, match="The 'include' parameter of Select must be a"):
        rmtprune.analyze(_two_layers(), select=rmtprune.Select(include=5))  # type: ignore[arg-type]


def test_misspelled_ranks_name_raises_like_layers() -> None:
    # before: silently ignored
    model = _two_layers()
    with pytest.raises(ValueError, match=r"'ranks' parameter of prune names '3'.*Valid names"):
        rmtprune.prune(model, ranks={"3": 10})
    with pytest.raises(TypeError, match="mapping from layer names to ints"):
        rmtprune.prune(model, ranks=5)  # type: ignore[arg-type]
    _, report = rmtprune.prune(model, ranks={"2": 10}, dry_run=True)  # a right name still works
    assert report["2"].rank_before == 10


def test_bema_warns_on_an_exactly_low_rank_matrix() -> None:
    # before: sigma2 ~ 1e-16 and dozens of "spikes" with no warning
    rng = np.random.default_rng(0)
    rank_one = np.outer(rng.standard_normal(200), rng.standard_normal(400))
    with pytest.warns(DegenerateSpectrumWarning, match="exactly low-rank"):
        rmtprune.BEMA().fit(rank_one)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateSpectrumWarning)
        noisy = rank_one + 1e-3 * rng.standard_normal((200, 400))
        assert rmtprune.BEMA().fit(noisy).n_spikes_ == 1  # a real bulk: no warning


def test_load_of_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    # before: "No such device (os error 19)" / "weights file not found" for a directory
    with pytest.raises(IsADirectoryError, match="is a directory"):
        rmtprune.load(nn.Linear(2, 2), tmp_path)
    # a directory is a model directory to the CLI reader; one without a checkpoint is named
    with pytest.raises(FileNotFoundError, match="holds none of"):
        read_tensors(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        rmtprune.load(nn.Linear(2, 2), tmp_path / "missing.safetensors")


def test_unreadable_file_is_not_reported_as_missing(tmp_path: Path, monkeypatch) -> None:
    # before: FileNotFoundError for a file that exists but cannot be read
    path = tmp_path / "m.safetensors"
    rmtprune.save(nn.Linear(2, 2), path)
    real_open = builtins.open

    def guarded(file: object, *args: object, **kwargs: object) -> object:
        if os.fspath(file) == str(path):  # type: ignore[call-overload]
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(builtins, "open", guarded)
    with pytest.raises(PermissionError, match="exists but cannot be read"):
        check_input_file(path, what="model file")
    with pytest.raises(PermissionError, match=re.escape(str(path))):
        rmtprune.load(nn.Linear(2, 2), path)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pt_never_runs_and_the_message_gives_no_unsafe_advice(
    tmp_path: Path, capsys
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": _Evil(marker)}, path)
    assert main(["analyze", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert str(path) in err and "weights_only=True" in err
    assert "weights_only=False" not in err and "set to False" not in err
    assert "posix.system" in err or "GLOBAL" in err  # what was refused


def test_checkpoint_truncated_malicious_and_foreign(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"format": "something else"}, good)
    with pytest.raises(InvalidFileError, match=r"not usable.*Not an rmtprune training checkpoint"):
        load_state(good)
    truncated = tmp_path / "trunc.pt"
    torch.save({"w": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(InvalidFileError, match=r"trunc\.pt cannot be read.*delete it"):
        load_state(truncated)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"w": _Evil(marker)}, evil)
    with pytest.raises(InvalidFileError, match=r"evil\.pt") as exc:
        load_state(evil)
    assert not marker.exists() and "weights_only=False" not in str(exc.value)


def test_checkpoint_disk_full_names_the_file(tmp_path: Path, monkeypatch) -> None:
    # before: "enforce fail at inline_container.cc" or a bare "[Errno 28]"
    from rmtprune.paper.training import state as module

    def full(obj: object, fh: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module.torch, "save", full)
    target = tmp_path / "checkpoint.pt"
    fake = type("C", (), {"to_dict": lambda self: {}})()
    with pytest.raises(OSError, match="No space left") as exc:
        save_state(target, fake)  # type: ignore[arg-type]
    assert exc.value.filename == str(target) and not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind

    def zip_writer_failed(obj: object, fh: object) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64")

    monkeypatch.setattr(module.torch, "save", zip_writer_failed)
    with pytest.raises(OSError, match=r"could not write the checkpoint .*checkpoint\.pt"):
        save_state(target, fake)  # type: ignore[arg-type]


def test_damaged_cifar_batch_names_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(marker)}))
    with pytest.raises(pickle.UnpicklingError, match=re.escape(str(path))):
        read_cifar_batch(path)
    assert not marker.exists()
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-20])
    with pytest.raises((ValueError, pickle.UnpicklingError), match=re.escape(str(path))):
        read_cifar_batch(path)


def test_resume_refusal_speaks_the_command_line(tmp_path: Path) -> None:
    from rmtprune.paper.experiments.registry import get_config
    from rmtprune.paper.experiments.rundir import prepare_run_dir

    config = get_config("fc-mnist", "smoke")
    (tmp_path / "config.json").write_text(json.dumps({"config": config.to_dict()}))
    with pytest.raises(ValueError, match="without --no-resume") as exc:
        prepare_run_dir(config, tmp_path, resume=False)
    assert "Pass resume=True" not in str(exc.value)
