"""How ``make test`` spreads the tests over two processes (``pytest -n 2``, pytest-xdist).

Each test file is one unit of work, so a module-scoped fixture is built once per run, and
the test files that use a session-wide smoke run of ``tests/paper/experiments/conftest.py`` form
one unit together, so each smoke preset is still trained once.  The longest units are handed
out first (``LONGEST_FIRST``).  (xdist's own ``--dist loadgroup`` marks do not reach its
scheduler under pytest 9.2, which no longer reads the node id that xdist rewrites; a scheduler
of our own decides instead.)  Without ``-n`` nothing here is used.
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


# The longest units start first (wall time is set by the worker that finishes last; xdist would
# start the units with the most tests first, leaving these multi-process files to the end).
LONGEST_FIRST = (
    "shared-smoke-runs",
    "tests/integrations/test_lightning_ddp.py",
    "tests/integrations/test_fsdp.py",
    "tests/integrations/test_transformers_ddp.py",
    "tests/hostile/test_cli_interrupts.py",
    "tests/pruning/test_calibration.py",
)


def _longest_first(items: list[pytest.Item], root: Path) -> None:
    missing = [u for u in LONGEST_FIRST[1:] if not (root / u).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names no file: {missing}")
    rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        where = Path(str(item.path)).relative_to(root).as_posix()
        return rank.get(unit_of_work(where), len(rank))

    items.sort(key=key)  # stable: the other units keep pytest's order


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
    if getattr(config.option, "loadscopereorder", False):
        config.option.loadscopereorder = False  # the order is LONGEST_FIRST's (below)
    config.addinivalue_line(
        "markers",
        "stack: experiment smoke runs, Lightning / HF Trainer / transformers models (set by "
        "directory in tests/conftest.py); run by make test, deselected by make test-fast",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    if hasattr(config, "workerinput"):  # an xdist worker: the order the scheduler sees
        _longest_first(items, root)
    for item in items:
        where = Path(str(item.path)).relative_to(root).as_posix()
        if where.startswith(STACK_DIRS):
            item.add_marker(pytest.mark.stack)
