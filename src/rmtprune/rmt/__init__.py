"""Random-matrix theory: the MP and TW laws, estimators of the noise level and bulk edge of weight
spectra, fit tests, and spectra of weight matrices (NumPy/SciPy; torch only if installed).

- :class:`BEMA`: bulk-edge matching (Ke, Ma & Lin; docs/method.md section 2).
- :class:`GavishDonoho`: the optimal hard threshold of Gavish & Donoho (2014).
- :func:`fit_statistic`: the goodness-of-fit statistic ``D`` (docs/method.md section 3).
- :class:`SpectralFit`: the one record of a fit, held by every result that shows one.

Example
-------
>>> import numpy as np
>>> from rmtprune.rmt import BEMA, GavishDonoho
>>> W = np.random.default_rng(0).standard_normal((300, 600))
>>> BEMA().fit(W).n_spikes_, GavishDonoho().fit(W).n_spikes_
(0, 0)
"""

from __future__ import annotations

from rmtprune.rmt.bema import BEMA, BEMAResult, NotFittedError
from rmtprune.rmt.fit import SpectralFit
from rmtprune.rmt.goodness_of_fit import fit_statistic
from rmtprune.rmt.thresholds import GavishDonoho

__all__ = [
    "BEMA",
    "BEMAResult",
    "GavishDonoho",
    "NotFittedError",
    "SpectralFit",
    "fit_statistic",
]
