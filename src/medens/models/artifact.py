"""Model artifacts: self-describing directories (docs/architecture.md section 5.3).

``weights.pt`` (a state_dict) and ``model.json`` (architecture name and kwargs, loss, class
names, input spec, training history, best epoch, validation metrics, the sha256 of every file,
medens version). ``model.json`` is written last, so a directory without it is incomplete.
:func:`load_artifact` rebuilds the module from the directory alone and refuses a file whose
checksum does not match.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medens import __version__
from medens.models._build import build
from medens.storage.atomic import atomic_write_bytes, atomic_write_text
from medens.storage.checksum import checksum_problems
from medens.storage.checksum import checksums as _checksums

MANIFEST = "model.json"
WEIGHTS = "weights.pt"
#: build params that name a model's starting weights; ``load_artifact`` leaves them out
STARTING_WEIGHTS = ("weights", "weights_sha256", "weights_path", "weights_strict")


def save_state_dict(path: str | os.PathLike, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def checksums(directory: Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """sha256 of every file under ``directory`` except the manifest."""
    return _checksums(directory, exclude)


def verify_checksums(directory: Path, files: dict[str, str], manifest_name: str = MANIFEST) -> None:
    """Raise ``ValueError`` naming every file that is missing or whose sha256 differs."""
    problems = checksum_problems(directory, files, f"does not match its sha256 in {manifest_name}")
    if problems:
        raise ValueError(f"artifact {directory} is corrupt: " + "; ".join(problems))


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``model.json`` last, with the checksums of every other file."""
    manifest = dict(manifest)
    manifest["files"] = checksums(directory)
    manifest.setdefault("medens_version", __version__)
    return atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_manifest(path: str | os.PathLike) -> dict:
    d = Path(path)
    m = d / MANIFEST
    if not m.is_file():
        raise ValueError(f"{d} is not a model artifact: {MANIFEST} is missing (incomplete or wrong directory)")
    return json.loads(m.read_text())


class ManifestView:
    """What a loaded artifact's manifest says: class names, input spec, task."""

    manifest: dict

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def input_spec(self):
        from medens.data.transforms import InputSpec

        return InputSpec.from_dict(self.manifest["input"])

    @property
    def task(self) -> str:
        return self.manifest.get("task", "classification")


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1; a single channel is a sigmoid, returned as two channels."""
    if logits.shape[1] == 1:
        s = torch.sigmoid(logits)
        return torch.cat([1 - s, s], dim=1)
    return torch.softmax(logits, dim=1)


TTA_FLIPS = {"none": (), "horizontal": ((3,),), "vertical": ((2,),), "both": ((3,), (2,), (2, 3))}


def tta_flips(tta: str, flips: str) -> tuple[tuple[int, ...], ...]:
    """The flipped views (dims of ``(N, C, H, W)``) that test-time augmentation ``tta`` adds to the
    identity, restricted to the flips the training spec allows."""
    if tta not in ("none", "flips"):
        raise ValueError(f"tta must be 'none' or 'flips', got {tta!r}")
    if flips not in TTA_FLIPS:
        raise ValueError(f"flips must be one of {', '.join(TTA_FLIPS)}, got {flips!r}")
    return () if tta == "none" else TTA_FLIPS[flips]


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(log p / T)`` over dim 1 (temperature scaling of probabilities; the identity at ``T = 1``)."""
    if temperature == 1.0:
        return probs
    return torch.softmax(torch.log(probs.clamp_min(1e-12)) / temperature, dim=1)


def model_probs(model: torch.nn.Module, x: torch.Tensor, *, task: str = "classification",
                flips: tuple[tuple[int, ...], ...] = (), temperature: float = 1.0) -> torch.Tensor:
    """A member's probabilities: the mean softmax over the identity and each flipped view (a
    segmentation map is flipped back), then temperature-scaled. Every prediction path of an
    artifact (validation predictions, test predictions, ensembles, serving) goes through here."""
    p = logits_to_probs(model(x).float())
    for dims in flips:
        q = logits_to_probs(model(torch.flip(x, dims)).float())
        p = p + (torch.flip(q, dims) if task == "segmentation" else q)
    if flips:
        p = p / (1 + len(flips))
    return apply_temperature(p, temperature)


@dataclass
class LoadedModel(ManifestView):
    """A rebuilt model with what its artifact says about it."""

    model: torch.nn.Module
    manifest: dict
    path: Path

    @property
    def temperature(self) -> float:
        """The validation-fitted temperature (1 when the artifact has none)."""
        return float(self.manifest.get("inference", {}).get("temperature", 1.0))

    @property
    def flips(self) -> tuple[tuple[int, ...], ...]:
        """The test-time flipped views the artifact was evaluated with."""
        return tuple(tuple(d) for d in self.manifest.get("inference", {}).get("tta_flips", []))

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for preprocessed inputs on the model's device, as the artifact defines
        them (test-time augmentation and temperature included)."""
        self.model.eval()
        return model_probs(self.model, x, task=self.task, flips=self.flips, temperature=self.temperature)


def load_artifact(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                  verify: bool = True) -> LoadedModel:
    """Rebuild a model from its artifact directory alone (eval mode, on ``map_location``)."""
    d = Path(path)
    manifest = read_manifest(d)
    if verify:
        verify_checksums(d, manifest.get("files", {}))
    arch = manifest["architecture"]
    # the starting weights (recorded as `pretrained`) are not needed: weights.pt holds the trained tensors
    kwargs = {k: v for k, v in arch["kwargs"].items() if k not in STARTING_WEIGHTS}
    model = build(arch["name"], task=manifest.get("task", "classification"), **kwargs)
    state = torch.load(d / WEIGHTS, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    model.to(map_location).eval()
    return LoadedModel(model=model, manifest=manifest, path=d)
