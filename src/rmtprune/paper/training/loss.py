"""The training objective of the paper (docs/method.md section 6) and evaluation.

``paper_loss = NLL(log_probs, target) + l1 · Σ|θ| + l2 · Σθ²`` over all the
parameters given, with ``l1 = l2 = 5e-6`` by default.  :func:`evaluate` gives
the mean data loss and the accuracy of a model on a data set.

Example
-------
>>> import torch
>>> from rmtprune.paper.training import paper_loss
>>> log_probs = torch.log(torch.tensor([[0.5, 0.5]]))
>>> theta = [torch.tensor([1.0, -2.0])]
>>> round(float(paper_loss(log_probs, torch.tensor([0]), theta, l1=0.1, l2=0.01)), 6)
1.043147
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rmtprune._util.validation import check_int, check_real, param_error

__all__ = [
    "OBJECTIVES",
    "Evaluation",
    "add_regularization_grad",
    "as_tensors",
    "data_loss",
    "evaluate",
    "paper_loss",
    "regularization",
]

OBJECTIVES = ("nll", "mse")


def regularization(
    params: Iterable[torch.Tensor], l1: float = 5e-6, l2: float = 5e-6
) -> torch.Tensor:
    """``l1 · Σ|θ| + l2 · Σθ²`` over every entry of every tensor in ``params``.

    Parameters
    ----------
    params : iterable of torch.Tensor
        Typically ``model.parameters()``.
    l1, l2 : float
        Non-negative weights of the L1 and squared-L2 penalties.

    Returns
    -------
    torch.Tensor
        A scalar (0 when both weights are 0 or there are no tensors).

    Examples
    --------
    >>> float(regularization([torch.tensor([3.0, -4.0])], l1=1.0, l2=1.0))
    32.0
    """
    l1 = check_real(l1, "l1", "regularization", low=0.0)
    l2 = check_real(l2, "l2", "regularization", low=0.0)
    total: torch.Tensor | None = None
    for p in params:
        term = torch.zeros((), dtype=p.dtype, device=p.device)
        if l1:
            term = term + l1 * p.abs().sum()
        if l2:
            term = term + l2 * p.square().sum()
        total = term if total is None else total + term
    return torch.zeros(()) if total is None else total


def add_regularization_grad(
    params: Iterable[torch.Tensor], l1: float = 5e-6, l2: float = 5e-6
) -> None:
    """Add the gradient of :func:`regularization`, ``l1·sign(θ) + 2·l2·θ``, to each ``θ.grad``.

    Same gradient as back-propagating ``regularization(params, l1, l2)`` (the
    subgradient of ``|θ|`` at 0 is 0, as in autograd), at a fraction of the
    cost: no penalty value is built and the update runs as fused multi-tensor
    operations.  Parameters without ``requires_grad`` are skipped; a missing
    ``.grad`` is created.

    Examples
    --------
    >>> theta = torch.tensor([2.0, -1.0], requires_grad=True)
    >>> add_regularization_grad([theta], l1=0.5, l2=0.25)
    >>> theta.grad.tolist()
    [1.5, -1.0]
    """
    l1 = check_real(l1, "l1", "add_regularization_grad", low=0.0)
    l2 = check_real(l2, "l2", "add_regularization_grad", low=0.0)
    ps = [p for p in params if p.requires_grad]
    if not ps or not (l1 or l2):
        return
    for p in ps:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in ps if p.grad is not None]
    with torch.no_grad():
        if l1:
            torch._foreach_add_(grads, torch._foreach_sign(ps), alpha=l1)
        if l2:
            torch._foreach_add_(grads, ps, alpha=2.0 * l2)


def paper_loss(
    log_probs: torch.Tensor,
    target: torch.Tensor,
    params: Iterable[torch.Tensor],
    l1: float = 5e-6,
    l2: float = 5e-6,
) -> torch.Tensor:
    """Mean negative log-likelihood plus :func:`regularization` of ``params``.

    Parameters
    ----------
    log_probs : torch.Tensor
        ``(batch, classes)`` log-probabilities (``log_softmax`` over dim 1).
    target : torch.Tensor
        ``(batch,)`` int64 class indices.
    params : iterable of torch.Tensor
        Tensors to penalise, typically ``model.parameters()``.
    l1, l2 : float
        Penalty weights.

    Examples
    --------
    >>> lp = torch.log_softmax(torch.zeros(4, 10), dim=1)
    >>> round(float(paper_loss(lp, torch.zeros(4, dtype=torch.long), [], l1=0, l2=0)), 4)
    2.3026
    """
    return F.nll_loss(log_probs, target) + regularization(params, l1, l2)


@dataclass(frozen=True)
class Evaluation:
    """Mean loss and accuracy of a model on a data set (accuracy NaN for ``mse``)."""

    loss: float
    accuracy: float
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary of the fields."""
        return {"loss": self.loss, "accuracy": self.accuracy, "n_samples": self.n_samples}


def as_tensors(data: Any, name: str, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = getattr(data, "tensors", data)
    if (
        not isinstance(tensors, (tuple, list))
        or len(tensors) != 2
        or not all(isinstance(t, torch.Tensor) for t in tensors)
        or len(tensors[0]) != len(tensors[1])
    ):
        raise TypeError(
            f"The {name!r} parameter of {owner} must be a TensorDataset(inputs, targets) or a "
            f"pair of tensors of the same length. Got {type(data).__name__} instead."
        )
    return tensors[0], tensors[1]


def data_loss(output: torch.Tensor, target: torch.Tensor, objective: str = "nll") -> torch.Tensor:
    """Data term of the objective: mean NLL of log-probabilities, or mean squared error.

    Examples
    --------
    >>> float(data_loss(torch.tensor([[2.0], [0.0]]), torch.tensor([1.0, 1.0]), "mse"))
    1.0
    """
    if objective not in OBJECTIVES:
        raise param_error("objective", "data_loss", f"one of {list(OBJECTIVES)}", objective)
    if objective == "nll":
        return F.nll_loss(output, target)
    return F.mse_loss(output.reshape(target.shape), target)


def evaluate(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 1000,
    objective: str = "nll",
) -> Evaluation:
    """Mean loss and accuracy of ``model`` on ``data`` in eval mode, without gradients.

    The model's training/eval mode is restored afterwards.

    Examples
    --------
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LogSoftmax(dim=1))
    >>> evaluate(model, (torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))).n_samples
    3
    """
    if objective not in OBJECTIVES:
        raise param_error("objective", "evaluate", f"one of {list(OBJECTIVES)}", objective)
    batch_size = check_int(batch_size, "batch_size", "evaluate", low=1)
    x, y = as_tensors(data, "data", "evaluate")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(y), batch_size):
                xb = x[start : start + batch_size].to(device)
                yb = y[start : start + batch_size].to(device)
                out = model(xb)
                total += float(data_loss(out, yb, objective)) * len(yb)
                if objective == "nll":
                    correct += int((out.argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    n = len(y)
    loss = total / n if n else math.nan
    accuracy = correct / n if n and objective == "nll" else math.nan
    return Evaluation(loss, accuracy, n)
