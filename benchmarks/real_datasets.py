"""The real imbalanced image sets of ``benchmarks/real_data.py``, built from registry packages
(nothing is downloaded at run time): elpv (the PyPI package ``elpv-dataset``), scikit-learn's
bundled digits (long-tailed, and issue 13's small long-tailed set) and long-tailed Fashion-MNIST
(Debian's ``dataset-fashion-mnist``), each written as an image folder medens reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 0
SPLIT = {"train": 0.6, "val": 0.15, "test": 0.25}
"""medens' stratified split of the sets that do not come split (elpv, digits)."""
CLASS_NAMES = ("p000", "p033", "p067", "p100")
"""Class folders by defect probability 0, 1/3, 2/3, 1."""
ELPV_PACKAGE = "elpv-dataset==1.0.0.post1"


def bench_hint(what: str, package: str) -> str:
    """How to install a registry package of the bench extra that ``what`` comes from."""
    return (f"{what} come from the registry package {package}, installed by the project's bench extra: run "
            "`make venv`, or `.venv/bin/pip install -e '.[bench]'`")


INSTALL_HINT = bench_hint("the elpv images", "elpv-dataset") + f" (which installs {ELPV_PACKAGE})"


# ---------------------------------------------------------------- data

def load_elpv() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The elpv images ``(2624, 300, 300)`` uint8, defect probabilities and module types, from the
    installed package (nothing is downloaded).

    Raises:
        RuntimeError: with :data:`INSTALL_HINT` when ``elpv_dataset`` is not installed.
    """
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as e:
        raise RuntimeError(f"cannot import elpv_dataset ({e}); {INSTALL_HINT}") from e
    images, probs, types = load_dataset()
    return np.asarray(images), np.asarray(probs, dtype=np.float64), np.asarray(types).astype(str)


def class_index(probs: np.ndarray) -> np.ndarray:
    """Defect probability (0, 1/3, 2/3, 1) -> class index 0..3 (into :data:`CLASS_NAMES`)."""
    p = np.asarray(probs, dtype=np.float64)
    k = np.rint(p * 3).astype(np.int64)
    bad = (np.abs(p * 3 - k) > 1e-6) | (k < 0) | (k > 3)
    if bad.any():
        raise ValueError(f"elpv defect probabilities must be 0, 1/3, 2/3 or 1; found {sorted(set(p[bad].tolist()))[:5]}")
    return k


def stratified_subset(labels: np.ndarray, n: int, seed: int = SEED) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of ``n`` samples."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if n >= len(labels):
        return idx
    keep, _ = train_test_split(idx, train_size=n, stratify=labels, random_state=seed)
    return np.sort(keep)


def write_image_folder(images: np.ndarray, labels: np.ndarray, root: str | Path, names: list[str] | None = None,
                       class_names: tuple[str, ...] = CLASS_NAMES) -> dict[str, int]:
    """Write grey images as ``root/<class>/<name>.png``.

    Args:
        images: ``(N, H, W)`` uint8 grey images (written at their own resolution).
        labels: ``(N,)`` class indices into ``class_names`` (elpv: :func:`class_index`).
        root: the image folder to create.
        names: file stems; default ``cell<index + 1>`` (four digits, the package's numbering).
        class_names: the class folders.

    Returns:
        Images written per class folder, in ``class_names`` order.
    """
    from PIL import Image

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W) uint8 grey images, got {images.shape} {images.dtype}")
    labels = np.asarray(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    names = names if names is not None else [f"cell{i + 1:04d}" for i in range(len(images))]
    root = Path(root)
    for c in class_names:
        (root / c).mkdir(parents=True, exist_ok=True)
    for img, k, name in zip(images, labels, names):
        Image.fromarray(img, mode="L").save(root / class_names[k] / f"{name}.png", compress_level=1)
    return {c: int(np.sum(labels == k)) for k, c in enumerate(class_names)}


DIGIT_CLASSES = tuple(str(d) for d in range(10))
DIGITS_TAIL = 0.1
"""The long-tailed digits keep ``170 * DIGITS_TAIL ** (c / 9)`` images of digit ``c`` (170 down to 17)."""


def _digit_images(images: np.ndarray, size: int) -> np.ndarray:
    """scikit-learn's 8x8 digit scans (16 grey levels) upsampled bilinearly to ``size`` px grey uint8."""
    import torch

    x = torch.nn.functional.interpolate(torch.tensor(images, dtype=torch.float32)[:, None], size=size,
                                        mode="bilinear", align_corners=False)
    return (x[:, 0] / 16 * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def long_tailed_digits(size: int = 32, tail: float = DIGITS_TAIL, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (real 8x8 scans of 16 grey levels, 1,797 images;
    nothing is downloaded), long-tailed: digit ``c`` keeps ``round(170 * tail ** (c / 9))`` images
    (a random subset, ``seed``), upsampled bilinearly to ``size`` px grey uint8.

    Returns:
        ``images`` ``(N, size, size)`` uint8 and ``labels`` ``(N,)`` (the digit).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        n = min(len(idx), int(round(170 * tail ** (c / 9))))
        keep.append(np.sort(rng.choice(idx, size=n, replace=False)))
    keep = np.concatenate(keep)
    return _digit_images(d.images[keep], size), d.target[keep].astype(np.int64)


SMALL_TRAIN = {0: 138, 1: 30, 2: 12, 3: 6, 4: 3}
"""Training images per digit of the small long-tailed set (189 in all, 46:1)."""
SMALL_TEST = 25
"""Test images per digit of the small long-tailed set (balanced)."""


def small_long_tailed_digits(size: int = 32, seed: int = SEED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Issue 13's small long-tailed set of real images: the digits 0-4 of scikit-learn's bundled
    scans with :data:`SMALL_TRAIN` training images (138 down to 3), a validation split of a quarter
    of that (at least one image; at most what the digit has left, so 15/8/3/2/1) and a balanced
    test split of :data:`SMALL_TEST` per digit, disjoint, drawn with ``seed``; ``size`` px grey uint8.

    Returns:
        ``{"train" | "val" | "test": (images, labels)}``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c, n in SMALL_TRAIN.items():
        idx = rng.permutation(np.flatnonzero(d.target == c))
        n_val = min(len(idx) - n - SMALL_TEST, max(1, int(round(n / 4))))
        parts["train"].append(idx[:n])
        parts["val"].append(idx[n:n + n_val])
        parts["test"].append(idx[len(idx) - SMALL_TEST:])
    out = {}
    for split, chunks in parts.items():
        ix = np.sort(np.concatenate(chunks))
        out[split] = (_digit_images(d.images[ix], size), d.target[ix].astype(np.int64))
    return out


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's package ``dataset-fashion-mnist`` installs Fashion-MNIST's four IDX files."""
FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
"""Fashion-MNIST's labels 0-9, in label order (which is also the long-tail order)."""
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_HEAD, FASHION_RATIO, FASHION_TEST = 500, 50, 300
"""Long-tailed Fashion-MNIST: ``round(500 * 50 ** (-c / 9))`` training images of label ``c`` (500 down
to 10, 1,401 in all), a validation split of a quarter of that (at least 2) from the rest of the
official training set, and a balanced test split of 300 per label from the official test set."""
FASHION_HINT = (f"Fashion-MNIST comes from the Debian package {FASHION_PACKAGE} (files in {FASHION_DIR}): run "
                f"`make bench-deps` as root, or `sudo apt-get install {FASHION_PACKAGE}`")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (the MNIST format: two zero bytes, a type byte, the number of dimensions, the
    dimensions as big-endian uint32, then the data; gzip-compressed when the name ends in ``.gz``)
    as a numpy array. Only unsigned bytes (type ``0x08``) are read.

    Raises:
        ValueError: naming the file, for a bad magic number, another type or a short file.
    """
    import gzip

    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise ValueError(f"{path}: not an IDX file (its first two bytes must be zero)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX data type 0x{raw[2]:02x}; only unsigned bytes (0x08) are read")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes) but {data.size} bytes follow")
    return data.reshape(shape)


def load_fashion_mnist(root: str | Path = FASHION_DIR) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST's official splits ``{"train" | "test": (images (N, 28, 28) uint8, labels (N,))}``
    from ``root`` (default: where the Debian package puts them; nothing is downloaded).

    Raises:
        RuntimeError: with :data:`FASHION_HINT` when a file is missing.
    """
    root = Path(root)
    out = {}
    for split, (img, lab) in FASHION_FILES.items():
        missing = [f for f in (img, lab) if not (root / f).is_file()]
        if missing:
            raise RuntimeError(f"no {', '.join(missing)} in {root}; {FASHION_HINT}")
        images, labels = read_idx(root / img), read_idx(root / lab).astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"{root}: {split} images {images.shape} do not match labels {labels.shape}")
        out[split] = (images, labels)
    return out


def fashion_counts(head: int = FASHION_HEAD, ratio: float = FASHION_RATIO) -> dict[str, list[int]]:
    """Images per label of the long-tailed Fashion-MNIST splits (train, val; test is balanced)."""
    train = [int(round(head * ratio ** (-c / 9))) for c in range(len(FASHION_CLASSES))]
    return {"train": train, "val": [max(2, int(round(n / 4))) for n in train],
            "test": [FASHION_TEST] * len(FASHION_CLASSES)}


def long_tailed_fashion(root: str | Path = FASHION_DIR, seed: int = SEED) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Long-tailed Fashion-MNIST (see :data:`FASHION_HEAD`): train and validation drawn without
    overlap from the official training set, the balanced test split from the official test set,
    each a random subset (``seed``); images stay 28 px grey uint8.

    Returns:
        ``{"train" | "val" | "test": (images, labels)}``.
    """
    source = load_fashion_mnist(root)
    counts = fashion_counts()
    rng = np.random.default_rng(seed)
    picks: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(len(FASHION_CLASSES)):
        pool = rng.permutation(np.flatnonzero(source["train"][1] == c))
        n_tr, n_val = counts["train"][c], counts["val"][c]
        picks["train"].append(pool[:n_tr])
        picks["val"].append(pool[n_tr:n_tr + n_val])
        picks["test"].append(rng.choice(np.flatnonzero(source["test"][1] == c), size=counts["test"][c], replace=False))
    out = {}
    for split, chunks in picks.items():
        images, labels = source["test" if split == "test" else "train"]
        ix = np.sort(np.concatenate(chunks))
        out[split] = (images[ix], labels[ix])
    return out


DATASETS = {
    "elpv": {"size": 64, "flips": "both", "description": "elpv solar cells, four defect-probability classes"},
    "digits": {"size": 32, "flips": "none",
               "description": "scikit-learn digits, long-tailed (170 down to 17 per digit), 32 px; no flips "
                              "(a flipped digit is another digit or none)"},
    "digits_small": {"size": 32, "flips": "none",
                     "description": "issue 13's small long-tailed set: scikit-learn digits 0-4, 138/30/12/6/3 "
                                    "training images, balanced test of 25 per digit, 32 px; no flips"},
    "fashion_lt": {"size": 64, "flips": "horizontal",
                   "description": "Fashion-MNIST (Debian's dataset-fashion-mnist), long-tailed: 500 down to 10 "
                                  "training images per label (50:1), validation a quarter of that, balanced test "
                                  "of 300 per label from the official test set; 28 px read at 64 px; horizontal "
                                  "flips only (a garment upside down is not in the data)"},
}
PRESPLIT = ("digits_small", "fashion_lt")
"""Datasets given to medens as the image folder's own train/val/test folders."""


def debian_version(package: str) -> str:
    """The installed version of a Debian package, or ``"unknown"`` (no dpkg, not installed)."""
    import subprocess

    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"
