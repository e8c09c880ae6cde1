import csv

import numpy as np
import pytest

from medens.config import TrainingSpec
from medens.training.search import STUDY2_FOCAL_GRID, grid_settings, search, spec_with_setting


def test_study2_grid():
    settings = grid_settings(STUDY2_FOCAL_GRID)
    assert [s["loss.alpha"] for s in settings] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert all(s["loss.gamma"] == 2.0 for s in settings)


def test_search_picks_a_useful_learning_rate_over_useless_ones(cells32, tmp_path):
    """lr 1e-12 leaves the network as initialised; lr 3e-3 learns the cells within an epoch. The useful
    rate sits between two useless ones, so neither "first" nor "last" can pass for "best"."""
    spec = TrainingSpec(epochs=3, min_steps=0, batch_size=32, patience=None, plateau_patience=None, augment=False,
                        monitor="val_loss")
    grid = {"training.lr": [1e-12, 3e-3, 1e-11]}
    res = search("compact_cnn", "ce", cells32, grid, spec, tmp_path, k=2, metric="val_loss", seed=0)
    assert res.best == {"training.lr": 3e-3}
    with open(res.csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and {r["fold"] for r in rows} == {"0", "1"}
    scores = {lr: [float(r["val_loss"]) for r in rows if float(r["training.lr"]) == lr] for lr in grid["training.lr"]}
    assert all(len(v) == 2 for v in scores.values())
    # training helped on every fold, by a margin, and the two useless rates left the same loss
    for fold in range(2):
        assert scores[3e-3][fold] < scores[1e-12][fold] - 0.05
        assert scores[1e-12][fold] == pytest.approx(scores[1e-11][fold], abs=1e-4)
    # independently of the code's ranking: the lowest mean validation loss recorded is lr 3e-3's
    means = {lr: (float(np.mean(v)), float(np.std(v, ddof=1))) for lr, v in scores.items()}
    assert min(means, key=lambda lr: means[lr][0]) == 3e-3
    md = res.markdown_path.read_text()
    assert "| training.lr | val_loss mean | std | folds |" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "mean" not in line]
    listed = [line.split("|")[1].strip() for line in table]
    assert listed[0] == "0.003" and sorted(listed[1:]) == ["1e-11", "1e-12"]  # best first
    assert f"| 0.003 | {means[3e-3][0]:.4f} | {means[3e-3][1]:.4f} | 2 |" in md


def test_bad_grid_fails_before_training(cells32, tmp_path):
    with pytest.raises(ValueError, match="must start with model., loss. or training."):
        search("compact_cnn", "ce", cells32, {"alpha": [1]}, TrainingSpec(epochs=1), tmp_path)
    with pytest.raises(ValueError, match="training has no field 'lrr'"):
        search("compact_cnn", "ce", cells32, {"training.lrr": [1]}, TrainingSpec(epochs=1), tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_search_result_is_written_back_into_a_spec(tmp_path):
    from medens.config import load_spec

    spec = load_spec("rbc-demo")
    focal = next(lo for lo in spec.losses if lo.name == "focal")
    out = spec_with_setting(spec, spec.models[0], focal, {"loss.alpha": 0.5, "loss.gamma": 3.0, "training.lr": 3e-4})
    new_focal = out.losses[spec.losses.index(focal)]
    assert new_focal.name == "focal" and new_focal.params == {**focal.params, "alpha": 0.5, "gamma": 3.0}
    assert [lo for i, lo in enumerate(out.losses) if lo.name != "focal"] == [lo for lo in spec.losses
                                                                              if lo.name != "focal"]
    assert out.training.lr == 3e-4 and out.models == spec.models
    assert load_spec(str(out.save(tmp_path / "best.yaml"))) == out  # `medens run --spec` takes it
    with pytest.raises(ValueError, match="not one of the spec's losses"):
        spec_with_setting(spec, spec.models[0], focal.model_copy(update={"name": "ce_nope"}), {})
