"""How ``make test`` spreads the tests over two processes (``pytest -n 2``, pytest-xdist).

Each test file is one unit of work, so a module-scoped fixture is built once per run, and
the test files that use a session-wide smoke run of ``tests/paper/experiments/conftest.py`` form
one unit together, so each smoke preset is still trained once.  (xdist's own
``--dist loadgroup`` marks do not reach its scheduler under pytest 9.2, which no longer reads
the node id that xdist rewrites; a scheduler of our own decides instead.)  Without ``-n``
nothing here is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).parent
_SHARED_RUNS = ("smoke_runs", "regression_smoke")
SHARED_FILES = frozenset(
    path.relative_to(_HERE.parent).as_posix()
    for path in sorted((_HERE / "paper" / "experiments").rglob("test_*.py"))
    if any(name in path.read_text(encoding="utf-8") for name in _SHARED_RUNS)
)


def unit_of_work(nodeid: str) -> str:
    """The scheduling unit of a test: its file, or one unit for the shared smoke runs."""
    path = nodeid.split("::")[0]
    return "shared-smoke-runs" if path in SHARED_FILES else path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_work(nodeid)

    return ByFile(config, log)
