"""What a user attached to a layer follows it to its replacement, or the layer is refused.

One rule, applied where layers are replaced (:func:`rmtprune.factorize.set_submodule`, which
calls :func:`carry_over` whenever a weight layer is replaced by another weight layer): the
replacement computes the same function of the same input (``U_r diag(s_r) Vh_r x + b``),
so everything attached to the layer stays meaningful and is carried over:

* **Hooks**: forward, forward-pre (with their ``with_kwargs``, ``always_call`` and
  ``prepend`` order), full backward and backward-pre, ``state_dict`` pre/post hooks
  (``_register_state_dict_hook`` too) and ``load_state_dict`` pre/post hooks.  The
  replacement *shares* the hook dictionaries of the layer it replaces, so a
  ``RemovableHandle`` returned before pruning still removes its hook from the pruned model,
  and a hook registered afterwards on either module is seen by both.  A
  ``load_state_dict`` pre-hook registered with the module (``register_load_state_dict_pre_hook``)
  is called with the replacement.
* **Frozen weights stay frozen**: a factor of a weight with ``requires_grad=False`` gets
  ``requires_grad=False`` (both factors of a split); the bias keeps its own flag; a
  factorized layer re-factorized keeps the flag of each factor.
* **Train/eval mode** of the layer (and of factors of the same name).
* **Memory format**: factors of a ``channels_last`` convolution are ``channels_last``.
  (Dtype and device follow from the adapters, which build in the weight's dtype and device.)

What cannot be carried refuses the layer, with the reason (:func:`carry_reason`), instead
of being dropped: a legacy (non-full) backward hook (``register_backward_hook``), hooks on
the layer's own submodules (a factor's hooks), hooks on its parameters (``register_hook``,
``register_post_accumulate_grad_hook``: a factor has another gradient), a
``torch.nn.utils.prune`` mask or another hook that recomputes the weight from other tensors
(legacy ``weight_norm`` / ``spectral_norm``), and ``torch.nn.utils.parametrize``
parametrizations.  The walker (``prune``, ``SpectralPruner``) skips such layers in both
split modes: it decides per layer whether to split only after the criterion, and a
calibrated criterion tries splits.

Example
-------
>>> import torch
>>> from rmtprune.factorize import get_adapter, set_submodule, truncated_svd
>>> model = torch.nn.Sequential(torch.nn.Linear(6, 4))
>>> seen = []
>>> handle = model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
>>> _ = model[0].weight.requires_grad_(False)
>>> adapter = get_adapter(model[0])
>>> U, s, Vh = truncated_svd(adapter.weight_matrix(model[0]), rank=2)
>>> _ = set_submodule(model, "0", adapter.rebuild(model[0], U, s, Vh, split=True))
>>> _ = model(torch.ones(1, 6))
>>> seen, model[0].first.weight.requires_grad
([torch.Size([1, 4])], False)
>>> handle.remove()  # the handle from before still works
>>> _ = model(torch.ones(1, 6))
>>> len(seen)
1
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from rmtprune.factorize.masks import is_mask_hook

__all__ = [
    "carried_reason",
    "carry_over",
    "carry_reason",
    "hook_stores",
    "repoint_hooks",
    "weight_hooks",
]


def hook_stores(module: nn.Module) -> dict[str, dict[int, Any]]:
    """Every hook dictionary of ``module`` by attribute name (``_forward_hooks``, ...).

    Read from the instance (every dict attribute whose name ends in ``_hooks`` or holds
    ``_hooks_``), so the flag dictionaries ``_forward_hooks_with_kwargs`` and
    ``_forward_hooks_always_called`` are included and a torch version with other stores is
    covered too.
    """
    return {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, dict) and (name.endswith("_hooks") or "_hooks_" in name)
    }


def weight_hooks(module: nn.Module) -> list[tuple[str, str, Any]]:
    """Forward-pre hooks of ``module`` that recompute one of its tensors from others.

    Each entry is ``(kind, tensor name, hook)``: ``"torch.nn.utils.prune mask (Method)"``,
    ``"legacy weight_norm"`` or ``"legacy spectral_norm"``.
    """
    from torch.nn.utils.prune import BasePruningMethod
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found: list[tuple[str, str, Any]] = []
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, BasePruningMethod):
            methods = getattr(hook, "_pruning_methods", (hook,))
            names = ", ".join(dict.fromkeys(type(m).__name__ for m in methods))
            found.append((f"torch.nn.utils.prune mask ({names})", str(hook._tensor_name), hook))
        elif isinstance(hook, WeightNorm):
            found.append(("legacy weight_norm", hook.name, hook))
        elif isinstance(hook, SpectralNorm):
            found.append(("legacy spectral_norm", hook.name, hook))
    return found


def _hook_kinds(stores: dict[str, dict[int, Any]]) -> list[str]:
    return [name.strip("_").replace("_", " ") for name, store in stores.items() if store]


def carry_reason(module: nn.Module) -> str | None:
    """Why what is attached to ``module`` cannot follow it to a replacement, or ``None``.

    Examples
    --------
    >>> import torch, warnings
    >>> layer = torch.nn.Linear(3, 2)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     _ = layer.register_backward_hook(lambda m, gi, go: None)
    >>> carry_reason(layer)[:45]
    'layer has a legacy backward hook (register_ba'
    """
    for kind, name, _ in weight_hooks(module):
        if kind.startswith("torch.nn.utils.prune"):
            return (
                f"{name} has a {kind}: a low-rank {name} cannot stay masked and the mask would "
                f"undo the pruning; call torch.nn.utils.prune.remove(module, {name!r}) first"
            )
        return f"{name} is recomputed by a {kind} hook, which a replacement cannot carry"
    if parametrize.is_parametrized(module):
        return "weight is parametrized: a replacement cannot carry the parametrization"
    if module._backward_hooks and module._is_full_backward_hook is False:
        return (
            "layer has a legacy backward hook (register_backward_hook), which cannot be "
            "carried to a replacement layer; register it with register_full_backward_hook"
        )
    for name, param in module.named_parameters():
        kinds = [
            kind
            for kind, attr in (
                ("register_hook", "_backward_hooks"),
                ("register_post_accumulate_grad_hook", "_post_accumulate_grad_hooks"),
            )
            if [h for h in (getattr(param, attr, None) or {}).values() if not is_mask_hook(h)]
        ]
        if kinds:
            return (
                f"parameter {name!r} has a tensor hook ({', '.join(kinds)}), which cannot be "
                "carried to the factors of a replacement layer"
            )
    for name, sub in module.named_modules():
        if not name:
            continue
        kinds = _hook_kinds(hook_stores(sub))
        if kinds or parametrize.is_parametrized(sub) or weight_hooks(sub):
            what = ", ".join(kinds) or "parametrizations"
            return (
                f"its submodule {name!r} has {what}, which cannot be carried to a replacement "
                "layer (only the layer's own hooks are)"
            )
    return None


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


def _expected_flags(old: nn.Module, new: nn.Module) -> dict[str, bool]:
    """``requires_grad`` of each parameter of ``new``: the flag of the parameter of the same
    name in ``old``; else a bias takes the flag of the bias, and a weight is frozen when a
    weight of ``old`` is."""
    old_params = dict(old.named_parameters())
    biases = [p for n, p in old_params.items() if _leaf(n) == "bias"]
    weights = [p for n, p in old_params.items() if _leaf(n) != "bias"]
    weight_flag = all(p.requires_grad for p in weights)
    flags: dict[str, bool] = {}
    for name, param in new.named_parameters():
        if name in old_params:
            flags[name] = old_params[name].requires_grad
        elif _leaf(name) == "bias":
            flags[name] = biases[0].requires_grad if len(biases) == 1 else param.requires_grad
        else:
            flags[name] = weight_flag
    return flags


def _strictly_channels_last(tensor: torch.Tensor) -> bool:
    return (
        tensor.ndim == 4
        and tensor.is_contiguous(memory_format=torch.channels_last)
        and not tensor.is_contiguous()
    )


def _shares_hooks(old: nn.Module, new: nn.Module) -> bool:
    stores = hook_stores(old)
    return bool(stores) and all(vars(new).get(k) is v for k, v in stores.items())


def repoint_hooks(old: nn.Module, new: nn.Module) -> None:
    """Hooks of ``new`` registered with their module ``old`` (``_WrappedHook``, e.g. by
    ``register_load_state_dict_pre_hook``) now receive ``new``."""
    from torch.nn.modules.module import _WrappedHook

    for store in hook_stores(new).values():
        for key, hook in list(store.items()):
            if isinstance(hook, _WrappedHook) and hook.with_module and hook.module() is old:
                store[key] = _WrappedHook(hook.hook, new)  # same key: same position


def carry_over(old: nn.Module, new: nn.Module) -> None:
    """Give ``new``, the replacement of ``old``, everything attached to ``old`` (in place).

    ``new`` shares the hook dictionaries of ``old`` (handles returned for ``old`` keep working
    on ``new``; a hook registered on ``old`` later fires on ``new`` too, so do not keep using
    ``old`` with hooks you mean for the model), copies its full-backward-hook flag, its
    train/eval mode, the ``requires_grad`` flags of its weights and bias, and the
    ``channels_last`` memory format of a convolution's weight.  When ``new`` already shares
    the hooks of ``old`` (the original put back after a trial replacement), only the hooks
    registered with their module move to ``new``.  Call :func:`carry_reason` first: this
    function raises ``ValueError`` with that reason rather than drop anything.
    """
    stores = hook_stores(old)
    if _shares_hooks(old, new):
        repoint_hooks(old, new)
        return
    reason = carry_reason(old)
    if reason is not None:
        raise ValueError(
            f"What is attached to the {type(old).__name__} layer cannot be carried over to its "
            f"replacement: {reason}."
        )
    for name, store in stores.items():
        own = vars(new).get(name)
        if isinstance(own, dict):
            for key, hook in own.items():  # a fresh module has none; keep any it has
                store.setdefault(key, hook)
        new.__dict__[name] = store
    if old._backward_hooks:
        new._is_full_backward_hook = old._is_full_backward_hook
    repoint_hooks(old, new)
    flags = _expected_flags(old, new)
    for pname, param in new.named_parameters():
        param.requires_grad_(flags[pname])
    new.train(old.training)
    old_subs = dict(old.named_modules())
    for sname, sub in new.named_modules():
        if sname and sname in old_subs:
            sub.training = old_subs[sname].training
    if any(_strictly_channels_last(p) for p in old.parameters()):
        for param in new.parameters():
            if param.ndim == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)


def carried_reason(old: nn.Module, new: nn.Module) -> str | None:
    """``None`` when ``new`` carries what is attached to ``old`` (:func:`carry_over`); else
    what it lost (hooks, frozen flags or mode)."""
    if new is old:
        return None
    lost = [
        name.strip("_")
        for name, store in hook_stores(old).items()
        if store and vars(new).get(name) is not store
    ]
    if lost:
        return f"the replacement lost the layer's hooks ({', '.join(lost)})"
    flags = _expected_flags(old, new)
    wrong = [n for n, p in new.named_parameters() if p.requires_grad != flags[n]]
    if wrong:
        return f"the replacement changed requires_grad of {wrong}"
    if new.training != old.training:
        return f"the replacement is in {'train' if new.training else 'eval'} mode, the layer not"
    return None
