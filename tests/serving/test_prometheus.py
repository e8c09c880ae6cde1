"""The served ensemble's metrics as a real Prometheus server scrapes them.

A ``prometheus`` process on 127.0.0.1 scrapes this module's own ``medens serve`` every second; the
test sends a known set of predictions and bad requests, then reads back through Prometheus' HTTP
API: predictions by class, errors by reason, the confidence histogram's count, the input drift PSI
(recomputed here from the artifact's training reference and the images sent), ``up`` and one of
KServe's own metrics. ``prometheus`` missing is a failure (``apt-get install prometheus``), not a skip.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest
from _prometheus import PrometheusMissing, PrometheusServer
from _server import http

from medens.data import drift

JOB = "medens-tiny"


def png_b64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def scrape_direct(url: str) -> dict[tuple[str, tuple], float]:
    """``/metrics`` of the server itself: ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def mean_image_histogram(images: list[np.ndarray], bins: int = 32) -> np.ndarray:
    """Each image's pooled-channel intensity histogram over [0, 256), normalised, then averaged."""
    hists = []
    for img in images:
        counts, _ = np.histogram(np.asarray(img, dtype=np.float64).ravel(), bins=bins, range=(0.0, 256.0))
        hists.append(counts / counts.sum())
    return np.mean(hists, axis=0)


@contextlib.contextmanager
def running_prometheus(server, workdir) -> Iterator[PrometheusServer]:
    """A Prometheus scraping ``server`` every second (config checked with promtool first), always ended.

    Without the ``prometheus`` package the test fails (not skips), saying how to install it."""
    missing = None
    try:
        prom = PrometheusServer(workdir, f"127.0.0.1:{server.port}", job=JOB)
    except PrometheusMissing as e:
        missing = str(e)
    if missing:
        pytest.fail(missing, pytrace=False)
    check = prom.check_config()
    assert check.returncode == 0, f"promtool check config failed:\n{check.stdout}\n{check.stderr}"
    assert "SUCCESS" in check.stdout + check.stderr, check.stdout + check.stderr
    with prom:
        yield prom


def test_metrics_read_back_through_prometheus(server, tiny_ensemble, tmp_path):
    with running_prometheus(server, tmp_path / "prometheus") as prometheus:
        _send_and_read_back(server, prometheus, tiny_ensemble)


def _send_and_read_back(server, prometheus: PrometheusServer, tiny_ensemble) -> None:
    ens_dir, images = tiny_ensemble
    url = f"{server.url}/v1/models/{server.name}:predict"
    model = server.name

    # this module's server is fresh: none of the counters has moved yet
    before = scrape_direct(server.url)
    moved = {k: v for k, v in before.items()
             if k[0].startswith("medens_") and k[0] != "medens_model_info" and not k[0].endswith("_created")
             and ("model", model) in k[1] and v != 0}
    assert moved == {}, f"the server's medens counters are not at zero before the test: {moved}"
    assert not any(k[0] == "medens_input_drift_psi" for k in before), "the drift gauge is set before any image"

    # bad requests first (each counted once, by reason), then the valid ones
    sent_errors = Counter()
    status, body, _ = http("POST", url, {"instances": ["not base64 at all!"]})
    assert status == 400 and "invalid base64" in json.dumps(body), body
    sent_errors["invalid_base64"] += 1
    status, body, _ = http("POST", url, {"instances": [png_b64(images[0]), "@@@@"]})
    assert status == 400 and "invalid base64" in json.dumps(body), body
    sent_errors["invalid_base64"] += 1
    status, body, _ = http("POST", f"{server.url}/v1/models/no-such-model:predict", {"instances": [png_b64(images[0])]})
    assert status == 404, body
    sent_errors["not_found"] += 1
    status, body, _ = http("POST", url, {"instances": [png_b64(images[0])] * 17})
    assert status == 400 and "over the limit of 16" in json.dumps(body), body
    sent_errors["batch_too_large"] += 1

    # 8 test images and 4 unlike anything in training (the tiny model tends to give those other
    # classes; the check below compares with whatever labels the server returned)
    rng = np.random.default_rng(7)
    shape = images.shape[1:]
    sent = [images[i] for i in range(8)] + [np.zeros(shape, np.uint8), np.full(shape, 64, np.uint8),
                                            255 - images[0], rng.integers(0, 256, shape, dtype=np.uint8)]
    labels: Counter[str] = Counter()
    valid_requests = 0
    for chunk in (sent[:5], sent[5:9], sent[9:]):
        status, body, _ = http("POST", url, {"instances": [png_b64(i) for i in chunk]})
        assert status == 200, body
        assert len(body["predictions"]) == len(chunk)
        labels.update(p["class_name"] for p in body["predictions"])
        valid_requests += 1
    done_at = time.time()

    # expected drift: the artifact's training reference against the mean per-image histogram
    reference = json.loads((ens_dir / "ensemble.json").read_text())["reference"]
    assert reference["bins"] == 32 and len(reference["fractions"]) == 32
    expected_psi = drift.psi(np.asarray(reference["fractions"]), mean_image_histogram(sent))
    e = np.maximum(np.asarray(reference["fractions"]) / np.sum(reference["fractions"]), drift.EPS)
    a = np.maximum(mean_image_histogram(sent), drift.EPS)
    assert expected_psi == pytest.approx(float(np.sum((a - e) * np.log(a / e))), abs=1e-12)

    sel = f'{{model="{model}",job="{JOB}"}}'

    # wait for a scrape that started after the last response, then read everything through Prometheus
    def scraped() -> tuple[bool, object]:
        ts = prometheus.scalar(f'timestamp(up{{job="{JOB}"}})')
        preds = prometheus.values(f"sum by (class) (medens_predictions_total{sel})", by="class")
        return ts is not None and ts > done_at and sum(preds.values()) == 12, (ts, done_at, preds)

    prometheus.wait_for(scraped, timeout=30)

    assert prometheus.scalar(f'up{{job="{JOB}"}}') == 1.0
    preds = prometheus.values(f"sum by (class) (medens_predictions_total{sel})", by="class")
    assert preds == {k: float(v) for k, v in labels.items()}
    errors = prometheus.values(f"sum by (reason) (medens_request_errors_total{sel})", by="reason")
    assert errors == {k: float(v) for k, v in sent_errors.items()}
    # every inference request once, rejected ones included: the error ratio's denominator (the
    # chart's MedensHighErrorRatio is this ratio)
    assert prometheus.scalar(f"medens_requests_total{sel}") == float(valid_requests + sum(sent_errors.values()))
    ratio = prometheus.scalar(f"sum(medens_request_errors_total{sel}) / sum(medens_requests_total{sel})")
    assert ratio == pytest.approx(sum(sent_errors.values()) / (valid_requests + sum(sent_errors.values())))
    assert prometheus.scalar(f"medens_prediction_confidence_count{sel}") == 12.0
    assert prometheus.scalar(f"medens_prediction_entropy_count{sel}") == 12.0
    assert prometheus.scalar(f"medens_input_images_total{sel}") == 12.0
    psi = prometheus.scalar(f"medens_input_drift_psi{sel}")
    assert psi is not None and abs(psi - expected_psi) <= 1e-6, (psi, expected_psi)
    assert prometheus.scalar(f'medens_model_info{sel}') == 1.0
    # KServe's own latency histogram: every request that reached the model's predict (the
    # invalid-base64 and over-the-limit ones fail inside it; the unknown model never gets there)
    kserve_count = prometheus.scalar(f'request_predict_seconds_count{{model_name="{model}",job="{JOB}"}}')
    assert kserve_count == float(valid_requests + sent_errors["invalid_base64"] + sent_errors["batch_too_large"])
