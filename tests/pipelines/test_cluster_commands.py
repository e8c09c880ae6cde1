"""submit against a recording fake in place of kfp.Client (no cluster here); schedule and
unschedule go through the real kfp.Client against a fake API server (test_schedule_lifecycle.py)."""

from types import SimpleNamespace
from unittest.mock import call, create_autospec

import kfp
import pytest
import yaml

from medens.config import load_spec
from pipelines.__main__ import build_parser, check_cron, main, submit


def recording_client(host, namespace=None):
    """A ``kfp.Client`` made by ``create_autospec`` from the installed kfp: the constructor and every
    method take exactly the real signatures (a keyword the real client does not take raises
    TypeError, a method it does not have raises AttributeError), every call is recorded, and the
    methods ``submit``/``schedule`` use answer as a cluster would. ``packages`` holds the pipeline
    name of every package file passed, read while the file exists."""
    client_class = create_autospec(kfp.Client)
    client = client_class(host=host, **({"namespace": namespace} if namespace else {}))
    client.constructed = client_class.call_args
    client.packages = []

    def read_package(path):
        client.packages.append(next(yaml.safe_load_all(open(path).read()))["pipelineInfo"]["name"])

    def run(pipeline_file, *args, **kw):
        read_package(pipeline_file)
        return SimpleNamespace(run_id="run-123")

    def recurring(*args, **kw):
        read_package(kw["pipeline_package_path"])
        return SimpleNamespace(recurring_run_id="rr-7")

    client.create_run_from_pipeline_package.side_effect = run
    client.create_recurring_run.side_effect = recurring
    client.create_experiment.side_effect = lambda name, *a, **kw: SimpleNamespace(experiment_id="exp-42",
                                                                                   display_name=name)
    return client


@pytest.fixture
def factory():
    made = []

    def make(host, namespace=None):
        made.append(recording_client(host, namespace))
        return made[-1]

    make.clients = made
    return make


def _args(*argv):
    return build_parser().parse_args(list(argv))


def test_submit_exact_call(factory, capsys):
    result = submit(_args("submit", "--host", "http://kfp.example:8080", "--preset", "rbc-demo"), factory)
    (client,) = factory.clients
    assert client.constructed == call(host="http://kfp.example:8080")
    assert result.run_id == "run-123"
    (made,) = client.method_calls
    name, args, kw = made
    assert name == "create_run_from_pipeline_package" and args == ()
    kw = dict(kw)
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
    kw = client.create_run_from_pipeline_package.call_args.kwargs
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
    kw = client.create_run_from_pipeline_package.call_args.kwargs
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
    with pytest.raises(TypeError, match="pipeline_file"):  # a required argument left out
        client.create_run_from_pipeline_package(arguments={})
    with pytest.raises(AttributeError, match="create_run_from_pipeline"):
        client.create_run_from_pipeline(pipeline_file="p.yaml")
    with pytest.raises(TypeError, match="hots"):  # the constructor is the real one's too
        create_autospec(kfp.Client)(hots="h")
    assert client.method_calls == [] and client.packages == []
    # what the real client does take, it records and answers
    assert client.create_experiment(name="medens", namespace="ml").experiment_id == "exp-42"
    assert client.method_calls == [call.create_experiment(name="medens", namespace="ml")]


def test_unknown_preset_is_a_clear_error(capsys):
    assert main(["submit", "--host", "h", "--preset", "rbc-dem"]) == 2
    assert "did you mean 'rbc-demo'" in capsys.readouterr().err
