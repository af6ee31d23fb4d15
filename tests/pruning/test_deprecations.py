"""The older keywords, ``calibrated_prune`` and ``rebuild_optimizer``: each warns, naming what
to pass instead, and gives exactly the result of the new spelling (and a result the keyword
really changes).

This is the one test file that uses them; pyproject.toml turns their warnings into errors
everywhere else, so a leftover use in the project fails its tests.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune import Calibrated, Energy, MPCriterion, Select, SpectralPruner, schedules
from rmtprune.integrations._common import make_pruner
from rmtprune.pruning.calibrated_prune import calibrated_prune
from rmtprune.pruning.optim import rebuild_optimizer, update_optimizer_after_step

MP = "criterion=rmtprune.MPCriterion({}=...)"
CALIBRATED = (
    "criterion=rmtprune.Calibrated(calibration, max_output_change) in place of "
    "calibration= and max_output_change= (a criterion= given becomes its base=)"
)
SELECT = "select=rmtprune.Select({}=...)"

# keyword, value, the same as an object, where the message points (a value unlike the default)
PRUNE_KEYWORDS = [
    ("bulk_keep", 0.5, {"criterion": MPCriterion(bulk_keep=0.5)}, MP),
    ("min_rank", 30, {"criterion": MPCriterion(min_rank=30)}, MP),
    ("alpha", 0.2, {"criterion": MPCriterion(alpha=0.2)}, MP),
    ("beta", 0.05, {"criterion": MPCriterion(beta=0.05)}, MP),
    ("fit_cutoff", 1e-9, {"criterion": MPCriterion(fit_cutoff=1e-9)}, MP),
    ("layers", ["0"], {"select": Select(include=["0"])}, "select=rmtprune.Select(include=...)"),
    ("min_dim", 5, {"select": Select(min_dim=5)}, SELECT),
    ("min_params", 10_000, {"select": Select(min_params=10_000)}, SELECT),
]
ANALYZE_KEYWORDS = [k for k in PRUNE_KEYWORDS if k[0] not in ("bulk_keep", "min_rank")]


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(160, 120), nn.ReLU(), nn.Linear(120, 80), nn.Linear(80, 10))
    with torch.no_grad():
        u, v = torch.randn(120, 3), torch.randn(3, 160)
        model[0].weight += 0.4 * u @ v / 160**0.5
    return model


def _warns(owner: str, name: str, instead: str) -> Any:
    message = f"{owner}({name}=...) is deprecated; pass {instead.format(name)}."
    return pytest.warns(DeprecationWarning, match=f"^{re.escape(message)}$")


def _outputs(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.linspace(-1, 1, 3 * 160).reshape(3, 160))


@pytest.mark.parametrize(("name", "value", "new", "instead"), PRUNE_KEYWORDS)
def test_each_older_keyword_of_prune_warns_and_equals_the_object(
    name: str, value: Any, new: dict[str, Any], instead: str
) -> None:
    with _warns("prune", name, instead) as record:
        old_model, old = rmtprune.prune(_model(), **{name: value})
    assert len(record) == 1 and record[0].filename == __file__  # points at the caller
    new_model, want = rmtprune.prune(_model(), **new)
    assert old.to_json() == want.to_json()
    torch.testing.assert_close(_outputs(old_model), _outputs(new_model), rtol=0, atol=0)
    assert old.to_json() != rmtprune.prune(_model())[1].to_json()  # the keyword did act


@pytest.mark.parametrize(("name", "value", "new", "instead"), ANALYZE_KEYWORDS)
def test_each_older_keyword_of_analyze_warns_and_equals_the_object(
    name: str, value: Any, new: dict[str, Any], instead: str
) -> None:
    with _warns("analyze", name, instead) as record:
        old = rmtprune.analyze(_model(), **{name: value})
    assert len(record) == 1 and record[0].filename == __file__
    assert old.to_json() == rmtprune.analyze(_model(), **new).to_json()
    assert old.to_json() != rmtprune.analyze(_model()).to_json()


@pytest.mark.parametrize(("name", "value", "new", "instead"), PRUNE_KEYWORDS[1:])
def test_each_older_keyword_of_spectral_pruner_warns_and_equals_the_object(
    name: str, value: Any, new: dict[str, Any], instead: str
) -> None:
    schedule = schedules.Constant(0.25)
    with _warns("SpectralPruner", name, instead) as record:
        old = SpectralPruner(_model(), schedule=schedule, every=1, **{name: value})
    assert len(record) == 1 and record[0].filename == __file__
    want = SpectralPruner(_model(), schedule=schedule, every=1, **new)
    assert (old.criterion, old.select) == (want.criterion, want.select)
    assert old.step(1).to_json() == want.step(1).to_json()
    torch.testing.assert_close(_outputs(old.model), _outputs(want.model), rtol=0, atol=0)


def test_a_callbacks_older_keyword_warns_at_the_callers_line() -> None:
    # the options pass through integrations/_common.py and SpectralPruner: two package frames
    with _warns("SpectralPruner", "min_rank", MP) as record:
        pruner = make_pruner(_model(), {"every": 1, "min_rank": 8}, "callback")
    assert record[0].filename == __file__
    assert pruner.criterion == MPCriterion(min_rank=8)


def test_several_older_keywords_warn_once_each() -> None:
    with pytest.warns(DeprecationWarning) as record:
        _, old = rmtprune.prune(_model(), bulk_keep=0.3, min_rank=20, min_dim=5, layers="[03]")
    assert sorted(str(w.message).split("(")[1].split("=")[0] for w in record) == [
        "bulk_keep",
        "layers",
        "min_dim",
        "min_rank",
    ]
    _, new = rmtprune.prune(
        _model(),
        criterion=MPCriterion(bulk_keep=0.3, min_rank=20),
        select=Select(include="[03]", min_dim=5),
    )
    assert old.to_json() == new.to_json() and [r.name for r in old] == ["0", "3"]


def test_min_rank_of_a_calibrated_prune_points_at_calibrated() -> None:
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(32, 160, generator=g) for _ in range(4)]
    instead = (
        "criterion=rmtprune.Calibrated(calibration, max_output_change, min_rank=...) "
        "in place of calibration= and max_output_change="
    )
    only = Select(include="0")
    with pytest.warns(DeprecationWarning) as record:
        _, old = rmtprune.prune(
            _model(), select=only, calibration=batches, max_output_change=0.2, min_rank=40
        )
    messages = [str(w.message) for w in record]
    assert messages == [
        f"prune(min_rank=...) is deprecated; pass {instead}.",
        f"prune(max_output_change=...) is deprecated; pass {CALIBRATED}.",
    ]
    floor = Calibrated(batches, 0.2, min_rank=40)
    _, new = rmtprune.prune(_model(), criterion=floor, select=only)
    assert old.to_json() == new.to_json() and old["0"].rank_after >= 40


def _calibration(seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 160, generator=g) for _ in range(4)]


def test_max_output_change_of_prune_warns_and_equals_the_calibrated_criterion() -> None:
    batches = _calibration()
    with _warns("prune", "max_output_change", CALIBRATED) as record:
        old_model, old = rmtprune.prune(_model(), calibration=batches, max_output_change=0.5)
    assert len(record) == 1 and record[0].filename == __file__
    new_model, want = rmtprune.prune(_model(), criterion=Calibrated(batches, 0.5))
    assert old.to_json() == want.to_json() and old.max_output_change == 0.5
    torch.testing.assert_close(_outputs(old_model), _outputs(new_model), rtol=0, atol=0)
    _, measured = rmtprune.prune(_model(), calibration=batches)  # calibration alone: no bound
    assert measured.max_output_change is None and old.to_json() != measured.to_json()
    assert old.params_after < old.params_before  # the keyword did act


def test_a_criterion_with_max_output_change_is_the_base_of_calibrated() -> None:
    batches, spectral = _calibration(), MPCriterion(min_rank=30)
    with _warns("prune", "max_output_change", CALIBRATED):
        old_model, old = rmtprune.prune(
            _model(), criterion=spectral, calibration=batches, max_output_change=1.0
        )
    guard = Calibrated(batches, 1.0, base=spectral)
    new_model, want = rmtprune.prune(_model(), criterion=guard)
    assert old.to_json() == want.to_json()
    torch.testing.assert_close(_outputs(old_model), _outputs(new_model), rtol=0, atol=0)
    assert old["0"].rank_after >= 30 and old.params_after < old.params_before


def test_calibrated_prune_warns_and_equals_prune_with_calibrated() -> None:
    batches, base = _calibration(), {"0": 20, "2": 12}
    message = (
        "calibrated_prune(model, calibration, max_output_change, ...) is deprecated; pass "
        "rmtprune.prune(model, criterion=rmtprune.Calibrated(calibration, max_output_change, "
        "whiten=..., holdout=..., base=..., min_rank=...), select=rmtprune.Select(include="
        "layers, min_dim=..., min_params=...), split=True)."
    )
    options: dict[str, Any] = {"whiten": True, "holdout": 0.25, "base": base, "min_rank": 16}
    with pytest.warns(DeprecationWarning, match=f"^{re.escape(message)}$") as record:
        old_model, old = calibrated_prune(
            _model(), batches, 0.7, layers="[02]", min_dim=5, min_params=100, **options
        )
    assert len(record) == 1 and record[0].filename == __file__
    select = Select(include="[02]", min_dim=5, min_params=100)
    new_model, want = rmtprune.prune(
        _model(), criterion=Calibrated(batches, 0.7, **options), select=select, split=True
    )
    assert old.to_json() == want.to_json() and [r.name for r in old] == ["0", "2"]
    torch.testing.assert_close(_outputs(old_model), _outputs(new_model), rtol=0, atol=0)
    assert (old["0"].rank_after, old["2"].rank_after) == (20, 16)  # base and min_rank act
    assert old.params_after < old.params_before


def test_max_output_change_errors_still_name_what_is_missing() -> None:
    with pytest.raises(ValueError, match="'max_output_change' parameter of prune needs"):
        rmtprune.prune(_model(), max_output_change=0.2)
    with pytest.raises(ValueError, match="'calibration' parameter of prune must hold at least"):
        rmtprune.prune(_model(), calibration=[torch.randn(4, 160)], max_output_change=0.1)
    with pytest.raises(TypeError, match="Calibrated criterion already"):
        guard = Calibrated(_calibration(), 0.1)
        rmtprune.prune(_model(), criterion=guard, calibration=_calibration(), max_output_change=0.1)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="needs calibration"):
        calibrated_prune(_model(), None, 0.2)


def test_an_older_keyword_with_its_object_is_still_an_error_naming_both() -> None:
    model = _model()
    with pytest.raises(ValueError, match="'bulk_keep' parameter of prune cannot be combined"):
        rmtprune.prune(model, criterion=Energy(), bulk_keep=0.5)
    with pytest.raises(ValueError, match="'min_dim' parameter of analyze cannot be combined"):
        rmtprune.analyze(model, select=Select(), min_dim=4)
    with pytest.raises(ValueError, match="'min_rank' parameter of SpectralPruner cannot be"):
        SpectralPruner(model, criterion=MPCriterion(), every=1, min_rank=4)


def test_bad_older_keywords_still_name_the_function_and_the_parameter() -> None:
    model = _model()
    with pytest.raises(TypeError, match="The 'layers' parameter of analyze must be a layer name"):
        rmtprune.analyze(model, layers=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'alpha' parameter of analyze"):
        rmtprune.analyze(model, alpha=0.7)
    with pytest.raises(ValueError, match="'beta' parameter of prune"):
        rmtprune.prune(model, beta=1.5)
    with pytest.raises(ValueError, match="'bulk_keep' parameter of prune"):
        rmtprune.prune(model, bulk_keep=-0.1)
    with pytest.raises(ValueError, match="'min_rank' parameter of SpectralPruner"):
        SpectralPruner(model, every=1, min_rank=0)


def test_rebuild_optimizer_warns_and_equals_update_optimizer_after_step() -> None:
    def run(update: Any) -> tuple[list[list[tuple[int, ...]]], torch.Tensor]:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        pruner = SpectralPruner(model, criterion=MPCriterion(min_rank=30), every=1)
        assert pruner.step(1).changed
        assert update(opt, model) is opt
        model(torch.linspace(-1, 1, 3 * 160).reshape(3, 160)).square().sum().backward()
        opt.step()
        shapes = [[tuple(p.shape) for p in g["params"]] for g in opt.param_groups]
        return shapes, _outputs(model)

    message = "rebuild_optimizer(optimizer, model) is deprecated; pass pruner.step(epoch, "
    with pytest.warns(DeprecationWarning, match=re.escape(message)) as record:
        old = run(rebuild_optimizer)
    assert record[0].filename == __file__
    new = run(update_optimizer_after_step)
    split = [(30, 160), (120, 30), (120,), (30, 120), (80, 30), (80,), (10, 80), (10,)]
    assert old[0] == new[0] == [split]
    torch.testing.assert_close(old[1], new[1], rtol=0, atol=0)
    assert rmtprune.rebuild_optimizer is rebuild_optimizer  # still public, deprecated


def test_the_test_suite_turns_a_leftover_older_keyword_into_an_error() -> None:
    # pyproject.toml [tool.pytest.ini_options] filterwarnings: what makes a leftover use fail
    with pytest.raises(DeprecationWarning, match="is deprecated; pass"):
        rmtprune.prune(_model(), bulk_keep=0.5)
    with pytest.raises(DeprecationWarning, match="is deprecated; pass"):
        rebuild_optimizer(torch.optim.SGD(_model().parameters(), lr=0.1), _model())
    with pytest.raises(DeprecationWarning, match="is deprecated; pass"):
        rmtprune.prune(_model(), calibration=_calibration(), max_output_change=0.2)
    with pytest.raises(DeprecationWarning, match="is deprecated; pass"):
        calibrated_prune(_model(), _calibration(), 0.2)
