"""Analysing the weight matrices of a checkpoint one tensor at a time, never guessing layer types.

Which tensors are layers, and of what type
------------------------------------------
Every floating 2-D tensor, and every 4-D ``*.weight`` (a convolution kernel),
is a weight matrix to analyse; its layer name is the tensor name without
``.weight``.  :func:`classify_tensors` decides how each is treated:

* With the model's architecture (built on the ``meta`` device, so without
  memory, from the checkpoint's ``config.json``), a weight whose module exists
  there with the same shape takes that module's type; the fit is then exactly
  the one :func:`rmtprune.analyze` gives on the loaded model (same module type,
  same walker).
* Otherwise the type is unknown.  A name that says ``embed``/``norm``/
  ``position`` (or GPT-2's ``wte``/``wpe``) is never taken for a Linear layer;
  other weights become Linear (2-D) or Conv2d with ``groups = 1`` (4-D) only
  when their layer name matches a pattern the user gave (``assume_linear`` /
  ``assume_conv2d``).  Every unknown weight is still analysed, and its report
  row says why it is not pruned.  A pattern that matches no weight is an error, as a
  misspelled ``--layers`` pattern is.
* A weight stored in float8 is analysed (upcast) but never taken for a Linear or Conv2d
  layer to prune; a layer's weight (``*.weight``) that is not floating point at all
  (``BOOL``, ``I8``, ``U64``, ...) is not read: its row is skipped with the reason
  :func:`rmtprune.analyze` gives for such a layer ("unsupported dtype ...").  Other tensors
  that are not floating point (``position_ids``, counters) are not weights and get no row.

Streaming
---------
:func:`fit_checkpoint_layers` reads one layer's tensors, fits them and lets them
go before reading the next, so the memory held is that of the largest layer
(in float64, plus its ``p × p`` Gram matrix), not of the model.  Half-precision
storage (float16, bfloat16, float8) is upcast to float64 per tensor.  It is a step
of :func:`rmtprune.ondisk.inputs.analyze_input`, the one entry point for files.

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file
>>> from rmtprune.pruning.criteria import MPCriterion
>>> from rmtprune.pruning.selection import Select
>>> from rmtprune.storage.reader import open_checkpoint
>>> _ = torch.manual_seed(0)
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save_file({"fc.weight": torch.randn(200, 300), "embed.weight": torch.randn(500, 64)}, path)
>>> checkpoint = open_checkpoint(path)
>>> kinds = classify_tensors(checkpoint_shapes(checkpoint), assume_linear=["*"])
>>> rows = fit_checkpoint_layers(checkpoint, kinds, MPCriterion(), Select(), progress=False)
>>> [(r.name, r.layer_type, r.mp_like) for r in rows]
[('embed', 'unknown 2-D', True), ('fc', 'Linear', True)]
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rmtprune.factorize.registry import get_adapter
from rmtprune.ondisk.progress import CheckpointProgress, layer_cost
from rmtprune.pruning.criteria import MPCriterion
from rmtprune.pruning.report import LayerAnalysis, ModelReport
from rmtprune.pruning.selection import Select, matches
from rmtprune.pruning.walker import analyze
from rmtprune.storage.reader import Checkpoint

__all__ = [
    "NEVER_LINEAR",
    "LayerKind",
    "checkpoint_shapes",
    "classify_tensors",
    "fit_checkpoint_layers",
    "fit_layer",
    "model_report",
    "natural_key",
    "select_kinds",
]

NEVER_LINEAR = re.compile(r"embed|norm|position|(^|[._])(wte|wpe)([._]|$)", re.IGNORECASE)
"""Layer names that are never taken for a Linear layer when the type is unknown."""

_HALF = (torch.float16, torch.bfloat16)
_FLOAT8 = {"F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}
_FLOATING = {"F64", "F32", "F16", "BF16", *_FLOAT8}


@dataclass(frozen=True)
class LayerKind:
    """How one weight of a checkpoint is treated (see :func:`classify_tensors`).

    ``module`` is a ``meta``-device module of the layer's type (from the
    architecture, or the Linear/Conv2d stand-in used to fit an unknown weight);
    ``typed`` is true when the type is known (from the architecture) or assumed
    by the user, so that the walker decides as on a loaded model; for an unknown
    type it is false and ``reason`` says why the layer is not pruned.  ``floating`` is
    false for a weight that is not floating point (never read: its row is skipped).
    """

    name: str
    weight: str
    bias: str | None
    shape: tuple[int, ...]
    module: nn.Module
    layer_type: str
    typed: bool
    reason: str = ""
    floating: bool = True


class _Holder(nn.Module):
    """Module tree that places one layer under its dotted name (never called)."""

    def forward(self, *args: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("a holder of checkpoint layers has no forward pass")


def _stand_in(shape: tuple[int, ...], has_bias: bool) -> nn.Module:
    with torch.device("meta"):
        if len(shape) == 2:
            return nn.Linear(shape[1], shape[0], bias=has_bias)
        return nn.Conv2d(shape[1], shape[0], (shape[2], shape[3]), bias=has_bias)


def _from_architecture(architecture: nn.Module | None, layer: str, weight: str, shape: Any) -> Any:
    if architecture is None or not weight.endswith(".weight"):
        return None
    try:
        module = architecture.get_submodule(layer)
    except AttributeError:
        return None
    param = module._parameters.get("weight")
    if param is None or tuple(param.shape) != tuple(shape):
        return None
    return module


def _unknown_kind(
    layer: str,
    weight: str,
    bias: str | None,
    shape: tuple[int, ...],
    assumed: Sequence[str],
    dtype: str,
) -> LayerKind:
    dims = len(shape)
    stand_in = _stand_in(shape, bias is not None)
    if NEVER_LINEAR.search(layer):
        if layer in assumed:
            raise ValueError(
                f"layer {layer!r} has a name that says embedding/norm/position and is never "
                "treated as a Linear layer; give the model (a Hugging Face directory with "
                "transformers installed, or --model) to prune it"
            )
        why = "name says embedding/norm/position: never treated as a Linear layer"
        return LayerKind(layer, weight, bias, shape, stand_in, f"unknown {dims}-D", False, why)
    if weight.endswith(".weight") and matches(layer, assumed):
        if dtype in _FLOAT8:  # torch cannot build (or factorize) a layer in float8
            why = (
                f"stored in float8 ({dtype}): analysed, not pruned (only float64, float32, "
                "float16 and bfloat16 weights are pruned)"
            )
            return LayerKind(layer, weight, bias, shape, stand_in, f"unknown {dims}-D", False, why)
        return LayerKind(layer, weight, bias, shape, stand_in, type(stand_in).__name__, True)
    option = "--assume-linear" if dims == 2 else "--assume-conv2d"
    why = f"layer type unknown without the model: analysed, not pruned (pass {option} to prune it)"
    if not weight.endswith(".weight"):
        why = "not the weight of a layer (no '.weight' suffix): analysed, not pruned"
    return LayerKind(layer, weight, bias, shape, stand_in, f"unknown {dims}-D", False, why)


def classify_tensors(
    shapes: Mapping[str, tuple[tuple[int, ...], str]],
    *,
    architecture: nn.Module | None = None,
    assume_linear: Sequence[str] = (),
    assume_conv2d: Sequence[str] = (),
    skip: Iterable[str] = (),
) -> list[LayerKind]:
    """Decide the layer type of every weight matrix (see the module docstring).

    Parameters
    ----------
    shapes : mapping
        ``{tensor name: (shape, safetensors dtype string)}`` of the checkpoint.
    architecture : nn.Module, optional
        The model built on the ``meta`` device; its module types are used where
        a module of the same name and weight shape exists.
    assume_linear, assume_conv2d : sequence of str
        Layer names or ``fnmatch`` patterns of unknown 2-D (4-D) weights to
        treat as ``nn.Linear`` (``nn.Conv2d``, ``groups = 1``).
    skip : iterable of str
        Layer names handled elsewhere (the factorized layers of an rmtprune file).

    Returns
    -------
    list of LayerKind
        In the architecture's module order, else by name (``layers.2`` before ``layers.10``).
    """
    skip = tuple(skip)
    skipped = tuple(f"{s}." for s in skip)
    _check_assumed(shapes, assume_linear, assume_conv2d, skip)
    kinds: list[LayerKind] = []
    for weight, (shape, dtype) in sorted(shapes.items(), key=lambda kv: natural_key(kv[0])):
        if len(shape) not in (2, 4) or weight.startswith(skipped):
            continue
        if len(shape) == 4 and not weight.endswith(".weight"):
            continue
        layer = weight[: -len(".weight")] if weight.endswith(".weight") else weight
        module = _from_architecture(architecture, layer, weight, shape)
        if dtype not in _FLOATING:  # not read; the walker's row says "unsupported dtype ..."
            if not weight.endswith(".weight"):  # ids, masks, counters: not a layer's weight
                continue
            stand_in = _stand_in(shape, False)
            kind = type(module).__name__ if module is not None else f"unknown {len(shape)}-D"
            kinds.append(LayerKind(layer, weight, None, shape, stand_in, kind, False, "", False))
            continue
        bias_name = f"{layer}.bias"
        bias_info = shapes.get(bias_name)
        bias = bias_name if bias_info is not None and bias_info[0] == (shape[0],) else None
        if module is not None:
            kinds.append(LayerKind(layer, weight, bias, shape, module, type(module).__name__, True))
            continue
        assumed = assume_linear if len(shape) == 2 else assume_conv2d
        kinds.append(_unknown_kind(layer, weight, bias, shape, assumed, dtype))
    if architecture is not None:  # the model's order, as in rmtprune.analyze of the model
        order = {name: i for i, (name, _) in enumerate(architecture.named_modules())}
        kinds.sort(key=lambda k: order.get(k.name, len(order)))
    return kinds


def _check_assumed(
    shapes: Mapping[str, tuple[tuple[int, ...], str]],
    assume_linear: Sequence[str],
    assume_conv2d: Sequence[str],
    skip: Sequence[str],
) -> None:
    """Every pattern of ``assume_linear`` (``assume_conv2d``) matches a 2-D (4-D) weight or a
    layer handled elsewhere (``skip``); else the error of a misspelled ``layers`` pattern."""
    for param, dims, patterns in (
        ("assume_linear", 2, assume_linear),
        ("assume_conv2d", 4, assume_conv2d),
    ):
        if not patterns:
            continue
        names = [
            w[: -len(".weight")] if w.endswith(".weight") else w
            for w, (shape, _) in shapes.items()
            if len(shape) == dims and (dims == 2 or w.endswith(".weight"))
        ]
        names = sorted({*names, *skip}, key=natural_key)
        for pattern in patterns:
            if not any(matches(n, [pattern]) for n in names):
                raise ValueError(
                    f"The {param!r} parameter names {pattern!r}, which matches no {dims}-D "
                    f"weight in the checkpoint. Valid names: {names}"
                )


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t]


def _place(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    node = root
    for part in parent.split(".") if parent else []:
        child = node._modules.get(part)
        if child is None:
            child = _Holder()
            node.add_module(part, child)
        node = child
    node.add_module(leaf, module)


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype in _HALF or tensor.element_size() == 1:
        return tensor.to(torch.float64)
    return tensor


def fit_layer(
    kind: LayerKind,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    criterion: MPCriterion,
    select: Select,
) -> LayerAnalysis:
    """The :func:`rmtprune.analyze` row of one layer, built from its tensors.

    The layer is a copy of ``kind.module`` holding ``weight`` (upcast to
    float64 when stored in half precision) and ``bias``, analysed with ``criterion``
    (its ``alpha``, ``beta``, ``fit_cutoff``) and the size floors of ``select`` (its
    names were applied before).  For a weight whose type is unknown the row's
    ``layer_type`` and ``reason`` say so.
    """
    module = copy.deepcopy(kind.module)
    if weight.is_floating_point():
        weight = _upcast(weight)
    else:  # no data needed (none is held): the walker refuses its dtype
        weight = torch.zeros((), dtype=weight.dtype).expand(weight.shape)
    module._parameters["weight"] = nn.Parameter(weight, requires_grad=False)
    if bias is not None and "bias" in module._parameters:
        module._parameters["bias"] = nn.Parameter(_upcast(bias), requires_grad=False)
    holder = _Holder()
    _place(holder, kind.name, module)
    floors = Select(min_dim=select.min_dim, min_params=select.min_params)
    row = analyze(holder, criterion=criterion, select=floors)[kind.name]
    if kind.typed and kind.layer_type == type(kind.module).__name__:
        return row
    reason = "; ".join(r for r in (kind.reason, row.reason) if r)
    return dataclasses.replace(row, layer_type=kind.layer_type, reason=reason)


def select_kinds(kinds: list[LayerKind], select: Select) -> list[LayerKind]:
    """The kinds whose layer names match ``select.include`` (names or fnmatch patterns; all
    when None) and none of ``select.exclude``; a pattern that matches no weight is an error."""
    names = [k.name for k in kinds]
    dropped = list(select.exclude)
    for pattern in dropped:
        if not any(matches(n, [pattern]) for n in names):
            raise ValueError(
                f"The 'exclude' parameter names {pattern!r}, which matches no weight in the "
                f"checkpoint. Valid names: {names}"
            )
    kinds = [k for k in kinds if not matches(k.name, dropped)]
    if select.include is None:
        return kinds
    patterns = list(select.include)
    for pattern in patterns:
        if not any(matches(n, [pattern]) for n in names):
            raise ValueError(
                f"The 'layers' parameter names {pattern!r}, which matches no weight in the "
                f"checkpoint. Valid names: {names}"
            )
    return [k for k in kinds if matches(k.name, patterns)]


def _needs_data(kind: LayerKind) -> bool:
    """False for a layer of a known type that no adapter supports, or one whose dtype is not
    floating point (nothing to fit)."""
    return kind.floating and (not kind.typed or get_adapter(kind.module) is not None)


def checkpoint_shapes(checkpoint: Checkpoint) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{tensor name: (shape, dtype)}`` of ``checkpoint``, for :func:`classify_tensors`."""
    infos = {name: checkpoint.info(name) for name in checkpoint.names()}
    return {name: (info.shape, info.dtype) for name, info in infos.items()}


def model_report(rows: Sequence[LayerAnalysis], criterion: MPCriterion) -> ModelReport:
    """The :class:`ModelReport` of ``rows`` fitted with ``criterion`` (as :func:`rmtprune.analyze`
    heads it: ``fit_cutoff`` is NaN when it differs by layer type)."""
    cutoff = criterion.fit_cutoff
    return ModelReport(
        tuple(rows),
        criterion.alpha,
        criterion.beta,
        math.nan if isinstance(cutoff, Mapping) else float(cutoff),
    )


def fit_checkpoint_layers(
    checkpoint: Checkpoint,
    kinds: Sequence[LayerKind],
    criterion: MPCriterion,
    select: Select,
    *,
    progress: bool | None,
) -> list[LayerAnalysis]:
    """The rows of ``kinds`` (from :func:`classify_tensors` and :func:`select_kinds`), reading
    one layer of ``checkpoint`` at a time (see the module docstring).

    ``criterion`` and ``select``'s size floors are those of :func:`fit_layer`; ``progress``
    on stderr as :class:`rmtprune.ondisk.progress.CheckpointProgress` shows it.
    """
    costs = [layer_cost(k.shape) if _needs_data(k) else 0.0 for k in kinds]
    rows: list[LayerAnalysis] = []
    with CheckpointProgress(costs, enabled=progress) as bar:
        for kind, cost in zip(kinds, costs, strict=True):
            if not _needs_data(kind):  # the walker reports it as unsupported without reading it
                meta = torch.empty(kind.shape, device="meta")
                if not kind.floating:  # its dtype, for the row's reason
                    meta = checkpoint.info(kind.weight).meta()
                rows.append(fit_layer(kind, meta, None, criterion, select))
                bar.advance(kind.name, cost)
                continue
            weight = checkpoint.read(kind.weight)
            bias = checkpoint.read(kind.bias) if kind.bias is not None else None
            rows.append(fit_layer(kind, weight, bias, criterion, select))
            del weight, bias
            bar.advance(kind.name, cost)
    return rows
