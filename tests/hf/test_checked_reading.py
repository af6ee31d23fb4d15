"""``from_pretrained`` of a directory saved by Hugging Face reads through the one checked reader.

Before, it parsed ``model.safetensors.index.json`` itself and loaded whatever file each entry
named: an index naming ``../elsewhere.safetensors``, or a shard that is a link to a file
outside the directory, was loaded without a word.  Now the shard names, links and header
sizes are checked (:mod:`rmtprune.storage.reader`) before any tensor is read, as on every
other route.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import rmtprune
from tests.hf.helpers import MODELS, transformers


def _saved_sharded(directory: Path) -> nn.Module:
    """A tiny BERT saved by Hugging Face's own ``save_pretrained`` in several shards."""
    build, _ = MODELS["bert"]
    torch.manual_seed(0)
    model = build().eval()
    model.save_pretrained(directory, max_shard_size="20KB")
    return model


def _index(directory: Path) -> tuple[Path, dict]:
    index = directory / "model.safetensors.index.json"
    return index, json.loads(index.read_text())


def test_a_clean_sharded_directory_loads_exactly(tmp_path: Path) -> None:
    model = _saved_sharded(tmp_path)
    _, document = _index(tmp_path)
    assert len(set(document["weight_map"].values())) > 2  # really sharded
    loaded = rmtprune.from_pretrained(transformers.BertModel, tmp_path)
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # handed to the model on 64-byte boundaries (bit-exact kernels on this CPU)
    assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters() if p.numel())


@pytest.mark.parametrize("outside", [True, False])
def test_an_index_naming_a_file_outside_is_refused(tmp_path: Path, outside: bool) -> None:
    inner = tmp_path / "model"
    _saved_sharded(inner)
    index, document = _index(inner)
    shard = sorted(set(document["weight_map"].values()))[0]
    (inner / shard).rename(tmp_path / shard)  # the same bytes, one directory up
    name = f"../{shard}" if outside else str(tmp_path / shard)  # relative, then absolute
    document["weight_map"] = {
        key: name if file == shard else file for key, file in document["weight_map"].items()
    }
    index.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="not a plain file name inside") as exc:
        rmtprune.from_pretrained(transformers.BertModel, inner)
    assert str(index) in str(exc.value) and repr(name) in str(exc.value)


def test_a_shard_linking_outside_the_directory_is_refused(tmp_path: Path) -> None:
    inner = tmp_path / "model"
    _saved_sharded(inner)
    _, document = _index(inner)
    shard = sorted(set(document["weight_map"].values()))[-1]
    (inner / shard).rename(tmp_path / "elsewhere.safetensors")
    (inner / shard).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ValueError, match="is a link to a file outside") as exc:
        rmtprune.from_pretrained(transformers.BertModel, inner)
    assert shard in str(exc.value)


def test_a_truncated_shard_is_refused_naming_it(tmp_path: Path) -> None:
    inner = tmp_path / "model"
    _saved_sharded(inner)
    _, document = _index(inner)
    shard = inner / sorted(set(document["weight_map"].values()))[0]
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"ends at byte \d+ .* \(truncated\?\)") as exc:
        rmtprune.from_pretrained(transformers.BertModel, inner)
    assert str(shard) in str(exc.value)
