"""Pruning inside training stacks: Lightning, the Hugging Face Trainer and DDP.

Each integration is a thin adapter over :class:`rmtprune.SpectralPruner` and
:func:`rmtprune.update_optimizer`, in its own module, imported on demand::

    from rmtprune.integrations.lightning import SpectralPruningCallback      # rmtprune[lightning]
    from rmtprune.integrations.transformers import SpectralPruningCallback   # rmtprune[hf]
    from rmtprune.integrations import ddp                                    # torch only

Importing this package imports none of them (``import rmtprune`` never imports Lightning or
transformers).  See ``docs/integrations.md``.
"""

__all__: list[str] = []
