"""Part (b) of the ``theory`` experiment: the three-layer network of docs/method.md section 7.

``X(s) = W₃ λ(W₂ λ(W₁ s))`` (no biases, ``784 → N → N → 10``) is trained on Fashion-MNIST
with ``W₂ = S₂`` constrained to rank ``signal_rank``; ``R₂`` with i.i.d. ``N(0, g/N)``
entries, independent of everything else, is then added: ``W₂ = S₂ + R₂``.  This module holds
the closed forms of the bound (:func:`network_outputs`, :func:`tau_bound`,
:func:`classification_margin`), the per-sample comparison :func:`bound_check`, the
per-network summary :class:`NetworkRecord` and its driver :func:`run_networks`, and
:func:`prune_matrix`, the pruned ``W′`` used by both parts.  The public names are
re-exported by :mod:`rmtprune.paper.experiments.analysis.theory`, where the experiment is
documented.

Example
-------
>>> import torch
>>> from rmtprune.paper.experiments.analysis.theory import classification_margin
>>> classification_margin(torch.tensor([[0.5, 2.0, 1.0]]), torch.tensor([2]))
tensor([-1.])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from rmtprune._util.validation import param_error
from rmtprune.factorize.lowrank import LowRankLinear
from rmtprune.paper.experiments.analysis import common
from rmtprune.paper.experiments.analysis.theory_config import ACTIVATIONS, TheoryConfig
from rmtprune.paper.experiments.rundir import UnitStore
from rmtprune.paper.models import FullyConnected, initialize
from rmtprune.paper.training import TrainConfig, Trainer
from rmtprune.pruning.criteria import MPCriterion
from rmtprune.pruning.walker import prune

__all__ = [
    "ACTIVATIONS",
    "BoundCheck",
    "NetworkRecord",
    "bound_check",
    "classification_margin",
    "network_outputs",
    "prune_matrix",
    "run_networks",
    "tau_bound",
]


def prune_matrix(weight: Any, alpha: float, beta: float) -> tuple[torch.Tensor, Any]:
    """``W′`` of :func:`rmtprune.prune` (``bulk_keep = 0``, dense) and the layer's report row."""
    weight = torch.as_tensor(weight, dtype=torch.float64)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
    rule = MPCriterion(bulk_keep=0.0, alpha=alpha, beta=beta)
    pruned, report = prune(nn.Sequential(layer), criterion=rule, split=False)
    kept = pruned.get_submodule("0")
    assert isinstance(kept, nn.Linear)
    return kept.weight.detach(), report["0"]


def _act(activation: str, owner: str) -> Any:
    if activation not in ACTIVATIONS:
        raise param_error("activation", owner, f"one of {ACTIVATIONS}", activation)
    return torch.relu if activation == "relu" else torch.abs


def network_outputs(
    W1: torch.Tensor, W2: torch.Tensor, W3: torch.Tensor, inputs: torch.Tensor, activation: str
) -> torch.Tensor:
    """``X(s) = W₃ λ(W₂ λ(W₁ s))`` for each row ``s`` of ``inputs`` (no biases, no softmax).

    >>> W = torch.eye(2, dtype=torch.float64)
    >>> network_outputs(W, -W, W, torch.tensor([[1.0, -2.0]], dtype=torch.float64), "abs")
    tensor([[1., 2.]], dtype=torch.float64)
    """
    act = _act(activation, "network_outputs")
    return act(act(inputs @ W1.T) @ W2.T) @ W3.T


def tau_bound(W1: torch.Tensor, W3: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``τ(s) = 2√2 ‖W₃‖_∞ ‖W₁ s‖₂ sqrt(log(2N)/N)`` per row ``s``; ``N`` = rows of ``W₁``.

    ``‖W₃‖_∞`` is the largest absolute row sum.

    >>> W1, W3 = torch.eye(2, dtype=torch.float64), torch.tensor([[1.0, -1.0]]).double()
    >>> round(float(tau_bound(W1, W3, torch.tensor([[3.0, 4.0]], dtype=torch.float64))), 4)
    23.5482
    """
    n = W1.shape[0]
    row_sum = float(W3.abs().sum(dim=1).max())
    return 2 * math.sqrt(2) * row_sum * (inputs @ W1.T).norm(dim=1) * math.sqrt(math.log(2 * n) / n)


def classification_margin(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``δX(s) = X_c(s) − max_{j≠c} X_j(s)`` for the true class ``c`` of each row.

    >>> classification_margin(torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([1]))
    tensor([1.])
    """
    index = labels.reshape(-1, 1)
    others = outputs.scatter(1, index, float("-inf")).max(dim=1).values
    return outputs.gather(1, index).squeeze(1) - others


@dataclass(frozen=True)
class BoundCheck:
    """Per-sample quantities of docs/method.md section 7 for one perturbed ``W₂`` (length-n arrays).

    ``margin``: ``δX(s)`` with ``S₂``; ``change``: ``‖X(s; S₂) − X(s; W₂)‖_∞``;
    ``in_band``: ``|δX(s)| ≤ 2τ(s)``; ``flipped``: correct with one of ``S₂``, ``W₂`` only;
    ``agreement``: fraction of samples predicted as with ``S₂``.
    """

    tau: np.ndarray
    margin: np.ndarray
    change: np.ndarray
    in_band: np.ndarray
    flipped: np.ndarray
    accuracy_signal: float
    accuracy_noisy: float
    agreement: float

    @property
    def exceed_fraction(self) -> float:
        """Fraction of samples with ``change > τ``."""
        return float(np.mean(self.change > self.tau))

    def to_dict(self) -> dict[str, Any]:
        """Summary numbers (the per-sample arrays are left out)."""
        return {
            "n_samples": int(self.tau.size),
            "exceed_fraction": self.exceed_fraction,
            "band_fraction": float(np.mean(self.in_band)),
            "flipped_fraction": float(np.mean(self.flipped)),
            "accuracy_signal": self.accuracy_signal,
            "accuracy_noisy": self.accuracy_noisy,
            "agreement": self.agreement,
        }


def _compare(
    hidden: torch.Tensor,
    clean: torch.Tensor,
    tau: torch.Tensor,
    W2: torch.Tensor,
    W3: torch.Tensor,
    labels: torch.Tensor,
    act: Any,
) -> BoundCheck:
    """:class:`BoundCheck` of ``W₂`` given ``λ(W₁ s)``, the outputs with ``S₂`` and ``τ``."""
    noisy = act(hidden @ W2.T) @ W3.T
    margin = classification_margin(clean, labels)
    right_clean, right_noisy = clean.argmax(1) == labels, noisy.argmax(1) == labels
    return BoundCheck(
        tau=tau.numpy(),
        margin=margin.numpy(),
        change=(clean - noisy).abs().amax(dim=1).numpy(),
        in_band=(margin.abs() <= 2 * tau).numpy(),
        flipped=(right_clean != right_noisy).numpy(),
        accuracy_signal=float(right_clean.double().mean()),
        accuracy_noisy=float(right_noisy.double().mean()),
        agreement=float((noisy.argmax(1) == clean.argmax(1)).double().mean()),
    )


def bound_check(
    W1: torch.Tensor,
    S2: torch.Tensor,
    W3: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    noise: torch.Tensor,
    activation: str,
) -> BoundCheck:
    """Compare the network with ``W₂ = S₂`` and with ``W₂ = S₂ + noise``, sample by sample.

    Parameters
    ----------
    W1, S2, W3 : torch.Tensor
        ``N × d``, ``N × N`` and ``c × N`` float64 matrices (no biases).
    inputs : torch.Tensor
        ``n × d`` float64 samples, one per row.
    labels : torch.Tensor
        ``n`` int64 true classes.
    noise : torch.Tensor
        ``N × N`` float64 perturbation ``R₂``.
    activation : {"relu", "abs"}
        The activation ``λ``.

    Returns
    -------
    BoundCheck
        ``τ(s)``, ``δX(s)`` (with ``S₂``), the change of the outputs and the flips.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> W1, S2, W3, R2 = (torch.randn(*s, generator=g, dtype=torch.float64) / 8
    ...                   for s in ((64, 5), (64, 64), (3, 64), (64, 64)))
    >>> x = torch.randn(20, 5, generator=g, dtype=torch.float64)
    >>> check = bound_check(W1, S2, W3, x, torch.zeros(20, dtype=torch.long), R2, "relu")
    >>> check.exceed_fraction, bool((check.tau > check.change).all())
    (0.0, True)
    """
    act = _act(activation, "bound_check")
    hidden = act(inputs @ W1.T)
    clean = act(hidden @ S2.T) @ W3.T
    return _compare(hidden, clean, tau_bound(W1, W3, inputs), S2 + noise, W3, labels, act)


def _train_network(
    config: TheoryConfig, width: int, activation: str, data: tuple[Any, Any], progress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train ``784 → N → N → 10`` without biases, the middle layer of rank ``signal_rank``."""
    model = FullyConnected([784, width, width, 10], activation=activation, bias=False)
    generator = torch.Generator().manual_seed(config.seed * 7919 + width)
    initialize(model, "normal", generator=generator)
    middle = LowRankLinear(width, width, config.signal_rank, bias=False)
    model.layers[2] = initialize(middle, "normal", generator=generator)
    train_config = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr if activation == "relu" else config.lr_abs,
        seed=config.seed,
    )
    Trainer(model, data[0], data[1], train_config, progress=progress).fit()
    first, last = model.layers[0], model.layers[4]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    S2 = middle.to_dense().weight.detach().double()
    if not bool(torch.isfinite(S2).all()):
        raise RuntimeError(
            f"Training the {activation} network of width {width} diverged (non-finite weights); "
            "lower TheoryConfig.lr / lr_abs."
        )
    return first.weight.detach().double(), S2, last.weight.detach().double()


@dataclass(frozen=True)
class NetworkRecord:
    """Part (b) for one width ``N`` and activation, over ``draws`` draws of ``R₂``.

    Fractions are over all (sample, draw) pairs and accuracies are means over draws
    (``max_accuracy_change`` is the largest over draws); ``strengths`` are the singular
    values of ``S₂`` over ``√g`` (the BBP threshold is 1: ``W₂`` is square); ``agreement_*``
    is the fraction of samples with the same prediction as with ``S₂``; ``exceed_pruned``
    is the fraction with ``‖X(s; S₂) − X(s; W₂′)‖_∞ > τ(s)``.  ``samples`` and
    ``change_pruned`` hold the per-sample arrays of the first draw.
    """

    width: int
    activation: str
    n_test: int
    draws: int
    strengths: tuple[float, ...]
    n_above_threshold: int
    n_spikes_mean: float
    accuracy_signal: float
    accuracy_noisy: float
    accuracy_pruned: float
    exceed_fraction: float
    exceed_pruned: float
    one_over_n: float
    max_change_over_tau: float
    median_change_over_tau: float
    band_fraction: float
    flipped_fraction: float
    max_accuracy_change: float
    flipped_outside_band: int
    noise_op: float
    noise_fro: float
    pruned_op: float
    pruned_fro: float
    agreement_noisy: float
    agreement_pruned: float
    samples: BoundCheck = field(compare=False, repr=False)
    change_pruned: np.ndarray = field(compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields, without the per-sample arrays."""
        return {k: v for k, v in asdict(self).items() if k not in ("samples", "change_pruned")}

    def to_unit(self) -> dict[str, Any]:
        """:meth:`to_dict` with the per-sample arrays (the stored unit of a run directory)."""
        arrays = {k: getattr(self.samples, k) for k in _ARRAYS}
        return {
            **self.to_dict(),
            "samples": {
                **{k: _array_dict(v) for k, v in arrays.items()},
                **{k: getattr(self.samples, k) for k in _SCALARS},
            },
            "change_pruned": _array_dict(self.change_pruned),
        }

    @classmethod
    def from_unit(cls, values: dict[str, Any]) -> NetworkRecord:
        """Inverse of :meth:`to_unit` (as read back from JSON: ``None`` → NaN)."""
        v: dict[str, Any] = {k: math.nan if x is None else x for k, x in values.items()}
        raw = values["samples"]
        fields: dict[str, Any] = {k: _array(raw[k]) for k in _ARRAYS}
        fields.update({k: math.nan if raw[k] is None else raw[k] for k in _SCALARS})
        samples = BoundCheck(**fields)
        v.update(strengths=tuple(values["strengths"]), samples=samples)
        return cls(**{**v, "change_pruned": _array(values["change_pruned"])})


_ARRAYS = ("tau", "margin", "change", "in_band", "flipped")
_SCALARS = ("accuracy_signal", "accuracy_noisy", "agreement")


def _array_dict(values: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(values.dtype), "values": values.tolist()}


def _array(stored: dict[str, Any]) -> np.ndarray:
    values = [math.nan if x is None else x for x in stored["values"]]
    return np.array(values, dtype=stored["dtype"])


def _network(
    config: TheoryConfig, width: int, activation: str, data: tuple[Any, Any], progress: bool
) -> NetworkRecord:
    """Train the network of ``width`` and ``activation``, draw ``R₂`` ``seeds`` times, compare."""
    W1, S2, W3 = _train_network(config, width, activation, data, progress)
    inputs, labels = data[1].tensors[0].flatten(1).double(), data[1].tensors[1]
    act = _act(activation, "theory")
    hidden = act(inputs @ W1.T)
    clean = act(hidden @ S2.T) @ W3.T
    tau = tau_bound(W1, W3, inputs)
    strengths = torch.linalg.svdvals(S2)[: config.signal_rank] / math.sqrt(config.noise_variance)
    checks, pruned, rows = [], [], []
    for draw in range(config.seeds):
        generator = torch.Generator().manual_seed((config.seed * 7919 + width) * 1000 + draw + 1)
        noise = torch.randn(width, width, generator=generator, dtype=torch.float64)
        noise *= math.sqrt(config.noise_variance / width)
        checks.append(_compare(hidden, clean, tau, S2 + noise, W3, labels, act))
        W2p, row = prune_matrix(S2 + noise, config.alpha, config.beta)
        pruned.append(_compare(hidden, clean, tau, W2p, W3, labels, act))
        rows.append(
            [row.n_spikes or 0]
            + [float(torch.linalg.matrix_norm(m, o)) for m in (noise, W2p - S2) for o in (2, "fro")]
        )
    means = np.mean(rows, axis=0)
    ratios = np.concatenate([c.change / c.tau for c in checks])
    return NetworkRecord(
        width=width,
        activation=activation,
        n_test=len(labels),
        draws=config.seeds,
        strengths=tuple(strengths.tolist()),
        n_above_threshold=int((strengths > 1.0).sum()),
        n_spikes_mean=float(means[0]),
        accuracy_signal=checks[0].accuracy_signal,
        accuracy_noisy=float(np.mean([c.accuracy_noisy for c in checks])),
        accuracy_pruned=float(np.mean([c.accuracy_noisy for c in pruned])),
        exceed_fraction=float(np.mean(ratios > 1.0)),
        exceed_pruned=float(np.mean([c.exceed_fraction for c in pruned])),
        one_over_n=1.0 / width,
        max_change_over_tau=float(ratios.max()),
        median_change_over_tau=float(np.median(ratios)),
        band_fraction=float(np.mean(checks[0].in_band)),
        flipped_fraction=float(np.mean([c.flipped for c in checks])),
        max_accuracy_change=max(abs(c.accuracy_noisy - c.accuracy_signal) for c in checks),
        flipped_outside_band=sum(int((c.flipped & ~c.in_band).sum()) for c in checks),
        noise_op=float(means[1]),
        noise_fro=float(means[2]),
        pruned_op=float(means[3]),
        pruned_fro=float(means[4]),
        agreement_noisy=float(np.mean([c.agreement for c in checks])),
        agreement_pruned=float(np.mean([c.agreement for c in pruned])),
        samples=checks[0],
        change_pruned=pruned[0].change,
    )


def run_networks(
    config: TheoryConfig, data_dir: Any, progress: bool, store: UnitStore
) -> list[NetworkRecord]:
    """Part (b) for every activation and width of ``config`` on Fashion-MNIST from ``data_dir``.

    Each network is one unit of ``store`` (``network-<activation>-<width>``): one stored
    there is read back, not trained again.
    """
    data = common.load_fashion_mnist(
        config.n_train, config.n_test, data_dir=data_dir, seed=config.seed
    )
    networks = []
    for activation in config.activations:
        for width in config.widths:
            common.say(progress, f"[theory] network N={width}, {activation}")
            train = partial(_network, config, width, activation, data, progress)
            unit = f"network-{activation}-{width}"
            networks.append(store.get(unit, train, NetworkRecord.to_unit, NetworkRecord.from_unit))
    return networks
