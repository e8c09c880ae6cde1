"""medens.stages: the stage functions every orchestration calls, run in-process on tiny data."""

import json
import time

import numpy as np
import pytest
import yaml

from medens.config import load_spec, parse_spec
from medens.stages import (
    EvaluationSummary,
    GridEntry,
    build_ensembles,
    champion_gate,
    evaluate_systems,
    export_report,
    fetch_champion,
    member_dirs,
    package_best,
    prepare_data,
    read_index,
    register_artifact,
    registered_uri,
    registry_history,
    run_experiment,
    source_fingerprint,
    spec_from_text,
    train_member,
    training_grid,
)
from medens.storage import ArtifactStore

TINY = {
    "name": "wf",
    "task": "classification",
    "data": {"source": "synthetic_cells", "image_size": 32, "synthetic": {"counts": {"codocyte": 40, "hypochromia": 40,
                                                                                    "normal": 120}}},
    "models": ["compact_cnn"],
    "losses": ["ce", {"name": "focal", "params": {"gamma": 2.0}}],
    "training": {"epochs": 4, "min_steps": 0, "batch_size": 16, "lr": 0.003, "patience": None, "plateau_patience": None,
                 "class_weights": "balanced"},
    "ensemble": {"methods": ["mean", "weighted"], "top_k": [2]},
    "evaluation": {"bootstrap": 100, "gradcam": False},
}


def test_spec_from_text_round_trip_and_errors():
    spec = parse_spec(TINY)
    assert spec_from_text(spec.to_yaml()) == spec
    assert spec_from_text(json.dumps(spec.to_dict())) == spec
    with pytest.raises(ValueError, match="not valid YAML"):
        spec_from_text("name: [unclosed")
    with pytest.raises(ValueError, match="pipeline parameter spec"):
        spec_from_text("name: x\nmodels: []\nlosses: [ce]\n")


def test_training_grid_classification():
    grid = training_grid(parse_spec(TINY))
    assert [g.id for g in grid] == ["compact_cnn__ce", "compact_cnn__focal-gamma=2.0"]
    # the JSON a train task receives through the ParallelFor, in the shape earlier runs passed
    assert json.loads(grid[1].model_dump_json()) == {
        "id": "compact_cnn__focal-gamma=2.0", "model": {"name": "compact_cnn", "params": {}},
        "loss": {"name": "focal", "params": {"gamma": 2.0}}, "train_on": "train"}
    assert all(GridEntry.parse(g.model_dump_json()) == g for g in grid)


def test_training_grid_segmentation_sampling_method():
    spec = load_spec("seg-demo")
    grid = training_grid(spec)
    # study 3: every (model, loss) pair has a sampling-method partner with the same loss
    assert [(g.id, g.train_on) for g in grid] == [
        ("basic_unet__exponential", "train"), ("basic_unet__exponential__sampling", "train_crops"),
        ("basic_unet__dice_ce", "train"), ("basic_unet__dice_ce__sampling", "train_crops")]
    assert grid[1].loss == grid[0].loss and grid[3].loss == grid[2].loss
    no_sampling = spec.model_copy(update={"data": spec.data.model_copy(update={"sampling_method": False})})
    assert [g.train_on for g in training_grid(no_sampling)] == ["train", "train"]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """The pipeline's stages in-process: data, two members, ensembles, evaluation."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("wf")
    spec = parse_spec(TINY)
    summary = prepare_data(spec, root / "data")
    paths = [train_member(spec, root / "data", m.model_dump_json(), root / "m" / str(i))
             for i, m in enumerate(training_grid(spec))]
    made = build_ensembles(spec, root / "data", paths, root / "ens")
    ev = evaluate_systems(spec, root / "data", paths, root / "ens", root / "eval", root / "best")
    torch.set_num_threads(threads)
    return {"root": root, "spec": spec, "data_summary": summary, "paths": paths, "ensembles": made, "summary": ev}


def test_stages_write_their_artifacts(stages):
    root = stages["root"]
    assert stages["data_summary"]["splits"]["train"]["n"] > 0
    assert (root / "data" / "dataset.json").is_file() and (root / "data" / "spec.yaml").is_file()
    assert yaml.safe_load((root / "data" / "spec.yaml").read_text())["name"] == "wf"
    members = member_dirs(stages["paths"])
    assert list(members) == ["compact_cnn__ce", "compact_cnn__focal-gamma=2.0"]  # ids from model.json
    for d in members.values():
        assert (d / "predictions" / "val.npz").is_file() and (d / "predictions" / "test.npz").is_file()
    assert sorted(stages["ensembles"]) == ["mean-top2", "weighted-top2"]
    s = stages["summary"]
    assert s.members == list(members) and s.ensembles == ["mean-top2", "weighted-top2"]
    assert {r["system"] for r in s.leaderboard} == set(members) | {"mean-top2", "weighted-top2"}
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert s.best_metrics["mcc"] == pytest.approx(metrics["systems"][s.selected]["metrics"]["mcc"])
    # one name for the selected system: "best" is no longer written beside "selected"
    assert metrics["selected"] == s.selected and "best" not in metrics
    assert EvaluationSummary.read(root / "eval" / "summary.json") == s
    for f in ("metrics.json", "kfp_metrics.json", "report.html", "report.md", "summary.json"):
        assert (root / "eval" / f).is_file(), f
    # the reported test metrics of the best system, recomputed by scikit-learn from its saved test
    # predictions and the saved test labels
    from pathlib import Path

    from sklearn.metrics import f1_score, matthews_corrcoef

    from medens.data.types import SplitData
    from medens.training.predictions import Predictions

    labels = SplitData.load(root / "data").test.labels
    probs = Predictions.load(Path(s.best_path) / "predictions" / "test.npz").probs
    assert probs.shape == (len(labels), 3)
    predicted = probs.argmax(1)
    assert s.best_metrics["mcc"] == pytest.approx(matthews_corrcoef(labels, predicted), abs=1e-9)
    assert s.best_metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-9)
    assert s.best_metrics["accuracy"] == pytest.approx(float(np.mean(predicted == labels)), abs=1e-12)
    assert s.selected in {*members, "mean-top2", "weighted-top2"}


def test_member_dirs_refuses_duplicates(stages):
    with pytest.raises(ValueError, match="appears twice"):
        member_dirs([stages["paths"][0], stages["paths"][0]])


def test_best_is_a_servable_ensemble(stages):
    from medens.ensemble.artifact import load_ensemble

    root, best = stages["root"], stages["summary"].selected
    ens = load_ensemble(root / "best")  # checksums verified
    assert ens.manifest["evaluation"]["system"] == best
    assert ens.manifest["evaluation"]["gate_metric"] == "mcc"
    assert not (root / "best" / "predictions").exists()
    # the content-drift reference under the checksums just verified: validation embeddings, topped up
    # with training images when validation has fewer than 50 (this tiny run's)
    from medens.data.types import SplitData

    ref, data = ens.manifest["drift_reference"], SplitData.load(root / "data")
    n_val = len(data.val.labels)
    assert "drift_reference.npz" in ens.manifest["files"]
    assert (ref["source"], ref["n"]) == (("validation", min(300, n_val)) if n_val >= 50 else
                                         ("validation+train", min(300, n_val + len(data.train.labels))))


@pytest.mark.parametrize("system", ["compact_cnn__ce", "mean-top2"])
def test_package_best_member_and_ensemble(stages, system, tmp_path):
    from medens.ensemble.artifact import load_ensemble
    from medens.stages import ensemble_dirs

    root = stages["root"]
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    metrics["selected"] = system
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    out = package_best(tmp_path / "eval", member_dirs(stages["paths"]), ensemble_dirs(root / "ens"), tmp_path / "b")
    ens = load_ensemble(out)
    assert ens.manifest["evaluation"]["system"] == system
    if system == "mean-top2":
        assert ens.manifest["method"] == "mean" and len(ens.members) == 2
    else:
        assert ens.manifest["method"] == "single" and list(ens.members) == ["compact_cnn__ce"]
    metrics["selected"] = "nope"
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="neither a member nor an ensemble"):
        package_best(tmp_path / "eval", {}, {}, tmp_path / "c")


def test_packaged_best_has_checked_onnx_members(stages, tmp_path):
    """evaluate_systems packages best/ with every member exported to ONNX, checked on validation
    images, the files under the manifest's checksums; package_best without images writes none."""
    from medens.data.types import SplitData
    from medens.ensemble.artifact import load_ensemble
    from medens.serving.predictor import EnsemblePredictor
    from medens.stages import ensemble_dirs

    root = stages["root"]
    best = load_ensemble(root / "best")
    onnx = best.manifest["onnx"]
    assert "refused" not in onnx, onnx.get("refused")
    assert list(onnx["members"]) == list(best.members)
    assert onnx["check_images"] == min(32, len(SplitData.load(root / "data").val))
    for m in onnx["members"].values():
        assert m["file"] in best.manifest["files"] and m["max_abs_diff"] <= 1e-5
    torch_p, onnx_p = (EnsemblePredictor.load(root / "best", backend=b, threads=1) for b in ("torch", "onnx"))
    assert onnx_p.backend == "onnx"
    images = SplitData.load(root / "data").test.images[:4]
    x = torch_p.prepare(list(images))
    assert max(np.abs(a["probs"] - b["probs"]).max() for a, b in zip(torch_p.forward(x), onnx_p.forward(x))) <= 1e-5
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text((root / "eval" / "metrics.json").read_text())
    out = package_best(tmp_path / "eval", member_dirs(stages["paths"]), ensemble_dirs(root / "ens"), tmp_path / "b")
    assert load_ensemble(out).manifest["onnx"]["refused"].startswith("no validation images")


def test_export_report(stages, tmp_path):
    text = export_report(stages["root"] / "eval", tmp_path / "h" / "report.html", tmp_path / "r.md")
    assert (tmp_path / "h" / "report.html").read_bytes() == (stages["root"] / "eval" / "report.html").read_bytes()
    assert (tmp_path / "r.md").read_text().startswith("# medens report: wf")
    assert text.splitlines()[0].startswith("#  system") and stages["summary"].selected in text


@pytest.fixture(params=["local", "s3"])
def store_uri(request, tmp_path, monkeypatch):
    if request.param == "local":
        return str(tmp_path / "registry")
    endpoint = request.getfixturevalue("s3_endpoint")
    # moto accepts any credentials; these are placeholders, not secrets
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("MINIO_ENDPOINT", endpoint)
    return f"s3://medens-{time.time_ns()}/models"


def test_register_fetch_and_champion_gate(stages, store_uri, tmp_path):
    from medens.ensemble.artifact import write_ensemble

    root, spec = stages["root"], stages["spec"]
    assert fetch_champion(store_uri, "wf", tmp_path / "none") is None
    assert registered_uri(store_uri, "wf", "v1") is None
    # nothing serves yet: the challenger is promoted
    first = champion_gate(spec, root / "best", root / "data", store_uri=store_uri)
    assert first.promote is True and first.champion_version is None
    out = register_artifact(root / "best", store_uri, "wf", version="v1")
    assert out["uri"].endswith("wf/versions/v1") and out["version"] == "v1"
    assert registered_uri(store_uri, "wf", "v1") == out["uri"]
    champ = fetch_champion(store_uri, "wf", tmp_path / "champ")
    assert champ["version"] == "v1" and champ["uri"] == out["uri"]
    assert (tmp_path / "champ" / "ensemble.json").read_bytes() == (root / "best" / "ensemble.json").read_bytes()
    # the same system again is not better: the champion stays
    again = champion_gate(spec, root / "best", root / "data", store_uri=store_uri)
    assert again.promote is False and again.champion_version == "v1" and again.difference == 0
    # a useless champion (the best member with weights scrambled) loses to the real one
    bad_member = tmp_path / "bad"
    src = member_dirs(stages["paths"])["compact_cnn__ce"]
    _scrambled_copy(src, bad_member)
    write_ensemble(tmp_path / "bad-ens", name="bad", member_dirs={"bad": bad_member}, combiner=None)
    register_artifact(tmp_path / "bad-ens", store_uri, "wf", version="v2")
    assert fetch_champion(store_uri, "wf", tmp_path / "c2")["version"] == "v2"
    won = champion_gate(spec, root / "best", root / "data", store_uri=store_uri)
    assert won.champion_version == "v2"
    assert won.challenger > won.champion
    assert won.promote is True, won.reason
    names = ArtifactStore.from_uri(store_uri).list("wf/")
    assert {n for n in names if not n.startswith("wf/history/")} == {"wf/champion", "wf/versions/v1", "wf/versions/v2"}
    # the audit trail: every gate decision, oldest first, with what an operator needs to answer "why this version"
    history = registry_history(store_uri, "wf")
    assert history[2] == won  # what the history reads back is the decision the gate returned
    assert [h.promote for h in history] == [True, False, True]
    assert [h.champion_version for h in history] == [None, "v1", "v2"]
    fingerprint = json.loads((root / "data" / "dataset.json").read_text())["info"]["source"]["sha256"]
    for h in history:
        assert h.data_fingerprint == fingerprint and h.metric == "mcc" and h.time.endswith("Z")
        assert h.challenger_system == stages["summary"].selected
    assert history[2].p_value < 0.05 and history[2].decision == "promote"
    assert champ["data_fingerprint"] == fingerprint  # the registry entry names the data it was trained on


def _scrambled_copy(src, dest):
    """A model artifact whose weights are all zero: it predicts one constant distribution."""
    import shutil

    import torch

    from medens.models.artifact import read_manifest, save_state_dict, write_manifest

    shutil.copytree(src, dest)
    state = torch.load(dest / "weights.pt", weights_only=True)
    save_state_dict(dest / "weights.pt", {k: torch.zeros_like(v) for k, v in state.items()})
    manifest = read_manifest(dest)
    manifest.pop("files", None)
    write_manifest(dest, manifest)


def test_register_refuses_a_non_ensemble(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="is not an ensemble artifact"):
        register_artifact(tmp_path / "x", str(tmp_path / "reg"), "wf")


def test_prepare_data_from_new_data_in_s3(s3_endpoint, monkeypatch, tmp_path):
    """Retraining's new data: an image folder in MinIO replaces data.path."""
    from medens.data.export import write_synthetic

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    write_synthetic("cells", tmp_path / "cells", size=32, counts={"codocyte": 10, "hypochromia": 10, "normal": 30})
    bucket = f"incoming-{time.time_ns()}"
    store = ArtifactStore.from_uri(f"s3://{bucket}", endpoint=s3_endpoint)
    for f in sorted((tmp_path / "cells").rglob("*.png")):
        store.put_file(f, f"rbc/batch-1/{f.relative_to(tmp_path / 'cells').as_posix()}")
    spec = parse_spec({**TINY, "data": {"source": "image_folder", "image_size": 32}})
    summary = prepare_data(spec, tmp_path / "ds", data_uri=f"s3://{bucket}/rbc/batch-1", endpoint=s3_endpoint)
    assert sum(v["n"] for k, v in summary["splits"].items() if k in ("train", "val", "test")) == 50
    # the fingerprint: object names, sizes and ETags, stored in the dataset
    fp = summary["source"]
    assert fp["kind"] == "s3" and fp["n_files"] == 50 and fp["uri"] == f"s3://{bucket}/rbc/batch-1"
    assert json.loads((tmp_path / "ds" / "dataset.json").read_text())["info"]["source"] == fp
    assert source_fingerprint(spec, f"s3://{bucket}/rbc/batch-1", endpoint=s3_endpoint) == fp
    extra = next((tmp_path / "cells").rglob("*.png"))
    store.put_file(extra, "rbc/batch-1/normal/late-arrival.png")  # new data at the same URI
    changed = source_fingerprint(spec, f"s3://{bucket}/rbc/batch-1", endpoint=s3_endpoint)
    assert changed["n_files"] == 51 and changed["sha256"] != fp["sha256"]
    with pytest.raises(ValueError, match="changed while the pipeline ran"):
        prepare_data(spec, tmp_path / "ds3", data_uri=f"s3://{bucket}/rbc/batch-1", endpoint=s3_endpoint,
                     expected_fingerprint=fp["sha256"])
    assert not (tmp_path / "ds3").exists()
    assert summary["class_names"] == ["codocyte", "hypochromia", "normal"]
    with pytest.raises(ValueError, match="no objects under"):
        prepare_data(spec, tmp_path / "ds2", data_uri=f"s3://{bucket}/nothing", endpoint=s3_endpoint)
    assert np.load(tmp_path / "ds" / "train.images.npy").shape[1:] == (32, 32, 3)


# ---------------------------------------------------------------- selection without the test split

def _planted_member(src, dest, mid, *, val_right: float, test_right: float, seed: int, confidence: float = 0.9):
    """A copy of a trained member whose saved predictions are replaced by planted ones:
    ``val_right`` / ``test_right`` of the images get the true class with ``confidence``."""
    import shutil

    from medens.models.artifact import read_manifest, write_manifest
    from medens.training.predictions import Predictions

    shutil.copytree(src, dest)
    manifest = read_manifest(dest)
    manifest.update({"member_id": mid})
    manifest.pop("files", None)
    rng = np.random.default_rng(seed)
    for split, right in (("val", val_right), ("test", test_right)):
        p = Predictions.load(dest / "predictions" / f"{split}.npz")
        k = p.probs.shape[1]
        pred = np.where(rng.random(len(p.labels)) < right, p.labels, (p.labels + 1) % k)
        probs = np.full((len(pred), k), (1 - confidence) / (k - 1), np.float32)
        probs[np.arange(len(pred)), pred] = confidence
        Predictions(probs=probs, ids=p.ids, labels=p.labels, class_names=p.class_names).save(
            dest / "predictions" / f"{split}.npz")
    write_manifest(dest, manifest)
    return dest


def test_a_tie_on_validation_goes_to_the_lower_validation_log_loss(stages, tmp_path):
    root, spec = stages["root"], stages["spec"]
    src = member_dirs(stages["paths"])["compact_cnn__ce"]
    # the same right and wrong answers (same seed), so the same validation MCC; "a" is less sure of them
    a = _planted_member(src, tmp_path / "a", "a_unsure", val_right=0.9, test_right=0.9, seed=3, confidence=0.6)
    b = _planted_member(src, tmp_path / "b", "b_sure", val_right=0.9, test_right=0.9, seed=3, confidence=0.95)
    s = evaluate_systems(spec, root / "data", [a, b], tmp_path / "no-ensembles", tmp_path / "eval")
    sel = json.loads((tmp_path / "eval" / "metrics.json").read_text())["selection"]
    assert sel["a_unsure"]["score"] == sel["b_sure"]["score"]
    assert sel["b_sure"]["log_loss"] < sel["a_unsure"]["log_loss"]
    assert s.selected == "b_sure"  # by name alone it would be a_unsure


def test_a_system_best_on_test_but_not_on_validation_is_not_selected(stages, tmp_path):
    root, spec = stages["root"], stages["spec"]
    src = member_dirs(stages["paths"])["compact_cnn__ce"]
    a = _planted_member(src, tmp_path / "a", "val_winner", val_right=0.95, test_right=0.70, seed=1)
    b = _planted_member(src, tmp_path / "b", "test_winner", val_right=0.70, test_right=0.99, seed=2)
    s = evaluate_systems(spec, root / "data", [a, b], tmp_path / "no-ensembles", tmp_path / "eval", tmp_path / "best")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    sel, systems = metrics["selection"], metrics["systems"]
    assert sel["val_winner"]["score"] > sel["test_winner"]["score"]
    assert systems["test_winner"]["metrics"]["mcc"] > systems["val_winner"]["metrics"]["mcc"]
    assert s.selected == metrics["selected"] == "val_winner" and s.best_on_test == "test_winner"
    assert metrics["leaderboard"] == ["val_winner", "test_winner"]  # ordered by the selection score
    from medens.ensemble.artifact import read_ensemble_manifest

    served = read_ensemble_manifest(tmp_path / "best")["evaluation"]
    assert served["system"] == "val_winner" and served["selection_score"] == sel["val_winner"]["score"]
    # the report shows both: the selection score and the test metrics, and says what was selected by what rule
    md = (tmp_path / "eval" / "report.md").read_text()
    head = md.splitlines()[4]
    assert "selection: val mcc" in head and "MCC [95% CI]" in head
    row_a = next(line for line in md.splitlines() if line.startswith("| 1 | val_winner"))
    assert f"{sel['val_winner']['score']:.3f} (selected)" in row_a
    assert f"{systems['val_winner']['metrics']['mcc']:.3f}" in row_a
    assert "Selected for serving: val_winner, by the highest validation mcc" in md
    assert "Highest test mcc: test_winner (not used for selection)" in md
    assert "val_winner" in (tmp_path / "eval" / "report.html").read_text()


def test_ensembles_are_selected_on_out_of_fold_validation_predictions(stages):
    """The ensembles' selection scores come from cross-fitted predictions, not their in-sample fit."""
    from medens.ensemble.crossfit import crossfit_predictions
    from medens.evaluation.systems import selection_score
    from medens.training.predictions import Predictions

    root, spec = stages["root"], stages["spec"]
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    members = member_dirs(stages["paths"])
    val = {m: Predictions.load(d / "predictions" / "val.npz") for m, d in members.items()}
    for name, method in (("mean-top2", "mean"), ("weighted-top2", "weighted")):
        info = metrics["selection"][name]
        assert info["basis"] == "5-fold cross-fitted validation predictions"
        oof = crossfit_predictions(method, val, top_k=2, rank_metric=spec.ensemble.rank_metric, seed=spec.seed)
        saved = Predictions.load(root / "ens" / name / "predictions" / "val_oof.npz")
        np.testing.assert_allclose(saved.probs, oof, atol=1e-6)
        assert info["score"] == pytest.approx(selection_score("mcc", probs=oof, labels=saved.labels))
    # the mean of all members fits nothing: its out-of-fold predictions are the plain mean
    mean = np.mean([val[m].probs.astype(np.float64) for m in val], axis=0)
    np.testing.assert_allclose(crossfit_predictions("mean", val, top_k=2), mean, atol=1e-6)
    for m in members:
        assert metrics["selection"][m]["basis"] == "validation predictions"


def test_a_validation_split_that_cannot_support_stacking_degrades_not_aborts(tmp_path):
    """A long tail: one validation image of the rare class. Stacking is skipped with its reason;
    everything else is built, evaluated and the selected system registered."""
    spec = parse_spec({**TINY, "name": "tail",
                       "data": {"source": "synthetic_cells", "image_size": 32,
                                "synthetic": {"counts": {"codocyte": 60, "hypochromia": 60, "normal": 5}}},
                       # 2 epochs (12 steps) left both members predicting one class: a run that the
                       # collapse guard refuses to register; 120 steps learn the cells
                       "losses": ["ce", "weighted_ce"], "training": {**TINY["training"], "epochs": 2, "min_steps": 120},
                       "ensemble": {"methods": ["mean", "stacking"], "top_k": [2]}})
    s = run_experiment(spec, tmp_path / "run", log=lambda *a: None)
    data = json.loads((tmp_path / "run" / "data" / "dataset.json").read_text())
    assert data["info"]["source"]["kind"] == "generated:synthetic_cells"
    assert list(s.skipped) == ["stacking-top2"]
    assert "validation samples of every class" in s.skipped["stacking-top2"]
    assert sorted(s.ensembles) == ["mean-top2"]
    systems = json.loads((tmp_path / "run" / "evaluation" / "metrics.json").read_text())["systems"]
    assert set(systems) == {"compact_cnn__ce", "compact_cnn__weighted_ce", "mean-top2"}
    md = (tmp_path / "run" / "evaluation" / "report.md").read_text()
    assert "Skipped: stacking-top2: " in md and "validation samples of every class" in md
    assert s.uri and (tmp_path / "run" / "registry" / "tail" / "versions" / "run" / "ensemble.json").is_file()


def test_embedding_fusion_is_chosen_from_the_spec(stages, tmp_path):
    """Study 4's embedding fusion as the model-level ensemble, named by its kind."""
    from medens.ensemble.artifact import load_ensemble

    root = stages["root"]
    spec = parse_spec({**TINY, "ensemble": {"methods": ["mean"], "top_k": [2], "model_level": True,
                                            "model_level_kind": "embedding"},
                       "training": {**TINY["training"], "epochs": 1}})
    made = build_ensembles(spec, root / "data", stages["paths"], tmp_path / "ens")
    assert sorted(made) == ["embedding-fusion-top2", "mean-top2"]
    ens = load_ensemble(made["embedding-fusion-top2"])
    fused = json.loads((next((made["embedding-fusion-top2"] / "members").iterdir()) / "model.json").read_text())
    assert fused["fusion"]["kind"] == "embedding"
    assert sorted(ens.manifest["fused_members"]) == sorted(member_dirs(stages["paths"]))  # top-2 by rank order
    assert read_index(tmp_path / "ens").selection["embedding-fusion-top2"].basis.startswith("validation")


def test_a_models_training_overrides_apply_to_its_members_only(stages, tmp_path):
    # the module's two members trained the experiment's 4 epochs; a model with {epochs: 2, lr: 1e-3}
    # trains its member for 2 at that rate, under the same member id
    root = stages["root"]
    spec = parse_spec({**TINY, "models": [{"name": "compact_cnn", "training": {"epochs": 2, "lr": 1e-3}}]})
    assert spec.models[0].key == "compact_cnn" and spec.to_dict()["models"][0]["training"] == {"epochs": 2, "lr": 1e-3}
    assert "training" not in parse_spec(TINY).to_dict()["models"][0]  # nothing written when there are none
    entry = training_grid(spec)[0]
    assert entry.id == "compact_cnn__ce"
    path = train_member(spec, root / "data", entry.model_dump_json(), tmp_path / "m")
    manifest = json.loads((path / "model.json").read_text())
    assert len(manifest["history"]) == 2 and manifest["training"]["lr"] == 1e-3 and manifest["training"]["epochs"] == 2
    first = json.loads((stages["paths"][0] / "model.json").read_text())
    assert len(first["history"]) == 4 and first["training"]["lr"] == 0.003
    with pytest.raises(ValueError, match=r"models.0.training.epoch: unknown key"):
        parse_spec({**TINY, "models": [{"name": "compact_cnn", "training": {"epoch": 2}}]})


def test_best_carries_conformal_sets_calibrated_on_selection_predictions(stages):
    """conformal.json: the selected system's thresholds from its selection predictions (cross-fitted
    val_oof.npz for an ensemble, val.npz for a member), in the artifact under its checksum; the
    test coverage it gave in metrics.json and the report."""
    from pathlib import Path

    from medens.data.types import SplitData
    from medens.ensemble.artifact import load_ensemble
    from medens.ensemble.conformal import ConformalSets, calibrate, coverage_table
    from medens.training.predictions import Predictions

    root, selected = stages["root"], stages["summary"].selected
    system_dir = Path(stages["summary"].best_path)
    source = system_dir / "predictions" / ("val_oof.npz" if selected in stages["ensembles"] else "val.npz")
    cal = Predictions.load(source)
    expected = calibrate(cal.probs, cal.labels, ["codocyte", "hypochromia", "normal"])
    ens = load_ensemble(root / "best")  # checksums verified, conformal.json among them
    assert "conformal.json" in ens.manifest["files"]
    stored = ConformalSets.read(root / "best" / "conformal.json")
    for level in (0.9, 0.95):
        np.testing.assert_array_equal(stored.thresholds[level], expected.thresholds[level])
    assert stored.source.startswith(f"{selected}: {source.parent.parent.name}/predictions/{source.name}")
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    test = SplitData.load(root / "data").test
    probs = Predictions.load(system_dir / "predictions" / "test.npz").probs
    assert metrics["conformal"]["test"] == coverage_table(stored, probs, test.labels)
    md = (root / "eval" / "report.md").read_text()
    assert "## Conformal prediction sets (test split, reported only)" in md
    assert f"{metrics['conformal']['test']['0.9']['coverage']:.3f}" in md


def test_conformal_calibration_never_reads_the_test_split(stages, tmp_path, monkeypatch):
    """Every system calibrates with its test predictions replaced by garbage and every file it
    opens recorded: only validation (or cross-fitted validation) predictions are read."""
    import shutil

    from medens.stages import ensemble_dirs
    from medens.stages.conformal import calibrate_selected
    from medens.training.predictions import Predictions

    root = stages["root"]
    members = {m: shutil.copytree(d, tmp_path / "m" / m) for m, d in member_dirs(stages["paths"]).items()}
    ensembles = {e: shutil.copytree(d, tmp_path / "e" / e) for e, d in ensemble_dirs(root / "ens").items()}
    for d in (*members.values(), *ensembles.values()):
        (d / "predictions" / "test.npz").write_bytes(b"not the test split")
    opened = []
    real = Predictions.load.__func__
    monkeypatch.setattr(Predictions, "load", classmethod(lambda cls, p: (opened.append(p), real(cls, p))[1]))
    for name in (*members, *ensembles):
        sets = calibrate_selected(name, members, ensembles)
        assert sets.n_per_class == [int(n) for n in np.bincount(real(Predictions, opened[-1]).labels, minlength=3)]
    assert {p.name for p in opened} == {"val.npz", "val_oof.npz"}
    assert [p.name for p in opened if p.parent.parent.name in ensembles] == ["val_oof.npz"] * 2


def test_conformal_settings_of_the_spec_reach_the_calibration(stages):
    """``evaluation.conformal`` (levels, score, method) is what the selected system is calibrated
    with: the thresholds equal a direct ``calibrate`` with those settings on the same predictions,
    and differ from the defaults'; bad levels are refused by the spec."""
    from pathlib import Path
    from types import SimpleNamespace

    from medens.config import parse_spec
    from medens.ensemble.conformal import calibrate
    from medens.stages import ensemble_dirs
    from medens.stages.evaluate import _calibrate_conformal
    from medens.training.predictions import Predictions

    root, selected = stages["root"], stages["summary"].selected
    d = stages["spec"].to_dict()
    d["evaluation"] = {**d.get("evaluation", {}), "conformal": {"coverage": [0.8, 0.99], "score": "raps",
                                                               "method": "marginal"}}
    spec = parse_spec(d)
    members, ensembles = member_dirs(stages["paths"]), ensemble_dirs(root / "ens")
    chosen = SimpleNamespace(selected=selected, selection={selected: {}})
    sets = _calibrate_conformal(spec, chosen, members, ensembles)
    system_dir = Path(stages["summary"].best_path)
    cal = Predictions.load(system_dir / "predictions" / ("val_oof.npz" if selected in ensembles else "val.npz"))
    names = ["codocyte", "hypochromia", "normal"]
    expected = calibrate(cal.probs, cal.labels, names, levels=(0.8, 0.99), score="raps", method="marginal")
    assert sorted(sets.thresholds) == [0.8, 0.99] and sets.default == 0.8
    for level in (0.8, 0.99):
        np.testing.assert_array_equal(sets.thresholds[level], expected.thresholds[level])
    default = _calibrate_conformal(stages["spec"], chosen, members, ensembles)
    assert sorted(default.thresholds) == [0.9, 0.95]
    for bad in ([1.2], [0.9, 0.9], []):
        d["evaluation"]["conformal"] = {"coverage": bad}
        with pytest.raises(ValueError, match="coverage"):
            parse_spec(d)
