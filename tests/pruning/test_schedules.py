"""Schedules are pure functions of the epoch with closed-form values."""

from __future__ import annotations

import math

import pytest

from rmtprune.pruning import schedules


def test_linear_is_the_authors_formula() -> None:
    s = schedules.Linear(total_epochs=300)
    for e in (0, 1, 20, 150, 299, 300, 1000):
        assert s(e) == pytest.approx(max(0.0, 1.0 - e / 300))
    # SPEC section 5: a 20-epoch run with T = 300 still keeps over 93 % of the bulk.
    assert s(20) > 0.93


def test_cosine_endpoints_and_midpoint() -> None:
    s = schedules.Cosine(total_epochs=10, final=0.2)
    assert s(0) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.2 + 0.8 * 0.5)
    assert s(10) == pytest.approx(0.2)
    assert s(50) == pytest.approx(0.2)
    assert s(3) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.3)))


def test_step_constant_and_all_bulk_at_end() -> None:
    s = schedules.Step(boundaries=(10, 20), values=(1.0, 0.5, 0.0))
    assert [s(e) for e in (0, 9, 10, 19, 20, 99)] == [1.0, 1.0, 0.5, 0.5, 0.0, 0.0]
    assert schedules.Constant(0.3)(7) == 0.3
    end = schedules.AllBulkAtEnd(total_epochs=5)
    assert [end(e) for e in (0, 4, 5, 6)] == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "schedule",
    [
        schedules.Linear(12),
        schedules.Constant(0.25),
        schedules.Step((3, 6), (1.0, 0.4, 0.1)),
        schedules.Cosine(9, 0.1),
        schedules.AllBulkAtEnd(4),
    ],
)
def test_round_trip_through_dict(schedule: schedules.Schedule) -> None:
    back = schedules.schedule_from_dict(schedules.schedule_to_dict(schedule))
    assert back == schedule
    assert [back(e) for e in range(15)] == [schedule(e) for e in range(15)]


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ValueError, match="'total_epochs' parameter of Linear"):
        schedules.Linear(0)
    with pytest.raises(ValueError, match="'value' parameter of Constant"):
        schedules.Constant(1.5)
    with pytest.raises(ValueError, match="'values' parameter of Step"):
        schedules.Step((3,), (1.0,))
    with pytest.raises(ValueError, match="'boundaries' parameter of Step"):
        schedules.Step((5, 3), (1.0, 0.5, 0.0))
    with pytest.raises(ValueError, match="'epoch' parameter of Linear"):
        schedules.Linear(10)(-1)
    with pytest.raises(TypeError, match="'schedule' parameter of schedule_to_dict"):
        schedules.schedule_to_dict(lambda e: 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'name' parameter of schedule_from_dict"):
        schedules.schedule_from_dict({"name": "Exponential"})
