"""One torch thread for the GFlowNet tests: small networks gain nothing from threads, and torch's
thread pool collapses when other processes hold the cores."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
