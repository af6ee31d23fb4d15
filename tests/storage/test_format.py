"""Saving and loading (possibly factorized) models: round trips and damaged files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import rmtprune.storage.format as rio
from rmtprune.factorize import (
    LowRankConv2d,
    LowRankLinear,
    TransposedLinearAdapter,
    get_adapter,
    register_adapter,
    set_submodule,
)


class TransposedLinear(nn.Module):
    """Stand-in for Hugging Face GPT-2's Conv1D (weight stored in × out)."""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(in_features, out_features) * 0.1)
        self.bias = nn.Parameter(torch.randn(out_features) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


register_adapter(TransposedLinear, TransposedLinearAdapter())


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2)
        self.fc1 = nn.Linear(54, 20)
        self.proj = TransposedLinear(16, 20)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x)).flatten(1)
        return self.fc2(torch.relu(self.proj(torch.relu(self.fc1(x)))))


def factorize(model: nn.Module, name: str, rank: int) -> None:
    layer = model.get_submodule(name)
    adapter = get_adapter(layer)
    assert adapter is not None
    U, s, Vh = torch.linalg.svd(adapter.weight_matrix(layer).double(), full_matrices=False)
    set_submodule(model, name, adapter.rebuild(layer, U[:, :rank], s[:rank], Vh[:rank], split=True))


def make_model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    model = Net()
    factorize(model, "conv1", 3)
    factorize(model, "fc1", 4)
    factorize(model, "proj", 5)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(4, 3, 8, 8))
    return model.eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    current = model.state_dict()
    return current.keys() == state.keys() and all(
        torch.equal(current[k], v) for k, v in state.items()
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Net, Path]:
    model = make_model()
    path = tmp_path / "model.safetensors"
    rio.save(model, path)
    return model, path


def test_round_trip_is_bitwise_and_leaves_model_alone(tmp_path: Path) -> None:
    model = make_model()
    before, before_repr = snapshot(model), repr(model)
    path = tmp_path / "model.safetensors"
    rio.save(model, path)
    assert same_state(model, before) and repr(model) == before_repr
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary file left
    # an independent reader sees a plain safetensors file with the state dict
    stored = load_file(str(path))
    assert stored.keys() == before.keys()
    assert all(torch.equal(stored[k], v) for k, v in before.items())
    fresh = Net().eval()  # freshly constructed, dense, different weights
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    assert not torch.equal(fresh(x), model(x))
    loaded = rio.load(fresh, path)
    assert loaded is fresh
    assert isinstance(fresh.conv1, LowRankConv2d) and fresh.conv1.rank == 3
    assert fresh.conv1.first.padding_mode == "reflect"
    assert isinstance(fresh.fc1, LowRankLinear) and fresh.fc1.rank == 4
    assert isinstance(fresh.proj, LowRankLinear) and fresh.proj.rank == 5
    assert type(fresh.conv2) is nn.Conv2d and type(fresh.fc2) is nn.Linear
    assert rio.describe_structure(fresh) == rio.describe_structure(model)
    assert same_state(fresh, before)
    assert torch.equal(fresh(x), model(x))
    # loading onto a model that is already factorized (here at other ranks) works too
    other = Net()
    factorize(other, "fc1", 2)
    factorize(other, "conv1", 8)
    assert torch.equal(rio.load(other.eval(), path)(x), model(x))


def test_describe_and_apply_structure_checkpoint_route() -> None:
    model = make_model()
    structure = rio.describe_structure(model)
    assert json.loads(json.dumps(structure)) == structure  # JSON-able
    assert set(structure) == {"conv1", "fc1", "proj"}
    assert structure["fc1"] == {
        "type": "LowRankLinear",
        "rank": 4,
        "in_features": 54,
        "out_features": 20,
        "bias": True,
    }
    conv = structure["conv1"]
    assert (conv["rank"], conv["kernel_size"], conv["padding"], conv["padding_mode"]) == (
        3,
        [3, 3],
        [1, 1],
        "reflect",
    )
    assert (conv["in_features"], conv["out_features"]) == (27, 8)
    # trainer checkpoint: structure + state_dict; resume = base model, apply, load_state_dict
    fresh = rio.apply_structure(Net(), structure)
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fresh.eval()(x), model(x))
    same = LowRankConv2d(2, 4, rank=2, kernel_size=3, padding="same")
    assert rio.describe_structure(nn.Sequential(same))["0"]["padding"] == "same"


def test_apply_structure_rejects_mismatches() -> None:
    structure = rio.describe_structure(make_model())
    cases = {
        "no such layer": {"missing": structure["fc1"]},
        "cannot be factorized": {"bn": structure["fc1"]},
        "'in_features'": {"fc2": structure["fc1"]},
        "'type'": {"fc1": dict(structure["conv1"], in_features=54, out_features=20)},
        "unknown factorized type": {"fc1": dict(structure["fc1"], type="Tucker")},
        "rank": {"fc1": dict(structure["fc1"], rank=0)},
    }
    for message, bad in cases.items():
        with pytest.raises(ValueError, match=message):
            rio.apply_structure(Net(), bad)
    with pytest.raises(TypeError, match="'structure'"):
        rio.apply_structure(Net(), [1, 2])  # type: ignore[arg-type]


def test_existing_file_is_not_overwritten(saved: tuple[Net, Path]) -> None:
    _, path = saved
    content = path.read_bytes()
    other = make_model(seed=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        rio.save(other, path)
    assert path.read_bytes() == content
    rio.save(other, path, overwrite=True)
    assert path.read_bytes() != content
    assert same_state(rio.load(Net(), path), snapshot(other))
    assert os.listdir(path.parent) == [path.name]


def test_failed_write_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(rio, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        rio.save(make_model(), tmp_path / "model.safetensors")
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        rio.save(make_model(), tmp_path / "no" / "such" / "dir.safetensors")


_DTYPES = [torch.complex64, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.bfloat16]


@pytest.mark.parametrize("dtype", _DTYPES, ids=str)
def test_every_dtype_safetensors_writes_loads_back(tmp_path: Path, dtype: torch.dtype) -> None:
    # the checked reader knows each dtype safetensors.torch writes, as safe_open did before
    values = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    saved = nn.Module()
    saved.register_buffer("x", (values + 1j * values if dtype.is_complex else values).to(dtype))
    rio.save(saved, tmp_path / "m.safetensors")
    loaded = nn.Module()
    loaded.register_buffer("x", torch.zeros(7, 3, dtype=dtype))
    rio.load(loaded, tmp_path / "m.safetensors")
    assert loaded.x.dtype == dtype
    assert torch.equal(loaded.x.view(torch.uint8), saved.x.view(torch.uint8))  # bit for bit


@pytest.mark.parametrize("keep", [0, 7, 60, -1])
def test_truncated_file(saved: tuple[Net, Path], keep: int) -> None:
    _, path = saved
    content = path.read_bytes()
    path.write_bytes(content[:keep])
    with pytest.raises(ValueError, match=r"model\.safetensors.*not a valid safetensors"):
        rio.load(Net(), path)


def test_tampered_tensor_bytes_fail_checksum(saved: tuple[Net, Path]) -> None:
    _, path = saved
    content = bytearray(path.read_bytes())
    content[-3] ^= 0x10  # a bit of the last tensor
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"model\.safetensors.*checksum"):
        rio.load(Net(), path)


def test_tampered_json_rank(saved: tuple[Net, Path]) -> None:
    _, path = saved
    content = path.read_bytes()
    needle = b'\\"rank\\": 4'  # the fc1 record, escaped inside the header's JSON string
    assert content.count(needle) == 1
    path.write_bytes(content.replace(needle, b'\\"rank\\": 5'))
    with pytest.raises(ValueError, match=r"'fc1' is recorded with rank 5"):
        rio.load(Net(), path)


def _rewrite_metadata(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    save_file(tensors, str(path), metadata=edit(metadata))


def test_tampered_metadata(saved: tuple[Net, Path]) -> None:
    _, path = saved
    original = path.read_bytes()

    def set_document(**changes):
        def edit(metadata: dict) -> dict:
            document = json.loads(metadata["rmtprune"])
            document.update(changes)
            return dict(metadata, rmtprune=json.dumps(document))

        return edit

    with safe_open(str(path), framework="pt") as handle:
        structure = json.loads(handle.metadata()["rmtprune"])["structure"]
    cases = [
        (lambda md: {"format": "pt"}, "not written by rmtprune"),
        (lambda md: dict(md, rmtprune="{not json"), "not valid JSON"),
        (set_document(format_version=99), "format_version"),
        (set_document(sha256=None), "'sha256'"),
        (set_document(structure=dict(structure, fc2=structure["fc1"])), "fc2"),
        (set_document(aliases={"extra": "missing"}), "tied entry"),
        (set_document(structure={k: v for k, v in structure.items() if k != "fc1"}), "fit"),
    ]
    for edit, message in cases:
        path.write_bytes(original)
        _rewrite_metadata(path, edit)
        model = Net()
        before = snapshot(model)
        with pytest.raises(ValueError, match=message):
            rio.load(model, path)
        assert same_state(model, before)  # a failed load leaves the model as it was
        assert type(model.fc1) is nn.Linear


def test_strict_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    big = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    rio.save(big, path)
    small = nn.Sequential(nn.Linear(3, 4))
    before = snapshot(small)
    with pytest.raises(ValueError, match=r"big\.safetensors does not fit.*unexpected keys"):
        rio.load(small, path)
    assert same_state(small, before)  # nothing was loaded
    rio.load(small, path, strict=False)
    assert torch.equal(small[0].weight, big[0].weight)
    with pytest.raises(ValueError, match="does not fit"):  # wrong sizes, even when not strict
        rio.load(nn.Sequential(nn.Linear(3, 5)), path, strict=False)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 6)
        self.decoder = nn.Linear(6, 6)
        self.decoder.weight = self.encoder.weight  # tied
        self.register_buffer("window", torch.arange(10.0)[2:5])  # a view into a larger tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.encoder(x)))


def test_tied_weights(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = Tied()
    path = tmp_path / "tied.safetensors"
    rio.save(model, path)
    with safe_open(str(path), framework="pt") as handle:
        document = json.loads(handle.metadata()["rmtprune"])
        assert "decoder.weight" not in set(handle.keys())
    assert document["aliases"] == {"decoder.weight": "encoder.weight"}
    torch.manual_seed(4)
    fresh = rio.load(Tied(), path)
    assert fresh.decoder.weight is fresh.encoder.weight
    assert same_state(fresh, snapshot(model))
    x = torch.randn(3, 6)
    assert torch.equal(fresh(x), model(x))
