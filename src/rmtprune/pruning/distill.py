"""Prune while distilling: a pretrained model taught by its own frozen original.

The paper prunes *while training* (docs/method.md section 5): the bulk is removed gradually and
training in between repairs what each step broke.  A pretrained model has no training data at hand,
but it has itself: :func:`distill` trains a *student* (the model being pruned on a schedule by
:class:`rmtprune.SpectralPruner`) to reproduce the outputs of a *teacher* (the original,
frozen) on unlabeled inputs.  The default loss, :func:`embedding_loss`, compares the first
output tensors (e.g. ``last_hidden_state``): their squared relative error plus ``1 − cos`` of
the mean-pooled (attention-masked) embeddings.

:func:`docstring_sentences` supplies unlabeled English text offline: the docstrings of the
Python standard library split into sentences.

Example
-------
>>> import copy, torch
>>> from torch import nn
>>> import rmtprune
>>> _ = torch.manual_seed(0)
>>> teacher = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64))
>>> student = copy.deepcopy(teacher)
>>> pruner = rmtprune.SpectralPruner(student, schedule=rmtprune.schedules.Linear(2), every=1)
>>> batches = [torch.randn(16, 64) for _ in range(4)]
>>> result = distill(student, teacher, batches, epochs=2, pruner=pruner)
>>> result.params_after < result.params_before
True
"""

from __future__ import annotations

import importlib
import inspect
import math
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from rmtprune._util.validation import check_int, check_real
from rmtprune.factorize.params import count_parameters
from rmtprune.pruning.outputs import OutputProbe, as_batches, call_model, first_tensor
from rmtprune.pruning.pruner import SpectralPruner

__all__ = [
    "DistillEpoch",
    "DistillResult",
    "distill",
    "docstring_sentences",
    "embedding_loss",
    "learning_rate",
    "mean_pooled",
    "split_sentences",
]

Loss = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]

_STDLIB_MODULES = (
    "argparse asyncio base64 bisect calendar collections concurrent.futures configparser "
    "contextlib copy csv dataclasses datetime decimal difflib email enum fractions ftplib "
    "functools gettext glob gzip hashlib heapq hmac html.parser http.client imaplib inspect "
    "io ipaddress itertools json logging mailbox math mimetypes multiprocessing netrc numbers "
    "operator optparse os pathlib pickle pkgutil platform plistlib poplib pprint queue "
    "random re sched secrets selectors shelve shlex shutil smtplib socket socketserver "
    "statistics string struct subprocess tarfile tempfile textwrap threading timeit tokenize "
    "traceback types typing unittest urllib.parse urllib.request uuid warnings weakref "
    "xml.dom.minidom zipfile zoneinfo"
).split()


def docstring_sentences(*, min_chars: int = 40, max_chars: int = 200, seed: int = 0) -> list[str]:
    """Unique sentences from the docstrings of about 100 standard-library modules, shuffled.

    Deterministic for a given Python version and ``seed`` (a few thousand sentences).

    >>> sentences = docstring_sentences()
    >>> len(sentences) > 2000, all(40 <= len(s) <= 200 for s in sentences)
    (True, True)
    """
    docs: list[str] = []
    for name in _STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - a stripped-down Python
            continue
        own = [obj for _, obj in inspect.getmembers(module) if _defined_in(obj, name)]
        docs += [inspect.getdoc(obj) or "" for obj in [module, *own]]  # not what imports attached
    return split_sentences(docs, min_chars=min_chars, max_chars=max_chars, seed=seed)


def split_sentences(
    texts: Iterable[str], *, min_chars: int = 40, max_chars: int = 200, seed: int | None = 0
) -> list[str]:
    """The unique sentences of ``texts`` (whitespace collapsed, split after ``.``, ``!`` or
    ``?``) of ``min_chars`` to ``max_chars`` characters that start with a capital, shuffled
    by ``seed`` (sorted when ``seed`` is None).

    >>> split_sentences(["A first sentence here.  And   a second one!", "no capital."],
    ...                 min_chars=10, seed=None)
    ['A first sentence here.', 'And a second one!']
    """
    found: set[str] = set()
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            if min_chars <= len(sentence) <= max_chars and sentence[:1].isupper():
                found.add(sentence)
    sentences = sorted(found)
    if seed is not None:
        random.Random(seed).shuffle(sentences)
    return sentences


def _defined_in(obj: Any, module: str) -> bool:
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module


def mean_pooled(output: torch.Tensor, batch: Any = None) -> torch.Tensor:
    """One vector per example: the mean over tokens of a ``(batch, tokens, d)`` output, counting
    only positions where ``batch["attention_mask"]`` is 1; other outputs are flattened.

    >>> h = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> mean_pooled(h, {"attention_mask": torch.tensor([[1, 1, 0]])}).tolist()
    [[2.0]]
    """
    if output.dim() != 3:
        return output.reshape(output.shape[0], -1)
    mask = batch.get("attention_mask") if isinstance(batch, dict) else None
    if mask is None:
        return output.mean(dim=1)
    weights = mask.to(output.dtype).unsqueeze(-1)
    return (output * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, batch: Any) -> torch.Tensor:
    """``‖s − t‖² / ‖t‖²`` over the whole output plus the mean ``1 − cos`` of pooled embeddings.

    >>> t = torch.ones(2, 3, 4)
    >>> float(embedding_loss(2 * t, t, None))   # relative error 1, same directions
    1.0
    """
    relative = (student - teacher).square().sum() / teacher.square().sum().clamp_min(1e-30)
    cosine = nn.functional.cosine_similarity(
        mean_pooled(student, batch), mean_pooled(teacher, batch), dim=-1
    )
    return relative + (1.0 - cosine).mean()


@dataclass(frozen=True)
class DistillEpoch:
    """One epoch of :func:`distill`: mean training loss, parameters after the epoch's pruning
    step, whether that step changed the model, and the held-out output change (if measured)."""

    epoch: int
    loss: float
    params: int
    pruned: bool
    output_change: float | None


@dataclass(frozen=True)
class DistillResult:
    """History of a :func:`distill` run."""

    history: tuple[DistillEpoch, ...]
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dictionary."""
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "history": [asdict(e) for e in self.history],
        }


def _train_epoch(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Any],
    targets: Sequence[torch.Tensor],
    loss_fn: Loss,
    rate: Callable[[], float],
) -> float:
    total = 0.0
    for batch, target in zip(batches, targets, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = rate()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(first_tensor(call_model(student, batch)), target, batch)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / len(batches)


_LR_SCHEDULES = ("constant", "cosine")


def learning_rate(lr: float, schedule: str, step: int, total: int) -> float:
    """The rate of step ``step`` (from 0) of ``total`` under ``schedule`` (see :func:`distill`).

    >>> [round(learning_rate(1.0, "cosine", t, 4), 3) for t in range(4)]
    [1.0, 0.854, 0.5, 0.146]
    """
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * step / total))
    return lr


def distill(
    student: nn.Module,
    teacher: nn.Module,
    batches: Iterable[Any],
    *,
    epochs: int,
    pruner: SpectralPruner | None = None,
    lr: float = 1e-4,
    loss: Loss = embedding_loss,
    eval_batches: Iterable[Any] | None = None,
    lr_schedule: str = "constant",
) -> DistillResult:
    """Train ``student`` in place to reproduce ``teacher`` on ``batches``, pruning on a schedule.

    Each epoch runs Adam (``lr``, no weight decay) over the batches (teacher outputs computed
    once, student in eval mode so dropout does not blur the target), then calls
    ``pruner.step(epoch)`` (epochs count from 1) and rebuilds the optimizer when the model
    changed.

    Parameters
    ----------
    student : torch.nn.Module
        The model trained and pruned in place (usually a copy of ``teacher``).
    teacher : torch.nn.Module
        The frozen reference; never modified.
    batches : iterable of model inputs
        Training inputs (tensor, tuple or dict batches, as for calibration).
    epochs : int
        Number of passes over ``batches``.
    pruner : SpectralPruner, optional
        Built on ``student``; without it the student is only distilled.
    lr : float
        Learning rate of Adam.
    loss : callable
        ``loss(student_output, teacher_output, batch)``; default :func:`embedding_loss`.
    eval_batches : iterable of model inputs, optional
        Held-out inputs on which the relative output change against the teacher is measured
        after every epoch.
    lr_schedule : {"constant", "cosine"}
        ``"cosine"``: the learning rate of step ``t`` of ``T = epochs · len(batches)`` is
        ``lr · (1 + cos(π t / T)) / 2`` (from ``lr`` down to 0), set before every step.

    Returns
    -------
    DistillResult
    """
    owner = "distill"
    epochs = check_int(epochs, "epochs", owner, low=1)
    lr = check_real(lr, "lr", owner, low=0.0, low_open=True)
    if lr_schedule not in _LR_SCHEDULES:
        raise ValueError(
            f"The 'lr_schedule' parameter of distill must be one of {_LR_SCHEDULES}. "
            f"Got {lr_schedule!r} instead."
        )
    if pruner is not None and pruner.model is not student:
        raise ValueError(
            "The 'pruner' parameter of distill must prune the student (SpectralPruner(student, "
            "...)). Got a pruner of another model instead."
        )
    train = as_batches(batches, owner, param="batches")
    held = (
        None
        if eval_batches is None
        else OutputProbe(teacher, as_batches(eval_batches, owner, param="eval_batches"))
    )
    dtype = next((p.dtype for p in student.parameters() if p.is_floating_point()), None)
    targets = [t.to(dtype) for t in OutputProbe(teacher, train).reference]
    before = count_parameters(student)
    optimizer: torch.optim.Optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    was_training = student.training
    student.eval()
    history = []
    total_steps, step = epochs * len(train), [0]

    def rate() -> float:
        step[0] += 1
        return learning_rate(lr, lr_schedule, step[0] - 1, total_steps)

    try:
        for epoch in range(1, epochs + 1):
            mean_loss = _train_epoch(student, optimizer, train, targets, loss, rate)
            changed = pruner is not None and pruner.step(epoch, optimizer=optimizer).changed
            change = None if held is None else held.change(student)
            history.append(
                DistillEpoch(epoch, mean_loss, count_parameters(student), changed, change)
            )
    finally:
        student.train(was_training)
    return DistillResult(tuple(history), before, count_parameters(student))
