"""Test-wide settings and fixtures.

PyTorch's OpenMP threads spin-wait by default, which makes the suite many times slower whenever
anything else uses the two cores (see bisenet_ros.runtime): the policy is set here, before any
test module imports torch.
"""
import pytest

from bisenet_ros.runtime import prefer_passive_openmp

prefer_passive_openmp()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one thread (tiny inputs: faster than two on 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
