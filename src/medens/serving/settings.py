"""Serving settings: input limits, micro-batching and drift window, from flags or ``MEDENS_SERVE_*``.

- ``MEDENS_SERVE_MAX_BATCH`` (32): images per model forward; 1 turns batching off.
- ``MEDENS_SERVE_MAX_WAIT_MS`` (50): longest a partial batch waits for the images expected under
  load (never longer than one forward).
- ``MEDENS_SERVE_FORWARD_WORKERS`` (0: auto): forwards that may run at once. Auto is 2 with ONNX
  Runtime on two or more cores (each forward gets half the threads: one computes while the other
  batch's clients are answered) and 1 with PyTorch, whose forwards always run one at a time.
- ``MEDENS_SERVE_MAX_INSTANCES`` (64): images per request.
- ``MEDENS_SERVE_MAX_BYTES`` (33554432): request body bytes.
- ``MEDENS_SERVE_MAX_PIXELS`` (16777216): pixels (width x height) of one image.
- ``MEDENS_SERVE_MAX_REQUEST_PIXELS`` (33554432): pixels of all images of one request.
- ``MEDENS_SERVE_DRIFT_WINDOW`` (500): recent images the drift PSI is computed on.
- ``MEDENS_SERVE_DRIFT_EMBEDDING_WINDOW`` (200): recent embeddings the content-drift MMD compares
  with the artifact's reference sample.
- ``MEDENS_SERVE_DRIFT_TEST_EVERY`` (50): new images between two MMD tests (run in a background
  thread, never on a request's path).
- ``MEDENS_SERVE_DRIFT_PERMUTATIONS`` (200): relabellings of the MMD permutation p-value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

AUTO_ONNX_WORKERS = 2  # concurrent ONNX Runtime forwards when forward_workers is auto (0)


@dataclass(frozen=True)
class ServingSettings:
    """Limits and batching of one model server (one worker per pod, so counters are whole)."""

    max_batch: int = 32
    max_wait_ms: float = 50.0
    forward_workers: int = 0
    max_instances: int = 64
    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_request_pixels: int = 2 * 4096 * 4096
    drift_window: int = 500
    drift_embedding_window: int = 200
    drift_test_every: int = 50
    drift_permutations: int = 200

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            minimum = 0 if f.name in ("max_wait_ms", "forward_workers") else 1
            if value < minimum:
                raise ValueError(f"serving setting {f.name} must be >= {minimum}, got {value}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> ServingSettings:
        """Defaults, then ``MEDENS_SERVE_<FIELD>`` variables, then explicit ``overrides`` (not None)."""
        env = dict(os.environ if env is None else env)
        values = {}
        for f in fields(cls):
            raw = env.get(f"MEDENS_SERVE_{f.name.upper()}", "").strip()
            if raw:
                kind = float if f.type in ("float", float) else int
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise ValueError(f"MEDENS_SERVE_{f.name.upper()} must be a number, got {raw!r}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def workers_for(self, backend: str, cores: int) -> int:
        """Forwards that may run at once on ``backend`` with ``cores`` threads: the setting, or auto
        (2 for ONNX Runtime on two or more cores, else 1); PyTorch always 1 (one OpenMP team,
        :func:`medens.serving.batching.torch_thread`)."""
        if backend != "onnx":
            return 1
        return self.forward_workers or (AUTO_ONNX_WORKERS if cores >= 2 else 1)
