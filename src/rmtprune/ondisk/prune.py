"""``rmtprune prune`` of a safetensors checkpoint one layer at a time, never holding the model.

Without a model (:mod:`rmtprune.ondisk.inputs`, step 3) the command prunes a *shell* model
(:func:`rmtprune.ondisk.sources.build_shell`): the factorized layers of an rmtprune file and the
weights named with ``assume_linear`` / ``assume_conv2d`` are its layers, every other tensor
a buffer carried through.  Here that shell is built on the ``meta`` device (names, shapes,
dtypes, module types; no memory), every check the loader makes runs on it, and the work is
done layer by layer:

1. read the tensors of one layer (weight, bias, the two factors of a factorized layer, a
   tied entry through its target) with :meth:`rmtprune.storage.reader.Checkpoint.read`;
2. build that layer alone at its dotted name (the same :func:`~rmtprune.ondisk.sources.build_shell`
   and ``load_state_dict`` as the whole shell) and run :func:`rmtprune.prune` on it, so the
   criterion, the selection's size floors, the split rule and the surgery are exactly those
   of the in-memory route;
3. hand its output tensors to a :class:`rmtprune.storage.writer.SafetensorsWriter`,
   which puts their bytes in a temporary file, and let them go.

The tensors outside any layer are copied one at a time.  The report's rows, totals and the
written file (tensors, structure, digest) are those of pruning the loaded shell in memory;
the memory held is about one layer (with its float64 copy and SVD), not the model.
A model-level criterion (``decide_model``, e.g. calibration) needs the whole model: then
:func:`rmtprune.ondisk.inputs.prune_input` opens the input in memory instead — unless it is
:func:`~rmtprune.pruning.criteria.layerwise`: :class:`rmtprune.Sparsity` by
magnitude with uniform allocation or an N:M pattern decides each layer's mask from that layer
alone, so its layers are masked here one at a time, stored sparsely as
:func:`rmtprune.save` stores them (:func:`rmtprune.storage.sparse.sparse_tensors`), and the
report's nonzero counts are summed over the layers.
``rmtprune analyze`` of such a file goes the same way (:func:`fit_shell_layers`): each
layer is read, built and analysed alone, and its rows are those of the loaded shell.
Both are steps of the entry points in :mod:`rmtprune.ondisk.inputs`; what they need (the
selection, the criterion, the weights of unknown type and their rows) is handed down to
them, and what they find comes back as their return value.

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file
>>> from rmtprune.storage.reader import open_checkpoint
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> save_file({"fc.weight": torch.ones(3, 4), "scale": torch.zeros(2)}, path)
>>> tensors = CheckpointTensors(open_checkpoint(path))
>>> sorted(tensors), tensors["scale"].tolist()
(['fc.weight', 'scale'], [0.0, 0.0])
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rmtprune._util.errors import InvalidFileError
from rmtprune.factorize.masks import nonzero_count
from rmtprune.factorize.params import count_parameters
from rmtprune.factorize.registry import get_adapter
from rmtprune.ondisk.analysis import LayerKind, fit_layer, natural_key
from rmtprune.ondisk.progress import CheckpointProgress, layer_cost
from rmtprune.ondisk.sources import ShellModel, build_shell
from rmtprune.pruning.criteria import MPCriterion
from rmtprune.pruning.report import LayerAnalysis, LayerPruneResult, PruneReport
from rmtprune.pruning.selection import Select, weight_layers
from rmtprune.pruning.walker import SplitMode, analyze, prune
from rmtprune.storage.format import (
    apply_structure,
    check_fit,
    check_payload,
    describe_structure,
    tensors_to_store,
)
from rmtprune.storage.inputs import load_into
from rmtprune.storage.reader import Checkpoint
from rmtprune.storage.sparse import sparse_tensors
from rmtprune.storage.writer import SafetensorsWriter

__all__ = [
    "CheckpointTensors",
    "StreamPlan",
    "complete_report",
    "fit_shell_layers",
    "meta_shell",
    "prune_checkpoint",
    "skipped_row",
]


class CheckpointTensors(Mapping[str, torch.Tensor]):
    """The tensors of a checkpoint, each read from disk when asked for (nothing is kept).

    ``aliases`` (the tied entries of an rmtprune file, ``{entry: stored tensor}``) read
    their target.
    """

    def __init__(self, checkpoint: Checkpoint, aliases: Mapping[str, str] | None = None):
        self.checkpoint = checkpoint
        self._aliases = {a: t for a, t in (aliases or {}).items() if a not in checkpoint}

    def __getitem__(self, name: str) -> torch.Tensor:
        target = name if name in self.checkpoint else self._aliases.get(name)
        if target is None or target not in self.checkpoint:
            raise KeyError(name)
        return self.checkpoint.read(target)

    def __contains__(self, name: object) -> bool:
        return name in self.checkpoint or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        yield from self.checkpoint.names()
        yield from self._aliases

    def __len__(self) -> int:
        return len(self.checkpoint) + len(self._aliases)

    def meta_of(self, name: str) -> torch.Tensor:
        """The tensor ``name`` as a ``meta`` tensor of its dtype and shape (nothing is read)."""
        target = name if name in self.checkpoint else self._aliases.get(name)
        if target is None or target not in self.checkpoint:
            raise KeyError(name)
        return self.checkpoint.info(target).meta()

    def meta(self, aliases: bool = True) -> dict[str, torch.Tensor]:
        """Every stored tensor (and tied entry) as a ``meta`` tensor of its dtype and shape."""
        out = {n: self.checkpoint.info(n).meta() for n in self.checkpoint.names()}
        if aliases:
            out.update({a: out[t] for a, t in self._aliases.items() if t in out})
        return out


@dataclass
class StreamPlan:
    """What :func:`prune_checkpoint` works from: the checked ``meta`` shell and the tensors.

    ``path`` is the checkpoint file named in messages; ``structure`` and ``dense`` are those
    the shell was built from (:func:`rmtprune.ondisk.sources.build_shell`).
    """

    shell: ShellModel
    tensors: CheckpointTensors
    path: str
    structure: Mapping[str, Any]
    dense: Mapping[str, str]


def meta_shell(
    tensors: CheckpointTensors,
    document: Mapping[str, Any] | None,
    path: str,
    dense: Mapping[str, str],
) -> StreamPlan | None:
    """The shell :func:`rmtprune.ondisk.sources.load_shell` would load, on the ``meta`` device.

    Makes the same checks with the same messages (names forming a model; for an rmtprune
    file its digest, read one tensor at a time, its tied entries and records; every key and
    shape fitting).  ``None`` when the loader would rebuild a recorded layer differently from
    its record (only the in-memory route reproduces that).
    """
    meta = tensors.meta()
    structure = dict(document["structure"]) if document else {}
    try:
        with torch.device("meta"):  # from the stored tensors, as the loader builds it
            shell = build_shell(tensors.meta(aliases=False), structure, dense=dense)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InvalidFileError(
            path, f"{path}: its tensor names do not form a model ({exc})"
        ) from None
    if document is None:
        load_into(shell, meta, path, None)  # keys and shapes, as the loader checks them
        return StreamPlan(shell, tensors, path, structure, dense)
    check_payload(path, tensors.checkpoint.metadata, CheckpointTensors(tensors.checkpoint))
    built = {name: shell.get_submodule(name) for name in structure}
    try:
        apply_structure(shell, structure)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if any(shell.get_submodule(name) is not module for name, module in built.items()):
        return None
    try:
        check_fit(shell, meta, True)
    except ValueError as exc:
        raise ValueError(f"{path} does not fit the model: {exc}") from None
    return StreamPlan(shell, tensors, path, structure, dense)


def _groups(plan: StreamPlan) -> list[str]:
    """The outermost layers of the shell (each with the layers nested in it), in module order."""
    typed = set(plan.structure) | set(plan.dense)
    out: list[str] = []
    for name, _ in plan.shell.named_modules():
        if name in typed and not any(name.startswith(f"{g}.") for g in out):
            out.append(name)
    return out


def _inside(name: str, group: str) -> bool:
    return name == group or name.startswith(f"{group}.")


def _load_layer(plan: StreamPlan, group: str, keys: Sequence[str]) -> nn.Module:
    """The shell of one layer (and what is nested in it), filled from the checkpoint."""
    tensors = {key: plan.tensors[key] for key in keys}
    structure = {n: e for n, e in plan.structure.items() if _inside(n, group)}
    dense = {n: t for n, t in plan.dense.items() if _inside(n, group)}
    layer = build_shell(tensors, structure, dense=dense)  # as the in-memory loader builds it
    load_into(layer, tensors, plan.path, None)
    return layer


def _cost(module: nn.Module) -> float:
    adapter = get_adapter(module)
    return layer_cost(adapter.matrix_shape(module)) if adapter is not None else 0.0


@dataclass
class _Outcome:
    rows: dict[str, Any] = dataclasses.field(default_factory=dict)
    structure: dict[str, Any] = dataclasses.field(default_factory=dict)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    sparse: dict[str, Any] = dataclasses.field(default_factory=dict)
    nonzero_before: int = 0
    nonzero_after: int = 0
    fractions: dict[str, float] = dataclasses.field(default_factory=dict)


def _write(writer: SafetensorsWriter | None, layer: nn.Module, outcome: _Outcome) -> None:
    if writer is None:
        return
    stored, aliases = tensors_to_store(layer)
    stored, sparse = sparse_tensors(layer, stored, aliases)  # as rmtprune.save stores them
    outcome.sparse.update(sparse)
    for name in list(stored):
        writer.add(name, stored.pop(name))
    outcome.aliases.update(aliases)
    outcome.structure.update(describe_structure(layer))


@dataclass
class _Layout:
    """What one streamed pass works through: the chosen layer names in report order; per
    outermost layer (in module order) its chosen layers, its state-dict keys and its cost;
    and every state-dict key of the shell."""

    chosen: list[str]
    picked: dict[str, list[str]]
    keys: dict[str, list[str]]
    costs: dict[str, float]
    state: list[str]


def _layout(plan: StreamPlan, select: Select) -> _Layout:
    chosen = select.choose([name for name, _, _ in weight_layers(plan.shell)])
    groups = _groups(plan)
    state = list(plan.shell.state_dict())
    picked = {g: [n for n in chosen if _inside(n, g)] for g in groups}
    keys = {g: [k for k in state if k.startswith(f"{g}.")] for g in groups}
    costs = {g: _cost(plan.shell.get_submodule(g)) if picked[g] else 0.0 for g in groups}
    return _Layout(chosen, picked, keys, costs, state)


def fit_shell_layers(
    plan: StreamPlan,
    select: Select,
    criterion: MPCriterion,
    untyped: Sequence[LayerKind] = (),
    *,
    progress: bool | None,
) -> tuple[list[LayerAnalysis], list[LayerAnalysis]]:
    """The :func:`rmtprune.analyze` rows of ``plan``'s shell, reading one layer at a time.

    ``select`` is the walker's selection (untyped weights already left out); the rows are
    those of analysing the loaded shell in memory.  The ``untyped`` weights are fitted
    after the layers under the same progress bar (:func:`rmtprune.ondisk.analysis.fit_layer`);
    returns the shell's rows (in report order) and theirs.
    """
    layout = _layout(plan, select)
    rows: dict[str, LayerAnalysis] = {}
    costs = [*layout.costs.values(), *(layer_cost(k.shape) for k in untyped)]
    extra: list[LayerAnalysis] = []
    with CheckpointProgress(costs, enabled=progress) as bar:
        for group, names in layout.picked.items():
            if names:
                layer = _load_layer(plan, group, layout.keys[group])
                only = dataclasses.replace(select, include=names, exclude=())
                report = analyze(layer, criterion=criterion, select=only, progress=False)
                rows.update((row.name, row) for row in report.layers)
                del layer
            bar.advance(group, layout.costs[group])
        for kind, cost in zip(untyped, costs[len(layout.costs) :], strict=True):
            if not kind.floating:  # not read: its row says that its dtype is not supported
                extra.append(
                    fit_layer(kind, plan.tensors.meta_of(kind.weight), None, criterion, select)
                )
                bar.advance(kind.name, cost)
                continue
            bias = plan.tensors[kind.bias] if kind.bias is not None else None
            extra.append(fit_layer(kind, plan.tensors[kind.weight], bias, criterion, select))
            bar.advance(kind.name, cost)
    return [rows[n] for n in layout.chosen], extra


def complete_report(
    report: PruneReport, extra: Sequence[LayerPruneResult], carried: int
) -> PruneReport:
    """``report`` of the walker with the rows it does not see (``extra``, the weights of
    unknown type, merged in name order) and the ``carried`` values counted in the totals."""
    rows = report.layers
    if extra:
        rows = tuple(sorted([*report.layers, *extra], key=lambda r: natural_key(r.name)))
    return dataclasses.replace(
        report,
        layers=rows,
        params_before=report.params_before + carried,
        params_after=report.params_after + carried,
    )


def skipped_row(row: LayerAnalysis, bulk_keep: float) -> LayerPruneResult:
    """The prune row of a weight the walker does not see (analysed, never pruned)."""
    return LayerPruneResult(
        name=row.name,
        layer_type=row.layer_type,
        shape=row.shape,
        action="skipped",
        rank_before=row.rank,
        rank_after=row.rank,
        bulk_keep=bulk_keep,
        params_before=row.params,
        params_after=row.params,
        split=False,
        reason=row.reason,
        fit=row.fit,
    )


def prune_checkpoint(
    plan: StreamPlan,
    criterion: Any,
    select: Select,
    *,
    split: SplitMode,
    dry_run: bool,
    output: str | os.PathLike[str] | None,
    overwrite: bool,
    progress: bool | None,
    extra: Sequence[LayerPruneResult] = (),
    carried: int = 0,
) -> PruneReport:
    """:func:`rmtprune.prune` of ``plan``'s shell, one layer at a time, writing ``output``.

    ``select`` is the walker's selection (untyped weights already left out); ``extra`` (the
    untyped weights' rows) and ``carried`` complete the report (:func:`complete_report`)
    before the file is moved into place.  Returns the completed report.
    """
    layout = _layout(plan, select)
    outcome = _Outcome()
    masks = bool(getattr(criterion, "produces_masks", False))  # every layer's nonzeros counted
    with contextlib.ExitStack() as stack:
        writer = None
        if output is not None and not dry_run:
            writer = stack.enter_context(SafetensorsWriter(output, overwrite=overwrite))
        bar = stack.enter_context(CheckpointProgress(list(layout.costs.values()), enabled=progress))
        for group, names in layout.picked.items():
            if names or writer is not None or masks:
                layer = _load_layer(plan, group, layout.keys[group])
                if masks:
                    outcome.nonzero_before += nonzero_count(layer, recurse=True)
                if names:
                    only = dataclasses.replace(select, include=names, exclude=())
                    _, report = prune(
                        layer,
                        criterion=criterion,
                        select=only,
                        split=split,
                        dry_run=dry_run,
                        inplace=True,
                        progress=False,
                    )
                    outcome.rows.update((row.name, row) for row in report.layers)
                    outcome.fractions.update(getattr(criterion, "fractions_", {}))
                if masks:
                    outcome.nonzero_after += nonzero_count(layer, recurse=True)
                _write(writer, layer, outcome)
                del layer
            bar.advance(group, layout.costs[group])
        covered = {k for keys in layout.keys.values() for k in keys}
        for key in layout.state:
            if writer is not None and key not in covered:
                writer.add(key, plan.tensors[key])
        rows = [outcome.rows[n] for n in layout.chosen]
        if masks:  # the walker's fractions_ of the whole model, not of the last layer
            criterion.fractions_ = outcome.fractions
        report = complete_report(_report(plan.shell, rows, dry_run, outcome, masks), extra, carried)
        if writer is not None:
            writer.commit(outcome.structure, outcome.aliases, outcome.sparse)
    return report


def _report(
    shell: nn.Module, rows: list[Any], dry_run: bool, outcome: _Outcome, masks: bool
) -> PruneReport:
    before = count_parameters(shell)
    after = before - sum(r.params_before - r.params_after for r in rows)
    changed = any(r.action in ("split", "truncated", "sparsified") for r in rows)
    nz_before = nz_after = None
    if masks:  # a dry run changed no layer: its count is the rows' prediction
        zeroed = sum(
            r.nonzero_before - r.nonzero_after for r in rows if r.nonzero_after is not None
        )
        nz_before = outcome.nonzero_before
        nz_after = nz_before - zeroed if dry_run else outcome.nonzero_after
    return PruneReport(
        tuple(rows),
        before,
        after,
        dry_run,
        changed and not dry_run,
        nonzero_before=nz_before,
        nonzero_after=nz_after,
    )
