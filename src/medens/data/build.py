"""The data stage: source -> validation -> imbalance control -> splits -> SplitData."""

from __future__ import annotations

import dataclasses

import numpy as np

from medens.config import DataSpec, ExperimentSpec
from medens.data import sources
from medens.data.decode import Reading, widen
from medens.data.duplicates import check_duplicates, sample_hashes
from medens.data.groups import group_split, groups_from_dicom, groups_from_pattern, leakage_problem, parse_group_by
from medens.data.imbalance import lesion_crops, oversample, resample_to_ratio, undersample_indices
from medens.data.splits import stratified_split
from medens.data.types import SPLITS, Split, SplitData
from medens.data.validate import DataProblems, check_arrays


def load_pool(data: DataSpec, seed: int) -> sources.Pool:
    """Call the source named by ``data.source``; at ``data.bit_depth`` 16, the 8-bit pixels of the
    sources that hold no more (synthetic, MedMNIST) are widened exactly (``v * 257``)."""
    pool = _source(data, seed)
    if data.bit_depth == 16:
        for name, part in pool.parts.items():
            if part.images.dtype == np.uint8:
                pool.parts[name] = dataclasses.replace(part, images=widen(np.asarray(part.images), 16))
    return pool


def reading(data: DataSpec) -> Reading:
    """How the spec's files become pixels: ``data.window`` and ``data.bit_depth``."""
    window = (float(data.window[0]), float(data.window[1])) if data.window else None
    return Reading(window=window, depth=data.bit_depth)


def _source(data: DataSpec, seed: int) -> sources.Pool:
    size, ch = data.image_size, data.channels
    read = reading(data)
    syn = data.synthetic
    if data.source == "synthetic_cells":
        return sources.synthetic_cells(syn.counts, size, ch, seed, data.class_names, syn.separation)
    if data.source == "synthetic_smears":
        return sources.synthetic_smears(syn.counts, syn.n_images, syn.smear_size, syn.cell_radius, size, ch, seed)
    if data.source == "synthetic_segmentation":
        return sources.synthetic_segmentation(syn.n_images, size, ch, seed, data.class_names)
    if data.source == "medmnist":
        return sources.medmnist(data.path, size, ch, data.class_names)
    if data.source == "image_folder":
        return sources.image_folder(data.path, size, ch, data.class_names, reading=read)
    if data.source == "kermany":
        return sources.kermany(data.path, size, ch, reading=read)
    if data.source == "seg_folder":
        return sources.seg_folder(data.path, size, ch, data.class_names, reading=read)
    if data.source == "csv":
        column = None
        if data.group_by is not None and data.group_by.startswith("column:"):
            column = data.group_by[len("column:"):]
        return sources.csv_manifest(data.path, size, ch, data.class_names, group_column=column, reading=read)
    raise ValueError(f"unknown data source {data.source!r}")  # pragma: no cover - the spec forbids it


def validate_pool(pool: sources.Pool, task: str, where: str) -> None:
    """Every problem in every part of ``pool`` in one ``ValueError``."""
    problems = DataProblems(where)
    all_ids: list[str] = []
    for name, part in pool.parts.items():
        problems.extend(check_arrays(
            part.images, ids=part.ids, labels=part.labels, masks=part.masks,
            class_names=pool.class_names, split=name,
            require_all_classes=task == "classification" and name in ("all", "train"),
        ))
        if task == "classification" and part.labels is None:
            problems.add(f"{name}: classification data needs labels")
        if task == "segmentation" and part.masks is None:
            problems.add(f"{name}: segmentation data needs masks")
        all_ids += part.ids
    seen, dupes = set(), set()
    for i in all_ids:
        (dupes if i in seen else seen).add(i)
    if dupes and len(pool.parts) > 1:
        problems.add(f"ids appear in more than one split: {', '.join(sorted(dupes)[:10])}")
    problems.raise_if_any()


def pool_groups(pool: sources.Pool, group_by: str, where: str) -> dict[str, list[str]]:
    """The group id of every sample of every part (``data.group_by``); one ``ValueError`` listing
    every sample without one."""
    kind, arg = parse_group_by(group_by)
    if kind == "column":
        if pool.groups is None:
            raise ValueError(f"data.group_by {group_by!r} names a manifest column; only data.source csv has columns "
                             f"(for file names use 'pattern:<regex>')")
        return dict(pool.groups)
    problems = DataProblems(where)
    out = {}
    for name, part in pool.parts.items():
        if kind == "dicom":
            if not pool.roots or name not in pool.roots:
                raise ValueError(f"data.group_by {group_by!r} reads DICOM headers; data.source {pool.info.get('source')} "
                                 f"has no files")
            groups, missing = groups_from_dicom([pool.roots[name] / i for i in part.ids], arg)
        else:
            groups, missing = groups_from_pattern(part.ids, arg)
        problems.extend(f"{name}: {m}" for m in missing)
        out[name] = groups
    problems.raise_if_any()
    return out


def _refuse_leakage(split_groups: dict[str, list[str]], group_by: str, where: str) -> None:
    leak = leakage_problem(split_groups, group_by)
    if leak:
        problems = DataProblems(where)
        problems.add(leak)
        problems.raise_if_any()


def _split_pool(pool: sources.Pool, data: DataSpec, task: str, seed: int,
                where: str = "data") -> tuple[dict[str, Split], dict | None]:
    """The train/val/test splits, and with ``data.group_by`` how many groups each holds."""
    f = data.split
    parts = dict(pool.parts)
    labels_of = (lambda s: s.labels) if task == "classification" else (lambda s: None)
    groups = pool_groups(pool, data.group_by, where) if data.group_by else None

    def split(part: str, fractions: tuple[float, float, float]):
        whole = parts[part]
        if groups is None:
            return stratified_split(labels_of(whole), fractions, seed=seed, n=len(whole))
        return group_split(labels_of(whole), groups[part], fractions, seed=seed)

    def pick(part: str, idx) -> list[str]:
        return [groups[part][i] for i in idx]

    out_groups: dict[str, list[str]] = {}
    if "all" in parts:
        tr, va, te = split("all", (f.train, f.val, f.test))
        whole = parts.pop("all")
        if groups is not None:
            out_groups = {"train": pick("all", tr), "val": pick("all", va), "test": pick("all", te)}
        parts = {"train": whole.subset(tr), "val": whole.subset(va), "test": whole.subset(te)}
    else:
        if "train" not in parts:
            raise ValueError(f"the source gave splits {sorted(parts)} but no training split")
        if groups is not None:
            out_groups = {name: list(groups[name]) for name in parts}
            _refuse_leakage(out_groups, data.group_by, where)  # the splits the source gave
        if "val" not in parts:
            val_frac = f.val / (f.train + f.val) if f.val > 0 else 0.0
            if val_frac == 0:
                raise ValueError("data.split.val must be > 0 when the source has no validation split")
            tr, va, _ = split("train", (1 - val_frac, val_frac, 0.0))
            train = parts["train"]
            if groups is not None:
                out_groups["train"], out_groups["val"] = pick("train", tr), pick("train", va)
            parts["train"], parts["val"] = train.subset(tr), train.subset(va)
        if "test" not in parts:
            raise ValueError("the source has train/val splits but no test split; add one or use a single pool")
    if groups is None:
        return parts, None
    _refuse_leakage(out_groups, data.group_by, where)
    return parts, {"group_by": data.group_by, "groups": {s: len(set(g)) for s, g in out_groups.items()}}


def build_dataset(spec: ExperimentSpec) -> SplitData:
    """Run the data stage of ``spec``: load, validate, control imbalance, split.

    Order (study 2): an optional ``resample_to_ratio`` on the whole pool (or the training part
    when the source has its own splits), then the stratified seeded split, then over- or
    under-sampling on the training split only. For segmentation with ``sampling_method``,
    the study 3 lesion crops of the training split are kept as ``extras['train_crops']``.
    """
    data, task, seed = spec.data, spec.task, spec.seed
    pool = load_pool(data, seed)
    validate_pool(pool, task, where=f"data source {data.source}" + (f" at {data.path}" if data.path else ""))
    k = len(pool.class_names)
    info = dict(pool.info)
    if data.fractions is not None:
        if task != "classification":
            raise ValueError("data.fractions (resample_to_ratio) applies to classification only")
        if len(data.fractions) != k:
            raise ValueError(f"data.fractions has {len(data.fractions)} entries for {k} classes {pool.class_names}")
        key = "all" if "all" in pool.parts else "train"
        part = pool.parts[key]
        kept = resample_to_ratio(part.labels, data.fractions, seed=seed)
        pool.parts[key] = part.subset(kept)
        info["resampled_to"] = list(data.fractions)
    where = f"data source {data.source}" + (f" at {data.path}" if data.path else "")
    hashes, hashed = sample_hashes(pool.parts, pool.roots)
    parts, grouping = _split_pool(pool, data, task, seed, where)
    info["split_unit"] = grouping or "image"
    info["duplicates"] = check_duplicates(parts, hashes, hashed, allow=data.allow_duplicates, where=where)
    train = parts["train"]
    if data.balance != "none":
        if task != "classification":
            raise ValueError("data.balance applies to classification only")
        if data.balance == "undersample":
            train = train.subset(undersample_indices(train.labels, seed=seed))
        else:
            images, labels, idx = oversample(train.images, train.labels, seed=seed)
            ids = [train.ids[i] if j < len(train) else f"{train.ids[i]}:aug{j}" for j, i in enumerate(idx)]
            train = Split(images=images, labels=labels, ids=ids)
        info["balance"] = data.balance
    out = SplitData(task=task, class_names=list(pool.class_names), train=train, val=parts["val"],
                    test=parts["test"], info=info)
    if data.sampling_method:
        ci, cm, cids = lesion_crops(train.images, train.masks, data.image_size, ids=train.ids)
        out.extras["train_crops"] = Split(images=ci, masks=cm, ids=cids)
        info["sampling_method_crops"] = len(cids)
    info.update({"seed": seed, "image_size": data.image_size, "channels": data.channels})
    if data.window:
        info["dicom_window"] = [float(v) for v in data.window]
    info["bit_depth"] = data.bit_depth
    return out


__all__ = ["build_dataset", "load_pool", "validate_pool", "SPLITS"]
