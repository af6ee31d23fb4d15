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
Vh_r``, ready for :meth:`rmtprune.factorize.registry.LayerAdapter.rebuild` (which needs
neither ``U_r`` nor ``Vh_r`` orthonormal).

Which inputs each layer type has:

* ``nn.Linear``, HF ``Conv1D`` and their factorized forms: the rows of the input tensor's last
  dimension (padded tokens left out, :func:`_layer_inputs`).
* ``nn.Conv2d`` (and :class:`~rmtprune.factorize.LowRankConv2d`, read through its first
  convolution): the columns of ``F.unfold`` (length ``in · kh · kw``, the kernel's matrix
  view), after padding the input as the convolution does: ``'zeros'``, ``'reflect'``,
  ``'replicate'`` and ``'circular'`` modes, integer padding, ``'valid'`` and ``'same'``
  (PyTorch's split of an odd total: the extra row and column at the bottom and right).
* ``nn.Embedding`` (and :class:`~rmtprune.factorize.LowRankEmbedding`): an embedding with
  table ``E`` (``vocab × d``, the matrix view, whose *rows* are indexed by the input) computes
  ``Eᵀ x`` for one-hot ``x``, so the Gram matrix of its inputs is ``diag(c)`` with ``c_t``
  the number of times index ``t`` is looked up (padded positions left out).  It is kept as
  the vector ``c`` and weights the rows: the output error is ``Σ_t c_t ‖e_t − e'_t‖²``.
  Whitened, with ``d = c + λ`` (``λ = ridge · mean(c)``: a floor, so that indices the
  calibration data never looks up still count) and the SVD ``diag(√d) E = U diag(σ) Zᵀ``,
  ``E' = E Z_r Z_rᵀ``: every row, seen or not, is projected onto the ``r`` directions that
  matter most to the weighted rows; ``Σ_t d_t ‖e_t − e'_t‖² = Σ_{i>r} σ_i²`` is the least
  any rank-``r`` table reaches.  A row that is zero (a padding row) stays exactly zero.

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

from rmtprune.factorize.lowrank import LowRankConv2d
from rmtprune.factorize.lowrank_embedding import LowRankEmbedding
from rmtprune.factorize.registry import get_adapter, set_submodule
from rmtprune.pruning.outputs import check_finite, position_mask, run_batch

__all__ = ["LayerFactors", "factorize_at", "input_grams", "vocab_size"]


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)``: the padding ``conv`` adds to its input, as ``F.pad``
    takes it (``'same'``: PyTorch's split, the odd one at the right and the bottom)."""
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = conv.padding  # type: ignore[str-unpack]  # a tuple here: the strings are above
    return (int(pw), int(pw), int(ph), int(ph))


def _unfolded(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """The convolution's input patches as rows of length ``in · kh · kw``, or None.

    The input is padded as the convolution pads it (``F.pad`` in its ``padding_mode``), then
    unfolded without padding: ``conv(x)`` is ``W`` (the kernel's matrix view) times each row.
    """
    if x.dim() == 3:  # an unbatched (C, H, W) input
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != conv.in_channels or not x.is_floating_point():
        return None
    pads = _conv_padding(conv)
    if any(pads):
        mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        x = F.pad(x, pads, mode=mode)
    cols = F.unfold(x, conv.kernel_size, conv.dilation, 0, conv.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _layer_inputs(
    module: nn.Module, x: torch.Tensor, n: int, batch: Any = None
) -> torch.Tensor | None:
    """The inputs of ``module`` as rows of length ``n`` (the matrix view's columns), or None.

    A convolution's rows are its unfolded input patches (:func:`_unfolded`).  Otherwise rows
    at padded positions are left out: when ``batch`` is a mapping with an
    ``attention_mask`` of shape ``(B, T)`` and ``x`` (3-D or more) starts with ``(B, T)``,
    as the output change leaves them out (:func:`rmtprune.pruning.outputs.position_mask`).
    """
    conv = module.first if isinstance(module, LowRankConv2d) else module
    if isinstance(conv, nn.Conv2d):
        rows = _unfolded(conv, x)
        return rows if rows is not None and rows.shape[1] == n else None
    if not x.is_floating_point() or x.shape[-1] != n:
        return None
    mask = position_mask(batch, x) if x.dim() >= 3 else None
    if mask is None:
        return x.reshape(-1, n)
    keep = mask.expand(*x.shape[:-1], 1).reshape(-1) != 0
    return x.reshape(-1, n)[keep.to(x.device)]


def _index_counts(vocab: int, x: torch.Tensor, batch: Any = None) -> torch.Tensor | None:
    """How often each of the ``vocab`` indices in ``x`` is looked up (float64), or None.

    Padded positions do not count: with an ``attention_mask`` of shape ``(B, T)`` in a
    mapping ``batch``, indices of shape ``(B, T, ...)`` are weighted by it, and a ``(1, T)``
    row shared by the batch (position ids) counts once per real token at each position.
    """
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        return None
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    if (
        isinstance(mask, torch.Tensor)
        and mask.dim() == 2
        and x.dim() == 2
        and x.shape[0] == 1
        and x.shape[1] == mask.shape[1]
    ):
        x = x.expand(mask.shape)
    weights = position_mask(batch, x)
    index = x.reshape(-1).cpu()
    w = None if weights is None else weights.expand(x.shape).reshape(-1).cpu()
    inside = (index >= 0) & (index < vocab)  # others make the lookup itself fail
    w = None if w is None else w[inside]
    return torch.bincount(index[inside], weights=w, minlength=vocab).to(torch.float64)


def vocab_size(module: nn.Module) -> int | None:
    """The number of rows of an embedding's table, or None for other layers."""
    if isinstance(module, (nn.Embedding, LowRankEmbedding)):
        return int(module.num_embeddings)
    return None


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
    diagonal: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Input Gram matrices ``XᵀX`` (float64, ``n × n``) of the named layers on ``batches``.

    With ``diagonal=True`` only their diagonals (length ``n``: each input's sum of squares,
    what Wanda's scores need) are accumulated, at ``O(n)`` instead of ``O(n²)`` per row.

    ``layers`` maps a name to ``(module, n)``.  A convolution's rows are its unfolded input
    patches.  An embedding (``nn.Embedding``, :class:`~rmtprune.factorize.LowRankEmbedding`)
    gets the diagonal of its one-hot inputs' Gram matrix: the 1-D vector of how often each
    index is looked up (length ``num_embeddings``; it weights the rows of the matrix view, see
    the module doc).  A layer whose input cannot be read as rows of length ``n`` (or as
    indices) gets ``None``.  Padded tokens (``attention_mask`` of a mapping batch, see
    :func:`_layer_inputs` and :func:`_index_counts`) do not count.
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
        vocab = vocab_size(module)
        gram: torch.Tensor | None = None
        if x is not None and vocab is not None:
            gram = _index_counts(vocab, x.detach(), current[0])
        elif x is not None:
            rows = _layer_inputs(module, x.detach(), n, current[0])
            if rows is not None:
                rows = rows.to(torch.float64).cpu()
                if not bool(torch.isfinite(rows).all()):
                    non_finite.append(name)
                    return
                gram = (rows * rows).sum(0) if diagonal else rows.T @ rows
        if gram is None or not readable[name]:
            readable[name] = False
            return
        previous = grams.get(name)
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
    ``λ ‖W − W_r‖_F²`` when whitened); with no Gram matrix the identity is used.  For an
    embedding (a 1-D ``gram``: index counts ``c`` weighting the rows) it is
    ``Σ_t c_t ‖e_t − e'_t‖²`` (plus ``λ ‖E − E_r‖_F²`` when whitened).
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
        """Factor ``matrix`` (``m × n``) plainly or whitened by ``gram`` (see the module doc).

        ``gram`` is the ``n × n`` input Gram matrix, or for an embedding the 1-D vector of its
        ``m`` index counts (the rows' weights), or None.
        """
        W = matrix.detach().to(device="cpu", dtype=torch.float64)
        m, n = W.shape
        if gram is not None and gram.dim() == 1:
            if gram.shape[0] != m:
                raise ValueError(
                    "The 'gram' parameter of LayerFactors.fit, given as row weights (index "
                    f"counts), must have length {m} (the matrix's rows). Got "
                    f"{gram.shape[0]} instead."
                )
            return cls._fit_rows(W, gram.to(torch.float64), whiten=whiten, ridge=ridge)
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
        return cls(U, s, Vh, _tail(weights), bool(whiten))

    @classmethod
    def _fit_rows(
        cls, W: torch.Tensor, counts: torch.Tensor, *, whiten: bool, ridge: float
    ) -> LayerFactors:
        """An embedding's table ``W`` whose rows are weighted by their index ``counts``."""
        if whiten:
            scale = float(counts.sum()) / W.shape[0]
            lam = ridge * scale if scale > 0 else max(ridge, 1e-12)
            _, s, Vh = torch.linalg.svd((counts + lam).sqrt()[:, None] * W, full_matrices=False)
            # U diag(s) Vh = W Z Zᵀ: every row projected onto the weighted rows' directions
            # (no division by the weights, so rows that were never looked up stay finite).
            U = (W @ Vh.T) / torch.where(s > 0, s, torch.ones_like(s))
            return cls(U, s, Vh, _tail(s.square()), True)
        U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        weights = s.square() * (counts[:, None] * U.square()).sum(0)
        return cls(U, s, Vh, _tail(weights), False)

    def truncate(self, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top-``rank`` triplets ``(U_r, s_r, Vh_r)``."""
        return self.U[:, :rank], self.s[:rank], self.Vh[:rank]


def _tail(weights: torch.Tensor) -> torch.Tensor:
    """``tail[r] = Σ_{i ≥ r} weights_i`` for ``r = 0 … p`` (clamped at 0)."""
    reverse = torch.flip(weights, (0,)).cumsum(0)
    tail = torch.cat([torch.flip(reverse, (0,)), torch.zeros(1, dtype=torch.float64)])
    return tail.clamp_min(0.0)


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
    ``batches``; needed when ``whiten``; for an embedding its index counts, for a
    convolution its unfolded inputs, see the module doc).  ``model`` is not modified.

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
