"""The math layer (distributions, estimators, spectrum) works without PyTorch.

The subprocess makes ``import torch`` fail (a meta-path finder that refuses it; a
``sys.modules["torch"] = None`` entry would break SciPy's array-API probe) and
stands in for the ``rmtprune`` package object so that only the subpackages run:
torch is a hard dependency of the package, so what is checked is the layering
(the math modules neither import nor need torch), not ``import rmtprune`` itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rmtprune
from rmtprune.rmt import BEMA, GavishDonoho

_SCRIPT = """
import json, sys, types

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())  # every 'import torch' now raises ImportError
package = types.ModuleType("rmtprune")
package.__path__ = [{package_dir!r}]
sys.modules["rmtprune"] = package  # the subpackages run, the package __init__ does not
import numpy as np
from rmtprune.rmt.marchenko_pastur import marchenko_pastur
from rmtprune.rmt.tracy_widom import tw_ppf
from rmtprune.rmt import BEMA, GavishDonoho
from rmtprune.rmt.spectrum import eigenvalues
rng = np.random.default_rng(3)
W = rng.standard_normal((120, 200))
W[:4] += 40.0 * rng.standard_normal((4, 1)) * rng.standard_normal((1, 200)) / 200**0.5
bema = BEMA().fit(W)
try:
    import torch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
print(json.dumps({{
    "blocked": blocked, "loaded": loaded,
    "sigma2": bema.sigma2_, "lambda_plus": bema.lambda_plus_, "n_spikes": bema.n_spikes_,
    "gd_spikes": GavishDonoho().fit(W).n_spikes_, "tw": float(tw_ppf(0.9)),
    "mp_mean": float(marchenko_pastur.mean(0.6)), "lam_max": float(eigenvalues(W)[-1]),
}}))
"""


@pytest.mark.slow  # a fresh interpreter builds the TW table (10 s): in make test, not test-fast
def test_math_layer_imports_and_fits_without_torch() -> None:
    package_dir = str(Path(rmtprune.__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(package_dir=package_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    got = json.loads(out.stdout)
    assert got["blocked"] and got["loaded"] == []
    # the same fit in this process (torch's LAPACK) agrees to rounding
    rng = np.random.default_rng(3)
    W = rng.standard_normal((120, 200))
    W[:4] += 40.0 * rng.standard_normal((4, 1)) * rng.standard_normal((1, 200)) / 200**0.5
    bema = BEMA().fit(W)
    assert got["n_spikes"] == bema.n_spikes_ >= 1
    assert got["gd_spikes"] == GavishDonoho().fit(W).n_spikes_
    np.testing.assert_allclose(got["sigma2"], bema.sigma2_, rtol=1e-10)
    np.testing.assert_allclose(got["lambda_plus"], bema.lambda_plus_, rtol=1e-10)
    np.testing.assert_allclose(got["lam_max"], bema.eigenvalues_[-1], rtol=1e-10)
    assert round(got["tw"], 4) == 0.4501  # SPEC section 1
    assert got["mp_mean"] == 1.0  # mean of MP(ratio, 1)
