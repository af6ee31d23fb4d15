"""Masked (sparse) layers are stored as kept values + a packed bitmask and load back exactly.

The truth each test checks against is independent of the code under test: the saved model's
own tensors and masks, ``numpy.packbits`` of the mask, and the byte arithmetic of the
safetensors layout (8-byte length + JSON header + raw tensor bytes).
"""

from __future__ import annotations

import json
import math
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import rmtprune
from rmtprune import InvalidFileError
from rmtprune.factorize.masks import apply_mask, mask_of, masked_layers
from rmtprune.ondisk.inputs import analyze_input, plan_input
from rmtprune.ondisk.sources import load_model
from rmtprune.storage.sparse import TiedMaskWarning
from rmtprune.storage.writer import payload_digest

MASKED = ("lin", "conv", "emb")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.conv = nn.Conv2d(4, 8, 3)
        self.lin = nn.Linear(64, 48)
        self.head = nn.Linear(48, 3)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens).mean(1).repeat(1, 4) + self.conv(image).flatten(1)[:, :64]
        return self.head(torch.relu(self.lin(x)))


def _random_mask(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(weight.shape, generator=generator) < 0.5


def _two_of_four(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """2:4 sparsity: of every 4 consecutive entries (row-major), the 2 largest in magnitude."""
    groups = weight.detach().abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.reshape(weight.shape)


def _masked_net(pattern: Any) -> tuple[Net, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = Net()
    generator = torch.Generator().manual_seed(1)
    masks = {}
    for name in MASKED:
        layer = net.get_submodule(name)
        masks[name] = pattern(layer.weight, generator)
        apply_mask(layer, masks[name])
    kept = masks["lin"].nonzero()[0].tolist()
    with torch.no_grad():  # a kept weight that is exactly 0.0: must stay kept
        net.lin.weight[tuple(kept)] = 0.0
    return net, masks


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _same_bits(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(_bits(sa[k]), _bits(sb[k])) for k in sa)


def _document(path: Path) -> dict[str, Any]:
    with safe_open(str(path), "pt") as handle:
        return json.loads(handle.metadata()["rmtprune"])


def _rewrite(path: Path, edit: Any) -> Path:
    """The file at ``path`` with ``edit(tensors, document)`` applied and a correct digest."""
    tensors, document = load_file(str(path)), _document(path)
    edit(tensors, document)
    document["sha256"] = payload_digest(tensors)
    out = path.with_name("edited.safetensors")
    save_file(tensors, str(out), metadata={"format": "pt", "rmtprune": json.dumps(document)})
    return out


@pytest.mark.parametrize("pattern", [_random_mask, _two_of_four], ids=["random", "2:4"])
def test_round_trip_is_bitwise_with_the_saved_masks(tmp_path: Path, pattern: Any) -> None:
    net, masks = _masked_net(pattern)
    path = tmp_path / "sparse.safetensors"
    rmtprune.save(net, path)

    stored = load_file(str(path))
    for name in MASKED:
        key = f"{name}.weight"
        mask, weight = masks[name], net.get_submodule(name).weight.detach()
        assert key not in stored
        assert torch.equal(stored[f"{key}:sparse_values"], weight[mask])
        packed = np.packbits(mask.numpy().reshape(-1))  # numpy's own bit order
        assert np.array_equal(stored[f"{key}:sparse_bitmask"].numpy(), packed)
        entry = _document(path)["sparse"][key]
        assert entry == {"shape": list(weight.shape), "nonzero": int(mask.sum())}
    # a reader older than sparse storage reads only format_version 1: it refuses this file by
    # its version rather than as a file that "does not fit the model"
    assert _document(path)["format_version"] == 2

    torch.manual_seed(123)  # different weights: everything must come from the file
    loaded = rmtprune.load(Net(), path)
    assert _same_bits(loaded, net)
    assert sorted(masked_layers(loaded)) == sorted(MASKED)
    for name in MASKED:
        assert torch.equal(mask_of(loaded.get_submodule(name)), masks[name])
    zero = tuple(masks["lin"].nonzero()[0].tolist())
    assert loaded.lin.weight[zero] == 0.0 and mask_of(loaded.lin)[zero]  # kept, not re-guessed


def test_training_after_load_keeps_the_zeros(tmp_path: Path) -> None:
    net, masks = _masked_net(_random_mask)
    path = tmp_path / "sparse.safetensors"
    rmtprune.save(net, path)
    model = rmtprune.load(Net(), path)
    before = {name: model.get_submodule(name).weight.detach().clone() for name in MASKED}
    generator = torch.Generator().manual_seed(2)
    for _ in range(3):  # SGD with weight decay (by hand: torch.optim takes 2 s to import)
        tokens = torch.randint(0, 40, (5, 7), generator=generator)
        image = torch.randn(5, 4, 6, 6, generator=generator)
        model.zero_grad()
        model(tokens, image).square().mean().backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= 0.1 * (param.grad + 0.1 * param + 0.01)  # fills every zero
    model(tokens, image)  # the forward pass empties what the last step filled
    for name in MASKED:
        weight, mask = model.get_submodule(name).weight.detach(), masks[name]
        assert torch.all(weight[~mask] == 0)
        assert not torch.equal(weight[mask], before[name][mask])  # it did train
    again = tmp_path / "again.safetensors"
    rmtprune.save(model, again)
    assert _document(again)["sparse"]["lin.weight"]["nonzero"] == int(masks["lin"].sum())


def test_file_size_follows_the_arithmetic(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense, sparse = nn.Linear(512, 512, bias=False), nn.Linear(512, 512, bias=False)
    sparse.load_state_dict(dense.state_dict())
    keep = torch.zeros(512 * 512, dtype=torch.bool)
    keep[torch.randperm(512 * 512, generator=torch.Generator().manual_seed(0))[: 512 * 256]] = True
    apply_mask(sparse, keep.reshape(512, 512))
    rmtprune.save(dense, tmp_path / "dense.safetensors")
    rmtprune.save(sparse, tmp_path / "sparse.safetensors")
    sizes = {}
    for kind in ("dense", "sparse"):
        raw = (tmp_path / f"{kind}.safetensors").read_bytes()
        (header,) = struct.unpack("<Q", raw[:8])
        sizes[kind] = (len(raw), len(raw) - 8 - header)  # file, tensor bytes
    n = 512 * 512
    assert sizes["dense"][1] == 4 * n
    assert sizes["sparse"][1] == 4 * (n // 2) + math.ceil(n / 8)  # 16 + 1 bits per entry
    # 17/32 = 0.531 of the dense payload; the headers are a few hundred bytes each
    assert sizes["sparse"][0] <= 0.56 * sizes["dense"][0]
    loaded = rmtprune.load(nn.Linear(512, 512, bias=False), tmp_path / "sparse.safetensors")
    assert torch.equal(_bits(loaded.weight), _bits(sparse.weight))


def _values_short(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
    t["lin.weight:sparse_values"] = t["lin.weight:sparse_values"][:-1].clone()


def _bitmask_short(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
    t["lin.weight:sparse_bitmask"] = t["lin.weight:sparse_bitmask"][:-1].clone()


def _nonzero_off(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
    d["sparse"]["lin.weight"]["nonzero"] += 1


def _shape_off(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
    d["sparse"]["lin.weight"]["shape"] = [48, 80]


def _bit_flipped(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
    t["lin.weight:sparse_bitmask"][0] ^= 1  # same lengths, one bit more or less


def _shape_not_ints(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
    d["sparse"]["lin.weight"]["shape"] = [48, "64"]


def _also_dense(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
    t["lin.weight"] = torch.zeros(48, 64)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (_values_short, "values tensor 'lin.weight:sparse_values'"),
        (_bitmask_short, "bitmask tensor 'lin.weight:sparse_bitmask'"),
        (_nonzero_off, "'nonzero'"),
        (_shape_off, "'shape' [48, 80]"),
        (_bit_flipped, "bits set"),
        (_shape_not_ints, "'shape' must be a list of ints"),
        (_also_dense, "also stored densely"),
    ],
)
def test_damaged_sparse_records_are_refused(tmp_path: Path, edit: Any, field: str) -> None:
    net, _ = _masked_net(_random_mask)
    rmtprune.save(net, tmp_path / "sparse.safetensors")
    path = _rewrite(tmp_path / "sparse.safetensors", edit)
    model = Net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for read in (lambda: rmtprune.load(model, path), lambda: load_model(path)):
        with pytest.raises(InvalidFileError) as info:
            read()
        message = str(info.value)
        assert info.value.path == str(path) and str(path) in message
        assert "sparse entry 'lin.weight'" in message and field in message
    assert not masked_layers(model)  # the model given is left as it was
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_the_version_must_match_the_sparse_entries(tmp_path: Path) -> None:
    net, _ = _masked_net(_random_mask)
    rmtprune.save(net, tmp_path / "sparse.safetensors")

    def as_version_1(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
        d["format_version"] = 1

    path = _rewrite(tmp_path / "sparse.safetensors", as_version_1)
    with pytest.raises(InvalidFileError, match="format_version 1 with 3 sparse entries"):
        rmtprune.load(Net(), path)


def test_stray_sparse_tensor_is_refused(tmp_path: Path) -> None:
    rmtprune.save(Net(), tmp_path / "dense.safetensors")

    def stray(t: dict[str, torch.Tensor], d: dict[str, Any]) -> None:
        t["head.weight:sparse_values"] = torch.ones(3)

    path = _rewrite(tmp_path / "dense.safetensors", stray)
    with pytest.raises(
        InvalidFileError, match=re.escape("'head.weight:sparse_values' is named as sparse")
    ):
        rmtprune.load(Net(), path)


def test_file_without_sparse_entries_loads_as_before(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = Net()
    tensors = {k: v.clone() for k, v in net.state_dict().items()}
    document = {"format_version": 1, "structure": {}, "aliases": {}}
    document["sha256"] = payload_digest(tensors)
    old = tmp_path / "old.safetensors"  # as written before sparse storage existed
    save_file(tensors, str(old), metadata={"format": "pt", "rmtprune": json.dumps(document)})
    loaded = rmtprune.load(Net(), old)
    assert _same_bits(loaded, net) and not masked_layers(loaded)

    new = tmp_path / "new.safetensors"
    rmtprune.save(net, new)  # a model without masks writes no "sparse" entry
    assert _document(new) == document
    assert load_file(str(new)).keys() == tensors.keys()


def test_loading_replaces_the_models_own_masks(tmp_path: Path) -> None:
    net, masks = _masked_net(_random_mask)
    rmtprune.save(net, tmp_path / "sparse.safetensors")
    torch.manual_seed(5)
    dense = Net()
    rmtprune.save(dense, tmp_path / "dense.safetensors")
    target = Net()
    apply_mask(target.lin, ~masks["lin"])  # an older mask, disjoint from the file's
    rmtprune.load(target, tmp_path / "sparse.safetensors")
    assert torch.equal(mask_of(target.lin), masks["lin"])  # not intersected with the old one
    rmtprune.load(target, tmp_path / "dense.safetensors")
    assert not masked_layers(target) and _same_bits(target, dense)


def test_command_line_readers_read_sparse_files_dense(tmp_path: Path) -> None:
    net, masks = _masked_net(_random_mask)
    path = tmp_path / "sparse.safetensors"
    rmtprune.save(net, path)
    shell = load_model(path, dense={"lin": "Linear"})
    assert _same_bits(shell, net)
    assert torch.equal(mask_of(shell.lin), masks["lin"])
    report = analyze_input(
        plan_input(path, assume_linear=["lin"]), rmtprune.MPCriterion(), rmtprune.Select()
    )
    assert {row.name for row in report} >= {"lin", "head"}


def test_tied_masked_weight_is_stored_densely_with_a_warning(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 10, bias=False))
    model[1].weight = model[0].weight
    apply_mask(model[0], torch.rand(10, 6, generator=torch.Generator().manual_seed(0)) < 0.5)
    with pytest.warns(TiedMaskWarning, match="layer '0'"):
        rmtprune.save(model, tmp_path / "tied.safetensors")
    assert not _document(tmp_path / "tied.safetensors").get("sparse")
    fresh = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 10, bias=False))
    fresh[1].weight = fresh[0].weight
    loaded = rmtprune.load(fresh, tmp_path / "tied.safetensors")
    assert torch.equal(loaded[0].weight, model[0].weight) and loaded[1].weight is loaded[0].weight


def _bert_config() -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )


def test_hf_round_trip_keeps_the_mask(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(_bert_config()).eval()
    name = "encoder.layer.0.intermediate.dense"
    layer = model.get_submodule(name)
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    apply_mask(layer, mask)
    kept = tuple(mask.nonzero()[0].tolist())
    with torch.no_grad():
        layer.weight[kept] = 0.0
    rmtprune.save_pretrained(model, tmp_path)
    entry = json.loads((tmp_path / "config.json").read_text())["rmtprune"]
    assert entry["masked"] == [name]
    loaded = rmtprune.from_pretrained(transformers.BertModel, tmp_path)
    assert list(masked_layers(loaded)) == [name]
    assert torch.equal(mask_of(loaded.get_submodule(name)), mask)  # the kept 0.0 included
    assert _same_bits(loaded, model)
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(loaded(x).last_hidden_state, model(x).last_hidden_state)


def test_hf_tied_masked_embedding_gets_its_mask_from_the_zeros(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(_bert_config()).eval()
    name = "bert.embeddings.word_embeddings"
    layer = model.get_submodule(name)
    assert model.cls.predictions.decoder.weight is layer.weight  # tied: stored densely
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(4)) < 0.5
    apply_mask(layer, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TiedMaskWarning)  # from_pretrained restores this mask
        rmtprune.save_pretrained(model, tmp_path)
    assert "sparse" not in _document(tmp_path / "rmtprune.safetensors")
    loaded = rmtprune.from_pretrained(transformers.BertForMaskedLM, tmp_path)
    assert list(masked_layers(loaded)) == [name]
    # from the zeros: the padding token's row is all zeros at initialisation, so unmasked there
    expected = mask & (layer.weight.detach() != 0)
    assert torch.equal(mask_of(loaded.get_submodule(name)), expected)
    assert int(expected.sum()) < 0.6 * expected.numel()
    assert _same_bits(loaded, model)
