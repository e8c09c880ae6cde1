"""Shared test settings: torch runs on one thread, so results are repeatable and the two cores
of the CI machine are not oversubscribed by torch's own thread pool."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
