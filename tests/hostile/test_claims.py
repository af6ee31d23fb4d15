"""No unchecked claim (issue 20, item 5): calibration data that cannot carry a claim is refused,
naming the batch; the pruner's rank records and step numbers are checked; a report that changes
nothing says why."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune import Calibrated, FixedRank, Select, SpectralPruner
from rmtprune.pruning.distill import distill
from rmtprune.pruning.outputs import OutputProbe
from rmtprune.pruning.whitening import factorize_at, input_grams


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8))


def _batches(n: int = 4, width: int = 64, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, width, generator=g) for _ in range(n)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


# --- NaN / Inf in calibration batches -------------------------------------------------------


def _poison(batch: Any, value: float) -> Any:
    """The batch with entry [0, 0] of its first floating-point tensor set to ``value``."""
    if isinstance(batch, torch.Tensor):
        batch = batch.clone()
        batch[0, 0] = value
        return batch
    if isinstance(batch, dict):
        return {"x": _poison(batch["x"], value)}
    return (_poison(batch[0], value),)


class _Keyword(nn.Module):
    """A model called as ``model(x=...)`` or ``model(x)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize(
    ("kind", "where"), [("tensor", ""), ("dict", ", key 'x'"), ("tuple", ", item 0")]
)
@pytest.mark.parametrize(("number", "value"), [(0, math.nan), (1, math.inf), (3, -math.inf)])
def test_non_finite_calibration_batch_is_refused_naming_it(
    kind: str, where: str, number: int, value: float
) -> None:
    # before: NaN in a held-out batch gave output_change = nan and rows "output change nan held
    # out ≤ 0.1"; NaN in a fitting batch silently pruned nothing
    wrap: dict[str, Callable[[torch.Tensor], Any]] = {
        "tensor": lambda t: t,
        "dict": lambda t: {"x": t},
        "tuple": lambda t: (t,),
    }
    batches = [wrap[kind](b) for b in _batches()]
    batches[number] = _poison(batches[number], value)
    nan, inf = (1, 0) if math.isnan(value) else (0, 1)
    expected = (
        f"The 'batches' parameter of Calibrated must hold finite values only. "
        f"Got {nan} NaN and {inf} Inf values in batch {number}{where} instead."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        Calibrated(batches, 0.1)
    model = _Keyword()
    before = _state(model)
    measuring = expected.replace(
        "'batches' parameter of Calibrated", "'calibration' parameter of prune"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(measuring)}$"):
        rmtprune.prune(model, calibration=batches, inplace=True)
    assert _same(model, before)


def test_every_batch_consuming_path_refuses_non_finite_data() -> None:
    model = _mlp()
    batches = _batches()
    batches[2] = _poison(batches[2], math.nan)
    got = "Got 1 NaN and 0 Inf values in batch 2 instead."
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: OutputProbe(model, batches), "The 'batches' parameter of OutputProbe"),
        (
            lambda: input_grams(model, {"0": (model[0], 64)}, batches),
            "The 'batches' parameter of input_grams",
        ),
        (
            lambda: factorize_at(model, {"0": 4}, batches, whiten=True),
            "The 'batches' parameter of factorize_at",
        ),
        (
            lambda: distill(copy.deepcopy(model), model, batches, epochs=1),
            "The 'batches' parameter of distill",
        ),
        (
            lambda: distill(
                copy.deepcopy(model), model, _batches(), epochs=1, eval_batches=batches
            ),
            "The 'eval_batches' parameter of distill",
        ),
    ]
    for call, head in cases:
        with pytest.raises(
            ValueError,
            match=f"^{re.escape(head)} must hold finite values only\\. {re.escape(got)}$",
        ):
            call()


def test_integer_token_ids_are_not_checked_and_still_work() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(100, 64), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 8))
    g = torch.Generator().manual_seed(3)
    ids = [torch.randint(0, 100, (4, 12), generator=g) for _ in range(4)]
    criterion = Calibrated(ids, 0.5, holdout=0.5)
    pruned, report = rmtprune.prune(model, criterion=criterion, select=Select(min_dim=32))
    assert report.output_change is not None and math.isfinite(report.output_change)
    # the reported change is the measured one: recompute it on the held-out ids
    with torch.no_grad():
        ref = torch.cat([model(x) for x in criterion.held_batches]).double()
        out = torch.cat([pruned(x) for x in criterion.held_batches]).double()
    assert report.output_change == pytest.approx(float((out - ref).norm() / ref.norm()), rel=1e-9)
    _, measured = rmtprune.prune(model, calibration=ids, criterion=FixedRank(8))
    assert measured.output_change is not None and math.isfinite(measured.output_change)


class _SqrtGate(nn.Module):
    """``mlp(x) · sqrt(x[:, :1])``: NaN in every output of a row whose first input is < 0."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * x[:, :1].sqrt()


def test_non_finite_output_of_the_unchanged_model_is_an_error_naming_the_batch() -> None:
    # before: the NaN reached output_change (held out) or the Gram matrices (fit)
    for number in (2, 3):  # a fitting batch and a held-out one
        batches = [b.abs() for b in _batches()]
        batches[number][5, 0] = -1.0  # finite, but the model computes NaN for that row
        expected = (
            f"The model's output on calibration batch {number} holds 8 NaN and 0 Inf values "
            "although the batch is finite"
        )
        model = _SqrtGate()
        before = _state(model)
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}"):
            rmtprune.prune(model, criterion=Calibrated(batches, 0.1), inplace=True)
        assert _same(model, before)
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}"):
            rmtprune.prune(model, calibration=batches, criterion=FixedRank(4), inplace=True)
        assert _same(model, before)
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}"):
            distill(copy.deepcopy(model), model, batches, epochs=1)


def test_non_finite_layer_input_is_an_error_naming_layer_and_batch() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    with torch.no_grad():
        model[0].bias[3] = math.inf  # layer "1" sees Inf; its own weights are finite
    expected = (
        "The input of layer '1' on calibration batch 0 holds NaN or Inf values although the "
        "batch is finite"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}"):
        input_grams(model, {"1": (model[1], 64)}, _batches())


def test_a_changed_model_with_non_finite_output_has_change_inf() -> None:
    model = _mlp()
    probe = OutputProbe(model, _batches())
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken[2].weight[0, 0] = math.nan
    assert probe.change(model) == 0.0
    assert probe.change(broken) == math.inf


# --- a batch the model cannot run ------------------------------------------------------------


def _wrong_width(number: int) -> list[torch.Tensor]:
    batches = _batches()
    batches[number] = torch.randn(16, 63)
    return batches


def _cannot_run(number: int) -> str:
    return (
        f"Calibration batch {number} (a tensor of shape (16, 63)) could not be passed through "
        "the model: RuntimeError: mat1 and mat2 shapes cannot be multiplied (16x63 and 64x64)"
    )


@pytest.mark.parametrize("number", [2, 3])  # fitting, held out
def test_a_batch_of_the_wrong_shape_is_named(number: int) -> None:
    # before: RuntimeError from inside nn.Linear, naming no batch
    model = _mlp()
    before = _state(model)
    expected = f"^{re.escape(_cannot_run(number))}$"
    with pytest.raises(ValueError, match=expected) as info:
        rmtprune.prune(model, criterion=Calibrated(_wrong_width(number), 0.1), inplace=True)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert _same(model, before)
    with pytest.raises(ValueError, match=expected):
        rmtprune.prune(model, calibration=_wrong_width(number), inplace=True)
    assert _same(model, before)
    with pytest.raises(ValueError, match=expected):
        OutputProbe(model, _wrong_width(number))
    with pytest.raises(ValueError, match=expected):
        input_grams(model, {"0": (model[0], 64)}, _wrong_width(number))
    with pytest.raises(ValueError, match=expected):
        factorize_at(model, {"0": 4}, _wrong_width(number), whiten=True)
    with pytest.raises(ValueError, match=expected):
        distill(copy.deepcopy(model), model, _wrong_width(number), epochs=1)


# --- the pruner's rank records ----------------------------------------------------------------


def _dense() -> nn.Sequential:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(100, 100))


def _pruner(model: nn.Module, every: int = 1) -> SpectralPruner:
    return SpectralPruner(model, criterion=FixedRank(4), every=every, split=False)


def _best_rank4(weight: torch.Tensor) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    return (u[:, :4] * s[:4]) @ vh[:4]


def _row(report: rmtprune.PruneReport) -> tuple[str, int, int, str]:
    row = report["0"]
    return row.action, row.rank_before, row.rank_after, row.reason


def test_a_record_survives_training_and_a_resume() -> None:
    model = _dense()
    pruner = _pruner(model)
    assert _row(pruner.step(1))[:3] == ("truncated", 100, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    targets = _batches(8, width=100, seed=9)
    for x, t in zip(_batches(8, width=100), targets, strict=True):  # in-place updates
        opt.zero_grad()
        (model(x) - t).square().mean().backward()
        opt.step()
    assert torch.linalg.matrix_rank(model[0].weight.detach()) == 100
    assert _row(pruner.step(2)) == ("unchanged", 4, 4, "fixed rank 4")
    resumed = _dense()
    resumed.load_state_dict(model.state_dict())  # the model first, then the pruner
    again = _pruner(resumed)
    again.load_state_dict(pruner.state_dict())
    assert again.ranks == {"0": 4}
    assert _row(again.step(3)) == ("unchanged", 4, 4, "fixed rank 4")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("load_state_dict", "its weights were loaded (load_state_dict)"),
        ("new layer", "the layer was replaced"),
        ("new parameter", "its parameters were replaced"),
    ],
)
def test_a_record_is_dropped_when_the_layer_changed(change: str, why: str) -> None:
    # before: the next step reported rank 4 (the record) and never pruned the layer again
    model = _dense()
    dense = _state(model)
    pruner = _pruner(model)
    assert _row(pruner.step(1))[:3] == ("truncated", 100, 4)
    if change == "load_state_dict":
        model.load_state_dict(dense)
    elif change == "new layer":
        model[0] = nn.Linear(100, 100)
        model[0].load_state_dict({k[2:]: v for k, v in dense.items()})
    else:
        model[0].weight = nn.Parameter(dense["0.weight"].clone())
    report = pruner.step(2)
    reason = (
        f"fixed rank 4; rank 4 recorded at epoch 1 dropped: {why} since; rank read from the weights"
    )
    assert _row(report) == ("truncated", 100, 4, reason)
    weight = model[0].weight.detach().double()
    assert torch.allclose(weight, _best_rank4(dense["0.weight"]), atol=1e-5)  # Eckart–Young
    assert pruner.ranks == {"0": 4}  # recorded anew, on the layer as it is now
    assert _row(pruner.step(3)) == ("unchanged", 4, 4, "fixed rank 4")


def test_a_copied_or_pickled_model_does_not_reach_the_pruner() -> None:
    model = _dense()
    pruner = _pruner(model)
    pruner.step(1)
    copy.deepcopy(model).load_state_dict(_state(_dense()))  # a copy's load is not ours
    assert _row(pruner.step(2)) == ("unchanged", 4, 4, "fixed rank 4")
    import io

    buffer = io.BytesIO()
    torch.save(model, buffer)  # the hook pickles as an inert one
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.load_state_dict(_state(_dense()))
    assert _row(pruner.step(3)) == ("unchanged", 4, 4, "fixed rank 4")


# --- step numbers -------------------------------------------------------------------------------


def test_a_step_going_back_is_refused_and_a_repeat_says_why() -> None:
    # before: step(4) then step(2) returned an empty report, silently
    pruner = _pruner(_dense(), every=2)
    assert pruner.step(4).changed
    repeat = pruner.step(4)
    assert (len(repeat), repeat.changed) == (0, False)
    assert repeat.note == "Nothing done: epoch 4 was stepped already."
    expected = (
        "The 'epoch' parameter of SpectralPruner.step must be >= 4 (the last epoch stepped; "
        "steps never go back). Got 2 instead."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        pruner.step(2)
    idle = pruner.step(5)  # a non-pruning step counts too
    assert idle.note == "Nothing done: epoch 5 is not a pruning epoch (every=2: epochs 2, 4, ...)."
    with pytest.raises(ValueError, match=r"must be >= 5 .* Got 4 instead\.$"):
        pruner.step(4)
    # a resume continues from the last epoch stepped
    state = pruner.state_dict()
    assert (state["last_epoch"], state["last_step"]) == (4, 5)
    resumed = _pruner(_dense(), every=2)
    resumed.load_state_dict(state)
    with pytest.raises(ValueError, match=r"must be >= 5 .* Got 4 instead\.$"):
        resumed.step(4)
    older = {k: v for k, v in state.items() if k != "last_step"}  # a state saved before
    resumed.load_state_dict(older)
    assert resumed.step(4).note == "Nothing done: epoch 4 was stepped already."


# --- reports that change nothing say why ------------------------------------------------------


def test_a_report_that_changes_nothing_says_why() -> None:
    _, none = rmtprune.prune(nn.Sequential(nn.ReLU()))
    assert none.note == (
        "No layer to prune: the model has no weight layers (no module with a weight of 2 or "
        "more dimensions)."
    )
    _, excluded = rmtprune.prune(_dense(), select=Select(exclude="*"))
    assert excluded.note == (
        "No layer to prune: Select(include=None, exclude=('*',), min_dim=32, min_params=0) "
        "leaves none of the model's 1 weight layers."
    )
    small = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    _, floors = rmtprune.prune(small)
    assert floors.note == "No layer changed: 2 skipped; each row's reason says why."
    assert (
        "\n\nNo layer changed: 2 skipped; each row's reason says why.\n\n" in floors.to_markdown()
    )
    assert floors.to_dict()["note"] == floors.note
    _, pruned = rmtprune.prune(_dense(), criterion=FixedRank(4))
    assert pruned.note == "" and pruned.changed
    _, dry = rmtprune.prune(_dense(), criterion=FixedRank(4), dry_run=True)
    assert dry.note == "" and not dry.changed  # a dry run that would change a layer
    pruner = _pruner(_dense(), every=3)
    assert pruner.step(0).note == (
        "Nothing done: epoch 0 is not a pruning epoch (every=3: epochs 3, 6, ...)."
    )


def test_a_derived_note_follows_the_rows_of_a_copy() -> None:
    _, floors = rmtprune.prune(nn.Sequential(nn.Linear(10, 10)))
    assert floors.note == "No layer changed: 1 skipped; each row's reason says why."
    row = floors["0"]
    more = dataclasses.replace(floors, layers=(row, dataclasses.replace(row, name="1")))
    assert more.note == "No layer changed: 2 skipped; each row's reason says why."
    split = dataclasses.replace(row, action="split")
    assert dataclasses.replace(floors, layers=(split,)).note == ""
    given = rmtprune.PruneReport((), 0, 0, False, False, note="Nothing done: reasons.")
    assert dataclasses.replace(given, params_before=1).note == "Nothing done: reasons."
    _, empty = rmtprune.prune(nn.Sequential(nn.ReLU()))  # rows added to an empty report
    assert dataclasses.replace(empty, layers=(row,)).note == floors.note
