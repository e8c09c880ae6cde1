"""Every member of the rbc-demo preset (compact CNN, its five losses): macro-F1 and wall time.

Goal (issue 13): the demo is a task where the platform's choices matter: the member that validation
picks (highest validation macro-F1) scores a test macro-F1 between 0.70 and 0.90, each member
trains within 3 minutes on the 2-core CPU machine, and the members do not all score alike (the
spread of their test macro-F1 is reported). Uses the preset's own data and training settings.

Run: ``.venv/bin/python benchmarks/rbc_demo_train.py``
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from medens.config import load_spec  # noqa: E402
from medens.data import build_dataset  # noqa: E402
from medens.training import fit, predict_split  # noqa: E402
from medens.training.engine import quick_metrics  # noqa: E402


def main() -> None:
    spec = load_spec("rbc-demo")
    data = build_dataset(spec)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for comp in spec.losses:
            loss = comp.key
            t0 = time.perf_counter()
            res = fit("compact_cnn", comp, data, spec.training, Path(tmp) / loss, seed=spec.seed, progress=False)
            wall = time.perf_counter() - t0
            test = predict_split(res.path, data.test, device="cpu")
            m = quick_metrics("classification", test.probs, data.test.labels)
            runs[loss] = {"val_macro_f1": round(res.val_metrics["macro_f1"], 4),
                          "test_macro_f1": round(m["macro_f1"], 4), "test_accuracy": round(m["accuracy"], 4),
                          "test_mcc": round(m["mcc"], 4), "seconds": round(wall, 1), "epochs_run": len(res.history),
                          "best_epoch": res.best_epoch}
    picked = max(runs, key=lambda k: (runs[k]["val_macro_f1"], k))
    f1s = [r["test_macro_f1"] for r in runs.values()]
    write_result("rbc_demo_train", {
        "preset": "rbc-demo", "model": "compact_cnn", "runs": runs, "picked_on_validation": picked,
        "test_macro_f1_spread": round(max(f1s) - min(f1s), 4),
        "goal": "the validation-picked member's test macro-F1 in [0.70, 0.90]; each member within 180 s",
        "goal_met": 0.70 <= runs[picked]["test_macro_f1"] <= 0.90 and all(r["seconds"] <= 180 for r in runs.values()),
    })


if __name__ == "__main__":
    main()
