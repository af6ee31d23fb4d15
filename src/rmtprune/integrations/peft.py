"""PEFT (LoRA) models: nothing to call (``pip install rmtprune[peft]``, docs/peft.md).

:func:`rmtprune.prune` and :func:`rmtprune.analyze` recognise the layers of a ``peft`` model by
their class hierarchy (``peft`` itself is never imported by rmtprune): LoRA adapters are never
pruned, a LoRA base layer is fitted alone (its row says so), merges into a factorized base stay
exact, and ``PeftModel.save_pretrained`` of a pruned model refuses.  The mechanism lives beside
the Hugging Face save guard, in :mod:`rmtprune.factorize.peft_guard`; this module is its public
face.

Example
-------
>>> import torch
>>> pruned_layers(torch.nn.Linear(2, 2))
[]
"""

from __future__ import annotations

from rmtprune.factorize.peft_guard import (
    PRUNED_MARK,
    FactorMerge,
    is_lora_layer,
    is_tuner_layer,
    peft_roles,
    pruned_layers,
)

__all__ = [
    "PRUNED_MARK",
    "FactorMerge",
    "is_lora_layer",
    "is_tuner_layer",
    "peft_roles",
    "pruned_layers",
]
