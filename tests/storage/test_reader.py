"""The streaming checkpoint reader: what it reads, and the clear errors on a bad index or header."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rmtprune.cli.app import main
from rmtprune.hf.directory import transformers_available
from rmtprune.ondisk.analysis import classify_tensors
from rmtprune.ondisk.progress import CheckpointProgress, layer_cost
from rmtprune.storage.reader import checkpoint_file, open_checkpoint


def _sharded(directory: Path, n_shards: int = 3) -> dict[str, torch.Tensor]:
    """A sharded checkpoint written by hand: tensors spread over ``n_shards`` files."""
    torch.manual_seed(0)
    tensors = {f"layer{i}.weight": torch.randn(40 + i, 50) for i in range(6)}
    tensors["layer0.bias"] = torch.randn(40)
    names = sorted(tensors)
    weight_map = {}
    for k in range(n_shards):
        filename = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::n_shards]}
        save_file(part, directory / filename)
        weight_map.update(dict.fromkeys(part, filename))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return tensors


def test_reads_every_tensor_of_a_sharded_checkpoint(tmp_path: Path) -> None:
    tensors = _sharded(tmp_path)
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.names() == sorted(tensors)
    assert len({ckpt.info(n).file for n in ckpt.names()}) == 3
    for name, tensor in ckpt.iter_tensors():
        assert torch.equal(tensor, tensors[name])
        assert ckpt.info(name).shape == tuple(tensor.shape)
        assert ckpt.info(name).nbytes == tensor.numel() * 4
    index = open_checkpoint(tmp_path / "model.safetensors.index.json")
    assert index.names() == ckpt.names()


def test_the_file_a_directory_is_read_from(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="holds none of"):
        checkpoint_file(tmp_path)
    save_file({"a": torch.ones(2)}, tmp_path / "rmtprune.safetensors")
    assert checkpoint_file(tmp_path) == str(tmp_path / "rmtprune.safetensors")
    save_file({"b": torch.ones(3)}, tmp_path / "model.safetensors")
    assert checkpoint_file(tmp_path) == str(tmp_path / "model.safetensors")
    assert open_checkpoint(tmp_path).names() == ["b"]
    _sharded(tmp_path)  # an index wins over a single file
    assert checkpoint_file(tmp_path) == str(tmp_path / "model.safetensors.index.json")
    assert open_checkpoint(tmp_path).path == checkpoint_file(tmp_path)
    assert checkpoint_file(tmp_path / "x.safetensors") == str(tmp_path / "x.safetensors")


def _cli_error(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["analyze", str(path), "--quiet", "--no-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err  # one line
    return err


def test_missing_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sharded(tmp_path)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    err = _cli_error(tmp_path, capsys)
    assert "model-00002-of-00003.safetensors" in err and "missing" in err


@pytest.mark.parametrize("name", ["../outside.safetensors", "/tmp/abs.safetensors", "sub/x"])
def test_index_naming_a_file_outside_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    inner = tmp_path / "model"
    inner.mkdir()
    _sharded(inner)
    save_file({"x": torch.ones(2)}, tmp_path / "outside.safetensors")
    index = inner / "model.safetensors.index.json"
    document = json.loads(index.read_text())
    document["weight_map"]["layer0.weight"] = name
    index.write_text(json.dumps(document))
    err = _cli_error(inner, capsys)
    assert str(index) in err and "not a plain file name inside" in err


def test_index_naming_a_link_to_a_file_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inner = tmp_path / "model"
    inner.mkdir()
    _sharded(inner)
    shard = inner / "model-00001-of-00003.safetensors"
    shard.rename(tmp_path / "elsewhere.safetensors")
    shard.symlink_to(tmp_path / "elsewhere.safetensors")
    err = _cli_error(inner, capsys)
    assert "model-00001-of-00003.safetensors" in err and "outside" in err


def test_tensor_listed_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _sharded(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    text = index.read_text()
    index.write_text(text.replace('{"layer0.bias"', '{"layer0.bias": "x", "layer0.bias"'))
    err = _cli_error(tmp_path, capsys)
    assert "'layer0.bias' is listed twice" in err and str(index) in err


def test_tensor_stored_in_two_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tensors = _sharded(tmp_path)
    second = tmp_path / "model-00002-of-00003.safetensors"
    ckpt = open_checkpoint(tmp_path)
    own = {n: tensors[n] for n in ckpt.names() if ckpt.info(n).file == str(second)}
    assert ckpt.info("layer0.bias").file != str(second)
    save_file({**own, "layer0.bias": tensors["layer0.bias"]}, second)
    err = _cli_error(tmp_path, capsys)
    assert str(second) in err and "'layer0.bias' is also stored in" in err
    save_file({**own, "extra.weight": torch.ones(3, 3)}, second)
    err = _cli_error(tmp_path, capsys)
    assert str(second) in err and "'extra.weight' but the index does not list it" in err


def _rewrite_header(path: Path, edit: dict[str, object]) -> None:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    for name, entry in edit.items():
        header[name].update(entry)  # type: ignore[arg-type]
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + length :])


def test_header_sizes_that_do_not_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.randn(40, 50), "b.weight": torch.randn(40, 50)}, path)
    _rewrite_header(path, {"a.weight": {"shape": [40, 51]}})
    err = _cli_error(path, capsys)
    assert str(path) in err and "'a.weight'" in err and "takes 8160" in err
    save_file({"a.weight": torch.randn(40, 50)}, path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])  # truncated
    err = _cli_error(path, capsys)
    assert str(path) in err and "truncated" in err
    path.write_bytes(raw + b"\0" * 8)  # bytes no tensor accounts for
    err = _cli_error(path, capsys)
    assert str(path) in err and "accounts for 8000 bytes" in err
    path.write_bytes(struct.pack("<Q", 10**9) + raw[8:])
    err = _cli_error(path, capsys)
    assert str(path) in err and "header claims 1000000000 bytes" in err


def test_progress_estimates_the_time_left_from_the_work_done() -> None:
    import io

    times = iter([100.0, 110.0, 150.0])  # start, after layer 1, after layer 2
    stream = io.StringIO()
    costs = [layer_cost((100, 200)), layer_cost((300, 200))]
    with CheckpointProgress(
        costs, enabled=True, stream=stream, use_tqdm=False, clock=lambda: next(times)
    ) as bar:
        bar.advance("small", costs[0])
        bar.advance("large", costs[1])
    first, second = stream.getvalue().splitlines()
    expected_left = 10.0 * costs[1] / costs[0]  # rate of the first layer applied to the rest
    minutes, seconds = divmod(round(expected_left), 60)
    assert first.startswith("[1/2]") and f"~{minutes:02d}:{seconds:02d} left" in first
    assert second.startswith("[2/2] 100% large") and "~00:00 left" in second
    assert layer_cost((300, 200)) == 200.0**2 * 300 + 200.0**3
    quiet = io.StringIO()
    with CheckpointProgress(costs, stream=quiet) as bar:  # not a terminal: off by default
        bar.advance("small", costs[0])
    assert quiet.getvalue() == ""


def test_does_not_modify_the_input(tmp_path: Path) -> None:
    _sharded(tmp_path)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert main(["analyze", str(tmp_path), "--quiet", "--assume-linear", "*"]) == 0
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert after == before


def test_layer_types_are_never_guessed() -> None:
    shapes = {
        "encoder.dense.weight": ((40, 50), "BF16"),
        "encoder.dense.bias": ((40,), "BF16"),
        "transformer.wte.weight": ((100, 50), "F32"),
        "blocks.0.norm1.weight": ((50, 50), "F32"),  # a 2-D norm weight is still not a Linear
        "cls_token": ((1, 50), "F32"),
        "conv.weight": ((8, 3, 3, 3), "F32"),
        "position_ids": ((1, 64), "I64"),  # not floating: not a weight
        "ln.weight": ((50,), "F32"),  # 1-D: not a matrix
    }
    blind = {k.name: k for k in classify_tensors(shapes)}
    assert sorted(blind) == [
        "blocks.0.norm1",
        "cls_token",
        "conv",
        "encoder.dense",
        "transformer.wte",
    ]
    assert not any(k.typed for k in blind.values())
    assert "--assume-linear" in blind["encoder.dense"].reason
    assert "--assume-conv2d" in blind["conv"].reason
    assert "never treated as a Linear" in blind["transformer.wte"].reason
    assert "never treated as a Linear" in blind["blocks.0.norm1"].reason
    assert "no '.weight' suffix" in blind["cls_token"].reason
    assumed = {
        k.name: k for k in classify_tensors(shapes, assume_linear=["*"], assume_conv2d=["conv"])
    }
    typed = sorted(name for name, k in assumed.items() if k.typed)
    assert typed == ["conv", "encoder.dense"]
    assert assumed["encoder.dense"].bias == "encoder.dense.bias"
    assert assumed["conv"].layer_type == "Conv2d"
    with pytest.raises(ValueError, match=r"'transformer\.wte'.*never treated as a Linear"):
        classify_tensors(shapes, assume_linear=["transformer.wte"])


def test_without_transformers_a_model_directory_is_read_without_guessing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _sharded(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchModel"]}))
    if transformers_available():  # transformers cannot build it, and says what to do
        assert main(["analyze", str(tmp_path), "--quiet"]) == 2
        assert "--no-model" in capsys.readouterr().err
    monkeypatch.setattr("rmtprune.ondisk.inputs.transformers_available", lambda: False)
    assert main(["analyze", str(tmp_path), "--quiet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert [r["name"] for r in rows] == [f"layer{i}" for i in range(6)]
    assert all(r["layer_type"] == "unknown 2-D" and r["status"] == "ok" for r in rows)
    assert rows[0]["params"] == 40 * 50 + 40  # the bias belongs to the layer


def test_layer_selection_covers_pruned_and_untyped_layers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sharded(tmp_path)
    argv = ["prune", str(tmp_path), "--no-model", "--dry-run", "--json", "--quiet"]
    assert main([*argv, "--assume-linear", "layer1", "--layers", "layer1", "layer[23]"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["layers"]}
    assert sorted(rows) == ["layer1", "layer2", "layer3"]
    assert rows["layer1"]["layer_type"] == "Linear" and rows["layer1"]["action"] != "skipped"
    assert rows["layer2"]["action"] == "skipped" and "--assume-linear" in rows["layer2"]["reason"]
    total = sum(t.numel() for t in _sharded(tmp_path).values())
    assert report["params_before"] == total  # every tensor of the checkpoint is counted
    assert main([*argv, "--layers", "nothing*"]) == 2
    assert "'nothing*'" in capsys.readouterr().err


def test_exclude_and_one_progress_option_for_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sharded(tmp_path)
    common = [str(tmp_path), "--no-model", "--exclude", "layer[45]", "--json", "--no-progress"]
    assert main(["analyze", *common, "--layers", "layer[1-5]"]) == 0
    streamed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in streamed["layers"]] == ["layer1", "layer2", "layer3"]
    argv = ["prune", *common, "--dry-run", "--assume-linear", "layer1"]
    assert main(argv) == 0  # the typed layer and the untyped weights honour --exclude alike
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["layers"]}
    assert sorted(rows) == ["layer0", "layer1", "layer2", "layer3"]
    assert rows["layer1"]["action"] != "skipped" and rows["layer2"]["action"] == "skipped"
    assert main(["prune", str(tmp_path), "--no-model", "--dry-run", "--exclude", "nope"]) == 2
    assert "'exclude' parameter names 'nope'" in capsys.readouterr().err
