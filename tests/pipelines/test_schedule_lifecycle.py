"""``python -m pipelines schedule|unschedule`` through the real kfp.Client (kfp 2.17) against the
fake Kubeflow Pipelines API of tests/fakes/kfp_api.py: what goes over the wire, idempotence, and
the refusals a cluster gives (401, 403, 400, nothing listening)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medens.config import load_spec
from pipelines.__main__ import main
from tests.fakes.kfp_api import FakeKfpApi

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sa-token-for-kfp"
NAME = "rel-medens-retraining"
pytestmark = pytest.mark.filterwarnings("ignore:This client only works:FutureWarning")


@pytest.fixture
def token_file(tmp_path, monkeypatch):
    """The projected token as the Job sees it; HOME away from any real kfp context; MEDENS_IMAGE as
    components/ read it when this process first imported it."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(path))
    import components

    monkeypatch.setenv("MEDENS_IMAGE", components.IMAGE)  # what this process compiles with
    return path


@pytest.fixture
def api(token_file):
    with FakeKfpApi(token=TOKEN, allowed_namespaces={"ml"}) as fake:
        yield fake


def schedule_argv(api: FakeKfpApi, *extra: str) -> list[str]:
    return ["schedule", "--host", api.url, "--preset", "rbc-demo", "--namespace", "ml", "--job-name", NAME,
            "--cron", "0 0 2 * * *", "--data-uri", "s3://medens/incoming/rbc", "--store", "s3://medens/models",
            "--store-endpoint", "https://minio.minio.svc:9000", *extra]


def unschedule_argv(api: FakeKfpApi) -> list[str]:
    return ["unschedule", "--host", api.url, "--namespace", "ml", "--job-name", NAME]


def test_schedule_sends_one_authenticated_recurring_run_and_replaces_it_when_run_again(api, capsys):
    assert main(schedule_argv(api)) == 0
    first = capsys.readouterr().out
    (run,) = api.recurring_runs.values()
    assert main(schedule_argv(api)) == 0
    second = capsys.readouterr().out
    (again,) = api.recurring_runs.values()
    assert again["recurring_run_id"] != run["recurring_run_id"] and again["display_name"] == NAME
    assert f"created recurring run {NAME!r} ({run['recurring_run_id']})" in first
    assert "deleted the previous" not in first
    assert f"deleted the previous recurring run {NAME!r} ({run['recurring_run_id']})" in second

    assert all(c["authorization"] == f"Bearer {TOKEN}" and c["status"] == 200 for c in api.calls)
    (exp,) = api.experiments.values()
    assert (exp["display_name"], exp["namespace"]) == ("medens-retraining", "ml")
    assert [(c["method"], c["path"].rsplit("/", 1)[-1]) for c in api.calls] == [
        ("GET", "experiments"), ("POST", "experiments"), ("GET", "recurringruns"), ("POST", "recurringruns"),
        ("GET", "experiments"), ("GET", "recurringruns"), ("POST", "recurringruns"),
        ("DELETE", run["recurring_run_id"])]
    listing = api.calls[2]["query"]
    assert listing["experiment_id"] == exp["experiment_id"]
    assert json.loads(listing["filter"]) == {"predicates": [
        {"operation": "EQUALS", "key": "display_name", "stringValue": NAME}]}

    body = api.calls[3]["body"]
    assert (body["display_name"], body["experiment_id"], body["mode"]) == (NAME, exp["experiment_id"], "ENABLE")
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert body["max_concurrency"] == 1 and body["no_catchup"] is True
    params = body["runtime_config"]["parameters"]
    assert params["spec"] == load_spec("rbc-demo").to_yaml() and params["data_uri"] == "s3://medens/incoming/rbc"
    assert (params["store_uri"], params["store_endpoint"], params["namespace"]) == (
        "s3://medens/models", "https://minio.minio.svc:9000", "ml")
    spec = body["pipeline_spec"].get("pipeline_spec", body["pipeline_spec"])
    assert spec["pipelineInfo"]["name"] == "medens-retraining"
    assert set(params) <= set(spec["root"]["inputDefinitions"]["parameters"])
    # as the server answers: an int64 as a string, the namespace of the experiment
    assert (run["max_concurrency"], run["namespace"], run["status"]) == ("1", "ml", "ENABLED")


def test_unschedule_is_idempotent_and_leaves_other_recurring_runs_alone(api, capsys):
    assert main(unschedule_argv(api)) == 0
    assert "no experiment 'medens-retraining'" in capsys.readouterr().out
    assert main(schedule_argv(api)) == 0
    assert main(schedule_argv(api, "--job-name", "someone-elses")) == 0
    assert main(schedule_argv(api, "--experiment", "other")) == 0
    capsys.readouterr()
    assert len(api.recurring_runs) == 3

    assert main(unschedule_argv(api)) == 0
    (gone,) = [c["path"].rsplit("/", 1)[-1] for c in api.calls if c["method"] == "DELETE"]
    assert f"deleted recurring run {NAME!r} ({gone})" in capsys.readouterr().out
    left = sorted((api.experiments[r["experiment_id"]]["display_name"], r["display_name"])
                  for r in api.recurring_runs.values())
    assert left == [("medens-retraining", "someone-elses"), ("other", NAME)]
    assert main(unschedule_argv(api)) == 0
    assert "nothing to delete" in capsys.readouterr().out
    assert len(api.recurring_runs) == 2
    # without --job-name the name is the spec's, as schedule's default
    assert main(["unschedule", "--host", api.url, "--namespace", "ml", "--preset", "rbc-demo"]) == 0
    assert "no recurring run 'rbc-demo-retraining' in experiment 'medens-retraining'" in capsys.readouterr().out


@pytest.mark.parametrize("case, status, hint", [
    ("no token", 401, "no token was sent"),
    ("wrong token", 401, "was not accepted"),
    ("another namespace", 403, "RoleBinding to the ClusterRole kubeflow-edit"),
])
@pytest.mark.parametrize("command", ["schedule", "unschedule"])
def test_a_refusal_exits_1_naming_the_host_and_the_status(api, token_file, monkeypatch, capsys, command, case,
                                                          status, hint):
    if case == "no token":
        monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
    elif case == "wrong token":
        token_file.write_text("expired")
    argv = schedule_argv(api) if command == "schedule" else unschedule_argv(api)
    if case == "another namespace":
        argv[argv.index("--namespace") + 1] = "team-b"
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"pipelines: {command} failed: the Kubeflow Pipelines API at {api.url} refused to" in err
    assert f"HTTP {status}" in err and hint in err
    assert api.recurring_runs == {} and api.calls[-1]["status"] == status


def test_other_refusals_and_an_unreachable_host_exit_1(api, monkeypatch, capsys):
    import pipelines.__main__ as cli

    monkeypatch.setattr(cli, "check_cron", lambda cron: cron)  # let a 5-field cron reach the server
    assert main(schedule_argv(api) + ["--cron", "0 2 * * *"]) == 1
    err = capsys.readouterr().err
    assert f"at {api.url} refused to create the recurring run {NAME!r}: HTTP 400" in err and "6 fields" in err

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert main(["unschedule", "--host", f"http://127.0.0.1:{port}", "--namespace", "ml", "--job-name", NAME]) == 1
    assert f"cannot reach the Kubeflow Pipelines API at http://127.0.0.1:{port}" in capsys.readouterr().err

    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    assert main(unschedule_argv(api)) == 1
    assert "KF_PIPELINES_SA_TOKEN_PATH=/nonexistent/token is not a file" in capsys.readouterr().err


def test_cron_is_checked_before_anything_is_sent(api, capsys):
    assert main(schedule_argv(api) + ["--cron", "0 2 * * *"]) == 2
    assert "6 (seconds first)" in capsys.readouterr().err
    assert api.calls == []


def test_a_pipeline_compiled_before_MEDENS_IMAGE_was_set_is_refused(api, monkeypatch, capsys):
    monkeypatch.setenv("MEDENS_IMAGE", "registry.example.org/medens/medens:9.9.9")
    assert main(schedule_argv(api)) == 1
    assert "set MEDENS_IMAGE before the process starts" in capsys.readouterr().err
    assert api.recurring_runs == {}


def test_the_fake_server_as_a_process_with_the_real_command(tmp_path, token_file):
    """What a container smoke test does: the fake as its own process, `python -m pipelines schedule`
    as another with the Job's environment, the record file read back."""
    record, port_file = tmp_path / "kfp.json", tmp_path / "port"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "tests.fakes.kfp_api", "--port", "0", "--port-file", str(port_file),
                               "--record", str(record), "--token-file", str(token_file), "--allow-namespace", "ml"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().startswith("fake KFP API listening on http://127.0.0.1:")
        host = f"http://127.0.0.1:{port_file.read_text()}"
        image = "registry.example.org/medens/medens:1.2.3"
        done = subprocess.run([sys.executable, "-m", "pipelines", "schedule", "--host", host, "--preset", "rbc-demo",
                               "--namespace", "ml", "--job-name", NAME], cwd=ROOT, capture_output=True, text=True,
                              env={**env, "MEDENS_IMAGE": image}, timeout=300)
        assert done.returncode == 0, done.stderr
        assert f"created recurring run {NAME!r}" in done.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    state = json.loads(record.read_text())
    (run,) = state["recurring_runs"]
    spec = run["pipeline_spec"].get("pipeline_spec", run["pipeline_spec"])
    assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {image}
    assert {c["authorization"] for c in state["calls"]} == {f"Bearer {TOKEN}"}
