"""Keep Hugging Face's own ``save_pretrained`` from writing a checkpoint that loads wrongly.

A Hugging Face model whose layers rmtprune factorized saves, through its own
``model.save_pretrained(directory)`` (also called by the ``Trainer`` and ``push_to_hub``), a
``model.safetensors`` with ``…first.weight``/``…second.weight`` keys.  A plain
``ModelClass.from_pretrained(directory)`` would build the dense model, find those keys
unexpected and the dense ``…weight`` missing, re-initialise the pruned layers at random and
only log a table: a model that silently computes something else.

:func:`guard_hf_save` closes that door at the one place every factorization goes through
(:func:`rmtprune.factorize.set_submodule`): each Hugging Face model in the tree gets an
instance-level ``save_pretrained`` (:class:`MarkingSave`) that runs Hugging Face's own
method unchanged (same files, sharding, ``state_dict=``/``is_main_process=`` arguments, so
``Trainer`` checkpoints resume as before) and then, if the model holds factorized layers,
marks ``config.json`` with :data:`MARKER`.  The marker has the shape of a quantization
config without a ``quant_method``, which ``transformers``' ``from_pretrained`` refuses with a
``ValueError`` instead of loading.  :func:`rmtprune.from_pretrained` recognises the marker,
removes it and loads the directory exactly.

A Hugging Face model that *contains* the pruned one (``prune(model.bert)`` then
``model.save_pretrained``) is outside that tree, so the first guard also wraps, once per
process, the ``save_pretrained`` of ``transformers``' ``PreTrainedModel`` class itself
(:func:`guard_hf_class`): every model's save then checks for factorized layers, and one
without any calls Hugging Face's method exactly as before.  A guarded model that is
unpickled or deep-copied installs that class wrapper again in its process.

A model whose factorized layers all went away again (or never came) saves unmarked: the
check happens at save time.

``transformers`` is never imported here: a model is recognised by its class hierarchy.
"""

from __future__ import annotations

import functools
import json
import os
import types
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from rmtprune._util.fileio import atomic_write_bytes
from rmtprune.factorize.lowrank import LowRankModule
from rmtprune.storage.metadata import META_KEY

__all__ = [
    "MARKER",
    "QUANTIZATION_KEY",
    "MarkingSave",
    "add_to_config",
    "guard_hf_class",
    "guard_hf_save",
    "is_hf_model",
    "is_marker",
    "unmark",
]

QUANTIZATION_KEY = "quantization_config"
"""The ``config.json`` entry that carries :data:`MARKER`."""
MARKER: Mapping[str, str] = types.MappingProxyType(
    {
        META_KEY: (
            "This checkpoint holds layers factorized by rmtprune (…first.weight/…second.weight); "
            "transformers' from_pretrained would re-initialise them at random. Load it with "
            "rmtprune.from_pretrained(ModelClass, directory)."
        )
    }
)
"""The ``quantization_config`` written into ``config.json`` of a factorized model."""
_ORIGINAL = "__rmtprune_wrapped__"
"""Attribute of the class wrapper holding Hugging Face's own ``save_pretrained``."""


def is_hf_model(module: object) -> bool:
    """Whether ``module`` is a ``transformers`` ``PreTrainedModel`` (no import of transformers)."""
    return isinstance(module, nn.Module) and _pretrained_base(type(module)) is not None


def is_marker(entry: object) -> bool:
    """Whether a ``quantization_config`` value (dict or config object) is :data:`MARKER`."""
    if not isinstance(entry, Mapping):
        entry = getattr(entry, "__dict__", None)
    return isinstance(entry, Mapping) and META_KEY in entry and "quant_method" not in entry


def unmark(config: Any) -> bool:
    """Remove :data:`MARKER` from a loaded Hugging Face config object; whether it was there."""
    if not is_marker(getattr(config, QUANTIZATION_KEY, None)):
        return False
    delattr(config, QUANTIZATION_KEY)
    return True


def add_to_config(directory: str, key: str, value: Any) -> None:
    """Set ``key`` in ``directory``'s ``config.json`` to ``value``, rewriting it atomically (as
    Hugging Face writes it: two-space indent, sorted keys)."""
    path = os.path.join(directory, "config.json")
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    document[key] = value
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))


def _mark(directory: str) -> None:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"save_pretrained wrote no {path}; the factorized layers cannot be marked, so a "
            "plain from_pretrained of this directory would re-initialise them. Save with "
            "rmtprune.save_pretrained(model, directory) instead."
        )
    add_to_config(directory, QUANTIZATION_KEY, dict(MARKER))


def _marking_save(
    original: Callable[..., Any], model: nn.Module, save_directory: Any, args: Any, kwargs: Any
) -> Any:
    """Run Hugging Face's ``save_pretrained`` (``original``); mark the directory if ``model``
    holds factorized layers."""
    factorized = any(isinstance(m, LowRankModule) for m in model.modules())
    if factorized and kwargs.get("push_to_hub"):
        raise ValueError(
            "The 'push_to_hub' parameter of save_pretrained must be False for a model with "
            "layers factorized by rmtprune: Hugging Face's save would upload config.json "
            "before rmtprune can mark it, and a plain from_pretrained of the upload would "
            "re-initialise those layers. Call model.push_to_hub(repo_id) instead (it saves "
            "through this marking save_pretrained first), or upload a directory written by "
            "rmtprune.save_pretrained. Got push_to_hub=True."
        )
    result = original(model, save_directory, *args, **kwargs)
    if factorized and kwargs.get("is_main_process", True):
        _mark(os.fspath(save_directory))
    return result


def _pretrained_base(cls: type) -> type | None:
    """``transformers``' ``PreTrainedModel`` among ``cls``'s bases, or None."""
    return next(
        (
            base
            for base in cls.__mro__
            if base.__name__ == "PreTrainedModel" and base.__module__.startswith("transformers")
        ),
        None,
    )


def guard_hf_class(cls: type) -> None:
    """Wrap ``save_pretrained`` of ``cls``'s ``transformers`` ``PreTrainedModel`` base, once.

    The wrapper marks the checkpoint of any model holding factorized layers (also a model that
    contains a pruned one) and otherwise calls Hugging Face's method unchanged.  Idempotent;
    a no-op for a class outside ``transformers``.
    """
    base = _pretrained_base(cls)
    original = None if base is None else base.__dict__.get("save_pretrained")
    if base is None or original is None or hasattr(original, _ORIGINAL):
        return

    @functools.wraps(original)
    def save_pretrained(self: nn.Module, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        return _marking_save(original, self, save_directory, args, kwargs)

    setattr(save_pretrained, _ORIGINAL, original)
    base.save_pretrained = save_pretrained  # type: ignore[attr-defined]


class MarkingSave:
    """The ``save_pretrained`` of a guarded model: Hugging Face's own, then the marker.

    A plain object rather than a bound method so that a deep copy rebinds it to the copy and
    a pickled model keeps it; restoring it (unpickling, deep copy) installs
    :func:`guard_hf_class` in the new process too.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        guard_hf_class(type(self.model))

    def __call__(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """Run Hugging Face's ``save_pretrained``; mark the directory if layers are factorized."""
        model = self.model
        guard_hf_class(type(model))
        method = type(model).save_pretrained  # type: ignore[attr-defined]
        if hasattr(method, _ORIGINAL):  # the class wrapper marks
            return method(model, save_directory, *args, **kwargs)
        return _marking_save(method, model, save_directory, args, kwargs)  # its own override


def guard_hf_save(model: nn.Module) -> None:
    """Give every Hugging Face model in ``model``'s tree the marking ``save_pretrained`` (and
    ``transformers``' model class its wrapper, :func:`guard_hf_class`).

    Idempotent; a no-op for models without ``transformers`` classes.
    """
    for module in model.modules():
        current = module.__dict__.get("save_pretrained")
        guarded = isinstance(current, MarkingSave) and current.model is module
        if is_hf_model(module) and not guarded:
            module.__dict__["save_pretrained"] = MarkingSave(module)
            guard_hf_class(type(module))
