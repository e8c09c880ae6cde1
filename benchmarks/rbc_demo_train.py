"""The compact CNN on rbc-demo with focal and with ce: test macro-F1 and wall time.

Goal (issue 4): each reaches macro-F1 >= 0.80 on the test split within 3 minutes on the
2-core CPU machine. Uses the rbc-demo preset's own training settings.

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
        for loss in ("ce", "focal"):
            comp = next(c for c in spec.losses if c.name == loss)
            t0 = time.perf_counter()
            res = fit("compact_cnn", comp, data, spec.training, Path(tmp) / loss, seed=spec.seed, progress=False)
            wall = time.perf_counter() - t0
            test = predict_split(res.path, data.test, device="cpu")
            m = quick_metrics("classification", test.probs, data.test.labels)
            runs[loss] = {"test_macro_f1": round(m["macro_f1"], 4), "test_accuracy": round(m["accuracy"], 4),
                          "test_mcc": round(m["mcc"], 4), "seconds": round(wall, 1), "epochs_run": len(res.history),
                          "best_epoch": res.best_epoch,
                          "goal_met": m["macro_f1"] >= 0.80 and wall <= 180}
    write_result("rbc_demo_train", {"preset": "rbc-demo", "model": "compact_cnn", "runs": runs,
                                    "goal": "macro-F1 >= 0.80 on test within 180 s per loss"})


if __name__ == "__main__":
    main()
