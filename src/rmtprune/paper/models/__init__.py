"""Networks of the paper's experiments and their initialisations.

Example
-------
>>> from rmtprune.paper.models import PaperCNN
>>> PaperCNN().flat_features
4608
"""

from __future__ import annotations

from rmtprune.factorize.params import count_parameters
from rmtprune.paper.models.cnn import PaperCNN, conv_output_size
from rmtprune.paper.models.fc import ACTIVATIONS, Abs, FullyConnected, make_activation
from rmtprune.paper.models.init import SCHEMES, initialize, weight_variance

__all__ = [
    "ACTIVATIONS",
    "SCHEMES",
    "Abs",
    "FullyConnected",
    "PaperCNN",
    "conv_output_size",
    "count_parameters",
    "initialize",
    "make_activation",
    "weight_variance",
]
