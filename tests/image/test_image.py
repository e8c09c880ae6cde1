"""`make image-test`: the image `make image` built, started with the chart's own pod settings.

Nothing here is a stand-in for the deployable thing: the chart is rendered by Helm's engine with
its defaults (only the S3 endpoint and test keys differ, since the S3 server is on loopback); the
model is registered as the pipeline registers it into the bucket of the chart's default
``storageUri``; KServe's storage initializer (the ``kserve-storage`` package, the code its init
container runs) fetches that URI with the environment KServe's webhook builds from the chart's
Secret, into the folder mounted read-only at /mnt/models; then the predictor container runs with
exactly the rendered command, args, env, envFrom, user, read-only root, dropped capabilities,
no privilege escalation, the /tmp emptyDir and the CPU and memory limits, and is probed on the
rendered probes' paths. The retraining hook's container command runs in the same image against a
fake KFP API that records calls.

Figures go to build/image-test.json (and the build's to build/image.json).
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "serving"))
sys.path.insert(0, str(ROOT))

from _ensembles import TINY, train_ensembles  # noqa: E402

READY_WITHIN_S = 120.0  # from `podman run` to the readiness path answering 200
STORAGE_PYTHON = ROOT / "build" / "storage-venv" / "bin" / "python"
RESULTS = ROOT / "build" / "image-test.json"
FIGURES: dict = {}


def _engine_env() -> dict[str, str]:
    """The environment scripts/containers.sh sets up (CONTAINERS_CONF for this machine's podman)."""
    out = subprocess.run(["bash", "-c", f"source scripts/containers.sh && containers_setup {ROOT} >&2 && "
                          "echo \"$CONTAINER_ENGINE\" && echo \"${CONTAINERS_CONF:-}\""],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    env = dict(os.environ)
    if out[1]:
        env["CONTAINERS_CONF"] = out[1]
    env["MEDENS_CONTAINER_ENGINE"] = out[0]
    return env


ENV = _engine_env()
ENGINE = ENV["MEDENS_CONTAINER_ENGINE"]


def engine(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([ENGINE, *args], env=ENV, capture_output=True, text=True, check=check, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 30.0) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def render(values: dict) -> dict[str, list[dict]]:
    """The chart rendered by Helm's engine: kind -> documents."""
    import helm_python

    chart = helm_python.Chart.load(str(ROOT / "charts" / "medens"))
    try:
        out = chart.render(values, name="medens", namespace="ml")
    finally:
        chart.close()
    docs: dict[str, list[dict]] = {}
    for path, text in out.items():
        if path.endswith(".yaml"):
            for d in yaml.safe_load_all(text):
                if d:
                    docs.setdefault(d["kind"], []).append(d)
    return docs


def storage_initializer_env(secret: dict) -> dict[str, str]:
    """What KServe's webhook gives the storage-initializer container for an S3 Secret
    (pkg/credentials/s3: BuildSecretEnvs + BuildS3EnvVars, with the default inferenceservice-config
    key names AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."""
    data, ann = secret["stringData"], secret["metadata"]["annotations"]
    env = {"AWS_ACCESS_KEY_ID": data["AWS_ACCESS_KEY_ID"], "AWS_SECRET_ACCESS_KEY": data["AWS_SECRET_ACCESS_KEY"]}
    https = ann.get("serving.kserve.io/s3-usehttps", "")
    if https:
        env["S3_USE_HTTPS"] = https
    endpoint = ann.get("serving.kserve.io/s3-endpoint", "")
    if endpoint:
        env["S3_ENDPOINT"] = endpoint
        env["AWS_ENDPOINT_URL"] = ("http://" if https == "0" else "https://") + endpoint
    if ann.get("serving.kserve.io/s3-verifyssl"):
        env["S3_VERIFY_SSL"] = ann["serving.kserve.io/s3-verifyssl"]
    if ann.get("serving.kserve.io/s3-region"):
        env["AWS_DEFAULT_REGION"] = ann["serving.kserve.io/s3-region"]
    return env


def _quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for u, f in units.items():
        if q.endswith(u):
            return int(float(q[: -len(u)]) * f)
    return int(q)


def _cpus(q: str) -> str:
    return str(int(q[:-1]) / 1000) if q.endswith("m") else q


def pod_run_args(pod: dict, container: dict, secrets: dict[str, dict], mounts: dict[str, str], name: str, *,
                 detach: bool = True, projected: dict[str, str] | None = None) -> list[str]:
    """``podman run`` arguments that reproduce one container of a rendered pod spec.

    Every field of the container and its security contexts is either translated or refused, so a
    setting the chart adds later cannot silently go untested. ``mounts``: what KServe adds (path ->
    host folder, read-only); ``projected``: projected volume name -> a host folder holding what the
    kubelet would project (a service-account token file)."""
    known = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports", "resources",
             "securityContext", "volumeMounts", "readinessProbe", "livenessProbe", "startupProbe"}
    assert set(container) <= known, f"untranslated container fields: {set(container) - known}"
    sc = {**{k: v for k, v in (pod.get("securityContext") or {}).items() if k not in ("fsGroup",)},
          **(container.get("securityContext") or {})}
    args = ["run", "-d" if detach else "--rm", "--name", name, "--network", "host", "--pull", "never"]
    known_sc = {"runAsNonRoot", "runAsUser", "runAsGroup", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
                "privileged", "capabilities", "seccompProfile", "fsGroup"}
    assert set(sc) <= known_sc, f"untranslated securityContext fields: {set(sc) - known_sc}"
    assert sc.get("runAsNonRoot") is True and int(sc["runAsUser"]) != 0
    args += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
    if "fsGroup" in (pod.get("securityContext") or {}):
        args += ["--group-add", str(pod["securityContext"]["fsGroup"])]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    assert not sc.get("privileged")
    for cap in (sc.get("capabilities") or {}).get("drop", []):
        args += ["--cap-drop", cap.lower()]
    assert (sc.get("seccompProfile") or {}).get("type", "RuntimeDefault") == "RuntimeDefault"  # podman's default
    limits = (container.get("resources") or {}).get("limits") or {}
    if "cpu" in limits:
        args += ["--cpus", _cpus(str(limits["cpu"]))]
    if "memory" in limits:
        args += ["--memory", str(_quantity_bytes(str(limits["memory"])))]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for m in container.get("volumeMounts") or []:
        vol = volumes[m["name"]]
        if "emptyDir" in vol:
            size = _quantity_bytes(str(vol["emptyDir"].get("sizeLimit", "1Gi")))
            args += ["--mount", f"type=tmpfs,destination={m['mountPath']},tmpfs-size={size},tmpfs-mode=1777"]
        elif "projected" in vol and (projected or {}).get(m["name"]):
            assert m.get("readOnly") is True, f"{m['name']} is mounted writable"
            args += ["-v", f"{projected[m['name']]}:{m['mountPath']}:ro"]
        else:
            raise AssertionError(f"untranslated volume {vol}")
    for path, host in mounts.items():  # what KServe adds: the model volume, read-only
        args += ["-v", f"{host}:{path}:ro"]
    for e in container.get("env") or []:
        assert "value" in e, f"untranslated env {e}"
        args += ["-e", f"{e['name']}={e['value']}"]
    for src in container.get("envFrom") or []:
        secret = secrets[src["secretRef"]["name"]]
        for k, v in secret["stringData"].items():
            args += ["-e", f"{k}={v}"]
    command = container.get("command") or []
    if command:
        args += ["--entrypoint", json.dumps(command)]
    return [*args, container["image"], *(container.get("args") or [])]


def png_b64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def image() -> dict:
    path = ROOT / "build" / "image.json"
    assert path.is_file(), "build/image.json is missing: run `make image` first (make image-test does)"
    info = json.loads(path.read_text())
    assert engine("image", "exists", info["image"], check=False).returncode == 0, f"{info['image']} is not built"
    FIGURES["build"] = info
    return info


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from medens.data.types import SplitData

    root = tmp_path_factory.mktemp("image-ens")
    ens_dir = train_ensembles(TINY, root)["weighted-top3"]
    return ens_dir, np.asarray(SplitData.load(root / "data").test.images)


@pytest.fixture(scope="module")
def deployed(image, tiny, s3_endpoint, tmp_path_factory):
    """The chart's predictor running in the image; yields (url, rendered docs, container name)."""
    from medens.stages.registry import register_artifact

    host = s3_endpoint.removeprefix("http://")
    # moto accepts any credentials; these are placeholders, not secrets
    values = {"s3": {"endpoint": host, "existingSecret": "", "accessKeyId": "image-test-access",
                     "secretAccessKey": "image-test-secret"}}
    docs = render(values)
    (isvc,) = docs["InferenceService"]
    (secret,) = docs["Secret"]
    pod = isvc["spec"]["predictor"]
    (container,) = pod["containers"]
    # the chart's default image reference names the image that was built
    engine("tag", image["image"], container["image"])
    storage_uri = {e["name"]: e.get("value") for e in container["env"]}["STORAGE_URI"]
    name = isvc["metadata"]["name"]
    assert storage_uri.endswith(f"/{name}/champion"), storage_uri

    # the pipeline's registration, into the bucket and prefix of the chart's default storageUri
    ens_dir, _ = tiny
    creds = {"AWS_ACCESS_KEY_ID": "image-test-access", "AWS_SECRET_ACCESS_KEY": "image-test-secret"}
    old = {k: os.environ.get(k) for k in creds}
    os.environ.update(creds)
    try:
        reg = register_artifact(ens_dir, storage_uri[: -len(f"/{name}/champion")], name, version="image-test-v1",
                                endpoint=s3_endpoint)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert reg["champion_uri"] == storage_uri

    # KServe's storage initializer, with the environment its webhook builds from the Secret
    mnt = tmp_path_factory.mktemp("mnt") / "models"
    t0 = time.monotonic()
    init = subprocess.run([str(STORAGE_PYTHON), "-c", "import sys; from kserve_storage import Storage; "
                           "Storage.download(sys.argv[1], sys.argv[2])", storage_uri, str(mnt)],
                          env={"PATH": os.environ["PATH"], "HOME": str(mnt.parent), **storage_initializer_env(secret)},
                          capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    FIGURES["storage_initializer_seconds"] = round(time.monotonic() - t0, 2)
    assert sorted(p.name for p in mnt.iterdir()) == ["STORE_MANIFEST.json", "champion.json"]
    subprocess.run(["chmod", "-R", "a+rX", str(mnt.parent)], check=True)

    port = int(container["ports"][0]["containerPort"])
    with socket.socket() as s:  # host networking: the chart's port must be free here
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is in use; stop what listens there"
    cname = f"medens-image-test-{os.getpid()}"
    run_args = pod_run_args(pod, container, {secret["metadata"]["name"]: secret}, {"/mnt/models": str(mnt)}, cname)
    FIGURES["podman_run"] = [a if "SECRET" not in a else a.split("=")[0] + "=***" for a in run_args]
    t0 = time.monotonic()
    engine(*run_args)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, docs, cname, t0
    finally:
        logs = engine("logs", cname, check=False)
        (ROOT / "build").mkdir(exist_ok=True)
        (ROOT / "build" / "image-test-predictor.log").write_text(logs.stdout + logs.stderr)
        engine("rm", "-f", cname, check=False)


def test_the_predictor_is_ready_on_the_charts_probe_paths_within_the_stated_time(deployed):
    url, docs, cname, t0 = deployed
    c = docs["InferenceService"][0]["spec"]["predictor"]["containers"][0]
    ready_path = c["readinessProbe"]["httpGet"]["path"]
    deadline = t0 + READY_WITHIN_S
    status = None
    while time.monotonic() < deadline:
        state = engine("inspect", "--format", "{{.State.Running}}", cname, check=False).stdout.strip()
        assert state == "true", "the predictor exited:\n" + engine("logs", cname, check=False).stderr[-4000:]
        try:
            status, _ = http("GET", url + ready_path, timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            status = None
        if status == 200:
            break
        time.sleep(0.5)
    FIGURES["seconds_to_ready"] = round(time.monotonic() - t0, 2)
    assert status == 200, f"not ready within {READY_WITHIN_S} s"
    for probe in ("startupProbe", "livenessProbe"):
        if probe in c:
            assert http("GET", url + c[probe]["httpGet"]["path"])[0] == 200, probe
    # the user and the read-only root the chart asked for, as the process sees them
    out = engine("exec", cname, "python", "-c", "import os\ntry:\n open('/opt/medens/x', 'w')\n"
                 "except OSError as e:\n print(os.getuid(), os.getgid(), e.errno)").stdout.split()
    assert out == ["10001", "10001", "30"], out  # EROFS


def test_a_prediction_equals_offline_inference(deployed, tiny):
    from medens.serving.predictor import EnsemblePredictor

    url, docs, _, _ = deployed
    name = docs["InferenceService"][0]["metadata"]["name"]
    ens_dir, images = tiny
    imgs = images[:8]
    status, text = http("POST", f"{url}/v1/models/{name}:predict", {"instances": [png_b64(i) for i in imgs]})
    assert status == 200, text
    served = np.array([p["probabilities"] for p in json.loads(text)["predictions"]])
    p = EnsemblePredictor.load(ens_dir)
    offline = np.stack([r["probs"] for r in p.forward(p.prepare(list(imgs)))])
    diff = float(np.abs(served - offline).max())
    FIGURES["max_abs_diff_to_offline"] = diff
    assert diff <= 1e-5


def test_metrics_expose_the_medens_series(deployed):
    url, docs, _, _ = deployed
    name = docs["InferenceService"][0]["metadata"]["name"]
    status, text = http("GET", url + "/metrics")
    assert status == 200
    series = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("medens_")}
    FIGURES["medens_series"] = sorted(series)
    assert {"medens_input_images_total", "medens_predictions_total", "medens_prediction_confidence_bucket",
            "medens_member_disagreement_bucket", "medens_model_info"} <= series, sorted(series)
    assert f'medens_input_images_total{{model="{name}"}}' in text


@pytest.fixture(scope="module")
def fake_kfp(tmp_path_factory):
    """The fake KFP API (tests/fakes/kfp_api.py) as its own process on 127.0.0.1, needing a token."""
    d = tmp_path_factory.mktemp("kfp")
    (d / "kubelet").mkdir()
    token = d / "kubelet" / "token"  # what the kubelet projects for audience pipelines.kubeflow.org
    token.write_text("image-test-token")
    port_file, record = d / "port", d / "record.json"
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.kfp_api", "--port", "0", "--port-file", str(port_file),
                             "--record", str(record), "--token-file", str(token), "--allow-namespace", "ml"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not port_file.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert port_file.is_file(), proc.communicate(timeout=5)[0] if proc.poll() is not None else "no port"
    subprocess.run(["chmod", "-R", "a+rX", str(d)], check=True)
    try:
        yield f"http://127.0.0.1:{port_file.read_text().strip()}", d / "kubelet", record
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_hooks(image: dict, values: dict, phase: str, kubelet: Path) -> list[str]:
    """Run the rendered Jobs of one Helm hook phase in the image, as their pods would run."""
    docs = render(values)
    jobs = [j for j in docs.get("Job", []) if phase in j["metadata"]["annotations"]["helm.sh/hook"].split(",")]
    outputs = []
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        engine("tag", image["image"], c["image"])
        args = pod_run_args(pod, c, {}, {}, f"medens-hook-{os.getpid()}", detach=False,
                            projected={"kfp-token": str(kubelet)})
        t0 = time.monotonic()
        run = engine(*args, check=False, timeout=300)
        FIGURES.setdefault("hook_seconds", []).append(round(time.monotonic() - t0, 2))
        assert run.returncode == 0, f"{job['metadata']['name']} failed:\n{run.stdout}\n{run.stderr}"
        outputs.append(run.stdout + run.stderr)
    return outputs


def test_the_retraining_hooks_own_one_recurring_run_with_the_charts_image_and_endpoint(image, fake_kfp, s3_endpoint):
    url, kubelet, record = fake_kfp
    host = s3_endpoint.removeprefix("http://")
    values = {"retraining": {"enabled": True, "kfpHost": url},
              "s3": {"endpoint": host, "existingSecret": "", "accessKeyId": "a", "secretAccessKey": "s"}}
    expected_image = render(values)["InferenceService"][0]["spec"]["predictor"]["containers"][0]["image"]
    remaining = []
    for phase, vals in (("post-install", values), ("post-upgrade", values), ("post-upgrade", values),
                        ("pre-delete", values)):
        outputs = run_hooks(image, vals, phase, kubelet)
        assert len(outputs) == 1, phase
        state = json.loads(record.read_text())
        runs = state["recurring_runs"]
        remaining.append(len(runs))
        if phase != "pre-delete":
            (run,) = runs
            spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
            assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {expected_image}
            params = run["runtime_config"]["parameters"]
            assert params["store_endpoint"] == s3_endpoint  # the endpoint serving reads from
            assert params["namespace"] == "ml" and run["namespace"] == "ml"
    assert remaining == [1, 1, 1, 0]
    calls = json.loads(record.read_text())["calls"]
    assert calls and all(c["authorization"] == "Bearer image-test-token" for c in calls
                         if not c["path"].endswith("/healthz"))
    FIGURES["recurring_runs_after_install_upgrade_upgrade_uninstall"] = remaining


@pytest.fixture(scope="module", autouse=True)
def _write_figures():
    yield
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(FIGURES, indent=2) + "\n")
    print(json.dumps({k: v for k, v in FIGURES.items() if k != "podman_run"}, indent=2))

