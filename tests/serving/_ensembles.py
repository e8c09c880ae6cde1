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
        paths = [train_member(spec, root / "data", m, root / "m" / str(i))
                 for i, m in enumerate(training_grid(spec))]
        return {k: Path(v) for k, v in build_ensembles(spec, root / "data", paths, root / "ens").items()}
    finally:
        torch.set_num_threads(threads)


def random_ensemble(out: Path, archs: list[str], images, method: str = "mean", *, normalise: str = "unit",
                    inference: dict[str, dict] | None = None, batch_norm_passes: int = 0) -> tuple[Path, dict[str, int]]:
    """Members ``<arch>-<i>`` with random weights as model artifacts under ``out/members``, and an ensemble
    artifact of them (``method``, fitted on random probabilities) in ``out/ensemble``; returns its path and
    each member's parameter count. ``inference``: member id -> its ``model.json`` ``inference`` (test-time
    flips, temperature); ``batch_norm_passes``: training-mode forwards on ``images`` first, so batch-norm
    statistics are not the identity. No training: what is measured or compared does not need it."""
    import numpy as np
    import torch

    from medens.data.drift import intensity_reference
    from medens.data.synthetic import CELL_CLASSES
    from medens.data.transforms import InputSpec, preprocess
    from medens.ensemble.artifact import write_ensemble
    from medens.ensemble.prediction import ENSEMBLES
    from medens.models import build, count_parameters
    from medens.models.artifact import WEIGHTS, save_state_dict, write_manifest

    class_names, spec = list(CELL_CLASSES), InputSpec.fit(images, normalise)
    x = torch.as_tensor(preprocess(images, spec))
    dirs, params = {}, {}
    for i, name in enumerate(archs):
        torch.manual_seed(i)
        model = build(name, in_channels=images.shape[-1], num_classes=len(class_names))
        model.check_input_size(images.shape[1])
        with torch.no_grad():
            for _ in range(batch_norm_passes):
                model.train()(x * (1 + i))
        model.eval()
        mid = f"{name}-{i}"
        d = out / "members" / mid
        d.mkdir(parents=True)
        save_state_dict(d / WEIGHTS, model.state_dict())
        kwargs = {k: v for k, v in model.build_kwargs.items() if k not in ("name", "task")}
        write_manifest(d, {"kind": "model", "task": "classification", "architecture": {"name": name, "kwargs": kwargs},
                           "class_names": class_names, "input": spec.to_dict(), "reference": intensity_reference(images),
                           "member_id": mid, "note": "random weights (tests/serving/_ensembles.py)",
                           **({"inference": inference[mid]} if inference and mid in inference else {})})
        dirs[mid], params[mid] = d, count_parameters(model)
    # the combiner is fitted on uniform random probabilities: its cost, not its accuracy, matters here
    rng = np.random.default_rng(0)
    val = {mid: rng.dirichlet(np.ones(len(class_names)), size=60) for mid in dirs}
    combiner = ENSEMBLES.get(method)(member_ids=list(dirs)).fit(val, np.arange(60) % len(class_names))
    combiner.class_names = class_names
    path = write_ensemble(out / "ensemble", name=f"random-{method}", member_dirs=dirs, combiner=combiner.to_dict())
    return path, params
