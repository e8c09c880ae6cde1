"""Images/s of ``medens.training.fit`` against a minimal hand-written PyTorch loop.

Same model (compact_cnn), same data (rbc-demo training split), same batch size and optimiser,
measured in one run and interleaved (hand, fit, hand, fit, ...) so machine load affects both
alike. The goal (issue 4): fit's training throughput is at least 0.95 of the hand loop's.

``fit`` also validates after every epoch and writes a checkpoint; its end-to-end throughput
(training images / whole wall time) is reported beside the training-phase figure.

Run: ``.venv/bin/python benchmarks/train_overhead.py [--epochs 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from medens.config import TrainingSpec, load_spec  # noqa: E402
from medens.data import build_dataset  # noqa: E402
from medens.data.transforms import InputSpec, preprocess  # noqa: E402
from medens.models import build  # noqa: E402
from medens.training import fit  # noqa: E402


def hand_loop(images: np.ndarray, labels: np.ndarray, epochs: int, batch: int, lr: float, seed: int) -> float:
    """The minimal loop: preprocessed tensors, randperm batches, forward, CE, backward, step."""
    torch.manual_seed(seed)
    x = torch.from_numpy(preprocess(images, InputSpec.fit(images)))
    y = torch.from_numpy(labels).long()
    model = build("compact_cnn", in_channels=x.shape[1], num_classes=int(y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    seen = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            if len(idx) == 1:
                continue
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            seen += len(idx)
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = load_spec("rbc-demo")
    data = build_dataset(spec)
    batch, lr = spec.training.batch_size, spec.training.lr
    tspec = TrainingSpec(epochs=args.epochs, batch_size=batch, lr=lr, patience=None, plateau_patience=None,
                         augment=False, device="cpu")
    n_train = len(data.train)
    hand, fit_train, fit_e2e = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            hand.append(hand_loop(data.train.images, data.train.labels, args.epochs, batch, lr, seed=r))
            t0 = time.perf_counter()
            res = fit("compact_cnn", "ce", data, tspec, Path(tmp) / f"run{r}", seed=r, progress=False)
            wall = time.perf_counter() - t0
            train_s = sum(h["train_seconds"] for h in res.history)
            fit_train.append(n_train * args.epochs / train_s)
            fit_e2e.append(n_train * args.epochs / wall)
    h, f, e = statistics.median(hand), statistics.median(fit_train), statistics.median(fit_e2e)
    write_result("train_overhead", {
        "model": "compact_cnn", "data": "rbc-demo train split", "train_images": n_train, "batch_size": batch,
        "epochs": args.epochs, "repeats": args.repeats,
        "hand_loop_images_per_s": round(h, 1),
        "fit_train_phase_images_per_s": round(f, 1),
        "fit_end_to_end_images_per_s": round(e, 1),
        "ratio_train_phase": round(f / h, 3),
        "ratio_end_to_end": round(e / h, 3),
        "goal_ratio": 0.95,
        "goal_met": f / h >= 0.95,
        "all_runs": {"hand": [round(v, 1) for v in hand], "fit_train": [round(v, 1) for v in fit_train],
                     "fit_e2e": [round(v, 1) for v in fit_e2e]},
    })


if __name__ == "__main__":
    main()
