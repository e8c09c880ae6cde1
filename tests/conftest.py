"""Shared test settings: torch runs on one thread, so results are repeatable and the two cores
of the CI machine are not oversubscribed by torch's own thread pool; a real S3-protocol server
(moto) on loopback for the storage tests."""

import os

import pytest
import torch

# tests/image runs the container image that `make image` builds: `make image-test` builds it and
# sets MEDENS_IMAGE_TEST=1; a plain `pytest` (and `make test`) leaves that folder out.
collect_ignore = [] if os.environ.get("MEDENS_IMAGE_TEST") == "1" else ["image"]


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
