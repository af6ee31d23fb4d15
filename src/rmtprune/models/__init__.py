"""Networks of the paper's experiments and their initialisations.

Example
-------
>>> from rmtprune.models import PaperCNN
>>> PaperCNN().flat_features
4608
"""

from __future__ import annotations

from rmtprune.models.cnn import PaperCNN, conv_output_size
from rmtprune.models.fc import ACTIVATIONS, Abs, FullyConnected, make_activation
from rmtprune.models.init import SCHEMES, initialize, weight_variance
from rmtprune.models.params import count_parameters

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
