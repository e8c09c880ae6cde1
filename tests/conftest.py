"""Shared test settings: torch runs on one thread, so results are repeatable and the two cores
of the CI machine are not oversubscribed by torch's own thread pool; a real S3-protocol server
(moto) on loopback for the storage tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto's) on 127.0.0.1 for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
