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
  row says why it is not pruned.

Streaming
---------
:func:`analyze_checkpoint` reads one layer's tensors, fits them and lets them
go before reading the next, so the memory held is that of the largest layer
(in float64, plus its ``p × p`` Gram matrix), not of the model.  Half-precision
storage (float16, bfloat16, float8) is upcast to float64 per tensor.

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file
>>> from rmtprune.storage.reader import open_checkpoint
>>> _ = torch.manual_seed(0)
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save_file({"fc.weight": torch.randn(200, 300), "embed.weight": torch.randn(500, 64)}, path)
>>> report = analyze_checkpoint(open_checkpoint(path), assume_linear=["*"], progress=False)
>>> [(r.name, r.layer_type, r.mp_like) for r in report]
[('embed', 'unknown 2-D', True), ('fc', 'Linear', True)]
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rmtprune.factorize.registry import get_adapter
from rmtprune.ondisk.progress import CheckpointProgress, layer_cost
from rmtprune.pruning.options import legacy_options
from rmtprune.pruning.report import LayerAnalysis, ModelReport
from rmtprune.pruning.walker import analyze
from rmtprune.storage.reader import Checkpoint

__all__ = [
    "NEVER_LINEAR",
    "LayerKind",
    "analyze_checkpoint",
    "classify_tensors",
    "fit_layer",
    "natural_key",
    "select_kinds",
]

NEVER_LINEAR = re.compile(r"embed|norm|position|(^|[._])(wte|wpe)([._]|$)", re.IGNORECASE)
"""Layer names that are never taken for a Linear layer when the type is unknown."""

_HALF = (torch.float16, torch.bfloat16)
_FLOATING = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class LayerKind:
    """How one weight of a checkpoint is treated (see :func:`classify_tensors`).

    ``module`` is a ``meta``-device module of the layer's type (from the
    architecture, or the Linear/Conv2d stand-in used to fit an unknown weight);
    ``typed`` is true when the type is known (from the architecture) or assumed
    by the user, so that the walker decides as on a loaded model; for an unknown
    type it is false and ``reason`` says why the layer is not pruned.
    """

    name: str
    weight: str
    bias: str | None
    shape: tuple[int, ...]
    module: nn.Module
    layer_type: str
    typed: bool
    reason: str = ""


class _Holder(nn.Module):
    """Module tree that places one layer under its dotted name (never called)."""

    def forward(self, *args: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("a holder of checkpoint layers has no forward pass")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


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
    layer: str, weight: str, bias: str | None, shape: tuple[int, ...], assumed: Sequence[str]
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
    if weight.endswith(".weight") and _matches(layer, assumed):
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
    skipped = tuple(f"{s}." for s in skip)
    kinds: list[LayerKind] = []
    for weight, (shape, dtype) in sorted(shapes.items(), key=lambda kv: natural_key(kv[0])):
        if dtype not in _FLOATING or len(shape) not in (2, 4) or weight.startswith(skipped):
            continue
        if len(shape) == 4 and not weight.endswith(".weight"):
            continue
        layer = weight[: -len(".weight")] if weight.endswith(".weight") else weight
        bias_name = f"{layer}.bias"
        bias_info = shapes.get(bias_name)
        bias = bias_name if bias_info is not None and bias_info[0] == (shape[0],) else None
        module = _from_architecture(architecture, layer, weight, shape)
        if module is not None:
            kinds.append(LayerKind(layer, weight, bias, shape, module, type(module).__name__, True))
            continue
        assumed = assume_linear if len(shape) == 2 else assume_conv2d
        kinds.append(_unknown_kind(layer, weight, bias, shape, assumed))
    if architecture is not None:  # the model's order, as in rmtprune.analyze of the model
        order = {name: i for i, (name, _) in enumerate(architecture.named_modules())}
        kinds.sort(key=lambda k: order.get(k.name, len(order)))
    return kinds


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
    kind: LayerKind, weight: torch.Tensor, bias: torch.Tensor | None = None, **fit_kwargs: Any
) -> LayerAnalysis:
    """The :func:`rmtprune.analyze` row of one layer, built from its tensors.

    The layer is a copy of ``kind.module`` holding ``weight`` (upcast to
    float64 when stored in half precision) and ``bias``; ``fit_kwargs`` are
    those of :func:`rmtprune.analyze` (``alpha``, ``beta``, ``fit_cutoff``, ...).
    For a weight whose type is unknown the row's ``layer_type`` and ``reason``
    say so.
    """
    module = copy.deepcopy(kind.module)
    module._parameters["weight"] = nn.Parameter(_upcast(weight), requires_grad=False)
    if bias is not None and "bias" in module._parameters:
        module._parameters["bias"] = nn.Parameter(_upcast(bias), requires_grad=False)
    holder = _Holder()
    _place(holder, kind.name, module)
    row = analyze(holder, **legacy_options(fit_kwargs, "analyze"))[kind.name]
    if kind.typed and kind.layer_type == type(kind.module).__name__:
        return row
    reason = kind.reason if not row.reason else f"{kind.reason}; {row.reason}"
    return dataclasses.replace(row, layer_type=kind.layer_type, reason=reason)


def select_kinds(
    kinds: list[LayerKind],
    layers: Sequence[str] | str | None,
    exclude: Sequence[str] | str | None = None,
) -> list[LayerKind]:
    """The kinds whose layer names match ``layers`` (names or fnmatch patterns; all when None)
    and none of ``exclude``; a pattern that matches no weight is an error."""
    names = [k.name for k in kinds]
    dropped = [exclude] if isinstance(exclude, str) else list(exclude or ())
    for pattern in dropped:
        if not any(_matches(n, [pattern]) for n in names):
            raise ValueError(
                f"The 'exclude' parameter names {pattern!r}, which matches no weight in the "
                f"checkpoint. Valid names: {names}"
            )
    kinds = [k for k in kinds if not _matches(k.name, dropped)]
    if layers is None:
        return kinds
    patterns = [layers] if isinstance(layers, str) else list(layers)
    for pattern in patterns:
        if not any(_matches(n, [pattern]) for n in names):
            raise ValueError(
                f"The 'layers' parameter names {pattern!r}, which matches no weight in the "
                f"checkpoint. Valid names: {names}"
            )
    return [k for k in kinds if _matches(k.name, patterns)]


def _needs_data(kind: LayerKind) -> bool:
    """False for a layer of a known type that no adapter supports (nothing to fit)."""
    return not kind.typed or get_adapter(kind.module) is not None


def analyze_checkpoint(
    checkpoint: Checkpoint,
    *,
    architecture: nn.Module | None = None,
    assume_linear: Sequence[str] = (),
    assume_conv2d: Sequence[str] = (),
    progress: bool | None = None,
    **fit_kwargs: Any,
) -> ModelReport:
    """:func:`rmtprune.analyze` of a checkpoint on disk, reading one layer at a time.

    Parameters
    ----------
    checkpoint : Checkpoint
        From :func:`rmtprune.storage.reader.open_checkpoint`.
    architecture, assume_linear, assume_conv2d
        As in :func:`classify_tensors`.
    progress : bool, optional
        Progress on stderr: ``None`` when stderr is a terminal, ``True`` always.
    **fit_kwargs
        Passed to :func:`rmtprune.analyze` (``alpha``, ``beta``, ``fit_cutoff``,
        ``layers``, ``min_dim``, ``min_params``).

    Returns
    -------
    ModelReport
        One row per weight matrix, in the order of :func:`classify_tensors`.
    """
    layers = fit_kwargs.pop("layers", None)
    exclude = fit_kwargs.pop("exclude", None)
    empty = analyze(
        _Holder(), **legacy_options(fit_kwargs, "analyze")
    )  # checks the parameters before any reading
    shapes = {n: (checkpoint.info(n).shape, checkpoint.info(n).dtype) for n in checkpoint.names()}
    kinds = classify_tensors(
        shapes,
        architecture=architecture,
        assume_linear=assume_linear,
        assume_conv2d=assume_conv2d,
    )
    kinds = select_kinds(kinds, layers, exclude)
    costs = [layer_cost(k.shape) if _needs_data(k) else 0.0 for k in kinds]
    rows: list[LayerAnalysis] = []
    with CheckpointProgress(costs, enabled=progress) as bar:
        for kind, cost in zip(kinds, costs, strict=True):
            if not _needs_data(kind):  # the walker reports it as unsupported without reading it
                rows.append(fit_layer(kind, torch.empty(kind.shape, device="meta"), **fit_kwargs))
                bar.advance(kind.name, cost)
                continue
            weight = checkpoint.read(kind.weight)
            bias = checkpoint.read(kind.bias) if kind.bias is not None else None
            rows.append(fit_layer(kind, weight, bias, **fit_kwargs))
            del weight, bias
            bar.advance(kind.name, cost)
    return dataclasses.replace(empty, layers=tuple(rows))
