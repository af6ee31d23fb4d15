"""What ``rmtprune analyze`` and ``rmtprune prune`` work on: files, shards and model directories.

:func:`plan_input` looks at the input once and decides its route (an :class:`InputPlan`);
:func:`analyze_input` and :func:`prune_input` are the one entry point of each command for
files: they take the plan, one :class:`~rmtprune.pruning.criteria.MPCriterion` (or any
criterion, for ``prune``) and one :class:`~rmtprune.pruning.selection.Select`, open the
input once (a safetensors header is parsed once) and return the report.  The routes:

1. ``"factory"`` (``--model package.module:factory``): the factory's model, with the
   weights (any accepted file, a sharded index or a model directory) loaded into it.
2. ``"model directory"``: a Hugging Face model directory (``config.json`` + safetensors,
   sharded or not) with ``transformers`` installed and without ``--no-model``: the real
   architecture (``config.json``'s ``architectures``), ``local_files_only``.
   ``prune`` loads the model and writes a model directory;
   ``analyze`` builds the architecture on the ``meta`` device only, for the
   layer types, and reads the weights one tensor at a time.
3. ``"checkpoint"`` and ``"state dict"``: anything else (a ``.safetensors`` file, an index or
   a directory without transformers or with ``--no-model``; a ``.pt`` state dict): no layer
   type is guessed (:mod:`rmtprune.ondisk.analysis`).  Every weight matrix is
   analysed; only the factorized layers recorded in an rmtprune file and the
   weights the user names with ``assume_linear`` / ``assume_conv2d`` can be
   pruned, never a weight whose name says embedding, norm or position.
   A safetensors checkpoint (file, index or directory) is streamed by both:
   ``analyze`` fits one layer at a time, ``prune`` prunes and writes one layer at a
   time (:mod:`rmtprune.ondisk.prune`); a ``.pt`` state dict is loaded whole.  A criterion
   that decides from all layers at once (not :func:`~rmtprune.pruning.criteria.layerwise`)
   reads the checkpoint whole.

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file
>>> from rmtprune.pruning.criteria import MPCriterion
>>> from rmtprune.pruning.selection import Select
>>> _ = torch.manual_seed(0)
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save_file({"fc.weight": torch.randn(200, 300), "pos_embed.weight": torch.randn(64, 300)}, path)
>>> plan = plan_input(path, assume_linear=["*"])
>>> plan.route, plan.writes_directory
('checkpoint', False)
>>> report = analyze_input(plan, MPCriterion(), Select(), progress=False)
>>> [(row.name, row.layer_type) for row in report]
[('fc', 'Linear'), ('pos_embed', 'unknown 2-D')]
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from rmtprune._util.apart import check_apart
from rmtprune._util.fileio import check_input_file
from rmtprune.factorize.registry import get_adapter
from rmtprune.hf.directory import (
    build_architecture,
    is_marked_directory,
    is_model_directory,
    load_model_directory,
    transformers_available,
)
from rmtprune.hf.pretrained import save_pretrained
from rmtprune.ondisk.analysis import (
    LayerKind,
    checkpoint_shapes,
    classify_tensors,
    fit_checkpoint_layers,
    fit_layer,
    model_report,
    natural_key,
    select_kinds,
)
from rmtprune.ondisk.prune import (
    CheckpointTensors,
    StreamPlan,
    complete_report,
    fit_shell_layers,
    meta_shell,
    prune_checkpoint,
    skipped_row,
)
from rmtprune.ondisk.sources import (
    carried_values,
    load_model,
    load_shell,
    module_aliases,
    outside_modules,
    read_tensors,
    tensor_dtypes,
)
from rmtprune.pruning.criteria import Criterion, MPCriterion, layerwise
from rmtprune.pruning.options import check_criterion
from rmtprune.pruning.report import LayerAnalysis, ModelReport, PruneReport
from rmtprune.pruning.selection import Select, matches
from rmtprune.pruning.walker import SplitMode, analyze, check_split, prune
from rmtprune.storage.format import save
from rmtprune.storage.inputs import read_document
from rmtprune.storage.metadata import META_KEY, check_module_names, is_sparse_key
from rmtprune.storage.reader import Checkpoint, is_safetensors_file, open_checkpoint
from rmtprune.storage.sparse import expand_sparse

__all__ = [
    "InputPlan",
    "OpenInput",
    "Route",
    "analyze_input",
    "open_input",
    "plan_input",
    "prune_input",
]

PathLike = str | os.PathLike[str]
Route = Literal["factory", "model directory", "checkpoint", "state dict"]
"""How an input is read (module docstring, steps 1–3)."""


@dataclass(frozen=True)
class InputPlan:
    """The input of ``rmtprune analyze|prune`` and its route, from :func:`plan_input`.

    No header is read yet.  ``stream=False`` reads a safetensors checkpoint whole instead of
    one layer at a time (the reference the streamed route is tested against).
    """

    path: str
    route: Route
    model: str | None = None
    assume_linear: tuple[str, ...] = ()
    assume_conv2d: tuple[str, ...] = ()
    stream: bool = True

    @property
    def writes_directory(self) -> bool:
        """Whether ``rmtprune prune`` writes a model directory (not one file)."""
        return self.route == "model directory"


def plan_input(
    path: PathLike,
    *,
    model: str | None = None,
    no_model: bool = False,
    assume_linear: Sequence[str] = (),
    assume_conv2d: Sequence[str] = (),
    stream: bool = True,
) -> InputPlan:
    """Decide the route of ``path`` (module docstring); a missing or unreadable file is named.

    ``model`` is ``"package.module:factory"``; ``no_model`` keeps a model directory from
    being built with transformers; ``assume_linear`` / ``assume_conv2d`` name the weights of
    unknown type to treat as ``nn.Linear`` / ``nn.Conv2d``.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        check_input_file(path, what="weights file")  # missing or unreadable: named, one line
    route: Route
    if model is not None and (assume_linear or assume_conv2d):
        option = "--assume-linear" if assume_linear else "--assume-conv2d"
        raise ValueError(
            f"{option} names weights of unknown type; with --model the factory's model gives "
            f"every layer its type: leave {option} out"
        )
    if model is not None:
        route = "factory"
    elif not no_model and is_model_directory(path) and transformers_available():
        route = "model directory"
    elif os.path.isdir(path) or path.endswith(".index.json") or is_safetensors_file(path):
        route = "checkpoint"
    else:
        route = "state dict"
    return InputPlan(path, route, model, tuple(assume_linear), tuple(assume_conv2d), stream)


@dataclass
class OpenInput:
    """An input opened by :func:`open_input`: the model the walker works on plus the weights
    it holds only as tensors.

    ``untyped`` are the weight matrices of unknown type (buffers of the shell model),
    analysed and reported but never pruned; ``directory`` says that the result is written as
    a model directory.  With a ``plan`` the model is a ``meta``-device shell, ``tensors`` are
    read from disk on access and :func:`prune_input` streams.
    """

    model: nn.Module
    path: str
    directory: bool = False
    untyped: tuple[LayerKind, ...] = ()
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    carried_params: int = 0
    plan: StreamPlan | None = None


def _typed_names(opened: OpenInput) -> list[str]:
    return [n for n, m in opened.model.named_modules() if n and get_adapter(m) is not None]


def _known(opened: OpenInput, patterns: Sequence[str], param: str) -> None:
    """Every pattern matches a layer or an untyped weight (else the walker's error)."""
    modules, untyped = _typed_names(opened), [k.name for k in opened.untyped]
    for pattern in patterns:
        if not any(matches(n, pattern) for n in [*modules, *untyped]):
            raise ValueError(
                f"The {param!r} parameter names {pattern!r}, which matches no weight layer. "
                f"Valid names: {sorted(set(modules) | set(untyped))}"
            )


def _walker_select(opened: OpenInput, select: Select) -> Select:
    """``select`` for the walker: its patterns less those that only name untyped weights."""
    if not opened.untyped:
        return select
    modules = _typed_names(opened)
    include = select.include
    if include is not None:
        _known(opened, include, "layers")
        include = [p for p in include if any(matches(n, p) for n in modules)]
    _known(opened, select.exclude, "exclude")
    exclude = [p for p in select.exclude if any(matches(n, p) for n in modules)]
    return replace(select, include=include, exclude=exclude)


def _untyped_kinds(opened: OpenInput, select: Select) -> list[LayerKind]:
    """The untyped weights ``select`` names (all when it names none), less those excluded."""
    kinds = list(opened.untyped)
    if select.include is not None:
        kinds = [k for k in kinds if matches(k.name, select.include)]
    return [k for k in kinds if not matches(k.name, select.exclude)]


def _fit(
    opened: OpenInput, kind: LayerKind, criterion: MPCriterion, select: Select
) -> LayerAnalysis:
    """The row of one untyped weight, its tensors read only now (not at all when its dtype is
    not floating point: the row only says so)."""
    tensors = opened.tensors
    if not kind.floating and isinstance(tensors, CheckpointTensors):
        return fit_layer(kind, tensors.meta_of(kind.weight), None, criterion, select)
    bias = tensors.get(kind.bias or "")
    return fit_layer(kind, tensors[kind.weight], bias, criterion, select)


def _merged(rows: Sequence[LayerAnalysis], extra: Sequence[LayerAnalysis]) -> list[LayerAnalysis]:
    if not extra:
        return list(rows)
    return sorted([*rows, *extra], key=lambda r: natural_key(r.name))


def _check(criterion: object, select: object, owner: str) -> None:
    if not isinstance(select, Select):
        raise TypeError(
            f"The 'select' parameter of {owner} must be a rmtprune.Select. "
            f"Got {type(select).__name__} instead."
        )
    if owner == "analyze_input" and not isinstance(criterion, MPCriterion):
        raise TypeError(
            "The 'criterion' parameter of analyze_input must be an MPCriterion (analyze "
            f"reports the MP fit). Got {type(criterion).__name__} instead."
        )
    check_criterion(criterion, owner)


def analyze_input(
    plan: InputPlan, criterion: MPCriterion, select: Select, *, progress: bool | None = None
) -> ModelReport:
    """The report of ``rmtprune analyze``: :func:`rmtprune.analyze` of the input of ``plan``.

    ``criterion``'s ``alpha``, ``beta`` and ``fit_cutoff`` fit every layer that ``select``
    chooses; ``progress`` as for :class:`rmtprune.ondisk.progress.CheckpointProgress`.
    """
    _check(criterion, select, "analyze_input")
    checkpoint = None
    if plan.route in ("model directory", "checkpoint"):
        checkpoint = open_checkpoint(plan.path)  # the one reading of the headers
        names = checkpoint.names()
        if META_KEY in checkpoint.metadata:  # sparse storage: checked once read dense (_open)
            names = [name for name in names if not is_sparse_key(name)]
        check_module_names(checkpoint.path, names, "tensor name")
        if META_KEY not in checkpoint.metadata and not is_marked_directory(plan.path):
            directory = plan.route == "model directory"
            kinds = classify_tensors(
                checkpoint_shapes(checkpoint),
                architecture=build_architecture(plan.path) if directory else None,
                assume_linear=plan.assume_linear,
                assume_conv2d=plan.assume_conv2d,
            )
            kinds = select_kinds(kinds, select)
            rows = fit_checkpoint_layers(checkpoint, kinds, criterion, select, progress=progress)
            return model_report(rows, criterion)
    opened = _open(plan, checkpoint, whole=False)
    walker, untyped = _walker_select(opened, select), _untyped_kinds(opened, select)
    if opened.plan is not None:  # one layer read at a time (the model is a meta shell)
        found, extra = fit_shell_layers(opened.plan, walker, criterion, untyped, progress=progress)
    else:
        found = list(analyze(opened.model, criterion=criterion, select=walker, progress=progress))
        extra = [_fit(opened, kind, criterion, select) for kind in untyped]
    return model_report(_merged(found, extra), criterion)


def open_input(plan: InputPlan, *, whole: bool = False) -> OpenInput:
    """Open the input of ``plan`` for :func:`prune_input` (a safetensors header is read once).

    A safetensors checkpoint is streamed unless ``whole`` (or ``plan.stream=False``): a
    model-level criterion (``decide_model``) sees every layer at once, so it needs it whole
    (not :func:`~rmtprune.pruning.criteria.layerwise`).
    """
    checkpoint = open_checkpoint(plan.path) if plan.route == "checkpoint" else None
    return _open(plan, checkpoint, whole=whole)


def prune_input(
    source: InputPlan | OpenInput,
    criterion: Criterion,
    select: Select,
    *,
    split: SplitMode = "auto",
    dry_run: bool = False,
    output: PathLike | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> PruneReport:
    """What ``rmtprune prune`` does: :func:`rmtprune.prune` of ``source`` (a plan, or the input
    :func:`open_input` opened) with ``criterion`` and ``select``, a skipped row (and its
    analysis) for every untyped weight, the carried tensors counted in the totals, and
    ``output`` written (unless ``dry_run``).

    A checkpoint is pruned one layer at a time; a model-level criterion (``decide_model``)
    sees every layer at once, so a plan is then opened whole (an input opened to stream is
    refused), unless it is :func:`~rmtprune.pruning.criteria.layerwise`.
    """
    _check(criterion, select, "prune_input")
    check_split(split, criterion, "prune_input")
    if output is None and not dry_run:
        raise ValueError(
            "The 'output' parameter of prune_input is required unless dry_run=True. "
            "Got None instead."
        )
    whole = not layerwise(criterion)
    opened = open_input(source, whole=whole) if isinstance(source, InputPlan) else source
    if whole and opened.plan is not None:
        raise ValueError(
            f"The 'criterion' parameter of prune_input is model-level ({criterion!r}): it needs "
            "the input whole; open it with open_input(plan, whole=True)."
        )
    walker = _walker_select(opened, select)
    if opened.plan is not None and output is not None and not dry_run:
        _check_output(opened, output, opened.plan.tensors.checkpoint.files())  # no shard lost
    fit = criterion if isinstance(criterion, MPCriterion) else MPCriterion()
    bulk_keep = float(getattr(criterion, "bulk_keep", math.nan))  # as the walker's rows
    untyped = _untyped_kinds(opened, select)
    extra = [skipped_row(_fit(opened, kind, fit, select), bulk_keep) for kind in untyped]
    if opened.plan is not None:
        return prune_checkpoint(
            opened.plan,
            criterion,
            walker,
            split=split,
            dry_run=dry_run,
            output=output,
            overwrite=overwrite,
            progress=progress,
            extra=extra,
            carried=opened.carried_params,
        )
    pruned, report = prune(
        opened.model,
        criterion=criterion,
        select=walker,
        split=split,
        dry_run=dry_run,
        inplace=True,
        progress=progress,
    )
    report = complete_report(report, extra, opened.carried_params)
    if output is not None and not dry_run:
        _save(opened, pruned, output, overwrite=overwrite)
    return report


def _check_output(opened: OpenInput, output: PathLike, inputs: Sequence[str] = ()) -> None:
    """Refuse to write ``output`` over the input or one of its files (shards): the one check of
    :func:`rmtprune._util.apart.check_apart`."""
    where = {"the output": output}
    check_apart(
        [opened.path, *inputs],
        files=None if opened.directory else where,
        directories=where if opened.directory else None,
    )


def _save(opened: OpenInput, model: nn.Module, output: PathLike, *, overwrite: bool) -> None:
    """Write the pruned ``model``: a model directory for a directory input, else one file."""
    _check_output(opened, output)
    if opened.directory:
        if os.fspath(output).endswith(".safetensors"):
            raise ValueError(
                f"the input {opened.path} is a model directory, so the output is one too; "
                f"got the file name {os.fspath(output)} (or pass --no-model for one file)"
            )
        save_pretrained(model, output, overwrite=overwrite, tokenizer_from=opened.path)
    else:
        save(model, output, overwrite=overwrite)


def _open(plan: InputPlan, checkpoint: Checkpoint | None, *, whole: bool) -> OpenInput:
    """Open the input of ``plan`` (``checkpoint``: its headers, already read) for the walker."""
    if plan.route == "factory":
        return OpenInput(load_model(plan.path, model=plan.model), plan.path)
    if plan.route == "model directory":
        if plan.assume_linear or plan.assume_conv2d:
            option = "--assume-linear" if plan.assume_linear else "--assume-conv2d"
            raise ValueError(
                f"{option} names weights of unknown type, but {plan.path} is pruned as the "
                "model its config.json builds, which gives every layer its type; leave "
                f"{option} out, or pass --no-model to prune the tensors without the model"
            )
        return OpenInput(load_model_directory(plan.path), plan.path, directory=True)
    if checkpoint is not None and plan.stream and not whole:
        streamed = _open_streamed(plan, checkpoint)
        if streamed is not None:
            return streamed
    if checkpoint is not None:  # sparse weights of an rmtprune file are rebuilt dense
        stored = dict(checkpoint.iter_tensors())
        tensors = expand_sparse(checkpoint.path, checkpoint.metadata, stored)
        # the one metadata validator (rmtprune.storage.metadata): names and structure records
        document = read_document(checkpoint.path, checkpoint.metadata, tensors)
    else:
        tensors, document = read_tensors(plan.path)
    structure = dict(document["structure"]) if document else {}
    shown = tensors
    if document is not None:  # a tied entry is typed, analysed and loaded as its tensor
        aliases = document["aliases"]
        tensors = {**tensors, **{a: tensors[t] for a, t in aliases.items() if t in tensors}}
        # a module under a second name is the module under its first: typed and shown once
        same = module_aliases(tensors, aliases, structure)
        shown = {k: tensors[k] for k in outside_modules(tensors, same)}
    kinds = classify_tensors(
        tensor_dtypes(shown),
        assume_linear=plan.assume_linear,
        assume_conv2d=plan.assume_conv2d,
        skip=structure,
    )
    dense = {k.name: k.layer_type for k in kinds if k.typed}
    named = plan.path  # the file named in messages: a directory's checkpoint file
    if checkpoint is not None and os.path.isdir(plan.path):
        named = checkpoint.path
    shell = load_shell(tensors, document, named, dense=dense)
    untyped = tuple(k for k in kinds if not k.typed)
    return OpenInput(
        shell, plan.path, untyped=untyped, tensors=tensors, carried_params=carried_values(shell)
    )


def _open_streamed(plan: InputPlan, checkpoint: Checkpoint) -> OpenInput | None:
    """:func:`_open` of a safetensors checkpoint without reading its weights (only an
    rmtprune file's digest is computed, one tensor at a time); ``None`` where only the
    in-memory route reproduces what the loader does."""
    if META_KEY in checkpoint.metadata and any(map(is_sparse_key, checkpoint.names())):
        return None  # sparse storage: read dense in memory, as the loader does
    lazy = CheckpointTensors(checkpoint)
    stored = lazy.meta()
    # the one metadata validator (rmtprune.storage.metadata): names and structure records
    document = read_document(checkpoint.path, checkpoint.metadata, stored)
    if document is not None and checkpoint.path.endswith(".index.json"):
        return None  # shards with rmtprune metadata: the in-memory loader's own error
    if document is not None and document["aliases"]:
        return None  # tied entries: only the whole shell sees which layers share a weight
    structure = dict(document["structure"]) if document else {}
    kinds = classify_tensors(
        tensor_dtypes(stored),
        assume_linear=plan.assume_linear,
        assume_conv2d=plan.assume_conv2d,
        skip=structure,
    )
    if document is not None:
        lazy = CheckpointTensors(checkpoint, document["aliases"])
    dense = {k.name: k.layer_type for k in kinds if k.typed}
    checkpoint_file = checkpoint.path if os.path.isdir(plan.path) else plan.path
    stream_plan = meta_shell(lazy, document, checkpoint_file, dense)
    if stream_plan is None:
        return None
    untyped = tuple(k for k in kinds if not k.typed)
    return OpenInput(
        stream_plan.shell,
        plan.path,
        untyped=untyped,
        tensors=lazy,
        carried_params=carried_values(stream_plan.shell),
        plan=stream_plan,
    )
