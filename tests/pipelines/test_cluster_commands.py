"""submit against a recording fake in place of kfp.Client (no cluster here); schedule and
unschedule go through the real kfp.Client against a fake API server (test_schedule_lifecycle.py)."""

import inspect
from types import SimpleNamespace

import kfp
import pytest
import yaml

from medens.config import load_spec
from pipelines.__main__ import build_parser, check_cron, main, submit


class RecordingClient:
    """Records every call with its arguments; reads the pipeline package while it exists.

    Every call is bound to the real ``kfp.Client`` method's signature first, so a keyword the
    installed kfp does not take fails here as it would on a cluster.
    """

    def __init__(self, host, namespace=None):
        inspect.signature(kfp.Client).bind(host=host, **({"namespace": namespace} if namespace else {}))
        self.host = host
        self.calls = []
        self.packages = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name.startswith("_") or not callable(attr) or not hasattr(kfp.Client, name):
            return attr

        def checked(*args, **kw):
            inspect.signature(getattr(kfp.Client, name)).bind(None, *args, **kw)
            return attr(*args, **kw)
        return checked

    def _package(self, path):
        text = open(path).read()
        self.packages.append(yaml.safe_load_all(text).__next__()["pipelineInfo"]["name"])
        return path

    def create_run_from_pipeline_package(self, **kw):
        self._package(kw["pipeline_file"])
        self.calls.append(("create_run_from_pipeline_package", kw))
        return SimpleNamespace(run_id="run-123")

    def create_experiment(self, **kw):
        self.calls.append(("create_experiment", kw))
        return SimpleNamespace(experiment_id="exp-42", display_name=kw["name"])

    def create_recurring_run(self, **kw):
        self._package(kw["pipeline_package_path"])
        self.calls.append(("create_recurring_run", kw))
        return SimpleNamespace(recurring_run_id="rr-7")


@pytest.fixture
def factory():
    made = []

    def make(host):
        made.append(RecordingClient(host))
        return made[-1]

    make.clients = made
    return make


def _args(*argv):
    return build_parser().parse_args(list(argv))


def test_submit_exact_call(factory, capsys):
    result = submit(_args("submit", "--host", "http://kfp.example:8080", "--preset", "rbc-demo"), factory)
    (client,) = factory.clients
    assert client.host == "http://kfp.example:8080"
    assert result.run_id == "run-123"
    (call,) = client.calls
    name, kw = call
    assert name == "create_run_from_pipeline_package"
    path = kw.pop("pipeline_file")
    assert path.endswith("medens-classification.yaml")
    assert kw == {"arguments": {"spec": load_spec("rbc-demo").to_yaml()}, "run_name": "rbc-demo-classification",
                  "experiment_name": "medens", "enable_caching": None}
    assert client.packages == ["medens-classification"]
    assert "run-123" in capsys.readouterr().out


def test_submit_options_and_task_choice(factory):
    submit(_args("submit", "--host", "h", "--preset", "seg-demo", "--experiment", "study3", "--run-name", "r1",
                 "--store", "s3://medens/models", "--model-name", "lesions", "--deploy", "--namespace", "team",
                 "--epochs", "3"), factory)
    (client,) = factory.clients
    _, kw = client.calls[0]
    spec = load_spec("seg-demo")
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": 3})})
    assert client.packages == ["medens-segmentation"]
    assert kw["arguments"] == {"spec": spec.to_yaml(), "store_uri": "s3://medens/models", "model_name": "lesions",
                               "namespace": "team", "deploy_model": True}
    assert (kw["run_name"], kw["experiment_name"]) == ("r1", "study3")


def test_submit_retraining_passes_new_data(factory):
    submit(_args("submit", "--host", "h", "--preset", "rbc-demo", "--pipeline", "retraining",
                 "--data-uri", "s3://medens/incoming/rbc", "--no-deploy"), factory)
    (client,) = factory.clients
    _, kw = client.calls[0]
    assert client.packages == ["medens-retraining"]
    assert kw["arguments"]["data_uri"] == "s3://medens/incoming/rbc"
    assert kw["arguments"]["deploy_model"] is False


def test_schedule_rejects_five_field_cron(factory, capsys):
    assert check_cron(" 0  0 2 * * * ") == "0 0 2 * * *"
    with pytest.raises(ValueError, match="has 5 fields; Kubeflow Pipelines cron expressions have 6"):
        check_cron("0 2 * * *")
    code = main(["schedule", "--host", "h", "--cron", "0 2 * * *", "--preset", "rbc-demo"])
    assert code == 2
    assert "6 (seconds first)" in capsys.readouterr().err
    assert factory.clients == []


def test_the_recording_client_refuses_keywords_the_real_client_does_not_take(factory):
    client = factory("h")
    with pytest.raises(TypeError, match="experiment"):
        client.create_run_from_pipeline_package(pipeline_file="p.yaml", experiment="medens")
    with pytest.raises(TypeError, match="namespce"):
        client.create_experiment(name="medens", namespce="ml")
    assert client.calls == []


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["submit", "--host", "h", "--preset", "rbc-dem"]) == 2
    assert "did you mean 'rbc-demo'" in capsys.readouterr().err
