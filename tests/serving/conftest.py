"""A tiny trained ensemble artifact and a real server on 127.0.0.1, shared by the serving tests."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _ensembles import TINY, train_ensembles  # noqa: E402
from _server import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def tiny_ensemble(tmp_path_factory):
    """(ensemble artifact dir, test images uint8 (N, H, W, C)) of a 3-member weighted ensemble."""
    from medens.data.types import SplitData

    root = tmp_path_factory.mktemp("serve")
    ens_dir = train_ensembles(TINY, root)["weighted-top3"]
    data = SplitData.load(root / "data")
    return ens_dir, np.asarray(data.test.images)


@pytest.fixture(scope="module")
def server(tiny_ensemble, tmp_path_factory):
    """A running ``medens serve`` for the tiny ensemble (name ``tiny``), batching on."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    proc = ServerProcess(tiny_ensemble[0], "tiny", log=log, extra_args=["--max-instances", "16",
                                                                        "--max-bytes", "2000000",
                                                                        "--max-pixels", "1000000"])
    with proc:
        yield proc
