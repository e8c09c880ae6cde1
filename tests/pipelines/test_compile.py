"""Compiled pipelines: checked in and fresh, GPU placement, resources, secrets, configurable image."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPILED = ROOT / "pipelines" / "compiled"
NAMES = ("classification", "segmentation", "retraining")
# placeholders only: the test proves that whatever credentials the compiling shell holds never reach the YAML
PLANTED = {"AWS_ACCESS_KEY_ID": "planted-access-key-id-4711", "AWS_SECRET_ACCESS_KEY": "planted-secret-key-0815",
           "MINIO_ACCESS_KEY": "planted-minio-access-42", "MINIO_SECRET_KEY": "planted-minio-secret-42"}


def compile_to(out: Path, **env_overrides: str) -> dict[str, str]:
    """``python -m pipelines compile`` in a clean environment (no MEDENS_* but the given ones)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDENS_")}
    env.update(env_overrides)
    subprocess.run([sys.executable, "-m", "pipelines", "compile", "--out", str(out)], cwd=ROOT, env=env, check=True,
                   capture_output=True, text=True)
    return {n: (out / f"{n}.yaml").read_text() for n in NAMES}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    return compile_to(tmp_path_factory.mktemp("compiled"), **PLANTED)


def docs(text: str) -> tuple[dict, dict]:
    spec, platform = list(yaml.safe_load_all(text))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_checked_in_yaml_is_fresh(fresh):
    """Run `python -m pipelines compile` (or `make compile`) after changing components or pipelines."""
    import importlib.metadata

    kfp_locked = next(line.split("==")[1].strip() for line in (ROOT / "requirements.lock").read_text().splitlines()
                      if line.lower().startswith("kfp=="))
    assert importlib.metadata.version("kfp") == kfp_locked, "the installed kfp is not the locked one: `make venv`"
    for name in NAMES:
        checked_in = (COMPILED / f"{name}.yaml").read_text()
        assert f"sdkVersion: kfp-{kfp_locked}\n" in checked_in, f"{name}.yaml was compiled by another kfp than the lock's"
        assert checked_in == fresh[name], f"pipelines/compiled/{name}.yaml is stale: run `python -m pipelines compile`"


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline, sub-DAGs (loops, conditions) included, by task name."""
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_train_tasks_ask_for_gpus_on_gpu_nodes(fresh, name):
    spec, platform = docs(fresh[name])
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    acc = train["resources"]["accelerator"]
    assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    assert platform["exec-train"]["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
    assert platform["exec-train"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu",
                                                      "operator": "Exists"}]
    assert platform["exec-train"]["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm",
                                                         "sizeLimit": "4Gi", "volumeName": "dshm"}]
    tasks = _tasks(spec)
    assert tasks["train"]["retryPolicy"] == {"backoffDuration": "60s", "backoffFactor": 2.0,
                                             "backoffMaxDuration": "3600s", "maxRetryCount": 2}
    assert tasks["preprocess"]["cachingOptions"] == {"enableCache": True}
    assert tasks["train"]["cachingOptions"] == {}  # caching off
    assert "parameterIterator" in spec["root"]["dag"]["tasks"]["for-loop-1"]


@pytest.mark.parametrize("name", NAMES)
def test_every_task_has_cpu_and_memory_requests(fresh, name):
    spec, platform = docs(fresh[name])
    for label, ex in spec["deploymentSpec"]["executors"].items():
        res = ex["container"]["resources"]
        assert res["resourceCpuRequest"] and res["resourceMemoryRequest"], label
        gpu = label in ("exec-train", "exec-ensemble")
        assert ("accelerator" in res) is gpu, label
        assert (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == (("4", "16Gi") if gpu else ("1", "2Gi"))


@pytest.mark.parametrize("name", NAMES)
def test_minio_credentials_only_from_the_secret(fresh, name):
    text = fresh[name]
    for value in PLANTED.values():
        assert value not in text
    _, platform = docs(text)
    # train publishes its checkpoint to the store as it trains (a retried pod resumes from it)
    store_tasks = {"exec-fingerprint", "exec-preprocess", "exec-train", "exec-register"} | (
            {"exec-gate"} if name == "retraining" else set())
    with_secret = {label for label, cfg in platform.items() if "secretAsEnv" in cfg}
    assert with_secret == store_tasks
    for label in with_secret:
        (sec,) = platform[label]["secretAsEnv"]
        assert sec["secretName"] == "medens-minio"
        assert sec["keyToEnv"] == [{"envVar": "AWS_ACCESS_KEY_ID", "secretKey": "accesskey"},
                                   {"envVar": "AWS_SECRET_ACCESS_KEY", "secretKey": "secretkey"}]
    spec, _ = docs(text)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not any("secret" in p or "password" in p or "access_key" in p for p in params)


def test_image_is_configurable(tmp_path):
    out = compile_to(tmp_path, MEDENS_IMAGE="registry.example/medens:test")
    for name in NAMES:
        spec, _ = docs(out[name])
        images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
        assert images == {"registry.example/medens:test"}, name
        # the InferenceService's image is the chart's: the pipeline only promotes a version
        assert "serving_image" not in spec["root"]["inputDefinitions"]["parameters"], name


def test_default_image_and_the_checked_in_files():
    from medens import __version__

    for name in NAMES:
        spec, _ = docs((COMPILED / f"{name}.yaml").read_text())
        images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
        assert images == {f"medens:{__version__}"}


def test_cluster_settings_from_the_environment(tmp_path):
    out = compile_to(tmp_path, MEDENS_GPU_NODE_SELECTOR="cloud.google.com/gke-accelerator=nvidia-l4",
                     MEDENS_GPU_TOLERATION="key=gpu,operator=Equal,value=yes,effect=NoExecute",
                     MEDENS_TRAIN_GPUS="2", MEDENS_ENSEMBLE_GPUS="0", MEDENS_MINIO_SECRET="other-minio",
                     MEDENS_TRAIN_RETRIES="0")
    spec, platform = docs(out["classification"])
    ex = spec["deploymentSpec"]["executors"]
    assert ex["exec-train"]["container"]["resources"]["accelerator"]["resourceCount"] == "2"
    assert "accelerator" not in ex["exec-ensemble"]["container"]["resources"]
    assert platform["exec-train"]["nodeSelector"] == {"labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}}
    assert platform["exec-train"]["tolerations"] == [{"effect": "NoExecute", "key": "gpu", "operator": "Equal",
                                                      "value": "yes"}]
    assert "nodeSelector" not in platform["exec-ensemble"]
    assert platform["exec-register"]["secretAsEnv"][0]["secretName"] == "other-minio"
    assert "retryPolicy" not in _tasks(spec)["train"]


def test_retraining_registers_and_deploys_only_when_the_gate_says_so(fresh):
    spec, _ = docs(fresh["retraining"])
    root = spec["root"]["dag"]["tasks"]
    cond = root["condition-2"]
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-Output'] == true"
    assert "gate" in cond["dependentTasks"]
    inner = spec["components"]["comp-condition-2"]["dag"]["tasks"]
    assert set(inner) == {"register", "condition-3"}
    assert "deploy_model" in inner["condition-3"]["triggerPolicy"]["condition"]
    assert set(spec["components"]["comp-condition-3"]["dag"]["tasks"]) == {"deploy"}
    assert "register" not in root and "deploy" not in root


@pytest.mark.parametrize("name", NAMES)
def test_cached_dataset_is_keyed_by_the_source_fingerprint(fresh, name):
    """Scheduled retraining must see the data at data_uri now: the fingerprint task never caches and
    feeds preprocess, so preprocess's cache key (its inputs) changes whenever the data does."""
    spec, _ = docs(fresh[name])
    tasks = _tasks(spec)
    fp, prep = tasks["fingerprint"], tasks["preprocess"]
    assert fp["cachingOptions"] == {}  # never cached
    assert fp["inputs"]["parameters"]["data_uri"] == prep["inputs"]["parameters"]["data_uri"]
    assert prep["inputs"]["parameters"]["source_fingerprint"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "fingerprint"}}
    assert prep["cachingOptions"] == {"enableCache": True} and "fingerprint" in prep["dependentTasks"]
