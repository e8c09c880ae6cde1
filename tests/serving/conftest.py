"""A tiny trained ensemble artifact and a real server on 127.0.0.1, shared by the serving tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _server import ServerProcess  # noqa: E402

TINY = {
    "name": "serve-tiny",
    "task": "classification",
    "data": {"source": "synthetic_cells", "image_size": 32,
             "synthetic": {"counts": {"codocyte": 40, "hypochromia": 40, "normal": 120}}},
    "models": ["compact_cnn"],
    "losses": ["ce", {"name": "focal", "params": {"gamma": 2.0}}, "weighted_ce"],
    "training": {"epochs": 2, "batch_size": 32, "lr": 0.003, "patience": None, "plateau_patience": None},
    "ensemble": {"methods": ["weighted"], "top_k": [3]},
    "evaluation": {"bootstrap": 100, "gradcam": False},
}


@pytest.fixture(scope="session")
def tiny_ensemble(tmp_path_factory):
    """(ensemble artifact dir, test images uint8 (N, H, W, C)) of a 3-member weighted ensemble."""
    import torch

    from medens.config import parse_spec
    from medens.data.types import SplitData
    from medens.workflow import build_ensembles, prepare_data, train_member, training_grid

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("serve")
        spec = parse_spec(TINY)
        prepare_data(spec, root / "data")
        paths = [train_member(spec, root / "data", json.dumps(m), root / "m" / str(i))
                 for i, m in enumerate(training_grid(spec))]
        made = build_ensembles(spec, root / "data", paths, root / "ens")
    finally:
        torch.set_num_threads(threads)
    ens_dir = Path(made["weighted-top3"]) if isinstance(made, dict) else root / "ens" / "weighted-top3"
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
