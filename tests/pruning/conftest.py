"""Shared by the pruning tests: one torch thread (small tensors: one thread is faster, and much
faster on a loaded machine), restored after each test."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
