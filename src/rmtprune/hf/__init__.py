"""Hugging Face models: ``save_pretrained`` / ``from_pretrained`` of pruned models, and the
model directories (config.json + weights) that ``rmtprune analyze|prune`` read.

Example
-------
>>> from rmtprune.hf import from_pretrained, save_pretrained
>>> callable(from_pretrained) and callable(save_pretrained)
True
"""

from rmtprune.hf.pretrained import from_pretrained, save_pretrained

__all__ = ["from_pretrained", "save_pretrained"]
