"""The champion gate: planted champion and challenger predictions, both ways, and real artifacts."""

import numpy as np
import pytest

from medens.evaluation.gate import compare_ensembles, ensemble_predictions, gate_decision
from medens.evaluation.metrics import METRICS
from medens.evaluation.stats import mcnemar, paired_bootstrap


def planted(n=300, k=3, right=0.9, seed=0, y=None):
    """Labels and probabilities that are right on about ``right`` of the samples."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n) if y is None else y
    pred = np.where(rng.random(n) < right, y, (y + rng.integers(1, k, n)) % k)
    probs = np.full((n, k), 0.1 / (k - 1))
    probs[np.arange(n), pred] = 0.9
    return y, probs


def test_clearly_better_challenger_is_promoted_with_small_p():
    y, champ = planted(right=0.6, seed=1)
    _, chal = planted(right=0.95, seed=2, y=y)
    d = gate_decision(y, champ, chal, metric="mcc", n_resamples=500)
    assert d["promote"] is True
    assert d["p_value"] < 0.05
    assert d["challenger"] == pytest.approx(METRICS["mcc"](y, chal))
    assert d["champion"] == pytest.approx(METRICS["mcc"](y, champ))
    assert d["difference"] == pytest.approx(d["challenger"] - d["champion"])
    assert d["test"].startswith("paired stratified bootstrap")
    assert d["reason"].startswith("challenger wins")
    # the p-value is exactly the library's paired bootstrap of challenger minus champion
    ref = paired_bootstrap(y, chal, champ, "mcc", n_resamples=500, seed=0)
    assert d["p_value"] == pytest.approx(ref["p_value"])


def test_worse_challenger_keeps_the_champion():
    y, champ = planted(right=0.95, seed=1)
    _, chal = planted(right=0.6, seed=2, y=y)
    d = gate_decision(y, champ, chal, metric="mcc", n_resamples=500)
    assert d["promote"] is False
    assert d["difference"] < 0
    assert "not better" in d["reason"]


def test_equal_challenger_keeps_the_champion():
    y, probs = planted(seed=3)
    d = gate_decision(y, probs, probs.copy(), metric="mcc", n_resamples=300)
    assert d["promote"] is False
    assert d["difference"] == 0
    assert d["p_value"] == 1.0


def test_small_improvement_is_not_significant():
    y, champ = planted(n=200, right=0.80, seed=4)
    chal = champ.copy()
    wrong = np.flatnonzero(champ.argmax(1) != y)[:2]  # fix two mistakes out of ~40
    chal[wrong] = np.eye(3)[y[wrong]] * 0.85 + 0.05
    d = gate_decision(y, champ, chal, metric="accuracy")
    assert d["challenger"] > d["champion"]
    assert d["promote"] is False
    assert d["p_value"] >= 0.05
    assert "not significant" in d["reason"]


def test_no_champion_promotes():
    y, chal = planted(seed=5)
    d = gate_decision(y, None, chal, metric="mcc")
    assert d["promote"] is True
    assert d["champion"] is None and d["p_value"] is None and d["test"] is None
    assert "no champion" in d["reason"]


def test_accuracy_uses_mcnemar():
    y, champ = planted(n=400, right=0.7, seed=6)
    _, chal = planted(n=400, right=0.9, seed=7, y=y)
    d = gate_decision(y, champ, chal, metric="accuracy")
    ref = mcnemar(y, chal, champ)
    assert d["p_value"] == pytest.approx(ref["p_value"])
    assert d["test"].startswith("McNemar")
    assert d["promote"] is True
    assert d["challenger"] == pytest.approx(np.mean(chal.argmax(1) == y))


@pytest.mark.parametrize("alias,name", [("f1", "macro_f1"), ("auroc", "auroc_macro")])
def test_metric_aliases(alias, name):
    y, champ = planted(right=0.6, seed=8)
    _, chal = planted(right=0.95, seed=9, y=y)
    d = gate_decision(y, champ, chal, metric=alias, n_resamples=300)
    assert d["metric"] == name
    assert d["promote"] is True


def test_lower_is_better_metric_direction():
    y, champ = planted(right=0.6, seed=10)
    _, chal = planted(right=0.95, seed=11, y=y)
    d = gate_decision(y, champ, chal, metric="brier", n_resamples=300)
    assert d["challenger"] < d["champion"]
    assert d["promote"] is True
    d = gate_decision(y, chal, champ, metric="brier", n_resamples=300)
    assert d["promote"] is False


def _seg(n=40, size=16, seed=0, quality=1.0):
    """Masks with one square lesion each, and probability maps that find ``quality`` of each lesion."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.int64)
    probs = np.zeros((n, 2, size, size))
    for i in range(n):
        r, c = rng.integers(2, size - 8, 2)
        masks[i, r:r + 6, c:c + 6] = 1
        found = masks[i].copy()
        cols = int(round(6 * quality))
        found[:, c + cols:] = 0
        probs[i, 1] = np.where(found == 1, 0.9, 0.1)
        probs[i, 0] = 1 - probs[i, 1]
    return masks, probs


def test_segmentation_dice_both_ways():
    masks, good = _seg(quality=1.0)
    _, poor = _seg(quality=0.5)
    d = gate_decision(masks, poor, good, metric="dice", n_resamples=500)
    assert d["challenger"] == pytest.approx(1.0)
    # half of a 6x6 lesion found: Dice = 2 * 18 / (36 + 18) = 2/3 on every image
    assert d["champion"] == pytest.approx(2 / 3)
    assert d["promote"] is True and d["p_value"] < 0.05
    assert d["test"].startswith("paired bootstrap over images")
    d = gate_decision(masks, good, poor, metric="dice", n_resamples=500)
    assert d["promote"] is False
    iou = gate_decision(masks, poor, good, metric="iou", n_resamples=200)
    assert iou["champion"] == pytest.approx(0.5)  # IoU = Dice / (2 - Dice)


def test_errors():
    y, p = planted(seed=12)
    with pytest.raises(ValueError, match="unknown gate metric 'mc'; did you mean"):
        gate_decision(y, p, p, metric="mc")
    with pytest.raises(ValueError, match="alpha must lie in"):
        gate_decision(y, p, p, alpha=1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        gate_decision(y, p[:, :2], p)
    with pytest.raises(ValueError, match="needs masks"):
        gate_decision(y, p, p, metric="dice")


# ---------------------------------------------------------------- real ensemble artifacts


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A dataset directory, a trained challenger and an untrained champion, both ensemble artifacts."""
    import torch

    from medens.config import TrainingSpec
    from medens.data.splits import stratified_split
    from medens.data.synthetic import make_cells
    from medens.data.types import Split, SplitData
    from medens.ensemble.artifact import write_ensemble
    from medens.training import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run outside the one-thread autouse fixture
    root = tmp_path_factory.mktemp("gate")
    images, labels, _ = make_cells([40, 40, 120], size=32, seed=0)
    whole = Split(images=images, labels=labels.astype(np.int64), ids=[f"c{i}" for i in range(len(labels))])
    tr, va, te = stratified_split(whole.labels, (0.5, 0.2, 0.3), seed=0)
    data = SplitData("classification", ["codocyte", "hypochromia", "normal"], whole.subset(tr), whole.subset(va),
                     whole.subset(te))
    data_dir = data.save(root / "data")
    good = fit("compact_cnn", "ce", data, TrainingSpec(epochs=6, min_steps=0, lr=3e-3, batch_size=16, patience=None,
                                                        plateau_patience=None, class_weights="balanced"),
               root / "good", seed=0)
    bad = fit("compact_cnn", "ce", data, TrainingSpec(epochs=1, min_steps=0, lr=1e-7, batch_size=32), root / "bad", seed=1)
    champion = write_ensemble(root / "champion", name="bad", member_dirs={"bad": bad.path}, combiner=None)
    challenger = write_ensemble(root / "challenger", name="good", member_dirs={"good": good.path}, combiner=None)
    torch.set_num_threads(threads)
    return {"data": data_dir, "champion": champion, "challenger": challenger, "good": good.path, "test": data.test}


def test_ensemble_predictions_match_the_member(artifacts):
    from medens.training import predict_split

    ens = ensemble_predictions(artifacts["challenger"], artifacts["data"], "test")
    single = predict_split(artifacts["good"], artifacts["test"])
    assert ens.ids == artifacts["test"].ids
    np.testing.assert_array_equal(ens.labels, artifacts["test"].labels)
    np.testing.assert_allclose(ens.probs, single.probs, atol=1e-6)
    # a model artifact (no ensemble.json) is predicted directly
    direct = ensemble_predictions(artifacts["good"], artifacts["data"], "test")
    np.testing.assert_allclose(direct.probs, single.probs, atol=1e-6)


def test_compare_ensembles_both_ways(artifacts):
    won = compare_ensembles(artifacts["champion"], artifacts["challenger"], artifacts["data"], n_resamples=500)
    assert won["promote"] is True, won["reason"]
    assert won["n"] == len(artifacts["test"]) and won["split"] == "test" and won["metric"] == "mcc"
    lost = compare_ensembles(artifacts["challenger"], artifacts["champion"], artifacts["data"], n_resamples=500)
    assert lost["promote"] is False
    same = compare_ensembles(artifacts["challenger"], artifacts["challenger"], artifacts["data"], n_resamples=200)
    assert same["promote"] is False and same["difference"] == 0
    first = compare_ensembles(None, artifacts["challenger"], artifacts["data"])
    assert first["promote"] is True and first["champion"] is None
