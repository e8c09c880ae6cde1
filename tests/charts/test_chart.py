"""charts/medens rendered by the real Helm v4 engine (helm-python-sdk), validated against real
schemas (kubernetes-validate, the kserve SDK's models, promtool), and checked for secure defaults."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import helm_python
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medens"
KUBE_VERSION = "1.34"
CORE_KINDS = {"ServiceAccount", "Secret", "ConfigMap", "Job", "NetworkPolicy"}

ALL_ON = {
    "predictor": {"gpu": 1, "canaryTrafficPercent": 10, "minReplicas": 2, "maxReplicas": 5,
                  "logger": {"mode": "all", "url": "http://message-dumper.default/"},
                  "nodeSelector": {"nvidia.com/gpu.present": "true"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    "s3": {"existingSecret": "", "accessKeyId": "test-access-key", "secretAccessKey": "test-secret-key",
           "useHttps": True},
    "serviceAccount": {"name": "medens-predictor"},
    "retraining": {"enabled": True, "deploy": False},
    "monitoring": {"podMonitor": {"labels": {"release": "kube-prometheus"}},
                   "rules": {"labels": {"release": "kube-prometheus"}}},
}


def render(values: dict | None = None) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values or {}, name="rel", namespace="ml")
    finally:
        chart.close()
    return [doc for text in out.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def default_docs():
    return render()


@pytest.fixture(scope="module")
def all_on_docs():
    return render(ALL_ON)


def test_default_values_and_every_option_render_and_lint_clean(default_docs, all_on_docs):
    assert set(by_kind(default_docs)) == {"InferenceService", "ServiceAccount", "PodMonitor", "PrometheusRule",
                                          "ConfigMap", "NetworkPolicy"}
    assert set(by_kind(all_on_docs)) == set(by_kind(default_docs)) | {"Secret", "Job"}
    for values in (None, ALL_ON):
        report = helm_python.lint(str(CHART), values, strict=False, kube_version=f"v{KUBE_VERSION}.0")
        assert report["errors"] == [], report
        assert not [m for m in report["messages"] if m["severity"] >= 3], report


def test_core_resources_validate_strictly(default_docs, all_on_docs):
    import kubernetes_validate

    seen = set()
    for doc in default_docs + all_on_docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            seen.add(doc["kind"])
    assert seen == CORE_KINDS


def test_the_inference_service_deserialises_into_the_kserve_model_with_every_field(all_on_docs, monkeypatch):
    import kserve.models
    import kubernetes.client.models as k8s
    from kserve import ApiClient

    for name in dir(k8s):  # the kserve client resolves nested Kubernetes types in its own module
        if name.startswith("V1") and not hasattr(kserve.models, name):
            monkeypatch.setattr(kserve.models, name, getattr(k8s, name), raising=False)

    class Response:
        def __init__(self, data):
            self.data = json.dumps(data)

    for docs in (all_on_docs, render()):
        isvc = by_kind(docs)["InferenceService"]
        obj = ApiClient().deserialize(Response(isvc), "V1beta1InferenceService")
        assert type(obj).__name__ == "V1beta1InferenceService"
        assert ApiClient().sanitize_for_serialization(obj) == isvc  # nothing dropped, nothing renamed
    spec = by_kind(all_on_docs)["InferenceService"]["spec"]["predictor"]
    c = spec["containers"][0]
    assert c["name"] == "kserve-container" and c["args"][-2:] == ["--device", "cuda"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and spec["canaryTrafficPercent"] == 10
    assert spec["logger"] == {"mode": "all", "url": "http://message-dumper.default/"}
    assert {e["name"]: e["value"] for e in c["env"]}["STORAGE_URI"] == "s3://medens/models/rbc-demo/champion"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models/rbc-demo"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"


def _pod_specs(docs: list[dict]) -> list[dict]:
    out = []
    for d in docs:
        if d["kind"] == "InferenceService":
            out.append(d["spec"]["predictor"])
        elif d["kind"] == "Job":
            out.append(d["spec"]["template"]["spec"])
    return out


def test_every_pod_is_locked_down(default_docs, all_on_docs):
    from medens.data.decode import PREPROCESSING  # noqa: F401 - the image's code, imported as a smoke check

    pods = _pod_specs(default_docs) + _pod_specs(all_on_docs)
    assert len(pods) == 3
    for pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["runAsGroup"] == 10001
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["privileged"] is False
            assert sc["runAsNonRoot"] is True
            assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}  # the only writable path
            assert c["resources"]["limits"] and c["resources"]["requests"]
    sa = by_kind(default_docs)["ServiceAccount"]
    assert sa["automountServiceAccountToken"] is False
    assert not any(d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
                   for d in default_docs + all_on_docs)  # nothing here calls the Kubernetes API
    np_ = by_kind(default_docs)["NetworkPolicy"]["spec"]
    assert np_["policyTypes"] == ["Ingress"] and np_["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_no_credentials_in_defaults_or_default_output(default_docs, all_on_docs):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["s3"]["accessKeyId"] == "" and values["s3"]["secretAccessKey"] == ""
    text = yaml.safe_dump_all(default_docs)
    assert "AWS_SECRET_ACCESS_KEY" not in text and "Secret" not in by_kind(default_docs)
    assert by_kind(default_docs)["ServiceAccount"]["secrets"] == [{"name": "medens-s3"}]
    # credentials only when given, into a Secret carrying KServe's S3 annotations
    secret = by_kind(all_on_docs)["Secret"]
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key"}
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == "minio.minio.svc:9000"
    assert secret["metadata"]["annotations"]["serving.kserve.io/s3-usehttps"] == "1"
    assert by_kind(all_on_docs)["ServiceAccount"]["secrets"] == [{"name": "rel-medens-s3"}]
    for doc in all_on_docs:
        if doc["kind"] != "Secret":
            assert "test-secret-key" not in json.dumps(doc)
    with pytest.raises(helm_python.HelmError, match="set existingSecret"):
        render({"s3": {"existingSecret": ""}})


@pytest.mark.parametrize("values, message", [
    ({"predictor": {"minReplicas": -1}}, r"/predictor/minReplicas': minimum: got -1, want 0"),
    ({"predictorr": {}}, r"additional properties 'predictorr' not allowed"),
    ({"model": {"storageUri": "minio/medens/models"}}, r"/model/storageUri': 'minio/medens/models' does not match"),
    ({"predictor": {"canaryTrafficPercent": 150}}, r"canaryTrafficPercent': maximum"),
    ({"retraining": {"cron": "0 2 * * *"}}, r"/retraining/cron'"),
])
def test_the_schema_rejects_bad_values_with_helms_error(values, message):
    with pytest.raises(helm_python.HelmValuesError, match=message):
        render(values)


def test_the_dashboard_has_a_panel_for_every_medens_metric(default_docs):
    from medens.serving import metrics

    names = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if isinstance(name, str) and name.startswith("medens_"):
            names.add(name)
    assert len(names) >= 10
    cm = by_kind(default_docs)["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["medens.json"])
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    missing = [n for n in sorted(names) if not re.search(rf"\b{n}(_total|_bucket|_sum|_count)?\{{", exprs)]
    assert not missing, missing


def _promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make system-deps` installs the prometheus Debian package (as root)"
    return tool


def _series(name: str, labels: dict, values: str) -> dict:
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def test_alert_rules_pass_promtool_and_fire_only_on_planted_trouble(default_docs, tmp_path):
    rule = by_kind(default_docs)["PrometheusRule"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([_promtool(), "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"MedensHighErrorRatio", "MedensHighLatencyP99", "MedensInputDrift",
                           "MedensMemberDisagreement", "MedensNoTraffic"}
    m, isvc = {"model": "rbc-demo"}, {"model_name": "rbc-demo"}
    def planted(errors: str, fast: str, psi: str, disagreeing: str) -> list[dict]:
        """10 images a minute; ``fast`` of them under 0.5 s; the rest as given."""
        return [
            _series("medens_input_images_total", m, "0+10x90"),
            _series("medens_request_errors_total", {**m, "reason": "invalid_base64"}, errors),
            _series("request_predict_seconds_bucket", {**isvc, "le": "0.5"}, fast),
            _series("request_predict_seconds_bucket", {**isvc, "le": "2"}, fast),
            _series("request_predict_seconds_bucket", {**isvc, "le": "+Inf"}, "0+10x90"),
            _series("medens_input_drift_psi", m, psi),
            _series("medens_member_disagreement_sum", m, disagreeing),
            _series("medens_member_disagreement_count", m, "0+10x90"),
        ]

    trouble = planted(errors="0+5x90", fast="0+1x90", psi="0.6x90", disagreeing="0+6x90")
    healthy = planted(errors="0+0x90", fast="0+10x90", psi="0.05x90", disagreeing="0+0.5x90")
    idle = [_series("medens_input_images_total", m, "500x90")]

    def expect(name: str, firing: bool) -> dict:
        r = alerts[name]
        return {"eval_time": "80m", "alertname": name,
                "exp_alerts": [{"exp_labels": r["labels"], "exp_annotations": r["annotations"]}] if firing else []}

    busy = [n for n in alerts if n != "MedensNoTraffic"]
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": trouble,
         "alert_rule_test": [expect(n, True) for n in busy] + [expect("MedensNoTraffic", False)]},
        {"interval": "1m", "input_series": healthy, "alert_rule_test": [expect(n, False) for n in alerts]},
        {"interval": "1m", "input_series": idle, "alert_rule_test": [expect("MedensNoTraffic", True)]},
    ]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    run = subprocess.run([_promtool(), "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_dockerfile_installs_exactly_the_lock_and_matches_the_chart(default_docs):
    import importlib.util

    text = (ROOT / "Dockerfile").read_text()
    installs = [line.strip() for line in text.splitlines() if "pip install" in line]
    assert len(installs) == 3 and all("-c requirements.lock" in line for line in installs)
    assert "python scripts/check_lock.py requirements.lock" in text
    assert "COPY requirements.lock" in text and "ARG VARIANT=cpu" in text and "cuda)" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == 10001 and values["securityContext"]["runAsGroup"] == 10001
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    c = by_kind(default_docs)["InferenceService"]["spec"]["predictor"]["containers"][0]
    assert cmd[0] == c["command"][0] and cmd[1:4] == c["args"][:3]
    # the check the build runs: this environment (installed from the lock) passes, a drift fails
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    lock = check.read_lock(ROOT / "requirements.lock")
    assert check.main([str(ROOT / "requirements.lock")]) == 0
    assert check.problems(lock, {"numpy": "0.1", "left-pad": "1.0", "torch": lock["torch"] + "+cpu"}) == [
        "left-pad==1.0 is installed but not in the lock", f"numpy==0.1 is installed; the lock has {lock['numpy']}"]
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(dockerignore)


def test_the_retraining_job_is_a_valid_medens_schedule_command(all_on_docs, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(ROOT))
    from pipelines.__main__ import build_parser

    job = by_kind(all_on_docs)["Job"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][:3] == ["python", "-m", "pipelines"]
    args = build_parser().parse_args(c["command"][3:] + c["args"])
    assert (args.command, args.cron, args.data_uri, args.store) == (
        "schedule", "0 0 2 * * *", "s3://medens/incoming/rbc-demo", "s3://medens/models")
    assert args.model_name == "rbc-demo" and args.namespace == "ml" and args.deploy is False
    assert args.service_account == "medens-predictor" and sys.modules["pipelines.__main__"]
