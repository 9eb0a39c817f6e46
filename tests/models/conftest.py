import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The test models are tiny and launch-bound: on a busy 2-core machine extra OpenMP threads only spin and make
    # each forward many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
