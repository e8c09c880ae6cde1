"""The chart's retraining hooks: rendered by the real Helm engine, then run as Helm would run them
(the Jobs of each hook phase, their command, args and env) against a fake Kubeflow Pipelines API
server through the real kfp.Client, over a whole release: install, upgrades, retraining off,
uninstall."""

from __future__ import annotations

import sys
from pathlib import Path

import helm_python
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medens"
KUBE_VERSION = "1.34"
if str(ROOT) not in sys.path:  # pipelines/ and tests/fakes live at the repository root
    sys.path.insert(0, str(ROOT))

from tests.fakes.kfp_api import FakeKfpApi  # noqa: E402

KFP = "http://ml-pipeline.kubeflow.svc:8888"
TOKEN = "projected-sa-token"
RUN_NAME = "rel-medens-retraining"
IMAGE = "registry.example.org/medens/medens:0.1.0"
TOKEN_DIR = "/var/run/secrets/kubeflow/pipelines"


def render(values: dict | None = None, **opts) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values or {}, name="rel", namespace="ml", **opts)
    finally:
        chart.close()
    return [doc for path, text in out.items() if path.endswith((".yaml", ".yml"))  # not NOTES.txt
            for doc in yaml.safe_load_all(text) if doc]


def jobs(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Job"}


def container(job: dict) -> dict:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c["env"]}


def test_nothing_renders_without_a_kfp_host_and_enabled_needs_one():
    default = yaml.safe_load((CHART / "values.yaml").read_text())["retraining"]
    assert default["enabled"] is False and default["kfpHost"] == ""
    for values in ({}, {"retraining": {"kubeflowEditRoleBinding": True}}):
        assert not [d for d in render(values) if d["kind"] in ("Job", "RoleBinding")]
    with pytest.raises(helm_python.HelmError, match="retraining.enabled is true but retraining.kfpHost is empty"):
        render({"retraining": {"enabled": True}})
    with pytest.raises(helm_python.HelmValuesError, match="/retraining/kfpHost'"):
        render({"retraining": {"enabled": True, "kfpHost": "ml-pipeline:8888"}})


def test_the_retraining_job_is_a_valid_medens_schedule_command():
    from pipelines.__main__ import build_parser

    docs = render({"retraining": {"enabled": True, "kfpHost": KFP, "deploy": False},
                   "serviceAccount": {"name": "medens-predictor"}, "s3": {"useHttps": True}})
    job = jobs(docs)[RUN_NAME]
    assert job["metadata"]["annotations"] == {"helm.sh/hook": "post-install,post-upgrade",
                                              "helm.sh/hook-delete-policy": "before-hook-creation"}
    c = container(job)
    assert c["command"] == ["python", "-m", "pipelines", "schedule"]
    args = build_parser().parse_args(c["command"][3:] + c["args"])
    assert (args.command, args.cron, args.data_uri, args.store) == (
        "schedule", "0 0 2 * * *", "s3://medens/incoming/rbc-demo", "s3://medens/models")
    assert (args.host, args.job_name, args.experiment, args.preset) == (KFP, RUN_NAME, "medens-retraining", "rbc-demo")
    assert args.model_name == "rbc-demo" and args.namespace == "ml" and args.deploy is False
    assert not hasattr(args, "serving_image")  # the chart owns the InferenceService: image, account, GPUs
    assert args.store_endpoint == "https://minio.minio.svc:9000"
    assert env(c)["MEDENS_IMAGE"] == c["image"] == IMAGE

    delete = jobs(docs)["rel-medens-retraining-delete"]
    assert delete["metadata"]["annotations"] == {"helm.sh/hook": "pre-delete",
                                                 "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded"}
    args = build_parser().parse_args(container(delete)["command"][3:] + container(delete)["args"])
    assert (args.command, args.host, args.namespace, args.experiment, args.job_name) == (
        "unschedule", KFP, "ml", "medens-retraining", RUN_NAME)

    off = jobs(render({"retraining": {"enabled": False, "kfpHost": KFP}}))
    assert set(off) == {RUN_NAME, "rel-medens-retraining-delete"}
    assert container(off[RUN_NAME])["command"][3] == "unschedule"
    assert container(off[RUN_NAME])["args"] == container(delete)["args"]


def test_the_hook_pods_are_locked_down_and_carry_a_kubeflow_token():
    import kubernetes_validate

    docs = render({"retraining": {"enabled": True, "kfpHost": KFP, "kubeflowEditRoleBinding": True}})
    for doc in docs:
        if doc["kind"] in ("Job", "RoleBinding"):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    assert len(jobs(docs)) == 2
    for job in jobs(docs).values():
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "rel-medens" and pod["automountServiceAccountToken"] is False
        assert pod["restartPolicy"] == "Never" and "ttlSecondsAfterFinished" not in job["spec"]
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["seccompProfile"]["type"] == "RuntimeDefault"
        c = container(job)
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsUser"] == 10001
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert set(mounts) == {"/tmp", TOKEN_DIR} and mounts[TOKEN_DIR]["readOnly"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts[TOKEN_DIR]["name"]]["projected"]["sources"] == [{"serviceAccountToken": {
            "audience": "pipelines.kubeflow.org", "expirationSeconds": 3600, "path": "token"}}]
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"]
        assert env(c)["KF_PIPELINES_SA_TOKEN_PATH"] == f"{TOKEN_DIR}/token"
        assert env(c)["HOME"] == "/tmp" and c["resources"]["limits"] and c["resources"]["requests"]
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubeflow-edit"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-medens", "namespace": "ml"}]

    own = render({"retraining": {"enabled": True, "kfpHost": KFP, "serviceAccountName": "kfp-runner",
                                 "kubeflowEditRoleBinding": True}})
    assert {j["spec"]["template"]["spec"]["serviceAccountName"] for j in jobs(own).values()} == {"kfp-runner"}
    assert [d["subjects"][0]["name"] for d in own if d["kind"] == "RoleBinding"] == ["kfp-runner"]
    report = helm_python.lint(str(CHART), {"retraining": {"enabled": True, "kfpHost": KFP,
                                                          "kubeflowEditRoleBinding": True}},
                              strict=False, kube_version=f"v{KUBE_VERSION}.0")
    assert report["errors"] == [], report


# ---------------------------------------------------------------------- the release, end to end

def _fresh_pipeline_modules(monkeypatch) -> None:
    """Forget components/ and pipelines/ (but the running __main__), so the next import reads
    MEDENS_IMAGE again, as the Job's fresh `python -m pipelines` process does."""
    for name in [n for n in sys.modules if n.split(".")[0] in ("components", "pipelines")]:
        if name != "pipelines.__main__":
            monkeypatch.delitem(sys.modules, name)


def run_hooks(docs: list[dict], phase: str, kubelet: Path, monkeypatch, capsys) -> list[str]:
    """Run the Jobs whose helm.sh/hook names ``phase`` as their pods would: the projected token and
    /tmp become folders under ``kubelet``, the container's env replaces the MEDENS_*/KF_* variables."""
    from pipelines.__main__ import main

    outputs = []
    for job in (d for d in docs if d["kind"] == "Job"):
        if phase not in job["metadata"]["annotations"]["helm.sh/hook"].split(","):
            continue
        pod, c = job["spec"]["template"]["spec"], container(job)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {}
        for m in c["volumeMounts"]:
            local = kubelet / m["name"]
            local.mkdir(exist_ok=True)
            for source in volumes[m["name"]].get("projected", {}).get("sources", []):
                token = source["serviceAccountToken"]
                assert token["audience"] == "pipelines.kubeflow.org"
                (local / token["path"]).write_text(TOKEN + "\n")
            mounts[m["mountPath"]] = str(local)
        for name in ("MEDENS_IMAGE", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_ENDPOINT", "MEDENS_NAMESPACE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env(c).items():
            for path, local in mounts.items():
                value = local + value[len(path):] if value == path or value.startswith(path + "/") else value
            monkeypatch.setenv(name, value)
        _fresh_pipeline_modules(monkeypatch)
        assert c["command"][:3] == ["python", "-m", "pipelines"]
        code = main(c["command"][3:] + c["args"])
        out, err = capsys.readouterr()
        assert code == 0, f"hook Job {job['metadata']['name']} failed: {err}"
        outputs.append(out)
    return outputs


def _executor_images(run: dict) -> set[str]:
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])  # with a platform spec, nested
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


@pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")
def test_the_release_owns_exactly_one_recurring_run_from_install_to_uninstall(tmp_path, monkeypatch, capsys):
    with FakeKfpApi(token=TOKEN, allowed_namespaces={"ml"}) as api:
        base = {"retraining": {"enabled": True, "kfpHost": api.url},
                "s3": {"existingSecret": "", "accessKeyId": "k", "secretAccessKey": "s", "useHttps": True}}
        steps = [
            ("install", base, "post-install", 1, IMAGE),
            ("upgrade", base, "post-upgrade", 1, IMAGE),
            ("upgrade, new image", {**base, "image": {"tag": "0.2.0"}}, "post-upgrade", 1,
             "registry.example.org/medens/medens:0.2.0"),
            ("upgrade, retraining off", {**base, "retraining": {"enabled": False, "kfpHost": api.url}},
             "post-upgrade", 0, None),
            ("upgrade, retraining on", base, "post-upgrade", 1, IMAGE),
            ("uninstall", None, "pre-delete", 0, None),
        ]
        monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client keeps a context file under ~/.config
        docs: list[dict] = []
        for revision, (step, values, phase, remaining, image) in enumerate(steps, start=1):
            if values is not None:  # helm uninstall runs the hooks of the release as last deployed
                docs = render(values, revision=revision, is_install=revision == 1, is_upgrade=revision > 1)
            before = len(api.calls)
            kubelet = tmp_path / f"rev{revision}"
            kubelet.mkdir()
            outputs = run_hooks(docs, phase, kubelet, monkeypatch, capsys)
            assert len(outputs) == 1, step
            runs = list(api.recurring_runs.values())
            assert [r["display_name"] for r in runs] == [RUN_NAME] * remaining, (step, outputs)
            calls = api.calls[before:]
            assert calls and all(c["authorization"] == f"Bearer {TOKEN}" for c in calls), step
            created = [c for c in calls if c["method"] == "POST" and c["path"].endswith("/recurringruns")]
            assert len(created) == (1 if image else 0), step
            if image:
                (run,) = runs
                assert _executor_images(run) == {image}, step
                secret = next(d for d in docs if d["kind"] == "Secret")["metadata"]["annotations"]
                serving = ("https://" if secret["serving.kserve.io/s3-usehttps"] == "1" else "http://") + \
                    secret["serving.kserve.io/s3-endpoint"]
                params = run["runtime_config"]["parameters"]
                assert params["store_endpoint"] == serving == "https://minio.minio.svc:9000"
                spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
                assert set(params) <= set(spec["root"]["inputDefinitions"]["parameters"]), step
                assert "serving_image" not in params and params["namespace"] == "ml"
                assert run["namespace"] == "ml" and api.experiments[run["experiment_id"]]["namespace"] == "ml"
                assert run["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}} and run["max_concurrency"] == "1"
                assert f"created recurring run {RUN_NAME!r}" in outputs[0]
                assert ("deleted the previous recurring run" in outputs[0]) == (revision not in (1, 5)), step
            elif phase == "pre-delete" or "off" in step:
                assert "nothing to delete" in outputs[0] or "deleted recurring run" in outputs[0]
        assert len(api.experiments) == 1
