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
    "first_tensor",
    "position_mask",
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


def as_batches(calibration: Any, owner: str, *, minimum: int = 1) -> list[Any]:
    """The calibration batches as a list (a generator is consumed once), checked for length."""
    if calibration is None or isinstance(calibration, (torch.Tensor, str, bytes, Mapping)):
        raise TypeError(
            f"The 'calibration' parameter of {owner} must be an iterable of model inputs "
            "(tensors, tuples or dicts), e.g. a list of batches or a DataLoader. "
            f"Got {type(calibration).__name__} instead."
        )
    try:
        batches = list(calibration)
    except TypeError:
        raise TypeError(
            f"The 'calibration' parameter of {owner} must be an iterable of model inputs. "
            f"Got {type(calibration).__name__} instead."
        ) from None
    if len(batches) < minimum:
        raise ValueError(
            f"The 'calibration' parameter of {owner} must hold at least {minimum} batches"
            f"{' (some to fit, some held out)' if minimum > 1 else ''}. "
            f"Got {len(batches)} instead."
        )
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
        Model inputs (see the module docstring).
    """

    def __init__(self, model: nn.Module, batches: Sequence[Any]) -> None:
        self.batches = list(batches)
        self.reference = [out.detach().to(torch.float64) for out in self.outputs(model)]
        """The model's outputs in float64, whole (padding included: targets for training)."""
        self.masks = [
            position_mask(b, out) for b, out in zip(self.batches, self.reference, strict=True)
        ]
        pairs = zip(self.reference, self.masks, strict=True)
        self.norm = math.sqrt(sum(_masked_square_sum(r, m) for r, m in pairs))

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
        (padded positions left out, see the module docstring)."""
        total = 0.0
        for out, ref, mask in zip(self.outputs(model), self.reference, self.masks, strict=True):
            if out.shape != ref.shape:
                raise ValueError(
                    f"The changed model's output has shape {tuple(out.shape)}; the reference "
                    f"output has shape {tuple(ref.shape)}."
                )
            total += _masked_square_sum(out.to(torch.float64) - ref, mask)
        if self.norm == 0.0:
            return 0.0 if total == 0.0 else math.inf
        return math.sqrt(total) / self.norm
