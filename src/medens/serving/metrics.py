"""Prometheus metrics of the served ensemble, at ``/metrics`` beside KServe's own.

All live in prometheus-client's default registry (the one KServe's ``/metrics`` renders) and
carry a ``model`` label. A server runs one worker per pod, so counters are whole.

==========================================  =========  ============================================
metric                                      type       what
==========================================  =========  ============================================
medens_predictions_total{model,class}       counter    images predicted, by predicted class
                                                       (segmentation: by class present in the mask)
medens_prediction_confidence{model}         histogram  top-class probability of each image
medens_prediction_entropy{model}            histogram  predictive entropy (nats) of each image
medens_member_disagreement{model}           histogram  fraction of members whose label differs
                                                       from the ensemble's
medens_input_drift_psi{model}               gauge      PSI of the recent images' intensity histogram
                                                       against the training reference
medens_input_images_total{model}            counter    images received for prediction or explanation
                                                       (the drift sample; each image counted once)
medens_drift_mmd{model}                     gauge      MMD^2 of the recent images' embeddings against
                                                       the artifact's reference sample
medens_drift_mmd_pvalue{model}              gauge      its permutation p-value (low: content drift)
medens_request_errors_total{model,reason}   counter    rejected or failed requests, by reason
medens_batch_size{model}                    histogram  images per model forward
medens_forward_seconds{model}               histogram  time of one batched ensemble forward
medens_queue_images{model}                  gauge      images waiting for a forward
medens_model_info{model,method,...}         gauge      1, labelled with the artifact's description
==========================================  =========  ============================================
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import threading
from collections import deque

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from medens.data.drift import intensity_counts, psi
from medens.data.embedding_drift import EmbeddingReference

PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
FRACTION_BUCKETS = (0.0, 0.1, 0.2, 0.25, 0.34, 0.5, 0.67, 0.75, 1.0)
ENTROPY_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

PREDICTIONS = Counter("medens_predictions", "Images predicted, by predicted class", ["model", "class"])
CONFIDENCE = Histogram("medens_prediction_confidence", "Top-class probability per image", ["model"],
                       buckets=PROBABILITY_BUCKETS)
ENTROPY = Histogram("medens_prediction_entropy", "Predictive entropy (nats) per image", ["model"],
                    buckets=ENTROPY_BUCKETS)
DISAGREEMENT = Histogram("medens_member_disagreement", "Fraction of members whose label differs from the "
                         "ensemble's, per image", ["model"], buckets=FRACTION_BUCKETS)
DRIFT_PSI = Gauge("medens_input_drift_psi", "Population stability index of the recent images' intensity "
                  "histogram against the training reference", ["model"])
DRIFT_MMD = Gauge("medens_drift_mmd", "MMD^2 of the recent images' penultimate-layer embeddings against the "
                  "artifact's reference sample", ["model"])
DRIFT_MMD_PVALUE = Gauge("medens_drift_mmd_pvalue", "Permutation p-value of medens_drift_mmd (low: the recent "
                         "images' content differs from the reference)", ["model"])
INPUT_IMAGES = Counter("medens_input_images", "Images received for prediction", ["model"])
ERRORS = Counter("medens_request_errors", "Rejected or failed requests, by reason", ["model", "reason"])
# every inference request (a POST, whatever its route: v1, v2, explain), counted once when it
# arrives, before any check: the denominator of the error ratio (medens_request_errors_total / this)
REQUESTS = Counter("medens_requests", "Inference requests received (POST), each counted once", ["model"])
BATCH_SIZE = Histogram("medens_batch_size", "Images per ensemble forward", ["model"], buckets=BATCH_BUCKETS)
FORWARD_SECONDS = Histogram("medens_forward_seconds", "Seconds per batched ensemble forward", ["model"],
                            buckets=SECONDS_BUCKETS)
QUEUE_IMAGES = Gauge("medens_queue_images", "Images waiting for a forward", ["model"])
MODEL_INFO = Gauge("medens_model_info", "The served ensemble artifact", ["model", "method", "members", "task",
                                                                        "medens_version"])


class DriftMonitor:
    """PSI of the last ``window`` images' pooled intensity histogram against the training reference.

    Thread-safe; without a reference (an artifact from before references were stored) it only
    counts images and leaves the gauge unset.
    """

    def __init__(self, model: str, reference: dict | None, window: int = 500) -> None:
        self.model = model
        if window < 1:
            raise ValueError(f"the drift window must be at least 1 image, got {window}")
        self.reference = None
        self.bins = 32
        if reference and reference.get("fractions"):
            fractions = np.asarray(reference["fractions"], dtype=np.float64)
            if fractions.ndim != 1 or int(reference.get("bins", len(fractions))) != len(fractions) \
                    or not np.isfinite(fractions).all() or fractions.sum() <= 0:
                raise ValueError(f"the artifact's drift reference is malformed: bins={reference.get('bins')}, "
                                 f"{fractions.size} fractions summing to {fractions.sum():.4g}")
            self.reference = fractions
            self.bins = len(fractions)
        self._recent: deque[np.ndarray] = deque(maxlen=window)
        self._sum = np.zeros(self.bins, dtype=np.float64)
        self._lock = threading.Lock()
        self.value: float | None = None

    def observe(self, images: list[np.ndarray]) -> float | None:
        """Add images (each ``(H, W, C)`` intensities); returns the updated PSI (None without reference)."""
        INPUT_IMAGES.labels(self.model).inc(len(images))
        if self.reference is None or not images:
            return None
        # each image weighs the same whatever its size: its own normalised histogram
        hists = []
        for img in images:
            c = intensity_counts(img, self.bins).astype(np.float64)
            hists.append(c / max(c.sum(), 1.0))
        with self._lock:
            for h in hists:
                if len(self._recent) == self._recent.maxlen:
                    self._sum -= self._recent[0]
                self._recent.append(h)
                self._sum += h
            self.value = value = psi(self.reference, np.maximum(self._sum, 0.0))
            DRIFT_PSI.labels(self.model).set(value)
        return value


class EmbeddingDriftMonitor:
    """Content drift: MMD^2 of the last ``window`` embeddings against the artifact's reference sample,
    with a permutation p-value (:mod:`medens.data.embedding_drift`), off the request path.

    ``observe`` only appends a request's embeddings (thread-safe, no computation); once ``every``
    new images arrived it hands a copy of the window to one background thread, which runs the
    test and sets ``medens_drift_mmd`` and ``medens_drift_mmd_pvalue``. While a test runs, new
    triggers are absorbed (the next one after it finishes tests the newer window). Without a
    reference (an artifact packaged before references) it does nothing and the gauges stay unset.
    """

    def __init__(self, model: str, reference: EmbeddingReference | None, *, window: int = 200, every: int = 50,
                 permutations: int = 200, seed: int = 0) -> None:
        for label, v in (("window", window), ("every", every), ("permutations", permutations)):
            if v < 1:
                raise ValueError(f"the embedding drift {label} must be at least 1, got {v}")
        self.model = model
        self.reference = reference
        self.every = int(every)
        self.permutations = int(permutations)
        self._recent: deque[np.ndarray] = deque(maxlen=int(window))
        self._since = 0
        self._lock = threading.Lock()
        self._test_lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self._pending: concurrent.futures.Future | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.value: float | None = None
        self.pvalue: float | None = None
        self.tests = 0

    def observe(self, embeddings: np.ndarray) -> concurrent.futures.Future | None:
        """Append ``(N, D)`` embeddings; returns the background test it started, if any."""
        if self.reference is None or len(embeddings) == 0:
            return None
        with self._lock:
            self._recent.extend(np.asarray(embeddings, np.float32))
            self._since += len(embeddings)
            busy = self._pending is not None and not self._pending.done()
            if self._since < self.every or busy:
                return None
            self._since = 0
            window = np.stack(self._recent)
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="medens-drift")
            self._pending = self._executor.submit(self._test, window)
            return self._pending

    def test_now(self) -> tuple[float, float] | None:
        """Test the current window in the calling thread (None without a reference or embeddings)."""
        with self._lock:
            window = np.stack(self._recent) if self._recent else None
        return None if self.reference is None or window is None else self._test(window)

    def _test(self, window: np.ndarray) -> tuple[float, float]:
        assert self.reference is not None
        with self._test_lock:
            value, pvalue = self.reference.test(window, self.permutations, self._rng)
            self.value, self.pvalue = value, pvalue
            self.tests += 1
        DRIFT_MMD.labels(self.model).set(value)
        DRIFT_MMD_PVALUE.labels(self.model).set(pvalue)
        return value, pvalue

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)


def record_predictions(model: str, class_names: list[str], probs: np.ndarray, entropy: np.ndarray,
                       disagreement: np.ndarray) -> None:
    """Count predicted classes and observe confidence, entropy and disagreement of a batch."""
    labels = probs.argmax(1)
    for k, n in zip(*np.unique(labels, return_counts=True)):
        PREDICTIONS.labels(model, class_names[int(k)]).inc(int(n))
    conf = CONFIDENCE.labels(model)
    ent = ENTROPY.labels(model)
    dis = DISAGREEMENT.labels(model)
    for c, e, d in zip(probs.max(1), entropy, disagreement):
        conf.observe(float(c))
        ent.observe(float(e))
        dis.observe(float(d))


# per request (set by medens.serving.server.RequestGuard): whether its error was counted already
ERROR_COUNTED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("medens_error_counted", default=None)


def record_segmentation(model: str, class_names: list[str], probs: np.ndarray, entropy: np.ndarray,
                        disagreement: np.ndarray) -> None:
    """Segmentation: count every class present in each predicted mask; confidence is the mean
    top-class probability over pixels, entropy and disagreement the per-image pixel means."""
    conf = probs.max(1).reshape(len(probs), -1).mean(1)
    for mask in probs.argmax(1):
        for k in np.unique(mask):
            PREDICTIONS.labels(model, class_names[int(k)]).inc()
    for c, e, d in zip(conf, entropy, disagreement):
        CONFIDENCE.labels(model).observe(float(c))
        ENTROPY.labels(model).observe(float(e))
        DISAGREEMENT.labels(model).observe(float(d))


def record_error(model: str, reason: str) -> None:
    """Count one failed request by reason (once per request: the guard skips counted ones)."""
    ERRORS.labels(model, reason).inc()
    holder = ERROR_COUNTED.get()
    if holder is not None:
        holder["counted"] = True
