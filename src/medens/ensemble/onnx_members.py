"""ONNX copies of an ensemble artifact's members, checked against PyTorch, and their ONNX Runtime sessions.

:func:`export_onnx` runs when the selected system is packaged
(:func:`medens.stages.evaluate.package_best`): every member (a fused model-level ensemble is one
member) is exported with what :meth:`~medens.models.artifact.LoadedModel.probs` computes inside
the graph (the test-time flipped views, the softmax and the temperature), so the ONNX output *is*
the member's probabilities and nothing is applied around it. The batch axis is dynamic. Each
export is run by ONNX Runtime on the given validation images (whole, and in batches of one) and
compared with PyTorch; a member whose largest absolute difference of probabilities exceeds
:data:`TOLERANCE` (or that does not export) means no ONNX file is written for any member: the
artifact records why (``ensemble.json`` ``onnx.refused``) and is served with PyTorch. Written files
are listed in ``ensemble.json`` ``onnx.members`` and covered by its ``files`` checksums, so
:func:`~medens.ensemble.artifact.load_ensemble` refuses a changed ONNX file.

:func:`attach_backend` puts ONNX Runtime sessions (intra-op threads as given, every graph
optimisation on, no spin-waiting) behind :meth:`LoadedEnsemble.predict
<medens.ensemble.artifact.LoadedEnsemble.predict>`, below any protocol (REST v1/v2, gRPC).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medens.data.transforms import preprocess
from medens.ensemble.artifact import ENSEMBLE_MANIFEST, LoadedEnsemble, load_ensemble
from medens.models.artifact import LoadedModel, model_probs
from medens.storage.atomic import atomic_write_bytes, atomic_write_text
from medens.storage.checksum import checksums

log = logging.getLogger("medens.onnx")

ONNX_FILE = "model.onnx"
OPSET = 17
#: largest absolute difference of probabilities allowed between ONNX Runtime and PyTorch
TOLERANCE = 1e-5
INPUT, OUTPUT = "x", "probs"
BACKENDS = ("auto", "onnx", "torch")
#: what ``auto`` serves when the artifact has ONNX files and the device is the CPU: the faster
#: backend measured by ``benchmarks/serve.py`` (benchmarks/results/serve.json, docs/architecture.md)
AUTO_ON_CPU = "onnx"


class OnnxRefused(ValueError):
    """A member could not be exported, or its ONNX output disagrees with PyTorch."""


class MemberProbs(nn.Module):
    """A member's probabilities as its artifact defines them (flips, softmax, temperature): the
    exported graph."""

    def __init__(self, member: LoadedModel) -> None:
        super().__init__()
        self.model = member.model
        self.task, self.flips, self.temperature = member.task, member.flips, member.temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return model_probs(self.model, x, task=self.task, flips=self.flips, temperature=self.temperature)


class OnnxMember:
    """One member's ONNX Runtime session: ``probs(x)`` for preprocessed float32 ``(N, C, S, S)``."""

    def __init__(self, model: bytes | str | os.PathLike, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads or 0)  # 0: ONNX Runtime's default (one per core)
        opts.inter_op_num_threads = 1
        # spin-waiting threads take the cores the decoders and the HTTP stack need under load
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])

    def probs(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x, dtype=np.float32)})[0]
        return np.asarray(out)


def export_member(member: LoadedModel, x: np.ndarray) -> bytes:
    """The ONNX graph of ``member``'s probabilities, batch axis dynamic (raises :class:`OnnxRefused`)."""
    buf = io.BytesIO()
    wrapper = MemberProbs(member).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter (dynamo=False) needs no onnxscript; torch warns it is deprecated
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (torch.as_tensor(x[:2]),), buf, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    except Exception as e:  # an op without an ONNX form, a data-dependent branch, ...
        raise OnnxRefused(f"does not export to ONNX ({type(e).__name__}: {str(e)[:300]})") from e
    return buf.getvalue()


def parity(member: LoadedModel, graph: bytes, x: np.ndarray, batch: int = 32) -> float:
    """Largest absolute difference of probabilities between ONNX Runtime and PyTorch on ``x``, in
    batches of ``batch`` and again one image at a time (the batch axis must be dynamic)."""
    session = OnnxMember(graph, threads=1)
    worst = 0.0
    with torch.no_grad():
        for size in (batch, 1):
            for i in range(0, len(x), size):
                xb = x[i:i + size]
                ref = member.probs(torch.as_tensor(xb)).cpu().numpy()
                got = session.probs(xb)
                if got.shape != ref.shape:
                    raise OnnxRefused(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape}")
                worst = max(worst, float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max()))
    return worst


def export_onnx(artifact_dir: str | os.PathLike, images: np.ndarray | None, *,
                tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export every member of the ensemble artifact at ``artifact_dir`` to ``members/<id>/model.onnx``
    (checked on ``images``, validation pixels ``(N, H, W, C)``) and record it in ``ensemble.json``
    (``onnx`` and the ``files`` checksums). All members or none: returns the ``onnx`` entry, with
    ``refused`` (the reason) when no file was written."""
    d = Path(artifact_dir)
    ensemble = load_ensemble(d)
    entry: dict[str, Any] = {"opset": OPSET, "tolerance": tolerance, "torch": torch.__version__}
    graphs: dict[str, bytes] = {}
    try:
        if images is None or len(images) == 0:
            raise OnnxRefused("no validation images to check the ONNX export on")
        x = preprocess(np.asarray(images), ensemble.input_spec)
        entry["check_images"] = len(x)
        diffs = {}
        for mid, member in ensemble.members.items():
            try:
                graphs[mid] = export_member(member, x)
                diffs[mid] = parity(member, graphs[mid], x)
            except OnnxRefused as e:
                raise OnnxRefused(f"member {mid} {e}") from e
            if not diffs[mid] <= tolerance:
                raise OnnxRefused(f"member {mid}: ONNX Runtime and PyTorch probabilities differ by up to "
                                  f"{diffs[mid]:.3g} on {len(x)} validation images (tolerance {tolerance:g})")
    except OnnxRefused as e:
        entry["refused"] = f"{e}; no ONNX file written, the artifact is served with PyTorch"
        log.warning("ONNX export of %s refused: %s", d, entry["refused"])
        graphs = {}
    import onnxruntime as ort

    entry["onnxruntime"] = ort.__version__
    if graphs:
        entry["members"] = {mid: {"file": f"members/{mid}/{ONNX_FILE}", "max_abs_diff": diffs[mid]}
                            for mid in graphs}
        for mid, graph in graphs.items():
            atomic_write_bytes(d / "members" / mid / ONNX_FILE, graph)
    manifest = json.loads((d / ENSEMBLE_MANIFEST).read_text())
    manifest["onnx"] = entry
    manifest["files"] = checksums(d, exclude=(ENSEMBLE_MANIFEST,))
    atomic_write_text(d / ENSEMBLE_MANIFEST, json.dumps(manifest, indent=2))
    return entry


def onnx_files(manifest: dict[str, Any]) -> dict[str, str] | None:
    """Member id -> ONNX file (relative to the artifact) when every member has one, else None."""
    members = (manifest.get("onnx") or {}).get("members") or {}
    if not members or set(members) != set(manifest.get("members", [])):
        return None
    return {mid: str(members[mid]["file"]) for mid in manifest["members"]}


def resolve_backend(manifest: dict[str, Any], requested: str, device: str | torch.device = "cpu") -> str:
    """``onnx`` or ``torch`` for ``requested`` (``auto``, ``onnx`` or ``torch``); a clear error when
    ONNX is asked of an artifact without ONNX files or of a GPU device."""
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    on_cpu = torch.device(device).type == "cpu"
    has = onnx_files(manifest) is not None
    if requested == "auto":
        return AUTO_ON_CPU if has and on_cpu else "torch"
    if requested == "onnx":
        if not on_cpu:
            raise ValueError(f"the onnx backend runs on the CPU (ONNX Runtime's CPU provider); device {device} "
                             "serves with --backend torch")
        if not has:
            why = (manifest.get("onnx") or {}).get("refused") or \
                "it was packaged without an ONNX export (medens before ONNX export, or not packaged by package_best)"
            raise ValueError(f"--backend onnx: the artifact {manifest.get('name')!r} has no ONNX files ({why}); "
                             "serve it with --backend torch or auto, or package it again")
    return requested


def attach_backend(ensemble: LoadedEnsemble, requested: str = "auto", *, device: str | torch.device = "cpu",
                   threads: int | None = None) -> str:
    """Resolve the backend and, for ``onnx``, open one session per member behind ``ensemble.predict``.
    Every ONNX file must be one ``ensemble.json`` checksums (load_ensemble verified them)."""
    backend = resolve_backend(ensemble.manifest, requested, device)
    if backend == "onnx":
        files = onnx_files(ensemble.manifest) or {}
        listed = ensemble.manifest.get("files", {})
        unlisted = [f for f in files.values() if f not in listed]
        if unlisted:
            raise ValueError(f"{ensemble.path}: ONNX files {unlisted} have no checksum in {ENSEMBLE_MANIFEST}")
        ensemble.runners = {mid: OnnxMember(ensemble.path / f, threads=threads) for mid, f in files.items()}
    else:
        ensemble.runners = None
    return backend
