"""Train tiny ensembles with the pipeline's own stage functions (one torch thread)."""

from __future__ import annotations

from pathlib import Path

# a 3-member weighted ensemble of compact CNNs on 32 px synthetic cells, trained in seconds
TINY = {
    "name": "serve-tiny",
    "task": "classification",
    "data": {"source": "synthetic_cells", "image_size": 32,
             "synthetic": {"counts": {"codocyte": 40, "hypochromia": 40, "normal": 120}}},
    "models": ["compact_cnn"],
    "losses": ["ce", {"name": "focal", "params": {"gamma": 2.0}}, "weighted_ce"],
    # 40 steps (8 epochs of 5): with 2 epochs two of the three members predicted one class, and the
    # collapse guard (rightly) keeps them out of the top-3 ensemble the serving tests load
    "training": {"epochs": 2, "min_steps": 40, "batch_size": 32, "lr": 0.003, "patience": None, "plateau_patience": None},
    "ensemble": {"methods": ["weighted"], "top_k": [3]},
    "evaluation": {"bootstrap": 100, "gradcam": False},
}


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
        paths = [train_member(spec, root / "data", m.model_dump_json(), root / "m" / str(i))
                 for i, m in enumerate(training_grid(spec))]
        return {k: Path(v) for k, v in build_ensembles(spec, root / "data", paths, root / "ens").items()}
    finally:
        torch.set_num_threads(threads)
