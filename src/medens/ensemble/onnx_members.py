"""ONNX copies of an ensemble artifact's members, checked against PyTorch, and their ONNX Runtime sessions.

:func:`export_onnx` runs when the selected system is packaged
(:func:`medens.stages.evaluate.package_best`): every member (a fused model-level ensemble is one
member) is exported with what :meth:`~medens.models.artifact.LoadedModel.probs` computes inside
the graph (the test-time flipped views, the softmax and the temperature), so the ONNX output *is*
the member's probabilities and nothing is applied around it. A classifier's graph has a second
output, ``embedding``: its penultimate-layer embedding as :mod:`medens.models.embed` defines it
(the input of the classification layer, flattened, of the un-flipped view), which the content-drift
window needs (:func:`medens.ensemble.drift_reference.predict_with_embeddings`). The batch axis is
dynamic. Each export is run by ONNX Runtime on the given validation images (whole, and in batches
of one) and compared with PyTorch; a member whose largest absolute difference of probabilities
exceeds :data:`TOLERANCE`, whose embedding is off by more than :data:`EMBEDDING_RTOL` (or that
does not export) means no ONNX file is written for any member: the
artifact records why (``ensemble.json`` ``onnx.refused``) and is served with PyTorch. Written files
are listed in ``ensemble.json`` ``onnx.members`` and covered by its ``files`` checksums, so
:func:`~medens.ensemble.artifact.load_ensemble` refuses a changed ONNX file.

:func:`attach_backend` puts ONNX Runtime sessions (intra-op threads as given, every graph
optimisation on, no spin-waiting) behind :meth:`LoadedEnsemble.predict
<medens.ensemble.artifact.LoadedEnsemble.predict>`, below any protocol (REST v1/v2, gRPC). ONNX
files without the ``embedding`` output (packaged before it existed) in an artifact with a drift
reference are not served: the artifact falls back to PyTorch, logged, so content drift keeps
its embeddings (no request fails, and no monitoring silently stops).
"""

from __future__ import annotations

import contextlib
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
from medens.ensemble.artifact import ENSEMBLE_MANIFEST, LoadedEnsemble, MemberRunner, load_ensemble
from medens.models.artifact import LoadedModel, model_probs
from medens.models.embed import capture_embeddings, classification_layer
from medens.storage.atomic import atomic_write_bytes, atomic_write_text
from medens.storage.checksum import checksums

log = logging.getLogger("medens.onnx")

ONNX_FILE = "model.onnx"
OPSET = 17
#: largest absolute difference of probabilities allowed between ONNX Runtime and PyTorch
TOLERANCE = 1e-5
#: embeddings: ``|onnx - torch| <= EMBEDDING_RTOL * (|torch| + max |torch|)`` elementwise, the max
#: over the compared batch. They are unbounded float32 activations (not probabilities in [0, 1]),
#: summed in another order by ONNX Runtime's fused kernels: the error scales with the embedding's
#: magnitude, so the absolute floor does too (a fixed 1e-4 would pass anything for a network whose
#: embeddings are 1e-3 in size). Measured: at most 1.8% of this allowance (compact_cnn, resnet18,
#: timm resnet18 in the tests). 1e-4 of an embedding's scale is far below what moves the drift
#: test, which compares windows of 200 against 300 reference images (docs/methods.md section 11.2)
EMBEDDING_RTOL = 1e-4
INPUT, OUTPUT, EMBEDDING = "x", "probs", "embedding"
BACKENDS = ("auto", "onnx", "torch")
#: what ``auto`` serves when the artifact has ONNX files and the device is the CPU: the faster
#: backend measured by ``benchmarks/serve.py`` (benchmarks/results/serve.json, docs/architecture.md)
AUTO_ON_CPU = "onnx"


class OnnxRefused(ValueError):
    """A member could not be exported, or its ONNX output disagrees with PyTorch."""


class MemberProbs(nn.Module):
    """A member's probabilities as its artifact defines them (flips, softmax, temperature), and for a
    classifier its embedding (the classification layer's input in the first, un-flipped forward):
    the exported graph."""

    def __init__(self, member: LoadedModel, *, embedding: bool = True) -> None:
        super().__init__()
        self.model = member.model
        self.task, self.flips, self.temperature = member.task, member.flips, member.temperature
        self.layer: nn.Linear | None = None
        if embedding and self.task == "classification":
            try:
                self.layer = classification_layer(member.model)
            except ValueError:  # no medens head: probabilities only (no drift reference either)
                self.layer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        def probs() -> torch.Tensor:
            return model_probs(self.model, x, task=self.task, flips=self.flips, temperature=self.temperature)

        if self.layer is None:
            return probs()
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_pre_hook(
            lambda _m, args: None if captured else captured.append(args[0].flatten(1).float()))
        try:
            p = probs()
        finally:
            handle.remove()
        return p, captured[0]


class OnnxMember:
    """One member's ONNX Runtime session for preprocessed float32 ``(N, C, S, S)``: ``probs(x)``, and
    ``outputs(x)`` (probabilities and embeddings) when the graph has the ``embedding`` output
    (``has_embedding``; files packaged before it have not)."""

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
        self.has_embedding = EMBEDDING in {o.name for o in self.session.get_outputs()}

    def _run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(names, {INPUT: np.ascontiguousarray(x, dtype=np.float32)})]

    def probs(self, x: np.ndarray) -> np.ndarray:
        return self._run([OUTPUT], x)[0]

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities ``(N, K)`` and embeddings ``(N, D)`` float32 of one run."""
        if not self.has_embedding:
            raise ValueError("this ONNX file has no embedding output (packaged before it existed)")
        probs, emb = self._run([OUTPUT, EMBEDDING], x)
        return probs, emb.astype(np.float32, copy=False)


def export_member(member: LoadedModel, x: np.ndarray, *, embedding: bool = True) -> bytes:
    """The ONNX graph of ``member``'s probabilities (and a classifier's embedding, unless
    ``embedding`` is False), batch axis dynamic (raises :class:`OnnxRefused`)."""
    buf = io.BytesIO()
    wrapper = MemberProbs(member, embedding=embedding).eval()
    outputs = [OUTPUT] if wrapper.layer is None else [OUTPUT, EMBEDDING]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter (dynamo=False) needs no onnxscript; torch warns it is deprecated
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (torch.as_tensor(x[:2]),), buf, dynamo=False, opset_version=OPSET,
                              input_names=[INPUT], output_names=outputs,
                              dynamic_axes={INPUT: {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
    except Exception as e:  # an op without an ONNX form, a data-dependent branch, ...
        raise OnnxRefused(f"does not export to ONNX ({type(e).__name__}: {str(e)[:300]})") from e
    return buf.getvalue()


def parity(member: LoadedModel, graph: bytes, x: np.ndarray, batch: int = 32) -> dict[str, float]:
    """ONNX Runtime against PyTorch on ``x``, in batches of ``batch`` and again one image at a time
    (the batch axis must be dynamic): ``max_abs_diff`` of probabilities and, when the graph has the
    embedding, ``embedding_max_abs_diff`` and ``embedding_excess`` (the largest
    ``|diff| / (EMBEDDING_RTOL * (|torch| + max |torch|))``: at most 1 within tolerance)."""
    session = OnnxMember(graph, threads=1)
    worst = {"max_abs_diff": 0.0, **({"embedding_max_abs_diff": 0.0, "embedding_excess": 0.0}
                                     if session.has_embedding else {})}
    with torch.no_grad():
        for size in (batch, 1):
            for i in range(0, len(x), size):
                xb = x[i:i + size]
                hooks = capture_embeddings([member.model]) if session.has_embedding else contextlib.nullcontext([None])
                with hooks as captured:
                    ref = member.probs(torch.as_tensor(xb)).cpu().numpy()
                got = session.probs(xb)
                if got.shape != ref.shape:
                    raise OnnxRefused(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape}")
                worst["max_abs_diff"] = max(worst["max_abs_diff"], _max_abs(got, ref))
                if session.has_embedding:
                    _embedding_parity(worst, session.outputs(xb)[1], captured[0])
    return worst


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _embedding_parity(worst: dict[str, float], got: np.ndarray, ref: np.ndarray | None) -> None:
    if ref is None or got.shape != ref.shape:
        raise OnnxRefused(f"ONNX embedding shape {got.shape} differs from PyTorch's "
                          f"{None if ref is None else ref.shape}")
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    worst["embedding_max_abs_diff"] = max(worst["embedding_max_abs_diff"], float(diff.max()))
    scale = np.abs(ref.astype(np.float64))
    allowed = EMBEDDING_RTOL * (scale + max(float(scale.max(initial=0.0)), np.finfo(np.float32).tiny))
    worst["embedding_excess"] = max(worst["embedding_excess"], float((diff / allowed).max()))


def export_onnx(artifact_dir: str | os.PathLike, images: np.ndarray | None, *,
                tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export every member of the ensemble artifact at ``artifact_dir`` to ``members/<id>/model.onnx``
    (checked on ``images``, validation pixels ``(N, H, W, C)``) and record it in ``ensemble.json``
    (``onnx`` and the ``files`` checksums). All members or none: returns the ``onnx`` entry, with
    ``refused`` (the reason) when no file was written."""
    d = Path(artifact_dir)
    ensemble = load_ensemble(d)
    entry: dict[str, Any] = {"opset": OPSET, "tolerance": tolerance, "torch": torch.__version__,
                             "embedding_rtol": EMBEDDING_RTOL}
    graphs: dict[str, bytes] = {}
    try:
        if images is None or len(images) == 0:
            raise OnnxRefused("no validation images to check the ONNX export on")
        x = preprocess(np.asarray(images), ensemble.input_spec)
        entry["check_images"] = len(x)
        diffs: dict[str, dict[str, float]] = {}
        for mid, member in ensemble.members.items():
            try:
                graphs[mid] = export_member(member, x)
                diffs[mid] = parity(member, graphs[mid], x)
            except OnnxRefused as e:
                raise OnnxRefused(f"member {mid} {e}") from e
            _within_tolerance(mid, diffs[mid], len(x), tolerance)
    except OnnxRefused as e:
        entry["refused"] = f"{e}; no ONNX file written, the artifact is served with PyTorch"
        log.warning("ONNX export of %s refused: %s", d, entry["refused"])
        graphs = {}
    import onnxruntime as ort

    entry["onnxruntime"] = ort.__version__
    if graphs:
        entry["members"] = {mid: {"file": f"members/{mid}/{ONNX_FILE}", **diffs[mid]} for mid in graphs}
        for mid, graph in graphs.items():
            atomic_write_bytes(d / "members" / mid / ONNX_FILE, graph)
    manifest = json.loads((d / ENSEMBLE_MANIFEST).read_text())
    manifest["onnx"] = entry
    manifest["files"] = checksums(d, exclude=(ENSEMBLE_MANIFEST,))
    atomic_write_text(d / ENSEMBLE_MANIFEST, json.dumps(manifest, indent=2))
    return entry


def _within_tolerance(mid: str, diff: dict[str, float], n: int, tolerance: float) -> None:
    if not diff["max_abs_diff"] <= tolerance:
        raise OnnxRefused(f"member {mid}: ONNX Runtime and PyTorch probabilities differ by up to "
                          f"{diff['max_abs_diff']:.3g} on {n} validation images (tolerance {tolerance:g})")
    if not diff.get("embedding_excess", 0.0) <= 1.0:
        raise OnnxRefused(f"member {mid}: ONNX Runtime and PyTorch embeddings differ by up to "
                          f"{diff['embedding_max_abs_diff']:.3g} on {n} validation images, beyond "
                          f"{EMBEDDING_RTOL:g} * (|embedding| + max |embedding|)")


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
    Every ONNX file must be one ``ensemble.json`` checksums (load_ensemble verified them). ONNX files
    without the ``embedding`` output in an artifact with a drift reference: ``torch``, logged."""
    backend = resolve_backend(ensemble.manifest, requested, device)
    if backend == "onnx":
        files = onnx_files(ensemble.manifest) or {}
        listed = ensemble.manifest.get("files", {})
        unlisted = [f for f in files.values() if f not in listed]
        if unlisted:
            raise ValueError(f"{ensemble.path}: ONNX files {unlisted} have no checksum in {ENSEMBLE_MANIFEST}")
        runners: dict[str, MemberRunner] = {mid: OnnxMember(ensemble.path / f, threads=threads)
                                            for mid, f in files.items()}
        ensemble.runners = None if _no_embeddings_for_drift(ensemble, runners, requested) else runners
    else:
        ensemble.runners = None
    return ensemble.backend


def _no_embeddings_for_drift(ensemble: LoadedEnsemble, runners: dict[str, MemberRunner], requested: str) -> bool:
    """True (logged) when the artifact has a drift reference and an ONNX file lacks the embedding output."""
    old = [mid for mid, r in runners.items() if not r.has_embedding]
    if not old or not ensemble.manifest.get("drift_reference"):
        return False
    # content drift needs every member's embedding: PyTorch gives them, these files cannot
    log.warning("%s: the ONNX files of %s have no embedding output (packaged before medens exported it) and the "
                "artifact has a drift reference: serving with PyTorch (backend %s asked) so content drift keeps its "
                "embeddings; package the artifact again to serve it with ONNX Runtime",
                ensemble.path, ", ".join(old), requested)
    return True
