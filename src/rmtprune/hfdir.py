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
  for a directory written by :func:`save_pruned_directory` (factorized layers).
* :func:`save_pruned_directory` writes a (pruned) model to a new directory.

.. note::
   :func:`save_pruned_directory` / :func:`load_model_directory` are a minimal
   implementation kept here for the command line; ``rmtprune.hf.save_pretrained``
   / ``rmtprune.hf.from_pretrained`` (issue 12, item 4) are meant to replace them
   at merge time, and the command line calls only these two functions.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

import torch
from torch import nn

from rmtprune.checkpoint import PRUNED_NAME, open_checkpoint

__all__ = [
    "build_architecture",
    "is_model_directory",
    "load_model_directory",
    "save_pruned_directory",
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

    A directory written by :func:`save_pruned_directory` is rebuilt from its
    config with its factorized layers (:func:`rmtprune.load`); any other goes
    through the class's ``from_pretrained``.
    """
    directory = os.fspath(directory)
    checkpoint = open_checkpoint(directory)
    if "rmtprune" in checkpoint.metadata:
        from rmtprune.io import load

        return load(_from_config(directory, None), checkpoint.path)
    import transformers

    _, cls = _config_and_class(directory)
    kwargs: dict[str, Any] = {"local_files_only": True}
    major = int(transformers.__version__.split(".")[0])
    kwargs["dtype" if major >= 5 else "torch_dtype"] = "auto"
    model: nn.Module = cls.from_pretrained(directory, **kwargs)
    return model


def _write_directory(model: nn.Module, target: str) -> None:
    from rmtprune.io import save

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(
            "The 'model' parameter of save_pruned_directory must be a transformers model "
            f"(with a .config). Got {type(model).__name__} instead."
        )
    config.save_pretrained(target)
    generation = getattr(model, "generation_config", None)
    if generation is not None and hasattr(generation, "save_pretrained"):
        generation.save_pretrained(target)
    save(model, os.path.join(target, PRUNED_NAME))


def save_pruned_directory(
    model: nn.Module, directory: PathLike, *, overwrite: bool = False
) -> None:
    """Write ``model`` as a model directory: ``config.json`` + ``model.rmtprune.safetensors``.

    The weights file is rmtprune's format (the factorized structure in its
    metadata) under a name that ``from_pretrained`` does not read, so a plain
    ``from_pretrained`` of the directory fails loudly rather than returning
    re-initialised layers.

    The directory is written under a temporary name next to ``directory`` and
    moved into place when complete; an existing ``directory`` is replaced only
    with ``overwrite=True``.  Read it back with :func:`load_model_directory`.
    (Minimal implementation; see the module note.)
    """
    target = os.path.abspath(os.fspath(directory))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; a directory is not
        _write_directory(model, staging)
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(
                prefix=f".{os.path.basename(target)}.", suffix=".old", dir=parent
            )
            os.rmdir(old)
            os.rename(target, old)
        os.rename(staging, target)
        if old is not None:
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        raise
