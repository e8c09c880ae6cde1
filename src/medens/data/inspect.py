"""What a folder (or CSV manifest) of images holds, read from file headers: ``medens init``'s look at
the data before it writes a spec (:mod:`medens.stages.init`).

:func:`survey` finds the source kind the data stage would read it as (an image folder with or
without ``train/``/``val/``/``test/`` split folders, a segmentation folder ``images/`` + ``masks/``,
a CSV manifest ``path,label`` or ``image,mask`` with an optional ``split`` column; DICOM files are
recognised by content, as the data stage recognises them: :func:`medens.data.sources._list_images`,
:func:`medens.data.dicom.is_dicom_file`), the classes and their counts per split, the imbalance
ratio, image sizes, channels and bit depth (PIL's ``Image.open`` without decoding; pydicom with
``stop_before_pixels``), and a patient grouping for ``data.group_by`` (:func:`propose_grouping`).

Every problem the data stage would refuse later (a missing path, an empty folder, one class,
unreadable files, masks that do not match their images) is a ``ValueError`` here, with the files.
"""

from __future__ import annotations

import contextlib
import csv
import re
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medens.config import SplitSpec
from medens.data.sources import _list_images, _stem
from medens.data.types import SPLITS

ALL = "all"
"""The part name of a source without split folders (as :class:`medens.data.sources.Pool` names it)."""

ID_PATTERNS: tuple[str, ...] = (
    r"(?i)(person\d+)",  # Kermany: person123_bacteria_4.jpeg
    r"(?i)(patient[-_ ]?\d+)",  # patient-0042_..., Patient_7_...
    r"(?i)(subject[-_ ]?\d+)",
    r"(?i)(case[-_ ]?\d+)",
    r"(?:^|/)(P\d+)[-_.]",  # P0001_1.png
    r"(?:^|/)(IM-\d+)-",  # Kermany NORMAL: IM-0001-0001.jpeg
    r"(?:^|/)([A-Za-z]+[-_]?\d+)[-_]",  # any prefix + number, then a separator: ABC12_3.png
)
"""File-name id patterns tried in order, most specific first; each is searched in every sample id
(the file's path relative to the source root, as ``data.group_by: pattern:`` searches it)."""

MIN_PATTERN_GROUPS = 10
"""A file-name pattern is proposed only when it gives at least this many groups ..."""
MIN_FILES_PER_GROUP = 2.0
"""... and at least this many files per group on average (otherwise it is a file counter, not a patient id)."""
MIN_GROUPS = 3
"""A header or column grouping needs at least this many groups to make three group-disjoint splits."""
GROUP_COLUMNS = ("patient_id", "patientid", "patient", "subject_id", "subject", "case_id", "case", "group")
"""CSV manifest columns taken as a patient id (lower case)."""

_MODES: dict[str, tuple[int, int]] = {
    "1": (1, 8), "L": (1, 8), "LA": (1, 8), "P": (3, 8), "PA": (3, 8), "RGB": (3, 8), "RGBA": (3, 8),
    "CMYK": (3, 8), "YCbCr": (3, 8), "LAB": (3, 8), "HSV": (3, 8), "I;16": (1, 16), "I;16B": (1, 16),
    "I;16L": (1, 16), "I;16N": (1, 16), "I": (1, 32), "F": (1, 32),
}
"""PIL mode -> (channels the data stage keeps, bits per sample)."""


@dataclass
class Header:
    """What one file's header says."""

    height: int
    width: int
    channels: int
    bits: int | None
    """Bits per sample (DICOM: BitsStored); None for float volume formats."""
    fmt: str
    patient: str | None = None
    """DICOM PatientID, when the header has one."""


@dataclass
class Sample:
    """One image (with its mask for segmentation) as the data stage would list it."""

    part: str
    """``all`` or the split it is in."""
    label: str | None
    id: str
    """Its path relative to the part's root: what ``data.group_by: pattern:`` searches."""
    path: Path
    mask: Path | None = None
    header: Header | None = None


@dataclass
class Grouping:
    """A proposed ``data.group_by`` (or None) with its number of groups and why."""

    group_by: str | None
    groups: int = 0
    per_part: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    shared: list[str] = field(default_factory=list)
    """Groups found in more than one given split (a leak the data stage refuses with ``group_by``)."""


@dataclass
class Survey:
    """What :func:`survey` found."""

    path: Path
    source: str
    """The ``data.source`` to read it with: image_folder, seg_folder or csv."""
    task: str
    layout: str
    """The source kind in words."""
    parts: list[str]
    """``["all"]``, or the split folders / manifest splits found."""
    class_names: list[str]
    samples: list[Sample]
    grouping: Grouping
    ignored: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    foreground: float | None = None
    """Segmentation: the mean fraction of mask pixels that are not background (of up to 200 masks)."""

    def counts(self) -> dict[str, dict[str, int]]:
        """Part -> class -> images (segmentation: part -> {"pairs": n})."""
        out: dict[str, dict[str, int]] = {}
        for part in self.parts:
            mine = [s for s in self.samples if s.part == part]
            if self.task == "segmentation":
                out[part] = {"pairs": len(mine)}
            else:
                c = Counter(s.label for s in mine)
                out[part] = {k: c.get(k, 0) for k in self.class_names}
        return out

    def val_class_counts(self, split: SplitSpec | None = None) -> dict[str, int]:
        """About how many images of each class the validation split will hold (classification): a
        ``val/`` folder's counts, else ``data.split``'s share of each class (the split is stratified)."""
        f = split or SplitSpec()
        per = self.counts()
        if "val" in per:
            return dict(per["val"])
        if ALL in per:
            return {c: round(n * f.val) for c, n in per[ALL].items()}
        return {c: round(n * f.val / (f.train + f.val)) for c, n in per.get("train", {}).items()}

    def class_totals(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {k: c.get(k, 0) for k in self.class_names}

    @property
    def imbalance_ratio(self) -> float | None:
        """max / min images per class over all splits (classification)."""
        if self.task != "classification":
            return None
        totals = [n for n in self.class_totals().values()]
        return max(totals) / min(totals) if totals and min(totals) > 0 else None

    def size_stats(self) -> dict[str, tuple[int, int]]:
        """``{"min": (H, W), "median": (H, W), "max": (H, W)}``, each dimension on its own."""
        hs = [s.header.height for s in self.samples if s.header]
        ws = [s.header.width for s in self.samples if s.header]
        return {"min": (min(hs), min(ws)), "median": (int(statistics.median(hs)), int(statistics.median(ws))),
                "max": (max(hs), max(ws))}

    @property
    def median_short_side(self) -> int:
        return int(statistics.median(min(s.header.height, s.header.width) for s in self.samples if s.header))

    @property
    def channels(self) -> Counter:
        return Counter(s.header.channels for s in self.samples if s.header)

    @property
    def bits(self) -> Counter:
        return Counter(s.header.bits for s in self.samples if s.header)

    @property
    def formats(self) -> Counter:
        return Counter(s.header.fmt for s in self.samples if s.header)

    def split_sizes(self, split: SplitSpec | None = None) -> dict[str, int]:
        """How many images train, val and test will hold (``data.split`` for what the source does
        not split itself; approximate with groups)."""
        f = split or SplitSpec()
        n = Counter(s.part for s in self.samples)
        if ALL in n:
            total = n[ALL]
            train, val = round(total * f.train), round(total * f.val)
            return {"train": train, "val": val, "test": total - train - val}
        out = {s: n.get(s, 0) for s in SPLITS}
        if "val" not in self.parts:
            held = round(out["train"] * f.val / (f.train + f.val))
            out["train"], out["val"] = out["train"] - held, held
        return out


# ---------------------------------------------------------------- headers


def read_header(path: Path) -> Header:
    """Size, channels, bit depth and format of one image from its header (pixels are decoded only
    for NIfTI/NRRD/MetaImage). ``ValueError``/``OSError`` with the reason for a file the data stage
    could not use."""
    from medens.data.dicom import is_dicom_file
    from medens.data.volumes import volume_suffix

    suffix = volume_suffix(path)
    if suffix:
        from medens.data.volumes import read_slice

        values = read_slice(path)
        return Header(int(values.shape[0]), int(values.shape[1]), 1, None, suffix.lstrip(".").split(".")[0])
    if is_dicom_file(path):
        return _dicom_header(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            mode, fmt = im.mode, (im.format or path.suffix.lstrip(".") or "image").lower()
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read (and no DICOM preamble)") from None
    channels, bits = _MODES.get(mode, (3, 8))
    return Header(h, w, channels, bits, fmt)


def _dicom_header(path: Path) -> Header:
    import pydicom

    from medens.data.dicom import _no_pixels

    try:
        with warnings.catch_warnings():  # a damaged header is reported below, once, not as pydicom's warnings
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:
        raise ValueError(f"unreadable DICOM header ({type(e).__name__}: {e})") from None
    if "Rows" not in ds or "Columns" not in ds:
        if "SOPClassUID" in ds:
            raise ValueError(_no_pixels(ds, "DICOM").removeprefix("DICOM: "))
        raise ValueError("unreadable DICOM header (no Rows, Columns or SOP class: a truncated file?)")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"a multi-frame DICOM object ({frames} frames), not one 2D image")
    bits = int(getattr(ds, "BitsStored", None) or getattr(ds, "BitsAllocated", 8) or 8)
    channels = 3 if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1 else 1
    patient = str(ds.get("PatientID", "") or "").strip() or None
    return Header(int(ds.Rows), int(ds.Columns), channels, bits, "dicom", patient)


def _read_headers(samples: list[Sample], root: Path) -> None:
    problems = []
    for s in samples:
        for p in (s.path, s.mask):
            if p is None:
                continue
            try:
                if not p.is_file():
                    raise ValueError("missing")
                h = read_header(p)
            except Exception as e:  # PIL and the volume readers raise several types
                reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
                problems.append(f"{_rel(p, root)}: {reason}")
                continue
            if p == s.path:
                s.header = h
            elif s.header is not None and (h.height, h.width) != (s.header.height, s.header.width):
                problems.append(f"{_rel(p, root)}: mask is {h.height} x {h.width}, its image "
                                f"{_rel(s.path, root)} is {s.header.height} x {s.header.width}")
    if problems:
        shown = "\n  ".join(problems[:5])
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError(f"{root}: {len(problems)} unreadable file(s) (the data stage would refuse them; fix or "
                         f"remove them):\n  {shown}{more}")


def _rel(p: Path, root: Path) -> str:
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


# ---------------------------------------------------------------- layouts


def _subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _is_pair_folder(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def _image_folder(root: Path, parts: list[str], warnings: list[str], ignored: list[str]) -> tuple[list[str], list[Sample]]:
    """Class folders under ``root`` (or under each split folder): the classes of the first part,
    as the data stage takes them."""
    first = root if parts == [ALL] else root / parts[0]
    names = _subdirs(first)
    if not names:
        loose = _list_images(first)
        where = "" if parts == [ALL] else f" under {parts[0]}/"
        raise ValueError(f"{root}: no class folders{where} (expected one sub-folder of images per class"
                         + (f"; found {len(loose)} image(s) directly in {first}: move them into class folders "
                            "or list them in a CSV manifest with columns path,label)" if loose else ")"))
    samples, empty = [], []
    for part in parts:
        base = root if part == ALL else root / part
        here = _subdirs(base)
        for extra in sorted(set(here) - set(names)):
            warnings.append(f"{part}/{extra}/ is not a class of {parts[0]}/ and is not read "
                            f"(the classes are {parts[0]}/'s folders)")
        for c in names:
            folder = base / c
            if not folder.is_dir():
                warnings.append(f"class {c!r} has no folder in {part}/")
                continue
            skipped: list[str] = []
            files = _list_images(folder, skipped)
            ignored += [f"{_rel(folder, root)}/{x}" for x in skipped]
            if not files:
                what = f"{c!r}" if part == ALL else f"{c!r} in {part}/"
                empty.append(f"class {what} has no images in {folder}"
                             + (f" (ignored: {', '.join(skipped[:5])})" if skipped else ""))
            samples += [Sample(part, c, str(f.relative_to(base)), f) for f in files]
    if empty:
        raise ValueError(f"{root}: " + "; ".join(empty))
    return names, samples


def _pair_samples(root: Path, parts: list[str]) -> list[Sample]:
    samples, problems = [], []
    for part in parts:
        base = root if part == ALL else root / part
        if not _is_pair_folder(base):
            problems.append(f"{part}/: missing images/ or masks/")
            continue
        masks = {_stem(p): p for p in _list_images(base / "masks")}
        for p in _list_images(base / "images"):
            m = masks.pop(_stem(p), None) or masks.pop(_stem(p) + "_mask", None)
            if m is None:
                problems.append(f"image {_rel(p, root)} has no mask (looked for {_stem(p)}.* and {_stem(p)}_mask.*)")
                continue
            samples.append(Sample(part, None, str(p.relative_to(base)), p, m))
        problems += [f"mask {_rel(m, root)} has no image" for m in masks.values()]
    if problems:
        shown = "\n  ".join(problems[:5]) + (f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{root}: the masks do not match the images ({len(problems)} problem(s); masks/ must hold "
                         f"one mask per image of images/, with the same name or name_mask):\n  {shown}")
    return samples


def _manifest(path: Path) -> tuple[str, list[str], list[str], list[Sample], list[dict]]:
    """(task, parts, class names, samples, rows) of a CSV manifest."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: the manifest has no rows")
    cols = set(rows[0])
    if {"path", "label"} <= cols:
        task, key = "classification", "path"
    elif {"image", "mask"} <= cols:
        task, key = "segmentation", "image"
    else:
        raise ValueError(f"{path}: columns must include path,label or image,mask; found {', '.join(sorted(cols))}")
    base, samples, bad = path.parent, [], []
    for line, r in enumerate(rows, start=2):
        part = (r.get("split") or "").strip() if "split" in cols else ALL
        if part not in (*SPLITS, ALL) or ("split" in cols and part == ALL):
            bad.append(f"line {line}: split {part!r} is not one of train, val, test")
            continue
        label = r["label"].strip() if task == "classification" else None
        samples.append(Sample(part, label, r[key], base / r[key], base / r["mask"] if task == "segmentation" else None))
    if bad:
        raise ValueError(f"{path}: " + "; ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    parts = [s for s in (*SPLITS, ALL) if any(x.part == s for x in samples)]
    names = sorted({s.label for s in samples}) if task == "classification" else ["background", "lesion"]
    return task, parts, names, samples, rows


def _check_splits(root: Path, parts: list[str]) -> None:
    if parts == [ALL]:
        return
    given = ", ".join(f"{p}/" for p in parts)
    if "train" not in parts:
        raise ValueError(f"{root}: split folders {given} but no train/ (add train/, or put the class folders "
                         "directly under the folder and let data.split make the splits)")
    if "test" not in parts:
        raise ValueError(f"{root}: split folders {given} but no test/ (add test/, or put the class folders "
                         "directly under the folder and let data.split make the splits)")


# ---------------------------------------------------------------- grouping


def _shared(samples: list[Sample], groups: list[str]) -> list[str]:
    where: dict[str, set[str]] = {}
    for s, g in zip(samples, groups, strict=True):
        where.setdefault(g, set()).add(s.part)
    return [f"{g} in {' and '.join(sorted(p))}" for g, p in sorted(where.items()) if len(p) > 1]


def _grouping(group_by: str, samples: list[Sample], groups: list[str], why: str) -> Grouping:
    per_part = {p: len({g for s, g in zip(samples, groups, strict=True) if s.part == p})
                for p in dict.fromkeys(s.part for s in samples)}
    shared = _shared(samples, groups) if ALL not in per_part else []
    n = len(set(groups))
    if shared:
        return Grouping(None, n, per_part, f"{group_by} gives {n} groups, but {len(shared)} of them are in more "
                        "than one split folder: the data stage refuses group_by with these folders (move those "
                        "files into one split, or merge the split folders and let data.split make the splits)",
                        shared)
    return Grouping(group_by, n, per_part, why)


def propose_grouping(samples: list[Sample], rows: list[dict] | None = None) -> Grouping:
    """A ``data.group_by`` for the samples: ``dicom:PatientID`` when every file is DICOM with a
    PatientID; else a manifest column named like a patient id (:data:`GROUP_COLUMNS`); else the
    first of :data:`ID_PATTERNS` that every id matches with at least :data:`MIN_PATTERN_GROUPS`
    groups of :data:`MIN_FILES_PER_GROUP` files on average; else none, with the reason."""
    headers = [s.header for s in samples]
    dicom = [h for h in headers if h is not None and h.fmt == "dicom"]
    notes = []
    if dicom:
        ids = [h.patient for h in headers if h is not None]
        if len(dicom) == len(samples) and all(ids):
            n = len(set(ids))
            if n >= MIN_GROUPS:
                return _grouping("dicom:PatientID", samples, ids, f"PatientID in the DICOM headers: {n} patients")
            notes.append(f"the DICOM headers carry only {n} distinct PatientID(s)")
        else:
            missing = sum(1 for h in headers if h is None or not h.patient)
            notes.append(f"{missing} of {len(samples)} files have no DICOM PatientID")
    if rows:
        for col in rows[0]:
            if col.strip().lower() in GROUP_COLUMNS:
                values = [(r.get(col) or "").strip() for r in rows]
                n = len(set(values))
                if all(values) and n >= MIN_GROUPS:
                    return _grouping(f"column:{col}", samples, values, f"manifest column {col!r}: {n} groups")
                notes.append(f"column {col!r} is empty in places or has fewer than {MIN_GROUPS} values")
    ids = [s.id.replace("\\", "/") for s in samples]
    for pattern in ID_PATTERNS:
        rx = re.compile(pattern)
        found = [rx.search(i) for i in ids]
        if not all(found):
            continue
        groups = [m.group(1) for m in found]
        n = len(set(groups))
        if n >= MIN_PATTERN_GROUPS and len(ids) / n >= MIN_FILES_PER_GROUP:
            return _grouping(f"pattern:{pattern}", samples, groups,
                             f"file names carry an id: {n} groups, {len(ids) / n:.1f} files each on average")
    notes.append(f"no file-name id pattern gives {MIN_PATTERN_GROUPS}+ groups of {MIN_FILES_PER_GROUP:g}+ files "
                 "each")
    return Grouping(None, 0, {}, "no patient grouping found (" + "; ".join(notes) + "): images are split one by "
                    "one; set data.group_by if several images come from one patient")


# ---------------------------------------------------------------- the survey


def _foreground(samples: list[Sample], limit: int = 200) -> float | None:
    import numpy as np
    from PIL import Image

    fractions = []
    for s in samples[:limit]:
        if s.mask is None or s.mask.suffix.lower() not in (".png", ".bmp", ".tif", ".tiff", ".gif"):
            continue
        with Image.open(s.mask) as im:
            fractions.append(float((np.asarray(im.convert("L")) > 0).mean()))
    return float(np.mean(fractions)) if fractions else None


FLIP_DEFICIT = 0.03
"""Largest drop of the split-half correlation of class-mean images that a flip may cause and still
be proposed (see :func:`flip_symmetry`)."""
FLIP_MIN_IMAGES = 40
"""Fewer images (in classes of at least 4) and :func:`flip_symmetry` cannot tell: it proposes ``both``."""


@dataclass
class FlipCheck:
    """Which flips the images show (:func:`flip_symmetry`): the ``training.flips`` to propose and why."""

    flips: str
    deficits: dict[str, float]
    """``vertical`` / ``horizontal``: the mean correlation lost by flipping one half's class means."""
    images: int
    reason: str


def flip_symmetry(samples: list[Sample], *, size: int = 64, per_class: int = 200, seed: int = 0) -> FlipCheck:
    """Whether the data looks the same flipped: the flips an augmentation may use without making
    images unlike any in the data (an upside-down garment or chest X-ray, a mirrored digit).

    For each class (up to ``per_class`` images, read grey at ``size``), its images are split at random
    in two halves and the mean image of each half is taken. The correlation of the two means is the
    class's reliability; the correlation of one mean with the *flipped* other is what survives the
    flip. A flip whose count-weighted mean loss (reliability minus flipped correlation) is below
    :data:`FLIP_DEFICIT` is one the data shows (the README's figures: on elpv's solar cells the
    losses are 0.011 vertical and 0.004 horizontal; on long-tailed Fashion-MNIST 0.169 and 0.072,
    on the scikit-learn digits 0.050 and 0.067; they move by a few thousandths with the images
    read). Classification samples only; too few images: ``both``, as before."""
    import numpy as np

    from medens.data.sources import READ8, read_image

    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Sample]] = {}
    for sm in samples:
        if sm.label is not None:
            by_class.setdefault(sm.label, []).append(sm)
    loss: dict[str, list[float]] = {"vertical": [], "horizontal": []}
    weights: list[int] = []
    for members in by_class.values():
        pick = [members[i] for i in rng.permutation(len(members))[:per_class]]
        if len(pick) < 4:
            continue
        imgs = []
        for sm in pick:
            with contextlib.suppress(OSError, ValueError):
                imgs.append(read_image(sm.path, 1, size, reading=READ8)[..., 0].astype(np.float64))
        if len(imgs) < 4:
            continue
        a, b = np.mean(imgs[0::2], axis=0), np.mean(imgs[1::2], axis=0)
        ref = _corr(a, b)
        loss["vertical"].append(ref - _corr(a, b[::-1]))
        loss["horizontal"].append(ref - _corr(a, b[:, ::-1]))
        weights.append(len(imgs))
    n = int(sum(weights))
    if n < FLIP_MIN_IMAGES:
        return FlipCheck("both", {}, n, f"too few images ({n}) to tell which flips the data shows: both, the default")
    deficits = {k: round(float(np.average(v, weights=weights)), 3) for k, v in loss.items()}
    ok = [k for k in ("vertical", "horizontal") if deficits[k] < FLIP_DEFICIT]
    flips = "both" if len(ok) == 2 else (ok[0] if ok else "none")
    shown = ", ".join(f"{k} {v:.3f}" for k, v in deficits.items())
    return FlipCheck(flips, deficits, n, f"{flips}: flipping loses {shown} of the class-mean correlation on {n} "
                                         f"images (a flip is used below {FLIP_DEFICIT})")


def _corr(a: Any, b: Any) -> float:
    import numpy as np

    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 1.0


def survey(path: str | Path, task: str | None = None) -> Survey:
    """Look at ``path`` (a folder or a CSV manifest) as the data stage would read it; see the module
    docstring. ``task`` (classification or segmentation) checks the layout against it."""
    if task not in (None, "classification", "segmentation"):
        raise ValueError(f"task must be classification or segmentation, got {task!r}")
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(f"{root} does not exist")
    root = root.resolve()
    warnings: list[str] = []
    ignored: list[str] = []
    rows = None
    if root.is_file():
        if root.suffix.lower() not in (".csv", ".tsv"):
            raise ValueError(f"{root} is a file but not a CSV manifest (give a folder, or a .csv with columns "
                             "path,label or image,mask)")
        found_task, parts, names, samples, rows = _manifest(root)
        source = "csv"
        layout = f"CSV manifest ({'path,label' if found_task == 'classification' else 'image,mask'}" + \
                 (", split column)" if parts != [ALL] else ", no split column)")
        base = root.parent
    else:
        base = root
        entries = [p for p in root.iterdir() if not p.name.startswith(".")]
        if not entries:
            raise ValueError(f"{root} is empty (expected one sub-folder of images per class, images/ and masks/, "
                             "or a CSV manifest)")
        parts = [s for s in SPLITS if (root / s).is_dir()] or [ALL]
        manifests = sorted(p for p in entries if p.is_file() and p.suffix.lower() == ".csv")
        dirs = _subdirs(root)
        if parts == [ALL] and not dirs and len(manifests) == 1:
            return survey(manifests[0], task)
        _check_splits(root, parts)
        split_text = ("" if parts == [ALL] else " with split folders " + ", ".join(f"{p}/" for p in parts)
                      + ("" if "val" in parts else " (no val/: validation is held out from train/ by data.split)"))
        if _is_pair_folder(root if parts == [ALL] else root / parts[0]):
            found_task, source = "segmentation", "seg_folder"
            names, samples = ["background", "lesion"], _pair_samples(root, parts)
            layout = "segmentation folder (images/ + masks/)" + split_text
        else:
            found_task, source = "classification", "image_folder"
            names, samples = _image_folder(root, parts, warnings, ignored)
            layout = "image folder (one folder per class)" + split_text
        if not samples:
            raise ValueError(f"{root}: no images found" + (f" (ignored: {', '.join(ignored[:5])})" if ignored else ""))
    if task is not None and task != found_task:
        raise ValueError(f"{root} looks like {found_task} data ({layout}), not {task}: "
                         + ("use images/ and masks/ (or a manifest with image,mask) for segmentation"
                            if task == "segmentation" else "use one folder per class (or a manifest with "
                            "path,label) for classification"))
    if found_task == "classification":
        counts = Counter(s.label for s in samples)
        if len(names) < 2:
            only = names[0] if names else "?"
            raise ValueError(f"{root}: only one class ({only!r}, {counts.get(only, 0)} images): classification "
                             "needs at least two classes (one sub-folder of images per class)")
    _read_headers(samples, base)
    dicom = [s for s in samples if s.header and s.header.fmt == "dicom"]
    if dicom and any(s.path.suffix.lower() not in (".dcm", ".dicom") for s in dicom):
        n = sum(1 for s in dicom if s.path.suffix.lower() not in (".dcm", ".dicom"))
        warnings.append(f"{n} DICOM file(s) without a .dcm ending, recognised by their DICOM preamble")
    out = Survey(root, source, found_task, layout, parts, names, samples, propose_grouping(samples, rows),
                 ignored, warnings)
    if found_task == "segmentation":
        out.foreground = _foreground(samples)
    return out
