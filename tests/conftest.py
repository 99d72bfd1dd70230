"""Suite-wide settings: one torch thread for the whole session (module fixtures included).

The tests use small batched tensors, which gain nothing from threads, and torch's thread pool
collapses when another process holds a core (CI and developer machines are shared, 2 cores).
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
