"""A model pruned with split layers runs unchanged under TorchScript, tracing, torch.compile,
torch.export and ONNX Runtime.

The model has one of each factorized layer: ``LowRankEmbedding`` (with ``padding_idx``),
``LowRankLinear``, ``LowRankConv1D`` (Hugging Face ``Conv1D``, when transformers is installed)
and ``LowRankConv2d`` with stride, dilation, ``padding='same'`` and the ``reflect`` and
``circular`` padding modes.  Each exported form is compared with the eager pruned model: bit
for bit where the same kernels run (script, trace, a saved and loaded script), to float32
rounding where a compiler or another runtime may reorder the arithmetic.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import rmtprune
from rmtprune.factorize import LowRankConv1D, LowRankConv2d, LowRankEmbedding, LowRankLinear

# Recent torch warns that torch.jit is deprecated (use torch.export) on each call; the
# factorized layers still support it for deployments that load TorchScript.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)

RANK = 4
VOCAB, DIM, HIDDEN, OUT = 40, 24, 20, 16
# float32 rounding of a few hundred products, for the paths that may reorder the arithmetic
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def _hf_conv1d(nf: int, nx: int) -> nn.Module | None:
    """Hugging Face's ``Conv1D(nf, nx)``, or ``None`` without transformers."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D(nf, nx)


class Net(nn.Module):
    """Embedding → Linear → HF Conv1D, and three convolutions, as two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.lin = nn.Linear(DIM, HIDDEN)
        conv1d = _hf_conv1d(OUT, HIDDEN)
        self.proj = conv1d if conv1d is not None else nn.Linear(HIDDEN, OUT)
        self.conv = nn.Conv2d(3, 12, 3, stride=2, dilation=2)
        self.conv_same = nn.Conv2d(12, 10, 3, padding="same", padding_mode="reflect")
        self.conv_circ = nn.Conv2d(
            10, 8, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), padding_mode="circular"
        )

    def forward(self, ids: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.lin(self.emb(ids)))
        # reads an attribute of the replaced layer, as model code often does
        h = h.reshape(ids.shape[0], -1, self.lin.out_features)
        y = self.conv_circ(torch.relu(self.conv_same(torch.relu(self.conv(img)))))
        return self.proj(h), y


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 7), generator=g)
    ids[0, :2] = 0  # the padding token
    img = torch.randn(2, 3, 17, 15, generator=g)
    return ids, img


@pytest.fixture(scope="module")
def pruned() -> nn.Module:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # a nonzero padding row, to see that it is kept
        model.emb.weight[0].normal_()
    out, _ = rmtprune.prune(
        model,
        criterion=rmtprune.FixedRank(RANK),
        select=rmtprune.Select(min_dim=1),
        split=True,
    )
    return out.eval()


def _check_exact(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a, b)


def _check_close(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **CLOSE)


def test_pruned_model_has_every_factorized_layer(pruned: nn.Module) -> None:
    assert isinstance(pruned.emb, LowRankEmbedding) and pruned.emb.padding_idx == 0
    assert isinstance(pruned.lin, LowRankLinear)
    for name in ("conv", "conv_same", "conv_circ"):
        assert isinstance(getattr(pruned, name), LowRankConv2d)
    assert pruned.conv_same.padding == "same" and pruned.conv_same.padding_mode == "reflect"
    assert pruned.conv_circ.padding_mode == "circular" and pruned.conv_circ.stride == (2, 1)
    assert pruned.conv.dilation == (2, 2)
    assert all(m.rank == RANK for m in pruned.modules() if hasattr(m, "first"))
    pytest.importorskip("transformers")
    assert isinstance(pruned.proj, LowRankConv1D)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_torch_jit_script_matches_eager_exactly(
    pruned: nn.Module, memory_format: torch.memory_format
) -> None:
    model = copy.deepcopy(pruned).to(memory_format=memory_format)
    ids, img = _inputs()
    img = img.contiguous(memory_format=memory_format)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        _check_exact(scripted(ids, img), model(ids, img))


def test_scripted_model_keeps_the_eager_attributes_in_eager_mode(pruned: nn.Module) -> None:
    torch.jit.script(pruned)
    assert pruned.lin.in_features == DIM and pruned.lin.out_features == HIDDEN
    assert tuple(pruned.conv.weight.shape) == (12, 3, 3, 3)
    with pytest.raises(AttributeError, match="read-only"):
        pruned.lin.weight = nn.Parameter(torch.zeros(HIDDEN, DIM))


def test_torch_jit_save_and_load_matches_eager_exactly(pruned: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "pruned.pt"
    torch.jit.save(torch.jit.script(pruned), str(path))
    loaded = torch.jit.load(str(path))
    ids, img = _inputs()
    with torch.no_grad():
        _check_exact(loaded(ids, img), pruned(ids, img))


def test_torch_jit_trace_matches_eager_exactly(pruned: nn.Module) -> None:
    ids, img = _inputs()
    with torch.no_grad():
        # check_trace reruns and compares the trace: the exact comparison below does that
        traced = torch.jit.trace(pruned, (ids, img), check_trace=False)
        _check_exact(traced(ids, img), pruned(ids, img))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_matches_eager(pruned: nn.Module, backend: str) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(pruned, backend=backend, fullgraph=True)
    ids, img = _inputs()
    with torch.no_grad():
        _check_close(compiled(ids, img), pruned(ids, img))


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager(pruned: nn.Module) -> None:
    """Inductor generates and compiles C++ for each kernel (about 1 s each here): one split
    layer keeps that cost small; the whole model is compiled by the two backends above."""
    torch._dynamo.reset()
    layer = pruned.lin
    assert isinstance(layer, LowRankLinear)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(5, DIM, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _check_close(compiled(x), layer(x))


@pytest.mark.slow
def test_torch_export_matches_eager(pruned: nn.Module) -> None:
    ids, img = _inputs()
    program = torch.export.export(pruned, (ids, img))
    with torch.no_grad():
        _check_close(program.module()(ids, img), pruned(ids, img))


@pytest.mark.slow
@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`:FutureWarning")  # torch
def test_onnx_export_runs_in_onnxruntime(pruned: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    ids, img = _inputs()
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(
        pruned,
        (ids, img),
        str(path),
        input_names=["ids", "img"],
        output_names=["hidden", "features"],
        dynamo=True,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"ids": ids.numpy(), "img": img.numpy()})
    with torch.no_grad():
        want = pruned(ids, img)
    _check_close(tuple(torch.from_numpy(a) for a in got), want)
