"""Train tiny ensembles with the pipeline's own stage functions (one torch thread)."""

from __future__ import annotations

import json
from pathlib import Path


def train_ensembles(spec_dict: dict, root: Path) -> dict[str, Path]:
    """Data, every (model, loss) member and every ensemble of ``spec_dict`` under ``root``;
    returns ensemble name -> artifact directory (the dataset is ``root/data``)."""
    import torch

    from medens.config import parse_spec
    from medens.stages import build_ensembles, prepare_data, train_member, training_grid

    spec = parse_spec(spec_dict)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare_data(spec, root / "data")
        paths = [train_member(spec, root / "data", json.dumps(m), root / "m" / str(i))
                 for i, m in enumerate(training_grid(spec))]
        return {k: Path(v) for k, v in build_ensembles(spec, root / "data", paths, root / "ens").items()}
    finally:
        torch.set_num_threads(threads)
