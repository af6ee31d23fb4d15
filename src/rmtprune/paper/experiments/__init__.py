"""Reproductions of the paper's classification experiments (docs/method.md sections 5 and 6).

``reproduce("fc-fashion", preset="small")`` trains a normal and a pruned arm per
seed from identical initial weights, prunes the trained normal network after
training (MP one-shot, global magnitude and SVD-energy baselines at the same
parameter budget), and writes a run directory with the resolved config, the
environment, metrics (JSON and CSV), figures and a report that states what the
numbers say about each claim of the paper.  ``run_demo()`` is the short
Fashion-MNIST comparison behind ``rmtprune demo``.

Example
-------
>>> from rmtprune.paper.experiments import get_config, list_experiments
>>> list_experiments()[:2]
('fc-mnist', 'fc-fashion')
>>> get_config("cnn-fashion", "smoke").architecture
'cnn'
"""

from __future__ import annotations

from rmtprune.paper.experiments.classification.baselines import (
    METHODS,
    EnergyChoice,
    EvalPoint,
    MagnitudePruned,
    PostTrainingResult,
    magnitude_prune,
    svd_energy_choice,
    svd_energy_prune,
)
from rmtprune.paper.experiments.classification.demo import DEMO_CONFIG, run_demo
from rmtprune.paper.experiments.classification.experiments import ClassificationExperiment
from rmtprune.paper.experiments.classification.run import environment, render_run, run_experiment
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.experiments.protocol import Experiment, ExperimentResult
from rmtprune.paper.experiments.registry import (
    EXPERIMENTS,
    all_experiments,
    get_config,
    get_experiment,
    list_experiments,
)
from rmtprune.paper.experiments.results import (
    ArmResult,
    ClaimVerdict,
    RunResult,
    SeedResult,
    SummaryRow,
)
from rmtprune.paper.experiments.runner import reproduce
from rmtprune.paper.experiments.stats import PairedComparison

__all__ = [
    "DEMO_CONFIG",
    "EXPERIMENTS",
    "METHODS",
    "ArmResult",
    "ClaimVerdict",
    "ClassificationExperiment",
    "EnergyChoice",
    "EvalPoint",
    "Experiment",
    "ExperimentConfig",
    "ExperimentResult",
    "MagnitudePruned",
    "PairedComparison",
    "PostTrainingResult",
    "RunResult",
    "SeedResult",
    "SummaryRow",
    "all_experiments",
    "environment",
    "get_config",
    "get_experiment",
    "list_experiments",
    "magnitude_prune",
    "render_run",
    "reproduce",
    "run_demo",
    "run_experiment",
    "svd_energy_choice",
    "svd_energy_prune",
]
