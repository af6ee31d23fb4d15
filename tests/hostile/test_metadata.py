"""Files and their metadata are validated before anything is allocated from them.

Replays the memory-bomb, nesting and malformed-structure attempts of issue 10 through both
readers (``rmtprune.load`` and the command line), then fuzzes the validator.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import rmtprune
from rmtprune import InvalidFileError
from rmtprune.cli.app import main
from rmtprune.factorize import LowRankLinear
from rmtprune.ondisk.sources import load_model
from rmtprune.storage.metadata import MAX_DEPTH, check_structure, parse_document
from rmtprune.storage.writer import payload_digest

TENSORS = {
    "fc.first.weight": torch.zeros(2, 4),
    "fc.second.weight": torch.zeros(3, 2),
    "fc.second.bias": torch.zeros(3),
}
ENTRY = {"type": "LowRankLinear", "rank": 2, "in_features": 4, "out_features": 3, "bias": True}


def _document(structure: Any, **overrides: Any) -> dict[str, Any]:
    doc = {
        "format_version": 1,
        "structure": structure,
        "aliases": {},
        "sha256": payload_digest(TENSORS),
    }
    doc.update(overrides)
    return doc


def _write(path: Path, text: str, tensors: dict[str, torch.Tensor] = TENSORS) -> Path:
    save_file(tensors, str(path), metadata={"format": "pt", "rmtprune": text})
    return path


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_valid_file_round_trips(tmp_path: Path) -> None:
    path = _write(tmp_path / "ok.safetensors", json.dumps(_document({"fc": ENTRY})))
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(4, 3))
    assert rmtprune.load(model, path).fc.rank == 2
    assert load_model(path).fc.rank == 2


@pytest.mark.parametrize(
    "field", [{"rank": 10**12}, {"in_features": 10**15}, {"out_features": 10**15}]
)
def test_memory_bomb_is_refused_before_allocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: dict[str, int]
) -> None:
    # before: "can't allocate ... bytes" (or 2.2 GB allocated for rank 1e6) from the CLI
    path = _write(tmp_path / "bomb.safetensors", json.dumps(_document({"fc": {**ENTRY, **field}})))
    before = _maxrss_mb()
    assert main(["analyze", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "'fc'" in err
    with pytest.raises(InvalidFileError, match="layer 'fc'"):
        load_model(path)
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(4, 3))
    with pytest.raises(InvalidFileError, match="layer 'fc'"):
        rmtprune.load(model, path)
    assert isinstance(model.fc, nn.Linear)  # the model given is left as it was
    assert _maxrss_mb() - before < 100


def test_deep_nesting_is_a_clean_error(tmp_path: Path, capsys) -> None:
    # before: RecursionError from the API (documented ValueError) and a traceback from the CLI
    deep = '{"format_version": 1, "aliases": {}, "sha256": "", "structure": {"x": '
    text = deep + "[" * 100_000 + "]" * 100_000 + "}}"
    path = _write(tmp_path / "deep.safetensors", text)
    with pytest.raises(InvalidFileError, match=f"nested more than {MAX_DEPTH}"):
        rmtprune.load(nn.Linear(4, 3), path)
    assert main(["analyze", str(path), "--quiet"]) == 2
    assert "nested more than" in capsys.readouterr().err
    moderate = deep + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}}"
    with pytest.raises(InvalidFileError, match="nested more than"):
        parse_document("m", moderate)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[1, 2]", "must be a JSON object. Got a list"),  # before: "list indices must be ..."
        ('{"format_version": 1, "structure": {"a" 1}}', "is not valid JSON"),  # no file name
        ('{"format_version": true, "structure": {}, "aliases": {}, "sha256": ""}', "format_v"),
        ('{"format_version": 3, "structure": {}, "aliases": {}, "sha256": ""}', "unsupported"),
        ('{"format_version": 2, "structure": {}, "aliases": {}, "sha256": ""}', "2 with 0 sparse"),
    ],
)
def test_broken_documents_name_the_file(tmp_path: Path, text: str, needle: str, capsys) -> None:
    path = _write(tmp_path / "broken.safetensors", text)
    with pytest.raises(InvalidFileError, match=needle) as exc:
        rmtprune.load(nn.Linear(4, 3), path)
    assert str(path) in str(exc.value) and exc.value.path == str(path)
    assert main(["analyze", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and needle.split(".")[0] in err


CONV = {
    "type": "LowRankConv2d",
    "rank": 2,
    "in_features": 4 * 9,
    "out_features": 3,
    "bias": False,
    "in_channels": 4,
    "out_channels": 3,
    "kernel_size": [3, 3],
    "stride": [1, 1],
    "padding": [0, 0],
    "dilation": [1, 1],
    "padding_mode": "zeros",
}
CONV_TENSORS = {
    "c.first.weight": torch.zeros(2, 4, 3, 3),
    "c.second.weight": torch.zeros(3, 2, 1, 1),
}


@pytest.mark.parametrize(
    ("structure", "tensors", "needle"),
    [
        ({"c": {k: v for k, v in CONV.items() if k != "in_channels"}}, CONV_TENSORS, "in_channels"),
        ({"c": {**CONV, "padding_mode": "evil"}}, CONV_TENSORS, "padding_mode"),
        ({"c": {**CONV, "kernel_size": [3]}}, CONV_TENSORS, "kernel_size"),
        ({"c": {**CONV, "in_features": 5}}, CONV_TENSORS, "in_features"),
        ({"c": CONV}, {"c.first.weight": torch.zeros(2, 4, 3, 3)}, "is missing"),
        ({"a..b": ENTRY}, TENSORS, "not a valid module path"),  # "module name can't be empty"
        ({"": ENTRY}, TENSORS, "not a valid module path"),
        ({"forward": ENTRY}, TENSORS, "not a valid module path"),
        ({"fc": {**ENTRY, "rank": True}}, TENSORS, "'rank' must be an int"),
        ({"fc": {**ENTRY, "bias": "yes"}}, TENSORS, "'bias' must be true or false"),
        ({"fc": {**ENTRY, "type": "Evil"}}, TENSORS, "unknown factorized type"),
        ({"fc": {**ENTRY, "type": []}}, TENSORS, "unknown factorized type"),  # found by fuzzing
        ({"fc": [1]}, TENSORS, "not an object"),
        ({"fc": {k: v for k, v in ENTRY.items() if k != "in_features"}}, TENSORS, "in_features"),
    ],
)
def test_malformed_structure_entries(
    structure: dict[str, Any], tensors: dict[str, torch.Tensor], needle: str
) -> None:
    # before: KeyError 'in_channels' / 'in_features', "module name can't be empty string"
    with pytest.raises(InvalidFileError, match=needle):
        check_structure("m.safetensors", structure, tensors)


def test_bad_tensor_names_in_plain_files(tmp_path: Path, capsys) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"forward.weight": torch.zeros(3, 3)}, str(path))
    assert main(["analyze", str(path), "--quiet"]) == 2
    assert "'forward.weight' is not a valid module path" in capsys.readouterr().err


def test_a_real_saved_model_passes_the_validator(tmp_path: Path) -> None:
    model = nn.Sequential(LowRankLinear(6, 5, rank=2), nn.Conv2d(3, 4, 3))
    rmtprune.save(model, tmp_path / "m.safetensors")
    assert getattr(load_model(tmp_path / "m.safetensors"), "0").rank == 2


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(sorted({*ENTRY, *CONV}))
ENTRIES = st.dictionaries(KEYS, JSON | st.integers(-5, 10**18), max_size=12) | JSON


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=JSON | st.fixed_dictionaries({"structure": st.dictionaries(st.text(), JSON)}))
def test_fuzz_parse_document_raises_only_invalid_file_error(document: Any) -> None:
    doc = (
        {"format_version": 1, "aliases": {}, "sha256": "", **document}
        if isinstance(document, dict)
        else document
    )
    try:
        parsed = parse_document("fuzz.safetensors", json.dumps(doc))
    except InvalidFileError as exc:
        assert "fuzz.safetensors" in str(exc)
        return
    assert isinstance(parsed["structure"], dict)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["fc", "c", "", "a.b", "x-y", "forward"]) | st.text(max_size=6),
    entry=ENTRIES,
)
def test_fuzz_structure_entries_valid_or_clean_error(name: str, entry: Any) -> None:
    tensors = {**TENSORS, **CONV_TENSORS}
    before = _maxrss_mb()
    try:
        check_structure("fuzz.safetensors", {name: entry}, tensors)
    except InvalidFileError as exc:
        assert "fuzz.safetensors" in str(exc)
        return
    # accepted: the entry describes exactly tensors present, so building it is bounded
    model = load_model_from(name, entry, tensors)
    assert sum(p.numel() for p in model.parameters()) <= sum(t.numel() for t in tensors.values())
    assert _maxrss_mb() - before < 100


def load_model_from(
    name: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> nn.Module:
    from rmtprune.ondisk.sources import build_shell

    return build_shell(
        {k: v for k, v in tensors.items() if k.startswith(name + ".")}, {name: entry}
    )
