"""Pruning inside training stacks: Lightning, the Hugging Face Trainer, DDP, FSDP2 and PEFT.

Each integration is a thin adapter over :class:`rmtprune.SpectralPruner` and
:func:`rmtprune.update_optimizer`, in its own module, imported on demand::

    from rmtprune.integrations.lightning import SpectralPruningCallback      # rmtprune[lightning]
    from rmtprune.integrations.transformers import SpectralPruningCallback   # rmtprune[hf]
    from rmtprune.integrations import ddp                                    # torch only
    from rmtprune.integrations import fsdp                                   # torch only (FSDP2)

PEFT (LoRA) models need no call: :mod:`rmtprune.integrations.peft` (``rmtprune[peft]``) is used
by the core itself and imports ``peft`` only when a model holds PEFT layers (docs/peft.md).

Importing this package imports none of them (``import rmtprune`` never imports Lightning,
transformers, peft or ``torch.distributed.fsdp``).  See ``docs/integrations.md``.
"""

__all__: list[str] = []
