"""Data-aware factorization of embeddings (index counts) and convolutions (unfolded inputs).

Every value is checked against an independent computation: a weighted SVD written out by hand,
a symmetric square root instead of the Cholesky factor, the convolution itself.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.factorize import LowRankConv2d, LowRankEmbedding, get_adapter
from rmtprune.pruning.calibration import Calibrated
from rmtprune.pruning.whitening import LayerFactors, factorize_at, input_grams


class _Encoder(nn.Module):
    """Token and position embeddings, then a linear layer: ``(B, T)`` ids to ``(B, T, d)``."""

    def __init__(self, vocab: int, dim: int, positions: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(positions, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        positions = torch.arange(input_ids.shape[1])[None]  # (1, T), shared by the batch
        return self.out(torch.tanh(self.tok(input_ids) + self.pos(positions)))


def _weighted_truncation(E: torch.Tensor, weights: torch.Tensor, rank: int) -> torch.Tensor:
    """argmin over rank-``rank`` tables of ``Σ_t w_t ‖e_t − ê_t‖²`` (all ``w_t > 0``): the SVD
    of ``diag(√w) E``, truncated, with the rows divided back by ``√w``."""
    root = weights.sqrt()
    U, s, Vh = torch.linalg.svd(root[:, None] * E, full_matrices=False)
    return (U[:, :rank] * s[:rank]) @ Vh[:rank] / root[:, None]


def _product(factors: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    U, s, Vh = factors
    return (U * s) @ Vh


# --- embeddings: index counts ------------------------------------------------------------------


def test_embedding_whitening_is_the_weighted_svd() -> None:
    """Closed form: E' minimises Σ_t c_t ‖e_t − e'_t‖² (ridge 0, every count > 0); with unseen
    rows and the ridge floor the weights are c + ridge · mean(c), and unseen rows get their
    projection onto the kept directions."""
    g = torch.Generator().manual_seed(0)
    E = torch.randn(40, 6, generator=g, dtype=torch.float64)
    counts = torch.randint(1, 50, (40,), generator=g).to(torch.float64)
    white = LayerFactors.fit(E, counts, whiten=True, ridge=0.0)
    plain = LayerFactors.fit(E, counts, whiten=False)
    for r in (1, 3, 5):
        truth = _weighted_truncation(E, counts, r)
        got = _product(white.truncate(r))
        torch.testing.assert_close(got, truth, rtol=1e-10, atol=1e-10)
        error = float((counts[:, None] * (E - truth).square()).sum())
        assert float(white.tail_error2[r]) == pytest.approx(error, rel=1e-10)
        plain_error = float((counts[:, None] * (E - _product(plain.truncate(r))).square()).sum())
        assert float(plain.tail_error2[r]) == pytest.approx(plain_error, rel=1e-10)
        assert error < plain_error
    torch.testing.assert_close(_product(white.truncate(6)), E, rtol=1e-10, atol=1e-10)

    counts[::3] = 0  # a third of the rows never looked up
    ridge = 1e-2
    floored = counts + ridge * counts.mean()
    white = LayerFactors.fit(E, counts, whiten=True, ridge=ridge)
    for r in (2, 4):
        truth = _weighted_truncation(E, floored, r)
        torch.testing.assert_close(_product(white.truncate(r)), truth, rtol=1e-9, atol=1e-10)
        Vh = white.truncate(r)[2]
        unseen = E[::3]
        torch.testing.assert_close(truth[::3], unseen @ Vh.T @ Vh, rtol=1e-9, atol=1e-10)
        error = float((floored[:, None] * (E - truth).square()).sum())
        assert float(white.tail_error2[r]) == pytest.approx(error, rel=1e-10)
    with pytest.raises(ValueError, match=r"'gram' parameter of LayerFactors\.fit"):
        LayerFactors.fit(E, counts[:-1], whiten=True)


def test_the_floor_gives_spare_rank_to_the_rows_never_looked_up() -> None:
    """Known answer: 20 looked-up rows span 3 directions, 40 unseen rows 7 others.  At rank 5
    the ridge floor keeps the looked-up rows exactly and the unseen rows' best 2 directions
    (their error: their plain SVD tail); without it (ridge 0) those 2 directions are arbitrary.
    """
    g = torch.Generator().manual_seed(5)
    E = torch.zeros(60, 10, dtype=torch.float64)
    E[:20, :3] = torch.randn(20, 3, generator=g, dtype=torch.float64)
    E[20:, 3:] = torch.randn(40, 7, generator=g, dtype=torch.float64) * torch.linspace(2, 0.2, 7)
    counts = torch.zeros(60, dtype=torch.float64)
    counts[:20] = torch.randint(50, 100, (20,), generator=g).to(torch.float64)
    unseen_tail = float(torch.linalg.svdvals(E[20:, 3:])[2:].square().sum())

    def unseen_error(ridge: float) -> float:
        factors = LayerFactors.fit(E, counts, whiten=True, ridge=ridge).truncate(5)
        got = _product(factors)
        torch.testing.assert_close(got[:20], E[:20], rtol=0, atol=1e-9)  # seen rows exact
        return float((got[20:] - E[20:]).square().sum())

    assert unseen_error(1e-2) == pytest.approx(unseen_tail, rel=1e-9)
    assert unseen_error(0.0) > 1.1 * unseen_tail


def test_index_counts_leave_padding_out_and_count_shared_positions() -> None:
    model = _Encoder(30, 8, 10)
    g = torch.Generator().manual_seed(1)
    lengths = [10, 6, 3]
    ids = torch.randint(1, 30, (3, 10), generator=g)
    mask = (torch.arange(10) < torch.tensor(lengths)[:, None]).long()
    ids[mask == 0] = 0  # padding token at the padded positions
    layers = {name: (model.get_submodule(name), 8) for name in ("tok", "pos")}
    grams = input_grams(model, layers, [{"input_ids": ids, "attention_mask": mask}])
    real = Counter(int(t) for t in ids[mask.bool()])
    assert grams["tok"] is not None and grams["tok"].shape == (30,)
    assert grams["tok"].tolist() == [float(real[t]) for t in range(30)]
    per_position = [float(sum(k > p for k in lengths)) for p in range(10)]  # real tokens there
    assert grams["pos"] is not None and grams["pos"].tolist() == per_position
    whole = input_grams(model, layers, [{"input_ids": ids}])  # no mask: every lookup counts
    assert whole["tok"] is not None and float(whole["tok"][0]) == float((ids == 0).sum())
    # without a mask the shared row counts as looked up once (a factor B on every count,
    # which changes no factorization)
    assert whole["pos"] is not None and whole["pos"].tolist() == [1.0] * 10


def test_weighting_beats_plain_svd_on_a_skewed_token_distribution() -> None:
    """Known answer: 4 frequent tokens (1,000 lookups each) with short rows in directions of
    their own, 96 rare tokens (one lookup each) with unit rows elsewhere.  Plain SVD at rank 4
    keeps the rare directions; frequency-whitened SVD keeps the frequent rows exactly, so its
    error on the calibration lookups is exactly the rare rows' energy, 96."""
    g = torch.Generator().manual_seed(2)
    table = torch.zeros(100, 16, dtype=torch.float64)
    table[:4, :4] = 0.2 * torch.eye(4, dtype=torch.float64)
    rare = torch.randn(96, 12, generator=g, dtype=torch.float64)
    table[4:, 4:] = rare / rare.norm(dim=1, keepdim=True)
    model = nn.Sequential(nn.Embedding(100, 16).double())
    model[0].weight.data.copy_(table)
    stream = torch.cat([torch.arange(4).repeat(1000), torch.arange(4, 100)])
    stream = stream[torch.randperm(stream.numel(), generator=g)]
    batches = list(stream.reshape(8, -1))

    def error(pruned: nn.Module) -> float:
        with torch.no_grad():
            return float((pruned(stream) - model(stream)).square().sum())

    white = factorize_at(model, {"0": 4}, batches, whiten=True)
    plain = factorize_at(model, {"0": 4})
    assert isinstance(white[0], LowRankEmbedding)
    assert error(white) == pytest.approx(96.0, rel=1e-9)
    assert error(plain) > 2 * 96.0  # the frequent rows, 4,000 lookups × 0.04, are lost
    torch.testing.assert_close(white[0].weight[:4], model[0].weight[:4], rtol=0, atol=1e-12)


def test_calibrated_prunes_the_embedding_with_its_frequency_weights() -> None:
    """With token-id batches the guard holds on held-out batches with the embedding included,
    and the embedding gets the frequency-whitened factors of the fit batches' counts."""
    g = torch.Generator().manual_seed(3)
    vocab, dim = 200, 32
    model = _Encoder(vocab, dim, 12)
    with torch.no_grad():  # a table with a few strong directions, like trained embeddings
        u = torch.randn(vocab, 6, generator=g)
        v = torch.randn(6, dim, generator=g)
        model.tok.weight.copy_(u @ v / 3 + 0.02 * torch.randn(vocab, dim, generator=g))
        model.tok.weight[0] = 0.0  # the padding row
    zipf = 1.0 / torch.arange(1, vocab) ** 1.2  # skewed token frequencies (never the padding)
    batches = []
    for _ in range(6):
        ids = 1 + torch.multinomial(zipf, 8 * 12, replacement=True, generator=g).reshape(8, 12)
        mask = torch.ones_like(ids)
        mask[:, 9:] = 0
        ids[mask == 0] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    criterion = Calibrated(batches, 0.1, whiten=True)
    select = rmtprune.Select(include=["tok", "out"], min_dim=8)
    pruned, report = rmtprune.prune(model, criterion=criterion, select=select)
    assert report["tok"].action == "split" and isinstance(pruned.tok, LowRankEmbedding)
    assert report["tok"].reason.startswith("calibrated (whitened SVD)")
    rank = report["tok"].rank_after
    assert rank < 6 * 32 * 200 // (32 + 200)
    counts = torch.zeros(vocab, dtype=torch.float64)
    for batch in criterion.fit_batches:
        real = batch["input_ids"][batch["attention_mask"].bool()]
        counts += torch.bincount(real, minlength=vocab)
    floored = counts + criterion.ridge * counts.mean()
    truth = _weighted_truncation(model.tok.weight.detach().double(), floored, rank)
    torch.testing.assert_close(pruned.tok.weight.double(), truth, rtol=1e-4, atol=1e-5)
    assert not bool(pruned.tok.weight[0].any())  # the padding row stays exactly zero
    num = den = 0.0
    with torch.no_grad():
        for batch in criterion.held_batches:
            keep = batch["attention_mask"].bool()
            f, h = model(**batch)[keep].double(), pruned(**batch)[keep].double()
            num += float((h - f).square().sum())
            den += float(f.square().sum())
    assert report.output_change == pytest.approx(math.sqrt(num / den), rel=1e-6)
    assert report.output_change <= 0.1


def test_a_layer_whose_inputs_cannot_be_read_is_reported_as_plain_svd(monkeypatch) -> None:
    """``input_grams`` gives None for a layer it cannot read (a registered layer type whose
    input is not rows of its matrix view): the reason says plain SVD, not whitened."""
    import rmtprune.pruning.calibration as calibration

    g = torch.Generator().manual_seed(6)
    model = nn.Sequential(nn.Linear(64, 64))
    with torch.no_grad():
        low = torch.randn(64, 4, generator=g) @ torch.randn(4, 64, generator=g) / 8
        model[0].weight.copy_(low + 0.01 * torch.randn(64, 64, generator=g))
    batches = [torch.randn(32, 64, generator=g) for _ in range(4)]
    monkeypatch.setattr(
        calibration, "input_grams", lambda _m, layers, *_a, **_k: dict.fromkeys(layers)
    )
    _, report = rmtprune.prune(model, criterion=Calibrated(batches, 0.2, whiten=True))
    assert report["0"].action == "split"
    assert report["0"].reason.startswith(
        "calibrated (plain SVD: its inputs could not be read for whitening)"
    )


# --- convolutions: unfolded inputs ---------------------------------------------------------------

_CONVS = [
    {"kernel_size": 3, "padding": 1, "stride": 2},
    {"kernel_size": 4, "padding": "same"},  # even kernel: one more row/column bottom-right
    {"kernel_size": 3, "padding": "same", "dilation": 2, "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": (1, 2), "stride": (2, 1), "padding_mode": "circular"},
    {"kernel_size": (2, 3), "padding": 1, "padding_mode": "replicate"},
    {"kernel_size": 3, "padding": "valid"},
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("options", _CONVS, ids=lambda o: "-".join(map(str, o.values())))
def test_conv_whitening_is_the_closed_form_optimum(options: dict) -> None:
    g = torch.Generator().manual_seed(4)
    conv = nn.Conv2d(3, 10, bias=False, **options).double()
    n = conv.weight[0].numel()
    scale = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)[None, :, None, None]
    # anisotropic inputs, as wide as the matrix view: reading rows of the last dimension
    # (what a convolution is not) would find the right length
    x = torch.randn(4, 3, 9, n, generator=g, dtype=torch.float64) * scale
    gram = input_grams(conv, {"": (conv, n)}, [x])[""]
    assert gram is not None and gram.shape == (n, n)
    W = conv.weight.detach().reshape(10, n)

    def direct_error(kernel: torch.Tensor) -> float:
        other = nn.Conv2d(3, 10, bias=False, **options).double()
        other.weight.data = kernel.reshape(conv.weight.shape)
        with torch.no_grad():
            return float((conv(x) - other(x)).square().sum())

    # the Gram matrix predicts the convolution's own error for any kernel
    other = torch.randn(10, n, generator=g, dtype=torch.float64)
    predicted = float(torch.einsum("ij,jk,ik->", W - other, gram, W - other))
    assert predicted == pytest.approx(direct_error(other), rel=1e-9)

    ridge, rank = 1e-2, 4
    white = LayerFactors.fit(W, gram, whiten=True, ridge=ridge)
    metric = gram + ridge * torch.trace(gram) / n * torch.eye(n, dtype=torch.float64)
    values, Q = torch.linalg.eigh(metric)  # symmetric square root, not the Cholesky factor
    root, inverse = (Q * values.sqrt()) @ Q.T, (Q / values.sqrt()) @ Q.T
    U, s, Vh = torch.linalg.svd(W @ root)
    truth = (U[:, :rank] * s[:rank]) @ Vh[:rank] @ inverse
    got = _product(white.truncate(rank))
    torch.testing.assert_close(got, truth, rtol=1e-9, atol=1e-10)
    lam_part = float(ridge * torch.trace(gram) / n * (W - got).square().sum())
    assert float(white.tail_error2[rank]) == pytest.approx(direct_error(got) + lam_part, rel=1e-9)

    split = get_adapter(conv).rebuild(conv, *white.truncate(rank), split=True)
    assert isinstance(split, LowRankConv2d)
    reconstructed = nn.Conv2d(3, 10, bias=False, **options).double()
    reconstructed.weight.data = got.reshape(conv.weight.shape)
    with torch.no_grad():
        torch.testing.assert_close(split(x), reconstructed(x), rtol=1e-10, atol=1e-10)
    # the factorized convolution is read through its first convolution: the same inputs
    again = input_grams(split, {"": (split, n)}, [x])[""]
    assert again is not None
    torch.testing.assert_close(again, gram, rtol=1e-12, atol=1e-9)
