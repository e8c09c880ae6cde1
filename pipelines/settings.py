"""Cluster settings of the compiled pipelines, from the environment at compile time.

Every setting has a default that suits a Kubeflow cluster with NVIDIA GPU nodes; the checked-in
``pipelines/compiled/*.yaml`` use the defaults. Override with environment variables before
``python -m pipelines compile|submit|schedule``:

=========================  =========================================  ===============================
variable                   meaning                                    default
=========================  =========================================  ===============================
MEDENS_IMAGE               image of every task (components._image)    ``medens:<version>``
MEDENS_GPU_RESOURCE        accelerator resource name                  ``nvidia.com/gpu``
MEDENS_TRAIN_GPUS          GPUs per train task                        ``1``
MEDENS_ENSEMBLE_GPUS       GPUs for the ensemble task (it trains the  ``1``
                           model-level fusion head); 0 runs on CPU
MEDENS_GPU_NODE_SELECTOR   node selector of GPU tasks, ``k=v,k2=v2``  ``nvidia.com/gpu.present=true``
MEDENS_GPU_TOLERATION      toleration of GPU tasks, ``key=K,          ``key=nvidia.com/gpu,
                           operator=Exists|Equal,value=V,effect=E``;  operator=Exists,
                           ``none`` for no toleration                 effect=NoSchedule``
MEDENS_TASK_CPU            CPU request of every other task            ``1``
MEDENS_TASK_MEMORY         memory request of every other task         ``2Gi``
MEDENS_TRAIN_CPU           CPU request of GPU tasks                   ``4``
MEDENS_TRAIN_MEMORY        memory request of GPU tasks                ``16Gi``
MEDENS_SHM_SIZE            memory-backed /dev/shm for DataLoader      ``4Gi``
                           workers (GPU tasks)
MEDENS_TRAIN_RETRIES       retries of a failed train task; a retry    ``2``
                           resumes from the last checkpoint the
                           failed attempt published to the store
                           (``<store_uri>/<model>/checkpoints/
                           <run id>/<member>``, every epoch), so it
                           repeats at most the epoch in progress;
                           needs an ``s3://`` store (a local
                           store_uri is the lost pod's own disk:
                           the retry then starts over)
MEDENS_RETRY_BACKOFF       first retry delay; doubles each retry      ``60s``
MEDENS_MINIO_SECRET        Kubernetes Secret with the MinIO keys      ``medens-minio``
                           ``accesskey`` and ``secretkey``
MEDENS_MINIO_ENDPOINT      default ``store_endpoint`` parameter       ``minio-service.kubeflow:9000``
MEDENS_NAMESPACE           default namespace of the InferenceService  ``kubeflow-user-example-com``
=========================  =========================================  ===============================

MinIO credentials reach the tasks that touch the store (fingerprint, preprocess, train, gate,
register) only as environment variables from the Secret (``kfp.kubernetes.use_secret_as_env``);
no credential is ever a pipeline parameter or appears in the compiled YAML.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from kfp import kubernetes
from kfp.dsl import PipelineTask
from kfp.dsl import pipeline_task as _kfp_pipeline_task

SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}


class _CallerNameOnly:
    """``inspect`` as kfp's task setters use it: ``inspect.stack()[1][3]``, the setter's name for an
    error message. Here the stack is the two frames it reads, from ``sys._getframe``, without
    looking up any frame's source file."""

    @staticmethod
    def stack(context: int = 1) -> list[tuple]:
        frame = sys._getframe(1)  # the frame that asked (kfp's _ensure_container_spec_exists)
        out: list[tuple] = []
        while frame is not None and len(out) < 2:
            out.append((frame, frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, None, None))
            frame = frame.f_back
        return out


@contextlib.contextmanager
def _fast_task_setters() -> Iterator[None]:
    """Every ``PipelineTask.set_cpu_request``-like setter calls ``inspect.stack()``, which finds the
    source file of every frame of the stack, scanning ``sys.modules`` for each one it cannot find
    on disk (the import machinery's frames): in a process that has torch loaded (a test session, a
    notebook) that is about 0.2 s a call, and it made defining and compiling the pipelines 8x slower
    (2 s -> 16 s). Only the setter's name is used, so the setters run here with a stack of just
    the frames read; the module's ``inspect`` is put back afterwards. Not thread-safe (it swaps a
    module attribute): kfp builds a pipeline on one thread."""
    saved = _kfp_pipeline_task.inspect
    _kfp_pipeline_task.inspect = _CallerNameOnly  # type: ignore[assignment]
    try:
        yield
    finally:
        _kfp_pipeline_task.inspect = saved


def _pairs(text: str, what: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} must look like key=value,key2=value2; got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _toleration(text: str) -> dict[str, str] | None:
    if text.strip().lower() in ("", "none"):
        return None
    tol = _pairs(text, "MEDENS_GPU_TOLERATION")
    unknown = set(tol) - {"key", "operator", "value", "effect"}
    if unknown:
        raise ValueError(f"MEDENS_GPU_TOLERATION: unknown fields {sorted(unknown)}; use key, operator, value, effect")
    return tol


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


@dataclass(frozen=True)
class ClusterSettings:
    """Resources, placement, retries and the MinIO secret of the pipeline tasks."""

    gpu_resource: str = "nvidia.com/gpu"
    train_gpus: int = 1
    ensemble_gpus: int = 1
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    toleration: dict[str, str] | None = field(
        default_factory=lambda: {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    task_cpu: str = "1"
    task_memory: str = "2Gi"
    train_cpu: str = "4"
    train_memory: str = "16Gi"
    shm_size: str = "4Gi"
    train_retries: int = 2
    retry_backoff: str = "60s"
    retry_backoff_factor: float = 2.0
    minio_secret: str = "medens-minio"
    minio_endpoint: str = "minio-service.kubeflow:9000"
    namespace: str = "kubeflow-user-example-com"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ClusterSettings:
        """Defaults overridden by the ``MEDENS_*`` variables of ``env`` (default ``os.environ``)."""
        env = dict(os.environ if env is None else env)
        d = cls()

        def s(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        selector = env.get("MEDENS_GPU_NODE_SELECTOR")
        return cls(
            gpu_resource=s("MEDENS_GPU_RESOURCE", d.gpu_resource),
            train_gpus=_int(env, "MEDENS_TRAIN_GPUS", d.train_gpus),
            ensemble_gpus=_int(env, "MEDENS_ENSEMBLE_GPUS", d.ensemble_gpus),
            node_selector=d.node_selector if selector is None else _pairs(selector, "MEDENS_GPU_NODE_SELECTOR"),
            toleration=d.toleration if "MEDENS_GPU_TOLERATION" not in env else _toleration(env["MEDENS_GPU_TOLERATION"]),
            task_cpu=s("MEDENS_TASK_CPU", d.task_cpu),
            task_memory=s("MEDENS_TASK_MEMORY", d.task_memory),
            train_cpu=s("MEDENS_TRAIN_CPU", d.train_cpu),
            train_memory=s("MEDENS_TRAIN_MEMORY", d.train_memory),
            shm_size=s("MEDENS_SHM_SIZE", d.shm_size),
            train_retries=_int(env, "MEDENS_TRAIN_RETRIES", d.train_retries),
            retry_backoff=s("MEDENS_RETRY_BACKOFF", d.retry_backoff),
            minio_secret=s("MEDENS_MINIO_SECRET", d.minio_secret),
            minio_endpoint=s("MEDENS_MINIO_ENDPOINT", d.minio_endpoint),
            namespace=s("MEDENS_NAMESPACE", d.namespace),
        )

    # ------------------------------------------------------------------ applied to tasks

    def cpu_task(self, task: PipelineTask, *, cache: bool = False, name: str = "") -> PipelineTask:
        """CPU and memory requests, caching (off unless asked for) and the display name, if given."""
        with _fast_task_setters():
            task.set_cpu_request(self.task_cpu).set_memory_request(self.task_memory)
            if name:
                task.set_display_name(name)
        task.set_caching_options(cache)
        return task

    def gpu_task(self, task: PipelineTask, gpus: int, *, retries: bool = False, name: str = "") -> PipelineTask:
        """GPUs with node selector and toleration, CPU/memory requests, /dev/shm, optional retries,
        the display name if given.

        With ``gpus == 0`` the task still gets the larger CPU/memory requests and /dev/shm but
        no accelerator, node selector or toleration.
        """
        with _fast_task_setters():
            task.set_cpu_request(self.train_cpu).set_memory_request(self.train_memory)
            if gpus > 0:
                task.set_accelerator_type(self.gpu_resource).set_accelerator_limit(gpus)
            if name:
                task.set_display_name(name)
        task.set_caching_options(False)
        if gpus > 0:
            for key, value in self.node_selector.items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            if self.toleration:
                kubernetes.add_toleration(task, **self.toleration)
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=self.shm_size)
        if retries and self.train_retries > 0:
            task.set_retry(num_retries=self.train_retries, backoff_duration=self.retry_backoff,
                           backoff_factor=self.retry_backoff_factor)
        return task

    def store_access(self, task: PipelineTask) -> PipelineTask:
        """MinIO credentials from the Kubernetes Secret, as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."""
        kubernetes.use_secret_as_env(task, secret_name=self.minio_secret, secret_key_to_env=dict(SECRET_KEYS))
        return task


def current() -> ClusterSettings:
    """The settings of this process's environment."""
    return ClusterSettings.from_env()
