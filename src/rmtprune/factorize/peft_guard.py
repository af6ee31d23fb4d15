"""PEFT (LoRA) models: prune the frozen base layers, leave the adapters alone, merge exactly.

The mechanism behind :mod:`rmtprune.integrations.peft` (its public face).
``pip install rmtprune[peft]``.  Nothing to call: :func:`rmtprune.prune` and
:func:`rmtprune.analyze` recognise the layers of a ``peft`` model (``get_peft_model(model,
LoraConfig(...))``) by their class hierarchy, so ``peft`` is never imported by rmtprune
itself.  What happens (docs/peft.md):

* **Adapters are never pruned.**  Every weight layer inside a PEFT tuner layer other than its
  ``base_layer`` (``lora_A``, ``lora_B``, ``lora_embedding_A/B``, DoRA magnitudes, other
  tuners' weights) is reported as skipped: ``"LoRA adapter of '<layer>': left alone"``.
* **The base layer of a LoRA ``Linear`` layer is pruned** like any linear layer (also a
  GPT-2 ``Conv1D`` base).  :func:`rmtprune.analyze` fits the base weight alone, without the
  adapters' update ``scaling·B·A``, and says so in the row's ``reason``: that is the matrix
  pruning truncates (the adapters stay as they are, trainable).  Base layers that could not be
  merged exactly after a split are skipped by pruning with the reason: bases of LoRA
  ``Embedding`` / ``Conv`` / other layer types, of layers with DoRA or other variant adapters,
  of layers with adapters merged into them, and of other PEFT tuners (IA³, LoHa, ...).
* **Merging stays exact.**  PEFT merges by adding ``scaling·B·A`` to ``base_layer.weight``,
  which on a factorized base (``W₂ W₁``, a computed read-only product) would be lost.  When
  rmtprune factorizes the base of a LoRA layer, that layer instance gets its own ``merge`` /
  ``unmerge`` (:class:`FactorMerge`): merging adapter ``A`` (``r_l × n``), ``B`` (``m × r_l``)
  makes the base the rank ``r + r_l`` layer with first factor ``[W₁; A]`` and second factor
  ``[W₂ | scaling·B]`` (the bias plus ``scaling·b_B`` with ``lora_bias``), which computes
  exactly ``W₂ W₁ x + scaling·B A x + b``; unmerging keeps the leading ``r`` rows/columns again.
  So PEFT's own ``merge_and_unload()``, ``merge_adapter()``, ``unmerge_adapter()`` and
  ``safe_merge=True`` work, for one adapter or several.  A merge that cannot be done exactly
  raises ``ValueError`` naming the layer and changes nothing.
* **Saving refuses.**  ``PeftModel.save_pretrained`` writes the adapter weights only; loading
  them onto the original base model would compute something else than the pruned model.  After
  rmtprune pruned a layer of a model holding PEFT layers, ``PeftModel.save_pretrained`` raises
  ``ValueError`` naming the pruned layers; merge and save the whole model instead::

      merged = peft_model.merge_and_unload()
      rmtprune.save_pretrained(merged, "out")   # load: rmtprune.from_pretrained(Class, "out")

Example
-------
>>> import torch
>>> layer = torch.nn.Linear(2, 2)
>>> is_lora_layer(layer), peft_roles(layer).skip, pruned_layers(layer)
(False, {}, [])

The core calls two functions of this module: :func:`peft_roles` (which layers are adapters, and
the note on base layers) when it lists a model's layers, and :func:`guard_peft` after it pruned
a layer.  Both return at once when ``peft`` is not imported.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rmtprune.factorize.lowrank import LowRankLinear, LowRankModule

__all__ = [
    "PRUNED_MARK",
    "FactorMerge",
    "PeftRoles",
    "guard_peft",
    "is_lora_layer",
    "is_tuner_layer",
    "peft_roles",
    "pruned_layers",
]

PRUNED_MARK = "_rmtprune_pruned_in_peft"
"""Attribute set on a layer rmtprune pruned inside a model holding PEFT layers."""
_LORA_LINEAR = "peft.tuners.lora.layer.Linear"
_ORIGINAL = "__rmtprune_wrapped__"
_MERGES = "_rmtprune_merges"
"""Attribute of a patched LoRA layer: ``[(adapter, rank added)]`` of its exact merges."""


def _peft_base(module: object, name: str) -> bool:
    """Whether a class called ``name`` from the ``peft`` package is among ``module``'s bases."""
    return any(
        base.__name__ == name and base.__module__.split(".")[0] == "peft"
        for base in type(module).__mro__
    )


def is_tuner_layer(module: object) -> bool:
    """Whether ``module`` is a PEFT tuner layer (``peft``'s ``BaseTunerLayer``), by class name."""
    return isinstance(module, nn.Module) and _peft_base(module, "BaseTunerLayer")


def is_lora_layer(module: object) -> bool:
    """Whether ``module`` is a PEFT LoRA layer (``peft``'s ``LoraLayer``), by class name."""
    return isinstance(module, nn.Module) and _peft_base(module, "LoraLayer")


def _qualified(module: object) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _variant_adapters(layer: nn.Module) -> list[str]:
    """Adapters of ``layer`` that are not plain LoRA (DoRA and other ``lora_variant``)."""
    variants = {k for k, v in dict(getattr(layer, "lora_variant", {}) or {}).items() if v}
    variants |= {k for k, v in dict(getattr(layer, "use_dora", {}) or {}).items() if v}
    return sorted(variants)


def _lora_adapters(layer: nn.Module) -> list[str]:
    names = [*getattr(layer, "lora_A", {}), *getattr(layer, "lora_embedding_A", {})]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class PeftRoles:
    """What PEFT makes of some weight layers of a model, by layer name.

    ``skip``: why the layer is never pruned (adapters; with ``pruning=True`` also base layers
    whose merge could not stay exact).  ``note``: what the fit of a base layer leaves out.
    """

    skip: Mapping[str, str] = field(default_factory=dict)
    note: Mapping[str, str] = field(default_factory=dict)


def _base_skip_reason(layer: nn.Module, name: str) -> str:
    """Why pruning the base of tuner layer ``layer`` (named ``name``) is refused, or ``""``."""
    if not is_lora_layer(layer):
        return (
            f"base layer of a PEFT {type(layer).__name__} layer ({name!r}): rmtprune prunes the "
            "base layers of LoRA layers only (merging this tuner into a pruned base is not "
            "supported)"
        )
    if _qualified(layer) != _LORA_LINEAR:
        return (
            f"base layer of a LoRA {type(layer).__name__} layer ({name!r}): rmtprune prunes "
            "the base layers of LoRA Linear layers only (their merge stays exact)"
        )
    variants = _variant_adapters(layer)
    if variants:
        return (
            f"base layer of LoRA layer {name!r} with DoRA or other variant adapter(s) "
            f"{variants}: merging them into a factorized base is not supported"
        )
    merged = list(getattr(layer, "merged_adapters", []))
    if merged:
        return (
            f"LoRA adapter(s) {merged} are merged into this base layer of {name!r}: call "
            "unmerge_adapter() before pruning"
        )
    return ""


def _base_note(layer: nn.Module) -> str:
    """What the fit of ``layer``'s base weight leaves out (or holds)."""
    if not is_lora_layer(layer):
        return f"fitted on the base weight alone, without the PEFT {type(layer).__name__} adapter"
    merged = list(getattr(layer, "merged_adapters", []))
    if merged:
        return f"fitted on the base weight with LoRA adapter(s) {merged} merged into it"
    return (
        "fitted on the base weight alone, without the update scaling·B·A of LoRA adapter(s) "
        f"{_lora_adapters(layer)} (pruning truncates the base; the adapters are left alone)"
    )


def peft_roles(model: nn.Module, *, pruning: bool = False) -> PeftRoles:
    """The roles PEFT gives the weight layers of ``model`` (empty without ``peft`` imported).

    Names are those of ``model.named_modules()``.  With ``pruning=True`` the base layers that
    rmtprune does not prune (see the module docstring) get a ``skip`` reason too.
    """
    if "peft" not in sys.modules:  # no PEFT layer can exist without peft imported
        return PeftRoles()
    skip: dict[str, str] = {}
    note: dict[str, str] = {}
    for name, layer in model.named_modules():
        if not is_tuner_layer(layer):
            continue
        base = f"{name}.base_layer" if name else "base_layer"
        kind = "LoRA" if is_lora_layer(layer) else f"PEFT {type(layer).__name__}"
        for sub, _ in layer.named_modules(prefix=name):
            if sub not in (name, base) and not sub.startswith(base + "."):
                skip[sub] = f"{kind} adapter of {name!r}: left alone"
        why = _base_skip_reason(layer, name) if pruning else ""
        if why:
            skip[base] = why
        else:
            note[base] = _base_note(layer)
    return PeftRoles(skip, note)


def pruned_layers(model: nn.Module) -> list[str]:
    """Names of the layers of ``model`` that rmtprune pruned while it held PEFT layers."""
    return [name for name, module in model.named_modules() if getattr(module, PRUNED_MARK, False)]


def _mark(module: nn.Module) -> None:
    object.__setattr__(module, PRUNED_MARK, True)


def guard_peft(model: nn.Module, changed: nn.Module) -> None:
    """After rmtprune pruned ``changed`` (a layer of ``model``): keep PEFT's merge and save honest.

    A no-op unless ``model`` holds PEFT tuner layers.  Otherwise ``changed`` is marked (see
    :func:`pruned_layers`), every LoRA layer whose base is factorized gets the exact
    :class:`FactorMerge`, and ``PeftModel.save_pretrained`` refuses to save a model holding
    marked layers.  Idempotent.
    """
    if "peft" not in sys.modules:
        return
    tuners = [(n, m) for n, m in model.named_modules() if is_tuner_layer(m)]
    if not tuners:
        return
    _mark(changed)
    for name, layer in tuners:
        base = getattr(layer, "base_layer", None)
        patched = isinstance(layer.__dict__.get("merge"), FactorMerge)
        if is_lora_layer(layer) and isinstance(base, LowRankModule) and not patched:
            FactorMerge(layer, name).install()
    _guard_peft_save()


def _guard_peft_save() -> None:
    """Wrap ``peft.PeftModel.save_pretrained`` once: refuse while pruned layers are held."""
    cls = importlib.import_module("peft").PeftModel  # imported: the model holds peft layers
    original = cls.__dict__.get("save_pretrained")
    if original is None or hasattr(original, _ORIGINAL):
        return

    @functools.wraps(original)
    def save_pretrained(self: nn.Module, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        pruned = pruned_layers(self)
        if pruned:
            raise ValueError(
                "PeftModel.save_pretrained saves the adapter weights only, and this model holds "
                f"{len(pruned)} layer(s) pruned by rmtprune (first: {pruned[0]!r}): loading the "
                "adapter onto the original base model would compute something else, silently. "
                "Merge and save the whole pruned model instead: merged = "
                "model.merge_and_unload(); rmtprune.save_pretrained(merged, directory) (load it "
                "with rmtprune.from_pretrained(ModelClass, directory)). Nothing was written to "
                f"{save_directory!r}."
            )
        return original(self, save_directory, *args, **kwargs)

    setattr(save_pretrained, _ORIGINAL, original)
    cls.save_pretrained = save_pretrained


class FactorMerge:
    """The ``merge`` / ``unmerge`` of a LoRA ``Linear`` layer whose base rmtprune factorized.

    Installed on the layer instance (:meth:`install`), so PEFT's model-level merge functions
    call it.  While the base is a :class:`~rmtprune.factorize.LowRankLinear` (or
    ``LowRankConv1D``), merging adapter ``a`` replaces the base by the exact rank ``r + r_a``
    concatenation (module docstring) and unmerging by its leading ``r`` rows/columns (new
    parameters with the same values and ``requires_grad``).  With a dense base (a split that
    was undone) PEFT's own methods run.  A plain object holding the layer, so a deep copy or
    a pickle of the model keeps it, bound to the copy.
    """

    def __init__(self, layer: nn.Module, name: str) -> None:
        self.layer: Any = layer  # a peft LoRA layer (peft is not imported for its type)
        self.name = name

    def install(self) -> None:
        """Set this object's ``merge`` and ``unmerge`` on the layer instance."""
        self.layer.__dict__["merge"] = self.merge
        self.layer.__dict__["unmerge"] = self.unmerge
        self.layer.__dict__.setdefault(_MERGES, [])

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Merge the active (or named) adapters into the factorized base, exactly."""
        layer = self.layer
        if not isinstance(layer.base_layer, LowRankModule):
            type(layer).merge(layer, safe_merge=safe_merge, adapter_names=adapter_names)
            return
        check = importlib.import_module("peft.tuners.tuners_utils").check_adapters_to_merge
        names = [a for a in check(layer, adapter_names) if a in layer.lora_A]
        for adapter in names:  # check all first: a refused merge changes nothing
            self._check_exact(adapter)
        for adapter in names:
            base = layer.base_layer
            first, second, bias = self._concatenated(base, adapter, safe_merge)
            layer.base_layer = _rebuilt(base, first, second, bias)
            layer.merged_adapters.append(adapter)
            layer.__dict__[_MERGES].append((adapter, int(first.shape[0]) - int(base.rank)))

    def unmerge(self) -> None:
        """Take the merged adapters out of the factorized base again, exactly."""
        layer = self.layer
        if not isinstance(layer.base_layer, LowRankModule):
            type(layer).unmerge(layer)
            return
        if not layer.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        merges = layer.__dict__[_MERGES]
        while layer.merged_adapters:
            adapter = layer.merged_adapters[-1]
            if not merges or merges[-1][0] != adapter:
                raise ValueError(
                    f"Cannot unmerge LoRA adapter {adapter!r} of layer {self.name!r} exactly: "
                    "it was merged into the base before rmtprune factorized it. Nothing more "
                    "was changed."
                )
            base = layer.base_layer
            keep = int(base.rank) - merges[-1][1]
            bias = base.bias
            if bias is not None and layer.lora_bias.get(adapter, False):
                bias = bias.detach() - self._scaled_b_bias(adapter).to(bias.dtype)
            first, second = base.first_matrix()[:keep], base.second_matrix()[:, :keep]
            layer.base_layer = _rebuilt(base, first, second, bias)
            merges.pop()
            layer.merged_adapters.pop()

    def _check_exact(self, adapter: str) -> None:
        layer, base = self.layer, self.layer.base_layer
        why = ""
        if _qualified(layer) != _LORA_LINEAR:
            why = f"the layer is a LoRA {type(layer).__name__}, not a LoRA Linear"
        elif not isinstance(base, LowRankLinear):
            why = f"the factorized base is a {type(base).__name__}, not a LowRankLinear"
        elif adapter in _variant_adapters(layer):
            why = "the adapter is a DoRA (or other variant) adapter"
        elif layer.lora_bias.get(adapter, False) and base.bias is None:
            why = "the adapter has a bias (lora_bias=True) and the base layer has none"
        if why:
            raise ValueError(
                f"Cannot merge LoRA adapter {adapter!r} of layer {self.name!r} exactly into its "
                f"base, which rmtprune factorized: {why}. Nothing was merged; keep the adapter "
                "unmerged (the model computes the same), or prune without split=True."
            )

    def _scaled_b_bias(self, adapter: str) -> torch.Tensor:
        b_bias = self.layer.lora_B[adapter].bias.detach()
        return b_bias * self.layer.scaling[adapter]

    def _concatenated(
        self, base: nn.Module, adapter: str, safe_merge: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``[W₁; A]``, ``[W₂ | scaling·B]`` and the bias after merging ``adapter``."""
        assert isinstance(base, LowRankModule)
        layer = self.layer
        w1, w2 = base.first_matrix(), base.second_matrix()
        a = layer.lora_A[adapter].weight.detach()
        b = layer.lora_B[adapter].weight.detach() * layer.scaling[adapter]
        first = torch.cat([w1, a.to(w1.device, w1.dtype)], dim=0)
        second = torch.cat([w2, b.to(w2.device, w2.dtype)], dim=1)
        bias = base.bias.detach() if base.bias is not None else None
        if bias is not None and layer.lora_bias.get(adapter, False):
            bias = bias + self._scaled_b_bias(adapter).to(bias.device, bias.dtype)
        finite = [bool(torch.isfinite(t).all()) for t in (first, second, bias) if t is not None]
        if safe_merge and not all(finite):
            raise ValueError(
                f"NaNs detected in the merged weights of layer {self.name!r}. The adapter "
                f"{adapter!r} seems to be broken; nothing was merged."
            )
        return first, second, bias


def _rebuilt(
    base: nn.Module, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None
) -> LowRankLinear:
    """A layer of ``base``'s type from the given factors, with its flags and training mode."""
    assert isinstance(base, LowRankLinear)
    new = type(base).from_factors(first, second, bias)
    new.first.weight.requires_grad_(base.first.weight.requires_grad)
    new.second.weight.requires_grad_(base.second.weight.requires_grad)
    if new.second.bias is not None and base.second.bias is not None:
        new.second.bias.requires_grad_(base.second.bias.requires_grad)
    new.train(base.training)
    if getattr(base, PRUNED_MARK, False):
        _mark(new)
    return new
