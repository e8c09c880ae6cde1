"""The model zoo: classification (``MODELS``) and segmentation (``SEG_MODELS``) architectures.

One entry point builds either kind::

    model = build("densenet121", in_channels=1, num_classes=3)
    seg = build("unet", in_channels=1, num_classes=2, task="segmentation", spatial_dims=3)
    same = build(**model.build_kwargs)          # what a model artifact records

Classification models share the timm interface (``forward_features``, ``forward_head``,
``num_classes``, ``feature_channels``, ``cam_layer``, ``min_input_size``); see
:class:`ClassifierModel`. Weights are never downloaded; ``weights_path`` loads a local file.
"""

from __future__ import annotations

from medens.models import classification as classification
from medens.models import custom as custom  # after classification: the registry's order
from medens.models import fusion as fusion
from medens.models import hog as hog
from medens.models import segmentation as segmentation
from medens.models import timm_models as timm_models
from medens.models._build import TASKS, build, describe, names
from medens.models._common import (
    MODELS,
    SEG_MODELS,
    ClassifierModel,
    SegmentationModel,
    check_input_size,
    count_parameters,
    load_weights,
)
from medens.models.artifact import LoadedModel, load_artifact
from medens.models.custom import CompactCNN, DarkNetBranch, QuadSNet, Study4CustomCNN

__all__ = [
    "MODELS",
    "SEG_MODELS",
    "TASKS",
    "ClassifierModel",
    "CompactCNN",
    "DarkNetBranch",
    "LoadedModel",
    "QuadSNet",
    "SegmentationModel",
    "Study4CustomCNN",
    "build",
    "check_input_size",
    "count_parameters",
    "describe",
    "load_artifact",
    "load_weights",
    "names",
]
