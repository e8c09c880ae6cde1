"""A run killed after epoch k and resumed ends bit-for-bit where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

CHILD = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    from medens.config import TrainingSpec
    from medens.data import SplitData
    from medens.training import fit

    data_dir, out_dir, pause_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    spec = TrainingSpec(epochs=4, min_steps=0, batch_size=32, lr=3e-3, augment=True, sampler="balanced", patience=None,
                        plateau_patience=1)

    def on_epoch_end(row):
        if row["epoch"] == pause_at:
            print("PAUSED", flush=True)
            time.sleep(120)  # the parent test kills us here

    fit("compact_cnn", "ldam", SplitData.load(data_dir), spec, out_dir, seed=7, resume=resume, progress=False,
        on_epoch_end=on_epoch_end)
    print("DONE", flush=True)
""")


def run_child(script, data_dir, out_dir, pause_at, resume):
    return subprocess.Popen([sys.executable, str(script), str(data_dir), str(out_dir), str(pause_at),
                             "1" if resume else "0"], stdout=subprocess.PIPE, text=True)


def test_killed_run_resumes_bitwise_identically(cells32, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cells32.save(tmp_path / "data")

    full = run_child(script, tmp_path / "data", tmp_path / "full", 0, False)
    assert full.wait(timeout=300) == 0

    victim = run_child(script, tmp_path / "data", tmp_path / "resumed", 2, False)
    deadline = time.time() + 300
    line = ""
    while time.time() < deadline and "PAUSED" not in line:
        line = victim.stdout.readline()
        assert line or victim.poll() is None, "child ended before pausing"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    out = tmp_path / "resumed"
    assert (out / "checkpoint.pt").exists() and not (out / "model.json").exists()
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2

    resumed = run_child(script, tmp_path / "data", out, 0, True)
    assert resumed.wait(timeout=300) == 0

    a = torch.load(tmp_path / "full" / "weights.pt", weights_only=True)
    b = torch.load(out / "weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ha = json.loads((tmp_path / "full" / "model.json").read_text())["history"]
    hb = json.loads((out / "model.json").read_text())["history"]
    strip = ("train_seconds", "train_images_per_s", "seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in ha] == \
           [{k: v for k, v in r.items() if k not in strip} for r in hb]
    log = [json.loads(x)["epoch"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]
