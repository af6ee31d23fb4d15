"""Model outputs on calibration data: calling a model on a batch, and the relative output change.

A calibration *batch* is whatever the model takes: a tensor (``model(x)``), a tuple or list
(``model(*batch)``) or a mapping (``model(**batch)``, as for Hugging Face models).  The
*output* compared is the first tensor the model returns: the tensor itself, the first tensor
field of a mapping (a Hugging Face ``ModelOutput``: ``logits`` or ``last_hidden_state``), or
the first tensor of a tuple.  The relative output change of a changed model ``f'`` against the
original ``f`` over a list of batches is the Frobenius ratio over all of them::

    change = sqrt(Σ_b ‖f'(x_b) − f(x_b)‖²) / sqrt(Σ_b ‖f(x_b)‖²)

which for a linear model ``y = W x`` and inputs ``X`` is ``‖(W' − W) X‖_F / ‖W X‖_F``.
Padding does not count: when a mapping batch holds an ``attention_mask`` of shape ``(B, T)``
and the output's first two dimensions are ``(B, T)`` (a ``last_hidden_state``, token logits),
the positions where the mask is 0 are left out of both sums (:func:`position_mask`).  An
output without that layout (sentence logits ``(B, C)``) is compared whole.

No claim rests on data that cannot carry one: a floating-point tensor of a batch holding NaN or
Inf is refused (:func:`check_finite`, naming the batch and its key; integer tensors such as token
ids are not checked), a batch the unchanged model cannot run raises a ``ValueError`` naming the
batch, and so does a finite batch on which the unchanged model's own output is not finite.  A
*changed* model whose output holds NaN or Inf has the change ``inf``.

Example
-------
>>> import torch
>>> model = torch.nn.Linear(3, 2)
>>> batches = [torch.randn(4, 3), torch.randn(4, 3)]
>>> probe = OutputProbe(model, batches)
>>> probe.change(model)
0.0
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rmtprune._util.validation import check_real

__all__ = [
    "OutputProbe",
    "as_batches",
    "call_model",
    "check_finite",
    "describe_batch",
    "first_tensor",
    "position_mask",
    "run_batch",
    "split_batches",
]


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor in a model's output (tensor, mapping / ``ModelOutput``, tuple or list).

    >>> first_tensor({"logits": torch.ones(2), "aux": torch.zeros(1)}).tolist()
    [1.0, 1.0]
    """
    if isinstance(output, torch.Tensor):
        return output
    values: Iterable[Any] = ()
    if isinstance(output, Mapping):
        values = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    for value in values:
        try:
            return first_tensor(value)
        except TypeError:
            continue
    raise TypeError(
        "The model output holds no tensor to compare (expected a tensor, or a mapping, tuple "
        f"or list containing one). Got {type(output).__name__} instead."
    )


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model(batch)``, ``model(*batch)`` or ``model(**batch)`` depending on the batch type."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _tensors(batch: Any, where: str = "") -> Iterable[tuple[str, torch.Tensor]]:
    """Every tensor of a batch with where it sits (``", key 'x'"``, ``", item 1"``)."""
    if isinstance(batch, torch.Tensor):
        yield where, batch
    elif isinstance(batch, Mapping):
        for key, value in batch.items():
            yield from _tensors(value, f"{where}, key {key!r}")
    elif isinstance(batch, (tuple, list)):
        for j, value in enumerate(batch):
            yield from _tensors(value, f"{where}, item {j}")


def _non_finite(tensor: torch.Tensor) -> tuple[int, int]:
    """``(NaN count, Inf count)`` of a floating-point or complex tensor; ``(0, 0)`` otherwise."""
    if tensor.is_meta or not (tensor.is_floating_point() or tensor.is_complex()):
        return 0, 0
    if bool(torch.isfinite(tensor).all()):
        return 0, 0
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


def check_finite(
    batches: Sequence[Any],
    owner: str,
    param: str = "calibration",
    numbers: Sequence[int] | None = None,
) -> None:
    """Refuse a batch holding NaN or Inf in a floating-point tensor, naming the batch.

    Integer tensors (token ids, masks) are not checked.  ``numbers`` are the batches'
    numbers in the user's list (default ``0, 1, ...``).

    >>> check_finite([torch.zeros(2), {"x": torch.tensor([1.0, float("nan")])}], "f")
    Traceback (most recent call last):
    ...
    ValueError: The 'calibration' parameter of f must hold finite values only. Got 1 NaN and 0 Inf values in batch 1, key 'x' instead.
    """  # noqa: E501
    for i, batch in zip(range(len(batches)) if numbers is None else numbers, batches, strict=True):
        for where, tensor in _tensors(batch):
            nan, inf = _non_finite(tensor)
            if nan or inf:
                raise ValueError(
                    f"The {param!r} parameter of {owner} must hold finite values only. "
                    f"Got {nan} NaN and {inf} Inf values in batch {i}{where} instead."
                )


def describe_batch(batch: Any) -> str:
    """A short description of a batch by its tensors' shapes (for error messages).

    >>> describe_batch({"input_ids": torch.zeros(2, 5, dtype=torch.long)})
    "a mapping {'input_ids': (2, 5)}"
    """

    def short(value: Any) -> str:
        return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__

    if isinstance(batch, torch.Tensor):
        return f"a tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return "a mapping {" + ", ".join(f"{k!r}: {short(v)}" for k, v in batch.items()) + "}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} (" + ", ".join(short(v) for v in batch) + ")"
    return f"a {type(batch).__name__}"


def run_batch(model: nn.Module, batch: Any, number: int) -> Any:
    """:func:`call_model` on calibration batch ``number``; a failure names the batch.

    Any exception of the forward pass but running out of memory becomes a ``ValueError``
    that names the batch and its shapes, chained to the original error.
    """
    try:
        return call_model(model, batch)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:
        raise ValueError(
            f"Calibration batch {number} ({describe_batch(batch)}) could not be passed "
            f"through the model: {type(err).__name__}: {err}"
        ) from err


def as_batches(
    calibration: Any, owner: str, *, minimum: int = 1, param: str = "calibration"
) -> list[Any]:
    """The calibration batches as a list (a generator is consumed once), checked for length
    and for finite values (:func:`check_finite`); ``param`` is the parameter's name."""
    if calibration is None or isinstance(calibration, (torch.Tensor, str, bytes, Mapping)):
        raise TypeError(
            f"The {param!r} parameter of {owner} must be an iterable of model inputs "
            "(tensors, tuples or dicts), e.g. a list of batches or a DataLoader. "
            f"Got {type(calibration).__name__} instead."
        )
    try:
        batches = list(calibration)
    except TypeError:
        raise TypeError(
            f"The {param!r} parameter of {owner} must be an iterable of model inputs. "
            f"Got {type(calibration).__name__} instead."
        ) from None
    if len(batches) < minimum:
        raise ValueError(
            f"The {param!r} parameter of {owner} must hold at least {minimum} batches"
            f"{' (some to fit, some held out)' if minimum > 1 else ''}. "
            f"Got {len(batches)} instead."
        )
    check_finite(batches, owner, param)
    return batches


def split_batches(
    batches: Sequence[Any], holdout: float, owner: str
) -> tuple[list[Any], list[Any]]:
    """Split batches into ``(fit, held_out)``; batch ``i`` is held out iff
    ``⌊(i + 1) h⌋ > ⌊i h⌋`` (``h = holdout``), which spreads the held-out batches evenly
    (``h = 0.5``: the odd-numbered ones), so data sorted by length is split fairly.

    >>> split_batches([0, 1, 2, 3, 4], 0.5, "f")
    ([0, 2, 4], [1, 3])
    """
    h = check_real(holdout, "holdout", owner, low=0.0, high=1.0, low_open=True, high_open=True)
    fit: list[Any] = []
    held: list[Any] = []
    for i, batch in enumerate(batches):
        (held if math.floor((i + 1) * h + 1e-12) > math.floor(i * h + 1e-12) else fit).append(batch)
    if not fit or not held:
        raise ValueError(
            f"The 'holdout' parameter of {owner} leaves no batch to "
            f"{'fit' if not fit else 'hold out'} with {len(batches)} batches. "
            f"Got {holdout!r} instead."
        )
    return fit, held


def position_mask(batch: Any, output: torch.Tensor) -> torch.Tensor | None:
    """The weights (1 = real token, 0 = padding) of ``output``'s positions, or None.

    Only for a mapping batch with a 2-D ``attention_mask`` equal in shape to the first two
    dimensions of ``output``; shaped to broadcast against ``output``.

    >>> mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    >>> batch = {"input_ids": torch.zeros(2, 3), "attention_mask": mask}
    >>> position_mask(batch, torch.zeros(2, 3, 4)).shape
    torch.Size([2, 3, 1])
    >>> position_mask(batch, torch.zeros(2, 5)) is None
    True
    """
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or output.dim() < 2:
        return None
    if tuple(output.shape[:2]) != tuple(mask.shape):
        return None
    weights = (mask != 0).to(torch.float64)
    return weights.reshape(*mask.shape, *([1] * (output.dim() - 2)))


def _masked_square_sum(values: torch.Tensor, mask: torch.Tensor | None) -> float:
    """``Σ values²`` over the positions ``mask`` keeps (all of them without a mask)."""
    return float((values if mask is None else values * mask).square().sum())


class OutputProbe:
    """Reference outputs of a model on fixed batches, to measure how much a change moves them.

    The reference model is run once (in eval mode, without gradients) when the probe is made;
    :meth:`change` runs another model (or the same one after a change) on the same batches.

    Parameters
    ----------
    model : torch.nn.Module
        The reference model (not modified; its train/eval mode is restored).
    batches : sequence
        Model inputs (see the module docstring); floating-point tensors must be finite.
    numbers : sequence of int, optional
        The batches' numbers in the user's list, for error messages (default ``0, 1, ...``).

    Raises
    ------
    ValueError
        When a batch holds NaN or Inf, cannot be run through ``model``, or ``model``'s own
        output on it is not finite; the message names the batch.
    """

    def __init__(
        self, model: nn.Module, batches: Sequence[Any], *, numbers: Sequence[int] | None = None
    ) -> None:
        self.batches = list(batches)
        self.numbers = list(range(len(self.batches)) if numbers is None else numbers)
        check_finite(self.batches, "OutputProbe", "batches", self.numbers)
        self.reference = [out.detach().to(torch.float64) for out in self._reference(model)]
        """The model's outputs in float64, whole (padding included: targets for training)."""
        self.masks = [
            position_mask(b, out) for b, out in zip(self.batches, self.reference, strict=True)
        ]
        pairs = zip(self.reference, self.masks, strict=True)
        self.norm = math.sqrt(sum(_masked_square_sum(r, m) for r, m in pairs))

    def _reference(self, model: nn.Module) -> list[torch.Tensor]:
        """:meth:`outputs` of the reference model, each batch's failure or non-finite output
        named."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                outputs = [
                    first_tensor(run_batch(model, b, i))
                    for b, i in zip(self.batches, self.numbers, strict=True)
                ]
        finally:
            model.train(was_training)
        for out, i in zip(outputs, self.numbers, strict=True):
            nan, inf = _non_finite(out)
            if nan or inf:
                raise ValueError(
                    f"The model's output on calibration batch {i} holds {nan} NaN and {inf} "
                    "Inf values although the batch is finite: the unchanged model does not "
                    "compute a finite output there, so no output change can be measured on it."
                )
        return outputs

    def outputs(self, model: nn.Module) -> list[torch.Tensor]:
        """The first output tensor of ``model`` on every batch (eval mode, no gradients)."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return [first_tensor(call_model(model, b)) for b in self.batches]
        finally:
            model.train(was_training)

    def change(self, model: nn.Module) -> float:
        """Relative output change ``‖f'(X) − f(X)‖_F / ‖f(X)‖_F`` of ``model`` on the batches
        (padded positions left out, see the module docstring); ``inf`` when ``model``'s
        output holds NaN or Inf."""
        total = 0.0
        for out, ref, mask in zip(self.outputs(model), self.reference, self.masks, strict=True):
            if out.shape != ref.shape:
                raise ValueError(
                    f"The changed model's output has shape {tuple(out.shape)}; the reference "
                    f"output has shape {tuple(ref.shape)}."
                )
            if any(_non_finite(out)):
                return math.inf
            total += _masked_square_sum(out.to(torch.float64) - ref, mask)
        if self.norm == 0.0:
            return 0.0 if total == 0.0 else math.inf
        return math.sqrt(total) / self.norm
