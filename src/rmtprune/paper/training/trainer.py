"""Deterministic training loop with optional pruning steps and a resumable training state.

One epoch ``e`` (1-based) is: set the learning rate ``TrainConfig.learning_rate(e)``;
one pass over the shuffled training set with SGD on ``NLL + l1·Σ|θ| + l2·Σθ²``;
then, if a pruner is given, ``pruner.step(e)`` (after training epoch ``e``,
*before* evaluation, so the test metrics and the parameter count of epoch
``e`` are those of the pruned model) and a rebuilt optimizer if the report
says the model changed; then evaluation on the test set; then the checkpoint.

Runs are reproducible on the CPU: the same seed and the same number of
threads give bitwise-identical weights and metrics (another thread count
changes the order of floating-point sums, hence the last bits, and over many
epochs the numbers; pin it with ``num_threads`` or ``OMP_NUM_THREADS``).
``torch.manual_seed(seed)`` (dropout), a dedicated
shuffling generator, Python's and NumPy's generators are seeded at the start,
and deterministic algorithms are switched on for the duration of
:meth:`Trainer.fit`.  With ``run_dir`` set, a run stopped at any point and
started again with ``resume=True`` ends with the same weights and metrics as
one never interrupted (only the wall times differ).

Example
-------
>>> import torch
>>> from torch.utils.data import TensorDataset
>>> from rmtprune.paper.models import FullyConnected
>>> from rmtprune.paper.training import TrainConfig, Trainer
>>> x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
>>> data = TensorDataset(x, (x[:, 0] > 0).long())
>>> model = FullyConnected([2, 16, 2])
>>> config = TrainConfig(epochs=10, batch_size=32)
>>> history = Trainer(model, data, data, config, progress=False).fit()
>>> history[-1].test_accuracy > 0.9
True
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._util.progress import open_bar, resolve, say
from rmtprune.factorize.params import count_parameters
from rmtprune.paper.training import state as training_state
from rmtprune.paper.training.config import RESUMABLE_CHANGES, TrainConfig
from rmtprune.paper.training.history import EpochRecord, History
from rmtprune.paper.training.loss import (
    Evaluation,
    add_regularization_grad,
    as_tensors,
    data_loss,
    evaluate,
)
from rmtprune.pruning.optim import update_optimizer_after_step

__all__ = ["Trainer"]


@contextlib.contextmanager
def _runtime(config: TrainConfig) -> Iterator[None]:
    """Thread count and deterministic algorithms for the duration of a fit."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class Trainer:
    """Train ``model`` in place with SGD, optional pruning steps and checkpoints.

    Parameters
    ----------
    model : torch.nn.Module
        Model returning log-probabilities (``objective="nll"``) or predictions
        (``"mse"``); trained in place and moved to ``config.device``.  When
        resuming, pass the freshly built *base* model: its layer structure and
        weights are restored from the checkpoint.
    train_data, test_data : TensorDataset or (inputs, targets)
        In-memory data.
    config : TrainConfig
        Hyper-parameters.
    pruner : object or None
        Duck-typed pruner with ``model`` (must be ``model``), ``step(epoch)``
        returning a report with ``changed`` and ``to_dict()``, and
        ``state_dict()`` / ``load_state_dict(state)``.
    run_dir : path or None
        Where the checkpoint (``checkpoint.pt``), ``history.json`` and
        ``history.csv`` are written after each epoch; None writes nothing.
    resume : bool
        Continue from ``run_dir``'s checkpoint if there is one (else start
        afresh).  The configuration must match the checkpoint's except for
        ``epochs``, ``device``, ``num_threads`` and ``eval_batch_size``.
    progress : bool
        Show a progress line on stderr (only when it is a terminal).
    on_epoch_end : callable or None
        ``on_epoch_end(trainer, record)``, called after each epoch's checkpoint.
    update_optimizer : callable or None
        ``update_optimizer(optimizer, model) -> optimizer`` used after a
        pruning step changed the model; default
        :func:`rmtprune.pruning.optim.update_optimizer_after_step`.

    Examples
    --------
    >>> x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    >>> data = (x, (x.sum(1) > 0).long())
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LogSoftmax(dim=1))
    >>> len(Trainer(net, data, data, TrainConfig(epochs=2), progress=False).fit())
    2
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        test_data: Any,
        config: TrainConfig,
        *,
        pruner: Any = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
        on_epoch_end: Callable[[Trainer, EpochRecord], None] | None = None,
        update_optimizer: Callable[[torch.optim.Optimizer, nn.Module], torch.optim.Optimizer]
        | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"The 'model' parameter of Trainer must be a torch.nn.Module. "
                f"Got {type(model).__name__} instead."
            )
        if not isinstance(config, TrainConfig):
            raise TypeError(
                f"The 'config' parameter of Trainer must be a TrainConfig. "
                f"Got {type(config).__name__} instead."
            )
        if pruner is not None and getattr(pruner, "model", model) is not model:
            raise ValueError("The 'pruner' parameter of Trainer must prune this very model.")
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        x, y = as_tensors(train_data, "train_data", "Trainer")
        self._train = (x.to(self.device), y.to(self.device))
        x, y = as_tensors(test_data, "test_data", "Trainer")
        self._test = (x.to(self.device), y.to(self.device))
        self.pruner = pruner
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.progress = progress
        self.on_epoch_end = on_epoch_end
        self._rebuild = update_optimizer
        self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.lr, momentum=config.momentum
        )
        self.epoch = 0
        self._records: list[EpochRecord] = []
        self._structure_changed = False
        self._shuffle = torch.Generator()
        self._rng_state: dict[str, Any] | None = None
        if resume:
            if self.run_dir is None:
                raise ValueError("The 'resume' parameter of Trainer needs a 'run_dir'.")
            path = training_state.state_path(self.run_dir)
            if path.is_file():
                self._restore(training_state.load_state(path))

    @property
    def history(self) -> History:
        """Records of the epochs completed so far."""
        return History(tuple(self._records))

    def _restore(self, saved: training_state.TrainingState) -> None:
        """Model structure → weights → optimizer → pruner → RNG, from a checkpoint."""
        differing = sorted(
            k
            for k, v in self.config.to_dict().items()
            if k not in RESUMABLE_CHANGES and saved.config.get(k) != v
        )
        if differing:
            raise ValueError(
                f"Cannot resume from {self.run_dir}: the configuration differs from the "
                f"checkpoint's in {differing}."
            )
        if saved.structure is not None:
            model = training_state.apply_model_structure(self.model, saved.structure)
            if self.pruner is not None and model is not self.pruner.model:
                raise RuntimeError(
                    "rmtprune.storage.format.apply_structure returned a new model; the pruner "
                    "still holds the old one, so resuming cannot continue pruning."
                )
            self.model = model.to(self.device)
            self._structure_changed = True
        self.model.load_state_dict(saved.model_state)
        self.optimizer = training_state.optimizer_from_state(saved.optimizer_state, self.model)
        if self.pruner is not None:
            if saved.pruner_state is None:
                raise ValueError("The checkpoint has no pruner state but a pruner was given.")
            self.pruner.load_state_dict(saved.pruner_state)
        self._rng_state = saved.rng_state
        self._records = list(History.from_dict(saved.history).records)
        self.epoch = saved.epoch

    def _seed(self) -> None:
        seed = self.config.seed
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 (the legacy global generator, for third-party code)
        self._shuffle.manual_seed(seed)

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        cfg = self.config
        x, y = self._train
        n = len(y)
        order = torch.randperm(n, generator=self._shuffle).to(self.device)
        label = f"epoch {epoch}/{cfg.epochs}"
        shown = self.progress and resolve(None)
        bar = open_bar(total=n, desc=label, unit="sample", leave=False) if shown else None
        self.model.train()
        total, correct = 0.0, 0
        for start in range(0, n, cfg.batch_size):
            index = order[start : start + cfg.batch_size]
            xb, yb = x[index], y[index]
            out = self.model(xb)
            fit_loss = data_loss(out, yb, cfg.objective)
            self.optimizer.zero_grad(set_to_none=True)
            fit_loss.backward()
            # Gradient of l1·Σ|θ| + l2·Σθ², added directly (far cheaper than autograd).
            add_regularization_grad(self.model.parameters(), cfg.l1, cfg.l2)
            self.optimizer.step()
            batch_loss = float(fit_loss.detach())
            total += batch_loss * len(index)
            if cfg.objective == "nll":
                correct += int((out.detach().argmax(dim=1) == yb).sum())
            if bar is not None:
                bar.update(len(index))
                bar.set_postfix(loss=f"{batch_loss:.4f}", refresh=False)
        mean = total / n if n else math.nan
        accuracy = correct / n if n and cfg.objective == "nll" else math.nan
        if bar is not None:
            bar.close()
        say(f"{label} train loss {mean:.4f}", enabled=shown)
        return mean, accuracy

    def _prune(self, epoch: int) -> dict[str, Any] | None:
        if self.pruner is None:
            return None
        report = self.pruner.step(epoch)
        if report.changed:
            if self._rebuild is None:
                self._rebuild = update_optimizer_after_step
            self.optimizer = self._rebuild(self.optimizer, self.model)
            self._structure_changed = True
        return dict(report.to_dict())

    def _save_state(self) -> None:
        if self.run_dir is None:
            return
        structure = None
        if self._structure_changed:
            structure = training_state.describe_model_structure(self.model)
        saved = training_state.TrainingState(
            epoch=self.epoch,
            config=self.config.to_dict(),
            structure=structure,
            model_state=self.model.state_dict(),
            optimizer_state=training_state.optimizer_state_by_name(self.optimizer, self.model),
            pruner_state=None if self.pruner is None else self.pruner.state_dict(),
            rng_state=training_state.capture_rng_state(self._shuffle),
            history=self.history.to_dict(),
        )
        training_state.save_state(training_state.state_path(self.run_dir), saved)
        self.history.to_json(self.run_dir / "history.json")
        self.history.to_csv(self.run_dir / "history.csv")

    def evaluate(self, data: Any = None) -> Evaluation:
        """Loss and accuracy on ``data`` (default: the test data)."""
        return evaluate(
            self.model,
            self._test if data is None else data,
            batch_size=self.config.eval_batch_size,
            objective=self.config.objective,
        )

    def fit(self) -> History:
        """Train up to ``config.epochs``, after any restored epoch, and return the history.

        A fresh run seeds every generator from ``config.seed``; a resumed run
        restores them from the checkpoint.  After an exception the trainer's
        state is that of a partly trained epoch: recover with a new
        ``Trainer(..., resume=True)``, not by calling ``fit`` again.
        """
        cfg = self.config
        with _runtime(cfg):
            if self._rng_state is not None:
                training_state.restore_rng_state(self._rng_state, self._shuffle)
                self._rng_state = None
            elif self.epoch == 0:
                self._seed()
            for epoch in range(self.epoch + 1, cfg.epochs + 1):
                started = time.perf_counter()
                lr = cfg.learning_rate(epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                train_loss, train_accuracy = self._train_epoch(epoch)
                pruning = self._prune(epoch)
                test = self.evaluate()
                record = EpochRecord(
                    epoch=epoch,
                    lr=lr,
                    train_loss=train_loss,
                    train_accuracy=train_accuracy,
                    test_loss=test.loss,
                    test_accuracy=test.accuracy,
                    n_params=count_parameters(self.model),
                    wall_time=time.perf_counter() - started,
                    pruning=pruning,
                )
                self._records.append(record)
                self.epoch = epoch
                self._save_state()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self, record)
        return self.history
