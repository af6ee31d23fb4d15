"""Probability laws of random-matrix theory (NumPy/SciPy only, no torch)."""
