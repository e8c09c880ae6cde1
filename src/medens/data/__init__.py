"""Data layer: sources, validation, imbalance control, splits and transforms.

Importing this package is cheap (no torch); the heavy modules load on first use.
"""

from medens.data.imbalance import (
    balanced_class_weights,
    class_counts,
    effective_number_weights,
    imbalance_ratio,
    lesion_crop_box,
    lesion_crops,
    oversample,
    oversample_indices,
    resample_to_ratio,
    sample_weights,
    target_counts,
    undersample_indices,
    weighted_sampler,
)
from medens.data.splits import stratified_kfold, stratified_split
from medens.data.types import SPLITS, Split, SplitData


def build_dataset(spec):  # noqa: ANN001, ANN201 - thin lazy re-export
    """Run the data stage of an ExperimentSpec; see :func:`medens.data.build.build_dataset`."""
    from medens.data.build import build_dataset as _build

    return _build(spec)


__all__ = [
    "SPLITS",
    "Split",
    "SplitData",
    "balanced_class_weights",
    "build_dataset",
    "class_counts",
    "effective_number_weights",
    "imbalance_ratio",
    "lesion_crop_box",
    "lesion_crops",
    "oversample",
    "oversample_indices",
    "resample_to_ratio",
    "sample_weights",
    "stratified_kfold",
    "stratified_split",
    "target_counts",
    "undersample_indices",
    "weighted_sampler",
]
