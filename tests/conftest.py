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


# The stacks: tests that train the experiments' smoke runs or build models of the real training
# and Hugging Face stacks: `make test` runs them, `make test-fast` (the inner loop) does not.
STACK_DIRS = ("tests/paper/experiments/", "tests/integrations/", "tests/hf/")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "stack: experiment smoke runs, Lightning / HF Trainer / transformers models (set by "
        "directory in tests/conftest.py); run by make test, deselected by make test-fast",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    for item in items:
        where = Path(str(item.path)).relative_to(root).as_posix()
        if where.startswith(STACK_DIRS):
            item.add_marker(pytest.mark.stack)
