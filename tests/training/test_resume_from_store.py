"""A killed train task resumes from the checkpoint it published to the ArtifactStore.

A retried pod starts with an empty output folder (the killed one never uploaded its own), so
the only checkpoint it can find is the one published to ``<checkpoint uri>/<member id>`` while
training ran. These tests kill a real ``medens train`` process, rerun it with a NEW empty
``--out`` against the same store, and require the weights of an uninterrupted run bit for bit:
the checkpoint carries model, optimizer, scheduler, EMA, best-epoch state and every RNG state, and
on CPU with one thread the same operations in the same order give the same bits.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from medens.cli import main as cli_main
from medens.config import ExperimentSpec
from medens.stages.train import checkpoint_location
from medens.storage import ArtifactStore
from medens.training import checkpoints as ck
from medens.training.checkpoints import StoreCheckpoints, parse_frequency

MEMBER = "compact_cnn__ce"
EPOCHS = 5
# balanced sampler (sampler RNG), flips (augmentation RNG), plateau schedule, EMA: all must come back
SPEC = {"name": "ckpt", "task": "classification", "seed": 7, "models": ["compact_cnn"], "losses": ["ce"],
        "training": {"epochs": EPOCHS, "min_steps": 0, "batch_size": 32, "lr": 3e-3, "augment": "flips", "sampler": "balanced",
                     "patience": None, "plateau_patience": 1, "ema_decay": 0.9, "device": "cpu"}}
# Slows the victim down after each publish, so the kill lands while it trains, not after it ended;
# it changes no number (no RNG is touched), and the reruns do not load it.
THROTTLE = """
import sys, time, torch
torch.set_num_threads(1)
from medens.training.checkpoints import StoreCheckpoints
_publish = StoreCheckpoints.publish
def publish(self, out, epoch, files):
    uri = _publish(self, out, epoch, files)
    time.sleep(1.0)
    return uri
StoreCheckpoints.publish = publish
from medens.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, cells32):
    root = tmp_path_factory.mktemp("resume_store")
    cells32.save(root / "data")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    return root


def train_args(root: Path, out: Path, checkpoint_uri: str | None = None) -> list[str]:
    args = ["train", "--spec", str(root / "spec.yaml"), "--data", str(root / "data"), "--out", str(out)]
    return args + (["--checkpoint-uri", checkpoint_uri] if checkpoint_uri else [])


@pytest.fixture(scope="module")
def reference(setup) -> Path:
    """The uninterrupted run (no store), in this process: ``medens train`` as the CLI runs it."""
    out = setup / "reference"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the children; a module fixture starts before conftest's per-test one
    try:
        assert cli_main(train_args(setup, out)) == 0
    finally:
        torch.set_num_threads(n)
    # the kept weights come from an epoch after every interruption below, so they prove the resume
    assert json.loads((out / "model.json").read_text())["best_epoch"] > 3
    return out


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = torch.load(a / "weights.pt", weights_only=True), torch.load(b / "weights.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    strip = ("train_seconds", "train_images_per_s", "seconds")
    ha, hb = (json.loads((p / "model.json").read_text()) for p in (a, b))
    assert [{k: v for k, v in r.items() if k not in strip} for r in ha["history"]] == \
           [{k: v for k, v in r.items() if k not in strip} for r in hb["history"]]
    assert ha["best_epoch"] == hb["best_epoch"] and ha["val_metrics"] == hb["val_metrics"]
    assert [json.loads(x)["epoch"] for x in (b / "train_log.jsonl").read_text().splitlines()] == \
           list(range(1, EPOCHS + 1))


def published_rows(uri: str, name: str, tmp: Path, endpoint: str | None = None) -> list[dict]:
    """The training log rows of a published checkpoint (its timings prove a later run reused them)."""
    got = ArtifactStore.from_uri(uri, endpoint=endpoint).download(name, tmp / "published")
    return [json.loads(x) for x in (got / "train_log.jsonl").read_text().splitlines()]


def assert_resumed(rows: list[dict], out: Path) -> None:
    """Epochs 1..k of the finished run are the published ones, timings included: they were restored,
    not trained again (a deterministic run from scratch would give the same weights)."""
    history = json.loads((out / "model.json").read_text())["history"]
    assert rows and history[:len(rows)] == rows


def test_cli_option_exists():
    from medens.cli import build_parser

    args = build_parser().parse_args(["train", "--spec", "x.yaml", "--checkpoint-uri", "s3://b/p",
                                      "--checkpoint-every", "600s"])
    assert (args.checkpoint_uri, args.checkpoint_every) == ("s3://b/p", "600s")


def test_killed_process_resumes_from_the_store_with_a_new_out_dir(setup, reference, tmp_path):
    store_dir = tmp_path / "store" / "ckpt" / "checkpoints" / "run-1"
    member_dir = store_dir / MEMBER
    script = tmp_path / "victim.py"
    script.write_text(THROTTLE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    victim = subprocess.Popen([sys.executable, str(script), *train_args(setup, tmp_path / "pod-1", str(store_dir))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (member_dir / "epoch-0002" / "STORE_MANIFEST.json").is_file():
            assert victim.poll() is None, f"the victim ended before publishing epoch 2: {victim.stderr.read()}"
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "pod-1" / "model.json").exists()
    published = ArtifactStore.from_uri(str(store_dir)).list(f"{MEMBER}/")
    # older ones are deleted after the newer one is complete: the kill may land in between
    assert 1 <= len(published) <= 2
    assert 2 <= int(published[-1].rsplit("-", 1)[1]) < EPOCHS
    rows = published_rows(str(store_dir), published[-1], tmp_path)

    # the retried pod: a new, empty output folder, the same checkpoint location
    pod2 = tmp_path / "pod-2"
    retry = subprocess.run([sys.executable, "-m", "medens.cli", *train_args(setup, pod2, str(store_dir))],
                           env=env, capture_output=True, text=True, timeout=300)
    assert retry.returncode == 0, retry.stderr
    assert_same_run(reference, pod2)
    assert_resumed(rows, pod2)
    assert not member_dir.exists()  # a finished member leaves no checkpoint
    assert not (pod2 / "checkpoint.pt").exists() and not list(pod2.glob(".checkpoint-*"))


class Crash(Exception):
    pass


def test_s3_checkpoint_resumes_after_a_crash(setup, reference, tmp_path, s3_endpoint, monkeypatch):
    # moto accepts any credentials; these are placeholders, not secrets
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("MINIO_ENDPOINT", s3_endpoint)
    uri = "s3://medens-ckpt/models/ckpt/checkpoints/run-s3"
    publish = StoreCheckpoints.publish

    def crash_after_epoch_3(self, out, epoch, files):
        got = publish(self, out, epoch, files)
        if epoch == 3:
            raise Crash("the pod dies right after its epoch 3 upload")
        return got

    monkeypatch.setattr(StoreCheckpoints, "publish", crash_after_epoch_3)
    with pytest.raises(Crash):
        cli_main(train_args(setup, tmp_path / "pod-1", uri))
    store = ArtifactStore.from_uri(uri, endpoint=s3_endpoint)
    assert store.list(f"{MEMBER}/") == [f"{MEMBER}/epoch-0003"]
    rows = published_rows(uri, f"{MEMBER}/epoch-0003", tmp_path, s3_endpoint)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    monkeypatch.setattr(StoreCheckpoints, "publish", publish)

    assert cli_main(train_args(setup, tmp_path / "pod-2", uri)) == 0
    assert_same_run(reference, tmp_path / "pod-2")
    assert_resumed(rows, tmp_path / "pod-2")
    assert store.list(f"{MEMBER}/") == [] and store.object_listing(MEMBER) == []


def test_a_new_run_does_not_pick_up_another_runs_checkpoint(setup, tmp_path):
    spec = ExperimentSpec.model_validate({**SPEC, "store": {"uri": str(tmp_path / "registry")}})
    run_a = checkpoint_location(spec, run_id="run-a")
    run_b = checkpoint_location(spec, run_id="run-b")
    assert run_a == f"{tmp_path}/registry/ckpt/checkpoints/run-a"
    assert checkpoint_location(spec, store_uri="s3://b/p/", model_name="cells", run_id="r1") == \
        "s3://b/p/cells/checkpoints/r1"
    assert checkpoint_location(spec, checkpoint_uri="s3://b/x/", run_id="r1") == "s3://b/x"
    assert checkpoint_location(spec) == ""
    # run A left a checkpoint behind that cannot load: run B must not even look at it
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "checkpoint.pt").write_bytes(b"run A's, not a torch file")
    StoreCheckpoints(run_a, MEMBER).publish(planted, 3, ["checkpoint.pt"])
    out = tmp_path / "run-b-pod"
    assert cli_main([*train_args(setup, out, run_b), "--epochs", "1"]) == 0
    assert json.loads((out / "model.json").read_text())["history"][0]["epoch"] == 1
    assert StoreCheckpoints(run_a, MEMBER).epochs() == [3]


def test_a_corrupted_checkpoint_is_refused_naming_the_file(setup, tmp_path):
    uri = str(tmp_path / "ck")
    src = tmp_path / "src"
    src.mkdir()
    (src / "checkpoint.pt").write_bytes(b"x" * 100)
    (src / "train_log.jsonl").write_text("{}\n")
    StoreCheckpoints(uri, MEMBER).publish(src, 2, ["checkpoint.pt", "train_log.jsonl"])
    (tmp_path / "ck" / MEMBER / "epoch-0002" / "checkpoint.pt").write_bytes(b"y" * 100)
    out = tmp_path / "pod"
    with pytest.raises(ValueError, match=r"checkpoint\.pt does not match its sha256") as e:
        from medens.data import SplitData
        from medens.training import fit

        fit("compact_cnn", "ce", SplitData.load(setup / "data"), None, out, resume=True,
            checkpoint_store=StoreCheckpoints(uri, MEMBER))
    assert f"{uri}/{MEMBER}/epoch-0002 is damaged" in str(e.value) and "Delete" in str(e.value)
    assert not (out / "checkpoint.pt").exists() and not list(out.glob(".checkpoint-*"))


def test_publishing_frequency_and_only_the_newest_kept(tmp_path, monkeypatch):
    assert parse_frequency(None) == (1, None) and parse_frequency("3") == (3, None)
    assert parse_frequency("600s") == (0, 600.0)
    for bad in ("0", "-1s", "often"):
        with pytest.raises(ValueError, match="checkpoint frequency"):
            parse_frequency(bad)
    every2 = StoreCheckpoints(str(tmp_path / "s"), MEMBER, every_epochs=2)
    src = tmp_path / "src"
    src.mkdir()
    (src / "checkpoint.pt").write_bytes(b"1")
    published = [e for e in range(1, 7) if every2.due(e) and every2.publish(src, e, ["checkpoint.pt"])]
    assert published == [2, 4, 6] and every2.epochs() == [6]
    # an upload cut short (no manifest) is not a checkpoint, and the next publish removes it
    (tmp_path / "s" / MEMBER / "epoch-0007").mkdir()
    assert every2.epochs() == [6]
    every2.publish(src, 8, ["checkpoint.pt"])
    assert sorted(p.name for p in (tmp_path / "s" / MEMBER).iterdir()) == ["epoch-0008"]
    clock = [100.0]
    monkeypatch.setattr(ck.time, "monotonic", lambda: clock[0])
    timed = StoreCheckpoints(str(tmp_path / "t"), MEMBER, every_epochs=0, every_seconds=60)
    assert not timed.due(1)
    clock[0] += 61
    assert timed.due(2)
