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
A model-level criterion (``decide_model``, e.g. calibration) needs the whole model: the
caller falls back to the in-memory route (:meth:`rmtprune.ondisk.inputs.PruneInput.prune`).
``rmtprune analyze`` of such a file goes the same way (:func:`analyze_checkpoint_plan`): each
layer is read, built and analysed alone, and its rows are those of the loaded shell.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rmtprune._util.errors import InvalidFileError
from rmtprune.factorize.params import count_parameters
from rmtprune.factorize.registry import get_adapter
from rmtprune.ondisk.progress import CheckpointProgress, layer_cost
from rmtprune.ondisk.sources import ShellModel, build_shell
from rmtprune.pruning.options import legacy_options
from rmtprune.pruning.report import ModelReport, PruneReport
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
from rmtprune.storage.writer import SafetensorsWriter

__all__ = [
    "CheckpointTensors",
    "StreamPlan",
    "analyze_checkpoint_plan",
    "meta_shell",
    "prune_checkpoint",
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


def _write(writer: SafetensorsWriter | None, layer: nn.Module, outcome: _Outcome) -> None:
    if writer is None:
        return
    stored, aliases = tensors_to_store(layer)
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


def analyze_checkpoint_plan(
    plan: StreamPlan,
    select: Select,
    *,
    progress: bool | None,
    extra: Sequence[tuple[str, float, Callable[[], Any]]] = (),
    **fit_kwargs: Any,
) -> tuple[ModelReport, list[Any]]:
    """:func:`rmtprune.analyze` of ``plan``'s shell, reading one layer at a time.

    ``select`` is the walker's selection (untyped weights already left out); the rows are
    those of analysing the loaded shell in memory.  ``extra`` jobs ``(name, cost, call)``
    (the untyped weights' fits) run after the layers under the same progress bar; their
    results are returned beside the report.
    """
    anything = dataclasses.replace(select, include=None, exclude=())
    fit = legacy_options(fit_kwargs, "analyze")
    empty = analyze(ShellModel(), select=anything, **fit)  # the arguments' checks
    layout = _layout(plan, select)
    rows: dict[str, Any] = {}
    done: list[Any] = []
    costs = [*layout.costs.values(), *(c for _, c, _ in extra)]
    with CheckpointProgress(costs, enabled=progress) as bar:
        for group, names in layout.picked.items():
            if names:
                layer = _load_layer(plan, group, layout.keys[group])
                only = dataclasses.replace(select, include=names, exclude=())
                report = analyze(layer, select=only, progress=False, **fit)
                rows.update((row.name, row) for row in report.layers)
                del layer
            bar.advance(group, layout.costs[group])
        for name, cost, call in extra:
            done.append(call())
            bar.advance(name, cost)
    return dataclasses.replace(empty, layers=tuple(rows[n] for n in layout.chosen)), done


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
    complete: Callable[[PruneReport], PruneReport],
) -> PruneReport:
    """:func:`rmtprune.prune` of ``plan``'s shell, one layer at a time, writing ``output``.

    ``select`` is the walker's selection (untyped weights already left out); ``complete``
    adds what the walker does not see (the untyped weights' rows) and runs before the file
    is moved into place, so a failure leaves no output.  Returns the completed report.
    """
    anything = dataclasses.replace(select, include=None, exclude=())
    prune(ShellModel(), criterion=criterion, select=anything, split=split, dry_run=True)  # checks
    layout = _layout(plan, select)
    outcome = _Outcome()
    with contextlib.ExitStack() as stack:
        writer = None
        if output is not None and not dry_run:
            writer = stack.enter_context(SafetensorsWriter(output, overwrite=overwrite))
        bar = stack.enter_context(CheckpointProgress(list(layout.costs.values()), enabled=progress))
        for group, names in layout.picked.items():
            if names or writer is not None:
                layer = _load_layer(plan, group, layout.keys[group])
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
                _write(writer, layer, outcome)
                del layer
            bar.advance(group, layout.costs[group])
        covered = {k for keys in layout.keys.values() for k in keys}
        for key in layout.state:
            if writer is not None and key not in covered:
                writer.add(key, plan.tensors[key])
        rows = [outcome.rows[n] for n in layout.chosen]
        report = complete(_report(plan.shell, rows, dry_run))
        if writer is not None:
            writer.commit(outcome.structure, outcome.aliases)
    return report


def _report(shell: nn.Module, rows: list[Any], dry_run: bool) -> PruneReport:
    before = count_parameters(shell)
    after = before - sum(r.params_before - r.params_after for r in rows)
    changed = any(r.action in ("split", "truncated") for r in rows)
    return PruneReport(tuple(rows), before, after, dry_run, changed and not dry_run)
