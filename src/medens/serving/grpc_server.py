"""The v2 gRPC protocol on its own port (``medens serve --grpc-port``), KServe's own servicer.

KServe's :class:`~kserve.protocol.grpc.server.GRPCServer` serves ``inference.GRPCInferenceService``
(``ModelInfer`` with typed ``contents`` or ``raw_input_contents``, the health and metadata calls)
through the same :class:`~kserve.protocol.dataplane.DataPlane` as REST, so a request reaches
:class:`medens.serving.model.EnsembleModel` exactly as a REST v2 one does, and the validation and
error texts are the same. What this module changes:

- the message limits: receive up to ``max_bytes`` (``MEDENS_SERVE_MAX_BYTES``, the REST body
  limit; larger messages are refused by gRPC itself with ``RESOURCE_EXHAUSTED``), send up to
  twice that (member probabilities of a large batch);
- the status of an error: a request over a size limit (``InputTooLarge``: pixels per image,
  pixels per request, images per request) is ``RESOURCE_EXHAUSTED``, every other named input
  problem ``INVALID_ARGUMENT`` (KServe's mapping), an unknown model ``NOT_FOUND``; only a
  server fault is ``INTERNAL``;
- metrics: every ``ModelInfer`` is counted in ``medens_requests_total`` and each failure once in
  ``medens_request_errors_total`` by reason, as the REST guard does.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any

from grpc import StatusCode, aio
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer

from medens.serving import metrics as m
from medens.serving.model import InputTooLarge

STATUS_REASONS = {StatusCode.INVALID_ARGUMENT: "invalid_request", StatusCode.NOT_FOUND: "not_found",
                  StatusCode.RESOURCE_EXHAUSTED: "payload_too_large", StatusCode.UNAVAILABLE: "not_ready",
                  StatusCode.UNIMPLEMENTED: "not_implemented", StatusCode.INTERNAL: "internal"}


class StatusInterceptor(ExceptionToStatusInterceptor):
    """KServe's exception-to-status mapping, with ``RESOURCE_EXHAUSTED`` for requests over a size
    limit and the request and error counters of ``ModelInfer``."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self.model_name = model_name

    async def intercept(self, method: Any, request_or_iterator: Any, context: Any, method_name: str) -> Any:
        if not method_name.endswith("/ModelInfer"):
            return await super().intercept(method, request_or_iterator, context, method_name)
        m.REQUESTS.labels(self.model_name).inc()
        holder: dict[str, Any] = {"counted": False}
        token = m.ERROR_COUNTED.set(holder)
        try:
            return await super().intercept(method, request_or_iterator, context, method_name)
        except BaseException:
            if not holder["counted"]:
                code = context.code() if callable(getattr(context, "code", None)) else None
                m.record_error(self.model_name, STATUS_REASONS.get(code, "internal"))
            raise
        finally:
            m.ERROR_COUNTED.reset(token)

    async def handle_exception(self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str) -> Any:
        if isinstance(ex, InputTooLarge):
            await context.abort(StatusCode.RESOURCE_EXHAUSTED, ex.reason)
        return await super().handle_exception(ex, request_or_iterator, context, method_name)


class EnsembleGRPCServer(GRPCServer):
    """KServe's gRPC server with medens' message limits and status mapping."""

    def __init__(self, port: int, data_plane: Any, model_repository_extension: Any, *, model_name: str,
                 max_bytes: int, grace_period: int = 30) -> None:
        super().__init__(port, data_plane, model_repository_extension, kwargs={}, grace_period=grace_period)
        self.model_name = model_name
        self.max_bytes = int(max_bytes)

    def options(self) -> list[tuple[str, int]]:
        """The server's channel options."""
        # no SO_REUSEPORT: a port another server holds is an error, not a silent share of its traffic
        return [("grpc.max_receive_message_length", self.max_bytes),
                ("grpc.max_send_message_length", 2 * self.max_bytes), ("grpc.so_reuseport", 0)]

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                                  interceptors=(StatusInterceptor(self.model_name),), options=self.options())
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()
