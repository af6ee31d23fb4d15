"""Experiment ``regression`` (paper E.3): a noisy sum of sines fitted by an MLP, normal vs pruned.

The target is ``f(x) = sin(2πx) + 0.5 sin(6πx)`` on ``[0, 2]``.  The training set is fixed
for every seed: ``n_train`` points ``x ~ U[0, 2]`` with ``y = f(x) + ε``, ``ε ~ N(0, noise²)``
(drawn from ``data_seed``); the test set is a dense grid of ``n_test`` points with the clean
``f``, so the test error measures how well the function is recovered, not the noise.  The MLP
(``FullyConnected(widths, output="identity")``, weights ``N(0, 1/n)``, biases 0) is trained
with SGD on the mean squared error (``TrainConfig(objective="mse")``).  For each seed, the
normal and the pruned arm start from the same initial weights and see the same mini-batches;
the pruned arm runs :class:`rmtprune.SpectralPruner` with the linear schedule
``Linear(schedule_epochs)`` every ``every`` epochs (only the hidden-to-hidden layers have
``min(m, n) >= 32`` and are eligible).  Training error (on the noisy training points, measured
after each epoch in evaluation mode), test error and parameter counts are recorded per epoch;
the final test errors are compared paired over seeds.

Example
-------
>>> import numpy as np
>>> from rmtprune.paper.experiments.analysis.regression import target_function
>>> target_function(np.array([0.25, 1 / 12])).round(12).tolist()
[0.5, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.regression_config import (
    PRESETS,
    RegressionConfig,
    RunRecord,
)
from rmtprune.paper.experiments.analysis.regression_figures import draw_figures
from rmtprune.paper.experiments.results import ClaimVerdict
from rmtprune.paper.models import FullyConnected, initialize
from rmtprune.paper.training import TrainConfig, Trainer, evaluate
from rmtprune.pruning.criteria import MPCriterion
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.schedules import Linear

__all__ = [
    "PRESETS",
    "RegressionConfig",
    "RegressionResult",
    "RunRecord",
    "make_data",
    "run",
    "target_function",
]

_OWNER = "regression.run"


def target_function(x: np.ndarray) -> np.ndarray:
    """``f(x) = sin(2πx) + 0.5 sin(6πx)``, the clean target.

    >>> float(target_function(np.array([0.0]))[0])
    0.0
    """
    return np.sin(2 * np.pi * x) + 0.5 * np.sin(6 * np.pi * x)


def make_data(
    config: RegressionConfig,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((x_train, y_train), (x_test, f(x_test)))`` as float32 tensors, inputs of shape (n, 1).

    >>> train, test = make_data(RegressionConfig.from_preset("smoke"))
    >>> tuple(train[0].shape), tuple(test[0].shape)
    ((300, 1), (1001, 1))
    """
    rng = np.random.default_rng(config.data_seed)
    x = rng.uniform(0.0, 2.0, config.n_train)
    y = target_function(x) + config.noise * rng.standard_normal(config.n_train)
    grid = np.linspace(0.0, 2.0, config.n_test)

    def pair(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(a, dtype=torch.float32)[:, None], torch.tensor(b, dtype=torch.float32)

    return pair(x, y), pair(grid, target_function(grid))


def _train(
    config: RegressionConfig, seed: int, arm: str, data: tuple[Any, Any], progress: bool
) -> RunRecord:
    train, test = data
    model = FullyConnected(list(config.widths), activation=config.activation, output="identity")
    initialize(model, "normal", generator=seed)
    pruner = None
    if arm == "pruned":
        pruner = SpectralPruner(
            model,
            schedule=Linear(config.schedule_epochs),
            every=config.every,
            criterion=MPCriterion(min_rank=config.min_rank),
        )
    train_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        l1=config.l1,
        l2=config.l2,
        lr_decay=config.lr_decay,
        lr_decay_epochs=(config.epochs // 2, (3 * config.epochs) // 4),
        seed=seed,
        objective="mse",
        num_threads=config.num_threads,
    )
    train_mse: list[float] = []

    def record(trainer: Trainer, _: Any) -> None:
        train_mse.append(evaluate(trainer.model, train, objective="mse").loss)

    trainer = Trainer(
        model, train, test, train_config, pruner=pruner, progress=progress, on_epoch_end=record
    )
    history = trainer.fit()
    with torch.no_grad():
        prediction = trainer.model.eval()(test[0]).reshape(-1).tolist()
    return RunRecord(
        arm,
        seed,
        tuple(train_mse),
        tuple(history.column("test_loss")),
        tuple(history.column("n_params")),
        tuple(prediction),
    )


@dataclass(frozen=True)
class RegressionResult:
    """Everything the regression experiment measured (see :func:`run`).

    ``test`` and ``train`` compare the final errors paired over seeds (``a`` = pruned,
    ``b`` = normal, so ``mean`` is pruned − normal); ``target_variance`` is the variance
    of ``f`` on the test grid (the test error of the best constant predictor).
    """

    preset: str
    config: RegressionConfig
    runs: tuple[RunRecord, ...]
    test: common.PairedComparison
    train: common.PairedComparison
    target_variance: float
    verdicts: tuple[ClaimVerdict, ...]
    files: tuple[str, ...]
    wall_time: float

    def final(self, arm: str, key: str = "test_mse") -> np.ndarray:
        """Last-epoch values of ``key`` of every seed of ``arm`` (seed order)."""
        return np.array([getattr(r, key)[-1] for r in self.runs if r.arm == arm])

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly ``dict`` (the content of ``metrics.json``)."""
        return {
            "experiment": "regression",
            "preset": self.preset,
            "final": {
                arm: {k: self.final(arm, k).tolist() for k in ("train_mse", "test_mse", "n_params")}
                for arm in ("normal", "pruned")
            },
            "test": self.test.to_dict(),
            "train": self.train.to_dict(),
            "target_variance": self.target_variance,
            "runs": [
                {k: v for k, v in r.to_dict().items() if k != "prediction"} for r in self.runs
            ],
            "verdicts": [v.to_dict() for v in self.verdicts],
            "files": list(self.files),
            "wall_time": self.wall_time,
        }


def _verdicts(result_parts: dict[str, Any]) -> list[ClaimVerdict]:
    test: common.PairedComparison = result_parts["test"]
    params: dict[str, float] = result_parts["params"]
    variance = result_parts["target_variance"]
    p = test.p_value
    if math.isnan(p) or p >= 0.05:
        helps: bool | None = None
    else:
        helps = test.mean < 0
    reduction = 1 - params["pruned"] / params["normal"]
    return [
        ClaimVerdict.from_holds(
            "helps",
            "pruning helps the regression (final test MSE against the clean function)",
            helps,
            f"Test MSE normal {test.mean_b:.4g}, pruned {test.mean_a:.4g}; paired difference "
            f"(pruned − normal) {test.mean:+.4g} ± {test.std:.2g} over "
            f"{test.n} seeds, pruned lower on {test.losses}/{test.n}, paired t-test p = "
            f"{p:.3g} (inconclusive unless p < 0.05). A constant predictor scores {variance:.4g}.",
        ),
        ClaimVerdict.from_holds(
            "removes-parameters",
            "pruning removes parameters",
            reduction > 0,
            f"Final parameters: normal {params['normal']:.0f}, pruned {params['pruned']:.0f} "
            f"(mean over seeds; {reduction:.1%} removed).",
        ),
    ]


def _final(runs: Sequence[RunRecord], arm: str, key: str) -> list[float]:
    return [float(getattr(r, key)[-1]) for r in runs if r.arm == arm]


def _write_tables(folder: Path, runs: Sequence[RunRecord]) -> None:
    rows = [
        {
            "arm": r.arm,
            "seed": r.seed,
            "epoch": e + 1,
            "train_mse": r.train_mse[e],
            "test_mse": r.test_mse[e],
            "n_params": r.n_params[e],
        }
        for r in runs
        for e in range(len(r.test_mse))
    ]
    common.write_csv(folder / "curves.csv", rows)
    common.write_csv(
        folder / "final.csv",
        [
            {
                "arm": r.arm,
                "seed": r.seed,
                "train_mse": r.train_mse[-1],
                "test_mse": r.test_mse[-1],
                "n_params": r.n_params[-1],
            }
            for r in runs
        ],
    )


def _section(
    config: RegressionConfig,
    runs: Sequence[RunRecord],
    params: dict[str, float],
    figures: Sequence[str],
    verdicts: Sequence[ClaimVerdict],
) -> str:
    table = common.markdown_table(
        ["arm", "train MSE (mean ± std)", "test MSE (mean ± std)", "parameters"],
        [
            [
                arm,
                "{:.4g} ± {:.2g}".format(*common.mean_std(_final(runs, arm, "train_mse"))),
                "{:.4g} ± {:.2g}".format(*common.mean_std(_final(runs, arm, "test_mse"))),
                params[arm],
            ]
            for arm in ("normal", "pruned")
        ],
    )
    text = [
        "## regression",
        "",
        f"MLP {list(config.widths)} ({config.activation}, N(0, 1/n) weights, zero biases) fitting "
        f"f(x) = sin(2πx) + 0.5 sin(6πx) on [0, 2] from {config.n_train} fixed noisy points "
        f"(noise σ = {config.noise:g}); test MSE on a {config.n_test}-point grid against the clean "
        f"f. SGD (lr {config.lr:g}, momentum 0.9, batch {config.batch_size}, ×{config.lr_decay:g} "
        f"at 50 % and 75 % of {config.epochs} epochs), MSE + {config.l1:g}·Σ|θ| + "
        f"{config.l2:g}·Σθ². Pruned arm: SpectralPruner every {config.every} epochs with "
        f"Linear(T = {config.schedule_epochs:g}); same initial weights and batches per seed; "
        f"{config.seeds} seeds.",
        "",
        table,
        "",
        *(f"![{f}]({f})" for f in figures),
        "",
        *(v.line() for v in verdicts),
        "",
    ]
    return "\n".join(text)


def run(
    preset: str = "small",
    *,
    seeds: int | None = None,
    out: str | Path,
    data_dir: Any = None,
    progress: bool = True,
    config: RegressionConfig | None = None,
    resume: bool = True,
) -> RegressionResult:
    """Run the regression experiment and write its files into ``out``.

    Parameters
    ----------
    preset : {"smoke", "small", "paper"}
        Scale (:data:`PRESETS`).
    seeds : int, optional
        Number of seeds, overriding the preset.
    out : path
        Run directory (created): ``config.json``, ``environment.json``, ``metrics.json``,
        ``curves.csv``, ``final.csv``, ``regression_curves.png``, ``regression_fit.png``,
        ``report_section.md`` and ``units/seed-<s>-<arm>.json`` (each trained arm, stored
        as it finishes: a later call loads it; see ``common.open_run``).
    data_dir : ignored
        Accepted for the common signature; the data are synthetic.
    progress : bool
        Progress lines on stderr.
    config : RegressionConfig, optional
        Use this configuration instead of the preset's.
    resume : bool
        Continue a run of the same configuration in ``out``; False refuses it.

    Returns
    -------
    RegressionResult

    Examples
    --------
    >>> result = run("smoke", out="/tmp/regression-smoke", progress=False)  # doctest: +SKIP
    >>> result.test.mean  # doctest: +SKIP
    """
    del data_dir  # synthetic data
    return common.run_analysis(
        "regression",
        _OWNER,
        (RegressionConfig, RegressionConfig.from_preset),
        _units,
        _report,
        preset=preset,
        seeds=seeds,
        config=config,
        out=out,
        data_dir=None,
        progress=progress,
        resume=resume,
        target="sin(2πx) + 0.5 sin(6πx) on [0, 2]",
    )


_Data = tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _units(run: common.AnalysisContext[RegressionConfig]) -> tuple[_Data, list[RunRecord]]:
    """The data and every trained arm (``units/seed-<s>-<arm>.json``, loaded when stored)."""
    config = run.config
    data = make_data(config)
    runs: list[RunRecord] = []
    for seed, arm in ((s, a) for s in range(config.seeds) for a in ("normal", "pruned")):
        common.say(run.progress, f"[regression] seed {seed} {arm}")
        fit = partial(_train, config, seed, arm, data, run.progress)
        runs.append(
            run.store.get(f"seed-{seed}-{arm}", fit, RunRecord.to_dict, RunRecord.from_dict)
        )
    return data, runs


def _report(
    run: common.AnalysisContext[RegressionConfig], measured: tuple[_Data, list[RunRecord]]
) -> RegressionResult:
    """Comparisons, verdicts, tables, figures and ``report_section.md``; the result."""
    config, folder = run.config, run.folder
    data, runs = measured
    test = common.paired_comparison(
        _final(runs, "pruned", "test_mse"), _final(runs, "normal", "test_mse"), metric="test_mse"
    )
    train = common.paired_comparison(
        _final(runs, "pruned", "train_mse"),
        _final(runs, "normal", "train_mse"),
        metric="train_mse",
    )
    variance = float(data[1][1].double().var(unbiased=False))
    params = {arm: float(np.mean(_final(runs, arm, "n_params"))) for arm in ("normal", "pruned")}
    verdicts = _verdicts({"test": test, "params": params, "target_variance": variance})
    _write_tables(folder, runs)
    arrays = tuple((x.numpy(), y.numpy()) for x, y in data)
    figures = draw_figures(folder, config, runs, arrays)
    (folder / "report_section.md").write_text(_section(config, runs, params, figures, verdicts))
    files = ("curves.csv", "final.csv", *figures, "report_section.md")
    return RegressionResult(
        run.preset,
        config,
        tuple(runs),
        test,
        train,
        variance,
        tuple(verdicts),
        files,
        run.elapsed(),
    )
