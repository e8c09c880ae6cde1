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

from tests._scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "medens"
KUBE_VERSION = "1.34"
CORE_KINDS = {"ServiceAccount", "Secret", "ConfigMap", "Job", "NetworkPolicy", "PodDisruptionBudget", "Pod"}
KFP = "http://ml-pipeline.kubeflow.svc:8888"
SERVERLESS = {"deploymentMode": "Serverless"}

ALL_ON = {
    "image": {"pullSecrets": ["regcred"]},
    "predictor": {"gpu": 1, "canaryTrafficPercent": 10, "minReplicas": 2, "maxReplicas": 5, "grpc": {"enabled": True},
                  "autoscaling": {"class": "hpa", "metric": "cpu", "target": 70},
                  "logger": {"mode": "all", "url": "http://message-dumper.default/"},
                  "nodeSelector": {"nvidia.com/gpu.present": "true"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                      {"weight": 1, "preference": {"matchExpressions": [
                          {"key": "pool", "operator": "In", "values": ["gpu"]}]}}]}},
                  "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                                 "whenUnsatisfiable": "ScheduleAnyway"}]},
    "s3": {"existingSecret": "", "accessKeyId": "test-access-key", "secretAccessKey": "test-secret-key",
           "useHttps": True},
    "serviceAccount": {"name": "medens-predictor"},
    "storageInitializer": {"clusterStorageContainer": {"enabled": True}},
    "retraining": {"enabled": True, "deploy": False, "kfpHost": KFP},
    "monitoring": {"release": "kube-prometheus",
                   "podMonitor": {"labels": {"team": "ml"}}, "rules": {"labels": {"team": "ml"}}},
}


def render(values: dict | None = None) -> list[dict]:
    chart = helm_python.Chart.load(str(CHART))
    try:
        out = chart.render(values or {}, name="rel", namespace="ml")
    finally:
        chart.close()
    return [doc for path, text in out.items() if path.endswith(".yaml")  # not NOTES.txt
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def named(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def predictor(docs: list[dict]) -> dict:
    return by_kind(docs)["InferenceService"]["spec"]["predictor"]


@pytest.fixture(scope="module")
def default_docs():
    return render()


@pytest.fixture(scope="module")
def all_on_docs():
    return render(ALL_ON)


@pytest.fixture(scope="module")
def serverless_docs():
    return render(SERVERLESS)


def test_default_values_and_every_option_render_and_lint_clean(default_docs, all_on_docs, serverless_docs):
    assert set(by_kind(default_docs)) == {"InferenceService", "ServiceAccount", "PodMonitor", "PrometheusRule",
                                          "ConfigMap", "NetworkPolicy", "Pod"}
    assert set(by_kind(serverless_docs)) == set(by_kind(default_docs))
    assert set(by_kind(all_on_docs)) == set(by_kind(default_docs)) | {"Secret", "Job", "PodDisruptionBudget",
                                                                     "ClusterStorageContainer"}
    for values in (None, ALL_ON, SERVERLESS):
        report = helm_python.lint(str(CHART), values, strict=False, kube_version=f"v{KUBE_VERSION}.0")
        assert report["errors"] == [], report
        assert not [m for m in report["messages"] if m["severity"] >= 3], report


def test_core_resources_validate_strictly(default_docs, all_on_docs, serverless_docs):
    import kubernetes_validate

    seen = set()
    for doc in default_docs + all_on_docs + serverless_docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            seen.add(doc["kind"])
    assert seen == CORE_KINDS


KEDA = {"predictor": {"autoscaling": {"class": "keda", "metric": "memory", "target": 80}}}
SERVERLESS_ALL = {**SERVERLESS, "predictor": {"minReplicas": 0, "autoscaling": {"metric": "rps", "target": 40},
                                             "nodeSelector": {"pool": "cpu"}},
                  "knative": {"podSpecFlags": {"securityContext": True, "nodeSelector": True}}}


def test_the_inference_service_deserialises_into_the_kserve_model_with_every_field(
        all_on_docs, serverless_docs, monkeypatch):
    import kserve.models
    import kubernetes.client.models as k8s
    from kserve import ApiClient

    for name in dir(k8s):  # the kserve client resolves nested Kubernetes types in its own module
        if name.startswith("V1") and not hasattr(kserve.models, name):
            monkeypatch.setattr(kserve.models, name, getattr(k8s, name), raising=False)

    class Response:
        def __init__(self, data):
            self.data = json.dumps(data)

    for docs in (all_on_docs, render(), serverless_docs, render(KEDA), render(SERVERLESS_ALL)):
        isvc = by_kind(docs)["InferenceService"]
        obj = ApiClient().deserialize(Response(isvc), "V1beta1InferenceService")
        assert type(obj).__name__ == "V1beta1InferenceService"
        assert ApiClient().sanitize_for_serialization(obj) == isvc  # nothing dropped, nothing renamed
    spec = predictor(all_on_docs)
    c = spec["containers"][0]
    assert c["name"] == "kserve-container" and c["args"][-2:] == ["--device", "cuda"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and spec["canaryTrafficPercent"] == 10
    assert spec["logger"] == {"mode": "all", "url": "http://message-dumper.default/"}
    assert c["readinessProbe"]["httpGet"]["path"] == "/v1/models/rbc-demo"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


def _pod_specs(docs: list[dict]) -> list[dict]:
    out = []
    for d in docs:
        if d["kind"] == "InferenceService":
            out.append(d["spec"]["predictor"])
        elif d["kind"] == "Job":
            out.append(d["spec"]["template"]["spec"])
        elif d["kind"] == "Pod":
            out.append(d["spec"])
    return out


def _assert_container_locked_down(c: dict) -> None:
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["privileged"] is False
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001 and sc["runAsGroup"] == 10001
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}  # the only writable path
    assert c["resources"]["limits"] and c["resources"]["requests"]


def test_every_pod_is_locked_down(default_docs, all_on_docs):
    from medens.data.decode import PREPROCESSING  # noqa: F401 - the image's code, imported as a smoke check

    pods = _pod_specs(default_docs) + _pod_specs(all_on_docs)
    assert len(pods) == 6  # predictor and test pod twice, the two retraining hook Jobs
    for pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["runAsGroup"] == 10001
        assert psc["fsGroup"] == 10001 and psc["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            _assert_container_locked_down(c)
    sa = by_kind(default_docs)["ServiceAccount"]
    assert sa["automountServiceAccountToken"] is False
    assert not any(d["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
                   for d in default_docs + all_on_docs)  # nothing here calls the Kubernetes API


def test_serverless_keeps_only_what_knative_accepts_and_raw_keeps_everything(serverless_docs, all_on_docs):
    # Knative's PodSpecMask drops pod securityContext/nodeSelector/tolerations/affinity/topology
    # spread unless kubernetes.podspec-* flags are on; its SecurityContextMask keeps these fields
    spec = predictor(serverless_docs)
    isvc = by_kind(serverless_docs)["InferenceService"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert "serving.kserve.io/autoscalerClass" not in isvc["metadata"]["annotations"]
    assert not {"securityContext", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"} & set(spec)
    _assert_container_locked_down(spec["containers"][0])
    raw = predictor(all_on_docs)
    ann = by_kind(all_on_docs)["InferenceService"]["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert ann["serving.kserve.io/autoscalerClass"] == "hpa"
    assert raw["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert raw["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and raw["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert raw["affinity"]["nodeAffinity"]
    assert raw["topologySpreadConstraints"] == [{  # the constraint gets this InferenceService's pods
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"serving.kserve.io/inferenceservice": "rbc-demo"}}}]
    _assert_container_locked_down(raw["containers"][0])
    # with the cluster's flags declared on, Serverless renders those fields too
    flagged = predictor(render(SERVERLESS_ALL))
    assert flagged["securityContext"]["fsGroup"] == 10001 and flagged["nodeSelector"] == {"pool": "cpu"}
    assert "tolerations" not in flagged


@pytest.mark.parametrize("field, value", [
    ("nodeSelector", {"pool": "gpu"}),
    ("tolerations", [{"key": "gpu", "operator": "Exists"}]),
    ("affinity", {"nodeAffinity": {}}),
    ("topologySpreadConstraints", [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]),
])
def test_serverless_refuses_pod_fields_knative_would_reject(field, value):
    with pytest.raises(helm_python.HelmError, match=rf"predictor.{field} is set but deploymentMode is Serverless: "
                       rf"Knative refuses it unless the cluster's config-features enables "
                       rf"kubernetes.podspec-{field.lower()}; enable that flag and set knative.podSpecFlags.{field}=true"):
        render({**SERVERLESS, "predictor": {field: value}})


def test_scrape_and_network_ports_follow_the_mode(default_docs, serverless_docs):
    def ports(rule):
        return sorted((p["port"], p["protocol"]) for p in rule["ports"])

    for docs, scrape in ((default_docs, "http1"), (serverless_docs, "user-port")):
        pm = by_kind(docs)["PodMonitor"]["spec"]
        assert pm["selector"] == {"matchLabels": {"serving.kserve.io/inferenceservice": "rbc-demo"}}
        assert [e["port"] for e in pm["podMetricsEndpoints"]] == [scrape]
    raw = named(default_docs, "NetworkPolicy")["rel-medens"]["spec"]
    assert raw["policyTypes"] == ["Ingress"]
    ingress, scrape, test = raw["ingress"]
    assert ports(ingress) == ports(scrape) == ports(test) == [(8080, "TCP")]
    assert [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for f in ingress["from"]] == [
        "knative-serving", "istio-system"]
    assert scrape["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    test_pod = by_kind(default_docs)["Pod"]
    assert test["from"] == [{"podSelector": {"matchLabels": {k: test_pod["metadata"]["labels"][k] for k in (
        "app.kubernetes.io/instance", "app.kubernetes.io/component")}}}]
    # Serverless: queue-proxy's ports (knative pkg/networking/constants.go) and the user port for scraping
    ingress, scrape, test = named(serverless_docs, "NetworkPolicy")["rel-medens"]["spec"]["ingress"]
    assert ports(ingress) == [(8012, "TCP"), (8013, "TCP"), (8022, "TCP"), (8112, "TCP"), (9090, "TCP")]
    assert ports(scrape) == [(8080, "TCP"), (9091, "TCP")]


def test_egress_allows_dns_and_the_s3_endpoint_only(default_docs):
    egress = named(default_docs, "NetworkPolicy")["rel-medens-egress"]["spec"]
    assert egress["podSelector"] == {"matchLabels": {"serving.kserve.io/inferenceservice": "rbc-demo"}}
    assert egress["policyTypes"] == ["Egress"]
    dns, s3 = egress["egress"]
    assert dns == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert s3 == {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}],
                  "ports": [{"port": 9000, "protocol": "TCP"}]}  # the port of s3.endpoint
    extra = {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}}],
             "ports": [{"port": 15012, "protocol": "TCP"}]}
    docs = render({"s3": {"endpoint": "s3.example.org", "useHttps": True},
                   "networkPolicy": {"egress": {"s3": {"cidr": "203.0.113.0/24"}, "extra": [extra]}}})
    rules = named(docs, "NetworkPolicy")["rel-medens-egress"]["spec"]["egress"]
    assert rules[1:] == [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443, "protocol": "TCP"}]},
                         extra]
    docs = render({"networkPolicy": {"egress": {"s3": {"port": 9443, "podSelector": {"app": "minio"}}}}})
    rule = named(docs, "NetworkPolicy")["rel-medens-egress"]["spec"]["egress"][1]
    assert rule["to"][0]["podSelector"] == {"matchLabels": {"app": "minio"}} and rule["ports"][0]["port"] == 9443
    assert "rel-medens-egress" not in named(render({"networkPolicy": {"egress": {"enabled": False}}}), "NetworkPolicy")


def test_the_predictor_resolves_the_champion_pointer_with_the_stores_credentials(default_docs, all_on_docs):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["model"]["storageUri"] == "s3://medens/models/rbc-demo/champion"
    for docs, secret, endpoint in ((default_docs, "medens-s3", "http://minio.minio.svc:9000"),
                                   (all_on_docs, "rel-medens-s3", "https://minio.minio.svc:9000")):
        c = predictor(docs)["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["STORAGE_URI"] == "s3://medens/models/rbc-demo/champion"
        assert env["MINIO_ENDPOINT"] == endpoint and env["AWS_DEFAULT_REGION"] == "us-east-1"
        assert c["envFrom"] == [{"secretRef": {"name": secret}}]


@pytest.mark.parametrize("cpu, threads", [
    ("2", "2"), (2, "2"), ("1500m", "1"), ("4000m", "4"), ("500m", "1"), ("2500m", "2"), ("1.5", "1"), (None, None),
])
def test_serve_threads_are_the_whole_cores_of_the_cpu_limit(cpu, threads):
    docs = render({"predictor": {"resources": {"limits": {"cpu": cpu, "memory": "4Gi"}}}})
    args = predictor(docs)["containers"][0]["args"]
    assert (args[args.index("--threads") + 1] if "--threads" in args else None) == threads


def test_serve_backend_is_the_predictor_value(default_docs):
    args = predictor(default_docs)["containers"][0]["args"]
    assert args[args.index("--backend") + 1] == "auto"
    args = predictor(render({"predictor": {"backend": "torch"}}))["containers"][0]["args"]
    assert args[args.index("--backend") + 1] == "torch"


def test_a_startup_probe_covers_a_slow_model_load(default_docs):
    c = predictor(default_docs)["containers"][0]
    assert c["startupProbe"] == {"httpGet": {"path": "/v1/models/rbc-demo", "port": 8080},
                                 "periodSeconds": 5, "failureThreshold": 60}  # 5 minutes
    # Knative: every probe on the container port (the only one), named http1
    assert {c[p]["httpGet"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {8080}
    assert c["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]


@pytest.mark.parametrize("values, message", [
    ({"predictor": {"minReplicas": 3, "maxReplicas": 2}}, r"predictor: maxReplicas \(2\) is below minReplicas \(3\)"),
    ({**SERVERLESS, "predictor": {"autoscaling": {"class": "hpa"}}},
     r"predictor.autoscaling.class=hpa applies to deploymentMode=RawDeployment only"),
    ({**SERVERLESS, "predictor": {"autoscaling": {"class": "keda"}}}, r"class=keda applies to deploymentMode=Raw"),
    ({**SERVERLESS, "predictor": {"autoscaling": {"metric": "cpu"}}},
     r"metric=cpu: in Serverless Knative's KPA scales on concurrency or rps"),
    ({"predictor": {"autoscaling": {"metric": "rps"}}}, r"metric=rps: the hpa class scales on cpu or memory"),
    ({"predictor": {"autoscaling": {"metric": "cpu", "target": 150}}}, r"target=150: a CPU utilisation target"),
    ({"predictor": {"autoscaling": {"class": "keda", "metric": "cpu"}}}, r"the keda class needs metric"),
    ({"predictor": {"autoscaling": {"class": "external", "target": 5}}}, r"with class external KServe creates no"),
    ({"predictor": {"minReplicas": 2, "podDisruptionBudget": {"minAvailable": 2}}},
     r"minAvailable \(2\) must be below minReplicas \(2\)"),
    ({"serviceAccount": {"create": False}}, r"serviceAccount: create is false, so name must name an existing"),
    ({**SERVERLESS, "predictor": {"grpc": {"enabled": True}}},
     r"predictor.grpc.enabled needs deploymentMode=RawDeployment: Knative allows one container port"),
    ({"predictor": {"grpc": {"enabled": True, "port": 8080}}}, r"predictor.grpc.port \(8080\) must differ"),
])
def test_impossible_combinations_fail_with_a_clear_message(values, message):
    with pytest.raises(helm_python.HelmError, match=message):
        render(values)


def test_grpc_is_a_second_named_port_when_enabled_and_off_in_the_server_otherwise(default_docs, serverless_docs):
    docs = render({"predictor": {"grpc": {"enabled": True, "port": 9001}}})
    c = predictor(docs)["containers"][0]
    assert c["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "grpc", "containerPort": 9001, "protocol": "TCP"}]
    assert c["args"][c["args"].index("--grpc-port") + 1] == "9001"
    ingress = named(docs, "NetworkPolicy")["rel-medens"]["spec"]["ingress"][0]
    assert sorted(p["port"] for p in ingress["ports"]) == [8080, 9001]
    for off in (default_docs, serverless_docs):
        c = predictor(off)["containers"][0]
        assert c["args"][c["args"].index("--grpc-port") + 1] == "0"
        assert [p["name"] for p in c["ports"]] == ["http1"]


def test_autoscaling_maps_to_kserves_fields_per_mode(all_on_docs):
    assert (predictor(all_on_docs)["scaleMetric"], predictor(all_on_docs)["scaleTarget"]) == ("cpu", 70)
    keda = render(KEDA)
    spec = predictor(keda)
    assert by_kind(keda)["InferenceService"]["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    assert "scaleMetric" not in spec and spec["autoScaling"] == {"metrics": [{"type": "Resource", "resource": {
        "name": "memory", "target": {"type": "Utilization", "averageUtilization": 80}}}]}
    spec = predictor(render(SERVERLESS_ALL))
    assert (spec["scaleMetric"], spec["scaleTarget"], spec["minReplicas"]) == ("rps", 40, 0)
    ext = render({"predictor": {"autoscaling": {"class": "external"}}})
    assert by_kind(ext)["InferenceService"]["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    assert not {"scaleMetric", "scaleTarget", "autoScaling"} & set(predictor(ext))


def test_a_disruption_budget_only_with_two_replicas_or_more(default_docs, all_on_docs):
    assert "PodDisruptionBudget" not in by_kind(default_docs)  # minReplicas 1
    pdb = by_kind(all_on_docs)["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"] == {
        "minAvailable": 1, "selector": {"matchLabels": {"serving.kserve.io/inferenceservice": "rbc-demo"}}}
    off = {"predictor": {"minReplicas": 3, "podDisruptionBudget": {"enabled": False}}}
    assert "PodDisruptionBudget" not in by_kind(render(off))


def test_images_by_tag_cuda_tag_and_digest(default_docs, all_on_docs):
    assert predictor(default_docs)["containers"][0]["image"] == "registry.example.org/medens/medens:0.1.0"
    cuda = "registry.example.org/medens/medens:0.1.0-cuda"  # the Dockerfile's VARIANT=cuda tag
    assert predictor(all_on_docs)["containers"][0]["image"] == cuda
    assert by_kind(all_on_docs)["Pod"]["spec"]["containers"][0]["image"] == cuda
    digest = "sha256:" + "ab" * 32
    docs = render({"image": {"digest": digest}})
    assert {c["image"] for p in _pod_specs(docs) for c in p["containers"]} == {
        f"registry.example.org/medens/medens@{digest}"}
    with pytest.raises(helm_python.HelmValuesError, match=r"/image/digest': 'sha256:abc' does not match"):
        render({"image": {"digest": "sha256:abc"}})


def test_the_helm_test_pod_runs_medens_probe_against_the_predictor_service(default_docs, serverless_docs):
    from medens.cli import build_parser

    for docs in (default_docs, serverless_docs):
        pod = by_kind(docs)["Pod"]
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["automountServiceAccountToken"] is False
        c = pod["spec"]["containers"][0]
        assert c["image"] == predictor(docs)["containers"][0]["image"]
        args = build_parser().parse_args(c["command"][1:] + c["args"])
        assert c["command"] == ["medens"] and args.func.__name__ == "cmd_probe"
        # KServe's Service <name>-predictor, port 80 in RawDeployment
        assert (args.url, args.model, args.timeout) == (
            "http://rbc-demo-predictor.ml.svc.cluster.local", "rbc-demo", 120.0)
    assert "Pod" not in by_kind(render({"test": {"enabled": False}}))


def test_the_service_account_is_created_or_named(default_docs):
    docs = render({"serviceAccount": {"create": False, "name": "existing-sa"}})
    assert "ServiceAccount" not in by_kind(docs)
    assert predictor(docs)["serviceAccountName"] == "existing-sa"
    assert by_kind(docs)["Pod"]["spec"]["serviceAccountName"] == "existing-sa"
    assert predictor(default_docs)["serviceAccountName"] == by_kind(default_docs)["ServiceAccount"]["metadata"]["name"]


def test_the_cluster_storage_container_gives_the_storage_initializer_a_restricted_context(default_docs, all_on_docs):
    assert "ClusterStorageContainer" not in by_kind(default_docs)
    csc = by_kind(all_on_docs)["ClusterStorageContainer"]
    assert csc["apiVersion"] == "serving.kserve.io/v1alpha1" and "namespace" not in csc["metadata"]
    spec = csc["spec"]
    assert spec["supportedUriFormats"] == [{"prefix": "s3://"}] and spec["workloadType"] == "initContainer"
    c = spec["container"]
    assert c["name"] == "storage-initializer" and c["image"] == "kserve/storage-initializer:v0.15.2"
    assert c["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    # Pod Security "restricted" for a container (kubernetes.io/docs/concepts/security/pod-security-standards)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    import kubernetes_validate  # the container is a core Container

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [c]}}
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)


def _leaf_paths(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        out += _leaf_paths(v, path + ".") if isinstance(v, dict) and v else [path]
    return out


def test_every_value_is_documented_in_the_readme_with_every_alerts_runbook(default_docs):
    readme = (CHART / "README.md").read_text()
    leaves = _leaf_paths(yaml.safe_load((CHART / "values.yaml").read_text()))
    assert len(leaves) > 60 and "predictor.autoscaling.class" in leaves
    missing = [p for p in leaves if f"`{p}`" not in readme]
    assert not missing, missing
    for alert in [r["alert"] for r in by_kind(render(ALL_ON))["PrometheusRule"]["spec"]["groups"][0]["rules"]]:
        assert f'<a id="alert-{alert.lower()}"></a>' in readme, alert
    schema = json.loads((CHART / "values.schema.json").read_text())

    def schema_leaves(node: dict, prefix: str = "") -> list[str]:
        props = node.get("properties")
        if not props or node.get("additionalProperties") is not False:
            return [prefix.rstrip(".")]
        return [p for k, v in props.items() for p in schema_leaves(v, f"{prefix}{k}.")]

    # every value has a schema (a free-form map's keys are under the map's), and the schema knows
    # no value that values.yaml lacks
    known = schema_leaves(schema)
    assert [p for p in leaves if not any(p == k or p.startswith(k + ".") for k in known)] == []
    assert [k for k in known if not any(p == k or p.startswith(k + ".") for p in leaves)] == []


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
    ({"deploymentMode": "Knative"}, r"/deploymentMode': value must be one of"),
    ({"predictor": {"autoscaling": {"class": "kpa"}}}, r"/predictor/autoscaling/class': value must be one of"),
    ({"knative": {"podSpecFlags": {"runtimeClassName": True}}}, r"additional properties 'runtimeClassName'"),
    ({"networkPolicy": {"egress": {"s3": {"cidr": "minio"}}}}, r"/networkPolicy/egress/s3/cidr'"),
    ({"monitoring": {"rules": {"runbookBaseUrl": "README.md"}}}, r"/monitoring/rules/runbookBaseUrl'"),
])
def test_the_schema_rejects_bad_values_with_helms_error(values, message):
    with pytest.raises(helm_python.HelmValuesError, match=message):
        render(values)


def test_the_dashboard_has_a_panel_for_every_medens_metric_scoped_by_namespace(default_docs):
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
    targets = [t for p in dash["panels"] for t in p["targets"]]
    exprs = " ".join(t["expr"] for t in targets)
    missing = [n for n in sorted(names) if not re.search(rf"\b{n}(_total|_bucket|_sum|_count)?\{{", exprs)]
    assert not missing, missing
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["namespace"]["query"] == "label_values(medens_model_info, namespace)"
    assert variables["model"]["query"] == 'label_values(medens_model_info{namespace="$namespace"}, model)'
    for t in targets:  # every selector of every query is scoped to the chosen namespace
        selectors = re.findall(r"\{[^}]*\}", t["expr"].replace("${datasource}", ""))
        assert selectors and all('namespace="$namespace"' in s for s in selectors), t["expr"]
    (conf,) = [p for p in dash["panels"] if p["title"] == "Top-class confidence (median, p10)"]
    quantiles = {t["legendFormat"]: re.match(r"histogram_quantile\(([0-9.]+),", t["expr"]).group(1)
                 for t in conf["targets"]}
    assert quantiles == {"median": "0.5", "p10": "0.1"}


def _promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: `make system-deps` installs the prometheus Debian package (as root)"
    return tool


def _series(name: str, labels: dict, values: str) -> dict:
    return {"series": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def test_alert_rules_pass_promtool_and_fire_only_on_planted_trouble(all_on_docs, tmp_path):
    rule = by_kind(all_on_docs)["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    assert by_kind(all_on_docs)["PodMonitor"]["metadata"]["labels"]["release"] == "kube-prometheus"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([_promtool(), "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"MedensHighErrorRatio", "MedensHighLatencyP99", "MedensInputDrift", "MedensTargetDown",
                           "MedensMemberDisagreement", "MedensNoTraffic", "MedensRetrainingFailed",
                           "MedensEmbeddingDrift"}
    for name, r in alerts.items():  # every rule scoped by namespace, each with a runbook
        assert 'namespace="ml"' in r["expr"], name
        assert r["annotations"]["description"] and r["annotations"]["runbook_url"] == (
            "https://github.com/medens/medens/blob/main/charts/medens/README.md#alert-" + name.lower())
    assert "MedensRetrainingFailed" not in {r["alert"] for r in by_kind(render())["PrometheusRule"]["spec"]["groups"][0]["rules"]}
    ns = {"namespace": "ml"}
    m, isvc = {**ns, "model": "rbc-demo"}, {**ns, "model_name": "rbc-demo"}
    elsewhere = {"namespace": "other", "model": "rbc-demo"}
    target = {**ns, "inferenceservice": "rbc-demo", "job": "ml/rel-medens", "pod": "rbc-demo-predictor-0"}

    def planted(errors: str, fast: str, psi: str, disagreeing: str, pvalue: str = "0.5x90") -> list[dict]:
        """10 requests of one image a minute; ``fast`` of them under 0.5 s; the rest as given."""
        return [
            _series("medens_input_images_total", m, "0+10x90"),
            _series("medens_request_errors_total", {**m, "reason": "invalid_base64"}, errors),
            _series("medens_requests_total", m, "0+10x90"),
            _series("request_predict_seconds_bucket", {**isvc, "le": "0.5"}, fast),
            _series("request_predict_seconds_bucket", {**isvc, "le": "2"}, fast),
            _series("request_predict_seconds_bucket", {**isvc, "le": "+Inf"}, "0+10x90"),
            _series("medens_input_drift_psi", m, psi),
            _series("medens_drift_mmd_pvalue", m, pvalue),
            _series("medens_member_disagreement_sum", m, disagreeing),
            _series("medens_member_disagreement_count", m, "0+10x90"),
            _series("up", target, "1x90"),
            # another namespace's endpoint in trouble must not fire here
            _series("medens_request_errors_total", {**elsewhere, "reason": "x"}, "0+50x90"),
            _series("medens_input_drift_psi", elsewhere, "5x90"),
            _series("medens_drift_mmd_pvalue", elsewhere, "0.001x90"),
        ]

    # 17% of requests fail (1.7 of 10 a minute); healthy: 1%
    trouble = planted(errors="0+1.7x90", fast="0+1x90", psi="0.6x90", disagreeing="0+6x90", pvalue="0.005x90")
    healthy = planted(errors="0+0.1x90", fast="0+10x90", psi="0.05x90", disagreeing="0+0.5x90")
    # content drift at equal intensities: the p-value low for 20 minutes fires, one low test (5 min) does not
    content = planted(errors="0+0.1x90", fast="0+10x90", psi="0.05x90", disagreeing="0+0.5x90",
                      pvalue="0.4x60 0.004x29")
    blip = planted(errors="0+0.1x90", fast="0+10x90", psi="0.05x90", disagreeing="0+0.5x90",
                   pvalue="0.4x74 0.004x4 0.4x11")
    idle = [_series("medens_input_images_total", m, "500x90"), _series("up", target, "1x90")]
    down = [_series("up", target, "1x10 0x80")]
    gone = [_series("up", {**target, "namespace": "other"}, "1x90")]
    failed_job = {**ns, "job_name": "rel-medens-retraining", "reason": "BackoffLimitExceeded"}
    retraining = [_series("kube_job_status_failed", failed_job, "0x20 1x70"),
                  _series("kube_job_status_failed", {**failed_job, "namespace": "other"}, "1x90"),
                  _series("kube_job_status_failed", {**failed_job, "job_name": "rel-medens-x"}, "1x90")]

    def expect(name: str, firing: bool, labels: dict | None = None) -> dict:
        r = alerts[name]
        return {"eval_time": "80m", "alertname": name,
                "exp_alerts": [{"exp_labels": {**(labels or {}), **r["labels"]},
                                "exp_annotations": r["annotations"]}] if firing else []}

    quiet = {"MedensNoTraffic", "MedensTargetDown", "MedensRetrainingFailed"}
    busy = [n for n in alerts if n not in quiet]
    tests = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": trouble,
         "alert_rule_test": [expect(n, True) for n in busy] + [expect(n, False) for n in quiet]},
        {"interval": "1m", "input_series": healthy, "alert_rule_test": [expect(n, False) for n in alerts]},
        {"interval": "1m", "input_series": content, "alert_rule_test": [
            expect(n, n == "MedensEmbeddingDrift") for n in alerts]},
        {"interval": "1m", "input_series": blip, "alert_rule_test": [expect("MedensEmbeddingDrift", False)]},
        {"interval": "1m", "input_series": idle, "alert_rule_test": [expect("MedensNoTraffic", True),
                                                                     expect("MedensTargetDown", False)]},
        {"interval": "1m", "input_series": down, "alert_rule_test": [expect("MedensTargetDown", True, target)]},
        {"interval": "1m", "input_series": gone, "alert_rule_test": [
            expect("MedensTargetDown", True, {"namespace": "ml", "inferenceservice": "rbc-demo"})]},
        {"interval": "1m", "input_series": retraining, "alert_rule_test": [
            expect("MedensRetrainingFailed", True, {"job_name": "rel-medens-retraining"})]},
    ]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    run = subprocess.run([_promtool(), "test", "rules", str(tmp_path / "tests.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_dockerfile_installs_exactly_the_lock_and_matches_the_chart(default_docs):
    text = (ROOT / "Dockerfile").read_text()
    installs = [line.strip() for line in text.splitlines() if "pip install" in line]
    assert len(installs) == 4 and all("-c requirements.lock" in line for line in installs)
    # a venv of its own: nothing the base image ships (python:3.11-slim's wheel) is checked against the lock
    assert "python3 -m venv /opt/venv" in text and "PATH=/opt/venv/bin:" in text
    assert "python scripts/check_lock.py requirements.lock" in text
    assert "COPY requirements.lock" in text and "ARG VARIANT=cpu" in text and "cuda)" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == 10001 and values["securityContext"]["runAsGroup"] == 10001
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    c = by_kind(default_docs)["InferenceService"]["spec"]["predictor"]["containers"][0]
    assert cmd[0] == c["command"][0] and cmd[1:4] == c["args"][:3]
    # the check the build runs: this environment (installed from the lock) passes, a drift fails
    check = load_script(ROOT / "scripts" / "check_lock.py", "check_lock")
    lock = check.read_lock(ROOT / "requirements.lock")
    assert check.main([str(ROOT / "requirements.lock")]) == 0
    assert check.problems(lock, {"numpy": "0.1", "left-pad": "1.0", "torch": lock["torch"] + "+cpu"}) == [
        "left-pad==1.0 is installed but not in the lock", f"numpy==0.1 is installed; the lock has {lock['numpy']}"]
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(dockerignore)
