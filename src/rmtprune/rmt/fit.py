"""The one record of a layer's spectral fit: :class:`SpectralFit`.

A fit of the Marchenko–Pastur law to a spectrum yields the noise level ``sigma2``, the
bulk edge ``lambda_plus`` (eigenvalue scale) and ``threshold`` (singular-value scale), the
spike count ``n_spikes``, the fit statistic ``fit_error`` and the verdict of the fit test
``mp_like``.  Every result that shows a fit holds this record instead of repeating its
fields: BEMA's summary (:class:`rmtprune.rmt.BEMAResult`), a criterion's decision
(:class:`rmtprune.pruning.criteria.RankDecision`), the rows of :func:`rmtprune.analyze` and
:func:`rmtprune.prune`, the data of :func:`rmtprune.plot_spectrum` and the spectra an
experiment stores.  Those types read the fit's values through :class:`FitAttributes`
(``row.sigma2`` is ``row.fit.sigma2``).

This module imports nothing but the standard library, so the record sits below all of them.

Example
-------
>>> fit = SpectralFit(sigma2=0.25, lambda_plus=0.73, n_spikes=3, fit_error=0.02)
>>> fit.fitted, fit.mp_like, SpectralFit().fitted
(True, None, False)
>>> fit.to_dict()["n_spikes"]
3
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["FIT_FIELDS", "FitAttributes", "SpectralFit"]


@dataclass(frozen=True)
class SpectralFit:
    """The fit of the Marchenko–Pastur law to one layer's spectrum.

    A value not known is NaN (``None`` for ``n_spikes`` and ``mp_like``): ``SpectralFit()``
    is a layer that was not fitted; a fit without a fit test (Gavish–Donoho, BEMA alone)
    has ``mp_like = None``.

    Attributes
    ----------
    sigma2 : float
        Estimated noise variance per entry, ``σ²``.
    lambda_plus : float
        The bulk edge on the eigenvalue scale, ``λ₊``.
    threshold : float
        The same edge on the singular-value scale, ``sqrt(N λ₊)``.
    n_spikes : int or None
        The number of (real) eigenvalues above the edge.
    fit_error : float
        The Kolmogorov distance ``D`` of the bulk to the fitted law (docs/method.md section 3).
    mp_like : bool or None
        Whether ``fit_error`` passed the fit test (at most the ``fit_cutoff`` used).
    """

    sigma2: float = math.nan
    lambda_plus: float = math.nan
    threshold: float = math.nan
    n_spikes: int | None = None
    fit_error: float = math.nan
    mp_like: bool | None = None

    @property
    def fitted(self) -> bool:
        """Whether the record holds a fit (a finite ``sigma2``)."""
        return math.isfinite(self.sigma2)

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of the fields, in the order above (NaN kept)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SpectralFit:
        """The fit's fields found in ``values`` (JSON: ``None`` is NaN); the others not known.

        Other keys are ignored, so a report row's ``to_dict()`` gives back its fit.

        >>> fit = SpectralFit.from_dict({"name": "fc", "sigma2": 1, "fit_error": None})
        >>> fit.sigma2, fit.fit_error, fit.n_spikes
        (1.0, nan, None)
        """
        out: dict[str, Any] = {k: values[k] for k in FIT_FIELDS if k in values}
        for key in _FLOAT_FIELDS.intersection(out):
            out[key] = math.nan if out[key] is None else float(out[key])
        return cls(**out)


FIT_FIELDS: tuple[str, ...] = tuple(SpectralFit().to_dict())
"""The names of :class:`SpectralFit`'s fields, in order."""

_FLOAT_FIELDS = frozenset({"sigma2", "lambda_plus", "threshold", "fit_error"})


class FitAttributes:
    """Read-only attributes of a result that holds a :class:`SpectralFit` as ``fit``.

    A mixin: ``result.sigma2`` is ``result.fit.sigma2``, and so on for every field.
    """

    fit: SpectralFit

    @property
    def sigma2(self) -> float:
        """``fit.sigma2``: the noise variance per entry."""
        return self.fit.sigma2

    @property
    def lambda_plus(self) -> float:
        """``fit.lambda_plus``: the bulk edge (eigenvalue scale)."""
        return self.fit.lambda_plus

    @property
    def threshold(self) -> float:
        """``fit.threshold``: the bulk edge (singular-value scale)."""
        return self.fit.threshold

    @property
    def n_spikes(self) -> int | None:
        """``fit.n_spikes``: the eigenvalues above the edge."""
        return self.fit.n_spikes

    @property
    def fit_error(self) -> float:
        """``fit.fit_error``: the fit statistic ``D``."""
        return self.fit.fit_error

    @property
    def mp_like(self) -> bool | None:
        """``fit.mp_like``: whether the bulk passed the fit test."""
        return self.fit.mp_like
