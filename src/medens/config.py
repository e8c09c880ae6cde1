"""Experiment specification: one validated object that names data, models, losses, training,
ensembles, evaluation and storage; loaded from YAML or from a packaged preset by name.

Every problem in a spec is reported at once, each with its YAML path, in one ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from medens.metric_names import EVALUATION_METRICS, RANKING_METRICS, SEGMENTATION_GATE_METRICS, canonical_name
from medens.registry import close_matches, unknown_name_message

DataSource = Literal[
    "synthetic_cells",
    "synthetic_smears",
    "synthetic_segmentation",
    "medmnist",
    "image_folder",
    "kermany",
    "seg_folder",
    "csv",
]
SEGMENTATION_SOURCES = {"synthetic_segmentation", "seg_folder"}


GROUP_BY_PREFIXES = ("pattern:", "column:", "dicom:")


def parse_group_by(group_by: str) -> tuple[str, str]:
    """``(kind, argument)`` of a ``data.group_by`` value; ``ValueError`` naming the problem."""
    for prefix in GROUP_BY_PREFIXES:
        if group_by.startswith(prefix):
            arg = group_by[len(prefix):]
            if not arg:
                raise ValueError(f"data.group_by {group_by!r}: nothing after {prefix!r}")
            if prefix == "dicom:" and not arg.isidentifier():
                raise ValueError(f"data.group_by {group_by!r}: {arg!r} is not a DICOM keyword such as PatientID")
            if prefix == "pattern:":
                try:
                    re.compile(arg)
                except re.error as e:
                    raise ValueError(f"data.group_by {group_by!r}: invalid regular expression ({e})") from e
            return prefix[:-1], arg
    raise ValueError(f"data.group_by {group_by!r} must start with one of {', '.join(GROUP_BY_PREFIXES)} "
                     "(e.g. 'pattern:(person\\d+)', 'column:patient_id' or 'dicom:PatientID')")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitSpec(_Spec):
    """Stratified split fractions. Sources with their own test split (MedMNIST, a Kermany
    ``test/`` folder, a manifest ``split`` column) keep it and use ``val`` of the remainder."""

    train: float = Field(0.7, gt=0, le=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitSpec:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1, got {self.train + self.val + self.test:g}")
        return self


class SyntheticSpec(_Spec):
    """Generator settings for the synthetic sources (docs/methods.md section 4.5)."""

    counts: dict[str, int] | None = Field(
        None, description="cells per class for synthetic_cells/synthetic_smears (class name -> count)"
    )
    n_images: int = Field(200, ge=1, description="number of smears or segmentation scans")
    smear_size: int = Field(256, ge=64, description="side of a smear field in pixels")
    cell_radius: float = Field(12.0, gt=2, description="cell radius in a smear, pixels")
    separation: float = Field(1.0, ge=0, le=1, description="synthetic_cells: how far the abnormal classes lie "
                              "from the normal cell (1: default morphology; smaller: more ambiguous cells, a "
                              "harder task)")


class DataSpec(_Spec):
    """Where samples come from and how class balance and splits are controlled."""

    source: DataSource = "synthetic_cells"
    path: str | None = Field(None, description="file or folder for the non-synthetic sources")
    image_size: int = Field(48, ge=8, le=1024)
    channels: Literal[1, 3] = 3
    class_names: list[str] | None = Field(None, description="class order; default from the source")
    synthetic: SyntheticSpec = Field(default_factory=SyntheticSpec)
    fractions: list[float] | None = Field(
        None, description="target class distribution reached by resample_to_ratio before splitting"
    )
    split: SplitSpec = Field(default_factory=SplitSpec)
    balance: Literal["none", "oversample", "undersample"] = Field(
        "none", description="applied to the training split only"
    )
    sampling_method: bool = Field(False, description="study 3 lesion-centred crops as a second training set")
    normalize: Literal["unit", "zscore"] = Field(
        "unit", description="unit: pixels/255; zscore: per-channel mean/std of the training split"
    )
    bit_depth: Literal[8, 16] = Field(
        8, description="stored bit depth of the pixels: 8 (uint8) or 16 (uint16: 16-bit PNG/TIFF values and "
                       "DICOM/NIfTI/NRRD/MetaImage windows keep 65536 levels until the model's normalisation, "
                       "x / 65535; 8-bit sources are widened v * 257). Recorded in every model artifact; the "
                       "endpoint decodes uploads at the same depth")
    window: list[float] | None = Field(
        None, description="VOI window [center, width] in the modality's units (CT lung: [-600, 1500]) for DICOM "
                          "and 2D NIfTI, NRRD and MetaImage files; recorded in every model artifact and applied "
                          "to such uploads at the endpoint. Default: a DICOM file's own Window Center/Width, "
                          "else the image's full range")
    group_by: str | None = Field(
        None, description="patient-level splits (medens.data.groups): 'pattern:<regex>' on each sample's "
                          "relative path (Kermany: 'pattern:(person\\d+)'), 'column:<name>' of a CSV "
                          "manifest, or 'dicom:<keyword>' of each DICOM file (e.g. 'dicom:PatientID'); every split is then group-disjoint, and given splits that share a group "
                          "are refused")
    allow_duplicates: bool = Field(
        False, description="allow byte-identical images in two splits (medens.data.duplicates; file sources "
                           "compare each file's sha256, synthetic and MedMNIST each image's pixels). By default "
                           "they are refused as a leak, naming the files; the dataset info and the report say "
                           "what the check found")

    @field_validator("window")
    @classmethod
    def _window(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) != 2 or not v[1] > 0):
            raise ValueError(f"window must be [center, width] with width > 0, got {v}")
        return v

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, v: str | None) -> str | None:
        if v is not None:
            parse_group_by(v)
        return v

    @field_validator("fractions")
    @classmethod
    def _positive(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (len(v) < 2 or any(x <= 0 for x in v)):
            raise ValueError("fractions must list at least two positive numbers")
        return v


class ComponentSpec(_Spec):
    """A registry entry: a name and its keyword parameters. YAML may give just the name."""

    name: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @property
    def key(self) -> str:
        """A stable identifier such as ``focal`` or ``focal-alpha=1.5-gamma=2``; a path-valued
        parameter (``weights_path``) appears as its file name without suffixes, since the key names
        directories and artifacts."""
        if not self.params:
            return self.name

        def show(v: Any) -> str:
            text = str(v)
            if isinstance(v, str) and ("/" in text or "\\" in text):
                text = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
            return text

        return self.name + "-" + "-".join(f"{k}={show(self.params[k])}" for k in sorted(self.params))


DEFAULT_MIN_STEPS = 300
"""The default ``training.min_steps``: a few hundred optimiser steps whatever the dataset's size
(issue 22: below that, members of a small long-tailed set collapse onto one class)."""


def _canonical_metric(v: Any) -> Any:
    """A metric setting under its canonical name: an old spelling (``f1_macro``) loads as
    ``macro_f1`` with a ``FutureWarning`` (``medens.metric_names.ALIASES``)."""
    return canonical_name(v) if isinstance(v, str) else v


class TrainingSpec(_Spec):
    """Optimiser, schedule, stopping and imbalance handling for ``medens.training.fit``."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(20, ge=1)
    patience: int | None = Field(5, ge=1, description="early stopping patience in epochs; null disables")
    monitor: str = Field("auto", description="what chooses the best epoch: val_loss (minimised) or a validation "
                         "metric (maximised: accuracy, macro_f1, mcc, balanced_accuracy; dice); auto: mcc for "
                         "classification (it sees every class, unlike accuracy), dice for segmentation")
    plateau_patience: int | None = Field(3, ge=1, description="ReduceLROnPlateau patience; null disables")
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    schedule: Literal["plateau", "cosine", "onecycle"] = Field(
        "plateau", description="plateau: ReduceLROnPlateau (off when plateau_patience is null); cosine: linear "
                               "warm-up then cosine decay per optimiser step; onecycle: torch's OneCycleLR")
    warmup_epochs: float = Field(0.0, ge=0, description="cosine: linear warm-up length in epochs (fractions allowed)")
    min_lr_ratio: float = Field(0.0, ge=0, lt=1, description="cosine: final learning rate as a fraction of lr")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradients' global norm to this; null: off")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="keep an exponential moving average of the "
                                    "weights (torch AveragedModel); each epoch it is evaluated beside the raw "
                                    "weights and kept when better; null: off")
    freeze_encoder_epochs: int = Field(0, ge=0, description="train only the head for this many epochs (the "
                                       "encoder, e.g. pretrained weights_path, frozen with its BatchNorm statistics)")
    encoder_lr_mult: float = Field(1.0, gt=0, description="the encoder's learning rate as a multiple of lr "
                                   "(fine-tuning after the frozen epochs, e.g. 0.1)")
    min_steps: int = Field(DEFAULT_MIN_STEPS, ge=0, description="at least this many optimiser steps: more epochs "
                           "when an epoch has few steps, and no early stop before them. Training length follows "
                           "steps on small data: 190 images at batch 32 are 6 steps an epoch, and 15 epochs (90 "
                           "steps, stopped early on validation loss) left every member of a long-tailed set "
                           "predicting one class; 0: epochs alone decide")
    class_weights: Literal["none", "balanced", "effective"] = "none"
    sampler: Literal["none", "balanced"] = "none"
    augment: Literal["none", "flips", "light", "strong"] = Field(
        "flips", description="training augmentation (medens.data.augment): none; flips (dihedral: flips and "
                             "90-degree rotations); light (flips + mild affine); strong (affine, zoom, noise, "
                             "contrast/gamma, intensity; a medical default). true/false mean flips/none")
    flips: Literal["both", "horizontal", "vertical", "none"] = Field(
        "both", description="the flips augmentation may use; none where laterality matters (a chest "
                            "X-ray's heart is on the left)")

    tta: Literal["none", "flips"] = Field(
        "none", description="test-time augmentation: flips averages the softmax over the flips allowed by "
                            "training.flips (4 views for both); stored in the artifact and used by every "
                            "prediction (validation, test, ensembles, serving)")
    calibrate: bool = Field(True, description="classification: fit a temperature on the validation predictions "
                            "(Guo et al. 2017), store it in model.json and apply it wherever the artifact "
                            "predicts, so members' and served probabilities are calibrated (argmax unchanged)")

    @field_validator("augment", mode="before")
    @classmethod
    def _augment_bool(cls, v: Any) -> Any:
        return {True: "flips", False: "none"}.get(v, v) if isinstance(v, bool) else v

    _monitor_name = field_validator("monitor", mode="before")(classmethod(lambda cls, v: _canonical_metric(v)))

    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool | Literal["bf16"] = Field(
        True, description="true: mixed precision on CUDA (bf16 where supported, else fp16 with a grad scaler), "
                          "float32 on CPU; bf16: bf16 autocast on any device, CPU included (no loss scaling); "
                          "false: float32 (medens.training.device.select_precision)")
    num_workers: int | None = Field(None, ge=0, description="DataLoader workers; null chooses by device")
    seed: int | None = Field(None, description="defaults to the experiment seed")


class EnsembleSpec(_Spec):
    """Which ensembles to build from the trained members."""

    methods: list[Literal["vote", "mean", "mean_la", "weighted", "greedy", "stacking"]] = Field(
        default_factory=lambda: ["vote", "mean", "weighted", "greedy", "stacking"]
    )
    top_k: list[int] = Field(default_factory=lambda: [3], description="member counts ranked by rank_metric")
    rank_metric: str = "mcc"
    _rank_metric_name = field_validator("rank_metric", mode="before")(classmethod(lambda cls, v: _canonical_metric(v)))
    model_level: bool = Field(False, description="also train a model-level ensemble of the top-k members")
    model_level_kind: Literal["feature", "embedding"] = Field(
        "feature", description="feature: 1x1 conv + pooling + dense head on frozen members (study 1); "
                               "embedding: frozen members' embeddings concatenated, dense head (study 4)")
    seg_methods: list[Literal["weighted", "majority", "intersection"]] = Field(
        default_factory=lambda: ["weighted", "majority", "intersection"]
    )

    @field_validator("top_k")
    @classmethod
    def _positive_k(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError("every top_k must be at least 1")
        return v


class ConformalSpec(_Spec):
    """Conformal prediction sets of the selected classifier (docs/methods.md, "Conformal prediction
    sets"): the stored coverage levels (the first is the endpoint's default; a request may ask for
    any of them), the conformity score and class-conditional (``mondrian``) or ``marginal`` thresholds."""

    coverage: list[float] = Field(default_factory=lambda: [0.90, 0.95], min_length=1)
    score: Literal["aps", "raps"] = "aps"
    method: Literal["mondrian", "marginal"] = "mondrian"

    @field_validator("coverage")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not 0.0 < x < 1.0]
        if bad:
            raise ValueError(f"coverage levels must be between 0 and 1 (exclusive), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"coverage levels must differ, got {v}")
        return [float(x) for x in v]


class EvaluationSpec(_Spec):
    """Statistics and explanation settings."""

    bootstrap: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    gate_metric: str = "mcc"
    _gate_metric_name = field_validator("gate_metric", mode="before")(classmethod(lambda cls, v: _canonical_metric(v)))
    alpha: float = Field(0.05, gt=0, lt=1)
    gradcam: bool = True
    gradcam_per_class: int = Field(4, ge=1)
    #: How members and systems are selected (``medens.stages.cv``): ``validation`` (the single
    #: validation split), ``cv`` (k-fold cross-validation on train + validation: k fold models per
    #: member, out-of-fold predictions rank, fit and select; the fold models are served together)
    #: or ``auto`` (cv when the validation split cannot rank systems: a class with fewer than 10
    #: validation images, or a tie at the top of the validation ranking).
    selection: Literal["validation", "cv", "auto"] = "validation"
    cv_folds: int = Field(5, ge=2, le=20)
    #: Under cv selection on small data (the rule above), add the classical member ``hog_mlp``
    #: (fixed HOG features + a trained head) to the models; ``false`` keeps the models as listed.
    classical_member: bool = True
    conformal: ConformalSpec = Field(default_factory=ConformalSpec)


IMAGENET = "imagenet"
#: Short names of architectures in member ids (``lite0-in1k__focal``); other models keep their name.
MODEL_ALIASES: dict[str, str] = {f"timm_efficientnet_lite{i}": f"lite{i}" for i in range(3)}
#: How a weights tag shows in a member id (any other tag shows as itself).
WEIGHT_TAGS: dict[str, str] = {IMAGENET: "in1k"}
_WEIGHTS_KEYS = ("weights", "weights_sha256")
#: Params that do not change the trained model (a check or a loading mode): not in member ids.
_NOT_IN_ID = ("weights_strict", "weights_sha256")
_TAG = re.compile(r"^[a-z0-9][a-z0-9_+-]*$")
_PLAIN = re.compile(r"^[A-Za-z0-9_+.-]{1,24}$")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def weights_kind(weights: str) -> Literal["tag", "s3", "file"]:
    """What a model's ``weights`` names: a tag resolved on this machine (``imagenet``; see
    :mod:`medens.models.weights`), an ``s3://`` object, or a local file (anything with a ``/`` or
    a ``.``). Other URL schemes are refused: medens never downloads weights from a hub."""
    if weights.startswith("s3://"):
        return "s3"
    if "://" in weights:
        raise ValueError(f"weights {weights!r}: only a tag (imagenet), an s3:// URI or a local path; medens "
                         "never downloads weights from a hub")
    return "tag" if _TAG.match(weights) else "file"


def model_key(name: str, params: dict[str, Any]) -> str:
    """A model's part of a member id: its alias (:data:`MODEL_ALIASES`, else its name), ``-in1k``
    (or the tag) for named weights, then the params that change the model: written out when they
    are a few short plain values (``compact_cnn-dropout=0.2``), else as the first 8 hex digits of
    the sha256 of their JSON (a weights path or URI, lists, long values)."""
    base = MODEL_ALIASES.get(name, name)
    rest = {k: v for k, v in params.items() if k not in _NOT_IN_ID}
    w = rest.get("weights")
    if isinstance(w, str) and weights_kind(w) == "tag":
        base += "-" + WEIGHT_TAGS.get(w, w)
        del rest["weights"]
    if not rest:
        return base
    shown = "-".join(f"{k}={rest[k]}" for k in sorted(rest))
    plain = all(isinstance(v, bool | int | float) or (isinstance(v, str) and _PLAIN.match(v)) for v in rest.values())
    if plain and len(shown) <= 40:
        return f"{base}-{shown}"
    return f"{base}-" + hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:8]


class ModelSpec(ComponentSpec):
    """A model of the grid: a registry name, its build ``params``, its starting ``weights`` and
    ``training`` settings that replace the experiment's for this model's members only (a
    pretrained network usually wants a lower learning rate and fewer epochs than one trained from
    scratch). The overrides are validated as :class:`TrainingSpec` fields; they do not enter the
    member id.

    ``weights``: ``imagenet`` (or another tag of a ``MEDENS_WEIGHTS_DIR`` manifest), resolved on the
    machine that trains (:mod:`medens.models.weights`); ``s3://bucket/key.pth`` with
    ``weights_sha256``; or a local path. YAML may write ``timm_efficientnet_lite0@imagenet``. They
    are build params (``medens.models.build(weights=...)``), shown at the model's top level.
    The member id is short (:func:`model_key`): ``lite0-in1k``, ``compact_cnn``."""

    training: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _weights_into_params(cls, v: Any) -> Any:
        if isinstance(v, str):
            name, at, weights = v.partition("@")
            if at and not (weights and _TAG.match(weights)):
                raise ValueError(f"model {v!r}: write name@tag (timm_efficientnet_lite0@imagenet); give a path or "
                                 "s3:// weights as {name: ..., weights: ..., weights_sha256: ...}")
            v = {"name": name, "weights": weights} if at else {"name": name}
        if isinstance(v, dict) and any(k in v for k in _WEIGHTS_KEYS):
            v, params = dict(v), dict(v.get("params") or {})
            for k in _WEIGHTS_KEYS:
                if k in v:
                    if k in params:
                        raise ValueError(f"{k} is given both at the model and in its params")
                    params[k] = v.pop(k)
            v["params"] = params
        return v

    @model_validator(mode="after")
    def _weights(self) -> ModelSpec:
        w, sha = self.params.get("weights"), self.params.get("weights_sha256")
        if w is None:
            if sha is not None:
                raise ValueError("weights_sha256 without weights")
            return self
        if not isinstance(w, str) or not w:
            raise ValueError(f"weights must be a tag (imagenet), an s3:// URI or a path, got {w!r}")
        for other in ("weights_path", "weights_strict"):
            if other in self.params:
                raise ValueError(f"weights and {other} do not go together: weights loads every tensor but the "
                                 "head's; weights_path is the older form")
        if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
            raise ValueError(f"weights_sha256 must be 64 hex digits, got {sha!r}")
        if weights_kind(w) == "s3" and sha is None:
            raise ValueError(f"weights {w}: s3:// weights need weights_sha256 (the file is verified after download)")
        return self

    @property
    def weights(self) -> str | None:
        """The model's starting weights (``params["weights"]``), or None."""
        return self.params.get("weights")

    @property
    def key(self) -> str:
        return model_key(self.name, self.params)

    @field_validator("training")
    @classmethod
    def _training(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v:
            TrainingSpec.model_validate(v)  # unknown keys and bad values fail here, with their names
        return v

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if not out.get("training"):
            out.pop("training", None)
        params = dict(out.get("params") or {})
        lifted = {k: params.pop(k) for k in _WEIGHTS_KEYS if k in params}
        if lifted:  # written where the user writes them, before params
            out = {"name": out["name"], **lifted, **{k: v for k, v in out.items() if k != "name"}, "params": params}
        return out

    def training_for(self, base: TrainingSpec) -> TrainingSpec:
        """``base`` with this model's overrides applied."""
        return TrainingSpec.model_validate({**base.model_dump(), **self.training}) if self.training else base


class StoreSpec(_Spec):
    """Where artifacts go: a local directory or ``s3://bucket/prefix`` (MinIO)."""

    uri: str = "runs"
    endpoint: str | None = Field(None, description="S3/MinIO endpoint; default from MINIO_ENDPOINT")


def _duplicate_keys(components: list[ComponentSpec], field_name: str) -> list[str]:
    """Entries that would give members the same id, each group named with its positions."""
    by_key: dict[str, list[int]] = {}
    for i, c in enumerate(components):
        by_key.setdefault(c.key, []).append(i)
    out = []
    for key, where in by_key.items():
        if len(where) < 2:
            continue
        if all(components[i] == components[where[0]] for i in where):
            out.append(f"{field_name}: listed more than once: {key}")
        else:
            out.append(f"{field_name}: entries {', '.join(map(str, where))} would give members the same id part "
                       f"{key!r}: they differ only in what does not change the model ({', '.join(_NOT_IN_ID)}); "
                       "keep one")
    return out


class ExperimentSpec(_Spec):
    """One experiment: every (model, loss) pair is trained, ensembled, evaluated and stored."""

    name: str = Field(min_length=1)
    description: str = ""
    task: Literal["classification", "segmentation"] = "classification"
    recipe: str | None = Field(None, description="a named recipe of medens (`medens recipes`, e.g. imbalanced-2d): "
                               "its training, ensemble and evaluation fields fill in every field the spec does not "
                               "set (the spec's own values win); a saved spec records them expanded")

    @model_validator(mode="before")
    @classmethod
    def _expand_recipe(cls, v: Any) -> Any:
        if isinstance(v, dict) and isinstance(v.get("recipe"), str) and v["recipe"] in recipe_names():
            return expand_recipe(v)
        return v

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, v: str | None) -> str | None:
        if v is not None and v not in recipe_names():
            raise ValueError(unknown_name_message("recipe", v, recipe_names()))
        return v

    @model_serializer(mode="wrap")
    def _omit_no_recipe(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        if out.get("recipe") is None:
            out.pop("recipe", None)
        return out
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    models: list[ModelSpec] = Field(min_length=1)
    losses: list[ComponentSpec] = Field(min_length=1)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    store: StoreSpec = Field(default_factory=StoreSpec)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentSpec:
        problems = []
        seg_source = self.data.source in SEGMENTATION_SOURCES
        if self.task == "segmentation" and not seg_source and self.data.source != "csv":
            problems.append(f"data.source: {self.data.source!r} is a classification source but task is segmentation")
        if self.task == "classification" and seg_source:
            problems.append(f"data.source: {self.data.source!r} is a segmentation source but task is classification")
        if self.data.sampling_method and self.task != "segmentation":
            problems.append("data.sampling_method: only applies to segmentation")
        names = self.data.class_names
        if names is not None and len(set(names)) != len(names):
            problems.append("data.class_names: duplicate class names")
        if self.data.fractions is not None and names is not None and len(self.data.fractions) != len(names):
            problems.append(
                f"data.fractions: {len(self.data.fractions)} fractions for {len(names)} classes"
            )
        problems += _duplicate_keys(self.models, "models") + _duplicate_keys(self.losses, "losses")
        problems += self._metric_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _metric_problems(self) -> list[str]:
        """Unknown ranking or gate metrics are refused at load time, before any training."""
        problems = []
        if self.task == "classification" and self.ensemble.rank_metric not in RANKING_METRICS:
            problems.append(f"ensemble.rank_metric: {unknown_name_message('metric', self.ensemble.rank_metric, list(RANKING_METRICS))}")
        gate_ok = list(SEGMENTATION_GATE_METRICS) if self.task == "segmentation" else [
            m for m, higher in EVALUATION_METRICS.items() if higher]
        gate = self.evaluation.gate_metric
        # "mcc" is the default; a segmentation spec that keeps it is gated on Dice
        if gate not in gate_ok and not (self.task == "segmentation" and gate == "mcc"):
            problems.append(f"evaluation.gate_metric: {unknown_name_message('gate metric', gate, gate_ok)}"
                            f" (higher-is-better {self.task} metrics only)")
        return problems

    def pairs(self) -> list[tuple[ComponentSpec, ComponentSpec]]:
        """Every (model, loss) pair, models outer."""
        return [(m, loss) for m in self.models for loss in self.losses]

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        from medens.storage.atomic import atomic_write_text

        return atomic_write_text(path, self.to_yaml())


def _format_errors(err: ValidationError, schema: type[BaseModel]) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            parent = _model_at(schema, e["loc"][:-1])
            if parent is not None:
                matches = close_matches(str(e["loc"][-1]), list(parent.model_fields))
                if matches:
                    msg += f"; did you mean {', '.join(repr(m) for m in matches)}?"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "literal_error" or e["type"].endswith("_type") or e["type"] == "missing":
                if "input" in e and e["type"] != "missing":
                    msg += f" (got {e['input']!r})"
        lines.append(f"{loc}: {msg}")
    return lines


def _model_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    model: Any = schema
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), ann)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def parse_spec(data: Any, source: str = "spec") -> ExperimentSpec:
    """Validate a mapping as an :class:`ExperimentSpec`; every problem in one ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: an experiment spec must be a mapping, got {type(data).__name__}")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        lines = _format_errors(err, ExperimentSpec)
        raise ValueError(
            f"invalid experiment spec {source} ({len(lines)} problem{'s' if len(lines) != 1 else ''}):\n  "
            + "\n  ".join(lines)
        ) from None


def preset_names() -> list[str]:
    """Names of the packaged presets (``medens/presets/*.yaml``)."""
    folder = resources.files("medens") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


RECIPE_SECTIONS = ("training", "ensemble", "evaluation")
"""The spec sections a recipe may set."""


def recipe_names() -> list[str]:
    """Names of the packaged recipes (``medens/recipes/*.yaml``)."""
    folder = resources.files("medens") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """A packaged recipe: ``{"description": ..., "training": {...}, "ensemble": {...}, "evaluation": {...}}``
    (the sections it sets, each a mapping of spec fields). ``ValueError`` with "did you mean" for an
    unknown name."""
    names = recipe_names()
    if name not in names:
        raise ValueError(unknown_name_message("recipe", name, names))
    data = yaml.safe_load((resources.files("medens") / "recipes" / f"{name}.yaml").read_text()) or {}
    unknown = sorted(set(data) - {"description", *RECIPE_SECTIONS})
    if unknown:
        raise ValueError(f"recipe {name!r}: unknown sections {', '.join(unknown)} (a recipe sets "
                         f"{', '.join(RECIPE_SECTIONS)})")
    return data


def expand_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a spec mapping) with the fields of its ``recipe`` filled in under its own: for each
    section of :data:`RECIPE_SECTIONS`, the recipe's fields, then the spec's (user values win, field
    by field). Without ``recipe`` the mapping is returned as is."""
    name = data.get("recipe")
    if not name:
        return data
    recipe = load_recipe(name)
    out = dict(data)
    for section in RECIPE_SECTIONS:
        given = data.get(section)
        if section in recipe and (given is None or isinstance(given, dict)):
            out[section] = {**recipe[section], **(given or {})}
    return out


def load_spec(name_or_path: str | os.PathLike) -> ExperimentSpec:
    """Load a spec from a YAML file path or a packaged preset name (e.g. ``rbc-demo``)."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
        return parse_spec(data, source=str(path))
    if text_name.endswith((".yaml", ".yml")) or os.sep in text_name:
        raise ValueError(f"spec file {path} does not exist")
    names = preset_names()
    if text_name not in names:
        msg = f"unknown preset {text_name!r}"
        matches = close_matches(text_name, names)
        if matches:
            msg += f"; did you mean {', '.join(repr(m) for m in matches)}?"
        raise ValueError(msg + f" (presets: {', '.join(names)}; or give a path to a YAML spec)")
    text = (resources.files("medens") / "presets" / f"{text_name}.yaml").read_text()
    return parse_spec(yaml.safe_load(text), source=f"preset {text_name}")
