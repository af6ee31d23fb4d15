"""Hugging Face model directories as command-line inputs and outputs (needs ``transformers``).

A model directory holds ``config.json`` and either ``model.safetensors`` or
shards ``model-0000X-of-0000N.safetensors`` with ``model.safetensors.index.json``.
The model class is the first entry of ``config.json``'s ``architectures``
(``AutoModel`` when there is none); everything is read with
``local_files_only=True``, so nothing is downloaded.

* :func:`build_architecture` builds that class on the ``meta`` device: the
  layer types and shapes, without memory or weights (used to name the type of
  each tensor of a checkpoint that is analysed one tensor at a time).
* :func:`load_model_directory` builds the real model with its weights, also
  for a directory written by :func:`rmtprune.hf.pretrained.save_pretrained` (factorized
  layers, read back with :func:`rmtprune.hf.pretrained.from_pretrained`).

A pruned model is written with :func:`rmtprune.hf.pretrained.save_pretrained`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from rmtprune.factorize.hf_guard import QUANTIZATION_KEY, is_marker, unmark
from rmtprune.storage.metadata import META_KEY
from rmtprune.storage.reader import open_checkpoint

__all__ = [
    "build_architecture",
    "is_marked_directory",
    "is_model_directory",
    "load_model_directory",
    "transformers_available",
]

PathLike = str | os.PathLike[str]


def transformers_available() -> bool:
    """Whether ``transformers`` can be imported."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def is_model_directory(path: PathLike) -> bool:
    """A directory with ``config.json`` and a safetensors checkpoint (single or sharded)."""
    path = os.fspath(path)
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def _config_and_class(directory: str) -> tuple[Any, Any]:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
        unmark(config)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{directory}/config.json cannot be read by transformers (pass --no-model to "
            f"analyse the tensors without it): {exc}"
        ) from None
    names = list(getattr(config, "architectures", None) or [])
    if not names:
        return config, transformers.AutoModel
    cls = getattr(transformers, names[0], None)
    if cls is None:
        raise ValueError(
            f"{directory}/config.json names the architecture {names[0]!r}, which transformers "
            f"{transformers.__version__} does not provide; pass --no-model to analyse the "
            "tensors without it"
        )
    return config, cls


def is_marked_directory(path: PathLike) -> bool:
    """Whether ``path`` is a model directory saved by Hugging Face's own ``save_pretrained`` of a
    model with factorized layers (its ``config.json`` carries the marker of
    :mod:`rmtprune.factorize.hf_guard`)."""
    if not is_model_directory(path):
        return False
    with open(os.path.join(os.fspath(path), "config.json"), encoding="utf-8") as handle:
        document = json.load(handle)
    return isinstance(document, dict) and is_marker(document.get(QUANTIZATION_KEY))


def _storage_dtype(config: Any) -> torch.dtype | None:
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else None


def _from_config(directory: str, device: str | None) -> nn.Module:
    config, cls = _config_and_class(directory)
    if device is None:
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    else:
        with torch.device(device):
            model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    dtype = _storage_dtype(config)
    if dtype is not None and dtype.is_floating_point:
        model.to(dtype)
    return model


def build_architecture(directory: PathLike) -> nn.Module:
    """The model class of ``directory`` built on the ``meta`` device (no weights, no memory)."""
    return _from_config(os.fspath(directory), "meta")


def load_model_directory(directory: PathLike) -> nn.Module:
    """The model of ``directory`` with its weights (``local_files_only=True``).

    A directory written by :func:`rmtprune.hf.pretrained.save_pretrained` is rebuilt from
    its config with its factorized layers (:func:`rmtprune.hf.pretrained.from_pretrained`);
    any other goes through the class's ``from_pretrained``.
    """
    directory = os.fspath(directory)
    checkpoint = open_checkpoint(directory)
    _, cls = _config_and_class(directory)
    if META_KEY in checkpoint.metadata or is_marked_directory(directory):
        from rmtprune.hf.pretrained import from_pretrained

        return from_pretrained(cls, directory)
    import transformers

    kwargs: dict[str, Any] = {"local_files_only": True}
    major = int(transformers.__version__.split(".")[0])
    kwargs["dtype" if major >= 5 else "torch_dtype"] = "auto"
    model: nn.Module = cls.from_pretrained(directory, **kwargs)
    return model
