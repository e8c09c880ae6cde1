"""Training a model-level ensemble: frozen members, a new trained head (docs/methods.md section 5.3).

The fused modules (:class:`~medens.models.fusion.FeatureFusion`, study 1;
:class:`~medens.models.fusion.EmbeddingFusion`, study 4) live in ``medens.models.fusion``; this
module trains one from member artifact directories through :func:`medens.training.fit` and
writes a self-contained fused artifact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from medens.config import ComponentSpec, TrainingSpec
from medens.data.transforms import InputSpec
from medens.data.types import SplitData
from medens.models.fusion import fusion_init_state, fusion_spec, read_members
from medens.training.engine import FitResult, fit

__all__ = ["fit_fusion"]


def fit_fusion(
    member_artifacts: Sequence[str | os.PathLike[str]],
    data: SplitData,
    training: TrainingSpec | None = None,
    out_dir: str | os.PathLike[str] = "fusion",
    *,
    kind: str = "feature",
    loss: ComponentSpec | str | dict = "ce",
    seed: int | None = None,
    progress: bool | None = None,
    extra_manifest: dict | None = None,
    **options: Any,
) -> FitResult:
    """Train a model-level ensemble of frozen members and write a self-contained artifact.

    Study 1 (Rajaraman et al., PLoS ONE 2021) trains the 1x1 conv + dense head of the fused model
    on the training split with the members frozen; study 4 trains the final unit on the
    concatenated embeddings. The members come from their artifact directories; their
    architectures go into the fused ``model.json`` and their weights into its ``weights.pt``,
    so the fused artifact loads with ``load_artifact`` alone.

    Args:
        member_artifacts: member model artifact directories (same class names and input spec).
        data: a :class:`~medens.data.types.SplitData` with the members' class names and image size.
        training: a :class:`~medens.config.TrainingSpec` (default: ``TrainingSpec()``).
        out_dir: the fused artifact directory.
        kind: ``"feature"`` or ``"embedding"``.
        loss: loss ``ComponentSpec``, name or mapping (default cross-entropy).
        seed: random seed (see ``fit``).
        progress: progress bar (see ``fit``).
        extra_manifest: more ``model.json`` keys.
        **options: fusion options (``channels``, ``dropout``; ``embedding``).

    Returns:
        ``medens.training.FitResult``. ``model.json`` gains ``"fusion"``: the kind and, for
        provenance only, each member's path and weights sha256.

    Raises:
        ValueError: members that disagree (class names, input channels/size/normalisation), or data
            that does not match them.
    """
    member_artifacts = list(member_artifacts)
    info = read_members(member_artifacts)
    spec = fusion_spec(member_artifacts, kind, **options)
    if data.task != "classification":
        raise ValueError(f"fusion needs classification data, got task {data.task!r}")
    if list(data.class_names) != info.class_names:
        raise ValueError(f"class names mismatch: the data has {list(data.class_names)}, the members "
                         f"{info.class_names}")
    normalize = "unit" if all(v == 0 for v in info.input["mean"]) and all(v == 1 for v in info.input["std"]) \
        else "zscore"
    fitted = InputSpec.fit(data.train.images, normalize).to_dict()
    for key, label in (("channels", "input channels"), ("size", "input size"), ("mean", "input normalisation mean"),
                       ("std", "input normalisation std")):
        if fitted[key] != info.input[key]:
            raise ValueError(
                f"{label} mismatch: the training data gives {fitted[key]}, the members expect {info.input[key]}"
                + ("; z-score statistics must come from the members' training split" if key in ("mean", "std")
                   else "")
            )
    provenance = {"kind": kind, "members": [
        {"path": str(p), "architecture": m["architecture"]["name"], "weights_sha256": m.get("files", {}).get("weights.pt")}
        for p, m in zip(info.paths, info.manifests)
    ]}
    return fit(spec, loss, data, training, out_dir, seed=seed, normalize=normalize, progress=progress,
               extra_manifest={"fusion": provenance, **(extra_manifest or {})},
               init_state=fusion_init_state(member_artifacts))
