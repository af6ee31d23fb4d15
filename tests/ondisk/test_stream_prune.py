"""``rmtprune prune`` of safetensors checkpoints without a model streams one layer at a time.

The reference is the in-memory route it replaces (``plan_input(..., stream=False)``:
every tensor read, the shell model loaded, ``rmtprune.prune``, ``rmtprune.save``), run with
the same command line.  The written files must hold the same tensors (names, dtypes, bytes),
the same header layout and the same metadata (structure, tied entries, digest); the reports
must be equal.  safetensors writes its two ``__metadata__`` keys in a hash map's order that
changes between processes, so the files are compared byte for byte with that order
normalised.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import struct
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import rmtprune
from rmtprune.cli.app import main
from rmtprune.factorize import LowRankLinear
from rmtprune.ondisk import inputs as cli_inputs
from rmtprune.ondisk.sources import load_model
from rmtprune.pruning.criteria import LayerView, MPCriterion, RankDecision, layerwise
from tests.reads import one_layer_at_a_time

_PLAN = cli_inputs.plan_input  # the real one, whatever a test patches


def _noise(m: int, n: int, seed: int, spikes: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g) / n**0.5
    return w + 4 * torch.randn(m, spikes, generator=g) @ torch.randn(spikes, n, generator=g) / n


def _plain_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {
        "enc.0.weight": _noise(96, 128, 0),
        "enc.0.bias": torch.randn(96, generator=g),
        "enc.1.weight": _noise(80, 96, 1).to(torch.bfloat16),
        "enc.1.bias": torch.randn(80, generator=g).to(torch.bfloat16),
        "dec.weight": _noise(64, 80, 2).to(torch.float16),
        "conv.weight": _noise(48, 72, 3).reshape(48, 8, 3, 3),
        "conv.bias": torch.randn(48, generator=g),
        "tok_embed.weight": _noise(100, 64, 4),  # never taken for a Linear layer
        "head.weight": _noise(40, 64, 5),  # untyped unless named
        "norm.weight": torch.ones(64),
        "small.weight": _noise(16, 16, 6),  # below min_dim
        "steps": torch.tensor(12, dtype=torch.int64),
    }


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "model.safetensors"
    path.parent.mkdir()
    save_file(_plain_tensors(), str(path), metadata={"format": "pt"})
    return path


def _write_sharded(directory: Path, tensors: Mapping[str, torch.Tensor], shards: int) -> Path:
    names = sorted(tensors)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        filename = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::shards]}
        save_file(part, str(directory / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, filename))
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return index


class _Factorized(nn.Module):
    """Two factorized layers, a bf16 one, a dense one; with ``tied`` the first two share
    their first factor and two more dense layers share their weight."""

    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = LowRankLinear(128, 96, rank=40)
        self.b = LowRankLinear(128, 64, rank=40, bias=False)
        if tied:
            self.b.first = self.a.first  # stored once, recorded in "aliases"
            self.d1 = nn.Linear(64, 64)
            self.d2 = nn.Linear(64, 64)
            self.d2.weight = self.d1.weight
        self.c = LowRankLinear(96, 80, rank=48).to(torch.bfloat16)
        self.dense = nn.Linear(96, 72)
        self.register_buffer("scale", torch.linspace(0, 1, 7))


def _header(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` with the header's ``__metadata__`` keys in sorted order (safetensors' layout)."""
    header, payload = _header(data)
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + payload


def _assert_same_file(streamed: Path, loaded: Path) -> None:
    a, b = streamed.read_bytes(), loaded.read_bytes()
    header_a, data_a = _header(a)
    header_b, data_b = _header(b)
    assert list(header_a) == list(header_b)  # the same tensors in the same order
    assert header_a == header_b  # dtypes, shapes, offsets, structure, aliases, digest
    assert data_a == data_b  # every byte of every tensor
    assert _sorted_metadata(a) == _sorted_metadata(b)  # the whole file, up to that key order


def _run(capsys: pytest.CaptureFixture[str], argv: Sequence[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main([*argv, "--json", "--quiet"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def _both(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    source: Path,
    options: Sequence[str],
    out: Path | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON reports of the streamed and of the in-memory route (files in ``out``)."""
    streamed: list[int] = []
    real = cli_inputs.prune_checkpoint

    def spy(*args: Any, **kwargs: Any) -> Any:
        streamed.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_inputs, "prune_checkpoint", spy)
    monkeypatch.setattr(cli_inputs, "plan_input", _PLAN)  # streams by default
    writes = [] if out is None else ["-o", str(out / "streamed.safetensors")]
    first = _run(capsys, ["prune", str(source), *options, *writes])
    assert streamed == [1]
    loading = functools.partial(_PLAN, stream=False)
    monkeypatch.setattr(cli_inputs, "plan_input", loading)
    writes = [] if out is None else ["-o", str(out / "loaded.safetensors")]
    second = _run(capsys, ["prune", str(source), *options, *writes])
    assert streamed == [1]  # the reference did not stream
    if out is not None:
        _assert_same_file(out / "streamed.safetensors", out / "loaded.safetensors")
    return first, second


@pytest.mark.parametrize(
    "options",
    [
        ["--assume-linear", "enc.*", "dec", "--assume-conv2d", "conv", "--bulk-keep", "0.2"],
        ["--assume-linear", "*", "--criterion", "rank", "--rank", "8", "--split", "always"],
        ["--assume-linear", "*", "--criterion", "energy", "--split", "never", "--min-dim", "8"],
        ["--assume-linear", "enc.*", "--layers", "enc.*", "head", "--exclude", "enc.1"],
        ["--exclude", "head"],  # nothing typed: every weight analysed, carried
    ],
    ids=["mp", "rank-always", "energy-never", "layers-exclude", "untyped"],
)
def test_single_file_streams_to_what_the_loaded_route_writes(
    plain: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
) -> None:
    streamed, loaded = _both(capsys, monkeypatch, plain, options, tmp_path)
    assert streamed == loaded
    actions = {row["name"]: row["action"] for row in streamed["layers"]}
    if options[0] == "--exclude":
        assert set(actions.values()) == {"skipped"}
    else:
        assert {"split", "truncated"} & set(actions.values())  # something was pruned
    # the untyped weights, the norm and the integer buffer are carried unchanged
    header, _ = _header((tmp_path / "streamed.safetensors").read_bytes())
    assert header["steps"]["dtype"] == "I64" and header["tok_embed.weight"]["dtype"] == "F32"


def test_dry_run_reports_the_same_and_writes_nothing(
    plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    before = sorted(p.name for p in tmp_path.rglob("*"))
    options = ["--assume-linear", "*", "--dry-run", "--bulk-keep", "0.3"]
    streamed, loaded = _both(capsys, monkeypatch, plain, options, None)
    assert streamed == loaded and streamed["dry_run"] is True
    assert any(row["action"] == "split" for row in streamed["layers"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


_SPARSE = ["--assume-linear", "enc.*", "dec", "head", "--assume-conv2d", "conv"]


@pytest.mark.parametrize(
    "options",
    [
        [*_SPARSE, "--criterion", "sparsity", "--sparsity", "0.6"],
        [*_SPARSE, "--criterion", "sparsity", "--sparsity-pattern", "2:4", "--exclude", "dec"],
        [*_SPARSE, "--criterion", "sparsity", "--sparsity", "0.5", "--dry-run"],
    ],
    ids=["uniform", "2:4", "dry-run"],
)
def test_uniform_and_n_m_sparsity_stream_to_what_the_loaded_route_writes(
    plain: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
) -> None:
    # each layer's magnitude mask depends on that layer alone: the checkpoint is masked one
    # layer at a time, stored sparsely, and the file and report are the in-memory route's
    dry = "--dry-run" in options
    streamed, loaded = _both(capsys, monkeypatch, plain, options, None if dry else tmp_path)
    assert streamed == loaded
    rows = {row["name"]: row for row in streamed["layers"]}
    assert rows["enc.0"]["action"] == "sparsified" and rows["conv"]["action"] == "sparsified"
    removed = sum(r["nonzero_before"] - r["nonzero_after"] for r in rows.values()
                  if r["nonzero_after"] is not None)  # fmt: skip
    assert removed > 0
    assert streamed["nonzero_before"] - streamed["nonzero_after"] == removed
    # the totals count every parameter of the typed layers, as the walker counts the shell
    typed = ["enc.0", "enc.1", "dec", "conv", "head"]  # the named ones: small is not
    tensors = _plain_tensors()
    everything = sum(
        int(torch.count_nonzero(t)) for k, t in tensors.items() if k.rpartition(".")[0] in typed
    )
    assert streamed["nonzero_before"] == everything
    if dry:
        assert streamed["dry_run"] is True and not list(tmp_path.glob("*.safetensors"))
        return
    header, _ = _header((tmp_path / "streamed.safetensors").read_bytes())
    assert "enc.0.weight:sparse_values" in header and "enc.0.weight" not in header
    # stored sparsely and read back with its masks, by the loader of the in-memory route
    model = load_model(tmp_path / "streamed.safetensors")
    weight = model.get_submodule("enc.0").weight
    zeroed = rows["enc.0"]["nonzero_before"] - rows["enc.0"]["nonzero_after"]
    assert int((weight == 0).sum()) == zeroed == round(0.5 * weight.numel()) or "0.6" in options
    assert zeroed == round(0.6 * weight.numel()) or "0.6" not in options
    assert rmtprune.factorize.masks.mask_of(model.get_submodule("enc.0")) is not None


def test_global_sparsity_reads_the_checkpoint_whole(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one threshold over all layers: no layer can be decided alone
    plan = cli_inputs.plan_input(plain, assume_linear=["enc.*", "dec"])
    criterion = rmtprune.Sparsity(0.5, allocation="global")
    assert not layerwise(criterion) and layerwise(rmtprune.Sparsity(0.5))
    spied: list[int] = []
    monkeypatch.setattr(cli_inputs, "prune_checkpoint", lambda *a, **k: spied.append(1))
    out = tmp_path / "p.safetensors"
    report = cli_inputs.prune_input(plan, criterion, rmtprune.Select(), output=out)
    assert spied == [] and report.nonzero_reduction > 0
    source = cli_inputs.open_input(plan)  # opened to stream: refused, not decided per layer
    with pytest.raises(ValueError, match=r"'criterion' parameter of prune_input is model-level"):
        cli_inputs.prune_input(source, criterion, rmtprune.Select(), dry_run=True)


def test_streamed_sparsity_by_layer_name_and_its_fractions(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fractions = {"enc.0": 0.25, "dec": 0.75}  # enc.1 is not in the mapping: left as it is
    plan = cli_inputs.plan_input(plain, assume_linear=["enc.*", "dec"])
    streamed = rmtprune.Sparsity(0.5, allocation=fractions)
    reads = one_layer_at_a_time(monkeypatch)
    report = cli_inputs.prune_input(plan, streamed, rmtprune.Select(), output=tmp_path / "s")
    assert "enc.1.weight" in reads  # read through the streaming reader, one layer at a time
    monkeypatch.undo()
    whole = rmtprune.Sparsity(0.5, allocation=fractions)
    loaded = dataclasses.replace(plan, stream=False)
    reference = cli_inputs.prune_input(loaded, whole, rmtprune.Select(), output=tmp_path / "w")
    assert report.to_json() == reference.to_json()
    _assert_same_file(tmp_path / "s", tmp_path / "w")
    # the criterion's fractions_ cover every layer, not only the last one streamed
    assert streamed.fractions_ == whole.fractions_
    assert streamed.fractions_ == pytest.approx(fractions, abs=1e-3)  # enc.1: no mask


def test_sharded_index_and_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    index = _write_sharded(shards, _plain_tensors(), 3)
    options = ["--assume-linear", "enc.*", "head", "--assume-conv2d", "conv"]
    (tmp_path / "a").mkdir()
    streamed, loaded = _both(capsys, monkeypatch, index, options, tmp_path / "a")
    assert streamed == loaded
    (tmp_path / "b").mkdir()
    by_directory, _ = _both(capsys, monkeypatch, shards, [*options, "--no-model"], tmp_path / "b")
    assert by_directory == streamed
    assert (tmp_path / "a" / "streamed.safetensors").read_bytes() == (
        tmp_path / "b" / "streamed.safetensors"
    ).read_bytes()


def test_rmtprune_file_with_factorized_layers_is_repruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "factorized.safetensors"
    rmtprune.save(_Factorized(), source)
    options = ["--assume-linear", "dense", "--criterion", "rank", "--rank", "12"]
    streamed, loaded = _both(capsys, monkeypatch, source, options, tmp_path)
    assert streamed == loaded
    assert {r["name"]: r["rank_after"] for r in streamed["layers"]} == {
        "a": 12,
        "b": 12,
        "c": 12,
        "dense": 12,
    }
    header = _header((tmp_path / "streamed.safetensors").read_bytes())[0]
    assert header["c.first.weight"]["dtype"] == "BF16"  # a bf16 layer stays bf16 (was F32)
    assert header["a.first.weight"]["dtype"] == "F32"
    # the output is an rmtprune file like any other: it loads and prunes again
    again = _Factorized()
    rmtprune.load(again, tmp_path / "streamed.safetensors")
    assert again.a.rank == 12 and again.dense.rank == 12  # type: ignore[union-attr]
    (tmp_path / "second").mkdir()
    twice, _ = _both(
        capsys,
        monkeypatch,
        tmp_path / "streamed.safetensors",
        ["--criterion", "rank", "--rank", "5"],
        tmp_path / "second",
    )
    assert [r["rank_after"] for r in twice["layers"]] == [5, 5, 5, 5]


def test_sparsity_of_an_rmtprune_file_streams_and_its_sparse_output_reads_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "factorized.safetensors"
    rmtprune.save(_Factorized(), source)
    options = ["--assume-linear", "dense", "--criterion", "sparsity", "--sparsity", "0.5"]
    streamed, loaded = _both(capsys, monkeypatch, source, options, tmp_path)
    assert streamed == loaded
    actions = {r["name"]: r["action"] for r in streamed["layers"]}
    assert actions == {"a": "skipped", "b": "skipped", "c": "skipped", "dense": "sparsified"}
    first = tmp_path / "streamed.safetensors"
    # a file with sparse storage is read dense in memory (as the loader reads it), and a
    # higher target keeps every weight removed before
    again = tmp_path / "again.safetensors"
    argv = ["prune", str(first), "--criterion", "sparsity", "--sparsity", "0.75", "-o", str(again)]
    assert main([*argv, "--assume-linear", "dense", "--quiet"]) == 0, capsys.readouterr().err
    before, after = _Factorized(), _Factorized()
    rmtprune.load(before, first)
    rmtprune.load(after, again)
    zero_before, zero_after = before.dense.weight == 0, after.dense.weight == 0
    assert bool((zero_after | ~zero_before).all())  # never revived
    assert int(zero_after.sum()) == round(0.75 * zero_after.numel())


def _aliases(path: Path) -> dict[str, str]:
    document = json.loads(_header(path.read_bytes())[0]["__metadata__"]["rmtprune"])
    return document["aliases"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("typed", [["d1", "d2"], ["d1"], ["d2"], []])
def test_tied_entries_stay_tied_and_their_layers_are_not_pruned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], typed: list[str]
) -> None:
    # the saved model ties a factor of two factorized layers and the weight of two Linear
    # layers; pruning its file must not untie them (nor store them twice), as the model's
    # own walker skips a layer whose weight is shared
    model = _Factorized(tied=True)
    source = tmp_path / "tied.safetensors"
    rmtprune.save(model, source)
    tied = {"b.first.weight": "a.first.weight", "d2.weight": "d1.weight"}
    assert _aliases(source) == tied
    out = tmp_path / "out.safetensors"
    options = ["--criterion", "rank", "--rank", "12", "--assume-linear", "dense", *typed]
    report = _run(capsys, ["prune", str(source), "-o", str(out), *options])
    rows = {r["name"]: r for r in report["layers"]}
    assert {n: rows[n]["rank_after"] for n in ("c", "dense")} == {"c": 12, "dense": 12}
    for name in ("a", "b", *typed):
        assert rows[name]["action"] == "skipped", name
        assert "tied parameters" in rows[name]["reason"], name
    assert rows["a"]["rank_after"] == 40  # a factorized layer's rank, not min(m, n)
    for name in {"d1", "d2"} - set(typed):
        assert rows[name]["reason"].startswith("layer type unknown"), name
    # every value counted once: the model's own (deduplicated) parameters and its buffer
    truth = sum(p.numel() for p in model.parameters()) + model.scale.numel()
    assert report["params_before"] == truth
    # c: rank 48 -> 12 of a 80x96 product; dense: 72x96 split at rank 12
    assert truth - report["params_after"] == (48 - 12) * (96 + 80) + 72 * 96 - 12 * (96 + 72)
    written = _aliases(out)
    assert written in (tied, {"b.first.weight": "a.first.weight", "d1.weight": "d2.weight"})
    again = _Factorized(tied=True)
    rmtprune.load(again, out)
    for name in ("a", "b", "d1", "d2"):  # the tied layers hold exactly the saved values
        for key, value in getattr(again, name).state_dict().items():
            assert torch.equal(value, getattr(model, name).state_dict()[key]), (name, key)
    assert again.c.rank == 12 and again.dense.rank == 12  # type: ignore[union-attr]


def _header_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often the header of each safetensors file is parsed, from now on."""
    import rmtprune.storage.reader as reader

    counts: dict[str, int] = {}
    real = reader._read_header

    def counting(path: str) -> Any:
        counts[os.path.realpath(path)] = counts.get(os.path.realpath(path), 0) + 1
        return real(path)

    monkeypatch.setattr(reader, "_read_header", counting)
    return counts


def test_a_model_level_criterion_loads_the_model_whole(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class EveryLayerAtOnce:
        def decide_model(
            self, model: nn.Module, layers: Sequence[LayerView]
        ) -> dict[str, RankDecision]:
            assert isinstance(model, nn.Module) and next(model.parameters()).device.type == "cpu"
            return {v.name: RankDecision(min(4, v.rank), "four") for v in layers}

    plan = cli_inputs.plan_input(plain, assume_linear=["enc.*"])
    assert plan.stream and plan.route == "checkpoint"  # would stream ...
    out = tmp_path / "p.safetensors"
    reads = _header_reads(monkeypatch)
    report = cli_inputs.prune_input(plan, EveryLayerAtOnce(), rmtprune.Select(), output=out)
    assert reads == {os.path.realpath(plain): 1}  # ... but is opened once, in memory
    monkeypatch.undo()
    pruned = [(r.name, r.rank_after) for r in report.layers if r.action != "skipped"]
    assert pruned == [("enc.0", 4), ("enc.1", 4)]
    loaded = dataclasses.replace(plan, stream=False)
    reference = cli_inputs.prune_input(loaded, EveryLayerAtOnce(), rmtprune.Select(),
                                       output=tmp_path / "q.safetensors")  # fmt: skip
    assert report.to_json() == reference.to_json()
    _assert_same_file(out, tmp_path / "q.safetensors")


def test_a_model_level_criterion_refuses_an_input_opened_to_stream(plain: Path) -> None:
    class EveryLayerAtOnce:
        def decide_model(self, model: nn.Module, layers: Sequence[LayerView]) -> dict[str, Any]:
            raise AssertionError("never asked")

    source = cli_inputs.open_input(cli_inputs.plan_input(plain, assume_linear=["enc.*"]))
    assert source.plan is not None
    with pytest.raises(ValueError, match=r"'criterion' parameter of prune_input is model-level"):
        cli_inputs.prune_input(source, EveryLayerAtOnce(), rmtprune.Select(), dry_run=True)


@pytest.mark.parametrize(
    "criterion", [["--criterion", "rank", "--rank", "8"], ["--bulk-keep", "0.2"]]
)
def test_every_row_carries_the_criterion_bulk_keep(
    plain: Path, capsys: pytest.CaptureFixture[str], criterion: list[str]
) -> None:
    # bulk_keep used to travel beside the criterion: the untyped weights' rows said 0.0 (the
    # --bulk-keep default) where the walker's rows of a rank criterion say NaN (JSON null)
    report = _run(
        capsys, ["prune", str(plain), "--assume-linear", "enc.*", *criterion, "--dry-run"]
    )
    kept = {r["name"]: r["bulk_keep"] for r in report["layers"]}
    assert {"enc.0", "head", "tok_embed"} <= set(kept)  # typed and untyped rows
    assert set(kept.values()) == ({None} if "rank" in criterion else {0.2})


@pytest.mark.parametrize("command", ["analyze", "prune"])
@pytest.mark.parametrize("kind", ["plain", "rmtprune", "sharded"])
def test_every_header_is_read_once(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, kind: str
) -> None:
    # the route used to be decided twice: `analyze` of an rmtprune file read its header, then
    # read it again to open the file for the walker
    source = plain
    if kind == "rmtprune":
        source = tmp_path / "factorized.safetensors"
        rmtprune.save(_Factorized(), source)
    elif kind == "sharded":
        (tmp_path / "shards").mkdir()
        source = _write_sharded(tmp_path / "shards", _plain_tensors(), 2)
    reads = _header_reads(monkeypatch)
    out = ["-o", str(tmp_path / "out.safetensors")] if command == "prune" else []
    assumed = "dense" if kind == "rmtprune" else "enc.*"  # a pattern naming nothing is refused
    assert main([command, str(source), "--assume-linear", assumed, *out, "--quiet"]) == 0
    files = 2 if kind == "sharded" else 1
    assert len(reads) == files and set(reads.values()) == {1}, reads


def test_reads_one_layer_at_a_time(
    plain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = one_layer_at_a_time(monkeypatch)
    out = tmp_path / "p.safetensors"
    argv = ["prune", str(plain), "-o", str(out), "--assume-linear", "*", "--quiet"]
    assert main(argv) == 0
    assert len(reads) >= len(_plain_tensors())  # everything went through Checkpoint.read
    monkeypatch.undo()
    written = _header(out.read_bytes())[0].keys() - {"__metadata__"}
    assert sorted(load_model(out).state_dict()) == sorted(written)


def test_analyze_of_an_rmtprune_file_reads_one_layer_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the streamed route's model is a meta shell: analysing it whole reported every
    # factorized layer as "on the meta device (not materialized)"
    source = tmp_path / "factorized.safetensors"
    rmtprune.save(_Factorized(), source)
    reads = one_layer_at_a_time(monkeypatch, lambda name: name.split(".")[0])
    plan = cli_inputs.plan_input(source, assume_linear=["dense"])
    select = rmtprune.Select(include=["a", "c", "dense"])
    report = cli_inputs.analyze_input(plan, MPCriterion(), select)
    assert set(reads) >= {"a.first.weight", "c.second.weight", "dense.weight"}
    monkeypatch.undo()
    whole = dataclasses.replace(plan, stream=False)
    reference = cli_inputs.analyze_input(whole, MPCriterion(), select)
    assert [(r.name, r.status, r.rank) for r in report] == [
        ("a", "ok", 40),
        ("c", "ok", 48),
        ("dense", "ok", 72),
    ]
    assert report.to_json() == reference.to_json()
    for row, truth in zip(report, reference, strict=True):
        assert np.array_equal(row.eigenvalues, truth.eigenvalues), row.name


def test_bad_inputs_keep_their_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a corrupted payload: the same one line from both routes, nothing written
    rmtprune.save(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)), tmp_path / "m.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    data = bytearray((tmp_path / "m.safetensors").read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    messages = []
    for stream in (True, False):
        monkeypatch.setattr(cli_inputs, "plan_input", functools.partial(_PLAN, stream=stream))
        out = tmp_path / "out.safetensors"
        assert main(["prune", str(corrupt), "-o", str(out), "--quiet"]) == 2
        messages.append(capsys.readouterr().err.strip())
        assert not out.exists()
    assert messages[0] == messages[1]
    assert "SHA-256 checksum mismatch" in messages[0] and str(corrupt) in messages[0]


def test_output_may_not_be_a_file_of_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_sharded(shards, _plain_tensors(), 2)
    shard = shards / "model-00001-of-00002.safetensors"
    before = shard.read_bytes()
    argv = ["prune", str(shards), "-o", str(shard), "--overwrite", "--assume-linear", "*"]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a file of the input" in err and len(err.strip().splitlines()) == 1
    assert shard.read_bytes() == before


def test_disk_full_while_streaming_leaves_nothing(
    plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle: Any) -> None:
            self._handle = handle

        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._handle, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self._handle.close()

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    out = tmp_path / "p.safetensors"
    report = tmp_path / "r.json"
    argv = ["prune", str(plain), "-o", str(out), "--json", str(report), "--assume-linear", "*"]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"rmtprune prune: error: no space left on device while writing {out}; "
        "free some space or write elsewhere"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no temporary file left


CHILD = """
import sys
import rmtprune.cli.app
status = rmtprune.cli.app.main(sys.argv[1:])
with open("/proc/self/status") as fh:
    peak = [int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM")][0]
print(status, peak)
"""


def _peak(argv: list[str]) -> int:
    # a fixed mmap threshold: every freed layer goes back to the system, so the high-water mark
    # measures what is held rather than how glibc happened to reuse its heap
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, env=env, check=True
    )
    status, peak = done.stdout.split()[-2:]
    assert status == "0", done.stderr
    return int(peak)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize(
    ("criterion", "stored"),
    [
        (["--criterion", "rank", "--rank", "16"], ("first.weight", "second.weight")),
        (
            ["--criterion", "sparsity", "--sparsity", "0.5"],
            ("weight:sparse_bitmask", "weight:sparse_values"),
        ),
    ],
    ids=["rank", "sparsity"],
)
def test_peak_memory_stays_near_one_layer(
    tmp_path: Path, criterion: list[str], stored: tuple[str, str]
) -> None:
    """24 float32 layers of 256 × 4096 (100 MB) against one such layer: the peak grows by far
    less than a third of the checkpoint (the in-memory route grows by twice the checkpoint)."""
    g = torch.Generator().manual_seed(0)
    one = tmp_path / "one.safetensors"
    many = tmp_path / "many.safetensors"
    save_file({"layers.0.weight": torch.randn(256, 4096, generator=g)}, str(one))
    tensors = {f"layers.{i}.weight": torch.randn(256, 4096, generator=g) for i in range(24)}
    save_file(tensors, str(many))
    del tensors
    size = many.stat().st_size
    common = ["--assume-linear", "*", *criterion, "--quiet"]
    base = _peak(["prune", str(one), "-o", str(tmp_path / "one-out.safetensors"), *common])
    peak = _peak(["prune", str(many), "-o", str(tmp_path / "many-out.safetensors"), *common])
    assert peak - base < size / 3, (peak - base, size)
    written = _header((tmp_path / "many-out.safetensors").read_bytes())[0]
    # every layer was split (or stored sparsely) and written
    assert sorted(written) == sorted(
        ["__metadata__", *(f"layers.{i}.{k}" for i in range(24) for k in stored)]
    )


_FACTORS = ("first.weight", "second.weight", "second.bias")


class _SameModuleTwice(nn.Module):
    """A factorized and a dense layer, each registered under two more names."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.x = LowRankLinear(96, 96, rank=40)
        self.u = nn.Linear(96, 96)
        self.w = nn.Linear(96, 80)
        self.y = self.x  # the same module object: its entries are tied in the file
        self.block = nn.Sequential(self.x, self.u)  # both again, deeper


def test_a_factorized_module_under_two_names_is_one_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the model's walker sees each module once, whatever its names; the file's tied entries
    # of a second name used to show as unknown 2-D rows and to mark the first name as tied
    model = _SameModuleTwice()
    source = tmp_path / "twice.safetensors"
    rmtprune.save(model, source)
    assert _aliases(source) == {
        **{f"{n}.{k}": f"x.{k}" for n in ("y", "block.0") for k in _FACTORS},
        "block.1.weight": "u.weight",
        "block.1.bias": "u.bias",
    }
    out = tmp_path / "out.safetensors"
    options = ["--criterion", "rank", "--rank", "12", "--assume-linear", "u", "w", "block.1"]
    report = _run(capsys, ["prune", str(source), "-o", str(out), *options])
    rows = {r["name"]: (r["action"], r["rank_after"]) for r in report["layers"]}
    # the structure lists x once, so y and block.0 are x; a dense layer under two names
    # cannot be told from two layers sharing their tensors, so u and block.1 are tied
    assert rows == {
        "x": ("split", 12),
        "u": ("skipped", 96),
        "block.1": ("skipped", 96),
        "w": ("split", 12),
    }
    assert report["params_before"] == sum(p.numel() for p in model.parameters())
    assert report["params_before"] - report["params_after"] == (40 - 12) * (96 + 96) + (
        96 * 80 - 12 * (96 + 80)
    )
    in_memory, _ = rmtprune.prune(
        _SameModuleTwice(),
        criterion=rmtprune.FixedRank(12),
        select=rmtprune.Select(include=["x", "w"]),
    )
    again = _SameModuleTwice()
    rmtprune.load(again, out)
    assert again.x is again.y is again.block[0] and again.block[1] is again.u
    for name in ("x", "u", "w"):
        for key, value in getattr(again, name).state_dict().items():
            assert torch.equal(value, getattr(in_memory, name).state_dict()[key]), (name, key)
    report = _run(capsys, ["prune", str(source), "--dry-run"])  # dense layers untyped
    assert sorted(r["name"] for r in report["layers"]) == ["block.1", "u", "w", "x"]
