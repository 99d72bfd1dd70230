import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small batched tensors run fastest (and steadiest on a shared machine) on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
