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

