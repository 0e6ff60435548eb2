"""Shared pytest setup. Markers are registered in pyproject.toml."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Run each test with one torch thread.

    The test models are tiny: with two OpenMP threads on a shared 2-core machine, a busy neighbour
    process makes every step many times slower (threads spin-wait at barriers).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
