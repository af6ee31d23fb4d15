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

from rmtprune._errors import DegenerateSpectrumWarning, InvalidFileError, UserCodeError
from rmtprune.distributions.marchenko_pastur import marchenko_pastur, mp_edges
from rmtprune.distributions.tracy_widom import tracy_widom
from rmtprune.estimators import BEMA, GavishDonoho, NotFittedError
from rmtprune.factorize import LowRankConv2d, LowRankLinear, get_adapter, register_adapter
from rmtprune.io import load, save
from rmtprune.pruning import schedules
from rmtprune.pruning._guards import remove_parametrizations
from rmtprune.pruning.optim import rebuild_optimizer
from rmtprune.pruning.pruner import SpectralPruner
from rmtprune.pruning.report import LayerAnalysis, LayerPruneResult, ModelReport, PruneReport
from rmtprune.pruning.walker import analyze, prune
from rmtprune.spectrum import eigenvalues, singular_values

__version__ = "0.1.0"

__all__ = [
    "BEMA",
    "DegenerateSpectrumWarning",
    "GavishDonoho",
    "InvalidFileError",
    "LayerAnalysis",
    "LayerPruneResult",
    "LowRankConv2d",
    "LowRankLinear",
    "ModelReport",
    "NotFittedError",
    "PruneReport",
    "SpectralPruner",
    "UserCodeError",
    "__version__",
    "analyze",
    "eigenvalues",
    "get_adapter",
    "load",
    "marchenko_pastur",
    "mp_edges",
    "prune",
    "rebuild_optimizer",
    "register_adapter",
    "remove_parametrizations",
    "save",
    "schedules",
    "singular_values",
    "tracy_widom",
]
