"""The embedded local run: a tiny spec through kfp.local end to end (the real pipeline functions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "pipelines" / "tiny.yaml"


def run_pipelines(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDENS_")}
    proc = subprocess.run([sys.executable, "-m", "pipelines", "run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_local_thread_policy(monkeypatch):
    from pipelines.local import _threaded_subprocess, torch_threads

    loop = ["sh", "-c", "...", '{"outputs": {"outputFile": "/r/kfp/p/for-loop-1-iteration-0/train/'
                               'executor_output.json"}}']
    # the ensemble task reads the loop's outputs but runs alone
    alone = ["sh", "-c", "...", '{"inputs": {"uri": "/r/kfp/p/for-loop-1-iteration-0/train/model"}, '
                                '"outputs": {"outputFile": "/r/kfp/p/ensemble/executor_output.json"}}']
    assert torch_threads(loop, cpus=8) == 4 and torch_threads(alone, cpus=8) == 7
    assert torch_threads(loop, cpus=2) == 1 and torch_threads(alone, cpus=2) == 1
    assert torch_threads(loop, cpus=1) == 1 and torch_threads(alone, cpus=1) == 1
    seen = []
    wrapped = _threaded_subprocess(lambda full_command, env_vars: seen.append(env_vars) or 0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    wrapped(loop, {"A": "1"})
    assert seen[-1]["A"] == "1" and seen[-1]["OMP_NUM_THREADS"] == str(torch_threads(loop))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    wrapped(alone, None)
    assert "OMP_NUM_THREADS" not in seen[-1]


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = run_pipelines("--spec", str(TINY), "--out", str(out), "--run-id", "t1")
    return out, proc.stdout


def test_run_directory_layout(classification_run):
    out, _ = classification_run
    run = out / "t1"
    assert (out / "latest").is_symlink() and (out / "latest").resolve() == run.resolve()
    for f in ("spec.yaml", "pipeline.yaml", "run.log", "summary.json", "data/dataset.json", "evaluation/metrics.json",
              "evaluation/report.html", "evaluation/report.md", "best/ensemble.json"):
        assert (run / f).is_file(), f
    assert sorted(p.name for p in (run / "members").iterdir()) == ["compact_cnn__ce", "compact_cnn__focal"]
    for m in (run / "members").iterdir():
        assert (m / "model.json").is_file() and (m / "predictions" / "test.npz").is_file()
    ensembles = sorted(p.name for p in (run / "ensembles").iterdir() if (p / "ensemble.json").is_file())
    assert ensembles == ["fusion-top2", "mean-top2", "weighted-top2"]  # prediction-level and model-level
    # links are relative, so the run directory can move
    assert not os.path.isabs(os.readlink(run / "evaluation"))


def test_registered_artifact_loads(classification_run):
    from medens.ensemble.artifact import load_ensemble

    out, _ = classification_run
    run = out / "t1"
    summary = json.loads((run / "summary.json").read_text())
    registered = run / "registry" / "tiny" / "versions" / "t1"
    assert summary["uri"] == str(registered)
    ens = load_ensemble(registered)  # every checksum verified
    assert ens.manifest["evaluation"]["system"] == summary["selected"]
    champion = json.loads((run / "registry" / "tiny" / "champion" / "champion.json").read_text())
    assert champion["version"] == "t1" and champion["artifact"] == "tiny/versions/t1"
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["selected"] == summary["selected"] and metrics["n_test"] == 60
    assert set(metrics["systems"]) == {"compact_cnn__ce", "compact_cnn__focal", "fusion-top2", "mean-top2",
                                       "weighted-top2"}


def test_progress_and_leaderboard_printed(classification_run):
    out, stdout = classification_run
    assert "Executing task 'train'" in stdout.replace("\x1b[96m", "").replace("\x1b[0m", "")
    assert "compact_cnn__focal: best epoch" in stdout  # the components' own progress lines
    assert "Got executor_input" not in stdout and '"parameterValues"' not in stdout  # kfp internals stay in run.log
    board = stdout[stdout.index("Leaderboard (ordered by validation mcc, the selection score; test metrics beside it):"):]
    summary = json.loads((out / "t1" / "summary.json").read_text())
    assert f"selected: {summary['selected']} (highest validation mcc" in board
    for system in ("compact_cnn__ce", "compact_cnn__focal", "fusion-top2", "mean-top2", "weighted-top2"):
        assert system in board
    assert "ECE intervals are for the true calibration error" in board  # the leaderboard says how to read them
    assert f"medens serve --model-dir {out / 't1' / 'registry' / 'tiny' / 'versions' / 't1'}" in stdout
    assert "Got executor_input" in (out / "t1" / "run.log").read_text()


def test_existing_run_directory_is_refused(classification_run):
    out, _ = classification_run
    proc = subprocess.run([sys.executable, "-m", "pipelines", "run", "--spec", str(TINY), "--out", str(out),
                           "--run-id", "t1"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "already exists and is not empty" in proc.stderr


def test_fingerprint_register_and_report_tasks_run_without_torch(classification_run, tmp_path):
    """The light tasks of a run (one kfp container each) import neither torch nor MONAI: each
    would otherwise spend about 6 s of its start importing them (medens.stages loads lazily)."""
    out, _ = classification_run
    run = out / "t1"
    code = f"""
import json, sys
from medens.stages import export_report, register_artifact, source_fingerprint, spec_from_text
spec = spec_from_text(open({str(run / "spec.yaml")!r}).read())
fp = source_fingerprint(spec)
reg = register_artifact({str(run / "best")!r}, {str(tmp_path / "store")!r}, "tiny", version="v1")
board = export_report({str(run / "evaluation")!r}, {str(tmp_path / "r.html")!r}, {str(tmp_path / "r.md")!r})
print(json.dumps({{"heavy": sorted(m for m in ("torch", "monai", "torchvision", "timm") if m in sys.modules),
                  "fp": fp, "version": reg["version"], "board": board}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["heavy"] == []
    assert got["version"] == "v1" and (tmp_path / "store" / "tiny" / "versions" / "v1" / "ensemble.json").is_file()
    assert got["fp"] == json.loads((run / "data" / "dataset.json").read_text())["info"]["source"]
    assert "compact_cnn__focal" in got["board"] and "ECE intervals are for the true calibration error" in got["board"]
    assert (tmp_path / "r.html").read_bytes() == (run / "evaluation" / "report.html").read_bytes()


def test_stages_resolve_every_exported_name_and_refuse_others():
    import medens.stages as stages

    assert sorted(stages._HOME) == sorted(stages.__all__)  # the lazy table and the exports are one list
    assert all(callable(getattr(stages, n)) or isinstance(getattr(stages, n), str) for n in stages.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stages.nope  # noqa: B018


@pytest.mark.slow
def test_retraining_promotes_a_challenger_that_beats_a_planted_champion(classification_run, tmp_path):
    """dsl.If on the gate's output through kfp.local: a useless champion is replaced and registered."""
    import shutil

    import torch

    from medens.ensemble.artifact import write_ensemble
    from medens.models.artifact import read_manifest, save_state_dict, write_manifest
    from medens.stages import register_artifact

    out, _ = classification_run
    bad = tmp_path / "bad"
    shutil.copytree((out / "t1" / "members" / "compact_cnn__ce").resolve(), bad)
    state = torch.load(bad / "weights.pt", weights_only=True)
    save_state_dict(bad / "weights.pt", {k: torch.zeros_like(v) for k, v in state.items()})
    manifest = read_manifest(bad)
    manifest.pop("files")
    write_manifest(bad, manifest)
    store = tmp_path / "registry"
    register_artifact(write_ensemble(tmp_path / "bad-ens", name="bad", member_dirs={"bad": bad}, combiner=None),
                      str(store), "tiny", version="planted")

    proc = run_pipelines("--spec", str(TINY), "--out", str(tmp_path / "runs"), "--run-id", "r1",
                         "--pipeline", "retraining", "--store", str(store))
    assert "challenger wins" in proc.stdout
    assert "champion gate: challenger promoted" in proc.stdout
    champion = json.loads((store / "tiny" / "champion" / "champion.json").read_text())
    assert champion["version"] == "r1"
    assert (store / "tiny" / "versions" / "r1" / "ensemble.json").is_file()
    summary = json.loads((tmp_path / "runs" / "r1" / "summary.json").read_text())
    assert summary["promoted"] is True and summary["uri"] == str(store / "tiny" / "versions" / "r1")


# ---------------------------------------------------------------- one orchestration

TINY_SEG = ROOT / "tests" / "pipelines" / "tiny-seg.yaml"
# Both orchestrations call the same stage functions with the same seed; torch runs on one thread in
# both here (the test's autouse fixture, and kfp.local's per-task OMP_NUM_THREADS on two cores), so
# the figures agree to float rounding. The stated tolerance allows a different BLAS path elsewhere.
TOLERANCE = 1e-4


def _compare_runs(kfp_run, in_process):
    """Same member ids, same leaderboard order, same selection scores and test metrics."""
    a = json.loads((kfp_run / "evaluation" / "metrics.json").read_text())
    b = json.loads((in_process / "evaluation" / "metrics.json").read_text())
    assert sorted(p.name for p in (kfp_run / "members").iterdir()) == \
        sorted(p.name for p in (in_process / "members").iterdir())
    assert a["leaderboard"] == b["leaderboard"] and a["selected"] == b["selected"]
    assert a["skipped"] == b["skipped"]
    for name in a["systems"]:
        sa, sb = a["selection"][name]["score"], b["selection"][name]["score"]
        assert (sa is None) == (sb is None) and (sa is None or abs(sa - sb) <= TOLERANCE), name
        for metric, va in a["systems"][name]["metrics"].items():
            vb = b["systems"][name]["metrics"][metric]
            if isinstance(va, float) and va == va:
                assert abs(va - vb) <= TOLERANCE, (name, metric, va, vb)
    return a


def test_medens_run_and_kfp_local_agree_classification(classification_run, tmp_path):
    from medens.config import load_spec
    from medens.stages import run_experiment

    out, _ = classification_run
    run_experiment(load_spec(str(TINY)), tmp_path / "t1", log=lambda *a: None)
    a = _compare_runs(out / "t1", tmp_path / "t1")
    assert set(a["systems"]) == {"compact_cnn__ce", "compact_cnn__focal", "fusion-top2", "mean-top2", "weighted-top2"}


@pytest.mark.slow
def test_medens_run_and_kfp_local_agree_segmentation(tmp_path):
    from medens.config import load_spec
    from medens.stages import run_experiment

    run_pipelines("--spec", str(TINY_SEG), "--out", str(tmp_path / "kfp"), "--run-id", "s1")
    run_experiment(load_spec(str(TINY_SEG)), tmp_path / "s1", log=lambda *a: None)
    a = _compare_runs(tmp_path / "kfp" / "s1", tmp_path / "s1")
    assert sorted(a["systems"]) == ["basic_unet__dice_ce", "basic_unet__dice_ce__sampling", "basic_unet__exponential",
                                    "basic_unet__exponential__sampling", "majority", "weighted"]


# ---------------------------------------------------------------- retraining sees the data at the URI now

RETRAIN = """
name: retrain
task: classification
seed: 0
data: {source: image_folder, image_size: 32, channels: 3, split: {train: 0.6, val: 0.2, test: 0.2}}
models: [compact_cnn]
losses: [ce]
training: {batch_size: 32, epochs: 2, min_steps: 0, lr: 0.003, patience: null, plateau_patience: null}
ensemble: {methods: [mean], top_k: [2], model_level: false}
evaluation: {bootstrap: 100, gradcam: false}
"""


@pytest.mark.slow
def test_retraining_twice_on_replaced_data_at_the_same_uri(tmp_path):
    import shutil

    from medens.data.export import write_synthetic
    from medens.stages import registry_history

    (tmp_path / "spec.yaml").write_text(RETRAIN)
    incoming, store = tmp_path / "incoming", tmp_path / "registry"
    batches = {"r1": {"codocyte": 30, "hypochromia": 30, "normal": 60},
               "r2": {"codocyte": 40, "hypochromia": 45, "normal": 90}}
    seen = {}
    for i, (run_id, counts) in enumerate(batches.items()):
        shutil.rmtree(incoming, ignore_errors=True)  # new data replaces the old at the same URI
        write_synthetic("cells", incoming, size=32, counts=counts, seed=10 + i)
        run_pipelines("--spec", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "runs"), "--run-id", run_id,
                      "--pipeline", "retraining", "--store", str(store), "--data-uri", str(incoming))
        run = tmp_path / "runs" / run_id
        dataset = json.loads((run / "data" / "dataset.json").read_text())
        member = json.loads((run / "members" / "compact_cnn__ce" / "model.json").read_text())
        fp = dataset["info"]["source"]
        assert fp["kind"] == "folder" and fp["n_files"] == sum(counts.values())
        assert member["lineage"]["data_fingerprint"] == fp["sha256"]  # the member names its data
        # the member was trained on this run's images: its class counts are this dataset's training split
        import numpy as np

        train_labels = np.load(run / "data" / "train.npz")["labels"]
        assert member["class_counts"] == np.bincount(train_labels, minlength=3).tolist()
        seen[run_id] = (fp["sha256"], member["class_counts"], sum(dataset_split_sizes(run).values()))
    assert seen["r1"][0] != seen["r2"][0]
    assert seen["r1"][2] == 120 and seen["r2"][2] == 175
    assert sum(seen["r1"][1]) < sum(seen["r2"][1])
    history = registry_history(str(store), "retrain")
    assert len(history) == 2
    assert [h.challenger_version for h in history] == ["r1", "r2"]
    assert [h.data_fingerprint for h in history] == [seen["r1"][0], seen["r2"][0]]
    assert history[0].promote is True and history[0].champion_version is None
    assert history[1].champion_version == "r1" and history[1].p_value is not None


def dataset_split_sizes(run):
    import numpy as np

    return {s: len(np.load(run / "data" / f"{s}.npz")["labels"]) for s in ("train", "val", "test")}
