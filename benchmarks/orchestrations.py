"""``medens run`` (one process) against ``python -m pipelines run`` (kfp.local) on the same preset.

Both orchestrations call the same stage functions (``medens.stages``) with the same seed, so they
must train the same member ids and produce the same leaderboard. Each runs as its own subprocess;
``medens run`` gets ``OMP_NUM_THREADS=1`` because kfp.local gives every task one thread on a
two-core machine (two train tasks at once), and a different thread count changes the float
summation order of convolutions. Recorded per preset: both wall times, the member ids, both
leaderboards (selection order), the selected system, and the largest absolute difference of any
selection score or test metric (the stated tolerance is 1e-4).

Run: ``.venv/bin/python benchmarks/orchestrations.py [--presets rbc-demo,seg-demo] [--epochs N]``
(about 25 minutes for both presets on two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_result

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


def _run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return round(time.perf_counter() - t, 1)


def compare(a_dir: Path, b_dir: Path) -> dict:
    a = json.loads((a_dir / "evaluation" / "metrics.json").read_text())
    b = json.loads((b_dir / "evaluation" / "metrics.json").read_text())
    worst, where = 0.0, None
    for name, sa in a["systems"].items():
        pairs = [("selection", a["selection"][name]["score"], b["selection"][name]["score"])]
        pairs += [(k, v, b["systems"][name]["metrics"].get(k)) for k, v in sa["metrics"].items()
                  if isinstance(v, float) and v == v]
        for key, va, vb in pairs:
            if va is None or vb is None:
                continue
            if abs(va - vb) > worst:
                worst, where = abs(va - vb), f"{name}.{key}"
    members_a = sorted(p.name for p in (a_dir / "members").iterdir())
    members_b = sorted(p.name for p in (b_dir / "members").iterdir())
    return {"members_kfp_local": members_a, "members_medens_run": members_b, "same_members": members_a == members_b,
            "leaderboard_kfp_local": a["leaderboard"], "leaderboard_medens_run": b["leaderboard"],
            "same_leaderboard": a["leaderboard"] == b["leaderboard"], "selected_kfp_local": a["selected"],
            "selected_medens_run": b["selected"], "max_abs_difference": worst, "max_difference_at": where,
            "within_tolerance": worst <= TOLERANCE, "gate_metric": a["gate_metric"],
            "selected_test_metric": a["systems"][a["selected"]]["metrics"][a["gate_metric"]],
            "best_on_test": a.get("best_on_test"), "skipped": a.get("skipped")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="rbc-demo,seg-demo")
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDENS_")}
    results = {}
    with tempfile.TemporaryDirectory(prefix="medens-orch-") as tmp:
        for preset in args.presets.split(","):
            extra = ["--epochs", str(args.epochs)] if args.epochs else []
            kfp_s = _run([sys.executable, "-m", "pipelines", "run", "--preset", preset, "--out", f"{tmp}/kfp",
                          "--run-id", preset, *extra], env)
            own = _run([str(Path(sys.executable).with_name("medens")), "run", "--preset", preset, "--out",
                        f"{tmp}/own/{preset}", *extra], {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            results[preset] = {"seconds_kfp_local": kfp_s, "seconds_medens_run": own,
                               **compare(Path(tmp) / "kfp" / preset, Path(tmp) / "own" / preset)}
            print(json.dumps({preset: results[preset]}, indent=2), flush=True)
    write_result("orchestrations", {"tolerance": TOLERANCE, "presets": results,
                                    "all_agree": all(r["same_members"] and r["same_leaderboard"] and r["within_tolerance"]
                                                     for r in results.values())})


if __name__ == "__main__":
    main()
