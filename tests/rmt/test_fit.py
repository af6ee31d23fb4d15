"""SpectralFit, the one record of a fit, and the BEMA summary that holds it."""

from __future__ import annotations

import json
import math

import numpy as np

from rmtprune.rmt import BEMA, BEMAResult, SpectralFit
from rmtprune.rmt.fit import FIT_FIELDS


def test_an_unfitted_record_knows_nothing() -> None:
    fit = SpectralFit()
    assert not fit.fitted and fit.n_spikes is None and fit.mp_like is None
    assert all(math.isnan(getattr(fit, k)) for k in ("sigma2", "lambda_plus", "threshold"))
    assert FIT_FIELDS == (
        "sigma2",
        "lambda_plus",
        "threshold",
        "n_spikes",
        "fit_error",
        "mp_like",
    )


def test_the_record_survives_json_with_none_for_nan() -> None:
    fit = SpectralFit(sigma2=0.5, lambda_plus=2.0, threshold=math.nan, n_spikes=3, mp_like=True)
    text = json.dumps({k: None if v != v else v for k, v in fit.to_dict().items()})
    back = SpectralFit.from_dict(json.loads(text))
    assert (back.sigma2, back.lambda_plus, back.n_spikes, back.mp_like) == (0.5, 2.0, 3, True)
    assert math.isnan(back.threshold) and math.isnan(back.fit_error)


def test_bema_summary_holds_the_fit_of_a_known_noise_level() -> None:
    rng = np.random.default_rng(4)
    m, n = 300, 600
    W = 0.5 * rng.standard_normal((m, n))  # sigma2 = 0.25, no spikes
    bema = BEMA().fit(W)
    result = bema.summary()
    assert isinstance(result, BEMAResult)
    assert abs(result.fit.sigma2 - 0.25) < 0.01 and result.n_spikes == 0
    assert result.fit.mp_like is None  # BEMA alone tests nothing
    # the record's edge is SPEC's on both scales: s+ = sqrt(N lambda+)
    assert result.threshold == math.sqrt(n * result.lambda_plus)
    assert (result.sigma2, result.fit_error) == (bema.sigma2_, bema.fit_error_)
    assert list(result.to_dict()) == [
        "shape",
        "ratio",
        "sigma2",
        "lambda_plus",
        "threshold",
        "n_spikes",
        "fit_error",
        "window",
        "tw_quantile",
        "rank",
        "alpha",
        "beta",
    ]
    assert result.to_dict()["window"] == (75, 225) and result.to_dict()["shape"] == (m, n)
