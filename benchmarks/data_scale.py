"""Datasets larger than memory: peak RSS and throughput of the data stage and one training epoch
at N = 1,000, 10,000 and 50,000 image files (PNG and DICOM).

Files: 256 px grey synthetic red-blood-cell crops (``make_cells``, a bank of 600 rendered
images cycled; codocyte/hypochromia/normal at 1:1:4), written as 8-bit PNG and as 12-bit DICOM
(MONOCHROME2, the 8-bit values times 16), into class folders. For each format and N, two child
processes, each measured by its own peak resident memory (``ru_maxrss``):

- ``data``: ``medens data summary`` on the folder (``image_folder``, 64 px, one channel): reads,
  resizes, validates, splits and saves the dataset. Pools above ``MEDENS_LAZY_BYTES`` (64 MiB)
  are decoded straight to an on-disk array;
- ``train``: loads the saved dataset (splits above 64 MiB stay on disk, read one batch at a time)
  and trains the compact CNN for one epoch (batch 64, flips); images per second from the
  engine's own timing.

Goal: the training epoch's peak RSS at the largest N is at most 1.3x its peak at the smallest N,
for each format (the data stage's ratio is reported beside it).

Run: ``.venv/bin/python benchmarks/data_scale.py [--sizes 1000,10000,50000] [--formats png,dicom]
[--workdir DIR] [--keep]``; results in ``benchmarks/results/data_scale.json``. Needs about
1 GB (PNG) and 7 GB (DICOM) of free disk at 50,000 images; the files are deleted afterwards
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import write_result  # noqa: E402

FILE_PX = 256
TRAIN_PX = 64
BANK = {"codocyte": 100, "hypochromia": 100, "normal": 400}
GOAL_RATIO = 1.3

CHILD = r"""
import json, resource, sys, time
stage, arg = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
out = {}
if stage == "data":
    from medens.cli import main
    code = main(["data", "summary", "--spec", arg + "/spec.yaml", "--out", arg + "/ds", "--json"])
    assert code == 0, code
else:
    from medens.config import TrainingSpec
    from medens.data.filearray import FileArray
    from medens.data.types import SplitData
    from medens.training import fit
    data = SplitData.load(arg + "/ds")
    out["train_on_disk"] = isinstance(data.train.images, FileArray)
    res = fit("compact_cnn", "ce", data, TrainingSpec(epochs=1, batch_size=64, augment="flips", patience=None,
              plateau_patience=None, calibrate=False), arg + "/model", progress=False)
    row = res.history[0]
    out.update(train_images=len(data.train), train_seconds=row["train_seconds"],
               images_per_s=row["train_images_per_s"])
out["seconds"] = time.perf_counter() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out))
"""


def render_bank(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """600 grey 256 px cell crops and their labels."""
    from medens.data.synthetic import CELL_CLASSES, make_cells

    images, labels, _ = make_cells([BANK[c] for c in CELL_CLASSES], size=FILE_PX, seed=seed)
    grey = np.rint(images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    return grey, labels


def synthetic_speed() -> dict:
    """Seconds to render the synthetic data the tests and demos use (formerly wall-clock assertions
    in tests/data/test_synthetic.py, which flake on a loaded machine): 2,000 cells at 48 px (goal
    under 10 s) and five 256 px smears (goal under 1 s each)."""
    from medens.data.synthetic import make_cells, make_smears

    t0 = time.perf_counter()
    make_cells([700, 650, 650], size=48, seed=0)
    cells_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_smears(5, size=256, seed=0)
    smear_s = (time.perf_counter() - t0) / 5
    return {"make_cells_2000_at_48px_seconds": round(cells_s, 2), "make_cells_goal_met": cells_s < 10.0,
            "make_smears_256px_seconds_each": round(smear_s, 3), "make_smears_goal_met": smear_s < 1.0}


def write_files(folder: Path, n: int, fmt: str, bank: np.ndarray, labels: np.ndarray) -> float:
    """``n`` files cycling through the bank into ``folder/<class>/``; seconds taken."""
    from PIL import Image

    from medens.data.synthetic import CELL_CLASSES

    t0 = time.perf_counter()
    for c in CELL_CLASSES:
        (folder / c).mkdir(parents=True, exist_ok=True)
    template = dicom_template() if fmt == "dicom" else None
    for i in range(n):
        k = i % len(bank)
        path = folder / CELL_CLASSES[labels[k]] / f"img{i:06d}.{'png' if fmt == 'png' else 'dcm'}"
        if fmt == "png":
            Image.fromarray(bank[k]).save(path, compress_level=1)
        else:
            template.PixelData = (bank[k].astype(np.uint16) * 16).tobytes()
            template.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
            template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
            template.save_as(path, enforce_file_format=True)
    return time.perf_counter() - t0


def dicom_template():
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality, ds.PatientID = "OT", "SYNTHETIC"
    ds.Rows = ds.Columns = FILE_PX
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def run_child(stage: str, work: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, stage, str(work)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,50000")
    ap.add_argument("--formats", default="png,dicom")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the written files and datasets")
    ap.add_argument("--name", default="data_scale")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    formats = args.formats.split(",")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="medens-data-scale-"))
    synthetic = synthetic_speed()
    print(f"synthetic data: {synthetic}", file=sys.stderr, flush=True)
    bank, labels = render_bank()
    runs: dict[str, dict[str, dict]] = {}
    try:
        for fmt in formats:
            runs[fmt] = {}
            for n in sizes:
                work = root / f"{fmt}-{n}"
                if work.exists():
                    shutil.rmtree(work)
                folder = work / "files"
                write_s = write_files(folder, n, fmt, bank, labels)
                disk = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                (work / "spec.yaml").write_text(json.dumps({
                    "name": f"scale-{fmt}-{n}", "models": ["compact_cnn"], "losses": ["ce"],
                    "data": {"source": "image_folder", "path": str(folder), "image_size": TRAIN_PX, "channels": 1}}))
                data = run_child("data", work)
                train = run_child("train", work)
                runs[fmt][str(n)] = {"files_mb": round(disk / 2**20, 1), "write_seconds": round(write_s, 1),
                                     "data": {k: round(v, 2) if isinstance(v, float) else v for k, v in data.items()},
                                     "train": {k: round(v, 2) if isinstance(v, float) else v for k, v in train.items()}}
                print(f"[{fmt} {n}] data {data['peak_rss_mb']:.0f} MB {data['seconds']:.0f} s; train "
                      f"{train['peak_rss_mb']:.0f} MB {train['images_per_s']:.0f} img/s "
                      f"(on disk: {train['train_on_disk']})", file=sys.stderr, flush=True)
                if not args.keep:
                    shutil.rmtree(work)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    lo, hi = str(min(sizes)), str(max(sizes))
    goals = {}
    for fmt, r in runs.items():
        train_ratio = r[hi]["train"]["peak_rss_mb"] / r[lo]["train"]["peak_rss_mb"]
        data_ratio = r[hi]["data"]["peak_rss_mb"] / r[lo]["data"]["peak_rss_mb"]
        goals[fmt] = {"train_peak_rss_ratio": round(train_ratio, 3), "data_peak_rss_ratio": round(data_ratio, 3),
                      "met": train_ratio <= GOAL_RATIO}
    return write_result(args.name, {
        "goal": f"training epoch peak RSS at N={hi} <= {GOAL_RATIO}x the peak at N={lo}, per format",
        "config": {"sizes": sizes, "formats": formats, "file_px": FILE_PX, "train_px": TRAIN_PX,
                   "lazy_bytes": "64 MiB (MEDENS_LAZY_BYTES default)"},
        "runs": runs, "goals": goals, "goal_met": all(g["met"] for g in goals.values()),
        "synthetic_render": synthetic})


if __name__ == "__main__":
    main()
