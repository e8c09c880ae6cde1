"""Throughput and latency of ``medens serve`` against the in-process ensemble forward.

The ensemble (default: resnet18, densenet121 and efficientnet_b0 at 64 px, RGB, three classes,
a mean combiner) is built with random weights and written as a real ensemble artifact
(``model.json`` per member, ``ensemble.json``): throughput does not depend on the weights, and a
heterogeneous ensemble of registered CNNs at a realistic input size is what the server is for.
The images are synthetic red-blood-cell crops at the input size.

Measured in one run, on the same images and with the same torch thread count:

- ``raw``: ``EnsemblePredictor.forward`` on preprocessed batches (size ``max_batch``, and 1, each
  concurrency and its half for context), in this process with no server running, best of three
  trials, before and again after the endpoint runs; the faster figure of each size is the
  reference (the conservative choice: the machine's speed drifts by 20-30% over minutes);
- ``endpoint``: a real ``medens serve`` on 127.0.0.1, closed-loop clients (threads on keep-alive
  connections, one base64-PNG image per v1 request) at each concurrency, with micro-batching
  (``--max-batch 32`` and each ``--max-wait-ms``: 50, the server's default, and 0, greedy) and without
  (``--max-batch 1``): images/s, p50/p99 latency, from ``/metrics`` the mean batch and the fraction
  of the window the forward thread was busy (and its images/s while busy), the CPU time per
  image of the server process and of the clients, and the latency of a readiness GET every
  0.25 s while the clients run (health checks must not queue behind the forward).

Goals, judged at the first ``--max-wait-ms`` (the server's default): ``endpoint_c8_batched /
raw_batched >= 0.85`` and ``batched / unbatched >= 2.0`` at concurrency 8. Beside them, like-for-like
ratios compare each concurrency with the raw forward at the batch that concurrency can fill (at
concurrency 8 the endpoint never holds more than 8 images, so ``c8 / raw batch 8`` is reported and
judged beside the literal ``c8 / raw batch max_batch``). On a
small machine the clients, the HTTP stack and the forward share the same cores.

Run: ``.venv/bin/python benchmarks/serve.py [--members resnet18,densenet121,efficientnet_b0]
[--size 64] [--duration 12] [--warmup 3] [--concurrency 1,8,32] [--max-batch 32] [--max-wait-ms 50,0]``
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import sys
import tempfile
import threading
import time
from http import client as httpclient
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "serving"))  # ServerProcess: a real `medens serve` subprocess
from _common import write_result  # noqa: E402
from _server import ServerProcess, http  # noqa: E402

from medens.data.drift import intensity_reference  # noqa: E402
from medens.data.synthetic import CELL_CLASSES, make_cells  # noqa: E402
from medens.data.transforms import InputSpec  # noqa: E402
from medens.ensemble.artifact import write_ensemble  # noqa: E402
from medens.ensemble.prediction import ENSEMBLES  # noqa: E402
from medens.models import build, count_parameters  # noqa: E402
from medens.models.artifact import WEIGHTS, save_state_dict, write_manifest  # noqa: E402
from medens.serving.predictor import EnsemblePredictor  # noqa: E402

NAME = "bench"
GOAL_ENDPOINT_RATIO = 0.85
GOAL_BATCHING_RATIO = 2.0
ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


# ---------------------------------------------------------------- the artifact and the images

def make_images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """Synthetic cell crops, uint8 ``(n, size, size, channels)``."""
    per = -(-n // len(CELL_CLASSES))
    images, _, _ = make_cells({c: per for c in CELL_CLASSES}, size=size, seed=seed)
    images = images[np.random.default_rng(seed).permutation(len(images))[:n]]
    if channels == 1:
        grey = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        images = np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
    return np.ascontiguousarray(images)


def build_artifact(out: Path, members: list[str], images: np.ndarray, method: str) -> dict:
    """Randomly initialised members as model artifacts, then the ensemble artifact in ``out/ensemble``."""
    channels, size = images.shape[-1], images.shape[1]
    class_names = list(CELL_CLASSES)
    spec = InputSpec.fit(images, "unit")
    reference = intensity_reference(images)
    dirs, params = {}, {}
    for i, name in enumerate(members):
        torch.manual_seed(i)
        model = build(name, in_channels=channels, num_classes=len(class_names)).eval()
        model.check_input_size(size)
        mid = f"{name}-{i}"
        d = out / "members" / mid
        d.mkdir(parents=True)
        save_state_dict(d / WEIGHTS, model.state_dict())
        kwargs = {k: v for k, v in model.build_kwargs.items() if k not in ("name", "task")}
        write_manifest(d, {"kind": "model", "task": "classification", "architecture": {"name": name, "kwargs": kwargs},
                           "class_names": class_names, "input": spec.to_dict(), "reference": reference,
                           "member_id": mid, "note": "random weights (benchmarks/serve.py)"})
        dirs[mid], params[mid] = d, count_parameters(model)
    # the combiner is fitted on uniform random probabilities: its cost, not its accuracy, matters here
    rng = np.random.default_rng(0)
    val = {mid: rng.dirichlet(np.ones(len(class_names)), size=60) for mid in dirs}
    combiner = ENSEMBLES.get(method)(member_ids=list(dirs)).fit(val, np.arange(60) % len(class_names))
    combiner.class_names = class_names
    path = write_ensemble(out / "ensemble", name=f"bench-{method}", member_dirs=dirs, combiner=combiner.to_dict())
    return {"path": path, "member_parameters": params}


# ---------------------------------------------------------------- raw forward

def raw_throughput(predictor: EnsemblePredictor, x: np.ndarray, batch: int, seconds: float, warmup: float,
                   trials: int = 3) -> float:
    """Images/s of ``predictor.forward`` on batches of ``batch`` preprocessed images: the best of
    ``trials`` runs of ``seconds / trials`` each (a shared machine only ever makes a run slower)."""
    reps = -(-batch // len(x))
    xb = np.ascontiguousarray(np.concatenate([x] * reps)[:batch])
    t_end = time.perf_counter() + warmup
    predictor.forward(xb)
    while time.perf_counter() < t_end:
        predictor.forward(xb)
    best = 0.0
    for _ in range(trials):
        n, t0 = 0, time.perf_counter()
        while True:
            predictor.forward(xb)
            n += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / trials:
                break
        best = max(best, n / elapsed)
    return best


# ---------------------------------------------------------------- the endpoint

def png_b64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _metric(text: str, name: str) -> float:
    m = re.search(rf'^{re.escape(name)}\{{[^}}]*model="{NAME}"[^}}]*\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def server_counters(server: ServerProcess) -> dict[str, float]:
    _, text, _ = http("GET", f"{server.url}/metrics")
    return {k: _metric(text, f"medens_{k}") for k in
            ("batch_size_sum", "batch_size_count", "forward_seconds_sum", "forward_seconds_count")}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def endpoint_run(server: ServerProcess, bodies: list[bytes], concurrency: int, seconds: float,
                 warmup: float) -> dict:
    """Closed loop: ``concurrency`` clients, one single-image request each at a time, for ``seconds``
    after ``warmup``; throughput and latencies are of the requests answered inside the window."""
    path = f"/v1/models/{NAME}:predict"
    stop = threading.Event()
    results: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def client(idx: int) -> None:
        conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=120)
        i = idx
        try:
            while not stop.is_set():
                body = bodies[i % len(bodies)]
                i += 1
                start = time.perf_counter()
                try:
                    conn.request("POST", path, body=body, headers={"content-type": "application/json"})
                    resp = conn.getresponse()
                    raw = resp.read()
                except (OSError, httpclient.HTTPException) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    conn.close()
                    conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=120)
                    continue
                end = time.perf_counter()
                if resp.status != 200:
                    errors.append(f"HTTP {resp.status}: {raw[:200]!r}")
                    continue
                results[idx].append((start, end))
        finally:
            conn.close()

    health: list[tuple[float, float]] = []

    def check_health() -> None:
        """The readiness GET every 0.25 s under load (formerly a 1 s limit in tests/serving/test_load.py)."""
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status, _, _ = http("GET", f"{server.url}/v1/models/{NAME}", timeout=30)
            except OSError as e:
                errors.append(f"health: {type(e).__name__}: {e}")
            else:
                if status == 200:
                    health.append((start, time.perf_counter()))
                else:
                    errors.append(f"health: HTTP {status}")
            stop.wait(0.25)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    threads.append(threading.Thread(target=check_health, daemon=True))
    for t in threads:
        t.start()
    time.sleep(warmup)
    before = server_counters(server)
    cpu0, own0 = process_cpu_seconds(server.proc.pid), time.process_time()
    t0 = time.perf_counter()
    time.sleep(seconds)
    t1 = time.perf_counter()
    cpu1, own1 = process_cpu_seconds(server.proc.pid), time.process_time()
    after = server_counters(server)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    window = [(s, e) for r in results for s, e in r if t0 <= e <= t1]
    lat = np.array(sorted(e - s for s, e in window)) * 1000.0
    health_ms = np.array([e - s for s, e in health if t0 <= e <= t1]) * 1000.0
    d = {k: after[k] - before[k] for k in after}
    forwards = d["batch_size_count"]
    return {
        "concurrency": concurrency,
        "requests": len(window),
        "images_per_s": round(len(window) / (t1 - t0), 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "mean_ms": round(float(lat.mean()), 1) if len(lat) else None,
        "health_checks": len(health_ms),
        "health_p50_ms": round(float(np.percentile(health_ms, 50)), 1) if len(health_ms) else None,
        "health_max_ms": round(float(health_ms.max()), 1) if len(health_ms) else None,
        "errors": len(errors),
        "error_examples": errors[:3],
        "mean_batch": round(d["batch_size_sum"] / forwards, 2) if forwards else None,
        # the fraction of the window the forward thread computed, and its images/s while it did
        "forward_busy_fraction": round(d["forward_seconds_sum"] / (t1 - t0), 3),
        "forward_images_per_busy_s": round(d["batch_size_sum"] / d["forward_seconds_sum"], 2)
        if d["forward_seconds_sum"] else None,
        # CPU seconds per answered image: the whole server process, and this (client) process
        "server_cpu_ms_per_image": round(1000 * (cpu1 - cpu0) / len(window), 2) if window else None,
        "client_cpu_ms_per_image": round(1000 * (own1 - own0) / len(window), 2) if window else None,
    }


def grpc_run(server: ServerProcess, bodies: list[bytes], concurrency: int, seconds: float, warmup: float) -> dict:
    """Closed loop over gRPC v2 (``ModelInfer``, the PNG as one raw ``BYTES`` element): ``concurrency``
    clients on one channel each, images/s and latencies of the requests answered in the window."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    pngs = [base64.b64decode(json.loads(b)["instances"][0]) for b in bodies]
    reqs = [pb.ModelInferRequest(model_name=NAME, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[1])], raw_input_contents=[len(p).to_bytes(4, "little") + p])
        for p in pngs]
    stop, t0 = threading.Event(), time.perf_counter() + warmup
    done: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def client(idx: int) -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub, i = pb_grpc.GRPCInferenceServiceStub(channel), idx
            while not stop.is_set():
                start = time.perf_counter()
                try:
                    stub.ModelInfer(reqs[i % len(reqs)], timeout=120)
                except grpc.RpcError as e:
                    errors.append(f"{e.code()}: {e.details()}")
                    continue
                i += 1
                if start >= t0:
                    done[idx].append(time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup + seconds)
    stop.set()
    for t in threads:
        t.join()
    lat = sorted(x for d in done for x in d)
    return {"concurrency": concurrency, "images_per_s": round(len(lat) / seconds, 1), "errors": len(errors),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None}


def serve_runs(artifact: Path, bodies: list[bytes], expected: np.ndarray, *, mode: str, extra: list[str],
               concurrency: list[int], seconds: float, warmup: float, threads: int, log: Path) -> dict:
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with ServerProcess(artifact, NAME, env=env, extra_args=extra, log=log) as server:
        # parity: the server answers what the in-process forward computes
        status, body, _ = http("POST", f"{server.url}/v1/models/{NAME}:predict", bodies[0],
                               {"content-type": "application/json"})
        assert status == 200, body
        served = np.asarray(body["predictions"][0]["probabilities"])
        parity = float(np.abs(served - expected[0]).max())
        runs = []
        for c in concurrency:
            r = endpoint_run(server, bodies, c, seconds, warmup)
            print(f"  {mode} c={c}: {r['images_per_s']} images/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                  f"mean batch {r['mean_batch']}, forward busy {r['forward_busy_fraction']}, "
                  f"health p50 {r['health_p50_ms']} ms max {r['health_max_ms']} ms, errors {r['errors']}",
                  flush=True)
            runs.append(r)
        rss = server.rss_bytes()
        grpc_runs = {str(c): grpc_run(server, bodies, c, seconds, warmup) for c in concurrency}
    return {"server_args": extra, "parity_max_abs_diff": parity, "server_rss_mib": round(rss / 2**20, 1),
            "runs": {str(r["concurrency"]): r for r in runs}, "grpc_runs": grpc_runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="resnet18,densenet121,efficientnet_b0",
                    help="comma-separated registered classification architectures (random weights)")
    ap.add_argument("--size", type=int, default=64, help="input size in pixels (images are sent at this size)")
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--method", default="mean", help="ensemble combiner (mean, weighted, ...)")
    ap.add_argument("--images", type=int, default=64, help="distinct test images, cycled through")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", default="50,0",
                    help="comma-separated; the first (default 50: the server's default) is the one the goals are "
                         "judged on, the others are reported beside it")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--duration", type=float, default=12.0, help="seconds per endpoint measurement")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each endpoint measurement")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch threads of the server and of the raw forward")
    ap.add_argument("--name", default="serve", help="results file benchmarks/results/<name>.json")
    args = ap.parse_args()
    members = [m.strip() for m in args.members.split(",") if m.strip()]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    waits = [float(w) for w in args.max_wait_ms.split(",")]
    if 8 not in concurrency:
        raise SystemExit("--concurrency must include 8 (the goals are measured there)")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="medens-bench-serve-") as tmp:
        tmp = Path(tmp)
        images = make_images(args.images, args.size, args.channels)
        built = build_artifact(tmp / "artifact", members, images, args.method)
        artifact = built["path"]
        predictor = EnsemblePredictor.load(artifact)
        x = predictor.prepare(list(images))
        expected = np.stack([r["probs"] for r in predictor.forward(x)])
        bodies = [json.dumps({"instances": [png_b64(img)]}).encode() for img in images]

        # the batch sizes the endpoint can form: 1, each concurrency and half of it (see the report), max_batch
        sizes = sorted({1, args.max_batch, *(min(c, args.max_batch) for c in concurrency),
                        *(max(1, min(c, args.max_batch) // 2) for c in concurrency)})
        raw_s = max(3.0, args.duration / 2)
        print(f"raw forward ({args.threads} threads), images/s by batch: ", end="", flush=True)
        raw = {str(b): round(raw_throughput(predictor, x, b, raw_s, 1.0), 2) for b in sizes}
        print(raw, flush=True)

        common = {"concurrency": concurrency, "seconds": args.duration, "warmup": args.warmup, "threads": args.threads}
        batched = {}
        for w in waits:
            batched[f"{w:g}"] = serve_runs(artifact, bodies, expected, mode=f"batched (wait {w:g} ms)",
                                           log=tmp / f"batched-{w:g}.log",
                                           extra=["--max-batch", str(args.max_batch), "--max-wait-ms", f"{w:g}"],
                                           **common)
        unbatched = serve_runs(artifact, bodies, expected, mode="unbatched", log=tmp / "unbatched.log",
                               extra=["--max-batch", "1"], **common)

        # raw again at every size after the endpoint runs; the faster of the two is the reference
        raw_after = {str(b): round(raw_throughput(predictor, x, b, raw_s, 1.0), 2) for b in sizes}
        print(f"raw forward again: {raw_after}", flush=True)
        raw_first = dict(raw)
        raw = {b: max(v, raw_after[b]) for b, v in raw_first.items()}

    raw_batched = raw[str(args.max_batch)]
    c8_u = unbatched["runs"]["8"]["images_per_s"]
    ratios = {}
    for w, b in batched.items():
        c8_b = b["runs"]["8"]["images_per_s"]
        like = {f"c{c}_over_raw_batch_{min(c, args.max_batch)}":
                round(b["runs"][str(c)]["images_per_s"] / raw[str(min(c, args.max_batch))], 3) for c in concurrency}
        ratios[w] = {"endpoint_c8_batched_over_raw_batched": round(c8_b / raw_batched, 3),
                     "batched_over_unbatched_c8": round(c8_b / c8_u, 3) if c8_u else None,
                     "like_for_like": like}
    primary = ratios[f"{waits[0]:g}"]
    endpoint_ratio = primary["endpoint_c8_batched_over_raw_batched"]
    batching_ratio = primary["batched_over_unbatched_c8"] or 0.0
    write_result(args.name, {
        "config": {"members": members, "member_parameters": built["member_parameters"], "method": args.method,
                   "input_size": args.size, "channels": args.channels, "weights": "random init",
                   "images": args.images, "image_format": "PNG, base64, one per v1 request",
                   "max_batch": args.max_batch, "max_wait_ms": waits, "goal_max_wait_ms": waits[0],
                   "torch_threads": args.threads, "concurrency": concurrency,
                   "seconds_per_measurement": args.duration, "warmup_seconds": args.warmup,
                   "clients": "threads, http.client keep-alive, same machine",
                   "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}},
        "raw_forward_images_per_s": {"by_batch": raw, "before_endpoint_runs": raw_first,
                                     "after_endpoint_runs": raw_after,
                                     "reference_raw_batched": raw_batched},
        "endpoint_batched": batched,
        "endpoint_unbatched": unbatched,
        "ratios": ratios,
        "goals": {
            "max_wait_ms": waits[0],
            "endpoint_c8_batched_over_raw_batched": endpoint_ratio,
            "endpoint_over_raw_goal": GOAL_ENDPOINT_RATIO,
            "endpoint_over_raw_met": endpoint_ratio >= GOAL_ENDPOINT_RATIO,
            "batched_over_unbatched_c8": batching_ratio,
            "batched_over_unbatched_goal": GOAL_BATCHING_RATIO,
            "batched_over_unbatched_met": batching_ratio >= GOAL_BATCHING_RATIO,
            "like_for_like_c8_over_raw_batch_8": primary["like_for_like"].get("c8_over_raw_batch_8"),
            "like_for_like_met": (primary["like_for_like"].get("c8_over_raw_batch_8") or 0.0) >= GOAL_ENDPOINT_RATIO,
        },
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    })


if __name__ == "__main__":
    main()
