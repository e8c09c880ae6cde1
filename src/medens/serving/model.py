"""The KServe predictor: :class:`EnsembleModel`, a ``kserve.Model`` serving one ensemble artifact.

- ``load()`` fetches the artifact (local path, KServe's ``/mnt/models`` mount, or ``s3://`` via
  :mod:`medens.storage`), verifies every checksum and builds every member; ``ready`` is set only
  when all of that succeeded.
- v1 ``POST /v1/models/<name>:predict`` with ``{"instances": [...], "parameters": {"return_members": true}}``
  returns ``{"predictions": [{"label", "class_name", "probabilities", "confidence", "entropy",
  "disagreement"[, "members"]}, ...]}``; ``:explain`` answers ``{"explanations": [...]}``, the same
  fields (the set too) with a Grad-CAM ``overlay_png`` (base64) and the member weights.
- v2 ``POST /v2/models/<name>/infer`` with one ``BYTES`` (encoded images) or ``FP32``/``FP64``/``UINT8``
  (intensities ``[N, H, W(, C)]``) input returns the tensors ``probabilities`` ``[N, K]``,
  ``label`` ``[N]``, ``class_name`` ``[N]``, ``confidence`` ``[N]`` (as v1's), ``entropy`` ``[N]``,
  ``disagreement`` ``[N]``, and ``member_probabilities`` ``[N, M, K]`` when the request parameter
  ``return_members`` is true. The same v2 request over gRPC (:mod:`medens.serving.grpc_server`)
  gets the same tensors.
- a raw body (``Content-Type: application/dicom`` or ``image/*``, e.g. ``image/png``) on
  v1 ``:predict`` / ``:explain`` is one encoded image file, decoded as a base64 instance would be.
- Classification answers of an artifact with ``conformal.json`` carry the conformal prediction set
  at a stored coverage level: v1 ``"prediction_set"`` (class names) and ``"coverage"``; v2
  ``prediction_set`` ``[N]`` (BYTES, each a JSON list of class names) and ``coverage`` ``[N]``
  (FP64). The parameter ``coverage`` (v1 ``parameters``, v2 request parameters) picks another
  stored level; any other value is a 400 naming the stored levels.

Every request problem raises ``kserve.errors.InvalidInput`` (HTTP 400 with ``{"error": ...}``;
gRPC ``INVALID_ARGUMENT``, or ``RESOURCE_EXHAUSTED`` for :class:`InputTooLarge`) naming it, and is counted in ``medens_request_errors_total`` by reason. Decoding runs in worker
threads (torch single-threaded there), loading and every forward in one torch thread
(:func:`medens.serving.batching.torch_thread`): the event loop stays free for health checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from medens.serving import batching
from medens.serving import metrics as m
from medens.serving.batching import MicroBatcher
from medens.serving.inputs import (
    InputError,
    decode_raw,
    decode_v1,
    decode_v2_input,
    is_raw_upload,
    raw_tensor,
)
from medens.serving.predictor import EnsemblePredictor
from medens.serving.settings import ServingSettings

log = logging.getLogger("medens.serving")

TOO_LARGE = frozenset({"image_too_large", "batch_too_large", "request_too_large"})


class InputTooLarge(InvalidInput):
    """A request over a size limit: HTTP 400 as every :class:`~kserve.errors.InvalidInput`, gRPC
    ``RESOURCE_EXHAUSTED`` (:mod:`medens.serving.grpc_server`)."""


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _single_threaded_torch() -> None:
    import torch

    torch.set_num_threads(1)


def _param(params: Any, key: str) -> Any:
    """A request parameter's value (a plain dict, an object, or a gRPC ``InferParameter``); ``None`` if absent."""
    if not params:
        return None
    value: Any = params.get(key) if isinstance(params, dict) else getattr(params, key, None)
    if hasattr(value, "WhichOneof"):  # a gRPC InferParameter
        choice = value.WhichOneof("parameter_choice")
        value = getattr(value, choice) if choice else None
    return value


def _flag(params: Any, key: str) -> bool:
    if not params:
        return False
    value = params.get(key, False) if hasattr(params, "get") else getattr(params, key, False)
    if hasattr(value, "WhichOneof"):  # a gRPC InferParameter
        value = getattr(value, value.WhichOneof("parameter_choice") or "bool_param")
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


class EnsembleModel(Model):
    """One ensemble artifact behind KServe's v1 and v2 REST protocols."""

    def __init__(self, name: str, model_dir: str, *, settings: ServingSettings | None = None,
                 device: str = "cpu", endpoint: str | None = None, backend: str = "auto",
                 threads: int | None = None) -> None:
        super().__init__(name)
        self.model_dir = model_dir
        self.backend, self.threads = backend, threads  # the members' forward: auto, onnx or torch
        self.settings = settings or ServingSettings()
        self.device = device
        self.endpoint = endpoint
        self.predictor: EnsemblePredictor | None = None
        self.batcher: MicroBatcher | None = None
        self.drift: m.DriftMonitor | None = None
        self.embedding_drift: m.EmbeddingDriftMonitor | None = None
        self._decoders: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle
    def load(self) -> bool:
        """Fetch, verify and build every member; ``ready`` only when all of it worked."""
        self.ready = False
        torch_thread = batching.torch_thread()
        s = self.settings
        cores = self.threads or _torch_threads()
        try:
            # ONNX Runtime's threads are shared by the forwards that may run at once (torch ignores them)
            predictor = torch_thread.submit(EnsemblePredictor.load, self.model_dir, device=self.device,
                                            endpoint=self.endpoint, backend=self.backend,
                                            threads=max(1, cores // s.workers_for("onnx", cores))).result()
            drift = m.DriftMonitor(self.name, predictor.reference, window=s.drift_window)
            embedding_drift = m.EmbeddingDriftMonitor(
                self.name, predictor.embedding_reference, window=s.drift_embedding_window,
                every=s.drift_test_every, permutations=s.drift_permutations)
        except BaseException:
            torch_thread.shutdown(wait=False)
            raise
        self.drift = drift
        self.embedding_drift = embedding_drift
        self.batcher = MicroBatcher(
            predictor.forward, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, executor=torch_thread,
            workers=s.workers_for(predictor.backend, cores),
            on_batch=lambda n, secs: (m.BATCH_SIZE.labels(self.name).observe(n),
                                      m.FORWARD_SECONDS.labels(self.name).observe(secs)),
            on_queue=lambda n: m.QUEUE_IMAGES.labels(self.name).set(n))
        # decoding and preprocessing (which resizes with torch) in threads whose torch runs
        # single-threaded, so they add no OpenMP team (see batching.torch_thread)
        self._decoders = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(2, min(8, os.cpu_count() or 2)), thread_name_prefix="medens-decode",
            initializer=_single_threaded_torch)
        from medens.data.decode import PREPROCESSING

        for mid, member in predictor.ensemble.members.items():
            recorded = member.manifest.get("preprocessing", {}).get("version")
            if recorded != PREPROCESSING["version"]:
                log.warning("member %s was trained with preprocessing version %s; this endpoint decodes with "
                            "version %s (%s): served inputs may differ from its training inputs", mid, recorded,
                            PREPROCESSING["version"], PREPROCESSING["images"])
        if predictor.reference is None:
            log.warning("%s has no training intensity reference (trained before references were stored): "
                        "medens_input_drift_psi stays unset", self.model_dir)
        d = predictor.describe()
        m.MODEL_INFO.labels(self.name, str(d["method"]), ",".join(d["members"]), d["task"],
                            str(d["medens_version"])).set(1)
        self.predictor = predictor
        self.ready = True
        log.info("loaded ensemble %s (%s, %d members, %s backend, %d forward%s at once) from %s", d["name"],
                 d["method"], len(d["members"]), d["backend"], self.batcher.workers,
                 "s" * (self.batcher.workers != 1), self.model_dir)
        return self.ready

    # ------------------------------------------------------------------ decoding
    def _invalid(self, e: InputError) -> InvalidInput:
        m.record_error(self.name, e.reason)
        return (InputTooLarge if e.reason in TOO_LARGE else InvalidInput)(str(e))

    def _read(self, payload: dict | InferRequest, prepare: bool,
              headers: dict[str, str] | None = None) -> tuple[list[np.ndarray], np.ndarray | None, dict]:
        """Decode, observe for intensity drift (every route) and with ``prepare`` preprocess, in one worker-thread call:
        images, model input, and the request parameters (``return_members``, ``class_index``; ``v2``)."""
        s = self.settings
        if isinstance(payload, bytes | bytearray) and is_raw_upload(headers):
            images = decode_raw(bytes(payload), s.max_pixels, s.max_request_pixels,
                                reading=self.predictor.reading if self.predictor is not None else None)
            params: dict[str, Any] = {"return_members": False, "v2": False}
        elif isinstance(payload, InferRequest):
            if len(payload.inputs) != 1:
                raise InputError("bad_request", f"send exactly one input tensor of images, got {len(payload.inputs)}")
            inp = payload.inputs[0]
            data, raw = inp.data, getattr(inp, "_raw_data", None)
            if raw is not None:  # gRPC raw_input_contents
                data = raw_tensor(inp.name, inp.datatype, raw)
            elif data is None:
                try:
                    data = inp.as_numpy()
                except Exception as e:
                    raise InputError("shape_mismatch", f"input {inp.name!r}: binary data does not match shape "
                                                       f"{inp.shape} and datatype {inp.datatype} ({e})") from e
            images = decode_v2_input(inp.name, inp.datatype, list(inp.shape), data, s.max_instances, s.max_pixels,
                                     s.max_request_pixels, reading=self.predictor.reading)
            params = {"return_members": _flag(payload.parameters, "return_members"),
                      "coverage": _param(payload.parameters, "coverage"), "v2": True}
        else:
            images, given = decode_v1(payload, s.max_instances, s.max_pixels, s.max_request_pixels,
                                      reading=self.predictor.reading)
            params = {**given, "return_members": _flag(given, "return_members") or _flag(payload, "return_members"),
                      "v2": False}
        params["coverage"] = self._coverage(params.get("coverage"))
        x = None
        if prepare:
            try:
                x = self.predictor.prepare(images)
            except ValueError as e:  # e.g. a channel count the model cannot take
                raise InputError("preprocess", str(e)) from e
        self.drift.observe(images)  # every route's images, once (explain's too)
        return images, x, params

    def _coverage(self, requested: Any) -> float | None:
        """The stored conformal coverage level a request asks for (``coverage``), or a named 400."""
        if self.predictor is None:
            raise InputError("not_ready", "the model is not loaded")
        try:
            return self.predictor.coverage_level(requested)
        except ValueError as e:
            raise InputError("bad_coverage", str(e)) from e

    async def _inputs(self, payload: dict | InferRequest, prepare: bool = True, headers: dict[str, str] | None = None):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._decoders, self._read, payload, prepare,
                                                                    headers)
        except InputError as e:
            raise self._invalid(e) from e

    async def _rows(self, x: np.ndarray) -> list[dict]:
        try:
            return await self.batcher.submit(x)
        except Exception:
            m.record_error(self.name, "forward")
            raise

    def _observe_rows(self, rows: list[dict]) -> None:
        """Hand the rows' embeddings to the content-drift window (the test itself runs in the background)."""
        if self.embedding_drift is not None and rows and "embedding" in rows[0]:
            self.embedding_drift.observe(np.stack([r["embedding"] for r in rows]))

    # ------------------------------------------------------------------ handlers
    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict | InferResponse:
        _, x, params = await self._inputs(payload, headers=headers)
        want_members, v2 = params["return_members"], params["v2"]
        rows = await self._rows(x)
        self._observe_rows(rows)
        p = self.predictor
        probs = np.stack([r["probs"] for r in rows])
        ent = np.array([np.mean(r["entropy"]) for r in rows])
        dis = np.array([np.mean(r["disagreement"]) for r in rows])
        record = m.record_predictions if p.task == "classification" else m.record_segmentation
        record(self.name, p.class_names, probs, ent, dis)
        if not v2:
            return {"predictions": [p.result(r, members=want_members, coverage=params["coverage"]) for r in rows]}
        return self._v2_response(payload, rows, probs, ent, dis, want_members, params["coverage"])

    def _v2_response(self, req: InferRequest, rows: list[dict], probs: np.ndarray, ent: np.ndarray,
                     dis: np.ndarray, want_members: bool, coverage: float | None = None) -> InferResponse:
        p = self.predictor
        n = len(rows)
        if p.task == "segmentation":
            masks = probs.argmax(1).astype(np.uint8)
            outputs = [("mask", masks), ("probabilities", probs.astype(np.float32)),
                       ("confidence", probs.max(1).reshape(n, -1).mean(1).astype(np.float32))]
        else:
            labels = probs.argmax(1).astype(np.int64)
            names = np.array([p.class_names[k].encode() for k in labels], dtype=object)
            outputs = [("probabilities", probs.astype(np.float32)), ("label", labels), ("class_name", names),
                       ("confidence", probs.max(1).astype(np.float32))]
        outputs += [("entropy", ent.astype(np.float32)), ("disagreement", dis.astype(np.float32))]
        outputs += _set_outputs(p, probs, coverage)
        if want_members:
            mp = np.stack([np.stack([r["members"][mid] for mid in p.member_ids]) for r in rows]).astype(np.float32)
            outputs.append(("member_probabilities", mp))
        infer_outputs = []
        for name, arr in outputs:
            dtype = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.uint8): "UINT8",
                     np.dtype(np.float64): "FP64"}.get(
                arr.dtype, "BYTES")
            out = InferOutput(name=name, shape=list(arr.shape), datatype=dtype)
            out.set_data_from_numpy(arr, binary_data=False)
            infer_outputs.append(out)
        assert len(infer_outputs[0].shape) and infer_outputs[0].shape[0] == n
        return InferResponse(response_id=req.id or "", model_name=self.name, infer_outputs=infer_outputs,
                             parameters={"members": ",".join(p.member_ids)} if want_members else None)

    async def explain(self, payload: dict, headers: dict[str, str] | None = None) -> dict:
        if isinstance(payload, InferRequest):
            raise self._invalid(InputError("bad_request", "explain takes a v1 request {\"instances\": [...]}"))
        images, _, params = await self._inputs(payload, prepare=False, headers=headers)
        cls = params.get("class_index")
        if cls is not None and (not isinstance(cls, int) or isinstance(cls, bool)):
            raise self._invalid(InputError("bad_request", f"parameters.class_index must be an integer, got {cls!r}"))
        try:
            # Grad-CAM needs gradients: it runs in the forward thread, after any queued batch
            result = await self.batcher.run_exclusive(self.predictor.explain, images, cls, self._observe_rows,
                                                      params["coverage"])
        except ValueError as e:
            raise self._invalid(InputError("explain", str(e))) from e
        return {"explanations": result}


def _set_outputs(p: Any, probs: np.ndarray, coverage: float | None) -> list[tuple[str, np.ndarray]]:
    """v2 ``prediction_set`` (BYTES ``[N]``, each a JSON list of class names) and ``coverage`` (FP64
    ``[N]``) of a classifier with conformal sets; nothing otherwise."""
    sets = p.prediction_sets(probs, coverage) if p.task == "classification" else None
    if sets is None or coverage is None:
        return []
    return [("prediction_set", np.array([json.dumps(x).encode() for x in sets], dtype=object)),
            ("coverage", np.full(len(sets), coverage, dtype=np.float64))]
