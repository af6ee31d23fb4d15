"""Activation statistics of layers and the two SVD factorizations calibration chooses between.

For a layer ``y = W x + b`` (``W`` is ``m × n``) and calibration inputs stacked as the rows
of ``X`` (``N × n``), let ``G = XᵀX`` be the input Gram matrix.  The output error of
replacing ``W`` by ``W'`` is ``‖(W − W') Xᵀ‖_F² = tr((W − W') G (W − W')ᵀ)``.

*Plain SVD* ``W = U diag(s) Vᵀ`` truncated to rank ``r`` has the output error
``Σ_{i>r} s_i² · v_iᵀ G v_i`` (the cross terms vanish because the ``u_i`` are orthonormal);
it is the best rank-``r`` approximation in the Frobenius norm, not in the data's metric.

*Whitened SVD* (activation-aware, as in SVD-LLM, Wang et al. 2024): with
``L Lᵀ = G + λ I`` (Cholesky, ``λ = ridge · tr(G) / n``) take the SVD
``W L = U diag(σ) Zᵀ`` and keep ``W' = U_r diag(σ_r) (Z_rᵀ L⁻¹)``.  Then
``‖(W − W') L‖_F² = Σ_{i>r} σ_i²``: it is the best rank-``r`` approximation in the metric of
the (regularised) inputs.  ``λ > 0`` keeps directions the calibration data never visits from
being treated as free, which is what makes a whitened truncation overfit its calibration
set.  Both factorizations return triplets ``(U_r, s_r, Vh_r)`` with ``W' = U_r diag(s_r)
Vh_r``, ready for :meth:`rmtprune.factorize.registry.LayerAdapter.rebuild` (which does not
need ``Vh_r`` orthonormal).

Example
-------
>>> import torch
>>> W = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
>>> f = LayerFactors.fit(W, None, whiten=False)
>>> f.tail_error2.tolist()   # squared output errors at ranks 0..3 with G = I
[14.0, 5.0, 1.0, 0.0]
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rmtprune.factorize.registry import get_adapter, set_submodule
from rmtprune.pruning.outputs import check_finite, position_mask, run_batch

__all__ = ["LayerFactors", "factorize_at", "input_grams"]


def _layer_inputs(
    module: nn.Module, x: torch.Tensor, n: int, batch: Any = None
) -> torch.Tensor | None:
    """The inputs of ``module`` as rows of length ``n`` (the matrix view's columns), or None.

    Rows at padded positions are left out: when ``batch`` is a mapping with an
    ``attention_mask`` of shape ``(B, T)`` and ``x`` (3-D or more) starts with ``(B, T)``,
    as the output change leaves them out (:func:`rmtprune.pruning.outputs.position_mask`).
    """
    if isinstance(module, nn.Conv2d) and x.dim() == 4 and module.padding_mode == "zeros":
        padding = module.padding
        if isinstance(padding, str):
            return None
        cols = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)
        return cols.transpose(1, 2).reshape(-1, n) if cols.shape[1] == n else None
    if not x.is_floating_point() or x.shape[-1] != n:
        return None
    mask = position_mask(batch, x) if x.dim() >= 3 else None
    if mask is None:
        return x.reshape(-1, n)
    keep = mask.expand(*x.shape[:-1], 1).reshape(-1) != 0
    return x.reshape(-1, n)[keep.to(x.device)]


@contextmanager
def _hooks(layers: Mapping[str, nn.Module], fn: Callable[[str, Any], None]) -> Iterator[None]:
    handles = [
        module.register_forward_pre_hook(lambda _m, args, name=name: fn(name, args))
        for name, module in layers.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def input_grams(
    model: nn.Module,
    layers: Mapping[str, tuple[nn.Module, int]],
    batches: Sequence[Any],
    *,
    numbers: Sequence[int] | None = None,
) -> dict[str, torch.Tensor | None]:
    """Input Gram matrices ``XᵀX`` (float64, ``n × n``) of the named layers on ``batches``.

    ``layers`` maps a name to ``(module, n)``.  A layer whose input cannot be read as rows of
    length ``n`` (an embedding, a strided conv with string padding, ...) gets ``None``.
    Padded tokens (``attention_mask`` of a mapping batch, see :func:`_layer_inputs`) do not
    count.
    The model runs in eval mode without gradients; its mode is restored.

    A batch holding NaN or Inf, a batch the model cannot run, and a layer input that is not
    finite raise a ``ValueError`` naming the batch (``numbers``: the batches' numbers in the
    user's list, default ``0, 1, ...``).
    """
    numbers = list(range(len(batches)) if numbers is None else numbers)
    check_finite(batches, "input_grams", "batches", numbers)
    grams: dict[str, torch.Tensor | None] = {}
    readable: dict[str, bool] = {name: True for name in layers}
    current: list[Any] = [None]  # the batch being run, for its attention mask
    non_finite: list[str] = []  # layers whose input on the current batch is not finite

    def record(name: str, args: Any) -> None:
        module, n = layers[name]
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        rows = None if x is None else _layer_inputs(module, x.detach(), n, current[0])
        if rows is None or not readable[name]:
            readable[name] = False
            return
        rows = rows.to(torch.float64).cpu()
        if not bool(torch.isfinite(rows).all()):
            non_finite.append(name)
            return
        previous = grams.get(name)
        gram = rows.T @ rows
        grams[name] = gram if previous is None else previous + gram

    was_training = model.training
    model.eval()
    try:
        with _hooks({k: v[0] for k, v in layers.items()}, record), torch.no_grad():
            for batch, number in zip(batches, numbers, strict=True):
                current[0] = batch
                run_batch(model, batch, number)
                if non_finite:
                    raise ValueError(
                        f"The input of layer {non_finite[0]!r} on calibration batch {number} "
                        "holds NaN or Inf values although the batch is finite: the unchanged "
                        "model does not compute finite values there; no statistics can be "
                        "taken from it."
                    )
    finally:
        model.train(was_training)
    return {name: grams.get(name) if readable[name] else None for name in layers}


@dataclass(frozen=True)
class LayerFactors:
    """Full factorization ``W = U diag(s) Vh`` of one layer, ordered for truncation.

    ``tail_error2[r]`` is the squared output error ``‖(W − W_r) Xᵀ‖_F²`` of keeping the top
    ``r`` triplets (``r = 0 … p``) on the inputs whose Gram matrix was given (plus
    ``λ ‖W − W_r‖_F²`` when whitened); with no Gram matrix the identity is used.
    """

    U: torch.Tensor
    s: torch.Tensor
    Vh: torch.Tensor
    tail_error2: torch.Tensor
    whitened: bool

    @classmethod
    def fit(
        cls,
        matrix: torch.Tensor,
        gram: torch.Tensor | None,
        *,
        whiten: bool,
        ridge: float = 1e-2,
    ) -> LayerFactors:
        """Factor ``matrix`` (``m × n``) plainly or whitened by ``gram`` (see the module doc)."""
        W = matrix.detach().to(device="cpu", dtype=torch.float64)
        n = W.shape[1]
        if whiten and gram is not None:
            scale = float(torch.trace(gram)) / n
            lam = ridge * scale if scale > 0 else max(ridge, 1e-12)
            eye = torch.eye(n, dtype=torch.float64)
            L = torch.linalg.cholesky(gram.to(torch.float64) + lam * eye)
            U, s, Zh = torch.linalg.svd(W @ L, full_matrices=False)
            Vh = torch.linalg.solve_triangular(L, Zh, upper=False, left=False)
            weights = s.square()
        else:
            U, s, Vh = torch.linalg.svd(W, full_matrices=False)
            if gram is None:
                weights = s.square()
            else:
                g = gram.to(torch.float64)
                weights = s.square() * torch.einsum("ij,jk,ik->i", Vh, g, Vh)
            whiten = False
        reverse = torch.flip(weights, (0,)).cumsum(0)
        tail = torch.cat([torch.flip(reverse, (0,)), torch.zeros(1, dtype=torch.float64)])
        return cls(U, s, Vh, tail.clamp_min(0.0), bool(whiten))

    def truncate(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top-``rank`` triplets ``(U_r, s_r, Vh_r)``."""
        return self.U[:, :rank], self.s[:rank], self.Vh[:rank]


def factorize_at(
    model: nn.Module,
    ranks: Mapping[str, int],
    batches: Sequence[Any] | None = None,
    *,
    whiten: bool = False,
    ridge: float = 1e-2,
) -> nn.Module:
    """A copy of ``model`` with each named layer split at the given rank, plainly or whitened.

    This compares factorizations at *equal parameter counts*: the same ranks, so the same
    sizes, with plain SVD or with activation-whitened SVD (input Gram matrices from
    ``batches``; needed when ``whiten``).  ``model`` is not modified.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 6))
    >>> factorize_at(model, {"0": 2})[0].rank
    2
    """
    if whiten and batches is None:
        raise ValueError(
            "The 'batches' parameter of factorize_at must hold calibration inputs when "
            "whiten=True. Got None instead."
        )
    if batches is not None:
        check_finite(batches, "factorize_at", "batches")
    out = copy.deepcopy(model)
    layers: dict[str, tuple[nn.Module, int]] = {}
    for name in ranks:
        module = out.get_submodule(name)
        adapter = get_adapter(module)
        if adapter is None:
            raise ValueError(
                f"The 'ranks' parameter of factorize_at names {name!r}, a "
                f"{type(module).__name__}, which has no adapter."
            )
        layers[name] = (module, adapter.matrix_shape(module)[1])
    grams = input_grams(out, layers, batches) if batches is not None else {}
    with torch.no_grad():
        for name, (module, _) in layers.items():
            adapter = get_adapter(module)
            assert adapter is not None
            factors = LayerFactors.fit(
                adapter.weight_matrix(module), grams.get(name), whiten=whiten, ridge=ridge
            )
            new = adapter.rebuild(module, *factors.truncate(int(ranks[name])), split=True)
            set_submodule(out, name, new)
    return out
