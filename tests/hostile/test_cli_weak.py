"""Weak outcomes of `rmtprune analyze|prune` made clean (issue 20, item 6): each one now gives a
report row with its reason, or one error line naming the file or option (exit 2).

Before (1f66e57): BOOL/U64 weights vanished from the table; `--assume-linear` patterns naming
nothing were ignored; float8 weights with `--assume-linear` crashed in nn.Linear's init; the
Hugging Face cache layout was refused; a broken config.json gave a JSON error naming no file;
a config.json with custom code reached transformers' interactive prompt; `-o -` wrote a file
named "-".
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rmtprune.cli.app import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _noise(m: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed))


def _report(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, dict[str, object]]:
    """The JSON report of ``argv`` (exit 0), its rows by name."""
    capsys.readouterr()
    assert main([*argv, "--json", "--quiet"]) == 0, capsys.readouterr().err
    return {row["name"]: row for row in json.loads(capsys.readouterr().out)["layers"]}


def _one_error_line(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _tensors_of(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}


# 1. weights that are not floating point -------------------------------------------------------


@pytest.mark.parametrize("command", ["analyze", "prune"])
def test_weights_that_are_not_floating_point_get_a_skipped_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    source = tmp_path / "model.safetensors"
    mask = torch.rand(64, 80, generator=torch.Generator().manual_seed(1)) > 0.5
    ids = torch.arange(64 * 80).reshape(64, 80).to(torch.uint64)
    save_file({"fc.weight": _noise(64, 80, 0), "mask.weight": mask, "ids.weight": ids}, str(source))
    out = tmp_path / "out.safetensors"
    argv = [command, str(source), "--assume-linear", "fc", "mask", "ids"]
    rows = _report(capsys, [*argv, "-o", str(out)] if command == "prune" else argv)
    assert set(rows) == {"fc", "ids", "mask"}
    for name, dtype in (("mask", "torch.bool"), ("ids", "torch.uint64")):
        row = rows[name]
        assert row["status" if command == "analyze" else "action"] == "skipped"
        assert row["reason"] == (
            f"unsupported dtype {dtype} of 'weight': only real floating-point weights are analysed"
        )
        assert row["shape"] == [64, 80]
    if command == "prune":  # carried through unchanged
        stored = _tensors_of(out)
        assert torch.equal(stored["mask.weight"], mask) and torch.equal(stored["ids.weight"], ids)
        assert rows["fc"]["action"] == "split"


# 2. --assume-linear patterns that match nothing ----------------------------------------------


@pytest.mark.parametrize(
    ("option", "pattern", "needle"),
    [
        ("--assume-linear", "fcc", "'assume_linear' parameter names 'fcc', which matches no 2-D"),
        ("--assume-conv2d", "fc*", "'assume_conv2d' parameter names 'fc*', which matches no 4-D"),
    ],
)
def test_assume_patterns_that_match_nothing_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, pattern: str, needle: str
) -> None:
    source = tmp_path / "model.safetensors"
    conv = _noise(16, 8 * 9, 1).reshape(16, 8, 3, 3)
    save_file({"fc.weight": _noise(64, 80, 0), "conv.weight": conv}, str(source))
    valid = "['fc']" if option == "--assume-linear" else "['conv']"
    for command in ("analyze", "prune"):
        out = ["-o", str(tmp_path / "o.safetensors")] if command == "prune" else []
        assert main([command, str(source), option, pattern, *out, "--quiet"]) == 2
        _one_error_line(capsys, needle, f"Valid names: {valid}")
    assert not (tmp_path / "o.safetensors").exists()


def test_assume_linear_with_a_model_factory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "model.safetensors"
    save_file({"weight": _noise(4, 4, 0)}, str(source))
    argv = ["analyze", str(source), "--model", "torch.nn:Identity", "--assume-linear", "*"]
    assert main([*argv, "--quiet"]) == 2
    _one_error_line(capsys, "--assume-linear", "--model", "leave --assume-linear out")


# 3. float8 weights named with --assume-linear ------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_weights_are_analysed_and_skipped_not_crashed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: torch.dtype
) -> None:
    source = tmp_path / "model.safetensors"
    weight = _noise(64, 80, 0).to(dtype)
    save_file({"fc.weight": weight, "dense.weight": _noise(64, 80, 1)}, str(source))
    out = tmp_path / "out.safetensors"
    argv = ["prune", str(source), "--assume-linear", "*", "-o", str(out)]
    rows = _report(capsys, argv)
    assert rows["fc"]["action"] == "skipped"
    assert str(rows["fc"]["reason"]).startswith("stored in float8 (F8_E")
    assert rows["fc"]["sigma2"] is not None  # analysed (upcast), only not pruned
    assert rows["dense"]["action"] == "split"
    stored = _tensors_of(out)
    assert stored["fc.weight"].dtype == dtype
    assert torch.equal(stored["fc.weight"].view(torch.uint8), weight.view(torch.uint8))


# 4. the Hugging Face hub cache layout ----------------------------------------------------------


def _hub_snapshot(cache: Path, files: dict[str, bytes]) -> Path:
    """``models--org--name/snapshots/<rev>/`` whose files link to ``../../blobs/<sha256>``."""
    repo = cache / "models--org--name"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / digest).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", digest))
    return snapshot


def _sharded_files(tmp_path: Path) -> dict[str, bytes]:
    weight_map, files = {}, {}
    for k, name in enumerate(("a.weight", "b.weight")):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({name: _noise(48, 64, k)}, str(tmp_path / shard))
        files[shard] = (tmp_path / shard).read_bytes()
        (tmp_path / shard).unlink()
        weight_map[name] = shard
    index = {"metadata": {}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    return files


def test_a_hub_cache_snapshot_is_read_through_its_links(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _sharded_files(tmp_path)
    snapshot = _hub_snapshot(tmp_path / "hub", files)
    plain = tmp_path / "plain"
    plain.mkdir()
    for name, data in files.items():
        (plain / name).write_bytes(data)
    argv = ["--assume-linear", "*"]
    assert _report(capsys, ["analyze", str(snapshot), *argv]) == _report(
        capsys, ["analyze", str(plain), *argv]
    )
    out = tmp_path / "pruned.safetensors"
    rows = _report(capsys, ["prune", str(snapshot), *argv, "-o", str(out)])
    assert {row["action"] for row in rows.values()} == {"split"}
    assert set(_tensors_of(out)) == {"a.first.weight", "a.second.weight", "b.first.weight",
                                     "b.second.weight"}  # fmt: skip
    # the output may not land in the blobs the input's links reach
    blobs = snapshot.parent.parent / "blobs"
    assert main(["prune", str(snapshot), *argv, "-o", str(snapshot.parent.parent), "--quiet"]) == 2
    capsys.readouterr()
    assert len(list(blobs.iterdir())) == 3


def test_a_shard_linking_elsewhere_is_refused_with_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _sharded_files(tmp_path)
    snapshot = _hub_snapshot(tmp_path / "hub", files)
    other = tmp_path / "elsewhere.safetensors"
    shard = snapshot / "model-00002-of-00002.safetensors"
    other.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(other)  # a link out of the cache repository
    assert main(["analyze", str(snapshot), "--quiet"]) == 2
    _one_error_line(capsys, "is a link to a file outside", "models--*/blobs", "copy the shards")


# 5. and 6. config.json ---------------------------------------------------------------------


def _model_directory(path: Path, config: str) -> Path:
    path.mkdir()
    save_file({"fc.weight": _noise(64, 80, 0)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(config)
    return path


@pytest.mark.parametrize("command", ["analyze", "prune"])
def test_a_config_that_is_not_json_is_named_with_the_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    directory = _model_directory(tmp_path / "m", '{"model_type": "bert",, }')
    out = ["-o", str(tmp_path / "out")] if command == "prune" else []
    assert main([command, str(directory), *out, "--quiet"]) == 2
    _one_error_line(capsys, f"{directory / 'config.json'} is not valid JSON", "line 1 column 23")


@pytest.mark.parametrize("command", ["analyze", "prune"])
def test_a_config_asking_for_custom_code_is_refused_without_a_prompt(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    config = {
        "model_type": "my-own-model",
        "architectures": ["MyModel"],
        "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModel": "modeling_my.MyModel"},
    }
    directory = _model_directory(tmp_path / "m", json.dumps(config))
    (directory / "configuration_my.py").write_text("raise SystemExit('custom code ran')\n")
    asked: list[str] = []

    def prompt(text: str = "") -> str:
        asked.append(text)
        return "n"

    monkeypatch.setattr(builtins, "input", prompt)
    out = ["-o", str(tmp_path / "out")] if command == "prune" else []
    assert main([command, str(directory), *out, "--quiet"]) == 2
    _one_error_line(capsys, "config.json needs custom code", "never runs code", "--no-model")
    assert asked == []
    assert not (tmp_path / "out").exists()
    rows = _report(capsys, ["analyze", str(directory), "--no-model"])  # the advice works
    assert set(rows) == {"fc"}


# 7. -o - ---------------------------------------------------------------------------------------


def test_output_to_stdout_is_refused_and_json_to_stdout_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "model.safetensors"
    save_file({"fc.weight": _noise(64, 80, 0)}, str(source))
    monkeypatch.chdir(tmp_path)
    assert main(["prune", str(source), "--assume-linear", "fc", "-o", "-", "--quiet"]) == 2
    _one_error_line(capsys, "-o/--output - (standard output) is not supported", "./-")
    assert not os.path.lexists(tmp_path / "-")
    assert main(["analyze", str(source), "--json", "-", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["name"] == "fc"
    assert not os.path.lexists(tmp_path / "-")
