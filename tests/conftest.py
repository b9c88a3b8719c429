import os

import pytest
import torch

# Two cores here and in CI: keep intra-op threads bounded so parallel work is predictable.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
