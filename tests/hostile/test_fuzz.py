"""Property-based fuzzing: random command lines and random small models.

* Random argv: ``main`` ends with an exit status and, on failure, one error line on stderr,
  never a traceback.
* ``prune`` on random small models: a report whose counts match the pruned model and whose
  ranks are the real ranks, or a documented ``ValueError``/``TypeError``; never anything else.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import rmtprune
from rmtprune.cli.app import main

FILES = ("good.safetensors", "bad.pt", "missing.safetensors", "dir", "out/p.safetensors")
TOKENS = st.sampled_from(
    [
        "analyze",
        "prune",
        "--alpha",
        "--beta",
        "--fit-cutoff",
        "--layers",
        "--min-dim",
        "--min-rank",
        "--bulk-keep",
        "--split",
        "never",
        "always",
        "-o",
        "--json",
        "--overwrite",
        "--dry-run",
        "--model",
        "os:getcwd",
        "nope:nope",
        "0",
        "0.3",
        "-1",
        "nan",
        "1e309",
        "--quiet",
        *FILES,
    ]
) | st.text(max_size=6)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    rmtprune.save(nn.Sequential(nn.Linear(40, 32)), root / "good.safetensors")
    (root / "bad.pt").write_bytes(b"\x80\x04garbage")
    (root / "dir").mkdir()
    (root / "out").mkdir()
    return root


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(argv=st.lists(TOKENS, max_size=8))
def test_random_command_lines_end_in_one_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    monkeypatch.chdir(workdir)
    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: usage errors and --help
            status = exc.code if isinstance(exc.code, int) else 1
            if isinstance(exc.code, str):  # the interpreter prints it as one line
                print(exc.code, file=err)
    text = err.getvalue()
    assert "Traceback" not in text
    assert isinstance(status, int)
    if status != 0:
        lines = text.strip().split("\n")  # what a terminal shows as separate lines
        errors = [line for line in lines if "error" in line]
        assert len(errors) == 1, text
        assert lines[-1] == errors[0] and "\r" not in errors[0]


LAYERS = st.lists(st.integers(min_value=8, max_value=72), min_size=2, max_size=4)


def _random_model(widths: list[int], kind: str, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for n, m in itertools.pairwise(widths):
        layers += [nn.Linear(n, m), nn.ReLU()]
    model = nn.Sequential(*layers)
    first = model[0]
    with torch.no_grad():
        if kind == "low-rank":
            first.weight.copy_(
                torch.randn(first.out_features, 1) @ torch.randn(1, first.in_features)
            )
        elif kind == "zero":
            first.weight.zero_()
        elif kind == "nan":
            first.weight[0, 0] = float("nan")
        elif kind == "spiked":
            u = torch.randn(first.out_features, 2)
            first.weight += u @ torch.randn(2, first.in_features)
    return model


def _rank(layer: nn.Module) -> int:
    weight = layer.second.weight @ layer.first.weight if hasattr(layer, "first") else layer.weight
    return int(torch.linalg.matrix_rank(weight.detach().double(), rtol=1e-5))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    widths=LAYERS,
    kind=st.sampled_from(["noise", "low-rank", "zero", "nan", "spiked"]),
    seed=st.integers(0, 10),
    bulk_keep=st.floats(0.0, 1.0) | st.sampled_from([-0.1, 1.5, float("nan")]),
    min_rank=st.none() | st.integers(-1, 40),
    split=st.sampled_from(["auto", True, False, "maybe"]),
    min_dim=st.integers(1, 40),
)
def test_prune_random_small_models(
    widths: list[int],
    kind: str,
    seed: int,
    bulk_keep: float,
    min_rank: int | None,
    split: object,
    min_dim: int,
) -> None:
    model = _random_model(widths, kind, seed)
    x = torch.randn(3, widths[0])
    try:
        criterion = rmtprune.MPCriterion(bulk_keep=bulk_keep, min_rank=min_rank)
        select = rmtprune.Select(min_dim=min_dim)
        pruned, report = rmtprune.prune(
            model,
            criterion=criterion,
            select=select,
            split=split,  # type: ignore[arg-type]
        )
    except (ValueError, TypeError) as exc:
        assert re.search("parameter of (prune|MPCriterion|Select)", str(exc))
        return
    assert report.params_after == sum(p.numel() for p in pruned.parameters())
    assert pruned(x).shape == (3, widths[-1])
    for row in report.layers:
        layer = pruned.get_submodule(row.name)
        if row.action in ("split", "truncated"):
            assert _rank(layer) == row.rank_after < row.rank_before
        else:
            assert layer is not None and row.reason
