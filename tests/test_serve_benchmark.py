"""``benchmarks/serve.py``'s ceilings: the CPU accounting behind the goal ratios, on hand-made figures
(the benchmark itself, minutes of load on real servers, is run by hand)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests._scripts import load_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def serve():
    return load_script(BENCHMARKS / "serve.py", "serve_benchmark")


def test_machine_cpu_ticks_cover_every_core(serve):
    """Over 0.3 s the machine's ticks grow by about CPUs * 0.3 s * ticks per second (the CPUs that
    /proc/stat lists), idle ones included."""
    import os
    import time

    with open("/proc/stat") as f:
        cpus = sum(1 for line in f if line.startswith("cpu") and line[3].isdigit())
    idle0, total0 = serve.machine_cpu_ticks()
    t0 = time.perf_counter()
    time.sleep(0.3)
    idle1, total1 = serve.machine_cpu_ticks()
    expected = cpus * (time.perf_counter() - t0) * os.sysconf("SC_CLK_TCK")
    assert 0.5 * expected <= total1 - total0 <= 1.5 * expected + 5
    assert -2 <= idle1 - idle0 <= total1 - total0  # iowait may step back a tick


def test_ceilings_from_the_cpu_accounting(serve):
    """Two cores; the reference forward 250 images/s costs 2000 / 250 = 8 ms of CPU per image. The
    server spent 9 ms per image at concurrency 32 and the clients 0.2: at most 8 / 9 = 0.889 of the
    reference with the server alone, 8 / 9.2 = 0.870 with the clients beside it; 200 images/s used
    200 * 9.2 / 2000 = 0.92 of the cores and measured 200 / 250 = 0.8. Batching at concurrency 8:
    the forwards gain 200 / 125 = 1.6 from batch 1 to 8, the endpoint at most 200 / 100 = 2.0 over
    its unbatched 100 images/s, and measured 150 / 100 = 1.5."""
    args = argparse.Namespace(max_batch=32, max_wait_ms=[50.0], threads=2)
    raw = {"onnx": {"1": 125.0, "8": 200.0, "32": 250.0}}
    runs = {"32": {"images_per_s": 200.0, "server_cpu_ms_per_image": 9.0, "client_cpu_ms_per_image": 0.2,
                   "machine_idle_fraction": 0.07},
            "8": {"images_per_s": 150.0, "server_cpu_ms_per_image": 11.0, "client_cpu_ms_per_image": 0.3}}
    ends = {"onnx": {"rest": {"batched": {"50": {"runs": runs}},
                              "unbatched": {"runs": {"8": {"images_per_s": 100.0}}}}}}
    c = serve.ceilings(args, raw, ends, cores=2)["onnx_rest"]
    assert c["endpoint_c32"] == {
        "forward_cpu_ms_per_image": 8.0, "server_cpu_ms_per_image": 9.0, "client_cpu_ms_per_image": 0.2,
        "server_overhead_cpu_ms_per_image": 1.0, "ratio_ceiling_server_alone": 0.889,
        "ratio_ceiling_clients_on_the_same_cores": 0.87, "cores_busy": 0.92, "machine_idle_fraction": 0.07,
        "measured_ratio": 0.8}
    assert c["batching_c8"] == {"raw_batch_8_over_batch_1": 1.6, "ceiling_raw_batch_8_over_unbatched_endpoint": 2.0,
                                "measured": 1.5}
    assert serve.ceilings(args, raw, ends)["onnx_rest"]["endpoint_c32"]["forward_cpu_ms_per_image"] == 8.0  # 2 threads
    # a window that answered nothing has no CPU per image: no ceiling, and the run's results are still written
    runs["32"].update(server_cpu_ms_per_image=None, client_cpu_ms_per_image=None)
    assert serve.ceilings(args, raw, ends, cores=2)["onnx_rest"] == {"endpoint_c32": None, "batching_c8": None}
