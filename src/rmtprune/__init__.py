"""rmtprune: random-matrix-theory analysis and pruning of PyTorch models.

The method follows Berlyand, Sandier, Shmalo and Zhang, "Enhancing Accuracy in
Deep Learning Using Random Matrix Theory" (2024): the singular values of a
weight matrix that fall inside the Marchenko–Pastur bulk (edge estimated by
BEMA) are noise; removing them shrinks the layer.

Examples
--------
>>> import torch
>>> import rmtprune
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(300, 200))
>>> rmtprune.analyze(model)["0"].mp_like
True
"""

from rmtprune._util.errors import DegenerateSpectrumWarning, InvalidFileError, UserCodeError
from rmtprune.factorize import (
    LowRankConv1D,
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
    get_adapter,
    register_adapter,
)
from rmtprune.hf.pretrained import from_pretrained, save_pretrained
from rmtprune.plotting import plot_spectrum
from rmtprune.pruning import schedules
from rmtprune.pruning._guards import remove_parametrizations
from rmtprune.pruning.calibration import Calibrated
from rmtprune.pruning.criteria import (
    Energy,
    FixedRank,
    FixedRatio,
    GavishDonohoCriterion,
    LayerView,
    MaskDecision,
    MPCriterion,
    RankDecision,
)
from rmtprune.pruning.optim import rebuild_optimizer, update_optimizer
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.report import LayerAnalysis, LayerPruneResult, ModelReport, PruneReport
from rmtprune.pruning.selection import Select
from rmtprune.pruning.sparsity import Sparsity
from rmtprune.pruning.walker import analyze, prune
from rmtprune.rmt import BEMA, GavishDonoho, NotFittedError, SpectralFit
from rmtprune.rmt.marchenko_pastur import marchenko_pastur, mp_edges
from rmtprune.rmt.spectrum import eigenvalues, singular_values
from rmtprune.rmt.tracy_widom import tracy_widom
from rmtprune.storage.format import load, save

__version__ = "0.1.0"

__all__ = [
    "BEMA",
    "Calibrated",
    "DegenerateSpectrumWarning",
    "Energy",
    "FixedRank",
    "FixedRatio",
    "GavishDonoho",
    "GavishDonohoCriterion",
    "InvalidFileError",
    "LayerAnalysis",
    "LayerPruneResult",
    "LayerView",
    "LowRankConv1D",
    "LowRankConv2d",
    "LowRankEmbedding",
    "LowRankLinear",
    "MPCriterion",
    "MaskDecision",
    "ModelReport",
    "NotFittedError",
    "PruneReport",
    "RankDecision",
    "Select",
    "Sparsity",
    "SpectralFit",
    "SpectralPruner",
    "UserCodeError",
    "__version__",
    "analyze",
    "eigenvalues",
    "from_pretrained",
    "get_adapter",
    "load",
    "marchenko_pastur",
    "mp_edges",
    "plot_spectrum",
    "prune",
    "rebuild_optimizer",
    "register_adapter",
    "remove_parametrizations",
    "save",
    "save_pretrained",
    "schedules",
    "singular_values",
    "tracy_widom",
    "update_optimizer",
]
