"""The one registry of the experiments: the paper's nine and the ablation.

:data:`EXPERIMENTS` maps each id that :func:`rmtprune.paper.experiments.reproduce` and
``rmtprune reproduce`` accept to its :class:`rmtprune.paper.experiments.protocol.Experiment`:
the five classification experiments of docs/method.md section 6
(:mod:`rmtprune.paper.experiments.classification.experiments`, with their presets) first,
then the four analysis experiments (:mod:`rmtprune.paper.experiments.analysis.experiments`),
then the regularisation × pruning ablation
(:mod:`rmtprune.paper.experiments.ablation.experiment`).
Each has an id, a section, a title, its presets and ``reproduce(...)``, which returns an
:class:`rmtprune.paper.experiments.protocol.ExperimentResult`.

Example
-------
>>> from rmtprune.paper.experiments import get_config, list_experiments
>>> list_experiments()
('fc-mnist', 'fc-fashion', 'cnn-mnist', 'cnn-fashion', 'fc-cifar10', 'theory', 'init', 'regression', 'landscape', 'ablation')
>>> get_experiment("landscape").section
'Section 3.2.1'
>>> get_config("cnn-mnist", "paper").conv_fit_cutoff
0.6
"""  # noqa: E501

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from rmtprune._util.validation import param_error
from rmtprune.paper.experiments.ablation.experiment import ABLATION_EXPERIMENTS
from rmtprune.paper.experiments.analysis.experiments import ANALYSIS_EXPERIMENTS
from rmtprune.paper.experiments.classification.experiments import (
    CLASSIFICATION_EXPERIMENTS,
    get_config,
)
from rmtprune.paper.experiments.protocol import Experiment

__all__ = [
    "EXPERIMENTS",
    "all_experiments",
    "get_config",
    "get_experiment",
    "list_experiments",
]

EXPERIMENTS: Mapping[str, Experiment] = MappingProxyType(
    {**CLASSIFICATION_EXPERIMENTS, **ANALYSIS_EXPERIMENTS, **ABLATION_EXPERIMENTS}
)
"""Every experiment by id: five classification, four analysis experiments, the ablation."""


def list_experiments() -> tuple[str, ...]:
    """Ids of the experiments :func:`rmtprune.paper.experiments.reproduce` runs (all ten).

    Examples
    --------
    >>> len(list_experiments()), "fc-cifar10" in list_experiments(), "theory" in list_experiments()
    (10, True, True)
    """
    return tuple(EXPERIMENTS)


def all_experiments() -> dict[str, str]:
    """Every id :func:`rmtprune.paper.experiments.reproduce` accepts, with a one-line description.

    Examples
    --------
    >>> all_experiments()["fc-mnist"][:10]
    'SPEC 3.2.1'
    """
    return {key: e.description for key, e in EXPERIMENTS.items()}


def get_experiment(experiment_id: str) -> Experiment:
    """The experiment called ``experiment_id``.

    Examples
    --------
    >>> get_experiment("fc-mnist").title[:15]
    'Fully connected'
    """
    if experiment_id not in EXPERIMENTS:
        expected = f"one of {list(EXPERIMENTS)}"
        raise param_error("experiment_id", "get_experiment", expected, experiment_id)
    return EXPERIMENTS[experiment_id]
