"""Saving and loading pruned Hugging Face models as directories: :func:`save_pretrained`.

A pruned ``transformers`` model holds factorized layers (``…query.first.weight`` and
``…query.second.weight`` instead of ``…query.weight``).  Hugging Face's own
``from_pretrained`` knows nothing of them: given such a checkpoint it re-initialises every
pruned layer at random and only prints a table of missing and unexpected keys.  This module
stores and restores the factorized structure:

``save_pretrained(model, directory)`` writes

* ``config.json``: the model's Hugging Face config plus an ``"rmtprune"`` entry (format
  version, weights file name, the factorized structure of
  :func:`rmtprune.storage.format.describe_structure`,
  the dtype, the names of the layers with a sparsity mask under ``"masked"`` (only when
  there are some, :mod:`rmtprune.factorize.masks`), and the line ``"load_with"`` saying how
  to load the directory);
* ``rmtprune.safetensors``: the weights and structure, written by
  :func:`rmtprune.storage.format.save` (atomic, checksummed, tied tensors stored once,
  masked weights stored sparsely with their masks);
* ``generation_config.json`` for generative models.

There is deliberately no ``model.safetensors``: a plain ``AutoModel.from_pretrained(directory)``
fails with an ``OSError`` (no weights file it knows) instead of silently returning random
layers.  ``from_pretrained(model_class, directory)`` builds the dense model from the config,
rebuilds the factorized layers at the recorded ranks, then loads the weights: outputs are
bit-for-bit those of the saved model, and the masked layers have their masks again (the
saved ones; a masked weight tied to another, stored densely, gets its mask back from its
zeros).  It also reads a directory written by Hugging Face's
own ``pruned.save_pretrained(directory)`` (``model.safetensors``, possibly sharded, with
factorized keys and no ``"rmtprune"`` entry): the structure is then inferred from the tensor
names and shapes.  Such a directory carries the marker of
:mod:`rmtprune.factorize.hf_guard` in its ``config.json``, so that a plain Hugging Face
``from_pretrained`` of it raises instead of re-initialising the factorized layers.  Such a
directory holds masked weights as dense tensors with zeros (Hugging Face's readers expect
dense tensors) and no record of the masks: its model loads dense.

Example
-------
>>> import os, tempfile, torch
>>> import rmtprune
>>> from transformers import BertConfig, BertModel
>>> config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
...                     num_attention_heads=2, intermediate_size=64)
>>> dense = BertModel(config).eval()
>>> pruned, _ = rmtprune.prune(
...     dense,
...     criterion=rmtprune.MPCriterion(bulk_keep=0.0, min_rank=4, fit_cutoff=1e9),
...     select=rmtprune.Select(include="pooler.dense", min_dim=8),
...     split=True,
... )
>>> directory = tempfile.mkdtemp()
>>> rmtprune.save_pretrained(pruned, directory)
>>> sorted(os.listdir(directory))
['config.json', 'rmtprune.safetensors']
>>> again = rmtprune.from_pretrained(BertModel, directory)
>>> type(again.pooler.dense).__name__, again.pooler.dense.rank == pruned.pooler.dense.rank
('LowRankLinear', True)
>>> x = torch.tensor([[1, 2, 3]])
>>> torch.equal(again(x).pooler_output, pruned(x).pooler_output)
True
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import os
import shutil
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from rmtprune._util.fileio import replace_directory
from rmtprune.factorize.hf_guard import add_to_config, unmark
from rmtprune.factorize.lowrank import LowRankModule
from rmtprune.factorize.masks import mask_of, masked_layers, restore_masks
from rmtprune.factorize.registry import get_adapter, set_submodule
from rmtprune.storage.format import (
    FORMAT_VERSION,
    check_materialized,
    describe_structure,
    load,
    load_tensors,
    save,
)
from rmtprune.storage.metadata import META_KEY, check_module_names
from rmtprune.storage.reader import INDEX_NAME, PRUNED_NAME, SINGLE_NAME, open_checkpoint
from rmtprune.storage.sparse import TiedMaskWarning

__all__ = [
    "CONFIG_KEY",
    "TOKENIZER_FILES",
    "WEIGHTS_NAME",
    "from_pretrained",
    "is_weights_file",
    "save_pretrained",
    "tokenizer_files",
]

CONFIG_KEY = META_KEY
"""The entry of ``config.json`` that records the factorized structure (the one metadata key)."""
WEIGHTS_NAME = PRUNED_NAME
"""The weights file of a directory written by :func:`save_pretrained`."""

_LOAD_WITH = "rmtprune.from_pretrained(ModelClass, directory)"
_HF_WEIGHTS = ("model*.safetensors", INDEX_NAME, "pytorch_model*.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "*.model",  # sentencepiece: spiece.model, tokenizer.model, sentencepiece.bpe.model
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
)
"""Name patterns of the tokenizer and processor files ``save_pretrained(tokenizer_from=)``
copies: what a Hugging Face tokenizer or processor writes beside a model."""


def _check_hf_model(model: Any, owner: str) -> None:
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not callable(getattr(config, "save_pretrained", None)):
        raise TypeError(
            f"The 'model' parameter of {owner} must be a Hugging Face transformers model (an "
            f"nn.Module with a .config that has save_pretrained). Got {type(model).__name__} "
            "instead; use rmtprune.save for other models."
        )


def _stale_weights(directory: str) -> list[str]:
    found: list[str] = []
    for pattern in (WEIGHTS_NAME, *_HF_WEIGHTS):
        found.extend(sorted(glob.glob(os.path.join(glob.escape(directory), pattern))))
    return found


def _main_dtype(model: nn.Module) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for tensor in model.parameters():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=lambda d: counts[d]) if counts else torch.float32


def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    tokenizer_from: str | os.PathLike[str] | None = None,
) -> None:
    """Save a (pruned) Hugging Face model to ``directory`` so that it loads back exactly.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The model, factorized or not (not modified).
    directory : str or os.PathLike
        Created if needed.
    overwrite : bool
        Replace an earlier save.  Without it, a directory that already holds weights
        (``rmtprune.safetensors``, ``model*.safetensors``, ``pytorch_model*.bin``) raises
        ``FileExistsError``; with it those files are not carried into the new directory, so
        that no stale dense checkpoint is left for a plain Hugging Face loader to pick up.
    tokenizer_from : str or os.PathLike, optional
        A model directory (the one the model came from) whose tokenizer and processor files
        (:data:`TOKENIZER_FILES`) are copied into ``directory`` — copies, never links, so that
        nothing done to the output reaches them.  Without it, save the tokenizer yourself.

    Notes
    -----
    The directory is replaced atomically (:func:`rmtprune._util.fileio.replace_directory`):
    the new one is written beside it and takes its place only when complete, so a failure
    (a full disk, Ctrl-C) leaves the earlier save as it was.  Files of the earlier directory
    that are not weights (a tokenizer) are carried over.

    Examples
    --------
    See the module docstring.
    """
    _check_hf_model(model, "save_pretrained")
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(
            f"The 'directory' parameter of save_pretrained must be a directory. "
            f"Got the file {directory!r} instead."
        )
    stale = _stale_weights(directory) if os.path.isdir(directory) else []
    if stale and not overwrite:
        raise FileExistsError(
            f"{directory} already holds weights ({', '.join(os.path.basename(f) for f in stale)});"
            " pass overwrite=True to replace them"
        )
    sources = [] if tokenizer_from is None else tokenizer_files(tokenizer_from)
    with replace_directory(directory, keep=lambda name: not is_weights_file(name)) as stage:
        _write_pretrained(model, os.fspath(stage))
        for source in sources:
            shutil.copyfile(source, os.path.join(stage, os.path.basename(source)))


def tokenizer_files(directory: str | os.PathLike[str]) -> list[str]:
    """The paths of the files of ``directory`` that :data:`TOKENIZER_FILES` names, sorted."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise NotADirectoryError(
            f"The 'tokenizer_from' parameter of save_pretrained must be a directory. "
            f"Got {directory!r} instead."
        )
    return [
        os.path.join(directory, name)
        for name in sorted(os.listdir(directory))
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in TOKENIZER_FILES)
        and os.path.isfile(os.path.join(directory, name))
    ]


def is_weights_file(name: str) -> bool:
    """Whether a file name in a model directory is one of its weights files."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in (WEIGHTS_NAME, *_HF_WEIGHTS))


def _write_pretrained(model: nn.Module, directory: str) -> None:
    """Write the files of :func:`save_pretrained` into the (new, empty) ``directory``."""
    with warnings.catch_warnings():  # a tied masked weight's mask is re-created on loading
        warnings.simplefilter("ignore", TiedMaskWarning)
        save(model, os.path.join(directory, WEIGHTS_NAME))
    config: Any = model.config
    config.save_pretrained(directory)
    generation = getattr(model, "generation_config", None)
    can_generate = getattr(model, "can_generate", None)
    if generation is not None and callable(can_generate) and can_generate():
        generation.save_pretrained(directory)
    entry = {
        "format_version": FORMAT_VERSION,
        "weights": WEIGHTS_NAME,
        "dtype": str(_main_dtype(model)).removeprefix("torch."),
        "structure": describe_structure(model),
        "load_with": _LOAD_WITH,
    }
    masked = sorted(masked_layers(model))
    if masked:
        entry["masked"] = masked
    add_to_config(directory, CONFIG_KEY, entry)


def _restore_masked(model: nn.Module, names: Any, directory: str) -> None:
    """Give each layer named in the config's ``"masked"`` list that has no mask after loading
    (a weight stored densely, being tied to another) the mask of its zeros."""
    where = f"{directory}/config.json"
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"{where}: the {CONFIG_KEY!r} entry's 'masked' must be a list of layer names. "
            f"Got {names!r} instead."
        )
    check_module_names(where, names, "masked layer")
    missing = []
    for name in names:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"{where}: the masked layer {name!r} is not a layer of {type(model).__name__}"
            ) from None
        if mask_of(layer) is None:
            missing.append(name)
    restore_masks(model, missing)


_META_BUILD = threading.local()  # .depth > 0: this thread is inside parameters_on_meta
_META_LOCK = threading.Lock()
_META_USERS = 0  # threads inside parameters_on_meta, all together
_REGISTER = nn.Module.register_parameter  # torch's own, restored when the last user leaves


def _register_on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
    if getattr(_META_BUILD, "depth", 0) and param is not None:
        if type(param) is nn.Parameter and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
    _REGISTER(self, name, param)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Register every new ``nn.Parameter`` on the ``meta`` device; buffers stay where made.

    A model built inside holds no weight memory (its initialisation runs on ``meta``
    tensors, at no cost), while buffers its ``__init__`` computes and no checkpoint stores
    (position ids, rotary frequencies) are real.  Only the calling thread is affected:
    ``nn.Module.register_parameter`` is replaced while any thread is inside, by a function
    that moves a parameter to ``meta`` only in a thread that entered this context.
    """
    global _META_USERS, _REGISTER
    with _META_LOCK:
        if _META_USERS == 0:
            _REGISTER = nn.Module.register_parameter
            nn.Module.register_parameter = _register_on_meta  # type: ignore[method-assign]
        _META_USERS += 1
    depth = getattr(_META_BUILD, "depth", 0)
    _META_BUILD.depth = depth + 1
    try:
        yield
    finally:
        _META_BUILD.depth = depth
        with _META_LOCK:
            _META_USERS -= 1
            if _META_USERS == 0:
                nn.Module.register_parameter = _REGISTER  # type: ignore[method-assign]


def _build(model_class: Any, directory: str) -> tuple[nn.Module, dict[str, Any] | None]:
    """The dense model built from ``config.json`` and the ``"rmtprune"`` entry, if any."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory, trust_remote_code=False)  # never prompt
    unmark(config)
    entry = getattr(config, CONFIG_KEY, None)
    if entry is not None:
        delattr(config, CONFIG_KEY)  # a later save must not carry a stale structure
    build = getattr(model_class, "from_config", None)  # the Auto classes
    build = build if build is not None else getattr(model_class, "_from_config", None)
    if build is None:  # neither an Auto class nor a concrete PreTrainedModel class
        raise TypeError(
            "The 'model_class' parameter of from_pretrained must be a transformers model class "
            f"such as BertModel or AutoModel. Got {model_class!r} instead."
        )
    try:
        with parameters_on_meta():  # the weights come from the file: allocate none here
            model = build(config)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        model = build(config)  # an __init__ that reads its own parameters
    if entry is not None and not isinstance(entry, Mapping):
        raise ValueError(f"{directory}/config.json: the {CONFIG_KEY!r} entry is not an object")
    return model, None if entry is None else dict(entry)


def _hf_tensors(directory: str) -> dict[str, torch.Tensor]:
    """All tensors of the ``model.safetensors`` checkpoint (single file or sharded), aligned.

    Read by the one checked reader (:mod:`rmtprune.storage.reader`): shard names, links,
    headers and sizes are checked before any tensor is read.
    """
    for name in (INDEX_NAME, SINGLE_NAME):
        if os.path.isfile(os.path.join(directory, name)):
            return open_checkpoint(os.path.join(directory, name)).read_all()
    raise FileNotFoundError(
        f"{directory} holds no weights that from_pretrained can read: neither a "
        f"config.json {CONFIG_KEY!r} entry with {WEIGHTS_NAME} nor model.safetensors"
    )


def _factorize_like(model: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Factorize the layers whose checkpoint entries are ``first``/``second`` factors."""
    for name, module in list(model.named_modules()):
        if not name or f"{name}.first.weight" not in tensors or f"{name}.weight" in tensors:
            continue
        adapter = get_adapter(module)
        if adapter is None or isinstance(module, LowRankModule):
            raise ValueError(
                f"{where}: {name!r} is stored factorized but the model's layer there is a "
                f"{type(module).__name__}, which rmtprune cannot factorize"
            )
        first = tensors[f"{name}.first.weight"]
        rank = int(first.shape[1] if isinstance(module, nn.Embedding) else first.shape[0])
        m, n = adapter.matrix_shape(module)
        zeros = torch.zeros
        new = adapter.rebuild(module, zeros(m, rank), zeros(rank), zeros(rank, n), split=True)
        set_submodule(model, name, new)


def _load_hf_checkpoint(model: nn.Module, directory: str, dtype: torch.dtype | None) -> None:
    """Load a ``model.safetensors`` checkpoint written by Hugging Face's own save."""
    tensors = _hf_tensors(directory)
    _factorize_like(model, tensors, directory)
    floating = [t for t in tensors.values() if t.is_floating_point()]
    if dtype is None and floating:
        dtype = max(
            {t.dtype for t in floating},
            key=lambda d: sum(t.numel() for t in floating if t.dtype == d),
        )
    lost, unexpected = load_tensors(model, tensors, strict=False)  # tied names are not lost
    if unexpected or lost:
        raise ValueError(
            f"{directory}/model.safetensors does not fit {type(model).__name__}: "
            f"missing {sorted(lost)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    check_materialized(model, f"{directory}/model.safetensors")
    if dtype is not None:
        model.to(dtype)


def from_pretrained(
    model_class: Any,
    directory: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Load a directory written by :func:`save_pretrained` (or by HF's own save of a pruned model).

    The model is built from ``config.json`` (no download) without allocating its weights
    (its parameters on the ``meta`` device, :func:`parameters_on_meta`), its factorized layers
    are rebuilt at the recorded ranks, then the file's tensors become its weights: peak memory
    is about the checkpoint's size, not the dense model's.

    Parameters
    ----------
    model_class : type
        A ``transformers`` model class (``BertModel``, ``GPT2LMHeadModel``, …) or an Auto
        class (``AutoModel``, ``AutoModelForCausalLM``, …).
    directory : str or os.PathLike
        The saved directory.
    dtype : torch.dtype, optional
        Load in this dtype; default: the dtype the model was saved in.
    device : torch.device or str, optional
        Move the model there after loading.

    Returns
    -------
    nn.Module
        The model, in eval mode, computing exactly what the saved model computed, with the
        sparsity masks of the saved model (the layers listed under ``"masked"``).

    Examples
    --------
    See the module docstring.
    """
    directory = os.fspath(directory)
    if not os.path.isfile(os.path.join(directory, "config.json")):
        raise FileNotFoundError(
            f"The 'directory' parameter of from_pretrained must be a directory holding a "
            f"config.json. Got {directory!r} instead."
        )
    model, entry = _build(model_class, directory)
    if entry is None:
        _load_hf_checkpoint(model, directory, dtype)
    else:
        weights = entry.get("weights")
        if entry.get("format_version") != FORMAT_VERSION or not isinstance(weights, str):
            raise ValueError(
                f"{directory}/config.json: the {CONFIG_KEY!r} entry has format_version "
                f"{entry.get('format_version')!r} and weights {weights!r}; this version of "
                f"rmtprune reads format_version {FORMAT_VERSION}"
            )
        saved = getattr(torch, str(entry.get("dtype")), None)
        target = dtype if dtype is not None else saved
        load(model, os.path.join(directory, os.path.basename(weights)))
        _restore_masked(model, entry.get("masked", []), directory)
        if isinstance(target, torch.dtype):
            model.to(target)  # the loaded tensors and the buffers __init__ made
    if device is not None:
        model.to(device)
    return model.eval()
