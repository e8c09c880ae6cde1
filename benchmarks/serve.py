"""Throughput and latency of ``medens serve`` against the in-process ensemble forward, per backend.

The ensemble (default: resnet18, densenet121 and efficientnet_b0 at 64 px, RGB, three classes,
a mean combiner) is built with random weights and written as a real ensemble artifact
(``model.json`` per member, ``ensemble.json``), then exported to ONNX and checked against PyTorch
as packaging does (:func:`medens.ensemble.onnx_members.export_onnx`): throughput does not depend
on the weights, and a heterogeneous ensemble of registered CNNs at a realistic input size is what
the server is for. The images are synthetic red-blood-cell crops at the input size.

Measured in one run, on the same images and with the same thread count, for each backend
(``--backends torch,onnx``: PyTorch eager and ONNX Runtime):

- ``raw``: ``EnsemblePredictor.forward`` on preprocessed batches (1, 8 and ``max_batch``), in this
  process with no server running, best of three trials, the backends interleaved, before and again
  after the endpoint runs; the faster figure of each size is the reference (the conservative
  choice: the machine's speed drifts by 20-30% over minutes);
- ``raw_concurrent`` (ONNX Runtime): the server's concurrent forwards without a server, as many
  threads as its forward workers (``ServingSettings.workers_for``, 2 on two or more cores) each
  running a session with its share of the threads; for the goal the raw reference of a backend at
  ``max_batch`` is the faster of this and the single forward with every thread;
- ``profile``: each member alone at batch ``max_batch`` on each backend (where the time goes);
- ``endpoint``: a real ``medens serve --backend B`` on 127.0.0.1, closed-loop clients (threads on
  keep-alive connections, one base64-PNG image per v1 request) at each concurrency, with
  micro-batching (``--max-batch 32`` and each ``--max-wait-ms``) and without (``--max-batch 1``,
  at concurrency 8), for ONNX Runtime also with one forward at a time (``--forward-workers 1``):
  images/s, p50/p99 latency, from ``/metrics`` the mean batch and the forward seconds per second
  of the window (up to the number of forward workers; and images/s while busy), the CPU time per image
  of the server process and of the clients, and the latency of a readiness GET every 0.25 s while
  the clients run (health checks must not queue behind the forward). The protocol is a hook
  (``PROTOCOLS``, ``--protocols``): REST v1 and gRPC v2.

Goals (issue 24), judged at the first ``--max-wait-ms`` (the server's default): per backend the
endpoint at concurrency 32 delivers ``>= 0.85`` of the raw forward at batch ``max_batch``; the
default backend's raw forward at batch ``max_batch`` is ``>= 1.3x`` PyTorch's; batching at least
doubles throughput at concurrency 8. Like-for-like ratios beside them compare each concurrency with
the raw forward at the batch that concurrency can fill, and ``ceilings`` (:func:`ceilings`) gives
what the CPU accounting and the raw forwards allow each ratio to reach on this machine. The load average of the machine is
recorded at each phase: on a shared machine the clients, the HTTP stack, the forward and other
work share the same cores, and PyTorch's spin-waiting OpenMP threads suffer most from that.

Run: ``.venv/bin/python benchmarks/serve.py [--members resnet18,densenet121,efficientnet_b0]
[--size 64] [--duration 8] [--warmup 3] [--concurrency 8,32] [--max-batch 32] [--max-wait-ms 50]
[--backends torch,onnx] [--protocols rest]``
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
from collections.abc import Callable
from http import client as httpclient
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "serving"))  # ServerProcess: a real `medens serve` subprocess
from _common import write_result  # noqa: E402
from _ensembles import random_ensemble  # noqa: E402
from _server import ServerProcess, http  # noqa: E402

from medens.data.synthetic import CELL_CLASSES, make_cells  # noqa: E402
from medens.ensemble.artifact import load_ensemble  # noqa: E402
from medens.ensemble.onnx_members import AUTO_ON_CPU, OnnxMember, export_onnx  # noqa: E402
from medens.serving.predictor import EnsemblePredictor  # noqa: E402
from medens.serving.settings import ServingSettings  # noqa: E402

NAME = "bench"
GOAL_ENDPOINT_RATIO = 0.85
GOAL_BACKEND_RATIO = 1.3
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
    """Randomly initialised members and their ensemble artifact, exported to ONNX and checked on
    ``images`` as packaging does; refuses to go on without ONNX files."""
    path, params = random_ensemble(out, members, images, method)
    t0 = time.perf_counter()
    onnx = export_onnx(path, images[:32])
    if "refused" in onnx:
        raise SystemExit(f"the ONNX export was refused: {onnx['refused']}")
    return {"path": path, "member_parameters": params, "onnx_export": {**onnx,
            "export_and_check_seconds": round(time.perf_counter() - t0, 1)}}


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# ---------------------------------------------------------------- raw forward

def raw_throughput(forward: Callable[[np.ndarray], object], x: np.ndarray, batch: int, seconds: float,
                   warmup: float, trials: int = 3) -> float:
    """Images/s of ``forward`` on batches of ``batch`` preprocessed images: the best of ``trials``
    runs of ``seconds / trials`` each (a shared machine only ever makes a run slower)."""
    reps = -(-batch // len(x))
    xb = np.ascontiguousarray(np.concatenate([x] * reps)[:batch])
    t_end = time.perf_counter() + warmup
    forward(xb)
    while time.perf_counter() < t_end:
        forward(xb)
    best = 0.0
    for _ in range(trials):
        n, t0 = 0, time.perf_counter()
        while True:
            forward(xb)
            n += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / trials:
                break
        best = max(best, n / elapsed)
    return best


def raw_concurrent(forward: Callable[[np.ndarray], object], x: np.ndarray, batch: int, seconds: float,
                   workers: int, trials: int = 3) -> float:
    """Images/s of ``workers`` threads each calling ``forward`` on batches of ``batch`` at once (the
    server's concurrent forwards, without a server): the best of ``trials`` runs."""
    reps = -(-batch // len(x))
    xb = np.ascontiguousarray(np.concatenate([x] * reps)[:batch])
    forward(xb)
    best = 0.0
    for _ in range(trials):
        counts = [0] * workers
        t_end = time.perf_counter() + seconds / trials

        def work(i: int, counts: list[int] = counts, t_end: float = t_end) -> None:
            while time.perf_counter() < t_end:
                forward(xb)
                counts[i] += batch

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        best = max(best, sum(counts) / (time.perf_counter() - t0))
    return best


def raw_all(predictors: dict[str, EnsemblePredictor], x: np.ndarray, sizes: list[int], seconds: float) -> dict:
    """Backend -> batch -> images/s, the backends interleaved at each size."""
    out: dict[str, dict[str, float]] = {b: {} for b in predictors}
    for size in sizes:
        for backend, predictor in predictors.items():
            out[backend][str(size)] = round(raw_throughput(predictor.forward, x, size, seconds, 1.0), 2)
    return out


def member_profile(artifact: Path, x: np.ndarray, batch: int, seconds: float, threads: int) -> dict:
    """Each member alone at ``batch`` on each backend: images/s and the ONNX/PyTorch ratio."""
    import torch

    ensemble = load_ensemble(artifact)
    onnx = ensemble.manifest["onnx"]["members"]
    out = {}
    for mid, member in ensemble.members.items():
        session = OnnxMember(artifact / onnx[mid]["file"], threads=threads)
        with torch.no_grad():
            t = round(raw_throughput(lambda xb, m=member: m.probs(torch.as_tensor(xb)), x, batch, seconds, 1.0), 2)
        o = round(raw_throughput(session.probs, x, batch, seconds, 1.0), 2)
        out[mid] = {"torch": t, "onnx": o, "onnx_over_torch": round(o / t, 3) if t else None}
    return out


# ---------------------------------------------------------------- the endpoint

def png_b64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class RestV1:
    """One closed-loop client: a keep-alive HTTP connection, one base64-PNG image per v1 ``:predict``."""

    @staticmethod
    def payloads(images: np.ndarray) -> list[bytes]:
        return [json.dumps({"instances": [png_b64(img)]}).encode() for img in images]

    def __init__(self, server: ServerProcess, payloads: list[bytes]) -> None:
        self.server, self.payloads = server, payloads
        self.path = f"/v1/models/{NAME}:predict"
        self.conn = httpclient.HTTPConnection("127.0.0.1", server.port, timeout=120)

    def send(self, i: int) -> str | None:
        """One request; the error text, or None when it was answered with 200."""
        try:
            self.conn.request("POST", self.path, body=self.payloads[i % len(self.payloads)],
                              headers={"content-type": "application/json"})
            resp = self.conn.getresponse()
            raw = resp.read()
        except (OSError, httpclient.HTTPException) as e:
            self.conn.close()
            self.conn = httpclient.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
            return f"{type(e).__name__}: {e}"
        return None if resp.status == 200 else f"HTTP {resp.status}: {raw[:200]!r}"

    def probabilities(self, i: int) -> np.ndarray:
        """The served probabilities of payload ``i`` (the parity check)."""
        status, body, _ = http("POST", f"{self.server.url}{self.path}", self.payloads[i],
                               {"content-type": "application/json"})
        assert status == 200, body
        return np.asarray(body["predictions"][0]["probabilities"])

    def close(self) -> None:
        self.conn.close()


class GrpcV2:
    """gRPC v2 ``ModelInfer`` (the PNG as one raw ``BYTES`` element), one channel per client; the
    server's gRPC port is ``ServerProcess.grpc_target`` (a free port of its own)."""

    @staticmethod
    def payloads(images: np.ndarray) -> list:
        from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

        pngs = [base64.b64decode(png_b64(img)) for img in images]
        return [pb.ModelInferRequest(model_name=NAME, inputs=[pb.ModelInferRequest.InferInputTensor(
            name="image", datatype="BYTES", shape=[1])], raw_input_contents=[len(b).to_bytes(4, "little") + b])
            for b in pngs]

    def __init__(self, server: ServerProcess, payloads: list) -> None:
        import grpc
        from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

        self.grpc, self.payloads = grpc, payloads
        self.channel = grpc.insecure_channel(server.grpc_target)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def send(self, i: int) -> str | None:
        try:
            self.stub.ModelInfer(self.payloads[i % len(self.payloads)], timeout=120)
        except self.grpc.RpcError as e:
            return f"{e.code()}: {e.details()}"
        return None

    def probabilities(self, i: int) -> np.ndarray:
        out = self.stub.ModelInfer(self.payloads[i], timeout=120)
        k = next(j for j, o in enumerate(out.outputs) if o.name == "probabilities")
        shape = list(out.outputs[k].shape)
        if out.raw_output_contents:
            return np.frombuffer(out.raw_output_contents[k], dtype=np.float32).reshape(shape)[0]
        return np.asarray(out.outputs[k].contents.fp32_contents, dtype=np.float32).reshape(shape)[0]

    def close(self) -> None:
        self.channel.close()


#: protocol -> client class (``payloads(images)``, ``(server, payloads)``, ``send(i)``, ``probabilities(i)``,
#: ``close()``) and its extra server flags (the test server opens gRPC on a free port of its own)
PROTOCOLS: dict[str, type] = {"rest": RestV1, "grpc": GrpcV2}
PROTOCOL_ARGS: dict[str, list[str]] = {"rest": [], "grpc": []}


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


def machine_cpu_ticks() -> tuple[int, int]:
    """Idle (idle + iowait) and total CPU ticks of the whole machine so far (``/proc/stat``)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[3] + ticks[4], sum(ticks)


def _load_threads(server: ServerProcess, protocol: str, payloads: list, concurrency: int, stop: threading.Event,
                  results: list[list[tuple[float, float]]], health: list[tuple[float, float]],
                  errors: list[str]) -> list[threading.Thread]:
    """``concurrency`` closed-loop clients of ``protocol`` and a readiness GET every 0.25 s."""

    def client(idx: int) -> None:
        c = PROTOCOLS[protocol](server, payloads)
        i = idx
        try:
            while not stop.is_set():
                start = time.perf_counter()
                problem = c.send(i)
                i += 1
                if problem:
                    errors.append(problem)
                else:
                    results[idx].append((start, time.perf_counter()))
        finally:
            c.close()

    def check_health() -> None:
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
    return [*threads, threading.Thread(target=check_health, daemon=True)]


def endpoint_run(server: ServerProcess, payloads: list, concurrency: int, seconds: float, warmup: float,
                 protocol: str = "rest") -> dict:
    """Closed loop: ``concurrency`` clients, one single-image request each at a time, for ``seconds``
    after ``warmup``; throughput and latencies are of the requests answered inside the window."""
    stop = threading.Event()
    results: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    health: list[tuple[float, float]] = []
    threads = _load_threads(server, protocol, payloads, concurrency, stop, results, health, errors)
    for t in threads:
        t.start()
    time.sleep(warmup)
    before = server_counters(server)
    cpu0, own0, idle0 = process_cpu_seconds(server.proc.pid), time.process_time(), machine_cpu_ticks()
    t0 = time.perf_counter()
    time.sleep(seconds)
    t1 = time.perf_counter()
    cpu1, own1, idle1 = process_cpu_seconds(server.proc.pid), time.process_time(), machine_cpu_ticks()
    after = server_counters(server)
    stop.set()
    for t in threads:
        t.join(timeout=180)
    window = [(s, e) for r in results for s, e in r if t0 <= e <= t1]
    lat = np.array(sorted(e - s for s, e in window)) * 1000.0
    health_ms = np.array([e - s for s, e in health if t0 <= e <= t1]) * 1000.0
    d = {k: after[k] - before[k] for k in after}
    forwards = d["batch_size_count"]

    def pct(a: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(a, q)), 1) if len(a) else None

    return {
        "concurrency": concurrency, "protocol": protocol, "requests": len(window),
        "images_per_s": round(len(window) / (t1 - t0), 2),
        "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "mean_ms": round(float(lat.mean()), 1) if len(lat) else None,
        "health_checks": len(health_ms), "health_p50_ms": pct(health_ms, 50),
        "health_max_ms": round(float(health_ms.max()), 1) if len(health_ms) else None,
        "errors": len(errors), "error_examples": errors[:3],
        "mean_batch": round(d["batch_size_sum"] / forwards, 2) if forwards else None,
        # forward seconds per second of the window (the fraction the forward computed with one worker;
        # up to the number of workers), and images/s while computing
        "forward_busy_fraction": round(d["forward_seconds_sum"] / (t1 - t0), 3),
        "forward_images_per_busy_s": round(d["batch_size_sum"] / d["forward_seconds_sum"], 2)
        if d["forward_seconds_sum"] else None,
        # CPU seconds per answered image: the whole server process, and this (client) process
        "server_cpu_ms_per_image": round(1000 * (cpu1 - cpu0) / len(window), 2) if window else None,
        "client_cpu_ms_per_image": round(1000 * (own1 - own0) / len(window), 2) if window else None,
        # the fraction of the machine's cores that ran nothing during the window
        "machine_idle_fraction": round((idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1]), 3),
        "load_average": load_average(),
    }


def serve_runs(artifact: Path, payloads: list, expected: np.ndarray, *, mode: str, extra: list[str],
               concurrency: list[int], seconds: float, warmup: float, threads: int, log: Path,
               protocol: str = "rest") -> dict:
    """One server (``extra`` flags), each concurrency in turn; the served answer checked first."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    args = [*extra, "--threads", str(threads), *PROTOCOL_ARGS[protocol]]
    with ServerProcess(artifact, NAME, env=env, extra_args=args, log=log) as server:
        # parity: the server answers what the in-process PyTorch forward computes
        parity = float(np.abs(PROTOCOLS[protocol](server, payloads).probabilities(0) - expected[0]).max())
        runs = []
        for c in concurrency:
            r = endpoint_run(server, payloads, c, seconds, warmup, protocol)
            print(f"  {mode} c={c}: {r['images_per_s']} images/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                  f"mean batch {r['mean_batch']}, forward busy {r['forward_busy_fraction']}, "
                  f"health p50 {r['health_p50_ms']} ms max {r['health_max_ms']} ms, errors {r['errors']}, "
                  f"load {r['load_average']}", flush=True)
            runs.append(r)
        rss = server.rss_bytes()
    return {"server_args": args, "parity_max_abs_diff": parity, "server_rss_mib": round(rss / 2**20, 1),
            "runs": {str(r["concurrency"]): r for r in runs}}


# ---------------------------------------------------------------- one run

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", default="resnet18,densenet121,efficientnet_b0",
                    help="comma-separated registered classification architectures (random weights)")
    ap.add_argument("--size", type=int, default=64, help="input size in pixels (images are sent at this size)")
    ap.add_argument("--channels", type=int, choices=(1, 3), default=3)
    ap.add_argument("--method", default="mean", help="ensemble combiner (mean, weighted, ...)")
    ap.add_argument("--images", type=int, default=64, help="distinct test images, cycled through")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", default="50",
                    help="comma-separated; the first (default 50: the server's default) is the one the goals are "
                         "judged on, the others are reported beside it")
    ap.add_argument("--concurrency", default="8,32")
    ap.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx")
    ap.add_argument("--protocols", default="rest,grpc", help=f"comma-separated: {', '.join(PROTOCOLS)}")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per endpoint measurement")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each endpoint measurement")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="intra-op threads (torch and ONNX Runtime) of the server and of the raw forward")
    ap.add_argument("--name", default="serve", help="results file benchmarks/results/<name>.json")
    args = ap.parse_args()
    args.members = [m.strip() for m in args.members.split(",") if m.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.max_wait_ms = [float(w) for w in args.max_wait_ms.split(",")]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    if not {8, 32} <= set(args.concurrency):
        raise SystemExit("--concurrency must include 8 and 32 (the goals are measured there)")
    if unknown := set(args.protocols) - set(PROTOCOLS):
        raise SystemExit(f"unknown protocols {sorted(unknown)}; known: {sorted(PROTOCOLS)}")
    return args


def endpoints(args: argparse.Namespace, artifact: Path, payloads: dict[str, list], expected: np.ndarray,
              tmp: Path) -> dict:
    """backend -> protocol -> {"batched": {wait: runs}, "unbatched": runs at concurrency 8}."""
    common = {"seconds": args.duration, "warmup": args.warmup, "threads": args.threads}
    out: dict[str, dict] = {}
    for backend in args.backends:
        for protocol in args.protocols:
            batched = {}
            for w in args.max_wait_ms:
                batched[f"{w:g}"] = serve_runs(
                    artifact, payloads[protocol], expected, mode=f"{backend} {protocol} batched (wait {w:g} ms)",
                    log=tmp / f"{backend}-{protocol}-{w:g}.log", concurrency=args.concurrency, protocol=protocol,
                    extra=["--backend", backend, "--max-batch", str(args.max_batch), "--max-wait-ms", f"{w:g}"],
                    **common)
            unbatched = serve_runs(artifact, payloads[protocol], expected, mode=f"{backend} {protocol} unbatched",
                                   log=tmp / f"{backend}-{protocol}-unbatched.log", concurrency=[8],
                                   protocol=protocol, extra=["--backend", backend, "--max-batch", "1"], **common)
            out.setdefault(backend, {})[protocol] = {"batched": batched, "unbatched": unbatched}
            if ServingSettings().workers_for(backend, args.threads) > 1:  # for comparison: one forward at a time
                one = ["--backend", backend, "--forward-workers", "1"]
                w = args.max_wait_ms[0]
                out[backend][protocol]["batched_one_worker"] = serve_runs(
                    artifact, payloads[protocol], expected, mode=f"{backend} {protocol} batched, one forward worker",
                    log=tmp / f"{backend}-{protocol}-one.log", concurrency=args.concurrency, protocol=protocol,
                    extra=[*one, "--max-batch", str(args.max_batch), "--max-wait-ms", f"{w:g}"], **common)
                out[backend][protocol]["unbatched_one_worker"] = serve_runs(
                    artifact, payloads[protocol], expected, mode=f"{backend} {protocol} unbatched, one forward worker",
                    log=tmp / f"{backend}-{protocol}-unbatched-one.log", concurrency=[8], protocol=protocol,
                    extra=[*one, "--max-batch", "1"], **common)
    return out


def ratios(args: argparse.Namespace, raw: dict[str, dict[str, float]], ends: dict) -> dict:
    """The goal ratios of every backend and protocol at the first wait, and the backend ratio."""
    mb, w = str(args.max_batch), f"{args.max_wait_ms[0]:g}"
    out: dict[str, object] = {}
    for backend, by_protocol in ends.items():
        for protocol, e in by_protocol.items():
            runs = e["batched"][w]["runs"]
            c8_u = e["unbatched"]["runs"]["8"]["images_per_s"]
            out[f"{backend}_{protocol}"] = {
                "endpoint_c32_over_raw_batched": round(runs["32"]["images_per_s"] / raw[backend][mb], 3),
                "endpoint_c8_over_raw_batch_8": round(runs["8"]["images_per_s"] / raw[backend]["8"], 3),
                "batched_over_unbatched_c8": round(runs["8"]["images_per_s"] / c8_u, 3) if c8_u else None}
            if "batched_one_worker" in e:  # the same ratios with one forward at a time, for comparison
                one = e["batched_one_worker"]["runs"]
                u1 = e["unbatched_one_worker"]["runs"]["8"]["images_per_s"]
                out[f"{backend}_{protocol}"].update({
                    "one_worker_endpoint_c32_over_raw_batched": round(one["32"]["images_per_s"] / raw[backend][mb], 3),
                    "one_worker_batched_over_unbatched_c8": round(one["8"]["images_per_s"] / u1, 3) if u1 else None,
                    "batched_over_one_worker_unbatched_c8": round(runs["8"]["images_per_s"] / u1, 3) if u1 else None})
    if "torch" in raw and "onnx" in raw:
        out["onnx_raw_over_torch_raw"] = {b: round(raw["onnx"][b] / raw["torch"][b], 3) for b in raw["torch"]}
    return out


def goals(args: argparse.Namespace, raw: dict[str, dict[str, float]], rat: dict) -> dict:
    mb = str(args.max_batch)
    measured_faster = max(raw, key=lambda b: raw[b][mb])
    default = AUTO_ON_CPU if AUTO_ON_CPU in raw else measured_faster
    backend_ratio = round(raw[default][mb] / raw["torch"][mb], 3) if "torch" in raw else None
    per = {k: v for k, v in rat.items() if k != "onnx_raw_over_torch_raw"}
    return {
        "max_wait_ms": args.max_wait_ms[0],
        "default_backend": default, "faster_backend_at_max_batch": measured_faster,
        "default_is_the_faster": default == measured_faster,
        "default_raw_over_torch_raw": backend_ratio, "default_raw_over_torch_raw_goal": GOAL_BACKEND_RATIO,
        "default_raw_over_torch_raw_met": backend_ratio is not None and backend_ratio >= GOAL_BACKEND_RATIO,
        "endpoint_c32_over_raw_batched": {k: v["endpoint_c32_over_raw_batched"] for k, v in per.items()},
        "endpoint_over_raw_goal": GOAL_ENDPOINT_RATIO,
        "endpoint_over_raw_met": {k: v["endpoint_c32_over_raw_batched"] >= GOAL_ENDPOINT_RATIO for k, v in per.items()},
        "batched_over_unbatched_c8": {k: v["batched_over_unbatched_c8"] for k, v in per.items()},
        "batched_over_unbatched_goal": GOAL_BATCHING_RATIO,
        "batched_over_unbatched_met": {k: (v["batched_over_unbatched_c8"] or 0.0) >= GOAL_BATCHING_RATIO
                                       for k, v in per.items()},
    }


def ceilings(args: argparse.Namespace, raw: dict[str, dict[str, float]], ends: dict,
             cores: int | None = None) -> dict:
    """What the measured CPU and raw forwards allow each goal ratio to reach, per backend and protocol
(``cores``: those the forwards ran on, by default ``--threads`` within this process's CPU affinity;
``None`` for a protocol whose concurrency-32 window answered nothing).

    ``endpoint_c32``: the reference forward (``raw`` at ``max_batch``, every core busy) costs
    ``forward_cpu_ms_per_image = cores * 1000 / raw``; the server spent ``server_cpu_ms_per_image``
    at concurrency 32, the clients ``client_cpu_ms_per_image``. With every core busy, the
    endpoint's ratio can reach at most ``forward / server`` (the server alone on the machine) and
    ``forward / (server + client)`` with the clients on the same cores, as here; ``cores_busy``
    is the fraction of the machine the two used during the run, ``machine_idle_fraction`` the
    fraction that ran nothing at all (``/proc/stat``).
    ``batching_c8``: concurrency 8 can fill batches of at most 8, so the batched endpoint can gain
    at most ``raw[8] / unbatched`` over the unbatched one (a batched endpoint that paid nothing
    beyond its forwards), and ``raw[8] / raw[1]`` is what batching gains in the forwards alone.
    """
    cores = cores or min(args.threads, len(os.sched_getaffinity(0)))  # the cores the forwards ran on
    mb, w = str(args.max_batch), f"{args.max_wait_ms[0]:g}"
    out: dict[str, dict] = {}
    for backend, by_protocol in ends.items():
        forward_ms = cores * 1000.0 / raw[backend][mb]
        for protocol, e in by_protocol.items():
            c32 = e["batched"][w]["runs"]["32"]
            server, client = c32["server_cpu_ms_per_image"], c32["client_cpu_ms_per_image"]
            unbatched = e["unbatched"]["runs"]["8"]["images_per_s"]
            if not server or client is None:  # no image answered in the window: nothing to account
                out[f"{backend}_{protocol}"] = {"endpoint_c32": None, "batching_c8": None}
                continue
            out[f"{backend}_{protocol}"] = {
                "endpoint_c32": {
                    "forward_cpu_ms_per_image": round(forward_ms, 2), "server_cpu_ms_per_image": server,
                    "client_cpu_ms_per_image": client, "server_overhead_cpu_ms_per_image": round(server - forward_ms, 2),
                    "ratio_ceiling_server_alone": round(forward_ms / server, 3),
                    "ratio_ceiling_clients_on_the_same_cores": round(forward_ms / (server + client), 3),
                    "cores_busy": round(c32["images_per_s"] * (server + client) / (cores * 1000.0), 3),
                    "machine_idle_fraction": c32.get("machine_idle_fraction"),
                    "measured_ratio": round(c32["images_per_s"] / raw[backend][mb], 3)},
                "batching_c8": {
                    "raw_batch_8_over_batch_1": round(raw[backend]["8"] / raw[backend]["1"], 3),
                    "ceiling_raw_batch_8_over_unbatched_endpoint": round(raw[backend]["8"] / unbatched, 3)
                    if unbatched else None,
                    "measured": round(e["batched"][w]["runs"]["8"]["images_per_s"] / unbatched, 3) if unbatched else None}}
    return out


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    t_start, loads = time.perf_counter(), {"start": load_average()}
    with tempfile.TemporaryDirectory(prefix="medens-bench-serve-") as tmp:
        tmp = Path(tmp)
        images = make_images(args.images, args.size, args.channels)
        built = build_artifact(tmp / "artifact", args.members, images, args.method)
        artifact = built["path"]
        predictors = {b: EnsemblePredictor.load(artifact, backend=b, threads=args.threads) for b in args.backends}
        x = next(iter(predictors.values())).prepare(list(images))
        expected = np.stack([r["probs"] for r in EnsemblePredictor.load(artifact, backend="torch").forward(x)])
        payloads = {p: PROTOCOLS[p].payloads(images) for p in args.protocols}
        sizes = sorted({1, 8, args.max_batch})
        raw_s = max(3.0, args.duration / 2)
        raw_first = raw_all(predictors, x, sizes, raw_s)
        print(f"raw forward ({args.threads} threads), images/s by batch: {raw_first}", flush=True)
        concurrent_cfg, raw_conc = {}, {}
        for b in args.backends:
            workers = ServingSettings().workers_for(b, args.threads)
            if workers > 1:
                share = max(1, args.threads // workers)
                pred = EnsemblePredictor.load(artifact, backend=b, threads=share)
                concurrent_cfg[b] = {"workers": workers, "threads_each": share}
                raw_conc[b] = {str(n): round(raw_concurrent(pred.forward, x, n, raw_s, workers), 2) for n in sizes}
        print(f"raw concurrent forwards {concurrent_cfg}: {raw_conc}", flush=True)
        profile = member_profile(artifact, x, args.max_batch, raw_s, args.threads) if "onnx" in args.backends else {}
        print(f"members alone at batch {args.max_batch}: {profile}", flush=True)
        loads["after_raw"] = load_average()
        ends = endpoints(args, artifact, payloads, expected, tmp)
        loads["after_endpoints"] = load_average()
        raw_after = raw_all(predictors, x, sizes, raw_s)
        print(f"raw forward again: {raw_after}", flush=True)
        # context on a loaded machine: one intra-op thread each (no OpenMP team to spin-wait for cores)
        torch.set_num_threads(1)
        one = {b: EnsemblePredictor.load(artifact, backend=b, threads=1) for b in args.backends}
        raw_one_thread = raw_all(one, x, [1, args.max_batch], raw_s)
        print(f"raw forward, one thread: {raw_one_thread}", flush=True)
        loads["end"] = load_average()
    single = {b: {s: max(v, raw_after[b][s]) for s, v in by.items()} for b, by in raw_first.items()}
    # the reference: the faster of one forward with every thread and the server's concurrent forwards
    raw = {b: {s: max(v, raw_conc.get(b, {}).get(s, 0.0)) for s, v in by.items()} for b, by in single.items()}
    rat = ratios(args, raw, ends)
    write_result(args.name, {
        "config": {"members": args.members, "member_parameters": built["member_parameters"], "method": args.method,
                   "input_size": args.size, "channels": args.channels, "weights": "random init",
                   "images": args.images, "image_format": "PNG, base64, one per v1 request",
                   "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "backends": args.backends,
                   "protocols": args.protocols, "threads": args.threads, "concurrency": args.concurrency,
                   "seconds_per_measurement": args.duration, "warmup_seconds": args.warmup,
                   "clients": "threads, http.client keep-alive, same machine",
                   "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}},
        "load_average_1_5_15_min": loads,
        "onnx_export": built["onnx_export"],
        "raw_forward_images_per_s": {"by_backend_and_batch": raw, "single_forward": single,
                                     "before_endpoint_runs": raw_first, "after_endpoint_runs": raw_after,
                                     "concurrent_forwards": raw_conc, "concurrent_config": concurrent_cfg,
                                     "one_thread": raw_one_thread},
        "profile_members_alone_at_max_batch": profile,
        "endpoint": ends,
        "ratios": rat,
        "goals": goals(args, raw, rat),
        "ceilings": ceilings(args, raw, ends),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    })


if __name__ == "__main__":
    main()
