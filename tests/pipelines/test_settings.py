"""Cluster settings from MEDENS_* environment variables."""

import pytest

from pipelines.settings import ClusterSettings


def test_defaults():
    s = ClusterSettings.from_env({})
    assert s == ClusterSettings()
    assert s.node_selector == {"nvidia.com/gpu.present": "true"}
    assert s.toleration == {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert (s.train_gpus, s.train_retries, s.minio_secret) == (1, 2, "medens-minio")


def test_overrides():
    s = ClusterSettings.from_env({
        "MEDENS_GPU_NODE_SELECTOR": "a=1, b=2", "MEDENS_GPU_TOLERATION": "none", "MEDENS_TRAIN_GPUS": "4",
        "MEDENS_TRAIN_MEMORY": "64Gi", "MEDENS_SHM_SIZE": "16Gi", "MEDENS_RETRY_BACKOFF": "30s",
        "MEDENS_MINIO_ENDPOINT": "minio.storage:9000", "MEDENS_NAMESPACE": "team", "MEDENS_TASK_CPU": "",
    })
    assert s.node_selector == {"a": "1", "b": "2"}
    assert s.toleration is None
    assert (s.train_gpus, s.train_memory, s.shm_size, s.retry_backoff) == (4, "64Gi", "16Gi", "30s")
    assert (s.minio_endpoint, s.namespace, s.task_cpu) == ("minio.storage:9000", "team", "1")
    assert ClusterSettings.from_env({"MEDENS_GPU_NODE_SELECTOR": ""}).node_selector == {}


@pytest.mark.parametrize("env,message", [
    ({"MEDENS_TRAIN_GPUS": "two"}, "MEDENS_TRAIN_GPUS must be an integer, got 'two'"),
    ({"MEDENS_TRAIN_RETRIES": "-1"}, "MEDENS_TRAIN_RETRIES must be >= 0"),
    ({"MEDENS_GPU_NODE_SELECTOR": "gpu"}, "MEDENS_GPU_NODE_SELECTOR must look like key=value"),
    ({"MEDENS_GPU_TOLERATION": "key=a,colour=b"}, "unknown fields \\['colour'\\]"),
])
def test_errors(env, message):
    with pytest.raises(ValueError, match=message):
        ClusterSettings.from_env(env)



def test_task_setters_keep_kfps_error_and_restore_inspect():
    """cpu_task/gpu_task run kfp's setters with a cheap caller lookup: kfp's own error (it names
    the setter) still reaches the user, and kfp's module gets the real ``inspect`` back."""
    import inspect

    from kfp import dsl
    from kfp.dsl import pipeline_task

    @dsl.component(base_image="python:3.11")
    def step() -> int:
        return 1

    @dsl.pipeline(name="inner")
    def inner():
        step()

    seen = {}

    @dsl.pipeline(name="outer")
    def outer():
        task = step()
        seen["task"] = ClusterSettings().cpu_task(task, name="a step")
        with pytest.raises(ValueError, match="^set_cpu_request can only be used on single-step components"):
            ClusterSettings().cpu_task(inner())
        with pytest.raises(ValueError, match="^set_cpu_request can only be used on single-step components"):
            ClusterSettings().gpu_task(inner(), 1)

    assert pipeline_task.inspect is inspect
    task = seen["task"]
    assert (task.container_spec.resources.cpu_request, task.container_spec.resources.memory_request) == ("1", "2Gi")
    assert task._task_spec.display_name == "a step"


def test_defining_the_pipelines_is_fast_with_torch_loaded():
    """kfp's setters call ``inspect.stack()`` per call; with torch in ``sys.modules`` that made
    defining and compiling the three pipelines take 16 s instead of 2. Counted here by the calls of
    ``inspect.stack`` (each one a scan of every frame), not by a clock: none are left."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = """
import inspect, sys, tempfile
import torch, monai  # what a test session or a notebook has loaded
calls = []
real = inspect.stack
inspect.stack = lambda *a, **k: calls.append(1) or real(*a, **k)
from pipelines.__main__ import compile_all
compile_all(tempfile.mkdtemp())
print(len(calls))
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) == 0
