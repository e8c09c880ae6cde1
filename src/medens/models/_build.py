"""``build``, ``names`` and ``describe``: the model registries' entry points (re-exported by
``medens.models``).

They live here, not in the package ``__init__``, so that modules of the package that build models
(``artifact``, ``fusion``) import them without importing the package that imports them (no
import cycle). The registries are filled when ``medens.models`` is imported, which Python does
before any of its submodules, this one included.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from torch import nn

from medens.models._common import MODELS, REFERENCES, SEG_MODELS, load_weights, missing_weights_message
from medens.registry import Registry, check_options, unknown_name_message

__all__ = ["TASKS", "build", "describe", "names"]

TASKS = ("classification", "segmentation")
_REGISTRIES: dict[str, Registry[nn.Module]] = {"classification": MODELS, "segmentation": SEG_MODELS}
_FIXED = ("in_channels", "num_classes")


def _registry(task: str) -> Registry[nn.Module]:
    if task not in _REGISTRIES:
        raise ValueError(unknown_name_message("task", task, list(TASKS)))
    return _REGISTRIES[task]


def _factory(name: str, task: str) -> Any:
    registry = _registry(task)
    if name not in registry:
        for other, reg in _REGISTRIES.items():
            if other != task and name in reg:
                raise ValueError(f"{name!r} is a {other} model, not a {task} model: pass task={other!r}")
    return registry.get(name)


def _options(factory: Any) -> dict[str, Any]:
    """Keyword options of a factory and their defaults (``in_channels``/``num_classes`` excluded)."""
    params = inspect.signature(factory).parameters
    return {k: p.default for k, p in params.items() if k not in _FIXED}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


def _positive_int(label: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be a positive int, got {value!r}")
    return value


def build(
    name: str,
    in_channels: int = 1,
    num_classes: int = 2,
    task: str = "classification",
    *,
    weights: str | None = None,
    weights_sha256: str | None = None,
    weights_path: str | os.PathLike[str] | None = None,
    weights_strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name, e.g. ``"densenet121"`` or ``"unet"`` (see :func:`names`).
        in_channels: input channels (1 for grey-scale; torchvision stems are replaced to fit).
        num_classes: number of classes (logits / output channels).
        task: ``"classification"`` or ``"segmentation"``.
        weights: starting weights by name: ``"imagenet"`` (or another tag of a
            ``MEDENS_WEIGHTS_DIR`` manifest), ``"s3://bucket/key.pth"`` or a local path, resolved
            on this machine by :func:`medens.models.weights.resolve_weights` (never downloaded
            from a hub). Every tensor but the head's must load (an ImageNet classifier is skipped).
        weights_sha256: the file's expected sha256 (required for ``s3://``).
        weights_path: optional local state_dict file (this model's ``state_dict()`` or the
            original MONAI/torchvision network's); never downloaded. See :func:`load_weights`.
        weights_strict: require every tensor of ``weights_path`` to fit (see :func:`load_weights`).
        **kwargs: architecture options (see :func:`describe`), e.g. ``spatial_dims=3`` for
            segmentation models.

    Returns:
        A :class:`ClassifierModel` or :class:`SegmentationModel` whose ``build_kwargs`` rebuilds
        it: ``build(**model.build_kwargs)`` (all options resolved, JSON-serialisable; the weights
        file is not part of it since artifacts carry their own weights). With starting weights,
        ``model.pretrained`` records them (``weights``, ``file``, ``sha256``, ``source``,
        ``origin``; for ``model.json``); otherwise it is None.

    Raises:
        ValueError: unknown name or task (with close matches), unknown option (with close
            matches), invalid values, or a ``weights_path`` that does not exist.
    """
    factory = _factory(name, task)
    defaults = _options(factory)
    check_options(f"{name} model", kwargs, list(defaults))
    in_channels = _positive_int("in_channels", in_channels)
    num_classes = _positive_int("num_classes", num_classes)
    if weights is not None and weights_path is not None:
        raise ValueError(f"{name}: give weights or weights_path, not both")
    if weights_path is not None and not os.path.isfile(weights_path):
        raise ValueError(missing_weights_message(weights_path, name))
    resolved = None
    if weights is not None:
        from medens.models.weights import resolve_weights

        resolved = resolve_weights(name, weights, sha256=weights_sha256)  # before building: fail fast
    model = factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
    model.pretrained = None
    if resolved is not None:
        _load_backbone(model, resolved.file, f"{weights!r} weights ({resolved.source}: {resolved.origin})")
        model.pretrained = resolved.record
    elif weights_path is not None:
        from medens.storage.checksum import sha256_file

        load_weights(model, weights_path, strict=weights_strict)
        model.pretrained = {"weights_path": str(weights_path), "file": os.path.abspath(weights_path),
                            "sha256": sha256_file(weights_path), "source": "file", "origin": str(weights_path)}
    options = {**defaults, **kwargs}
    model.build_kwargs = {
        "name": name,
        "task": task,
        "in_channels": in_channels,
        "num_classes": num_classes,
        **{k: _jsonable(v) for k, v in options.items()},
    }
    return model


def _load_backbone(model: nn.Module, file: os.PathLike[str], what: str) -> None:
    """Load ``file`` into every tensor of ``model`` but its ``head`` (a classifier's own head);
    ``ValueError`` naming the file when any other tensor is missing or does not fit."""
    report = load_weights(model, file, strict=False)
    bad = [k for k in report["missing"] if not k.startswith("head.")] + report["mismatched"]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise ValueError(f"weights file {str(file)!r} ({what}) does not fit {getattr(model, 'name', '')}: "
                         f"{shown} not loaded (another architecture's weights?)")


def names(task: str | None = None) -> list[str]:
    """Registered model names for ``task`` (``"classification"``/``"segmentation"``), or all."""
    if task is None:
        return sorted(MODELS.names() + SEG_MODELS.names())
    return _registry(task).names()


def describe(name: str, task: str | None = None) -> dict[str, Any]:
    """What a registered model is: task, one-line summary, reference and options with defaults.

    Example:
        >>> describe("unet")["options"]["spatial_dims"]
        2
    """
    if task is None:
        task = "segmentation" if name in SEG_MODELS else "classification"
    factory = _factory(name, task)
    doc = inspect.getdoc(factory) or ""
    return {
        "name": name,
        "task": task,
        "summary": doc.split("\n\n")[0].replace("\n", " "),
        "reference": REFERENCES.get(name, ""),
        "options": {k: _jsonable(v) for k, v in _options(factory).items()},
    }
