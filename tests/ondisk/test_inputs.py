"""The route of an input is decided once, from the path alone (``plan_input``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from rmtprune.ondisk import inputs


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    weights = {"fc.weight": torch.ones(4, 6)}
    plain = tmp_path / "m.safetensors"
    save_file(weights, str(plain))
    state_dict = tmp_path / "m.pt"
    torch.save(weights, state_dict)
    directory = tmp_path / "hf"
    directory.mkdir()
    save_file(weights, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    return {"plain": plain, "state dict": state_dict, "directory": directory}


def test_each_input_takes_one_route(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert inputs.plan_input(files["plain"]).route == "checkpoint"
    assert inputs.plan_input(files["state dict"]).route == "state dict"
    factory = inputs.plan_input(files["plain"], model="pkg.mod:build")
    assert (factory.route, factory.model) == ("factory", "pkg.mod:build")
    monkeypatch.setattr(inputs, "transformers_available", lambda: True)
    plan = inputs.plan_input(files["directory"], assume_linear=["fc"])
    assert (plan.route, plan.writes_directory, plan.assume_linear) == (
        "model directory",
        True,
        ("fc",),
    )
    blind = inputs.plan_input(files["directory"], no_model=True)
    assert (blind.route, blind.writes_directory) == ("checkpoint", False)
    monkeypatch.setattr(inputs, "transformers_available", lambda: False)
    assert inputs.plan_input(files["directory"]).route == "checkpoint"


def test_a_missing_input_is_named_before_any_route(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nothing\.safetensors"):
        inputs.plan_input(missing)
