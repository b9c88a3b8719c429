"""Searcher tests run single-threaded (see the fixture)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Search loops are many tiny ops: one intra-op thread is much faster (and steadier) than
    two on a shared 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
