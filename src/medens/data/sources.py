"""Data sources. Each returns a :class:`Pool`: class names and one or more splits
(``all`` when the source has no split of its own, else some of ``train``/``val``/``test``).

Sources: synthetic cells, smears (through cell extraction) and segmentation scans; MedMNIST
``.npz`` files; image folders (one folder per class), the Kermany chest X-ray layout with the
3-class derivation of Rajaraman et al. 2021; segmentation image/mask folder pairs; CSV manifests.
Nothing is downloaded: files load from a local path, or the error says where to put them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medens.data.decode import Reading
from medens.data.types import SPLITS, Split
from medens.data.validate import DataProblems

READ8 = Reading()
"""The default reading: 8-bit pixels, DICOM files' own window."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom",
                  ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File endings an image folder is listed by (2D NIfTI, NRRD and MetaImage: :mod:`medens.data.volumes`).
Files with another ending (PACS exports named ``IM000123`` or by their SOP instance UID) are images
when their content is DICOM (the 128-byte preamble, then ``DICM``)."""
NOT_IMAGE_SUFFIXES = (".txt", ".json", ".csv", ".tsv", ".md", ".rst", ".yaml", ".yml", ".xml", ".html", ".htm",
                      ".pdf", ".py", ".log", ".ini", ".cfg", ".toml", ".sha256", ".md5", ".zip", ".tar", ".gz",
                      ".db", ".doc", ".docx", ".xls", ".xlsx", ".npy", ".npz", ".pkl")
"""Endings of obvious non-images: never opened to look for a DICOM preamble."""
NOT_IMAGE_NAMES = ("readme", "license", "licence", "notice", "changelog", "dicomdir", "thumbs.db", "desktop.ini")
"""File names (lower case, without an ending) that are never images; ``DICOMDIR`` is a DICOM media
directory (it has the preamble but no pixels)."""
KERMANY_CLASSES = ["bacterial", "normal", "viral"]
MEDMNIST_HINT = (
    "MedMNIST files are not downloaded at run time: fetch e.g. bloodmnist.npz (from the MedMNIST "
    "release on Zenodo, or `python -m medmnist save` on a machine with network) and set data.path to "
    "that file, or to a folder that holds it"
)


@dataclass
class Pool:
    """What a source returns: class names and splits keyed by ``all``/``train``/``val``/``test``."""

    class_names: list[str]
    parts: dict[str, Split]
    info: dict = field(default_factory=dict)
    groups: dict[str, list[str]] | None = None
    """Per part, the group id of each sample in order (a manifest's group column), when the source has one."""
    roots: dict[str, Path] | None = None
    """Per part, the folder its sample ids (file paths) are relative to: file sources only."""


# ---------------------------------------------------------------- file reading


def read_image(path: str | Path, channels: int, size: int | None, *, mask: bool = False,
               reading: Reading = READ8) -> np.ndarray:
    """Read one image as ``(H, W, C)`` pixels at ``reading.depth`` bits (uint8 or uint16; a mask:
    uint8 ``(H, W)``), resized to ``size``; ``reading.window`` for DICOM and the volume formats.

    Intensities follow :func:`medens.data.decode.image_to_array` (DICOM:
    :func:`medens.data.dicom.dicom_pixels`; NIfTI, NRRD, MetaImage:
    :func:`medens.data.volumes.slice_pixels`), the mappings the endpoint uses for uploads (16-bit
    images scaled over their full range; DICOM and the volume formats windowed). Masks in the
    volume formats keep their label values (0-255). Images are resized bilinearly, masks with
    nearest neighbour. Raises ``OSError``/``ValueError`` for unreadable files (callers collect them).
    """
    from PIL import Image

    from medens.data.decode import image_to_array, resize_pixels, to_channels
    from medens.data.dicom import dicom_pixels, is_dicom_file
    from medens.data.volumes import read_slice, slice_pixels, volume_suffix

    if volume_suffix(path):
        if mask:
            arr = _label_values(read_slice(path), path)
        else:
            arr = to_channels(slice_pixels(path, window=reading.window, depth=reading.depth), channels)
    elif not mask and is_dicom_file(path):
        arr = to_channels(dicom_pixels(path, window=reading.window, depth=reading.depth), channels)
    else:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L"), dtype=np.uint8) if mask else image_to_array(im, channels,
                                                                                          reading.depth)
    return arr if size is None else resize_pixels(arr, size, nearest=mask)


def _label_values(values: np.ndarray, path: str | Path) -> np.ndarray:
    """A label map read from a volume format as uint8 ``(H, W)``: whole numbers in [0, 255]."""
    if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > 255 \
            or not np.array_equal(values, np.rint(values)):
        raise ValueError(f"{path}: a mask must hold whole label values in [0, 255], got "
                         f"[{values.min():g}, {values.max():g}]")
    return values.astype(np.uint8)


def _read_many(paths: list[Path], channels: int, size: int, problems: DataProblems, *, mask: bool = False,
               reading: Reading = READ8) -> list:
    out = []
    for p in paths:
        try:
            out.append(read_image(p, channels, size, mask=mask, reading=reading))
        except Exception as e:  # PIL raises several types for bad files
            from medens.data.dicom import DicomError

            if isinstance(e, DicomError):  # its message already names the file
                problems.add(f"unusable DICOM {e}")
            else:
                problems.add(f"unreadable file {p}: {type(e).__name__}: {e}")
            out.append(None)
    return out


def _list_images(folder: Path, ignored: list[str] | None = None) -> list[Path]:
    """The images in ``folder``: files with an image ending, and files whose content is DICOM among
    the others (only their first 132 bytes are read). Hidden files and obvious non-images
    (:data:`NOT_IMAGE_SUFFIXES`, :data:`NOT_IMAGE_NAMES`) are skipped unread; what was skipped is
    appended to ``ignored`` (``"name (why)"``)."""
    from medens.data.dicom import has_dicom_preamble

    out = []
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        if not p.is_file() or name.startswith("."):
            continue
        if name.endswith(IMAGE_SUFFIXES):
            out.append(p)
        elif name.endswith(NOT_IMAGE_SUFFIXES) or name.split(".")[0] in NOT_IMAGE_NAMES:
            if ignored is not None:
                ignored.append(f"{p.name} (not an image)")
        elif has_dicom_preamble(p):
            out.append(p)
        elif ignored is not None:
            ignored.append(f"{p.name} (no image ending and no DICOM preamble)")
    return out


def _ignored_text(ignored: list[str]) -> str:
    if not ignored:
        return ""
    shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
    return f" (ignored {len(ignored)} file(s): {shown})"


def _stem(p: Path) -> str:
    """The file name without its image ending (``case1.nii.gz`` -> ``case1``)."""
    name = p.name
    ending = next((e for e in IMAGE_SUFFIXES if name.lower().endswith(e)), p.suffix)
    return name[: len(name) - len(ending)] if ending else name


def _require_path(path: str | None, source: str, hint: str) -> Path:
    if not path:
        raise ValueError(f"data.path is required for source {source!r}: {hint}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"data.path {p} does not exist (source {source!r}): {hint}")
    return p


def _masks_to_labels(masks: np.ndarray) -> np.ndarray:
    """Binary masks stored as 0/255 images become 0/1; multi-class masks keep their values."""
    values = np.unique(masks)
    if values.size <= 2 and values.max(initial=0) == 255:
        return (masks > 127).astype(np.uint8)
    return masks.astype(np.uint8)


# ---------------------------------------------------------------- synthetic


def synthetic_cells(counts: dict[str, int] | None, size: int, channels: int, seed: int,
                    class_names: list[str] | None = None, separation: float = 1.0) -> Pool:
    """Synthetic red-blood-cell crops (docs/methods.md section 4.5), any class distribution."""
    from medens.data.synthetic import CELL_CLASSES, make_cells

    names = list(class_names or CELL_CLASSES)
    if set(names) != set(CELL_CLASSES):
        raise ValueError(f"synthetic cells have classes {list(CELL_CLASSES)}, got class_names {names}")
    counts = counts or {c: 200 for c in CELL_CLASSES}
    unknown = sorted(set(counts) - set(CELL_CLASSES))
    if unknown:
        raise ValueError(f"data.synthetic.counts: unknown class(es) {unknown}; cell classes are {list(CELL_CLASSES)}")
    images, labels, _ = make_cells({c: counts.get(c, 0) for c in CELL_CLASSES}, size=size, seed=seed,
                                   separation=separation)
    # Re-index labels to the requested class order.
    remap = np.array([names.index(c) for c in CELL_CLASSES])
    labels = remap[labels]
    images = _to_channels(images, channels)
    ids = [f"cell-{i:05d}" for i in range(len(labels))]
    return Pool(names, {"all": Split(images=images, labels=labels.astype(np.int64), ids=ids)},
                {"source": "synthetic_cells", "counts": dict(counts), "separation": separation})


def synthetic_smears(counts: dict[str, int] | None, n_images: int, smear_size: int, cell_radius: float,
                     size: int, channels: int, seed: int) -> Pool:
    """Cells cut out of synthetic smears by the study 2 extraction algorithm.

    Each detection takes the class of the ground-truth cell it matches; unmatched detections
    (false positives) are dropped and counted in ``info``.
    """
    from medens.data.cells import extract_cells, match_detections
    from medens.data.synthetic import CELL_CLASSES, make_smears

    fractions = None
    if counts:
        total = sum(counts.values())
        fractions = [counts.get(c, 0) / total for c in CELL_CLASSES]
    smears, truth = make_smears(n_images, size=smear_size, cell_radius=cell_radius,
                                class_fractions=fractions, seed=seed)
    crops, labels, ids = [], [], []
    n_true = n_false = 0
    for i, (smear, cells) in enumerate(zip(smears, truth)):
        c, dets = extract_cells(smear, target_size=size, expected_radius=cell_radius)
        match = match_detections(dets, cells)
        n_true += len(cells)
        matched = dict(match["matches"])
        n_false += len(dets) - len(matched)
        for d_i, t_j in sorted(matched.items()):
            crops.append(c[d_i])
            labels.append(cells[t_j]["label"])
            ids.append(f"smear-{i:04d}-cell-{t_j:03d}")
    if not crops:
        raise ValueError("cell extraction found no cells in the synthetic smears")
    images = _to_channels(np.stack(crops), channels)
    return Pool(list(CELL_CLASSES), {"all": Split(images=images, labels=np.asarray(labels, np.int64), ids=ids)},
                {"source": "synthetic_smears", "cells_in_smears": n_true, "cells_extracted": len(crops),
                 "false_detections": n_false})


def synthetic_segmentation(n_images: int, size: int, channels: int, seed: int,
                           class_names: list[str] | None = None) -> Pool:
    """Synthetic grey scans with low-contrast lesions and lesion masks (docs/methods.md section 4.5)."""
    from medens.data.synthetic import make_segmentation

    images, masks = make_segmentation(n_images, size=size, seed=seed)
    images = _to_channels(images, channels)
    ids = [f"scan-{i:05d}" for i in range(n_images)]
    names = list(class_names or ["background", "lesion"])
    if len(names) != 2:
        raise ValueError(f"synthetic segmentation has 2 classes (background, lesion), got class_names {names}")
    return Pool(names, {"all": Split(images=images, masks=masks.astype(np.uint8), ids=ids)},
                {"source": "synthetic_segmentation"})


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    if images.ndim == 3:
        images = images[..., None]
    c = images.shape[-1]
    if c == channels:
        return images
    if c == 3 and channels == 1:
        grey = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
    if c == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


# ---------------------------------------------------------------- MedMNIST


def medmnist(path: str | None, size: int, channels: int, class_names: list[str] | None = None) -> Pool:
    """A MedMNIST ``.npz`` file: ``{train,val,test}_images`` and ``{train,val,test}_labels``.

    Images are ``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB uint8; labels ``(N, 1)`` class indices.
    Multi-label files (ChestMNIST) are refused.
    """
    p = _require_path(path, "medmnist", MEDMNIST_HINT)
    if p.is_dir():
        files = sorted(p.glob("*.npz"))
        if len(files) != 1:
            raise ValueError(f"data.path {p} is a folder with {len(files)} .npz files; point it at one file. {MEDMNIST_HINT}")
        p = files[0]
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"cannot read MedMNIST file {p}: {type(e).__name__}: {e}") from e
    with z:
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in z.files]
        if missing:
            raise ValueError(f"{p} is not a MedMNIST file: missing arrays {', '.join(missing)} (has {', '.join(z.files)})")
        parts = {}
        max_label = -1
        for s in SPLITS:
            images = z[f"{s}_images"]
            labels = z[f"{s}_labels"]
            if labels.ndim == 2 and labels.shape[1] != 1:
                raise ValueError(f"{p}: {s}_labels has shape {labels.shape}: multi-label MedMNIST is not supported")
            labels = labels.reshape(-1).astype(np.int64)
            if images.ndim == 3:
                images = images[..., None]
            if images.ndim == 4 and images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
                images = np.moveaxis(images, 1, -1)
            if np.issubdtype(images.dtype, np.floating):
                if np.isfinite(images).all():
                    scale = 255.0 if images.max(initial=0) <= 1.0 else 1.0
                    images = np.clip(np.rint(images * scale), 0, 255).astype(np.uint8)
                # Non-finite pixels are left for validation to report.
            if images.ndim == 4 and images.dtype == np.uint8:
                images = _to_channels(images, channels)
                if images.shape[1] != size or images.shape[2] != size:
                    images = _resize_stack(images, size)
            max_label = max(max_label, int(labels.max(initial=-1)))
            parts[s] = Split(images=images, labels=labels.astype(np.int64),
                             ids=[f"{s}-{i:06d}" for i in range(len(labels))])
    names = list(class_names) if class_names else [str(i) for i in range(max_label + 1)]
    return Pool(names, parts, {"source": "medmnist", "file": str(p)})


def _resize_stack(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = []
    for im in images:
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        arr = np.asarray(pil.resize((size, size), Image.BILINEAR), dtype=np.uint8)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return np.stack(out)


# ---------------------------------------------------------------- image folders


def _class_folders(root: Path, class_names: list[str] | None, problems: DataProblems) -> list[str]:
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_names is None:
        if not found:
            problems.add(f"{root}: no class folders (expected one sub-folder per class)")
        return found
    for c in class_names:
        if c not in found:
            problems.add(f"{root}: class folder {c!r} is missing")
    for c in found:
        if c not in class_names:
            problems.add(f"{root}: folder {c!r} is not in data.class_names {class_names}")
    return list(class_names)


def _load_class_folders(root: Path, names: list[str], size: int, channels: int, problems: DataProblems,
                        split: str, reading: Reading = READ8) -> Split | None:
    paths, labels = [], []
    for k, c in enumerate(names):
        folder = root / c
        if not folder.is_dir():
            continue
        ignored: list[str] = []
        files = _list_images(folder, ignored)
        if not files:
            problems.add(f"{split}: class {c!r} has no images in {folder}{_ignored_text(ignored)}")
        paths += files
        labels += [k] * len(files)
    return _assemble(paths, labels, size, channels, problems, root, reading)


_SCRATCH: list[Path] = []


def _scratch_file() -> Path:
    """A new file in this process's scratch folder (removed when the process exits)."""
    import atexit
    import shutil
    import tempfile
    import uuid

    if not _SCRATCH:
        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="medens-pool-")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0] / f"{uuid.uuid4().hex}.npy"


def _read_to_disk(paths: list[Path], channels: int, size: int, problems: DataProblems, reading: Reading = READ8,
                  *, mask: bool = False):
    """Decode ``paths`` one by one into an on-disk array (a scratch ``.npy``): a pool larger than
    memory is read without holding it. Returns the ``FileArray`` of every file's row (zeros where a
    file was unreadable) and the indices of the readable ones. ``mask``: uint8 ``(size, size)`` rows."""
    from tqdm.auto import tqdm

    from medens.data.filearray import FileArray, NpyWriter

    shape, dtype = ((size, size), np.uint8) if mask else ((size, size, channels), reading.dtype)
    path, keep = _scratch_file(), []
    with NpyWriter(path, len(paths), shape, dtype) as w:
        for i, p in enumerate(tqdm(paths, desc="reading masks" if mask else "reading images", unit="img",
                                   leave=False, disable=None)):
            a = _read_many([p], channels, size, problems, mask=mask, reading=reading)[0]
            if a is not None:
                keep.append(i)
            w.append((a if a is not None else np.zeros(shape, dtype))[None])
    return FileArray(path), keep


def _masks_to_disk_labels(masks):
    """:func:`_masks_to_labels` for on-disk masks, in row chunks: 0/255 masks are rewritten as 0/1."""
    from medens.data.filearray import FileArray, NpyWriter, iter_rows

    values = np.unique(np.concatenate([np.unique(c) for c in iter_rows(masks)] or [np.zeros(0, np.uint8)]))
    if not (values.size <= 2 and values.max(initial=0) == 255):
        return masks
    path = _scratch_file()
    with NpyWriter(path, len(masks), tuple(masks.shape[1:]), np.uint8) as w:
        for c in iter_rows(masks):
            w.append((c > 127).astype(np.uint8))
    return FileArray(path)


def _assemble(paths: list[Path], labels: list[int], size: int, channels: int, problems: DataProblems,
              root: Path, reading: Reading = READ8) -> Split | None:
    from medens.data.types import lazy_bytes

    if len(paths) * size * size * channels > lazy_bytes():  # larger than memory should hold: on disk
        images, keep = _read_to_disk(paths, channels, size, problems, reading)
        images = images.take(keep)
    else:
        arrays = _read_many(paths, channels, size, problems, reading=reading)
        keep = [i for i, a in enumerate(arrays) if a is not None]
        images = np.stack([arrays[i] for i in keep]) if keep else None
    if not keep:
        return None
    ids = [str(paths[i].relative_to(root)) if paths[i].is_relative_to(root) else str(paths[i]) for i in keep]
    return Split(images=images, labels=np.asarray([labels[i] for i in keep], np.int64), ids=ids)


def image_folder(path: str | None, size: int, channels: int, class_names: list[str] | None = None,
                 reading: Reading = READ8) -> Pool:
    """One folder per class (``root/<class>/*.png``), or ``root/{train,val,test}/<class>/``."""
    root = _require_path(path, "image_folder", "point it at a folder with one sub-folder of images per class")
    problems = DataProblems(str(root))
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    parts = {}
    if split_dirs:
        names = _class_folders(root / split_dirs[0], class_names, problems)
        for s in split_dirs:
            part = _load_class_folders(root / s, names, size, channels, problems, s, reading)
            if part is not None:
                parts[s] = part
    else:
        names = _class_folders(root, class_names, problems)
        part = _load_class_folders(root, names, size, channels, problems, "all", reading)
        if part is not None:
            parts["all"] = part
    problems.raise_if_any()
    return Pool(names, parts, {"source": "image_folder", "path": str(root)},
                roots={s: root / s if s in SPLITS else root for s in parts})


def kermany_class(path: Path) -> str | None:
    """3-class label of a Kermany chest X-ray (Rajaraman et al. 2021): NORMAL -> normal;
    PNEUMONIA split by file name into bacterial (``*_bacteria_*``) and viral (``*_virus_*``)."""
    parent = path.parent.name.upper()
    if parent == "NORMAL":
        return "normal"
    if parent == "PNEUMONIA":
        name = path.name.lower()
        if "_bacteria_" in name:
            return "bacterial"
        if "_virus_" in name:
            return "viral"
    return None


def kermany(path: str | None, size: int, channels: int, reading: Reading = READ8) -> Pool:
    """The Kermany layout (``train/``, ``test/`` and optional ``val/`` with ``NORMAL/`` and
    ``PNEUMONIA/``), relabelled into bacterial / normal / viral. ``val/`` (16 images in the
    release) is merged into train; validation is then held out from train by ``data.split``."""
    hint = "point it at the chest_xray folder of the Kermany release, holding train/ and test/ with NORMAL/ and PNEUMONIA/"
    root = _require_path(path, "kermany", hint)
    problems = DataProblems(str(root))
    parts: dict[str, Split] = {}
    groups = {"train": ["train", "val"], "test": ["test"]}
    for part, dirs in groups.items():
        paths, labels = [], []
        for d in dirs:
            for cls in ("NORMAL", "PNEUMONIA"):
                folder = root / d / cls
                if not folder.is_dir():
                    if d != "val":
                        problems.add(f"missing folder {folder} ({hint})")
                    continue
                for f in _list_images(folder):
                    c = kermany_class(f)
                    if c is None:
                        problems.add(f"{f}: PNEUMONIA file name has neither '_bacteria_' nor '_virus_'")
                        continue
                    paths.append(f)
                    labels.append(KERMANY_CLASSES.index(c))
        split = _assemble(paths, labels, size, channels, problems, root, reading)
        if split is not None:
            parts[part] = split
    problems.raise_if_any()
    return Pool(list(KERMANY_CLASSES), parts, {"source": "kermany", "path": str(root)}, roots=dict.fromkeys(parts, root))


# ---------------------------------------------------------------- segmentation folders and manifests


def _pair_folder(root: Path, size: int, channels: int, problems: DataProblems, split: str,
                 reading: Reading = READ8) -> Split | None:
    img_dir, mask_dir = root / "images", root / "masks"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            problems.add(f"{split}: missing folder {d} (expected images/ and masks/ with matching file names)")
    if problems.items:
        return None
    masks_by_stem = {_stem(p): p for p in _list_images(mask_dir)}
    image_paths, mask_paths = [], []
    for p in _list_images(img_dir):
        m = masks_by_stem.pop(_stem(p), None) or masks_by_stem.pop(_stem(p) + "_mask", None)
        if m is None:
            problems.add(f"{split}: image {p.name} has no mask in {mask_dir}")
            continue
        image_paths.append(p)
        mask_paths.append(m)
    for stem in sorted(masks_by_stem):
        problems.add(f"{split}: mask {masks_by_stem[stem].name} has no image in {img_dir}")
    return _assemble_pairs(image_paths, mask_paths, size, channels, problems, root, reading)


def _assemble_pairs(image_paths: list[Path], mask_paths: list[Path], size: int, channels: int,
                    problems: DataProblems, root: Path, reading: Reading = READ8) -> Split | None:
    from medens.data.types import lazy_bytes

    if len(image_paths) * size * size * channels > lazy_bytes():  # on disk, images and masks alike
        img_arr, img_ok = _read_to_disk(image_paths, channels, size, problems, reading)
        mask_arr, mask_ok = _read_to_disk(mask_paths, channels, size, problems, mask=True)
        keep = sorted(set(img_ok) & set(mask_ok))
        if not keep:
            return None
        images, masks = img_arr.take(keep), _masks_to_disk_labels(mask_arr.take(keep))
    else:
        imgs = _read_many(image_paths, channels, size, problems, reading=reading)
        raw = _read_many(mask_paths, channels, size, problems, mask=True)
        keep = [i for i in range(len(imgs)) if imgs[i] is not None and raw[i] is not None]
        if not keep:
            return None
        images, masks = np.stack([imgs[i] for i in keep]), _masks_to_labels(np.stack([raw[i] for i in keep]))
    ids = [str(image_paths[i].relative_to(root)) if image_paths[i].is_relative_to(root) else str(image_paths[i])
           for i in keep]
    return Split(images=images, masks=masks, ids=ids)


def seg_folder(path: str | None, size: int, channels: int, class_names: list[str] | None = None,
               reading: Reading = READ8) -> Pool:
    """Image/mask pairs: ``root/images/x.png`` with ``root/masks/x.png`` (or ``x_mask.png``),
    optionally under ``root/{train,val,test}/``. Binary masks saved as 0/255 become 0/1."""
    root = _require_path(path, "seg_folder",
                         "point it at a folder with images/ and masks/ (e.g. the Kvasir-SEG release)")
    problems = DataProblems(str(root))
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    parts = {}
    for s in split_dirs or ["all"]:
        part = _pair_folder(root if s == "all" else root / s, size, channels, problems, s, reading)
        if part is not None:
            parts[s] = part
    problems.raise_if_any()
    return Pool(list(class_names or ["background", "lesion"]), parts, {"source": "seg_folder", "path": str(root)},
                roots={s: root / s if s in SPLITS else root for s in parts})


def csv_manifest(path: str | None, size: int, channels: int, class_names: list[str] | None = None,
                 group_column: str | None = None, reading: Reading = READ8) -> Pool:
    """A CSV manifest with a header: ``path,label`` (classification) or ``image,mask``
    (segmentation), and an optional ``split`` column (train/val/test). Relative paths are
    relative to the CSV's folder. Labels are class names (or indices into ``class_names``).
    ``group_column`` names a column holding each sample's group (patient) id."""
    p = _require_path(path, "csv", "point it at a CSV with columns path,label or image,mask")
    problems = DataProblems(str(p))
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{p}: the manifest has no rows")
    cols = set(rows[0])
    base = p.parent
    if {"path", "label"} <= cols:
        seg = False
    elif {"image", "mask"} <= cols:
        seg = True
    else:
        raise ValueError(f"{p}: columns must include path,label or image,mask; found {', '.join(sorted(cols))}")
    has_split = "split" in cols
    if group_column is not None and group_column not in cols:
        raise ValueError(f"{p}: data.group_by names column {group_column!r}, which the manifest does not have "
                         f"(columns: {', '.join(sorted(cols))})")
    groups: dict[str, list[tuple[int, dict]]] = {}
    for line, row in enumerate(rows, start=2):
        s = (row.get("split") or "").strip() if has_split else "all"
        if s not in (*SPLITS, "all") or (has_split and s == "all"):
            problems.add(f"line {line}: split {s!r} is not one of train, val, test")
            continue
        groups.setdefault(s, []).append((line, row))
    names = list(class_names) if class_names else None
    if not seg and names is None:
        raw = sorted({r["label"].strip() for r in rows})
        names = raw
    parts, part_groups = {}, {}
    for s, items in groups.items():
        kept_groups = []
        if group_column is not None:
            for line, r in items:
                if not (r.get(group_column) or "").strip():
                    problems.add(f"line {line}: missing group id in column {group_column!r}")
        if seg:
            part = _assemble_pairs([base / r["image"] for _, r in items], [base / r["mask"] for _, r in items],
                                   size, channels, problems, base, reading)
            kept_groups = [(r.get(group_column) or "").strip() for _, r in items] if group_column else []
        else:
            paths, labels = [], []
            for line, r in items:
                lab = r["label"].strip()
                if lab in names:
                    k = names.index(lab)
                elif lab.lstrip("-").isdigit():
                    k = int(lab)  # validated against the class list later
                else:
                    problems.add(f"line {line}: label {lab!r} is not one of {names}")
                    continue
                paths.append(base / r["path"])
                labels.append(k)
                if group_column:
                    kept_groups.append((r.get(group_column) or "").strip())
            part = _assemble(paths, labels, size, channels, problems, base, reading)
        if part is not None:
            parts[s] = part
            part_groups[s] = kept_groups
    problems.raise_if_any()
    return Pool(names or ["background", "lesion"], parts, {"source": "csv", "path": str(p)},
                groups=part_groups if group_column else None, roots=dict.fromkeys(parts, base))
