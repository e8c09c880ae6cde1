"""Model-level ensembles: frozen members fused at their feature layer (docs/methods.md section 5.3).

Two fusions, both :class:`~medens.models.ClassifierModel` s with the uniform interface, so
training (``medens.training.fit``), artifacts and Grad-CAM treat them like any other model:

- :class:`FeatureFusion` (registry name ``feature_fusion``), study 1 (Rajaraman, Zamzmi, Antani,
  PLoS ONE 16(12) e0261307, 2021): every member is cut at its feature layer (``cam_layer``, the
  deepest conv layer), the feature maps are brought to a common grid, concatenated on channels
  and fed to a trainable 1x1 conv (512 filters) + ReLU -> global average pooling -> linear head.
- :class:`EmbeddingFusion` (registry name ``embedding_fusion``), study 4 (ensemble of CNNs for
  pediatric pneumonia, docs/methods.md section 2.4): every member gives one embedding vector, the vectors
  are concatenated and a single linear layer classifies them.

Members are frozen: their parameters have ``requires_grad=False`` and they stay in eval mode even
when the fusion is put in ``train()``, so batch-norm running statistics and dropout never change
them; fusion training leaves member weights bit for bit unchanged.

Self-contained artifacts: a fusion is built from member *architecture specs* (``members``: what
``model.json`` records under ``"architecture"``), and every member weight lives in the fusion's
own ``state_dict``. ``medens.training.fusion.fit_fusion`` trains one from member artifact
directories (with :func:`fusion_spec` and :func:`fusion_init_state` from here); the fused
artifact's ``weights.pt`` holds members and head, so ``load_artifact`` rebuilds it from its
``model.json`` alone, without the member directories.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from medens.models._build import build
from medens.models._common import MODELS, ClassifierModel, register
from medens.models.artifact import STARTING_WEIGHTS, load_artifact, read_manifest

if TYPE_CHECKING:
    from medens.config import ComponentSpec

__all__ = [
    "EmbeddingFusion",
    "FeatureFusion",
    "FusionMembers",
    "MemberInfo",
    "embedding_fusion",
    "feature_fusion",
    "fusion_init_state",
    "fusion_spec",
    "read_members",
]

KINDS = ("feature", "embedding")
EMBEDDINGS = ("pooled", "penultimate")

_STUDY1_REF = (
    "Rajaraman, Zamzmi, Antani. Novel loss functions for ensemble-based medical image classification. "
    "PLoS ONE 16(12) e0261307, 2021 (model-level ensembles)"
)
_STUDY4_REF = "Study 4 (docs/methods.md section 2.4): ensemble of pretrained CNNs for pediatric pneumonia (concatenated embeddings)"


# ---------------------------------------------------------------- members


def _member_spec(spec: Any, i: int) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ValueError(
            f"members[{i}] must be a mapping {{'name': <model name>, 'kwargs': {{...}}}} (a model.json "
            f"'architecture'), got {spec!r}"
        )
    unknown = set(spec) - {"name", "kwargs", "task"}
    if unknown:
        raise ValueError(f"members[{i}] has unknown keys {sorted(unknown)}; expected 'name' and 'kwargs'")
    if spec.get("task", "classification") != "classification":
        raise ValueError(f"members[{i}] is a {spec['task']} model; fusion needs classification members")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"members[{i}]['kwargs'] must be a mapping, got {kwargs!r}")
    return spec["name"], dict(kwargs)


def _freeze(member: nn.Module) -> nn.Module:
    for p in member.parameters():
        p.requires_grad_(False)
    return member.eval()


class FusionMembers(nn.Module):
    """The frozen members of a fusion and their feature maps.

    Attributes:
        members: ``nn.ModuleList`` of :class:`ClassifierModel` s (state_dict keys ``members.<i>.*``).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        """Freeze and hold ``members`` (classification models with ``forward_features``)."""
        super().__init__()
        if len(members) < 1:
            raise ValueError("a fusion needs at least one member")
        for i, m in enumerate(members):
            if not isinstance(m, ClassifierModel):
                raise ValueError(f"member {i} ({type(m).__name__}) is not a medens classification model")
        self.members = nn.ModuleList(_freeze(m) for m in members)

    def train(self, mode: bool = True) -> FusionMembers:
        """Members stay in eval mode whatever ``mode`` is (frozen BN statistics, no dropout)."""
        super().train(mode)
        self.members.train(False)
        return self

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``B x C x H x W`` -> each member's feature map (its ``cam_layer`` output)."""
        return [m.forward_features(x) for m in self.members]


def _common_grid(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Adaptive-average-pool every map to the smallest height and width among them."""
    h = min(int(f.shape[-2]) for f in maps)
    w = min(int(f.shape[-1]) for f in maps)
    return [f if tuple(f.shape[-2:]) == (h, w) else F.adaptive_avg_pool2d(f, (h, w)) for f in maps]


class _FeatureFusionFeatures(nn.Module):
    """Members -> common grid -> concatenation -> ``fuse`` (1x1 conv + ReLU)."""

    def __init__(self, members: Sequence[nn.Module], channels: int) -> None:
        super().__init__()
        self.frozen = FusionMembers(members)
        in_ch = sum(int(m.feature_channels) for m in self.frozen.members)
        self.fuse = nn.Sequential()
        self.fuse.add_module("conv", nn.Conv2d(in_ch, channels, kernel_size=1))
        self.fuse.add_module("act", nn.ReLU(inplace=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat(_common_grid(self.frozen.feature_maps(x)), dim=1))


def _penultimate_layers(member: ClassifierModel, i: int) -> list[nn.Module]:
    """The member's head without its final linear layer (pooling, flatten, dense layers)."""
    head = member.head
    if not (isinstance(head, nn.Sequential) and len(head) > 1 and isinstance(head[-1], nn.Linear)):
        raise ValueError(
            f"member {i} ({member.name}) has no penultimate embedding: its head is not a sequence ending in "
            "a linear layer; use embedding='pooled'"
        )
    return list(head)[:-1]


class _EmbeddingFusionFeatures(nn.Module):
    """Members -> one embedding vector each -> concatenation, returned as ``B x D x 1 x 1``."""

    def __init__(self, members: Sequence[nn.Module], embedding: str) -> None:
        super().__init__()
        self.frozen = FusionMembers(members)
        self.embedding = embedding
        self.dims: list[int] = []
        for i, m in enumerate(self.frozen.members):
            if embedding == "penultimate":
                _penultimate_layers(m, i)
                self.dims.append(int(m.head[-1].in_features))
            else:
                self.dims.append(int(m.feature_channels))

    def _embed(self, i: int, m: ClassifierModel, f: torch.Tensor) -> torch.Tensor:
        if self.embedding == "penultimate":
            for layer in _penultimate_layers(m, i):
                f = layer(f)
            return f.flatten(1)
        return f.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.frozen.feature_maps(x)
        vec = torch.cat([self._embed(i, m, f) for i, (m, f) in enumerate(zip(self.frozen.members, maps))], dim=1)
        return vec[:, :, None, None]


class _Fusion(ClassifierModel):
    """Shared pieces: frozen members, member specs, self-contained ``build_kwargs``."""

    features: nn.Module

    @property
    def members(self) -> nn.ModuleList:
        """The frozen member models (``features.frozen.members``)."""
        return self.features.frozen.members

    @property
    def member_specs(self) -> list[dict[str, Any]]:
        """``[{"name", "kwargs"}, ...]``: the members' architectures, fully resolved."""
        out = []
        for m in self.members:
            kw = {k: v for k, v in getattr(m, "build_kwargs", {}).items() if k not in ("name", "task")}
            out.append({"name": m.name, "kwargs": kw})
        return out

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """As for every model, but self-contained: ``members`` always holds the member specs and
        the init-only ``member_artifacts`` is dropped, so ``build(**build_kwargs)`` needs no member
        directory (the weights come from the fused artifact's ``weights.pt``)."""
        return self._build_kwargs

    @build_kwargs.setter
    def build_kwargs(self, value: dict[str, Any]) -> None:
        value = dict(value)
        if "name" in value:
            value["members"] = self.member_specs
            value["member_artifacts"] = None
        self._build_kwargs = value


class FeatureFusion(_Fusion):
    """Model-level ensemble of frozen members fused at their feature layer (study 1).

    Rajaraman, Zamzmi, Antani (PLoS ONE 16(12) e0261307, 2021) cut each trained member at its
    deepest conv layer, concatenate the feature maps and train a 1x1 conv (512 filters), global
    average pooling and a dense softmax layer on top. Here each member's
    :meth:`~ClassifierModel.forward_features` (its ``cam_layer`` output) is adaptive-average-pooled
    to the smallest member grid (members with different strides can be fused), concatenated on
    channels, and passed through a 1x1 conv with ``channels`` filters followed by ReLU (the paper
    does not name the activation; ReLU is our choice) -> global average pooling -> [dropout] ->
    linear to ``num_classes`` logits.

    ``cam_layer`` is ``features.fuse`` (the 1x1 conv + ReLU block), so Grad-CAM (Selvaraju et al.,
    ICCV 2017) explains the fused model on the members' common grid, and ``forward_features``
    returns exactly that block's output. Members are frozen (see module docstring).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        num_classes: int,
        *,
        channels: int = 512,
        dropout: float = 0.0,
    ) -> None:
        """Fuse ``members`` (built :class:`ClassifierModel` s; they are frozen in place)."""
        if int(channels) < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        features = _FeatureFusionFeatures(members, int(channels))
        layers: list[tuple[str, nn.Module]] = [("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten(1))]
        if dropout > 0:
            layers.append(("dropout", nn.Dropout(float(dropout))))
        layers.append(("fc", nn.Linear(int(channels), int(num_classes))))
        ms = features.frozen.members
        super().__init__(
            features,
            nn.Sequential(OrderedDict(layers)),
            name="feature_fusion",
            in_channels=ms[0].in_channels,
            num_classes=num_classes,
            feature_channels=int(channels),
            cam_layer="features.fuse",
            min_input_size=max(int(m.min_input_size) for m in ms),
        )


class EmbeddingFusion(_Fusion):
    """Concatenated member embeddings -> one linear layer (study 4).

    Study 4 (ensemble of pretrained CNNs for pediatric pneumonia, docs/methods.md section 2.4) passes each
    frozen branch through global pooling -> dense 16 -> dense 8, concatenates the nine 8-d vectors
    and classifies them with one sigmoid unit. Here the member embedding is either its globally
    average-pooled feature map (``embedding="pooled"``, ``feature_channels`` values) or the input
    of its final linear layer (``embedding="penultimate"``: for the study-4 branches
    ``study4_custom_cnn``/``darknet_branch``, exactly the dense-8 vector). The concatenation goes
    to one linear layer with ``num_classes`` outputs; study 4's single sigmoid unit is the binary
    case (``num_classes=2`` logits with softmax carry the same information as one logit with a
    sigmoid: ``sigmoid(z1 - z0)``).

    ``forward_features`` returns the concatenated embedding as a ``B x D x 1 x 1`` map and
    ``cam_layer`` is ``features``. That map has no spatial extent, so Grad-CAM on it is flat; to
    see where the fused model looks, pass a member layer, e.g.
    ``layer=f"features.frozen.members.0.{model.members[0].cam_layer}"``.
    """

    def __init__(self, members: Sequence[nn.Module], num_classes: int, *, embedding: str = "pooled") -> None:
        """Fuse ``members`` (built :class:`ClassifierModel` s; they are frozen in place)."""
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {', '.join(map(repr, EMBEDDINGS))}, got {embedding!r}")
        features = _EmbeddingFusionFeatures(members, embedding)
        d = sum(features.dims)
        head = nn.Sequential(OrderedDict(flatten=nn.Flatten(1), fc=nn.Linear(d, int(num_classes))))
        ms = features.frozen.members
        super().__init__(
            features,
            head,
            name="embedding_fusion",
            in_channels=ms[0].in_channels,
            num_classes=num_classes,
            feature_channels=d,
            cam_layer="features",
            min_input_size=max(int(m.min_input_size) for m in ms),
        )


# ---------------------------------------------------------------- building members


def _build_members(
    in_channels: int,
    members: Sequence[Mapping[str, Any]] | None,
    member_artifacts: Sequence[str | os.PathLike[str]] | None,
) -> list[nn.Module]:
    if member_artifacts is not None:
        info = read_members(member_artifacts)
        if members is not None:
            given = [_member_spec(s, i) for i, s in enumerate(members)]
            if len(given) != len(info.specs) or any(
                name != s["name"] for (name, _), s in zip(given, info.specs)
            ):
                raise ValueError(
                    f"members {[n for n, _ in given]} do not match the architectures of member_artifacts "
                    f"{[s['name'] for s in info.specs]}; pass only member_artifacts"
                )
        if info.input["channels"] != in_channels:
            raise ValueError(
                f"in_channels mismatch: the fusion has {in_channels} input channel(s), the member artifacts "
                f"{info.input['channels']}"
            )
        return [load_artifact(p).model for p in member_artifacts]
    if not members:
        raise ValueError("a fusion needs members=[{'name': ..., 'kwargs': {...}}, ...] or member_artifacts=[...]")
    built = []
    for i, spec in enumerate(members):
        name, kwargs = _member_spec(spec, i)
        kwargs.setdefault("in_channels", in_channels)
        if kwargs["in_channels"] != in_channels:
            raise ValueError(
                f"in_channels mismatch: members[{i}] ({name}) takes {kwargs['in_channels']} input channel(s), "
                f"the fusion {in_channels}"
            )
        built.append(build(name, task="classification", **kwargs))
    return built


@register(MODELS, "feature_fusion", _STUDY1_REF)
def feature_fusion(
    in_channels: int,
    num_classes: int,
    *,
    members: Sequence[Mapping[str, Any]] | None = None,
    member_artifacts: Sequence[str] | None = None,
    channels: int = 512,
    dropout: float = 0.0,
) -> FeatureFusion:
    """Frozen members fused at their feature layer: 1x1 conv + ReLU + GAP + linear (study 1).

    Args:
        in_channels: input channels (must be the members').
        num_classes: logits of the fused head.
        members: member architectures ``[{"name": ..., "kwargs": {...}}, ...]`` (as recorded under
            ``"architecture"`` in each member's ``model.json``); built with fresh weights, which a
            fused artifact's ``weights.pt`` (or ``fit(init_state=...)``) then fills in.
        member_artifacts: init-only alternative: member artifact directories whose architectures
            *and weights* are loaded. Not part of ``build_kwargs`` (see :class:`FeatureFusion`).
        channels: filters of the 1x1 fusion conv (512 in study 1).
        dropout: dropout before the linear layer.

    See :class:`FeatureFusion`.
    """
    return FeatureFusion(_build_members(in_channels, members, member_artifacts), num_classes,
                         channels=channels, dropout=dropout)


@register(MODELS, "embedding_fusion", _STUDY4_REF)
def embedding_fusion(
    in_channels: int,
    num_classes: int,
    *,
    members: Sequence[Mapping[str, Any]] | None = None,
    member_artifacts: Sequence[str] | None = None,
    embedding: str = "pooled",
) -> EmbeddingFusion:
    """Concatenated frozen-member embeddings -> one linear layer (study 4).

    Args:
        in_channels: input channels (must be the members').
        num_classes: outputs of the linear layer (study 4's single sigmoid unit is the binary case).
        members: member architectures, as for :func:`feature_fusion`.
        member_artifacts: init-only member artifact directories, as for :func:`feature_fusion`.
        embedding: ``"pooled"`` (globally pooled feature map) or ``"penultimate"`` (input of the
            member's final linear layer, study 4's dense-8 vector).

    See :class:`EmbeddingFusion`.
    """
    return EmbeddingFusion(_build_members(in_channels, members, member_artifacts), num_classes, embedding=embedding)


# ---------------------------------------------------------------- from member artifacts


class MemberInfo:
    """What a set of member artifacts agree on (see :func:`read_members`).

    Attributes:
        paths: the member artifact directories.
        specs: ``[{"name", "kwargs"}, ...]`` member architectures from their ``model.json``.
        class_names: the shared class names.
        input: the shared input spec as a dict (channels, size, mean, std).
        manifests: the members' ``model.json`` contents.
    """

    def __init__(self, paths: list[Path], manifests: list[dict]) -> None:
        """Hold ``manifests`` read from ``paths`` (already checked to agree)."""
        self.paths = paths
        self.manifests = manifests
        # without the members' starting weights (weights=imagenet, weights_path): a fusion rebuilt from
        # its own artifact gets every tensor from its weights.pt, and needs no weights file
        self.specs = [{"name": m["architecture"]["name"],
                       "kwargs": {k: v for k, v in m["architecture"]["kwargs"].items() if k not in STARTING_WEIGHTS}}
                      for m in manifests]
        self.class_names: list[str] = list(manifests[0]["class_names"])
        self.input: dict[str, Any] = dict(manifests[0]["input"])


def read_members(member_artifacts: Sequence[str | os.PathLike[str]]) -> MemberInfo:
    """Read member artifacts' manifests and check that they can be fused.

    Members must be classification models with the same class names (in the same order) and the
    same input spec (channels, size, intensity normalisation): the fused model has one input spec
    and one label space, the members'.

    Raises:
        ValueError: no members, a directory that is not a model artifact, or a mismatch; the
            message names what differs and the two artifacts.
    """
    paths = [Path(p) for p in member_artifacts]
    if not paths:
        raise ValueError("a fusion needs at least one member artifact")
    manifests = [read_manifest(p) for p in paths]
    for p, m in zip(paths, manifests):
        if m.get("task", "classification") != "classification":
            raise ValueError(f"member artifact {p} is a {m['task']} model; fusion needs classification members")
    ref, ref_path = manifests[0], paths[0]
    for p, m in zip(paths[1:], manifests[1:]):
        if list(m["class_names"]) != list(ref["class_names"]):
            raise ValueError(
                f"class names mismatch between member artifacts: {ref_path} has {list(ref['class_names'])}, "
                f"{p} has {list(m['class_names'])}"
            )
        for key, label in (("channels", "input channels"), ("size", "input size"),
                           ("mean", "input normalisation mean"), ("std", "input normalisation std")):
            if m["input"][key] != ref["input"][key]:
                raise ValueError(
                    f"{label} mismatch between member artifacts: {ref_path} has {ref['input'][key]}, "
                    f"{p} has {m['input'][key]}"
                )
    return MemberInfo(paths, manifests)


def fusion_spec(
    member_artifacts: Sequence[str | os.PathLike[str]], kind: str = "feature", **options: Any
) -> ComponentSpec:
    """The model ``ComponentSpec`` of a fusion of ``member_artifacts`` (member specs filled in).

    Args:
        member_artifacts: member artifact directories (checked with :func:`read_members`).
        kind: ``"feature"`` (:class:`FeatureFusion`) or ``"embedding"`` (:class:`EmbeddingFusion`).
        **options: fusion options (``channels``, ``dropout``; ``embedding``).

    Returns:
        ``ComponentSpec(name="<kind>_fusion", params={"members": [...], **options})``: what
        ``medens.training.fit`` needs, together with :func:`fusion_init_state`.
    """
    from medens.config import ComponentSpec

    if kind not in KINDS:
        raise ValueError(f"unknown fusion kind {kind!r}; expected one of {', '.join(map(repr, KINDS))}")
    for bad in ("members", "member_artifacts"):
        if bad in options:
            raise ValueError(f"{bad} is derived from member_artifacts; do not pass it as an option")
    info = read_members(member_artifacts)
    return ComponentSpec(name=f"{kind}_fusion", params={"members": info.specs, **options})


def fusion_init_state(member_artifacts: Sequence[str | os.PathLike[str]]) -> dict[str, torch.Tensor]:
    """The member weights, keyed as in a fusion's ``state_dict`` (``features.frozen.members.<i>.*``).

    Each member is rebuilt with ``load_artifact`` (checksums verified), so the weights are exactly
    those its artifact serves.
    """
    state: dict[str, torch.Tensor] = {}
    for i, p in enumerate(member_artifacts):
        for k, v in load_artifact(p).model.state_dict().items():
            state[f"features.frozen.members.{i}.{k}"] = v
    return state
