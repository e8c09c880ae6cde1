"""Content drift at the endpoint: the MMD p-value of embedding windows, beside the intensity PSI.

Synthetic red-cell crops (``medens.data.synthetic.make_cells``, 32 px). The reference is 300
"validation" cells of the training class mix (20% codocyte, 20% hypochromia, 60% normal),
embedded by the ensemble and stored as the artifact's ``drift_reference.npz``. Measured, for two
embedders:

- ``random``: two compact CNNs with fixed random weights (seeds 1, 2), mean-combined;
- ``trained``: the best system of a small pipeline run (compact CNN members trained on the same
  generator's cells by ``medens.stages``, the reference packaged by ``evaluate_systems``).

In-distribution: ``WINDOWS`` windows of 200 cells drawn from 2000 fresh cells of the training mix
(another seed): the fraction with p above 0.05 (acceptance: at least 95%) and below 0.01 (the
alert), and the largest PSI. Shifted, at matched mean intensity (each image scaled so the window's
mean equals the reference's): a texture (vertical stripes, period 4 px, +-12 levels) on fresh
training-mix cells, and other class mixes (normal only; codocyte only; abnormal only). Every
test uses 200 permutations.

Run: ``python benchmarks/drift.py`` (about 2.5 minutes on 2 cores); writes ``results/drift.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

WINDOW, WINDOWS, PERMUTATIONS = 200, 100, 200
MIX = {"codocyte": 60, "hypochromia": 60, "normal": 180}
SHIFTS = {"normal_only": {"normal": 200}, "codocyte_only": {"codocyte": 200},
          "abnormal_only": {"codocyte": 100, "hypochromia": 100}}


def _embed(predictor, images: np.ndarray) -> np.ndarray:
    out = []
    for s in range(0, len(images), 200):
        rows = predictor.forward(predictor.prepare(list(images[s:s + 200])))
        out.append(np.stack([r["embedding"] for r in rows]))
    return np.concatenate(out)


def _matched(images: np.ndarray, mean: float) -> np.ndarray:
    return np.clip(np.rint(images.astype(np.float64) * mean / images.mean()), 0, 255).astype(np.uint8)


def _texture(images: np.ndarray, amplitude: float = 12.0) -> np.ndarray:
    stripes = amplitude * np.sign(np.sin(2 * np.pi * (np.arange(images.shape[2]) + 0.5) / 4))
    return np.clip(np.rint(images + stripes[None, None, :, None]), 0, 255).astype(np.uint8)


def measure(artifact: Path, reference_images: np.ndarray) -> dict:
    """In-distribution window rates and shifted-window p-values for one packaged artifact."""
    from medens.data.drift import intensity_counts, intensity_reference, psi
    from medens.data.synthetic import make_cells
    from medens.serving.predictor import EnsemblePredictor

    p = EnsemblePredictor.load(artifact)
    ref = p.embedding_reference
    hist = np.asarray(intensity_reference(reference_images)["fractions"])
    mean = float(reference_images.mean())
    fresh, _, _ = make_cells({k: 2000 * v // 300 for k, v in MIX.items()}, size=32, seed=12)
    emb = _embed(p, fresh)
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    windows = [rng.choice(len(fresh), WINDOW, replace=False) for _ in range(WINDOWS)]
    pv = np.array([ref.test(emb[w], PERMUTATIONS, rng)[1] for w in windows])
    seconds_per_test = (time.perf_counter() - t) / WINDOWS
    out = {"reference": {"n": len(ref.embeddings), "dims": int(ref.embeddings.shape[1]), "sigma2": ref.sigma2},
           "in_distribution": {"windows": WINDOWS, "rate_p_above_0.05": float(np.mean(pv > 0.05)),
                               "rate_p_below_0.01": float(np.mean(pv < 0.01)), "median_p": float(np.median(pv)),
                               "max_psi": float(max(psi(hist, intensity_counts(fresh[w])) for w in windows))},
           "seconds_per_test": round(seconds_per_test, 4), "shifted": {}}
    shifted = {"texture": _matched(_texture(fresh[windows[0]]), mean)}
    for i, (name, counts) in enumerate(SHIFTS.items()):
        shifted[name] = _matched(make_cells(counts, size=32, seed=20 + i)[0], mean)
    for name, images in shifted.items():
        mmd, pvalue = ref.test(_embed(p, images), PERMUTATIONS, rng)
        out["shifted"][name] = {"p_value": pvalue, "mmd2": mmd, "psi": psi(hist, intensity_counts(images)),
                                "mean_intensity": float(images.mean())}
    return out


def random_artifact(root: Path) -> tuple[Path, np.ndarray]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serving"))
    from _planted import planted_ensemble

    from medens.data.synthetic import make_cells
    from medens.ensemble.drift_reference import write_drift_reference
    from medens.ensemble.prediction import FORMAT

    combiner = {"format": FORMAT, "kind": "prediction", "method": "mean", "member_ids": ["m1", "m2"], "n_classes": 3,
                "class_names": None, "options": {}, "params": {"weights": [0.5, 0.5]}}
    ens = planted_ensemble(root, combiner)
    val, labels, _ = make_cells(MIX, size=32, seed=1)
    write_drift_reference(ens, val, labels)
    return ens, val


TRAINED = {
    "name": "drift-bench", "task": "classification",
    "data": {"source": "synthetic_cells", "image_size": 32,
             "synthetic": {"counts": {"codocyte": 300, "hypochromia": 300, "normal": 900}}},
    "models": ["compact_cnn"], "losses": ["ce", "weighted_ce"],
    "training": {"epochs": 6, "batch_size": 64, "lr": 0.003, "patience": None, "plateau_patience": None},
    "ensemble": {"methods": ["mean"], "top_k": [2]},
    "evaluation": {"bootstrap": 100, "gradcam": False},
}


def trained_artifact(root: Path) -> tuple[Path, np.ndarray, dict]:
    from medens.config import parse_spec
    from medens.data.types import SplitData
    from medens.stages import build_ensembles, prepare_data, train_member, training_grid
    from medens.stages.evaluate import evaluate_systems

    spec = parse_spec(TRAINED)
    prepare_data(spec, root / "data")
    paths = [train_member(spec, root / "data", m, root / "m" / str(i), progress=False)
             for i, m in enumerate(training_grid(spec))]
    build_ensembles(spec, root / "data", paths, root / "ens")
    summary = evaluate_systems(spec, root / "data", paths, root / "ens", root / "eval", best_dir=root / "best")
    data = SplitData.load(root / "data")
    manifest = json.loads((root / "best" / "ensemble.json").read_text())
    val = np.asarray(data.val.images)
    return root / "best", val, {"selected": summary.selected, "reference_source": manifest["drift_reference"]["source"],
                                "test_macro_f1": manifest["evaluation"]["test_metrics"].get("macro_f1")}


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ens, val = random_artifact(root / "random")
        result = {"random": measure(ens, val)}
        best, tval, info = trained_artifact(root / "trained")
        result["trained"] = {**info, **measure(best, tval)}
    result["settings"] = {"window": WINDOW, "windows": WINDOWS, "permutations": PERMUTATIONS,
                          "seconds": round(time.perf_counter() - t0, 1)}
    write_result("drift", result)


if __name__ == "__main__":
    main()
