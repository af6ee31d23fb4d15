"""Hugging Face model directories as command-line inputs and outputs (needs ``transformers``).

A model directory holds ``config.json`` and either ``model.safetensors`` or
shards ``model-0000X-of-0000N.safetensors`` with ``model.safetensors.index.json``.
The model class is the first entry of ``config.json``'s ``architectures``
(``AutoModel`` when there is none); everything is read with
``local_files_only=True``, so nothing is downloaded, and ``trust_remote_code=False``: a
``config.json`` whose ``auto_map`` points to code in the directory (custom code) is refused
with a message, never run and never asked about.  A ``config.json`` that is not a JSON
object is refused naming the file and the position of the error.

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

from rmtprune._util.errors import InvalidFileError
from rmtprune.factorize.hf_guard import QUANTIZATION_KEY, is_marker, unmark
from rmtprune.storage.metadata import META_KEY
from rmtprune.storage.reader import open_checkpoint

__all__ = [
    "build_architecture",
    "is_marked_directory",
    "is_model_directory",
    "load_model_directory",
    "read_config",
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


def read_config(directory: PathLike) -> dict[str, Any]:
    """The parsed ``config.json`` of ``directory``; an ``InvalidFileError`` naming the file if it
    is not a JSON object (with the position of a syntax error)."""
    path = os.path.join(os.fspath(directory), "config.json")
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read())
    except UnicodeDecodeError as exc:
        raise InvalidFileError(path, f"{path} is not UTF-8 text ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InvalidFileError(
            path,
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "the file is damaged or was edited (pass --no-model to analyse the tensors without it)",
        ) from None
    if not isinstance(document, dict):
        raise InvalidFileError(
            path, f"{path} must hold a JSON object. Got a {type(document).__name__} instead."
        )
    return document


def _custom_code(directory: str, document: dict[str, Any]) -> ValueError:
    """The refusal of a ``config.json`` whose ``auto_map`` needs code from the directory."""
    path = os.path.join(directory, "config.json")
    mapped = document.get("auto_map")
    names = sorted(mapped) if isinstance(mapped, dict) else mapped
    return ValueError(
        f"{path} needs custom code (its 'auto_map' maps {names} to Python files of the model, "
        "which transformers does not provide); rmtprune never runs code from a model "
        "directory: pass --no-model to analyse the tensors without the model, or "
        "--model package.module:factory to build it with code you trust"
    )


def _config_and_class(directory: str) -> tuple[Any, Any]:
    import transformers

    document = read_config(directory)  # its errors name the file
    try:
        config = transformers.AutoConfig.from_pretrained(
            directory, local_files_only=True, trust_remote_code=False
        )
        unmark(config)
    except (OSError, ValueError, KeyError) as exc:
        if "auto_map" in document:
            raise _custom_code(directory, document) from None
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
    return is_marker(read_config(path).get(QUANTIZATION_KEY))


def _storage_dtype(config: Any) -> torch.dtype | None:
    # transformers 5 reads a config's "torch_dtype" into ``dtype`` and warns on the old name
    # (a property); older versions kept it as a plain attribute, read without the property
    dtype = getattr(config, "dtype", None) or vars(config).get("torch_dtype")
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
