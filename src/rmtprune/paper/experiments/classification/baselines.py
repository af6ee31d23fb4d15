"""Pruning after training: MP one-shot and two baselines at the same parameter budget.

All three start from the trained *normal* network of a seed, are evaluated on
the test set right after pruning, then fine-tuned for the same number of
epochs (constant learning rate, the run's last one) and evaluated again:

``mp-oneshot``
    :func:`rmtprune.prune` once with ``bulk_keep = 0`` (docs/method.md section 5, last
    paragraph); its size is whatever the spectra give.
``magnitude``
    Global magnitude pruning: the ``k`` weights of smallest absolute value over all
    Linear / Conv2d weight matrices are set to zero and kept at zero during
    fine-tuning (their gradient is masked; with a zero weight the penalty's
    gradient ``l1·sign(θ) + 2·l2·θ`` is zero too, and momentum stays zero), with
    ``k = params(dense) − budget``.  Parameter accounting is real: the count is
    ``params(dense) − k``, the weights that are non-zero or not maskable.
``svd-energy``
    Every layer MP pruning could touch (``min(m, n) >= min_dim``, ``m·n >= min_params``)
    keeps the smallest rank ``r`` whose singular values hold a fraction ``e`` of its
    energy ``Σ s_i²``, split into two factors when ``r (m + n) < m n`` (else left
    dense); the single energy level ``e`` is chosen among all the values where a rank
    changes so that the total parameter count is closest to the budget.

Example
-------
>>> import torch
>>> from rmtprune.paper.experiments.classification.baselines import magnitude_prune
>>> net = torch.nn.Sequential(torch.nn.Linear(10, 10))
>>> pruned = magnitude_prune(net, target_params=60)
>>> pruned.n_params, int((pruned.model[0].weight == 0).sum())
(60, 50)
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._util.validation import check_int, param_error
from rmtprune.factorize import get_adapter
from rmtprune.paper.experiments.config import ExperimentConfig
from rmtprune.paper.models import count_parameters
from rmtprune.paper.training import History, TrainConfig, Trainer, evaluate
from rmtprune.pruning.criteria import FixedRank, MPCriterion, cumulative_energy, energy_rank
from rmtprune.pruning.layers import candidate_layers
from rmtprune.pruning.selection import Select
from rmtprune.pruning.walker import prune

__all__ = [
    "MAX_ADJUST",
    "METHODS",
    "EnergyChoice",
    "EvalPoint",
    "MagnitudePruned",
    "PostTrainingResult",
    "count_parameters",
    "finetune",
    "magnitude_prune",
    "run_method",
    "svd_energy_choice",
    "svd_energy_prune",
]

Ranks = tuple[tuple[str, int], ...]  # (layer name, kept rank) pairs
METHODS = ("mp-oneshot", "magnitude", "svd-energy")


@dataclass(frozen=True)
class EvalPoint:
    """Test loss and accuracy of a model with ``n_params`` parameters."""

    n_params: int
    test_loss: float
    test_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PostTrainingResult:
    """One method of pruning after training, for one seed.

    Attributes
    ----------
    method : str
        One of :data:`METHODS`.
    seed : int
        Training seed of the normal network it started from.
    target_params : int or None
        Parameter budget aimed at (the pruned arm's final count; None for mp-oneshot).
    before, after : EvalPoint
        Right after pruning, and after ``finetune_epochs`` of fine-tuning.
    finetune_epochs : int
        Epochs of fine-tuning.
    energy : float or None
        Retained-energy level of svd-energy.
    ranks : tuple of (str, int)
        Kept rank per layer (svd-energy, mp-oneshot).
    n_zeroed : int or None
        Weights set to zero by magnitude pruning.
    finetune_history : History
        Per-epoch records of the fine-tuning.
    """

    method: str
    seed: int
    target_params: int | None
    before: EvalPoint
    after: EvalPoint
    finetune_epochs: int
    energy: float | None = None
    ranks: Ranks = ()
    n_zeroed: int | None = None
    finetune_history: History = field(default_factory=History)

    @property
    def budget_error(self) -> float | None:
        """Relative difference of the final parameter count from the budget."""
        if self.target_params is None:
            return None
        return self.after.n_params / self.target_params - 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (inverse: :meth:`from_dict`)."""
        return {
            "method": self.method,
            "seed": self.seed,
            "target_params": self.target_params,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "finetune_epochs": self.finetune_epochs,
            "energy": self.energy,
            "ranks": [list(r) for r in self.ranks],
            "n_zeroed": self.n_zeroed,
            "finetune_history": self.finetune_history.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PostTrainingResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            method=values["method"],
            seed=int(values["seed"]),
            target_params=values["target_params"],
            before=EvalPoint(**values["before"]),
            after=EvalPoint(**values["after"]),
            finetune_epochs=int(values["finetune_epochs"]),
            energy=values["energy"],
            ranks=tuple((str(n), int(r)) for n, r in values["ranks"]),
            n_zeroed=values["n_zeroed"],
            finetune_history=History.from_dict(values["finetune_history"]),
        )


# ------------------------------------------------------------------------ magnitude
def _weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    out: list[tuple[str, torch.Tensor]] = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            out.append((name, module.weight))
    return out


@dataclass(frozen=True)
class MagnitudePruned:
    """Result of :func:`magnitude_prune`: the masked copy, its masks and its real size."""

    model: nn.Module
    masks: tuple[tuple[str, torch.Tensor], ...]
    n_zeroed: int
    n_params: int


def magnitude_prune(model: nn.Module, target_params: int) -> MagnitudePruned:
    """Zero the globally smallest weights of a copy of ``model`` to reach ``target_params``.

    Ties in ``|w|`` are broken by position (stable sort), so the result is
    deterministic.  If the budget asks for more zeros than there are weights in
    Linear / Conv2d matrices, all of them are zeroed (the count then stays above
    the budget).

    Parameters
    ----------
    model : torch.nn.Module
        Trained dense model (not modified).
    target_params : int
        Parameter budget: the count of parameters that are not forced to zero.

    Returns
    -------
    MagnitudePruned

    Examples
    --------
    >>> net = torch.nn.Linear(4, 3)
    >>> magnitude_prune(net, 10).n_zeroed
    5
    """
    target_params = check_int(target_params, "target_params", "magnitude_prune", low=0)
    pruned = copy.deepcopy(model)
    weights = _weight_matrices(pruned)
    total = count_parameters(pruned)
    available = sum(w.numel() for _, w in weights)
    k = min(max(total - target_params, 0), available)
    masks: list[tuple[str, torch.Tensor]] = []
    if weights:
        flat = torch.cat([w.detach().abs().reshape(-1).double().cpu() for _, w in weights])
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        if k:
            keep[torch.argsort(flat, stable=True)[:k]] = False
        start = 0
        with torch.no_grad():
            for name, w in weights:
                mask = keep[start : start + w.numel()].reshape(w.shape).to(w.device)
                start += w.numel()
                w.mul_(mask.to(w.dtype))
                masks.append((name, mask))
    return MagnitudePruned(pruned, tuple(masks), k, total - k)


# ------------------------------------------------------------------------ SVD energy
@dataclass(frozen=True)
class EnergyChoice:
    """Energy level and per-layer ranks chosen by :func:`svd_energy_choice`.

    ``energy_ranks`` are the smallest ranks keeping the fraction ``energy`` of each
    layer's energy; ``ranks`` are the ranks used, which differ from them by at most
    :data:`MAX_ADJUST` per layer where that brings the count within half a percent
    of the budget.  ``retained`` is the fraction of each layer's energy kept at its
    rank; layers in ``dense`` stay dense (the split would not save parameters).
    """

    energy: float
    energy_ranks: tuple[tuple[str, int], ...]
    ranks: tuple[tuple[str, int], ...]
    retained: tuple[tuple[str, float], ...]
    dense: tuple[str, ...]
    n_params: int
    target_params: int


MAX_ADJUST = 2
"""Largest change of one layer's rank away from its energy rank to meet the budget."""


def _layer_count(rank: np.ndarray, m: int, n: int, bias: int) -> np.ndarray:
    split = rank * (m + n)
    return np.where(split < m * n, split, m * n) + bias


def svd_energy_choice(
    model: nn.Module, target_params: int, *, min_dim: int = 32, min_params: int = 0
) -> EnergyChoice:
    """Energy level ``e`` whose per-layer ranks bring the model closest to ``target_params``.

    Each eligible layer keeps ``r(e) = min{r : Σ_{i<=r} s_i² >= e Σ s_i²}``; the total
    count is a step function of ``e`` that changes only at the layers' cumulative
    energy fractions, so every such value is tried and the closest count wins (ties:
    the larger ``e``).  One rank step moves the count by ``m + n`` of a layer, which
    can exceed 1 % of a small budget; the ranks are then moved by at most
    :data:`MAX_ADJUST` each (:class:`EnergyChoice` keeps both sets).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64))
    >>> choice = svd_energy_choice(net, target_params=64 * 2 * 10 + 64)
    >>> choice.ranks, choice.n_params
    ((('0', 10),), 1344)
    """
    target_params = check_int(target_params, "target_params", "svd_energy_choice", low=0)
    total = count_parameters(model)
    fixed = total
    info = []
    for view in candidate_layers(model, Select(min_dim=min_dim, min_params=min_params)):
        assert view.module is not None
        adapter = get_adapter(view.module)
        assert adapter is not None
        m, n = view.shape
        bias = adapter.param_count(view.module) - m * n
        info.append((view.name, m, n, bias, cumulative_energy(view)))
        fixed -= m * n + bias
    if not info:
        return EnergyChoice(1.0, (), (), (), (), total, target_params)
    candidates = np.unique(np.concatenate([c for *_, c in info]))
    counts = np.full(candidates.shape, fixed, dtype=np.int64)
    for _, m, n, bias, cum in info:
        counts += _layer_count(energy_rank(cum, candidates), m, n, bias)
    error = np.abs(counts - target_params)
    energy = float(candidates[int(np.flatnonzero(error == error.min())[-1])])
    names = [name for name, *_ in info]
    shapes = [(m, n, bias, cum.size) for _, m, n, bias, cum in info]
    base = [int(energy_rank(c, energy)) for *_, c in info]
    ranks = _adjust(base, shapes, fixed, target_params)
    return EnergyChoice(
        energy,
        tuple(zip(names, base, strict=True)),
        tuple(zip(names, ranks, strict=True)),
        tuple((name, float(i[4][r - 1])) for name, r, i in zip(names, ranks, info, strict=True)),
        tuple(
            name
            for name, r, (m, n, *_) in zip(names, ranks, shapes, strict=True)
            if r * (m + n) >= m * n
        ),
        _total(ranks, shapes, fixed),
        target_params,
    )


def _total(ranks: list[int], shapes: list[tuple[int, int, int, int]], fixed: int) -> int:
    return fixed + sum(
        int(_layer_count(np.array(r), m, n, bias))
        for r, (m, n, bias, _) in zip(ranks, shapes, strict=True)
    )


def _adjust(
    base: list[int], shapes: list[tuple[int, int, int, int]], fixed: int, target: int
) -> list[int]:
    """Ranks within ``MAX_ADJUST`` of ``base`` whose count is nearest the budget.

    Objective, in order: the error beyond half a percent of the target, the total rank
    change, the error itself.  So the energy ranks stay as they are when they already
    meet the budget closely.
    """
    steps = MAX_ADJUST if len(base) <= 6 else 1 if len(base) <= 10 else 0
    best: tuple[float, int, int] | None = None
    chosen = base
    for delta in itertools.product(range(-steps, steps + 1), repeat=len(base)):
        ranks = [b + d for b, d in zip(base, delta, strict=True)]
        if any(not 1 <= r <= p for r, (*_, p) in zip(ranks, shapes, strict=True)):
            continue
        error = abs(_total(ranks, shapes, fixed) - target)
        key = (max(error - 0.005 * target, 0.0), sum(map(abs, delta)), error)
        if best is None or key < best:
            best, chosen = key, ranks
    return chosen


def svd_energy_prune(
    model: nn.Module, target_params: int, *, min_dim: int = 32, min_params: int = 0
) -> tuple[nn.Module, EnergyChoice]:
    """A copy of ``model`` truncated by :func:`svd_energy_choice` (split into factors).

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64))
    >>> small, choice = svd_energy_prune(net, 1344)
    >>> type(small[0]).__name__, count_parameters(small)
    ('LowRankLinear', 1344)
    """
    choice = svd_energy_choice(model, target_params, min_dim=min_dim, min_params=min_params)
    split_ranks = {name: rank for name, rank in choice.ranks if name not in choice.dense}
    pruned, _ = prune(
        model,
        criterion=FixedRank(split_ranks),  # the dense layers are left as they are
        select=Select(min_dim=min_dim, min_params=min_params),
        split=True,
    )
    return pruned, choice


# ------------------------------------------------------------------------ fine-tuning
def finetune(
    model: nn.Module,
    train: Any,
    test: Any,
    config: TrainConfig,
    *,
    masks: tuple[tuple[str, torch.Tensor], ...] = (),
    progress: bool = False,
) -> History:
    """Train ``model`` in place for ``config.epochs``, keeping masked weights at zero.

    Examples
    --------
    >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    >>> data = (x, (x[:, 0] > 0).long())
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.LogSoftmax(dim=1))
    >>> len(finetune(net, data, data, TrainConfig(epochs=2)))
    2
    """
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks:
        weight = modules[name].weight
        keep = mask.to(dtype=weight.dtype, device=weight.device)
        handles.append(weight.register_hook(lambda grad, keep=keep: grad * keep))
    try:
        return Trainer(model, train, test, config, progress=progress).fit()
    finally:
        for handle in handles:
            handle.remove()


def _evaluate(model: nn.Module, test: Any, n_params: int) -> EvalPoint:
    result = evaluate(model, test)
    return EvalPoint(n_params, result.loss, result.accuracy)


def _mp_oneshot(model: nn.Module, config: ExperimentConfig) -> tuple[nn.Module, Ranks]:
    """The paper's rule once after training (``bulk_keep = 0``): the pruned copy and its ranks."""
    criterion = MPCriterion(
        bulk_keep=0.0,
        min_rank=config.min_rank_resolved,
        alpha=config.alpha,
        beta=config.beta,
        fit_cutoff=config.fit_cutoffs(),
    )
    select = Select(min_dim=config.min_dim, min_params=config.min_params)
    pruned, report = prune(model, criterion=criterion, select=select)
    return pruned, tuple((r.name, r.rank_after) for r in report.layers if r.action != "skipped")


def run_method(
    method: str,
    model: nn.Module,
    config: ExperimentConfig,
    *,
    seed: int,
    target_params: int,
    train: Any,
    test: Any,
    progress: bool = False,
) -> PostTrainingResult:
    """Prune a copy of the trained ``model`` by ``method``, evaluate, fine-tune, evaluate.

    Fine-tuning runs ``config.finetune_epochs`` epochs at the run's last learning
    rate with the training seed ``seed``; pruning uses ``config``'s BEMA settings,
    ``min_rank``, ``min_dim`` and ``min_params``.

    Examples
    --------
    >>> from rmtprune.paper.experiments import ExperimentConfig
    >>> cfg = ExperimentConfig(hidden=(40,), finetune_epochs=0, min_dim=10)
    >>> x = torch.randn(50, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    >>> data = (x, torch.arange(50) % 10)
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 40),
    ...                           torch.nn.Linear(40, 10), torch.nn.LogSoftmax(dim=1))
    >>> res = run_method("magnitude", net, cfg, seed=0, target_params=20000,
    ...                  train=data, test=data)
    >>> res.after.n_params
    20000
    """
    if method not in METHODS:
        raise param_error("method", "run_method", f"one of {list(METHODS)}", method)
    finetune_config = config.train_config(seed, epochs=config.finetune_epochs, lr=config.final_lr())
    masks: tuple[tuple[str, torch.Tensor], ...] = ()
    energy: float | None = None
    ranks: Ranks = ()
    n_zeroed: int | None = None
    target: int | None = target_params
    if method == "mp-oneshot":
        pruned, ranks = _mp_oneshot(model, config)
        target, n_params = None, count_parameters(pruned)
    elif method == "svd-energy":
        pruned, choice = svd_energy_prune(
            model,
            target_params,
            min_dim=config.min_dim,
            min_params=config.min_params,
        )
        energy, ranks, n_params = choice.energy, choice.ranks, count_parameters(pruned)
    else:
        mag = magnitude_prune(model, target_params)
        pruned, masks, n_zeroed, n_params = mag.model, mag.masks, mag.n_zeroed, mag.n_params
    before = _evaluate(pruned, test, n_params)
    history = History()
    after = before
    if finetune_config.epochs > 0:
        history = finetune(pruned, train, test, finetune_config, masks=masks, progress=progress)
        after = EvalPoint(n_params, history[-1].test_loss, history[-1].test_accuracy)
    if masks:  # real accounting after fine-tuning: the masked weights are still exact zeros
        modules = dict(pruned.named_modules())
        zeros = sum(int((modules[n].weight[~m] == 0).sum()) for n, m in masks)
        if zeros != n_zeroed:  # pragma: no cover - guard on the masking mechanism
            raise RuntimeError(f"{n_zeroed} weights were masked but {zeros} are still zero")
    return PostTrainingResult(
        method,
        seed,
        target,
        before,
        after,
        finetune_config.epochs,
        energy=energy,
        ranks=ranks,
        n_zeroed=n_zeroed,
        finetune_history=history,
    )
