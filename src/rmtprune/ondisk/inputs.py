"""What ``rmtprune analyze`` and ``rmtprune prune`` work on: files, shards and model directories.

The input is resolved in this order:

1. ``--model package.module:factory``: the factory's model, with the weights
   (any accepted file, a sharded index or a model directory) loaded into it.
2. A Hugging Face model directory (``config.json`` + safetensors, sharded or
   not) with ``transformers`` installed and without ``--no-model``: the real
   architecture (``config.json``'s ``architectures``), ``local_files_only``.
   ``prune`` loads the model and writes a model directory;
   ``analyze`` builds the architecture on the ``meta`` device only, for the
   layer types, and reads the weights one tensor at a time.
3. Anything else (a ``.safetensors`` file, a ``.pt`` state dict, a directory
   or index without transformers or with ``--no-model``): no layer type is
   guessed (:mod:`rmtprune.ondisk.analysis`).  Every weight matrix is
   analysed; only the factorized layers recorded in an rmtprune file and the
   weights the user names with ``assume_linear`` / ``assume_conv2d`` can be
   pruned, never a weight whose name says embedding, norm or position.
   A safetensors checkpoint (file, index or directory) is streamed by both:
   ``analyze`` fits one layer at a time, ``prune`` prunes and writes one layer at a
   time (:mod:`rmtprune.ondisk.prune`); a ``.pt`` state dict is loaded whole.

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file
>>> _ = torch.manual_seed(0)
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save_file({"fc.weight": torch.randn(200, 300), "pos_embed.weight": torch.randn(64, 300)}, path)
>>> source = open_for_pruning(path, assume_linear=["*"])
>>> [k.name for k in source.untyped], source.walker_layers(None)
(['pos_embed'], None)
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

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
    analyze_checkpoint,
    classify_tensors,
    fit_layer,
    natural_key,
)
from rmtprune.ondisk.progress import layer_cost
from rmtprune.ondisk.prune import (
    CheckpointTensors,
    StreamPlan,
    analyze_checkpoint_plan,
    meta_shell,
    prune_checkpoint,
)
from rmtprune.ondisk.sources import (
    load_model,
    load_shell,
    module_aliases,
    outside_modules,
    read_tensors,
)
from rmtprune.pruning.criteria import ModelCriterion
from rmtprune.pruning.options import legacy_options
from rmtprune.pruning.report import LayerAnalysis, LayerPruneResult, ModelReport, PruneReport
from rmtprune.pruning.selection import Select
from rmtprune.pruning.walker import SplitMode, analyze, prune
from rmtprune.storage.format import save
from rmtprune.storage.inputs import read_document
from rmtprune.storage.metadata import check_module_names
from rmtprune.storage.reader import is_safetensors_file, open_checkpoint

__all__ = ["PruneInput", "analyze_source", "open_for_pruning"]

PathLike = str | os.PathLike[str]

_SAFETENSORS_DTYPE = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
}


def _streamable(path: str) -> bool:
    """Whether ``path`` is a safetensors checkpoint (file, index or directory)."""
    return os.path.isdir(path) or path.endswith(".index.json") or is_safetensors_file(path)


def _model_route(path: str, model: str | None, no_model: bool) -> bool:
    """Whether the real Hugging Face architecture is used for ``path``."""
    return model is None and not no_model and is_model_directory(path) and transformers_available()


def writes_directory(path: PathLike, model: str | None, no_model: bool) -> bool:
    """Whether ``rmtprune prune`` of ``path`` writes a model directory (not one file)."""
    return _model_route(os.fspath(path), model, no_model)


def _patterns(requested: Sequence[str] | str) -> list[str]:
    return [requested] if isinstance(requested, str) else list(requested)


def _matching(names: Sequence[str], pattern: str) -> bool:
    return any(n == pattern or fnmatch.fnmatchcase(n, pattern) for n in names)


@dataclass
class PruneInput:
    """A model to prune plus the weights it holds only as tensors (see :func:`open_for_pruning`).

    ``model`` is what :func:`rmtprune.prune` works on; ``untyped`` are the weight
    matrices of unknown type (buffers of the shell model), analysed and reported
    but never pruned; ``directory`` says that the result is written as a model
    directory rather than one file.  With a ``plan`` the model is a ``meta``-device
    shell, ``tensors`` are read from disk on access and :meth:`prune` streams
    (:mod:`rmtprune.ondisk.prune`); ``options`` are those of :func:`open_for_pruning`.
    """

    model: nn.Module
    path: str
    directory: bool = False
    untyped: tuple[LayerKind, ...] = ()
    tensors: Mapping[str, torch.Tensor] = field(default_factory=dict)
    carried_params: int = 0
    plan: StreamPlan | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def walker_layers(
        self, requested: Sequence[str] | str | None, param: str = "layers"
    ) -> list[str] | None:
        """The ``layers`` argument for the walker: ``requested`` less what only names untyped
        weights (an error for a pattern that matches nothing at all)."""
        if requested is None or not self.untyped:
            return None if requested is None else list(_patterns(requested))
        patterns = _patterns(requested)
        modules = [n for n, m in self.model.named_modules() if n and get_adapter(m) is not None]
        untyped = [k.name for k in self.untyped]
        for pattern in patterns:
            if not _matching(modules, pattern) and not _matching(untyped, pattern):
                raise ValueError(
                    f"The {param!r} parameter names {pattern!r}, which matches no weight layer. "
                    f"Valid names: {sorted(set(modules) | set(untyped))}"
                )
        return [p for p in patterns if _matching(modules, p)]

    def walker_select(self, select: Select) -> Select:
        """``select`` for the walker: its patterns less those that only name untyped weights."""
        include = self.walker_layers(select.include)
        if not self.untyped or not select.exclude:
            return dataclasses.replace(select, include=include)
        modules = [n for n, m in self.model.named_modules() if n and get_adapter(m) is not None]
        self.walker_layers(select.exclude, "exclude")  # a pattern matching nothing is an error
        exclude = [p for p in select.exclude if _matching(modules, p)]
        return dataclasses.replace(select, include=include, exclude=exclude)

    def _untyped_fits(
        self, fit_kwargs: dict[str, Any]
    ) -> list[tuple[str, float, Callable[[], LayerAnalysis]]]:
        """``(name, cost, fit)`` of each requested untyped weight; a fit reads its tensors."""
        kinds = list(self.untyped)
        requested = fit_kwargs.pop("layers", None)
        if requested is not None:
            patterns = _patterns(requested)
            kinds = [k for k in kinds if any(_matching([k.name], p) for p in patterns)]
        excluded = _patterns(fit_kwargs.pop("exclude", None) or ())
        kinds = [k for k in kinds if not any(_matching([k.name], p) for p in excluded)]
        return [
            (k.name, layer_cost(k.shape), functools.partial(self._fit, k, fit_kwargs))
            for k in kinds
        ]

    def _fit(self, kind: LayerKind, fit_kwargs: Mapping[str, Any]) -> LayerAnalysis:
        """The row of one untyped weight, its tensors read only now."""
        bias = self.tensors.get(kind.bias or "")
        return fit_layer(kind, self.tensors[kind.weight], bias, **fit_kwargs)

    def analyze(self, progress: bool | None = None, **fit_kwargs: Any) -> ModelReport:
        """:func:`rmtprune.analyze` of the model plus the rows of the untyped weights."""
        given = dict(fit_kwargs)
        select = Select(
            given.pop("layers", None),
            given.pop("exclude", None) or (),
            **{k: given.pop(k) for k in ("min_dim", "min_params") if given.get(k) is not None},
        )
        walker, fits = self.walker_select(select), self._untyped_fits(dict(fit_kwargs))
        if self.plan is not None:  # one layer read at a time (the model is a meta shell)
            report, extra = analyze_checkpoint_plan(
                self.plan, walker, progress=progress, extra=fits, **given
            )
        else:
            options = legacy_options({"select": walker, **given}, "analyze")
            report = analyze(self.model, progress=progress, **options)
            extra = [fit() for _, _, fit in fits]
        if not extra:
            return report
        rows = sorted([*report.layers, *extra], key=lambda r: natural_key(r.name))
        return dataclasses.replace(report, layers=tuple(rows))

    def complete(self, report: PruneReport, *, bulk_keep: float, **fit_kwargs: Any) -> PruneReport:
        """``report`` of :func:`rmtprune.prune` on :attr:`model`, with a skipped row (and its
        analysis) for every untyped weight and the carried tensors counted in the totals."""
        fits = self._untyped_fits(dict(fit_kwargs))
        extra = [_skipped_row(fit(), bulk_keep) for _, _, fit in fits]
        rows = (
            report.layers
            if not extra
            else tuple(sorted([*report.layers, *extra], key=lambda r: natural_key(r.name)))
        )
        return dataclasses.replace(
            report,
            layers=rows,
            params_before=report.params_before + self.carried_params,
            params_after=report.params_after + self.carried_params,
        )

    def prune(
        self,
        criterion: Any,
        select: Select,
        *,
        split: SplitMode,
        dry_run: bool,
        output: PathLike | None,
        overwrite: bool = False,
        progress: bool | None = None,
        bulk_keep: float = 0.0,
        **fit_kwargs: Any,
    ) -> PruneReport:
        """What ``rmtprune prune`` does: prune, :meth:`complete` the report, write ``output``
        (unless ``dry_run``); ``fit_kwargs`` as for :meth:`complete`.

        With a :attr:`plan` one layer at a time; a model-level criterion (``decide_model``)
        sees every layer at once, so then the input is loaded whole.
        """

        if output is None and not dry_run:
            raise ValueError(
                "The 'output' parameter of PruneInput.prune is required unless dry_run=True. "
                "Got None instead."
            )

        def complete(report: PruneReport) -> PruneReport:
            return self.complete(report, bulk_keep=bulk_keep, **fit_kwargs)

        walker_select = self.walker_select(select)
        if self.plan is not None and isinstance(criterion, ModelCriterion):
            loaded = open_for_pruning(self.path, stream=False, **self.options)
            kw = {"progress": progress, "bulk_keep": bulk_keep, **fit_kwargs}
            return loaded.prune(
                criterion,
                select,
                split=split,
                dry_run=dry_run,
                output=output,
                overwrite=overwrite,
                **kw,
            )
        if self.plan is not None:
            if output is not None and not dry_run:  # before any work, as no shard may be lost
                self._check_output(output, self.plan.tensors.checkpoint.files())
            return prune_checkpoint(
                self.plan,
                criterion,
                walker_select,
                split=split,
                dry_run=dry_run,
                output=output,
                overwrite=overwrite,
                progress=progress,
                complete=complete,
            )
        pruned, report = prune(
            self.model,
            criterion=criterion,
            select=walker_select,
            split=split,
            dry_run=dry_run,
            inplace=True,
            progress=progress,
        )
        report = complete(report)
        if output is not None and not dry_run:
            self.save(pruned, output, overwrite=overwrite)
        return report

    def _check_output(self, output: PathLike, inputs: Sequence[str] = ()) -> None:
        """Refuse to write ``output`` over the input or one of its files (shards)."""
        target = os.path.realpath(os.fspath(output))
        if target == os.path.realpath(self.path):
            raise ValueError(f"the output {os.fspath(output)} is the input; choose another path")
        if target in {os.path.realpath(f) for f in inputs}:
            raise ValueError(
                f"the output {os.fspath(output)} is a file of the input {self.path}; "
                "choose another path"
            )

    def save(self, model: nn.Module, output: PathLike, *, overwrite: bool = False) -> None:
        """Write the pruned ``model``: a model directory for a directory input, else one file."""
        self._check_output(output)
        if self.directory:
            if os.fspath(output).endswith(".safetensors"):
                raise ValueError(
                    f"the input {self.path} is a model directory, so the output is one too; "
                    f"got the file name {os.fspath(output)} (or pass --no-model for one file)"
                )
            save_pretrained(model, output, overwrite=overwrite)
        else:
            save(model, output, overwrite=overwrite)


def _skipped_row(row: LayerAnalysis, bulk_keep: float) -> LayerPruneResult:
    return LayerPruneResult(
        name=row.name,
        layer_type=row.layer_type,
        shape=row.shape,
        action="skipped",
        rank_before=row.rank,
        rank_after=row.rank,
        n_spikes=row.n_spikes,
        bulk_keep=bulk_keep,
        params_before=row.params,
        params_after=row.params,
        split=False,
        reason=row.reason,
        sigma2=row.sigma2,
        lambda_plus=row.lambda_plus,
        fit_error=row.fit_error,
    )


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` for :func:`classify_tensors` (the dtype decides what is a
    floating weight)."""
    return {
        name: (
            tuple(t.shape),
            _SAFETENSORS_DTYPE.get(t.dtype, "F32" if t.is_floating_point() else "I"),
        )
        for name, t in tensors.items()
    }


def _carried(shell: nn.Module) -> int:
    """The floating-point values the shell carries as buffers (a tied entry held as a
    buffer beside its parameter counts once, as a parameter)."""
    params = {id(p) for p in shell.parameters()}
    return sum(b.numel() for b in shell.buffers() if b.is_floating_point() and id(b) not in params)


def open_for_pruning(
    path: PathLike,
    *,
    model: str | None = None,
    no_model: bool = False,
    assume_linear: Sequence[str] = (),
    assume_conv2d: Sequence[str] = (),
    stream: bool = True,
) -> PruneInput:
    """Resolve the input of ``rmtprune prune`` (module docstring, steps 1–3).

    ``stream=False`` loads a safetensors checkpoint whole instead of streaming it (the
    reference the streamed route is tested against).
    """
    path = os.fspath(path)
    if model is not None:
        return PruneInput(load_model(path, model=model), path)
    if _model_route(path, model, no_model):
        return PruneInput(load_model_directory(path), path, directory=True)
    options = {"no_model": no_model, "assume_linear": assume_linear, "assume_conv2d": assume_conv2d}
    if not os.path.isdir(path):
        check_input_file(path, what="weights file")  # missing or unreadable: named, one line
    if stream and _streamable(path):
        streamed = _open_streamed(path, assume_linear, assume_conv2d, options)
        if streamed is not None:
            return streamed
    tensors, document = read_tensors(path)
    structure = dict(document["structure"]) if document else {}
    shown = tensors
    if document is not None:  # a tied entry is typed, analysed and loaded as its tensor
        aliases = document["aliases"]
        tensors = {**tensors, **{a: tensors[t] for a, t in aliases.items() if t in tensors}}
        # a module under a second name is the module under its first: typed and shown once
        same = module_aliases(tensors, aliases, structure)
        shown = {k: tensors[k] for k in outside_modules(tensors, same)}
    kinds = classify_tensors(
        _shapes(shown), assume_linear=assume_linear, assume_conv2d=assume_conv2d, skip=structure
    )
    dense = {k.name: k.layer_type for k in kinds if k.typed}
    checkpoint_file = open_checkpoint(path).path if os.path.isdir(path) else path
    shell = load_shell(tensors, document, checkpoint_file, dense=dense)
    carried = _carried(shell)
    untyped = tuple(k for k in kinds if not k.typed)
    return PruneInput(
        shell, path, untyped=untyped, tensors=tensors, carried_params=carried, options=options
    )


def _open_streamed(
    path: str,
    assume_linear: Sequence[str],
    assume_conv2d: Sequence[str],
    options: Mapping[str, Any],
) -> PruneInput | None:
    """:func:`open_for_pruning` of a safetensors checkpoint without reading its weights
    (only an rmtprune file's digest is computed, one tensor at a time); ``None`` where only
    the in-memory route reproduces what the loader does."""
    checkpoint = open_checkpoint(path)  # checks the headers and the index first
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
        _shapes(stored), assume_linear=assume_linear, assume_conv2d=assume_conv2d, skip=structure
    )
    if document is not None:
        lazy = CheckpointTensors(checkpoint, document["aliases"])
    dense = {k.name: k.layer_type for k in kinds if k.typed}
    checkpoint_file = checkpoint.path if os.path.isdir(path) else path
    plan = meta_shell(lazy, document, checkpoint_file, dense)
    if plan is None:
        return None
    carried = _carried(plan.shell)
    untyped = tuple(k for k in kinds if not k.typed)
    return PruneInput(
        plan.shell,
        path,
        untyped=untyped,
        tensors=lazy,
        carried_params=carried,
        plan=plan,
        options=options,
    )


def analyze_source(
    path: PathLike,
    *,
    model: str | None = None,
    no_model: bool = False,
    assume_linear: Sequence[str] = (),
    assume_conv2d: Sequence[str] = (),
    progress: bool | None = None,
    **fit_kwargs: Any,
) -> ModelReport:
    """The report of ``rmtprune analyze`` (module docstring); ``fit_kwargs`` as for
    :func:`rmtprune.analyze`; ``progress`` as for
    :func:`rmtprune.ondisk.analysis.analyze_checkpoint`."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        check_input_file(path, what="weights file")  # missing or unreadable: named, one line
    streamable = model is None and (
        os.path.isdir(path) or path.endswith(".index.json") or is_safetensors_file(path)
    )
    if streamable:
        checkpoint = open_checkpoint(path)
        check_module_names(checkpoint.path, checkpoint.names(), "tensor name")
        if "rmtprune" not in checkpoint.metadata and not is_marked_directory(path):
            architecture = build_architecture(path) if _model_route(path, model, no_model) else None
            return analyze_checkpoint(
                checkpoint,
                architecture=architecture,
                assume_linear=assume_linear,
                assume_conv2d=assume_conv2d,
                progress=progress,
                **fit_kwargs,
            )
    source = open_for_pruning(
        path,
        model=model,
        no_model=no_model,
        assume_linear=assume_linear,
        assume_conv2d=assume_conv2d,
    )
    return source.analyze(progress=progress, **fit_kwargs)
