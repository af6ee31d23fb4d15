"""Pruning schedules (``rmtprune.schedules``): see :mod:`rmtprune.pruning.schedules`."""

from rmtprune.pruning.schedules import (
    AllBulkAtEnd,
    Constant,
    Cosine,
    Linear,
    Schedule,
    Step,
    schedule_from_dict,
    schedule_to_dict,
)

__all__ = [
    "AllBulkAtEnd",
    "Constant",
    "Cosine",
    "Linear",
    "Schedule",
    "Step",
    "schedule_from_dict",
    "schedule_to_dict",
]
