"""No output option can touch a file of the input (issue 20, item 4): the one check,
``rmtprune._util.apart.check_apart``, used by the command line and the on-disk engine.

Each case wrote over an input file (or would delete one) on 25e4a4c, with exit status 0.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rmtprune._util.apart import check_apart, input_files
from rmtprune.cli.app import main


def _sharded(directory: Path) -> Path:
    """Two shards and their index in ``directory`` (plain 2-D weights, no config.json)."""
    directory.mkdir()
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for k, name in enumerate(("a.weight", "b.weight")):
        shard = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({name: torch.randn(48, 64, generator=g)}, str(directory / shard))
        weight_map[name] = shard
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    "victim", ["model-00001-of-00002.safetensors", "model.safetensors.index.json"]
)
def test_analyze_json_may_not_name_a_file_of_the_input_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], victim: str
) -> None:
    folder = tmp_path / "model"
    _sharded(folder)
    before = _contents(folder)
    argv = ["analyze", str(folder), "--assume-linear", "*", "--json", str(folder / victim)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--json" in err and "is a file of the input" in err and len(err.splitlines()) == 1
    assert _contents(folder) == before


def test_json_through_a_link_to_an_input_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "model"
    index = _sharded(folder)
    before = _contents(folder)
    hard = tmp_path / "report.json"
    os.link(folder / "model-00002-of-00002.safetensors", hard)  # the same inode
    soft = tmp_path / "soft.json"
    soft.symlink_to(index)
    for target in (hard, soft):
        argv = ["analyze", str(index), "--assume-linear", "*", "--json", str(target), "--quiet"]
        assert main(argv) == 2
        assert "is a file of the input" in capsys.readouterr().err
    assert _contents(folder) == before


def test_prune_json_into_the_output_directory_is_refused(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    _sharded(source)
    with pytest.raises(ValueError, match="lies in the output directory -o/--output"):
        check_apart(
            [source],
            files={"--json": out / "rmtprune.safetensors"},
            directories={"-o/--output": out},
        )


def test_an_output_directory_holding_the_input_through_links_is_refused(tmp_path: Path) -> None:
    out, source = tmp_path / "out", tmp_path / "in"
    _sharded(out)  # the real files live in what will be the output directory
    source.mkdir()
    for path in out.iterdir():
        (source / path.name).symlink_to(path)
    assert {p.parent for p in input_files(source)} == {out.resolve()}
    with pytest.raises(ValueError, match=r"holds .* a file of the input .* \(through a link\)"):
        check_apart([source], directories={"-o/--output": out})
    with pytest.raises(ValueError, match="is or contains the input directory"):
        check_apart([source], directories={"-o/--output": tmp_path})


def test_outputs_apart_from_the_input_and_each_other_pass(tmp_path: Path) -> None:
    source = tmp_path / "in"
    _sharded(source)
    check_apart(
        [source],
        files={"--json": tmp_path / "report.json"},
        directories={"-o/--output": tmp_path / "pruned"},  # beside the input: allowed
    )
    with pytest.raises(ValueError, match="lies inside the input directory"):
        # inside it, beside its files: refused: a nested output changes the directory
        check_apart([source], directories={"-o/--output": source / "pruned"})
    with pytest.raises(ValueError, match="--json and -o/--output both name"):
        check_apart([source], files={"--json": tmp_path / "x", "-o/--output": tmp_path / "x"})


@pytest.mark.parametrize("command", ["reproduce", "demo"])
def test_experiment_out_may_not_be_or_hold_the_data_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    (data / "mnist" / "train-images-idx3-ubyte").write_bytes(b"pixels")
    before = _contents(data / "mnist")
    argv = [command, "fc-mnist", "--preset", "smoke"] if command == "reproduce" else [command]
    for out in (data, tmp_path):
        assert main([*argv, "--data-dir", str(data), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is or contains the input directory {data}" in err
    assert _contents(data / "mnist") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def _tree(folder: Path) -> dict[Path, bytes | None]:
    return {
        p.relative_to(folder): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")
    }


@pytest.mark.parametrize(
    "inside",
    ["rmtprune.safetensors", "model.safetensors.index.json", "sub/pruned.safetensors", "pruned"],
)
def test_no_output_lies_inside_an_input_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], inside: str
) -> None:
    # on 212bdef `prune DIR -o DIR/rmtprune.safetensors` succeeded and a second
    # `-o DIR/model.safetensors.index.json` wrote a safetensors file under the index's name:
    # DIR was no longer readable as an input, though no file of it was overwritten
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"a.weight": torch.randn(48, 64)}, str(folder / "model.safetensors"))
    (folder / "sub").mkdir()
    before = _tree(folder)
    out = folder / inside
    argv = ["prune", str(folder), "--no-model", "--assume-linear", "*", "-o", str(out)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"lies inside the input directory {folder.resolve()}" in err
    assert len(err.splitlines()) == 1 and "-o/--output" in err
    assert _tree(folder) == before
    # --json into the input directory: refused the same way, before anything is read
    argv = ["analyze", str(folder), "--assume-linear", "*", "--json", str(folder / "r.json")]
    assert main([*argv, "--quiet"]) == 2
    assert "--json" in capsys.readouterr().err and _tree(folder) == before
    # beside the directory, and beside a single input file, are fine
    assert main(["prune", str(folder), "--no-model", "--assume-linear", "*", "--quiet",
                 "-o", str(tmp_path / "p.safetensors")]) == 0  # fmt: skip
    single = folder / "model.safetensors"
    assert main(["prune", str(single), "--assume-linear", "*", "--quiet",
                 "-o", str(tmp_path / "q.safetensors")]) == 0  # fmt: skip
