"""Cross-validated selection (medens.stages.cv): the rule, folds and OOF predictions, the tie-break,
the served fold models, the test split touched once after selection, the report, the classical member."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medens.config import parse_spec
from medens.data.types import Split, SplitData
from medens.stages.cv import (
    SMALL_CLASS,
    cost_line,
    fold_assignment,
    plan_selection,
    small_validation_reason,
    tie_reason,
)
from medens.training.predictions import Predictions
from tests._scripts import load_script


def _split(labels, prefix):
    labels = np.asarray(labels, dtype=np.int64)
    return Split(images=np.zeros((len(labels), 8, 8, 1), np.uint8), labels=labels,
                 ids=[f"{prefix}{i}" for i in range(len(labels))])


def _spec(selection="auto", **extra):
    return parse_spec({"name": "cv", "models": ["compact_cnn"], "losses": ["ce"],
                       "evaluation": {"selection": selection, "bootstrap": 100, "gradcam": False, **extra}})


def test_the_rule_a_class_with_nine_validation_images_triggers_cv():
    val = [0] * 20 + [1] * 9
    data = SplitData("classification", ["a", "b"], _split(val * 2, "t"), _split(val, "v"), _split([0, 1], "x"))
    assert small_validation_reason(np.asarray(val), ["a", "b"]) == "fewer than 10 validation images in class b (9)"
    plan = plan_selection(_spec("auto"), data)
    assert plan["mode"] == "cv" and "class b (9)" in plan["reason"]
    plain = plan_selection(_spec("validation"), data)
    assert plain["mode"] == "validation"  # never applies the rule, but says it holds before training
    assert cost_line(plain, 4) == ("[selection] validation: 4 fits (note: fewer than 10 validation images in class "
                                   "b (9): the split may not rank systems; evaluation.selection auto or cv "
                                   "cross-validates on train + val, 5x the fits)")


def test_the_rule_ten_images_each_leaves_auto_to_the_tie_check():
    val = [0] * 10 + [1] * 10
    data = SplitData("classification", ["a", "b"], _split(val, "t"), _split(val, "v"), _split([0, 1], "x"))
    assert SMALL_CLASS == 10 and small_validation_reason(np.asarray(val), ["a", "b"]) is None
    assert plan_selection(_spec("auto"), data)["mode"] == "pending"
    assert plan_selection(_spec("cv"), data)["mode"] == "cv"  # cv always cross-validates
    assert cost_line(plan_selection(_spec("validation"), data), 4) == "[selection] validation: 4 fits"


def test_the_rule_a_tie_at_the_top_triggers_and_no_tie_does_not():
    assert tie_reason({"a": 1.0, "b": 1.0, "c": 0.9}, metric="macro_f1").startswith(
        "2 systems tie at the top of the validation ranking (macro_f1 1): a, b")
    assert tie_reason({"a": 1.0, "b": 0.99, "c": None}) is None
    assert tie_reason({"a": 1.0, "b": 1.0, "c": 0.9}, collapsed={"b"}) is None  # a collapsed system does not count


def test_folds_are_stratified_group_disjoint_and_keep_oversampled_copies_with_their_original():
    labels = np.array([0] * 12 + [1] * 6 + [2] * 4)
    ids = [f"img{i}" for i in range(22)] + ["img20:aug1", "img21:aug2"]
    labels = np.concatenate([labels, [2, 2]])
    fold_of = fold_assignment(labels, ids, 3, seed=0)
    assert sorted(set(fold_of.tolist())) == [0, 1, 2]
    assert fold_of[22] == fold_of[20] and fold_of[23] == fold_of[21]
    for c in (0, 1):  # every class with at least k images is in every held-out fold
        assert set(fold_of[labels == c].tolist()) == {0, 1, 2}
    groups = [f"patient{i // 2}" for i in range(22)] + ["patient10", "patient10"]
    fold_g = fold_assignment(labels, ids, 3, seed=0, groups=groups)
    for g in set(groups):
        assert len({fold_g[i] for i, x in enumerate(groups) if x == g}) == 1


def test_cv_ties_are_broken_by_the_oof_log_loss(tmp_path):
    """Two planted CV members with the same OOF accuracy (1.0): the surer one (lower OOF log-loss)
    is ranked first whatever the names."""
    from medens.evaluation.systems import selection_order
    from medens.models.artifact import write_manifest
    from medens.stages.evaluate import _selection

    labels = np.array([0, 1, 2, 0, 1, 2])
    members = {}
    for mid, sure in (("a_unsure", 0.5), ("z_sure", 0.9)):
        d = tmp_path / mid
        p = np.full((6, 3), (1 - sure) / 2, np.float32)
        p[np.arange(6), labels] = sure
        Predictions(probs=p, ids=[f"i{i}" for i in range(6)], labels=labels).save(d / "predictions" / "val.npz")
        write_manifest(d, {"member_id": mid, "cv": {"folds": 3}})
        members[mid] = d
    sel = _selection("accuracy", members, {}, {}, "out-of-fold predictions of 3-fold cross-validation on train + val")
    assert sel["a_unsure"]["score"] == sel["z_sure"]["score"] == 1.0
    assert sel["z_sure"]["log_loss"] < sel["a_unsure"]["log_loss"]
    order = selection_order({n: s["score"] for n, s in sel.items()}, {n: s["log_loss"] for n, s in sel.items()})
    assert order[0] == "z_sure" and sel["z_sure"]["basis"].startswith("out-of-fold")


def _digits(size=16) -> SplitData:
    """A smaller cut of tests/training/test_small_long_tail.py's real long-tailed digit scans:
    five classes, 30/14/10/6/4 training images, validation 15/10/4/2/2 (every class under 10
    but the first), 25 per class in test, read at ``size`` px."""
    path = Path(__file__).parents[1] / "training" / "test_small_long_tail.py"
    data = load_script(path, "small_long_tail_set").long_tailed_digits()
    keep = np.concatenate([np.flatnonzero(data.train.labels == c)[:n] for c, n in enumerate((30, 14, 10, 6, 4))])

    def resized(s: Split) -> Split:
        x = torch.from_numpy(np.asarray(s.images)).permute(0, 3, 1, 2).float()
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True)
        return Split(images=x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(), labels=s.labels,
                     ids=s.ids)

    return SplitData("classification", data.class_names, resized(data.train.subset(np.sort(keep))),
                     resized(data.val), resized(data.test), info={"source": {"sha256": "0" * 64, "kind": "test"}})


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """One tiny auto run on the digits: the rule triggers (validation classes under 10 images),
    hog_mlp joins, 2 models x 2 losses x 3 folds = 12 fits of 24 steps."""
    import medens.evaluation.systems as systems
    import medens.training as training
    from medens.stages import build_ensembles, evaluate_systems
    from medens.stages.run import train_grid

    root = tmp_path_factory.mktemp("cv")
    data = _digits()
    data.save(root / "data")
    spec = parse_spec({"name": "cv-digits", "models": ["compact_cnn"], "losses": ["ce", "weighted_ce"],
                       "training": {"epochs": 2, "min_steps": 24, "batch_size": 16, "patience": None},
                       "ensemble": {"methods": ["mean", "weighted", "vote"], "top_k": [2]},
                       "evaluation": {"selection": "auto", "cv_folds": 3, "bootstrap": 100, "gradcam": False,
                                      "gate_metric": "macro_f1"}})
    events, lines = [], []
    test_ids = set(data.test.ids)
    real_predict, real_order = training.predict_split, systems.selection_order

    def predict(path, split, **kw):
        events.append(("predict_test" if set(split.ids) & test_ids else "predict_other", str(path)))
        return real_predict(path, split, **kw)

    def order(*a, **kw):
        events.append(("select", ""))
        return real_order(*a, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(training, "predict_split", predict)
    mp.setattr(systems, "selection_order", order)
    try:
        paths, plan, used = train_grid(spec, root / "data", root / "members", progress=False, log=lines.append)
        build_ensembles(used, root / "data", paths, root / "ensembles")
        summary = evaluate_systems(used, root / "data", paths, root / "ensembles", root / "evaluation", root / "best")
    finally:
        mp.undo()
    return {"root": root, "data": data, "paths": paths, "plan": plan, "spec": used, "summary": summary,
            "events": events, "lines": lines}


def test_auto_on_small_data_runs_cv_adds_the_classical_member_and_prints_the_cost_first(cv_run):
    plan, lines = cv_run["plan"], cv_run["lines"]
    assert plan["mode"] == "cv" and plan["reason"] == "fewer than 10 validation images in class 2 (4), 3 (2), 4 (2)"
    assert [m.name for m in cv_run["spec"].models] == ["compact_cnn", "hog_mlp"]
    assert lines[0].startswith("[selection] cv (") and "4 members x 3 folds = 12 fits" in lines[0]
    assert all(not line.startswith("[selection]") for line in lines[1:])  # printed once, before any training


def test_oof_predictions_cover_train_and_val_once_each_from_a_model_that_did_not_train_on_it(cv_run):
    from medens.models.artifact import read_manifest

    data = cv_run["data"]
    pooled = list(data.train.ids) + list(data.val.ids)
    for d in cv_run["paths"]:
        manifest = read_manifest(d)
        oof = Predictions.load(d / "predictions" / "val.npz")
        assert sorted(oof.ids) == sorted(pooled) and len(oof.ids) == len(set(oof.ids))
        fold_of = manifest["cv"]["fold_of"]
        for f, fd in enumerate(manifest["cv"]["fold_dirs"]):
            held = Predictions.load(Path(fd) / "predictions" / "val.npz")
            assert {fold_of[i] for i in held.ids} == {f}  # its held-out images are exactly fold f
            fm = read_manifest(fd)
            assert fm["cv_fold"]["trained_on"] == sum(1 for i in pooled if fold_of[i] != f)
            assert fm["cv_fold"]["held_out"] == len(held.ids)
            pos = {i: n for n, i in enumerate(oof.ids)}
            np.testing.assert_allclose(oof.probs[[pos[i] for i in held.ids]], held.probs, atol=1e-6)


def test_the_test_split_is_predicted_only_after_selection_by_every_fold_model(cv_run):
    kinds = [k for k, _ in cv_run["events"]]
    first_select = kinds.index("select")
    assert "predict_test" not in kinds[:first_select]
    assert kinds.count("predict_test") == 12  # every fold model of every member, once
    for d in cv_run["paths"]:
        manifest = json.loads((d / "model.json").read_text())
        folds = [Predictions.load(Path(fd) / "predictions" / "test.npz").probs for fd in manifest["cv"]["fold_dirs"]]
        member = Predictions.load(d / "predictions" / "test.npz").probs
        np.testing.assert_allclose(member, np.mean(folds, axis=0), atol=1e-6)


def test_the_served_artifact_loads_and_averages_the_fold_models(cv_run):
    from medens.data.transforms import preprocess
    from medens.ensemble.artifact import load_ensemble
    from medens.models.artifact import load_artifact

    root, data = cv_run["root"], cv_run["data"]
    ens = load_ensemble(root / "best")
    assert ens.manifest["cv_selected"]["folds"] == 3 and len(ens.members) % 3 == 0
    x = preprocess(np.asarray(data.test.images[:20]), next(iter(ens.members.values())).input_spec)
    probs, member_probs = ens.predict(x)
    metrics = json.loads((root / "evaluation" / "metrics.json").read_text())
    saved = Predictions.load(Path(metrics["best_path"]) / "predictions" / "test.npz").probs[:20]
    np.testing.assert_allclose(probs, saved, atol=1e-5)  # served = what was reported
    # and a member served alone is the mean of its fold models, to 1e-6
    from medens.stages.cv import package_cv
    from medens.stages.train import member_dirs

    members = member_dirs(cv_run["paths"])
    mid = sorted(members)[0]
    one = load_ensemble(package_cv(mid, members, {}, root / "one", {}, {}))
    fold_dirs = json.loads((members[mid] / "model.json").read_text())["cv"]["fold_dirs"]
    expected = np.mean([load_artifact(fd).probs(torch.as_tensor(x)).numpy() for fd in fold_dirs], axis=0)
    np.testing.assert_allclose(one.predict(x)[0], expected, atol=1e-6)


def test_vote_over_cv_members_is_served_with_fold_means(cv_run, tmp_path):
    from medens.data.transforms import preprocess
    from medens.ensemble.artifact import load_ensemble
    from medens.stages import ensemble_dirs
    from medens.stages.cv import package_cv
    from medens.stages.train import member_dirs

    root, data = cv_run["root"], cv_run["data"]
    ensembles = ensemble_dirs(root / "ensembles")
    vote = next(n for n in ensembles if n.startswith("vote"))
    ens = load_ensemble(package_cv(vote, member_dirs(cv_run["paths"]), ensembles, tmp_path / "vote", {}, {}))
    assert set(ens.manifest["fold_members"]) == set(ens.combiner.member_ids)
    x = preprocess(np.asarray(data.test.images), next(iter(ens.members.values())).input_spec)
    saved = Predictions.load(ensembles[vote] / "predictions" / "test.npz").probs
    np.testing.assert_allclose(ens.predict(x)[0], saved, atol=1e-5)


def test_report_and_metrics_state_the_selection_the_rule_and_the_classical_share(cv_run):
    root = cv_run["root"]
    metrics = json.loads((root / "evaluation" / "metrics.json").read_text())
    mode = metrics["selection_mode"]
    assert mode["mode"] == "cv" and mode["requested"] == "auto" and mode["folds"] == 3 and mode["fits"] == 12
    assert "fewer than 10 validation images" in mode["reason"] and "tie at the top" in mode["rule"]
    assert metrics["selection_rule"].startswith("highest macro_f1 on out-of-fold (OOF) predictions of 3-fold")
    assert all(s["basis"] and "out-of-fold" in s["basis"] for s in metrics["selection"].values() if s["basis"])
    classical = metrics["classical_member"]
    assert classical["members"] == ["hog_mlp__ce", "hog_mlp__weighted_ce"] and 0.0 <= classical["share"] <= 1.0
    report = (root / "evaluation" / "report.md").read_text()
    assert "Selection: cv (evaluation.selection: auto), because fewer than 10 validation images" in report
    assert "Classical member (hog_mlp__ce, hog_mlp__weighted_ce): carries" in report
    assert json.loads((root / "best" / "ensemble.json").read_text())["evaluation"]["selection_rule"] == \
        metrics["selection_rule"]
