"""Property tests of the schedules: bounded in [0, 1], monotone, closed forms, state round trip."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from rmtprune.pruning import schedules

EPOCHS = st.integers(min_value=0, max_value=5000)
FRACTIONS = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
TOTALS = st.floats(min_value=1e-3, max_value=1e4, allow_nan=False)


@st.composite
def steps(draw: st.DrawFn, decreasing: bool) -> schedules.Step:
    bounds = sorted(draw(st.sets(st.integers(1, 1000), max_size=6)))
    values = draw(st.lists(FRACTIONS, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    if decreasing:
        values = sorted(values, reverse=True)
    return schedules.Step(boundaries=tuple(bounds), values=tuple(values))


DECREASING = st.one_of(
    st.builds(schedules.Linear, TOTALS),
    st.builds(schedules.Cosine, TOTALS, FRACTIONS),
    st.builds(schedules.AllBulkAtEnd, st.integers(1, 1000)),
    st.builds(schedules.Constant, FRACTIONS),
    steps(decreasing=True),
)
ANY = st.one_of(DECREASING, steps(decreasing=False))


@settings(max_examples=60, deadline=None)
@given(ANY, EPOCHS)
def test_every_schedule_is_a_fraction(schedule: schedules.Schedule, epoch: int) -> None:
    value = schedule(epoch)
    assert isinstance(value, float) and 0.0 <= value <= 1.0


@settings(max_examples=60, deadline=None)
@given(DECREASING, EPOCHS, EPOCHS)
def test_decaying_schedules_never_increase(schedule: schedules.Schedule, a: int, b: int) -> None:
    early, late = min(a, b), max(a, b)
    assert schedule(late) <= schedule(early) + 1e-12


@settings(max_examples=60, deadline=None)
@given(TOTALS, EPOCHS)
def test_linear_and_cosine_closed_forms(total: float, epoch: int) -> None:
    assert schedules.Linear(total)(epoch) == max(0.0, 1.0 - epoch / total)
    assert schedules.Linear(total)(0) == 1.0
    t = min(1.0, epoch / total)
    expected = 0.5 * (1.0 + math.cos(math.pi * t))
    assert math.isclose(schedules.Cosine(total, 0.0)(epoch), expected, abs_tol=1e-15)


@settings(max_examples=60, deadline=None)
@given(ANY, st.lists(EPOCHS, min_size=1, max_size=10))
def test_state_round_trip_through_json(schedule: schedules.Schedule, epochs: list[int]) -> None:
    state = json.loads(json.dumps(schedules.schedule_to_dict(schedule)))
    restored = schedules.schedule_from_dict(state)
    assert restored == schedule
    assert [restored(e) for e in epochs] == [schedule(e) for e in epochs]
