import os
import sys

import pytest
import torch

# This checkout's packages and harness (experiments/) first, whatever directory pytest runs
# from: tests import them, and ROOT from experiments.configs.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped when none is available)")
    config.addinivalue_line("markers", "slow: long end-to-end runs, deselected by default (-m slow)")


@pytest.fixture(autouse=True, scope="session")
def _one_intra_op_thread():
    # The tensors in these tests are tiny: intra-op threads only add wake-up latency (on a
    # 2-core box one softmax took ~8 ms with 2 threads, ~5 us with 1).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
