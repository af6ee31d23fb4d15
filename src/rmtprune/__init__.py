"""rmtprune: random-matrix-theory analysis and pruning of PyTorch models."""

__version__ = "0.1.0"
