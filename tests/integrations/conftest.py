"""Shared fixtures of the integration tests: fixed threads, quiet and offline stacks."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
os.environ.setdefault("WANDB_DISABLED", "true")
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Bitwise comparisons of two runs need the same thread count in both."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_distributed_leftovers() -> Iterator[None]:
    """Each test leaves the process as it found it: the environment (Lightning's DDP strategy
    sets ``WORLD_SIZE``, ``LOCAL_RANK``, ... even on one process, which later makes the HF
    Trainer and accelerate believe they run distributed) and no default process group."""
    environ = dict(os.environ)
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
