"""Conformal prediction sets on real imbalanced images (elpv): per-class test coverage and set sizes.

The split is the real-data benchmark's (``benchmarks/real_data.py``): the 2,624 elpv images
written as an image folder and split by medens' data stage (``prepare_data``: stratified
train/val/test 0.6/0.15/0.25, seed 0, 64 px grey). Three quick models, nothing heavy, from the
most to the least accurate: ``hog_svm`` (the benchmark's HOG + RBF SVC baseline, balanced class
weights, Platt probabilities), ``hog_logreg`` (HOG features as ``real_data.hog_features``,
standardised, multinomial logistic regression with balanced class weights) and ``pixels_logreg``
(the same on the raw 16 px image), each fitted on the training split only. Their validation probabilities calibrate (the validation
split fitted nothing here), the test split is scored once:

- ``mondrian`` (class-conditional) and ``marginal`` split conformal, ``aps`` and ``raps``
  (``lam`` 0.01, ``k_reg`` 1), at 90% and 95% (:mod:`medens.ensemble.conformal`);
- per class: calibration n, test n, empirical test coverage, mean set size, and the finite-sample
  floor a correct method stays above with probability 0.999 (the 0.1% quantile of the
  Beta-Binomial law of the covered count, as tests/ensemble/test_conformal.py states).

Run: ``.venv/bin/python benchmarks/conformal.py [--workdir DIR]``; results in
``benchmarks/results/conformal.json`` (about two minutes on one core).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import write_result  # noqa: E402
from real_data import build_spec, default_spec, hog_features  # noqa: E402
from real_datasets import CLASS_NAMES, SEED, class_index, load_elpv, write_image_folder  # noqa: E402

LEVELS = (0.9, 0.95)


def split_elpv(work: Path) -> Any:
    """The real-data benchmark's elpv split (medens' data stage, 64 px), as a ``SplitData``."""
    from medens.data.types import SplitData
    from medens.stages import prepare_data

    images, probs, _ = load_elpv()
    labels = class_index(probs)
    folder = work / "elpv"
    write_image_folder(images, labels, folder, names=[f"cell{i + 1:04d}" for i in range(len(labels))],
                       class_names=list(CLASS_NAMES))
    spec = build_spec(default_spec(), folder, 64, False, seed=SEED)
    prepare_data(spec, work / "data")
    return SplitData.load(work / "data")


def features(kind: str, images: np.ndarray) -> np.ndarray:
    imgs = np.asarray(images)[..., 0] if np.asarray(images).ndim == 4 else np.asarray(images)
    if kind == "hog":
        return hog_features(imgs)
    n, h, w = imgs.shape  # 64 px -> 16 px by 4x4 block means
    return imgs.reshape(n, 16, h // 16, 16, w // 16).mean(axis=(2, 4)).reshape(n, -1).astype(np.float64)


def fit_model(kind: str, data: Any) -> dict[str, np.ndarray]:
    """Validation and test probabilities of a model fitted on the training split only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "hog_svm":  # the real-data benchmark's HOG + RBF SVC baseline, balanced
        import warnings

        from sklearn.svm import SVC

        clf = make_pipeline(StandardScaler(), SVC(probability=True, class_weight="balanced", random_state=SEED))
        with warnings.catch_warnings():  # scikit-learn 1.9 deprecates probability=True
            warnings.filterwarnings("ignore", category=FutureWarning)
            clf.fit(features("hog", data.train.images), data.train.labels)
        return {s: clf.predict_proba(features("hog", data.split(s).images)) for s in ("val", "test")}
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05 if kind == "hog" else 0.5, max_iter=2000,
                                                             class_weight="balanced"))
    clf.fit(features(kind, data.train.images), data.train.labels)
    return {s: clf.predict_proba(features(kind, data.split(s).images)) for s in ("val", "test")}


def evaluate(probs: dict[str, np.ndarray], y_val: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Every (method, score) at every level: per-class coverage, set size and finite-sample floor."""
    from scipy.stats import betabinom

    from medens.ensemble.conformal import calibrate, coverage_table, finite_sample_rank

    out: dict[str, Any] = {"accuracy": float(np.mean(probs["test"].argmax(1) == y_test)),
                           "balanced_accuracy": float(np.mean([np.mean(probs["test"][y_test == k].argmax(1) == k)
                                                               for k in range(len(CLASS_NAMES))]))}
    for method in ("mondrian", "marginal"):
        for score in ("aps", "raps"):
            sets = calibrate(probs["val"], y_val, list(CLASS_NAMES), levels=LEVELS, method=method, score=score)
            table = coverage_table(sets, probs["test"], y_test)
            for lv, entry in table.items():
                for k, name in enumerate(CLASS_NAMES):
                    n, m = sets.n_per_class[k], entry["per_class"][name]["n"]
                    r = finite_sample_rank(n, float(lv))
                    floor = 0.0 if r > n else float(betabinom.ppf(0.001, m, r, n + 1 - r) / m)
                    entry["per_class"][name].update(calibration_n=n, floor=floor,
                                                    meets_floor=entry["per_class"][name]["coverage"] >= floor,
                                                    threshold=float(sets.thresholds[float(lv)][k]))
            out[f"{method}_{score}"] = table
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="where the image folder and dataset go (default: a temp dir)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medens-conformal-"))
    try:
        data = split_elpv(work)
        y_val, y_test = data.val.labels, data.test.labels
        results = {}
        for kind in ("hog_svm", "hog", "pixels"):
            t = time.perf_counter()
            probs = fit_model(kind, data)
            name = kind if kind == "hog_svm" else f"{kind}_logreg"
            results[name] = {**evaluate(probs, y_val, y_test), "seconds": time.perf_counter() - t}
            print(f"[{name}] done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    counts = {s: np.bincount(data.split(s).labels, minlength=len(CLASS_NAMES)).tolist()
              for s in ("train", "val", "test")}
    write_result("conformal", {
        "dataset": "elpv (2,624 solar-cell images; classes p000/p033/p067/p100), real-data benchmark split, 64 px",
        "split_counts": counts, "levels": list(LEVELS), "calibration": "validation split (fitted nothing)",
        "raps_params": {"lam": 0.01, "k_reg": 1}, "models": results, "seconds": time.perf_counter() - t0})


if __name__ == "__main__":
    main()
